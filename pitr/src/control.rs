//! Reading a data directory's state without a server: `global/pg_control` and `PG_VERSION`.
//!
//! Only fields whose offsets are the same in PostgreSQL 12–18 are read (see `pg::PgVersion`):
//! system identifier @0, state @16, latest checkpoint @32, its timeline @48.

use std::path::Path;

use crate::error::{Error, Result};
use crate::wal::{Lsn, TimelineId};

/// Path of the control file inside a data directory.
pub const PG_CONTROL: &str = "global/pg_control";

/// `DBState` values that matter here.
pub const DB_SHUTDOWNED: u32 = 1;

/// What pg_control and PG_VERSION say about a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataDirIdentity {
    /// `system_identifier`.
    pub system_identifier: u64,
    /// The major version from `PG_VERSION`.
    pub pg_version: u32,
    /// `state` (`DBState`: 1 shut down, 2 shut down in recovery, 6 in production, ...).
    pub state: u32,
    /// `checkPoint`: the latest checkpoint record (after a clean shutdown, the last record).
    pub checkpoint: Lsn,
    /// `checkPointCopy.ThisTimeLineID`: the timeline of that checkpoint.
    pub timeline: TimelineId,
}

/// Reads the identity of the data directory `pgdata`.
pub fn read_identity(pgdata: &Path) -> Result<DataDirIdentity> {
    let not_a_data_dir = |what: &str| {
        Error::Refused(format!(
            "{} is not a PostgreSQL data directory ({what})",
            pgdata.display()
        ))
    };
    let version_path = pgdata.join("PG_VERSION");
    let version = std::fs::read_to_string(&version_path).map_err(|_| not_a_data_dir("no readable PG_VERSION"))?;
    let pg_version = version
        .trim()
        .parse()
        .map_err(|_| not_a_data_dir("PG_VERSION holds no version"))?;
    let control_path = pgdata.join(PG_CONTROL);
    let control = std::fs::read(&control_path).map_err(Error::io("read", &control_path))?;
    if control.len() < 52 {
        return Err(not_a_data_dir("pg_control is truncated"));
    }
    let u32_at = |o: usize| u32::from_le_bytes(control[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(control[o..o + 8].try_into().expect("8 bytes"));
    Ok(DataDirIdentity {
        system_identifier: u64_at(0),
        pg_version,
        state: u32_at(16),
        checkpoint: Lsn(u64_at(32)),
        timeline: u32_at(48),
    })
}
