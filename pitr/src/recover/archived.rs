//! What recovery targets depend on in the archived WAL's records, one segment at a time: the
//! commits and aborts (time, transaction), restore points and checkpoints (time), the newest
//! transaction id, and where the records at the segment's edges start and end.
//!
//! [`ArchivedRecords`] reads a segment from the repository when the planner first asks for it
//! (a plan reads only the segments its target needs) and keeps its summary for as long as the
//! planner's state lives. In tests it holds summaries given to it instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::codec;
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::wal::records::{End, Record, RecordKind, SegmentRecords};
use crate::wal::{Lsn, Segment, SegmentSize, WalFileName};

/// A record recovery targets look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Where it starts.
    pub lsn: Lsn,
    /// The position after its last byte.
    pub end: Lsn,
    /// The time it carries.
    pub time: DateTime<Utc>,
    /// What it is.
    pub kind: MarkKind,
}

/// The kinds of [`Mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// A commit (`recovery_target_time` and `_xid` stop at these, and at aborts).
    Commit {
        /// The transaction recovery compares with `recovery_target_xid`.
        xid: u32,
    },
    /// An abort.
    Abort {
        /// As for commits.
        xid: u32,
    },
    /// A restore point.
    RestorePoint,
    /// A checkpoint (its time is when it started, in whole seconds).
    Checkpoint,
}

impl MarkKind {
    /// The transaction of a commit or abort.
    pub fn transaction(self) -> Option<u32> {
        match self {
            MarkKind::Commit { xid } | MarkKind::Abort { xid } => Some(xid),
            MarkKind::RestorePoint | MarkKind::Checkpoint => None,
        }
    }

    /// How the plan names it.
    pub fn describe(self) -> &'static str {
        match self {
            MarkKind::Commit { .. } => "commit",
            MarkKind::Abort { .. } => "abort",
            MarkKind::RestorePoint => "restore point",
            MarkKind::Checkpoint => "checkpoint",
        }
    }
}

/// Where one record starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Its start.
    pub lsn: Lsn,
    /// The position after its last byte.
    pub end: Lsn,
}

/// What the planner needs from the records that start in one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Commits, aborts, restore points and checkpoints, in LSN order.
    pub marks: Vec<Mark>,
    /// The newest `xl_xid` of any record (by transaction id order, which wraps around).
    pub newest_xid: Option<u32>,
    /// The first record.
    pub first: Option<Span>,
    /// Where the record before the last one starts.
    pub before_last: Option<Lsn>,
    /// The last record.
    pub last: Option<Span>,
}

impl SegmentSummary {
    /// Summarizes the records of a segment, as read by `reader`.
    fn of(reader: &mut SegmentRecords<'_>) -> std::result::Result<SegmentSummary, String> {
        let mut summary = SegmentSummary::default();
        for record in reader.by_ref() {
            summary.add(&record?);
        }
        Ok(summary)
    }

    /// A summary of segments holding these marks (and nothing else), for tests of the planner
    /// and of what depends on it.
    #[cfg(test)]
    pub(crate) fn of_marks(marks: Vec<Mark>) -> SegmentSummary {
        let spans: Vec<Span> = marks.iter().map(|m| Span { lsn: m.lsn, end: m.end }).collect();
        SegmentSummary {
            newest_xid: marks.iter().filter_map(|m| m.kind.transaction()).reduce(newer_xid),
            first: spans.first().copied(),
            before_last: spans.len().checked_sub(2).map(|i| spans[i].lsn),
            last: spans.last().copied(),
            marks,
        }
    }

    fn add(&mut self, record: &Record) {
        let span = Span {
            lsn: record.lsn,
            end: record.end,
        };
        self.first.get_or_insert(span);
        self.before_last = self.last.map(|s| s.lsn);
        self.last = Some(span);
        if record.xid != 0 {
            self.newest_xid = Some(self.newest_xid.map_or(record.xid, |n| newer_xid(n, record.xid)));
        }
        let kind = match record.kind {
            RecordKind::Commit { xid, .. } => MarkKind::Commit { xid },
            RecordKind::Abort { xid, .. } => MarkKind::Abort { xid },
            RecordKind::RestorePoint { .. } => MarkKind::RestorePoint,
            RecordKind::Checkpoint { .. } => MarkKind::Checkpoint,
            // An end of recovery is followed by a checkpoint, which recovery targets stop at.
            _ => return,
        };
        self.marks.push(Mark {
            lsn: record.lsn,
            end: record.end,
            time: record.time().expect("every mark has a time"),
            kind,
        });
    }
}

/// The newer of two transaction ids, which wrap around (`TransactionIdFollows`).
pub fn newer_xid(a: u32, b: u32) -> u32 {
    if (b.wrapping_sub(a) as i32) > 0 {
        b
    } else {
        a
    }
}

/// A segment, and the one read after it for a record that continues there.
type SummaryKey = (Segment, Option<Segment>);

/// The most segments [`ArchivedRecords::read_ahead`] decodes at once (each is held whole: 16 MiB
/// for the default segment size).
const READ_AHEAD: usize = 4;

/// The archived WAL's records, summarized per segment on demand.
pub struct ArchivedRecords<'r> {
    /// Where segments are read from; `None`: only the summaries given are known.
    repo: Option<&'r Repo>,
    /// Summaries read so far, by segment and the segment that continues it.
    summaries: Mutex<HashMap<SummaryKey, Arc<SegmentSummary>>>,
    /// The last two segments decoded: a scan forward or backward summarizes a segment with the
    /// one after it, so each segment is decoded once.
    decoded: Mutex<Vec<(Segment, Arc<Vec<u8>>)>>,
}

impl Default for ArchivedRecords<'_> {
    fn default() -> Self {
        ArchivedRecords::known([])
    }
}

impl std::fmt::Debug for ArchivedRecords<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchivedRecords")
            .field("reads", &self.repo.map(Repo::location))
            .finish_non_exhaustive()
    }
}

impl<'r> ArchivedRecords<'r> {
    /// Reads segments from `repo`.
    pub fn reading(repo: &'r Repo) -> ArchivedRecords<'r> {
        ArchivedRecords {
            repo: Some(repo),
            summaries: Mutex::default(),
            decoded: Mutex::default(),
        }
    }

    /// Knows only these summaries; any other segment has no records.
    pub fn known(summaries: impl IntoIterator<Item = (Segment, SegmentSummary)>) -> ArchivedRecords<'static> {
        let summaries = summaries
            .into_iter()
            .map(|(segment, summary)| ((segment, None), Arc::new(summary)))
            .collect();
        ArchivedRecords {
            repo: None,
            summaries: Mutex::new(summaries),
            decoded: Mutex::default(),
        }
    }

    /// The summary of the archived segment `segment`; `next` is the archived segment that
    /// follows it on the timeline path, for a last record that continues there.
    pub fn summary(&self, segment: Segment, next: Option<Segment>, size: SegmentSize) -> Result<Arc<SegmentSummary>> {
        let Some(repo) = self.repo else {
            let known = self.summaries.lock().expect("not poisoned");
            return Ok(known.get(&(segment, None)).cloned().unwrap_or_default());
        };
        if let Some(summary) = self.summaries.lock().expect("not poisoned").get(&(segment, next)) {
            return Ok(summary.clone());
        }
        let summary = Arc::new(self.read(repo, segment, next, size)?);
        self.summaries
            .lock()
            .expect("not poisoned")
            .insert((segment, next), summary.clone());
        Ok(summary)
    }

    /// How many segments [`ArchivedRecords::read_ahead`] summarizes at once: one per thread, at
    /// most [`READ_AHEAD`]; 1 (none ahead) without a repository or a second thread.
    pub fn read_ahead_width(&self) -> u64 {
        match self.repo {
            Some(_) => rayon::current_num_threads().clamp(1, READ_AHEAD) as u64,
            None => 1,
        }
    }

    /// Summarizes the (segment, next) pairs `keys` (what [`ArchivedRecords::summary`] will be
    /// asked for next, in order, consecutive segments) at once, decoding each segment once:
    /// a scan over thousands of segments is bound by decoding (decompressing 16 MiB and
    /// checking its CRC), which a second core halves. Best effort: a pair that cannot be read
    /// here is left to [`ArchivedRecords::summary`], which reports it when the scan gets there.
    pub fn read_ahead(&self, keys: &[(Segment, Option<Segment>)], size: SegmentSize) {
        use rayon::prelude::*;
        let Some(repo) = self.repo else { return };
        let known = self.summaries.lock().expect("not poisoned");
        let wanted: Vec<(Segment, Option<Segment>)> =
            keys.iter().filter(|key| !known.contains_key(key)).copied().collect();
        drop(known);
        let mut segments: Vec<Segment> = wanted
            .iter()
            .flat_map(|(s, next)| [Some(*s), *next])
            .flatten()
            .collect();
        segments.dedup();
        // What is decoded already (the last segment of the previous read-ahead) is taken over,
        // the rest decoded at once; the cache is emptied, so that no more is held than these.
        let mut decoded: HashMap<Segment, Arc<Vec<u8>>> = self
            .decoded
            .lock()
            .expect("not poisoned")
            .drain(..)
            .filter(|(segment, _)| segments.contains(segment))
            .collect();
        let fresh: Vec<(Segment, Arc<Vec<u8>>)> = segments
            .par_iter()
            .filter(|s| !decoded.contains_key(s))
            .filter_map(|s| Some((*s, self.decode_fresh(repo, *s, size).ok()?)))
            .collect();
        decoded.extend(fresh);
        let summaries: Vec<((Segment, Option<Segment>), SegmentSummary)> = wanted
            .par_iter()
            .filter_map(|(segment, next)| {
                let mut held = vec![decoded.get(segment)?.clone()];
                if let Some(next) = next {
                    held.push(decoded.get(next)?.clone());
                }
                let summary = self.summarize(repo, *segment, *next, size, held).ok()?;
                Some(((*segment, *next), summary))
            })
            .collect();
        let mut known = self.summaries.lock().expect("not poisoned");
        for (key, summary) in summaries {
            known.insert(key, Arc::new(summary));
        }
        drop(known);
        // The last one decoded is the first the scan reads after these (as the one before its next).
        if let Some(last) = segments.last() {
            if let Some(bytes) = decoded.get(last) {
                self.keep_decoded(*last, bytes.clone());
            }
        }
    }

    /// Reads and summarizes `segment` (with `next`, and further segments of `next`'s timeline
    /// for a record longer than a segment).
    fn read(&self, repo: &Repo, segment: Segment, next: Option<Segment>, size: SegmentSize) -> Result<SegmentSummary> {
        let mut held = vec![self.decode(repo, segment, size)?];
        held.extend(next.map(|n| self.decode(repo, n, size)).transpose()?);
        self.summarize(repo, segment, next, size, held)
    }

    /// Summarizes `segment` from `held`: its decoded bytes and `next`'s.
    fn summarize(
        &self,
        repo: &Repo,
        segment: Segment,
        next: Option<Segment>,
        size: SegmentSize,
        mut held: Vec<Arc<Vec<u8>>>,
    ) -> Result<SegmentSummary> {
        let name = WalFileName::parse(&segment.file_name(size))?;
        let what = repo.describe_wal(&name);
        loop {
            let slices: Vec<&[u8]> = held.iter().map(|s| s.as_slice()).collect();
            let corrupt = |reason: String| Error::Corrupt {
                what: what.clone(),
                reason,
            };
            let segment_name = name.segment_name().expect("a segment");
            let mut reader = SegmentRecords::new(segment_name, &slices).map_err(corrupt)?;
            let summary = SegmentSummary::of(&mut reader).map_err(corrupt)?;
            // A record longer than a segment needs the ones after `next` too.
            let further = match (reader.end(), next) {
                (Some(End::Continues { needs, .. }), Some(next)) if needs > segment.segno + held.len() as u64 - 1 => {
                    Segment {
                        timeline: next.timeline,
                        segno: segment.segno + held.len() as u64,
                    }
                }
                _ => return Ok(summary),
            };
            match self.decode_if_archived(repo, further, size)? {
                Some(bytes) => held.push(bytes),
                None => return Ok(summary),
            }
        }
    }

    fn decode_if_archived(&self, repo: &Repo, segment: Segment, size: SegmentSize) -> Result<Option<Arc<Vec<u8>>>> {
        let name = WalFileName::parse(&segment.file_name(size))?;
        if !repo.has_wal(&name)? {
            return Ok(None);
        }
        self.decode(repo, segment, size).map(Some)
    }

    /// The decoded bytes of an archived segment.
    fn decode(&self, repo: &Repo, segment: Segment, size: SegmentSize) -> Result<Arc<Vec<u8>>> {
        let held = self.decoded.lock().expect("not poisoned");
        if let Some((_, bytes)) = held.iter().find(|(held, _)| *held == segment) {
            return Ok(bytes.clone());
        }
        drop(held);
        let bytes = self.decode_fresh(repo, segment, size)?;
        self.keep_decoded(segment, bytes.clone());
        Ok(bytes)
    }

    /// Keeps `bytes` as the last segment decoded (of the last two).
    fn keep_decoded(&self, segment: Segment, bytes: Arc<Vec<u8>>) {
        let mut decoded = self.decoded.lock().expect("not poisoned");
        decoded.retain(|(held, _)| *held != segment);
        if decoded.len() == 2 {
            decoded.remove(0);
        }
        decoded.push((segment, bytes));
    }

    /// Reads and decodes an archived segment.
    fn decode_fresh(&self, repo: &Repo, segment: Segment, size: SegmentSize) -> Result<Arc<Vec<u8>>> {
        let name = WalFileName::parse(&segment.file_name(size))?;
        let what = repo.describe_wal(&name);
        let object = repo.get_wal(&name)?.ok_or_else(|| Error::Corrupt {
            what: what.clone(),
            reason: "vanished while the recovery was planned".into(),
        })?;
        Ok(Arc::new(codec::decode(&object, &what)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::records::synthetic::synthetic_segment;

    #[test]
    fn transaction_ids_wrap_around() {
        assert_eq!(newer_xid(100, 200), 200);
        assert_eq!(newer_xid(200, 100), 200);
        assert_eq!(newer_xid(u32::MAX - 5, 10), 10, "10 follows 2^32 - 6 after the wrap");
    }

    const SIZE: u32 = 1 << 20;

    /// Summaries read ahead are the ones read one at a time; a segment that cannot be read is
    /// left to the scan, which reports it when it gets there (not before).
    #[test]
    fn read_ahead_summarizes_as_reading_one_at_a_time_does() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        repo.claim(crate::repo::Cluster {
            pg_version: 15,
            system_identifier: 7,
            wal_segment_size: SIZE,
        })
        .unwrap();
        let size = SegmentSize::new(SIZE).unwrap();
        let at = |segno| Segment { timeline: 1, segno };
        let codec = codec::Codec::default();
        for segno in 1..=8 {
            let name = WalFileName::parse(&at(segno).file_name(size)).unwrap();
            let mut object = codec.encode(&synthetic_segment(segno, &[segno as u32], true, false));
            if segno == 6 {
                let last = object.len() - 1;
                object[last] ^= 1;
            }
            repo.put_wal(&name, &object).unwrap();
        }
        let keys: Vec<SummaryKey> = (1..=7).map(|s| (at(s), Some(at(s + 1)))).collect();
        let one_by_one = ArchivedRecords::reading(&repo);
        let ahead = ArchivedRecords::reading(&repo);
        ahead.read_ahead(&keys[..4], size);
        ahead.read_ahead(&keys[4..], size);
        for (segment, next) in &keys[..4] {
            let expected = one_by_one.summary(*segment, *next, size).unwrap();
            assert_eq!(ahead.summary(*segment, *next, size).unwrap(), expected);
            assert_eq!(
                expected.marks[0].kind,
                MarkKind::Commit {
                    xid: segment.segno as u32
                }
            );
        }
        for (segment, next) in &keys[4..] {
            let damaged = segment.segno == 6 || next.is_some_and(|n| n.segno == 6);
            let read = ahead.summary(*segment, *next, size);
            assert_eq!(read.is_err(), damaged, "{segment:?}");
            assert!(matches!(read, Err(Error::Corrupt { .. })) || !damaged);
        }
    }
}
