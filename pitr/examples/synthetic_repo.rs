//! A synthetic pitr repository at scale, for measuring `list`, `info`, `expire` and the recovery
//! plan (issue 14, item 6): by default 1,000,000 archived 16 MiB WAL segments over a year on three
//! timelines (with their history files and the `.partial` segments the old timelines left), 1,000
//! backups across the hourly, daily and weekly tiers (with their `.backup` history files), and 50
//! restore points.
//!
//! ```text
//! cargo run --release -p pitr --example synthetic_repo -- /work/scale-repo
//!     [--segments 1000000] [--backups 1000] [--files-per-backup 2000] [--restore-points 50]
//!     [--days 365] [--end 2026-11-25T12:00:00Z] [--jobs N]
//! ```
//!
//! Everything is written through the library (`Repo`, its storage, `codec`, `Manifest`,
//! `RestorePoint`, `codec::json`), so the repository is exactly what pitr reads, and this program
//! stops compiling when a format changes. What is synthetic:
//!
//! - **Segments.** Every segment is a valid stored object whose decoded content is a whole 16 MiB
//!   segment: a long page header, a commit record (the segment's time, transaction 1000 +
//!   segment number), a restore point record in the segments that hold one, and an `XLOG_SWITCH`;
//!   zeros after. The recovery planner and `info`'s windows read such segments as they read real
//!   ones. The payload is two zstd frames (the first page, then a precompressed frame of zeros that
//!   every segment shares), so that writing a million of them costs no compression of 16 TiB; the
//!   codec decodes concatenated frames like one. A real segment is full of records: reading one
//!   costs more than reading these.
//! - **Backups.** Manifests as `pitr backup` writes them (format 4, checksummed, the copy beside),
//!   listing `--files-per-backup` files of a plausible data directory (catalogs, user relations, a
//!   few split into 16 MiB parts), plus the backup_label. The files' objects are not written: no
//!   command measured here reads them (`verify` and `restore` would).
//! - **Archive times.** Every WAL file's modification time is set to when it would have been
//!   archived, so `info` shows a year of archiving.
//!
//! Nothing is fsynced (a repository for measurements, not for keeping): drop the page cache
//! (`echo 3 > /proc/sys/vm/drop_caches`) for cold-cache figures.
//!
//! The repository may also be an S3 URL (`s3://bucket/prefix`, configured by the AWS variables
//! as pitr is): the same objects are written there, one `PutObject` each, `--jobs` at a time. S3
//! has no way to set an object's LastModified, so the archive times are then the time of writing.
//! For a large repository on a local S3-compatible server, writing it to a directory and putting
//! the files where the server keeps its objects is faster (bench/scale.py --s3 does that).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chrono::{DateTime, Datelike, Duration, DurationRound, Timelike, Utc, Weekday};
use rayon::prelude::*;

use pitr::backup::manifest::{parts_crc, DirEntry, FileEntry, Manifest, Part, MANIFEST_VERSION, PART_SIZE};
use pitr::backup::Tier;
use pitr::codec::{self, json, Compression, ObjectHeader};
use pitr::pg::PgVersion;
use pitr::repo::{backup_dir, Cluster, Repo, MANIFEST, MANIFEST_COPY};
use pitr::restore_point::RestorePoint;
use pitr::storage::Location;
use pitr::wal::records::{RecordKind, SegmentRecords};
use pitr::wal::{Lsn, Segment, SegmentSize, TimelineId, WalFileName};

/// The cluster the repository is of.
const PG_VERSION: u32 = 16;
const SYSTEM_IDENTIFIER: u64 = 7_412_345_678_901_234_567;
const SEGMENT_BYTES: u32 = 16 << 20;
/// `XLOG_BLCKSZ`.
const BLOCK: usize = 8192;
/// `SizeOfXLogLongPHD`, where the first record of a segment starts.
const FIRST_RECORD: u64 = 40;
/// How long a backup takes (its WAL runs from its start segment over this many seconds).
const BACKUP_SECONDS: i64 = 300;
/// `TimestampTz` epoch (2000-01-01) in Unix microseconds.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

struct Options {
    /// Where the repository goes: a directory, or an S3 URL.
    location: Location,
    segments: u64,
    backups: usize,
    files_per_backup: usize,
    restore_points: u64,
    days: i64,
    end: DateTime<Utc>,
    jobs: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: synthetic_repo DIR|s3://bucket/prefix [--segments N] [--backups N] [--files-per-backup N] [--restore-points N] \
         [--days N] [--end RFC3339] [--jobs N]\n(DIR must be absent or empty; an S3 prefix should be empty)"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        location: Location::Local(PathBuf::new()),
        segments: 1_000_000,
        backups: 1_000,
        files_per_backup: 2_000,
        restore_points: 50,
        days: 365,
        end: Utc::now()
            .duration_trunc(Duration::hours(1))
            .expect("an hour divides time"),
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let mut dir = None;
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--segments" => options.segments = value().parse().unwrap_or_else(|_| usage()),
            "--backups" => options.backups = value().parse().unwrap_or_else(|_| usage()),
            "--files-per-backup" => options.files_per_backup = value().parse().unwrap_or_else(|_| usage()),
            "--restore-points" => options.restore_points = value().parse().unwrap_or_else(|_| usage()),
            "--days" => options.days = value().parse().unwrap_or_else(|_| usage()),
            "--end" => {
                options.end = DateTime::parse_from_rfc3339(&value())
                    .unwrap_or_else(|_| usage())
                    .with_timezone(&Utc)
            }
            "--jobs" => options.jobs = value().parse().unwrap_or_else(|_| usage()),
            other if other.starts_with('-') || dir.is_some() => usage(),
            other => dir = Some(other.to_string()),
        }
    }
    options.location = Location::parse(&dir.unwrap_or_else(|| usage())).unwrap_or_else(|e| {
        eprintln!("{e}");
        usage()
    });
    if options.segments < 100 || options.files_per_backup < 10 {
        usage()
    }
    options
}

/// The repository's shape: which segment is on which timeline, when it was written, what it holds.
struct Shape {
    segments: u64,
    size: SegmentSize,
    /// The first segment of timeline 2 and of timeline 3 (timeline 1 starts at segment 1).
    switches: [u64; 2],
    start: DateTime<Utc>,
    /// Microseconds per segment.
    interval: i64,
    /// Segments holding a restore point, sorted.
    restore_points: Vec<u64>,
    magic: u16,
}

impl Shape {
    fn new(options: &Options) -> Shape {
        let n = options.segments;
        let span = Duration::days(options.days).num_microseconds().expect("a span of days");
        let restore_points = (1..=options.restore_points)
            .map(|i| 1 + i * (n - 1) / (options.restore_points + 1))
            .collect();
        Shape {
            segments: n,
            size: SegmentSize::new(SEGMENT_BYTES).expect("16 MiB"),
            switches: [1 + n * 2 / 5, 1 + n * 7 / 10],
            start: options.end - Duration::microseconds(span),
            interval: span / n as i64,
            restore_points,
            magic: PgVersion::new(PG_VERSION).expect("supported").page_magic(),
        }
    }

    /// The timeline segment `segno` is archived on along the path to the newest timeline.
    fn timeline(&self, segno: u64) -> TimelineId {
        1 + self.switches.iter().filter(|s| segno >= **s).count() as TimelineId
    }

    /// When segment `segno` was begun.
    fn time(&self, segno: u64) -> DateTime<Utc> {
        self.start + Duration::microseconds((segno as i64 - 1) * self.interval)
    }

    /// The time of the commit in segment `segno`.
    fn commit_time(&self, segno: u64) -> DateTime<Utc> {
        self.time(segno) + Duration::microseconds(self.interval / 2)
    }

    /// The segment being written at `time`.
    fn segment_at(&self, time: DateTime<Utc>) -> u64 {
        let micros = (time - self.start).num_microseconds().expect("within the span");
        (1 + micros / self.interval).clamp(1, self.segments as i64) as u64
    }

    fn restore_point_in(&self, segno: u64) -> Option<usize> {
        self.restore_points.binary_search(&segno).ok()
    }

    fn name(&self, timeline: TimelineId, segno: u64) -> String {
        Segment { timeline, segno }.file_name(self.size)
    }

    /// The switch point of timeline `timeline` (2 or 3) from its parent: the end of the commit
    /// in the parent's last segment.
    fn switchpoint(&self, timeline: TimelineId) -> Lsn {
        let segno = self.switches[timeline as usize - 2];
        Lsn(self.size.segment_start(segno).0 + layout(self, segno, Kind::Partial).commit_end)
    }
}

/// What a stored segment is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An archived segment, closed by a switch record.
    Full,
    /// The `.partial` segment an old timeline left at its switch point: its records end there.
    Partial,
}

/// Where the records of a segment's first page end, relative to the segment's start.
struct Layout {
    page: Vec<u8>,
    commit_end: u64,
    restore_point_end: Option<u64>,
}

/// The first page of segment `segno` (the rest of the segment is zeros).
fn layout(shape: &Shape, segno: u64, kind: Kind) -> Layout {
    let base = shape.size.segment_start(segno).0;
    let mut page = vec![0u8; BLOCK];
    let timeline = shape.timeline(segno);
    page[0..2].copy_from_slice(&shape.magic.to_le_bytes());
    page[2..4].copy_from_slice(&0x0002u16.to_le_bytes()); // XLP_LONG_HEADER
    page[4..8].copy_from_slice(&timeline.to_le_bytes());
    page[8..16].copy_from_slice(&base.to_le_bytes());
    page[24..32].copy_from_slice(&SYSTEM_IDENTIFIER.to_le_bytes());
    page[32..36].copy_from_slice(&SEGMENT_BYTES.to_le_bytes());
    page[36..40].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    // The record before this segment's first: the previous segment's last.
    let mut prev = match segno {
        1 => 0,
        _ => shape.size.segment_start(segno - 1).0 + last_record_offset(shape, segno - 1),
    };
    let mut at = FIRST_RECORD;
    let mut append = |page: &mut Vec<u8>, rmid: u8, info: u8, xid: u32, main: &[u8]| -> (u64, u64) {
        let record = wal_record(rmid, info, xid, prev, main);
        let start = at;
        page[start as usize..start as usize + record.len()].copy_from_slice(&record);
        prev = base + start;
        at = (start + record.len() as u64).div_ceil(8) * 8;
        (start, start + record.len() as u64)
    };
    let micros = |t: DateTime<Utc>| (t.timestamp_micros() - POSTGRES_EPOCH_UNIX_MICROS).to_le_bytes();
    let (_, commit_end) = append(&mut page, 1, 0x00, xid(segno), &micros(shape.commit_time(segno)));
    let mut restore_point_end = None;
    if kind == Kind::Full {
        if let Some(i) = shape.restore_point_in(segno) {
            let mut main = micros(shape.commit_time(segno) + Duration::seconds(1)).to_vec();
            let mut name = [0u8; 64];
            let text = restore_point_name(i);
            name[..text.len()].copy_from_slice(text.as_bytes());
            main.extend_from_slice(&name);
            let (_, end) = append(&mut page, 0, 0x70, 0, &main); // XLOG_RESTORE_POINT
            restore_point_end = Some(end);
        }
        append(&mut page, 0, 0x40, 0, &[]); // XLOG_SWITCH
    }
    Layout {
        page,
        commit_end,
        restore_point_end,
    }
}

/// The offset of the last record (the switch) of full segment `segno`.
fn last_record_offset(shape: &Shape, segno: u64) -> u64 {
    let commit = FIRST_RECORD + 40; // 34 bytes, aligned
    match shape.restore_point_in(segno) {
        Some(_) => commit + 104, // 24 + 2 + 72 bytes, aligned
        None => commit,
    }
}

fn xid(segno: u64) -> u32 {
    1000 + segno as u32
}

fn restore_point_name(i: usize) -> String {
    format!("before_release_{:03}", i + 1)
}

/// A WAL record with only main data (`XLR_BLOCK_ID_DATA_SHORT`), its CRC-32C computed.
fn wal_record(rmid: u8, info: u8, xid: u32, prev: u64, main: &[u8]) -> Vec<u8> {
    let mut record = vec![0u8; 24];
    if !main.is_empty() {
        record.push(255);
        record.push(u8::try_from(main.len()).expect("short main data"));
        record.extend_from_slice(main);
    }
    let total = record.len() as u32;
    record[0..4].copy_from_slice(&total.to_le_bytes());
    record[4..8].copy_from_slice(&xid.to_le_bytes());
    record[8..16].copy_from_slice(&prev.to_le_bytes());
    record[16] = info;
    record[17] = rmid;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&record[24..]), &record[..20]);
    record[20..24].copy_from_slice(&crc.to_le_bytes());
    record
}

/// Stored objects of whole segments from their first page: header, the page's zstd frame, and
/// one precompressed frame of the zeros after it.
struct SegmentCodec {
    zeros_frame: Vec<u8>,
    zeros_crc: u32,
}

impl SegmentCodec {
    fn new() -> SegmentCodec {
        let zeros = vec![0u8; SEGMENT_BYTES as usize - BLOCK];
        SegmentCodec {
            zeros_frame: zstd::bulk::compress(&zeros, 3).expect("compresses"),
            zeros_crc: crc32fast::hash(&zeros),
        }
    }

    fn object(&self, page: &[u8]) -> Vec<u8> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(page);
        crc.combine(&crc32fast::Hasher::new_with_initial_len(
            self.zeros_crc,
            (SEGMENT_BYTES as usize - BLOCK) as u64,
        ));
        let header = ObjectHeader {
            compression: Compression::Zstd,
            raw_len: u64::from(SEGMENT_BYTES),
            raw_crc: crc.finalize(),
        };
        let mut object = header.to_bytes().to_vec();
        object.extend_from_slice(&zstd::bulk::compress(page, 3).expect("compresses"));
        object.extend_from_slice(&self.zeros_frame);
        object
    }
}

/// Writes objects and sets the archive time of WAL files (in a local repository).
struct Writer<'a> {
    /// The repository's directory; `None` on S3, where an object's time is when it was written.
    root: Option<&'a Path>,
    repo: &'a Repo,
}

impl Writer<'_> {
    fn put(&self, key: &str, bytes: &[u8]) {
        self.repo
            .storage()
            .put_if_absent_deferred(key, bytes)
            .unwrap_or_else(|e| panic!("writing {key}: {e}"));
    }

    fn put_wal(&self, name: &str, object: &[u8], archived_at: DateTime<Utc>) {
        let name = WalFileName::parse(name).expect("a WAL file name");
        let key = self.repo.wal_key(&name).expect("the key of a WAL file");
        self.put(&key, object);
        let Some(root) = self.root else { return };
        let when = rustix::fs::Timespec {
            tv_sec: archived_at.timestamp(),
            tv_nsec: i64::from(archived_at.timestamp_subsec_nanos()),
        };
        let times = rustix::fs::Timestamps {
            last_access: when,
            last_modification: when,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            root.join(&key),
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap_or_else(|e| panic!("setting the time of {key}: {e}"));
    }
}

/// A small deterministic random number generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One backup to write.
struct PlannedBackup {
    tier: Tier,
    start_time: DateTime<Utc>,
}

/// Backups on the hour: weekly on Sunday at midnight, daily at the other midnights (all of the
/// span, oldest dropped first when there are more than `count`), and hourly for the newest
/// hours, as many as make up `count`. Oldest first.
fn plan_backups(shape: &Shape, end: DateTime<Utc>, count: usize) -> Vec<PlannedBackup> {
    let first = (shape.start + Duration::hours(2))
        .duration_trunc(Duration::hours(1))
        .expect("an hour divides time");
    let last = end - Duration::hours(1);
    let hours: Vec<DateTime<Utc>> = (0..)
        .map(|h| first + Duration::hours(h))
        .take_while(|t| *t <= last)
        .collect();
    let midnights = hours.iter().filter(|t| t.hour() == 0).count();
    let mut hourly_quota = count.saturating_sub(midnights);
    let mut chosen = Vec::new();
    for t in hours.iter().rev() {
        if chosen.len() == count {
            break;
        }
        let tier = match (t.hour(), t.weekday()) {
            (0, Weekday::Sun) => Tier::Weekly,
            (0, _) => Tier::Daily,
            _ if hourly_quota > 0 => {
                hourly_quota -= 1;
                Tier::Hourly
            }
            _ => continue,
        };
        chosen.push(PlannedBackup { tier, start_time: *t });
    }
    chosen.reverse();
    chosen
}

/// The directories of a data directory.
const DIRECTORIES: [&str; 27] = [
    "base",
    "base/1",
    "base/4",
    "base/5",
    "base/16384",
    "global",
    "pg_commit_ts",
    "pg_dynshmem",
    "pg_logical",
    "pg_logical/mappings",
    "pg_logical/snapshots",
    "pg_multixact",
    "pg_multixact/members",
    "pg_multixact/offsets",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat",
    "pg_stat_tmp",
    "pg_subtrans",
    "pg_tblspc",
    "pg_twophase",
    "pg_wal",
    "pg_wal/archive_status",
    "pg_wal/summaries",
    "pg_xact",
];

/// The files of a data directory of `count` files: configuration, three databases' catalogs,
/// the user database's relations (one in 40 larger than a part, up to 1 GiB), pg_control last.
fn data_files(rng: &mut Rng, count: usize, stop_time: DateTime<Utc>) -> Vec<FileEntry> {
    let mut files = Vec::with_capacity(count);
    for (path, size) in [
        ("PG_VERSION", 3),
        ("pg_hba.conf", 5_711),
        ("pg_ident.conf", 2_640),
        ("postgresql.auto.conf", 88),
        ("postgresql.conf", 29_740),
        ("pg_xact/0000", 262_144),
        ("pg_multixact/members/0000", 8_192),
        ("pg_multixact/offsets/0000", 8_192),
        ("pg_logical/replorigin_checkpoint", 8),
    ] {
        files.push(file_entry(rng, path.to_string(), size, stop_time));
    }
    let fixed = files.len() + 1;
    let catalogs = (count.saturating_sub(fixed) / 3).min(3 * 300 + 60);
    for i in 0..catalogs {
        let (dir, oid) = match i {
            i if i < 60 => ("global", 1_200 + i),
            i => (["base/1", "base/4", "base/5"][(i - 60) % 3], 1_200 + (i - 60) / 3),
        };
        let size = 8_192 * (1 + rng.below(64));
        files.push(file_entry(rng, format!("{dir}/{oid}"), size, stop_time));
    }
    let mut relfilenode = 16_385;
    while files.len() + 1 < count {
        let size = if rng.below(40) == 0 {
            PART_SIZE * (2 + rng.below(63))
        } else {
            8_192 * (1 + rng.below(256))
        };
        let forks = [("", size), ("_fsm", 24_576), ("_vm", 8_192)];
        for (fork, size) in forks {
            if files.len() + 1 < count {
                files.push(file_entry(
                    rng,
                    format!("base/16384/{relfilenode}{fork}"),
                    size,
                    stop_time,
                ));
            }
        }
        relfilenode += 1;
    }
    files.push(file_entry(rng, "global/pg_control".to_string(), 8_192, stop_time));
    files
}

/// A copied file of `size` bytes, in parts when it is larger than one.
fn file_entry(rng: &mut Rng, path: String, size: u64, stop_time: DateTime<Utc>) -> FileEntry {
    let stored = |rng: &mut Rng, size: u64| 24 + size / 3 + rng.below(size / 10 + 1);
    let parts: Vec<Part> = if size > PART_SIZE {
        (0..size.div_ceil(PART_SIZE))
            .map(|i| {
                let part_size = PART_SIZE.min(size - i * PART_SIZE);
                Part {
                    offset: i * PART_SIZE,
                    size: part_size,
                    crc32: rng.next() as u32,
                    stored_size: stored(rng, part_size),
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let (crc32, stored_size) = if parts.is_empty() {
        (rng.next() as u32, stored(rng, size))
    } else {
        (parts_crc(&parts), parts.iter().map(|p| p.stored_size).sum())
    };
    FileEntry {
        path,
        size,
        mode: 0o600,
        mtime: stop_time.timestamp() - rng.below(30 * 86_400) as i64,
        crc32,
        stored_size,
        parts,
        groups: vec![],
        stat: None,
    }
}

fn write_backup(
    writer: &Writer,
    shape: &Shape,
    planned: &PlannedBackup,
    index: usize,
    files_per_backup: usize,
) -> Manifest {
    let size = shape.size;
    let mut start_segno = shape.segment_at(planned.start_time);
    let duration_segments = ((BACKUP_SECONDS * 1_000_000 + shape.interval - 1) / shape.interval) as u64;
    let mut stop_segno = (start_segno + duration_segments).min(shape.segments);
    if shape.timeline(start_segno) != shape.timeline(stop_segno) {
        // A backup is taken on one timeline: this one starts after the promotion.
        start_segno = shape.switches[shape.timeline(stop_segno) as usize - 2];
        stop_segno = start_segno + duration_segments;
    }
    let timeline = shape.timeline(start_segno);
    let start_lsn = Lsn(size.segment_start(start_segno).0 + FIRST_RECORD);
    let stop_lsn = Lsn(size.segment_start(stop_segno).0 + layout(shape, stop_segno, Kind::Full).commit_end);
    let start_time = planned.start_time.max(shape.time(start_segno));
    let stop_time = shape.commit_time(stop_segno) + Duration::seconds(1);
    let id = format!("main_{}_{}", planned.tier, start_time.format("%Y%m%d_%H%M%S"));
    let mut rng = Rng(index as u64 * 7919 + 17);
    let files = data_files(&mut rng, files_per_backup, stop_time);
    let manifest = Manifest {
        format_version: MANIFEST_VERSION,
        id: id.clone(),
        tier: planned.tier,
        start_time,
        stop_time,
        start_lsn,
        stop_lsn,
        timeline,
        system_identifier: SYSTEM_IDENTIFIER,
        pg_version: PG_VERSION,
        wal_segment_size: SEGMENT_BYTES,
        first_wal: shape.name(timeline, start_segno),
        last_wal: shape.name(timeline, size.segment_before(stop_lsn)),
        next_xid: Some(u64::from(xid(stop_segno)) + 1),
        duration_seconds: (stop_time - start_time).num_milliseconds() as f64 / 1000.0,
        original_bytes: files.iter().map(|f| f.size).sum(),
        stored_bytes: files.iter().map(|f| f.stored_size).sum(),
        tablespaces: Vec::new(),
        directories: DIRECTORIES
            .iter()
            .map(|path| DirEntry {
                path: path.to_string(),
                mode: 0o700,
            })
            .collect(),
        files,
        configuration: None,
        page_checksums: None,
        pgdata: None,
    };
    let label = format!(
        "START WAL LOCATION: {start_lsn} (file {first})\nCHECKPOINT LOCATION: {start_lsn}\nBACKUP METHOD: streamed\n\
         BACKUP FROM: primary\nSTART TIME: {start} UTC\nLABEL: pitr {id}\nSTART TIMELINE: {timeline}\n",
        first = manifest.first_wal,
        start = start_time.format("%Y-%m-%d %H:%M:%S"),
    );
    let history = format!(
        "{label}STOP WAL LOCATION: {stop_lsn} (file {last})\nSTOP TIME: {stop} UTC\nSTOP TIMELINE: {timeline}\n",
        last = manifest.last_wal,
        stop = stop_time.format("%Y-%m-%d %H:%M:%S"),
    );
    let codec = codec::Codec::default();
    writer.put_wal(
        &format!("{}.{:08X}.backup", manifest.first_wal, FIRST_RECORD),
        &codec.encode(history.as_bytes()),
        stop_time + Duration::seconds(1),
    );
    let dir = backup_dir(planned.tier.name(), &id);
    writer.put(&format!("{dir}backup_label"), &codec.encode(label.as_bytes()));
    let bytes = manifest.to_bytes();
    writer.put(&format!("{dir}{MANIFEST_COPY}"), &bytes);
    writer.put(&format!("{dir}{MANIFEST}"), &bytes);
    manifest
}

fn main() {
    let options = options();
    let started = Instant::now();
    let root = match &options.location {
        Location::Local(dir) => {
            match std::fs::read_dir(dir).map(|entries| entries.count()) {
                Ok(0) => {}
                Ok(_) => {
                    eprintln!("{} is not empty", dir.display());
                    std::process::exit(2)
                }
                Err(_) => std::fs::create_dir_all(dir).expect("creating the repository directory"),
            }
            Some(dir.canonicalize().expect("the directory exists"))
        }
        Location::S3(_) => None,
    };
    let repo = match &root {
        Some(root) => Repo::open_local(root),
        None => Repo::open(&options.location),
    }
    .expect("opening the repository");
    let shape = Shape::new(&options);
    repo.claim(Cluster {
        pg_version: PG_VERSION,
        system_identifier: SYSTEM_IDENTIFIER,
        wal_segment_size: SEGMENT_BYTES,
    })
    .expect("writing repo.json");
    let writer = Writer {
        root: root.as_deref(),
        repo: &repo,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.jobs)
        .build()
        .expect("threads");
    let codec = SegmentCodec::new();
    let archived_at = |segno: u64| shape.time(segno + 1) + Duration::seconds(1);

    // Timeline history files, and the .partial segments the old timelines left.
    let mut history = String::new();
    for timeline in [2, 3] {
        let parent = timeline - 1;
        let switchpoint = shape.switchpoint(timeline);
        history.push_str(&format!("{parent}\t{switchpoint}\tno recovery target specified\n"));
        let segno = shape.switches[timeline as usize - 2];
        writer.put_wal(
            &format!("{timeline:08X}.history"),
            &codec::Codec::default().encode(history.as_bytes()),
            shape.commit_time(segno),
        );
        let partial = layout(&shape, segno, Kind::Partial);
        // The old timeline's page header names it, not the new one.
        let mut page = partial.page;
        page[4..8].copy_from_slice(&parent.to_le_bytes());
        writer.put_wal(
            &format!("{}.partial", shape.name(parent, segno)),
            &codec.object(&page),
            shape.commit_time(segno),
        );
    }

    let done = AtomicU64::new(0);
    let step = (shape.segments / 10).max(1);
    pool.install(|| {
        (1..=shape.segments).into_par_iter().for_each(|segno| {
            let layout = layout(&shape, segno, Kind::Full);
            writer.put_wal(
                &shape.name(shape.timeline(segno), segno),
                &codec.object(&layout.page),
                archived_at(segno),
            );
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(step) {
                eprintln!(
                    "{n} of {} segments ({:.0} s)",
                    shape.segments,
                    started.elapsed().as_secs_f64()
                );
            }
        })
    });

    let planned = plan_backups(&shape, options.end, options.backups);
    let manifests: Vec<Manifest> = pool.install(|| {
        planned
            .par_iter()
            .enumerate()
            .map(|(i, backup)| write_backup(&writer, &shape, backup, i, options.files_per_backup))
            .collect()
    });
    eprintln!("{} backups ({:.0} s)", manifests.len(), started.elapsed().as_secs_f64());

    for (i, segno) in shape.restore_points.iter().enumerate() {
        let segno = *segno;
        let layout = layout(&shape, segno, Kind::Full);
        let time = shape.commit_time(segno) + Duration::seconds(1);
        let lsn = Lsn(shape.size.segment_start(segno).0 + layout.restore_point_end.expect("a restore point"));
        let point = RestorePoint {
            name: restore_point_name(i),
            lsn,
            time,
            timeline: shape.timeline(segno),
            wal_file: shape.name(shape.timeline(segno), segno),
            generation: 1,
        };
        // As `pitr restore-point` names its record.
        let key = format!("restore_points/{}_{:016X}.json", time.format("%Y%m%dT%H%M%S%6f"), lsn.0);
        writer.put(&key, &json::to_vec(&point));
    }

    check(&repo, &shape, &manifests);
    let tiers = |tier| manifests.iter().filter(|m| m.tier == tier).count();
    let middle = shape.start + (options.end - shape.start) / 2 + Duration::minutes(17);
    println!(
        "wrote {} in {:.0} s: {} segments on timelines 1-3 from {} to {} (history files, 2 .partial), {} backups \
         ({} hourly, {} daily, {} weekly, {} files each, manifests of about {} KiB), {} restore points",
        options.location,
        started.elapsed().as_secs_f64(),
        shape.segments,
        shape.name(1, 1),
        shape.name(shape.timeline(shape.segments), shape.segments),
        manifests.len(),
        tiers(Tier::Hourly),
        tiers(Tier::Daily),
        tiers(Tier::Weekly),
        options.files_per_backup,
        manifests.first().map_or(0, |m| m.to_bytes().len() >> 10),
        shape.restore_points.len(),
    );
    println!(
        "a time in the middle: {}; a restore point: {}",
        middle.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        restore_point_name(shape.restore_points.len() / 2)
    );
}

/// Reads back a few of the written objects with the library's readers.
fn check(repo: &Repo, shape: &Shape, manifests: &[Manifest]) {
    let mut segnos = vec![1, shape.segments, shape.switches[0], shape.switches[1]];
    segnos.extend(shape.restore_points.first());
    for segno in segnos {
        let name = WalFileName::parse(&shape.name(shape.timeline(segno), segno)).expect("a name");
        let object = repo.get_wal(&name).expect("readable").expect("written");
        let raw = codec::decode(&object, &name.to_string()).expect("a valid object");
        let records: Vec<_> = SegmentRecords::new(name.segment_name().expect("a segment"), &[&raw])
            .expect("a valid segment")
            .collect::<Result<_, _>>()
            .expect("valid records");
        let commit = RecordKind::Commit {
            time: shape
                .commit_time(segno)
                .duration_trunc(Duration::microseconds(1))
                .expect("µs"),
            xid: xid(segno),
            details: Default::default(),
        };
        assert_eq!(records[0].kind, commit, "segment {name}");
        assert_eq!(
            records.last().map(|r| &r.kind),
            Some(&RecordKind::Switch),
            "segment {name}"
        );
    }
    let first = &manifests[0];
    let key = format!("{}{MANIFEST}", backup_dir(first.tier.name(), &first.id));
    let bytes = repo.storage().get(&key).expect("readable").expect("written");
    assert_eq!(&Manifest::from_bytes(&bytes, &key).expect("a valid manifest"), first);
    let points = pitr::restore_point::catalog(repo).expect("readable");
    assert_eq!(points.len(), shape.restore_points.len());
}
