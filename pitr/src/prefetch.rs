//! Restore prefetch: while PostgreSQL replays segment N, the next segments are fetched from the
//! repository, decompressed and verified into the spool, so that the next `archive-get` is a
//! check and a rename instead of a read, a decompression and a write.
//!
//! Each prefetched segment `<spool>/prefetch/<name>` has a sidecar `<name>.crc` with the CRC-32
//! the repository recorded; archive-get verifies the file against it before handing it over, so
//! a file damaged in the spool is an error (exit ≥ 126), never "missing" and never replayed.
//! The `owner` file names the repository, cluster and data directory the files belong to;
//! files of anyone else are deleted unread.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::archive::check_restored;
use crate::codec::{self, ObjectHeader};
use crate::error::{Error, Result};
use crate::repo::{Repo, RepoInfo};
use crate::spool::Spool;
use crate::wal::{Segment, SegmentSize, WalFileName};

/// How much of a prefetched file archive-get reads at a time to verify it.
const CHUNK: u64 = 1 << 20;

/// The prefetch area of a spool, for one repository and data directory.
pub struct Prefetched<'a> {
    dir: PathBuf,
    repo: &'a Repo,
    info: RepoInfo,
    owner: String,
}

impl<'a> Prefetched<'a> {
    /// The prefetch area of `spool` for `repo` (whose metadata is `info`).
    pub fn new(spool: &Spool, repo: &'a Repo, info: &RepoInfo) -> Prefetched<'a> {
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let owner = format!("{}\n{}\n{cwd}\n", repo.location(), info.system_identifier);
        Prefetched {
            dir: spool.prefetch_dir(),
            repo,
            info: *info,
            owner,
        }
    }

    /// Moves the verified prefetched `name` to `dest`; `None` when it was not prefetched.
    pub fn take(&self, name: &WalFileName, dest: &Path) -> Result<Option<u64>> {
        if !self.is_ours() {
            return Ok(None);
        }
        let path = self.dir.join(name.to_string());
        let crc_path = path.with_extension("crc");
        let Ok(expected) = fs::read_to_string(&crc_path) else {
            return Ok(None);
        };
        let what = format!("prefetched {}", path.display());
        let len = match self.verify(name, &path, expected.trim(), &what) {
            Ok(len) => len,
            // Cleaned away meanwhile by a prefetcher that moved on: fetch it anew.
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // A rename when the spool shares pg_wal's file system; otherwise a copy of the verified
        // file. A prefetcher that moved on may clean the file away at any moment (PostgreSQL asks
        // for a segment again at the end of recovery): then it is fetched anew from the repository.
        let moved = fs::rename(&path, dest).or_else(|e| match e.kind() {
            io::ErrorKind::NotFound => Err(e),
            _ => fs::copy(&path, dest).map(drop),
        });
        match moved {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("move into place", dest)(e)),
        }
        let _ = fs::remove_file(crc_path);
        Ok(Some(len))
    }

    /// Checks the prefetched file at `path` 1 MiB at a time (no buffer the size of a segment):
    /// its page header and cluster from the first chunk, its CRC-32 against `expected` at the
    /// end; returns its length.
    fn verify(&self, name: &WalFileName, path: &Path, expected: &str, what: &str) -> Result<u64> {
        let mut file = fs::File::open(path).map_err(Error::io("read", path))?;
        let len = file.metadata().map_err(Error::io("read", path))?.len();
        let (mut chunk, mut crc, mut first) = (Vec::with_capacity(CHUNK as usize), crc32fast::Hasher::new(), true);
        loop {
            chunk.clear();
            (&mut file)
                .take(CHUNK)
                .read_to_end(&mut chunk)
                .map_err(Error::io("read", path))?;
            if std::mem::take(&mut first) {
                check_restored(self.repo, name, (&chunk, len), self.info, what)?;
            }
            if chunk.is_empty() {
                break;
            }
            crc.update(&chunk);
        }
        let crc = format!("{:08x}", crc.finalize());
        if crc != expected {
            return Err(Error::Corrupt {
                what: what.to_string(),
                reason: format!("CRC-32 {crc}, the repository recorded {expected}"),
            });
        }
        Ok(len)
    }

    /// Fetches up to `count` segments after `after` that are archived and not prefetched yet,
    /// on `jobs` threads, nearest first, stopping at the end of the archive; deletes spool files
    /// of other timelines and older segments. Another prefetcher at work on the same spool makes
    /// this return at once.
    pub fn fill(&self, after: &WalFileName, count: u64, jobs: usize) -> Result<()> {
        let Some(segment) = after.segment_name().and_then(|s| s.segment(self.segment_size())) else {
            return Ok(());
        };
        self.claim()?;
        let lock_path = self.dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path);
        let lock = lock.map_err(Error::io("open", &lock_path))?;
        if lock.try_lock().is_err() {
            return Ok(());
        }
        self.clean(segment)?;
        let wanted: Vec<WalFileName> = (segment.segno + 1..=segment.segno + count)
            .map(|segno| {
                let name = Segment {
                    timeline: segment.timeline,
                    segno,
                }
                .file_name(self.segment_size());
                WalFileName::parse(&name)
            })
            .filter(|name| {
                name.as_ref()
                    .map_or(true, |n| !self.dir.join(n.to_string()).with_extension("crc").exists())
            })
            .collect::<Result<_>>()?;
        self.fetch_all(&wanted, jobs)
    }

    /// Fetches `wanted` on `jobs` threads, each taking the nearest segment not yet taken; a
    /// segment missing from the repository (the end of the archive) stops them all.
    fn fetch_all(&self, wanted: &[WalFileName], jobs: usize) -> Result<()> {
        let next = AtomicUsize::new(0);
        let end_of_archive = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..jobs.clamp(1, wanted.len().max(1)))
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        while !end_of_archive.load(Ordering::Relaxed) {
                            let Some(name) = wanted.get(next.fetch_add(1, Ordering::Relaxed)) else {
                                break;
                            };
                            if !self.fetch(name)? {
                                end_of_archive.store(true, Ordering::Relaxed);
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|worker| worker.join().expect("a prefetch thread panicked"))
        })
    }

    fn segment_size(&self) -> SegmentSize {
        SegmentSize::new(self.info.wal_segment_size).unwrap_or(SegmentSize::DEFAULT)
    }

    fn is_ours(&self) -> bool {
        fs::read_to_string(self.dir.join("owner")).is_ok_and(|o| o == self.owner)
    }

    /// Makes the prefetch area ours, deleting what another repository or data directory left.
    fn claim(&self) -> Result<()> {
        if self.is_ours() {
            return Ok(());
        }
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("clean", &self.dir)(e)),
        }
        Spool::at(self.dir.parent().expect("prefetch is inside the spool")).ensure()?;
        let owner = self.dir.join("owner");
        fs::write(&owner, &self.owner).map_err(Error::io("write", &owner))
    }

    /// Deletes prefetched files of other timelines, and of segments at or before `current`:
    /// the sidecar first, so that a file is never announced after it is gone.
    fn clean(&self, current: Segment) -> Result<()> {
        for entry in fs::read_dir(&self.dir).map_err(Error::io("list", &self.dir))?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Ok(name) = WalFileName::parse(&file) else { continue };
            let stale = name
                .segment_name()
                .and_then(|s| s.segment(self.segment_size()))
                .is_none_or(|s| s.timeline != current.timeline || s.segno <= current.segno);
            if stale {
                let _ = fs::remove_file(entry.path().with_extension("crc"));
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Fetches one segment into the spool; `false` when the repository does not hold it.
    /// A corrupt archived file is left for archive-get to report.
    fn fetch(&self, name: &WalFileName) -> Result<bool> {
        let Some(object) = self.repo.get_wal(name)? else {
            return Ok(false);
        };
        let what = self.repo.describe_wal(name);
        let Ok(raw) = codec::decode(&object, &what) else {
            return Ok(true);
        };
        let header = ObjectHeader::parse(&object, &what)?;
        let path = self.dir.join(name.to_string());
        let temp = path.with_extension("tmp");
        fs::write(&temp, &raw).map_err(Error::io("write", &temp))?;
        fs::rename(&temp, &path).map_err(Error::io("rename", &path))?;
        // The sidecar says "ready": written whole under a temporary name and renamed, so that
        // archive-get never reads half of it.
        let crc_path = path.with_extension("crc");
        let crc_temp = path.with_extension("crc.tmp");
        fs::write(&crc_temp, format!("{:08x}", header.raw_crc)).map_err(Error::io("write", &crc_temp))?;
        fs::rename(&crc_temp, &crc_path).map_err(Error::io("rename", &crc_path))?;
        Ok(true)
    }
}
