//! Restoring a backup's files into a new data directory (files only; recovery settings and
//! driving the server belong to `recover`): checksums verified in parallel, labels written,
//! an empty `pg_wal/`, and `global/pg_control` last so a half-restored directory cannot start.
//!
//! The manifest comes from the repository, which its owner can write, and a restore may run as
//! root: every path, mode and tablespace location in it is checked before anything is written
//! ([`Manifest::layout_problems`]); the target and each tablespace location are opened once and
//! everything is created below those handles without following a symbolic link
//! ([`fsio::Dir`]); set-id bits are never restored; and when pitr runs as root for a repository
//! owned by another user, every file is created for that user and a tablespace is restored only
//! into an existing, empty directory of that user, so that a tampered manifest can make pitr
//! write nothing that user could not write themselves.
//!
//! A deduplicated file (format 7) is created at its size first, so that its all-zero pieces stay
//! holes, then filled a part's worth of groups at a time: the groups' records are read, then
//! each frame they need once, and each piece is checked against its hash before it is written
//! (see [`super::packs`]).

use std::cell::RefCell;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::manifest::{FileEntry, Manifest, Piece, PART_SIZE, PERMISSION_BITS};
use super::packs::{self, Frame, GroupRef, PieceRef, GROUP_SIZE, PIECE_SIZE};
use super::{read_backup, scan_summaries, Tier};
use crate::codec::{self, ObjectHeader, ObjectStream};
use crate::control::PG_CONTROL;
use crate::error::{Error, Result};
use crate::fsio::{Dir, Kind, Perms};
use crate::pg::PgVersion;
use crate::progress::Progress;
use crate::repo::{backup_dir, Repo};

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backup id; the newest backup when `None`.
    pub backup: Option<String>,
    /// The new data directory: absent or empty, unless `force`.
    pub target: PathBuf,
    /// Wipe a non-empty target first (a data directory no server runs in).
    pub force: bool,
    /// Files written at once (from an object store, small files are read up to 8 per job at once).
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
    /// The copy's own configuration, written from the backup's (the server's lay outside its
    /// data directory); `None` when the data directory held it.
    pub configuration: Option<super::OwnConfiguration>,
}

/// Restores a backup's files into `options.target`.
pub fn restore(repo: &Repo, options: &RestoreOptions, progress: &dyn Progress) -> Result<RestoreSummary> {
    let started = Instant::now();
    let manifest = choose(repo, options.backup.as_deref())?;
    check_layout(&manifest)?;
    let owner = files_owner(repo)?;
    refuse_overlap(repo, &options.target, &manifest)?;
    let perms = Perms::private(owner);
    let target = prepare_target(&options.target, options.force, &perms)?;
    let layout = Layout {
        tablespaces: open_tablespaces(&manifest, &perms)?,
        target,
        manifest: &manifest,
        perms,
    };
    for dir in &manifest.directories {
        layout.create_dir(&dir.path, dir.mode)?;
    }
    layout.link_tablespaces()?;

    let dir = backup_dir(manifest.tier.name(), &manifest.id);
    let (control, files): (Vec<&FileEntry>, Vec<&FileEntry>) =
        manifest.files.iter().partition(|f| f.path == PG_CONTROL);
    progress.begin(manifest.files.len() as u64, manifest.original_bytes);
    // Split files are created before their parts are written into them, empty files without
    // an object from their entry alone.
    for file in files
        .iter()
        .filter(|f| !f.parts.is_empty() || f.is_empty_without_object() || f.is_deduplicated())
    {
        let created = layout.create_file(&file.path, file.mode)?;
        if file.is_deduplicated() {
            created
                .set_len(file.size)
                .map_err(Error::io("size", layout.target.path_of(&file.path)))?;
        }
    }
    let group_tasks: Vec<GroupTask> = files.iter().flat_map(|f| group_tasks(f)).collect();
    let pieces: Vec<Piece> = files.iter().flat_map(|f| f.pieces()).collect();
    let jobs = options.jobs.max(1);
    let restore_all = |pieces: &[Piece], threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Refused(format!("cannot start {threads} restore threads: {e}")))?;
        pool.install(|| {
            pieces.par_iter().try_for_each(|piece| {
                crate::interrupt::check("restoring the backup's files")?;
                restore_piece(repo, &dir, piece, &layout, progress)
            })
        })
    };
    if repo.local_root().is_some() {
        // A read from local disk waits on no round trip: `jobs` threads, one piece each.
        restore_all(&pieces, jobs)?;
    } else {
        let (small, large): (Vec<Piece>, Vec<Piece>) = pieces.into_iter().partition(is_small);
        let (small_restored, large_restored) = std::thread::scope(|scope| {
            let small_restored = scope.spawn(|| restore_all(&small, jobs * SMALL_READS_IN_FLIGHT));
            let large_restored = restore_all(&large, jobs);
            let small_restored = small_restored
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (small_restored, large_restored)
        });
        large_restored.and(small_restored)?;
    }
    if !group_tasks.is_empty() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .build()
            .map_err(|e| Error::Refused(format!("cannot start {jobs} restore threads: {e}")))?;
        pool.install(|| {
            group_tasks.par_iter().try_for_each(|task| {
                crate::interrupt::check("restoring the backup's files")?;
                restore_groups(repo, task, &layout, progress)
            })
        })?;
    }
    write_labels(repo, &dir, &layout)?;
    create_wal_dirs(&layout, manifest.pg_version)?;
    let configuration = manifest
        .configuration
        .as_ref()
        .map(|c| super::configuration::write(repo, &dir, c, &layout.target, &layout.perms))
        .transpose()?;
    sync_all(&layout.target)?;
    crate::crash_point::reached("restore:control");
    for piece in control.iter().flat_map(|f| f.pieces()) {
        restore_piece(repo, &dir, &piece, &layout, progress)?;
    }
    sync_all(&layout.target)?;
    progress.finish();
    Ok(RestoreSummary {
        id: manifest.id.clone(),
        tier: manifest.tier,
        target: options.target.clone(),
        files: manifest.files.len(),
        bytes: manifest.original_bytes,
        duration_seconds: started.elapsed().as_secs_f64(),
        configuration,
    })
}

/// The named backup, or the newest readable one: chosen among the summaries, then its manifest
/// read whole (one manifest in memory, not the repository's thousand).
fn choose(repo: &Repo, id: Option<&str>) -> Result<Manifest> {
    let catalog = scan_summaries(repo)?;
    let chosen = match id {
        Some(id) => catalog.into_iter().find(|e| e.id == id).ok_or_else(|| {
            Error::Refused(format!(
                "no backup '{id}' in repository {}; `pitr list` shows the backups",
                repo.location()
            ))
        })?,
        None => catalog
            .into_iter()
            .filter(|e| e.manifest.is_ok())
            .max_by_key(|e| e.manifest.as_ref().map(|m| m.stop_time).ok())
            .ok_or_else(|| {
                Error::Refused(format!(
                    "repository {} holds no readable backup; take one with `pitr backup`",
                    repo.location()
                ))
            })?,
    };
    chosen.manifest?;
    match read_backup(repo, chosen.tier, &chosen.id)? {
        Some(entry) => entry.manifest,
        None => Err(Error::Refused(format!(
            "backup {} vanished from repository {} while it was chosen",
            chosen.id,
            repo.location()
        ))),
    }
}

/// Refuses a manifest whose paths, modes or tablespace locations could escape the restore.
fn check_layout(manifest: &Manifest) -> Result<()> {
    let problems = manifest.layout_problems();
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Corrupt {
        what: format!("the manifest of backup {}", manifest.id),
        reason: format!(
            "{} (nothing was restored; pitr never writes such a manifest: it was damaged or tampered with)",
            problems.join("; ")
        ),
    })
}

/// Who the restored files are for: when pitr runs as root and the repository belongs to another
/// user (the PostgreSQL OS user), that user; otherwise whoever runs pitr.
pub fn files_owner(repo: &Repo) -> Result<Option<(u32, u32)>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let location = repo.location();
    let meta = std::fs::metadata(&location).map_err(Error::io("inspect", &location))?;
    Ok((meta.uid() != 0).then(|| (meta.uid(), meta.gid())))
}

/// Where the files of a backup go: the data directory, and tablespaces at their locations, each
/// opened once.
struct Layout<'a> {
    target: Dir,
    tablespaces: Vec<(u32, Dir)>,
    manifest: &'a Manifest,
    perms: Perms,
}

impl Layout<'_> {
    /// The directory a manifest path lies below (the target, or a tablespace's location) and the
    /// path relative to it.
    fn base_of<'p>(&self, path: &'p str) -> (&Dir, &'p str) {
        let in_tablespace = path.strip_prefix("pg_tblspc/").and_then(|rest| {
            let (oid, inner) = rest.split_once('/').unwrap_or((rest, ""));
            let (_, location) = self.tablespaces.iter().find(|(o, _)| o.to_string() == oid)?;
            Some((location, inner))
        });
        in_tablespace.unwrap_or((&self.target, path))
    }

    /// The parent directory of a file's path, opened (created if the manifest did not list it),
    /// and the file's name.
    fn parent_of<'p>(&self, path: &'p str) -> Result<(Dir, &'p str)> {
        let (base, rel) = self.base_of(path);
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let opened = match base.open_dir(dir).map_err(Error::io("open", base.path_of(dir)))? {
            Some(opened) => opened,
            None => base
                .create_dirs(dir, &self.perms)
                .map_err(Error::io("create directory", base.path_of(dir)))?,
        };
        Ok((opened, name))
    }

    fn create_dir(&self, path: &str, mode: u32) -> Result<()> {
        let (base, rel) = self.base_of(path);
        if rel.is_empty() {
            return Ok(()); // a tablespace's location: it exists already
        }
        let perms = Perms {
            dir_mode: mode & PERMISSION_BITS,
            ..self.perms
        };
        base.create_dirs(rel, &perms)
            .map(drop)
            .map_err(Error::io("create directory", base.path_of(rel)))
    }

    fn create_file(&self, path: &str, mode: u32) -> Result<std::fs::File> {
        let (parent, name) = self.parent_of(path)?;
        parent
            .create_file_mode(name, &self.perms, mode & PERMISSION_BITS)
            .map_err(Error::io("create", parent.path_of(name)))
    }

    fn open_for_part(&self, path: &str) -> Result<std::fs::File> {
        let (parent, name) = self.parent_of(path)?;
        parent
            .open_file_for_writing(name)
            .map_err(Error::io("open", parent.path_of(name)))
    }

    /// `pg_tblspc/<oid>` → the location (PostgreSQL also recreates these from tablespace_map).
    fn link_tablespaces(&self) -> Result<()> {
        if self.manifest.tablespaces.is_empty() {
            return Ok(());
        }
        let links = self
            .target
            .create_dirs("pg_tblspc", &self.perms)
            .map_err(Error::io("create directory", self.target.path_of("pg_tblspc")))?;
        for t in &self.manifest.tablespaces {
            let name = t.oid.to_string();
            let link = links.path_of(&name);
            rustix::fs::symlinkat(t.location.as_str(), links.fd(), name.as_str())
                .map_err(|e| Error::io("create symlink", &link)(e.into()))?;
            if let Some((uid, gid)) = self.perms.owner {
                rustix::fs::chownat(
                    links.fd(),
                    name.as_str(),
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| Error::io("chown", &link)(e.into()))?;
            }
        }
        Ok(())
    }
}

/// The target must not hold the repository, nor lie inside it, and no tablespace location may
/// overlap either: wiping or filling them would destroy backups and WAL, or the restore itself.
fn refuse_overlap(repo: &Repo, target: &Path, manifest: &Manifest) -> Result<()> {
    let resolve = |p: &Path| {
        let existing = p.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
        let rest = p.strip_prefix(existing).unwrap_or(Path::new(""));
        std::fs::canonicalize(existing)
            .map(|c| c.join(rest))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let overlap = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
    let target = resolve(target);
    let Some(repo_path) = repo.local_root().map(resolve) else {
        // The repository is remote: only the tablespaces must stay out of the target.
        return refuse_tablespace_overlap(&target, None, manifest, resolve);
    };
    if overlap(&repo_path, &target) {
        return Err(Error::Refused(format!(
            "{} overlaps the repository {}: restore somewhere outside it",
            target.display(),
            repo_path.display()
        )));
    }
    refuse_tablespace_overlap(&target, Some(&repo_path), manifest, resolve)
}

/// No tablespace location may overlap the target or a local repository.
fn refuse_tablespace_overlap(
    target: &Path,
    repo_path: Option<&Path>,
    manifest: &Manifest,
    resolve: impl Fn(&Path) -> std::path::PathBuf,
) -> Result<()> {
    let overlap = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
    for t in &manifest.tablespaces {
        let location = resolve(Path::new(&t.location));
        if overlap(&location, target) || repo_path.is_some_and(|repo| overlap(&location, repo)) {
            let repository = repo_path.map_or(String::new(), |r| format!(" or the repository {}", r.display()));
            return Err(Error::Refused(format!(
                "tablespace {} would be restored to {}, which overlaps {}{repository}: nothing was restored",
                t.oid,
                location.display(),
                target.display(),
            )));
        }
    }
    Ok(())
}

/// Opens the target: an absent directory is created, an empty one taken, a non-empty one only
/// with `force`, and then only a data directory (it holds `PG_VERSION`) no server runs in,
/// anywhere below it. Its mode becomes 0700 and its owner the files' owner.
fn prepare_target(target: &Path, force: bool, perms: &Perms) -> Result<Dir> {
    let dir = match Dir::open(target) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(Error::io("create", target))?;
            Dir::open(target).map_err(Error::io("open", target))?
        }
        Err(e) => return Err(Error::io("open", target)(e)),
    };
    let entries = dir.entries().map_err(Error::io("list", target))?;
    if !entries.is_empty() {
        if !force {
            return Err(Error::Refused(format!(
                "{} is not empty: restore into an empty or new directory, or pass --force to wipe it",
                target.display()
            )));
        }
        if !entries.iter().any(|e| e.name == "PG_VERSION" && e.kind == Kind::File) {
            return Err(Error::Refused(format!(
                "{} is not empty and is no PostgreSQL data directory (no PG_VERSION): --force only wipes a data \
                 directory; empty it yourself if you mean it",
                target.display()
            )));
        }
        if let Some(running) = find_postmaster_pid(&dir, "")? {
            return Err(Error::Refused(format!(
                "{} holds {running}: a server may be running there; stop it before wiping the directory",
                target.display()
            )));
        }
        dir.remove_contents().map_err(Error::io("wipe", target))?;
    }
    perms
        .apply_dir(&dir)
        .map_err(Error::io("set owner and permissions of", target))?;
    Ok(dir)
}

/// The first `postmaster.pid` at or below `dir` (a cluster a server may run in), without
/// following links.
fn find_postmaster_pid(dir: &Dir, rel: &str) -> Result<Option<String>> {
    for entry in dir.entries().map_err(Error::io("list", dir.path()))? {
        let path = if rel.is_empty() {
            entry.name.clone()
        } else {
            format!("{rel}/{}", entry.name)
        };
        match entry.kind {
            Kind::File if entry.name == "postmaster.pid" => return Ok(Some(path)),
            Kind::Dir => {
                if let Some(sub) = dir
                    .open_dir(&entry.name)
                    .map_err(Error::io("open", dir.path_of(&entry.name)))?
                {
                    if let Some(found) = find_postmaster_pid(&sub, &path)? {
                        return Ok(Some(found));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Opens each tablespace location. Running as root for another user, a location must exist
/// already as an empty directory of that user (as `CREATE TABLESPACE` requires of its
/// directory); otherwise an absent one is created and an empty one taken.
fn open_tablespaces(manifest: &Manifest, perms: &Perms) -> Result<Vec<(u32, Dir)>> {
    let mut opened = Vec::new();
    for t in &manifest.tablespaces {
        let location = Path::new(&t.location);
        let dir = match (Dir::open(location), perms.owner) {
            (Ok(dir), _) => dir,
            (Err(e), None) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(location).map_err(Error::io("create", location))?;
                let dir = Dir::open(location).map_err(Error::io("open", location))?;
                perms
                    .apply_dir(&dir)
                    .map_err(Error::io("set permissions of", location))?;
                dir
            }
            (Err(e), Some(_)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Refused(format!(
                    "tablespace {} is restored to {}, which does not exist: create it as an empty directory owned \
                     by the PostgreSQL OS user (pitr, running as root, creates no directory a manifest names)",
                    t.oid,
                    location.display()
                )))
            }
            (Err(e), _) => return Err(Error::io("open", location)(e)),
        };
        if !dir.entries().map_err(Error::io("list", location))?.is_empty() {
            return Err(Error::Refused(format!(
                "tablespace {} is restored to {}, which is not empty: empty it or move it aside",
                t.oid,
                location.display()
            )));
        }
        if let Some((uid, _)) = perms.owner {
            let stat = rustix::fs::fstat(dir.fd()).map_err(|e| Error::io("inspect", location)(e.into()))?;
            if stat.st_uid != uid {
                return Err(Error::Refused(format!(
                    "tablespace {} is restored to {}, which belongs to uid {}, not to the PostgreSQL OS user (uid \
                     {uid}): chown it, or create another empty directory",
                    t.oid,
                    location.display(),
                    stat.st_uid
                )));
            }
        }
        opened.push((t.oid, dir));
    }
    Ok(opened)
}

/// Restored files are written one PostgreSQL page (8 KiB) per `pwrite`. The page cache sizes
/// its folios by the writes that fill it (Linux 6.x, ext4 and xfs): 16 MiB writes left the whole
/// data directory cached in 2 MiB folios, and every 8 KiB page PostgreSQL later dirtied wrote
/// back its whole folio. Replay after such a restore took twice as long, and the restore itself
/// three times (bench/findings.md).
const PAGE_WRITE: usize = 8192;

/// The largest piece (original or stored size) read among the small ones: most files of a data
/// directory are catalogs and indexes of a few pages, and restoring them is waiting on one
/// request after the other.
const SMALL_PIECE: u64 = 256 << 10;

/// Small pieces read at once per job from an object store: while one job's thread decodes and
/// writes a part, up to this many small pieces are on their way besides it (at most
/// `SMALL_READS_IN_FLIGHT` × [`SMALL_PIECE`] × 2, stored and decoded, 4 MiB per job, held for them).
/// On local disk a read does not wait on a round trip: there a job reads one piece at a time.
const SMALL_READS_IN_FLIGHT: usize = 8;

/// Whether `piece` is restored among the small ones.
fn is_small(piece: &Piece) -> bool {
    piece.size.max(piece.stored_size) <= SMALL_PIECE
}

/// Writes one piece of a file: a file stored whole is created, a part is written at its offset
/// into the file created beforehand.
///
/// A small piece is decoded whole into its thread's buffer, then written; a larger one (a part
/// of up to 16 MiB) is read, decoded and written 128 KiB at a time while it arrives, so that a job
/// holds neither the stored object nor the part's bytes. Either way the size and CRC-32 are checked against
/// the manifest before the restore goes on, and a restore that fails has written no
/// `global/pg_control`: no byte counts as restored before it is verified.
fn restore_piece(repo: &Repo, dir: &str, piece: &Piece, layout: &Layout, progress: &dyn Progress) -> Result<()> {
    let file = || match piece.part {
        None => layout.create_file(&piece.file.path, piece.file.mode),
        Some(_) => layout.open_for_part(&piece.file.path),
    };
    let mut at = piece.offset;
    let mut write = |file: &std::fs::File, bytes: &[u8]| -> Result<()> {
        for page in bytes.chunks(PAGE_WRITE) {
            file.write_all_at(page, at)
                .map_err(Error::io("write", layout.target.path_of(&piece.file.path)))?;
            at += page.len() as u64;
        }
        Ok(())
    };
    if is_small(piece) {
        with_verified(repo, dir, piece, |raw| write(&file()?, raw))?;
    } else {
        let (object, what) = open_checked(repo, dir, piece)?;
        let file = file()?;
        codec::decode_stream(object, &what, &mut |chunk| write(&file, chunk))?;
    }
    progress.advance(piece.size);
    crate::crash_point::reached("restore:piece");
    Ok(())
}

/// Groups of a deduplicated file restored together: a part's worth ([`PART_SIZE`]), from group
/// `first` on.
struct GroupTask<'a> {
    file: &'a FileEntry,
    first: usize,
    groups: &'a [GroupRef],
}

/// A deduplicated file's groups, a part's worth per task.
fn group_tasks(file: &FileEntry) -> Vec<GroupTask<'_>> {
    let per_task = PART_SIZE as usize / GROUP_SIZE;
    file.groups
        .chunks(per_task)
        .enumerate()
        .map(|(index, groups)| GroupTask {
            file,
            first: index * per_task,
            groups,
        })
        .collect()
}

/// Writes the pieces of one task's groups into their file (created at its size beforehand):
/// the group records are read, then each frame they need, once; each piece is checked against
/// its hash before it is written. All-zero pieces are left holes.
fn restore_groups(repo: &Repo, task: &GroupTask, layout: &Layout, progress: &dyn Progress) -> Result<()> {
    let records = packs::read_groups(repo, task.groups)?;
    let path = &task.file.path;
    let mut wanted: Vec<(Frame, u32, PieceRef, u64)> = Vec::new();
    let mut restored = 0;
    for (index, group) in task.groups.iter().enumerate() {
        let record = &records[group];
        let start = ((task.first + index) * GROUP_SIZE) as u64;
        for (slot, piece) in record.pieces.iter().enumerate() {
            let offset = start + (slot * PIECE_SIZE) as u64;
            if offset + u64::from(piece.len) > task.file.size {
                return Err(Error::Corrupt {
                    what: packs::describe_group(repo, group),
                    reason: format!(
                        "its piece {slot} ends past the {} bytes of {path} (the manifest or the group is damaged)",
                        task.file.size
                    ),
                });
            }
            restored += u64::from(piece.len);
            if let Some((frame, at)) = piece.stored {
                wanted.push((frame, at, *piece, offset));
            }
        }
    }
    wanted.sort_unstable_by_key(|(frame, at, _, _)| (*frame, *at));
    let mut frames: Vec<Frame> = wanted.iter().map(|(frame, ..)| *frame).collect();
    frames.dedup();
    let file = layout.open_for_part(path)?;
    let write = |bytes: &[u8], offset: u64| {
        file.write_all_at(bytes, offset)
            .map_err(Error::io("write", layout.target.path_of(path)))
    };
    packs::read_frames(repo, &frames, |frame, raw| {
        let first = wanted.partition_point(|(f, ..)| f < frame);
        // Pieces that follow each other both in the frame and in the file (a new group's, as
        // the backup stores them) are written at once, after each was checked.
        let mut run: Option<(u32, u32, u64)> = None;
        for (_, at, piece, offset) in wanted[first..].iter().take_while(|(f, ..)| f == frame) {
            packs::piece_bytes(repo, piece, frame, *at, raw)?;
            run = match run {
                Some((start, len, file_at)) if start + len == *at && file_at + u64::from(len) == *offset => {
                    Some((start, len + piece.len, file_at))
                }
                Some((start, len, file_at)) => {
                    write(&raw[start as usize..(start + len) as usize], file_at)?;
                    Some((*at, piece.len, *offset))
                }
                None => Some((*at, piece.len, *offset)),
            };
        }
        match run {
            Some((start, len, file_at)) => write(&raw[start as usize..(start + len) as usize], file_at),
            None => Ok(()),
        }
    })?;
    progress.advance(restored);
    crate::crash_point::reached("restore:piece");
    Ok(())
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
    let (object, what) = fetch_checked(repo, dir, piece)?;
    DECODED.with_borrow_mut(|raw| {
        codec::decode_into(&object, &what, raw)?;
        use_bytes(raw)
    })
}

/// Reads one stored piece of a backup file in `dir`, whose header must record the manifest's
/// size and CRC-32 (decoding then checks the content against the header); returns the object
/// and its name for errors.
fn fetch_checked(repo: &Repo, dir: &str, piece: &Piece) -> Result<(Vec<u8>, String)> {
    let (key, what) = piece_names(repo, dir, piece);
    let object = repo.storage().get(&key)?.ok_or_else(|| missing(&what))?;
    check_header(ObjectHeader::parse(&object, &what)?, piece, &what)?;
    Ok((object, what))
}

/// [`fetch_checked`] as a stream, read while it arrives: for the large pieces, so that a job
/// decodes and writes a part while the rest of it is on its way, and never holds it whole.
fn open_checked<'a>(repo: &Repo, dir: &str, piece: &Piece) -> Result<(ObjectStream<'a>, String)> {
    let (key, what) = piece_names(repo, dir, piece);
    let source = repo.storage().get_reader(&key)?.ok_or_else(|| missing(&what))?;
    let object = ObjectStream::open(source, &what)?;
    check_header(object.header, piece, &what)?;
    Ok((object, what))
}

/// The key of `piece` in the backup directory `dir`, and its name for errors.
fn piece_names(repo: &Repo, dir: &str, piece: &Piece) -> (String, String) {
    let key = piece.key(dir);
    let what = format!("backup file {} ({})", piece.file.path, repo.storage().describe(&key));
    (key, what)
}

/// The error for a piece the manifest lists and the repository does not hold.
fn missing(what: &str) -> Error {
    Error::Corrupt {
        what: what.to_string(),
        reason: "the object is missing from the repository".into(),
    }
}

/// A piece's object must record the manifest's size and CRC-32.
fn check_header(header: ObjectHeader, piece: &Piece, what: &str) -> Result<()> {
    if header.raw_len != piece.size || header.raw_crc != piece.crc32 {
        return Err(Error::Corrupt {
            what: what.to_string(),
            reason: format!(
                "the object holds {} bytes with CRC-32 {:08x}, the manifest says {} bytes with {:08x}",
                header.raw_len, header.raw_crc, piece.size, piece.crc32
            ),
        });
    }
    Ok(())
}

/// backup_label byte for byte, and tablespace_map when the backup has one.
fn write_labels(repo: &Repo, dir: &str, layout: &Layout) -> Result<()> {
    for name in ["backup_label", "tablespace_map"] {
        let key = format!("{dir}{name}");
        if let Some(object) = repo.storage().get(&key)? {
            let raw = codec::decode(&object, &repo.storage().describe(&key))?;
            layout
                .create_file(name, 0o600)?
                .write_all(&raw)
                .map_err(Error::io("write", layout.target.path_of(name)))?;
        }
    }
    Ok(())
}

/// An empty pg_wal/ with archive_status/ (and summaries/ from PostgreSQL 17 on).
fn create_wal_dirs(layout: &Layout, pg_version: u32) -> Result<()> {
    layout.create_dir("pg_wal", 0o700)?;
    layout.create_dir("pg_wal/archive_status", 0o700)?;
    if PgVersion::new(pg_version)?.has_wal_summaries() {
        layout.create_dir("pg_wal/summaries", 0o700)?;
    }
    Ok(())
}

/// Flushes everything written to the target's file system.
fn sync_all(target: &Dir) -> Result<()> {
    rustix::fs::syncfs(target.fd()).map_err(|e| Error::io("sync the file system of", target.path())(e.into()))
}
