//! `pitr check`: archiving end to end on a running server, like `pgbackrest check`. The
//! settings (wal_level, archive_mode, an archive_command that calls pitr with this repository),
//! the current timeline's history file in the repository, and a forced WAL switch whose segment
//! must arrive in the repository, valid, within a timeout; with a replication slot configured,
//! that the slot exists, is physical and has lost no WAL. The first thing to run after setup and
//! after every switch-over.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::objects::check_wal_object;
use crate::backup::{check_archive_settings, cluster_identity, segment_size};
use crate::error::{Error, Result};
use crate::pg::{Server, SlotState};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::restore_point::{wait_until_archived, Waited};
use crate::wal::{Segment, TimelineId, WalFileName};

/// How to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// How long the switched segment may take to arrive in the repository.
    pub timeout: Duration,
    /// The replication slot the WAL receiver streams from (`slot`), if any.
    pub slot: Option<String>,
}

/// What a passed check saw.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The server.
    pub server: String,
    /// Its system identifier.
    pub system_identifier: u64,
    /// The timeline it writes.
    pub timeline: TimelineId,
    /// Its archive_command.
    pub archive_command: String,
    /// The history file of that timeline, found valid in the repository (timelines above 1).
    pub history_file: Option<String>,
    /// The segment closed by `pg_switch_wal`, found valid in the repository.
    pub segment: String,
    /// Seconds it took to arrive.
    pub archived_after_seconds: f64,
    /// The configured replication slot, found usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<SlotState>,
}

/// Checks that the server behind `server` archives into `repo`, end to end.
pub async fn check(
    repo: &Repo,
    server: &Server,
    options: CheckOptions,
    progress: &dyn Progress,
) -> Result<CheckReport> {
    let refuse = |reason: String| Error::Server {
        target: server.target().to_string(),
        reason,
    };
    if server.is_in_recovery().await? {
        return Err(refuse(
            "is a standby or in recovery: run pitr check on the primary".into(),
        ));
    }
    let system_identifier = server.system_identifier().await?;
    let repo = &repo.pin()?;
    if let Some(generations) = repo.generations()? {
        let found = cluster_identity(server).await?;
        if repo.info()? != Some(found) {
            return Err(refuse(generations.refusal(found, &repo.location())));
        }
    }
    check_archive_settings(repo, server, progress).await?; // where archiving goes is checked below
    let timeline = server.current_timeline().await?;
    let history_file = check_history(repo, timeline)?;
    let slot = match &options.slot {
        Some(name) => Some(check_slot(server, name).await?),
        None => None,
    };
    progress.status("switching WAL and waiting for the segment to be archived");
    let started = Instant::now();
    let segment = switch_and_wait(repo, server, timeline, options.timeout).await?;
    Ok(CheckReport {
        server: server.target().to_string(),
        system_identifier,
        timeline,
        archive_command: server.setting("archive_command").await?,
        history_file,
        segment: segment.to_string(),
        archived_after_seconds: started.elapsed().as_secs_f64(),
        slot,
    })
}

/// The receiver's slot must exist, be physical and not have lost WAL; how much WAL it holds
/// back, and whether a receiver streams from it, are reported.
async fn check_slot(server: &Server, name: &str) -> Result<SlotState> {
    let refuse = |reason: String| Error::Server {
        target: server.target().to_string(),
        reason,
    };
    let Some(slot) = server.replication_slot(name).await? else {
        return Err(refuse(format!(
            "has no replication slot {name}, which `slot` names for the WAL receiver: create it with `pitr slot \
             create --slot {name}`, then start `pitr watch --slot {name}` (or the daemon)"
        )));
    };
    if !slot.physical() {
        return Err(refuse(format!(
            "replication slot {name} is a {} slot; the WAL receiver streams from a physical one: set `slot` to \
             another name and create it with `pitr slot create --slot NAME`",
            slot.slot_type
        )));
    }
    if slot.lost() {
        return Err(refuse(format!(
            "replication slot {name} has lost WAL it needed (wal_status lost), so the WAL receiver cannot resume \
             from it: create it again with `pitr slot drop --slot {name}` and `pitr slot create --slot {name}`"
        )));
    }
    Ok(slot)
}

/// Timelines above 1 must have their history file in the repository, or recovery cannot
/// follow them.
fn check_history(repo: &Repo, timeline: TimelineId) -> Result<Option<String>> {
    if timeline == 1 {
        return Ok(None);
    }
    let name = WalFileName::History(timeline);
    let stored = repo.get_wal(&name)?.ok_or_else(|| {
        Error::Refused(format!(
            "the server writes timeline {timeline}, but its history file {name} is not in repository {}: \
             recovery could not follow this timeline; archive it with `pitr --repo {} archive-push pg_wal/{name}` \
             in the data directory",
            repo.location(),
            repo.location()
        ))
    })?;
    check_wal_object(&stored, &name, &repo.describe_wal(&name), None)?;
    Ok(Some(name.to_string()))
}

/// Forces a WAL switch and waits until the closed segment is in the repository and valid.
async fn switch_and_wait(repo: &Repo, server: &Server, timeline: TimelineId, timeout: Duration) -> Result<WalFileName> {
    // Without WAL since the last switch, pg_switch_wal would not switch, and an old segment
    // would pass for a new one.
    server
        .query_rows("SELECT pg_logical_emit_message(false, 'pitr', 'check')")
        .await?;
    let since = server.archiver_status().await?;
    let end = server.switch_wal().await?;
    let size = segment_size(server).await?;
    // pg_switch_wal returns an end pointer: the closed segment holds the byte before it.
    let segment = Segment {
        timeline,
        segno: size.segment_before(end),
    };
    let name = WalFileName::parse(&segment.file_name(size))?;
    let reason = match wait_until_archived(repo, server, &name, timeout, &since).await? {
        Waited::Archived => None,
        Waited::TimedOut => Some(format!(
            "switched WAL, but segment {name} did not reach repository {} within {} s: {}",
            repo.location(),
            timeout.as_secs(),
            archiver_state(server).await?
        )),
        Waited::Failing(reason) => Some(reason),
    };
    if let Some(reason) = reason {
        return Err(Error::Server {
            target: server.target().to_string(),
            reason,
        });
    }
    let stored = repo.get_wal(&name)?.ok_or_else(|| Error::Repo {
        path: repo.location().into(),
        reason: format!("{name} vanished right after it was archived; is expire running?"),
    })?;
    check_wal_object(&stored, &name, &repo.describe_wal(&name), repo.info()?.as_ref())?;
    Ok(name)
}

/// What `pg_stat_archiver` says about failures, for the timeout message.
async fn archiver_state(server: &Server) -> Result<String> {
    let rows = server
        .query_rows("SELECT failed_count, last_failed_wal, last_failed_time FROM pg_stat_archiver")
        .await?;
    let cell = |i: usize| {
        rows.first()
            .and_then(|r| r.get(i).cloned().flatten())
            .unwrap_or_default()
    };
    Ok(match cell(0).as_str() {
        "" | "0" => "pg_stat_archiver reports no failure: the archive_command may archive somewhere else, or \
                     archiving is slow"
            .to_string(),
        failures => format!(
            "pg_stat_archiver reports {failures} failures, the last for {} at {}: the server log has the \
             archive_command's error",
            cell(1),
            cell(2)
        ),
    })
}
