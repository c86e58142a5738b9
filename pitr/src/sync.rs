//! `pitr sync`: copies what one repository holds and another lacks, so that a second,
//! off-site repository is a complete repository of its own (docs/design.md, "A second
//! repository").
//!
//! The work is planned ([`plan`]: what the source holds, what the target lacks), checked
//! ([`SyncPlan::check`]: same cluster, no conflicting object, room) and executed
//! ([`execute`]), holding the target's backup lock, in an order that keeps the target a valid
//! repository at every moment:
//!
//! 1. each generation's WAL marker, then its record (repo.json for the first), as create-repo
//!    and upgrade-repo write them: the target is bound to the source's cluster before any data
//!    is written, and a target bound to another cluster is refused before anything is written;
//! 2. the WAL archive of every generation;
//! 3. each complete backup: the `backup.incomplete` marker, the packs a deduplicated backup needs
//!    that the target lacks (each durable), its files and labels (made durable together), the
//!    manifest's copy, then the manifest, the commit point, and the marker goes;
//! 4. the restore point records.
//!
//! The source is listed in the opposite order (restore points, backups, then WAL), so that
//! the WAL a listed backup or restore point needs was archived before the WAL was listed.
//!
//! Every object is read from the source and checked before it is written: codec objects by
//! their header and content CRC (a backup file's also against its manifest, a segment's page
//! header against its generation's cluster), JSON records by their checksum. It is written
//! create-only and read back; only then is it counted. An object the target holds already is
//! skipped when its bytes are the same (for WAL and restore point records, found by a listing:
//! the same size; `pitr --repo <target> verify` reads everything), and refused when they differ:
//! nothing is ever overwritten. A sync that dies anywhere is resumed by the next run, which
//! copies only what is missing. Nothing is deleted from the target but the leftovers of a sync
//! that died while copying a backup the source no longer holds: the target keeps its own
//! retention (`pitr --repo <target> expire`).
//!
//! A deduplicated backup (format 7) needs packs ([`packs`]): those its group records name, read
//! from the source and checked in the plan. Each is copied once per sync, by the first backup
//! that needs it; before it is written its bytes are checked against every range the planned
//! backups reference in it. A pack that fails keeps every backup that needs it out of the copy
//! (a problem); one the target lists with the same size is taken as copied, with another size it
//! is a conflict.
//!
//! The target's own expire stays safe, by the argument that keeps a backup safe from it
//! (`backup::sweep`): the manifests sync commits reference packs like a backup's. Before the
//! target's packs are listed, its gc records are read, at time R. A backup that references a pack
//! they condemn is not copied this run: reusing the pack could race with the phase 2 that deletes
//! it; once that has run, a later sync copies the pack anew. A deduplicated backup that would
//! commit later than R + G (`sweep::grace`) is not committed. So if a record written at T
//! condemns a pack a copied backup references, the sync had not seen it (R < T), and committed
//! before R + G < T + G, before phase 2 marks: the pack is live there and kept. A pack sync writes
//! is younger than G when its backup commits, so no expire condemned it.
//!
//! Everything read from the source is untrusted: WAL names must parse, backup directories
//! must be backup ids of their tier whose manifest names them and passes
//! [`Manifest::layout_problems`], restore point records must have the catalog's names; what
//! does not is reported as a problem and not copied.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::Utc;
use rayon::prelude::*;
use serde::Serialize;

use crate::backup::manifest::Manifest;
use crate::backup::packs::Hash;
use crate::backup::{sweep, Tier};
use crate::codec::{self, json};
use crate::crash_point;
use crate::drill::{is_record_name as is_drill_record_name, DRILLS_DIR};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::{
    backup_dir, is_names_entry, pack_key, record_key, wal_marker_key, Generation, Generations, Repo, INCOMPLETE_MARKER,
    MANIFEST, MANIFEST_COPY,
};
use crate::restore_point::{RestorePoint, CATALOG_DIR};
use crate::storage::PutOutcome;
use crate::wal::{LongPageHeader, WalFileName};

mod packs;

use packs::{PackPlan, Planned};

/// What [`sync`] did, or with `dry_run` would do.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// The repository copied from.
    pub source: String,
    /// The repository copied into.
    pub target: String,
    /// Nothing was written: the counts are what a sync would copy.
    pub dry_run: bool,
    /// Objects copied (verified in the source, written, read back).
    pub objects_copied: u64,
    /// Objects the target held already, with the same content.
    pub objects_skipped: u64,
    /// Bytes of the objects copied.
    pub bytes_copied: u64,
    /// WAL files among the objects copied.
    pub wal_copied: u64,
    /// Packs of deduplicated backups among the objects copied (each once, however many backups
    /// share it).
    pub packs_copied: u64,
    /// Bytes of the packs copied.
    pub pack_bytes_copied: u64,
    /// The backups copied, by id.
    pub backups_copied: Vec<String>,
    /// Complete backups the target held already.
    pub backups_present: u64,
    /// Restore point records copied.
    pub restore_points_copied: u64,
    /// Maps of relation names copied.
    pub names_copied: u64,
    /// Drill records copied.
    pub drills_copied: u64,
    /// Backup directories a sync that died left in the target, for backups the source no
    /// longer holds: deleted.
    pub leftovers_deleted: Vec<String>,
    /// What in the source could not be copied and why (damaged or unexpected objects); the
    /// rest was copied.
    pub problems: Vec<String>,
    /// How long it took.
    pub seconds: f64,
}

/// How an object is checked before it is copied.
#[derive(Debug, Clone)]
enum Check {
    /// A short text pitr wrote (the WAL directory's marker).
    Text,
    /// A checksummed JSON record: repo.json, a generation record.
    Record,
    /// A restore point record.
    RestorePoint,
    /// A map of relation names.
    Names,
    /// A drill record.
    Drill,
    /// An archived WAL file of this generation.
    Wal(WalFileName, Generation),
    /// A codec object: a backup's label files.
    Object,
    /// One stored object of a backup file, as its manifest describes it.
    Piece {
        raw_len: u64,
        raw_crc: u32,
        stored_size: u64,
    },
}

/// One object to copy.
#[derive(Debug, Clone)]
struct Item {
    key: String,
    /// Its size in the source (from a listing or the manifest; 0 when not known yet).
    size: u64,
    check: Check,
}

/// One complete backup of the source that the target lacks, or holds in part.
#[derive(Debug)]
struct BackupCopy {
    dir: String,
    id: String,
    /// Its files and labels.
    objects: Vec<Item>,
    /// The manifest as stored in the source (checked).
    manifest: Vec<u8>,
    /// Whether the manifest has a copy beside it (format 3 on).
    with_copy: bool,
    /// Whether its files lie in packs (format 7, `pitr backup --dedup`).
    deduplicated: bool,
    /// The packs it references that the target lacks.
    packs: Vec<Hash>,
}

/// What a sync copies: made by [`plan`], checked by [`SyncPlan::check`], carried out by
/// [`execute`].
pub struct SyncPlan {
    source: Repo,
    target: Repo,
    /// Each generation's marker and record, in order.
    records: Vec<Item>,
    wal: Vec<Item>,
    backups: Vec<BackupCopy>,
    /// The packs of the deduplicated backups.
    packs: PackPlan,
    restore_points: Vec<Item>,
    names: Vec<Item>,
    drills: Vec<Item>,
    /// Complete backups whose marker a sync left in the target after their manifest.
    stale_markers: Vec<String>,
    /// Backup directories of a sync that died, whose backup the source no longer holds.
    leftovers: Vec<(String, String)>,
    /// Objects the target holds already.
    present: u64,
    backups_present: u64,
    /// Objects the target holds with other content than the source.
    conflicts: Vec<String>,
    problems: Vec<String>,
}

impl SyncPlan {
    /// Objects and bytes to copy (backups' manifests and their copies, and packs, included).
    pub fn work(&self) -> (u64, u64) {
        let (packs, pack_bytes) = self.pack_work();
        let backups = self.backups.iter().flat_map(|b| {
            let manifests = if b.with_copy { 2 } else { 1 };
            b.objects
                .iter()
                .map(|o| (1, o.size))
                .chain(std::iter::once((manifests, manifests * b.manifest.len() as u64)))
        });
        self.records
            .iter()
            .chain(&self.wal)
            .chain(&self.restore_points)
            .chain(&self.names)
            .chain(&self.drills)
            .map(|o| (1, o.size))
            .chain(backups)
            .chain(std::iter::once((packs, pack_bytes)))
            .fold((0, 0), |(n, bytes), (k, size)| (n + k, bytes + size))
    }

    /// Packs and their bytes to copy.
    fn pack_work(&self) -> (u64, u64) {
        (self.packs.wanted.len() as u64, self.packs.wanted.values().sum())
    }

    /// Refuses a plan that would meet an object of other content in the target, or that does
    /// not fit; nothing was written then.
    pub fn check(&self) -> Result<()> {
        if !self.conflicts.is_empty() {
            return Err(Error::Refused(format!(
                "nothing was copied or overwritten: {}",
                self.conflicts.join("; ")
            )));
        }
        let (_, bytes) = self.work();
        if let Some(available) = self.target.storage().available_bytes()? {
            if available < bytes {
                return Err(Error::Refused(format!(
                    "repository {} has {available} bytes free, the sync needs {bytes}: nothing was copied",
                    self.target.location()
                )));
            }
        }
        Ok(())
    }

    /// The report of the plan before it is carried out: what a sync would copy.
    fn report(&self, dry_run: bool, started: Instant) -> SyncReport {
        let (objects, bytes) = self.work();
        let (packs, pack_bytes) = self.pack_work();
        SyncReport {
            source: self.source.location(),
            target: self.target.location(),
            dry_run,
            objects_copied: if dry_run { objects } else { 0 },
            objects_skipped: self.present + self.packs.present.len() as u64,
            bytes_copied: if dry_run { bytes } else { 0 },
            wal_copied: if dry_run { self.wal.len() as u64 } else { 0 },
            packs_copied: if dry_run { packs } else { 0 },
            pack_bytes_copied: if dry_run { pack_bytes } else { 0 },
            backups_copied: if dry_run {
                self.backups.iter().map(|b| b.id.clone()).collect()
            } else {
                Vec::new()
            },
            backups_present: self.backups_present,
            restore_points_copied: if dry_run { self.restore_points.len() as u64 } else { 0 },
            names_copied: if dry_run { self.names.len() as u64 } else { 0 },
            drills_copied: if dry_run { self.drills.len() as u64 } else { 0 },
            leftovers_deleted: if dry_run {
                self.leftovers.iter().map(|(_, id)| id.clone()).collect()
            } else {
                Vec::new()
            },
            problems: self.problems.clone(),
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// Copies what `source` holds and `target` lacks (see the module's documentation), with
/// `jobs` objects at once; with `dry_run`, only plans and checks. Holds the target's backup
/// lock, so that no backup or expire into the target runs meanwhile; the source is not locked.
pub fn sync(source: &Repo, target: &Repo, jobs: usize, dry_run: bool, progress: &dyn Progress) -> Result<SyncReport> {
    let started = Instant::now();
    refuse_itself(source, target)?;
    let _lock = (!dry_run).then(|| crate::backup::lock_backups(target)).transpose()?;
    let plan = plan(source, target)?;
    plan.check()?;
    if dry_run {
        return Ok(plan.report(true, started));
    }
    execute(plan, jobs, progress, started)
}

/// What to copy from `source` into `target`; refused when the target is the source, when it
/// belongs to another cluster, or when it holds data without repo.json.
pub fn plan(source: &Repo, target: &Repo) -> Result<SyncPlan> {
    refuse_itself(source, target)?;
    let generations = source.generations()?.ok_or_else(|| {
        Error::Refused(format!(
            "repository {} holds nothing yet (no repo.json): there is nothing to sync",
            source.location()
        ))
    })?;
    check_binding(&generations, source, target)?;
    let mut plan = SyncPlan {
        source: source.clone(),
        target: target.clone(),
        records: Vec::new(),
        wal: Vec::new(),
        backups: Vec::new(),
        packs: PackPlan::default(),
        restore_points: Vec::new(),
        names: Vec::new(),
        drills: Vec::new(),
        stale_markers: Vec::new(),
        leftovers: Vec::new(),
        present: 0,
        backups_present: 0,
        conflicts: Vec::new(),
        problems: Vec::new(),
    };
    for g in generations.all() {
        for (key, check) in [
            (wal_marker_key(g.generation), Check::Text),
            (record_key(g.generation), Check::Record),
        ] {
            // A record the target holds was compared by content already (check_binding).
            match (source.storage().head(&key)?, target.storage().head(&key)?) {
                (None, _) => {}
                (Some(_), Some(_)) => plan.present += 1,
                (Some(meta), None) => plan.records.push(Item {
                    key,
                    size: meta.size,
                    check,
                }),
            }
        }
    }
    plan_restore_points(&mut plan)?;
    plan_drills(&mut plan)?;
    plan_backups(&mut plan, &generations)?;
    for g in generations.all() {
        plan_wal(&mut plan, g)?;
        plan_names(&mut plan, g)?;
    }
    Ok(plan)
}

/// A sync of a repository into itself is refused.
fn refuse_itself(source: &Repo, target: &Repo) -> Result<()> {
    if source.is_named_by(&target.location()) {
        return Err(Error::InvalidInput(format!(
            "the target {} is the source repository itself: give another repository",
            target.location()
        )));
    }
    Ok(())
}

/// The target must be empty (but for locks and a WAL marker a sync wrote before dying), or
/// record the source's first generations, exactly.
fn check_binding(source_generations: &Generations, source: &Repo, target: &Repo) -> Result<()> {
    let of_source = source_generations.all();
    match target.generations()? {
        Some(target_generations) => {
            let of_target = target_generations.all();
            if of_target.len() > of_source.len() || of_target != &of_source[..of_target.len()] {
                let describe = |list: &[Generation]| {
                    list.iter()
                        .map(|g| format!("generation {}: {}", g.generation, g.cluster().describe()))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(Error::Refused(format!(
                    "repository {} belongs to another cluster ({}) than repository {} ({}): nothing was copied; \
                     give the sync an empty repository or this cluster's own copy",
                    target.location(),
                    describe(of_target),
                    source.location(),
                    describe(of_source)
                )));
            }
        }
        None => {
            let mut found: Vec<String> = target
                .storage()
                .list("")?
                .into_iter()
                .filter(|name| name != "locks/" && name != "wal/")
                .collect();
            found.extend(
                target
                    .storage()
                    .list("wal/")?
                    .into_iter()
                    .filter(|name| Some(name.as_str()) != wal_marker_key(1).strip_prefix("wal/"))
                    .map(|name| format!("wal/{name}")),
            );
            if !found.is_empty() {
                return Err(Error::Refused(format!(
                    "repository {} has no repo.json but holds {}: it is no copy of repository {} nor empty; \
                     nothing was copied",
                    target.location(),
                    found.join(", "),
                    source.location()
                )));
            }
        }
    }
    Ok(())
}

/// Plans the objects of the directory `dir` whose names are listed: copied when the target
/// lacks them, skipped when it holds the same size, a conflict when another.
fn plan_listed(plan: &mut SyncPlan, dir: &str, listed: Vec<(String, u64, Check)>) -> Result<Vec<Item>> {
    let held = held(&plan.target, dir)?;
    Ok(classify(plan, dir, listed, &held))
}

/// What the target holds in `dir`: each name with its size (`None`: no plain object).
fn held(target: &Repo, dir: &str) -> Result<HashMap<String, Option<u64>>> {
    Ok(target
        .storage()
        .list_meta(dir)?
        .into_iter()
        .map(|entry| (entry.name, entry.meta.map(|m| m.size)))
        .collect())
}

/// [`plan_listed`] with the target's listing of `dir` at hand.
fn classify(
    plan: &mut SyncPlan,
    dir: &str,
    listed: Vec<(String, u64, Check)>,
    held: &HashMap<String, Option<u64>>,
) -> Vec<Item> {
    let mut items = Vec::new();
    for (name, size, check) in listed {
        let key = format!("{dir}{name}");
        match held.get(&name) {
            None => items.push(Item { key, size, check }),
            Some(Some(stored)) if *stored == size => plan.present += 1,
            Some(stored) => plan
                .conflicts
                .push(conflict(&plan.source, &plan.target, &key, Some(size), *stored)),
        }
    }
    items
}

/// Why an object in the target is not the source's: both places, and what to do.
fn conflict(source: &Repo, target: &Repo, key: &str, in_source: Option<u64>, in_target: Option<u64>) -> String {
    let size = |s: Option<u64>| s.map_or_else(|| "not a plain object".to_string(), |s| format!("{s} bytes"));
    format!(
        "{} ({}) differs from {} ({}): the target holds other content under this name (another \
         deployment's, or changed after it was copied); compare the two and move the target's aside",
        target.storage().describe(key),
        size(in_target),
        source.storage().describe(key),
        size(in_source)
    )
}

/// The restore point records: names as `pitr restore-point` writes them.
fn plan_restore_points(plan: &mut SyncPlan) -> Result<()> {
    let mut listed = Vec::new();
    for entry in plan.source.storage().list_meta(CATALOG_DIR)? {
        match entry.meta {
            Some(meta) if is_restore_point_record(&entry.name) => {
                listed.push((entry.name, meta.size, Check::RestorePoint))
            }
            _ => plan.problems.push(format!(
                "{} is not a restore point record: not copied",
                plan.source.storage().describe(&format!("{CATALOG_DIR}{}", entry.name))
            )),
        }
    }
    plan.restore_points = plan_listed(plan, CATALOG_DIR, listed)?;
    Ok(())
}

/// The drill records: names as `pitr drill` writes them.
fn plan_drills(plan: &mut SyncPlan) -> Result<()> {
    let mut listed = Vec::new();
    for entry in plan.source.storage().list_meta(DRILLS_DIR)? {
        match entry.meta {
            Some(meta) if is_drill_record_name(&entry.name) => listed.push((entry.name, meta.size, Check::Drill)),
            _ => plan.problems.push(format!(
                "{} is not a drill record: not copied",
                plan.source.storage().describe(&format!("{DRILLS_DIR}{}", entry.name))
            )),
        }
    }
    plan.drills = plan_listed(plan, DRILLS_DIR, listed)?;
    Ok(())
}

/// The maps of relation names of generation `g`.
fn plan_names(plan: &mut SyncPlan, g: &Generation) -> Result<()> {
    let dir = plan.source.at(g.generation)?.names_dir()?;
    let mut listed = Vec::new();
    for entry in plan.source.storage().list_meta(&dir)? {
        match entry.meta {
            Some(meta) if is_names_entry(&entry.name) => listed.push((entry.name, meta.size, Check::Names)),
            _ => plan.problems.push(format!(
                "{} is not a map of relation names: not copied",
                plan.source.storage().describe(&format!("{dir}{}", entry.name))
            )),
        }
    }
    let items = plan_listed(plan, &dir, listed)?;
    plan.names.extend(items);
    Ok(())
}

/// `<YYYYMMDD>T<HHMMSSffffff>_<16 hex digits>.json`, as `restore_point::create` names records.
fn is_restore_point_record(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".json") else {
        return false;
    };
    let bytes = stem.as_bytes();
    bytes.len() == 8 + 1 + 12 + 1 + 16
        && bytes[..8].iter().all(u8::is_ascii_digit)
        && bytes[8] == b'T'
        && bytes[9..21].iter().all(u8::is_ascii_digit)
        && bytes[21] == b'_'
        && bytes[22..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
}

/// `<name>_<tier>_<YYYYMMDD>_<HHMMSS>`, as `backup::take` names backups.
fn is_backup_id(id: &str, tier: Tier) -> bool {
    let Some((name, time)) = id.split_once(&format!("_{tier}_")) else {
        return false;
    };
    let time = time.as_bytes();
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && time.len() == 15
        && time[8] == b'_'
        && time.iter().enumerate().all(|(i, b)| i == 8 || b.is_ascii_digit())
}

/// The complete backups of the source the target lacks (or holds in part), and the leftovers
/// of a sync that died in the target.
fn plan_backups(plan: &mut SyncPlan, generations: &Generations) -> Result<()> {
    let (source, target) = (plan.source.storage(), plan.target.storage());
    let mut wanted = HashSet::new();
    for tier in Tier::ALL {
        for name in source.list(&format!("{tier}/"))? {
            let Some(id) = name.strip_suffix('/').filter(|id| is_backup_id(id, tier)) else {
                plan.problems.push(format!(
                    "{} is not a backup of this tier: not copied",
                    source.describe(&format!("{tier}/{name}"))
                ));
                continue;
            };
            let dir = backup_dir(tier.name(), id);
            if source.head(&format!("{dir}{INCOMPLETE_MARKER}"))?.is_some() {
                continue; // being taken or deleted: not a backup (yet, or any more)
            }
            let key = format!("{dir}{MANIFEST}");
            let Some(bytes) = source.get(&key)? else {
                plan.problems.push(format!(
                    "{} has no {MANIFEST}: the backup is unreadable (`pitr verify` says more); not copied",
                    source.describe(&dir)
                ));
                continue;
            };
            let manifest = match checked_manifest(&bytes, &source.describe(&key), tier, id, generations) {
                Ok(manifest) => manifest,
                Err(e) => {
                    plan.problems.push(format!("backup {id} not copied: {e}"));
                    continue;
                }
            };
            wanted.insert(dir.clone());
            match target.get(&key)? {
                Some(held) if held == bytes => {
                    plan.backups_present += 1;
                    plan.present += 1;
                    if target.head(&format!("{dir}{INCOMPLETE_MARKER}"))?.is_some() {
                        plan.stale_markers.push(dir);
                    }
                    continue;
                }
                Some(held) => {
                    plan.conflicts.push(conflict(
                        &plan.source,
                        &plan.target,
                        &key,
                        Some(bytes.len() as u64),
                        Some(held.len() as u64),
                    ));
                    continue;
                }
                None => {}
            }
            let deduplicated = manifest.files.iter().any(|f| f.is_deduplicated());
            let packs = match deduplicated {
                true => match plan.packs.plan_backup(&plan.source, &plan.target, &manifest)? {
                    Planned::Needs(packs) => packs,
                    Planned::Problem(problem) => {
                        plan.problems.push(format!("backup {id} not copied: {problem}"));
                        continue;
                    }
                    Planned::Conflict(conflict) => {
                        plan.conflicts.push(conflict);
                        continue;
                    }
                },
                false => Vec::new(),
            };
            let mut objects: Vec<Item> = manifest
                .pieces()
                .iter()
                .map(|piece| Item {
                    key: piece.key(&dir),
                    size: piece.stored_size,
                    check: Check::Piece {
                        raw_len: piece.size,
                        raw_crc: piece.crc32,
                        stored_size: piece.stored_size,
                    },
                })
                .collect();
            for label in ["backup_label", "tablespace_map"] {
                let key = format!("{dir}{label}");
                if let Some(meta) = source.head(&key)? {
                    objects.push(Item {
                        key,
                        size: meta.size,
                        check: Check::Object,
                    });
                }
            }
            plan.backups.push(BackupCopy {
                dir,
                id: id.to_string(),
                objects,
                with_copy: manifest.format_version >= 3,
                manifest: bytes,
                deduplicated,
                packs,
            });
        }
        // What a sync that died left: a marked directory without manifest whose backup the
        // source no longer holds complete. (A backup into the target would delete it too.)
        for name in target.list(&format!("{tier}/"))? {
            let Some(id) = name.strip_suffix('/').filter(|id| is_backup_id(id, tier)) else {
                continue;
            };
            let dir = backup_dir(tier.name(), id);
            if !wanted.contains(&dir)
                && target.head(&format!("{dir}{MANIFEST}"))?.is_none()
                && target.head(&format!("{dir}{INCOMPLETE_MARKER}"))?.is_some()
            {
                plan.leftovers.push((dir, id.to_string()));
            }
        }
    }
    Ok(())
}

/// A source backup's manifest, checked: its checksum, that it names this backup and one of
/// the repository's clusters, and a layout that is safe to restore.
fn checked_manifest(bytes: &[u8], what: &str, tier: Tier, id: &str, generations: &Generations) -> Result<Manifest> {
    let manifest = Manifest::from_bytes(bytes, what)?;
    let mut problems = manifest.layout_problems();
    if manifest.id != id || manifest.tier != tier {
        problems.push(format!("it names backup {} of tier {}", manifest.id, manifest.tier));
    }
    if generations.of_cluster(manifest.system_identifier).is_none() {
        problems.push(format!(
            "it is of cluster {}, which the repository does not record",
            manifest.system_identifier
        ));
    }
    if problems.is_empty() {
        Ok(manifest)
    } else {
        Err(Error::Corrupt {
            what: what.to_string(),
            reason: problems.join("; "),
        })
    }
}

/// Directories of the target listed at once by [`plan_wal`].
const LISTED_AT_ONCE: usize = 64;

/// Generation `g`'s WAL files the target lacks, by one listing per directory on each side.
fn plan_wal(plan: &mut SyncPlan, g: &Generation) -> Result<()> {
    let source = plan.source.at(g.generation)?;
    let mut by_dir: HashMap<String, Vec<(String, u64, Check)>> = HashMap::new();
    for (name, meta) in source.list_wal_meta()? {
        let key = source.wal_key(&name)?;
        let (dir, file) = key.rsplit_once('/').expect("WAL keys lie in a directory");
        by_dir
            .entry(format!("{dir}/"))
            .or_default()
            .push((file.to_string(), meta.size, Check::Wal(name, *g)));
    }
    let mut dirs: Vec<_> = by_dir.into_iter().collect();
    // History files first, then segments in order.
    dirs.sort_by_key(|(dir, _)| (!dir.ends_with("history/"), dir.clone()));
    // The target's directories listed several at once, as the source's are (a remote store's
    // latency, thousands of directories).
    let mut dirs = dirs.into_iter();
    loop {
        let batch: Vec<_> = dirs.by_ref().take(LISTED_AT_ONCE).collect();
        if batch.is_empty() {
            break;
        }
        let target = &plan.target;
        let held = batch
            .par_iter()
            .map(|(dir, _)| held(target, dir))
            .collect::<Result<Vec<_>>>()?;
        for ((dir, listed), held) in batch.into_iter().zip(held) {
            let items = classify(plan, &dir, listed, &held);
            plan.wal.extend(items);
        }
    }
    Ok(())
}

/// What copying one object came to.
#[derive(Clone)]
enum Copied {
    /// Written and read back: this many bytes.
    Written(u64),
    /// The target held the same bytes.
    Present,
    /// The source no longer holds it (deleted by its expire meanwhile).
    Vanished,
    /// The source's object failed its check: not copied, for this reason.
    Damaged(String),
}

/// Carries out a checked plan, `jobs` objects at once; the report's time counts from `started`
/// (when planning began).
pub fn execute(plan: SyncPlan, jobs: usize, progress: &dyn Progress, started: Instant) -> Result<SyncReport> {
    let mut report = plan.report(false, started);
    let (objects, bytes) = plan.work();
    progress.begin(objects, bytes);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|e| Error::InvalidInput(format!("could not start {jobs} copy threads: {e}")))?;
    let (source, target) = (&plan.source, &plan.target);
    // Counts what copying one object came to; whether it is in the target now. A damaged object
    // is a problem, named by its error, after `context`.
    for (dir, id) in &plan.leftovers {
        target.storage().delete_all(dir)?;
        report.leftovers_deleted.push(id.clone());
    }
    for dir in &plan.stale_markers {
        target.storage().delete(&format!("{dir}{INCOMPLETE_MARKER}"))?;
    }

    progress.status("generations");
    for item in &plan.records {
        let copied = copy(source, target, item, false, progress)?;
        if !tally(&mut report, copied, "") {
            return Err(Error::Refused(format!(
                "{} could not be copied, and everything else depends on it: {}",
                source.storage().describe(&item.key),
                report.problems.last().map_or("it vanished", String::as_str)
            )));
        }
    }

    progress.status("WAL");
    let copied = pool.install(|| {
        plan.wal
            .par_iter()
            .map(|item| {
                let copied = copy(source, target, item, false, progress)?;
                crash_point::reached("sync:wal");
                Ok(copied)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    for copied in copied {
        if matches!(copied, Copied::Written(_)) {
            report.wal_copied += 1;
        }
        tally(&mut report, copied, "");
    }

    let mut packs_done: HashMap<Hash, Copied> = HashMap::new();
    for backup in &plan.backups {
        progress.status(&format!("backup {}", backup.id));
        let marker = format!("{}{INCOMPLETE_MARKER}", backup.dir);
        let note = format!(
            "pitr sync of backup {} from {}, started {} by process {}\n",
            backup.id,
            source.location(),
            Utc::now().to_rfc3339(),
            std::process::id()
        );
        target.storage().put_if_absent(&marker, note.as_bytes())?;
        let context = format!("backup {}: ", backup.id);
        let mut whole = copy_packs(&plan, backup, &pool, &mut packs_done, &mut report, progress)?;
        let copied = pool.install(|| {
            backup
                .objects
                .par_iter()
                .map(|item| {
                    let copied = copy(source, target, item, true, progress)?;
                    crash_point::reached("sync:piece");
                    Ok(copied)
                })
                .collect::<Result<Vec<_>>>()
        })?;
        for copied in copied {
            whole &= tally(&mut report, copied, &context);
        }
        if !whole {
            // Damaged, or deleted by the source's expire meanwhile: the marked directory stays
            // incomplete (never listed); a later sync resumes or removes it.
            continue;
        }
        if backup.deduplicated && !plan.packs.within_grace(sweep::grace()) {
            report.problems.push(format!(
                "{context}not committed: the sync read the target's gc records more than {} s ago, and the \
                 target's expire may meanwhile have condemned a pack the backup references; a later sync completes it",
                sweep::grace().as_secs()
            ));
            continue;
        }
        target.storage().sync_all_under(&backup.dir)?;
        let manifest_key = |name: &str| format!("{}{name}", backup.dir);
        if backup.with_copy {
            let written = put_checked(target, &manifest_key(MANIFEST_COPY), &backup.manifest, false, source)?;
            tally(&mut report, written, "");
            progress.advance(backup.manifest.len() as u64);
            crash_point::reached("sync:manifest-copied");
        }
        let written = put_checked(target, &manifest_key(MANIFEST), &backup.manifest, false, source)?;
        tally(&mut report, written, "");
        progress.advance(backup.manifest.len() as u64);
        crash_point::reached("sync:committed");
        target.storage().delete(&marker)?;
        report.backups_copied.push(backup.id.clone());
    }

    progress.status("restore points, maps of names, drill records");
    report.restore_points_copied = copy_records(source, target, &plan.restore_points, &mut report, progress)?;
    report.names_copied = copy_records(source, target, &plan.names, &mut report, progress)?;
    report.drills_copied = copy_records(source, target, &plan.drills, &mut report, progress)?;
    progress.finish();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Copies the packs `backup` needs that no earlier backup of this sync copied, `jobs` at once
/// (each read whole, at most [`crate::backup::packs::PACK_LIMIT`] bytes), tallied in `report`;
/// whether every pack it needs is in the target now. A pack that an earlier backup could not
/// copy is reported again for this one.
fn copy_packs(
    plan: &SyncPlan,
    backup: &BackupCopy,
    pool: &rayon::ThreadPool,
    done: &mut HashMap<Hash, Copied>,
    report: &mut SyncReport,
    progress: &dyn Progress,
) -> Result<bool> {
    let context = format!("backup {}: ", backup.id);
    let mut whole = true;
    for pack in backup.packs.iter().filter(|p| done.contains_key(*p)) {
        if let copied @ (Copied::Damaged(_) | Copied::Vanished) = &done[pack] {
            whole &= tally(report, copied.clone(), &context);
        }
    }
    let todo: Vec<&Hash> = backup.packs.iter().filter(|p| !done.contains_key(*p)).collect();
    let copied = pool.install(|| {
        todo.par_iter()
            .map(|pack| {
                let copied = copy_pack(plan, pack, progress)?;
                crash_point::reached("sync:pack");
                Ok(copied)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    for (pack, copied) in todo.into_iter().zip(copied) {
        done.insert(*pack, copied.clone());
        if let Copied::Written(bytes) = copied {
            report.packs_copied += 1;
            report.pack_bytes_copied += bytes;
        }
        whole &= tally(report, copied, &context);
    }
    Ok(whole)
}

/// Reads one pack from the source, checks it against what the synced backups reference in it,
/// writes it into the target create-only and durably, and reads it back.
fn copy_pack(plan: &SyncPlan, pack: &Hash, progress: &dyn Progress) -> Result<Copied> {
    let key = pack_key(&pack.hex());
    let (ranges, size) = plan.packs.ranges(pack);
    let Some(bytes) = plan.source.storage().get(&key)? else {
        progress.advance(size);
        return Ok(Copied::Vanished);
    };
    let what = plan.source.storage().describe(&key);
    if let Err(e) = packs::check(&plan.source, ranges, size, &bytes, &what) {
        progress.advance(size);
        return Ok(Copied::Damaged(e.to_string()));
    }
    let copied = put_checked(&plan.target, &key, &bytes, false, &plan.source)?;
    progress.advance(size);
    Ok(copied)
}

/// Counts one object's copy in `report`: whether it is in the target now (a damaged one is a
/// problem, prefixed with `context`).
fn tally(report: &mut SyncReport, copied: Copied, context: &str) -> bool {
    match copied {
        Copied::Written(bytes) => {
            report.objects_copied += 1;
            report.bytes_copied += bytes;
            true
        }
        Copied::Present => {
            report.objects_skipped += 1;
            true
        }
        Copied::Vanished => false,
        Copied::Damaged(reason) => {
            report.problems.push(format!("{context}{reason}"));
            false
        }
    }
}

/// Copies small records one by one (restore points, maps of names, drill records), tallied in
/// `report`; returns how many were written.
fn copy_records(
    source: &Repo,
    target: &Repo,
    items: &[Item],
    report: &mut SyncReport,
    progress: &dyn Progress,
) -> Result<u64> {
    let mut written = 0;
    for item in items {
        let copied = copy(source, target, item, false, progress)?;
        if matches!(copied, Copied::Written(_)) {
            written += 1;
        }
        tally(report, copied, "");
    }
    Ok(written)
}

/// Reads one object from the source, checks it, writes it into the target create-only (with
/// `deferred`, durable at the next `sync_all_under`) and reads it back.
fn copy(source: &Repo, target: &Repo, item: &Item, deferred: bool, progress: &dyn Progress) -> Result<Copied> {
    let Some(bytes) = source.storage().get(&item.key)? else {
        progress.advance(item.size);
        return Ok(Copied::Vanished);
    };
    if let Err(e) = verify(&item.check, &bytes, &source.storage().describe(&item.key)) {
        progress.advance(item.size);
        return Ok(Copied::Damaged(e.to_string()));
    }
    let copied = put_checked(target, &item.key, &bytes, deferred, source)?;
    progress.advance(item.size);
    Ok(copied)
}

/// Writes checked `bytes` under `key` create-only and reads them back; an object of other
/// content there is refused, never overwritten.
fn put_checked(target: &Repo, key: &str, bytes: &[u8], deferred: bool, source: &Repo) -> Result<Copied> {
    let storage = target.storage();
    let outcome = if deferred {
        storage.put_if_absent_deferred(key, bytes)?
    } else {
        storage.put_if_absent(key, bytes)?
    };
    let held = storage.get(key)?;
    match (outcome, held) {
        (PutOutcome::Created, Some(held)) if held == bytes => Ok(Copied::Written(bytes.len() as u64)),
        (PutOutcome::AlreadyExists, Some(held)) if held == bytes => Ok(Copied::Present),
        (PutOutcome::Created, held) => Err(Error::Corrupt {
            what: storage.describe(key),
            reason: format!(
                "reads back as {} after {} bytes were written",
                held.map_or_else(|| "absent".to_string(), |h| format!("{} other bytes", h.len())),
                bytes.len()
            ),
        }),
        (PutOutcome::AlreadyExists, held) => Err(Error::Refused(format!(
            "nothing was overwritten: {}",
            conflict(
                source,
                target,
                key,
                Some(bytes.len() as u64),
                held.map(|h| h.len() as u64)
            )
        ))),
    }
}

/// Checks an object read from the source before it is copied; `what` names it in errors.
fn verify(check: &Check, bytes: &[u8], what: &str) -> Result<()> {
    let corrupt = |reason: String| {
        Err(Error::Corrupt {
            what: what.to_string(),
            reason,
        })
    };
    match check {
        Check::Text if bytes.len() <= 4096 => Ok(()),
        Check::Text => corrupt(format!("{} bytes where pitr writes a short marker", bytes.len())),
        Check::Record => json::from_slice::<serde_json::Value>(bytes, what).map(drop),
        Check::RestorePoint => json::from_slice::<RestorePoint>(bytes, what).map(drop),
        Check::Names => json::from_slice::<crate::names::NamesMap>(bytes, what).map(drop),
        Check::Drill => json::from_slice::<crate::drill::DrillRecord>(bytes, what).map(drop),
        Check::Object => codec::decode_chunks(bytes, what, &mut |_| Ok(())).map(drop),
        Check::Piece {
            raw_len,
            raw_crc,
            stored_size,
        } => {
            let header = codec::ObjectHeader::parse(bytes, what)?;
            if (header.raw_len, header.raw_crc, bytes.len() as u64) != (*raw_len, *raw_crc, *stored_size) {
                return corrupt(format!(
                    "{} bytes holding {} bytes with CRC-32 {:08x}, the manifest says {stored_size} bytes holding \
                     {raw_len} bytes with CRC-32 {raw_crc:08x}",
                    bytes.len(),
                    header.raw_len,
                    header.raw_crc
                ));
            }
            codec::decode_chunks(bytes, what, &mut |_| Ok(())).map(drop)
        }
        Check::Wal(name, generation) => {
            let header = codec::ObjectHeader::parse(bytes, what)?;
            let mut first = true;
            codec::decode_chunks(bytes, what, &mut |chunk| {
                let Some(segment) = name.segment_name().filter(|_| first) else {
                    return Ok(());
                };
                first = false;
                let page = LongPageHeader::validate_start(segment, chunk, header.raw_len).map_err(|reason| {
                    Error::Corrupt {
                        what: what.to_string(),
                        reason,
                    }
                })?;
                if page.system_identifier != generation.system_identifier {
                    return Err(Error::Corrupt {
                        what: what.to_string(),
                        reason: format!(
                            "it is WAL of cluster {}, not of generation {}'s {}",
                            page.system_identifier,
                            generation.generation,
                            generation.cluster().describe()
                        ),
                    });
                }
                Ok(())
            })
            .map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::progress::Silent;
    use crate::repo::Cluster;

    fn cluster(system_identifier: u64, pg_version: u32) -> Cluster {
        Cluster {
            pg_version,
            system_identifier,
            wal_segment_size: 1 << 24,
        }
    }

    fn repo() -> (tempfile::TempDir, Repo) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        (dir, repo)
    }

    #[test]
    fn a_target_is_bound_to_the_source_s_generations_and_follows_an_upgrade() {
        let (_s, source) = repo();
        source.claim(cluster(7, 15)).unwrap();
        let history = WalFileName::parse("00000002.history").unwrap();
        let text = b"1\t0/3000000\tno recovery target specified\n";
        source.put_wal(&history, &Codec::default().encode(text)).unwrap();

        let (_o, other) = repo();
        other.claim(cluster(8, 15)).unwrap();
        let err = sync(&source, &other, 2, false, &Silent).unwrap_err().to_string();
        assert!(
            err.contains("belongs to another cluster") && err.contains("cluster 8"),
            "{err}"
        );
        assert_eq!(other.list_wal().unwrap(), [], "nothing was copied");

        let (_t, target) = repo();
        let report = sync(&source, &target, 2, false, &Silent).unwrap();
        assert_eq!((report.objects_copied, report.wal_copied), (3, 1), "{report:?}");
        assert_eq!(target.get_wal(&history).unwrap(), source.get_wal(&history).unwrap());

        let now = Utc::now();
        source.upgrade(cluster(9, 16), now).unwrap();
        let report = sync(&source, &target, 2, false, &Silent).unwrap();
        assert_eq!((report.objects_copied, report.objects_skipped), (2, 3), "{report:?}");
        assert_eq!(target.generations().unwrap(), source.generations().unwrap());
        assert!(
            target.wal_archive_present().unwrap(),
            "generation 2's WAL directory is marked"
        );
        let back = sync(&target, &source, 2, true, &Silent).unwrap();
        assert_eq!(back.objects_copied, 0, "the copy syncs back into its source: {back:?}");
    }

    #[test]
    fn unfinished_and_unexpected_backups_of_the_source_are_not_copied() {
        let (_s, source) = repo();
        source.claim(cluster(7, 15)).unwrap();
        let taken = backup_dir("hourly", "main_hourly_20261206_000000");
        for key in [INCOMPLETE_MARKER, "files/PG_VERSION", MANIFEST] {
            source.storage().put_if_absent(&format!("{taken}{key}"), b"x").unwrap();
        }
        source
            .storage()
            .put_if_absent("daily/notes/backup.manifest", b"{}")
            .unwrap();
        let (_t, target) = repo();
        let report = sync(&source, &target, 1, false, &Silent).unwrap();
        assert!(report.backups_copied.is_empty(), "{report:?}");
        assert_eq!(target.storage().list("hourly/").unwrap(), Vec::<String>::new());
        assert_eq!(target.storage().list("daily/").unwrap(), Vec::<String>::new());
        assert_eq!(report.problems.len(), 1, "{report:?}");
        assert!(
            report.problems[0].contains("daily/notes/ is not a backup"),
            "{report:?}"
        );
    }

    #[test]
    fn an_unfinished_copy_of_a_backup_the_source_no_longer_holds_is_deleted() {
        let (_s, source) = repo();
        source.claim(cluster(7, 15)).unwrap();
        let (_t, target) = repo();
        sync(&source, &target, 1, false, &Silent).unwrap();
        let dir = backup_dir("hourly", "main_hourly_20261206_000000");
        target
            .storage()
            .put_if_absent(&format!("{dir}{INCOMPLETE_MARKER}"), b"sync")
            .unwrap();
        target
            .storage()
            .put_if_absent(&format!("{dir}files/PG_VERSION"), b"x")
            .unwrap();
        let planned = sync(&source, &target, 1, true, &Silent).unwrap();
        assert_eq!(planned.leftovers_deleted, ["main_hourly_20261206_000000"]);
        assert!(
            !target.storage().list(&dir).unwrap().is_empty(),
            "a dry run deletes nothing"
        );
        let report = sync(&source, &target, 1, false, &Silent).unwrap();
        assert_eq!(report.leftovers_deleted, ["main_hourly_20261206_000000"]);
        assert_eq!(target.storage().list(&dir).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn names_from_the_source_are_checked_before_use() {
        assert!(is_backup_id("main_hourly_20261206_141500", Tier::Hourly));
        assert!(is_backup_id("db-1_daily_20261206_000000", Tier::Daily));
        for bad in [
            "main_daily_20261206_141500",
            "main_hourly_20261206141500",
            "_hourly_20261206_141500",
            "../x_hourly_20261206_141500",
            "main_hourly_20261206_14150a",
        ] {
            assert!(!is_backup_id(bad, Tier::Hourly), "{bad}");
        }
        assert!(is_restore_point_record("20261206T141500123456_0000000003000148.json"));
        for bad in [
            "20261206T141500123456_0000000003000148.json.tmp",
            "20261206T141500123456_000000000300014g.json",
            "../20261206T141500123456_0000000003000148.json",
            "notes.txt",
        ] {
            assert!(!is_restore_point_record(bad), "{bad}");
        }
    }
}
