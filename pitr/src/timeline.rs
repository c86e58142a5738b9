//! Timeline paths: which timeline holds each WAL segment when recovery follows a timeline through
//! its history, as PostgreSQL does. `XLogFileReadAnyTLI` reads a segment from the newest timeline
//! of the history that began at or before it, so the segment holding a switch point is read from
//! the child timeline, whose copy continues past it. Pure: the history comes from the caller.

use crate::wal::{Lsn, Segment, SegmentSize, TimelineId, TimelineSwitch};

/// The timelines from the first one to a target timeline, each with where it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelinePath {
    /// (timeline, the first LSN of its child), oldest first; the target last, without an end.
    steps: Vec<(TimelineId, Option<Lsn>)>,
}

impl TimelinePath {
    /// The path to `target`, whose history file lists `history` (empty for timeline 1, or when
    /// the history is not known: then the path is the target alone).
    pub fn new(target: TimelineId, history: &[TimelineSwitch]) -> TimelinePath {
        let mut steps: Vec<(TimelineId, Option<Lsn>)> = history
            .iter()
            .filter(|s| s.parent < target)
            .map(|s| (s.parent, Some(s.switchpoint)))
            .collect();
        steps.push((target, None));
        TimelinePath { steps }
    }

    /// The timeline the path leads to.
    pub fn target(&self) -> TimelineId {
        self.steps[self.steps.len() - 1].0
    }

    /// Whether `timeline` lies on the path.
    pub fn contains(&self, timeline: TimelineId) -> bool {
        self.steps.iter().any(|(t, _)| *t == timeline)
    }

    /// The timeline segment `segno` is read from when following the path.
    pub fn timeline_of(&self, segno: u64, size: SegmentSize) -> TimelineId {
        self.steps
            .iter()
            .find(|(_, end)| end.is_none_or(|end| segno < size.segment_of(end)))
            .map_or(self.target(), |(t, _)| *t)
    }

    /// The segment `segno` as the path names it.
    pub fn segment(&self, segno: u64, size: SegmentSize) -> Segment {
        Segment {
            timeline: self.timeline_of(segno, size),
            segno,
        }
    }

    /// Whether an archived `segment` is the one the path reads at its position (a segment of an
    /// older timeline past that timeline's end is not: another server went on writing there).
    pub fn holds(&self, segment: Segment, size: SegmentSize) -> bool {
        self.timeline_of(segment.segno, size) == segment.timeline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: SegmentSize = SegmentSize::DEFAULT;

    fn switch(parent: TimelineId, segno: u64, offset: u64) -> TimelineSwitch {
        TimelineSwitch {
            parent,
            switchpoint: Lsn(SIZE.segment_start(segno).0 + offset),
            reason: "no recovery target specified".into(),
        }
    }

    #[test]
    fn the_switch_segment_is_read_from_the_child_timeline() {
        let path = TimelinePath::new(3, &[switch(1, 5, 0x100), switch(2, 9, 0)]);
        assert_eq!(path.target(), 3);
        let timelines: Vec<TimelineId> = (3..=11).map(|segno| path.timeline_of(segno, SIZE)).collect();
        assert_eq!(timelines, [1, 1, 2, 2, 2, 2, 3, 3, 3], "segments 3 to 11");
        assert!(path.holds(Segment { timeline: 2, segno: 5 }, SIZE));
        assert!(
            !path.holds(Segment { timeline: 1, segno: 5 }, SIZE),
            "timeline 1 ended in segment 5"
        );
        assert_eq!(path.segment(9, SIZE), Segment { timeline: 3, segno: 9 });
        assert!(path.contains(2) && !path.contains(4));
    }

    #[test]
    fn a_timeline_without_history_is_a_path_of_its_own() {
        let path = TimelinePath::new(4, &[]);
        assert_eq!(path.timeline_of(0, SIZE), 4);
        assert!(!path.contains(1));
        assert_eq!(TimelinePath::new(1, &[]).timeline_of(7, SIZE), 1);
    }
}
