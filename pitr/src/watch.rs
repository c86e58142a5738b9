//! The watcher: archives WAL files the moment PostgreSQL marks them ready, in parallel, so that
//! `archive_command` (still `pitr archive-push %p`) finds them stored and returns at once.
//!
//! Filesystem events (inotify through `notify`) are only hints: the watcher also scans
//! `pg_wal/archive_status` at start, after every hint, on queue overflow and every `rescan`
//! interval, and polls where inotify is unavailable. Ready files are taken history files first,
//! then oldest first, as PostgreSQL's archiver does. Every store has exactly the validation and
//! durability of archive-push; only then is the spool marker written. The watcher never renames
//! `.ready`/`.done`: PostgreSQL does, once archive-push reports success. A failing file is
//! retried with backoff and reported; WAL is never dropped. Prefetched WAL that a recovery of
//! this data directory left in the spool is deleted once the data directory is out of recovery.
//!
//! It logs through `tracing` (the binary decides where the events go): each file archived (info,
//! with `segment` and `duration_ms`), each failure (warn, with `segment`, `error` and
//! `retry_in_s`), and what else an operator should know.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use notify::{PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};

use crate::archive::{self, Site};
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::prefetch;
use crate::repo::Repo;
use crate::spool::Spool;
use crate::stream::{self, StreamOptions};

/// How to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The data directory.
    pub pgdata: PathBuf,
    /// Files archived at once.
    pub workers: usize,
    /// How often to rescan without a hint.
    pub rescan: Duration,
    /// Stream WAL from a replication slot as well (see `stream.rs`).
    pub stream: Option<StreamOptions>,
}

/// Flags set from signal handlers in the binary.
#[derive(Debug, Clone, Default)]
pub struct StopFlags {
    /// SIGTERM/SIGINT: finish in-flight files and return.
    pub terminate: Arc<AtomicBool>,
    /// SIGHUP: finish in-flight files and return, to be called again with new settings.
    pub reload: Arc<AtomicBool>,
}

/// Why [`watch`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to terminate.
    Terminate,
    /// Asked to reload settings.
    Reload,
}

/// What the watcher counts while it runs, beside its log events: the daemon's metrics.
pub trait WatchEvents: Send + Sync {
    /// A file is durably in the repository (or was already), after `elapsed`.
    fn archived(&self, elapsed: Duration);
    /// A file failed; it is retried.
    fn failed(&self);
}

/// Counts nothing: `pitr watch` serves no metrics.
impl WatchEvents for () {
    fn archived(&self, _elapsed: Duration) {}

    fn failed(&self) {}
}

/// Logs and counts a file durably in the repository.
pub(crate) fn archived(events: &dyn WatchEvents, name: &str, elapsed: Duration) {
    tracing::info!(segment = %name, duration_ms = elapsed.as_millis() as u64, "archived");
    events.archived(elapsed);
}

/// Logs and counts a file that failed, retried after `retry_in`.
fn failed(events: &dyn WatchEvents, name: &str, error: &Error, retry_in: Duration) {
    tracing::warn!(
        segment = %name,
        error = %error,
        retry_in_s = retry_in.as_secs(),
        "archiving failed; retrying (nothing is dropped)"
    );
    events.failed();
}

/// Watches `options.pgdata` until a stop flag is set.
pub fn watch(
    repo: &Repo,
    codec: &Codec,
    spool: &Spool,
    options: &WatchOptions,
    flags: &StopFlags,
    events: &dyn WatchEvents,
) -> Result<Stopped> {
    let status_dir = options.pgdata.join("pg_wal").join("archive_status");
    if !status_dir.is_dir() {
        return Err(Error::Refused(format!(
            "{} does not exist: is {} a data directory?",
            status_dir.display(),
            options.pgdata.display()
        )));
    }
    spool.ensure()?;
    let (hints, hinted) = mpsc::channel();
    let _watcher = hint_source(&status_dir, hints)?;
    tracing::info!(
        pgdata = %options.pgdata.display(),
        workers = options.workers,
        repo = %repo.location(),
        "watching"
    );
    let queue = Queue::default();
    let site = Site {
        data_dir: Some(options.pgdata.clone()),
        spool: Some(spool.clone()),
    };
    let work = Work {
        repo,
        codec,
        site: &site,
        spool,
        queue: &queue,
        events,
        pg_wal: options.pgdata.join("pg_wal"),
    };
    let receiver_stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..options.workers.max(1) {
            scope.spawn(|| work.run_worker());
        }
        if let Some(stream_options) = &options.stream {
            scope.spawn(|| {
                if let Err(e) = stream::receive(
                    repo,
                    codec,
                    spool,
                    Some(&work.pg_wal),
                    stream_options,
                    &receiver_stop,
                    events,
                ) {
                    tracing::error!(error = %e, "WAL receiver stopped");
                }
            });
        }
        // The workers and the receiver stop however this loop ends, a panic included: the scope
        // waits for them.
        let _close = CloseOnDrop(&queue, &receiver_stop);
        let stopped = loop {
            if let Err(e) = work.scan(&status_dir) {
                tracing::warn!(dir = %status_dir.display(), error = %e, "scanning failed");
            }
            if prefetch::delete_after_recovery(spool, &options.pgdata) {
                tracing::info!(
                    dir = %spool.prefetch_dir().display(),
                    "deleted the prefetched WAL a finished recovery left"
                );
            }
            if flags.terminate.load(Ordering::SeqCst) {
                break Stopped::Terminate;
            }
            if flags.reload.swap(false, Ordering::SeqCst) {
                break Stopped::Reload;
            }
            let rescan = options.rescan.min(Duration::from_secs(1));
            match hinted.recv_timeout(rescan) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => while hinted.try_recv().is_ok() {},
                // No hints any more: rescans alone, at their interval.
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(rescan),
            }
        };
        Ok(stopped)
    })
}

/// Closes the queue and stops the receiver when dropped.
struct CloseOnDrop<'a>(&'a Queue, &'a AtomicBool);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
        self.1.store(true, Ordering::SeqCst);
    }
}

/// inotify where the kernel offers it, polling otherwise; either way each event is a hint.
fn hint_source(dir: &Path, hints: mpsc::Sender<()>) -> Result<Box<dyn Watcher>> {
    let poll_hints = hints.clone();
    // inotify also reports opening and reading the directory, which every scan does: such an
    // event is no hint (else each scan would hint the next, and the watcher would spin).
    let handler = move |event: notify::Result<notify::Event>| {
        if !event.is_ok_and(|e| matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = hints.send(());
        }
    };
    let watching = |mut watcher: Box<dyn Watcher>| watcher.watch(dir, RecursiveMode::NonRecursive).map(|()| watcher);
    let inotify = RecommendedWatcher::new(handler, notify::Config::default())
        .map(|w| Box::new(w) as Box<dyn Watcher>)
        .and_then(watching);
    match inotify {
        Ok(watcher) => Ok(watcher),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "inotify unavailable; polling instead");
            let config = notify::Config::default().with_poll_interval(Duration::from_millis(500));
            let poller = PollWatcher::new(
                move |_: notify::Result<notify::Event>| {
                    let _ = poll_hints.send(());
                },
                config,
            )
            .map(|w| Box::new(w) as Box<dyn Watcher>)
            .and_then(watching);
            poller.map_err(|e| Error::Refused(format!("cannot watch {}: {e}", dir.display())))
        }
    }
}

/// Ready files waiting, ordered as PostgreSQL's archiver orders them.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    wakeup: Condvar,
}

#[derive(Default)]
struct QueueState {
    /// (not a history file, name): history files sort first, then names oldest first.
    waiting: BTreeSet<(bool, String)>,
    in_flight: HashSet<String>,
    /// Failed files and when they may be tried again, with the current backoff.
    retry: HashMap<String, (Instant, Duration)>,
    closed: bool,
}

impl Queue {
    fn offer(&self, name: String) {
        let mut state = self.state.lock().expect("not poisoned");
        let backing_off = state.retry.get(&name).is_some_and(|(at, _)| *at > Instant::now());
        if !backing_off && !state.in_flight.contains(&name) {
            state.waiting.insert((!name.ends_with(".history"), name));
            self.wakeup.notify_one();
        }
    }

    /// The next file to archive, or `None` once closed.
    fn take(&self) -> Option<String> {
        let mut state = self.state.lock().expect("not poisoned");
        loop {
            if state.closed {
                return None;
            }
            if let Some((_, name)) = state.waiting.pop_first() {
                state.in_flight.insert(name.clone());
                return Some(name);
            }
            state = self
                .wakeup
                .wait_timeout(state, Duration::from_millis(500))
                .expect("not poisoned")
                .0;
        }
    }

    /// Marks `name` done; a failure schedules a retry with doubled backoff and returns it.
    fn done(&self, name: &str, failed: bool) -> Duration {
        let mut state = self.state.lock().expect("not poisoned");
        state.in_flight.remove(name);
        if !failed {
            state.retry.remove(name);
            return Duration::ZERO;
        }
        let backoff = state
            .retry
            .get(name)
            .map_or(Duration::from_secs(1), |(_, b)| (*b * 2).min(Duration::from_secs(60)));
        state
            .retry
            .insert(name.to_string(), (Instant::now() + backoff, backoff));
        backoff
    }

    fn close(&self) {
        self.state.lock().expect("not poisoned").closed = true;
        self.wakeup.notify_all();
    }
}

struct Work<'a> {
    repo: &'a Repo,
    codec: &'a Codec,
    site: &'a Site,
    spool: &'a Spool,
    queue: &'a Queue,
    events: &'a dyn WatchEvents,
    pg_wal: PathBuf,
}

impl Work<'_> {
    /// Offers every `.ready` file not stored yet; forgets markers of files no longer ready.
    fn scan(&self, status_dir: &Path) -> Result<()> {
        let mut ready = Vec::new();
        for entry in std::fs::read_dir(status_dir)
            .map_err(Error::io("list", status_dir))?
            .flatten()
        {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(".ready") {
                ready.push(name.to_string());
            }
        }
        for name in &ready {
            let stored = std::fs::metadata(self.pg_wal.join(name)).is_ok_and(|m| self.spool.was_pushed(name, &m));
            if !stored {
                self.queue.offer(name.clone());
            }
        }
        self.spool.forget_pushed_except(&ready)
    }

    fn run_worker(&self) {
        while let Some(name) = self.queue.take() {
            let started = Instant::now();
            let path = self.pg_wal.join(&name);
            let result = archive::push(self.repo, self.codec, &path, self.site).and_then(|_| {
                let meta = std::fs::metadata(&path).map_err(Error::io("inspect", &path))?;
                self.spool.mark_pushed(&name, &meta)
            });
            match result {
                Ok(()) => {
                    self.queue.done(&name, false);
                    archived(self.events, &name, started.elapsed());
                }
                Err(_) if !path.exists() => {
                    // PostgreSQL archived and removed it meanwhile: nothing to do.
                    self.queue.done(&name, false);
                }
                Err(e) => {
                    let retry_in = self.queue.done(&name, true);
                    failed(self.events, &name, &e, retry_in);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_first_then_oldest_first() {
        let queue = Queue::default();
        for name in [
            "000000020000000000000005",
            "000000010000000000000009",
            "00000002.history",
        ] {
            queue.offer(name.to_string());
        }
        assert_eq!(queue.take().as_deref(), Some("00000002.history"));
        assert_eq!(queue.take().as_deref(), Some("000000010000000000000009"));
        assert_eq!(queue.take().as_deref(), Some("000000020000000000000005"));
    }

    #[test]
    fn a_failed_file_backs_off_and_is_not_offered_meanwhile() {
        let queue = Queue::default();
        queue.offer("000000010000000000000001".into());
        let name = queue.take().unwrap();
        queue.offer(name.clone()); // in flight: not queued twice
        assert_eq!(queue.done(&name, true), Duration::from_secs(1));
        queue.offer(name.clone()); // backing off
        assert!(queue.state.lock().unwrap().waiting.is_empty());
        queue.state.lock().unwrap().in_flight.insert(name.clone());
        assert_eq!(queue.done(&name, true), Duration::from_secs(2), "backoff doubles");
        queue.close();
        assert_eq!(queue.take(), None);
    }
}
