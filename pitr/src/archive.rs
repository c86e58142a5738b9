//! `archive_command` and `restore_command`: pushing WAL files into the repository and getting them
//! back, with the validation and refusal rules that keep an archive trustworthy.
//!
//! Push: name → stored already (the watcher's or the WAL receiver's marker)? → validate the first
//! page (page header, cluster, version, segment size) → read and encode in one pass → create-only
//! put → already archived? (identical → done, different → refuse). Get: name → read object
//! (while the generation is looked up) → decode and verify → write the destination. This is the hot path: nothing here does work that
//! the outcome does not need.

use std::fs;
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use crate::codec::{self, Codec, ObjectHeader, ObjectStream};
use crate::crash_point;
use crate::error::{Error, Result};
use crate::fsio::Dir;
use crate::prefetch::{self, Prefetched, Taken};
use crate::repo::{Cluster, Repo};
use crate::spool::Spool;
use crate::storage::PutOutcome;
use crate::stream;
use crate::wal::{LongPageHeader, SegmentName, WalFileName};

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The file is now durably in the repository.
    Stored,
    /// The repository already held identical content, durably.
    AlreadyArchived,
}

/// What a get did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetOutcome {
    /// The file was written to the destination; its size.
    Restored(u64),
    /// The file was written to the destination from the repository, because its prefetched copy
    /// in the spool was damaged (and is deleted now): its size, and the warning for the log.
    RestoredPastDamagedPrefetch {
        /// The size.
        size: u64,
        /// Which spool file was damaged, how, and that the repository's copy was restored.
        warning: String,
    },
    /// The repository does not hold the file.
    NotFound,
}

/// Where an archive command runs: the data directory (PostgreSQL runs archive and restore
/// commands in it) and its spool, when known.
#[derive(Debug, Clone, Default)]
pub struct Site {
    /// The data directory: paths must lie inside it.
    pub data_dir: Option<PathBuf>,
    /// The local spool (watcher markers, prefetched files).
    pub spool: Option<Spool>,
}

impl Site {
    /// The current directory when it is a data directory, with its spool (`spool_dir`, or the
    /// default beside the data directory).
    pub fn current(spool_dir: Option<&Path>) -> Site {
        let data_dir = current_data_dir();
        let spool = spool_dir
            .map(Path::to_path_buf)
            .or_else(|| data_dir.as_deref().map(Spool::default_for));
        Site {
            data_dir,
            spool: spool.map(Spool::at),
        }
    }
}

/// Archives the file at `path` into the repository's current generation (or the one `repo` is
/// pinned to). A relative `path` is taken relative to the current directory, which is the data
/// directory when PostgreSQL runs the command; when the site's data directory is known, the
/// file must lie inside it.
pub fn push(repo: &Repo, codec: &Codec, path: &Path, site: &Site) -> Result<PushOutcome> {
    let path = inside_data_dir(path, site.data_dir.as_deref())?;
    // One generation for the whole push: an upgrade-repo meanwhile cannot split it.
    let repo = &repo.pin()?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let name = WalFileName::parse(file_name)?;
    if let Some(spool) = &site.spool {
        // The watcher stored exactly this file durably already: nothing to open, read or compare.
        // (lstat: a link or a FIFO never matches a marker, which names a regular file pushed.)
        let meta = fs::symlink_metadata(&path).map_err(Error::io("read", &path))?;
        if spool.was_pushed(file_name, &meta) && repo.has_wal(&name)? {
            return Ok(PushOutcome::AlreadyArchived);
        }
        // The WAL receiver stored the same bytes from the stream.
        if stream::stored_by_receiver(repo, spool, &name, &path)? {
            return Ok(PushOutcome::AlreadyArchived);
        }
    }
    let mut file = open_wal_file(&path, file_name)?;
    let object = read_validated(repo, codec, &name, &path, &mut file)?;
    crash_point::reached("push:validated");
    // No look before the put: the create-only put tells an existing object (one request to an
    // object store, not two), which is then compared.
    match repo.put_wal(&name, &object)? {
        PutOutcome::Created => Ok(PushOutcome::Stored),
        PutOutcome::AlreadyExists if !repo.can_decrypt()? => compare_sealed(repo, &name, &object),
        PutOutcome::AlreadyExists => {
            let mut raw = Vec::new();
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_end(&mut raw))
                .map_err(Error::io("read", &path))?;
            compare_with_archived(repo, &name, &raw)
        }
    }
}

/// How much of a segment is read before the rest, to validate its first page header.
const SEGMENT_HEAD: u64 = 8192;

/// Reads the file PostgreSQL handed over, validates it (name, page header, cluster) and encodes
/// it into the object to store. A segment is validated from its first page, then read, checked
/// and compressed in one pass (on every core: PostgreSQL waits for this call), so it is never
/// held whole; the other files are small and read whole.
fn read_validated(repo: &Repo, codec: &Codec, name: &WalFileName, path: &Path, file: &mut fs::File) -> Result<Vec<u8>> {
    let read_error = Error::io("read", path);
    let Some(segment) = name.segment_name() else {
        let mut raw = Vec::new();
        file.read_to_end(&mut raw).map_err(read_error)?;
        validate(repo, name, path, &raw)?;
        return Ok(codec.encode(&raw));
    };
    let len = file.metadata().map_err(Error::io("read", path))?.len();
    let mut head = Vec::new();
    (&mut *file)
        .take(SEGMENT_HEAD)
        .read_to_end(&mut head)
        .map_err(Error::io("read", path))?;
    check_segment_start(repo, segment, &head, len, &path.display().to_string())?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4) as u32);
    let object = codec.encode_from(&mut head.chain(file), threads).map_err(read_error)?;
    let read = ObjectHeader::parse(&object, &path.display().to_string())?.raw_len;
    if read != len {
        return Err(Error::InvalidWalFile {
            file: path.display().to_string(),
            reason: format!("it changed while it was read: {len} bytes, then {read}; PostgreSQL retries it"),
        });
    }
    Ok(object)
}

/// Opens the file PostgreSQL hands to archive_command: a regular file, not a link to one, and
/// never a FIFO that would block the archiver forever.
pub(crate) fn open_wal_file(path: &Path, file_name: &str) -> Result<fs::File> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let dir = Dir::open(parent).map_err(Error::io("open", parent))?;
    dir.open_file(file_name)
        .map_err(Error::io("read", path))?
        .ok_or_else(|| Error::io("read", path)(std::io::Error::from(std::io::ErrorKind::NotFound)))
}

/// Validates a segment to store from its first bytes `head` and its length `len`: its page
/// header, and its cluster (binding the repository to it on first use); `file` names it in
/// errors.
pub(crate) fn check_segment_start(repo: &Repo, segment: SegmentName, head: &[u8], len: u64, file: &str) -> Result<()> {
    let header = LongPageHeader::validate_start(segment, head, len).map_err(|reason| Error::InvalidWalFile {
        file: file.to_string(),
        reason,
    })?;
    check_pushed(repo, &header, file)
}

/// Restores the archived file `name` of the repository's current generation (or the one `repo`
/// is pinned to) to `dest` (relative to the current directory, inside the site's data directory
/// when that is known), verifying its checksum on the way. A file the prefetcher left in the
/// spool is verified and moved into place instead.
pub fn get(repo: &Repo, name: &str, dest: &Path, site: &Site) -> Result<GetOutcome> {
    let name = WalFileName::parse(name)?;
    let dest = inside_data_dir(dest, site.data_dir.as_deref())?;
    // Without a prefetched copy to take, the file is read while the generation is looked up.
    let (repo, read) = match &site.spool {
        Some(spool) if prefetch::may_hold(spool, &name) => (repo.pin()?, None),
        _ => {
            let (pinned, object) = repo.pin_and_get_wal(&name)?;
            (pinned, Some(object))
        }
    };
    let repo = &repo;
    // An empty directory is not an empty archive: it may be a file system that is not mounted,
    // and answering "not found" there would let PostgreSQL end recovery early.
    let info = repo.info()?.ok_or_else(|| Error::Repo {
        path: repo.location().into(),
        reason: "has no repo.json: nothing was ever archived here, or the repository's file system is not \
                 mounted; check --repo"
            .into(),
    })?;
    let mut damaged = None;
    if let Some(prefetched) = site.spool.as_ref().map(|s| Prefetched::new(s, repo, &info)) {
        match prefetched.take(&name, &dest)? {
            Taken::Moved(size) => return Ok(GetOutcome::Restored(size)),
            Taken::Damaged { path, reason } => damaged = Some((path, reason)),
            Taken::Absent => {}
        }
    }
    // The end of the archive: the WAL receiver's snapshot of the segment it was receiving, if
    // any, padded to a whole segment (PostgreSQL replays its records and ends there).
    let read = match read {
        Some(object) => object,
        None => repo.get_wal_reader(&name)?,
    };
    let (object, pad_to) = match (read, name) {
        (Some(object), _) => (Some(object), None),
        (None, WalFileName::Segment(segment)) => (
            repo.newest_stream_snapshot(segment)?
                .map(|snapshot| Box::new(std::io::Cursor::new(snapshot)) as Box<dyn BufRead + Send>),
            Some(u64::from(info.wal_segment_size)),
        ),
        (None, _) => (None, None),
    };
    let Some(object) = object else {
        return match damaged {
            // The prefetcher found it in the repository: "absent" would end recovery early.
            Some((path, reason)) => Err(Error::Repo {
                path: repo.location().into(),
                reason: format!(
                    "no longer holds {name}, and its prefetched copy {} was damaged ({reason}); check the repository",
                    path.display()
                ),
            }),
            None => absent(repo),
        };
    };
    let restored = restore_to(repo, &name, object, info, &dest, pad_to);
    if restored.is_err() {
        // PostgreSQL does not read the file after an error exit, but leave nothing half-written.
        let _ = fs::remove_file(&dest);
    }
    let size = restored?;
    Ok(match damaged {
        Some((path, reason)) => GetOutcome::RestoredPastDamagedPrefetch {
            size,
            warning: format!(
                "the prefetched copy {} was damaged ({reason}) and is deleted; restored {name} from the repository \
                 instead",
                path.display()
            ),
        },
        None => GetOutcome::Restored(size),
    })
}

/// "Not archived", once the WAL archive is known to be there: a missing, emptied or unmounted
/// `wal/` would otherwise answer "absent" for every file, and PostgreSQL would end recovery early.
fn absent(repo: &Repo) -> Result<GetOutcome> {
    if repo.wal_archive_present()? {
        return Ok(GetOutcome::NotFound);
    }
    Err(Error::Repo {
        path: repo.location().into(),
        reason: "has repo.json but its wal/ directory is missing, empty or not mounted (no wal/.pitr-archive): \
                 nothing can be restored from it; mount it or restore it, then retry"
            .into(),
    })
}

/// Decodes `object` straight into `dest` while it is read, 128 KiB at a time (no buffer the size
/// of a segment), checking the segment's page header and cluster before the first byte is
/// written; the size and checksum are verified at the end. With `pad_to` (the start of a segment, from a WAL
/// receiver's snapshot), the file is extended with zeros to that size.
fn restore_to(
    repo: &Repo,
    name: &WalFileName,
    object: Box<dyn BufRead + Send>,
    info: Cluster,
    dest: &Path,
    pad_to: Option<u64>,
) -> Result<u64> {
    let what = repo.describe_wal(name);
    let object = ObjectStream::open(object, &what)?;
    let stored = object.header.raw_len;
    if pad_to.is_some_and(|size| stored > size) {
        return Err(Error::Corrupt {
            what,
            reason: format!("a snapshot of {stored} bytes is longer than a segment"),
        });
    }
    let len = pad_to.unwrap_or(stored);
    let mut file = fs::File::create(dest).map_err(Error::io("create", dest))?;
    let mut first = true;
    let written = codec::decode_chunks_pipelined(object, &what, &mut |chunk| {
        if std::mem::take(&mut first) {
            check_restored(repo, name, (chunk, len), info, &what)?;
        }
        file.write_all(chunk).map_err(Error::io("write", dest))
    })?;
    if first {
        // Empty content: no chunk was handed over, and an empty segment must still be refused.
        check_restored(repo, name, (&[], 0), info, &what)?;
    }
    if let Some(size) = pad_to {
        file.set_len(size).map_err(Error::io("write", dest))?;
        return Ok(size);
    }
    Ok(written)
}

/// Refuses files that are not what their name says, or that belong to another cluster.
fn validate(repo: &Repo, name: &WalFileName, path: &Path, raw: &[u8]) -> Result<()> {
    let header = name.validate_content(raw).map_err(|reason| Error::InvalidWalFile {
        file: path.display().to_string(),
        reason,
    })?;
    match header {
        Some(header) => check_pushed(repo, &header, &path.display().to_string()),
        // A history or backup history file does not say which cluster wrote it: it is only
        // stored in a repository that knows its cluster already.
        None if repo.info()?.is_none() => Err(Error::Refused(format!(
            "refusing to archive {} into repository {}: the repository has no repo.json yet, and a {} does \
             not tell which cluster it belongs to. Run `pitr create-repo` once (as after promoting a standby \
             that archives into a new repository); PostgreSQL retries this file afterwards",
            path.display(),
            repo.location(),
            if matches!(name, WalFileName::History(_)) {
                "timeline history file"
            } else {
                "backup history file"
            }
        ))),
        None => Ok(()),
    }
}

/// Checks a segment restored from the archive or the spool, from its first bytes `start` and its
/// length: its page header, and its cluster.
pub(crate) fn check_restored(
    repo: &Repo,
    name: &WalFileName,
    (start, len): (&[u8], u64),
    info: Cluster,
    what: &str,
) -> Result<()> {
    if let Some(segment) = name.segment_name() {
        let header = LongPageHeader::validate_start(segment, start, len).map_err(|reason| Error::Corrupt {
            what: what.to_string(),
            reason,
        })?;
        check_restored_cluster(repo, &header, what, info)?;
    }
    Ok(())
}

/// The cluster whose WAL `header` starts.
fn cluster_of(header: &LongPageHeader) -> Cluster {
    Cluster {
        pg_version: header.pg_version,
        system_identifier: header.system_identifier,
        wal_segment_size: header.segment_size.bytes(),
    }
}

/// Binds the repository to the pushed segment's cluster on first use, and afterwards refuses
/// WAL of any other cluster than the generation's (after a major upgrade, telling the operator
/// to run upgrade-repo).
fn check_pushed(repo: &Repo, header: &LongPageHeader, file: &str) -> Result<()> {
    let found = cluster_of(header);
    let recorded = match repo.info()? {
        Some(info) => info,
        None => repo.claim(found)?,
    };
    if recorded == found {
        return Ok(());
    }
    let generations = repo.generations()?.ok_or_else(|| Error::Repo {
        path: repo.location().into(),
        reason: "lost its repo.json while a file was archived; check who changed the repository".into(),
    })?;
    Err(Error::Refused(format!(
        "refusing {file} for repository {}: {}",
        repo.location(),
        generations.refusal(found, &repo.location())
    )))
}

/// A restored segment must be of the generation's cluster: same system identifier, major
/// version and segment size.
fn check_restored_cluster(repo: &Repo, header: &LongPageHeader, file: &str, recorded: Cluster) -> Result<()> {
    let found = cluster_of(header);
    if recorded.system_identifier != found.system_identifier {
        return Err(Error::ForeignCluster {
            file: file.to_string(),
            file_system_identifier: found.system_identifier,
            repo: repo.location().into(),
            repo_system_identifier: recorded.system_identifier,
        });
    }
    let mismatch = |reason: String, repo_has: String| Error::RepoMismatch {
        file: file.to_string(),
        reason,
        repo: repo.location().into(),
        repo_has,
    };
    if recorded.pg_version != found.pg_version {
        return Err(mismatch(
            format!("it is PostgreSQL {} WAL", found.pg_version),
            format!("PostgreSQL {} WAL in this generation", recorded.pg_version),
        ));
    }
    if recorded.wal_segment_size != found.wal_segment_size {
        return Err(mismatch(
            format!("its segment size is {} bytes", found.wal_segment_size),
            format!("{}-byte segments", recorded.wal_segment_size),
        ));
    }
    Ok(())
}

/// The repository holds `name` already: identical content is success (PostgreSQL re-archives
/// after a crash), anything else is refused and nothing is touched.
pub(crate) fn compare_with_archived(repo: &Repo, name: &WalFileName, raw: &[u8]) -> Result<PushOutcome> {
    let what = repo.describe_wal(name);
    let object = repo.get_wal(name)?.ok_or_else(|| Error::Repo {
        path: repo.location().into(),
        reason: format!("{what} vanished while it was being compared; retry"),
    })?;
    let stored = ObjectHeader::parse(&object, &what)?;
    let ours = ObjectHeader::of(raw, stored.compression);
    if stored.raw_len != ours.raw_len || stored.raw_crc != ours.raw_crc {
        return Err(Error::ConflictingContent {
            name: name.to_string(),
            stored: format!(
                "archived: {} bytes, CRC-32 {:08x}; this file: {} bytes, CRC-32 {:08x}",
                stored.raw_len, stored.raw_crc, ours.raw_len, ours.raw_crc
            ),
        });
    }
    // Equal size and CRC: compare every byte, so a CRC collision can never pass as "identical".
    if codec::decode(&object, &what)? != raw {
        return Err(Error::ConflictingContent {
            name: name.to_string(),
            stored: "same size and CRC-32, different bytes".into(),
        });
    }
    // "Already archived" is success only once that copy is durable (it may be from a crashed push).
    repo.sync_wal(name)?;
    Ok(PushOutcome::AlreadyArchived)
}

/// [`compare_with_archived`] on a host that only writes an encrypted repository (it holds the
/// recipients, not an identity): the stored object's public header records the length and
/// CRC-32C of what was encrypted, which must be exactly `object`, the object this push would
/// store (the same file, compressed the same way, gives the same object).
fn compare_sealed(repo: &Repo, name: &WalFileName, object: &[u8]) -> Result<PushOutcome> {
    let what = repo.describe_wal(name);
    let stored = repo.wal_envelope(name)?.ok_or_else(|| Error::Repo {
        path: repo.location().into(),
        reason: format!("{what} vanished while it was being compared; retry"),
    })?;
    if stored.plain_len != object.len() as u64 || stored.plain_crc != crc32c::crc32c(object) {
        return Err(Error::ConflictingContent {
            name: name.to_string(),
            stored: "the encrypted copy differs in length or CRC-32C from this file compressed as configured; \
                     this host holds no identity to compare the contents (run archive-push once with \
                     `identity_file` set, or compare the two by hand)"
                .into(),
        });
    }
    repo.sync_wal(name)?;
    Ok(PushOutcome::AlreadyArchived)
}

/// Resolves `path` against the current directory and, when `data_dir` is known, refuses a path
/// that leads outside it. The check is lexical, so a `pg_wal` that is a symlink to another
/// disk (initdb --waldir) is still inside.
fn inside_data_dir(path: &Path, data_dir: Option<&Path>) -> Result<PathBuf> {
    let cwd = std::env::current_dir().map_err(Error::io("find", "the current directory"))?;
    let resolved = normalize(&cwd.join(path));
    match data_dir.map(|d| normalize(&cwd.join(d))) {
        Some(root) if !resolved.starts_with(&root) => Err(Error::InvalidInput(format!(
            "refusing {}: it is outside the data directory {}",
            path.display(),
            root.display()
        ))),
        _ => Ok(resolved),
    }
}

/// Removes `.` and resolves `..` without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The data directory the command runs in, if it runs in one: PostgreSQL starts archive and
/// restore commands with the data directory as the current directory.
pub fn current_data_dir() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.join("PG_VERSION").is_file().then_some(cwd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_dots_lexically() {
        assert_eq!(
            normalize(Path::new("/data/pg_wal/../pg_wal/./X")),
            PathBuf::from("/data/pg_wal/X")
        );
        assert_eq!(
            normalize(Path::new("/data/pg_wal/../../etc/passwd")),
            PathBuf::from("/etc/passwd")
        );
    }

    #[test]
    fn an_archived_segment_with_empty_content_is_corrupt_and_leaves_no_file() {
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(repo_dir.path()).unwrap();
        repo.claim(Cluster {
            pg_version: 15,
            system_identifier: 1,
            wal_segment_size: 16 << 20,
        })
        .unwrap();
        let name = WalFileName::parse("000000010000000000000001").unwrap();
        repo.put_wal(&name, &Codec::default().encode(b"")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("RECOVERYXLOG");
        let site = Site {
            data_dir: None,
            spool: None,
        };
        let err = get(&repo, &name.to_string(), &dest, &site).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn paths_outside_the_data_dir_are_refused() {
        let err = inside_data_dir(Path::new("/data/pg_wal/../../etc/x"), Some(Path::new("/data"))).unwrap_err();
        assert!(err.to_string().contains("outside the data directory"), "{err}");
        assert!(inside_data_dir(Path::new("/data/pg_wal/X"), Some(Path::new("/data"))).is_ok());
        assert!(inside_data_dir(Path::new("/elsewhere/X"), None).is_ok());
    }
}
