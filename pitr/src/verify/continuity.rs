//! Which WAL must be in the archive, and what is missing from it. Pure functions.
//!
//! On each timeline the archive must be continuous from the oldest retained backup's start (or
//! from where the timeline begins, by its history file) to its newest segment, and further where
//! a child timeline branches off later or a backup needs more to reach consistency. Every run of
//! missing segments is one [`Gap`]. History files must be there for every timeline in use, and
//! chain: each repeats its parent's entries and adds one.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::backup::manifest::ManifestSummary;
use crate::wal::{Segment, SegmentSize, TimelineId, TimelineSwitch};

/// The archive as continuity sees it.
pub struct Archive<'a> {
    /// The segment size.
    pub size: SegmentSize,
    /// Archived segments: (timeline, segment number).
    pub segments: &'a BTreeSet<(TimelineId, u64)>,
    /// The history files that parse, by timeline.
    pub histories: &'a BTreeMap<TimelineId, Vec<TimelineSwitch>>,
}

/// Segment numbers on one timeline that must all be archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The timeline.
    pub timeline: TimelineId,
    /// The first segment number.
    pub first: u64,
    /// The last segment number.
    pub last: u64,
}

/// A run of missing segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// The timeline.
    pub timeline: TimelineId,
    /// The first missing segment.
    pub first: String,
    /// The last missing segment.
    pub last: String,
    /// How many are missing.
    pub segments: u64,
    /// The first missing segment number.
    #[serde(skip)]
    pub first_segno: u64,
    /// The last missing segment number.
    #[serde(skip)]
    pub last_segno: u64,
}

/// The WAL each backup needs to reach consistency.
pub fn backup_spans(backups: &[&ManifestSummary]) -> Vec<Span> {
    backups
        .iter()
        .map(|m| {
            let range = m.consistency_segments();
            Span {
                timeline: m.timeline,
                first: *range.start(),
                last: *range.end(),
            }
        })
        .collect()
}

/// The WAL the whole archive must hold for `backups` (the retained ones): nothing when there is
/// no backup.
pub fn archive_spans(archive: &Archive, backups: &[&ManifestSummary]) -> Vec<Span> {
    let Some(floor) = backups.iter().map(|m| *m.consistency_segments().start()).min() else {
        return Vec::new();
    };
    let timelines: BTreeSet<TimelineId> = archive
        .segments
        .iter()
        .map(|(timeline, _)| *timeline)
        .chain(archive.histories.keys().copied())
        .chain(backups.iter().map(|m| m.timeline))
        .collect();
    let mut spans = backup_spans(backups);
    for timeline in timelines {
        let first = begin(archive, timeline).max(floor);
        match end(archive, backups, timeline) {
            Some(last) if first <= last => spans.push(Span { timeline, first, last }),
            _ => {}
        }
    }
    spans
}

/// Where a timeline begins: timeline 1 at the start of WAL, others at the segment holding their
/// switch point; one without a readable history at its oldest archived segment.
fn begin(archive: &Archive, timeline: TimelineId) -> u64 {
    match archive.histories.get(&timeline).and_then(|h| h.last()) {
        Some(switch) => archive.size.segment_of(switch.switchpoint),
        None if timeline == 1 => 0,
        None => archived_on(archive, timeline).next().unwrap_or(u64::MAX),
    }
}

/// How far a timeline must reach: its newest segment, the segment before each child timeline
/// branches off, and each of its backups' consistency point.
fn end(archive: &Archive, backups: &[&ManifestSummary], timeline: TimelineId) -> Option<u64> {
    let newest = archived_on(archive, timeline).next_back();
    let branches = archive
        .histories
        .values()
        .filter_map(|history| history.last())
        .filter(|switch| switch.parent == timeline)
        .filter_map(|switch| archive.size.segment_of(switch.switchpoint).checked_sub(1));
    let needed = backups
        .iter()
        .filter(|m| m.timeline == timeline)
        .map(|m| *m.consistency_segments().end());
    newest.into_iter().chain(branches).chain(needed).max()
}

fn archived_on<'a>(archive: &Archive<'a>, timeline: TimelineId) -> impl DoubleEndedIterator<Item = u64> + 'a {
    archive
        .segments
        .range((timeline, 0)..=(timeline, u64::MAX))
        .map(|(_, segno)| *segno)
}

/// Every run of segments missing from `spans`, in order.
pub fn find_gaps(archive: &Archive, spans: &[Span]) -> Vec<Gap> {
    let mut missing: Vec<(TimelineId, u64, u64)> = spans.iter().flat_map(|span| missing_runs(archive, *span)).collect();
    missing.sort_unstable();
    let mut gaps: Vec<Gap> = Vec::new();
    for (timeline, first, last) in missing {
        match gaps.last_mut() {
            Some(gap) if gap.timeline == timeline && first <= gap.last_segno + 1 => {
                let last = last.max(gap.last_segno);
                *gap = gap_of(archive.size, timeline, gap.first_segno, last);
            }
            _ => gaps.push(gap_of(archive.size, timeline, first, last)),
        }
    }
    gaps
}

/// The runs of missing segments inside one span, found between the archived ones.
fn missing_runs(archive: &Archive, span: Span) -> Vec<(TimelineId, u64, u64)> {
    let mut runs = Vec::new();
    let mut next = span.first;
    for segno in archive
        .segments
        .range((span.timeline, span.first)..=(span.timeline, span.last))
        .map(|(_, segno)| *segno)
    {
        if segno > next {
            runs.push((span.timeline, next, segno - 1));
        }
        next = segno + 1;
    }
    if next <= span.last {
        runs.push((span.timeline, next, span.last));
    }
    runs
}

fn gap_of(size: SegmentSize, timeline: TimelineId, first: u64, last: u64) -> Gap {
    let name = |segno| Segment { timeline, segno }.file_name(size);
    Gap {
        timeline,
        first: name(first),
        last: name(last),
        segments: last - first + 1,
        first_segno: first,
        last_segno: last,
    }
}

/// What is wrong with the timeline history files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryProblem {
    /// A timeline is in use (segments, backups, or a child's history names it) but its history
    /// file is not in the archive.
    Missing {
        /// The file.
        file: String,
        /// Why it is needed.
        reason: String,
    },
    /// A history file that does not chain with its parent's.
    Broken {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

/// Checks that every timeline in use above 1 has its history file (`listed` are the timelines
/// with one, readable or not), and that the readable ones chain.
pub fn history_problems(
    archive: &Archive,
    listed: &BTreeSet<TimelineId>,
    backups: &[&ManifestSummary],
) -> Vec<HistoryProblem> {
    let file = |timeline: TimelineId| format!("{timeline:08X}.history");
    let mut needed: BTreeMap<TimelineId, String> = BTreeMap::new();
    for (timeline, _) in archive.segments {
        needed
            .entry(*timeline)
            .or_insert_with(|| "it has archived segments".into());
    }
    for m in backups {
        needed
            .entry(m.timeline)
            .or_insert_with(|| format!("backup {} was taken on it", m.id));
    }
    let mut problems = Vec::new();
    for (timeline, history) in archive.histories {
        if let Some(parent) = history.last().map(|switch| switch.parent) {
            needed
                .entry(parent)
                .or_insert_with(|| format!("timeline {timeline} branched from it"));
        }
        if let Some(reason) = chain_problem(*timeline, history, archive.histories) {
            problems.push(HistoryProblem::Broken {
                file: file(*timeline),
                reason,
            });
        }
    }
    let missing = needed
        .into_iter()
        .filter(|(timeline, _)| *timeline > 1 && !listed.contains(timeline))
        .map(|(timeline, why)| HistoryProblem::Missing {
            file: file(timeline),
            reason: format!(
                "timeline {timeline} is in use ({why}) but its history file is not in the archive: recovery \
                 cannot follow it; archive it from pg_wal of a server on that timeline (pitr archive-push)"
            ),
        });
    missing.chain(problems).collect()
}

/// Why the history of `timeline` does not chain with its parent's, if it does not.
fn chain_problem(
    timeline: TimelineId,
    history: &[TimelineSwitch],
    histories: &BTreeMap<TimelineId, Vec<TimelineSwitch>>,
) -> Option<String> {
    let Some((last, inherited)) = history.split_last() else {
        return Some("it has no entries: every timeline above 1 branched from a parent".into());
    };
    if last.parent >= timeline {
        return Some(format!(
            "it names timeline {} as the parent of timeline {timeline}",
            last.parent
        ));
    }
    let parent = histories.get(&last.parent)?;
    let same = |a: &[TimelineSwitch], b: &[TimelineSwitch]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x.parent, x.switchpoint) == (y.parent, y.switchpoint))
    };
    (!same(inherited, parent)).then(|| {
        format!(
            "it does not repeat the history of its parent timeline {} ({:08X}.history)",
            last.parent, last.parent
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Tier;
    use crate::wal::Lsn;

    const SIZE: SegmentSize = SegmentSize::DEFAULT;

    fn backup(id: &str, timeline: TimelineId, start: u64, stop: u64) -> ManifestSummary {
        crate::backup::manifest::Manifest::for_test(
            id,
            Tier::Daily,
            timeline,
            start..=stop,
            chrono::DateTime::UNIX_EPOCH,
        )
        .summary()
    }

    fn switch(parent: TimelineId, segno: u64) -> TimelineSwitch {
        TimelineSwitch {
            parent,
            switchpoint: Lsn(SIZE.segment_start(segno).0 + 0x100),
            reason: "no recovery target specified".into(),
        }
    }

    fn segments(list: &[(TimelineId, std::ops::RangeInclusive<u64>)]) -> BTreeSet<(TimelineId, u64)> {
        list.iter()
            .flat_map(|(t, range)| range.clone().map(move |s| (*t, s)))
            .collect()
    }

    fn gaps(
        segs: &BTreeSet<(TimelineId, u64)>,
        histories: &BTreeMap<TimelineId, Vec<TimelineSwitch>>,
        backups: &[&ManifestSummary],
    ) -> Vec<(TimelineId, String, String, u64)> {
        let archive = Archive {
            size: SIZE,
            segments: segs,
            histories,
        };
        find_gaps(&archive, &archive_spans(&archive, backups))
            .into_iter()
            .map(|g| (g.timeline, g.first, g.last, g.segments))
            .collect()
    }

    #[test]
    fn a_continuous_archive_has_no_gap_and_older_wal_does_not_count() {
        let b = backup("b", 1, 5, 5);
        let mut segs = segments(&[(1, 5..=12)]);
        segs.insert((1, 2));
        assert!(gaps(&segs, &BTreeMap::new(), &[&b]).is_empty());
        assert!(
            gaps(&segs, &BTreeMap::new(), &[]).is_empty(),
            "no backup, nothing needed"
        );
    }

    #[test]
    fn every_gap_is_listed_with_its_first_and_last_segment() {
        let b = backup("b", 1, 2, 3);
        let mut segs = segments(&[(1, 2..=20)]);
        for s in [5, 6, 7, 15] {
            segs.remove(&(1, s));
        }
        assert_eq!(
            gaps(&segs, &BTreeMap::new(), &[&b]),
            [
                (
                    1,
                    "000000010000000000000005".into(),
                    "000000010000000000000007".into(),
                    3
                ),
                (
                    1,
                    "00000001000000000000000F".into(),
                    "00000001000000000000000F".into(),
                    1
                ),
            ]
        );
    }

    #[test]
    fn a_backup_needs_its_wal_even_beyond_the_newest_segment() {
        let b = backup("b", 1, 4, 6);
        let segs = segments(&[(1, 4..=4)]);
        assert_eq!(
            gaps(&segs, &BTreeMap::new(), &[&b]),
            [(
                1,
                "000000010000000000000005".into(),
                "000000010000000000000006".into(),
                2
            )]
        );
    }

    #[test]
    fn timelines_begin_at_their_switch_and_parents_reach_it() {
        let b = backup("b", 1, 2, 2);
        let histories = BTreeMap::from([(2, vec![switch(1, 8)])]);
        let whole = segments(&[(1, 2..=7), (2, 8..=10)]);
        assert!(gaps(&whole, &histories, &[&b]).is_empty());
        let parent_short = segments(&[(1, 2..=5), (2, 8..=10)]);
        assert_eq!(
            gaps(&parent_short, &histories, &[&b]),
            [(
                1,
                "000000010000000000000006".into(),
                "000000010000000000000007".into(),
                2
            )]
        );
        let child_late = segments(&[(1, 2..=7), (2, 9..=10)]);
        assert_eq!(
            gaps(&child_late, &histories, &[&b]),
            [(
                2,
                "000000020000000000000008".into(),
                "000000020000000000000008".into(),
                1
            )]
        );
    }

    #[test]
    fn overlapping_spans_report_one_gap() {
        let archive_segs = segments(&[(1, 2..=3), (1, 8..=9)]);
        let histories = BTreeMap::new();
        let archive = Archive {
            size: SIZE,
            segments: &archive_segs,
            histories: &histories,
        };
        let spans = [
            Span {
                timeline: 1,
                first: 2,
                last: 6,
            },
            Span {
                timeline: 1,
                first: 5,
                last: 9,
            },
        ];
        let found = find_gaps(&archive, &spans);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].first_segno, found[0].last_segno), (4, 7));
    }

    #[test]
    fn histories_must_exist_and_chain() {
        let segs = segments(&[(1, 2..=5), (3, 9..=9)]);
        let histories = BTreeMap::from([(3, vec![switch(1, 4), switch(2, 9)])]);
        let archive = Archive {
            size: SIZE,
            segments: &segs,
            histories: &histories,
        };
        let listed = BTreeSet::from([3]);
        let problems = history_problems(&archive, &listed, &[]);
        assert!(
            matches!(&problems[..], [HistoryProblem::Missing { file, reason }]
                if file == "00000002.history" && reason.contains("timeline 3 branched from it")),
            "{problems:?}"
        );

        let wrong_parent = BTreeMap::from([(2, vec![switch(1, 3)]), (3, vec![switch(1, 4), switch(2, 9)])]);
        let archive = Archive {
            histories: &wrong_parent,
            ..archive
        };
        let problems = history_problems(&archive, &BTreeSet::from([2, 3]), &[]);
        assert!(
            matches!(&problems[..], [HistoryProblem::Broken { file, reason }]
                if file == "00000003.history" && reason.contains("does not repeat")),
            "{problems:?}"
        );
        let backup_on_4 = backup("b4", 4, 9, 9);
        let problems = history_problems(&archive, &BTreeSet::from([2, 3]), &[&backup_on_4]);
        assert!(problems
            .iter()
            .any(|p| matches!(p, HistoryProblem::Missing { file, .. } if file == "00000004.history")));
    }
}
