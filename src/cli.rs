//! The command line: clap definitions for the tool and each subcommand, which global options
//! each subcommand takes, and which subcommand a command line names even when it does not parse.
//!
//! The global options (`--repo`, `--config`, `--compress`, `--compress-level`, `--spool`,
//! `--log-format`) may
//! come before the subcommand, as every `archive_command` has them, or after it. Each applies to
//! some subcommands only: a subcommand lists (and reads the environment variable of) only those
//! that apply to it, and one given before a subcommand it does not apply to is a usage error.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use pitr::codec::Compression;
use pitr::inspect::EventKind;
use pitr::recover::{Request, Target, TimelineChoice};
use pitr::wal::Lsn;

use crate::logging::LogFormat;

/// The help heading of the global options, wherever they are listed.
const GLOBAL_OPTIONS: &str = "Global options";

/// The subcommands that take no repository: neither `--repo` nor `--config`.
const WITHOUT_REPOSITORY: &[&str] = &["demo", "completions", "man"];

/// The subcommands that write new files into the repository, so take `--compress` and
/// `--compress-level`; and archive-get, which ignores them (stored files say how they are
/// compressed), so that a restore_command copied from the archive_command does not abort a
/// recovery on the bad day.
const COMPRESSING: &[&str] = &["archive-push", "archive-get", "watch", "daemon", "backup", "adopt"];

/// The subcommands that take `--spool`.
const SPOOLING: &[&str] = &["archive-push", "archive-get", "watch", "daemon", "prefetch", "recover"];

/// The subcommands that take `--log-format`: the resident ones, which log.
const LOGGING: &[&str] = &["watch", "daemon"];

/// pitr archives PostgreSQL WAL and base backups into a repository and recovers a cluster to any
/// point in time.
#[derive(Debug, Parser)]
#[command(
    name = "pitr",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_help = "A global option may come before the subcommand or after it; each applies only to the \
                  subcommands whose --help lists it (there it also shows its environment variable)."
)]
pub struct Cli {
    #[command(flatten)]
    repository: RepoArgs,

    #[command(flatten)]
    compression: CompressArgs,

    #[command(flatten)]
    spool: SpoolArgs,

    #[command(flatten)]
    logging: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

// `--repo` and `--config`: every subcommand but `demo`. Flags override environment variables,
// which override the config file. (The option groups have plain comments: clap would take a doc
// comment for the description of each subcommand given the group.)
#[derive(Debug, Default, Args)]
#[command(next_help_heading = GLOBAL_OPTIONS)]
struct RepoArgs {
    /// Repository directory (it must exist; only `pitr init` creates it, so an unmounted disk is noticed).
    #[arg(long, env = "PITR_REPO", value_name = "DIR")]
    repo: Option<PathBuf>,

    /// Config file (TOML). Default: /etc/pitr/pitr.toml when it exists.
    #[arg(long, env = "PITR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

// `--compress` and `--compress-level`: the subcommands that write new files into the repository.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = GLOBAL_OPTIONS)]
struct CompressArgs {
    /// Compression of archived files: zstd (default), gzip or none (archive-get ignores it).
    #[arg(long, env = "PITR_COMPRESS", value_name = "TYPE", value_parser = parse_compression)]
    compress: Option<Compression>,

    /// Compression level (zstd 1-19, default 3; gzip 1-9, default 6).
    #[arg(long, env = "PITR_COMPRESS_LEVEL", value_name = "N")]
    compress_level: Option<i32>,
}

// `--spool`: the subcommands that use the spool beside the data directory.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = GLOBAL_OPTIONS)]
struct SpoolArgs {
    /// Spool directory for the watcher's markers and prefetched WAL (default: beside the data
    /// directory, <pgdata>.pitr-spool; never inside pg_wal).
    #[arg(long, env = "PITR_SPOOL", value_name = "DIR")]
    spool: Option<PathBuf>,
}

// `--log-format`: the resident subcommands.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = GLOBAL_OPTIONS)]
struct LogArgs {
    /// Log lines: auto (default: journald under systemd, else text), text (with timestamps),
    /// journald (no timestamps, syslog priority prefixes) or json (one object per line).
    /// PITR_LOG filters them as RUST_LOG does (default: info).
    #[arg(long, env = "PITR_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

/// The global options as they apply to the chosen subcommand: each from after the subcommand,
/// else from before it, else from its environment variable (the config file comes under them in
/// [`crate::settings::Settings::load`]).
#[derive(Debug, Clone, Default)]
pub struct GlobalArgs {
    pub repo: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub compress: Option<Compression>,
    pub compress_level: Option<i32>,
    pub spool: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
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
        /// Read the WAL of this repository generation (default: the current one); pitr recover
        /// writes it for a copy of an earlier generation, from before a major upgrade.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        generation: Option<u32>,
    },

    /// Archive WAL files the moment PostgreSQL marks them ready, in parallel.
    ///
    /// Keep archive_command = 'pitr --repo DIR archive-push %p': for a file the watcher stored,
    /// it returns at once. SIGTERM finishes the files in flight and exits; SIGHUP reloads the
    /// settings. Run it as the PostgreSQL OS user.
    Watch {
        /// The data directory (default: `pgdata` from the config file).
        #[arg(long, value_name = "DIR")]
        pgdata: Option<PathBuf>,
        /// Files archived at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
        /// Also stream WAL from this physical replication slot (default: `slot` from the config
        /// file), so that archive_command finds each segment stored: see `pitr slot`.
        #[arg(long, value_name = "NAME")]
        slot: Option<String>,
    },

    /// The resident service: the watcher, scheduled backups (hourly/daily/weekly, expire after
    /// each) and verification, and /metrics and /health over HTTP.
    ///
    /// Jobs come from `[schedule]` in the config file (cron patterns; defaults: hourly at :00,
    /// daily at 00:00, weekly on Sunday, verify on Sunday 03:30); they never overlap, and a failed
    /// job is logged and counted while the daemon keeps running. Backups connect with the libpq
    /// environment or `dbname` from the config file.
    Daemon {
        /// The data directory (default: `pgdata` from the config file).
        #[arg(long, value_name = "DIR")]
        pgdata: Option<PathBuf>,
        /// Address for /metrics and /health (default: `listen` from the config, 127.0.0.1:9817).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },

    /// Set a running server up to archive through pitr: settings, slot, repository, config file.
    ///
    /// Reads the server's settings over its connection (libpq environment or --dbname; a
    /// superuser) and shows what must change, one line each: wal_level (replica), archive_mode
    /// (on), archive_command (this pitr with --repo and --config, archive-push %p), the WAL
    /// receiver's physical replication slot (`slot`, default "pitr"), the repository (created
    /// for the cluster, 0700, owned by the data directory's owner) and the config file (repo,
    /// pgdata, slot; default /etc/pitr/pitr.toml). Changes nothing without --apply. With --apply:
    /// ALTER SYSTEM and pg_reload_conf(), never a restart (it names the settings that wait for
    /// one); then, when none waits, `pitr check`. Running it again changes nothing. Exit 0:
    /// nothing (more) to do and check passed; 3: changes pending (a dry run with changes, or a
    /// restart of PostgreSQL); 1: refused or failed.
    Init {
        /// The data directory (default: `pgdata` from the config file, else the server's); it
        /// must be the server's.
        #[arg(long, value_name = "DIR")]
        pgdata: Option<PathBuf>,
        #[command(flatten)]
        connection: ConnectionArgs,
        /// Make the changes (without it, only show them).
        #[arg(long)]
        apply: bool,
        /// Seconds check waits for the switched segment.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        timeout: u64,
        /// Print the plan and what was done as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Create or drop the physical replication slot the WAL receiver streams from.
    ///
    /// `pitr slot create` once, then `pitr watch --slot NAME` (or `slot = "NAME"` in the config
    /// file for watch and the daemon). The slot keeps WAL on the server until pitr has it: bound
    /// what a stopped receiver can hold back with max_slot_wal_keep_size. Connects with the libpq
    /// environment or --dbname (a role with REPLICATION).
    Slot {
        /// create or drop.
        #[arg(value_parser = ["create", "drop"])]
        action: String,
        /// The slot (default: `slot` from the config file, else "pitr").
        #[arg(long, value_name = "NAME")]
        slot: Option<String>,
        #[command(flatten)]
        connection: ConnectionArgs,
    },

    /// Maps of relation names: `record` takes one now (stored only when the catalog changed since
    /// the last), `list` shows those stored. WAL names tables only by relfilenode: `pitr wal
    /// events` names them with the map valid at each LSN. Backups, restore points and the daemon
    /// (every 10 minutes by default, `[schedule] names`) record them too. Connects to every
    /// database that accepts connections.
    Names {
        /// record or list.
        #[arg(value_parser = ["record", "list"])]
        action: String,
        #[command(flatten)]
        connection: ConnectionArgs,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Restore drills: the newest backup of each tier (or of --tier) recovered aside in a scratch
    /// directory on a private socket (target: its consistency point, or with --random a random
    /// time of its recoverable window; promoted, never archiving), its data checked
    /// (pg_amcheck --all --heapallindexed, pg_checksums --check when data checksums are on, the
    /// verification SQL), then stopped and removed. Each drill is recorded in the repository
    /// (drills/) with its RTO and RPO; `pitr drill list` shows them, `pitr verify` alerts on them
    /// (DrillFailed, DrillStale). Runs at the lowest CPU and I/O priority and never connects to
    /// production. Exits 2 when a drill fails.
    Drill {
        /// `list`: show the recorded drills instead of running one.
        #[arg(value_parser = ["list"])]
        action: Option<String>,
        /// Drill this tier's newest backup only.
        #[arg(long, value_parser = ["hourly", "daily", "weekly"], conflicts_with_all = ["all", "action"])]
        tier: Option<String>,
        /// Drill every tier that holds a backup (the default).
        #[arg(long, conflicts_with = "action")]
        all: bool,
        /// Recover to a random time inside each backup's recoverable window (also with `random =
        /// true` in the config file's [drill]).
        #[arg(long, conflicts_with = "action")]
        random: bool,
        /// Where the scratch copy goes: a new 0700 directory in DIR (default: `scratch` of the config
        /// file's [drill], else the system temp dir).
        #[arg(long, value_name = "DIR", conflicts_with = "action")]
        scratch: Option<PathBuf>,
        /// SQL run on each copy in database postgres (default: `drill_verify_sql` of the config
        /// file); an error fails the drill.
        #[arg(long, value_name = "SQL", conflicts_with = "action")]
        verify_sql: Option<String>,
        /// Files restored at once (default: the number of cores; from S3, small files up to 8 per job).
        #[arg(long, value_name = "N", conflicts_with = "action")]
        jobs: Option<usize>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Fetch the segments after NAME into the spool (archive-get starts this in the background).
    #[command(hide = true)]
    Prefetch {
        /// The segment just restored.
        name: String,
        /// The repository generation archive-get read it from.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        generation: Option<u32>,
    },

    /// Create the repository for a cluster, on purpose, before anything is archived.
    ///
    /// Connects to the server (libpq environment or --dbname) and records its cluster (system
    /// identifier, major version, WAL segment size) in repo.json. Afterwards archive-get answers
    /// "absent" (exit 1) for a file the repository does not hold, so a standby pointed at a new
    /// repository can start, and a promoted standby can archive its timeline history file first.
    /// Running it again changes nothing; another cluster is refused. When repo.json was lost but
    /// the repository still holds this cluster's WAL or backups, it is written again after
    /// checking them.
    CreateRepo {
        #[command(flatten)]
        connection: ConnectionArgs,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },

    /// After a major upgrade (pg_upgrade, or a dump restored into a new cluster), start the
    /// repository's next generation for the upgraded cluster.
    ///
    /// Connects to the upgraded primary (libpq environment or --dbname). Its WAL then goes into a
    /// WAL directory of its own (wal.<n>/), since its segment names start over; the earlier
    /// generations' backups, WAL and restore points stay listed and restorable (recovered with
    /// the earlier major's binaries). Refused, changing nothing, for the current generation's
    /// cluster, an earlier generation's, an older major, or a repository without repo.json. Run
    /// it once, then take a backup of the upgraded cluster.
    UpgradeRepo {
        #[command(flatten)]
        connection: ConnectionArgs,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Rotate the keys of an encrypted repository: the recipients configured now (recipients_file)
    /// become its newest key set, which every writer must then have.
    ///
    /// Objects stored before stay readable with the identities of their own recipients; with
    /// --rewrite they are re-encrypted for the newest set (this needs an identity of the old
    /// set), one at a time and resumably: a run that stops is finished by the next. Readers,
    /// recovery included, go on meanwhile; backups, expire and sync wait (the backup lock).
    RotateKey {
        /// Re-encrypt every object of an older key set for the newest.
        #[arg(long)]
        rewrite: bool,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
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
        /// Store the files deduplicated (manifest format 7): 8 KiB pieces in packs shared with
        /// the other deduplicated backups, so only what changed since the previous one is
        /// stored; the backup still restores on its own. The default when the config file sets
        /// `dedup = true` (as `pitr init` writes it).
        #[arg(long, conflicts_with = "no_dedup")]
        dedup: bool,
        /// Store the files as whole objects (manifest format 6), even when the config file sets
        /// `dedup = true`.
        #[arg(long)]
        no_dedup: bool,
        /// With deduplication, read and hash every file. Without it an hourly backup takes a file
        /// unread from the previous deduplicated backup of the same data directory when that
        /// backup trusted it and its size, mtime, ctime, inode and device did not change; daily
        /// and weekly backups always read every file.
        #[arg(long, conflicts_with = "no_dedup")]
        read_all: bool,
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
        #[arg(value_parser = parse_restore_point_name)]
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
        recovery: RecoveryArgs,
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
        /// Files restored at once (default: the number of cores; from S3, small files up to 8 per job).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Print the plan and the report as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Restore one database (or one table) into production as a new database, at a point in time.
    ///
    /// The reference runbook's database restore with the precision of point-in-time recovery:
    /// checks production first (the role may create databases, the new name is free, for
    /// --switch the database exists and may be renamed); recovers a private copy of the cluster at
    /// the target (paused, never archiving) in a scratch directory; pipes pg_dump -Fc of the
    /// database from the copy into pg_restore on production, into the new database
    /// DATABASE_restore_<YYYYMMDD_HHMMSS> (UTC); runs --verify-sql there; prints the switch. With
    /// --switch (after confirmation): refuses connections, terminates the sessions, renames the
    /// current database to DATABASE_before_restore_<ts> (never dropped) and the restored one into
    /// its place. The copy is stopped and removed at the end, whatever happens (unless
    /// --keep-copy).
    RestoreDatabase {
        /// The database to restore (its name in the backup and on production).
        database: String,
        #[command(flatten)]
        recovery: RecoveryArgs,
        /// The production server, as psql takes it (keyword/value or URI; the libpq environment
        /// fills in the rest). pitr connects to its maintenance database (postgres, else
        /// template1), never to DATABASE.
        #[arg(long, value_name = "CONNINFO", value_parser = ConninfoParser)]
        into: String,
        /// Restore only this table (schema.table, or table on the search path); not with --switch.
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
        /// SQL run in the restored database on production, e.g. "SELECT count(*) FROM products";
        /// a failure exits non-zero and switches nothing.
        #[arg(long, value_name = "SQL")]
        verify_sql: Option<String>,
        /// Put the restored database in the place of the current one (asks on a terminal).
        #[arg(long)]
        switch: bool,
        /// Switch without asking (needed when stdin is not a terminal).
        #[arg(long, requires = "switch")]
        yes: bool,
        /// Where the scratch copy goes: a new 0700 directory in DIR (default: the system temp dir).
        #[arg(long, value_name = "DIR")]
        scratch: Option<PathBuf>,
        /// Leave the copy running in its scratch directory (stop and remove it yourself).
        #[arg(long)]
        keep_copy: bool,
        /// Files restored at once (default: the number of cores; from S3, small files up to 8 per job).
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

    /// Make a key pair for an encrypted repository: the identity (secret key) into a new file
    /// (mode 0600, never overwritten), the recipient (public key) on stdout.
    ///
    /// The recipient goes into `recipients_file` on every host that writes (archive-push, watch,
    /// backup); the identity into `identity_file` only where the repository is read (archive-get,
    /// restore, recover, verify, drill), and into a safe place off the host: without it the
    /// backups cannot be read. The files are in age's format: the `age` tool reads them.
    Keygen {
        /// The identity file to create.
        out: PathBuf,
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
    /// Alerts: BackupVerificationFailed, BackupMissing, WalArchiveGap, SlotLost (critical);
    /// BackupTooOld, WalArchiveStale, SlotLagging (warning); the slot ones when `slot` is set.
    /// Exit 0: no alert, 1: warnings only, 2: anything critical (or verification itself failed).
    /// Appends one line to the log file and writes the metrics file (thresholds and paths:
    /// `[verify]` in the config file).
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
        #[arg(long, value_name = "TIME", value_parser = parse_now)]
        now: Option<DateTime<Utc>>,
        /// Files read at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// The server, asked for WalArchiveStale and the slot (unreachable: those rules are
        /// skipped).
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
    /// that segment is in the repository and valid; with `slot` set, that the slot exists, is
    /// physical and has lost no WAL, and how much WAL it holds back. Run it after setup and after
    /// every switch-over.
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
        #[arg(long, conflicts_with = "html")]
        json: bool,
        /// Write the status page (the daemon's `/`) to this file instead, mode 0600.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },

    /// Copy what this repository holds into a second one (off-site), verified and resumable.
    ///
    /// Copies the objects the target lacks: repo.json and the generation records first (a
    /// target of another cluster is refused), then the WAL, each complete backup's files (and a
    /// deduplicated backup's packs, each once) before its manifest, then the restore point
    /// records. Each object is checked in the source (checksums), written create-only and read
    /// back. An object the target holds with other content is refused, never overwritten. A sync
    /// that died is resumed by the next one. No backup or WAL is deleted from the target: it
    /// keeps its own retention (`pitr --repo TARGET expire`). Exit 0: copied; 1: failed (nothing
    /// overwritten); 2: problems reported (source objects damaged, or a deduplicated backup left
    /// for a later sync because the target's expire condemned a pack it needs) and not copied
    /// (the rest was).
    Sync {
        /// The repository to copy into: a directory, file:///path or s3://bucket/prefix
        /// (default: `sync_to` in the config file).
        #[arg(long, value_name = "REPO")]
        to: Option<String>,
        /// Only show what would be copied.
        #[arg(long)]
        dry_run: bool,
        /// Objects copied at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Read the archived WAL.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
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

    /// Print the completion script for a shell to stdout.
    ///
    /// The .deb installs them. By hand: `pitr completions bash > /etc/bash_completion.d/pitr`,
    /// `pitr completions zsh > /usr/local/share/zsh/site-functions/_pitr`,
    /// `pitr completions fish > ~/.config/fish/completions/pitr.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },

    /// Write the man pages (pitr.1, and pitr-SUBCOMMAND.1 for each subcommand) into DIR, which
    /// must exist: for packaging (packaging/build-deb).
    #[command(hide = true)]
    Man {
        /// The directory the pages are written into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// The shells `pitr completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// `pitr wal ...`.
#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// What happened in the archived WAL, per transaction: the DROP, TRUNCATE or big DELETE to
    /// undo, with its transaction id, commit time and LSN.
    ///
    /// One line per transaction (commit time, xid, commit LSN, database, what it did by
    /// relation), and restore points, checkpoints and timeline switches. Relations are named by
    /// the maps of names the repository holds (recorded at backups and restore points); one no
    /// map knows shows as tablespace/database/relfilenode. Reads the current generation's
    /// timeline (the newest by default) up to the segment being received.
    Events {
        /// Events at or after this time (RFC 3339 or "2026-11-25 10:00:00+01").
        #[arg(long, value_name = "TS", value_parser = parse_time)]
        from: Option<DateTime<Utc>>,
        /// Events at or before this time.
        #[arg(long, value_name = "TS", value_parser = parse_time)]
        to: Option<DateTime<Utc>>,
        /// Start reading at this LSN.
        #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
        from_lsn: Option<Lsn>,
        /// Stop reading at this LSN.
        #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
        to_lsn: Option<Lsn>,
        /// The timeline to read (default: the newest in the archive).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        timeline: Option<u32>,
        /// Only transactions touching this relation: schema.name, name, spc/db/relfilenode or a
        /// relfilenode (repeatable).
        #[arg(long, value_name = "NAME")]
        table: Vec<String>,
        /// Only transactions in this database, by name or OID (repeatable).
        #[arg(long, value_name = "NAME")]
        database: Vec<String>,
        /// Only these kinds (repeatable or a comma list): insert, update, delete, drop, truncate,
        /// rewrite, create, create-database, drop-database, abort, restore-point, checkpoint,
        /// timeline-switch.
        #[arg(long, value_name = "KIND", value_delimiter = ',', value_parser = parse_event_kind)]
        kind: Vec<EventKind>,
        /// Only transactions that changed at least this many rows.
        #[arg(long, value_name = "N", default_value_t = 0)]
        min_rows: u64,
        /// Segments decoded at once (default: `jobs` of the config file, else the number of cores).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Print one JSON array of the events.
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
    #[arg(long, value_name = "TS", value_parser = Target::parse_time)]
    target_time: Option<Target>,
    /// A restore point created with `pitr restore-point`.
    #[arg(long, value_name = "NAME")]
    target_name: Option<String>,
    /// A WAL location, e.g. 0/3000148.
    #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
    target_lsn: Option<Lsn>,
    /// A transaction id: stop after it commits (before it with --exclusive).
    #[arg(long, value_name = "XID")]
    target_xid: Option<u64>,
    /// immediate: the backup's consistency point; latest: everything archived.
    #[arg(long, value_name = "immediate|latest", value_parser = Target::parse_keyword)]
    target: Option<Target>,
    /// Stop just before this transaction commits (the oops): its xid, or the LSN of its commit,
    /// as `pitr wal events` shows them. Implies --exclusive.
    #[arg(long, value_name = "XID|LSN", value_parser = Target::parse_before)]
    before: Option<Target>,
}

/// What `recover` and `restore-database` plan a recovery from: the target and the way to it.
#[derive(Debug, Args)]
pub struct RecoveryArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Stop just before the target instead of just after (time, LSN, xid).
    #[arg(long)]
    pub exclusive: bool,
    /// The timeline to follow: latest (default) or a number.
    #[arg(long, default_value = "latest", value_name = "N|latest", value_parser = parse_timeline)]
    pub timeline: TimelineChoice,
    /// Use this backup instead of the newest one before the target.
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Recover from this repository generation (default: the backup's, the restore point's,
    /// for a time the newest generation with a backup before it, else the current one).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub generation: Option<u32>,
}

impl RecoveryArgs {
    /// What the planner is asked for.
    pub fn request(&self) -> Request {
        Request {
            target: self.target.target(),
            exclusive: self.target.exclusive(self.exclusive),
            before: self.target.before(),
            timeline: self.timeline,
            backup: self.backup.clone(),
        }
    }
}

impl TargetArgs {
    /// Whether recovery stops just before the target: --exclusive, or --before.
    pub fn exclusive(&self, asked: bool) -> bool {
        asked || self.before()
    }

    /// Whether the target is a transaction to stop just before (--before).
    pub fn before(&self) -> bool {
        self.before.is_some()
    }

    /// The one target given (clap requires exactly one).
    pub fn target(&self) -> Target {
        let given = [
            self.target_time.clone(),
            self.target_name.clone().map(Target::Name),
            self.target_lsn.map(Target::Lsn),
            self.target_xid.map(Target::Xid),
            self.target.clone(),
            self.before.clone(),
        ];
        given
            .into_iter()
            .flatten()
            .next()
            .expect("clap requires one recovery target")
    }
}

/// How to reach the server: the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE,
/// PGPASSWORD, PGPASSFILE, PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY), overridden by --dbname.
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Connection string, keyword/value ("host=/run/postgresql port=5432") or URI, as psql takes it.
    #[arg(long, short = 'd', value_name = "CONNINFO", value_parser = ConninfoParser)]
    pub dbname: Option<String>,
}

/// The whole definition: [`Cli`], with each subcommand given the global options that apply to
/// it, and the global options before the subcommand reading no environment variable (a variable
/// is read only where its option applies).
pub fn definition() -> clap::Command {
    let cli = Cli::command().mut_args(|option| option.env(None));
    let names: Vec<String> = cli.get_subcommands().map(|s| s.get_name().to_string()).collect();
    names.iter().fold(cli, |cli, name| {
        cli.mut_subcommand(name, |subcommand| with_global_options(subcommand, name))
    })
}

fn with_global_options(mut subcommand: clap::Command, name: &str) -> clap::Command {
    // A group of subcommands (`pitr wal ...`): the options go to each of them.
    if subcommand.has_subcommands() {
        let children: Vec<String> = subcommand.get_subcommands().map(|s| s.get_name().to_string()).collect();
        return children.iter().fold(subcommand, |group, child| {
            group.mut_subcommand(child, |leaf| with_global_options(leaf, name))
        });
    }
    if !WITHOUT_REPOSITORY.contains(&name) {
        subcommand = RepoArgs::augment_args(subcommand);
    }
    if COMPRESSING.contains(&name) {
        subcommand = CompressArgs::augment_args(subcommand);
    }
    if SPOOLING.contains(&name) {
        subcommand = SpoolArgs::augment_args(subcommand);
    }
    if LOGGING.contains(&name) {
        subcommand = LogArgs::augment_args(subcommand);
    }
    subcommand
}

/// A parsed command line.
#[derive(Debug)]
pub struct Invocation {
    /// The subcommand's name, as typed on the command line (`archive-get`).
    pub name: String,
    /// The subcommand and its arguments.
    pub command: Command,
    /// The global options, merged for the subcommand.
    pub global: GlobalArgs,
}

/// Parses `args` (the whole command line) with `definition` ([`definition`]).
pub fn parse(definition: &mut clap::Command, args: &[OsString]) -> Result<Invocation, clap::Error> {
    let matches = definition.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let (name, sub_matches) = matches
        .subcommand()
        .ok_or_else(|| definition.error(ErrorKind::MissingSubcommand, "a subcommand is required"))?;
    refuse_misplaced(definition, &matches, name)?;
    let (subcommand, sub_matches) = leaf(
        definition
            .find_subcommand(name)
            .expect("clap matched a subcommand of this definition"),
        sub_matches,
    );
    let global = GlobalArgs::merge(
        Before {
            repository: cli.repository,
            compression: cli.compression,
            spool: cli.spool,
            logging: cli.logging,
        },
        subcommand,
        sub_matches,
    )?;
    Ok(Invocation {
        name: name.to_string(),
        command: cli.command,
        global,
    })
}

/// The subcommand a command line runs and its matches: `subcommand` itself, or for a group
/// (`pitr wal events`) the one chosen in it.
fn leaf<'a>(subcommand: &'a clap::Command, matches: &'a ArgMatches) -> (&'a clap::Command, &'a ArgMatches) {
    match matches.subcommand() {
        Some((name, inner)) => leaf(
            subcommand
                .find_subcommand(name)
                .expect("clap matched a subcommand of this definition"),
            inner,
        ),
        None => (subcommand, matches),
    }
}

/// A global option given before a subcommand it does not apply to (`pitr --compress zstd list`)
/// is a usage error, as it would be after the subcommand.
fn refuse_misplaced(definition: &mut clap::Command, top: &ArgMatches, name: &str) -> Result<(), clap::Error> {
    let (_, sub_matches) = top.subcommand().expect("a subcommand was matched");
    let (subcommand, _) = leaf(
        definition
            .find_subcommand(name)
            .expect("clap matched a subcommand of this definition"),
        sub_matches,
    );
    let misplaced = definition
        .get_arguments()
        .filter(|option| top.value_source(option.get_id().as_str()) == Some(ValueSource::CommandLine))
        .find(|option| !takes(subcommand, option.get_id().as_str()))
        .and_then(clap::Arg::get_long)
        .map(str::to_string);
    let Some(option) = misplaced else {
        return Ok(());
    };
    let subcommand = definition
        .find_subcommand_mut(name)
        .expect("clap matched a subcommand of this definition");
    Err(subcommand.error(
        ErrorKind::ArgumentConflict,
        format!("--{option} does not apply to `pitr {name}` (`pitr {name} --help` lists the options it takes)"),
    ))
}

/// Whether `subcommand` has the option `id`.
fn takes(subcommand: &clap::Command, id: &str) -> bool {
    subcommand.get_arguments().any(|a| a.get_id() == id)
}

impl GlobalArgs {
    /// Merges the global options given before the subcommand (`before_*`) with those `subcommand`
    /// takes (`matches`: after it, or from the environment): after beats before beats environment.
    fn merge(before: Before, subcommand: &clap::Command, matches: &ArgMatches) -> Result<GlobalArgs, clap::Error> {
        let after = |id: &str| takes(subcommand, id) && matches.value_source(id) == Some(ValueSource::CommandLine);
        let group = |id: &str| takes(subcommand, id).then_some(matches);
        let repository = group("repo")
            .map(RepoArgs::from_arg_matches)
            .transpose()?
            .unwrap_or_default();
        let compression = group("compress")
            .map(CompressArgs::from_arg_matches)
            .transpose()?
            .unwrap_or_default();
        let spool = group("spool")
            .map(SpoolArgs::from_arg_matches)
            .transpose()?
            .unwrap_or_default();
        let logging = group("log_format")
            .map(LogArgs::from_arg_matches)
            .transpose()?
            .unwrap_or_default();
        let Before {
            repository: before_repository,
            compression: before_compression,
            spool: before_spool,
            logging: before_logging,
        } = before;
        Ok(GlobalArgs {
            repo: prefer(after("repo"), repository.repo, before_repository.repo),
            config: prefer(after("config"), repository.config, before_repository.config),
            compress: prefer(after("compress"), compression.compress, before_compression.compress),
            compress_level: prefer(
                after("compress_level"),
                compression.compress_level,
                before_compression.compress_level,
            ),
            spool: prefer(after("spool"), spool.spool, before_spool.spool),
            log_format: prefer(after("log_format"), logging.log_format, before_logging.log_format),
        })
    }
}

/// The global options given before the subcommand.
struct Before {
    repository: RepoArgs,
    compression: CompressArgs,
    spool: SpoolArgs,
    logging: LogArgs,
}

/// `after` when it was given on the command line, else `before`, else `after` (from the
/// environment).
fn prefer<T>(after_given: bool, after: Option<T>, before: Option<T>) -> Option<T> {
    if after_given {
        after
    } else {
        before.or(after)
    }
}

/// The name of the subcommand `args` (the whole command line) names, found the way clap parses:
/// skipping the options before it and their values, the first free word. Decided before anything
/// can fail, so that even a command line that does not parse gets its subcommand's exit codes
/// (archive-get: 200). `pitr --repo backup archive-get ...` is archive-get; after an unknown
/// option, the first word that names a subcommand is taken.
pub fn subcommand_in(definition: &clap::Command, args: &[OsString]) -> Option<String> {
    let takes_value = |option: &clap::Arg| !option.is_positional() && option.get_action().takes_values();
    let options: Vec<&clap::Arg> = definition.get_arguments().filter(|o| takes_value(o)).collect();
    let long_takes_value = |name: &str| {
        options.iter().any(|o| {
            o.get_long_and_visible_aliases()
                .into_iter()
                .flatten()
                .any(|l| l == name)
        })
    };
    let short_takes_value = |c: char| {
        options
            .iter()
            .any(|o| o.get_short_and_visible_aliases().into_iter().flatten().any(|s| s == c))
    };
    let mut words = args.iter().skip(1);
    while let Some(word) = words.next() {
        let text = word.to_string_lossy();
        if text == "--" {
            // Only arguments follow; the top level takes none, so there is no subcommand.
            return None;
        }
        let value_follows = if let Some(long) = text.strip_prefix("--") {
            !long.contains('=') && long_takes_value(long)
        } else if let Some(shorts) = text.strip_prefix('-').filter(|s| !s.is_empty()) {
            // -abc: flags until one takes a value, which is the rest of the word or the next word.
            shorts
                .char_indices()
                .find(|(_, c)| short_takes_value(*c))
                .is_some_and(|(i, c)| i + c.len_utf8() == shorts.len())
        } else if let Some(subcommand) = definition.find_subcommand(word) {
            return Some(subcommand.get_name().to_string());
        } else {
            // Not a subcommand: the value of an option pitr does not know (`--tier daily`), so
            // the subcommand is further on. A line that does not parse still gets its exit codes.
            false
        };
        if value_follows {
            words.next();
        }
    }
    None
}

fn parse_compression(text: &str) -> Result<Compression, String> {
    text.parse().map_err(|e: pitr::Error| e.to_string())
}

fn parse_lsn(text: &str) -> Result<Lsn, String> {
    text.parse().map_err(|e: pitr::Error| e.to_string())
}

/// `--timeline`: latest, or a timeline number in decimal or 0x-hex.
fn parse_timeline(text: &str) -> Result<TimelineChoice, String> {
    if text == "latest" {
        return Ok(TimelineChoice::Latest);
    }
    let number = match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    };
    number
        .filter(|n| *n > 0)
        .map(TimelineChoice::Number)
        .ok_or_else(|| "use latest or a timeline number (1, 2, ... or 0x hex)".to_string())
}

/// `wal events --from/--to`: a time as `recover --target-time` takes it.
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    match Target::parse_time(text).map_err(|e| e.to_string())? {
        Target::Time { time, .. } => Ok(time),
        _ => unreachable!("parse_time parses times"),
    }
}

fn parse_event_kind(text: &str) -> Result<EventKind, String> {
    text.parse().map_err(|e: pitr::Error| e.to_string())
}

/// `verify --now`: an RFC 3339 time.
fn parse_now(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time like 2026-11-25T10:00:00Z: {e}"))
}

fn parse_restore_point_name(text: &str) -> Result<String, String> {
    pitr::restore_point::validate_name(text)
        .map(|()| text.to_string())
        .map_err(|e| e.to_string())
}

/// `--dbname`, `--into`: a connection string libpq-style. Its error names the problem but never repeats the
/// value, which may hold a password.
#[derive(Clone)]
struct ConninfoParser;

impl TypedValueParser for ConninfoParser {
    type Value = String;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<String, clap::Error> {
        let option = arg.and_then(clap::Arg::get_long).unwrap_or("dbname");
        let invalid = |reason: String| {
            let mut cmd = cmd.clone();
            cmd.error(
                ErrorKind::ValueValidation,
                format!("invalid --{option} connection string: {reason}"),
            )
        };
        let text = value.to_str().ok_or_else(|| invalid("it is not UTF-8".into()))?;
        check_conninfo(text).map_err(invalid)?;
        Ok(text.to_string())
    }
}

/// Whether `text` is a connection string, and if not, why (without repeating `text`).
pub fn check_conninfo(text: &str) -> Result<(), String> {
    pitr::pg::parse_conninfo(text).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn parsed(line: &str) -> Result<Invocation, clap::Error> {
        parse(&mut definition(), &words(line))
    }

    fn refused(line: &str) -> clap::Error {
        parsed(line).expect_err(line)
    }

    #[test]
    fn the_definition_is_consistent() {
        definition().debug_assert();
    }

    #[test]
    fn the_subcommand_is_the_first_free_word_as_clap_parses() {
        let cases = [
            (
                "pitr --repo backup archive-get 000000010000000000000001 pg_wal/RECOVERYXLOG",
                "archive-get",
            ),
            (
                "pitr --repo=backup archive-get 000000010000000000000001 pg_wal/RECOVERYXLOG",
                "archive-get",
            ),
            (
                "pitr --repo archive-get archive-push pg_wal/000000010000000000000001",
                "archive-push",
            ),
            ("pitr --config list --repo info info", "info"),
            (
                "pitr --spool backup --compress-level 3 --compress zstd --repo r archive-push p",
                "archive-push",
            ),
            ("pitr --spool=archive-get --repo=verify archive-get a b", "archive-get"),
            ("pitr archive-get --repo backup a b", "archive-get"),
            ("pitr --repo backup --config demo backup", "backup"),
        ];
        for (line, name) in cases {
            let mut definition = definition();
            assert_eq!(
                subcommand_in(&definition, &words(line)).as_deref(),
                Some(name),
                "{line}"
            );
            let invocation = parse(&mut definition, &words(line)).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(invocation.name, name, "{line}");
        }
    }

    #[test]
    fn a_command_line_that_does_not_parse_still_names_its_subcommand() {
        let cases = [
            ("pitr --repo backup archive-get", Some("archive-get")),
            ("pitr --repo backup archive-get a", Some("archive-get")),
            ("pitr --repo backup --bogus archive-get a b", Some("archive-get")),
            ("pitr --repo backup archive-get a b c", Some("archive-get")),
            ("pitr --compress lz4 --repo backup archive-get a b", Some("archive-get")),
            ("pitr --repo archive-get archive-push", Some("archive-push")),
            ("pitr --repo", None),
            ("pitr --repo archive-get", None),
            ("pitr -- archive-get a b", None),
            ("pitr backups", None),
        ];
        for (line, name) in cases {
            let definition = definition();
            assert_eq!(subcommand_in(&definition, &words(line)).as_deref(), name, "{line}");
            assert!(parsed(line).is_err(), "{line} must not parse");
        }
    }

    #[test]
    fn each_subcommand_takes_the_global_options_that_apply_to_it() {
        let definition = definition();
        let expected = |name: &str, id: &str| match id {
            "repo" | "config" => !matches!(name, "demo" | "completions" | "man"),
            "compress" | "compress_level" => COMPRESSING.contains(&name),
            "log_format" => LOGGING.contains(&name),
            _ => SPOOLING.contains(&name),
        };
        for subcommand in definition.get_subcommands() {
            let name = subcommand.get_name();
            let leaves: Vec<&clap::Command> = if subcommand.has_subcommands() {
                subcommand.get_subcommands().collect()
            } else {
                vec![subcommand]
            };
            for leaf in leaves {
                for id in ["repo", "config", "compress", "compress_level", "spool", "log_format"] {
                    assert_eq!(takes(leaf, id), expected(name, id), "{name} and --{id}");
                }
            }
        }
        let demo = definition.find_subcommand("demo").unwrap();
        assert!(
            demo.get_arguments().all(|a| a.get_env().is_none()),
            "demo reads no PITR_* variable"
        );
        assert!(
            definition.get_arguments().all(|a| a.get_env().is_none()),
            "the options before the subcommand read no environment variable: it is read only where \
             the option applies"
        );
    }

    #[test]
    fn a_global_option_before_a_subcommand_it_does_not_apply_to_is_refused() {
        for line in [
            "pitr --repo r demo",
            "pitr --config c.toml demo",
            "pitr --compress zstd demo",
            "pitr --compress zstd list",
            "pitr --compress-level 3 restore --pgdata d",
            "pitr --spool s info",
        ] {
            let error = refused(line);
            assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{line}: {error}");
            assert!(
                error.to_string().contains("does not apply to `pitr "),
                "{line}: {error}"
            );
        }
        for line in ["pitr demo --repo r", "pitr demo --compress zstd", "pitr list --spool s"] {
            assert_eq!(refused(line).kind(), ErrorKind::UnknownArgument, "{line}");
        }
    }

    #[test]
    fn the_log_format_is_a_global_option_of_the_resident_commands() {
        let global = parsed("pitr --log-format json daemon --pgdata d").unwrap().global;
        assert_eq!(global.log_format, Some(LogFormat::Json));
        let global = parsed("pitr --log-format json watch --log-format journald --pgdata d")
            .unwrap()
            .global;
        assert_eq!(global.log_format, Some(LogFormat::Journald));
        let error = refused("pitr --log-format json archive-push p");
        assert!(error.to_string().contains("--log-format does not apply"), "{error}");
        assert_eq!(
            refused("pitr watch --log-format syslog --pgdata d").kind(),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn a_global_option_after_the_subcommand_beats_one_before_it() {
        let global = parsed("pitr --repo before --spool s1 archive-push --repo after p")
            .unwrap()
            .global;
        assert_eq!(global.repo, Some(PathBuf::from("after")));
        assert_eq!(global.spool, Some(PathBuf::from("s1")));
        let global = parsed("pitr --repo before --compress gzip --compress-level 4 backup")
            .unwrap()
            .global;
        assert_eq!(global.repo, Some(PathBuf::from("before")));
        assert_eq!(global.compress, Some(Compression::Gzip));
        assert_eq!(global.compress_level, Some(4));
        let global = parsed("pitr check-integrity --config c.toml x").unwrap().global;
        assert_eq!(global.config, Some(PathBuf::from("c.toml")));
    }

    #[test]
    fn wal_events_takes_the_repository_before_or_after_and_its_filters() {
        let invocation = parsed("pitr --repo r wal events --kind drop,truncate --kind delete --min-rows 5").unwrap();
        assert_eq!(invocation.name, "wal");
        assert_eq!(invocation.global.repo, Some(PathBuf::from("r")));
        match invocation.command {
            Command::Wal {
                command: WalCommand::Events { kind, min_rows, .. },
            } => {
                assert_eq!(kind, [EventKind::Drop, EventKind::Truncate, EventKind::Delete]);
                assert_eq!(min_rows, 5);
            }
            other => panic!("{other:?}"),
        }
        let after = parsed("pitr wal events --repo r2 --from 2026-11-25T10:00:00Z").unwrap();
        assert_eq!(after.global.repo, Some(PathBuf::from("r2")));
        assert_eq!(
            refused("pitr wal events --kind dropped").kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            refused("pitr wal events --from-lsn 0/XYZ").kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            refused("pitr --compress zstd wal events").kind(),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn values_are_checked_while_parsing() {
        for line in [
            "pitr recover --pgdata d --target-time yesterday",
            "pitr recover --pgdata d --target-lsn 0/XYZ",
            "pitr recover --pgdata d --target latest-ish",
            "pitr recover --pgdata d --target latest --timeline 0",
            "pitr recover --pgdata d --target latest --timeline newest",
            "pitr archive-push --compress lz4 p",
            "pitr --compress lz4 archive-push p",
            "pitr verify --now tomorrow",
            "pitr backup --dbname port=notaport",
        ] {
            assert_eq!(refused(line).kind(), ErrorKind::ValueValidation, "{line}");
        }
        let long_name = format!("pitr restore-point {}", "x".repeat(64));
        assert_eq!(refused(&long_name).kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn a_bad_connection_string_is_not_repeated_in_the_error() {
        let args = ["pitr", "check", "--dbname", "password=hunter2 bogus=1"].map(OsString::from);
        let error = parse(&mut definition(), &args)
            .expect_err("an unknown keyword")
            .to_string();
        assert!(error.contains("invalid --dbname connection string"), "{error}");
        assert!(!error.contains("hunter2"), "the password is in the message: {error}");
    }

    #[test]
    fn restore_database_takes_recovers_targets_and_checks_its_options() {
        let line = "pitr restore-database catalog --target-xid 42 --exclusive --into host=/tmp --switch --yes";
        match parsed(line).unwrap().command {
            Command::RestoreDatabase {
                database,
                recovery,
                switch,
                yes,
                ..
            } => assert_eq!(
                (
                    database.as_str(),
                    recovery.target.target(),
                    recovery.exclusive,
                    switch,
                    yes
                ),
                ("catalog", Target::Xid(42), true, true, true)
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            refused("pitr restore-database catalog --target latest --into host=/tmp --yes").kind(),
            ErrorKind::MissingRequiredArgument,
            "--yes without --switch"
        );
        assert_eq!(
            refused("pitr restore-database catalog --into host=/tmp").kind(),
            ErrorKind::MissingRequiredArgument,
            "a target is required"
        );
        let error = refused("pitr restore-database catalog --target latest --into bogus=1").to_string();
        assert!(error.contains("invalid --into connection string"), "{error}");
    }

    #[test]
    fn the_recovery_target_and_timeline_are_parsed() {
        let recover = |options: &str| match parsed(&format!("pitr recover --pgdata d {options}")).unwrap().command {
            Command::Recover { recovery, .. } => (recovery.target.target(), recovery.timeline),
            other => panic!("{other:?}"),
        };
        assert_eq!(recover("--target-lsn 0/3000148").0, Target::Lsn(Lsn(0x3000148)));
        assert_eq!(recover("--target-xid 42").0, Target::Xid(42));
        assert_eq!(recover("--target-name before").0, Target::Name("before".into()));
        assert!(matches!(
            recover("--target-time 2026-11-25T10:00:00Z").0,
            Target::Time { .. }
        ));
        assert_eq!(
            recover("--target immediate"),
            (Target::Immediate, TimelineChoice::Latest)
        );
        assert_eq!(recover("--target latest --timeline 0x1A").1, TimelineChoice::Number(26));
        assert_eq!(recover("--target latest --timeline 3").1, TimelineChoice::Number(3));
    }
}
