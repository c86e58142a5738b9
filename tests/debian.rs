//! Debian and Ubuntu clusters, made and run with postgresql-common's own tools
//! (`pg_createcluster`, `pg_ctlcluster`, `pg_lsclusters`, `pg_dropcluster`) on Debian's
//! PostgreSQL 15: the configuration lives in `/etc/postgresql/15/<name>/` (postgresql.conf with
//! `data_directory` elsewhere, `include_dir = 'conf.d'`, pg_hba.conf, pg_ident.conf) and the data
//! directory holds none.
//!
//! A backup keeps that configuration (and no SSL key), a recovery to a restore point starts a
//! copy with a configuration of its own in its data directory, `pitr adopt` archives the copy's
//! new timeline, `pg_createcluster` makes the adopted copy a cluster of its own that archives
//! into the same repository, and the original's files in /etc are never touched. Running as root,
//! pitr copies no configuration file the server's OS user could not read.
//!
//! These tests need root (postgresql-common writes /etc/postgresql). Each cluster has a unique
//! name and port (sockets only, no TCP) so that the tests run in parallel, and is dropped with
//! `pg_dropcluster --stop` whatever the test's outcome.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use common::*;
use pitr::backup::manifest::Manifest;

/// The PostgreSQL version of Debian's packages.
const VERSION: &str = "15";
/// Where postgresql-common's clusters put their sockets.
const SOCKET_DIR: &str = "/var/run/postgresql";

// ---------------------------------------------------------------------------------------------
// postgresql-common clusters
// ---------------------------------------------------------------------------------------------

/// Panics, saying what to install, unless postgresql-common's tools can run: these tests never
/// skip.
fn require_postgresql_common() {
    assert!(
        running_as_root(),
        "the Debian cluster tests create clusters in /etc/postgresql with pg_createcluster: run them as root"
    );
    for tool in ["pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "pg_lsclusters"] {
        assert!(
            Path::new("/usr/bin").join(tool).is_file(),
            "/usr/bin/{tool} is missing: install postgresql-common and postgresql-{VERSION} (apt-get install \
             postgresql-{VERSION})"
        );
    }
}

/// `pitr-<label>-<pid>-<n>`: unique among the tests running at once.
fn unique_name(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "pitr-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A cluster registered with postgresql-common as `15/<name>`: dropped (`pg_dropcluster --stop`:
/// server, configuration, data directory and log) when this goes out of scope, also when the test
/// fails half-way.
struct Registered {
    name: String,
}

impl Registered {
    /// `/etc/postgresql/15/<name>`.
    fn conf_dir(&self) -> PathBuf {
        Path::new("/etc/postgresql").join(VERSION).join(&self.name)
    }

    /// `pg_ctlcluster 15 <name> <action>`.
    fn ctl(&self, action: &str) -> CmdOutput {
        run(Command::new("pg_ctlcluster").args([VERSION, &self.name, action]))
    }

    /// `pg_ctlcluster 15 <name> <action>`, panicking with the cluster's log unless it succeeds.
    #[track_caller]
    fn ctl_ok(&self, action: &str) {
        let out = self.ctl(action);
        assert!(
            out.success(),
            "pg_ctlcluster {VERSION} {} {action} failed:\n{}\n--- log ---\n{}",
            self.name,
            out.describe(),
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        let log = format!("/var/log/postgresql/postgresql-{VERSION}-{}.log", self.name);
        tail(&fs::read_to_string(log).unwrap_or_default(), 40)
    }

    /// Its line in `pg_lsclusters` (version, name, port, status, owner, data directory, log).
    fn listed(&self) -> Option<String> {
        let out = run(Command::new("pg_lsclusters").arg("--no-header"));
        out.stdout_str().lines().find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            (words.len() > 1 && words[0] == VERSION && words[1] == self.name).then(|| line.to_string())
        })
    }
}

impl Drop for Registered {
    /// `pg_dropcluster` leaves what it did not create (conf.d/pitr.conf): the directory, named by
    /// this test alone, goes too.
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args(["--stop", VERSION, &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(self.conf_dir());
    }
}

/// A cluster made by `pg_createcluster`, its data directory in a temporary directory, archiving
/// into its own repository with pitr (settings in `conf.d/pitr.conf`), running.
struct DebianCluster {
    /// Declared first, so dropped first: the cluster goes before its directory.
    cluster: Registered,
    port: u16,
    data: PathBuf,
    repo: PathBuf,
    pitr: PathBuf,
    dir: TestDir,
}

impl DebianCluster {
    fn create(label: &str) -> DebianCluster {
        require_postgresql_common();
        let dir = TestDir::new("debian");
        let pitr = dir.install_pitr();
        let repo = dir.subdir("repo");
        let data = dir.join("data");
        let port = free_port();
        let cluster = Registered {
            name: unique_name(label),
        };
        // `include_dir = 'conf.d'` comes with Debian's createcluster.conf, which CI replaces (to
        // skip the main cluster): asked for explicitly, as pg_createcluster does it.
        run_ok(
            Command::new("pg_createcluster")
                .args([VERSION, &cluster.name, "--datadir"])
                .arg(&data)
                .args(["--port", &port.to_string(), "--pgoption", "include_dir=conf.d"])
                .stdin(Stdio::null()),
        );
        let settings = format!(
            "# pitr's Debian tests\nlisten_addresses = ''\nwal_level = replica\narchive_mode = on\n\
             archive_command = '{} --repo {} archive-push %p'\nfsync = off\nshared_buffers = '32MB'\n\
             lc_messages = 'C'\n",
            pitr.display(),
            repo.display()
        );
        write_as_server_user(&cluster.conf_dir().join("conf.d/pitr.conf"), &settings, 0o644);
        cluster.ctl_ok("start");
        DebianCluster {
            cluster,
            port,
            data,
            repo,
            pitr,
            dir,
        }
    }

    fn conf_dir(&self) -> PathBuf {
        self.cluster.conf_dir()
    }

    #[track_caller]
    fn psql(&self, sql: &str) -> String {
        psql_on(self.port, sql)
    }

    /// `pitr --repo <repo> <args…>` as the server user, connected to this cluster.
    fn pitr(&self, args: &[&str]) -> CmdOutput {
        run(pitr_command(&self.pitr)
            .env("PGHOST", SOCKET_DIR)
            .env("PGPORT", self.port.to_string())
            .env("PGDATABASE", "postgres")
            .arg("--repo")
            .arg(&self.repo)
            .args(args))
    }

    #[track_caller]
    fn pitr_ok(&self, args: &[&str]) -> CmdOutput {
        let out = self.pitr(args);
        assert!(
            out.success(),
            "{}\n--- cluster log ---\n{}",
            out.describe(),
            self.cluster.log_tail()
        );
        out
    }

    /// `pitr --repo <repo> <args…>` as root (the installed copy, which the server user can run
    /// as restore_command and archive_command), connected to this cluster as the role root (which
    /// a test creates when it connects).
    fn pitr_as_root(&self, args: &[&str]) -> CmdOutput {
        run(own_command(&self.pitr)
            .env("PGHOST", SOCKET_DIR)
            .env("PGUSER", "root")
            .env("PGPORT", self.port.to_string())
            .env("PGDATABASE", "postgres")
            .arg("--repo")
            .arg(&self.repo)
            .args(args))
    }

    /// The manifest of the only backup.
    fn manifest(&self) -> (PathBuf, Manifest) {
        let listed = self.pitr_ok(&["list", "--json"]);
        let backups = parse_json(&listed);
        let id = json_str(&backups[0], "id").to_string();
        let dir = self.repo.join(json_str(&backups[0], "tier")).join(&id);
        let manifest = Manifest::from_bytes(&read(&dir.join("backup.manifest")), "manifest").unwrap();
        (dir, manifest)
    }
}

/// `psql` as the server user on the cluster listening in [`SOCKET_DIR`] on `port`.
#[track_caller]
fn psql_on(port: u16, sql: &str) -> String {
    try_psql_at(Path::new(SOCKET_DIR), port, sql)
        .unwrap_or_else(|out| panic!("psql on port {port} failed:\n{}", out.describe()))
}

/// Writes `text` to `path` for the server user with `mode`.
fn write_as_server_user(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    give_to_server_user(path);
}

/// Every file below `dir`, by path, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.insert(path.clone(), read(&path));
        }
    }
    files
}

/// `postgres -C <setting> -D <dir>` (Debian's 15) as the server user: the value the
/// configuration found from `dir` gives the setting.
#[track_caller]
fn configured(dir: &Path, setting: &str) -> String {
    let postgres = Path::new("/usr/lib/postgresql").join(VERSION).join("bin/postgres");
    let out = run_ok(server_command(postgres).args(["-C", setting, "-D"]).arg(dir));
    out.stdout_str().trim().to_string()
}

/// The products table with `1..=n`.
fn create_products(port: u16, n: u32) {
    psql_on(
        port,
        &format!("CREATE TABLE products AS SELECT g AS id, 'row ' || g AS note FROM generate_series(1, {n}) g"),
    );
}

/// Switches WAL on the server at `port` and waits until the completed segment is in `repo`;
/// returns its name.
#[track_caller]
fn switch_and_archive(port: u16, repo: &Path) -> String {
    psql_on(port, "SELECT pg_logical_emit_message(false, 'pitr-test', 'switch')");
    let segment = psql_on(port, "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(
        wait_stored(repo, &segment),
        "{segment} was not archived into {}",
        repo.display()
    );
    segment
}

// ---------------------------------------------------------------------------------------------
// The bad day on a Debian cluster
// ---------------------------------------------------------------------------------------------

#[test]
fn a_debian_cluster_recovers_to_its_restore_point_and_the_adopted_copy_becomes_a_cluster_of_its_own() {
    let c = DebianCluster::create("main");
    assert!(
        !c.data.join("postgresql.conf").exists(),
        "pg_createcluster keeps postgresql.conf in /etc"
    );
    let etc_before = snapshot(&c.conf_dir());
    let pid_file = PathBuf::from(format!("{SOCKET_DIR}/{VERSION}-{}.pid", c.cluster.name));
    let production_pid = fs::read_to_string(&pid_file).expect("the cluster's external_pid_file");

    create_products(c.port, 1000);
    let backup = c.pitr_ok(&["backup", "--fast"]);
    assert!(
        backup.stdout_str().contains(&format!(
            "stored the server's configuration, kept outside its data directory: {}/postgresql.conf",
            c.conf_dir().display()
        )),
        "{}",
        backup.describe()
    );
    psql_on(
        c.port,
        "INSERT INTO products SELECT g, 'row ' || g FROM generate_series(1001, 1500) g",
    );
    c.pitr_ok(&["restore-point", "before_oops"]);
    c.psql("DROP TABLE products");
    switch_and_archive(c.port, &c.repo);

    // The DBA's recovery, run as root, into a new directory.
    let copy = NewDir::new();
    let copy_port = free_port();
    let out = c.pitr_as_root(&[
        "recover",
        "--pgdata",
        copy.data.to_str().unwrap(),
        "--target-name",
        "before_oops",
        "--port",
        &copy_port.to_string(),
        "--verify-sql",
        "SELECT COUNT(*) FROM products",
    ]);
    assert!(
        out.success(),
        "pitr recover failed:\n{}\n--- recovered server log ---\n{}",
        out.describe(),
        tail(&copy.server_log(), 40)
    );
    assert_eq!(out.stdout_line("verify: "), "1500", "{}", out.describe());
    assert_eq!(out.stdout_line("server: "), "promoted to timeline 2");
    assert!(
        out.stdout_str()
            .contains(&format!("the copy's own configuration is in {}", copy.data.display())),
        "{}",
        out.describe()
    );
    for step in [
        format!("pg_ctlcluster {VERSION} {} stop", c.cluster.name),
        format!("pg_createcluster {VERSION} NEWNAME -d {}", copy.data.display()),
    ] {
        assert!(
            out.stdout_str().contains(&step),
            "{step:?} missing:\n{}",
            out.describe()
        );
    }
    // The copy runs on a configuration of its own, never on the original's.
    assert_eq!(
        configured(&copy.data, "config_file"),
        format!("{}/postgresql.conf", copy.data.display())
    );
    assert_eq!(
        configured(&copy.data, "data_directory"),
        copy.data.display().to_string()
    );
    assert_eq!(
        configured(&copy.data, "hba_file"),
        format!("{}/pg_hba.conf", copy.data.display())
    );
    assert_eq!(configured(&copy.data, "external_pid_file"), "");
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap(),
        production_pid,
        "the copy wrote the original's PID file"
    );
    let connect = out.stdout_line("connect: ");
    let words: Vec<&str> = connect.split_whitespace().collect();
    let socket_dir = PathBuf::from(words[2]);
    let mut psql = client_at("psql", &socket_dir, copy_port);
    psql.args(["-U", "postgres"]);
    assert_eq!(
        try_psql_with(&mut psql, "SELECT COUNT(*) FROM products").unwrap(),
        "1500"
    );
    assert_eq!(
        c.psql("SELECT to_regclass('products') IS NULL"),
        "t",
        "the oops stays in the original"
    );

    // Adopt: the new timeline is archived, and the copy's own configuration archives into the
    // repository (its archive settings came from the original's conf.d).
    let adopted = c.pitr_as_root(&["adopt", "--pgdata", copy.data.to_str().unwrap()]);
    assert!(adopted.success(), "pitr adopt failed:\n{}", adopted.describe());
    assert!(
        adopted
            .stdout_str()
            .contains("the copy's own configuration is back and archives into this repository"),
        "{}",
        adopted.describe()
    );
    assert!(stored_path(&c.repo, "00000002.history").exists());

    // Switch over the Debian way: the old cluster stops, the copy becomes a cluster of its own.
    c.cluster.ctl_ok("stop");
    let new_cluster = Registered {
        name: unique_name("copy"),
    };
    let new_port = free_port();
    run_ok(
        Command::new("pg_createcluster")
            .args([VERSION, &new_cluster.name, "-d"])
            .arg(&copy.data)
            .args(["--port", &new_port.to_string()])
            .stdin(Stdio::null()),
    );
    new_cluster.ctl_ok("start");
    let listed = new_cluster.listed().expect("pg_lsclusters lists the copy");
    assert!(
        listed.contains("online") && listed.contains(copy.data.to_str().unwrap()),
        "{listed}"
    );
    assert_eq!(
        psql_on(new_port, "SHOW config_file"),
        format!("{}/postgresql.conf", new_cluster.conf_dir().display())
    );
    assert_eq!(psql_on(new_port, "SELECT COUNT(*) FROM products"), "1500");
    psql_on(
        new_port,
        "INSERT INTO products SELECT g, 'timeline 2' FROM generate_series(1501, 1600) g",
    );
    let segment = switch_and_archive(new_port, &c.repo);
    assert!(segment.starts_with("00000002"), "{segment}");

    // The original cluster's configuration is byte for byte what it was.
    assert_eq!(snapshot(&c.conf_dir()), etc_before);
}

// ---------------------------------------------------------------------------------------------
// What a backup keeps, and what a restore writes
// ---------------------------------------------------------------------------------------------

#[test]
fn a_backup_keeps_the_configuration_without_secrets_and_a_restore_writes_it_as_the_copys_own() {
    let c = DebianCluster::create("conf");
    let conf_dir = c.conf_dir();
    let original_conf = String::from_utf8(read(&conf_dir.join("postgresql.conf"))).unwrap();
    assert!(
        original_conf.contains("\nssl_key_file = "),
        "pg_createcluster names the SSL key (postgresql-common enables SSL with the snakeoil certificate \
         when postgres may read its key, as a member of ssl-cert):\n{original_conf}"
    );
    // An include outside /etc/postgresql, read by the server like the others.
    let extra = c.dir.join("extra.conf");
    write_as_server_user(&extra, "work_mem = '7MB'\n", 0o644);
    let mut conf = original_conf.clone();
    conf.push_str(&format!("include_if_exists = '{}'\n", extra.display()));
    rewrite_keeping_mode(&conf_dir.join("postgresql.conf"), conf.as_bytes());
    c.cluster.ctl_ok("reload");
    create_products(c.port, 100);
    c.pitr_ok(&["backup", "--fast"]);

    let (backup_dir, manifest) = c.manifest();
    let configuration = manifest
        .configuration
        .as_ref()
        .expect("the backup keeps the configuration");
    let stored: Vec<&str> = configuration.files.iter().map(|f| f.path.as_str()).collect();
    let etc = conf_dir.display().to_string();
    assert_eq!(
        stored,
        [
            format!("{etc}/postgresql.conf"),
            format!("{etc}/conf.d/pitr.conf"),
            extra.display().to_string(),
            format!("{etc}/pg_hba.conf"),
            format!("{etc}/pg_ident.conf"),
        ]
    );
    assert_eq!(configuration.data_directory, c.data.display().to_string());
    let verify = c.pitr(&["verify", "all"]);
    assert_eq!(verify.code(), Some(0), "{}", verify.describe());

    let restored = c.dir.join("restored");
    let out = c.pitr_ok(&["restore", "--pgdata", restored.to_str().unwrap()]);
    assert!(
        out.stdout_str().contains("the copy's own configuration is in"),
        "{}",
        out.describe()
    );
    assert_eq!(configured(&restored, "work_mem"), "7168", "7MB in kB");
    assert_eq!(configured(&restored, "data_directory"), restored.display().to_string());
    assert_eq!(configured(&restored, "archive_mode"), "on");
    assert_eq!(read(&restored.join("pg_hba.conf")), read(&conf_dir.join("pg_hba.conf")));
    assert_eq!(
        read(&restored.join("pg_ident.conf")),
        read(&conf_dir.join("pg_ident.conf"))
    );
    // The key stays a name in the configuration: it is neither stored nor written.
    let key = configured(&restored, "ssl_key_file");
    assert!(key.starts_with("/etc/ssl/private/"), "{key}");
    assert!(!stored.iter().any(|p| p.starts_with("/etc/ssl")), "{stored:?}");
    for name in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
        let mode = fs::metadata(restored.join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }

    // A damaged configuration file in the repository is found, and refused at a restore.
    let object = backup_dir.join(format!("config{etc}/pg_hba.conf"));
    flip_byte_from_end(&object, 1);
    let verify = c.pitr(&["verify", "all"]);
    assert_eq!(verify.code(), Some(2), "{}", verify.describe());
    assert!(verify.stdout_str().contains("pg_hba.conf"), "{}", verify.describe());
    let again = c.dir.join("again");
    let refused = c.pitr(&["restore", "--pgdata", again.to_str().unwrap()]);
    assert_eq!(refused.code(), Some(1), "{}", refused.describe());
    assert!(refused.stderr_str().contains("pg_hba.conf"), "{}", refused.describe());
}

#[test]
fn as_root_pitr_copies_no_configuration_file_the_servers_user_cannot_read() {
    let c = DebianCluster::create("root");
    c.psql("CREATE ROLE root SUPERUSER LOGIN");
    let secret = c.dir.join("root-only.conf");
    fs::write(&secret, "# not for the postgres user\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let conf = c.conf_dir().join("postgresql.conf");
    let mut text = read(&conf);
    text.extend_from_slice(format!("include_if_exists = '{}'\n", secret.display()).as_bytes());
    rewrite_keeping_mode(&conf, &text);

    let out = c.pitr_as_root(&["backup", "--fast"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr_str().contains("root-only.conf") && out.stderr_str().contains("cannot read it"),
        "{}",
        out.describe()
    );
    let list = c.pitr_ok(&["list", "--json"]);
    assert_eq!(parse_json(&list), serde_json::json!([]), "no backup was made");
    let stored = walk_names(&c.repo);
    assert!(!stored.iter().any(|n| n.contains("root-only")), "{stored:?}");
}

/// Every path below `dir`.
fn walk_names(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        names.push(path.display().to_string());
        if path.is_dir() && !path.is_symlink() {
            names.extend(walk_names(&path));
        }
    }
    names
}

#[test]
fn a_backup_without_the_configuration_is_not_started() {
    let c = DebianCluster::create("old");
    create_products(c.port, 10);
    c.pitr_ok(&["backup", "--fast"]);
    // As a backup of pitr before manifest version 4: no configuration.
    let (backup_dir, mut manifest) = c.manifest();
    manifest.configuration = None;
    manifest.format_version = 3;
    for name in ["backup.manifest", "backup.manifest.copy"] {
        rewrite_keeping_mode(&backup_dir.join(name), &manifest.to_bytes());
    }

    let copy = NewDir::new();
    let out = c.pitr(&["recover", "--pgdata", copy.data.to_str().unwrap(), "--target", "latest"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr_str().contains("has no configuration to start the copy with")
            && out.stderr_str().contains("holds no postgresql.conf"),
        "{}",
        out.describe()
    );
    assert!(!copy.data.join("postmaster.pid").exists(), "a server was started");
    assert!(
        copy.data.join("recovery.signal").exists(),
        "the restore is left for the DBA"
    );
}
