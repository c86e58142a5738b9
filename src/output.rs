//! What a person or a script sees: progress bars on a terminal (nothing otherwise), warnings on
//! stderr, and results as text or JSON on stdout.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use pitr::backup::{BackupStatus, BackupSummary, ExpirePlan, Listing, RestoreSummary};
use pitr::progress::Progress;
use serde::Serialize;

/// Progress as a bar on a terminal, and warnings on stderr always.
pub struct TerminalProgress {
    bar: Option<ProgressBar>,
}

impl TerminalProgress {
    /// A bar when stderr is a terminal and `quiet` is false.
    pub fn new(quiet: bool) -> TerminalProgress {
        let show = !quiet && std::io::stderr().is_terminal();
        TerminalProgress {
            bar: show.then(ProgressBar::hidden),
        }
    }
}

impl Progress for TerminalProgress {
    fn begin(&self, files: u64, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(bytes);
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{bar:30}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}} ({files} files)"
                ))
                .expect("valid template"),
            );
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn warn(&self, message: &str) {
        let print = || eprintln!("pitr: warning: {message}");
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }
}

/// Prints `value` as pretty JSON.
pub fn json<T: Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("output serializes"));
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// The one-line summary of a backup.
pub fn backup_summary(s: &BackupSummary) {
    let b = &s.backup;
    println!(
        "backup {} done: {} files, {} read, {} stored, {:.1} s, WAL {}..{}",
        b.id,
        s.file_count,
        mib(b.original_bytes),
        mib(b.stored_bytes),
        b.duration_seconds,
        b.first_wal,
        b.last_wal
    );
    for id in &s.cleaned_up {
        println!("deleted the incomplete backup {id} of an earlier run");
    }
}

/// The one-line summary of a restore.
pub fn restore_summary(s: &RestoreSummary) {
    println!(
        "restored backup {} into {}: {} files, {}, {:.1} s",
        s.id,
        s.target.display(),
        s.files,
        mib(s.bytes),
        s.duration_seconds
    );
}

/// `pitr list` as a table.
pub fn listing(l: &Listing) {
    if l.backups.is_empty() {
        println!("no backups");
    } else {
        println!(
            "{:<32} {:<6} {:<20} {:<20} {:<24} {:>3} {:>10} {:>10}  WAL",
            "ID", "TIER", "START (UTC)", "STOP (UTC)", "LSN RANGE", "TL", "ORIGINAL", "STORED"
        );
        for b in &l.backups {
            println!(
                "{:<32} {:<6} {:<20} {:<20} {:<24} {:>3} {:>10} {:>10}  {}",
                b.id,
                b.tier.name(),
                b.start_time.format("%Y-%m-%d %H:%M:%S"),
                b.stop_time.format("%Y-%m-%d %H:%M:%S"),
                format!("{}-{}", b.start_lsn, b.stop_lsn),
                b.timeline,
                mib(b.original_bytes),
                mib(b.stored_bytes),
                wal_status(b)
            );
        }
    }
    for t in &l.wal {
        let gaps = if t.missing == 0 {
            String::new()
        } else {
            format!(", {} missing", t.missing)
        };
        println!(
            "archived WAL, timeline {}: {}..{} ({} segments{gaps})",
            t.timeline, t.first, t.last, t.segments
        );
    }
}

fn wal_status(b: &BackupStatus) -> String {
    match (&b.wal_complete, &b.first_missing_wal) {
        (Some(true), _) => format!("{}..{} complete", b.first_wal, b.last_wal),
        (_, Some(missing)) => format!("{}..{} INCOMPLETE, {missing} missing", b.first_wal, b.last_wal),
        _ => format!("{}..{}", b.first_wal, b.last_wal),
    }
}

/// What expire did or would do.
pub fn expire_plan(plan: &ExpirePlan, dry_run: bool) {
    let verb = if dry_run { "would delete" } else { "deleted" };
    for b in &plan.backups {
        println!("{verb} backup {} ({})", b.id, b.reason);
    }
    if let (Some(first), Some(last)) = (plan.wal.first(), plan.wal.last()) {
        let kept = plan.wal_kept_from.as_deref().unwrap_or("?");
        println!(
            "{verb} {} WAL files ({first}..{last}): older than {kept}, the oldest WAL a retained backup needs",
            plan.wal.len()
        );
    }
    if plan.backups.is_empty() && plan.wal.is_empty() {
        println!("nothing to expire");
    }
}
