//! Deduplicated storage of a backup's files (manifest format 7): pieces, groups and packs, as
//! bench/dedup.md (section 8) measured and proposed them.
//!
//! - A **piece** is 8 KiB of a file (one PostgreSQL page, [`PIECE_SIZE`]), cut at the file's
//!   start; a file's last piece may be shorter. It is named by its BLAKE3-256 hash. An all-zero
//!   piece is never stored: a restore leaves it a hole.
//! - A **group** is 32 consecutive pieces of a file (256 KiB, [`GROUP_SIZE`]); a file's last
//!   group may hold fewer. Its record lists, for each piece, its hash, its length and where it
//!   is stored. Its **content hash** is the BLAKE3 of its pieces' hashes and lengths, so two
//!   groups of equal bytes have the same content hash wherever their pieces lie. A manifest lists
//!   each file's groups ([`GroupRef`]: content hash and where the record lies); a group whose
//!   content did not change since the previous backup is referenced again, not written again.
//! - A **pack** is an object `packs/<hh>/<name>` ([`crate::repo::pack_key`]), written once,
//!   create-only and durably, before the manifest that references it. `<name>` is the BLAKE3 of
//!   the backup's id and the pack's number in that backup: never a content hash, so a new pack
//!   can never meet an old pack of the same name. A pack is at most [`PACK_LIMIT`] bytes:
//!   - a **data pack** is [`DATA_MAGIC`], then frames: each frame is a [`crate::codec`] object
//!     (compressed, with the CRC-32 of its bytes) of the new pieces of one group, end to end;
//!   - an **index pack** is [`INDEX_MAGIC`], then group records end to end.
//!
//!   A pack has no table of contents: every reference says where its bytes lie (a piece: its
//!   pack, its frame's offset and length, and its offset and length in the decoded frame; a
//!   group: its pack, offset and length), and what they hash to.
//!
//! Group record (little-endian): `u8` count of packs P, P × 32-byte pack names, `u8` count of
//! pieces N (1 to 32), then N × (32-byte hash, `u8` pack index or [`ZERO_PIECE`], `u64` frame
//! offset, `u32` frame length, `u32` offset in the decoded frame, `u32` length).
//!
//! Everything read is checked before a byte counts: a group record against its content hash, a
//! piece against its hash (a frame's CRC-32 comes first, when it is decoded). Reads are by
//! range, coalesced per pack ([`read_groups`], [`read_frames`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{self, Codec};
use crate::error::{Error, Result};
use crate::repo::{pack_key, Repo};

/// A piece's size: one PostgreSQL page.
pub const PIECE_SIZE: usize = crate::pg::page::BLOCK_SIZE;
/// Pieces in a group.
pub const GROUP_PIECES: usize = 32;
/// A group's size in the file.
pub const GROUP_SIZE: usize = PIECE_SIZE * GROUP_PIECES;
/// A pack's largest size: a job holds at most one data pack and one index pack being built.
pub const PACK_LIMIT: usize = super::manifest::PART_SIZE as usize;
/// The first bytes of a data pack.
pub const DATA_MAGIC: &[u8; 8] = b"pitrDAT1";
/// The first bytes of an index pack.
pub const INDEX_MAGIC: &[u8; 8] = b"pitrIDX1";
/// The pack index of an all-zero piece in a group record: stored nowhere.
pub const ZERO_PIECE: u8 = 0xFF;

/// Reads of one pack that lie less than this apart are made as one.
const COALESCE_GAP: u64 = 1 << 20;
/// The longest read made of a pack at once.
const LONGEST_READ: u64 = PACK_LIMIT as u64;

/// A BLAKE3-256 hash: of a piece, of a group's content, or a pack's name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads 64 hex digits.
    pub fn parse(text: &str) -> Option<Hash> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Hash(hash))
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Hash, D::Error> {
        let text = String::deserialize(deserializer)?;
        Hash::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("'{text}' is not 64 hex digits")))
    }
}

/// The name of pack `number` of backup `backup_id`.
pub fn pack_name(backup_id: &str, number: u64) -> Hash {
    let mut hasher = blake3::Hasher::new_derive_key("pitr pack name v1");
    hasher.update(backup_id.as_bytes());
    hasher.update(&number.to_le_bytes());
    Hash(*hasher.finalize().as_bytes())
}

/// A file's group in a manifest: its content hash and where its record lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRef {
    /// The BLAKE3 of its pieces' hashes and lengths.
    pub hash: Hash,
    /// The index pack holding its record.
    pub pack: Hash,
    /// The record's offset in the pack.
    pub at: u64,
    /// The record's length.
    pub len: u32,
}

/// A frame of a data pack: the compressed new pieces of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    /// The data pack.
    pub pack: Hash,
    /// The frame's offset in the pack.
    pub at: u64,
    /// The frame's stored length.
    pub len: u32,
}

/// One piece of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceRef {
    /// The BLAKE3 of its bytes.
    pub hash: Hash,
    /// Its length: [`PIECE_SIZE`] but for a file's last piece.
    pub len: u32,
    /// Where its bytes lie: a frame and an offset in its decoded bytes; `None` for an all-zero
    /// piece.
    pub stored: Option<(Frame, u32)>,
}

/// A group record: up to [`GROUP_PIECES`] pieces, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The pieces.
    pub pieces: Vec<PieceRef>,
}

/// The content hash of pieces of these hashes and lengths.
pub fn content_hash(pieces: impl IntoIterator<Item = (Hash, u32)>) -> Hash {
    let mut hasher = blake3::Hasher::new();
    for (hash, len) in pieces {
        hasher.update(&hash.0);
        hasher.update(&len.to_le_bytes());
    }
    Hash(*hasher.finalize().as_bytes())
}

impl Group {
    /// The group's content hash.
    pub fn content_hash(&self) -> Hash {
        content_hash(self.pieces.iter().map(|p| (p.hash, p.len)))
    }

    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut packs: Vec<Hash> = Vec::new();
        for (frame, _) in self.pieces.iter().filter_map(|p| p.stored) {
            if !packs.contains(&frame.pack) {
                packs.push(frame.pack);
            }
        }
        let mut out = Vec::with_capacity(2 + packs.len() * 32 + self.pieces.len() * 57);
        out.push(packs.len() as u8);
        packs.iter().for_each(|p| out.extend_from_slice(&p.0));
        out.push(self.pieces.len() as u8);
        for piece in &self.pieces {
            out.extend_from_slice(&piece.hash.0);
            let (index, frame, at) = match piece.stored {
                Some((frame, at)) => {
                    let index = packs.iter().position(|p| *p == frame.pack).expect("listed above");
                    (index as u8, (frame.at, frame.len), at)
                }
                None => (ZERO_PIECE, (0, 0), 0),
            };
            out.push(index);
            out.extend_from_slice(&frame.0.to_le_bytes());
            out.extend_from_slice(&frame.1.to_le_bytes());
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(&piece.len.to_le_bytes());
        }
        out
    }

    /// Reads a record, which must hash to `expected` (`what` names it in errors).
    pub fn decode(bytes: &[u8], expected: Hash, what: &str) -> Result<Group> {
        let corrupt = |reason: &str| Error::Corrupt {
            what: what.to_string(),
            reason: format!("{reason} (the group record is damaged)"),
        };
        let mut reader = Reader(bytes);
        let pack_count = reader.u8().ok_or_else(|| corrupt("it ends early"))?;
        let packs: Vec<Hash> = (0..pack_count)
            .map(|_| reader.hash())
            .collect::<Option<_>>()
            .ok_or_else(|| corrupt("it ends early"))?;
        let count = reader.u8().ok_or_else(|| corrupt("it ends early"))? as usize;
        if count == 0 || count > GROUP_PIECES {
            return Err(corrupt(&format!("it lists {count} pieces")));
        }
        let mut pieces = Vec::with_capacity(count);
        for _ in 0..count {
            let piece = reader
                .piece(&packs)
                .ok_or_else(|| corrupt("a piece is cut short or names no pack"))?;
            if piece.len == 0 || piece.len as usize > PIECE_SIZE {
                return Err(corrupt(&format!("a piece of {} bytes", piece.len)));
            }
            pieces.push(piece);
        }
        if !reader.0.is_empty() {
            return Err(corrupt("it is longer than its pieces"));
        }
        let group = Group { pieces };
        if group.content_hash() != expected {
            return Err(corrupt("its content hash is not the manifest's"));
        }
        Ok(group)
    }
}

/// Reads a group record front to back.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    fn hash(&mut self) -> Option<Hash> {
        self.take().map(Hash)
    }

    fn piece(&mut self, packs: &[Hash]) -> Option<PieceRef> {
        let hash = self.hash()?;
        let index = self.u8()?;
        let frame_at = self.take().map(u64::from_le_bytes)?;
        let frame_len = self.u32()?;
        let at = self.u32()?;
        let len = self.u32()?;
        let stored = match index {
            ZERO_PIECE => None,
            index => Some((
                Frame {
                    pack: *packs.get(index as usize)?,
                    at: frame_at,
                    len: frame_len,
                },
                at,
            )),
        };
        Some(PieceRef { hash, len, stored })
    }
}

/// Whether a piece is all zeros (stored nowhere).
pub fn is_zero(piece: &[u8]) -> bool {
    piece.iter().all(|b| *b == 0)
}

/// The packs a backup writes: one writer per job at a time, each filling a data pack and an
/// index pack of its own, put create-only and durably when full and at [`Packs::finish`].
pub struct Packs<'a> {
    repo: &'a Repo,
    backup_id: &'a str,
    codec: Codec,
    numbers: AtomicU64,
    idle: Mutex<Vec<PackWriter>>,
    stored: AtomicU64,
}

/// One job's packs being built.
#[derive(Default)]
pub struct PackWriter {
    data: Option<OpenPack>,
    index: Option<OpenPack>,
}

struct OpenPack {
    name: Hash,
    bytes: Vec<u8>,
}

impl<'a> Packs<'a> {
    /// The packs of backup `backup_id`, frames compressed with `codec`.
    pub fn new(repo: &'a Repo, backup_id: &'a str, codec: Codec) -> Packs<'a> {
        Packs {
            repo,
            backup_id,
            codec,
            numbers: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            stored: AtomicU64::new(0),
        }
    }

    /// Runs `work` with a writer no other job uses meanwhile.
    pub fn with_writer<T>(&self, work: impl FnOnce(&mut PackWriter) -> Result<T>) -> Result<T> {
        let mut writer = self.idle.lock().expect("no panic holds it").pop().unwrap_or_default();
        let result = work(&mut writer);
        self.idle.lock().expect("no panic holds it").push(writer);
        result
    }

    /// Stores `raw`, the new pieces of one group end to end, as one frame.
    pub fn store_frame(&self, writer: &mut PackWriter, raw: &[u8]) -> Result<Frame> {
        let frame = self.codec.encode(raw);
        let (name, at) = self.append(&mut writer.data, DATA_MAGIC, &frame)?;
        Ok(Frame {
            pack: name,
            at,
            len: frame.len() as u32,
        })
    }

    /// Stores a group's record; returns its reference.
    pub fn store_group(&self, writer: &mut PackWriter, group: &Group) -> Result<GroupRef> {
        let record = group.encode();
        let (pack, at) = self.append(&mut writer.index, INDEX_MAGIC, &record)?;
        Ok(GroupRef {
            hash: group.content_hash(),
            pack,
            at,
            len: record.len() as u32,
        })
    }

    /// Puts every pack still being built. Every pack is durable when this returns.
    pub fn finish(&self) -> Result<u64> {
        let writers = std::mem::take(&mut *self.idle.lock().expect("no panic holds it"));
        for mut writer in writers {
            self.put(writer.data.take())?;
            self.put(writer.index.take())?;
        }
        Ok(self.stored.load(Ordering::Relaxed))
    }

    /// Appends `item` to the open pack (opening one, or putting a full one first); returns the
    /// pack's name and where the item starts.
    fn append(&self, open: &mut Option<OpenPack>, magic: &[u8; 8], item: &[u8]) -> Result<(Hash, u64)> {
        if open.as_ref().is_some_and(|p| p.bytes.len() + item.len() > PACK_LIMIT) {
            self.put(open.take())?;
        }
        let pack = open.get_or_insert_with(|| OpenPack {
            name: pack_name(self.backup_id, self.numbers.fetch_add(1, Ordering::Relaxed)),
            bytes: magic.to_vec(),
        });
        let at = pack.bytes.len() as u64;
        pack.bytes.extend_from_slice(item);
        Ok((pack.name, at))
    }

    fn put(&self, pack: Option<OpenPack>) -> Result<()> {
        let Some(pack) = pack else { return Ok(()) };
        self.repo
            .storage()
            .put_if_absent(&pack_key(&pack.name.hex()), &pack.bytes)?;
        self.stored.fetch_add(pack.bytes.len() as u64, Ordering::Relaxed);
        crate::crash_point::reached("backup:pack");
        Ok(())
    }
}

/// The groups of the previous deduplicated backup, by file: what a backup compares with.
#[derive(Debug, Default)]
pub struct PreviousGroups {
    files: HashMap<String, Vec<GroupRef>>,
    /// The entries of the files the skip rule may take unread (see [`PreviousGroups::trusting`]).
    unchanged: HashMap<String, super::manifest::FileEntry>,
    /// Packs an expire condemned: never referenced again (see [`super::sweep`]).
    condemned: std::collections::HashSet<Hash>,
}

impl PreviousGroups {
    /// The groups of `manifest`'s data directory files (none from a manifest before format 7).
    pub fn of(manifest: &super::manifest::Manifest) -> PreviousGroups {
        PreviousGroups {
            files: manifest
                .files
                .iter()
                .filter(|f| f.is_deduplicated())
                .map(|f| (f.path.clone(), f.groups.clone()))
                .collect(),
            ..PreviousGroups::default()
        }
    }

    /// The same, with the entries of `manifest`'s files that it recorded as trusted (see
    /// [`super::manifest::FileStat`]): a file whose stat is still the recorded one is taken from
    /// there unread. Only for a backup that the skip rule allows to skip at all (hourly, of the
    /// same data directory, the clock not behind `manifest`'s stop). An entry whose groups do
    /// not cover its size, or whose stat is not of its size, is not taken.
    pub fn trusting(self, manifest: &super::manifest::Manifest) -> PreviousGroups {
        let unchanged = manifest
            .files
            .iter()
            .filter(|f| {
                f.is_deduplicated()
                    && f.parts.is_empty()
                    && f.groups.len() as u64 == f.size.div_ceil(GROUP_SIZE as u64)
                    && f.stat.is_some_and(|s| s.trusted && s.size == f.size)
            })
            .map(|f| (f.path.clone(), f.clone()))
            .collect();
        PreviousGroups { unchanged, ..self }
    }

    /// The previous entry of the file at `path`, when it was trusted and may be taken unread.
    pub fn unchanged(&self, path: &str) -> Option<&super::manifest::FileEntry> {
        self.unchanged.get(path)
    }

    /// The same, never referencing the `condemned` packs.
    pub fn avoiding(self, condemned: std::collections::HashSet<Hash>) -> PreviousGroups {
        PreviousGroups { condemned, ..self }
    }

    /// Whether packs are condemned: then a group is referenced again only once its record is
    /// read, and none of its pieces lies in a condemned pack.
    pub fn any_condemned(&self) -> bool {
        !self.condemned.is_empty()
    }

    /// Whether the pack `name` may be referenced.
    pub fn may_use(&self, name: &Hash) -> bool {
        !self.condemned.contains(name)
    }

    /// The previous groups of the file at `path` from group `first` on (a task's), each at
    /// its index from there.
    pub fn groups_of(&self, path: &str, first: usize) -> &[GroupRef] {
        let groups = self.files.get(path).map_or(&[][..], Vec::as_slice);
        let end = groups
            .len()
            .min(first + super::manifest::PART_SIZE as usize / GROUP_SIZE);
        groups.get(first..end).unwrap_or_default()
    }
}

/// One read of a pack: from `start` to `end`.
struct Span {
    pack: Hash,
    start: u64,
    end: u64,
}

/// The reads that cover `items` (pack, offset, length), sorted and coalesced per pack.
fn spans(mut items: Vec<(Hash, u64, u64)>) -> Vec<Span> {
    items.sort_unstable();
    items.dedup();
    let mut spans: Vec<Span> = Vec::new();
    for (pack, at, len) in items {
        match spans.last_mut() {
            Some(span)
                if span.pack == pack && at <= span.end + COALESCE_GAP && at + len - span.start <= LONGEST_READ =>
            {
                span.end = span.end.max(at + len);
            }
            _ => spans.push(Span {
                pack,
                start: at,
                end: at + len,
            }),
        }
    }
    spans
}

/// Reads each span once; calls `each` with the span and its bytes.
fn read_spans(
    repo: &Repo,
    items: Vec<(Hash, u64, u64)>,
    mut each: impl FnMut(&Span, &[u8]) -> Result<()>,
) -> Result<()> {
    for span in spans(items) {
        let key = pack_key(&span.pack.hex());
        let bytes = repo
            .storage()
            .get_range(&key, span.start, span.end - span.start)?
            .ok_or_else(|| Error::Corrupt {
                what: repo.storage().describe(&key),
                reason: "the pack is missing from the repository".into(),
            })?;
        each(&span, &bytes)?;
    }
    Ok(())
}

/// Where a group's record is described in errors.
pub fn describe_group(repo: &Repo, group: &GroupRef) -> String {
    format!(
        "group {} at {} of {}",
        group.hash,
        group.at,
        repo.storage().describe(&pack_key(&group.pack.hex()))
    )
}

/// Reads the records of `refs`, each checked against its content hash.
pub fn read_groups(repo: &Repo, refs: &[GroupRef]) -> Result<HashMap<GroupRef, Group>> {
    let items = refs.iter().map(|g| (g.pack, g.at, u64::from(g.len))).collect();
    let mut found = HashMap::with_capacity(refs.len());
    read_spans(repo, items, |span, bytes| {
        for group in refs
            .iter()
            .filter(|g| g.pack == span.pack && g.at >= span.start && g.at < span.end)
        {
            let start = (group.at - span.start) as usize;
            let record = &bytes[start..start + group.len as usize];
            found.insert(*group, Group::decode(record, group.hash, &describe_group(repo, group))?);
        }
        Ok(())
    })?;
    Ok(found)
}

/// Where a frame is described in errors.
pub fn describe_frame(repo: &Repo, frame: &Frame) -> String {
    format!(
        "the frame at {} of {}",
        frame.at,
        repo.storage().describe(&pack_key(&frame.pack.hex()))
    )
}

/// Reads `frames`, each once, decodes each (checking its CRC-32) and calls `each` with it and
/// its bytes.
pub fn read_frames(repo: &Repo, frames: &[Frame], mut each: impl FnMut(&Frame, &[u8]) -> Result<()>) -> Result<()> {
    let items = frames.iter().map(|f| (f.pack, f.at, u64::from(f.len))).collect();
    let mut raw = Vec::new();
    let mut done = std::collections::HashSet::new();
    read_spans(repo, items, |span, bytes| {
        for frame in frames
            .iter()
            .filter(|f| f.pack == span.pack && f.at >= span.start && f.at < span.end)
        {
            if !done.insert(*frame) {
                continue;
            }
            let start = (frame.at - span.start) as usize;
            codec::decode_into(
                &bytes[start..start + frame.len as usize],
                &describe_frame(repo, frame),
                &mut raw,
            )?;
            each(frame, &raw)?;
        }
        Ok(())
    })
}

/// The bytes of `piece` in its decoded frame `raw`, checked against the piece's hash.
pub fn piece_bytes<'r>(repo: &Repo, piece: &PieceRef, frame: &Frame, at: u32, raw: &'r [u8]) -> Result<&'r [u8]> {
    let bytes = raw.get(at as usize..at as usize + piece.len as usize);
    match bytes {
        Some(bytes) if Hash::of(bytes) == piece.hash => Ok(bytes),
        _ => Err(Error::Corrupt {
            what: describe_frame(repo, frame),
            reason: format!(
                "piece {} ({} bytes at {at} of the frame) is not there or has other content",
                piece.hash, piece.len
            ),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn piece(seed: u8, stored: Option<(Frame, u32)>) -> PieceRef {
        PieceRef {
            hash: Hash::of(&[seed; 8]),
            len: PIECE_SIZE as u32,
            stored,
        }
    }

    #[test]
    fn a_group_record_round_trips_and_a_change_is_refused() {
        let frame = |pack: u8, at| Frame {
            pack: Hash([pack; 32]),
            at,
            len: 300,
        };
        let group = Group {
            pieces: vec![
                piece(1, Some((frame(7, 8), 0))),
                piece(2, None),
                piece(3, Some((frame(9, 308), 8192))),
                piece(4, Some((frame(7, 8), 8192))),
            ],
        };
        let bytes = group.encode();
        assert_eq!(Group::decode(&bytes, group.content_hash(), "g").unwrap(), group);
        // The count of packs, a piece's hash, the last piece's length. (A damaged location is
        // found when the piece read from there fails its hash.)
        for at in [0, 70, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1;
            assert!(Group::decode(&damaged, group.content_hash(), "g").is_err(), "byte {at}");
        }
        assert!(Group::decode(&bytes[..bytes.len() - 1], group.content_hash(), "g").is_err());
        let err = Group::decode(&bytes, Hash([0; 32]), "g").unwrap_err().to_string();
        assert!(err.contains("content hash"), "{err}");
    }

    #[test]
    fn hashes_print_and_parse_as_hex() {
        let hash = Hash::of(b"x");
        assert_eq!(Hash::parse(&hash.hex()), Some(hash));
        assert_eq!(Hash::parse("zz"), None);
        assert_ne!(pack_name("a", 0), pack_name("a", 1));
    }

    #[test]
    fn reads_of_a_pack_are_coalesced_but_not_across_packs_or_far_apart() {
        let (a, b) = (Hash([1; 32]), Hash([2; 32]));
        let found = spans(vec![(a, 100, 10), (b, 0, 5), (a, 8, 10), (a, 5 << 20, 10), (a, 8, 10)]);
        let found: Vec<(Hash, u64, u64)> = found.iter().map(|s| (s.pack, s.start, s.end)).collect();
        assert_eq!(found, [(a, 8, 110), (a, 5 << 20, (5 << 20) + 10), (b, 0, 5)]);
    }

    #[test]
    fn packs_are_written_whole_and_read_back_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        let raw: Vec<u8> = (0..2 * PIECE_SIZE).map(|i| (i % 7) as u8).collect();
        let (frame, group) = store_one_group(&repo, &raw);
        let groups = read_groups(&repo, &[group]).unwrap();
        let second = groups[&group].pieces[1];
        read_frames(&repo, &[frame], |f, decoded| {
            let (_, at) = second.stored.unwrap();
            assert_eq!(piece_bytes(&repo, &second, f, at, decoded).unwrap(), &raw[PIECE_SIZE..]);
            assert!(
                piece_bytes(&repo, &second, f, 0, decoded).is_err(),
                "another piece's bytes"
            );
            Ok(())
        })
        .unwrap();
    }

    /// Stores `raw` (whole pieces) as one frame in a data pack and its group in an index pack,
    /// both written: where they lie.
    pub(crate) fn store_one_group(repo: &Repo, raw: &[u8]) -> (Frame, GroupRef) {
        let packs = Packs::new(repo, "b", Codec::default());
        let stored = packs
            .with_writer(|writer| {
                let frame = packs.store_frame(writer, raw)?;
                let pieces = raw
                    .chunks(PIECE_SIZE)
                    .enumerate()
                    .map(|(i, bytes)| PieceRef {
                        hash: Hash::of(bytes),
                        len: bytes.len() as u32,
                        stored: Some((frame, (i * PIECE_SIZE) as u32)),
                    })
                    .collect();
                Ok((frame, packs.store_group(writer, &Group { pieces })?))
            })
            .unwrap();
        assert!(packs.finish().unwrap() > 0);
        stored
    }
}
