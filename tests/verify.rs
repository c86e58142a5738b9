//! `pitr verify`, `check-integrity`, `check` and `info` against real servers and repositories:
//! a healthy repository verifies with exit 0 (and its JSON, log line and metrics file parse);
//! a flipped byte in a backup file or a WAL file, and a deleted segment, are critical alerts
//! naming the file; an old newest backup is a warning, a missing one critical; a quiet archive
//! beside a writing server is stale; runbook-style dumps pass or fail `check-integrity` with
//! the reason; `pitr check` passes on a configured cluster and names each misconfiguration.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `pitr --repo <repo> <args…>` as the server user; connected to `server` through the libpq
/// environment, or else pointed at a socket directory where no server runs.
fn pitr(c: &Cluster, repo: &Path, server: Option<&Cluster>, args: &[&str]) -> CmdOutput {
    let mut cmd = c.pitr_cmd();
    match server {
        Some(s) => s.libpq_env(&mut cmd),
        None => cmd
            .env("PGHOST", c.dir().join("no-server-here"))
            .env("PGDATABASE", "postgres"),
    };
    run(cmd.arg("--repo").arg(repo).args(args))
}

/// `pitr backup --fast --json --tier <tier>` of `c` into its repository ([`backup_json`]); the
/// `backup` object of its JSON summary.
#[track_caller]
fn take_backup(c: &Cluster, tier: &str) -> Value {
    backup_json(c, &["--tier", tier])["backup"].clone()
}

/// The reason of the first alert named `alert`.
fn reason_of(report: &Value, key: &str, alert: &str) -> String {
    report[key]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["alert"] == alert)
        .and_then(|a| a["reason"].as_str())
        .unwrap_or_else(|| panic!("no {alert} in {report:#}"))
        .to_string()
}

/// Runs `verify <args…> --json`, asserts the exit code, and returns the report.
#[track_caller]
fn verify_json(c: &Cluster, server: Option<&Cluster>, args: &[&str], code: i32) -> Value {
    let mut all = vec!["verify", "--json", "--log-file", "none"];
    all.extend_from_slice(args);
    let out = pitr(c, c.repo(), server, &all);
    out.assert_code(code);
    parse_json(&out)
}

/// The samples of a Prometheus textfile, checked to be well-formed on the way: every sample is
/// `name{labels} number` and its family is declared with HELP and TYPE.
fn read_metrics(path: &Path) -> BTreeMap<String, f64> {
    let text = String::from_utf8(read(path)).expect("UTF-8 metrics");
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let family = series.split('{').next().unwrap();
        for declaration in ["HELP", "TYPE"] {
            assert!(
                text.contains(&format!("# {declaration} {family} ")),
                "{family} lacks {declaration}"
            );
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(samples.insert(series.to_string(), value).is_none(), "{series} twice");
    }
    samples
}

fn time_of(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap_or_else(|| panic!("not a time: {value}")))
        .unwrap()
        .with_timezone(&Utc)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339()
}

/// Switches WAL `n` times, waiting for each segment to be archived; their names.
fn archive_segments(c: &Cluster, n: usize) -> Vec<String> {
    (0..n).map(|_| c.switch_and_archive()).collect()
}

/// The largest stored file of a backup, relative to its `files/` directory.
fn largest_backup_file(backup_dir: &Path) -> String {
    fn walk(dir: &Path, out: &mut Vec<(u64, PathBuf)>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), out);
            } else {
                out.push((entry.metadata().unwrap().len(), entry.path()));
            }
        }
    }
    let files = backup_dir.join("files");
    let mut all = Vec::new();
    walk(&files.join("base"), &mut all);
    let (_, path) = all.into_iter().max().expect("backup files");
    path.strip_prefix(&files).unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// verify, info and check-integrity on a healthy repository
// ---------------------------------------------------------------------------------------------

#[test]
fn a_healthy_repository_verifies_with_exit_0_and_its_json_log_and_metrics_parse() {
    let c = Cluster::start(ClusterOptions::default());
    let backup = take_backup(&c, "daily");
    let id = backup["id"].as_str().unwrap().to_string();
    let segments = archive_segments(&c, 2);
    let log = c.test_dir().join("verify.log");
    let prom = c.test_dir().subdir("textfile").join("pitr.prom");
    let (log_arg, prom_arg) = (log.to_str().unwrap(), prom.to_str().unwrap());

    let out = pitr(
        &c,
        c.repo(),
        Some(&c),
        &["verify", "--json", "--log-file", log_arg, "--metrics-file", prom_arg],
    );
    out.assert_code(0);
    let report = parse_json(&out);
    assert_eq!(report["status"], "ok", "{report:#}");
    assert_eq!(alerts_of(&report, "alerts"), []);
    assert_eq!(report["backups_checked"], 1);
    assert!(
        report["read"]["objects"].as_u64().unwrap() > 100,
        "every backup file is read"
    );
    assert_eq!(report["server"]["state"], "primary", "{report:#}");
    let window = &report["repository"]["windows"][0];
    assert_eq!(
        (window["timeline"].as_u64(), window["from_backup"].as_str()),
        (Some(1), Some(id.as_str()))
    );
    assert_eq!(
        window["end_wal"],
        segments[1].as_str(),
        "the window reaches the newest segment"
    );

    let metrics = read_metrics(&prom);
    let value = |series: &str| {
        *metrics
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {metrics:#?}"))
    };
    assert_eq!(value("pitr_verify_status{scope=\"all\"}"), 0.0);
    assert_eq!(value("pitr_backups{tier=\"daily\"}"), 1.0);
    assert_eq!(value("pitr_backups{tier=\"hourly\"}"), 0.0);
    assert_eq!(value("pitr_alerts{alert=\"BackupMissing\",severity=\"critical\"}"), 0.0);
    assert_eq!(value("pitr_wal_missing_segments"), 0.0);
    let stop = time_of(&backup["stop_time"]).timestamp_millis() as f64 / 1000.0;
    assert_eq!(value("pitr_backup_newest_timestamp_seconds{tier=\"daily\"}"), stop);
    let (start, end) = (
        value("pitr_recoverable_window_start_timestamp_seconds{timeline=\"1\"}"),
        value("pitr_recoverable_window_end_timestamp_seconds{timeline=\"1\"}"),
    );
    assert!(start == stop && end >= start, "window {start}..{end}");
    assert!(value("pitr_verify_read_bytes_per_second{scope=\"all\"}") > 0.0);

    let text = pitr(&c, c.repo(), Some(&c), &["verify", "--log-file", log_arg]);
    text.assert_code(0);
    assert!(
        text.stdout_str().starts_with("verify all: OK (0 alerts)"),
        "{}",
        text.describe()
    );
    let lines = String::from_utf8(read(&log)).unwrap();
    assert_eq!(lines.lines().count(), 2, "one line per run:\n{lines}");
    assert!(
        lines
            .lines()
            .all(|l| l.contains(" verify all: ok (0 alerts); 1 backup, ")),
        "{lines}"
    );

    for (scope, code) in [("daily", 0), ("wal", 0), ("weekly", 2)] {
        let report = verify_json(&c, None, &[scope], code);
        assert_eq!(report["scope"], scope);
        if code == 2 {
            assert_eq!(
                alerts_of(&report, "alerts"),
                [("BackupMissing".to_string(), "weekly".to_string())]
            );
        }
    }

    let info = pitr(&c, c.repo(), None, &["info", "--json"]);
    info.assert_code(0);
    let info = parse_json(&info);
    assert_eq!(info["windows"][0]["from_backup"], id.as_str());
    assert_eq!(info["tiers"][1]["backups"][0]["id"], id.as_str(), "{info:#}");
    assert!(pitr(&c, c.repo(), None, &["info"])
        .stdout_str()
        .contains("recover to any moment from"));

    let backup_dir = c.repo_dir().join("daily").join(&id);
    let wal_file = stored_path(c.repo_dir(), &segments[0]);
    for target in [backup_dir.to_str().unwrap(), id.as_str(), wal_file.to_str().unwrap()] {
        let out = pitr(&c, c.repo(), None, &["check-integrity", target]);
        out.assert_code(0);
        assert!(out.stdout_str().starts_with("sound: "), "{}", out.describe());
    }
}

// ---------------------------------------------------------------------------------------------
// Corruption and gaps
// ---------------------------------------------------------------------------------------------

#[test]
fn a_flipped_byte_or_a_deleted_segment_is_critical_and_named() {
    let c = Cluster::start(ClusterOptions::default());
    let backup = take_backup(&c, "daily");
    let id = backup["id"].as_str().unwrap();
    let segments = archive_segments(&c, 3);

    let relative = largest_backup_file(&c.repo_dir().join("daily").join(id));
    let file = c.repo_dir().join("daily").join(id).join("files").join(&relative);
    let original = read(&file);
    flip_byte_from_end(&file, 100);
    let report = verify_json(&c, None, &[], 2);
    let subject = format!("daily/{id}/files/{relative}");
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("BackupVerificationFailed".to_string(), subject.clone())]
    );
    assert!(reason_of(&report, "alerts", "BackupVerificationFailed").contains(&relative));
    let out = pitr(
        &c,
        c.repo(),
        None,
        &[
            "check-integrity",
            "--json",
            c.repo_dir().join("daily").join(id).to_str().unwrap(),
        ],
    );
    out.assert_code(2);
    assert_eq!(
        alerts_of(&parse_json(&out), "problems"),
        [("BackupVerificationFailed".to_string(), subject)]
    );
    rewrite_keeping_mode(&file, &original);
    verify_json(&c, None, &[], 0);

    let segment = stored_path(c.repo_dir(), &segments[0]);
    let original = read(&segment);
    flip_byte_from_end(&segment, 100);
    let report = verify_json(&c, None, &[], 2);
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("BackupVerificationFailed".to_string(), segments[0].clone())]
    );
    let out = pitr(&c, c.repo(), None, &["check-integrity", segment.to_str().unwrap()]);
    out.assert_code(2);
    assert!(out.stdout_str().contains("is corrupt"), "{}", out.describe());
    rewrite_keeping_mode(&segment, &original);

    fs::remove_file(stored_path(c.repo_dir(), &segments[1])).unwrap();
    let text = pitr(&c, c.repo(), None, &["verify", "--log-file", "none"]);
    text.assert_code(2);
    assert!(
        text.stdout_str().contains(&format!("WalArchiveGap {}", segments[1])),
        "{}",
        text.describe()
    );
    let report = verify_json(&c, None, &[], 2);
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("WalArchiveGap".to_string(), segments[1].clone())]
    );
    assert_eq!(report["gaps"][0]["first"], segments[1].as_str());
    assert_eq!(
        report["repository"]["windows"][0]["end_wal"],
        segments[0].as_str(),
        "the gap ends the window"
    );

    let first_wal = backup["first_wal"].as_str().unwrap();
    fs::remove_file(stored_path(c.repo_dir(), first_wal)).unwrap();
    let report = verify_json(&c, None, &["daily"], 2);
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("WalArchiveGap".to_string(), first_wal.to_string())]
    );
    let reason = reason_of(&report, "alerts", "WalArchiveGap");
    assert!(
        reason.contains(&format!("backup {id} cannot reach consistency")),
        "{reason}"
    );
}

// ---------------------------------------------------------------------------------------------
// Freshness: BackupMissing, BackupTooOld, WalArchiveStale
// ---------------------------------------------------------------------------------------------

#[test]
fn an_empty_or_missing_repository_is_critical_in_the_exit_code_log_and_metrics() {
    let dir = TestDir::new("verify-empty");
    let pitr_bin = dir.install_pitr();
    // On S3: an empty prefix of a bucket, and a bucket that does not exist.
    let s3 = backend_is_s3().then(s3::S3Server::start);
    let (empty, missing) = match &s3 {
        Some(server) => (
            PathBuf::from(server.url("empty")),
            PathBuf::from("s3://no-such-bucket/repo"),
        ),
        None => (dir.subdir("repo"), dir.join("not-mounted")),
    };
    let (log, prom) = (dir.join("verify.log"), dir.join("pitr.prom"));
    let verify = |repo: &Path| {
        run(pitr_command(&pitr_bin)
            .envs(s3.iter().flat_map(|server| server.env()))
            .env("PGHOST", dir.join("no-server-here"))
            .arg("--repo")
            .arg(repo)
            .args(["verify", "--json", "--log-file", log.to_str().unwrap()])
            .args(["--metrics-file", prom.to_str().unwrap()]))
    };

    let out = verify(&empty);
    out.assert_code(2);
    let report = parse_json(&out);
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("BackupMissing".to_string(), "all".to_string())]
    );
    let metrics = read_metrics(&prom);
    assert_eq!(
        metrics["pitr_alerts{alert=\"BackupMissing\",severity=\"critical\"}"],
        1.0
    );
    assert_eq!(metrics["pitr_verify_status{scope=\"all\"}"], 2.0);

    let out = verify(&missing);
    out.assert_code(2);
    assert!(out.stderr_str().contains("does not exist"), "{}", out.describe());
    assert_eq!(read_metrics(&prom)["pitr_verify_status{scope=\"all\"}"], 2.0);
    let lines = String::from_utf8(read(&log)).unwrap();
    assert!(
        lines.lines().nth(1).is_some_and(|l| l.contains("verify all: error: ")),
        "{lines}"
    );
}

#[test]
fn an_old_newest_backup_warns_an_overdue_tier_is_critical_and_a_quiet_archive_is_stale() {
    let mut c = Cluster::start(ClusterOptions::default());
    let stop = time_of(&take_backup(&c, "weekly")["stop_time"]);
    let at = |hours: i64| rfc3339(stop + TimeDelta::hours(hours) + TimeDelta::minutes(30));

    // Only weekly backups are scheduled here.
    let weekly_only = c
        .test_dir()
        .write("weekly.toml", "[schedule]\nhourly = \"off\"\ndaily = \"off\"\n");
    let weekly_only = ["--config", weekly_only.to_str().unwrap()];
    let report = verify_json(&c, None, &[&weekly_only[..], &["--now", &at(7 * 24)]].concat(), 1);
    assert_eq!(
        alerts_of(&report, "alerts")
            .iter()
            .map(|a| a.0.as_str())
            .collect::<Vec<_>>(),
        ["BackupTooOld"]
    );
    let report = verify_json(&c, None, &[&weekly_only[..], &["--now", &at(7 * 24 + 1)]].concat(), 2);
    let names: Vec<String> = alerts_of(&report, "alerts").into_iter().map(|a| a.0).collect();
    assert_eq!(names, ["BackupMissing", "BackupTooOld"], "critical first");
    assert!(reason_of(&report, "alerts", "BackupMissing").contains("one is due every 7 d 0 h (grace 1 h 0 min)"));
    verify_json(
        &c,
        None,
        &[&weekly_only[..], &["--now", &at(2), "--max-age", "1h"]].concat(),
        1,
    );

    let config = c.test_dir().write(
        "pitr.toml",
        "[verify]\nmax_age = \"1h\"\nbackup_grace = \"2d\"\n[schedule]\nhourly = \"off\"\ndaily = \"off\"\n",
    );
    let with_config = |now: &str| {
        pitr(
            &c,
            c.repo(),
            None,
            &[
                "--config",
                config.to_str().unwrap(),
                "verify",
                "--now",
                now,
                "--log-file",
                "none",
            ],
        )
    };
    with_config(&at(2)).assert_code(1);
    with_config(&at(7 * 24 + 1)).assert_code(1);
    c.test_dir().write("pitr.toml", "[verify]\nmax_age = \"soon\"\n");
    let out = with_config(&at(0));
    out.assert_code(2);
    assert!(
        out.stderr_str().contains("[verify] max_age: 'soon' is not a duration"),
        "{}",
        out.describe()
    );

    archive_segments(&c, 1);
    c.psql("CREATE TABLE quiet AS SELECT generate_series(1, 1000) AS n");
    let now = rfc3339(Utc::now() + TimeDelta::hours(2));
    let report = verify_json(&c, Some(&c), &["wal", "--now", &now], 1);
    assert_eq!(
        alerts_of(&report, "alerts")
            .iter()
            .map(|a| a.0.as_str())
            .collect::<Vec<_>>(),
        ["WalArchiveStale"]
    );
    assert!(reason_of(&report, "alerts", "WalArchiveStale").contains("archive_timeout"));
    verify_json(&c, None, &["wal", "--now", &now], 0);
    c.stop();
    verify_json(&c, Some(&c), &["wal", "--now", &now], 0);
}

#[test]
fn a_scheduled_and_kept_tier_that_never_had_a_backup_is_missing() {
    let c = Cluster::start(ClusterOptions::default());
    let stop = time_of(&take_backup(&c, "daily")["stop_time"]);
    let at = |hours: i64| rfc3339(stop + TimeDelta::hours(hours) + TimeDelta::minutes(30));
    let with_config = |name: &str, config: &str, now: &str, code: i32| {
        let path = c.test_dir().write(name, config);
        verify_json(&c, None, &["--config", path.to_str().unwrap(), "--now", now], code)
    };

    // The default schedule takes hourly backups and keeps 24: none after 3 hours is missing.
    verify_json(&c, None, &["--now", &at(1)], 0);
    let report = verify_json(&c, None, &["--now", &at(2)], 2);
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("BackupMissing".to_string(), "hourly".to_string())]
    );
    let reason = reason_of(&report, "alerts", "BackupMissing");
    assert!(
        reason.contains("no hourly backup in the repository") && reason.contains("check the hourly backup job"),
        "{reason}"
    );
    // A week later the weekly tier is missing too.
    let report = verify_json(&c, None, &["--now", &at(7 * 24 + 1)], 2);
    let missing: Vec<String> = alerts_of(&report, "alerts")
        .into_iter()
        .filter(|a| a.0 == "BackupMissing")
        .map(|a| a.1)
        .collect();
    assert_eq!(missing, ["hourly", "daily", "weekly"], "{report:#}");

    // A tier that is off, or kept 0 times, is not expected.
    with_config("off.toml", "[schedule]\nhourly = \"off\"\n", &at(2), 0);
    with_config("none-kept.toml", "keep_hourly = 0\n", &at(2), 0);
    // verify of one tier judges that tier only.
    verify_json(&c, None, &["daily", "--now", &at(2)], 0);
}

// ---------------------------------------------------------------------------------------------
// check-integrity of runbook dumps
// ---------------------------------------------------------------------------------------------

#[test]
fn check_integrity_passes_a_sound_runbook_dump_and_names_what_breaks_a_corrupt_one() {
    let c = Cluster::start(ClusterOptions::default().archive(false));
    c.psql("CREATE TABLE products AS SELECT n, md5(n::text) AS name FROM generate_series(1, 5000) AS n");
    let dump = run(c.client("pg_dump").args(["-Fc", "postgres"]));
    dump.assert_success();
    let plain = c.test_dir().write("catalog_daily_20240418_000000.backup", &dump.stdout);
    run(Command::new("gzip").arg("-n").arg(&plain)).assert_success();
    let sound = c.test_dir().join("catalog_daily_20240418_000000.backup.gz");
    let check = |path: &Path| {
        pitr_command(c.pitr_bin())
            .args(["check-integrity", "--json"])
            .arg(path)
            .output()
            .unwrap()
    };

    let out = check(&sound);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["kind"].as_str(), report["sound"].as_bool()),
        (Some("dump"), Some(true))
    );

    let bytes = read(&sound);
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0xFF;
    let not_a_dump = c.test_dir().write("notes.txt", "not a dump");
    run(Command::new("gzip").arg("-n").arg(&not_a_dump)).assert_success();
    for (name, content, reason) in [
        ("flipped.backup.gz", flipped, "the gzip test fails"),
        (
            "truncated.backup.gz",
            bytes[..bytes.len() / 2].to_vec(),
            "the gzip test fails",
        ),
        (
            "notes.txt.gz",
            read(&c.test_dir().join("notes.txt.gz")),
            "pg_restore --list cannot read it",
        ),
    ] {
        let path = c.test_dir().write(name, content);
        let out = check(&path);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["sound"], false);
        assert!(
            reason_of(&report, "problems", "BackupVerificationFailed").contains(reason),
            "{name}: {report:#}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// pitr check
// ---------------------------------------------------------------------------------------------

#[test]
fn check_passes_on_a_configured_cluster_and_names_each_misconfiguration() {
    let mut c = Cluster::start(ClusterOptions::default());
    let out = pitr(&c, c.repo(), Some(&c), &["check", "--json"]);
    out.assert_code(0);
    let report = parse_json(&out);
    let segment = report["segment"].as_str().unwrap();
    assert!(stored_path(c.repo_dir(), segment).is_file(), "{report:#}");
    assert_eq!(report["timeline"], 1);

    let elsewhere = c.test_dir().subdir("other-repo");
    let out = pitr(&c, &elsewhere, Some(&c), &["check"]);
    out.assert_code(1);
    assert!(
        out.stderr_str().contains("not into this repository"),
        "{}",
        out.describe()
    );

    c.set("archive_command", "'/bin/true'");
    c.reload();
    let out = pitr(&c, c.repo(), Some(&c), &["check", "--timeout", "2"]);
    out.assert_code(1);
    let stderr = out.stderr_str();
    assert!(stderr.contains("archive_command does not call pitr"), "{stderr}");
    assert!(
        stderr.contains("did not reach repository") && stderr.contains("within 2 s"),
        "{stderr}"
    );

    c.set("archive_mode", "off");
    c.restart();
    let out = pitr(&c, c.repo(), Some(&c), &["check"]);
    out.assert_code(1);
    assert!(out.stderr_str().contains("archive_mode is off"), "{}", out.describe());
}

#[test]
fn check_and_verify_need_the_history_file_of_a_new_timeline() {
    let c = Cluster::start(ClusterOptions::default());
    archive_segments(&c, 1);
    let copy = Cluster::recover(c.base_backup(), RecoveryOptions::default().archive(true));
    copy.expect_promoted();
    copy.wait_archived("00000002.history");

    let out = pitr(&copy, c.repo(), Some(&copy), &["check", "--json"]);
    out.assert_code(0);
    let report = parse_json(&out);
    assert_eq!(
        (report["timeline"].as_u64(), report["history_file"].as_str()),
        (Some(2), Some("00000002.history"))
    );

    fs::remove_file(stored_path(c.repo_dir(), "00000002.history")).unwrap();
    let out = pitr(&copy, c.repo(), Some(&copy), &["check"]);
    out.assert_code(1);
    assert!(
        out.stderr_str().contains("00000002.history is not in repository"),
        "{}",
        out.describe()
    );
    let report = verify_json(&copy, None, &["wal"], 2);
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("WalArchiveGap".to_string(), "00000002.history".to_string())]
    );
}

#[test]
fn after_a_switch_over_the_newest_archived_wal_and_staleness_follow_the_new_timeline() {
    // The copy is promoted to timeline 2 and archives into the same repository; the old primary
    // goes on writing on timeline 1, further than the copy.
    let c = Cluster::start(ClusterOptions::default());
    archive_segments(&c, 1);
    let copy = Cluster::recover(c.base_backup(), RecoveryOptions::default().archive(true));
    copy.expect_promoted();
    copy.wait_archived("00000002.history");
    let newest_on_2 = copy.switch_and_archive();
    copy.psql("CREATE TABLE unarchived AS SELECT generate_series(1, 1000) AS n");
    let on_1 = archive_segments(&c, 4);
    assert!(on_1[3][8..] > newest_on_2[8..], "{on_1:?} {newest_on_2}");

    let info = parse_json(pitr(&c, c.repo(), None, &["info", "--json"]).assert_code(0));
    assert_eq!(info["archive"]["newest_segment"], newest_on_2.as_str(), "{info:#}");

    // The copy writes, the archive of its timeline stands still: stale, two hours on.
    let now = rfc3339(Utc::now() + TimeDelta::hours(2));
    let prom = c.test_dir().join("pitr.prom");
    let report = verify_json(
        &copy,
        Some(&copy),
        &["wal", "--now", &now, "--metrics-file", prom.to_str().unwrap()],
        1,
    );
    assert_eq!(report["server"]["timeline"], 2, "{report:#}");
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("WalArchiveStale".to_string(), newest_on_2.clone())]
    );
    assert_eq!(report["repository"]["archive"]["newest_segment"], newest_on_2.as_str());
    let archived_at = fs::metadata(stored_path(c.repo_dir(), &newest_on_2))
        .unwrap()
        .modified()
        .unwrap();
    let archived_at = DateTime::<Utc>::from(archived_at).timestamp_millis() as f64 / 1000.0;
    let newest = read_metrics(&prom)["pitr_wal_newest_archived_timestamp_seconds"];
    assert!((newest - archived_at).abs() < 0.01, "{newest} vs {archived_at}");
}

/// The largest data pack of the repository at `repo`.
fn largest_data_pack(repo: &Path) -> PathBuf {
    let mut packs: Vec<(u64, PathBuf)> = Vec::new();
    for dir in fs::read_dir(repo.join("packs")).unwrap() {
        for pack in fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = pack.unwrap().path();
            if read(&path).starts_with(b"pitrDAT1") {
                packs.push((fs::metadata(&path).unwrap().len(), path));
            }
        }
    }
    packs.into_iter().max().expect("a data pack").1
}

#[test]
fn pieces_shared_by_deduplicated_backups_are_checked_once_and_a_damaged_one_names_every_backup() {
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    c.psql("CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 3) AS v FROM generate_series(1, 100000) g");
    c.psql("CHECKPOINT");
    let first = backup_json(&c, &["--dedup", "--tier", "daily"])["backup"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let alone = verify_json(&c, None, &[], 0)["read"]["stored_bytes"].as_u64().unwrap();
    let second = backup_json(&c, &["--dedup", "--tier", "weekly"])["backup"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let together = verify_json(&c, None, &[], 0)["read"]["stored_bytes"].as_u64().unwrap();
    assert!(
        together < alone * 3 / 2,
        "what two backups share is read once: {together} bytes read for both, {alone} for the first alone"
    );

    let pack = largest_data_pack(c.repo_dir());
    let original = read(&pack);
    let mut damaged = original.clone();
    damaged[original.len() / 2] ^= 0x40;
    rewrite_keeping_mode(&pack, &damaged);
    let report = verify_json(&c, None, &[], 2);
    let alerts = alerts_of(&report, "alerts");
    assert!(!alerts.is_empty());
    assert!(
        alerts
            .iter()
            .all(|(name, subject)| name == "BackupVerificationFailed" && subject.starts_with("packs/")),
        "{alerts:?}"
    );
    let reason = reason_of(&report, "alerts", "BackupVerificationFailed");
    assert!(
        reason.contains(&first) && reason.contains(&second),
        "the damage names both backups: {reason}"
    );
    let restored = c.dir().join("restored");
    let out = pitr(
        &c,
        c.repo(),
        None,
        &["restore", "--backup", &second, "--pgdata", restored.to_str().unwrap()],
    );
    assert!(!out.success(), "a restore from a damaged pack fails");
    assert!(out.stderr_str().contains("packs/"), "{}", out.describe());
    rewrite_keeping_mode(&pack, &original);
    verify_json(&c, None, &[], 0);
}
