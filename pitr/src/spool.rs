//! The local spool: a directory beside the data directory (never inside `pg_wal`, which would
//! break pg_rewind) where pitr keeps what only speeds things up. Losing it loses nothing.
//!
//! ```text
//! <spool>/pushed/<name>     the watcher stored this pg_wal file durably: "size mtime inode"
//! <spool>/prefetch/<name>   a WAL file fetched, decompressed and verified ahead of recovery
//! <spool>/prefetch/owner    which repository and recovery run the prefetched files belong to
//! <spool>/prefetch/watcher  the prefetcher watching for the end of recovery
//! <spool>/daemon.toml       the config file as `pitr daemon` last loaded it, for its jobs
//! ```
//!
//! The default spool of data directory `/d/main` is `/d/main.pitr-spool`: on the same file
//! system as `pg_wal` as a rule, so that handing over a prefetched file is a rename.

use std::fs;
use std::io;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// The default spool directory of a data directory.
    pub fn default_for(pgdata: &Path) -> PathBuf {
        let name = pgdata
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pgdata".into());
        pgdata.with_file_name(format!("{name}.pitr-spool"))
    }

    /// The spool at `dir`; nothing is created until something is written.
    pub fn at(dir: impl Into<PathBuf>) -> Spool {
        Spool { dir: dir.into() }
    }

    /// Creates the spool's directories if they are missing, and makes them 0700 whatever the
    /// umask (an older spool may be 0755): prefetched WAL is the database's content.
    pub fn ensure(&self) -> Result<()> {
        for sub in ["pushed", "prefetch"] {
            let path = self.dir.join(sub);
            match fs::DirBuilder::new().recursive(true).mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("create spool directory", &path)(e)),
            }
        }
        for dir in [self.dir.clone(), self.dir.join("pushed"), self.prefetch_dir()] {
            let private = fs::metadata(&dir).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o700);
            if !private {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(Error::io("set permissions of", &dir))?;
            }
        }
        Ok(())
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where prefetched files go.
    pub fn prefetch_dir(&self) -> PathBuf {
        self.dir.join("prefetch")
    }

    /// Records that `file` (a pg_wal file named `name`) is durably in the repository.
    pub fn mark_pushed(&self, name: &str, file: &fs::Metadata) -> Result<()> {
        self.ensure()?;
        replace_private(&self.dir.join("pushed").join(name), identity(file).as_bytes())
    }

    /// Whether the watcher stored exactly this file (same size, modification time and inode).
    pub fn was_pushed(&self, name: &str, file: &fs::Metadata) -> bool {
        fs::read_to_string(self.dir.join("pushed").join(name)).is_ok_and(|marker| marker == identity(file))
    }

    /// Forgets markers of files that are no longer waiting in `archive_status` as `.ready`.
    pub fn forget_pushed_except(&self, ready: &[String]) -> Result<()> {
        let dir = self.dir.join("pushed");
        let Ok(entries) = fs::read_dir(&dir) else { return Ok(()) };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".tmp") && !ready.contains(&name) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

/// Creates (or truncates) a file of the spool, mode 0600 when it is new: the umask can only make
/// it stricter.
pub(crate) fn create_private(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Writes `bytes` as a spool file (see [`create_private`]).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    create_private(path)?.write_all(bytes)
}

/// Replaces the spool file `path` whole with `bytes` (a temporary file renamed over it; not
/// fsynced: spool markers need not survive a crash).
pub(crate) fn replace_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp = path.with_extension(format!("{}.tmp", std::process::id()));
    write_private(&temp, bytes).map_err(Error::io("write", &temp))?;
    fs::rename(&temp, path).map_err(Error::io("rename", path))
}

/// Takes the exclusive lock `path` (created 0600 when missing), or `None` when another process
/// holds it. The system releases it when the holder dies.
pub(crate) fn take_lock(path: &Path) -> Result<Option<fs::File>> {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io("open", path))?;
    Ok(lock.try_lock().is_ok().then_some(lock))
}

/// Whether some process holds the lock `path` (found out by trying it; a lock taken that way is
/// let go at once).
pub(crate) fn lock_is_held(path: &Path) -> bool {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .is_ok_and(|lock| matches!(lock.try_lock(), Err(fs::TryLockError::WouldBlock)))
}

/// What identifies one version of a file without reading it.
fn identity(meta: &fs::Metadata) -> String {
    format!("{} {} {} {}", meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_spool_is_beside_the_data_directory() {
        assert_eq!(
            Spool::default_for(Path::new("/var/lib/pg/15/main")),
            PathBuf::from("/var/lib/pg/15/main.pitr-spool")
        );
    }

    #[test]
    fn a_marker_matches_only_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::at(dir.path().join("spool"));
        let file = dir.path().join("000000010000000000000001");
        fs::write(&file, b"one").unwrap();
        spool
            .mark_pushed("000000010000000000000001", &fs::metadata(&file).unwrap())
            .unwrap();
        assert!(spool.was_pushed("000000010000000000000001", &fs::metadata(&file).unwrap()));
        fs::remove_file(&file).unwrap();
        fs::write(&file, b"two, longer").unwrap();
        assert!(!spool.was_pushed("000000010000000000000001", &fs::metadata(&file).unwrap()));
        spool.forget_pushed_except(&[]).unwrap();
        assert_eq!(fs::read_dir(spool.dir().join("pushed")).unwrap().count(), 0);
    }

    #[test]
    fn the_spool_is_private_whatever_it_was_created_with() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::at(dir.path().join("spool"));
        fs::DirBuilder::new().mode(0o755).create(spool.dir()).unwrap();
        fs::set_permissions(spool.dir(), fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.path().join("000000010000000000000001");
        fs::write(&file, b"one").unwrap();
        spool
            .mark_pushed("000000010000000000000001", &fs::metadata(&file).unwrap())
            .unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(spool.dir()), 0o700);
        assert_eq!(mode(&spool.dir().join("pushed")), 0o700);
        assert_eq!(mode(&spool.prefetch_dir()), 0o700);
        assert_eq!(mode(&spool.dir().join("pushed/000000010000000000000001")), 0o600);
    }
}
