//! Interruption by the operator (SIGINT, SIGTERM) of commands that start servers or wait long.
//!
//! The binary arms one flag with its signal handlers ([`flag`]); the long waits of the library
//! (following a recovering server's log, waiting for WAL to be archived, restoring a backup's
//! files, the demo's steps) [`check`] it and return [`Error::Interrupted`]. Cleanup happens on
//! the way out, in guards and error paths: the servers pitr started are stopped, their socket
//! directories and the demo's temporary directory removed. Without an armed flag nothing is
//! ever interrupted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The flag the signal handlers set.
pub fn flag() -> Arc<AtomicBool> {
    FLAG.get_or_init(Arc::default).clone()
}

/// Whether the operator asked pitr to stop.
pub fn requested() -> bool {
    FLAG.get().is_some_and(|flag| flag.load(Ordering::SeqCst))
}

/// [`Error::Interrupted`] once the operator asked pitr to stop; `doing` says what was under way.
pub fn check(doing: &str) -> Result<()> {
    if requested() {
        return Err(Error::Interrupted(format!("stopped while {doing}")));
    }
    Ok(())
}
