//! A repository's generations: creating its first one for a cluster on purpose (`pitr create-repo`), like
//! pgBackRest's `stanza-create`, and starting a new generation of it after a major upgrade
//! (`pitr upgrade-repo`), like `stanza-upgrade`.
//!
//! The repository records the cluster it belongs to (`repo.json`) before anything is archived,
//! so that a standby pointed at it can start (archive-get answers "absent" instead of "unusable
//! repository") and a promoted standby can archive its timeline history file first. After
//! `pg_upgrade` the cluster has a new system identifier and major version, and its WAL names
//! start over: `upgrade-repo` records it as the next generation, with a WAL directory of its own,
//! and the older generations' backups, WAL and restore points stay usable for recovery with the
//! older major's binaries.

use chrono::Utc;
use serde::Serialize;

use crate::backup::{cluster_identity, lock_backups, scan_summaries};
use crate::error::{Error, Result};
use crate::pg::Server;
use crate::repo::{Cluster, Created, Generation, Repo};

/// What `pitr create-repo` did.
#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    /// Where the repository is.
    pub repository: String,
    /// The cluster it is for.
    pub cluster: Cluster,
    /// What was done.
    pub outcome: Created,
}

/// Creates `repo` for the cluster behind `server` (see [`Repo::create`]).
pub async fn create_repo(repo: &Repo, server: &Server) -> Result<CreateReport> {
    let cluster = cluster_identity(server).await?;
    let backups: Vec<(String, Cluster)> = scan_summaries(repo)?
        .into_iter()
        .filter_map(|entry| {
            let m = entry.manifest.ok()?;
            let cluster = Cluster {
                pg_version: m.pg_version,
                system_identifier: m.system_identifier,
                wal_segment_size: m.wal_segment_size,
            };
            Some((m.id, cluster))
        })
        .collect();
    repo.check_create_only()?;
    let outcome = repo.create(cluster, &backups)?;
    Ok(CreateReport {
        repository: repo.location(),
        cluster,
        outcome,
    })
}

/// What `pitr upgrade-repo` did.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    /// Where the repository is.
    pub repository: String,
    /// The generation it archived into until now.
    pub previous: Generation,
    /// The generation started for the server's cluster, now the current one.
    pub current: Generation,
}

/// Starts a new generation of `repo` for the upgraded cluster behind `server` (see
/// [`Repo::upgrade`]). It checks that the server is a primary of a cluster the repository does
/// not record yet, of the current generation's major or a newer one, and that the repository's
/// repo.json reads; it holds the backup lock, so that no backup or expire runs meanwhile.
pub async fn upgrade_repo(repo: &Repo, server: &Server) -> Result<UpgradeReport> {
    if server.is_in_recovery().await? {
        return Err(Error::Server {
            target: server.target().to_string(),
            reason: "is a standby or in recovery: run upgrade-repo against the upgraded primary".into(),
        });
    }
    let cluster = cluster_identity(server).await?;
    let _lock = lock_backups(repo)?;
    let previous = repo.pin()?.generation()?;
    let current = repo.upgrade(cluster, Utc::now())?;
    Ok(UpgradeReport {
        repository: repo.location(),
        previous: previous.expect("upgrade refuses a repository without generations"),
        current,
    })
}
