//! The WAL decoding oracle: PostgreSQL's own `pg_waldump` of the same major decodes the WAL a
//! short workload wrote (pgbench, DDL, a savepoint rolled back, a big DELETE, a TRUNCATE, a
//! DROP TABLE, a CREATE and DROP DATABASE), and pitr's reader (`pitr::wal::records`) must say the
//! same: the same records at the same LSNs with the same transaction ids, the same block
//! references (storage, fork, block, full-page image), the same rows per relation as counting
//! pg_waldump's Heap and Heap2 lines (a MULTI_INSERT's `ntuples`), the same dropped relation
//! files as a commit's `rels:`, subtransactions as its `subxacts:`, commit times, created
//! storage and databases created and dropped. Then `pitr wal events` over the archived WAL says
//! what the server says: the DROP TABLE's transaction id, the DELETE's rows, the TRUNCATE and the
//! DROP DATABASE. PostgreSQL 13 has no `pg_waldump` build within reach: there the reader is
//! checked against what the server says alone (row counts, relfilenodes, transaction ids).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pitr::wal::records::{End, PageImage, Record, RecordKind, RowChange, SegmentRecords};
use pitr::wal::{Lsn, RelFileLocator, Segment, SegmentSize, WalFileName};
use serde_json::Value;

use super::*;

/// `pg_waldump` of PostgreSQL `major`: Debian's for 15, the complete installs of
/// `.ci/install-postgres-versions` for 14, 16, 17 and 18; `None` for 13, which has none.
pub fn pg_waldump_of(major: u32) -> Option<PathBuf> {
    match major {
        13 => None,
        15 => Some(pg_program("pg_waldump")),
        _ => {
            let path = pg_root()
                .join("complete")
                .join(major.to_string())
                .join("bin/pg_waldump");
            assert!(
                path.is_file(),
                "{} is missing: install it with `bash .ci/install-postgres-versions {major}`",
                path.display()
            );
            Some(path)
        }
    }
}

/// What the server said while the workload ran.
struct Facts {
    start: String,
    end: String,
    /// `txid_current()` of the transaction that dropped `big`, and `big`'s storage.
    drop_xid: u32,
    big: RelFileLocator,
    /// pgbench_accounts' storage: pgbench -i's COPY writes its rows.
    accounts: RelFileLocator,
    accounts_rows: u64,
    /// The transaction with a savepoint rolled back, and its rows (the rolled back one aside).
    savepoint_xid: u32,
    scratch_oid: u32,
}

/// The workload, on a cluster archiving into its repository.
fn workload(c: &Cluster) -> Facts {
    let storage = |table: &str| -> RelFileLocator {
        let text = c.psql(&format!(
            "SELECT (SELECT dattablespace FROM pg_database WHERE datname = current_database()) || '/' || \
             (SELECT oid FROM pg_database WHERE datname = current_database()) || '/' || pg_relation_filenode('{table}')"
        ));
        let parts: Vec<u32> = text.split('/').map(|p| p.parse().expect("an OID")).collect();
        RelFileLocator {
            spc: parts[0],
            db: parts[1],
            rel: parts[2],
        }
    };
    let xid = |sql: &str| -> u32 {
        c.psql(sql)
            .parse()
            .unwrap_or_else(|_| panic!("a transaction id from {sql}"))
    };
    let start = c.psql("SELECT pg_current_wal_insert_lsn()");
    c.pgbench_init(1);
    let accounts = storage("pgbench_accounts");
    c.pgbench(&["-n", "-c", "2", "-t", "50"]);
    c.psql(
        "CREATE TABLE big (id int PRIMARY KEY, note text); \
         INSERT INTO big SELECT g, repeat('x', 50) FROM generate_series(1, 3000) g",
    );
    let big = storage("big");
    let savepoint_xid = xid(
        "BEGIN; INSERT INTO big VALUES (-1); SAVEPOINT a; INSERT INTO big VALUES (-2), (-3); ROLLBACK TO a; \
         SAVEPOINT b; INSERT INTO big VALUES (-4); RELEASE b; SELECT txid_current(); COMMIT",
    );
    c.psql("DELETE FROM big WHERE id BETWEEN 1 AND 2000");
    c.psql("TRUNCATE pgbench_history");
    let drop_xid = xid("BEGIN; SELECT txid_current(); DROP TABLE big; COMMIT");
    c.psql("CREATE DATABASE scratch");
    let scratch_oid: u32 = c
        .psql("SELECT oid FROM pg_database WHERE datname = 'scratch'")
        .parse()
        .expect("an OID");
    c.psql("DROP DATABASE scratch");
    let end = c.psql("SELECT pg_switch_wal()");
    Facts {
        start,
        end,
        drop_xid,
        big,
        accounts,
        accounts_rows: 100_000,
        savepoint_xid,
        scratch_oid,
    }
}

/// Every record in the server's `pg_wal` from the segment holding `start` to the one the switch
/// ending at `switch_end` closed, each segment read to its end; panics on any invalid record.
pub fn read_records(c: &Cluster, start: &str, switch_end: &str) -> Vec<Record> {
    let size = SegmentSize::new(c.wal_segment_size() as u32).expect("a segment size");
    let first = size.segment_of(start.parse().expect("an LSN"));
    let last = size.segment_of(switch_end.parse().expect("an LSN"));
    let names: Vec<String> = (first..=last)
        .map(|segno| Segment { timeline: 1, segno }.file_name(size))
        .collect();
    let segments: Vec<Vec<u8>> = names.iter().map(|n| read(&c.pg_wal().join(n))).collect();
    let mut records = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let WalFileName::Segment(segment) = WalFileName::parse(name).expect("a segment name") else {
            unreachable!("{name} is a segment name")
        };
        let following: Vec<&[u8]> = segments[i..].iter().map(Vec::as_slice).collect();
        let mut reader = SegmentRecords::new(segment, &following).unwrap_or_else(|e| panic!("{name}: {e}"));
        for record in reader.by_ref() {
            records.push(record.unwrap_or_else(|e| panic!("{name}: {e}")));
        }
        assert_eq!(reader.end(), Some(End::NextSegment), "{name} is read to its end");
    }
    records
}

/// One record as pg_waldump prints it.
#[derive(Debug)]
pub struct Dumped {
    pub rmgr: String,
    /// `len (rec/tot)`'s total.
    pub total_len: u32,
    pub xid: u32,
    /// `prev`, as printed.
    pub prev: String,
    pub desc: String,
    /// (block id, storage, fork name, block, full-page image)
    pub blocks: Vec<(u8, RelFileLocator, String, u32, bool)>,
}

fn locator(text: &str) -> RelFileLocator {
    let parts: Vec<u32> = text
        .split('/')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("a locator: {text}")))
        .collect();
    RelFileLocator {
        spc: parts[0],
        db: parts[1],
        rel: parts[2],
    }
}

/// A relation file path as pg_waldump prints it (`base/5/16384`, `global/1262`,
/// `pg_tblspc/16400/PG_15_202209061/5/16384`, with `_fsm`/`_vm`/`_init` for a fork) as storage and
/// fork name.
fn relation_path(path: &str) -> (RelFileLocator, String) {
    let (path, fork) = match path.rsplit_once('_') {
        Some((p, fork @ ("fsm" | "vm" | "init"))) => (p, fork.to_string()),
        _ => (path, "main".to_string()),
    };
    let parts: Vec<&str> = path.split('/').collect();
    let oid = |p: &str| -> u32 { p.parse().unwrap_or_else(|_| panic!("an OID in {path}")) };
    let storage = match parts.as_slice() {
        ["base", db, rel] => RelFileLocator {
            spc: 1663,
            db: oid(db),
            rel: oid(rel),
        },
        ["global", rel] => RelFileLocator {
            spc: 1664,
            db: 0,
            rel: oid(rel),
        },
        ["pg_tblspc", spc, _, db, rel] => RelFileLocator {
            spc: oid(spc),
            db: oid(db),
            rel: oid(rel),
        },
        _ => panic!("an unknown relation path {path}"),
    };
    (storage, fork)
}

/// The words after `key` in a description, up to the next `;`.
fn list_after<'d>(desc: &'d str, key: &str) -> Vec<&'d str> {
    desc.split_once(key)
        .map(|(_, rest)| rest.split(';').next().unwrap_or_default().split_whitespace().collect())
        .unwrap_or_default()
}

/// `pg_waldump -p <pg_wal> -s <start> [-e <end>]` (to the end of the WAL there without `end`),
/// by LSN.
pub fn waldump(c: &Cluster, program: &Path, start: &str, end: Option<&str>) -> BTreeMap<u64, Dumped> {
    let mut command = server_command(program);
    command.env("TZ", "UTC").arg("-p").arg(c.pg_wal()).args(["-s", start]);
    if let Some(end) = end {
        command.args(["-e", end]);
    }
    let out = run(&mut command);
    let text = out.stdout_str();
    assert!(
        text.lines().count() > 100,
        "pg_waldump printed little:\n{}",
        out.describe()
    );
    text.lines()
        .map(|line| {
            let field = |key: &str| {
                line.split_once(key)
                    .map(|(_, rest)| rest.trim_start().split([',', ' ']).next().unwrap_or_default())
                    .unwrap_or_else(|| panic!("no {key} in {line}"))
            };
            let desc = line.split_once("desc: ").map_or("", |(_, d)| d).to_string();
            let blocks = desc
                .split("blkref #")
                .skip(1)
                .map(|part| {
                    let (id, rest) = part.split_once(':').expect("blkref #N:");
                    let words: Vec<&str> = rest.split([' ', ',']).filter(|w| !w.is_empty()).collect();
                    let after = |key: &str| {
                        words
                            .iter()
                            .position(|w| *w == key)
                            .map(|i| words[i + 1])
                            .unwrap_or_else(|| panic!("no {key} in blkref #{part}"))
                    };
                    let fork = words.iter().position(|w| *w == "fork").map_or("main", |i| words[i + 1]);
                    (
                        id.parse().expect("a block id"),
                        locator(after("rel")),
                        fork.to_string(),
                        after("blk").parse().expect("a block number"),
                        words.contains(&"FPW"),
                    )
                })
                .collect();
            let dumped = Dumped {
                rmgr: field("rmgr:").to_string(),
                total_len: line
                    .split_once("len (rec/tot):")
                    .and_then(|(_, r)| r.split(',').next()?.split('/').nth(1)?.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no total length in {line}")),
                xid: field("tx:").parse().expect("numeric tx"),
                prev: field("prev").to_string(),
                desc,
                blocks,
            };
            (parse_lsn(field("lsn:")), dumped)
        })
        .collect()
}

const FORKS: [&str; 4] = ["main", "fsm", "vm", "init"];

/// The workload on PostgreSQL `major` (archiving), then pitr's reader against `pg_waldump` of
/// `major` (when there is one) and against the server's facts, then `pitr wal events`.
pub fn decoding_matches_pg_waldump(major: u32) {
    let c = Cluster::start(ClusterOptions::default().version(major));
    c.pitr_ok(&["create-repo"]);
    let facts = workload(&c);
    let records = read_records(&c, &facts.start, &facts.end);
    let start = parse_lsn(&facts.start);
    let context = |what: &str| format!("PostgreSQL {major}, {what}");

    let mut rows: BTreeMap<(RelFileLocator, RowChange), u64> = BTreeMap::new();
    for record in records.iter().filter(|r| r.lsn.0 >= start) {
        if let RecordKind::Rows {
            storage,
            change,
            rows: n,
        } = record.kind
        {
            *rows.entry((storage, change)).or_default() += u64::from(n);
        }
    }
    if let Some(program) = pg_waldump_of(major) {
        let dumped = waldump(&c, &program, &facts.start, Some(&facts.end));
        let read: BTreeMap<u64, &Record> = records
            .iter()
            .filter(|r| r.lsn.0 >= start)
            .map(|r| (r.lsn.0, r))
            .collect();
        assert_eq!(
            read.keys().collect::<Vec<_>>(),
            dumped.keys().collect::<Vec<_>>(),
            "{}",
            context("the same records at the same LSNs")
        );
        let mut dumped_rows: BTreeMap<(RelFileLocator, RowChange), u64> = BTreeMap::new();
        let mut seen = BTreeMap::<&str, usize>::new();
        for (lsn, d) in &dumped {
            let record = read[lsn];
            let at = context(&format!("{} {d:?}", Lsn(*lsn)));
            assert_eq!(record.xid, d.xid, "{at}");
            let blocks: Vec<(u8, RelFileLocator, String, u32, bool)> = record
                .blocks
                .iter()
                .map(|b| {
                    (
                        b.id,
                        b.storage,
                        FORKS[usize::from(b.fork)].to_string(),
                        b.block,
                        b.image != PageImage::None,
                    )
                })
                .collect();
            assert_eq!(blocks, d.blocks, "{at}");
            let op = d.desc.split([' ', ',', ';']).next().unwrap_or_default();
            let op = op.split('+').next().unwrap_or_default();
            let change = match (d.rmgr.as_str(), op) {
                ("Heap", "INSERT") => Some((RowChange::Insert, 1)),
                ("Heap", "DELETE") => Some((RowChange::Delete, 1)),
                ("Heap", "UPDATE" | "HOT_UPDATE") => Some((RowChange::Update, 1)),
                ("Heap2", "MULTI_INSERT") => {
                    // "MULTI_INSERT 3 tuples" up to 15, "MULTI_INSERT ntuples: 3" from 16.
                    let n = d
                        .desc
                        .split([' ', ','])
                        .filter_map(|w| w.parse::<u64>().ok())
                        .next()
                        .unwrap_or_else(|| panic!("no tuple count: {at}"));
                    Some((RowChange::Insert, n))
                }
                _ => None,
            };
            if let Some((change, n)) = change {
                *dumped_rows.entry((d.blocks[0].1, change)).or_default() += n;
            }
            match &record.kind {
                RecordKind::Commit { time, details, .. } | RecordKind::Abort { time, details, .. } => {
                    *seen.entry("transaction end").or_default() += 1;
                    let printed = time.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string();
                    assert!(d.desc.contains(&printed), "{at}: time {printed}");
                    let rels: Vec<RelFileLocator> = list_after(&d.desc, "; rels: ")
                        .iter()
                        .map(|p| relation_path(p).0)
                        .collect();
                    assert_eq!(details.dropped, rels, "{at}: dropped relation files");
                    let subxacts: Vec<u32> = list_after(&d.desc, "; subxacts: ")
                        .iter()
                        .map(|x| x.parse().expect("an xid"))
                        .collect();
                    assert_eq!(details.subxacts, subxacts, "{at}: subtransactions");
                    *seen.entry("dropped files").or_default() += rels.len();
                    *seen.entry("subtransactions").or_default() += subxacts.len();
                }
                RecordKind::StorageCreate { storage, fork } => {
                    let (path, printed_fork) = relation_path(d.desc.trim_start_matches("CREATE ").trim());
                    assert_eq!(
                        (*storage, FORKS[usize::from(*fork)]),
                        (path, printed_fork.as_str()),
                        "{at}"
                    );
                    *seen.entry("storage created").or_default() += 1;
                }
                RecordKind::DatabaseCreate { database, tablespace } => {
                    let dir = d.desc.split_whitespace().last().expect("a directory");
                    assert_eq!(format!("{tablespace}/{database}"), dir, "{at}");
                    *seen.entry("database created").or_default() += 1;
                }
                RecordKind::DatabaseDrop { database, tablespaces } => {
                    let dirs: Vec<String> = tablespaces.iter().map(|t| format!("{t}/{database}")).collect();
                    assert_eq!(dirs, list_after(&d.desc, "dir "), "{at}");
                    *seen.entry("database dropped").or_default() += 1;
                }
                RecordKind::Other | RecordKind::Rows { .. } => {
                    assert!(
                        !(d.rmgr == "Transaction" && (op.starts_with("COMMIT") || op.starts_with("ABORT"))),
                        "{at}: a transaction end read as another record"
                    );
                }
                _ => {}
            }
            if blocks.iter().any(|b| b.4) {
                *seen.entry("full-page images").or_default() += 1;
            }
        }
        assert_eq!(rows, dumped_rows, "{}", context("rows per relation"));
        for what in [
            "transaction end",
            "dropped files",
            "subtransactions",
            "storage created",
            "database created",
            "database dropped",
            "full-page images",
        ] {
            assert!(
                seen.get(what).is_some_and(|n| *n > 0),
                "{}: no {what} in {seen:?}",
                context("the workload")
            );
        }
    }

    // What the server said.
    assert_eq!(
        rows.get(&(facts.accounts, RowChange::Insert)).copied(),
        Some(facts.accounts_rows),
        "{}",
        context("pgbench -i's rows into pgbench_accounts")
    );
    assert_eq!(
        rows.get(&(facts.big, RowChange::Delete)).copied(),
        Some(2000),
        "{}",
        context("the rows deleted from big")
    );
    let drop = records
        .iter()
        .find(|r| matches!(&r.kind, RecordKind::Commit { xid, .. } if *xid == facts.drop_xid))
        .unwrap_or_else(|| panic!("{}", context("no commit of the DROP TABLE")));
    match &drop.kind {
        RecordKind::Commit { details, .. } => {
            assert!(
                details.dropped.contains(&facts.big),
                "{}: {details:?}",
                context("DROP TABLE big")
            )
        }
        _ => unreachable!(),
    }
    assert!(
        records
            .iter()
            .any(|r| matches!(&r.kind, RecordKind::DatabaseDrop { database, .. } if *database == facts.scratch_oid)),
        "{}",
        context("DROP DATABASE scratch")
    );

    // The inspector over the archived WAL.
    c.wait_archived(&c.psql(&format!("SELECT pg_walfile_name('{}')", facts.end)));
    let out = c.pitr_ok(&[
        "wal",
        "events",
        "--json",
        "--kind",
        "drop,truncate,delete,drop-database",
    ]);
    let Value::Array(events) = parse_json(&out) else {
        panic!("{}: not an array: {}", context("wal events"), out.describe())
    };
    let event_of = |xid: u32| events.iter().find(|e| e["xid"] == xid);
    let dropped = event_of(facts.drop_xid).unwrap_or_else(|| panic!("{}: {events:#?}", context("no DROP event")));
    assert_eq!(
        dropped["kinds"],
        serde_json::json!(["drop"]),
        "{}",
        context("DROP TABLE big")
    );
    assert!(
        events.iter().any(|e| e["kinds"] == serde_json::json!(["truncate"])),
        "{}: {events:#?}",
        context("TRUNCATE pgbench_history")
    );
    assert!(
        events
            .iter()
            .any(|e| e["kinds"] == serde_json::json!(["delete"]) && e["rows"] == 2000),
        "{}: {events:#?}",
        context("DELETE 2000 rows")
    );
    assert!(
        events
            .iter()
            .any(|e| e["databases_dropped"][0]["oid"] == facts.scratch_oid),
        "{}: {events:#?}",
        context("DROP DATABASE")
    );
    let all = c.pitr_ok(&["wal", "events", "--json", "--kind", "insert"]);
    let Value::Array(inserts) = parse_json(&all) else {
        panic!("not an array")
    };
    let with_savepoint = inserts
        .iter()
        .find(|e| e["xid"] == facts.savepoint_xid)
        .unwrap_or_else(|| panic!("{}: {inserts:#?}", context("the transaction with savepoints")));
    assert_eq!(
        with_savepoint["rows"],
        2,
        "{}: the rolled back subtransaction's rows do not count: {with_savepoint:#}",
        context("savepoints")
    );
}
