//! What the repository offers now, for `pitr info` and `pitr verify`: the recoverable window per
//! timeline ("you can recover to any moment between X and Y"), the backups per tier with their
//! ages, the WAL archive's size and newest segment, and the restore points.
//!
//! [`Holdings`] reads the repository once and keeps what cannot be read as its error, so that
//! verification can name it and go on. The windows come from the recovery planner itself, so
//! what `info` promises is exactly what `pitr recover` accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup::manifest::Manifest;
use crate::backup::{scan_catalog, CatalogEntry, Tier};
use crate::codec;
use crate::error::{Error, Result};
use crate::recover::{self, RepoState, Request, Target, TimelineChoice};
use crate::repo::{Repo, RepoInfo};
use crate::restore_point::{self, RestorePoint};
use crate::timeline::TimelinePath;
use crate::wal::{parse_history, Lsn, Segment, SegmentSize, TimelineId, TimelineSwitch, WalFileName};

/// One archived WAL file as listed.
#[derive(Debug, Clone, Copy)]
pub struct ArchivedFile {
    /// Its name.
    pub name: WalFileName,
    /// Size of the stored object.
    pub stored_bytes: u64,
    /// When it was archived.
    pub archived_at: SystemTime,
}

/// Everything the repository holds, read once; what cannot be read is kept as its error.
pub struct Holdings {
    /// Where the repository is.
    pub location: String,
    /// The recorded cluster (`None` for a repository nothing was written to).
    pub info: Option<RepoInfo>,
    /// Every backup with a manifest, readable or not.
    pub catalog: Vec<CatalogEntry>,
    /// Every archived WAL file.
    pub wal: Vec<ArchivedFile>,
    /// Every timeline history file, parsed or why not.
    pub histories: BTreeMap<TimelineId, Result<Vec<TimelineSwitch>>>,
    /// The restore point catalog, or why it cannot be read.
    pub restore_points: Result<Vec<RestorePoint>>,
}

impl Holdings {
    /// Lists the repository: manifests, WAL files with their sizes and archive times, history
    /// files, restore points.
    pub fn read(repo: &Repo) -> Result<Holdings> {
        let mut wal = Vec::new();
        for name in repo.list_wal()? {
            // A file expired between listing and looking is simply gone.
            if let Some(meta) = repo.head_wal(&name)? {
                wal.push(ArchivedFile {
                    name,
                    stored_bytes: meta.size,
                    archived_at: meta.modified,
                });
            }
        }
        let histories = wal
            .iter()
            .filter_map(|f| match f.name {
                WalFileName::History(timeline) => Some((timeline, read_history(repo, &f.name))),
                _ => None,
            })
            .collect();
        Ok(Holdings {
            location: repo.location(),
            info: repo.info()?,
            catalog: scan_catalog(repo)?,
            wal,
            histories,
            restore_points: restore_point::catalog(repo),
        })
    }

    /// The WAL segment size, once the repository knows its cluster.
    pub fn segment_size(&self) -> Option<SegmentSize> {
        self.info.and_then(|i| SegmentSize::new(i.wal_segment_size))
    }

    /// The backups whose manifest reads, oldest first by stop time.
    pub fn backups(&self) -> Vec<&Manifest> {
        let mut backups: Vec<&Manifest> = self.catalog.iter().filter_map(|e| e.manifest.as_ref().ok()).collect();
        backups.sort_by_key(|m| m.stop_time);
        backups
    }

    /// Archived segments (not `.partial` files): (timeline, segment number) → when archived.
    pub fn segments(&self) -> BTreeMap<(TimelineId, u64), SystemTime> {
        let Some(size) = self.segment_size() else {
            return BTreeMap::new();
        };
        self.wal
            .iter()
            .filter_map(|f| match f.name {
                WalFileName::Segment(name) => name.segment(size).map(|s| ((s.timeline, s.segno), f.archived_at)),
                _ => None,
            })
            .collect()
    }

    /// The history files that parse.
    pub fn readable_histories(&self) -> BTreeMap<TimelineId, Vec<TimelineSwitch>> {
        self.histories
            .iter()
            .filter_map(|(timeline, history)| Some((*timeline, history.as_ref().ok()?.clone())))
            .collect()
    }

    /// The newest archived segment on the path to `timeline` (default: the newest timeline the
    /// archive knows, which `recovery_target_timeline = 'latest'` follows), with when it was
    /// archived. Segments an older timeline went on writing after its end are not on that path.
    pub fn newest_segment(&self, timeline: Option<TimelineId>) -> Option<(Segment, DateTime<Utc>)> {
        let size = self.segment_size()?;
        let path = self.timeline_path(timeline.unwrap_or_else(|| self.newest_timeline()));
        self.segments()
            .into_iter()
            .map(|((timeline, segno), at)| (Segment { timeline, segno }, at))
            .filter(|(segment, _)| path.holds(*segment, size))
            .max_by_key(|(segment, _)| segment.segno)
            .map(|(segment, at)| (segment, at.into()))
    }

    /// The highest timeline the archive knows, by segments or history files.
    pub fn newest_timeline(&self) -> TimelineId {
        let by_segments = self.segments().into_keys().map(|(timeline, _)| timeline).max();
        let by_history = self.histories.keys().copied().max();
        by_segments.max(by_history).unwrap_or(1)
    }

    /// The path to `timeline` by its history file (the timeline alone when that does not read).
    pub fn timeline_path(&self, timeline: TimelineId) -> TimelinePath {
        match self.histories.get(&timeline) {
            Some(Ok(history)) => TimelinePath::new(timeline, history),
            _ => TimelinePath::new(timeline, &[]),
        }
    }

    /// What the recovery planner needs, from what is readable.
    fn planner_state(&self) -> Option<RepoState> {
        Some(RepoState {
            backups: self.backups().into_iter().cloned().collect(),
            segments: self.segments().into_iter().collect(),
            histories: self.readable_histories(),
            restore_points: self.restore_points.as_ref().map(Vec::clone).unwrap_or_default(),
            segment_size: Some(self.segment_size()?),
        })
    }
}

/// Reads and parses one timeline history file.
fn read_history(repo: &Repo, name: &WalFileName) -> Result<Vec<TimelineSwitch>> {
    let what = repo.describe_wal(name);
    let object = repo.get_wal(name)?.ok_or_else(|| Error::Corrupt {
        what: what.clone(),
        reason: "vanished while being read".into(),
    })?;
    let raw = codec::decode(&object, &what)?;
    parse_history(&raw).map_err(|reason| Error::Corrupt { what, reason })
}

/// What `pitr info` shows.
#[derive(Debug, Clone, Serialize)]
pub struct RepoSummary {
    /// Where the repository is.
    pub repository: String,
    /// The cluster it belongs to.
    pub cluster: Option<RepoInfo>,
    /// The recoverable windows per timeline (a gap in the archive splits one in two).
    pub windows: Vec<Window>,
    /// Backups per tier.
    pub tiers: Vec<TierSummary>,
    /// The WAL archive.
    pub archive: ArchiveSummary,
    /// Recorded restore points.
    pub restore_points: Vec<RestorePoint>,
    /// What could not be read.
    pub unreadable: Vec<String>,
}

/// "You can recover to any moment between X and Y" on one timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// The timeline recovered to.
    pub timeline: TimelineId,
    /// The oldest backup it can start from.
    pub from_backup: String,
    /// That backup's consistency point: the earliest moment.
    pub start_time: DateTime<Utc>,
    /// ... as an LSN.
    pub start_lsn: Lsn,
    /// When the newest continuously archived segment was archived: the latest moment.
    pub end_time: DateTime<Utc>,
    /// The end of that segment: WAL up to here is archived.
    pub end_lsn: Lsn,
    /// That segment.
    pub end_wal: String,
}

/// The backups of one tier.
#[derive(Debug, Clone, Serialize)]
pub struct TierSummary {
    /// The tier.
    pub tier: Tier,
    /// Its backups, oldest first.
    pub backups: Vec<BackupAge>,
}

/// One backup and its age.
#[derive(Debug, Clone, Serialize)]
pub struct BackupAge {
    /// The backup id.
    pub id: String,
    /// When it became consistent.
    pub stop_time: DateTime<Utc>,
    /// Seconds since then.
    pub age_seconds: i64,
    /// Bytes it occupies in the repository.
    pub stored_bytes: u64,
}

/// The WAL archive in numbers.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveSummary {
    /// Archived files of every kind.
    pub files: u64,
    /// Archived segments.
    pub segments: u64,
    /// Bytes stored.
    pub stored_bytes: u64,
    /// The newest archived segment on the newest timeline's path (in `verify`, on the path of
    /// the server's timeline).
    pub newest_segment: Option<String>,
    /// When it was archived.
    pub newest_archived_at: Option<DateTime<Utc>>,
}

/// Reads the repository and summarizes it as of `now`.
pub fn info(repo: &Repo, now: DateTime<Utc>) -> Result<RepoSummary> {
    Ok(summarize(&Holdings::read(repo)?, now))
}

/// Summarizes what `holdings` hold as of `now`.
pub fn summarize(holdings: &Holdings, now: DateTime<Utc>) -> RepoSummary {
    summarize_on(holdings, now, None)
}

/// Summarizes what `holdings` hold as of `now`, the newest archived segment on the path to
/// `timeline` (the server's, when known; else the newest timeline).
pub fn summarize_on(holdings: &Holdings, now: DateTime<Utc>, timeline: Option<TimelineId>) -> RepoSummary {
    let newest = holdings.newest_segment(timeline);
    let size = holdings.segment_size().unwrap_or(SegmentSize::DEFAULT);
    RepoSummary {
        repository: holdings.location.clone(),
        cluster: holdings.info,
        windows: holdings.planner_state().map(|s| windows(&s)).unwrap_or_default(),
        tiers: tiers(&holdings.backups(), now),
        archive: ArchiveSummary {
            files: holdings.wal.len() as u64,
            segments: holdings.segments().len() as u64,
            stored_bytes: holdings.wal.iter().map(|f| f.stored_bytes).sum(),
            newest_segment: newest.map(|(segment, _)| segment.file_name(size)),
            newest_archived_at: newest.map(|(_, at)| at),
        },
        restore_points: holdings.restore_points.as_ref().map(Vec::clone).unwrap_or_default(),
        unreadable: unreadable(holdings),
    }
}

fn tiers(backups: &[&Manifest], now: DateTime<Utc>) -> Vec<TierSummary> {
    Tier::ALL
        .into_iter()
        .map(|tier| TierSummary {
            tier,
            backups: backups
                .iter()
                .filter(|m| m.tier == tier)
                .map(|m| BackupAge {
                    id: m.id.clone(),
                    stop_time: m.stop_time,
                    age_seconds: now.signed_duration_since(m.stop_time).num_seconds(),
                    stored_bytes: m.stored_bytes,
                })
                .collect(),
        })
        .collect()
}

fn unreadable(holdings: &Holdings) -> Vec<String> {
    let manifests = holdings.catalog.iter().filter_map(|e| e.manifest.as_ref().err());
    let histories = holdings.histories.values().filter_map(|h| h.as_ref().err());
    let points = holdings.restore_points.as_ref().err();
    manifests.chain(histories).chain(points).map(Error::to_string).collect()
}

/// The windows on every timeline the archive knows.
fn windows(state: &RepoState) -> Vec<Window> {
    let timelines: BTreeSet<TimelineId> = state
        .segments
        .keys()
        .map(|(timeline, _)| *timeline)
        .chain(state.histories.keys().copied())
        .collect();
    timelines.into_iter().flat_map(|t| windows_on(state, t)).collect()
}

/// The windows on `timeline`, oldest first: one from each backup that no earlier window
/// covers, as far as the archive reaches without a gap.
fn windows_on(state: &RepoState, timeline: TimelineId) -> Vec<Window> {
    let mut windows: Vec<Window> = Vec::new();
    for backup in &state.backups {
        if windows.last().is_some_and(|w| backup.stop_lsn <= w.end_lsn) {
            continue;
        }
        windows.extend(window_from(state, timeline, backup));
    }
    windows
}

/// From `backup`'s consistency point to the furthest segment the recovery planner accepts.
fn window_from(state: &RepoState, timeline: TimelineId, backup: &Manifest) -> Option<Window> {
    let size = state.segment_size?;
    let plan_to = |target: Target| {
        let request = Request {
            target,
            timeline: TimelineChoice::Number(timeline),
            backup: Some(backup.id.clone()),
        };
        recover::plan(state, &request).ok().map(|plan| plan.last_wal)
    };
    let last_wal = match plan_to(Target::Latest) {
        Some(last_wal) => last_wal,
        None => {
            let consistent = plan_to(Target::Immediate)?;
            let reach = |segno: u64| plan_to(Target::Lsn(Lsn(size.segment_start(segno + 1).0 - 1)));
            furthest(
                segment_of(&consistent, size)?,
                state.segments.keys().map(|(_, s)| *s).max()?,
                reach,
            )
            .unwrap_or(consistent)
        }
    };
    let end = WalFileName::parse(&last_wal).ok()?.segment_name()?.segment(size)?;
    let archived_at: DateTime<Utc> = (*state.segments.get(&(end.timeline, end.segno))?).into();
    Some(Window {
        timeline,
        from_backup: backup.id.clone(),
        start_time: backup.stop_time,
        start_lsn: backup.stop_lsn,
        // The last segment a backup needs is archived before pg_backup_stop returns.
        end_time: archived_at.max(backup.stop_time),
        end_lsn: size.segment_start(end.segno + 1),
        end_wal: last_wal,
    })
}

/// The last segment after `reachable` (up to `newest`) that `reach` accepts, by bisection: the
/// planner accepts every segment up to the first gap and none after it.
fn furthest(mut reachable: u64, newest: u64, reach: impl Fn(u64) -> Option<String>) -> Option<String> {
    let (mut unreachable, mut best) = (newest + 1, None);
    while unreachable > reachable + 1 {
        let middle = reachable + (unreachable - reachable) / 2;
        match reach(middle) {
            Some(last_wal) => (reachable, best) = (middle, Some(last_wal)),
            None => unreachable = middle,
        }
    }
    best
}

fn segment_of(name: &str, size: SegmentSize) -> Option<u64> {
    Some(WalFileName::parse(name).ok()?.segment_name()?.segment(size)?.segno)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;
    use crate::backup::manifest::Manifest;

    const SIZE: SegmentSize = SegmentSize::DEFAULT;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 10, minute, 0).unwrap()
    }

    fn backup(id: &str, segno: u64, minute: u32) -> Manifest {
        Manifest::for_test(id, Tier::Daily, 1, segno..=segno, at(minute))
    }

    fn state(segnos: impl IntoIterator<Item = u64>) -> RepoState {
        RepoState {
            backups: vec![backup("b3", 3, 3), backup("b7", 7, 7)],
            segments: segnos
                .into_iter()
                .map(|s| ((1, s), SystemTime::from(at(s as u32)) + Duration::from_secs(30)))
                .collect(),
            segment_size: Some(SIZE),
            ..RepoState::default()
        }
    }

    #[test]
    fn the_window_runs_from_the_oldest_backup_to_the_newest_segment() {
        let w = windows(&state(3..=9));
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].from_backup.as_str(), w[0].start_time), ("b3", at(3)));
        assert_eq!(w[0].end_wal, "000000010000000000000009");
        assert_eq!(w[0].end_lsn, SIZE.segment_start(10));
        assert_eq!(w[0].end_time, at(9) + chrono::TimeDelta::seconds(30));
    }

    #[test]
    fn a_gap_ends_one_window_and_the_next_backup_starts_another() {
        let w = windows(&state([3, 4, 6, 7, 8, 9]));
        let spans: Vec<(&str, &str)> = w.iter().map(|w| (w.from_backup.as_str(), w.end_wal.as_str())).collect();
        assert_eq!(
            spans,
            [("b3", "000000010000000000000004"), ("b7", "000000010000000000000009")],
            "segment 5 is missing"
        );
        assert!(windows(&state([4, 5])).is_empty(), "neither backup has its own WAL");
    }

    #[test]
    fn the_newest_segment_is_on_the_newest_timeline_even_when_an_older_one_went_on() {
        let archived = |name: &str| ArchivedFile {
            name: WalFileName::parse(name).unwrap(),
            stored_bytes: 1,
            archived_at: SystemTime::from(at(0)),
        };
        let switch = TimelineSwitch {
            parent: 1,
            switchpoint: SIZE.segment_start(5),
            reason: String::new(),
        };
        let holdings = Holdings {
            location: "test".into(),
            info: Some(RepoInfo {
                format_version: crate::repo::FORMAT_VERSION,
                pg_version: 15,
                system_identifier: 1,
                wal_segment_size: SIZE.bytes(),
            }),
            catalog: Vec::new(),
            wal: [
                "000000010000000000000004",
                "000000020000000000000005",
                "000000010000000000000009",
            ]
            .map(archived)
            .into(),
            histories: BTreeMap::from([(2, Ok(vec![switch]))]),
            restore_points: Ok(Vec::new()),
        };
        let newest = |timeline| holdings.newest_segment(timeline).map(|(s, _)| s.file_name(SIZE));
        assert_eq!(holdings.newest_timeline(), 2);
        assert_eq!(newest(None).as_deref(), Some("000000020000000000000005"));
        assert_eq!(newest(Some(2)).as_deref(), Some("000000020000000000000005"));
        assert_eq!(newest(Some(1)).as_deref(), Some("000000010000000000000009"));
        assert_eq!(newest(Some(3)), None, "nothing archived on timeline 3 yet");
    }

    #[test]
    fn a_window_never_ends_before_it_starts() {
        let w = windows(&state([3]));
        assert_eq!(
            (w[0].start_time, w[0].end_time),
            (at(3), at(3) + chrono::TimeDelta::seconds(30))
        );
        let mut early = state([7]);
        early.segments.insert((1, 7), SystemTime::from(at(6)));
        let w = windows(&early);
        assert_eq!(
            w[0].end_time, w[0].start_time,
            "archived before pg_backup_stop returned"
        );
    }
}
