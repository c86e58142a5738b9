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
