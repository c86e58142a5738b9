//! The monitoring files users install (docs/monitoring): the Prometheus alert rules pass
//! `promtool check rules` and their unit tests, every alert `pitr verify` raises has a rule that
//! fires on its series, and every metric the rules and the Grafana dashboard query is one pitr
//! exports (read from a real verify textfile and a real daemon's /metrics).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use pitr::verify::AlertName;

/// The directory of the monitoring files.
fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring")
}

fn rules_file() -> PathBuf {
    monitoring_dir().join("pitr-alerts.yml")
}

/// Prometheus' `promtool`, from the PATH.
fn promtool() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not on the PATH: install Debian package prometheus (apt-get install prometheus), \
                 or unpack its /usr/bin/promtool as .ci/run does"
            )
        })
}

/// Runs promtool with `args` in `dir`; panics with its output unless it succeeds.
fn promtool_ok(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    text
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool_ok(&monitoring_dir(), &["check", "rules", "pitr-alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    promtool_ok(&monitoring_dir(), &["test", "rules", "pitr-alerts.test.yml"]);
}

/// The rules file without its annotations (which the unit tests below need not restate).
fn rules_without_annotations(rules: &str) -> String {
    let mut kept = Vec::new();
    let mut skipping_under: Option<usize> = None;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(level) = skipping_under {
            if line.trim().is_empty() || indent > level {
                continue;
            }
            skipping_under = None;
        }
        if line.trim() == "annotations:" {
            skipping_under = Some(indent);
            continue;
        }
        kept.push(line);
    }
    kept.join("\n") + "\n"
}

#[test]
fn every_alert_of_verify_has_a_rule_that_fires_with_its_severity() {
    let rules = std::fs::read_to_string(rules_file()).expect("read the rules file");
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("rules.yml"), rules_without_annotations(&rules)).unwrap();
    let mut tests = String::from("rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n");
    for alert in AlertName::ALL {
        assert!(
            rules.contains(&format!("- alert: {alert}\n")),
            "no rule for the alert {alert} in {}",
            rules_file().display()
        );
        let severity = alert.severity();
        // Raised by the last verification: the rule fires at once, labelled with its severity;
        // not raised (0): it does not.
        tests.push_str(&format!(
            "  - interval: 1m\n    input_series:\n      - series: 'pitr_alerts{{alert=\"{alert}\",severity=\"{severity}\",instance=\"db:9100\"}}'\n        values: '0 0 1 1'\n    alert_rule_test:\n      - eval_time: 1m\n        alertname: {alert}\n        exp_alerts: []\n      - eval_time: 3m\n        alertname: {alert}\n        exp_alerts:\n          - exp_labels: {{alert: {alert}, severity: {severity}, instance: 'db:9100'}}\n"
        ));
    }
    std::fs::write(dir.path().join("tests.yml"), tests).unwrap();
    promtool_ok(dir.path(), &["test", "rules", "tests.yml"]);
}

/// The metric names a Prometheus text declares or samples (a counter `x` samples as `x_total`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            names.insert(name.to_string());
            if kind == "counter" {
                names.insert(format!("{name}_total"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The `pitr_*` metric names in a PromQL expression.
fn pitr_metrics_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("pitr_") {
        let preceded_by_word = rest[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every `expr` string in a Grafana dashboard.
fn dashboard_exprs(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value.as_str()) {
                    ("expr", Some(expr)) => found.push(expr.to_string()),
                    _ => dashboard_exprs(value, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| dashboard_exprs(item, found)),
        _ => {}
    }
}

/// The dashboard, checked for what Grafana's import needs: a Prometheus datasource input that
/// every panel uses, unique panel ids, and a query on each panel that is not a row.
fn read_dashboard() -> serde_json::Value {
    let path = monitoring_dir().join("grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let panels = dashboard["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "every panel has its own id");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel}");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        assert!(targets.is_some(), "a panel without a query: {}", panel["title"]);
    }
    dashboard
}

/// The metrics a real pitr exports: the textfile of `pitr verify all` after a backup, and the
/// /metrics of a daemon over the same repository once it has run jobs and skipped one (its
/// families without a sample are not served). Its backups come due every second and take longer
/// (a spread checkpoint of up to 3 s): a run is skipped within seconds.
fn exported_metrics() -> BTreeSet<String> {
    let c = Cluster::start(
        ClusterOptions::default()
            .setting("checkpoint_timeout", "'30s'")
            .setting("checkpoint_completion_target", "0.1"),
    );
    backup_ok(&c, &["--tier", "hourly"]);
    let textfile = c.test_dir().join("pitr.prom");
    let verified = c.pitr(&[
        "verify",
        "all",
        "--log-file",
        "none",
        "--metrics-file",
        textfile.to_str().unwrap(),
    ]);
    assert!(matches!(verified.code(), Some(0..=2)), "{}", verified.describe());
    let mut names = metric_names(&std::fs::read_to_string(&textfile).expect("verify wrote its metrics file"));

    let port = free_port();
    let config = c.test_dir().write(
        "daemon.toml",
        format!(
            "repo = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n[schedule]\nhourly = \"* * * * * *\"\ndaily = \"* * * * * *\"\n\
             weekly = \"off\"\nverify = \"off\"\nnames = \"off\"\ndrill = \"off\"\n",
            c.repo().display()
        ),
    );
    give_to_server_user(&config);
    let mut command = c.daemon_cmd(&config);
    let daemon = spawn(&mut command);
    // Two backups fall due every second in the one backup lane: more work than a second holds
    // (one backup alone took 0.5–0.8 s, and then never overlapped the next), so runs are skipped.
    let scraped = poll(Duration::from_secs(90), || {
        let text = http_get(port, "/metrics")?;
        (metric(&text, "pitr_job_runs_total").is_some() && metric(&text, "pitr_job_skipped_total").is_some())
            .then_some(text)
    });
    let out = terminate_pitr(daemon, "pitr daemon".into(), Duration::from_secs(60));
    let scraped =
        scraped.unwrap_or_else(|| panic!("no job run and skipped on the daemon's /metrics: {}", out.describe()));
    names.extend(metric_names(&scraped));
    names
}

#[test]
fn every_metric_the_rules_and_the_dashboard_query_is_exported() {
    let rules = std::fs::read_to_string(rules_file()).expect("read the rules file");
    let mut exprs: Vec<String> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr: "))
        .map(str::to_string)
        .collect();
    assert!(exprs.len() >= AlertName::ALL.len(), "{exprs:?}");
    let rule_count = exprs.len();
    dashboard_exprs(&read_dashboard(), &mut exprs);
    assert!(exprs.len() > rule_count, "the dashboard queries nothing");
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| pitr_metrics_in(e)).collect();
    let exported = exported_metrics();
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "metrics queried but not exported: {unknown:?}\nexported: {exported:?}"
    );
    // The families users need in a picture are there.
    for needed in [
        "pitr_recoverable_window_start_timestamp_seconds",
        "pitr_backup_newest_timestamp_seconds",
        "pitr_watch_archived_total",
        "pitr_job_runs_total",
        "pitr_job_last_duration_seconds",
        "pitr_verify_status",
        "pitr_alerts",
        "pitr_drill_rto_seconds",
        "pitr_drill_rpo_seconds",
        "pitr_drill_last_success_timestamp_seconds",
        "pitr_slot_retained_wal_bytes",
        "pitr_daemon_resident_memory_bytes",
    ] {
        assert!(used.contains(needed), "nothing queries {needed}");
    }
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        pitr_metrics_in("time() - max by (tier) (pitr_drill_rto_seconds{x=\"a\"}) > 3 and xpitr_no"),
        BTreeSet::from(["pitr_drill_rto_seconds".to_string()])
    );
    let names = metric_names("# TYPE pitr_job_runs counter\npitr_job_runs_total{job=\"a\"} 1\nup 1\n");
    assert!(
        names.contains("pitr_job_runs_total") && names.contains("up"),
        "{names:?}"
    );
}
