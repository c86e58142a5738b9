//! `pitr daemon`: the watcher, scheduled backups and /metrics in one process, on a real server;
//! verification beside a long backup and skipped runs counted; a small daemon after a backup;
//! an HTTP listener that a huge or endless request cannot blow up or block.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The daemon tests run one at a time: each waits for scheduled backups that fsync every file and
/// for spread checkpoints, and six of them at once on two cores (with their pgbench loads)
/// stretched a 3 s checkpoint to a minute and a backup's fsyncs past every timeout.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`ONE_AT_A_TIME`] for a test (a failed test does not block the others).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A cluster whose spread checkpoints are still spread, but over at most 3 s (0.1 of a 30 s
/// checkpoint_timeout): the daemon's backups do not ask for a fast checkpoint, and with the
/// defaults each would wait up to 4.5 minutes (on a busy machine, with six daemon tests at once,
/// 27 s spreads took over a minute).
fn with_short_checkpoints() -> ClusterOptions {
    ClusterOptions::default()
        .setting("checkpoint_timeout", "'30s'")
        .setting("checkpoint_completion_target", "0.1")
}

/// Spread checkpoints of up to 27 s (0.9 of checkpoint_timeout): backups that take long.
fn with_long_spread_checkpoints() -> ClusterOptions {
    ClusterOptions::default().setting("checkpoint_timeout", "'30s'")
}

/// A running `pitr daemon`, killed when dropped unless it was terminated: a test that fails
/// leaves no daemon behind.
struct Daemon {
    child: Option<std::process::Child>,
}

impl Daemon {
    /// Starts `command` (a `pitr ... daemon` command).
    fn spawn(command: &mut std::process::Command) -> Daemon {
        Daemon {
            child: Some(spawn(command)),
        }
    }

    /// The pitr process's id.
    fn pid(&self) -> u32 {
        pitr_pid(self.child.as_ref().expect("running"))
    }

    /// SIGTERM, and what it wrote.
    fn terminate(mut self) -> CmdOutput {
        let child = self.child.take().expect("running");
        terminate_pitr(child, "pitr daemon".into(), Duration::from_secs(120))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_with_children(&mut child);
        }
    }
}

/// `pitr --config <config> daemon --pgdata <c's data directory>`, connected to `c`.
fn start_daemon(c: &Cluster, config: &std::path::Path) -> Daemon {
    let mut command = c.daemon_cmd(config);
    Daemon::spawn(&mut command)
}

#[test]
fn the_daemon_archives_takes_scheduled_backups_and_serves_metrics() {
    let _serial = one_at_a_time();
    let c = Cluster::start(with_short_checkpoints());
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) g");
    let port = free_port();
    let config = c.test_dir().write(
        "daemon.toml",
        format!(
            "repo = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nkeep_hourly = 2\ndedup = true\n\n[schedule]\n\
             hourly = \"*/3 * * * * *\"\ndaily = \"off\"\nweekly = \"off\"\nverify = \"off\"\nnames = \"*/2 * * * * *\"\n",
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
    // The names job keeps the map of relation names current: a new table is named.
    c.psql("CREATE TABLE named_by_the_daemon (a int)");
    let relfilenode: u64 = c
        .psql("SELECT pg_relation_filenode('named_by_the_daemon')")
        .parse()
        .unwrap();
    let named = poll(Duration::from_secs(30), || {
        let listed = c.pitr(&["names", "list", "--json"]);
        let maps: serde_json::Value = serde_json::from_str(&listed.stdout_str()).ok()?;
        let newest = maps.as_array()?.last()?.clone();
        newest["relations"]
            .as_array()?
            .iter()
            .any(|r| r["storage"]["rel"] == relfilenode && r["name"] == "named_by_the_daemon")
            .then_some(())
    });
    assert!(
        named.is_some(),
        "no map names the new table; metrics:\n{:?}",
        http_get(port, "/metrics")
    );
    let text = http_get(port, "/metrics").unwrap();
    assert!(
        metric(&text, "pitr_job_runs_total{job=\"names\",result=\"success\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    let health = http_get(port, "/health").expect("/health answers");
    let health: serde_json::Value = serde_json::from_str(&health).expect("/health is JSON");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(
        http_get(port, "/nothing").as_deref(),
        Some("not found: try /, /metrics or /health\n")
    );

    // SIGTERM to pitr itself ends the daemon cleanly.
    let out = daemon.terminate();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr_str().contains("job backup hourly: backup main_hourly_"),
        "{}",
        out.describe()
    );
    assert!(out.stderr_str().contains("job names: names "), "{}", out.describe());

    let listed = c.pitr(&["list", "hourly", "--json"]);
    let backups: serde_json::Value = serde_json::from_str(&listed.assert_success().stdout_str()).unwrap();
    let count = backups.as_array().map_or(0, Vec::len);
    assert!(
        (2..=3).contains(&count),
        "expire after each backup keeps two (three if one ended after the last expire): {backups}"
    );
    assert!(
        backups.as_array().unwrap().iter().all(|b| b["deduplicated"] == true),
        "the config's dedup = true holds for scheduled backups: {backups}"
    );
}

#[test]
fn sighup_reloads_the_schedule_and_a_config_that_does_not_load_changes_nothing() {
    let _serial = one_at_a_time();
    let c = Cluster::start(with_short_checkpoints());
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
    let pid = daemon.pid().to_string();
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

    // An edit without SIGHUP changes nothing, for the jobs either: they read the daemon's copy.
    c.test_dir()
        .write("daemon.toml", config_with("*/2 * * * * *", "bogus_key = 1"));
    let before = backups().unwrap();
    assert!(
        poll(Duration::from_secs(90), || (backups()? >= before + 1.0).then_some(())).is_some(),
        "no backup after an edit without SIGHUP; metrics:\n{:?}",
        http_get(port, "/metrics")
    );
    let text = http_get(port, "/metrics").unwrap();
    assert_eq!(
        metric(&text, "pitr_job_runs_total{job=\"backup hourly\",result=\"failure\"}"),
        None,
        "{text}"
    );

    let out = daemon.terminate();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let log = out.stderr_str();
    assert!(
        log.contains("SIGHUP: settings not reloaded, the running ones stay") && log.contains("bogus_key"),
        "{log}"
    );
    assert!(log.contains("SIGHUP: settings reloaded; jobs: backup hourly"), "{log}");
}

/// A config for a daemon on `c` listening on `port`, with `[schedule]` `hourly` and `verify`
/// (daily and weekly off) and `extra` top-level lines.
fn daemon_config(c: &Cluster, port: u16, hourly: &str, verify: &str, extra: &str) -> std::path::PathBuf {
    let config = c.test_dir().write(
        "daemon.toml",
        format!(
            "repo = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n{extra}\n[schedule]\nhourly = \"{hourly}\"\n\
             daily = \"off\"\nweekly = \"off\"\nverify = \"{verify}\"\n",
            c.repo().display()
        ),
    );
    give_to_server_user(&config);
    config
}

/// Waits until the daemon on `port` answers /health.
fn wait_answering(port: u16) {
    assert!(
        poll(Duration::from_secs(30), || http_get(port, "/health")).is_some(),
        "the daemon does not answer on {port}"
    );
}

/// The resident memory of process `pid` (VmRSS), in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// `/health` as JSON.
fn health(port: u16) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(port, "/health")?).ok()
}

/// The sum of the samples whose series starts with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const MIB: u64 = 1 << 20;

#[test]
fn a_huge_or_endless_request_head_leaves_the_daemon_small_and_answering() {
    let _serial = one_at_a_time();
    let c = Cluster::start(ClusterOptions::default());
    let port = free_port();
    let config = daemon_config(&c, port, "off", "off", "");
    let daemon = start_daemon(&c, &config);
    wait_answering(port);
    let pid = daemon.pid();

    // One client sends a 150 MB header, one trickles a header forever, eight send nothing.
    let huge = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut sent = 0u64;
        if stream.write_all(b"GET /health HTTP/1.1\r\nX-Filler: ").is_ok() {
            let chunk = vec![b'a'; MIB as usize];
            while sent < 150 * MIB && stream.write_all(&chunk).is_ok() {
                sent += MIB;
            }
        }
        sent
    });
    let endless = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut reader = stream.try_clone().unwrap();
        let started = Instant::now();
        let answered = std::thread::spawn(move || {
            let mut answer = String::new();
            let _ = reader.read_to_string(&mut answer);
            (started.elapsed(), answer)
        });
        let _ = stream.write_all(b"GET /health HTTP/1.1\r\n");
        while !answered.is_finished() && started.elapsed() < Duration::from_secs(20) && stream.write_all(b"X").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
        answered.join().unwrap()
    });
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut largest = 0;
    for _ in 0..20 {
        assert!(http_get(port, "/health").is_some(), "/health does not answer meanwhile");
        largest = largest.max(resident_bytes(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = huge.join().unwrap();
    let (took, answer) = endless.join().unwrap();
    drop(idle);
    largest = largest.max(resident_bytes(pid));
    assert!(sent < 150 * MIB, "the daemon read the whole 150 MB header");
    assert!(largest < 50 * MIB, "the daemon grew to {} MiB", largest / MIB);
    assert!(
        answer.starts_with("HTTP/1.1 408") && took < Duration::from_secs(12),
        "the endless header is cut off after {took:?}: {answer:?}"
    );

    // A head over the limit, sent whole, gets its answer.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let filler = "a".repeat(20_000);
    write!(stream, "GET /health HTTP/1.1\r\nX-Filler: {filler}\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(
        http_get(port, "/health").is_some(),
        "/health does not answer afterwards"
    );
    assert!(http_get(port, "/metrics").is_some_and(|m| m.ends_with("# EOF\n")));

    let out = daemon.terminate();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
}

#[test]
fn verification_runs_beside_a_long_backup_and_skipped_runs_are_counted() {
    let _serial = one_at_a_time();
    // Spread checkpoints of at most 27 s, kept busy by pgbench: every backup waits that long.
    let c = Cluster::start(with_long_spread_checkpoints());
    c.pgbench_init(2);
    backup_ok(&c, &[]);
    let mut load = c.pgbench_cmd(&["-c", "2", "-T", "120"]);
    let load = spawn(&mut load);
    let port = free_port();
    let config = daemon_config(&c, port, "*/2 * * * * *", "*/2 * * * * *", "keep_hourly = 2");
    let daemon = start_daemon(&c, &config);
    wait_answering(port);
    let verify_runs = || {
        let text = http_get(port, "/metrics")?;
        Some(metric_sum(&text, "pitr_job_runs_total{job=\"verify\""))
    };
    let running_backup = || {
        let health = health(port)?;
        let running = health["running"]
            .as_array()?
            .iter()
            .find(|r| r["job"] == "backup hourly")?;
        running["since"].as_str().map(str::to_string)
    };

    // While one backup runs, verification runs again and again beside it.
    let since = poll(Duration::from_secs(60), running_backup).expect("/health never shows a running backup");
    chrono::DateTime::parse_from_rfc3339(&since).expect("since is RFC 3339");
    let before = verify_runs().unwrap();
    let beside = poll(Duration::from_secs(60), || {
        let runs = verify_runs()?;
        let still = running_backup();
        assert_eq!(
            still.as_deref(),
            Some(since.as_str()),
            "the backup ended before verify ran twice beside it"
        );
        (runs >= before + 2.0).then_some(runs)
    });
    assert!(beside.is_some(), "verification did not run beside the backup");

    // The backup came due every 2 s while it ran: those runs are skipped, logged and counted.
    let text = http_get(port, "/metrics").unwrap();
    assert!(
        metric(&text, "pitr_job_skipped_total{job=\"backup hourly\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    let pgbench = pitr_pid(&load).to_string();
    let _ = std::process::Command::new("kill").args(["-TERM", &pgbench]).status();
    let out = daemon.terminate();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let log = out.stderr_str();
    assert!(
        log.contains("job backup hourly skipped: it came due at")
            && log.contains("while its previous run was still running"),
        "{log}"
    );
    assert!(log.contains("job verify: verify all: "), "{log}");
    let _ = wait_child(load, "pgbench".into(), Duration::from_secs(30));
}

#[test]
fn the_daemon_is_small_when_idle_after_a_scheduled_backup() {
    let _serial = one_at_a_time();
    // The watcher archives beside archive_command while pgbench writes; no job yet.
    let c = Cluster::start(with_short_checkpoints());
    let port = free_port();
    let config = daemon_config(&c, port, "off", "off", "");
    let daemon = start_daemon(&c, &config);
    wait_answering(port);
    let pid = daemon.pid();
    c.pgbench_init(10);
    c.pgbench(&["-c", "2", "-T", "10"]);
    c.psql("CHECKPOINT");
    c.wait_archiver_idle();
    let archived = metric(&http_get(port, "/metrics").unwrap(), "pitr_watch_archived_total");
    assert!(archived.unwrap_or(0.0) >= 1.0, "the watcher archived nothing");

    // Then one scheduled backup: once a minute, at a second a few seconds from now.
    let second = (chrono::Local::now() + chrono::TimeDelta::seconds(6))
        .format("%-S")
        .to_string();
    daemon_config(&c, port, &format!("{second} * * * * *"), "off", "");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let backups = || {
        let text = http_get(port, "/metrics")?;
        metric(&text, "pitr_job_runs_total{job=\"backup hourly\",result=\"success\"}")
    };
    let done = poll(Duration::from_secs(150), || (backups()? >= 1.0).then_some(()));
    assert!(
        done.is_some(),
        "no scheduled backup; metrics:\n{:?}",
        http_get(port, "/metrics")
    );
    std::thread::sleep(Duration::from_secs(2));
    let health = health(port).unwrap();
    assert_eq!(health["running"], serde_json::json!([]), "idle: {health}");
    let text = http_get(port, "/metrics").unwrap();
    let resident = metric(&text, "pitr_daemon_resident_memory_bytes").expect("the daemon reports its memory");
    assert!(
        resident <= (50 * MIB) as f64,
        "the idle daemon holds {:.0} MiB after a backup",
        resident / MIB as f64
    );
    let measured = resident_bytes(pid) as f64;
    assert!(
        (measured - resident).abs() < (10 * MIB) as f64,
        "the metric ({resident}) is the daemon's VmRSS ({measured})"
    );

    let out = daemon.terminate();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr_str().contains("job backup hourly: backup main_hourly_"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_failing_job_is_logged_and_counted_and_the_daemon_goes_on() {
    let _serial = one_at_a_time();
    let c = Cluster::start(with_short_checkpoints());
    let port = free_port();
    let config = daemon_config(&c, port, "*/2 * * * * *", "off", "");
    // The backups connect to a port where no server listens.
    let mut command = c.daemon_cmd(&config);
    command.env("PGPORT", free_port().to_string());
    let daemon = Daemon::spawn(&mut command);
    let failed = poll(Duration::from_secs(60), || {
        let text = http_get(port, "/metrics")?;
        (metric(&text, "pitr_job_runs_total{job=\"backup hourly\",result=\"failure\"}")? >= 2.0).then_some(())
    });
    assert!(
        failed.is_some(),
        "no failed backups; metrics:\n{:?}",
        http_get(port, "/metrics")
    );
    let health = health(port).expect("/health answers");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["jobs"]["backup hourly"]["ok"], false, "{health}");

    let out = daemon.terminate();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let log = out.stderr_str();
    let failure = log
        .lines()
        .find(|l| l.contains("job backup hourly failed: "))
        .unwrap_or_else(|| panic!("no failure line:\n{log}"));
    assert!(!failure.contains("pitr backup: error:"), "{failure}");
}

#[test]
fn scheduled_drills_run_in_the_backups_lane_and_their_gauges_are_served() {
    let _serial = one_at_a_time();
    let c = Cluster::start(with_short_checkpoints());
    backup_ok(&c, &["--tier", "hourly"]);
    let port = free_port();
    // Backups and drills fall due at the same seconds: one lane runs them one after the other.
    let config = c.test_dir().write(
        "daemon.toml",
        format!(
            "repo = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n[schedule]\nhourly = \"*/15 * * * * *\"\n\
             daily = \"off\"\nweekly = \"off\"\nverify = \"off\"\nnames = \"off\"\ndrill = \"*/15 * * * * *\"\n",
            c.repo().display()
        ),
    );
    give_to_server_user(&config);
    let daemon = start_daemon(&c, &config);
    wait_answering(port);
    let mut both_running = Vec::new();
    let drilled = poll(Duration::from_secs(120), || {
        if let Some(health) = health(port) {
            let running: Vec<String> = health["running"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["job"].as_str().map(str::to_string))
                .collect();
            if running.iter().any(|j| j == "drill") && running.iter().any(|j| j.starts_with("backup")) {
                both_running.push(running);
            }
        }
        let text = http_get(port, "/metrics")?;
        let drills = metric(&text, "pitr_job_runs_total{job=\"drill\",result=\"success\"}")?;
        let backups = metric(&text, "pitr_job_runs_total{job=\"backup hourly\",result=\"success\"}")?;
        (drills >= 1.0 && backups >= 1.0).then_some(text)
    });
    let text = drilled.unwrap_or_else(|| panic!("no drill and backup; metrics:\n{:?}", http_get(port, "/metrics")));
    assert!(both_running.is_empty(), "a drill ran beside a backup: {both_running:?}");
    assert!(
        metric(&text, "pitr_drill_rto_seconds{tier=\"hourly\"}").is_some_and(|rto| rto > 0.0),
        "{text}"
    );
    assert!(
        metric(&text, "pitr_drill_last_success_timestamp_seconds{tier=\"hourly\"}").is_some(),
        "{text}"
    );

    let out = daemon.terminate();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr_str().contains("job drill: drill: hourly main_hourly_"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_drill_job_without_any_backup_succeeds_with_nothing_to_drill() {
    let _serial = one_at_a_time();
    let c = Cluster::start(ClusterOptions::default());
    let port = free_port();
    let config = c.test_dir().write(
        "daemon.toml",
        format!(
            "repo = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n[schedule]\nhourly = \"off\"\ndaily = \"off\"\n\
             weekly = \"off\"\nverify = \"off\"\nnames = \"off\"\ndrill = \"*/2 * * * * *\"\n",
            c.repo().display()
        ),
    );
    give_to_server_user(&config);
    let daemon = start_daemon(&c, &config);
    wait_answering(port);
    let drilled = poll(Duration::from_secs(60), || {
        let text = http_get(port, "/metrics")?;
        metric(&text, "pitr_job_runs_total{job=\"drill\",result=\"success\"}").filter(|runs| *runs >= 1.0)
    });
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    assert!(drilled.is_some(), "no successful drill job:\n{metrics}");
    assert_eq!(
        metric(&metrics, "pitr_job_last_failed{job=\"drill\"}"),
        Some(0.0),
        "{metrics}"
    );
    let out = daemon.terminate();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr_str().contains("job drill: drill: no backup to drill"),
        "{}",
        out.describe()
    );
}

#[test]
fn with_log_format_json_the_daemon_logs_one_object_per_line_with_fields() {
    let _serial = one_at_a_time();
    let c = Cluster::start(with_short_checkpoints());
    let port = free_port();
    let config = daemon_config(&c, port, "*/3 * * * * *", "off", "");
    let mut command = c.pitr_cmd();
    c.libpq_env(&mut command)
        .arg("--config")
        .arg(&config)
        .args(["daemon", "--log-format", "json", "--pgdata"])
        .arg(c.data_dir());
    let daemon = Daemon::spawn(&mut command);
    wait_answering(port);
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) g");
    c.switch_wal();
    let done = poll(Duration::from_secs(120), || {
        let text = http_get(port, "/metrics")?;
        let backups = metric(&text, "pitr_job_runs_total{job=\"backup hourly\",result=\"success\"}")?;
        let archived = metric(&text, "pitr_watch_archived_total")?;
        (backups >= 1.0 && archived >= 1.0).then_some(())
    });
    assert!(
        done.is_some(),
        "no backup and archived segment; metrics:\n{:?}",
        http_get(port, "/metrics")
    );

    let out = daemon.terminate();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let log = out.stderr_str();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}\n{log}")))
        .collect();
    for event in &events {
        assert!(
            event["timestamp"]
                .as_str()
                .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
            "{event}"
        );
    }
    let find = |what: &str, wanted: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .find(|e| wanted(&e["fields"]))
            .unwrap_or_else(|| panic!("no event for {what}:\n{log}"))
            .clone()
    };
    let backup = find("the backup job", &|f| {
        f["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("job backup hourly: backup main_hourly_"))
    });
    assert_eq!(backup["level"], "INFO", "{backup}");
    assert_eq!(backup["fields"]["job"], "backup hourly", "{backup}");
    assert!(backup["fields"]["duration_ms"].is_u64(), "{backup}");
    let archived = find("an archived segment", &|f| f["message"] == "archived");
    assert_eq!(archived["level"], "INFO", "{archived}");
    // A WAL file's name: a segment's, or that of the backup's history file
    // (`<segment>.<offset>.backup`), which the watcher may archive before any segment.
    let file = archived["fields"]["segment"].as_str().unwrap_or_default();
    assert!(
        file.get(..24).is_some_and(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
            && (file.len() == 24 || file.ends_with(".backup")),
        "{archived}"
    );
    assert!(archived["fields"]["duration_ms"].is_u64(), "{archived}");
}
