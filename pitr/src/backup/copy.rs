//! Copying a backup's files into the repository on a pool of jobs. A file is stored whole, or,
//! when it was larger than [`PART_SIZE`] at the walk, in parts of that size at fixed offsets:
//! one big relation file is then spread over every job. A job reads a piece 128 KiB at a time and
//! compresses it on the way, so it holds one stored object (at most a part's, compressed) and
//! not the piece's bytes besides.
//!
//! A deduplicated backup (format 7, [`Packed`]) reads the same tasks a group (256 KiB) at a
//! time instead, and stores only the pieces that changed since the previous backup of the file
//! into the job's packs (see [`super::packs`]); pg_control is always stored as an object.
//!
//! A deduplicated backup also records each file's stat as it read it, and whether the file is
//! trusted ([`FileStat`]), and it does not read a file at all when the previous backup trusted it
//! and its stat, taken here (after `pg_backup_start` returned, since the copy runs after it), is
//! still the recorded one: the skip rule of bench/dedup.md section 8.3 ([`unchanged`]). Whether a
//! backup may skip at all (hourly tier, same data directory, clock not set back) is decided by
//! its caller, which hands over only then the entries it may take ([`PreviousGroups::trusting`]).
//!
//! When the cluster has data checksums, every page of a relation fork is checked in the bytes
//! just read for the copy (no second read of the file): see [`PageCheck`]. A file taken unread
//! is not checked.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use super::manifest::{
    parts_crc, piece_key, BadPages, FileEntry, FileStat, PageChecksums, Part, BAD_BLOCKS_RECORDED, PART_SIZE,
};
use super::packs::{
    self, content_hash, Group, GroupRef, Hash, PackWriter, Packs, PieceRef, PreviousGroups, GROUP_SIZE, PIECE_SIZE,
};
use super::source::{SourceFile, SourceTree};
use crate::codec::{self, Codec, Encoder, ObjectHeader};
use crate::error::{Error, Result};
use crate::pg::page::{self, BLOCK_SIZE};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::wal::Lsn;

/// How the copy checks data pages, when the cluster has data checksums (8 KiB pages).
#[derive(Debug, Clone, Copy)]
pub(super) struct PageCheck {
    /// The backup's start LSN: pages changed from here on are skipped (they may be torn in the
    /// copy, and WAL replay writes them again), as pgBackRest does
    /// (src/command/backup/pageChecksum.c).
    pub start: Lsn,
    /// `RELSEG_SIZE`: blocks in a 1 GiB segment file, so segment N starts at block N × this.
    pub blocks_per_segment: u32,
}

/// What the copy of one piece found checking its pages.
#[derive(Debug, Default)]
struct PiecePages {
    checked: u64,
    skipped: u64,
    bad: Vec<u32>,
}

impl PiecePages {
    /// Adds what checking more of the piece's pages found.
    fn add(&mut self, more: PiecePages) {
        self.checked += more.checked;
        self.skipped += more.skipped;
        self.bad.extend(more.bad);
    }
}

/// What [`copy_files`] copied and found.
pub(super) struct Copied {
    /// The manifest's file entries.
    pub files: Vec<FileEntry>,
    /// What checking the pages found (`checked` false when nothing was checked).
    pub pages: PageChecksums,
    /// Files taken from the previous backup without reading them (the skip rule).
    pub skipped_files: usize,
    /// Their bytes.
    pub skipped_bytes: u64,
}

/// How a deduplicated backup stores its files: into `packs`, sharing what did not change since
/// `previous`.
pub(super) struct Packed<'a> {
    /// The backup's packs.
    pub packs: &'a Packs<'a>,
    /// The previous deduplicated backup's groups.
    pub previous: &'a PreviousGroups,
}

/// How [`copy_files`] copies.
#[derive(Clone, Copy)]
pub(super) struct Copying<'a> {
    /// Files copied at once.
    pub jobs: usize,
    /// How objects are compressed.
    pub codec: &'a Codec,
    /// How pages are checked, when they are.
    pub pages: Option<PageCheck>,
    /// Where a deduplicated backup stores its files; `None`: as objects of the backup's directory.
    pub packed: Option<&'a Packed<'a>>,
}

/// What storing one task gave: its object's (or its bytes') size, CRC-32 and stored size, and
/// in a deduplicated backup its groups.
#[derive(Clone)]
struct Stored {
    part: Part,
    groups: Vec<GroupRef>,
    /// In a deduplicated backup, what the task saw of its file around its read.
    seen: Option<Seen>,
}

/// What one task saw of its file: its stat before and after its read, and when it started.
#[derive(Clone, Copy)]
struct Seen {
    before: FileStat,
    after: FileStat,
    started: SystemTime,
}

/// One object to write: a whole file, or part `index` of it.
#[derive(Clone, Copy)]
struct Task<'a> {
    file: &'a SourceFile,
    part: Option<usize>,
    /// The file's last part reads to the end of the file, wherever that is by then.
    last: bool,
}

impl Task<'_> {
    fn offset(&self) -> u64 {
        self.part.map_or(0, |index| index as u64 * PART_SIZE)
    }
}

/// The objects one file is stored as, by its size at the walk.
fn tasks(file: &SourceFile) -> Vec<Task<'_>> {
    if file.size <= PART_SIZE {
        return vec![Task {
            file,
            part: None,
            last: true,
        }];
    }
    let count = file.size.div_ceil(PART_SIZE) as usize;
    (0..count)
        .map(|index| Task {
            file,
            part: Some(index),
            last: index + 1 == count,
        })
        .collect()
}

/// Copies every file on `jobs` threads, then pg_control; returns the manifest's file entries,
/// without the files that vanished during the copy (the server dropped them, which is normal).
pub(super) fn copy_files(
    repo: &Repo,
    dir: &str,
    tree: &SourceTree,
    how: &Copying,
    progress: &dyn Progress,
) -> Result<Copied> {
    let Copying {
        jobs,
        codec,
        pages,
        packed,
    } = *how;
    progress.begin(tree.files.len() as u64 + 1, tree.bytes());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|e| Error::Refused(format!("cannot start {jobs} copy threads: {e}")))?;
    let unread: Vec<Option<FileEntry>> = match packed {
        Some(packed) => pool.install(|| {
            tree.files
                .par_iter()
                .map(|file| unchanged(repo, packed.previous, file))
                .collect::<Result<_>>()
        })?,
        None => vec![None; tree.files.len()],
    };
    let (skipped_files, skipped_bytes) = unread
        .iter()
        .flatten()
        .fold((0, 0), |(files, bytes), entry| (files + 1, bytes + entry.size));
    progress.advance(skipped_bytes);
    let tasks: Vec<Task> = tree
        .files
        .iter()
        .zip(&unread)
        .filter(|(_, unread)| unread.is_none())
        .flat_map(|(file, _)| tasks(file))
        .collect();
    let stored: Vec<Option<(Stored, PiecePages)>> = pool.install(|| {
        tasks
            .par_iter()
            .map(|task| match packed {
                Some(packed) => copy_packed(repo, packed, task, pages, progress),
                None => copy_piece(repo, dir, task, codec, pages, progress),
            })
            .collect::<Result<_>>()
    })?;
    let checked = page_checksums(pages.is_some(), &tasks, &stored);
    let stored: Vec<Option<Stored>> = stored.into_iter().map(|s| s.map(|(stored, _)| stored)).collect();
    let mut copied = in_walk_order(&tree.files, unread, entries(&tasks, &stored));
    let control = tree.control.as_ref().expect("scan found pg_control");
    let control_tasks = self::tasks(control);
    let control_stored = control_tasks
        .iter()
        .map(|task| copy_piece(repo, dir, task, codec, None, progress).map(|s| s.map(|(stored, _)| stored)))
        .collect::<Result<Vec<_>>>()?;
    let control_entry = entries(&control_tasks, &control_stored)
        .pop()
        .ok_or_else(|| Error::Refused(format!("{} vanished during the backup", control.full_path.display())))?;
    copied.push(control_entry);
    progress.finish();
    Ok(Copied {
        files: copied,
        pages: checked,
        skipped_files,
        skipped_bytes,
    })
}

/// The previous backup's entry of `file`, to be taken without reading the file, when the skip
/// rule allows it: `previous` trusted the file, and its stat now, taken after `pg_backup_start`
/// returned, has the recorded size, mtime, ctime, inode and device. Its groups must also pass
/// the check a shared group passes in [`copy_packed`]: while packs are condemned, every group
/// record is read and none of its packs may be condemned. `None`: read the file (also when it
/// is gone or cannot be inspected: the read says what happened).
fn unchanged(repo: &Repo, previous: &PreviousGroups, file: &SourceFile) -> Result<Option<FileEntry>> {
    let Some(prior) = previous.unchanged(&file.path) else {
        return Ok(None);
    };
    let (Some(recorded), Ok(meta)) = (prior.stat, std::fs::metadata(&file.full_path)) else {
        return Ok(None);
    };
    if !meta.is_file() || !FileStat::of(&meta).same_as(&recorded) {
        return Ok(None);
    }
    if previous.any_condemned() {
        if !prior.groups.iter().all(|g| previous.may_use(&g.pack)) {
            return Ok(None);
        }
        let records = packs::read_groups(repo, &prior.groups)?;
        if !records.values().all(|group| usable(group, previous)) {
            return Ok(None);
        }
    }
    Ok(Some(FileEntry {
        mode: file.mode,
        mtime: file.mtime,
        stored_size: 0,
        ..prior.clone()
    }))
}

/// Whether none of `group`'s pieces lies in a condemned pack.
fn usable(group: &Group, previous: &PreviousGroups) -> bool {
    group
        .pieces
        .iter()
        .all(|p| p.stored.is_none_or(|(frame, _)| previous.may_use(&frame.pack)))
}

/// The entries of the files taken unread and of those `read` (in walk order, without the
/// files that vanished), put together in the walk's order.
fn in_walk_order(files: &[SourceFile], unread: Vec<Option<FileEntry>>, read: Vec<FileEntry>) -> Vec<FileEntry> {
    let mut read = read.into_iter().peekable();
    files
        .iter()
        .zip(unread)
        .filter_map(|(file, unread)| unread.or_else(|| read.next_if(|e| e.path == file.path)))
        .collect()
}

/// The pages' findings of every piece put together per file (`stored` in task order).
fn page_checksums(checked: bool, tasks: &[Task], stored: &[Option<(Stored, PiecePages)>]) -> PageChecksums {
    let mut found = PageChecksums {
        checked,
        ..PageChecksums::default()
    };
    for (task, piece) in tasks.iter().zip(stored) {
        let Some((_, pages)) = piece else { continue };
        found.pages_checked += pages.checked;
        found.pages_skipped += pages.skipped;
        if pages.bad.is_empty() {
            continue;
        }
        // The pieces of a file are consecutive tasks, in file order.
        let file = match found.bad_files.last_mut() {
            Some(file) if file.path == task.file.path => file,
            _ => {
                found.bad_files.push(BadPages {
                    path: task.file.path.clone(),
                    count: 0,
                    blocks: vec![],
                });
                found.bad_files.last_mut().expect("just pushed")
            }
        };
        file.count += pages.bad.len() as u64;
        let room = BAD_BLOCKS_RECORDED.saturating_sub(file.blocks.len());
        file.blocks.extend(pages.bad.iter().take(room));
    }
    found
}

/// The file entries of copied pieces; `stored` has one outcome per task, in task order.
fn entries(tasks: &[Task], stored: &[Option<Stored>]) -> Vec<FileEntry> {
    let mut entries = Vec::new();
    let mut start = 0;
    while start < tasks.len() {
        let file = tasks[start].file;
        let end = start + tasks[start..].iter().take_while(|t| std::ptr::eq(t.file, file)).count();
        // A file that vanished (in any of its parts) was dropped by the server: WAL replay
        // removes it anyway.
        if let Some(parts) = stored[start..end].iter().cloned().collect::<Option<Vec<Stored>>>() {
            entries.push(entry(file, tasks[start].part.is_some(), parts));
        }
        start = end;
    }
    entries
}

fn entry(file: &SourceFile, split: bool, stored: Vec<Stored>) -> FileEntry {
    let groups: Vec<GroupRef> = stored.iter().flat_map(|s| s.groups.iter().copied()).collect();
    let size = stored.iter().map(|s| s.part.size).sum();
    let stat = observed(&stored, size);
    let parts: Vec<Part> = stored.into_iter().map(|s| s.part).collect();
    let mut entry = FileEntry {
        path: file.path.clone(),
        size,
        mode: file.mode,
        mtime: file.mtime,
        crc32: parts_crc(&parts),
        stored_size: parts.iter().map(|p| p.stored_size).sum(),
        parts: vec![],
        groups,
        stat,
    };
    if split && entry.groups.is_empty() {
        entry.parts = parts;
    }
    entry
}

/// The stat a deduplicated backup records for a file read in the tasks `stored` (`size` bytes in
/// all): the last one seen, trusted when every stat around every task's read was the same, of
/// `size` bytes, with ctime and mtime at least a second older than the first read's start.
fn observed(stored: &[Stored], size: u64) -> Option<FileStat> {
    let seen: Vec<&Seen> = stored.iter().map(|s| s.seen.as_ref()).collect::<Option<_>>()?;
    let first = seen.first()?.before;
    let last = seen.last()?.after;
    let still = seen.iter().all(|s| s.before.same_as(&first) && s.after.same_as(&first));
    let started = seen.iter().map(|s| s.started).min()?;
    let settled = started
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|since| i64::try_from(since.as_nanos()).ok())
        .is_some_and(|start| {
            let limit = start - TRUST_MARGIN_NS;
            first.ctime_ns <= limit && first.mtime_ns <= limit
        });
    Some(FileStat {
        trusted: still && settled && first.size == size,
        ..last
    })
}

/// How much older than a read's start a file's ctime and mtime must be for the file to be
/// trusted: a second, far more than a tick of the coarse clock that file times come from, so a
/// write after the read started always leaves a later ctime than the recorded one.
const TRUST_MARGIN_NS: i64 = 1_000_000_000;

thread_local! {
    /// Each job's read buffer, kept between pieces so the kernel does not map and zero a
    /// fresh one for every file.
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How much of a file a job reads at a time: a multiple of [`BLOCK_SIZE`], so that every read
/// but a file's last holds whole pages.
const READ_PIECE: usize = 128 << 10;

/// Reads, checks the pages of (a relation fork's, with `pages`), encodes and stores one piece;
/// `None` when the file vanished. The piece is read [`READ_PIECE`] bytes at a time, checked and
/// compressed on the way: a job holds the object being built, not the piece's bytes besides.
fn copy_piece(
    repo: &Repo,
    dir: &str,
    task: &Task,
    codec: &Codec,
    pages: Option<PageCheck>,
    progress: &dyn Progress,
) -> Result<Option<(Stored, PiecePages)>> {
    let path = &task.file.full_path;
    let mut reader = match open_piece(task) {
        Ok(reader) => reader,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path)(e)),
    };
    let check = pages.zip(page::relation_file(&task.file.path));
    let mut encoder = Encoder::new(*codec, 1).map_err(Error::io("compress", path))?;
    let mut found = PiecePages::default();
    READ_BUFFER.with_borrow_mut(|buffer| {
        buffer.resize(READ_PIECE, 0);
        loop {
            let filled = codec::fill(&mut reader, buffer).map_err(Error::io("read", path))?;
            if filled == 0 {
                return Ok(());
            }
            let bytes = &buffer[..filled];
            if let Some((check, segment)) = check {
                found.add(check_pages(task, encoder.raw_len(), segment, bytes, check));
            }
            encoder.write(bytes).map_err(Error::io("compress", path))?;
        }
    })?;
    if encoder.raw_len() == 0 && task.part.is_none() {
        // An empty file is its manifest entry alone: no object to store, fetch or check
        // (a data directory holds hundreds of them).
        return Ok(Some((
            Stored {
                part: Part {
                    offset: 0,
                    size: 0,
                    crc32: 0,
                    stored_size: 0,
                },
                groups: vec![],
                seen: None,
            },
            found,
        )));
    }
    let object = encoder.finish().map_err(Error::io("compress", path))?;
    let key = piece_key(dir, &task.file.path, task.part);
    repo.storage().put_if_absent_deferred(&key, &object)?;
    crate::crash_point::reached("backup:piece");
    let header = ObjectHeader::parse(&object, &key)?;
    progress.advance(header.raw_len);
    Ok(Some((
        Stored {
            part: Part {
                offset: task.offset(),
                size: header.raw_len,
                crc32: header.raw_crc,
                stored_size: object.len() as u64,
            },
            groups: vec![],
            seen: None,
        },
        found,
    )))
}

/// Reads, checks the pages of, and stores one task of a deduplicated backup, a group at a time:
/// a group whose content hash is the previous backup's (same file, same place) is that group
/// again; otherwise its pieces that the previous group holds at the same place are referenced
/// there, its all-zero pieces nowhere, and the others are stored in one new frame. `None` when
/// the file vanished.
fn copy_packed(
    repo: &Repo,
    packed: &Packed,
    task: &Task,
    pages: Option<PageCheck>,
    progress: &dyn Progress,
) -> Result<Option<(Stored, PiecePages)>> {
    let path = &task.file.full_path;
    let started = SystemTime::now();
    let mut reader = match open_piece(task) {
        Ok(reader) => reader,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path)(e)),
    };
    let stat = |reader: &io::Take<File>| {
        reader
            .get_ref()
            .metadata()
            .map(|meta| FileStat::of(&meta))
            .map_err(Error::io("inspect", path))
    };
    let stat_before = stat(&reader)?;
    let check = pages.zip(page::relation_file(&task.file.path));
    let first_group = (task.offset() / GROUP_SIZE as u64) as usize;
    let before = packed.previous.groups_of(&task.file.path, first_group);
    let mut earlier: Option<std::collections::HashMap<GroupRef, Group>> = None;
    let mut found = PiecePages::default();
    let mut crc = crc32fast::Hasher::new();
    let (mut size, mut stored_size) = (0u64, 0u64);
    let mut groups = Vec::new();
    packed.packs.with_writer(|writer| {
        READ_BUFFER.with_borrow_mut(|buffer| {
            buffer.resize(GROUP_SIZE, 0);
            loop {
                let filled = codec::fill(&mut reader, buffer).map_err(Error::io("read", path))?;
                if filled == 0 {
                    return Ok(());
                }
                let bytes = &buffer[..filled];
                if let Some((check, segment)) = check {
                    found.add(check_pages(task, size, segment, bytes, check));
                }
                crc.update(bytes);
                let previous = packed.previous;
                let prior = before.get(groups.len()).filter(|g| previous.may_use(&g.pack));
                let hashes: Vec<(Hash, u32)> = bytes
                    .chunks(PIECE_SIZE)
                    .map(|p| (Hash::of(p), p.len() as u32))
                    .collect();
                let same = prior.filter(|g| g.hash == content_hash(hashes.iter().copied()));
                if (same.is_none() || previous.any_condemned()) && prior.is_some() && earlier.is_none() {
                    // The previous groups of this task, read once, at its first change (or at
                    // once while packs are condemned, to see where their pieces lie).
                    earlier = Some(packs::read_groups(repo, before)?);
                }
                let prior_group = prior.and_then(|prior| earlier.as_ref()?.get(prior));
                let reusable =
                    same.filter(|_| !previous.any_condemned() || prior_group.is_some_and(|g| usable(g, previous)));
                let group = match reusable {
                    Some(same) => *same,
                    None => {
                        let (group, stored) = store_group(packed.packs, writer, bytes, &hashes, prior_group, previous)?;
                        stored_size += stored;
                        group
                    }
                };
                groups.push(group);
                size += filled as u64;
                progress.advance(filled as u64);
            }
        })
    })?;
    let after = stat(&reader)?;
    crate::crash_point::reached("backup:piece");
    Ok(Some((
        Stored {
            part: Part {
                offset: task.offset(),
                size,
                crc32: crc.finalize(),
                stored_size,
            },
            groups,
            seen: Some(Seen {
                before: stat_before,
                after,
                started,
            }),
        },
        found,
    )))
}

/// Stores one group of `bytes` (its pieces' `hashes` computed): the pieces `prior` holds at the
/// same place are referenced there, all-zero ones nowhere, the others stored in one new frame.
/// Returns the group's reference and the bytes stored for it.
fn store_group(
    packs: &Packs,
    writer: &mut PackWriter,
    bytes: &[u8],
    hashes: &[(Hash, u32)],
    prior: Option<&Group>,
    previous: &PreviousGroups,
) -> Result<(GroupRef, u64)> {
    let mut fresh = Vec::new();
    let mut pieces: Vec<PieceRef> = Vec::with_capacity(hashes.len());
    let mut fresh_at = Vec::new();
    for (index, (piece, &(hash, len))) in bytes.chunks(PIECE_SIZE).zip(hashes).enumerate() {
        let kept = prior
            .and_then(|g| g.pieces.get(index))
            .filter(|p| p.hash == hash && p.len == len)
            .filter(|p| p.stored.is_none_or(|(frame, _)| previous.may_use(&frame.pack)));
        let stored = match kept {
            Some(kept) => kept.stored,
            None if packs::is_zero(piece) => None,
            None => {
                fresh_at.push((index, fresh.len() as u32));
                fresh.extend_from_slice(piece);
                None
            }
        };
        pieces.push(PieceRef { hash, len, stored });
    }
    let mut stored = 0;
    if !fresh.is_empty() {
        let frame = packs.store_frame(writer, &fresh)?;
        stored += u64::from(frame.len);
        for (index, at) in fresh_at {
            pieces[index].stored = Some((frame, at));
        }
    }
    let group = packs.store_group(writer, &Group { pieces })?;
    Ok((group, stored + u64::from(group.len)))
}

/// Checks the whole pages of `raw`, the bytes of `task` at `at` bytes into it, read from segment
/// `segment` of a relation fork. A page that fails is read again from the file once: a page the server was
/// writing meanwhile may have been read torn, and reads whole (or changed) the second time. A
/// trailing partial page (a file being extended) is not judged.
fn check_pages(task: &Task, at: u64, segment: u32, raw: &[u8], check: PageCheck) -> PiecePages {
    let mut found = PiecePages::default();
    let start = task.offset() + at;
    let first = (start / BLOCK_SIZE as u64) as u32;
    let segment_start = segment.wrapping_mul(check.blocks_per_segment);
    for (index, bytes) in raw.chunks_exact(BLOCK_SIZE).enumerate() {
        let block = segment_start.wrapping_add(first + index as u32);
        let mut verdict = page::check(bytes, block, check.start);
        if verdict == page::PageCheck::Invalid {
            let offset = start + (index * BLOCK_SIZE) as u64;
            verdict = match reread(&task.file.full_path, offset) {
                Some(again) => page::check(&again, block, check.start),
                // Gone or shorter by now: the server dropped or truncated it, replay does too.
                None => page::PageCheck::Skipped,
            };
        }
        match verdict {
            page::PageCheck::Valid => found.checked += 1,
            page::PageCheck::Skipped => found.skipped += 1,
            page::PageCheck::Invalid => {
                found.checked += 1;
                found.bad.push(block);
            }
        }
    }
    found
}

/// The page at `offset` of the file at `path`, read again; `None` when it is no longer there.
fn reread(path: &std::path::Path, offset: u64) -> Option<Vec<u8>> {
    let mut page = vec![0u8; BLOCK_SIZE];
    File::open(path).ok()?.read_exact_at(&mut page, offset).ok()?;
    Some(page)
}

/// The task's bytes: from its offset, one part's worth, or to the end.
fn open_piece(task: &Task) -> io::Result<io::Take<File>> {
    let mut file = File::open(&task.file.full_path)?;
    file.seek(SeekFrom::Start(task.offset()))?;
    Ok(file.take(if task.last { u64::MAX } else { PART_SIZE }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{Manifest, Piece};
    use crate::progress::Silent;

    fn source(dir: &std::path::Path, name: &str, bytes: &[u8]) -> SourceFile {
        let full_path = dir.join(name);
        std::fs::write(&full_path, bytes).unwrap();
        SourceFile {
            path: name.into(),
            full_path,
            size: bytes.len() as u64,
            mode: 0o600,
            mtime: 0,
        }
    }

    #[test]
    fn big_files_are_stored_in_parts_that_read_back_whole() {
        let data = tempfile::tempdir().unwrap();
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(repo_dir.path()).unwrap();
        let big: Vec<u8> = (0..PART_SIZE * 2 + 5000).map(|i| (i % 253) as u8).collect();
        let tree = SourceTree {
            files: vec![source(data.path(), "16384", &big), source(data.path(), "small", b"abc")],
            control: Some(source(data.path(), "pg_control", b"control")),
            ..SourceTree::default()
        };
        let entries = copy_plain(&repo, &tree, 2).files;
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["16384", "small", "pg_control"]);
        let split = &entries[0];
        assert_eq!(split.parts.len(), 3);
        assert_eq!((split.size, split.crc32), (big.len() as u64, crc32fast::hash(&big)));
        assert!(entries[1].parts.is_empty());
        let mut rebuilt = vec![0u8; big.len()];
        for piece in split.pieces() {
            crate::backup::with_verified(&repo, "hourly/b/", &piece, |raw| {
                rebuilt[piece.offset as usize..][..raw.len()].copy_from_slice(raw);
                Ok(())
            })
            .unwrap();
        }
        assert!(rebuilt == big, "the parts put together are the file");
        let Piece { stored_size, .. } = entries[1].pieces()[0];
        assert_eq!(entries[1].stored_size, stored_size);
    }

    #[test]
    fn a_valid_object_with_other_content_than_the_manifest_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(repo_dir.path()).unwrap();
        let tree = SourceTree {
            files: vec![source(data.path(), "small", b"abc")],
            control: Some(source(data.path(), "pg_control", b"control")),
            ..SourceTree::default()
        };
        let entries = copy_plain(&repo, &tree, 1).files;
        let piece = entries[0].pieces()[0];
        repo.storage().delete(&piece.key("hourly/b/")).unwrap();
        let other = Codec::default().encode(b"abd");
        repo.storage().put_if_absent(&piece.key("hourly/b/"), &other).unwrap();
        let err = crate::backup::with_verified(&repo, "hourly/b/", &piece, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("the manifest says 3 bytes"), "{err}");
    }

    #[test]
    fn an_empty_file_is_its_entry_alone() {
        let data = tempfile::tempdir().unwrap();
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(repo_dir.path()).unwrap();
        let tree = SourceTree {
            files: vec![source(data.path(), "empty", b""), source(data.path(), "small", b"abc")],
            control: Some(source(data.path(), "pg_control", b"control")),
            ..SourceTree::default()
        };
        let entries = copy_plain(&repo, &tree, 1).files;
        let empty = &entries[0];
        assert_eq!((empty.size, empty.stored_size, empty.crc32), (0, 0, 0));
        assert!(empty.is_empty_without_object() && empty.pieces().is_empty());
        assert_eq!(repo.storage().list("hourly/b/files/").unwrap(), ["pg_control", "small"]);
        assert!(!entries[1].is_empty_without_object());
    }

    /// A plain copy of `tree` (no page checks, no packs) as backup `hourly/b/`, on `jobs` threads.
    fn copy_plain(repo: &Repo, tree: &SourceTree, jobs: usize) -> Copied {
        let how = Copying {
            jobs,
            codec: &Codec::default(),
            pages: None,
            packed: None,
        };
        copy_files(repo, "hourly/b/", tree, &how, &Silent).unwrap()
    }

    /// A deduplicated copy of `tree` as backup `id` of a local repository, sharing with `previous`.
    fn copy_packed_tree(repo: &Repo, id: &str, tree: &SourceTree, previous: &PreviousGroups) -> Vec<FileEntry> {
        copy_packed_counted(repo, id, tree, previous).files
    }

    /// The same, with what the copy skipped.
    fn copy_packed_counted(repo: &Repo, id: &str, tree: &SourceTree, previous: &PreviousGroups) -> Copied {
        let packs = Packs::new(repo, id, Codec::default());
        let packed = Packed {
            packs: &packs,
            previous,
        };
        let copied = copy_files(
            repo,
            &format!("hourly/{id}/"),
            tree,
            &Copying {
                jobs: 2,
                codec: &Codec::default(),
                pages: None,
                packed: Some(&packed),
            },
            &Silent,
        )
        .unwrap();
        packs.finish().unwrap();
        copied
    }

    /// The packs `files` reference: of their groups and of their pieces.
    fn packs_of(repo: &Repo, files: &[FileEntry]) -> std::collections::HashSet<Hash> {
        let groups: Vec<GroupRef> = files.iter().flat_map(|f| f.groups.iter().copied()).collect();
        let records = packs::read_groups(repo, &groups).unwrap();
        let pieces = records
            .values()
            .flat_map(|g| g.pieces.iter().filter_map(|p| p.stored).map(|(frame, _)| frame.pack));
        groups.iter().map(|g| g.pack).chain(pieces).collect()
    }

    #[test]
    fn deduplicated_copies_share_what_did_not_change_but_never_a_condemned_pack() {
        let data = tempfile::tempdir().unwrap();
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(repo_dir.path()).unwrap();
        // Three groups and a bit: pseudo-random pages, a zero page, a short last piece.
        let mut bytes: Vec<u8> = (0..3 * GROUP_SIZE as u64 + 100).map(|i| (i * i % 251) as u8).collect();
        bytes[PIECE_SIZE..2 * PIECE_SIZE].fill(0);
        let tree = |bytes: &[u8]| SourceTree {
            files: vec![source(data.path(), "16384", bytes)],
            control: Some(source(data.path(), "pg_control", b"control")),
            ..SourceTree::default()
        };
        let first = copy_packed_tree(&repo, "a", &tree(&bytes), &PreviousGroups::default());
        assert_eq!(first[0].groups.len(), 4);
        assert!(first[0].stored_size > 0 && first[0].parts.is_empty());
        let as_previous = |files: &[FileEntry]| {
            let mut manifest =
                Manifest::for_test("a", crate::backup::Tier::Hourly, 1, 2..=2, chrono::DateTime::UNIX_EPOCH);
            manifest.files = files.to_vec();
            PreviousGroups::of(&manifest)
        };

        let same = copy_packed_tree(&repo, "b", &tree(&bytes), &as_previous(&first));
        assert_eq!(same[0].groups, first[0].groups, "unchanged groups are the same groups");
        assert_eq!(same[0].stored_size, 0, "nothing is stored again");

        bytes[2 * GROUP_SIZE + 5] ^= 1;
        let changed = copy_packed_tree(&repo, "c", &tree(&bytes), &as_previous(&first));
        let (before, after) = (&first[0].groups, &changed[0].groups);
        assert_eq!((before[0], before[1], before[3]), (after[0], after[1], after[3]));
        assert_ne!(before[2], after[2]);
        assert!(
            changed[0].stored_size < 2 * PIECE_SIZE as u64,
            "one piece and one group record are stored"
        );

        let condemned = packs_of(&repo, &first);
        let avoiding = copy_packed_tree(
            &repo,
            "d",
            &tree(&bytes),
            &as_previous(&first).avoiding(condemned.clone()),
        );
        assert!(
            packs_of(&repo, &avoiding).is_disjoint(&condemned),
            "a condemned pack is never referenced: its pieces are stored again"
        );
        assert!(
            avoiding[0].stored_size > changed[0].stored_size,
            "every group is stored again"
        );
        assert_eq!(avoiding[0].size, bytes.len() as u64);
    }

    #[test]
    fn a_trusted_file_is_taken_unread_until_its_stat_moves_but_never_from_a_condemned_pack() {
        let data = tempfile::tempdir().unwrap();
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(repo_dir.path()).unwrap();
        let bytes: Vec<u8> = (0..2 * GROUP_SIZE as u64 + 100).map(|i| (i * i % 251) as u8).collect();
        let cold = source(data.path(), "16384", &bytes);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        // Written less than a second before the read: not trusted.
        let fresh = source(data.path(), "16385", &bytes[..PIECE_SIZE]);
        let tree = SourceTree {
            files: vec![cold.clone(), fresh],
            control: Some(source(data.path(), "pg_control", b"control")),
            ..SourceTree::default()
        };
        let first = copy_packed_tree(&repo, "a", &tree, &PreviousGroups::default());
        let stat = |entry: &FileEntry| entry.stat.expect("a deduplicated backup records the stat");
        assert!(stat(&first[0]).trusted && stat(&first[0]).size == bytes.len() as u64);
        assert!(!stat(&first[1]).trusted, "a file changed within a second of the read");
        assert!(first[2].stat.is_none(), "pg_control is an object: no stat");
        let mut manifest = Manifest::for_test("a", crate::backup::Tier::Hourly, 1, 2..=2, chrono::DateTime::UNIX_EPOCH);
        manifest.files = first.clone();
        let trusting = || PreviousGroups::of(&manifest).trusting(&manifest);

        let second = copy_packed_counted(&repo, "b", &tree, &trusting());
        assert_eq!((second.skipped_files, second.skipped_bytes), (1, bytes.len() as u64));
        assert_eq!(
            second.files[0],
            FileEntry {
                stored_size: 0,
                ..first[0].clone()
            },
            "the skipped file is its previous entry, nothing stored"
        );
        assert_eq!(
            second.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["16384", "16385", "pg_control"]
        );
        let untrusted = copy_packed_counted(&repo, "c", &tree, &PreviousGroups::of(&manifest));
        assert_eq!(untrusted.skipped_files, 0, "only what the caller lets trust is skipped");

        // While the file's packs are condemned, it is read and its pieces stored again.
        let condemned = packs_of(&repo, &first[..1]);
        let avoiding = copy_packed_counted(&repo, "d", &tree, &trusting().avoiding(condemned.clone()));
        assert_eq!(avoiding.skipped_files, 0);
        assert!(packs_of(&repo, &avoiding.files[..1]).is_disjoint(&condemned));

        // Other bytes of the same size, the recorded mtime put back: the ctime moved, it is read.
        let mut changed = bytes.clone();
        changed[GROUP_SIZE + 7] ^= 1;
        std::fs::write(&cold.full_path, &changed).unwrap();
        let mtime = UNIX_EPOCH + std::time::Duration::from_nanos(stat(&first[0]).mtime_ns as u64);
        File::options()
            .write(true)
            .open(&cold.full_path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let now = FileStat::of(&std::fs::metadata(&cold.full_path).unwrap());
        assert_eq!(
            (now.size, now.mtime_ns),
            (stat(&first[0]).size, stat(&first[0]).mtime_ns)
        );
        let after = copy_packed_counted(&repo, "e", &tree, &trusting());
        assert_eq!(after.skipped_files, 0);
        assert_ne!(after.files[0].groups, first[0].groups, "the change is stored");
        assert!(!stat(&after.files[0]).trusted, "just written: not trusted");
    }

    #[test]
    fn a_vanished_file_is_left_out() {
        let data = tempfile::tempdir().unwrap();
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(repo_dir.path()).unwrap();
        let gone = source(data.path(), "gone", b"x");
        std::fs::remove_file(&gone.full_path).unwrap();
        let tree = SourceTree {
            files: vec![gone],
            control: Some(source(data.path(), "pg_control", b"control")),
            ..SourceTree::default()
        };
        let entries = copy_plain(&repo, &tree, 1).files;
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].path, "pg_control");
    }

    /// Page 3 of a real pg_class (LSN 0/1589F30), its checksum set for block `block`; with
    /// `damage`, a byte of its tuples changed afterwards.
    fn real_page(block: u32, damage: bool) -> Vec<u8> {
        let pages: &[u8] = include_bytes!("../pg/testdata/pg_class_blocks_0_3.bin");
        let mut bytes = pages[3 * BLOCK_SIZE..4 * BLOCK_SIZE].to_vec();
        let sum = page::checksum(&bytes, block);
        bytes[8..10].copy_from_slice(&sum.to_ne_bytes());
        if damage {
            bytes[6000] ^= 0x20;
        }
        bytes
    }

    #[test]
    fn pages_are_checked_as_copied_with_their_block_numbers() {
        let data = tempfile::tempdir().unwrap();
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(repo_dir.path()).unwrap();
        let blocks_per_segment = 131_072;
        // Segment 2 of a fork, in two parts: 16 MiB of new pages, then four pages from block
        // 2 × RELSEG_SIZE + 2048 on.
        let base = 2 * blocks_per_segment + (PART_SIZE / BLOCK_SIZE as u64) as u32;
        let mut segment = vec![0u8; PART_SIZE as usize];
        segment.extend(real_page(base, false));
        segment.extend(real_page(base + 1, true));
        segment.extend(real_page(base + 2, false));
        segment.extend(real_page(base + 3, true));
        let mut small = real_page(0, false);
        small.extend(real_page(1, true));
        // The damaged page changed at the backup's start: skipped, not bad.
        let mut changed = real_page(1, true);
        changed[0..4].copy_from_slice(&1u32.to_ne_bytes());
        changed[4..8].copy_from_slice(&0u32.to_ne_bytes());
        let tree = SourceTree {
            files: vec![
                source(data.path(), "16384.2", &segment),
                source(data.path(), "16385", &small),
                source(data.path(), "16386_vm", &changed),
                source(data.path(), "pg_filenode.map", &real_page(0, true)),
            ],
            control: Some(source(data.path(), "pg_control", b"control")),
            ..SourceTree::default()
        };
        // The paths of a database directory.
        let tree = SourceTree {
            files: tree
                .files
                .into_iter()
                .map(|f| SourceFile {
                    path: format!("base/5/{}", f.path),
                    ..f
                })
                .collect(),
            ..tree
        };
        let check = PageCheck {
            start: Lsn(0x1589f30 + 1),
            blocks_per_segment,
        };
        let copied = copy_files(
            &repo,
            "hourly/b/",
            &tree,
            &Copying {
                jobs: 2,
                codec: &Codec::default(),
                pages: Some(check),
                packed: None,
            },
            &Silent,
        )
        .unwrap();
        let pages = &copied.pages;
        assert!(pages.checked);
        let bad: Vec<(&str, u64, &[u32])> = pages
            .bad_files
            .iter()
            .map(|f| (f.path.as_str(), f.count, f.blocks.as_slice()))
            .collect();
        assert_eq!(
            bad,
            [
                ("base/5/16384.2", 2, &[base + 1, base + 3][..]),
                ("base/5/16385", 1, &[1][..])
            ]
        );
        assert_eq!(pages.pages_checked, 2048 + 4 + 2);
        assert_eq!(pages.pages_skipped, 1, "the page of LSN 1/0");
        assert_eq!(copied.files.len(), 5, "bad pages are copied all the same");

        // From the damaged pages' LSN on, they are skipped.
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(repo_dir.path()).unwrap();
        let early = PageCheck {
            start: Lsn(0x1589f30),
            ..check
        };
        let copied = copy_files(
            &repo,
            "hourly/b/",
            &tree,
            &Copying {
                jobs: 1,
                codec: &Codec::default(),
                pages: Some(early),
                packed: None,
            },
            &Silent,
        )
        .unwrap();
        assert!(copied.pages.bad_files.is_empty(), "{:?}", copied.pages);
        assert_eq!(copied.pages.pages_skipped, 4 + 2 + 1);
        assert_eq!(copied.pages.pages_checked, 2048);

        // A cluster without data checksums: nothing checked.
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(repo_dir.path()).unwrap();
        let copied = copy_plain(&repo, &tree, 1);
        assert_eq!(copied.pages, PageChecksums::default());
    }

    #[test]
    fn a_page_that_fails_is_read_again_before_it_counts_as_bad() {
        let data = tempfile::tempdir().unwrap();
        // On disk the page is whole; the copy's read caught it torn (half old, half new).
        let file = source(data.path(), "16384", &real_page(0, false));
        let task = Task {
            file: &file,
            part: None,
            last: true,
        };
        let mut torn = real_page(0, false);
        torn[4096..].fill(0x33);
        let check = PageCheck {
            start: Lsn(u64::MAX),
            blocks_per_segment: 131_072,
        };
        let found = check_pages(&task, 0, 0, &torn, check);
        assert_eq!((found.checked, found.skipped, found.bad.as_slice()), (1, 0, &[][..]));
        // Damaged on disk too: bad.
        std::fs::write(&file.full_path, &torn).unwrap();
        let found = check_pages(&task, 0, 0, &torn, check);
        assert_eq!(found.bad, [0]);
        // Gone by the second read: left to WAL replay, like a vanished file.
        std::fs::remove_file(&file.full_path).unwrap();
        let found = check_pages(&task, 0, 0, &torn, check);
        assert_eq!((found.checked, found.skipped, found.bad.len()), (0, 1, 0));
    }
}
