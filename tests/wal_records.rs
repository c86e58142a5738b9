//! pitr's WAL record reader (`pitr::wal::records`) against PostgreSQL's own `pg_waldump`, on the
//! segments of a real server: the same records (count, LSNs, `xl_prev`, lengths, transaction
//! ids), the same commit and abort times, restore point names and prepared transactions, and
//! the checkpoint time PostgreSQL records in pg_control.

mod common;

use std::collections::BTreeMap;

use common::waldump::waldump;
use common::*;
use pitr::wal::records::{End, RecordKind, SegmentRecords};
use pitr::wal::{Lsn, Segment, SegmentSize, WalFileName};

/// pg_waldump's text for a time: `2026-11-25 10:00:00.123456 UTC`.
fn dump_time(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string()
}

/// The decoding oracle of the version matrix (`tests/common/waldump.rs`) on 15.
#[test]
fn decoding_matches_pg_waldump_on_15() {
    common::waldump::decoding_matches_pg_waldump(15);
}

#[test]
fn records_match_pg_waldump() {
    let c = Cluster::start(ClusterOptions::default().setting("max_prepared_transactions", "5"));
    let start = c.psql("SELECT pg_current_wal_insert_lsn()");
    c.psql("CREATE TABLE t (id int, note text)");
    // Rows wider than a WAL page, and full-page images after the checkpoint.
    c.psql("INSERT INTO t SELECT g, repeat(md5(g::text), 400) FROM generate_series(1, 3000) g");
    c.psql("CHECKPOINT");
    c.psql("UPDATE t SET id = id + 1 WHERE id % 10 = 0");
    c.psql("SELECT pg_create_restore_point('before_oops')");
    c.psql("BEGIN; INSERT INTO t VALUES (-1); SAVEPOINT a; INSERT INTO t VALUES (-2); ROLLBACK TO a; COMMIT");
    c.psql("BEGIN; CREATE TABLE p1 (a int); PREPARE TRANSACTION 'p1'");
    c.psql("COMMIT PREPARED 'p1'");
    c.psql("BEGIN; CREATE TABLE p2 (a int); PREPARE TRANSACTION 'p2'");
    c.psql("ROLLBACK PREPARED 'p2'");
    // A record larger than two segments (16 MiB): it spans three of them.
    c.psql("SELECT pg_logical_emit_message(true, 'big', repeat('x', 36 * 1024 * 1024))");
    c.psql("DROP TABLE t");
    let checkpoint = c.psql("CHECKPOINT; SELECT checkpoint_lsn || ' ' || extract(epoch FROM checkpoint_time)::bigint FROM pg_control_checkpoint()");
    let last = c.switch_wal();

    let dumped = waldump(&c, &pg_program("pg_waldump"), &start, None);
    let size = SegmentSize::new(c.wal_segment_size() as u32).unwrap();
    let first = size.segment_of(Lsn(parse_lsn(&start)));
    let last_segno = WalFileName::parse(&last)
        .unwrap()
        .segment_name()
        .unwrap()
        .segment(size)
        .unwrap()
        .segno;
    let names: Vec<String> = (first..=last_segno)
        .map(|segno| Segment { timeline: 1, segno }.file_name(size))
        .collect();
    let segments: Vec<Vec<u8>> = names.iter().map(|n| read(&c.pg_wal().join(n))).collect();

    let mut read_back = BTreeMap::new();
    let mut kinds = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let WalFileName::Segment(segment) = WalFileName::parse(name).unwrap() else {
            unreachable!()
        };
        let slices: Vec<&[u8]> = segments[i..].iter().map(Vec::as_slice).collect();
        let mut reader = SegmentRecords::new(segment, &slices).unwrap();
        for record in reader.by_ref() {
            let record = record.unwrap_or_else(|e| panic!("{name}: {e}"));
            kinds.push(record.kind.clone());
            read_back.insert(record.lsn.0, record);
        }
        assert_eq!(reader.end(), Some(End::NextSegment), "{name}");
    }
    // pg_waldump starts at the first record after `start`; the reader at the segment's first.
    read_back.retain(|lsn, _| *lsn >= parse_lsn(&start));
    // The server goes on writing after the switch (a checkpoint's or the background writer's
    // records): pg_waldump reads on into the next segment, the reader stops at the switched one.
    let mut dumped = dumped;
    dumped.retain(|lsn, _| *lsn < size.segment_start(last_segno + 1).0);

    let only_read: Vec<_> = read_back.keys().filter(|k| !dumped.contains_key(k)).collect();
    let only_dumped: Vec<_> = dumped.keys().filter(|k| !read_back.contains_key(k)).collect();
    assert!(
        only_read.is_empty() && only_dumped.is_empty(),
        "the same records at the same LSNs: only pitr read {only_read:?}, only pg_waldump {only_dumped:?}"
    );
    for (lsn, record) in &read_back {
        let d = &dumped[lsn];
        let context = format!("{} {d:?}", Lsn(*lsn));
        assert_eq!(record.total_len, d.total_len, "{context}");
        assert_eq!(record.xid, d.xid, "{context}");
        assert_eq!(record.prev.0, parse_lsn(&d.prev), "{context}");
        match &record.kind {
            RecordKind::Commit { time, xid, .. } | RecordKind::Abort { time, xid, .. } => {
                assert!(d.desc.contains(&dump_time(*time)), "{context}: time {time}");
                if d.desc.starts_with("COMMIT_PREPARED") || d.desc.starts_with("ABORT_PREPARED") {
                    assert!(d.desc.contains(&format!(" {xid}: ")), "{context}: xid {xid}");
                } else {
                    assert_eq!(*xid, d.xid, "{context}");
                }
            }
            RecordKind::RestorePoint { name, .. } => assert_eq!(d.desc, format!("RESTORE_POINT {name}"), "{context}"),
            RecordKind::Checkpoint { shutdown, .. } => {
                assert!(
                    d.desc.starts_with(if *shutdown {
                        "CHECKPOINT_SHUTDOWN"
                    } else {
                        "CHECKPOINT_ONLINE"
                    }),
                    "{context}"
                )
            }
            RecordKind::Switch => assert!(d.desc.starts_with("SWITCH"), "{context}"),
            _ => assert!(
                !(d.rmgr == "Transaction" && (d.desc.starts_with("COMMIT") || d.desc.starts_with("ABORT"))),
                "{context}: a transaction end read as another record"
            ),
        }
    }
    let count = |f: fn(&RecordKind) -> bool| kinds.iter().filter(|k| f(k)).count();
    assert!(count(|k| matches!(k, RecordKind::Commit { .. })) >= 5);
    assert!(
        count(|k| matches!(k, RecordKind::Abort { .. })) >= 2,
        "a subtransaction rollback and a prepared one"
    );
    assert_eq!(count(|k| matches!(k, RecordKind::RestorePoint { .. })), 1);
    assert!(
        read_back
            .values()
            .any(|r| size.segment_before(r.end) > size.segment_of(r.lsn) + 1),
        "a record spans three segments"
    );

    let (lsn, epoch) = checkpoint.split_once(' ').unwrap();
    let record = &read_back[&parse_lsn(lsn)];
    match record.kind {
        RecordKind::Checkpoint {
            time, shutdown: false, ..
        } => assert_eq!(time.timestamp().to_string(), epoch),
        ref other => panic!("{lsn} is {other:?}"),
    }
}
