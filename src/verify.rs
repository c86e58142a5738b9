//! `pitr verify`, `check-integrity`, `check` and `info`: they run the library's checks and print
//! the result. verify also appends its log line and writes its metrics file whatever happened,
//! a missing repository included, so that a cron job or the daemon leaves a trace that
//! monitoring can read.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use pitr::backup::Tier;
use pitr::daemon::Job;
use pitr::pg::connection_settings;
use pitr::progress::Progress;
use pitr::repo::Repo;
use pitr::status_page::{self, StatusSources};
use pitr::verify::{self, metrics, CheckOptions, Status, Thresholds, VerifyOptions, VerifyReport};
use pitr::{Error, Result};

use crate::cli::{Command, ConnectionArgs};
use crate::commands::{runtime, with_server, Done};
use crate::output::{self, TerminalProgress};
use crate::settings::{optional_path, ServiceSettings, Settings};

/// Where verify leaves its trace.
struct Records {
    log_file: Option<PathBuf>,
    metrics_file: Option<PathBuf>,
}

/// `pitr verify`.
pub fn verify(command: &Command, settings: &Settings) -> Result<Done> {
    let Command::Verify {
        scope,
        max_age,
        log_file,
        metrics_file,
        now,
        jobs,
        connection,
        json,
    } = command
    else {
        unreachable!("called for verify only")
    };
    let service = settings.service().map_err(Error::InvalidInput)?;
    let options = VerifyOptions {
        scope: scope.parse()?,
        now: now.unwrap_or_else(Utc::now),
        thresholds: Thresholds {
            max_age: max_age.unwrap_or(service.verify.thresholds.max_age),
            ..service.verify.thresholds
        },
        expected_tiers: expected_tiers(settings, service),
        jobs: jobs.unwrap_or(settings.jobs),
    };
    let records = Records {
        log_file: log_file
            .clone()
            .map_or_else(|| service.verify.log_file.clone(), optional_path),
        metrics_file: metrics_file
            .clone()
            .map_or_else(|| service.verify.metrics_file.clone(), optional_path),
    };
    if let Some((repo, recipients)) = encrypted_without_identity(settings) {
        return verify_without_key(&repo, &recipients, *json);
    }
    let conninfo = connection.dbname.as_deref().or(settings.dbname.as_deref());
    let report = verify_and_record(settings, &options, conninfo, &records, &TerminalProgress::new(*json))?;
    if *json {
        output::json(&report)
    } else {
        output::verify_report(&report)
    }
    Ok(match report.status {
        Status::Ok => Done::Ok,
        Status::Warning => Done::Warnings,
        Status::Critical => Done::Critical,
    })
}

/// The repository and its recipients when it is encrypted and no identity is given. Any failure
/// to tell is left to the full verify, which records it in its log line and metrics.
fn encrypted_without_identity(settings: &Settings) -> Option<(Repo, Vec<String>)> {
    let repo = Repo::open(&settings.repo).ok()?.with_keys(settings.keys.clone());
    repo.generations().ok()??; // repo.json says what the repository is
    let recipients = repo.encrypted_for().ok()??;
    (!repo.can_decrypt().ok()?).then_some((repo, recipients))
}

/// `pitr verify` of an encrypted repository on a host without its identity: every object's
/// public header against its bytes. Whole objects give warnings (their contents were not
/// verified), damaged ones a critical result. No log line or metrics: they are a full verify's.
fn verify_without_key(repo: &Repo, recipients: &[String], json: bool) -> Result<Done> {
    let check = repo.check_envelopes()?;
    if json {
        output::json(&check)
    } else {
        println!(
            "repository {} is encrypted for {} and no identity is given: checked that its {} objects ({} MiB) are \
             whole, not what they hold; verify with the identity checks the backups and the WAL",
            repo.location(),
            pitr::crypt::list(recipients),
            check.objects,
            check.bytes >> 20
        );
        for damage in &check.damaged {
            println!("  damaged: {damage}");
        }
    }
    Ok(match check.damaged.is_empty() {
        true => Done::Warnings,
        false => Done::Critical,
    })
}

/// The tiers that should hold backups: scheduled in `[schedule]` (not "off") and kept by
/// retention (`keep_<tier>` above 0).
fn expected_tiers(settings: &Settings, service: &ServiceSettings) -> Vec<Tier> {
    Tier::ALL
        .into_iter()
        .filter(|tier| {
            let kept = match tier {
                Tier::Hourly => settings.retention.hourly,
                Tier::Daily => settings.retention.daily,
                Tier::Weekly => settings.retention.weekly,
            };
            kept > 0 && service.schedule.cron(Job::Backup(*tier)).is_some()
        })
        .collect()
}

/// Verifies, then records the outcome, a failure as much as a report.
fn verify_and_record(
    settings: &Settings,
    options: &VerifyOptions,
    conninfo: Option<&str>,
    records: &Records,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let result = run_verify(settings, options, conninfo, progress);
    record(&result, options, records, progress);
    result
}

fn run_verify(
    settings: &Settings,
    options: &VerifyOptions,
    conninfo: Option<&str>,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let repo = Repo::open(&settings.repo)?.with_keys(settings.keys.clone());
    let config = connection_settings(conninfo, &|k| std::env::var(k).ok())?;
    let observed = runtime().block_on(verify::observe_server(
        &repo,
        options.scope,
        &config,
        settings.slot.as_deref(),
    ));
    verify::verify(&repo, options, &observed, progress)
}

/// Writes the metrics file and appends the log line; failing to is a warning, not a verdict.
fn record(result: &Result<VerifyReport>, options: &VerifyOptions, records: &Records, progress: &dyn Progress) {
    if let Some(path) = &records.metrics_file {
        let text = match result {
            Ok(report) => metrics::render(report),
            Err(_) => metrics::render_failure(options.scope, options.now),
        };
        if let Err(e) = metrics::write_textfile(path, &text) {
            progress.warn(&format!("the metrics file is not written: {e}"));
        }
    }
    if let Some(path) = &records.log_file {
        let line = output::verify_log_line(result.as_ref().map_err(ToString::to_string), options.scope);
        if let Err(e) = append_line(path, &line) {
            progress.warn(&format!(
                "the log line is not written: {e}; set log_file in [verify] or pass --log-file none"
            ));
        }
    }
}

/// Appends to verify's log, created 0640 (the umask can only make it stricter): monitoring may
/// read it by group, nobody else.
fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(Error::io("open", path))?;
    writeln!(file, "{line}").map_err(Error::io("append to", path))
}

/// `pitr check-integrity`; `settings` only matter for a backup id (which needs the repository).
pub fn check_integrity(
    target: &str,
    jobs: Option<usize>,
    json: bool,
    settings: std::result::Result<&Settings, &String>,
) -> Result<Done> {
    let configured_repo = || match settings {
        Ok(settings) => Repo::open(&settings.repo).map(|r| r.with_keys(settings.keys.clone())),
        Err(message) => Err(Error::Refused(message.clone())),
    };
    let jobs = jobs
        .or(settings.ok().map(|s| s.jobs))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let report = verify::check_integrity(target, &configured_repo, jobs, &TerminalProgress::new(json))?;
    if json {
        output::json(&report)
    } else {
        output::integrity_report(&report)
    }
    Ok(if report.sound { Done::Ok } else { Done::Critical })
}

/// `pitr check`.
pub fn check(
    repo: &Repo,
    connection: &ConnectionArgs,
    timeout: Duration,
    json: bool,
    settings: &Settings,
) -> Result<Done> {
    let progress = &TerminalProgress::new(json);
    let report = with_server(connection, settings, |server| async move {
        let options = CheckOptions {
            timeout,
            slot: settings.slot.clone(),
        };
        verify::check(repo, &server, options, progress).await
    })?;
    progress.finish();
    if json {
        output::json(&report)
    } else {
        output::check_report(&report)
    }
    Ok(Done::Ok)
}

/// `pitr info --html FILE`: the daemon's status page, written to a file.
pub fn status_page(repo: &Repo, settings: &Settings, path: &Path) -> Result<Done> {
    let page = status_page::gather(
        repo,
        &status_sources(settings, settings.service().map_err(Error::InvalidInput)?),
        Utc::now(),
    )?;
    status_page::write_page(path, &status_page::render(&page))?;
    output::written(path);
    Ok(Done::Ok)
}

/// What the status page judges alerts by, and verify's log for the last verification.
pub fn status_sources(settings: &Settings, service: &ServiceSettings) -> StatusSources {
    StatusSources {
        thresholds: service.verify.thresholds,
        expected_tiers: expected_tiers(settings, service),
        verify_log: service.verify.log_file.clone(),
    }
}

/// `pitr info`.
pub fn info(repo: &Repo, json: bool) -> Result<Done> {
    let now = Utc::now();
    let summary = pitr::info::info(repo, now)?;
    if json {
        output::json(&summary)
    } else {
        output::info(&summary, now)
    }
    Ok(Done::Ok)
}
