//! The age file of an object (<https://c2sp.org/age>), written and its payload read with aws-lc's
//! ChaCha20-Poly1305 (16 MiB sealed in 21 ms here, 29 with the age crate's stream), so that
//! encryption costs little per byte as well as per object ([`super::x25519`]).
//!
//! Writing: the header (version line, one X25519 stanza per recipient, `---` and the header's
//! HMAC), a random 16-byte nonce, then the payload in STREAM chunks of 64 KiB, each sealed with
//! a nonce of the chunk's number and a flag on the last one. Reading: the age crate parses the
//! header and checks its MAC with the file key the identity unwraps (so the untrusted header is
//! parsed by age's own code); the payload is then opened here, chunk by chunk. The object's
//! envelope gives the age file's length, so the last chunk is known before it is read: a
//! truncated, extended or reordered payload fails to open.

use std::cell::RefCell;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};

use age_core::format::{FileKey, Stanza};
use age_core::secrecy::ExposeSecret;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
use aws_lc_rs::hmac;
use base64::Engine;
use zeroize::Zeroizing;

use super::x25519::{IdentityKey, RecipientKey, BASE64};
use super::{CHUNK, SEALED_CHUNK};

/// The header's first line.
const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
/// Bytes of the payload's nonce.
const NONCE_BYTES: usize = 16;
/// Bytes of a file key.
const FILE_KEY_BYTES: usize = 16;
/// Bytes of a chunk's Poly1305 tag.
const TAG_BYTES: u64 = 16;
/// Base64 characters per line of a stanza's body.
const BODY_COLUMNS: usize = 64;

/// Writes `plain` as an age file for `recipients` into `out`.
pub(super) fn encrypt(recipients: &[RecipientKey], plain: &[u8], out: &mut dyn Write) -> io::Result<()> {
    let mut file_key = Zeroizing::new([0u8; FILE_KEY_BYTES]);
    random(file_key.as_mut_slice())?;
    let wrapped = FileKey::init_with_mut(|k| k.copy_from_slice(file_key.as_slice()));
    let mut header = VERSION_LINE.to_vec();
    for recipient in recipients {
        let (stanzas, _) = age::Recipient::wrap_file_key(recipient, &wrapped).map_err(io::Error::other)?;
        for stanza in stanzas {
            write_stanza(&mut header, &stanza);
        }
    }
    header.extend_from_slice(b"---");
    let mac = hmac::sign(&header_mac_key(&file_key)?, &header);
    header.push(b' ');
    header.extend_from_slice(BASE64.encode(mac.as_ref()).as_bytes());
    header.push(b'\n');
    let mut nonce = [0u8; NONCE_BYTES];
    random(&mut nonce)?;
    header.extend_from_slice(&nonce);
    out.write_all(&header)?;
    let key = payload_key(&file_key, &nonce)?;
    let mut sealed = Vec::with_capacity(SEALED_CHUNK as usize);
    let count = plain.len().div_ceil(CHUNK as usize).max(1);
    for index in 0..count {
        let start = index * CHUNK as usize;
        sealed.clear();
        sealed.extend_from_slice(&plain[start..plain.len().min(start + CHUNK as usize)]);
        key.seal_in_place_append_tag(chunk_nonce(index as u64, index + 1 == count), Aad::empty(), &mut sealed)
            .map_err(|_| io::Error::other("ChaCha20-Poly1305 failed"))?;
        out.write_all(&sealed)?;
    }
    Ok(())
}

/// A stanza as the header spells it: `-> tag args…`, then the body in base64 lines of 64
/// characters, the last one shorter (empty when the body fills whole lines).
fn write_stanza(header: &mut Vec<u8>, stanza: &Stanza) {
    header.extend_from_slice(b"->");
    for word in std::iter::once(&stanza.tag).chain(&stanza.args) {
        header.push(b' ');
        header.extend_from_slice(word.as_bytes());
    }
    header.push(b'\n');
    let body = BASE64.encode(&stanza.body);
    let mut lines = body.as_bytes().chunks(BODY_COLUMNS).peekable();
    while let Some(line) = lines.next() {
        header.extend_from_slice(line);
        header.push(b'\n');
        if lines.peek().is_none() && line.len() == BODY_COLUMNS {
            header.push(b'\n');
        }
    }
    if body.is_empty() {
        header.push(b'\n');
    }
}

/// Why an age file cannot be opened.
pub(super) enum OpenError {
    /// No identity unwraps any of its stanzas.
    NoMatchingKeys,
    /// The header is malformed, its MAC fails, or it cannot be read.
    Header(String),
}

/// Opens the age file of `len` bytes that `input` reads: its header is checked by the age crate
/// with the file key one of `identities` unwraps, and the payload is read as it is decrypted.
pub(super) fn open<R: BufRead>(identities: &[IdentityKey], input: R, len: u64) -> Result<Payload<Tap<R>>, OpenError> {
    let mut tap = Tap {
        inner: input,
        consumed: 0,
        last: Vec::with_capacity(NONCE_BYTES),
    };
    let capture = Capture {
        identities,
        file_key: RefCell::new(None),
    };
    let decryptor = age::Decryptor::new_buffered(&mut tap).map_err(|e| OpenError::Header(e.to_string()))?;
    match decryptor.decrypt(std::iter::once(&capture as &dyn age::Identity)) {
        Ok(_) => {}
        Err(age::DecryptError::NoMatchingKeys) => return Err(OpenError::NoMatchingKeys),
        Err(e) => return Err(OpenError::Header(e.to_string())),
    }
    let file_key = capture
        .file_key
        .into_inner()
        .ok_or_else(|| OpenError::Header("no file key was unwrapped".into()))?;
    let nonce: [u8; NONCE_BYTES] = tap.last[..]
        .try_into()
        .map_err(|_| OpenError::Header("the payload's nonce was not read".into()))?;
    let start = tap.consumed;
    let payload_len = len
        .checked_sub(start)
        .filter(|n| *n >= TAG_BYTES)
        .ok_or_else(|| OpenError::Header("the age file ends before its payload".into()))?;
    let key = payload_key(&file_key, &nonce).map_err(|e| OpenError::Header(e.to_string()))?;
    Ok(Payload {
        inner: tap,
        key,
        start,
        payload_len,
        next: 0,
        plain: Vec::with_capacity(SEALED_CHUNK as usize),
        at: 0,
    })
}

/// The plaintext of an age file's payload, each chunk opened as it is read.
pub(super) struct Payload<R> {
    inner: R,
    key: LessSafeKey,
    /// Where the payload begins in the age file (the header and nonce before it).
    start: u64,
    payload_len: u64,
    /// The number of the next chunk to read.
    next: u64,
    /// The current chunk's plaintext, and how much of it was read.
    plain: Vec<u8>,
    at: usize,
}

impl<R: Read> Payload<R> {
    /// Reads and opens chunk `self.next` into `self.plain`; `false` after the last one.
    fn open_next(&mut self) -> io::Result<bool> {
        let offset = self.next * SEALED_CHUNK;
        if offset >= self.payload_len {
            return Ok(false);
        }
        let len = (self.payload_len - offset).min(SEALED_CHUNK);
        let last = offset + len == self.payload_len;
        // An empty chunk is the whole payload of an empty plaintext, never the end of a longer one.
        if len < TAG_BYTES || (len == TAG_BYTES && self.next > 0) {
            return Err(damaged("a chunk is too short"));
        }
        self.plain.resize(len as usize, 0);
        self.inner.read_exact(&mut self.plain)?;
        let opened = self
            .key
            .open_in_place(chunk_nonce(self.next, last), Aad::empty(), &mut self.plain)
            .map_err(|_| damaged("a chunk fails its authentication"))?
            .len();
        self.plain.truncate(opened);
        self.at = 0;
        self.next += 1;
        Ok(true)
    }
}

impl<R: Read> Read for Payload<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.plain.len() {
            if !self.open_next()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.plain.len() - self.at);
        buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for Payload<R> {
    /// Only from the start: to a plaintext offset, opening the chunk that holds it.
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let SeekFrom::Start(position) = to else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "seek from the start only"));
        };
        self.next = position / CHUNK;
        self.plain.clear();
        self.at = 0;
        self.inner
            .seek(SeekFrom::Start(self.start + self.next * SEALED_CHUNK))?;
        if self.open_next()? {
            self.at = ((position % CHUNK) as usize).min(self.plain.len());
        }
        Ok(position)
    }
}

/// A reader that counts what was consumed of `inner` and keeps the last [`NONCE_BYTES`] of it:
/// after age has read the header and the nonce, where the payload begins and the nonce.
pub(super) struct Tap<R> {
    inner: R,
    consumed: u64,
    last: Vec<u8>,
}

impl<R: BufRead> BufRead for Tap<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        if let Ok(buffer) = self.inner.fill_buf() {
            let taken = &buffer[..n.min(buffer.len())];
            let keep = NONCE_BYTES.saturating_sub(taken.len()).min(self.last.len());
            self.last.drain(..self.last.len() - keep);
            self.last
                .extend_from_slice(&taken[taken.len().saturating_sub(NONCE_BYTES)..]);
        }
        self.consumed += n as u64;
        self.inner.consume(n);
    }
}

impl<R: BufRead> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        super::read_buffered(self, buf)
    }
}

impl<R: Seek> Seek for Tap<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

/// The identities, keeping the file key the one that matches unwraps (age checks the header's
/// MAC with it before [`open`] uses it).
struct Capture<'a> {
    identities: &'a [IdentityKey],
    file_key: RefCell<Option<Zeroizing<[u8; FILE_KEY_BYTES]>>>,
}

impl age::Identity for Capture<'_> {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, age::DecryptError>> {
        let found = self
            .identities
            .iter()
            .find_map(|i| age::Identity::unwrap_stanza(i, stanza))?;
        if let Ok(key) = &found {
            *self.file_key.borrow_mut() = Some(Zeroizing::new(*key.expose_secret()));
        }
        Some(found)
    }
}

/// HKDF-SHA-256 of the file key with `salt` and `info`, 32 bytes.
fn derive(file_key: &[u8; FILE_KEY_BYTES], salt: &[u8], info: &[u8]) -> io::Result<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    Salt::new(HKDF_SHA256, salt)
        .extract(file_key)
        .expand(&[info], HKDF_SHA256)
        .and_then(|okm| okm.fill(key.as_mut_slice()))
        .map_err(|_| io::Error::other("HKDF failed"))?;
    Ok(key)
}

fn header_mac_key(file_key: &[u8; FILE_KEY_BYTES]) -> io::Result<hmac::Key> {
    Ok(hmac::Key::new(
        hmac::HMAC_SHA256,
        derive(file_key, &[], b"header")?.as_slice(),
    ))
}

fn payload_key(file_key: &[u8; FILE_KEY_BYTES], nonce: &[u8; NONCE_BYTES]) -> io::Result<LessSafeKey> {
    let key = derive(file_key, nonce, b"payload")?;
    UnboundKey::new(&CHACHA20_POLY1305, key.as_slice())
        .map(LessSafeKey::new)
        .map_err(|_| io::Error::other("ChaCha20-Poly1305 key"))
}

/// A chunk's nonce: its number, 11 bytes big-endian, then 1 on the last chunk, else 0.
fn chunk_nonce(index: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::assume_unique_for_key(nonce)
}

fn random(bytes: &mut [u8]) -> io::Result<()> {
    aws_lc_rs::rand::fill(bytes).map_err(|_| io::Error::other("no random bytes"))
}

fn damaged(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: damaged or cut short"))
}
