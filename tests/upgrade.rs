//! Major upgrades with real `pg_upgrade`, 15 → 16 and 17 → 18: a cluster archiving through pitr
//! with a backup, a restore point and rows; `pg_upgrade` to the next major; the upgraded
//! cluster's archive_command (and backup, create-repo) refused with the message that says to run
//! `pitr upgrade-repo`; `pitr upgrade-repo`; the upgraded cluster archiving, a backup of it, a
//! restore point and a recovery to it with exact rows; and the old backup still listed,
//! restorable and recoverable to its restore point with the old major's binaries (exact rows).
//!
//! pg_upgrade runs the old cluster's `pg_controldata`, `pg_ctl` and `postgres` from
//! `--old-bindir`, so both majors must be complete installs: Debian's PostgreSQL 15
//! (`/usr/lib/postgresql/15/bin`) and the builds `.ci/install-postgres-versions` installs into
//! `$PITR_PG_ROOT/complete/<major>` (default root `/var/cache/pitr/postgresql`). A missing one
//! fails the test with how to install it; nothing is skipped.
//!
//! The clusters here are not the harness's [`Cluster`] (one major per test run): [`Pg`] is a
//! small server of a chosen major in a [`TestDir`], run as the server user like the harness's.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

/// A complete PostgreSQL install of `major` (with pg_upgrade and pg_controldata).
fn complete_bindir(major: u32) -> PathBuf {
    let bindir = if major == 15 {
        PathBuf::from("/usr/lib/postgresql/15/bin")
    } else {
        let root =
            std::env::var_os("PITR_PG_ROOT").map_or_else(|| PathBuf::from("/var/cache/pitr/postgresql"), PathBuf::from);
        root.join("complete").join(major.to_string()).join("bin")
    };
    for program in ["initdb", "pg_ctl", "postgres", "pg_controldata", "pg_upgrade"] {
        assert!(
            bindir.join(program).is_file(),
            "{program} of PostgreSQL {major} is not in {}: the major-upgrade tests need complete installs; run \
             `bash .ci/install-postgres-versions` (15 is Debian's: apt-get install postgresql-15)",
            bindir.display()
        );
    }
    bindir
}

/// A PostgreSQL server of one major in a directory of the test (its socket directory too).
struct Pg {
    label: String,
    bindir: PathBuf,
    major: u32,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Pg {
    /// `initdb` of `major` into `<dir>/<name>` (C locale, UTF8, no data checksums: pg_upgrade
    /// needs the same on both sides, and 18 turns them on by default).
    fn init(dir: &TestDir, name: &str, major: u32) -> Pg {
        let bindir = complete_bindir(major);
        let data = dir.join(name);
        let mut initdb = server_command(bindir.join("initdb"));
        initdb.current_dir(dir.path()).arg("-D").arg(&data).args([
            "-A",
            "trust",
            "--no-sync",
            "--no-instructions",
            "--locale=C",
            "--encoding=UTF8",
        ]);
        if major >= 18 {
            initdb.arg("--no-data-checksums");
        }
        run_ok(&mut initdb);
        Pg {
            label: format!("PostgreSQL {major} in {}", data.display()),
            bindir,
            major,
            dir: dir.path().to_path_buf(),
            data,
            port: free_port(),
        }
    }

    /// Writes the test settings (port, private socket, archiving through `pitr` into `repo`)
    /// into an included file.
    fn configure(&self, pitr: &Path, repo: &Path) {
        let archive_command = format!("{} --repo {} archive-push %p", pitr.display(), repo.display());
        let settings = [
            ("port", self.port.to_string()),
            ("listen_addresses", "''".into()),
            ("unix_socket_directories", format!("'{}'", self.dir.display())),
            ("wal_level", "replica".into()),
            ("fsync", "off".into()),
            ("shared_buffers", "'32MB'".into()),
            ("max_connections", "20".into()),
            ("logging_collector", "off".into()),
            ("log_line_prefix", "'%m [%p] '".into()),
            ("lc_messages", "'C'".into()),
            ("archive_mode", "on".into()),
            ("archive_command", format!("'{archive_command}'")),
        ];
        let text: String = settings.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let include = self.data.join("pitr_test.conf");
        fs::write(&include, text).unwrap();
        let conf = self.data.join("postgresql.conf");
        let mut main = fs::read_to_string(&conf).unwrap();
        if !main.contains("include 'pitr_test.conf'") {
            main.push_str("\ninclude 'pitr_test.conf'\n");
            fs::write(&conf, main).unwrap();
        }
        give_to_server_user(&include);
        give_to_server_user(&conf);
    }

    fn pg_ctl(&self, args: &[&str]) -> CmdOutput {
        run(server_command(self.bindir.join("pg_ctl"))
            .current_dir(&self.dir)
            .arg("-D")
            .arg(&self.data)
            .args(args))
    }

    fn start(&self) {
        let log = self.log_path();
        let out = self.pg_ctl(&["-l", log.to_str().unwrap(), "-w", "-t", "120", "start"]);
        assert!(
            out.success(),
            "{}: start failed:\n{}\n{}",
            self.label,
            out.describe(),
            self.log_tail()
        );
    }

    fn stop(&self) {
        let out = self.pg_ctl(&["-m", "fast", "-w", "-t", "120", "stop"]);
        assert!(
            out.success(),
            "{}: stop failed:\n{}\n{}",
            self.label,
            out.describe(),
            self.log_tail()
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}.log", self.data.file_name().unwrap().to_str().unwrap()))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        format!("--- server log (tail) ---\n{}", tail(&self.log(), 40))
    }

    #[track_caller]
    fn psql(&self, sql: &str) -> String {
        try_psql_at(&self.dir, self.port, sql)
            .unwrap_or_else(|out| panic!("{}: psql failed:\n{}\n{}", self.label, out.describe(), self.log_tail()))
    }

    fn system_identifier(&self) -> u64 {
        self.psql("SELECT system_identifier FROM pg_control_system()")
            .parse()
            .unwrap()
    }

    fn rows(&self) -> u64 {
        self.psql("SELECT count(*) FROM t").parse().unwrap()
    }

    /// Writes a little WAL and switches to a new segment; returns the one closed.
    fn switch_wal(&self) -> String {
        self.psql("SELECT pg_logical_emit_message(false, 'pitr-test', 'switch')");
        self.psql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// pg_stat_archiver's failed_count.
    fn archive_failures(&self) -> u64 {
        self.psql("SELECT failed_count FROM pg_stat_archiver").parse().unwrap()
    }

    /// Waits until PostgreSQL archived `name` (pg_stat_archiver, which counts only exit 0).
    #[track_caller]
    fn wait_archived(&self, name: &str) {
        let done = poll(ARCHIVE_TIMEOUT, || {
            let last = self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            (last.as_str() >= name).then_some(())
        });
        assert!(
            done.is_some(),
            "{}: {name} was not archived\n{}",
            self.label,
            self.log_tail()
        );
    }

    /// `pitr --repo <repo> <args>` as the server user, connected to this server.
    fn pitr(&self, pitr: &Path, repo: &Path, args: &[&str]) -> CmdOutput {
        run(self.pitr_cmd(pitr, repo).args(args))
    }

    fn pitr_cmd(&self, pitr: &Path, repo: &Path) -> Command {
        let mut cmd = pitr_command(pitr);
        cmd.current_dir(&self.dir)
            .env("PGHOST", &self.dir)
            .env("PGPORT", self.port.to_string())
            .env("PGDATABASE", "postgres")
            .env("PITR_PG_BINDIR", &self.bindir)
            .arg("--repo")
            .arg(repo);
        cmd
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["-m", "immediate", "-w", "-t", "60", "stop"]);
        }
    }
}

/// `pg_upgrade` from `old` (stopped) into `new` (initdb'd, stopped), copying the files.
fn pg_upgrade(dir: &TestDir, old: &Pg, new: &Pg) {
    let work = dir.subdir("pg_upgrade");
    let out = run(server_command(new.bindir.join("pg_upgrade"))
        .current_dir(&work)
        .arg("--old-bindir")
        .arg(&old.bindir)
        .arg("--new-bindir")
        .arg(&new.bindir)
        .arg("--old-datadir")
        .arg(&old.data)
        .arg("--new-datadir")
        .arg(&new.data)
        .args([
            "--old-port",
            &free_port().to_string(),
            "--new-port",
            &free_port().to_string(),
        ])
        .arg("--socketdir")
        .arg(dir.path())
        .arg("--copy"));
    assert!(
        out.success(),
        "pg_upgrade {} -> {} failed:\n{}",
        old.major,
        new.major,
        out.describe()
    );
}

#[track_caller]
fn succeeded(out: CmdOutput, what: &str, server: &Pg) -> CmdOutput {
    assert!(
        out.success(),
        "{what} failed:\n{}\n{}",
        out.describe(),
        server.log_tail()
    );
    out
}

#[track_caller]
fn json_of(out: CmdOutput, what: &str, server: &Pg) -> Value {
    parse_json(&succeeded(out, what, server))
}

/// `pitr recover` of `repo` to the restore point `name` into a new directory, with the binaries
/// of `server`'s major; returns the plan and report, with the copy stopped again.
fn recover_to(server: &Pg, pitr: &Path, repo: &Path, name: &str) -> (Value, NewDir, String) {
    let into = NewDir::new();
    let out = server.pitr(
        pitr,
        repo,
        &[
            "recover",
            "--pgdata",
            into.data.to_str().unwrap(),
            "--target-name",
            name,
            "--port",
            &free_port().to_string(),
            "--verify-sql",
            "SELECT count(*) FROM t",
            "--json",
        ],
    );
    let server_log = into.server_log();
    assert!(
        out.success(),
        "recover to {name} failed:\n{}\n--- recovered server log ---\n{}",
        out.describe(),
        tail(&server_log, 40)
    );
    let result = parse_json(&out);
    let stop = run(server_command(server.bindir.join("pg_ctl"))
        .current_dir(into.dir.path())
        .arg("-D")
        .arg(&into.data)
        .args(["-m", "fast", "-w", "-t", "60", "stop"]));
    assert!(stop.success(), "stop the recovered copy:\n{}", stop.describe());
    (result, into, server_log)
}

/// The rows `--verify-sql` counted in a recover report.
fn verified_rows(result: &Value) -> u64 {
    result["report"]["verify_rows"][0][0]
        .as_str()
        .unwrap_or_else(|| panic!("no verify row in {result:#}"))
        .parse()
        .unwrap()
}

/// The whole story for one upgrade from `old_major` to `new_major`.
fn upgrade_keeps_the_old_generation(old_major: u32, new_major: u32) {
    let dir = TestDir::new("upgrade");
    let pitr = dir.install_pitr();
    let repo = dir.subdir("repo");

    // The old cluster archives through pitr: a backup, rows, a restore point, rows after it.
    let old = Pg::init(&dir, "old", old_major);
    old.configure(&pitr, &repo);
    old.start();
    succeeded(old.pitr(&pitr, &repo, &["create-repo"]), "create-repo", &old);
    old.psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)");
    let old_backup = json_of(old.pitr(&pitr, &repo, &["backup", "--fast", "--json"]), "backup", &old);
    let old_backup_id = old_backup["backup"]["id"].as_str().unwrap().to_string();
    old.psql("INSERT INTO t SELECT generate_series(101, 150)");
    succeeded(
        old.pitr(&pitr, &repo, &["restore-point", "before_upgrade"]),
        "restore-point",
        &old,
    );
    old.psql("INSERT INTO t SELECT generate_series(151, 175)");
    let last_old = old.switch_wal();
    old.wait_archived(&last_old);
    let old_sysid = old.system_identifier();
    old.stop();

    // pg_upgrade, then the upgraded cluster archives into the same repository: refused.
    let new = Pg::init(&dir, "new", new_major);
    pg_upgrade(&dir, &old, &new);
    new.configure(&pitr, &repo);
    new.start();
    let new_sysid = new.system_identifier();
    assert_ne!(
        old_sysid, new_sysid,
        "pg_upgrade gives the new cluster its own system identifier"
    );
    assert_eq!(new.rows(), 175, "pg_upgrade kept the rows");
    let refusal = format!(
        "the server is cluster {new_sysid} (PostgreSQL {new_major}), the repository's current generation is \
         cluster {old_sysid} (PostgreSQL {old_major}): after a major upgrade run `pitr upgrade-repo` once"
    );
    let failures_before = new.archive_failures();
    let refused_segment = new.switch_wal();
    let failed = poll(ARCHIVE_TIMEOUT, || {
        (new.archive_failures() > failures_before).then_some(())
    });
    assert!(
        failed.is_some(),
        "archiving {refused_segment} did not fail\n{}",
        new.log_tail()
    );
    assert!(
        new.log().contains("pitr archive-push: error: refusing ") && new.log().contains(&refusal),
        "the server log lacks the refusal {refusal:?}\n{}",
        new.log_tail()
    );
    assert!(
        !repo
            .join("wal")
            .join(&refused_segment[..16])
            .join(&refused_segment)
            .exists(),
        "the upgraded cluster's segment was stored in the old generation"
    );
    for args in [&["backup", "--fast"][..], &["create-repo"][..]] {
        let out = new.pitr(&pitr, &repo, args);
        out.assert_code(1);
        assert!(out.stderr_str().contains(&refusal), "{args:?}:\n{}", out.describe());
    }

    // One command: the upgraded cluster becomes generation 2 and archives from now on.
    let upgraded = json_of(
        new.pitr(&pitr, &repo, &["upgrade-repo", "--json"]),
        "upgrade-repo",
        &new,
    );
    assert_eq!(upgraded["previous"]["generation"], 1, "{upgraded:#}");
    assert_eq!(upgraded["previous"]["system_identifier"].as_u64(), Some(old_sysid));
    assert_eq!(upgraded["current"]["generation"], 2, "{upgraded:#}");
    assert_eq!(upgraded["current"]["system_identifier"].as_u64(), Some(new_sysid));
    assert_eq!(upgraded["current"]["pg_version"], new_major);
    let again = new.pitr(&pitr, &repo, &["upgrade-repo"]);
    again.assert_code(1);
    assert!(
        again.stderr_str().contains("already the current generation 2"),
        "{}",
        again.describe()
    );

    let first_new = new.switch_wal();
    new.wait_archived(&first_new);
    assert!(
        repo.join("wal.2")
            .join(&refused_segment[..16])
            .join(&refused_segment)
            .is_file(),
        "the segment refused before upgrade-repo is archived into generation 2 once it ran"
    );
    let new_backup = json_of(new.pitr(&pitr, &repo, &["backup", "--fast", "--json"]), "backup", &new);
    let new_backup_id = new_backup["backup"]["id"].as_str().unwrap().to_string();
    assert_eq!(new_backup["backup"]["generation"], 2);
    new.psql("INSERT INTO t SELECT generate_series(176, 205)");
    succeeded(
        new.pitr(&pitr, &repo, &["restore-point", "after_upgrade"]),
        "restore-point",
        &new,
    );
    new.psql("DELETE FROM t WHERE id > 100"); // the oops after the restore point
    let oops = new.switch_wal();
    new.wait_archived(&oops);

    // Both generations listed, grouped; verify checks both.
    let listing = json_of(new.pitr(&pitr, &repo, &["list", "--json"]), "list", &new);
    let generations: Vec<(String, u64)> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_str().unwrap().to_string(), b["generation"].as_u64().unwrap()))
        .collect();
    assert_eq!(generations, [(old_backup_id.clone(), 1), (new_backup_id.clone(), 2)]);
    let text = succeeded(new.pitr(&pitr, &repo, &["list"]), "list", &new).stdout_str();
    assert!(
        text.contains("generation 2 (current)")
            && text.contains(&format!(
                "generation 1 (recovered with PostgreSQL {old_major}'s binaries)"
            )),
        "{text}"
    );
    let info = json_of(new.pitr(&pitr, &repo, &["info", "--json"]), "info", &new);
    assert_eq!(info["generation"]["generation"], 2, "{info:#}");
    assert_eq!(
        info["earlier_generations"][0]["generation"]["generation"], 1,
        "{info:#}"
    );
    assert_eq!(
        info["earlier_generations"][0]["windows"][0]["from_backup"],
        old_backup_id.as_str(),
        "the old backup still has its recoverable window: {info:#}"
    );
    let points = json_of(
        new.pitr(&pitr, &repo, &["list", "restore-points", "--json"]),
        "list restore-points",
        &new,
    );
    for point in points.as_array().unwrap() {
        assert_eq!(point["recoverable"], true, "{point:#}");
    }
    let verified = new.pitr(&pitr, &repo, &["verify", "--json", "--log-file", "none"]);
    assert_eq!(
        verified.code(),
        Some(0),
        "verify of both generations:\n{}",
        verified.describe()
    );
    let report = parse_json(&verified);
    assert_eq!(report["backups_checked"], 2, "{report:#}");

    // The upgraded cluster recovers to its restore point with exact rows.
    let (recovered, _copy, _) = recover_to(&new, &pitr, &repo, "after_upgrade");
    assert_eq!(verified_rows(&recovered), 205, "{recovered:#}");
    assert_eq!(recovered["plan"]["generation"], 2);
    assert_eq!(recovered["plan"]["earlier_generation"], false);

    // The old backup recovers with the old major's binaries, from generation 1's WAL.
    let (recovered, copy, server_log) = recover_to(&old, &pitr, &repo, "before_upgrade");
    assert_eq!(verified_rows(&recovered), 150, "{recovered:#}");
    assert_eq!(recovered["plan"]["backup_id"], old_backup_id.as_str());
    assert_eq!(recovered["plan"]["generation"], 1);
    assert_eq!(recovered["plan"]["pg_version"], old_major);
    let notes = recovered["plan"]["notes"].to_string();
    assert!(notes.contains(&format!("PostgreSQL {old_major}'s binaries")), "{notes}");
    copy.assert_settings(&["archive-get --generation 1 %f %p"]);
    assert_eq!(
        fs::read_to_string(copy.data.join("PG_VERSION")).unwrap().trim(),
        old_major.to_string()
    );
    assert!(server_log.contains("restored log file"), "{server_log}");

    // ... and restores as files alone.
    let files = NewDir::new();
    let restored = old.pitr(
        &pitr,
        &repo,
        &[
            "restore",
            "--pgdata",
            files.data.to_str().unwrap(),
            "--backup",
            &old_backup_id,
        ],
    );
    succeeded(restored, "restore of the old backup", &old);
    assert_eq!(
        fs::read_to_string(files.data.join("PG_VERSION")).unwrap().trim(),
        old_major.to_string()
    );

    // Retention counts over both generations; the old WAL goes with the old generation's last backup.
    let config = dir.write("pitr.toml", "keep_hourly = 1\n");
    let expire = new.pitr(
        &pitr,
        &repo,
        &["--config", config.to_str().unwrap(), "expire", "--dry-run", "--json"],
    );
    let plan = json_of(expire, "expire --dry-run", &new);
    assert_eq!(plan["backups"][0]["id"], old_backup_id.as_str(), "{plan:#}");
    assert_eq!(plan["earlier_generations"][0]["generation"], 1, "{plan:#}");
    assert_eq!(plan["earlier_generations"][0]["wal_kept_from"], Value::Null, "{plan:#}");
    let expire = new.pitr(&pitr, &repo, &["expire", "--dry-run", "--json"]);
    let plan = json_of(expire, "expire --dry-run", &new);
    assert_eq!(plan["backups"], serde_json::json!([]), "{plan:#}");
    assert_eq!(
        plan["earlier_generations"][0]["wal"],
        serde_json::json!([]),
        "the old backup keeps its WAL: {plan:#}"
    );
}

#[test]
fn upgrade_15_to_16_with_pg_upgrade_keeps_the_old_backups_and_archives_the_new_cluster() {
    upgrade_keeps_the_old_generation(15, 16);
}

#[test]
fn upgrade_17_to_18_with_pg_upgrade_keeps_the_old_backups_and_archives_the_new_cluster() {
    upgrade_keeps_the_old_generation(17, 18);
}
