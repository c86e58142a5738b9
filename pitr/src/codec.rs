//! The stored-object format: one format for every file pitr keeps, so one integrity check serves all.
//!
//! An object is a 24-byte header followed by the payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `PITR` |
//! | 4 | 1 | format version (1) |
//! | 5 | 1 | compression: 0 none, 1 zstd, 2 gzip |
//! | 6 | 2 | reserved, zero |
//! | 8 | 8 | size of the original bytes, little-endian |
//! | 16 | 4 | CRC-32 (IEEE, crc32fast) of the original bytes |
//! | 20 | 4 | CRC-32 of header bytes 0..20 |
//!
//! The header alone tells size and checksum of the original without decompressing, and decoding
//! always verifies both, so a flipped bit anywhere is reported as corruption, never passed on.

use std::fmt;
use std::io::{BufRead, Read, Write};
use std::str::FromStr;
use std::sync::mpsc;

use crate::error::{Error, Result};
use crate::fsio::PageBuffer;

pub mod json;

const MAGIC: &[u8; 4] = b"PITR";
const FORMAT_VERSION: u8 = 1;
/// Length of the object header.
pub const HEADER_LEN: usize = 24;

/// How the payload of an object is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Stored as is.
    None,
    /// Zstandard: the default; fast, and compresses WAL well.
    #[default]
    Zstd,
    /// gzip (deflate), for sites that need it.
    Gzip,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
            Compression::Gzip => 2,
        }
    }

    fn from_code(code: u8) -> Option<Compression> {
        [Compression::None, Compression::Zstd, Compression::Gzip]
            .into_iter()
            .find(|c| c.code() == code)
    }

    /// The level used when none is configured.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 3,
            Compression::Gzip => 6,
        }
    }

    /// The levels the codec accepts.
    pub fn level_range(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Compression::None => 0..=0,
            Compression::Zstd => 1..=19,
            Compression::Gzip => 1..=9,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        })
    }
}

impl FromStr for Compression {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Compression::None),
            "zstd" | "zst" => Ok(Compression::Zstd),
            "gzip" | "gz" => Ok(Compression::Gzip),
            other => Err(Error::InvalidInput(format!(
                "unknown compression '{other}': use zstd, gzip or none"
            ))),
        }
    }
}

/// A compression and its level, validated together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    compression: Compression,
    level: i32,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            compression: Compression::Zstd,
            level: Compression::Zstd.default_level(),
        }
    }
}

impl Codec {
    /// A codec; `level` defaults per compression and must lie in its range (it is ignored
    /// without compression).
    pub fn new(compression: Compression, level: Option<i32>) -> Result<Codec> {
        let level = match compression {
            Compression::None => 0,
            _ => level.unwrap_or_else(|| compression.default_level()),
        };
        let range = compression.level_range();
        if !range.contains(&level) {
            return Err(Error::InvalidInput(format!(
                "compression level {level} is out of range for {compression} ({}..={})",
                range.start(),
                range.end()
            )));
        }
        Ok(Codec { compression, level })
    }

    /// The compression.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Encodes `raw` into a stored object.
    pub fn encode(&self, raw: &[u8]) -> Vec<u8> {
        // Handed over whole: no copy through a read buffer.
        Encoder::new(*self, 1)
            .and_then(|mut encoder| encoder.write(raw).and_then(|()| encoder.finish()))
            .expect("compressing into a Vec cannot fail")
    }

    /// Encodes everything `reader` yields into a stored object in one pass: it is read in pieces
    /// of [`CHUNK`] bytes, checksummed and compressed on the way, so memory is the object being
    /// built plus one piece, whatever the input's size (a WAL segment of 1 GiB included).
    /// `threads` above 1 lets zstd compress pieces of [`ZSTD_JOB`] bytes on that many threads:
    /// for one large input that nothing else works on meanwhile (archive-push), not for many
    /// inputs compressed side by side (backup's jobs). Errors are the reader's.
    pub fn encode_from(&self, reader: &mut dyn Read, threads: u32) -> std::io::Result<Vec<u8>> {
        let mut encoder = Encoder::new(*self, threads)?;
        let mut chunk = PageBuffer::new(CHUNK);
        loop {
            let filled = fill(reader, &mut chunk)?;
            if filled == 0 {
                break;
            }
            encoder.write(&chunk[..filled])?;
        }
        encoder.finish()
    }
}

/// Builds one stored object from bytes handed over as they come (the WAL receiver's segments,
/// [`Codec::encode_from`]'s pieces): checksummed and compressed on the way into `W`, in memory
/// (`Vec<u8>`, the default) or into the object as it is written ([`Repo::wal_writer`]).
///
/// [`Repo::wal_writer`]: crate::repo::Repo::wal_writer
pub struct Encoder<W: Write = Vec<u8>> {
    compression: Compression,
    sink: Sink<W>,
    raw_len: u64,
    crc: crc32fast::Hasher,
}

impl Encoder {
    /// An empty object of `codec` in memory, compressed on `threads` threads (see
    /// [`Codec::encode_from`]).
    pub fn new(codec: Codec, threads: u32) -> std::io::Result<Encoder> {
        Encoder::with_output(codec, threads, Vec::new())
    }

    /// Ends the compressed stream (an encoder's errors surface here, not in a drop) and returns
    /// the object, header first.
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        let (mut out, header) = self.finish_output()?;
        out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        Ok(out)
    }
}

impl<W: Write> Encoder<W> {
    /// An empty object of `codec` written into `out` as it is encoded, starting with room for
    /// the header (zeros), which only [`Encoder::finish_output`] knows.
    pub fn with_output(codec: Codec, threads: u32, mut out: W) -> std::io::Result<Encoder<W>> {
        out.write_all(&[0u8; HEADER_LEN])?;
        let sink = match codec.compression {
            Compression::None => Sink::Plain(out),
            // The streaming encoder compresses 0.1-0.2 % better than one-shot
            // `zstd::bulk::compress` at the same level (bench/findings.md), and WAL is kept long.
            Compression::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(out, codec.level)?;
                if threads > 1 {
                    encoder.multithread(threads)?;
                    encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB))?;
                }
                Sink::Zstd(encoder)
            }
            Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(codec.level as u32),
            )),
        };
        Ok(Encoder {
            compression: codec.compression,
            sink,
            raw_len: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Appends `bytes` to the original.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.raw_len += bytes.len() as u64;
        self.crc.update(bytes);
        match &mut self.sink {
            Sink::Plain(out) => out.write_all(bytes),
            Sink::Zstd(encoder) => encoder.write_all(bytes),
            Sink::Gzip(encoder) => encoder.write_all(bytes),
        }
    }

    /// How many bytes of the original were handed over.
    pub fn raw_len(&self) -> u64 {
        self.raw_len
    }

    /// The output, as far as the compressor has written it.
    pub fn output_mut(&mut self) -> &mut W {
        match &mut self.sink {
            Sink::Plain(out) => out,
            Sink::Zstd(encoder) => encoder.get_mut(),
            Sink::Gzip(encoder) => encoder.get_mut(),
        }
    }

    /// Ends the compressed stream (an encoder's errors surface here, not in a drop): the output,
    /// whose first [`HEADER_LEN`] bytes are still zeros, and the header that belongs there.
    pub fn finish_output(self) -> std::io::Result<(W, ObjectHeader)> {
        let out = match self.sink {
            Sink::Plain(out) => out,
            Sink::Zstd(encoder) => encoder.finish()?,
            Sink::Gzip(encoder) => encoder.finish()?,
        };
        let header = ObjectHeader {
            compression: self.compression,
            raw_len: self.raw_len,
            raw_crc: self.crc.finalize(),
        };
        Ok((out, header))
    }
}

/// Where an [`Encoder`] puts the payload: the object, after room for its header.
enum Sink<W: Write> {
    Plain(W),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
}

/// How much input one zstd thread compresses at a time in [`Codec::encode_from`]. Measured on a
/// 2-core machine with pgbench segments at level 3 (one archive-push each, median of 39): jobs of 1,
/// 2, 4 and 8 MiB took 35, 34, 37 and 40 ms; one thread, 60 ms; the compressed size stays within
/// 0.5 % of one thread's.
const ZSTD_JOB: u32 = 2 << 20;

/// The decoded header of a stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    /// The payload's compression.
    pub compression: Compression,
    /// Size of the original bytes.
    pub raw_len: u64,
    /// CRC-32 of the original bytes.
    pub raw_crc: u32,
}

impl ObjectHeader {
    /// The header describing `raw` stored with `compression`.
    pub fn of(raw: &[u8], compression: Compression) -> ObjectHeader {
        ObjectHeader {
            compression,
            raw_len: raw.len() as u64,
            raw_crc: crc32fast::hash(raw),
        }
    }

    /// The header as stored, its own CRC-32 included: what [`Codec::encode`] writes before the
    /// payload (also for tools that build objects from precompressed payloads, such as the
    /// synthetic repository of `pitr/examples/synthetic_repo.rs`).
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(MAGIC);
        h[4] = FORMAT_VERSION;
        h[5] = self.compression.code();
        h[8..16].copy_from_slice(&self.raw_len.to_le_bytes());
        h[16..20].copy_from_slice(&self.raw_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..20]);
        h[20..24].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Checks decoded content of `len` bytes with CRC-32 `crc` against the header.
    fn check_content(&self, len: u64, crc: u32, what: &str) -> Result<()> {
        let corrupt = |reason: String| Error::Corrupt {
            what: what.to_string(),
            reason,
        };
        if len != self.raw_len {
            return Err(corrupt(format!(
                "decoded {len} bytes, the header says {}",
                self.raw_len
            )));
        }
        if crc != self.raw_crc {
            return Err(corrupt(format!(
                "CRC-32 {crc:08x} of the content, the header says {:08x}",
                self.raw_crc
            )));
        }
        Ok(())
    }

    /// Reads and checks the header at the start of `object`; `what` names it in errors.
    pub fn parse(object: &[u8], what: &str) -> Result<ObjectHeader> {
        let corrupt = |reason: String| Error::Corrupt {
            what: what.to_string(),
            reason,
        };
        let h = object
            .get(..HEADER_LEN)
            .ok_or_else(|| corrupt(format!("only {} bytes, shorter than the object header", object.len())))?;
        if &h[..4] != MAGIC {
            return Err(corrupt("not a pitr object (bad magic)".into()));
        }
        let stored_crc = u32::from_le_bytes(h[20..24].try_into().expect("4 bytes"));
        if crc32fast::hash(&h[..20]) != stored_crc {
            return Err(corrupt("object header checksum mismatch".into()));
        }
        if h[4] != FORMAT_VERSION {
            return Err(corrupt(format!(
                "object format version {} is not supported by this pitr",
                h[4]
            )));
        }
        let compression =
            Compression::from_code(h[5]).ok_or_else(|| corrupt(format!("unknown compression code {}", h[5])))?;
        Ok(ObjectHeader {
            compression,
            raw_len: u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")),
            raw_crc: u32::from_le_bytes(h[16..20].try_into().expect("4 bytes")),
        })
    }
}

/// Whether `bytes` begin as a stored object does (its magic), rather than, say, a JSON record.
pub fn is_object(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Decodes a stored object, verifying size and CRC-32 of the result; `what` names it in errors.
pub fn decode(object: &[u8], what: &str) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    decode_into(object, what, &mut raw)?;
    Ok(raw)
}

/// [`decode`] into `raw`, replacing its content and keeping its memory: for decoding many
/// objects in a row without mapping and zeroing a fresh buffer for each.
pub fn decode_into(object: &[u8], what: &str, raw: &mut Vec<u8>) -> Result<()> {
    let header = ObjectHeader::parse(object, what)?;
    let corrupt = |reason: String| Error::Corrupt {
        what: what.to_string(),
        reason,
    };
    let payload = &object[HEADER_LEN..];
    let capacity = usize::try_from(header.raw_len).map_err(|_| corrupt("implausible size".into()))?;
    raw.clear();
    raw.reserve(capacity.min(1 << 30));
    let limit = header.raw_len + 1;
    let read = match header.compression {
        Compression::None => payload.take(limit).read_to_end(raw).map(drop),
        // One-shot into the buffer, sized by the header (a segment or relation file part, at
        // most 1 GiB as PostgreSQL writes them); streaming for anything larger.
        Compression::Zstd if capacity <= 1 << 30 => {
            with_decompressor(|d| d.decompress_to_buffer(payload, raw).map(drop))
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::with_buffer(payload).and_then(|d| d.take(limit).read_to_end(raw).map(drop))
        }
        Compression::Gzip => flate2::read::GzDecoder::new(payload)
            .take(limit)
            .read_to_end(raw)
            .map(drop),
    };
    read.map_err(|e| corrupt(format!("{} payload does not decompress: {e}", header.compression)))?;
    header.check_content(raw.len() as u64, crc32fast::hash(raw), what)
}

thread_local! {
    /// Each thread's zstd decompression context, kept between objects: a deduplicated backup's
    /// restore decodes one frame per group, many of them a few kilobytes, where making a context
    /// for each would cost more than decoding.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `decode` with this thread's zstd decompression context, made on first use.
fn with_decompressor<T>(
    decode: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        decode(slot.as_mut().expect("made above"))
    })
}

/// How much [`decode_chunks`] hands over at a time: one write's worth ([`crate::fsio`]).
const CHUNK: usize = crate::fsio::WRITE_PIECE;

/// Decodes a stored object in chunks of up to 128 KiB, handing each to `each` in order (the
/// first one whole, unless the object is smaller), and verifies size and CRC-32 once all are
/// out; returns the decoded size. On an error, what `each` was handed must be discarded.
pub fn decode_chunks(object: &[u8], what: &str, each: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
    decode_stream(ObjectStream::of_slice(object, what)?, what, each)
}

/// [`decode_chunks`] of an [`ObjectStream`], read while it arrives.
pub fn decode_stream(object: ObjectStream<'_>, what: &str, each: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
    let header = object.header;
    let mut reader = decoded_reader(object.payload, header, what)?;
    let mut chunk = PageBuffer::new(CHUNK);
    let (mut total, mut crc) = (0u64, crc32fast::Hasher::new());
    loop {
        let filled = fill(&mut reader, &mut chunk).map_err(not_decodable(header, what))?;
        if filled == 0 {
            break;
        }
        total += filled as u64;
        crc.update(&chunk[..filled]);
        each(&chunk[..filled])?;
    }
    header.check_content(total, crc.finalize(), what)?;
    Ok(total)
}

/// A stored object read front to back from where it is kept (a file, or an object store's answer
/// while it arrives): its header, read and checked first, then the payload. A failure of the
/// source itself (not of the bytes) reaches the decoder as an [`std::io::Error`] wrapping a
/// [`SourceError`], and comes out of it as that error, not as corruption.
pub struct ObjectStream<'a> {
    /// The object's header.
    pub header: ObjectHeader,
    payload: Box<dyn BufRead + Send + 'a>,
}

impl<'a> ObjectStream<'a> {
    /// Reads and checks the header at the start of `source`; `what` names the object in errors.
    pub fn open(mut source: Box<dyn BufRead + Send + 'a>, what: &str) -> Result<ObjectStream<'a>> {
        let mut head = [0u8; HEADER_LEN];
        let got = fill(&mut source, &mut head).map_err(|e| source_failure(e, what, "read the object header"))?;
        let header = ObjectHeader::parse(&head[..got], what)?;
        Ok(ObjectStream {
            header,
            payload: source,
        })
    }

    /// The object held whole in `object`.
    pub fn of_slice(object: &'a [u8], what: &str) -> Result<ObjectStream<'a>> {
        let header = ObjectHeader::parse(object, what)?;
        Ok(ObjectStream {
            header,
            payload: Box::new(&object[HEADER_LEN..]),
        })
    }
}

/// The error of a source an [`ObjectStream`] reads from (a connection that dropped, a store that
/// answered an error mid-body), carried through the decoder inside an [`std::io::Error`].
#[derive(Debug)]
pub struct SourceError(pub Error);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {}

impl SourceError {
    /// `error` as an [`std::io::Error`], for a reader's `read`.
    pub fn into_io(error: Error) -> std::io::Error {
        std::io::Error::other(SourceError(error))
    }
}

/// The source's own error when `e` carries one ([`SourceError`]), or `Error::Io` otherwise.
fn source_failure(e: std::io::Error, what: &str, action: &'static str) -> Error {
    match unwrap_source(e) {
        Ok(error) => error,
        Err(e) => Error::io(action, std::path::Path::new(what))(e),
    }
}

/// The [`SourceError`] inside `e`, or `e` itself.
pub(crate) fn unwrap_source(e: std::io::Error) -> std::result::Result<Error, std::io::Error> {
    if !e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) {
        return Err(e);
    }
    let inner = e.into_inner().expect("checked above");
    Ok(inner.downcast::<SourceError>().expect("checked above").0)
}

/// [`decode_chunks`] of an [`ObjectStream`], on two threads: one reads and decompresses the next
/// chunks (while an object store's answer is still arriving) while the calling thread checksums
/// and hands over the one before. For one large object that a caller waits for (archive-get:
/// PostgreSQL's recovery waits; a restore's large parts), where the writing would otherwise follow
/// the download and the decompression. On an error, what `each` was handed must be discarded.
pub fn decode_chunks_pipelined(
    object: ObjectStream<'_>,
    what: &str,
    each: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let header = object.header;
    let (decoded, handed) = mpsc::sync_channel::<(PageBuffer, usize)>(PIPELINE_DEPTH);
    let (returned, free) = mpsc::channel::<PageBuffer>();
    for _ in 0..=PIPELINE_DEPTH {
        returned.send(PageBuffer::new(CHUNK)).expect("the receiver is here");
    }
    std::thread::scope(|scope| {
        let decoder = scope.spawn(move || -> Result<()> {
            let mut reader = decoded_reader(object.payload, header, what)?;
            // Ends when the content ends, or when the calling thread stopped taking chunks.
            while let Ok(mut chunk) = free.recv() {
                let filled = fill(&mut reader, &mut chunk).map_err(not_decodable(header, what))?;
                if filled == 0 || decoded.send((chunk, filled)).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let handing = move || -> Result<(u64, u32)> {
            let (mut total, mut crc) = (0u64, crc32fast::Hasher::new());
            for (chunk, filled) in handed {
                total += filled as u64;
                crc.update(&chunk[..filled]);
                each(&chunk[..filled])?;
                let _ = returned.send(chunk);
            }
            Ok((total, crc.finalize()))
        };
        let handed = handing();
        let decoded = decoder.join().expect("the decoder thread does not panic");
        // The caller's error first: the decoder stops without one when chunks are no longer taken.
        let (total, crc) = handed?;
        decoded?;
        header.check_content(total, crc, what)?;
        Ok(total)
    })
}

/// Chunks decoded ahead of the one being handed over, in [`decode_chunks_pipelined`].
const PIPELINE_DEPTH: usize = 4;

/// The decompressed content of `payload` (of an object whose header is `header`), at most one
/// byte longer than the header says, so that a longer content is told without decoding all of it.
fn decoded_reader<'a>(
    payload: Box<dyn BufRead + Send + 'a>,
    header: ObjectHeader,
    what: &str,
) -> Result<Box<dyn Read + Send + 'a>> {
    let reader: Box<dyn Read + Send> = match header.compression {
        Compression::None => Box::new(payload),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(payload).map_err(not_decodable(header, what))?)
        }
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(payload)),
    };
    Ok(Box::new(reader.take(header.raw_len + 1)))
}

/// The error for a payload of `header`'s compression that does not decompress, or the error of
/// the source it was read from ([`SourceError`]).
fn not_decodable(header: ObjectHeader, what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| match unwrap_source(e) {
        Ok(error) => error,
        Err(e) => Error::Corrupt {
            what: what.to_string(),
            reason: format!("{} payload does not decompress: {e}", header.compression),
        },
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
pub(crate) fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests;
