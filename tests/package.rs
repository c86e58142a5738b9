//! What the .deb installs besides the binary, checked from the source tree (`.ci/check-package`
//! builds and installs the package itself): the systemd unit passes `systemd-analyze verify`, with
//! its man pages found, and a broken unit does not; the default config is comments only, which
//! pitr loads as no settings at all.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The unit as the package installs it.
fn packaged_unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/pitr.service");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes `unit` as `pitr.service` in a new directory of `dir`, running this build's binary
/// instead of /usr/bin/pitr (which the package installs), and returns its path.
fn unit_file(dir: &TestDir, name: &str, unit: &str) -> PathBuf {
    let binary = pitr_binary();
    let unit = unit.replace("/usr/bin/pitr ", &format!("{} ", binary.display()));
    assert_ne!(unit, packaged_unit(), "the unit runs /usr/bin/pitr");
    dir.write(format!("{name}/pitr.service"), unit)
}

/// `systemd-analyze verify` of `unit`, with the man pages this build generates on MANPATH (the
/// unit's Documentation= names them): `Err` with what it said when it failed or warned about
/// anything, since it reports unknown keys and bad values as warnings with exit 0.
fn verify(unit: &Path, man_dir: &Path) -> Result<(), String> {
    assert!(
        Command::new("sh")
            .args(["-c", "command -v systemd-analyze && command -v man"])
            .output()
            .is_ok_and(|out| out.status.success()),
        "systemd-analyze and man are missing: apt-get install systemd man-db (these tests never skip)"
    );
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .env("MANPATH", man_dir)
        .env("SYSTEMD_LOG_COLOR", "0"));
    if out.success() && out.stdout.is_empty() && out.stderr.is_empty() {
        Ok(())
    } else {
        Err(out.describe())
    }
}

/// This build's man pages, in `<dir>/man/man1` (returns `<dir>/man`).
fn man_pages(dir: &TestDir) -> PathBuf {
    let man1 = dir.subdir("man/man1");
    run(Command::new(pitr_binary()).arg("man").arg("--out").arg(&man1)).assert_success();
    dir.join("man")
}

#[test]
fn the_packaged_unit_passes_systemd_analyze_verify() {
    let dir = TestDir::new("unit");
    let man = man_pages(&dir);
    let unit = unit_file(&dir, "good", &packaged_unit());
    if let Err(said) = verify(&unit, &man) {
        panic!("the packaged unit does not verify:\n{said}");
    }
}

#[test]
fn a_broken_unit_fails_the_verification() {
    let dir = TestDir::new("unit-broken");
    let man = man_pages(&dir);
    let good = packaged_unit();
    assert!(good.contains("ProtectSystem=strict\n") && good.contains("Documentation=man:pitr-daemon(1)"));
    let broken = [
        (
            "unknown-key",
            good.replace("ProtectSystem=strict", "ProtectSystm=strict"),
        ),
        ("bad-value", good.replace("ProtectSystem=strict", "ProtectSystem=stric")),
        ("no-section", good.replace("[Service]", "[Servic]")),
        (
            "missing-man-page",
            good.replace("man:pitr-daemon(1)", "man:pitr-deamon(1)"),
        ),
    ];
    for (name, unit) in broken {
        let path = unit_file(&dir, name, &unit);
        assert!(
            verify(&path, &man).is_err(),
            "{name}: the broken unit passed the verification"
        );
    }
}

#[test]
fn the_unit_runs_the_daemon_as_postgres_with_its_hardening() {
    let unit = packaged_unit();
    for line in [
        "ExecStart=/usr/bin/pitr daemon",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=postgres",
        "Group=postgres",
        "Restart=on-failure",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        "PrivateDevices=true",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "MemoryDenyWriteExecute=true",
        "SystemCallArchitectures=native",
        "ReadWritePaths=-/var/lib/postgresql -/var/lib/pitr -/var/backups/pitr -/var/log/pitr -/run/postgresql",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks `{line}`");
    }
}

#[test]
fn the_default_config_is_comments_only_and_loads_as_no_settings() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/pitr.toml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        assert!(
            line.is_empty() || line.starts_with('#'),
            "line {}: not a comment: {line}",
            n + 1
        );
    }
    // Loaded, it names no repository: pitr says so, where a bad file would be a usage error.
    let out = run(Command::new(pitr_binary())
        .args(["list", "--config"])
        .arg(&path)
        .env_remove("PITR_REPO"));
    out.assert_code(2);
    assert!(out.stderr_str().contains("no repository"), "{}", out.describe());
    // Uncommented, its lines are keys pitr knows (a typo there would mislead every user).
    let dir = TestDir::new("config");
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.contains(" = ") || l.starts_with('['))
        .map(|l| format!("{l}\n"))
        .collect();
    let config = dir.write("pitr.toml", uncommented);
    let repo = dir.subdir("repo");
    let out = run(Command::new(pitr_binary())
        .args(["list", "--config"])
        .arg(&config)
        .arg("--repo")
        .arg(&repo));
    assert!(
        !out.stderr_str().contains("unknown field"),
        "the template names a key pitr does not know:\n{}",
        out.describe()
    );
}
