//! Named restore points: created on the server before risky changes, and recorded in the
//! repository's catalog (`restore_points/`) so that recovery can find them by name.
//!
//! PostgreSQL does not keep names unique and recovery stops at the first match, so pitr
//! refuses a duplicate unless asked, and refuses names PostgreSQL would truncate or reject.
//!
//! Waiting for WAL to reach the repository (`wait_until_archived`, also used by backups and
//! `pitr check`) watches the server's archiver and stops at once when archive_command fails.

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::json;
use crate::error::{Error, Result};
use crate::interrupt;
use crate::pg::{ArchiverStatus, Server};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::wal::{Lsn, Segment, SegmentSize, TimelineId, WalFileName};

/// `MAXFNAMELEN - 1`: the longest name PostgreSQL accepts, in bytes.
pub const MAX_NAME_BYTES: usize = 63;

/// The directory of the catalog: one record per restore point.
pub(crate) const CATALOG_DIR: &str = "restore_points/";

/// A recorded restore point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestorePoint {
    /// The name given to `pg_create_restore_point`.
    pub name: String,
    /// The restore point record's LSN.
    pub lsn: Lsn,
    /// When it was created.
    pub time: DateTime<Utc>,
    /// The timeline it was created on.
    pub timeline: TimelineId,
    /// The segment holding it.
    pub wal_file: String,
    /// The repository generation whose WAL holds it (written only from generation 2 on, so that
    /// records of a repository without upgrades stay as pitr before generations wrote them).
    #[serde(default = "first_generation", skip_serializing_if = "is_first_generation")]
    pub generation: u32,
}

fn first_generation() -> u32 {
    1
}

fn is_first_generation(generation: &u32) -> bool {
    *generation == 1
}

/// How to create a restore point.
#[derive(Debug, Clone, Copy)]
pub struct CreateOptions {
    /// Switch WAL and wait until the segment is archived.
    pub switch_wal: bool,
    /// Accept a name that is already in the catalog.
    pub allow_duplicate: bool,
    /// How long to wait for the segment to be archived.
    pub timeout: Duration,
}

/// Every readable recorded restore point of every generation, by generation and then in LSN
/// order ([`read_catalog`] also names the unreadable ones).
pub fn catalog(repo: &Repo) -> Result<Vec<RestorePoint>> {
    Ok(read_catalog(repo)?.points)
}

/// The restore point catalog as read: one damaged record never hides the others.
#[derive(Debug, Default)]
pub struct PointCatalog {
    /// The readable records, by generation and then in LSN order.
    pub points: Vec<RestorePoint>,
    /// Why each unreadable record could not be read.
    pub unreadable: Vec<Error>,
}

/// Reads every record of the catalog; an error only when the catalog cannot be listed.
pub fn read_catalog(repo: &Repo) -> Result<PointCatalog> {
    let mut catalog = PointCatalog::default();
    for name in repo.storage().list(CATALOG_DIR)? {
        let key = format!("{CATALOG_DIR}{name}");
        let read = match repo.storage().get(&key) {
            Ok(Some(bytes)) => json::from_slice::<RestorePoint>(&bytes, &repo.storage().describe(&key)),
            Ok(None) => continue,
            Err(e) => Err(e),
        };
        match read {
            Ok(point) => catalog.points.push(point),
            Err(e) => catalog.unreadable.push(e),
        }
    }
    catalog.points.sort_by_key(|p| (p.generation, p.timeline, p.lsn));
    Ok(catalog)
}

/// Creates a restore point on the server and records it, in the repository's current
/// generation, once its WAL is archived.
/// The map of relation names is recorded first, so that `pitr wal events` names what the WAL
/// before the point did.
pub async fn create(
    repo: &Repo,
    server: &Server,
    name: &str,
    options: CreateOptions,
    progress: &dyn Progress,
) -> Result<RestorePoint> {
    validate_name(name)?;
    let repo = &repo.pin()?;
    let generation = repo.generation()?.ok_or_else(|| {
        Error::Refused(format!(
            "repository {} holds no WAL yet: configure archiving first",
            repo.location()
        ))
    })?;
    let info = generation.cluster();
    if server.system_identifier().await? != info.system_identifier {
        return Err(Error::Refused(format!(
            "the server is not the current cluster of repository {} ({}): run restore-point against the server \
             that archives into it (after a major upgrade, once `pitr upgrade-repo` ran)",
            repo.location(),
            info.describe()
        )));
    }
    let same_generation = |p: &&RestorePoint| p.generation == generation.generation;
    if !options.allow_duplicate && catalog(repo)?.iter().filter(same_generation).any(|p| p.name == name) {
        return Err(Error::Refused(format!(
            "a restore point named '{name}' exists already (recovery would stop at the first one): \
             choose another name or pass --allow-duplicate"
        )));
    }
    crate::names::record_beside("the restore point", repo, server, progress).await;
    let lsn = server.create_restore_point(name).await?;
    let time = Utc::now();
    let timeline = server.current_timeline().await?;
    let size = SegmentSize::new(info.wal_segment_size).unwrap_or(SegmentSize::DEFAULT);
    let wal_file = Segment {
        timeline,
        segno: size.segment_of(lsn),
    }
    .file_name(size);
    if options.switch_wal {
        let since = server.archiver_status().await?;
        server.switch_wal().await?;
        let not_recorded = "the restore point exists on the server but is not recorded";
        match wait_until_archived(repo, server, &WalFileName::parse(&wal_file)?, options.timeout, &since).await? {
            Waited::Archived => {}
            Waited::TimedOut => {
                return Err(Error::Refused(format!(
                    "{wal_file} did not reach repository {} within {} s: check archive_command and \
                     pg_stat_archiver; {not_recorded}",
                    repo.location(),
                    options.timeout.as_secs()
                )))
            }
            Waited::Failing(reason) => return Err(Error::Refused(format!("{reason}; {not_recorded}"))),
        }
    }
    let point = RestorePoint {
        name: name.to_string(),
        lsn,
        time,
        timeline,
        wal_file,
        generation: generation.generation,
    };
    let key = format!("{CATALOG_DIR}{}_{:016X}.json", time.format("%Y%m%dT%H%M%S%6f"), lsn.0);
    repo.storage().put_if_absent(&key, &json::to_vec(&point))?;
    Ok(point)
}

/// Checks a restore point's name as PostgreSQL will (not empty, at most [`MAX_NAME_BYTES`]), so
/// that a bad name is refused before anything is done.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidInput("a restore point needs a name".into()));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidInput(format!(
            "restore point name is {} bytes; PostgreSQL allows at most {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    Ok(())
}

/// How waiting for a WAL file to be archived ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Waited {
    /// It is in the repository.
    Archived,
    /// The time allowed passed.
    TimedOut,
    /// archive_command keeps failing: why, as far as the server tells.
    Failing(String),
}

/// Failures in a row after which PostgreSQL's archiver pauses (`NUM_ARCHIVE_RETRIES` in
/// pgarch.c): that many new failures, the last one after any success, mean archive_command is
/// failing rather than hiccuping.
const ARCHIVER_TRIES: i64 = 3;

/// How often pg_stat_archiver is read while waiting.
const ARCHIVER_CHECK: Duration = Duration::from_millis(500);

/// Waits until `name` is in the repository, for at most `timeout`, watching the server's
/// archiver against `since` (its statistics read before the WAL switch that made `name` ready:
/// read later, the failures could all be behind it, and the archiver asleep for a minute): when
/// archive_command keeps failing it stops at once with the reason
/// (pg_stat_archiver, and the last `pitr archive-push:` error line of the server log when
/// pitr can read it). An interruption by the operator ends the wait.
pub(crate) async fn wait_until_archived(
    repo: &Repo,
    server: &Server,
    name: &WalFileName,
    timeout: Duration,
    since: &ArchiverStatus,
) -> Result<Waited> {
    let started = Instant::now();
    let mut checked = Instant::now();
    while !repo.has_wal(name)? {
        interrupt::check(&format!("waiting for {name} to be archived"))?;
        if started.elapsed() > timeout {
            return Ok(Waited::TimedOut);
        }
        if checked.elapsed() >= ARCHIVER_CHECK {
            checked = Instant::now();
            let now = server.archiver_status().await?;
            if now.failing && now.failed_count >= since.failed_count + ARCHIVER_TRIES {
                return Ok(Waited::Failing(failing(server, name, since, &now).await));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Waited::Archived)
}

/// "archive_command is failing: ..." with what the server tells.
async fn failing(server: &Server, name: &WalFileName, before: &ArchiverStatus, now: &ArchiverStatus) -> String {
    let last = now.last_failed_wal.as_deref().unwrap_or("an unknown file");
    let log = match server.log_file().await {
        Some(file) => match last_push_error(&file) {
            Some(line) => format!("; the server log {} says: {line}", file.display()),
            None => format!("; see the server log {}", file.display()),
        },
        None => "; see the server log".to_string(),
    };
    format!(
        "archive_command is failing: pg_stat_archiver counts {} failures while pitr waited for {name}, the last \
         for {last}{log}; fix archive_command (or what it archives into) and try again",
        now.failed_count - before.failed_count
    )
}

/// The last line of the server log that pitr's archive-push wrote about an error.
fn last_push_error(log: &std::path::Path) -> Option<String> {
    const TAIL: u64 = 256 * 1024;
    let mut file = std::fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    // "pitr archive-push: error: ..." or, for bad arguments or settings, "... usage error: ...".
    let failed =
        |line: &&str| line.contains("pitr archive-push: error:") || line.contains("pitr archive-push: usage error:");
    text.lines().rev().find(failed).and_then(|line| {
        line.find("pitr archive-push:")
            .map(|at| line[at..].trim_end().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_fit_postgres() {
        assert!(validate_name("before_migration_42").is_ok());
        assert!(validate_name(&"x".repeat(63)).is_ok());
        assert!(validate_name(&"x".repeat(64))
            .unwrap_err()
            .to_string()
            .contains("at most 63"));
        assert!(validate_name(&"é".repeat(32)).is_err(), "the limit is in bytes");
        assert!(validate_name("").is_err());
    }
}
