//! `pitr drill` against real PostgreSQL servers: the newest backup of each tier recovered aside
//! and its data checked. The proof that it catches what `verify` cannot: a heap page corrupted in
//! the source cluster (without data checksums) is stored faithfully by the backup, so verify's
//! checksums of the stored objects pass, and only amcheck on a restored copy finds it. A drill
//! whose WAL is damaged fails and says why.
//!
//! pitr runs with PGHOST pointing at no server: a drill never connects to production.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// `pitr --repo <repo> <args…>`, with the libpq environment pointing at no server.
fn pitr(c: &Cluster, args: &[&str]) -> CmdOutput {
    run(c
        .pitr_cmd()
        .env("PGHOST", c.dir().join("no-server-here"))
        .env("PGDATABASE", "postgres")
        .arg("--repo")
        .arg(c.repo())
        .args(args))
}

/// A scratch parent directory for the copies, the server user's.
fn scratch_of(c: &Cluster) -> PathBuf {
    let scratch = c.test_dir().subdir("scratch");
    give_to_server_user(&scratch);
    scratch
}

/// `pitr drill --json --scratch <scratch> <args…>`, expecting exit `code`; its report.
#[track_caller]
fn drill(c: &Cluster, scratch: &Path, args: &[&str], code: i32) -> Value {
    let mut all = vec!["drill", "--json", "--scratch", scratch.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = pitr(c, &all);
    out.assert_code(code);
    parse_json(&out)
}

/// The checks of a drill record that failed, as "check: detail".
fn failed_checks(drill: &Value) -> Vec<String> {
    drill["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["passed"] != true)
        .map(|c| format!("{}: {}", json_str(c, "check"), json_str(c, "detail")))
        .collect()
}

/// `pitr verify --json`, expecting exit `code`; its report.
#[track_caller]
fn verify(c: &Cluster, args: &[&str], code: i32) -> Value {
    let mut all = vec!["verify", "--json", "--log-file", "none"];
    all.extend_from_slice(args);
    let out = pitr(c, &all);
    out.assert_code(code);
    parse_json(&out)
}

#[test]
fn drills_of_every_tier_pass_are_recorded_and_exported_and_leave_nothing() {
    let c = Cluster::start(ClusterOptions::default().data_checksums());
    c.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 2000) g");
    let scratch = scratch_of(&c);
    // Nothing to drill yet: not a failure (BackupMissing tells of it), nothing recorded.
    let out = pitr(&c, &["drill", "--scratch", scratch.to_str().unwrap()]);
    out.assert_code(0);
    assert!(out.stdout_str().contains("no backup to drill"), "{}", out.describe());
    let report = drill(&c, &scratch, &["--all"], 0);
    assert!(
        json_str(&report, "nothing_to_drill").contains("no backup to drill"),
        "{report:#}"
    );
    assert_eq!(report["drills"], serde_json::json!([]), "{report:#}");
    backup_ok(&c, &["--tier", "hourly"]);
    backup_ok(&c, &["--tier", "daily"]);
    let out = pitr(
        &c,
        &["drill", "--tier", "weekly", "--scratch", scratch.to_str().unwrap()],
    );
    out.assert_code(1);
    assert!(
        out.stderr_str().contains("no weekly backup to drill"),
        "{}",
        out.describe()
    );
    assert!(!c.repo().join("drills").exists(), "a refused drill records nothing");

    let report = drill(&c, &scratch, &["--all", "--verify-sql", "SELECT count(*) FROM t"], 0);
    let drills = report["drills"].as_array().unwrap();
    assert_eq!(drills.len(), 2, "{report:#}");
    for d in drills {
        assert_eq!(d["passed"], true, "{d:#}");
        assert!(d["rto_seconds"].as_f64().unwrap() > 0.0, "{d:#}");
        assert!(d["bytes_restored"].as_u64().unwrap() > 0, "{d:#}");
        let checks: Vec<&str> = d["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| json_str(c, "check"))
            .collect();
        assert_eq!(checks, ["recovery", "amcheck", "verify_sql", "checksums"], "{d:#}");
        assert!(json_str(&d["checks"][2], "detail").contains("2000"), "{d:#}");
    }
    assert_copy_gone(&scratch);

    // Interrupted once its copy's server runs in the config file's scratch directory (as the
    // daemon's job, without --scratch): stopped, removed, nothing recorded.
    let config = c.test_dir().write(
        "pitr.toml",
        format!("keep_hourly = 1\n[drill]\nscratch = \"{}\"\n", scratch.display()),
    );
    let mut command = c.pitr_cmd();
    command
        .env("PGHOST", c.dir().join("no-server-here"))
        .arg("--repo")
        .arg(c.repo())
        .arg("--config")
        .arg(&config)
        .args(["drill", "--tier", "hourly"]);
    let cmdline = cmdline(&command);
    let child = spawn(&mut command);
    let started = poll(std::time::Duration::from_secs(60), || {
        let copy = std::fs::read_dir(&scratch).ok()?.flatten().next()?.path();
        copy.join("data/postmaster.pid").exists().then_some(())
    });
    assert!(started.is_some(), "the drill's copy never started");
    let out = terminate_pitr(child, cmdline, std::time::Duration::from_secs(60));
    assert_eq!(out.code(), Some(130), "{}", out.describe());
    assert!(out.stderr_str().contains("nothing recorded"), "{}", out.describe());
    assert_copy_gone(&scratch);

    let list = pitr(&c, &["drill", "list", "--json"]);
    list.assert_code(0);
    let list = parse_json(&list);
    let tiers: Vec<&str> = list["drills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| json_str(d, "tier"))
        .collect();
    assert_eq!(tiers.len(), 2, "{list:#}");
    assert!(tiers.contains(&"hourly") && tiers.contains(&"daily"), "{list:#}");
    let text = pitr(&c, &["drill", "list"]);
    assert!(text.stdout_str().contains("passed"), "{}", text.describe());

    // A second repository gets the drill history with the backups.
    let copy = c.test_dir().subdir("copy");
    let synced = pitr(&c, &["sync", "--json", "--to", copy.to_str().unwrap()]);
    assert_eq!(
        parse_json(synced.assert_success())["drills_copied"],
        2,
        "{}",
        synced.describe()
    );
    let listed = c.pitr_with_repo(&copy, &["drill", "list", "--json"]);
    assert_eq!(
        parse_json(listed.assert_success())["drills"],
        list["drills"],
        "{}",
        listed.describe()
    );

    // A stray name in drills/ is reported, never taken for a record.
    let stray = c.repo().join("drills").join("20261207T040000_yearly.json");
    std::fs::write(&stray, b"{}").unwrap();
    let list = parse_json(&pitr(&c, &["drill", "list", "--json"]));
    assert_eq!(list["drills"].as_array().unwrap().len(), 2, "{list:#}");
    assert!(
        list["unreadable"][0]
            .as_str()
            .unwrap()
            .contains("not a drill record name"),
        "{list:#}"
    );
    let report = verify(&c, &[], 2);
    assert!(
        alerts_of(&report, "alerts").contains(&("DrillFailed".to_string(), "drills".to_string())),
        "{report:#}"
    );
    std::fs::remove_file(&stray).unwrap();

    let metrics = c.test_dir().join("pitr.prom");
    verify(&c, &["--metrics-file", metrics.to_str().unwrap()], 0);
    let text = String::from_utf8(read(&metrics)).unwrap();
    for tier in ["hourly", "daily"] {
        for gauge in [
            "pitr_drill_last_success_timestamp_seconds",
            "pitr_drill_rto_seconds",
            "pitr_drill_rpo_seconds",
        ] {
            let sample = format!("{gauge}{{tier=\"{tier}\"}} ");
            assert!(metric(&text, &sample).is_some(), "no {sample} in:\n{text}");
        }
    }

    // Expire: a second hourly drill of the same backup, then a newer hourly backup; with one
    // hourly backup kept, the first backup goes with its older record; its newest record, the
    // hourly tier's newest, stays, and so does the daily one.
    let first_hourly = json_str(&drills[0], "backup_id").to_string();
    let first_records = record_names(&c);
    let again = drill(&c, &scratch, &["--tier", "hourly"], 0);
    assert_eq!(json_str(&again["drills"][0], "backup_id"), first_hourly, "{again:#}");
    backup_ok(&c, &["--tier", "hourly"]);
    let records = record_names(&c);
    let old_record = first_records
        .iter()
        .find(|r| r.ends_with("_hourly.json"))
        .unwrap()
        .clone();
    let config = config.to_str().unwrap();
    let planned = parse_json(pitr(&c, &["--config", config, "expire", "--dry-run", "--json"]).assert_success());
    let planned_drills: Vec<&str> = planned["drills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| json_str(d, "record"))
        .collect();
    assert_eq!(planned_drills, [format!("drills/{old_record}")], "{planned:#}");
    assert_eq!(record_names(&c), records, "--dry-run deletes nothing");
    let text = pitr(&c, &["--config", config, "expire", "--dry-run"]);
    assert!(
        text.stdout_str()
            .contains(&format!("would delete drill record drills/{old_record}")),
        "{}",
        text.describe()
    );
    let expired = parse_json(pitr(&c, &["--config", config, "expire", "--json"]).assert_success());
    assert_eq!(expired["backups"][0]["id"], first_hourly.as_str(), "{expired:#}");
    assert_eq!(expired["drills"].as_array().unwrap().len(), 1, "{expired:#}");
    let left: Vec<String> = records.into_iter().filter(|r| *r != old_record).collect();
    assert_eq!(record_names(&c), left, "only the old hourly record goes");
    let list = parse_json(pitr(&c, &["drill", "list", "--json"]).assert_success());
    let listed: Vec<(&str, &str)> = list["drills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (json_str(d, "tier"), json_str(d, "backup_id")))
        .collect();
    assert_eq!(listed.len(), 2, "{list:#}");
    assert!(listed.contains(&("hourly", first_hourly.as_str())), "{list:#}");
    let report = verify(&c, &[], 0);
    let verified: Vec<(&str, &str)> = report["drills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (json_str(d, "tier"), json_str(d, "backup_id")))
        .collect();
    assert!(verified.contains(&("hourly", first_hourly.as_str())), "{report:#}");
    assert!(verified.iter().any(|d| d.0 == "daily"), "{report:#}");
}

/// The names in the repository's drills/, sorted.
fn record_names(c: &Cluster) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(c.repo().join("drills"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_corrupt_heap_page_passes_verify_and_fails_the_drill() {
    let mut c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 500) g");
    let file = c.data_dir().join(c.psql("SELECT pg_relation_filepath('t')"));
    c.stop();
    // Page 0's line pointer array (after the 24-byte page header): normal items (flags 1) of
    // 100 bytes at offset 32767, beyond the 8 kB page.
    let pointer = (0x7FFFu32 | 1 << 15 | 100 << 17).to_le_bytes();
    let mut data = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    data.seek(SeekFrom::Start(24)).unwrap();
    data.write_all(&pointer.repeat(8)).unwrap();
    drop(data);
    c.start_server();
    backup_ok(&c, &["--tier", "daily"]);

    let report = verify(&c, &[], 0);
    assert!(
        !alerts_of(&report, "alerts")
            .iter()
            .any(|a| a.0 == "BackupVerificationFailed"),
        "{report:#}"
    );

    let scratch = scratch_of(&c);
    let report = drill(&c, &scratch, &[], 2);
    let failed = failed_checks(&report["drills"][0]);
    assert!(
        failed
            .iter()
            .any(|f| f.starts_with("amcheck: corruption in heap table postgres.public.t")),
        "{report:#}"
    );
    assert_copy_gone(&scratch);

    let report = verify(&c, &[], 2);
    let alerts = alerts_of(&report, "alerts");
    assert!(
        alerts.contains(&("DrillFailed".to_string(), "daily".to_string())),
        "{report:#}"
    );
    assert!(report.to_string().contains("public.t"), "{report:#}");
}

#[test]
fn a_drill_whose_wal_is_damaged_fails_and_says_why() {
    let c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 100) AS n");
    let backup = backup_json(&c, &["--tier", "hourly"])["backup"].clone();
    c.psql("INSERT INTO t SELECT generate_series(101, 200)");
    c.switch_and_archive();
    // The segment the backup needs to reach consistency, damaged in the repository.
    let needed = json_str(&backup, "last_wal").to_string();
    flip_byte_from_end(&stored_path(c.repo(), &needed), 100);

    // Replay to the backup's consistency point stops at the damaged segment; a random target
    // is refused while the plan reads the archived WAL for it.
    let scratch = scratch_of(&c);
    for args in [&["--tier", "hourly"][..], &["--tier", "hourly", "--random"]] {
        let report = drill(&c, &scratch, args, 2);
        let failed = failed_checks(&report["drills"][0]);
        assert!(
            failed
                .iter()
                .any(|f| f.starts_with("recovery: ") && f.contains(&needed)),
            "{report:#}"
        );
        assert_copy_gone(&scratch);
    }
}
