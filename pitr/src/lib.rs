//! # pitr — the core of a PostgreSQL WAL archiver and point-in-time-recovery toolkit
//!
//! This crate owns the domain; the `pitr` binary only parses arguments, loads settings, prints
//! and maps [`Error`]s to exit codes. It never prints to a terminal.
//!
//! - [`wal`]: PostgreSQL's WAL formats — LSNs, segment names and sizes, page-header validation,
//!   and [`wal::records`], the records inside a segment.
//! - [`inspect`]: `pitr wal events` — the archived WAL read back as transactions and what they
//!   did (the DROP, TRUNCATE or DELETE to undo), with names from [`names`].
//! - [`timeline`]: which timeline holds each segment when recovery follows a timeline's history.
//! - [`codec`]: the stored-object format (compression + CRC-32), one for every stored file.
//! - [`crypt`]: encryption at rest — age recipients and identities, the encrypted-object envelope.
//! - [`fsio`]: trusted file operations: symlink-safe, crash-safe, exact modes, page-cache-shaped writes.
//! - [`storage`]: the create-only [`storage::Storage`] trait and its backends (local disk, S3).
//! - [`repo`]: the repository's layout and the metadata binding it to one cluster.
//! - [`archive`]: `archive_command` / `restore_command` — push and get with their refusal rules.
//! - [`backup`]: base backups in tiers — take, catalog, restore of files, retention and WAL expiry.
//! - [`recover`]: point-in-time recovery — the plan, the restore, the settings, driving the server.
//! - [`restore_database`]: one database (or table) back into production from a private copy
//!   recovered at the target, beside the current one, verified, and switched by renames.
//! - [`restore_point`]: named restore points and their catalog in the repository.
//! - [`drill`]: restore drills — the newest backups recovered aside, their data checked
//!   (amcheck, checksums, SQL), the outcome recorded with RTO and RPO.
//! - [`verify`]: verification with alerts as data, `check-integrity`, and `check` of archiving.
//! - [`sync`]: `pitr sync`, the verified, resumable copy of a repository into a second one.
//! - [`info`]: what the repository offers now — recoverable windows, backups, archive.
//! - [`status_page`]: the status page — the recoverable window as a picture, alerts, verify, drills.
//! - [`generations`]: a repository's generations — created for a cluster on purpose (`create-repo`), and the next one after a major upgrade (`upgrade-repo`).
//! - [`setup`]: `pitr init` — a running server's archive settings, slot, repository and config
//!   file, planned, applied through `ALTER SYSTEM`, and checked.
//! - [`spool`]: the local spool beside the data directory (watcher markers, prefetched WAL).
//! - [`watch`]: the watcher that archives ready WAL files at once, in parallel.
//! - [`prefetch`]: fetching the next segments ahead of recovery into the spool.
//! - [`pg`]: the connection to a running server and the low-level backup API.
//! - [`control`]: a data directory's identity read from `pg_control` and `PG_VERSION`.
//! - [`progress`]: progress reporting as a trait, so the library never touches a terminal.
//! - [`daemon`]: the resident service — watcher, scheduled jobs, `/`, `/metrics` and `/health`.
//! - [`demo`]: `pitr demo`, the whole story on a throwaway cluster.
//! - [`interrupt`]: SIGINT/SIGTERM as a flag the long waits check, with cleanup on the way out.
//! - [`error`]: the error type and the error policy.
//! - [`crash_point`]: where the fault tests make pitr die as `kill -9` would.

pub mod archive;
pub mod backup;
pub mod codec;
pub mod control;
pub mod crash_point;
pub mod crypt;
pub mod daemon;
pub mod demo;
pub mod drill;
pub mod error;
pub mod fsio;
pub mod generations;
pub mod info;
pub mod inspect;
pub mod interrupt;
pub mod names;
pub mod pg;
pub mod prefetch;
pub mod progress;
pub mod recover;
pub mod repo;
pub mod restore_database;
pub mod restore_point;
pub mod setup;
pub mod spool;
pub mod status_page;
pub mod storage;
pub mod stream;
pub mod sync;
pub mod timeline;
pub mod verify;
pub mod wal;
pub mod watch;

pub use error::{Error, Result};
