//! `pitr adopt`: make a recovered and promoted copy the new primary of the repository.
//!
//! A copy recovers with archiving off (it must never push a new timeline into the production
//! archive by accident), so PostgreSQL marks none of its new files ready: not the new timeline's
//! `.history` file, not the old timeline's `.partial`, not the segments written since promotion.
//! The next recovery on the new timeline would then fail. Adopting stops pitr's private run of
//! the copy, archives exactly those files, turns archiving on into this repository, and gives
//! the copy back the port it came with, ready to take the old primary's place.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::{self, PushOutcome};
use crate::codec::Codec;
use crate::control::{self, DB_SHUTDOWNED};
use crate::error::{Error, Result};
use crate::pg::ctl::{self, Owner};
use crate::repo::Repo;
use crate::wal::{SegmentSize, WalFileName};

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
    /// Files archived now.
    pub archived: Vec<String>,
    /// Files that were in the repository already.
    pub already_archived: usize,
    /// Segments of the new timeline that PostgreSQL removed before they could be archived.
    pub lost_segments: Vec<String>,
}

/// Adopts the promoted copy in `pgdata`; `pitr_command` is this pitr with its repository and
/// config options, for the archive_command written.
pub fn adopt(repo: &Repo, codec: &Codec, pgdata: &Path, pitr_command: &str) -> Result<AdoptReport> {
    let stopped_server = stop_if_running(repo, pgdata)?;
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
    let mut report = AdoptReport {
        pgdata: pgdata.to_path_buf(),
        timeline: identity.timeline,
        stopped_server,
        archived: Vec::new(),
        already_archived: 0,
        lost_segments: Vec::new(),
    };
    for (name, path) in files_to_archive(pgdata, identity.timeline, size, current)? {
        match archive::push(repo, codec, &path, &archive::Site::default())? {
            PushOutcome::Stored => report.archived.push(name.to_string()),
            PushOutcome::AlreadyArchived => report.already_archived += 1,
        }
    }
    report.lost_segments = lost_segments(repo, identity.timeline, size, current)?;
    let archive_command = format!("{pitr_command} archive-push %p");
    let archiving = [("archive_mode", "on".to_string()), ("archive_command", archive_command)];
    settings::write_block(pgdata, &archiving, "archiving into this repository (pitr adopt)")?;
    // The port of pitr's private run gives way to the one the copy had (the old primary's).
    settings::undo(pgdata, "port")?;
    Ok(report)
}

/// Stops a copy still running (pitr recover leaves it running on its private socket).
fn stop_if_running(repo: &Repo, pgdata: &Path) -> Result<bool> {
    if !pgdata.join("postmaster.pid").exists() {
        return Ok(false);
    }
    let owner = Owner::of(pgdata)?;
    let bindir = ctl::bindir(repo.info()?.map_or(0, |i| i.pg_version))?;
    ctl::stop(&bindir, &owner, pgdata, "fast")?;
    Ok(true)
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
