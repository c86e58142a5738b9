//! Data page checksums checked while `pitr backup` copies (issue #17, "catch it at backup time
//! too"), against real PostgreSQL clusters: a page of a table damaged on disk behind the
//! server's back is named by the backup (which completes) and recorded in its manifest, and
//! `pitr verify` raises BackupVerificationFailed naming the file and the block; a sound cluster
//! has no bad pages and verifies; a cluster without data checksums is not checked.
//!
//! Which pages are skipped (changed since the backup's start), that new all-zero pages pass,
//! and the block numbers of segments and parts are unit tests of `pitr/src/pg/page.rs` and
//! `pitr/src/backup/copy.rs`.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use serde_json::Value;

/// `pitr --repo <c's repo> verify --json` without a server; asserts the exit code.
#[track_caller]
fn verify_json(c: &Cluster, code: i32) -> Value {
    let mut cmd = c.pitr_cmd();
    cmd.env("PGHOST", c.dir().join("no-server-here"))
        .env("PGDATABASE", "postgres");
    let out = run(cmd
        .arg("--repo")
        .arg(c.repo())
        .args(["verify", "--json", "--log-file", "none"]));
    out.assert_code(code);
    parse_json(&out)
}

/// The stored manifest of backup `id` in the daily tier, as JSON.
fn manifest(c: &Cluster, id: &str) -> Value {
    let path = c.repo_dir().join("daily").join(id).join("backup.manifest");
    serde_json::from_slice(&fs::read(&path).unwrap()).unwrap()
}

/// Flips bytes in the tuple area of block `block` of the file at `path` (the page's end, far
/// from its header and line pointers), without touching its checksum.
fn damage_block(path: &Path, block: u64) {
    let file = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let offset = block * 8192 + 6000;
    let mut bytes = [0u8; 16];
    file.read_exact_at(&mut bytes, offset).unwrap();
    for b in &mut bytes {
        *b ^= 0x5a;
    }
    file.write_all_at(&bytes, offset).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn a_damaged_page_is_named_by_the_backup_recorded_and_critical_in_verify() {
    let mut c = Cluster::start(ClusterOptions::default().data_checksums());
    c.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, 5000) g");
    c.psql("VACUUM (FREEZE, ANALYZE) t");
    c.psql("CHECKPOINT");
    let relative = c.psql("SELECT pg_relation_filepath('t')");
    let pages: u64 = c.psql("SELECT pg_relation_size('t') / 8192").parse().unwrap();
    assert!(pages > 10, "{pages} pages");

    // Sound: every page checked, none bad, verify passes.
    let sound = backup_json(&c, &["--tier", "daily"])["backup"].clone();
    let checked = &sound["page_checksums"];
    assert_eq!(checked["checked"], true, "{sound:#}");
    assert_eq!(checked["bad_files"], serde_json::json!([]), "{sound:#}");
    assert!(checked["pages_checked"].as_u64().unwrap() > pages, "{sound:#}");
    let sound_id = json_str(&sound, "id").to_string();
    assert_eq!(manifest(&c, &sound_id)["page_checksums"], *checked);
    assert_eq!(manifest(&c, &sound_id)["format_version"], 6);
    verify_json(&c, 0);

    // Block 2 of the table damaged while the server is down; nothing reads the table after.
    c.stop();
    damage_block(&c.data_dir().join(&relative), 2);
    c.start_server();

    let out = backup_ok(&c, &["--tier", "daily", "--json"]);
    let stderr = out.stderr_str();
    assert!(
        stderr.contains(&format!("page checksum failure in {relative}: block 2 (1 bad page)")),
        "{}",
        out.describe()
    );
    let damaged = parse_json(&out)["backup"].clone();
    let id = json_str(&damaged, "id").to_string();
    let expected = serde_json::json!([{"path": relative, "count": 1, "blocks": [2]}]);
    assert_eq!(damaged["page_checksums"]["bad_files"], expected, "{damaged:#}");
    assert_eq!(manifest(&c, &id)["page_checksums"]["bad_files"], expected);

    let report = verify_json(&c, 2);
    let subject = format!("daily/{id}/files/{relative}");
    assert_eq!(
        alerts_of(&report, "alerts"),
        [("BackupVerificationFailed".to_string(), subject)]
    );
    let reason = report["alerts"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&relative) && reason.contains("block 2 (1 bad page)"),
        "{reason}"
    );

    // check-integrity of that one backup says the same; of the sound one, nothing.
    let integrity = |id: &str| {
        let mut cmd = c.pitr_cmd();
        cmd.arg("--repo").arg(c.repo()).args(["check-integrity", "--json"]);
        run(cmd.arg(c.repo_dir().join("daily").join(id)))
    };
    let out = integrity(&id);
    out.assert_code(2);
    assert_eq!(
        alerts_of(&parse_json(&out), "problems"),
        [(
            "BackupVerificationFailed".to_string(),
            format!("daily/{id}/files/{relative}")
        )]
    );
    integrity(&sound_id).assert_code(0);
}

#[test]
fn a_cluster_without_data_checksums_is_not_checked() {
    let c = Cluster::start(ClusterOptions::default());
    let out = backup_ok(&c, &["--tier", "daily"]);
    assert!(
        out.stdout_str()
            .contains("page checksums: not checked (the cluster has no data checksums)"),
        "{}",
        out.describe()
    );
    let id = out.stdout_str().split_whitespace().nth(1).unwrap().to_string();
    let recorded = &manifest(&c, &id)["page_checksums"];
    assert_eq!(recorded["checked"], false, "{recorded:#}");
    assert_eq!(recorded["pages_checked"], 0, "{recorded:#}");
}
