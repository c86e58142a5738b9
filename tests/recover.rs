//! `pitr recover` and `pitr restore-point` against real PostgreSQL servers.
//!
//! Every test builds its own primary (archiving into its own repository through `pitr
//! archive-push`), takes backups with `pitr backup`, and recovers with `pitr recover` run as the
//! server user, exactly as an operator would: the runbook scenario (restore point before an
//! accidental DELETE), every kind of target (name, time, xid, LSN, inclusive and exclusive,
//! immediate, latest), the actions (promote, pause, shutdown), --no-start and --dry-run, the
//! refusals that happen before anything is touched, recoveries that fail during replay (a
//! corrupt archived segment, a target the WAL never reaches), the restore point catalog,
//! following a new timeline archived by a recovered copy into the same repository, and the
//! --json plan and report.
//!
//! A recovered server is left running by `pitr recover` (promote, pause): [`NewDir`] stops it
//! (immediate) and removes the private socket directory pitr created when it is dropped.

mod common;

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use common::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A new primary archiving into its own new repository.
fn primary() -> Cluster {
    Cluster::start(ClusterOptions::default())
}

/// `pitr backup --fast` ([`backup_ok`]); returns the backup id from its text summary.
#[track_caller]
fn backup(c: &Cluster) -> String {
    backup_ok(c, &[]).backup_id()
}

/// `pitr restore-point <name> <extra…>`; panics unless it succeeds.
#[track_caller]
fn restore_point(c: &Cluster, name: &str, extra: &[&str]) -> CmdOutput {
    let mut args = vec!["restore-point", name];
    args.extend_from_slice(extra);
    let out = c.pitr_connected(c.repo(), &args);
    assert!(
        out.success(),
        "pitr restore-point {name} failed:\n{}\n--- server log (tail) ---\n{}",
        out.describe(),
        c.log_tail()
    );
    out
}

#[track_caller]
fn assert_contains(out: &CmdOutput, needle: &str) {
    let all = format!("{}\n{}", out.stdout_str(), out.stderr_str());
    assert!(
        all.contains(needle),
        "expected {needle:?} in the output:\n{}",
        out.describe()
    );
}

#[track_caller]
fn assert_lacks(out: &CmdOutput, needle: &str) {
    let all = format!("{}\n{}", out.stdout_str(), out.stderr_str());
    assert!(
        !all.contains(needle),
        "did not expect {needle:?} in the output:\n{}",
        out.describe()
    );
}

/// `pitr --repo <c's repo> recover --pgdata <nd> <args…>` as the server user.
fn recover(c: &Cluster, nd: &NewDir, args: &[&str]) -> CmdOutput {
    run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .arg("recover")
        .arg("--pgdata")
        .arg(&nd.data)
        .args(args))
}

/// Like [`recover`], panicking (with the recovered server's log) unless it exits 0.
#[track_caller]
fn recover_ok(c: &Cluster, nd: &NewDir, args: &[&str]) -> CmdOutput {
    let out = recover(c, nd, args);
    assert!(
        out.success(),
        "pitr recover failed:\n{}\n--- recovered server log ---\n{}",
        out.describe(),
        tail(&nd.server_log(), 60)
    );
    out
}

/// Where the recovered server listens, from the `connect: psql -h S -p P -U U postgres` line.
#[derive(Debug)]
struct Conn {
    socket_dir: PathBuf,
    port: u16,
    user: String,
}

#[track_caller]
fn parse_connect(text: &str) -> Conn {
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |flag: &str| -> &str {
        let i = words
            .iter()
            .position(|w| *w == flag)
            .unwrap_or_else(|| panic!("no {flag} in connect line {text:?}"));
        words
            .get(i + 1)
            .unwrap_or_else(|| panic!("nothing after {flag} in {text:?}"))
    };
    assert_eq!(words.first(), Some(&"psql"), "connect line {text:?}");
    Conn {
        socket_dir: PathBuf::from(after("-h")),
        port: after("-p").parse().expect("numeric port in connect line"),
        user: after("-U").to_string(),
    }
}

#[track_caller]
fn connect_of(out: &CmdOutput) -> Conn {
    parse_connect(&out.stdout_line("connect: "))
}

/// Runs `sql` through `psql -X -A -t` ([`try_psql_with`]) on the recovered server as its user;
/// trimmed stdout.
#[track_caller]
fn psql_at(conn: &Conn, sql: &str) -> String {
    let mut psql = client_at("psql", &conn.socket_dir, conn.port);
    psql.arg("-U").arg(&conn.user);
    try_psql_with(&mut psql, sql)
        .unwrap_or_else(|out| panic!("psql on the recovered server failed:\n{}", out.describe()))
}

/// The runbook's bad day: products with 1000 rows, a backup, 500 more rows, restore point
/// `before_oops`, then `oops` (archived).
fn oops_after_restore_point(oops: &str) -> Cluster {
    let c = primary();
    create_rows(&c, "products", 1000);
    backup(&c);
    insert_rows(&c, "products", 1001, 1500);
    restore_point(&c, "before_oops", &[]);
    c.psql(oops);
    c.switch_and_archive();
    c
}

/// `CREATE TABLE <table> (id int PRIMARY KEY, note text)` with ids `1..=n`.
fn create_rows(c: &Cluster, table: &str, n: u32) {
    c.psql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, note text); \
         INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, {n}) g"
    ));
}

/// Inserts ids `from..=to` into `table`.
fn insert_rows(c: &Cluster, table: &str, from: u32, to: u32) {
    c.psql(&format!(
        "INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series({from}, {to}) g"
    ));
}

// ---------------------------------------------------------------------------------------------
// 1. The runbook scenario
// ---------------------------------------------------------------------------------------------

#[test]
fn runbook_restore_point_before_oops() {
    let c = primary();
    create_rows(&c, "products", 1000);
    let backup_id = backup(&c);
    insert_rows(&c, "products", 1001, 1500);
    let rp = restore_point(&c, "before_oops", &[]);
    assert!(
        rp.stdout_str().contains("restore point 'before_oops' at ") && rp.stdout_str().contains("archived"),
        "{}",
        rp.describe()
    );
    // The accident, archived.
    c.psql("DELETE FROM products");
    c.switch_and_archive();

    let nd = NewDir::new();
    let port = free_port();
    let out = recover_ok(
        &c,
        &nd,
        &[
            "--target-name",
            "before_oops",
            "--port",
            &port.to_string(),
            "--verify-sql",
            "SELECT COUNT(*) FROM products",
        ],
    );
    let stdout = out.stdout_str();
    assert!(
        stdout.starts_with("Recovery plan"),
        "the plan comes first:\n{}",
        out.describe()
    );
    assert!(out.stdout_line("backup:").contains(&backup_id), "{}", out.describe());
    assert!(out.stdout_line("WAL:").contains("all archived"), "{}", out.describe());
    let stopped = out.stdout_line("PostgreSQL: ");
    assert!(
        stopped.starts_with("recovery stopping at restore point") && stopped.contains("before_oops"),
        "stop line {stopped:?}:\n{}",
        out.describe()
    );
    assert_eq!(
        out.stdout_line("server: "),
        "promoted to timeline 2",
        "{}",
        out.describe()
    );
    assert_eq!(out.stdout_line("verify: "), "1500", "{}", out.describe());
    assert!(stdout.contains("next steps:\n  1. "), "{}", out.describe());
    let conn = connect_of(&out);
    assert_eq!(conn.port, port, "the --port is the recovered server's port");

    // The recovered server itself.
    assert_eq!(psql_at(&conn, "SELECT COUNT(*) FROM products"), "1500");
    assert_eq!(psql_at(&conn, "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(
        psql_at(&conn, "SHOW archive_mode"),
        "off",
        "a recovered copy must not archive"
    );
    assert_eq!(psql_at(&conn, "SELECT timeline_id FROM pg_control_checkpoint()"), "2");
    let auto = nd.auto_conf();
    assert!(auto.contains("recovery_target_name = 'before_oops'"), "{auto}");
    assert!(nd.data.join("pitr_recover.log").exists());

    // The primary is untouched.
    assert_eq!(c.psql("SELECT COUNT(*) FROM products"), "0");
    assert_eq!(c.psql("SELECT pg_is_in_recovery()"), "f");
}

// ---------------------------------------------------------------------------------------------
// 2. --target-time
// ---------------------------------------------------------------------------------------------

#[test]
fn target_time_between_two_batches() {
    // A server time zone other than UTC, so that "taken as UTC" is really checked.
    let c = Cluster::start(ClusterOptions::default().setting("timezone", "'America/New_York'"));
    c.psql("CREATE TABLE batches (batch int, n int)");
    backup(&c);
    c.psql("INSERT INTO batches SELECT 1, g FROM generate_series(1, 100) g");
    let row = c.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), now()::text");
    let (utc_no_zone, with_zone) = row.split_once('|').expect("two columns");
    assert!(
        with_zone.ends_with("-05") || with_zone.ends_with("-04"),
        "server time {with_zone:?}"
    );
    thread::sleep(Duration::from_millis(1100));
    c.psql("INSERT INTO batches SELECT 2, g FROM generate_series(1, 100) g");
    c.switch_and_archive();

    // The zone-less time is taken as UTC, and the plan says so.
    let nd = NewDir::new();
    let out = recover_ok(
        &c,
        &nd,
        &[
            "--target-time",
            utc_no_zone,
            "--verify-sql",
            "SELECT batch, COUNT(*) FROM batches GROUP BY batch ORDER BY batch",
        ],
    );
    assert_contains(&out, "taken as UTC");
    let stopped = out.stdout_line("PostgreSQL: ");
    assert!(
        stopped.starts_with("recovery stopping before commit of transaction"),
        "{stopped:?}"
    );
    assert_eq!(out.stdout_line("verify: "), "1 | 100", "{}", out.describe());
    let conn = connect_of(&out);
    assert_eq!(psql_at(&conn, "SELECT COUNT(*) FROM batches WHERE batch = 2"), "0");
    assert_eq!(psql_at(&conn, "SELECT COUNT(*) FROM batches WHERE batch = 1"), "100");

    // The same instant with the server's zone plans the same target, without the note.
    let nd2 = NewDir::new();
    let dry = recover_ok(&c, &nd2, &["--target-time", with_zone, "--dry-run"]);
    assert_eq!(
        dry.stdout_line("target:"),
        out.stdout_line("target:"),
        "{}",
        dry.describe()
    );
    assert_lacks(&dry, "taken as UTC");
    assert!(!nd2.data.exists());
}

// ---------------------------------------------------------------------------------------------
// 3. --target-xid and --target-lsn, inclusive and --exclusive
// ---------------------------------------------------------------------------------------------

#[test]
fn target_xid_and_lsn_inclusive_and_exclusive() {
    let c = primary();
    c.psql("CREATE EXTENSION pg_walinspect; CREATE TABLE markers (name text)");
    // The backup records next_xid: it must come before the transactions recovered to.
    backup(&c);
    let xid_a: u64 = c
        .psql("INSERT INTO markers VALUES ('A') RETURNING txid_current()")
        .parse()
        .expect("xid");
    let before_b = c.psql("SELECT pg_current_wal_insert_lsn()");
    let xid_b: u64 = c
        .psql("INSERT INTO markers VALUES ('B') RETURNING txid_current()")
        .parse()
        .expect("xid");
    let after_b = c.psql("SELECT pg_current_wal_insert_lsn()");
    c.psql("INSERT INTO markers VALUES ('C')");
    c.switch_and_archive();
    assert!(xid_b > xid_a);
    // The LSN of B's commit record.
    let commit = c.psql(&format!(
        "SELECT start_lsn, xid FROM pg_get_wal_records_info('{before_b}', '{after_b}') \
         WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT' AND xid = '{xid_b}'"
    ));
    let (commit_b, commit_xid) = commit.split_once('|').unwrap_or_else(|| panic!("{commit:?}"));
    assert_eq!(commit_xid, xid_b.to_string(), "one commit record, B's: {commit:?}");

    let xb = xid_b.to_string();
    let markers = "SELECT string_agg(name, ',' ORDER BY name) FROM markers";
    let cases: [(&str, &[&str], &str, &str); 4] = [
        (
            "xid inclusive",
            &["--target-xid", &xb],
            "A,B",
            "recovery stopping after commit of transaction",
        ),
        (
            "xid exclusive",
            &["--target-xid", &xb, "--exclusive"],
            "A",
            "recovery stopping before commit of transaction",
        ),
        (
            "lsn inclusive",
            &["--target-lsn", commit_b],
            "A,B",
            "recovery stopping after WAL location (LSN)",
        ),
        (
            "lsn exclusive",
            &["--target-lsn", commit_b, "--exclusive"],
            "A",
            "recovery stopping before WAL location (LSN)",
        ),
    ];
    for (what, args, expected, stop) in cases {
        let nd = NewDir::new();
        let mut all = args.to_vec();
        all.extend(["--verify-sql", markers]);
        let out = recover_ok(&c, &nd, &all);
        assert_eq!(out.stdout_line("verify: "), expected, "{what}:\n{}", out.describe());
        let stopped = out.stdout_line("PostgreSQL: ");
        assert!(stopped.starts_with(stop), "{what}: stop line {stopped:?}");
        if what.starts_with("xid") {
            assert!(stopped.contains(&xid_b.to_string()), "{what}: {stopped:?}");
        } else {
            assert!(stopped.contains(commit_b), "{what}: {stopped:?}");
        }
        let conn = connect_of(&out);
        assert_eq!(psql_at(&conn, markers), expected, "{what}");
        if what.ends_with("exclusive") {
            assert!(nd.auto_conf().contains("recovery_target_inclusive = 'off'"), "{what}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. --target immediate and --target latest
// ---------------------------------------------------------------------------------------------

#[test]
fn target_immediate_and_latest() {
    let c = primary();
    create_rows(&c, "t", 100);
    backup(&c);
    insert_rows(&c, "t", 101, 150);
    c.switch_and_archive();
    insert_rows(&c, "t", 151, 175);
    c.switch_and_archive();

    let count = "SELECT COUNT(*) FROM t";
    let nd = NewDir::new();
    let out = recover_ok(&c, &nd, &["--target", "immediate", "--verify-sql", count]);
    let stopped = out.stdout_line("PostgreSQL: ");
    assert!(
        stopped.contains("consistency"),
        "stop line {stopped:?}:\n{}",
        out.describe()
    );
    assert_eq!(out.stdout_line("verify: "), "100", "{}", out.describe());
    assert_eq!(psql_at(&connect_of(&out), count), "100");
    assert!(nd.auto_conf().contains("recovery_target = 'immediate'"));

    let nd = NewDir::new();
    let out = recover_ok(&c, &nd, &["--target", "latest", "--verify-sql", count]);
    assert_eq!(out.stdout_line("verify: "), "175", "{}", out.describe());
    assert_eq!(
        out.stdout_line("server: "),
        "promoted to timeline 2",
        "{}",
        out.describe()
    );
    let conn = connect_of(&out);
    assert_eq!(psql_at(&conn, count), "175");
    assert_eq!(psql_at(&conn, "SELECT pg_is_in_recovery()"), "f");
    let auto = nd.auto_conf();
    assert!(
        !auto.contains("recovery_target_action"),
        "no target, no action:\n{auto}"
    );
    drop(nd);

    // latest with --action shutdown: PostgreSQL promotes without a target; pitr still shuts the
    // copy down as asked and leaves no private socket directory behind.
    let down = NewDir::new();
    let out = recover_ok(&c, &down, &["--target", "latest", "--action", "shutdown"]);
    assert_eq!(
        out.stdout_line("server: "),
        "shutdown at the target",
        "{}",
        out.describe()
    );
    assert!(!down.is_running(), "the copy is stopped");
    for dir in down.socket_dirs() {
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
}

// ---------------------------------------------------------------------------------------------
// 5. --action pause / shutdown, --no-start, --dry-run
// ---------------------------------------------------------------------------------------------

#[test]
fn actions_no_start_and_dry_run() {
    let c = primary();
    create_rows(&c, "t", 10);
    backup(&c);
    insert_rows(&c, "t", 11, 20);
    restore_point(&c, "rp", &[]);
    insert_rows(&c, "t", 21, 30);
    c.switch_and_archive();

    // pause: the copy stays in recovery, read-only, at the target
    let paused = NewDir::new();
    let out = recover_ok(
        &c,
        &paused,
        &[
            "--target-name",
            "rp",
            "--action",
            "pause",
            "--verify-sql",
            "SELECT COUNT(*), pg_is_in_recovery() FROM t",
        ],
    );
    assert_eq!(out.stdout_line("server: "), "pause at the target", "{}", out.describe());
    assert!(out.stdout_line("PostgreSQL: ").contains("\"rp\""), "{}", out.describe());
    assert_eq!(out.stdout_line("verify: "), "20 | t", "{}", out.describe());
    assert_contains(&out, "pg_wal_replay_resume");
    let conn = connect_of(&out);
    assert_eq!(psql_at(&conn, "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(psql_at(&conn, "SELECT pg_get_wal_replay_pause_state()"), "paused");
    assert_eq!(psql_at(&conn, "SELECT COUNT(*) FROM t"), "20");
    drop(paused);

    // shutdown
    let down = NewDir::new();
    let port = free_port();
    let out = recover_ok(
        &c,
        &down,
        &[
            "--target-name",
            "rp",
            "--action",
            "shutdown",
            "--port",
            &port.to_string(),
        ],
    );
    assert!(out.stdout_line("server: ").contains("shutdown"), "{}", out.describe());
    assert_lacks(&out, "connect: ");
    assert!(!down.is_running(), "the server stops at the target");
    assert!(!down.data.join("postmaster.pid").exists());
    down.assert_settings(&[
        "restore_command = '",
        "archive-get %f %p'",
        "recovery_target_name = 'rp'",
        "recovery_target_action = 'shutdown'",
        "recovery_target_timeline = 'latest'",
        "archive_mode = 'off'",
        &format!("port = '{port}'"),
    ]);
    drop(down);

    // --no-start
    let files = NewDir::new();
    let port = free_port();
    let out = recover_ok(
        &c,
        &files,
        &["--target-name", "rp", "--no-start", "--port", &port.to_string()],
    );
    assert_contains(&out, "restored backup");
    assert_contains(&out, "start recovery: pg_ctl -D");
    assert_lacks(&out, "server: ");
    assert!(files.data.join("recovery.signal").exists());
    assert!(!files.data.join("postmaster.pid").exists());
    assert!(!files.is_running());
    assert!(!files.data.join("pitr_recover.log").exists(), "no server was started");
    files.assert_settings(&[
        "restore_command = '",
        "recovery_target_name = 'rp'",
        "recovery_target_action = 'promote'",
        "archive_mode = 'off'",
        &format!("port = '{port}'"),
    ]);
    drop(files);

    // --dry-run
    let dry = NewDir::new();
    let out = recover_ok(&c, &dry, &["--target-name", "rp", "--dry-run"]);
    assert_contains(&out, "Recovery plan");
    assert_lacks(&out, "restored backup");
    assert!(!dry.data.exists(), "--dry-run must not create NEWDIR");
}

// ---------------------------------------------------------------------------------------------
// 6. Refusals before anything is touched
// ---------------------------------------------------------------------------------------------

/// Runs `recover` into a new directory and asserts that it was refused with `message`, leaving
/// the directory uncreated.
#[track_caller]
fn assert_refused(c: &Cluster, args: &[&str], code: i32, message: &str) {
    let nd = NewDir::new();
    let out = recover(c, &nd, args);
    assert_eq!(
        out.code(),
        Some(code),
        "recover {args:?} must exit {code}:\n{}",
        out.describe()
    );
    assert!(
        out.stderr_str().contains(message),
        "recover {args:?}: expected {message:?} on stderr:\n{}",
        out.describe()
    );
    assert_lacks(&out, "restored backup");
    assert!(!nd.data.exists(), "recover {args:?} created {}", nd.data.display());
}

#[test]
fn refusals_before_touching_anything() {
    let c = primary();
    create_rows(&c, "t", 10);
    backup(&c);
    insert_rows(&c, "t", 11, 20);
    restore_point(&c, "early", &[]);
    let gap = c.switch_and_archive();
    insert_rows(&c, "t", 21, 30);
    c.switch_and_archive();
    insert_rows(&c, "t", 31, 40);
    c.switch_and_archive();

    let future = c.psql("SELECT to_char((now() + interval '1 hour') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS+00')");
    assert_refused(&c, &["--target-time", &future], 1, "the archive does not yet show");
    assert_refused(&c, &["--target-lsn", "FF/0"], 1, "after the newest archived WAL");
    assert_refused(&c, &["--target-name", "nope"], 1, "not in the repository's catalog");
    assert_refused(
        &c,
        &["--target-time", "2001-01-01 00:00:00+00"],
        1,
        "no backup is consistent before the target",
    );
    assert_refused(
        &c,
        &["--target-lsn", "0/10"],
        1,
        "no backup is consistent before the target",
    );
    assert_refused(
        &c,
        &["--target-xid", "3"],
        1,
        "no backup is consistent before the target",
    );
    assert_refused(
        &c,
        &["--target", "latest", "--target-name", "early"],
        2,
        "cannot be used with",
    );
    // Values that do not parse are bad arguments: exit 2 (issue 12, item 21).
    assert_refused(&c, &["--target", "tomorrow"], 2, "unknown --target");
    assert_refused(&c, &["--target-time", "yesterday"], 2, "is not a time");

    // A non-empty NEWDIR without --force: refused, and left as it was.
    let nd = NewDir::new();
    fs::create_dir(&nd.data).expect("mkdir");
    fs::write(nd.data.join("keep.txt"), "mine").expect("write");
    give_to_server_user(&nd.data);
    let out = recover(&c, &nd, &["--target", "latest"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_contains(&out, "is not empty");
    let left: Vec<_> = fs::read_dir(&nd.data)
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["keep.txt"], "the non-empty NEWDIR was changed");
    drop(nd);

    // A needed segment deleted from the repository: named before anything is restored.
    let stored = stored_path(c.repo_dir(), &gap);
    assert!(stored.exists(), "{} not in the repository", stored.display());
    fs::remove_file(&stored).expect("delete an archived segment");
    assert_refused(&c, &["--target", "latest"], 1, &format!("WAL segment {gap} is missing"));
    // A target before the gap is still reachable.
    let nd = NewDir::new();
    let out = recover_ok(&c, &nd, &["--target-name", "early", "--dry-run"]);
    assert_contains(&out, "all archived");
}

// ---------------------------------------------------------------------------------------------
// 7. A recovery that fails during replay
// ---------------------------------------------------------------------------------------------

#[test]
fn corrupt_archived_segment_fails_recovery() {
    let c = primary();
    create_rows(&c, "t", 10);
    backup(&c);
    // Well over wal_decode_buffer_size (512kB) of WAL, so that PostgreSQL's read-ahead does not
    // ask for the next segment before it reaches consistency. This segment is itself asked for
    // while the server reaches consistency (read-ahead past the backup end record).
    insert_rows(&c, "t", 11, 30_000);
    let early = c.switch_and_archive();
    insert_rows(&c, "t", 30_001, 30_010);
    // Replayed after consistency, while the server already accepts read-only connections.
    let late = c.switch_and_archive();
    restore_point(&c, "after", &[]);

    for (segment, after_consistency) in [(&late, true), (&early, false)] {
        let stored = stored_path(c.repo_dir(), segment);
        let original = read(&stored);
        flip_byte_from_end(&stored, 100);

        let nd = NewDir::new();
        let out = recover(&c, &nd, &["--target-name", "after", "--verify-sql", "SELECT 1"]);
        let what = format!("corrupt {segment}");
        assert!(!out.success(), "{what}: recover must fail:\n{}", out.describe());
        assert_contains(&out, "Recovery plan"); // planning passed: the file is there
        let err = out.stderr_str();
        assert!(
            err.contains("recovery of") && err.contains("failed"),
            "{what}:\n{}",
            out.describe()
        );
        assert!(
            err.contains("could not restore file") && err.contains("archive-get failed"),
            "{what}: PostgreSQL's message and the diagnosis:\n{}",
            out.describe()
        );
        assert!(
            err.contains(segment.as_str()),
            "{what}: the message names the segment:\n{}",
            out.describe()
        );
        for success in ["server: ", "PostgreSQL: recovery stopping", "verify: ", "connect: "] {
            assert_lacks(&out, success);
        }
        let log = nd.server_log();
        assert_eq!(
            log.contains("consistent recovery state reached"),
            after_consistency,
            "{what}: where the failure happened:\n{log}"
        );
        assert!(
            !log.contains("recovery stopping"),
            "{what}: the server must not reach the target:\n{log}"
        );
        assert!(
            !log.contains("archive recovery complete"),
            "{what}: the server must not promote:\n{log}"
        );
        // The server is gone (PostgreSQL aborts recovery on archive-get's exit code 200).
        let gone = poll(Duration::from_secs(30), || (!nd.is_running()).then_some(()));
        assert!(
            gone.is_some(),
            "{what}: the failed server still runs:\n{}",
            tail(&log, 30)
        );
        for dir in nd.socket_dirs() {
            assert!(
                !dir.exists(),
                "{what}: the socket directory {} is left behind",
                dir.display()
            );
        }

        rewrite_keeping_mode(&stored, &original);
    }
}

#[test]
fn transactions_without_an_end_in_the_archive_are_refused_in_the_plan() {
    let c = Cluster::start(ClusterOptions::default().setting("max_prepared_transactions", "5"));
    create_rows(&c, "t", 10);
    backup(&c);
    insert_rows(&c, "t", 11, 20);
    // A prepared transaction: it wrote WAL, but neither committed nor aborted.
    let prepared = c.psql("BEGIN; INSERT INTO t VALUES (21, 'p'); SELECT txid_current(); PREPARE TRANSACTION 'p'");
    let newest = c.psql("SELECT txid_current()");
    c.switch_and_archive();

    // After every transaction in the archived WAL: PostgreSQL would run out of WAL and stop
    // without the target, so the plan refuses it and names the newest transaction there.
    let nd = NewDir::new();
    let out = recover(&c, &nd, &["--target-xid", "100000", "--verify-sql", "SELECT 1"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let err = out.stderr_str();
    let named: u64 = err
        .split_once("after the newest transaction in the archived WAL (")
        .and_then(|(_, rest)| rest.split(')').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the newest transaction is named:\n{}", out.describe()));
    let newest: u64 = newest.parse().expect("xid");
    assert!(
        (newest..100_000).contains(&named),
        "{named} (newest {newest}):\n{}",
        out.describe()
    );
    assert_lacks(&out, "Recovery plan");
    assert!(!nd.data.exists(), "nothing is written");

    let out = recover(&c, &nd, &["--target-xid", prepared.trim()]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_contains(&out, "has no commit or abort record in the archived WAL");
    assert!(!nd.data.exists(), "nothing is written");
    c.psql("ROLLBACK PREPARED 'p'");
}

// ---------------------------------------------------------------------------------------------
// 8. Restore points
// ---------------------------------------------------------------------------------------------

#[test]
fn restore_point_names_and_catalog() {
    let c = primary();
    create_rows(&c, "t", 10);
    backup(&c);

    let first = parse_json(&restore_point(&c, "rp1", &["--json"]));
    assert_eq!(first["name"], "rp1");

    let dup = c.pitr_connected(c.repo(), &["restore-point", "rp1"]);
    assert_eq!(dup.code(), Some(1), "{}", dup.describe());
    assert_contains(&dup, "exists already");

    let second = parse_json(&restore_point(&c, "rp1", &["--allow-duplicate", "--json"]));

    let long = "x".repeat(64);
    let out = c.pitr_connected(c.repo(), &["restore-point", &long]);
    assert!(!out.success(), "{}", out.describe());
    assert_contains(&out, "at most 63");
    let max = "y".repeat(63);
    let text = restore_point(&c, &max, &[]);
    assert!(
        text.stdout_str().contains(&format!("restore point '{max}' at ")),
        "{}",
        text.describe()
    );

    let out = c.pitr_connected(c.repo(), &["list", "restore-points", "--json"]);
    out.assert_success();
    let list = parse_json(&out);
    let points = list.as_array().unwrap_or_else(|| panic!("not an array: {list:#}"));
    let names: Vec<&str> = points.iter().map(|p| p["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["rp1", "rp1", max.as_str()], "{list:#}");
    let lsns: Vec<u64> = points
        .iter()
        .map(|p| parse_lsn(p["lsn"].as_str().unwrap_or_else(|| panic!("lsn in {p}"))))
        .collect();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "{list:#}");
    assert_eq!(points[0]["lsn"], first["lsn"]);
    assert_eq!(points[1]["lsn"], second["lsn"]);
    for p in points {
        assert_eq!(p["timeline"], 1, "{p}");
        assert!(is_segment_name(p["wal_file"].as_str().expect("wal_file")), "{p}");
        assert!(p["time"].is_string(), "{p}");
    }
    // Every restore point is in WAL on the server as well.
    let segment = points[0]["wal_file"].as_str().unwrap();
    assert!(stored_path(c.repo_dir(), segment).exists(), "{segment} archived");

    // The plan warns about the duplicate name.
    let nd = NewDir::new();
    let out = recover_ok(&c, &nd, &["--target-name", "rp1", "--dry-run"]);
    assert_contains(&out, "2 restore points are named 'rp1'");

    let text = c.pitr_connected(c.repo(), &["list", "restore-points"]);
    text.assert_success();
    assert!(text.stdout_str().contains("rp1"), "{}", text.describe());
}

// ---------------------------------------------------------------------------------------------
// 9. Following a new timeline archived by a recovered copy
// ---------------------------------------------------------------------------------------------

#[test]
fn second_recovery_follows_timeline_two() {
    let c = oops_after_restore_point("DELETE FROM products");

    // The copy keeps archiving, into the same repository (archive_command inherited from the
    // primary's configuration).
    let copy = NewDir::new();
    let out = recover_ok(&c, &copy, &["--target-name", "before_oops", "--keep-archiving"]);
    assert_eq!(
        out.stdout_line("server: "),
        "promoted to timeline 2",
        "{}",
        out.describe()
    );
    assert!(
        !copy.auto_conf().contains("archive_mode"),
        "--keep-archiving leaves archive_mode alone"
    );
    let conn = connect_of(&out);
    assert_eq!(psql_at(&conn, "SHOW archive_mode"), "on");
    psql_at(
        &conn,
        "INSERT INTO products SELECT g, 'tl2 ' || g FROM generate_series(2001, 2200) g",
    );
    let segment = psql_at(&conn, "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(segment.starts_with("00000002"), "{segment}");
    let history = stored_path(c.repo_dir(), "00000002.history");
    let archived = poll(ARCHIVE_TIMEOUT, || {
        (stored_path(c.repo_dir(), &segment).exists() && history.exists()).then_some(())
    });
    assert!(
        archived.is_some(),
        "the copy did not archive {segment} and 00000002.history into {}; archiver: {}\n--- copy log ---\n{}",
        c.repo_dir().display(),
        psql_at(&conn, "SELECT * FROM pg_stat_archiver"),
        tail(&copy.server_log(), 40)
    );
    copy.stop_immediate();

    // A second recovery from the original backup follows timeline 2 to its end.
    let nd = NewDir::new();
    let out = recover_ok(
        &c,
        &nd,
        &[
            "--target",
            "latest",
            "--verify-sql",
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE note LIKE 'tl2 %') FROM products",
        ],
    );
    let timelines = out.stdout_line("timelines:");
    assert!(
        timelines.starts_with("1 (until ") && timelines.ends_with(") -> 2"),
        "timelines {timelines:?}:\n{}",
        out.describe()
    );
    assert_eq!(out.stdout_line("verify: "), "1700 | 200", "{}", out.describe());
    assert_eq!(
        out.stdout_line("server: "),
        "promoted to timeline 3",
        "{}",
        out.describe()
    );
    let conn = connect_of(&out);
    assert_eq!(psql_at(&conn, "SELECT COUNT(*) FROM products"), "1700");
    drop(nd);

    // --timeline 1 stays on the original timeline, to its end (after the DELETE).
    let nd = NewDir::new();
    let out = recover_ok(
        &c,
        &nd,
        &[
            "--target",
            "latest",
            "--timeline",
            "1",
            "--verify-sql",
            "SELECT COUNT(*) FROM products",
        ],
    );
    assert_eq!(out.stdout_line("timelines:"), "1", "{}", out.describe());
    assert!(out.stdout_line("WAL:").contains("00000001"), "{}", out.describe());
    assert_eq!(out.stdout_line("verify: "), "0", "{}", out.describe());
    assert!(nd.auto_conf().contains("recovery_target_timeline = '1'"));
}

// ---------------------------------------------------------------------------------------------
// 10. --json: the plan and the report
// ---------------------------------------------------------------------------------------------

#[test]
fn json_plan_and_report() {
    let c = primary();
    create_rows(&c, "t", 10);
    backup(&c);
    insert_rows(&c, "t", 11, 20);
    restore_point(&c, "rp", &[]);
    let lsn = c.psql("SELECT pg_current_wal_insert_lsn()");
    let time = c.psql("SELECT now()::text");
    let xid = c.psql("INSERT INTO t VALUES (21, 'x') RETURNING txid_current()");
    c.switch_and_archive();

    // A real recovery with --json: plan and report.
    let nd = NewDir::new();
    let out = recover_ok(
        &c,
        &nd,
        &[
            "--target",
            "immediate",
            "--action",
            "pause",
            "--json",
            "--verify-sql",
            "SELECT COUNT(*), pg_is_in_recovery() FROM t",
        ],
    );
    let json = parse_json(&out);
    let (plan, report) = (&json["plan"], &json["report"]);
    assert!(plan["backup_id"].is_string(), "{json:#}");
    assert!(
        is_segment_name(plan["first_wal"].as_str().unwrap_or_default()),
        "{json:#}"
    );
    assert_eq!(report["outcome"]["action"], "pause", "{json:#}");
    assert!(
        report["outcome"]["stopped"]
            .as_str()
            .is_some_and(|s| s.contains("consistency")),
        "{json:#}"
    );
    assert_eq!(report["server_state"]["in_recovery"], true, "{json:#}");
    assert_eq!(report["verify_rows"], serde_json::json!([["10", "t"]]), "{json:#}");
    let conn = parse_connect(report["connect"].as_str().expect("connect in the report"));
    assert_eq!(psql_at(&conn, "SELECT pg_is_in_recovery()"), "t");
    drop(nd);

    // A promoted copy reports the state after the promotion.
    let nd = NewDir::new();
    let out = recover_ok(&c, &nd, &["--target-name", "rp", "--json"]);
    let report = &parse_json(&out)["report"];
    assert_eq!(report["outcome"]["action"], "promote", "{report:#}");
    assert_eq!(report["server_state"]["in_recovery"], false, "{report:#}");
    drop(nd);

    // --dry-run --json for every kind of target.
    let kinds: [(&str, Vec<&str>); 6] = [
        ("name", vec!["--target-name", "rp"]),
        ("lsn", vec!["--target-lsn", &lsn]),
        ("xid", vec!["--target-xid", &xid]),
        ("time", vec!["--target-time", &time]),
        ("immediate", vec!["--target", "immediate"]),
        ("latest", vec!["--target", "latest"]),
    ];
    let mut failures = Vec::new();
    for (kind, mut args) in kinds {
        let nd = NewDir::new();
        args.extend(["--dry-run", "--json"]);
        let out = recover(&c, &nd, &args);
        assert!(!nd.data.exists());
        if !out.success() {
            failures.push(format!("{kind}: {}", out.describe()));
            continue;
        }
        let plan = parse_json(&out);
        assert_eq!(plan["target"]["kind"], kind, "{plan:#}");
    }
    assert!(
        failures.is_empty(),
        "recover --dry-run --json failed for:\n{}",
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Switch-over: `pitr adopt` makes the recovered copy the new primary of the repository
// ---------------------------------------------------------------------------------------------

#[test]
fn adopted_copy_archives_its_new_timeline_and_a_later_recovery_follows_it() {
    let mut c = primary();
    // Archiving configured in postgresql.conf itself (after the harness's include, so these
    // lines are the ones in force): adopt must give them back to the copy.
    let own_lines = format!(
        "archive_mode = on\narchive_command = '{}'\n",
        c.psql("SHOW archive_command").replace('\'', "''")
    );
    let conf_path = c.data_dir().join("postgresql.conf");
    let mut conf = String::from_utf8(read(&conf_path)).expect("UTF-8");
    conf.push_str(&own_lines);
    rewrite_keeping_mode(&conf_path, conf.as_bytes());
    c.reload();
    create_rows(&c, "products", 1000);
    backup(&c);
    insert_rows(&c, "products", 1001, 1500);
    restore_point(&c, "before_oops", &[]);
    c.psql("DROP TABLE products");
    c.switch_and_archive();

    // Recover (archiving off in the copy), then adopt it: one command archives what the copy's
    // PostgreSQL never marked ready, and gives the copy its own configuration back, which
    // archives into the same repository.
    let copy = NewDir::new();
    let port = free_port();
    let out = recover_ok(
        &c,
        &copy,
        &["--target-name", "before_oops", "--port", &port.to_string()],
    );
    assert!(
        out.stdout_str().contains("adopt --pgdata"),
        "recover names the adopt step:\n{}",
        out.describe()
    );
    let recovered = connect_of(&out);
    assert_eq!(
        psql_at(&recovered, "SHOW archive_mode"),
        "off",
        "the copy does not archive yet"
    );
    let copy_conf = String::from_utf8(read(&copy.data.join("postgresql.conf"))).expect("UTF-8");
    assert!(
        copy_conf.ends_with(&own_lines),
        "recover leaves the copy's own lines alone:\n{copy_conf}"
    );
    let user = recovered.user.clone();
    let adopted = run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .args(["adopt", "--pgdata"])
        .arg(&copy.data));
    assert!(adopted.success(), "pitr adopt failed:\n{}", adopted.describe());
    assert_contains(&adopted, "stopped the recovered copy's private run");
    assert_contains(
        &adopted,
        "the copy's own configuration is back and archives into this repository",
    );
    assert!(
        !recovered.socket_dir.exists(),
        "adopt removes the private socket directory {}",
        recovered.socket_dir.display()
    );
    assert!(
        stored_path(c.repo_dir(), "00000002.history").exists(),
        "{}",
        adopted.describe()
    );
    let copy_conf = String::from_utf8(read(&copy.data.join("postgresql.conf"))).expect("UTF-8");
    assert!(
        copy_conf.ends_with(&own_lines),
        "postgresql.conf holds the original archive lines, active:\n{copy_conf}"
    );
    let auto = copy.auto_conf();
    for gone in [
        "archive_mode",
        "archive_command",
        "port",
        "recovery_target",
        "restore_command",
    ] {
        assert!(!auto.contains(gone), "{gone} is left in postgresql.auto.conf:\n{auto}");
    }

    // Switch over: stop the old primary, start the copy in its place (its port: adopt gave back
    // the copy's own configuration) and write on timeline 2.
    let old_port = c.port();
    c.stop();
    let log = copy.data.join("adopted.log");
    let started = run(server_command(pg_program("pg_ctl"))
        .envs(c.env())
        .arg("-D")
        .arg(&copy.data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "start"]));
    assert!(
        started.success(),
        "the adopted copy does not start:\n{}",
        started.describe()
    );
    let conn = Conn {
        socket_dir: c.dir().to_path_buf(),
        port: old_port,
        user,
    };
    assert_eq!(psql_at(&conn, "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(psql_at(&conn, "SHOW archive_mode"), "on");
    psql_at(
        &conn,
        "INSERT INTO products SELECT g, 'tl2 ' || g FROM generate_series(2001, 2200) g",
    );
    let moment = psql_at(&conn, "SELECT now()");
    thread::sleep(Duration::from_millis(1100));
    psql_at(
        &conn,
        "INSERT INTO products SELECT g, 'late ' || g FROM generate_series(2201, 2300) g",
    );
    let segment = psql_at(&conn, "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(segment.starts_with("00000002"), "{segment}");
    assert!(
        wait_stored(c.repo_dir(), &segment),
        "the adopted copy does not archive {segment}:\n{}",
        String::from_utf8_lossy(&read(&log))
    );
    // A backup of the adopted copy leaves out the log of pitr recover's private run.
    assert!(copy.data.join("pitr_recover.log").exists());
    let id = backup(&c);
    let restored = NewDir::new();
    run_ok(
        c.pitr_cmd()
            .arg("--repo")
            .arg(c.repo())
            .args(["restore", "--backup", &id, "--pgdata"])
            .arg(&restored.data),
    );
    assert!(restored.data.join("PG_VERSION").exists());
    assert!(
        !restored.data.join("pitr_recover.log").exists(),
        "backup {id} copied pitr_recover.log"
    );
    copy.stop_immediate();

    // A recovery to a time on timeline 2 goes through the adopted timeline.
    let nd = NewDir::new();
    let sql = "SELECT COUNT(*), COUNT(*) FILTER (WHERE note LIKE 'tl2 %') FROM products";
    let out = recover_ok(&c, &nd, &["--target-time", &moment, "--verify-sql", sql]);
    let timelines = out.stdout_line("timelines:");
    assert!(
        timelines.ends_with("-> 2"),
        "timelines {timelines:?}:\n{}",
        out.describe()
    );
    assert_eq!(out.stdout_line("verify: "), "1700 | 200", "{}", out.describe());
}

// ---------------------------------------------------------------------------------------------
// 12. The recovered copy's private socket: its owner only
// ---------------------------------------------------------------------------------------------

#[test]
fn a_recovered_copy_is_reachable_by_its_owner_only() {
    assert!(
        running_as_root(),
        "this test runs `runuser -u nobody`: run the tests as root"
    );
    let c = primary();
    create_rows(&c, "t", 10);
    backup(&c);
    insert_rows(&c, "t", 11, 20);
    c.switch_and_archive();

    let nd = NewDir::new();
    let out = recover_ok(
        &c,
        &nd,
        &["--target", "latest", "--verify-sql", "SELECT COUNT(*) FROM t"],
    );
    let conn = connect_of(&out);
    assert_eq!(psql_at(&conn, "SELECT COUNT(*) FROM t"), "20", "the owner gets in");

    let meta = fs::metadata(&conn.socket_dir).expect("socket directory");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o700,
        "{}",
        conn.socket_dir.display()
    );
    let postgres_uid: u32 =
        String::from_utf8(run_ok(std::process::Command::new("id").args(["-u", SERVER_USER])).stdout)
            .expect("UTF-8")
            .trim()
            .parse()
            .expect("uid");
    assert_eq!(meta.uid(), postgres_uid, "owned by the server's OS user");
    let socket = conn.socket_dir.join(format!(".s.PGSQL.{}", conn.port));
    let socket_mode = fs::metadata(&socket).expect("socket").permissions().mode() & 0o777;
    assert_eq!(socket_mode, 0o700, "{}", socket.display());
    for file in ["pg_hba.conf", "pg_ident.conf"] {
        let mode = fs::metadata(conn.socket_dir.join(file))
            .expect(file)
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o600, "{file}");
    }

    // Another local user reaches neither the socket nor the server.
    let nobody = |program: &str, args: &[&str]| {
        run(std::process::Command::new("runuser")
            .args(["-u", "nobody", "--", program])
            .args(args)
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .current_dir("/"))
    };
    let port = conn.port.to_string();
    let dir = conn.socket_dir.to_str().expect("UTF-8 path");
    let psql = nobody(
        "/usr/bin/psql",
        &[
            "-X",
            "-h",
            dir,
            "-p",
            &port,
            "-U",
            SERVER_USER,
            "-d",
            "postgres",
            "-c",
            "select 1",
        ],
    );
    assert!(!psql.success(), "nobody got in:\n{}", psql.describe());
    let reach = nobody("/usr/bin/test", &["-e", socket.to_str().expect("UTF-8 path")]);
    assert!(!reach.success(), "nobody sees the socket");

    // adopt stops the copy and removes its socket directory.
    run_ok(
        c.pitr_cmd()
            .arg("--repo")
            .arg(c.repo())
            .args(["adopt", "--pgdata"])
            .arg(&nd.data),
    );
    assert!(
        !conn.socket_dir.exists(),
        "{} is left behind",
        conn.socket_dir.display()
    );
}

// ---------------------------------------------------------------------------------------------
// 13. Time targets and the archived WAL's records
// ---------------------------------------------------------------------------------------------

/// The server's clock in UTC, as `--target-time` takes it.
fn now_utc(c: &Cluster) -> String {
    c.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')")
}

#[test]
fn a_time_after_the_newest_commit_is_recovered_when_the_archive_covers_it() {
    // No autovacuum: its commits would come after the target.
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    create_rows(&c, "t", 100);
    backup(&c);
    insert_rows(&c, "t", 101, 150);
    let after_last_commit = now_utc(&c);
    // A checkpoint starting more than a second later (its time has whole seconds) shows the
    // archive covers that moment, although no commit follows it.
    thread::sleep(Duration::from_millis(1100));
    c.psql("CHECKPOINT");
    c.switch_and_archive();

    let nd = NewDir::new();
    let out = recover_ok(
        &c,
        &nd,
        &[
            "--target-time",
            &after_last_commit,
            "--verify-sql",
            "SELECT COUNT(*) FROM t",
        ],
    );
    assert_eq!(out.stdout_line("verify: "), "150", "{}", out.describe());
    assert_contains(&out, "shows the archive covers it");
    assert!(
        out.stdout_line("PostgreSQL: ")
            .starts_with("recovery stopping after WAL location (LSN)"),
        "{}",
        out.describe()
    );
    drop(nd);

    // After everything archived: refused in the plan, with the newest commit's time.
    let later = now_utc(&c);
    let nd = NewDir::new();
    let out = recover(&c, &nd, &["--target-time", &later]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let err = out.stderr_str();
    assert!(
        err.contains("the newest commit in the archived WAL is at ")
            && err.contains("the archive does not yet show")
            && err.contains("choose a time up to"),
        "{}",
        out.describe()
    );
    assert_lacks(&out, "Recovery plan");
    assert!(!nd.data.exists(), "nothing is written");

    // pitr info promises no more than recover accepts: its window ends at the checkpoint.
    let info = parse_json(&run_ok(
        c.pitr_cmd().arg("--repo").arg(c.repo()).args(["info", "--json"]),
    ));
    let end = info["windows"][0]["end_time"].as_str().expect("end_time").to_string();
    let nd = NewDir::new();
    recover_ok(&c, &nd, &["--target-time", &end, "--dry-run"]);
    let just_after = chrono::DateTime::parse_from_rfc3339(&end).expect("RFC 3339") + chrono::TimeDelta::milliseconds(1);
    let out = recover(&c, &nd, &["--target-time", &just_after.to_rfc3339(), "--dry-run"]);
    assert_eq!(
        out.code(),
        Some(1),
        "a moment after the window is refused:\n{}",
        out.describe()
    );
}

#[test]
fn the_plan_names_the_segment_that_stops_recovery() {
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    create_rows(&c, "t", 100);
    backup(&c);
    insert_rows(&c, "t", 101, 150);
    let target = now_utc(&c);
    thread::sleep(Duration::from_millis(200));
    // The segment holding the commits before the target is archived after the target; the
    // commit that stops recovery is in the next one.
    let before = c.switch_and_archive();
    insert_rows(&c, "t", 151, 200);
    let stopping = c.switch_and_archive();
    insert_rows(&c, "t", 201, 250);
    c.switch_and_archive();

    let nd = NewDir::new();
    let out = recover_ok(
        &c,
        &nd,
        &["--target-time", &target, "--verify-sql", "SELECT COUNT(*) FROM t"],
    );
    assert_eq!(out.stdout_line("verify: "), "150", "{}", out.describe());
    let wal = out.stdout_line("WAL:");
    let (first, last) = wal
        .split_once(" .. ")
        .map(|(first, rest)| {
            (
                first.to_string(),
                rest.split(' ').next().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_else(|| panic!("WAL line {wal:?}"));
    assert_eq!(
        last, stopping,
        "the plan's last segment holds the stopping commit (not {before})"
    );
    let restored: Vec<String> = nd
        .server_log()
        .lines()
        .filter_map(|l| {
            l.split_once("restored log file \"")?
                .1
                .split('"')
                .next()
                .map(str::to_string)
        })
        .collect();
    let size = c.wal_segment_size();
    let mut name = first.clone();
    while name <= last {
        assert!(
            restored.contains(&name),
            "the plan lists {name} ({first} .. {last}), PostgreSQL restored {restored:?}"
        );
        name = later_segment_name(&name, 1, size);
    }
}

// ---------------------------------------------------------------------------------------------
// 14. The restore point catalog says which points recovery reaches
// ---------------------------------------------------------------------------------------------

#[test]
fn list_restore_points_marks_the_unreachable() {
    let c = primary();
    create_rows(&c, "t", 10);
    c.switch_and_archive();
    restore_point(&c, "before_any_backup", &[]);
    backup(&c);
    insert_rows(&c, "t", 11, 20);
    restore_point(&c, "after_the_backup", &[]);

    let out = c.pitr_connected(c.repo(), &["list", "restore-points", "--json"]);
    out.assert_success();
    let list = parse_json(&out);
    let points = list.as_array().unwrap_or_else(|| panic!("not an array: {list:#}"));
    let verdict = |name: &str| {
        let p = points
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list:#}"));
        (
            p["recoverable"].as_bool(),
            p["unrecoverable_reason"].as_str().map(str::to_string),
        )
    };
    assert_eq!(verdict("after_the_backup"), (Some(true), None), "{list:#}");
    let (recoverable, reason) = verdict("before_any_backup");
    assert_eq!(recoverable, Some(false), "{list:#}");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("no backup is consistent before the target")),
        "{list:#}"
    );
    // The same verdict as recover itself.
    assert_refused(
        &c,
        &["--target-name", "before_any_backup"],
        1,
        "no backup is consistent before the target",
    );
    let text = c.pitr_connected(c.repo(), &["list", "restore-points"]);
    text.assert_success();
    let line = |name: &str| {
        text.stdout_str()
            .lines()
            .find(|l| l.starts_with(name))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {name} line:\n{}", text.describe()))
    };
    assert!(line("after_the_backup").ends_with(" yes"), "{}", text.describe());
    assert!(
        line("before_any_backup").contains(" no: no backup is consistent before the target"),
        "{}",
        text.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// 15. Interrupted: the server pitr started stops, its socket directory goes
// ---------------------------------------------------------------------------------------------

#[test]
fn an_interrupted_recovery_stops_its_server() {
    // Replay waits an hour at the first commit after consistency: recovery is still under way
    // when pitr is interrupted.
    let c = Cluster::start(ClusterOptions::default().setting("recovery_min_apply_delay", "'1h'"));
    create_rows(&c, "t", 10);
    backup(&c);
    insert_rows(&c, "t", 11, 20);
    c.switch_and_archive();

    let nd = NewDir::new();
    let mut cmd = c.pitr_cmd();
    cmd.arg("--repo")
        .arg(c.repo())
        .args(["recover", "--target", "latest", "--pgdata"])
        .arg(&nd.data);
    let line = cmdline(&cmd);
    let child = spawn(&mut cmd);
    let replaying = poll(Duration::from_secs(120), || {
        nd.server_log()
            .contains("consistent recovery state reached")
            .then_some(())
    });
    assert!(replaying.is_some(), "recovery did not start:\n{}", nd.server_log());
    let socket_dirs = nd.socket_dirs();
    assert_eq!(socket_dirs.len(), 1, "{}", nd.server_log());
    assert!(socket_dirs[0].exists());
    let pid = pitr_pid(&child);
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let out = wait_child(child, line, Duration::from_secs(120));
    assert_eq!(out.code(), Some(130), "{}", out.describe());
    let err = out.stderr_str();
    assert!(
        err.contains("interrupted") && err.contains("its server is stopped") && err.contains("stays"),
        "{}",
        out.describe()
    );
    assert!(!nd.is_running(), "the server pitr started still runs");
    assert!(!socket_dirs[0].exists(), "{} is left behind", socket_dirs[0].display());
    assert!(nd.data.join("PG_VERSION").exists(), "the restored directory stays");
}

// ---------------------------------------------------------------------------------------------
// 16. A failing archive_command ends the waits for WAL, with its reason
// ---------------------------------------------------------------------------------------------

#[test]
fn a_failing_archive_command_fails_restore_point_and_backup_at_once() {
    let mut c = primary();
    create_rows(&c, "t", 10);
    c.switch_and_archive();
    // A typo in the config file of the server's archive_command, as with a bad PITR_CONFIG; the
    // logging collector lets pitr read the server log.
    let command = format!(
        "{} --config /nonexistent/pitr.toml --repo {} archive-push %p",
        c.pitr_bin().display(),
        c.repo().display()
    );
    c.set("archive_command", &format!("'{command}'"));
    c.set("logging_collector", "on");
    c.set("log_directory", &format!("'{}'", c.dir().display()));
    c.set("log_filename", "'collected.log'");
    c.restart();

    let started = std::time::Instant::now();
    let out = c.pitr_connected(c.repo(), &["restore-point", "never"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let err = out.stderr_str();
    assert!(
        err.contains("archive_command is failing")
            && err.contains("pitr archive-push: usage error: could not read config file /nonexistent/pitr.toml")
            && err.contains("the restore point exists on the server but is not recorded"),
        "{}",
        out.describe()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );

    let started = std::time::Instant::now();
    let out = c.pitr_connected(c.repo(), &["backup", "--fast"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_contains(&out, "archive_command is failing");
    assert_contains(&out, "the backup is not finished");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
