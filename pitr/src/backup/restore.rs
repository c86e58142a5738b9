//! Restoring a backup's files into a new data directory (files only; recovery settings and
//! driving the server belong to `recover`): checksums verified in parallel, labels written,
//! an empty `pg_wal/`, and `global/pg_control` last so a half-restored directory cannot start.

use std::cell::RefCell;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::manifest::{FileEntry, Manifest, Piece};
use super::{load_catalog, Tier};
use crate::codec::{self, ObjectHeader};
use crate::control::PG_CONTROL;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::{backup_dir, Repo};

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backup id; the newest backup when `None`.
    pub backup: Option<String>,
    /// The new data directory: absent or empty, unless `force`.
    pub target: PathBuf,
    /// Wipe a non-empty target first.
    pub force: bool,
    /// Files written at once.
    pub jobs: usize,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreSummary {
    /// The restored backup.
    pub id: String,
    /// Its tier.
    pub tier: Tier,
    /// Where it went.
    pub target: PathBuf,
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Seconds taken.
    pub duration_seconds: f64,
}

/// Restores a backup's files into `options.target`.
pub fn restore(repo: &Repo, options: &RestoreOptions, progress: &dyn Progress) -> Result<RestoreSummary> {
    let started = Instant::now();
    let manifest = choose(repo, options.backup.as_deref())?;
    refuse_overlap(repo, &options.target)?;
    prepare_target(&options.target, options.force)?;
    for tablespace in &manifest.tablespaces {
        prepare_target(Path::new(&tablespace.location), false)?;
    }
    let layout = Layout {
        target: &options.target,
        manifest: &manifest,
    };
    for dir in &manifest.directories {
        create_dir(&layout.destination(&dir.path), dir.mode)?;
    }
    layout.link_tablespaces()?;

    let dir = backup_dir(manifest.tier.name(), &manifest.id);
    let (control, files): (Vec<&FileEntry>, Vec<&FileEntry>) =
        manifest.files.iter().partition(|f| f.path == PG_CONTROL);
    progress.begin(manifest.files.len() as u64, manifest.original_bytes);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.jobs.max(1))
        .build()
        .map_err(|e| Error::Refused(format!("cannot start {} restore threads: {e}", options.jobs)))?;
    for split in files.iter().filter(|f| !f.parts.is_empty()) {
        create_new(&layout.destination(&split.path), split.mode)?;
    }
    let pieces: Vec<Piece> = files.iter().flat_map(|f| f.pieces()).collect();
    pool.install(|| {
        pieces.par_iter().try_for_each(|piece| {
            crate::interrupt::check("restoring the backup's files")?;
            restore_piece(repo, &dir, piece, &layout, progress)
        })
    })?;
    write_labels(repo, &dir, &options.target)?;
    create_wal_dirs(&options.target, manifest.pg_version)?;
    sync_all(&options.target)?;
    for piece in control.iter().flat_map(|f| f.pieces()) {
        restore_piece(repo, &dir, &piece, &layout, progress)?;
    }
    sync_all(&options.target)?;
    progress.finish();
    Ok(RestoreSummary {
        id: manifest.id.clone(),
        tier: manifest.tier,
        target: options.target.clone(),
        files: manifest.files.len(),
        bytes: manifest.original_bytes,
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The named backup, or the newest.
fn choose(repo: &Repo, id: Option<&str>) -> Result<Manifest> {
    let catalog = load_catalog(repo)?;
    match id {
        Some(id) => catalog.into_iter().find(|m| m.id == id).ok_or_else(|| {
            Error::Refused(format!(
                "no backup '{id}' in repository {}; `pitr list` shows the backups",
                repo.location()
            ))
        }),
        None => catalog.into_iter().last().ok_or_else(|| {
            Error::Refused(format!(
                "repository {} holds no backup yet; take one with `pitr backup`",
                repo.location()
            ))
        }),
    }
}

/// Where the files of a backup go: the data directory, and tablespaces at their locations.
struct Layout<'a> {
    target: &'a Path,
    manifest: &'a Manifest,
}

impl Layout<'_> {
    fn destination(&self, path: &str) -> PathBuf {
        let tablespace = path.strip_prefix("pg_tblspc/").and_then(|rest| {
            let (oid, inner) = rest.split_once('/').unwrap_or((rest, ""));
            let location = self.manifest.tablespaces.iter().find(|t| t.oid.to_string() == oid)?;
            Some(Path::new(&location.location).join(inner))
        });
        tablespace.unwrap_or_else(|| self.target.join(path))
    }

    /// `pg_tblspc/<oid>` → the location (PostgreSQL also recreates these from tablespace_map).
    fn link_tablespaces(&self) -> Result<()> {
        for t in &self.manifest.tablespaces {
            let link = self.target.join("pg_tblspc").join(t.oid.to_string());
            std::os::unix::fs::symlink(&t.location, &link).map_err(Error::io("create symlink", &link))?;
        }
        Ok(())
    }
}

/// The target must not hold the repository, nor lie inside it: wiping or filling it would
/// destroy backups and WAL.
fn refuse_overlap(repo: &Repo, target: &Path) -> Result<()> {
    let resolve = |p: &Path| {
        let existing = p.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
        let rest = p.strip_prefix(existing).unwrap_or(Path::new(""));
        fs::canonicalize(existing)
            .map(|c| c.join(rest))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let (repo_path, target) = (resolve(Path::new(&repo.location())), resolve(target));
    if repo_path.starts_with(&target) || target.starts_with(&repo_path) {
        return Err(Error::Refused(format!(
            "{} overlaps the repository {}: restore somewhere outside it",
            target.display(),
            repo_path.display()
        )));
    }
    Ok(())
}

/// An absent or empty directory; a non-empty one only with `force`, and never one a server runs in.
fn prepare_target(target: &Path, force: bool) -> Result<()> {
    let entries: Vec<_> = match fs::read_dir(target) {
        Ok(entries) => entries.collect::<io::Result<_>>().map_err(Error::io("list", target))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(target)
                .map_err(Error::io("create", target))?;
            return Ok(());
        }
        Err(e) => return Err(Error::io("open", target)(e)),
    };
    if entries.is_empty() {
        return set_mode(target, 0o700);
    }
    if !force {
        return Err(Error::Refused(format!(
            "{} is not empty: restore into an empty or new directory, or pass --force to wipe it",
            target.display()
        )));
    }
    if target.join("postmaster.pid").exists() {
        return Err(Error::Refused(format!(
            "{} has a postmaster.pid: a server may be running there; stop it before wiping the directory",
            target.display()
        )));
    }
    for entry in entries {
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(Error::io("remove", &path))?;
    }
    set_mode(target, 0o700)
}

fn create_dir(path: &Path, mode: u32) -> Result<()> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("create directory", path)(e)),
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(Error::io("set permissions of", path))
}

/// Restored files are written one PostgreSQL page (8 KiB) per `pwrite`. The page cache sizes
/// its folios by the writes that fill it (Linux 6.x, ext4 and xfs): 16 MiB writes left the whole
/// data directory cached in 2 MiB folios, and every 8 KiB page PostgreSQL later dirtied wrote
/// back its whole folio. Replay after such a restore took twice as long, and the restore itself
/// three times (bench/findings.md).
const PAGE_WRITE: usize = 8192;

/// Writes one piece of a file: a file stored whole is created, a part is written at its offset
/// into the file created beforehand.
fn restore_piece(repo: &Repo, dir: &str, piece: &Piece, layout: &Layout, progress: &dyn Progress) -> Result<()> {
    with_verified(repo, dir, piece, |raw| {
        let path = layout.destination(&piece.file.path);
        let file = match piece.part {
            None => create_new(&path, piece.file.mode)?,
            Some(_) => fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(Error::io("open", &path))?,
        };
        for (index, page) in raw.chunks(PAGE_WRITE).enumerate() {
            let at = piece.offset + (index * PAGE_WRITE) as u64;
            file.write_all_at(page, at).map_err(Error::io("write", &path))?;
        }
        progress.advance(raw.len() as u64);
        Ok(())
    })
}

thread_local! {
    /// Each thread's decode buffer, kept between pieces (see [`codec::decode_into`]).
    static DECODED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads one stored piece of a backup file in `dir`, verified against the manifest (the object's
/// header must record the manifest's size and CRC-32, and decoding checks the content against the
/// header, so the content is hashed once), and hands its bytes to `use_bytes`.
pub(crate) fn with_verified<T>(
    repo: &Repo,
    dir: &str,
    piece: &Piece,
    use_bytes: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    let key = piece.key(dir);
    let what = format!("backup file {} ({})", piece.file.path, repo.storage().describe(&key));
    let object = repo.storage().get(&key)?.ok_or_else(|| Error::Corrupt {
        what: what.clone(),
        reason: "the object is missing from the repository".into(),
    })?;
    let header = ObjectHeader::parse(&object, &what)?;
    if header.raw_len != piece.size || header.raw_crc != piece.crc32 {
        return Err(Error::Corrupt {
            what,
            reason: format!(
                "the object holds {} bytes with CRC-32 {:08x}, the manifest says {} bytes with {:08x}",
                header.raw_len, header.raw_crc, piece.size, piece.crc32
            ),
        });
    }
    DECODED.with_borrow_mut(|raw| {
        codec::decode_into(&object, &what, raw)?;
        use_bytes(raw)
    })
}

fn create_new(path: &Path, mode: u32) -> Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(Error::io("create", path))
}

/// backup_label byte for byte, and tablespace_map when the backup has one.
fn write_labels(repo: &Repo, dir: &str, target: &Path) -> Result<()> {
    for name in ["backup_label", "tablespace_map"] {
        let key = format!("{dir}{name}");
        if let Some(object) = repo.storage().get(&key)? {
            let raw = codec::decode(&object, &repo.storage().describe(&key))?;
            let path = target.join(name);
            create_new(&path, 0o600)?
                .write_all(&raw)
                .map_err(Error::io("write", &path))?;
        }
    }
    Ok(())
}

/// An empty pg_wal/ with archive_status/ (and summaries/ from PostgreSQL 17 on).
fn create_wal_dirs(target: &Path, pg_version: u32) -> Result<()> {
    let wal = target.join("pg_wal");
    create_dir(&wal, 0o700)?;
    create_dir(&wal.join("archive_status"), 0o700)?;
    if pg_version >= 17 {
        create_dir(&wal.join("summaries"), 0o700)?;
    }
    Ok(())
}

/// Flushes everything written to the target's file system.
fn sync_all(target: &Path) -> Result<()> {
    let dir = fs::File::open(target).map_err(Error::io("open", target))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::io("sync the file system of", target)(e.into()))
}
