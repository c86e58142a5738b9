//! `pitr restore` of backups taken with `pitr backup` from real servers: a backup taken under
//! concurrent pgbench writes, restored and recovered by hand (restore_command through pitr,
//! `recovery_target = 'immediate'`), has every row committed before the backup and passes amcheck;
//! a restore of an idle cluster is byte-for-byte with the right layout and modes; a corrupted
//! backup file fails the restore naming the file; unsafe target directories are refused.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Every entry under `root`, relative path → metadata (symlinks not followed).
fn entries(root: &Path) -> BTreeMap<String, fs::Metadata> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, fs::Metadata>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
            let entry = entry.expect("dir entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let meta = fs::symlink_metadata(entry.path()).expect("stat");
            let is_dir = meta.is_dir();
            out.insert(path.clone(), meta);
            if is_dir {
                walk(&entry.path(), &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn mode(meta: &fs::Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

/// A data directory restored by `pitr restore` into its own temporary directory (which is also
/// the socket directory of the server started on it), with its own copy of `pitr`.
/// Dropping it stops the server (immediate) and removes the directory.
struct Restored {
    dir: TestDir,
    data: PathBuf,
    pitr: PathBuf,
    port: u16,
}

impl Restored {
    /// A new, not yet existing, data directory path.
    fn new() -> Restored {
        let dir = TestDir::new("restored");
        let pitr = dir.install_pitr();
        let data = dir.join("data");
        Restored {
            dir,
            data,
            pitr,
            port: free_port(),
        }
    }

    /// Runs `pitr --repo <c's repository> restore --pgdata <data> <extra…>` as the server user.
    fn restore(&self, c: &Cluster, extra: &[&str]) -> CmdOutput {
        let mut cmd = pitr_command(&self.pitr);
        cmd.current_dir(self.dir.path())
            .envs(c.env())
            .arg("--repo")
            .arg(c.repo())
            .arg("restore")
            .arg("--pgdata")
            .arg(&self.data)
            .args(extra);
        run(&mut cmd)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn log_tail(&self) -> String {
        tail(
            &String::from_utf8_lossy(&fs::read(self.log_path()).unwrap_or_default()),
            60,
        )
    }

    /// Appends recovery settings to postgresql.auto.conf (read last, so they override the copied
    /// configuration): its own port and socket directory, `restore_command` through pitr from
    /// `c`'s repository, `recovery_target = 'immediate'` with promotion, archiving off. Creates
    /// recovery.signal and starts the server (`pg_ctl -w`, with `c`'s environment).
    fn start_recovery(&self, c: &Cluster) {
        let repo = c.repo();
        let auto = self.data.join("postgresql.auto.conf");
        let mut conf = fs::read_to_string(&auto).unwrap_or_default();
        conf.push_str(&format!(
            "\n# pitr restore test\nport = {}\nunix_socket_directories = '{}'\nlisten_addresses = ''\n\
             restore_command = '{} --repo {} archive-get %f %p'\nrecovery_target = 'immediate'\n\
             recovery_target_action = 'promote'\narchive_mode = off\n",
            self.port,
            self.dir.path().display(),
            self.pitr.display(),
            repo.display()
        ));
        fs::write(&auto, conf).expect("write postgresql.auto.conf");
        give_to_server_user(&auto);
        let signal = self.data.join("recovery.signal");
        fs::write(&signal, b"").expect("write recovery.signal");
        give_to_server_user(&signal);
        let out = run(server_command(pg_ctl_for(&self.data))
            .envs(c.env())
            .current_dir(self.dir.path())
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "120", "start"]));
        assert!(
            out.success(),
            "the restored server did not start:\n{}\n--- server log (tail) ---\n{}",
            out.describe(),
            self.log_tail()
        );
    }

    fn try_psql(&self, sql: &str) -> Result<String, CmdOutput> {
        try_psql_at(self.dir.path(), self.port, sql)
    }

    #[track_caller]
    fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|out| {
            panic!(
                "restored server: psql failed:\n{}\n--- server log (tail) ---\n{}",
                out.describe(),
                self.log_tail()
            )
        })
    }

    /// Waits until recovery ended with promotion.
    fn wait_promoted(&self) {
        let promoted = poll(RECOVERY_TIMEOUT, || {
            (self.try_psql("SELECT pg_is_in_recovery()").ok()? == "f").then_some(())
        });
        assert!(
            promoted.is_some(),
            "the restored server did not promote within {RECOVERY_TIMEOUT:?}\n--- server log (tail) ---\n{}",
            self.log_tail()
        );
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        pg_ctl_stop_immediate_quietly(self.dir.path(), &self.data);
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Rows committed before the backup starts.
const ROWS: i64 = 50_000;
const SCALE: u32 = 5;

#[test]
fn backup_under_concurrent_writes_restores_and_recovers_to_a_consistent_cluster() {
    let c = Cluster::start(ClusterOptions::default());
    c.psql(&format!(
        "CREATE TABLE before_backup (id int PRIMARY KEY, v text); \
         INSERT INTO before_backup SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g; \
         CREATE UNLOGGED TABLE unlogged AS SELECT g AS id FROM generate_series(1, 1000) g"
    ));
    let fingerprint_sql = "SELECT count(*), sum(id), md5(string_agg(v, ',' ORDER BY id)) FROM before_backup";
    let fingerprint = c.psql(fingerprint_sql);
    c.pgbench_init(SCALE);

    // pgbench writes throughout the backup.
    let mut cmd = c.pgbench_cmd(&["-n", "-c", "2", "-T", "60"]);
    let line = cmdline(&cmd);
    let mut bench = spawn(&mut cmd);
    let history_count = || -> i64 { c.psql("SELECT count(*) FROM pgbench_history").parse().unwrap() };
    assert!(
        poll(Duration::from_secs(30), || (history_count() > 100).then_some(())).is_some(),
        "pgbench does not write"
    );
    let committed_before = history_count();
    let summary = backup_json(&c, &[]);
    let committed_after = history_count();
    assert!(
        bench.try_wait().expect("try_wait").is_none(),
        "pgbench stopped before the backup ended"
    );
    assert!(
        committed_after > committed_before,
        "no pgbench transaction committed during the backup ({committed_before} → {committed_after})"
    );
    // Stop pgbench (runuser forwards SIGTERM to it); its exit status does not matter.
    let _ = Command::new("kill").args(["-TERM", &bench.id().to_string()]).status();
    let _ = wait_child(bench, line, Duration::from_secs(60));

    let b = &summary["backup"];
    let id = json_str(b, "id").to_string();
    assert!(
        parse_lsn(json_str(b, "stop_lsn")) > parse_lsn(json_str(b, "start_lsn")),
        "{summary:#}"
    );
    assert!(json_str(b, "first_wal") <= json_str(b, "last_wal"), "{summary:#}");
    assert!(b["file_count"].as_u64().unwrap() > 100, "{summary:#}");

    let r = Restored::new();
    let out = r.restore(&c, &["--json"]);
    out.assert_success();
    let restored = parse_json(&out);
    assert_eq!(json_str(&restored, "id"), id, "{restored:#}");
    assert_eq!(restored["files"], b["file_count"], "{restored:#}");
    assert!(r.data.join("backup_label").is_file());
    assert!(r.data.join("global/pg_control").is_file());

    r.start_recovery(&c);
    r.wait_promoted();
    let log = r.log_tail();
    assert!(log.contains("consistent recovery state reached"), "{log}");
    assert!(
        log.contains("restored log file"),
        "no WAL came from the repository:\n{log}"
    );

    assert_eq!(
        r.psql("SELECT count(*) FROM before_backup"),
        ROWS.to_string(),
        "rows committed before the backup\n{}",
        r.log_tail()
    );
    assert_eq!(
        r.psql(fingerprint_sql),
        fingerprint,
        "contents of the table written before the backup"
    );
    let recovered_history: i64 = r.psql("SELECT count(*) FROM pgbench_history").parse().unwrap();
    assert!(
        recovered_history >= committed_before,
        "pgbench transactions committed before the backup are missing: {recovered_history} < {committed_before}"
    );

    // pgbench tables are sane: sizes, and every transaction's delta in all four tables.
    assert_eq!(r.psql("SELECT count(*) FROM pgbench_branches"), SCALE.to_string());
    assert_eq!(r.psql("SELECT count(*) FROM pgbench_tellers"), (SCALE * 10).to_string());
    assert_eq!(
        r.psql("SELECT count(*) FROM pgbench_accounts"),
        (SCALE * 100_000).to_string()
    );
    let sums = r.psql(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches), \
         (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    let parts: Vec<&str> = sums.split('|').collect();
    assert!(
        parts.iter().all(|p| *p == parts[0]),
        "pgbench balances disagree: {sums}"
    );

    // amcheck: every permanent B-tree index, and the heap of every permanent table.
    r.psql("CREATE EXTENSION amcheck");
    let checked = r.psql(
        "SELECT count(bt_index_check(c.oid, true)) FROM pg_class c JOIN pg_am a ON a.oid = c.relam \
         WHERE a.amname = 'btree' AND c.relpersistence = 'p' AND c.relkind = 'i'",
    );
    assert!(
        checked.parse::<u32>().unwrap() > 10,
        "amcheck checked only {checked} indexes"
    );
    let heap_errors = r.psql(
        "SELECT count(*) FROM pg_class c, LATERAL verify_heapam(c.oid) \
         WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence = 'p'",
    );
    assert_eq!(heap_errors, "0", "verify_heapam found corruption");

    // An unlogged table comes back empty (reset from its init fork).
    assert_eq!(r.psql("SELECT count(*) FROM unlogged"), "0");

    // The promoted copy takes writes.
    r.psql("INSERT INTO before_backup VALUES (0, 'after')");
}

#[test]
fn restore_of_an_idle_cluster_is_byte_for_byte_with_the_expected_layout() {
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    c.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, repeat('v', g % 100) FROM generate_series(1, 20000) g",
    );
    // Over 32 MiB: stored in 16 MiB parts, written back at their offsets by the restore.
    c.psql("CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 4) AS v FROM generate_series(1, 250000) g");
    c.psql("VACUUM (FREEZE, ANALYZE)");
    c.psql("CHECKPOINT");
    let t_path = c.psql("SELECT pg_relation_filepath('t')");
    let idx_path = c.psql("SELECT pg_relation_filepath('t_pkey')");
    let big_path = c.psql("SELECT pg_relation_filepath('big')");
    let big_size = fs::metadata(c.data_dir().join(&big_path)).unwrap().len();
    assert!(big_size > 32 << 20, "the big table is only {big_size} bytes");
    // An unlogged table: only its init fork belongs in a backup.
    c.psql("CREATE UNLOGGED TABLE u AS SELECT g AS id FROM generate_series(1, 10000) g");
    c.psql("CHECKPOINT");
    let u_path = c.psql("SELECT pg_relation_filepath('u')");
    let unlogged_data_fork = |p: &str| {
        p == u_path
            || (p.starts_with(&format!("{u_path}_")) && !p.ends_with("_init"))
            || p.starts_with(&format!("{u_path}."))
    };
    assert!(c.data_dir().join(&u_path).is_file() && c.data_dir().join(format!("{u_path}_init")).is_file());
    let summary = backup_json(&c, &[]);
    let id = json_str(&summary["backup"], "id").to_string();
    let backup_dir = c.repo_dir().join("hourly").join(&id);
    let manifest: serde_json::Value = serde_json::from_slice(&read(&backup_dir.join("backup.manifest"))).unwrap();
    let big_entry = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == big_path.as_str())
        .expect("the big table is in the manifest");
    let parts = big_entry["parts"]
        .as_array()
        .expect("the big table is split into parts");
    assert_eq!(parts.len() as u64, big_size.div_ceil(16 << 20), "parts of {big_path}");
    assert!(
        !backup_dir.join("files").join(&big_path).exists(),
        "a split file is also stored whole"
    );
    for index in 0..parts.len() {
        let part = backup_dir.join("files").join(format!("{big_path}.part{index:04}"));
        assert!(part.is_file(), "{} is missing", part.display());
    }

    let r = Restored::new();
    let out = r.restore(&c, &[]);
    out.assert_success();
    let stdout = out.stdout_str();
    assert!(
        stdout.starts_with(&format!("restored backup {id} into ")),
        "restore summary:\n{}",
        out.describe()
    );

    let source = entries(c.data_dir());
    let restored = entries(&r.data);

    // Layout: backup_label, an empty pg_wal/ with an empty archive_status/, no server runtime files.
    let label = String::from_utf8_lossy(&read(&r.data.join("backup_label"))).into_owned();
    assert!(label.starts_with("START WAL LOCATION: "), "backup_label:\n{label}");
    assert!(label.contains("\nSTART TIMELINE: 1\n"), "backup_label:\n{label}");
    let start_line = label.lines().next().unwrap();
    assert_eq!(
        start_line,
        format!(
            "START WAL LOCATION: {} (file {})",
            json_str(&summary["backup"], "start_lsn"),
            json_str(&summary["backup"], "first_wal")
        ),
        "backup_label and the backup's JSON disagree"
    );
    let wal: Vec<&String> = restored.keys().filter(|p| p.starts_with("pg_wal/")).collect();
    assert_eq!(
        wal,
        ["pg_wal/archive_status"],
        "pg_wal must be empty except archive_status/"
    );
    for gone in [
        "postmaster.pid",
        "postmaster.opts",
        "recovery.signal",
        "standby.signal",
        "tablespace_map",
    ] {
        assert!(!restored.contains_key(gone), "{gone} was restored");
    }
    assert!(
        !restored.keys().any(|p| p.contains("pg_internal.init")),
        "pg_internal.init was restored"
    );

    // Every directory of the data directory exists; every file outside the emptied directories
    // and runtime files is restored.
    let expected: BTreeSet<&String> = source
        .keys()
        .filter(|p| !EMPTIED.iter().any(|d| p.starts_with(d)) || source[*p].is_dir())
        .filter(|p| !["postmaster.pid", "postmaster.opts"].contains(&p.as_str()))
        .filter(|p| !p.contains("pg_internal.init") && !p.contains("pgsql_tmp"))
        .filter(|p| !unlogged_data_fork(p))
        .collect();
    let got: BTreeSet<&String> = restored.keys().filter(|p| *p != "backup_label").collect();
    let missing: Vec<&&String> = expected.difference(&got).collect();
    let extra: Vec<&&String> = got.difference(&expected).collect();
    assert!(missing.is_empty(), "not restored: {missing:?}");
    assert!(extra.is_empty(), "restored but not in the data directory: {extra:?}");

    // Byte for byte: the server is idle (autovacuum off, checkpointed before the backup), so every
    // file but pg_control is as it was copied.
    for name in [
        "PG_VERSION",
        "postgresql.conf",
        "pg_hba.conf",
        "pg_ident.conf",
        t_path.as_str(),
        idx_path.as_str(),
        big_path.as_str(),
    ] {
        assert!(
            read(&c.data_dir().join(name)) == read(&r.data.join(name)),
            "{name} differs between the data directory and the restore"
        );
    }
    let differing: Vec<&String> = got
        .iter()
        .copied()
        .filter(|p| restored[*p].is_file() && p.as_str() != "global/pg_control")
        .filter(|p| read(&c.data_dir().join(p)) != read(&r.data.join(p)))
        .collect();
    assert!(
        differing.is_empty(),
        "restored files differ from the idle data directory: {differing:?}"
    );
    let control = read(&r.data.join("global/pg_control"));
    assert_eq!(control.len(), read(&c.data_dir().join("global/pg_control")).len());

    // Modes and owner: the data directory 0700, everything as in the source (PostgreSQL's own
    // files 0600, directories 0700), backup_label 0600, all owned by the server user.
    let data_meta = fs::metadata(&r.data).unwrap();
    assert_eq!(mode(&data_meta), 0o700, "data directory mode");
    let owner = fs::metadata(c.data_dir()).unwrap().uid();
    assert_eq!(data_meta.uid(), owner, "data directory owner");
    for (p, meta) in &restored {
        assert_eq!(meta.uid(), owner, "owner of {p}");
        match source.get(p) {
            Some(src) => assert_eq!(mode(meta), mode(src), "mode of {p}"),
            None => assert_eq!(mode(meta), if meta.is_dir() { 0o700 } else { 0o600 }, "mode of {p}"),
        }
    }
    for p in [
        "PG_VERSION",
        "postgresql.conf",
        "global/pg_control",
        "backup_label",
        t_path.as_str(),
    ] {
        assert_eq!(mode(&restored[p]), 0o600, "mode of {p}");
    }
    for p in ["base", "global", "pg_wal", "pg_wal/archive_status", "pg_stat_tmp"] {
        assert!(restored[p].is_dir(), "{p} is not a directory");
        assert_eq!(mode(&restored[p]), 0o700, "mode of {p}");
    }
}

#[test]
fn corrupted_backup_file_fails_the_restore_naming_it_and_a_repaired_one_restores_with_force() {
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    c.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    );
    c.psql("CHECKPOINT");
    let rel = c.psql("SELECT pg_relation_filepath('t')");
    let summary = backup_json(&c, &[]);
    let id = json_str(&summary["backup"], "id").to_string();
    let object = c.repo_dir().join("hourly").join(&id).join("files").join(&rel);
    assert!(object.is_file(), "{} is not in the backup", object.display());
    let original = read(&object);
    flip_byte_from_end(&object, 8);

    let r = Restored::new();
    let out = r.restore(&c, &[]);
    assert!(
        !out.success(),
        "restore of a corrupted backup succeeded:\n{}",
        out.describe()
    );
    out.assert_one_line_error();
    assert!(
        out.stderr_str().contains(&rel),
        "the error does not name {rel}:\n{}",
        out.describe()
    );
    assert!(
        !r.data.join("global/pg_control").exists(),
        "a failed restore wrote pg_control (a half-restored directory could be started)"
    );

    // The repaired backup restores over the failed attempt with --force (without it: refused).
    rewrite_keeping_mode(&object, &original);
    let out = r.restore(&c, &[]);
    assert!(
        !out.success(),
        "restore into a non-empty directory without --force:\n{}",
        out.describe()
    );
    out.assert_one_line_error();
    assert!(out.stderr_str().contains("--force"), "{}", out.describe());
    let out = r.restore(&c, &["--force", "--backup", &id]);
    out.assert_success();
    assert!(
        read(&r.data.join(&rel)) == read(&c.data_dir().join(&rel)),
        "{rel} differs after the restore"
    );
    assert!(r.data.join("global/pg_control").is_file());
    assert!(r.data.join("backup_label").is_file());
}

#[test]
fn restore_refuses_unsafe_targets_and_unknown_backups() {
    let c = Cluster::start(ClusterOptions::default());
    let r = Restored::new();
    // No backup yet.
    let out = r.restore(&c, &[]);
    assert!(!out.success(), "{}", out.describe());
    out.assert_one_line_error();
    assert!(!r.data.exists() || fs::read_dir(&r.data).unwrap().next().is_none());

    let summary = backup_json(&c, &[]);
    let id = json_str(&summary["backup"], "id").to_string();

    // Unknown id.
    let out = r.restore(&c, &["--backup", "main_hourly_19700101_000000"]);
    assert!(!out.success(), "{}", out.describe());
    out.assert_one_line_error();
    assert!(
        out.stderr_str().contains("main_hourly_19700101_000000"),
        "{}",
        out.describe()
    );

    // A non-empty directory: refused without --force, and left alone.
    let stray = r.dir.subdir("data").join("keep-me");
    fs::write(&stray, b"x").unwrap();
    give_to_server_user(&stray);
    let out = r.restore(&c, &[]);
    assert!(!out.success(), "{}", out.describe());
    out.assert_one_line_error();
    assert!(out.stderr_str().contains("not empty"), "{}", out.describe());
    assert!(stray.exists());

    // --force wipes only a data directory (as pgBackRest's does): a typo in --pgdata must not
    // wipe whatever directory it names.
    let out = r.restore(&c, &["--force"]);
    assert!(!out.success(), "{}", out.describe());
    out.assert_one_line_error();
    assert!(out.stderr_str().contains("no PG_VERSION"), "{}", out.describe());
    assert!(stray.exists(), "--force wiped a directory that is no data directory");
    let version = r.data.join("PG_VERSION");
    fs::write(&version, b"15\n").unwrap();
    give_to_server_user(&version);

    // --force is refused while a postmaster.pid is there, at the top or anywhere below (a
    // running cluster inside the target).
    for place in ["postmaster.pid", "nested/cluster/postmaster.pid"] {
        let pid = r.data.join(place);
        fs::create_dir_all(pid.parent().unwrap()).unwrap();
        fs::write(&pid, b"12345\n").unwrap();
        give_to_server_user(&r.data);
        let out = r.restore(&c, &["--force"]);
        assert!(!out.success(), "{}", out.describe());
        out.assert_one_line_error();
        assert!(out.stderr_str().contains(place), "{}", out.describe());
        assert!(stray.exists() && pid.exists(), "a refused --force wiped the directory");
        fs::remove_file(&pid).unwrap();
    }

    // Without it, --force wipes and restores.
    let out = r.restore(&c, &["--force", "--json"]);
    out.assert_success();
    assert_eq!(json_str(&parse_json(&out), "id"), id);
    assert!(!stray.exists());
    assert!(r.data.join("PG_VERSION").is_file());
}

/// Every file of the data directory outside the emptied directories and runtime files, but
/// pg_control, relative path → bytes.
fn data_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    const SKIPPED: [&str; 2] = ["postmaster.", "global/pg_control"];
    entries(root)
        .into_iter()
        .filter(|(p, meta)| {
            meta.is_file() && !EMPTIED.iter().chain(&SKIPPED).any(|s| p.starts_with(s)) && p != "backup_label"
        })
        .filter(|(p, _)| !p.contains("pg_internal.init"))
        .map(|(p, _)| {
            let bytes = read(&root.join(&p));
            (p, bytes)
        })
        .collect()
}

/// The directories of a data directory that a restore leaves empty.
const EMPTIED: [&str; 8] = [
    "pg_wal/",
    "pg_replslot/",
    "pg_dynshmem/",
    "pg_notify/",
    "pg_serial/",
    "pg_snapshots/",
    "pg_stat_tmp/",
    "pg_subtrans/",
];

/// The files in which two snapshots of [`data_files`] differ.
fn differing(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    paths.into_iter().filter(|p| a.get(*p) != b.get(*p)).cloned().collect()
}

#[test]
fn deduplicated_backups_store_what_changed_and_each_restores_byte_for_byte_beside_an_old_format_one() {
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    // Over 16 MiB (two parts) with all-zero pages at its end, and a small table.
    c.psql("CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 4) AS v FROM generate_series(1, 150000) g");
    c.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g");
    c.psql("VACUUM (FREEZE, ANALYZE)");
    c.psql("CHECKPOINT");
    let big_path = c.psql("SELECT pg_relation_filepath('big')");
    let first = backup_json(&c, &["--dedup", "--tier", "daily"]);
    let at_first = data_files(c.data_dir());
    let old_format = backup_json(&c, &["--tier", "weekly"]);
    let at_old_format = data_files(c.data_dir());
    // A few rows of the big table change: a few of its pages.
    c.psql("UPDATE big SET v = 'changed' WHERE id % 20000 = 0");
    c.psql("CHECKPOINT");
    let second = backup_json(&c, &["--dedup", "--tier", "hourly"]);
    let at_second = data_files(c.data_dir());
    assert!(
        at_first[&big_path] != at_second[&big_path],
        "the update changed the big table's file"
    );

    let (first_manifest, second_manifest) = (manifest_of(&c, &first), manifest_of(&c, &second));
    assert_eq!(first_manifest["format_version"], 7);
    assert_eq!(
        manifest_of(&c, &old_format)["format_version"],
        6,
        "a backup without --dedup keeps format 6"
    );
    let stored = |m: &serde_json::Value| m["stored_bytes"].as_u64().unwrap();
    let original = |m: &serde_json::Value| m["original_bytes"].as_u64().unwrap();
    assert!(
        stored(&second_manifest) * 20 < stored(&first_manifest),
        "the second backup stores only what changed: {} bytes against {} for the first",
        stored(&second_manifest),
        stored(&first_manifest)
    );
    assert!(stored(&first_manifest) < original(&first_manifest));
    let first_dir = c.repo_dir().join("daily").join(json_str(&first["backup"], "id"));
    assert!(
        !first_dir.join("files").join(&big_path).exists() && !first_dir.join("files/PG_VERSION").exists(),
        "a deduplicated backup stores no file object but pg_control"
    );
    assert!(first_dir.join("files/global/pg_control").is_file());
    assert!(c.repo_dir().join("packs").is_dir());

    for (summary, expected) in [
        (&first, &at_first),
        (&old_format, &at_old_format),
        (&second, &at_second),
    ] {
        let id = json_str(&summary["backup"], "id");
        let r = Restored::new();
        r.restore(&c, &["--backup", id]).assert_success();
        let got = data_files(&r.data);
        assert!(
            differing(expected, &got).is_empty(),
            "backup {id}: restored files differ: {:?}",
            differing(expected, &got)
        );
        assert!(r.data.join("global/pg_control").is_file());
    }

    // The newest restores and recovers: a cluster that starts and holds the changed rows.
    let r = Restored::new();
    r.restore(&c, &[]).assert_success();
    r.start_recovery(&c);
    r.wait_promoted();
    assert_eq!(r.psql("SELECT count(*) FROM big WHERE v = 'changed'"), "7");
    assert_eq!(r.psql("SELECT count(*) FROM t"), "1000");
}
