//! A throwaway copy recovered aside: a fresh 0700 scratch directory (handed to the copy's OS
//! user when pitr runs as root), the cluster recovered there by [`super::execute`] and promoted
//! at the target with archiving off, on its private socket; and the cleanup, its server stopped
//! and the directory removed. `restore-database` and `drill` recover their copies this way.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pg::ctl::{self, Owner};
use crate::progress::Progress;
use crate::repo::Repo;

use super::{Action, Plan, RecoverOptions, RecoveryServer, Report};

/// The scratch directory of one run and the copy's data directory in it.
pub struct Scratch {
    /// The scratch directory.
    pub dir: PathBuf,
    /// The copy's data directory, `<dir>/data`.
    pub data: PathBuf,
    /// The OS user the copy runs as.
    pub owner: Owner,
    /// The copy's server binaries.
    pub bindir: PathBuf,
    keep: bool,
}

/// The copy, recovered and promoted at the target, running on its private socket.
pub struct RecoveredCopy {
    /// What recover reported.
    pub report: Report,
    /// Its server.
    pub server: RecoveryServer,
}

impl Scratch {
    /// Creates `<parent>/<prefix>XXXXXX` (0700; owned by the copy's OS user); `keep` leaves it
    /// (and the copy's server) in place at [`Scratch::finish`].
    pub fn create(repo: &Repo, parent: &Path, prefix: &str, pg_version: u32, keep: bool) -> Result<Scratch> {
        let bindir = ctl::bindir(pg_version)?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(Error::io("create a scratch directory in", parent))?
            .keep();
        let data = dir.join("data");
        let scratch = |owner| Scratch {
            dir: dir.clone(),
            data: data.clone(),
            owner,
            bindir: bindir.clone(),
            keep,
        };
        if !rustix::process::geteuid().is_root() {
            return Ok(scratch(Owner::current()?));
        }
        let owned = super::owner_for(repo, &data).and_then(|owner| {
            std::os::unix::fs::chown(&dir, Some(owner.uid), Some(owner.gid)).map_err(Error::io("chown", &dir))?;
            Ok(owner)
        });
        match owned {
            Ok(owner) => Ok(scratch(owner)),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Whether the copy stays at [`Scratch::finish`].
    pub fn kept(&self) -> bool {
        self.keep
    }

    /// Recovers the plan's target into the scratch directory and promotes it there, never
    /// archiving (the copy is thrown away; its new timeline goes nowhere); `verify_sql` runs
    /// in its database `postgres` and is reported, not judged.
    pub async fn recover(
        &self,
        repo: &Repo,
        plan: &Plan,
        jobs: usize,
        pitr_command: &str,
        verify_sql: Option<String>,
        progress: &dyn Progress,
    ) -> Result<RecoveredCopy> {
        let options = RecoverOptions {
            pgdata: self.data.clone(),
            force: false,
            action: Action::Promote,
            port: None,
            no_start: false,
            keep_archiving: false,
            verify_sql,
            verify_database: "postgres".into(),
            jobs,
            pitr_command: pitr_command.to_string(),
        };
        let report = super::execute(repo, plan, &options, progress).await?;
        progress.finish();
        let socket_dir = report.socket_dir.clone().ok_or_else(|| {
            Error::Refused(format!(
                "the copy in {} is not running after recovery: see its log {}",
                self.data.display(),
                self.data.join(super::RECOVERY_LOG).display()
            ))
        })?;
        Ok(RecoveredCopy {
            server: RecoveryServer::running_in(&self.data, socket_dir, self.owner.clone(), self.bindir.clone()),
            report,
        })
    }

    /// Stops the copy's server cleanly (fast shutdown, a shutdown checkpoint), if it runs.
    pub fn stop(&self) -> Result<()> {
        super::stop_if_running(&self.bindir, &self.owner, &self.data).map(|_| ())
    }

    /// Stops the copy's server (and removes its socket directory) and removes the scratch
    /// directory, unless it is kept; harmless when done already. Returns whether it was removed.
    pub fn finish(&self) -> Result<bool> {
        if self.keep {
            return Ok(false);
        }
        self.stop()?;
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", &self.dir)(e)),
            _ => Ok(true),
        }
    }
}
