//! The packs of the deduplicated backups a sync copies (manifest format 7): which packs each
//! backup needs that the target lacks, what the synced backups reference in each, and the check
//! of a pack's bytes before they are written (see the module doc of [`super`]).
//!
//! A backup is planned by reading the group records its manifest references from the source
//! (each checked against its content hash, as restore and verify read them): its index packs
//! are those of its groups, its data packs those its groups' pieces lie in. Each pack is
//! copied once per sync, by the first backup that needs it, and checked against every range
//! the planned backups reference in it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::backup::manifest::Manifest;
use crate::backup::packs::{
    self as packs, describe_frame, describe_group, Frame, GroupRef, Hash, PieceRef, DATA_MAGIC, INDEX_MAGIC, PACK_LIMIT,
};
use crate::backup::sweep;
use crate::codec;
use crate::error::{Error, Result};
use crate::repo::{pack_key, Repo, PACKS_DIR};

/// Group records read from the source at once.
const GROUPS_AT_ONCE: usize = 4096;

/// What the planned backups reference in one pack of the source.
#[derive(Debug, Default)]
pub struct Ranges {
    /// Group records (an index pack).
    groups: HashSet<GroupRef>,
    /// Frames, each with the pieces referenced in it: offset in the decoded frame, length, hash
    /// (a data pack).
    frames: BTreeMap<Frame, BTreeSet<(u32, u32, Hash)>>,
}

/// The packs of a sync: what the target's expire condemned, what each side holds, and what the
/// planned backups reference in each pack.
#[derive(Default)]
pub struct PackPlan {
    /// The packs the target's gc records condemn, and when they were read (before any listing
    /// of the target's packs); read with the first deduplicated backup.
    condemned: Option<(HashSet<Hash>, Instant)>,
    /// Listings of `packs/<hh>/`, per side: each name with its size (`None`: no plain object).
    source_held: HashMap<String, HashMap<String, Option<u64>>>,
    target_held: HashMap<String, HashMap<String, Option<u64>>>,
    /// The data packs each group record read names.
    group_packs: HashMap<GroupRef, Vec<Hash>>,
    /// The ranges referenced in each pack of the source, by every backup planned (a pack is
    /// checked against all of them).
    ranges: HashMap<Hash, Ranges>,
    /// The packs to copy, with their size.
    pub wanted: BTreeMap<Hash, u64>,
    /// Packs the target holds already with the source's size (counted once).
    pub present: HashSet<Hash>,
}

/// What planning one backup's packs came to.
pub enum Planned {
    /// The packs it needs that the target lacks (copied by the first backup that needs them).
    Needs(Vec<Hash>),
    /// It is not copied this time, for this reason.
    Problem(String),
    /// A pack of the target has the pack's name but another size: nothing may be copied.
    Conflict(String),
}

impl PackPlan {
    /// Whether a deduplicated backup that commits now commits within `grace` after the target's
    /// gc records were read.
    pub fn within_grace(&self, grace: Duration) -> bool {
        self.condemned.as_ref().is_none_or(|(_, at)| at.elapsed() <= grace)
    }

    /// What the planned backups reference in `pack`, and its size.
    pub fn ranges(&self, pack: &Hash) -> (&Ranges, u64) {
        (&self.ranges[pack], self.wanted[pack])
    }

    /// Plans the packs of the deduplicated backup `manifest` of the source.
    pub fn plan_backup(&mut self, source: &Repo, target: &Repo, manifest: &Manifest) -> Result<Planned> {
        if self.condemned.is_none() {
            self.condemned = Some((sweep::condemned_packs(target)?, Instant::now()));
        }
        let refs: HashSet<GroupRef> = manifest.files.iter().flat_map(|f| f.groups.iter().copied()).collect();
        let unread: Vec<GroupRef> = refs
            .iter()
            .filter(|g| !self.group_packs.contains_key(g))
            .copied()
            .collect();
        for batch in unread.chunks(GROUPS_AT_ONCE) {
            if let Err(problem) = self.read_groups(source, batch)? {
                return Ok(Planned::Problem(problem));
            }
        }
        let mut referenced: BTreeSet<Hash> = refs.iter().map(|g| g.pack).collect();
        for group in &refs {
            referenced.extend(self.group_packs[group].iter().copied());
        }
        let (condemned, _) = self.condemned.as_ref().expect("read above");
        if let Some(pack) = referenced.iter().find(|p| condemned.contains(p)) {
            return Ok(Planned::Problem(format!(
                "the target's expire condemned pack {pack}, which it references (a gc/ record of {} names \
                 it): a later sync copies this backup, after the target's next expire has deleted that pack",
                target.location()
            )));
        }
        self.classify(source, target, &referenced)
    }

    /// Reads `batch`'s group records from the source, checked, into `group_packs` and `ranges`;
    /// a reference outside its pack or a damaged record is a problem, and nothing is kept then.
    fn read_groups(&mut self, source: &Repo, batch: &[GroupRef]) -> Result<std::result::Result<(), String>> {
        for group in batch {
            let size = held_size(&mut self.source_held, source, &group.pack)?;
            if let Err(problem) = within(source, &group.pack, size, group.at, u64::from(group.len)) {
                return Ok(Err(problem));
            }
        }
        let records = match packs::read_groups(source, batch) {
            Ok(records) => records,
            Err(e @ Error::Corrupt { .. }) => return Ok(Err(e.to_string())),
            Err(e) => return Err(e),
        };
        let mut pieces = Vec::new();
        for record in records.values() {
            for piece in &record.pieces {
                let Some((frame, at)) = piece.stored else { continue };
                let size = held_size(&mut self.source_held, source, &frame.pack)?;
                if let Err(problem) = within(source, &frame.pack, size, frame.at, u64::from(frame.len)) {
                    return Ok(Err(problem));
                }
                pieces.push((frame, (at, piece.len, piece.hash)));
            }
        }
        for (frame, piece) in pieces {
            let ranges = self.ranges.entry(frame.pack).or_default();
            ranges.frames.entry(frame).or_default().insert(piece);
        }
        for (group, record) in records {
            self.ranges.entry(group.pack).or_default().groups.insert(group);
            let mut data_packs: Vec<Hash> = record
                .pieces
                .iter()
                .filter_map(|p| p.stored)
                .map(|(f, _)| f.pack)
                .collect();
            data_packs.sort_unstable();
            data_packs.dedup();
            self.group_packs.insert(group, data_packs);
        }
        Ok(Ok(()))
    }

    /// The packs of `referenced` the target lacks; a pack it holds with the source's size is
    /// present, with another size a conflict.
    fn classify(&mut self, source: &Repo, target: &Repo, referenced: &BTreeSet<Hash>) -> Result<Planned> {
        let mut needs = Vec::new();
        for pack in referenced {
            let size = held_size(&mut self.source_held, source, pack)?.expect("checked while reading the records");
            match held_size(&mut self.target_held, target, pack)? {
                None => {
                    self.wanted.insert(*pack, size);
                    needs.push(*pack);
                }
                Some(held) if held == size => {
                    self.present.insert(*pack);
                }
                Some(held) => {
                    return Ok(Planned::Conflict(super::conflict(
                        source,
                        target,
                        &pack_key(&pack.hex()),
                        Some(size),
                        Some(held),
                    )))
                }
            }
        }
        Ok(Planned::Needs(needs))
    }
}

/// The size of `pack` in `repo` by a listing of its directory, listed once (`None`: absent;
/// something that is no plain object counts as size 0, which no pack has).
fn held_size(
    listings: &mut HashMap<String, HashMap<String, Option<u64>>>,
    repo: &Repo,
    pack: &Hash,
) -> Result<Option<u64>> {
    let name = pack.hex();
    let dir = format!("{PACKS_DIR}{}/", &name[..2]);
    if !listings.contains_key(&dir) {
        listings.insert(dir.clone(), super::held(repo, &dir)?);
    }
    Ok(listings[&dir].get(&name).map(|size| size.unwrap_or(0)))
}

/// Whether `len` bytes at `at` lie within the pack of `size` (`None`: missing), as a problem.
fn within(source: &Repo, pack: &Hash, size: Option<u64>, at: u64, len: u64) -> std::result::Result<(), String> {
    let what = source.storage().describe(&pack_key(&pack.hex()));
    match size {
        None => Err(format!("{what} is missing from the repository")),
        Some(size) if size > PACK_LIMIT as u64 => Err(format!(
            "{what} holds {size} bytes, more than a pack may ({PACK_LIMIT})"
        )),
        Some(size) if at < 8 || at.checked_add(len).is_none_or(|end| end > size) => Err(format!(
            "{what}: a reference to {len} bytes at {at} lies outside its {size} bytes"
        )),
        Some(_) => Ok(()),
    }
}

/// Checks a pack's `bytes` read from the source (`what` names it) against what the planned
/// backups reference in it: its magic, each group record against its content hash, each frame
/// by its CRC-32 and each piece in it by its hash.
pub fn check(source: &Repo, ranges: &Ranges, size: u64, bytes: &[u8], what: &str) -> Result<()> {
    let corrupt = |reason: String| Error::Corrupt {
        what: what.to_string(),
        reason,
    };
    // An encrypted pack is listed with its encrypted size; its decryption authenticated every byte.
    if bytes.len() as u64 != size && source.encrypted_for()?.is_none() {
        return Err(corrupt(format!(
            "{} bytes, where the listing showed {size}",
            bytes.len()
        )));
    }
    if !ranges.groups.is_empty() && !ranges.frames.is_empty() {
        return Err(corrupt(
            "backups reference it both as an index pack and as a data pack".into(),
        ));
    }
    let magic = if ranges.groups.is_empty() {
        DATA_MAGIC
    } else {
        INDEX_MAGIC
    };
    if !bytes.starts_with(magic) {
        return Err(corrupt(format!(
            "it does not begin with {}, as the pack its references name must",
            String::from_utf8_lossy(magic)
        )));
    }
    let slice = |at: u64, len: u64| bytes.get(at as usize..(at + len) as usize);
    for group in &ranges.groups {
        let record = slice(group.at, u64::from(group.len)).ok_or_else(|| corrupt("it ends early".into()))?;
        packs::Group::decode(record, group.hash, &describe_group(source, group))?;
    }
    let mut raw = Vec::new();
    for (frame, pieces) in &ranges.frames {
        let stored = slice(frame.at, u64::from(frame.len)).ok_or_else(|| corrupt("it ends early".into()))?;
        codec::decode_into(stored, &describe_frame(source, frame), &mut raw)?;
        for (at, len, hash) in pieces {
            let piece = PieceRef {
                hash: *hash,
                len: *len,
                stored: None,
            };
            packs::piece_bytes(source, &piece, frame, *at, &raw)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::packs::tests::store_one_group;
    use crate::backup::packs::PIECE_SIZE;

    #[test]
    fn a_pack_is_checked_against_each_range_referenced_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open_local(dir.path()).unwrap();
        let raw: Vec<u8> = (0..2 * PIECE_SIZE).map(|i| (i % 13) as u8).collect();
        let (frame, group) = store_one_group(&repo, &raw);
        let stored = |pack: &Hash| repo.storage().get(&pack_key(&pack.hex())).unwrap().unwrap();
        let (data, index) = (stored(&frame.pack), stored(&group.pack));
        let second = Hash::of(&raw[PIECE_SIZE..]);
        let of_frame = |piece: Hash| Ranges {
            frames: BTreeMap::from([(frame, BTreeSet::from([(PIECE_SIZE as u32, PIECE_SIZE as u32, piece)]))]),
            ..Ranges::default()
        };
        let of_group = Ranges {
            groups: HashSet::from([group]),
            ..Ranges::default()
        };
        let check = |ranges: &Ranges, bytes: &[u8]| check(&repo, ranges, bytes.len() as u64, bytes, "p");

        check(&of_frame(second), &data).unwrap();
        check(&of_group, &index).unwrap();
        let err = check(&of_frame(Hash::of(b"other")), &data).unwrap_err().to_string();
        assert!(err.contains("has other content"), "a piece's hash: {err}");
        let err = check(&of_group, &data).unwrap_err().to_string();
        assert!(
            err.contains("pitrIDX1"),
            "a data pack where an index pack is named: {err}"
        );
        let mut damaged = index.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(check(&of_group, &damaged).is_err(), "a group record's content hash");
        let err = super::check(&repo, &of_group, index.len() as u64 + 1, &index, "p")
            .unwrap_err()
            .to_string();
        assert!(err.contains("where the listing showed"), "{err}");
    }
}
