//! The repository's JSON records (`repo.json`, backup manifests, restore point records) with a
//! checksum, so that a flipped bit anywhere in them is found instead of read as another value.
//!
//! A record is pretty-printed JSON whose last member is `"checksum_sha256"`: the SHA-256 of every
//! byte before the comma that introduces it, after PostgreSQL's own backup manifest, whose
//! `Manifest-Checksum` covers the bytes before it (src/backend/backup/backup_manifest.c). The
//! file stays plain JSON that an operator can read (a deduplicated backup's manifest stores this
//! JSON compressed: [`crate::backup::manifest::Manifest::to_bytes`]). Records written before checksums existed
//! carry none and are read as they are; a damaged checksum member is never mistaken for one.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// What introduces the checksum member, after the covered bytes.
const MARKER: &str = ",\n  \"checksum_sha256\": \"";
/// What follows the 64 hex digits.
const TAIL: &str = "\"\n}\n";

/// `value` as a checksummed JSON record.
pub fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    let pretty = serde_json::to_vec_pretty(value).expect("records serialize");
    let covered = pretty
        .strip_suffix(b"\n}")
        .expect("a record is a non-empty JSON object");
    let mut out = covered.to_vec();
    out.extend_from_slice(MARKER.as_bytes());
    out.extend_from_slice(hex(&Sha256::digest(covered)).as_bytes());
    out.extend_from_slice(TAIL.as_bytes());
    out
}

/// Parses a record written by [`to_vec`] (or an older one without checksum), verifying the
/// checksum first; `what` names it in errors.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    let corrupt = |reason: String| Error::Corrupt {
        what: what.to_string(),
        reason,
    };
    let Some(at) = find_last(bytes, MARKER.as_bytes()) else {
        if find_last(bytes, b"checksum_sha256").is_some() {
            return Err(corrupt("its checksum member is damaged".into()));
        }
        return serde_json::from_slice(bytes).map_err(|e| corrupt(format!("unreadable JSON ({e})")));
    };
    let covered = &bytes[..at];
    let rest = &bytes[at + MARKER.len()..];
    let recorded = rest.get(..64).and_then(|h| std::str::from_utf8(h).ok());
    let tail_ok = rest.get(64..).is_some_and(|t| t == TAIL.as_bytes());
    let (Some(recorded), true) = (recorded, tail_ok) else {
        return Err(corrupt("its checksum member is damaged".into()));
    };
    let actual = hex(&Sha256::digest(covered));
    if recorded != actual {
        return Err(corrupt(format!(
            "SHA-256 {actual} of its content does not match the recorded {recorded}"
        )));
    }
    let mut json = covered.to_vec();
    json.extend_from_slice(b"\n}");
    serde_json::from_slice(&json).map_err(|e| corrupt(format!("unreadable JSON ({e})")))
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Record {
        name: String,
        lsn: u64,
        items: Vec<u32>,
    }

    fn record() -> Record {
        Record {
            name: "before_migration".into(),
            lsn: 0x1_0000_0028,
            items: vec![1, 2, 3],
        }
    }

    #[test]
    fn records_round_trip_and_stay_plain_json() {
        let bytes = to_vec(&record());
        assert_eq!(from_slice::<Record>(&bytes, "r").unwrap(), record());
        let plain: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(plain["checksum_sha256"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = to_vec(&record());
        for offset in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[offset] ^= 1 << bit;
                assert!(
                    from_slice::<Record>(&damaged, "r").is_err(),
                    "bit {bit} of byte {offset} ({:?}) went undetected",
                    bytes[offset] as char
                );
            }
        }
    }

    #[test]
    fn records_without_checksum_still_read() {
        let old = serde_json::to_vec_pretty(&record()).unwrap();
        assert_eq!(from_slice::<Record>(&old, "r").unwrap(), record());
    }
}
