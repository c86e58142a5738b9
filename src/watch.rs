//! `pitr watch` and `pitr daemon`: signals, settings reloads and log lines of the resident
//! commands.

use std::path::Path;
use std::time::Duration;

use pitr::daemon::{self, DaemonLog, DaemonOptions, DaemonSettings};
use pitr::repo::Repo;
use pitr::spool::Spool;
use pitr::watch::{self, StopFlags, Stopped, WatchEvents, WatchOptions};
use pitr::Error;

use crate::settings::Settings;

/// How often the watcher rescans without an inotify hint.
const RESCAN: Duration = Duration::from_secs(10);

/// One log line per event on stderr (the watcher runs under systemd or a terminal).
struct LogLines;

impl WatchEvents for LogLines {
    fn archived(&self, name: &str, elapsed: Duration) {
        eprintln!("pitr watch: archived {name} in {} ms", elapsed.as_millis());
    }

    fn failed(&self, name: &str, error: &Error, retry_in: Duration) {
        eprintln!(
            "pitr watch: error: {name}: {error}; retrying in {} s (nothing is dropped)",
            retry_in.as_secs()
        );
    }

    fn note(&self, message: &str) {
        eprintln!("pitr watch: {message}");
    }
}

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

/// Runs the daemon until SIGTERM or SIGINT; `verify` runs the scheduled verification. SIGHUP
/// reloads the settings; `connection` builds the backups' connection from them.
pub fn daemon(
    repo: &Repo,
    settings: &Settings,
    pgdata: &Path,
    listen: Option<String>,
    connection: fn(&Settings) -> pitr::Result<tokio_postgres::Config>,
    verify: Box<dyn Fn() -> pitr::Result<String> + Send + Sync>,
) -> pitr::Result<()> {
    let flags = signal_flags()?;
    let spool = Spool::at(settings.spool.clone().unwrap_or_else(|| Spool::default_for(pgdata)));
    let running = settings.clone();
    let options = DaemonOptions {
        pgdata: pgdata.to_path_buf(),
        listen: listen.unwrap_or_else(|| settings.listen.clone()),
        settings: daemon_settings(settings, connection).map_err(pitr::Error::InvalidInput)?,
        verify,
        reload: Box::new(move || {
            let fresh = crate::settings::reload(&running)?;
            needs_restart(&running, &fresh)?;
            daemon_settings(&fresh, connection)
        }),
    };
    daemon::run(repo, &spool, &options, &flags, &LogLines)
}

/// The daemon's share of `settings`.
fn daemon_settings(
    settings: &Settings,
    connection: fn(&Settings) -> pitr::Result<tokio_postgres::Config>,
) -> Result<DaemonSettings, String> {
    Ok(DaemonSettings {
        schedule: settings.schedule.clone(),
        workers: settings.jobs,
        name: settings.name.clone(),
        jobs: settings.jobs,
        codec: settings.codec,
        retention: settings.retention,
        connection: connection(settings).map_err(|e| e.to_string())?,
    })
}

/// A reload that changes what only a restart can apply is refused as a whole, so the daemon
/// never runs half on old settings without saying so.
fn needs_restart(running: &Settings, fresh: &Settings) -> Result<(), String> {
    let changed = [
        ("repo", running.repo != fresh.repo),
        ("spool", running.spool != fresh.spool),
        ("listen", running.listen != fresh.listen),
    ];
    match changed.iter().find(|(_, changed)| *changed) {
        Some((key, _)) => Err(format!("`{key}` changed, which needs a restart of pitr")),
        None => Ok(()),
    }
}

impl DaemonLog for LogLines {
    fn line(&self, line: &str) {
        eprintln!(
            "{} pitr daemon: {line}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
}

/// Runs the watcher until SIGTERM or SIGINT; SIGHUP reloads the settings (compression, and the
/// number of workers unless `--workers` fixed it).
pub fn run(repo: &Repo, settings: &Settings, pgdata: &Path, workers: Option<usize>) -> pitr::Result<()> {
    let flags = signal_flags()?;
    let mut codec = settings.codec;
    let spool = Spool::at(settings.spool.clone().unwrap_or_else(|| Spool::default_for(pgdata)));
    let mut options = WatchOptions {
        pgdata: pgdata.to_path_buf(),
        workers: workers.unwrap_or(settings.jobs),
        rescan: RESCAN,
    };
    LogLines.note(&format!(
        "watching {} with {} workers into {}",
        pgdata.display(),
        options.workers,
        repo.location()
    ));
    loop {
        match watch::watch(repo, &codec, &spool, &options, &flags, &LogLines)? {
            Stopped::Terminate => return Ok(()),
            Stopped::Reload => match crate::settings::reload(settings).and_then(|fresh| {
                needs_restart(settings, &fresh)?;
                Ok(fresh)
            }) {
                Ok(fresh) => {
                    codec = fresh.codec;
                    options.workers = workers.unwrap_or(fresh.jobs);
                    LogLines.note(&format!(
                        "settings reloaded: compression {}, {} workers",
                        codec.compression(),
                        options.workers
                    ));
                }
                Err(message) => LogLines.note(&format!("settings not reloaded, the running ones stay: {message}")),
            },
        }
    }
}
