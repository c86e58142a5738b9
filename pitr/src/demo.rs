//! `pitr demo`: the whole story on a throwaway cluster in a temporary directory — archive,
//! backup, a restore point, the oops (DROP TABLE), and recoveries to the restore point and to a
//! timestamp, with the row counts as proof.
//!
//! It uses the same library calls as the real commands; nothing here is simulated. It is
//! self-contained: its servers run without the operator's `PITR_*` environment and with an
//! explicit empty pitr config file, so /etc/pitr/pitr.toml and PITR_CONFIG do not reach their
//! archive and restore commands. Whatever ends it (success, an error, SIGINT or SIGTERM), its
//! servers are stopped and its directory removed (unless --keep).

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::backup::{self, BackupOptions, Tier};
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::interrupt;
use crate::pg::ctl::{self, Owner};
use crate::pg::Server;
use crate::progress::Progress;
use crate::recover::{self, Action, RecoverOptions, Request, Target, TimelineChoice};
use crate::repo::Repo;
use crate::restore_point::{self, CreateOptions};

/// Rows in `products` when the backup is taken.
const ROWS_AT_BACKUP: i64 = 1000;
/// Rows at the recorded moment (the time target).
const ROWS_AT_TIME: i64 = 1500;
/// Rows at the restore point, just before the oops.
const ROWS_AT_RESTORE_POINT: i64 = 1750;

/// What the demo proved.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    /// Where it ran.
    pub directory: PathBuf,
    /// The backup taken.
    pub backup_id: String,
    /// Rows recovered at the restore point.
    pub rows_at_restore_point: i64,
    /// Rows recovered at the time target.
    pub rows_at_time: i64,
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
    let result = match DemoCluster::create(&root, &owner, &bindir, pitr_exe) {
        Ok(cluster) => {
            narrate(&format!(
                "1. a throwaway PostgreSQL {version} cluster in {}, archiving with pitr archive-push",
                root.display()
            ));
            cluster.story(narrate, progress).await
            // The cluster is dropped here: its servers stop before the directory goes.
        }
        Err(e) => Err(e),
    };
    let left = if keep {
        format!("{} is kept (--keep)", dir.keep().display())
    } else {
        format!("{} is removed", root.display())
    };
    if keep {
        narrate(&left);
    }
    result.map_err(|e| match e {
        Error::Interrupted(what) => Error::Interrupted(format!("{what}; the demo's servers are stopped and {left}")),
        other => other,
    })
}

/// The demo's directory and servers; dropping it stops every server it started.
struct DemoCluster {
    root: PathBuf,
    owner: Owner,
    bindir: PathBuf,
    pitr: PathBuf,
    port: u16,
    /// Recovered copies and their private socket directories, stopped and removed with the demo.
    recovered: Mutex<Vec<(PathBuf, Option<PathBuf>)>>,
}

impl DemoCluster {
    fn create(root: &Path, owner: &Owner, bindir: &Path, pitr_exe: &Path) -> Result<DemoCluster> {
        let pitr = root.join("pitr");
        std::fs::copy(pitr_exe, &pitr).map_err(Error::io("copy pitr to", &pitr))?;
        std::fs::set_permissions(&pitr, std::fs::Permissions::from_mode(0o755)).map_err(Error::io("chmod", &pitr))?;
        std::fs::create_dir(root.join("repo")).map_err(Error::io("create", root.join("repo")))?;
        let config = root.join("pitr.toml");
        std::fs::write(&config, "# pitr demo: no settings beyond the command line\n")
            .map_err(Error::io("write", &config))?;
        for path in [root.to_path_buf(), root.join("repo"), config] {
            std::os::unix::fs::chown(&path, Some(owner.uid), Some(owner.gid)).map_err(Error::io("chown", &path))?;
        }
        let cluster = DemoCluster {
            root: root.to_path_buf(),
            owner: owner.clone(),
            bindir: bindir.to_path_buf(),
            pitr,
            port: free_port()?,
            recovered: Mutex::new(Vec::new()),
        };
        cluster.run(
            cluster
                .owner
                .command(bindir.join("initdb"))
                .args(["-A", "trust", "-N", "-D"])
                .arg(cluster.primary()),
        )?;
        interrupt::check("creating the demo's cluster")?;
        // The logging collector writes the server log where pg_current_logfile() finds it:
        // a failing archive_command is reported with the log's own words.
        let conf = format!(
            "port = {}\nlisten_addresses = ''\nunix_socket_directories = '{}'\nwal_level = replica\n\
             archive_mode = on\narchive_command = '{} archive-push %p'\n\
             logging_collector = on\nlog_directory = '{}'\nlog_filename = 'primary.log'\n",
            cluster.port,
            root.display(),
            cluster.pitr_command(),
            root.display()
        );
        let conf_path = cluster.primary().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).map_err(Error::io("read", &conf_path))?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).map_err(Error::io("write", &conf_path))?;
        let log = root.join("startup.log");
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

    /// This pitr with the demo's repository and its empty config file.
    fn pitr_command(&self) -> String {
        format!(
            "{} --config {} --repo {}",
            self.pitr.display(),
            self.root.join("pitr.toml").display(),
            self.repo().display()
        )
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
        let narrate = |line: &str| {
            narrate(line);
            interrupt::check("running the demo")
        };
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.root)
            .port(self.port)
            .user(&self.owner.name)
            .dbname("postgres");
        let server = Server::connect(&crate::pg::ConnectionSettings::without_tls(config)).await?;
        server
            .query_rows("CREATE TABLE products (id bigint PRIMARY KEY, name text, price numeric)")
            .await?;
        insert_products(&server, 1, ROWS_AT_BACKUP).await?;
        narrate(&format!(
            "2. created table products with {} rows",
            count_products(&server).await?
        ))?;

        let repo = Repo::open_local(self.repo())?;
        let options = BackupOptions {
            tier: Tier::Daily,
            name: "demo".into(),
            pgdata: Some(self.primary()),
            fast: true,
            jobs: 2,
            codec: Codec::default(),
            deduplicate: false,
            read_all: false,
        };
        let backup = backup::take(&repo, &server, &options, progress).await?;
        narrate(&format!(
            "3. pitr backup --tier daily: {} ({} files)",
            backup.backup.id, backup.file_count
        ))?;

        insert_products(&server, ROWS_AT_BACKUP + 1, ROWS_AT_TIME).await?;
        let moment = server_time(&server).await?;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        insert_products(&server, ROWS_AT_TIME + 1, ROWS_AT_RESTORE_POINT).await?;
        narrate(&format!(
            "4. {ROWS_AT_TIME} rows at {moment}, then {} rows",
            count_products(&server).await?
        ))?;
        let point_options = CreateOptions {
            switch_wal: true,
            allow_duplicate: false,
            timeout: Duration::from_secs(60),
        };
        let point = restore_point::create(&repo, &server, "before_oops", point_options, progress).await?;
        narrate(&format!("5. pitr restore-point before_oops at {}", point.lsn))?;

        server.query_rows("DROP TABLE products").await?;
        server.switch_wal().await?;
        narrate("6. the oops: DROP TABLE products")?;

        let by_name = self
            .recover_to(&repo, Target::Name("before_oops".into()), "recovered-name", progress)
            .await?;
        narrate(&format!(
            "7. pitr recover --target-name before_oops: {}; products has {} rows",
            by_name.1.as_deref().unwrap_or("recovery ended"),
            by_name.0
        ))?;
        let time_target = Target::parse_time(&moment)?;
        let by_time = self.recover_to(&repo, time_target, "recovered-time", progress).await?;
        narrate(&format!(
            "8. pitr recover --target-time '{moment}': {}; products has {} rows",
            by_time.1.as_deref().unwrap_or("recovery ended"),
            by_time.0
        ))?;
        if (by_name.0, by_time.0) != (ROWS_AT_RESTORE_POINT, ROWS_AT_TIME) {
            return Err(Error::Refused(format!(
                "the demo recovered {} and {} rows, expected {ROWS_AT_RESTORE_POINT} and {ROWS_AT_TIME}",
                by_name.0, by_time.0
            )));
        }
        Ok(DemoSummary {
            directory: self.root.clone(),
            backup_id: backup.backup.id,
            rows_at_restore_point: by_name.0,
            rows_at_time: by_time.0,
            stopped: by_name.1,
        })
    }

    /// Recovers into `dir_name` (promoting, then stopping it); returns the rows of products and
    /// PostgreSQL's "recovery stopping" line.
    async fn recover_to(
        &self,
        repo: &Repo,
        target: Target,
        dir_name: &str,
        progress: &dyn Progress,
    ) -> Result<(i64, Option<String>)> {
        let request = Request {
            target,
            exclusive: false,
            before: false,
            timeline: TimelineChoice::Number(1),
            backup: None,
        };
        let plan = recover::plan(&recover::repo_state(repo)?, &request)?;
        let options = RecoverOptions {
            pgdata: self.root.join(dir_name),
            force: false,
            action: Action::Promote,
            port: Some(free_port()?),
            no_start: false,
            keep_archiving: false,
            verify_sql: Some("SELECT COUNT(*) FROM products".into()),
            verify_database: "postgres".into(),
            jobs: 2,
            pitr_command: self.pitr_command(),
        };
        let report = recover::execute(repo, &plan, &options, progress).await?;
        self.recovered
            .lock()
            .expect("not poisoned")
            .push((options.pgdata.clone(), report.socket_dir.clone()));
        let rows = report
            .verify_rows
            .as_ref()
            .and_then(|rows| rows.first()?.first()?.as_deref()?.parse().ok())
            .ok_or_else(|| Error::Refused("the recovered copy did not answer SELECT COUNT(*)".into()))?;
        self.stop_recovered();
        Ok((rows, report.outcome.and_then(|o| o.stopped)))
    }

    /// Stops the recovered copies and removes their socket directories.
    fn stop_recovered(&self) {
        let recovered: Vec<_> = self.recovered.lock().expect("not poisoned").drain(..).collect();
        for (dir, socket_dir) in recovered {
            self.stop(&dir);
            if let Some(socket_dir) = socket_dir {
                let _ = std::fs::remove_dir_all(socket_dir);
            }
        }
    }

    fn stop(&self, dir: &Path) {
        if dir.join("postmaster.pid").exists() {
            let _ = ctl::stop(&self.bindir, &self.owner, dir, "immediate");
        }
    }
}

impl Drop for DemoCluster {
    /// Stops the recovered copies and the primary, whatever ended the demo.
    fn drop(&mut self) {
        self.stop_recovered();
        self.stop(&self.primary());
    }
}

async fn insert_products(server: &Server, from: i64, to: i64) -> Result<()> {
    let sql = format!(
        "INSERT INTO products SELECT g, 'product ' || g, (g % 100) + 0.99 FROM generate_series({from}, {to}) g"
    );
    server.query_rows(&sql).await.map(drop)
}

/// The server's clock, in a form `--target-time` takes.
async fn server_time(server: &Server) -> Result<String> {
    let rows = server
        .query_rows("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')")
        .await?;
    rows.first()
        .and_then(|r| r.first()?.clone())
        .ok_or_else(|| Error::Refused("the server did not tell its time".into()))
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
