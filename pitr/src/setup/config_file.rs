//! pitr's config file as `pitr init` writes it: `repo`, `pgdata` and `slot`, with whatever else
//! the file holds kept.
//!
//! A missing file, or one of comments only (the packaged template), is written anew, with
//! `dedup = true`: a new setup takes deduplicated backups, an existing one keeps its format. A file
//! that lacks some of the three gets them added at its top; one that holds them is left alone
//! (not rewritten). A file that names another repository or data directory is refused: it is
//! another setup's. The file is written crash-safely ([`Dir::replace`]). Run as root, it is
//! root's, mode 0640, group the data directory owner's group: the daemon (`User=postgres`) and
//! archive_command read it, and neither can change what a root-run pitr reads. Run as the data
//! directory's owner, it is that user's, mode 0600.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fsio::{Dir, Perms};
use crate::pg::ctl::Owner;
use crate::storage::Location;

/// The config file pitr reads when neither `--config` nor `PITR_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/pitr/pitr.toml";

/// Mode of the config file written by root: the owner's group reads it.
const ROOT_FILE_MODE: u32 = 0o640;

/// Mode of a directory created for the config file (`/etc/pitr`).
const DIRECTORY_MODE: u32 = 0o755;

/// What the config file needs.
#[derive(Debug, Clone)]
pub(super) enum ConfigPlan {
    /// It holds the settings and its readers can read it.
    Keep,
    /// It is written with `text`; `current` says what it was.
    Write {
        /// What the file is now.
        current: &'static str,
        /// Its new content.
        text: String,
    },
}

impl ConfigPlan {
    /// What the file is now, when it must be written.
    pub fn current(&self) -> Option<&'static str> {
        match self {
            ConfigPlan::Keep => None,
            ConfigPlan::Write { current, .. } => Some(current),
        }
    }
}

/// How the file will be owned, for the report.
pub(super) fn describe_perms(owner: &Owner) -> String {
    if rustix::process::geteuid().is_root() {
        format!("mode 0640, owner root, group of {}", owner.name)
    } else {
        format!("mode 0600, owner {}", owner.name)
    }
}

/// What `path` needs to name `repo`, `pgdata` and `slot`; refused when it names another
/// repository or data directory.
pub(super) fn plan(path: &Path, repo: &Location, pgdata: &Path, slot: &str, owner: &Owner) -> Result<ConfigPlan> {
    let plan = needed(path, repo, pgdata, slot, owner)?;
    if plan.current().is_some() {
        check_writable(path)?;
    }
    Ok(plan)
}

/// What `path` needs (see [`plan`]).
fn needed(path: &Path, repo: &Location, pgdata: &Path, slot: &str, owner: &Owner) -> Result<ConfigPlan> {
    let wanted = [
        ("repo", repo.absolute()?),
        ("pgdata", utf8(pgdata)?.to_string()),
        ("slot", slot.to_string()),
    ];
    let Some((text, meta)) = read(path)? else {
        return Ok(ConfigPlan::Write {
            current: "absent",
            text: fresh(&wanted),
        });
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        Error::InvalidInput(format!(
            "config file {} is not valid TOML ({}): fix it; nothing was changed",
            path.display(),
            e.message().trim()
        ))
    })?;
    if table.is_empty() {
        return Ok(ConfigPlan::Write {
            current: "comments only",
            text: fresh(&wanted),
        });
    }
    check_same(path, &table, repo, pgdata)?;
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(key, _)| !table.contains_key(*key))
        .map(|(key, value)| line(key, value))
        .collect();
    if !missing.is_empty() {
        return Ok(ConfigPlan::Write {
            current: "without some of repo, pgdata, slot",
            text: format!("{}{text}", missing.concat()),
        });
    }
    if !readable_by(&meta, owner) {
        return Ok(ConfigPlan::Write {
            current: "not readable by the data directory's owner",
            text,
        });
    }
    Ok(ConfigPlan::Keep)
}

/// Writes the file as `plan` says (nothing for [`ConfigPlan::Keep`]), creating its directory
/// when missing (only that one: its parent must exist).
pub(super) fn write(path: &Path, plan: &ConfigPlan, owner: &Owner) -> Result<()> {
    let ConfigPlan::Write { text, .. } = plan else {
        return Ok(());
    };
    let perms = if rustix::process::geteuid().is_root() {
        Perms {
            dir_mode: DIRECTORY_MODE,
            file_mode: ROOT_FILE_MODE,
            owner: Some((0, owner.gid)),
        }
    } else {
        Perms {
            dir_mode: DIRECTORY_MODE,
            ..Perms::private(None)
        }
    };
    let (parent, name) = split(path)?;
    let dir = match Dir::open(parent) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (grandparent, dir_name) = split(parent)?;
            Dir::open(grandparent)
                .and_then(|g| g.create_dir(dir_name, &Perms { owner: None, ..perms }))
                .map_err(Error::io("create directory", parent))?
        }
        Err(e) => return Err(Error::io("open directory", parent)(e)),
    };
    dir.replace(name, text.as_bytes(), &perms)
        .map_err(Error::io("write config file", path))
}

/// The file's text and metadata, `None` when it does not exist. A symbolic link or anything
/// but a regular file is refused.
fn read(path: &Path) -> Result<Option<(String, std::fs::Metadata)>> {
    let (parent, name) = split(path)?;
    let dir = match Dir::open(parent) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open directory", parent)(e)),
    };
    let Some(mut file) = dir.open_file(name).map_err(Error::io("open config file", path))? else {
        return Ok(None);
    };
    let meta = file.metadata().map_err(Error::io("inspect", path))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(Error::io("read config file", path))?;
    Ok(Some((text, meta)))
}

/// Refuses, before anything changes, a config file this user could not write: its directory,
/// or the directory that directory would be created in.
fn check_writable(path: &Path) -> Result<()> {
    let (parent, _) = split(path)?;
    let dir = if parent.exists() { parent } else { split(parent)?.0 };
    super::check_writable(dir, "write config file", path)
}

/// Refuses a file that names another repository or data directory than `repo` and `pgdata`.
fn check_same(path: &Path, table: &toml::Table, repo: &Location, pgdata: &Path) -> Result<()> {
    let refuse = |key: &str, theirs: &str, ours: String| {
        Error::Refused(format!(
            "config file {} sets {key} = \"{theirs}\", not {ours}: it belongs to another setup; edit it, or \
             pass --config with another file; nothing was changed",
            path.display()
        ))
    };
    if let Some(theirs) = table.get("repo").map(text_of) {
        if !repo.is_same_as(&theirs) {
            return Err(refuse("repo", &theirs, repo.to_string()));
        }
    }
    if let Some(theirs) = table.get("pgdata").map(text_of) {
        let resolve = |p: &Path| std::fs::canonicalize(p).ok();
        if resolve(Path::new(&theirs)).is_none() || resolve(Path::new(&theirs)) != resolve(pgdata) {
            return Err(refuse("pgdata", &theirs, pgdata.display().to_string()));
        }
    }
    Ok(())
}

/// A value as text (a string's content; anything else as TOML writes it).
fn text_of(value: &toml::Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

/// Whether `owner` (the data directory's owner, who runs archive_command and the daemon) may
/// read a file with `meta`.
fn readable_by(meta: &std::fs::Metadata, owner: &Owner) -> bool {
    let mode = meta.mode();
    (meta.uid() == owner.uid && mode & 0o400 != 0)
        || (meta.gid() == owner.gid && mode & 0o040 != 0)
        || mode & 0o004 != 0
}

/// A new file holding `settings`.
fn fresh(settings: &[(&str, String)]) -> String {
    let lines: String = settings.iter().map(|(key, value)| line(key, value)).collect();
    format!(
        "# pitr's settings, written by `pitr init` (README.md, Configuration, lists every key)\n{lines}\
         # backups share what did not change with the previous ones (docs/design.md, deduplicated backups)\n\
         dedup = true\n"
    )
}

/// `key = "value"`, quoted as TOML quotes.
fn line(key: &str, value: &str) -> String {
    format!("{key} = {}\n", toml::Value::String(value.to_string()))
}

/// The directory and the name of `path`.
fn split(path: &Path) -> Result<(&Path, &str)> {
    let name = path.file_name().and_then(|n| n.to_str());
    match (path.parent(), name) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => Ok((parent, name)),
        _ => Err(Error::InvalidInput(format!(
            "{} names no file in a directory: give an absolute path",
            path.display()
        ))),
    }
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not UTF-8", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_file_names_the_settings_and_deduplicates_backups() {
        let text = fresh(&[("repo", "/r".into()), ("slot", "pitr".into())]);
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["repo"].as_str(), Some("/r"), "{text}");
        assert_eq!(parsed["slot"].as_str(), Some("pitr"), "{text}");
        assert_eq!(parsed["dedup"].as_bool(), Some(true), "{text}");
    }

    #[test]
    fn values_are_quoted_as_toml_strings() {
        let parsed: toml::Table = toml::from_str(&line("repo", "/a \"b\"\\c")).unwrap();
        assert_eq!(parsed["repo"].as_str(), Some("/a \"b\"\\c"));
    }
}
