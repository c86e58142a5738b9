//! An encrypted repository (issue #19): made with `pitr keygen`'s keys, written by PostgreSQL's
//! archive_command and `pitr backup`, read back by `pitr recover` to an exact row count, and never
//! holding a byte of the data in clear; a missing, wrong or partial set of keys refused with
//! archive-get's exit 200 and nothing written; a host with the recipients only archives.
//! The first test runs on the S3 server (every command against an encrypted bucket), the others on
//! local disk, or on S3 with PITR_TEST_BACKEND=s3.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::s3::S3Server;
use common::*;

/// A distinctive text in the test's table: found nowhere in the repository's bytes.
const MARKER: &str = "pitr-plaintext-marker";

/// A key pair made by `pitr keygen`, in files the server user can read.
struct KeyPair {
    _dir: TestDir,
    identity: PathBuf,
    recipients: PathBuf,
}

fn keygen(pitr: &Path) -> KeyPair {
    let dir = TestDir::new("keys");
    let identity = dir.join("identity.txt");
    let out = run_ok(pitr_command(pitr).arg("keygen").arg(&identity));
    let recipient = out.stdout_str().trim().to_string();
    assert!(recipient.starts_with("age1"), "{}", out.describe());
    let text = fs::read_to_string(&identity).unwrap();
    assert!(
        text.contains("AGE-SECRET-KEY-1") && text.contains(&recipient),
        "an age identity file"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&identity).unwrap().permissions().mode() & 0o777, 0o600);
    let again = run(pitr_command(pitr).arg("keygen").arg(&identity));
    assert!(
        !again.success() && fs::read_to_string(&identity).unwrap() == text,
        "never overwritten"
    );
    let recipients = dir.write("recipients.txt", format!("# the repository's key\n{recipient}\n"));
    give_to_server_user(dir.path());
    KeyPair {
        _dir: dir,
        identity,
        recipients,
    }
}

fn encrypted_cluster(keys: &KeyPair) -> Cluster {
    cluster_with(&keys.recipients, &keys.identity)
}

fn cluster_with(recipients: &Path, identity: &Path) -> Cluster {
    Cluster::start(ClusterOptions {
        env: key_env(recipients, identity),
        ..ClusterOptions::default()
    })
}

fn key_env(recipients: &Path, identity: &Path) -> Vec<(String, String)> {
    vec![
        ("PITR_RECIPIENTS_FILE".into(), recipients.display().to_string()),
        ("PITR_IDENTITY_FILE".into(), identity.display().to_string()),
    ]
}

/// The key set an encrypted object records (envelope bytes 32..36).
fn key_set_of(object: &Path) -> u32 {
    let bytes = fs::read(object).unwrap();
    assert!(bytes.starts_with(b"PITE"), "{} is not encrypted", object.display());
    u32::from_le_bytes(bytes[32..36].try_into().unwrap())
}

/// Every stored object but the plain records (repo.json, generations, locks, WAL markers).
fn data_objects(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if name != "locks" && name != "generations" && name != "keys" {
                    walk(&path, found);
                }
            } else if name != "repo.json" && name != ".pitr-archive" && !name.starts_with(".tmp") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(root, &mut found);
    found
}

#[test]
fn an_encrypted_repository_recovers_to_the_row_and_shows_nothing_in_clear() {
    let probe = TestDir::new("probe");
    let keys = keygen(&probe.install_pitr());
    // On the S3 server whatever PITR_TEST_BACKEND says: the bucket is what encryption is for.
    let server = S3Server::start();
    let mut options = ClusterOptions::default().s3(&server, "encrypted");
    options.env.extend(key_env(&keys.recipients, &keys.identity));
    let c = Cluster::start(options);
    c.psql(&format!(
        "CREATE TABLE secrets AS SELECT '{MARKER}-' || g AS s FROM generate_series(1, 2000) g"
    ));
    backup_ok(&c, &[]);
    c.psql(&format!(
        "INSERT INTO secrets SELECT '{MARKER}-' || g FROM generate_series(2001, 2500) g"
    ));
    // A deduplicated backup too: its pieces are read back from packs by range.
    let dedup = backup_ok(&c, &["--dedup"]).backup_id();
    c.psql(&format!(
        "INSERT INTO secrets SELECT '{MARKER}-' || g FROM generate_series(2501, 2600) g"
    ));
    c.pitr_ok(&["restore-point", "before_oops"]);
    c.psql("DELETE FROM secrets");
    c.switch_and_archive();

    let repo_json = fs::read_to_string(c.repo_dir().join("repo.json")).unwrap();
    assert!(
        repo_json.contains("\"format_version\": 2") && repo_json.contains("age-x25519"),
        "{repo_json}"
    );
    let objects = data_objects(c.repo_dir());
    assert!(objects.len() > 20, "WAL and two backups: {objects:?}");
    for object in &objects {
        let bytes = fs::read(object).unwrap();
        assert!(bytes.starts_with(b"PITE"), "{} is not encrypted", object.display());
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{} shows the table's text in clear",
            object.display()
        );
    }

    // The whole repository checks out, the deduplicated backup's packs included.
    c.pitr_ok(&["verify", "all"]);
    let info = c.pitr_ok(&["info"]);
    let fingerprint = info.stdout_line("encrypted for recipient ");
    assert!(
        fingerprint.len() == 16 && repo_json.contains(&fingerprint),
        "{}\n{repo_json}",
        info.describe()
    );
    // The oops is found in the encrypted WAL; expire reads the encrypted manifests.
    let oops = c
        .pitr_ok(&["wal", "events", "--kind", "delete", "--min-rows", "1000"])
        .stdout_str();
    assert!(oops.contains("DELETE 2600 rows"), "{oops}");
    c.pitr_ok(&["expire"]);
    let nd = NewDir::new();
    let out = run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .args([
            "recover",
            "--backup",
            &dedup,
            "--target-name",
            "before_oops",
            "--pgdata",
        ])
        .arg(&nd.data)
        .args(["--verify-sql", "SELECT count(*) FROM secrets"]));
    assert!(out.success(), "{}\n{}", out.describe(), tail(&nd.server_log(), 40));
    assert_eq!(out.stdout_line("verify: "), "2600", "{}", out.describe());

    // `pitr sync` into a second repository: encrypted for the same recipients, and whole.
    let second = TestDir::new("second");
    let target = second.subdir("repo");
    give_to_server_user(second.path());
    let synced = c.pitr_ok(&["sync", "--to", &target.display().to_string()]);
    let target_json = fs::read_to_string(target.join("repo.json")).unwrap();
    assert!(
        target_json.contains(&fingerprint),
        "{}\n{target_json}",
        synced.describe()
    );
    let copied = data_objects(&target);
    assert!(copied.len() > 20, "{copied:?}");
    assert!(
        copied.iter().all(|p| fs::read(p).unwrap().starts_with(b"PITE")),
        "{copied:?}"
    );
    let verified = c.pitr_connected(&target, &["verify", "all"]);
    assert!(verified.success(), "{}", verified.describe());
}

#[test]
fn missing_wrong_and_write_only_keys() {
    let probe = TestDir::new("probe");
    let pitr = probe.install_pitr();
    let keys = keygen(&pitr);
    let other = keygen(&pitr);
    let c = encrypted_cluster(&keys);
    let (segment, bytes) = c.capture_segment();
    c.wait_archived(&segment);
    let dest = c.data_dir().join("pitr-fetched");
    let get = |env: &[(&str, &Path)]| {
        let mut cmd = c.pitr_cmd_in_data_dir();
        cmd.env_remove("PITR_IDENTITY_FILE").env_remove("PITR_RECIPIENTS_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd
            .arg("--repo")
            .arg(c.repo())
            .args(["archive-get", &segment])
            .arg(&dest))
    };

    // No identity: exit 200 (never 1, "absent"), naming the repository's recipient; nothing written.
    let out = get(&[]);
    out.assert_code(200);
    assert!(out.stderr_str().contains("no identity was given"), "{}", out.describe());
    assert!(!dest.exists());
    // Another key pair's identity.
    let out = get(&[("PITR_IDENTITY_FILE", &other.identity)]);
    out.assert_code(200);
    assert!(
        out.stderr_str().contains("no identity given matches"),
        "{}",
        out.describe()
    );
    assert!(!dest.exists());
    // verify without an identity checks that every object is whole (a warning: the contents are
    // not verified); a flipped byte is found.
    let verify = || {
        let mut cmd = c.pitr_cmd();
        cmd.env_remove("PITR_IDENTITY_FILE");
        run(cmd.arg("--repo").arg(c.repo()).args(["verify", "all"]))
    };
    let out = verify();
    out.assert_code(1);
    assert!(
        out.stdout_str().contains("are whole, not what they hold"),
        "{}",
        out.describe()
    );
    let stored = stored_path(c.repo_dir(), &segment);
    flip_byte_from_end(&stored, 1000);
    let out = verify();
    out.assert_code(2);
    assert!(
        out.stdout_str().contains("damaged: ") && out.stdout_str().contains(&segment),
        "{}",
        out.describe()
    );
    flip_byte_from_end(&stored, 1000);
    // The right one: the segment, byte for byte.
    get(&[("PITR_IDENTITY_FILE", &keys.identity)]).assert_success();
    assert_eq!(fs::read(&dest).unwrap(), bytes);

    // A host with the recipients only archives (PostgreSQL's retry of a stored segment included).
    let wal_copy = c.test_dir().join("wal-copy");
    fs::create_dir_all(&wal_copy).unwrap();
    fs::write(wal_copy.join(&segment), &bytes).unwrap();
    give_to_server_user(&wal_copy);
    let push = |env: &[(&str, &Path)], file: &Path| {
        let mut cmd = c.pitr_cmd();
        cmd.env_remove("PITR_IDENTITY_FILE").env_remove("PITR_RECIPIENTS_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd.arg("--repo").arg(c.repo()).arg("archive-push").arg(file))
    };
    push(&[("PITR_RECIPIENTS_FILE", &keys.recipients)], &wal_copy.join(&segment))
        .assert_success()
        .assert_silent();
    // The same name with other bytes is refused, without an identity too.
    let mut changed = bytes.clone();
    let at = changed.len() - 100;
    changed[at] ^= 1;
    fs::write(wal_copy.join(&segment), &changed).unwrap();
    let out = push(&[("PITR_RECIPIENTS_FILE", &keys.recipients)], &wal_copy.join(&segment));
    assert!(
        !out.success() && out.stderr_str().contains("different content"),
        "{}",
        out.describe()
    );

    // A new segment pushed with no recipients, or another key's, is refused; nothing is stored.
    let later = later_segment_name(&segment, 5, c.wal_segment_size());
    let later_path = wal_copy.join(&later);
    fs::write(&later_path, header_for(&bytes, &later, c.wal_segment_size())).unwrap();
    give_to_server_user(&wal_copy);
    for env in [vec![], vec![("PITR_RECIPIENTS_FILE", other.recipients.as_path())]] {
        let out = push(&env, &later_path);
        assert!(!out.success(), "{}", out.describe());
        assert!(
            out.stderr_str().contains("is encrypted for") && out.stderr_str().contains("nothing was written"),
            "{}",
            out.describe()
        );
    }
    assert!(!stored_anywhere(c.repo_dir(), &later), "nothing stored under {later}");

    // A plain object planted in the encrypted repository is refused, never served.
    let planted = stored_path(c.repo_dir(), &segment);
    let plain_run = TestDir::new("plain");
    let plain_repo = plain_run.subdir("repo");
    give_to_server_user(plain_run.path());
    let out = run(pitr_command(&pitr)
        .arg("--repo")
        .arg(&plain_repo)
        .arg("archive-push")
        .arg(wal_copy.join(&segment)));
    assert!(out.success(), "{}", out.describe());
    if !c.repo_is_s3() {
        fs::copy(stored_path(&plain_repo, &segment), &planted).unwrap();
        let out = get(&[("PITR_IDENTITY_FILE", &keys.identity)]);
        out.assert_code(200);
        assert!(out.stderr_str().contains("is not encrypted"), "{}", out.describe());
    }
}

/// Whether any object in the repository is named `name`.
fn stored_anywhere(root: &Path, name: &str) -> bool {
    data_objects(root)
        .iter()
        .any(|p| p.file_name().unwrap().to_string_lossy() == name)
}

/// `segment`'s bytes as a segment named `name`: its first page's address moved to that segment.
fn header_for(segment: &[u8], name: &str, seg_size: u64) -> Vec<u8> {
    let mut bytes = segment.to_vec();
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    let pageaddr = log * 0x1_0000_0000 + seg * seg_size;
    bytes[8..16].copy_from_slice(&pageaddr.to_le_bytes());
    bytes
}

#[test]
fn rotate_key_adds_recipients_and_rewrite_moves_every_object_to_them_resumably() {
    let probe = TestDir::new("probe");
    let pitr = probe.install_pitr();
    let (old, new) = (keygen(&pitr), keygen(&pitr));
    // The recipients the cluster's archive_command reads: rewritten at the rotation.
    let current = old
        ._dir
        .write("current-recipients.txt", fs::read(&old.recipients).unwrap());
    give_to_server_user(&current);
    let c = cluster_with(&current, &old.identity);
    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    backup_ok(&c, &[]);
    let before = c.switch_and_archive();

    // Key set 2: the old recipient and the new one.
    let both = format!(
        "{}{}",
        fs::read_to_string(&old.recipients).unwrap(),
        fs::read_to_string(&new.recipients).unwrap()
    );
    fs::write(&current, both).unwrap();
    let out = c.pitr_ok(&["rotate-key"]);
    assert!(out.stdout_str().contains("recorded as key set 2"), "{}", out.describe());
    // A writer with the old set only is refused now; the cluster (with both) archives on.
    let mut cmd = c.pitr_connected_cmd(c.repo());
    cmd.env("PITR_RECIPIENTS_FILE", &old.recipients);
    let refused = run(cmd.args(["restore-point", "--no-switch", "x"]));
    assert!(
        !refused.success() && refused.stderr_str().contains("is encrypted for"),
        "{}",
        refused.describe()
    );
    c.psql("INSERT INTO t SELECT g FROM generate_series(1001, 1500) g");
    let after = c.switch_and_archive();
    assert_eq!(key_set_of(&stored_path(c.repo_dir(), &before)), 1);
    assert_eq!(key_set_of(&stored_path(c.repo_dir(), &after)), 2);

    // The new identity alone reads the new segment, not the old one.
    let get = |name: &str| {
        let mut cmd = c.pitr_cmd_in_data_dir();
        cmd.env("PITR_IDENTITY_FILE", &new.identity);
        run(cmd
            .arg("--repo")
            .arg(c.repo())
            .args(["archive-get", name, "pg_wal/RECOVERYXLOG"]))
    };
    get(&after).assert_success();
    let out = get(&before);
    out.assert_code(200);
    assert!(
        out.stderr_str().contains("no identity given matches"),
        "{}",
        out.describe()
    );

    // --rewrite, killed after its first old object was deleted and before it was stored again:
    // the object aside stands in for it, and the next run puts it back and finishes.
    let mut cmd = c.pitr_cmd();
    cmd.env("PITR_CRASH_AT", "rekey:deleted");
    let killed = run(cmd.arg("--repo").arg(c.repo()).args(["rotate-key", "--rewrite"]));
    assert!(!killed.success(), "the crash point is reached: {}", killed.describe());
    if c.repo_is_s3() {
        // The killed run's lock is a lease nobody renews: as an operator who knows its holder is
        // dead may, delete it rather than wait a lease out.
        fs::remove_file(c.repo_dir().join("locks/backup.lock")).expect("the lease object");
    }
    let aside: Vec<PathBuf> = walk_all(c.repo_dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".rekey"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(!PathBuf::from(aside[0].to_string_lossy().trim_end_matches(".rekey")).exists());
    c.pitr_ok(&["verify", "all"]);
    let out = c.pitr_ok(&["rotate-key", "--rewrite", "--json"]);
    let report = parse_json(&out);
    assert_eq!(report["resumed"], 1, "{report}");
    assert!(report["rewritten"].as_u64().unwrap() > 5, "{report}");
    assert!(!report["recorded"].as_bool().unwrap(), "{report}");
    for object in data_objects(c.repo_dir()) {
        assert_eq!(key_set_of(&object), 2, "{} is not re-encrypted", object.display());
    }
    get(&before).assert_success();

    // The new identity alone recovers the whole history.
    let nd = NewDir::new();
    let mut cmd = c.pitr_cmd();
    cmd.env("PITR_IDENTITY_FILE", &new.identity);
    let out = run(cmd
        .arg("--repo")
        .arg(c.repo())
        .args(["recover", "--target", "latest", "--pgdata"])
        .arg(&nd.data)
        .args(["--verify-sql", "SELECT count(*) FROM t"]));
    assert!(out.success(), "{}\n{}", out.describe(), tail(&nd.server_log(), 40));
    assert_eq!(out.stdout_line("verify: "), "1500", "{}", out.describe());
}

/// Every file under `root`.
fn walk_all(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => found.extend(walk_all(&path)),
            false => found.push(path),
        }
    }
    found
}
