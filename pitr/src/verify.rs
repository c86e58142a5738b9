//! Verification that a monitoring system can trust: proof that the backups restore and the WAL
//! archive is whole, returned as data — a [`VerifyReport`] with [`Alert`]s that the binary
//! renders, logs, exports and turns into an exit code.
//!
//! `verify` reads every stored object in scope once, in parallel (backup files against the
//! object checksum and the manifest, labels, WAL files against checksum, page header and
//! cluster), checks manifests, WAL continuity and the timeline history chain, and judges
//! freshness against [`Thresholds`]; with a replication slot configured, how much WAL the slot
//! holds back on the server; and the newest restore drill of each tier (`pitr drill`'s records:
//! DrillFailed, DrillStale). It checks every generation of the repository, each against
//! its own cluster and WAL; freshness and staleness judge the current one, whose server runs.
//!
//! - `alerts`: the alert names and severities, the freshness and drill rules.
//! - `consistency`: a manifest against itself, its directory and the repository's cluster.
//! - `continuity`: which WAL must be archived, the gaps, the history chain.
//! - `objects`: reading and checking stored objects on a thread pool.
//! - [`metrics`]: the Prometheus textfile.
//! - `integrity`: `pitr check-integrity` of one WAL file, one backup or one logical dump
//!   (`dump`).
//! - `check`: `pitr check`, archiving end to end on a running server.

mod alerts;
mod check;
mod consistency;
mod continuity;
mod dump;
mod integrity;
pub mod metrics;
mod objects;
mod shared;

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use alerts::{
    human_bytes, human_duration, Alert, AlertName, Severity, Thresholds, DEFAULT_DRILL_STALE, DEFAULT_SLOT_LAG,
};
pub use check::{check, CheckOptions, CheckReport};
pub use continuity::Gap;
pub use integrity::{check_integrity, IntegrityKind, IntegrityReport};
pub use objects::ReadStats;

use self::alerts::NewestSegment;
use self::continuity::{Archive, HistoryProblem};
use self::objects::StoredObject;
use crate::backup::manifest::{Manifest, ManifestSummary};
use crate::backup::{CatalogEntry, Tier};
use crate::drill::{self, DrillRecord};
use crate::error::{Error, Result};
use crate::info::{earlier_generations, summarize, summarize_on, Holdings, RepoSummary};
use crate::pg::{Server, SlotState};
use crate::progress::Progress;
use crate::repo::{backup_dir, Repo, INCOMPLETE_MARKER, MANIFEST, MANIFEST_COPY};
use crate::wal::{Lsn, Segment, TimelineId, WalFileName};

/// What `pitr verify` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every backup and the whole WAL archive.
    All,
    /// The backups of one tier and the WAL they need to reach consistency.
    Tier(Tier),
    /// The WAL archive: every file, continuity, history files, staleness.
    Wal,
}

impl Scope {
    /// Whether backups of `tier` are verified.
    pub fn covers(self, tier: Tier) -> bool {
        match self {
            Scope::All => true,
            Scope::Tier(t) => t == tier,
            Scope::Wal => false,
        }
    }

    /// Whether the whole WAL archive is verified.
    pub fn covers_wal(self) -> bool {
        matches!(self, Scope::All | Scope::Wal)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Tier(tier) => tier.fmt(f),
            Scope::Wal => f.write_str("wal"),
        }
    }
}

impl FromStr for Scope {
    type Err = Error;

    fn from_str(s: &str) -> Result<Scope> {
        match s {
            "all" => Ok(Scope::All),
            "wal" => Ok(Scope::Wal),
            tier => tier.parse().map(Scope::Tier).map_err(|_| {
                Error::InvalidInput(format!("unknown scope '{s}': use all, hourly, daily, weekly or wal"))
            }),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// What to look at.
    pub scope: Scope,
    /// The moment ages are measured against (the clock, or `--now`).
    pub now: DateTime<Utc>,
    /// The freshness limits.
    pub thresholds: Thresholds,
    /// The tiers that should hold backups: scheduled, and kept by retention. With `verify all`,
    /// such a tier without any backup is BackupMissing once one is overdue.
    pub expected_tiers: Vec<Tier>,
    /// Objects read at once.
    pub jobs: usize,
}

/// The server as WalArchiveStale needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ServerView {
    /// The repository's cluster, a primary that has written WAL up to `lsn`.
    Primary {
        /// Which server.
        target: String,
        /// The timeline it writes.
        timeline: TimelineId,
        /// `pg_current_wal_lsn()`.
        lsn: Lsn,
    },
    /// Not asked, not reachable, or not this repository's primary: why.
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl ServerView {
    /// The timeline the server writes, when it is this repository's primary.
    pub fn timeline(&self) -> Option<TimelineId> {
        match self {
            ServerView::Primary { timeline, .. } => Some(*timeline),
            ServerView::Unavailable { .. } => None,
        }
    }
}

/// The configured replication slot (`slot`), as SlotLagging and SlotLost need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SlotView {
    /// The slot as `pg_replication_slots` shows it.
    Found(SlotState),
    /// The server has no slot of this name.
    Missing {
        /// The slot.
        name: String,
        /// Which server.
        server: String,
    },
    /// Not asked, or the server was not reached: why.
    Unavailable {
        /// The slot.
        name: String,
        /// Why.
        reason: String,
    },
}

/// What verify saw of the server: for the staleness rule, and the configured slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The server, for WalArchiveStale.
    pub server: ServerView,
    /// The configured replication slot, if any.
    pub slot: Option<SlotView>,
}

/// Looks at the server behind `config` for the staleness rule and at the replication slot
/// `slot` (when one is configured); never fails, an unreachable server is a view too. Only
/// asked when `scope` covers the WAL archive. The slot is judged on whatever server `config`
/// reaches (the receiver streams from that one), a standby included.
pub async fn observe_server(
    repo: &Repo,
    scope: Scope,
    config: &crate::pg::ConnectionSettings,
    slot: Option<&str>,
) -> Observation {
    let unavailable = |reason: &str| Observation {
        server: ServerView::Unavailable {
            reason: reason.to_string(),
        },
        slot: slot.map(|name| SlotView::Unavailable {
            name: name.to_string(),
            reason: reason.to_string(),
        }),
    };
    if !scope.covers_wal() {
        return unavailable(&format!("not asked: verify {scope} does not judge the WAL archive"));
    }
    let cluster = match repo.info() {
        Ok(Some(info)) => Ok(info.system_identifier),
        Ok(None) => Err("the repository holds no cluster yet".to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let (Err(reason), None) = (&cluster, slot) {
        return unavailable(reason);
    }
    let mut config = config.clone();
    config.config.connect_timeout(Duration::from_secs(5));
    let server = match Server::connect(&config).await {
        Ok(server) => server,
        Err(e) => return unavailable(&e.to_string()),
    };
    let slot = match slot {
        Some(name) => Some(observe_slot(&server, name).await),
        None => None,
    };
    let server = match cluster {
        Ok(system_identifier) => observe(&server, system_identifier)
            .await
            .unwrap_or_else(|e| ServerView::Unavailable { reason: e.to_string() }),
        Err(reason) => ServerView::Unavailable { reason },
    };
    Observation { server, slot }
}

async fn observe_slot(server: &Server, name: &str) -> SlotView {
    match server.replication_slot(name).await {
        Ok(Some(state)) => SlotView::Found(state),
        Ok(None) => SlotView::Missing {
            name: name.to_string(),
            server: server.target().to_string(),
        },
        Err(e) => SlotView::Unavailable {
            name: name.to_string(),
            reason: e.to_string(),
        },
    }
}

async fn observe(server: &Server, cluster: u64) -> Result<ServerView> {
    let system_identifier = server.system_identifier().await?;
    if system_identifier != cluster {
        return Ok(ServerView::Unavailable {
            reason: format!(
                "{} is cluster {system_identifier}, not the repository's cluster {cluster}",
                server.target()
            ),
        });
    }
    if server.is_in_recovery().await? {
        return Ok(ServerView::Unavailable {
            reason: format!("{} is a standby", server.target()),
        });
    }
    Ok(ServerView::Primary {
        target: server.target().to_string(),
        timeline: server.current_timeline().await?,
        lsn: server.current_wal_lsn().await?,
    })
}

/// The outcome of a verification: the worst alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No alert.
    Ok,
    /// Warnings only.
    Warning,
    /// At least one critical alert.
    Critical,
}

/// What a verification found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// What was verified.
    pub scope: Scope,
    /// The worst alert.
    pub status: Status,
    /// The moment ages were measured against.
    pub now: DateTime<Utc>,
    /// Seconds the whole verification took.
    pub duration_seconds: f64,
    /// Backups verified.
    pub backups_checked: usize,
    /// WAL files verified.
    pub wal_files_checked: usize,
    /// How much was read, and how fast.
    pub read: ReadStats,
    /// Missing WAL of the current generation (an earlier generation's gaps are alerts that name
    /// it).
    pub gaps: Vec<Gap>,
    /// The server, for the staleness rule.
    pub server: ServerView,
    /// The configured replication slot (`slot`), for SlotLagging and SlotLost; absent when none
    /// is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<SlotView>,
    /// The alerts, critical first.
    pub alerts: Vec<Alert>,
    /// The repository's state: windows, tiers, archive, restore points.
    pub repository: RepoSummary,
    /// The newest restore drill of each tier in scope (DrillFailed, the drill metrics).
    pub drills: Vec<DrillRecord>,
    /// The newest passing restore drill of each tier in scope (DrillStale, the last success).
    pub passed_drills: Vec<DrillRecord>,
}

/// Verifies what `options.scope` covers, in every generation of the repository.
pub fn verify(
    repo: &Repo,
    options: &VerifyOptions,
    observed: &Observation,
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let server = &observed.server;
    let started = Instant::now();
    let current = repo.pin()?;
    let holdings = Holdings::read(&current)?;
    let in_scope = |catalog: &[CatalogEntry]| -> Vec<usize> {
        (0..catalog.len())
            .filter(|i| options.scope.covers(catalog[*i].tier))
            .collect()
    };
    let whole_archive = options.scope.covers_wal();
    let catalog = holdings.full_catalog()?;
    let current_entries: Vec<&CatalogEntry> = in_scope(&catalog).into_iter().map(|i| &catalog[i]).collect();
    let mut checked = check_backups_and_wal(
        &current,
        &holdings,
        &current_entries,
        whole_archive,
        options.jobs,
        progress,
    )?;
    let mut backups_checked = current_entries.len();
    let mut earlier_summaries = Vec::new();
    for earlier in earlier_generations(repo)? {
        let older = Holdings::read(&earlier)?;
        let older_catalog = older.full_catalog()?;
        let entries: Vec<&CatalogEntry> = in_scope(&older_catalog)
            .into_iter()
            .map(|i| &older_catalog[i])
            .collect();
        let found = check_backups_and_wal(&earlier, &older, &entries, whole_archive, options.jobs, progress)?;
        backups_checked += entries.len();
        checked.absorb(found, older.generation.map_or(1, |g| g.generation));
        earlier_summaries.push(summarize(&older, options.now));
    }
    let fresh: Vec<ManifestSummary> = current_entries
        .iter()
        .filter_map(|e| Some(e.manifest.as_ref().ok()?.summary()))
        .collect();
    let fresh: Vec<&ManifestSummary> = fresh.iter().collect();
    checked.alerts.extend(alerts::freshness(
        &fresh,
        options.scope,
        &options.thresholds,
        &options.expected_tiers,
        options.now,
    ));
    if whole_archive {
        checked.alerts.extend(stale_alert(&holdings, server, options));
    }
    let drills = drill::history(&current)?;
    if options.scope != Scope::Wal {
        checked
            .alerts
            .extend(alerts::drill_rules(&fresh, &drills, &options.thresholds, options.now));
    }
    if let Some(slot) = &observed.slot {
        checked
            .alerts
            .extend(alerts::slot_rule(slot, options.thresholds.slot_lag));
    }
    checked.alerts.sort_by_key(|a| (std::cmp::Reverse(a.severity), a.alert));
    let mut repository = summarize_on(&holdings, options.now, server.timeline());
    repository.earlier_generations = earlier_summaries;
    Ok(VerifyReport {
        scope: options.scope,
        status: status_of(&checked.alerts),
        now: options.now,
        duration_seconds: started.elapsed().as_secs_f64(),
        backups_checked,
        wal_files_checked: checked.wal_files,
        read: checked.read,
        gaps: checked.gaps,
        server: server.clone(),
        slot: observed.slot.clone(),
        alerts: checked.alerts,
        repository,
        drills: in_scope_drills(drills.newest_by_tier(), options.scope),
        passed_drills: in_scope_drills(drills.newest_passed_by_tier(), options.scope),
    })
}

/// The alerts the listing alone shows, without reading a stored object: WAL gaps, overdue
/// backups, failed or stale drills; with the gaps. Cheap enough for each view of the status
/// page; `verify` reads and checks everything.
pub fn listing_alerts(
    holdings: &Holdings,
    drills: &drill::DrillHistory,
    thresholds: &Thresholds,
    expected_tiers: &[Tier],
    now: DateTime<Utc>,
) -> (Vec<Gap>, Vec<Alert>) {
    let backups = holdings.backups();
    let gaps = wal_gaps(holdings, &backups, true);
    let mut alerts: Vec<Alert> = gaps.iter().map(|gap| gap_alert(gap, &backups)).collect();
    alerts.extend(alerts::freshness(&backups, Scope::All, thresholds, expected_tiers, now));
    alerts.extend(alerts::drill_rules(&backups, drills, thresholds, now));
    alerts.sort_by_key(|a| (std::cmp::Reverse(a.severity), a.alert));
    (gaps, alerts)
}

/// The drills of the tiers `scope` covers.
fn in_scope_drills(by_tier: std::collections::BTreeMap<Tier, &DrillRecord>, scope: Scope) -> Vec<DrillRecord> {
    by_tier
        .into_iter()
        .filter(|(tier, _)| scope.covers(*tier))
        .map(|(_, d)| d.clone())
        .collect()
}

/// What the integrity checks of some backups (and perhaps the whole archive) found.
struct Checked {
    read: ReadStats,
    wal_files: usize,
    gaps: Vec<Gap>,
    alerts: Vec<Alert>,
}

impl Checked {
    /// Adds what was found in the earlier `generation`: its alerts name it, its gaps stay alerts.
    fn absorb(&mut self, earlier: Checked, generation: u32) {
        self.read.add(&earlier.read);
        self.wal_files += earlier.wal_files;
        self.alerts.extend(earlier.alerts.into_iter().map(|mut alert| {
            alert.subject = format!("generation {generation}: {}", alert.subject);
            alert
        }));
    }
}

/// The integrity of the backups in `entries` (manifest, files, labels, the WAL they need to
/// reach consistency) and, with `whole_archive`, of every WAL file, the archive's continuity and
/// its history files.
fn check_backups_and_wal(
    repo: &Repo,
    holdings: &Holdings,
    entries: &[&CatalogEntry],
    whole_archive: bool,
    jobs: usize,
    progress: &dyn Progress,
) -> Result<Checked> {
    let backups: Vec<ManifestSummary> = entries
        .iter()
        .filter_map(|e| Some(e.manifest.as_ref().ok()?.summary()))
        .collect();
    let backups: Vec<&ManifestSummary> = backups.iter().collect();
    let objects = objects_to_read(holdings, entries, whole_archive);
    let (mut read, mut findings) = objects::read_all(repo, &objects, holdings.info.as_ref(), jobs, progress)?;
    let deduplicated: Vec<(&str, &Manifest)> = entries
        .iter()
        .filter_map(|e| Some((e.id.as_str(), e.manifest.as_ref().ok()?)))
        .filter(|(_, m)| m.files.iter().any(|f| f.is_deduplicated()))
        .collect();
    if !deduplicated.is_empty() {
        let (shared_read, shared_findings) = shared::check_shared(repo, &deduplicated, progress)?;
        read.add(&shared_read);
        findings.extend(shared_findings);
    }
    let mut alerts = metadata_alerts(holdings, entries, whole_archive);
    alerts.extend(stray_objects(repo, entries)?);
    alerts.extend(
        findings
            .into_iter()
            .map(|f| Alert::new(AlertName::BackupVerificationFailed, f.subject, f.reason)),
    );
    let gaps = wal_gaps(holdings, &backups, whole_archive);
    alerts.extend(gaps.iter().map(|gap| gap_alert(gap, &holdings.backups())));
    if whole_archive {
        alerts.extend(history_alerts(holdings));
    }
    Ok(Checked {
        read,
        wal_files: objects.iter().filter(|o| matches!(o, StoredObject::Wal { .. })).count(),
        gaps,
        alerts,
    })
}

fn status_of(alerts: &[Alert]) -> Status {
    match alerts.iter().map(|a| a.severity).max() {
        None => Status::Ok,
        Some(Severity::Warning) => Status::Warning,
        Some(Severity::Critical) => Status::Critical,
    }
}

/// Every file and label of the backups (in the directory they lie in, whatever their manifest
/// claims), and the WAL: all of it, or what the backups need to reach consistency.
fn objects_to_read<'a>(
    holdings: &Holdings,
    entries: &[&'a CatalogEntry],
    whole_archive: bool,
) -> Vec<StoredObject<'a>> {
    let mut objects = Vec::new();
    let backups: Vec<(String, &Manifest)> = entries
        .iter()
        .filter_map(|e| Some((backup_dir(e.tier.name(), &e.id), e.manifest.as_ref().ok()?)))
        .collect();
    for (dir, m) in &backups {
        objects.extend(m.pieces().into_iter().map(|piece| StoredObject::BackupFile {
            dir: dir.clone(),
            piece,
        }));
        let labels = if m.tablespaces.is_empty() {
            &["backup_label"][..]
        } else {
            &["backup_label", "tablespace_map"][..]
        };
        objects.extend(labels.iter().map(|name| StoredObject::Label { dir: dir.clone(), name }));
    }
    let manifests: Vec<&Manifest> = backups.iter().map(|(_, m)| *m).collect();
    let needed = consistency_wal(holdings, &manifests);
    objects.extend(
        holdings
            .wal
            .iter()
            .filter(|f| whole_archive || needed.contains(&f.name))
            .map(|f| StoredObject::Wal {
                name: f.name,
                stored_bytes: f.stored_bytes,
            }),
    );
    objects
}

/// The segments the backups need to reach consistency.
fn consistency_wal(holdings: &Holdings, backups: &[&Manifest]) -> HashSet<WalFileName> {
    let Some(size) = holdings.segment_size() else {
        return HashSet::new();
    };
    backups
        .iter()
        .flat_map(|m| {
            m.consistency_segments().filter_map(move |segno| {
                let name = Segment {
                    timeline: m.timeline,
                    segno,
                }
                .file_name(size);
                WalFileName::parse(&name).ok()
            })
        })
        .collect()
}

/// The repository's metadata, the manifests of `entries`, and with the whole archive the
/// restore point catalog.
fn metadata_alerts(holdings: &Holdings, entries: &[&CatalogEntry], whole_archive: bool) -> Vec<Alert> {
    let failed = |subject: String, reason: String| Alert::new(AlertName::BackupVerificationFailed, subject, reason);
    let mut alerts = Vec::new();
    if holdings.info.is_none() && (!holdings.wal.is_empty() || !holdings.catalog.is_empty()) {
        alerts.push(failed(
            "repo.json".into(),
            format!(
                "repository {} holds WAL or backups but no repo.json, so nothing can be matched to its cluster: \
                 restore repo.json from a copy",
                holdings.location
            ),
        ));
    }
    for entry in entries {
        let dir = backup_dir(entry.tier.name(), &entry.id);
        if let Some(damage) = &entry.damage {
            alerts.push(failed(format!("{dir}{MANIFEST}"), damage.clone()));
        }
        match &entry.manifest {
            Err(e) => alerts.push(failed(format!("{dir}backup.manifest"), e.to_string())),
            Ok(m) => {
                alerts.extend(bad_page_alerts(m, &dir));
                let problems = consistency::manifest_problems(m, entry.tier, &entry.id, holdings.info.as_ref());
                if !problems.is_empty() {
                    alerts.push(failed(
                        format!("{dir}backup.manifest"),
                        format!("inconsistent manifest: {}", problems.join("; ")),
                    ));
                }
            }
        }
    }
    if let (true, Err(e)) = (whole_archive, &holdings.restore_points) {
        alerts.push(failed("restore_points/".into(), e.to_string()));
    }
    if whole_archive {
        alerts.extend(
            holdings
                .unreadable_restore_points
                .iter()
                .map(|e| failed("restore_points/".into(), e.to_string())),
        );
    }
    alerts
}

/// One alert per file whose pages failed their checksum when the backup in `dir` was taken.
fn bad_page_alerts(m: &Manifest, dir: &str) -> Vec<Alert> {
    let Some(pages) = &m.page_checksums else {
        return Vec::new();
    };
    pages
        .bad_files
        .iter()
        .map(|file| {
            Alert::new(
                AlertName::BackupVerificationFailed,
                format!("{dir}files/{}", file.path),
                format!(
                    "page checksum failure in {} when backup {} was taken: {}; the backup holds the damaged pages \
                     as they were, and so does the cluster unless it was repaired since: check the table's data \
                     (pg_amcheck), repair it and take a new backup",
                    file.path,
                    m.id,
                    file.describe()
                ),
            )
        })
        .collect()
}

/// Objects in a backup's directory that its manifest does not name: a file entry removed from
/// the manifest (restore would silently leave the file out), or objects someone added.
fn stray_objects(repo: &Repo, entries: &[&CatalogEntry]) -> Result<Vec<Alert>> {
    let mut alerts = Vec::new();
    for entry in entries {
        let Ok(manifest) = &entry.manifest else { continue };
        let dir = backup_dir(entry.tier.name(), &entry.id);
        let mut expected: HashSet<String> = manifest.pieces().iter().map(|piece| piece.key(&dir)).collect();
        expected.extend(
            [
                "backup_label",
                "tablespace_map",
                MANIFEST,
                MANIFEST_COPY,
                INCOMPLETE_MARKER,
            ]
            .map(|n| format!("{dir}{n}")),
        );
        let mut stray = Vec::new();
        list_objects(repo, &dir, &mut |key| {
            if !expected.contains(&key) {
                stray.push(key);
            }
        })?;
        if !stray.is_empty() {
            alerts.push(Alert::new(
                AlertName::BackupVerificationFailed,
                format!("{dir}{MANIFEST}"),
                format!(
                    "{} object(s) of the backup are not in its manifest, so a restore would leave them out: {}{}. \
                     The manifest may have been edited; restore it from a copy of the repository, or take a new backup",
                    stray.len(),
                    stray.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                    if stray.len() > 5 { ", ..." } else { "" }
                ),
            ));
        }
    }
    Ok(alerts)
}

/// Calls `found` with the key of every object under `dir`.
fn list_objects(repo: &Repo, dir: &str, found: &mut dyn FnMut(String)) -> Result<()> {
    for name in repo.storage().list(dir)? {
        let key = format!("{dir}{name}");
        if name.ends_with('/') {
            list_objects(repo, &key, found)?;
        } else {
            found(key);
        }
    }
    Ok(())
}

/// Missing WAL: in the whole archive (from the oldest retained backup on), or what `backups`
/// need to reach consistency.
fn wal_gaps(holdings: &Holdings, backups: &[&ManifestSummary], whole_archive: bool) -> Vec<Gap> {
    on_archive(holdings, |archive| {
        let spans = if whole_archive {
            continuity::archive_spans(archive, &holdings.backups())
        } else {
            continuity::backup_spans(backups)
        };
        continuity::find_gaps(archive, &spans)
    })
    .unwrap_or_default()
}

/// Runs `f` on the shape of the archive, once the repository knows its segment size.
fn on_archive<T>(holdings: &Holdings, f: impl FnOnce(&Archive) -> T) -> Option<T> {
    let segments: BTreeSet<(TimelineId, u64)> = holdings.segments().into_keys().collect();
    let histories = holdings.readable_histories();
    Some(f(&Archive {
        size: holdings.segment_size()?,
        segments: &segments,
        histories: &histories,
    }))
}

fn gap_alert(gap: &Gap, backups: &[&ManifestSummary]) -> Alert {
    let unrestorable: Vec<&str> = backups
        .iter()
        .filter(|m| {
            let range = m.consistency_segments();
            m.timeline == gap.timeline && *range.start() <= gap.last_segno && gap.first_segno <= *range.end()
        })
        .map(|m| m.id.as_str())
        .collect();
    let consequence = if unrestorable.is_empty() {
        format!("recovery from the backups before them stops at {}", gap.first)
    } else {
        format!(
            "backup {} cannot reach consistency without them",
            unrestorable.join(", ")
        )
    };
    let subject = if gap.segments == 1 {
        gap.first.clone()
    } else {
        format!("{}..{}", gap.first, gap.last)
    };
    Alert::new(
        AlertName::WalArchiveGap,
        subject.clone(),
        format!(
            "{} WAL segment(s) missing on timeline {}: {subject}; {consequence}. Archive them from the server's \
             pg_wal if it still has them, and take a new backup",
            gap.segments, gap.timeline
        ),
    )
}

fn history_alerts(holdings: &Holdings) -> Vec<Alert> {
    let listed: BTreeSet<TimelineId> = holdings.histories.keys().copied().collect();
    on_archive(holdings, |archive| {
        continuity::history_problems(archive, &listed, &holdings.backups())
    })
    .unwrap_or_default()
    .into_iter()
    .map(|problem| match problem {
        HistoryProblem::Missing { file, reason } => Alert::new(AlertName::WalArchiveGap, file, reason),
        HistoryProblem::Broken { file, reason } => Alert::new(
            AlertName::BackupVerificationFailed,
            file,
            format!("the timeline history is broken: {reason}"),
        ),
    })
    .collect()
}

/// WalArchiveStale, judged on the server's own timeline path: the segments another server
/// archived on an older timeline after it ended say nothing about this server's archiving.
fn stale_alert(holdings: &Holdings, server: &ServerView, options: &VerifyOptions) -> Option<Alert> {
    let size = holdings.segment_size()?;
    let newest = holdings.newest_segment(Some(server.timeline()?));
    let name = newest.map(|(segment, _)| segment.file_name(size));
    let newest = newest
        .zip(name.as_deref())
        .map(|((segment, archived_at), name)| NewestSegment {
            name,
            segno: segment.segno,
            archived_at,
        });
    alerts::staleness(newest, server, size, options.thresholds.wal_stale, options.now)
}
