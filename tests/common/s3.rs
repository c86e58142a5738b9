//! A real S3-compatible server for the tests: s3s-fs, started on a free loopback port with a
//! temporary root and random credentials, killed on drop. Install it with
//! `bash .ci/install-s3s-fs` (it prints `PITR_S3S_FS=...`); it is found through `PITR_S3S_FS`,
//! then `/var/cache/pitr/s3s-fs/bin/s3s-fs`, then `PATH`. A missing server fails the tests:
//! they are never skipped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pitr::storage::s3::Secret;
use pitr::storage::{S3Config, S3Storage};

use super::free_port;

pub const BUCKET: &str = "pitr-test";

/// A running s3s-fs, killed on drop.
pub struct S3Server {
    child: Child,
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
        let binary = s3s_fs_binary();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("s3s-fs.log");
        let access_key = format!("AK{}", random_hex(8));
        let secret_key = random_hex(20);
        // A port that was free a moment ago may be taken by the time the server binds it: try
        // a few.
        for _ in 0..5 {
            let port = free_port();
            let output = std::fs::File::create(&log).unwrap();
            let mut child = Command::new(&binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &access_key, "--secret-key", &secret_key])
                .arg(root.path())
                .stdin(Stdio::null())
                .stdout(output.try_clone().unwrap())
                .stderr(output)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if let Some(status) = child.try_wait().unwrap() {
                    eprintln!(
                        "s3s-fs on port {port} exited ({status}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server {
                        child,
                        port,
                        root,
                        log,
                        _logs: logs,
                        access_key,
                        secret_key,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "s3s-fs did not start listening; its log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
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

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "s3s-fs log ({}):\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
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
