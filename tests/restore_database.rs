//! `pitr restore-database` against real PostgreSQL servers: the production cluster archives into
//! its own repository through `pitr archive-push`, is backed up with `pitr backup`, gets a
//! restore point, and then loses rows (`DELETE FROM products WHERE id > 100`). Each run restores
//! `catalog` as it was at the restore point into the same production server, the way an
//! operator would after the bad day: beside the damaged database, then switched; one table
//! alone; and bad input, refused with nothing changed.
//!
//! Every run points `--scratch` at a directory of the test, so that the copy's removal (and its
//! server's end) can be checked, after an interrupt too.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Rows in `products` at the restore point.
const ROWS: u32 = 1000;
/// Rows left after the damage.
const DAMAGED_ROWS: u32 = 100;

/// A production cluster with database `catalog` (`products`: 1000 rows, `notes`: 3 rows),
/// backed up, with restore point `before_damage`, then damaged (rows above 100 deleted) and the
/// damage archived.
fn damaged_production() -> Cluster {
    let c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE DATABASE catalog");
    sql_in(
        &c,
        "catalog",
        &format!(
            "CREATE TABLE products (id int PRIMARY KEY, name text); \
             INSERT INTO products SELECT g, 'product ' || g FROM generate_series(1, {ROWS}) g; \
             CREATE TABLE notes (id int); INSERT INTO notes VALUES (1), (2), (3)"
        ),
    );
    backup_ok(&c, &[]);
    c.pitr_ok(&["restore-point", "before_damage"]);
    sql_in(
        &c,
        "catalog",
        &format!("DELETE FROM products WHERE id > {DAMAGED_ROWS}"),
    );
    c.switch_and_archive();
    c
}

/// `psql -X -A -t -q` in database `db` of `c`; trimmed stdout.
#[track_caller]
fn sql_in(c: &Cluster, db: &str, sql: &str) -> String {
    let out = run(c
        .client("psql")
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c"])
        .arg(sql));
    assert!(out.success(), "psql in {db} failed:\n{}", out.describe());
    out.stdout_str().trim().to_string()
}

/// The connection string of `c` as `role` (the `--into` value).
fn conninfo(c: &Cluster, role: &str) -> String {
    format!("host={} port={} user={role}", c.dir().display(), c.port())
}

/// The cluster's bootstrap superuser.
fn superuser(c: &Cluster) -> String {
    c.psql("SELECT current_user")
}

/// The databases of `c` whose names start with `prefix`, sorted.
fn databases_like(c: &Cluster, prefix: &str) -> Vec<String> {
    let list = c.psql(&format!(
        "SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}') ORDER BY 1"
    ));
    list.lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

/// `pitr restore-database <args…>` with `--scratch <scratch>`, as the server user.
fn restore_database(c: &Cluster, scratch: &Path, args: &[&str]) -> CmdOutput {
    run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .arg("restore-database")
        .args(args)
        .arg("--scratch")
        .arg(scratch))
}

/// Panics with the output unless `out` succeeded.
#[track_caller]
fn assert_ok(out: &CmdOutput) {
    assert!(out.success(), "pitr restore-database failed:\n{}", out.describe());
}

#[track_caller]
fn assert_contains(out: &CmdOutput, needle: &str) {
    let all = format!("{}\n{}", out.stdout_str(), out.stderr_str());
    assert!(all.contains(needle), "expected {needle:?} in:\n{}", out.describe());
}

/// The name after `prefix` in the output (`catalog_restore_20261206_233005`).
#[track_caller]
fn restored_name(out: &CmdOutput) -> String {
    let text = out.stdout_str();
    let start = text
        .find("catalog_restore_")
        .unwrap_or_else(|| panic!("no restored database named in:\n{}", out.describe()));
    text[start..]
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn restores_beside_production_then_switches_while_a_client_holds_on() {
    let c = damaged_production();
    let scratch = c.test_dir().subdir("scratch");
    let into = conninfo(&c, &superuser(&c));

    // Beside production: a new database with the rows of the restore point; catalog untouched.
    let out = restore_database(
        &c,
        &scratch,
        &[
            "catalog",
            "--target-name",
            "before_damage",
            "--into",
            &into,
            "--verify-sql",
            "SELECT count(*) FROM products",
        ],
    );
    assert_ok(&out);
    assert_contains(&out, "Recovery plan");
    assert_contains(&out, &format!("verify: {ROWS}"));
    assert_contains(&out, "ALTER DATABASE \"catalog\" ALLOW_CONNECTIONS false;");
    let restored = restored_name(&out);
    assert_eq!(databases_like(&c, "catalog_restore_"), vec![restored.clone()]);
    assert_eq!(sql_in(&c, &restored, "SELECT count(*) FROM products"), ROWS.to_string());
    assert_eq!(sql_in(&c, &restored, "SELECT count(*) FROM notes"), "3");
    assert_eq!(
        sql_in(&c, "catalog", "SELECT count(*) FROM products"),
        DAMAGED_ROWS.to_string()
    );
    assert!(databases_like(&c, "catalog_before_restore_").is_empty());
    assert_copy_gone(&scratch);

    // The switch, while a client sits in catalog: it is terminated, the restored rows take the
    // name, the damaged database is kept under its new name.
    let mut holder = c.client("psql");
    holder.args(["-X", "-d", "catalog", "-c", "SELECT pg_sleep(60)"]);
    let line = cmdline(&holder);
    let holder = spawn(&mut holder);
    poll(Duration::from_secs(20), || {
        (c.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'catalog'") == "1").then_some(())
    })
    .expect("the client connects to catalog");
    let out = restore_database(
        &c,
        &scratch,
        &[
            "catalog",
            "--target-name",
            "before_damage",
            "--into",
            &into,
            "--switch",
            "--yes",
            "--json",
        ],
    );
    assert_ok(&out);
    let report = &parse_json(&out)["report"];
    let before = json_str(&report["names"], "before_restore").to_string();
    assert!(report["switched"]["terminated"].as_u64().unwrap() >= 1, "{report:#}");
    let held = wait_child(holder, line, Duration::from_secs(30));
    assert!(
        !held.success(),
        "the client's session was not terminated:\n{}",
        held.describe()
    );
    assert_eq!(sql_in(&c, "catalog", "SELECT count(*) FROM products"), ROWS.to_string());
    assert_eq!(
        sql_in(&c, &before, "SELECT count(*) FROM products"),
        DAMAGED_ROWS.to_string()
    );
    assert_eq!(
        c.psql(&format!(
            "SELECT datallowconn FROM pg_database WHERE datname = '{before}'"
        )),
        "t",
        "the old database accepts connections again"
    );
    // The first run's database is still there; the second went into place; nothing dropped.
    assert_eq!(databases_like(&c, "catalog_restore_"), vec![restored]);
    assert_copy_gone(&scratch);
}

#[test]
fn one_table_alone_and_bad_input_that_changes_nothing() {
    let c = damaged_production();
    let scratch = c.test_dir().subdir("scratch");
    let into = conninfo(&c, &superuser(&c));
    let target = ["--target-name", "before_damage"];
    let with = |extra: &[&str]| -> CmdOutput {
        let mut args = vec!["catalog"];
        args.extend_from_slice(&target);
        args.extend_from_slice(&["--into", &into]);
        args.extend_from_slice(extra);
        restore_database(&c, &scratch, &args)
    };

    // Refused before any work: --switch with --table, --switch without a terminal or --yes,
    // --switch of a database production does not have.
    let out = with(&["--switch", "--yes", "--table", "products"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_contains(&out, "copy the rows you need from the restored database");
    let out = with(&["--switch"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_contains(&out, "pass --yes");
    let mut args = vec!["nosuchdb"];
    args.extend_from_slice(&target);
    args.extend_from_slice(&["--into", &into, "--switch", "--yes"]);
    let out = restore_database(&c, &scratch, &args);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_contains(&out, "there is no database nosuchdb to switch");
    assert_copy_gone(&scratch);

    // A role that may not create databases: refused at once, no copy made.
    c.psql("CREATE ROLE clerk LOGIN");
    let started = Instant::now();
    let mut args = vec!["catalog"];
    args.extend_from_slice(&target);
    let clerk = conninfo(&c, "clerk");
    args.extend_from_slice(&["--into", &clerk]);
    let out = restore_database(&c, &scratch, &args);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_contains(&out, "role clerk may not create databases");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not refused at once: {:?}",
        started.elapsed()
    );
    assert!(
        !out.stdout_str().contains("recovering a private copy"),
        "{}",
        out.describe()
    );
    assert_copy_gone(&scratch);

    // A database the copy does not have: named with those it has, after recovery, before
    // production is touched.
    let mut args = vec!["nosuchdb"];
    args.extend_from_slice(&target);
    args.extend_from_slice(&["--into", &into]);
    let out = restore_database(&c, &scratch, &args);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_contains(&out, "there is no database 'nosuchdb' in the copy");
    assert_contains(&out, "catalog, postgres");
    assert_copy_gone(&scratch);

    // A table the copy's database does not have.
    let out = with(&["--table", "nosuchtable"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert_contains(&out, "there is no table 'nosuchtable'");
    assert_contains(&out, "public.notes, public.products");
    assert!(databases_like(&c, "nosuchdb").is_empty());
    assert!(
        databases_like(&c, "catalog_").is_empty(),
        "bad input created a database"
    );
    assert_copy_gone(&scratch);

    // One table, by a role that may create databases but is no superuser, with a verification
    // query that fails: exit 1, the restored database kept and named, holding only that table
    // with the rows of the restore point; the role owns it all (it may not act as postgres).
    c.psql("ALTER ROLE clerk CREATEDB");
    let mut args = vec!["catalog"];
    args.extend_from_slice(&target);
    args.extend_from_slice(&[
        "--into",
        &clerk,
        "--table",
        "public.products",
        "--verify-sql",
        "SELECT count(*) FROM notes",
    ]);
    let out = restore_database(&c, &scratch, &args);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let restored = restored_name(&out);
    assert_contains(&out, &format!("--verify-sql failed in {restored}"));
    assert_contains(&out, "clerk is neither a superuser nor a member of postgres");
    assert_contains(&out, "space:     not checked");
    assert_eq!(
        sql_in(
            &c,
            &restored,
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'products'"
        ),
        "clerk"
    );
    assert_eq!(
        c.psql(&format!(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{restored}'"
        )),
        "clerk"
    );
    assert_eq!(databases_like(&c, "catalog_restore_"), vec![restored.clone()]);
    assert_eq!(sql_in(&c, &restored, "SELECT count(*) FROM products"), ROWS.to_string());
    assert_eq!(
        sql_in(
            &c,
            &restored,
            "SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'"
        ),
        "products"
    );
    assert_eq!(
        sql_in(&c, "catalog", "SELECT count(*) FROM products"),
        DAMAGED_ROWS.to_string()
    );
    assert_copy_gone(&scratch);

    // SIGTERM while the copy runs: exit 130, its server stopped and the scratch copy removed.
    let mut command = c.pitr_cmd();
    command
        .arg("--repo")
        .arg(c.repo())
        .arg("restore-database")
        .arg("catalog");
    command.args(target).args(["--into", &into, "--scratch"]).arg(&scratch);
    let line = cmdline(&command);
    let child = spawn(&mut command);
    poll(Duration::from_secs(60), || {
        let copies = std::fs::read_dir(&scratch).ok()?;
        copies
            .flatten()
            .any(|copy| copy.path().join("data/postmaster.pid").exists())
            .then_some(())
    })
    .expect("the copy's server starts");
    let out = terminate_pitr(child, line, Duration::from_secs(60));
    assert_eq!(out.code(), Some(130), "{}", out.describe());
    assert_contains(&out, "the copy's server is stopped and");
    assert_copy_gone(&scratch);
}
