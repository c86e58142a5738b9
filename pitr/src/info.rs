//! What the repository offers now, for `pitr info` and `pitr verify`: the recoverable window per
//! timeline ("you can recover to any moment between X and Y"), the backups per tier with their
//! ages, the WAL archive's size and newest segment, and the restore points; for the current
//! generation and, grouped after it, for each earlier one (recovered with its major's binaries).
//!
//! [`Holdings`] reads one generation of the repository once and keeps what cannot be read as its
//! error, so that verification can name it and go on. The windows come from the recovery planner
//! itself, so what `info` promises is exactly what `pitr recover` accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup::manifest::ManifestSummary;
use crate::backup::{read_backup, scan_summaries, CatalogEntry, Tier};
use crate::codec;
use crate::error::{Error, Result};
use crate::recover::{self, ArchivedRecords, ArchivedSegments, Reach, RepoState};
use crate::repo::{Cluster, Generation, Generations, Repo};
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

/// Everything one generation of the repository holds, read once; what cannot be read is kept as
/// its error.
pub struct Holdings<'r> {
    /// The repository, for the WAL records the recoverable windows depend on.
    repo: &'r Repo,
    /// Where the repository is.
    pub location: String,
    /// The generation (`None` for a repository nothing was written to).
    pub generation: Option<Generation>,
    /// The current generation, when this one is an earlier one.
    pub replaced_by: Option<Generation>,
    /// Its cluster (`None` for a repository nothing was written to).
    pub info: Option<Cluster>,
    /// Every backup with a manifest of this generation's cluster, readable or not; with the
    /// current generation, also every backup that belongs to no earlier one (an unreadable
    /// manifest, another cluster's). Summaries: [`Holdings::full_catalog`] reads the manifests
    /// whole.
    pub catalog: Vec<CatalogEntry<ManifestSummary>>,
    /// Every archived WAL file.
    pub wal: Vec<ArchivedFile>,
    /// Every timeline history file, parsed or why not.
    pub histories: BTreeMap<TimelineId, Result<Vec<TimelineSwitch>>>,
    /// The readable restore points of this generation, or why the catalog cannot be listed.
    pub restore_points: Result<Vec<RestorePoint>>,
    /// Why each unreadable restore point record could not be read.
    pub unreadable_restore_points: Vec<Error>,
}

impl<'r> Holdings<'r> {
    /// Lists the generation `repo` acts on (pin it first: [`Repo::pin`], [`Repo::at`]):
    /// manifests, WAL files with their sizes and archive times, history files, restore points.
    pub fn read(repo: &'r Repo) -> Result<Holdings<'r>> {
        let generations = repo.generations()?;
        let generation = repo.generation()?;
        let mine = Belonging {
            generations: generations.as_ref(),
            generation,
        };
        // A file expired between listing and looking is simply gone.
        let wal: Vec<ArchivedFile> = repo
            .list_wal_meta()?
            .into_iter()
            .map(|(name, meta)| ArchivedFile {
                name,
                stored_bytes: meta.size,
                archived_at: meta.modified,
            })
            .collect();
        let histories = wal
            .iter()
            .filter_map(|f| match f.name {
                WalFileName::History(timeline) => Some((timeline, read_history(repo, &f.name))),
                _ => None,
            })
            .collect();
        let mut points = restore_point::read_catalog(repo);
        let unreadable_restore_points = match points.as_mut() {
            Ok(catalog) if mine.is_current() => std::mem::take(&mut catalog.unreadable),
            _ => Vec::new(),
        };
        let mut catalog = scan_summaries(repo)?;
        catalog.retain(|entry| mine.holds_backup(entry));
        Ok(Holdings {
            repo,
            location: repo.location(),
            generation,
            replaced_by: generations
                .as_ref()
                .map(|all| *all.current())
                .filter(|_| !mine.is_current()),
            info: generation.map(|g| g.cluster()),
            catalog,
            wal,
            histories,
            restore_points: points.map(|c| {
                c.points
                    .into_iter()
                    .filter(|p| mine.holds_point(p.generation))
                    .collect()
            }),
            unreadable_restore_points,
        })
    }

    /// The WAL segment size, once the repository knows its cluster.
    pub fn segment_size(&self) -> Option<SegmentSize> {
        self.info.and_then(|i| SegmentSize::new(i.wal_segment_size))
    }

    /// The backups whose manifest reads, oldest first by stop time.
    pub fn backups(&self) -> Vec<&ManifestSummary> {
        let mut backups: Vec<&ManifestSummary> = self.catalog.iter().filter_map(|e| e.manifest.as_ref().ok()).collect();
        backups.sort_by_key(|m| m.stop_time);
        backups
    }

    /// The backups of [`Holdings::catalog`], in its order, read again with their whole manifests
    /// (file lists, and the copy compared): for verification. A backup deleted meanwhile is
    /// left out.
    pub fn full_catalog(&self) -> Result<Vec<CatalogEntry>> {
        let mut full = Vec::with_capacity(self.catalog.len());
        for entry in &self.catalog {
            full.extend(read_backup(self.repo, entry.tier, &entry.id)?);
        }
        Ok(full)
    }

    /// Archived segments (not `.partial` files): (timeline, segment number) → when archived.
    pub fn segments(&self) -> BTreeMap<(TimelineId, u64), SystemTime> {
        self.segment_entries().collect()
    }

    /// [`Holdings::segments`] as the recovery planner looks them up.
    pub fn archived_segments(&self) -> ArchivedSegments {
        self.segment_entries().map(|(key, _)| key).collect()
    }

    fn segment_entries(&self) -> impl Iterator<Item = ((TimelineId, u64), SystemTime)> + '_ {
        let size = self.segment_size();
        self.wal.iter().filter_map(move |f| match f.name {
            WalFileName::Segment(name) => name.segment(size?).map(|s| ((s.timeline, s.segno), f.archived_at)),
            _ => None,
        })
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
        // In the order of the listing, the last of a segment listed twice counts (as in
        // `segments`); one segment per number is on the path.
        self.segment_entries()
            .map(|((timeline, segno), at)| (Segment { timeline, segno }, at))
            .filter(|(segment, _)| path.holds(*segment, size))
            .max_by_key(|(segment, _)| segment.segno)
            .map(|(segment, at)| (segment, at.into()))
    }

    /// The highest timeline the archive knows, by segments or history files.
    pub fn newest_timeline(&self) -> TimelineId {
        let by_segments = self.segment_entries().map(|((timeline, _), _)| timeline).max();
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

    /// What the recovery planner needs, from what is readable; `segments` are
    /// [`Holdings::archived_segments`].
    fn planner_state(&self, segments: ArchivedSegments) -> Option<RepoState<'r>> {
        Some(RepoState {
            backups: self.backups().into_iter().cloned().collect(),
            segments,
            histories: self.readable_histories(),
            restore_points: self.restore_points.as_ref().map(Vec::clone).unwrap_or_default(),
            segment_size: Some(self.segment_size()?),
            records: ArchivedRecords::reading(self.repo),
            generation: self.generation,
            replaced_by: self.replaced_by,
        })
    }
}

/// Which backups and restore points belong to one generation: those of its cluster, and for the
/// current generation also those that belong to no earlier one, so that nothing goes unlisted.
struct Belonging<'g> {
    generations: Option<&'g Generations>,
    generation: Option<Generation>,
}

impl Belonging<'_> {
    fn is_current(&self) -> bool {
        match (self.generations, self.generation) {
            (Some(all), Some(this)) => all.current().generation == this.generation,
            _ => true,
        }
    }

    /// The earlier generation `generation` is, if it is one.
    fn earlier(&self, generation: Option<&Generation>) -> Option<u32> {
        let current = self.generations?.current().generation;
        generation.map(|g| g.generation).filter(|n| *n != current)
    }

    fn holds_backup(&self, entry: &CatalogEntry<ManifestSummary>) -> bool {
        let of_cluster = |sysid| self.generations.and_then(|all| all.of_cluster(sysid));
        let owner = entry
            .manifest
            .as_ref()
            .ok()
            .and_then(|m| self.earlier(of_cluster(m.system_identifier)));
        match owner {
            Some(earlier) => self.generation.is_some_and(|g| g.generation == earlier),
            None => self.is_current(),
        }
    }

    fn holds_point(&self, generation: u32) -> bool {
        let earlier = self.earlier(self.generations.and_then(|all| all.get(generation)));
        match earlier {
            Some(earlier) => self.generation.is_some_and(|g| g.generation == earlier),
            None => self.is_current(),
        }
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

/// What `pitr info` shows: the current generation, and the earlier ones after it.
#[derive(Debug, Clone, Serialize)]
pub struct RepoSummary {
    /// Where the repository is.
    pub repository: String,
    /// The generation summarized.
    pub generation: Option<Generation>,
    /// Its cluster.
    pub cluster: Option<Cluster>,
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
    /// The earlier generations, newest first (recovered with their majors' binaries).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier_generations: Vec<RepoSummary>,
    /// The fingerprints of the recipients an encrypted repository is encrypted for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted_for: Option<Vec<String>>,
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
    /// The latest moment: the newest time `pitr recover --target-time` accepts, which is the
    /// time of the newest commit in the archived WAL or of a later checkpoint or restore point
    /// (`start_time` while the archive shows no moment after the backup's consistency point).
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

/// Reads the repository and summarizes it as of `now`: the current generation, and the earlier
/// ones in `earlier_generations`.
pub fn info(repo: &Repo, now: DateTime<Utc>) -> Result<RepoSummary> {
    let current = repo.pin()?;
    let mut summary = summarize(&Holdings::read(&current)?, now);
    summary.earlier_generations = earlier_generations(repo)?
        .iter()
        .map(|earlier| Ok(summarize(&Holdings::read(earlier)?, now)))
        .collect::<Result<_>>()?;
    summary.encrypted_for = repo.encrypted_for()?;
    Ok(summary)
}

/// The repository pinned to each generation before the current one, newest first.
pub fn earlier_generations(repo: &Repo) -> Result<Vec<Repo>> {
    let Some(generations) = repo.generations()? else {
        return Ok(Vec::new());
    };
    let current = generations.current().generation;
    generations
        .all()
        .iter()
        .rev()
        .filter(|g| g.generation != current)
        .map(|g| repo.at(g.generation))
        .collect()
}

/// Summarizes what `holdings` hold as of `now`.
pub fn summarize(holdings: &Holdings, now: DateTime<Utc>) -> RepoSummary {
    summarize_on(holdings, now, None)
}

/// Summarizes what `holdings` hold as of `now`, the newest archived segment on the path to
/// `timeline` (the server's, when known; else the newest timeline).
pub fn summarize_on(holdings: &Holdings, now: DateTime<Utc>, timeline: Option<TimelineId>) -> RepoSummary {
    let newest = holdings.newest_segment(timeline);
    let segments = holdings.archived_segments();
    let segment_count = segments.len() as u64;
    let size = holdings.segment_size().unwrap_or(SegmentSize::DEFAULT);
    let (windows, unreadable_wal) = holdings
        .planner_state(segments)
        .map(|s| windows(&s))
        .unwrap_or_default();
    let mut unreadable = unreadable(holdings);
    unreadable.extend(unreadable_wal);
    RepoSummary {
        repository: holdings.location.clone(),
        generation: holdings.generation,
        cluster: holdings.info,
        windows,
        tiers: tiers(&holdings.backups(), now),
        archive: ArchiveSummary {
            files: holdings.wal.len() as u64,
            segments: segment_count,
            stored_bytes: holdings.wal.iter().map(|f| f.stored_bytes).sum(),
            newest_segment: newest.map(|(segment, _)| segment.file_name(size)),
            newest_archived_at: newest.map(|(_, at)| at),
        },
        restore_points: holdings.restore_points.as_ref().map(Vec::clone).unwrap_or_default(),
        unreadable,
        earlier_generations: Vec::new(),
        encrypted_for: None,
    }
}

fn tiers(backups: &[&ManifestSummary], now: DateTime<Utc>) -> Vec<TierSummary> {
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
    let records = holdings.unreadable_restore_points.iter();
    manifests
        .chain(histories)
        .chain(points)
        .chain(records)
        .map(Error::to_string)
        .collect()
}

/// The windows on every timeline the archive knows, and the WAL that could not be read for them.
fn windows(state: &RepoState) -> (Vec<Window>, Vec<String>) {
    let timelines: BTreeSet<TimelineId> = state
        .segments
        .timelines()
        .chain(state.histories.keys().copied())
        .collect();
    let mut errors = Vec::new();
    let windows = timelines
        .into_iter()
        .flat_map(|t| windows_on(state, t, &mut errors))
        .collect();
    (windows, errors)
}

/// The windows on `timeline`, oldest first: one from each backup that no earlier window
/// covers, as far as the planner reaches without a gap.
fn windows_on(state: &RepoState, timeline: TimelineId, errors: &mut Vec<String>) -> Vec<Window> {
    let mut windows: Vec<Window> = Vec::new();
    for backup in &state.backups {
        if windows.last().is_some_and(|w| backup.stop_lsn <= w.end_lsn) {
            continue;
        }
        match recover::reach(state, timeline, &backup.id) {
            Ok(reach) => windows.extend(reach.map(|reach| window(timeline, backup, reach))),
            Err(e) => errors.push(e.to_string()),
        }
    }
    windows
}

fn window(timeline: TimelineId, backup: &ManifestSummary, reach: Reach) -> Window {
    Window {
        timeline,
        from_backup: backup.id.clone(),
        start_time: backup.stop_time,
        start_lsn: backup.stop_lsn,
        end_time: reach.newest_time.map_or(backup.stop_time, |t| t.max(backup.stop_time)),
        end_lsn: reach.end_lsn,
        end_wal: reach.last_wal,
    }
}

#[cfg(test)]
mod tests {

    use chrono::TimeZone;

    use super::*;
    use crate::backup::manifest::Manifest;
    use crate::recover::{Mark, MarkKind, Request, SegmentSummary, Target, TimelineChoice};

    const SIZE: SegmentSize = SegmentSize::DEFAULT;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 10, minute, 0).unwrap()
    }

    fn backup(id: &str, segno: u64, minute: u32) -> ManifestSummary {
        Manifest::for_test(id, Tier::Daily, 1, segno..=segno, at(minute)).summary()
    }

    /// A commit (or a checkpoint) 1000 bytes into segment `segno`, at `time`.
    fn mark(segno: u64, time: DateTime<Utc>, kind: MarkKind) -> (Segment, SegmentSummary) {
        let lsn = Lsn(SIZE.segment_start(segno).0 + 1000);
        let mark = Mark {
            lsn,
            end: Lsn(lsn.0 + 40),
            time,
            kind,
        };
        (Segment { timeline: 1, segno }, SegmentSummary::of_marks(vec![mark]))
    }

    /// Backups b3 and b7; the segments given, each with a commit at minute `segno` + 20 s.
    fn state(segnos: impl IntoIterator<Item = u64> + Clone) -> RepoState<'static> {
        let commit = |s: u64| {
            mark(
                s,
                at(s as u32) + chrono::TimeDelta::seconds(20),
                MarkKind::Commit { xid: 100 + s as u32 },
            )
        };
        RepoState {
            backups: vec![backup("b3", 3, 3), backup("b7", 7, 7)],
            segments: segnos.clone().into_iter().map(|s| (1, s)).collect(),
            segment_size: Some(SIZE),
            records: ArchivedRecords::known(segnos.into_iter().map(commit)),
            ..RepoState::default()
        }
    }

    #[test]
    fn the_window_runs_from_the_oldest_backup_to_the_newest_commit() {
        let (w, errors) = windows(&state(3..=9));
        assert!(errors.is_empty());
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].from_backup.as_str(), w[0].start_time), ("b3", at(3)));
        assert_eq!(w[0].end_wal, "000000010000000000000009");
        assert_eq!(w[0].end_lsn, SIZE.segment_start(10));
        assert_eq!(w[0].end_time, at(9) + chrono::TimeDelta::seconds(20));
    }

    #[test]
    fn the_window_ends_where_recover_stops_accepting_times() {
        let mut s = state(3..=9);
        // A checkpoint after the newest commit shows the archive covers 40 s more.
        let checkpoint = Mark {
            lsn: Lsn(SIZE.segment_start(9).0 + 5000),
            end: Lsn(SIZE.segment_start(9).0 + 5100),
            time: at(10),
            kind: MarkKind::Checkpoint,
        };
        let (segment, commit) = mark(9, at(9) + chrono::TimeDelta::seconds(20), MarkKind::Commit { xid: 109 });
        s.records = ArchivedRecords::known(
            (3..9)
                .map(|n| {
                    mark(
                        n,
                        at(n as u32) + chrono::TimeDelta::seconds(20),
                        MarkKind::Commit { xid: 100 + n as u32 },
                    )
                })
                .chain([(
                    segment,
                    SegmentSummary::of_marks(vec![commit.marks[0].clone(), checkpoint]),
                )]),
        );
        let (w, _) = windows(&s);
        assert_eq!(w[0].end_time, at(10));
        let time = |t: DateTime<Utc>| Request {
            target: Target::Time {
                time: t,
                assumed_utc: false,
            },
            exclusive: false,
            before: false,
            timeline: TimelineChoice::Latest,
            backup: None,
        };
        assert!(recover::plan(&s, &time(w[0].end_time)).is_ok());
        let err = recover::plan(&s, &time(w[0].end_time + chrono::TimeDelta::seconds(1))).unwrap_err();
        assert!(err.to_string().contains("the archive does not yet show"), "{err}");
    }

    #[test]
    fn a_gap_ends_one_window_and_the_next_backup_starts_another() {
        let (w, _) = windows(&state([3, 4, 6, 7, 8, 9]));
        let spans: Vec<(&str, &str)> = w.iter().map(|w| (w.from_backup.as_str(), w.end_wal.as_str())).collect();
        assert_eq!(
            spans,
            [("b3", "000000010000000000000004"), ("b7", "000000010000000000000009")],
            "segment 5 is missing"
        );
        assert_eq!(w[0].end_time, at(4) + chrono::TimeDelta::seconds(20));
        assert!(windows(&state([4, 5])).0.is_empty(), "neither backup has its own WAL");
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
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        let holdings = Holdings {
            repo: &repo,
            location: "test".into(),
            generation: None,
            replaced_by: None,
            info: Some(Cluster {
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
            unreadable_restore_points: Vec::new(),
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
        let mut s = state([3]);
        s.records = ArchivedRecords::known([]);
        let (w, _) = windows(&s);
        assert_eq!(
            (w[0].start_time, w[0].end_time),
            (at(3), at(3)),
            "nothing after the backup"
        );
        s.records = ArchivedRecords::known([mark(3, at(2), MarkKind::Checkpoint)]);
        let (w, _) = windows(&s);
        assert_eq!(
            w[0].end_time, w[0].start_time,
            "a checkpoint that started before the backup ended"
        );
    }
}
