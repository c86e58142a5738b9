//! Writing recovery settings into a restored data directory: `recovery.signal`, and a block in
//! `postgresql.auto.conf` (read last, so it wins). Stale recovery settings are removed from both
//! configuration files first: PostgreSQL refuses to start with two recovery targets, and a
//! forgotten target would apply to a later recovery. Other settings pitr overrides for its run
//! (port, archive_mode) stay untouched in the copy's own configuration, so that dropping pitr's
//! block ([`remove_block`], at `pitr adopt`) gives the copy back exactly its own configuration.

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

/// Writes `settings` (name, value) into postgresql.auto.conf under a `# pitr: header` line, in
/// place of an earlier pitr block. The managed recovery settings are dropped there and
/// commented out in postgresql.conf.
pub fn write_block(pgdata: &Path, settings: &[(&str, String)], header: &str) -> Result<()> {
    let conf = pgdata.join("postgresql.conf");
    if conf.exists() {
        let text = fs::read_to_string(&conf).map_err(Error::io("read", &conf))?;
        replace_file(&conf, &comment_out(&text, &MANAGED))?;
    }
    let mut out = auto_conf_without_block(pgdata)?;
    out.push_str(&format!("{HEADER_PREFIX}{header}\n"));
    for (name, value) in settings {
        out.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
    }
    replace_file(&pgdata.join("postgresql.auto.conf"), &out)
}

/// Drops pitr's block (and any recovery setting left) from postgresql.auto.conf: the copy's own
/// configuration is in force again.
pub fn remove_block(pgdata: &Path) -> Result<()> {
    let out = auto_conf_without_block(pgdata)?;
    replace_file(&pgdata.join("postgresql.auto.conf"), &out)
}

/// postgresql.auto.conf without pitr's blocks (a `# pitr: ` line and the settings after it)
/// and without managed recovery settings.
fn auto_conf_without_block(pgdata: &Path) -> Result<String> {
    let auto = pgdata.join("postgresql.auto.conf");
    let text = match fs::read_to_string(&auto) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io("read", &auto)(e)),
    };
    let mut in_block = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with(HEADER_PREFIX) {
            in_block = true;
            continue;
        }
        in_block = in_block && setting_of(line).is_some();
        if !in_block && !sets_any(line, &MANAGED) {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
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
        assert_eq!(
            conf,
            "port = 5432\n#recovery_target_name = 'old'  # disabled by pitr recover\n#restore_command = ''\nshared_buffers = 128MB\n",
            "only recovery settings are disabled"
        );
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
    fn removing_the_block_gives_the_copy_its_own_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let own_conf = "port = 5432\narchive_mode = on\narchive_command = 'pitr --repo /r archive-push %p'\n";
        let own_auto = "# Do not edit\nwork_mem = '8MB'\narchive_mode = 'always'\n";
        fs::write(dir.path().join("postgresql.conf"), own_conf).unwrap();
        fs::write(dir.path().join("postgresql.auto.conf"), own_auto).unwrap();
        let settings = [
            ("restore_command", "x".to_string()),
            ("archive_mode", "off".to_string()),
            ("port", "5499".to_string()),
        ];
        write_recovery(dir.path(), &settings, "recover").unwrap();
        remove_block(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("postgresql.conf")).unwrap(),
            own_conf
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap(),
            own_auto
        );
    }

    #[test]
    fn quotes_are_doubled() {
        let dir = tempfile::tempdir().unwrap();
        write_recovery(dir.path(), &[("recovery_target_name", "it's".to_string())], "x").unwrap();
        let auto = fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(auto.contains("recovery_target_name = 'it''s'"), "{auto}");
    }
}
