//! Test support: small synthetic segments with valid page headers and CRC-32C'd records, for
//! the tests of what reads archived WAL (the recovery planner's summaries, the inspector).

/// A 1 MiB segment of PostgreSQL 15 holding commits of transactions `xids` (at second `n`
/// past 2000-01-01 for the n-th) and, when `switch`, a switch record; `bad_crc` damages the
/// last commit's CRC.
pub(crate) fn synthetic_segment(segno: u64, xids: &[u32], switch: bool, bad_crc: bool) -> Vec<u8> {
    const SIZE: u32 = 1 << 20;
    let base = segno * u64::from(SIZE);
    let mut raw = vec![0u8; SIZE as usize];
    raw[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    raw[2..4].copy_from_slice(&2u16.to_le_bytes());
    raw[4..8].copy_from_slice(&1u32.to_le_bytes());
    raw[8..16].copy_from_slice(&base.to_le_bytes());
    raw[24..32].copy_from_slice(&7u64.to_le_bytes());
    raw[32..36].copy_from_slice(&SIZE.to_le_bytes());
    raw[36..40].copy_from_slice(&8192u32.to_le_bytes());
    let mut at = 40usize;
    let mut prev = 0u64;
    let mut put = |rmid: u8, info: u8, xid: u32, main: &[u8], damage: bool| {
        let mut r = vec![0u8; 24];
        if !main.is_empty() {
            r.extend_from_slice(&[255, main.len() as u8]);
            r.extend_from_slice(main);
        }
        let total = r.len() as u32;
        r[0..4].copy_from_slice(&total.to_le_bytes());
        r[4..8].copy_from_slice(&xid.to_le_bytes());
        r[8..16].copy_from_slice(&prev.to_le_bytes());
        r[16] = info;
        r[17] = rmid;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&r[24..]), &r[..20]) ^ u32::from(damage);
        r[20..24].copy_from_slice(&crc.to_le_bytes());
        raw[at..at + r.len()].copy_from_slice(&r);
        prev = base + at as u64;
        at = (at + r.len()).div_ceil(8) * 8;
    };
    for (n, xid) in xids.iter().enumerate() {
        let damage = bad_crc && n + 1 == xids.len();
        put(1, 0, *xid, &(i64::from(*xid) * 1_000_000).to_le_bytes(), damage);
    }
    if switch {
        put(0, 0x40, 0, &[], false);
    }
    raw
}
