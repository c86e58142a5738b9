//! `pitr drill`: restore drills, the proof that a backup restores and its data reads back, which
//! `verify` (checksums of stored objects) cannot give.
//!
//! For each tier's newest backup, a drill recovers a copy aside in a [`Scratch`] directory on a
//! private socket ([`recover::plan_recovery`] with `--backup`, target `immediate`, or with
//! `random` a random time inside the backup's recoverable window; promoted, never archiving), then
//! checks the data: `pg_amcheck --all --heapallindexed` on every database that accepts
//! connections, the configured verification SQL, and, once the copy is stopped cleanly,
//! `pg_checksums --check` when data checksums are on. The copy is stopped and removed however the
//! drill ends. Production is never connected to. pitr lowers its own CPU and I/O priority first
//! (nice 19, idle I/O class), so the copy's server and the checks inherit it.
//!
//! Each drill is recorded in the repository as a checksummed JSON record,
//! `drills/<YYYYMMDDTHHMMSS>_<tier>.json` (UTC, create-only), with its RTO and RPO:
//!
//! - **RTO** (recovery time): the wall time from the start of the restore until the copy accepts
//!   connections after replay and promotion — restore plus replay.
//! - **RPO** (recovery point): the data a loss of production at the drill's start would lose
//!   with this repository: the age, at that moment, of the newest point recovery from the
//!   drilled backup reaches — the newest commit in the WAL archived without a gap after it (the
//!   end of its recoverable window), else the backup's own consistency point. It does not depend
//!   on the drill's own target.
//!
//! `verify` reads the newest record of each tier (alerts DrillFailed and DrillStale, metrics).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backup::manifest::ManifestSummary;
use crate::backup::{self, Tier};
use crate::codec::json;
use crate::error::{Error, Result};
use crate::interrupt;
use crate::pg::ctl::Owner;
use crate::pg::Server;
use crate::progress::Progress;
use crate::recover::{self, Plan, RecoveredCopy, Request, Scratch, Target, TimelineChoice};
use crate::repo::Repo;
use crate::storage::PutOutcome;

/// The directory of the drill records.
pub(crate) const DRILLS_DIR: &str = "drills/";

/// Lines of a failing tool's output kept in a check's detail.
const OUTPUT_LINES: usize = 12;

/// How to drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The tier to drill; `None`: every tier that holds a backup.
    pub tier: Option<Tier>,
    /// Recover to a random time inside the backup's recoverable window instead of its
    /// consistency point.
    pub random: bool,
    /// Where the scratch copy goes (a new 0700 directory below it).
    pub scratch_parent: PathBuf,
    /// SQL run on the copy (database `postgres`); an error fails the drill.
    pub verify_sql: Option<String>,
    /// Files restored at once.
    pub jobs: usize,
    /// This pitr with its repository and config options, for the copy's restore_command.
    pub pitr_command: String,
}

/// One check of the copy's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillCheck {
    /// `recovery`, `amcheck`, `checksums` or `verify_sql`.
    pub check: String,
    /// Whether it passed.
    pub passed: bool,
    /// What it found (the relations amcheck flags, the query's first row, why it failed).
    pub detail: String,
}

/// The record of one drill, as stored in `drills/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillRecord {
    /// When the drill started.
    pub started: DateTime<Utc>,
    /// The tier drilled.
    pub tier: Tier,
    /// The backup restored.
    pub backup_id: String,
    /// The recovery target: `immediate`, or the time (RFC 3339).
    pub target: String,
    /// The LSN the copy reports as replayed (`pg_last_wal_replay_lsn`).
    pub reached_lsn: Option<String>,
    /// The time of the last replayed commit the copy reports.
    pub reached_time: Option<String>,
    /// Restore plus replay wall time, in seconds.
    pub rto_seconds: Option<f64>,
    /// The age of `recoverable_until` when the drill started, in seconds.
    pub rpo_seconds: Option<f64>,
    /// The newest moment recovery from the backup reaches: the newest commit archived without a
    /// gap after it, else its consistency point.
    pub recoverable_until: Option<DateTime<Utc>>,
    /// Bytes of the backup restored.
    pub bytes_restored: u64,
    /// The checks, in the order they ran.
    pub checks: Vec<DrillCheck>,
    /// Every check passed.
    pub passed: bool,
}

impl DrillRecord {
    /// The record of a drill of `backup_id` (of `tier`) that started at `started` and has
    /// reached nothing yet: to `immediate`, not passed, no checks.
    pub fn begun(started: DateTime<Utc>, tier: Tier, backup_id: &str) -> DrillRecord {
        DrillRecord {
            started,
            tier,
            backup_id: backup_id.into(),
            target: "immediate".into(),
            reached_lsn: None,
            reached_time: None,
            rto_seconds: None,
            rpo_seconds: None,
            recoverable_until: None,
            bytes_restored: 0,
            checks: Vec::new(),
            passed: false,
        }
    }

    /// The key of the record in the repository.
    pub(crate) fn key(&self) -> String {
        format!(
            "{DRILLS_DIR}{}_{}.json",
            self.started.format("%Y%m%dT%H%M%S"),
            self.tier
        )
    }

    /// The failed checks, as one line.
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.check, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What `pitr drill` did.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// One record per tier drilled, as stored.
    pub drills: Vec<DrillRecord>,
    /// Every drill passed.
    pub passed: bool,
    /// The priority pitr could not lower, when it could not (the drill ran anyway).
    pub priority_note: Option<String>,
    /// Why nothing was drilled, when the repository holds no backup at all: not a failure
    /// (verify's BackupMissing tells of the missing backups).
    pub nothing_to_drill: Option<String>,
}

/// What a drill of every tier says when the repository holds no backup.
const NO_BACKUP_TO_DRILL: &str = "no backup to drill: the repository holds none yet (take one with `pitr backup`)";

/// Drills the newest backup of the tier asked for, or of every tier holding one; records each
/// drill. Every tier of a repository without backups is nothing to drill, not an error. An
/// error when the tier asked for holds no backup, when a record cannot be written, or on an
/// interruption: a failed restore, replay or check is a failed drill.
pub async fn drill(repo: &Repo, options: &DrillOptions, progress: &dyn Progress) -> Result<DrillReport> {
    let backups = backup::load_summaries(repo)?;
    let tiers: Vec<Tier> = match options.tier {
        Some(tier) => vec![tier],
        None => Tier::ALL
            .into_iter()
            .filter(|t| backups.iter().any(|m| m.tier == *t))
            .collect(),
    };
    let newest: Vec<&ManifestSummary> = tiers
        .iter()
        .map(|tier| {
            backups.iter().rfind(|m| m.tier == *tier).ok_or_else(|| {
                Error::Refused(format!(
                    "the repository holds no {tier} backup to drill: take one with `pitr backup --tier {tier}`"
                ))
            })
        })
        .collect::<Result<_>>()?;
    if newest.is_empty() {
        return Ok(DrillReport {
            drills: Vec::new(),
            passed: true,
            priority_note: None,
            nothing_to_drill: Some(NO_BACKUP_TO_DRILL.into()),
        });
    }
    let priority_note = lower_priority().err();
    if let Some(note) = &priority_note {
        progress.warn(note);
    }
    let mut drills = Vec::new();
    for backup in newest {
        let record = drill_backup(repo, backup, options, progress).await?;
        store(repo, &record)?;
        drills.push(record);
    }
    Ok(DrillReport {
        passed: drills.iter().all(|d| d.passed),
        drills,
        priority_note,
        nothing_to_drill: None,
    })
}

/// Nice 19 and the idle I/O class for pitr itself, before it starts any child: PostgreSQL,
/// pg_amcheck and pg_checksums inherit them. `Err` says what could not be lowered.
fn lower_priority() -> std::result::Result<(), String> {
    rustix::process::setpriority_process(None, 19).map_err(|e| format!("could not lower pitr's CPU priority: {e}"))?;
    // The ioprio_set system call has no safe wrapper: util-linux's ionice makes it for this process.
    let pid = std::process::id().to_string();
    match Command::new("ionice").args(["-c", "3", "-p", &pid]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "could not set the idle I/O class (ionice -c 3): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!(
            "could not set the idle I/O class: ionice (util-linux) did not run: {e}"
        )),
    }
}

/// Writes the record, create-only.
fn store(repo: &Repo, record: &DrillRecord) -> Result<()> {
    let key = record.key();
    match repo.storage().put_if_absent(&key, &json::to_vec(record))? {
        PutOutcome::Created => Ok(()),
        PutOutcome::AlreadyExists => Err(Error::Refused(format!(
            "{} exists already: a drill of the {} tier started in the same second; this drill is not recorded",
            repo.storage().describe(&key),
            record.tier
        ))),
    }
}

/// Drills one backup: plan, space, the copy, the checks, the cleanup.
async fn drill_backup(
    repo: &Repo,
    backup: &ManifestSummary,
    options: &DrillOptions,
    progress: &dyn Progress,
) -> Result<DrillRecord> {
    let started = Utc::now();
    let mut record = DrillRecord::begun(started, backup.tier, &backup.id);
    let planned = plan(repo, backup, options, started);
    let (pinned, plan) = match planned {
        Ok((pinned, plan, newest_commit)) => {
            let until = newest_commit.unwrap_or(backup.stop_time).max(backup.stop_time);
            record.recoverable_until = Some(until);
            record.rpo_seconds = Some(seconds_between(until, started));
            (pinned, plan)
        }
        Err(e) => return Ok(failed(record, "recovery", e.to_string())),
    };
    if let Target::Time { time, .. } = plan.target {
        record.target = time.to_rfc3339();
    }
    if let Err(e) = recover::check_space(&plan, &options.scratch_parent.join("data")) {
        return Ok(failed(record, "recovery", e.to_string()));
    }
    let scratch = match Scratch::create(&pinned, &options.scratch_parent, "pitr-drill-", plan.pg_version, false) {
        Ok(scratch) => scratch,
        Err(e) => return Ok(failed(record, "recovery", e.to_string())),
    };
    let result = check_copy(&pinned, &plan, &scratch, options, &mut record, progress).await;
    let removed = scratch.finish();
    match (result, removed) {
        // Not recover's words on what is left: the copy is cleaned up here.
        (Err(Error::Interrupted(_)), removed) => Err(Error::Interrupted(format!(
            "drill of {} interrupted; {}; nothing recorded",
            backup.id,
            match removed {
                Ok(_) => format!("the copy is stopped and {} removed", scratch.dir.display()),
                Err(e) => format!(
                    "the copy could not be cleaned up ({e}): remove {}",
                    scratch.dir.display()
                ),
            }
        ))),
        (_, Err(e)) => Err(Error::Refused(format!(
            "drill of {}: the copy could not be cleaned up: {e}; remove {} (stop its server first)",
            backup.id,
            scratch.dir.display()
        ))),
        (Err(e), Ok(_)) => Ok(failed(record, "recovery", e.to_string())),
        (Ok(()), Ok(_)) => {
            record.passed = record.checks.iter().all(|c| c.passed);
            Ok(record)
        }
    }
}

/// The record of a drill that failed at `check` for `why`.
fn failed(mut record: DrillRecord, check: &str, why: String) -> DrillRecord {
    record.checks.push(DrillCheck {
        check: check.into(),
        passed: false,
        detail: why,
    });
    record.passed = false;
    record
}

/// Seconds from `then` to `now`.
fn seconds_between(then: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    now.signed_duration_since(then).num_milliseconds() as f64 / 1000.0
}

/// The plan for `backup` (its consistency point, or with `random` a random time of its window),
/// with the newest archived commit its window reaches.
fn plan(
    repo: &Repo,
    backup: &ManifestSummary,
    options: &DrillOptions,
    started: DateTime<Utc>,
) -> Result<(Repo, Plan, Option<DateTime<Utc>>)> {
    let request = |target| Request {
        target,
        exclusive: false,
        before: false,
        timeline: TimelineChoice::Latest,
        backup: Some(backup.id.clone()),
    };
    let (pinned, immediate) = recover::plan_recovery(repo, &request(Target::Immediate), None, options.jobs)?;
    let timeline = immediate
        .timeline_path
        .last()
        .map_or(backup.timeline, |step| step.timeline);
    let state = recover::repo_state(&pinned)?;
    let newest_commit = recover::reach(&state, timeline, &backup.id)?.and_then(|reach| reach.newest_time);
    let window = newest_commit.filter(|newest| *newest > backup.stop_time);
    let (Some(newest), true) = (window, options.random) else {
        return Ok((pinned, immediate, newest_commit));
    };
    let span = newest.signed_duration_since(backup.stop_time).num_milliseconds().max(1) as u64;
    let time = backup.stop_time + chrono::TimeDelta::milliseconds((random_u64() % span + 1) as i64);
    let target = Target::Time {
        time: time.min(started),
        assumed_utc: false,
    };
    let (pinned, plan) = recover::plan_recovery(repo, &request(target), None, options.jobs)?;
    Ok((pinned, plan, newest_commit))
}

/// A random number from the standard library's randomly seeded hasher.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128);
    hasher.finish()
}

/// Recovers the copy and runs the checks on it, recording each; stops it cleanly at the end.
async fn check_copy(
    repo: &Repo,
    plan: &Plan,
    scratch: &Scratch,
    options: &DrillOptions,
    record: &mut DrillRecord,
    progress: &dyn Progress,
) -> Result<()> {
    let clock = Instant::now();
    let copy = scratch
        .recover(
            repo,
            plan,
            options.jobs,
            &options.pitr_command,
            options.verify_sql.clone(),
            progress,
        )
        .await?;
    record.rto_seconds = Some(clock.elapsed().as_secs_f64());
    let report = &copy.report;
    record.bytes_restored = report.restored.bytes;
    if let Some(state) = &report.server_state {
        record.reached_lsn = state.replay_lsn.clone();
        record.reached_time = state.last_commit_time.clone();
    }
    record.checks.push(DrillCheck {
        check: "recovery".into(),
        passed: true,
        detail: report
            .outcome
            .as_ref()
            .and_then(|o| o.stopped.clone())
            .unwrap_or_else(|| "the copy reached its target and promoted".into()),
    });
    record.checks.push(amcheck(&copy, plan.pg_version));
    // An interrupt reaches pg_amcheck too: its failure then says nothing about the data.
    interrupt::check("checking the copy with pg_amcheck")?;
    if let Some(sql) = &options.verify_sql {
        record.checks.push(verify_sql_check(sql, report));
    }
    let checksums_on = data_checksums(&copy).await?;
    scratch.stop()?;
    if checksums_on {
        record.checks.push(checksums(scratch));
        interrupt::check("checking the copy with pg_checksums")?;
    }
    Ok(())
}

/// Whether the copy has data checksums.
async fn data_checksums(copy: &RecoveredCopy) -> Result<bool> {
    let server = Server::connect(&copy.server.connection("postgres")).await?;
    let rows = server.query_rows("SHOW data_checksums").await?;
    Ok(rows.first().and_then(|r| r.first().cloned().flatten()).as_deref() == Some("on"))
}

/// A client program of the copy's major: beside its server binaries, else Debian's directory.
fn client_program(bindir: &Path, major: u32, name: &str) -> Option<PathBuf> {
    [
        bindir.join(name),
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/{name}")),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// `pg_amcheck --all --heapallindexed --install-missing` on the copy; a failure names the
/// relations it flags.
fn amcheck(copy: &RecoveredCopy, major: u32) -> DrillCheck {
    let check = |passed, detail| DrillCheck {
        check: "amcheck".into(),
        passed,
        detail,
    };
    let Some(program) = client_program(&copy.server.bindir, major, "pg_amcheck") else {
        return check(
            false,
            format!(
                "pg_amcheck of PostgreSQL {major} is not installed (beside the server binaries or in \
                 /usr/lib/postgresql/{major}/bin; PostgreSQL 14 and later ship it): install it"
            ),
        );
    };
    let port = copy.server.port().unwrap_or(5432).to_string();
    let out = run_as(
        &copy.server.owner,
        &program,
        &[
            "-h".as_ref(),
            copy.server.socket_dir.as_os_str(),
            "-p".as_ref(),
            port.as_ref(),
            "-U".as_ref(),
            copy.server.owner.name.as_ref(),
            "--all".as_ref(),
            "--heapallindexed".as_ref(),
            "--install-missing".as_ref(),
        ],
    );
    match out {
        Ok(out) if out.status.success() => check(
            true,
            "every table and index of every database that accepts connections".into(),
        ),
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let relations = flagged_relations(&stdout);
            let what = if relations.is_empty() {
                "pg_amcheck failed".to_string()
            } else {
                format!("corruption in {}", relations.join(", "))
            };
            check(false, format!("{what}: {}", tail(&stdout, &out.stderr)))
        }
        Err(e) => check(false, e.to_string()),
    }
}

/// The relations pg_amcheck reports, as it names them (`heap table "db.schema.t"`).
fn flagged_relations(output: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in output.lines() {
        let Some((kind, rest)) = ["heap table \"", "btree index \"", "toast table \""]
            .iter()
            .find_map(|kind| Some((kind, line.strip_prefix(kind)?)))
        else {
            continue;
        };
        if let Some((name, _)) = rest.split_once('"') {
            let named = format!("{} {name}", kind.trim_end_matches([' ', '"']));
            if !found.contains(&named) {
                found.push(named);
            }
        }
    }
    found
}

/// The first lines of a tool's output and its error output, on one line.
fn tail(stdout: &str, stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    stdout
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(OUTPUT_LINES)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Runs `program` as the copy's owner.
fn run_as(owner: &Owner, program: &Path, args: &[&std::ffi::OsStr]) -> Result<std::process::Output> {
    owner
        .command(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(Error::io("run", program))
}

/// The verification query's outcome, as recover reported it.
fn verify_sql_check(sql: &str, report: &recover::Report) -> DrillCheck {
    let (passed, detail) = match (&report.verify_rows, &report.verify_error) {
        (_, Some(error)) => (false, format!("{sql}: {error}")),
        (Some(rows), None) => {
            let first = rows.first().map(|row| {
                row.iter()
                    .map(|v| v.as_deref().unwrap_or("NULL"))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            (
                true,
                format!("{} rows; first: {}", rows.len(), first.unwrap_or_else(|| "-".into())),
            )
        }
        (None, None) => (false, format!("{sql}: the query did not run")),
    };
    DrillCheck {
        check: "verify_sql".into(),
        passed,
        detail,
    }
}

/// `pg_checksums --check` on the stopped copy.
fn checksums(scratch: &Scratch) -> DrillCheck {
    let check = |passed, detail| DrillCheck {
        check: "checksums".into(),
        passed,
        detail,
    };
    let program = scratch.bindir.join("pg_checksums");
    match run_as(
        &scratch.owner,
        &program,
        &["--check".as_ref(), "-D".as_ref(), scratch.data.as_os_str()],
    ) {
        Ok(out) if out.status.success() => check(true, "every data page's checksum matches".into()),
        Ok(out) => check(
            false,
            format!(
                "pg_checksums --check failed: {}",
                tail(&String::from_utf8_lossy(&out.stdout), &out.stderr)
            ),
        ),
        Err(e) => check(false, e.to_string()),
    }
}

/// The drill records as read: one damaged record never hides the others.
#[derive(Debug, Default, Serialize)]
pub struct DrillHistory {
    /// The readable records, oldest first.
    pub drills: Vec<DrillRecord>,
    /// Why each unreadable record (or stray name in `drills/`) could not be used.
    pub unreadable: Vec<String>,
}

impl DrillHistory {
    /// The newest record of each tier.
    pub fn newest_by_tier(&self) -> BTreeMap<Tier, &DrillRecord> {
        let mut newest = BTreeMap::new();
        for record in &self.drills {
            newest.insert(record.tier, record);
        }
        newest
    }

    /// The newest passing record of each tier.
    pub fn newest_passed_by_tier(&self) -> BTreeMap<Tier, &DrillRecord> {
        let mut newest = BTreeMap::new();
        for record in self.drills.iter().filter(|d| d.passed) {
            newest.insert(record.tier, record);
        }
        newest
    }
}

/// Every drill record, oldest first. Names are validated (`<YYYYMMDDTHHMMSS>_<tier>.json`, the
/// record's own time and tier), records read with their checksum; an error only when the
/// directory cannot be listed.
pub fn history(repo: &Repo) -> Result<DrillHistory> {
    let mut history = DrillHistory::default();
    for name in repo.storage().list(DRILLS_DIR)? {
        let key = format!("{DRILLS_DIR}{name}");
        let what = repo.storage().describe(&key);
        if !is_record_name(&name) {
            history.unreadable.push(format!(
                "{what}: not a drill record name (<YYYYMMDDTHHMMSS>_<tier>.json)"
            ));
            continue;
        }
        let read = match repo.storage().get(&key) {
            Ok(Some(bytes)) => json::from_slice::<DrillRecord>(&bytes, &what),
            Ok(None) => continue,
            Err(e) => Err(e),
        };
        match read {
            Ok(record) if record.key() == key => history.drills.push(record),
            Ok(_) => history
                .unreadable
                .push(format!("{what}: its time or tier differs from its name")),
            Err(e) => history.unreadable.push(e.to_string()),
        }
    }
    history.drills.sort_by_key(|d| (d.started, d.tier));
    Ok(history)
}

/// `<YYYYMMDDTHHMMSS>_<tier>.json`.
pub(crate) fn is_record_name(name: &str) -> bool {
    let Some((stamp, tier)) = name.strip_suffix(".json").and_then(|n| n.split_once('_')) else {
        return false;
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    stamp.len() == 15
        && stamp.as_bytes()[8] == b'T'
        && digits(&stamp[..8])
        && digits(&stamp[9..])
        && tier.parse::<Tier>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_validated() {
        assert!(is_record_name("20261207T040000_daily.json"));
        for bad in [
            "20261207T040000_monthly.json",
            "20261207_040000_daily.json",
            "../20261207T040000_daily.json",
            "20261207T040000_daily.json.tmp",
            "2026120XT040000_daily.json",
            "x",
        ] {
            assert!(!is_record_name(bad), "{bad}");
        }
    }

    #[test]
    fn amcheck_failures_name_the_relation() {
        let output = "heap table \"postgres.public.t\", block 0, offset 1:\n    line pointer redirection to item at \
                      offset 21840 exceeds maximum offset 4\nheap table \"postgres.public.t\", block 0, offset 2:\n\
                      btree index \"app.public.t_pkey\":\n    item order invariant violated\n";
        assert_eq!(
            flagged_relations(output),
            ["heap table postgres.public.t", "btree index app.public.t_pkey"]
        );
    }
}
