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
    let users = Users::of(backups);
    let mut refs: Vec<GroupRef> = users.backups_of.keys().copied().collect();
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

/// Which backups reference each group: indexes into the backups' ids, each group's in order
/// (a shared group costs four bytes per backup, not a set entry).
struct Users<'a> {
    ids: Vec<&'a str>,
    backups_of: HashMap<GroupRef, Vec<u32>>,
}

impl<'a> Users<'a> {
    fn of(backups: &[(&'a str, &Manifest)]) -> Users<'a> {
        let mut backups_of: HashMap<GroupRef, Vec<u32>> = HashMap::new();
        for (index, (_, manifest)) in (0u32..).zip(backups) {
            for group in manifest.files.iter().flat_map(|f| &f.groups) {
                let users = backups_of.entry(*group).or_default();
                if users.last() != Some(&index) {
                    users.push(index);
                }
            }
        }
        Users {
            ids: backups.iter().map(|(id, _)| *id).collect(),
            backups_of,
        }
    }

    /// The ids of the backups that reference any of `groups`, sorted.
    fn names(&self, groups: impl IntoIterator<Item = GroupRef>) -> Vec<&'a str> {
        let broken: BTreeSet<&str> = groups
            .into_iter()
            .flat_map(|g| self.backups_of.get(&g).into_iter().flatten())
            .map(|&index| self.ids[index as usize])
            .collect();
        broken.into_iter().collect()
    }
}

/// Frames read at once (coalesced per pack, as restore reads them); a batch that fails is read
/// again one frame at a time, to name each bad one.
const FRAMES_AT_ONCE: usize = 64;

/// Reads every frame the pieces lie in once, and checks each piece in it.
fn check_pieces(
    repo: &Repo,
    pieces: &HashMap<PieceKey, Vec<GroupRef>>,
    users: &Users,
    stats: &mut ReadStats,
) -> Result<Vec<Finding>> {
    let mut by_frame: HashMap<Frame, Vec<&PieceKey>> = HashMap::new();
    for key in pieces.keys() {
        by_frame.entry(key.0).or_default().push(key);
    }
    let mut frames: Vec<Frame> = by_frame.keys().copied().collect();
    frames.sort_unstable();
    let groups_of =
        |keys: &[&PieceKey]| -> Vec<GroupRef> { keys.iter().flat_map(|k| pieces[*k].iter().copied()).collect() };
    let mut findings = Vec::new();
    for batch in frames.chunks(FRAMES_AT_ONCE) {
        let mut checked = (0, 0, Vec::new());
        let read = packs::read_frames(repo, batch, |frame, raw| {
            checked.0 += u64::from(frame.len);
            checked.1 += raw.len() as u64;
            checked.2.extend(bad_pieces(repo, frame, &by_frame[frame], raw));
            Ok(())
        });
        if read.is_ok() {
            stats.stored_bytes += checked.0;
            stats.original_bytes += checked.1;
            findings.extend(
                checked
                    .2
                    .into_iter()
                    .map(|(frame, key, reason)| breaks(pack_key(&frame.pack.hex()), reason, groups_of(&[key]), users)),
            );
            continue;
        }
        for frame in batch {
            let keys = &by_frame[frame];
            stats.stored_bytes += u64::from(frame.len);
            let read = packs::read_frames(repo, &[*frame], |frame, raw| {
                stats.original_bytes += raw.len() as u64;
                for (frame, key, reason) in bad_pieces(repo, frame, keys, raw) {
                    findings.push(breaks(pack_key(&frame.pack.hex()), reason, groups_of(&[key]), users));
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
    }
    Ok(findings)
}

/// The pieces of `keys` that are not in the decoded `frame` (`raw`) with their hash, and why.
fn bad_pieces<'k>(repo: &Repo, frame: &Frame, keys: &[&'k PieceKey], raw: &[u8]) -> Vec<(Frame, &'k PieceKey, String)> {
    keys.iter()
        .filter_map(|key| {
            let (_, at, hash, len) = **key;
            let piece = packs::PieceRef {
                hash,
                len,
                stored: Some((*frame, at)),
            };
            let checked = packs::piece_bytes(repo, &piece, frame, at, raw);
            checked.err().map(|e| (*frame, *key, e.to_string()))
        })
        .collect()
}

/// A finding about `subject` that names every backup the bad `groups` belong to.
fn breaks(subject: String, reason: String, groups: impl IntoIterator<Item = GroupRef>, users: &Users) -> Finding {
    let names = users.names(groups);
    Finding {
        subject,
        reason: format!(
            "{reason}; it breaks backup{} {}, which cannot be restored: take a new backup with --no-dedup \
             (a deduplicated one would share the damaged piece again)",
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        ),
    }
}
