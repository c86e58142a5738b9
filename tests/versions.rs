//! The version matrix: real clusters of every PostgreSQL major in `PITR_PG_VERSIONS` (13 to 18
//! by default) except 15, which the whole suite covers.
//!
//! The smoke scenario of a bad day, on each major, as an operator would go through it:
//! `create-repo` and `check`; WAL archived through `archive-push` while pgbench writes, and a base
//! backup taken meanwhile; a restore point; more rows; the oops (`DELETE FROM products`); `verify`
//! (exit 0); recoveries to the restore point, to a time and to the latest WAL, each with its exact
//! row counts; `adopt` of the copy recovered to the restore point, which then runs as the new
//! primary and archives timeline 2 (`check` and `verify` pass on it); a second recovery that
//! follows timeline 2 to its end, exact rows again.
//!
//! The WAL records check, on each major: pitr's record reader against what the server says it
//! wrote. The WAL decoding oracle, on each major: the reader against `pg_waldump` of that major
//! (a `pg_waldump` reads only its own major's WAL; 14, 16, 17 and 18 from the complete installs
//! of `.ci/install-postgres-versions`, 15 in `tests/wal_records.rs`; 13 has no pg_waldump build
//! within reach, so there it is checked against the server's facts only), and `pitr wal events`
//! on the archived WAL (`tests/common/waldump.rs`).
//!
//! Client programs are Debian's 15 (pitr needs no version-matched client); pitr finds the server
//! binaries of the major through `PITR_PG_BINDIR`, as a user of a build outside
//! `/usr/lib/postgresql` sets it. The majors run at once, one thread each, so each check costs
//! about as long as its slowest major; a failure names the majors that failed (each thread's
//! panic says how).

mod common;

use std::thread;
use std::time::Instant;

use common::waldump::{decoding_matches_pg_waldump, read_records};
use common::*;
use pitr::wal::records::RecordKind;
use pitr::wal::Lsn;
use serde_json::Value;

/// The query whose rows prove where each recovery stopped: products, pgbench's history, and
/// the sum of pgbench's balances.
const ROWS: &str = "SELECT (SELECT count(*) FROM products), (SELECT count(*) FROM pgbench_history), \
                    (SELECT sum(abalance) FROM pgbench_accounts)";

/// pgbench's transactions: 2 clients × 500, so `pgbench_history` gets exactly 1000 rows.
const PGBENCH: [&str; 5] = ["-n", "-c", "2", "-t", "500"];

#[test]
fn the_smoke_scenario_holds_on_every_other_major() {
    on_every_other_major("the smoke scenario", smoke_scenario);
}

#[test]
fn wal_records_read_as_the_server_wrote_them_on_every_other_major() {
    on_every_other_major("the WAL records check", records_match_server_facts);
}

#[test]
fn wal_decoding_matches_pg_waldump_on_every_other_major() {
    on_every_other_major("the WAL decoding oracle", decoding_matches_pg_waldump);
}

/// Runs `check` on every major of [`versions`] but 15, all at once (a thread each, named after
/// its major); fails naming the majors where it failed.
fn on_every_other_major(what: &str, check: fn(u32)) {
    let majors: Vec<u32> = versions().into_iter().filter(|v| *v != 15).collect();
    if majors.is_empty() {
        eprintln!(
            "PITR_PG_VERSIONS names no major besides 15, which the whole suite covers: {what} has nothing to run"
        );
        return;
    }
    // A major that is not installed fails here, before any cluster starts, with how to install it.
    for major in &majors {
        server_bindir(*major);
    }
    let started = Instant::now();
    let runs: Vec<_> = majors
        .iter()
        .map(|&major| {
            let run = thread::Builder::new()
                .name(format!("PostgreSQL {major}"))
                .spawn(move || {
                    let started = Instant::now();
                    check(major);
                    started.elapsed()
                })
                .expect("start a thread");
            (major, run)
        })
        .collect();
    let mut failed = Vec::new();
    for (major, run) in runs {
        match run.join() {
            Ok(took) => eprintln!("PostgreSQL {major}: {what} passed in {took:.1?}"),
            Err(_) => failed.push(major),
        }
    }
    eprintln!("{what} on {majors:?}: {:.1?} in all", started.elapsed());
    assert!(
        failed.is_empty(),
        "{what} failed on PostgreSQL {failed:?} (each one's panic above says how)"
    );
}

/// The whole scenario on one major.
fn smoke_scenario(major: u32) {
    let mut c = Cluster::start(ClusterOptions::default().version(major));
    assert_eq!(c.major_version(), major, "the cluster runs PostgreSQL {major}");
    c.pitr_ok(&["create-repo"]);
    c.pitr_ok(&["check"]);
    c.psql(
        "CREATE TABLE products (id int PRIMARY KEY, note text); \
         INSERT INTO products SELECT g, 'row ' || g FROM generate_series(1, 1000) g",
    );
    c.pgbench_init(1);

    // Archiving and a base backup while pgbench writes.
    let mut bench = c.pgbench_cmd(&PGBENCH);
    let bench_line = cmdline(&bench);
    let bench = spawn(&mut bench);
    let backup = backup_json(&c, &["--tier", "daily"]);
    wait_child(bench, bench_line, COMMAND_TIMEOUT).assert_success();
    let balance = c.psql("SELECT sum(abalance) FROM pgbench_accounts");
    assert_eq!(c.psql("SELECT count(*) FROM pgbench_history"), "1000");

    // The bad day: a restore point, more rows, a moment, the oops.
    insert_products(&c, 1001, 1500);
    c.pitr_ok(&["restore-point", "before_oops"]);
    insert_products(&c, 1501, 1600);
    let moment = c.psql("SELECT now()");
    c.psql("DELETE FROM products");
    c.switch_and_archive();
    verify_ok(&c);

    let rows = |products: u32| vec![vec![products.to_string(), "1000".into(), balance.clone()]];
    let at_time = recover_ok(&c, &["--target-time", &moment]);
    assert_recovered(&at_time, &rows(1600), 2);
    drop(at_time);
    let latest = recover_ok(&c, &["--target", "latest"]);
    assert_recovered(&latest, &rows(0), 2);
    drop(latest);
    let copy = recover_ok(&c, &["--target-name", "before_oops"]);
    assert_recovered(&copy, &rows(1500), 2);
    let backup_id = json_str(&backup["backup"], "id");
    assert_eq!(copy.plan()["backup_id"], backup_id, "{:#}", copy.json);

    // Switch-over: adopt the copy, stop the old primary, start the copy in its place.
    let adopted = c.pitr_ok(&["adopt", "--pgdata", copy.dir.data.to_str().expect("UTF-8 path")]);
    assert!(
        stored_path(c.repo(), "00000002.history").exists(),
        "adopt archives timeline 2's history:\n{}",
        adopted.describe()
    );
    c.stop();
    let log = copy.dir.dir.join("adopted.log");
    let started_copy = pg_ctl_start(copy.dir.dir.path(), &copy.dir.data, &log);
    assert!(
        started_copy.success(),
        "the adopted copy does not start:\n{}\n--- its log ---\n{}",
        started_copy.describe(),
        String::from_utf8_lossy(&read(&log))
    );
    // It has the old primary's configuration back: its socket directory and port.
    assert_eq!(c.psql("SELECT pg_is_in_recovery()"), "f");
    c.psql("INSERT INTO products SELECT g, 'tl2 ' || g FROM generate_series(2001, 2200) g");
    let segment = c.switch_wal();
    assert!(segment.starts_with("00000002"), "{segment} is on timeline 2");
    assert!(
        wait_stored(c.repo(), &segment),
        "the adopted copy does not archive {segment}:\n{}",
        String::from_utf8_lossy(&read(&log))
    );
    c.pitr_ok(&["check"]);
    verify_ok(&c);

    // A second recovery follows timeline 2 to its end.
    let second = recover_ok(&c, &["--target", "latest"]);
    assert_recovered(&second, &rows(1700), 3);
    let path: Vec<u64> = second.plan()["timeline_path"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline_path in {:#}", second.json))
        .iter()
        .map(|step| step["timeline"].as_u64().expect("a timeline number"))
        .collect();
    assert_eq!(path, [1, 2], "{:#}", second.json);
}

/// Inserts products `from..=to`.
fn insert_products(c: &Cluster, from: u32, to: u32) {
    c.psql(&format!(
        "INSERT INTO products SELECT g, 'row ' || g FROM generate_series({from}, {to}) g"
    ));
}

/// `pitr verify` (connected to `c`) exits 0 with no alert.
#[track_caller]
fn verify_ok(c: &Cluster) {
    let out = c.pitr_connected(c.repo(), &["verify", "--json", "--log-file", "none"]);
    out.assert_code(0);
    let report = parse_json(&out);
    assert_eq!(report["status"], "ok", "{report:#}");
}

/// A `pitr recover --json` that succeeded, with its recovered data directory.
struct Recovered {
    dir: NewDir,
    json: Value,
}

impl Recovered {
    fn plan(&self) -> &Value {
        &self.json["plan"]
    }

    fn report(&self) -> &Value {
        &self.json["report"]
    }
}

/// `pitr recover --json --verify-sql ROWS <args…>` into a new directory; panics with the output
/// and the recovered server's log unless it exits 0.
#[track_caller]
fn recover_ok(c: &Cluster, args: &[&str]) -> Recovered {
    let dir = NewDir::new();
    let out = run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .arg("recover")
        .arg("--pgdata")
        .arg(&dir.data)
        .args(["--json", "--verify-sql", ROWS])
        .args(args));
    assert!(
        out.success(),
        "pitr recover {} failed:\n{}\n--- recovered server log ---\n{}",
        args.join(" "),
        out.describe(),
        tail(&dir.server_log(), 60)
    );
    Recovered {
        json: parse_json(&out),
        dir,
    }
}

/// The recovery promoted to `timeline` and its verification query returned `rows`.
#[track_caller]
fn assert_recovered(recovered: &Recovered, rows: &[Vec<String>], timeline: u64) {
    let report = recovered.report();
    assert_eq!(report["verify_rows"], serde_json::json!(rows), "{:#}", recovered.json);
    assert_eq!(report["outcome"]["action"], "promote", "{:#}", recovered.json);
    assert_eq!(
        report["outcome"]["new_timeline"].as_u64(),
        Some(timeline),
        "{:#}",
        recovered.json
    );
    assert_eq!(report["server_state"]["in_recovery"], false, "{:#}", recovered.json);
}

// ---------------------------------------------------------------------------------------------
// WAL records against what the server says it wrote
// ---------------------------------------------------------------------------------------------

/// A transaction of the records check: its id and, when it committed, its commit timestamp
/// (`track_commit_timestamp`) as `YYYY-MM-DD HH:MM:SS.ffffff` in UTC.
struct Ended {
    what: &'static str,
    xid: u32,
    committed_at: Option<String>,
}

/// pitr's WAL record reader (`pitr::wal::records`) on the segments a server of `major` wrote,
/// against what that server says of them (pg_waldump of another major cannot read them):
/// transaction ids (`txid_current()`) and commit times (`pg_xact_commit_timestamp`) of plain,
/// subtransaction, DDL and prepared commits and of a prepared rollback, a restore point's name,
/// time and end (`pg_create_restore_point`), a checkpoint's time (`pg_control_checkpoint()`),
/// and the switch record's end (`pg_switch_wal()`). The records carry compressed full-page
/// images with holes (`wal_compression`), commit records the statistics of dropped relations
/// (from 15), and a prepared transaction's id after them: where the majors differ.
fn records_match_server_facts(major: u32) {
    let c = Cluster::start(
        ClusterOptions::default()
            .version(major)
            .archive(false)
            .setting("track_commit_timestamp", "on")
            .setting("max_prepared_transactions", "5")
            .setting("wal_compression", "on"),
    );
    let start = c.psql("SELECT pg_current_wal_insert_lsn()");
    c.psql("CREATE TABLE t (id int, note text); CREATE TABLE dropped (a int); CREATE TABLE dropped_prepared (a int)");
    let xid = |sql: &str| -> u32 {
        c.psql(sql)
            .parse()
            .unwrap_or_else(|_| panic!("a transaction id from {sql}"))
    };
    let mut ended = vec![Ended {
        what: "rows wider than a WAL page",
        xid: xid(
            "BEGIN; INSERT INTO t SELECT g, repeat(md5(g::text), 100) FROM generate_series(1, 300) g; \
                  SELECT txid_current(); COMMIT",
        ),
        committed_at: None,
    }];
    c.psql("CHECKPOINT");
    ended.push(Ended {
        what: "updates writing full-page images",
        xid: xid("BEGIN; UPDATE t SET id = -id WHERE id % 3 = 0; SELECT txid_current(); COMMIT"),
        committed_at: None,
    });
    ended.push(Ended {
        what: "subtransactions",
        xid: xid(
            "BEGIN; INSERT INTO t VALUES (-1); SAVEPOINT a; INSERT INTO t VALUES (-2); ROLLBACK TO a; \
                  SAVEPOINT b; INSERT INTO t VALUES (-3); RELEASE b; SELECT txid_current(); COMMIT",
        ),
        committed_at: None,
    });
    ended.push(Ended {
        what: "a dropped table",
        xid: xid("BEGIN; DROP TABLE dropped; SELECT txid_current(); COMMIT"),
        committed_at: None,
    });
    ended.push(Ended {
        what: "a prepared transaction that drops a table, committed",
        xid: xid(
            "BEGIN; DROP TABLE dropped_prepared; CREATE TABLE made (a int); SELECT txid_current(); \
                  PREPARE TRANSACTION 'commit_me'",
        ),
        committed_at: None,
    });
    c.psql("COMMIT PREPARED 'commit_me'");
    let rolled_back = xid("BEGIN; CREATE TABLE undone (a int); SELECT txid_current(); PREPARE TRANSACTION 'undo_me'");
    c.psql("ROLLBACK PREPARED 'undo_me'");
    let utc = |expr: &str| format!("to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')");
    for e in &mut ended {
        let at = c.psql(&format!(
            "SELECT {}",
            utc(&format!("pg_xact_commit_timestamp('{}'::xid)", e.xid))
        ));
        assert!(
            !at.is_empty(),
            "PostgreSQL {major} has no commit timestamp for {}",
            e.what
        );
        e.committed_at = Some(at);
    }
    let restore_point = c.psql(&format!(
        "SELECT {}, pg_create_restore_point('facts'), {}",
        utc("clock_timestamp()"),
        utc("clock_timestamp()")
    ));
    let [before_point, point_end, after_point]: [&str; 3] = restore_point
        .split('|')
        .collect::<Vec<_>>()
        .try_into()
        .unwrap_or_else(|_| panic!("three columns: {restore_point}"));
    let checkpoint = c.psql(
        "CHECKPOINT; SELECT checkpoint_lsn || '|' || extract(epoch FROM checkpoint_time)::bigint FROM pg_control_checkpoint()",
    );
    let (checkpoint_lsn, checkpoint_epoch) = checkpoint.split_once('|').expect("two columns");
    let switch_end = c.psql("SELECT pg_switch_wal()");

    let records = read_records(&c, &start, &switch_end);
    let context = |what: &str| {
        format!(
            "PostgreSQL {major}, {what}: {} records read from {start}",
            records.len()
        )
    };
    let time = |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    for e in &ended {
        let commits: Vec<_> = records
            .iter()
            .filter_map(|r| match &r.kind {
                RecordKind::Commit { time, xid, .. } if *xid == e.xid => Some(time),
                _ => None,
            })
            .collect();
        let times: Vec<String> = commits.into_iter().map(time).collect();
        assert_eq!(
            times,
            [e.committed_at.clone().expect("looked up")],
            "{}: the commit of transaction {}",
            context(e.what),
            e.xid
        );
    }
    let aborts = records
        .iter()
        .filter(|r| matches!(r.kind, RecordKind::Abort { xid, .. } if xid == rolled_back))
        .count();
    assert_eq!(
        aborts,
        1,
        "{}: transaction {rolled_back}",
        context("the prepared rollback")
    );
    let point = records
        .iter()
        .find(|r| matches!(&r.kind, RecordKind::RestorePoint { name, .. } if name == "facts"))
        .unwrap_or_else(|| panic!("{}: no restore point 'facts'", context("the restore point")));
    let point_time = time(&point.time().expect("a restore point has a time"));
    assert!(
        (before_point..=after_point).contains(&point_time.as_str()),
        "{}: its time {point_time} is not between {before_point} and {after_point}",
        context("the restore point")
    );
    assert_eq!(
        Lsn(point.end.0.div_ceil(8) * 8),
        point_end.parse().expect("an LSN"),
        "{}: where it ends",
        context("the restore point")
    );
    let at_checkpoint = records
        .iter()
        .find(|r| r.lsn == checkpoint_lsn.parse().expect("an LSN"))
        .unwrap_or_else(|| panic!("{}: no record at {checkpoint_lsn}", context("the checkpoint")));
    match at_checkpoint.kind {
        RecordKind::Checkpoint {
            time, shutdown: false, ..
        } => assert_eq!(
            time.timestamp().to_string(),
            checkpoint_epoch,
            "{}",
            context("the checkpoint's time")
        ),
        ref other => panic!(
            "{}: the record at {checkpoint_lsn} is {other:?}",
            context("the checkpoint")
        ),
    }
    let last = records.last().expect("records");
    assert_eq!(
        (&last.kind, last.end),
        (&RecordKind::Switch, switch_end.parse().expect("an LSN")),
        "{}: the last record",
        context("the switch")
    );
}
