//! `pitr backup`, `pitr list` and `pitr expire` against real servers: retention per tier with WAL
//! expiry (and `--dry-run` deleting nothing), a backup killed with SIGKILL mid-copy (never listed,
//! cleaned up by the next backup), every refusal of `pitr backup` (nothing written), and the WAL
//! completeness `list` reports.
//!
//! Backups, restores and recovery from them (byte-for-byte restore, recovery under concurrent
//! writes, corrupted backup files) are in `tests/restore.rs`.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use common::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// `pitr list --json` (all tiers) as an array.
#[track_caller]
fn list_json(c: &Cluster, repo: &Path) -> Vec<Value> {
    let out = c.pitr_with_repo(repo, &["list", "--json"]);
    out.assert_success();
    parse_json(&out)
        .as_array()
        .unwrap_or_else(|| panic!("list --json is not an array:\n{}", out.describe()))
        .clone()
}

/// The ids `pitr list --json` shows.
fn listed_ids(c: &Cluster, repo: &Path) -> Vec<String> {
    list_json(c, repo)
        .iter()
        .map(|b| json_str(b, "id").to_string())
        .collect()
}

/// Every path under `root` (relative, `/`-separated, directories included), optionally skipping
/// the top-level entries named in `skip`. A directory counts only while it holds a file: on S3
/// (`PITR_TEST_BACKEND=s3`) "directories" are key prefixes, and s3s-fs leaves the empty ones of
/// deleted objects behind.
fn tree(root: &Path, skip: &[&str]) -> BTreeSet<String> {
    fn walk(dir: &Path, rel: &str, skip: &[&str], out: &mut BTreeSet<String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && skip.contains(&name.as_str()) {
                continue;
            }
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.insert(path);
            } else if holds_files(&entry.path()) {
                out.insert(path.clone());
                walk(&entry.path(), &path, skip, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, "", skip, &mut out);
    out
}

/// Asserts that a repository tree (from [`tree`]) did not change, showing only the difference.
#[track_caller]
fn assert_unchanged(before: &BTreeSet<String>, after: &BTreeSet<String>, what: &str) {
    if before == after {
        return;
    }
    let short = |set: Vec<&String>| {
        let n = set.len();
        let mut shown: Vec<String> = set.into_iter().take(8).cloned().collect();
        if n > 8 {
            shown.push(format!("… ({n} in all)"));
        }
        shown
    };
    panic!(
        "{what}:\n  added: {:?}\n  removed: {:?}",
        short(after.difference(before).collect()),
        short(before.difference(after).collect())
    );
}

/// The backup directories (`<tier>/<id>`) in a repository, finished or not.
fn backup_dirs(repo: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for tier in ["hourly", "daily", "weekly"] {
        for entry in fs::read_dir(repo.join(tier)).into_iter().flatten().flatten() {
            if holds_files(&entry.path()) {
                out.insert(format!("{tier}/{}", entry.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Names of the archived WAL files (segments, `.backup`, `.partial`) in `repo/wal/<16 hex>/`,
/// without history files.
fn archived_wal(repo: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for dir in fs::read_dir(repo.join("wal")).into_iter().flatten().flatten() {
        // Timeline histories and the maps of relation names are no WAL of a timeline and log.
        if dir.file_name() == "history" || dir.file_name() == "names" {
            continue;
        }
        for f in fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            out.insert(f.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// The archived segments only (24 hex digits).
fn archived_segments(repo: &Path) -> BTreeSet<String> {
    archived_wal(repo).into_iter().filter(|n| is_segment_name(n)).collect()
}

/// Asserts the shape of a backup id: `<name>_<tier>_<YYYYMMDD>_<HHMMSS>`.
#[track_caller]
fn assert_id_shape(id: &str, name: &str, tier: &str) {
    let prefix = format!("{name}_{tier}_");
    let rest = id
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("backup id {id:?} does not start with {prefix:?}"));
    let b = rest.as_bytes();
    assert!(
        b.len() == 15 && b[8] == b'_' && b.iter().enumerate().all(|(i, c)| i == 8 || c.is_ascii_digit()),
        "backup id {id:?} does not end with YYYYMMDD_HHMMSS"
    );
}

/// Writes a little data and completes `n` WAL segments, waiting until the last is archived.
fn write_and_switch(c: &Cluster, n: usize) {
    c.psql("CREATE TABLE IF NOT EXISTS filler (id serial, v text)");
    let mut last = String::new();
    for _ in 0..n {
        c.psql("INSERT INTO filler (v) SELECT repeat('f', 200) FROM generate_series(1, 2000)");
        last = c.switch_wal();
    }
    c.wait_archived(&last);
}

/// Asserts a refusal: non-zero exit, exactly one line on stderr that contains `needle`, and no
/// backup on stdout.
#[track_caller]
fn assert_refused(out: &CmdOutput, needle: &str) {
    assert!(
        !out.success(),
        "expected a refusal, but the command succeeded:\n{}",
        out.describe()
    );
    out.assert_one_line_error();
    let err = out.stderr_str();
    assert!(
        err.contains(needle),
        "expected the error to contain {needle:?}:\n{}",
        out.describe()
    );
    assert!(
        err.starts_with("pitr backup: error:"),
        "expected a `pitr backup: error:` line:\n{}",
        out.describe()
    );
    assert!(
        !out.stdout_str().contains(" done: "),
        "a refused backup printed a summary:\n{}",
        out.describe()
    );
}

/// An empty repository directory owned by the server user.
fn empty_repo(c: &Cluster, name: &str) -> PathBuf {
    c.test_dir().subdir(name)
}

/// Polls until a backup directory with a `files/` subdirectory appears in `repo/<tier>/`;
/// returns its id.
fn wait_for_copy_to_start(repo: &Path, tier: &str, child: &mut Child) -> String {
    poll(Duration::from_secs(60), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("pitr backup ended ({status}) before its copy was seen");
        }
        fs::read_dir(repo.join(tier))
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.path().join("files").is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
    })
    .expect("no backup directory with files/ appeared within 60 s")
}

// ---------------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------------

#[test]
fn expire_keeps_the_newest_per_tier_and_the_wal_the_oldest_retained_backup_needs() {
    let c = Cluster::start(ClusterOptions::default());
    let seg_size = c.wal_segment_size();
    let config = c.test_dir().write("pitr.toml", "keep_hourly = 2\n");
    let config = config.to_str().unwrap();
    let take = |tier: &str| -> Value {
        let out = c.pitr_connected(
            c.repo(),
            &["--config", config, "backup", "--fast", "--json", "--tier", tier],
        );
        assert!(out.success(), "backup failed:\n{}\n{}", out.describe(), c.log_tail());
        parse_json(&out)
    };

    let h1 = take("hourly");
    let h1_id = json_str(&h1["backup"], "id").to_string();
    assert_id_shape(&h1_id, "main", "hourly");
    write_and_switch(&c, 3);
    let daily = take("daily");
    let daily_id = json_str(&daily["backup"], "id").to_string();
    assert_id_shape(&daily_id, "main", "daily");
    let daily_first_wal = json_str(&daily["backup"], "first_wal").to_string();
    write_and_switch(&c, 2);
    let h2 = take("hourly");
    let h2_id = json_str(&h2["backup"], "id").to_string();
    assert_eq!(
        h2["expired"]["backups"],
        serde_json::json!([]),
        "two hourly backups are within keep_hourly = 2"
    );
    write_and_switch(&c, 2);

    // WAL older than the daily backup (needed only by h1) is still archived before h3.
    let wal_before = archived_wal(c.repo_dir());
    let older_than_daily: BTreeSet<String> = wal_before
        .iter()
        .filter(|n| n[..24] < daily_first_wal[..])
        .cloned()
        .collect();
    assert!(
        !older_than_daily.is_empty(),
        "expected WAL older than the daily backup's first_wal {daily_first_wal} before the third hourly \
         backup; archived: {wal_before:?}"
    );

    let h3 = take("hourly");
    let h3_id = json_str(&h3["backup"], "id").to_string();

    // Expire ran for the hourly tier: h1 went, the daily backup stays and bounds WAL expiry.
    let expired = &h3["expired"];
    let expired_ids: Vec<&str> = expired["backups"]
        .as_array()
        .expect("expired.backups array")
        .iter()
        .map(|b| json_str(b, "id"))
        .collect();
    assert_eq!(expired_ids, [h1_id.as_str()], "expired backups:\n{h3:#}");
    assert_eq!(json_str(&expired["backups"][0], "tier"), "hourly");
    assert_eq!(
        json_str(expired, "wal_kept_from"),
        daily_first_wal,
        "wal_kept_from:\n{h3:#}"
    );
    let expired_wal: BTreeSet<String> = expired["wal"]
        .as_array()
        .expect("expired.wal array")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(expired_wal, older_than_daily, "WAL reported as expired:\n{h3:#}");

    let listed: BTreeSet<String> = listed_ids(&c, c.repo()).into_iter().collect();
    let expected: BTreeSet<String> = [&daily_id, &h2_id, &h3_id].into_iter().cloned().collect();
    assert_eq!(listed, expected, "list after the third hourly backup");
    assert!(
        !holds_files(&c.repo_dir().join("hourly").join(&h1_id)),
        "the expired backup's directory remains"
    );
    for id in [&h2_id, &h3_id] {
        assert!(c.repo_dir().join("hourly").join(id).join("backup.manifest").is_file());
    }
    assert!(c
        .repo_dir()
        .join("daily")
        .join(&daily_id)
        .join("backup.manifest")
        .is_file());

    // On disk: nothing older than the daily backup's first WAL, everything from it on.
    let wal_after = archived_wal(c.repo_dir());
    let too_old: Vec<&String> = wal_after.iter().filter(|n| n[..24] < daily_first_wal[..]).collect();
    assert!(
        too_old.is_empty(),
        "WAL older than {daily_first_wal} is still archived: {too_old:?}"
    );
    let segments = archived_segments(c.repo_dir());
    let newest = segments.iter().max().expect("archived segments").clone();
    let mut name = daily_first_wal.clone();
    loop {
        assert!(
            segments.contains(&name),
            "segment {name} (needed from {daily_first_wal} on) is missing"
        );
        if name == newest {
            break;
        }
        name = later_segment_name(&name, 1, seg_size);
    }
    for name in wal_before.iter().filter(|n| n[..24] >= daily_first_wal[..]) {
        assert!(
            wal_after.contains(name),
            "{name} was deleted although it is not older than {daily_first_wal}"
        );
    }

    // Expire again (dry run, then for real): nothing left to do. (The backup history file of the
    // last backup may still be on its way into the repository: wait for the archiver first.)
    c.wait_archiver_idle();
    let snapshot = tree(c.repo_dir(), &[]);
    let out = c.pitr(&["--config", config, "expire", "--dry-run", "--json"]);
    out.assert_success();
    let plan = parse_json(&out);
    assert_eq!(plan["backups"], serde_json::json!([]), "{plan:#}");
    assert_eq!(plan["wal"], serde_json::json!([]), "{plan:#}");
    assert_eq!(json_str(&plan, "wal_kept_from"), daily_first_wal);
    assert_unchanged(
        &snapshot,
        &tree(c.repo_dir(), &[]),
        "expire --dry-run changed the repository",
    );
    let out = c.pitr(&["--config", config, "expire"]);
    out.assert_success();
    assert!(out.stdout_str().contains("nothing to expire"), "{}", out.describe());
    assert_unchanged(
        &snapshot,
        &tree(c.repo_dir(), &[]),
        "expire with nothing to do changed the repository",
    );
}

#[test]
fn expire_dry_run_lists_but_deletes_nothing_and_the_real_run_deletes_exactly_that() {
    let c = Cluster::start(ClusterOptions::default());
    let config = c.test_dir().write("pitr.toml", "keep_hourly = 1\nname = \"dry-run\"\n");
    let config = config.to_str().unwrap();
    let take = || -> Value {
        let out = c.pitr_connected(
            c.repo(),
            &["--config", config, "backup", "--fast", "--json", "--no-expire"],
        );
        assert!(out.success(), "backup failed:\n{}\n{}", out.describe(), c.log_tail());
        parse_json(&out)
    };
    let a = take();
    let a_id = json_str(&a["backup"], "id").to_string();
    assert_id_shape(&a_id, "dry-run", "hourly");
    assert!(a["expired"].is_null(), "--no-expire still expired:\n{a:#}");
    write_and_switch(&c, 2);
    let b = take();
    let b_id = json_str(&b["backup"], "id").to_string();
    let b_first = json_str(&b["backup"], "first_wal").to_string();
    assert!(b["expired"].is_null(), "--no-expire still expired:\n{b:#}");
    assert_eq!(
        listed_ids(&c, c.repo()),
        [a_id.clone(), b_id.clone()],
        "--no-expire kept both backups"
    );

    // PostgreSQL archives the backup history file of b after pg_backup_stop, maybe after the
    // backup returned: only once that is done does the repository stand still.
    c.wait_archiver_idle();
    let snapshot = tree(c.repo_dir(), &[]);
    let out = c.pitr(&["--config", config, "expire", "--dry-run", "--json"]);
    out.assert_success();
    let plan = parse_json(&out);
    let ids: Vec<&str> = plan["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| json_str(b, "id"))
        .collect();
    assert_eq!(ids, [a_id.as_str()], "dry-run plan:\n{plan:#}");
    assert!(!json_str(&plan["backups"][0], "reason").is_empty());
    let wal: Vec<String> = plan["wal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(
        !wal.is_empty(),
        "the dry run should list the WAL only {a_id} needs:\n{plan:#}"
    );
    assert!(
        wal.iter().all(|n| n[..24] < b_first[..]),
        "dry run lists WAL {b_id} needs:\n{plan:#}"
    );
    assert!(
        wal.contains(&json_str(&a["backup"], "first_wal").to_string()),
        "{plan:#}"
    );
    assert_eq!(json_str(&plan, "wal_kept_from"), b_first);
    assert_unchanged(
        &snapshot,
        &tree(c.repo_dir(), &[]),
        "expire --dry-run --json deleted something",
    );

    let out = c.pitr(&["--config", config, "expire", "--dry-run"]);
    out.assert_success();
    assert!(
        out.stdout_str().contains(&format!("would delete backup {a_id}")),
        "text dry run:\n{}",
        out.describe()
    );
    assert_unchanged(
        &snapshot,
        &tree(c.repo_dir(), &[]),
        "expire --dry-run deleted something",
    );
    assert_eq!(listed_ids(&c, c.repo()), [a_id.clone(), b_id.clone()]);

    // The real run deletes exactly what the dry run listed.
    let out = c.pitr(&["--config", config, "expire", "--json"]);
    out.assert_success();
    assert_eq!(
        parse_json(&out),
        plan,
        "expire did something else than its dry run announced"
    );
    assert_eq!(listed_ids(&c, c.repo()), std::slice::from_ref(&b_id));
    assert!(!holds_files(&c.repo_dir().join("hourly").join(&a_id)));
    let remaining = archived_wal(c.repo_dir());
    for name in &wal {
        assert!(!remaining.contains(name), "{name} was announced but not deleted");
    }
    let gone: BTreeSet<&String> = snapshot.iter().filter(|p| !c.repo_dir().join(p).exists()).collect();
    for p in &gone {
        let announced = p.starts_with(&format!("hourly/{a_id}")) || wal.iter().any(|n| p.ends_with(&format!("/{n}")));
        assert!(announced, "expire deleted {p}, which its dry run did not announce");
    }
}

// ---------------------------------------------------------------------------------------------
// Interrupted backups
// ---------------------------------------------------------------------------------------------

#[test]
fn backup_killed_mid_copy_is_never_listed_and_the_next_backup_cleans_it_up() {
    let c = Cluster::start(ClusterOptions::default());
    c.pgbench_init(20);

    let mut cmd = c.pitr_connected_cmd(c.repo());
    cmd.args(["backup", "--fast", "--json", "--jobs", "1"]);
    let line = cmdline(&cmd);
    let mut child = spawn(&mut cmd);
    let pid = pitr_pid(&child);
    let killed_id = wait_for_copy_to_start(c.repo_dir(), "hourly", &mut child);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the backup finished before it could be killed; make the data bigger"
    );
    send_signal(pid, "KILL");
    let out = wait_child(child, line, Duration::from_secs(30));
    assert!(
        !out.success(),
        "the killed backup reported success:\n{}",
        out.describe()
    );

    let dir = c.repo_dir().join("hourly").join(&killed_id);
    assert!(
        dir.join("files").is_dir(),
        "the killed backup left no files/ behind: {}",
        dir.display()
    );
    assert!(
        !dir.join("backup.manifest").exists(),
        "the killed backup has a manifest: it finished before the kill"
    );
    let listed = listed_ids(&c, c.repo());
    assert!(
        !listed.contains(&killed_id),
        "the interrupted backup {killed_id} is listed: {listed:?}"
    );
    assert!(listed.is_empty(), "{listed:?}");
    let out = c.pitr(&["list"]);
    out.assert_success();
    assert!(!out.stdout_str().contains(&killed_id), "{}", out.describe());
    // Restore never picks it either.
    let target = c.test_dir().join("restore-target");
    let out = c.pitr(&["restore", "--pgdata", target.to_str().unwrap()]);
    assert!(
        !out.success(),
        "restore found a backup although none finished:\n{}",
        out.describe()
    );
    out.assert_one_line_error();

    if c.repo_is_s3() {
        // On S3 the killed backup's lock is a lease that nobody renews any more: it holds for a
        // lease (60 s) after its last renewal, so a backup right now is refused. An operator who
        // knows the holder is dead may delete the lease object, as this test does.
        let out = c.pitr_connected(c.repo(), &["backup", "--fast"]);
        assert!(
            out.stderr_str().contains("another pitr backup is running"),
            "{}",
            out.describe()
        );
        fs::remove_file(c.repo_dir().join("locks/backup.lock")).expect("the lease object");
    }
    // The next backup succeeds (the server dropped the killed connection's backup) and cleans up,
    // whatever its tier: a daily one cleans up the interrupted hourly one.
    let next = backup_json(&c, &["--tier", "daily"]);
    let next_id = json_str(&next["backup"], "id");
    assert_ne!(next_id, killed_id);
    assert_eq!(
        next["backup"]["cleaned_up"],
        serde_json::json!([killed_id]),
        "the next backup should report the interrupted one:\n{next:#}"
    );
    assert!(
        !holds_files(&dir),
        "the interrupted backup's directory {} is still there",
        dir.display()
    );
    assert_eq!(listed_ids(&c, c.repo()), [next_id.to_string()]);
    assert_eq!(backup_dirs(c.repo_dir()), BTreeSet::from([format!("daily/{next_id}")]));
}

// ---------------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn refuses_when_the_server_is_unreachable() {
    let scratch = TestDir::new("unreachable");
    let pitr = scratch.install_pitr();
    let repo = scratch.subdir("repo");
    let sockets = scratch.subdir("no-server-here");
    let out = run(pitr_command(&pitr)
        .env("PGHOST", &sockets)
        .env("PGPORT", free_port().to_string())
        .env("PGDATABASE", "postgres")
        .arg("--repo")
        .arg(&repo)
        .args(["backup", "--fast"]));
    assert_refused(&out, "cannot connect");
    assert_unchanged(&BTreeSet::new(), &tree(&repo, &[]), "the repository is no longer empty");

    // The same through --dbname (keyword/value), which overrides the environment.
    let conninfo = format!("host={} port={} dbname=postgres", sockets.display(), free_port());
    let out = run(pitr_command(&pitr)
        .arg("--repo")
        .arg(&repo)
        .args(["backup", "--dbname", &conninfo]));
    assert_refused(&out, "cannot connect");
    assert_unchanged(&BTreeSet::new(), &tree(&repo, &[]), "the repository is no longer empty");
}

#[test]
fn refuses_a_role_without_backup_privileges() {
    let c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE ROLE nopriv LOGIN");
    let before = tree(c.repo_dir(), &["wal"]);
    let out = run(c
        .pitr_connected_cmd(c.repo())
        .env("PGUSER", "nopriv")
        .args(["backup", "--fast"]));
    assert_refused(&out, "may not run the backup functions");
    assert_unchanged(
        &before,
        &tree(c.repo_dir(), &["wal"]),
        "a refused backup changed the repository",
    );
    assert!(backup_dirs(c.repo_dir()).is_empty());

    // The same role through a URI --dbname.
    let uri = format!(
        "postgresql://nopriv@/postgres?host={}&port={}",
        c.dir().display(),
        c.port()
    );
    let out = c.pitr(&["backup", "--dbname", &uri]);
    assert_refused(&out, "may not run the backup functions");
    assert_unchanged(
        &before,
        &tree(c.repo_dir(), &["wal"]),
        "a refused backup changed the repository",
    );

    // With the privileges granted, the same role may back up.
    c.psql(
        "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO nopriv; \
         GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO nopriv; \
         GRANT pg_read_all_settings TO nopriv",
    );
    let out = run(c
        .pitr_connected_cmd(c.repo())
        .env("PGUSER", "nopriv")
        .args(["backup", "--fast"]));
    assert!(
        out.success(),
        "backup as a role granted the backup functions:\n{}",
        out.describe()
    );
    assert_eq!(listed_ids(&c, c.repo()).len(), 1);
}

/// Beyond the brief: a role that may run pg_backup_start but not pg_backup_stop must be refused
/// before anything is copied (otherwise the whole data directory is copied, then the backup fails).
#[test]
fn refuses_a_role_that_may_start_but_not_stop_a_backup_before_copying() {
    let c = Cluster::start(ClusterOptions::default());
    c.psql(
        "CREATE ROLE halfpriv LOGIN; \
         GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO halfpriv; \
         GRANT pg_read_all_settings TO halfpriv",
    );
    let before = tree(c.repo_dir(), &["wal"]);
    let out = run(c
        .pitr_connected_cmd(c.repo())
        .env("PGUSER", "halfpriv")
        .args(["backup", "--fast"]));
    assert!(!out.success(), "{}", out.describe());
    out.assert_one_line_error();
    assert!(out.stderr_str().contains("pg_backup_stop"), "{}", out.describe());
    assert_unchanged(
        &before,
        &tree(c.repo_dir(), &["wal"]),
        "the refused backup wrote into the repository (copied before finding out it cannot stop)",
    );
}

/// A refused backup writes nothing, not even repo.json, into a repository nothing was archived
/// into yet.
#[test]
fn refused_backup_into_an_empty_repository_writes_nothing() {
    let c = Cluster::start(ClusterOptions::default());
    assert_unchanged(
        &BTreeSet::new(),
        &tree(c.repo_dir(), &[]),
        "the new cluster archived something already",
    );
    // Another cluster's data directory (initdb only).
    let other = TestDir::new("other-cluster");
    let other_data = other.join("data");
    run_ok(&mut initdb_command(other.path(), &other_data));
    let out = c.pitr_connected(
        c.repo(),
        &["backup", "--fast", "--pgdata", other_data.to_str().unwrap()],
    );
    assert_refused(&out, "data directory");
    assert_unchanged(
        &BTreeSet::new(),
        &tree(c.repo_dir(), &[]),
        "the repository is no longer empty",
    );
}

#[test]
fn refuses_wal_level_minimal() {
    let c = Cluster::start(
        ClusterOptions::default()
            .archive(false)
            .setting("wal_level", "minimal")
            .setting("max_wal_senders", "0"),
    );
    assert_eq!(c.psql("SHOW wal_level"), "minimal");
    let repo = empty_repo(&c, "repo-minimal");
    let out = c.pitr_connected(&repo, &["backup", "--fast"]);
    assert_refused(&out, "wal_level");
    assert_unchanged(&BTreeSet::new(), &tree(&repo, &[]), "the repository is no longer empty");
}

#[test]
fn refuses_archive_mode_off() {
    let c = Cluster::start(ClusterOptions::default().archive(false));
    assert_eq!(c.psql("SHOW archive_mode"), "off");
    let repo = empty_repo(&c, "repo-off");
    let out = c.pitr_connected(&repo, &["backup", "--fast"]);
    assert_refused(&out, "archive_mode");
    assert_unchanged(&BTreeSet::new(), &tree(&repo, &[]), "the repository is no longer empty");
}

#[test]
fn refuses_an_empty_archive_command_and_only_warns_about_another_tool() {
    let mut c = Cluster::start(
        ClusterOptions::default()
            .archive(false)
            .setting("archive_mode", "on")
            .setting("archive_command", "''"),
    );
    let repo = empty_repo(&c, "repo-cmd");
    let out = c.pitr_connected(&repo, &["backup", "--fast"]);
    assert_refused(&out, "archive_command");
    assert_unchanged(&BTreeSet::new(), &tree(&repo, &[]), "the repository is no longer empty");

    // Another archiving tool: a warning, and the backup is taken.
    let elsewhere = c.test_dir().subdir("cp-archive");
    let cp = format!("'cp %p {}/%f'", elsewhere.display());
    c.set("archive_command", &cp);
    c.reload();
    assert!(
        poll(Duration::from_secs(10), || c
            .psql("SHOW archive_command")
            .starts_with("cp ")
            .then_some(()))
        .is_some(),
        "archive_command was not reloaded"
    );
    let out = c.pitr_connected(&repo, &["backup", "--fast"]);
    assert!(
        out.success(),
        "backup with archive_command = cp:\n{}\n{}",
        out.describe(),
        c.log_tail()
    );
    let err = out.stderr_str();
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.starts_with("pitr: warning:")),
        "expected only `pitr: warning:` lines on stderr:\n{}",
        out.describe()
    );
    assert!(err.contains("archive_command"), "{}", out.describe());
    let stdout = out.stdout_str();
    let summary = stdout.lines().next().unwrap_or("");
    let id = summary
        .strip_prefix("backup ")
        .and_then(|r| r.split_once(" done: "))
        .map(|(id, _)| id.to_string())
        .unwrap_or_else(|| panic!("expected `backup <id> done: N files, ...`:\n{}", out.describe()));
    assert_id_shape(&id, "main", "hourly");
    assert!(summary.contains(" files, "), "{summary}");
    assert_eq!(listed_ids(&c, &repo), [id]);
}

#[test]
fn refuses_an_archive_command_into_another_repository() {
    let c = Cluster::start(ClusterOptions::default());
    let other = empty_repo(&c, "other-repo");
    let before = tree(c.repo_dir(), &["wal"]);
    let out = c.pitr_connected(&other, &["backup", "--fast"]);
    assert_refused(&out, "not into this repository");
    assert_unchanged(
        &BTreeSet::new(),
        &tree(&other, &[]),
        "the repository is no longer empty",
    );
    assert_unchanged(
        &before,
        &tree(c.repo_dir(), &["wal"]),
        "a refused backup changed the repository",
    );

    // The same repository spelled differently is this repository: through a symbolic link, or
    // an S3 URL with a trailing '/'.
    let link = c.test_dir().join("repo-link");
    let spelled = match c.repo_is_s3() {
        true => PathBuf::from(format!("{}/", c.repo().display())),
        false => {
            std::os::unix::fs::symlink(c.repo(), &link).expect("symlink");
            link
        }
    };
    let out = c.pitr_connected(&spelled, &["backup", "--fast"]);
    assert!(
        out.success(),
        "backup through a symlink to the archive_command's repository:\n{}",
        out.describe()
    );
    assert_eq!(listed_ids(&c, c.repo()).len(), 1);
}

#[test]
fn refuses_while_another_backup_of_the_same_repository_runs() {
    let c = Cluster::start(ClusterOptions::default());
    c.pgbench_init(10);

    let mut cmd = c.pitr_connected_cmd(c.repo());
    cmd.args(["backup", "--fast", "--json", "--jobs", "1"]);
    let line = cmdline(&cmd);
    let mut first = spawn(&mut cmd);
    let first_id = wait_for_copy_to_start(c.repo_dir(), "hourly", &mut first);

    let out = c.pitr_connected(c.repo(), &["backup", "--fast"]);
    assert!(
        first.try_wait().expect("try_wait").is_none(),
        "the first backup finished before the second was refused; make the data bigger"
    );
    assert_refused(&out, "another pitr backup is running");
    assert_eq!(
        backup_dirs(c.repo_dir()),
        BTreeSet::from([format!("hourly/{first_id}")]),
        "the refused backup created a directory"
    );

    // The running backup is undisturbed (the refused one deleted nothing of it).
    let out = wait_child(first, line, COMMAND_TIMEOUT);
    out.assert_success();
    let summary = parse_json(&out);
    assert_eq!(json_str(&summary["backup"], "id"), first_id);
    assert_eq!(listed_ids(&c, c.repo()), [first_id]);
}

#[test]
fn refuses_a_repository_or_data_directory_of_another_cluster() {
    let a = Cluster::start(ClusterOptions::default());
    let seg = a.switch_wal();
    a.wait_archived(&seg);
    // b's archive_command names a's repository (so that check passes); b archives nothing yet.
    let b = Cluster::start(ClusterOptions::default().same_repo_as(&a));
    assert_ne!(a.system_identifier(), b.system_identifier());
    let before = tree(a.repo_dir(), &[]);

    let out = b.pitr_connected(a.repo(), &["backup", "--fast"]);
    assert_refused(&out, "the repository's current generation is cluster");
    assert_unchanged(
        &before,
        &tree(a.repo_dir(), &[]),
        "a refused backup changed the repository",
    );

    let out = a.pitr_connected(
        a.repo(),
        &["backup", "--fast", "--pgdata", b.data_dir().to_str().unwrap()],
    );
    assert_refused(&out, &b.system_identifier().to_string());
    assert!(out.stderr_str().contains("data directory"), "{}", out.describe());
    assert_unchanged(
        &before,
        &tree(a.repo_dir(), &[]),
        "a refused backup changed the repository",
    );
    assert!(backup_dirs(a.repo_dir()).is_empty());

    // The right --pgdata works.
    let out = a.pitr_connected(
        a.repo(),
        &["backup", "--fast", "--pgdata", a.data_dir().to_str().unwrap()],
    );
    assert!(out.success(), "{}", out.describe());
}

#[test]
fn connects_with_a_password_from_pgpassword_or_pgpassfile() {
    let c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE ROLE pwuser LOGIN SUPERUSER PASSWORD 'se:cret'");
    let hba = c.data_dir().join("pg_hba.conf");
    let mut conf = b"local all pwuser scram-sha-256\n".to_vec();
    conf.extend(read(&hba));
    rewrite_keeping_mode(&hba, &conf);
    c.reload();
    let as_pwuser = || {
        let mut cmd = c.pitr_connected_cmd(c.repo());
        cmd.env("PGUSER", "pwuser");
        cmd
    };
    let before = tree(c.repo_dir(), &["wal"]);
    let out = run(as_pwuser().args(["backup", "--fast"]));
    assert_refused(&out, "password");
    let out = run(as_pwuser().env("PGPASSWORD", "wrong").args(["backup", "--fast"]));
    assert_refused(&out, "password authentication failed");
    assert_unchanged(
        &before,
        &tree(c.repo_dir(), &["wal"]),
        "a refused backup changed the repository",
    );

    let out = run(as_pwuser()
        .env("PGPASSWORD", "se:cret")
        .args(["backup", "--fast", "--json"]));
    assert!(out.success(), "backup with PGPASSWORD:\n{}", out.describe());

    let passfile = c.test_dir().write(
        "pgpass",
        format!("# comment\nlocalhost:{}:postgres:pwuser:se\\:cret\n", c.port()),
    );
    fs::set_permissions(&passfile, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = run(as_pwuser()
        .env("PGPASSFILE", &passfile)
        .args(["backup", "--fast", "--json"]));
    assert!(out.success(), "backup with PGPASSFILE:\n{}", out.describe());
    assert_eq!(listed_ids(&c, c.repo()).len(), 2);
}

// ---------------------------------------------------------------------------------------------
// WAL completeness
// ---------------------------------------------------------------------------------------------

#[test]
fn list_reports_missing_wal() {
    let c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100000) g");
    let b = backup_json(&c, &[]);
    let id = json_str(&b["backup"], "id").to_string();
    assert!(b["backup"]["wal_complete"].is_null() || b["backup"]["wal_complete"] == Value::Bool(true));
    write_and_switch(&c, 1);

    let listed = list_json(&c, c.repo());
    assert_eq!(listed.len(), 1);
    let entry = &listed[0];
    for key in [
        "id",
        "tier",
        "start_time",
        "stop_time",
        "start_lsn",
        "stop_lsn",
        "timeline",
        "original_bytes",
        "stored_bytes",
        "first_wal",
        "last_wal",
        "wal_complete",
        "first_missing_wal",
    ] {
        assert!(entry.get(key).is_some(), "list --json lacks {key:?}: {entry:#}");
    }
    assert_eq!(json_str(entry, "id"), id);
    assert_eq!(json_str(entry, "tier"), "hourly");
    assert_eq!(entry["timeline"], 1);
    assert_eq!(entry["wal_complete"], Value::Bool(true), "{entry:#}");
    assert!(entry["first_missing_wal"].is_null(), "{entry:#}");
    let first_wal = json_str(entry, "first_wal").to_string();
    let last_wal = json_str(entry, "last_wal").to_string();
    assert!(first_wal <= last_wal);
    assert_eq!(
        parse_lsn(json_str(entry, "start_lsn")) / c.wal_segment_size(),
        u64::from_str_radix(&first_wal[16..], 16).unwrap()
    );
    assert!(parse_lsn(json_str(entry, "stop_lsn")) > parse_lsn(json_str(entry, "start_lsn")));
    assert!(entry["original_bytes"].as_u64().unwrap() > entry["stored_bytes"].as_u64().unwrap());
    let text = c.pitr(&["list"]);
    text.assert_success();
    let stdout = text.stdout_str();
    assert!(stdout.contains(&id) && stdout.contains("complete"), "{stdout}");
    assert!(stdout.contains("archived WAL, timeline 1: "), "{stdout}");
    assert!(!stdout.contains("INCOMPLETE"), "{stdout}");

    // Delete the last needed segment (also the first, unless the backup spans several).
    let missing = last_wal.clone();
    let path = stored_path(c.repo_dir(), &missing);
    fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    let listed = list_json(&c, c.repo());
    let entry = &listed[0];
    assert_eq!(entry["wal_complete"], Value::Bool(false), "{entry:#}");
    assert_eq!(json_str(entry, "first_missing_wal"), missing, "{entry:#}");
    let text = c.pitr(&["list"]);
    text.assert_success();
    let stdout = text.stdout_str();
    assert!(stdout.contains("INCOMPLETE") && stdout.contains(&missing), "{stdout}");
    assert!(stdout.contains("missing"), "{stdout}");

    // Tier filter.
    let out = c.pitr(&["list", "daily", "--json"]);
    out.assert_success();
    assert_eq!(parse_json(&out), serde_json::json!([]));
    let out = c.pitr(&["list", "hourly", "--json"]);
    out.assert_success();
    assert_eq!(parse_json(&out).as_array().unwrap().len(), 1);
}
