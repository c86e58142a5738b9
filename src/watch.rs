//! `pitr watch`: the watcher's signals, settings reloads and log lines.

use std::path::Path;
use std::time::Duration;

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

/// Runs the watcher until SIGTERM or SIGINT; SIGHUP reloads the settings.
pub fn run(repo: &Repo, settings: &Settings, pgdata: &Path, workers: usize) -> pitr::Result<()> {
    let flags = StopFlags::default();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, flags.terminate.clone()).map_err(Error::io("handle signals in", pgdata))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, flags.reload.clone())
        .map_err(Error::io("handle signals in", pgdata))?;
    let mut codec = settings.codec;
    let spool = Spool::at(settings.spool.clone().unwrap_or_else(|| Spool::default_for(pgdata)));
    let options = WatchOptions {
        pgdata: pgdata.to_path_buf(),
        workers,
        rescan: RESCAN,
    };
    LogLines.note(&format!(
        "watching {} with {workers} workers into {}",
        pgdata.display(),
        repo.location()
    ));
    loop {
        match watch::watch(repo, &codec, &spool, &options, &flags, &LogLines)? {
            Stopped::Terminate => return Ok(()),
            Stopped::Reload => match crate::settings::reload(settings) {
                Ok(fresh) => {
                    codec = fresh.codec;
                    LogLines.note("settings reloaded");
                }
                Err(message) => LogLines.note(&format!("settings not reloaded: {message}")),
            },
        }
    }
}
