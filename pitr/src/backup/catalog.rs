//! The catalog of finished backups (those with a manifest), what `pitr list` shows, and the
//! clean-up of backups that never finished.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::manifest::Manifest;
use super::{Tier, MANIFEST};
use crate::error::{Error, Result};
use crate::repo::{backup_dir, Repo};
use crate::wal::{Lsn, Segment, SegmentSize, TimelineId, WalFileName};

/// Every finished backup in the repository, oldest first by stop time.
pub fn load_catalog(repo: &Repo) -> Result<Vec<Manifest>> {
    let mut manifests = scan_catalog(repo)?
        .into_iter()
        .map(|entry| entry.manifest)
        .collect::<Result<Vec<_>>>()?;
    manifests.sort_by_key(|m| m.stop_time);
    Ok(manifests)
}

/// A backup directory with a manifest, and that manifest as read.
pub struct CatalogEntry {
    /// The tier directory it is in.
    pub tier: Tier,
    /// Its directory name: the backup id.
    pub id: String,
    /// The parsed manifest, or why it could not be read.
    pub manifest: Result<Manifest>,
}

/// Every backup directory with a manifest, unreadable manifests included (for verification,
/// which reports them instead of stopping at the first).
pub fn scan_catalog(repo: &Repo) -> Result<Vec<CatalogEntry>> {
    let mut entries = Vec::new();
    for tier in Tier::ALL {
        for dir in repo.storage().list(&format!("{}/", tier.name()))? {
            let key = format!("{}/{dir}{MANIFEST}", tier.name());
            let Some(bytes) = repo.storage().get(&key)? else {
                continue;
            };
            let manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                what: repo.storage().describe(&key),
                reason: format!("unreadable backup manifest ({e})"),
            });
            entries.push(CatalogEntry {
                tier,
                id: dir.trim_end_matches('/').to_string(),
                manifest,
            });
        }
    }
    Ok(entries)
}

/// Deletes backup directories without a manifest (interrupted backups); returns their ids.
/// Only call while holding the backup lock, or a running backup would be deleted.
pub(super) fn delete_incomplete(repo: &Repo) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    for tier in Tier::ALL {
        for dir in repo.storage().list(&format!("{}/", tier.name()))? {
            let id = dir.trim_end_matches('/');
            if repo
                .storage()
                .head(&format!("{}/{dir}{MANIFEST}", tier.name()))?
                .is_none()
            {
                repo.storage().delete_all(&backup_dir(tier.name(), id))?;
                deleted.push(id.to_string());
            }
        }
    }
    Ok(deleted)
}

/// One backup as listed: the manifest without its file list, plus whether its WAL is archived.
#[derive(Debug, Clone, Serialize)]
pub struct BackupStatus {
    /// The backup id.
    pub id: String,
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
    /// Bytes stored.
    pub stored_bytes: u64,
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
    /// The status of a backup; `archived` is the set of archived WAL files, when known.
    pub fn of(m: &Manifest, archived: Option<&HashSet<WalFileName>>) -> BackupStatus {
        let missing = archived.map(|set| needed_segments(m).into_iter().find(|n| !set.contains(n)));
        BackupStatus {
            id: m.id.clone(),
            tier: m.tier,
            start_time: m.start_time,
            stop_time: m.stop_time,
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            timeline: m.timeline,
            original_bytes: m.original_bytes,
            stored_bytes: m.stored_bytes,
            first_wal: m.first_wal.clone(),
            last_wal: m.last_wal.clone(),
            duration_seconds: m.duration_seconds,
            wal_complete: missing.as_ref().map(Option::is_none),
            first_missing_wal: missing.flatten().map(|n| n.to_string()),
        }
    }
}

/// The segments from a backup's start to its consistency point.
fn needed_segments(m: &Manifest) -> Vec<WalFileName> {
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
    /// Backups, oldest first.
    pub backups: Vec<BackupStatus>,
    /// Archived WAL per timeline.
    pub wal: Vec<TimelineRange>,
}

/// The backups of `tier` (all when `None`) with their WAL status, and the archived WAL ranges.
pub fn list(repo: &Repo, tier: Option<Tier>) -> Result<Listing> {
    let archived: HashSet<WalFileName> = repo.list_wal()?.into_iter().collect();
    let backups = load_catalog(repo)?
        .iter()
        .filter(|m| tier.is_none_or(|t| m.tier == t))
        .map(|m| BackupStatus::of(m, Some(&archived)))
        .collect();
    let size = repo
        .info()?
        .and_then(|i| SegmentSize::new(i.wal_segment_size))
        .unwrap_or(SegmentSize::DEFAULT);
    Ok(Listing {
        backups,
        wal: timeline_ranges(&archived, size),
    })
}

fn timeline_ranges(archived: &HashSet<WalFileName>, size: SegmentSize) -> Vec<TimelineRange> {
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
                timeline,
                first: Segment { timeline, segno: first }.file_name(size),
                last: Segment { timeline, segno: last }.file_name(size),
                segments: count,
                missing: last - first + 1 - count,
            }
        })
        .collect()
}
