//! `pg_dump -Fc` from the copy piped into `pg_restore` on production: finding client programs
//! of at least the copy's major version, running both at once without a file in between, and
//! their failures as errors (stopped on an interrupt).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::interrupt;
use crate::pg::ctl;

use super::production::{Ownership, RestoreInto};

/// pg_dump and pg_restore of one installation.
pub(super) struct Tools {
    pg_dump: PathBuf,
    pg_restore: PathBuf,
}

/// Where pg_dump reads from: the copy's private socket, as its owner.
pub(super) struct DumpFrom {
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
    pub database: String,
    /// Only this table (`"schema"."table"`, a pg_dump pattern matching exactly it).
    pub table: Option<String>,
}

impl Tools {
    /// pg_dump and pg_restore of the copy's major `major` (the server binaries' directory), else
    /// of the oldest newer major installed (`/usr/lib/postgresql/*/bin`): pg_dump refuses a
    /// server newer than itself.
    pub fn find(major: u32) -> Result<Tools> {
        let mut candidates: Vec<(u32, PathBuf)> = ctl::bindir(major).map(|dir| (major, dir)).into_iter().collect();
        let mut installed: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
            .filter(|(version, _)| *version >= major)
            .collect();
        installed.sort();
        candidates.extend(installed);
        candidates
            .into_iter()
            .find(|(_, dir)| {
                dir.join("pg_restore").is_file() && client_major(&dir.join("pg_dump")).is_some_and(|v| v >= major)
            })
            .map(|(_, dir)| Tools {
                pg_dump: dir.join("pg_dump"),
                pg_restore: dir.join("pg_restore"),
            })
            .ok_or_else(|| {
                Error::Refused(format!(
                    "no pg_dump and pg_restore of PostgreSQL {major} or newer found (beside the server binaries, \
                     PITR_PG_BINDIR, or in /usr/lib/postgresql/*/bin): pg_dump must be at least the copy's major \
                     version ({major}) to dump it; install them (Debian: apt-get install postgresql-client-{major}) \
                     or set PITR_PG_BINDIR to a directory holding them; nothing was done"
                ))
            })
    }

    /// Pipes the dump of `from` into `into`, as `ownership` says (owners and grants kept or not).
    pub async fn copy(&self, from: &DumpFrom, into: &RestoreInto, ownership: &Ownership) -> Result<()> {
        let mut dump = Command::new(&self.pg_dump);
        dump.args(["--format=custom", "--no-password", "--dbname"])
            .arg(conninfo(&[
                ("host", &from.socket_dir.to_string_lossy()),
                ("port", &from.port.to_string()),
                ("user", &from.user),
                ("dbname", &from.database),
                ("application_name", "pitr restore-database"),
            ]))
            .env_remove("PGPASSWORD");
        if let Some(table) = &from.table {
            dump.arg("--table").arg(table);
        }
        let mut restore = Command::new(&self.pg_restore);
        restore.args(["--exit-on-error", "--single-transaction", "--no-password"]);
        if !ownership.keep {
            restore.arg("--no-owner");
        }
        if ownership.no_privileges {
            restore.arg("--no-privileges");
        }
        restore.arg("--dbname").arg(&into.conninfo);
        if let Some(password) = &into.password {
            restore.env("PGPASSWORD", password);
        }
        let (dumped, restored) = pipe(&mut dump, &mut restore).await?;
        if !restored.status.success() {
            return Err(Error::Refused(format!(
                "pg_restore into {} failed ({}): {}{}",
                into.database,
                restored.status,
                restored.stderr,
                failed_dump(&dumped)
            )));
        }
        if !dumped.status.success() {
            return Err(Error::Refused(format!(
                "pg_dump of {} from the copy failed{}; {} may hold part of it",
                from.database,
                failed_dump(&dumped),
                into.database
            )));
        }
        Ok(())
    }
}

/// How a program of the pipe ended.
struct Ended {
    status: ExitStatus,
    stderr: String,
}

fn failed_dump(dumped: &Ended) -> String {
    if dumped.status.success() {
        String::new()
    } else {
        format!(" (pg_dump {}: {})", dumped.status, dumped.stderr)
    }
}

/// Runs `dump | restore` until both end; an interrupt kills both.
async fn pipe(dump: &mut Command, restore: &mut Command) -> Result<(Ended, Ended)> {
    let mut dumper = dump
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io("run", program(dump)))?;
    let output = dumper.stdout.take().expect("stdout is piped");
    let dump_errors = drain(dumper.stderr.take());
    let mut restorer = match restore
        .stdin(Stdio::from(output))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            stop(&mut dumper);
            return Err(Error::io("run", program(restore))(e));
        }
    };
    let restore_errors = drain(restorer.stderr.take());
    let (dumped, restored) = loop {
        if interrupt::requested() {
            stop(&mut dumper);
            stop(&mut restorer);
            return Err(Error::Interrupted(
                "stopped while piping pg_dump into pg_restore".into(),
            ));
        }
        let dumped = dumper.try_wait().map_err(Error::io("wait for", program(dump)))?;
        let restored = restorer.try_wait().map_err(Error::io("wait for", program(restore)))?;
        if let (Some(dumped), Some(restored)) = (dumped, restored) {
            break (dumped, restored);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok((
        Ended {
            status: dumped,
            stderr: tail(dump_errors),
        },
        Ended {
            status: restored,
            stderr: tail(restore_errors),
        },
    ))
}

fn program(command: &Command) -> &Path {
    Path::new(command.get_program())
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads a child's stderr to its end on a thread of its own (a full pipe would stall it).
fn drain(stderr: Option<std::process::ChildStderr>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    })
}

/// The last lines a program wrote to stderr, on one line.
fn tail(reader: JoinHandle<String>) -> String {
    let text = reader.join().unwrap_or_default();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(8)..].join(" / ")
}

/// The major version of a client program (`pg_dump (PostgreSQL) 15.14 (Debian ...)`).
fn client_major(program: &Path) -> Option<u32> {
    let out = Command::new(program).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(2)?.split('.').next()?.parse().ok()
}

/// A libpq connection string from keyword/value pairs, each value quoted.
pub(super) fn conninfo(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_quote_every_value() {
        assert_eq!(
            conninfo(&[("host", "/tmp/a b"), ("dbname", "it's\\x")]),
            "host='/tmp/a b' dbname='it\\'s\\\\x'"
        );
    }
}
