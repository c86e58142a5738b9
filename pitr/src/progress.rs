//! Progress and warnings of long work, as a trait: the library reports, the binary decides how
//! to show it (a progress bar on a terminal, nothing in a script).

/// Receives progress of a long operation. Every method has a do-nothing default.
pub trait Progress: Send + Sync {
    /// The work is known: this many files and bytes.
    fn begin(&self, _files: u64, _bytes: u64) {}

    /// One more file of this many bytes is done.
    fn advance(&self, _bytes: u64) {}

    /// The work is done.
    fn finish(&self) {}

    /// What is happening now, for work measured in steps rather than bytes.
    fn status(&self, _message: &str) {}

    /// Something the operator should know that does not stop the work.
    fn warn(&self, _message: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
