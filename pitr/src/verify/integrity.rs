//! `pitr check-integrity <path>`: one thing checked on its own, sound or not, with the reason.
//! The thing is an archived WAL file (a file under a repository's `wal/`), one backup (its
//! directory, or its id in the configured repository), or a logical dump in the runbook's
//! format (`*.backup.gz`). Problems are alerts, as verify raises them.

use std::path::Path;

use serde::Serialize;

use super::dump::check_dump;
use super::objects::check_wal_object;
use super::{check_backups_and_wal, Alert, AlertName};
use crate::error::{Error, Result};
use crate::info::Holdings;
use crate::progress::Progress;
use crate::repo::{generation_of_path, Repo, MANIFEST, MANIFEST_COPY};
use crate::wal::WalFileName;

/// What was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IntegrityKind {
    /// One archived WAL file.
    WalFile,
    /// One backup.
    Backup,
    /// A gzip'ed `pg_dump -Fc` dump.
    Dump,
}

/// The verdict on one thing.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrityReport {
    /// The path or backup id as given.
    pub target: String,
    /// What it is.
    pub kind: IntegrityKind,
    /// Whether it is sound.
    pub sound: bool,
    /// What was read and checked.
    pub checked: String,
    /// What is wrong (empty when sound).
    pub problems: Vec<Alert>,
}

/// Checks `target`: a path, or else a backup id in the repository `configured_repo` opens
/// (only asked then, so a dump needs no repository).
pub fn check_integrity(
    target: &str,
    configured_repo: &dyn Fn() -> Result<Repo>,
    jobs: usize,
    progress: &dyn Progress,
) -> Result<IntegrityReport> {
    let path = Path::new(target);
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let report = |kind, checked: String, problems: Vec<Alert>| IntegrityReport {
        target: target.to_string(),
        kind,
        sound: problems.is_empty(),
        checked,
        problems,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() && [MANIFEST, MANIFEST_COPY].iter().any(|m| path.join(m).is_file()) => {
            let (repo, id) = backup_location(path)?;
            let (checked, problems) = check_backup(&repo, &id, jobs, progress)?;
            Ok(report(IntegrityKind::Backup, checked, problems))
        }
        Ok(meta) if meta.is_file() && file_name.ends_with(".gz") => {
            let (checked, problems) = match check_dump(path)? {
                Ok(dump) => (
                    format!(
                        "gzip stream of {} bytes and a table of contents of {} entries",
                        dump.bytes, dump.entries
                    ),
                    Vec::new(),
                ),
                Err(reason) => (
                    "gzip test and pg_restore --list".to_string(),
                    vec![failed(
                        target,
                        format!("{reason}; do not restore from this dump, use another one"),
                    )],
                ),
            };
            Ok(report(IntegrityKind::Dump, checked, problems))
        }
        Ok(meta) if meta.is_file() && WalFileName::parse(file_name).is_ok() => {
            let (checked, problems) = check_wal_file(path, file_name)?;
            Ok(report(IntegrityKind::WalFile, checked, problems))
        }
        Ok(_) => Err(Error::InvalidInput(format!(
            "{target} is neither an archived WAL file, a backup directory (with backup.manifest) nor a gzip'ed \
             dump (*.gz)"
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !target.contains('/') => {
            let (checked, problems) = check_backup(&configured_repo()?, target, jobs, progress)?;
            Ok(report(IntegrityKind::Backup, checked, problems))
        }
        Err(e) => Err(Error::io("read", path)(e)),
    }
}

fn failed(subject: &str, reason: String) -> Alert {
    Alert::new(AlertName::BackupVerificationFailed, subject, reason)
}

/// A backup directory `<repo>/<tier>/<id>`: its repository and id.
fn backup_location(dir: &Path) -> Result<(Repo, String)> {
    let dir = std::fs::canonicalize(dir).map_err(Error::io("resolve", dir))?;
    let id = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let root = dir.parent().and_then(Path::parent).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{} is not inside a repository (<repo>/<tier>/<id>)",
            dir.display()
        ))
    })?;
    Ok((Repo::open_local(root)?, id))
}

/// One backup: its manifest, files, labels, and the WAL it needs to reach consistency (in its
/// generation's WAL).
fn check_backup(repo: &Repo, id: &str, jobs: usize, progress: &dyn Progress) -> Result<(String, Vec<Alert>)> {
    let generations = repo.generations()?;
    let generation = crate::backup::load_summaries(repo)?
        .iter()
        .find(|m| m.id == id)
        .and_then(|m| generations.as_ref()?.of_cluster(m.system_identifier))
        .map(|g| g.generation);
    let repo = &match generation {
        Some(n) => repo.at(n)?,
        None => repo.pin()?,
    };
    let holdings = Holdings::read(repo)?;
    let no_backup = || {
        Error::Refused(format!(
            "no file {id} and no backup '{id}' in repository {}; `pitr list` shows the backups",
            repo.location()
        ))
    };
    let listed = holdings.catalog.iter().find(|e| e.id == id).ok_or_else(no_backup)?;
    let entry = &crate::backup::read_backup(repo, listed.tier, id)?.ok_or_else(no_backup)?;
    let checked = check_backups_and_wal(repo, &holdings, &[entry], false, jobs, progress)?;
    let files = entry.manifest.as_ref().map_or(0, |m| m.files.len());
    Ok((
        format!(
            "{files} files and {} WAL files, {} bytes read in {:.1} s",
            checked.wal_files, checked.read.stored_bytes, checked.read.seconds
        ),
        checked.alerts,
    ))
}

/// One archived WAL file, checked against the cluster of the repository generation whose WAL
/// directory it lies in, if any.
fn check_wal_file(path: &Path, file_name: &str) -> Result<(String, Vec<Alert>)> {
    let name = WalFileName::parse(file_name)?;
    let stored = std::fs::read(path).map_err(Error::io("read", path))?;
    let path = std::fs::canonicalize(path).map_err(Error::io("resolve", path))?;
    let cluster = match path.ancestors().skip(1).find(|dir| dir.join("repo.json").is_file()) {
        Some(root) => {
            let inside = path.strip_prefix(root).unwrap_or(&path);
            let generation = generation_of_path(inside).unwrap_or(1);
            Repo::open_local(root)?.at(generation)?.info()?
        }
        None => None,
    };
    let what = path.display().to_string();
    Ok(match check_wal_object(&stored, &name, &what, cluster.as_ref()) {
        Ok(bytes) => (format!("{bytes} bytes, checksum and content valid"), Vec::new()),
        Err(e) => (
            format!("{} stored bytes", stored.len()),
            vec![failed(&what, e.to_string())],
        ),
    })
}
