//! The local-disk backend: a directory tree, written crash-safely, never following a link.
//!
//! Every operation opens the repository's root (the operator's path, trusted) and walks the key
//! one component at a time without following symbolic links ([`fsio::Dir`]): whoever owns the
//! repository can plant links in it, and a root-run pitr must not be steered by them. A put
//! writes a temporary file in the target directory, fsyncs it, moves it into place with a
//! no-replace rename and fsyncs the directory ([`fsio::Dir::put_new`]); a directory created on
//! the way is fsynced into its parent. Only then is the put reported. A deferred put (a backup's
//! files) skips the file and directory fsyncs; `sync_all_under` does them all at once, before the
//! backup's manifest is written. Directories are created 0700 and files 0600, whatever the umask.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rayon::prelude::*;

use crate::codec::SourceError;
use crate::error::{Error, Result};
use crate::fsio::{self, Dir, Kind, Perms};
use crate::storage::{Listed, LockGuard, ObjectMeta, ObjectWriter, PutOutcome, Storage};

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    /// Modes of what pitr creates and, when pitr runs as root in a repository owned by another
    /// user (the PostgreSQL OS user that runs archive_command), that user: a backup run by root
    /// never leaves files archive-push cannot read.
    perms: Perms,
}

impl LocalStorage {
    /// Storage rooted at `root`, which must be an existing directory: pitr never creates the
    /// repository's root itself, so that an unmounted file system is noticed instead of filled.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStorage> {
        let root = root.into();
        match std::fs::metadata(&root) {
            Ok(meta) if meta.is_dir() => {
                let as_root = rustix::process::geteuid().is_root();
                let owner = (as_root && meta.uid() != 0).then(|| (meta.uid(), meta.gid()));
                Ok(LocalStorage {
                    root,
                    perms: Perms::private(owner),
                })
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

    /// The OS user (uid, gid) new entries are handed to, when pitr runs as root for another user.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.perms.owner
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn open_root(&self) -> Result<Dir> {
        Dir::open(&self.root).map_err(Error::io("open repository", &self.root))
    }

    /// The object file `key`, opened for reading without following a link, and its path; `None`
    /// when there is none.
    fn open_object(&self, key: &str) -> Result<Option<(std::fs::File, PathBuf)>> {
        let path = self.path(key);
        let (Some(parent), name) = self.parent_of(key)? else {
            return Ok(None);
        };
        let file = parent.open_file(name).map_err(Error::io("read", &path))?;
        Ok(file.map(|file| (file, path)))
    }

    /// The directory holding `key` and the object's name in it; `None` when the directory is
    /// missing.
    fn parent_of<'k>(&self, key: &'k str) -> Result<(Option<Dir>, &'k str)> {
        let (dir, name) = split_key(key);
        let root = self.open_root()?;
        let parent = root.open_dir(dir).map_err(Error::io("open", self.path(dir)))?;
        Ok((parent, name))
    }

    fn put(&self, key: &str, data: &[u8], durable: bool) -> Result<PutOutcome> {
        let (dir, name) = split_key(key);
        let parent = self
            .open_root()?
            .create_dirs(dir, &self.perms)
            .map_err(Error::io("create directory", self.path(dir)))?;
        // An existing object is found before anything is written: a put of an object stored
        // already (PostgreSQL retrying archive_command) then needs no free space.
        let exists = parent
            .stat(name)
            .map_err(Error::io("look up", self.path(key)))?
            .is_some();
        let created = !exists
            && parent
                .put_new(name, data, &self.perms, durable)
                .map_err(Error::io("store", self.path(key)))?;
        if created {
            return Ok(PutOutcome::Created);
        }
        if durable {
            sync_existing(&parent, name, &self.path(key))?;
        }
        Ok(PutOutcome::AlreadyExists)
    }
}

/// [`Storage::put_writer`] on local disk: a [`fsio::NewFile`] in the object's directory, written
/// as the pieces come and fsynced ahead when asked, then placed as [`Dir::put_new`] places a whole
/// object.
struct LocalWriter {
    dir: Dir,
    file: fsio::NewFile,
    name: String,
    path: PathBuf,
    written: u64,
}

impl ObjectWriter for LocalWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write(bytes).map_err(Error::io("store", &self.path))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Starts writing back what was written, without waiting for it: `posix_fadvise(DONTNEED)`
    /// starts the writeback of a range's dirty pages as `sync_file_range(SYNC_FILE_RANGE_WRITE)`
    /// would (Linux `mm/fadvise.c`; rustix offers no `sync_file_range`), and drops the pages
    /// already clean, which nothing reads again. `finish` then still fsyncs the file, which only
    /// waits for what is left.
    fn write_ahead(&mut self) -> Result<()> {
        rustix::fs::fadvise(self.file.file(), 0, None, rustix::fs::Advice::DontNeed)
            .map_err(|e| Error::io("write back", &self.path)(e.into()))
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn finish(self: Box<Self>, head: &[u8]) -> Result<PutOutcome> {
        use std::os::unix::fs::FileExt;
        super::check_head_fits(head, self.written)?;
        let LocalWriter {
            dir, file, name, path, ..
        } = *self;
        file.file().write_all_at(head, 0).map_err(Error::io("store", &path))?;
        if file.place(&name, true).map_err(Error::io("store", &path))? {
            return Ok(PutOutcome::Created);
        }
        sync_existing(&dir, &name, &path)?;
        Ok(PutOutcome::AlreadyExists)
    }
}

/// Size and modification time of a regular file; `None` for anything else.
fn object_meta(stat: &rustix::fs::Stat) -> Option<ObjectMeta> {
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    let modified = SystemTime::UNIX_EPOCH
        + Duration::new(
            stat.st_mtime.max(0) as u64,
            stat.st_mtime_nsec.clamp(0, 999_999_999) as u32,
        );
    Some(ObjectMeta {
        size: stat.st_size.max(0) as u64,
        modified,
    })
}

/// A key's directory part (possibly empty) and its last component.
fn split_key(key: &str) -> (&str, &str) {
    key.rsplit_once('/').unwrap_or(("", key))
}

/// Makes an object that was found existing durable, file and directory entry: it may come from a
/// put that crashed before its fsyncs.
fn sync_existing(dir: &Dir, name: &str, path: &Path) -> Result<()> {
    sync_file(dir, name, path)?;
    dir.sync().map_err(Error::io("fsync directory", dir.path()))
}

fn sync_file(dir: &Dir, name: &str, path: &Path) -> Result<()> {
    match dir.open_file(name).map_err(Error::io("open", path))? {
        Some(file) => file.sync_all().map_err(Error::io("fsync", path)),
        None => Err(Error::io("fsync", path)(io::Error::from(io::ErrorKind::NotFound))),
    }
}

impl Storage for LocalStorage {
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        self.put(key, data, true)
    }

    fn put_if_absent_deferred(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        self.put(key, data, false)
    }

    fn put_writer(&self, key: &str) -> Result<Box<dyn ObjectWriter + '_>> {
        let (dir, name) = split_key(key);
        fsio::check_name(name).map_err(Error::io("store", self.path(key)))?;
        let parent = self
            .open_root()?
            .create_dirs(dir, &self.perms)
            .map_err(Error::io("create directory", self.path(dir)))?;
        let file = parent
            .create_new(&self.perms)
            .map_err(Error::io("store", self.path(key)))?;
        Ok(Box::new(LocalWriter {
            dir: parent,
            file,
            name: name.to_string(),
            path: self.path(key),
            written: 0,
        }))
    }

    fn sync_all_under(&self, dir: &str) -> Result<()> {
        let dir = dir.trim_end_matches('/');
        match self
            .open_root()?
            .open_dir(dir)
            .map_err(Error::io("open", self.path(dir)))?
        {
            Some(opened) => sync_tree(opened),
            None => Ok(()),
        }
    }

    fn sync(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        let (parent, name) = self.parent_of(key)?;
        let parent = parent.ok_or_else(|| Error::io("fsync", &path)(io::Error::from(io::ErrorKind::NotFound)))?;
        sync_existing(&parent, name, &path)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let Some((mut file, path)) = self.open_object(key)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(Error::io("read", &path))?;
        Ok(Some(bytes))
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let Some((file, path)) = self.open_object(key)? else {
            return Ok(None);
        };
        let mut bytes =
            vec![0u8; usize::try_from(len).map_err(|_| Error::io("read", &path)(io::ErrorKind::InvalidInput.into()))?];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, start).map_err(Error::io("read", &path))?;
        Ok(Some(bytes))
    }

    fn get_reader(&self, key: &str) -> Result<Option<Box<dyn io::BufRead + Send>>> {
        let Some((file, path)) = self.open_object(key)? else {
            return Ok(None);
        };
        Ok(Some(Box::new(io::BufReader::with_capacity(
            fsio::WRITE_PIECE,
            FileSource { file, path },
        ))))
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key);
        let (Some(parent), name) = self.parent_of(key)? else {
            return Ok(None);
        };
        let Some(stat) = parent.stat(name).map_err(Error::io("look up", &path))? else {
            return Ok(None);
        };
        object_meta(&stat).map(Some).ok_or_else(|| {
            Error::io("look up", &path)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (pitr stores objects as plain files and never follows links)",
            ))
        })
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let trimmed = dir.trim_end_matches('/');
        let path = self.path(trimmed);
        let Some(opened) = self.open_root()?.open_dir(trimmed).map_err(Error::io("list", &path))? else {
            return Ok(Vec::new());
        };
        let entries = opened.entries().map_err(Error::io("list", &path))?;
        Ok(entries
            .into_iter()
            // A put in progress, or left by a crash: never an object.
            .filter(|e| !e.name.starts_with(".tmp."))
            .map(|e| match e.kind {
                Kind::Dir => format!("{}/", e.name),
                _ => e.name,
            })
            .collect())
    }

    /// One directory listing and one `fstatat` per entry, relative to the open directory (a
    /// `head` walks from the root for each object).
    fn list_meta(&self, dir: &str) -> Result<Vec<Listed>> {
        let trimmed = dir.trim_end_matches('/');
        let path = self.path(trimmed);
        let Some(opened) = self.open_root()?.open_dir(trimmed).map_err(Error::io("list", &path))? else {
            return Ok(Vec::new());
        };
        let mut listed = Vec::new();
        for entry in opened.entries().map_err(Error::io("list", &path))? {
            if entry.name.starts_with(".tmp.") {
                continue;
            }
            if entry.kind == Kind::Dir {
                listed.push(Listed {
                    name: format!("{}/", entry.name),
                    meta: None,
                });
                continue;
            }
            let stat = opened
                .stat(&entry.name)
                .map_err(Error::io("look up", opened.path_of(&entry.name)))?;
            let Some(stat) = stat else {
                continue; // deleted meanwhile
            };
            listed.push(Listed {
                name: entry.name,
                meta: object_meta(&stat),
            });
        }
        Ok(listed)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        let root = self.open_root()?;
        let (dir, name) = split_key(key);
        let Some(parent) = root.open_dir(dir).map_err(Error::io("delete", &path))? else {
            return Ok(());
        };
        if !parent.remove_file(name).map_err(Error::io("delete", &path))? {
            return Ok(());
        }
        // Remove directories left empty, up to the root; a non-empty one stops the walk.
        let mut components = fsio::components(dir).map_err(Error::io("delete", &path))?;
        while let Some(last) = components.pop() {
            let above = components.join("/");
            let Ok(Some(parent)) = root.open_dir(&above) else { break };
            if parent.remove_dir(last).is_err() {
                break;
            }
        }
        Ok(())
    }

    fn delete_all(&self, dir: &str) -> Result<()> {
        let trimmed = dir.trim_end_matches('/');
        let path = self.path(trimmed);
        let (above, name) = split_key(trimmed);
        let root = self.open_root()?;
        let Some(parent) = root.open_dir(above).map_err(Error::io("delete", &path))? else {
            return Ok(());
        };
        parent.remove_tree(name).map_err(Error::io("delete", &path))?;
        parent.sync().map_err(Error::io("fsync directory", parent.path()))
    }

    fn try_lock(&self, name: &str) -> Result<Option<LockGuard>> {
        let dir = self
            .open_root()?
            .create_dir("locks", &self.perms)
            .map_err(Error::io("create directory", self.path("locks")))?;
        let file_name = format!("{name}.lock");
        let path = dir.path_of(&file_name);
        let file = dir
            .open_or_create_file(&file_name, &self.perms)
            .map_err(Error::io("open lock file", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(LockGuard(Box::new(file)))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &path)(e)),
        }
    }

    fn available_bytes(&self) -> Result<Option<u64>> {
        let root = self.open_root()?;
        let stat = rustix::fs::fstatvfs(root.fd()).map_err(|e| Error::io("stat", &self.root)(e.into()))?;
        Ok(Some(stat.f_bavail.saturating_mul(stat.f_frsize)))
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn describe(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }
}

/// fsyncs every file and directory under `dir`, and `dir` itself, many at once: concurrent
/// fsyncs share the file system's journal commits. Entries are opened one at a time, so a
/// backup of any number of files holds few descriptors.
fn sync_tree(dir: Dir) -> Result<()> {
    let mut files = Vec::new();
    let mut dirs = vec![String::new()];
    collect_tree(&dir, "", &mut files, &mut dirs)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(SYNC_THREADS)
        .build()
        .map_err(|e| Error::Refused(format!("cannot start fsync threads: {e}")))?;
    let open_dir =
        |rel: &str| -> Result<Option<Dir>> { dir.open_dir(rel).map_err(Error::io("open", dir.path_of(rel))) };
    pool.install(|| {
        files.par_iter().try_for_each(|rel: &String| {
            let (parent, name) = split_key(rel);
            match open_dir(parent)? {
                Some(parent) => sync_file(&parent, name, &dir.path_of(rel)),
                None => Ok(()),
            }
        })?;
        dirs.par_iter().try_for_each(|rel: &String| match open_dir(rel)? {
            Some(opened) => opened.sync().map_err(Error::io("fsync directory", opened.path())),
            None => Ok(()),
        })
    })
}

/// fsyncs waiting at once in [`sync_tree`]: they wait on the disk, not on a core.
const SYNC_THREADS: usize = 16;

/// The files and directories under `dir` (at `rel` below the synced one), as relative paths.
fn collect_tree(dir: &Dir, rel: &str, files: &mut Vec<String>, dirs: &mut Vec<String>) -> Result<()> {
    for entry in dir.entries().map_err(Error::io("list", dir.path()))? {
        let child = if rel.is_empty() {
            entry.name.clone()
        } else {
            format!("{rel}/{}", entry.name)
        };
        match entry.kind {
            Kind::Dir => {
                let path = dir.path_of(&entry.name);
                if let Some(sub) = dir.open_dir(&entry.name).map_err(Error::io("open", &path))? {
                    collect_tree(&sub, &child, files, dirs)?;
                    dirs.push(child);
                }
            }
            Kind::File => files.push(child),
            Kind::Symlink | Kind::Other => {}
        }
    }
    Ok(())
}

/// An object file opened for [`Storage::get_reader`]: its read errors name the file.
struct FileSource {
    file: std::fs::File,
    path: PathBuf,
}

impl Read for FileSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::Interrupted => e,
            _ => SourceError::into_io(Error::io("read", &self.path)(e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::LocalStorage;
    use crate::storage::conformance::check_backend;
    use crate::storage::{PutOutcome, Storage};

    #[test]
    fn local_storage_meets_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        check_backend(Arc::new(LocalStorage::open(dir.path()).unwrap()));
        let leftovers: Vec<_> = walk(dir.path()).into_iter().filter(|p| p.contains(".tmp.")).collect();
        assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
    }

    /// The local backend with the trait's default `list_meta` (list, then head each object): the
    /// default meets the contract too.
    struct DefaultListing(LocalStorage);

    impl Storage for DefaultListing {
        fn put_if_absent(&self, key: &str, data: &[u8]) -> crate::Result<PutOutcome> {
            self.0.put_if_absent(key, data)
        }
        fn put_if_absent_deferred(&self, key: &str, data: &[u8]) -> crate::Result<PutOutcome> {
            self.0.put_if_absent_deferred(key, data)
        }
        fn sync_all_under(&self, dir: &str) -> crate::Result<()> {
            self.0.sync_all_under(dir)
        }
        fn sync(&self, key: &str) -> crate::Result<()> {
            self.0.sync(key)
        }
        fn get(&self, key: &str) -> crate::Result<Option<Vec<u8>>> {
            self.0.get(key)
        }
        fn head(&self, key: &str) -> crate::Result<Option<crate::storage::ObjectMeta>> {
            self.0.head(key)
        }
        fn list(&self, dir: &str) -> crate::Result<Vec<String>> {
            self.0.list(dir)
        }
        fn delete(&self, key: &str) -> crate::Result<()> {
            self.0.delete(key)
        }
        fn try_lock(&self, name: &str) -> crate::Result<Option<crate::storage::LockGuard>> {
            self.0.try_lock(name)
        }
        fn available_bytes(&self) -> crate::Result<Option<u64>> {
            self.0.available_bytes()
        }
        fn describe(&self, key: &str) -> String {
            self.0.describe(key)
        }
    }

    #[test]
    fn the_default_list_meta_meets_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        check_backend(Arc::new(DefaultListing(LocalStorage::open(dir.path()).unwrap())));
    }

    /// The local backend's listing with metadata never follows a link planted among the objects,
    /// and never fails for one: it is no plain object (`meta` is `None`), as `head` refuses it.
    #[test]
    fn local_list_meta_reports_links_without_following_them() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![0u8; 4096]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStorage::open(dir.path()).unwrap();
        store.put_if_absent("w/a", b"abc").unwrap();
        symlink(outside.path().join("big"), dir.path().join("w/link")).unwrap();
        symlink(outside.path(), dir.path().join("w/linked-dir")).unwrap();
        let listed = store.list_meta("w/").unwrap();
        let summary: Vec<(&str, Option<u64>)> = listed
            .iter()
            .map(|l| (l.name.as_str(), l.meta.map(|m| m.size)))
            .collect();
        assert_eq!(summary, [("a", Some(3)), ("link", None), ("linked-dir", None)]);
        assert!(store.head("w/link").is_err());
    }

    #[test]
    fn local_storage_refuses_a_missing_root() {
        let dir = tempfile::tempdir().unwrap();
        let err = LocalStorage::open(dir.path().join("not-mounted"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(!dir.path().join("not-mounted").exists());
    }

    fn walk(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flat_map(|e| {
                let path = e.unwrap().path();
                if path.is_dir() {
                    walk(&path)
                } else {
                    vec![path.display().to_string()]
                }
            })
            .collect()
    }

    /// Whoever owns the repository may plant links in it; the local backend refuses to follow any,
    /// so that a root-run pitr is never steered outside the repository (issue: a planted
    /// `locks/backup.lock` link handed a root-owned file to the repository's owner).
    #[test]
    fn local_storage_follows_no_link_planted_in_the_repository() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"root's file").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o640)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStorage::open(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("locks")).unwrap();
        symlink(&victim, dir.path().join("locks/backup.lock")).unwrap();
        assert!(
            store.try_lock("backup").is_err(),
            "a lock file that is a link is refused"
        );
        symlink(outside.path(), dir.path().join("wal")).unwrap();
        assert!(
            store.get("wal/victim").is_err(),
            "a directory link is an error, not an object"
        );
        assert!(store.put_if_absent("wal/new", b"x").is_err());
        assert!(!outside.path().join("new").exists(), "nothing written through the link");
        std::fs::create_dir(dir.path().join("objects")).unwrap();
        symlink(outside.path().join("gone"), dir.path().join("objects/dangling")).unwrap();
        assert!(
            store.get("objects/dangling").is_err(),
            "a dangling link is an error, never 'absent'"
        );
        assert!(store.head("objects/dangling").is_err());
        symlink(outside.path(), dir.path().join("objects/tree")).unwrap();
        store.delete_all("objects/").unwrap();
        assert!(victim.exists(), "deleting a tree removes links, not what they point to");
        for bad in ["../escape", "/etc/passwd", "a/../b", "a//b"] {
            assert!(store.put_if_absent(bad, b"x").is_err(), "{bad}");
            assert!(store.get(bad).is_err(), "{bad}");
        }
        let meta = std::fs::metadata(&victim).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o640,
            "the victim's mode is untouched"
        );
    }

    #[test]
    fn local_storage_creates_private_directories_and_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStorage::open(dir.path()).unwrap();
        store.put_if_absent("wal/0000000100000000/x", b"x").unwrap();
        drop(store.try_lock("backup").unwrap());
        let mode = |rel: &str| std::fs::metadata(dir.path().join(rel)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("wal"), 0o700);
        assert_eq!(mode("wal/0000000100000000"), 0o700);
        assert_eq!(mode("wal/0000000100000000/x"), 0o600);
        assert_eq!(mode("locks"), 0o700);
        assert_eq!(mode("locks/backup.lock"), 0o600);
    }
}
