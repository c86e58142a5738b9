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

    /// Take a base backup of a running server into a tier (hourly, daily or weekly).
    ///
    /// Runs on the database host: pitr reads the data directory itself, in parallel, while the
    /// server is in backup mode (pg_backup_start/pg_backup_stop on one held connection). The
    /// backup exists once its manifest is written; then expire runs for the tier.
    Backup {
        /// The tier.
        #[arg(long, default_value = "hourly", value_parser = ["hourly", "daily", "weekly"])]
        tier: String,
        /// The data directory (default: the server's data_directory).
        #[arg(long, value_name = "DIR")]
        pgdata: Option<PathBuf>,
        #[command(flatten)]
        connection: ConnectionArgs,
        /// Ask for an immediate checkpoint instead of waiting for a spread one.
        #[arg(long)]
        fast: bool,
        /// Files copied at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Do not run expire for the tier afterwards.
        #[arg(long)]
        no_expire: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Restore a backup's files into a new data directory (no recovery settings).
    Restore {
        /// The new data directory: absent or empty (see --force).
        #[arg(long, value_name = "DIR")]
        pgdata: PathBuf,
        /// The backup id (default: the newest backup).
        #[arg(long, value_name = "ID")]
        backup: Option<String>,
        /// Wipe a non-empty data directory first (refused while a postmaster.pid is there).
        #[arg(long)]
        force: bool,
        /// Files written at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },

    /// List backups with their WAL status, and the archived WAL per timeline.
    List {
        /// Which tier to show.
        #[arg(default_value = "all", value_parser = ["hourly", "daily", "weekly", "all"])]
        tier: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Delete backups beyond each tier's count, and the WAL no retained backup needs.
    Expire {
        /// Only show what would be deleted, and why.
        #[arg(long)]
        dry_run: bool,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How to reach the server: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE,
/// PGPASSWORD, PGPASSFILE), overridden by --dbname.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Connection string, keyword/value ("host=/run/postgresql port=5432") or URI, as psql takes it.
    #[arg(long, short = 'd', value_name = "CONNINFO")]
    pub dbname: Option<String>,
}

impl Command {
    /// Whether `args` (the raw command line) asks for archive-get. Used to pick the exit code of
    /// errors that happen before arguments are parsed.
    pub fn is_archive_get(args: &[std::ffi::OsString]) -> bool {
        args.iter().skip(1).any(|a| a == "archive-get")
    }
}
