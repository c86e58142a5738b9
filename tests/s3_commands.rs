//! Every command with the repository on S3: a real PostgreSQL cluster whose archive_command and
//! restore_command run `pitr --repo s3://...` against a real S3-compatible server (s3s-fs, see
//! `common/s3.rs`), the endpoint and credentials in the environment only. Every scenario asserts
//! what is in the bucket (s3s-fs keeps each object as a file under [`S3Server::bucket_dir`]) and
//! that the secret key shows nowhere: not in outputs, reports, written configuration, nor in any
//! process's arguments.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use common::s3::{objects_under, S3Server};
use common::*;

/// A primary archiving into `s3://pitr-test/<prefix>` on `server`.
fn primary_on(server: &S3Server, prefix: &str) -> Cluster {
    Cluster::start(ClusterOptions::default().s3(server, prefix))
}

/// `pitr recover` into `data` with `args`, connected to nothing: the repository is all it reads.
fn recover(c: &Cluster, data: &std::path::Path, args: &[&str]) -> CmdOutput {
    run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .arg("recover")
        .arg("--pgdata")
        .arg(data)
        .args(args))
}

/// Where `pitr recover` left the server: `connect: psql -h S -p P -U U postgres`.
fn psql_recovered(out: &CmdOutput, sql: &str) -> String {
    let line = out.stdout_line("connect: ");
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |flag: &str| words[words.iter().position(|w| *w == flag).unwrap() + 1];
    let mut psql = client_at("psql", &PathBuf::from(after("-h")), after("-p").parse().unwrap());
    psql.arg("-U").arg(after("-U"));
    try_psql_with(&mut psql, sql).unwrap_or_else(|o| panic!("{}", o.describe()))
}

/// The runbook's bad day with the repository on S3: archive, back up, mark a restore point,
/// delete everything, then recover to the restore point from S3 alone; list, info, verify and
/// expire read the same bucket.
#[test]
fn the_runbook_scenario_on_s3() {
    let server = S3Server::start();
    let c = primary_on(&server, "db1");
    c.pitr_connected(c.repo(), &["create-repo"]).assert_success();
    c.psql("CREATE TABLE products (id int PRIMARY KEY); INSERT INTO products SELECT generate_series(1, 1000)");
    let backup = backup_ok(&c, &[]);
    let id = backup.backup_id();
    c.psql("INSERT INTO products SELECT generate_series(1001, 1500)");
    c.pitr_connected(c.repo(), &["restore-point", "before_oops"])
        .assert_success();
    c.psql("DELETE FROM products");
    c.switch_and_archive();

    // Everything is in the bucket, nothing on local disk.
    let stored = server.bucket_dir().join("db1");
    assert!(stored.join("repo.json").is_file(), "repo.json in the bucket");
    assert!(!c.dir().join("repo").exists(), "no local repository was made");

    let list = c.pitr(&["list", "--json"]);
    list.assert_success();
    assert!(list.stdout_str().contains(&id), "{}", list.describe());
    let info = parse_json(c.pitr(&["info", "--json"]).assert_success());
    assert!(info.to_string().contains(&server.url("db1")), "{info}");

    let verify = c.pitr_connected(c.repo(), &["verify", "--json"]);
    assert_eq!(verify.code(), Some(0), "{}", verify.describe());

    let new = TestDir::new("s3-recover");
    let data = new.join("data");
    let out = recover(
        &c,
        &data,
        &[
            "--target-name",
            "before_oops",
            "--verify-sql",
            "SELECT count(*) FROM products",
        ],
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout_line("verify: "), "1500", "{}", out.describe());
    assert_eq!(psql_recovered(&out, "SELECT count(*) FROM products"), "1500");
    let conf = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains(&server.url("db1")),
        "restore_command names the bucket:\n{conf}"
    );
    assert!(
        !conf.contains(&server.secret_key),
        "no secret in the configuration:\n{conf}"
    );
    run(server_command(c.bindir().join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["-m", "immediate", "stop"]));

    // No secret anywhere pitr wrote or printed.
    for text in [
        list.stdout_str(),
        info.to_string(),
        verify.stdout_str(),
        out.stdout_str(),
        out.stderr_str(),
    ] {
        assert!(!text.contains(&server.secret_key), "a secret leaked:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: the bucket, secrets, long-running commands
// ---------------------------------------------------------------------------------------------

/// The directory s3s-fs keeps the repository `s3://pitr-test/<prefix>` in: the object `key` is the
/// file `<it>/<key>`.
fn stored_repo(server: &S3Server, prefix: &str) -> PathBuf {
    server.bucket_dir().join(prefix)
}

/// The archived WAL file names (not history files) in the repository kept in `repo_dir`.
fn archived_wal(repo_dir: &Path) -> BTreeSet<String> {
    objects_under(&repo_dir.join("wal"))
        .into_iter()
        .filter(|p| !p.starts_with("history/"))
        .filter_map(|p| p.rsplit('/').next().map(str::to_string))
        .filter(|n| n.len() >= 24 && is_segment_name(&n[..24]))
        .collect()
}

/// Asserts that none of `texts` (what pitr printed or wrote) contains the server's secret key.
#[track_caller]
fn assert_no_secret(server: &S3Server, texts: &[(&str, String)]) {
    for (what, text) in texts {
        assert!(
            !text.contains(&server.secret_key),
            "the secret key leaked into {what}:\n{text}"
        );
    }
}

/// The command lines of the processes running now that show `secret`, but the S3 server's own
/// (s3s-fs takes its credentials as arguments; it is the test's, not pitr's). That the scan
/// sees s3s-fs's is checked: a scan that cannot read other processes' arguments fails.
fn command_lines_showing(secret: &str) -> Vec<String> {
    let s3s_fs = common::s3::s3s_fs_binary();
    let mut found = Vec::new();
    let mut servers_seen = 0;
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(bytes) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = bytes
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let line = args.join(" ");
        if args.first().is_some_and(|a| Path::new(a) == s3s_fs) {
            servers_seen += usize::from(line.contains(secret));
            continue;
        }
        if line.contains(secret) {
            found.push(line);
        }
    }
    assert_eq!(
        servers_seen, 1,
        "the scan of /proc/*/cmdline does not see the S3 server's"
    );
    found
}

/// A long-running `pitr` (watch, daemon), killed when dropped unless it was terminated: a test
/// that fails leaves nothing running.
struct Running {
    child: Option<Child>,
    name: &'static str,
}

impl Running {
    fn spawn(name: &'static str, command: &mut std::process::Command) -> Running {
        Running {
            child: Some(spawn(command)),
            name,
        }
    }

    /// SIGTERM to pitr itself, and what it wrote.
    fn terminate(mut self) -> CmdOutput {
        let child = self.child.take().expect("running");
        terminate_pitr(child, format!("pitr {}", self.name), Duration::from_secs(120))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_with_children(&mut child);
        }
    }
}

/// `pitr verify --json --log-file none` of `c`'s repository (no server connection), with its exit
/// code asserted; the report.
#[track_caller]
fn verify_json(c: &Cluster, code: i32) -> (serde_json::Value, CmdOutput) {
    let out = run(c
        .pitr_cmd()
        .env("PGHOST", c.dir().join("no-server-here"))
        .arg("--repo")
        .arg(c.repo())
        .args(["verify", "--json", "--log-file", "none"]));
    out.assert_code(code);
    (parse_json(&out), out)
}

/// The largest file of the backup kept in `backup_dir` (under `files/base`), relative to `files/`.
fn largest_backup_file(backup_dir: &Path) -> String {
    let files = backup_dir.join("files");
    let (_, path) = objects_under(&files.join("base"))
        .into_iter()
        .map(|p| (fs::metadata(files.join("base").join(&p)).unwrap().len(), p))
        .max()
        .expect("backup files");
    format!("base/{path}")
}

// ---------------------------------------------------------------------------------------------
// archive-push and archive-get
// ---------------------------------------------------------------------------------------------

/// archive-push into S3: silent; an identical re-push exits 0; other content under an archived
/// name and another cluster's WAL are refused (exit 1) and leave the bucket as it was.
/// archive-get: the original bytes, silently; a truly absent segment exits 1, silently.
#[test]
fn archive_push_and_archive_get_on_s3() {
    let server = S3Server::start();
    let c = Cluster::start(
        ClusterOptions::default()
            .s3(&server, "push")
            .wal_segsize_mb(1)
            .archive(false),
    );
    let repo_dir = stored_repo(&server, "push");
    let mut outputs = Vec::new();
    c.psql("CREATE TABLE f AS SELECT md5(g::text) AS v FROM generate_series(1, 3000) g");
    let (name, original) = c.capture_segment();
    let rel = format!("pg_wal/{name}");
    let out = c.pitr_as_server(&["archive-push", &rel]);
    out.assert_success().assert_silent();
    let object = stored_path(&repo_dir, &name);
    assert!(
        object.is_file(),
        "{name} is not in the bucket at {}; it holds {:?}",
        object.display(),
        objects_under(&repo_dir)
    );
    assert!(
        repo_dir.join("repo.json").is_file(),
        "the first push records the cluster"
    );
    let stored_before = read(&object);

    // Again, from pg_wal and from an identical copy elsewhere: 0, and the object is unchanged.
    c.pitr_as_server(&["archive-push", &rel])
        .assert_success()
        .assert_silent();
    let copy = c.test_dir().write(format!("copy/{name}"), &original);
    c.pitr(&["archive-push", copy.to_str().unwrap()])
        .assert_success()
        .assert_silent();
    assert!(
        read(&object) == stored_before,
        "an identical re-push changed the object"
    );

    // Other content under the same name: refused, the object kept.
    let mut changed = original.clone();
    changed[original.len() / 2 + 1000] ^= 0x5A;
    let other = c.test_dir().write(format!("other/pg_wal/{name}"), &changed);
    let out = c.pitr(&["archive-push", other.to_str().unwrap()]);
    out.assert_code(1).assert_one_line_error();
    assert!(out.stderr_str().to_lowercase().contains("differ"), "{}", out.describe());
    assert!(read(&object) == stored_before, "a refused push changed the object");
    outputs.push(("the refusal of other content", out.stderr_str()));

    // Another cluster's segment: refused, naming both system identifiers; nothing stored.
    let b = Cluster::start(ClusterOptions::default().wal_segsize_mb(1).archive(false));
    let mut foreign = b.capture_segment();
    while foreign.0 == name {
        foreign = b.capture_segment();
    }
    let (b_name, b_bytes) = foreign;
    let b_file = c.test_dir().write(format!("foreign/pg_wal/{b_name}"), &b_bytes);
    let out = c.pitr(&["archive-push", b_file.to_str().unwrap()]);
    out.assert_code(1).assert_one_line_error();
    let (a_id, b_id) = (c.system_identifier(), b.system_identifier());
    assert!(
        out.stderr_str().contains(&a_id.to_string()) && out.stderr_str().contains(&b_id.to_string()),
        "the refusal names both system identifiers ({a_id}, {b_id}):\n{}",
        out.describe()
    );
    assert!(
        !stored_path(&repo_dir, &b_name).exists(),
        "the foreign segment was stored"
    );
    outputs.push(("the refusal of another cluster's WAL", out.stderr_str()));

    // archive-get as PostgreSQL runs it: the original bytes, and nothing printed.
    let out = c.pitr_as_server(&["archive-get", &name, "pg_wal/RECOVERYXLOG"]);
    out.assert_success().assert_silent();
    let restored = c.pg_wal().join("RECOVERYXLOG");
    assert!(read(&restored) == original, "archive-get returned other bytes");
    fs::remove_file(restored).unwrap();

    // A segment the bucket does not hold: 1 (not archived), silently, and no file.
    let absent = later_segment_name(&name, 100, 1 << 20);
    let dest = c.test_dir().join("absent");
    let out = c.pitr(&["archive-get", &absent, dest.to_str().unwrap()]);
    out.assert_code(1).assert_silent();
    assert!(!dest.exists(), "a file was written for an absent segment");
    assert_no_secret(&server, &outputs);
}

// ---------------------------------------------------------------------------------------------
// backup, restore and verify
// ---------------------------------------------------------------------------------------------

/// A backup into S3, restored into a new directory by `pitr restore` from the bucket alone; the
/// restored server recovers (restore_command from S3) and holds the rows of the backup. Then
/// verify: a flipped byte in a backup file or a WAL segment in the bucket is critical (exit 2)
/// and named, and archive-get refuses the damaged segment with 200.
#[test]
fn backup_restore_and_verify_on_s3() {
    let server = S3Server::start();
    let c = primary_on(&server, "backup");
    let repo_dir = stored_repo(&server, "backup");
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 10000) AS id");
    let backup = backup_json(&c, &["--tier", "daily"]);
    let id = json_str(&backup["backup"], "id").to_string();
    let backup_dir = repo_dir.join("daily").join(&id);
    assert!(
        backup_dir.join("backup.manifest").is_file(),
        "no manifest in the bucket; it holds {:?}",
        objects_under(&repo_dir)
    );
    c.psql("INSERT INTO t SELECT generate_series(10001, 12000)");
    let segment = c.switch_and_archive();

    // restore, from the bucket alone.
    let restored = NewDir::new();
    let pitr = restored.dir.install_pitr();
    let out = run(pitr_command(&pitr)
        .envs(server.env())
        .current_dir(restored.dir.path())
        .arg("--repo")
        .arg(server.url("backup"))
        .args(["restore", "--pgdata"])
        .arg(&restored.data));
    out.assert_success();
    for file in ["PG_VERSION", "global/pg_control", "backup_label"] {
        assert!(
            restored.data.join(file).is_file(),
            "{file} was not restored:\n{}",
            out.describe()
        );
    }
    let auto_conf = restored.auto_conf();
    let mut outputs = vec![
        ("backup --json", backup.to_string()),
        ("restore's output", out.stdout_str() + &out.stderr_str()),
        ("the restored postgresql.auto.conf", auto_conf.clone()),
    ];

    // The restored copy recovers to the backup's consistency point through archive-get from S3.
    let port = free_port();
    let socket_dir = restored.dir.path();
    let conf = format!(
        "{auto_conf}\n# s3_commands\nport = {port}\nunix_socket_directories = '{}'\nlisten_addresses = ''\n\
         restore_command = '{} --repo {} archive-get %f %p'\nrecovery_target = 'immediate'\n\
         recovery_target_action = 'promote'\narchive_mode = off\n",
        socket_dir.display(),
        pitr.display(),
        server.url("backup")
    );
    let auto = restored.data.join("postgresql.auto.conf");
    fs::write(&auto, conf).unwrap();
    give_to_server_user(&auto);
    restored.dir.write("data/recovery.signal", "");
    let log = restored.dir.join("server.log");
    let out = run(server_command(pg_ctl_for(&restored.data))
        .envs(server.env())
        .current_dir(socket_dir)
        .arg("-D")
        .arg(&restored.data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "120", "start"]));
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    assert!(out.success(), "{}\n{}", out.describe(), log_text());
    let promoted = poll(RECOVERY_TIMEOUT, || {
        (try_psql_at(socket_dir, port, "SELECT pg_is_in_recovery()").ok()? == "f").then_some(())
    });
    assert!(promoted.is_some(), "the restored copy did not promote:\n{}", log_text());
    assert_eq!(
        try_psql_at(socket_dir, port, "SELECT count(*) FROM t").unwrap(),
        "10000",
        "the rows of the backup"
    );
    restored.stop_immediate();

    // verify: sound, then a damaged backup file, then a damaged segment.
    let (report, out) = verify_json(&c, 0);
    outputs.push(("verify --json", out.stdout_str()));
    assert_eq!(alerts_of(&report, "alerts"), [], "{report:#}");
    let relative = largest_backup_file(&backup_dir);
    let file = backup_dir.join("files").join(&relative);
    let original = read(&file);
    flip_byte_from_end(&file, 100);
    let (report, _) = verify_json(&c, 2);
    assert_eq!(
        alerts_of(&report, "alerts"),
        [(
            "BackupVerificationFailed".to_string(),
            format!("daily/{id}/files/{relative}")
        )],
        "{report:#}"
    );
    rewrite_keeping_mode(&file, &original);
    verify_json(&c, 0);

    let object = stored_path(&repo_dir, &segment);
    let original = read(&object);
    flip_byte_from_end(&object, 100);
    let (report, out) = verify_json(&c, 2);
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("BackupVerificationFailed".to_string(), segment.clone())],
        "{report:#}"
    );
    outputs.push(("verify --json of a damaged repository", out.stdout_str()));
    let dest = c.test_dir().join("damaged");
    let out = c.pitr(&["archive-get", &segment, dest.to_str().unwrap()]);
    out.assert_code(200);
    assert!(!dest.exists(), "archive-get wrote a damaged segment");
    outputs.push(("archive-get of a damaged segment", out.stderr_str()));
    rewrite_keeping_mode(&object, &original);
    verify_json(&c, 0);
    assert_no_secret(&server, &outputs);
}

// ---------------------------------------------------------------------------------------------
// expire, recover --target latest
// ---------------------------------------------------------------------------------------------

/// Retention on S3: `expire` deletes the older backup and the WAL only it needed from the bucket
/// (exactly what its dry run announced), `list` no longer shows it, and a recovery to the latest
/// archived WAL from what is left still reaches every row.
#[test]
fn expire_deletes_from_the_bucket_and_recover_latest_still_works() {
    let server = S3Server::start();
    let c = primary_on(&server, "expire");
    let repo_dir = stored_repo(&server, "expire");
    let config = c.test_dir().write("pitr.toml", "keep_hourly = 1\n");
    let config = config.to_str().unwrap();
    let take = || -> serde_json::Value {
        let out = c.pitr_connected(
            c.repo(),
            &["--config", config, "backup", "--fast", "--json", "--no-expire"],
        );
        assert!(out.success(), "backup failed:\n{}\n{}", out.describe(), c.log_tail());
        parse_json(&out)["backup"].clone()
    };
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id");
    let a = take();
    let a_id = json_str(&a, "id").to_string();
    for _ in 0..2 {
        c.psql("INSERT INTO t SELECT generate_series(1, 1000)");
        c.switch_and_archive();
    }
    let b = take();
    let b_id = json_str(&b, "id").to_string();
    let b_first = json_str(&b, "first_wal").to_string();
    let a_dir = repo_dir.join("hourly").join(&a_id);
    assert!(
        a_dir.join("backup.manifest").is_file(),
        "{:?}",
        objects_under(&repo_dir)
    );
    let wal_before = archived_wal(&repo_dir);
    assert!(
        wal_before.iter().any(|n| n[..24] < b_first[..]),
        "WAL older than {b_first} to expire: {wal_before:?}"
    );

    let plan = c.pitr(&["--config", config, "expire", "--dry-run", "--json"]);
    plan.assert_success();
    let plan = parse_json(&plan);
    let out = c.pitr(&["--config", config, "expire", "--json"]);
    out.assert_success();
    let done = parse_json(&out);
    assert_eq!(done, plan, "expire did something else than its dry run announced");
    let expired: Vec<&str> = done["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| json_str(b, "id"))
        .collect();
    assert_eq!(expired, [a_id.as_str()], "{done:#}");
    let expired_wal: Vec<&str> = done["wal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(!expired_wal.is_empty(), "{done:#}");

    // Gone from the bucket: the backup's objects and the WAL only it needed; the rest is there.
    assert_eq!(
        objects_under(&a_dir),
        BTreeSet::new(),
        "objects of the expired backup remain"
    );
    assert!(repo_dir.join("hourly").join(&b_id).join("backup.manifest").is_file());
    let wal_after = archived_wal(&repo_dir);
    for name in &expired_wal {
        assert!(!wal_after.contains(*name), "{name} is still in the bucket");
    }
    let too_old: Vec<&String> = wal_after.iter().filter(|n| n[..24] < b_first[..]).collect();
    assert!(too_old.is_empty(), "WAL older than {b_first} remains: {too_old:?}");
    for name in wal_before.iter().filter(|n| n[..24] >= b_first[..]) {
        assert!(wal_after.contains(name), "{name} was deleted though {b_id} needs it");
    }
    let listed = parse_json(c.pitr(&["list", "--json"]).assert_success());
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|b| json_str(b, "id")).collect();
    assert_eq!(ids, [b_id.as_str()], "{listed:#}");

    // What is left recovers to the latest archived WAL.
    c.psql("INSERT INTO t SELECT generate_series(1, 500)");
    c.switch_and_archive();
    let new = NewDir::new();
    let out = recover(
        &c,
        &new.data,
        &["--target", "latest", "--verify-sql", "SELECT count(*) FROM t"],
    );
    assert!(out.success(), "{}\n{}", out.describe(), new.server_log());
    assert_eq!(out.stdout_line("verify: "), "3500", "{}", out.describe());
    assert!(new.is_running(), "recover leaves the server running");
    assert_eq!(command_lines_showing(&server.secret_key), Vec::<String>::new());
    new.stop_immediate();
    assert_no_secret(
        &server,
        &[
            ("expire --json", done.to_string()),
            ("recover", out.stdout_str() + &out.stderr_str()),
            ("the recovered postgresql.auto.conf", new.auto_conf()),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// watch and daemon
// ---------------------------------------------------------------------------------------------

/// `pitr watch` stores every ready segment into the bucket (archive_command fails on purpose, so
/// only the watcher archives); archive-get returns their bytes; no process shows the secret; a
/// SIGTERM ends it with 0.
#[test]
fn watch_stores_ready_segments_into_s3() {
    let server = S3Server::start();
    let c = Cluster::start(
        ClusterOptions::default()
            .s3(&server, "watch")
            .setting("archive_command", "'/bin/false'"),
    );
    let repo_dir = stored_repo(&server, "watch");
    c.psql("CREATE TABLE w (v text)");
    for _ in 0..3 {
        c.psql("INSERT INTO w SELECT md5(g::text) FROM generate_series(1, 2000) g");
        c.switch_wal();
    }
    let ready: Vec<String> = c
        .archive_status()
        .1
        .into_iter()
        .filter(|n| is_segment_name(n))
        .collect();
    assert!(ready.len() >= 3, "a backlog of ready segments: {ready:?}");

    let mut command = c.pitr_cmd();
    command
        .arg("--repo")
        .arg(c.repo())
        .args(["watch", "--workers", "2", "--pgdata"])
        .arg(c.data_dir());
    let watcher = Running::spawn("watch", &mut command);
    let stored = poll(Duration::from_secs(120), || {
        ready.iter().all(|n| stored_path(&repo_dir, n).is_file()).then_some(())
    });
    assert!(
        stored.is_some(),
        "the watcher did not store all of {ready:?}; the bucket holds {:?}",
        objects_under(&repo_dir)
    );
    assert_eq!(command_lines_showing(&server.secret_key), Vec::<String>::new());
    let out_dir = TestDir::new("s3-watch-get");
    for name in &ready {
        let dest = out_dir.join(name);
        c.pitr(&["archive-get", name, dest.to_str().unwrap()]).assert_success();
        assert!(read(&dest) == read(&c.pg_wal().join(name)), "{name} differs");
    }
    let out = watcher.terminate();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_no_secret(&server, &[("watch's output", out.stdout_str() + &out.stderr_str())]);
}

/// `pitr daemon` with the repository on S3: scheduled backups (every 3 s) land in the bucket and
/// expire keeps one; /metrics counts them; neither the metrics, its log nor any process's
/// arguments show the secret; SIGTERM ends it with 0.
#[test]
fn the_daemon_takes_scheduled_backups_into_s3() {
    let server = S3Server::start();
    let c = Cluster::start(
        ClusterOptions::default()
            .s3(&server, "daemon")
            .setting("checkpoint_timeout", "'30s'")
            .setting("checkpoint_completion_target", "0.1"),
    );
    let repo_dir = stored_repo(&server, "daemon");
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) g");
    let port = free_port();
    let config = c.test_dir().write(
        "daemon.toml",
        format!(
            "repo = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nkeep_hourly = 1\n\n[schedule]\n\
             hourly = \"*/3 * * * * *\"\ndaily = \"off\"\nweekly = \"off\"\nverify = \"off\"\n",
            server.url("daemon")
        ),
    );
    let mut command = c.daemon_cmd(&config);
    let daemon = Running::spawn("daemon", &mut command);
    let metrics = poll(Duration::from_secs(120), || {
        let text = http_get(port, "/metrics")?;
        (metric(&text, "pitr_job_runs_total{job=\"backup hourly\",result=\"success\"}")? >= 2.0).then_some(text)
    })
    .unwrap_or_else(|| panic!("no two scheduled backups; /metrics: {:?}", http_get(port, "/metrics")));
    assert_eq!(
        metric(&metrics, "pitr_job_last_failed{job=\"backup hourly\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(command_lines_showing(&server.secret_key), Vec::<String>::new());
    let out = daemon.terminate();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr_str().contains("job backup hourly: backup main_hourly_"),
        "{}",
        out.describe()
    );

    let listed = parse_json(c.pitr(&["list", "hourly", "--json"]).assert_success());
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|b| json_str(b, "id")).collect();
    assert!(
        (1..=2).contains(&ids.len()),
        "expire keeps one (two if one ended after the last expire): {listed:#}"
    );
    for id in &ids {
        assert!(
            repo_dir.join("hourly").join(id).join("backup.manifest").is_file(),
            "{id} is not in the bucket: {:?}",
            objects_under(&repo_dir.join("hourly"))
        );
    }
    let manifests = objects_under(&repo_dir.join("hourly"))
        .into_iter()
        .filter(|p| p.ends_with("/backup.manifest"))
        .count();
    assert_eq!(manifests, ids.len(), "only the listed backups are in the bucket");
    assert_no_secret(
        &server,
        &[
            ("/metrics", metrics),
            ("the daemon's log", out.stdout_str() + &out.stderr_str()),
            (
                "pitr_test.conf",
                fs::read_to_string(c.data_dir().join("pitr_test.conf")).unwrap(),
            ),
        ],
    );
}
