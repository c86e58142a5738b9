//! File operations pitr trusts: crash-safe, symlink-safe, with explicit modes.
//!
//! - [`Dir`]: a directory opened once and used by handle. Every name below it is resolved one
//!   component at a time with `O_NOFOLLOW`, so a symbolic link planted by whoever can write there
//!   (the owner of a repository, the PostgreSQL OS user next to a root-run pitr) is refused
//!   instead of followed, and what pitr acts on is the file it opened, not a path that may have
//!   been swapped meanwhile. Ownership and modes are set on the open file (`fchown`, `fchmod`),
//!   so they do not depend on the umask and cannot be redirected.
//! - [`Dir::put_new`] and [`NewFile`]: the one crash-safe write: a temporary file in the target
//!   directory, written (whole, or in pieces as they come), fsynced, moved into place without
//!   replacing anything (`renameat2(RENAME_NOREPLACE)`, or link + unlink where the file system
//!   lacks it), then the directory fsynced.
//! - [`write_in_pieces`]: file writes shaped for the page cache. Linux 6.x caches a file in
//!   folios sized by the writes that fill it. A write of 256 KiB or more asks the kernel for a
//!   large folio (order 6 and up), and on a virtual machine that hands free memory back to its
//!   host (virtio free page reporting) every such folio is memory the host must fault in again:
//!   measured here, 16 MiB written in 1 MiB or larger pieces took 40–55 ms once a few hundred MB
//!   had been written, in 128 KiB pieces 4–5 ms every time (bench/findings.md). Large folios also
//!   make every later 8 KiB write back a whole folio. So pitr writes files in pieces of at most
//!   [`WRITE_PIECE`]; restored data files, which PostgreSQL rewrites page by page, are written one
//!   page at a time (`backup::restore`).
//! - [`PageBuffer`]: a buffer for reads and writes of that size that starts on a page. The
//!   kernel copies between the page cache and a buffer with `rep movsb`, which on this AMD EPYC
//!   machine ran at a quarter of its speed into a buffer 16 bytes past a page (where `malloc`
//!   puts a 128 KiB one): 130 µs per 128 KiB read instead of 26 µs (bench/load.md).

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};

use crate::crash_point;

/// The largest write pitr hands the kernel: 128 KiB, below the order-6 folios that turn slow.
pub const WRITE_PIECE: usize = 128 << 10;

/// Writes all of `bytes` to `out` in pieces of at most [`WRITE_PIECE`].
pub fn write_in_pieces(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    bytes.chunks(WRITE_PIECE).try_for_each(|piece| out.write_all(piece))
}

/// A zeroed buffer of a fixed length that starts on a page boundary (see the module's doc).
pub struct PageBuffer {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

/// The alignment of a [`PageBuffer`].
const PAGE: usize = 4096;

impl PageBuffer {
    /// A buffer of `len` zero bytes.
    pub fn new(len: usize) -> PageBuffer {
        let storage = vec![0u8; len + PAGE];
        let start = storage.as_ptr().align_offset(PAGE);
        PageBuffer { storage, start, len }
    }
}

impl std::ops::Deref for PageBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for PageBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Modes and owner of what pitr creates. Modes are set exactly, whatever the umask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    /// Mode of new directories.
    pub dir_mode: u32,
    /// Mode of new files.
    pub file_mode: u32,
    /// (uid, gid) to hand new entries to, when pitr runs as root for another user.
    pub owner: Option<(u32, u32)>,
}

impl Perms {
    /// Private to the user that runs pitr (or `owner`): directories 0700, files 0600.
    pub const fn private(owner: Option<(u32, u32)>) -> Perms {
        Perms {
            dir_mode: 0o700,
            file_mode: 0o600,
            owner,
        }
    }

    /// Gives an existing directory this owner and the directory mode.
    pub fn apply_dir(&self, dir: &Dir) -> io::Result<()> {
        self.apply(dir.fd(), self.dir_mode)
    }

    fn apply(&self, fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
        if let Some((uid, gid)) = self.owner {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )?;
        }
        // After fchown: changing the owner may clear set-id bits, never permission bits.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
        Ok(())
    }
}

/// What a directory entry is, as seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: Kind,
}

/// An open directory; see the module documentation.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Dir {
    /// Opens a directory the operator named: symbolic links in `path` itself are followed (the
    /// operator's configuration is trusted), nothing below it ever is.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The path it was opened by, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `rel` below it, for messages.
    pub fn path_of(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// The open directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The directory `rel` (`/`-separated, relative) below this one; `None` when a component is
    /// missing. A component that is a symbolic link or not a directory is an error.
    pub fn open_dir(&self, rel: &str) -> io::Result<Option<Dir>> {
        let mut current: Option<Dir> = None;
        for name in components(rel)? {
            let parent = current.as_ref().unwrap_or(self);
            match rustix::fs::openat(parent.fd(), name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => {
                    current = Some(Dir {
                        fd,
                        path: parent.path.join(name),
                    })
                }
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(e) => return Err(not_followed(e, &parent.path.join(name))),
            }
        }
        match current {
            Some(dir) => Ok(Some(dir)),
            None => self.try_clone().map(Some),
        }
    }

    /// Like [`Dir::open_dir`], creating what is missing with `perms` (each new directory made
    /// durable in its parent).
    pub fn create_dirs(&self, rel: &str, perms: &Perms) -> io::Result<Dir> {
        let mut current = self.try_clone()?;
        for name in components(rel)? {
            current = current.create_dir(name, perms)?;
        }
        Ok(current)
    }

    /// The directory `name` in this one, created with `perms` if it is missing.
    pub fn create_dir(&self, name: &str, perms: &Perms) -> io::Result<Dir> {
        check_name(name)?;
        let created = match rustix::fs::mkdirat(self.fd(), name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(e.into()),
        };
        let fd = rustix::fs::openat(self.fd(), name, DIR_FLAGS, Mode::empty())
            .map_err(|e| not_followed(e, &self.path.join(name)))?;
        if created {
            perms.apply(fd.as_fd(), perms.dir_mode)?;
            self.sync()?;
        }
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// Creates the file `name` (which must not exist) with `perms`, open for writing.
    pub fn create_file(&self, name: &str, perms: &Perms) -> io::Result<File> {
        self.create_file_mode(name, perms, perms.file_mode)
    }

    /// Creates the file `name` (which must not exist) with `perms` but mode `mode`.
    pub fn create_file_mode(&self, name: &str, perms: &Perms, mode: u32) -> io::Result<File> {
        check_name(name)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(self.fd(), name, flags, Mode::from_raw_mode(0o600))?;
        perms.apply(fd.as_fd(), mode)?;
        Ok(File::from(fd))
    }

    /// Opens the regular file `name` for reading; `None` when it does not exist. A symbolic
    /// link, a FIFO or any other kind of file is an error (and a FIFO never blocks the open).
    pub fn open_file(&self, name: &str) -> io::Result<Option<File>> {
        self.open_regular(name, OFlags::RDONLY)
    }

    /// Opens the existing regular file `name` for writing (no truncation, no creation).
    pub fn open_file_for_writing(&self, name: &str) -> io::Result<File> {
        self.open_regular(name, OFlags::WRONLY)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} vanished", self.path_of(name).display()),
            )
        })
    }

    /// Opens the regular file `name` for reading and writing, creating it with `perms` if it is
    /// missing (a lock file).
    pub fn open_or_create_file(&self, name: &str, perms: &Perms) -> io::Result<File> {
        check_name(name)?;
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(self.fd(), name, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| not_followed(e, &self.path.join(name)))?;
        require_regular(&fd, &self.path.join(name))?;
        perms.apply(fd.as_fd(), perms.file_mode)?;
        Ok(File::from(fd))
    }

    fn open_regular(&self, name: &str, access: OFlags) -> io::Result<Option<File>> {
        check_name(name)?;
        let flags = access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(self.fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(not_followed(e, &self.path.join(name))),
        };
        require_regular(&fd, &self.path.join(name))?;
        // Back to blocking reads and writes (O_NONBLOCK only kept a FIFO from blocking the open).
        rustix::fs::fcntl_setfl(&fd, access)?;
        Ok(Some(File::from(fd)))
    }

    /// What `name` is, without following it; `None` when it does not exist.
    pub fn stat(&self, name: &str) -> io::Result<Option<rustix::fs::Stat>> {
        check_name(name)?;
        match rustix::fs::statat(self.fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every entry but `.` and `..`, sorted by name.
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for entry in rustix::fs::Dir::read_from(self.fd())? {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let name = name_of(name)?;
            let kind = match entry.file_type() {
                FileType::Unknown => match self.stat(&name)? {
                    Some(stat) => kind_of(FileType::from_raw_mode(stat.st_mode)),
                    None => continue, // removed meanwhile
                },
                other => kind_of(other),
            };
            entries.push(Entry { name, kind });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Moves `from` to `to` in this directory unless `to` exists (then `false`, and `from` stays).
    pub fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<bool> {
        check_name(from)?;
        check_name(to)?;
        match rustix::fs::renameat_with(self.fd(), from, self.fd(), to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::EXIST) => Ok(false),
            // File systems without RENAME_NOREPLACE (NFS, some FUSE): a hard link is create-only too.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::NOTSUP) => {
                match rustix::fs::linkat(self.fd(), from, self.fd(), to, AtFlags::empty()) {
                    Ok(()) => {
                        rustix::fs::unlinkat(self.fd(), from, AtFlags::empty())?;
                        Ok(true)
                    }
                    Err(rustix::io::Errno::EXIST) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the file (or symbolic link) `name`; `false` when there was none.
    pub fn remove_file(&self, name: &str) -> io::Result<bool> {
        check_name(name)?;
        match rustix::fs::unlinkat(self.fd(), name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the empty directory `name`; an error when it is not empty.
    pub fn remove_dir(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        rustix::fs::unlinkat(self.fd(), name, AtFlags::REMOVEDIR).map_err(Into::into)
    }

    /// Removes `name` and, when it is a directory, everything below it. Symbolic links are
    /// removed, never followed. A missing `name` is not an error.
    pub fn remove_tree(&self, name: &str) -> io::Result<()> {
        match self.stat(name)? {
            None => Ok(()),
            Some(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                if let Some(dir) = self.open_dir(name)? {
                    dir.remove_contents()?;
                }
                match self.remove_dir(name) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    other => other,
                }
            }
            Some(_) => self.remove_file(name).map(drop),
        }
    }

    /// Removes everything in this directory, without following symbolic links.
    pub fn remove_contents(&self) -> io::Result<()> {
        for entry in self.entries()? {
            self.remove_tree(&entry.name)?;
        }
        Ok(())
    }

    /// Makes this directory's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(self.fd()).map_err(Into::into)
    }

    /// Writes `data` as the new file `name`, crash-safely: nothing under that name unless the
    /// whole content is there. Returns `false` (and writes nothing) when `name` exists. With
    /// `durable`, the file and the directory entry are fsynced before returning; otherwise the
    /// caller makes them durable later (see `storage::Storage::put_if_absent_deferred`).
    pub fn put_new(&self, name: &str, data: &[u8], perms: &Perms, durable: bool) -> io::Result<bool> {
        check_name(name)?;
        let mut new = self.create_new(perms)?;
        new.write(data)?;
        crash_point::reached("put:written");
        new.place(name, durable)
    }

    /// A new file in this directory, under a temporary name until [`NewFile::place`].
    pub fn create_new(&self, perms: &Perms) -> io::Result<NewFile> {
        let dir = self.try_clone()?;
        let (temp, file) = self.create_temp(perms)?;
        Ok(NewFile {
            dir,
            temp: Some(temp),
            file,
        })
    }

    /// Replaces the content of `name` (or creates it) crash-safely: a temporary file with
    /// `perms`, fsynced, renamed over `name`, the directory fsynced. Readers see the old or the
    /// new content, never a mix.
    pub fn replace(&self, name: &str, data: &[u8], perms: &Perms) -> io::Result<()> {
        check_name(name)?;
        let (temp_name, mut file) = self.create_temp(perms)?;
        let placed = write_in_pieces(&mut file, data)
            .and_then(|()| file.sync_all())
            .and_then(|()| rustix::fs::renameat(self.fd(), temp_name.as_str(), self.fd(), name).map_err(Into::into));
        if placed.is_err() {
            let _ = self.remove_file(&temp_name);
        }
        placed?;
        self.sync()
    }

    /// A new temporary file `.tmp.*` in this directory.
    pub fn create_temp(&self, perms: &Perms) -> io::Result<(String, File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!(
                ".tmp.{}.{}.{nanos:08x}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            match self.create_file(&name, perms) {
                Ok(file) => return Ok((name, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }
}

/// A file being written under a temporary name in its directory ([`Dir::create_new`]) and then
/// moved into place create-only ([`NewFile::place`]); dropped unplaced, it is removed.
pub struct NewFile {
    dir: Dir,
    /// The temporary name; `None` once placed or removed.
    temp: Option<String>,
    file: File,
}

impl NewFile {
    /// Appends `bytes` (see [`write_in_pieces`]).
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        write_in_pieces(&mut self.file, bytes)
    }

    /// The open file, for what else a writer does with it (an fsync ahead, a header written last).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Moves the file into place as `name` unless `name` exists: then returns `false` and removes
    /// the file. With `durable`, the file is fsynced first and the directory after.
    pub fn place(mut self, name: &str, durable: bool) -> io::Result<bool> {
        check_name(name)?;
        let temp = self.temp.take().expect("placed once: place consumes the file");
        let synced = if durable { self.file.sync_all() } else { Ok(()) };
        let placed = synced.and_then(|()| {
            crash_point::reached("put:synced");
            self.dir.rename_noreplace(&temp, name)
        });
        match placed {
            Ok(true) => {
                crash_point::reached("put:renamed");
                if durable {
                    self.dir.sync()?;
                }
                Ok(true)
            }
            other => {
                let _ = self.dir.remove_file(&temp);
                other
            }
        }
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = self.dir.remove_file(&temp);
        }
    }
}

/// The components of a relative path, each a plain name: no empty component, no `.` or `..`,
/// no leading `/`. Names read from a repository or manifest go through here before any use.
pub fn components(rel: &str) -> io::Result<Vec<&str>> {
    if rel.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts {
        check_name(part).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{rel}' is not a relative path of plain names (no '', '.', '..' or absolute paths)"),
            )
        })?;
    }
    Ok(parts)
}

/// A plain name: not empty, not `.` or `..`, no `/` and no NUL.
pub fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{name}' is not a plain file name"),
        ));
    }
    Ok(())
}

fn require_regular(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let stat = rustix::fs::fstat(fd)?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => Ok(()),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file ({other:?})", path.display()),
        )),
    }
}

/// The error for an open that met a symbolic link (or a non-directory on the way).
fn not_followed(e: rustix::io::Errno, path: &Path) -> io::Error {
    match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symbolic link or not a directory; pitr does not follow links here",
                path.display()
            ),
        ),
        other => other.into(),
    }
}

fn name_of(name: &CStr) -> io::Result<String> {
    name.to_str().map(str::to_string).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a UTF-8 file name", name.to_string_lossy()),
        )
    })
}

fn kind_of(file_type: FileType) -> Kind {
    match file_type {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Counts the writes it receives, and keeps what they carry.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<usize>,
        bytes: Vec<u8>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes.push(buf.len());
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_page_buffer_starts_on_a_page_and_has_its_length() {
        for len in [1, WRITE_PIECE, WRITE_PIECE + 17] {
            let mut buffer = PageBuffer::new(len);
            assert_eq!(buffer.as_ptr() as usize % PAGE, 0);
            assert_eq!(buffer.len(), len);
            assert!(buffer.iter().all(|&b| b == 0));
            buffer[len - 1] = 1;
        }
    }

    #[test]
    fn no_write_is_larger_than_a_piece_and_nothing_is_lost() {
        let data: Vec<u8> = (0..WRITE_PIECE * 3 + 17).map(|i| i as u8).collect();
        let mut out = Recorder::default();
        write_in_pieces(&mut out, &data).unwrap();
        assert_eq!(out.writes, [WRITE_PIECE, WRITE_PIECE, WRITE_PIECE, 17]);
        assert_eq!(out.bytes, data);
    }

    #[test]
    fn symlinks_below_the_root_are_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("file")).unwrap();
        let dir = Dir::open(root.path()).unwrap();
        assert!(dir.open_dir("link").is_err());
        assert!(dir.open_dir("link/sub").is_err());
        assert!(dir.create_dirs("link/sub", &Perms::private(None)).is_err());
        assert!(dir.open_file("file").is_err());
        assert!(dir.open_or_create_file("file", &Perms::private(None)).is_err());
        assert!(dir.create_file("file", &Perms::private(None)).is_err());
        dir.remove_tree("link").unwrap();
        assert!(
            outside.path().join("secret").exists(),
            "removing a link removes the link only"
        );
    }

    #[test]
    fn modes_are_exact_whatever_the_umask() {
        let root = tempfile::tempdir().unwrap();
        let dir = Dir::open(root.path()).unwrap();
        let perms = Perms::private(None);
        let sub = dir.create_dirs("a/b", &perms).unwrap();
        assert!(sub.put_new("x", b"data", &perms, true).unwrap());
        assert!(!sub.put_new("x", b"other", &perms, true).unwrap(), "create-only");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&root.path().join("a/b")), 0o700);
        assert_eq!(mode(&root.path().join("a/b/x")), 0o600);
        let mut text = String::new();
        sub.open_file("x").unwrap().unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "data");
        assert_eq!(sub.entries().unwrap().len(), 1, "no temporary file is left");
        let _ = std::fs::metadata(root.path()).unwrap().uid();
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let root = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let dir = Dir::open(root.path()).unwrap();
        let err = dir.open_file("fifo").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn names_with_dots_or_slashes_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for bad in ["/etc", "a/../b", "a//b", "./a", "a/"] {
            assert!(components(bad).is_err(), "{bad:?}");
        }
        assert_eq!(components("base/1/1259").unwrap(), ["base", "1", "1259"]);
    }
}
