//! Physical base backups in hourly, daily and weekly tiers: taking them (the low-level backup API
//! on one held connection, pitr copying the files itself in parallel), the catalog of finished
//! backups, restoring their files, and retention with WAL expiry.
//!
//! A backup is written as objects under `<tier>/<id>/` and exists only once its manifest is
//! written, last: an interrupted backup has no manifest, is never listed, and is deleted by the
//! next backup (which holds the repository's backup lock). Object storage has no rename, so the
//! manifest is the commit point rather than a directory rename.
//!
//! A deduplicated backup (`--dedup`, manifest format 7) stores its data directory files in packs
//! shared with the other deduplicated backups instead ([`packs`]); they are durable before its
//! manifest is written, and expire deletes them only once no backup references them ([`sweep`]).
//! An hourly deduplicated backup does not read a file that the previous one of the same data
//! directory trusted and whose stat is still the recorded one (the skip rule: `may_skip` here, then
//! each file in `copy`).

mod catalog;
mod configuration;
mod copy;
mod expire;
pub mod manifest;
pub mod packs;
mod restore;
mod source;
pub mod sweep;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};

pub use catalog::{
    list, load_catalog, load_summaries, read_backup, scan_catalog, scan_summaries, BackupStatus, CatalogEntry, Listing,
    TimelineRange, UnreadableBackup,
};
pub use configuration::{DebianCluster, OwnConfiguration};
pub use expire::{expire, plan_expire, ExpirePlan, Retention};
pub(crate) use restore::with_verified;
pub use restore::{restore, RestoreOptions, RestoreSummary};

use self::copy::Packed;
use self::manifest::{Configuration, FileEntry, Manifest, PageChecksums, MANIFEST_VERSION, OBJECT_FILES_VERSION};
use self::packs::{Packs, PreviousGroups};
use self::source::SourceTree;
use crate::codec::Codec;
use crate::control;
use crate::crash_point;
use crate::error::{Error, Result};
use crate::pg::{ArchiverStatus, BackupStop, Server};
use crate::progress::Progress;
use crate::repo::{backup_dir, Cluster, Repo, INCOMPLETE_MARKER, MANIFEST, MANIFEST_COPY};
use crate::restore_point::{wait_until_archived, Waited};
use crate::wal::{Lsn, Segment, SegmentSize, TimelineId, WalFileName};

/// A backup tier, after the reference runbook: hourly (24 kept), daily (7), weekly (4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Every hour.
    Hourly,
    /// Every day at midnight.
    Daily,
    /// Every Sunday.
    Weekly,
}

impl Tier {
    /// All tiers, in listing order.
    pub const ALL: [Tier; 3] = [Tier::Hourly, Tier::Daily, Tier::Weekly];

    /// The tier's name, which is also its directory in the repository.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Hourly => "hourly",
            Tier::Daily => "daily",
            Tier::Weekly => "weekly",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Tier {
    type Err = Error;

    fn from_str(s: &str) -> Result<Tier> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| Error::InvalidInput(format!("unknown tier '{s}': use hourly, daily or weekly")))
    }
}

/// How to take a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The tier.
    pub tier: Tier,
    /// The deployment's name, the first part of the id.
    pub name: String,
    /// The data directory; `None` asks the server (`data_directory`).
    pub pgdata: Option<std::path::PathBuf>,
    /// Ask for an immediate checkpoint.
    pub fast: bool,
    /// Files copied at once.
    pub jobs: usize,
    /// How files are compressed.
    pub codec: Codec,
    /// Store the files deduplicated, in packs (manifest format 7), instead of as objects of the
    /// backup's directory.
    pub deduplicate: bool,
    /// With `deduplicate`: read every file, even in the hourly tier, where the skip rule would
    /// take the files whose stat did not change from the previous backup unread.
    pub read_all: bool,
}

/// What a finished backup reports.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    /// The backup's manifest, without the file list.
    #[serde(flatten)]
    pub backup: BackupStatus,
    /// Files copied.
    pub file_count: usize,
    /// Incomplete backups of earlier runs that were deleted.
    pub cleaned_up: Vec<String>,
    /// The configuration files stored with the backup because they lie outside the data
    /// directory (postgresql.conf first); empty when the data directory holds the configuration.
    pub configuration_files: Vec<String>,
    /// What checking the data pages' checksums found, as the manifest records it.
    pub page_checksums: PageChecksums,
    /// Files taken from the previous deduplicated backup without reading them, because the skip
    /// rule found them unchanged (their size, mtime, ctime, inode and device).
    pub skipped_files: usize,
    /// Their bytes: counted in `original_bytes`, but not read.
    pub skipped_bytes: u64,
}

/// Takes a base backup of the server behind `server` into `repo`, whose current generation must
/// be the server's cluster.
pub async fn take(
    repo: &Repo,
    server: &Server,
    options: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupSummary> {
    let started = Instant::now();
    let (repo, pgdata, archiving) = preflight(repo, server, options, progress).await?;
    let repo = &repo;
    let configuration = configuration::find(server, &pgdata, progress).await?;
    let _lock = lock_backups(repo)?;
    let cleaned_up = catalog::delete_incomplete(repo)?;
    let tree = source::scan(&pgdata)?;
    let source = std::fs::canonicalize(&pgdata)
        .map_err(Error::io("inspect", &pgdata))?
        .display()
        .to_string();
    check_space(repo, &tree)?;
    let id = unused_id(repo, options).await?;
    let dir = backup_dir(options.tier.name(), &id);
    // Until the manifest is written, the marker says this directory is no backup (yet).
    repo.storage().put_if_absent(
        &format!("{dir}{INCOMPLETE_MARKER}"),
        format!(
            "pitr backup {id}, started {} by process {}\n",
            Utc::now().to_rfc3339(),
            std::process::id()
        )
        .as_bytes(),
    )?;
    crash_point::reached("backup:started");
    let configuration = configuration
        .map(|found| configuration::store(repo, &dir, found, &options.codec))
        .transpose()?;

    let layout = server.page_layout().await?;
    let start_time = Utc::now();
    let start_lsn = server.backup_start(&format!("pitr {id}"), options.fast).await?;
    let pages = page_check(layout, start_lsn, progress);
    let packs = Packs::new(repo, &id, options.codec);
    let previous = match options.deduplicate {
        true => {
            let before = previous_manifest(repo, &info_of(repo)?)?;
            let groups = before.as_ref().map_or_else(PreviousGroups::default, PreviousGroups::of);
            match before.filter(|before| may_skip(options, before, &source, Utc::now())) {
                Some(before) => groups.trusting(&before),
                None => groups,
            }
            .avoiding(sweep::condemned_packs(repo)?)
        }
        false => PreviousGroups::default(),
    };
    let packed = options.deduplicate.then_some(Packed {
        packs: &packs,
        previous: &previous,
    });
    let copy = tokio::task::block_in_place(|| {
        let how = copy::Copying {
            jobs: options.jobs,
            codec: &options.codec,
            pages,
            packed: packed.as_ref(),
        };
        copy::copy_files(repo, &dir, &tree, &how, progress).and_then(|copied| packs.finish().map(|_| copied))
    });
    // Stop the backup even when the copy failed, so the server does not stay in backup mode.
    // When pitr archives into this repository, pitr itself watches for the last segment (every
    // 50 ms) instead of PostgreSQL's once-a-second check.
    let archiver = server.archiver_status().await;
    let stop = server.backup_stop(archiving != Archiving::IntoThisRepo).await;
    let (copied, stop, archiver) = (copy?, stop?, archiver?);
    warn_bad_pages(&copied.pages, progress);
    crash_point::reached("backup:stopped");
    let stop_time = Utc::now();
    let next_xid = server.next_xid().await?;
    write_labels(repo, &dir, &stop)?;

    let info = info_of(repo)?;
    let manifest = build_manifest(ManifestParts {
        id,
        options,
        info,
        start_time,
        stop_time,
        start_lsn,
        stop: &stop,
        next_xid,
        tree: &tree,
        files: copied.files,
        page_checksums: copied.pages,
        configuration,
        duration_seconds: started.elapsed().as_secs_f64(),
        pgdata: source,
    })?;
    if archiving == Archiving::IntoThisRepo {
        wait_for_wal(repo, server, &manifest.last_wal, &archiver, progress).await?;
    }
    if options.deduplicate && started.elapsed() > sweep::grace() {
        return Err(Error::Refused(format!(
            "the backup took {} s, longer than the {} s after which expire may delete packs it found unreferenced at              its start: it is not committed; take it again (and raise PITR_PACK_GRACE_SECONDS if backups take that long)",
            started.elapsed().as_secs(),
            sweep::grace().as_secs()
        )));
    }
    // The files were stored without an fsync each: they become durable here, together, before
    // the manifest that commits them.
    repo.storage().sync_all_under(&dir)?;
    crash_point::reached("backup:synced");
    // The copy first: whenever the manifest exists, so does its copy.
    let stored = manifest.to_bytes();
    repo.storage()
        .put_if_absent(&format!("{dir}{MANIFEST_COPY}"), &stored)?;
    crash_point::reached("backup:manifest-copied");
    repo.storage().put_if_absent(&format!("{dir}{MANIFEST}"), &stored)?;
    crash_point::reached("backup:committed");
    repo.storage().delete(&format!("{dir}{INCOMPLETE_MARKER}"))?;
    crate::names::record_beside("the backup", repo, server, progress).await;
    Ok(BackupSummary {
        configuration_files: manifest
            .configuration
            .iter()
            .flat_map(|c| c.files.iter().map(|f| f.path.clone()))
            .collect(),
        file_count: manifest.files.len(),
        page_checksums: manifest.page_checksums.clone().unwrap_or_default(),
        skipped_files: copied.skipped_files,
        skipped_bytes: copied.skipped_bytes,
        backup: BackupStatus::of(
            &manifest.summary(),
            repo.generation()?.map_or(1, |g| g.generation),
            None,
        ),
        cleaned_up,
    })
}

/// The cluster `repo` is pinned to.
fn info_of(repo: &Repo) -> Result<Cluster> {
    Ok(repo
        .info()?
        .expect("preflight claimed the repository and pinned its generation"))
}

/// The manifest of the newest deduplicated backup of the cluster, which a deduplicated backup
/// shares what did not change with.
fn previous_manifest(repo: &Repo, cluster: &Cluster) -> Result<Option<Manifest>> {
    let newest = load_summaries(repo)?
        .into_iter()
        .filter(|m| m.is_deduplicated() && m.system_identifier == cluster.system_identifier)
        .max_by_key(|m| m.stop_time);
    let Some(newest) = newest else {
        return Ok(None);
    };
    Ok(read_backup(repo, newest.tier, &newest.id)?.and_then(|entry| entry.manifest.ok()))
}

/// Whether a deduplicated backup may take files unread from `previous` (the skip rule of
/// bench/dedup.md section 8.3, the conditions that hold for the whole backup; [`copy`] checks
/// each file's): only in the hourly tier and without `--read-all`, so daily and weekly backups
/// read and hash every file, which bounds any error of the rule to a day and checks the pages
/// of files that never change; only from a backup of the same data directory (`pgdata`,
/// canonical; the system identifier is already the same); and only while the clock is not
/// behind `previous`'s stop, since a clock set back could give a new write an old ctime.
fn may_skip(options: &BackupOptions, previous: &Manifest, pgdata: &str, now: chrono::DateTime<Utc>) -> bool {
    options.tier == Tier::Hourly
        && !options.read_all
        && previous.pgdata.as_deref() == Some(pgdata)
        && now >= previous.stop_time
}

/// The repository's backup lock: one backup, expire, upgrade-repo or sync into it at a time, so that none
/// deletes what another is writing, and a new generation never starts under a running backup.
pub(crate) fn lock_backups(repo: &Repo) -> Result<crate::storage::LockGuard> {
    repo.storage().try_lock("backup")?.ok_or_else(|| {
        // A local lock dies with its holder; a lease in an object store outlives a holder that
        // crashed or lost the store, until it runs out.
        let lease = if repo.storage().local_root().is_none() {
            " (or one that stopped without releasing it, for example after losing the store: its lease runs \
             out within minutes, then the next backup takes the lock over)"
        } else {
            ""
        };
        Error::Refused(format!(
            "another pitr backup is running on repository {}, or an expire, upgrade-repo or sync into it (it holds {}); \
             wait for it to finish{lease}",
            repo.location(),
            repo.storage().describe("locks/backup.lock")
        ))
    })
}

/// Everything that must hold before a backup starts; returns the repository pinned to the
/// server's generation, and the data directory.
async fn preflight(
    repo: &Repo,
    server: &Server,
    options: &BackupOptions,
    progress: &dyn Progress,
) -> Result<(Repo, std::path::PathBuf, Archiving)> {
    let refuse = |reason: String| Error::Server {
        target: server.target().to_string(),
        reason,
    };
    if server.is_in_recovery().await? {
        return Err(refuse(
            "is a standby or in recovery: take backups from the primary".into(),
        ));
    }
    if !server.may_run_backups().await? {
        return Err(refuse(
            "the role may not run the backup functions: connect as a superuser, or GRANT EXECUTE on \
             pg_backup_start and pg_backup_stop (pg_start_backup/pg_stop_backup before PostgreSQL 15) and \
             pg_read_all_settings (or pass --pgdata)"
                .into(),
        ));
    }
    let archiving = check_archive_settings(repo, server, progress).await?;

    let found = cluster_identity(server).await?;
    check_current_cluster(repo, found, "back up into")?;
    let pgdata = match &options.pgdata {
        Some(dir) => dir.clone(),
        None => server.setting("data_directory").await?.into(),
    };
    let identity = control::read_identity(&pgdata)?;
    if identity.system_identifier != found.system_identifier {
        return Err(Error::Refused(format!(
            "data directory {} is the cluster {}, but the server is the cluster {}: pass the server's own --pgdata",
            pgdata.display(),
            identity.system_identifier,
            found.system_identifier
        )));
    }
    // Only now, with every check passed, may a first backup bind an empty repository.
    let pinned = bind(repo, found, "back up into")?;
    Ok((pinned, pgdata, archiving))
}

/// `repo` pinned to the generation of the cluster `found`: an empty repository is claimed for
/// it, one of another current cluster refused (`doing` says what was refused, "back up into").
pub(crate) fn bind(repo: &Repo, found: Cluster, doing: &str) -> Result<Repo> {
    check_current_cluster(repo, found, doing)?;
    repo.claim(found)?;
    let pinned = repo.pin()?;
    check_current_cluster(&pinned, found, doing)?;
    Ok(pinned)
}

/// The cluster behind `server`, as a repository records it.
pub async fn cluster_identity(server: &Server) -> Result<Cluster> {
    Ok(Cluster {
        pg_version: server.major_version().major(),
        system_identifier: server.system_identifier().await?,
        wal_segment_size: segment_size(server).await?.bytes(),
    })
}

/// Where the server's archive_command puts WAL, as far as pitr can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Archiving {
    /// `pitr --repo <this repository> archive-push`.
    IntoThisRepo,
    /// Another tool, or pitr without --repo: only PostgreSQL knows when WAL is archived.
    Elsewhere,
}

/// Waits until the segment `name` is in the repository, warning every minute meanwhile: a
/// backup is not complete before the WAL that makes it consistent is archived. A failing
/// archive_command ends the wait with its reason.
async fn wait_for_wal(
    repo: &Repo,
    server: &Server,
    name: &str,
    since: &ArchiverStatus,
    progress: &dyn Progress,
) -> Result<()> {
    let name = WalFileName::parse(name)?;
    let started = Instant::now();
    loop {
        match wait_until_archived(repo, server, &name, Duration::from_secs(60), since).await? {
            Waited::Archived => return Ok(()),
            Waited::TimedOut => progress.warn(&format!(
                "still waiting for {name} to be archived into {} ({} s): check archive_command and pg_stat_archiver",
                repo.location(),
                started.elapsed().as_secs()
            )),
            Waited::Failing(reason) => {
                return Err(Error::Refused(format!(
                    "{reason}; the backup is not finished (it has no manifest)"
                )))
            }
        }
    }
}

/// The generation `repo` acts on (the current one, unless pinned) must be `found`: same system
/// identifier, version and segment size. A repository without repo.json passes (it is claimed).
fn check_current_cluster(repo: &Repo, found: Cluster, doing: &str) -> Result<()> {
    let Some(generation) = repo.generation()? else {
        return Ok(());
    };
    if generation.cluster() == found {
        return Ok(());
    }
    let generations = repo.generations()?.expect("a generation was read");
    Err(Error::Refused(format!(
        "refusing to {doing} repository {}: {}",
        repo.location(),
        generations.refusal(found, &repo.location())
    )))
}

/// The server must archive its WAL into this repository: wal_level above minimal, archive_mode
/// on, and an archive_command that calls pitr with this repository (another tool only warns).
pub(crate) async fn check_archive_settings(repo: &Repo, server: &Server, progress: &dyn Progress) -> Result<Archiving> {
    let refuse = |reason: String| Error::Server {
        target: server.target().to_string(),
        reason,
    };
    if server.setting("wal_level").await? == "minimal" {
        return Err(refuse(
            "wal_level is minimal: set wal_level = replica and restart".into(),
        ));
    }
    if server.setting("archive_mode").await? == "off" {
        return Err(refuse(
            "archive_mode is off: without archived WAL a backup cannot be restored; set archive_mode = on, \
             archive_command = 'pitr --repo ... archive-push %p' and restart"
                .into(),
        ));
    }
    check_archive_command(repo, &server.setting("archive_command").await?, progress).map_err(refuse)
}

/// The archive_command must call pitr with this repository: a backup is useless without its WAL.
fn check_archive_command(
    repo: &Repo,
    command: &str,
    progress: &dyn Progress,
) -> std::result::Result<Archiving, String> {
    if command.trim().is_empty() || command == "(disabled)" {
        return Err("archive_command is not set: set archive_command = 'pitr --repo ... archive-push %p'".into());
    }
    let repo_arg = match pitr_archive_repo(command) {
        PitrArchiving::NotPitr => {
            progress.warn(&format!(
                "archive_command does not call pitr ({command}); backups need their WAL in {} to be restorable",
                repo.location()
            ));
            return Ok(Archiving::Elsewhere);
        }
        PitrArchiving::WithoutRepo => {
            progress.warn("archive_command calls pitr without --repo; make sure its config names this repository");
            return Ok(Archiving::Elsewhere);
        }
        PitrArchiving::Into(repo_arg) => repo_arg,
    };
    if repo.is_named_by(&repo_arg) {
        Ok(Archiving::IntoThisRepo)
    } else {
        Err(format!(
            "archive_command archives into {repo_arg}, not into this repository {}: the backup's WAL would be \
             elsewhere; use the same --repo for both",
            repo.location()
        ))
    }
}

/// What an archive_command says about pitr, read from its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PitrArchiving {
    /// It does not run `pitr ... archive-push`.
    NotPitr,
    /// It runs `pitr archive-push` without `--repo` (the config file names the repository).
    WithoutRepo,
    /// It runs `pitr --repo <this> archive-push`.
    Into(String),
}

/// Whether `command` (an archive_command) runs `pitr archive-push`, and with which `--repo`.
pub(crate) fn pitr_archive_repo(command: &str) -> PitrArchiving {
    let words: Vec<&str> = command
        .split_whitespace()
        .map(|w| w.trim_matches(['\'', '"']))
        .collect();
    let calls_pitr = words.iter().any(|w| w.rsplit('/').next() == Some("pitr")) && words.contains(&"archive-push");
    if !calls_pitr {
        return PitrArchiving::NotPitr;
    }
    let repo_arg = words
        .windows(2)
        .find(|w| w[0] == "--repo")
        .map(|w| w[1].to_string())
        .or_else(|| {
            words
                .iter()
                .find_map(|w| w.strip_prefix("--repo="))
                .map(|v| v.trim_matches(['\'', '"']).to_string())
        });
    repo_arg.map_or(PitrArchiving::WithoutRepo, PitrArchiving::Into)
}

/// The server's WAL segment size.
pub(crate) async fn segment_size(server: &Server) -> Result<SegmentSize> {
    // SHOW gives "16MB"; the GUC in bytes comes from pg_settings.
    let text = server.setting("wal_segment_size").await?;
    let bytes = text
        .strip_suffix("MB")
        .and_then(|mb| mb.parse::<u32>().ok())
        .map(|mb| mb << 20)
        .or_else(|| {
            text.strip_suffix("GB")
                .and_then(|gb| gb.parse::<u32>().ok())
                .map(|gb| gb << 30)
        });
    bytes.and_then(SegmentSize::new).ok_or_else(|| Error::Server {
        target: server.target().to_string(),
        reason: format!("unexpected wal_segment_size '{text}'"),
    })
}

/// Refuses when the repository's disk cannot hold the estimated size of the backup.
fn check_space(repo: &Repo, tree: &SourceTree) -> Result<()> {
    let Some(available) = repo.storage().available_bytes()? else {
        return Ok(());
    };
    let newest = load_summaries(repo)?.into_iter().max_by_key(|m| m.stop_time);
    let ratio = newest
        .filter(|m| m.original_bytes > 0)
        .map_or(1.0, |m| m.stored_bytes as f64 / m.original_bytes as f64);
    let estimate = (tree.bytes() as f64 * ratio) as u64;
    if estimate > available {
        return Err(Error::Refused(format!(
            "repository {} has {} MiB free, the backup needs about {} MiB; free space or expire old backups",
            repo.location(),
            available >> 20,
            estimate >> 20
        )));
    }
    Ok(())
}

/// `<name>_<tier>_<YYYYMMDD_HHMMSS>`, waiting for the next second if that id is taken.
async fn unused_id(repo: &Repo, options: &BackupOptions) -> Result<String> {
    loop {
        let id = format!(
            "{}_{}_{}",
            options.name,
            options.tier,
            Utc::now().format("%Y%m%d_%H%M%S")
        );
        if repo.storage().list(&backup_dir(options.tier.name(), &id))?.is_empty() {
            return Ok(id);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Stores backup_label, and tablespace_map when there are tablespaces.
fn write_labels(repo: &Repo, dir: &str, stop: &BackupStop) -> Result<()> {
    let codec = Codec::default();
    repo.storage()
        .put_if_absent(&format!("{dir}backup_label"), &codec.encode(stop.label_file.as_bytes()))?;
    if !stop.tablespace_map.is_empty() {
        repo.storage().put_if_absent(
            &format!("{dir}tablespace_map"),
            &codec.encode(stop.tablespace_map.as_bytes()),
        )?;
    }
    Ok(())
}

struct ManifestParts<'a> {
    id: String,
    options: &'a BackupOptions,
    info: Cluster,
    start_time: chrono::DateTime<Utc>,
    stop_time: chrono::DateTime<Utc>,
    start_lsn: Lsn,
    stop: &'a BackupStop,
    next_xid: u64,
    tree: &'a SourceTree,
    files: Vec<FileEntry>,
    page_checksums: PageChecksums,
    configuration: Option<Configuration>,
    duration_seconds: f64,
    /// The data directory, canonical: recorded by a deduplicated backup only.
    pgdata: String,
}

fn build_manifest(parts: ManifestParts) -> Result<Manifest> {
    let timeline = label_timeline(&parts.stop.label_file)?;
    let size = SegmentSize::new(parts.info.wal_segment_size).expect("recorded sizes are valid");
    let name = |segno| Segment { timeline, segno }.file_name(size);
    let deduplicated = parts.files.iter().any(FileEntry::is_deduplicated);
    Ok(Manifest {
        format_version: if deduplicated {
            MANIFEST_VERSION
        } else {
            OBJECT_FILES_VERSION
        },
        id: parts.id,
        tier: parts.options.tier,
        start_time: parts.start_time,
        stop_time: parts.stop_time,
        start_lsn: parts.start_lsn,
        stop_lsn: parts.stop.lsn,
        timeline,
        system_identifier: parts.info.system_identifier,
        pg_version: parts.info.pg_version,
        wal_segment_size: parts.info.wal_segment_size,
        first_wal: name(size.segment_of(parts.start_lsn)),
        last_wal: name(size.segment_before(parts.stop.lsn)),
        next_xid: Some(parts.next_xid),
        duration_seconds: parts.duration_seconds,
        original_bytes: parts.files.iter().map(|f| f.size).sum(),
        stored_bytes: parts.files.iter().map(|f| f.stored_size).sum(),
        tablespaces: parts.tree.tablespaces.clone(),
        directories: parts.tree.directories.clone(),
        files: parts.files,
        configuration: parts.configuration,
        page_checksums: Some(parts.page_checksums),
        // A format-6 manifest stays what a pitr of format 6 reads (it denies unknown fields).
        pgdata: deduplicated.then_some(parts.pgdata),
    })
}

/// How the copy checks pages, from the server's (`data_checksums`, `block_size`,
/// `segment_size` in pages): not at all without data checksums, nor with pages of another size
/// than 8 KiB (said as a warning).
fn page_check(layout: (bool, u32, u32), start: Lsn, progress: &dyn Progress) -> Option<copy::PageCheck> {
    let (checksums, block_size, blocks_per_segment) = layout;
    if !checksums {
        return None;
    }
    if block_size as usize != crate::pg::page::BLOCK_SIZE {
        progress.warn(&format!(
            "the cluster has data checksums but {block_size}-byte pages: pitr checks 8192-byte pages only, so this \
             backup does not check them"
        ));
        return None;
    }
    Some(copy::PageCheck {
        start,
        blocks_per_segment,
    })
}

/// A warning for each file with pages that failed their checksum: the backup completes (the
/// damage is the cluster's, and a backup of the rest is worth more than none) and records them.
fn warn_bad_pages(pages: &PageChecksums, progress: &dyn Progress) {
    for file in &pages.bad_files {
        progress.warn(&format!(
            "page checksum failure in {}: {}; the backup copies the file as it is and records the pages in its \
             manifest: check the cluster (the table's data, pg_amcheck) and repair it",
            file.path,
            file.describe()
        ));
    }
}

/// The `START TIMELINE:` line of a backup label.
fn label_timeline(label: &str) -> Result<TimelineId> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE: "))
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| Error::Refused(format!("the backup label has no START TIMELINE line: {label}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;

    #[test]
    fn tiers_parse_and_print() {
        for tier in Tier::ALL {
            assert_eq!(tier.name().parse::<Tier>().unwrap(), tier);
        }
        assert!("monthly".parse::<Tier>().is_err());
    }

    #[test]
    fn the_label_gives_the_timeline() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 3\n";
        assert_eq!(label_timeline(label).unwrap(), 3);
        assert!(label_timeline("LABEL: x\n").is_err());
    }

    #[test]
    fn only_an_hourly_backup_of_the_same_data_directory_with_the_clock_not_set_back_may_skip() {
        let stop = chrono::DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .to_utc();
        let mut previous = Manifest::for_test("b", Tier::Hourly, 1, 2..=2, stop);
        previous.pgdata = Some("/var/lib/postgresql/15/main".into());
        let options = |tier, read_all| BackupOptions {
            tier,
            name: "main".into(),
            pgdata: None,
            fast: true,
            jobs: 1,
            codec: Codec::default(),
            deduplicate: true,
            read_all,
        };
        let later = stop + chrono::Duration::minutes(60);
        let here = "/var/lib/postgresql/15/main";
        assert!(may_skip(&options(Tier::Hourly, false), &previous, here, later));
        assert!(!may_skip(&options(Tier::Daily, false), &previous, here, later));
        assert!(!may_skip(&options(Tier::Weekly, false), &previous, here, later));
        assert!(
            !may_skip(&options(Tier::Hourly, true), &previous, here, later),
            "--read-all"
        );
        assert!(!may_skip(&options(Tier::Hourly, false), &previous, "/srv/other", later));
        assert!(
            !may_skip(
                &options(Tier::Hourly, false),
                &previous,
                here,
                stop - chrono::Duration::seconds(1)
            ),
            "the clock is behind the previous backup's stop"
        );
        previous.pgdata = None;
        assert!(
            !may_skip(&options(Tier::Hourly, false), &previous, here, later),
            "a manifest that does not say its data directory"
        );
    }

    #[test]
    fn archive_command_must_use_this_repo() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        let here = dir.path().display();
        assert!(check_archive_command(&repo, &format!("/usr/bin/pitr --repo {here} archive-push %p"), &Silent).is_ok());
        assert!(check_archive_command(&repo, &format!("pitr --repo='{here}' archive-push %p"), &Silent).is_ok());
        let err = check_archive_command(&repo, "pitr --repo /elsewhere archive-push %p", &Silent).unwrap_err();
        assert!(err.contains("not into this repository"), "{err}");
        assert!(check_archive_command(&repo, "", &Silent)
            .unwrap_err()
            .contains("not set"));
        assert!(
            check_archive_command(&repo, "cp %p /mnt/archive/%f", &Silent).is_ok(),
            "another tool only warns"
        );
    }
}
