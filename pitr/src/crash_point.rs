//! Crash points: places where the fault tests make pitr die as `kill -9` would, to prove that
//! nothing is lost or half-visible after a crash at that exact moment (PostgreSQL has injection
//! points for the same purpose, src/backend/utils/misc/injection_point.c).
//!
//! `PITR_CRASH_AT=<point>` kills the process with SIGKILL when it reaches `<point>`;
//! `PITR_CRASH_AT=<point>#<n>` when it reaches it the n-th time. Without the variable, a point
//! costs one load of a cached value. The points are named `<operation>:<moment>`, e.g.
//! `put:synced` (a stored object is written and fsynced but not yet renamed into place).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The point (and how many times to pass it) that `PITR_CRASH_AT` names, read once.
fn armed() -> Option<&'static (String, u64)> {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let text = std::env::var("PITR_CRASH_AT").ok()?;
            Some(match text.split_once('#') {
                Some((point, n)) => (point.to_string(), n.parse().unwrap_or(1)),
                None => (text, 1),
            })
        })
        .as_ref()
}

/// Marks the crash point `name`: dies here when `PITR_CRASH_AT` says so.
pub fn reached(name: &str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some((point, nth)) = armed() else { return };
    if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; wait for it to land.
        loop {
            std::thread::park();
        }
    }
}
