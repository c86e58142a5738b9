//! What differs between PostgreSQL major versions, in one place: everything pitr does differently
//! for 12 to 18 asks [`PgVersion`], so that supporting a new major is one edit here (and its
//! tests), never a hunt for `>= 15` in the code.
//!
//! What does **not** differ in 12–18, so nothing here asks: the `pg_control` fields pitr reads
//! (system identifier @0, state @16, latest checkpoint @32, its timeline @48:
//! src/include/catalog/pg_control.h); the long page header and the record header of WAL
//! (src/include/access/xlog_internal.h, xlogrecord.h); `recovery.signal` and the recovery
//! settings in postgresql.conf (since 12); `pg_stat_archiver`'s columns (since 9.4); the restore
//! point record (`xl_restore_point`, src/include/access/xlog_internal.h); the backup label's
//! `START WAL LOCATION` and `START TIMELINE` lines.
//!
//! What differs but pitr does not depend on: data checksums are on by default from 18 (`initdb
//! --no-data-checksums` turns them off); a backup asks the server's `data_checksums` setting
//! whatever the version, and the page checksum and page header it checks are the same in 12–18
//! (`pg::page`). `pg_stat_wal` exists from 14 and loses its write and sync
//! columns to `pg_stat_io` in 18; pitr reads only `pg_stat_archiver`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A PostgreSQL major version pitr supports: 12 to 18.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct PgVersion(u32);

/// `XLOG_PAGE_MAGIC` of each major version (src/include/access/xlog_internal.h).
const PAGE_MAGIC: [(u32, u16); 7] = [
    (12, 0xD101),
    (13, 0xD106),
    (14, 0xD10D),
    (15, 0xD110),
    (16, 0xD113),
    (17, 0xD116),
    (18, 0xD118),
];

/// The SQL of the low-level backup API on one connection (non-exclusive mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupApi {
    /// Starts a backup: `$1` label, `$2` fast checkpoint; returns the start LSN as text.
    pub start: &'static str,
    /// Stops it: `$1` wait for the last segment to be archived; returns the end LSN as text,
    /// the label file and the tablespace map.
    pub stop: &'static str,
    /// The two functions' signatures, for `has_function_privilege`.
    pub functions: [&'static str; 2],
}

/// The info values of the Database resource manager's records in one major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseRecords {
    /// `CREATE DATABASE` copying the template's directory (`xl_dbase_create_rec`, 15+
    /// `xl_dbase_create_file_copy_rec`: database, tablespace, source database, source tablespace).
    pub create_copy: u8,
    /// `CREATE DATABASE` with the WAL_LOG strategy (`xl_dbase_create_wal_log_rec`: database,
    /// tablespace), from 15.
    pub create_wal_log: Option<u8>,
    /// `DROP DATABASE` (`xl_dbase_drop_rec`: database, then a count and the tablespaces).
    pub drop: u8,
}

impl PgVersion {
    /// The oldest major pitr supports.
    pub const OLDEST: PgVersion = PgVersion(12);
    /// The newest major pitr supports.
    pub const NEWEST: PgVersion = PgVersion(18);

    /// The major version `major`, when pitr supports it.
    pub fn new(major: u32) -> Result<PgVersion> {
        if (Self::OLDEST.0..=Self::NEWEST.0).contains(&major) {
            Ok(PgVersion(major))
        } else {
            Err(Error::Refused(format!(
                "PostgreSQL {major} is not supported: pitr supports PostgreSQL {} to {}",
                Self::OLDEST,
                Self::NEWEST
            )))
        }
    }

    /// The major version of a server's `server_version_num` (e.g. 150018 → 15).
    pub fn from_server_version_num(version_num: u32) -> Result<PgVersion> {
        PgVersion::new(version_num / 10000)
    }

    /// The major version whose WAL carries `magic` in its page headers.
    pub fn from_page_magic(magic: u16) -> Option<PgVersion> {
        PAGE_MAGIC.iter().find(|(_, m)| *m == magic).map(|(v, _)| PgVersion(*v))
    }

    /// The major version, e.g. 15.
    pub fn major(self) -> u32 {
        self.0
    }

    /// `XLOG_PAGE_MAGIC`: what this major writes in every WAL page header.
    pub fn page_magic(self) -> u16 {
        PAGE_MAGIC
            .iter()
            .find(|(v, _)| *v == self.0)
            .map(|(_, m)| *m)
            .expect("every supported major has a page magic")
    }

    /// The low-level backup API: `pg_backup_start`/`pg_backup_stop` from 15, before that
    /// `pg_start_backup`/`pg_stop_backup` with `exclusive => false` (the exclusive mode was
    /// removed in 15).
    pub fn backup_api(self) -> BackupApi {
        if self.0 >= 15 {
            BackupApi {
                start: "SELECT pg_backup_start($1, $2)::text",
                stop: "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop($1)",
                functions: ["pg_backup_start(text, boolean)", "pg_backup_stop(boolean)"],
            }
        } else {
            BackupApi {
                start: "SELECT pg_start_backup($1, $2, false)::text",
                stop: "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, $1)",
                functions: [
                    "pg_start_backup(text, boolean, boolean)",
                    "pg_stop_backup(boolean, boolean)",
                ],
            }
        }
    }

    /// Whether archiving can go through a module instead of a command (`archive_library`,
    /// from 15).
    pub fn has_archive_library(self) -> bool {
        self.0 >= 15
    }

    /// Whether a data directory has `pg_wal/summaries/` (WAL summarization, from 17): a restored
    /// data directory needs it.
    pub fn has_wal_summaries(self) -> bool {
        self.0 >= 17
    }

    /// The `bimg_info` bits that mark a compressed full-page image in a WAL record:
    /// `BKPIMAGE_IS_COMPRESSED` (0x02) up to 14; `BKPIMAGE_COMPRESS_PGLZ | _LZ4 | _ZSTD`
    /// (0x04 | 0x08 | 0x10) from 15 (src/include/access/xlogrecord.h).
    pub fn compressed_image_bits(self) -> u8 {
        if self.0 >= 15 {
            0x1C
        } else {
            0x02
        }
    }

    /// `sizeof(xl_xact_stats_item)`, the dropped-statistics items of commit and abort records
    /// (`XACT_XINFO_HAS_DROPPED_STATS`, from 15): 12 bytes in 15–17, 16 in 18 (the object id
    /// became 64 bits); `None` before 15 (src/include/access/xact.h).
    pub fn dropped_stats_item_bytes(self) -> Option<usize> {
        match self.0 {
            ..=14 => None,
            15..=17 => Some(12),
            _ => Some(16),
        }
    }

    /// The Database resource manager's record kinds (`xl_info & 0xF0`): up to 14 `XLOG_DBASE_CREATE`
    /// 0x00 (a copy of a template's directory) and `XLOG_DBASE_DROP` 0x10; from 15
    /// `XLOG_DBASE_CREATE_FILE_COPY` 0x00, `XLOG_DBASE_CREATE_WAL_LOG` 0x10 (the new default
    /// strategy, which then logs every block) and `XLOG_DBASE_DROP` 0x20
    /// (src/include/commands/dbcommands_xlog.h).
    pub fn database_records(self) -> DatabaseRecords {
        if self.0 >= 15 {
            DatabaseRecords {
                create_copy: 0x00,
                create_wal_log: Some(0x10),
                drop: 0x20,
            }
        } else {
            DatabaseRecords {
                create_copy: 0x00,
                create_wal_log: None,
                drop: 0x10,
            }
        }
    }

    /// `offsetof(CheckPoint, time)` in a checkpoint record: 64 in 12–18 (18 put `wal_level`
    /// into what was padding before `nextXid`; src/include/catalog/pg_control.h).
    pub fn checkpoint_time_offset(self) -> usize {
        64
    }
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<u32> for PgVersion {
    type Error = Error;

    fn try_from(major: u32) -> Result<PgVersion> {
        PgVersion::new(major)
    }
}

impl From<PgVersion> for u32 {
    fn from(version: PgVersion) -> u32 {
        version.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_major_round_trips_through_its_page_magic() {
        for major in 12..=18 {
            let version = PgVersion::new(major).unwrap();
            assert_eq!(PgVersion::from_page_magic(version.page_magic()), Some(version));
        }
        assert!(PgVersion::new(11).is_err() && PgVersion::new(19).is_err());
        assert_eq!(PgVersion::from_page_magic(0xD0FF), None);
        assert_eq!(PgVersion::from_server_version_num(150018).unwrap().major(), 15);
    }

    #[test]
    fn record_formats_differ_where_the_headers_say() {
        let v = |major| PgVersion::new(major).unwrap();
        assert_eq!(v(14).dropped_stats_item_bytes(), None);
        assert_eq!(v(15).dropped_stats_item_bytes(), Some(12));
        assert_eq!(v(18).dropped_stats_item_bytes(), Some(16));
        assert_eq!(v(14).compressed_image_bits(), 0x02);
        assert_eq!(v(15).compressed_image_bits(), 0x1C);
        assert_eq!(v(14).database_records().drop, 0x10);
        assert_eq!(v(15).database_records().drop, 0x20);
        assert_eq!(v(14).database_records().create_wal_log, None);
    }

    #[test]
    fn the_backup_api_was_renamed_in_15() {
        assert!(PgVersion::new(14)
            .unwrap()
            .backup_api()
            .start
            .contains("pg_start_backup"));
        assert!(PgVersion::new(15)
            .unwrap()
            .backup_api()
            .start
            .contains("pg_backup_start"));
    }

    #[test]
    fn a_version_serializes_as_its_number() {
        let v: PgVersion = serde_json::from_str("16").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "16");
        assert!(serde_json::from_str::<PgVersion>("11").is_err());
    }
}
