//! `pitr daemon`: the watcher, scheduled backups and /metrics in one process, on a real server.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// GET `path` from the daemon; the response body, or `None` while it does not answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// The value of the first metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// `pitr --config <config> daemon --pgdata <c's data directory>`, connected to `c`.
fn start_daemon(c: &Cluster, config: &std::path::Path) -> std::process::Child {
    let mut command = c.pitr_cmd();
    c.libpq_env(&mut command)
        .arg("--config")
        .arg(config)
        .args(["daemon", "--pgdata"])
        .arg(c.data_dir());
    spawn(&mut command)
}

#[test]
fn the_daemon_archives_takes_scheduled_backups_and_serves_metrics() {
    let c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) g");
    let port = free_port();
    let config = c.test_dir().write(
        "daemon.toml",
        format!(
            "repo = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nkeep_hourly = 2\n\n[schedule]\nhourly = \"*/3 * * * * *\"\n\
             daily = \"off\"\nweekly = \"off\"\nverify = \"off\"\n",
            c.repo().display()
        ),
    );
    give_to_server_user(&config);
    let daemon = start_daemon(&c, &config);

    // Three scheduled backups succeed while the watcher archives; expire keeps two.
    let scraped = poll(Duration::from_secs(120), || {
        let text = http_get(port, "/metrics")?;
        (metric(&text, "pitr_job_runs_total{job=\"backup hourly\",result=\"success\"}")? >= 3.0).then_some(text)
    });
    let text = scraped.unwrap_or_else(|| {
        panic!(
            "no three successful backups; metrics:\n{:?}",
            http_get(port, "/metrics")
        )
    });
    assert!(
        metric(&text, "pitr_watch_archived_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "pitr_job_last_failed{job=\"backup hourly\"}"),
        Some(0.0),
        "{text}"
    );
    let health = http_get(port, "/health").expect("/health answers");
    let health: serde_json::Value = serde_json::from_str(&health).expect("/health is JSON");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(
        http_get(port, "/nothing").as_deref(),
        Some("not found: try /metrics or /health\n")
    );

    // SIGTERM to pitr itself ends the daemon cleanly.
    let out = terminate_pitr(daemon, "pitr daemon".into(), Duration::from_secs(120));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr_str().contains("job backup hourly: backup main_hourly_"),
        "{}",
        out.describe()
    );

    let listed = c.pitr(&["list", "hourly", "--json"]);
    let backups: serde_json::Value = serde_json::from_str(&listed.assert_success().stdout_str()).unwrap();
    let count = backups.as_array().map_or(0, Vec::len);
    assert!(
        (2..=3).contains(&count),
        "expire after each backup keeps two (three if one ended after the last expire): {backups}"
    );
}

#[test]
fn sighup_reloads_the_schedule_and_a_config_that_does_not_load_changes_nothing() {
    let c = Cluster::start(ClusterOptions::default());
    let port = free_port();
    let config_with = |hourly: &str, extra: &str| {
        format!(
            "repo = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n{extra}\n[schedule]\nhourly = \"{hourly}\"\n\
             daily = \"off\"\nweekly = \"off\"\nverify = \"off\"\n",
            c.repo().display()
        )
    };
    let config = c.test_dir().write("daemon.toml", config_with("off", ""));
    let daemon = start_daemon(&c, &config);
    let pid = pitr_pid(&daemon).to_string();
    let backups = || {
        let text = http_get(port, "/metrics")?;
        metric(&text, "pitr_job_runs_total{job=\"backup hourly\",result=\"success\"}")
    };
    assert!(
        poll(Duration::from_secs(30), || http_get(port, "/health")).is_some(),
        "the daemon does not answer on {port}"
    );
    let hup = || {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -HUP {pid}");
    };

    // A config with a backup every 2 s and an unknown key does not load: nothing changes.
    c.test_dir()
        .write("daemon.toml", config_with("*/2 * * * * *", "bogus_key = 1"));
    hup();
    std::thread::sleep(Duration::from_secs(5));
    assert!(http_get(port, "/health").is_some(), "the daemon died on a bad reload");
    assert_eq!(backups().unwrap_or(0.0), 0.0, "a config that does not load was applied");

    // The same schedule, valid: backups start without a restart.
    c.test_dir().write("daemon.toml", config_with("*/2 * * * * *", ""));
    hup();
    assert!(
        poll(Duration::from_secs(90), || (backups()? >= 1.0).then_some(())).is_some(),
        "no scheduled backup after the reload; metrics:\n{:?}",
        http_get(port, "/metrics")
    );

    let out = terminate_pitr(daemon, "pitr daemon".into(), Duration::from_secs(120));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let log = out.stderr_str();
    assert!(
        log.contains("SIGHUP: settings not reloaded, the running ones stay") && log.contains("bogus_key"),
        "{log}"
    );
    assert!(log.contains("SIGHUP: settings reloaded; jobs: backup hourly"), "{log}");
}
