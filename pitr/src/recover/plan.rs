//! The recovery plan, decided before anything is touched: which backup, which timeline path,
//! which WAL segments (all present, or the first missing one is named now rather than after an
//! hour of replay), and whether the target is reachable at all.
//!
//! Reachability is decided from the archived WAL's records, the way PostgreSQL's recovery reads
//! them (`recoveryStopsBefore`/`recoveryStopsAfter` in `xlogrecovery.c`): a time target needs a
//! commit or abort after it, a transaction target its commit or abort, an LSN target a complete
//! record at or after it. The last segment of the plan is the one holding the end of the record
//! that stops recovery. A time after the newest commit is reachable only when a later record
//! (a checkpoint, a restore point) proves the archive covers it; recovery then stops at that
//! record instead, which gives the same state, and the plan says so.
//!
//! [`plan`] is a function of the repository's state alone ([`RepoState`], whose records are read
//! from the repository as a target needs them), so it is tested without a server.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::archived::{newer_xid, ArchivedRecords, Mark, MarkKind, SegmentSummary};
use super::segments::ArchivedSegments;
use super::target::Target;
use crate::backup::manifest::ManifestSummary;
use crate::error::{Error, Result};
use crate::repo::Generation;
use crate::restore_point::RestorePoint;
use crate::wal::{Lsn, Segment, SegmentSize, TimelineId, TimelineSwitch};

/// What `recovery_target_timeline` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimelineChoice {
    /// The newest timeline in the archive (PostgreSQL's default since 12).
    Latest,
    /// This timeline.
    Number(TimelineId),
}

/// What the repository holds, gathered once.
#[derive(Debug, Default)]
pub struct RepoState<'r> {
    /// Finished backups, summarized.
    pub backups: Vec<ManifestSummary>,
    /// Archived segments.
    pub segments: ArchivedSegments,
    /// Parsed history files by timeline.
    pub histories: BTreeMap<TimelineId, Vec<TimelineSwitch>>,
    /// Recorded restore points.
    pub restore_points: Vec<RestorePoint>,
    /// The WAL segment size.
    pub segment_size: Option<SegmentSize>,
    /// The archived segments' records, read as a target needs them.
    pub records: ArchivedRecords<'r>,
    /// The repository generation all of this is of (`None` for a repository without repo.json).
    pub generation: Option<Generation>,
    /// The current generation, when `generation` is an earlier one: the plan then says that the
    /// recovered copy is of the earlier major and needs its binaries.
    pub replaced_by: Option<Generation>,
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The target.
    pub target: Target,
    /// recovery_target_inclusive = off (time, LSN and transaction targets).
    pub exclusive: bool,
    /// `--before`: the target (an xid, or an LSN) is a committed transaction to stop just
    /// before; the plan names it, and refuses anything else.
    pub before: bool,
    /// The timeline to follow.
    pub timeline: TimelineChoice,
    /// A backup id to use instead of choosing.
    pub backup: Option<String>,
}

/// A stretch of one timeline in the path to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineStep {
    /// The timeline.
    pub timeline: TimelineId,
    /// Where it ends (switch to the next step), `None` for the target timeline.
    pub ends_at: Option<Lsn>,
}

/// The plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The backup to restore.
    pub backup_id: String,
    /// Its tier.
    pub backup_tier: crate::backup::Tier,
    /// Where replay from it starts (its checkpoint's redo).
    pub backup_start_lsn: Lsn,
    /// Its consistency point.
    pub backup_stop_lsn: Lsn,
    /// When it became consistent.
    pub backup_stop_time: DateTime<Utc>,
    /// The target, as asked.
    pub target: Target,
    /// The target as PostgreSQL is told: `target`, or for a time after the newest archived
    /// commit the record that proves the archive covers it (an LSN, inclusive).
    pub recovery_target: Target,
    /// recovery_target_inclusive = off, as PostgreSQL is told.
    pub exclusive: bool,
    /// The target timeline.
    pub timeline: TimelineChoice,
    /// Timelines replayed, oldest first.
    pub timeline_path: Vec<TimelineStep>,
    /// The first WAL segment replayed.
    pub first_wal: String,
    /// The segment holding the end of the record that stops recovery (the last archived one
    /// for `latest`).
    pub last_wal: String,
    /// How many segments that is.
    pub wal_segments: u64,
    /// Bytes the restore writes.
    pub restore_bytes: u64,
    /// The transaction recovery stops just before (`--before`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stops_before: Option<StopsBefore>,
    /// Things the operator should read.
    pub notes: Vec<String>,
    /// The repository generation recovered from (1 for a repository without upgrades).
    pub generation: u32,
    /// The PostgreSQL major the recovered copy is (its binaries start it).
    pub pg_version: u32,
    /// Whether that is an earlier generation than the repository's current one: archive-get is
    /// then told the generation (`--generation`).
    pub earlier_generation: bool,
}

impl Plan {
    /// The `recovery_target*` settings for PostgreSQL.
    pub fn target_settings(&self) -> Vec<(&'static str, String)> {
        self.recovery_target.settings(self.exclusive)
    }
}

/// How far recovery from one backup reaches on one timeline, as the planner decides it: what
/// `pitr info` shows as a recoverable window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The last segment replayed without a gap.
    pub last_wal: String,
    /// The end of that segment.
    pub end_lsn: Lsn,
    /// The newest moment a time target is accepted; `None` when the archive shows no moment
    /// after the backup's consistency point yet.
    pub newest_time: Option<DateTime<Utc>>,
}

/// Decides the plan, or says precisely why the target cannot be reached.
pub fn plan(state: &RepoState, request: &Request) -> Result<Plan> {
    let size = state
        .segment_size
        .ok_or_else(|| Error::Refused("the repository holds no WAL yet".into()))?;
    if state.backups.is_empty() {
        return Err(Error::Refused(
            "the repository holds no backup: nothing to recover from".into(),
        ));
    }
    let target_timeline = match request.timeline {
        TimelineChoice::Number(n) => n,
        TimelineChoice::Latest => latest_timeline(state),
    };
    let path = Path::to(state, target_timeline, size)?;
    let mut notes = Vec::new();
    let target_lsn = target_lsn(state, &request.target, &path, &mut notes)?;
    let backup = choose_backup(state, request, &path, target_lsn)?;
    check_not_before_backup(backup, &request.target, target_lsn)?;

    let first = size.segment_of(backup.start_lsn);
    let scan = Scan {
        state,
        path: &path,
        backup,
    };
    let stop = scan.stop(request, target_lsn, &mut notes)?;
    check_continuity(state, &path, first, stop.last, backup)?;
    if let (Some(this), Some(current)) = (state.generation, state.replaced_by) {
        notes.push(format!(
            "backup {} is of generation {} of the repository ({}), which the current generation {} ({}) \
             replaced after a major upgrade: the recovered copy is a PostgreSQL {} cluster, started with \
             PostgreSQL {}'s binaries (PITR_PG_BINDIR, pg_config or /usr/lib/postgresql/{}/bin), and its \
             restore_command reads generation {}'s WAL",
            backup.id,
            this.generation,
            this.cluster().describe(),
            current.generation,
            current.cluster().describe(),
            this.pg_version,
            this.pg_version,
            this.pg_version,
            this.generation
        ));
    }
    Ok(Plan {
        backup_id: backup.id.clone(),
        backup_tier: backup.tier,
        backup_start_lsn: backup.start_lsn,
        backup_stop_lsn: backup.stop_lsn,
        backup_stop_time: backup.stop_time,
        target: request.target.clone(),
        recovery_target: stop.target,
        exclusive: stop.exclusive,
        timeline: request.timeline,
        timeline_path: path
            .steps
            .iter()
            .map(|(t, e)| TimelineStep {
                timeline: *t,
                ends_at: *e,
            })
            .collect(),
        first_wal: path.name(first),
        last_wal: path.name(stop.last),
        wal_segments: stop.last + 1 - first,
        restore_bytes: backup.original_bytes,
        stops_before: stop.before.map(|mark| StopsBefore {
            xid: mark.kind.transaction().expect("a commit"),
            commit_lsn: mark.lsn,
            commit_time: mark.time,
            did: None,
        }),
        notes,
        generation: state.generation.map_or(1, |g| g.generation),
        pg_version: backup.pg_version,
        earlier_generation: state.replaced_by.is_some(),
    })
}

/// The committed transaction a `--before` plan stops just before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StopsBefore {
    /// Its transaction id.
    pub xid: u32,
    /// Where its commit record starts.
    pub commit_lsn: Lsn,
    /// When it committed.
    pub commit_time: DateTime<Utc>,
    /// What it did, as `pitr wal events` tells it (filled in by
    /// [`plan_recovery`](crate::recover::plan_recovery) from the archived WAL).
    pub did: Option<String>,
}

/// How far recovery from backup `backup_id` reaches on `timeline`: `None` when the backup is not
/// on the way to that timeline or its own WAL is incomplete.
pub fn reach(state: &RepoState, timeline: TimelineId, backup_id: &str) -> Result<Option<Reach>> {
    let Some(size) = state.segment_size else {
        return Ok(None);
    };
    let path = Path::to(state, timeline, size)?;
    let Some(backup) = state
        .backups
        .iter()
        .find(|m| m.id == backup_id && path.contains(m.timeline, m.stop_lsn))
    else {
        return Ok(None);
    };
    let first = size.segment_of(backup.start_lsn);
    let last = path.archived_from(state, first);
    let Some(last) = last.filter(|last| *last >= size.segment_before(backup.stop_lsn)) else {
        return Ok(None);
    };
    let scan = Scan {
        state,
        path: &path,
        backup,
    };
    Ok(Some(Reach {
        last_wal: path.name(last),
        end_lsn: size.segment_start(last + 1),
        newest_time: scan.newest_covered_time(last)?,
    }))
}

/// Whether `pitr recover --target-name <point's name>` (on the latest timeline, the default)
/// recovers to `point`, or why not.
pub fn reaches_restore_point(state: &RepoState, point: &RestorePoint) -> std::result::Result<(), String> {
    let by_name = |timeline| Request {
        target: Target::Name(point.name.clone()),
        exclusive: false,
        before: false,
        timeline,
        backup: None,
    };
    let latest = latest_timeline(state);
    let size = state.segment_size.ok_or("the repository holds no WAL yet")?;
    let path = Path::to(state, latest, size).map_err(|e| e.to_string())?;
    if !path.contains(point.timeline, point.lsn) {
        plan(state, &by_name(TimelineChoice::Number(point.timeline))).map_err(|e| e.to_string())?;
        return Err(format!(
            "it is not on the way to the latest timeline {latest}: recover with --timeline {}",
            point.timeline
        ));
    }
    plan(state, &by_name(TimelineChoice::Latest)).map_err(|e| e.to_string())?;
    match state
        .restore_points
        .iter()
        .find(|p| p.name == point.name && path.contains(p.timeline, p.lsn))
    {
        Some(first) if first != point => Err(format!(
            "recovery stops at the earlier restore point of the same name ({} on timeline {}): recover to this              one with --target-lsn {}",
            first.lsn, first.timeline, point.lsn
        )),
        _ => Ok(()),
    }
}

/// The highest timeline the archive knows (by segments or history files).
fn latest_timeline(state: &RepoState) -> TimelineId {
    let by_segments = state.segments.newest_timeline().unwrap_or(1);
    let by_history = state.histories.keys().copied().max().unwrap_or(1);
    by_segments.max(by_history)
}

/// The timelines from 1 to the target, each with where it ended.
struct Path {
    steps: Vec<(TimelineId, Option<Lsn>)>,
    size: SegmentSize,
}

impl Path {
    fn to(state: &RepoState, target: TimelineId, size: SegmentSize) -> Result<Path> {
        if target == 1 {
            return Ok(Path {
                steps: vec![(1, None)],
                size,
            });
        }
        let history = state.histories.get(&target).ok_or_else(|| {
            Error::Refused(format!(
                "timeline {target} has no history file ({target:08X}.history) in the repository: it cannot be \
                 followed"
            ))
        })?;
        let mut steps: Vec<(TimelineId, Option<Lsn>)> =
            history.iter().map(|s| (s.parent, Some(s.switchpoint))).collect();
        steps.push((target, None));
        Ok(Path { steps, size })
    }

    /// The segment `segno` as read when following the path: a segment holding a switch point
    /// is read from the child timeline, whose copy continues past it.
    fn segment(&self, segno: u64) -> Segment {
        Segment {
            timeline: self.step_of(segno).0,
            segno,
        }
    }

    /// The timeline segment `segno` is read from, and the first segment number after it that
    /// is read from another (`None`: the target timeline, read to the end).
    fn step_of(&self, segno: u64) -> (TimelineId, Option<u64>) {
        self.steps
            .iter()
            .map(|(t, end)| (*t, end.map(|end| self.size.segment_of(end))))
            .find(|(_, bound)| bound.is_none_or(|bound| segno < bound))
            .unwrap_or((self.steps[self.steps.len() - 1].0, None))
    }

    /// The last segment recovery reads from segment `first` on without a gap, when `first` is
    /// archived: as far as each timeline's archived segments run without a gap, until the path
    /// switches to the next timeline.
    fn archived_from(&self, state: &RepoState, first: u64) -> Option<u64> {
        let mut last = None;
        let mut segno = first;
        loop {
            let (timeline, bound) = self.step_of(segno);
            let Some(end) = state.segments.run_end(timeline, segno) else {
                return last;
            };
            let end = bound.map_or(end, |bound| end.min(bound - 1));
            last = Some(end);
            segno = end + 1;
        }
    }

    fn name(&self, segno: u64) -> String {
        self.segment(segno).file_name(self.size)
    }

    fn archived(&self, state: &RepoState, segno: u64) -> bool {
        let segment = self.segment(segno);
        state.segments.contains(segment.timeline, segno)
    }

    /// Whether `lsn` on `timeline` lies on the path.
    fn contains(&self, timeline: TimelineId, lsn: Lsn) -> bool {
        self.steps
            .iter()
            .any(|(t, end)| *t == timeline && end.is_none_or(|end| lsn < end))
    }

    /// The newest archived segment on the path: of each step's timeline, the newest among the
    /// numbers the path reads from it (from the end of the steps before, to its own end).
    fn newest_archived(&self, state: &RepoState) -> Option<u64> {
        let mut from = 0;
        let mut newest = None;
        for (timeline, end) in &self.steps {
            let below = end.map(|end| self.size.segment_of(end));
            if below.is_none_or(|below| below > from) {
                newest = newest.max(state.segments.newest_in(*timeline, from, below));
            }
            from = from.max(below.unwrap_or(u64::MAX));
        }
        newest
    }

    /// The records of segment `segno` when it is archived.
    fn summary(&self, state: &RepoState, segno: u64) -> Result<Option<Arc<SegmentSummary>>> {
        let Some((segment, next)) = self.summary_key(state, segno) else {
            return Ok(None);
        };
        state.records.summary(segment, next, self.size).map(Some)
    }

    /// Segment `segno` on the path and the archived one after it, whose records a summary of
    /// it reads; `None` when `segno` is not archived.
    fn summary_key(&self, state: &RepoState, segno: u64) -> Option<(Segment, Option<Segment>)> {
        if !self.archived(state, segno) {
            return None;
        }
        let next = self.archived(state, segno + 1).then(|| self.segment(segno + 1));
        Some((self.segment(segno), next))
    }
}

/// The LSN the target stands for, when it is known before replay.
fn target_lsn(state: &RepoState, target: &Target, path: &Path, notes: &mut Vec<String>) -> Result<Option<Lsn>> {
    match target {
        Target::Lsn(lsn) => Ok(Some(*lsn)),
        Target::Name(name) => {
            let matches: Vec<&RestorePoint> = state.restore_points.iter().filter(|p| &p.name == name).collect();
            let point = matches
                .iter()
                .find(|p| path.contains(p.timeline, p.lsn))
                .ok_or_else(|| {
                    let known = if matches.is_empty() {
                        "not in the repository's catalog"
                    } else {
                        "not on this timeline"
                    };
                    Error::Refused(format!(
                        "restore point '{name}' is {known}; `pitr list restore-points` shows the recorded ones \
                         (points created with SQL directly are not recorded: recover to their time or LSN)"
                    ))
                })?;
            if matches.len() > 1 {
                notes.push(format!(
                    "{} restore points are named '{name}'; PostgreSQL stops at the first one after the backup",
                    matches.len()
                ));
            }
            Ok(Some(point.lsn))
        }
        Target::Time { time, assumed_utc } => {
            if *assumed_utc {
                notes.push(format!("the target time has no time zone: taken as UTC ({time})"));
            }
            Ok(None)
        }
        Target::Xid(_) | Target::Immediate | Target::Latest => Ok(None),
    }
}

/// The newest backup on the path whose consistency point is at or before the target.
fn choose_backup<'a>(
    state: &'a RepoState,
    request: &Request,
    path: &Path,
    target_lsn: Option<Lsn>,
) -> Result<&'a ManifestSummary> {
    let usable = |m: &&ManifestSummary| path.contains(m.timeline, m.stop_lsn);
    if let Some(id) = &request.backup {
        let backup = state.backups.iter().find(|m| &m.id == id).ok_or_else(|| {
            Error::Refused(format!(
                "no backup '{id}' in the repository; `pitr list` shows the backups"
            ))
        })?;
        if !usable(&backup) {
            return Err(Error::Refused(format!(
                "backup {id} (timeline {}) is not on the way to the target timeline",
                backup.timeline
            )));
        }
        return Ok(backup);
    }
    let before_target = |m: &&ManifestSummary| match (&request.target, target_lsn) {
        (_, Some(lsn)) => m.stop_lsn <= lsn,
        (Target::Time { time, .. }, None) => m.stop_time <= *time,
        (Target::Xid(xid), None) => m.next_xid.is_none_or(|next| next <= *xid),
        _ => true,
    };
    let candidates: Vec<&ManifestSummary> = state.backups.iter().filter(usable).collect();
    candidates
        .iter()
        .rev()
        .find(|m| before_target(m))
        .copied()
        .ok_or_else(|| {
            let oldest = candidates.first().map_or("none".to_string(), |m| {
                format!(
                    "{} (consistent at {} / {})",
                    m.id,
                    m.stop_time.format("%Y-%m-%d %H:%M:%S UTC"),
                    m.stop_lsn
                )
            });
            Error::Refused(format!(
                "no backup is consistent before the target {}: the oldest usable backup is {oldest}; \
                 the recoverable window starts at its consistency point",
                request.target
            ))
        })
}

fn check_not_before_backup(backup: &ManifestSummary, target: &Target, target_lsn: Option<Lsn>) -> Result<()> {
    let too_early = match (target, target_lsn) {
        (_, Some(lsn)) => lsn < backup.stop_lsn,
        (Target::Time { time, .. }, None) => *time < backup.stop_time,
        _ => false,
    };
    if too_early {
        return Err(Error::Refused(format!(
            "the target {target} is before the consistency point of backup {} ({} / {}): choose an older backup \
             or a later target",
            backup.id,
            backup.stop_time.format("%Y-%m-%d %H:%M:%S UTC"),
            backup.stop_lsn
        )));
    }
    Ok(())
}

/// Where recovery stops: the last segment it reads, and the target PostgreSQL is told.
struct Stop {
    last: u64,
    target: Target,
    exclusive: bool,
    /// The commit a `--before` target stops just before.
    before: Option<Mark>,
}

/// The archived WAL on the way from one backup along one path.
struct Scan<'a, 'r> {
    state: &'a RepoState<'r>,
    path: &'a Path,
    backup: &'a ManifestSummary,
}

impl Scan<'_, '_> {
    fn size(&self) -> SegmentSize {
        self.path.size
    }

    /// The segment holding the end of the record that stops recovery at the requested target.
    fn stop(&self, request: &Request, target_lsn: Option<Lsn>, notes: &mut Vec<String>) -> Result<Stop> {
        let size = self.size();
        let consistent = size.segment_before(self.backup.stop_lsn);
        let as_asked = |last: u64| Stop {
            last: last.max(consistent),
            target: request.target.clone(),
            exclusive: request.exclusive,
            before: None,
        };
        if request.before {
            return self.stop_before(request, target_lsn).map(|(last, mark)| Stop {
                before: Some(mark),
                ..as_asked(last)
            });
        }
        match (&request.target, target_lsn) {
            (Target::Immediate, _) => Ok(as_asked(consistent)),
            (Target::Latest, _) => Ok(as_asked(self.path.newest_archived(self.state).unwrap_or(consistent))),
            // A restore point's LSN is the end of its record: recovery stops right after it.
            (Target::Name(_), Some(end)) => {
                let last = size.segment_before(end);
                if self.path.newest_archived(self.state).is_none_or(|newest| last > newest) {
                    return Err(self.beyond(&request.target));
                }
                Ok(as_asked(last))
            }
            (Target::Time { time, .. }, None) => self.stop_at_time(request, *time, notes),
            (Target::Xid(xid), None) => self.stop_at_transaction(request, *xid).map(|(last, _)| as_asked(last)),
            (_, Some(lsn)) => match self.record_at_or_after(lsn)? {
                Some(last) => Ok(as_asked(last)),
                None => Err(self.beyond(&request.target)),
            },
            (_, None) => unreachable!("only name and LSN targets have an LSN"),
        }
    }

    /// `--before`: the commit of the transaction asked for, by xid or by its commit record's LSN,
    /// and the segment holding that record's end (recovery reads it to stop before it).
    fn stop_before(&self, request: &Request, target_lsn: Option<Lsn>) -> Result<(u64, Mark)> {
        let (last, mark) = match (&request.target, target_lsn) {
            (Target::Xid(xid), None) => self.stop_at_transaction(request, *xid)?,
            (Target::Lsn(_), Some(lsn)) => self.commit_at(lsn)?,
            (other, _) => {
                return Err(Error::InvalidInput(format!(
                    "--before takes a transaction id or a commit's LSN, not {other}"
                )))
            }
        };
        match mark.kind {
            MarkKind::Commit { .. } => Ok((last, mark)),
            _ => Err(Error::Refused(format!(
                "transaction {} rolled back at {} ({}): it changed nothing, there is nothing to stop before; \
                 `pitr wal events` lists the committed transactions",
                mark.kind.transaction().unwrap_or_default(),
                mark.time.format("%Y-%m-%d %H:%M:%S%.6f UTC"),
                mark.lsn
            ))),
        }
    }

    /// The transaction end whose record starts exactly at `lsn`, with the segment holding its end.
    fn commit_at(&self, lsn: Lsn) -> Result<(u64, Mark)> {
        for mark in self.marks() {
            let mark = mark?;
            if mark.lsn == lsn && mark.kind.transaction().is_some() {
                return Ok((self.size().segment_before(mark.end), mark));
            }
            if mark.lsn > lsn {
                break;
            }
        }
        Err(Error::Refused(format!(
            "no commit record starts at {lsn} in the archived WAL after backup {}: give the commit LSN (or the \
             xid) `pitr wal events` shows",
            self.backup.id
        )))
    }

    fn beyond(&self, target: &Target) -> Error {
        let newest = self.path.newest_archived(self.state);
        let newest = newest.map_or("none".to_string(), |segno| {
            format!(
                "{}, which ends at {}",
                self.path.name(segno),
                self.size().segment_start(segno + 1)
            )
        });
        Error::Refused(format!(
            "the target {target} is after the newest archived WAL ({newest}): recovery would end before \
             reaching it; wait for archiving, or use --target latest to replay everything archived"
        ))
    }

    /// The segments from the backup's start on, as long as they are archived, with their
    /// records; `Err` with the first missing segment when a later one is archived (a gap).
    fn forward(&self) -> impl Iterator<Item = Result<(u64, Arc<SegmentSummary>)>> + '_ {
        let first = self.size().segment_of(self.backup.start_lsn);
        let ahead = self.state.records.read_ahead_width();
        (first..).map_while(move |segno| {
            if ahead > 1 && (segno - first).is_multiple_of(ahead) {
                // The scan goes on segment by segment: summarize the next few at once.
                let keys: Vec<_> = (segno..segno + ahead)
                    .map_while(|s| self.path.summary_key(self.state, s))
                    .collect();
                self.state.records.read_ahead(&keys, self.size());
            }
            self.step(segno)
        })
    }

    /// One step of [`Scan::forward`].
    fn step(&self, segno: u64) -> Option<Result<(u64, Arc<SegmentSummary>)>> {
        match self.path.summary(self.state, segno) {
            Ok(Some(summary)) => Some(Ok((segno, summary))),
            Ok(None) if self.path.newest_archived(self.state).is_some_and(|n| n > segno) => {
                Some(Err(self.missing(segno)))
            }
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn missing(&self, segno: u64) -> Error {
        let first = self.size().segment_of(self.backup.start_lsn);
        Error::Refused(format!(
            "WAL segment {} is missing from the archive: recovery from backup {} reads every segment from {} on \
             to reach the target",
            self.path.name(segno),
            self.backup.id,
            self.path.name(first)
        ))
    }

    /// The marks PostgreSQL replays from this backup on, in LSN order.
    fn marks(&self) -> impl Iterator<Item = Result<Mark>> + '_ {
        let start = self.backup.start_lsn;
        self.forward().flat_map(move |segment| {
            let marks: Vec<Result<Mark>> = match segment {
                Ok((_, summary)) => summary
                    .marks
                    .iter()
                    .filter(|m| m.lsn >= start)
                    .cloned()
                    .map(Ok)
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            marks
        })
    }

    /// A time target stops before the first commit or abort after it (at or after it with
    /// `exclusive`). Without one in the archive, a record at or after the time that follows the
    /// newest commit proves the state at the time is the state at that record.
    fn stop_at_time(&self, request: &Request, time: DateTime<Utc>, notes: &mut Vec<String>) -> Result<Stop> {
        let stops = |t: DateTime<Utc>| if request.exclusive { t >= time } else { t > time };
        let consistent = self.backup.stop_lsn;
        let mut last_end: Option<Mark> = None;
        let mut cover: Option<Mark> = None;
        let mut newest: Option<DateTime<Utc>> = None;
        for mark in self.marks() {
            let mark = mark?;
            let ends_transaction = mark.kind.transaction().is_some();
            if ends_transaction && stops(mark.time) {
                return Ok(Stop {
                    last: self.size().segment_before(mark.end),
                    target: request.target.clone(),
                    exclusive: request.exclusive,
                    before: None,
                });
            }
            if ends_transaction {
                last_end = Some(mark.clone());
                cover = None;
                newest = None;
            }
            if mark.lsn >= consistent {
                newest = newest.max(Some(mark.time));
                if cover.is_none() && mark.time >= time {
                    cover = Some(mark);
                }
            }
        }
        let Some(cover) = cover else {
            return Err(self.not_yet_archived(time, last_end.as_ref(), newest));
        };
        notes.push(format!(
            "no commit after {} is archived yet, but the {} at {} ({}) shows the archive covers it: recovery \
             stops after that record (recovery_target_lsn {}, inclusive), the same state",
            time.format("%Y-%m-%d %H:%M:%S%.6f UTC"),
            cover.kind.describe(),
            cover.time.format("%Y-%m-%d %H:%M:%S%.6f UTC"),
            cover.lsn,
            cover.lsn
        ));
        Ok(Stop {
            last: self.size().segment_before(cover.end),
            target: Target::Lsn(cover.lsn),
            exclusive: false,
            before: None,
        })
    }

    fn not_yet_archived(&self, time: DateTime<Utc>, last_end: Option<&Mark>, newest: Option<DateTime<Utc>>) -> Error {
        let utc = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string();
        let newest_commit = match last_end {
            Some(mark) => format!(
                "the newest commit in the archived WAL is at {} ({})",
                utc(mark.time),
                mark.lsn
            ),
            None => format!("no commit is archived after backup {} was taken", self.backup.id),
        };
        let choose = match newest {
            Some(newest) => format!("choose a time up to {}", utc(newest)),
            None => "use --target immediate".to_string(),
        };
        Error::Refused(format!(
            "{newest_commit}; the archive does not yet show {}: recovery would end before reaching it; wait for \
             archiving, or {choose}",
            utc(time)
        ))
    }

    /// A transaction target stops at that transaction's commit or abort.
    fn stop_at_transaction(&self, request: &Request, xid: u64) -> Result<(u64, Mark)> {
        let wanted = xid as u32;
        let mut newest: Option<u32> = None;
        for segment in self.forward() {
            let (_, summary) = segment?;
            if let Some(end) = summary
                .marks
                .iter()
                .find(|m| m.lsn >= self.backup.start_lsn && m.kind.transaction() == Some(wanted))
            {
                return Ok((self.size().segment_before(end.end), end.clone()));
            }
            if let Some(n) = summary.newest_xid {
                newest = Some(newest.map_or(n, |old| newer_xid(old, n)));
            }
        }
        let full = |x: u32| full_xid(self.backup.next_xid, x);
        let reason = match newest {
            Some(n) if newer_xid(n, wanted) == wanted => format!(
                "is after the newest transaction in the archived WAL ({}): it has not started yet, or its WAL is \
                 not archived yet",
                full(n)
            ),
            Some(n) => format!(
                "has no commit or abort record in the archived WAL (the newest transaction there is {}): it is \
                 still running, or it ended in WAL not archived yet",
                full(n)
            ),
            None => "has no commit or abort record in the archived WAL: no transaction wrote WAL after the backup"
                .to_string(),
        };
        Err(Error::Refused(format!(
            "the target {} {reason}; wait for archiving, or choose a transaction that ended",
            request.target
        )))
    }

    /// The segment holding the end of the first record at or after `lsn` (PostgreSQL reads
    /// that record to stop before or after it), or `None` when it is not archived.
    fn record_at_or_after(&self, lsn: Lsn) -> Result<Option<u64>> {
        let size = self.size();
        let first = size.segment_of(lsn);
        for segno in first.. {
            let Some(summary) = self.path.summary(self.state, segno)? else {
                if self
                    .path
                    .newest_archived(self.state)
                    .is_some_and(|newest| newest > segno)
                {
                    return Err(self.missing(segno));
                }
                return Ok(None);
            };
            let candidate = if segno == first {
                match (summary.before_last, summary.last) {
                    (Some(before_last), _) if lsn <= before_last => return Ok(Some(segno)),
                    (_, Some(last)) if lsn <= last.lsn => Some(last),
                    _ => None,
                }
            } else {
                summary.first
            };
            if let Some(record) = candidate {
                return Ok(Some(size.segment_before(record.end)));
            }
        }
        unreachable!("segment numbers do not run out")
    }

    /// The newest time a time target is accepted, reading back from segment `last`: the newest
    /// time of the newest commit or abort and the records after it (from the consistency point on).
    fn newest_covered_time(&self, last: u64) -> Result<Option<DateTime<Utc>>> {
        let consistent = self.backup.stop_lsn;
        let mut newest = None;
        for segno in (self.size().segment_of(consistent)..=last).rev() {
            let Some(summary) = self.path.summary(self.state, segno)? else {
                break;
            };
            for mark in summary.marks.iter().rev() {
                if mark.lsn < consistent {
                    return Ok(newest);
                }
                newest = newest.max(Some(mark.time));
                if mark.kind.transaction().is_some() {
                    return Ok(newest);
                }
            }
        }
        Ok(newest)
    }
}

/// The 64-bit transaction id (with epoch) of `xid`, the one nearest to `near` (the backup's
/// next transaction id), for messages.
fn full_xid(near: Option<u64>, xid: u32) -> u64 {
    let Some(near) = near else {
        return u64::from(xid);
    };
    let delta = i64::from(xid.wrapping_sub(near as u32) as i32);
    near.saturating_add_signed(delta)
}

/// Every segment from the backup's start to `last` must be archived.
fn check_continuity(state: &RepoState, path: &Path, first: u64, last: u64, backup: &ManifestSummary) -> Result<()> {
    match (first..=last).find(|s| !path.archived(state, *s)) {
        None => Ok(()),
        Some(segno) => Err(Error::Refused(format!(
            "WAL segment {} is missing from the archive: recovery from backup {} needs every segment from {} to {}",
            path.name(segno),
            backup.id,
            path.name(first),
            path.name(last)
        ))),
    }
}

#[cfg(test)]
mod tests;
