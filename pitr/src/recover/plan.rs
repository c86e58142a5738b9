//! The recovery plan, decided before anything is touched: which backup, which timeline path,
//! which WAL segments (all present, or the first missing one is named now rather than after an
//! hour of replay), and whether the target is reachable at all.
//!
//! [`plan`] is a pure function of the repository's state, so it is tested without a server.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::target::Target;
use crate::backup::manifest::Manifest;
use crate::error::{Error, Result};
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
pub struct RepoState {
    /// Finished backups.
    pub backups: Vec<Manifest>,
    /// Archived segments: (timeline, segment number) → when archived.
    pub segments: HashMap<(TimelineId, u64), SystemTime>,
    /// Parsed history files by timeline.
    pub histories: BTreeMap<TimelineId, Vec<TimelineSwitch>>,
    /// Recorded restore points.
    pub restore_points: Vec<RestorePoint>,
    /// The WAL segment size.
    pub segment_size: Option<SegmentSize>,
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The target.
    pub target: Target,
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
    /// Its consistency point.
    pub backup_stop_lsn: Lsn,
    /// When it became consistent.
    pub backup_stop_time: DateTime<Utc>,
    /// The target, as PostgreSQL will be told.
    pub target: Target,
    /// The target timeline.
    pub timeline: TimelineChoice,
    /// Timelines replayed, oldest first.
    pub timeline_path: Vec<TimelineStep>,
    /// The first WAL segment replayed.
    pub first_wal: String,
    /// The last WAL segment that must be in the archive to reach the target.
    pub last_wal: String,
    /// How many segments that is.
    pub wal_segments: u64,
    /// Bytes the restore writes.
    pub restore_bytes: u64,
    /// Things the operator should read.
    pub notes: Vec<String>,
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
    let path = timeline_path(state, target_timeline)?;
    let mut notes = Vec::new();
    let target_lsn = target_lsn(state, &request.target, &path, &mut notes)?;
    let backup = choose_backup(state, request, &path, target_lsn)?;
    check_not_before_backup(backup, &request.target, target_lsn)?;

    let first = size.segment_of(backup.start_lsn);
    let last = last_needed_segment(state, size, &request.target, &path, backup, target_lsn)?;
    check_continuity(state, size, &path, first, last, backup)?;
    Ok(Plan {
        backup_id: backup.id.clone(),
        backup_tier: backup.tier,
        backup_stop_lsn: backup.stop_lsn,
        backup_stop_time: backup.stop_time,
        target: request.target.clone(),
        timeline: request.timeline,
        timeline_path: path
            .iter()
            .map(|(t, e)| TimelineStep {
                timeline: *t,
                ends_at: *e,
            })
            .collect(),
        first_wal: segment_name(&path, size, first),
        last_wal: segment_name(&path, size, last),
        wal_segments: last + 1 - first,
        restore_bytes: backup.original_bytes,
        notes,
    })
}

/// The highest timeline the archive knows (by segments or history files).
fn latest_timeline(state: &RepoState) -> TimelineId {
    let by_segments = state.segments.keys().map(|(t, _)| *t).max().unwrap_or(1);
    let by_history = state.histories.keys().copied().max().unwrap_or(1);
    by_segments.max(by_history)
}

/// The timelines from 1 to `target`, each with where it ended.
fn timeline_path(state: &RepoState, target: TimelineId) -> Result<Vec<(TimelineId, Option<Lsn>)>> {
    if target == 1 {
        return Ok(vec![(1, None)]);
    }
    let history = state.histories.get(&target).ok_or_else(|| {
        Error::Refused(format!(
            "timeline {target} has no history file ({target:08X}.history) in the repository: it cannot be followed"
        ))
    })?;
    let mut path: Vec<(TimelineId, Option<Lsn>)> = history.iter().map(|s| (s.parent, Some(s.switchpoint))).collect();
    path.push((target, None));
    Ok(path)
}

/// The timeline a segment is read from when following `path`: a segment holding a switch
/// point is read from the child timeline, whose copy continues past it.
fn timeline_of_segment(path: &[(TimelineId, Option<Lsn>)], size: SegmentSize, segno: u64) -> TimelineId {
    path.iter()
        .find(|(_, end)| end.is_none_or(|end| segno < size.segment_of(end)))
        .map_or(path[path.len() - 1].0, |(t, _)| *t)
}

fn segment_name(path: &[(TimelineId, Option<Lsn>)], size: SegmentSize, segno: u64) -> String {
    Segment {
        timeline: timeline_of_segment(path, size, segno),
        segno,
    }
    .file_name(size)
}

/// Whether `lsn` on `timeline` lies on the path.
fn on_path(path: &[(TimelineId, Option<Lsn>)], timeline: TimelineId, lsn: Lsn) -> bool {
    path.iter()
        .any(|(t, end)| *t == timeline && end.is_none_or(|end| lsn < end))
}

/// The LSN the target stands for, when it is known before replay.
fn target_lsn(
    state: &RepoState,
    target: &Target,
    path: &[(TimelineId, Option<Lsn>)],
    notes: &mut Vec<String>,
) -> Result<Option<Lsn>> {
    match target {
        Target::Lsn(lsn) => Ok(Some(*lsn)),
        Target::Name(name) => {
            let matches: Vec<&RestorePoint> = state.restore_points.iter().filter(|p| &p.name == name).collect();
            let point = matches
                .iter()
                .find(|p| on_path(path, p.timeline, p.lsn))
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
    path: &[(TimelineId, Option<Lsn>)],
    target_lsn: Option<Lsn>,
) -> Result<&'a Manifest> {
    let usable = |m: &&Manifest| on_path(path, m.timeline, m.stop_lsn);
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
    let before_target = |m: &&Manifest| match (&request.target, target_lsn) {
        (_, Some(lsn)) => m.stop_lsn <= lsn,
        (Target::Time { time, .. }, None) => m.stop_time <= *time,
        (Target::Xid(xid), None) => m.next_xid.is_none_or(|next| next <= *xid),
        _ => true,
    };
    let candidates: Vec<&Manifest> = state.backups.iter().filter(usable).collect();
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

fn check_not_before_backup(backup: &Manifest, target: &Target, target_lsn: Option<Lsn>) -> Result<()> {
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

/// The newest archived segment on the path.
fn last_archived(state: &RepoState, path: &[(TimelineId, Option<Lsn>)], size: SegmentSize) -> Option<u64> {
    state
        .segments
        .keys()
        .filter(|(t, segno)| timeline_of_segment(path, size, *segno) == *t)
        .map(|(_, segno)| *segno)
        .max()
}

/// The last segment that must be archived to reach the target, refusing targets beyond the archive.
fn last_needed_segment(
    state: &RepoState,
    size: SegmentSize,
    target: &Target,
    path: &[(TimelineId, Option<Lsn>)],
    backup: &Manifest,
    target_lsn: Option<Lsn>,
) -> Result<u64> {
    let consistent = size.segment_before(backup.stop_lsn);
    let newest = last_archived(state, path, size).unwrap_or(consistent);
    let beyond = |what: String| {
        Error::Refused(format!(
            "the target {target} is after the newest archived WAL ({}, {what}): recovery would end before \
             reaching it; wait for archiving, or use --target latest to replay everything archived",
            segment_name(path, size, newest)
        ))
    };
    let last = match (target, target_lsn) {
        (Target::Immediate, _) => consistent,
        (_, Some(lsn)) => {
            let end = size.segment_start(newest + 1);
            if lsn >= end {
                return Err(beyond(format!("which ends at {end}")));
            }
            size.segment_of(lsn)
        }
        (Target::Time { time, .. }, None) => {
            let archived_at = |segno| {
                let key = (timeline_of_segment(path, size, segno), segno);
                state.segments.get(&key).map(|t| DateTime::<Utc>::from(*t))
            };
            let newest_time = archived_at(newest).unwrap_or(backup.stop_time);
            if *time > newest_time {
                return Err(beyond(format!(
                    "archived at {}",
                    newest_time.format("%Y-%m-%d %H:%M:%S UTC")
                )));
            }
            // Commits up to the target are in segments archived at or after it: stop at the first.
            (consistent..=newest)
                .find(|s| archived_at(*s).is_some_and(|t| t >= *time))
                .unwrap_or(newest)
        }
        _ => newest,
    };
    Ok(last.max(consistent))
}

/// Every segment from the backup's start to `last` must be archived.
fn check_continuity(
    state: &RepoState,
    size: SegmentSize,
    path: &[(TimelineId, Option<Lsn>)],
    first: u64,
    last: u64,
    backup: &Manifest,
) -> Result<()> {
    let missing = (first..=last).find(|s| !state.segments.contains_key(&(timeline_of_segment(path, size, *s), *s)));
    match missing {
        None => Ok(()),
        Some(segno) => Err(Error::Refused(format!(
            "WAL segment {} is missing from the archive: recovery from backup {} needs every segment from {} to {}",
            segment_name(path, size, segno),
            backup.id,
            segment_name(path, size, first),
            segment_name(path, size, last)
        ))),
    }
}

#[cfg(test)]
mod tests;
