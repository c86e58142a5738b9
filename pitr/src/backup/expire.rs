//! Retention: keep the newest N backups per tier (by real stop time, never by name, over every
//! generation of the repository), and delete the WAL that no retained backup needs, in each
//! generation's WAL: what is older than its oldest retained backup, and all of an earlier
//! generation's once none of its backups is retained. Timeline history files are kept forever.
//! Drill records (`drills/`) go once no retained backup is theirs, but for the newest record and
//! the newest passing record of each tier, which the drill alerts, metrics and status page read.
//!
//! Deletion order keeps the repository consistent after a crash at any point: a backup is first
//! marked incomplete, then its manifest and the manifest's copy go (the backup stops existing),
//! then its files; then the drill records of the backups gone, each one object deleted whole;
//! WAL goes last, and only WAL older than the oldest backup that is still listed.
//! Expire holds the backup lock, so it never runs beside a backup. While a backup's manifest
//! cannot be read, no WAL is expired: where that backup starts is unknown.

use serde::Serialize;

use super::catalog::UnreadableBackup;
use super::manifest::ManifestSummary;
use super::sweep::{self, PackSweep};
use super::{lock_backups, scan_summaries, Tier};
use crate::crash_point;
use crate::drill::DrillRecord;
use crate::error::{Error, Result};
use crate::repo::{backup_dir, Generation, Repo, INCOMPLETE_MARKER, MANIFEST, MANIFEST_COPY};
use crate::wal::{Lsn, SegmentSize, WalFileName};

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

/// A drill record that expire deletes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpiredDrill {
    /// Its key in the repository (`drills/<YYYYMMDDTHHMMSS>_<tier>.json`).
    pub record: String,
    /// Its tier.
    pub tier: Tier,
    /// The backup it drilled, which is not retained.
    pub backup_id: String,
}

/// What expire deletes, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpirePlan {
    /// Backups beyond their tier's count.
    pub backups: Vec<ExpiredBackup>,
    /// Drill records of backups not retained, older than their tier's newest record and newest
    /// passing record.
    pub drills: Vec<ExpiredDrill>,
    /// WAL files of the current generation older than every retained backup's first needed
    /// segment.
    pub wal: Vec<String>,
    /// The oldest segment of the current generation kept, when any of its backups is retained.
    pub wal_kept_from: Option<String>,
    /// The same for each earlier generation, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier_generations: Vec<GenerationExpiry>,
    /// Backups whose manifest cannot be read: never deleted by expire, and while there is one
    /// no WAL is expired.
    pub unreadable: Vec<UnreadableBackup>,
    /// What the sweep of unreferenced packs did, when it condemned or deleted packs or could not
    /// sweep (not planned: it marks when it runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packs: Option<PackSweep>,
}

/// What expire deletes of an earlier generation's WAL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationExpiry {
    /// The generation.
    pub generation: u32,
    /// Its WAL files that no retained backup of it needs (all of them once none is retained).
    pub wal: Vec<String>,
    /// Its oldest segment kept, when any of its backups is retained.
    pub wal_kept_from: Option<String>,
}

/// One generation's WAL archive, as expire judges it.
#[derive(Debug, Clone)]
pub struct GenerationWal {
    /// The generation (`None` for a repository without repo.json: one generation, current).
    pub generation: Option<Generation>,
    /// Whether it is the current one.
    pub current: bool,
    /// Its archived WAL files.
    pub archived: Vec<WalFileName>,
}

impl GenerationWal {
    fn size(&self) -> SegmentSize {
        self.generation.map_or(SegmentSize::DEFAULT, |g| g.segment_size())
    }
}

/// Decides what to delete; `tier` limits backup expiry to one tier (WAL and drill expiry always
/// consider every retained backup; WAL expiry is skipped while a backup is `unreadable`).
/// `archives` holds each generation's WAL; a backup belongs to the generation of its cluster
/// (to the current one when no generation has its cluster). `drills` are the readable drill
/// records, oldest first. Pure: no repository access.
pub fn plan_expire(
    catalog: &[ManifestSummary],
    unreadable: Vec<UnreadableBackup>,
    archives: &[GenerationWal],
    drills: &[DrillRecord],
    retention: Retention,
    tier: Option<Tier>,
) -> ExpirePlan {
    let mut backups = Vec::new();
    let mut retained: Vec<&ManifestSummary> = Vec::new();
    for t in Tier::ALL {
        let mut of_tier: Vec<&ManifestSummary> = catalog.iter().filter(|m| m.tier == t).collect();
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
    let of_cluster = |m: &ManifestSummary| {
        archives
            .iter()
            .position(|a| a.generation.is_some_and(|g| g.system_identifier == m.system_identifier))
    };
    let drills = expire_drills(drills, &retained, &unreadable);
    let mut plan = ExpirePlan {
        backups,
        drills,
        wal: Vec::new(),
        wal_kept_from: None,
        earlier_generations: Vec::new(),
        unreadable,
        packs: None,
    };
    for (i, archive) in archives.iter().enumerate() {
        let mine: Vec<&ManifestSummary> = retained
            .iter()
            .copied()
            .filter(|m| of_cluster(m).map_or(archive.current, |at| at == i))
            .collect();
        let (wal, wal_kept_from) = expire_wal(archive, &mine, !plan.unreadable.is_empty());
        if archive.current {
            (plan.wal, plan.wal_kept_from) = (wal, wal_kept_from);
        } else {
            plan.earlier_generations.push(GenerationExpiry {
                generation: archive.generation.map_or(1, |g| g.generation),
                wal,
                wal_kept_from,
            });
        }
    }
    plan
}

/// The drill records that no retained (or unreadable, so still present) backup owns, but for
/// the newest record and the newest passing record of each tier.
fn expire_drills(
    drills: &[DrillRecord],
    retained: &[&ManifestSummary],
    unreadable: &[UnreadableBackup],
) -> Vec<ExpiredDrill> {
    let newest =
        |passing: bool| Tier::ALL.map(|tier| drills.iter().rposition(|d| d.tier == tier && (d.passed || !passing)));
    let (newest, newest_passed) = (newest(false), newest(true));
    drills
        .iter()
        .enumerate()
        .filter(|(i, _)| !newest.contains(&Some(*i)) && !newest_passed.contains(&Some(*i)))
        .filter(|(_, d)| {
            !retained.iter().any(|m| m.id == d.backup_id) && !unreadable.iter().any(|u| u.id == d.backup_id)
        })
        .map(|(_, d)| ExpiredDrill {
            record: d.key(),
            tier: d.tier,
            backup_id: d.backup_id.clone(),
        })
        .collect()
}

/// The WAL of one generation that its `retained` backups do not need, and its oldest segment
/// kept. The current generation without a retained backup keeps everything (the first backup
/// may still come); an earlier one has no use for its WAL then. Nothing goes while a backup
/// is unreadable.
fn expire_wal(
    archive: &GenerationWal,
    retained: &[&ManifestSummary],
    any_unreadable: bool,
) -> (Vec<String>, Option<String>) {
    let size = archive.size();
    let oldest = retained.iter().min_by_key(|m| size.segment_of(m.start_lsn));
    let kept_from = oldest.map(|m| m.first_wal.clone());
    let first_needed = match oldest {
        _ if any_unreadable => return (Vec::new(), kept_from),
        Some(m) => size.segment_of(m.start_lsn),
        None if archive.current => return (Vec::new(), kept_from),
        None => u64::MAX,
    };
    let wal = archive
        .archived
        .iter()
        .filter(|name| {
            name.segment_name()
                .or(backup_file_segment(name))
                .and_then(|s| s.segment(size))
                .is_some_and(|s| s.segno < first_needed)
        })
        .map(|name| name.to_string())
        .collect();
    (wal, kept_from)
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
    let entries = scan_summaries(repo)?;
    let unreadable = UnreadableBackup::all_in(&entries);
    let catalog: Vec<ManifestSummary> = entries.into_iter().filter_map(|e| e.manifest.ok()).collect();
    let archives = generation_archives(repo)?;
    let drills = crate::drill::history(repo)?.drills;
    let mut plan = plan_expire(&catalog, unreadable, &archives, &drills, retention, tier);
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
    for drill in &plan.drills {
        repo.storage().delete(&drill.record)?;
    }
    // Said only when there is something to say: a repository without packs plans the same JSON as before.
    let swept = sweep::sweep(repo, sweep::grace())?;
    plan.packs = (swept != PackSweep::default()).then_some(swept);
    let current = repo.pin()?;
    let earlier = plan
        .earlier_generations
        .iter()
        .map(|e| Ok((repo.at(e.generation)?, &e.wal, &e.wal_kept_from, false)))
        .collect::<Result<Vec<_>>>()?;
    let current = (current, &plan.wal, &plan.wal_kept_from, true);
    for (generation, names, kept_from, is_current) in [current].into_iter().chain(earlier) {
        for name in names {
            generation.delete_wal(&WalFileName::parse(name)?)?;
            crash_point::reached("expire:wal");
        }
        // The maps of relation names go with the WAL they name (the current generation without a
        // retained backup keeps its WAL, and so its maps).
        let kept_from = kept_from
            .as_deref()
            .map(|name| segment_start(&generation, name))
            .transpose()?;
        if kept_from.is_some() || !is_current {
            generation.expire_names(kept_from)?;
        }
    }
    Ok(plan)
}

/// Where the segment `name` of `generation` starts.
fn segment_start(generation: &Repo, name: &str) -> Result<Lsn> {
    let size = generation
        .info()?
        .and_then(|c| SegmentSize::new(c.wal_segment_size))
        .unwrap_or(SegmentSize::DEFAULT);
    let segment = WalFileName::parse(name)?
        .segment_name()
        .and_then(|s| s.segment(size))
        .ok_or_else(|| Error::InvalidInput(format!("{name} is not a segment of this repository")))?;
    Ok(size.segment_start(segment.segno))
}

/// Every generation's archived WAL, oldest generation first.
fn generation_archives(repo: &Repo) -> Result<Vec<GenerationWal>> {
    let Some(generations) = repo.generations()? else {
        return Ok(vec![GenerationWal {
            generation: None,
            current: true,
            archived: repo.pin()?.list_wal()?,
        }]);
    };
    let current = generations.current().generation;
    generations
        .all()
        .iter()
        .map(|g| {
            Ok(GenerationWal {
                generation: Some(*g),
                current: g.generation == current,
                archived: repo.at(g.generation)?.list_wal()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::backup::manifest::Manifest;
    use crate::wal::Segment;

    fn backup(tier: Tier, hour: u32, start_segno: u64) -> ManifestSummary {
        let stop_time = Utc.with_ymd_and_hms(2026, 1, 1, hour, 5, 0).unwrap();
        // Names sort the other way round from stop times: expiry must go by time.
        let id = format!("main_{tier}_{}", 99 - hour);
        Manifest::for_test(&id, tier, 1, start_segno..=start_segno, stop_time).summary()
    }

    fn names(segnos: std::ops::Range<u64>) -> Vec<WalFileName> {
        let mut names: Vec<WalFileName> = segnos
            .map(|segno| WalFileName::parse(&Segment { timeline: 1, segno }.file_name(SegmentSize::DEFAULT)).unwrap())
            .collect();
        names.push(WalFileName::parse("00000002.history").unwrap());
        names.push(WalFileName::parse("000000010000000000000002.00000028.backup").unwrap());
        names
    }

    /// One generation, current, holding `segnos` (a repository without upgrades).
    fn wal(segnos: std::ops::Range<u64>) -> Vec<GenerationWal> {
        vec![GenerationWal {
            generation: None,
            current: true,
            archived: names(segnos),
        }]
    }

    fn generation(n: u32, system_identifier: u64, current: bool, segnos: std::ops::Range<u64>) -> GenerationWal {
        GenerationWal {
            generation: Some(Generation {
                generation: n,
                pg_version: 14 + n,
                system_identifier,
                wal_segment_size: SegmentSize::DEFAULT.bytes(),
                since: None,
            }),
            current,
            archived: names(segnos),
        }
    }

    fn of_cluster(mut m: ManifestSummary, system_identifier: u64) -> ManifestSummary {
        m.system_identifier = system_identifier;
        m
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
        let plan = plan_expire(&catalog, vec![], &wal(1..9), &[], retention, None);
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

    fn drill(tier: Tier, day: u32, backup_id: &str, passed: bool) -> DrillRecord {
        DrillRecord {
            passed,
            ..DrillRecord::begun(Utc.with_ymd_and_hms(2026, 1, day, 4, 0, 0).unwrap(), tier, backup_id)
        }
    }

    #[test]
    fn drill_records_go_with_their_backup_but_the_newest_of_each_tier_stay() {
        let catalog = vec![backup(Tier::Hourly, 1, 2), backup(Tier::Hourly, 2, 4)];
        let (expired, kept) = ("main_hourly_98", "main_hourly_97");
        let drills = vec![
            drill(Tier::Hourly, 1, expired, true),
            drill(Tier::Daily, 2, "main_daily_gone", true),
            drill(Tier::Hourly, 3, kept, true),
            drill(Tier::Daily, 4, "main_daily_unreadable", true),
            drill(Tier::Hourly, 5, expired, true),
            drill(Tier::Hourly, 6, expired, false),
            drill(Tier::Daily, 7, "main_daily_gone", true),
        ];
        let damaged = UnreadableBackup {
            id: "main_daily_unreadable".into(),
            tier: Tier::Daily,
            reason: "damaged".into(),
        };
        let retention = Retention {
            hourly: 1,
            ..Retention::default()
        };
        let plan = plan_expire(&catalog, vec![damaged], &wal(1..9), &drills, retention, None);
        assert_eq!(plan.backups[0].id, expired);
        // Days 1 and 2 go. Kept: day 3 (its backup is retained), day 4 (its backup is still
        // there, unreadable), day 5 (the newest passing hourly record), day 6 (the newest
        // hourly one) and day 7 (the newest daily one).
        let gone: Vec<&str> = plan.drills.iter().map(|d| d.record.as_str()).collect();
        assert_eq!(
            gone,
            [
                "drills/20260101T040000_hourly.json",
                "drills/20260102T040000_daily.json"
            ]
        );
        assert_eq!(plan.drills[0].backup_id, expired);
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
        let plan = plan_expire(&catalog, vec![], &wal(1..9), &[], retention, Some(Tier::Hourly));
        assert!(plan.backups.is_empty());
        assert_eq!(plan.wal, ["000000010000000000000001"]);
    }

    #[test]
    fn without_backups_no_wal_is_deleted() {
        let plan = plan_expire(&[], vec![], &wal(1..9), &[], Retention::default(), None);
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
        let plan = plan_expire(&catalog, vec![damaged], &wal(1..9), &[], retention, None);
        assert_eq!(plan.backups.len(), 1, "readable backups still expire");
        assert!(plan.wal.is_empty(), "{:?}", plan.wal);
        assert_eq!(plan.unreadable.len(), 1);
    }

    #[test]
    fn retention_spans_generations_and_each_keeps_the_wal_its_retained_backups_need() {
        // Generation 1 (cluster 1) then generation 2 (cluster 2), both with segments 1 to 8.
        let catalog = vec![
            of_cluster(backup(Tier::Daily, 1, 2), 1),
            of_cluster(backup(Tier::Daily, 2, 5), 1),
            of_cluster(backup(Tier::Daily, 3, 3), 2),
            of_cluster(backup(Tier::Daily, 4, 6), 2),
        ];
        let archives = [generation(1, 1, false, 1..9), generation(2, 2, true, 1..9)];
        let keep = |daily| Retention {
            daily,
            ..Retention::default()
        };
        let plan = plan_expire(&catalog, vec![], &archives, &[], keep(3), None);
        assert_eq!(
            plan.backups.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
            ["main_daily_98"],
            "the oldest of all generations goes"
        );
        assert_eq!(plan.wal_kept_from.as_deref(), Some("000000010000000000000003"));
        assert_eq!(plan.wal.len(), 3, "generation 2 before its segment 3: {:?}", plan.wal);
        let earlier = &plan.earlier_generations[0];
        assert_eq!(earlier.generation, 1);
        assert_eq!(earlier.wal_kept_from.as_deref(), Some("000000010000000000000005"));
        assert_eq!(
            earlier.wal.len(),
            5,
            "generation 1 before its segment 5: {:?}",
            earlier.wal
        );

        let plan = plan_expire(&catalog, vec![], &archives, &[], keep(2), None);
        let earlier = &plan.earlier_generations[0];
        assert_eq!(earlier.wal_kept_from, None, "no backup of generation 1 is retained");
        assert_eq!(
            earlier.wal.len(),
            9,
            "then its WAL goes, but for its history file: {:?}",
            earlier.wal
        );
        assert!(!earlier.wal.iter().any(|n| n.ends_with(".history")));
        assert_eq!(plan.wal_kept_from.as_deref(), Some("000000010000000000000003"));

        let generation_two_only = [generation(1, 1, false, 1..9), generation(2, 2, true, 1..9)];
        let plan = plan_expire(&catalog[..2], vec![], &generation_two_only, &[], keep(2), None);
        assert!(
            plan.wal.is_empty(),
            "the current generation without a backup keeps its WAL"
        );
    }
}
