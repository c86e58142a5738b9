//! The reader against WAL laid out here the way PostgreSQL 15 lays it out (1 MiB segments);
//! `tests/wal_records.rs` checks it against pg_waldump on a real server's WAL.

use chrono::TimeZone;

use super::rmgr::*;
use super::*;
use crate::wal::{Segment, WalFileName};

const SIZE: u32 = 1 << 20;
const BLOCK: u64 = 8192;
const MAGIC_15: u16 = 0xD110;
/// `RM_LOGICALMSG_ID`: a resource manager the reader decodes nothing of.
const RM_LOGICALMSG_ID: u8 = 21;

fn at(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, second).unwrap()
}

fn postgres_micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros() - POSTGRES_EPOCH_UNIX_MICROS
}

/// Writes WAL records into consecutive segments, with page headers and continuations.
struct Writer {
    first_segno: u64,
    bytes: Vec<u8>,
    position: u64,
    prev: u64,
}

impl Writer {
    fn new(first_segno: u64) -> Writer {
        let start = first_segno * u64::from(SIZE);
        Writer {
            first_segno,
            bytes: Vec::new(),
            position: start,
            prev: 0,
        }
    }

    fn offset(&self, lsn: u64) -> usize {
        (lsn - self.first_segno * u64::from(SIZE)) as usize
    }

    fn put(&mut self, lsn: u64, data: &[u8]) {
        let offset = self.offset(lsn);
        if self.bytes.len() < offset + data.len() {
            self.bytes.resize(offset + data.len(), 0);
        }
        self.bytes[offset..offset + data.len()].copy_from_slice(data);
    }

    /// Writes the header of the page at `self.position`, continuing `rem_len` bytes.
    fn page_header(&mut self, rem_len: u32) {
        let page = self.position;
        let long = page.is_multiple_of(u64::from(SIZE));
        let mut info = if long { 0x0002u16 } else { 0 };
        if rem_len > 0 {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC_15.to_le_bytes());
        header.extend_from_slice(&info.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&page.to_le_bytes());
        header.extend_from_slice(&rem_len.to_le_bytes());
        header.extend_from_slice(&[0; 4]);
        if long {
            header.extend_from_slice(&7u64.to_le_bytes());
            header.extend_from_slice(&SIZE.to_le_bytes());
            header.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        }
        self.put(page, &header);
        self.position += header.len() as u64;
    }

    /// Appends a record; returns its LSN.
    fn append(&mut self, rmid: u8, info: u8, xid: u32, main: &[u8]) -> u64 {
        let mut record = vec![0u8; SIZE_OF_XLOG_RECORD];
        if main.len() < 256 {
            record.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, main.len() as u8]);
        } else {
            record.push(XLR_BLOCK_ID_DATA_LONG);
            record.extend_from_slice(&(main.len() as u32).to_le_bytes());
        }
        record.extend_from_slice(main);
        self.append_raw(rmid, info, xid, record)
    }

    fn append_raw(&mut self, rmid: u8, info: u8, xid: u32, mut record: Vec<u8>) -> u64 {
        if self.position.is_multiple_of(BLOCK) {
            self.page_header(0);
        }
        let lsn = self.position;
        let total = record.len() as u32;
        record[0..4].copy_from_slice(&total.to_le_bytes());
        record[4..8].copy_from_slice(&xid.to_le_bytes());
        record[8..16].copy_from_slice(&self.prev.to_le_bytes());
        record[16] = info;
        record[17] = rmid;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&record[SIZE_OF_XLOG_RECORD..]), &record[..XL_CRC_OFFSET]);
        record[20..24].copy_from_slice(&crc.to_le_bytes());
        let mut rest = &record[..];
        loop {
            let page_end = (self.position / BLOCK + 1) * BLOCK;
            let take = rest.len().min((page_end - self.position) as usize);
            self.put(self.position, &rest[..take]);
            self.position += take as u64;
            rest = &rest[take..];
            if rest.is_empty() {
                break;
            }
            self.page_header(rest.len() as u32);
        }
        self.position = align(self.position);
        self.prev = lsn;
        lsn
    }

    fn commit(&mut self, xid: u32, time: DateTime<Utc>) -> u64 {
        self.append(RM_XACT_ID, XLOG_XACT_COMMIT, xid, &postgres_micros(time).to_le_bytes())
    }

    /// A filler record of `len` bytes of main data (a logical message, as far as the reader cares).
    fn filler(&mut self, len: usize) -> u64 {
        self.append(RM_LOGICALMSG_ID, 0, 5, &vec![0xAB; len])
    }

    fn switch(&mut self) -> u64 {
        let lsn = self.append_raw(RM_XLOG_ID, XLOG_SWITCH, 0, vec![0u8; SIZE_OF_XLOG_RECORD]);
        let next = (self.position / u64::from(SIZE) + 1) * u64::from(SIZE);
        self.position = next;
        lsn
    }

    /// The written segments, each padded to full size.
    fn segments(&self) -> Vec<Vec<u8>> {
        let mut bytes = self.bytes.clone();
        bytes.resize(bytes.len().div_ceil(SIZE as usize) * SIZE as usize, 0);
        bytes.chunks(SIZE as usize).map(<[u8]>::to_vec).collect()
    }
}

fn name(segno: u64) -> SegmentName {
    let size = SegmentSize::new(SIZE).unwrap();
    match WalFileName::parse(&Segment { timeline: 1, segno }.file_name(size)).unwrap() {
        WalFileName::Segment(name) => name,
        other => panic!("{other}"),
    }
}

/// Every record starting in segment `segno` (the first of `segments`), and how the walk ended.
fn read(segno: u64, segments: &[Vec<u8>]) -> (Vec<Record>, Option<End>) {
    let slices: Vec<&[u8]> = segments.iter().map(Vec::as_slice).collect();
    let mut reader = SegmentRecords::new(name(segno), &slices).unwrap();
    let records = reader.by_ref().collect::<Result<Vec<_>, _>>().unwrap();
    (records, reader.end())
}

#[test]
fn records_are_decoded_with_their_times_and_transactions() {
    let mut w = Writer::new(4);
    let mut checkpoint = vec![0u8; 88];
    checkpoint[0..8].copy_from_slice(&0x4000028u64.to_le_bytes());
    checkpoint[8..12].copy_from_slice(&3u32.to_le_bytes());
    checkpoint[12..16].copy_from_slice(&2u32.to_le_bytes());
    checkpoint[64..72].copy_from_slice(&at(1).timestamp().to_le_bytes());
    let c = w.append(RM_XLOG_ID, XLOG_CHECKPOINT_ONLINE, 0, &checkpoint);
    let commit = w.commit(700, at(2));
    let mut point = postgres_micros(at(3)).to_le_bytes().to_vec();
    point.extend_from_slice(b"before_oops\0junk after the nul");
    point.resize(72, 0);
    let rp = w.append(RM_XLOG_ID, XLOG_RESTORE_POINT, 0, &point);
    let mut prepared = postgres_micros(at(4)).to_le_bytes().to_vec();
    prepared.extend_from_slice(&(XACT_XINFO_HAS_TWOPHASE | XACT_XINFO_HAS_SUBXACTS).to_le_bytes());
    prepared.extend_from_slice(&2i32.to_le_bytes());
    prepared.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
    prepared.extend_from_slice(&733u32.to_le_bytes());
    w.append(RM_XACT_ID, XLOG_XACT_ABORT_PREPARED | XLOG_XACT_HAS_INFO, 0, &prepared);
    w.switch();
    let (records, end) = read(4, &w.segments());
    let kinds: Vec<(u64, RecordKind)> = records.iter().map(|r| (r.lsn.0, r.kind.clone())).collect();
    assert_eq!(
        kinds[..3],
        [
            (
                c,
                RecordKind::Checkpoint {
                    time: at(1),
                    shutdown: false,
                    redo: Lsn(0x4000028),
                    timeline: 3,
                    prev_timeline: 2,
                }
            ),
            (
                commit,
                RecordKind::Commit {
                    time: at(2),
                    xid: 700,
                    details: TransactionDetails::default()
                }
            ),
            (
                rp,
                RecordKind::RestorePoint {
                    time: at(3),
                    name: "before_oops".into()
                }
            ),
        ]
    );
    assert_eq!(
        records[3].kind,
        RecordKind::Abort {
            time: at(4),
            xid: 733,
            details: TransactionDetails {
                subxacts: vec![1, 2],
                ..TransactionDetails::default()
            }
        }
    );
    assert_eq!(records[3].xid, 0, "the header's xid is the session's");
    assert_eq!(records[4].kind, RecordKind::Switch);
    assert_eq!(records[1].prev, Lsn(c));
    assert_eq!(records[0].lsn.0, 4 * u64::from(SIZE) + SIZE_OF_XLOG_LONG_PHD as u64);
    assert_eq!(end, Some(End::NextSegment));
}

#[test]
fn records_span_pages_and_segments() {
    let mut w = Writer::new(2);
    // Fill segment 2 up to a few hundred bytes before its end, then a record that crosses
    // into segment 3 over several pages.
    while w.position < 3 * u64::from(SIZE) - 4000 {
        w.filler(3000);
    }
    while w.position < 3 * u64::from(SIZE) - 600 {
        w.filler(100);
    }
    let spanning = w.filler(20_000);
    let after = w.commit(9, at(5));
    w.switch();
    let segments = w.segments();
    assert_eq!(segments.len(), 2);

    let (records, end) = read(2, &segments);
    let last = records.last().unwrap();
    assert_eq!(last.lsn.0, spanning, "the spanning record starts in segment 2");
    assert!(last.end.0 > 3 * u64::from(SIZE));
    assert_eq!(end, Some(End::NextSegment));

    let (records, end) = read(2, &segments[..1]);
    assert_ne!(records.last().unwrap().lsn.0, spanning);
    assert_eq!(
        end,
        Some(End::Continues {
            lsn: Lsn(spanning),
            needs: 3
        })
    );

    // Segment 3 starts with the rest of that record: its first own record is the commit.
    let (records, _) = read(3, &segments[1..]);
    assert_eq!(records[0].lsn.0, after);
    assert!(matches!(records[0].kind, RecordKind::Commit { time, xid: 9, .. } if time == at(5)));
}

#[test]
fn every_header_split_across_a_page_is_read() {
    // Records of growing size put every possible split of the 24-byte header on a page end.
    let mut w = Writer::new(1);
    let mut lsns = Vec::new();
    for len in 0..2000 {
        lsns.push(w.filler(len % 300));
    }
    w.switch();
    let (records, _) = read(1, &w.segments());
    let read_lsns: Vec<u64> = records.iter().map(|r| r.lsn.0).take(lsns.len()).collect();
    assert_eq!(read_lsns, lsns);
}

#[test]
fn the_end_of_wal_and_damage_are_told_apart() {
    let mut w = Writer::new(1);
    w.commit(1, at(1));
    let end = w.position;
    let (records, stop) = read(1, &w.segments());
    assert_eq!(records.len(), 1);
    assert_eq!(stop, Some(End::EndOfWal(Lsn(end))));

    let mut w = Writer::new(1);
    let commit = w.commit(1, at(1));
    w.switch();
    let mut damaged = w.segments();
    let offset = (commit - u64::from(SIZE)) as usize + SIZE_OF_XLOG_RECORD + 3;
    damaged[0][offset] ^= 1;
    let slices: Vec<&[u8]> = damaged.iter().map(Vec::as_slice).collect();
    let mut reader = SegmentRecords::new(name(1), &slices).unwrap();
    let error = reader.next().unwrap().unwrap_err();
    assert!(error.contains("CRC-32C"), "{error}");
    assert!(reader.next().is_none());
    assert_eq!(reader.end(), None);
}

proptest::proptest! {
    /// Whatever a damaged (or hostile) record holds, decoding it is an error, never a panic.
    #[test]
    fn damaged_records_are_errors_not_panics(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        rmid in 0u8..11,
        info in proptest::prelude::any::<u8>(),
        major in 13u32..=18,
    ) {
        let mut record = vec![0u8; SIZE_OF_XLOG_RECORD];
        record.extend_from_slice(&body);
        let format = PgVersion::new(major).unwrap();
        let mut blocks = Blocks::new();
        let _ = fragments(&record, format, &mut blocks);
        let _ = decode_kind(rmid, info, 7, &body, &blocks, format);
    }
}

/// A record's fragment headers as `XLogRecordAssemble` lays them out: block references (the
/// second in the same relation as the first, the first with a full-page image of a heap page
/// with a hole), then the main data.
fn record_with_blocks(main: &[u8]) -> Vec<u8> {
    let storage = [1663u32, 5, 16384];
    let mut record = vec![0u8; SIZE_OF_XLOG_RECORD];
    // Block 0: an image of 24 bytes (its page header; the rest is the hole) and 3 data bytes.
    record.extend_from_slice(&[0, BKPBLOCK_HAS_IMAGE | BKPBLOCK_HAS_DATA]);
    record.extend_from_slice(&3u16.to_le_bytes());
    record.extend_from_slice(&24u16.to_le_bytes());
    record.extend_from_slice(&24u16.to_le_bytes()); // hole offset
    record.push(BKPIMAGE_HAS_HOLE);
    storage
        .iter()
        .for_each(|oid| record.extend_from_slice(&oid.to_le_bytes()));
    record.extend_from_slice(&7u32.to_le_bytes());
    // Block 1: the same relation, block 9, visibility map fork, no payload.
    record.extend_from_slice(&[1, BKPBLOCK_SAME_REL | 2]);
    record.extend_from_slice(&0u16.to_le_bytes());
    record.extend_from_slice(&9u32.to_le_bytes());
    record.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, main.len() as u8]);
    let mut page_header = [0u8; 24];
    page_header[16..18].copy_from_slice(&8192u16.to_le_bytes()); // pd_special: no special space
    page_header[18..20].copy_from_slice(&(8192u16 | 4).to_le_bytes()); // size and layout version
    record.extend_from_slice(&page_header);
    record.extend_from_slice(&[0xEE; 3]);
    record.extend_from_slice(main);
    record
}

#[test]
fn block_references_and_row_changes_are_read() {
    let format = PgVersion::new(15).unwrap();
    let storage = RelFileLocator {
        spc: 1663,
        db: 5,
        rel: 16384,
    };
    let mut multi_insert = vec![0x02, 0];
    multi_insert.extend_from_slice(&250u16.to_le_bytes());
    let record = record_with_blocks(&multi_insert);
    let mut blocks = Blocks::new();
    let main = fragments(&record, format, &mut blocks).unwrap();
    assert_eq!(main, multi_insert);
    assert_eq!(
        blocks.as_slice(),
        [
            BlockRef {
                id: 0,
                storage,
                fork: 0,
                block: 7,
                image: PageImage::Plain
            },
            BlockRef {
                id: 1,
                storage,
                fork: 2,
                block: 9,
                image: PageImage::None
            },
        ]
    );
    let rows = |rmid, info, main: &[u8]| decode_kind(rmid, info, 7, main, &blocks, format).unwrap();
    assert_eq!(
        rows(RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT, &multi_insert),
        RecordKind::Rows {
            storage,
            change: RowChange::Insert,
            rows: 250
        }
    );
    for (info, change) in [
        (XLOG_HEAP_INSERT | 0x80, RowChange::Insert),
        (XLOG_HEAP_DELETE, RowChange::Delete),
        (XLOG_HEAP_UPDATE, RowChange::Update),
        (XLOG_HEAP_HOT_UPDATE | 0x80, RowChange::Update),
    ] {
        assert_eq!(
            rows(RM_HEAP_ID, info, &[0; 8]),
            RecordKind::Rows {
                storage,
                change,
                rows: 1
            }
        );
    }
    assert_eq!(
        rows(RM_HEAP_ID, 0x60, &[0; 8]),
        RecordKind::Other,
        "a row lock changes no row"
    );
    let mut no_same_rel = record.clone();
    no_same_rel[SIZE_OF_XLOG_RECORD + 1] |= BKPBLOCK_SAME_REL;
    assert!(fragments(&no_same_rel, format, &mut Blocks::new())
        .unwrap_err()
        .contains("no block before"));
}

#[test]
fn storage_database_and_transaction_details_are_read_per_major() {
    let storage = RelFileLocator {
        spc: 1663,
        db: 5,
        rel: 16390,
    };
    let oids = |oids: &[u32]| oids.iter().flat_map(|o| o.to_le_bytes()).collect::<Vec<u8>>();
    for major in 13..=18 {
        let format = PgVersion::new(major).unwrap();
        let decode = |rmid, info, main: &[u8]| decode_kind(rmid, info, 0, main, &[], format);
        assert_eq!(
            decode(RM_SMGR_ID, XLOG_SMGR_CREATE, &oids(&[1663, 5, 16390, 0])).unwrap(),
            RecordKind::StorageCreate { storage, fork: 0 }
        );
        assert_eq!(
            decode(RM_SMGR_ID, XLOG_SMGR_TRUNCATE, &oids(&[3, 1663, 5, 16390, 7])).unwrap(),
            RecordKind::StorageTruncate { storage, blocks: 3 }
        );
        let drop = format.database_records().drop;
        assert_eq!(
            decode(RM_DBASE_ID, drop, &oids(&[16400, 2, 1663, 16500])).unwrap(),
            RecordKind::DatabaseDrop {
                database: 16400,
                tablespaces: vec![1663, 16500]
            },
            "PostgreSQL {major}"
        );
        assert!(decode(RM_DBASE_ID, drop, &oids(&[16400, 1_000_000, 1663])).is_err());
        assert_eq!(
            decode(RM_DBASE_ID, 0x00, &oids(&[16400, 1663, 1, 1663])).unwrap(),
            RecordKind::DatabaseCreate {
                database: 16400,
                tablespace: 1663
            }
        );
        // A commit with its database, a subtransaction, a dropped relation, dropped statistics
        // (15+) and invalidations, in the order ParseCommitRecord reads them.
        let xinfo = XACT_XINFO_HAS_DBINFO
            | XACT_XINFO_HAS_SUBXACTS
            | XACT_XINFO_HAS_RELFILENODES
            | XACT_XINFO_HAS_INVALS
            | format
                .dropped_stats_item_bytes()
                .map_or(0, |_| XACT_XINFO_HAS_DROPPED_STATS);
        let mut commit = postgres_micros(at(9)).to_le_bytes().to_vec();
        commit.extend_from_slice(&oids(&[xinfo, 5, 1663, 1, 801, 1, 1663, 5, 16390]));
        if let Some(item) = format.dropped_stats_item_bytes() {
            commit.extend_from_slice(&oids(&[1]));
            commit.extend_from_slice(&vec![0; item]);
        }
        commit.extend_from_slice(&oids(&[2]));
        commit.extend_from_slice(&[0; 2 * INVAL_MESSAGE_BYTES]);
        let decoded = decode_kind(
            RM_XACT_ID,
            XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO,
            800,
            &commit,
            &[],
            format,
        );
        assert_eq!(
            decoded.unwrap(),
            RecordKind::Commit {
                time: at(9),
                xid: 800,
                details: TransactionDetails {
                    subxacts: vec![801],
                    dropped: vec![storage],
                    database: Some((5, 1663)),
                }
            },
            "PostgreSQL {major}"
        );
        commit.truncate(commit.len() - 1);
        assert!(decode(RM_XACT_ID, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, &commit).is_err());
    }
}

#[test]
fn the_end_of_recovery_names_both_timelines() {
    let format = PgVersion::new(16).unwrap();
    let mut main = postgres_micros(at(7)).to_le_bytes().to_vec();
    main.extend_from_slice(&[2, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(
        decode_kind(RM_XLOG_ID, XLOG_END_OF_RECOVERY, 0, &main, &[], format).unwrap(),
        RecordKind::EndOfRecovery {
            time: at(7),
            timeline: 2,
            prev_timeline: 1
        }
    );
}
