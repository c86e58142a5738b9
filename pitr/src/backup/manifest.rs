//! The backup manifest: everything known about one base backup, written last, so that its
//! presence is what makes a backup exist.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Tier;
use crate::wal::{Lsn, SegmentSize, TimelineId};

/// The version of the manifest format.
pub const MANIFEST_VERSION: u32 = 1;

/// One base backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version.
    pub format_version: u32,
    /// `<name>_<tier>_<YYYYMMDD_HHMMSS>`.
    pub id: String,
    /// The tier it belongs to.
    pub tier: Tier,
    /// When `pg_backup_start` returned.
    pub start_time: DateTime<Utc>,
    /// When `pg_backup_stop` returned: the backup is consistent from here on.
    pub stop_time: DateTime<Utc>,
    /// The start LSN (redo point of the backup's checkpoint).
    pub start_lsn: Lsn,
    /// The end LSN: recovery from this backup is consistent once replay passes it.
    pub stop_lsn: Lsn,
    /// The timeline the backup was taken on.
    pub timeline: TimelineId,
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// PostgreSQL major version.
    pub pg_version: u32,
    /// WAL segment size in bytes.
    pub wal_segment_size: u32,
    /// The first WAL segment recovery from this backup needs.
    pub first_wal: String,
    /// The last WAL segment needed to reach consistency.
    pub last_wal: String,
    /// The first transaction id not yet assigned when the backup stopped: a transaction with
    /// this id or later committed after the backup was consistent.
    #[serde(default)]
    pub next_xid: Option<u64>,
    /// Seconds from start to the manifest being written.
    pub duration_seconds: f64,
    /// Total size of the copied files.
    pub original_bytes: u64,
    /// Total size of the stored objects.
    pub stored_bytes: u64,
    /// Tablespaces, with where they were.
    pub tablespaces: Vec<Tablespace>,
    /// Directories to recreate, parents first.
    pub directories: Vec<DirEntry>,
    /// The copied files, `global/pg_control` last.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The segment size as a type.
    pub fn segment_size(&self) -> SegmentSize {
        SegmentSize::new(self.wal_segment_size).unwrap_or(SegmentSize::DEFAULT)
    }

    /// The segment numbers (on [`Manifest::timeline`]) from the backup's start to its
    /// consistency point: the WAL it needs to be restorable at all.
    pub fn consistency_segments(&self) -> std::ops::RangeInclusive<u64> {
        let size = self.segment_size();
        let first = size.segment_of(self.start_lsn);
        first..=size.segment_before(self.stop_lsn).max(first)
    }
}

/// A tablespace: `pg_tblspc/<oid>` pointed at `location`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tablespace {
    /// The tablespace's OID.
    pub oid: u32,
    /// Where its symlink pointed.
    pub location: String,
}

/// A directory of the data directory (tablespace contents appear under `pg_tblspc/<oid>/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    /// Relative path, `/`-separated.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
}

/// A copied file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path, `/`-separated.
    pub path: String,
    /// Bytes copied (a file may shrink or grow while the server runs; WAL replay repairs it).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, Unix seconds, as seen before the copy.
    pub mtime: i64,
    /// CRC-32 of the copied bytes.
    pub crc32: u32,
    /// Size of the stored object.
    pub stored_size: u64,
}

#[cfg(test)]
impl Manifest {
    /// A manifest for tests: backup `id` of `tier` on `timeline`, needing the 16 MiB `segments`
    /// to reach consistency, consistent at `stop_time`, without files.
    pub(crate) fn for_test(
        id: &str,
        tier: Tier,
        timeline: TimelineId,
        segments: std::ops::RangeInclusive<u64>,
        stop_time: DateTime<Utc>,
    ) -> Manifest {
        let size = SegmentSize::DEFAULT;
        let name = |segno| crate::wal::Segment { timeline, segno }.file_name(size);
        Manifest {
            format_version: MANIFEST_VERSION,
            id: id.into(),
            tier,
            start_time: stop_time,
            stop_time,
            start_lsn: Lsn(size.segment_start(*segments.start()).0 + 40),
            stop_lsn: Lsn(size.segment_start(*segments.end()).0 + 400),
            timeline,
            system_identifier: 1,
            pg_version: 15,
            wal_segment_size: size.bytes(),
            first_wal: name(*segments.start()),
            last_wal: name(*segments.end()),
            next_xid: None,
            duration_seconds: 1.0,
            original_bytes: 0,
            stored_bytes: 0,
            tablespaces: vec![],
            directories: vec![],
            files: vec![],
        }
    }
}
