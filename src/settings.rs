//! Settings, layered: built-in defaults < config file < environment < flags.
//!
//! clap already merges flags over environment variables; this module lays the config file
//! under them and turns the result into validated values before any work starts.

use std::path::{Path, PathBuf};

use pitr::codec::{Codec, Compression};
use serde::Deserialize;

use crate::cli::GlobalArgs;

/// The config file used when neither --config nor PITR_CONFIG names one.
const DEFAULT_CONFIG: &str = "/etc/pitr/pitr.toml";

/// The config file's keys. Unknown keys are errors, so a typo never silently falls back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    repo: Option<PathBuf>,
    compress: Option<String>,
    compress_level: Option<i32>,
}

/// Validated settings.
#[derive(Debug)]
pub struct Settings {
    /// The repository directory.
    pub repo: PathBuf,
    /// How archived files are compressed.
    pub codec: Codec,
}

impl Settings {
    /// Merges the layers and validates them.
    pub fn load(args: &GlobalArgs) -> Result<Settings, String> {
        let file = read_config(args.config.as_deref())?;
        let repo = args.repo.clone().or(file.repo).ok_or(
            "no repository given: pass --repo DIR, set PITR_REPO, or set `repo` in the config file",
        )?;
        let compression: Compression = args
            .compress
            .as_deref()
            .or(file.compress.as_deref())
            .map(str::parse)
            .transpose()
            .map_err(|e: pitr::Error| e.to_string())?
            .unwrap_or_default();
        let codec = Codec::new(compression, args.compress_level.or(file.compress_level)).map_err(|e| e.to_string())?;
        Ok(Settings { repo, codec })
    }
}

fn read_config(explicit: Option<&Path>) -> Result<FileSettings, String> {
    let path = match explicit {
        Some(path) => path,
        None if Path::new(DEFAULT_CONFIG).exists() => Path::new(DEFAULT_CONFIG),
        None => return Ok(FileSettings::default()),
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("could not read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let reason = e.message().replace('\n', " ");
        format!("config file {} is invalid: {reason}", path.display())
    })
}
