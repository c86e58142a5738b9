//! Settings, layered: built-in defaults < config file < environment < flags.
//!
//! clap already merges flags over environment variables; this module lays the config file
//! under them and turns the result into validated values before any work starts.

use std::path::{Path, PathBuf};

use pitr::backup::Retention;
use pitr::codec::{Codec, Compression};
use serde::Deserialize;

use crate::cli::GlobalArgs;

/// Segments fetched ahead of recovery by default (pgBackRest's default queue is 128 MiB).
const DEFAULT_PREFETCH: u64 = 8;

/// The config file used when neither --config nor PITR_CONFIG names one.
const DEFAULT_CONFIG: &str = "/etc/pitr/pitr.toml";

/// The config file's keys. Unknown keys are errors, so a typo never silently falls back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    repo: Option<PathBuf>,
    compress: Option<String>,
    compress_level: Option<i32>,
    name: Option<String>,
    jobs: Option<usize>,
    spool: Option<PathBuf>,
    prefetch: Option<u64>,
    keep_hourly: Option<usize>,
    keep_daily: Option<usize>,
    keep_weekly: Option<usize>,
}

/// Validated settings.
#[derive(Debug)]
pub struct Settings {
    /// The repository directory.
    pub repo: PathBuf,
    /// How archived files are compressed.
    pub codec: Codec,
    /// The deployment's name, the first part of backup ids.
    pub name: String,
    /// Files copied at once by backup and restore, unless a flag says otherwise.
    pub jobs: usize,
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
}

impl Settings {
    /// Merges the layers and validates them.
    pub fn load(args: &GlobalArgs) -> Result<Settings, String> {
        let config = args
            .config
            .clone()
            .or_else(|| Path::new(DEFAULT_CONFIG).exists().then(|| DEFAULT_CONFIG.into()));
        let file = read_config(config.as_deref())?;
        let repo = args
            .repo
            .clone()
            .or(file.repo)
            .ok_or("no repository given: pass --repo DIR, set PITR_REPO, or set `repo` in the config file")?;
        let compression: Compression = args
            .compress
            .as_deref()
            .or(file.compress.as_deref())
            .map(str::parse)
            .transpose()
            .map_err(|e: pitr::Error| e.to_string())?
            .unwrap_or_default();
        let codec = Codec::new(compression, args.compress_level.or(file.compress_level)).map_err(|e| e.to_string())?;
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
        Ok(Settings {
            repo,
            codec,
            name,
            jobs,
            retention,
            config,
            spool: args.spool.clone().or(file.spool),
            prefetch: file.prefetch.unwrap_or(DEFAULT_PREFETCH),
            source: args.clone(),
        })
    }
}

fn read_config(path: Option<&Path>) -> Result<FileSettings, String> {
    let Some(path) = path else {
        return Ok(FileSettings::default());
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("could not read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let reason = e.message().replace('\n', " ");
        format!("config file {} is invalid: {reason}", path.display())
    })
}

/// Loads the settings again (SIGHUP) from the same flags and environment variables, and the
/// config file as it is now.
pub fn reload(current: &Settings) -> Result<Settings, String> {
    Settings::load(&current.source)
}
