//! The Prometheus textfile for node_exporter's textfile collector: rendered from a
//! [`VerifyReport`] and written atomically (a temporary file in the same directory, renamed over
//! the old one), so the collector never reads half a file.
//!
//! Every metric is a gauge. Alert states are counts per alert (0 when not raised), so a rule like
//! `pitr_alerts{severity="critical"} > 0` needs no knowledge of the alert names.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::{AlertName, Scope, SlotView, Status, VerifyReport};
use crate::drill::DrillRecord;
use crate::error::{Error, Result};
use crate::info::Window;

/// The textfile for a finished verification.
pub fn render(report: &VerifyReport) -> String {
    let mut out = String::new();
    verify_metrics(&mut out, report.scope, report.status, report.now);
    let scope = [("scope", report.scope.to_string())];
    gauge(
        &mut out,
        "pitr_verify_duration_seconds",
        "Seconds the verification took.",
        [(&scope[..], report.duration_seconds)],
    );
    gauge(
        &mut out,
        "pitr_verify_read_bytes",
        "Bytes read from the repository and checked.",
        [(&scope[..], report.read.stored_bytes as f64)],
    );
    gauge(
        &mut out,
        "pitr_verify_read_bytes_per_second",
        "Read throughput of the verification.",
        [(&scope[..], report.read.per_second(report.read.stored_bytes))],
    );
    alert_metrics(&mut out, report);
    backup_metrics(&mut out, report);
    wal_metrics(&mut out, report);
    window_metrics(&mut out, report);
    slot_metrics(&mut out, report.slot.as_ref());
    drill_metrics(&mut out, &report.drills, &report.passed_drills);
    out
}

/// The textfile when verification itself failed (the repository is unreadable, say): status 2,
/// so that the failure is as loud as a critical alert.
pub fn render_failure(scope: Scope, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    verify_metrics(&mut out, scope, Status::Critical, now);
    out
}

/// Writes `text` to `path` atomically, readable by the collector (mode 0644).
pub fn write_textfile(path: &Path, text: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".pitr-metrics-")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(Error::io("create a temporary file in", dir))?;
    file.write_all(text.as_bytes())
        .map_err(Error::io("write", file.path()))?;
    file.persist(path).map_err(|e| Error::io("replace", path)(e.error))?;
    Ok(())
}

fn verify_metrics(out: &mut String, scope: Scope, status: Status, now: DateTime<Utc>) {
    let labels = [("scope", scope.to_string())];
    let code = match status {
        Status::Ok => 0.0,
        Status::Warning => 1.0,
        Status::Critical => 2.0,
    };
    gauge(
        out,
        "pitr_verify_status",
        "Outcome of the last verification: 0 no alert, 1 warnings only, 2 critical.",
        [(&labels[..], code)],
    );
    gauge(
        out,
        "pitr_verify_timestamp_seconds",
        "When the last verification ran (Unix time).",
        [(&labels[..], seconds(now))],
    );
}

/// The names and help of the drill gauges (the daemon's `/metrics` serves them too).
pub const DRILL_LAST_SUCCESS: (&str, &str) = (
    "pitr_drill_last_success_timestamp_seconds",
    "When the newest passing restore drill of the tier started (Unix time).",
);
pub const DRILL_RTO: (&str, &str) = (
    "pitr_drill_rto_seconds",
    "Restore plus replay wall time of the newest restore drill of the tier.",
);
pub const DRILL_RPO: (&str, &str) = (
    "pitr_drill_rpo_seconds",
    "Age of the newest archived commit when the newest restore drill of the tier started.",
);

/// The drill gauges per tier: RTO and RPO of `newest` (each tier's newest drill), the last
/// success from `passed` (each tier's newest passing drill).
fn drill_metrics(out: &mut String, newest: &[DrillRecord], passed: &[DrillRecord]) {
    let labels = |d: &DrillRecord| [("tier", d.tier.to_string())];
    let passed_labels: Vec<_> = passed.iter().map(labels).collect();
    gauge(
        out,
        DRILL_LAST_SUCCESS.0,
        DRILL_LAST_SUCCESS.1,
        passed
            .iter()
            .zip(&passed_labels)
            .map(|(d, l)| (&l[..], seconds(d.started))),
    );
    let newest_labels: Vec<_> = newest.iter().map(labels).collect();
    for ((name, help), value) in [
        (
            DRILL_RTO,
            (|d: &DrillRecord| d.rto_seconds) as fn(&DrillRecord) -> Option<f64>,
        ),
        (DRILL_RPO, |d: &DrillRecord| d.rpo_seconds),
    ] {
        gauge(
            out,
            name,
            help,
            newest
                .iter()
                .zip(&newest_labels)
                .filter_map(|(d, l)| Some((&l[..], value(d)?))),
        );
    }
}

fn alert_metrics(out: &mut String, report: &VerifyReport) {
    let labels: Vec<[(&str, String); 2]> = AlertName::ALL
        .iter()
        .map(|name| [("alert", name.to_string()), ("severity", name.severity().to_string())])
        .collect();
    let samples = AlertName::ALL.iter().zip(&labels).map(|(name, labels)| {
        let raised = report.alerts.iter().filter(|a| a.alert == *name).count();
        (&labels[..], raised as f64)
    });
    gauge(
        out,
        "pitr_alerts",
        "Alerts raised by the last verification, per alert (0: not raised).",
        samples,
    );
}

fn backup_metrics(out: &mut String, report: &VerifyReport) {
    let tiers = &report.repository.tiers;
    let labels: Vec<[(&str, String); 1]> = tiers.iter().map(|t| [("tier", t.tier.to_string())]).collect();
    gauge(
        out,
        "pitr_backups",
        "Backups in the repository per tier.",
        tiers.iter().zip(&labels).map(|(t, l)| (&l[..], t.backups.len() as f64)),
    );
    gauge(
        out,
        "pitr_backup_newest_timestamp_seconds",
        "When the newest backup of the tier became consistent (Unix time).",
        tiers
            .iter()
            .zip(&labels)
            .filter_map(|(t, l)| Some((&l[..], seconds(t.backups.last()?.stop_time)))),
    );
}

fn wal_metrics(out: &mut String, report: &VerifyReport) {
    let archive = &report.repository.archive;
    let none: &[(&str, String)] = &[];
    gauge(
        out,
        "pitr_wal_archived_files",
        "Files in the WAL archive.",
        [(none, archive.files as f64)],
    );
    gauge(
        out,
        "pitr_wal_archive_bytes",
        "Bytes the WAL archive occupies.",
        [(none, archive.stored_bytes as f64)],
    );
    gauge(
        out,
        "pitr_wal_newest_archived_timestamp_seconds",
        "When the newest archived segment was archived (Unix time).",
        archive.newest_archived_at.map(|at| (none, seconds(at))),
    );
    let missing: u64 = report.gaps.iter().map(|g| g.segments).sum();
    gauge(
        out,
        "pitr_wal_missing_segments",
        "WAL segments missing from the archive.",
        [(none, missing as f64)],
    );
}

/// The current window of each timeline: the last one, after any gap.
fn window_metrics(out: &mut String, report: &VerifyReport) {
    let all = &report.repository.windows;
    let windows: Vec<&Window> = all
        .iter()
        .enumerate()
        .filter(|(i, w)| all.get(i + 1).is_none_or(|next| next.timeline != w.timeline))
        .map(|(_, w)| w)
        .collect();
    let labels: Vec<[(&str, String); 1]> = windows.iter().map(|w| [("timeline", w.timeline.to_string())]).collect();
    gauge(
        out,
        "pitr_recoverable_window_start_timestamp_seconds",
        "The earliest moment of the current recoverable window, per timeline (Unix time).",
        windows
            .iter()
            .zip(&labels)
            .map(|(w, l)| (&l[..], seconds(w.start_time))),
    );
    gauge(
        out,
        "pitr_recoverable_window_end_timestamp_seconds",
        "The latest moment of the current recoverable window, per timeline (Unix time).",
        windows.iter().zip(&labels).map(|(w, l)| (&l[..], seconds(w.end_time))),
    );
}

/// The configured replication slot: whether a receiver streams from it (0 also for a missing
/// slot) and the WAL it holds back. No sample when the server was not reached.
fn slot_metrics(out: &mut String, slot: Option<&SlotView>) {
    let (active, retained) = match slot {
        Some(SlotView::Found(state)) => (Some(state.active), state.retained_bytes),
        Some(SlotView::Missing { .. }) => (Some(false), None),
        Some(SlotView::Unavailable { .. }) | None => (None, None),
    };
    let name = match slot {
        Some(SlotView::Found(state)) => state.name.clone(),
        Some(SlotView::Missing { name, .. } | SlotView::Unavailable { name, .. }) => name.clone(),
        None => String::new(),
    };
    let labels = [("slot", name)];
    gauge(
        out,
        SLOT_ACTIVE.0,
        SLOT_ACTIVE.1,
        active.map(|a| (&labels[..], f64::from(u8::from(a)))),
    );
    gauge(
        out,
        SLOT_RETAINED.0,
        SLOT_RETAINED.1,
        retained.map(|bytes| (&labels[..], bytes as f64)),
    );
}

/// The slot's gauges, here and in the daemon's `/metrics`: name and help.
pub const SLOT_ACTIVE: (&str, &str) = (
    "pitr_slot_active",
    "1 while a WAL receiver streams from the replication slot, 0 when none does or the slot is missing.",
);
/// See [`SLOT_ACTIVE`].
pub const SLOT_RETAINED: (&str, &str) = (
    "pitr_slot_retained_wal_bytes",
    "Bytes of WAL the replication slot holds back on the server.",
);

fn seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

/// One gauge family: HELP, TYPE and its samples (none is fine: the family is still declared).
fn gauge<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (&'a [(&'a str, String)], f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{} {value}", label_set(labels));
    }
}

fn label_set(labels: &[(&str, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = labels
        .iter()
        .map(|(key, value)| {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{key}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", pairs.join(","))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::info::{ArchiveSummary, RepoSummary};
    use crate::verify::{Alert, ReadStats, ServerView};

    fn report(alerts: Vec<Alert>) -> VerifyReport {
        VerifyReport {
            scope: Scope::All,
            status: Status::Warning,
            now: Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap(),
            duration_seconds: 1.5,
            backups_checked: 0,
            wal_files_checked: 0,
            read: ReadStats {
                stored_bytes: 3000,
                seconds: 1.5,
                ..ReadStats::default()
            },
            gaps: vec![],
            server: ServerView::Unavailable { reason: "test".into() },
            slot: None,
            alerts,
            repository: RepoSummary {
                repository: "/repo".into(),
                generation: None,
                cluster: None,
                windows: vec![],
                tiers: vec![],
                archive: ArchiveSummary {
                    files: 4,
                    segments: 3,
                    stored_bytes: 100,
                    newest_segment: None,
                    newest_archived_at: None,
                },
                restore_points: vec![],
                unreadable: vec![],
                earlier_generations: vec![],
                encrypted_for: None,
            },
            drills: vec![],
            passed_drills: vec![],
        }
    }

    /// Every sample line as (name with labels, value).
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').expect("name value");
                (name.to_string(), value.parse().expect("a number"))
            })
            .collect()
    }

    #[test]
    fn every_family_is_declared_and_alert_states_are_counts() {
        let text = render(&report(vec![
            Alert::new(AlertName::BackupTooOld, "b", "old"),
            Alert::new(AlertName::BackupTooOld, "c", "old"),
        ]));
        let found = samples(&text);
        let value = |key: &str| found.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        assert_eq!(value("pitr_verify_status{scope=\"all\"}"), Some(1.0));
        assert_eq!(
            value("pitr_verify_timestamp_seconds{scope=\"all\"}"),
            Some(1795600800.0)
        );
        assert_eq!(value("pitr_verify_read_bytes_per_second{scope=\"all\"}"), Some(2000.0));
        assert_eq!(
            value("pitr_alerts{alert=\"BackupTooOld\",severity=\"warning\"}"),
            Some(2.0)
        );
        assert_eq!(
            value("pitr_alerts{alert=\"WalArchiveGap\",severity=\"critical\"}"),
            Some(0.0)
        );
        assert_eq!(value("pitr_wal_archived_files"), Some(4.0));
        for family in [
            "pitr_backup_newest_timestamp_seconds",
            "pitr_recoverable_window_start_timestamp_seconds",
            "pitr_drill_last_success_timestamp_seconds",
            "pitr_drill_rto_seconds",
            "pitr_drill_rpo_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} gauge\n")),
                "{family} declared even when empty"
            );
        }
    }

    #[test]
    fn the_slot_reports_its_activity_and_the_wal_it_holds_back() {
        let mut with_slot = report(vec![]);
        with_slot.slot = Some(SlotView::Found(crate::pg::SlotState {
            name: "pitr".into(),
            server: "server".into(),
            slot_type: "physical".into(),
            active: false,
            restart_lsn: Some(crate::wal::Lsn(1 << 24)),
            retained_bytes: Some(5 << 20),
            wal_status: Some("reserved".into()),
            safe_wal_size: None,
            max_slot_wal_keep_size: None,
        }));
        let found = samples(&render(&with_slot));
        let value = |key: &str| found.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        assert_eq!(value("pitr_slot_active{slot=\"pitr\"}"), Some(0.0));
        assert_eq!(value("pitr_slot_retained_wal_bytes{slot=\"pitr\"}"), Some(5242880.0));
        with_slot.slot = Some(SlotView::Missing {
            name: "pitr".into(),
            server: "server".into(),
        });
        let found = samples(&render(&with_slot));
        assert!(found.contains(&("pitr_slot_active{slot=\"pitr\"}".to_string(), 0.0)));
        assert!(!found.iter().any(|(k, _)| k.starts_with("pitr_slot_retained")));
        let text = render(&report(vec![]));
        assert!(
            !samples(&text).iter().any(|(k, _)| k.starts_with("pitr_slot")),
            "{text}"
        );
        assert!(
            text.contains("# TYPE pitr_slot_active gauge\n"),
            "declared even without a slot"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_set(&[("a", "x\"y\\z\n".into())]), "{a=\"x\\\"y\\\\z\\n\"}");
        assert_eq!(label_set(&[]), "");
    }

    #[test]
    fn a_failed_run_reports_critical_and_the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pitr.prom");
        std::fs::write(&path, "old").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap();
        write_textfile(&path, &render_failure(Scope::Wal, now)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("pitr_verify_status{scope=\"wal\"} 2\n"), "{text}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
