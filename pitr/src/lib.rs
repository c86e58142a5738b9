//! # pitr — the core of a PostgreSQL WAL archiver and point-in-time-recovery toolkit
//!
//! This crate owns the domain; the `pitr` binary only parses arguments, loads settings, prints
//! and maps [`Error`]s to exit codes. It never prints to a terminal.
//!
//! - [`wal`]: PostgreSQL's WAL formats — LSNs, segment names and sizes, page-header validation.
//! - [`codec`]: the stored-object format (compression + CRC-32), one for every stored file.
//! - [`storage`]: the create-only [`storage::Storage`] trait and its local-disk backend.
//! - [`repo`]: the repository's layout and the metadata binding it to one cluster.
//! - [`archive`]: `archive_command` / `restore_command` — push and get with their refusal rules.
//! - [`error`]: the error type and the error policy.

pub mod archive;
pub mod codec;
pub mod error;
pub mod repo;
pub mod storage;
pub mod wal;

pub use error::{Error, Result};
