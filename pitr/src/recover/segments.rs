//! The archived segments as the recovery planner looks them up: sorted segment numbers per
//! timeline. A million segments take 8 MB this way (a hash map of them, 70 MB), and the questions
//! the planner asks over and over — is this segment archived, how far do the archived segments
//! run without a gap, which is the newest below a timeline's end — are binary searches and short
//! walks instead of a pass over every key.

use std::collections::BTreeMap;

use crate::wal::TimelineId;

/// The archived segments (not `.partial` files) of each timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchivedSegments {
    /// Sorted, without duplicates; a timeline whose last segment was removed keeps an empty list.
    by_timeline: BTreeMap<TimelineId, Vec<u64>>,
}

impl FromIterator<(TimelineId, u64)> for ArchivedSegments {
    fn from_iter<I: IntoIterator<Item = (TimelineId, u64)>>(segments: I) -> ArchivedSegments {
        let mut by_timeline: BTreeMap<TimelineId, Vec<u64>> = BTreeMap::new();
        for (timeline, segno) in segments {
            by_timeline.entry(timeline).or_default().push(segno);
        }
        for segnos in by_timeline.values_mut() {
            segnos.sort_unstable();
            segnos.dedup();
            segnos.shrink_to_fit();
        }
        ArchivedSegments { by_timeline }
    }
}

impl ArchivedSegments {
    /// Whether segment `segno` of `timeline` is archived.
    pub fn contains(&self, timeline: TimelineId, segno: u64) -> bool {
        self.position(timeline, segno).is_some()
    }

    /// Records segment `segno` of `timeline` as archived.
    pub fn insert(&mut self, (timeline, segno): (TimelineId, u64)) {
        let segnos = self.by_timeline.entry(timeline).or_default();
        if let Err(at) = segnos.binary_search(&segno) {
            segnos.insert(at, segno);
        }
    }

    /// Forgets segment `segno` of `timeline`; whether it was there.
    pub fn remove(&mut self, &(timeline, segno): &(TimelineId, u64)) -> bool {
        let Some(segnos) = self.by_timeline.get_mut(&timeline) else {
            return false;
        };
        match segnos.binary_search(&segno) {
            Ok(at) => {
                segnos.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// How many segments are archived.
    pub fn len(&self) -> usize {
        self.by_timeline.values().map(Vec::len).sum()
    }

    /// Whether no segment is archived.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The timelines with archived segments, in order.
    pub fn timelines(&self) -> impl Iterator<Item = TimelineId> + '_ {
        self.by_timeline
            .iter()
            .filter(|(_, segnos)| !segnos.is_empty())
            .map(|(timeline, _)| *timeline)
    }

    /// The highest timeline with archived segments.
    pub fn newest_timeline(&self) -> Option<TimelineId> {
        self.timelines().last()
    }

    /// The newest archived segment of `timeline` numbered from `from` and below `below` (no
    /// bound: `None`).
    pub fn newest_in(&self, timeline: TimelineId, from: u64, below: Option<u64>) -> Option<u64> {
        let segnos = self.by_timeline.get(&timeline)?;
        let end = below.map_or(segnos.len(), |below| segnos.partition_point(|s| *s < below));
        segnos[..end].last().copied().filter(|newest| *newest >= from)
    }

    /// The last of the consecutive archived segments of `timeline` from `segno` on, when `segno`
    /// is archived.
    pub fn run_end(&self, timeline: TimelineId, segno: u64) -> Option<u64> {
        let start = self.position(timeline, segno)?;
        let rest = &self.by_timeline[&timeline][start..];
        // The numbers are sorted and unique: `rest[i] == segno + i` holds for a first stretch of
        // indices (the run), and never again after it. Binary search for its last index.
        let (mut last, mut beyond) = (0, rest.len());
        while beyond - last > 1 {
            let middle = (last + beyond) / 2;
            if rest[middle] == segno + middle as u64 {
                last = middle;
            } else {
                beyond = middle;
            }
        }
        Some(segno + last as u64)
    }

    fn position(&self, timeline: TimelineId, segno: u64) -> Option<usize> {
        self.by_timeline.get(&timeline)?.binary_search(&segno).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_membership_and_the_newest_below_a_bound() {
        let mut s: ArchivedSegments = [(1, 5), (1, 3), (1, 4), (1, 7), (2, 7), (2, 8), (1, 4)]
            .into_iter()
            .collect();
        assert_eq!(s.len(), 6, "duplicates count once");
        assert!(s.contains(1, 4) && !s.contains(1, 6) && !s.contains(3, 1));
        assert_eq!(s.run_end(1, 3), Some(5));
        assert_eq!(s.run_end(1, 5), Some(5));
        assert_eq!(s.run_end(1, 6), None);
        assert_eq!(s.run_end(1, 7), Some(7));
        assert_eq!(s.run_end(2, 7), Some(8));
        assert_eq!(s.newest_in(1, 0, None), Some(7));
        assert_eq!(s.newest_in(1, 0, Some(7)), Some(5));
        assert_eq!(s.newest_in(1, 6, Some(7)), None, "5 is below the range");
        assert_eq!(s.newest_in(4, 0, None), None);
        assert_eq!(s.newest_timeline(), Some(2));
        s.insert((1, 6));
        assert_eq!(s.run_end(1, 3), Some(7));
        assert!(s.remove(&(2, 7)) && s.remove(&(2, 8)) && !s.remove(&(2, 8)));
        assert_eq!(s.newest_timeline(), Some(1), "an emptied timeline is gone");
        assert_eq!(s.timelines().collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn runs_agree_with_a_walk_over_every_number() {
        let segnos: Vec<u64> = (0..2000u64)
            .filter(|n| n % 7 != 3 && n % 11 != 5 && *n < 1500 || *n > 1800)
            .collect();
        let s: ArchivedSegments = segnos.iter().map(|n| (1, *n)).collect();
        for first in 0..2100 {
            let walked = (first..).take_while(|n| segnos.contains(n)).last();
            assert_eq!(s.run_end(1, first), walked, "from {first}");
        }
    }
}
