//! Encryption at rest: the keys, and the envelope of an encrypted object.
//!
//! A repository is encrypted to one or more **recipients** (age X25519 public keys, `age1…`): every
//! host that writes needs only those. Reading needs an **identity** (the secret key,
//! `AGE-SECRET-KEY-1…`) of one of them. The payload is an age v1 file (<https://c2sp.org/age>): a
//! per-object file key wrapped for each recipient (`crypt/x25519.rs`), then ChaCha20-Poly1305 in
//! 64 KiB chunks, each authenticated, so a flipped or swapped byte fails decryption, never passes on
//! (`crypt/stream.rs`: written, and read once the `age` crate has parsed and checked the header).
//!
//! An encrypted object is a 40-byte envelope header followed by the age file:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `PITE` |
//! | 4 | 1 | envelope version (1) |
//! | 5 | 3 | reserved, zero |
//! | 8 | 8 | length of the plaintext, little-endian |
//! | 16 | 8 | length of the age file that follows |
//! | 24 | 4 | CRC-32C of the plaintext |
//! | 28 | 4 | CRC-32C of the age file |
//! | 32 | 4 | key set: the number of the repository's recipient set it is encrypted for |
//! | 36 | 4 | CRC-32C of bytes 0..36 |
//!
//! The header is public: without any key, [`check_public`] tells whether the object's bytes are
//! whole (its length and the CRC of the age file), so bit rot is found on a host that holds no
//! secret. The plaintext's length and CRC let a host that only writes (recipients, no identity)
//! tell an object it stores again (PostgreSQL re-archives a segment after a crash) from another
//! one; what that shows an eavesdropper is in docs/design.md's trust model. In a disaster an
//! operator decrypts an object with the `age` tool after cutting the header off:
//! `tail -c +41 OBJECT | age -d -i KEYFILE`.

use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use x25519::{IdentityKey, RecipientKey};

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"PITE";

/// The environment variables that name the keys (read by the binary's settings), passed on to
/// the servers pitr starts, whose restore_command reads the repository.
pub const KEY_VARIABLES: [&str; 3] = ["PITR_RECIPIENTS_FILE", "PITR_IDENTITY_FILE", "PITR_IDENTITY"];
const VERSION: u8 = 1;
/// Length of the envelope header.
pub const HEADER_LEN: usize = 40;
/// Plaintext bytes per age chunk, and the same chunk encrypted (a 16-byte tag each).
const CHUNK: u64 = 64 * 1024;
const SEALED_CHUNK: u64 = CHUNK + 16;

/// The keys of one process: recipients to write with, identities to read with. Either may be
/// empty: a host that only archives has no identity.
#[derive(Default)]
pub struct Keys {
    recipients: Vec<RecipientKey>,
    identities: Vec<IdentityKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the identities: only what is public.
        f.debug_struct("Keys")
            .field("recipients", &self.recipient_fingerprints())
            .field("identities", &self.identities.len())
            .finish()
    }
}

/// Where a key came from, for messages (never the key itself).
pub enum KeySource<'a> {
    /// A file.
    File(&'a Path),
    /// An environment variable holding the key text.
    Env(&'a str, String),
}

impl Keys {
    /// No keys: a repository that is not encrypted.
    pub fn none() -> Keys {
        Keys::default()
    }

    /// Reads the recipients (public keys, one `age1…` per line) and the identities (secret keys,
    /// `AGE-SECRET-KEY-1…`); `#` starts a comment line. An identity file must be readable by
    /// its owner only, as ssh and libpq ask of their keys.
    pub fn load(recipients: Option<KeySource<'_>>, identities: Option<KeySource<'_>>) -> Result<Keys> {
        let mut keys = Keys::none();
        if let Some(source) = recipients {
            let (text, whence) = read_source(&source, false)?;
            keys.recipients = parse_lines(&text, &whence, "recipient (age1…)", RecipientKey::parse)?;
        }
        if let Some(source) = identities {
            let (text, whence) = read_source(&source, true)?;
            keys.identities = parse_lines(&text, &whence, "identity (AGE-SECRET-KEY-1…)", IdentityKey::parse)?;
        }
        Ok(keys)
    }

    /// Keys of a newly generated identity: its secret text and its recipient (`pitr keygen`).
    pub fn generate() -> (String, String) {
        use age::secrecy::ExposeSecret;
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        (identity.to_string().expose_secret().to_string(), recipient)
    }

    /// Whether recipients are configured: this process can write an encrypted repository.
    pub fn can_write(&self) -> bool {
        !self.recipients.is_empty()
    }

    /// Whether identities are given: this process can read an encrypted repository.
    pub fn can_read(&self) -> bool {
        !self.identities.is_empty()
    }

    /// The recipients' fingerprints, sorted: what repo.json records.
    pub fn recipient_fingerprints(&self) -> Vec<String> {
        sorted(self.recipients.iter().map(|r| fingerprint(&r.text)))
    }

    /// The fingerprints of the recipients of the identities: whose objects this process can read.
    pub fn identity_fingerprints(&self) -> Vec<String> {
        sorted(self.identities.iter().map(|i| fingerprint(&i.recipient)))
    }

    /// Encrypts `plain` into an envelope for every recipient, recording that they are the
    /// repository's key set `key_set`.
    pub fn seal(&self, plain: &[u8], key_set: u32) -> Result<Vec<u8>> {
        let mut sealed = Vec::with_capacity(HEADER_LEN + plain.len() + plain.len() / 4096 + 512);
        sealed.resize(HEADER_LEN, 0);
        let header = self.seal_to(plain, key_set, &mut sealed)?;
        sealed[..HEADER_LEN].copy_from_slice(&header);
        Ok(sealed)
    }

    /// [`Keys::seal`] written into `out` as it is encrypted, after the caller's placeholder for
    /// the header; returns the header, known only at the end. An error of `out` comes back as
    /// the error it carries (a full disk stays a full disk).
    pub fn seal_to(&self, plain: &[u8], key_set: u32, out: &mut dyn Write) -> Result<[u8; HEADER_LEN]> {
        if self.recipients.is_empty() {
            return Err(Error::Refused("cannot encrypt: no recipient is configured".into()));
        }
        let mut counted = Counted { out, len: 0, crc: 0 };
        stream::encrypt(&self.recipients, plain, &mut counted).map_err(write_failed)?;
        Ok(Envelope {
            plain_len: plain.len() as u64,
            sealed_len: counted.len,
            plain_crc: crc32c::crc32c(plain),
            sealed_crc: counted.crc,
            key_set,
        }
        .to_bytes())
    }

    /// Decrypts a whole envelope, checking its header and the plaintext's length and CRC.
    pub fn unseal(&self, sealed: &[u8], what: &str, recorded: &[String]) -> Result<Vec<u8>> {
        let header = Envelope::parse(sealed, what)?;
        let age_file = &sealed[HEADER_LEN..];
        if age_file.len() as u64 != header.sealed_len {
            return Err(corrupt(
                what,
                format!(
                    "holds {} encrypted bytes, its header says {}",
                    age_file.len(),
                    header.sealed_len
                ),
            ));
        }
        let mut reader = self.decryptor(age_file, header.sealed_len, what, recorded)?;
        // Never more than the encrypted bytes: the header is untrusted.
        let mut plain = Vec::with_capacity(usize::try_from(header.plain_len).unwrap_or(0).min(age_file.len()));
        reader.read_to_end(&mut plain).map_err(|e| decryption_failed(what, e))?;
        if plain.len() as u64 != header.plain_len || crc32c::crc32c(&plain) != header.plain_crc {
            return Err(corrupt(what, "decrypts to other bytes than its header records".into()));
        }
        Ok(plain)
    }

    /// Decrypts an envelope while it is read: the header first, then the plaintext as the age
    /// file arrives (each 64 KiB chunk is authenticated before it is passed on). A large object
    /// is decrypted on a thread of its own, a few chunks ahead of the reader, so that decryption
    /// overlaps the reader's own work (archive-get decompresses and writes meanwhile).
    pub fn unseal_reader(
        &self,
        mut sealed: Box<dyn BufRead + Send>,
        what: &str,
        recorded: &[String],
    ) -> Result<Box<dyn BufRead + Send>> {
        let mut head = [0u8; HEADER_LEN];
        sealed
            .read_exact(&mut head)
            .map_err(|e| corrupt(what, format!("its encryption header cannot be read: {e}")))?;
        let header = Envelope::parse(&head, what)?;
        let reader = MapErrors {
            inner: self.decryptor(sealed, header.sealed_len, what, recorded)?,
            what: what.to_string(),
        };
        if header.plain_len < DECRYPT_AHEAD_FROM {
            return Ok(Box::new(io::BufReader::with_capacity(CHUNK as usize, reader)));
        }
        Ok(Box::new(io::BufReader::with_capacity(
            CHUNK as usize,
            decrypt_ahead(reader),
        )))
    }

    /// `len` plaintext bytes from `start` on, of an envelope read by range with `fetch(offset,
    /// len)` (offsets in the stored object): only the age chunks that hold them are read.
    pub fn unseal_range(
        &self,
        fetch: &dyn Fn(u64, u64) -> Result<Vec<u8>>,
        start: u64,
        len: u64,
        what: &str,
        recorded: &[String],
    ) -> Result<Vec<u8>> {
        let header = Envelope::parse(&fetch(0, HEADER_LEN as u64)?, what)?;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= header.plain_len)
            .ok_or_else(|| {
                corrupt(
                    what,
                    format!(
                        "holds {} bytes, not the {len} bytes from {start} on that were asked for",
                        header.plain_len
                    ),
                )
            })?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let chunks = (end - 1) / CHUNK - start / CHUNK + 1;
        let span = std::cell::Cell::new(AGE_HEADER_READ);
        let source = RangeSource {
            fetch,
            len: header.sealed_len,
            pos: 0,
            window_start: 0,
            window: Vec::new(),
            span: &span,
        };
        let mut reader = self.decryptor(source, header.sealed_len, what, recorded)?;
        span.set(chunks * SEALED_CHUNK);
        // Grown as the bytes arrive, not allocated from the (untrusted) header's length.
        let mut plain = Vec::new();
        reader
            .seek(SeekFrom::Start(start))
            .and_then(|_| (&mut reader).take(len).read_to_end(&mut plain))
            .map_err(|e| decryption_failed(what, e))?;
        if plain.len() as u64 != len {
            return Err(corrupt(
                what,
                format!("ends {} bytes into the {len} bytes from {start} on", plain.len()),
            ));
        }
        Ok(plain)
    }

    /// The plaintext of `age_file` (`len` bytes), decrypted with this process's identities as it
    /// is read ([`stream::open`]).
    fn decryptor<R: BufRead>(
        &self,
        age_file: R,
        len: u64,
        what: &str,
        recorded: &[String],
    ) -> Result<stream::Payload<stream::Tap<R>>> {
        if self.identities.is_empty() {
            return Err(Error::Refused(format!(
                "{what} is encrypted (for {}) and no identity was given to decrypt it: set `identity_file` in \
                 the config file, or PITR_IDENTITY_FILE or PITR_IDENTITY in the environment",
                list(recorded)
            )));
        }
        stream::open(&self.identities, age_file, len).map_err(|e| match e {
            stream::OpenError::NoMatchingKeys => Error::Refused(format!(
                "{what} is encrypted for {}, and no identity given matches (the identities given are those of \
                 {}): give the identity of one of the repository's recipients",
                list(recorded),
                list(&self.identity_fingerprints())
            )),
            stream::OpenError::Header(reason) => corrupt(what, format!("cannot be decrypted: {reason}")),
        })
    }
}

/// Creates `path` (never replacing a file) holding a new identity, mode 0600 whatever the
/// umask, durable with its directory entry; returns its recipient. The file is as `age-keygen`
/// writes one.
pub fn write_new_identity(path: &Path) -> Result<String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let (secret, recipient) = Keys::generate();
    let text = format!(
        "# created: {}\n# public key: {recipient}\n{secret}\n",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(Error::io("create", path))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|_| file.write_all(text.as_bytes()))
        .and_then(|_| file.sync_all())
        .map_err(Error::io("write", path))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("sync", dir))?;
    Ok(recipient)
}

/// A recipient's fingerprint: the first 16 hex digits of the SHA-256 of its `age1…` text,
/// enough to tell keys apart in repo.json and in messages.
pub fn fingerprint(recipient: &str) -> String {
    let digest = Sha256::digest(recipient.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `bytes` begin like an encrypted object.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// The public facts of an envelope: the header's checksum, and that the age file is whole
/// (its length and CRC-32C). No key is needed.
pub fn check_public(sealed: &[u8], what: &str) -> Result<Envelope> {
    let header = Envelope::parse(sealed, what)?;
    let age_file = &sealed[HEADER_LEN..];
    if age_file.len() as u64 != header.sealed_len || crc32c::crc32c(age_file) != header.sealed_crc {
        return Err(corrupt(
            what,
            "its encrypted bytes do not match the length and CRC-32C of its header: damaged".into(),
        ));
    }
    Ok(header)
}

/// The public header of an encrypted object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// Length of the plaintext.
    pub plain_len: u64,
    /// Length of the age file after the header.
    pub sealed_len: u64,
    /// CRC-32C of the plaintext.
    pub plain_crc: u32,
    /// CRC-32C of the age file.
    pub sealed_crc: u32,
    /// The key set it is encrypted for (see `pitr rotate-key`).
    pub key_set: u32,
}

impl Envelope {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[8..16].copy_from_slice(&self.plain_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.sealed_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.plain_crc.to_le_bytes());
        b[28..32].copy_from_slice(&self.sealed_crc.to_le_bytes());
        b[32..36].copy_from_slice(&self.key_set.to_le_bytes());
        let crc = crc32c::crc32c(&b[..36]);
        b[36..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks the header at the start of `bytes`.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Envelope> {
        let b = bytes.get(..HEADER_LEN).ok_or_else(|| {
            corrupt(
                what,
                format!("is {} bytes long, shorter than an encryption header", bytes.len()),
            )
        })?;
        if !is_sealed(b) {
            return Err(corrupt(what, "is not encrypted".into()));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(36) != crc32c::crc32c(&b[..36]) {
            return Err(corrupt(what, "its encryption header fails its checksum".into()));
        }
        if b[4] != VERSION || b[5..8] != [0; 3] {
            return Err(corrupt(
                what,
                format!(
                    "has encryption envelope version {}, this pitr reads {VERSION}: use a matching pitr",
                    b[4]
                ),
            ));
        }
        Ok(Envelope {
            plain_len: u64_at(8),
            sealed_len: u64_at(16),
            plain_crc: u32_at(24),
            sealed_crc: u32_at(28),
            key_set: u32_at(32),
        })
    }
}

/// How much of an age file is read at once for its header (a recipient's stanza is ~100 bytes).
const AGE_HEADER_READ: u64 = 1024;

/// The age file of an envelope as a seekable reader over ranged reads of the object: one
/// window at a time, `span` bytes long (set to the chunks wanted once the header is read).
struct RangeSource<'a> {
    fetch: &'a dyn Fn(u64, u64) -> Result<Vec<u8>>,
    len: u64,
    pos: u64,
    window_start: u64,
    window: Vec<u8>,
    span: &'a std::cell::Cell<u64>,
}

impl Read for RangeSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_buffered(self, buf)
    }
}

/// `Read::read` of a reader that buffers: from what `fill_buf` holds.
fn read_buffered(reader: &mut impl BufRead, buf: &mut [u8]) -> io::Result<usize> {
    let available = reader.fill_buf()?;
    let n = buf.len().min(available.len());
    buf[..n].copy_from_slice(&available[..n]);
    reader.consume(n);
    Ok(n)
}

impl BufRead for RangeSource<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos >= self.len {
            return Ok(&[]);
        }
        let in_window = self.pos >= self.window_start && self.pos < self.window_start + self.window.len() as u64;
        if !in_window {
            let want = self.span.get().min(self.len - self.pos);
            self.window =
                (self.fetch)(HEADER_LEN as u64 + self.pos, want).map_err(crate::codec::SourceError::into_io)?;
            self.window_start = self.pos;
            if self.window.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the object ended early"));
            }
        }
        Ok(&self.window[(self.pos - self.window_start) as usize..])
    }

    fn consume(&mut self, n: usize) {
        self.pos += n as u64;
    }
}

impl Seek for RangeSource<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Objects from this size on are decrypted ahead on a thread of their own ([`decrypt_ahead`]):
/// a segment of TPC-B WAL compresses to about 1 MiB, whose decryption (1–2 ms here) then overlaps
/// its decompression instead of preceding it; a thread costs tens of microseconds.
const DECRYPT_AHEAD_FROM: u64 = 256 << 10;
/// Chunks decrypted ahead of the reader.
const CHUNKS_AHEAD: usize = 8;

/// `reader`, read on a thread of its own into chunks handed over through a bounded channel: the
/// reader of the result waits only when the thread is behind. The thread ends at the end of the
/// input (sending an empty chunk, so that an end is never mistaken for a thread that stopped),
/// at its first error (passed on), or when the result is dropped.
fn decrypt_ahead(mut reader: impl Read + Send + 'static) -> impl Read + Send {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(CHUNKS_AHEAD);
    std::thread::spawn(move || loop {
        let mut chunk = vec![0; CHUNK as usize];
        let sent = match crate::codec::fill(&mut reader, &mut chunk) {
            Ok(0) => {
                let _ = tx.send(Ok(Vec::new()));
                break;
            }
            Ok(n) => {
                chunk.truncate(n);
                tx.send(Ok(chunk))
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                break;
            }
        };
        if sent.is_err() {
            break;
        }
    });
    Received {
        rx,
        chunk: Vec::new(),
        at: 0,
        ended: false,
    }
}

/// The reading end of [`decrypt_ahead`].
struct Received {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Read for Received {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(chunk) => (self.chunk, self.at) = (chunk?, 0),
                Err(_) => return Err(io::Error::other("the decrypting thread stopped before the end")),
            }
            self.ended = self.chunk.is_empty();
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A decrypting reader whose errors name the object.
struct MapErrors<R> {
    inner: R,
    what: String,
}

impl<R: Read> Read for MapErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} cannot be decrypted: damaged ({e})", self.what),
            ),
            _ => e,
        })
    }
}

/// A read error of a decrypting reader: the storage's own error when it carries one, else damage.
fn decryption_failed(what: &str, e: io::Error) -> Error {
    match crate::codec::unwrap_source(e) {
        Ok(source) => source,
        Err(e) => corrupt(what, format!("cannot be decrypted: damaged ({e})")),
    }
}

fn corrupt(what: &str, reason: String) -> Error {
    Error::Corrupt {
        what: what.to_string(),
        reason,
    }
}

/// An error of writing an envelope: the storage's own, when the writer carried one.
fn write_failed(e: io::Error) -> Error {
    match e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        true => *e
            .into_inner()
            .expect("checked above")
            .downcast::<Error>()
            .expect("checked above"),
        false => Error::Refused(format!("cannot encrypt: {e}")),
    }
}

/// A writer that counts and checksums what passes through it.
struct Counted<'a> {
    out: &'a mut dyn Write,
    len: u64,
    crc: u32,
}

impl Write for Counted<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.out.write(bytes)?;
        self.len += n as u64;
        self.crc = crc32c::crc32c_append(self.crc, &bytes[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn sorted(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = items.collect();
    v.sort();
    v.dedup();
    v
}

/// Fingerprints as a list for messages.
pub fn list(fingerprints: &[String]) -> String {
    match fingerprints {
        [] => "recipients not recorded".into(),
        [one] => format!("recipient {one}"),
        many => format!("recipients {}", many.join(", ")),
    }
}

/// The text of a key source, and how to name it. An identity file must be a regular file,
/// readable by its owner only.
fn read_source(source: &KeySource<'_>, secret: bool) -> Result<(String, String)> {
    match source {
        KeySource::Env(name, text) => Ok((text.clone(), format!("environment variable {name}"))),
        KeySource::File(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(path)
                .map_err(Error::io("open", path))?;
            let meta = file.metadata().map_err(Error::io("read", path))?;
            if !meta.is_file() {
                return Err(Error::InvalidInput(format!("{} is not a regular file", path.display())));
            }
            use std::os::unix::fs::PermissionsExt;
            if secret && meta.permissions().mode() & 0o077 != 0 {
                return Err(Error::InvalidInput(format!(
                    "identity file {} can be read by others (mode {:o}): it holds a secret key; `chmod 600` it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                )));
            }
            let mut text = String::new();
            (&file).read_to_string(&mut text).map_err(Error::io("read", path))?;
            Ok((text, path.display().to_string()))
        }
    }
}

/// The keys of `text`, one per line; blank lines and `#` comments are skipped. A line that is no
/// key of the kind is refused by its number (never its text: it may be a secret).
fn parse_lines<K>(text: &str, whence: &str, kind: &str, parse: impl Fn(&str) -> Option<K>) -> Result<Vec<K>> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(
            parse(line).ok_or_else(|| Error::InvalidInput(format!("{whence}, line {}: not an age {kind}", n + 1)))?,
        );
    }
    if keys.is_empty() {
        return Err(Error::InvalidInput(format!("{whence} holds no age {kind}")));
    }
    Ok(keys)
}

mod stream;
#[cfg(test)]
mod tests;
mod x25519;
