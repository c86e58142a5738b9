//! Running a server: finding the binaries of the right major version, starting and stopping a
//! data directory with `pg_ctl` as the directory's owner (PostgreSQL refuses to run as root).

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{Error, Result};

/// The OS user that owns a data directory; server commands run as this user.
#[derive(Debug, Clone)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// User name (the bootstrap superuser's name when initdb ran as this user).
    pub name: String,
}

impl Owner {
    /// The owner of `path`.
    pub fn of(path: &Path) -> Result<Owner> {
        let meta = std::fs::metadata(path).map_err(Error::io("inspect", path))?;
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let name = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == meta.uid().to_string())
            .map_or_else(|| meta.uid().to_string(), |f| f[0].to_string());
        if meta.uid() == 0 {
            return Err(Error::Refused(format!(
                "{} is owned by root: PostgreSQL does not run as root; chown it to the PostgreSQL OS user",
                path.display()
            )));
        }
        Ok(Owner {
            uid: meta.uid(),
            gid: meta.gid(),
            name,
        })
    }

    /// A command that runs as this user (switching user needs root; otherwise it must be us).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        if rustix::process::geteuid().as_raw() == 0 {
            command.uid(self.uid).gid(self.gid);
        }
        command.env("HOME", std::env::temp_dir());
        command
    }
}

/// The directory holding `pg_ctl` and `postgres` for major version `version`: PITR_PG_BINDIR,
/// then `pg_config --bindir`, then Debian's `/usr/lib/postgresql/<version>/bin`.
pub fn bindir(version: u32) -> Result<PathBuf> {
    let from_env = std::env::var_os("PITR_PG_BINDIR").map(PathBuf::from);
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
    [from_env, from_pg_config, Some(debian)]
        .into_iter()
        .flatten()
        .find(|dir| dir.join("pg_ctl").is_file() && major_version_of(dir) == Some(version))
        .ok_or_else(|| {
            Error::Refused(format!(
                "no PostgreSQL {version} server binaries found (PITR_PG_BINDIR, pg_config --bindir, \
                 /usr/lib/postgresql/{version}/bin): install them (Debian: apt-get install postgresql-{version}) \
                 or set PITR_PG_BINDIR"
            ))
        })
}

/// `postgres --version` → major version.
fn major_version_of(bindir: &Path) -> Option<u32> {
    let out = Command::new(bindir.join("postgres")).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().last()?.split('.').next()?.parse().ok()
}

/// Runs `pg_ctl` with `args` as `owner`.
pub fn pg_ctl(bindir: &Path, owner: &Owner, args: &[&std::ffi::OsStr]) -> Result<Output> {
    let program = bindir.join("pg_ctl");
    owner
        .command(&program)
        .args(args)
        .output()
        .map_err(Error::io("run", &program))
}
