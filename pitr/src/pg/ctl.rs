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
    /// The OS user named `name`.
    pub fn named(name: &str) -> Result<Owner> {
        passwd_entry(|f| f[0] == name).ok_or_else(|| Error::Refused(format!("there is no OS user '{name}'")))
    }

    /// The user running pitr.
    pub fn current() -> Result<Owner> {
        let uid = rustix::process::geteuid().as_raw();
        passwd_entry(|f| f[2] == uid.to_string()).ok_or_else(|| Error::Refused(format!("uid {uid} has no name")))
    }

    /// The owner of `path`.
    pub fn of(path: &Path) -> Result<Owner> {
        let meta = std::fs::metadata(path).map_err(Error::io("inspect", path))?;
        if meta.uid() == 0 {
            return Err(Error::Refused(format!(
                "{} is owned by root: PostgreSQL does not run as root; chown it to the PostgreSQL OS user",
                path.display()
            )));
        }
        let name = passwd_entry(|f| f[2] == meta.uid().to_string()).map_or_else(|| meta.uid().to_string(), |o| o.name);
        Ok(Owner {
            uid: meta.uid(),
            gid: meta.gid(),
            name,
        })
    }

    /// A command that runs as this user (switching user needs root; otherwise it must be us).
    /// pitr's own environment (`PITR_*`) is not passed on: the archive and restore commands pitr
    /// writes for a server it starts carry their options explicitly, and must not pick up the
    /// operator's. The keys of an encrypted repository are the exception
    /// ([`crate::crypt::KEY_VARIABLES`]): the restore_command of the server needs them to read it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        if rustix::process::geteuid().as_raw() == 0 {
            command.uid(self.uid).gid(self.gid);
        }
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if name_text.starts_with("PITR_") && !crate::crypt::KEY_VARIABLES.contains(&&*name_text) {
                command.env_remove(name);
            }
        }
        command.env("HOME", std::env::temp_dir());
        command
    }
}

/// The first /etc/passwd entry whose fields satisfy `matches`.
fn passwd_entry(matches: impl Fn(&[&str]) -> bool) -> Option<Owner> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() > 3 && matches(f))
        .find_map(|f| {
            Some(Owner {
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                name: f[0].to_string(),
            })
        })
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

/// The newest server binaries found (for work that has no version to match, like the demo).
pub fn newest_bindir() -> Result<(PathBuf, u32)> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PITR_PG_BINDIR")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        candidates.extend(entries.flatten().map(|e| e.path().join("bin")));
    }
    candidates
        .into_iter()
        .filter(|dir| dir.join("initdb").is_file())
        .filter_map(|dir| major_version_of(&dir).map(|v| (dir, v)))
        .max_by_key(|(_, v)| *v)
        .ok_or_else(|| {
            Error::Refused(
                "no PostgreSQL server binaries found (PITR_PG_BINDIR, /usr/lib/postgresql/*/bin): install them \
                 (Debian: apt-get install postgresql) or set PITR_PG_BINDIR"
                    .into(),
            )
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

/// Stops the server in `pgdata` as `owner` with shutdown `mode` (`fast` or `immediate`), waiting
/// for it; an error only when it is still running afterwards.
pub fn stop(bindir: &Path, owner: &Owner, pgdata: &Path, mode: &str) -> Result<()> {
    let args = [
        "-D".as_ref(),
        pgdata.as_os_str(),
        "-m".as_ref(),
        mode.as_ref(),
        "-w".as_ref(),
        "stop".as_ref(),
    ];
    let out = pg_ctl(bindir, owner, &args)?;
    if out.status.success() || !pgdata.join("postmaster.pid").exists() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "could not stop the server in {}: {}",
        pgdata.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}
