//! The `pitr` binary's command line: which subcommand a command line names (and so its exit
//! codes, even when a repository directory is named like a subcommand), usage errors as one full
//! line in the server log, values and settings checked before anything is done, and the global
//! options accepted only where they apply.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Exit code of `archive-get` for every error.
const GET_ERROR: i32 = 200;

/// Exit code of bad arguments or settings (other commands than archive-get).
const USAGE: i32 = 2;

/// `pitr <args>` run from `dir`, with no PITR_* variable.
fn pitr_in(dir: &Path, args: &[&str]) -> CmdOutput {
    run(pitr_at(dir).args(args))
}

fn pitr_at(dir: &Path) -> Command {
    let mut cmd = Command::new(pitr_binary());
    for var in PITR_ENV.iter().chain(&["PITR_SPOOL"]) {
        cmd.env_remove(var);
    }
    cmd.current_dir(dir);
    cmd
}

#[test]
fn exit_codes_follow_the_subcommand_when_a_repository_is_named_like_one() {
    // A repository named `backup` that a cluster archives into, one named `archive-get`, and an
    // empty directory named `backup` (a repository whose disk is not mounted).
    let base = TestDir::new("cli-names");
    let backup = base.subdir("backup");
    base.subdir("archive-get");
    let unmounted = TestDir::new("cli-unmounted");
    unmounted.subdir("backup");
    let c = Cluster::start(ClusterOptions::default().wal_segsize_mb(1).repo(&backup));
    let archived = c.switch_wal();
    c.wait_archived(&archived);
    let absent = later_segment_name(&archived, 1, c.wal_segment_size());
    let dest = base.join("restored");
    let dest = dest.to_str().unwrap();
    // As PostgreSQL runs them: as the server user, the repository given before the subcommand.
    let pitr = |dir: &Path, args: &[&str]| run(c.pitr_cmd().current_dir(dir).args(args));

    let mut problems = Vec::new();
    let mut expect = |what: &str, out: CmdOutput, code: i32| {
        if out.code() != Some(code) {
            problems.push(format!("{what}: expected exit {code}\n{}", out.describe()));
        }
    };
    let at_base = base.path();
    for repo in [&["--repo", "backup"][..], &["--repo=backup"][..]] {
        let get = |args: &[&str]| pitr(at_base, &[repo, &["archive-get"], args].concat());
        let _ = std::fs::remove_file(dest);
        expect("restored", get(&[&archived, dest]), 0);
        expect("truly absent", get(&[&absent, dest]), 1);
        expect("invalid name", get(&["foo", dest]), GET_ERROR);
        expect("destination missing", get(&[&archived]), GET_ERROR);
        expect("one argument too many", get(&[&archived, dest, "extra"]), GET_ERROR);
        expect("unknown option", get(&["--bogus", &archived, dest]), GET_ERROR);
    }
    expect(
        "an empty directory named backup",
        pitr(unmounted.path(), &["--repo", "backup", "archive-get", &absent, dest]),
        GET_ERROR,
    );
    expect(
        "an option of another subcommand before archive-get",
        pitr(
            at_base,
            &["--repo", "backup", "--tier", "daily", "archive-get", &absent, dest],
        ),
        GET_ERROR,
    );

    let segment = c.pg_wal().join(&archived);
    let push = |args: &[&str]| pitr(at_base, &[&["--repo", "archive-get", "archive-push"], args].concat());
    expect("archive-push into archive-get", push(&[segment.to_str().unwrap()]), 0);
    expect("archive-push of a missing file", push(&["no-such-file"]), 1);
    expect("archive-push without a path", push(&[]), USAGE);
    assert!(problems.is_empty(), "exit codes:\n\n{}", problems.join("\n\n"));
}

#[test]
fn a_usage_error_of_an_archive_command_is_one_whole_line() {
    let dir = TestDir::new("cli-usage");
    let out = pitr_in(dir.path(), &["--repo", "r", "archive-get", "000000010000000000000001"]);
    out.assert_code(GET_ERROR).assert_one_line_error();
    assert_eq!(
        out.stderr_str().trim_end(),
        "pitr archive-get: usage error: the following required arguments were not provided: <DEST>; \
         usage: pitr archive-get <NAME> <DEST>"
    );
    let out = pitr_in(dir.path(), &["--repo", "r", "archive-get"]);
    out.assert_code(GET_ERROR).assert_one_line_error();
    assert!(
        out.stderr_str().contains("provided: <NAME>, <DEST>; usage: "),
        "{}",
        out.describe()
    );

    let out = pitr_in(dir.path(), &["--repo", "r", "archive-push"]);
    out.assert_code(USAGE).assert_one_line_error();
    assert_eq!(
        out.stderr_str().trim_end(),
        "pitr archive-push: usage error: the following required arguments were not provided: <PATH>; \
         usage: pitr archive-push <PATH>"
    );
    let out = pitr_in(dir.path(), &["--repo", "r", "archive-push", "--bogus", "p"]);
    out.assert_code(USAGE).assert_one_line_error();
    let err = out.stderr_str();
    assert!(err.contains("unexpected argument '--bogus' found; "), "{err}");
    assert!(err.contains("; usage: pitr archive-push [OPTIONS] <PATH>"), "{err}");
    assert!(!err.contains("For more information"), "{err}");
}

#[test]
fn values_clap_did_not_check_are_usage_errors_and_change_nothing() {
    let dir = TestDir::new("cli-values");
    let repo = dir.subdir("repo");
    let repo = repo.to_str().unwrap();
    let newdir = dir.join("new");
    let recover = |options: &[&str]| {
        let base = ["--repo", repo, "recover", "--pgdata", newdir.to_str().unwrap()];
        pitr_in(dir.path(), &[&base[..], options].concat())
    };
    let cases: Vec<(&str, CmdOutput, &str)> = vec![
        (
            "--target-time yesterday",
            recover(&["--target-time", "yesterday"]),
            "'yesterday' is not a time",
        ),
        (
            "--target-lsn",
            recover(&["--target-lsn", "0/XYZ"]),
            "'0/XYZ' is not an LSN",
        ),
        (
            "--target",
            recover(&["--target", "newest"]),
            "unknown --target 'newest'",
        ),
        (
            "--timeline",
            recover(&["--target", "latest", "--timeline", "newest"]),
            "timeline number",
        ),
        (
            "--compress",
            pitr_in(dir.path(), &["--repo", repo, "archive-push", "--compress", "lz4", "p"]),
            "unknown compression 'lz4'",
        ),
        (
            "PITR_COMPRESS",
            run(pitr_at(dir.path())
                .env("PITR_COMPRESS", "lz4")
                .args(["--repo", repo, "archive-push", "p"])),
            "unknown compression 'lz4'",
        ),
        (
            "a restore point name of 64 bytes",
            pitr_in(dir.path(), &["--repo", repo, "restore-point", &"x".repeat(64)]),
            "PostgreSQL allows at most 63",
        ),
        (
            "--dbname",
            pitr_in(
                dir.path(),
                &["--repo", repo, "check", "--dbname", "password=hunter2 bogus=1"],
            ),
            "unknown option `bogus`",
        ),
        (
            "a missing --repo",
            pitr_in(dir.path(), &["--config", "/dev/null", "list"]),
            "no repository given",
        ),
    ];
    let mut problems = Vec::new();
    for (what, out, reason) in cases {
        if out.code() != Some(USAGE) || !out.stderr_str().contains(reason) {
            problems.push(format!(
                "{what}: expected exit {USAGE} saying {reason:?}\n{}",
                out.describe()
            ));
        }
        if out.stderr_str().contains("hunter2") {
            problems.push(format!("{what}: the password is in the message\n{}", out.describe()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(!newdir.exists(), "a refused recover created {}", newdir.display());

    let out = pitr_in(dir.path(), &["--compress", "lz4", "archive-get", "a", "b"]);
    out.assert_code(GET_ERROR).assert_one_line_error();
}

#[test]
fn a_bad_config_file_is_a_usage_error_that_says_where() {
    let dir = TestDir::new("cli-config");
    let config = dir.write("pitr.toml", "repo = \"/srv/repo\"\ncompress = \"zstd\"\nbogus = 1\n");
    let config = config.to_str().unwrap();
    let out = pitr_in(dir.path(), &["--config", config, "list"]);
    out.assert_code(USAGE).assert_one_line_error();
    let err = out.stderr_str();
    assert!(
        err.contains(&format!(
            "config file {config} is invalid at line 3, column 1: unknown field `bogus`"
        )),
        "{err}"
    );
    let out = pitr_in(
        dir.path(),
        &["--config", config, "archive-get", "000000010000000000000001", "x"],
    );
    out.assert_code(GET_ERROR).assert_one_line_error();
    assert!(out.stderr_str().contains("at line 3, column 1"), "{}", out.describe());

    let config = dir.write("level.toml", "repo = \"/srv/repo\"\ncompress_level = \"high\"\n");
    let out = pitr_in(dir.path(), &["--config", config.to_str().unwrap(), "info"]);
    out.assert_code(USAGE);
    assert!(out.stderr_str().contains("at line 2, column 18"), "{}", out.describe());
    let config = dir.write("lz4.toml", "repo = \"/srv/repo\"\ncompress = \"lz4\"\n");
    let out = pitr_in(dir.path(), &["--config", config.to_str().unwrap(), "expire"]);
    out.assert_code(USAGE);
    assert!(
        out.stderr_str().contains("unknown compression 'lz4'"),
        "{}",
        out.describe()
    );
    let out = run(pitr_at(dir.path()).env("PITR_CONFIG", "/no/such/pitr.toml").arg("info"));
    out.assert_code(USAGE);
    assert!(
        out.stderr_str()
            .contains("could not read config file /no/such/pitr.toml"),
        "{}",
        out.describe()
    );
}

#[test]
fn global_options_are_accepted_only_where_they_apply() {
    let dir = TestDir::new("cli-apply");
    let repo = dir.subdir("repo");
    let repo = repo.to_str().unwrap();
    for args in [
        &["--repo", repo, "demo"][..],
        &["demo", "--config", "/dev/null"],
        &["--compress", "zstd", "demo"],
        &["demo", "--compress", "zstd"],
        &["--repo", repo, "--compress", "zstd", "list"],
        &["--repo", repo, "--spool", "/tmp", "info"],
        &["--repo", repo, "expire", "--compress-level", "3"],
    ] {
        let out = pitr_in(dir.path(), args);
        out.assert_code(USAGE);
        let err = out.stderr_str();
        assert!(
            err.contains("does not apply to `pitr ") || err.contains("unexpected argument '--"),
            "{}",
            out.describe()
        );
    }
    // archive-get takes (and ignores) --compress: a restore_command copied from the
    // archive_command must not abort a recovery.
    let out = pitr_in(
        dir.path(),
        &[
            "--repo",
            repo,
            "--compress",
            "gzip",
            "archive-get",
            "00000002.history",
            "x",
        ],
    );
    assert_ne!(out.code(), Some(USAGE), "{}", out.describe());
    // An environment variable is read only where its option applies: no error elsewhere.
    let out = run(pitr_at(dir.path())
        .env("PITR_COMPRESS", "lz4")
        .env("PITR_COMPRESS_LEVEL", "high")
        .env("PITR_SPOOL", "/no/such/spool")
        .args(["--repo", repo, "--config", "/dev/null", "list"]));
    out.assert_success();

    let help = |args: &[&str]| {
        let out = pitr_in(dir.path(), args);
        out.assert_success();
        out.stdout_str()
    };
    let global_options = |text: &str| text.split("Global options:").nth(1).map(str::to_string);
    let list = global_options(&help(&["list", "--help"])).expect("list --help has a Global options heading");
    assert!(list.contains("--repo") && list.contains("--config"), "{list}");
    assert!(!list.contains("--compress") && !list.contains("--spool"), "{list}");
    let push = global_options(&help(&["archive-push", "--help"])).expect("a Global options heading");
    for option in [
        "--repo",
        "--config",
        "--compress",
        "--compress-level",
        "--spool",
        "PITR_COMPRESS",
    ] {
        assert!(push.contains(option), "archive-push --help lacks {option}: {push}");
    }
    let demo = help(&["demo", "--help"]);
    assert!(!demo.contains("--repo") && !demo.contains("--compress"), "{demo}");
    let top = global_options(&help(&["--help"])).expect("pitr --help has a Global options heading");
    assert!(top.contains("--repo") && top.contains("--spool"), "{top}");
}
