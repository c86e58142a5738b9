use chrono::{TimeDelta, TimeZone, Utc};

use super::*;
use crate::backup::Tier;
use crate::recover::archived::{MarkKind, SegmentSummary};

const SIZE: SegmentSize = SegmentSize::DEFAULT;

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 10, minute, 0).unwrap()
}

fn lsn(segno: u64, offset: u64) -> Lsn {
    Lsn(SIZE.segment_start(segno).0 + offset)
}

fn backup(id: &str, timeline: u32, start_segno: u64, stop_minute: u32) -> ManifestSummary {
    let name = |segno| Segment { timeline, segno }.file_name(SIZE);
    ManifestSummary {
        format_version: 1,
        id: id.into(),
        tier: Tier::Hourly,
        start_time: at(stop_minute),
        stop_time: at(stop_minute),
        start_lsn: lsn(start_segno, 40),
        stop_lsn: lsn(start_segno, 400),
        timeline,
        system_identifier: 1,
        pg_version: 15,
        wal_segment_size: SIZE.bytes(),
        first_wal: name(start_segno),
        last_wal: name(start_segno),
        next_xid: Some(1000 * u64::from(stop_minute)),
        duration_seconds: 1.0,
        original_bytes: 1000,
        stored_bytes: 100,
    }
}

fn mark(at_lsn: Lsn, time: DateTime<Utc>, kind: MarkKind) -> Mark {
    Mark {
        lsn: at_lsn,
        end: Lsn(at_lsn.0 + 40),
        time,
        kind,
    }
}

/// The two commits of segment `segno`: transaction 100·segno at minute 2·segno (1000 bytes in)
/// and 100·segno + 1 half a minute later (5000 bytes in).
fn commits(segno: u64) -> Vec<Mark> {
    let minute = 2 * segno as u32;
    let xid = 100 * segno as u32;
    vec![
        mark(lsn(segno, 1000), at(minute), MarkKind::Commit { xid }),
        mark(
            lsn(segno, 5000),
            at(minute) + TimeDelta::seconds(30),
            MarkKind::Commit { xid: xid + 1 },
        ),
    ]
}

/// Backups at minutes 0 (segment 2) and 20 (segment 6); segments 2..=10 on timeline 1, each
/// with [`commits`] and archived a minute after its first commit.
fn state() -> RepoState<'static> {
    state_with(commits)
}

fn state_with(marks: impl Fn(u64) -> Vec<Mark>) -> RepoState<'static> {
    let mut s = RepoState {
        backups: vec![backup("b0", 1, 2, 0), backup("b20", 1, 6, 20)],
        segment_size: Some(SIZE),
        records: ArchivedRecords::known(
            (2..=10).map(|segno| (Segment { timeline: 1, segno }, SegmentSummary::of_marks(marks(segno)))),
        ),
        ..RepoState::default()
    };
    for segno in 2..=10 {
        s.segments.insert((1, segno));
    }
    s
}

fn request(target: Target) -> Request {
    Request {
        target,
        exclusive: false,
        before: false,
        timeline: TimelineChoice::Latest,
        backup: None,
    }
}

fn time(minute: u32) -> Target {
    Target::Time {
        time: at(minute),
        assumed_utc: false,
    }
}

fn refusal(state: &RepoState, target: Target) -> String {
    plan(state, &request(target)).unwrap_err().to_string()
}

#[test]
fn the_newest_backup_consistent_before_the_target_is_chosen() {
    let p = plan(&state(), &request(time(15))).unwrap();
    assert_eq!(p.backup_id, "b0");
    assert_eq!(p.first_wal, "000000010000000000000002");
    // Minute 16 in segment 8 is the first commit after minute 15.
    assert_eq!(p.last_wal, "000000010000000000000008");
    assert_eq!(p.recovery_target, time(15));
    assert_eq!(plan(&state(), &request(time(20))).unwrap().backup_id, "b20");
    assert_eq!(
        plan(&state(), &request(Target::Lsn(lsn(6, 500)))).unwrap().backup_id,
        "b20"
    );
    assert_eq!(
        plan(&state(), &request(Target::Lsn(lsn(6, 399)))).unwrap().backup_id,
        "b0"
    );
    assert_eq!(plan(&state(), &request(Target::Xid(801))).unwrap().backup_id, "b0");
    let latest = plan(&state(), &request(Target::Latest)).unwrap();
    assert_eq!(
        (latest.backup_id.as_str(), latest.last_wal.as_str()),
        ("b20", "00000001000000000000000A")
    );
}

#[test]
fn the_last_segment_holds_the_record_that_stops_recovery() {
    // Segment 8 was archived at minute 17, yet its commits are at 16 and 16:30: the commit
    // after 17 is in segment 9.
    assert_eq!(
        plan(&state(), &request(time(17))).unwrap().last_wal,
        "000000010000000000000009"
    );
    // inclusive stops after a commit at the target time, exclusive before it.
    let at_16 = |exclusive| Request {
        exclusive,
        before: false,
        ..request(time(16))
    };
    let stop_minute = |exclusive| {
        let p = plan(&state(), &at_16(exclusive)).unwrap();
        (p.last_wal, p.exclusive)
    };
    assert_eq!(stop_minute(false), ("000000010000000000000008".to_string(), false));
    assert_eq!(stop_minute(true), ("000000010000000000000008".to_string(), true));
    // A commit whose record continues into the next segment needs that segment too.
    let spanning = state_with(|segno| {
        let mut marks = commits(segno);
        if segno == 8 {
            marks[1].end = lsn(9, 100);
        }
        marks
    });
    assert_eq!(
        plan(&spanning, &request(time(16))).unwrap().last_wal,
        "000000010000000000000009"
    );
    // A transaction target stops at its commit; an LSN target reads the record at or after it.
    let p = plan(&state(), &request(Target::Xid(701))).unwrap();
    assert_eq!(p.last_wal, "000000010000000000000007");
    let p = plan(&spanning, &request(Target::Lsn(lsn(8, 4000)))).unwrap();
    assert_eq!(p.last_wal, "000000010000000000000009", "the commit at 5000 ends in 9");
    let p = plan(&spanning, &request(Target::Lsn(lsn(8, 900)))).unwrap();
    assert_eq!(p.last_wal, "000000010000000000000008", "the commit at 1000 ends in 8");
    let p = plan(&state(), &request(Target::Lsn(lsn(8, 6000)))).unwrap();
    assert_eq!(p.last_wal, "000000010000000000000009", "the next record is in 9");
}

#[test]
fn a_restore_point_is_found_by_name_in_the_catalog() {
    let mut s = state();
    s.restore_points.push(RestorePoint {
        name: "before_oops".into(),
        lsn: lsn(8, 100),
        time: at(17),
        timeline: 1,
        wal_file: "000000010000000000000008".into(),
        generation: 1,
    });
    // A restore point record ending exactly at a segment's end needs no more.
    s.restore_points.push(RestorePoint {
        name: "at_the_end".into(),
        lsn: lsn(9, 0),
        time: at(17),
        timeline: 1,
        wal_file: "000000010000000000000008".into(),
        generation: 1,
    });
    let p = plan(&s, &request(Target::Name("before_oops".into()))).unwrap();
    assert_eq!(
        (p.backup_id.as_str(), p.last_wal.as_str()),
        ("b20", "000000010000000000000008")
    );
    let p = plan(&s, &request(Target::Name("at_the_end".into()))).unwrap();
    assert_eq!(p.last_wal, "000000010000000000000008");
    assert!(refusal(&s, Target::Name("unknown".into())).contains("not in the repository's catalog"));
}

#[test]
fn a_time_after_the_newest_commit_is_recovered_when_the_archive_covers_it() {
    // Segment 10 ends with a checkpoint at minute 22, after its commits at 20 and 20:30.
    let covered = state_with(|segno| {
        let mut marks = commits(segno);
        if segno == 10 {
            marks.push(mark(lsn(10, 9000), at(22), MarkKind::Checkpoint));
        }
        marks
    });
    let p = plan(&covered, &request(time(21))).unwrap();
    assert_eq!(p.target, time(21));
    assert_eq!(p.recovery_target, Target::Lsn(lsn(10, 9000)));
    assert!(!p.exclusive, "inclusive: the checkpoint is replayed");
    assert_eq!(p.last_wal, "00000001000000000000000A");
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("checkpoint at") && n.contains("the same state")),
        "{:?}",
        p.notes
    );
    assert_eq!(
        plan(&covered, &request(time(22))).unwrap().recovery_target,
        Target::Lsn(lsn(10, 9000))
    );
    // After everything archived: refused with the newest commit's time and how far to go.
    let err = refusal(&covered, time(23));
    assert!(
        err.contains("the newest commit in the archived WAL is at 2026-11-25 10:20:30")
            && err.contains("the archive does not yet show 2026-11-25 10:23:00")
            && err.contains("choose a time up to 2026-11-25 10:22:00"),
        "{err}"
    );
    // Without the checkpoint nothing after the newest commit is shown.
    let err = refusal(&state(), time(21));
    assert!(err.contains("choose a time up to 2026-11-25 10:20:30"), "{err}");
    // A checkpoint before the newest commit proves nothing.
    let before = state_with(|segno| {
        let mut marks = commits(segno);
        if segno == 10 {
            marks.insert(1, mark(lsn(10, 3000), at(22), MarkKind::Checkpoint));
        }
        marks
    });
    assert!(refusal(&before, time(21)).contains("the archive does not yet show"));
}

#[test]
fn unreachable_targets_are_refused_before_anything_is_touched() {
    let err = refusal(&state(), time(30));
    assert!(err.contains("the archive does not yet show"), "{err}");
    let err = refusal(&state(), Target::Lsn(lsn(11, 0)));
    assert!(err.contains("after the newest archived WAL"), "{err}");
    let err = refusal(&state(), Target::Xid(5000));
    assert!(
        err.contains("transaction 5000 is after the newest transaction in the archived WAL (1001)"),
        "{err}"
    );
    let err = refusal(&state(), Target::Xid(702));
    assert!(err.contains("has no commit or abort record"), "{err}");
    let mut early = state();
    early.backups.remove(0);
    let err = refusal(&early, time(10));
    assert!(err.contains("no backup is consistent before the target"), "{err}");
    let err = plan(
        &state(),
        &Request {
            backup: Some("b20".into()),
            ..request(time(10))
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("before the consistency point of backup b20"), "{err}");
}

#[test]
fn the_first_missing_segment_is_named() {
    let mut s = state();
    s.segments.remove(&(1, 4));
    let err = refusal(&s, time(15));
    assert!(err.contains("WAL segment 000000010000000000000004 is missing"), "{err}");
    // A gap after the target does not matter.
    assert!(plan(&s, &request(Target::Lsn(lsn(6, 500)))).is_ok());
    let err = refusal(&s, Target::Lsn(lsn(4, 500)));
    assert!(err.contains("WAL segment 000000010000000000000004 is missing"), "{err}");
    let mut s = state();
    s.segments.remove(&(1, 9));
    let err = refusal(&s, time(17));
    assert!(err.contains("WAL segment 000000010000000000000009 is missing"), "{err}");
}

#[test]
fn timelines_are_followed_through_history_files() {
    let mut s = state();
    // Timeline 2 branched from 1 at segment 8; it holds segments 8 and 9.
    s.histories.insert(
        2,
        vec![TimelineSwitch {
            parent: 1,
            switchpoint: lsn(8, 1000),
            reason: "before 2026-11-25".into(),
        }],
    );
    s.segments.insert((2, 8));
    s.segments.insert((2, 9));
    let p = plan(&s, &request(Target::Latest)).unwrap();
    assert_eq!(p.timeline_path.len(), 2);
    assert_eq!(p.last_wal, "000000020000000000000009");
    // The switch segment is read from the child timeline: deleting it there is a gap.
    s.segments.remove(&(2, 8));
    assert!(refusal(&s, Target::Latest).contains("000000020000000000000008 is missing"));
    // Timeline 3 has no history file: it cannot be followed.
    let err = plan(
        &s,
        &Request {
            timeline: TimelineChoice::Number(3),
            ..request(Target::Latest)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("no history file"), "{err}");
}

#[test]
fn a_backup_after_the_branch_point_is_not_on_the_path() {
    let mut s = state();
    s.histories.insert(
        2,
        vec![TimelineSwitch {
            parent: 1,
            switchpoint: lsn(5, 0),
            reason: String::new(),
        }],
    );
    s.segments.insert((2, 5));
    // b20 (timeline 1, segment 6) is after timeline 1 ended at segment 5 on the way to timeline 2.
    let p = plan(&s, &request(Target::Latest)).unwrap();
    assert_eq!(p.backup_id, "b0");
    assert_eq!(p.last_wal, "000000020000000000000005");
}

#[test]
fn reach_agrees_with_the_plan() {
    let r = reach(&state(), 1, "b0").unwrap().unwrap();
    assert_eq!(r.last_wal, "00000001000000000000000A");
    assert_eq!(r.newest_time, Some(at(20) + TimeDelta::seconds(30)));
    assert!(plan(
        &state(),
        &request(Target::Time {
            time: r.newest_time.unwrap(),
            assumed_utc: false
        })
    )
    .is_ok());
    let mut s = state();
    s.segments.remove(&(1, 8));
    let r = reach(&s, 1, "b0").unwrap().unwrap();
    assert_eq!(r.last_wal, "000000010000000000000007");
    assert_eq!(r.newest_time, Some(at(14) + TimeDelta::seconds(30)));
    s.segments.remove(&(1, 2));
    assert_eq!(reach(&s, 1, "b0").unwrap(), None, "the backup's own WAL is gone");
}

/// The planner's shortcuts over the archived segments (runs, the newest per path step) agree
/// with walking every segment number, on a path through three timelines with gaps, segments an
/// old timeline wrote past its end, and a switch point at a segment's start.
#[test]
fn walks_over_the_path_agree_with_a_walk_over_every_segment() {
    let mut s = state();
    let switch = |parent: u32, segno: u64, offset: u64| TimelineSwitch {
        parent,
        switchpoint: lsn(segno, offset),
        reason: String::new(),
    };
    s.histories.insert(2, vec![switch(1, 40, 100)]);
    s.histories.insert(3, vec![switch(1, 40, 100), switch(2, 70, 0)]);
    s.segments = (1..=50)
        .filter(|n| n % 13 != 0)
        .map(|n| (1, n))
        .chain((40..=80).filter(|n| n % 17 != 0).map(|n| (2, n)))
        .chain((69..=120).filter(|n| n % 19 != 0).map(|n| (3, n)))
        .collect();
    for target in 1..=3 {
        let path = Path::to(&s, target, SIZE).unwrap();
        let every: Vec<u64> = (0..130).filter(|n| path.archived(&s, *n)).collect();
        assert_eq!(path.newest_archived(&s), every.last().copied(), "timeline {target}");
        for first in 0..130 {
            let walked = (first..).take_while(|n| path.archived(&s, *n)).last();
            assert_eq!(path.archived_from(&s, first), walked, "timeline {target} from {first}");
        }
    }
}

#[test]
fn before_stops_just_before_a_committed_transaction_named_by_xid_or_commit_lsn() {
    let before = |target: Target| Request {
        exclusive: true,
        before: true,
        ..request(target)
    };
    // Transaction 801 commits in segment 8, 5000 bytes in, at 16:30.
    for target in [Target::Xid(801), Target::Lsn(lsn(8, 5000))] {
        let p = plan(&state(), &before(target.clone())).unwrap();
        assert_eq!(p.last_wal, "000000010000000000000008", "{target}");
        assert!(p.exclusive, "{target}");
        assert_eq!(p.recovery_target, target);
        let stops = p.stops_before.expect("the plan names the transaction");
        assert_eq!(
            (stops.xid, stops.commit_lsn, stops.commit_time),
            (801, lsn(8, 5000), at(16) + TimeDelta::seconds(30))
        );
    }
    // Without --before, the same targets name no transaction.
    assert_eq!(plan(&state(), &request(Target::Xid(801))).unwrap().stops_before, None);

    // An LSN where no transaction ends, and a transaction that rolled back, are refused.
    let err = plan(&state(), &before(Target::Lsn(lsn(8, 5001))))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no commit record starts at") && err.contains("pitr wal events"),
        "{err}"
    );
    let rolled_back = state_with(|segno| {
        let mut marks = commits(segno);
        if segno == 8 {
            marks[1].kind = MarkKind::Abort { xid: 801 };
        }
        marks
    });
    let err = plan(&rolled_back, &before(Target::Xid(801))).unwrap_err().to_string();
    assert!(err.contains("rolled back") && err.contains("changed nothing"), "{err}");
    let err = plan(&state(), &before(time(15))).unwrap_err().to_string();
    assert!(err.contains("--before takes"), "{err}");
}
