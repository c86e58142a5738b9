//! What each resource manager's records say, from their info bits, main data and block
//! references: PostgreSQL's formats of `src/include/catalog/pg_control.h` and
//! `access/xlog_internal.h` (checkpoints, restore points, end of recovery), `access/xact.h`
//! (commits and aborts, `ParseCommitRecord`/`ParseAbortRecord` of `xactdesc.c`),
//! `access/heapam_xlog.h` (heap row changes), `catalog/storage_xlog.h` (storage creation and
//! truncation) and `commands/dbcommands_xlog.h` (databases). Every length and count read from a
//! record is checked against the bytes it has: a damaged record is an error, never a panic or a
//! large allocation.

use chrono::{DateTime, Utc};

use super::{BlockRef, RecordKind, RowChange, TransactionDetails, RELFILENODE_BYTES};
use crate::pg::PgVersion;
use crate::wal::{Lsn, RelFileLocator};

/// Resource manager ids (`src/include/access/rmgrlist.h`, the same in 12–18).
pub(super) const RM_XLOG_ID: u8 = 0;
pub(super) const RM_XACT_ID: u8 = 1;
pub(super) const RM_SMGR_ID: u8 = 2;
pub(super) const RM_DBASE_ID: u8 = 4;
pub(super) const RM_HEAP2_ID: u8 = 9;
pub(super) const RM_HEAP_ID: u8 = 10;
/// `XLR_RMGR_INFO_MASK`: the resource manager's part of `xl_info`.
pub(super) const XLR_RMGR_INFO_MASK: u8 = 0xF0;

/// XLOG record kinds (`pg_control.h`).
pub(super) const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
pub(super) const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
pub(super) const XLOG_SWITCH: u8 = 0x40;
pub(super) const XLOG_RESTORE_POINT: u8 = 0x70;
pub(super) const XLOG_END_OF_RECOVERY: u8 = 0x90;
/// `XLOG_FPI_FOR_HINT` and `XLOG_FPI`: full-page images alone (`log_newpage`: index builds,
/// table rewrites, `CREATE DATABASE` with the WAL_LOG strategy).
pub(super) const XLOG_FPI_FOR_HINT: u8 = 0xA0;
pub(super) const XLOG_FPI: u8 = 0xB0;

/// `CheckPoint`: `redo` at 0, `ThisTimeLineID` at 8, `PrevTimeLineID` at 12 (12–18).
pub(super) const CHECKPOINT_TIMELINE_OFFSET: usize = 8;
/// `xl_end_of_recovery`: `end_time`, `ThisTimeLineID`, `PrevTimeLineID` (17 adds `wal_level`
/// after them).
pub(super) const END_OF_RECOVERY_BYTES: usize = 16;

/// Transaction record kinds (`xact.h`): `xl_info & XLOG_XACT_OPMASK`.
pub(super) const XLOG_XACT_OPMASK: u8 = 0x70;
pub(super) const XLOG_XACT_COMMIT: u8 = 0x00;
pub(super) const XLOG_XACT_ABORT: u8 = 0x20;
pub(super) const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
pub(super) const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
/// `XLOG_XACT_HAS_INFO`: an `xinfo` word follows `xact_time`.
pub(super) const XLOG_XACT_HAS_INFO: u8 = 0x80;

/// `xinfo` bits of commit and abort records, and the sub-records they announce, in order.
pub(super) const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
pub(super) const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
/// `XACT_XINFO_HAS_RELFILENODES` (`_RELFILELOCATORS` from 16).
pub(super) const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
pub(super) const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
pub(super) const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
pub(super) const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;
/// `sizeof(SharedInvalidationMessage)`.
pub(super) const INVAL_MESSAGE_BYTES: usize = 16;

/// Heap record kinds (`heapam_xlog.h`): `xl_info & XLOG_HEAP_OPMASK` (the 0x80 bit is
/// `XLOG_HEAP_INIT_PAGE`).
pub(super) const XLOG_HEAP_OPMASK: u8 = 0x70;
pub(super) const XLOG_HEAP_INSERT: u8 = 0x00;
pub(super) const XLOG_HEAP_DELETE: u8 = 0x10;
pub(super) const XLOG_HEAP_UPDATE: u8 = 0x20;
pub(super) const XLOG_HEAP_HOT_UPDATE: u8 = 0x40;
/// `XLOG_HEAP2_MULTI_INSERT` (0x50 in 12–18, while the other heap2 kinds moved in 17).
pub(super) const XLOG_HEAP2_MULTI_INSERT: u8 = 0x50;
/// `offsetof(xl_heap_multi_insert, ntuples)`: after `flags` and a byte of padding.
pub(super) const MULTI_INSERT_NTUPLES_OFFSET: usize = 2;

/// Storage record kinds (`storage_xlog.h`).
pub(super) const XLOG_SMGR_CREATE: u8 = 0x10;
pub(super) const XLOG_SMGR_TRUNCATE: u8 = 0x20;
/// `xl_smgr_create`: the locator, then `forkNum`.
pub(super) const SMGR_CREATE_FORK_OFFSET: usize = RELFILENODE_BYTES;
/// `xl_smgr_truncate`: `blkno`, then the locator.
pub(super) const SMGR_TRUNCATE_LOCATOR_OFFSET: usize = 4;

/// `xl_restore_point`: `rp_time`, then `rp_name[MAXFNAMELEN]`.
pub(super) const RESTORE_POINT_NAME_BYTES: usize = 64;
/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's `TimestampTz` epoch.
pub(super) const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Little-endian reads from a record's main data, with its length checked.
struct Main<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl Main<'_> {
    fn short(&self) -> String {
        format!("its {} data is {} bytes, too short", self.what, self.bytes.len())
    }

    fn u32_at(&self, at: usize) -> Result<u32, String> {
        self.bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| self.short())
    }

    fn i64_at(&self, at: usize) -> Result<i64, String> {
        self.bytes
            .get(at..at + 8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| self.short())
    }

    fn locator_at(&self, at: usize) -> Result<RelFileLocator, String> {
        Ok(RelFileLocator {
            spc: self.u32_at(at)?,
            db: self.u32_at(at + 4)?,
            rel: self.u32_at(at + 8)?,
        })
    }

    fn time_at(&self, at: usize) -> Result<DateTime<Utc>, String> {
        postgres_time(self.i64_at(at)?).ok_or_else(|| format!("its {} time is out of range", self.what))
    }

    /// A counted array (`int count`, then `count` items of `item` bytes) at `*at`: its count,
    /// checked to fit in the bytes there are; `*at` moves past it.
    fn array(&self, at: &mut usize, item: usize) -> Result<(usize, usize), String> {
        let count = self.u32_at(*at)?;
        let count = usize::try_from(count).ok().filter(|c| i32::try_from(*c).is_ok());
        let start = *at + 4;
        let end = count
            .and_then(|c| c.checked_mul(item))
            .and_then(|len| start.checked_add(len))
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| format!("its {} data counts more items than it holds", self.what))?;
        *at = end;
        Ok((start, count.expect("checked")))
    }
}

/// What a record is, from its resource manager, info bits, main data and block references.
pub(super) fn decode_kind(
    rmid: u8,
    info: u8,
    xid: u32,
    main: &[u8],
    blocks: &[BlockRef],
    format: PgVersion,
) -> Result<RecordKind, String> {
    let op = info & XLR_RMGR_INFO_MASK;
    match rmid {
        RM_XLOG_ID => decode_xlog(op, main, format),
        RM_XACT_ID => decode_xact(info, xid, main, format),
        RM_HEAP_ID => {
            let change = match info & XLOG_HEAP_OPMASK {
                XLOG_HEAP_INSERT => RowChange::Insert,
                XLOG_HEAP_DELETE => RowChange::Delete,
                XLOG_HEAP_UPDATE | XLOG_HEAP_HOT_UPDATE => RowChange::Update,
                _ => return Ok(RecordKind::Other),
            };
            rows(blocks, change, 1)
        }
        RM_HEAP2_ID if info & XLOG_HEAP_OPMASK == XLOG_HEAP2_MULTI_INSERT => {
            let ntuples = main
                .get(MULTI_INSERT_NTUPLES_OFFSET..MULTI_INSERT_NTUPLES_OFFSET + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or_else(|| format!("its multi-insert data is {} bytes, too short", main.len()))?;
            rows(blocks, RowChange::Insert, u32::from(ntuples))
        }
        RM_SMGR_ID => {
            let main = Main {
                bytes: main,
                what: "storage",
            };
            match op {
                XLOG_SMGR_CREATE => Ok(RecordKind::StorageCreate {
                    storage: main.locator_at(0)?,
                    fork: u8::try_from(main.u32_at(SMGR_CREATE_FORK_OFFSET)?)
                        .map_err(|_| "its fork number is out of range".to_string())?,
                }),
                XLOG_SMGR_TRUNCATE => Ok(RecordKind::StorageTruncate {
                    blocks: main.u32_at(0)?,
                    storage: main.locator_at(SMGR_TRUNCATE_LOCATOR_OFFSET)?,
                }),
                _ => Ok(RecordKind::Other),
            }
        }
        RM_DBASE_ID => {
            let main = Main {
                bytes: main,
                what: "database",
            };
            let kinds = format.database_records();
            if op == kinds.create_copy || Some(op) == kinds.create_wal_log {
                Ok(RecordKind::DatabaseCreate {
                    database: main.u32_at(0)?,
                    tablespace: main.u32_at(4)?,
                })
            } else if op == kinds.drop {
                let mut at = 4;
                let (start, count) = main.array(&mut at, 4)?;
                let tablespaces = (0..count)
                    .map(|i| main.u32_at(start + 4 * i))
                    .collect::<Result<_, _>>()?;
                Ok(RecordKind::DatabaseDrop {
                    database: main.u32_at(0)?,
                    tablespaces,
                })
            } else {
                Ok(RecordKind::Other)
            }
        }
        _ => Ok(RecordKind::Other),
    }
}

/// Rows of the relation of block 0.
fn rows(blocks: &[BlockRef], change: RowChange, rows: u32) -> Result<RecordKind, String> {
    let storage = blocks
        .iter()
        .find(|b| b.id == 0)
        .map(|b| b.storage)
        .ok_or("a heap record without its block 0")?;
    Ok(RecordKind::Rows { storage, change, rows })
}

/// The XLOG resource manager's records: switches, checkpoints, restore points, end of recovery.
fn decode_xlog(op: u8, main: &[u8], format: PgVersion) -> Result<RecordKind, String> {
    match op {
        XLOG_SWITCH => Ok(RecordKind::Switch),
        XLOG_FPI | XLOG_FPI_FOR_HINT => Ok(RecordKind::PageImages),
        XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE => {
            let main = Main {
                bytes: main,
                what: "checkpoint",
            };
            let seconds = main.i64_at(format.checkpoint_time_offset())?;
            Ok(RecordKind::Checkpoint {
                time: unix_time(seconds.checked_mul(1_000_000)).ok_or_else(|| main.short())?,
                shutdown: op == XLOG_CHECKPOINT_SHUTDOWN,
                redo: Lsn(main.i64_at(0)? as u64),
                timeline: main.u32_at(CHECKPOINT_TIMELINE_OFFSET)?,
                prev_timeline: main.u32_at(CHECKPOINT_TIMELINE_OFFSET + 4)?,
            })
        }
        XLOG_RESTORE_POINT => {
            let main = Main {
                bytes: main,
                what: "restore point",
            };
            let time = main.time_at(0)?;
            let raw = main
                .bytes
                .get(8..8 + RESTORE_POINT_NAME_BYTES)
                .ok_or_else(|| main.short())?;
            // strlcpy: the name ends at the first NUL; what follows it is not defined.
            let name = raw.split(|b| *b == 0).next().unwrap_or_default();
            Ok(RecordKind::RestorePoint {
                time,
                name: String::from_utf8_lossy(name).into_owned(),
            })
        }
        XLOG_END_OF_RECOVERY => {
            let main = Main {
                bytes: main,
                what: "end of recovery",
            };
            if main.bytes.len() < END_OF_RECOVERY_BYTES {
                return Err(main.short());
            }
            Ok(RecordKind::EndOfRecovery {
                time: main.time_at(0)?,
                timeline: main.u32_at(8)?,
                prev_timeline: main.u32_at(12)?,
            })
        }
        _ => Ok(RecordKind::Other),
    }
}

/// Commit and abort records (`ParseCommitRecord`, `ParseAbortRecord`): the time, the
/// subtransactions, the dropped storage, the database, and for prepared transactions the
/// transaction id from the two-phase sub-record.
fn decode_xact(info: u8, xid: u32, main: &[u8], format: PgVersion) -> Result<RecordKind, String> {
    let op = info & XLOG_XACT_OPMASK;
    if !matches!(
        op,
        XLOG_XACT_COMMIT | XLOG_XACT_ABORT | XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT_PREPARED
    ) {
        return Ok(RecordKind::Other);
    }
    let main = Main {
        bytes: main,
        what: "transaction",
    };
    let time = main.time_at(0)?;
    let prepared = matches!(op, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT_PREPARED);
    let commit = matches!(op, XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED);
    let mut twophase_xid = None;
    let mut details = TransactionDetails::default();
    if info & XLOG_XACT_HAS_INFO != 0 {
        let xinfo = main.u32_at(8)?;
        let mut at = 12usize;
        if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
            details.database = Some((main.u32_at(at)?, main.u32_at(at + 4)?));
            at += 8;
        }
        if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
            let (start, count) = main.array(&mut at, 4)?;
            details.subxacts = (0..count)
                .map(|i| main.u32_at(start + 4 * i))
                .collect::<Result<_, _>>()?;
        }
        if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
            let (start, count) = main.array(&mut at, RELFILENODE_BYTES)?;
            details.dropped = (0..count)
                .map(|i| main.locator_at(start + RELFILENODE_BYTES * i))
                .collect::<Result<_, _>>()?;
        }
        if let Some(item) = format
            .dropped_stats_item_bytes()
            .filter(|_| xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0)
        {
            main.array(&mut at, item)?;
        }
        if commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
            main.array(&mut at, INVAL_MESSAGE_BYTES)?;
        }
        if xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
            twophase_xid = Some(main.u32_at(at)?);
        }
    }
    let xid = match (prepared, twophase_xid) {
        (false, _) => xid,
        (true, Some(xid)) => xid,
        (true, None) => return Err("a prepared transaction's end without its transaction id".into()),
    };
    Ok(if commit {
        RecordKind::Commit { time, xid, details }
    } else {
        RecordKind::Abort { time, xid, details }
    })
}

/// A `TimestampTz` (microseconds since 2000-01-01 UTC).
fn postgres_time(micros: i64) -> Option<DateTime<Utc>> {
    unix_time(micros.checked_add(POSTGRES_EPOCH_UNIX_MICROS))
}

fn unix_time(micros: Option<i64>) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros?)
}
