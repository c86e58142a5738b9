//! Setting a cluster up for pitr: creating its repository on purpose (`pitr create-repo`), like
//! pgBackRest's `stanza-create`. The repository records the cluster it belongs to (`repo.json`)
//! before anything is archived, so that a standby pointed at it can start (archive-get answers
//! "absent" instead of "unusable repository") and a promoted standby can archive its timeline
//! history file first.

use serde::Serialize;

use crate::backup::{cluster_identity, scan_catalog};
use crate::error::Result;
use crate::pg::Server;
use crate::repo::{Created, Repo, RepoInfo};

/// What `pitr create-repo` did.
#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    /// Where the repository is.
    pub repository: String,
    /// The cluster it is for.
    pub cluster: RepoInfo,
    /// What was done.
    pub outcome: Created,
}

/// Creates `repo` for the cluster behind `server` (see [`Repo::create`]).
pub async fn create_repo(repo: &Repo, server: &Server) -> Result<CreateReport> {
    let cluster = cluster_identity(server).await?;
    let backups: Vec<(String, (u64, u32, u32))> = scan_catalog(repo)?
        .into_iter()
        .filter_map(|entry| {
            let m = entry.manifest.ok()?;
            Some((m.id, (m.system_identifier, m.pg_version, m.wal_segment_size)))
        })
        .collect();
    let outcome = repo.create(cluster, &backups)?;
    Ok(CreateReport {
        repository: repo.location(),
        cluster,
        outcome,
    })
}
