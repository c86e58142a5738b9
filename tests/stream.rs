//! The WAL receiver (`pitr watch --slot`, `pitr slot`) against real PostgreSQL servers: WAL
//! streamed from a physical slot is stored segment by segment, archive_command then finds it
//! stored, and a receiver killed mid-segment loses nothing and stores nothing partial.

mod common;

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;

/// `pitr watch --slot pitr` running as the server user, connected to the cluster's server;
/// killed when dropped (a failed test leaves none behind).
struct Receiver {
    child: Option<Child>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            kill_with_children(child);
        }
    }
}

impl Receiver {
    /// Starts `pitr watch --slot pitr` and waits until it streams (the slot is active): a receiver
    /// that connected late would begin at the server's current segment, not at WAL written before.
    fn start(c: &Cluster) -> Receiver {
        let mut command = c.pitr_connected_cmd(c.repo());
        command
            .args(["watch", "--workers", "1", "--slot", "pitr", "--pgdata"])
            .arg(c.data_dir());
        let receiver = Receiver {
            child: Some(spawn(&mut command)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'pitr'") != "t" {
            assert!(
                Instant::now() < deadline,
                "the receiver did not stream from slot pitr within 30 s\n{}",
                c.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        receiver
    }

    fn kill_9(self) {
        drop(self);
    }

    fn stop(mut self) -> CmdOutput {
        let child = self.child.take().expect("running");
        terminate_pitr(child, "pitr watch --slot".into(), Duration::from_secs(30))
    }
}

/// A cluster that archives nothing by itself (so that only the receiver stores WAL), with its
/// repository created and the slot `pitr`.
fn streaming_cluster() -> Cluster {
    let c = Cluster::start(ClusterOptions::default().archive(false));
    c.pitr_ok(&["create-repo"]);
    c.pitr_ok(&["slot", "create", "--slot", "pitr"]);
    c
}

fn spool_stream_dir(c: &Cluster) -> PathBuf {
    let data = c.data_dir();
    let name = data.file_name().unwrap().to_string_lossy().into_owned();
    data.with_file_name(format!("{name}.pitr-spool")).join("stream")
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes about `rows` rows' worth of WAL.
fn write_rows(c: &Cluster, rows: u32) {
    c.psql(&format!(
        "CREATE TABLE IF NOT EXISTS t (id int, pad text); \
         INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, {rows}) g"
    ));
}

/// Waits until the repository holds `name`.
fn wait_in_repo(c: &Cluster, name: &str) {
    let found = poll(Duration::from_secs(60), || {
        stored_path(c.repo_dir(), name).exists().then_some(())
    });
    assert!(found.is_some(), "the receiver did not store {name}\n{}", c.log_tail());
}

/// archive-get of `name` gives exactly the bytes of pg_wal's file.
fn assert_same_as_pg_wal(c: &Cluster, name: &str) {
    let dest = c.test_dir().join(format!("got-{name}"));
    c.pitr(&["archive-get", name, dest.to_str().unwrap()]).assert_success();
    assert!(
        read(&dest) == read(&c.pg_wal().join(name)),
        "{name} as stored by the receiver differs from pg_wal's"
    );
}

#[test]
fn streamed_segments_are_stored_and_archive_push_finds_them_stored() {
    let c = streaming_cluster();
    let receiver = Receiver::start(&c);
    let mut names = Vec::new();
    for _ in 0..3 {
        write_rows(&c, 2000);
        names.push(c.switch_wal());
    }
    for name in &names {
        wait_in_repo(&c, name);
        assert_same_as_pg_wal(&c, name);
    }
    // archive_command for a streamed segment trusts the receiver's marker: it does not even read
    // the stored object back (which the slow way, a put that finds the object and compares it,
    // must do). Shown by making the object unreadable.
    let name = &names[1];
    let object = stored_path(c.repo_dir(), name);
    let before = std::fs::metadata(&object).unwrap().modified().unwrap();
    set_mode(&object, 0o000);
    c.pitr_as_server(&["archive-push", &format!("pg_wal/{name}")])
        .assert_success()
        .assert_silent();
    set_mode(&object, 0o600);
    assert_eq!(std::fs::metadata(&object).unwrap().modified().unwrap(), before);
    let out = receiver.stop();
    assert!(out.success(), "{}", out.describe());
    assert!(out.stderr_str().contains("streaming from"), "{}", out.describe());
}

#[test]
fn a_marker_that_does_not_match_the_file_is_not_trusted() {
    let c = streaming_cluster();
    let receiver = Receiver::start(&c);
    write_rows(&c, 1000);
    let name = c.switch_wal();
    wait_in_repo(&c, &name);
    receiver.stop().assert_success();
    // A marker that records other content: archive-push archives the file itself, so it reads
    // the stored object back to compare (and fails while that is unreadable), then succeeds.
    let marker = spool_stream_dir(&c).join(format!("{name}.stored"));
    std::fs::write(&marker, "16777216 deadbeef\n").unwrap();
    let object = stored_path(c.repo_dir(), &name);
    set_mode(&object, 0o000);
    let refused = c.pitr_as_server(&["archive-push", &format!("pg_wal/{name}")]);
    assert!(!refused.success(), "the marker was trusted: {}", refused.describe());
    set_mode(&object, 0o600);
    c.pitr_as_server(&["archive-push", &format!("pg_wal/{name}")])
        .assert_success();
    assert_same_as_pg_wal(&c, &name);
}

/// The receiver's marker records the whole segment's checksum: a file in pg_wal that differs
/// from the streamed segment past its first page (same size, same first 8 KiB) is not taken as
/// archived. archive-push refuses it (exit 1, the stored segment untouched), as it refuses any
/// file whose stored namesake holds other bytes.
#[test]
fn a_file_that_differs_from_the_streamed_segment_past_its_first_page_is_refused() {
    let c = streaming_cluster();
    let receiver = Receiver::start(&c);
    write_rows(&c, 1000);
    let name = c.switch_wal();
    wait_in_repo(&c, &name);
    receiver.stop().assert_success();
    let object = stored_path(c.repo_dir(), &name);
    let stored_before = read(&object);
    let file = c.pg_wal().join(&name);
    let mut bytes = read(&file);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let refused = c.pitr_as_server(&["archive-push", &format!("pg_wal/{name}")]);
    assert_eq!(refused.code(), Some(1), "{}", refused.describe());
    assert!(
        refused.stderr_str().contains(&name) && refused.stderr_str().contains("CRC-32"),
        "{}",
        refused.describe()
    );
    assert!(read(&object) == stored_before, "the stored {name} was changed");
}

#[test]
fn a_receiver_killed_mid_segment_resumes_and_stores_the_whole_segment() {
    let c = streaming_cluster();
    let receiver = Receiver::start(&c);
    write_rows(&c, 500);
    let stream_dir = spool_stream_dir(&c);
    let partial = poll(Duration::from_secs(30), || {
        std::fs::read_dir(&stream_dir)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .map(|e| e.path())
    })
    .expect("no partial segment in the spool");
    let name = partial.file_stem().unwrap().to_string_lossy().into_owned();
    receiver.kill_9();
    assert!(
        !stored_path(c.repo_dir(), &name).exists(),
        "a partial segment was stored as complete"
    );
    // More WAL while no receiver runs: the slot keeps it.
    write_rows(&c, 3000);
    let receiver = Receiver::start(&c);
    let switched = c.switch_wal();
    wait_in_repo(&c, &switched);
    assert_same_as_pg_wal(&c, &name);
    assert_same_as_pg_wal(&c, &switched);
    receiver.stop().assert_success();
}

/// PostgreSQL publishes a segment's last bytes to walsenders only once it has opened the next
/// file; archive_command is called before. The receiver then finishes the segment from the file
/// PostgreSQL marked ready, which this test shows with a walsender that sends nothing at all
/// (stopped with SIGSTOP): the segment is stored all the same, and once the walsender runs again
/// the bytes it sends of that segment are skipped and streaming goes on.
#[test]
fn a_segment_ready_in_pg_wal_is_finished_from_the_file_without_waiting_for_the_server() {
    // Archiving on, but with no command: the segments stay ready in pg_wal.
    let c = Cluster::start(
        ClusterOptions::default()
            .archive(false)
            .setting("archive_mode", "on")
            .setting("archive_command", "''"),
    );
    c.pitr_ok(&["create-repo"]);
    c.pitr_ok(&["slot", "create", "--slot", "pitr"]);
    let receiver = Receiver::start(&c);
    write_rows(&c, 500);
    let walsender = poll(Duration::from_secs(30), || {
        let pid = c.psql("SELECT pid FROM pg_stat_replication WHERE state = 'streaming'");
        (!pid.is_empty()).then_some(pid)
    })
    .expect("the receiver never streamed");
    let stream_dir = spool_stream_dir(&c);
    poll(Duration::from_secs(30), || {
        std::fs::read_dir(&stream_dir)
            .ok()?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .then_some(())
    })
    .expect("no partial segment in the spool");
    send_signal(&walsender, "STOP");
    write_rows(&c, 500);
    let finished = c.switch_wal();
    // The receiver's marker: the watcher, which runs beside it, would archive the file itself
    // after waiting for the receiver, but writes no marker.
    let marker = stream_dir.join(format!("{finished}.stored"));
    let stored = poll(Duration::from_secs(20), || marker.exists().then_some(()));
    send_signal(&walsender, "CONT");
    assert!(
        stored.is_some(),
        "the receiver did not store {finished} while the walsender sent nothing\n{}",
        c.log_tail()
    );
    assert_same_as_pg_wal(&c, &finished);
    write_rows(&c, 500);
    let next = c.switch_wal();
    wait_in_repo(&c, &next);
    assert_same_as_pg_wal(&c, &next);
    let out = receiver.stop();
    assert!(out.success(), "{}", out.describe());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains("connecting again"),
        "the receiver reported trouble:\n{log}"
    );
}

#[test]
fn slots_are_created_and_dropped_and_bad_names_refused() {
    let c = Cluster::start(ClusterOptions::default().archive(false));
    c.pitr_ok(&["slot", "create", "--slot", "pitr_main"]);
    let listed = c.psql(
        "SELECT slot_type || ' ' || (restart_lsn IS NOT NULL) FROM pg_replication_slots WHERE slot_name = 'pitr_main'",
    );
    assert_eq!(listed, "physical true", "the slot reserves WAL from its creation");
    let again = c.pitr_connected(c.repo(), &["slot", "create", "--slot", "pitr_main"]);
    assert_eq!(again.code(), Some(1), "{}", again.describe());
    assert!(again.stderr_str().contains("already exists"), "{}", again.describe());
    c.pitr_ok(&["slot", "drop", "--slot", "pitr_main"]);
    assert_eq!(c.psql("SELECT count(*) FROM pg_replication_slots"), "0");
    let bad = c.pitr_connected(c.repo(), &["slot", "create", "--slot", "pitr; DROP"]);
    assert!(!bad.success(), "{}", bad.describe());
    assert!(
        bad.stderr_str().contains("not a replication slot name"),
        "{}",
        bad.describe()
    );
}

#[test]
fn the_receiver_carries_on_after_a_server_restart_and_a_dropped_connection() {
    let mut c = streaming_cluster();
    let receiver = Receiver::start(&c);
    write_rows(&c, 800);
    let first = c.switch_wal();
    wait_in_repo(&c, &first);
    // The server restarts mid-segment: the receiver connects again and resumes.
    write_rows(&c, 300);
    c.restart();
    write_rows(&c, 300);
    let second = c.switch_wal();
    wait_in_repo(&c, &second);
    // The walsender is terminated mid-segment: the same.
    write_rows(&c, 300);
    let terminated = c.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication");
    assert_eq!(terminated, "1", "the receiver's walsender was not found");
    write_rows(&c, 300);
    let third = c.switch_wal();
    wait_in_repo(&c, &third);
    // Every segment in between is stored whole, none is missing.
    let size = c.wal_segment_size();
    let mut name = first.clone();
    while name <= third {
        wait_in_repo(&c, &name);
        assert_same_as_pg_wal(&c, &name);
        name = later_segment_name(&name, 1, size);
    }
    let out = receiver.stop();
    assert!(out.stderr_str().contains("connecting again"), "{}", out.describe());
}

/// CPU seconds (user + system) the process `pid` has used, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[test]
fn an_idle_watcher_with_a_receiver_uses_next_to_no_cpu() {
    // Its own scans of archive_status must not wake it (inotify reports opening a directory),
    // and an idle replication stream must not keep it busy.
    let c = streaming_cluster();
    let receiver = Receiver::start(&c);
    write_rows(&c, 500);
    let name = c.switch_wal();
    wait_in_repo(&c, &name);
    let pid = pitr_pid(receiver.child.as_ref().unwrap());
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(4));
    let used = cpu_seconds(pid) - before;
    assert!(used < 0.4, "an idle pitr watch --slot used {used:.2} s of CPU in 4 s");
    receiver.stop().assert_success();
}

#[test]
fn streaming_follows_a_timeline_switch_of_the_server_it_streams_from() {
    // A standby that restores the primary's archive: the receiver streams from it (cascading),
    // then the standby is promoted, ending timeline 1 under the receiver.
    let primary = Cluster::start(ClusterOptions::default());
    let backup = primary.base_backup();
    write_rows(&primary, 1000);
    let archived = primary.switch_and_archive();
    let standby = Cluster::recover(
        backup,
        RecoveryOptions {
            standby: true,
            ..Default::default()
        },
    );
    let restored = poll(Duration::from_secs(60), || {
        standby
            .log()
            .contains(&format!("restored log file \"{archived}\""))
            .then_some(())
    });
    assert!(
        restored.is_some(),
        "the standby did not restore {archived}\n{}",
        standby.log_tail()
    );
    standby.pitr_ok(&["slot", "create", "--slot", "pitr"]);
    let receiver = Receiver::start(&standby);
    let streaming = spool_stream_dir(&standby);
    // WAL the standby restores after the receiver started reaches the receiver.
    let started = poll(Duration::from_secs(60), || {
        write_rows(&primary, 500);
        primary.switch_and_archive();
        streaming.join("last-stored").exists().then_some(())
    });
    if started.is_none() {
        let out = receiver.stop();
        panic!(
            "the receiver stored nothing it streamed from the standby:\n{}",
            out.describe()
        );
    }
    standby.psql("SELECT pg_promote()");
    assert!(matches!(standby.wait_recovery_end(), RecoveryOutcome::Promoted));
    // The history file of timeline 2 is stored as the server has it, and the new timeline's
    // segments are stored whole.
    wait_in_repo(&standby, "00000002.history");
    assert_same_as_pg_wal(&standby, "00000002.history");
    write_rows(&standby, 1000);
    let on_two = standby.switch_wal();
    assert!(on_two.starts_with("00000002"), "{on_two}");
    wait_in_repo(&standby, &on_two);
    assert_same_as_pg_wal(&standby, &on_two);
    receiver.stop().assert_success();
}
/// A timeline that ends in the middle of a segment (a streaming standby promoted): the receiver
/// keeps what it has of that segment as `.ended` (PostgreSQL archives its own `.partial` of it),
/// stores none of it as a complete segment, and streams on on the next timeline.
#[test]
fn a_timeline_ending_mid_segment_is_kept_as_ended_and_never_stored_as_complete() {
    let primary = Cluster::start(ClusterOptions::default());
    let backup = primary.base_backup();
    let conninfo = format!("'host={} port={}'", primary.dir().display(), primary.port());
    let standby = Cluster::recover(
        backup,
        RecoveryOptions {
            standby: true,
            ..Default::default()
        }
        .setting("primary_conninfo", &conninfo),
    );
    standby.pitr_ok(&["slot", "create", "--slot", "pitr"]);
    let receiver = Receiver::start(&standby);
    write_rows(&primary, 500);
    let replayed = poll(Duration::from_secs(60), || {
        let rows = standby.psql("SELECT count(*) FROM pg_class WHERE relname = 't'");
        (rows == "1" && standby.psql("SELECT count(*) FROM t") == "500").then_some(())
    });
    assert!(replayed.is_some(), "the standby did not replay\n{}", standby.log_tail());
    let stream_dir = spool_stream_dir(&standby);
    let partial = poll(Duration::from_secs(30), || {
        std::fs::read_dir(&stream_dir)
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.ends_with(".partial"))
    })
    .expect("the receiver streams no segment");
    let name = partial.trim_end_matches(".partial").to_string();
    standby.psql("SELECT pg_promote()");
    assert!(matches!(standby.wait_recovery_end(), RecoveryOutcome::Promoted));
    let ended = stream_dir.join(format!("{name}.ended"));
    let kept = poll(Duration::from_secs(30), || ended.exists().then_some(()));
    assert!(kept.is_some(), "no {name}.ended after the promotion");
    // Part of the segment, durable, and not in the repository.
    let len = std::fs::metadata(&ended).unwrap().len();
    assert!(
        len > 0 && len < standby.wal_segment_size(),
        "{name}.ended holds {len} bytes"
    );
    assert!(
        !stored_path(standby.repo_dir(), &name).exists(),
        "the unfinished {name} of timeline 1 was stored as complete"
    );
    write_rows(&standby, 500);
    let on_two = standby.switch_wal();
    assert!(on_two.starts_with("00000002"), "{on_two}");
    wait_in_repo(&standby, &on_two);
    assert_same_as_pg_wal(&standby, &on_two);
    receiver.stop().assert_success();
}

// ---------------------------------------------------------------------------------------------
// The slot is watched: verify, check and the daemon's /metrics
// ---------------------------------------------------------------------------------------------

/// `pitr --config <config> verify wal --json` connected to `c` (its metrics in `metrics`, when
/// given).
fn run_verify_wal(c: &Cluster, config: &std::path::Path, metrics: Option<&std::path::Path>) -> CmdOutput {
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "verify",
        "wal",
        "--json",
        "--log-file",
        "none",
    ];
    if let Some(metrics) = metrics {
        args.extend(["--metrics-file", metrics.to_str().unwrap()]);
    }
    c.pitr_connected(c.repo(), &args)
}

/// [`run_verify_wal`] with metrics; the exit code asserted, the report returned.
#[track_caller]
fn verify_wal(c: &Cluster, config: &std::path::Path, metrics: &std::path::Path, code: i32) -> serde_json::Value {
    let out = run_verify_wal(c, config, Some(metrics));
    out.assert_code(code);
    parse_json(&out)
}

fn first_reason(report: &serde_json::Value) -> String {
    report["alerts"][0]["reason"].as_str().unwrap_or_default().to_string()
}

const MIB: f64 = 1048576.0;

#[test]
fn a_slot_without_receiver_is_slot_lagging_in_verify_and_its_metrics_until_a_receiver_streams() {
    // archive_command archives as well, so that `verify wal` judges only the slot.
    let c = Cluster::start(ClusterOptions::default());
    c.pitr_ok(&["slot", "create", "--slot", "pitr"]);
    let config = c
        .test_dir()
        .write("slot.toml", "slot = \"pitr\"\n[verify]\nslot_lag = \"1MB\"\n");
    let metrics = c.test_dir().join("pitr.prom");
    write_rows(&c, 10_000);
    c.switch_and_archive();

    let report = verify_wal(&c, &config, &metrics, 1);
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("SlotLagging".to_string(), "slot pitr".to_string())]
    );
    let reason = first_reason(&report);
    for advice in [
        "no WAL receiver streams",
        "pitr watch --slot pitr",
        "pitr slot drop --slot pitr",
        "max_slot_wal_keep_size",
    ] {
        assert!(reason.contains(advice), "{advice:?} not in {reason}");
    }
    let slot = &report["slot"];
    assert_eq!(
        (slot["state"].as_str(), slot["active"].as_bool()),
        (Some("found"), Some(false)),
        "{slot}"
    );
    let retained = slot["retained_bytes"].as_f64().expect("retained bytes");
    assert!(retained > MIB, "{slot}");
    assert_eq!(slot["wal_status"], "reserved", "{slot}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(
        metric(&text, "pitr_slot_retained_wal_bytes{slot=\"pitr\"}"),
        Some(retained),
        "{text}"
    );
    assert_eq!(metric(&text, "pitr_slot_active{slot=\"pitr\"}"), Some(0.0), "{text}");
    assert_eq!(
        metric(&text, "pitr_alerts{alert=\"SlotLagging\",severity=\"warning\"}"),
        Some(1.0),
        "{text}"
    );

    // A receiver streams and catches up: no alert.
    let receiver = Receiver::start(&c);
    let caught_up = poll(Duration::from_secs(60), || {
        let out = run_verify_wal(&c, &config, None);
        (out.code() == Some(0)).then(|| parse_json(&out))
    });
    let report = caught_up.expect("verify stays in alert while a receiver streams");
    assert_eq!(report["slot"]["active"], true, "{report:#}");
    receiver.stop().assert_success();
}

#[test]
fn a_missing_or_lost_slot_is_slot_lost_and_check_says_how_to_create_it() {
    let c = Cluster::start(ClusterOptions::default());
    c.switch_and_archive();
    let config = c.test_dir().write("slot.toml", "slot = \"pitr\"\n");
    let config = config.to_str().unwrap();
    let metrics = c.test_dir().join("pitr.prom");

    let report = verify_wal(&c, config.as_ref(), &metrics, 2);
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("SlotLost".to_string(), "slot pitr".to_string())]
    );
    assert!(
        first_reason(&report).contains("pitr slot create --slot pitr"),
        "{report:#}"
    );
    assert_eq!(report["slot"]["state"], "missing", "{report:#}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(metric(&text, "pitr_slot_active{slot=\"pitr\"}"), Some(0.0), "{text}");
    let check = c.pitr_connected(c.repo(), &["--config", config, "check"]);
    check.assert_code(1);
    assert!(
        check.stderr_str().contains("has no replication slot pitr")
            && check.stderr_str().contains("pitr slot create --slot pitr"),
        "{}",
        check.describe()
    );

    c.pitr_ok(&["slot", "create", "--slot", "pitr"]);
    let check = c.pitr_ok(&["--config", config, "check", "--json"]);
    let report = parse_json(&check);
    let slot = &report["slot"];
    assert_eq!(
        (slot["name"].as_str(), slot["slot_type"].as_str()),
        (Some("pitr"), Some("physical")),
        "{report:#}"
    );
    assert!(slot["retained_bytes"].is_u64(), "{report:#}");
    let check = c.pitr_ok(&["--config", config, "check"]);
    assert!(
        check.stdout_str().contains("ok: replication slot pitr (physical)")
            && check
                .stdout_str()
                .contains("note: start the WAL receiver: pitr watch --slot pitr"),
        "{}",
        check.describe()
    );

    // Bounded by max_slot_wal_keep_size, an idle slot loses WAL at a checkpoint.
    c.psql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
    c.psql("SELECT pg_reload_conf()");
    // 90 s: each round archives a segment and checkpoints, which takes seconds on a busy machine.
    let lost = poll(Duration::from_secs(90), || {
        write_rows(&c, 2000);
        c.switch_and_archive();
        c.psql("CHECKPOINT");
        let status = c.psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pitr'");
        (status == "lost").then_some(())
    });
    assert!(lost.is_some(), "the slot did not lose WAL\n{}", c.log_tail());
    let report = verify_wal(&c, config.as_ref(), &metrics, 2);
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("SlotLost".to_string(), "slot pitr".to_string())]
    );
    assert!(first_reason(&report).contains("wal_status lost"), "{report:#}");
    let check = c.pitr_connected(c.repo(), &["--config", config, "check"]);
    check.assert_code(1);
    assert!(check.stderr_str().contains("has lost WAL"), "{}", check.describe());
}

#[test]
fn the_daemon_serves_the_state_of_the_slot_it_streams_from() {
    let c = streaming_cluster();
    let port = free_port();
    let config = c.test_dir().write(
        "daemon.toml",
        format!(
            "repo = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nslot = \"pitr\"\n\n[schedule]\nhourly = \"off\"\n\
             daily = \"off\"\nweekly = \"off\"\nverify = \"off\"\n",
            c.repo().display()
        ),
    );
    give_to_server_user(&config);
    let mut command = c.daemon_cmd(&config);
    let daemon = spawn(&mut command);
    write_rows(&c, 1000);
    let text = poll(Duration::from_secs(60), || {
        let text = http_get(port, "/metrics")?;
        (metric(&text, "pitr_slot_active{slot=\"pitr\"}")? == 1.0).then_some(text)
    });
    let out = terminate_pitr(daemon, "pitr daemon".into(), Duration::from_secs(30));
    let text = text.unwrap_or_else(|| panic!("no active slot in /metrics\n{}", out.describe()));
    let retained = metric(&text, "pitr_slot_retained_wal_bytes{slot=\"pitr\"}");
    assert!(retained.is_some_and(|bytes| bytes < 16.0 * MIB), "{text}");
    assert!(out.success(), "{}", out.describe());
}

#[test]
fn the_receiver_can_be_a_synchronous_standby() {
    // synchronous_standby_names = 'pitr' (the receiver's application_name): a commit returns only
    // once the receiver has its WAL fsynced in the spool, and waits while no receiver runs.
    let mut c = streaming_cluster();
    c.set("synchronous_standby_names", "'pitr'");
    c.reload();
    let receiver = Receiver::start(&c);
    let sync = poll(Duration::from_secs(30), || {
        (c.psql("SELECT sync_state FROM pg_stat_replication") == "sync").then_some(())
    });
    assert!(sync.is_some(), "the receiver never became the synchronous standby");
    write_rows(&c, 100);
    assert_eq!(c.psql("SELECT count(*) FROM t"), "100");
    // It knows, and so reports each flush at once rather than every 100 ms.
    let out = receiver.stop();
    out.assert_success();
    assert!(
        out.stderr_str().contains("as a synchronous standby"),
        "{}",
        out.describe()
    );
    // Without the synchronous standby a commit waits (wait event SyncRep) until it is cancelled,
    // and PostgreSQL then warns that it committed locally only.
    let mut insert = c.client("psql");
    insert.args(["-X", "-d", "postgres", "-c", "INSERT INTO t VALUES (0, 'x')"]);
    let line = cmdline(&insert);
    let waiting = spawn(&mut insert);
    let waits = poll(Duration::from_secs(20), || {
        (c.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") == "1").then_some(())
    });
    c.psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'");
    let out = wait_child(waiting, line, Duration::from_secs(30)).stderr_str();
    assert!(
        waits.is_some(),
        "a commit did not wait for the synchronous standby: {out}"
    );
    assert!(
        out.contains("canceling wait for synchronous replication"),
        "a commit did not wait for the synchronous standby: {out}"
    );
}

/// The longest snapshot of segment `name` the receiver stored in the repository (0: none).
fn snapshot_len(c: &Cluster, name: &str) -> u64 {
    std::fs::read_dir(c.repo_dir().join("wal").join("stream"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let entry = e.file_name().to_string_lossy().into_owned();
                    u64::from_str_radix(entry.strip_prefix(&format!("{name}."))?, 16).ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn recovery_to_latest_reaches_the_last_streamed_commit_of_a_lost_server() {
    // The server archives as usual; the receiver also streams. The server is then lost in the
    // middle of a segment: the commits in that segment were never archived, only streamed.
    let c = Cluster::start(ClusterOptions::default());
    c.pitr_ok(&["create-repo"]);
    c.pitr_ok(&["slot", "create", "--slot", "pitr"]);
    // pitr's backup first: it expires the WAL before it, which a backup taken earlier would need.
    backup_ok(&c, &[]);
    let backup = c.base_backup();
    let receiver = Receiver::start(&c);
    write_rows(&c, 1000);
    c.switch_and_archive();
    c.psql("CREATE TABLE last_words (said text); INSERT INTO last_words VALUES ('streamed, never archived')");
    let lsn = c.current_lsn();
    let size = c.wal_segment_size();
    let open_segment = format!(
        "00000001{:08X}{:08X}",
        lsn / size / (0x1_0000_0000 / size),
        lsn / size % (0x1_0000_0000 / size)
    );
    let covered = poll(Duration::from_secs(30), || {
        (snapshot_len(&c, &open_segment) >= lsn % size).then_some(())
    });
    assert!(covered.is_some(), "no snapshot of {open_segment} up to {lsn:X}");
    assert!(
        !stored_path(c.repo_dir(), &open_segment).exists(),
        "{open_segment} was archived whole"
    );
    drop(receiver);
    pg_ctl_stop_immediate_quietly(c.dir(), c.data_dir());
    // Recovery from the backup to the end of the archive reaches the last commit.
    let recovered = Cluster::recover(backup, RecoveryOptions::default());
    assert!(
        matches!(recovered.wait_recovery_end(), RecoveryOutcome::Promoted),
        "{}",
        recovered.log_tail()
    );
    assert_eq!(
        recovered.psql("SELECT said FROM last_words"),
        "streamed, never archived"
    );
    assert_eq!(recovered.psql("SELECT count(*) FROM t"), "1000");
    drop(recovered);
    // `pitr recover --target latest`, from the repository alone, reaches it too.
    let nd = NewDir::new();
    let out = run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .args([
            "recover",
            "--target",
            "latest",
            "--verify-sql",
            "SELECT said FROM last_words",
            "--pgdata",
        ])
        .arg(&nd.data));
    assert!(
        out.success(),
        "{}\n--- recovered server log ---\n{}",
        out.describe(),
        nd.server_log()
    );
    assert_eq!(
        out.stdout_line("verify: "),
        "streamed, never archived",
        "{}",
        out.describe()
    );
}
