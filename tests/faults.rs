//! The permanent adversarial suite: every attack of the outside review (issue 12) and every class
//! of fault, against real PostgreSQL clusters and the real `pitr` binary, tallied in one table:
//!
//! ```text
//! category | faults tried | WAL lost | corruption undetected | wrong promotions | wrong exit codes | holes open
//! ```
//!
//! Categories: kill -9 at each stage of archive-push, backup, expire and recover (the crash points
//! of `pitr::crash_point`); a full, unwritable or read-only repository (tmpfs mounts); concurrent
//! pushes of one segment; bit flips in every kind of repository file and in the spool; a hostile
//! local user (`nobody`) and a repository owner attacking a root-run pitr; path traversal; and
//! recoveries that must not promote short of their target. docs/reliability.md explains each
//! method and what is not covered.
//!
//! A scenario counts each fault it injects ("faults tried") and each harm it sees. The suite
//! prints the table and fails, naming every harm, unless every column but "faults tried" is 0; a
//! scenario that cannot run (a cluster that does not start, a crash point never reached) fails it
//! too. It needs root (tmpfs mounts, `runuser -u nobody`, a root-run pitr), as in CI.
//!
//! `cargo test --test faults` runs it on two threads; `cargo test --test faults -- <word>` runs
//! the scenarios whose category or name contains `<word>`. Bit flips are seeded:
//! `PITR_FAULTS_SEED=<n>` replays another sequence (the table says which seed ran).

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use pitr::backup::manifest::{DirEntry, FileEntry, Manifest, Tablespace};

// ---------------------------------------------------------------------------------------------
// The ledger: categories, harms, scenarios, the table
// ---------------------------------------------------------------------------------------------

/// Scenarios run at once (the machine this suite is sized for has two cores).
const THREADS: usize = 2;

/// The bit-flip seed unless `PITR_FAULTS_SEED` names another.
const DEFAULT_SEED: u64 = 0x5EED_0012_F11B_2026;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Kill,
    Space,
    Concurrency,
    BitFlips,
    HostileUser,
    Traversal,
    Promotion,
}

impl Category {
    const ALL: [Category; 7] = [
        Category::Kill,
        Category::Space,
        Category::Concurrency,
        Category::BitFlips,
        Category::HostileUser,
        Category::Traversal,
        Category::Promotion,
    ];

    fn label(self) -> &'static str {
        match self {
            Category::Kill => "kill -9",
            Category::Space => "ENOSPC, EACCES, read-only",
            Category::Concurrency => "concurrent pushes",
            Category::BitFlips => "bit flips, lost files",
            Category::HostileUser => "hostile user",
            Category::Traversal => "path traversal",
            Category::Promotion => "wrong promotions",
        }
    }
}

/// What a fault may do that it must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Harm {
    /// A WAL file pitr said was archived (exit 0) does not come back intact.
    WalLost,
    /// Damage read as sound: restored, listed or verified as good.
    Undetected,
    /// A recovery promoted short of its target.
    WrongPromotion,
    /// A command's exit code says something else than what happened, or a command that must
    /// succeed after the fault fails.
    WrongExit,
    /// An attack succeeded.
    HoleOpen,
}

impl Harm {
    const ALL: [Harm; 5] = [
        Harm::WalLost,
        Harm::Undetected,
        Harm::WrongPromotion,
        Harm::WrongExit,
        Harm::HoleOpen,
    ];

    fn heading(self) -> &'static str {
        match self {
            Harm::WalLost => "WAL lost",
            Harm::Undetected => "corruption undetected",
            Harm::WrongPromotion => "wrong promotions",
            Harm::WrongExit => "wrong exit codes",
            Harm::HoleOpen => "holes open",
        }
    }
}

/// What one scenario tried and saw.
#[derive(Default)]
struct Faults {
    tried: u64,
    /// Bit flips that changed no stored content (counted in `tried`, judged by nothing).
    immaterial: u64,
    harms: Vec<(Harm, String)>,
}

impl Faults {
    /// Counts `n` injected faults.
    fn tried(&mut self, n: u64) {
        self.tried += n;
    }

    /// Records a harm.
    fn harm(&mut self, harm: Harm, what: String) {
        eprintln!("faults: HARM ({}): {what}", harm.heading());
        self.harms.push((harm, what));
    }

    /// Records `harm` unless `ok`; returns `ok`.
    fn expect(&mut self, ok: bool, harm: Harm, what: impl FnOnce() -> String) -> bool {
        if !ok {
            self.harm(harm, what());
        }
        ok
    }
}

struct Scenario {
    category: Category,
    name: &'static str,
    run: fn(&mut Faults),
}

struct Outcome {
    category: Category,
    name: &'static str,
    faults: Faults,
    /// Why the scenario could not finish.
    panic: Option<String>,
    seconds: f64,
}

/// Every scenario, the longest first so that two threads finish together.
fn scenarios() -> Vec<Scenario> {
    let s = |category, name, run| Scenario { category, name, run };
    vec![
        s(
            Category::BitFlips,
            "backup files, labels, manifests, restore points",
            flips_in_backups,
        ),
        s(
            Category::Promotion,
            "recoveries over corrupt, missing or unmounted WAL",
            promotions,
        ),
        s(Category::Kill, "backup killed at each stage", kill_backup),
        s(
            Category::Kill,
            "recover killed mid-restore and after restoring",
            kill_recover,
        ),
        s(Category::Kill, "expire killed at each stage", kill_expire),
        s(
            Category::Kill,
            "archive-push killed at each stage, retried by PostgreSQL",
            kill_archive_push,
        ),
        s(
            Category::HostileUser,
            "repository owner tampers a manifest for root",
            owner_tampers_manifest,
        ),
        s(
            Category::HostileUser,
            "repository owner plants links for root",
            owner_plants_links,
        ),
        s(
            Category::Space,
            "archive into a full tmpfs, then a read-only one",
            full_then_read_only,
        ),
        s(
            Category::Space,
            "backup running out of space mid-copy",
            backup_out_of_space,
        ),
        s(
            Category::HostileUser,
            "nobody against the recovered copy's socket",
            nobody_against_private_socket,
        ),
        s(
            Category::HostileUser,
            "nobody against the repository, locks and spool",
            nobody_against_files,
        ),
        s(
            Category::HostileUser,
            "nobody against the daemon's listener",
            nobody_against_daemon,
        ),
        s(Category::BitFlips, "WAL, history files, repo.json", flips_in_wal),
        s(
            Category::BitFlips,
            "a damaged prefetched copy in the spool",
            flips_in_spool,
        ),
        s(Category::BitFlips, "files lost from the repository", lost_files),
        s(
            Category::Traversal,
            "%f, %p, backup ids, check-integrity paths",
            traversal,
        ),
        s(
            Category::Space,
            "repository the postgres user cannot read or write",
            unreadable_repository,
        ),
        s(
            Category::Concurrency,
            "8 concurrent pushes of one segment",
            concurrent_pushes,
        ),
    ]
}

fn main() {
    assert!(
        running_as_root(),
        "the fault suite needs root: it mounts tmpfs file systems, acts as `nobody` and attacks a \
         root-run pitr (CI runs as root); run `cargo test --test faults` as root"
    );
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let chosen: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| {
            filters.is_empty()
                || filters
                    .iter()
                    .any(|f| s.name.contains(f.as_str()) || s.category.label().contains(f.as_str()))
        })
        .collect();
    let started = Instant::now();
    let outcomes = run_all(chosen);
    println!("\n{}", table(&outcomes));
    println!(
        "bit flips that changed no stored content (the object still decodes to the same bytes), \
         not judged: {}",
        outcomes.iter().map(|o| o.faults.immaterial).sum::<u64>()
    );
    println!(
        "seed {:#x}; {} scenarios in {:.0} s",
        seed(),
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    let failures = failures(&outcomes);
    if !failures.is_empty() {
        panic!("{} failure(s):\n{}", failures.len(), failures.join("\n"));
    }
}

/// Runs the scenarios on [`THREADS`] threads.
fn run_all(scenarios: Vec<Scenario>) -> Vec<Outcome> {
    let queue = Mutex::new(scenarios.into_iter());
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| loop {
                let next = queue.lock().expect("queue").next();
                let Some(scenario) = next else { break };
                let outcome = run_one(scenario);
                outcomes.lock().expect("outcomes").push(outcome);
            });
        }
    });
    outcomes.into_inner().expect("outcomes")
}

fn run_one(scenario: Scenario) -> Outcome {
    eprintln!("faults: start [{}] {}", scenario.category.label(), scenario.name);
    let started = Instant::now();
    let mut faults = Faults::default();
    let panic = catch_unwind(AssertUnwindSafe(|| (scenario.run)(&mut faults)))
        .err()
        .map(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())
        });
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "faults: done  [{}] {}: {} faults, {} harms{} in {seconds:.0} s",
        scenario.category.label(),
        scenario.name,
        faults.tried,
        faults.harms.len(),
        if panic.is_some() { ", DID NOT FINISH" } else { "" }
    );
    Outcome {
        category: scenario.category,
        name: scenario.name,
        faults,
        panic,
        seconds,
    }
}

/// The table: one row per category, and the total; then each scenario's time.
fn table(outcomes: &[Outcome]) -> String {
    let headings: Vec<&str> = std::iter::once("faults tried")
        .chain(Harm::ALL.iter().map(|h| h.heading()))
        .collect();
    let mut rows: Vec<(&str, Vec<u64>)> = Category::ALL
        .iter()
        .map(|c| (c.label(), counts(outcomes, |o| o.category == *c)))
        .collect();
    rows.push(("total", counts(outcomes, |_| true)));
    let first = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut text = format!("{:<first$}", "category");
    for h in &headings {
        let _ = write!(text, " | {h}");
    }
    for (label, values) in rows {
        let _ = write!(text, "\n{label:<first$}");
        for (h, v) in headings.iter().zip(values) {
            let _ = write!(text, " | {v:>width$}", width = h.len());
        }
    }
    text + "\n\n" + &timings(outcomes)
}

/// Faults tried, then the count of each harm, over the outcomes `of` chooses.
fn counts(outcomes: &[Outcome], of: impl Fn(&Outcome) -> bool) -> Vec<u64> {
    let chosen: Vec<&Outcome> = outcomes.iter().filter(|o| of(o)).collect();
    let harms = Harm::ALL.iter().map(|h| {
        chosen
            .iter()
            .map(|o| o.faults.harms.iter().filter(|(harm, _)| harm == h).count() as u64)
            .sum()
    });
    std::iter::once(chosen.iter().map(|o| o.faults.tried).sum())
        .chain(harms)
        .collect()
}

/// Each scenario's time and faults, the longest first.
fn timings(outcomes: &[Outcome]) -> String {
    let mut sorted: Vec<&Outcome> = outcomes.iter().collect();
    sorted.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let mut text = String::from("scenarios:");
    for o in sorted {
        let _ = write!(
            text,
            "\n  {:>4.0} s  {:>4} faults  [{}] {}",
            o.seconds,
            o.faults.tried,
            o.category.label(),
            o.name
        );
    }
    text
}

/// Every harm and every scenario that did not finish, one line each.
fn failures(outcomes: &[Outcome]) -> Vec<String> {
    let mut lines = Vec::new();
    for o in outcomes {
        for (harm, what) in &o.faults.harms {
            lines.push(format!(
                "[{} / {}] {}: {what}",
                o.category.label(),
                o.name,
                harm.heading()
            ));
        }
        if let Some(panic) = &o.panic {
            lines.push(format!("[{} / {}] did not finish: {panic}", o.category.label(), o.name));
        }
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// The bit-flip seed.
fn seed() -> u64 {
    let Ok(text) = std::env::var("PITR_FAULTS_SEED") else {
        return DEFAULT_SEED;
    };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("PITR_FAULTS_SEED={text} is not a number (decimal, or hex with 0x)"))
}

/// xorshift64: reproducible offsets without another crate.
struct Rng(u64);

impl Rng {
    fn new(stream: u64) -> Rng {
        Rng((seed() ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Flips bit `bit` of `path`, keeping its owner and mode.
fn flip_bit(path: &Path, bit: u64) {
    let mut bytes = read(path);
    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
    rewrite_keeping_mode(path, &bytes);
}

/// A postgresql.conf string literal.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `<prefix><pitr> --repo <repo> archive-push %p` for `c`.
fn archive_command(c: &Cluster, prefix: &str) -> String {
    format!(
        "{prefix}{} --repo {} archive-push %p",
        c.pitr_bin().display(),
        c.repo().display()
    )
}

/// Sets `c`'s archive_command to [`archive_command`] with `prefix`, then `suffix`, and reloads.
fn set_archive_command(c: &mut Cluster, prefix: &str, suffix: &str) {
    let command = archive_command(c, prefix) + suffix;
    c.set("archive_command", &quote(&command));
    c.reload();
}

/// `CREATE TABLE t` with ids 1..=n.
fn create_rows(c: &Cluster, n: u32) {
    c.psql(&format!(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, {n})"
    ));
}

/// Inserts ids from..=to into t.
fn insert_rows(c: &Cluster, from: u32, to: u32) {
    c.psql(&format!("INSERT INTO t SELECT generate_series({from}, {to})"));
}

/// A cluster with 1 MiB segments archiving into its own repository.
fn small_cluster() -> Cluster {
    Cluster::start(ClusterOptions::default().wal_segsize_mb(1))
}

/// Switches WAL, waits until the segment is archived; its name and bytes (from pg_wal).
fn archived_segment(c: &Cluster) -> (String, Vec<u8>) {
    let (name, bytes) = c.capture_segment();
    c.wait_archived(&name);
    (name, bytes)
}

/// `archive-get <name> <fresh file>` from `repo` (as the server user, outside any data
/// directory); the output and the restored bytes.
fn get(c: &Cluster, repo: &Path, name: &str) -> (CmdOutput, Option<Vec<u8>>) {
    let dest = c.test_dir().subdir("got").join("restored");
    let _ = fs::remove_file(&dest);
    let out = c.pitr_with_repo(repo, &["archive-get", name, dest.to_str().expect("UTF-8")]);
    let bytes = fs::read(&dest).ok();
    let _ = fs::remove_file(&dest);
    (out, bytes)
}

/// Records WAL lost unless `name` comes back from `repo` as exactly `bytes`.
fn expect_round_trip(f: &mut Faults, c: &Cluster, repo: &Path, (name, bytes): &(String, Vec<u8>), when: &str) -> bool {
    let (out, got) = get(c, repo, name);
    f.expect(out.success() && got.as_deref() == Some(bytes), Harm::WalLost, || {
        format!(
            "{when}: archived {name} does not come back intact (archive-get exit {:?}, {}): {}",
            out.code(),
            match &got {
                Some(g) if g != bytes => "different bytes",
                Some(_) => "same bytes",
                None => "nothing written",
            },
            out.stderr_str().trim()
        )
    })
}

/// `pitr verify --log-file none` of `repo`, connected to `c` (so the WAL is judged against the
/// right server).
fn verify(c: &Cluster, repo: &Path) -> CmdOutput {
    c.pitr_connected(repo, &["verify", "--log-file", "none"])
}

/// Records a wrong exit code unless `verify` passes.
fn expect_verify_passes(f: &mut Faults, c: &Cluster, when: &str) {
    let out = verify(c, c.repo());
    f.expect(out.code() == Some(0), Harm::WrongExit, || {
        format!(
            "{when}: verify exits {:?}, expected 0:\n{}",
            out.code(),
            out.stdout_str().trim()
        )
    });
}

/// The backup directories in `<repo>/hourly/` (read as root).
fn backup_dirs(repo: &Path) -> BTreeSet<String> {
    fs::read_dir(repo.join("hourly"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The ids `pitr list --json` shows, or the failed output.
fn listed(c: &Cluster) -> Result<BTreeSet<String>, CmdOutput> {
    let out = c.pitr(&["list", "--json"]);
    if !out.success() {
        return Err(out);
    }
    Ok(parse_json(&out)
        .as_array()
        .expect("list --json is an array")
        .iter()
        .map(|b| json_str(b, "id").to_string())
        .collect())
}

/// The incomplete backups a `backup --json` run deleted (`backup.cleaned_up`).
fn cleaned_up(out: &CmdOutput) -> Vec<String> {
    parse_json(out)["backup"]["cleaned_up"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// `pitr backup --fast <args>` connected to `c`, with `PITR_CRASH_AT=<crash>` when given.
fn backup_run(c: &Cluster, crash: Option<&str>, args: &[&str]) -> CmdOutput {
    let mut cmd = c.pitr_connected_cmd(c.repo());
    if let Some(point) = crash {
        cmd.env("PITR_CRASH_AT", point);
    }
    run(cmd.args(["backup", "--fast"]).args(args))
}

/// The id of a backup taken with [`backup_json`].
fn backup_id(c: &Cluster, extra: &[&str]) -> String {
    json_str(&backup_json(c, extra)["backup"], "id").to_string()
}

/// True when `key` occurs in the output as a whole name: not followed by a character that would
/// make it a longer name (`backup.manifest` is not named by `backup.manifest.copy`, a segment is
/// named by a range `<segment>..<segment>`).
fn names(out: &CmdOutput, key: &str) -> bool {
    let all = format!("{}\n{}", out.stdout_str(), out.stderr_str());
    all.match_indices(key).any(|(at, _)| {
        let mut after = all[at + key.len()..].chars();
        match (after.next(), after.next()) {
            (Some('.'), Some('.')) => true,
            (Some(c), _) => !(c.is_alphanumeric() || c == '.' || c == '_'),
            (None, _) => true,
        }
    })
}

/// Every file below `dir` (not following links), as paths.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = fs::symlink_metadata(entry.path()).expect("lstat");
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// Every entry below `dir` with a set-user-id or set-group-id bit.
fn set_id_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.mode() & 0o6000 != 0 {
                out.push(entry.path());
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out
}

/// The segment names from `first` to `last` (same timeline).
fn segments_between(first: &str, last: &str, seg_size: u64) -> Vec<String> {
    let mut names = vec![first.to_string()];
    while names.last().map(String::as_str) != Some(last) {
        let next = later_segment_name(names.last().expect("one"), 1, seg_size);
        assert!(names.len() < 10_000, "{last} does not follow {first}");
        names.push(next);
    }
    names
}

/// A directory owned by root (mode 0755) holding `files` (root, mode 0600), as the victim of
/// an attack on a root-run pitr.
fn root_victim(prefix: &str, files: &[&str]) -> TestDir {
    let dir = TestDir::new(prefix);
    std::os::unix::fs::chown(dir.path(), Some(0), Some(0)).expect("chown root");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    for name in files {
        let path = dir.join(name);
        fs::write(&path, format!("{name}: root's own\n")).expect("write victim file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    dir
}

/// What a root-owned victim directory holds: (name, uid, mode, content) of each entry.
fn victim_state(dir: &Path) -> Vec<(String, u32, u32, Vec<u8>)> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read victim")
        .flatten()
        .map(|e| {
            let meta = fs::symlink_metadata(e.path()).expect("lstat");
            let content = if meta.is_file() { read(&e.path()) } else { Vec::new() };
            (
                e.file_name().to_string_lossy().into_owned(),
                meta.uid(),
                meta.mode(),
                content,
            )
        })
        .collect();
    entries.sort();
    entries
}

/// `pitr` run by root (the user running this suite), outside any data directory.
fn root_pitr(repo: &Path) -> Command {
    let mut cmd = own_command(pitr_binary());
    cmd.arg("--repo").arg(repo);
    cmd
}

/// A conninfo for `c` as the `postgres` role, for a pitr run by root.
fn conninfo(c: &Cluster) -> String {
    format!(
        "host={} port={} user=postgres dbname=postgres",
        c.dir().display(),
        c.port()
    )
}

/// `ln -sfn <target> <link>` as the server user: the repository owner plants a link.
fn plant_link(target: &Path, link: &Path) {
    run_ok(server_command("ln").arg("-sfn").arg(target).arg(link));
}

/// `mv <from> <to>` as the server user.
fn owner_moves(from: &Path, to: &Path) {
    run_ok(server_command("mv").arg("-T").arg(from).arg(to));
}

/// A directory that looks like a standby's data directory to archive-get (it holds
/// `PG_VERSION` and `pg_wal/`), so that it runs with a data directory and a spool, as under
/// PostgreSQL; the copy of the cluster's `PG_VERSION` makes it the same major version.
fn fake_data_dir(c: &Cluster, name: &str) -> PathBuf {
    let dir = c.test_dir().subdir(name);
    c.test_dir().subdir(format!("{name}/pg_wal"));
    c.test_dir()
        .write(format!("{name}/PG_VERSION"), read(&c.data_dir().join("PG_VERSION")));
    // In archive recovery, as PostgreSQL is when it runs restore_command (the prefetcher cleans
    // the spool once the data directory is out of recovery).
    c.test_dir().write(format!("{name}/recovery.signal"), "");
    dir
}

/// A `pitr --repo <repo>` command run as the server user in `dir` (PostgreSQL's way).
fn pitr_in(c: &Cluster, dir: &Path, repo: &Path) -> Command {
    let mut cmd = pitr_command(c.pitr_bin());
    cmd.current_dir(dir).arg("--repo").arg(repo);
    cmd
}

/// `pitr recover --pgdata <nd> <args>` of `c`'s repository as the server user, with
/// `PITR_CRASH_AT=<crash>` when given.
fn recover_run(c: &Cluster, nd: &NewDir, crash: Option<&str>, args: &[&str]) -> CmdOutput {
    let mut cmd = c.pitr_cmd();
    if let Some(point) = crash {
        cmd.env("PITR_CRASH_AT", point);
    }
    run(cmd
        .arg("--repo")
        .arg(c.repo())
        .arg("recover")
        .arg("--pgdata")
        .arg(&nd.data)
        .args(args))
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 at each stage
// ---------------------------------------------------------------------------------------------

/// Every stage of a push: validated, stored object written, fsynced, renamed into place.
const PUSH_POINTS: [&str; 4] = ["push:validated", "put:written", "put:synced", "put:renamed"];

/// archive-push killed at each stage, then retried by PostgreSQL itself: the retry succeeds,
/// archive-get returns the original bytes, no temporary file shows as an object (verify passes),
/// and at the end every segment archived round-trips.
fn kill_archive_push(f: &mut Faults) {
    let mut c = small_cluster();
    let mut archived = vec![archived_segment(&c)];
    for point in PUSH_POINTS {
        f.tried(1);
        // `|| exit 1`: PostgreSQL's archiver takes a command killed by a signal as fatal and is
        // restarted at most every 10 s; an exit code keeps the retry at once.
        set_archive_command(&mut c, &format!("PITR_CRASH_AT={point} "), " || exit 1");
        let log_before = c.log().len();
        let segment = c.capture_segment();
        let crashed = poll(ARCHIVE_TIMEOUT, || {
            let log = c.log();
            let new = log.get(log_before..).unwrap_or_default();
            new.lines()
                .any(|l| l.contains("failed archive command was") && l.contains(segment.0.as_str()))
                .then_some(())
        });
        set_archive_command(&mut c, "", "");
        assert!(
            crashed.is_some(),
            "archive-push of {} with PITR_CRASH_AT={point} never failed: the crash point is not reached",
            segment.0
        );
        // PostgreSQL retries with the fixed command.
        let done = c.pg_wal().join(format!("archive_status/{}.done", segment.0));
        let retried = poll(ARCHIVE_TIMEOUT, || done.exists().then_some(()));
        if !f.expect(retried.is_some(), Harm::WrongExit, || {
            format!(
                "kill -9 at {point}: PostgreSQL's retries of {} keep failing:\n{}",
                segment.0,
                tail(&c.log(), 5)
            )
        }) {
            continue;
        }
        expect_round_trip(f, &c, c.repo(), &segment, &format!("kill -9 at {point}, then a retry"));
        let wal = c.pitr_connected(c.repo(), &["verify", "wal", "--log-file", "none"]);
        f.expect(wal.code() == Some(0), Harm::WrongExit, || {
            format!(
                "kill -9 at {point}: verify wal exits {:?}:\n{}",
                wal.code(),
                wal.stdout_str()
            )
        });
        archived.push(segment);
    }
    for segment in &archived {
        expect_round_trip(f, &c, c.repo(), segment, "after every push crash");
    }
}

/// Every stage of a backup, and a few puts mid-copy.
const BACKUP_POINTS: [&str; 9] = [
    "put:written",
    "backup:started",
    "backup:piece#300",
    "put:synced#200",
    "put:renamed#500",
    "backup:stopped",
    "backup:synced",
    "backup:manifest-copied",
    "backup:committed",
];

/// A backup killed at each stage: `list` shows no partial backup (a committed one stays), the
/// next backup succeeds and deletes the partial one, and verify passes.
fn kill_backup(f: &mut Faults) {
    let c = small_cluster();
    create_rows(&c, 1000);
    backup_id(&c, &[]);
    for point in BACKUP_POINTS {
        f.tried(1);
        let before = backup_dirs(c.repo());
        let crashed = backup_run(&c, Some(point), &["--no-expire"]);
        assert!(
            !crashed.success(),
            "backup with PITR_CRASH_AT={point} succeeded: the crash point is not reached"
        );
        let id = backup_dirs(c.repo()).difference(&before).next().cloned();
        let committed = point == "backup:committed";
        match listed(&c) {
            Ok(ids) => {
                if let Some(id) = &id {
                    f.expect(ids.contains(id) == committed, Harm::Undetected, || {
                        format!(
                            "kill -9 at {point}: backup {id} is {}listed",
                            if committed { "not " } else { "" }
                        )
                    });
                }
            }
            Err(out) => f.harm(
                Harm::WrongExit,
                format!("kill -9 at {point}: list fails:\n{}", out.describe()),
            ),
        }
        let next = backup_run(&c, None, &["--json", "--no-expire"]);
        if !f.expect(next.success(), Harm::WrongExit, || {
            format!("kill -9 at {point}: the next backup fails:\n{}", next.describe())
        }) {
            continue;
        }
        if let Some(id) = id {
            // The next backup may take the same id (same second) once it deleted the partial one.
            let next_id = json_str(&parse_json(&next)["backup"], "id").to_string();
            let kept = backup_dirs(c.repo()).contains(&id) && id != next_id;
            if committed {
                f.expect(kept, Harm::Undetected, || {
                    format!("kill -9 at {point}: the next backup deleted the committed backup {id}")
                });
            } else {
                f.expect(!kept && cleaned_up(&next).contains(&id), Harm::Undetected, || {
                    format!("kill -9 at {point}: the next backup left the partial backup {id} behind")
                });
            }
        }
        expect_verify_passes(f, &c, &format!("kill -9 at {point}, then a backup"));
    }
}

/// Every stage of expire.
const EXPIRE_POINTS: [&str; 4] = [
    "expire:marked",
    "expire:manifest-deleted",
    "expire:deleted",
    "expire:wal",
];

/// expire (keeping one hourly backup) killed at each stage: the repository verifies, the WAL the
/// retained backups need is all there, and a second expire completes.
fn kill_expire(f: &mut Faults) {
    let c = small_cluster();
    create_rows(&c, 100);
    let config = c.test_dir().write("keep-one.toml", "keep_hourly = 1\n");
    backup_id(&c, &["--no-expire"]);
    let seg_size = c.wal_segment_size();
    for (i, point) in (0u32..).zip(EXPIRE_POINTS) {
        insert_rows(&c, 1000 + i * 100, 1099 + i * 100);
        c.switch_and_archive();
        c.switch_and_archive();
        backup_id(&c, &["--no-expire"]);
        let newest = c.switch_and_archive();
        f.tried(1);
        let expire = |crash: Option<&str>| {
            let mut cmd = c.pitr_cmd();
            if let Some(point) = crash {
                cmd.env("PITR_CRASH_AT", point);
            }
            run(cmd
                .arg("--repo")
                .arg(c.repo())
                .arg("--config")
                .arg(&config)
                .arg("expire"))
        };
        let crashed = expire(Some(point));
        assert!(
            !crashed.success(),
            "expire with PITR_CRASH_AT={point} succeeded: the crash point is not reached:\n{}",
            crashed.describe()
        );
        let after_crash = format!("kill -9 at {point}");
        expect_verify_passes(f, &c, &after_crash);
        expect_needed_wal(f, &c, &newest, seg_size, &after_crash);
        let again = expire(None);
        f.expect(again.success(), Harm::WrongExit, || {
            format!("kill -9 at {point}: the second expire fails:\n{}", again.describe())
        });
        let after_again = format!("kill -9 at {point}, then a second expire");
        expect_verify_passes(f, &c, &after_again);
        expect_needed_wal(f, &c, &newest, seg_size, &after_again);
    }
}

/// Records WAL lost unless every segment from the oldest listed backup's first one to `newest`
/// restores.
fn expect_needed_wal(f: &mut Faults, c: &Cluster, newest: &str, seg_size: u64, when: &str) {
    let list = c.pitr(&["list", "--json"]);
    if !f.expect(list.success(), Harm::WrongExit, || {
        format!("{when}: list fails:\n{}", list.describe())
    }) {
        return;
    }
    let backups = parse_json(&list);
    let Some(first) = backups
        .as_array()
        .expect("array")
        .iter()
        .map(|b| json_str(b, "first_wal").to_string())
        .min()
    else {
        f.harm(Harm::WrongExit, format!("{when}: no backup is listed any more"));
        return;
    };
    for name in segments_between(&first, newest, seg_size) {
        let (out, _) = get(c, c.repo(), &name);
        f.expect(out.success(), Harm::WalLost, || {
            format!(
                "{when}: {name}, needed by a retained backup, does not restore (exit {:?}): {}",
                out.code(),
                out.stderr_str().trim()
            )
        });
    }
}

/// recover killed while restoring files, before `pg_control`, and after the restore: a second
/// `recover --force` into the same directory succeeds with the exact row count.
fn kill_recover(f: &mut Faults) {
    let c = small_cluster();
    create_rows(&c, 1000);
    backup_id(&c, &[]);
    insert_rows(&c, 1001, 1500);
    let point = c.pitr_connected(c.repo(), &["restore-point", "target"]);
    point.assert_success();
    for crash in ["restore:piece#100", "restore:control", "recover:restored"] {
        f.tried(1);
        let nd = NewDir::new();
        let crashed = recover_run(&c, &nd, Some(crash), &["--target-name", "target"]);
        assert!(
            !crashed.success(),
            "recover with PITR_CRASH_AT={crash} succeeded: the crash point is not reached"
        );
        let again = recover_run(
            &c,
            &nd,
            None,
            &[
                "--target-name",
                "target",
                "--force",
                "--verify-sql",
                "SELECT count(*) FROM t",
            ],
        );
        if f.expect(again.success(), Harm::WrongExit, || {
            format!("kill -9 at {crash}: recover --force fails:\n{}", again.describe())
        }) {
            let rows = again.line_after("verify: ");
            f.expect(rows.as_deref() == Some("1500"), Harm::WrongPromotion, || {
                format!("kill -9 at {crash}: the recovered copy has {rows:?} rows, expected 1500")
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. ENOSPC, EACCES, a read-only repository
// ---------------------------------------------------------------------------------------------

/// `archive-push` of `pg_wal/<name>` from `c`'s data directory into `repo`, uncompressed (so
/// that a full file system stays full).
fn push_uncompressed(c: &Cluster, repo: &Path, name: &str) -> CmdOutput {
    run(pitr_in(c, c.data_dir(), repo)
        .args(["--compress", "none", "archive-push"])
        .arg(format!("pg_wal/{name}")))
}

/// PostgreSQL archives into a 4 MiB tmpfs until it is full: every segment it was told is
/// archived restores, a push into the full repository fails, a backup into it fails and is not
/// listed; after growing it everything archives and restores. Then the tmpfs turns read-only:
/// a push fails, an archived segment still restores, a missing one is an honest 1.
fn full_then_read_only(f: &mut Faults) {
    let dir = TestDir::new("faults-tmpfs");
    let mount_point = dir.subdir("repo");
    let tmpfs = Tmpfs::mount(&mount_point, "4m");
    let c = Cluster::start(
        ClusterOptions::default()
            .wal_segsize_mb(1)
            .repo(tmpfs.path())
            .pitr_arg("--compress")
            .pitr_arg("none"),
    );
    create_rows(&c, 100);
    f.tried(1);
    let segments: Vec<(String, Vec<u8>)> = (0..8).map(|_| c.capture_segment()).collect();
    let full = poll(ARCHIVE_TIMEOUT, || (c.archiver_stats().2 > 0).then_some(()));
    assert!(full.is_some(), "archiving 8 MiB into a 4 MiB tmpfs never failed");
    let done = c.archive_status().0;
    for segment in segments.iter().filter(|(name, _)| done.contains(name)) {
        expect_round_trip(f, &c, c.repo(), segment, "archived while the repository filled up");
    }
    let pending: Vec<&(String, Vec<u8>)> = segments.iter().filter(|(name, _)| !done.contains(name)).collect();
    assert!(!pending.is_empty(), "every segment was archived into a 4 MiB tmpfs");

    f.tried(1);
    let push = push_uncompressed(&c, c.repo(), &pending[0].0);
    if push.success() {
        expect_round_trip(
            f,
            &c,
            c.repo(),
            pending[0],
            "archive-push into a full repository exited 0",
        );
    } else {
        assert!(
            push.stderr_str().contains("No space left on device"),
            "the push failed, but not for want of space:\n{}",
            push.describe()
        );
    }
    f.tried(1);
    let before = backup_dirs(c.repo());
    let backup = backup_run(&c, None, &[]);
    f.expect(!backup.success(), Harm::WrongExit, || {
        format!("a backup into a full repository exits 0:\n{}", backup.describe())
    });
    expect_not_listed(f, &c, &before, "a backup into a full repository");

    tmpfs.remount("size=64m");
    c.wait_archiver_idle();
    for segment in &segments {
        expect_round_trip(f, &c, c.repo(), segment, "after the repository grew");
    }
    read_only(f, &c, &tmpfs, &segments[0]);
}

/// The repository turns read-only: a push fails, an archived segment still restores, a
/// missing one is an honest 1; writable again, PostgreSQL's pending segment archives.
fn read_only(f: &mut Faults, c: &Cluster, tmpfs: &Tmpfs, archived: &(String, Vec<u8>)) {
    tmpfs.remount("ro");
    f.tried(3);
    let new = c.capture_segment();
    let push = push_uncompressed(c, c.repo(), &new.0);
    f.expect(!push.success(), Harm::WalLost, || {
        format!("archive-push of {} into a read-only repository exits 0", new.0)
    });
    let (got, bytes) = get(c, c.repo(), &archived.0);
    f.expect(
        got.success() && bytes.as_ref() == Some(&archived.1),
        Harm::WrongExit,
        || {
            format!(
                "archive-get from a read-only repository exits {:?}: {}",
                got.code(),
                got.stderr_str()
            )
        },
    );
    let missing = later_segment_name(&new.0, 100, c.wal_segment_size());
    let (absent, _) = get(c, c.repo(), &missing);
    f.expect(absent.code() == Some(1), Harm::WrongExit, || {
        format!(
            "archive-get of the missing {missing} from a read-only repository exits {:?}, expected 1: {}",
            absent.code(),
            absent.stderr_str()
        )
    });
    tmpfs.remount("rw");
    c.wait_archived(&new.0);
    expect_round_trip(f, c, c.repo(), &new, "after the repository turned writable again");
}

/// Records undetected damage when `list` shows a backup not in `before`.
fn expect_not_listed(f: &mut Faults, c: &Cluster, before: &BTreeSet<String>, what: &str) {
    match listed(c) {
        Ok(ids) => {
            let new: Vec<&String> = ids.difference(before).collect();
            f.expect(new.is_empty(), Harm::Undetected, || {
                format!("{what}: list shows {new:?}")
            });
        }
        Err(out) => f.harm(Harm::WrongExit, format!("{what}: list fails:\n{}", out.describe())),
    }
}

/// A backup whose files turn out far less compressible than the last one's: the space check
/// passes, the copy runs out of space. The backup fails and is not listed; after growing the
/// file system the next backup succeeds and deletes the partial one; verify passes.
fn backup_out_of_space(f: &mut Faults) {
    let dir = TestDir::new("faults-tmpfs");
    let mount_point = dir.subdir("repo");
    let tmpfs = Tmpfs::mount(&mount_point, "96m");
    let c = Cluster::start(ClusterOptions::default().wal_segsize_mb(1).repo(tmpfs.path()));
    create_rows(&c, 100);
    let first = backup_json(&c, &[]);
    let ratio = first["backup"]["stored_bytes"].as_f64().expect("stored_bytes")
        / first["backup"]["original_bytes"].as_f64().expect("original_bytes");
    // 12 MiB of random bytes, stored uncompressed by PostgreSQL (STORAGE EXTERNAL).
    c.psql(
        "CREATE TABLE junk (b bytea); ALTER TABLE junk ALTER COLUMN b SET STORAGE EXTERNAL; \
         INSERT INTO junk SELECT (SELECT decode(string_agg(md5(g || ':' || i || ':' || random()), ''), 'hex') \
         FROM generate_series(1, 65536) i) FROM generate_series(1, 12) g",
    );
    c.switch_and_archive();
    let tree = first["backup"]["original_bytes"].as_u64().expect("original_bytes") + (13 << 20);
    let room = (tree as f64 * ratio) as u64 + (2 << 20);
    tmpfs.remount(&format!("size={}k", (tmpfs.used_bytes() + room) / 1024 + 1));

    f.tried(1);
    let before = backup_dirs(c.repo());
    let out = backup_run(&c, None, &[]);
    if out.success() {
        let check = verify(&c, c.repo());
        assert!(
            check.code() != Some(0),
            "the backup did not run out of space (estimate {room} bytes free): the fault was not injected"
        );
        f.harm(
            Harm::WrongExit,
            format!(
                "a backup that ran out of space exits 0 (verify: {})",
                check.stdout_str()
            ),
        );
    } else {
        assert!(
            out.stderr_str().contains("No space left on device"),
            "the backup failed, but not for want of space: the fault was not injected:\n{}",
            out.describe()
        );
    }
    expect_not_listed(f, &c, &before, "a backup that ran out of space");
    let partial = backup_dirs(c.repo()).difference(&before).next().cloned();
    tmpfs.remount("size=192m");
    // Backup ids name the second: a next backup within the same second as the partial one would
    // clean it up and then take its id, and the check below could not tell them apart.
    std::thread::sleep(Duration::from_millis(1100));
    let next = backup_run(&c, None, &["--json"]);
    if f.expect(next.success(), Harm::WrongExit, || {
        format!("the backup after freeing space fails:\n{}", next.describe())
    }) {
        if let Some(id) = partial {
            f.expect(
                cleaned_up(&next).contains(&id) && !backup_dirs(c.repo()).contains(&id),
                Harm::Undetected,
                || {
                    let left: Vec<String> = fs::read_dir(c.repo().join("hourly").join(&id))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    format!(
                        "the partial backup {id} was left behind (it holds {left:?}); the next backup said:\n{}",
                        next.describe()
                    )
                },
            );
        }
    }
    expect_verify_passes(f, &c, "after a backup ran out of space and the next one succeeded");
}

/// Copies of a repository the server user cannot read or write, in four ways: the root
/// directory, a `wal/` subdirectory, one object and `repo.json` belonging to root. A push fails,
/// archive-get exits 200 (never 1: PostgreSQL would promote), except for a file the readable
/// archive truly lacks.
fn unreadable_repository(f: &mut Faults) {
    let c = small_cluster();
    let archived = archived_segment(&c);
    let missing = later_segment_name(&archived.0, 100, c.wal_segment_size());
    let copies = TestDir::new("faults-eacces");
    let copy_as = |name: &str, lock: &dyn Fn(&Path)| -> PathBuf {
        let to = copies.join(name);
        run_ok(own_command("cp").arg("-a").arg(c.repo()).arg(&to));
        lock(&to);
        to
    };
    let to_root = |path: &Path, mode: u32| {
        std::os::unix::fs::chown(path, Some(0), Some(0)).expect("chown root");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let tli_dir = |repo: &Path| stored_path(repo, &archived.0).parent().expect("dir").to_path_buf();
    // (repository, a push must fail, a missing file is an error too)
    let repos = [
        (copy_as("root-dir", &|r| to_root(r, 0o700)), true, true),
        (copy_as("wal-dir", &|r| to_root(&tli_dir(r), 0o700)), true, true),
        (
            copy_as("repo-json", &|r| to_root(&r.join("repo.json"), 0o600)),
            true,
            true,
        ),
        (
            copy_as("object", &|r| to_root(&stored_path(r, &archived.0), 0o600)),
            false,
            false,
        ),
    ];
    let new = c.capture_segment();
    for (repo, push_fails, missing_fails) in &repos {
        let what = repo.file_name().expect("name").to_string_lossy().into_owned();
        f.tried(1);
        let (out, _) = get(&c, repo, &archived.0);
        f.expect(out.code() == Some(200), Harm::WrongExit, || {
            format!(
                "{what} owned by root: archive-get of {} exits {:?}, expected 200",
                archived.0,
                out.code()
            )
        });
        if *missing_fails {
            f.tried(1);
            let (out, _) = get(&c, repo, &missing);
            f.expect(out.code() == Some(200), Harm::WrongExit, || {
                format!(
                    "{what} owned by root: archive-get of the missing {missing} exits {:?}, expected 200",
                    out.code()
                )
            });
        }
        if *push_fails {
            f.tried(1);
            let push = push_uncompressed(&c, repo, &new.0);
            f.expect(!push.success(), Harm::WalLost, || {
                format!("{what} owned by root: archive-push of {} exits 0", new.0)
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Concurrent pushes
// ---------------------------------------------------------------------------------------------

/// 8 pushes of one segment at once, into a repository no segment was archived to yet (so they
/// also race to write repo.json), then 8 with mixed compression into the same repository: all
/// exit 0, one object, and it restores byte for byte.
fn concurrent_pushes(f: &mut Faults) {
    let c = Cluster::start(ClusterOptions::default().wal_segsize_mb(1).archive(false));
    let repo = c.test_dir().subdir("race-repo");
    for compressions in [
        ["zstd"; 8],
        ["zstd", "gzip", "none", "zstd", "gzip", "none", "zstd", "gzip"],
    ] {
        f.tried(1);
        let segment = c.capture_segment();
        let children: Vec<_> = compressions
            .iter()
            .map(|codec| {
                let mut cmd = pitr_in(&c, c.data_dir(), &repo);
                cmd.args(["--compress", codec, "archive-push"])
                    .arg(format!("pg_wal/{}", segment.0));
                (cmdline(&cmd), spawn(&mut cmd))
            })
            .collect();
        for (line, child) in children {
            let out = wait_child(child, line, COMMAND_TIMEOUT);
            f.expect(out.success(), Harm::WrongExit, || {
                format!("one of 8 concurrent pushes of {} fails:\n{}", segment.0, out.describe())
            });
        }
        let dir = stored_path(&repo, &segment.0).parent().expect("dir").to_path_buf();
        let objects: Vec<String> = fs::read_dir(&dir)
            .expect("the segment's directory")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&segment.0))
            .collect();
        f.expect(objects == [segment.0.clone()], Harm::Undetected, || {
            format!("8 concurrent pushes of {} left {objects:?}", segment.0)
        });
        expect_round_trip(f, &c, &repo, &segment, "8 concurrent pushes");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Bit flips
// ---------------------------------------------------------------------------------------------

/// What kind of repository file a flip lands in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// A codec object (WAL, history, backup files, labels): header, payload, CRC of the content.
    Object,
    /// A checksummed JSON record (repo.json, manifests, restore point records).
    Record,
}

/// Flips one random bit of a random file of `files`, `n` times, each on a fresh copy (the
/// original is put back after `judge` looked at it). A flip in an object that still decodes to
/// the same content (zstd's unused frame-header bit) damages nothing: it is counted as
/// immaterial, not judged.
fn flip_each(
    f: &mut Faults,
    rng: &mut Rng,
    (files, stored): (&[PathBuf], Stored),
    n: u32,
    judge: &mut dyn FnMut(&mut Faults, &Path, u64),
) {
    assert!(!files.is_empty(), "no file to flip bits in");
    for _ in 0..n {
        let path = rng.pick(files).clone();
        let original = read(&path);
        let bit = rng.below(original.len() as u64 * 8);
        flip_bit(&path, bit);
        f.tried(1);
        let same_content = stored == Stored::Object
            && pitr::codec::decode(&read(&path), "flipped").is_ok_and(|flipped| {
                pitr::codec::decode(&original, "original").is_ok_and(|content| content == flipped)
            });
        if same_content {
            eprintln!(
                "faults: immaterial flip: bit {bit} of {} decodes to the same content",
                path.display()
            );
            f.immaterial += 1;
        } else {
            judge(f, &path, bit);
        }
        rewrite_keeping_mode(&path, &original);
    }
}

/// The path of `path` inside `repo`, as pitr names it.
fn key_of(repo: &Path, path: &Path) -> String {
    path.strip_prefix(repo)
        .expect("inside the repository")
        .display()
        .to_string()
}

/// archive-get of a flipped WAL or history file must exit 200: 0 restores damage, 1 makes
/// PostgreSQL promote.
fn judge_by_archive_get(f: &mut Faults, c: &Cluster, path: &Path, bit: u64) {
    let name = path.file_name().expect("name").to_string_lossy().into_owned();
    let (out, _) = get(c, c.repo(), &name);
    let what = || format!("{name} with bit {bit} flipped: archive-get exits {:?}", out.code());
    match out.code() {
        Some(200) => {}
        Some(0) => f.harm(Harm::Undetected, what()),
        _ => f.harm(Harm::WrongExit, what()),
    }
}

/// verify of a repository with `path` flipped must exit 2 and name it.
fn judge_by_verify(f: &mut Faults, c: &Cluster, path: &Path, bit: u64) {
    let key = key_of(c.repo(), path);
    let out = verify(c, c.repo());
    f.expect(out.code() == Some(2) && names(&out, &key), Harm::Undetected, || {
        format!(
            "{key} with bit {bit} flipped: verify exits {:?}{}",
            out.code(),
            if names(&out, &key) { "" } else { " without naming it" }
        )
    });
}

/// A restore of backup `id` with `path` flipped must fail and name it.
fn judge_by_restore(f: &mut Faults, c: &Cluster, id: &str, path: &Path, bit: u64) {
    let key = key_of(c.repo(), path);
    let target = TestDir::new("faults-flip-restore");
    let data = target.join("data");
    let out = c.pitr(&["restore", "--backup", id, "--pgdata", data.to_str().expect("UTF-8")]);
    f.expect(!out.success() && names(&out, &key), Harm::Undetected, || {
        format!(
            "{key} with bit {bit} flipped: restore exits {:?}{}",
            out.code(),
            if names(&out, &key) { "" } else { " without naming it" }
        )
    });
}

/// A history file whose switch point follows `last` (the newest archived segment), so that the
/// archive stays continuous; archived with archive-push.
fn archive_history(c: &Cluster, last: &str) {
    let seg_size = c.wal_segment_size();
    let per_log = 0x1_0000_0000 / seg_size;
    let hi = u64::from_str_radix(&last[8..16], 16).expect("hex");
    let lo = u64::from_str_radix(&last[16..24], 16).expect("hex");
    let lsn = (hi * per_log + lo + 1) * seg_size;
    let path = c.test_dir().write(
        "00000002.history",
        format!(
            "1\t{:X}/{:X}\tno recovery target specified\n",
            lsn >> 32,
            lsn & 0xFFFF_FFFF
        ),
    );
    c.pitr(&["archive-push", path.to_str().expect("UTF-8")])
        .assert_success();
}

/// Asserts that the untouched repository verifies, so that a flip is what verify reports.
fn assert_verifies(c: &Cluster) {
    let out = verify(c, c.repo());
    assert!(
        out.code() == Some(0),
        "the repository does not verify before any flip:\n{}",
        out.describe()
    );
}

/// Bit flips in WAL segment objects, `.backup` files, history files (archive-get exits 200) and
/// repo.json (verify exits 2 naming it, archive-get exits 200).
fn flips_in_wal(f: &mut Faults) {
    let c = small_cluster();
    create_rows(&c, 100);
    backup_id(&c, &[]);
    let mut last = String::new();
    for i in 0..3 {
        insert_rows(&c, 1000 + i * 100, 1099 + i * 100);
        last = c.switch_and_archive();
    }
    archive_history(&c, &last);
    assert_verifies(&c);
    let wal = c.repo().join("wal");
    let (histories, objects): (Vec<PathBuf>, Vec<PathBuf>) = files_below(&wal)
        .into_iter()
        .filter(|p| !p.file_name().expect("name").to_string_lossy().starts_with('.'))
        .partition(|p| p.starts_with(wal.join("history")));
    let mut rng = Rng::new(1);
    flip_each(f, &mut rng, (&objects, Stored::Object), 60, &mut |f, path, bit| {
        judge_by_archive_get(f, &c, path, bit)
    });
    flip_each(f, &mut rng, (&histories, Stored::Object), 20, &mut |f, path, bit| {
        judge_by_archive_get(f, &c, path, bit)
    });
    let repo_json = [c.repo().join("repo.json")];
    flip_each(f, &mut rng, (&repo_json, Stored::Record), 20, &mut |f, path, bit| {
        judge_by_verify(f, &c, path, bit);
        let (out, _) = get(&c, c.repo(), &last);
        f.expect(out.code() == Some(200), Harm::WrongExit, || {
            format!(
                "repo.json with bit {bit} flipped: archive-get exits {:?}, expected 200",
                out.code()
            )
        });
    });
}

/// Bit flips in a backup's file objects and backup_label (verify exits 2 naming them, and a
/// sample of restores fails naming them), its manifest and the manifest's copy, and restore point
/// records (verify exits 2 naming them).
fn flips_in_backups(f: &mut Faults) {
    let c = small_cluster();
    create_rows(&c, 100);
    let id = backup_id(&c, &[]);
    insert_rows(&c, 101, 200);
    c.pitr_connected(c.repo(), &["restore-point", "flips"]).assert_success();
    assert_verifies(&c);
    let dir = c.repo().join("hourly").join(&id);
    let files = files_below(&dir.join("files"));
    let mut rng = Rng::new(2);
    let mut n = 0;
    flip_each(f, &mut rng, (&files, Stored::Object), 50, &mut |f, path, bit| {
        judge_by_verify(f, &c, path, bit);
        n += 1;
        if n % 10 == 0 {
            judge_by_restore(f, &c, &id, path, bit);
        }
    });
    let label = [dir.join("backup_label")];
    let mut n = 0;
    flip_each(f, &mut rng, (&label, Stored::Object), 15, &mut |f, path, bit| {
        judge_by_verify(f, &c, path, bit);
        n += 1;
        if n % 5 == 0 {
            judge_by_restore(f, &c, &id, path, bit);
        }
    });
    let points = files_below(&c.repo().join("restore_points"));
    for files in [
        vec![dir.join("backup.manifest")],
        vec![dir.join("backup.manifest.copy")],
        points,
    ] {
        flip_each(f, &mut rng, (&files, Stored::Record), 15, &mut |f, path, bit| {
            judge_by_verify(f, &c, path, bit)
        });
    }
}

/// Files lost from a repository, one at a time: a backup file object, `backup.manifest`, its
/// copy, both, a WAL segment in the middle of the archive, `repo.json`. verify exits 2 naming
/// what is lost; the next backup keeps a backup whose manifests are both lost (its files are all
/// there); archive-get exits 200 without `repo.json`. (A lost restore point record leaves no
/// trace: nothing else names it.)
fn lost_files(f: &mut Faults) {
    let c = small_cluster();
    create_rows(&c, 100);
    let id = backup_id(&c, &[]);
    insert_rows(&c, 101, 200);
    let middle = c.switch_and_archive();
    insert_rows(&c, 201, 300);
    c.switch_and_archive();
    assert_verifies(&c);
    let dir = c.repo().join("hourly").join(&id);
    let mut rng = Rng::new(4);
    let object = rng.pick(&files_below(&dir.join("files"))).clone();
    let (manifest, copy) = (dir.join("backup.manifest"), dir.join("backup.manifest.copy"));
    let aside = TestDir::new("faults-lost");
    let cases: Vec<(&str, Vec<PathBuf>, String)> = vec![
        ("a backup file object", vec![object.clone()], key_of(c.repo(), &object)),
        ("backup.manifest", vec![manifest.clone()], key_of(c.repo(), &manifest)),
        ("backup.manifest.copy", vec![copy.clone()], key_of(c.repo(), &copy)),
        ("both manifests", vec![manifest.clone(), copy.clone()], id.clone()),
        (
            "a WAL segment in the middle",
            vec![stored_path(c.repo(), &middle)],
            middle.clone(),
        ),
        ("repo.json", vec![c.repo().join("repo.json")], "repo.json".into()),
    ];
    for (what, lost, key) in cases {
        f.tried(1);
        let moved: Vec<(PathBuf, PathBuf)> = lost
            .iter()
            .enumerate()
            .map(|(i, path)| (path.clone(), aside.join(i.to_string())))
            .collect();
        for (from, to) in &moved {
            fs::rename(from, to).expect("move a file aside");
        }
        let out = verify(&c, c.repo());
        f.expect(out.code() == Some(2) && names(&out, &key), Harm::Undetected, || {
            format!(
                "{what} lost: verify exits {:?}{}",
                out.code(),
                if names(&out, &key) { "" } else { " without naming it" }
            )
        });
        if what == "both manifests" {
            let next = backup_run(&c, None, &[]);
            f.expect(next.success(), Harm::WrongExit, || {
                format!(
                    "with a backup's manifests lost, the next backup fails:\n{}",
                    next.describe()
                )
            });
            f.expect(dir.join("files").exists(), Harm::Undetected, || {
                format!("the next backup deleted backup {id}, whose manifests were lost")
            });
        }
        if what == "repo.json" {
            let (got, _) = get(&c, c.repo(), &middle);
            f.expect(got.code() == Some(200), Harm::WrongExit, || {
                format!("repo.json lost: archive-get exits {:?}, expected 200", got.code())
            });
        }
        for (from, to) in &moved {
            fs::rename(to, from).expect("move a file back");
        }
    }
}

/// A prefetched segment damaged in the spool (a flipped bit, a flipped bit in its CRC sidecar,
/// cut short): archive-get falls back to the repository's sound copy and exits 0 with the right
/// bytes, instead of failing (200) on every retry.
fn flips_in_spool(f: &mut Faults) {
    let c = small_cluster();
    let segments: Vec<(String, Vec<u8>)> = (0..6).map(|_| archived_segment(&c)).collect();
    let standby = fake_data_dir(&c, "standby");
    let prefetch = PathBuf::from(format!("{}.pitr-spool", standby.display())).join("prefetch");
    let get_in_standby = |name: &str| {
        let dest = standby.join("pg_wal/RECOVERYXLOG");
        let _ = fs::remove_file(&dest);
        let out = run(pitr_in(&c, &standby, c.repo()).args(["archive-get", name, "pg_wal/RECOVERYXLOG"]));
        (out, fs::read(&dest).ok())
    };
    get_in_standby(&segments[0].0).0.assert_success();
    let prefetched = poll(Duration::from_secs(30), || {
        segments[1..4]
            .iter()
            .all(|(name, _)| prefetch.join(format!("{name}.crc")).exists())
            .then_some(())
    });
    assert!(
        prefetched.is_some(),
        "the prefetcher did not fill {}",
        prefetch.display()
    );
    let mut rng = Rng::new(3);
    type Damage<'a> = &'a dyn Fn(&Path, &str, &mut Rng);
    let damages: [(&str, Damage); 3] = [
        ("a flipped bit in the prefetched segment", &|dir, name, rng| {
            let path = dir.join(name);
            flip_bit(&path, rng.below(fs::metadata(&path).expect("stat").len() * 8));
        }),
        ("a flipped bit in its CRC sidecar", &|dir, name, rng| {
            let path = dir.join(format!("{name}.crc"));
            flip_bit(&path, rng.below(fs::metadata(&path).expect("stat").len() * 8));
        }),
        ("the prefetched segment cut short", &|dir, name, _| {
            let path = dir.join(name);
            let bytes = read(&path);
            rewrite_keeping_mode(&path, &bytes[..bytes.len() / 2]);
        }),
    ];
    for (segment, (how, damage)) in segments[1..4].iter().zip(damages) {
        f.tried(1);
        damage(&prefetch, &segment.0, &mut rng);
        let (out, bytes) = get_in_standby(&segment.0);
        if out.success() {
            f.expect(bytes.as_ref() == Some(&segment.1), Harm::Undetected, || {
                format!("{} with {how}: archive-get restored damaged bytes", segment.0)
            });
        } else {
            f.harm(
                Harm::WrongExit,
                format!(
                    "{} with {how}: archive-get exits {:?} although the repository's copy is sound: {}",
                    segment.0,
                    out.code(),
                    out.stderr_str().trim()
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A hostile local user, and the repository owner against a root-run pitr
// ---------------------------------------------------------------------------------------------

/// What `nobody` tries on every entry: read and append to each file, list and create in each
/// directory (only create in a root the operator made). One line per success.
const NOBODY_PROBE: &str = r#"for p in "$@"; do
  kind="${p%%:*}"; path="${p#*:}"
  case "$kind" in
    F) head -c 1 "$path" >/dev/null 2>&1 && echo "read $path"
       (: >> "$path") 2>/dev/null && echo "write $path" ;;
    D) ls "$path" >/dev/null 2>&1 && echo "list $path"
       (: > "$path/.nobody-was-here") 2>/dev/null && echo "create $path" ;;
    R) (: > "$path/.nobody-was-here") 2>/dev/null && echo "create $path" ;;
  esac
done"#;

/// Runs [`NOBODY_PROBE`] over `root` (made by the operator: only creating in it is tried) and
/// everything below it (made by pitr); one fault per kind of access, a hole per kind that
/// succeeded anywhere.
fn nobody_probes(f: &mut Faults, what: &str, root: &Path, root_is_pitrs: bool) {
    let mut args = vec![format!("{}:{}", if root_is_pitrs { "D" } else { "R" }, root.display())];
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir").flatten() {
            let meta = fs::symlink_metadata(entry.path()).expect("lstat");
            if meta.is_dir() {
                args.push(format!("D:{}", entry.path().display()));
                stack.push(entry.path());
            } else if meta.is_file() {
                args.push(format!("F:{}", entry.path().display()));
            }
        }
    }
    let out = run(nobody_command("sh").arg("-c").arg(NOBODY_PROBE).arg("sh").args(&args));
    for kind in ["read", "write", "list", "create"] {
        f.tried(1);
        let got: Vec<&str> = out
            .stdout
            .split(|b| *b == b'\n')
            .filter_map(|l| std::str::from_utf8(l).ok())
            .filter_map(|l| l.strip_prefix(kind).map(str::trim))
            .collect();
        f.expect(got.is_empty(), Harm::HoleOpen, || {
            format!(
                "nobody can {kind} in {what} ({} entries, e.g. {:?}), of {} probed",
                got.len(),
                &got[..got.len().min(3)],
                args.len()
            )
        });
    }
}

/// Everything pitr creates in a repository and a spool, created under umask 000 (so that a mode
/// left to the umask shows): the archive (pushed by PostgreSQL through `umask 000; exec pitr`),
/// a backup with its lock, a restore point, a history file, the prefetch area with its lock.
/// `nobody` can read, write, list or create nothing of it.
fn nobody_against_files(f: &mut Faults) {
    let mut c = small_cluster();
    set_archive_command(&mut c, "umask 000; exec ", "");
    let umask0 = |args: &[&str], dir: &Path| {
        let mut cmd = server_command_with_umask("000", c.pitr_bin());
        c.libpq_env(&mut cmd)
            .current_dir(dir)
            .arg("--repo")
            .arg(c.repo())
            .args(args);
        run(&mut cmd).assert_success();
    };
    umask0(&["create-repo"], c.dir());
    create_rows(&c, 100);
    umask0(&["backup", "--fast"], c.dir());
    // After the backup: its expire deletes the WAL before it.
    let segments: Vec<String> = (0..4).map(|_| c.switch_and_archive()).collect();
    umask0(&["restore-point", "probe"], c.dir());
    // Timeline 2 forks far ahead of the WAL archived here, so that recovery (and the prefetcher,
    // which follows the newest timeline as recovery does) reads timeline 1's segments.
    let history = c
        .test_dir()
        .write("00000002.history", "1\t1/0\tno recovery target specified\n");
    umask0(&["archive-push", history.to_str().expect("UTF-8")], c.dir());
    let standby = fake_data_dir(&c, "standby");
    umask0(&["archive-get", &segments[0], "pg_wal/RECOVERYXLOG"], &standby);
    let spool = PathBuf::from(format!("{}.pitr-spool", standby.display()));
    let filled = poll(Duration::from_secs(30), || {
        spool
            .join(format!("prefetch/{}.crc", segments[1]))
            .exists()
            .then_some(())
    });
    assert!(filled.is_some(), "the prefetcher did not fill {}", spool.display());
    wait_for_the_prefetcher_to_exit();
    nobody_probes(f, "the repository", c.repo(), false);
    nobody_probes(f, "the spool", &spool, true);
}

/// The prefetcher lingers a second after its last segment before it exits.
fn wait_for_the_prefetcher_to_exit() {
    std::thread::sleep(Duration::from_secs(2));
}

/// `pitr recover` (under umask 000) leaves the promoted copy running on its private socket
/// until `adopt`: `nobody` must not get in (it would be superuser, with `COPY ... TO PROGRAM`),
/// and `adopt` removes the socket directory.
fn nobody_against_private_socket(f: &mut Faults) {
    let c = small_cluster();
    create_rows(&c, 100);
    backup_id(&c, &[]);
    let nd = NewDir::new();
    let mut cmd = server_command_with_umask("000", c.pitr_bin());
    let out = run(cmd
        .current_dir(c.dir())
        .arg("--repo")
        .arg(c.repo())
        .args(["recover", "--target", "latest", "--pgdata"])
        .arg(&nd.data));
    out.assert_success();
    let connect = out
        .line_after("connect: ")
        .unwrap_or_else(|| panic!("no connect line:\n{}", out.describe()));
    let words: Vec<&str> = connect.split_whitespace().collect();
    let after = |flag: &str| {
        let at = words
            .iter()
            .position(|w| *w == flag)
            .unwrap_or_else(|| panic!("no {flag} in {connect:?}"));
        words[at + 1].to_string()
    };
    let (socket_dir, port) = (PathBuf::from(after("-h")), after("-p"));
    f.tried(1);
    let intruder = run(nobody_command(pg_program("psql"))
        .args(["-X", "-w", "-A", "-t", "-h"])
        .arg(&socket_dir)
        .args([
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            "SELECT current_user",
        ]));
    f.expect(!intruder.success(), Harm::HoleOpen, || {
        format!(
            "nobody connects to the recovered copy as {} through {}",
            intruder.stdout_str().trim(),
            socket_dir.display()
        )
    });
    f.tried(1);
    let adopt = c.pitr(&["adopt", "--pgdata", nd.data.to_str().expect("UTF-8")]);
    f.expect(adopt.success(), Harm::WrongExit, || {
        format!("adopt fails:\n{}", adopt.describe())
    });
    f.expect(!socket_dir.exists(), Harm::HoleOpen, || {
        format!(
            "the private socket directory {} is left behind after adopt",
            socket_dir.display()
        )
    });
}

/// The daemon's HTTP listener: only on loopback with the default settings, and a request with a
/// 150 MB header neither grows the daemon by more than 64 MiB nor stops it answering.
fn nobody_against_daemon(f: &mut Faults) {
    let c = small_cluster();
    let config = c.test_dir().write(
        "daemon.toml",
        "[schedule]\nhourly = \"off\"\ndaily = \"off\"\nweekly = \"off\"\nverify = \"off\"\n",
    );
    let mut cmd = c.pitr_connected_cmd(c.repo());
    cmd.arg("--config")
        .arg(&config)
        .args(["daemon", "--pgdata"])
        .arg(c.data_dir());
    let line = cmdline(&cmd);
    let daemon = spawn(&mut cmd);
    let pid = pitr_pid(&daemon);
    let listening = poll(Duration::from_secs(30), || {
        let sockets = listening_sockets(pid);
        (!sockets.is_empty()).then_some(sockets)
    });
    let Some(sockets) = listening else {
        let out = terminate_pitr(daemon, line, Duration::from_secs(30));
        panic!(
            "the daemon listens nowhere after 30 s (is its default port 9817 taken?):\n{}",
            out.describe()
        );
    };
    f.tried(1);
    let exposed: Vec<&(String, u16)> = sockets.iter().filter(|(addr, _)| !is_loopback(addr)).collect();
    f.expect(exposed.is_empty(), Harm::HoleOpen, || {
        format!("the daemon listens beyond loopback by default: {exposed:?}")
    });
    let port = sockets[0].1;
    f.tried(1);
    let before = peak_rss_kib(pid);
    let sent = flood_header(port, 150);
    let grown = peak_rss_kib(pid).saturating_sub(before);
    f.expect(grown < 64 << 10, Harm::HoleOpen, || {
        format!("a {sent} MiB request header grew the daemon by {} MiB", grown >> 10)
    });
    let answers = health_answers(port);
    f.expect(answers, Harm::HoleOpen, || {
        "the daemon stops answering after a 150 MB header".into()
    });
    terminate_pitr(daemon, line, Duration::from_secs(30));
}

/// The TCP sockets process `pid` listens on: (hex address from /proc/net/tcp*, port).
fn listening_sockets(pid: u32) -> Vec<(String, u16)> {
    let inodes: BTreeSet<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[").map(|r| r.trim_end_matches(']').to_string())
        })
        .collect();
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                let (addr, port) = cols[1].split_once(':').expect("addr:port");
                out.push((addr.to_string(), u16::from_str_radix(port, 16).expect("port")));
            }
        }
    }
    out
}

/// A /proc/net/tcp* address (hex, in network order per 32-bit word) on loopback: 127.x.x.x,
/// ::1, or ::ffff:127.x.x.x.
fn is_loopback(hex: &str) -> bool {
    match hex.len() {
        8 => hex.ends_with("7F"),
        32 => {
            hex == "00000000000000000000000001000000"
                || (hex.starts_with("0000000000000000FFFF0000") && hex.ends_with("7F"))
        }
        _ => false,
    }
}

/// VmHWM (peak resident size) of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Sends a request whose header runs `mib` MiB (or until the server stops reading); the MiB sent.
fn flood_header(port: u16, mib: usize) -> usize {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    if stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Flood: ")
        .is_err()
    {
        return 0;
    }
    let chunk = vec![b'a'; 1 << 20];
    (0..mib).take_while(|_| stream.write_all(&chunk).is_ok()).count()
}

/// Whether the daemon answers GET /health on `port` within 10 s.
fn health_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.")
}

/// The repository's owner (the PostgreSQL OS user) plants links for a pitr run by root: the
/// backup lock pointing at a root file, a tier directory and a `wal/` directory replaced by
/// links to root's directories, a backup's `files/` linked to a root directory before expire.
/// None of root's files changes owner, mode or content, nothing is written or read through a
/// link, nothing is deleted through one. And `--force` over a directory with a running cluster
/// below it is refused.
fn owner_plants_links(f: &mut Faults) {
    let mut c = small_cluster();
    create_rows(&c, 100);
    backup_id(&c, &["--no-expire"]);
    lock_link(f, &c);
    tier_link(f, &c);
    wal_link(f, &mut c);
    expire_link(f, &c);
    force_over_a_running_cluster(f, &c);
}

/// A root `pitr backup` of `c` (the attacks' trigger); its outcome does not matter.
fn root_backup(c: &Cluster) {
    run(root_pitr(c.repo()).args(["backup", "--fast", "--no-expire", "-d", &conninfo(c)]));
}

/// `locks/backup.lock` → a root file, before a root backup.
fn lock_link(f: &mut Faults, c: &Cluster) {
    f.tried(1);
    let victim = root_victim("faults-victim-lock", &["secret"]);
    let lock = c.repo().join("locks/backup.lock");
    plant_link(&victim.join("secret"), &lock);
    let before = victim_state(victim.path());
    root_backup(c);
    f.expect(victim_state(victim.path()) == before, Harm::HoleOpen, || {
        format!(
            "a root backup changed {} through the planted backup.lock link",
            victim.join("secret").display()
        )
    });
    fs::remove_file(&lock).expect("remove the planted lock link");
}

/// `hourly/` → a root directory, before a root backup.
fn tier_link(f: &mut Faults, c: &Cluster) {
    f.tried(1);
    let victim = root_victim("faults-victim-tier", &[]);
    let hourly = c.repo().join("hourly");
    let hourly_away = c.repo().join("hourly.away");
    owner_moves(&hourly, &hourly_away);
    plant_link(victim.path(), &hourly);
    let before = victim_state(victim.path());
    root_backup(c);
    f.expect(victim_state(victim.path()) == before, Harm::HoleOpen, || {
        format!(
            "a root backup wrote into {} through the planted hourly/ link",
            victim.path().display()
        )
    });
    fs::remove_file(&hourly).expect("remove the planted tier link");
    owner_moves(&hourly_away, &hourly);
}

/// `wal/<timeline+log>/` → a root directory holding a root-only copy of a segment, before a
/// root archive-get of that segment and a root archive-push of a new one.
fn wal_link(f: &mut Faults, c: &mut Cluster) {
    f.tried(2);
    let (segment, _) = archived_segment(c);
    // PostgreSQL's archiver must not recreate the directory while the link stands in for it.
    set_archive_command(c, "exit 1; ", "");
    let victim = root_victim("faults-victim-wal", &[]);
    let stored = stored_path(c.repo(), &segment);
    let tli_dir = stored.parent().expect("dir").to_path_buf();
    fs::copy(&stored, victim.join(&segment)).expect("copy a root-only object");
    let tli_away = tli_dir.with_extension("away");
    owner_moves(&tli_dir, &tli_away);
    plant_link(victim.path(), &tli_dir);
    let before = victim_state(victim.path());
    let dest = victim.join("restored");
    let got = run(root_pitr(c.repo()).args(["archive-get", &segment, dest.to_str().expect("UTF-8")]));
    f.expect(got.code() == Some(200), Harm::HoleOpen, || {
        format!(
            "root archive-get read {segment} through a planted wal/ link (exit {:?})",
            got.code()
        )
    });
    let _ = fs::remove_file(&dest);
    let (next, _) = c.capture_segment();
    run(root_pitr(c.repo())
        .current_dir(c.data_dir())
        .args(["archive-push", &format!("pg_wal/{next}")]));
    f.expect(victim_state(victim.path()) == before, Harm::HoleOpen, || {
        format!(
            "a root archive-push wrote into {} through a planted wal/ link",
            victim.path().display()
        )
    });
    fs::remove_file(&tli_dir).expect("remove the planted wal link");
    owner_moves(&tli_away, &tli_dir);
    set_archive_command(c, "", "");
    c.wait_archived(&next);
}

/// The oldest backup's `files/` → a root directory, before a root expire deletes that backup.
fn expire_link(f: &mut Faults, c: &Cluster) {
    f.tried(1);
    let victim = root_victim("faults-victim-expire", &["keep"]);
    backup_id(c, &["--no-expire"]);
    let oldest = backup_dirs(c.repo()).into_iter().next().expect("a backup");
    let files = c.repo().join("hourly").join(&oldest).join("files");
    owner_moves(&files, &files.with_extension("away"));
    plant_link(victim.path(), &files);
    let config = c.test_dir().write("keep-one.toml", "keep_hourly = 1\n");
    let before = victim_state(victim.path());
    run(root_pitr(c.repo()).arg("--config").arg(&config).arg("expire"));
    f.expect(victim_state(victim.path()) == before, Harm::HoleOpen, || {
        format!(
            "a root expire deleted in {} through a planted files/ link",
            victim.path().display()
        )
    });
}

/// A root `restore --force` and `recover --force` over a directory with a running cluster below
/// it: refused, and the cluster keeps running with its rows.
fn force_over_a_running_cluster(f: &mut Faults, c: &Cluster) {
    let running = Cluster::start(ClusterOptions::default().wal_segsize_mb(1).archive(false));
    create_rows(&running, 10);
    for (what, args) in [
        ("restore --force", vec!["restore", "--force"]),
        (
            "recover --force",
            vec!["recover", "--force", "--no-start", "--target", "immediate"],
        ),
    ] {
        f.tried(1);
        let out = run(root_pitr(c.repo()).args(&args).arg("--pgdata").arg(running.dir()));
        let intact = running.is_running() && running.try_psql("SELECT count(*) FROM t").ok().as_deref() == Some("10");
        f.expect(!out.success() && intact, Harm::HoleOpen, || {
            format!(
                "a root {what} over {} (a running cluster below it) exits {:?}, the cluster {}",
                running.dir().display(),
                out.code(),
                if intact { "survived" } else { "is damaged" }
            )
        });
    }
}

/// The repository's owner rewrites a backup's manifest (and its copy), with a valid checksum,
/// for a restore and a recover run by root: a file at an absolute path and one below `../..`,
/// both mode 4755; a file of the data directory made setuid; a directory `..`; a setgid
/// directory; a file entry dropped with the totals fixed; a tablespace in a root directory. Root
/// writes nothing outside the target, no set-id file exists afterwards, and verify and
/// check-integrity exit 2 (but for the tablespace, which may legitimately be anywhere).
fn owner_tampers_manifest(f: &mut Faults) {
    let c = small_cluster();
    create_rows(&c, 100);
    let id = backup_id(&c, &[]);
    let dir = c.repo().join("hourly").join(&id);
    let (manifest_path, copy_path) = (dir.join("backup.manifest"), dir.join("backup.manifest.copy"));
    let original = read(&manifest_path);
    let clean = Manifest::from_bytes(&original, "the manifest").expect("the manifest reads");
    let victim = root_victim("faults-victim-manifest", &["existing"]);
    let escape = format!("pitr-faults-escape-{}", std::process::id());
    let template = clean
        .files
        .iter()
        .find(|e| e.path == "PG_VERSION")
        .expect("PG_VERSION")
        .clone();
    for tampering in manifest_tamperings(victim.path(), &escape, &template) {
        f.tried(1);
        let mut manifest = clean.clone();
        (tampering.tamper)(&mut manifest);
        plant_tablespace_objects(&dir, &manifest);
        rewrite_keeping_mode(&manifest_path, &manifest.to_bytes());
        rewrite_keeping_mode(&copy_path, &manifest.to_bytes());
        root_restores(f, &c, tampering.what, victim.path(), &escape);
        if tampering.verify_can_tell {
            expect_tampering_found(f, &c, &dir, tampering.what);
        }
        let _ = fs::remove_dir_all(dir.join("files/pg_tblspc"));
    }
    rewrite_keeping_mode(&manifest_path, &original);
    rewrite_keeping_mode(&copy_path, &original);
}

/// One way to rewrite a manifest.
struct Tampering<'a> {
    what: &'static str,
    tamper: Box<dyn Fn(&mut Manifest) + 'a>,
    /// Whether verify can tell (a tablespace may legitimately be anywhere).
    verify_can_tell: bool,
}

/// The tamperings of [`owner_tampers_manifest`]: `victim` is root's directory, `escape` a name
/// for files outside the target, `template` the entry of `PG_VERSION`.
fn manifest_tamperings<'a>(victim: &'a Path, escape: &'a str, template: &'a FileEntry) -> Vec<Tampering<'a>> {
    let setuid_file = move |path: String| FileEntry {
        path,
        mode: 0o4755,
        ..template.clone()
    };
    let tampering = |what, tamper: Box<dyn Fn(&mut Manifest) + 'a>, verify_can_tell| Tampering {
        what,
        tamper,
        verify_can_tell,
    };
    vec![
        tampering(
            "a setuid file at an absolute path",
            Box::new(move |m| {
                m.files
                    .insert(0, setuid_file(victim.join(escape).display().to_string()))
            }),
            true,
        ),
        tampering(
            "a setuid file below ../..",
            Box::new(move |m| m.files.insert(0, setuid_file(format!("../../{escape}")))),
            true,
        ),
        tampering(
            "PG_VERSION made setuid",
            Box::new(|m| {
                m.files
                    .iter_mut()
                    .filter(|e| e.path == "PG_VERSION")
                    .for_each(|e| e.mode = 0o4755)
            }),
            true,
        ),
        tampering(
            "a directory ../",
            Box::new(move |m| {
                let path = format!("../{escape}");
                m.directories.insert(0, DirEntry { path, mode: 0o755 })
            }),
            true,
        ),
        tampering("a setgid directory", Box::new(|m| m.directories[0].mode = 0o2755), true),
        tampering(
            "a file entry dropped, totals fixed",
            Box::new(|m| {
                let at = m.files.iter().position(|e| e.path == "PG_VERSION").expect("PG_VERSION");
                let dropped = m.files.remove(at);
                m.original_bytes -= dropped.size;
                m.stored_bytes -= dropped.stored_size;
            }),
            true,
        ),
        tampering(
            "a tablespace in root's directory",
            Box::new(move |m| {
                m.tablespaces.push(Tablespace {
                    oid: 99_999,
                    location: victim.display().to_string(),
                });
                m.files.push(FileEntry {
                    path: "pg_tblspc/99999/evil".into(),
                    ..template.clone()
                });
            }),
            false,
        ),
    ]
}

/// The objects a tampered manifest's tablespace files are read from, as the owner plants them.
fn plant_tablespace_objects(dir: &Path, manifest: &Manifest) {
    for entry in manifest.files.iter().filter(|e| e.path.starts_with("pg_tblspc/")) {
        let object = dir.join("files").join(&entry.path);
        run_ok(server_command("mkdir").arg("-p").arg(object.parent().expect("dir")));
        run_ok(server_command("cp").arg(dir.join("files/PG_VERSION")).arg(&object));
    }
}

/// A root restore and a root `recover --no-start` from the tampered repository: nothing written
/// outside their targets (`escape` names what would be), no set-id entry anywhere near, root's
/// `victim` directory unchanged.
fn root_restores(f: &mut Faults, c: &Cluster, what: &str, victim: &Path, escape: &str) {
    let targets = TestDir::new("faults-root-restore");
    let before = victim_state(victim);
    run(root_pitr(c.repo())
        .arg("restore")
        .arg("--pgdata")
        .arg(targets.join("restored")));
    run(root_pitr(c.repo())
        .args(["recover", "--no-start", "--target", "immediate", "--pgdata"])
        .arg(targets.join("recovered")));
    let outside: Vec<PathBuf> = [
        victim.join(escape),
        targets.join(escape),
        PathBuf::from("/tmp").join(escape),
        Path::new("/").join(escape),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect();
    let set_id: Vec<PathBuf> = [targets.path(), victim, c.dir()]
        .iter()
        .flat_map(|d| set_id_entries(d))
        .collect();
    f.expect(
        outside.is_empty() && set_id.is_empty() && victim_state(victim) == before,
        Harm::HoleOpen,
        || format!("manifest with {what}: root wrote {outside:?} outside the target, set-id entries {set_id:?}"),
    );
    for p in &outside {
        let _ = fs::remove_file(p).or_else(|_| fs::remove_dir_all(p));
    }
}

/// verify and check-integrity of the backup in `dir` must exit 2.
fn expect_tampering_found(f: &mut Faults, c: &Cluster, dir: &Path, what: &str) {
    let checked = verify(c, c.repo());
    f.expect(checked.code() == Some(2), Harm::Undetected, || {
        format!("manifest with {what}: verify exits {:?}", checked.code())
    });
    let integrity = c.pitr(&["check-integrity", dir.to_str().expect("UTF-8")]);
    f.expect(integrity.code() == Some(2), Harm::Undetected, || {
        format!("manifest with {what}: check-integrity exits {:?}", integrity.code())
    });
}

// ---------------------------------------------------------------------------------------------
// 6. Path traversal
// ---------------------------------------------------------------------------------------------

/// Names and paths that lead out of where they belong: `%f` (archive-get exits 200 and writes
/// nothing), `%p` outside the data directory (refused for get and push), backup ids of
/// `restore` and `recover` (refused, nothing written), and check-integrity of a backup outside
/// any repository (exit 2).
fn traversal(f: &mut Faults) {
    let c = small_cluster();
    create_rows(&c, 100);
    let id = backup_id(&c, &[]);
    let (segment, _) = archived_segment(&c);
    let standby = fake_data_dir(&c, "standby");
    names_leading_out(f, &c, &standby);
    destinations_outside(f, &c, &standby, &segment);
    pushes_from_outside(f, &c, &standby, &segment);
    backup_ids_leading_out(f, &c, &id);
    backups_outside_a_repository(f, &c, &id);
}

/// `%f` that leads out of the archive: exit 200, nothing written.
fn names_leading_out(f: &mut Faults, c: &Cluster, standby: &Path) {
    let restored = standby.join("pg_wal/RECOVERYXLOG");
    for name in [
        "../../etc/passwd",
        "../repo.json",
        "/etc/passwd",
        "..",
        "000000010000000000000001/../../../etc/passwd",
        "00000001.history/../../repo.json",
    ] {
        f.tried(1);
        let out = run(pitr_in(c, standby, c.repo()).args(["archive-get", name, "pg_wal/RECOVERYXLOG"]));
        f.expect(!restored.exists(), Harm::HoleOpen, || {
            format!("archive-get {name:?} wrote the destination")
        });
        f.expect(out.code() == Some(200), Harm::WrongExit, || {
            format!("archive-get {name:?} exits {:?}, expected 200", out.code())
        });
        let _ = fs::remove_file(&restored);
    }
}

/// `%p` of archive-get outside the data directory: exit 200, nothing written there.
fn destinations_outside(f: &mut Faults, c: &Cluster, standby: &Path, segment: &str) {
    let outside = c.test_dir().join("outside");
    for dest in ["../outside", "pg_wal/../../outside", outside.to_str().expect("UTF-8")] {
        f.tried(1);
        let out = run(pitr_in(c, standby, c.repo()).args(["archive-get", segment, dest]));
        f.expect(out.code() == Some(200) && !outside.exists(), Harm::HoleOpen, || {
            format!(
                "archive-get {segment} {dest:?} (outside the data directory) exits {:?}",
                out.code()
            )
        });
        let _ = fs::remove_file(&outside);
    }
}

/// `%p` of archive-push outside the data directory: refused. The file there is a copy of an
/// archived segment, so a push that followed the path would find it "already archived" and
/// exit 0.
fn pushes_from_outside(f: &mut Faults, c: &Cluster, standby: &Path, segment: &str) {
    let elsewhere = c
        .test_dir()
        .write(format!("elsewhere/{segment}"), read(&c.pg_wal().join(segment)));
    for path in [
        format!("../elsewhere/{segment}"),
        format!("pg_wal/../../elsewhere/{segment}"),
        elsewhere.display().to_string(),
    ] {
        f.tried(1);
        let out = run(pitr_in(c, standby, c.repo()).args(["archive-push", &path]));
        f.expect(!out.success(), Harm::HoleOpen, || {
            format!("archive-push {path:?} (outside the data directory) exits 0")
        });
    }
}

/// `restore --backup` and `recover --backup` with ids that are paths: refused, nothing written.
fn backup_ids_leading_out(f: &mut Faults, c: &Cluster, id: &str) {
    for bad in [
        "../x",
        &format!("../hourly/{id}"),
        &format!("{id}/.."),
        "/etc",
        &format!("hourly/{id}"),
        ".",
    ] {
        for command in ["restore", "recover"] {
            f.tried(1);
            let target = TestDir::new("faults-traversal");
            let data = target.join("data");
            let mut args = vec![command, "--backup", bad, "--pgdata", data.to_str().expect("UTF-8")];
            if command == "recover" {
                args.extend(["--target", "immediate", "--no-start"]);
            }
            let out = c.pitr(&args);
            f.expect(!out.success() && !data.exists(), Harm::HoleOpen, || {
                format!(
                    "{command} --backup {bad:?} exits {:?}{}",
                    out.code(),
                    if data.exists() { " and wrote the target" } else { "" }
                )
            });
        }
    }
}

/// check-integrity of a copy of a backup outside any repository, directly and through
/// `<repo>/hourly/../../..`: exit 2.
fn backups_outside_a_repository(f: &mut Faults, c: &Cluster, id: &str) {
    let elsewhere = TestDir::new("faults-not-a-repo");
    elsewhere.subdir("hourly");
    let copy = elsewhere.join(format!("hourly/{id}"));
    run_ok(
        own_command("cp")
            .arg("-a")
            .arg(c.repo().join("hourly").join(id))
            .arg(&copy),
    );
    let sneaky = c.repo().join(format!(
        "hourly/../../../{}/hourly/{id}",
        elsewhere.path().file_name().expect("name").to_string_lossy()
    ));
    for path in [copy, sneaky] {
        f.tried(1);
        let out = c.pitr(&["check-integrity", path.to_str().expect("UTF-8")]);
        f.expect(out.code() == Some(2), Harm::Undetected, || {
            format!(
                "check-integrity of {} (outside any repository) exits {:?}, expected 2",
                path.display(),
                out.code()
            )
        });
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Wrong promotions
// ---------------------------------------------------------------------------------------------

/// Recoveries whose needed WAL is damaged must stop, not promote short of their target. By
/// PostgreSQL's own archive recovery with pitr as restore_command, to the end of the archive
/// (where only archive-get's exit code tells an error from the end of WAL): a corrupt segment, a
/// dangling link in its place, `wal/` removed, an empty file system mounted over `wal/` (an
/// unmounted disk), and a corrupt segment read through `pitr --repo backup archive-get` (a
/// repository directory named like a subcommand). A segment missing while the archive is there
/// is an honest "absent": recovery to a restore point behind it must fail, and `pitr recover`
/// must refuse both to the restore point and to the latest WAL.
fn promotions(f: &mut Faults) {
    let c = small_cluster();
    create_rows(&c, 1000);
    backup_id(&c, &[]);
    let mut backups: Vec<BaseBackup> = (0..7).map(|_| c.base_backup()).collect();
    insert_rows(&c, 1001, 1500);
    let (needed, _) = archived_segment(&c);
    insert_rows(&c, 1501, 2000);
    c.psql("SELECT pg_create_restore_point('target')");
    c.switch_and_archive();

    // Without a fault, the recovery replays everything: so a stop below is the fault's doing.
    let control = Cluster::recover(backups.pop().expect("a base backup"), RecoveryOptions::default());
    control.expect_promoted();
    assert_eq!(
        control.psql("SELECT count(*) FROM t"),
        "2000",
        "the undamaged recovery replays all WAL"
    );
    drop(control);

    let mut next_backup = || backups.pop().expect("a base backup");
    damaged_segment(f, &c, &needed, &mut next_backup);
    unmounted_wal(f, &c, next_backup());
    repository_named_backup(f, &c, &needed, next_backup());
    missing_segment(f, &c, &needed, next_backup());
}

/// The segment `needed` corrupt, replaced by a dangling link, or behind a `wal/` moved away:
/// recoveries to the end of the archive must not promote.
fn damaged_segment(f: &mut Faults, c: &Cluster, needed: &str, next_backup: &mut dyn FnMut() -> BaseBackup) {
    let stored = stored_path(c.repo(), needed);
    let original = read(&stored);
    let aside = stored.with_extension("away");
    let (wal, away) = (c.repo().join("wal"), c.repo().join("wal.away"));
    type Change<'a> = Box<dyn Fn() + 'a>;
    let faults: Vec<(&str, Change, Change)> = vec![
        (
            "corrupt",
            Box::new(|| flip_byte_from_end(&stored, 100)),
            Box::new(|| rewrite_keeping_mode(&stored, &original)),
        ),
        (
            "a dangling link",
            Box::new(|| {
                fs::rename(&stored, &aside).expect("move away");
                symlink(c.test_dir().join("gone"), &stored).expect("symlink");
            }),
            Box::new(|| {
                fs::remove_file(&stored).expect("remove link");
                fs::rename(&aside, &stored).expect("move back");
            }),
        ),
        (
            "behind a removed wal/",
            Box::new(|| fs::rename(&wal, &away).expect("move wal away")),
            Box::new(|| fs::rename(&away, &wal).expect("move wal back")),
        ),
    ];
    for (what, damage, repair) in faults {
        let backup = next_backup();
        damage();
        let recovered = Cluster::recover(backup, RecoveryOptions::default());
        expect_no_promotion(f, recovered, &format!("{needed} {what}"));
        repair();
    }
}

/// An empty file system mounted over `wal/` (the archive's disk not mounted): recovery to the
/// end of the archive must not promote.
fn unmounted_wal(f: &mut Faults, c: &Cluster, backup: BaseBackup) {
    let unmounted = Tmpfs::mount(&c.repo().join("wal"), "1m");
    let recovered = Cluster::recover(backup, RecoveryOptions::default());
    expect_no_promotion(f, recovered, "wal/ not mounted (an empty file system there)");
    drop(unmounted);
}

/// `needed` corrupt, read through `pitr --repo backup archive-get` (the repository reached as
/// `backup` from the data directory): archive-get must still exit 200, so no promotion.
fn repository_named_backup(f: &mut Faults, c: &Cluster, needed: &str, backup: BaseBackup) {
    let stored = stored_path(c.repo(), needed);
    let original = read(&stored);
    symlink(c.repo(), backup.data.join("backup")).expect("symlink the repository as `backup`");
    let options = RecoveryOptions {
        restore_command: Some(format!("{} --repo backup archive-get %f %p", c.pitr_bin().display())),
        ..RecoveryOptions::default()
    };
    flip_byte_from_end(&stored, 100);
    let recovered = Cluster::recover(backup, options);
    expect_no_promotion(f, recovered, &format!("{needed} corrupt, via --repo backup"));
    rewrite_keeping_mode(&stored, &original);
}

/// `needed` missing while the archive is there (an honest "absent"): recovery to the restore
/// point behind it must fail, and `pitr recover` must refuse it to the restore point and to the
/// latest WAL.
fn missing_segment(f: &mut Faults, c: &Cluster, needed: &str, backup: BaseBackup) {
    let stored = stored_path(c.repo(), needed);
    let aside = stored.with_extension("away");
    fs::rename(&stored, &aside).expect("move away");
    let to_target = RecoveryOptions::default()
        .setting("recovery_target_name", "'target'")
        .setting("recovery_target_action", "'promote'");
    expect_no_promotion(
        f,
        Cluster::recover(backup, to_target),
        &format!("{needed} missing, to a restore point after it"),
    );
    for target in [["--target-name", "target"], ["--target", "latest"]] {
        f.tried(1);
        let nd = NewDir::new();
        let args = [target[0], target[1], "--verify-sql", "SELECT count(*) FROM t"];
        let out = recover_run(c, &nd, None, &args);
        f.expect(!out.success() && !nd.is_running(), Harm::WrongPromotion, || {
            format!(
                "pitr recover {} {} with {needed} missing promoted ({:?} rows)",
                target[0],
                target[1],
                out.line_after("verify: ")
            )
        });
    }
    fs::rename(&aside, &stored).expect("move back");
}

/// Records a wrong promotion when `recovered` promotes (it cannot have reached the target).
fn expect_no_promotion(f: &mut Faults, recovered: Cluster, what: &str) {
    f.tried(1);
    if let RecoveryOutcome::Promoted = recovered.wait_recovery_end() {
        let rows = recovered.try_psql("SELECT count(*) FROM t").unwrap_or_default();
        f.harm(
            Harm::WrongPromotion,
            format!("recovery with {what} promoted with {rows} rows instead of stopping"),
        );
    }
}
