//! `pitr sync`: a second repository, local or on S3 (s3s-fs), that recovery uses alone; a sync
//! killed at its crash points and resumed; an object of other content in the target refused; a
//! target of another cluster refused; a damaged source object reported and not copied; the
//! daemon's scheduled sync job. Deduplicated backups: their packs copied once, verified and
//! recovered from the copy; a damaged pack, a kill between packs and manifest, a pack the target's
//! expire condemned.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::s3::S3Server;
use common::*;

/// `pitr --repo <c's repo> sync --json --to <target>` with `env`, as the server user.
fn sync_cmd(c: &Cluster, target: &str, env: &[(String, String)]) -> std::process::Command {
    let mut cmd = c.pitr_cmd();
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--repo")
        .arg(c.repo())
        .args(["sync", "--json", "--to", target]);
    cmd
}

/// A successful sync's JSON report.
#[track_caller]
fn sync_ok(c: &Cluster, target: &str, env: &[(String, String)]) -> serde_json::Value {
    let out = run(&mut sync_cmd(c, target, env));
    assert!(out.success(), "{}", out.describe());
    parse_json(&out)
}

/// A primary with 1000 rows in `products`, a backup, 500 rows more and the restore point
/// `before_oops`, then every row deleted and the WAL archived; returns the backup id.
fn the_bad_day(c: &Cluster) -> String {
    c.pitr_connected(c.repo(), &["create-repo"]).assert_success();
    c.psql("CREATE TABLE products (id int PRIMARY KEY); INSERT INTO products SELECT generate_series(1, 1000)");
    let id = backup_json(c, &[])["backup"]["id"].as_str().unwrap().to_string();
    c.psql("INSERT INTO products SELECT generate_series(1001, 1500)");
    c.pitr_connected(c.repo(), &["restore-point", "before_oops"])
        .assert_success();
    c.psql("DELETE FROM products");
    c.switch_and_archive();
    id
}

/// `pitr --repo <repo> recover` to `before_oops` into a new directory with `env`, reading
/// nothing but that repository; returns the rows it counted, and stops the copy.
fn recovered_rows(c: &Cluster, repo: &str, env: &[(String, String)]) -> String {
    let new = TestDir::new("sync-recover");
    let data = new.join("data");
    let out = run(c
        .pitr_cmd()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--repo")
        .arg(repo)
        .args(["recover", "--pgdata"])
        .arg(&data)
        .args([
            "--target-name",
            "before_oops",
            "--verify-sql",
            "SELECT count(*) FROM products",
        ]));
    assert!(out.success(), "{}", out.describe());
    let conf = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains(repo), "restore_command reads the copy:\n{conf}");
    run(server_command(c.bindir().join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["-m", "immediate", "stop"]));
    out.stdout_line("verify: ")
}

/// Every object of a local repository (locks and temporary files aside) with its bytes.
fn objects(repo: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, found: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if rel.starts_with("locks") || rel.to_string_lossy().contains(".tmp") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, found);
            } else {
                found.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(repo, repo, &mut found);
    found
}

/// An empty repository directory for a target, owned by the server user.
fn empty_repo(dir: &TestDir) -> PathBuf {
    dir.subdir("copy")
}

#[test]
fn a_synced_copy_on_local_disk_and_on_s3_recovers_alone() {
    let c = Cluster::start(ClusterOptions::default());
    let id = the_bad_day(&c);
    let s3 = S3Server::start();
    let dir = TestDir::new("sync-local");
    let local = empty_repo(&dir);
    let local = local.to_str().unwrap();

    let planned = parse_json(run(sync_cmd(&c, local, &[]).arg("--dry-run")).assert_success());
    assert!(
        std::fs::read_dir(local).unwrap().next().is_none(),
        "a dry run writes nothing"
    );
    let report = sync_ok(&c, local, &[]);
    assert_eq!(report["backups_copied"], serde_json::json!([id]), "{report}");
    for key in ["objects_copied", "bytes_copied", "wal_copied", "backups_copied"] {
        assert_eq!(
            planned[key], report[key],
            "{key}: the dry run planned what the sync copied"
        );
    }
    assert!(report["wal_copied"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(report["restore_points_copied"], 1, "{report}");
    assert!(
        report["names_copied"].as_u64().unwrap() >= 1,
        "the backup's map of names: {report}"
    );
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(
        objects(c.repo()),
        objects(Path::new(local)),
        "the copy holds what the source holds"
    );
    let again = sync_ok(&c, local, &[]);
    assert_eq!(
        (&again["objects_copied"], &again["backups_present"]),
        (&0.into(), &1.into()),
        "a second sync copies nothing: {again}"
    );
    assert!(again["objects_skipped"].as_u64().unwrap() > 3, "{again}");

    let url = s3.url("offsite");
    let report = sync_ok(&c, &url, &s3.env());
    assert_eq!(report["backups_copied"], serde_json::json!([id]), "{report}");
    assert!(
        s3.bucket_dir().join("offsite/repo.json").is_file(),
        "repo.json is in the bucket"
    );
    let again = sync_ok(&c, &url, &s3.env());
    assert_eq!(again["objects_copied"], 0, "nothing new for S3 either: {again}");

    assert_eq!(recovered_rows(&c, local, &[]), "1500");
    assert_eq!(recovered_rows(&c, &url, &s3.env()), "1500");
}

#[test]
fn a_sync_killed_anywhere_resumes_and_ends_with_the_same_repository() {
    let c = Cluster::start(ClusterOptions::default());
    let id = the_bad_day(&c);
    let dir = TestDir::new("sync-crash");
    let target = empty_repo(&dir);
    let url = target.to_str().unwrap();
    for point in ["sync:wal#2", "sync:piece#10", "sync:manifest-copied", "sync:committed"] {
        let out = run(sync_cmd(&c, url, &[]).env("PITR_CRASH_AT", point));
        assert!(
            matches!(out.code(), None | Some(137)),
            "killed at {point}: {}",
            out.describe()
        );
        // Whatever it left is a valid repository: no backup shows before its manifest.
        let listed = parse_json(c.pitr_with_repo(&target, &["list", "--json"]).assert_success());
        let expect = if point == "sync:committed" { 1 } else { 0 };
        assert_eq!(listed.as_array().unwrap().len(), expect, "after {point}: {listed}");
    }
    let report = sync_ok(&c, url, &[]);
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert!(
        report["objects_skipped"].as_u64().unwrap() > 0,
        "what the killed runs copied is not copied again: {report}"
    );
    assert_eq!(objects(c.repo()), objects(&target), "the same objects, the same bytes");
    let listed = c.pitr_with_repo(&target, &["list", "--json"]);
    assert!(listed.assert_success().stdout_str().contains(&id));
    let verify = c.pitr_with_repo(&target, &["verify", "--json", "--log-file", "none"]);
    assert_eq!(verify.code(), Some(0), "{}", verify.describe());
}

#[test]
fn an_object_of_other_content_in_the_target_is_refused_and_never_overwritten() {
    let c = Cluster::start(ClusterOptions::default());
    the_bad_day(&c);
    let dir = TestDir::new("sync-conflict");
    let target = empty_repo(&dir);
    let url = target.to_str().unwrap();
    sync_ok(&c, url, &[]);
    let newest = c.switch_and_archive();
    let planted = stored_path(&target, &newest);
    dir.write(planted.strip_prefix(dir.path()).unwrap(), b"not this segment");
    let before = objects(&target);

    let out = run(&mut sync_cmd(&c, url, &[]));
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let err = out.stderr_str();
    assert!(
        err.contains(&planted.display().to_string())
            && err.contains(&stored_path(c.repo(), &newest).display().to_string())
            && err.contains("nothing was copied or overwritten"),
        "both places are named: {err}"
    );
    assert_eq!(objects(&target), before, "nothing changed in the target");
}

#[test]
fn a_target_of_another_cluster_is_refused_and_damage_in_the_source_is_not_copied() {
    let c = Cluster::start(ClusterOptions::default());
    c.pitr_connected(c.repo(), &["create-repo"]).assert_success();
    c.switch_and_archive();
    let other = Cluster::start(ClusterOptions::default().archive(false));
    other.pitr_connected(other.repo(), &["create-repo"]).assert_success();
    let before = objects(other.repo());

    let out = run(&mut sync_cmd(&c, other.repo().to_str().unwrap(), &[]));
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr_str().contains("belongs to another cluster") && out.stderr_str().contains("nothing was copied"),
        "{}",
        out.describe()
    );
    assert_eq!(objects(other.repo()), before, "nothing changed");

    let dir = TestDir::new("sync-foreign");
    dir.write("copy/notes.txt", "mine");
    let out = run(&mut sync_cmd(&c, dir.join("copy").to_str().unwrap(), &[]));
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr_str().contains("has no repo.json but holds notes.txt"),
        "{}",
        out.describe()
    );
    assert!(!dir.join("copy/repo.json").exists());

    // A damaged object of the source is reported, not copied; the rest is.
    let damaged = c.switch_and_archive();
    flip_byte_from_end(&stored_path(c.repo(), &damaged), 5);
    let fresh = dir.subdir("fresh");
    let out = run(&mut sync_cmd(&c, fresh.to_str().unwrap(), &[]));
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    let report = parse_json(&out);
    let problems = report["problems"].to_string();
    assert!(problems.contains(&damaged) && problems.contains("corrupt"), "{report}");
    assert!(
        !stored_path(&fresh, &damaged).exists(),
        "the damaged segment is not copied"
    );
    assert!(
        fresh.join("repo.json").is_file() && report["wal_copied"].as_u64().unwrap() >= 1,
        "{report}"
    );
}

#[test]
fn the_daemon_runs_the_scheduled_sync() {
    let c = Cluster::start(ClusterOptions::default());
    c.pitr_connected(c.repo(), &["create-repo"]).assert_success();
    let id = backup_json(&c, &[])["backup"]["id"].as_str().unwrap().to_string();
    let dir = TestDir::new("sync-daemon");
    let target = empty_repo(&dir);
    let port = free_port();
    let config = dir.write(
        "daemon.toml",
        format!(
            "repo = \"{}\"\nsync_to = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n\n[schedule]\nhourly = \"off\"\n\
             daily = \"off\"\nweekly = \"off\"\nverify = \"off\"\nsync = \"*/2 * * * * *\"\n",
            c.repo().display(),
            target.display()
        ),
    );
    let mut command = c.daemon_cmd(&config);
    let child = spawn(&mut command);
    let synced = poll(Duration::from_secs(60), || {
        let metrics = http_get(port, "/metrics")?;
        metrics
            .contains("pitr_job_runs_total{job=\"sync\",result=\"success\"}")
            .then_some(())
    });
    let out = terminate_pitr(child, "pitr daemon".into(), Duration::from_secs(60));
    assert!(
        synced.is_some(),
        "no sync into {}: {}",
        target.display(),
        out.describe()
    );
    let listed = c.pitr_with_repo(&target, &["list", "--json"]);
    assert!(
        listed.assert_success().stdout_str().contains(&id),
        "{}",
        listed.describe()
    );
    assert!(
        out.stderr_str()
            .contains(&format!("job sync: sync to {}", target.display())),
        "{}",
        out.describe()
    );

    // A sync job without a repository to sync to is refused with the config.
    let bad = dir.write("bad.toml", "[schedule]\nsync = \"0 * * * *\"\n");
    let out = run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .arg("--config")
        .arg(&bad)
        .args(["sync", "--dry-run"]));
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(out.stderr_str().contains("sync_to"), "{}", out.describe());
}

/// Like [`the_bad_day`] with two deduplicated backups: the second, after 500 rows more, shares
/// the packs of the files that did not change. Returns both ids and the packs each wrote.
fn the_bad_day_deduplicated(c: &Cluster) -> ([String; 2], [Vec<PathBuf>; 2]) {
    c.pitr_connected(c.repo(), &["create-repo"]).assert_success();
    c.psql("CREATE TABLE products (id int PRIMARY KEY); INSERT INTO products SELECT generate_series(1, 1000)");
    c.psql("CHECKPOINT");
    let first = backup_json(c, &["--dedup", "--no-expire"])["backup"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let first_packs = packs(c.repo_dir());
    c.psql("INSERT INTO products SELECT generate_series(1001, 1500)");
    c.psql("CHECKPOINT");
    std::thread::sleep(Duration::from_secs(1));
    let second = backup_json(c, &["--dedup", "--no-expire"])["backup"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let second_packs: Vec<PathBuf> = packs(c.repo_dir())
        .into_iter()
        .filter(|p| !first_packs.contains(p))
        .collect();
    c.pitr_connected(c.repo(), &["restore-point", "before_oops"])
        .assert_success();
    c.psql("DELETE FROM products");
    c.switch_and_archive();
    ([first, second], [first_packs, second_packs])
}

/// The names of the packs of the repository at `repo` (local, or an s3s-fs bucket's directory).
fn packs(repo: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in std::fs::read_dir(repo.join("packs")).into_iter().flatten() {
        for pack in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = pack.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                found.push(path.strip_prefix(repo).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    found
}

/// The ids of the backups `pitr list` shows in the repository `repo`.
fn listed(c: &Cluster, repo: &Path) -> Vec<String> {
    let out = c.pitr_with_repo(repo, &["list", "--json"]);
    let listed = parse_json(out.assert_success());
    let mut ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| json_str(b, "id").to_string())
        .collect();
    ids.sort();
    ids
}

/// `pitr --repo <repo> verify` passes.
#[track_caller]
fn verifies(c: &Cluster, repo: &Path) {
    let out = c.pitr_with_repo(repo, &["verify", "--log-file", "none"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
}

#[test]
fn deduplicated_backups_are_copied_with_their_packs_once_and_the_copy_verifies_and_recovers() {
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    let (ids, written) = the_bad_day_deduplicated(&c);
    assert!(!written[1].is_empty(), "the second backup wrote packs of its own");
    let dir = TestDir::new("sync-dedup");
    let target = empty_repo(&dir);
    let url = target.to_str().unwrap();

    let planned = parse_json(run(sync_cmd(&c, url, &[]).arg("--dry-run")).assert_success());
    let report = sync_ok(&c, url, &[]);
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["backups_copied"], serde_json::json!(ids), "{report}");
    let source_packs = packs(c.repo_dir());
    assert_eq!(
        report["packs_copied"],
        source_packs.len(),
        "every pack once, though the second backup shares the first's: {report}"
    );
    for key in ["objects_copied", "bytes_copied", "packs_copied", "pack_bytes_copied"] {
        assert_eq!(
            planned[key], report[key],
            "{key}: the dry run planned what the sync copied"
        );
    }
    assert_eq!(packs(&target), source_packs);
    for pack in &source_packs {
        assert!(
            read(&target.join(pack)) == read(&c.repo_dir().join(pack)),
            "{}",
            pack.display()
        );
    }
    assert_eq!(listed(&c, &target), ids);
    verifies(&c, &target);
    assert_eq!(recovered_rows(&c, url, &[]), "1500");

    let again = sync_ok(&c, url, &[]);
    assert_eq!(
        (
            &again["objects_copied"],
            &again["packs_copied"],
            &again["backups_present"]
        ),
        (&0.into(), &0.into(), &2.into()),
        "a second sync copies nothing: {again}"
    );

    // Into S3 too: the cluster's own server when its repository is there (one endpoint for both).
    let started;
    let s3 = match c.s3_server() {
        Some(own) => own,
        None => {
            started = S3Server::start();
            &started
        }
    };
    let offsite = s3.url("offsite");
    let report = sync_ok(&c, &offsite, &s3.env());
    assert_eq!(report["backups_copied"], serde_json::json!(ids), "{report}");
    assert_eq!(packs(&s3.bucket_dir().join("offsite")), source_packs);
    assert_eq!(recovered_rows(&c, &offsite, &s3.env()), "1500");
}

#[test]
fn a_damaged_pack_keeps_its_backup_out_of_the_copy_and_the_rest_is_copied() {
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    let ([first, second], [_, written]) = the_bad_day_deduplicated(&c);
    // A data pack only the second backup references: a byte in its frames flipped.
    let damaged = written
        .iter()
        .find(|p| read(&c.repo_dir().join(p)).starts_with(b"pitrDAT1"))
        .expect("the second backup wrote a data pack");
    let path = c.repo_dir().join(damaged);
    let len = read(&path).len();
    flip_byte_from_end(&path, len / 2);
    let dir = TestDir::new("sync-dedup-damaged");
    let target = empty_repo(&dir);

    let out = run(&mut sync_cmd(&c, target.to_str().unwrap(), &[]));
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    let report = parse_json(&out);
    assert_eq!(report["backups_copied"], serde_json::json!([first]), "{report}");
    let problems = report["problems"].to_string();
    let name = damaged.file_name().unwrap().to_string_lossy();
    assert!(
        problems.contains(&format!("backup {second}")) && problems.contains(&*name),
        "the backup and the pack are named: {report}"
    );
    assert!(
        !target.join("packs").join(&name[..2]).join(&*name).exists(),
        "the damaged pack is not copied"
    );
    assert!(
        !target.join("hourly").join(&second).join("backup.manifest").exists(),
        "nothing of the damaged backup is committed"
    );
    assert_eq!(listed(&c, &target), [first]);
    verifies(&c, &target);
}

#[test]
fn a_sync_killed_between_packs_and_manifest_resumes() {
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    let (ids, _) = the_bad_day_deduplicated(&c);
    let dir = TestDir::new("sync-dedup-crash");
    let target = empty_repo(&dir);
    let url = target.to_str().unwrap();
    let out = run(sync_cmd(&c, url, &[]).env("PITR_CRASH_AT", "sync:pack#2"));
    assert!(matches!(out.code(), None | Some(137)), "{}", out.describe());
    // Other jobs may have written a pack more before the kill landed.
    let before = packs(&target).len() as u64;
    assert!(before >= 2, "packs were written before the kill");
    assert_eq!(
        listed(&c, &target),
        Vec::<String>::new(),
        "no backup before its manifest"
    );

    let report = sync_ok(&c, url, &[]);
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["backups_copied"], serde_json::json!(ids), "{report}");
    assert_eq!(
        report["packs_copied"].as_u64().unwrap() + before,
        packs(c.repo_dir()).len() as u64,
        "the packs the killed run wrote are not copied again: {report}"
    );
    assert_eq!(packs(&target), packs(c.repo_dir()));
    verifies(&c, &target);
}

#[test]
fn a_backup_whose_pack_the_targets_expire_condemned_waits_for_the_next_expire() {
    let c = Cluster::start(ClusterOptions::default().setting("autovacuum", "off"));
    let (ids, _) = the_bad_day_deduplicated(&c);
    let dir = TestDir::new("sync-dedup-condemned");
    let target = empty_repo(&dir);
    let url = target.to_str().unwrap();
    sync_ok(&c, url, &[]);
    // The target's own retention keeps no backup: its expire deletes both and condemns every
    // pack (grace period 0).
    let keep_none = dir.write("keep-none.toml", "keep_hourly = 0\n");
    let expire = || {
        let out = run(c
            .pitr_cmd()
            .env("PITR_PACK_GRACE_SECONDS", "0")
            .arg("--repo")
            .arg(&target)
            .arg("--config")
            .arg(&keep_none)
            .args(["expire", "--json"]));
        assert!(out.success(), "{}", out.describe());
    };
    expire();
    assert_eq!(listed(&c, &target), Vec::<String>::new());
    assert!(!packs(&target).is_empty(), "condemned, not deleted yet");

    // The next sync would reference the condemned packs again: not copied, said why.
    let out = run(&mut sync_cmd(&c, url, &[]));
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    let report = parse_json(&out);
    assert_eq!(report["backups_copied"], serde_json::json!([]), "{report}");
    let problems = report["problems"].to_string();
    assert!(
        ids.iter().all(|id| problems.contains(id.as_str())) && problems.contains("the target's expire condemned pack"),
        "{report}"
    );
    assert_eq!(listed(&c, &target), Vec::<String>::new());

    // A sync that would commit later than the grace period after reading the gc records does
    // not commit (grace period 0 here).
    expire();
    assert!(
        packs(&target).is_empty(),
        "the second expire deleted the condemned packs"
    );
    let zero = [("PITR_PACK_GRACE_SECONDS".to_string(), "0".to_string())];
    let out = run(&mut sync_cmd(&c, url, &zero));
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    let report = parse_json(&out);
    assert!(report["problems"].to_string().contains("not committed"), "{report}");
    assert_eq!(listed(&c, &target), Vec::<String>::new());

    let report = sync_ok(&c, url, &[]);
    assert_eq!(report["backups_copied"], serde_json::json!(ids), "{report}");
    verifies(&c, &target);
}
