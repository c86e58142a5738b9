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
#[derive(Debug, Clone, Args)]
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

    /// Spool directory for the watcher's markers and prefetched WAL (default: beside the data
    /// directory, <pgdata>.pitr-spool; never inside pg_wal).
    #[arg(long, global = true, env = "PITR_SPOOL", value_name = "DIR")]
    pub spool: Option<PathBuf>,
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

    /// Archive WAL files the moment PostgreSQL marks them ready, in parallel.
    ///
    /// Keep archive_command = 'pitr --repo DIR archive-push %p': for a file the watcher stored,
    /// it returns at once. SIGTERM finishes the files in flight and exits; SIGHUP reloads the
    /// settings. Run it as the PostgreSQL OS user.
    Watch {
        /// The data directory.
        #[arg(long, value_name = "DIR")]
        pgdata: PathBuf,
        /// Files archived at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
    },

    /// The resident service: the watcher, scheduled backups (hourly/daily/weekly, expire after
    /// each) and verification, and /metrics and /health over HTTP.
    ///
    /// Jobs come from `[schedule]` in the config file (cron patterns; defaults: hourly at :00,
    /// daily at 00:00, weekly on Sunday, verify on Sunday 03:30); they never overlap, and a failed
    /// job is logged and counted while the daemon keeps running. Backups connect with the libpq
    /// environment or `dbname` from the config file.
    Daemon {
        /// The data directory.
        #[arg(long, value_name = "DIR")]
        pgdata: PathBuf,
        /// Address for /metrics and /health (default: `listen` from the config, 127.0.0.1:9817).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },

    /// Fetch the segments after NAME into the spool (archive-get starts this in the background).
    #[command(hide = true)]
    Prefetch {
        /// The segment just restored.
        name: String,
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

    /// List backups with their WAL status and the archived WAL per timeline, or the restore points.
    List {
        /// What to show: a tier, all backups, or restore-points.
        #[arg(default_value = "all", value_parser = ["hourly", "daily", "weekly", "all", "restore-points"])]
        what: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Create a named restore point before a risky change, and record it in the repository.
    ///
    /// Calls pg_create_restore_point, switches WAL (unless --no-switch) and waits until that
    /// segment is archived, so the point can be recovered to at once.
    RestorePoint {
        /// The name (at most 63 bytes; unique in the repository unless --allow-duplicate).
        name: String,
        #[command(flatten)]
        connection: ConnectionArgs,
        /// Do not switch WAL or wait for archiving.
        #[arg(long)]
        no_switch: bool,
        /// Accept a name that exists already (recovery stops at the first one).
        #[arg(long)]
        allow_duplicate: bool,
        /// Seconds to wait for the segment to be archived.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        timeout: u64,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Recover to a point in time into a new data directory, and drive PostgreSQL there.
    ///
    /// Prints the plan first (backup, timelines, WAL, space) and refuses unreachable targets
    /// before touching anything; restores the backup; writes recovery settings; starts the
    /// server on a private socket and follows it to the target; reports where recovery really
    /// stopped; runs --verify-sql; prints the switch-over steps.
    Recover {
        /// The new data directory: absent or empty (see --force).
        #[arg(long, value_name = "NEWDIR")]
        pgdata: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
        /// Stop just before the target instead of just after (time, LSN, xid).
        #[arg(long)]
        exclusive: bool,
        /// The timeline to follow: latest (default) or a number.
        #[arg(long, default_value = "latest", value_name = "N|latest")]
        timeline: String,
        /// Use this backup instead of the newest one before the target.
        #[arg(long, value_name = "ID")]
        backup: Option<String>,
        /// What the server does at the target.
        #[arg(long, default_value = "promote", value_parser = ["promote", "pause", "shutdown"])]
        action: String,
        /// Port of the recovered server (written to its postgresql.auto.conf).
        #[arg(long, value_name = "N")]
        port: Option<u16>,
        /// Write files and settings, do not start the server.
        #[arg(long)]
        no_start: bool,
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
        /// SQL to run on the recovered server, e.g. "SELECT COUNT(*) FROM products".
        #[arg(long, value_name = "SQL")]
        verify_sql: Option<String>,
        /// The database --verify-sql runs in.
        #[arg(long, default_value = "postgres", value_name = "NAME")]
        verify_db: String,
        /// Keep archive_mode as it was (by default a recovered copy does not archive).
        #[arg(long)]
        keep_archiving: bool,
        /// Wipe a non-empty NEWDIR (refused while a postmaster.pid is there).
        #[arg(long)]
        force: bool,
        /// Files restored at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Print the plan and the report as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Make a recovered, promoted copy the new primary of this repository.
    ///
    /// Stops pitr's private run of the copy, archives what PostgreSQL did not (archiving was off
    /// during recovery): the new timeline's history file, the old timeline's .partial and the
    /// segments written since promotion; then gives the copy its own configuration back (archive
    /// settings into this repository are written only where it lacks them). Start the copy
    /// afterwards and take a new backup.
    Adopt {
        /// The recovered copy's data directory.
        #[arg(long, value_name = "DIR")]
        pgdata: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Show the whole job on a throwaway cluster: archive, backup, restore point, the oops
    /// (DROP TABLE products), and recoveries to the restore point and to a time, with the row
    /// counts as proof.
    ///
    /// Needs PostgreSQL server binaries; as root, the cluster runs as the postgres OS user.
    /// Everything lives in a temporary directory under /tmp, removed afterwards.
    Demo {
        /// Keep the temporary directory for a look around.
        #[arg(long)]
        keep: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Prove that the backups restore: every stored file, the WAL archive, and the alerts.
    ///
    /// Reads every backup file and WAL file in scope (in parallel) and checks its checksum,
    /// the manifests, WAL continuity and the timeline history files, and judges freshness.
    /// Alerts: BackupVerificationFailed, BackupMissing, WalArchiveGap (critical); BackupTooOld,
    /// WalArchiveStale (warning). Exit 0: no alert, 1: warnings only, 2: anything critical (or
    /// verification itself failed). Appends one line to the log file and writes the metrics
    /// file (thresholds and paths: `[verify]` in the config file).
    Verify {
        /// What to verify: all, one tier's backups (and the WAL they need), or the WAL archive.
        #[arg(default_value = "all", value_parser = ["all", "hourly", "daily", "weekly", "wal"])]
        scope: String,
        /// BackupTooOld when the newest backup is older than this, e.g. 168h or 7d (default:
        /// `max_age` in `[verify]`, else 168h).
        #[arg(long, value_name = "DURATION", value_parser = crate::settings::parse_duration)]
        max_age: Option<std::time::Duration>,
        /// Append one line per run here ("none": no log; default: `log_file` in `[verify]`, else
        /// /var/log/pitr/verify.log when that directory exists).
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
        /// Write a Prometheus textfile here, atomically (default: `metrics_file` in `[verify]`).
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
        /// Judge ages as of this moment (RFC 3339) instead of the clock, to try thresholds.
        #[arg(long, value_name = "TIME")]
        now: Option<String>,
        /// Files read at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// The server, asked for WalArchiveStale (unreachable: that rule is skipped).
        #[command(flatten)]
        connection: ConnectionArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Check one thing: an archived WAL file, a backup (directory or id), or a logical dump.
    ///
    /// A `*.gz` file is taken as a runbook-style dump (pg_dump -Fc | gzip): gzip test and
    /// pg_restore --list. Exit 0 when sound, 2 when corrupt, with the reason.
    CheckIntegrity {
        /// A WAL file under <repo>/wal/, a backup directory <repo>/<tier>/<id>, a backup id of the
        /// configured repository, or a *.gz dump.
        target: String,
        /// Files read at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Check archiving end to end: settings, history file, and a forced WAL switch arriving.
    ///
    /// wal_level, archive_mode, an archive_command that runs pitr with this repository, the
    /// current timeline's history file in the repository; then pg_switch_wal and a wait until
    /// that segment is in the repository and valid. Run it after setup and after every
    /// switch-over.
    Check {
        #[command(flatten)]
        connection: ConnectionArgs,
        /// Seconds to wait for the switched segment.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        timeout: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },

    /// What the repository offers now: the recoverable window per timeline, backups per tier
    /// with their ages, the WAL archive, restore points.
    Info {
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

/// Where recovery stops: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// The last commit at or before this time: RFC 3339 or "2026-11-25 10:00:00+01" (a time
    /// without a zone is taken as UTC, and the plan says so).
    #[arg(long, value_name = "TS")]
    pub target_time: Option<String>,
    /// A restore point created with `pitr restore-point`.
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// A WAL location, e.g. 0/3000148.
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// A transaction id: stop after it commits (before it with --exclusive).
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<u64>,
    /// immediate: the backup's consistency point; latest: everything archived.
    #[arg(long, value_name = "immediate|latest")]
    pub target: Option<String>,
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
    /// The subcommand `args` (the raw command line) names: the first argument that is a
    /// subcommand's name. Used for messages and exit codes of errors that happen before, or
    /// instead of, parsing.
    pub fn name_in(args: &[std::ffi::OsString]) -> Option<String> {
        let cli = <Cli as clap::CommandFactory>::command();
        args.iter()
            .skip(1)
            .find_map(|a| cli.find_subcommand(a))
            .map(|c| c.get_name().to_string())
    }
}
