//! `pitr watch` and `pitr daemon`: signals and settings reloads of the resident commands, and the
//! daemon's jobs, each a child process of this pitr. (Their log events go through `tracing`,
//! formatted by `logging`.)

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use pitr::daemon::{self, DaemonOptions, DaemonSettings, Job, JobRunner};
use pitr::repo::Repo;
use pitr::spool::Spool;
use pitr::stream::StreamOptions;
use pitr::watch::{self, StopFlags, Stopped, WatchOptions};
use pitr::Error;

use crate::cli::GlobalArgs;
use crate::settings::Settings;

/// How often the watcher rescans without an inotify hint.
const RESCAN: Duration = Duration::from_secs(10);

/// SIGTERM and SIGINT set `terminate`, SIGHUP sets `reload`.
fn signal_flags() -> pitr::Result<StopFlags> {
    let flags = StopFlags::default();
    let register = |signal, flag: &std::sync::Arc<std::sync::atomic::AtomicBool>| {
        signal_hook::flag::register(signal, flag.clone())
            .map(drop)
            .map_err(Error::io("handle signals of", "pitr"))
    };
    register(signal_hook::consts::SIGTERM, &flags.terminate)?;
    register(signal_hook::consts::SIGINT, &flags.terminate)?;
    register(signal_hook::consts::SIGHUP, &flags.reload)?;
    Ok(flags)
}

/// Runs the daemon until SIGTERM or SIGINT. SIGHUP reloads the settings. Each scheduled job
/// runs as a child process of this pitr ([`ChildJobs`]).
pub fn daemon(repo: &Repo, settings: &Settings, pgdata: &Path, listen: Option<String>) -> pitr::Result<()> {
    with_fixed_mmap_threshold();
    crate::logging::install(settings.log_format).map_err(Error::InvalidInput)?;
    let flags = signal_flags()?;
    let spool = Spool::at(settings.spool.clone().unwrap_or_else(|| Spool::default_for(pgdata)));
    spool.ensure()?;
    let snapshot = ConfigSnapshot {
        path: spool.dir().join(CONFIG_SNAPSHOT),
    };
    let running = snapshot
        .load(&settings.source, |fresh| needs_restart(settings, fresh))
        .map_err(pitr::Error::InvalidInput)?;
    let jobs = ChildJobs::new(&settings.source, &snapshot.path, pgdata)?;
    let options = DaemonOptions {
        pgdata: pgdata.to_path_buf(),
        listen: listen.unwrap_or_else(|| running.listen.clone()),
        settings: daemon_settings(&running).map_err(Error::InvalidInput)?,
        jobs: Box::new(jobs),
        reload: Box::new(move || {
            let fresh = snapshot.load(&running.source, |fresh| needs_restart(&running, fresh))?;
            daemon_settings(&fresh)
        }),
    };
    daemon::run(repo, &spool, &options, &flags)
}

/// The glibc tunable that fixes its mmap threshold at 128 KiB (its default start value).
const FIXED_MMAP_THRESHOLD: &str = "glibc.malloc.mmap_threshold=131072";

/// glibc raises its mmap threshold to the largest buffer freed, so the watcher workers' 16 MiB
/// buffers end up in heaps that keep them after they are freed (83 MB idle after a pgbench run
/// here; 15 MB with a fixed threshold, when every such buffer is mapped and unmapped). The
/// threshold can only be fixed before the allocator starts, through `GLIBC_TUNABLES`: so the
/// daemon executes itself again, once, with it set (same process id). Without glibc the
/// variable means nothing; if the exec fails, the daemon runs as it is.
fn with_fixed_mmap_threshold() {
    let current = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
    if current.to_string_lossy().contains("glibc.malloc.mmap_threshold") {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut tunables = current;
    if !tunables.is_empty() {
        tunables.push(":");
    }
    tunables.push(FIXED_MMAP_THRESHOLD);
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let _ = Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .exec();
}

/// `GLIBC_TUNABLES` as the daemon was started, for its jobs: a backup reuses its buffers and
/// would only pay page faults for a fixed threshold.
fn jobs_tunables() -> Option<OsString> {
    let current = std::env::var("GLIBC_TUNABLES").ok()?;
    let rest: Vec<&str> = current.split(':').filter(|t| *t != FIXED_MMAP_THRESHOLD).collect();
    (!rest.is_empty()).then(|| rest.join(":").into())
}

/// The daemon's share of `settings`; a mistake in `[schedule]`, `[drill]` or `[verify]` fails it.
fn daemon_settings(settings: &Settings) -> Result<DaemonSettings, String> {
    let service = settings.service()?;
    Ok(DaemonSettings {
        schedule: service.schedule.clone(),
        workers: settings.jobs,
        codec: settings.codec,
        status: crate::verify::status_sources(settings, service),
        stream: settings.slot.clone().and_then(|slot| {
            stream_options(settings.dbname.as_deref(), slot)
                .inspect_err(|e| tracing::warn!(error = %e, "not streaming from the slot"))
                .ok()
        }),
    })
}

/// Where the WAL receiver streams from: the server of `conninfo` and the libpq environment,
/// through `slot`.
pub fn stream_options(conninfo: Option<&str>, slot: String) -> pitr::Result<StreamOptions> {
    pitr::pg::replication::check_slot_name(&slot)?;
    Ok(StreamOptions {
        connection: pitr::pg::connection_settings(conninfo, &|k| std::env::var(k).ok())?,
        slot,
    })
}

/// The config file as the daemon last loaded it, in its spool (mode 0600).
const CONFIG_SNAPSHOT: &str = "daemon.toml";

/// The config file's text as the daemon last loaded it. The jobs read this copy, not the file
/// itself, so that they run with the settings the daemon runs with: an edit takes effect at
/// SIGHUP, and one that does not load changes nothing.
struct ConfigSnapshot {
    path: PathBuf,
}

impl ConfigSnapshot {
    /// Loads the settings of `source` from a copy of its config file and, when `accept` agrees,
    /// keeps that copy as the snapshot. The settings keep `source`, for the next reload.
    fn load(&self, source: &GlobalArgs, accept: impl Fn(&Settings) -> Result<(), String>) -> Result<Settings, String> {
        let resolved = Settings::load(source)?;
        let text = match &resolved.config {
            Some(config) => std::fs::read_to_string(config)
                .map_err(|e| format!("could not read config file {}: {e}", config.display()))?,
            None => String::new(),
        };
        let temp = self.path.with_extension("toml.tmp");
        write_private(&temp, &text).map_err(|e| format!("could not write {}: {e}", temp.display()))?;
        let copied = GlobalArgs {
            config: Some(temp.clone()),
            ..source.clone()
        };
        let loaded = Settings::load(&copied).and_then(|fresh| {
            // The daemon runs every job: a mistake in their sections is refused like any other.
            fresh.service()?;
            accept(&fresh)?;
            std::fs::rename(&temp, &self.path).map_err(|e| format!("could not write {}: {e}", self.path.display()))?;
            Ok(fresh)
        });
        let _ = std::fs::remove_file(&temp);
        let mut fresh = loaded?;
        fresh.config = resolved.config;
        fresh.source = source.clone();
        Ok(fresh)
    }
}

/// Writes `text` to a new file at `path`, mode 0600 whatever the umask (a leftover is replaced;
/// a symlink there is not followed).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Runs each scheduled job as a child process of this pitr, with the daemon's repository,
/// spool and compression flags, its config snapshot and data directory: the job's memory and
/// threads go when it ends, and a job that crashes cannot take the daemon down.
struct ChildJobs {
    exe: PathBuf,
    /// `--config <snapshot>` and `--repo`: what every job takes.
    repository: Vec<OsString>,
    /// `--compress` and `--compress-level`: what a backup takes besides.
    compression: Vec<OsString>,
    pgdata: PathBuf,
}

impl ChildJobs {
    fn new(source: &GlobalArgs, snapshot: &Path, pgdata: &Path) -> pitr::Result<ChildJobs> {
        let exe = std::env::current_exe().map_err(Error::io("find", "this pitr executable"))?;
        let flags = |flags: [(&str, Option<OsString>); 2]| -> Vec<OsString> {
            flags
                .into_iter()
                .filter_map(|(flag, value)| Some([flag.into(), value?]))
                .flatten()
                .collect()
        };
        Ok(ChildJobs {
            exe,
            repository: flags([
                ("--config", Some(snapshot.into())),
                ("--repo", source.repo.as_ref().map(OsString::from)),
            ]),
            compression: flags([
                ("--compress", source.compress.map(|c| c.to_string().into())),
                ("--compress-level", source.compress_level.map(|l| l.to_string().into())),
            ]),
            pgdata: pgdata.to_path_buf(),
        })
    }
}

impl JobRunner for ChildJobs {
    fn run(&self, job: Job) -> pitr::Result<String> {
        let mut command = Command::new(&self.exe);
        command.args(&self.repository);
        match job {
            Job::Backup(tier) => command
                .args(&self.compression)
                .args(["backup", "--json", "--tier", tier.name(), "--pgdata"])
                .arg(&self.pgdata),
            Job::Verify => command.args(["verify", "all", "--json"]),
            Job::Sync => command.args(["sync", "--json"]),
            Job::Names => command.args(["names", "record", "--json"]),
            Job::Drill => command.args(["drill", "--all", "--json"]),
        };
        match jobs_tunables() {
            Some(tunables) => command.env("GLIBC_TUNABLES", tunables),
            None => command.env_remove("GLIBC_TUNABLES"),
        };
        let out = command
            .stdin(Stdio::null())
            .output()
            .map_err(Error::io("start a job with", &self.exe))?;
        let report: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        let failed = |why: String| Err(Error::Refused(why));
        match (job, out.status.code(), report) {
            (Job::Backup(_), Some(0), Some(report)) => Ok(backup_line(&report)),
            (Job::Verify, Some(0 | 1), Some(report)) => Ok(verify_line(&report)),
            (Job::Verify, Some(2), Some(report)) => failed(verify_line(&report)),
            (Job::Sync, Some(0), Some(report)) => Ok(sync_line(&report)),
            (Job::Sync, Some(2), Some(report)) => failed(sync_line(&report)),
            (Job::Names, Some(0), Some(report)) => Ok(names_line(&report)),
            (Job::Drill, Some(0), Some(report)) => Ok(drill_line(&report)),
            (Job::Drill, Some(2), Some(report)) => failed(drill_line(&report)),
            _ => failed(child_failure(&out)),
        }
    }
}

/// "drill: hourly <id> passed (RTO 12.3 s, RPO 40.0 s); daily <id> FAILED: <why>" (or "drill: no
/// backup to drill: …"), from `drill --json`.
fn drill_line(report: &serde_json::Value) -> String {
    if let Some(why) = report["nothing_to_drill"].as_str() {
        return format!("drill: {why}");
    }
    let drills: Vec<String> = report["drills"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let verdict = if d["passed"].as_bool() == Some(true) {
                "passed".to_string()
            } else {
                let failures: Vec<String> = d["checks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["passed"].as_bool() != Some(true))
                    .map(|c| {
                        format!(
                            "{}: {}",
                            c["check"].as_str().unwrap_or("?"),
                            c["detail"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                format!("FAILED: {}", failures.join("; "))
            };
            format!(
                "{} {} {verdict} (RTO {} s, RPO {} s)",
                d["tier"].as_str().unwrap_or("?"),
                d["backup_id"].as_str().unwrap_or("?"),
                d["rto_seconds"],
                d["rpo_seconds"]
            )
        })
        .collect();
    format!("drill: {}", drills.join("; "))
}

/// "names recorded at <lsn> (<n> relations)" or "names unchanged", from `names record --json`.
fn names_line(report: &serde_json::Value) -> String {
    match report["recorded"].as_str() {
        Some(lsn) => format!("names recorded at {lsn} ({} relations)", report["relations"]),
        None => "names unchanged since the last map".to_string(),
    }
}

/// "backup <id> done: 1.2 GiB in 41 s (<n> files), expired <b> backups, <d> drill records and <w>
/// WAL files", from `backup --json`.
fn backup_line(report: &serde_json::Value) -> String {
    let count = |list: &serde_json::Value| list.as_array().map_or(0, Vec::len);
    let backup = &report["backup"];
    format!(
        "backup {} done: {} in {} s ({} files), expired {} backups, {} drill records and {} WAL files",
        backup["id"].as_str().unwrap_or("?"),
        backup["original_bytes"]
            .as_u64()
            .map_or_else(|| "?".to_string(), pitr::verify::human_bytes),
        backup["duration_seconds"]
            .as_f64()
            .map_or_else(|| "?".to_string(), |seconds| format!("{seconds:.0}")),
        backup["file_count"],
        count(&report["expired"]["backups"]),
        count(&report["expired"]["drills"]),
        count(&report["expired"]["wal"])
    )
}

/// "verify all: <status> (<n> alerts: <alert> <subject>; ...)", from `verify --json`.
fn verify_line(report: &serde_json::Value) -> String {
    let alerts: Vec<String> = report["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "{} {}",
                a["alert"].as_str().unwrap_or("?"),
                a["subject"].as_str().unwrap_or("?")
            )
        })
        .collect();
    format!(
        "verify all: {} ({} alerts{}{}); {} backups, {} WAL files checked",
        report["status"].as_str().unwrap_or("?"),
        alerts.len(),
        if alerts.is_empty() { "" } else { ": " },
        alerts.join("; "),
        report["backups_checked"],
        report["wal_files_checked"]
    )
}

/// "sync to <target>: <n> objects (<bytes> bytes) copied, <m> present; <w> WAL files, backups
/// copied: <ids>[; <k> problems: ...]", from `sync --json`.
fn sync_line(report: &serde_json::Value) -> String {
    let list = |value: &serde_json::Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap_or("?").to_string())
            .collect()
    };
    let backups = list(&report["backups_copied"]);
    let problems = list(&report["problems"]);
    format!(
        "sync to {}: {} objects ({} bytes) copied, {} present; {} WAL files, backups copied: {}{}",
        report["target"].as_str().unwrap_or("?"),
        report["objects_copied"],
        report["bytes_copied"],
        report["objects_skipped"],
        report["wal_copied"],
        if backups.is_empty() {
            "none".to_string()
        } else {
            backups.join(", ")
        },
        if problems.is_empty() {
            String::new()
        } else {
            format!("; {} problems: {}", problems.len(), problems.join("; "))
        }
    )
}

/// Why a job's process failed: its last line on stderr (without the `pitr <command>: error: `
/// in front), or how it ended.
fn child_failure(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    match (stderr.lines().rev().find(|l| !l.trim().is_empty()), out.status.signal()) {
        (_, Some(signal)) => format!("its process was killed by signal {signal}"),
        (Some(line), None) => {
            let line = line.trim();
            line.split_once(": error: ")
                .map_or(line, |(_, message)| message)
                .to_string()
        }
        (None, None) => format!("its process exited with {}", out.status),
    }
}

/// A reload that changes what only a restart can apply is refused as a whole, so the daemon
/// never runs half on old settings without saying so.
fn needs_restart(running: &Settings, fresh: &Settings) -> Result<(), String> {
    let changed = [
        ("repo", running.repo.to_string() != fresh.repo.to_string()),
        ("pgdata", running.pgdata != fresh.pgdata),
        ("spool", running.spool != fresh.spool),
        ("listen", running.listen != fresh.listen),
    ];
    match changed.iter().find(|(_, changed)| *changed) {
        Some((key, _)) => Err(format!("`{key}` changed, which needs a restart of pitr")),
        None => Ok(()),
    }
}

/// Runs the watcher until SIGTERM or SIGINT; SIGHUP reloads the settings (compression, and the
/// number of workers unless `--workers` fixed it).
pub fn run(
    repo: &Repo,
    settings: &Settings,
    pgdata: &Path,
    workers: Option<usize>,
    slot: Option<&str>,
) -> pitr::Result<()> {
    crate::logging::install(settings.log_format).map_err(Error::InvalidInput)?;
    let flags = signal_flags()?;
    let mut codec = settings.codec;
    let spool = Spool::at(settings.spool.clone().unwrap_or_else(|| Spool::default_for(pgdata)));
    let mut options = WatchOptions {
        pgdata: pgdata.to_path_buf(),
        workers: workers.unwrap_or(settings.jobs),
        rescan: RESCAN,
        stream: slot
            .map(str::to_string)
            .or(settings.slot.clone())
            .map(|slot| stream_options(settings.dbname.as_deref(), slot))
            .transpose()?,
    };
    loop {
        match watch::watch(repo, &codec, &spool, &options, &flags, &())? {
            Stopped::Terminate => return Ok(()),
            Stopped::Reload => match crate::settings::reload(settings).and_then(|fresh| {
                needs_restart(settings, &fresh)?;
                Ok(fresh)
            }) {
                Ok(fresh) => {
                    codec = fresh.codec;
                    options.workers = workers.unwrap_or(fresh.jobs);
                    tracing::info!(
                        compression = %codec.compression(),
                        workers = options.workers,
                        "settings reloaded: compression {}, {} workers",
                        codec.compression(),
                        options.workers
                    );
                }
                Err(message) => tracing::warn!(
                    error = %message,
                    "settings not reloaded, the running ones stay: {message}"
                ),
            },
        }
    }
}
