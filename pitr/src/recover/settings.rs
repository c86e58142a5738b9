//! Writing recovery settings into a restored data directory: `recovery.signal`, and a block in
//! `postgresql.auto.conf` (read last, so it wins) after removing every stale recovery setting
//! from both configuration files. PostgreSQL refuses to start with two recovery targets, and a
//! forgotten target would apply to a later recovery.

use std::fs;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fsio::{Dir, Perms};

/// Settings pitr manages: removed wherever they appear before its own are written.
const MANAGED: [&str; 11] = [
    "restore_command",
    "recovery_target",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_action",
    "recovery_target_timeline",
    "primary_conninfo",
    "primary_slot_name",
];

/// What pitr recover appends to a postgresql.conf line it comments out.
const DISABLED: &str = "  # disabled by pitr recover";

/// The prefix of the comment lines pitr writes above its settings.
const HEADER_PREFIX: &str = "# pitr: ";

/// Writes `settings` for a recovery of `pgdata` (see [`write_block`]) and the signal file.
pub fn write_recovery(pgdata: &Path, settings: &[(&str, String)], header: &str) -> Result<()> {
    write_block(pgdata, settings, header)?;
    let _ = fs::remove_file(pgdata.join("standby.signal"));
    replace_file(&pgdata.join("recovery.signal"), "")
}

/// Writes `settings` (name, value) into postgresql.auto.conf under a `# pitr: header` line.
/// Earlier pitr blocks, the managed recovery settings and old values of every setting written
/// (such as `port` or `archive_mode`) are dropped there and commented out in postgresql.conf.
pub fn write_block(pgdata: &Path, settings: &[(&str, String)], header: &str) -> Result<()> {
    let replaced: Vec<&str> = MANAGED
        .iter()
        .copied()
        .chain(settings.iter().map(|(k, _)| *k))
        .collect();
    let conf = pgdata.join("postgresql.conf");
    if conf.exists() {
        let text = fs::read_to_string(&conf).map_err(Error::io("read", &conf))?;
        replace_file(&conf, &comment_out(&text, &replaced))?;
    }
    let auto = pgdata.join("postgresql.auto.conf");
    let text = match fs::read_to_string(&auto) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io("read", &auto)(e)),
    };
    let mut out: String = text
        .lines()
        .filter(|l| !sets_any(l, &replaced) && !l.starts_with(HEADER_PREFIX))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("{HEADER_PREFIX}{header}\n"));
    for (name, value) in settings {
        out.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
    }
    replace_file(&auto, &out)
}

/// Gives `name` back to the copy's own configuration: drops it from postgresql.auto.conf and
/// uncomments the lines pitr recover disabled for it in postgresql.conf.
pub fn undo(pgdata: &Path, name: &str) -> Result<()> {
    let auto = pgdata.join("postgresql.auto.conf");
    if let Ok(text) = fs::read_to_string(&auto) {
        let kept: String = text
            .lines()
            .filter(|l| !sets_any(l, &[name]))
            .map(|l| format!("{l}\n"))
            .collect();
        replace_file(&auto, &kept)?;
    }
    let conf = pgdata.join("postgresql.conf");
    if let Ok(text) = fs::read_to_string(&conf) {
        let restored: String = text
            .lines()
            .map(|l| match l.strip_suffix(DISABLED).and_then(|l| l.strip_prefix('#')) {
                Some(original) if sets_any(original, &[name]) => format!("{original}\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        replace_file(&conf, &restored)?;
    }
    Ok(())
}

/// The setting a configuration line assigns, if any (`name = value` or `name value`).
fn setting_of(line: &str) -> Option<String> {
    let line = line.trim_start();
    let end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))?;
    let rest = line[end..].trim_start();
    (end > 0 && !line.starts_with('#') && !rest.is_empty()).then(|| line[..end].to_ascii_lowercase())
}

fn sets_any(line: &str, names: &[&str]) -> bool {
    setting_of(line).is_some_and(|s| names.contains(&s.as_str()))
}

fn comment_out(text: &str, names: &[&str]) -> String {
    text.lines()
        .map(|l| {
            if sets_any(l, names) {
                format!("#{l}{DISABLED}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Replaces a file's content crash-safely ([`Dir::replace`]). The new file keeps the old one's
/// mode (0600 for a new file) and belongs to the data directory's owner, also when pitr runs as
/// root: the server must read it.
fn replace_file(path: &Path, content: &str) -> Result<()> {
    let dir_path = path.parent().expect("inside the data directory");
    let name = path.file_name().and_then(|n| n.to_str()).expect("a plain file name");
    let dir = Dir::open(dir_path).map_err(Error::io("open", dir_path))?;
    let owner = rustix::fs::fstat(dir.fd()).map_err(|e| Error::io("inspect", dir_path)(e.into()))?;
    let mode = match dir.stat(name).map_err(Error::io("inspect", path))? {
        Some(stat) => stat.st_mode & 0o777,
        None => 0o600,
    };
    let as_root = rustix::process::geteuid().is_root();
    let perms = Perms {
        file_mode: mode,
        ..Perms::private(as_root.then_some((owner.st_uid, owner.st_gid)))
    };
    dir.replace(name, content.as_bytes(), &perms)
        .map_err(Error::io("replace", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_settings_are_removed_and_new_ones_written() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path();
        fs::write(
            pgdata.join("postgresql.conf"),
            "port = 5432\nrecovery_target_name = 'old'\n#restore_command = ''\nshared_buffers = 128MB\n",
        )
        .unwrap();
        fs::write(
            pgdata.join("postgresql.auto.conf"),
            "# Do not edit\nrecovery_target_time = '2020-01-01'\nwork_mem = '8MB'\n",
        )
        .unwrap();
        fs::write(pgdata.join("standby.signal"), "").unwrap();
        let settings = [
            ("restore_command", "pitr archive-get %f %p".to_string()),
            ("port", "5499".to_string()),
            ("recovery_target_xid", "7".to_string()),
        ];
        write_recovery(pgdata, &settings, "recover").unwrap();

        let conf = fs::read_to_string(pgdata.join("postgresql.conf")).unwrap();
        assert!(conf.contains("#port = 5432  # disabled by pitr recover"), "{conf}");
        assert!(conf.contains("#recovery_target_name = 'old'"), "{conf}");
        assert!(conf.contains("shared_buffers = 128MB\n"), "{conf}");
        let auto = fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
        assert_eq!(
            auto,
            "# Do not edit\nwork_mem = '8MB'\n# pitr: recover\nrestore_command = 'pitr archive-get %f %p'\nport = '5499'\nrecovery_target_xid = '7'\n"
        );
        assert!(pgdata.join("recovery.signal").exists());
        assert!(!pgdata.join("standby.signal").exists());
    }

    #[test]
    fn a_later_block_replaces_pitrs_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let recovery = [
            ("restore_command", "x".to_string()),
            ("archive_mode", "off".to_string()),
        ];
        write_recovery(dir.path(), &recovery, "recovery settings").unwrap();
        write_block(dir.path(), &[("archive_mode", "on".to_string())], "archiving").unwrap();
        let auto = fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert_eq!(auto, "# pitr: archiving\narchive_mode = 'on'\n");
    }

    #[test]
    fn undo_gives_a_setting_back_to_the_copys_configuration() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("postgresql.conf"), "port = 5432\nwork_mem = 4MB\n").unwrap();
        write_recovery(dir.path(), &[("port", "5499".to_string())], "recover").unwrap();
        undo(dir.path(), "port").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("postgresql.conf")).unwrap(),
            "port = 5432\nwork_mem = 4MB\n"
        );
        let auto = fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(!auto.contains("port"), "{auto}");
    }

    #[test]
    fn quotes_are_doubled() {
        let dir = tempfile::tempdir().unwrap();
        write_recovery(dir.path(), &[("recovery_target_name", "it's".to_string())], "x").unwrap();
        let auto = fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(auto.contains("recovery_target_name = 'it''s'"), "{auto}");
    }
}
