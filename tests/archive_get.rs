//! `pitr archive-get`, and what a server archiving through `pitr archive-push` leaves in the
//! repository: exit 0 with the exact bytes, 1 only for files that are truly absent, 200 for every
//! error (so that PostgreSQL aborts recovery instead of treating an error as end of WAL).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// Exit code of `archive-get` for every error (≥ 126, so PostgreSQL aborts recovery).
const GET_ERROR: i32 = 200;

/// Runs `archive-get <name> <dest>` against `repo`; returns the output and the destination path.
fn get(c: &Cluster, repo: &Path, name: &str) -> (CmdOutput, std::path::PathBuf) {
    let dest = c.test_dir().subdir("restored").join(format!("{name}.restored"));
    let _ = fs::remove_file(&dest);
    let out = c.pitr_with_repo(repo, &["archive-get", name, dest.to_str().unwrap()]);
    (out, dest)
}

/// A small archiving cluster (1 MB segments) with one segment archived; returns it and that name.
fn archiving_cluster() -> (Cluster, String) {
    let c = Cluster::start(ClusterOptions::default().wal_segsize_mb(1));
    let name = c.switch_wal();
    c.wait_archived(&name);
    (c, name)
}

#[test]
fn every_segment_archived_under_pgbench_load_comes_back_byte_identical() {
    let c = Cluster::start(ClusterOptions::default().setting("wal_keep_size", "'4GB'"));
    c.pgbench_init(5);
    let mut switched = Vec::new();
    for _ in 0..3 {
        c.pgbench(&["-T", "3", "-c", "2", "-j", "2", "-n"]);
        switched.push(c.switch_wal());
    }
    c.pgbench(&["-T", "2", "-c", "2", "-j", "2", "-n"]);
    switched.push(c.switch_wal());
    c.wait_archived(switched.last().unwrap());
    c.wait_archiver_idle();

    let (archived_count, _, failed_count, last_failed) = c.archiver_stats();
    assert_eq!(
        failed_count,
        0,
        "archive_command failed {failed_count} times (last failed: {last_failed})\n\
         --- server log (tail) ---\n{}",
        c.log_tail()
    );
    let log = c.log();
    assert!(
        !log.contains("archive command failed") && !log.contains("pitr archive-push"),
        "the server log shows archive_command failures or pitr output:\n{}",
        tail(&log, 60)
    );
    let (done, ready) = c.archive_status();
    assert!(ready.is_empty(), "not archived: {ready:?}");
    for name in &switched {
        assert!(
            done.contains(name),
            "switched segment {name} has no .done file: {done:?}"
        );
    }
    assert!(
        archived_count >= done.len() as u64,
        "pg_stat_archiver.archived_count {archived_count} < {} .done files",
        done.len()
    );

    let mut compared = 0;
    for name in &done {
        let stored = stored_path(c.repo_dir(), name);
        assert!(
            stored.is_file(),
            "{name} is marked archived by the server but is not in the repository at {}",
            stored.display()
        );
        let in_pg_wal = c.pg_wal().join(name);
        if !in_pg_wal.exists() {
            continue;
        }
        let (out, dest) = get(&c, c.repo(), name);
        out.assert_success().assert_silent();
        assert!(
            read(&dest) == read(&in_pg_wal),
            "archive-get {name} differs from pg_wal/{name}"
        );
        fs::remove_file(dest).unwrap();
        compared += 1;
    }
    assert!(
        compared >= 6,
        "expected to compare at least 6 archived segments still in pg_wal, compared {compared} \
         (archived: {done:?})"
    );
}

#[test]
fn archive_get_exits_1_quietly_only_when_the_file_is_absent() {
    let (c, name) = archiving_cluster();
    let seg_size = c.wal_segment_size();
    let absent_next = {
        // The segment after the last archived one: same 16-hex directory exists in the repo.
        let lo = u64::from_str_radix(&name[16..24], 16).unwrap() + 1;
        assert!(lo < 0x1_0000_0000 / seg_size);
        format!("{}{lo:08X}", &name[..16])
    };
    for absent in [
        absent_next.as_str(),
        "0000000100000005000000AB",
        "00000002000000000000000A",
        "00000001.history",
        "00000002.history",
        "00000005.history",
        "000000010000000000000002.00000028.backup",
        "000000010000000000000002.partial",
    ] {
        let (out, dest) = get(&c, c.repo(), absent);
        out.assert_code(1);
        assert!(
            out.stderr.is_empty() && out.stdout.is_empty(),
            "archive-get of an absent file must be quiet:\n{}",
            out.describe()
        );
        assert!(
            !dest.exists(),
            "archive-get of absent {absent} created {}",
            dest.display()
        );
    }
    // ... while the archived one is found.
    let (out, dest) = get(&c, c.repo(), &name);
    out.assert_success().assert_silent();
    assert!(read(&dest) == read(&c.pg_wal().join(&name)));
}

#[test]
fn archive_get_exits_200_on_a_corrupted_stored_file() {
    let c = Cluster::start(ClusterOptions::default().wal_segsize_mb(1).archive(false));
    c.switch_wal();
    let (name, _) = c.capture_segment();
    let segment = c.pg_wal().join(&name);
    let segment = segment.to_str().unwrap();
    for compress in ["zstd", "gzip", "none"] {
        for (what, corrupt) in [
            ("a byte near the end flipped", 0),
            ("a byte in the middle flipped", 1),
            ("the header damaged", 2),
            ("truncated", 3),
        ] {
            let repo = c.test_dir().subdir(format!("repo-{compress}-{corrupt}"));
            let mut cmd = c.pitr_cmd();
            cmd.arg("--repo")
                .arg(&repo)
                .args(["--compress", compress, "archive-push", segment]);
            run(&mut cmd).assert_success();
            let stored = stored_path(&repo, &name);
            let bytes = read(&stored);
            match corrupt {
                0 => flip_byte_from_end(&stored, 10),
                1 => flip_byte_from_end(&stored, (bytes.len() - STORED_HEADER_LEN) / 2),
                2 => flip_byte_from_end(&stored, bytes.len() - 1 - 10),
                _ => rewrite_keeping_mode(&stored, &bytes[..bytes.len() - 100]),
            }
            let (out, dest) = get(&c, &repo, &name);
            assert_eq!(
                out.code(),
                Some(GET_ERROR),
                "--compress {compress}, stored file {what}: archive-get must fail with \
                 {GET_ERROR}:\n{}",
                out.describe()
            );
            out.assert_one_line_error();
            assert!(
                !dest.exists(),
                "--compress {compress}, stored file {what}: archive-get left a file in {} (it decodes \
                 straight into it, and must remove it on an error)",
                dest.display()
            );
        }
    }
}

#[test]
fn archive_get_exits_200_on_errors() {
    let (c, name) = archiving_cluster();
    let dest_dir = c.test_dir().subdir("restored");
    let dest = dest_dir.join("out");
    let dest = dest.to_str().unwrap();
    let missing_repo = c.test_dir().join("no-such-repo");

    let cases: Vec<(&str, CmdOutput)> = vec![
        (
            "missing repository directory",
            c.pitr_with_repo(&missing_repo, &["archive-get", &name, dest]),
        ),
        ("invalid name foo", c.pitr(&["archive-get", "foo", dest])),
        (
            "invalid name ../repo.json",
            c.pitr(&["archive-get", "../repo.json", dest]),
        ),
        (
            "invalid name with .tmp suffix",
            c.pitr(&["archive-get", &format!("{name}.tmp"), dest]),
        ),
        (
            "invalid lower-case name",
            c.pitr(&["archive-get", &format!("{}a", &name[..23]), dest]),
        ),
        ("missing destination argument", c.pitr(&["archive-get", &name])),
        ("no arguments", c.pitr(&["archive-get"])),
        (
            "unknown option",
            c.pitr(&["archive-get", "--no-such-option", &name, dest]),
        ),
        ("too many arguments", c.pitr(&["archive-get", &name, dest, "extra"])),
        (
            "a generation the repository does not record",
            c.pitr(&["archive-get", "--generation", "9", &name, dest]),
        ),
    ];
    // Check every case before failing, so one run reports all deviations.
    let mut problems = Vec::new();
    for (what, out) in cases {
        if out.code() != Some(GET_ERROR) {
            problems.push(format!("{what}: expected exit {GET_ERROR}\n{}", out.describe()));
            continue;
        }
        let err = out.stderr_str();
        let err = err.strip_suffix('\n').unwrap_or(&err);
        if err.trim().is_empty() || err.contains('\n') {
            problems.push(format!(
                "{what}: expected a one-line message on stderr\n{}",
                out.describe()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "archive-get error handling:\n\n{}",
        problems.join("\n\n")
    );
    assert!(!Path::new(dest).exists());
    let out = c.pitr(&["archive-get", "--generation", "9", &name, dest]);
    assert!(
        out.stderr_str().contains("records no generation 9"),
        "{}",
        out.describe()
    );
}

#[test]
fn archive_get_exits_200_when_the_repository_is_unreadable() {
    let (c, name) = archiving_cluster();
    if c.repo_is_s3() {
        return the_store_refuses_or_lacks_the_bucket(&c, &name);
    }
    let stored = stored_path(c.repo_dir(), &name);
    let prefix_dir = stored.parent().unwrap().to_path_buf();

    // The stored file cannot be read.
    fs::set_permissions(&stored, fs::Permissions::from_mode(0o000)).unwrap();
    let (out, _) = get(&c, c.repo(), &name);
    fs::set_permissions(&stored, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        out.code(),
        Some(GET_ERROR),
        "unreadable stored file must be an error, not 'absent':\n{}",
        out.describe()
    );
    out.assert_one_line_error();

    // The directory holding it cannot be searched.
    let mode = fs::metadata(&prefix_dir).unwrap().permissions().mode();
    fs::set_permissions(&prefix_dir, fs::Permissions::from_mode(0o000)).unwrap();
    let (out, _) = get(&c, c.repo(), &name);
    fs::set_permissions(&prefix_dir, fs::Permissions::from_mode(mode)).unwrap();
    assert_eq!(
        out.code(),
        Some(GET_ERROR),
        "unsearchable repository directory must be an error, not 'absent':\n{}",
        out.describe()
    );
    out.assert_one_line_error();

    // Everything readable again: found.
    let (out, dest) = get(&c, c.repo(), &name);
    out.assert_success();
    assert!(read(&dest) == read(&c.pg_wal().join(&name)));
}

/// The S3 form of an unreadable repository (file modes do not stop the store): credentials the
/// store refuses (403), and a bucket that does not exist (404 for every key). Both are errors,
/// never "absent".
fn the_store_refuses_or_lacks_the_bucket(c: &Cluster, name: &str) {
    let dest = c.test_dir().subdir("restored").join(format!("{name}.refused"));
    let get_with = |repo: &str, env: (&str, &str)| {
        run(c
            .pitr_cmd()
            .envs([env])
            .args(["--repo", repo, "archive-get", name, dest.to_str().unwrap()]))
    };
    let repo = c.repo().to_str().unwrap();
    for (what, out) in [
        (
            "a refused secret key",
            get_with(repo, ("AWS_SECRET_ACCESS_KEY", "not-the-secret")),
        ),
        (
            "a missing bucket",
            get_with("s3://no-such-bucket/repo", ("PITR_UNUSED", "")),
        ),
    ] {
        assert_eq!(
            out.code(),
            Some(GET_ERROR),
            "{what} must be an error, not 'absent':\n{}",
            out.describe()
        );
        out.assert_one_line_error();
        assert!(!dest.exists(), "{what}: nothing written");
    }
    let (out, dest) = get(c, c.repo(), name);
    out.assert_success();
    assert!(read(&dest) == read(&c.pg_wal().join(name)));
}

#[test]
fn backup_history_file_is_archived_and_round_trips() {
    let c = Cluster::start(ClusterOptions::default().wal_segsize_mb(1));
    c.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g");
    let backup = c.base_backup();
    let name = &backup.backup_history_file;
    assert!(name.ends_with(".backup"), "{name}");
    let stored = stored_path(c.repo_dir(), name);
    assert!(
        stored.is_file(),
        "{name} is archived according to the server but not stored at {}",
        stored.display()
    );
    let (out, dest) = get(&c, c.repo(), name);
    out.assert_success().assert_silent();
    let original = read(&c.pg_wal().join(name));
    assert!(read(&dest) == original, "archive-get {name} differs from pg_wal/{name}");
    assert!(String::from_utf8_lossy(&original).contains("STOP WAL LOCATION"));
    // And the segments around the backup are there too.
    for seg in [&backup.start_wal_file, &backup.stop_wal_file] {
        let (out, dest) = get(&c, c.repo(), seg);
        out.assert_success();
        assert!(read(&dest) == read(&c.pg_wal().join(seg)));
    }
}
