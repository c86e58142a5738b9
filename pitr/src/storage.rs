//! Where the repository's bytes live: the [`Storage`] trait and its backends.
//!
//! The trait is deliberately narrow, so that object storage (S3 and friends, which have no
//! atomic rename) can implement it later: objects are written whole and only if absent, never
//! replaced. Keys are `/`-separated relative paths such as `wal/0000000100000000/<name>`.
//! Every backend must pass the conformance suite in `storage/conformance.rs` (public with the
//! `conformance` feature).
//!
//! Backends: [`LocalStorage`], a directory on local disk, and [`S3Storage`], a bucket of Amazon
//! S3 or an S3-compatible server through the `object_store` crate, which meets the contract
//! with conditional puts (`If-None-Match: *`) and lease objects for locks (see `storage/s3.rs`).

mod local;
mod location;
pub mod s3;

pub use local::LocalStorage;
pub use location::Location;
pub use s3::{S3Config, S3Storage};

use crate::error::Result;

/// What [`Storage::head`] tells about an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// When it was written (for WAL: when it was archived).
    pub modified: std::time::SystemTime,
}

/// One entry of [`Storage::list_meta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its name, as [`Storage::list`] gives it (a directory's ends in `/`).
    pub name: String,
    /// The object's size and time; `None` for a directory, and for an entry that is no plain
    /// object (of the local backend: a link or a special file), which [`Storage::head`] refuses.
    pub meta: Option<ObjectMeta>,
}

/// What [`Storage::put_if_absent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was created and is durable.
    Created,
    /// An object with this key already existed; it was left untouched and is durable.
    AlreadyExists,
}

/// A place to keep objects.
///
/// Contract, for every backend:
/// - `put_if_absent` is atomic and create-only: readers see either no object or the whole object,
///   never a partial one; of concurrent puts of one key exactly one returns `Created`, the others
///   `AlreadyExists`; an existing object is never modified. It returns only once the object (new
///   or existing) survives a crash or power loss.
/// - `get` returns `Ok(None)` only when the object is truly absent. Any other failure (permission,
///   I/O, an unreachable store) is an `Err`, never `None`.
pub trait Storage: Send + Sync {
    /// Stores `data` under `key` unless an object with that key exists.
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome>;

    /// Like [`Storage::put_if_absent`], except that the object need only be durable once
    /// [`Storage::sync_all_under`] of a directory above it has returned. For many objects
    /// written before one commit point: a backup's files, made durable before its manifest is
    /// written. The default is the durable put.
    fn put_if_absent_deferred(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        self.put_if_absent(key, data)
    }

    /// Makes every object under `dir` (a prefix ending in `/`) durable, with the directories
    /// that name them; see [`Storage::put_if_absent_deferred`].
    fn sync_all_under(&self, _dir: &str) -> Result<()> {
        Ok(())
    }

    /// Starts an object under `key` that is written in pieces as they come and created
    /// create-only by [`ObjectWriter::finish`], with the contract of
    /// [`Storage::put_if_absent`]: nothing is visible under `key` before `finish` returns, and a
    /// writer dropped unfinished leaves nothing behind. For an object produced slowly (the WAL
    /// receiver compresses a segment while PostgreSQL writes it): a backend that can write ahead
    /// does, so that `finish` has little left to do. The default keeps the pieces in memory and
    /// puts them whole.
    fn put_writer(&self, key: &str) -> Result<Box<dyn ObjectWriter + '_>> {
        Ok(buffered_writer(self, key))
    }

    /// Makes an existing object durable (it may come from a put that crashed before it was
    /// reported). Used before reporting that content already stored is safe.
    fn sync(&self, key: &str) -> Result<()>;

    /// Reads the whole object, or `None` when there is no object with that key.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// The object as a reader of its bytes front to back, or `None` when there is no object with
    /// that key (the same answer as [`Storage::get`]): for a large object read once, so that it is
    /// used while it arrives and is never held whole. A failure after the object was found (a
    /// connection that drops mid-body, a body cut short) is a read error carrying the storage's
    /// error in a [`crate::codec::SourceError`]; a reader never ends early without one. The
    /// default reads the whole object with [`Storage::get`].
    fn get_reader(&self, key: &str) -> Result<Option<Box<dyn std::io::BufRead + Send>>> {
        Ok(self
            .get(key)?
            .map(|bytes| Box::new(std::io::Cursor::new(bytes)) as Box<dyn std::io::BufRead + Send>))
    }

    /// `len` bytes of the object from byte `start` on, or `None` when there is no object with
    /// that key; a range past the object's end is an error. For the packs of deduplicated
    /// backups, whose frames are read by range. The default reads the whole object.
    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let Some(bytes) = self.get(key)? else {
            return Ok(None);
        };
        range_of(&bytes, start, len)
            .map(|range| Some(range.to_vec()))
            .ok_or_else(|| crate::Error::Corrupt {
                what: self.describe(key),
                reason: format!(
                    "holds {} bytes, not the {len} bytes from {start} on that were asked for",
                    bytes.len()
                ),
            })
    }

    /// Size and modification time of an object, or `None` when it does not exist.
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// The names of the objects and "directories" directly under `dir` (a key prefix ending in
    /// `/`, or `""` for the top), sorted; directory names end in `/`. A missing `dir` is empty.
    fn list(&self, dir: &str) -> Result<Vec<String>>;

    /// [`Storage::list`] with each object's size and modification time, in one listing rather
    /// than a [`Storage::head`] per object: for directories of many objects (the WAL archive).
    /// An object deleted between listing and looking is left out. The default lists, then heads
    /// each object; a backend whose listing tells sizes and times overrides it. Times agree
    /// with `head` to within a second (S3 gives milliseconds in a listing, seconds in a head).
    fn list_meta(&self, dir: &str) -> Result<Vec<Listed>> {
        let mut listed = Vec::new();
        for name in self.list(dir)? {
            let meta = match name.ends_with('/') {
                true => None,
                false => match self.head(&format!("{dir}{name}"))? {
                    Some(meta) => Some(meta),
                    None => continue,
                },
            };
            listed.push(Listed { name, meta });
        }
        Ok(listed)
    }

    /// Deletes an object; deleting an absent object is not an error.
    fn delete(&self, key: &str) -> Result<()>;

    /// Deletes every object under `dir` (a prefix ending in `/`).
    fn delete_all(&self, dir: &str) -> Result<()> {
        for name in self.list(dir)? {
            let key = format!("{dir}{name}");
            if name.ends_with('/') {
                self.delete_all(&key)?;
            } else {
                self.delete(&key)?;
            }
        }
        Ok(())
    }

    /// Takes the named exclusive lock, or returns `None` when another process holds it. The lock
    /// is held until the guard is dropped. A local lock is released by the system when its holder
    /// dies, so a crashed holder never leaves a stale lock behind; an object store's lease outlives
    /// a holder that died or lost the store until it runs out (see `S3Storage::try_lock`).
    fn try_lock(&self, name: &str) -> Result<Option<LockGuard>>;

    /// Free bytes for new objects, when the backend can tell.
    fn available_bytes(&self) -> Result<Option<u64>>;

    /// A human-readable location of `key`, for messages.
    fn describe(&self, key: &str) -> String;

    /// The directory on this host that holds the objects, for a backend that keeps them on a
    /// local file system (a restore must not overlap it); `None` for a remote store.
    fn local_root(&self) -> Option<&std::path::Path> {
        None
    }
}

/// An object being written in pieces: see [`Storage::put_writer`].
pub trait ObjectWriter: Send {
    /// Appends `bytes` to the object.
    fn write(&mut self, bytes: &[u8]) -> Result<()>;

    /// Starts making what was written so far durable, where the backend can, without waiting for
    /// it, so that [`ObjectWriter::finish`] waits for less. Nothing becomes visible, and nothing is
    /// promised durable before `finish`. The default does nothing.
    fn write_ahead(&mut self) -> Result<()> {
        Ok(())
    }

    /// How many bytes were written.
    fn written(&self) -> u64;

    /// Replaces the object's first `head.len()` bytes (written already) with `head`, then
    /// creates the object create-only and durably, as [`Storage::put_if_absent`] does: for a
    /// header known only at the end (a checksum, a length).
    fn finish(self: Box<Self>, head: &[u8]) -> Result<PutOutcome>;
}

/// An [`ObjectWriter`] as an [`std::io::Write`], for an encoder that writes into it (its errors
/// come back wrapped in `io::Error`).
pub struct WriteInto<'a>(pub Box<dyn ObjectWriter + 'a>);

impl std::io::Write for WriteInto<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes).map_err(std::io::Error::other)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// [`Storage::put_writer`]'s default, for `store`: the pieces in memory, put whole with
/// `store.put_if_absent` at the end.
pub(crate) fn buffered_writer<'a, S: Storage + ?Sized>(store: &'a S, key: &str) -> Box<dyn ObjectWriter + 'a> {
    Box::new(BufferedWriter {
        store,
        key: key.to_string(),
        bytes: Vec::new(),
    })
}

/// See [`buffered_writer`].
struct BufferedWriter<'a, S: Storage + ?Sized> {
    store: &'a S,
    key: String,
    bytes: Vec<u8>,
}

impl<S: Storage + ?Sized> ObjectWriter for BufferedWriter<'_, S> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn finish(mut self: Box<Self>, head: &[u8]) -> Result<PutOutcome> {
        patch_head(&mut self.bytes, head)?;
        self.store.put_if_absent(&self.key, &self.bytes)
    }
}

/// Overwrites the first bytes of `bytes` with `head`, which must not be longer.
fn patch_head(bytes: &mut [u8], head: &[u8]) -> Result<()> {
    check_head_fits(head, bytes.len() as u64)?;
    bytes[..head.len()].copy_from_slice(head);
    Ok(())
}

/// Refuses a head (see [`ObjectWriter::finish`]) longer than the `written` bytes it replaces.
fn check_head_fits(head: &[u8], written: u64) -> Result<()> {
    if head.len() as u64 > written {
        return Err(crate::Error::Refused(format!(
            "an object's head of {} bytes is longer than the {written} bytes written",
            head.len()
        )));
    }
    Ok(())
}

/// `len` bytes of `bytes` from `start` on, when it holds them.
fn range_of(bytes: &[u8], start: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(start).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

/// Holds a lock taken with [`Storage::try_lock`] until dropped.
pub struct LockGuard(#[allow(dead_code)] Box<dyn Send>);

/// Checks that `store` refuses a second create-only put of `key` (some S3-compatible stores
/// ignore `If-None-Match: *` and overwrite, which one put cannot tell): two puts, a read, a
/// delete. `create-repo` runs it once, not every operation.
pub fn check_create_only(store: &dyn Storage, key: &str) -> Result<()> {
    if store.put_if_absent(key, b"first")? == PutOutcome::AlreadyExists {
        return Err(crate::Error::Refused(format!(
            "{} already exists: it is where pitr checks that the store honours create-only writes; \
             delete it and try again",
            store.describe(key)
        )));
    }
    let second = store.put_if_absent(key, b"second")?;
    let kept = store.get(key)?;
    store.delete(key)?;
    if second != PutOutcome::AlreadyExists || kept.as_deref() != Some(&b"first"[..]) {
        return Err(crate::Error::Refused(format!(
            "{} replaced an existing object although the put was create-only (If-None-Match: *); pitr \
             needs create-only writes and cannot use this store",
            store.describe("")
        )));
    }
    Ok(())
}

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that ignores the create-only condition: every put replaces (as some
    /// S3-compatible servers do with `If-None-Match: *`).
    struct Overwriting(LocalStorage);

    impl Storage for Overwriting {
        fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
            self.0.delete(key)?;
            self.0.put_if_absent(key, data)
        }
        fn put_if_absent_deferred(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
            self.put_if_absent(key, data)
        }
        fn sync_all_under(&self, dir: &str) -> Result<()> {
            self.0.sync_all_under(dir)
        }
        fn sync(&self, key: &str) -> Result<()> {
            self.0.sync(key)
        }
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
            self.0.get(key)
        }
        fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
            self.0.head(key)
        }
        fn list(&self, dir: &str) -> Result<Vec<String>> {
            self.0.list(dir)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.0.delete(key)
        }
        fn try_lock(&self, name: &str) -> Result<Option<LockGuard>> {
            self.0.try_lock(name)
        }
        fn available_bytes(&self) -> Result<Option<u64>> {
            self.0.available_bytes()
        }
        fn describe(&self, key: &str) -> String {
            self.0.describe(key)
        }
    }

    #[test]
    fn the_create_only_check_refuses_a_store_that_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let honest = LocalStorage::open(dir.path()).unwrap();
        check_create_only(&honest, "locks/probe").unwrap();
        assert_eq!(honest.get("locks/probe").unwrap(), None, "the probe is deleted");
        let err = check_create_only(&Overwriting(honest.clone()), "locks/probe").unwrap_err();
        assert!(err.to_string().contains("cannot use this store"), "{err}");
        honest.put_if_absent("locks/probe", b"left over").unwrap();
        let err = check_create_only(&honest, "locks/probe").unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
    }
}
