//! Settings, layered: built-in defaults < config file < environment < flags.
//!
//! The command line (`cli.rs`) already merges flags over environment variables; this module lays
//! the config file under them and turns the result into validated values before any work starts.
//! Its errors are usage errors: nothing has been tried yet.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pitr::backup::{Retention, Tier};
use pitr::codec::{Codec, Compression};
use pitr::crypt::{KeySource, Keys};
use pitr::daemon::{Job, Schedule};
use pitr::storage::Location;
use pitr::verify::Thresholds;
use serde::Deserialize;

use crate::cli::GlobalArgs;
use crate::logging::LogFormat;

/// Segments fetched ahead of recovery by default (pgBackRest's default queue is 128 MiB).
const DEFAULT_PREFETCH: u64 = 8;

/// The config file used when neither --config nor PITR_CONFIG names one.
const DEFAULT_CONFIG: &str = pitr::setup::DEFAULT_CONFIG_FILE;

/// The config file's keys. Unknown keys are errors, so a typo never silently falls back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    repo: Option<String>,
    pgdata: Option<PathBuf>,
    sync_to: Option<String>,
    compress: Option<String>,
    compress_level: Option<i32>,
    name: Option<String>,
    jobs: Option<usize>,
    dedup: Option<bool>,
    recipients_file: Option<PathBuf>,
    identity_file: Option<PathBuf>,
    spool: Option<PathBuf>,
    prefetch: Option<u64>,
    keep_hourly: Option<usize>,
    keep_daily: Option<usize>,
    keep_weekly: Option<usize>,
    dbname: Option<String>,
    slot: Option<String>,
    listen: Option<String>,
    log_format: Option<String>,
    drill_verify_sql: Option<String>,
    drill: Option<DrillFileSettings>,
    schedule: Option<ScheduleSettings>,
    verify: Option<VerifyFileSettings>,
}

/// `[verify]`: thresholds of the alerts and where verify writes its log line and metrics.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyFileSettings {
    max_age: Option<String>,
    backup_grace: Option<String>,
    wal_stale: Option<String>,
    slot_lag: Option<String>,
    drill_stale: Option<String>,
    log_file: Option<PathBuf>,
    metrics_file: Option<PathBuf>,
}

/// `[drill]`: how `pitr drill` (and so the daemon's drill job) runs when its flags are absent.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillFileSettings {
    scratch: Option<PathBuf>,
    random: Option<bool>,
}

/// verify's log file when none is configured; used only when its directory exists, so that
/// nothing is written (and nothing fails) until an operator creates it.
const DEFAULT_VERIFY_LOG: &str = "/var/log/pitr/verify.log";

/// `[schedule]`: cron patterns of the daemon's jobs ("off" disables one).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleSettings {
    hourly: Option<String>,
    daily: Option<String>,
    weekly: Option<String>,
    verify: Option<String>,
    sync: Option<String>,
    names: Option<String>,
    drill: Option<String>,
}

/// Where the daemon serves /metrics and /health unless `listen` says otherwise.
const DEFAULT_LISTEN: &str = "127.0.0.1:9817";

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the repository is: a directory or an S3 prefix.
    pub repo: Location,
    /// The data directory (`pgdata`) of watch, the daemon and init, unless --pgdata says otherwise.
    pub pgdata: Option<PathBuf>,
    /// The second repository `pitr sync` copies into (`sync_to`), if any.
    pub sync_to: Option<Location>,
    /// How archived files are compressed.
    pub codec: Codec,
    /// The deployment's name, the first part of backup ids.
    pub name: String,
    /// Files copied at once by backup and restore, unless a flag says otherwise.
    pub jobs: usize,
    /// Backups store their files deduplicated, in packs (`dedup`; `--dedup`/`--no-dedup` override).
    pub dedup: bool,
    /// The keys of an encrypted repository: recipients to write with, identities to read with
    /// (`recipients_file`, `identity_file`; PITR_RECIPIENTS_FILE, PITR_IDENTITY_FILE, PITR_IDENTITY).
    pub keys: Arc<Keys>,
    /// Backups kept per tier.
    pub retention: Retention,
    /// The config file that was read, passed on to the restore_command pitr writes.
    pub config: Option<PathBuf>,
    /// The spool directory, when not the default beside the data directory.
    pub spool: Option<PathBuf>,
    /// Segments archive-get fetches ahead (0: no prefetch).
    pub prefetch: u64,
    /// The flags and environment these settings came from, for reloads.
    pub source: GlobalArgs,
    /// Connection string for commands that talk to the server, unless --dbname is given.
    pub dbname: Option<String>,
    /// The physical replication slot watch and the daemon stream WAL from (`slot`), if any.
    pub slot: Option<String>,
    /// Where the daemon listens.
    pub listen: String,
    /// How watch and the daemon format their log lines.
    pub log_format: LogFormat,
    /// SQL `pitr drill` runs on each recovered copy (database `postgres`), unless --verify-sql
    /// says otherwise; an error fails the drill.
    pub drill_verify_sql: Option<String>,
    /// `[schedule]`, `[drill]` and `[verify]`, or what is wrong with them: see [`Settings::service`].
    service: Result<ServiceSettings, String>,
}

/// The config file's sections for the daemon's jobs, verify and drill. archive-push and
/// archive-get never use them, so a mistake in them must not stop PostgreSQL's archiving.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// The daemon's jobs.
    pub schedule: Schedule,
    /// `[drill]`: the drill options of the config file.
    pub drill: DrillSettings,
    /// verify's thresholds, log file and metrics file.
    pub verify: VerifySettings,
}

/// What `pitr drill` takes from the config file when its flags are absent.
#[derive(Debug, Clone, Default)]
pub struct DrillSettings {
    /// The directory the scratch copies go in (`scratch`): absolute, an existing directory.
    pub scratch: Option<PathBuf>,
    /// Recover to a random time of each backup's recoverable window (`random`), as --random.
    pub random: bool,
}

/// What verify needs from the settings.
#[derive(Debug, Clone)]
pub struct VerifySettings {
    /// The alert thresholds.
    pub thresholds: Thresholds,
    /// Where one line per run is appended (`None`: no log).
    pub log_file: Option<PathBuf>,
    /// The Prometheus textfile (`None`: not written).
    pub metrics_file: Option<PathBuf>,
}

impl Settings {
    /// Merges the layers and validates them.
    pub fn load(args: &GlobalArgs) -> Result<Settings, String> {
        let config = args
            .config
            .clone()
            .or_else(|| Path::new(DEFAULT_CONFIG).exists().then(|| DEFAULT_CONFIG.into()));
        let file = read_config(config.as_deref())?;
        Settings::layered(args, config, file)
    }

    /// [`Settings::load`] for `pitr init`, which writes the config file: the one named by
    /// --config or PITR_CONFIG, else the default one, read when it exists (empty otherwise).
    pub fn load_for_init(args: &GlobalArgs) -> Result<Settings, String> {
        let config = args.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into());
        let file = if config.exists() {
            read_config(Some(&config))?
        } else {
            FileSettings::default()
        };
        Settings::layered(args, Some(config), file)
    }

    /// The settings of the flags and environment `args` over the config file `file` (read from
    /// `config`), validated.
    fn layered(args: &GlobalArgs, config: Option<PathBuf>, file: FileSettings) -> Result<Settings, String> {
        let repo = match (&args.repo, file.repo) {
            (Some(path), _) => match path.to_str() {
                Some(text) => Location::parse(text).map_err(|e| e.to_string())?,
                None => Location::Local(path.clone()),
            },
            (None, Some(text)) => Location::parse(&text).map_err(|e| in_config(config.as_deref(), e))?,
            (None, None) => {
                return Err(
                    "no repository given: pass --repo DIR (or s3://bucket/prefix), set PITR_REPO, or \
                            set `repo` in the config file"
                        .into(),
                )
            }
        };
        let sync_to = file
            .sync_to
            .as_deref()
            .map(Location::parse)
            .transpose()
            .map_err(|e| in_config(config.as_deref(), format!("sync_to: {e}")))?;
        let compression = match (args.compress, file.compress.as_deref()) {
            (Some(compression), _) => compression,
            (None, Some(text)) => text.parse().map_err(|e: pitr::Error| in_config(config.as_deref(), e))?,
            (None, None) => Compression::default(),
        };
        let codec = Codec::new(compression, args.compress_level.or(file.compress_level)).map_err(|e| e.to_string())?;
        if let Some(conninfo) = &file.dbname {
            crate::cli::check_conninfo(conninfo)
                .map_err(|e| in_config(config.as_deref(), format!("dbname is not a connection string: {e}")))?;
        }
        if let Some(slot) = &file.slot {
            pitr::pg::replication::check_slot_name(slot)
                .map_err(|e| in_config(config.as_deref(), format!("slot: {e}")))?;
        }
        if let Some(pgdata) = file.pgdata.as_ref().filter(|p| !p.is_absolute()) {
            return Err(in_config(
                config.as_deref(),
                format!("pgdata '{}' must be an absolute path", pgdata.display()),
            ));
        }
        let name = file.name.unwrap_or_else(|| "main".into());
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!(
                "name '{name}' must be letters, digits and '-' (it starts every backup id)"
            ));
        }
        let defaults = Retention::default();
        let retention = Retention {
            hourly: file.keep_hourly.unwrap_or(defaults.hourly),
            daily: file.keep_daily.unwrap_or(defaults.daily),
            weekly: file.keep_weekly.unwrap_or(defaults.weekly),
        };
        let jobs = file
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let log_format = match (args.log_format, file.log_format.as_deref()) {
            (Some(format), _) => format,
            (None, Some(text)) => text.parse().map_err(|e: String| in_config(config.as_deref(), e))?,
            (None, None) => LogFormat::default(),
        };
        let keys = load_keys(
            file.recipients_file.as_deref(),
            file.identity_file.as_deref(),
            &|name| std::env::var_os(name).filter(|v| !v.is_empty()),
        )
        .map_err(|e| format!("encryption keys: {e}"))?;
        let service = service_settings(&file.schedule, &file.drill, &file.verify, sync_to.is_some())
            .map_err(|e| in_config(config.as_deref(), e));
        Ok(Settings {
            repo,
            pgdata: file.pgdata,
            sync_to,
            codec,
            name,
            jobs,
            dedup: file.dedup.unwrap_or(false),
            keys: Arc::new(keys),
            retention,
            config,
            spool: args.spool.clone().or(file.spool),
            prefetch: file.prefetch.unwrap_or(DEFAULT_PREFETCH),
            source: args.clone(),
            dbname: file.dbname,
            slot: file.slot,
            listen: file.listen.unwrap_or_else(|| DEFAULT_LISTEN.into()),
            log_format,
            drill_verify_sql: file.drill_verify_sql.filter(|sql| !sql.trim().is_empty()),
            service,
        })
    }

    /// `[schedule]`, `[drill]` and `[verify]`, checked, or what is wrong with them.
    /// [`Settings::load`] does not fail on a mistake there: every command but archive-push and
    /// archive-get asks for them first (src/main.rs), so the typo of a daemon setting is reported by
    /// every command a person or the daemon runs, yet never stops PostgreSQL's archiving.
    pub fn service(&self) -> Result<&ServiceSettings, String> {
        self.service.as_ref().map_err(Clone::clone)
    }
}

/// The sections of [`ServiceSettings`], checked.
fn service_settings(
    schedule_file: &Option<ScheduleSettings>,
    drill_file: &Option<DrillFileSettings>,
    verify_file: &Option<VerifyFileSettings>,
    with_target: bool,
) -> Result<ServiceSettings, String> {
    Ok(ServiceSettings {
        schedule: schedule(schedule_file.clone().unwrap_or_default(), with_target)?,
        drill: drill_settings(drill_file.clone().unwrap_or_default())?,
        verify: verify_settings(verify_file.clone().unwrap_or_default())?,
    })
}

/// The keys of an encrypted repository: the environment's files or identity text over the
/// config file's files. A key itself is never taken from a flag (it would show in `ps`).
fn load_keys(
    recipients_file: Option<&Path>,
    identity_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Keys, pitr::Error> {
    let recipients_env = env("PITR_RECIPIENTS_FILE").map(PathBuf::from);
    let identity_env = env("PITR_IDENTITY_FILE").map(PathBuf::from);
    let identity_text = env("PITR_IDENTITY").map(|v| v.to_string_lossy().into_owned());
    let recipients = recipients_env.as_deref().or(recipients_file).map(KeySource::File);
    let identities = match (identity_text, identity_env.as_deref().or(identity_file)) {
        (Some(text), _) => Some(KeySource::Env("PITR_IDENTITY", text)),
        (None, Some(path)) => Some(KeySource::File(path)),
        (None, None) => None,
    };
    Keys::load(recipients, identities)
}

fn read_config(path: Option<&Path>) -> Result<FileSettings, String> {
    let Some(path) = path else {
        return Ok(FileSettings::default());
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("could not read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let place = e
            .span()
            .map(|span| line_and_column(&text, span.start))
            .map_or_else(String::new, |(line, column)| {
                format!(" at line {line}, column {column}")
            });
        let reason = e.message().trim().replace('\n', " ");
        format!("config file {} is invalid{place}: {reason}", path.display())
    })
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// A problem with a value from the config file, saying which file.
fn in_config(config: Option<&Path>, problem: impl std::fmt::Display) -> String {
    match config {
        Some(path) => format!("config file {}: {problem}", path.display()),
        None => problem.to_string(),
    }
}

/// The daemon's schedule: the runbook's defaults, each replaced by its `[schedule]` key; the
/// sync job is off unless `sync` names a pattern, which needs `sync_to` (`with_target`).
fn schedule(file: ScheduleSettings, with_target: bool) -> Result<Schedule, String> {
    let sync = file.sync.as_deref().unwrap_or("off").trim();
    if !with_target && !matches!(sync, "" | "off") {
        return Err("[schedule] sync is set, but `sync_to` names no repository to sync to".into());
    }
    let patterns = Schedule::DEFAULTS.map(|(job, default)| {
        let configured = match job {
            Job::Backup(Tier::Hourly) => &file.hourly,
            Job::Backup(Tier::Daily) => &file.daily,
            Job::Backup(Tier::Weekly) => &file.weekly,
            Job::Verify => &file.verify,
            Job::Sync => &file.sync,
            Job::Names => &file.names,
            Job::Drill => &file.drill,
        };
        (job, configured.clone().unwrap_or_else(|| default.to_string()))
    });
    Schedule::new(patterns.iter().map(|(job, p)| (*job, p.as_str()))).map_err(|e| e.to_string())
}

/// `[drill]`, its scratch directory checked: absolute (the daemon's jobs run elsewhere than the
/// shell that wrote the config), and a directory now.
fn drill_settings(file: DrillFileSettings) -> Result<DrillSettings, String> {
    if let Some(scratch) = &file.scratch {
        if !scratch.is_absolute() {
            return Err(format!(
                "[drill] scratch '{}' must be an absolute path",
                scratch.display()
            ));
        }
        if !scratch.is_dir() {
            return Err(format!(
                "[drill] scratch '{}' is not a directory: create it (the drills' copies go in it) or name another",
                scratch.display()
            ));
        }
    }
    Ok(DrillSettings {
        scratch: file.scratch,
        random: file.random.unwrap_or(false),
    })
}

/// `[verify]` over the runbook's defaults (maximum age 168 h, grace 1 h, stale after 1 h, a
/// slot may hold back 1 GiB, a passing restore drill within 8 days).
fn verify_settings(file: VerifyFileSettings) -> Result<VerifySettings, String> {
    let defaults = Thresholds::default();
    let duration = |key: &str, text: Option<String>, default| {
        text.map_or(Ok(default), |t| {
            parse_duration(&t).map_err(|e| format!("[verify] {key}: {e}"))
        })
    };
    let default_log = Path::new(DEFAULT_VERIFY_LOG);
    let default_log = default_log
        .parent()
        .is_some_and(Path::is_dir)
        .then(|| default_log.to_path_buf());
    Ok(VerifySettings {
        thresholds: Thresholds {
            max_age: duration("max_age", file.max_age, defaults.max_age)?,
            backup_grace: duration("backup_grace", file.backup_grace, defaults.backup_grace)?,
            wal_stale: duration("wal_stale", file.wal_stale, defaults.wal_stale)?,
            slot_lag: file.slot_lag.map_or(Ok(defaults.slot_lag), |t| {
                parse_size(&t).map_err(|e| format!("[verify] slot_lag: {e}"))
            })?,
            drill_stale: duration("drill_stale", file.drill_stale, defaults.drill_stale)?,
        },
        log_file: file.log_file.map_or(default_log, optional_path),
        metrics_file: file.metrics_file.and_then(optional_path),
    })
}

/// A path setting where "none" turns the output off.
pub fn optional_path(path: PathBuf) -> Option<PathBuf> {
    (path.as_os_str() != "none").then_some(path)
}

/// A duration with its unit: "90s", "30m", "168h", "7d" or "2w".
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let invalid = || format!("'{text}' is not a duration: use a number and a unit, like 30m, 168h or 7d");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
    let number: u64 = text[..split].parse().map_err(|_| invalid())?;
    let unit = match &text[split..] {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit)
        .map(std::time::Duration::from_secs)
        .ok_or_else(invalid)
}

/// A size with its unit, as PostgreSQL writes them (powers of 1024): "512kB", "64MB", "1GB",
/// "2TB"; "B" for bytes, and "KiB", "MiB", "GiB", "TiB" too. Case does not matter.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("'{text}' is not a size: use a number and a unit, like 512MB or 1GB");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
    let number: u64 = text[..split].parse().map_err(|_| invalid())?;
    let shift = match text[split..].to_ascii_lowercase().as_str() {
        "b" => 0,
        "kb" | "kib" => 10,
        "mb" | "mib" => 20,
        "gb" | "gib" => 30,
        "tb" | "tib" => 40,
        _ => return Err(invalid()),
    };
    number.checked_mul(1 << shift).ok_or_else(invalid)
}

/// Loads the settings again (SIGHUP) from the same flags and environment variables, and the
/// config file as it is now.
pub fn reload(current: &Settings) -> Result<Settings, String> {
    Settings::load(&current.source)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("168h"), Ok(Duration::from_secs(168 * 3600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30min"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86400)));
        for bad in ["", "168", "h", "1.5h", "-1h", "7 d", "3y", "99999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn sizes_need_a_unit() {
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_size("512kB"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("100b"), Ok(100));
        for bad in ["", "1", "GB", "1.5GB", "-1GB", "1 GB", "1PB", "99999999999999TB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} must be refused");
        }
    }

    fn loaded(config_text: &str) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pitr.toml");
        std::fs::write(&config, config_text).unwrap();
        Settings::load(&GlobalArgs {
            repo: Some("/var/backups/pitr".into()),
            config: Some(config),
            ..GlobalArgs::default()
        })
    }

    #[test]
    fn pgdata_comes_from_the_config_file_and_must_be_absolute() {
        let settings = loaded("pgdata = \"/var/lib/postgresql/16/main\"\n").unwrap();
        assert_eq!(settings.pgdata, Some(PathBuf::from("/var/lib/postgresql/16/main")));
        assert_eq!(loaded("").unwrap().pgdata, None);
        let error = loaded("pgdata = \"main\"\n").unwrap_err();
        assert!(error.contains("pgdata 'main' must be an absolute path"), "{error}");
    }

    #[test]
    fn init_names_a_config_file_that_does_not_exist_yet() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("new.toml");
        let args = GlobalArgs {
            repo: Some("/var/backups/pitr".into()),
            config: Some(config.clone()),
            ..GlobalArgs::default()
        };
        assert!(Settings::load(&args).is_err(), "other commands need the file");
        assert_eq!(Settings::load_for_init(&args).unwrap().config, Some(config));
    }

    #[test]
    fn the_log_format_comes_from_the_flag_else_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pitr.toml");
        std::fs::write(&config, "repo = \"/srv/pitr\"\nlog_format = \"json\"\n").unwrap();
        let args = GlobalArgs {
            config: Some(config.clone()),
            ..GlobalArgs::default()
        };
        assert_eq!(Settings::load(&args).unwrap().log_format, LogFormat::Json);
        let flag = GlobalArgs {
            log_format: Some(LogFormat::Journald),
            ..args.clone()
        };
        assert_eq!(Settings::load(&flag).unwrap().log_format, LogFormat::Journald);
        std::fs::write(&config, "repo = \"/srv/pitr\"\nlog_format = \"syslog\"\n").unwrap();
        let error = Settings::load(&args).unwrap_err();
        assert!(
            error.contains("pitr.toml") && error.contains("log_format 'syslog'"),
            "{error}"
        );
    }

    #[test]
    fn the_drill_scratch_must_be_an_absolute_directory() {
        let dir = tempfile::tempdir().unwrap();
        let text = |path: &Path| format!("[drill]\nscratch = \"{}\"\nrandom = true\n", path.display());
        let drill = |text: &str| loaded(text).unwrap().service().map(|service| service.drill.clone());
        let settings = drill(&text(dir.path())).unwrap();
        assert_eq!(settings.scratch.as_deref(), Some(dir.path()));
        assert!(settings.random);
        assert_eq!(drill("").unwrap().scratch, None);
        let error = drill(&text(Path::new("scratch"))).unwrap_err();
        assert!(
            error.contains("pitr.toml") && error.contains("[drill] scratch 'scratch' must be an absolute path"),
            "{error}"
        );
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        for not_a_dir in [file, dir.path().join("missing")] {
            let error = drill(&text(&not_a_dir)).unwrap_err();
            assert!(error.contains("is not a directory"), "{error}");
        }
    }

    #[test]
    fn a_mistake_in_a_service_section_is_kept_for_the_commands_that_read_it() {
        for (text, what) in [
            ("[schedule]\nhourly = \"every hour\"\n", "every hour"),
            ("[verify]\nmax_age = \"7 days\"\n", "[verify] max_age"),
            ("[drill]\nscratch = \"/nonexistent/scratch\"\n", "[drill] scratch"),
            ("[schedule]\nsync = \"0 * * * *\"\n", "sync_to"),
        ] {
            let settings = loaded(text).unwrap_or_else(|e| panic!("{text:?} stopped every command: {e}"));
            let error = settings.service().unwrap_err();
            assert!(error.contains("pitr.toml") && error.contains(what), "{text:?}: {error}");
        }
        let error = loaded("[schedule]\nhourli = \"0 * * * *\"\n").unwrap_err();
        assert!(error.contains("hourli"), "an unknown key is a broken file: {error}");
    }

    #[test]
    fn none_turns_an_output_off() {
        assert_eq!(optional_path("none".into()), None);
        assert_eq!(optional_path("/tmp/x.prom".into()), Some(PathBuf::from("/tmp/x.prom")));
    }
}
