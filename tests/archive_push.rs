//! `pitr archive-push`: what it stores, and every way it refuses.
//!
//! Segments always come from real clusters (copied out of `pg_wal` after a switch); refusal cases
//! are made by renaming, truncating or changing bytes of those real files, never by hand-crafting
//! WAL.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;

use common::*;

/// A small cluster that does not archive: a source of real 1 MB segments.
fn source_cluster() -> Cluster {
    Cluster::start(ClusterOptions::default().wal_segsize_mb(1).archive(false))
}

/// All files below `repo/wal` (recursively), but the marker that says wal/ is the archive.
fn stored_files(repo: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if !path.ends_with(".pitr-archive") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo.join("wal"), &mut out);
    out.sort();
    out
}

/// Reads `repo.json` as JSON.
fn repo_json(repo: &Path) -> serde_json::Value {
    let bytes = read(&repo.join("repo.json"));
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("repo.json is not valid JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// A JSON number or numeric string as u64.
fn json_u64(value: &serde_json::Value) -> Option<u64> {
    value.as_u64().or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

/// Runs `archive-get <name> <dest>` and asserts it returns exactly `expected`.
#[track_caller]
fn assert_get_returns(c: &Cluster, repo: &Path, name: &str, expected: &[u8]) {
    let dest_dir = c.test_dir().subdir("restored");
    let dest = dest_dir.join(format!("{name}.restored"));
    let _ = fs::remove_file(&dest);
    let out = c.pitr_with_repo(repo, &["archive-get", name, dest.to_str().unwrap()]);
    out.assert_success();
    let got = read(&dest);
    assert!(
        got == expected,
        "archive-get {name} returned {} bytes that differ from the {} original bytes",
        got.len(),
        expected.len()
    );
}

#[test]
fn archive_push_stores_segment_silently_and_records_cluster_in_repo_json() {
    let c = source_cluster();
    let repo = c.repo_dir();
    let first = c.switch_wal();

    // As PostgreSQL calls it: path relative to the data directory.
    c.pitr_as_server(&["archive-push", &format!("pg_wal/{first}")])
        .assert_success()
        .assert_silent();
    let stored = stored_path(repo, &first);
    assert!(
        stored.is_file(),
        "{first} not stored at {}; repo holds {:?}",
        stored.display(),
        stored_files(repo)
    );

    let json = repo_json(repo);
    for key in ["format_version", "pg_version", "system_identifier", "wal_segment_size"] {
        assert!(json.get(key).is_some(), "repo.json lacks {key:?}: {json}");
    }
    assert_eq!(
        json_u64(&json["system_identifier"]),
        Some(c.system_identifier()),
        "repo.json system_identifier: {json}"
    );
    assert_eq!(
        json_u64(&json["wal_segment_size"]),
        Some(1024 * 1024),
        "repo.json wal_segment_size (bytes): {json}"
    );
    let major = c.major_version().to_string();
    assert!(
        json["pg_version"].to_string().contains(&major),
        "repo.json pg_version should name PostgreSQL {major}: {json}"
    );

    // An absolute path works too.
    let second = c.switch_wal();
    let abs = c.pg_wal().join(&second);
    c.pitr(&["archive-push", abs.to_str().unwrap()])
        .assert_success()
        .assert_silent();

    for name in [&first, &second] {
        assert_get_returns(&c, c.repo(), name, &read(&c.pg_wal().join(name)));
    }

    // archive-get into a path relative to the data directory, as PostgreSQL calls it.
    let out = c.pitr_as_server(&["archive-get", &first, "pg_wal/RECOVERYXLOG"]);
    out.assert_success().assert_silent();
    let restored = c.pg_wal().join("RECOVERYXLOG");
    assert!(read(&restored) == read(&c.pg_wal().join(&first)));
    fs::remove_file(restored).unwrap();
}

#[test]
fn archive_push_refuses_names_that_are_not_wal_files() {
    let c = source_cluster();
    let (name, bytes) = c.capture_segment();
    let scratch = c.test_dir().subdir("scratch");
    let bad_names = [
        "foo".to_string(),
        format!("{name}.tmp"),
        format!("{}a", &name[..23]), // lower-case hex
        name[..23].to_string(),
        format!("{name}0"),
        format!("{}G", &name[..23]),
        "RECOVERYXLOG".to_string(),
        "archtemp.000000010000000000000001".to_string(),
        "00000002.historyx".to_string(),
        "0000002.history".to_string(),
        format!("{name}.1234.backup"),
        format!("{name}.partial.tmp"),
    ];
    for bad in &bad_names {
        c.test_dir().write(format!("scratch/pg_wal/{bad}"), &bytes);
        let out = run(c
            .pitr_cmd()
            .current_dir(&scratch)
            .arg("--repo")
            .arg(c.repo())
            .arg("archive-push")
            .arg(format!("pg_wal/{bad}")));
        assert!(
            !out.success(),
            "archive-push accepted a file named {bad:?}:\n{}",
            out.describe()
        );
        out.assert_one_line_error();
    }
    assert!(
        stored_files(c.repo_dir()).is_empty(),
        "refused pushes stored files: {:?}",
        stored_files(c.repo_dir())
    );
}

#[test]
fn archive_push_refuses_missing_file() {
    let c = source_cluster();
    let out = c.pitr(&["archive-push", "pg_wal/0000000100000000000000FE"]);
    assert!(!out.success(), "pushing a missing file succeeded:\n{}", out.describe());
    out.assert_one_line_error();
    assert!(stored_files(c.repo_dir()).is_empty());
}

#[test]
fn archive_push_refuses_different_content_under_an_archived_name() {
    let c = source_cluster();
    let (name, original) = c.capture_segment();
    c.pitr_as_server(&["archive-push", &format!("pg_wal/{name}")])
        .assert_success()
        .assert_silent();
    let stored = stored_path(c.repo_dir(), &name);
    let stored_before = read(&stored);

    // Same name, one byte changed in the middle of a page (page headers stay valid).
    let mut changed = original.clone();
    let at = original.len() / 2 + 1000;
    changed[at] ^= 0x5A;
    let other = c.test_dir().write(format!("other/pg_wal/{name}"), &changed);
    let out = c.pitr(&["archive-push", other.to_str().unwrap()]);
    out.assert_code(1).assert_one_line_error();
    assert!(
        out.stderr_str().to_lowercase().contains("differ"),
        "the message should say the content differs:\n{}",
        out.describe()
    );

    assert!(
        read(&stored) == stored_before,
        "the stored file changed after a refused push"
    );
    assert_get_returns(&c, c.repo(), &name, &original);
}

#[test]
fn archive_push_of_identical_content_again_succeeds() {
    let c = source_cluster();
    let (name, original) = c.capture_segment();
    let rel = format!("pg_wal/{name}");
    c.pitr_as_server(&["archive-push", &rel])
        .assert_success()
        .assert_silent();
    let stored_before = read(&stored_path(c.repo_dir(), &name));

    // Again from pg_wal, and from an identical copy elsewhere (PostgreSQL re-archives after a crash).
    c.pitr_as_server(&["archive-push", &rel])
        .assert_success()
        .assert_silent();
    let copy = c.test_dir().write(format!("copy/{name}"), &original);
    c.pitr(&["archive-push", copy.to_str().unwrap()])
        .assert_success()
        .assert_silent();

    assert!(read(&stored_path(c.repo_dir(), &name)) == stored_before);
    assert_get_returns(&c, c.repo(), &name, &original);
}

#[test]
fn archive_push_refuses_segment_from_another_cluster() {
    let a = source_cluster();
    let b = source_cluster();
    let a_id = a.system_identifier();
    let b_id = b.system_identifier();
    assert_ne!(a_id, b_id, "two initdb runs gave the same system identifier");

    let (a_name, _) = a.capture_segment();
    a.pitr_as_server(&["archive-push", &format!("pg_wal/{a_name}")])
        .assert_success();
    // A segment of B whose name is not yet in A's repository.
    let mut b_seg = b.capture_segment();
    while b_seg.0 == a_name {
        b_seg = b.capture_segment();
    }
    let (b_name, b_bytes) = b_seg;
    assert_eq!(segment_system_identifier(&b_bytes), b_id);
    let b_file = a.test_dir().write(format!("foreign/pg_wal/{b_name}"), &b_bytes);

    let out = a.pitr(&["archive-push", b_file.to_str().unwrap()]);
    out.assert_code(1).assert_one_line_error();
    let err = out.stderr_str();
    assert!(
        err.contains(&a_id.to_string()) && err.contains(&b_id.to_string()),
        "the message should name both system identifiers ({a_id} and {b_id}):\n{}",
        out.describe()
    );
    assert!(
        !stored_path(a.repo_dir(), &b_name).exists(),
        "the foreign segment was stored"
    );
    assert_eq!(json_u64(&repo_json(a.repo_dir())["system_identifier"]), Some(a_id));
}

#[test]
fn archive_push_refuses_segment_whose_name_does_not_match_its_page_address() {
    let c = source_cluster();
    let (name, bytes) = c.capture_segment();
    let seg_size = c.wal_segment_size();
    for wrong in [
        later_segment_name(&name, 1, seg_size),
        later_segment_name(&name, 0x100, seg_size),
        format!("{}{}", &name[..8], "0000000100000000"),
    ] {
        let file = c.test_dir().write(format!("renamed/pg_wal/{wrong}"), &bytes);
        let out = c.pitr(&["archive-push", file.to_str().unwrap()]);
        assert!(
            !out.success(),
            "archive-push accepted {name}'s bytes under the name {wrong}:\n{}",
            out.describe()
        );
        out.assert_one_line_error();
        assert!(!stored_path(c.repo_dir(), &wrong).exists());
    }
    assert!(stored_files(c.repo_dir()).is_empty());
}

#[test]
fn archive_push_refuses_segments_of_the_wrong_size_or_without_a_header() {
    let c = source_cluster();
    let (name, bytes) = c.capture_segment();
    let cases: [(&str, Vec<u8>); 4] = [
        ("truncated to half", bytes[..bytes.len() / 2].to_vec()),
        ("one byte short", bytes[..bytes.len() - 1].to_vec()),
        ("empty", Vec::new()),
        ("all zeros", vec![0u8; bytes.len()]),
    ];
    for (i, (what, contents)) in cases.iter().enumerate() {
        let file = c.test_dir().write(format!("bad{i}/pg_wal/{name}"), contents);
        let out = c.pitr(&["archive-push", file.to_str().unwrap()]);
        assert!(
            !out.success(),
            "archive-push accepted a segment that is {what}:\n{}",
            out.describe()
        );
        out.assert_one_line_error();
    }
    assert!(stored_files(c.repo_dir()).is_empty());
    // The real file is still accepted afterwards.
    c.pitr_as_server(&["archive-push", &format!("pg_wal/{name}")])
        .assert_success()
        .assert_silent();
}

#[test]
fn archive_push_fails_when_repo_directory_is_missing() {
    let c = source_cluster();
    let name = c.switch_wal();
    let missing = c.test_dir().join("no-such-repo");
    let segment = c.pg_wal().join(&name);
    let out = c.pitr_with_repo(&missing, &["archive-push", segment.to_str().unwrap()]);
    out.assert_code(1).assert_one_line_error();
    assert!(!missing.exists(), "archive-push created the missing repository");
}

#[test]
fn concurrent_pushes_of_the_same_segment_all_succeed() {
    let c = source_cluster();
    let (name, original) = c.capture_segment();
    let repo = c.test_dir().subdir("concurrent-repo");
    let rel = format!("pg_wal/{name}");

    let barrier = Arc::new(Barrier::new(8));
    let mut handles = Vec::new();
    for _ in 0..8 {
        let mut cmd = c.pitr_cmd_in_data_dir();
        cmd.arg("--repo").arg(&repo).arg("archive-push").arg(&rel);
        let barrier = Arc::clone(&barrier);
        handles.push(thread::spawn(move || {
            barrier.wait();
            run(&mut cmd)
        }));
    }
    for handle in handles {
        let out = handle.join().expect("push thread");
        out.assert_success().assert_silent();
    }

    assert_get_returns(&c, &repo, &name, &original);
    let leftovers: Vec<_> = stored_files(&repo)
        .into_iter()
        .filter(|p| p != &stored_path(&repo, &name))
        .collect();
    assert!(
        leftovers.is_empty(),
        "concurrent pushes left other files behind: {leftovers:?}"
    );
    assert_eq!(
        json_u64(&repo_json(&repo)["system_identifier"]),
        Some(c.system_identifier())
    );
}

#[test]
fn every_compression_round_trips() {
    let c = source_cluster();
    // The segment after a switch holds almost nothing but zeros, so it must compress well.
    c.switch_wal();
    let (name, original) = c.capture_segment();
    let rel = format!("pg_wal/{name}");
    // (options, expected magic at the start of the payload; None = stored as is)
    let cases: [(&[&str], Option<&[u8]>); 6] = [
        (&["--compress", "none"], None),
        (&["--compress", "gzip"], Some(&[0x1f, 0x8b])),
        (&["--compress", "gzip", "--compress-level", "9"], Some(&[0x1f, 0x8b])),
        (&["--compress", "zstd"], Some(&[0x28, 0xb5, 0x2f, 0xfd])),
        (
            &["--compress", "zstd", "--compress-level", "19"],
            Some(&[0x28, 0xb5, 0x2f, 0xfd]),
        ),
        (&[], None),
    ];
    for (i, (opts, magic)) in cases.iter().enumerate() {
        let repo = c.test_dir().subdir(format!("repo-{i}"));
        let mut cmd = c.pitr_cmd_in_data_dir();
        cmd.arg("--repo").arg(&repo).args(*opts).arg("archive-push").arg(&rel);
        run(&mut cmd).assert_success().assert_silent();

        let stored = read(&stored_path(&repo, &name));
        match (opts.is_empty(), magic) {
            (true, _) => {} // default compression: only the round trip is checked
            (false, None) => {
                assert_eq!(
                    stored.len(),
                    STORED_HEADER_LEN + original.len(),
                    "--compress none: a {STORED_HEADER_LEN}-byte header then the raw segment"
                );
                assert!(stored[STORED_HEADER_LEN..] == original[..]);
            }
            (false, Some(magic)) => {
                assert!(
                    stored[STORED_HEADER_LEN..].starts_with(magic),
                    "{opts:?}: payload should start with {magic:02x?}, starts with {:02x?}",
                    &stored[STORED_HEADER_LEN..STORED_HEADER_LEN + 4]
                );
                assert!(
                    stored.len() < original.len() / 2,
                    "{opts:?}: a switched, mostly empty segment should compress ({} bytes stored)",
                    stored.len()
                );
            }
        }
        // archive-get needs no compression option: the stored header says how to decode.
        assert_get_returns(&c, &repo, &name, &original);
    }
}

#[test]
fn config_file_and_environment_settings() {
    let c = source_cluster();
    let (name, original) = c.capture_segment();
    let segment = c.pg_wal().join(&name);
    let seg = segment.to_str().unwrap();

    // Unknown keys are an error that names the key.
    let repo = c.test_dir().subdir("cfg-repo");
    let bad = c.test_dir().write(
        "bad.toml",
        format!("repo = \"{}\"\nbogus_setting = 1\n", repo.display()),
    );
    let out = run(c.pitr_cmd().arg("--config").arg(&bad).args(["archive-push", seg]));
    assert!(!out.success(), "unknown config key accepted:\n{}", out.describe());
    assert!(
        out.stderr_str().contains("bogus_setting"),
        "the error should name the unknown key:\n{}",
        out.describe()
    );
    assert!(stored_files(&repo).is_empty());

    // A config file supplies the repository and compression.
    let good = c.test_dir().write(
        "good.toml",
        format!("repo = \"{}\"\ncompress = \"none\"\n", repo.display()),
    );
    run(c.pitr_cmd().arg("--config").arg(&good).args(["archive-push", seg]))
        .assert_success()
        .assert_silent();
    let stored = read(&stored_path(&repo, &name));
    assert_eq!(
        stored.len(),
        STORED_HEADER_LEN + original.len(),
        "compress = \"none\" from the file"
    );

    // A flag overrides the file.
    let repo2 = c.test_dir().subdir("cfg-repo2");
    run(c.pitr_cmd().arg("--config").arg(&good).arg("--repo").arg(&repo2).args([
        "--compress",
        "gzip",
        "archive-push",
        seg,
    ]))
    .assert_success()
    .assert_silent();
    let stored2 = read(&stored_path(&repo2, &name));
    assert!(
        stored2[STORED_HEADER_LEN..].starts_with(&[0x1f, 0x8b]),
        "--repo/--compress flags should override the config file"
    );

    // compress_level from the file.
    let repo_level = c.test_dir().subdir("cfg-repo-level");
    let level = c.test_dir().write(
        "level.toml",
        format!(
            "repo = \"{}\"\ncompress = \"gzip\"\ncompress_level = 1\n",
            repo_level.display()
        ),
    );
    run(c.pitr_cmd().arg("--config").arg(&level).args(["archive-push", seg]))
        .assert_success()
        .assert_silent();
    let stored_level = read(&stored_path(&repo_level, &name));
    assert!(stored_level[STORED_HEADER_LEN..].starts_with(&[0x1f, 0x8b]));

    // PITR_CONFIG and PITR_REPO.
    let repo3 = c.test_dir().subdir("cfg-repo3");
    let env_cfg = c
        .test_dir()
        .write("env.toml", format!("repo = \"{}\"\n", repo3.display()));
    run(c.pitr_cmd().env("PITR_CONFIG", &env_cfg).args(["archive-push", seg]))
        .assert_success()
        .assert_silent();
    assert!(stored_path(&repo3, &name).is_file(), "PITR_CONFIG was not used");

    let dest = c.test_dir().subdir("env-restore").join(&name);
    run(c
        .pitr_cmd()
        .env("PITR_REPO", &repo3)
        .args(["archive-get", &name, dest.to_str().unwrap()]))
    .assert_success();
    assert!(read(&dest) == original, "archive-get via PITR_REPO");
}

/// archive_command and restore_command never read `[schedule]`, `[drill]` or `[verify]`: a
/// mistake there leaves archiving and restoring working, and every other command reports it.
#[test]
fn a_mistake_in_the_daemon_sections_does_not_stop_archiving() {
    let c = source_cluster();
    let (name, original) = c.capture_segment();
    let segment = c.pg_wal().join(&name);
    let repo = c.test_dir().subdir("service-typo-repo");
    for (section, mistake) in [
        ("[schedule]\nhourly = \"every hour\"\n", "every hour"),
        ("[drill]\nscratch = \"/nonexistent/scratch\"\n", "[drill] scratch"),
        ("[verify]\nmax_age = \"7 days\"\n", "[verify] max_age"),
    ] {
        let config = c
            .test_dir()
            .write("service-typo.toml", format!("repo = \"{}\"\n{section}", repo.display()));
        run(c
            .pitr_cmd()
            .arg("--config")
            .arg(&config)
            .arg("archive-push")
            .arg(&segment))
        .assert_success()
        .assert_silent();
        let dest = c.test_dir().subdir("service-typo-restore").join(&name);
        run(c
            .pitr_cmd()
            .arg("--config")
            .arg(&config)
            .args(["archive-get", &name, dest.to_str().unwrap()]))
        .assert_success()
        .assert_silent();
        assert!(read(&dest) == original, "archive-get with {section:?}");
        for command in [&["list"][..], &["verify", "wal"]] {
            let out = run(c.pitr_cmd().arg("--config").arg(&config).args(command));
            out.assert_code(2).assert_one_line_error();
            assert!(
                out.stderr_str().contains("service-typo.toml") && out.stderr_str().contains(mistake),
                "pitr {command:?} must report {section:?}:\n{}",
                out.describe()
            );
        }
    }
}

#[test]
fn history_and_partial_files_round_trip() {
    let c = source_cluster();
    let (name, original) = c.capture_segment();
    c.pitr_as_server(&["archive-push", &format!("pg_wal/{name}")])
        .assert_success();

    let history = b"1\t0/3000000\tno recovery target specified\n".to_vec();
    let file = c.test_dir().write("tl/pg_wal/00000002.history", &history);
    c.pitr(&["archive-push", file.to_str().unwrap()])
        .assert_success()
        .assert_silent();
    assert!(
        stored_path(c.repo_dir(), "00000002.history").is_file(),
        "history file not stored under wal/history/: {:?}",
        stored_files(c.repo_dir())
    );
    assert_get_returns(&c, c.repo(), "00000002.history", &history);
    // Identical again: fine; different content under the same name: refused.
    c.pitr(&["archive-push", file.to_str().unwrap()])
        .assert_success()
        .assert_silent();
    let other = c.test_dir().write(
        "tl2/pg_wal/00000002.history",
        b"1\t0/4000000\tno recovery target specified\n",
    );
    c.pitr(&["archive-push", other.to_str().unwrap()])
        .assert_code(1)
        .assert_one_line_error();
    assert_get_returns(&c, c.repo(), "00000002.history", &history);

    // A .partial file: the real segment's bytes under the .partial name of the same segment.
    let partial = format!("{name}.partial");
    let file = c.test_dir().write(format!("partial/pg_wal/{partial}"), &original);
    c.pitr(&["archive-push", file.to_str().unwrap()])
        .assert_success()
        .assert_silent();
    assert!(stored_path(c.repo_dir(), &partial).is_file());
    assert_get_returns(&c, c.repo(), &partial, &original);
}
