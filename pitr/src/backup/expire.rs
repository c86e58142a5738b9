//! Retention: keep the newest N backups per tier (by real stop time, never by name), and delete
//! the WAL that no retained backup needs. Timeline history files are kept forever.
//!
//! Deletion order keeps the repository consistent after a crash at any point: a backup is first
//! marked incomplete, then its manifest and the manifest's copy go (the backup stops existing),
//! then its files; WAL goes last, and only WAL older than the oldest backup that is still listed.
//! Expire holds the backup lock, so it never runs beside a backup. While a backup's manifest
//! cannot be read, no WAL is expired: where that backup starts is unknown.

use serde::Serialize;

use super::catalog::UnreadableBackup;
use super::manifest::Manifest;
use super::{lock_backups, scan_catalog, Tier};
use crate::crash_point;
use crate::error::Result;
use crate::repo::{backup_dir, Repo, INCOMPLETE_MARKER, MANIFEST, MANIFEST_COPY};
use crate::wal::{SegmentSize, WalFileName};

/// How many backups each tier keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Hourly backups kept (runbook: 24).
    pub hourly: usize,
    /// Daily backups kept (runbook: 7).
    pub daily: usize,
    /// Weekly backups kept (runbook: 4).
    pub weekly: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            hourly: 24,
            daily: 7,
            weekly: 4,
        }
    }
}

impl Retention {
    fn keep(&self, tier: Tier) -> usize {
        match tier {
            Tier::Hourly => self.hourly,
            Tier::Daily => self.daily,
            Tier::Weekly => self.weekly,
        }
    }
}

/// A backup that expire deletes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpiredBackup {
    /// Its id.
    pub id: String,
    /// Its tier.
    pub tier: Tier,
    /// Why it goes.
    pub reason: String,
}

/// What expire deletes, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpirePlan {
    /// Backups beyond their tier's count.
    pub backups: Vec<ExpiredBackup>,
    /// WAL files older than every retained backup's first needed segment.
    pub wal: Vec<String>,
    /// The oldest segment kept, when any backup is retained.
    pub wal_kept_from: Option<String>,
    /// Backups whose manifest cannot be read: never deleted by expire, and while there is one
    /// no WAL is expired.
    pub unreadable: Vec<UnreadableBackup>,
}

/// Decides what to delete; `tier` limits backup expiry to one tier (WAL expiry always considers
/// every retained backup, and is skipped while a backup is `unreadable`). Pure: no repository
/// access.
pub fn plan_expire(
    catalog: &[Manifest],
    unreadable: Vec<UnreadableBackup>,
    archived: &[WalFileName],
    size: SegmentSize,
    retention: Retention,
    tier: Option<Tier>,
) -> ExpirePlan {
    let mut backups = Vec::new();
    let mut retained: Vec<&Manifest> = Vec::new();
    for t in Tier::ALL {
        let mut of_tier: Vec<&Manifest> = catalog.iter().filter(|m| m.tier == t).collect();
        of_tier.sort_by_key(|m| std::cmp::Reverse(m.stop_time));
        let keep = if tier.is_none_or(|only| only == t) {
            retention.keep(t)
        } else {
            usize::MAX
        };
        for (i, m) in of_tier.into_iter().enumerate() {
            if i < keep {
                retained.push(m);
            } else {
                let reason = format!("{t} keeps the newest {}; this is number {}", keep, i + 1);
                backups.push(ExpiredBackup {
                    id: m.id.clone(),
                    tier: t,
                    reason,
                });
            }
        }
    }
    let oldest_needed = retained.iter().map(|m| size.segment_of(m.start_lsn)).min();
    let wal = match oldest_needed.filter(|_| unreadable.is_empty()) {
        Some(first) => archived
            .iter()
            .filter(|name| {
                name.segment_name()
                    .or(backup_file_segment(name))
                    .and_then(|s| s.segment(size))
                    .is_some_and(|s| s.segno < first)
            })
            .map(|name| name.to_string())
            .collect(),
        // No backup (every archived file may still be needed), or one whose start is unknown.
        None => Vec::new(),
    };
    let wal_kept_from = retained
        .iter()
        .min_by_key(|m| size.segment_of(m.start_lsn))
        .map(|m| m.first_wal.clone());
    ExpirePlan {
        backups,
        wal,
        wal_kept_from,
        unreadable,
    }
}

fn backup_file_segment(name: &WalFileName) -> Option<crate::wal::SegmentName> {
    match name {
        WalFileName::Backup(s, _) => Some(*s),
        _ => None,
    }
}

/// Plans and, unless `dry_run`, carries out expiry (holding the backup lock).
pub fn expire(repo: &Repo, retention: Retention, tier: Option<Tier>, dry_run: bool) -> Result<ExpirePlan> {
    let _lock = (!dry_run).then(|| lock_backups(repo)).transpose()?;
    let entries = scan_catalog(repo)?;
    let unreadable = UnreadableBackup::all_in(&entries);
    let catalog: Vec<Manifest> = entries.into_iter().filter_map(|e| e.manifest.ok()).collect();
    let archived = repo.list_wal()?;
    let size = repo
        .info()?
        .and_then(|i| SegmentSize::new(i.wal_segment_size))
        .unwrap_or(SegmentSize::DEFAULT);
    let plan = plan_expire(&catalog, unreadable, &archived, size, retention, tier);
    if dry_run {
        return Ok(plan);
    }
    for backup in &plan.backups {
        let dir = backup_dir(backup.tier.name(), &backup.id);
        repo.storage().put_if_absent(
            &format!("{dir}{INCOMPLETE_MARKER}"),
            format!("expired by pitr (process {})\n", std::process::id()).as_bytes(),
        )?;
        crash_point::reached("expire:marked");
        repo.storage().delete(&format!("{dir}{MANIFEST}"))?;
        crash_point::reached("expire:manifest-deleted");
        repo.storage().delete(&format!("{dir}{MANIFEST_COPY}"))?;
        repo.storage().delete_all(&dir)?;
        crash_point::reached("expire:deleted");
    }
    for name in &plan.wal {
        repo.delete_wal(&WalFileName::parse(name)?)?;
        crash_point::reached("expire:wal");
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::wal::Segment;

    fn backup(tier: Tier, hour: u32, start_segno: u64) -> Manifest {
        let stop_time = Utc.with_ymd_and_hms(2026, 1, 1, hour, 5, 0).unwrap();
        // Names sort the other way round from stop times: expiry must go by time.
        let id = format!("main_{tier}_{}", 99 - hour);
        Manifest::for_test(&id, tier, 1, start_segno..=start_segno, stop_time)
    }

    fn wal(segnos: std::ops::Range<u64>) -> Vec<WalFileName> {
        let mut names: Vec<WalFileName> = segnos
            .map(|segno| WalFileName::parse(&Segment { timeline: 1, segno }.file_name(SegmentSize::DEFAULT)).unwrap())
            .collect();
        names.push(WalFileName::parse("00000002.history").unwrap());
        names.push(WalFileName::parse("000000010000000000000002.00000028.backup").unwrap());
        names
    }

    #[test]
    fn keeps_the_newest_per_tier_by_stop_time_and_the_wal_they_need() {
        let catalog = vec![
            backup(Tier::Hourly, 1, 2),
            backup(Tier::Hourly, 2, 4),
            backup(Tier::Hourly, 3, 6),
            backup(Tier::Daily, 0, 3),
        ];
        let retention = Retention {
            hourly: 2,
            daily: 1,
            weekly: 1,
        };
        let plan = plan_expire(&catalog, vec![], &wal(1..9), SegmentSize::DEFAULT, retention, None);
        assert_eq!(
            plan.backups.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
            ["main_hourly_98"]
        );
        // The daily backup starts in segment 3: segments 1 and 2 and the .backup file of 2 go.
        assert_eq!(
            plan.wal,
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup"
            ]
        );
        assert_eq!(plan.wal_kept_from.as_deref(), Some("000000010000000000000003"));
    }

    #[test]
    fn a_tier_filter_leaves_other_tiers_alone() {
        let catalog = vec![
            backup(Tier::Daily, 1, 2),
            backup(Tier::Daily, 2, 4),
            backup(Tier::Hourly, 3, 6),
        ];
        let retention = Retention {
            hourly: 1,
            daily: 1,
            weekly: 1,
        };
        let plan = plan_expire(
            &catalog,
            vec![],
            &wal(1..9),
            SegmentSize::DEFAULT,
            retention,
            Some(Tier::Hourly),
        );
        assert!(plan.backups.is_empty());
        assert_eq!(plan.wal, ["000000010000000000000001"]);
    }

    #[test]
    fn without_backups_no_wal_is_deleted() {
        let plan = plan_expire(
            &[],
            vec![],
            &wal(1..9),
            SegmentSize::DEFAULT,
            Retention::default(),
            None,
        );
        assert!(plan.wal.is_empty() && plan.backups.is_empty());
    }

    #[test]
    fn no_wal_is_expired_while_a_backup_is_unreadable() {
        let catalog = vec![backup(Tier::Hourly, 1, 2), backup(Tier::Hourly, 2, 6)];
        let retention = Retention {
            hourly: 1,
            ..Retention::default()
        };
        let damaged = UnreadableBackup {
            id: "main_daily_x".into(),
            tier: Tier::Daily,
            reason: "damaged".into(),
        };
        let plan = plan_expire(
            &catalog,
            vec![damaged],
            &wal(1..9),
            SegmentSize::DEFAULT,
            retention,
            None,
        );
        assert_eq!(plan.backups.len(), 1, "readable backups still expire");
        assert!(plan.wal.is_empty(), "{:?}", plan.wal);
        assert_eq!(plan.unreadable.len(), 1);
    }
}
