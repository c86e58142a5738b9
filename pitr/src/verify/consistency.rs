//! Whether a backup manifest agrees with itself, with the directory it lies in, and with the
//! repository's cluster. Pure: the stored files themselves are read elsewhere.

use std::collections::HashSet;

use crate::backup::manifest::{parts_crc, FileEntry, Manifest, MANIFEST_VERSION, PART_SIZE};
use crate::backup::Tier;
use crate::control::PG_CONTROL;
use crate::repo::Cluster;
use crate::wal::{Segment, SegmentSize};

/// Everything inconsistent about the manifest of the backup in `<tier>/<id>/`.
pub fn manifest_problems(m: &Manifest, tier: Tier, id: &str, cluster: Option<&Cluster>) -> Vec<String> {
    let mut problems = Vec::new();
    if !(1..=MANIFEST_VERSION).contains(&m.format_version) {
        problems.push(format!("manifest format version {} is not supported", m.format_version));
    }
    if m.id != id || m.tier != tier {
        problems.push(format!(
            "the manifest describes backup {} of tier {}, but lies in {tier}/{id}/",
            m.id, m.tier
        ));
    }
    problems.extend(m.layout_problems());
    problems.extend(cluster_problem(m, cluster));
    problems.extend(wal_problems(m));
    problems.extend(file_problems(m));
    problems
}

fn cluster_problem(m: &Manifest, cluster: Option<&Cluster>) -> Option<String> {
    let Some(info) = cluster else {
        return Some("the repository has no repo.json, so the backup's cluster cannot be checked".into());
    };
    let found = (m.system_identifier, m.pg_version, m.wal_segment_size);
    cluster_mismatch(found, info).map(|mismatch| format!("the backup is of {mismatch}"))
}

/// Why a cluster, as (system identifier, major version, segment size), is not the one
/// `recorded` in the repository, if it is not.
pub fn cluster_mismatch(found: (u64, u32, u32), recorded: &Cluster) -> Option<String> {
    let ours = (
        recorded.system_identifier,
        recorded.pg_version,
        recorded.wal_segment_size,
    );
    (found != ours).then(|| {
        format!(
            "cluster {} (PostgreSQL {}, {}-byte WAL segments), but the repository holds cluster {} \
             (PostgreSQL {}, {}-byte segments)",
            found.0, found.1, found.2, ours.0, ours.1, ours.2
        )
    })
}

fn wal_problems(m: &Manifest) -> Vec<String> {
    let Some(size) = SegmentSize::new(m.wal_segment_size) else {
        return vec![format!("invalid WAL segment size {}", m.wal_segment_size)];
    };
    let mut problems = Vec::new();
    if m.start_lsn > m.stop_lsn || m.start_time > m.stop_time {
        problems.push(format!(
            "it stops ({} at {}) before it starts ({} at {})",
            m.stop_lsn, m.stop_time, m.start_lsn, m.start_time
        ));
    }
    let range = m.consistency_segments();
    let name = |segno| {
        Segment {
            timeline: m.timeline,
            segno,
        }
        .file_name(size)
    };
    for (field, stated, segno) in [
        ("first_wal", &m.first_wal, *range.start()),
        ("last_wal", &m.last_wal, *range.end()),
    ] {
        if *stated != name(segno) {
            problems.push(format!(
                "{field} {stated} does not match its LSNs {}..{} on timeline {} (expected {})",
                m.start_lsn,
                m.stop_lsn,
                m.timeline,
                name(segno)
            ));
        }
    }
    problems
}

fn file_problems(m: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let original: u64 = m.files.iter().map(|f| f.size).sum();
    let stored: u64 = m.files.iter().map(|f| f.stored_size).sum();
    if (original, stored) != (m.original_bytes, m.stored_bytes) {
        problems.push(format!(
            "its totals ({} bytes, {} stored) are not the sums over its files ({original}, {stored})",
            m.original_bytes, m.stored_bytes
        ));
    }
    if m.files.last().map(|f| f.path.as_str()) != Some(PG_CONTROL) {
        problems.push(format!("{PG_CONTROL} is missing or not the last file"));
    }
    let mut seen = HashSet::new();
    if let Some(twice) = m.files.iter().find(|f| !seen.insert(f.path.as_str())) {
        problems.push(format!("{} is listed twice", twice.path));
    }
    if let Some(split) = m.files.iter().find(|f| !parts_add_up(f)) {
        problems.push(format!(
            "the parts of {} do not add up to the file (size, stored size, CRC-32 or offsets)",
            split.path
        ));
    }
    let group_size = crate::backup::packs::GROUP_SIZE as u64;
    if let Some(grouped) = m
        .files
        .iter()
        .find(|f| f.is_deduplicated() && (f.groups.len() as u64 != f.size.div_ceil(group_size) || !f.parts.is_empty()))
    {
        problems.push(format!(
            "{} has {} groups of pieces for {} bytes (or parts besides them)",
            grouped.path,
            grouped.groups.len(),
            grouped.size
        ));
    }
    if m.format_version < 7 && m.files.iter().any(|f| f.is_deduplicated()) {
        problems.push(format!(
            "format {} lists groups of pieces, which format 7 introduced",
            m.format_version
        ));
    }
    problems
}

/// A split file's size, stored size and CRC-32 are those of its parts, which lie at multiples
/// of the part size, in order.
fn parts_add_up(file: &FileEntry) -> bool {
    if file.parts.is_empty() {
        return true;
    }
    let at_their_offsets = file
        .parts
        .iter()
        .enumerate()
        .all(|(index, part)| part.offset == index as u64 * PART_SIZE);
    at_their_offsets
        && file.size == file.parts.iter().map(|p| p.size).sum::<u64>()
        && file.stored_size == file.parts.iter().map(|p| p.stored_size).sum::<u64>()
        && file.crc32 == parts_crc(&file.parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::{FileEntry, Part};
    use crate::wal::Lsn;

    fn file(path: &str, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            mode: 0o600,
            mtime: 0,
            crc32: 0,
            stored_size: size / 2,
            parts: vec![],
            groups: vec![],
            stat: None,
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            id: "main_daily_20261125_000000".into(),
            system_identifier: 7,
            original_bytes: 300,
            stored_bytes: 150,
            files: vec![file("base/1/1259", 100), file(PG_CONTROL, 200)],
            ..Manifest::for_test("", Tier::Daily, 1, 2..=3, chrono::DateTime::UNIX_EPOCH)
        }
    }

    fn cluster() -> Cluster {
        Cluster {
            pg_version: 15,
            system_identifier: 7,
            wal_segment_size: 16 << 20,
        }
    }

    fn problems(m: &Manifest) -> Vec<String> {
        manifest_problems(m, Tier::Daily, "main_daily_20261125_000000", Some(&cluster()))
    }

    #[test]
    fn a_consistent_manifest_has_no_problem() {
        assert_eq!(problems(&manifest()), Vec::<String>::new());
    }

    #[test]
    fn each_inconsistency_is_named() {
        let check = |change: &dyn Fn(&mut Manifest), needle: &str| {
            let mut m = manifest();
            change(&mut m);
            let found = problems(&m);
            assert!(found.iter().any(|p| p.contains(needle)), "{needle}: {found:?}");
        };
        check(&|m| m.id = "other".into(), "lies in daily/main_daily_20261125_000000/");
        check(&|m| m.tier = Tier::Weekly, "of tier weekly");
        check(&|m| m.system_identifier = 8, "the backup is of cluster 8");
        check(&|m| m.last_wal = "000000010000000000000004".into(), "last_wal");
        check(&|m| m.stop_lsn = Lsn(0x2000000), "stops");
        check(&|m| m.original_bytes = 1, "not the sums");
        check(&|m| m.files.reverse(), "not the last file");
        check(&|m| m.files.insert(0, file(PG_CONTROL, 0)), "listed twice");
        check(&|m| m.files[0].path = "/etc/cron.d/x".into(), "not a relative path");
        check(&|m| m.files[0].mode = 0o4755, "set-id");
        let split = |m: &mut Manifest, offset: u64| {
            let part = Part {
                offset,
                size: 10,
                crc32: 0,
                stored_size: 5,
            };
            let entry = &mut m.files[0];
            (entry.size, entry.stored_size, entry.parts) = (10, 5, vec![part]);
            entry.crc32 = parts_crc(&entry.parts);
        };
        let group = crate::backup::packs::GroupRef {
            hash: crate::backup::packs::Hash([1; 32]),
            pack: crate::backup::packs::Hash([2; 32]),
            at: 8,
            len: 100,
        };
        check(
            &|m| m.files[0].groups = vec![group, group],
            "2 groups of pieces for 100 bytes",
        );
        check(
            &|m| {
                m.files[0].groups = vec![group];
                m.format_version = 6;
            },
            "which format 7 introduced",
        );
        let mut grouped = manifest();
        grouped.files[0].groups = vec![group];
        assert_eq!(problems(&grouped), Vec::<String>::new());
        let mut consistent = manifest();
        split(&mut consistent, 0);
        assert!(parts_add_up(&consistent.files[0]));
        check(&|m| split(m, PART_SIZE), "the parts of");
        let none = manifest_problems(&manifest(), Tier::Daily, "main_daily_20261125_000000", None);
        assert!(none[0].contains("no repo.json"), "{none:?}");
    }
}
