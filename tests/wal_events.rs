//! `pitr wal events` on a real PostgreSQL 15 archiving into a pitr repository: the oops is found
//! among pgbench's transactions by kind, with its transaction id, commit time, database and the
//! table's name (from a map of names recorded with `pitr names record`, as backups and restore
//! points record them); a big DELETE with its exact row count; TRUNCATE and table rewrites told
//! apart from DROP; a relation no map knows shown by its storage; and the refusals (an unknown
//! table name, a range without WAL, a repository without WAL) with exit code 1.

mod common;

use std::thread;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use serde_json::Value;

/// `psql` in database `database`; trimmed stdout, panics on failure.
#[track_caller]
fn psql_in(c: &Cluster, database: &str, sql: &str) -> String {
    let out = run(c
        .client("psql")
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", database, "-c"])
        .arg(sql));
    assert!(out.success(), "psql in {database}: {sql}\n{}", out.describe());
    out.stdout_str().trim().to_string()
}

/// Records a map of names of `c` into its repository (`pitr names record`), as backups,
/// restore points and the daemon do.
fn record_names(c: &Cluster) {
    let out = c.pitr_connected(c.repo(), &["names", "record", "--json"]);
    assert!(
        parse_json(out.assert_success())["recorded"].is_string(),
        "a map is stored: {}",
        out.describe()
    );
}

/// The server's clock, in UTC.
fn server_now(c: &Cluster) -> DateTime<Utc> {
    let text = c.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// `pitr wal events --json <args>`: the array of events.
#[track_caller]
fn events(c: &Cluster, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["wal", "events", "--json"];
    all.extend_from_slice(args);
    let out = c.pitr_ok(&all);
    match parse_json(&out) {
        Value::Array(events) => events,
        other => panic!("not an array: {other:#}"),
    }
}

/// The transaction events whose relations include one named `name` with that storage change.
fn with_relation<'a>(events: &'a [Value], name: &str, change: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["relations"].as_array().is_some_and(|rs| {
                rs.iter()
                    .any(|r| r["name"] == name && (change.is_empty() || r["storage_change"] == change))
            })
        })
        .collect()
}

#[test]
fn the_dropped_table_is_found_among_pgbench_transactions_with_its_xid_time_and_database() {
    let c = Cluster::start(ClusterOptions::default());
    c.pitr_ok(&["create-repo"]);
    c.psql("CREATE DATABASE catalog");
    psql_in(
        &c,
        "catalog",
        "CREATE TABLE products (id int PRIMARY KEY, note text); \
         INSERT INTO products SELECT g, 'row ' || g FROM generate_series(1, 1000) g; \
         CREATE TABLE orders (id int PRIMARY KEY, note text); \
         INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 5000) g",
    );
    c.pgbench_init(1);
    // The backup recovery starts from records the map of names too.
    backup_ok(&c, &[]);
    assert_eq!(maps_recorded(&c), 1, "the backup recorded a map of names");

    let mut bench = c.pgbench_cmd(&["-n", "-T", "6", "-c", "2"]);
    let bench_line = cmdline(&bench);
    let bench = spawn(&mut bench);
    thread::sleep(Duration::from_secs(2));
    let before = server_now(&c);
    let xid = psql_in(
        &c,
        "catalog",
        "BEGIN; SELECT txid_current(); DROP TABLE products; COMMIT",
    );
    let after = server_now(&c);
    psql_in(&c, "catalog", "DELETE FROM orders WHERE id <= 3210");
    wait_child(bench, bench_line, COMMAND_TIMEOUT).assert_success();
    c.switch_and_archive();

    let drops = events(&c, &["--kind", "drop"]);
    let dropped = with_relation(&drops, "public.products", "drop");
    assert_eq!(dropped.len(), 1, "one DROP of products: {drops:#?}");
    let event = dropped[0];
    assert_eq!(event["event"], "transaction");
    assert_eq!(event["xid"].to_string(), xid, "{event:#}");
    assert_eq!(event["database"], "catalog", "{event:#}");
    assert_eq!(event["committed"], true);
    let time: DateTime<Utc> = event["time"].as_str().expect("a time").parse().expect("RFC 3339");
    assert!(
        before <= time && time <= after && after - before < chrono::Duration::seconds(1),
        "committed at {time}, between {before} and {after}"
    );
    assert_eq!(event["summary"], "DROP TABLE public.products; 0 rows", "{event:#}");
    assert!(
        drops
            .iter()
            .all(|e| e["kinds"].as_array().unwrap().contains(&"drop".into())),
        "--kind drop keeps drops only: {drops:#?}"
    );

    let deletes = events(&c, &["--kind", "delete", "--min-rows", "1000"]);
    assert_eq!(deletes.len(), 1, "pgbench deletes nothing: {deletes:#?}");
    assert_eq!(deletes[0]["rows"], 3210, "{:#}", deletes[0]);
    assert_eq!(deletes[0]["summary"], "DELETE 3210 rows from public.orders");
    assert_eq!(deletes[0]["database"], "catalog");
    let text = c
        .pitr_ok(&["wal", "events", "--kind", "delete", "--min-rows", "1000"])
        .stdout_str();
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.ends_with("catalog      DELETE 3210 rows from public.orders")),
        "{text}"
    );

    // Every pgbench transaction is there: 3 updates and an insert each.
    let bench_events = events(&c, &["--database", "postgres", "--table", "pgbench_history"]);
    let history_rows: u64 = bench_events
        .iter()
        .flat_map(|e| e["relations"].as_array().unwrap())
        .filter(|r| r["name"] == "public.pgbench_history")
        .map(|r| r["inserted"].as_u64().unwrap())
        .sum();
    assert_eq!(
        history_rows.to_string(),
        c.psql("SELECT count(*) FROM pgbench_history"),
        "rows inserted into pgbench_history"
    );

    let text = c.pitr_ok(&["wal", "events", "--kind", "drop"]).stdout_str();
    let line = text
        .lines()
        .find(|l| l.contains("DROP TABLE public.products"))
        .unwrap_or_else(|| panic!("no DROP line:\n{text}"));
    assert!(line.contains(&format!("xid {xid} ")), "{line}");
    assert!(
        line.contains("catalog") && line.ends_with("DROP TABLE public.products; 0 rows"),
        "{line}"
    );
    assert!(
        line.starts_with(&time.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string()),
        "{line}"
    );
    assert!(
        line.contains(&format!(" {} ", event["lsn"].as_str().unwrap())),
        "{line}"
    );

    undo_the_drop(&c, &xid, event["lsn"].as_str().unwrap());
}

/// How many maps of names the repository of `c` holds.
fn maps_recorded(c: &Cluster) -> usize {
    parse_json(&c.pitr_ok(&["names", "list", "--json"]))
        .as_array()
        .map_or(0, Vec::len)
}

/// The oops undone: `recover --before` the dropping transaction (by xid, and the plan by its
/// commit LSN) brings `products` back with its 1000 rows; `restore-database --before` puts the
/// database `catalog` as it was back into the running server, as the runbook does, and switches.
fn undo_the_drop(c: &Cluster, xid: &str, commit_lsn: &str) {
    let by_lsn = c.pitr_ok(&[
        "recover",
        "--pgdata",
        "/nonexistent/pitr-plan-only",
        "--before",
        commit_lsn,
        "--dry-run",
        "--json",
    ]);
    let plan = parse_json(&by_lsn);
    assert_eq!(plan["stops_before"]["xid"].to_string(), xid, "{plan:#}");
    assert_eq!(plan["stops_before"]["commit_lsn"], commit_lsn, "{plan:#}");
    assert_eq!(
        plan["stops_before"]["did"], "in database catalog: DROP TABLE public.products; 0 rows",
        "{plan:#}"
    );

    let nd = NewDir::new();
    let out = run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .args(["recover", "--pgdata"])
        .arg(&nd.data)
        .args(["--before", xid, "--verify-db", "catalog", "--verify-sql"])
        .arg("SELECT count(*) FROM products")
        .arg("--json"));
    assert!(
        out.success(),
        "{}
{}",
        out.describe(),
        tail(&nd.server_log(), 40)
    );
    let recovered = parse_json(&out);
    assert_eq!(recovered["plan"]["stops_before"]["xid"].to_string(), xid);
    assert!(recovered["plan"]["exclusive"].as_bool().unwrap());
    assert_eq!(
        recovered["report"]["verify_rows"],
        serde_json::json!([["1000"]]),
        "products is back with every row: {recovered:#}"
    );
    let text = run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .args(["recover", "--pgdata"])
        .arg(&nd.data)
        .args(["--before", xid, "--dry-run"]));
    let text = text.assert_success().stdout_str();
    assert!(
        text.contains(&format!("stops before: transaction {xid}, committed "))
            && text.contains("in database catalog: DROP TABLE public.products; 0 rows"),
        "{text}"
    );
    drop(nd);

    // The runbook's way, into the running server: catalog as it was just before the DROP.
    let scratch = TestDir::new("restore-db-scratch");
    give_to_server_user(scratch.path());
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        c.dir().display(),
        c.port()
    );
    let out = run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .args([
            "restore-database",
            "catalog",
            "--before",
            xid,
            "--into",
            &conninfo,
            "--switch",
            "--yes",
        ])
        .args(["--verify-sql", "SELECT count(*) FROM products", "--scratch"])
        .arg(scratch.path()));
    assert!(out.success(), "{}", out.describe());
    assert_eq!(psql_in(c, "catalog", "SELECT count(*) FROM products"), "1000");
    assert_eq!(
        psql_in(c, "catalog", "SELECT count(*) FROM orders"),
        "5000",
        "the later DELETE is undone too: the database is as it was before the DROP"
    );
    let kept = c.psql("SELECT datname FROM pg_database WHERE datname LIKE 'catalog_before_restore_%'");
    assert_eq!(kept.lines().count(), 1, "the damaged database is kept: {kept}");
    assert_eq!(
        psql_in(c, &kept, "SELECT count(*) FROM orders"),
        "1790",
        "the damaged one holds the state after the oops"
    );
}

#[test]
fn truncates_rewrites_unknown_relations_and_refusals() {
    let c = Cluster::start(ClusterOptions::default());
    c.pitr_ok(&["create-repo"]);
    c.psql(
        "CREATE TABLE cut (id int PRIMARY KEY); INSERT INTO cut SELECT generate_series(1, 500); \
         CREATE TABLE altered (id int); INSERT INTO altered SELECT generate_series(1, 500); \
         CREATE TABLE packed (id int PRIMARY KEY); INSERT INTO packed SELECT generate_series(1, 500); \
         DELETE FROM packed WHERE id % 2 = 0; \
         DO $$ BEGIN EXECUTE format('CREATE TABLE %I (id int)', 'clear' || chr(27) || '[2J'); END $$",
    );
    record_names(&c);
    // Created after the only map: no map knows it.
    c.psql("CREATE TABLE unmapped (id int)");
    let storage = c.psql(
        "SELECT (SELECT dattablespace FROM pg_database WHERE datname = 'postgres') || '/' || \
         (SELECT oid FROM pg_database WHERE datname = 'postgres') || '/' || pg_relation_filenode('unmapped')",
    );
    let truncate_xid = c.psql("BEGIN; SELECT txid_current(); TRUNCATE cut; COMMIT");
    let alter_xid = c.psql("BEGIN; SELECT txid_current(); ALTER TABLE altered ALTER COLUMN id TYPE bigint; COMMIT");
    c.psql("VACUUM FULL packed");
    let drop_xid = c.psql("BEGIN; SELECT txid_current(); DROP TABLE unmapped; COMMIT");
    c.psql("DO $$ BEGIN EXECUTE format('DROP TABLE %I', 'clear' || chr(27) || '[2J'); END $$");
    c.switch_and_archive();

    let all = events(&c, &["--kind", "truncate,rewrite,drop"]);
    let by_xid = |xid: &str| {
        all.iter()
            .find(|e| e["xid"].as_u64().is_some_and(|x| x.to_string() == xid))
            .unwrap_or_else(|| panic!("no event of {xid}: {all:#?}"))
    };
    assert_eq!(by_xid(&truncate_xid)["kinds"], serde_json::json!(["truncate"]));
    assert_eq!(by_xid(&truncate_xid)["summary"], "TRUNCATE public.cut; 0 rows");
    assert_eq!(by_xid(&alter_xid)["kinds"], serde_json::json!(["rewrite"]));
    assert_eq!(by_xid(&alter_xid)["summary"], "REWRITE public.altered; 0 rows");
    assert_eq!(
        with_relation(&all, "public.packed", "rewrite").len(),
        1,
        "VACUUM FULL: {all:#?}"
    );
    let unknown = by_xid(&drop_xid);
    assert_eq!(unknown["kinds"], serde_json::json!(["drop"]));
    let relation = &unknown["relations"][0];
    assert_eq!(
        relation["storage"]["rel"].to_string(),
        storage.rsplit('/').next().unwrap()
    );
    assert_eq!(relation["name"], Value::Null);
    let text = c.pitr_ok(&["wal", "events", "--table", &storage]).stdout_str();
    assert!(
        text.contains(&format!("DROP relation {storage} (name unknown); 0 rows")),
        "the locator of a relation no map knows:\n{text}"
    );
    assert!(
        !text.contains("public.cut"),
        "--table {storage} keeps its events only:\n{text}"
    );
    // A name read from the repository reaches the terminal with its control characters escaped.
    let text = c.pitr_ok(&["wal", "events", "--kind", "drop"]).stdout_str();
    assert!(
        text.contains("DROP TABLE public.clear\\u{1b}[2J; 0 rows") && !text.contains('\u{1b}'),
        "{text:?}"
    );

    let refused = c.pitr_connected(c.repo(), &["wal", "events", "--table", "no_such_table"]);
    refused.assert_code(1).assert_one_line_error();
    assert!(
        refused
            .stderr_str()
            .contains("no map of names knows a relation 'no_such_table'"),
        "{}",
        refused.describe()
    );
    let beyond = c.pitr_connected(c.repo(), &["wal", "events", "--from-lsn", "FF/0"]);
    beyond.assert_code(1).assert_one_line_error();
    assert!(
        beyond.stderr_str().contains("no archived WAL of timeline 1"),
        "{}",
        beyond.describe()
    );
    let empty = TestDir::new("empty-repo");
    let nothing = c.pitr_connected(empty.path(), &["wal", "events"]);
    nothing.assert_code(1).assert_one_line_error();
    assert!(nothing.stderr_str().contains("holds no WAL"), "{}", nothing.describe());
}
