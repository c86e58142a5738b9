//! The local-disk backend: a directory tree, written crash-safely.
//!
//! A put writes a temporary file in the target directory, fsyncs it, moves it into place with a
//! no-replace rename (`renameat2(RENAME_NOREPLACE)`, or link + unlink where that is unsupported,
//! both through `tempfile::persist_noclobber`), and fsyncs the directory. A directory created on
//! the way is fsynced into its parent too. Only then is the put reported. A deferred put (a
//! backup's files) skips the file and directory fsyncs; `sync_all_under` does them all at once,
//! before the backup's manifest is written.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::storage::{LockGuard, ObjectMeta, PutOutcome, Storage};

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    /// When pitr runs as root in a repository owned by another user (the PostgreSQL OS user
    /// that runs archive_command), what it creates is handed to that user, so that a backup
    /// run by root never leaves files archive-push cannot read.
    hand_to: Option<(u32, u32)>,
}

impl LocalStorage {
    /// Storage rooted at `root`, which must be an existing directory: pitr never creates the
    /// repository's root itself, so that an unmounted file system is noticed instead of filled.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStorage> {
        let root = root.into();
        match fs::metadata(&root) {
            Ok(meta) if meta.is_dir() => {
                let as_root = rustix::process::geteuid().is_root();
                let hand_to = (as_root && meta.uid() != 0).then(|| (meta.uid(), meta.gid()));
                Ok(LocalStorage { root, hand_to })
            }
            Ok(_) => Err(Error::Repo {
                path: root,
                reason: "is not a directory".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::Repo {
                path: root,
                reason: "does not exist: create the directory (owned by the PostgreSQL OS user) \
                         or fix --repo / PITR_REPO / `repo` in the config file"
                    .into(),
            }),
            Err(e) => Err(Error::io("open repository", &root)(e)),
        }
    }

    /// The repository's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Creates `dir` and any missing parents below the root, fsyncing each new entry into its parent.
    fn create_dirs(&self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        let parent = dir.parent().expect("a key's directory is below the root");
        self.create_dirs(parent)?;
        match fs::create_dir(dir) {
            Ok(()) => {
                self.hand_over(dir)?;
                fsync_dir(parent)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::io("create directory", dir)(e)),
        }
    }
}

/// When a put must be durable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Before the put returns.
    Now,
    /// After a later `sync_all_under`.
    Deferred,
}

impl LocalStorage {
    fn put(&self, key: &str, data: &[u8], durability: Durability) -> Result<PutOutcome> {
        let now = durability == Durability::Now;
        let target = self.path(key);
        let dir = target.parent().expect("keys have a parent directory");
        self.create_dirs(dir)?;
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp.")
            .tempfile_in(dir)
            .map_err(Error::io("create a temporary file in", dir))?;
        self.hand_over(temp.path())?;
        crate::fsio::write_in_pieces(&mut temp, data).map_err(Error::io("write", temp.path()))?;
        if now {
            temp.as_file().sync_all().map_err(Error::io("fsync", temp.path()))?;
        }
        let outcome = match temp.persist_noclobber(&target) {
            Ok(_) => PutOutcome::Created,
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                // The existing file may come from a put that crashed before its directory fsync.
                if now {
                    File::open(&target)
                        .and_then(|f| f.sync_all())
                        .map_err(Error::io("fsync the existing", &target))?;
                }
                PutOutcome::AlreadyExists
            }
            Err(e) => return Err(Error::io("move into place", &target)(e.error)),
        };
        if now {
            fsync_dir(dir)?;
        }
        Ok(outcome)
    }

    /// Gives a path pitr created to the repository's owner (see `hand_to`).
    fn hand_over(&self, path: &Path) -> Result<()> {
        match self.hand_to {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(Error::io("chown", path)),
            None => Ok(()),
        }
    }
}

impl Storage for LocalStorage {
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        self.put(key, data, Durability::Now)
    }

    fn put_if_absent_deferred(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        self.put(key, data, Durability::Deferred)
    }

    fn sync_all_under(&self, dir: &str) -> Result<()> {
        sync_tree(&self.path(dir))
    }

    fn sync(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(Error::io("fsync", &path))?;
        fsync_dir(path.parent().expect("keys have a parent directory"))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(ObjectMeta {
                size: meta.len(),
                modified: meta.modified().map_err(Error::io("look up", &path))?,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("look up", &path)(e)),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let path = self.path(dir);
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &path)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("list", &path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp.") {
                continue; // a put in progress, or left by a crash: never an object
            }
            let is_dir = entry.file_type().map_err(Error::io("list", entry.path()))?.is_dir();
            names.push(if is_dir { format!("{name}/") } else { name });
        }
        names.sort();
        Ok(names)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("delete", &path)(e)),
        }
        // Remove directories left empty, up to the root; a non-empty one stops the walk.
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.root) {
            if fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    fn delete_all(&self, dir: &str) -> Result<()> {
        let path = self.path(dir);
        match fs::remove_dir_all(&path) {
            Ok(()) => fsync_dir(path.parent().expect("below the root")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("delete", &path)(e)),
        }
    }

    fn try_lock(&self, name: &str) -> Result<Option<LockGuard>> {
        let dir = self.root.join("locks");
        self.create_dirs(&dir)?;
        let path = dir.join(format!("{name}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("open lock file", &path))?;
        self.hand_over(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(LockGuard(Box::new(file)))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(Error::io("lock", &path)(e)),
        }
    }

    fn available_bytes(&self) -> Result<Option<u64>> {
        let stat = rustix::fs::statvfs(&self.root).map_err(|e| Error::io("stat", &self.root)(e.into()))?;
        Ok(Some(stat.f_bavail.saturating_mul(stat.f_frsize)))
    }

    fn describe(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }
}

/// fsyncs every file and directory under `dir`, and `dir` itself (a missing `dir` is empty),
/// many at once: concurrent fsyncs share the file system's journal commits.
fn sync_tree(dir: &Path) -> Result<()> {
    let mut paths = Vec::new();
    collect_tree(dir, &mut paths)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(SYNC_THREADS)
        .build()
        .map_err(|e| Error::io("start fsync threads for", dir)(io::Error::other(e)))?;
    pool.install(|| {
        paths.par_iter().try_for_each(|path| {
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(Error::io("fsync", path))
        })
    })
}

/// fsyncs waiting at once in [`sync_tree`]: they wait on the disk, not on a core.
const SYNC_THREADS: usize = 16;

/// Every file and directory under `dir`, and `dir` itself.
fn collect_tree(dir: &Path, paths: &mut Vec<PathBuf>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("list", dir))?;
        let path = entry.path();
        if entry.file_type().map_err(Error::io("list", &path))?.is_dir() {
            collect_tree(&path, paths)?;
        } else {
            paths.push(path);
        }
    }
    paths.push(dir.to_path_buf());
    Ok(())
}

/// Makes a directory's entries durable.
fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync directory", dir))
}
