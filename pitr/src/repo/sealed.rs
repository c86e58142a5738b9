//! The repository's objects as this process may see them: decrypted on the way in, encrypted on
//! the way out, when repo.json says the repository is encrypted ([`crate::crypt`]).
//!
//! [`Sealed`] wraps the storage of a [`Repo`](super::Repo). The records that say what the
//! repository is (repo.json, the generation records), the WAL directories' markers and the locks
//! stay plain; every other object is encrypted. Whether the repository is encrypted is read from
//! repo.json once, never from an object: an object that is plain in an encrypted repository (or
//! the other way round) is refused, not passed on. Writing needs the recipients repo.json records
//! (by fingerprint), exactly; reading needs an identity of one of them.

use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::codec::json;
use crate::crypt::{self, Keys};
use crate::error::{Error, Result};
use crate::storage::{Listed, LockGuard, ObjectMeta, ObjectWriter, PutOutcome, Storage, WriteInto};

use super::{GENERATIONS_DIR, METADATA_KEY, WAL_MARKER};

/// Whether the repository is encrypted, as repo.json and the key set records say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Plain,
    Encrypted(KeySets),
}

/// The recipients' fingerprints of each key set of an encrypted repository, oldest first: set 1
/// is repo.json's, set n >= 2 the record `keys/<n>.json` that `pitr rotate-key` wrote. New
/// objects are encrypted for the newest set and carry its number in their envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeySets(Vec<Vec<String>>);

impl KeySets {
    /// The newest set: its number and its fingerprints.
    pub(crate) fn current(&self) -> (u32, &[String]) {
        (self.0.len() as u32, self.0.last().map_or(&[][..], Vec::as_slice))
    }

    /// The fingerprints of set `n` (none for a set the repository does not record).
    pub(crate) fn of(&self, n: u32) -> &[String] {
        n.checked_sub(1)
            .and_then(|i| self.0.get(i as usize))
            .map_or(&[][..], Vec::as_slice)
    }
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
    /// Known once repo.json was read (a repository without one yet takes the keys' word); read
    /// again when a write finds this process's recipients are not the newest set's.
    mode: Mutex<Option<Mode>>,
}

impl Sealed {
    pub(crate) fn new(inner: Arc<dyn Storage>, keys: Arc<Keys>) -> Sealed {
        Sealed {
            inner,
            keys,
            mode: Mutex::new(None),
        }
    }

    /// The same storage with other keys.
    pub(crate) fn with_keys(&self, keys: Arc<Keys>) -> Sealed {
        Sealed::new(self.inner.clone(), keys)
    }

    pub(crate) fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// The storage underneath, for the records kept plain and for `rotate-key --rewrite`.
    pub(crate) fn inner(&self) -> &dyn Storage {
        &*self.inner
    }

    /// Records what repo.json (just read by the caller) says, sparing a second read: a plain
    /// repository, or an encrypted one with its key sets (their records are listed now, once per
    /// process; a write that finds newer ones reads them again).
    pub(crate) fn learn(&self, encryption: Option<&super::EncryptionRecord>) -> Result<()> {
        if self.mode.lock().expect("not poisoned").is_some() {
            return Ok(());
        }
        let mode = match encryption {
            None => Mode::Plain,
            Some(first) => Mode::Encrypted(KeySets(super::rekey::read_key_sets(
                &*self.inner,
                first.recipients.clone(),
            )?)),
        };
        *self.mode.lock().expect("not poisoned") = Some(mode);
        Ok(())
    }

    /// Whether the repository is encrypted, and for which key sets: read once; a repository
    /// without repo.json yet is encrypted when this process has recipients (it will write
    /// repo.json so).
    fn mode(&self) -> Result<Mode> {
        if let Some(mode) = &*self.mode.lock().expect("not poisoned") {
            return Ok(mode.clone());
        }
        self.read_mode()
    }

    /// [`Sealed::mode`] read from the repository now.
    fn read_mode(&self) -> Result<Mode> {
        let Some(bytes) = self.inner.get(METADATA_KEY)? else {
            return Ok(match self.keys.can_write() {
                true => Mode::Encrypted(KeySets(vec![self.keys.recipient_fingerprints()])),
                false => Mode::Plain,
            });
        };
        let record: EncryptionOnly = json::from_slice(&bytes, &self.inner.describe(METADATA_KEY))?;
        let mode = match record.encryption {
            None => Mode::Plain,
            Some(first) => Mode::Encrypted(KeySets(super::rekey::read_key_sets(&*self.inner, first.recipients)?)),
        };
        *self.mode.lock().expect("not poisoned") = Some(mode.clone());
        Ok(mode)
    }

    /// The key sets of an encrypted repository (`None`: it is not encrypted).
    pub(crate) fn key_sets(&self) -> Result<Option<KeySets>> {
        Ok(match self.read_mode()? {
            Mode::Plain => None,
            Mode::Encrypted(sets) => Some(sets),
        })
    }

    /// The number of the key set to encrypt a new object for, or `None` to store it plain;
    /// refused when this process's recipients are not exactly the newest set's.
    fn writing(&self) -> Result<Option<u32>> {
        let ours = self.keys.recipient_fingerprints();
        let mut mode = self.mode()?;
        if matches!(&mode, Mode::Encrypted(sets) if sets.current().1 != ours) {
            // A rotate-key since this process looked: read the key sets again.
            mode = self.read_mode()?;
        }
        match mode {
            Mode::Plain if ours.is_empty() => Ok(None),
            Mode::Plain => Err(Error::Refused(format!(
                "repository {} is not encrypted, but recipients are configured ({}): nothing was written. An \
                 existing repository is not encrypted after the fact: start a new repository for encrypted \
                 backups, or remove `recipients_file` (PITR_RECIPIENTS_FILE)",
                self.location(),
                crypt::list(&ours)
            ))),
            Mode::Encrypted(sets) if sets.current().1 == ours => Ok(Some(sets.current().0)),
            Mode::Encrypted(sets) => Err(Error::Refused(format!(
                "repository {} is encrypted for {}, but {} configured: nothing was written. Set \
                 `recipients_file` (PITR_RECIPIENTS_FILE) to the repository's recipients (`pitr info` lists them)",
                self.location(),
                crypt::list(sets.current().1),
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
                Ok(Mode::Encrypted(sets)) => recipients_of(&sets, head),
                _ => Vec::new(),
            }));
        }
        match self.mode()? {
            Mode::Encrypted(sets) => self.expect_sealed(key, head).map(|_| Some(recipients_of(&sets, head))),
            Mode::Plain => self.expect_plain(key, head).map(|_| None),
        }
    }

    /// Whether this process has no keys at all (the usual unencrypted setup).
    fn keyless(&self) -> bool {
        !self.keys.can_write() && !self.keys.can_read()
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
        Ok(matches!(self.mode()?, Mode::Plain) || self.keys.can_read())
    }

    /// The fingerprints of the newest key set's recipients (`None`: not encrypted).
    pub(crate) fn recorded_recipients(&self) -> Result<Option<Vec<String>>> {
        Ok(match self.mode()? {
            Mode::Plain => None,
            Mode::Encrypted(sets) => Some(sets.current().1.to_vec()),
        })
    }
}

/// What [`Sealed::check_public`] found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EnvelopeCheck {
    /// Encrypted objects read.
    pub objects: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// The objects whose bytes do not match their public header, or that are not encrypted,
    /// with what is wrong.
    pub damaged: Vec<String>,
}

impl Sealed {
    /// Checks every encrypted object's public header against its bytes (no key needed):
    /// whether each object is whole, not what it holds.
    pub(crate) fn check_public(&self, dir: &str, found: &mut EnvelopeCheck) -> Result<()> {
        for name in self.inner.list(dir)? {
            let key = format!("{dir}{name}");
            if name.ends_with('/') {
                if !is_plain_key(&key) {
                    self.check_public(&key, found)?;
                }
                continue;
            }
            if is_plain_key(&key) {
                continue;
            }
            let Some(bytes) = self.inner.get(&key)? else { continue };
            found.objects += 1;
            found.bytes += bytes.len() as u64;
            let what = self.inner.describe(&key);
            let checked = match crypt::is_sealed(&bytes) {
                true => crypt::check_public(&bytes, &what).map(|_| ()),
                false => self.expect_sealed(&key, &bytes),
            };
            if let Err(e) = checked {
                found.damaged.push(e.to_string());
            }
        }
        Ok(())
    }
}

/// The fingerprints of the key set an encrypted object names in its header (for messages).
fn recipients_of(sets: &KeySets, head: &[u8]) -> Vec<String> {
    let set = crypt::Envelope::parse(head, "").map_or(sets.current().0, |e| e.key_set);
    sets.of(set).to_vec()
}

/// Where `key` is stored aside while `rotate-key --rewrite` re-encrypts it (see `repo/rekey.rs`),
/// read while `key` itself is missing; `None` for the plain keys.
fn aside(key: &str) -> Option<String> {
    (!is_plain_key(key) && !key.ends_with(super::rekey::REKEY_SUFFIX))
        .then(|| format!("{key}{}", super::rekey::REKEY_SUFFIX))
}

/// A listed name as readers see it: an object stored aside under its own name.
fn without_aside(name: String) -> String {
    match name.strip_suffix(super::rekey::REKEY_SUFFIX) {
        Some(base) if !base.is_empty() && !name.ends_with('/') => base.to_string(),
        _ => name,
    }
}

/// Keys stored plain in every repository: what says what the repository is, and the locks.
pub(crate) fn is_plain_key(key: &str) -> bool {
    key == METADATA_KEY
        || key == "locks/"
        || key.starts_with("locks/")
        || key.starts_with(GENERATIONS_DIR)
        || key.starts_with(super::KEYS_DIR)
        || key.starts_with("locks/")
        || key.rsplit('/').next() == Some(WAL_MARKER)
}

impl Storage for Sealed {
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        match self.writing_for(key)? {
            // Written while it is encrypted, not copied whole first.
            Some(set) => {
                let mut writer = self.inner.put_writer(key)?;
                writer.write(&[0; crypt::HEADER_LEN])?;
                let mut into = WriteInto(writer);
                let header = self.keys.seal_to(data, set, &mut into)?;
                into.0.finish(&header)
            }
            None => self.inner.put_if_absent(key, data),
        }
    }

    fn put_if_absent_deferred(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        match self.writing_for(key)? {
            Some(set) => self.inner.put_if_absent_deferred(key, &self.keys.seal(data, set)?),
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
        let bytes = match self.inner.get(key)? {
            Some(bytes) => Some(bytes),
            None => match aside(key) {
                Some(aside) => self.inner.get(&aside)?,
                None => None,
            },
        };
        bytes.map(|bytes| self.reading(key, bytes)).transpose()
    }

    fn get_reader(&self, key: &str) -> Result<Option<Box<dyn std::io::BufRead + Send>>> {
        let found = match self.inner.get_reader(key)? {
            Some(reader) => Some(reader),
            None => match aside(key) {
                Some(aside) => self.inner.get_reader(&aside)?,
                None => None,
            },
        };
        let Some(mut reader) = found else {
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
        let (key, head) = match self.inner.get_range(key, 0, crypt::HEADER_LEN as u64)? {
            Some(head) => (key.to_string(), head),
            None => match aside(key)
                .map(|aside| Ok::<_, Error>((self.inner.get_range(&aside, 0, crypt::HEADER_LEN as u64)?, aside)))
                .transpose()?
            {
                Some((Some(head), aside)) => (aside, head),
                _ => return Ok(None),
            },
        };
        let key = key.as_str();
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
        match (self.inner.head(key)?, aside(key)) {
            (None, Some(aside)) => self.inner.head(&aside),
            (found, _) => Ok(found),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.inner.list(dir)?.into_iter().map(without_aside).collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn list_meta(&self, dir: &str) -> Result<Vec<Listed>> {
        let mut listed = self.inner.list_meta(dir)?;
        for entry in &mut listed {
            entry.name = without_aside(std::mem::take(&mut entry.name));
        }
        // Stable: of a name and its copy aside, the name's own entry (listed first) is kept.
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        listed.dedup_by(|later, earlier| later.name == earlier.name);
        Ok(listed)
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
    fn writing_for(&self, key: &str) -> Result<Option<u32>> {
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
