//! `pitr daemon`: the one resident service of a deployment. It runs the watcher, the scheduled
//! jobs (base backups per tier with expire after each, and verification), and an HTTP listener
//! with `/metrics` (Prometheus) and `/health`.
//!
//! Jobs never overlap: one scheduler thread runs them one at a time, in the order they fall due.
//! A failed job is logged and counted in the metrics; the daemon keeps running. SIGHUP loads the
//! settings anew ([`DaemonSettings`]); settings that do not load keep the running ones.

mod metrics;
mod schedule;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Local};

pub use schedule::{Job, Schedule};

use self::metrics::Metrics;
use crate::backup::{self, BackupOptions, Retention};
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::pg::Server;
use crate::progress::Silent;
use crate::repo::Repo;
use crate::spool::Spool;
use crate::watch::{self, StopFlags, Stopped, WatchEvents, WatchOptions};

/// Everything the daemon needs.
pub struct DaemonOptions {
    /// The data directory the watcher watches and backups copy.
    pub pgdata: PathBuf,
    /// Where `/metrics` and `/health` listen, e.g. `127.0.0.1:9817`.
    pub listen: String,
    /// What a reload can change.
    pub settings: DaemonSettings,
    /// How verification jobs run (the binary supplies them).
    pub verify: Box<dyn Fn() -> Result<String> + Send + Sync>,
    /// Loads the settings anew, on SIGHUP (the binary supplies it); an error message keeps the
    /// running settings.
    pub reload: Box<dyn Fn() -> std::result::Result<DaemonSettings, String> + Send + Sync>,
}

/// The daemon's settings that SIGHUP reloads: all but the data directory, the repository, the
/// spool and the listen address, which need a restart.
#[derive(Clone)]
pub struct DaemonSettings {
    /// When each job runs.
    pub schedule: Schedule,
    /// Watcher workers.
    pub workers: usize,
    /// The deployment's name (first part of backup ids).
    pub name: String,
    /// Files copied at once by backups.
    pub jobs: usize,
    /// Compression of archived files and backups.
    pub codec: Codec,
    /// Backups kept per tier.
    pub retention: Retention,
    /// How the backup jobs reach the server.
    pub connection: tokio_postgres::Config,
}

/// The settings in force, replaced whole by a reload.
struct Current {
    settings: RwLock<Arc<DaemonSettings>>,
}

impl Current {
    fn get(&self) -> Arc<DaemonSettings> {
        self.settings.read().expect("no writer panics").clone()
    }

    fn replace(&self, fresh: DaemonSettings) {
        *self.settings.write().expect("no writer panics") = Arc::new(fresh);
    }
}

/// Where the daemon's log lines go.
pub trait DaemonLog: Send + Sync {
    /// One line.
    fn line(&self, line: &str);
}

/// Runs until `flags.terminate` is set.
pub fn run(repo: &Repo, spool: &Spool, options: &DaemonOptions, flags: &StopFlags, log: &dyn DaemonLog) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let server = tiny_http::Server::http(&options.listen).map_err(|e| {
        Error::Refused(format!(
            "cannot listen on {}: {e}; set `listen` to a free address",
            options.listen
        ))
    })?;
    log.line(&format!(
        "daemon started: watching {}, serving /metrics and /health on {}, jobs: {}",
        options.pgdata.display(),
        options.listen,
        options.settings.schedule.describe()
    ));
    let current = Current {
        settings: RwLock::new(Arc::new(options.settings.clone())),
    };
    std::thread::scope(|scope| {
        scope.spawn(|| serve_http(&server, &metrics, flags));
        scope.spawn(|| run_jobs(repo, options, &current, &metrics, flags, log));
        let result = run_watcher(repo, spool, options, &current, flags, &metrics, log);
        flags.terminate.store(true, Ordering::SeqCst);
        result
    })
}

/// The watcher, restarted with the settings in force after each reload (which it receives).
fn run_watcher(
    repo: &Repo,
    spool: &Spool,
    options: &DaemonOptions,
    current: &Current,
    flags: &StopFlags,
    metrics: &Metrics,
    log: &dyn DaemonLog,
) -> Result<()> {
    let events = WatcherEvents { metrics, log };
    loop {
        let settings = current.get();
        let watch_options = WatchOptions {
            pgdata: options.pgdata.clone(),
            workers: settings.workers,
            rescan: Duration::from_secs(10),
        };
        match watch::watch(repo, &settings.codec, spool, &watch_options, flags, &events)? {
            Stopped::Terminate => return Ok(()),
            Stopped::Reload => match (options.reload)() {
                Ok(fresh) => {
                    log.line(&format!(
                        "SIGHUP: settings reloaded; jobs: {}",
                        fresh.schedule.describe()
                    ));
                    current.replace(fresh);
                }
                Err(message) => log.line(&format!(
                    "SIGHUP: settings not reloaded, the running ones stay: {message}"
                )),
            },
        }
    }
}

struct WatcherEvents<'a> {
    metrics: &'a Metrics,
    log: &'a dyn DaemonLog,
}

impl WatchEvents for WatcherEvents<'_> {
    fn archived(&self, name: &str, elapsed: Duration) {
        self.metrics.archived(elapsed);
        self.log.line(&format!("archived {name} in {} ms", elapsed.as_millis()));
    }

    fn failed(&self, name: &str, error: &Error, retry_in: Duration) {
        self.metrics.archive_failed();
        self.log.line(&format!(
            "error archiving {name}: {error}; retrying in {} s",
            retry_in.as_secs()
        ));
    }

    fn note(&self, message: &str) {
        self.log.line(message);
    }
}

/// The scheduler: runs each job when it falls due, one at a time. A reload that changes the
/// schedule takes effect at once (a running job finishes first).
fn run_jobs(
    repo: &Repo,
    options: &DaemonOptions,
    current: &Current,
    metrics: &Metrics,
    flags: &StopFlags,
    log: &dyn DaemonLog,
) {
    let mut settings = current.get();
    let mut next = next_runs(&settings.schedule);
    while !flags.terminate.load(Ordering::SeqCst) {
        let fresh = current.get();
        if !Arc::ptr_eq(&fresh, &settings) {
            if fresh.schedule.describe() != settings.schedule.describe() {
                next = next_runs(&fresh.schedule);
            }
            settings = fresh;
        }
        let now = Local::now();
        let due = next
            .iter()
            .enumerate()
            .filter(|(_, (_, at))| at.is_some_and(|at| at <= now))
            .min_by_key(|(_, (_, at))| *at);
        let Some((index, (job, _))) = due.map(|(i, (job, at))| (i, (*job, *at))) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let started = Instant::now();
        let result = run_job(repo, options, &settings, job);
        metrics.job_finished(job, result.is_ok(), started.elapsed());
        match result {
            Ok(summary) => log.line(&format!("job {job}: {summary}")),
            Err(e) => log.line(&format!("job {job} failed: {e}")),
        }
        let cron = settings.schedule.cron(job).expect("scheduled jobs have a pattern");
        next[index].1 = schedule::next_after(cron, Local::now());
    }
}

/// When each job of `schedule` runs next.
fn next_runs(schedule: &Schedule) -> Vec<(Job, Option<DateTime<Local>>)> {
    schedule
        .jobs()
        .map(|(job, cron)| (job, schedule::next_after(cron, Local::now())))
        .collect()
}

fn run_job(repo: &Repo, options: &DaemonOptions, settings: &DaemonSettings, job: Job) -> Result<String> {
    match job {
        Job::Backup(tier) => {
            let backup_options = BackupOptions {
                tier,
                name: settings.name.clone(),
                pgdata: Some(options.pgdata.clone()),
                fast: false,
                jobs: settings.jobs,
                codec: settings.codec,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(Error::io("start a runtime for", "a backup job"))?;
            let summary = runtime.block_on(async {
                let server = Server::connect(&settings.connection).await?;
                backup::take(repo, &server, &backup_options, &Silent).await
            })?;
            let plan = backup::expire(repo, settings.retention, Some(tier), false)?;
            Ok(format!(
                "backup {} done ({} files), expired {} backups and {} WAL files",
                summary.backup.id,
                summary.file_count,
                plan.backups.len(),
                plan.wal.len()
            ))
        }
        Job::Verify => (options.verify)(),
    }
}

/// Serves `/metrics` and `/health` until terminated.
fn serve_http(server: &tiny_http::Server, metrics: &Metrics, flags: &StopFlags) {
    while !flags.terminate.load(Ordering::SeqCst) {
        let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let (status, content_type, body) = match request.url() {
            "/metrics" => (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.render(),
            ),
            "/health" => (200, "application/json", metrics.health()),
            _ => (404, "text/plain", "not found: try /metrics or /health\n".to_string()),
        };
        let header = tiny_http::Header::from_bytes("Content-Type", content_type).expect("valid header");
        let _ = request.respond(
            tiny_http::Response::from_string(body)
                .with_status_code(status)
                .with_header(header),
        );
    }
}
