//! Reading a data directory's identity without a server: `global/pg_control` (system
//! identifier, which never moves between versions) and `PG_VERSION`.

use std::path::Path;

use crate::error::{Error, Result};

/// Path of the control file inside a data directory.
pub const PG_CONTROL: &str = "global/pg_control";

/// The identity of a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataDirIdentity {
    /// `system_identifier`, the first 8 bytes of pg_control in every version.
    pub system_identifier: u64,
    /// The major version from `PG_VERSION`.
    pub pg_version: u32,
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
    let sysid = control
        .get(..8)
        .ok_or_else(|| not_a_data_dir("pg_control is truncated"))?;
    Ok(DataDirIdentity {
        system_identifier: u64::from_le_bytes(sysid.try_into().expect("8 bytes")),
        pg_version,
    })
}
