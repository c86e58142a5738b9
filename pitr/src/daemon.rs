//! `pitr daemon`: the one resident service of a deployment. It runs the watcher, the scheduled
//! jobs (base backups per tier with expire after each, and verification), and an HTTP listener
//! with `/metrics` (Prometheus) and `/health`.
//!
//! Jobs never overlap: one scheduler thread runs them one at a time, in the order they fall due.
//! A failed job is logged and counted in the metrics; the daemon keeps running.

mod metrics;
mod schedule;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
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
    /// How verification jobs run (the binary supplies them).
    pub verify: Box<dyn Fn() -> Result<String> + Send + Sync>,
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
        options.schedule.describe()
    ));
    std::thread::scope(|scope| {
        scope.spawn(|| serve_http(&server, &metrics, flags));
        scope.spawn(|| run_jobs(repo, options, &metrics, flags, log));
        let result = run_watcher(repo, spool, options, flags, &metrics, log);
        flags.terminate.store(true, Ordering::SeqCst);
        result
    })
}

fn run_watcher(
    repo: &Repo,
    spool: &Spool,
    options: &DaemonOptions,
    flags: &StopFlags,
    metrics: &Metrics,
    log: &dyn DaemonLog,
) -> Result<()> {
    let watch_options = WatchOptions {
        pgdata: options.pgdata.clone(),
        workers: options.workers,
        rescan: Duration::from_secs(10),
    };
    let events = WatcherEvents { metrics, log };
    loop {
        match watch::watch(repo, &options.codec, spool, &watch_options, flags, &events)? {
            Stopped::Terminate => return Ok(()),
            Stopped::Reload => log.line("SIGHUP: the watcher rescanned; restart the daemon to apply config changes"),
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

/// The scheduler: runs each job when it falls due, one at a time.
fn run_jobs(repo: &Repo, options: &DaemonOptions, metrics: &Metrics, flags: &StopFlags, log: &dyn DaemonLog) {
    let mut next: Vec<(Job, Option<DateTime<Local>>)> = options
        .schedule
        .jobs()
        .map(|(job, cron)| (job, schedule::next_after(cron, Local::now())))
        .collect();
    while !flags.terminate.load(Ordering::SeqCst) {
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
        let result = run_job(repo, options, job);
        metrics.job_finished(job, result.is_ok(), started.elapsed());
        match result {
            Ok(summary) => log.line(&format!("job {job}: {summary}")),
            Err(e) => log.line(&format!("job {job} failed: {e}")),
        }
        let cron = options.schedule.cron(job).expect("scheduled jobs have a pattern");
        next[index].1 = schedule::next_after(cron, Local::now());
    }
}

fn run_job(repo: &Repo, options: &DaemonOptions, job: Job) -> Result<String> {
    match job {
        Job::Backup(tier) => {
            let backup_options = BackupOptions {
                tier,
                name: options.name.clone(),
                pgdata: Some(options.pgdata.clone()),
                fast: false,
                jobs: options.jobs,
                codec: options.codec,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(Error::io("start a runtime for", "a backup job"))?;
            let summary = runtime.block_on(async {
                let server = Server::connect(&options.connection).await?;
                backup::take(repo, &server, &backup_options, &Silent).await
            })?;
            let plan = backup::expire(repo, options.retention, Some(tier), false)?;
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
