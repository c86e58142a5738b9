//! A real S3-compatible server for the tests: s3s-fs, started on a free loopback port with a
//! temporary root and random credentials, killed on drop. Install it with
//! `bash .ci/install-s3s-fs` (it prints `PITR_S3S_FS=...`); it is found through `PITR_S3S_FS`,
//! then `/var/cache/pitr/s3s-fs/bin/s3s-fs`, then `PATH`. A missing server fails the tests:
//! they are never skipped. s3s-fs runs with `TCP_NODELAY` set on its connections by a preloaded
//! shim ([`nodelay_shim`]), as any real S3 service answers: without it every small answer waits
//! 40 ms for a delayed ACK, and the command suites took three times as long on S3.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pitr::storage::s3::Secret;
use pitr::storage::{S3Config, S3Storage};

use super::free_port;

pub const BUCKET: &str = "pitr-test";

/// A running s3s-fs, killed on drop.
pub struct S3Server {
    /// The running s3s-fs (`None` only while it starts).
    child: Mutex<Option<Child>>,
    pub port: u16,
    /// The server's root: each bucket is a directory in it.
    root: tempfile::TempDir,
    log: PathBuf,
    _logs: tempfile::TempDir,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let mut server = S3Server {
            child: Mutex::new(None),
            port: 0,
            root,
            log: logs.path().join("s3s-fs.log"),
            _logs: logs,
            access_key: format!("AK{}", random_hex(8)),
            secret_key: random_hex(20),
        };
        // A port that was free a moment ago may be taken by the time the server binds it: try
        // a few.
        for _ in 0..5 {
            server.port = free_port();
            if let Some(child) = server.spawn() {
                *server.child.get_mut().unwrap() = Some(child);
                return server;
            }
        }
        panic!(
            "s3s-fs did not start listening; its log: {}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
    }

    /// Starts s3s-fs on this server's port, root and credentials; `None` when it does not listen
    /// within 20 s.
    fn spawn(&self) -> Option<Child> {
        let binary = s3s_fs_binary();
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &self.access_key, "--secret-key", &self.secret_key])
            .arg(self.root.path())
            .env("LD_PRELOAD", nodelay_shim())
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Some(status) = child.try_wait().unwrap() {
                eprintln!("s3s-fs on port {} exited ({status})", self.port);
                return None;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Some(child);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Stops the server (connections are refused), then starts it again on the same port with
    /// the same objects after `down`: a store that is down for a while.
    pub fn down_for(&self, down: Duration) {
        let mut child = self.child.lock().unwrap();
        if let Some(running) = child.as_mut() {
            let _ = running.kill();
            let _ = running.wait();
        }
        std::thread::sleep(down);
        *child = Some(self.spawn().expect("s3s-fs starts again on its port"));
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The configuration of a repository at `s3://pitr-test/<prefix>` on this server.
    pub fn config(&self, prefix: &str) -> S3Config {
        let mut config = S3Config::from_url(&format!("s3://{BUCKET}/{prefix}")).unwrap();
        config.endpoint = Some(self.endpoint());
        config.region = Some("us-east-1".into());
        config.access_key_id = Some(self.access_key.clone());
        config.secret_access_key = Some(Secret::new(self.secret_key.clone()));
        config
    }

    pub fn storage(&self, prefix: &str) -> S3Storage {
        S3Storage::open(self.config(prefix)).unwrap()
    }

    /// `s3://pitr-test/<prefix>`: a repository URL on this server.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The AWS environment that points pitr (and a server whose archive_command runs pitr) at
    /// this server: endpoint, region and credentials, never on a command line.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(BUCKET)
    }
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3s-fs on {}", self.endpoint())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.get_mut().unwrap().as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "s3s-fs log ({}):\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// The objects under `dir` of s3s-fs's root (each object is a file at its key): their keys
/// relative to `dir`, `/`-separated.
pub fn objects_under(dir: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), &path, out);
            } else {
                out.insert(path);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, "", &mut out);
    out
}

/// The shared object preloaded into s3s-fs that sets `TCP_NODELAY` on each connection it accepts
/// (`s3s_fs_nodelay.c` says why), compiled with `cc` once per test process into cargo's temp
/// directory for tests.
fn nodelay_shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let own = dir.join(format!("s3s-fs-nodelay-{}", std::process::id()));
        let source = own.with_extension("c");
        std::fs::write(&source, include_str!("s3s_fs_nodelay.c")).unwrap();
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(own.with_extension("so"))
            .arg(&source)
            .arg("-ldl")
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cc, the C compiler that builds the TCP_NODELAY shim of s3s-fs, cannot run ({e}): \
                     install it (apt-get install gcc)"
                )
            });
        std::fs::remove_file(&source).unwrap();
        assert!(
            built.status.success(),
            "cc could not build the TCP_NODELAY shim of s3s-fs:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        // Other test processes may build it at the same time: each renames its own build over
        // the shared name, and a running server keeps the file it loaded.
        let shim = dir.join("s3s-fs-nodelay.so");
        std::fs::rename(own.with_extension("so"), &shim).unwrap();
        shim
    })
}

pub fn s3s_fs_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PITR_S3S_FS").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "PITR_S3S_FS={} is not a file: run `bash .ci/install-s3s-fs` and export what it prints",
            path.display()
        );
        return path;
    }
    let cached = PathBuf::from("/var/cache/pitr/s3s-fs/bin/s3s-fs");
    if cached.is_file() {
        return cached;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "s3s-fs, the S3-compatible server these tests run against, is not installed: run \
             `bash .ci/install-s3s-fs` (cargo install s3s-fs --version 0.14.1 --features binary, a few \
             minutes) and export the PITR_S3S_FS=... it prints, or put s3s-fs on PATH"
        )
    })
}

pub fn random_hex(bytes: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..bytes.div_ceil(8))
        .map(|i| {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_usize(i);
            format!("{:016x}", hasher.finish())
        })
        .collect::<String>()[..bytes * 2]
        .to_string()
}
