//! The maps of relation names `pitr wal events` reads: recorded by backups, restore points and
//! `pitr names record` (the daemon's job), stored only when the catalog changed, and naming
//! every database's relations by the storage WAL records name them by.

mod common;

use common::*;
use serde_json::Value;

/// Runs SQL in database `db` of `c`; returns trimmed stdout.
#[track_caller]
fn psql_in(c: &Cluster, db: &str, sql: &str) -> String {
    let out = run(c
        .client("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql]));
    assert!(out.success(), "psql in {db}: {sql}\n{}", out.describe());
    out.stdout_str().trim().to_string()
}

/// `pitr names list --json`.
fn maps(c: &Cluster) -> Vec<Value> {
    let out = c.pitr(&["names", "list", "--json"]);
    serde_json::from_str::<Value>(&out.assert_success().stdout_str())
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

/// The storage of `table` in database `db`, as WAL records name it: (spc, db, relfilenode).
fn storage_of(c: &Cluster, db: &str, table: &str) -> (u64, u64, u64) {
    let row = psql_in(
        c,
        db,
        &format!(
            "SELECT (SELECT dattablespace FROM pg_database WHERE datname = current_database()), \
             (SELECT oid FROM pg_database WHERE datname = current_database()), pg_relation_filenode('{table}')"
        ),
    );
    let fields: Vec<u64> = row.split('|').map(|f| f.parse().unwrap()).collect();
    (fields[0], fields[1], fields[2])
}

/// The name `map` gives `storage`, as `schema.name`.
fn named(map: &Value, (spc, db, rel): (u64, u64, u64)) -> Option<String> {
    map["relations"].as_array().unwrap().iter().find_map(|r| {
        let s = &r["storage"];
        (s["spc"] == spc && s["db"] == db && s["rel"] == rel)
            .then(|| format!("{}.{}", r["schema"].as_str().unwrap(), r["name"].as_str().unwrap()))
    })
}

#[test]
fn backups_restore_points_and_names_record_keep_the_names_wal_records_need() {
    let c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE DATABASE catalog");
    psql_in(
        &c,
        "catalog",
        "CREATE SCHEMA shop; CREATE TABLE shop.products (id int PRIMARY KEY, name text)",
    );
    let products = storage_of(&c, "catalog", "shop.products");

    // A backup records the first map: the table of another database, by its storage.
    backup_ok(&c, &[]);
    let first = maps(&c);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(named(&first[0], products).as_deref(), Some("shop.products"));
    let catalog_oid = products.1;
    assert!(
        first[0]["databases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["oid"] == catalog_oid && d["name"] == "catalog"),
        "{}",
        first[0]["databases"]
    );
    // A shared catalog is named under database 0 and pg_global.
    let pg_database = psql_in(&c, "postgres", "SELECT pg_relation_filenode('pg_database')");
    assert_eq!(
        named(&first[0], (1664, 0, pg_database.parse().unwrap())).as_deref(),
        Some("pg_catalog.pg_database")
    );

    // Nothing changed: nothing stored.
    let again = c.pitr_connected(c.repo(), &["names", "record", "--json"]);
    let again: Value = serde_json::from_str(&again.assert_success().stdout_str()).unwrap();
    assert_eq!(again["recorded"], Value::Null, "{again}");
    assert_eq!(maps(&c).len(), 1);

    // A TRUNCATE gives the table new storage; a restore point records the map naming it.
    psql_in(&c, "catalog", "TRUNCATE shop.products");
    let truncated = storage_of(&c, "catalog", "shop.products");
    assert_ne!(truncated, products);
    let out = c.pitr_connected(c.repo(), &["restore-point", "after_truncate"]);
    out.assert_success();
    let second = maps(&c);
    assert_eq!(second.len(), 2, "{second:?}");
    assert_eq!(named(&second[1], truncated).as_deref(), Some("shop.products"));
    assert_eq!(
        named(&second[1], products),
        None,
        "the old storage is gone from the catalog"
    );

    // A dropped table keeps its name in the maps taken while it existed.
    psql_in(&c, "catalog", "DROP TABLE shop.products");
    let out = c.pitr_connected(c.repo(), &["names", "record"]);
    assert!(
        out.assert_success().stdout_str().starts_with("recorded the names of "),
        "{}",
        out.describe()
    );
    let third = maps(&c);
    assert_eq!(third.len(), 3);
    assert_eq!(named(&third[2], truncated), None);
    assert_eq!(named(&third[1], truncated).as_deref(), Some("shop.products"));
    let text = c.pitr(&["names", "list"]).assert_success().stdout_str();
    assert_eq!(text.lines().count(), 4, "a header and three maps:\n{text}");
}
