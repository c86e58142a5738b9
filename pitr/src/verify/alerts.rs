//! The alerts, named as in the runbook, with their severities, and the rules that judge
//! freshness: how old the newest backups may be, how long the archive may stand still while
//! the server writes, and how much WAL the receiver's replication slot may hold back. Pure
//! functions of facts, thresholds and "now".

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Scope, ServerView, SlotView};
use crate::backup::manifest::ManifestSummary;
use crate::backup::Tier;
use crate::drill::DrillHistory;
use crate::wal::{SegmentSize, SIZE_OF_XLOG_LONG_PHD};

/// How bad an alert is. Exit codes follow it: 1 for warnings only, 2 for any critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Look at it soon.
    Warning,
    /// The backups cannot be trusted now.
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

/// The alerts verify raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum AlertName {
    /// A stored object, manifest or history file failed its integrity check.
    BackupVerificationFailed,
    /// No backup at all, or a tier's newest backup is overdue.
    BackupMissing,
    /// The newest backup is older than the maximum age.
    BackupTooOld,
    /// WAL that a retained backup needs for recovery is not in the archive.
    WalArchiveGap,
    /// The archive stands still while the server writes WAL.
    WalArchiveStale,
    /// No receiver streams from the configured replication slot, or it holds back more WAL
    /// than the threshold: pg_wal grows.
    SlotLagging,
    /// The configured replication slot is missing, not physical, or has lost WAL it needed:
    /// the receiver cannot stream from it.
    SlotLost,
    /// The newest restore drill of a tier failed: its backup did not restore, or its data did not
    /// check out (amcheck, data checksums, the verification SQL).
    DrillFailed,
    /// No restore drill of a tier passed within the threshold.
    DrillStale,
}

impl AlertName {
    /// Every alert, in the order they are reported and exported.
    pub const ALL: [AlertName; 9] = [
        AlertName::BackupVerificationFailed,
        AlertName::BackupMissing,
        AlertName::BackupTooOld,
        AlertName::WalArchiveGap,
        AlertName::WalArchiveStale,
        AlertName::SlotLagging,
        AlertName::SlotLost,
        AlertName::DrillFailed,
        AlertName::DrillStale,
    ];

    /// The alert's fixed severity.
    pub fn severity(self) -> Severity {
        match self {
            AlertName::BackupTooOld | AlertName::WalArchiveStale | AlertName::SlotLagging | AlertName::DrillStale => {
                Severity::Warning
            }
            AlertName::BackupVerificationFailed
            | AlertName::BackupMissing
            | AlertName::WalArchiveGap
            | AlertName::SlotLost
            | AlertName::DrillFailed => Severity::Critical,
        }
    }
}

impl fmt::Display for AlertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One raised alert: what it is about and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// The alert.
    pub alert: AlertName,
    /// Its severity.
    pub severity: Severity,
    /// What it is about: a file in the repository, a backup, a tier, a range of segments.
    pub subject: String,
    /// What was found and what to do.
    pub reason: String,
}

impl Alert {
    /// An alert with the severity of its name.
    pub fn new(alert: AlertName, subject: impl Into<String>, reason: impl Into<String>) -> Alert {
        Alert {
            alert,
            severity: alert.severity(),
            subject: subject.into(),
            reason: reason.into(),
        }
    }
}

/// The limits the freshness rules apply (config file `[verify]`, flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// BackupTooOld: the newest backup may be at most this old (runbook: 168 h).
    pub max_age: Duration,
    /// BackupMissing: a tier's newest backup may be late by this much beyond its interval.
    pub backup_grace: Duration,
    /// WalArchiveStale: the newest archived segment may be this old while the server writes.
    pub wal_stale: Duration,
    /// SlotLagging: bytes of WAL the replication slot may hold back on the server.
    pub slot_lag: u64,
    /// DrillStale: a tier's newest passing restore drill may be this old.
    pub drill_stale: Duration,
}

/// SlotLagging's default threshold, 1 GiB: PostgreSQL's default `max_wal_size`, so beyond it
/// the slot makes pg_wal hold more than the server would keep for itself. A receiver that
/// streams holds back less than a segment; 1 GiB is 64 segments behind: stopped or stuck for
/// a while, yet early on most disks.
pub const DEFAULT_SLOT_LAG: u64 = 1 << 30;

/// DrillStale's default threshold, 8 days: the daemon drills weekly, and a day's grace.
pub const DEFAULT_DRILL_STALE: Duration = Duration::from_secs(8 * 86400);

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_age: Duration::from_secs(168 * 3600),
            backup_grace: Duration::from_secs(3600),
            wal_stale: Duration::from_secs(3600),
            slot_lag: DEFAULT_SLOT_LAG,
            drill_stale: DEFAULT_DRILL_STALE,
        }
    }
}

/// How often a tier's backups are due (runbook: every hour, every day, every Sunday).
pub fn interval(tier: Tier) -> Duration {
    let hours = match tier {
        Tier::Hourly => 1,
        Tier::Daily => 24,
        Tier::Weekly => 7 * 24,
    };
    Duration::from_secs(hours * 3600)
}

/// Seconds from `then` to `now` (negative when `then` is in the future).
pub fn age_seconds(then: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    now.signed_duration_since(then).num_seconds()
}

/// BackupMissing and BackupTooOld for the backups in scope. A tier is judged once it holds a
/// backup (expire never empties a tier), when the scope names it, and with `verify all` when it
/// is `expected` (scheduled and kept): a tier that never had a backup is missing once the oldest
/// backup is older than the tier's interval and the grace.
pub fn freshness(
    backups: &[&ManifestSummary],
    scope: Scope,
    thresholds: &Thresholds,
    expected: &[Tier],
    now: DateTime<Utc>,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let Some(newest) = backups.iter().max_by_key(|m| m.stop_time) else {
        let what = match scope {
            Scope::Wal => return alerts,
            Scope::All => "backup".to_string(),
            Scope::Tier(tier) => format!("{tier} backup"),
        };
        alerts.push(Alert::new(
            AlertName::BackupMissing,
            scope.to_string(),
            format!("no {what} in the repository: take one with `pitr backup`"),
        ));
        return alerts;
    };
    for tier in Tier::ALL {
        let Some(m) = backups.iter().filter(|m| m.tier == tier).max_by_key(|m| m.stop_time) else {
            if scope == Scope::All && expected.contains(&tier) {
                alerts.extend(never_taken(backups, tier, thresholds, now));
            }
            continue;
        };
        let due = interval(tier) + thresholds.backup_grace;
        let age = age_seconds(m.stop_time, now);
        if age > due.as_secs() as i64 {
            alerts.push(Alert::new(
                AlertName::BackupMissing,
                tier.name(),
                format!(
                    "the newest {tier} backup {} is {} old; one is due every {} (grace {}): check the {tier} \
                     backup job",
                    m.id,
                    human_duration(age),
                    human_duration(interval(tier).as_secs() as i64),
                    human_duration(thresholds.backup_grace.as_secs() as i64)
                ),
            ));
        }
    }
    let age = age_seconds(newest.stop_time, now);
    if age > thresholds.max_age.as_secs() as i64 {
        alerts.push(Alert::new(
            AlertName::BackupTooOld,
            newest.id.clone(),
            format!(
                "the newest backup {} is {} old, more than the maximum age {}",
                newest.id,
                human_duration(age),
                human_duration(thresholds.max_age.as_secs() as i64)
            ),
        ));
    }
    alerts
}

/// BackupMissing for an expected `tier` without any backup, once one is overdue: the oldest
/// backup of the repository (`backups`, not empty) shows since when backups are taken.
fn never_taken(backups: &[&ManifestSummary], tier: Tier, thresholds: &Thresholds, now: DateTime<Utc>) -> Option<Alert> {
    let oldest = backups.iter().min_by_key(|m| m.stop_time)?;
    let age = age_seconds(oldest.stop_time, now);
    let due = interval(tier) + thresholds.backup_grace;
    (age > due.as_secs() as i64).then(|| {
        Alert::new(
            AlertName::BackupMissing,
            tier.name(),
            format!(
                "no {tier} backup in the repository, although {tier} backups are scheduled and kept: one is due \
                 every {} (grace {}) and the oldest backup {} is {} old; check the {tier} backup job, or set \
                 {tier} = \"off\" in [schedule] if there are none on purpose",
                human_duration(interval(tier).as_secs() as i64),
                human_duration(thresholds.backup_grace.as_secs() as i64),
                oldest.id,
                human_duration(age)
            ),
        )
    })
}

/// DrillFailed and DrillStale for the tiers of `backups` (those in scope): the newest drill of a
/// tier failed; or no drill of it passed within the threshold, counted from the oldest backup of
/// the tier when none ever passed (no drill could run before there was a backup).
pub fn drill_rules(
    backups: &[&ManifestSummary],
    history: &DrillHistory,
    thresholds: &Thresholds,
    now: DateTime<Utc>,
) -> Vec<Alert> {
    let mut alerts: Vec<Alert> = history
        .unreadable
        .iter()
        .map(|why| {
            Alert::new(
                AlertName::DrillFailed,
                "drills",
                format!("unreadable drill record: {why}"),
            )
        })
        .collect();
    let newest = history.newest_by_tier();
    let passed = history.newest_passed_by_tier();
    for tier in Tier::ALL {
        let Some(oldest) = backups.iter().filter(|m| m.tier == tier).min_by_key(|m| m.stop_time) else {
            continue;
        };
        if let Some(drill) = newest.get(&tier).filter(|d| !d.passed) {
            alerts.push(Alert::new(
                AlertName::DrillFailed,
                tier.name(),
                format!(
                    "the newest {tier} drill ({}, backup {}) failed: {}",
                    drill.started.to_rfc3339(),
                    drill.backup_id,
                    drill.failures()
                ),
            ));
        }
        let since = passed.get(&tier).map_or(oldest.stop_time, |d| d.started);
        let age = age_seconds(since, now);
        if age > thresholds.drill_stale.as_secs() as i64 {
            let last = match passed.get(&tier) {
                Some(d) => format!(
                    "the last passing {tier} drill (backup {}) ran {} ago",
                    d.backup_id,
                    human_duration(age)
                ),
                None => format!(
                    "no {tier} drill ever passed, and the oldest {tier} backup is {} old",
                    human_duration(age)
                ),
            };
            alerts.push(Alert::new(
                AlertName::DrillStale,
                tier.name(),
                format!(
                    "{last} (threshold {}): run `pitr drill --tier {tier}`, or check the daemon's drill job",
                    human_duration(thresholds.drill_stale.as_secs() as i64)
                ),
            ));
        }
    }
    alerts
}

/// The newest archived segment, as the staleness rule sees it.
#[derive(Debug, Clone, Copy)]
pub struct NewestSegment<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its segment number.
    pub segno: u64,
    /// When it was archived.
    pub archived_at: DateTime<Utc>,
}

/// WalArchiveStale: the server (this repository's primary) has written WAL past the newest
/// archived segment, and that segment is older than the threshold.
pub fn staleness(
    newest: Option<NewestSegment>,
    server: &ServerView,
    size: SegmentSize,
    threshold: Duration,
    now: DateTime<Utc>,
) -> Option<Alert> {
    let ServerView::Primary { lsn, .. } = server else {
        return None;
    };
    // A segment starts with its long page header: only WAL beyond that is unarchived work.
    let archived_end = newest.map_or(0, |n| size.segment_start(n.segno + 1).0);
    if lsn.0 <= archived_end + SIZE_OF_XLOG_LONG_PHD as u64 {
        return None;
    }
    let (subject, age) = match newest {
        Some(n) => (n.name.to_string(), age_seconds(n.archived_at, now)),
        None => ("wal".to_string(), i64::MAX),
    };
    if age <= threshold.as_secs() as i64 {
        return None;
    }
    let archived = match newest {
        Some(n) => format!(
            "the newest archived segment {} was archived {} ago",
            n.name,
            human_duration(age)
        ),
        None => "nothing is archived yet".to_string(),
    };
    Some(Alert::new(
        AlertName::WalArchiveStale,
        subject,
        format!(
            "{archived} (threshold {}) while the server has written WAL up to {lsn}: check archive_command and \
             pg_stat_archiver; on a quiet server set archive_timeout so that WAL is archived in time",
            human_duration(threshold.as_secs() as i64)
        ),
    ))
}

/// SlotLost when the configured slot is missing, not physical, or has lost WAL it needed;
/// SlotLagging when no receiver streams from it, when it holds back more than `threshold` bytes
/// of WAL, or when the next checkpoint may remove WAL it needs (`unreserved`). A server that
/// was not reached judges nothing.
pub fn slot_rule(slot: &SlotView, threshold: u64) -> Option<Alert> {
    let state = match slot {
        SlotView::Unavailable { .. } => return None,
        SlotView::Missing { name, server } => {
            return Some(Alert::new(
                AlertName::SlotLost,
                format!("slot {name}"),
                format!(
                    "replication slot {name} does not exist on {server}, so the WAL receiver cannot stream \
                     (archive_command still archives each completed segment): create it with `pitr slot create \
                     --slot {name}` and restart `pitr watch --slot {name}` (or the daemon); if streaming is given \
                     up, remove `slot` from the config file"
                ),
            ))
        }
        SlotView::Found(state) => state,
    };
    let name = &state.name;
    let subject = format!("slot {name}");
    let bound = match state.max_slot_wal_keep_size {
        Some(bytes) => format!("max_slot_wal_keep_size ({})", human_bytes(bytes)),
        None => "max_slot_wal_keep_size (-1: no limit)".to_string(),
    };
    if !state.physical() {
        return Some(Alert::new(
            AlertName::SlotLost,
            subject,
            format!(
                "replication slot {name} on {} is a {} slot; the WAL receiver streams from a physical one: set \
                 `slot` to another name and create that slot with `pitr slot create --slot NAME`",
                state.server, state.slot_type
            ),
        ));
    }
    if state.lost() {
        return Some(Alert::new(
            AlertName::SlotLost,
            subject,
            format!(
                "replication slot {name} on {} has lost WAL it needed (wal_status lost: it held back more than \
                 {bound} allows, and a checkpoint removed that WAL), so the WAL receiver cannot resume from it. \
                 archive_command still archives each completed segment: a WalArchiveGap from `pitr verify wal` \
                 would mean the archive misses WAL too. Find out why the receiver stopped, then create the slot \
                 again: `pitr slot drop --slot {name}`, `pitr slot create --slot {name}`, and restart `pitr watch \
                 --slot {name}` (or the daemon)",
                state.server
            ),
        ));
    }
    let retained = state.retained_bytes.unwrap_or(0);
    let unreserved = state.wal_status.as_deref() == Some("unreserved");
    if state.active && retained <= threshold && !unreserved {
        return None;
    }
    let what = if state.active {
        format!(
            "the WAL receiver streaming from replication slot {name} on {} lags behind",
            state.server
        )
    } else {
        format!(
            "no WAL receiver streams from replication slot {name} on {}",
            state.server
        )
    };
    let status = state.wal_status.as_deref().unwrap_or("unknown");
    let safe = match state.safe_wal_size {
        Some(bytes) => format!(", {} more before it loses WAL", human_bytes(bytes.max(0) as u64)),
        None => String::new(),
    };
    let warning = if unreserved {
        "; the next checkpoint removes WAL the slot still needs"
    } else {
        ""
    };
    let action = if state.active {
        "check the receiver's log (`pitr watch` or the daemon) and how fast the repository takes segments".to_string()
    } else {
        format!(
            "start the receiver (`pitr watch --slot {name}`, or the daemon with slot = \"{name}\"), or, if \
             streaming is given up, drop the slot with `pitr slot drop --slot {name}` before pg_wal fills"
        )
    };
    let limit = match state.max_slot_wal_keep_size {
        Some(_) => format!("{bound} bounds it: beyond that the slot loses WAL (SlotLost) rather than filling the disk"),
        None => format!("{bound}: set it to what pg_wal's disk can spare, so that a stopped receiver cannot fill it"),
    };
    Some(Alert::new(
        AlertName::SlotLagging,
        subject,
        format!(
            "{what}: it holds back {} of WAL in pg_wal (threshold {}; wal_status {status}{safe}){warning}; \
             {action}; {limit}",
            human_bytes(retained),
            human_bytes(threshold)
        ),
    ))
}

/// "512 B", "3.5 MiB", "1.0 GiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// "3 d 4 h", "2 h 5 min", "40 s".
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::wal::Lsn;

    fn at(hours: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap() + chrono::TimeDelta::hours(hours)
    }

    fn backup(id: &str, tier: Tier, stop_hours: i64) -> ManifestSummary {
        crate::backup::manifest::Manifest::for_test(id, tier, 1, 2..=2, at(stop_hours)).summary()
    }

    fn names(alerts: &[Alert]) -> Vec<(AlertName, String)> {
        alerts.iter().map(|a| (a.alert, a.subject.clone())).collect()
    }

    fn drill(tier: Tier, started_hours: i64, passed: bool) -> crate::drill::DrillRecord {
        crate::drill::DrillRecord {
            started: at(started_hours),
            tier,
            backup_id: "b".into(),
            target: "immediate".into(),
            reached_lsn: None,
            reached_time: None,
            rto_seconds: Some(1.0),
            rpo_seconds: Some(1.0),
            recoverable_until: None,
            bytes_restored: 1,
            checks: vec![crate::drill::DrillCheck {
                check: "amcheck".into(),
                passed,
                detail: "corruption in heap table postgres.public.t".into(),
            }],
            passed,
        }
    }

    #[test]
    fn a_failed_newest_drill_is_critical_and_an_old_pass_is_stale() {
        let t = Thresholds::default();
        let daily = backup("d", Tier::Daily, 0);
        let hourly = backup("h", Tier::Hourly, 0);
        let backups = [&daily, &hourly];
        let history = |drills| DrillHistory {
            drills,
            unreadable: Vec::new(),
        };
        // Never drilled, backups younger than 8 days: nothing yet; older: stale.
        assert!(drill_rules(&backups, &history(vec![]), &t, at(8 * 24)).is_empty());
        let stale = drill_rules(&backups, &history(vec![]), &t, at(8 * 24 + 1));
        assert_eq!(
            names(&stale),
            [
                (AlertName::DrillStale, "hourly".to_string()),
                (AlertName::DrillStale, "daily".to_string())
            ]
        );
        let drills = history(vec![
            drill(Tier::Daily, 1, true),
            drill(Tier::Daily, 2, false),
            drill(Tier::Hourly, 3, true),
        ]);
        let alerts = drill_rules(&backups, &drills, &t, at(4));
        assert_eq!(names(&alerts), [(AlertName::DrillFailed, "daily".to_string())]);
        assert!(alerts[0].reason.contains("public.t"), "{}", alerts[0].reason);
        let later = drill_rules(&backups, &drills, &t, at(8 * 24 + 2));
        assert_eq!(
            names(&later),
            [
                (AlertName::DrillFailed, "daily".to_string()),
                (AlertName::DrillStale, "daily".to_string())
            ]
        );
        // A tier out of scope (no backups given) is not judged.
        assert!(drill_rules(&[&hourly], &drills, &t, at(4)).is_empty());
    }

    #[test]
    fn an_empty_scope_is_backup_missing_except_for_wal() {
        let t = Thresholds::default();
        let alerts = freshness(&[], Scope::All, &t, &Tier::ALL, at(0));
        assert_eq!(names(&alerts), [(AlertName::BackupMissing, "all".to_string())]);
        assert!(alerts[0].reason.contains("no backup"), "{}", alerts[0].reason);
        let daily = freshness(&[], Scope::Tier(Tier::Daily), &t, &Tier::ALL, at(0));
        assert!(daily[0].reason.contains("no daily backup"), "{}", daily[0].reason);
        assert!(freshness(&[], Scope::Wal, &t, &Tier::ALL, at(0)).is_empty());
    }

    #[test]
    fn a_tier_is_missing_after_its_interval_plus_grace() {
        let t = Thresholds::default();
        let hourly = backup("h", Tier::Hourly, 0);
        let daily = backup("d", Tier::Daily, 0);
        let both = [&hourly, &daily];
        assert!(
            freshness(&both, Scope::All, &t, &[], at(2)).is_empty(),
            "hourly: 1 h + 1 h grace"
        );
        let late = freshness(&both, Scope::All, &t, &[], at(3));
        assert_eq!(names(&late), [(AlertName::BackupMissing, "hourly".to_string())]);
        assert!(
            late[0].reason.contains("backup h is 3 h 0 min old"),
            "{}",
            late[0].reason
        );
        let both_late = freshness(&both, Scope::All, &t, &[], at(26));
        assert_eq!(both_late.len(), 2, "{both_late:?}");
    }

    #[test]
    fn an_expected_tier_that_never_had_a_backup_is_missing_once_one_is_overdue() {
        let t = Thresholds::default();
        let daily = backup("d", Tier::Daily, 0);
        let expected = [Tier::Hourly, Tier::Daily];
        assert!(
            freshness(&[&daily], Scope::All, &t, &expected, at(2)).is_empty(),
            "hourly: 1 h + 1 h grace"
        );
        let late = freshness(&[&daily], Scope::All, &t, &expected, at(3));
        assert_eq!(names(&late), [(AlertName::BackupMissing, "hourly".to_string())]);
        assert!(late[0].reason.contains("no hourly backup"), "{}", late[0].reason);
        assert!(
            freshness(&[&daily], Scope::All, &t, &[Tier::Daily], at(3)).is_empty(),
            "hourly backups are not expected"
        );
        assert!(
            freshness(&[&daily], Scope::Tier(Tier::Daily), &t, &expected, at(3)).is_empty(),
            "verify daily judges the daily tier only"
        );
    }

    #[test]
    fn too_old_is_a_warning_about_the_newest_backup() {
        let t = Thresholds::default();
        let old = backup("w1", Tier::Weekly, 0);
        let newer = backup("w2", Tier::Weekly, 10);
        let alerts = freshness(&[&old, &newer], Scope::All, &t, &[], at(10 + 169));
        assert_eq!(names(&alerts), [(AlertName::BackupTooOld, "w2".to_string())]);
        assert_eq!(alerts[0].severity, Severity::Warning);
        assert!(freshness(&[&old, &newer], Scope::All, &t, &[], at(10 + 167)).is_empty());
        let tight = Thresholds {
            max_age: Duration::from_secs(3600),
            ..t
        };
        assert_eq!(freshness(&[&newer], Scope::All, &tight, &[], at(12)).len(), 1);
    }

    #[test]
    fn stale_only_while_the_server_writes_past_the_archive() {
        let size = SegmentSize::DEFAULT;
        let threshold = Duration::from_secs(3600);
        let newest = Some(NewestSegment {
            name: "000000010000000000000005",
            segno: 5,
            archived_at: at(0),
        });
        let writing = |lsn: u64| ServerView::Primary {
            target: "server".into(),
            timeline: 1,
            lsn: Lsn(lsn),
        };
        let past = size.segment_start(6).0 + 1000;
        let alert = staleness(newest, &writing(past), size, threshold, at(2)).expect("stale");
        assert_eq!(alert.alert, AlertName::WalArchiveStale);
        assert!(alert.reason.contains("archived 2 h 0 min ago"), "{}", alert.reason);
        assert!(
            staleness(newest, &writing(past), size, threshold, at(0)).is_none(),
            "young"
        );
        let header_only = size.segment_start(6).0 + SIZE_OF_XLOG_LONG_PHD as u64;
        assert!(
            staleness(newest, &writing(header_only), size, threshold, at(5)).is_none(),
            "idle"
        );
        let unknown = ServerView::Unavailable { reason: "down".into() };
        assert!(staleness(newest, &unknown, size, threshold, at(5)).is_none());
        assert!(staleness(None, &writing(past), size, threshold, at(5)).is_some());
    }

    fn slot(active: bool, retained: u64, wal_status: &str) -> SlotView {
        SlotView::Found(crate::pg::SlotState {
            name: "pitr".into(),
            server: "server".into(),
            slot_type: "physical".into(),
            active,
            restart_lsn: Some(Lsn(1 << 24)),
            retained_bytes: Some(retained),
            wal_status: Some(wal_status.into()),
            safe_wal_size: None,
            max_slot_wal_keep_size: None,
        })
    }

    #[test]
    fn a_slot_lags_when_idle_or_beyond_the_threshold_and_is_lost_when_missing_or_lost() {
        let mib = 1 << 20;
        assert_eq!(slot_rule(&slot(true, mib, "reserved"), 2 * mib), None);
        let idle = slot_rule(&slot(false, mib, "reserved"), 2 * mib).expect("idle");
        assert_eq!((idle.alert, idle.severity), (AlertName::SlotLagging, Severity::Warning));
        assert!(idle.reason.contains("pitr watch --slot pitr"), "{}", idle.reason);
        assert!(idle.reason.contains("pitr slot drop --slot pitr"), "{}", idle.reason);
        assert!(
            idle.reason.contains("max_slot_wal_keep_size (-1: no limit): set it"),
            "{}",
            idle.reason
        );
        let behind = slot_rule(&slot(true, 3 * mib, "extended"), 2 * mib).expect("behind");
        assert_eq!(behind.alert, AlertName::SlotLagging);
        assert!(behind.reason.contains("holds back 3.0 MiB"), "{}", behind.reason);
        let unreserved = slot_rule(&slot(true, mib, "unreserved"), 2 * mib).expect("unreserved");
        assert!(unreserved.reason.contains("next checkpoint"), "{}", unreserved.reason);
        let lost = slot_rule(&slot(false, 0, "lost"), 2 * mib).expect("lost");
        assert_eq!((lost.alert, lost.severity), (AlertName::SlotLost, Severity::Critical));
        let missing = SlotView::Missing {
            name: "pitr".into(),
            server: "server".into(),
        };
        let missing = slot_rule(&missing, 2 * mib).expect("missing");
        assert_eq!(missing.alert, AlertName::SlotLost);
        assert!(
            missing.reason.contains("pitr slot create --slot pitr"),
            "{}",
            missing.reason
        );
        let SlotView::Found(mut logical) = slot(true, 0, "reserved") else {
            unreachable!()
        };
        logical.slot_type = "logical".into();
        assert_eq!(
            slot_rule(&SlotView::Found(logical), 2 * mib).map(|a| a.alert),
            Some(AlertName::SlotLost)
        );
        let unreached = SlotView::Unavailable {
            name: "pitr".into(),
            reason: "down".into(),
        };
        assert_eq!(slot_rule(&unreached, 0), None);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(42), "42 s");
        assert_eq!(human_duration(3 * 60), "3 min");
        assert_eq!(human_duration(3 * 3600 + 120), "3 h 2 min");
        assert_eq!(human_duration(8 * 86400 + 3600), "8 d 1 h");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 19), "1.5 MiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }
}
