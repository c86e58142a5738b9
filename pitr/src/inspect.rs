//! `pitr wal events`: what happened in the archived WAL, per transaction, to find the oops (the
//! `DROP TABLE`, the `TRUNCATE`, the big `DELETE`) and the moment just before it.
//!
//! This module owns the scan and the aggregation; the formats are [`crate::wal::records`]'s.
//! [`events`] reads the archived segments of one timeline path of the repository's current
//! generation (and at the end the `.partial` file, or the WAL receiver's newest snapshot, of the
//! segment being received), decompresses and decodes them on `jobs` threads, a window of
//! segments at a time, and folds the records, in LSN order, into [`Event`]s:
//!
//! - one [`TransactionEvent`] per top-level transaction that ends (commits or aborts): the
//!   records of its subtransactions are folded in through the commit's subtransaction list,
//!   those of a subtransaction rolled back (its own abort record) are dropped; per relation the
//!   heap rows inserted, updated and deleted (a multi-insert counts its `ntuples`), the storage
//!   it created and dropped, and databases created and dropped;
//! - restore points, checkpoints and timeline switches (end of recovery, or a checkpoint whose
//!   previous timeline differs).
//!
//! **What a dropped relation file means.** With `wal_level = replica` a `DROP TABLE`, a
//! `TRUNCATE` and a table rewrite (`ALTER TABLE ... TYPE`, `VACUUM FULL`, `CLUSTER`) all end in a
//! commit that drops the old relfilenodes. What tells them apart (checked on PostgreSQL 13 to 18
//! by `tests/wal_events.rs` and the version matrix):
//!
//! - the transaction created no storage (`XLOG_SMGR_CREATE` with its xid) → **drop**;
//! - it created storage and wrote heap data into it (heap or multi-insert records, or full-page
//!   images of pages without special space, i.e. heap pages, as `VACUUM FULL` and `CLUSTER`
//!   write them) → **rewrite**;
//! - it created storage and wrote no heap data into it (at most the metapages of the new, empty
//!   indexes, which have special space) → **truncate**.
//!
//! A transaction that creates storage and drops none **creates** relations. Limits: a
//! transaction that both drops one table and creates another reads as a truncate or rewrite;
//! with `wal_compression` the images are not looked into, so a `VACUUM FULL` that writes only
//! images reads as a truncate; `TRUNCATE` and rewrites of an empty table read alike.
//!
//! Rows of catalog relations (schemas `pg_catalog`, `pg_toast`, `information_schema`, or without
//! a name, relfilenodes below 16384) are kept per relation but not counted in a transaction's
//! rows. Names come from [`Names`] (the maps recorded in the repository), valid at the event's
//! LSN; a relation no map knows is shown as its storage `spc/db/relfilenode`.
//!
//! Where a scan starts: at `--from-lsn`'s segment; for `--from` (a time), one segment before the
//! first whose first commit (or checkpoint) is at or after it, found by a binary search that
//! decodes a few segments; else at the archive's start. It stops after `--to-lsn`'s segment, or
//! once a commit more than a second after `--to` is folded. Changes a transaction made before the
//! first segment scanned are not seen: a range should start before the transaction of interest.
//! Damage in an archived segment (a CRC mismatch) is an error naming the segment and the record's
//! LSN; in the `.partial` file or the snapshot at the end, the first invalid record is where the
//! WAL ends.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::codec;
use crate::error::{Error, Result};
use crate::names::{Names, NamesMap, RelationName};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::timeline::TimelinePath;
use crate::wal::records::{End, PageImage, Record, RecordKind, RowChange, SegmentRecords, TransactionDetails};
use crate::wal::{parse_history, Lsn, RelFileLocator, Segment, SegmentName, SegmentSize, TimelineId, WalFileName};

/// `FirstNormalObjectId`: OIDs (and relfilenodes) below it were assigned by initdb.
const FIRST_NORMAL_OBJECT_ID: u32 = 16384;
/// `MAIN_FORKNUM`.
const MAIN_FORK: u8 = 0;
/// The schemas of the catalog.
const SYSTEM_SCHEMAS: [&str; 3] = ["pg_catalog", "pg_toast", "information_schema"];

/// What to scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Events at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Events at or before this time.
    pub to: Option<DateTime<Utc>>,
    /// Records at or after this LSN (the scan starts in its segment).
    pub from_lsn: Option<Lsn>,
    /// Records before this LSN (the scan ends in its segment).
    pub to_lsn: Option<Lsn>,
    /// The timeline whose path is read (default: the newest in the archive).
    pub timeline: Option<TimelineId>,
    /// Segments decompressed and decoded at once.
    pub jobs: usize,
}

/// Which events to keep.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Transactions touching one of these relations: `schema.name`, `name`, `spc/db/rel` or a
    /// relfilenode number.
    pub tables: Vec<String>,
    /// Transactions in one of these databases (name or OID).
    pub databases: Vec<String>,
    /// Events of one of these kinds (all when empty).
    pub kinds: BTreeSet<EventKind>,
    /// Transactions that changed at least this many rows of user relations.
    pub min_rows: u64,
}

/// The kinds of event, as `--kind` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Rows inserted.
    Insert,
    /// Rows updated.
    Update,
    /// Rows deleted.
    Delete,
    /// Relations dropped.
    Drop,
    /// Relations truncated.
    Truncate,
    /// Relations rewritten (`ALTER TABLE` rewrite, `VACUUM FULL`, `CLUSTER`).
    Rewrite,
    /// Relations created.
    Create,
    /// `CREATE DATABASE`.
    CreateDatabase,
    /// `DROP DATABASE`.
    DropDatabase,
    /// A transaction that aborted.
    Abort,
    /// A restore point.
    RestorePoint,
    /// A checkpoint.
    Checkpoint,
    /// A timeline switch (a promotion).
    TimelineSwitch,
}

impl EventKind {
    /// Every kind, as `--kind` spells it.
    pub const ALL: [EventKind; 13] = [
        EventKind::Insert,
        EventKind::Update,
        EventKind::Delete,
        EventKind::Drop,
        EventKind::Truncate,
        EventKind::Rewrite,
        EventKind::Create,
        EventKind::CreateDatabase,
        EventKind::DropDatabase,
        EventKind::Abort,
        EventKind::RestorePoint,
        EventKind::Checkpoint,
        EventKind::TimelineSwitch,
    ];

    /// Its name on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Insert => "insert",
            EventKind::Update => "update",
            EventKind::Delete => "delete",
            EventKind::Drop => "drop",
            EventKind::Truncate => "truncate",
            EventKind::Rewrite => "rewrite",
            EventKind::Create => "create",
            EventKind::CreateDatabase => "create-database",
            EventKind::DropDatabase => "drop-database",
            EventKind::Abort => "abort",
            EventKind::RestorePoint => "restore-point",
            EventKind::Checkpoint => "checkpoint",
            EventKind::TimelineSwitch => "timeline-switch",
        }
    }
}

impl FromStr for EventKind {
    type Err = Error;

    fn from_str(text: &str) -> Result<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == text).ok_or_else(|| {
            let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
            Error::InvalidInput(format!("unknown event kind '{text}': use {}", names.join(", ")))
        })
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A transaction ended.
    Transaction(TransactionEvent),
    /// `pg_create_restore_point`.
    RestorePoint {
        /// Where its record starts.
        lsn: Lsn,
        /// Its time.
        time: DateTime<Utc>,
        /// Its name.
        name: String,
    },
    /// A checkpoint.
    Checkpoint {
        /// Where its record starts.
        lsn: Lsn,
        /// When it started (whole seconds).
        time: DateTime<Utc>,
        /// A shutdown checkpoint.
        shutdown: bool,
        /// Where replay from it starts.
        redo: Lsn,
    },
    /// A promotion: the WAL goes on on a new timeline.
    TimelineSwitch {
        /// Where its record starts.
        lsn: Lsn,
        /// When.
        time: DateTime<Utc>,
        /// The new timeline.
        timeline: TimelineId,
        /// The one before.
        previous: TimelineId,
    },
}

impl Event {
    /// Where its record (the commit, for a transaction) starts.
    pub fn lsn(&self) -> Lsn {
        match self {
            Event::Transaction(t) => t.lsn,
            Event::RestorePoint { lsn, .. } | Event::Checkpoint { lsn, .. } | Event::TimelineSwitch { lsn, .. } => *lsn,
        }
    }

    /// Its time.
    pub fn time(&self) -> DateTime<Utc> {
        match self {
            Event::Transaction(t) => t.time,
            Event::RestorePoint { time, .. } | Event::Checkpoint { time, .. } | Event::TimelineSwitch { time, .. } => {
                *time
            }
        }
    }

    /// Its kinds (a transaction may have several).
    pub fn kinds(&self) -> Vec<EventKind> {
        match self {
            Event::Transaction(t) => t.kinds.clone(),
            Event::RestorePoint { .. } => vec![EventKind::RestorePoint],
            Event::Checkpoint { .. } => vec![EventKind::Checkpoint],
            Event::TimelineSwitch { .. } => vec![EventKind::TimelineSwitch],
        }
    }
}

/// What one top-level transaction did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransactionEvent {
    /// The transaction id (top level; `COMMIT PREPARED`'s prepared transaction).
    pub xid: u32,
    /// Its subtransactions that committed with it.
    pub subxacts: Vec<u32>,
    /// Committed (else aborted).
    pub committed: bool,
    /// The commit (or abort) time.
    pub time: DateTime<Utc>,
    /// Where the commit (or abort) record starts: `recover --target-lsn` with `--exclusive`
    /// stops just before it.
    pub lsn: Lsn,
    /// Where it ends.
    pub end_lsn: Lsn,
    /// Its database's OID, when known (from the commit, else from the relations it touched).
    pub database_oid: Option<u32>,
    /// Its database's name, when a map of names knows it.
    pub database: Option<String>,
    /// What it was.
    pub kinds: Vec<EventKind>,
    /// Rows it changed in user relations.
    pub rows: u64,
    /// What it did, by relation.
    pub relations: Vec<RelationChange>,
    /// Databases it created.
    pub databases_created: Vec<DatabaseChange>,
    /// Databases it dropped.
    pub databases_dropped: Vec<DatabaseChange>,
    /// One line for people: "DROP TABLE public.products; 0 rows".
    pub summary: String,
}

/// What a transaction did to one relation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelationChange {
    /// Its storage.
    pub storage: RelFileLocator,
    /// `schema.name`, when a map of names knows it.
    pub name: Option<String>,
    /// `pg_class.relkind`, when known.
    pub relkind: Option<char>,
    /// A catalog relation (its rows do not count in the transaction's).
    pub system: bool,
    /// Rows inserted.
    pub inserted: u64,
    /// Rows updated.
    pub updated: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// What happened to its storage: drop, truncate, rewrite or create.
    pub storage_change: Option<EventKind>,
}

/// A database a transaction created or dropped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatabaseChange {
    /// Its OID.
    pub oid: u32,
    /// Its name, when a map of names knows it.
    pub name: Option<String>,
}

/// What a scan found, and what it read.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The events kept, in LSN order.
    pub events: Vec<Event>,
    /// The timeline path's target.
    pub timeline: TimelineId,
    /// The first record read.
    pub first_lsn: Option<Lsn>,
    /// The end of the last record read.
    pub end_lsn: Option<Lsn>,
    /// Segments read (archived, plus the partial one at the end).
    pub segments: u64,
    /// Records decoded.
    pub records: u64,
    /// No map of names was recorded: relations show as their storage.
    pub names_missing: bool,
}

/// Scans the archived WAL of `repo`'s current generation and returns the events `filter` keeps.
pub fn events(repo: &Repo, options: &ScanOptions, filter: &Filter, progress: &dyn Progress) -> Result<Report> {
    let repo = repo.pin()?;
    let maps = repo.names_maps()?;
    let matcher = Matcher::new(filter, &maps)?;
    let names = Names::from_maps(maps);
    scan(&repo, options, &names, progress, |event| {
        matcher.keeps(event, options).then_some(Found::Keep)
    })
}

/// Which transaction [`find_transaction`] looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionKey {
    /// Its (top-level) transaction id.
    Xid(u32),
    /// Where its commit or abort record starts.
    CommitLsn(Lsn),
}

/// The event of one transaction in the archived WAL of `repo`'s generation (the timeline path
/// and range of `options`), by transaction id or by the LSN of its commit, or `None` when it
/// does not end there: what `recover --before` tells the operator it undoes. Reads from
/// `options.from_lsn` (the recovery's backup start: what the copy replays) to the transaction's
/// end; the first transaction of that id is the one found (ids wrap around after 2^32).
pub fn find_transaction(
    repo: &Repo,
    names: &Names,
    key: TransactionKey,
    options: &ScanOptions,
) -> Result<Option<TransactionEvent>> {
    let repo = repo.pin()?;
    let report = scan(&repo, options, names, &crate::progress::Silent, |event| match event {
        Event::Transaction(t) if key == TransactionKey::Xid(t.xid) || key == TransactionKey::CommitLsn(t.lsn) => {
            Some(Found::KeepAndStop)
        }
        _ => None,
    })?;
    Ok(report.events.into_iter().find_map(|e| match e {
        Event::Transaction(t) => Some(t),
        _ => None,
    }))
}

/// What a scan does with an event.
enum Found {
    Keep,
    KeepAndStop,
}

/// The filter, checked against the maps of names.
struct Matcher<'f> {
    filter: &'f Filter,
}

impl<'f> Matcher<'f> {
    fn new(filter: &'f Filter, maps: &[NamesMap]) -> Result<Matcher<'f>> {
        for table in &filter.tables {
            let known = maps
                .iter()
                .flat_map(|m| &m.relations)
                .any(|r| table_matches(table, r.storage, Some(&r.name)));
            if !known && parse_storage(table).is_none() {
                return Err(Error::InvalidInput(format!(
                    "no map of names knows a relation '{table}' ({} maps recorded): check the name, or give its \
                     storage as tablespace/database/relfilenode (e.g. 1663/16384/16390) or its relfilenode",
                    maps.len()
                )));
            }
        }
        for database in &filter.databases {
            let known = maps.iter().flat_map(|m| &m.databases).any(|d| &d.name == database);
            if !known && database.parse::<u32>().is_err() {
                return Err(Error::InvalidInput(format!(
                    "no map of names knows a database '{database}' ({} maps recorded): check the name, or give \
                     its OID",
                    maps.len()
                )));
            }
        }
        Ok(Matcher { filter })
    }

    fn keeps(&self, event: &Event, options: &ScanOptions) -> bool {
        let time = event.time();
        if options.from.is_some_and(|from| time < from) || options.to.is_some_and(|to| time > to) {
            return false;
        }
        let lsn = event.lsn();
        if options.from_lsn.is_some_and(|from| lsn < from) || options.to_lsn.is_some_and(|to| lsn >= to) {
            return false;
        }
        let kinds = event.kinds();
        if !self.filter.kinds.is_empty() && !kinds.iter().any(|k| self.filter.kinds.contains(k)) {
            return false;
        }
        let Event::Transaction(t) = event else {
            return self.filter.tables.is_empty() && self.filter.databases.is_empty() && self.filter.min_rows == 0;
        };
        if t.rows < self.filter.min_rows {
            return false;
        }
        let in_database = |wanted: &String| {
            t.database.as_ref() == Some(wanted)
                || t.database_oid.is_some_and(|oid| wanted.parse() == Ok(oid))
                || t.databases_dropped
                    .iter()
                    .chain(&t.databases_created)
                    .any(|d| d.name.as_ref() == Some(wanted) || wanted.parse() == Ok(d.oid))
        };
        if !self.filter.databases.is_empty() && !self.filter.databases.iter().any(in_database) {
            return false;
        }
        self.filter.tables.is_empty()
            || t.relations.iter().any(|r| {
                self.filter.tables.iter().any(|table| {
                    let name = r.name.as_deref().and_then(|n| n.split_once('.'));
                    let relation = name.map(|(schema, name)| RelationName {
                        schema: schema.to_string(),
                        name: name.to_string(),
                        kind: r.relkind.unwrap_or('?'),
                    });
                    table_matches(table, r.storage, relation.as_ref())
                })
            })
    }
}

/// Whether `--table` `wanted` names this relation: `schema.name`, `name`, `spc/db/rel` or the
/// relfilenode.
fn table_matches(wanted: &str, storage: RelFileLocator, name: Option<&RelationName>) -> bool {
    if let Some(given) = parse_storage(wanted) {
        return given == StorageGiven::Full(storage) || given == StorageGiven::Relfilenode(storage.rel);
    }
    name.is_some_and(|n| match wanted.split_once('.') {
        Some((schema, table)) => n.schema == schema && n.name == table,
        None => n.name == wanted,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum StorageGiven {
    Full(RelFileLocator),
    Relfilenode(u32),
}

fn parse_storage(text: &str) -> Option<StorageGiven> {
    if let Ok(rel) = text.parse() {
        return Some(StorageGiven::Relfilenode(rel));
    }
    let mut parts = text.split('/').map(str::parse::<u32>);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Ok(spc)), Some(Ok(db)), Some(Ok(rel)), None) => Some(StorageGiven::Full(RelFileLocator { spc, db, rel })),
        _ => None,
    }
}

/// One archived (or partial) segment the scan reads.
#[derive(Debug, Clone)]
struct Source {
    segment: Segment,
    /// `None`: the archived segment; `Some(bytes)`: the stored object of the segment being
    /// received (its `.partial` file or a stream snapshot), whose end is the WAL's end.
    tail: Option<Arc<Vec<u8>>>,
}

/// The segments a scan reads, in order.
struct Plan {
    size: SegmentSize,
    timeline: TimelineId,
    sources: Vec<Source>,
}

/// Finds the segments of the timeline path the options ask for.
fn plan(repo: &Repo, options: &ScanOptions, progress: &dyn Progress) -> Result<Plan> {
    let generation = repo.generation()?.ok_or_else(|| {
        Error::Refused(format!(
            "the repository at {} holds no WAL yet (nothing was archived into it)",
            repo.location()
        ))
    })?;
    let size = generation.segment_size();
    let files = repo.list_wal()?;
    let mut archived: BTreeSet<(u64, TimelineId)> = BTreeSet::new();
    let mut partial: BTreeSet<(TimelineId, u64)> = BTreeSet::new();
    let mut newest = None;
    for file in &files {
        let segment = |name: &SegmentName| name.segment(size);
        match file {
            WalFileName::Segment(name) => {
                if let Some(s) = segment(name) {
                    archived.insert((s.segno, s.timeline));
                }
            }
            WalFileName::Partial(name) => {
                if let Some(s) = segment(name) {
                    partial.insert((s.timeline, s.segno));
                }
            }
            WalFileName::History(_) | WalFileName::Backup(..) => {}
        }
        newest = newest.max(Some(file.timeline()));
    }
    let newest =
        newest.ok_or_else(|| Error::Refused(format!("the repository at {} holds no archived WAL", repo.location())))?;
    let timeline = options.timeline.unwrap_or(newest);
    let history = if timeline == 1 {
        Vec::new()
    } else {
        let name = WalFileName::History(timeline);
        match repo.get_wal(&name)? {
            Some(object) => {
                let what = repo.describe_wal(&name);
                parse_history(&codec::decode(&object, &what)?).map_err(|reason| Error::Corrupt { what, reason })?
            }
            None => Vec::new(),
        }
    };
    let path = TimelinePath::new(timeline, &history);
    let first = options.from_lsn.map(|lsn| size.segment_of(lsn));
    let last = options.to_lsn.map(|lsn| size.segment_before(lsn));
    let in_range = |segno: u64| first.is_none_or(|f| segno >= f) && last.is_none_or(|l| segno <= l);
    let mut on_path: Vec<Segment> = archived
        .iter()
        .map(|(segno, timeline)| Segment {
            timeline: *timeline,
            segno: *segno,
        })
        .filter(|s| path.holds(*s, size) && in_range(s.segno))
        .collect();
    if let (Some(from), None) = (options.from, options.from_lsn) {
        let skipped = segments_before(repo, &on_path, size, from)?;
        on_path.drain(..skipped);
    }
    let mut sources: Vec<Source> = Vec::new();
    for segment in on_path {
        if let Some(previous) = sources.last() {
            if previous.segment.segno + 1 != segment.segno {
                progress.warn(&format!(
                    "the archive lacks {} to {}: transactions that span the gap are not seen whole",
                    path.segment(previous.segment.segno + 1, size).file_name(size),
                    path.segment(segment.segno - 1, size).file_name(size)
                ));
            }
        }
        sources.push(Source { segment, tail: None });
    }
    // The segment being received, after the last archived one: its .partial file, else the
    // receiver's newest snapshot.
    let next = sources
        .last()
        .map_or_else(|| first.unwrap_or(0), |last| last.segment.segno + 1);
    if in_range(next) {
        let segment = path.segment(next, size);
        if segment.timeline == timeline {
            let name = segment_name(segment, size)?;
            let object = if partial.contains(&(segment.timeline, segment.segno)) {
                repo.get_wal(&WalFileName::Partial(name))?
            } else {
                repo.newest_stream_snapshot(name)?
            };
            if let Some(object) = object {
                sources.push(Source {
                    segment,
                    tail: Some(Arc::new(object)),
                });
            }
        }
    }
    if sources.is_empty() {
        let held = match (archived.first(), archived.last()) {
            (Some(a), Some(b)) => format!(
                "it holds segments {} to {}",
                Segment {
                    timeline: a.1,
                    segno: a.0
                }
                .file_name(size),
                Segment {
                    timeline: b.1,
                    segno: b.0
                }
                .file_name(size)
            ),
            _ => "it holds no segment".to_string(),
        };
        return Err(Error::InvalidInput(format!(
            "no archived WAL of timeline {timeline} in the range asked for ({}): {held}",
            describe_range(options)
        )));
    }
    Ok(Plan {
        size,
        timeline,
        sources,
    })
}

/// How many of `segments` (in order) end before `from`: a binary search on the time of each
/// segment's first timed record (a commit, abort, checkpoint or restore point), as commits are
/// written in time order. The segment before the first that starts at or after `from` is kept:
/// it holds the records before `from` of the transactions that end after it. A segment without a
/// timed record counts as before.
fn segments_before(repo: &Repo, segments: &[Segment], size: SegmentSize, from: DateTime<Utc>) -> Result<usize> {
    let buffers = Buffers::default();
    let first_time = |segment: Segment| -> Result<Option<DateTime<Utc>>> {
        let source = Source { segment, tail: None };
        let bytes = load(repo, &source, size, &buffers)?;
        let name = segment_name(segment, size)?;
        let what = repo.describe_wal(&WalFileName::Segment(name));
        let corrupt = |reason: String| Error::Corrupt {
            what: what.clone(),
            reason,
        };
        let slices = [bytes.as_slice()];
        for record in SegmentRecords::new(name, &slices).map_err(corrupt)? {
            if let Some(time) = record.map_err(corrupt)?.time() {
                return Ok(Some(time));
            }
        }
        Ok(None)
    };
    // The first index whose first time is at or after `from` lies in low..=high.
    let (mut low, mut high) = (0, segments.len());
    while low < high {
        let middle = low + (high - low) / 2;
        if first_time(segments[middle])?.is_some_and(|time| time >= from) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Ok(low.saturating_sub(1))
}

fn describe_range(options: &ScanOptions) -> String {
    let from = options
        .from_lsn
        .map_or_else(|| "the start".to_string(), |l| l.to_string());
    let to = options.to_lsn.map_or_else(|| "the end".to_string(), |l| l.to_string());
    format!("{from} to {to}")
}

fn segment_name(segment: Segment, size: SegmentSize) -> Result<SegmentName> {
    WalFileName::parse(&segment.file_name(size))?
        .segment_name()
        .ok_or_else(|| Error::InvalidInput(format!("{segment:?} has no segment name")))
}

/// What aggregation needs of one record: the records that change nothing it counts are left out
/// when segments are decoded, on the worker threads.
#[derive(Debug)]
enum Step {
    Rows {
        xid: u32,
        storage: RelFileLocator,
        change: RowChange,
        rows: u32,
    },
    /// A full-page image of a heap page (main fork) of `storage`.
    HeapImage {
        xid: u32,
        storage: RelFileLocator,
    },
    Created {
        xid: u32,
        storage: RelFileLocator,
    },
    DatabaseCreated {
        xid: u32,
        database: u32,
    },
    DatabaseDropped {
        xid: u32,
        database: u32,
    },
    End(Ended),
    RestorePoint {
        lsn: Lsn,
        time: DateTime<Utc>,
        name: String,
    },
    Checkpoint {
        lsn: Lsn,
        time: DateTime<Utc>,
        shutdown: bool,
        redo: Lsn,
        timeline: TimelineId,
        previous: TimelineId,
    },
    EndOfRecovery {
        lsn: Lsn,
        time: DateTime<Utc>,
        timeline: TimelineId,
        previous: TimelineId,
    },
}

impl Step {
    fn of(record: Record) -> Option<Step> {
        let xid = record.xid;
        let committed = matches!(record.kind, RecordKind::Commit { .. });
        Some(match record.kind {
            RecordKind::Rows { storage, change, rows } => Step::Rows {
                xid,
                storage,
                change,
                rows,
            },
            RecordKind::PageImages if xid != 0 => {
                // Several blocks: one step for the first heap page is enough to tell.
                let block = record
                    .blocks
                    .iter()
                    .find(|b| b.fork == MAIN_FORK && b.image == PageImage::Plain)?;
                Step::HeapImage {
                    xid,
                    storage: block.storage,
                }
            }
            RecordKind::StorageCreate { storage, fork } if fork == MAIN_FORK && xid != 0 => {
                Step::Created { xid, storage }
            }
            RecordKind::DatabaseCreate { database, .. } => Step::DatabaseCreated { xid, database },
            RecordKind::DatabaseDrop { database, .. } => Step::DatabaseDropped { xid, database },
            RecordKind::Commit { time, xid, details } | RecordKind::Abort { time, xid, details } => Step::End(Ended {
                lsn: record.lsn,
                end: record.end,
                committed,
                xid,
                time,
                details,
            }),
            RecordKind::RestorePoint { time, name } => Step::RestorePoint {
                lsn: record.lsn,
                time,
                name,
            },
            RecordKind::Checkpoint {
                time,
                shutdown,
                redo,
                timeline,
                prev_timeline,
            } => Step::Checkpoint {
                lsn: record.lsn,
                time,
                shutdown,
                redo,
                timeline,
                previous: prev_timeline,
            },
            RecordKind::EndOfRecovery {
                time,
                timeline,
                prev_timeline,
            } => Step::EndOfRecovery {
                lsn: record.lsn,
                time,
                timeline,
                previous: prev_timeline,
            },
            _ => return None,
        })
    }
}

/// A commit or abort record.
#[derive(Debug)]
struct Ended {
    lsn: Lsn,
    end: Lsn,
    committed: bool,
    /// The transaction it ends (the prepared one's for `COMMIT PREPARED`).
    xid: u32,
    time: DateTime<Utc>,
    details: TransactionDetails,
}

/// The steps of one segment, and where its records started and ended.
struct Decoded {
    steps: Vec<Step>,
    first: Option<Lsn>,
    end: Option<Lsn>,
    records: u64,
    /// The walk stopped before the segment's end (the WAL ends here).
    ended: bool,
}

/// Reads `plan`'s segments on `jobs` threads, a window at a time, and hands each event to
/// `found`, which says whether to keep it and whether to stop.
fn scan(
    repo: &Repo,
    options: &ScanOptions,
    names: &Names,
    progress: &dyn Progress,
    found: impl Fn(&Event) -> Option<Found> + Sync,
) -> Result<Report> {
    let plan = plan(repo, options, progress)?;
    let jobs = options.jobs.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .thread_name(|i| format!("pitr-inspect-{i}"))
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start {jobs} threads: {e}")))?;
    let mut fold = Fold::new(names);
    let mut report = Report {
        events: Vec::new(),
        timeline: plan.timeline,
        first_lsn: None,
        end_lsn: None,
        segments: 0,
        records: 0,
        names_missing: names.is_empty(),
    };
    progress.begin(
        plan.sources.len() as u64,
        plan.sources.len() as u64 * u64::from(plan.size.bytes()),
    );
    let window = (jobs * 2).max(2);
    let buffers = Buffers::default();
    // The decoded bytes of the segment after the window (read ahead for a record that continues
    // into it), carried into the next window.
    let mut carried: Option<(u64, Arc<Vec<u8>>)> = None;
    // The window decoded last: folded (on one thread) while the next one is decoded (on the
    // others), so that the fold, which is sequential, costs no time of its own.
    let mut ready: Option<Vec<Result<Decoded>>> = None;
    let mut next = 0;
    loop {
        let range = (next < plan.sources.len()).then(|| next..(next + window).min(plan.sources.len()));
        let (folded, decoded) = pool.install(|| {
            rayon::join(
                || match ready.take() {
                    Some(decoded) => fold_window(decoded, &mut fold, &mut report, &found, options, progress, &plan),
                    None => Ok(Flow::Go),
                },
                || {
                    range
                        .clone()
                        .map(|range| decode_window(repo, &plan, range, &mut carried, &buffers))
                },
            )
        });
        if let Flow::Stop = folded? {
            break;
        }
        match (decoded, range) {
            (Some(decoded), Some(range)) => {
                ready = Some(decoded);
                next = range.end;
            }
            _ => break,
        }
    }
    progress.finish();
    Ok(report)
}

/// Whether the scan goes on after a window.
enum Flow {
    Go,
    Stop,
}

/// Folds the steps of a decoded window into events, handing each to `found`; the first error
/// (a damaged segment) ends the scan when the fold gets there.
#[allow(clippy::too_many_arguments)]
fn fold_window(
    window: Vec<Result<Decoded>>,
    fold: &mut Fold<'_>,
    report: &mut Report,
    found: &(impl Fn(&Event) -> Option<Found> + Sync),
    options: &ScanOptions,
    progress: &dyn Progress,
    plan: &Plan,
) -> Result<Flow> {
    for result in window {
        let decoded = result?;
        report.segments += 1;
        report.records += decoded.records;
        report.first_lsn = report.first_lsn.or(decoded.first);
        report.end_lsn = decoded.end.or(report.end_lsn);
        progress.advance(u64::from(plan.size.bytes()));
        for step in decoded.steps {
            if let Some(event) = fold.step(step) {
                match found(&event) {
                    Some(Found::Keep) => report.events.push(event),
                    Some(Found::KeepAndStop) => {
                        report.events.push(event);
                        return Ok(Flow::Stop);
                    }
                    None => {}
                }
            }
        }
        if decoded.ended || fold.past_end(options) {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Go)
}

/// Decompresses the sources in `range` (and the one after it, for a record that continues
/// there) and decodes their records, in parallel; a source that cannot be read is an error in
/// its place.
fn decode_window(
    repo: &Repo,
    plan: &Plan,
    range: std::ops::Range<usize>,
    carried: &mut Option<(u64, Arc<Vec<u8>>)>,
    buffers: &Buffers,
) -> Vec<Result<Decoded>> {
    use rayon::prelude::*;
    let (start, stop) = (range.start, range.end);
    let wanted: Vec<usize> = (start..(stop + 1).min(plan.sources.len())).collect();
    let bytes: Vec<Result<Arc<Vec<u8>>>> = wanted
        .par_iter()
        .map(|i| match carried.as_ref() {
            Some((segno, bytes)) if *segno == plan.sources[*i].segment.segno => Ok(bytes.clone()),
            _ => load(repo, &plan.sources[*i], plan.size, buffers).map(Arc::new),
        })
        .collect();
    let mut decoded: Vec<Option<Result<Decoded>>> = (start..stop)
        .into_par_iter()
        .map(|i| {
            let local = i - start;
            let own = bytes[local].as_ref().ok()?;
            let mut held: Vec<Arc<Vec<u8>>> = vec![own.clone()];
            let following = plan
                .sources
                .get(i + 1)
                .filter(|n| n.segment.segno == plan.sources[i].segment.segno + 1);
            if let (Some(_), Some(Ok(next))) = (following, bytes.get(local + 1)) {
                held.push(next.clone());
            }
            Some(decode_segment(repo, plan, i, held))
        })
        .collect();
    *carried = None;
    for (local, loaded) in bytes.into_iter().enumerate() {
        match loaded {
            Ok(bytes) if start + local == stop => *carried = Some((plan.sources[stop].segment.segno, bytes)),
            Ok(bytes) => buffers.give(bytes),
            Err(error) => {
                if let Some(slot) = decoded.get_mut(local) {
                    *slot = Some(Err(error));
                }
            }
        }
    }
    decoded
        .into_iter()
        .map(|d| d.expect("every source was decoded or failed to load"))
        .collect()
}

/// Buffers of decoded segments, handed back once a window is folded and reused: a fresh buffer
/// of a segment's size costs a page fault per page, about a fifth of a scan's time.
#[derive(Default)]
struct Buffers(Mutex<Vec<Vec<u8>>>);

impl Buffers {
    fn take(&self) -> Vec<u8> {
        self.0.lock().expect("not poisoned").pop().unwrap_or_default()
    }

    /// Keeps `bytes` for reuse when nothing else holds it.
    fn give(&self, bytes: Arc<Vec<u8>>) {
        if let Ok(bytes) = Arc::try_unwrap(bytes) {
            self.0.lock().expect("not poisoned").push(bytes);
        }
    }
}

/// The raw bytes of a source: an archived segment decoded, or the tail padded to a whole
/// segment (a snapshot holds its first bytes only).
fn load(repo: &Repo, source: &Source, size: SegmentSize, buffers: &Buffers) -> Result<Vec<u8>> {
    let name = segment_name(source.segment, size)?;
    let mut bytes = buffers.take();
    match &source.tail {
        None => {
            let file = WalFileName::Segment(name);
            let what = repo.describe_wal(&file);
            let object = repo.get_wal(&file)?.ok_or_else(|| Error::Corrupt {
                what: what.clone(),
                reason: "vanished while the WAL was read".into(),
            })?;
            codec::decode_into(&object, &what, &mut bytes)?;
        }
        Some(object) => {
            let what = format!(
                "{} (the segment being received)",
                repo.describe_wal(&WalFileName::Partial(name))
            );
            codec::decode_into(object, &what, &mut bytes)?;
            bytes.resize(size.bytes() as usize, 0);
        }
    }
    Ok(bytes)
}

/// Decodes the records that start in source `index`, from `held` (its bytes and the next
/// segment's); a record longer than two segments reads further archived segments.
fn decode_segment(repo: &Repo, plan: &Plan, index: usize, mut held: Vec<Arc<Vec<u8>>>) -> Result<Decoded> {
    let source = &plan.sources[index];
    let name = segment_name(source.segment, plan.size)?;
    let what = repo.describe_wal(&match source.tail {
        None => WalFileName::Segment(name),
        Some(_) => WalFileName::Partial(name),
    });
    let corrupt = |reason: String| Error::Corrupt {
        what: what.clone(),
        reason,
    };
    loop {
        let slices: Vec<&[u8]> = held.iter().map(|b| b.as_slice()).collect();
        let mut reader = match SegmentRecords::new(name, &slices) {
            Ok(reader) => reader,
            Err(_) if source.tail.is_some() => {
                return Ok(Decoded {
                    steps: Vec::new(),
                    first: None,
                    end: None,
                    records: 0,
                    ended: true,
                })
            }
            Err(reason) => return Err(corrupt(reason)),
        };
        let mut decoded = Decoded {
            steps: Vec::new(),
            first: None,
            end: None,
            records: 0,
            ended: false,
        };
        for record in reader.by_ref() {
            match record {
                Ok(record) => {
                    decoded.records += 1;
                    decoded.first.get_or_insert(record.lsn);
                    decoded.end = Some(record.end);
                    decoded.steps.extend(Step::of(record));
                }
                // The end of the WAL being received: what is after it is not written yet.
                Err(_) if source.tail.is_some() => {
                    decoded.ended = true;
                    return Ok(decoded);
                }
                Err(reason) => return Err(corrupt(reason)),
            }
        }
        match reader.end() {
            Some(End::Continues { needs, .. }) => {
                // A record longer than the next segment: read on while the archive has them.
                let further = Segment {
                    timeline: plan
                        .sources
                        .get(index + 1)
                        .map_or(source.segment.timeline, |s| s.segment.timeline),
                    segno: source.segment.segno + held.len() as u64,
                };
                let archived = plan.sources.iter().find(|s| s.segment == further && s.tail.is_none());
                match archived {
                    Some(s) if needs >= further.segno => {
                        held.push(Arc::new(load(repo, s, plan.size, &Buffers::default())?))
                    }
                    // Not archived (yet): the scan goes on after the gap.
                    _ => return Ok(decoded),
                }
            }
            Some(End::EndOfWal(_)) => {
                // In an archived segment, the WAL goes on in the next one (a timeline's end).
                decoded.ended = source.tail.is_some();
                return Ok(decoded);
            }
            _ => return Ok(decoded),
        }
    }
}

/// A transaction's (or subtransaction's) changes until it ends.
#[derive(Debug, Default)]
struct Pending {
    relations: HashMap<RelFileLocator, Counts>,
    created: Vec<RelFileLocator>,
    /// Storage it wrote heap data into.
    heap_written: BTreeSet<RelFileLocator>,
    databases_created: Vec<u32>,
    databases_dropped: Vec<u32>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    inserted: u64,
    updated: u64,
    deleted: u64,
}

/// The fold of steps into events, in LSN order.
struct Fold<'n> {
    names: &'n Names,
    pending: HashMap<u32, Pending>,
    /// The newest commit time seen.
    newest_time: Option<DateTime<Utc>>,
}

impl<'n> Fold<'n> {
    fn new(names: &'n Names) -> Fold<'n> {
        Fold {
            names,
            pending: HashMap::new(),
            newest_time: None,
        }
    }

    /// Whether the scan has passed `--to`: a commit after it was seen (commits are written in
    /// time order, but for the moments between taking a time and writing the record).
    fn past_end(&self, options: &ScanOptions) -> bool {
        matches!((options.to, self.newest_time), (Some(to), Some(newest)) if newest > to + chrono::Duration::seconds(1))
    }

    fn step(&mut self, step: Step) -> Option<Event> {
        match step {
            Step::Rows {
                xid,
                storage,
                change,
                rows,
            } => {
                let pending = self.pending.entry(xid).or_default();
                let counts = pending.relations.entry(storage).or_default();
                let rows = u64::from(rows);
                match change {
                    RowChange::Insert => counts.inserted += rows,
                    RowChange::Update => counts.updated += rows,
                    RowChange::Delete => counts.deleted += rows,
                }
                if change == RowChange::Insert {
                    pending.heap_written.insert(storage);
                }
                None
            }
            Step::HeapImage { xid, storage } => {
                self.pending.entry(xid).or_default().heap_written.insert(storage);
                None
            }
            Step::Created { xid, storage } => {
                self.pending.entry(xid).or_default().created.push(storage);
                None
            }
            Step::DatabaseCreated { xid, database } => {
                self.pending.entry(xid).or_default().databases_created.push(database);
                None
            }
            Step::DatabaseDropped { xid, database } => {
                self.pending.entry(xid).or_default().databases_dropped.push(database);
                None
            }
            Step::End(ended) => {
                self.newest_time = self.newest_time.max(Some(ended.time));
                let mut whole = self.pending.remove(&ended.xid).unwrap_or_default();
                for sub in &ended.details.subxacts {
                    if let Some(part) = self.pending.remove(sub) {
                        merge(&mut whole, part);
                    }
                }
                // An abort ends the (sub)transaction it names and those it lists: their changes
                // are gone, and are not counted in the transaction that goes on after a
                // ROLLBACK TO SAVEPOINT (the WAL does not say whether an abort is a
                // subtransaction's, so it is an event of its own either way).
                Some(Event::Transaction(self.transaction(ended, whole)))
            }
            Step::RestorePoint { lsn, time, name } => Some(Event::RestorePoint { lsn, time, name }),
            Step::Checkpoint {
                lsn,
                time,
                shutdown,
                redo,
                timeline,
                previous,
            } => Some(if timeline != previous {
                Event::TimelineSwitch {
                    lsn,
                    time,
                    timeline,
                    previous,
                }
            } else {
                Event::Checkpoint {
                    lsn,
                    time,
                    shutdown,
                    redo,
                }
            }),
            Step::EndOfRecovery {
                lsn,
                time,
                timeline,
                previous,
            } => Some(Event::TimelineSwitch {
                lsn,
                time,
                timeline,
                previous,
            }),
        }
    }

    /// The event of a transaction that ended with `ended` and did `whole`.
    fn transaction(&self, ended: Ended, whole: Pending) -> TransactionEvent {
        let Ended {
            lsn,
            end,
            committed,
            xid,
            time,
            details,
        } = ended;
        let names = self.names;
        let created: BTreeSet<RelFileLocator> = whole.created.iter().copied().collect();
        let heap_into_new = whole.heap_written.iter().any(|s| created.contains(s));
        let dropped_change = match (created.is_empty(), heap_into_new) {
            (true, _) => EventKind::Drop,
            (false, true) => EventKind::Rewrite,
            (false, false) => EventKind::Truncate,
        };
        let mut relations: Vec<RelationChange> = Vec::new();
        let mut relation = |storage: RelFileLocator, counts: Counts, change: Option<EventKind>| {
            let name = names.relation(lsn, storage);
            relations.push(RelationChange {
                storage,
                name: name.map(RelationName::qualified),
                relkind: name.map(|n| n.kind),
                system: is_system(storage, name),
                inserted: counts.inserted,
                updated: counts.updated,
                deleted: counts.deleted,
                storage_change: change,
            });
        };
        for storage in &details.dropped {
            let counts = whole.relations.get(storage).copied().unwrap_or_default();
            relation(*storage, counts, Some(dropped_change));
        }
        for storage in &created {
            let counts = whole.relations.get(storage).copied().unwrap_or_default();
            relation(*storage, counts, Some(EventKind::Create));
        }
        let mut changed: Vec<(&RelFileLocator, &Counts)> = whole
            .relations
            .iter()
            .filter(|(s, _)| !details.dropped.contains(s) && !created.contains(s))
            .collect();
        changed.sort_by_key(|(s, _)| **s);
        for (storage, counts) in changed {
            relation(*storage, *counts, None);
        }
        let database_oid = details
            .database
            .map(|(db, _)| db)
            .or_else(|| relations.iter().map(|r| r.storage.db).find(|db| *db != 0));
        let database = database_oid.and_then(|oid| names.database(lsn, oid).map(str::to_string));
        let database_change = |oid: &u32| DatabaseChange {
            oid: *oid,
            name: names.database(lsn, *oid).map(str::to_string),
        };
        let databases_created: Vec<DatabaseChange> = whole.databases_created.iter().map(database_change).collect();
        let databases_dropped: Vec<DatabaseChange> = whole.databases_dropped.iter().map(database_change).collect();
        let replaced = !details.dropped.is_empty();
        let user = || relations.iter().filter(|r| counts_rows(r, replaced));
        let rows: u64 = user().map(|r| r.inserted + r.updated + r.deleted).sum();
        let mut kinds = BTreeSet::new();
        for r in user() {
            if r.inserted > 0 {
                kinds.insert(EventKind::Insert);
            }
            if r.updated > 0 {
                kinds.insert(EventKind::Update);
            }
            if r.deleted > 0 {
                kinds.insert(EventKind::Delete);
            }
        }
        kinds.extend(
            relations
                .iter()
                .filter_map(|r| r.storage_change)
                .filter(|k| *k != EventKind::Create || !replaced),
        );
        if !databases_created.is_empty() {
            kinds.insert(EventKind::CreateDatabase);
        }
        if !databases_dropped.is_empty() {
            kinds.insert(EventKind::DropDatabase);
            // Its relation files go with the directory, not through the commit.
            kinds.remove(&EventKind::Drop);
        }
        if !committed {
            kinds.insert(EventKind::Abort);
        }
        let mut event = TransactionEvent {
            xid,
            subxacts: details.subxacts,
            committed,
            time,
            lsn,
            end_lsn: end,
            database_oid,
            database,
            kinds: kinds.into_iter().collect(),
            rows,
            relations,
            databases_created,
            databases_dropped,
            summary: String::new(),
        };
        event.summary = summarize(&event);
        event
    }
}

/// Whether a relation's rows count in its transaction's: a user relation, and not the new
/// storage of a truncated or rewritten one (`replaced`: the transaction dropped storage), whose
/// rows are the old ones copied.
fn counts_rows(relation: &RelationChange, replaced: bool) -> bool {
    let copied = replaced && relation.storage_change == Some(EventKind::Create);
    !relation.system && !copied
}

fn merge(whole: &mut Pending, part: Pending) {
    for (storage, counts) in part.relations {
        let into = whole.relations.entry(storage).or_default();
        into.inserted += counts.inserted;
        into.updated += counts.updated;
        into.deleted += counts.deleted;
    }
    whole.created.extend(part.created);
    whole.heap_written.extend(part.heap_written);
    whole.databases_created.extend(part.databases_created);
    whole.databases_dropped.extend(part.databases_dropped);
}

/// A catalog relation: in a catalog schema by its name, else (no name) one initdb made.
fn is_system(storage: RelFileLocator, name: Option<&RelationName>) -> bool {
    match name {
        Some(name) => SYSTEM_SCHEMAS.contains(&name.schema.as_str()),
        None => storage.rel < FIRST_NORMAL_OBJECT_ID,
    }
}

/// The one line for people: what was dropped, truncated, rewritten or created (tables, or every
/// relation without a name), the databases, the rows by relation, the row total.
fn summarize(event: &TransactionEvent) -> String {
    let replaced = event
        .relations
        .iter()
        .any(|r| r.storage_change.is_some_and(|k| k != EventKind::Create));
    let mut parts: Vec<String> = Vec::new();
    let named_tables = event
        .relations
        .iter()
        .any(|r| r.storage_change.is_some() && matches!(r.relkind, Some('r' | 'm' | 'p')));
    for r in &event.relations {
        let Some(change) = r.storage_change.filter(|k| *k != EventKind::Create || !replaced) else {
            continue;
        };
        let object = match r.relkind {
            Some('r' | 'p') => "TABLE",
            Some('m') => "MATERIALIZED VIEW",
            Some('S') => "SEQUENCE",
            Some('i' | 'I') if !named_tables => "INDEX",
            Some(_) => continue,
            None if r.system => continue,
            None => "relation",
        };
        let verb = match change {
            EventKind::Drop => "DROP",
            EventKind::Truncate => "TRUNCATE",
            EventKind::Rewrite => "REWRITE",
            _ => "CREATE",
        };
        let what = if verb == "TRUNCATE" || verb == "REWRITE" {
            // TRUNCATE public.orders, not TRUNCATE TABLE.
            relation_label(r)
        } else {
            format!("{object} {}", relation_label(r))
        };
        parts.push(format!("{verb} {what}"));
    }
    for d in &event.databases_created {
        parts.push(format!("CREATE DATABASE {}", database_label(d)));
    }
    for d in &event.databases_dropped {
        parts.push(format!("DROP DATABASE {}", database_label(d)));
    }
    let mut rows = Vec::new();
    for r in event.relations.iter().filter(|r| counts_rows(r, replaced)) {
        for (verb, count, preposition) in [
            ("INSERT", r.inserted, "into"),
            ("UPDATE", r.updated, "in"),
            ("DELETE", r.deleted, "from"),
        ] {
            if count > 0 {
                let noun = if count == 1 { "row" } else { "rows" };
                rows.push(format!("{verb} {count} {noun} {preposition} {}", relation_label(r)));
            }
        }
    }
    if rows.is_empty() {
        let noun = if event.rows == 1 { "row" } else { "rows" };
        rows.push(format!("{} {noun}", event.rows));
    }
    parts.extend(rows);
    if !event.committed {
        parts.insert(0, "ROLLBACK".into());
    }
    parts.join("; ")
}

fn relation_label(r: &RelationChange) -> String {
    r.name
        .clone()
        .unwrap_or_else(|| format!("{} (name unknown)", r.storage))
}

fn database_label(d: &DatabaseChange) -> String {
    d.name
        .clone()
        .unwrap_or_else(|| format!("with OID {} (name unknown)", d.oid))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::names::{DatabaseName, MappedRelation};
    use crate::wal::records::synthetic::synthetic_segment;

    const DB: u32 = 16384;

    fn storage(rel: u32) -> RelFileLocator {
        RelFileLocator { spc: 1663, db: DB, rel }
    }

    fn names() -> Names {
        let relation = |rel, name: &str, kind| MappedRelation {
            storage: storage(rel),
            name: RelationName {
                schema: "public".into(),
                name: name.into(),
                kind,
            },
        };
        Names::from_maps([NamesMap {
            lsn: Lsn(0),
            time: Utc::now(),
            databases: vec![DatabaseName {
                oid: DB,
                name: "catalog".into(),
            }],
            relations: vec![
                relation(20000, "products", 'r'),
                relation(20001, "products_pkey", 'i'),
                relation(20002, "orders", 'r'),
            ],
            unreadable: Vec::new(),
        }])
    }

    fn end(xid: u32, committed: bool, subxacts: Vec<u32>, dropped: Vec<RelFileLocator>) -> Step {
        Step::End(Ended {
            lsn: Lsn(1000 + u64::from(xid)),
            end: Lsn(1100 + u64::from(xid)),
            committed,
            xid,
            time: Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap(),
            details: TransactionDetails {
                subxacts,
                dropped,
                database: None,
            },
        })
    }

    fn rows(xid: u32, rel: u32, change: RowChange, rows: u32) -> Step {
        Step::Rows {
            xid,
            storage: storage(rel),
            change,
            rows,
        }
    }

    fn transaction(event: Option<Event>) -> TransactionEvent {
        match event {
            Some(Event::Transaction(t)) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn drops_truncates_and_rewrites_are_told_apart_by_the_storage_created_and_written() {
        let names = names();
        let mut fold = Fold::new(&names);
        let dropped = vec![storage(20000), storage(20001)];
        let drop = transaction(fold.step(end(10, true, vec![], dropped.clone())));
        assert_eq!(drop.kinds, [EventKind::Drop]);
        assert_eq!(drop.summary, "DROP TABLE public.products; 0 rows");
        assert_eq!(drop.database.as_deref(), Some("catalog"));

        fold.step(Step::Created {
            xid: 11,
            storage: storage(30000),
        });
        let truncate = transaction(fold.step(end(11, true, vec![], dropped.clone())));
        assert_eq!(truncate.kinds, [EventKind::Truncate]);
        assert_eq!(truncate.summary, "TRUNCATE public.products; 0 rows");

        fold.step(Step::Created {
            xid: 12,
            storage: storage(30001),
        });
        fold.step(Step::HeapImage {
            xid: 12,
            storage: storage(30001),
        });
        let rewrite = transaction(fold.step(end(12, true, vec![], dropped)));
        assert_eq!(rewrite.kinds, [EventKind::Rewrite]);
        assert_eq!(rewrite.rows, 0, "the rows copied into the new storage are not changes");

        fold.step(Step::Created {
            xid: 13,
            storage: storage(30002),
        });
        fold.step(rows(13, 30002, RowChange::Insert, 40));
        let create = transaction(fold.step(end(13, true, vec![], vec![])));
        assert_eq!(create.kinds, [EventKind::Insert, EventKind::Create]);
        assert_eq!(create.rows, 40);
    }

    #[test]
    fn subtransactions_fold_in_and_rolled_back_ones_do_not_count() {
        let names = names();
        let mut fold = Fold::new(&names);
        fold.step(rows(20, 20002, RowChange::Delete, 3));
        fold.step(rows(21, 20002, RowChange::Delete, 500));
        fold.step(rows(22, 20002, RowChange::Update, 7));
        // Subtransaction 21 rolls back (ROLLBACK TO SAVEPOINT); 22 commits with 20.
        let rolled_back = transaction(fold.step(end(21, false, vec![], vec![])));
        assert!(!rolled_back.committed);
        assert_eq!(rolled_back.kinds, [EventKind::Delete, EventKind::Abort]);
        let committed = transaction(fold.step(end(20, true, vec![22], vec![])));
        assert_eq!(committed.rows, 10);
        assert_eq!(committed.subxacts, [22]);
        assert_eq!(
            committed.summary,
            "UPDATE 7 rows in public.orders; DELETE 3 rows from public.orders"
        );
        assert!(fold.pending.is_empty(), "nothing is held after the ends");
    }

    #[test]
    fn a_relation_no_map_knows_shows_its_storage_and_catalog_rows_do_not_count() {
        let names = Names::default();
        let mut fold = Fold::new(&names);
        fold.step(rows(30, 1259, RowChange::Delete, 4));
        let drop = transaction(fold.step(end(30, true, vec![], vec![storage(40000)])));
        assert_eq!(drop.summary, "DROP relation 1663/16384/40000 (name unknown); 0 rows");
        assert_eq!(drop.rows, 0, "pg_class's rows are the catalog's");
        assert_eq!(drop.database_oid, Some(DB));
        assert_eq!(drop.database, None);
    }

    #[test]
    fn tables_are_named_by_name_qualified_name_storage_or_relfilenode() {
        let name = RelationName {
            schema: "public".into(),
            name: "orders".into(),
            kind: 'r',
        };
        for wanted in ["orders", "public.orders", "1663/16384/20002", "20002"] {
            assert!(table_matches(wanted, storage(20002), Some(&name)), "{wanted}");
        }
        for wanted in ["other.orders", "order", "1663/5/20002", "20003"] {
            assert!(!table_matches(wanted, storage(20002), Some(&name)), "{wanted}");
        }
        assert_eq!(parse_storage("1/2/x"), None);
        assert_eq!("drop-database".parse::<EventKind>().unwrap(), EventKind::DropDatabase);
        assert!("dropped".parse::<EventKind>().is_err());
        let filter = Filter {
            tables: vec!["nosuch".into()],
            ..Filter::default()
        };
        let unknown = Matcher::new(&filter, &[]).map(|_| ());
        assert!(
            matches!(&unknown, Err(Error::InvalidInput(m)) if m.contains("no map of names knows a relation 'nosuch'")),
            "{unknown:?}"
        );
    }

    fn repo_with(segments: &[(u64, Vec<u8>)]) -> (tempfile::TempDir, Repo) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        repo.claim(crate::repo::Cluster {
            pg_version: 15,
            system_identifier: 7,
            wal_segment_size: 1 << 20,
        })
        .unwrap();
        for (segno, raw) in segments {
            let name = WalFileName::parse(&format!("0000000100000000{segno:08X}")).unwrap();
            repo.put_wal(&name, &crate::codec::Codec::default().encode(raw))
                .unwrap();
        }
        (dir, repo)
    }

    fn xids(report: &Report) -> Vec<u32> {
        report
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Transaction(t) => Some(t.xid),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_scan_reads_on_into_the_segment_being_received_in_order() {
        let archived: Vec<(u64, Vec<u8>)> = (1..=5)
            .map(|n| {
                (
                    n,
                    synthetic_segment(n, &[n as u32 * 10, n as u32 * 10 + 1], true, false),
                )
            })
            .collect();
        let (_dir, repo) = repo_with(&archived);
        // The receiver's snapshot of segment 6: its first 100 bytes, which cut its second commit
        // short: the WAL ends there.
        let receiving = synthetic_segment(6, &[60, 61], false, false);
        let name = WalFileName::parse("000000010000000000000006")
            .unwrap()
            .segment_name()
            .unwrap();
        let snapshot = crate::codec::Codec::default().encode(&receiving[..100]);
        repo.put_stream_snapshot(name, 100, &snapshot).unwrap();
        let options = ScanOptions {
            jobs: 2,
            ..ScanOptions::default()
        };
        let report = events(&repo, &options, &Filter::default(), &crate::progress::Silent).unwrap();
        assert_eq!(xids(&report), [10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60]);
        assert_eq!(report.segments, 6);
        assert!(report.names_missing);
        let one_job = ScanOptions {
            jobs: 1,
            ..ScanOptions::default()
        };
        let found = find_transaction(&repo, &Names::default(), TransactionKey::Xid(41), &one_job).unwrap();
        assert_eq!(found.map(|t| t.time.timestamp()), Some(946_684_800 + 41));
        assert_eq!(
            find_transaction(&repo, &Names::default(), TransactionKey::Xid(99), &one_job).unwrap(),
            None
        );
        let ranged = ScanOptions {
            from_lsn: Some(Lsn(3 << 20)),
            to_lsn: Some(Lsn((4 << 20) + 60)),
            jobs: 1,
            ..ScanOptions::default()
        };
        let report = events(&repo, &ranged, &Filter::default(), &crate::progress::Silent).unwrap();
        assert_eq!(xids(&report), [30, 31, 40]);
    }

    #[test]
    fn a_time_range_starts_reading_a_segment_before_its_start() {
        let archived: Vec<(u64, Vec<u8>)> = (1..=8)
            .map(|n| {
                (
                    n,
                    synthetic_segment(n, &[n as u32 * 10, n as u32 * 10 + 1], true, false),
                )
            })
            .collect();
        let (_dir, repo) = repo_with(&archived);
        let at = |xid: i64| DateTime::from_timestamp(946_684_800 + xid, 0).unwrap();
        let options = ScanOptions {
            from: Some(at(50)),
            to: Some(at(61)),
            jobs: 2,
            ..ScanOptions::default()
        };
        let report = events(&repo, &options, &Filter::default(), &crate::progress::Silent).unwrap();
        assert_eq!(xids(&report), [50, 51, 60, 61]);
        assert_eq!(
            report.first_lsn,
            Some(Lsn((4 << 20) + 40)),
            "segment 4, the one before the start"
        );
        assert!(report.segments <= 4, "read {} segments", report.segments);
        let before_all = ScanOptions {
            from: Some(at(0)),
            jobs: 1,
            ..ScanOptions::default()
        };
        let report = events(&repo, &before_all, &Filter::default(), &crate::progress::Silent).unwrap();
        assert_eq!(report.segments, 8);
    }

    #[test]
    fn a_damaged_record_in_an_archived_segment_names_the_segment_and_the_lsn() {
        let (_dir, repo) = repo_with(&[
            (1, synthetic_segment(1, &[10], true, false)),
            (2, synthetic_segment(2, &[20, 21], true, true)),
        ]);
        let options = ScanOptions {
            jobs: 2,
            ..ScanOptions::default()
        };
        let error = events(&repo, &options, &Filter::default(), &crate::progress::Silent).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, Error::Corrupt { .. }), "{message}");
        assert!(message.contains("000000010000000000000002"), "{message}");
        assert!(message.contains("record at 0/200050: CRC-32C"), "{message}");
        let empty = tempfile::tempdir().unwrap();
        let nothing = events(
            &Repo::open_local(empty.path()).unwrap(),
            &options,
            &Filter::default(),
            &crate::progress::Silent,
        );
        assert!(nothing.unwrap_err().to_string().contains("holds no WAL"));
    }
}
