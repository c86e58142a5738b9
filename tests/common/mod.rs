//! Shared harness for the `pitr` integration tests.
//!
//! It finds the PostgreSQL server binaries, runs real clusters in temporary directories and drives
//! the `pitr` binary against them. Every test builds its own [`Cluster`]s, each in its own
//! temporary directory with its own socket directory and port, so tests can run in parallel.
//!
//! When the tests run as root, every PostgreSQL program (and `pitr`, exactly as PostgreSQL would
//! run it) is started as the `postgres` OS user through `runuser -u postgres --`; temporary
//! directories are created under `/tmp` (not `$TMPDIR`, which may live under the private `/root`)
//! and handed to that user, and the `pitr` binary is copied into each temporary directory so that
//! user can execute it.
//!
//! A cluster runs the default server binaries ([`pg_bindir`]) unless [`ClusterOptions::version`]
//! asks for a major version ([`server_bindir`]) or [`ClusterOptions::bindir`] for a directory of
//! them (a complete install, for `pg_upgrade`); a cluster's `pg_ctl` is that of its binaries, and
//! any other `pg_ctl` on a data directory the one of the major its `PG_VERSION` names. Client
//! programs (`psql`, `pgbench`, `pg_dump`, …) always come from [`pg_program`] (Debian's 15 in
//! CI), which talks to servers of every supported major: pitr must not need a version-matched
//! client.
//!
//! Environment variables:
//! * `PITR_PG_BINDIR`: directory holding `initdb`, `pg_ctl`, `postgres`, … (otherwise
//!   `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`);
//! * `PITR_PG_ROOT`: where `.ci/install-postgres-versions` put the server builds of other majors,
//!   `<root>/<major>/bin` (default `/var/cache/pitr/postgresql`);
//! * `PITR_PG_VERSIONS`: the majors the version matrix runs on, comma-separated ([`versions`];
//!   default 13 to 18);
//! * `PITR_TEST_TMPDIR`: base directory for temporary directories (default `/tmp`);
//! * `PITR_TEST_KEEP=1`: keep temporary directories (clusters, repositories, logs) after the test;
//! * `PITR_TEST_BACKEND=s3`: every cluster's own repository is on S3 instead of local disk: an s3s-fs
//!   per cluster ([`s3::S3Server`]), `s3://pitr-test/repo` as `--repo`, its endpoint and credentials in
//!   the environment of pitr and of the server. [`Cluster::repo_dir`] is where s3s-fs keeps the
//!   objects as files, for tests that look at or damage what is stored. `.ci/run` runs the command
//!   suites a second time so.
//!
//! Not every test uses every helper, hence the `dead_code` allowance below.
#![allow(dead_code)]

pub mod s3;
pub mod waldump;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The OS user that runs PostgreSQL (and `pitr`) when the tests run as root.
pub const SERVER_USER: &str = "postgres";

/// How long a single command may run before the harness kills it and fails the test.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// How long to wait for a WAL file to be archived.
pub const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for archive recovery to finish or fail.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(180);

/// Lines of the server log quoted in failure messages.
const LOG_TAIL_LINES: usize = 80;

/// Environment variables that would change what the PostgreSQL client programs connect to.
const PG_CLIENT_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGDATA",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGPASSFILE",
    "PGPASSWORD",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGTZ",
];

/// Environment variables that configure `pitr`; removed so the host environment cannot leak in.
pub const PITR_ENV: &[&str] = &[
    "PITR_REPO",
    "PITR_CONFIG",
    "PITR_COMPRESS",
    "PITR_COMPRESS_LEVEL",
    "PITR_LOG",
    "PITR_LOG_FORMAT",
];

// ---------------------------------------------------------------------------------------------
// Locating programs and users
// ---------------------------------------------------------------------------------------------

/// The directory holding the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`, …).
///
/// Looked up once: `$PITR_PG_BINDIR`, then `pg_config --bindir` (if that directory contains
/// `initdb`), then the highest-versioned `/usr/lib/postgresql/*/bin` containing `initdb`.
/// Panics with installation instructions when none is found: these tests never skip silently.
pub fn pg_bindir() -> &'static Path {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(find_pg_bindir)
}

fn find_pg_bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PITR_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").is_file(),
            "PITR_PG_BINDIR={} does not contain `initdb`; point it at the PostgreSQL server \
             binaries directory (e.g. /usr/lib/postgresql/15/bin)",
            dir.display()
        );
        return dir;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").is_file() {
                return dir;
            }
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    match candidates.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found. These integration \
             tests need a real PostgreSQL server: install it (Debian/Ubuntu: `apt-get install \
             postgresql`; then the binaries are in /usr/lib/postgresql/<version>/bin), or set \
             PITR_PG_BINDIR to the directory containing initdb."
        ),
    }
}

/// Path of a PostgreSQL program: the server binaries directory first, then `$PATH`.
pub fn pg_program(name: &str) -> PathBuf {
    let in_bindir = pg_bindir().join(name);
    if in_bindir.is_file() {
        return in_bindir;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "PostgreSQL program `{name}` not found in {} nor in $PATH (install the PostgreSQL server \
         and client packages, e.g. `apt-get install postgresql`, or set PITR_PG_BINDIR)",
        pg_bindir().display()
    )
}

/// The PostgreSQL major versions to test on: `$PITR_PG_VERSIONS` (comma-separated, e.g.
/// `13,14,15,16,17,18`), by default 13 to 18. Each must be installed ([`server_bindir`]): a
/// missing one fails the test that asks for it, with how to install it; none is skipped.
pub fn versions() -> Vec<u32> {
    let Some(list) = std::env::var_os("PITR_PG_VERSIONS") else {
        return (13..=18).collect();
    };
    let list = list.to_string_lossy().into_owned();
    let versions: Vec<u32> = list
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("PITR_PG_VERSIONS={list:?}: {v:?} is not a major version (e.g. 13,14,15)"))
        })
        .collect();
    versions
}

/// The directory holding the server binaries (`initdb`, `pg_ctl`, `postgres`) of PostgreSQL
/// `major`: `$PITR_PG_BINDIR` when it is that major, then `$PITR_PG_ROOT/<major>/bin` (the npm
/// builds `.ci/install-postgres-versions` installs; default root `/var/cache/pitr/postgresql`),
/// then Debian's `/usr/lib/postgresql/<major>/bin`. Panics with what each place held and how to
/// install the version: a missing version fails, it is never skipped.
pub fn server_bindir(major: u32) -> PathBuf {
    let candidates = server_bindir_candidates(major);
    let mut found = Vec::new();
    for dir in &candidates {
        match bindir_major(dir) {
            Ok(m) if m == major => return dir.clone(),
            Ok(m) => found.push(format!("{} holds PostgreSQL {m}", dir.display())),
            Err(reason) => found.push(format!("{}: {reason}", dir.display())),
        }
    }
    panic!(
        "PostgreSQL {major} server binaries not found ({}). Install them: `bash \
         .ci/install-postgres-versions {major}` (npm builds into $PITR_PG_ROOT, default \
         /var/cache/pitr/postgresql), or Debian's `apt-get install postgresql-{major}`, or set \
         PITR_PG_BINDIR to a PostgreSQL {major} bin directory",
        found.join("; ")
    )
}

/// Where `.ci/install-postgres-versions` installs PostgreSQL builds: `$PITR_PG_ROOT`, by default
/// `/var/cache/pitr/postgresql` (server builds in `<root>/<major>`, complete installs with
/// `pg_upgrade` and `pg_controldata` in `<root>/complete/<major>`).
pub fn pg_root() -> PathBuf {
    std::env::var_os("PITR_PG_ROOT").map_or_else(|| PathBuf::from("/var/cache/pitr/postgresql"), PathBuf::from)
}

/// Where [`server_bindir`] looks for PostgreSQL `major`, in order.
fn server_bindir_candidates(major: u32) -> Vec<PathBuf> {
    let root = pg_root();
    let from_env = std::env::var_os("PITR_PG_BINDIR")
        .map(PathBuf::from)
        .filter(|dir| bindir_major(dir) == Ok(major));
    from_env
        .into_iter()
        .chain([
            root.join(major.to_string()).join("bin"),
            PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        ])
        .collect()
}

/// The major version of the server binaries in `dir` (`postgres --version`, looked up once per
/// directory), or why there are none: a program missing, or a `postgres` that does not run.
pub fn bindir_major(dir: &Path) -> Result<u32, String> {
    static MAJORS: OnceLock<std::sync::Mutex<std::collections::HashMap<PathBuf, Result<u32, String>>>> =
        OnceLock::new();
    let majors = MAJORS.get_or_init(Default::default);
    if let Some(known) = majors.lock().expect("bindir cache").get(dir) {
        return known.clone();
    }
    let major = probe_bindir_major(dir);
    majors
        .lock()
        .expect("bindir cache")
        .insert(dir.to_path_buf(), major.clone());
    major
}

fn probe_bindir_major(dir: &Path) -> Result<u32, String> {
    if let Some(missing) = ["initdb", "pg_ctl", "postgres"]
        .into_iter()
        .find(|p| !dir.join(p).is_file())
    {
        return Err(format!("no {missing}"));
    }
    let out = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .map_err(|e| format!("postgres does not run: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 16.14"
    text.split_whitespace()
        .last()
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .filter(|_| out.status.success())
        .ok_or_else(|| {
            format!(
                "postgres --version does not run: {} {}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

/// The server binaries for the data directory `data`: those of the major its `PG_VERSION`
/// names ([`pg_bindir`] when it is that major, else [`server_bindir`]); [`pg_bindir`] when
/// there is no `PG_VERSION` (yet) or no binaries of that major.
pub fn bindir_for_data(data: &Path) -> PathBuf {
    let major = fs::read_to_string(data.join("PG_VERSION"))
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok());
    match major {
        Some(major) if bindir_major(pg_bindir()) != Ok(major) => server_bindir_candidates(major)
            .into_iter()
            .find(|dir| bindir_major(dir) == Ok(major))
            .unwrap_or_else(|| pg_bindir().to_path_buf()),
        _ => pg_bindir().to_path_buf(),
    }
}

/// `pg_ctl` of the major the data directory `data` was made by ([`bindir_for_data`]).
pub fn pg_ctl_for(data: &Path) -> PathBuf {
    bindir_for_data(data).join("pg_ctl")
}

/// The `pitr` binary built by cargo for this test run.
pub fn pitr_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pitr"))
}

/// True when the effective user id is 0 (read from `/proc/self/status`, no libc needed).
pub fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .expect("Uid line in /proc/self/status");
        // "Uid:\treal\teffective\tsaved\tfs"
        let effective = uid_line
            .split_whitespace()
            .nth(2)
            .expect("effective uid in /proc/self/status");
        effective == "0"
    })
}

/// `(uid, gid)` of [`SERVER_USER`]; only meaningful (and only looked up) when running as root.
fn server_user_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, SERVER_USER]).output().expect("run `id`");
            assert!(
                out.status.success(),
                "the tests run as root, so PostgreSQL must run as the OS user `{SERVER_USER}`, \
                 but `id {flag} {SERVER_USER}` failed: {} (create the user, e.g. by installing \
                 the postgresql package, or run the tests as a normal user)",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
        };
        (id("-u"), id("-g"))
    })
}

/// Hands `path` (recursively, without following symlinks) to the server user when running as
/// root; does nothing otherwise.
pub fn give_to_server_user(path: &Path) {
    if !running_as_root() {
        return;
    }
    let (uid, gid) = server_user_ids();
    fn walk(path: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        let meta = fs::symlink_metadata(path).expect("stat");
        if meta.is_dir() {
            for entry in fs::read_dir(path).expect("read_dir") {
                walk(&entry.expect("dir entry").path(), uid, gid);
            }
        }
    }
    walk(path, uid, gid);
}

/// A command that runs `program` as the server user: directly for a normal user, through
/// `runuser -u postgres --` for root. PostgreSQL client environment variables are removed and the
/// working directory is `/` (callers may override it).
pub fn server_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = if running_as_root() {
        server_user_ids(); // fail early, with a clear message, if the user is missing
        let mut c = Command::new("runuser");
        c.args(["-u", SERVER_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    for var in PG_CLIENT_ENV {
        cmd.env_remove(var);
    }
    cmd.current_dir("/");
    cmd
}

/// A command running the given `pitr` binary as the server user, with `PITR_*` variables removed.
pub fn pitr_command(pitr_bin: &Path) -> Command {
    let mut cmd = server_command(pitr_bin);
    for var in PITR_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// A free TCP port number on 127.0.0.1 (the clusters listen only on their own Unix socket
/// directory, so the number only names the socket; collisions are harmless but still avoided).
/// GET `path` from a daemon's HTTP listener on 127.0.0.1; the response body, or `None` while
/// it does not answer.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// The value of the first metric line starting with `prefix` in a Prometheus text.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// Whether `PITR_TEST_BACKEND=s3` puts each cluster's own repository on S3 (`local`, the default,
/// keeps it in a directory).
pub fn backend_is_s3() -> bool {
    match std::env::var("PITR_TEST_BACKEND").as_deref() {
        Ok("s3") => true,
        Ok("local") | Ok("") | Err(_) => false,
        Ok(other) => panic!("PITR_TEST_BACKEND={other}: say local or s3"),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// ---------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------

/// What a finished command produced.
#[derive(Debug)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CmdOutput {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The first stdout line starting with `prefix` (after leading spaces), without the prefix,
    /// trimmed.
    pub fn line_after(&self, prefix: &str) -> Option<String> {
        self.stdout_str()
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix).map(|rest| rest.trim().to_string()))
    }

    /// [`CmdOutput::line_after`]; panics with the output when there is no such line.
    #[track_caller]
    pub fn stdout_line(&self, prefix: &str) -> String {
        self.line_after(prefix)
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{}", self.describe()))
    }

    /// The backup id of `pitr backup`'s text summary (`backup <id> done: ...`).
    #[track_caller]
    pub fn backup_id(&self) -> String {
        self.stdout_str()
            .lines()
            .find_map(|l| {
                l.strip_prefix("backup ")?
                    .split_once(" done:")
                    .map(|(id, _)| id.to_string())
            })
            .unwrap_or_else(|| panic!("no `backup <id> done:` line:\n{}", self.describe()))
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// A multi-line description for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.status,
            self.stdout_str().trim_end(),
            self.stderr_str().trim_end()
        )
    }

    /// Panics (with the output) unless the command exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed:\n{}", self.describe());
        self
    }

    /// Panics (with the output) unless the command exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), Some(code), "unexpected exit status:\n{}", self.describe());
        self
    }

    /// Panics unless both stdout and stderr are empty.
    #[track_caller]
    pub fn assert_silent(&self) -> &Self {
        assert!(
            self.stdout.is_empty() && self.stderr.is_empty(),
            "expected no output at all:\n{}",
            self.describe()
        );
        self
    }

    /// Panics unless stderr is exactly one non-empty line (a trailing newline is allowed).
    #[track_caller]
    pub fn assert_one_line_error(&self) -> &Self {
        let err = self.stderr_str();
        let trimmed = err.strip_suffix('\n').unwrap_or(&err);
        assert!(
            !trimmed.trim().is_empty() && !trimmed.contains('\n'),
            "expected exactly one line on stderr:\n{}",
            self.describe()
        );
        self
    }
}

/// Renders a command line for messages.
pub fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    if let Some(dir) = cmd.get_current_dir() {
        let _ = write!(s, "   (cwd {})", dir.display());
    }
    s
}

/// Spawns `cmd` with stdin closed and stdout/stderr captured.
/// Sends `signal` (e.g. "KILL", "STOP") to one process by id.
pub fn send_signal(pid: impl std::fmt::Display, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

pub fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", cmdline(cmd)))
}

/// Waits for a child started by [`spawn`], killing it (SIGTERM, then SIGKILL) and panicking after
/// `timeout`.
pub fn wait_child(mut child: Child, cmdline: String, timeout: Duration) -> CmdOutput {
    fn reader(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    }
    let out = reader(child.stdout.take().expect("piped stdout"));
    let err = reader(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() >= deadline {
            // SIGTERM first: runuser forwards it to the program it started.
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "command timed out after {timeout:?}: {cmdline}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    CmdOutput {
        cmdline,
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Runs `cmd` to completion (at most [`COMMAND_TIMEOUT`]) and returns what it produced.
pub fn run(cmd: &mut Command) -> CmdOutput {
    run_with_timeout(cmd, COMMAND_TIMEOUT)
}

/// Runs `cmd` to completion, killing it and panicking after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let line = cmdline(cmd);
    let child = spawn(cmd);
    wait_child(child, line, timeout)
}

/// Runs `cmd` and panics with its output unless it exits 0.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> CmdOutput {
    let out = run(cmd);
    out.assert_success();
    out
}

/// The process ids of `pid`'s children (from `/proc/*/stat`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// The pid of the `pitr` process behind a child started with [`spawn`] on a [`pitr_command`]
/// (or any [`server_command`]): the child itself, or (as root) the program `runuser` started,
/// waiting up to 10 s for `runuser` to start it.
pub fn pitr_pid(child: &Child) -> u32 {
    if !running_as_root() {
        return child.id();
    }
    poll(Duration::from_secs(10), || children_of(child.id()).first().copied())
        .expect("runuser started no pitr process within 10 s")
}

/// Sends SIGTERM to the `pitr` process behind `child` (see [`pitr_pid`]; not to `runuser`, which
/// would kill it rather than let it finish) and waits for `child` to exit, at most `timeout`.
/// Whether `kill` succeeded is not checked: the exit (or the timeout) tells.
pub fn terminate_pitr(child: Child, cmdline: String, timeout: Duration) -> CmdOutput {
    let pid = pitr_pid(&child);
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    wait_child(child, cmdline, timeout)
}

/// Kills `child` and every process it started (SIGKILL), and reaps it: for a test's drop of a
/// long-running pitr (daemon, watch) that did not stop on its own.
pub fn kill_with_children(child: &mut Child) {
    for pid in children_of(child.id()) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A temporary directory under `/tmp` (or `$PITR_TEST_TMPDIR`), owned by the server user when
/// running as root and removed on drop (unless `PITR_TEST_KEEP=1`).
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    /// Creates a new directory named `pitr-<prefix>-XXXXXX`.
    pub fn new(prefix: &str) -> Self {
        let base = std::env::var_os("PITR_TEST_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let keep = std::env::var_os("PITR_TEST_KEEP").is_some_and(|v| v == "1");
        let dir = tempfile::Builder::new()
            .prefix(&format!("pitr-{prefix}-"))
            .disable_cleanup(keep)
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("create a temporary directory in {}: {e}", base.display()));
        if keep {
            eprintln!("PITR_TEST_KEEP=1: keeping {}", dir.path().display());
        }
        give_to_server_user(dir.path());
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `self.path().join(rel)`, without creating anything.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path().join(rel)
    }

    /// Creates the directory `rel` (and its parents) inside this directory, owned by the server
    /// user, and returns its path.
    pub fn subdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let rel = rel.as_ref();
        let mut path = self.path().to_path_buf();
        for component in rel.components() {
            path.push(component);
            if !path.exists() {
                fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
                give_to_server_user(&path);
            }
        }
        path
    }

    /// Writes `contents` to `rel` (creating parent directories), owned by the server user and
    /// readable by everyone, and returns its path.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let rel = rel.as_ref();
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.subdir(parent);
        }
        let path = self.path().join(rel);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        give_to_server_user(&path);
        path
    }

    /// Copies the `pitr` binary to `bin/pitr` in this directory (mode 0755) so that the server
    /// user can run it, and returns its path.
    pub fn install_pitr(&self) -> PathBuf {
        let bin_dir = self.subdir("bin");
        let dest = bin_dir.join("pitr");
        fs::copy(pitr_binary(), &dest)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", pitr_binary().display(), dest.display()));
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).expect("chmod pitr");
        give_to_server_user(&dest);
        dest
    }
}

// ---------------------------------------------------------------------------------------------
// Repository layout and file helpers
// ---------------------------------------------------------------------------------------------

/// Where `pitr` stores an archived file: `wal/history/<name>` for timeline history files,
/// `wal/<first 16 hex chars>/<name>` for everything else.
pub fn stored_path(repo: &Path, name: &str) -> PathBuf {
    if name.ends_with(".history") {
        repo.join("wal").join("history").join(name)
    } else {
        repo.join("wal").join(&name[..16]).join(name)
    }
}

/// Whether `dir` holds a file, at any depth (a stored object: on S3, a "directory" exists only
/// while it holds one).
pub fn holds_files(dir: &Path) -> bool {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => holds_files(&entry.path()),
            Ok(_) => true,
            Err(_) => false,
        })
}

/// Waits (up to [`ARCHIVE_TIMEOUT`]) until `repo` stores the archived file `name` (generation 1's
/// WAL, [`stored_path`]); false when it never does.
pub fn wait_stored(repo: &Path, name: &str) -> bool {
    let path = stored_path(repo, name);
    poll(ARCHIVE_TIMEOUT, || path.exists().then_some(())).is_some()
}

/// Size of the header in front of every stored file's payload.
pub const STORED_HEADER_LEN: usize = 24;

/// Reads a file, panicking with its path on error.
#[track_caller]
pub fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Flips every bit of the byte `from_end` bytes before the end of `path` (inside the payload for
/// a stored file), keeping the file's permissions.
pub fn flip_byte_from_end(path: &Path, from_end: usize) {
    let mut bytes = read(path);
    assert!(bytes.len() > from_end, "{} is too short to corrupt", path.display());
    let at = bytes.len() - 1 - from_end;
    bytes[at] ^= 0xFF;
    rewrite_keeping_mode(path, &bytes);
}

/// Overwrites `path` with `bytes`, temporarily making it writable if needed.
pub fn rewrite_keeping_mode(path: &Path, bytes: &[u8]) {
    let mode = fs::metadata(path).expect("stat").permissions().mode();
    fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o600)).expect("chmod");
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod back");
}

/// True for a WAL segment file name (24 upper-case hex digits).
pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// The name of the segment `delta` segments after `name` (same timeline), for segments of
/// `seg_size` bytes.
pub fn later_segment_name(name: &str, delta: u64, seg_size: u64) -> String {
    let tli = &name[..8];
    let hi = u64::from_str_radix(&name[8..16], 16).unwrap();
    let lo = u64::from_str_radix(&name[16..24], 16).unwrap();
    let per_id = 0x1_0000_0000 / seg_size;
    let segno = hi * per_id + lo + delta;
    format!("{tli}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// The system identifier in the long page header of a WAL segment's first page.
pub fn segment_system_identifier(segment: &[u8]) -> u64 {
    u64::from_le_bytes(segment[24..32].try_into().expect("8 bytes"))
}

/// Parses an LSN in `%X/%X` form.
pub fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("bad LSN {text:?}"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|_| panic!("bad LSN {text:?}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|_| panic!("bad LSN {text:?}"));
    (hi << 32) | lo
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `check` every 100 ms until it returns `Some`, or returns `None` after `timeout`.
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Quotes `value` as a postgresql.conf string literal.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Asserts that a path used inside archive_command / restore_command needs no shell quoting.
fn shell_safe(path: &Path) -> String {
    let s = path.to_str().expect("UTF-8 path");
    assert!(
        s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=,:".contains(&b)),
        "path {s:?} would need shell quoting; set PITR_TEST_TMPDIR to a simpler directory"
    );
    s.to_string()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL programs on any data directory or socket directory
// ---------------------------------------------------------------------------------------------

/// `initdb -D <data> -A trust --no-sync` as the server user, run from `dir`;
/// further options may be added before running it.
pub fn initdb_command(dir: &Path, data: &Path) -> Command {
    let mut cmd = server_command(pg_program("initdb"));
    cmd.current_dir(dir).arg("-D").arg(data).args(INITDB_ARGS);
    cmd
}

/// What every harness `initdb` gets after `-D <data>` (no `--no-instructions`: 13's initdb does
/// not know it, and its closing instructions only go to the captured stdout).
const INITDB_ARGS: [&str; 3] = ["-A", "trust", "--no-sync"];

/// `pg_ctl -D <data> -l <log> -w -t 120 start` as the server user, run from `dir`.
pub fn pg_ctl_start(dir: &Path, data: &Path, log: &Path) -> CmdOutput {
    run(server_command(pg_ctl_for(data))
        .current_dir(dir)
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(log)
        .args(["-w", "-t", "120", "start"]))
}

/// True while a postmaster runs on `data` (`pg_ctl status` as the server user, run from `dir`).
pub fn pg_ctl_status(dir: &Path, data: &Path) -> bool {
    run(server_command(pg_ctl_for(data))
        .current_dir(dir)
        .arg("-D")
        .arg(data)
        .arg("status"))
    .success()
}

/// Stops the server on `data` in immediate mode (`pg_ctl -m immediate -w -t 60 stop`, as the
/// server user, run from `dir`) if a postmaster.pid exists, ignoring every error and all output.
pub fn pg_ctl_stop_immediate_quietly(dir: &Path, data: &Path) {
    if data.join("postmaster.pid").exists() {
        let _ = server_command(pg_ctl_for(data))
            .current_dir(dir)
            .arg("-D")
            .arg(data)
            .args(["-m", "immediate", "-w", "-t", "60", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A client-program command (`psql`, `pgbench`, `pg_dump`, …) as the server user, run from
/// `socket_dir` and connecting to the server listening there on `port`
/// (`-h <socket_dir> -p <port>`). Add `-U <user>` and the program's arguments.
pub fn client_at(program: &str, socket_dir: &Path, port: u16) -> Command {
    let mut cmd = server_command(pg_program(program));
    cmd.current_dir(socket_dir)
        .arg("-h")
        .arg(socket_dir)
        .arg("-p")
        .arg(port.to_string());
    cmd
}

/// Runs one SQL string through `psql` (a command from [`client_at`], to which
/// `-X -A -t -q -v ON_ERROR_STOP=1 -d postgres -c <sql>` is added); returns trimmed stdout (rows
/// on separate lines, columns separated by `|`), or the failed output.
pub fn try_psql_with(psql: &mut Command, sql: &str) -> Result<String, CmdOutput> {
    let out = run(psql
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c"])
        .arg(sql));
    if out.success() {
        Ok(out.stdout_str().trim().to_string())
    } else {
        Err(out)
    }
}

/// [`try_psql_with`] on the server listening in `socket_dir` on `port`.
pub fn try_psql_at(socket_dir: &Path, port: u16, sql: &str) -> Result<String, CmdOutput> {
    try_psql_with(&mut client_at("psql", socket_dir, port), sql)
}

// ---------------------------------------------------------------------------------------------
// JSON output and backups through `pitr backup`
// ---------------------------------------------------------------------------------------------

/// Parses a command's stdout as JSON; panics (with the whole output) when it is not JSON.
#[track_caller]
pub fn parse_json(out: &CmdOutput) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", out.describe()))
}

/// `(alert, subject)` of every alert in the `key` array of a verify or check-integrity JSON report.
pub fn alerts_of(report: &Value, key: &str) -> Vec<(String, String)> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} array in {report:#}"))
        .iter()
        .map(|a| {
            (
                a["alert"].as_str().unwrap().to_string(),
                a["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The string field `key` of a JSON object; panics (showing the object) when there is none.
#[track_caller]
pub fn json_str<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string field {key:?} in {v:#}"))
}

/// Runs `pitr --repo <c's repo> backup --fast <extra…>` connected to `c` (see
/// [`Cluster::pitr_connected`]); panics with the output and the server log unless it succeeds.
#[track_caller]
pub fn backup_ok(c: &Cluster, extra: &[&str]) -> CmdOutput {
    let mut args = vec!["backup", "--fast"];
    args.extend_from_slice(extra);
    let out = c.pitr_connected(c.repo(), &args);
    assert!(
        out.success(),
        "pitr backup failed:\n{}\n--- server log (tail) ---\n{}",
        out.describe(),
        c.log_tail()
    );
    out
}

/// `pitr backup --fast --json <extra…>` of `c` into its own repository, as [`backup_ok`]; returns
/// the parsed JSON summary (`{"backup": {"id": …, …}, "expired": …}`).
#[track_caller]
pub fn backup_json(c: &Cluster, extra: &[&str]) -> Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    parse_json(&backup_ok(c, &args))
}

/// The stored manifest of the backup a `backup --json` summary reports, read as pitr reads it (a
/// deduplicated backup's is compressed), as JSON.
#[track_caller]
pub fn manifest_of(c: &Cluster, summary: &Value) -> Value {
    let backup = &summary["backup"];
    let dir = c.repo_dir().join(json_str(backup, "tier")).join(json_str(backup, "id"));
    let stored = read(&dir.join("backup.manifest"));
    let manifest = pitr::backup::manifest::Manifest::from_bytes(&stored, "backup.manifest").unwrap();
    serde_json::to_value(manifest).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------------------

/// How to create a new cluster with [`Cluster::start`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `initdb --wal-segsize` in MB (a power of two from 1 to 1024).
    pub wal_segsize_mb: u32,
    /// `archive_mode = on` with `archive_command = '<pitr> --repo <repo> archive-push %p'`.
    pub archive: bool,
    /// Extra global `pitr` options placed before `archive-push` (e.g. `--compress gzip`).
    pub pitr_args: Vec<String>,
    /// Archive into this existing repository instead of a new `repo/` in the cluster's directory:
    /// a directory, or an S3 URL ([`ClusterOptions::s3`]).
    pub repo: Option<PathBuf>,
    /// Environment variables of every `pitr` command and of the server (whose archive_command
    /// and restore_command run pitr): the S3 endpoint and credentials ([`ClusterOptions::s3`]).
    pub env: Vec<(String, String)>,
    /// Where the repository's objects are on disk, when `repo` is an S3 URL.
    pub repo_dir: Option<PathBuf>,
    /// The S3 server the repository is on, when the cluster shares it ([`ClusterOptions::same_repo_as`]).
    pub s3: Option<Arc<s3::S3Server>>,
    /// Extra postgresql.conf settings; they override the harness defaults of the same name.
    pub settings: Vec<(String, String)>,
    /// The PostgreSQL major version to run ([`server_bindir`]); `None`: [`pg_bindir`]'s.
    pub version: Option<u32>,
    /// The server binaries to run, when given ([`ClusterOptions::bindir`]); before `version`.
    pub bindir: Option<PathBuf>,
    /// `initdb --data-checksums` (without it, initdb's default: off before 18, on from 18).
    pub data_checksums: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            wal_segsize_mb: 16,
            archive: true,
            pitr_args: Vec::new(),
            repo: None,
            env: Vec::new(),
            repo_dir: None,
            s3: None,
            settings: Vec::new(),
            version: None,
            bindir: None,
            data_checksums: false,
        }
    }
}

impl ClusterOptions {
    /// Sets `initdb --wal-segsize`.
    pub fn wal_segsize_mb(mut self, mb: u32) -> Self {
        self.wal_segsize_mb = mb;
        self
    }

    /// Turns archiving through `pitr` on or off.
    pub fn archive(mut self, on: bool) -> Self {
        self.archive = on;
        self
    }

    /// Adds a global `pitr` option to the archive_command.
    pub fn pitr_arg(mut self, arg: &str) -> Self {
        self.pitr_args.push(arg.to_string());
        self
    }

    /// Archives into an existing repository directory.
    pub fn repo(mut self, repo: &Path) -> Self {
        self.repo = Some(repo.to_path_buf());
        self
    }

    /// Archives into the repository `s3://pitr-test/<prefix>` on `server`; pitr and the server
    /// get its endpoint and credentials through the environment.
    pub fn s3(mut self, server: &s3::S3Server, prefix: &str) -> Self {
        self.repo = Some(PathBuf::from(server.url(prefix)));
        self.repo_dir = Some(server.bucket_dir().join(prefix));
        self.env = server.env();
        self
    }

    /// Archives into `other`'s repository, wherever it is.
    pub fn same_repo_as(mut self, other: &Cluster) -> Self {
        self.repo = Some(other.repo.clone());
        self.repo_dir = Some(other.repo_dir.clone());
        self.env = other.env.clone();
        self.s3 = other.s3.clone();
        self
    }

    /// Adds (or overrides) a postgresql.conf setting; `value` is written as given, so quote
    /// strings yourself (`"'1GB'"`).
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs PostgreSQL `major` ([`server_bindir`]; panics when it is not installed). The
    /// cluster's `pitr` commands get `PITR_PG_BINDIR` pointing at those binaries, as a user of
    /// a server pitr cannot find by itself sets it.
    pub fn version(mut self, major: u32) -> Self {
        self.version = Some(major);
        self
    }

    /// Runs the server binaries in `dir` (`initdb`, `pg_ctl`, `postgres`), e.g. a complete
    /// install for `pg_upgrade`; as with [`ClusterOptions::version`], the cluster's `pitr`
    /// commands get `PITR_PG_BINDIR=<dir>`. Panics when `dir` holds no server binaries.
    pub fn bindir(mut self, dir: &Path) -> Self {
        self.bindir = Some(dir.to_path_buf());
        self
    }

    /// `initdb --data-checksums` (e.g. for `pg_upgrade`, which needs the same setting on both
    /// sides, while only 18's initdb turns checksums on by default).
    pub fn data_checksums(mut self) -> Self {
        self.data_checksums = true;
        self
    }
}

/// How to start a cluster from a [`BaseBackup`] with [`Cluster::recover`].
#[derive(Clone, Debug, Default)]
pub struct RecoveryOptions {
    /// Repository for `restore_command` (default: the repository the backed-up cluster archived to).
    pub repo: Option<PathBuf>,
    /// Replaces the whole `restore_command`.
    pub restore_command: Option<String>,
    /// Keep `archive_mode = on` (archiving into the same repository) in the copy; off by default.
    pub archive: bool,
    /// Start as a standby (`standby.signal`) instead of archive recovery (`recovery.signal`).
    pub standby: bool,
    /// Extra settings (recovery targets and so on); values are written as given.
    pub settings: Vec<(String, String)>,
}

impl RecoveryOptions {
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }

    pub fn archive(mut self, on: bool) -> Self {
        self.archive = on;
        self
    }
}

/// How archive recovery ended.
#[derive(Debug)]
pub enum RecoveryOutcome {
    /// Recovery finished and the server accepts writes (`pg_is_in_recovery()` is false).
    Promoted,
    /// The server is no longer running; `log` is its whole log.
    Failed { log: String },
}

/// A base backup taken with `pg_basebackup -X none` from a running [`Cluster`].
pub struct BaseBackup {
    dir: TestDir,
    /// The backup's data directory.
    pub data: PathBuf,
    /// The repository the source cluster archives into.
    pub source_repo: PathBuf,
    /// The source cluster's [`ClusterOptions::env`].
    pub source_env: Vec<(String, String)>,
    /// Where the source repository's objects are on disk.
    pub source_repo_dir: PathBuf,
    /// The source repository's S3 server.
    pub source_s3: Option<Arc<s3::S3Server>>,
    /// Extra global `pitr` options of the source cluster's archive_command.
    pub source_pitr_args: Vec<String>,
    /// WAL segment holding the backup start.
    pub start_wal_file: String,
    /// WAL segment holding the backup end.
    pub stop_wal_file: String,
    /// Name of the backup history file (`<segment>.<offset>.backup`) the source wrote.
    pub backup_history_file: String,
}

impl BaseBackup {
    /// The `backup_label` written into the backup.
    pub fn backup_label(&self) -> String {
        String::from_utf8_lossy(&read(&self.data.join("backup_label"))).into_owned()
    }
}

/// A PostgreSQL server in its own temporary directory:
/// `data/` (data directory), `repo/` (its pitr repository, for new clusters), `bin/pitr`,
/// `server.log`, and the Unix socket. Dropping it stops the server (immediate mode) and removes
/// the directory.
pub struct Cluster {
    label: String,
    dir: TestDir,
    data: PathBuf,
    /// The server binaries chosen with [`ClusterOptions::version`] or [`ClusterOptions::bindir`]
    /// (or those of a backup of another major than [`pg_bindir`]'s): what its `pg_ctl` runs and
    /// `PITR_PG_BINDIR` for its `pitr` commands. `None`: [`bindir_for_data`].
    pitr_pg_bindir: Option<PathBuf>,
    /// The `--repo` value: a directory, or an S3 URL.
    repo: PathBuf,
    /// Where the repository's objects are on disk: `repo` itself, or s3s-fs's files of it.
    repo_dir: PathBuf,
    /// See [`ClusterOptions::env`].
    env: Vec<(String, String)>,
    /// The S3 server of a `PITR_TEST_BACKEND=s3` repository, kept running while a cluster uses it.
    s3: Option<Arc<s3::S3Server>>,
    pitr: PathBuf,
    pitr_args: Vec<String>,
    port: u16,
    settings: Vec<(String, String)>,
}

impl Cluster {
    /// Creates a new cluster with `initdb` (new system identifier every time) and starts it.
    pub fn start(opts: ClusterOptions) -> Cluster {
        let pitr_pg_bindir = opts.bindir.clone().or_else(|| opts.version.map(server_bindir));
        let major = pitr_pg_bindir.as_ref().map(|bindir| {
            bindir_major(bindir)
                .unwrap_or_else(|reason| panic!("no PostgreSQL server binaries in {}: {reason}", bindir.display()))
        });
        if let (Some(wanted), Some(found)) = (opts.version, major) {
            assert_eq!(
                found, wanted,
                "ClusterOptions::bindir holds PostgreSQL {found}, not version {wanted}"
            );
        }
        let dir = TestDir::new("cluster");
        let pitr = dir.install_pitr();
        let mut env = opts.env.clone();
        let mut s3 = opts.s3.clone();
        let (repo, repo_dir) = match &opts.repo {
            Some(repo) => (repo.clone(), opts.repo_dir.clone().unwrap_or_else(|| repo.clone())),
            None if backend_is_s3() => {
                let server = Arc::new(s3::S3Server::start());
                env.extend(server.env());
                let located = (PathBuf::from(server.url("repo")), server.bucket_dir().join("repo"));
                s3 = Some(server);
                located
            }
            None => (dir.subdir("repo"), dir.join("repo")),
        };
        let data = dir.join("data");
        let mut initdb = initdb_command(dir.path(), &data);
        if let Some(bindir) = &pitr_pg_bindir {
            initdb = server_command(bindir.join("initdb"));
            initdb.current_dir(dir.path()).arg("-D").arg(&data).args(INITDB_ARGS);
        }
        if opts.data_checksums {
            initdb.arg("--data-checksums");
        }
        run_ok(
            initdb
                .args(["--locale=C", "--encoding=UTF8"])
                .arg(format!("--wal-segsize={}", opts.wal_segsize_mb)),
        );
        let mut conf = read(&data.join("postgresql.conf"));
        conf.extend_from_slice(b"\n# pitr integration tests\ninclude 'pitr_test.conf'\n");
        rewrite_keeping_mode(&data.join("postgresql.conf"), &conf);

        let mut cluster = Cluster {
            label: match major {
                Some(major) => format!("PostgreSQL {major} cluster in {}", dir.path().display()),
                None => format!("cluster in {}", dir.path().display()),
            },
            data,
            pitr_pg_bindir,
            repo,
            repo_dir,
            env,
            s3,
            pitr,
            pitr_args: opts.pitr_args.clone(),
            port: 0,
            settings: Vec::new(),
            dir,
        };
        cluster.settings = cluster.base_settings();
        cluster.set_archiving(opts.archive);
        cluster.set_all(&opts.settings);
        cluster.start_server_retrying();
        cluster
    }

    /// Settings every harness cluster starts with.
    fn base_settings(&self) -> Vec<(String, String)> {
        let socket_dir = conf_quote(self.dir.path().to_str().expect("UTF-8 path"));
        [
            ("port", "0".to_string()),
            ("listen_addresses", "''".to_string()),
            ("unix_socket_directories", socket_dir),
            ("wal_level", "replica".to_string()),
            ("max_wal_senders", "4".to_string()),
            ("wal_keep_size", "'512MB'".to_string()),
            ("fsync", "off".to_string()),
            ("shared_buffers", "'32MB'".to_string()),
            ("max_connections", "30".to_string()),
            ("logging_collector", "off".to_string()),
            ("log_line_prefix", "'%m [%p] '".to_string()),
            ("lc_messages", "'C'".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `<pitr> [pitr_args] --repo <repo> archive-push %p`.
    fn archive_command(&self) -> String {
        let mut parts = vec![shell_safe(&self.pitr)];
        parts.extend(self.pitr_args.iter().cloned());
        parts.push("--repo".into());
        parts.push(shell_safe(&self.repo));
        parts.push("archive-push".into());
        parts.push("%p".into());
        parts.join(" ")
    }

    /// `<pitr> --repo <repo> archive-get %f %p` (no compression options: stored files say how
    /// they are compressed).
    fn restore_command(&self, repo: &Path) -> String {
        format!(
            "{} --repo {} archive-get %f %p",
            shell_safe(&self.pitr),
            shell_safe(repo)
        )
    }

    /// Sets a postgresql.conf setting (value written as given) in `pitr_test.conf`. Takes effect
    /// at the next start or reload.
    pub fn set(&mut self, key: &str, value: &str) {
        match self.settings.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => self.settings.push((key.to_string(), value.to_string())),
        }
        self.write_settings();
    }

    /// `archive_mode = on` with this cluster's [`Cluster::archive_command`], or `archive_mode = off`.
    fn set_archiving(&mut self, archive: bool) {
        if archive {
            self.set("archive_mode", "on");
            let command = self.archive_command();
            self.set("archive_command", &conf_quote(&command));
        } else {
            self.set("archive_mode", "off");
        }
    }

    /// [`Cluster::set`] for each `(key, value)`, in order.
    fn set_all(&mut self, settings: &[(String, String)]) {
        for (k, v) in settings {
            self.set(k, v);
        }
    }

    fn write_settings(&self) {
        let mut text = String::from("# written by the pitr integration-test harness\n");
        for (k, v) in &self.settings {
            let _ = writeln!(text, "{k} = {v}");
        }
        let path = self.data.join("pitr_test.conf");
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        give_to_server_user(&path);
    }

    /// Starts the server, choosing a new port and retrying (up to 3 attempts) if it fails.
    fn start_server_retrying(&mut self) {
        let mut last = None;
        for _ in 0..3 {
            self.port = free_port();
            self.set("port", &self.port.to_string());
            let out = self.pg_ctl_start();
            if out.success() {
                return;
            }
            // pg_ctl may give up while a postmaster still runs: make sure it is gone.
            self.stop_immediate_quietly();
            last = Some(out);
        }
        panic!(
            "{}: could not start the server:\n{}\n--- server log (tail) ---\n{}",
            self.label,
            last.expect("at least one attempt").describe(),
            self.log_tail()
        );
    }

    /// `pg_ctl -D <data>` of this cluster's binaries ([`Cluster::bindir`]) as the server user,
    /// run from the cluster's directory; add the action.
    fn pg_ctl(&self) -> Command {
        let mut cmd = server_command(self.bindir().join("pg_ctl"));
        cmd.current_dir(self.dir.path()).arg("-D").arg(&self.data);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn pg_ctl_start(&self) -> CmdOutput {
        run(self
            .pg_ctl()
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "120", "start"]))
    }

    /// Starts the (stopped) server again with the same settings; panics if it does not start.
    pub fn start_server(&mut self) {
        let out = self.pg_ctl_start();
        assert!(
            out.success(),
            "{}: could not start the server:\n{}\n--- server log (tail) ---\n{}",
            self.label,
            out.describe(),
            self.log_tail()
        );
    }

    /// Starts the server without insisting that it comes up (for recovery that may fail); returns
    /// whether `pg_ctl -w start` reported success.
    pub fn try_start_server(&mut self) -> bool {
        self.pg_ctl_start().success()
    }

    /// Stops the server cleanly (`pg_ctl -m fast stop`); panics (with the server log) if that
    /// fails.
    pub fn stop(&mut self) {
        let out = run(self.pg_ctl().args(["-m", "fast", "-w", "-t", "120", "stop"]));
        assert!(
            out.success(),
            "{}: could not stop the server:\n{}\n--- server log (tail) ---\n{}",
            self.label,
            out.describe(),
            self.log_tail()
        );
    }

    /// Stops the server in immediate mode if a postmaster.pid exists, ignoring every error.
    fn stop_immediate_quietly(&self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self
                .pg_ctl()
                .args(["-m", "immediate", "-w", "-t", "60", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Restarts the server (fast stop, start).
    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }

    /// Tells the server to reload its configuration.
    pub fn reload(&self) {
        self.psql("SELECT pg_reload_conf()");
    }

    /// True while the postmaster runs (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        run(self.pg_ctl().arg("status")).success()
    }

    /// The cluster's temporary directory (also its Unix socket directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The [`TestDir`] holding this cluster, for creating scratch files the server user can read.
    pub fn test_dir(&self) -> &TestDir {
        &self.dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn pg_wal(&self) -> PathBuf {
        self.data.join("pg_wal")
    }

    /// The repository this cluster archives into (for a recovered cluster: the one it restores
    /// from), as `--repo` takes it: a directory, or an S3 URL (`PITR_TEST_BACKEND=s3`).
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// Where the repository's objects are on disk: the repository directory, or the directory
    /// s3s-fs keeps them in as files.
    pub fn repo_dir(&self) -> &Path {
        &self.repo_dir
    }

    /// The environment pitr and the server get (the S3 endpoint and credentials, if any), for
    /// commands a test starts itself: `cmd.envs(c.env())`.
    pub fn env(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The S3 server of a `PITR_TEST_BACKEND=s3` repository.
    pub fn s3_server(&self) -> Option<&s3::S3Server> {
        self.s3.as_deref()
    }

    /// Whether the repository is on S3.
    pub fn repo_is_s3(&self) -> bool {
        self.repo.to_str().is_some_and(|r| r.starts_with("s3://"))
    }

    /// The installed `pitr` binary this cluster's archive/restore commands run.
    pub fn pitr_bin(&self) -> &Path {
        &self.pitr
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The whole server log.
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last lines of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log(), LOG_TAIL_LINES)
    }

    /// A `pitr` command for this cluster's installed binary, run as the server user from the
    /// cluster's temporary directory (not a data directory). No arguments yet.
    pub fn pitr_cmd(&self) -> Command {
        let mut cmd = self.pitr_command();
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// [`pitr_command`] with this cluster's `PITR_PG_BINDIR` (see [`ClusterOptions::version`] and
    /// [`ClusterOptions::bindir`]).
    fn pitr_command(&self) -> Command {
        let mut cmd = pitr_command(&self.pitr);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(bindir) = &self.pitr_pg_bindir {
            cmd.env("PITR_PG_BINDIR", bindir);
        }
        cmd
    }

    /// The server binaries this cluster runs: those chosen for it (see its `pitr_pg_bindir`),
    /// else [`bindir_for_data`].
    pub fn bindir(&self) -> PathBuf {
        self.pitr_pg_bindir
            .clone()
            .unwrap_or_else(|| bindir_for_data(&self.data))
    }

    /// Like [`Cluster::pitr_cmd`], but run from the data directory, exactly as PostgreSQL runs
    /// archive_command and restore_command (so `pg_wal/<name>` paths work).
    pub fn pitr_cmd_in_data_dir(&self) -> Command {
        let mut cmd = self.pitr_command();
        cmd.current_dir(&self.data);
        cmd
    }

    /// Runs `pitr --repo <this cluster's repo> <args…>` from the cluster's temporary directory.
    pub fn pitr(&self, args: &[&str]) -> CmdOutput {
        self.pitr_with_repo(&self.repo, args)
    }

    /// Runs `pitr --repo <repo> <args…>` from the cluster's temporary directory.
    pub fn pitr_with_repo(&self, repo: &Path, args: &[&str]) -> CmdOutput {
        run(self.pitr_cmd().arg("--repo").arg(repo).args(args))
    }

    /// Runs `pitr --repo <this cluster's repo> <args…>` from the data directory, as PostgreSQL
    /// would (e.g. `archive-push pg_wal/<name>`, `archive-get <name> pg_wal/RECOVERYXLOG`).
    pub fn pitr_as_server(&self, args: &[&str]) -> CmdOutput {
        run(self.pitr_cmd_in_data_dir().arg("--repo").arg(&self.repo).args(args))
    }

    /// Points a command's libpq environment at this server: PGHOST = its socket directory,
    /// PGPORT, PGDATABASE = postgres.
    pub fn libpq_env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("PGHOST", self.dir())
            .env("PGPORT", self.port.to_string())
            .env("PGDATABASE", "postgres")
    }

    /// `pitr --config <config> daemon --pgdata <data directory>`, connected to this server
    /// through its libpq environment ([`Cluster::libpq_env`]); not started yet.
    pub fn daemon_cmd(&self, config: &Path) -> Command {
        let mut cmd = self.pitr_cmd();
        self.libpq_env(&mut cmd)
            .arg("--config")
            .arg(config)
            .args(["daemon", "--pgdata"])
            .arg(self.data_dir());
        cmd
    }

    /// A `pitr --repo <repo>` command (as the server user, from the cluster's temporary
    /// directory) connected to this server through its libpq environment ([`Cluster::libpq_env`]).
    /// No further arguments yet.
    pub fn pitr_connected_cmd(&self, repo: &Path) -> Command {
        let mut cmd = self.pitr_cmd();
        self.libpq_env(&mut cmd).arg("--repo").arg(repo);
        cmd
    }

    /// [`Cluster::pitr_connected`] with this cluster's repository; panics (with the server log's
    /// tail) unless it exits 0.
    #[track_caller]
    pub fn pitr_ok(&self, args: &[&str]) -> CmdOutput {
        let out = self.pitr_connected(&self.repo, args);
        assert!(
            out.success(),
            "pitr {} failed:\n{}\n--- server log (tail) ---\n{}",
            args.join(" "),
            out.describe(),
            self.log_tail()
        );
        out
    }

    /// Runs `pitr --repo <repo> <args…>` connected to this server ([`Cluster::pitr_connected_cmd`]).
    pub fn pitr_connected(&self, repo: &Path, args: &[&str]) -> CmdOutput {
        run(self.pitr_connected_cmd(repo).args(args))
    }

    /// A client-program command (`psql`, `pgbench`, `pg_dump`, …) connecting to this server
    /// ([`client_at`] its socket directory and port).
    pub fn client(&self, program: &str) -> Command {
        client_at(program, self.dir.path(), self.port)
    }

    /// Runs one SQL string through `psql -X -A -t`; returns trimmed stdout, or the failed output.
    pub fn try_psql(&self, sql: &str) -> Result<String, CmdOutput> {
        try_psql_at(self.dir.path(), self.port, sql)
    }

    /// Runs one SQL string through `psql -X -A -t` and returns trimmed stdout (rows on separate
    /// lines, columns separated by `|`); panics with stderr and the server log on failure.
    #[track_caller]
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|out| {
            panic!(
                "{}: psql failed:\n{}\n--- server log (tail) ---\n{}",
                self.label,
                out.describe(),
                self.log_tail()
            )
        })
    }

    /// `pgbench -i -q -s <scale>`.
    pub fn pgbench_init(&self, scale: u32) {
        let out = run(self
            .client("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string(), "postgres"]));
        assert!(
            out.success(),
            "{}: pgbench -i failed:\n{}\n--- server log (tail) ---\n{}",
            self.label,
            out.describe(),
            self.log_tail()
        );
    }

    /// `pgbench <args…> postgres` against this server, as a command (to run or spawn).
    pub fn pgbench_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.client("pgbench");
        cmd.args(args).arg("postgres");
        cmd
    }

    /// `pgbench <args…> postgres`; panics on failure and returns pgbench's output.
    pub fn pgbench(&self, args: &[&str]) -> CmdOutput {
        let out = run(&mut self.pgbench_cmd(args));
        assert!(
            out.success(),
            "{}: pgbench failed:\n{}\n--- server log (tail) ---\n{}",
            self.label,
            out.describe(),
            self.log_tail()
        );
        out
    }

    /// Writes a little WAL, switches to a new segment and returns the name of the segment that
    /// was just completed (which the server then archives).
    pub fn switch_wal(&self) -> String {
        // Without new WAL since the last switch, pg_switch_wal() would not switch at all.
        self.psql("SELECT pg_logical_emit_message(false, 'pitr-test', 'switch')");
        let name = self.psql("SELECT pg_walfile_name(pg_switch_wal())");
        assert!(is_segment_name(&name), "unexpected walfile name {name:?}");
        name
    }

    /// [`Cluster::switch_wal`], then waits until the completed segment is archived; returns its
    /// name.
    pub fn switch_and_archive(&self) -> String {
        let segment = self.switch_wal();
        self.wait_archived(&segment);
        segment
    }

    /// `pg_current_wal_lsn()` as a number.
    pub fn current_lsn(&self) -> u64 {
        parse_lsn(&self.psql("SELECT pg_current_wal_lsn()"))
    }

    /// The cluster's system identifier.
    pub fn system_identifier(&self) -> u64 {
        self.psql("SELECT system_identifier FROM pg_control_system()")
            .parse()
            .expect("numeric system identifier")
    }

    /// `wal_segment_size` in bytes.
    pub fn wal_segment_size(&self) -> u64 {
        self.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
            .parse()
            .expect("numeric wal_segment_size")
    }

    /// The server's major version number (e.g. 15).
    pub fn major_version(&self) -> u32 {
        let num: u32 = self.psql("SHOW server_version_num").parse().expect("number");
        num / 10000
    }

    /// `(archived_count, last_archived_wal, failed_count, last_failed_wal)` from pg_stat_archiver.
    pub fn archiver_stats(&self) -> (u64, String, u64, String) {
        let row = self.psql(
            "SELECT archived_count, coalesce(last_archived_wal, ''), failed_count, \
             coalesce(last_failed_wal, '') FROM pg_stat_archiver",
        );
        let cols: Vec<&str> = row.split('|').collect();
        assert_eq!(cols.len(), 4, "unexpected pg_stat_archiver row {row:?}");
        (
            cols[0].parse().expect("archived_count"),
            cols[1].to_string(),
            cols[2].parse().expect("failed_count"),
            cols[3].to_string(),
        )
    }

    /// Names with a `.done` (archived) or `.ready` (waiting) file in `pg_wal/archive_status`.
    pub fn archive_status(&self) -> (Vec<String>, Vec<String>) {
        let mut done = Vec::new();
        let mut ready = Vec::new();
        for entry in fs::read_dir(self.pg_wal().join("archive_status")).expect("archive_status") {
            let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(".done") {
                done.push(n.to_string());
            } else if let Some(n) = name.strip_suffix(".ready") {
                ready.push(n.to_string());
            }
        }
        done.sort();
        ready.sort();
        (done, ready)
    }

    /// Waits until the server reports `name` (a segment, `.history`, `.backup` or `.partial` file)
    /// as archived; panics after [`ARCHIVE_TIMEOUT`] with the archiver statistics and server log.
    pub fn wait_archived(&self, name: &str) {
        let done_file = self.pg_wal().join("archive_status").join(format!("{name}.done"));
        let archived = poll(ARCHIVE_TIMEOUT, || {
            if done_file.exists() {
                return Some(());
            }
            let (_, last, _, _) = self.archiver_stats();
            // The archiver sends segments oldest first, so a later one means `name` is done.
            let later_segment =
                is_segment_name(name) && is_segment_name(&last) && last[..8] == name[..8] && last.as_str() >= name;
            (last == name || later_segment).then_some(())
        });
        if archived.is_none() {
            panic!(
                "{}: {name} was not archived within {ARCHIVE_TIMEOUT:?}; pg_stat_archiver \
                 (archived_count, last_archived_wal, failed_count, last_failed_wal) = {:?}\n\
                 --- server log (tail) ---\n{}",
                self.label,
                self.archiver_stats(),
                self.log_tail()
            );
        }
    }

    /// Waits until no `.ready` file is left in `pg_wal/archive_status`.
    pub fn wait_archiver_idle(&self) {
        let idle = poll(ARCHIVE_TIMEOUT, || self.archive_status().1.is_empty().then_some(()));
        if idle.is_none() {
            panic!(
                "{}: still waiting to be archived after {ARCHIVE_TIMEOUT:?}: {:?}; \
                 pg_stat_archiver = {:?}\n--- server log (tail) ---\n{}",
                self.label,
                self.archive_status().1,
                self.archiver_stats(),
                self.log_tail()
            );
        }
    }

    /// Switches WAL, waits until that segment is archived and returns its name and bytes (copied
    /// from `pg_wal` while the server still keeps it).
    pub fn capture_segment(&self) -> (String, Vec<u8>) {
        let name = self.switch_wal();
        let bytes = read(&self.pg_wal().join(&name));
        (name, bytes)
    }

    /// Takes a base backup with `pg_basebackup -X none -c fast` (waiting for the WAL it needs to
    /// be archived, so the repository can restore it).
    pub fn base_backup(&self) -> BaseBackup {
        let dir = TestDir::new("backup");
        let data = dir.join("data");
        let out =
            run(self
                .client("pg_basebackup")
                .arg("-D")
                .arg(&data)
                .args(["-X", "none", "-c", "fast", "--no-sync"]));
        assert!(
            out.success(),
            "{}: pg_basebackup failed:\n{}\n--- server log (tail) ---\n{}",
            self.label,
            out.describe(),
            self.log_tail()
        );
        let label = String::from_utf8_lossy(&read(&data.join("backup_label"))).into_owned();
        // "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)"
        let start_line = label
            .lines()
            .find(|l| l.starts_with("START WAL LOCATION:"))
            .unwrap_or_else(|| panic!("no START WAL LOCATION in backup_label:\n{label}"));
        let (start_lsn, start_file) = parse_wal_location(start_line);
        let offset = start_lsn % self.wal_segment_size();
        let backup_history_file = format!("{start_file}.{offset:08X}.backup");
        let history_path = self.pg_wal().join(&backup_history_file);
        let history = String::from_utf8_lossy(&read(&history_path)).into_owned();
        let stop_line = history
            .lines()
            .find(|l| l.starts_with("STOP WAL LOCATION:"))
            .unwrap_or_else(|| panic!("no STOP WAL LOCATION in {backup_history_file}:\n{history}"));
        let (_, stop_file) = parse_wal_location(stop_line);
        self.wait_archived(&stop_file);
        self.wait_archived(&backup_history_file);
        BaseBackup {
            dir,
            data,
            source_repo: self.repo.clone(),
            source_env: self.env.clone(),
            source_repo_dir: self.repo_dir.clone(),
            source_s3: self.s3.clone(),
            source_pitr_args: self.pitr_args.clone(),
            start_wal_file: start_file,
            stop_wal_file: stop_file,
            backup_history_file,
        }
    }

    /// Turns a base backup into a cluster that restores WAL with
    /// `restore_command = '<pitr> --repo <repo> archive-get %f %p'` (in `recovery.signal` archive
    /// recovery unless `opts.standby`), on a new port and socket directory, with archiving off
    /// unless `opts.archive`, and starts it. It does not wait for recovery to end: see
    /// [`Cluster::wait_recovery_end`].
    pub fn recover(backup: BaseBackup, opts: RecoveryOptions) -> Cluster {
        let BaseBackup {
            dir,
            data,
            source_repo,
            source_env,
            source_repo_dir,
            source_s3,
            source_pitr_args,
            ..
        } = backup;
        let pitr = dir.install_pitr();
        let repo_dir = opts.repo.clone().unwrap_or(source_repo_dir);
        let repo = opts.repo.clone().unwrap_or(source_repo);
        let pitr_pg_bindir =
            (bindir_major(pg_bindir()) != bindir_major(&bindir_for_data(&data))).then(|| bindir_for_data(&data));
        let mut cluster = Cluster {
            label: format!("recovered cluster in {}", dir.path().display()),
            data,
            pitr_pg_bindir,
            repo,
            repo_dir,
            env: source_env,
            s3: source_s3,
            pitr,
            pitr_args: source_pitr_args,
            port: free_port(),
            settings: Vec::new(),
            dir,
        };
        cluster.settings = cluster.base_settings();
        let port = cluster.port.to_string();
        cluster.set("port", &port);
        let restore_command = opts
            .restore_command
            .clone()
            .unwrap_or_else(|| cluster.restore_command(&cluster.repo));
        cluster.set("restore_command", &conf_quote(&restore_command));
        cluster.set_archiving(opts.archive);
        cluster.set_all(&opts.settings);
        let signal = if opts.standby {
            "standby.signal"
        } else {
            "recovery.signal"
        };
        let signal_path = cluster.data.join(signal);
        fs::write(&signal_path, b"").expect("write signal file");
        give_to_server_user(&signal_path);
        // pg_ctl -w returns once the server accepts connections (hot standby, after reaching
        // consistency) or fails; recovery may go on, or fail, afterwards.
        cluster.try_start_server();
        cluster
    }

    /// Waits until archive recovery ends: the server promoted (`pg_is_in_recovery()` is false), or
    /// it stopped running (recovery failed). Panics after [`RECOVERY_TIMEOUT`].
    pub fn wait_recovery_end(&self) -> RecoveryOutcome {
        let outcome = poll(RECOVERY_TIMEOUT, || {
            match self.try_psql("SELECT pg_is_in_recovery()") {
                Ok(v) if v == "f" => return Some(RecoveryOutcome::Promoted),
                Ok(_) => return None,
                Err(_) => {}
            }
            if self.is_running() {
                None // still starting up, not yet accepting connections
            } else {
                Some(RecoveryOutcome::Failed { log: self.log() })
            }
        });
        outcome.unwrap_or_else(|| {
            panic!(
                "{}: recovery neither finished nor failed within {RECOVERY_TIMEOUT:?}\n\
                 --- server log (tail) ---\n{}",
                self.label,
                self.log_tail()
            )
        })
    }

    /// Waits for recovery to end and panics (with the log) unless the server promoted.
    pub fn expect_promoted(&self) {
        if let RecoveryOutcome::Failed { log } = self.wait_recovery_end() {
            panic!(
                "{}: recovery failed, the server stopped\n--- server log (tail) ---\n{}",
                self.label,
                tail(&log, LOG_TAIL_LINES)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_immediate_quietly();
    }
}

/// Parses `"<KEY>: 0/2000028 (file 000000010000000000000002)"` into `(lsn, file)`.
fn parse_wal_location(line: &str) -> (u64, String) {
    let rest = line.split_once(':').map(|(_, r)| r.trim()).unwrap_or("");
    let (lsn, file) = rest
        .split_once(" (file ")
        .unwrap_or_else(|| panic!("unexpected WAL location line {line:?}"));
    (parse_lsn(lsn), file.trim_end_matches(')').to_string())
}

// ---------------------------------------------------------------------------------------------
// Fault injection: other users, root, small file systems (tests/faults.rs)
// ---------------------------------------------------------------------------------------------

/// The OS user with no privileges, for hostile-user tests.
pub const NOBODY: &str = "nobody";

/// `(uid, gid)` of [`SERVER_USER`] (root only).
pub fn server_user() -> (u32, u32) {
    server_user_ids()
}

/// A command that runs `program` as [`NOBODY`] through `runuser` (root only), with the PostgreSQL
/// client and `PITR_*` environment variables removed and `/` as the working directory.
pub fn nobody_command(program: impl AsRef<OsStr>) -> Command {
    assert!(
        running_as_root(),
        "acting as `{NOBODY}` needs root (runuser); run the fault tests as root"
    );
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", NOBODY, "--"]).arg(program);
    clean_env(&mut cmd);
    cmd
}

/// A command that runs `program` as the user running the tests (root in CI), with the
/// PostgreSQL client and `PITR_*` environment variables removed and `/` as the working directory.
pub fn own_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    clean_env(&mut cmd);
    cmd
}

/// A command that runs `program` as the server user under `umask <umask>` (through `sh`), so
/// that what it creates shows whether it sets modes itself. `PITR_*` variables are removed.
pub fn server_command_with_umask(umask: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = server_command("sh");
    cmd.arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
        .arg(program.as_ref());
    for var in PITR_ENV {
        cmd.env_remove(var);
    }
    cmd
}

fn clean_env(cmd: &mut Command) {
    for var in PG_CLIENT_ENV.iter().chain(PITR_ENV) {
        cmd.env_remove(var);
    }
    cmd.current_dir("/");
}

/// A tmpfs mounted on an existing directory (root only): a repository that can fill up, turn
/// read-only or stand for an unmounted disk. Its root belongs to the server user, mode 0700.
/// Unmounted when dropped (lazily when still busy), also when a test fails.
pub struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `4m`, `65536k`) on `at`.
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        assert!(
            running_as_root(),
            "mounting a tmpfs needs root; run the fault tests as root"
        );
        let (uid, gid) = server_user_ids();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0700,uid={uid},gid={gid}"))
                .arg("tmpfs")
                .arg(at),
        );
        Tmpfs { at: at.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.at
    }

    /// `mount -o remount,<options>`: `size=64m`, `ro`, `rw`.
    pub fn remount(&self, options: &str) {
        run_ok(
            Command::new("mount")
                .arg("-o")
                .arg(format!("remount,{options}"))
                .arg(&self.at),
        );
    }

    /// Bytes in use.
    pub fn used_bytes(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.at).expect("statvfs of the tmpfs");
        (stat.f_blocks - stat.f_bfree) * stat.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .arg(&self.at)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !quiet(&[]) {
            quiet(&["-l"]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recovery targets
// ---------------------------------------------------------------------------------------------

/// A not-yet-existing data directory for `pitr recover --pgdata`, in its own temporary
/// directory. Dropping it stops a server still running there (immediate) and removes the
/// private socket directory (`/tmp/pitr-recover-*`) that `pitr recover` created for it.
pub struct NewDir {
    /// Holds the directory (removed on drop, after the server is stopped).
    pub dir: TestDir,
    /// The data directory to recover into (absent until recover creates it).
    pub data: PathBuf,
}

impl NewDir {
    pub fn new() -> NewDir {
        let dir = TestDir::new("recover");
        let data = dir.join("data");
        NewDir { dir, data }
    }

    /// The log `pitr recover` makes the server write.
    pub fn server_log(&self) -> String {
        fs::read_to_string(self.data.join("pitr_recover.log")).unwrap_or_default()
    }

    /// Asserts that postgresql.auto.conf contains each of `settings`.
    #[track_caller]
    pub fn assert_settings(&self, settings: &[&str]) {
        let auto = self.auto_conf();
        for setting in settings {
            assert!(
                auto.contains(setting),
                "{setting:?} missing from postgresql.auto.conf:\n{auto}"
            );
        }
    }

    /// postgresql.auto.conf as text.
    pub fn auto_conf(&self) -> String {
        String::from_utf8_lossy(&read(&self.data.join("postgresql.auto.conf"))).into_owned()
    }

    /// `pg_ctl status` as the server user.
    pub fn is_running(&self) -> bool {
        pg_ctl_status(self.dir.path(), &self.data)
    }

    /// Stops a server running there (immediate), quietly.
    pub fn stop_immediate(&self) {
        pg_ctl_stop_immediate_quietly(self.dir.path(), &self.data);
    }

    /// Socket directories the server announced in its log ("listening on Unix socket ...").
    pub fn socket_dirs(&self) -> Vec<PathBuf> {
        self.server_log()
            .lines()
            .filter_map(|l| l.split_once("listening on Unix socket \"").map(|(_, r)| r))
            .filter_map(|r| r.split('"').next())
            .filter_map(|p| Path::new(p).parent().map(Path::to_path_buf))
            .collect()
    }
}

impl Drop for NewDir {
    fn drop(&mut self) {
        self.stop_immediate();
        for dir in self.socket_dirs() {
            if dir.starts_with("/tmp") && dir.to_string_lossy().contains("pitr-recover-") {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
}

/// Nothing left in the scratch directory, and no process still naming it (the copy's server).
#[track_caller]
pub fn assert_copy_gone(scratch: &Path) {
    let left: Vec<std::path::PathBuf> = std::fs::read_dir(scratch)
        .expect("read the scratch directory")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the scratch copy is left behind: {left:?}");
    let needle = scratch.to_string_lossy().into_owned();
    let running: Vec<String> = std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle) && c.contains("postgres"))
        .collect();
    assert!(running.is_empty(), "the copy's server still runs: {running:?}");
}

/// Runs the `openssl` command line in `dir` (the tests make their certificates with it), panicking
/// with its message when it fails or is missing.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl, which makes the test's certificates: {e} (apt-get install openssl)"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
