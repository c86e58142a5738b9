//! Named restore points: created on the server before risky changes, and recorded in the
//! repository's catalog (`restore_points/`) so that recovery can find them by name.
//!
//! PostgreSQL does not keep names unique and recovery stops at the first match, so pitr
//! refuses a duplicate unless asked, and refuses names PostgreSQL would truncate or reject.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::json;
use crate::error::{Error, Result};
use crate::pg::Server;
use crate::repo::Repo;
use crate::wal::{Lsn, Segment, SegmentSize, TimelineId, WalFileName};

/// `MAXFNAMELEN - 1`: the longest name PostgreSQL accepts, in bytes.
pub const MAX_NAME_BYTES: usize = 63;

const CATALOG_DIR: &str = "restore_points/";

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

/// Every readable recorded restore point, in LSN order ([`read_catalog`] also names the
/// unreadable ones).
pub fn catalog(repo: &Repo) -> Result<Vec<RestorePoint>> {
    Ok(read_catalog(repo)?.points)
}

/// The restore point catalog as read: one damaged record never hides the others.
#[derive(Debug, Default)]
pub struct PointCatalog {
    /// The readable records, in LSN order.
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
    catalog.points.sort_by_key(|p| (p.timeline, p.lsn));
    Ok(catalog)
}

/// Creates a restore point on the server and records it once its WAL is archived.
pub async fn create(repo: &Repo, server: &Server, name: &str, options: CreateOptions) -> Result<RestorePoint> {
    validate_name(name)?;
    if !options.allow_duplicate && catalog(repo)?.iter().any(|p| p.name == name) {
        return Err(Error::Refused(format!(
            "a restore point named '{name}' exists already (recovery would stop at the first one): \
             choose another name or pass --allow-duplicate"
        )));
    }
    let info = repo.info()?.ok_or_else(|| {
        Error::Refused(format!(
            "repository {} holds no WAL yet: configure archiving first",
            repo.location()
        ))
    })?;
    if server.system_identifier().await? != info.system_identifier {
        return Err(Error::Refused(format!(
            "the server is not the cluster of repository {} (system identifier {})",
            repo.location(),
            info.system_identifier
        )));
    }
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
        server.switch_wal().await?;
        if !wait_until_archived(repo, &WalFileName::parse(&wal_file)?, options.timeout).await? {
            return Err(Error::Refused(format!(
                "{wal_file} did not reach repository {} within {} s: check archive_command and \
                 pg_stat_archiver; the restore point exists on the server but is not recorded",
                repo.location(),
                options.timeout.as_secs()
            )));
        }
    }
    let point = RestorePoint {
        name: name.to_string(),
        lsn,
        time,
        timeline,
        wal_file,
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

/// Waits until `name` is in the repository; `false` when `timeout` passed first.
pub(crate) async fn wait_until_archived(repo: &Repo, name: &WalFileName, timeout: Duration) -> Result<bool> {
    let started = Instant::now();
    while !repo.has_wal(name)? {
        if started.elapsed() > timeout {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(true)
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
