//! The repository's objects as this process may see them: decrypted on the way in, encrypted on
//! the way out, when repo.json says the repository is encrypted ([`crate::crypt`]).
//!
//! [`Sealed`] wraps the storage of a [`Repo`](super::Repo). The records that say what the
//! repository is (repo.json, the generation records), the WAL directories' markers and the locks
//! stay plain; every other object is encrypted. Whether the repository is encrypted is read from
//! repo.json once, never from an object: an object that is plain in an encrypted repository (or
//! the other way round) is refused, not passed on. Writing needs the recipients repo.json records
//! (by fingerprint), exactly; reading needs an identity of one of them.

use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use crate::codec::json;
use crate::crypt::{self, Keys};
use crate::error::{Error, Result};
use crate::storage::{Listed, LockGuard, ObjectMeta, ObjectWriter, PutOutcome, Storage};

use super::{GENERATIONS_DIR, METADATA_KEY, WAL_MARKER};

/// Whether the repository is encrypted, as repo.json says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Plain,
    /// Encrypted for the recipients of these fingerprints.
    Encrypted(Vec<String>),
}

/// The part of repo.json this module reads.
#[derive(Deserialize)]
struct EncryptionOnly {
    #[serde(default)]
    encryption: Option<super::EncryptionRecord>,
}

/// A repository's storage with encryption applied where repo.json asks for it.
pub(crate) struct Sealed {
    inner: Arc<dyn Storage>,
    keys: Arc<Keys>,
    /// Known once repo.json was read (a repository without one yet takes the keys' word).
    mode: OnceLock<Mode>,
}

impl Sealed {
    pub(crate) fn new(inner: Arc<dyn Storage>, keys: Arc<Keys>) -> Sealed {
        Sealed {
            inner,
            keys,
            mode: OnceLock::new(),
        }
    }

    /// The same storage with other keys.
    pub(crate) fn with_keys(&self, keys: Arc<Keys>) -> Sealed {
        Sealed::new(self.inner.clone(), keys)
    }

    pub(crate) fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// Records what repo.json (just read by the caller) says, sparing a second read.
    pub(crate) fn learn(&self, encryption: Option<&super::EncryptionRecord>) {
        let _ = self.mode.set(mode_of(encryption));
    }

    /// Whether the repository is encrypted: from repo.json, read once; a repository without
    /// repo.json yet is encrypted when this process has recipients (it will write repo.json so).
    fn mode(&self) -> Result<Mode> {
        if let Some(mode) = self.mode.get() {
            return Ok(mode.clone());
        }
        match self.inner.get(METADATA_KEY)? {
            Some(bytes) => {
                let what = self.inner.describe(METADATA_KEY);
                let record: EncryptionOnly = json::from_slice(&bytes, &what)?;
                Ok(self.mode.get_or_init(|| mode_of(record.encryption.as_ref())).clone())
            }
            None if self.keys.can_write() => Ok(Mode::Encrypted(self.keys.recipient_fingerprints())),
            None => Ok(Mode::Plain),
        }
    }

    /// The keys to encrypt a new object with, or `None` to store it plain; refused when this
    /// process's recipients are not exactly the repository's.
    fn writing(&self) -> Result<Option<&Keys>> {
        let ours = self.keys.recipient_fingerprints();
        match self.mode()? {
            Mode::Plain if ours.is_empty() => Ok(None),
            Mode::Plain => Err(Error::Refused(format!(
                "repository {} is not encrypted, but recipients are configured ({}): nothing was written. An \
                 existing repository is not encrypted after the fact: start a new repository for encrypted \
                 backups, or remove `recipients_file` (PITR_RECIPIENTS_FILE)",
                self.location(),
                crypt::list(&ours)
            ))),
            Mode::Encrypted(recorded) if recorded == ours => Ok(Some(&self.keys)),
            Mode::Encrypted(recorded) => Err(Error::Refused(format!(
                "repository {} is encrypted for {}, but {} configured: nothing was written. Set \
                 `recipients_file` (PITR_RECIPIENTS_FILE) to the repository's recipients (`pitr info` lists them)",
                self.location(),
                crypt::list(&recorded),
                match ours.is_empty() {
                    true => "no recipient is".to_string(),
                    false => format!("{} are", crypt::list(&ours)),
                }
            ))),
        }
    }

    /// `bytes` read from `key` as the caller may see them: decrypted, or refused when plain in
    /// an encrypted repository or encrypted in a plain one.
    fn reading(&self, key: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
        match self.sealed_read(key, &bytes)? {
            Some(recorded) => self.keys.unseal(&bytes, &self.inner.describe(key), &recorded),
            None => Ok(bytes),
        }
    }

    /// Whether an object that begins with `head` is to be decrypted: `Some` with the recorded
    /// recipients (for messages), `None` to pass it on as it is; an error when it is plain in an
    /// encrypted repository or encrypted in a plain one. A process without keys never looks
    /// repo.json up for this (it cannot read an encrypted repository: an encrypted object is
    /// refused at decryption), so reading a plain repository costs no extra request.
    fn sealed_read(&self, key: &str, head: &[u8]) -> Result<Option<Vec<String>>> {
        if is_plain_key(key) {
            return Ok(None);
        }
        if self.keyless() {
            // Decryption without an identity refuses it, naming what it can.
            return Ok(crypt::is_sealed(head).then(|| match self.mode() {
                Ok(Mode::Encrypted(recorded)) => recorded,
                _ => Vec::new(),
            }));
        }
        match self.mode()? {
            Mode::Encrypted(recorded) => self.expect_sealed(key, head).map(|_| Some(recorded)),
            Mode::Plain => self.expect_plain(key, head).map(|_| None),
        }
    }

    /// Whether this process has no keys at all (the usual unencrypted setup).
    fn keyless(&self) -> bool {
        !self.keys.can_write() && self.keys.identity_fingerprints().is_empty()
    }

    fn expect_sealed(&self, key: &str, bytes: &[u8]) -> Result<()> {
        match crypt::is_sealed(bytes) {
            true => Ok(()),
            false => Err(Error::Corrupt {
                what: self.inner.describe(key),
                reason: format!(
                    "is not encrypted, although repository {} is: refused (it was not written by pitr with the \
                     repository's recipients); move it aside",
                    self.location()
                ),
            }),
        }
    }

    fn expect_plain(&self, key: &str, bytes: &[u8]) -> Result<()> {
        match crypt::is_sealed(bytes) {
            false => Ok(()),
            true => Err(Error::Corrupt {
                what: self.inner.describe(key),
                reason: format!(
                    "is encrypted, although repository {} is not: refused; move it aside",
                    self.location()
                ),
            }),
        }
    }

    fn location(&self) -> String {
        self.inner.describe("").trim_end_matches('/').to_string()
    }

    /// The public header of the encrypted object under `key`, checked against its bytes (no key
    /// needed), or `None` when there is no such object. For a host that only writes, to tell
    /// whether a stored object holds what it would store.
    pub(crate) fn envelope(&self, key: &str) -> Result<Option<crypt::Envelope>> {
        let Some(bytes) = self.inner.get(key)? else {
            return Ok(None);
        };
        self.expect_sealed(key, &bytes)?;
        crypt::check_public(&bytes, &self.inner.describe(key)).map(Some)
    }

    /// Whether this process can decrypt (it has an identity), or the repository is plain.
    pub(crate) fn can_read(&self) -> Result<bool> {
        Ok(matches!(self.mode()?, Mode::Plain) || !self.keys.identity_fingerprints().is_empty())
    }

    /// The recipients' fingerprints repo.json records (`None`: not encrypted).
    pub(crate) fn recorded_recipients(&self) -> Result<Option<Vec<String>>> {
        Ok(match self.mode()? {
            Mode::Plain => None,
            Mode::Encrypted(recorded) => Some(recorded),
        })
    }
}

fn mode_of(encryption: Option<&super::EncryptionRecord>) -> Mode {
    match encryption {
        Some(record) => Mode::Encrypted(record.recipients.clone()),
        None => Mode::Plain,
    }
}

/// Keys stored plain in every repository: what says what the repository is, and the locks.
fn is_plain_key(key: &str) -> bool {
    key == METADATA_KEY
        || key.starts_with(GENERATIONS_DIR)
        || key.starts_with("locks/")
        || key.rsplit('/').next() == Some(WAL_MARKER)
}

impl Storage for Sealed {
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        match self.writing_for(key)? {
            Some(keys) => self.inner.put_if_absent(key, &keys.seal(data)?),
            None => self.inner.put_if_absent(key, data),
        }
    }

    fn put_if_absent_deferred(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        match self.writing_for(key)? {
            Some(keys) => self.inner.put_if_absent_deferred(key, &keys.seal(data)?),
            None => self.inner.put_if_absent_deferred(key, data),
        }
    }

    fn sync_all_under(&self, dir: &str) -> Result<()> {
        self.inner.sync_all_under(dir)
    }

    fn put_writer(&self, key: &str) -> Result<Box<dyn ObjectWriter + '_>> {
        match self.writing_for(key)? {
            // Kept in memory, encrypted and put whole at the end (the head is patched into the
            // plaintext first, see `ObjectWriter::finish`).
            Some(_) => Ok(crate::storage::buffered_writer(self, key)),
            None => self.inner.put_writer(key),
        }
    }

    fn sync(&self, key: &str) -> Result<()> {
        self.inner.sync(key)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)?.map(|bytes| self.reading(key, bytes)).transpose()
    }

    fn get_reader(&self, key: &str) -> Result<Option<Box<dyn std::io::BufRead + Send>>> {
        let Some(mut reader) = self.inner.get_reader(key)? else {
            return Ok(None);
        };
        let head = reader.fill_buf().map_err(|e| {
            crate::codec::unwrap_source(e)
                .unwrap_or_else(|e| Error::io("read", std::path::Path::new(&self.inner.describe(key)))(e))
        })?;
        match self.sealed_read(key, head)? {
            Some(recorded) => self
                .keys
                .unseal_reader(reader, &self.inner.describe(key), &recorded)
                .map(Some),
            None => Ok(Some(reader)),
        }
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Option<Vec<u8>>> {
        // Only packs are read by range; a repository whose objects are plain reads them directly.
        if self.keyless() || self.mode()? == Mode::Plain {
            return self.inner.get_range(key, start, len);
        }
        let Some(head) = self.inner.get_range(key, 0, crypt::HEADER_LEN as u64)? else {
            return Ok(None);
        };
        let Some(recorded) = self.sealed_read(key, &head)? else {
            return self.inner.get_range(key, start, len);
        };
        let fetch = |at: u64, n: u64| match at {
            0 if n == head.len() as u64 => Ok(head.clone()),
            _ => self.inner.get_range(key, at, n)?.ok_or_else(|| Error::Corrupt {
                what: self.inner.describe(key),
                reason: "vanished while it was read".into(),
            }),
        };
        self.keys
            .unseal_range(&fetch, start, len, &self.inner.describe(key), &recorded)
            .map(Some)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.inner.head(key)
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn list_meta(&self, dir: &str) -> Result<Vec<Listed>> {
        self.inner.list_meta(dir)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key)
    }

    fn delete_all(&self, dir: &str) -> Result<()> {
        self.inner.delete_all(dir)
    }

    fn try_lock(&self, name: &str) -> Result<Option<LockGuard>> {
        self.inner.try_lock(name)
    }

    fn available_bytes(&self) -> Result<Option<u64>> {
        self.inner.available_bytes()
    }

    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }

    fn local_root(&self) -> Option<&std::path::Path> {
        self.inner.local_root()
    }
}

impl Sealed {
    /// [`Sealed::writing`] for an object under `key` (the plain keys are never encrypted).
    fn writing_for(&self, key: &str) -> Result<Option<&Keys>> {
        match is_plain_key(key) {
            true => Ok(None),
            false => self.writing(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::KeySource;
    use crate::storage::LocalStorage;
    use std::io::Read;

    fn sealed(dir: &std::path::Path) -> (Sealed, Arc<dyn Storage>) {
        let (secret, recipient) = Keys::generate();
        let keys = Keys::load(Some(KeySource::Env("R", recipient)), Some(KeySource::Env("I", secret))).unwrap();
        let inner: Arc<dyn Storage> = Arc::new(LocalStorage::open(dir).unwrap());
        (Sealed::new(inner.clone(), Arc::new(keys)), inner)
    }

    #[test]
    fn objects_written_in_pieces_are_encrypted_with_their_head_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, inner) = sealed(dir.path());
        let mut writer = store.put_writer("wal/x").unwrap();
        writer.write(b"..llo, ").unwrap();
        writer.write(b"world").unwrap();
        assert_eq!(writer.finish(b"he").unwrap(), PutOutcome::Created);
        assert!(inner.get("wal/x").unwrap().unwrap().starts_with(b"PITE"));
        assert_eq!(store.get("wal/x").unwrap().unwrap(), b"hello, world");
        assert_eq!(store.get_range("wal/x", 7, 5).unwrap().unwrap(), b"world");
        let mut read = String::new();
        store
            .get_reader("wal/x")
            .unwrap()
            .unwrap()
            .read_to_string(&mut read)
            .unwrap();
        assert_eq!(read, "hello, world");
        // The plain records stay plain; a plain object elsewhere is refused.
        store.put_if_absent("locks/probe", b"plain").unwrap();
        assert_eq!(inner.get("locks/probe").unwrap().unwrap(), b"plain");
        inner.put_if_absent("wal/planted", b"plain").unwrap();
        let err = store.get("wal/planted").unwrap_err().to_string();
        assert!(err.contains("is not encrypted"), "{err}");
    }
}
