//! The library's error type.
//!
//! Error policy: every error says what happened, to what, and what to do about it, in one line,
//! because archive commands' stderr lands in the server log and an operator reads it there.
//! The library never decides exit codes; the binary maps [`Error`] to them in one place.
//! "Not found" is never an error here: lookups return `Option`, so that a missing file and a
//! broken repository cannot be confused (archive-get must tell PostgreSQL which one it is).

use std::io;
use std::path::{Path, PathBuf};

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in pitr's core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed on a path.
    #[error("could not {action} {}: {source}{}", path.display(), io_hint(source))]
    Io {
        /// What was being done, as a verb phrase ("read", "create directory", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },

    /// Input that pitr refuses: a bad name, a path outside the data directory, a bad option value.
    #[error("{0}")]
    InvalidInput(String),

    /// A WAL file that is not what its name says, or not a WAL file at all.
    #[error("refusing {file}: {reason}")]
    InvalidWalFile {
        /// The file as given.
        file: String,
        /// Why it was refused.
        reason: String,
    },

    /// A file belongs to another cluster than the repository.
    #[error(
        "refusing {file}: it belongs to the cluster with system identifier {file_system_identifier}, \
         but repository {repo} holds the cluster {repo_system_identifier}; point --repo at this cluster's \
         own repository (or an empty one)"
    )]
    ForeignCluster {
        /// The file as given.
        file: String,
        /// The system identifier in the file.
        file_system_identifier: u64,
        /// The repository's root.
        repo: PathBuf,
        /// The system identifier the repository records.
        repo_system_identifier: u64,
    },

    /// A file does not match the repository's PostgreSQL version or WAL segment size.
    #[error("refusing {file}: {reason}; repository {} holds {repo_has}", repo.display())]
    RepoMismatch {
        /// The file as given.
        file: String,
        /// What the file has.
        reason: String,
        /// The repository's root.
        repo: PathBuf,
        /// What the repository records.
        repo_has: String,
    },

    /// The archive already holds a file of this name with other content: never overwritten.
    #[error(
        "{name} is already archived with different content ({stored}); nothing was overwritten. \
         Two servers may be archiving into one repository, or this file was changed after archiving: \
         compare the two copies before moving the archived one aside"
    )]
    ConflictingContent {
        /// The archived file's name.
        name: String,
        /// What differs.
        stored: String,
    },

    /// A stored object failed its integrity check.
    #[error("{what} is corrupt: {reason}; do not use it, restore it from another copy or take a new backup")]
    Corrupt {
        /// The object (its path in the repository).
        what: String,
        /// What the check found.
        reason: String,
    },

    /// The server refused, failed, or could not be reached.
    #[error("{target}: {reason}")]
    Server {
        /// Which server, user and database.
        target: String,
        /// What happened and what to do.
        reason: String,
    },

    /// A precondition of the command does not hold; nothing was changed.
    #[error("{0}")]
    Refused(String),

    /// The operator interrupted the command (SIGINT, SIGTERM): what was under way, what was
    /// cleaned up and what is left.
    #[error("interrupted: {0}")]
    Interrupted(String),

    /// An object store (S3 or compatible) failed, refused, or could not be reached, after the
    /// client's own retries. `retryable` says whether the same request may succeed later (a 5xx,
    /// 429, 408 or 409, a timeout, a failed connection): what a caller that retries looks at.
    #[error("could not {action} {location}: {reason}")]
    Remote {
        /// What was being done, as a verb ("read", "store", "list", ...).
        action: &'static str,
        /// The object or directory, as a URL (`s3://bucket/prefix/key`).
        location: String,
        /// The HTTP status the store answered with; `None` when it did not answer.
        status: Option<u16>,
        /// Whether trying again later may succeed.
        retryable: bool,
        /// What the store said (never a credential) and what to do.
        reason: String,
    },

    /// The repository is missing or unusable.
    #[error("repository {}: {reason}", path.display())]
    Repo {
        /// The repository's root.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done to which path.
    pub fn io(action: &'static str, path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        move |source| Error::Io { action, path, source }
    }
}

impl Error {
    /// Whether the same operation may succeed if tried again later: only a remote store's
    /// transient failures say so ([`Error::Remote`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Remote { retryable: true, .. })
    }
}

fn io_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::StorageFull => " (free space on that file system; nothing was stored)",
        io::ErrorKind::PermissionDenied => {
            " (check that the PostgreSQL OS user owns the repository and can write to it)"
        }
        io::ErrorKind::ReadOnlyFilesystem => " (the file system is mounted read-only)",
        _ => "",
    }
}
