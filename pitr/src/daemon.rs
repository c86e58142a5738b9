//! `pitr daemon`: the one resident service of a deployment. It runs the watcher, the scheduled
//! jobs (base backups per tier with expire after each, verification, and the sync into a second
//! repository when one is configured), and an HTTP listener with the status page at `/`,
//! `/metrics` (Prometheus) and `/health`.
//!
//! Each job runs to its end through a [`JobRunner`] (the binary starts a child process of its
//! own per job, so that a backup's buffers and threads go when it ends and a crashing job cannot
//! take the daemon down). Backups run one at a time; verification and sync run beside them; a job that
//! comes due while its previous run still waits or runs is skipped, logged and counted
//! (`jobs`). A failed job is logged and counted in the metrics; the daemon keeps running.
//! SIGHUP loads the settings anew ([`DaemonSettings`]); settings that do not load keep the
//! running ones.
//!
//! The daemon logs through `tracing` (the binary decides where the events go): each job's outcome
//! with `job` and `duration_ms` (info, or error when it failed), skipped runs (warn), reloads,
//! and the watcher's events.
//!
//! - `schedule`: the cron patterns of the jobs.
//! - `jobs`: the scheduler and its lanes.
//! - `http`: the bounded HTTP listener.
//! - `page`: the status page, made at most once per few seconds.
//! - `metrics`: the counters and gauges, and the health report.

mod http;
mod jobs;
mod metrics;
mod page;
mod schedule;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use schedule::{Job, Schedule};

use chrono::Utc;

use self::metrics::Metrics;
use self::page::PageCache;
use crate::codec::Codec;
use crate::error::Result;
use crate::repo::Repo;
use crate::spool::Spool;
use crate::status_page::{self, StatusPage, StatusSources};
use crate::stream::StreamOptions;
use crate::watch::{self, StopFlags, Stopped, WatchOptions};

/// Everything the daemon needs.
pub struct DaemonOptions {
    /// The data directory the watcher watches and backups copy.
    pub pgdata: PathBuf,
    /// Where `/`, `/metrics` and `/health` listen, e.g. `127.0.0.1:9817`.
    pub listen: String,
    /// What a reload can change.
    pub settings: DaemonSettings,
    /// Runs the scheduled jobs (the binary supplies it).
    pub jobs: Box<dyn JobRunner>,
    /// Loads the settings anew, on SIGHUP (the binary supplies it); an error message keeps the
    /// running settings.
    pub reload: Box<dyn Fn() -> std::result::Result<DaemonSettings, String> + Send + Sync>,
}

/// Runs one scheduled job to its end.
pub trait JobRunner: Send + Sync {
    /// The job's outcome in one line, or why it failed.
    fn run(&self, job: Job) -> Result<String>;
}

/// The daemon's settings that SIGHUP reloads: all but the data directory, the repository, the
/// spool and the listen address, which need a restart. (What the jobs use, the job runner
/// loads with them.)
#[derive(Clone)]
pub struct DaemonSettings {
    /// When each job runs.
    pub schedule: Schedule,
    /// Watcher workers.
    pub workers: usize,
    /// Compression of archived files.
    pub codec: Codec,
    /// Stream WAL from a replication slot as well.
    pub stream: Option<StreamOptions>,
    /// What the status page judges alerts by and where it finds the last verification.
    pub status: StatusSources,
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

/// Runs until `flags.terminate` is set; running jobs finish first.
pub fn run(repo: &Repo, spool: &Spool, options: &DaemonOptions, flags: &StopFlags) -> Result<()> {
    let metrics = Metrics::new();
    metrics.record_drills(repo);
    let listener = http::listen(&options.listen)?;
    tracing::info!(
        pgdata = %options.pgdata.display(),
        listen = %options.listen,
        jobs = %options.settings.schedule.describe(),
        "daemon started: serving /, /metrics and /health"
    );
    let current = Current {
        settings: RwLock::new(Arc::new(options.settings.clone())),
    };
    let cache = PageCache::default();
    let page = || cache.get(|| status_page(repo, &current.get().status));
    let routes = http::Routes {
        metrics: &metrics,
        page: &page,
    };
    std::thread::scope(|scope| {
        // The listener and the scheduler stop with the watcher, however it ends (a panic
        // included: the scope waits for them before the panic goes on).
        let _stop = TerminateOnDrop(&flags.terminate);
        scope.spawn(|| http::serve(&listener, &routes, flags));
        scope.spawn(|| jobs::run(repo, &current, options.jobs.as_ref(), &metrics, flags));
        run_watcher(repo, spool, options, &current, flags, &metrics)
    })
}

/// The status page as of now; a repository that cannot be read is a page that says so.
fn status_page(repo: &Repo, sources: &StatusSources) -> String {
    let now = Utc::now();
    let page = status_page::gather(repo, sources, now)
        .unwrap_or_else(|e| StatusPage::unreadable(repo.location(), e.to_string(), now));
    status_page::render(&page)
}

/// Sets the flag when dropped.
struct TerminateOnDrop<'a>(&'a AtomicBool);

impl Drop for TerminateOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The watcher, restarted with the settings in force after each reload (which it receives).
fn run_watcher(
    repo: &Repo,
    spool: &Spool,
    options: &DaemonOptions,
    current: &Current,
    flags: &StopFlags,
    metrics: &Metrics,
) -> Result<()> {
    loop {
        let settings = current.get();
        metrics.watch_slot(settings.stream.clone());
        let watch_options = WatchOptions {
            pgdata: options.pgdata.clone(),
            workers: settings.workers,
            rescan: Duration::from_secs(10),
            stream: settings.stream.clone(),
        };
        match watch::watch(repo, &settings.codec, spool, &watch_options, flags, metrics)? {
            Stopped::Terminate => return Ok(()),
            Stopped::Reload => match (options.reload)() {
                Ok(fresh) => {
                    tracing::info!(
                        jobs = %fresh.schedule.describe(),
                        "SIGHUP: settings reloaded; jobs: {}",
                        fresh.schedule.describe()
                    );
                    current.replace(fresh);
                }
                Err(message) => tracing::warn!(
                    error = %message,
                    "SIGHUP: settings not reloaded, the running ones stay: {message}"
                ),
            },
        }
    }
}
