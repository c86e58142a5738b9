//! Deleting the packs that no deduplicated backup references: mark and sweep in two phases with
//! a grace period G (bench/dedup.md, section 8.4), run by expire under the backup lock, but
//! correct without it, on a store without rename whose listings may lag.
//!
//! - **Mark.** Every backup directory's manifest is read, one at a time, and every group record
//!   they reference once: the live packs are the index packs of their groups and the data packs
//!   of their pieces. A backup whose manifest cannot be read stops the sweep (its packs are
//!   unknown), as it stops WAL expiry.
//! - **Phase 1: condemn.** The packs that are not live and were written more than G ago (which
//!   keeps out the packs of a backup still running) are written as one create-only, checksummed
//!   record `gc/<UTC time>-<process>.json`. Nothing is deleted.
//! - **Phase 2: sweep.** A later expire takes each record written more than G ago, marks again,
//!   deletes each of its packs that is still not live, then the record.
//! - **Backups.** A deduplicated backup reads every record before its first read and never
//!   references a pack a record names: it stores such a piece again. It fails rather than
//!   commit later than G after its start.
//!
//! Why no live pack is deleted: let a record be written at T. A backup that references one of
//! its packs did not see the record, so it started before T (plus the listing lag L), and
//! committed before T + G (less L): every listing of phase 2, made after T + G, shows its
//! manifest, and the pack is kept. A kill -9 at any step leaves either a whole record or none,
//! and packs deleted or not: the next expire marks again and finishes (deleting an absent
//! object succeeds). Two expires at once compute the same sets.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::packs::{self, GroupRef, Hash};
use super::{read_backup, Tier};
use crate::codec::json;
use crate::crash_point;
use crate::error::{Error, Result};
use crate::repo::{backup_dir, pack_key, Repo, GC_DIR, PACKS_DIR};

/// G unless `PITR_PACK_GRACE_SECONDS` says otherwise (for tests, which cannot wait a day).
const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Group records read at once while marking.
const GROUPS_AT_ONCE: usize = 4096;

/// The grace period G: how long a pack stays condemned before it is deleted, and the longest a
/// deduplicated backup may take.
pub fn grace() -> Duration {
    std::env::var("PITR_PACK_GRACE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_GRACE, Duration::from_secs)
}

/// A phase-1 record: packs no backup referenced when it was written.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Condemned {
    /// When the expire that wrote it marked (for people; the store's time of the object counts).
    marked: DateTime<Utc>,
    /// The packs' names.
    packs: Vec<Hash>,
}

/// What the sweep of one expire did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PackSweep {
    /// Packs condemned by this expire (deleted by a later one, if still unreferenced).
    pub condemned: usize,
    /// Packs deleted, condemned at least the grace period ago.
    pub deleted: usize,
    /// Why nothing was swept, when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Every pack some record condemns: what a deduplicated backup must not reference.
pub fn condemned_packs(repo: &Repo) -> Result<HashSet<Hash>> {
    Ok(records(repo)?
        .into_iter()
        .flat_map(|(_, _, record)| record.packs)
        .collect())
}

/// Marks, deletes what records older than `grace` condemn and is still not live, and condemns
/// what is not live now.
pub fn sweep(repo: &Repo, grace: Duration) -> Result<PackSweep> {
    let (records, stored) = (records(repo)?, stored_packs(repo)?);
    if records.is_empty() && stored.is_empty() {
        return Ok(PackSweep::default()); // no deduplicated backup was ever taken: nothing to mark
    }
    let live = match mark(repo)? {
        Ok(live) => live,
        Err(skipped) => {
            return Ok(PackSweep {
                skipped: Some(skipped),
                ..PackSweep::default()
            })
        }
    };
    let now = SystemTime::now();
    let old_enough = |modified: SystemTime| now.duration_since(modified).is_ok_and(|age| age >= grace);
    let mut sweep = PackSweep::default();
    // Packs of records still in their grace period, and packs deleted by this run (the listing
    // of packs was taken before): neither is condemned again.
    let mut pending = HashSet::new();
    for (key, modified, record) in records {
        if !old_enough(modified) {
            pending.extend(record.packs);
            continue;
        }
        for pack in record.packs.iter().filter(|p| !live.contains(p)) {
            repo.storage().delete(&pack_key(&pack.hex()))?;
            sweep.deleted += 1;
            crash_point::reached("expire:pack-deleted");
        }
        repo.storage().delete(&key)?;
        pending.extend(record.packs);
    }
    let candidates: Vec<Hash> = stored
        .into_iter()
        .filter(|(pack, modified)| !live.contains(pack) && !pending.contains(pack) && old_enough(*modified))
        .map(|(pack, _)| pack)
        .collect();
    if !candidates.is_empty() {
        sweep.condemned = candidates.len();
        let marked = Utc::now();
        let key = format!(
            "{GC_DIR}{}-{}.json",
            marked.format("%Y%m%dT%H%M%S%.6fZ"),
            std::process::id()
        );
        repo.storage().put_if_absent(
            &key,
            &json::to_vec(&Condemned {
                marked,
                packs: candidates,
            }),
        )?;
        crash_point::reached("expire:condemned");
    }
    Ok(sweep)
}

/// The packs the backups reference, or why they cannot be known (a backup that cannot be read).
fn mark(repo: &Repo) -> Result<std::result::Result<HashSet<Hash>, String>> {
    let mut groups: HashSet<GroupRef> = HashSet::new();
    for tier in Tier::ALL {
        for dir in repo.storage().list(&format!("{}/", tier.name()))? {
            let Some(id) = dir.strip_suffix('/') else { continue };
            match read_backup(repo, tier, id)?.map(|entry| entry.manifest) {
                None => {} // being taken or deleted: its packs are younger than G, or condemned for it
                Some(Ok(manifest)) => groups.extend(manifest.files.iter().flat_map(|f| f.groups.iter().copied())),
                Some(Err(e)) => {
                    return Ok(Err(format!(
                        "backup {} cannot be read ({e}), so the packs it references are unknown",
                        backup_dir(tier.name(), id)
                    )))
                }
            }
        }
    }
    let mut live: HashSet<Hash> = groups.iter().map(|g| g.pack).collect();
    let mut refs: Vec<GroupRef> = groups.into_iter().collect();
    refs.sort_unstable_by_key(|g| (g.pack, g.at));
    for batch in refs.chunks(GROUPS_AT_ONCE) {
        let read = packs::read_groups(repo, batch).map_err(|e| {
            Error::Refused(format!(
                "expire cannot read the group records the backups reference, so it deletes no pack: {e}; run \
                 `pitr verify`"
            ))
        })?;
        for record in read.values() {
            live.extend(
                record
                    .pieces
                    .iter()
                    .filter_map(|p| p.stored)
                    .map(|(frame, _)| frame.pack),
            );
        }
    }
    Ok(Ok(live))
}

/// Every phase-1 record: its key, when it was written (the store's time) and what it condemns.
fn records(repo: &Repo) -> Result<Vec<(String, SystemTime, Condemned)>> {
    let mut found = Vec::new();
    for listed in repo.storage().list_meta(GC_DIR)? {
        let Some(meta) = listed.meta else { continue };
        let key = format!("{GC_DIR}{}", listed.name);
        let Some(bytes) = repo.storage().get(&key)? else {
            continue;
        };
        let record: Condemned = json::from_slice(&bytes, &repo.storage().describe(&key))?;
        found.push((key, meta.modified, record));
    }
    Ok(found)
}

/// Every pack in the repository, with when it was written.
fn stored_packs(repo: &Repo) -> Result<Vec<(Hash, SystemTime)>> {
    let mut found = Vec::new();
    for dir in repo.storage().list(PACKS_DIR)? {
        let Some(prefix) = dir.strip_suffix('/') else { continue };
        for listed in repo.storage().list_meta(&format!("{PACKS_DIR}{dir}"))? {
            let (Some(meta), Some(pack)) = (listed.meta, Hash::parse(&listed.name)) else {
                continue; // not a pack pitr wrote: left alone
            };
            if pack.hex().starts_with(prefix) {
                found.push((pack, meta.modified));
            }
        }
    }
    Ok(found)
}
