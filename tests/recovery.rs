//! Archive recovery with `restore_command = 'pitr archive-get %f %p'`: a base backup taken with
//! `pg_basebackup -X none` (so every WAL byte must come from the repository) replays the archive
//! and ends with exactly the primary's data; a corrupted archive file stops recovery instead of
//! promoting early; a promoted copy archives its new timeline into the same repository.

mod common;

use common::*;

/// Rows inserted before the base backup.
const ROWS_BEFORE_BACKUP: i64 = 1000;
/// Highest id inserted after the base backup.
const LAST_ID: i64 = 40000;

/// Row count after [`write_after_backup`]: ids 1..=LAST_ID minus the multiples of 7.
fn expected_rows() -> i64 {
    LAST_ID - LAST_ID / 7
}

/// A primary with 1 MB segments archiving through pitr, holding table `t` with
/// [`ROWS_BEFORE_BACKUP`] rows.
fn primary() -> Cluster {
    primary_with(ClusterOptions::default().wal_segsize_mb(1))
}

/// Like [`primary`], with the given options.
fn primary_with(opts: ClusterOptions) -> Cluster {
    let c = Cluster::start(opts);
    c.psql(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, {ROWS_BEFORE_BACKUP}) g"
    ));
    c
}

/// Writes several segments' worth of changes after the backup (inserts, a delete, an update),
/// switches WAL and waits until it is archived. Returns the last archived segment.
fn write_after_backup(c: &Cluster) -> String {
    let first = ROWS_BEFORE_BACKUP + 1;
    let mid = LAST_ID / 2;
    c.psql(&format!(
        "INSERT INTO t SELECT g, repeat('y', 100) FROM generate_series({first}, {mid}) g"
    ));
    c.psql(&format!(
        "INSERT INTO t SELECT g, repeat('z', 100) FROM generate_series({}, {LAST_ID}) g",
        mid + 1
    ));
    c.psql("DELETE FROM t WHERE id % 7 = 0");
    c.psql("UPDATE t SET v = 'updated' WHERE id <= 10");
    assert_eq!(c.psql("SELECT count(*) FROM t"), expected_rows().to_string());
    let last = c.switch_wal();
    c.wait_archived(&last);
    last
}

/// A fingerprint of table `t`: count, sum of ids, and a hash of all values in id order.
fn fingerprint(c: &Cluster) -> String {
    c.psql("SELECT count(*), sum(id), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t")
}

#[test]
fn recovery_from_base_backup_replays_the_archive_to_the_exact_rows() {
    let p = primary();
    let backup = p.base_backup();
    let last = write_after_backup(&p);
    let expected = fingerprint(&p);

    let r = Cluster::recover(backup, RecoveryOptions::default());
    r.expect_promoted();

    assert_eq!(
        r.psql("SELECT count(*) FROM t"),
        expected_rows().to_string(),
        "row count after recovery\n--- recovered server log (tail) ---\n{}",
        r.log_tail()
    );
    assert_eq!(fingerprint(&r), expected, "table contents after recovery");

    let log = r.log();
    let restored: Vec<&str> = log.lines().filter(|l| l.contains("restored log file")).collect();
    assert!(
        restored.len() >= 5,
        "expected several segments restored from the archive, got {}:\n{}",
        restored.len(),
        tail(&log, 60)
    );
    assert!(
        log.contains(&format!("restored log file \"{last}\" from archive")),
        "the last archived segment {last} was not restored:\n{}",
        tail(&log, 60)
    );
    assert!(!log.contains("could not restore file"), "{}", tail(&log, 60));
}

#[test]
fn corrupted_archive_file_stops_recovery_instead_of_promoting() {
    let p = primary();
    let backup = p.base_backup();
    let last = write_after_backup(&p);
    let expected = fingerprint(&p);

    // Corrupt the archived copy of the last segment (it holds the final changes).
    let stored = stored_path(p.repo_dir(), &last);
    let original_stored = read(&stored);
    flip_byte_from_end(&stored, 10);

    let dest = p.test_dir().subdir("manual-get").join(&last);
    let out = p.pitr(&["archive-get", &last, dest.to_str().unwrap()]);
    assert!(
        out.code().is_some_and(|c| c >= 126),
        "archive-get of a corrupted file must exit >= 126 so PostgreSQL aborts recovery:\n{}",
        out.describe()
    );
    out.assert_code(200).assert_one_line_error();

    let mut r = Cluster::recover(backup, RecoveryOptions::default());
    match r.wait_recovery_end() {
        RecoveryOutcome::Promoted => panic!(
            "the server promoted although {last} could not be restored\n\
             --- recovered server log (tail) ---\n{}",
            r.log_tail()
        ),
        RecoveryOutcome::Failed { log } => {
            assert!(
                log.contains(&format!("FATAL:  could not restore file \"{last}\" from archive")),
                "expected FATAL \"could not restore file\" for {last}:\n{}",
                tail(&log, 60)
            );
            for promotion_sign in ["selected new timeline ID", "archive recovery complete"] {
                assert!(
                    !log.contains(promotion_sign),
                    "log shows promotion ({promotion_sign:?}):\n{}",
                    tail(&log, 60)
                );
            }
        }
    }
    assert!(!r.is_running());
    assert!(
        !r.pg_wal().join("00000002.history").exists(),
        "a new timeline was created"
    );

    // Once the archive is repaired, the same copy resumes recovery and reaches the exact rows.
    rewrite_keeping_mode(&stored, &original_stored);
    r.start_server();
    r.expect_promoted();
    assert_eq!(fingerprint(&r), expected, "table contents after resumed recovery");
}

#[test]
fn promoted_copy_archives_its_new_timeline_into_the_same_repository() {
    // This primary (and so the promoted copy) archives with gzip; restoring needs no option.
    let p = primary_with(
        ClusterOptions::default()
            .wal_segsize_mb(1)
            .pitr_arg("--compress")
            .pitr_arg("gzip"),
    );
    let backup = p.base_backup();
    let last = write_after_backup(&p);
    let expected = fingerprint(&p);
    let stored = read(&stored_path(p.repo_dir(), &last));
    assert!(
        stored[STORED_HEADER_LEN..].starts_with(&[0x1f, 0x8b]),
        "archive_command with --compress gzip should store gzip payloads"
    );

    let r = Cluster::recover(backup, RecoveryOptions::default().archive(true));
    r.expect_promoted();
    assert_eq!(fingerprint(&r), expected);

    // The timeline history file, pushed by the server through pitr.
    r.wait_archived("00000002.history");
    let history = read(&r.pg_wal().join("00000002.history"));
    assert!(
        history.starts_with(b"1\t"),
        "unexpected history file: {}",
        String::from_utf8_lossy(&history)
    );
    assert!(stored_path(r.repo_dir(), "00000002.history").is_file());
    let dest_dir = r.test_dir().subdir("restored");
    let dest = dest_dir.join("history");
    r.pitr(&["archive-get", "00000002.history", dest.to_str().unwrap()])
        .assert_success()
        .assert_silent();
    assert!(read(&dest) == history, "archive-get 00000002.history differs");

    // A segment of the new timeline.
    let seg = r.switch_wal();
    assert!(seg.starts_with("00000002"), "expected a timeline 2 segment, got {seg}");
    r.wait_archived(&seg);
    r.wait_archiver_idle();
    let (archived, _, failed, last_failed) = r.archiver_stats();
    assert_eq!(
        failed,
        0,
        "archiving on the new timeline failed (last failed: {last_failed}, archived {archived})\n\
         --- server log (tail) ---\n{}",
        r.log_tail()
    );
    let (done, _) = r.archive_status();
    for name in done
        .iter()
        .filter(|n| n.starts_with("00000002") || n.ends_with(".partial"))
    {
        let in_pg_wal = r.pg_wal().join(name);
        if !in_pg_wal.exists() {
            continue;
        }
        let dest = dest_dir.join(name);
        r.pitr(&["archive-get", name, dest.to_str().unwrap()])
            .assert_success()
            .assert_silent();
        assert!(read(&dest) == read(&in_pg_wal), "archive-get {name} differs");
    }
    assert!(done.contains(&seg), "{seg} not among archived files {done:?}");

    // The primary's timeline 1 is untouched and still restorable.
    let probe = p.switch_wal();
    p.wait_archived(&probe);
}
