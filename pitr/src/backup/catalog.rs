//! The catalog of finished backups, what `pitr list` shows, and the clean-up of backups that
//! never finished.
//!
//! A backup directory is, by what it holds:
//! - **complete**: `backup.manifest` reads;
//! - **complete, read from the copy**: `backup.manifest` is missing or damaged but
//!   `backup.manifest.copy` reads (and the backup is not being taken or deleted);
//! - **incomplete**: no manifest and the `backup.incomplete` marker (being taken, interrupted,
//!   or being deleted), or nothing but temporary files: not a backup; the next backup deletes it;
//! - **unreadable**: neither manifest reads, or both are gone without the marker (the manifest
//!   was lost): kept, and named by `list`, `verify` and `expire`, never deleted by pitr.
//!
//! One unreadable backup never stops the others from being listed, restored or expired.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::manifest::{Manifest, ManifestSummary};
use super::Tier;
use crate::error::{Error, Result};
use crate::repo::{backup_dir, Generation, Repo, INCOMPLETE_MARKER, MANIFEST, MANIFEST_COPY};
use crate::wal::{Lsn, Segment, SegmentSize, TimelineId, WalFileName};

/// Every backup whose manifest reads (from its copy where the manifest itself does not), oldest
/// first by stop time. Unreadable backups are left out: [`scan_catalog`] names them.
pub fn load_catalog(repo: &Repo) -> Result<Vec<Manifest>> {
    let mut manifests: Vec<Manifest> = scan_catalog(repo)?
        .into_iter()
        .filter_map(|entry| entry.manifest.ok())
        .collect();
    manifests.sort_by_key(|m| m.stop_time);
    Ok(manifests)
}

/// [`load_catalog`] summarized: for what needs no file lists (choosing a backup, its size).
pub fn load_summaries(repo: &Repo) -> Result<Vec<ManifestSummary>> {
    let mut summaries: Vec<ManifestSummary> = scan_summaries(repo)?
        .into_iter()
        .filter_map(|entry| entry.manifest.ok())
        .collect();
    summaries.sort_by_key(|m| m.stop_time);
    Ok(summaries)
}

/// A backup directory that is a backup (complete or unreadable, not incomplete), with its
/// manifest ([`scan_catalog`]) or its summary ([`scan_summaries`]).
pub struct CatalogEntry<M = Manifest> {
    /// The tier directory it is in.
    pub tier: Tier,
    /// Its directory name: the backup id.
    pub id: String,
    /// The parsed manifest, or why the backup cannot be read.
    pub manifest: Result<M>,
    /// What is wrong although the manifest was read: it came from the copy, because the
    /// manifest itself is missing or damaged, or the copy is missing or damaged (summaries
    /// compare no copy: only the first is told).
    pub damage: Option<String>,
}

/// Every backup, unreadable ones included (for verification, which reports them instead of
/// stopping at the first).
pub fn scan_catalog(repo: &Repo) -> Result<Vec<CatalogEntry>> {
    scan(repo, |tier, id| read_entry(repo, tier, id, true))
}

/// Every backup as [`scan_catalog`] reads it, summarized as it is read, so that a thousand
/// manifests never lie in memory at once; a manifest that reads is not compared with its copy
/// (only verification reports a damaged copy). For listing, expiry and planning.
pub fn scan_summaries(repo: &Repo) -> Result<Vec<CatalogEntry<ManifestSummary>>> {
    scan(repo, |tier, id| {
        Ok(read_entry(repo, tier, id, false)?.map(|entry| CatalogEntry {
            tier: entry.tier,
            id: entry.id,
            manifest: entry.manifest.map(ManifestSummary::from),
            damage: entry.damage,
        }))
    })
}

/// The backup `<tier>/<id>/` as [`scan_catalog`] reads it, or `None` when it is incomplete or gone.
pub fn read_backup(repo: &Repo, tier: Tier, id: &str) -> Result<Option<CatalogEntry>> {
    read_entry(repo, tier, id, true)
}

/// `read` of every backup directory, in tier order and then by name: several at once, since a
/// thousand manifests of a few hundred kilobytes each take a second of parsing and checksumming
/// (or, from a remote store, a thousand round trips).
fn scan<M: Send>(
    repo: &Repo,
    read: impl Fn(Tier, &str) -> Result<Option<CatalogEntry<M>>> + Sync,
) -> Result<Vec<CatalogEntry<M>>> {
    use rayon::prelude::*;
    let mut dirs = Vec::new();
    for tier in Tier::ALL {
        for dir in repo.storage().list(&format!("{}/", tier.name()))? {
            let Some(id) = dir.strip_suffix('/') else {
                continue; // a stray file in a tier directory is no backup
            };
            dirs.push((tier, id.to_string()));
        }
    }
    let read = dirs
        .par_iter()
        .map(|(tier, id)| read(*tier, id))
        .collect::<Result<Vec<_>>>()?;
    Ok(read.into_iter().flatten().collect())
}

/// The backup in `<tier>/<id>/`, or `None` when it is incomplete; `compare_copy`: also check
/// the copy of a manifest that reads.
fn read_entry(repo: &Repo, tier: Tier, id: &str, compare_copy: bool) -> Result<Option<CatalogEntry>> {
    let dir = backup_dir(tier.name(), id);
    let entry = |manifest: Result<Manifest>, damage: Option<String>| {
        Ok(Some(CatalogEntry {
            tier,
            id: id.to_string(),
            manifest,
            damage,
        }))
    };
    let main_key = format!("{dir}{MANIFEST}");
    let main_bytes = repo.storage().get(&main_key)?;
    let main = main_bytes
        .as_deref()
        .map(|bytes| Manifest::from_bytes(bytes, &repo.storage().describe(&main_key)));
    let problem = match main {
        Some(Ok(manifest)) if !compare_copy => return entry(Ok(manifest), None),
        Some(Ok(manifest)) => {
            let copy_damage = check_copy(repo, &dir, &manifest, main_bytes.as_deref().unwrap_or_default())?;
            return entry(Ok(manifest), copy_damage);
        }
        None if is_incomplete(repo, &dir)? => return Ok(None),
        None => format!("{} is missing", repo.storage().describe(&format!("{dir}{MANIFEST}"))),
        Some(Err(e)) => e.to_string(),
    };
    match read_manifest(repo, &format!("{dir}{MANIFEST_COPY}"))? {
        Some(Ok(manifest)) => entry(
            Ok(manifest),
            Some(format!("{problem}; the backup was read from {MANIFEST_COPY}")),
        ),
        copy => {
            let copy = match copy {
                Some(Err(e)) => format!("its copy is damaged too ({e})"),
                _ => format!("there is no {MANIFEST_COPY}"),
            };
            entry(
                Err(Error::Corrupt {
                    what: format!("backup {id} ({})", repo.storage().describe(&dir)),
                    reason: format!(
                        "{problem}, and {copy}: the backup cannot be restored. If the manifest was deleted, \
                         restore it from a copy of the repository; pitr keeps the backup's files"
                    ),
                }),
                None,
            )
        }
    }
}

/// What is wrong with the copy of a manifest that reads: since format 3 the copy holds the same
/// bytes, so that it can stand in when the manifest is damaged.
fn check_copy(repo: &Repo, dir: &str, manifest: &Manifest, main: &[u8]) -> Result<Option<String>> {
    if manifest.format_version < 3 {
        return Ok(None); // written before the copy existed
    }
    let key = format!("{dir}{MANIFEST_COPY}");
    Ok(match repo.storage().get(&key)? {
        Some(copy) if copy == main => None,
        Some(_) => Some(format!(
            "{} differs from {MANIFEST}: the copy is damaged (the backup reads from {MANIFEST})",
            repo.storage().describe(&key)
        )),
        None => Some(format!(
            "{} is missing (the backup reads from {MANIFEST})",
            repo.storage().describe(&key)
        )),
    })
}

/// A stored manifest: `None` when absent, the error when it does not read.
fn read_manifest(repo: &Repo, key: &str) -> Result<Option<Result<Manifest>>> {
    Ok(repo
        .storage()
        .get(key)?
        .map(|bytes| Manifest::from_bytes(&bytes, &repo.storage().describe(key))))
}

/// A directory without manifest that never became a backup: it carries the marker, or nothing
/// but temporary files.
fn is_incomplete(repo: &Repo, dir: &str) -> Result<bool> {
    Ok(repo.storage().head(&format!("{dir}{INCOMPLETE_MARKER}"))?.is_some() || repo.storage().list(dir)?.is_empty())
}

/// Deletes backup directories that never finished (interrupted backups, interrupted
/// deletions) and markers that finished backups left behind; returns the deleted ids. Only call
/// while holding the backup lock, or a running backup would be deleted.
pub(super) fn delete_incomplete(repo: &Repo) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    for tier in Tier::ALL {
        for dir in repo.storage().list(&format!("{}/", tier.name()))? {
            let Some(id) = dir.strip_suffix('/') else { continue };
            let dir = backup_dir(tier.name(), id);
            let has_manifest = repo.storage().head(&format!("{dir}{MANIFEST}"))?.is_some();
            if !has_manifest && is_incomplete(repo, &dir)? {
                repo.storage().delete_all(&dir)?;
                deleted.push(id.to_string());
            } else if has_manifest {
                repo.storage().delete(&format!("{dir}{INCOMPLETE_MARKER}"))?;
            }
        }
    }
    Ok(deleted)
}

/// A backup whose manifest cannot be read, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnreadableBackup {
    /// The backup id (its directory).
    pub id: String,
    /// Its tier.
    pub tier: Tier,
    /// Why it cannot be read.
    pub reason: String,
}

impl UnreadableBackup {
    /// The unreadable backups among `entries`.
    pub fn all_in<M>(entries: &[CatalogEntry<M>]) -> Vec<UnreadableBackup> {
        entries
            .iter()
            .filter_map(|e| {
                Some(UnreadableBackup {
                    id: e.id.clone(),
                    tier: e.tier,
                    reason: e.manifest.as_ref().err()?.to_string(),
                })
            })
            .collect()
    }
}

/// One backup as listed: the manifest without its file list, plus whether its WAL is archived.
#[derive(Debug, Clone, Serialize)]
pub struct BackupStatus {
    /// The backup id.
    pub id: String,
    /// The repository generation whose cluster it is of (whose WAL recovers it).
    pub generation: u32,
    /// The PostgreSQL major of its cluster.
    pub pg_version: u32,
    /// Its tier.
    pub tier: Tier,
    /// When it started.
    pub start_time: DateTime<Utc>,
    /// When it became consistent.
    pub stop_time: DateTime<Utc>,
    /// Start LSN.
    pub start_lsn: Lsn,
    /// Stop LSN.
    pub stop_lsn: Lsn,
    /// Timeline.
    pub timeline: TimelineId,
    /// Bytes copied.
    pub original_bytes: u64,
    /// Bytes stored: for a deduplicated backup, what it stored that no earlier one had.
    pub stored_bytes: u64,
    /// Whether its files lie in packs shared with other backups (manifest format 7).
    pub deduplicated: bool,
    /// First WAL segment needed.
    pub first_wal: String,
    /// Last WAL segment needed for consistency.
    pub last_wal: String,
    /// Seconds the backup took.
    pub duration_seconds: f64,
    /// Whether every needed segment is archived (`None` when not checked).
    pub wal_complete: Option<bool>,
    /// The first needed segment that is missing, if any.
    pub first_missing_wal: Option<String>,
}

impl BackupStatus {
    /// The status of a backup of `generation`; `archived` is the set of that generation's
    /// archived WAL files, when known.
    pub fn of(m: &ManifestSummary, generation: u32, archived: Option<&HashSet<WalFileName>>) -> BackupStatus {
        let missing = archived.map(|set| needed_segments(m).into_iter().find(|n| !set.contains(n)));
        BackupStatus {
            id: m.id.clone(),
            generation,
            pg_version: m.pg_version,
            tier: m.tier,
            start_time: m.start_time,
            stop_time: m.stop_time,
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            timeline: m.timeline,
            original_bytes: m.original_bytes,
            stored_bytes: m.stored_bytes,
            deduplicated: m.is_deduplicated(),
            first_wal: m.first_wal.clone(),
            last_wal: m.last_wal.clone(),
            duration_seconds: m.duration_seconds,
            wal_complete: missing.as_ref().map(Option::is_none),
            first_missing_wal: missing.flatten().map(|n| n.to_string()),
        }
    }
}

/// The segments from a backup's start to its consistency point.
fn needed_segments(m: &ManifestSummary) -> Vec<WalFileName> {
    let size = m.segment_size();
    m.consistency_segments()
        .filter_map(|segno| {
            WalFileName::parse(
                &Segment {
                    timeline: m.timeline,
                    segno,
                }
                .file_name(size),
            )
            .ok()
        })
        .collect()
}

/// The archived segments of one timeline.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineRange {
    /// The repository generation whose WAL it is.
    pub generation: u32,
    /// The timeline.
    pub timeline: TimelineId,
    /// The oldest archived segment.
    pub first: String,
    /// The newest archived segment.
    pub last: String,
    /// How many segments are archived.
    pub segments: u64,
    /// Segments missing between first and last.
    pub missing: u64,
}

/// What `pitr list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// The repository's generations, oldest first (the last is the current one; none before
    /// anything was written).
    pub generations: Vec<Generation>,
    /// Backups of every generation, oldest first.
    pub backups: Vec<BackupStatus>,
    /// Backups whose manifest cannot be read.
    pub unreadable: Vec<UnreadableBackup>,
    /// Archived WAL per generation and timeline.
    pub wal: Vec<TimelineRange>,
}

/// The backups of `tier` (all when `None`) of every generation with their WAL status (in their
/// generation's WAL), and the archived WAL ranges of every generation.
pub fn list(repo: &Repo, tier: Option<Tier>) -> Result<Listing> {
    let generations = repo.generations()?;
    let list = generations.as_ref().map_or(Vec::new(), |g| g.all().to_vec());
    let current = list.last().map_or(1, |g| g.generation);
    let mut archived: BTreeMap<u32, HashSet<WalFileName>> = BTreeMap::new();
    let mut wal = Vec::new();
    for generation in list.iter().map(|g| g.generation).chain(list.is_empty().then_some(1)) {
        let files: HashSet<WalFileName> = repo.at(generation)?.list_wal()?.into_iter().collect();
        let size = list
            .iter()
            .find(|g| g.generation == generation)
            .map_or(SegmentSize::DEFAULT, Generation::segment_size);
        wal.extend(timeline_ranges(generation, &files, size));
        archived.insert(generation, files);
    }
    let entries: Vec<CatalogEntry<ManifestSummary>> = scan_summaries(repo)?
        .into_iter()
        .filter(|e| tier.is_none_or(|t| e.tier == t))
        .collect();
    let mut manifests: Vec<&ManifestSummary> = entries.iter().filter_map(|e| e.manifest.as_ref().ok()).collect();
    manifests.sort_by_key(|m| m.stop_time);
    let generation_of = |m: &ManifestSummary| {
        generations
            .as_ref()
            .and_then(|g| g.of_cluster(m.system_identifier))
            .map_or(current, |g| g.generation)
    };
    Ok(Listing {
        generations: list.clone(),
        backups: manifests
            .iter()
            .map(|m| {
                let generation = generation_of(m);
                BackupStatus::of(m, generation, archived.get(&generation))
            })
            .collect(),
        unreadable: UnreadableBackup::all_in(&entries),
        wal,
    })
}

fn timeline_ranges(generation: u32, archived: &HashSet<WalFileName>, size: SegmentSize) -> Vec<TimelineRange> {
    let mut per_timeline: BTreeMap<TimelineId, Vec<u64>> = BTreeMap::new();
    for name in archived {
        if let WalFileName::Segment(s) = name {
            if let Some(seg) = s.segment(size) {
                per_timeline.entry(seg.timeline).or_default().push(seg.segno);
            }
        }
    }
    per_timeline
        .into_iter()
        .map(|(timeline, segnos)| {
            let (first, last) = (
                *segnos.iter().min().expect("non-empty"),
                *segnos.iter().max().expect("non-empty"),
            );
            let count = segnos.len() as u64;
            TimelineRange {
                generation,
                timeline,
                first: Segment { timeline, segno: first }.file_name(size),
                last: Segment { timeline, segno: last }.file_name(size),
                segments: count,
                missing: last - first + 1 - count,
            }
        })
        .collect()
}
