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
//! Both clusters are the harness's [`Cluster`]s on those installs ([`ClusterOptions::bindir`]:
//! their `pg_ctl` and `postgres`, and `PITR_PG_BINDIR` for their `pitr` commands), with data
//! checksums on both sides as pg_upgrade needs (18's initdb turns them on by default, older ones
//! off), archiving into one repository. The new one is initdb'd, configured and started by the
//! harness, stopped, filled by `pg_upgrade` from the stopped old one and started again with the
//! harness's configuration, which pg_upgrade leaves alone (checked: its archive_command into the
//! shared repository). Its archive_mode stays off until after pg_upgrade: the server would
//! otherwise offer its first segment, refused, at every shutdown (pg_upgrade shuts it down
//! several times), retrying for seconds each time.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// A complete PostgreSQL install of `major` (with pg_upgrade and pg_controldata).
fn complete_bindir(major: u32) -> PathBuf {
    let bindir = if major == 15 {
        PathBuf::from("/usr/lib/postgresql/15/bin")
    } else {
        pg_root().join("complete").join(major.to_string()).join("bin")
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

/// A cluster of PostgreSQL `major` on its complete install, with data checksums, archiving into
/// `repo`.
fn options(major: u32, repo: &Path) -> ClusterOptions {
    ClusterOptions::default()
        .bindir(&complete_bindir(major))
        .data_checksums()
        .repo(repo)
}

/// Starts a cluster of [`options`] and checks that it runs `major` with data checksums.
fn start(major: u32, opts: ClusterOptions) -> Cluster {
    let c = Cluster::start(opts);
    assert_eq!(c.major_version(), major, "the cluster runs PostgreSQL {major}");
    assert_eq!(c.psql("SHOW data_checksums"), "on", "initdb --data-checksums");
    c
}

/// `pg_upgrade` from `old` (stopped) into `new` (initdb'd, stopped), copying the files, with
/// `work` as its working directory and socket directory.
fn pg_upgrade(work: &TestDir, old: &Cluster, new: &Cluster) {
    let out = run(server_command(new.bindir().join("pg_upgrade"))
        .current_dir(work.path())
        .arg("--old-bindir")
        .arg(old.bindir())
        .arg("--new-bindir")
        .arg(new.bindir())
        .arg("--old-datadir")
        .arg(old.data_dir())
        .arg("--new-datadir")
        .arg(new.data_dir())
        .args([
            "--old-port",
            &free_port().to_string(),
            "--new-port",
            &free_port().to_string(),
        ])
        .arg("--socketdir")
        .arg(work.path())
        .arg("--copy"));
    assert!(
        out.success(),
        "pg_upgrade {} -> {} failed:\n{}\n{}",
        pg_version(old),
        pg_version(new),
        out.describe(),
        pg_upgrade_logs(new)
    );
}

/// The major a cluster's data directory is of (its `PG_VERSION`), also while it is stopped.
fn pg_version(c: &Cluster) -> String {
    String::from_utf8_lossy(&read(&c.data_dir().join("PG_VERSION")))
        .trim()
        .to_string()
}

/// The tails of the logs pg_upgrade keeps in the new data directory when it fails.
fn pg_upgrade_logs(new: &Cluster) -> String {
    let mut logs = Vec::new();
    let mut dirs = vec![new.data_dir().join("pg_upgrade_output.d")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "log" || e == "txt") {
                let text = String::from_utf8_lossy(&read(&path)).into_owned();
                logs.push(format!("--- {} (tail) ---\n{}", path.display(), tail(&text, 20)));
            }
        }
    }
    logs.join("\n")
}

/// [`Cluster::pitr_ok`], its stdout parsed as JSON.
#[track_caller]
fn pitr_json(c: &Cluster, args: &[&str]) -> Value {
    parse_json(&c.pitr_ok(args))
}

/// The rows of the test table.
fn rows(c: &Cluster) -> u64 {
    c.psql("SELECT count(*) FROM t").parse().unwrap()
}

/// pg_stat_archiver's failed_count.
fn archive_failures(c: &Cluster) -> u64 {
    c.archiver_stats().2
}

/// `pitr recover` of `c`'s repository to the restore point `name` into a new directory, with
/// `c`'s binaries (its `PITR_PG_BINDIR`); returns the plan and report, with the copy stopped again.
fn recover_to(c: &Cluster, name: &str) -> (Value, NewDir, String) {
    let into = NewDir::new();
    let out = c.pitr_connected(
        c.repo(),
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
        "recover to {name} failed:\n{}\n--- recovered server log (tail) ---\n{}",
        out.describe(),
        tail(&server_log, 40)
    );
    let result = parse_json(&out);
    let stop = run(server_command(c.bindir().join("pg_ctl"))
        .current_dir(into.dir.path())
        .arg("-D")
        .arg(&into.data)
        .args(["-m", "fast", "-w", "-t", "60", "stop"]));
    assert!(
        stop.success(),
        "stop the recovered copy:\n{}\n--- recovered server log (tail) ---\n{}",
        stop.describe(),
        tail(&into.server_log(), 40)
    );
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
    // The repository both clusters archive into, pitr's configuration and pg_upgrade's directory.
    let dir = TestDir::new("upgrade");
    let repo = dir.subdir("repo");

    // The old cluster archives through pitr: a backup, rows, a restore point, rows after it.
    let mut old = start(old_major, options(old_major, &repo));
    old.pitr_ok(&["create-repo"]);
    old.psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)");
    let old_backup = backup_json(&old, &[]);
    let old_backup_id = json_str(&old_backup["backup"], "id").to_string();
    old.psql("INSERT INTO t SELECT generate_series(101, 150)");
    old.pitr_ok(&["restore-point", "before_upgrade"]);
    old.psql("INSERT INTO t SELECT generate_series(151, 175)");
    old.switch_and_archive();
    let old_sysid = old.system_identifier();
    old.stop();

    // pg_upgrade into a new cluster the harness made and stopped again, its archive_command
    // into the same repository but archive_mode off until then (else its first segment would be
    // refused at every shutdown, and pg_upgrade shuts it down several times); then it starts
    // archiving with the harness's configuration, which pg_upgrade left alone: refused.
    let mut new = start(new_major, options(new_major, &repo).setting("archive_mode", "off"));
    new.stop();
    pg_upgrade(&dir, &old, &new);
    new.set("archive_mode", "on");
    let log_before_upgrade = new.log().len();
    new.start_server();
    assert_eq!(new.major_version(), new_major);
    assert_eq!(
        new.psql("SHOW archive_command"),
        format!("{} --repo {} archive-push %p", new.pitr_bin().display(), repo.display()),
        "pg_upgrade keeps the new cluster's configuration"
    );
    assert_eq!(new.psql("SHOW archive_mode"), "on");
    let new_sysid = new.system_identifier();
    assert_ne!(
        old_sysid, new_sysid,
        "pg_upgrade gives the new cluster its own system identifier"
    );
    assert_eq!(rows(&new), 175, "pg_upgrade kept the rows");
    let refusal = format!(
        "the server is cluster {new_sysid} (PostgreSQL {new_major}), the repository's current generation is \
         cluster {old_sysid} (PostgreSQL {old_major}): after a major upgrade run `pitr upgrade-repo` once"
    );
    let failures_before = archive_failures(&new);
    let refused_segment = new.switch_wal();
    let failed = poll(ARCHIVE_TIMEOUT, || {
        (archive_failures(&new) > failures_before).then_some(())
    });
    assert!(
        failed.is_some(),
        "archiving {refused_segment} did not fail\n--- server log (tail) ---\n{}",
        new.log_tail()
    );
    let log = new.log().split_off(log_before_upgrade);
    assert!(
        log.contains("pitr archive-push: error: refusing ") && log.contains(&refusal),
        "the server log lacks the refusal {refusal:?}\n--- server log (tail) ---\n{}",
        new.log_tail()
    );
    assert!(
        !stored_path(&repo, &refused_segment).exists(),
        "the upgraded cluster's segment was stored in the old generation"
    );
    for args in [&["backup", "--fast"][..], &["create-repo"][..], &["check"][..]] {
        let out = new.pitr_connected(&repo, args);
        out.assert_code(1);
        assert!(out.stderr_str().contains(&refusal), "{args:?}:\n{}", out.describe());
    }

    // One command: the upgraded cluster becomes generation 2 and archives from now on.
    let upgraded = pitr_json(&new, &["upgrade-repo", "--json"]);
    assert_eq!(upgraded["previous"]["generation"], 1, "{upgraded:#}");
    assert_eq!(upgraded["previous"]["system_identifier"].as_u64(), Some(old_sysid));
    assert_eq!(upgraded["current"]["generation"], 2, "{upgraded:#}");
    assert_eq!(upgraded["current"]["system_identifier"].as_u64(), Some(new_sysid));
    assert_eq!(upgraded["current"]["pg_version"], new_major);
    let again = new.pitr_connected(&repo, &["upgrade-repo"]);
    again.assert_code(1);
    assert!(
        again.stderr_str().contains("already the current generation 2"),
        "{}",
        again.describe()
    );

    new.switch_and_archive();
    let checked = new.pitr_ok(&["check"]).stdout_str();
    assert!(checked.contains("archiving into this repository works"), "{checked}");
    assert!(
        repo.join("wal.2")
            .join(&refused_segment[..16])
            .join(&refused_segment)
            .is_file(),
        "the segment refused before upgrade-repo is archived into generation 2 once it ran"
    );
    let new_backup = backup_json(&new, &[]);
    let new_backup_id = json_str(&new_backup["backup"], "id").to_string();
    assert_eq!(new_backup["backup"]["generation"], 2);
    new.psql("INSERT INTO t SELECT generate_series(176, 205)");
    new.pitr_ok(&["restore-point", "after_upgrade"]);
    new.psql("DELETE FROM t WHERE id > 100"); // the oops after the restore point
    new.switch_and_archive();

    // Both generations listed, grouped; verify checks both.
    let listing = pitr_json(&new, &["list", "--json"]);
    let generations: Vec<(String, u64)> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["id"].as_str().unwrap().to_string(), b["generation"].as_u64().unwrap()))
        .collect();
    assert_eq!(generations, [(old_backup_id.clone(), 1), (new_backup_id.clone(), 2)]);
    let text = new.pitr_ok(&["list"]).stdout_str();
    assert!(
        text.contains("generation 2 (current)")
            && text.contains(&format!(
                "generation 1 (recovered with PostgreSQL {old_major}'s binaries)"
            )),
        "{text}"
    );
    let info = pitr_json(&new, &["info", "--json"]);
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
    let points = pitr_json(&new, &["list", "restore-points", "--json"]);
    for point in points.as_array().unwrap() {
        assert_eq!(point["recoverable"], true, "{point:#}");
    }
    let verified = new.pitr_connected(&repo, &["verify", "--json", "--log-file", "none"]);
    assert_eq!(
        verified.code(),
        Some(0),
        "verify of both generations:\n{}",
        verified.describe()
    );
    let report = parse_json(&verified);
    assert_eq!(report["backups_checked"], 2, "{report:#}");

    // The upgraded cluster recovers to its restore point with exact rows.
    let (recovered, _copy, _) = recover_to(&new, "after_upgrade");
    assert_eq!(verified_rows(&recovered), 205, "{recovered:#}");
    assert_eq!(recovered["plan"]["generation"], 2);
    assert_eq!(recovered["plan"]["earlier_generation"], false);

    // The old backup recovers with the old major's binaries, from generation 1's WAL.
    let (recovered, copy, server_log) = recover_to(&old, "before_upgrade");
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
    old.pitr_ok(&[
        "restore",
        "--pgdata",
        files.data.to_str().unwrap(),
        "--backup",
        &old_backup_id,
    ]);
    assert_eq!(
        fs::read_to_string(files.data.join("PG_VERSION")).unwrap().trim(),
        old_major.to_string()
    );

    // Retention counts over both generations; the old WAL goes with the old generation's last backup.
    let config = dir.write("pitr.toml", "keep_hourly = 1\n");
    let plan = pitr_json(
        &new,
        &["--config", config.to_str().unwrap(), "expire", "--dry-run", "--json"],
    );
    assert_eq!(plan["backups"][0]["id"], old_backup_id.as_str(), "{plan:#}");
    assert_eq!(plan["earlier_generations"][0]["generation"], 1, "{plan:#}");
    assert_eq!(plan["earlier_generations"][0]["wal_kept_from"], Value::Null, "{plan:#}");
    let plan = pitr_json(&new, &["expire", "--dry-run", "--json"]);
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
