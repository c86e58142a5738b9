//! Restore prefetch: while PostgreSQL replays segment N, the next segments are fetched from the
//! repository, decompressed and verified into the spool, so that the next `archive-get` is a
//! check and a rename instead of a read, a decompression and a write.
//!
//! Each prefetched segment `<spool>/prefetch/<name>` has a sidecar `<name>.crc` with the CRC-32
//! the repository recorded; archive-get verifies the file against it before handing it over, so
//! a file damaged in the spool is never replayed: archive-get deletes it, says so in the server
//! log and restores the repository's copy instead. The `owner` file names the repository,
//! cluster and data directory the files belong to; files of anyone else are deleted unread.
//!
//! The prefetcher follows the timeline path recovery follows with `recovery_target_timeline =
//! 'latest'`: the newest timeline whose history descends from the segment's timeline (probing
//! the history files after it, as PostgreSQL's `findNewestTimeLine` does), and each segment from
//! the timeline that holds it on that path.
//!
//! One prefetcher works on a spool at a time (the `lock` file). It is started by archive-get,
//! keeps the window of segments after the one PostgreSQL replays full while archive-get takes
//! them, and stops fetching at the end of the archive or when PostgreSQL has taken nothing for a
//! second. It then lets go of the lock (the next archive-get starts a prefetcher again) and
//! watches the data directory until a newer prefetcher watches in its place: once recovery is
//! over (`recovery.signal` and `standby.signal` are gone), no one will ask for the prefetched
//! files, and it deletes them. While recovery goes on, a slow replay keeps its window.
//! A segment is fsynced before its sidecar announces it: PostgreSQL fsyncs every segment it
//! restores, and that fsync is then cheap instead of a 16 MiB write in the middle of the replay.
//! archive-get waits for a segment the prefetcher is still writing rather than fetching it a
//! second time.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::archive::check_restored;
use crate::codec::{self, ObjectHeader};
use crate::error::{Error, Result};
use crate::fsio;
use crate::repo::{Cluster, Repo};
use crate::spool::{create_private, write_private, Spool};
use crate::timeline::TimelinePath;
use crate::wal::{parse_history, Segment, SegmentSize, TimelineId, TimelineSwitch, WalFileName};

/// How much of a prefetched file archive-get reads at a time to verify it.
const CHUNK: u64 = 1 << 20;

/// How long archive-get waits for a segment a prefetcher is writing before fetching it itself.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(5);

/// How often archive-get looks whether that segment is ready.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(1);

/// How long a prefetcher with nothing left to fetch waits for PostgreSQL to take a segment
/// before it exits. PostgreSQL replays most segments faster; after a slower one, the next
/// archive-get starts a prefetcher again.
const LINGER: Duration = Duration::from_secs(1);

/// How often a waiting prefetcher looks whether a segment was taken.
const TAKEN_POLL: Duration = Duration::from_millis(2);

/// How long a prefetcher that stopped fetching watches for the end of recovery, to delete what
/// is left. A recovery that ends later leaves its files to the watcher (`pitr watch`, the daemon),
/// which deletes them when it sees the data directory out of recovery.
const RECOVERY_WATCH: Duration = Duration::from_secs(600);

/// How often that watch looks.
const RECOVERY_POLL: Duration = Duration::from_millis(100);

/// The files that say a data directory is in recovery; PostgreSQL deletes them when it ends.
const SIGNAL_FILES: [&str; 2] = ["recovery.signal", "standby.signal"];

/// What [`Prefetched::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// The verified file is at the destination; its size.
    Moved(u64),
    /// Nothing is prefetched under that name.
    Absent,
    /// The prefetched file was damaged and is deleted; fetch it from the repository.
    Damaged {
        /// The file that was deleted.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
}

/// The prefetch area of a spool, for one repository and data directory.
pub struct Prefetched<'a> {
    dir: PathBuf,
    /// The data directory being recovered: the current directory, where PostgreSQL runs
    /// archive-get (`None` elsewhere: then no end of recovery is watched for).
    data_dir: Option<PathBuf>,
    repo: &'a Repo,
    info: Cluster,
    owner: String,
    /// Decode buffers kept between segments, one per fetcher thread at most.
    buffers: Mutex<Vec<Vec<u8>>>,
}

impl<'a> Prefetched<'a> {
    /// The prefetch area of `spool` for `repo` (whose metadata is `info`).
    pub fn new(spool: &Spool, repo: &'a Repo, info: &Cluster) -> Prefetched<'a> {
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let owner = format!("{}\n{}\n{cwd}\n", repo.location(), info.system_identifier);
        Prefetched {
            dir: spool.prefetch_dir(),
            data_dir: crate::archive::current_data_dir(),
            repo,
            info: *info,
            owner,
            buffers: Mutex::new(Vec::new()),
        }
    }

    /// Moves the verified prefetched `name` to `dest`. A prefetched file that fails verification
    /// is deleted with its sidecar, and reported as [`Taken::Damaged`]: the spool only speeds
    /// things up, the repository's copy is the one that counts.
    pub fn take(&self, name: &WalFileName, dest: &Path) -> Result<Taken> {
        if !self.is_ours() {
            return Ok(Taken::Absent);
        }
        let path = self.spooled(name);
        let crc_path = path.with_extension("crc");
        let Some(expected) = self.announced_crc(&path) else {
            return Ok(Taken::Absent);
        };
        let what = format!("prefetched {}", path.display());
        let len = match self.verify(name, &path, expected.trim(), &what) {
            Ok(len) => len,
            // Cleaned away meanwhile by a prefetcher that moved on: fetch it anew.
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(Taken::Absent),
            Err(e) => {
                let _ = fs::remove_file(&crc_path);
                let _ = fs::remove_file(&path);
                let reason = match e {
                    Error::Corrupt { reason, .. } => reason,
                    other => other.to_string(),
                };
                return Ok(Taken::Damaged { path, reason });
            }
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
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Taken::Absent),
            Err(e) => return Err(Error::io("move into place", dest)(e)),
        }
        let _ = fs::remove_file(crc_path);
        Ok(Taken::Moved(len))
    }

    /// The sidecar of the prefetched `path` (the CRC-32 the repository recorded), waiting while
    /// a prefetcher is still writing that segment: fetching it a second time would only take the
    /// CPU from that prefetcher and from PostgreSQL. `None` when the segment is neither
    /// prefetched nor being prefetched, or after [`IN_FLIGHT_WAIT`].
    fn announced_crc(&self, path: &Path) -> Option<String> {
        let crc_path = path.with_extension("crc");
        let deadline = Instant::now() + IN_FLIGHT_WAIT;
        loop {
            if let Ok(crc) = fs::read_to_string(&crc_path) {
                return Some(crc);
            }
            // The temporary file first: the prefetcher renames it to `path` before it writes the
            // sidecar, so one of the two is always there while it works (the other order could
            // see neither, between the two checks, and give up on a segment about to be announced).
            let in_flight = path.with_extension("tmp").exists() || path.exists();
            if !in_flight || !at_work_in(&self.dir) || Instant::now() > deadline {
                return fs::read_to_string(&crc_path).ok();
            }
            std::thread::sleep(IN_FLIGHT_POLL);
        }
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

    /// Keeps the `count` segments after the one PostgreSQL replays (`after` at first)
    /// prefetched, on `jobs` threads, nearest first, along the timeline path recovery follows,
    /// until the end of the archive, or until PostgreSQL has taken nothing for [`LINGER`] (the
    /// next archive-get starts a prefetcher again). Deletes spool files off that path and older
    /// segments first. Another prefetcher at work on the same spool makes this return at once.
    /// Once it stops fetching, it deletes what is left when recovery ends
    /// ([`RECOVERY_WATCH`]).
    pub fn fill(&self, after: &WalFileName, count: u64, jobs: usize) -> Result<()> {
        let Some(replaying) = after.segment_name().and_then(|s| s.segment(self.segment_size())) else {
            return Ok(());
        };
        self.claim()?;
        let Some(lock) = self.lock()? else {
            return Ok(());
        };
        let path = self.path_from(replaying.timeline);
        self.clean(replaying, &path)?;
        self.keep_window_full(replaying, &path, count, jobs)?;
        drop(lock);
        self.delete_when_recovery_ends();
        Ok(())
    }

    /// The fill proper, while holding the lock.
    fn keep_window_full(&self, mut replaying: Segment, path: &TimelinePath, count: u64, jobs: usize) -> Result<()> {
        let size = self.segment_size();
        loop {
            let window = (replaying.segno + 1..=replaying.segno + count)
                .map(|segno| {
                    let segment = path.segment(segno, size);
                    Ok((segment, WalFileName::parse(&segment.file_name(size))?))
                })
                .collect::<Result<Vec<_>>>()?;
            let wanted: Vec<WalFileName> = window
                .iter()
                .filter(|(_, name)| !self.crc_path(name).exists())
                .map(|(_, name)| *name)
                .collect();
            if !wanted.is_empty() && self.fetch_all(&wanted, jobs)? == Round::EndOfArchive {
                return Ok(());
            }
            match self.wait_until_taken(&window) {
                Some(taken) => replaying = taken,
                None => return Ok(()),
            }
        }
    }

    /// The path recovery follows from `timeline` with `recovery_target_timeline = 'latest'`: to
    /// the newest timeline whose history descends from it, found by probing the history files
    /// after it until one is missing, as PostgreSQL's `findNewestTimeLine` does. A history file
    /// that does not read ends the probe (archive-get reports it when PostgreSQL asks for it).
    fn path_from(&self, timeline: TimelineId) -> TimelinePath {
        let mut path = TimelinePath::new(timeline, &[]);
        for probe in timeline.saturating_add(1).. {
            let Some(history) = self.history(probe) else {
                break;
            };
            if history.iter().any(|switch| switch.parent == timeline) {
                path = TimelinePath::new(probe, &history);
            }
        }
        path
    }

    /// The parsed history file of `timeline`, when the repository holds one that reads.
    fn history(&self, timeline: TimelineId) -> Option<Vec<TimelineSwitch>> {
        let name = WalFileName::History(timeline);
        let object = self.repo.get_wal(&name).ok()??;
        let raw = codec::decode(&object, &self.repo.describe_wal(&name)).ok()?;
        parse_history(&raw).ok()
    }

    /// Once fetching stopped: waits (without the lock, so that the next archive-get starts a
    /// prefetcher as usual) until the data directory is out of recovery, then deletes the
    /// prefetched files no one will ask for. One prefetcher watches at a time: each names itself
    /// in the `watcher` file when it starts watching, and an older one that finds another name
    /// there leaves the watch to it. Returns after [`RECOVERY_WATCH`] at the latest, and leaves
    /// the files to a prefetcher that holds the lock when recovery ends.
    fn delete_when_recovery_ends(&self) {
        let Some(data_dir) = &self.data_dir else {
            return;
        };
        let (watcher, me) = (self.dir.join("watcher"), std::process::id().to_string());
        if write_private(&watcher, me.as_bytes()).is_err() {
            return;
        }
        let deadline = Instant::now() + RECOVERY_WATCH;
        while in_recovery(data_dir) {
            let watching = fs::read_to_string(&watcher).is_ok_and(|w| w == me);
            if !watching || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(RECOVERY_POLL);
        }
        if let Ok(Some(_lock)) = self.lock() {
            delete_prefetched(&self.dir);
        }
    }

    /// The spool's lock, held while a prefetcher works; `None` when another one holds it.
    fn lock(&self) -> Result<Option<fs::File>> {
        crate::spool::take_lock(&self.dir.join("lock"))
    }

    /// The newest segment of `window` that left the spool, waiting up to [`LINGER`] for one:
    /// archive-get took it (or it did not decode, and archive-get will say so when asked), so
    /// PostgreSQL has moved on.
    fn wait_until_taken(&self, window: &[(Segment, WalFileName)]) -> Option<Segment> {
        let deadline = Instant::now() + LINGER;
        loop {
            let taken = window
                .iter()
                .rev()
                .find(|(_, name)| !self.crc_path(name).exists() && !self.spooled(name).exists());
            if let Some((segment, _)) = taken {
                return Some(*segment);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(TAKEN_POLL);
        }
    }

    /// Where the prefetched `name` lies in the spool.
    fn spooled(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(name.to_string())
    }

    /// Its sidecar, which announces it.
    fn crc_path(&self, name: &WalFileName) -> PathBuf {
        self.spooled(name).with_extension("crc")
    }

    /// Fetches `wanted` on `jobs` threads, each taking the nearest segment not yet taken; a
    /// segment missing from the repository (the end of the archive) stops them all. Each
    /// decoded segment is made durable and announced on a thread of its own, so that the
    /// fetchers decode the next segment while the disk writes this one.
    fn fetch_all(&self, wanted: &[WalFileName], jobs: usize) -> Result<Round> {
        let next = AtomicUsize::new(0);
        let end_of_archive = AtomicBool::new(false);
        let announce_error = Mutex::new(None);
        let fetched = std::thread::scope(|scope| {
            let fetchers: Vec<_> = (0..jobs.clamp(1, wanted.len().max(1)))
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        while !end_of_archive.load(Ordering::Relaxed) {
                            let Some(name) = wanted.get(next.fetch_add(1, Ordering::Relaxed)) else {
                                break;
                            };
                            match self.fetch(name)? {
                                Fetched::EndOfArchive => end_of_archive.store(true, Ordering::Relaxed),
                                Fetched::Corrupt => {}
                                Fetched::Decoded(decoded) => {
                                    let announce_error = &announce_error;
                                    scope.spawn(move || {
                                        if let Err(e) = self.announce(decoded) {
                                            announce_error
                                                .lock()
                                                .expect("no thread panics holding it")
                                                .get_or_insert(e);
                                        }
                                    });
                                }
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            fetchers
                .into_iter()
                .try_for_each(|fetcher| fetcher.join().expect("a prefetch thread panicked"))
        });
        // The scope has waited for every announcer.
        if let Some(e) = announce_error.into_inner().expect("no thread panics holding it") {
            return Err(e);
        }
        fetched?;
        Ok(if end_of_archive.into_inner() {
            Round::EndOfArchive
        } else {
            Round::Fetched
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
        write_private(&owner, self.owner.as_bytes()).map_err(Error::io("write", &owner))
    }

    /// Deletes prefetched files off `path`, and of segments at or before `current`: the sidecar
    /// first, so that a file is never announced after it is gone.
    fn clean(&self, current: Segment, path: &TimelinePath) -> Result<()> {
        let size = self.segment_size();
        for entry in fs::read_dir(&self.dir).map_err(Error::io("list", &self.dir))?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Ok(name) = WalFileName::parse(&file) else { continue };
            let stale = name
                .segment_name()
                .and_then(|s| s.segment(size))
                .is_none_or(|s| !path.holds(s, size) || s.segno <= current.segno);
            if stale {
                let _ = fs::remove_file(entry.path().with_extension("crc"));
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Decodes one segment into a temporary file in the spool, through one of the reused
    /// decode buffers (a fresh 16 MiB buffer per segment costs thousands of page faults).
    fn fetch(&self, name: &WalFileName) -> Result<Fetched> {
        let Some(object) = self.repo.get_wal(name)? else {
            return Ok(Fetched::EndOfArchive);
        };
        let what = self.repo.describe_wal(name);
        let mut raw = self
            .buffers
            .lock()
            .expect("no thread panics holding it")
            .pop()
            .unwrap_or_default();
        let decoded = codec::decode_into(&object, &what, &mut raw);
        let path = self.spooled(name);
        let temp = path.with_extension("tmp");
        let written = decoded.is_ok().then(|| {
            create_private(&temp).and_then(|mut file| {
                fsio::write_in_pieces(&mut file, &raw)?;
                Ok(file)
            })
        });
        self.buffers.lock().expect("no thread panics holding it").push(raw);
        match written {
            // A corrupt archived file is left for archive-get to report when PostgreSQL asks.
            None => Ok(Fetched::Corrupt),
            Some(Ok(file)) => Ok(Fetched::Decoded(Decoded {
                file,
                temp,
                path,
                crc: ObjectHeader::parse(&object, &what)?.raw_crc,
            })),
            Some(Err(e)) => {
                let _ = fs::remove_file(&temp);
                Err(Error::io("write", &temp)(e))
            }
        }
    }

    /// Makes a decoded segment durable and announces it: PostgreSQL fsyncs every segment it
    /// restores (`durable_rename`), and a file the disk already holds makes that fsync cheap
    /// instead of a 16 MiB write on the replay's critical path. The sidecar says "ready": written
    /// whole under a temporary name and renamed, so that archive-get never reads half of it.
    fn announce(&self, decoded: Decoded) -> Result<()> {
        let Decoded { file, temp, path, crc } = decoded;
        file.sync_data().map_err(Error::io("fsync", &temp))?;
        fs::rename(&temp, &path).map_err(Error::io("rename", &path))?;
        let crc_path = path.with_extension("crc");
        let crc_temp = path.with_extension("crc.tmp");
        write_private(&crc_temp, format!("{crc:08x}").as_bytes()).map_err(Error::io("write", &crc_temp))?;
        fs::rename(&crc_temp, &crc_path).map_err(Error::io("rename", &crc_path))
    }
}

/// Whether `spool` may hand over `name` instead of the repository: a prefetcher is at work on
/// it, or a prefetched copy of `name` (or its sidecar) is there. archive-get reads the repository
/// before it looks in the spool only when it may not, so that a prefetched file costs no request.
pub fn may_hold(spool: &Spool, name: &WalFileName) -> bool {
    let spooled = spool.prefetch_dir().join(name.to_string());
    at_work(spool) || spooled.exists() || spooled.with_extension("crc").exists()
}

/// Whether a prefetcher is at work on `spool` now.
pub fn at_work(spool: &Spool) -> bool {
    at_work_in(&spool.prefetch_dir())
}

/// Deletes what prefetchers of `data_dir` left in `spool` once it is out of recovery (no
/// prefetcher is at work then: it holds the lock while it fetches): a recovery that ended after
/// its last prefetcher stopped watching leaves files no one will ask for. The files of another
/// data directory sharing the spool are left alone. Returns whether it deleted any.
pub fn delete_after_recovery(spool: &Spool, data_dir: &Path) -> bool {
    let dir = spool.prefetch_dir();
    let Ok(owner) = fs::read_to_string(dir.join("owner")) else {
        return false;
    };
    let canonical = |path: &Path| fs::canonicalize(path).ok();
    let ours = owner
        .lines()
        .nth(2)
        .is_some_and(|recovered| canonical(Path::new(recovered)).is_some_and(|r| Some(r) == canonical(data_dir)));
    if !ours || in_recovery(data_dir) {
        return false;
    }
    let Ok(lock) = fs::OpenOptions::new().write(true).open(dir.join("lock")) else {
        return false;
    };
    lock.try_lock().is_ok() && delete_prefetched(&dir)
}

/// Whether `data_dir` is in archive recovery or standby mode.
fn in_recovery(data_dir: &Path) -> bool {
    SIGNAL_FILES.iter().any(|signal| data_dir.join(signal).exists())
}

/// Deletes every file of the prefetch area `dir` but its lock; whether there were any.
fn delete_prefetched(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let mut deleted = false;
    for entry in entries.flatten().filter(|e| e.file_name() != "lock") {
        deleted |= fs::remove_file(entry.path()).is_ok();
    }
    deleted
}

/// Whether a prefetcher holds the lock of the prefetch area `dir` (found out by trying it; a
/// lock taken that way is let go at once).
fn at_work_in(dir: &Path) -> bool {
    crate::spool::lock_is_held(&dir.join("lock"))
}

/// How a round of fetching ended.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    /// Every wanted segment was fetched (or did not decode).
    Fetched,
    /// The repository does not hold one of them: the end of the archive.
    EndOfArchive,
}

/// What fetching one segment found.
enum Fetched {
    /// The repository does not hold it.
    EndOfArchive,
    /// It does not decode; archive-get reports it when PostgreSQL asks.
    Corrupt,
    /// Decoded into the spool, not yet durable nor announced.
    Decoded(Decoded),
}

/// A segment decoded into a temporary file of the spool.
struct Decoded {
    file: fs::File,
    temp: PathBuf,
    path: PathBuf,
    crc: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;

    const SYSID: u64 = 7;
    const SIZE: u32 = 1 << 20;

    /// A repository holding segments 1..=`last` of timeline 1 (1 MiB segments), a spool, and
    /// the bytes of every segment.
    struct Fixture {
        repo: Repo,
        info: Cluster,
        spool: Spool,
        segments: Vec<Vec<u8>>,
        _dirs: [tempfile::TempDir; 2],
    }

    impl Fixture {
        fn new(last: u64) -> Fixture {
            let (repo_dir, spool_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let repo = Repo::open_local(repo_dir.path()).unwrap();
            let info = Cluster {
                pg_version: 15,
                system_identifier: SYSID,
                wal_segment_size: SIZE,
            };
            repo.claim(info).unwrap();
            let segments: Vec<Vec<u8>> = (0..=last).map(segment_bytes).collect();
            for segno in 1..=last {
                repo.put_wal(&name(segno), &Codec::default().encode(&segments[segno as usize]))
                    .unwrap();
            }
            let spool = Spool::at(spool_dir.path().join("spool"));
            Fixture {
                repo,
                info,
                spool,
                segments,
                _dirs: [repo_dir, spool_dir],
            }
        }

        fn prefetched(&self) -> Prefetched<'_> {
            Prefetched::new(&self.spool, &self.repo, &self.info)
        }

        fn spooled(&self, segno: u64) -> PathBuf {
            self.spool.prefetch_dir().join(name(segno).to_string())
        }
    }

    fn name(segno: u64) -> WalFileName {
        let segment = Segment { timeline: 1, segno };
        WalFileName::parse(&segment.file_name(SegmentSize::new(SIZE).unwrap())).unwrap()
    }

    /// A segment PostgreSQL 15 could have written: its long page header, then bytes that differ
    /// from segment to segment.
    fn segment_bytes(segno: u64) -> Vec<u8> {
        let size = SegmentSize::new(SIZE).unwrap();
        let mut bytes: Vec<u8> = (0..SIZE as u64).map(|i| (i * 31 + segno * 7) as u8).collect();
        bytes[..40].fill(0);
        bytes[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        bytes[2..4].copy_from_slice(&2u16.to_le_bytes());
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        bytes[8..16].copy_from_slice(&size.segment_start(segno).0.to_le_bytes());
        bytes[24..32].copy_from_slice(&SYSID.to_le_bytes());
        bytes[32..36].copy_from_slice(&SIZE.to_le_bytes());
        bytes[36..40].copy_from_slice(&8192u32.to_le_bytes());
        bytes
    }

    /// Waits until the prefetcher announced `segno`, as PostgreSQL's replay of the segments
    /// before it would give it time to.
    fn wait_announced(f: &Fixture, segno: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f.spooled(segno).with_extension("crc").exists() {
            assert!(Instant::now() < deadline, "segment {segno} was never prefetched");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_prefetcher_keeps_its_window_full_while_segments_are_taken() {
        let f = Fixture::new(6);
        let out = tempfile::tempdir().unwrap();
        std::thread::scope(|scope| {
            // Two segments ahead: without refilling, segments 4 to 6 would never be prefetched.
            let filler = scope.spawn(|| f.prefetched().fill(&name(1), 2, 1));
            for segno in 2..=6 {
                wait_announced(&f, segno);
                let dest = out.path().join("RECOVERYXLOG");
                let taken = f.prefetched().take(&name(segno), &dest).unwrap();
                assert_eq!(
                    taken,
                    Taken::Moved(u64::from(SIZE)),
                    "segment {segno} comes from the spool"
                );
                assert!(
                    fs::read(&dest).unwrap() == f.segments[segno as usize],
                    "segment {segno} intact"
                );
                fs::remove_file(&dest).unwrap();
            }
            filler.join().unwrap().unwrap();
        });
    }

    /// Prefetches segment 2, then makes it look half-written: data under the temporary name,
    /// no sidecar. Returns the sidecar's content.
    fn in_flight(f: &Fixture) -> String {
        f.prefetched().fill(&name(1), 1, 1).unwrap();
        let path = f.spooled(2);
        let crc = fs::read_to_string(path.with_extension("crc")).unwrap();
        fs::remove_file(path.with_extension("crc")).unwrap();
        fs::rename(&path, path.with_extension("tmp")).unwrap();
        crc
    }

    #[test]
    fn archive_get_waits_for_a_segment_a_prefetcher_is_writing() {
        let f = Fixture::new(2);
        let crc = in_flight(&f);
        let prefetcher = f.prefetched().lock().unwrap().expect("no one else holds the lock");
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("RECOVERYXLOG");
        let started = Instant::now();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                // The prefetcher finishes its work on the segment.
                let path = f.spooled(2);
                let temp = path.with_extension("tmp");
                let file = fs::File::open(&temp).unwrap();
                let crc = u32::from_str_radix(crc.trim(), 16).unwrap();
                f.prefetched().announce(Decoded { file, temp, path, crc }).unwrap();
            });
            let taken = f.prefetched().take(&name(2), &dest).unwrap();
            assert_eq!(
                taken,
                Taken::Moved(u64::from(SIZE)),
                "taken from the spool once announced"
            );
        });
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(fs::read(&dest).unwrap() == f.segments[2]);
        drop(prefetcher);
    }

    #[test]
    fn archive_get_does_not_wait_for_a_file_no_prefetcher_is_writing() {
        let f = Fixture::new(2);
        in_flight(&f);
        let out = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let taken = f.prefetched().take(&name(2), &out.path().join("RECOVERYXLOG")).unwrap();
        assert_eq!(
            taken,
            Taken::Absent,
            "a leftover of a prefetcher that is gone: fetch from the repository"
        );
        assert!(started.elapsed() < IN_FLIGHT_WAIT / 2, "{:?}", started.elapsed());
    }

    #[test]
    fn a_damaged_prefetched_segment_is_deleted_and_reported() {
        let f = Fixture::new(3);
        f.prefetched().fill(&name(1), 2, 1).unwrap();
        let victim = f.spooled(2);
        let mut bytes = fs::read(&victim).unwrap();
        bytes[1000] ^= 0xFF;
        fs::write(&victim, bytes).unwrap();
        let out = tempfile::tempdir().unwrap();
        let taken = f.prefetched().take(&name(2), &out.path().join("RECOVERYXLOG")).unwrap();
        let Taken::Damaged { path, reason } = taken else {
            panic!("a damaged file is reported, got {taken:?}");
        };
        assert_eq!(path, victim);
        assert!(reason.contains("CRC-32"), "{reason}");
        assert!(
            !victim.exists() && !victim.with_extension("crc").exists(),
            "deleted with its sidecar"
        );
        assert!(!out.path().join("RECOVERYXLOG").exists());
    }

    /// A segment of `timeline` (as [`segment_bytes`] for timeline 1).
    fn segment_on(timeline: TimelineId, segno: u64) -> (WalFileName, Vec<u8>) {
        let mut bytes = segment_bytes(segno);
        bytes[4..8].copy_from_slice(&timeline.to_le_bytes());
        let segment = Segment { timeline, segno };
        let name = WalFileName::parse(&segment.file_name(SegmentSize::new(SIZE).unwrap())).unwrap();
        (name, bytes)
    }

    #[test]
    fn the_prefetcher_follows_the_newest_timeline_past_its_switch_point() {
        // Timeline 2 branched off in segment 3; timeline 1 went on writing up to segment 6.
        let f = Fixture::new(6);
        let history = b"1\t0/300100\tno recovery target specified\n";
        f.repo
            .put_wal(&WalFileName::History(2), &Codec::default().encode(history))
            .unwrap();
        for segno in 3..=5 {
            let (name, bytes) = segment_on(2, segno);
            f.repo.put_wal(&name, &Codec::default().encode(&bytes)).unwrap();
        }
        f.prefetched().fill(&name(1), 4, 2).unwrap();
        let mut spooled: Vec<String> = fs::read_dir(f.spool.prefetch_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 24)
            .collect();
        spooled.sort();
        assert_eq!(
            spooled,
            [
                "000000010000000000000002",
                "000000020000000000000003",
                "000000020000000000000004",
                "000000020000000000000005"
            ]
        );
    }

    #[test]
    fn what_is_left_is_deleted_once_the_data_directory_is_out_of_recovery() {
        let f = Fixture::new(4);
        f.prefetched().fill(&name(1), 2, 1).unwrap();
        assert!(f.spooled(3).with_extension("crc").exists());
        // As if the prefetcher had run in `data_dir`, as archive-get starts it.
        let data_dir = tempfile::tempdir().unwrap();
        let owner = f.spool.prefetch_dir().join("owner");
        let recorded = fs::read_to_string(&owner).unwrap();
        let (repo_and_cluster, _) = recorded.trim_end().rsplit_once('\n').unwrap();
        fs::write(&owner, format!("{repo_and_cluster}\n{}\n", data_dir.path().display())).unwrap();
        fs::write(data_dir.path().join("recovery.signal"), b"").unwrap();
        assert!(
            !delete_after_recovery(&f.spool, data_dir.path()),
            "a slow replay keeps its window"
        );
        assert!(f.spooled(3).exists());
        fs::remove_file(data_dir.path().join("recovery.signal")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        assert!(
            !delete_after_recovery(&f.spool, elsewhere.path()),
            "another data directory's files stay"
        );
        assert!(delete_after_recovery(&f.spool, data_dir.path()));
        let left: Vec<_> = fs::read_dir(f.spool.prefetch_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lock"]);
        assert!(!delete_after_recovery(&f.spool, data_dir.path()), "nothing left");
    }
}
