//! The status page in a real browser: a cluster with archived WAL, an hourly and a daily backup,
//! a restore point named like markup, and a gap; the page as the daemon serves it at `/` and as
//! `pitr info --html` writes it, loaded by headless Chromium (Debian package `chromium`), its
//! DOM as Chromium serialised it checked, and a screenshot taken.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A restore point name that would run a script if the page did not escape it.
const MARKUP_NAME: &str = "<script>alert(1)</script>";

/// Where Debian's package `chromium` installs the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long Chromium may take for one page.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);

/// The browser, or a failure that says how to install it.
fn chromium() -> PathBuf {
    let path = PathBuf::from(CHROMIUM);
    assert!(
        path.is_file(),
        "{CHROMIUM} not found: install Debian package chromium (apt-get install -y chromium)"
    );
    path
}

/// Headless Chromium on `url` with a fresh profile under `scratch`, with `args`; what it printed.
fn browse(scratch: &Path, url: &str, args: &[String]) -> CmdOutput {
    let profile = tempfile::tempdir_in(scratch).expect("a profile directory");
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url);
    let out = run_with_timeout(&mut command, BROWSER_TIMEOUT);
    assert!(out.success(), "chromium failed:\n{}", out.describe());
    out
}

/// The DOM of `url` as Chromium serialised it after loading.
fn dump_dom(scratch: &Path, url: &str) -> String {
    browse(scratch, url, &["--dump-dom".to_string()]).stdout_str()
}

/// A screenshot of `url` at 1280×900 into `png`.
fn screenshot(scratch: &Path, url: &str, png: &Path) {
    browse(
        scratch,
        url,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,900".to_string(),
        ],
    );
}

/// The page's DOM holds the picture and the panels with what the repository holds.
fn check_dom(dom: &str, gap_segment: &str) {
    let count = |needle: &str| dom.matches(needle).count();
    assert_eq!(count("<svg id=\"timeline\""), 1, "the picture:\n{dom}");
    assert_eq!(
        count("<g class=\"backup backup-hourly\" data-tier=\"hourly\""),
        1,
        "one element for the hourly backup:\n{dom}"
    );
    assert_eq!(
        count("<g class=\"backup backup-daily\" data-tier=\"daily\""),
        1,
        "one element for the daily backup:\n{dom}"
    );
    assert_eq!(count("<g class=\"backup "), 2, "two backups:\n{dom}");
    assert!(
        dom.contains(&format!("<rect class=\"gap\" data-first=\"{gap_segment}\"")),
        "the gap in red:\n{dom}"
    );
    assert!(dom.contains("<rect class=\"window\""), "the recoverable window:\n{dom}");
    assert_eq!(
        count("<g class=\"restore-point\" data-name="),
        1,
        "the restore point:\n{dom}"
    );
    assert!(
        dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "its name, as text:\n{dom}"
    );
    assert!(!dom.to_lowercase().contains("<script"), "no script element:\n{dom}");
    let alerts = &dom[dom
        .find("<ul id=\"alerts\">")
        .unwrap_or_else(|| panic!("no alert list:\n{dom}"))..];
    assert!(
        alerts.contains("data-alert=\"WalArchiveGap\""),
        "the gap's alert:\n{alerts}"
    );
    assert!(dom.contains("You can recover to any moment between"), "{dom}");
    assert!(
        dom.contains("verify all: critical"),
        "the last verification, from verify's log:\n{dom}"
    );
    assert!(dom.contains("<meta http-equiv=\"refresh\" content=\"60\">"), "{dom}");
}

/// The screenshot is a 1280×900 PNG with more in it than one colour would compress to.
fn check_screenshot(png: &Path) {
    let bytes = fs::read(png).unwrap_or_else(|e| panic!("no screenshot {}: {e}", png.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let dimension = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!((dimension(16), dimension(20)), (1280, 900), "its IHDR");
    // A blank 1280×900 page compresses to a few kB; text, a picture and tables do not.
    assert!(
        bytes.len() > 40_000,
        "{} is only {} bytes: a blank page?",
        png.display(),
        bytes.len()
    );
}

/// The raw answer to `GET /`: headers and body.
fn get_root(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn the_status_page_shows_backups_by_tier_the_restore_point_and_the_gap_in_a_browser() {
    chromium();
    let c = Cluster::start(ClusterOptions::default());
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) g");
    backup_json(&c, &["--tier", "hourly"]);
    c.switch_and_archive();
    c.pitr_ok(&["restore-point", MARKUP_NAME]);
    backup_json(&c, &["--tier", "daily"]);
    c.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let segments: Vec<String> = (0..3).map(|_| c.switch_and_archive()).collect();
    fs::remove_file(stored_path(c.repo_dir(), &segments[1])).unwrap();

    let port = free_port();
    let verify_log = c.dir().join("verify.log");
    let config = c.test_dir().write(
        "status.toml",
        format!(
            "repo = \"{}\"\nlisten = \"127.0.0.1:{port}\"\n\n[schedule]\nhourly = \"off\"\ndaily = \"off\"\n\
             weekly = \"off\"\nverify = \"off\"\nnames = \"off\"\ndrill = \"off\"\n\n[verify]\nlog_file = \"{}\"\n",
            c.repo().display(),
            verify_log.display()
        ),
    );
    give_to_server_user(&config);
    let with_config = |args: &[&str]| {
        let mut command = c.pitr_cmd();
        c.libpq_env(&mut command).arg("--config").arg(&config).args(args);
        command
    };
    run(&mut with_config(&["verify"])).assert_code(2);

    // The page as a file, for a host without the daemon.
    let file = c.dir().join("status.html");
    run_ok(&mut with_config(&["info", "--html", file.to_str().unwrap()]));
    let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the page shows backup metadata: private");

    // The page as the daemon serves it, first: its Content-Security-Policy would keep a script
    // that slipped through from running (and an alert box from holding the browser).
    let scratch = c.test_dir().subdir("browser");
    let mut daemon_command = with_config(&["daemon", "--pgdata"]);
    daemon_command.arg(c.data_dir());
    let mut daemon = spawn(&mut daemon_command);
    let served = poll(Duration::from_secs(60), || {
        http_get(port, "/").filter(|body| body.contains("<svg id=\"timeline\""))
    });
    kill_with_children_after(&mut daemon, || {
        let answer = get_root(port);
        assert!(served.is_some(), "the daemon does not serve the page: {answer}");
        let head = answer.split("\r\n\r\n").next().unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("Content-Type: text/html; charset=utf-8"), "{head}");
        assert!(
            head.contains("Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; img-src data:"),
            "{head}"
        );
        let url = format!("http://127.0.0.1:{port}/");
        check_dom(&dump_dom(&scratch, &url), &segments[1]);
        // Kept after the test, for a look: cargo's directory for integration tests' data.
        let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status_page.png");
        screenshot(&scratch, &url, &png);
        check_screenshot(&png);
        eprintln!("screenshot of the status page: {}", png.display());
    });

    let file_url = format!("file://{}", file.display());
    check_dom(&dump_dom(&scratch, &file_url), &segments[1]);
}

/// Runs `check`, then kills the daemon whatever `check` did.
fn kill_with_children_after(daemon: &mut std::process::Child, check: impl FnOnce()) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    kill_with_children(daemon);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
