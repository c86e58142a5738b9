//! Reading stored objects and checking each one, many at once on a thread pool: backup files
//! against their object checksum and the manifest, backup labels, and archived WAL files against
//! their checksum, their content and the repository's cluster. A failure becomes a [`Finding`]
//! that names the object; nothing stops the run.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::backup::manifest::Piece;
use crate::backup::with_verified;
use crate::codec;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::{Cluster, Repo};
use crate::wal::WalFileName;

use super::consistency::cluster_mismatch;

/// One object to read.
pub enum StoredObject<'a> {
    /// A file of the backup in `dir` (`<tier>/<id>/`), or one part of it.
    BackupFile {
        /// The backup's directory.
        dir: String,
        /// The object, as the manifest describes it.
        piece: Piece<'a>,
    },
    /// `backup_label` or `tablespace_map` of the backup in `dir`.
    Label {
        /// The backup's directory.
        dir: String,
        /// The label's file name.
        name: &'static str,
    },
    /// An archived WAL file.
    Wal {
        /// Its name.
        name: WalFileName,
        /// The stored object's size, as listed.
        stored_bytes: u64,
    },
}

impl StoredObject<'_> {
    /// The object, as alerts name it: its path in the repository.
    pub fn subject(&self) -> String {
        match self {
            StoredObject::BackupFile { dir, piece } => piece.key(dir),
            StoredObject::Label { dir, name } => format!("{dir}{name}"),
            StoredObject::Wal { name, .. } => name.to_string(),
        }
    }

    fn stored_bytes(&self) -> u64 {
        match self {
            StoredObject::BackupFile { piece, .. } => piece.stored_size,
            StoredObject::Label { .. } => 0,
            StoredObject::Wal { stored_bytes, .. } => *stored_bytes,
        }
    }
}

/// An object that failed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The object.
    pub subject: String,
    /// What is wrong with it.
    pub reason: String,
}

/// How much was read, and how fast.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ReadStats {
    /// Objects read.
    pub objects: u64,
    /// Bytes read from the repository.
    pub stored_bytes: u64,
    /// Bytes after decompression, all checksummed.
    pub original_bytes: u64,
    /// Seconds the reading took.
    pub seconds: f64,
    /// Threads that read.
    pub jobs: usize,
}

impl ReadStats {
    /// Adds another reading (of another generation) to this one.
    pub fn add(&mut self, other: &ReadStats) {
        self.objects += other.objects;
        self.stored_bytes += other.stored_bytes;
        self.original_bytes += other.original_bytes;
        self.seconds += other.seconds;
        self.jobs = self.jobs.max(other.jobs);
    }

    /// `bytes` (read, or checked) per second of reading.
    pub fn per_second(&self, bytes: u64) -> f64 {
        if self.seconds > 0.0 {
            bytes as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Reads and checks every object on `jobs` threads; `cluster` is the repository's.
pub fn read_all(
    repo: &Repo,
    objects: &[StoredObject],
    cluster: Option<&Cluster>,
    jobs: usize,
    progress: &dyn Progress,
) -> Result<(ReadStats, Vec<Finding>)> {
    let started = Instant::now();
    progress.begin(
        objects.len() as u64,
        objects.iter().map(StoredObject::stored_bytes).sum(),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|e| Error::Refused(format!("cannot start {jobs} verify threads: {e}")))?;
    let outcomes: Vec<Result<u64, Finding>> = pool.install(|| {
        objects
            .par_iter()
            .map(|object| {
                let outcome = check(repo, object, cluster).map_err(|e| Finding {
                    subject: object.subject(),
                    reason: e.to_string(),
                });
                progress.advance(object.stored_bytes());
                outcome
            })
            .collect()
    });
    progress.finish();
    let stats = ReadStats {
        objects: objects.len() as u64,
        stored_bytes: objects.iter().map(StoredObject::stored_bytes).sum(),
        original_bytes: outcomes.iter().filter_map(|o| o.as_ref().ok()).sum(),
        seconds: started.elapsed().as_secs_f64(),
        jobs: jobs.max(1),
    };
    Ok((stats, outcomes.into_iter().filter_map(Result::err).collect()))
}

/// Checks one object; returns its decoded size.
fn check(repo: &Repo, object: &StoredObject, cluster: Option<&Cluster>) -> Result<u64> {
    match object {
        StoredObject::BackupFile { dir, piece } => with_verified(repo, dir, piece, |raw| Ok(raw.len() as u64)),
        StoredObject::Label { dir, name } => check_label(repo, &format!("{dir}{name}"), name),
        StoredObject::Wal { name, .. } => match repo.get_wal(name)? {
            Some(stored) => check_wal_object(&stored, name, &repo.describe_wal(name), cluster),
            // Expired between listing and reading: gone, not corrupt.
            None => Ok(0),
        },
    }
}

fn check_label(repo: &Repo, key: &str, name: &str) -> Result<u64> {
    let what = repo.storage().describe(key);
    let stored = repo.storage().get(key)?.ok_or_else(|| Error::Corrupt {
        what: what.clone(),
        reason: format!("the backup has no {name}"),
    })?;
    let raw = codec::decode(&stored, &what)?;
    if name == "backup_label" && !raw.starts_with(b"START WAL LOCATION: ") {
        return Err(Error::Corrupt {
            what,
            reason: "not a backup label (it must start with 'START WAL LOCATION:')".into(),
        });
    }
    Ok(raw.len() as u64)
}

/// Checks one stored WAL object (`what` names it): checksum, content as its name says, and for
/// segments the cluster in the page header; returns the decoded size.
pub fn check_wal_object(stored: &[u8], name: &WalFileName, what: &str, cluster: Option<&Cluster>) -> Result<u64> {
    let raw = codec::decode(stored, what)?;
    let corrupt = |reason: String| Error::Corrupt {
        what: what.to_string(),
        reason,
    };
    let header = name.validate_content(&raw).map_err(corrupt)?;
    if let (Some(header), Some(info)) = (header, cluster) {
        let found = (header.system_identifier, header.pg_version, header.segment_size.bytes());
        if let Some(mismatch) = cluster_mismatch(found, info) {
            return Err(corrupt(format!("its page header says {mismatch}")));
        }
    }
    Ok(raw.len() as u64)
}
