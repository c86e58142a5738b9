//! What a person or a script sees: progress bars on a terminal (nothing otherwise), warnings on
//! stderr, and results as text or JSON on stdout.

use std::io::IsTerminal;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use pitr::backup::{BackupStatus, BackupSummary, ExpirePlan, Listing, RestoreSummary, TimelineRange};
use pitr::info::RepoSummary;
use pitr::progress::Progress;
use pitr::recover::{AdoptReport, ListedRestorePoint, Plan, Report};
use pitr::restore_point::RestorePoint;
use pitr::setup::{CheckOutcome, InitReport, TakesEffect};
use pitr::sync::SyncReport;
use pitr::verify::{
    human_bytes, human_duration, Alert, CheckReport, IntegrityKind, IntegrityReport, Scope, ServerView, SlotView,
    VerifyReport,
};
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

    fn status(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
            bar.set_message(message.to_string());
            bar.tick();
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

/// What `pitr info --html` wrote.
pub fn written(path: &std::path::Path) {
    println!("status page written to {}", path.display());
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
    let pages = &s.page_checksums;
    if !pages.checked {
        println!("page checksums: not checked (the cluster has no data checksums)");
    } else if pages.bad_files.is_empty() {
        println!(
            "page checksums: {} pages checked, all valid ({} changed during the backup, left to WAL replay)",
            pages.pages_checked, pages.pages_skipped
        );
    } else {
        println!(
            "page checksums: {} pages checked, {} BAD in {} files (see the warnings; pitr verify reports them)",
            pages.pages_checked,
            pages.bad_pages(),
            pages.bad_files.len()
        );
    }
    if !s.configuration_files.is_empty() {
        println!(
            "stored the server's configuration, kept outside its data directory: {}",
            s.configuration_files.join(", ")
        );
    }
    if s.skipped_files > 0 {
        println!(
            "skipped {} unchanged files ({}): their size, mtime, ctime, inode and device are those the previous \
             backup recorded, so they were taken from it unread (--read-all reads them)",
            s.skipped_files,
            mib(s.skipped_bytes)
        );
    }
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
    if let Some(c) = &s.configuration {
        println!(
            "the copy's own configuration is in {}: postgresql.conf from {} (includes inlined, the settings naming \
             the original's own files disabled), pg_hba.conf and pg_ident.conf",
            s.target.display(),
            c.from
        );
    }
}

/// `pitr list` as a table; with several generations, one group each, the current one first.
pub fn listing(l: &Listing) {
    if l.generations.len() < 2 {
        backups_and_wal(&l.backups, &l.wal);
    } else {
        for g in l.generations.iter().rev() {
            let current = if g.generation == l.generations.len() as u32 {
                "current".to_string()
            } else {
                format!("recovered with PostgreSQL {}'s binaries", g.pg_version)
            };
            println!(
                "generation {} ({current}): cluster {}, PostgreSQL {}",
                g.generation, g.system_identifier, g.pg_version
            );
            let backups: Vec<BackupStatus> = l
                .backups
                .iter()
                .filter(|b| b.generation == g.generation)
                .cloned()
                .collect();
            let wal: Vec<TimelineRange> = l.wal.iter().filter(|t| t.generation == g.generation).cloned().collect();
            backups_and_wal(&backups, &wal);
        }
    }
    for b in &l.unreadable {
        println!("{:<32} {:<6} UNREADABLE: {}", b.id, b.tier.name(), b.reason);
    }
}

/// Backups as a table, then the archived WAL per timeline.
fn backups_and_wal(backups: &[BackupStatus], wal: &[TimelineRange]) {
    if backups.is_empty() {
        println!("no backups");
    } else {
        println!(
            "{:<32} {:<6} {:<20} {:<20} {:<24} {:>3} {:>10} {:>10}  WAL",
            "ID", "TIER", "START (UTC)", "STOP (UTC)", "LSN RANGE", "TL", "ORIGINAL", "STORED"
        );
        for b in backups {
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
    for t in wal {
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

/// What sync did or would do.
pub fn sync_report(report: &SyncReport) {
    let verb = if report.dry_run { "would copy" } else { "copied" };
    for id in &report.leftovers_deleted {
        let verb = if report.dry_run { "would delete" } else { "deleted" };
        println!("{verb} the unfinished copy of backup {id}, which the source no longer holds");
    }
    println!(
        "{verb} {} objects ({}) from {} to {}: {} WAL files, {} backups{}, {} packs ({}), {} restore points, {} maps of \
         names, {} drill records; {} objects were there already ({} backups); {:.1} s",
        report.objects_copied,
        mib(report.bytes_copied),
        report.source,
        report.target,
        report.wal_copied,
        report.backups_copied.len(),
        if report.backups_copied.is_empty() {
            String::new()
        } else {
            format!(" ({})", report.backups_copied.join(", "))
        },
        report.packs_copied,
        mib(report.pack_bytes_copied),
        report.restore_points_copied,
        report.names_copied,
        report.drills_copied,
        report.objects_skipped,
        report.backups_present,
        report.seconds
    );
    for problem in &report.problems {
        println!("NOT COPIED: {problem}");
    }
}

/// What expire did or would do.
pub fn expire_plan(plan: &ExpirePlan, dry_run: bool) {
    let verb = if dry_run { "would delete" } else { "deleted" };
    for b in &plan.backups {
        println!("{verb} backup {} ({})", b.id, b.reason);
    }
    for d in &plan.drills {
        println!(
            "{verb} drill record {} (of {} backup {}, no longer retained; a newer {} drill is recorded)",
            d.record,
            d.tier,
            printable(&d.backup_id),
            d.tier
        );
    }
    if let (Some(first), Some(last)) = (plan.wal.first(), plan.wal.last()) {
        let kept = plan.wal_kept_from.as_deref().unwrap_or("?");
        println!(
            "{verb} {} WAL files ({first}..{last}): older than {kept}, the oldest WAL a retained backup needs",
            plan.wal.len()
        );
    }
    for g in &plan.earlier_generations {
        if let (Some(first), Some(last)) = (g.wal.first(), g.wal.last()) {
            let why = match &g.wal_kept_from {
                Some(kept) => format!("older than {kept}, the oldest WAL a retained backup of it needs"),
                None => "no backup of it is retained".to_string(),
            };
            println!(
                "{verb} {} WAL files of generation {} ({first}..{last}): {why}",
                g.wal.len(),
                g.generation
            );
        }
    }
    for b in &plan.unreadable {
        println!(
            "kept unreadable backup {} ({}): expire never deletes it, and expires no WAL while it is there; \
             repair its manifest, or delete the directory by hand once it is of no use: {}",
            b.id, b.tier, b.reason
        );
    }
    if let Some(packs) = &plan.packs {
        if packs.deleted > 0 {
            println!("deleted {} packs that no backup references", packs.deleted);
        }
        if packs.condemned > 0 {
            println!(
                "condemned {} packs that no backup references: a later expire deletes them once the grace period is over",
                packs.condemned
            );
        }
        if let Some(skipped) = &packs.skipped {
            println!("deleted no pack: {skipped}");
        }
    }
    let earlier_wal = plan.earlier_generations.iter().any(|g| !g.wal.is_empty());
    if plan.backups.is_empty()
        && plan.drills.is_empty()
        && plan.wal.is_empty()
        && !earlier_wal
        && plan.unreadable.is_empty()
        && plan.packs.as_ref().is_none_or(|p| p.deleted == 0 && p.condemned == 0)
    {
        println!("nothing to expire");
    }
}

/// A created restore point.
pub fn restore_point(p: &RestorePoint, archived: bool) {
    let state = if archived {
        "archived"
    } else {
        "not yet archived (--no-switch)"
    };
    println!(
        "restore point '{}' at {} on timeline {} ({}, {state})",
        p.name, p.lsn, p.timeline, p.wal_file
    );
}

/// What `pitr names record` did.
pub fn names_recorded(r: &pitr::names::Recorded) {
    match r.recorded {
        Some(lsn) => println!(
            "recorded the names of {} relations in {} databases at {lsn}",
            r.relations, r.databases
        ),
        None => println!("the names are the same as in the last map: nothing recorded"),
    }
    if !r.unreadable.is_empty() {
        println!(
            "could not connect to databases {}: their relations are not named",
            r.unreadable.join(", ")
        );
    }
}

/// The maps `pitr names list` shows.
pub fn names_maps(maps: &[pitr::names::NamesMap]) {
    if maps.is_empty() {
        println!("no maps of relation names (backups, restore points, the daemon and `pitr names record` take them)");
        return;
    }
    println!(
        "{:<18} {:<26} {:>9} {:>9}",
        "LSN", "TIME (UTC)", "DATABASES", "RELATIONS"
    );
    for map in maps {
        println!(
            "{:<18} {:<26} {:>9} {:>9}",
            map.lsn.to_string(),
            map.time.format("%Y-%m-%d %H:%M:%S"),
            map.databases.len(),
            map.relations.len()
        );
    }
}

/// What `pitr drill` did: one block per drill, then the verdict. What a record holds comes from
/// the repository or the copy: printed with control characters escaped.
pub fn drill_report(report: &pitr::drill::DrillReport) {
    if let Some(why) = &report.nothing_to_drill {
        println!("{why}");
        return;
    }
    if let Some(note) = &report.priority_note {
        println!("note: {note}; the drills ran at normal priority");
    }
    for drill in &report.drills {
        drill_record(drill);
    }
    println!(
        "{}",
        if report.passed {
            "every drill passed"
        } else {
            "a drill FAILED: see above (pitr verify raises DrillFailed)"
        }
    );
}

fn drill_record(d: &pitr::drill::DrillRecord) {
    let seconds = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |s| format!("{s:.1} s"));
    println!(
        "drill {} of {} backup {}: {} (target {}, reached {}{}; RTO {}, RPO {}, {} restored)",
        d.started.format("%Y-%m-%d %H:%M:%S UTC"),
        d.tier,
        printable(&d.backup_id),
        if d.passed { "passed" } else { "FAILED" },
        printable(&d.target),
        printable(d.reached_lsn.as_deref().unwrap_or("-")),
        d.reached_time
            .as_deref()
            .map(|t| format!(", last commit {}", printable(t)))
            .unwrap_or_default(),
        seconds(d.rto_seconds),
        seconds(d.rpo_seconds),
        human_bytes(d.bytes_restored)
    );
    for check in &d.checks {
        println!(
            "  {:<10} {:<6} {}",
            printable(&check.check),
            if check.passed { "ok" } else { "FAILED" },
            printable(&check.detail)
        );
    }
}

/// `pitr drill list`: every recorded drill, oldest first, and the records that could not be read.
pub fn drill_history(history: &pitr::drill::DrillHistory) {
    if history.drills.is_empty() {
        println!("no drills recorded (run `pitr drill`; the daemon drills every Sunday at 04:00 by default)");
    }
    for drill in &history.drills {
        drill_record(drill);
    }
    for why in &history.unreadable {
        println!("unreadable: {}", printable(why));
    }
}

/// What `pitr create-repo` did.
pub fn create_report(r: &pitr::generations::CreateReport) {
    let what = match r.outcome {
        pitr::repo::Created::Created => "created",
        pitr::repo::Created::AlreadyCreated => "was created before; nothing changed",
        pitr::repo::Created::Recreated => {
            "had lost its repo.json: written again after checking that its WAL and backups are this cluster's"
        }
    };
    println!(
        "repository {} {what}: cluster {} (PostgreSQL {}, {} MiB WAL segments)",
        r.repository,
        r.cluster.system_identifier,
        r.cluster.pg_version,
        r.cluster.wal_segment_size >> 20
    );
}

/// What `pitr rotate-key` did.
pub fn rotate_report(r: &pitr::repo::RotateReport, rewrite: bool) {
    let set = match r.recorded {
        true => "recorded as",
        false => "already were",
    };
    println!(
        "repository {}: {} {set} key set {}",
        r.repository,
        pitr::crypt::list(&r.recipients),
        r.key_set
    );
    if rewrite {
        println!(
            "re-encrypted {} objects for it ({} were already, {} put back from an earlier run)",
            r.rewritten, r.current, r.resumed
        );
    }
}

/// What `pitr upgrade-repo` did.
pub fn upgrade_report(r: &pitr::generations::UpgradeReport) {
    let (old, new) = (&r.previous, &r.current);
    println!(
        "repository {}: generation {} started for cluster {} (PostgreSQL {}, {} MiB WAL segments), archived into \
         wal.{}/ from now on",
        r.repository,
        new.generation,
        new.system_identifier,
        new.pg_version,
        new.wal_segment_size >> 20,
        new.generation
    );
    println!(
        "generation {} (cluster {}, PostgreSQL {}) keeps its backups, WAL and restore points: they stay listed \
         and recover with PostgreSQL {}'s binaries",
        old.generation, old.system_identifier, old.pg_version, old.pg_version
    );
    println!("next: take a backup of the upgraded cluster (pitr backup --tier daily --fast)");
}

/// The restore point catalog, with whether `recover --target-name` reaches each point.
pub fn restore_points(points: &[ListedRestorePoint]) {
    if points.is_empty() {
        println!("no restore points");
        return;
    }
    println!(
        "{:<40} {:>3} {:<14} {:>3} {:<26} {:<24} RECOVERABLE",
        "NAME", "GEN", "LSN", "TL", "TIME (UTC)", "WAL"
    );
    for listed in points {
        let p = &listed.point;
        let verdict = match &listed.unrecoverable_reason {
            None => "yes".to_string(),
            Some(reason) => format!("no: {reason}"),
        };
        println!(
            "{:<40} {:>3} {:<14} {:>3} {:<26} {:<24} {verdict}",
            p.name,
            p.generation,
            p.lsn.to_string(),
            p.timeline,
            p.time.format("%Y-%m-%d %H:%M:%S%.3f"),
            p.wal_file
        );
    }
}

/// The recovery plan, printed before anything is touched.
pub fn plan(p: &Plan, pgdata: &std::path::Path) {
    println!("Recovery plan");
    println!("  target:    {}", p.target);
    if let Some(before) = &p.stops_before {
        println!(
            "  stops before: transaction {}, committed {} at {}",
            before.xid,
            before.commit_time.format("%Y-%m-%d %H:%M:%S%.6f UTC"),
            before.commit_lsn
        );
        if let Some(did) = &before.did {
            println!("                {}", printable(did));
        }
    }
    if p.earlier_generation {
        println!(
            "  generation: {} (PostgreSQL {}, from before a major upgrade)",
            p.generation, p.pg_version
        );
    }
    println!(
        "  backup:    {} ({}), consistent at {} / {}",
        p.backup_id,
        p.backup_tier,
        p.backup_stop_time.format("%Y-%m-%d %H:%M:%S UTC"),
        p.backup_stop_lsn
    );
    let path: Vec<String> = p
        .timeline_path
        .iter()
        .map(|s| match s.ends_at {
            Some(end) => format!("{} (until {end})", s.timeline),
            None => s.timeline.to_string(),
        })
        .collect();
    println!("  timelines: {}", path.join(" -> "));
    println!(
        "  WAL:       {} .. {} ({} segments, all archived)",
        p.first_wal, p.last_wal, p.wal_segments
    );
    println!("  restore:   {} into {}", mib(p.restore_bytes), pgdata.display());
    for note in &p.notes {
        println!("  note:      {note}");
    }
}

/// What recover did.
pub fn recover_report(r: &Report) {
    restore_summary(&r.restored);
    if let Some(o) = &r.outcome {
        println!(
            "replayed {} WAL files from the archive (last {})",
            o.files_restored,
            o.last_restored.as_deref().unwrap_or("-")
        );
        match &o.stopped {
            Some(line) => println!("PostgreSQL: {line}"),
            None => println!("PostgreSQL replayed all archived WAL"),
        }
        let state = match (o.action.setting(), o.new_timeline) {
            ("promote", Some(tli)) => format!("promoted to timeline {tli}"),
            (action, _) => format!("{action} at the target"),
        };
        println!("server: {state}");
    }
    if let Some(s) = &r.server_state {
        println!(
            "replay position: {} (last commit replayed at {})",
            s.replay_lsn.as_deref().unwrap_or("-"),
            s.last_commit_time.as_deref().unwrap_or("-")
        );
    }
    for row in r.verify_rows.iter().flatten() {
        let cells: Vec<&str> = row.iter().map(|c| c.as_deref().unwrap_or("NULL")).collect();
        println!("verify: {}", cells.join(" | "));
    }
    if let Some(error) = &r.verify_error {
        println!("verify: FAILED: {error}");
    }
    if let Some(connect) = &r.connect {
        println!("connect: {connect}");
    }
    println!("next steps:");
    for (i, step) in r.next_steps.iter().enumerate() {
        println!("  {}. {step}", i + 1);
    }
}

/// What restore-database did, and the switch the operator would run.
pub fn restore_database_report(r: &pitr::restore_database::Report) {
    let names = &r.names;
    println!(
        "restored {}{} into {} on {}",
        names.database,
        r.table
            .as_deref()
            .map(|t| format!(" (table {t} only)"))
            .unwrap_or_default(),
        names.restored,
        r.production
    );
    println!(
        "  copy:      backup {} restored ({} files, {}), database {} in the copy",
        r.restored.id,
        r.restored.files,
        mib(r.restored.bytes),
        mib(r.database_bytes)
    );
    if let Some(stopped) = r.outcome.as_ref().and_then(|o| o.stopped.as_deref()) {
        println!("  target:    PostgreSQL: {stopped}");
    }
    println!("  owner:     {} ({})", r.owner, r.owner_reason);
    match &r.ownership_note {
        Some(note) => println!("  objects:   {note}"),
        None => println!("  objects:   owners and grants kept as in the copy"),
    }
    println!("  space:     {}", r.production_space);
    match (&r.copy.removed, &r.copy.connect) {
        (true, _) => println!("  scratch:   {} stopped and removed", r.copy.directory.display()),
        (false, connect) => println!(
            "  scratch:   {} kept running (--keep-copy){}: stop it with pg_ctl -D {}/data stop, then remove it",
            r.copy.directory.display(),
            connect
                .as_deref()
                .map(|c| format!("; connect: {c}"))
                .unwrap_or_default(),
            r.copy.directory.display()
        ),
    }
    for row in r.verify_rows.iter().flatten() {
        let cells: Vec<&str> = row.iter().map(|c| c.as_deref().unwrap_or("NULL")).collect();
        println!("verify: {}", cells.join(" | "));
    }
    if let Some(error) = &r.verify_error {
        println!("verify: FAILED: {error}");
    }
    if r.table.is_some() {
        println!(
            "next: copy the rows you need from {} into {} (postgres_fdw, dblink or \\copy); drop {} when done",
            names.restored, names.database, names.restored
        );
        return;
    }
    println!(
        "switch (connected to the maintenance database postgres, not to {} or {}; {} is kept, never dropped):",
        names.database, names.restored, names.before_restore
    );
    for sql in &r.switch_sql {
        println!("  {sql}");
    }
}

/// The switch restore-database made.
pub fn switched(r: &pitr::restore_database::Report) {
    let names = &r.names;
    if let Some(s) = &r.switched {
        println!(
            "switched: {} is now the restored database; the previous one is kept as {} (connections {}); {} \
             sessions terminated",
            names.database,
            names.before_restore,
            if s.allow_connections {
                "allowed"
            } else {
                "refused, as before"
            },
            s.terminated
        );
    }
}

/// What adopt did.
pub fn adopt_report(r: &AdoptReport) {
    if r.stopped_server {
        match &r.removed_socket_dir {
            Some(dir) => println!(
                "stopped the recovered copy's private run and removed its socket directory {}",
                dir.display()
            ),
            None => println!("stopped the recovered copy's private run"),
        }
    }
    println!(
        "archived {} files of timeline {} ({} were archived already){}",
        r.archived.len(),
        r.timeline,
        r.already_archived,
        if r.archived.is_empty() {
            String::new()
        } else {
            format!(": {}", r.archived.join(", "))
        }
    );
    if !r.lost_segments.is_empty() {
        println!(
            "warning: {} segments of timeline {} were removed before they could be archived ({}..{}): \
             recovery to points between them is impossible; take a new backup right after starting",
            r.lost_segments.len(),
            r.timeline,
            r.lost_segments[0],
            r.lost_segments[r.lost_segments.len() - 1]
        );
    }
    match &r.archiving.written_because {
        None => println!(
            "the copy's own configuration is back and archives into this repository ({})",
            r.archiving.archive_command
        ),
        Some(reason) => println!(
            "the copy's own configuration is back, but {reason}: pitr set archive_mode = on and archive_command = \
             '{}' in postgresql.auto.conf",
            r.archiving.archive_command
        ),
    }
    println!("start the copy: pg_ctl -D {} start", r.pgdata.display());
}

/// Said when the repository holds no map of names.
pub const NAMES_MISSING: &str = "note: the repository holds no map of names yet (backups and restore points \
                                 record them): relations show as tablespace/database/relfilenode";

/// `pitr wal events`: one line per event (time, transaction, LSN, database, what it did), then
/// what was read.
/// `text` with control characters escaped (`\u{1b}`): names read from the repository or the WAL
/// (relations, databases, restore points) may hold any character, and a terminal must not obey
/// them.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

pub fn wal_events(report: &pitr::inspect::Report) {
    use pitr::inspect::Event;
    for event in &report.events {
        let time = event.time().format("%Y-%m-%d %H:%M:%S%.6f UTC");
        let lsn = event.lsn();
        match event {
            Event::Transaction(t) => {
                let database = t
                    .database
                    .clone()
                    .or_else(|| t.database_oid.map(|oid| format!("db {oid}")))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{time}  xid {:<10} {lsn:<12} {:<12} {}",
                    t.xid,
                    printable(&database),
                    printable(&t.summary)
                );
            }
            Event::RestorePoint { name, .. } => {
                println!(
                    "{time}  {:<14} {lsn:<12} {:<12} restore point \"{}\"",
                    "-",
                    "-",
                    printable(name)
                )
            }
            Event::Checkpoint { shutdown, redo, .. } => {
                let kind = if *shutdown { "shutdown" } else { "online" };
                println!(
                    "{time}  {:<14} {lsn:<12} {:<12} checkpoint ({kind}), redo at {redo}",
                    "-", "-"
                )
            }
            Event::TimelineSwitch { timeline, previous, .. } => println!(
                "{time}  {:<14} {lsn:<12} {:<12} timeline switch: {previous} -> {timeline}",
                "-", "-"
            ),
        }
    }
    let range = match (report.first_lsn, report.end_lsn) {
        (Some(first), Some(end)) => format!(", {first} to {end}"),
        _ => String::new(),
    };
    println!(
        "{} on timeline {}: {} segments, {} records read{range}",
        count(report.events.len(), "event"),
        report.timeline,
        report.segments,
        report.records
    );
    if report.names_missing {
        println!("{NAMES_MISSING}");
    }
}

fn utc(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    human_duration(now.signed_duration_since(then).num_seconds())
}

/// The readable verify report: the verdict and each alert first, then what was checked.
pub fn verify_report(r: &VerifyReport) {
    let status = format!("{:?}", r.status).to_uppercase();
    println!("verify {}: {status} ({})", r.scope, count(r.alerts.len(), "alert"));
    alerts(&r.alerts);
    println!(
        "checked:  {} and {}: {} read, {} decompressed and checksummed, in {:.1} s ({}/s read, {}/s checked, \
         on {})",
        count(r.backups_checked, "backup"),
        count(r.wal_files_checked, "WAL file"),
        mib(r.read.stored_bytes),
        mib(r.read.original_bytes),
        r.read.seconds,
        mib(r.read.per_second(r.read.stored_bytes) as u64),
        mib(r.read.per_second(r.read.original_bytes) as u64),
        count(r.read.jobs, "thread")
    );
    repository_state(&r.repository, r.now);
    let gaps: Vec<String> = r
        .gaps
        .iter()
        .map(|g| match g.segments {
            1 => g.first.clone(),
            _ => format!("{}..{}", g.first, g.last),
        })
        .collect();
    if !gaps.is_empty() {
        println!("gaps:     {}", gaps.join(", "));
    }
    match &r.server {
        ServerView::Primary { target, timeline, lsn } => {
            println!("server:   {target} has written WAL up to {lsn} on timeline {timeline}")
        }
        ServerView::Unavailable { reason } => println!("server:   {reason} (WalArchiveStale not judged)"),
    }
    match &r.slot {
        Some(SlotView::Found(slot)) => println!("slot:     {}", slot_state(slot)),
        Some(SlotView::Missing { name, server }) => println!("slot:     {name} does not exist on {server}"),
        Some(SlotView::Unavailable { name, reason }) => {
            println!("slot:     {name}: {reason} (SlotLagging and SlotLost not judged)")
        }
        None => {}
    }
    println!("took:     {:.1} s", r.duration_seconds);
}

/// A replication slot in one line: who streams from it and what it holds back.
fn slot_state(slot: &pitr::pg::SlotState) -> String {
    let streaming = if slot.active {
        "a receiver streams from it"
    } else {
        "no receiver streams from it"
    };
    let limit = slot
        .max_slot_wal_keep_size
        .map_or_else(|| "no limit".to_string(), human_bytes);
    format!(
        "{} ({}) on {}: {streaming}; it holds back {} of WAL (wal_status {}, max_slot_wal_keep_size {limit})",
        slot.name,
        slot.slot_type,
        slot.server,
        human_bytes(slot.retained_bytes.unwrap_or(0)),
        slot.wal_status.as_deref().unwrap_or("unknown")
    )
}

/// "1 alert", "2 alerts".
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn alerts(alerts: &[Alert]) {
    for a in alerts {
        println!(
            "  {:<8} {} {}",
            a.severity.to_string().to_uppercase(),
            a.alert,
            a.subject
        );
        println!("           {}", a.reason);
    }
}

/// Windows, backups per tier, archive and restore points, ages measured at `now`.
fn repository_state(s: &RepoSummary, now: DateTime<Utc>) {
    for w in &s.windows {
        println!(
            "window:   timeline {}: recover to any moment from {} to {} (backup {}, WAL to {})",
            w.timeline,
            utc(w.start_time),
            utc(w.end_time),
            w.from_backup,
            w.end_lsn
        );
    }
    if s.windows.is_empty() {
        println!("window:   none: no backup with all the WAL it needs");
    }
    let tiers: Vec<String> = s
        .tiers
        .iter()
        .map(|t| match t.backups.last() {
            Some(newest) => format!(
                "{} {}, newest {} ({} old)",
                t.tier,
                t.backups.len(),
                newest.id,
                age(newest.stop_time, now)
            ),
            None => format!("{} none", t.tier),
        })
        .collect();
    println!("backups:  {}", tiers.join("; "));
    let a = &s.archive;
    let newest = match (&a.newest_segment, a.newest_archived_at) {
        (Some(name), Some(at)) => format!("newest {name}, archived {} ago", age(at, now)),
        _ => "no segment".into(),
    };
    println!(
        "WAL:      {} files ({} segments, {}), {newest}",
        a.files,
        a.segments,
        mib(a.stored_bytes)
    );
    if let Some(p) = s.restore_points.last() {
        println!(
            "restore points: {}, newest '{}' at {} ({})",
            s.restore_points.len(),
            p.name,
            p.lsn,
            utc(p.time)
        );
    }
    for problem in &s.unreadable {
        println!("unreadable: {problem}");
    }
    for earlier in &s.earlier_generations {
        match (&earlier.generation, &earlier.cluster) {
            (Some(g), Some(c)) => println!(
                "generation {} (before an upgrade; recover with PostgreSQL {}'s binaries): cluster {}, PostgreSQL {}, \
                 {} MiB WAL segments",
                g.generation,
                c.pg_version,
                c.system_identifier,
                c.pg_version,
                c.wal_segment_size >> 20
            ),
            _ => println!("an earlier generation:"),
        }
        repository_state(earlier, now);
    }
}

/// `pitr info`.
pub fn info(s: &RepoSummary, now: DateTime<Utc>) {
    let generation = match (&s.generation, s.earlier_generations.is_empty()) {
        (Some(g), false) => format!(" (generation {}, current)", g.generation),
        _ => String::new(),
    };
    match &s.cluster {
        Some(c) => println!(
            "repository {}: cluster {}, PostgreSQL {}, {} MiB WAL segments{generation}",
            s.repository,
            c.system_identifier,
            c.pg_version,
            c.wal_segment_size >> 20
        ),
        None => println!("repository {}: empty (no cluster archived here yet)", s.repository),
    }
    if let Some(recipients) = &s.encrypted_for {
        println!("encrypted for {}", pitr::crypt::list(recipients));
    }
    repository_state(s, now);
}

/// One line for verify's log file.
pub fn verify_log_line(result: Result<&VerifyReport, String>, scope: Scope) -> String {
    let stamp = Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
    match result {
        Err(message) => format!("{stamp} verify {scope}: error: {message}"),
        Ok(r) => {
            let raised: Vec<String> = r.alerts.iter().map(|a| format!("{} {}", a.alert, a.subject)).collect();
            format!(
                "{stamp} verify {scope}: {} ({}{}{}); {}, {}, {} read in {:.1} s",
                format!("{:?}", r.status).to_lowercase(),
                count(r.alerts.len(), "alert"),
                if raised.is_empty() { "" } else { ": " },
                raised.join("; "),
                count(r.backups_checked, "backup"),
                count(r.wal_files_checked, "WAL file"),
                mib(r.read.stored_bytes),
                r.duration_seconds
            )
        }
    }
}

/// The verdict of check-integrity.
pub fn integrity_report(r: &IntegrityReport) {
    let verdict = if r.sound { "sound" } else { "CORRUPT" };
    let kind = match r.kind {
        IntegrityKind::WalFile => "archived WAL file",
        IntegrityKind::Backup => "backup",
        IntegrityKind::Dump => "logical dump",
    };
    println!("{verdict}: {} ({kind}): {}", r.target, r.checked);
    alerts(&r.problems);
}

/// What a passed `pitr check` saw.
pub fn check_report(r: &CheckReport) {
    println!(
        "ok: {} is cluster {} on timeline {}",
        r.server, r.system_identifier, r.timeline
    );
    println!("ok: wal_level, archive_mode, archive_command = '{}'", r.archive_command);
    if let Some(history) = &r.history_file {
        println!("ok: {history} is in the repository and valid");
    }
    println!(
        "ok: switched WAL; {} arrived in the repository, valid, after {:.1} s",
        r.segment, r.archived_after_seconds
    );
    if let Some(slot) = &r.slot {
        println!("ok: replication slot {}", slot_state(slot));
        if !slot.active {
            println!(
                "note: start the WAL receiver: pitr watch --slot {} (or the daemon with slot = \"{}\")",
                slot.name, slot.name
            );
        }
    }
    println!("archiving into this repository works");
}

/// `pitr init`: what the server runs with, what changes (or changed), what waits for a restart,
/// and check's result.
pub fn init_report(r: &InitReport) {
    println!(
        "server: PostgreSQL {}, data directory {} (owner {}), configuration {}",
        r.server_version,
        r.data_directory.display(),
        r.owner,
        r.server_config_file
    );
    if r.changes.is_empty() {
        println!("nothing to change");
    } else {
        println!("{}", if r.applied { "changed:" } else { "to change:" });
        for change in &r.changes {
            let when = match change.takes_effect {
                TakesEffect::Restart => " (needs a restart)",
                TakesEffect::Reload => " (reload)",
                TakesEffect::Now => "",
            };
            println!("  {}: {} → {}{when}", change.what, change.current, change.wanted);
        }
    }
    match &r.check {
        CheckOutcome::NotRun if r.changes.is_empty() => {
            println!("dry run: run `pitr init --apply` (or `pitr check`) to check archiving end to end")
        }
        CheckOutcome::NotRun => println!("dry run: nothing was changed; run again with --apply to make these changes"),
        CheckOutcome::AfterRestart => println!(
            "restart PostgreSQL to apply: {}; then run `pitr check` (or `pitr init --apply` again, which then \
             changes nothing and runs check)",
            r.restart_pending.join(", ")
        ),
        CheckOutcome::Passed { report } => check_report(report),
        // The error is the command's: main prints it.
        CheckOutcome::Failed { .. } => {}
    }
    if !r.applied && !r.restart_pending.is_empty() {
        println!(
            "set already, waiting for a restart of PostgreSQL: {}",
            r.restart_pending.join(", ")
        );
    }
}
