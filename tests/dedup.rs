//! Deduplicated backups (`pitr backup --dedup`, manifest format 7) and expire: packs that no
//! backup references are condemned by one expire and deleted by a later one, once the grace
//! period is over; a kill -9 at each step of expire loses nothing a kept backup needs; a backup
//! running beside expires stays whole. The skip rule: an hourly backup takes a cold table's files
//! unread from the previous one and restores them; a file changed with its size and mtime put
//! back is read all the same (its ctime moved); daily backups and `--read-all` read every file.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// Every pack of the repository at `repo`.
fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(dirs) = fs::read_dir(repo.join("packs")) else {
        return found;
    };
    for dir in dirs {
        for pack in fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = pack.unwrap().path();
            // A pack's name is 64 hex digits (s3s-fs keeps files of its own beside objects).
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The records of condemned packs.
fn records(repo: &Path) -> usize {
    fs::read_dir(repo.join("gc")).map_or(0, |d| {
        d.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".json"))
            .count()
    })
}

/// `pitr expire --json` keeping one hourly backup, with the grace period `grace` (seconds; the
/// default day when `None`) and `PITR_CRASH_AT=<crash>` when given.
fn expire(c: &Cluster, config: &Path, grace: Option<u64>, crash: Option<&str>) -> CmdOutput {
    let mut cmd = c.pitr_cmd();
    if let Some(grace) = grace {
        cmd.env("PITR_PACK_GRACE_SECONDS", grace.to_string());
    }
    if let Some(point) = crash {
        cmd.env("PITR_CRASH_AT", point);
    }
    run(cmd
        .arg("--repo")
        .arg(c.repo())
        .arg("--config")
        .arg(config)
        .args(["expire", "--json"]))
}

/// Expire killed at `point`: it must die there.
#[track_caller]
fn expire_killed_at(c: &Cluster, config: &Path, grace: Option<u64>, point: &str) {
    let out = expire(c, config, grace, Some(point));
    assert!(
        !out.success(),
        "expire with PITR_CRASH_AT={point} succeeded: the crash point is not reached:\n{}",
        out.describe()
    );
    if c.repo_is_s3() {
        // The killed expire's lock is a lease nobody renews: it would refuse the next expire for
        // a minute. An operator who knows the holder is dead may delete it, as this test does.
        fs::remove_file(c.repo_dir().join("locks/backup.lock")).expect("the lease object");
    }
}

/// Whether a backup into the repository at `repo` is being taken (it holds the lock and wrote
/// its marker).
fn backup_running(repo: &Path) -> bool {
    fs::read_dir(repo.join("hourly"))
        .into_iter()
        .flatten()
        .any(|dir| dir.unwrap().path().join("backup.incomplete").exists())
}

/// `pitr verify` passes, and the newest backup restores.
#[track_caller]
fn kept_backup_is_whole(c: &Cluster, when: &str) {
    let out = c.pitr_connected(c.repo(), &["verify", "--log-file", "none"]);
    assert!(out.success(), "{when}: verify fails:\n{}", out.describe());
    let target = c
        .test_dir()
        .path()
        .join(format!("restored-{}", when.replace([' ', ':'], "-")));
    let out = c.pitr(&["restore", "--pgdata", target.to_str().unwrap()]);
    assert!(
        out.success(),
        "{when}: the kept backup does not restore:\n{}",
        out.describe()
    );
    fs::remove_dir_all(&target).unwrap();
}

#[test]
fn expire_deletes_the_packs_no_backup_references_in_two_phases_and_a_kill_at_any_step_loses_nothing() {
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    let config = c.test_dir().write("keep-one.toml", "keep_hourly = 1\n");
    // Hex digits that compress about 2:1: one job fills its packs in file order, and the
    // table fills at least one of them alone (packs of mixed files stay while one piece of
    // them is referenced).
    c.psql(
        "CREATE TABLE gone AS SELECT g AS id, md5(g::text) || md5((-g)::text) || md5((7 * g)::text) || \
         md5((13 * g)::text) AS v FROM generate_series(1, 700000) g",
    );
    c.psql("CHECKPOINT");
    backup_json(&c, &["--dedup", "--no-expire", "--jobs", "1"]);
    let first_packs = packs(c.repo_dir());
    c.psql("DROP TABLE gone");
    c.psql("CREATE TABLE kept AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g");
    c.psql("CHECKPOINT");
    std::thread::sleep(std::time::Duration::from_secs(1));
    backup_json(&c, &["--dedup", "--no-expire", "--jobs", "1"]);
    let both = packs(c.repo_dir());
    assert!(both.len() > first_packs.len());

    // The first backup goes; its packs are younger than the default grace period: kept.
    expire_killed_at(&c, &config, None, "expire:manifest-deleted");
    kept_backup_is_whole(&c, "kill -9 after the manifest's delete");
    let out = expire(&c, &config, None, None);
    out.assert_success();
    assert_eq!(
        packs(c.repo_dir()),
        both,
        "no pack younger than the grace period is condemned"
    );
    assert_eq!(records(c.repo_dir()), 0);

    // Phase 1: the first backup's own packs are condemned, nothing is deleted.
    expire_killed_at(&c, &config, Some(0), "expire:condemned");
    assert_eq!(records(c.repo_dir()), 1, "the record is written whole before the kill");
    assert_eq!(packs(c.repo_dir()), both, "phase 1 deletes nothing");
    kept_backup_is_whole(&c, "kill -9 after the record");

    // Phase 2, killed between two deletes, then finished by the next expire.
    expire_killed_at(&c, &config, Some(0), "expire:pack-deleted");
    let left = packs(c.repo_dir());
    assert_eq!(left.len() + 1, both.len(), "one pack was deleted before the kill");
    assert_eq!(records(c.repo_dir()), 1, "the record stays until its packs are gone");
    kept_backup_is_whole(&c, "kill -9 between two deletes");
    let out = expire(&c, &config, Some(0), None);
    out.assert_success();
    let swept = parse_json(&out);
    assert_eq!(records(c.repo_dir()), 0, "{swept:#}");
    let remaining = packs(c.repo_dir());
    assert!(
        remaining.len() < both.len() && first_packs.iter().any(|p| !remaining.contains(p)),
        "the first backup's own packs are deleted: {} of {} left",
        remaining.len(),
        both.len()
    );
    kept_backup_is_whole(&c, "the sweep");
    let out = expire(&c, &config, Some(0), None);
    out.assert_success();
    assert_eq!(packs(c.repo_dir()), remaining, "a live pack is never condemned");
    assert_eq!(records(c.repo_dir()), 0);
}

#[test]
fn expires_beside_a_running_deduplicated_backup_never_break_it() {
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    let config = c.test_dir().write("keep-one.toml", "keep_hourly = 1\n");
    c.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) || md5((-g)::text) AS v FROM generate_series(1, 400000) g");
    c.psql("CHECKPOINT");
    backup_json(&c, &["--dedup", "--no-expire", "--jobs", "1"]);
    c.psql("UPDATE t SET v = 'changed' WHERE id % 1000 = 0");
    c.psql("CHECKPOINT");

    // A second backup runs while expires (grace period 0, keeping one hourly backup) are
    // started one after the other: each is refused while the backup holds the lock, or runs
    // before or after it; none may delete what the backup references.
    let mut cmd = c.pitr_connected_cmd(c.repo());
    cmd.args(["backup", "--fast", "--dedup", "--no-expire", "--jobs", "1"]);
    let line = cmdline(&cmd);
    let mut backup = spawn(&mut cmd);
    let started = poll(std::time::Duration::from_secs(60), || {
        backup_running(c.repo_dir()).then_some(())
    });
    assert!(started.is_some(), "the backup never started");
    let mut refused = 0;
    while backup.try_wait().unwrap().is_none() {
        let out = expire(&c, &config, Some(0), None);
        if !out.success() {
            assert!(
                out.stderr_str().contains("another pitr backup is running"),
                "{}",
                out.describe()
            );
            refused += 1;
        }
    }
    wait_child(backup, line, std::time::Duration::from_secs(10)).assert_success();
    assert!(refused > 0, "no expire met the running backup");
    for _ in 0..3 {
        expire(&c, &config, Some(0), None).assert_success();
    }
    assert_eq!(records(c.repo_dir()), 0);
    kept_backup_is_whole(&c, "expires beside a backup");
    let r = c.pitr(&["list", "--json"]);
    r.assert_success();
    assert_eq!(parse_json(&r).as_array().unwrap().len(), 1, "one hourly backup is kept");
}

/// A cluster with a cold table of about 24 MiB (`cold`, two parts of its file) and a small hot
/// one (`hot`), frozen and checkpointed, then left alone for over a second: the files a first
/// backup then reads are trusted (their ctime is more than a second older than the read).
fn cluster_with_a_cold_table() -> Cluster {
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    c.psql("CREATE TABLE cold AS SELECT g AS id, repeat(md5(g::text), 4) AS v FROM generate_series(1, 150000) g");
    c.psql("CREATE TABLE hot (id int PRIMARY KEY, n int); INSERT INTO hot SELECT g, 0 FROM generate_series(1, 1000) g");
    c.psql("VACUUM (FREEZE, ANALYZE)");
    c.psql("CHECKPOINT");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    c
}

/// The skip counts of a `backup --json` summary: files and bytes.
fn skipped(summary: &serde_json::Value) -> (u64, u64) {
    let backup = &summary["backup"];
    (
        backup["skipped_files"].as_u64().expect("skipped_files"),
        backup["skipped_bytes"].as_u64().expect("skipped_bytes"),
    )
}

/// The entry of the file at `path` in `manifest`.
fn file_entry(manifest: &serde_json::Value, path: &str) -> serde_json::Value {
    manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} is not in the manifest"))
        .clone()
}

#[test]
fn an_hourly_backup_takes_a_cold_tables_files_unread_and_they_restore_and_recover() {
    let c = cluster_with_a_cold_table();
    let cold = c.psql("SELECT pg_relation_filepath('cold')");
    let cold_bytes: u64 = c.psql("SELECT pg_relation_size('cold')").parse().unwrap();
    let first = backup_json(&c, &["--dedup"]);
    assert_eq!(skipped(&first), (0, 0), "nothing to skip without a previous backup");
    let recorded = file_entry(&manifest_of(&c, &first), &cold)["stat"].clone();
    assert_eq!(
        recorded["trusted"], true,
        "the cold table's file is trusted: {recorded}"
    );

    c.psql("UPDATE hot SET n = id");
    c.psql("CHECKPOINT");
    let second = backup_json(&c, &["--dedup"]);
    let (files, bytes) = skipped(&second);
    let original = second["backup"]["original_bytes"].as_u64().unwrap();
    assert!(
        files > 0 && bytes >= cold_bytes && original - bytes < cold_bytes,
        "the cold table ({cold_bytes} bytes) is skipped: {files} files, {bytes} of {original} bytes skipped"
    );
    let first_manifest = manifest_of(&c, &first);
    let (before, after) = (
        file_entry(&first_manifest, &cold),
        file_entry(&manifest_of(&c, &second), &cold),
    );
    assert_eq!(
        after["groups"], before["groups"],
        "the skipped file has the previous groups"
    );
    assert_eq!(after["stat"], recorded, "and its trusted stat");
    assert_eq!(after["stored_size"], 0);

    // The hourly backup that skipped restores, verifies, and recovers to a cluster with every row.
    kept_backup_is_whole(&c, "the skipping backup");
    c.switch_and_archive();
    let nd = NewDir::new();
    let out = run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .args(["recover", "--pgdata"])
        .arg(&nd.data)
        .args([
            "--target",
            "latest",
            "--verify-sql",
            "SELECT (SELECT count(*) FROM cold WHERE v = repeat(md5(id::text), 4)) || ',' || \
             (SELECT sum(n) FROM hot)",
        ]));
    assert!(
        out.success(),
        "pitr recover failed:\n{}\n--- recovered server log ---\n{}",
        out.describe(),
        tail(&nd.server_log(), 60)
    );
    assert_eq!(out.stdout_line("verify: "), "150000,500500", "{}", out.describe());
}

#[test]
fn a_file_changed_with_its_size_and_mtime_put_back_is_read_again_since_its_ctime_moved() {
    let c = cluster_with_a_cold_table();
    // A file of the data directory that only this test writes: three groups and a bit.
    let probe = c.data_dir().join("skip_probe.bin");
    let old: Vec<u8> = (0..800_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&probe, &old).unwrap();
    give_to_server_user(&probe);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let first = backup_json(&c, &["--dedup"]);
    let recorded = file_entry(&manifest_of(&c, &first), "skip_probe.bin")["stat"].clone();
    assert_eq!(recorded["trusted"], true, "{recorded}");

    // Other content of the same size, then the recorded mtime set back (utimensat, as touch -d).
    let mut new = old.clone();
    new[300_000..300_100].fill(0xAB);
    fs::write(&probe, &new).unwrap();
    let mtime_ns = recorded["mtime_ns"].as_i64().unwrap();
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns as u64);
    fs::File::options()
        .write(true)
        .open(&probe)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let now = fs::metadata(&probe).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        let ns = now.mtime() * 1_000_000_000 + now.mtime_nsec();
        assert_eq!(
            (now.len(), ns),
            (old.len() as u64, mtime_ns),
            "size and mtime are the recorded ones"
        );
        let ctime = now.ctime() * 1_000_000_000 + now.ctime_nsec();
        assert_ne!(ctime, recorded["ctime_ns"].as_i64().unwrap(), "only the ctime tells");
    }

    let second = backup_json(&c, &["--dedup"]);
    assert!(skipped(&second).0 > 0, "other files are skipped: {second:#}");
    let entry = file_entry(&manifest_of(&c, &second), "skip_probe.bin");
    assert!(
        entry["stored_size"].as_u64().unwrap() > 0,
        "the changed piece is read and stored: {entry}"
    );
    let target = c.test_dir().path().join("restored-probe");
    let id = json_str(&second["backup"], "id");
    c.pitr(&["restore", "--backup", id, "--pgdata", target.to_str().unwrap()])
        .assert_success();
    assert!(
        fs::read(target.join("skip_probe.bin")).unwrap() == new,
        "the restored file has the new content"
    );
}

#[test]
fn daily_backups_and_read_all_read_every_file() {
    let c = cluster_with_a_cold_table();
    backup_json(&c, &["--dedup", "--no-expire"]);
    let daily = backup_json(&c, &["--dedup", "--tier", "daily", "--no-expire"]);
    assert_eq!(skipped(&daily), (0, 0), "a daily backup reads every file");
    let weekly = backup_json(&c, &["--dedup", "--tier", "weekly", "--no-expire"]);
    assert_eq!(skipped(&weekly), (0, 0), "a weekly backup reads every file");
    let read_all = backup_json(&c, &["--dedup", "--read-all", "--no-expire"]);
    assert_eq!(skipped(&read_all), (0, 0), "--read-all reads every file");
    let hourly = backup_json(&c, &["--dedup", "--no-expire"]);
    assert!(skipped(&hourly).0 > 0, "after them, an hourly backup skips: {hourly:#}");
    let out = c.pitr_connected(c.repo(), &["backup", "--read-all"]);
    assert_eq!(out.code(), Some(2), "--read-all needs --dedup: {}", out.describe());
}

#[test]
fn the_config_files_dedup_makes_backups_deduplicated_and_no_dedup_overrides_it() {
    let c = Cluster::start(ClusterOptions::default());
    let config = c.test_dir().write("dedup.toml", "dedup = true\n");
    give_to_server_user(&config);
    let backup = |args: &[&str]| {
        run(c
            .pitr_connected_cmd(c.repo())
            .arg("--config")
            .arg(&config)
            .args(["backup", "--fast", "--json", "--no-expire"])
            .args(args))
    };
    let deduplicated = |out: &CmdOutput| {
        assert!(out.success(), "{}", out.describe());
        parse_json(out)["backup"]["deduplicated"]
            .as_bool()
            .expect("deduplicated")
    };
    assert!(deduplicated(&backup(&[])), "dedup = true: the backup is deduplicated");
    assert!(
        deduplicated(&backup(&["--read-all"])),
        "--read-all needs no --dedup then"
    );
    assert!(!deduplicated(&backup(&["--no-dedup"])), "--no-dedup: whole objects");
    let refused = backup(&["--no-dedup", "--read-all"]);
    assert_eq!(refused.code(), Some(2), "{}", refused.describe());
    let listed = c.pitr(&["list", "hourly", "--json"]);
    let count = serde_json::from_str::<serde_json::Value>(&listed.assert_success().stdout_str())
        .unwrap()
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(count, 3, "the refused backup wrote nothing: {}", listed.describe());
    let plain = backup_json(&c, &["--no-expire"]);
    assert_eq!(
        plain["backup"]["deduplicated"], false,
        "no config: whole objects, as before"
    );
}

#[test]
fn a_flipped_byte_in_a_data_pack_fails_the_restore_naming_the_pack() {
    let c = cluster_with_a_cold_table();
    let summary = backup_json(&c, &["--dedup"]);
    let id = json_str(&summary["backup"], "id");
    let data_packs: Vec<PathBuf> = packs(c.repo_dir())
        .into_iter()
        .filter(|p| read(p).starts_with(b"pitrDAT1"))
        .collect();
    let largest = data_packs
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .expect("a data pack");
    let mut bytes = read(largest);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(largest, &bytes).unwrap();
    let target = c.test_dir().join("restored");
    let out = c.pitr(&["restore", "--backup", id, "--pgdata", target.to_str().unwrap()]);
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    let name = largest.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        out.stderr_str().contains(&name),
        "the error names the pack: {}",
        out.describe()
    );
}
