//! Data pages of relation files and their checksums (data checksums, `initdb --data-checksums`).
//!
//! The algorithm is PostgreSQL's (src/include/storage/checksum_impl.h, `pg_checksum_page` and
//! `pg_checksum_block`): 32 FNV-1a-like sums run side by side over the page read as 32-bit words
//! in rows of 32, each seeded with its own base offset; two rounds of zeroes for mixing; the sums
//! XOR-folded; the block number XOR-ed in (a page moved elsewhere fails); the result reduced to
//! 16 bits with an offset of one, so that no checksum is zero. The checksum is computed with the
//! page's own `pd_checksum` (offset 8, 2 bytes) taken as zero. The layout of the header is
//! src/include/storage/bufpage.h's `PageHeaderData`: `pd_lsn` @0 (8 bytes, the high half first),
//! `pd_checksum` @8, `pd_flags` @10, `pd_lower` @12, `pd_upper` @14. A new page (`PageIsNew`:
//! `pd_upper` zero) has no checksum; PostgreSQL accepts it only when it is all zeroes
//! (`PageIsVerifiedExtended` in src/backend/storage/page/bufpage.c).
//!
//! None of this differs in PostgreSQL 12–18 (see `PgVersion`). The words are read in the
//! machine's byte order, as PostgreSQL reads them on the machine that wrote the file.

use crate::wal::Lsn;

/// `BLCKSZ`: the page size pitr checks (PostgreSQL's default; a cluster built with another
/// block size is not checked).
pub const BLOCK_SIZE: usize = 8192;

/// `N_SUMS`: how many sums run side by side.
const N_SUMS: usize = 32;

/// Rows of `N_SUMS` words in a page.
const ROWS: usize = BLOCK_SIZE / (4 * N_SUMS);

/// FNV-1a's 32-bit prime.
const FNV_PRIME: u32 = 16_777_619;

/// The sums' seeds (`checksumBaseOffsets`).
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C, 0xF8D4474F,
    0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC,
    0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6,
    0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

/// One round of one sum (`CHECKSUM_COMP`).
#[inline(always)]
fn mix(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// The words of one row of the page, in the machine's byte order.
#[inline(always)]
fn row(bytes: &[u8]) -> [u32; N_SUMS] {
    let mut words = [0u32; N_SUMS];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words
}

/// `pg_checksum_page`: the checksum PostgreSQL stores in `pd_checksum` of the page `page`
/// (exactly [`BLOCK_SIZE`] bytes) at block number `block` of its relation fork (counted over
/// the fork's segments: segment N's first block is N × `RELSEG_SIZE`).
pub fn checksum(page: &[u8], block: u32) -> u16 {
    assert_eq!(page.len(), BLOCK_SIZE, "a page is {BLOCK_SIZE} bytes");
    let mut sums = BASE_OFFSETS;
    // The first row with pd_checksum (bytes 8 and 9) as zero.
    let mut first = [0u8; 4 * N_SUMS];
    first.copy_from_slice(&page[..4 * N_SUMS]);
    first[8] = 0;
    first[9] = 0;
    let first = row(&first);
    for (sum, value) in sums.iter_mut().zip(first) {
        *sum = mix(*sum, value);
    }
    for bytes in page[4 * N_SUMS..].chunks_exact(4 * N_SUMS) {
        let words = row(bytes);
        for (sum, value) in sums.iter_mut().zip(words) {
            *sum = mix(*sum, value);
        }
    }
    debug_assert_eq!(page.len() / (4 * N_SUMS), ROWS);
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = mix(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, sum| acc ^ sum) ^ block;
    (folded % 65535 + 1) as u16
}

/// `pd_lsn`: the LSN of the last WAL record that changed the page (two 32-bit halves, the high
/// one first, each in the machine's byte order).
pub fn lsn(page: &[u8]) -> Lsn {
    let half = |o: usize| u32::from_ne_bytes([page[o], page[o + 1], page[o + 2], page[o + 3]]) as u64;
    Lsn(half(0) << 32 | half(4))
}

/// `pd_checksum`, as stored.
pub fn stored_checksum(page: &[u8]) -> u16 {
    u16::from_ne_bytes([page[8], page[9]])
}

/// What checking one page found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    /// Its checksum matches, or it is new and all zeroes.
    Valid,
    /// Changed at or after the backup's start (`pd_lsn` at or after it): it may be torn in
    /// the copy, and WAL replay writes it again, so its checksum is not judged.
    Skipped,
    /// The checksum does not match, or a new page is not all zeroes.
    Invalid,
}

/// Checks the page `page` at block `block`: pages changed from `start` on are skipped.
pub fn check(page: &[u8], block: u32, start: Lsn) -> PageCheck {
    let upper = u16::from_ne_bytes([page[14], page[15]]);
    if upper == 0 {
        // PageIsNew: valid only when every byte is zero.
        return if page.iter().all(|&b| b == 0) {
            PageCheck::Valid
        } else {
            PageCheck::Invalid
        };
    }
    if lsn(page) >= start {
        return PageCheck::Skipped;
    }
    if checksum(page, block) == stored_checksum(page) {
        PageCheck::Valid
    } else {
        PageCheck::Invalid
    }
}

/// Whether the file name `name` (the last part of its path) is of a relation fork whose pages
/// carry checksums: `<relfilenode>`, `<relfilenode>_fsm` or `<relfilenode>_vm`, with `.<N>`
/// for its segments after the first. Returns the segment number.
pub fn relation_segment(name: &str) -> Option<u32> {
    let (stem, segment) = match name.split_once('.') {
        Some((stem, n)) => (stem, digits(n)?),
        None => (name, 0),
    };
    let node = stem
        .strip_suffix("_fsm")
        .or_else(|| stem.strip_suffix("_vm"))
        .unwrap_or(stem);
    digits(node)?;
    Some(segment)
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// Whether the data-directory path `path` (`/`-separated) is a relation file whose pages carry
/// checksums: one under `base/<db>/`, `global/` or `pg_tblspc/<oid>/<version dir>/<db>/`
/// named as [`relation_segment`] accepts. Returns its segment number.
pub fn relation_file(path: &str) -> Option<u32> {
    let parts: Vec<&str> = path.split('/').collect();
    let name = match parts.as_slice() {
        ["base", db, name] | ["pg_tblspc", _, _, db, name] => {
            digits(db)?;
            name
        }
        ["global", name] => name,
        _ => return None,
    };
    relation_segment(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks 0 to 3 of pg_class (base/1/1259) of a PostgreSQL 15 cluster made with
    /// `initdb --data-checksums`: their stored checksums are PostgreSQL's own.
    const PG_CLASS: &[u8] = include_bytes!("testdata/pg_class_blocks_0_3.bin");

    fn page(block: usize) -> &'static [u8] {
        &PG_CLASS[block * BLOCK_SIZE..][..BLOCK_SIZE]
    }

    #[test]
    fn the_checksum_is_the_one_postgresql_stored() {
        let stored: Vec<u16> = (0..4).map(|b| stored_checksum(page(b))).collect();
        assert_eq!(stored, [15392, 16677, 57031, 61078]);
        for (block, &stored) in stored.iter().enumerate() {
            assert_eq!(checksum(page(block), block as u32), stored, "block {block}");
            assert_eq!(check(page(block), block as u32, Lsn(u64::MAX)), PageCheck::Valid);
        }
    }

    #[test]
    fn the_block_number_and_every_byte_count() {
        let good = page(2);
        assert_ne!(
            checksum(good, 3),
            stored_checksum(good),
            "a page moved to another block fails"
        );
        assert_eq!(check(good, 3, Lsn(u64::MAX)), PageCheck::Invalid);
        // Segment 1's first block is RELSEG_SIZE (131072 with 1 GiB segments) + 0: not block 0.
        assert_ne!(checksum(page(0), 131_072), stored_checksum(page(0)));
        for offset in [0, 7, 10, 200, 4000, BLOCK_SIZE - 1] {
            let mut bad = good.to_vec();
            bad[offset] ^= 0x04;
            assert_eq!(
                check(&bad, 2, Lsn(u64::MAX)),
                PageCheck::Invalid,
                "a flipped bit at {offset} is found"
            );
        }
        let mut rewritten = good.to_vec();
        rewritten[8] ^= 0xff;
        assert_eq!(
            checksum(&rewritten, 2),
            checksum(good, 2),
            "pd_checksum itself is not summed"
        );
    }

    #[test]
    fn new_pages_pass_only_when_all_zero() {
        let zero = vec![0u8; BLOCK_SIZE];
        assert_eq!(check(&zero, 7, Lsn(0)), PageCheck::Valid);
        assert_eq!(check(&zero, 7, Lsn(u64::MAX)), PageCheck::Valid);
        let mut dirty = zero.clone();
        dirty[5000] = 1;
        assert_eq!(check(&dirty, 7, Lsn(u64::MAX)), PageCheck::Invalid);
    }

    #[test]
    fn pages_changed_since_the_backup_started_are_skipped() {
        let mut bad = page(1).to_vec();
        bad[4000] ^= 0x55;
        let changed = lsn(&bad);
        assert_eq!(changed, Lsn(0x16768b8));
        assert_eq!(check(&bad, 1, changed), PageCheck::Skipped, "at the start");
        assert_eq!(check(&bad, 1, Lsn(changed.0 - 1)), PageCheck::Skipped, "after it");
        assert_eq!(check(&bad, 1, Lsn(changed.0 + 1)), PageCheck::Invalid, "before it");
    }

    #[test]
    fn relation_files_are_told_from_the_others() {
        for (path, segment) in [
            ("base/5/16384", 0),
            ("base/5/16384.3", 3),
            ("base/5/16384_fsm", 0),
            ("base/5/16384_vm.1", 1),
            ("global/1262", 0),
            ("pg_tblspc/16400/PG_15_202209061/5/16385", 0),
            ("pg_tblspc/16400/PG_15_202209061/5/16385_fsm.2", 2),
        ] {
            assert_eq!(relation_file(path), Some(segment), "{path}");
        }
        for path in [
            "global/pg_control",
            "global/pg_filenode.map",
            "base/5/pg_filenode.map",
            "base/5/PG_VERSION",
            "base/5/16384_init",
            "base/5/16384_x",
            "base/5/16384.",
            "base/5/t3_16384",
            "pg_xact/0000",
            "pg_multixact/offsets/0000",
            "base/16384",
            "PG_VERSION",
            "pg_tblspc/16400/PG_15_202209061/5/pg_filenode.map",
        ] {
            assert_eq!(relation_file(path), None, "{path}");
        }
    }

    /// The cost of checking pages, for docs/benchmarks.md: every relation file of the data
    /// directory `PITR_BENCH_PGDATA`, read into memory first, then checked as the backup checks
    /// them. `cargo test --release -p pitr --lib page_check_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement on a real data directory"]
    fn page_check_throughput() {
        let Some(pgdata) = std::env::var_os("PITR_BENCH_PGDATA") else {
            return;
        };
        let mut files = Vec::new();
        let mut dirs = vec![std::path::PathBuf::from(&pgdata)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                let rel = path.strip_prefix(&pgdata).unwrap().to_string_lossy().into_owned();
                if entry.file_type().unwrap().is_dir() {
                    dirs.push(path);
                } else if let Some(segment) = relation_file(&rel) {
                    files.push((segment, std::fs::read(&path).unwrap()));
                }
            }
        }
        let bytes: usize = files.iter().map(|(_, f)| f.len()).sum();
        for round in 0..3 {
            let started = std::time::Instant::now();
            let mut valid = 0u64;
            for (segment, data) in &files {
                for (index, page) in data.chunks_exact(BLOCK_SIZE).enumerate() {
                    let block = segment * 131_072 + index as u32;
                    valid += u64::from(check(page, block, Lsn(u64::MAX)) == PageCheck::Valid);
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "round {round}: {} pages ({valid} valid) in {seconds:.3} s: {:.0} MiB/s, {:.2} µs per page",
                bytes / BLOCK_SIZE,
                bytes as f64 / seconds / (1 << 20) as f64,
                seconds * 1e6 / (bytes / BLOCK_SIZE) as f64
            );
        }
    }
}
