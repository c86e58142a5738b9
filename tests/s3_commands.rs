//! Every command with the repository on S3: a real PostgreSQL cluster whose archive_command and
//! restore_command run `pitr --repo s3://...` against a real S3-compatible server (s3s-fs, see
//! `common/s3.rs`), the endpoint and credentials in the environment only.

mod common;

use std::path::PathBuf;

use common::s3::S3Server;
use common::*;

/// A primary archiving into `s3://pitr-test/<prefix>` on `server`.
fn primary_on(server: &S3Server, prefix: &str) -> Cluster {
    Cluster::start(ClusterOptions::default().s3(server, prefix))
}

/// The backup id of `pitr backup`'s text summary.
#[track_caller]
fn backup_id(out: &CmdOutput) -> String {
    out.stdout_str()
        .lines()
        .find_map(|l| {
            l.strip_prefix("backup ")?
                .split_once(" done:")
                .map(|(id, _)| id.to_string())
        })
        .unwrap_or_else(|| panic!("no `backup <id> done:` line:\n{}", out.describe()))
}

/// `pitr recover` into `data` with `args`, connected to nothing: the repository is all it reads.
fn recover(c: &Cluster, data: &std::path::Path, args: &[&str]) -> CmdOutput {
    run(c
        .pitr_cmd()
        .arg("--repo")
        .arg(c.repo())
        .arg("recover")
        .arg("--pgdata")
        .arg(data)
        .args(args))
}

/// Where `pitr recover` left the server: `connect: psql -h S -p P -U U postgres`.
fn psql_recovered(out: &CmdOutput, sql: &str) -> String {
    let line = out.stdout_line("connect: ");
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |flag: &str| words[words.iter().position(|w| *w == flag).unwrap() + 1];
    let mut psql = client_at("psql", &PathBuf::from(after("-h")), after("-p").parse().unwrap());
    psql.arg("-U").arg(after("-U"));
    try_psql_with(&mut psql, sql).unwrap_or_else(|o| panic!("{}", o.describe()))
}

/// The runbook's bad day with the repository on S3: archive, back up, mark a restore point,
/// delete everything, then recover to the restore point from S3 alone; list, info, verify and
/// expire read the same bucket.
#[test]
fn the_runbook_scenario_on_s3() {
    let server = S3Server::start();
    let c = primary_on(&server, "db1");
    c.pitr_connected(c.repo(), &["create-repo"]).assert_success();
    c.psql("CREATE TABLE products (id int PRIMARY KEY); INSERT INTO products SELECT generate_series(1, 1000)");
    let backup = backup_ok(&c, &[]);
    let id = backup_id(&backup);
    c.psql("INSERT INTO products SELECT generate_series(1001, 1500)");
    c.pitr_connected(c.repo(), &["restore-point", "before_oops"])
        .assert_success();
    c.psql("DELETE FROM products");
    c.switch_and_archive();

    // Everything is in the bucket, nothing on local disk.
    let stored = server.bucket_dir().join("db1");
    assert!(stored.join("repo.json").is_file(), "repo.json in the bucket");
    assert!(!c.dir().join("repo").exists(), "no local repository was made");

    let list = c.pitr(&["list", "--json"]);
    list.assert_success();
    assert!(list.stdout_str().contains(&id), "{}", list.describe());
    let info = parse_json(c.pitr(&["info", "--json"]).assert_success());
    assert!(info.to_string().contains(&server.url("db1")), "{info}");

    let verify = c.pitr_connected(c.repo(), &["verify", "--json"]);
    assert_eq!(verify.code(), Some(0), "{}", verify.describe());

    let new = TestDir::new("s3-recover");
    let data = new.join("data");
    let out = recover(
        &c,
        &data,
        &[
            "--target-name",
            "before_oops",
            "--verify-sql",
            "SELECT count(*) FROM products",
        ],
    );
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout_line("verify: "), "1500", "{}", out.describe());
    assert_eq!(psql_recovered(&out, "SELECT count(*) FROM products"), "1500");
    let conf = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains(&server.url("db1")),
        "restore_command names the bucket:\n{conf}"
    );
    assert!(
        !conf.contains(&server.secret_key),
        "no secret in the configuration:\n{conf}"
    );
    run(server_command(c.bindir().join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["-m", "immediate", "stop"]));

    // No secret anywhere pitr wrote or printed.
    for text in [
        list.stdout_str(),
        info.to_string(),
        verify.stdout_str(),
        out.stdout_str(),
        out.stderr_str(),
    ] {
        assert!(!text.contains(&server.secret_key), "a secret leaked:\n{text}");
    }
}
