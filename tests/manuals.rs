//! What the binary generates from its own command-line definitions: `pitr completions
//! bash|zsh|fish` (scripts that name the subcommands and their options, and that the shell
//! accepts), the hidden `pitr man --out DIR` (pitr.1 and a page per subcommand, nested ones too,
//! that `man` renders with each subcommand's options), and `pitr --version`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// Exit code of bad arguments.
const USAGE: i32 = 2;

fn pitr(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(pitr_binary());
    for var in PITR_ENV {
        cmd.env_remove(var);
    }
    run(cmd.args(args))
}

/// Panics, saying what to install, unless `program` runs: these tests never skip.
fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "`{program}` is missing: install it (apt-get install {package}); these tests never skip"
    );
}

#[test]
fn each_shells_completion_names_the_subcommands_and_their_options() {
    for shell in ["bash", "zsh", "fish"] {
        let out = pitr(&["completions", shell]);
        out.assert_success();
        let script = out.stdout_str();
        // Options without their dashes: fish writes `-l target-time`.
        for word in [
            "recover",
            "archive-push",
            "wal",
            "events",
            "target-time",
            "pgdata",
            "repo",
        ] {
            assert!(
                script.contains(word),
                "the {shell} completion lacks {word}:\n{}",
                tail(&script, 20)
            );
        }
        // The hidden subcommands are not offered (`prefetched` is in the help of --spool).
        for hidden in ["prefetch", "man"] {
            let offered = script
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .any(|word| word == hidden);
            assert!(!offered, "the {shell} completion offers the hidden {hidden}:\n{script}");
        }
    }
}

#[test]
fn bash_accepts_the_bash_completion() {
    require("bash", "bash");
    let dir = TestDir::new("completions");
    let out = pitr(&["completions", "bash"]);
    out.assert_success();
    let script = dir.write("pitr.bash", &out.stdout);
    run(Command::new("bash").arg("-n").arg(&script)).assert_success();
    // Sourced, it registers itself for `pitr`.
    let registered = run(Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p pitr", script.display())));
    registered.assert_success();
    assert!(registered.stdout_str().contains("pitr"), "{}", registered.describe());
}

#[test]
fn an_unknown_shell_is_a_usage_error_that_lists_the_shells() {
    let out = pitr(&["completions", "tcsh"]);
    out.assert_code(USAGE);
    let err = out.stderr_str();
    assert!(
        ["bash", "zsh", "fish"].iter().all(|shell| err.contains(shell)),
        "{}",
        out.describe()
    );
    assert!(out.stdout.is_empty(), "{}", out.describe());
}

#[test]
fn man_pages_are_written_for_pitr_and_each_visible_subcommand() {
    let dir = TestDir::new("man");
    let out_dir = dir.subdir("man1");
    pitr(&["man", "--out", out_dir.to_str().unwrap()])
        .assert_silent()
        .assert_success();
    for page in [
        "pitr.1",
        "pitr-recover.1",
        "pitr-archive-push.1",
        "pitr-daemon.1",
        "pitr-wal-events.1",
    ] {
        let path = out_dir.join(page);
        let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644, "{page}: readable by all");
    }
    for hidden in ["pitr-prefetch.1", "pitr-man.1", "pitr-help.1"] {
        assert!(!out_dir.join(hidden).exists(), "{hidden} must not be written");
    }
    // Written again, each page is replaced.
    pitr(&["man", "--out", out_dir.to_str().unwrap()]).assert_success();
}

#[test]
fn man_renders_each_subcommands_options() {
    require("man", "man-db");
    let dir = TestDir::new("man-render");
    let out_dir = dir.subdir("man1");
    pitr(&["man", "--out", out_dir.to_str().unwrap()]).assert_success();
    let recover = rendered(&out_dir.join("pitr-recover.1"));
    for option in ["--target-time", "--target-name", "--pgdata", "--dry-run", "--repo"] {
        assert!(recover.contains(option), "pitr-recover(1) lacks {option}:\n{recover}");
    }
    let push = rendered(&out_dir.join("pitr-archive-push.1"));
    assert!(
        push.contains("--compress"),
        "pitr-archive-push(1) lacks --compress:\n{push}"
    );
    let pitr_page = rendered(&out_dir.join("pitr.1"));
    for subcommand in ["archive-push", "recover", "completions", "pitr-recover(1)"] {
        assert!(
            pitr_page.contains(subcommand),
            "pitr(1) lacks {subcommand}:\n{pitr_page}"
        );
    }
}

/// `man -l FILE` as plain text: each option renders as ASCII, as typed.
fn rendered(page: &Path) -> String {
    let out = run(Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "80")
        .env("MAN_KEEP_FORMATTING", "0")
        .env("LC_ALL", "C.UTF-8")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat"));
    out.assert_success();
    assert!(out.stderr.is_empty(), "man warned:\n{}", out.describe());
    // Bold and underline as overstrikes (`c\bc`) when a terminal is not assumed.
    let text = out.stdout_str();
    let mut plain = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain
}

#[test]
fn man_pages_into_a_missing_directory_fail_saying_which() {
    let dir = TestDir::new("man-missing");
    let missing = dir.join("nowhere");
    let out = pitr(&["man", "--out", missing.to_str().unwrap()]);
    out.assert_code(1).assert_one_line_error();
    assert!(
        out.stderr_str().contains(missing.to_str().unwrap()),
        "{}",
        out.describe()
    );
    assert!(!missing.exists());
}

#[test]
fn help_lists_completions_but_not_the_man_generator() {
    let help = pitr(&["--help"]);
    help.assert_success();
    let text = help.stdout_str();
    assert!(text.contains("completions"), "{text}");
    assert!(!text.lines().any(|l| l.trim_start().starts_with("man ")), "{text}");
}

#[test]
fn version_prints_the_package_version() {
    let out = pitr(&["--version"]);
    out.assert_success();
    assert_eq!(out.stdout_str().trim(), format!("pitr {}", env!("CARGO_PKG_VERSION")));
}
