//! Driving PostgreSQL through recovery: start the restored directory as its owner on a private
//! unix socket (no TCP), follow the server log until the target is reached (promoted, paused or
//! shut down) or recovery fails, and report where it really stopped.
//!
//! The private socket keeps clients away from a copy that is not verified yet, and lets pitr
//! connect for verification whatever the copy's pg_hba.conf says. Those options are given on
//! pg_ctl's command line only: a later plain start uses the copy's own configuration.
//!
//! The copy starts with the configuration in its data directory (a restore writes one there when
//! the original's lay outside it, see `backup::configuration`), and the command line also keeps
//! the private run off the original server's files and independent of its secrets: no
//! `external_pid_file` (the original's would be overwritten), and no SSL, which a socket-only
//! server does not use and whose key pitr does not copy (on another host it may be missing, and a
//! server started by root-run pitr lacks the supplementary group, such as Debian's ssl-cert,
//! that lets the original read it).
//!
//! The copy runs as a superuser's playground until `pitr adopt`, so it is reachable by its
//! owner only: the socket directory is 0700 and owned by the server's OS user (whatever the
//! umask), the socket itself 0700 (`unix_socket_permissions`), and the private pg_hba.conf
//! admits only the OS users root and the owner, as the owner's role (peer authentication with a
//! user name map). The socket directory is removed whenever the run ends without a server left
//! in it; `pitr adopt` removes it after stopping the copy.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::interrupt;
use crate::pg::ctl::{self, Owner};
use crate::progress::Progress;

/// The name of every private socket directory starts with this.
pub(crate) const SOCKET_DIR_PREFIX: &str = "pitr-recover-";
/// Where private socket directories are created.
pub(crate) const SOCKET_DIR_PARENT: &str = "/tmp";
/// The server log of pitr recover's private run, in the data directory.
pub const RECOVERY_LOG: &str = "pitr_recover.log";
/// The private pg_hba.conf in the socket directory (it also tells pitr's own directories apart).
pub(crate) const PRIVATE_HBA: &str = "pg_hba.conf";
/// The user name map for peer authentication beside it.
const PRIVATE_IDENT: &str = "pg_ident.conf";

/// `recovery_target_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// End recovery and open for writes.
    Promote,
    /// Stay in recovery, read-only, for inspection.
    Pause,
    /// Stop the server at the target.
    Shutdown,
}

impl Action {
    /// The setting's value.
    pub fn setting(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Pause => "pause",
            Action::Shutdown => "shutdown",
        }
    }
}

/// A server started on a restored directory.
#[derive(Debug)]
pub struct RecoveryServer {
    /// The data directory.
    pub pgdata: PathBuf,
    /// The private socket directory.
    pub socket_dir: PathBuf,
    /// The server log of this run.
    pub log: PathBuf,
    /// The directory's owner.
    pub owner: Owner,
    /// Server binaries.
    pub bindir: PathBuf,
}

/// How recovery ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The action that happened.
    pub action: Action,
    /// PostgreSQL's own words on where it stopped ("recovery stopping before commit of ...").
    pub stopped: Option<String>,
    /// WAL files restored from the archive.
    pub files_restored: u64,
    /// The last one.
    pub last_restored: Option<String>,
    /// The new timeline after promotion.
    pub new_timeline: Option<u32>,
}

impl RecoveryServer {
    /// Starts `pgdata` (owned by `owner`) with binaries from `bindir`.
    pub fn start(pgdata: &Path, owner: Owner, bindir: PathBuf) -> Result<RecoveryServer> {
        let socket_dir = private_socket_dir(&owner)?;
        let log = pgdata.join(RECOVERY_LOG);
        // Dropped on any error below: the socket directory goes with it.
        let server = RecoveryServer {
            pgdata: pgdata.to_path_buf(),
            socket_dir,
            log,
            owner,
            bindir,
        };
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{0}' -c unix_socket_permissions=0700 \
             -c hba_file='{0}/{PRIVATE_HBA}' -c ident_file='{0}/{PRIVATE_IDENT}' \
             -c external_pid_file='' -c ssl=off \
             -c logging_collector=off -c log_destination=stderr -c lc_messages=C",
            server.socket_dir.display()
        );
        let args = [
            "-D".as_ref(),
            server.pgdata.as_os_str(),
            "-l".as_ref(),
            server.log.as_os_str(),
            "-o".as_ref(),
            options.as_ref(),
            "start".as_ref(),
        ];
        let out = ctl::pg_ctl(&server.bindir, &server.owner, &args)?;
        if !out.status.success() && !server.log.exists() {
            return Err(Error::Refused(format!(
                "pg_ctl could not start {}: {}",
                server.pgdata.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(server)
    }

    /// The server `pitr recover` left running in `pgdata` on its private `socket_dir`
    /// ([`super::Report::socket_dir`]), as `owner` with binaries from `bindir`.
    pub fn running_in(pgdata: &Path, socket_dir: PathBuf, owner: Owner, bindir: PathBuf) -> RecoveryServer {
        RecoveryServer {
            pgdata: pgdata.to_path_buf(),
            socket_dir,
            log: pgdata.join(RECOVERY_LOG),
            owner,
            bindir,
        }
    }

    /// The port the server listens on (from its socket file), once it does.
    pub fn port(&self) -> Option<u16> {
        fs::read_dir(&self.socket_dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(".s.PGSQL.")
                .filter(|p| !p.ends_with(".lock"))
                .and_then(|p| p.parse().ok())
        })
    }

    /// Connection settings for database `dbname` over the private socket.
    pub fn connection(&self, dbname: &str) -> crate::pg::ConnectionSettings {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port().unwrap_or(5432))
            .user(&self.owner.name)
            .dbname(dbname);
        config.application_name("pitr recover");
        crate::pg::ConnectionSettings::without_tls(config)
    }

    /// Whether the postmaster runs.
    pub fn running(&self) -> bool {
        let pid = fs::read_to_string(self.pgdata.join("postmaster.pid")).ok();
        let pid = pid
            .as_deref()
            .and_then(|t| t.lines().next())
            .and_then(|p| p.trim().parse::<u32>().ok());
        pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&self) -> Result<()> {
        ctl::stop(&self.bindir, &self.owner, &self.pgdata, "fast")
    }

    /// Stops the server if it still runs (a failed or interrupted recovery leaves nothing
    /// running); `Err` says why it could not be stopped.
    fn stop_if_running(&self) -> std::result::Result<(), String> {
        if !self.running() {
            return Ok(());
        }
        self.stop().map_err(|e| e.to_string())
    }

    /// Follows the log until recovery ends. `expect_stop` says the target must produce a
    /// "recovery stopping" line (every target but the end of the archive).
    pub async fn follow(&self, action: Action, expect_stop: bool, progress: &dyn Progress) -> Result<Outcome> {
        let mut log = LogState::default();
        let mut offset = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if interrupt::requested() {
                return Err(self.interrupted());
            }
            let running = self.running();
            offset = self.read_log(offset, &mut log)?;
            if log.files_restored > 0 {
                progress.status(&format!(
                    "replaying WAL: {} files restored, last {}{}",
                    log.files_restored,
                    log.last_restored.as_deref().unwrap_or("-"),
                    log.replay_lsn
                        .as_deref()
                        .map(|l| format!(", replayed up to {l}"))
                        .unwrap_or_default()
                ));
            }
            if let Some(failure) = &log.fatal {
                return Err(self.failure(failure));
            }
            // Whatever was asked, a copy that promoted is done: without a target (latest) the
            // action does not apply, and PostgreSQL 12 promotes when it runs out of WAL.
            let promoted = log.ready && log.recovery_complete;
            let done = promoted
                || match action {
                    Action::Promote => false,
                    Action::Pause => log.paused,
                    Action::Shutdown => log.shutdown_at_target && !running,
                };
            if done {
                if expect_stop && log.stopped.is_none() {
                    return Err(self.failure(
                        "recovery ended at the end of the archived WAL without reaching the target (the copy \
                         promoted anyway): do not use it",
                    ));
                }
                return Ok(log.outcome(if promoted { Action::Promote } else { action }));
            }
            if !running && offset > 0 && !log.shutdown_at_target {
                return Err(self.failure("the server exited during recovery"));
            }
        }
    }

    fn read_log(&self, offset: u64, log: &mut LogState) -> Result<u64> {
        let mut file = match fs::File::open(&self.log) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(offset),
            Err(e) => return Err(Error::io("read", &self.log)(e)),
        };
        file.seek(SeekFrom::Start(offset))
            .map_err(Error::io("read", &self.log))?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(Error::io("read", &self.log))?;
        // Only whole lines; a partial last line is read again next time.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        text[..complete].lines().for_each(|line| log.observe(line));
        Ok(offset + complete as u64)
    }

    /// Stops the server the operator interrupted, and says what is left.
    fn interrupted(&self) -> Error {
        let stopped = match self.stop_if_running() {
            Ok(()) => "its server is stopped and its socket directory removed".to_string(),
            Err(e) => format!(
                "its server could not be stopped ({e}): stop it with pg_ctl -D {} stop",
                self.pgdata.display()
            ),
        };
        Error::Interrupted(format!(
            "recovery of {} stopped during replay: {stopped}; the restored directory stays, not recovered: remove \
             it, or run recover again with --force",
            self.pgdata.display()
        ))
    }

    /// Recovery failed: the server is stopped if it still runs, and the log's end quoted.
    fn failure(&self, what: &str) -> Error {
        let stopped = match self.stop_if_running() {
            Ok(()) => String::new(),
            Err(e) => format!(" The server still runs and could not be stopped: {e}."),
        };
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Error::Refused(format!(
            "recovery of {} failed: {what}. {}{stopped} Server log {} ends with:\n{}",
            self.pgdata.display(),
            diagnose(&text),
            self.log.display(),
            tail.join("\n")
        ))
    }
}

impl Drop for RecoveryServer {
    /// The socket directory goes once no server runs there (after a failure, a shutdown at the
    /// target, an interruption); a running copy keeps it until `pitr adopt` stops it.
    fn drop(&mut self) {
        if !self.running() {
            let _ = fs::remove_dir_all(&self.socket_dir);
        }
    }
}

/// Creates `/tmp/pitr-recover-XXXXXX` for one run: 0700 and owned by the server's OS user
/// whatever the umask, with the private pg_hba.conf and pg_ident.conf (0600) inside.
///
/// Peer authentication maps the OS users root (pitr itself, run as root) and the owner to the
/// owner's role only. The directory's permissions are the real guard (nobody else can reach the
/// socket at all); the map keeps the copy closed should they ever be wrong.
fn private_socket_dir(owner: &Owner) -> Result<PathBuf> {
    let path = tempfile::Builder::new()
        .prefix(SOCKET_DIR_PREFIX)
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(SOCKET_DIR_PARENT)
        .map_err(Error::io("create a socket directory in", SOCKET_DIR_PARENT))?
        .keep();
    let written = write_private_config(&path, owner);
    if written.is_err() {
        let _ = fs::remove_dir_all(&path);
    }
    written.map(|()| path)
}

fn write_private_config(dir: &Path, owner: &Owner) -> Result<()> {
    let role = quote_name(&owner.name);
    let hba =
        format!("# pitr recover: the owner's role, through peer authentication only\nlocal all {role} peer map=pitr\n");
    let ident = format!("# pitr recover: root (pitr run as root) and the owner may connect as the owner's role\npitr root {role}\npitr {role} {role}\n");
    let dir_fd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", dir)(e.into()))?;
    for (name, text) in [(PRIVATE_HBA, hba), (PRIVATE_IDENT, ident)] {
        let path = dir.join(name);
        let fd = rustix::fs::openat(
            &dir_fd,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| Error::io("create", &path)(e.into()))?;
        let mut file = fs::File::from(fd);
        file.write_all(text.as_bytes()).map_err(Error::io("write", &path))?;
        own(&file, 0o600, owner).map_err(Error::io("set the owner and mode of", &path))?;
    }
    own(&fs::File::from(dir_fd), 0o700, owner).map_err(Error::io("set the owner and mode of", dir))
}

/// Sets the mode of an open file and, when pitr runs as root, hands it to `owner`.
fn own(file: &fs::File, mode: u32, owner: &Owner) -> std::io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::fchown(file, Some(owner.uid), Some(owner.gid))?;
    }
    Ok(())
}

/// A role or OS user name for pg_hba.conf and pg_ident.conf.
fn quote_name(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// What the log said so far.
#[derive(Debug, Default)]
struct LogState {
    files_restored: u64,
    last_restored: Option<String>,
    replay_lsn: Option<String>,
    stopped: Option<String>,
    new_timeline: Option<u32>,
    recovery_complete: bool,
    ready: bool,
    paused: bool,
    shutdown_at_target: bool,
    fatal: Option<String>,
}

impl LogState {
    fn observe(&mut self, line: &str) {
        let message = line.split_once("LOG:  ").map_or(line, |(_, m)| m);
        if let Some(rest) = message.strip_prefix("restored log file \"") {
            self.files_restored += 1;
            self.last_restored = rest.split('"').next().map(str::to_string);
        } else if let Some((_, lsn)) = message
            .split_once("redo in progress, ")
            .and_then(|(_, r)| r.split_once("current LSN: "))
        {
            self.replay_lsn = Some(lsn.trim().to_string());
        } else if message.starts_with("recovery stopping ") {
            self.stopped = Some(message.to_string());
        } else if let Some(tli) = message.strip_prefix("selected new timeline ID: ") {
            self.new_timeline = tli.trim().parse().ok();
        } else if message.starts_with("archive recovery complete") {
            self.recovery_complete = true;
        } else if message.starts_with("database system is ready to accept connections") {
            self.ready = true;
        } else if message.starts_with("pausing at the end of recovery") || message.starts_with("recovery has paused") {
            self.paused = true;
        } else if message.starts_with("shutdown at recovery target") {
            self.shutdown_at_target = true;
        } else if (line.contains("FATAL:  ") || line.contains("PANIC:  "))
            && !line.contains("the database system is starting up")
            && !line.contains("the database system is not yet accepting connections")
        {
            self.fatal.get_or_insert_with(|| line.to_string());
        }
    }

    fn outcome(&self, action: Action) -> Outcome {
        Outcome {
            action,
            stopped: self.stopped.clone(),
            files_restored: self.files_restored,
            last_restored: self.last_restored.clone(),
            new_timeline: self.new_timeline,
        }
    }
}

/// A diagnosis for the operator, from known PostgreSQL messages.
fn diagnose(log: &str) -> &'static str {
    const KNOWN: [(&str, &str); 5] = [
        (
            "recovery ended before configured recovery target was reached",
            "Diagnosis: the WAL ran out before the target. The plan found the record that stops recovery in \
             the archive (for a restore point: in pitr's catalog), so the archive changed since it was planned \
             (a segment was removed, or a newer timeline was archived, which recovery_target_timeline follows), \
             or the restore point's record is not where the catalog says. Run recover again to plan anew.",
        ),
        (
            "could not restore file",
            "Diagnosis: archive-get failed on an archived file (corrupt or unreadable, or a repository it \
             could not reach; see the lines above): recovery stopped instead of promoting early. Repair the \
             archive, or wait until its store answers again, and run recover again.",
        ),
        (
            "before consistent recovery point",
            "Diagnosis: the target is before the backup's consistency point: choose an older backup.",
        ),
        (
            "lock file \"postmaster.pid\" already exists",
            "Diagnosis: a server already runs in this directory.",
        ),
        ("could not bind", "Diagnosis: the port is taken: pass another --port."),
    ];
    KNOWN
        .iter()
        .find(|(needle, _)| log.contains(needle))
        .map_or("", |(_, diagnosis)| diagnosis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_tells_where_recovery_stopped() {
        let mut log = LogState::default();
        for line in [
            "2026-11-25 10:00:00.000 UTC [1] LOG:  starting point-in-time recovery to \"before_oops\"",
            "2026-11-25 10:00:00.100 UTC [1] LOG:  restored log file \"000000010000000000000003\" from archive",
            "2026-11-25 10:00:00.200 UTC [1] LOG:  restored log file \"000000010000000000000004\" from archive",
            "2026-11-25 10:00:00.250 UTC [1] LOG:  redo in progress, elapsed time: 10.01 s, current LSN: 0/4000100",
            "2026-11-25 10:00:00.300 UTC [1] LOG:  recovery stopping at restore point \"before_oops\", time 2026-11-25 09:59:00.5+00",
            "2026-11-25 10:00:00.400 UTC [1] LOG:  selected new timeline ID: 2",
            "2026-11-25 10:00:00.500 UTC [1] LOG:  archive recovery complete",
            "2026-11-25 10:00:00.600 UTC [1] FATAL:  the database system is starting up",
            "2026-11-25 10:00:00.700 UTC [1] LOG:  database system is ready to accept connections",
        ] {
            log.observe(line);
        }
        assert_eq!(log.files_restored, 2);
        assert_eq!(log.last_restored.as_deref(), Some("000000010000000000000004"));
        assert!(log
            .stopped
            .as_deref()
            .unwrap()
            .starts_with("recovery stopping at restore point \"before_oops\""));
        assert_eq!(log.new_timeline, Some(2));
        assert_eq!(log.replay_lsn.as_deref(), Some("0/4000100"));
        assert!(log.recovery_complete && log.ready && log.fatal.is_none());
    }

    #[test]
    fn fatal_lines_are_failures_with_a_diagnosis() {
        let mut log = LogState::default();
        let line = "2026-11-25 10:00:00 UTC [1] FATAL:  recovery ended before configured recovery target was reached";
        log.observe(line);
        assert_eq!(log.fatal.as_deref(), Some(line));
        assert!(diagnose(line).contains("the archive changed since it was planned"));
    }
}
