//! The records of a WAL segment: walking its pages and records (a record, and even its 24-byte
//! header, may span pages and segments), checking each record's CRC-32C, reading each record's
//! block references, and decoding what recovery targets and the inspector ([`crate::inspect`])
//! depend on (in [`rmgr`]): commits and aborts (time, transaction, subtransactions, dropped
//! storage, database), restore points, checkpoints, end of recovery, WAL switches, heap row
//! changes, storage creation and truncation, and database creation and removal.
//!
//! The layout follows PostgreSQL's `xlogrecord.h`, `xlog_internal.h`, `xact.h`, `pg_control.h`
//! and the reading logic of `xlogreader.c` (`XLogFindNextRecord`, `XLogDecodeNextRecord`,
//! `DecodeXLogRecord`, `ValidXLogRecord`). What differs between major versions is asked of
//! [`PgVersion`]; the decoding is checked against `pg_waldump` of each major in the tests.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use smallvec::SmallVec;

use super::{LongPageHeader, Lsn, RelFileLocator, SegmentName, SegmentSize, SIZE_OF_XLOG_LONG_PHD};
use crate::pg::PgVersion;

pub mod rmgr;

/// `SizeOfXLogRecord`: the fixed record header.
const SIZE_OF_XLOG_RECORD: usize = 24;
/// `offsetof(XLogRecord, xl_crc)`: the header bytes the CRC covers.
const XL_CRC_OFFSET: usize = 20;
/// `SizeOfXLogShortPHD`.
const SIZE_OF_XLOG_SHORT_PHD: usize = 24;
/// The WAL block sizes PostgreSQL can be built with (`--with-wal-blocksize`, 1 to 64 kB).
const XLOG_BLCKSZ_MIN: u64 = 1024;
const XLOG_BLCKSZ_MAX: u64 = 65536;
/// What is allocated ahead for a record spanning pages; a larger one grows as its pages are read
/// (a damaged length must not allocate gigabytes).
const GATHER_RESERVE: usize = 1 << 20;
/// `MAXIMUM_ALIGNOF`: records start on 8-byte boundaries.
const MAXALIGN: u64 = 8;

/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the rest of a record.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `XLP_FIRST_IS_OVERWRITE_CONTRECORD`: the record continued here was abandoned (a crash).
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// `XLP_ALL_FLAGS`.
const XLP_ALL_FLAGS: u16 = 0x000F;

/// `sizeof(RelFileNode)` (`RelFileLocator` since 16): three OIDs.
const RELFILENODE_BYTES: usize = 12;

/// Fragment ids after the record header (`xlogrecord.h`).
const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
/// Block reference flags (`fork_flags`): the fork in the low bits, then what follows.
const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;
/// `BKPIMAGE_HAS_HOLE`.
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// `offsetof(PageHeaderData, pd_special)` (src/include/storage/bufpage.h): where a page says
/// where its special space starts (the page's size when it has none).
const PD_SPECIAL_OFFSET: usize = 16;
/// `offsetof(PageHeaderData, pd_pagesize_version)`: the page size (high byte) and layout version.
const PD_PAGESIZE_VERSION_OFFSET: usize = 18;
/// `PageGetPageSize`: the size part of `pd_pagesize_version`.
const PAGE_SIZE_MASK: u16 = 0xFF00;

/// One WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where it starts (PostgreSQL's `ReadRecPtr`, the LSN pg_waldump prints).
    pub lsn: Lsn,
    /// The position after its last byte: the record needs the WAL up to here.
    pub end: Lsn,
    /// `xl_prev`: where the record before it starts.
    pub prev: Lsn,
    /// `xl_tot_len`.
    pub total_len: u32,
    /// `xl_xid`: the (sub)transaction that wrote it, 0 for none.
    pub xid: u32,
    /// `xl_rmid`: the resource manager.
    pub rmid: u8,
    /// `xl_info`.
    pub info: u8,
    /// The blocks it references, in the record's order (most records reference one or two).
    pub blocks: Blocks,
    /// What it is.
    pub kind: RecordKind,
}

/// A record's block references, held inline up to four.
pub type Blocks = SmallVec<[BlockRef; 4]>;

/// A block a record references (`DecodedBkpBlock` of `xlogreader.c`): storage, fork and block,
/// and whether a full-page image of it comes along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// The block id within the record (0 to 32); resource managers number their blocks (a heap
    /// update's new page is block 0, its old page block 1).
    pub id: u8,
    /// The relation's storage (`BKPBLOCK_SAME_REL` repeats the previous reference's).
    pub storage: RelFileLocator,
    /// `ForkNumber`: 0 main, 1 free space map, 2 visibility map, 3 init.
    pub fork: u8,
    /// The block number.
    pub block: u32,
    /// The full-page image it carries.
    pub image: PageImage,
}

/// The full-page image a block reference carries, and what kind of page it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageImage {
    /// None.
    None,
    /// A page without special space (`pd_special` at the page's end): heap pages, and the pages
    /// of free space maps and visibility maps.
    Plain,
    /// A page with special space: index and sequence pages.
    Special,
    /// Compressed (`wal_compression`): not looked into.
    Compressed,
}

/// What a record is, as far as recovery targets and the inspector care; everything else is
/// `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKind {
    /// `XLOG_XACT_COMMIT` or `_COMMIT_PREPARED`.
    Commit {
        /// `xact_time`.
        time: DateTime<Utc>,
        /// The transaction recovery compares with `recovery_target_xid`: `xl_xid`, or the
        /// prepared transaction's for `COMMIT PREPARED`.
        xid: u32,
        /// Its subtransactions, dropped storage and database.
        details: TransactionDetails,
    },
    /// `XLOG_XACT_ABORT` or `_ABORT_PREPARED` (also a subtransaction's rollback).
    Abort {
        /// `xact_time`.
        time: DateTime<Utc>,
        /// As for commits.
        xid: u32,
        /// The subtransactions it rolls back too, the storage it drops (what it had created).
        details: TransactionDetails,
    },
    /// `XLOG_RESTORE_POINT`.
    RestorePoint {
        /// `rp_time`.
        time: DateTime<Utc>,
        /// `rp_name`.
        name: String,
    },
    /// `XLOG_CHECKPOINT_ONLINE` or `_SHUTDOWN`.
    Checkpoint {
        /// `CheckPoint.time`: when the checkpoint started (whole seconds).
        time: DateTime<Utc>,
        /// A shutdown checkpoint.
        shutdown: bool,
        /// `redo`: where replay from this checkpoint starts.
        redo: Lsn,
        /// `ThisTimeLineID`.
        timeline: u32,
        /// `PrevTimeLineID`: another than `timeline` on the checkpoint that ends a recovery
        /// which switched timelines.
        prev_timeline: u32,
    },
    /// `XLOG_END_OF_RECOVERY`: a promotion switched timelines.
    EndOfRecovery {
        /// `end_time`.
        time: DateTime<Utc>,
        /// `ThisTimeLineID`: the new timeline.
        timeline: u32,
        /// `PrevTimeLineID`: the one recovery followed.
        prev_timeline: u32,
    },
    /// `XLOG_SWITCH`: the rest of the segment is unused.
    Switch,
    /// `XLOG_FPI` or `XLOG_FPI_FOR_HINT`: full-page images alone, of the blocks the record
    /// references (what index builds, table rewrites and `CREATE DATABASE` write).
    PageImages,
    /// Heap rows written: `XLOG_HEAP_INSERT`, `_DELETE`, `_UPDATE`, `_HOT_UPDATE` (one row each)
    /// and `XLOG_HEAP2_MULTI_INSERT` (`ntuples` rows).
    Rows {
        /// The relation (block 0's).
        storage: RelFileLocator,
        /// What was done to them.
        change: RowChange,
        /// How many.
        rows: u32,
    },
    /// `XLOG_SMGR_CREATE`: a new relation file (a fork of a new relfilenode).
    StorageCreate {
        /// The new storage.
        storage: RelFileLocator,
        /// The fork created.
        fork: u8,
    },
    /// `XLOG_SMGR_TRUNCATE`: a relation cut to a length (VACUUM's truncation, not SQL TRUNCATE).
    StorageTruncate {
        /// The storage.
        storage: RelFileLocator,
        /// Its new length in blocks.
        blocks: u32,
    },
    /// `CREATE DATABASE` (either strategy).
    DatabaseCreate {
        /// The new database's OID.
        database: u32,
        /// Its tablespace.
        tablespace: u32,
    },
    /// `DROP DATABASE` (or the old directories of `ALTER DATABASE SET TABLESPACE`).
    DatabaseDrop {
        /// The database's OID.
        database: u32,
        /// The tablespaces whose directories of it are removed.
        tablespaces: Vec<u32>,
    },
    /// Any other record.
    Other,
}

/// What a heap record did to its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowChange {
    /// `INSERT` (also `COPY`'s multi-inserts).
    Insert,
    /// `UPDATE`, HOT or not.
    Update,
    /// `DELETE`.
    Delete,
}

/// What a commit or abort record says besides its time (`xl_xact_parsed_commit`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransactionDetails {
    /// `subxacts`: the subtransactions that end with it.
    pub subxacts: Vec<u32>,
    /// `xlocators` (`xnodes` before 16): the relation files removed at its end.
    pub dropped: Vec<RelFileLocator>,
    /// `dbId`, `tsId` (`XACT_XINFO_HAS_DBINFO`, written when the record carries invalidations
    /// or the WAL is logical): the transaction's database and its default tablespace.
    pub database: Option<(u32, u32)>,
}

impl Record {
    /// The time the record carries, if it is a commit, abort, restore point, checkpoint or end
    /// of recovery.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        match &self.kind {
            RecordKind::Commit { time, .. }
            | RecordKind::Abort { time, .. }
            | RecordKind::RestorePoint { time, .. }
            | RecordKind::Checkpoint { time, .. }
            | RecordKind::EndOfRecovery { time, .. } => Some(*time),
            _ => None,
        }
    }
}

/// How the walk of a segment's records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// No more records start in the segment: the next one starts in the next segment (the
    /// segment is full, or a switch record closed it).
    NextSegment,
    /// The WAL ends here: no record starts at this position.
    EndOfWal(Lsn),
    /// The record starting at `lsn` continues into segment `needs`, which was not given.
    Continues {
        /// Where the record starts.
        lsn: Lsn,
        /// The segment number it needs.
        needs: u64,
    },
}

/// The records that start in one segment, oldest first. Built by [`SegmentRecords::new`] with
/// the segment and, for a last record that continues, the segments after it. The iteration
/// stops at the first invalid record (yielding its error); [`SegmentRecords::end`] then says how
/// the walk ended.
pub struct SegmentRecords<'a> {
    /// The segment and those after it, in order.
    segments: &'a [&'a [u8]],
    /// The major version that wrote the segment: what differs in its records.
    format: PgVersion,
    size: SegmentSize,
    /// `XLOG_BLCKSZ`.
    block: u64,
    /// The first segment's number.
    segno: u64,
    /// Where the next record starts (a page boundary means: after that page's header).
    next: u64,
    /// Where the previous record starts, once one was read.
    prev: Option<Lsn>,
    end: Option<End>,
    /// An invalid record stopped the walk.
    failed: bool,
    /// The page magic every page must carry.
    magic: u16,
}

/// A problem with the bytes: the walk stops.
type Invalid = String;

/// A record's bytes (borrowed when it lies within one page) and the position after them.
type Gathered<'a> = (Cow<'a, [u8]>, u64);

impl<'a> SegmentRecords<'a> {
    /// Starts reading the records of the segment `name`: `segments[0]` is that whole segment,
    /// `segments[1..]` the ones after it (as many as are at hand).
    pub fn new(name: SegmentName, segments: &'a [&'a [u8]]) -> Result<SegmentRecords<'a>, Invalid> {
        let first = segments.first().ok_or("no segment to read")?;
        let header = LongPageHeader::validate(name, first)?;
        let format = PgVersion::new(header.pg_version).map_err(|e| e.to_string())?;
        let block = u64::from(u32::from_le_bytes(first[36..40].try_into().expect("4 bytes")));
        if !(block.is_power_of_two() && (XLOG_BLCKSZ_MIN..=XLOG_BLCKSZ_MAX).contains(&block)) {
            return Err(format!("WAL block size {block} is not one PostgreSQL builds with"));
        }
        let segno = header.segment_size.segment_of(header.page_address);
        let mut reader = SegmentRecords {
            segments,
            format,
            size: header.segment_size,
            block,
            segno,
            next: 0,
            prev: None,
            end: None,
            failed: false,
            magic: u16::from_le_bytes([first[0], first[1]]),
        };
        reader.next = reader.first_record_start()?;
        Ok(reader)
    }

    /// How the walk ended (`None` while records remain or after an error).
    pub fn end(&self) -> Option<End> {
        self.end
    }

    fn segment_start(&self) -> u64 {
        self.size.segment_start(self.segno).0
    }

    fn segment_end(&self) -> u64 {
        self.size.segment_start(self.segno + 1).0
    }

    /// Where the first record starting in the segment begins: after the long header, and past
    /// the rest of a record that began in an earlier segment (`XLogFindNextRecord`).
    fn first_record_start(&self) -> Result<u64, Invalid> {
        let mut page = self.segment_start();
        while page < self.segment_end() {
            let header = self.page_header(page)?.expect("the segment is at hand");
            if header.info & XLP_FIRST_IS_CONTRECORD == 0 {
                return Ok(page + header.len);
            }
            let rest = align(u64::from(header.rem_len));
            if rest < self.block - header.len {
                return Ok(page + header.len + rest);
            }
            page += self.block;
        }
        Ok(self.segment_end())
    }

    /// The bytes at `lsn..lsn + len` (within one page), or `None` when that segment is not at
    /// hand.
    fn bytes(&self, lsn: u64, len: u64) -> Option<&'a [u8]> {
        let index = usize::try_from(self.size.segment_of(Lsn(lsn)) - self.segno).ok()?;
        let segment = self.segments.get(index)?;
        let offset = usize::try_from(lsn % u64::from(self.size.bytes())).ok()?;
        segment.get(offset..offset + usize::try_from(len).ok()?)
    }

    /// The header of the page starting at `page`, checked; `None` when its segment is not at
    /// hand.
    fn page_header(&self, page: u64) -> Result<Option<PageHeader>, Invalid> {
        let long = page.is_multiple_of(u64::from(self.size.bytes()));
        let len = if long {
            SIZE_OF_XLOG_LONG_PHD
        } else {
            SIZE_OF_XLOG_SHORT_PHD
        } as u64;
        let Some(bytes) = self.bytes(page, len) else {
            return Ok(None);
        };
        let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
        let info = u16::from_le_bytes([bytes[2], bytes[3]]);
        let address = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let rem_len = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
        if magic != self.magic {
            return Err(format!(
                "page at {} has magic 0x{magic:04X}, expected 0x{:04X}",
                Lsn(page),
                self.magic
            ));
        }
        if address != page {
            return Err(format!("page at {} says it is at {}", Lsn(page), Lsn(address)));
        }
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(format!("page at {} has invalid flags 0x{info:04X}", Lsn(page)));
        }
        Ok(Some(PageHeader { info, rem_len, len }))
    }

    /// Reads the record at `self.next`.
    fn read(&mut self) -> Result<Option<Record>, Invalid> {
        let mut lsn = self.next;
        if lsn >= self.segment_end() {
            self.end = Some(End::NextSegment);
            return Ok(None);
        }
        if lsn.is_multiple_of(self.block) {
            let header = self.page_header(lsn)?.expect("within the first segment");
            if header.info & XLP_FIRST_IS_CONTRECORD != 0 {
                return Err(format!(
                    "page at {} continues a record, but the record before it ended",
                    Lsn(lsn)
                ));
            }
            lsn += header.len;
        }
        let total_len = u32::from_le_bytes(
            self.bytes(lsn, 4)
                .expect("within the first segment")
                .try_into()
                .expect("4"),
        );
        if total_len == 0 {
            self.end = Some(End::EndOfWal(Lsn(lsn)));
            return Ok(None);
        }
        if (total_len as usize) < SIZE_OF_XLOG_RECORD {
            return Err(format!("record at {} has an invalid length {total_len}", Lsn(lsn)));
        }
        let Some((bytes, end)) = self.gather(lsn, u64::from(total_len))? else {
            return Ok(None);
        };
        let record = self.decode(Lsn(lsn), Lsn(end), &bytes)?;
        self.prev = Some(record.lsn);
        self.next = if record.kind == RecordKind::Switch {
            // The rest of the segment is unused (`XLogDecodeNextRecord` pretends the switch
            // record extends to the end of its segment).
            self.size.segment_start(self.size.segment_of(Lsn(lsn)) + 1).0
        } else {
            align(end)
        };
        Ok(Some(record))
    }

    /// The `len` bytes of the record starting at `lsn`, across page (and segment) boundaries,
    /// and the position after them; `None` (with `self.end` set) when a segment it needs is not
    /// at hand or the record was abandoned.
    fn gather(&mut self, lsn: u64, len: u64) -> Result<Option<Gathered<'a>>, Invalid> {
        let page_end = (lsn / self.block + 1) * self.block;
        if lsn + len <= page_end {
            let bytes = self.bytes(lsn, len).expect("within the first segment");
            return Ok(Some((Cow::Borrowed(bytes), lsn + len)));
        }
        let mut bytes = Vec::with_capacity((len as usize).min(GATHER_RESERVE));
        let mut at = lsn;
        loop {
            let page_end = (at / self.block + 1) * self.block;
            let take = (len - bytes.len() as u64).min(page_end - at);
            bytes.extend_from_slice(self.bytes(at, take).expect("the page header was read"));
            at += take;
            let remaining = len - bytes.len() as u64;
            if remaining == 0 {
                return Ok(Some((Cow::Owned(bytes), at)));
            }
            let Some(header) = self.page_header(at)? else {
                self.end = Some(End::Continues {
                    lsn: Lsn(lsn),
                    needs: self.size.segment_of(Lsn(at)),
                });
                return Ok(None);
            };
            if header.info & XLP_FIRST_IS_CONTRECORD == 0 {
                if header.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                    // A crash cut the record short and the server went on after it: no record
                    // starts in this segment after it.
                    self.end = Some(End::NextSegment);
                    return Ok(None);
                }
                return Err(format!("record at {} is not continued on page {}", Lsn(lsn), Lsn(at)));
            }
            if u64::from(header.rem_len) != remaining {
                return Err(format!(
                    "record at {} has {remaining} bytes left, but page {} continues {}",
                    Lsn(lsn),
                    Lsn(at),
                    header.rem_len
                ));
            }
            at += header.len;
        }
    }

    /// Checks the record's header and CRC and decodes it.
    fn decode(&self, lsn: Lsn, end: Lsn, bytes: &[u8]) -> Result<Record, Invalid> {
        let invalid = |what: String| format!("record at {lsn}: {what}");
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let total_len = u32_at(0);
        let prev = Lsn(u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")));
        let stored_crc = u32_at(XL_CRC_OFFSET);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[SIZE_OF_XLOG_RECORD..]), &bytes[..XL_CRC_OFFSET]);
        if crc != stored_crc {
            return Err(invalid(format!(
                "CRC-32C is {crc:08X}, the record says {stored_crc:08X}"
            )));
        }
        if let Some(expected) = self.prev.filter(|p| *p != prev) {
            return Err(invalid(format!(
                "it points back to {prev}, the record before starts at {expected}"
            )));
        }
        let (info, rmid) = (bytes[16], bytes[17]);
        let mut blocks = Blocks::new();
        let main = fragments(bytes, self.format, &mut blocks).map_err(&invalid)?;
        let xid = u32_at(4);
        let kind = rmgr::decode_kind(rmid, info, xid, main, &blocks, self.format).map_err(invalid)?;
        Ok(Record {
            lsn,
            end,
            prev,
            total_len,
            xid,
            rmid,
            info,
            blocks,
            kind,
        })
    }
}

impl Iterator for SegmentRecords<'_> {
    type Item = Result<Record, Invalid>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.end.is_some() {
            return None;
        }
        let read = self.read();
        self.failed = read.is_err();
        read.transpose()
    }
}

/// A page header's fields the walk needs.
struct PageHeader {
    info: u16,
    rem_len: u32,
    /// Its size: long on a segment's first page.
    len: u64,
}

/// `MAXALIGN`.
fn align(position: u64) -> u64 {
    position.div_ceil(MAXALIGN) * MAXALIGN
}

/// Where a block reference's image and data lie in the payload, to look into the image once the
/// headers are read.
struct Payload {
    image_len: usize,
    compressed: bool,
    data_len: usize,
}

/// Reads the fragment headers after the record header (`DecodeXLogRecord`): the block
/// references into `blocks`, and the main data, which comes last, returned. Every length is
/// checked against the record's: nothing is read past it.
fn fragments<'r>(record: &'r [u8], format: PgVersion, blocks: &mut Blocks) -> Result<&'r [u8], String> {
    let mut at = SIZE_OF_XLOG_RECORD;
    let mut payload = 0usize;
    let truncated = || "its fragment headers run past its end".to_string();
    let byte = |at: usize| record.get(at).copied().ok_or_else(truncated);
    let u16_at = |at: usize| {
        record
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or_else(truncated)
    };
    let u32_at = |at: usize| {
        record
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(truncated)
    };
    let mut main_len = 0usize;
    let mut payloads: SmallVec<[Payload; 4]> = SmallVec::new();
    while at < record.len() && record.len() - at > payload {
        let id = byte(at)?;
        at += 1;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = usize::from(byte(at)?);
                at += 1;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = u32_at(at)? as usize;
                at += 4;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => at += 2,
            XLR_BLOCK_ID_TOPLEVEL_XID => at += 4,
            id if id <= XLR_MAX_BLOCK_ID => {
                if blocks.last().is_some_and(|b| b.id >= id) {
                    return Err(format!("block {id} comes out of order"));
                }
                let flags = byte(at)?;
                let data_len = u16_at(at + 1)?;
                at += 3;
                if (flags & BKPBLOCK_HAS_DATA != 0) != (data_len != 0) {
                    return Err(format!("block {id} has {data_len} data bytes against its flags"));
                }
                let mut entry = Payload {
                    image_len: 0,
                    compressed: false,
                    data_len,
                };
                if flags & BKPBLOCK_HAS_IMAGE != 0 {
                    entry.image_len = u16_at(at)?;
                    let image_info = byte(at + 4)?;
                    at += 5;
                    entry.compressed = image_info & format.compressed_image_bits() != 0;
                    if entry.compressed && image_info & BKPIMAGE_HAS_HOLE != 0 {
                        at += 2; // hole_length
                    }
                }
                payload += entry.image_len + data_len;
                let storage = if flags & BKPBLOCK_SAME_REL == 0 {
                    let storage = RelFileLocator {
                        spc: u32_at(at)?,
                        db: u32_at(at + 4)?,
                        rel: u32_at(at + 8)?,
                    };
                    at += RELFILENODE_BYTES;
                    storage
                } else {
                    blocks
                        .last()
                        .map(|b| b.storage)
                        .ok_or_else(|| format!("block {id} repeats the relation of no block before it"))?
                };
                let block = u32_at(at)?;
                at += 4;
                blocks.push(BlockRef {
                    id,
                    storage,
                    fork: flags & BKPBLOCK_FORK_MASK,
                    block,
                    image: PageImage::None,
                });
                payloads.push(entry);
            }
            id => return Err(format!("invalid fragment id {id}")),
        }
    }
    if at + payload + main_len != record.len() {
        return Err(format!(
            "its fragments add up to {} bytes, its length is {}",
            at + payload + main_len,
            record.len()
        ));
    }
    // The payload: each block's image, then its data, in order; the main data last.
    for (block, entry) in blocks.iter_mut().zip(&payloads) {
        if entry.image_len > 0 {
            block.image = classify_image(&record[at..at + entry.image_len], entry);
        }
        at += entry.image_len + entry.data_len;
    }
    Ok(&record[record.len() - main_len..])
}

/// What page a full-page image shows: whether its special space starts at the page's end
/// (`pd_special` equals the size in `pd_pagesize_version`). The hole an image leaves out lies
/// between `pd_lower` and `pd_upper`, after the header, so the header is whole.
fn classify_image(image: &[u8], entry: &Payload) -> PageImage {
    if entry.compressed {
        return PageImage::Compressed;
    }
    let Some(header) = image.get(PD_SPECIAL_OFFSET..PD_PAGESIZE_VERSION_OFFSET + 2) else {
        return PageImage::Special;
    };
    let special = u16::from_le_bytes([header[0], header[1]]);
    let page_size = u16::from_le_bytes([header[2], header[3]]) & PAGE_SIZE_MASK;
    if special == page_size {
        PageImage::Plain
    } else {
        PageImage::Special
    }
}

#[cfg(test)]
pub(crate) mod synthetic;
#[cfg(test)]
mod tests;
