//! Copying a backup's files into the repository on a pool of jobs. A file is stored whole, or,
//! when it was larger than [`PART_SIZE`] at the walk, in parts of that size at fixed offsets:
//! one big relation file is then spread over every job, and no job holds more than a part (the
//! last part of a file that grew meanwhile runs to its end) in memory.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use rayon::prelude::*;

use super::manifest::{parts_crc, piece_key, FileEntry, Part, PART_SIZE};
use super::source::{SourceFile, SourceTree};
use crate::codec::{Codec, ObjectHeader};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::Repo;

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
    jobs: usize,
    codec: &Codec,
    progress: &dyn Progress,
) -> Result<Vec<FileEntry>> {
    progress.begin(tree.files.len() as u64 + 1, tree.bytes());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|e| Error::Refused(format!("cannot start {jobs} copy threads: {e}")))?;
    let tasks: Vec<Task> = tree.files.iter().flat_map(tasks).collect();
    let stored: Vec<Option<Part>> = pool.install(|| {
        tasks
            .par_iter()
            .map(|task| copy_piece(repo, dir, task, codec, progress))
            .collect::<Result<_>>()
    })?;
    let mut copied = entries(&tasks, &stored);
    let control = tree.control.as_ref().expect("scan found pg_control");
    let control_tasks = self::tasks(control);
    let control_stored = control_tasks
        .iter()
        .map(|task| copy_piece(repo, dir, task, codec, progress))
        .collect::<Result<Vec<_>>>()?;
    let control_entry = entries(&control_tasks, &control_stored)
        .pop()
        .ok_or_else(|| Error::Refused(format!("{} vanished during the backup", control.full_path.display())))?;
    copied.push(control_entry);
    progress.finish();
    Ok(copied)
}

/// The file entries of copied pieces; `stored` has one outcome per task, in task order.
fn entries(tasks: &[Task], stored: &[Option<Part>]) -> Vec<FileEntry> {
    let mut entries = Vec::new();
    let mut start = 0;
    while start < tasks.len() {
        let file = tasks[start].file;
        let end = start + tasks[start..].iter().take_while(|t| std::ptr::eq(t.file, file)).count();
        // A file that vanished (in any of its parts) was dropped by the server: WAL replay
        // removes it anyway.
        if let Some(parts) = stored[start..end].iter().copied().collect::<Option<Vec<Part>>>() {
            entries.push(entry(file, tasks[start].part.is_some(), parts));
        }
        start = end;
    }
    entries
}

fn entry(file: &SourceFile, split: bool, parts: Vec<Part>) -> FileEntry {
    let mut entry = FileEntry {
        path: file.path.clone(),
        size: parts.iter().map(|p| p.size).sum(),
        mode: file.mode,
        mtime: file.mtime,
        crc32: parts_crc(&parts),
        stored_size: parts.iter().map(|p| p.stored_size).sum(),
        parts: vec![],
    };
    if split {
        entry.parts = parts;
    }
    entry
}

thread_local! {
    /// Each job's read buffer, kept between pieces so the kernel does not map and zero a
    /// fresh one for every file.
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads, encodes and stores one piece; `None` when the file vanished.
fn copy_piece(repo: &Repo, dir: &str, task: &Task, codec: &Codec, progress: &dyn Progress) -> Result<Option<Part>> {
    READ_BUFFER.with_borrow_mut(|raw| {
        let path = &task.file.full_path;
        match read_piece(task, raw) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path)(e)),
        }
        if raw.is_empty() && task.part.is_none() {
            // An empty file is its manifest entry alone: no object to store, fetch or check
            // (a data directory holds hundreds of them).
            return Ok(Some(Part {
                offset: 0,
                size: 0,
                crc32: 0,
                stored_size: 0,
            }));
        }
        let object = codec.encode(raw);
        let key = piece_key(dir, &task.file.path, task.part);
        repo.storage().put_if_absent_deferred(&key, &object)?;
        crate::crash_point::reached("backup:piece");
        let header = ObjectHeader::parse(&object, &key)?;
        progress.advance(raw.len() as u64);
        Ok(Some(Part {
            offset: task.offset(),
            size: header.raw_len,
            crc32: header.raw_crc,
            stored_size: object.len() as u64,
        }))
    })
}

/// Reads the task's bytes into `raw`: from its offset, one part's worth, or to the end.
fn read_piece(task: &Task, raw: &mut Vec<u8>) -> io::Result<()> {
    raw.clear();
    let mut file = File::open(&task.file.full_path)?;
    file.seek(SeekFrom::Start(task.offset()))?;
    if task.last {
        file.read_to_end(raw)?;
    } else {
        file.take(PART_SIZE).read_to_end(raw)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::Piece;
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
        let entries = copy_files(&repo, "hourly/b/", &tree, 2, &Codec::default(), &Silent).unwrap();
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
        let entries = copy_files(&repo, "hourly/b/", &tree, 1, &Codec::default(), &Silent).unwrap();
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
        let entries = copy_files(&repo, "hourly/b/", &tree, 1, &Codec::default(), &Silent).unwrap();
        let empty = &entries[0];
        assert_eq!((empty.size, empty.stored_size, empty.crc32), (0, 0, 0));
        assert!(empty.is_empty_without_object() && empty.pieces().is_empty());
        assert_eq!(repo.storage().list("hourly/b/files/").unwrap(), ["pg_control", "small"]);
        assert!(!entries[1].is_empty_without_object());
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
        let entries = copy_files(&repo, "hourly/b/", &tree, 1, &Codec::default(), &Silent).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].path, "pg_control");
    }
}
