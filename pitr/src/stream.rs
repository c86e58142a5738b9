//! The WAL receiver: WAL streamed from a physical replication slot while PostgreSQL writes it,
//! compressed as it arrives and stored in the repository the moment a segment is complete, so
//! that `archive-push` (PostgreSQL's archive_command) finds the segment stored and returns.
//!
//! The object is written into the repository as the segment arrives ([`Repo::wal_writer`]: on
//! local disk a temporary file, its writeback started every [`WRITE_AHEAD`] bytes without
//! waiting for it), so the put at the segment's end has only its last piece to make durable. And the end need not come from the
//! server: PostgreSQL marks a segment ready for archiving (and calls archive_command) before it
//! publishes the segment's last bytes to walsenders, which waits until the next file is open,
//! tens of milliseconds when that file must be created. When the server's `pg_wal` is on this
//! host, the receiver reads the rest of a segment that is ready there from the file (which must
//! begin with the bytes streamed) and skips those bytes when the stream brings them.
//!
//! ```text
//! <spool>/stream/<segment>.partial   the segment being received, durable up to the flush
//!                                    position reported to the server
//! <spool>/stream/<segment>.stored    "<size> <crc32>" of the whole segment (its object's
//!                                    header): the receiver stored this segment durably
//! <spool>/stream/<segment>.ended     the last, partial segment of a timeline that ended
//! <spool>/stream/last-stored         the name of the newest segment the receiver stored
//! <spool>/stream/lock                held (flock) by the running receiver
//! ```
//!
//! RPO: twice a second (when more arrived) the receiver also stores what is durable of the segment
//! it receives as a snapshot in the repository (`Repo::put_stream_snapshot`), deleting the one
//! before, and deletes them all once the segment is stored whole. archive-get serves the newest
//! snapshot, padded with zeros, for a segment the archive lacks: a recovery of a lost server
//! replays to the last WAL streamed about half a second before the loss, not to the last whole
//! segment.
//!
//! Durability: WAL is reported flushed to the server (which then lets the slot release it) only
//! once it is fsynced in the `.partial` file; a segment is marked `.stored` only once the
//! repository's create-only put of it returned durable. Restarting resumes at the start of the
//! newest `.partial` segment (the slot keeps that whole segment on the server), so a receiver
//! killed at any point loses nothing and never stores a partial segment as a complete one.
//!
//! archive-push's side ([`stored_by_receiver`]): a segment with a `.stored` marker whose size and
//! CRC-32 of the whole content match the file PostgreSQL hands over, and whose object is in the
//! repository, is archived already. The file is read once (16 MiB from the page cache, a
//! millisecond or two) and the stored object not at all: the marker records the object's header
//! values, written by the put the receiver made durable. While the receiver is writing the
//! segment, archive-push takes the file's checksum and waits for the marker at once, at most
//! [`RECEIVER_WAIT`]; without a receiver, after the wait, or when the checksums differ, it
//! archives the file itself (the create-only put and the byte comparison after it keep one object
//! either way, and refuse a file that differs from the stored segment).
//!
//! Only the put itself is fsynced on the way to the marker: the marker, `last-stored` and the
//! removal of the `.partial` file need not survive a crash (a lost marker sends archive-push
//! the slow way, a stale `last-stored` or `.partial` makes the receiver fetch a segment again,
//! which the repository then compares), and archive-push waits for exactly this path.

use std::fs;
use std::io::Read;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::archive;
use crate::codec::{Codec, Encoder};
use crate::error::{Error, Result};
use crate::fsio::{Dir, PageBuffer};
use crate::pg::replication::{check_slot_name, ReplicationConnection, StreamMessage};
use crate::pg::{Server, SlotState};
use crate::repo::Repo;
use crate::spool::{self, Spool};
use crate::storage::{PutOutcome, WriteInto};
use crate::wal::{Lsn, Segment, SegmentSize, TimelineId, WalFileName};
use crate::watch::{self, WatchEvents};

/// How long archive-push waits for a segment the receiver is writing.
pub const RECEIVER_WAIT: Duration = Duration::from_secs(5);

/// How often the receiver reports its position without being asked (the server's
/// `wal_receiver_status_interval` default).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// How often the receiver stores a snapshot of the segment it receives (when more arrived):
/// the most WAL a lost server costs beyond what the receiver has, less the time to store one.
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(500);

/// Snapshots are compressed fast (zstd level 1): each holds the whole segment so far, twice a
/// second, and lives until the next.
const SNAPSHOT_LEVEL: i32 = 1;

/// How long the receiver waits before connecting again after an error.
const RETRY: Duration = Duration::from_secs(2);

/// The file that names the newest segment stored.
const LAST_STORED: &str = "last-stored";

/// `.stored` markers kept for archive-push (the newest); older ones go.
const MARKERS_KEPT: usize = 64;

/// What the receiver streams from.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Where the server is (libpq environment, conninfo, password file).
    pub connection: crate::pg::ConnectionSettings,
    /// The physical replication slot.
    pub slot: String,
}

/// The receiver's directory in `spool`.
pub fn stream_dir(spool: &Spool) -> PathBuf {
    spool.dir().join("stream")
}

/// Creates the physical slot `slot` (keeping WAL from now on).
pub fn create_slot(options: &StreamOptions) -> Result<()> {
    check_slot_name(&options.slot)?;
    ReplicationConnection::connect(&options.connection)?.create_physical_slot(&options.slot)
}

/// Drops the slot `slot`: the server keeps WAL for it no more.
pub fn drop_slot(options: &StreamOptions) -> Result<()> {
    check_slot_name(&options.slot)?;
    ReplicationConnection::connect(&options.connection)?.drop_slot(&options.slot)
}

/// The slot's state on the server (`None`: there is no such slot), answered within `timeout`
/// or an error: for callers without an async runtime, like the daemon's `/metrics`.
pub fn slot_state(options: &StreamOptions, timeout: Duration) -> Result<Option<SlotState>> {
    check_slot_name(&options.slot)?;
    let mut config = options.connection.clone();
    config.config.connect_timeout(timeout);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("start", "an async runtime"))?;
    runtime.block_on(async {
        let read = async { Server::connect(&config).await?.replication_slot(&options.slot).await };
        tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| {
            Err(Error::Refused(format!(
                "the server did not answer about slot {} within {} s",
                options.slot,
                timeout.as_secs_f64()
            )))
        })
    })
}

/// Receives WAL until `stop` is set, connecting again after every error (each reported).
///
/// `pg_wal`, the server's WAL directory when this host has it, lets the receiver finish a segment
/// from the file once PostgreSQL marked it ready for archiving: PostgreSQL publishes a segment's
/// last bytes to walsenders only after it has opened the next file, which takes tens of
/// milliseconds when it must create and zero-fill one, while archive_command is already waiting.
pub fn receive(
    repo: &Repo,
    codec: &Codec,
    spool: &Spool,
    pg_wal: Option<&Path>,
    options: &StreamOptions,
    stop: &AtomicBool,
    events: &dyn WatchEvents,
) -> Result<()> {
    check_slot_name(&options.slot)?;
    let dir = stream_dir(spool);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(Error::io("create", &dir))?;
    let Some(_lock) = spool::take_lock(&dir.join("lock"))? else {
        return Err(Error::Refused(format!(
            "another WAL receiver runs on spool {}: stop it first",
            spool.dir().display()
        )));
    };
    let (snapshots, wanted) = mpsc::sync_channel(1);
    std::thread::scope(|scope| {
        scope.spawn(|| store_snapshots(repo, codec, &dir, wanted));
        while !stop.load(Ordering::SeqCst) {
            // One generation for the whole session: an upgrade-repo meanwhile takes effect at the
            // next.
            let session = repo.pin().and_then(|repo| {
                let mut receiver = Receiver {
                    repo: &repo,
                    codec,
                    dir: dir.clone(),
                    events,
                    pg_wal,
                    open: None,
                    finished_early: None,
                    snapshots: snapshots.clone(),
                    ready_watch: pg_wal.and_then(ReadyWatch::new),
                };
                receiver.session(options, stop)
            });
            match session {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        retry_in_s = RETRY.as_secs(),
                        "WAL receiver failed; connecting again"
                    );
                    let until = Instant::now() + RETRY;
                    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
        // The snapshot thread ends once every sender is gone.
        drop(snapshots);
    });
    Ok(())
}

/// A snapshot to store: the segment's name and how many of its first bytes are durable in its
/// `.partial` file.
type SnapshotWanted = (String, u64);

/// The snapshot thread: stores what the receive loop asks for, off its path (reading and
/// compressing up to a segment takes tens of milliseconds, which the receive loop must not wait
/// for). A request the loop makes while one is being stored waits; older ones are dropped.
fn store_snapshots(repo: &Repo, codec: &Codec, dir: &Path, wanted: mpsc::Receiver<SnapshotWanted>) {
    while let Ok((name, len)) = wanted.recv() {
        if let Err(e) = store_snapshot(repo, codec, dir, &name, len) {
            tracing::warn!(segment = %name, error = %e, "WAL receiver: snapshot not stored");
        }
    }
}

/// Stores the first `len` bytes of the `.partial` file of segment `name` as its snapshot and
/// deletes the older one. A segment stored whole meanwhile (its `.partial` file gone, or its
/// object there) needs no snapshot.
fn store_snapshot(repo: &Repo, codec: &Codec, dir: &Path, name: &str, len: u64) -> Result<()> {
    let path = dir.join(format!("{name}.partial"));
    let Ok(file) = fs::File::open(&path) else { return Ok(()) };
    let mut raw = vec![0u8; len as usize];
    if file.read_exact_at(&mut raw, 0).is_err() {
        return Ok(());
    }
    let wal_name = WalFileName::parse(name)?;
    let segment = wal_name.segment_name().expect("a segment");
    let repo = repo.pin()?;
    let fast = Codec::new(codec.compression(), Some(SNAPSHOT_LEVEL)).unwrap_or(*codec);
    repo.put_stream_snapshot(segment, len, &fast.encode(&raw))?;
    let whole = repo.has_wal(&wal_name)?;
    repo.delete_stream_snapshots(segment, (!whole).then_some(len))
}

/// The segment being received.
struct OpenSegment<'a> {
    segment: Segment,
    name: String,
    file: fs::File,
    /// Bytes received (the segment's first `received` bytes).
    received: u64,
    /// Bytes fsynced.
    synced: u64,
    /// The first bytes, for validating the page header.
    head: Vec<u8>,
    /// Compresses into the object in the repository as the bytes come.
    encoder: Encoder<WriteInto<'a>>,
    /// How many bytes of the object were written when its writeback was last started.
    written_ahead: u64,
    /// The length of the newest snapshot stored in the repository (0: none yet).
    snapshot: u64,
}

struct Receiver<'a> {
    repo: &'a Repo,
    codec: &'a Codec,
    dir: PathBuf,
    events: &'a dyn WatchEvents,
    /// The server's WAL directory, when on this host (see [`receive`]).
    pg_wal: Option<&'a Path>,
    open: Option<OpenSegment<'a>>,
    /// The end of a segment finished from `pg_wal` before the server sent all of it: the stream's
    /// bytes before this position are stored already and are skipped.
    finished_early: Option<Lsn>,
    /// Where snapshots are asked for (see [`store_snapshots`]).
    snapshots: mpsc::SyncSender<SnapshotWanted>,
    /// Wakes the receive loop when a file is marked ready for archiving in `pg_wal`.
    ready_watch: Option<ReadyWatch>,
}

impl<'a> Receiver<'a> {
    /// One connection: identify, start where the spool ends, receive until stopped.
    fn session(&mut self, options: &StreamOptions, stop: &AtomicBool) -> Result<()> {
        let repo = self.repo;
        let cluster = repo.info()?.ok_or_else(|| {
            Error::Refused(format!(
                "repository {} has no repo.json yet: run `pitr create-repo` before streaming into it",
                repo.location()
            ))
        })?;
        let size = SegmentSize::new(cluster.wal_segment_size)
            .ok_or_else(|| Error::Refused("the repository records an impossible segment size".into()))?;
        let mut conn = ReplicationConnection::connect(&options.connection)?;
        let identity = conn.identify_system()?;
        if identity.system_identifier != cluster.system_identifier {
            return Err(Error::Refused(format!(
                "{} is cluster {}, repository {} holds cluster {}: stream from the repository's cluster",
                conn.target(),
                identity.system_identifier,
                repo.location(),
                cluster.system_identifier
            )));
        }
        let (mut timeline, mut position) = self.resume_point(size, identity.timeline, identity.flushed)?;
        let synchronous = conn.is_synchronous_standby()?;
        tracing::info!(
            server = %conn.target(),
            slot = %options.slot,
            lsn = %position,
            timeline = %timeline,
            synchronous,
            "WAL receiver: streaming from {} through slot {} at {position} on timeline {timeline}{}",
            conn.target(),
            options.slot,
            if synchronous { ", as a synchronous standby" } else { "" }
        );
        conn.start_replication(&options.slot, position, timeline)?;
        let mut last_status = Instant::now();
        let mut last_snapshot = Instant::now();
        let mut last_flush = Instant::now();
        let mut last_ready_check = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                self.flush()?;
                return conn.send_status(position, self.flushed_to(size, position), false);
            }
            // A synchronous standby flushes whenever the socket has nothing more to read (commits
            // wait for it); otherwise at most every FLUSH_INTERVAL, which spares PostgreSQL's own
            // WAL fsyncs on a shared disk most of the receiver's.
            let dirty = self.open.as_ref().is_some_and(|o| o.synced < o.received);
            let flush_due = dirty && (synchronous || last_flush.elapsed() >= FLUSH_INTERVAL);
            let mut wait = Duration::from_millis(100);
            if self.open.is_some() && self.pg_wal.is_some() && self.ready_watch.is_none() {
                wait = READY_CHECK;
            }
            if dirty {
                wait = wait.min(FLUSH_INTERVAL.saturating_sub(last_flush.elapsed()));
            }
            if flush_due {
                wait = Duration::ZERO;
            }
            let wake = self.ready_watch.as_ref().map(|w| w.inotify.as_fd());
            let message = conn.next_message(wait, wake)?;
            let woken = message.is_none() && self.ready_watch.as_ref().is_some_and(ReadyWatch::drain);
            match message {
                Some(StreamMessage::XLogData { start, data }) => {
                    if start != position {
                        return Err(Error::Refused(format!(
                            "the server sent WAL from {start}, pitr expected {position}"
                        )));
                    }
                    self.write(size, timeline, start, &data)?;
                    position = Lsn(start.0 + data.len() as u64);
                }
                Some(StreamMessage::Keepalive {
                    reply_requested: true, ..
                }) => {
                    self.flush()?;
                    conn.send_status(position, self.flushed_to(size, position), false)?;
                    last_status = Instant::now();
                    last_flush = Instant::now();
                }
                Some(StreamMessage::Keepalive { .. }) => {}
                Some(StreamMessage::EndOfTimeline {
                    next_timeline,
                    next_start,
                }) => {
                    self.end_timeline()?;
                    self.store_history(&mut conn, next_timeline)?;
                    timeline = next_timeline;
                    position = size.segment_start(size.segment_of(next_start));
                    conn.start_replication(&options.slot, position, timeline)?;
                }
                None if flush_due => {
                    self.flush()?;
                    conn.send_status(position, self.flushed_to(size, position), false)?;
                    last_status = Instant::now();
                    last_flush = Instant::now();
                }
                None => {}
            }
            let recheck = if self.ready_watch.is_some() {
                READY_RECHECK
            } else {
                READY_CHECK
            };
            if woken || last_ready_check.elapsed() >= recheck {
                self.finish_from_pg_wal(size)?;
                last_ready_check = Instant::now();
            }
            if last_snapshot.elapsed() >= SNAPSHOT_INTERVAL {
                self.snapshot();
                last_snapshot = Instant::now();
            }
            if last_status.elapsed() >= STATUS_INTERVAL {
                conn.send_status(position, self.flushed_to(size, position), false)?;
                last_status = Instant::now();
            }
        }
    }

    /// Where to start: the start of the newest segment the spool holds partly, else the segment
    /// after the newest one stored (archive-push consumes `.stored` markers; `last-stored`
    /// stays), else the start of the server's current segment.
    fn resume_point(&self, size: SegmentSize, timeline: TimelineId, flushed: Lsn) -> Result<(TimelineId, Lsn)> {
        let mut newest: Option<(Segment, bool)> = None;
        let last_stored =
            fs::read_to_string(self.dir.join(LAST_STORED)).ok().and_then(|name| {
                match WalFileName::parse(name.trim_end()) {
                    Ok(WalFileName::Segment(s)) => s.segment(size),
                    _ => None,
                }
            });
        for (segment, partial) in self.spooled(size)?.into_iter().chain(last_stored.map(|s| (s, false))) {
            if newest.is_none_or(|(n, _)| (segment.timeline, segment.segno) > (n.timeline, n.segno)) {
                newest = Some((segment, partial));
            }
        }
        Ok(match newest {
            Some((s, true)) => (s.timeline, size.segment_start(s.segno)),
            Some((s, false)) => (s.timeline, size.segment_start(s.segno + 1)),
            None => (timeline, size.segment_start(size.segment_of(flushed))),
        })
    }

    /// The segments of the spool: (segment, still partial).
    fn spooled(&self, size: SegmentSize) -> Result<Vec<(Segment, bool)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(Error::io("read", &self.dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let (stem, partial) = match (name.strip_suffix(".partial"), name.strip_suffix(".stored")) {
                (Some(stem), _) => (stem.to_string(), true),
                (_, Some(stem)) => (stem.to_string(), false),
                _ => continue,
            };
            if let Ok(WalFileName::Segment(s)) = WalFileName::parse(&stem) {
                if let Some(segment) = s.segment(size) {
                    found.push((segment, partial));
                }
            }
        }
        Ok(found)
    }

    /// The position durable in the spool (everything before the open segment is stored).
    fn flushed_to(&self, size: SegmentSize, position: Lsn) -> Lsn {
        match &self.open {
            Some(o) => Lsn(size.segment_start(o.segment.segno).0 + o.synced),
            None => position,
        }
    }

    /// Writes WAL received at `start`, storing every segment it completes.
    fn write(&mut self, size: SegmentSize, timeline: TimelineId, start: Lsn, mut data: &[u8]) -> Result<()> {
        let mut at = start.0;
        if let Some(end) = self.finished_early {
            let stored = (end.0.saturating_sub(at)).min(data.len() as u64) as usize;
            data = &data[stored..];
            at += stored as u64;
            if at >= end.0 {
                self.finished_early = None;
            }
        }
        while !data.is_empty() {
            let segno = size.segment_of(Lsn(at));
            let offset = at - size.segment_start(segno).0;
            let take = (u64::from(size.bytes()) - offset).min(data.len() as u64) as usize;
            let dir = self.dir.clone();
            let open = self.open_segment(size, Segment { timeline, segno }, offset)?;
            open.append(&dir, &data[..take])?;
            at += take as u64;
            data = &data[take..];
            if open.received == u64::from(size.bytes()) {
                self.store(size)?;
            }
        }
        Ok(())
    }

    /// When the open segment is ready for archiving in `pg_wal` (so complete there and durable),
    /// reads the rest of it from the file and stores it, rather than waiting for the server to
    /// send it (see [`receive`]). The file must begin with the bytes received.
    fn finish_from_pg_wal(&mut self, size: SegmentSize) -> Result<()> {
        let (Some(pg_wal), Some(open)) = (self.pg_wal, &mut self.open) else {
            return Ok(());
        };
        let ready = pg_wal.join("archive_status").join(format!("{}.ready", open.name));
        let Ok(marked) = fs::metadata(&ready).and_then(|m| m.modified()) else {
            return Ok(());
        };
        tracing::debug!(
            segment = %open.name,
            ready_for_us = marked.elapsed().unwrap_or_default().as_micros() as u64,
            missing = u64::from(size.bytes()) - open.received,
            "WAL receiver: segment ready in pg_wal before the server sent its end"
        );
        let path = pg_wal.join(&open.name);
        let Ok(file) = archive::open_wal_file(&path, &open.name) else {
            return Ok(()); // archived and recycled meanwhile: the stream brings the rest
        };
        let len = file.metadata().map_err(Error::io("read", &path))?.len();
        let mut head = vec![0u8; open.head.len()];
        file.read_exact_at(&mut head, 0).map_err(Error::io("read", &path))?;
        if len != u64::from(size.bytes()) || head != open.head {
            return Err(Error::Refused(format!(
                "{} is ready for archiving but is not the segment the server streamed",
                path.display()
            )));
        }
        let dir = self.dir.clone();
        let mut piece = PageBuffer::new(TAIL_PIECE);
        while open.received < len {
            let want = (len - open.received).min(TAIL_PIECE as u64) as usize;
            file.read_exact_at(&mut piece[..want], open.received)
                .map_err(Error::io("read", &path))?;
            open.append(&dir, &piece[..want])?;
        }
        let start = size.segment_start(open.segment.segno);
        self.finished_early = Some(Lsn(start.0 + u64::from(size.bytes())));
        self.store(size)
    }

    /// The open segment, opening `segment` when none is (it must start at offset 0).
    fn open_segment(&mut self, size: SegmentSize, segment: Segment, offset: u64) -> Result<&mut OpenSegment<'a>> {
        if self.open.as_ref().is_some_and(|o| o.segment != segment) {
            return Err(Error::Refused(
                "WAL of the next segment arrived before the open one was complete".into(),
            ));
        }
        if self.open.is_none() {
            if offset != 0 {
                return Err(Error::Refused(format!(
                    "the server sent WAL from the middle of segment {}",
                    segment.file_name(size)
                )));
            }
            let name = segment.file_name(size);
            let path = self.dir.join(format!("{name}.partial"));
            let file = fs::OpenOptions::new()
                .write(true)
                .read(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
                .map_err(Error::io("create", &path))?;
            let writer = WriteInto(self.repo.wal_writer(&WalFileName::parse(&name)?)?);
            self.open = Some(OpenSegment {
                segment,
                name,
                file,
                received: 0,
                synced: 0,
                head: Vec::with_capacity(SEGMENT_HEAD),
                encoder: Encoder::with_output(*self.codec, 1, writer).map_err(Error::io("compress", &path))?,
                written_ahead: 0,
                snapshot: 0,
            });
        }
        Ok(self.open.as_mut().expect("opened above"))
    }

    /// Makes what was received durable in the spool.
    fn flush(&mut self) -> Result<()> {
        if let Some(open) = &mut self.open {
            if open.synced < open.received {
                open.file
                    .sync_data()
                    .map_err(Error::io("sync", &self.dir.join(format!("{}.partial", open.name))))?;
                open.synced = open.received;
            }
        }
        Ok(())
    }

    /// Stores the complete open segment: validated as archive-push validates, put create-only
    /// (an existing object must hold the same bytes), then marked `.stored`.
    fn store(&mut self, size: SegmentSize) -> Result<()> {
        let began = Instant::now();
        let open = self.open.take().expect("a complete segment is open");
        let partial = self.dir.join(format!("{}.partial", open.name));
        let name = WalFileName::parse(&open.name)?;
        let segment_name = name.segment_name().expect("a segment");
        let what = partial.display().to_string();
        archive::check_segment_start(self.repo, segment_name, &open.head, u64::from(size.bytes()), &what)?;
        let (object, header) = open.encoder.finish_output().map_err(Error::io("compress", &partial))?;
        let compressed = began.elapsed();
        let outcome = object.0.finish(&header.to_bytes())?;
        let durable = began.elapsed();
        if outcome == PutOutcome::AlreadyExists {
            let mut raw = Vec::new();
            let mut file = &open.file;
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(Error::io("read", &partial))?;
            file.read_to_end(&mut raw).map_err(Error::io("read", &partial))?;
            archive::compare_with_archived(self.repo, &name, &raw)?;
        }
        let marker = self.dir.join(format!("{}.stored", open.name));
        let content = ContentChecksum {
            len: header.raw_len,
            crc: header.raw_crc,
        };
        spool::replace_private(&marker, stored_marker(content).as_bytes())?;
        tracing::debug!(
            segment = %open.name,
            compressed_us = compressed.as_micros() as u64,
            durable_us = durable.as_micros() as u64,
            marked_us = began.elapsed().as_micros() as u64,
            "WAL receiver: segment put, from its last byte"
        );
        spool::replace_private(&self.dir.join(LAST_STORED), format!("{}\n", open.name).as_bytes())?;
        watch::archived(self.events, &open.name, began.elapsed());
        // After the marker, which archive-push waits for: the segment is whole in the repository,
        // so its snapshots have served their time.
        self.repo.delete_stream_snapshots(segment_name, None)?;
        fs::remove_file(&partial).map_err(Error::io("remove", &partial))?;
        self.prune_markers();
        Ok(())
    }

    /// Asks the snapshot thread to store what is durable of the open segment, when more arrived
    /// since the last snapshot: so that a recovery of a lost server reaches the last WAL streamed
    /// a moment before, not only the last whole segment.
    fn snapshot(&mut self) {
        let Some(open) = &mut self.open else { return };
        if open.synced > open.snapshot && self.snapshots.try_send((open.name.clone(), open.synced)).is_ok() {
            open.snapshot = open.synced;
        }
    }

    /// The timeline ended: its last segment stays in the spool as `.ended` (PostgreSQL archives
    /// its own `.partial` of it).
    fn end_timeline(&mut self) -> Result<()> {
        self.flush()?;
        if let Some(open) = self.open.take() {
            let partial = self.dir.join(format!("{}.partial", open.name));
            let ended = self.dir.join(format!("{}.ended", open.name));
            fs::rename(&partial, &ended).map_err(Error::io("rename", &partial))?;
            Dir::open(&self.dir)
                .and_then(|dir| dir.sync())
                .map_err(Error::io("sync", &self.dir))?;
        }
        Ok(())
    }

    /// Stores the history file of `timeline`, as the server has it.
    fn store_history(&mut self, conn: &mut ReplicationConnection, timeline: TimelineId) -> Result<()> {
        let (file_name, content) = conn.timeline_history(timeline)?;
        let name = WalFileName::parse(&file_name)?;
        if name != WalFileName::History(timeline) {
            return Err(Error::Refused(format!(
                "{} sent history file {file_name} for timeline {timeline}",
                conn.target()
            )));
        }
        if self.repo.put_wal(&name, &self.codec.encode(&content))? == PutOutcome::AlreadyExists {
            archive::compare_with_archived(self.repo, &name, &content)?;
        }
        watch::archived(self.events, &file_name, Duration::ZERO);
        Ok(())
    }

    /// Deletes all but the newest [`MARKERS_KEPT`] `.stored` markers.
    fn prune_markers(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let mut markers: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".stored"))
            .collect();
        markers.sort();
        let excess = markers.len().saturating_sub(MARKERS_KEPT);
        for name in &markers[..excess] {
            let _ = fs::remove_file(self.dir.join(name));
        }
    }
}

/// How much more of the object in the repository is written before the receiver starts its
/// writeback, ahead of the segment's end (see `OpenSegment::append`).
const WRITE_AHEAD: u64 = 128 << 10;

/// How often the receiver makes what it received durable in the spool (and reports it flushed)
/// when it is no synchronous standby.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// How often the receiver looks whether the segment it receives is ready in `pg_wal` (see
/// [`receive`]), when it waits for the server and cannot watch `pg_wal/archive_status`.
const READY_CHECK: Duration = Duration::from_millis(5);

/// How often the receiver looks all the same when it watches `pg_wal/archive_status` (should an
/// event be lost: inotify drops events when its queue overflows).
const READY_RECHECK: Duration = Duration::from_millis(100);

/// Wakes the receiver the moment PostgreSQL marks a file ready for archiving
/// (`pg_wal/archive_status/<name>.ready`, created by `XLogArchiveNotify` in PostgreSQL's
/// `src/backend/access/transam/xlogarchive.c`), so that it finishes the segment it receives from
/// the file at once rather than at its next look (see [`receive`]). archive_command, started for
/// the same file, waits for exactly this.
struct ReadyWatch {
    inotify: OwnedFd,
}

impl ReadyWatch {
    /// Watches `pg_wal/archive_status`; `None` (the receiver then looks every [`READY_CHECK`])
    /// when it cannot be watched.
    fn new(pg_wal: &Path) -> Option<ReadyWatch> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let status = pg_wal.join("archive_status");
        let watch = || {
            let inotify = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
            inotify::add_watch(&inotify, &status, WatchFlags::CREATE | WatchFlags::MOVED_TO)?;
            Ok::<_, rustix::io::Errno>(inotify)
        };
        match watch() {
            Ok(inotify) => Some(ReadyWatch { inotify }),
            Err(e) => {
                tracing::warn!(
                    directory = %status.display(),
                    error = %std::io::Error::from(e),
                    "WAL receiver: cannot watch {} (looking every {} ms instead)",
                    status.display(),
                    READY_CHECK.as_millis()
                );
                None
            }
        }
    }

    /// Reads the events pending: whether there were any.
    fn drain(&self) -> bool {
        let mut buf = [MaybeUninit::uninit(); 4096];
        let mut events = rustix::fs::inotify::Reader::new(&self.inotify, &mut buf);
        let mut any = false;
        while events.next().is_ok() {
            any = true;
        }
        any
    }
}

/// The pieces in which the receiver reads the rest of a segment from `pg_wal`.
const TAIL_PIECE: usize = 1 << 20;

/// How many first bytes of a segment the receiver keeps, to validate its page header and to
/// check that a file in `pg_wal` is the segment streamed.
const SEGMENT_HEAD: usize = 8192;

/// The size and CRC-32 of a segment's whole content: what a `.stored` marker records (the
/// values of the stored object's header) and what archive-push finds in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentChecksum {
    len: u64,
    crc: u32,
}

/// A `.stored` marker's text: the size and the CRC-32 of the whole segment.
fn stored_marker(content: ContentChecksum) -> String {
    format!("{} {:08x}\n", content.len, content.crc)
}

/// archive-push's question: did the receiver store the segment `name` that PostgreSQL hands
/// over at `path`, with this very content? Waits for a segment the running receiver is writing
/// (at most [`RECEIVER_WAIT`]), reading the file and taking its checksum meanwhile. `false` means
/// "archive it yourself".
pub fn stored_by_receiver(repo: &Repo, spool: &Spool, name: &WalFileName, path: &Path) -> Result<bool> {
    if !matches!(name, WalFileName::Segment(_)) {
        return Ok(false);
    }
    let dir = stream_dir(spool);
    let marker = dir.join(format!("{name}.stored"));
    let content = if marker.exists() {
        content_checksum(path, name)?
    } else {
        let partial = dir.join(format!("{name}.partial"));
        if !partial.exists() || !receiver_running(&dir) {
            return Ok(false);
        }
        // The file is complete (PostgreSQL archives only complete segments): its checksum is
        // taken while the receiver finishes the same segment, so the wait pays for it.
        let stored = std::thread::scope(|scope| {
            let checksum = scope.spawn(|| content_checksum(path, name));
            let stored = wait_for_marker(&dir, &marker);
            (stored, checksum.join().expect("the checksum thread does not panic"))
        });
        match stored {
            (false, _) => return Ok(false),
            (true, content) => content?,
        }
    };
    let Ok(recorded) = fs::read_to_string(&marker) else {
        return Ok(false);
    };
    Ok(recorded == stored_marker(content) && repo.has_wal(name)?)
}

/// Waits until the running receiver writes `marker` (`true`), or gives up after
/// [`RECEIVER_WAIT`] or when the receiver stops (`false`).
fn wait_for_marker(dir: &Path, marker: &Path) -> bool {
    let deadline = Instant::now() + RECEIVER_WAIT;
    while !marker.exists() {
        if Instant::now() >= deadline || !receiver_running(dir) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Whether a receiver holds the lock of `dir`.
fn receiver_running(dir: &Path) -> bool {
    spool::lock_is_held(&dir.join("lock"))
}

/// Size and CRC-32 of the whole WAL file `name` at `path` (opened as archive-push opens it: a
/// regular file, no link, no FIFO), read in pieces that stay in the CPU's cache.
fn content_checksum(path: &Path, name: &WalFileName) -> Result<ContentChecksum> {
    let mut file = archive::open_wal_file(path, &name.to_string())?;
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0u64;
    let mut piece = PageBuffer::new(CHECKSUM_PIECE);
    loop {
        let n = match file.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", path)(e)),
        };
        crc.update(&piece[..n]);
        len += n as u64;
    }
    Ok(ContentChecksum {
        len,
        crc: crc.finalize(),
    })
}

/// The pieces in which archive-push reads a segment to take its checksum.
const CHECKSUM_PIECE: usize = 128 << 10;

impl OpenSegment<'_> {
    /// Appends the segment's next bytes to its `.partial` file in `dir` and to the object.
    fn append(&mut self, dir: &Path, data: &[u8]) -> Result<()> {
        let path = dir.join(format!("{}.partial", self.name));
        self.file
            .write_all_at(data, self.received)
            .map_err(Error::io("write", &path))?;
        if self.head.len() < SEGMENT_HEAD {
            let wanted = (SEGMENT_HEAD - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..wanted]);
        }
        self.encoder.write(data).map_err(Error::io("compress", &path))?;
        self.received += data.len() as u64;
        // The put at the segment's end (which archive-push waits for) then has little left to
        // make durable.
        let object = self.encoder.output_mut();
        if object.0.written() >= self.written_ahead + WRITE_AHEAD {
            object.0.write_ahead()?;
            self.written_ahead = object.0.written();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: &str = "000000010000000000000001";

    #[test]
    fn a_file_marked_ready_for_archiving_wakes_the_receiver() {
        let pg_wal = tempfile::tempdir().unwrap();
        let status = pg_wal.path().join("archive_status");
        fs::create_dir(&status).unwrap();
        let watch = ReadyWatch::new(pg_wal.path()).expect("archive_status can be watched");
        fs::read_dir(&status).unwrap().for_each(drop);
        assert!(!watch.drain(), "nothing was marked yet");
        fs::write(status.join(format!("{SEGMENT}.ready")), b"").unwrap();
        assert!(watch.drain(), "a .ready file created is an event");
        assert!(!watch.drain(), "the events were read");
        fs::write(status.join(format!("{SEGMENT}.tmp")), b"").unwrap();
        watch.drain();
        fs::rename(
            status.join(format!("{SEGMENT}.tmp")),
            status.join(format!("{SEGMENT}.done")),
        )
        .unwrap();
        assert!(watch.drain(), "a file renamed into archive_status is an event");
    }

    #[test]
    fn without_archive_status_the_receiver_looks_for_ready_files_itself() {
        let pg_wal = tempfile::tempdir().unwrap();
        assert!(ReadyWatch::new(pg_wal.path()).is_none());
    }
}
