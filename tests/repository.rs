//! The repository as a whole: its explicit creation (`pitr create-repo`), what archive-get answers
//! for an empty, a damaged or an unmounted repository, and who may bind it to a cluster.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// Exit code of `archive-get` for every error.
const GET_ERROR: i32 = 200;

fn get(c: &Cluster, repo: &Path, name: &str) -> CmdOutput {
    let dest = c.test_dir().subdir("restored").join(format!("{name}.restored"));
    let _ = fs::remove_file(&dest);
    c.pitr_with_repo(repo, &["archive-get", name, dest.to_str().unwrap()])
}

/// A standby pointed at a new repository, and a promoted standby archiving its history file
/// first into one (PostgreSQL's recovery tests do both): before `create-repo` the empty
/// repository is unusable (200) and a history file is refused, not stored without repo.json;
/// after it, a miss is an honest 1 and the history file is stored and restored.
#[test]
fn a_created_empty_repository_answers_absent_and_takes_a_history_file_first() {
    let c = Cluster::start(ClusterOptions::default().archive(false));
    let repo = c.test_dir().subdir("new-repo");
    give_to_server_user(&repo);
    assert_eq!(
        get(&c, &repo, "000000010000000000000001").code(),
        Some(GET_ERROR),
        "a directory without repo.json is no archive"
    );
    let history = c
        .test_dir()
        .write("00000002.history", "1\t0/3000000\tno recovery target specified\n");
    give_to_server_user(&history);
    let refused = c.pitr_with_repo(&repo, &["archive-push", history.to_str().unwrap()]);
    assert_eq!(refused.code(), Some(1), "{}", refused.describe());
    refused.assert_one_line_error();
    assert!(refused.stderr_str().contains("create-repo"), "{}", refused.describe());
    assert!(
        fs::read_dir(&repo).unwrap().next().is_none(),
        "nothing was stored without repo.json"
    );

    let created = c.pitr_connected(&repo, &["create-repo", "--json"]);
    created.assert_success();
    let report = parse_json(&created);
    assert_eq!(json_str(&report, "outcome"), "created");
    assert_eq!(
        report["cluster"]["system_identifier"].as_u64(),
        Some(c.system_identifier())
    );
    let again = c.pitr_connected(&repo, &["create-repo", "--json"]);
    again.assert_success();
    assert_eq!(json_str(&parse_json(&again), "outcome"), "already_created");

    get(&c, &repo, "000000010000000000000001").assert_code(1);
    get(&c, &repo, "00000002.history").assert_code(1);
    c.pitr_with_repo(&repo, &["archive-push", history.to_str().unwrap()])
        .assert_success()
        .assert_silent();
    get(&c, &repo, "00000002.history").assert_success();

    let other = Cluster::start(ClusterOptions::default().archive(false));
    let foreign = other.pitr_connected(&repo, &["create-repo"]);
    assert_eq!(foreign.code(), Some(1), "{}", foreign.describe());
    assert!(
        foreign.stderr_str().contains("was not created for this server"),
        "{}",
        foreign.describe()
    );
}

/// archive-get says "absent" only when the archive is there to say it: a repository whose wal/
/// is missing, emptied (an unmounted mount point) or holds a link where an object should be is
/// an error (200), so PostgreSQL stops instead of ending recovery early.
#[test]
fn a_missing_or_unmounted_wal_directory_or_a_link_is_an_error_never_absent() {
    let c = Cluster::start(ClusterOptions::default().wal_segsize_mb(1));
    let name = c.switch_wal();
    c.wait_archived(&name);
    let stored = stored_path(c.repo(), &name);

    let elsewhere = c.test_dir().subdir("elsewhere");
    fs::rename(&stored, elsewhere.join(&name)).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("gone"), &stored).unwrap();
    let dangling = get(&c, c.repo(), &name);
    assert_eq!(dangling.code(), Some(GET_ERROR), "{}", dangling.describe());
    fs::remove_file(&stored).unwrap();
    std::os::unix::fs::symlink(elsewhere.join(&name), &stored).unwrap();
    let link = get(&c, c.repo(), &name);
    assert_eq!(
        link.code(),
        Some(GET_ERROR),
        "a link is never followed: {}",
        link.describe()
    );
    fs::remove_file(&stored).unwrap();
    fs::rename(elsewhere.join(&name), &stored).unwrap();
    get(&c, c.repo(), &name).assert_success();

    let wal = c.repo().join("wal");
    let moved = c.test_dir().join("wal-moved");
    fs::rename(&wal, &moved).unwrap();
    let missing = get(&c, c.repo(), "000000010000000000000099");
    assert_eq!(missing.code(), Some(GET_ERROR), "{}", missing.describe());
    assert!(missing.stderr_str().contains("not mounted"), "{}", missing.describe());
    fs::create_dir(&wal).unwrap();
    give_to_server_user(&wal);
    let unmounted = get(&c, c.repo(), "000000010000000000000099");
    assert_eq!(unmounted.code(), Some(GET_ERROR), "{}", unmounted.describe());
    fs::remove_dir(&wal).unwrap();
    fs::rename(&moved, &wal).unwrap();
    get(&c, c.repo(), "000000010000000000000099").assert_code(1);
}

/// repo.json deleted while WAL remains: another cluster's archive-push must not take the
/// repository over, and neither may its create-repo; the repository's own cluster gets repo.json
/// back through create-repo, after the stored WAL was checked.
#[test]
fn a_repository_that_lost_repo_json_is_not_rebound_by_another_cluster() {
    let c = Cluster::start(ClusterOptions::default().wal_segsize_mb(1));
    let name = c.switch_wal();
    c.wait_archived(&name);
    let metadata = c.repo().join("repo.json");
    fs::remove_file(&metadata).unwrap();

    let other = Cluster::start(ClusterOptions::default().wal_segsize_mb(1).archive(false));
    let (segment, bytes) = other.capture_segment();
    let file = other.test_dir().write(&segment, &bytes);
    give_to_server_user(&file);
    let push = other.pitr_with_repo(c.repo(), &["archive-push", file.to_str().unwrap()]);
    assert_eq!(push.code(), Some(1), "{}", push.describe());
    assert!(push.stderr_str().contains("no repo.json"), "{}", push.describe());
    assert!(!metadata.exists(), "another cluster claimed the repository");
    let create = other.pitr_connected(c.repo(), &["create-repo"]);
    assert_eq!(create.code(), Some(1), "{}", create.describe());
    assert!(!metadata.exists());

    let own = c.pitr_connected(c.repo(), &["create-repo", "--json"]);
    own.assert_success();
    assert_eq!(json_str(&parse_json(&own), "outcome"), "recreated");
    get(&c, c.repo(), &name).assert_success();
}
