//! Backup manifests as untrusted, fallible input: one damaged manifest never blocks the bad day
//! (backup, restore of another backup, recover --dry-run, list and expire all go on), a damaged
//! manifest is read from its copy and reported, a lost manifest is reported and its backup never
//! deleted, an edited manifest is found even when its checksum was recomputed, and a manifest
//! that would write outside the restore is refused before anything is written.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use pitr::backup::manifest::Manifest;
use serde_json::Value;

/// `<repo>/<tier>/<id>` of a backup id `<name>_<tier>_<YYYYMMDD_HHMMSS>`.
fn backup_dir(repo: &Path, id: &str) -> PathBuf {
    repo.join(id.split('_').nth(1).unwrap()).join(id)
}

fn take(c: &Cluster, tier: &str) -> String {
    let summary = backup_json(c, &["--tier", tier, "--no-expire"]);
    json_str(&summary["backup"], "id").to_string()
}

fn verify_json(c: &Cluster) -> (Option<i32>, Value) {
    let out = c.pitr(&["verify", "all", "--json"]);
    (out.code(), parse_json(&out))
}

fn alert_subjects(report: &Value) -> Vec<String> {
    report["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {}: {}",
                json_str(a, "alert"),
                json_str(a, "subject"),
                json_str(a, "reason")
            )
        })
        .collect()
}

fn replace(path: &Path, bytes: &[u8]) {
    let mode = fs::metadata(path).unwrap().permissions();
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, mode).unwrap();
    give_to_server_user(path);
}

fn flip(path: &Path, offset: usize) {
    let mut bytes = read(path);
    bytes[offset] ^= 0x04;
    replace(path, &bytes);
}

#[test]
fn one_unreadable_backup_blocks_nothing_and_a_damaged_manifest_is_read_from_its_copy() {
    let c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let damaged = take(&c, "daily");
    let good = take(&c, "hourly");
    let damaged_dir = backup_dir(c.repo_dir(), &damaged);
    assert!(damaged_dir.join("backup.manifest.copy").is_file());

    // The manifest alone damaged: the backup still reads (from the copy), and verify says so.
    let manifest = damaged_dir.join("backup.manifest");
    let original = read(&manifest);
    flip(&manifest, original.len() / 3);
    let (code, report) = verify_json(&c);
    assert_eq!(code, Some(2), "{report}");
    let alerts = alert_subjects(&report);
    assert!(
        alerts
            .iter()
            .any(|a| a.contains("backup.manifest") && a.contains("read from backup.manifest.copy")),
        "{alerts:?}"
    );
    let restored = c.test_dir().subdir("from-copy");
    fs::remove_dir(&restored).unwrap();
    c.pitr(&["restore", "--pgdata", restored.to_str().unwrap(), "--backup", &damaged])
        .assert_success();

    // Manifest and copy damaged: that backup is unreadable, and everything else goes on.
    flip(&damaged_dir.join("backup.manifest.copy"), original.len() / 2);
    let (code, report) = verify_json(&c);
    assert_eq!(code, Some(2));
    assert!(
        alert_subjects(&report)
            .iter()
            .any(|a| a.contains(&damaged) && a.contains("cannot be restored")),
        "{report}"
    );
    let list = c.pitr(&["list"]);
    list.assert_success();
    assert!(list.stdout_str().contains(&good), "{}", list.describe());
    assert!(list.stdout_str().contains("UNREADABLE"), "{}", list.describe());
    let json = c.pitr(&["list", "--json"]);
    json.assert_success();
    let ids: Vec<String> = parse_json(&json)
        .as_array()
        .unwrap()
        .iter()
        .map(|b| json_str(b, "id").to_string())
        .collect();
    assert_eq!(ids, std::slice::from_ref(&good));

    let target = c.test_dir().subdir("other");
    fs::remove_dir(&target).unwrap();
    c.pitr(&["restore", "--pgdata", target.to_str().unwrap(), "--backup", &good])
        .assert_success();
    let named = c.pitr(&[
        "restore",
        "--pgdata",
        target.to_str().unwrap(),
        "--force",
        "--backup",
        &damaged,
    ]);
    assert_eq!(named.code(), Some(1));
    assert!(
        named.stderr_str().contains("cannot be restored"),
        "{}",
        named.describe()
    );

    let dry = c.pitr(&[
        "recover",
        "--pgdata",
        c.test_dir().join("never").to_str().unwrap(),
        "--target",
        "latest",
        "--dry-run",
    ]);
    dry.assert_success();
    assert!(dry.stdout_str().contains(&good), "{}", dry.describe());

    backup_ok(&c, &["--tier", "hourly"]);
    assert!(
        damaged_dir.join("backup.manifest").is_file(),
        "a backup deleted the unreadable one"
    );

    let wal_before = fs::read_dir(c.repo_dir().join("wal")).unwrap().count();
    let expire = c.pitr(&["expire"]);
    expire.assert_success();
    assert!(
        expire
            .stdout_str()
            .contains(&format!("kept unreadable backup {damaged}")),
        "{}",
        expire.describe()
    );
    assert!(damaged_dir.is_dir());
    assert_eq!(fs::read_dir(c.repo_dir().join("wal")).unwrap().count(), wal_before);
}

/// Deleting a manifest (and its copy) does not make a backup vanish quietly, and the next
/// backup does not take it for an interrupted one.
#[test]
fn a_lost_manifest_is_reported_and_its_backup_is_kept() {
    let c = Cluster::start(ClusterOptions::default());
    let id = take(&c, "daily");
    let dir = backup_dir(c.repo_dir(), &id);
    fs::remove_file(dir.join("backup.manifest")).unwrap();
    let (code, report) = verify_json(&c);
    assert_eq!(code, Some(2), "{report}");
    assert!(
        alert_subjects(&report).iter().any(|a| a.contains("is missing")),
        "{report}"
    );
    fs::remove_file(dir.join("backup.manifest.copy")).unwrap();
    let (code, report) = verify_json(&c);
    assert_eq!(code, Some(2), "{report}");
    assert!(
        alert_subjects(&report)
            .iter()
            .any(|a| a.contains(&id) && a.contains("cannot be restored")),
        "{report}"
    );
    let next = backup_json(&c, &["--tier", "daily", "--no-expire"]);
    assert_eq!(next["backup"]["cleaned_up"], serde_json::json!([]), "{next}");
    assert!(
        dir.join("files").is_dir(),
        "the next backup deleted the files of the lost one"
    );
}

/// An entry removed from a manifest, its totals and checksum made to agree: verify still finds
/// the object the manifest no longer names (a restore would leave that file out).
#[test]
fn an_edited_manifest_with_a_recomputed_checksum_is_found_by_its_objects() {
    let c = Cluster::start(ClusterOptions::default());
    let id = take(&c, "daily");
    let dir = backup_dir(c.repo_dir(), &id);
    let path = dir.join("backup.manifest");
    let mut manifest = Manifest::from_bytes(&read(&path), "manifest").unwrap();
    let removed = manifest
        .files
        .remove(manifest.files.iter().position(|f| f.path.starts_with("base/")).unwrap());
    manifest.original_bytes -= removed.size;
    manifest.stored_bytes -= removed.stored_size;
    let edited = manifest.to_bytes();
    replace(&path, &edited);
    replace(&dir.join("backup.manifest.copy"), &edited);
    let (code, report) = verify_json(&c);
    assert_eq!(code, Some(2), "{report}");
    assert!(
        alert_subjects(&report)
            .iter()
            .any(|a| a.contains("not in its manifest") && a.contains(&removed.path)),
        "{report}"
    );
}

/// A manifest that names an absolute path, a `..` path and a set-uid mode: verify and
/// check-integrity are critical, and a restore run as root writes nothing at all.
#[test]
fn a_manifest_that_would_write_outside_the_restore_is_refused_before_writing() {
    let c = Cluster::start(ClusterOptions::default());
    let id = take(&c, "daily");
    let dir = backup_dir(c.repo_dir(), &id);
    let outside = c.test_dir().subdir("outside");
    let mut manifest = Manifest::from_bytes(&read(&dir.join("backup.manifest")), "manifest").unwrap();
    let mut planted = manifest.files[0].clone();
    planted.path = outside.join("planted").display().to_string();
    planted.mode = 0o4755;
    let mut climbing = manifest.files[0].clone();
    climbing.path = "base/../../../climbed".into();
    manifest.files.insert(0, planted);
    manifest.files.insert(0, climbing);
    let tampered = manifest.to_bytes();
    replace(&dir.join("backup.manifest"), &tampered);
    replace(&dir.join("backup.manifest.copy"), &tampered);

    let (code, report) = verify_json(&c);
    assert_eq!(code, Some(2), "{report}");
    let integrity = c.pitr(&["check-integrity", dir.to_str().unwrap()]);
    assert_eq!(integrity.code(), Some(2), "{}", integrity.describe());

    let target = c.test_dir().join("restored-as-root");
    let mut as_root = std::process::Command::new(pitr_binary());
    as_root
        .envs(c.env())
        .args(["--repo", c.repo().to_str().unwrap(), "restore", "--pgdata"])
        .arg(&target)
        .args(["--backup", &id]);
    let out = run(&mut as_root);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr_str().contains("nothing was restored"), "{}", out.describe());
    assert!(!outside.join("planted").exists());
    assert!(!c.test_dir().path().parent().unwrap().join("climbed").exists());
    assert!(
        !target.exists() || fs::read_dir(&target).unwrap().next().is_none(),
        "the refused restore wrote into its target"
    );
}
