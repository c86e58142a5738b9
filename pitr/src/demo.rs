//! `pitr demo`: the whole story on a throwaway cluster in a temporary directory — archive,
//! backup, a restore point, the oops, and the recovery to just before it, with proof.
//!
//! It uses the same code paths as the real commands; nothing here is simulated.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::backup::{self, BackupOptions, Tier};
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::pg::ctl::{self, Owner};
use crate::pg::Server;
use crate::progress::Progress;
use crate::recover::{self, Action, RecoverOptions, Request, Target, TimelineChoice};
use crate::repo::Repo;
use crate::restore_point::{self, CreateOptions};

/// Rows in `products` when the backup is taken.
const ROWS_AT_BACKUP: i64 = 1000;
/// Rows added after the backup, before the restore point.
const ROWS_AFTER_BACKUP: i64 = 500;

/// What the demo proved.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    /// Where it ran.
    pub directory: PathBuf,
    /// The backup taken.
    pub backup_id: String,
    /// Rows before the oops.
    pub rows_before_oops: i64,
    /// Rows after the oops on the primary.
    pub rows_after_oops: i64,
    /// Rows in the recovered copy.
    pub rows_recovered: i64,
    /// PostgreSQL's line saying where recovery stopped.
    pub stopped: Option<String>,
}

/// Runs the demo; `pitr_exe` is this pitr, copied where the server user can run it;
/// `narrate` receives one line per step.
pub async fn run(pitr_exe: &Path, keep: bool, narrate: &dyn Fn(&str), progress: &dyn Progress) -> Result<DemoSummary> {
    let (bindir, version) = ctl::newest_bindir()?;
    let owner = if rustix::process::geteuid().as_raw() == 0 {
        Owner::named("postgres")?
    } else {
        Owner::current()?
    };
    let dir = tempfile::Builder::new()
        .prefix("pitr-demo-")
        .tempdir_in("/tmp")
        .map_err(Error::io("create in", "/tmp"))?;
    let root = dir.path().to_path_buf();
    let cluster = DemoCluster::create(&root, &owner, &bindir, pitr_exe)?;
    narrate(&format!(
        "1. a throwaway PostgreSQL {version} cluster in {}, archiving with pitr archive-push",
        root.display()
    ));
    let result = cluster.story(narrate, progress).await;
    cluster.stop_all();
    if keep {
        narrate(&format!("kept {} (--keep)", dir.keep().display()));
    }
    result
}

struct DemoCluster {
    root: PathBuf,
    owner: Owner,
    bindir: PathBuf,
    pitr: PathBuf,
    port: u16,
    /// The recovered copy's private socket directory, removed with the demo.
    recovery_socket: std::sync::Mutex<Option<PathBuf>>,
}

impl DemoCluster {
    fn create(root: &Path, owner: &Owner, bindir: &Path, pitr_exe: &Path) -> Result<DemoCluster> {
        let pitr = root.join("pitr");
        std::fs::copy(pitr_exe, &pitr).map_err(Error::io("copy pitr to", &pitr))?;
        std::fs::set_permissions(&pitr, std::fs::Permissions::from_mode(0o755)).map_err(Error::io("chmod", &pitr))?;
        std::fs::create_dir(root.join("repo")).map_err(Error::io("create", root.join("repo")))?;
        for path in [root.to_path_buf(), root.join("repo")] {
            std::os::unix::fs::chown(&path, Some(owner.uid), Some(owner.gid)).map_err(Error::io("chown", &path))?;
        }
        let cluster = DemoCluster {
            root: root.to_path_buf(),
            owner: owner.clone(),
            bindir: bindir.to_path_buf(),
            pitr,
            port: free_port()?,
            recovery_socket: std::sync::Mutex::new(None),
        };
        cluster.run(
            cluster
                .owner
                .command(bindir.join("initdb"))
                .args(["-A", "trust", "-N", "-D"])
                .arg(cluster.primary()),
        )?;
        let conf = format!(
            "port = {}\nlisten_addresses = ''\nunix_socket_directories = '{}'\nwal_level = replica\n\
             archive_mode = on\narchive_command = '{} --repo {} archive-push %p'\n",
            cluster.port,
            root.display(),
            cluster.pitr.display(),
            cluster.repo().display()
        );
        let conf_path = cluster.primary().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).map_err(Error::io("read", &conf_path))?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).map_err(Error::io("write", &conf_path))?;
        let log = root.join("primary.log");
        cluster.run(
            cluster
                .owner
                .command(bindir.join("pg_ctl"))
                .arg("-D")
                .arg(cluster.primary())
                .arg("-l")
                .arg(&log)
                .args(["-w", "start"]),
        )?;
        Ok(cluster)
    }

    fn primary(&self) -> PathBuf {
        self.root.join("primary")
    }

    fn repo(&self) -> PathBuf {
        self.root.join("repo")
    }

    fn run(&self, command: &mut Command) -> Result<()> {
        let out = command.output().map_err(Error::io("run", "a server command"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }

    async fn story(&self, narrate: &dyn Fn(&str), progress: &dyn Progress) -> Result<DemoSummary> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.root)
            .port(self.port)
            .user(&self.owner.name)
            .dbname("postgres");
        let server = Server::connect(&config).await?;
        let count = || async { count_products(&server).await };
        server
            .query_rows(&format!(
                "CREATE TABLE products (id bigint PRIMARY KEY, name text); \
                 INSERT INTO products SELECT g, 'product ' || g FROM generate_series(1, {ROWS_AT_BACKUP}) g"
            ))
            .await?;
        narrate(&format!("2. created table products with {} rows", count().await?));

        let repo = Repo::open_local(self.repo())?;
        let options = BackupOptions {
            tier: Tier::Daily,
            name: "demo".into(),
            pgdata: Some(self.primary()),
            fast: true,
            jobs: 2,
            codec: Codec::default(),
        };
        let backup = backup::take(&repo, &server, &options, progress).await?;
        narrate(&format!(
            "3. pitr backup --tier daily: {} ({} files)",
            backup.backup.id, backup.file_count
        ));

        server
            .query_rows(&format!(
                "INSERT INTO products SELECT g, 'product ' || g FROM generate_series({}, {}) g",
                ROWS_AT_BACKUP + 1,
                ROWS_AT_BACKUP + ROWS_AFTER_BACKUP
            ))
            .await?;
        let before = count().await?;
        let point_options = CreateOptions {
            switch_wal: true,
            allow_duplicate: false,
            timeout: Duration::from_secs(60),
        };
        let point = restore_point::create(&repo, &server, "before_oops", point_options).await?;
        narrate(&format!(
            "4. {before} rows; pitr restore-point before_oops at {}",
            point.lsn
        ));

        server.query_rows("DELETE FROM products").await?;
        server.switch_wal().await?;
        let after = count().await?;
        narrate(&format!(
            "5. the oops: DELETE FROM products -> {after} rows on the primary"
        ));

        let request = Request {
            target: Target::Name("before_oops".into()),
            timeline: TimelineChoice::Latest,
            backup: None,
        };
        let plan = recover::plan(&recover::repo_state(&repo)?, &request)?;
        let recovered_dir = self.root.join("recovered");
        let options = RecoverOptions {
            pgdata: recovered_dir.clone(),
            force: false,
            exclusive: false,
            action: Action::Promote,
            port: Some(free_port()?),
            no_start: false,
            keep_archiving: false,
            verify_sql: Some("SELECT COUNT(*) FROM products".into()),
            jobs: 2,
            restore_command: format!(
                "{} --repo {} archive-get %f %p",
                self.pitr.display(),
                self.repo().display()
            ),
        };
        narrate(&format!(
            "6. pitr recover --target-name before_oops --pgdata {}: backup {}, WAL {}..{}",
            recovered_dir.display(),
            plan.backup_id,
            plan.first_wal,
            plan.last_wal
        ));
        let report = recover::execute(&repo, &plan, &options, progress).await?;
        *self.recovery_socket.lock().expect("not poisoned") = report.socket_dir.clone();
        let recovered: i64 = report
            .verify_rows
            .as_ref()
            .and_then(|rows| rows.first()?.first()?.as_deref()?.parse().ok())
            .ok_or_else(|| Error::Refused("the recovered copy did not answer SELECT COUNT(*)".into()))?;
        let stopped = report.outcome.as_ref().and_then(|o| o.stopped.clone());
        narrate(&format!(
            "7. {}; the recovered copy has {recovered} rows",
            stopped.as_deref().unwrap_or("recovery ended")
        ));
        if recovered != before {
            return Err(Error::Refused(format!(
                "the demo recovered {recovered} rows, expected {before}"
            )));
        }
        Ok(DemoSummary {
            directory: self.root.clone(),
            backup_id: backup.backup.id,
            rows_before_oops: before,
            rows_after_oops: after,
            rows_recovered: recovered,
            stopped,
        })
    }

    fn stop_all(&self) {
        for dir in [self.primary(), self.root.join("recovered")] {
            if dir.join("postmaster.pid").exists() {
                let args = [
                    "-D".as_ref(),
                    dir.as_os_str(),
                    "-m".as_ref(),
                    "immediate".as_ref(),
                    "stop".as_ref(),
                ];
                let _ = ctl::pg_ctl(&self.bindir, &self.owner, &args);
            }
        }
        if let Some(socket_dir) = self.recovery_socket.lock().expect("not poisoned").take() {
            let _ = std::fs::remove_dir_all(socket_dir);
        }
    }
}

async fn count_products(server: &Server) -> Result<i64> {
    let rows = server.query_rows("SELECT COUNT(*) FROM products").await?;
    Ok(rows
        .first()
        .and_then(|r| r.first()?.as_deref()?.parse().ok())
        .unwrap_or(-1))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::io("find a free port on", "127.0.0.1"))?;
    Ok(listener
        .local_addr()
        .map_err(Error::io("find a free port on", "127.0.0.1"))?
        .port())
}
