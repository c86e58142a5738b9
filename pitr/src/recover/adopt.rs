//! `pitr adopt`: make a recovered and promoted copy the new primary of the repository.
//!
//! A copy recovers with archiving off (it must never push a new timeline into the production
//! archive by accident), so PostgreSQL marks none of its new files ready: not the new timeline's
//! `.history` file, not the old timeline's `.partial`, not the segments written since promotion.
//! The next recovery on the new timeline would then fail. Adopting stops pitr's private run of
//! the copy (and removes its socket directory), archives exactly those files, and gives the copy
//! back its own configuration (its port, its archiving), ready to take the old primary's place.
//! Only where that configuration does not archive into this repository does pitr write archive
//! settings that do.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::{self, PushOutcome};
use crate::codec::Codec;
use crate::control::{self, DB_SHUTDOWNED};
use crate::error::{Error, Result};
use crate::pg::ctl::{self, Owner};
use crate::pg::PgVersion;
use crate::repo::Repo;
use crate::wal::{SegmentSize, WalFileName};

use super::drive::{PRIVATE_HBA, SOCKET_DIR_PARENT, SOCKET_DIR_PREFIX};
use super::settings;

/// What adopting did.
#[derive(Debug, Clone, Serialize)]
pub struct AdoptReport {
    /// The copy's data directory.
    pub pgdata: PathBuf,
    /// Its timeline.
    pub timeline: u32,
    /// Whether pitr stopped a running copy first.
    pub stopped_server: bool,
    /// The private socket directory of pitr recover's run, removed.
    pub removed_socket_dir: Option<PathBuf>,
    /// Files archived now.
    pub archived: Vec<String>,
    /// Files that were in the repository already.
    pub already_archived: usize,
    /// Segments of the new timeline that PostgreSQL removed before they could be archived.
    pub lost_segments: Vec<String>,
    /// How the copy archives from now on.
    pub archiving: AdoptedArchiving,
}

/// How the adopted copy archives.
#[derive(Debug, Clone, Serialize)]
pub struct AdoptedArchiving {
    /// The copy's own configuration archives into this repository: pitr wrote nothing.
    pub own_configuration: bool,
    /// The archive_command in force.
    pub archive_command: String,
    /// Why pitr wrote archive_mode and archive_command into postgresql.auto.conf, when it did.
    pub written_because: Option<String>,
}

/// Adopts the promoted copy in `pgdata`; `pitr_command` is this pitr with its repository and
/// config options, for the archive_command written.
pub fn adopt(repo: &Repo, codec: &Codec, pgdata: &Path, pitr_command: &str) -> Result<AdoptReport> {
    let bindir = ctl::bindir(repo.info()?.map_or(0, |i| i.pg_version))?;
    let owner = Owner::of(pgdata)?;
    let (stopped_server, removed_socket_dir) = stop_if_running(&bindir, &owner, pgdata)?;
    let identity = control::read_identity(pgdata)?;
    let info = repo
        .info()?
        .ok_or_else(|| Error::Refused(format!("repository {} is empty", repo.location())))?;
    if identity.system_identifier != info.system_identifier {
        return Err(Error::Refused(format!(
            "{} is the cluster {}, repository {} holds the cluster {}: adopt a copy recovered from this repository",
            pgdata.display(),
            identity.system_identifier,
            repo.location(),
            info.system_identifier
        )));
    }
    if identity.state != DB_SHUTDOWNED || pgdata.join("recovery.signal").exists() {
        return Err(Error::Refused(format!(
            "{} is not a promoted copy that was shut down cleanly (still in recovery, or crashed): promote it \
             (SELECT pg_promote()) and stop it with pg_ctl stop -m fast first",
            pgdata.display()
        )));
    }
    let size = SegmentSize::new(info.wal_segment_size).unwrap_or(SegmentSize::DEFAULT);
    // After a clean shutdown the checkpoint is the last record: its segment is still being filled.
    let current = size.segment_of(identity.checkpoint);
    let mut archived = Vec::new();
    let mut already_archived = 0;
    for (name, path) in files_to_archive(pgdata, identity.timeline, size, current)? {
        match archive::push(repo, codec, &path, &archive::Site::default())? {
            PushOutcome::Stored => archived.push(name.to_string()),
            PushOutcome::AlreadyArchived => already_archived += 1,
        }
    }
    // pitr recover's settings (port, archiving off, recovery) go: the copy's own are in force.
    settings::remove_block(pgdata)?;
    let archiving = archive_here(repo, &bindir, &owner, pgdata, info.pg_version, pitr_command)?;
    Ok(AdoptReport {
        pgdata: pgdata.to_path_buf(),
        timeline: identity.timeline,
        stopped_server,
        removed_socket_dir,
        archived,
        already_archived,
        lost_segments: lost_segments(repo, identity.timeline, size, current)?,
        archiving,
    })
}

/// Keeps the copy's own archiving when it archives into this repository; otherwise writes
/// archive_mode = on and an archive_command that does.
fn archive_here(
    repo: &Repo,
    bindir: &Path,
    owner: &Owner,
    pgdata: &Path,
    pg_version: u32,
    pitr_command: &str,
) -> Result<AdoptedArchiving> {
    let setting = |name: &str| configured(bindir, owner, pgdata, name);
    let archive_mode = setting("archive_mode")?;
    let archive_command = setting("archive_command")?;
    let archive_library = if PgVersion::new(pg_version)?.has_archive_library() {
        setting("archive_library")?
    } else {
        String::new()
    };
    let elsewhere = if !matches!(archive_mode.as_str(), "on" | "always") {
        Some(format!(
            "the copy's own configuration has archive_mode = {archive_mode}"
        ))
    } else if !archive_library.is_empty() {
        Some(format!(
            "the copy's own configuration archives with archive_library = {archive_library}"
        ))
    } else if !calls_pitr_into(repo, &archive_command) {
        Some(format!(
            "the copy's own archive_command ({archive_command}) does not archive into {} with pitr",
            repo.location()
        ))
    } else {
        None
    };
    let Some(reason) = elsewhere else {
        return Ok(AdoptedArchiving {
            own_configuration: true,
            archive_command,
            written_because: None,
        });
    };
    let command = format!("{pitr_command} archive-push %p");
    let archiving = [("archive_mode", "on".to_string()), ("archive_command", command.clone())];
    settings::write_block(pgdata, &archiving, "archiving into this repository (pitr adopt)")?;
    Ok(AdoptedArchiving {
        own_configuration: false,
        archive_command: command,
        written_because: Some(reason),
    })
}

/// A setting as the copy's configuration files set it (`postgres -C`, which reads them the way
/// the server will, includes and postgresql.auto.conf too).
fn configured(bindir: &Path, owner: &Owner, pgdata: &Path, name: &str) -> Result<String> {
    let program = bindir.join("postgres");
    let out = owner
        .command(&program)
        .arg("-D")
        .arg(pgdata)
        .args(["-C", name])
        .output()
        .map_err(Error::io("run", &program))?;
    if !out.status.success() {
        return Err(Error::Refused(format!(
            "cannot read {name} from the configuration of {}: {}",
            pgdata.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether `command` runs `pitr ... --repo <this repository> ... archive-push`.
fn calls_pitr_into(repo: &Repo, command: &str) -> bool {
    let words: Vec<&str> = command
        .split_whitespace()
        .map(|w| w.trim_matches(['\'', '"']))
        .collect();
    let calls_pitr = words.iter().any(|w| w.rsplit('/').next() == Some("pitr")) && words.contains(&"archive-push");
    let repo_arg = words.windows(2).find(|w| w[0] == "--repo").map(|w| w[1]).or_else(|| {
        words
            .iter()
            .find_map(|w| w.strip_prefix("--repo="))
            .map(|v| v.trim_matches(['\'', '"']))
    });
    calls_pitr && repo_arg.is_some_and(|arg| repo.is_named_by(arg))
}

/// Stops a copy still running (pitr recover leaves it running on its private socket) and
/// removes the private socket directory of that run.
pub(crate) fn stop_if_running(bindir: &Path, owner: &Owner, pgdata: &Path) -> Result<(bool, Option<PathBuf>)> {
    let Ok(pid_text) = fs::read_to_string(pgdata.join("postmaster.pid")) else {
        return Ok((false, None));
    };
    ctl::stop(bindir, owner, pgdata, "fast")?;
    let removed = private_socket_dir_of(&pid_text, owner).filter(|dir| fs::remove_dir_all(dir).is_ok());
    Ok((true, removed))
}

/// The socket directory named in postmaster.pid (its 5th line, PostgreSQL docs "postmaster.pid"),
/// when it is one pitr recover creates: `/tmp/pitr-recover-*`, a real directory (not a link)
/// owned by the server's owner, holding pitr's private pg_hba.conf.
fn private_socket_dir_of(pid_text: &str, owner: &Owner) -> Option<PathBuf> {
    let dir = PathBuf::from(pid_text.lines().nth(4)?.trim());
    let named_by_pitr =
        dir.parent() == Some(Path::new(SOCKET_DIR_PARENT)) && dir.file_name()?.to_str()?.starts_with(SOCKET_DIR_PREFIX);
    let meta = fs::symlink_metadata(&dir).ok()?;
    let hba = fs::symlink_metadata(dir.join(PRIVATE_HBA)).ok()?;
    let ours = meta.is_dir() && meta.uid() == owner.uid && hba.is_file();
    (named_by_pitr && ours).then_some(dir)
}

/// History files, `.partial` files, and the completed segments of the copy's timeline, in the
/// order the archiver would take them (history first, then oldest first).
fn files_to_archive(
    pgdata: &Path,
    timeline: u32,
    size: SegmentSize,
    current: u64,
) -> Result<Vec<(WalFileName, PathBuf)>> {
    let wal_dir = pgdata.join("pg_wal");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&wal_dir).map_err(Error::io("list", &wal_dir))? {
        let entry = entry.map_err(Error::io("list", &wal_dir))?;
        let Ok(name) = WalFileName::parse(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        let wanted = match name {
            WalFileName::History(_) | WalFileName::Partial(_) => true,
            WalFileName::Segment(s) => s.timeline == timeline && s.segment(size).is_some_and(|seg| seg.segno < current),
            WalFileName::Backup(..) => false,
        };
        if wanted {
            files.push((name, entry.path()));
        }
    }
    files.sort_by_key(|(name, _)| (!matches!(name, WalFileName::History(_)), name.to_string()));
    Ok(files)
}

/// Completed segments of the timeline between its first archived segment and `current` that
/// are in neither pg_wal nor the repository: PostgreSQL recycled them while archiving was off.
fn lost_segments(repo: &Repo, timeline: u32, size: SegmentSize, current: u64) -> Result<Vec<String>> {
    let archived: Vec<u64> = repo
        .list_wal()?
        .iter()
        .filter_map(|n| match n {
            WalFileName::Segment(s) if s.timeline == timeline => s.segment(size).map(|seg| seg.segno),
            _ => None,
        })
        .collect();
    let Some(first) = archived.iter().min().copied() else {
        return Ok(Vec::new());
    };
    Ok((first..current)
        .filter(|segno| !archived.contains(segno))
        .map(|segno| crate::wal::Segment { timeline, segno }.file_name(size))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn only_pitr_into_this_repository_counts_as_archiving_here() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        let here = dir.path().display();
        assert!(calls_pitr_into(
            &repo,
            &format!("/usr/bin/pitr --repo {here} archive-push %p")
        ));
        assert!(calls_pitr_into(
            &repo,
            &format!("'/opt/pitr' --config /etc/p.toml --repo='{here}' archive-push %p")
        ));
        assert!(!calls_pitr_into(
            &repo,
            "/usr/bin/pitr --repo /elsewhere archive-push %p"
        ));
        assert!(
            !calls_pitr_into(&repo, "/usr/bin/pitr archive-push %p"),
            "the repository is not named"
        );
        assert!(!calls_pitr_into(&repo, &format!("cp %p {here}/%f")));
    }

    #[test]
    fn only_pitrs_own_socket_directory_is_removed() {
        let me = Owner::current().unwrap();
        let ours = tempfile::Builder::new()
            .prefix(SOCKET_DIR_PREFIX)
            .tempdir_in(SOCKET_DIR_PARENT)
            .unwrap();
        std::fs::write(ours.path().join(PRIVATE_HBA), "").unwrap();
        let pid_file = |dir: &Path| format!("123\n/data\n1700000000\n5432\n{}\n\n", dir.display());
        assert_eq!(
            private_socket_dir_of(&pid_file(ours.path()), &me).as_deref(),
            Some(ours.path())
        );
        let stranger = Owner {
            uid: std::fs::metadata(ours.path()).unwrap().uid() + 1,
            ..me.clone()
        };
        assert_eq!(
            private_socket_dir_of(&pid_file(ours.path()), &stranger),
            None,
            "another owner's"
        );
        let other = tempfile::Builder::new()
            .prefix("other-")
            .tempdir_in(SOCKET_DIR_PARENT)
            .unwrap();
        std::fs::write(other.path().join(PRIVATE_HBA), "").unwrap();
        assert_eq!(
            private_socket_dir_of(&pid_file(other.path()), &me),
            None,
            "not a pitr name"
        );
        let link = Path::new(SOCKET_DIR_PARENT).join(format!("{SOCKET_DIR_PREFIX}link-{}", std::process::id()));
        std::os::unix::fs::symlink(ours.path(), &link).unwrap();
        assert_eq!(private_socket_dir_of(&pid_file(&link), &me), None, "a symlink");
        std::fs::remove_file(&link).unwrap();
        let bare = tempfile::Builder::new()
            .prefix(SOCKET_DIR_PREFIX)
            .tempdir_in(SOCKET_DIR_PARENT)
            .unwrap();
        assert_eq!(
            private_socket_dir_of(&pid_file(bare.path()), &me),
            None,
            "no private pg_hba.conf"
        );
        assert_eq!(private_socket_dir_of("123\n/data\n", &me), None, "no socket line");
    }
}
