//! The backup manifest: everything known about one base backup, written last, so that its
//! presence is what makes a backup exist.
//!
//! A manifest is read from the repository, which its owner can write: every path, mode and
//! tablespace location in it is checked ([`Manifest::layout_problems`]) before anything is
//! restored from it, and its checksum ([`crate::codec::json`]) catches damage.

use std::path::{Component, Path};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::packs::GroupRef;
use super::Tier;
use crate::codec::{self, json, Codec, Compression};
use crate::error::{Error, Result};
use crate::fsio;
use crate::wal::{Lsn, SegmentSize, TimelineId};

/// The version of the manifest format this pitr writes. Version 2 added [`FileEntry::parts`];
/// version 3 the checksum and the copy beside it; version 4 [`Manifest::configuration`];
/// version 5 empty files without an object ([`FileEntry::is_empty_without_object`]), which an
/// older pitr would look for and miss, so it refuses the version instead; version 6
/// [`Manifest::page_checksums`], the data pages that failed their checksum at the backup, which
/// an older pitr would not report, so it refuses the version too; version 7 deduplicated files
/// ([`FileEntry::groups`], stored in packs shared by backups: see [`super::packs`]), which an
/// older pitr cannot restore. Versions 1 and 2 read the same (no checksum), versions 1 to 3
/// without a configuration, 1 to 5 without page checksums, 1 to 6 with every file an object of
/// its backup's directory. Format 7 added [`Manifest::pgdata`] and [`FileEntry::stat`] later, as
/// optional fields: a format-7 manifest without them trusts no file, so the next backup reads
/// every file (no released pitr wrote format 7 before them).
pub const MANIFEST_VERSION: u32 = 7;

/// The first format of deduplicated backups, whose files lie in packs: this pitr writes it only for
/// them (a backup of whole objects keeps [`OBJECT_FILES_VERSION`]), and stores such a manifest
/// compressed ([`Manifest::to_bytes`]): it lists every 256 KiB group of every file by two hashes,
/// about 1.3 MB of JSON for a 770 MiB cluster, which zstd stores in about 170 kB. Each backup writes
/// it twice (the manifest and its copy), every hour. Older manifests stay plain JSON.
pub const DEDUPLICATED_FROM: u32 = 7;

/// The version of a manifest whose files are all objects of the backup's directory: what a
/// pitr of format 6 reads too, so a backup taken without deduplication stays readable by it.
pub const OBJECT_FILES_VERSION: u32 = 6;

/// At most this many bad block numbers are recorded per file; [`BadPages::count`] counts them all.
pub const BAD_BLOCKS_RECORDED: usize = 100;

/// Permission bits a restored file or directory may have: never set-id or sticky bits.
pub const PERMISSION_BITS: u32 = 0o777;

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
    /// The server's configuration when it lies outside the data directory (postgresql-common's
    /// `/etc/postgresql/<version>/<cluster>/`); `None` when the data directory holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<Configuration>,
    /// What checking the data pages' checksums during the copy found (format 6 on); `None` in
    /// older manifests, whose backups checked nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_checksums: Option<PageChecksums>,
    /// The data directory the files were read from, its path made canonical (format 7, for the
    /// skip rule: only a backup of the same data directory takes files from this one unread);
    /// `None` in older manifests and in those of backups without deduplication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgdata: Option<String>,
}

/// The data pages' checksums as a backup checked them: every page of every relation fork
/// (main, fsm, vm, each segment) under `base/`, `global/` and `pg_tblspc/`, while copying it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageChecksums {
    /// Whether the pages were checked: only when the cluster has data checksums (and 8 KiB pages).
    pub checked: bool,
    /// Pages whose checksum was checked (new, all-zero pages among them).
    pub pages_checked: u64,
    /// Pages not judged because they changed at or after the backup's start LSN: they may be
    /// torn in the copy, and WAL replay writes them again.
    pub pages_skipped: u64,
    /// The files with pages that failed their checksum, read twice.
    pub bad_files: Vec<BadPages>,
}

impl PageChecksums {
    /// Bad pages over all files.
    pub fn bad_pages(&self) -> u64 {
        self.bad_files.iter().map(|f| f.count).sum()
    }
}

/// The pages of one file that failed their checksum at the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadPages {
    /// The file's path in the data directory.
    pub path: String,
    /// How many of its pages failed.
    pub count: u64,
    /// The block numbers of the first [`BAD_BLOCKS_RECORDED`] of them (in the relation fork:
    /// segment N's first block is N × `RELSEG_SIZE`), ascending.
    pub blocks: Vec<u32>,
}

impl BadPages {
    /// `blocks 3, 7 (2 bad pages)`, with "…" when more failed than are recorded.
    pub fn describe(&self) -> String {
        let blocks: Vec<String> = self.blocks.iter().map(u32::to_string).collect();
        let more = if (self.blocks.len() as u64) < self.count {
            ", …"
        } else {
            ""
        };
        let plural = if self.count == 1 { "" } else { "s" };
        format!(
            "block{plural} {}{more} ({} bad page{plural})",
            blocks.join(", "),
            self.count
        )
    }
}

impl Manifest {
    /// The manifest as stored: checksummed JSON; a deduplicated backup's ([`DEDUPLICATED_FROM`]
    /// on) in a zstd [`crate::codec`] object, since its group lists make it long.
    pub fn to_bytes(&self) -> Vec<u8> {
        let record = json::to_vec(self);
        if self.format_version < DEDUPLICATED_FROM {
            return record;
        }
        Codec::new(Compression::Zstd, None)
            .expect("zstd's default level is in range")
            .encode(&record)
    }

    /// Reads a stored manifest (`what` names it in errors): its codec object's CRC-32 when it is
    /// compressed, its checksum, its format version.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Manifest> {
        let decoded;
        let record = if codec::is_object(bytes) {
            decoded = codec::decode(bytes, what)?;
            &decoded[..]
        } else {
            bytes
        };
        let manifest: Manifest = json::from_slice(record, what)?;
        if !(1..=MANIFEST_VERSION).contains(&manifest.format_version) {
            return Err(Error::Corrupt {
                what: what.to_string(),
                reason: format!(
                    "manifest format version {} is not one this pitr reads (1 to {MANIFEST_VERSION}): use a \
                     matching pitr",
                    manifest.format_version
                ),
            });
        }
        Ok(manifest)
    }

    /// What in the manifest could make a restore write anywhere but into the new data directory
    /// and its tablespaces, or write what a data directory never holds: paths that are absolute,
    /// hold `..` or empty parts; modes with set-id or sticky bits; tablespace locations that are
    /// relative, not normalized or `/`. Empty when the layout is safe to restore.
    pub fn layout_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let paths = self
            .directories
            .iter()
            .map(|d| ("directory", d.path.as_str(), d.mode))
            .chain(self.files.iter().map(|f| ("file", f.path.as_str(), f.mode)));
        for (kind, path, mode) in paths {
            if fsio::components(path).is_err() {
                problems.push(format!(
                    "{kind} path '{path}' is not a relative path of plain names (absolute, '..' or empty parts)"
                ));
            }
            if mode & !PERMISSION_BITS != 0 {
                problems.push(format!(
                    "{kind} {path} has mode {mode:o}: set-id or sticky bits never belong in a data directory"
                ));
            }
        }
        for tablespace in &self.tablespaces {
            if !is_normal_absolute(&tablespace.location) {
                problems.push(format!(
                    "tablespace {} has location '{}', which is not a normalized absolute path",
                    tablespace.oid, tablespace.location
                ));
            }
        }
        if let Some(configuration) = &self.configuration {
            problems.extend(configuration.layout_problems());
        }
        problems
    }

    /// Every stored object of the backup's files and of its configuration.
    pub fn pieces(&self) -> Vec<Piece<'_>> {
        let configuration = self.configuration.iter().flat_map(Configuration::pieces);
        self.files
            .iter()
            .flat_map(FileEntry::pieces)
            .chain(configuration)
            .collect()
    }

    /// The segment size as a type.
    pub fn segment_size(&self) -> SegmentSize {
        segment_size(self.wal_segment_size)
    }

    /// The segment numbers (on [`Manifest::timeline`]) from the backup's start to its
    /// consistency point: the WAL it needs to be restorable at all.
    pub fn consistency_segments(&self) -> std::ops::RangeInclusive<u64> {
        consistency_segments(self.segment_size(), self.start_lsn, self.stop_lsn)
    }

    /// Everything but the lists of directories, files and tablespaces and the configuration.
    pub fn summary(&self) -> ManifestSummary {
        let Manifest {
            format_version,
            id,
            tier,
            start_time,
            stop_time,
            start_lsn,
            stop_lsn,
            timeline,
            system_identifier,
            pg_version,
            wal_segment_size,
            first_wal,
            last_wal,
            next_xid,
            duration_seconds,
            original_bytes,
            stored_bytes,
            tablespaces: _,
            directories: _,
            files: _,
            configuration: _,
            page_checksums: _,
            pgdata: _,
        } = self;
        ManifestSummary {
            format_version: *format_version,
            id: id.clone(),
            tier: *tier,
            start_time: *start_time,
            stop_time: *stop_time,
            start_lsn: *start_lsn,
            stop_lsn: *stop_lsn,
            timeline: *timeline,
            system_identifier: *system_identifier,
            pg_version: *pg_version,
            wal_segment_size: *wal_segment_size,
            first_wal: first_wal.clone(),
            last_wal: last_wal.clone(),
            next_xid: *next_xid,
            duration_seconds: *duration_seconds,
            original_bytes: *original_bytes,
            stored_bytes: *stored_bytes,
        }
    }
}

fn segment_size(bytes: u32) -> SegmentSize {
    SegmentSize::new(bytes).unwrap_or(SegmentSize::DEFAULT)
}

fn consistency_segments(size: SegmentSize, start_lsn: Lsn, stop_lsn: Lsn) -> std::ops::RangeInclusive<u64> {
    let first = size.segment_of(start_lsn);
    first..=size.segment_before(stop_lsn).max(first)
}

/// A backup as listed, planned from and expired: its manifest without the lists of directories,
/// files and tablespaces and the configuration, which only a restore and verification read. A
/// repository of a thousand backups of a few thousand files each holds a few hundred megabytes
/// of those lists; their summaries take a few hundred kilobytes. Made from a manifest that was
/// read whole, so a manifest that does not read is never summarized.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestSummary {
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
    /// The first transaction id not yet assigned when the backup stopped.
    pub next_xid: Option<u64>,
    /// Seconds from start to the manifest being written.
    pub duration_seconds: f64,
    /// Total size of the copied files.
    pub original_bytes: u64,
    /// Total size of the stored objects.
    pub stored_bytes: u64,
}

impl ManifestSummary {
    /// Whether the backup is deduplicated: its files lie in packs shared with other backups.
    pub fn is_deduplicated(&self) -> bool {
        self.format_version >= DEDUPLICATED_FROM
    }

    /// The segment size as a type.
    pub fn segment_size(&self) -> SegmentSize {
        segment_size(self.wal_segment_size)
    }

    /// The segment numbers (on [`ManifestSummary::timeline`]) from the backup's start to its
    /// consistency point: the WAL it needs to be restorable at all.
    pub fn consistency_segments(&self) -> std::ops::RangeInclusive<u64> {
        consistency_segments(self.segment_size(), self.start_lsn, self.stop_lsn)
    }
}

impl From<Manifest> for ManifestSummary {
    fn from(manifest: Manifest) -> ManifestSummary {
        manifest.summary()
    }
}

/// An absolute path without `.`, `..` or empty parts, and not `/` itself.
fn is_normal_absolute(path: &str) -> bool {
    let path = Path::new(path);
    path.is_absolute()
        && path.components().count() > 1
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path
            .to_str()
            .is_some_and(|p| p.contains("//") || p.ends_with('/') || p.contains("/./"))
}

/// The server's configuration as it lay outside the data directory: where the server read it
/// (`SHOW config_file`, `hba_file`, `ident_file`) and the files, each under its absolute path:
/// postgresql.conf, every file it includes, pg_hba.conf and pg_ident.conf. Each is stored whole
/// as `config/<path>`. Files the configuration only names (SSL keys and certificates) are not
/// among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configuration {
    /// `data_directory` as the server showed it.
    pub data_directory: String,
    /// `config_file`: the server's postgresql.conf.
    pub config_file: String,
    /// `hba_file`.
    pub hba_file: String,
    /// `ident_file`.
    pub ident_file: String,
    /// The stored files; each [`FileEntry::path`] is absolute. Not counted in the manifest's
    /// totals, which are the data directory's.
    pub files: Vec<FileEntry>,
}

impl Configuration {
    /// The stored file at `path`.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// The stored objects of its files, one each.
    pub fn pieces(&self) -> impl Iterator<Item = Piece<'_>> {
        self.files.iter().map(|file| Piece {
            area: Area::Configuration,
            file,
            part: None,
            offset: 0,
            size: file.size,
            crc32: file.crc32,
            stored_size: file.stored_size,
        })
    }

    /// Paths that are not normalized absolute paths, files stored in parts or with set-id bits,
    /// and the three files the server reads first missing among the stored ones.
    fn layout_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for file in &self.files {
            if !is_normal_absolute(&file.path) {
                problems.push(format!(
                    "configuration file '{}' is not a normalized absolute path",
                    file.path
                ));
            }
            if !file.parts.is_empty() {
                problems.push(format!("configuration file {} is stored in parts", file.path));
            }
            if file.mode & !PERMISSION_BITS != 0 {
                problems.push(format!(
                    "configuration file {} has mode {:o}: set-id or sticky bits never belong there",
                    file.path, file.mode
                ));
            }
        }
        for (setting, path) in [
            ("config_file", &self.config_file),
            ("hba_file", &self.hba_file),
            ("ident_file", &self.ident_file),
        ] {
            if self.file(path).is_none() {
                problems.push(format!("the configuration's {setting} {path} is not among its files"));
            }
        }
        problems
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
    /// CRC-32 of the copied bytes (of a split file: of its parts' bytes, in order).
    pub crc32: u32,
    /// Size of the stored object (of a split file: the sum over its parts); 0 for an empty file
    /// of the data directory, which is stored as this entry alone, without an object (every
    /// object is at least a header long, so 0 is never an object's size).
    pub stored_size: u64,
    /// A file larger than [`PART_SIZE`] when the backup walked it is stored in parts, each its
    /// own object; empty for a file stored whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    /// Format 7: the file's groups of 32 pieces, in file order, stored in packs
    /// ([`super::packs`]) instead of objects of the backup's directory. Then `stored_size` is
    /// what this backup stored anew for the file (frames and group records), and `parts` is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupRef>,
    /// Format 7: the file's metadata as the backup saw it, and whether it is trusted, which is
    /// what lets a later hourly backup take the file's groups from this entry without reading it
    /// (the skip rule: [`FileStat`]). `None` in older manifests: nothing is trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<FileStat>,
}

/// A file's metadata as a deduplicated backup saw it (`stat` of the open file), for the skip
/// rule of bench/dedup.md section 8.3: a later hourly backup of the same data directory takes the
/// file's groups from this backup without reading it only when the file is `trusted` here and its
/// size, mtime, ctime, inode and device are all still these.
///
/// ctime is what makes the rule safe: any writer can set mtime back (`touch -d`, `cp -p`,
/// `utimensat`), but the kernel sets ctime to the current time on every write and every metadata
/// change, and nothing sets it back. The inode and device catch a file replaced by a rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Device number of the file system holding it.
    pub device: u64,
    /// Whether the content read is the file's for as long as these stay the same: every stat
    /// taken around the backup's read of the file (before and after each of its parts) was this
    /// one, its size is the bytes read, and its ctime and mtime are at least a second older than
    /// the read's start, so a later write, even in the same clock tick as the stat, leaves
    /// another ctime.
    pub trusted: bool,
}

impl FileStat {
    /// The metadata of `meta`, not (yet) trusted.
    pub fn of(meta: &std::fs::Metadata) -> FileStat {
        use std::os::unix::fs::MetadataExt;
        let ns = |secs: i64, nanos: i64| secs.saturating_mul(1_000_000_000).saturating_add(nanos);
        FileStat {
            size: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
            device: meta.dev(),
            trusted: false,
        }
    }

    /// Whether `other` saw the same file in the same state (size, times, inode and device),
    /// trusted or not.
    pub fn same_as(&self, other: &FileStat) -> bool {
        FileStat {
            trusted: false,
            ..*self
        } == FileStat {
            trusted: false,
            ..*other
        }
    }
}

/// Files larger than this are stored in parts of this size, so that one big relation file is
/// spread over every copy job, and no job holds more than a part in memory.
pub const PART_SIZE: u64 = 16 << 20;

/// One part of a split file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// Where in the file the part starts: its index times [`PART_SIZE`].
    pub offset: u64,
    /// Bytes copied (the last part runs to the end of the file as it was read).
    pub size: u64,
    /// CRC-32 of the copied bytes.
    pub crc32: u32,
    /// Size of the stored object.
    pub stored_size: u64,
}

/// Where a backup file came from, and so where its objects lie in the backup's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// The data directory: `files/<relative path>`.
    DataDirectory,
    /// The configuration outside it: `config/<absolute path without its leading />`.
    Configuration,
}

/// One stored object of a backup file: the whole file, or one of its parts.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    /// Where the file came from.
    pub area: Area,
    /// The file it belongs to.
    pub file: &'a FileEntry,
    /// The part's index; `None` for a file stored whole.
    pub part: Option<usize>,
    /// Where in the file its bytes go.
    pub offset: u64,
    /// Its original size.
    pub size: u64,
    /// CRC-32 of its original bytes.
    pub crc32: u32,
    /// Size of its stored object.
    pub stored_size: u64,
}

impl Piece<'_> {
    /// The object's key in the backup directory `dir`: `files/<path>`, or
    /// `files/<path>.part<NNNN>` for a part (no PostgreSQL file name ends that way); for a
    /// configuration file `config/<path>`.
    pub fn key(&self, dir: &str) -> String {
        match self.area {
            Area::DataDirectory => piece_key(dir, &self.file.path, self.part),
            Area::Configuration => config_key(dir, &self.file.path),
        }
    }
}

/// The key of the configuration file at the absolute `path` in the backup directory `dir`.
pub fn config_key(dir: &str, path: &str) -> String {
    format!("{dir}config/{}", path.trim_start_matches('/'))
}

/// The key of a file's object, or of one of its parts, in the backup directory `dir`.
pub fn piece_key(dir: &str, path: &str, part: Option<usize>) -> String {
    match part {
        None => format!("{dir}files/{path}"),
        Some(index) => format!("{dir}files/{path}.part{index:04}"),
    }
}

/// The CRC-32 of the parts' bytes in order, from their own CRCs.
pub fn parts_crc(parts: &[Part]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.combine(&crc32fast::Hasher::new_with_initial_len(part.crc32, part.size));
    }
    hasher.finalize()
}

impl FileEntry {
    /// Whether the file is empty and has no object: restore creates it from this entry alone.
    pub fn is_empty_without_object(&self) -> bool {
        self.size == 0 && self.stored_size == 0 && self.crc32 == 0 && self.parts.is_empty() && self.groups.is_empty()
    }

    /// Whether the file is stored in packs, as groups (format 7).
    pub fn is_deduplicated(&self) -> bool {
        !self.groups.is_empty()
    }

    /// The stored objects of the backup's directory that make up the file, in file order: none
    /// for an empty file without an object, nor for a file stored in packs.
    pub fn pieces(&self) -> Vec<Piece<'_>> {
        if self.is_empty_without_object() || self.is_deduplicated() {
            return Vec::new();
        }
        if self.parts.is_empty() {
            return vec![Piece {
                area: Area::DataDirectory,
                file: self,
                part: None,
                offset: 0,
                size: self.size,
                crc32: self.crc32,
                stored_size: self.stored_size,
            }];
        }
        self.parts
            .iter()
            .enumerate()
            .map(|(index, part)| Piece {
                area: Area::DataDirectory,
                file: self,
                part: Some(index),
                offset: part.offset,
                size: part.size,
                crc32: part.crc32,
                stored_size: part.stored_size,
            })
            .collect()
    }
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
            configuration: None,
            page_checksums: Some(PageChecksums::default()),
            pgdata: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_crc_is_the_crc_of_the_whole() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let parts: Vec<Part> = bytes
            .chunks(30_000)
            .enumerate()
            .map(|(i, chunk)| Part {
                offset: i as u64 * 30_000,
                size: chunk.len() as u64,
                crc32: crc32fast::hash(chunk),
                stored_size: 0,
            })
            .collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts_crc(&parts), crc32fast::hash(&bytes));
        assert_eq!(parts_crc(&[]), crc32fast::hash(b""));
    }

    #[test]
    fn paths_modes_and_locations_that_escape_are_named() {
        let mut m = Manifest::for_test("b", Tier::Daily, 1, 2..=2, chrono::DateTime::UNIX_EPOCH);
        assert!(m.layout_problems().is_empty());
        let file = |path: &str, mode: u32| entry(path, 0, mode);
        m.files = vec![
            file("base/1/1259", 0o600),
            file("/etc/cron.d/x", 0o600),
            file("base/../../x", 0o600),
            file("global/x", 0o4755),
        ];
        m.directories = vec![DirEntry {
            path: "pg_tblspc//x".into(),
            mode: 0o700,
        }];
        m.tablespaces = vec![
            Tablespace {
                oid: 16384,
                location: "/srv/ts/../etc".into(),
            },
            Tablespace {
                oid: 16385,
                location: "relative".into(),
            },
            Tablespace {
                oid: 16386,
                location: "/srv/ts1".into(),
            },
        ];
        let problems = m.layout_problems();
        for needle in [
            "/etc/cron.d/x",
            "base/../../x",
            "4755",
            "pg_tblspc//x",
            "16384",
            "16385",
        ] {
            assert!(problems.iter().any(|p| p.contains(needle)), "{needle}: {problems:?}");
        }
        assert_eq!(problems.len(), 6, "{problems:?}");
    }

    #[test]
    fn a_stored_manifest_round_trips_and_a_flipped_bit_is_found() {
        let mut m = Manifest::for_test("b", Tier::Daily, 1, 2..=2, chrono::DateTime::UNIX_EPOCH);
        for version in [OBJECT_FILES_VERSION, MANIFEST_VERSION] {
            m.format_version = version;
            let bytes = m.to_bytes();
            assert_eq!(Manifest::from_bytes(&bytes, "m").unwrap(), m);
            let mut damaged = bytes.clone();
            damaged[bytes.len() / 2] ^= 0x10;
            assert!(Manifest::from_bytes(&damaged, "m").is_err(), "format {version}");
        }
    }

    #[test]
    fn a_deduplicated_backups_manifest_is_stored_compressed_and_older_ones_as_json() {
        let mut m = Manifest::for_test("b", Tier::Hourly, 1, 2..=2, chrono::DateTime::UNIX_EPOCH);
        m.files = (0..200).map(|i| entry(&format!("base/5/{i}"), 8192, 0o600)).collect();
        let record = json::to_vec(&m);
        let stored = m.to_bytes();
        assert!(codec::is_object(&stored) && stored.len() * 4 < record.len());
        assert_eq!(
            codec::decode(&stored, "m").unwrap(),
            record,
            "the same checksummed JSON inside"
        );
        // A format-7 manifest written as plain JSON (before they were compressed) reads too.
        assert_eq!(Manifest::from_bytes(&record, "m").unwrap(), m);
        m.format_version = OBJECT_FILES_VERSION;
        assert_eq!(m.to_bytes(), json::to_vec(&m), "what a pitr of format 6 reads");
    }

    /// A stored manifest's JSON text.
    fn text_of(stored: &[u8]) -> String {
        let record = if codec::is_object(stored) {
            codec::decode(stored, "m").unwrap()
        } else {
            stored.to_vec()
        };
        String::from_utf8(record).unwrap()
    }

    /// A file of `size` bytes stored whole, as the tests of this module need one.
    fn entry(path: &str, size: u64, mode: u32) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            mode,
            mtime: 0,
            crc32: 0,
            stored_size: size,
            parts: vec![],
            groups: vec![],
            stat: None,
        }
    }

    fn config_file(path: &str) -> FileEntry {
        entry(path, 1, 0o640)
    }

    fn debian_configuration() -> Configuration {
        Configuration {
            data_directory: "/var/lib/postgresql/15/main".into(),
            config_file: "/etc/postgresql/15/main/postgresql.conf".into(),
            hba_file: "/etc/postgresql/15/main/pg_hba.conf".into(),
            ident_file: "/etc/postgresql/15/main/pg_ident.conf".into(),
            files: ["postgresql.conf", "conf.d/archive.conf", "pg_hba.conf", "pg_ident.conf"]
                .map(|name| config_file(&format!("/etc/postgresql/15/main/{name}")))
                .to_vec(),
        }
    }

    #[test]
    fn older_manifests_read_the_same_without_a_configuration() {
        let mut m = Manifest::for_test("b", Tier::Daily, 1, 2..=2, chrono::DateTime::UNIX_EPOCH);
        m.format_version = 3;
        let bytes = m.to_bytes();
        assert!(!text_of(&bytes).contains("configuration"));
        assert_eq!(Manifest::from_bytes(&bytes, "m").unwrap(), m);
        m.format_version = MANIFEST_VERSION;
        m.configuration = Some(debian_configuration());
        assert_eq!(Manifest::from_bytes(&m.to_bytes(), "m").unwrap(), m);
    }

    #[test]
    fn bad_pages_are_recorded_and_older_manifests_read_without_them() {
        let mut m = Manifest::for_test("b", Tier::Daily, 1, 2..=2, chrono::DateTime::UNIX_EPOCH);
        m.page_checksums = Some(PageChecksums {
            checked: true,
            pages_checked: 10,
            pages_skipped: 1,
            bad_files: vec![BadPages {
                path: "base/5/16384".into(),
                count: 2,
                blocks: vec![3, 131_075],
            }],
        });
        let bytes = m.to_bytes();
        assert!(text_of(&bytes).contains("\"bad_files\""));
        assert_eq!(Manifest::from_bytes(&bytes, "m").unwrap(), m);
        assert_eq!(m.page_checksums.as_ref().unwrap().bad_pages(), 2);
        assert_eq!(
            m.page_checksums.as_ref().unwrap().bad_files[0].describe(),
            "blocks 3, 131075 (2 bad pages)"
        );

        m.format_version = 5;
        m.page_checksums = None;
        let older = m.to_bytes();
        assert!(!text_of(&older).contains("page_checksums"));
        assert_eq!(Manifest::from_bytes(&older, "m").unwrap(), m);

        // What pitr of format 5 checked: a version above its own is refused, naming it.
        m.format_version = MANIFEST_VERSION + 1;
        let newer = Manifest::from_bytes(&m.to_bytes(), "m").unwrap_err().to_string();
        assert!(newer.contains("use a matching pitr"), "{newer}");
    }

    #[test]
    fn the_skip_rules_fields_are_optional_in_format_7() {
        let mut m = Manifest::for_test("b", Tier::Hourly, 1, 2..=2, chrono::DateTime::UNIX_EPOCH);
        m.files = vec![entry("base/5/16384", 8192, 0o600)];
        let without = m.to_bytes();
        let text = text_of(&without);
        assert!(!text.contains("\"stat\"") && !text.contains("\"pgdata\""), "{text}");
        assert_eq!(Manifest::from_bytes(&without, "m").unwrap(), m);
        m.pgdata = Some("/var/lib/postgresql/15/main".into());
        m.files[0].stat = Some(FileStat {
            size: 8192,
            mtime_ns: 1_796_644_339_063_533_410,
            ctime_ns: 1_796_644_339_063_533_411,
            inode: 42,
            device: 65024,
            trusted: true,
        });
        assert_eq!(Manifest::from_bytes(&m.to_bytes(), "m").unwrap(), m);
        let stat = m.files[0].stat.unwrap();
        assert!(stat.same_as(&FileStat { trusted: false, ..stat }));
        assert!(!stat.same_as(&FileStat {
            ctime_ns: stat.ctime_ns + 1,
            ..stat
        }));
    }

    #[test]
    fn configuration_files_are_stored_under_config_and_checked_like_the_others() {
        let mut m = Manifest::for_test("b", Tier::Daily, 1, 2..=2, chrono::DateTime::UNIX_EPOCH);
        m.configuration = Some(debian_configuration());
        assert!(m.layout_problems().is_empty(), "{:?}", m.layout_problems());
        let keys: Vec<String> = m.pieces().iter().map(|p| p.key("daily/b/")).collect();
        assert_eq!(keys[0], "daily/b/config/etc/postgresql/15/main/postgresql.conf");
        assert_eq!(keys.len(), 4);

        let configuration = m.configuration.as_mut().unwrap();
        configuration.files[1].path = "/etc/postgresql/15/main/../../../shadow".into();
        configuration.files[2].path = "etc/relative".into();
        configuration.files[3].mode = 0o4755;
        configuration.files[0].parts = vec![Part {
            offset: 0,
            size: 1,
            crc32: 0,
            stored_size: 1,
        }];
        let problems = m.layout_problems();
        for needle in [
            "../../../shadow",
            "etc/relative",
            "4755",
            "stored in parts",
            "hba_file /etc/postgresql/15/main/pg_hba.conf is not among its files",
        ] {
            assert!(problems.iter().any(|p| p.contains(needle)), "{needle}: {problems:?}");
        }
    }

    #[test]
    fn parts_have_their_own_keys() {
        let file = entry("base/5/16384", 3, 0o600);
        let keys: Vec<String> = file.pieces().iter().map(|p| p.key("hourly/x/")).collect();
        assert_eq!(keys, ["hourly/x/files/base/5/16384"]);
        let part = Part {
            offset: PART_SIZE,
            size: 1,
            crc32: 0,
            stored_size: 1,
        };
        let split = FileEntry {
            parts: vec![part, part],
            ..file
        };
        let keys: Vec<String> = split.pieces().iter().map(|p| p.key("hourly/x/")).collect();
        assert_eq!(
            keys,
            [
                "hourly/x/files/base/5/16384.part0000",
                "hourly/x/files/base/5/16384.part0001"
            ]
        );
    }
}
