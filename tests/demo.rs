//! `pitr demo`, the README's first command, runs end to end on this machine.

mod common;

use common::*;

#[test]
fn demo_recovers_the_dropped_table_to_the_restore_point_and_to_the_time() {
    pg_bindir(); // fails with install instructions when there are no server binaries
    let out = run_with_timeout(
        std::process::Command::new(pitr_binary())
            .args(["demo", "--json"])
            .current_dir("/tmp"),
        std::time::Duration::from_secs(120),
    );
    assert!(out.success(), "pitr demo failed:\n{}", out.describe());
    let summary: serde_json::Value = serde_json::from_str(&out.stdout_str()).expect("demo --json prints JSON");
    assert_eq!(summary["rows_at_restore_point"], 1750, "{summary}");
    assert_eq!(summary["rows_at_time"], 1500, "{summary}");
    let stopped = summary["stopped"].as_str().unwrap_or_default();
    assert!(stopped.contains("before_oops"), "{summary}");
    let directory = summary["directory"].as_str().expect("directory");
    assert!(
        !std::path::Path::new(directory).exists(),
        "the demo removes its directory"
    );
}

/// Whether a process's command line mentions `dir` (a server of the demo's directory).
fn processes_in(dir: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(dir) && !cmdline.contains("pitr demo"))
        .collect()
}

#[test]
fn an_interrupted_demo_stops_its_server_and_removes_its_directory() {
    use std::io::BufRead;
    use std::time::Duration;
    pg_bindir();
    let mut child = std::process::Command::new(pitr_binary())
        .arg("demo")
        .current_dir("/tmp")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pitr demo");
    let (lines, narrated) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // Interrupted once its server runs and it has taken its backup.
    let mut directory = None;
    while let Ok(line) = narrated.recv_timeout(Duration::from_secs(120)) {
        if let Some(rest) = line.strip_prefix("1. a throwaway PostgreSQL ") {
            directory = rest
                .split(" cluster in ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .map(str::to_string);
        }
        if line.starts_with("3. pitr backup") {
            break;
        }
    }
    let directory = directory.expect("the demo names its directory");
    assert!(!processes_in(&directory).is_empty(), "the demo's server runs");
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = poll(Duration::from_secs(120), || {
        child.try_wait().expect("wait for pitr demo")
    })
    .expect("pitr demo ends after SIGINT");
    reader.join().expect("stdout reader");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let left = poll(Duration::from_secs(10), || {
        processes_in(&directory).is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "servers of {directory} still run: {:?}",
        processes_in(&directory)
    );
    assert!(!std::path::Path::new(&directory).exists(), "{directory} is left behind");
}

#[test]
fn the_demo_ignores_the_operators_pitr_environment() {
    pg_bindir();
    let out = run_with_timeout(
        std::process::Command::new(pitr_binary())
            .args(["demo", "--json"])
            .env("PITR_CONFIG", "/nonexistent/pitr.toml")
            .env("PITR_COMPRESS", "no-such-compression")
            .current_dir("/tmp"),
        std::time::Duration::from_secs(180),
    );
    assert!(out.success(), "pitr demo failed:\n{}", out.describe());
    let summary: serde_json::Value = serde_json::from_str(&out.stdout_str()).expect("demo --json prints JSON");
    assert_eq!(summary["rows_at_time"], 1500, "{summary}");
}
