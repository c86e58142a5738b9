//! What a base backup copies: a walk of the data directory and its tablespaces that applies
//! PostgreSQL's exclusions (postgres-facts §5.3) and keeps `global/pg_control` for last.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::manifest::{DirEntry, Tablespace};
use crate::control::PG_CONTROL;
use crate::error::{Error, Result};

/// Top-level files never copied: PostgreSQL's own exclusions, and the server log of the
/// private run of `pitr recover` (a copy adopted as the primary would carry it into every backup).
const EXCLUDED_TOP_FILES: [&str; 8] = [
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    crate::recover::RECOVERY_LOG,
];

/// Top-level directories kept empty: their contents are runtime state or WAL.
const EMPTIED_TOP_DIRS: [&str; 8] = [
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// A file to copy.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the data directory, `/`-separated.
    pub path: String,
    /// Where to read it.
    pub full_path: PathBuf,
    /// Size when walked.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, Unix seconds.
    pub mtime: i64,
}

/// Everything a backup copies.
#[derive(Debug, Default)]
pub struct SourceTree {
    /// Directories, parents first.
    pub directories: Vec<DirEntry>,
    /// Files, without pg_control.
    pub files: Vec<SourceFile>,
    /// `global/pg_control`, copied last.
    pub control: Option<SourceFile>,
    /// Tablespaces found in `pg_tblspc`.
    pub tablespaces: Vec<Tablespace>,
}

impl SourceTree {
    /// Total bytes to copy.
    pub fn bytes(&self) -> u64 {
        self.files.iter().chain(&self.control).map(|f| f.size).sum()
    }
}

/// Walks `pgdata`.
pub fn scan(pgdata: &Path) -> Result<SourceTree> {
    let mut tree = SourceTree::default();
    walk(pgdata, "", &mut tree)?;
    if tree.control.is_none() {
        return Err(Error::Refused(format!(
            "{} has no {PG_CONTROL}: not a data directory",
            pgdata.display()
        )));
    }
    Ok(tree)
}

fn walk(dir: &Path, rel: &str, tree: &mut SourceTree) -> Result<()> {
    let mut entries = match fs::read_dir(dir) {
        Ok(entries) => entries
            .collect::<io::Result<Vec<_>>>()
            .map_err(Error::io("list", dir))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()), // dropped while we walk
        Err(e) => return Err(Error::io("list", dir)(e)),
    };
    entries.sort_by_key(|e| e.file_name());
    let names: Vec<String> = entries
        .iter()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let unlogged = unlogged_relations(&names);
    for (entry, name) in entries.iter().zip(&names) {
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if excluded(rel, name, &unlogged) {
            continue;
        }
        let full_path = entry.path();
        let link = entry
            .file_type()
            .map_err(Error::io("inspect", &full_path))?
            .is_symlink();
        if link && rel == "pg_tblspc" {
            let target = fs::read_link(&full_path).map_err(Error::io("read link", &full_path))?;
            let oid = name
                .parse()
                .map_err(|_| Error::Refused(format!("unexpected entry pg_tblspc/{name}")))?;
            tree.tablespaces.push(Tablespace {
                oid,
                location: target.display().to_string(),
            });
        }
        let meta = match fs::metadata(&full_path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("inspect", &full_path)(e)),
        };
        let mode = meta.permissions().mode() & super::manifest::PERMISSION_BITS;
        if meta.is_dir() {
            tree.directories.push(DirEntry {
                path: path.clone(),
                mode,
            });
            if !(rel.is_empty() && EMPTIED_TOP_DIRS.contains(&name.as_str())) {
                walk(&full_path, &path, tree)?;
            }
        } else if meta.is_file() {
            let file = SourceFile {
                path: path.clone(),
                full_path,
                size: meta.len(),
                mode,
                mtime: meta.mtime(),
            };
            if path == PG_CONTROL {
                tree.control = Some(file);
            } else {
                tree.files.push(file);
            }
        }
    }
    Ok(())
}

/// Whether the entry `name` in the directory `rel` is left out of a backup.
fn excluded(rel: &str, name: &str, unlogged: &HashSet<&str>) -> bool {
    if name.starts_with("pgsql_tmp") || name.starts_with("pg_internal.init") || name == ".DS_Store" {
        return true;
    }
    if rel.is_empty() && EXCLUDED_TOP_FILES.contains(&name) {
        return true;
    }
    if !is_database_dir(rel) {
        return false;
    }
    let relation = relation_of(name);
    is_temporary_relation(name) || (unlogged.contains(relation) && !name.contains("_init"))
}

/// `base/<db>` or `pg_tblspc/<oid>/<version dir>/<db>`: the directories holding relation files.
fn is_database_dir(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    matches!(parts.as_slice(), ["base", _] | ["pg_tblspc", _, _, _])
}

/// The relfilenode a file name belongs to: `16384`, `16384_fsm`, `16384.1` → `16384`.
fn relation_of(name: &str) -> &str {
    name.split(['_', '.']).next().unwrap_or(name)
}

/// Temporary relations are `t<backend>_<relfilenode>`.
fn is_temporary_relation(name: &str) -> bool {
    name.strip_prefix('t')
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(backend, _)| !backend.is_empty() && backend.bytes().all(|b| b.is_ascii_digit()))
}

/// Relations with an init fork are unlogged: only their init fork is copied.
fn unlogged_relations(names: &[String]) -> HashSet<&str> {
    names
        .iter()
        .filter_map(|n| n.strip_suffix("_init"))
        .filter(|r| r.bytes().all(|b| b.is_ascii_digit()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_follow_postgres() {
        let none = HashSet::new();
        for (rel, name) in [
            ("", "postmaster.pid"),
            ("", "backup_label"),
            ("", "pitr_recover.log"),
            ("base/1", "pg_internal.init"),
            ("global", "pg_internal.init.123"),
            ("base", "pgsql_tmp"),
            ("base/5", "pgsql_tmp1234.0"),
            ("base/5", "t3_16384"),
            ("base/5", "t12_16384_fsm"),
        ] {
            assert!(excluded(rel, name, &none), "{rel}/{name} must be excluded");
        }
        for (rel, name) in [
            ("", "postgresql.conf"),
            ("", "PG_VERSION"),
            ("base/5", "16384"),
            ("base/5", "16384.1"),
            ("pg_xact", "0000"),
            ("global", "pg_control"),
            ("pg_tblspc/16400/PG_15_202209061/5", "16385_vm"),
        ] {
            assert!(!excluded(rel, name, &none), "{rel}/{name} must be copied");
        }
    }

    #[test]
    fn only_the_init_fork_of_an_unlogged_relation_is_copied() {
        let names: Vec<String> = ["16384", "16384_fsm", "16384_init", "16384.1", "16390", "16390_vm"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let unlogged = unlogged_relations(&names);
        let kept: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| !excluded("base/5", n, &unlogged))
            .collect();
        assert_eq!(kept, ["16384_init", "16390", "16390_vm"]);
    }

    #[test]
    fn scan_copies_pg_control_last_and_empties_runtime_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "global",
            "base/5",
            "pg_wal/archive_status",
            "pg_replslot/slot",
            "pg_stat_tmp",
            "pg_xact",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "global/pg_control",
            "global/1262",
            "base/5/16384",
            "pg_wal/000000010000000000000001",
            "pg_replslot/slot/state",
            "pg_stat_tmp/x",
            "postmaster.pid",
            "pg_xact/0000",
        ] {
            fs::write(root.join(f), f).unwrap();
        }
        let tree = scan(root).unwrap();
        let files: Vec<&str> = tree.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(files, ["PG_VERSION", "base/5/16384", "global/1262", "pg_xact/0000"]);
        assert_eq!(tree.control.as_ref().unwrap().path, "global/pg_control");
        let dirs: Vec<&str> = tree.directories.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            dirs,
            [
                "base",
                "base/5",
                "global",
                "pg_replslot",
                "pg_stat_tmp",
                "pg_wal",
                "pg_xact"
            ]
        );
    }
}
