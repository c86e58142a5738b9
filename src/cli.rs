//! The command line: clap definitions for the tool and each subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// pitr archives PostgreSQL WAL and base backups into a repository and recovers a cluster to any
/// point in time.
#[derive(Debug, Parser)]
#[command(name = "pitr", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes. Flags override environment variables, which override the
/// config file.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Repository directory (it must exist; pitr never creates it, so an unmounted disk is noticed).
    #[arg(long, global = true, env = "PITR_REPO", value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// Config file (TOML). Default: /etc/pitr/pitr.toml when it exists.
    #[arg(long, global = true, env = "PITR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Compression of archived files: zstd (default), gzip or none.
    #[arg(long, global = true, env = "PITR_COMPRESS", value_name = "TYPE")]
    pub compress: Option<String>,

    /// Compression level (zstd 1-19, default 3; gzip 1-9, default 6).
    #[arg(long, global = true, env = "PITR_COMPRESS_LEVEL", value_name = "N")]
    pub compress_level: Option<i32>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive one WAL file: the archive_command.
    ///
    /// postgresql.conf: archive_command = 'pitr --repo DIR archive-push %p'
    ///
    /// Validates the file (name, page header, cluster), compresses and checksums it, and exits 0
    /// only once it is durably in the repository. A file already archived with identical content
    /// succeeds; different content is refused and nothing is overwritten. Silent on success.
    ArchivePush {
        /// The file, relative to the data directory (%p) or absolute.
        path: PathBuf,
    },

    /// Restore one WAL file: the restore_command.
    ///
    /// postgresql.conf: restore_command = 'pitr --repo DIR archive-get %f %p'
    ///
    /// Exit 0: restored and verified. Exit 1: not in the archive (PostgreSQL then ends recovery
    /// or tries elsewhere). Exit 200: any error (corruption, unreadable repository, bad
    /// arguments), so PostgreSQL aborts recovery instead of promoting early.
    ArchiveGet {
        /// The WAL file name PostgreSQL asks for (%f).
        name: String,
        /// Where to write it (%p), relative to the data directory or absolute.
        dest: PathBuf,
    },
}

impl Command {
    /// Whether `args` (the raw command line) asks for archive-get. Used to pick the exit code of
    /// errors that happen before arguments are parsed.
    pub fn is_archive_get(args: &[std::ffi::OsString]) -> bool {
        args.iter().skip(1).any(|a| a == "archive-get")
    }
}
