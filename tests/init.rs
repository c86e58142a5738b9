//! `pitr init` against real servers: a fresh cluster (archive_mode off) set up with one restart,
//! a Debian-layout cluster made with pg_createcluster, and the refusals that change nothing.
//!
//! As root (CI), init runs as root, as an operator with sudo would: the repository must then
//! be the postgres OS user's (0700) and the config file root's, group postgres, 0640.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Exit code of `pitr init` when changes are pending (a dry run, or a restart).
const PENDING: i32 = 3;

/// `pitr init <args>` as the user running the tests (root in CI), connected to `c` as its
/// bootstrap superuser (postgres when root), with `--repo` and `--config` when given.
fn init(c: &Cluster, repo: Option<&Path>, config: &Path, args: &[&str]) -> CmdOutput {
    let mut cmd = own_command(c.pitr_bin());
    c.libpq_env(&mut cmd);
    if running_as_root() {
        cmd.env("PGUSER", SERVER_USER);
    }
    if let Some(repo) = repo {
        cmd.arg("--repo").arg(repo);
    }
    run(cmd.arg("--config").arg(config).arg("init").args(args))
}

/// The first line of postmaster.pid: the postmaster's pid.
fn postmaster_pid(data: &Path) -> String {
    let text = fs::read_to_string(data.join("postmaster.pid")).expect("postmaster.pid");
    text.lines().next().unwrap_or_default().to_string()
}

/// (inode, mtime in ns) of `path`.
fn identity(path: &Path) -> (u64, i128) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (
        meta.ino(),
        meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
    )
}

/// The gid of the postgres OS user.
fn server_gid() -> u32 {
    let out = Command::new("id").args(["-g", SERVER_USER]).output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("gid")
}

/// Asserts the config file's keys and, as root, its owner and mode (0640 root:postgres;
/// otherwise 0600).
#[track_caller]
fn assert_config(config: &Path, repo: &Path, data: &Path) {
    let text = fs::read_to_string(config).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let resolve = |p: &str| fs::canonicalize(p).unwrap();
    assert_eq!(
        resolve(table["repo"].as_str().unwrap()),
        fs::canonicalize(repo).unwrap(),
        "{text}"
    );
    assert_eq!(
        resolve(table["pgdata"].as_str().unwrap()),
        fs::canonicalize(data).unwrap(),
        "{text}"
    );
    assert_eq!(table["slot"].as_str(), Some("pitr"), "{text}");
    let meta = fs::metadata(config).unwrap();
    if running_as_root() {
        assert_eq!((meta.uid(), meta.gid()), (0, server_gid()), "config file owner");
        assert_eq!(meta.mode() & 0o7777, 0o640, "config file mode");
    } else {
        assert_eq!(meta.mode() & 0o7777, 0o600, "config file mode");
    }
}

/// Asserts the repository holds repo.json and, as root, is postgres's with mode 0700.
#[track_caller]
fn assert_repository(repo: &Path, data: &Path) {
    assert!(repo.join("repo.json").is_file(), "{} has no repo.json", repo.display());
    let meta = fs::metadata(repo).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o700, "repository mode");
    if running_as_root() {
        let postgres = fs::metadata(data).unwrap().uid();
        assert_eq!(
            meta.uid(),
            postgres,
            "the repository belongs to the data directory's owner"
        );
    }
}

/// Whether the server has the replication slot `name`.
fn has_slot(psql: impl Fn(&str) -> String, name: &str) -> bool {
    psql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{name}'"
    )) == "1"
}

/// Forces a segment switch after some WAL and returns the closed segment's name.
fn switch_wal(psql: impl Fn(&str) -> String) -> String {
    psql("CREATE TABLE IF NOT EXISTS init_probe (n int); INSERT INTO init_probe VALUES (1)");
    psql("SELECT pg_walfile_name(pg_switch_wal())")
}

#[test]
fn a_fresh_cluster_archives_after_init_and_one_restart_and_a_second_init_changes_nothing() {
    let mut c = Cluster::start(ClusterOptions::default().archive(false));
    let dir = TestDir::new("init");
    let repo = dir.join("repo");
    let config = dir.join("etc/pitr.toml");
    let data = c.data_dir().to_path_buf();
    let auto_conf = data.join("postgresql.auto.conf");
    let auto_before = read(&auto_conf);
    let pgdata = data.to_str().unwrap();
    // A config file with settings of its own: init adds repo, pgdata and slot, and keeps them.
    let own = "name = \"db1\"\n\n[verify]\nmax_age = \"48h\"\n";
    dir.write("etc/pitr.toml", own);

    let dry = init(&c, Some(&repo), &config, &["--pgdata", pgdata]);
    dry.assert_code(PENDING);
    let shown = dry.stdout_str();
    for line in [
        "archive_mode: off → on (needs a restart)",
        "archive_command: (empty) → ",
        "slot pitr: absent → ",
        "repository ",
        "config file ",
        "dry run: nothing was changed",
    ] {
        assert!(shown.contains(line), "the plan lacks {line:?}:\n{shown}");
    }
    assert_eq!(read(&auto_conf), auto_before, "a dry run changed postgresql.auto.conf");
    assert!(!repo.exists(), "a dry run created the repository");
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        own,
        "a dry run changed the config file"
    );
    assert_eq!(c.psql("SHOW archive_mode"), "off");
    assert!(!has_slot(|sql| c.psql(sql), "pitr"), "a dry run created the slot");

    let pid = postmaster_pid(&data);
    let applied = init(&c, Some(&repo), &config, &["--pgdata", pgdata, "--apply"]);
    applied.assert_code(PENDING);
    assert!(
        applied
            .stdout_str()
            .contains("restart PostgreSQL to apply: archive_mode; then run `pitr check`"),
        "{}",
        applied.describe()
    );
    assert_eq!(postmaster_pid(&data), pid, "pitr init restarted the server");
    let auto = fs::read_to_string(&auto_conf).unwrap();
    assert!(auto.contains("archive_mode = 'on'"), "{auto}");
    let archive_command = auto
        .lines()
        .find(|l| l.starts_with("archive_command"))
        .unwrap_or_else(|| panic!("no archive_command in {auto}"));
    for part in [c.pitr_bin().to_str().unwrap(), "--repo", "--config", "archive-push %p"] {
        assert!(archive_command.contains(part), "{archive_command} lacks {part}");
    }
    assert!(has_slot(|sql| c.psql(sql), "pitr"), "init --apply created no slot");
    assert_config(&config, &repo, &data);
    let kept: toml::Table = toml::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(
        kept["name"].as_str(),
        Some("db1"),
        "the config file lost its own settings"
    );
    assert_eq!(
        kept["verify"]["max_age"].as_str(),
        Some("48h"),
        "the config file lost its own settings"
    );
    assert!(
        !kept.contains_key("dedup"),
        "an existing setup keeps its backups' format: init adds no dedup key"
    );
    assert_repository(&repo, &data);

    c.restart();
    let written = identity(&config);
    // The config file names the repository and the data directory now.
    let again = init(&c, None, &config, &["--apply", "--json"]);
    again.assert_success();
    let report: Value = parse_json(&again);
    assert_eq!(report["changes"], Value::Array(vec![]), "{report:#}");
    assert_eq!(report["restart_pending"], Value::Array(vec![]), "{report:#}");
    assert_eq!(report["check"]["state"], "passed", "{report:#}");
    assert_eq!(identity(&config), written, "the second run rewrote the config file");
    let segment = switch_wal(|sql| c.psql(sql));
    assert!(
        wait_stored(&repo, &segment),
        "{segment} never reached the repository through init's archive_command\n{}",
        c.log_tail()
    );

    // watch (and the daemon) take the data directory and the slot from the config file.
    let mut watch = pitr_command(c.pitr_bin());
    c.libpq_env(&mut watch).arg("--config").arg(&config).arg("watch");
    let watcher = spawn(&mut watch);
    let streaming = poll(Duration::from_secs(60), || {
        (c.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'pitr'") == "t").then_some(())
    });
    let out = terminate_pitr(watcher, "pitr watch".into(), Duration::from_secs(30));
    assert!(
        streaming.is_some(),
        "watch without --pgdata never streamed:\n{}",
        out.describe()
    );
}

/// A Debian cluster made with pg_createcluster (configuration in /etc/postgresql), archiving
/// off; dropped with `pg_dropcluster --stop` whatever the outcome.
struct DebianCluster {
    name: String,
    port: u16,
    data: PathBuf,
    pitr: PathBuf,
}

impl DebianCluster {
    fn create(dir: &TestDir) -> DebianCluster {
        assert!(
            running_as_root(),
            "the Debian test creates a cluster in /etc/postgresql with pg_createcluster: run it as root"
        );
        assert!(
            Path::new("/usr/bin/pg_createcluster").is_file(),
            "pg_createcluster is missing: install postgresql-common and postgresql-15 (apt-get install postgresql-15)"
        );
        let cluster = DebianCluster {
            name: format!("pitr-init-{}", std::process::id()),
            port: free_port(),
            data: dir.join("data"),
            pitr: dir.install_pitr(),
        };
        // `include_dir = 'conf.d'` as pg_createcluster's default createcluster.conf has it (CI
        // replaces that file).
        run_ok(
            Command::new("pg_createcluster")
                .args(["15", &cluster.name, "--datadir"])
                .arg(&cluster.data)
                .args(["--port", &cluster.port.to_string(), "--pgoption", "include_dir=conf.d"])
                .stdin(Stdio::null()),
        );
        let settings = cluster.conf_dir().join("conf.d/test.conf");
        fs::write(
            &settings,
            "listen_addresses = ''\nfsync = off\nshared_buffers = '32MB'\nlc_messages = 'C'\n",
        )
        .unwrap();
        fs::set_permissions(&settings, fs::Permissions::from_mode(0o644)).unwrap();
        give_to_server_user(&settings);
        cluster.ctl("start");
        cluster
    }

    /// `/etc/postgresql/15/<name>`.
    fn conf_dir(&self) -> PathBuf {
        Path::new("/etc/postgresql/15").join(&self.name)
    }

    fn ctl(&self, action: &str) {
        run_ok(Command::new("pg_ctlcluster").args(["15", &self.name, action]));
    }

    fn psql(&self, sql: &str) -> String {
        try_psql_at(Path::new("/var/run/postgresql"), self.port, sql)
            .unwrap_or_else(|out| panic!("psql failed:\n{}", out.describe()))
    }

    /// `pitr --repo <repo> --config <config> init <args>` as root, connected as the role root.
    fn init(&self, repo: &Path, config: &Path, args: &[&str]) -> CmdOutput {
        run(own_command(&self.pitr)
            .env("PGHOST", "/var/run/postgresql")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "root")
            .env("PGDATABASE", "postgres")
            .arg("--repo")
            .arg(repo)
            .arg("--config")
            .arg(config)
            .arg("init")
            .args(args))
    }
}

impl Drop for DebianCluster {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args(["--stop", "15", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // pg_dropcluster leaves what it did not create (conf.d/test.conf).
        let _ = fs::remove_dir_all(self.conf_dir());
    }
}

#[test]
fn a_debian_cluster_is_set_up_with_its_configuration_in_etc() {
    let dir = TestDir::new("init-debian");
    let cluster = DebianCluster::create(&dir);
    cluster.psql("CREATE ROLE root SUPERUSER LOGIN");
    let repo = dir.join("repo");
    let config = dir.join("etc/pitr.toml");
    let pgdata = cluster.data.to_str().unwrap();
    // As the package installs it: a template of comments only, which init replaces.
    let template = "# pitr's settings: `pitr init` writes them\n# repo = \"/var/backups/pitr\"\n";
    dir.write("etc/pitr.toml", template);

    let dry = cluster.init(&repo, &config, &["--pgdata", pgdata]);
    dry.assert_code(PENDING);
    let conf_file = format!("/etc/postgresql/15/{}/postgresql.conf", cluster.name);
    assert!(dry.stdout_str().contains(&conf_file), "{}", dry.describe());
    assert!(
        dry.stdout_str().contains("pitr.toml: comments only → "),
        "{}",
        dry.describe()
    );
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        template,
        "a dry run changed the config file"
    );

    let pid = postmaster_pid(&cluster.data);
    cluster
        .init(&repo, &config, &["--pgdata", pgdata, "--apply"])
        .assert_code(PENDING);
    assert_eq!(postmaster_pid(&cluster.data), pid, "pitr init restarted the server");
    let auto = fs::read_to_string(cluster.data.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("archive_mode = 'on'"), "{auto}");
    assert_config(&config, &repo, &cluster.data);
    let written: toml::Table = toml::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(
        written["dedup"].as_bool(),
        Some(true),
        "a new setup takes deduplicated backups"
    );
    assert_repository(&repo, &cluster.data);

    cluster.ctl("restart");
    let written = identity(&config);
    let again = cluster.init(&repo, &config, &["--apply"]);
    again.assert_success();
    assert!(again.stdout_str().contains("nothing to change"), "{}", again.describe());
    assert!(
        again.stdout_str().contains("archiving into this repository works"),
        "{}",
        again.describe()
    );
    assert_eq!(identity(&config), written, "the second run rewrote the config file");
    let segment = switch_wal(|sql| cluster.psql(sql));
    assert!(wait_stored(&repo, &segment), "{segment} never reached the repository");
}

/// What a refused init must leave as it was: postgresql.auto.conf, the repository (absent or
/// as it was), the config file (absent or as it was), no slot.
struct Untouched {
    auto_conf: (PathBuf, Vec<u8>),
    repo: (PathBuf, bool),
    config: (PathBuf, Option<Vec<u8>>),
}

impl Untouched {
    fn now(c: &Cluster, repo: &Path, config: &Path) -> Untouched {
        let auto_conf = c.data_dir().join("postgresql.auto.conf");
        Untouched {
            auto_conf: (auto_conf.clone(), read(&auto_conf)),
            repo: (repo.to_path_buf(), repo.join("repo.json").exists()),
            config: (config.to_path_buf(), fs::read(config).ok()),
        }
    }

    #[track_caller]
    fn assert_same(&self, c: &Cluster, out: &CmdOutput) {
        assert_eq!(
            read(&self.auto_conf.0),
            self.auto_conf.1,
            "postgresql.auto.conf changed: {}",
            out.describe()
        );
        assert_eq!(
            self.repo.0.join("repo.json").exists(),
            self.repo.1,
            "the repository changed"
        );
        assert_eq!(fs::read(&self.config.0).ok(), self.config.1, "the config file changed");
        assert!(!has_slot(|sql| c.psql(sql), "pitr"), "a slot was created");
    }
}

#[test]
fn init_refuses_another_clusters_repository_another_setups_config_and_a_role_that_is_not_superuser() {
    let other = Cluster::start(ClusterOptions::default());
    other.pitr_ok(&["create-repo"]);
    let c = Cluster::start(ClusterOptions::default().archive(false));
    let dir = TestDir::new("init-refusals");
    let config = dir.join("pitr.toml");
    let repo = dir.join("repo");
    let pgdata = c.data_dir().to_str().unwrap();

    let before = Untouched::now(&c, other.repo(), &config);
    let out = init(&c, Some(other.repo()), &config, &["--pgdata", pgdata, "--apply"]);
    out.assert_code(1);
    assert!(
        out.stderr_str().contains("was not created for this server"),
        "{}",
        out.describe()
    );
    before.assert_same(&c, &out);

    let elsewhere = dir.subdir("elsewhere");
    let foreign = format!("# another setup\nrepo = \"{}\"\nname = \"db2\"\n", elsewhere.display());
    fs::write(&config, &foreign).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    let before = Untouched::now(&c, &repo, &config);
    let out = init(&c, Some(&repo), &config, &["--pgdata", pgdata, "--apply"]);
    out.assert_code(1);
    assert!(out.stderr_str().contains("sets repo = "), "{}", out.describe());
    assert!(!repo.exists(), "the repository was created");
    before.assert_same(&c, &out);
    fs::remove_file(&config).unwrap();

    let other_data = other.data_dir().to_str().unwrap();
    let before = Untouched::now(&c, &repo, &config);
    let out = init(&c, Some(&repo), &config, &["--pgdata", other_data, "--apply"]);
    out.assert_code(1);
    assert!(
        out.stderr_str().contains("is not the data directory of the server"),
        "{}",
        out.describe()
    );
    before.assert_same(&c, &out);

    // As the server user (not root), with the config file in a directory it may not write: refused
    // before the repository is created.
    let locked = dir.subdir("locked");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    let locked_config = locked.join("pitr.toml");
    let mut cmd = pitr_command(c.pitr_bin());
    c.libpq_env(&mut cmd);
    let out = run(cmd
        .arg("--repo")
        .arg(&repo)
        .arg("--config")
        .arg(&locked_config)
        .args(["init", "--pgdata", pgdata, "--apply"]));
    out.assert_code(1);
    assert!(
        out.stderr_str().contains("is not writable by this user"),
        "{}",
        out.describe()
    );
    assert!(
        !repo.exists() && !locked_config.exists(),
        "init changed something: {}",
        out.describe()
    );
    before.assert_same(&c, &out);

    c.psql("CREATE ROLE app LOGIN");
    let mut cmd = own_command(c.pitr_bin());
    c.libpq_env(&mut cmd).env("PGUSER", "app");
    let out = run(cmd
        .arg("--repo")
        .arg(&repo)
        .arg("--config")
        .arg(&config)
        .args(["init", "--pgdata", pgdata, "--apply"]));
    out.assert_code(1);
    assert!(
        out.stderr_str().contains("role app is not a superuser"),
        "{}",
        out.describe()
    );
    assert!(!repo.exists(), "the repository was created");
    before.assert_same(&c, &out);
}
