//! Checking what deduplicated backups (format 7) share: every group record and every piece they
//! reference, each read and checked once however many backups reference it (see
//! [`crate::backup::packs`]). A bad group or piece is one finding that names every backup it
//! breaks, and each of those backups fails its verification.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use super::objects::{Finding, ReadStats};
use crate::backup::manifest::Manifest;
use crate::backup::packs::{self, Frame, Group, GroupRef, Hash};
use crate::error::Result;
use crate::progress::Progress;
use crate::repo::{pack_key, Repo};

/// Group records read at once (coalesced per pack); a batch that fails is read again one record
/// at a time, to name each bad one.
const GROUPS_AT_ONCE: usize = 1024;

/// A piece as groups reference it: where it lies, its hash and length.
type PieceKey = (Frame, u32, Hash, u32);

/// Checks every group and piece of `backups` (their ids and manifests) once.
pub fn check_shared(
    repo: &Repo,
    backups: &[(&str, &Manifest)],
    progress: &dyn Progress,
) -> Result<(ReadStats, Vec<Finding>)> {
    let started = Instant::now();
    let mut users: HashMap<GroupRef, BTreeSet<&str>> = HashMap::new();
    for (id, manifest) in backups {
        for group in manifest.files.iter().flat_map(|f| &f.groups) {
            users.entry(*group).or_default().insert(id);
        }
    }
    let mut refs: Vec<GroupRef> = users.keys().copied().collect();
    refs.sort_unstable_by_key(|g| (g.pack, g.at));
    let mut stats = ReadStats {
        jobs: 1,
        ..ReadStats::default()
    };
    progress.begin(refs.len() as u64, 0);
    let mut findings = Vec::new();
    let mut pieces: HashMap<PieceKey, Vec<GroupRef>> = HashMap::new();
    for batch in refs.chunks(GROUPS_AT_ONCE) {
        for (group, read) in read_checked(repo, batch) {
            progress.advance(0);
            stats.objects += 1;
            match read {
                Ok(record) => {
                    stats.stored_bytes += u64::from(group.len);
                    for piece in &record.pieces {
                        if let Some((frame, at)) = piece.stored {
                            pieces
                                .entry((frame, at, piece.hash, piece.len))
                                .or_default()
                                .push(group);
                        }
                    }
                }
                Err(reason) => findings.push(breaks(pack_key(&group.pack.hex()), reason, [group], &users)),
            }
        }
    }
    progress.finish();
    findings.extend(check_pieces(repo, &pieces, &users, &mut stats)?);
    stats.seconds = started.elapsed().as_secs_f64();
    Ok((stats, findings))
}

/// The records of `batch`, each read and checked, or why not.
fn read_checked(repo: &Repo, batch: &[GroupRef]) -> Vec<(GroupRef, std::result::Result<Group, String>)> {
    match packs::read_groups(repo, batch) {
        Ok(mut read) => batch
            .iter()
            .map(|g| (*g, read.remove(g).ok_or_else(|| "the record was not read".to_string())))
            .collect(),
        Err(_) if batch.len() > 1 => batch.iter().flat_map(|g| read_checked(repo, &[*g])).collect(),
        Err(e) => vec![(batch[0], Err(e.to_string()))],
    }
}

/// Reads every frame the pieces lie in once, and checks each piece in it.
fn check_pieces(
    repo: &Repo,
    pieces: &HashMap<PieceKey, Vec<GroupRef>>,
    users: &HashMap<GroupRef, BTreeSet<&str>>,
    stats: &mut ReadStats,
) -> Result<Vec<Finding>> {
    let mut by_frame: HashMap<Frame, Vec<&PieceKey>> = HashMap::new();
    for key in pieces.keys() {
        by_frame.entry(key.0).or_default().push(key);
    }
    let mut frames: Vec<Frame> = by_frame.keys().copied().collect();
    frames.sort_unstable();
    let mut findings = Vec::new();
    for frame in frames {
        let keys = &by_frame[&frame];
        let groups_of =
            |keys: &[&PieceKey]| -> Vec<GroupRef> { keys.iter().flat_map(|k| pieces[*k].iter().copied()).collect() };
        stats.stored_bytes += u64::from(frame.len);
        let read = packs::read_frames(repo, &[frame], |frame, raw| {
            stats.original_bytes += raw.len() as u64;
            for key in keys {
                let (_, at, hash, len) = **key;
                let piece = packs::PieceRef {
                    hash,
                    len,
                    stored: Some((*frame, at)),
                };
                if let Err(e) = packs::piece_bytes(repo, &piece, frame, at, raw) {
                    findings.push(breaks(
                        pack_key(&frame.pack.hex()),
                        e.to_string(),
                        groups_of(&[key]),
                        users,
                    ));
                }
            }
            Ok(())
        });
        if let Err(e) = read {
            findings.push(breaks(
                pack_key(&frame.pack.hex()),
                e.to_string(),
                groups_of(keys),
                users,
            ));
        }
    }
    Ok(findings)
}

/// A finding about `subject` that names every backup the bad `groups` belong to.
fn breaks(
    subject: String,
    reason: String,
    groups: impl IntoIterator<Item = GroupRef>,
    users: &HashMap<GroupRef, BTreeSet<&str>>,
) -> Finding {
    let broken: BTreeSet<&str> = groups
        .into_iter()
        .flat_map(|g| users.get(&g).into_iter().flatten().copied())
        .collect();
    let names: Vec<&str> = broken.into_iter().collect();
    Finding {
        subject,
        reason: format!(
            "{reason}; it breaks backup{} {}, which cannot be restored: take a new backup without --dedup (a \
             deduplicated one would share the damaged piece again)",
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        ),
    }
}
