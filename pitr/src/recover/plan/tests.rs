use std::time::{Duration, SystemTime};

use chrono::{TimeZone, Utc};

use super::*;
use crate::backup::Tier;

const SIZE: SegmentSize = SegmentSize::DEFAULT;

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 10, minute, 0).unwrap()
}

fn lsn(segno: u64, offset: u64) -> Lsn {
    Lsn(SIZE.segment_start(segno).0 + offset)
}

fn backup(id: &str, timeline: u32, start_segno: u64, stop_minute: u32) -> Manifest {
    let name = |segno| Segment { timeline, segno }.file_name(SIZE);
    Manifest {
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
        tablespaces: vec![],
        directories: vec![],
        files: vec![],
    }
}

/// Backups at minutes 0 (segment 2) and 20 (segment 6); segments 2..=10 on timeline 1, each
/// archived at minute 2 × segno.
fn state() -> RepoState {
    let mut s = RepoState {
        backups: vec![backup("b0", 1, 2, 0), backup("b20", 1, 6, 20)],
        segment_size: Some(SIZE),
        ..RepoState::default()
    };
    for segno in 2..=10 {
        s.segments.insert((1, segno), SystemTime::from(at(2 * segno as u32)));
    }
    s
}

fn request(target: Target) -> Request {
    Request {
        target,
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
    // Segment 8 is the first archived at or after minute 15 (minute 16).
    assert_eq!(p.last_wal, "000000010000000000000008");
    assert_eq!(plan(&state(), &request(time(20))).unwrap().backup_id, "b20");
    assert_eq!(
        plan(&state(), &request(Target::Lsn(lsn(6, 500)))).unwrap().backup_id,
        "b20"
    );
    assert_eq!(
        plan(&state(), &request(Target::Lsn(lsn(6, 399)))).unwrap().backup_id,
        "b0"
    );
    assert_eq!(plan(&state(), &request(Target::Xid(19_999))).unwrap().backup_id, "b0");
    assert_eq!(plan(&state(), &request(Target::Xid(20_000))).unwrap().backup_id, "b20");
    let latest = plan(&state(), &request(Target::Latest)).unwrap();
    assert_eq!(
        (latest.backup_id.as_str(), latest.last_wal.as_str()),
        ("b20", "00000001000000000000000A")
    );
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
    });
    let p = plan(&s, &request(Target::Name("before_oops".into()))).unwrap();
    assert_eq!(
        (p.backup_id.as_str(), p.last_wal.as_str()),
        ("b20", "000000010000000000000008")
    );
    assert!(refusal(&s, Target::Name("unknown".into())).contains("not in the repository's catalog"));
}

#[test]
fn unreachable_targets_are_refused_before_anything_is_touched() {
    let err = refusal(&state(), time(30));
    assert!(err.contains("after the newest archived WAL"), "{err}");
    let err = refusal(&state(), Target::Lsn(lsn(11, 0)));
    assert!(err.contains("after the newest archived WAL"), "{err}");
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
    s.segments.insert((2, 8), SystemTime::from(at(30)));
    s.segments
        .insert((2, 9), SystemTime::from(at(31)) + Duration::from_secs(1));
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
    s.segments.insert((2, 5), SystemTime::from(at(40)));
    // b20 (timeline 1, segment 6) is after timeline 1 ended at segment 5 on the way to timeline 2.
    let p = plan(&s, &request(Target::Latest)).unwrap();
    assert_eq!(p.backup_id, "b0");
    assert_eq!(p.last_wal, "000000020000000000000005");
}
