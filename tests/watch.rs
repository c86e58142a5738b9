//! The watcher (`pitr watch`) and restore prefetch against real PostgreSQL servers.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::*;

/// `pitr watch` running as the server user in its own process group.
struct Watcher {
    child: Child,
}

impl Watcher {
    fn start(c: &Cluster) -> Watcher {
        let mut command = c.pitr_cmd();
        command
            .arg("--repo")
            .arg(c.repo())
            .args(["watch", "--workers", "2", "--pgdata"])
            .arg(c.data_dir());
        command.process_group(0);
        Watcher {
            child: spawn(&mut command),
        }
    }

    /// SIGKILL to the whole group (runuser and pitr).
    fn kill_9(mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }

    /// SIGTERM to pitr itself (not runuser, which would kill it): it finishes the files in
    /// flight and exits 0.
    fn terminate(self) -> CmdOutput {
        terminate_pitr(self.child, "pitr watch".into(), Duration::from_secs(30))
    }
}

/// The `.ready` segments, waiting because archive_command fails on purpose.
fn ready_segments(c: &Cluster) -> Vec<String> {
    c.archive_status()
        .1
        .into_iter()
        .filter(|n| is_segment_name(n))
        .collect()
}

/// Waits until every ready segment is in the repository.
fn wait_stored(c: &Cluster, names: &[String]) {
    let stored = poll(Duration::from_secs(120), || {
        names
            .iter()
            .all(|n| stored_path(c.repo_dir(), n).exists())
            .then_some(())
    });
    assert!(stored.is_some(), "the watcher did not store all of {names:?}");
}

/// archive-get returns exactly the bytes in pg_wal.
fn assert_round_trip(c: &Cluster, names: &[String]) {
    let out_dir = TestDir::new("get");
    for name in names {
        let dest = out_dir.join(name);
        c.pitr(&["archive-get", name, dest.to_str().unwrap()]).assert_success();
        assert_eq!(
            read(&dest),
            read(&c.pg_wal().join(name)),
            "{name} differs after archive-get"
        );
    }
}

#[test]
fn the_watcher_stores_every_ready_segment_survives_kill_9_and_archive_push_then_returns_at_once() {
    // archive_command fails, so PostgreSQL keeps every segment .ready: only the watcher archives.
    let mut c = Cluster::start(ClusterOptions::default().setting("archive_command", "'/bin/false'"));
    c.pgbench_init(5);
    let watcher = Watcher::start(&c);
    c.pgbench(&["-T", "4", "-c", "2"]).assert_success();
    watcher.kill_9(); // possibly mid-copy
    for _ in 0..3 {
        c.switch_wal();
        c.psql("INSERT INTO pgbench_history SELECT 1, 1, 1, 1, now() FROM generate_series(1, 20000)");
    }
    c.switch_wal();
    let ready = ready_segments(&c);
    assert!(ready.len() >= 5, "expected a backlog of ready segments, got {ready:?}");

    // A restarted watcher catches up on the whole backlog; nothing is lost or damaged.
    let watcher = Watcher::start(&c);
    wait_stored(&c, &ready);
    assert_round_trip(&c, &ready);
    let stopped = watcher.terminate();
    assert_eq!(
        stopped.code(),
        Some(0),
        "SIGTERM exits cleanly:\n{}",
        stopped.describe()
    );

    // archive-push trusts the watcher's marker for exactly that file: it does not even read it
    // (an unreadable file still succeeds), and never renames .ready/.done itself.
    let spool = PathBuf::from(format!("{}.pitr-spool", c.data_dir().display()));
    let marked = &ready[ready.len() - 1];
    assert!(spool.join("pushed").join(marked).exists(), "no marker for {marked}");
    let file = c.pg_wal().join(marked);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o000)).unwrap();
    let out = run(c
        .pitr_cmd_in_data_dir()
        .arg("--repo")
        .arg(c.repo())
        .arg("archive-push")
        .arg(format!("pg_wal/{marked}")));
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    out.assert_success().assert_silent();
    assert!(c
        .pg_wal()
        .join("archive_status")
        .join(format!("{marked}.ready"))
        .exists());

    // With the real archive_command back, PostgreSQL marks everything done (a new segment wakes
    // the archiver, which otherwise sleeps up to a minute after failures).
    let command = format!(
        "'{} --repo {} archive-push %p'",
        c.pitr_bin().display(),
        c.repo().display()
    );
    c.set("archive_command", &command);
    c.reload();
    c.switch_wal();
    c.wait_archiver_idle();
}

#[test]
fn the_watcher_reports_an_unwritable_repository_and_drops_nothing() {
    let c = Cluster::start(ClusterOptions::default().setting("archive_command", "'/bin/false'"));
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 100000) g");
    let segment = c.switch_wal();
    let watcher = if let Some(server) = c.s3_server() {
        // The store is down for 3 s: connections are refused, then it answers again.
        let restarting = std::thread::scope(|scope| {
            let down = scope.spawn(|| server.down_for(Duration::from_secs(3)));
            std::thread::sleep(Duration::from_millis(300));
            let watcher = Watcher::start(&c);
            down.join().unwrap();
            watcher
        });
        restarting
    } else {
        fs::set_permissions(c.repo(), fs::Permissions::from_mode(0o500)).unwrap();
        let watcher = Watcher::start(&c);
        std::thread::sleep(Duration::from_secs(3));
        fs::set_permissions(c.repo(), fs::Permissions::from_mode(0o700)).unwrap();
        watcher
    };
    wait_stored(&c, std::slice::from_ref(&segment));
    let out = watcher.terminate();
    let log = out.stderr_str();
    assert!(
        log.lines().any(|l| l.contains("archiving failed; retrying")
            && l.contains(&format!("segment={segment}"))
            && l.contains("retry_in_s=")),
        "the failure is reported with its segment and retry:\n{log}"
    );
    assert!(log.contains(&format!("archived segment={segment}")), "{log}");
    assert_round_trip(&c, &[segment]);
}

/// The primary, a table with `rows` rows written after the backup, and that backup.
fn primary_with_rows_after_backup(rows: u32) -> (Cluster, BaseBackup) {
    let c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE TABLE t (id int PRIMARY KEY, pad text)");
    let backup = c.base_backup();
    for i in 0..6 {
        c.psql(&format!(
            "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series({}, {}) g",
            i * rows / 6 + 1,
            (i + 1) * rows / 6
        ));
        c.switch_wal();
    }
    c.wait_archived(&c.switch_wal());
    (c, backup)
}

fn spool_of(data: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pitr-spool", data.display()))
}

#[test]
fn recovery_with_prefetch_ends_in_the_same_state_as_without() {
    let (c, backup) = primary_with_rows_after_backup(60_000);
    let expected = c.psql("SELECT count(*), sum(id) FROM t");
    let data = backup.data.clone();
    let done = Arc::new(AtomicBool::new(false));
    let recorder = record_spool(data, done.clone());
    let recovered = Cluster::recover(backup, RecoveryOptions::default());
    recovered.expect_promoted();
    done.store(true, Ordering::SeqCst);
    assert_eq!(recovered.psql("SELECT count(*), sum(id) FROM t"), expected);
    let seen = recorder.join().unwrap();
    assert!(seen.contains("owner"), "prefetch ran into the spool: {seen:?}");

    let (c, backup) = primary_with_rows_after_backup(60_000);
    let expected = c.psql("SELECT count(*), sum(id) FROM t");
    let config = backup.data.parent().unwrap().join("no-prefetch.toml");
    fs::write(&config, "prefetch = 0\n").unwrap();
    give_to_server_user(&config);
    let command = format!(
        "{} --repo {} --config {} archive-get %f %p",
        c.pitr_bin().display(),
        c.repo().display(),
        config.display()
    );
    let data = backup.data.clone();
    let recovered = Cluster::recover(
        backup,
        RecoveryOptions {
            restore_command: Some(command),
            ..Default::default()
        },
    );
    recovered.expect_promoted();
    assert_eq!(recovered.psql("SELECT count(*), sum(id) FROM t"), expected);
    assert!(
        !spool_of(&data).join("prefetch").join("owner").exists(),
        "prefetch = 0 fetches nothing ahead"
    );
}

/// The segment names in the prefetch area of `data`'s spool.
fn spooled_segments(data: &Path) -> Vec<String> {
    fs::read_dir(spool_of(data).join("prefetch"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_segment_name(n) || n.ends_with(".crc"))
        .collect()
}

/// Records every file name that appears in the prefetch area of `data`'s spool until `done` is
/// set.
fn record_spool(data: PathBuf, done: Arc<AtomicBool>) -> std::thread::JoinHandle<BTreeSet<String>> {
    std::thread::spawn(move || {
        let area = spool_of(&data).join("prefetch");
        let mut seen = BTreeSet::new();
        while !done.load(Ordering::SeqCst) {
            let names = fs::read_dir(&area).into_iter().flatten().filter_map(|e| e.ok());
            seen.extend(names.map(|e| e.file_name().to_string_lossy().into_owned()));
            std::thread::sleep(Duration::from_millis(5));
        }
        seen
    })
}

const SEGMENT: u64 = 16 << 20;

/// Starts `pitr prefetch` for the segments after the backup's first one, as archive-get would:
/// from the backup's data directory, in recovery (`recovery.signal`, which Cluster::recover
/// writes again). Once it stopped fetching it watches for the end of recovery, until the
/// recovery's own prefetcher takes the watch over.
fn prefetch_ahead(c: &Cluster, backup: &BaseBackup) -> Child {
    let signal = backup.data.join("recovery.signal");
    fs::write(&signal, b"").unwrap();
    give_to_server_user(&signal);
    let mut prefetch = c.pitr_cmd();
    prefetch
        .current_dir(&backup.data)
        .arg("--repo")
        .arg(c.repo())
        .args(["prefetch", &backup.start_wal_file]);
    spawn(&mut prefetch)
}

/// Waits until `data`'s spool holds an announced segment that `wanted` accepts; the segment
/// files then there.
fn wait_prefetched(data: &Path, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let found = poll(Duration::from_secs(60), || {
        let spooled = spooled_segments(data);
        spooled
            .iter()
            .filter_map(|n| n.strip_suffix(".crc"))
            .any(&wanted)
            .then_some(spooled)
    });
    found.unwrap_or_else(|| panic!("not prefetched: the spool holds {:?}", spooled_segments(data)))
}

#[test]
fn a_damaged_prefetched_segment_is_replaced_by_the_repository_copy() {
    let (c, backup) = primary_with_rows_after_backup(30_000);
    let expected = c.psql("SELECT count(*), sum(id) FROM t");
    // Prefetch, then damage the first prefetched segment.
    let prefetcher = prefetch_ahead(&c, &backup);
    let name = later_segment_name(&backup.start_wal_file, 1, SEGMENT);
    wait_prefetched(&backup.data, |n| n == name);
    let victim = spool_of(&backup.data).join("prefetch").join(&name);
    flip_byte_from_end(&victim, 100);

    let recovered = Cluster::recover(backup, RecoveryOptions::default());
    recovered.expect_promoted();
    assert_eq!(recovered.psql("SELECT count(*), sum(id) FROM t"), expected);
    let log = recovered.log();
    let warning = format!(
        "pitr archive-get: warning: the prefetched copy {} was damaged",
        victim.display()
    );
    assert!(log.contains(&warning), "{}", tail(&log, 40));
    assert!(
        log.contains(&format!("restored {name} from the repository instead")),
        "{}",
        tail(&log, 40)
    );
    // The prefetcher of before the recovery left the watch to the recovery's own.
    let out = wait_child(prefetcher, "pitr prefetch".into(), Duration::from_secs(60));
    out.assert_success();
}

#[test]
fn a_corrupt_archived_segment_aborts_recovery_with_prefetch_on() {
    let (c, backup) = primary_with_rows_after_backup(30_000);
    let name = later_segment_name(&backup.start_wal_file, 2, SEGMENT);
    flip_byte_from_end(&stored_path(c.repo_dir(), &name), 100);
    let recovered = Cluster::recover(backup, RecoveryOptions::default());
    match recovered.wait_recovery_end() {
        RecoveryOutcome::Failed { log } => {
            assert!(log.contains("could not restore file"), "{}", tail(&log, 30));
            assert!(log.contains(&format!("{name} is corrupt")), "{}", tail(&log, 30));
            assert!(
                !log.contains("selected new timeline"),
                "it must not promote:\n{}",
                tail(&log, 30)
            );
        }
        RecoveryOutcome::Promoted => panic!("recovery promoted over the corrupt archived segment {name}"),
    }
}

#[test]
fn a_recovery_that_stops_early_leaves_no_prefetched_wal_behind() {
    let c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE TABLE t (id int PRIMARY KEY, pad text)");
    let backup = c.base_backup();
    let insert = |from: u32| {
        c.psql(&format!(
            "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series({from}, {}) g",
            from + 9_999
        ));
        c.switch_wal();
    };
    insert(1);
    insert(10_001);
    let target = c.psql("SELECT pg_current_wal_lsn()");
    let target_segment = c.psql(&format!("SELECT pg_walfile_name('{target}')"));
    let expected = c.psql("SELECT count(*), sum(id) FROM t");
    for i in 2..12 {
        insert(i * 10_000 + 1);
    }
    c.wait_archived(&c.switch_wal());

    // Segments beyond the target are prefetched before recovery stops at it.
    let prefetcher = prefetch_ahead(&c, &backup);
    wait_prefetched(&backup.data, |n| n[8..] > target_segment[8..]);
    let data = backup.data.clone();
    let recovered = Cluster::recover(
        backup,
        RecoveryOptions::default()
            .setting("recovery_target_lsn", &format!("'{target}'"))
            .setting("recovery_target_action", "'promote'"),
    );
    recovered.expect_promoted();
    assert_eq!(recovered.psql("SELECT count(*), sum(id) FROM t"), expected);
    let left = poll(Duration::from_secs(10), || {
        spooled_segments(&data).is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "prefetched WAL left behind after promotion: {:?}",
        spooled_segments(&data)
    );
    let out = wait_child(prefetcher, "pitr prefetch".into(), Duration::from_secs(60));
    out.assert_success();
}

#[test]
fn prefetch_follows_the_timeline_recovery_follows() {
    // Timeline 2 branches off timeline 1; the old primary goes on writing on timeline 1.
    let c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE TABLE t (id int PRIMARY KEY, pad text)");
    let early = c.base_backup();
    let insert = |on: &Cluster, from: u32| {
        on.psql(&format!(
            "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series({from}, {}) g",
            from + 9_999
        ));
        on.switch_wal();
    };
    insert(&c, 1);
    let copy = Cluster::recover(c.base_backup(), RecoveryOptions::default().archive(true));
    copy.expect_promoted();
    copy.wait_archived("00000002.history");
    for i in 1..4 {
        insert(&copy, i * 10_000 + 1);
    }
    copy.wait_archived(&copy.switch_wal());
    let expected = copy.psql("SELECT count(*), sum(id) FROM t");
    for i in 10..18 {
        insert(&c, i * 10_000 + 1);
    }
    c.wait_archived(&c.switch_wal());
    // Its first archived segment is the one holding the switch point.
    let switch_segment = fs::read_dir(c.repo_dir().join("wal"))
        .unwrap()
        .filter_map(|dir| fs::read_dir(dir.ok()?.path()).ok())
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_segment_name(n) && n.starts_with("00000002"))
        .min()
        .expect("timeline 2 archived segments");

    // The window after the early backup's first segment crosses the switch.
    let data = early.data.clone();
    let prefetcher = prefetch_ahead(&c, &early);
    let ahead = wait_prefetched(&data, |n| n.starts_with("00000002"));

    // Recovery from the early backup follows timeline 2 (recovery_target_timeline = latest).
    let done = Arc::new(AtomicBool::new(false));
    let recorder = record_spool(data.clone(), done.clone());
    let recovered = Cluster::recover(early, RecoveryOptions::default());
    recovered.expect_promoted();
    done.store(true, Ordering::SeqCst);
    let mut seen = recorder.join().unwrap();
    seen.extend(ahead.into_iter().filter(|n| is_segment_name(n)));
    assert_eq!(recovered.psql("SELECT count(*), sum(id) FROM t"), expected);
    let off_path: Vec<&String> = seen
        .iter()
        .filter(|n| is_segment_name(n) && n.starts_with("00000001") && n[8..] >= switch_segment[8..])
        .collect();
    assert!(
        off_path.is_empty(),
        "prefetched timeline 1 past its switch ({switch_segment}): {off_path:?}"
    );
    let out = wait_child(prefetcher, "pitr prefetch".into(), Duration::from_secs(60));
    out.assert_success();
}

#[test]
fn sighup_makes_the_watcher_store_with_the_new_compression() {
    let c = Cluster::start(ClusterOptions::default().setting("archive_command", "'/bin/false'"));
    let config_with = |compress: &str| format!("repo = \"{}\"\ncompress = \"{compress}\"\n", c.repo().display());
    let config = c.test_dir().write("watch.toml", config_with("zstd"));
    let mut command = c.pitr_cmd();
    command
        .arg("--config")
        .arg(&config)
        .args(["watch", "--pgdata"])
        .arg(c.data_dir());
    let watcher = spawn(&mut command);
    // Byte 5 of a stored object is its compression: 1 zstd, 2 gzip.
    let stored_compression = |segment: &String| {
        wait_stored(&c, std::slice::from_ref(segment));
        read(&stored_path(c.repo_dir(), segment))[5]
    };
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 10000) g");
    assert_eq!(stored_compression(&c.switch_wal()), 1, "zstd before the reload");

    c.test_dir().write("watch.toml", config_with("gzip"));
    let pid = pitr_pid(&watcher).to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_secs(2));
    c.psql("INSERT INTO t SELECT generate_series(1, 10000)");
    let after = c.switch_wal();
    assert_eq!(stored_compression(&after), 2, "gzip after the reload");
    assert_round_trip(&c, &[after]);

    let out = terminate_pitr(watcher, "pitr watch".into(), Duration::from_secs(30));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr_str().contains("settings reloaded: compression gzip"),
        "{}",
        out.describe()
    );
}

/// The first log line of `pitr watch` (the one saying what it watches), its stderr a pipe and
/// `JOURNAL_STREAM` set as systemd sets it: to that pipe's "<device>:<inode>" when `journal`,
/// else to another stream's (a variable inherited from a parent whose stderr went to the journal).
fn first_watch_line(c: &Cluster, journal: bool) -> String {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    let stat = rustix::fs::fstat(&writer).expect("fstat of the pipe");
    let inode = if journal { stat.st_ino } else { stat.st_ino + 1 };
    let mut command = c.pitr_cmd();
    command
        .env("JOURNAL_STREAM", format!("{}:{inode}", stat.st_dev))
        .arg("--repo")
        .arg(c.repo())
        .args(["watch", "--pgdata"])
        .arg(c.data_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer);
    let mut child = command.spawn().expect("start pitr watch");
    // The command holds the pipe's writing end: without it, the reader sees the end once pitr exits.
    drop(command);
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let first = received.recv_timeout(Duration::from_secs(30));
    let pid = pitr_pid(&child).to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = child.wait().expect("wait for pitr watch");
    let line = first.unwrap_or_else(|_| panic!("pitr watch logged nothing within 30 s (exit: {status})"));
    assert!(status.success(), "pitr watch exited with {status} after: {line}");
    line
}

#[test]
fn under_journald_log_lines_carry_a_priority_and_no_timestamp() {
    let c = Cluster::start(ClusterOptions::default());
    let journal = first_watch_line(&c, true);
    assert!(
        journal.starts_with("<6>") && journal.contains("watching"),
        "an info line with its syslog priority: {journal}"
    );
    let rest = journal.trim_start_matches("<6>").trim_start();
    assert!(rest.starts_with("INFO "), "the level, no timestamp: {journal}");
    // JOURNAL_STREAM names another stream: a terminal's plain line, with its timestamp.
    let plain = first_watch_line(&c, false);
    let (timestamp, rest) = plain.split_once(' ').unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
        "a line that starts with its timestamp: {plain}"
    );
    assert!(
        rest.trim_start().starts_with("INFO ") && rest.contains("watching"),
        "{plain}"
    );
}
