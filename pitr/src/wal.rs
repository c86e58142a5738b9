//! PostgreSQL's WAL formats, in one place: the `Lsn` newtype, timelines, segment sizes and numbers,
//! the names of archived files (`WalFileName`), and validation of a segment's long page header;
//! [`records`] reads the records inside a segment.
//!
//! Names follow PostgreSQL's C sources (`xlog_internal.h`) so they can be grepped against them.
//! Everything here is pure: no I/O, no server.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pg::PgVersion;

pub mod records;

/// Where a relation's storage lives, as WAL records name it: PostgreSQL's `RelFileNode`
/// (`RelFileLocator` since 16), three OIDs: tablespace, database (0 for shared catalogs) and
/// the relfilenode (`relfilenumber`), the file name under the database's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RelFileLocator {
    /// `spcOid`: the tablespace (1663 `pg_default`, 1664 `pg_global`).
    pub spc: u32,
    /// `dbOid`: the database, 0 for a shared catalog.
    pub db: u32,
    /// `relNumber`: the file's number.
    pub rel: u32,
}

impl fmt::Display for RelFileLocator {
    /// As pg_waldump prints it: `spc/db/rel`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.spc, self.db, self.rel)
    }
}

/// A WAL location (`XLogRecPtr`): a byte position in the WAL stream. Serialized in its text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Lsn(pub u64);

impl From<Lsn> for String {
    fn from(lsn: Lsn) -> String {
        lsn.to_string()
    }
}

impl TryFrom<String> for Lsn {
    type Error = Error;

    fn try_from(text: String) -> Result<Lsn> {
        text.parse()
    }
}

impl fmt::Display for Lsn {
    /// PostgreSQL's text form `%X/%X` (upper case, no padding).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = Error;

    /// Parses `%X/%X`, and the zero-padded `%X/%08X` of PostgreSQL 19.
    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::InvalidInput(format!("'{s}' is not an LSN (expected the form 16/B374D848)"));
        let (hi, lo) = s.split_once('/').ok_or_else(invalid)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 {
                return Err(invalid());
            }
            u32::from_str_radix(p, 16).map_err(|_| invalid())
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

/// A timeline id (`TimeLineID`). Timeline 1 is the one initdb creates.
pub type TimelineId = u32;

/// The WAL segment size fixed at initdb (`wal_segment_size`): a power of two from 1 MiB to 1 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSize(u32);

impl SegmentSize {
    /// `WalSegMinSize`.
    pub const MIN: u32 = 1 << 20;
    /// `WalSegMaxSize`.
    pub const MAX: u32 = 1 << 30;
    /// The default, 16 MiB.
    pub const DEFAULT: SegmentSize = SegmentSize(16 << 20);

    /// Accepts exactly the sizes PostgreSQL accepts (`IsValidWalSegSize`).
    pub fn new(bytes: u32) -> Option<SegmentSize> {
        (bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes)).then_some(SegmentSize(bytes))
    }

    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        self.0
    }

    /// `XLogSegmentsPerXLogId`: segments per 4 GiB "log id".
    pub fn segments_per_xlog_id(self) -> u64 {
        0x1_0000_0000 / u64::from(self.0)
    }

    /// `XLByteToSeg`: the segment holding `lsn` (an LSN on a boundary belongs to the next segment).
    pub fn segment_of(self, lsn: Lsn) -> u64 {
        lsn.0 / u64::from(self.0)
    }

    /// `XLByteToPrevSeg`: the segment holding the byte before `lsn`, for end pointers such as the
    /// result of `pg_backup_stop` or `pg_switch_wal`.
    pub fn segment_before(self, lsn: Lsn) -> u64 {
        lsn.0.saturating_sub(1) / u64::from(self.0)
    }

    /// `XLogSegNoOffsetToRecPtr(segno, 0)`: the first LSN of a segment.
    pub fn segment_start(self, segno: u64) -> Lsn {
        Lsn(segno * u64::from(self.0))
    }
}

/// A WAL segment: timeline plus segment number. Its name depends on the segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    /// The timeline in the file name.
    pub timeline: TimelineId,
    /// `XLogSegNo`.
    pub segno: u64,
}

impl Segment {
    /// `XLogFileName`: `%08X%08X%08X` of timeline, log id and segment within the log id.
    pub fn file_name(self, size: SegmentSize) -> String {
        let per_id = size.segments_per_xlog_id();
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.segno / per_id,
            self.segno % per_id
        )
    }
}

/// The name of a file PostgreSQL hands to `archive_command`, as the 24 hex characters split in
/// their three parts. The segment number needs the segment size, so it is derived on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentName {
    /// Timeline (first 8 hex characters).
    pub timeline: TimelineId,
    /// Log id (next 8).
    pub log: u32,
    /// Segment within the log id (last 8).
    pub seg: u32,
}

impl SegmentName {
    /// The segment this name denotes for `size`, or `None` when the last part is out of range
    /// for that size (e.g. `…000000FF` does not exist with 64 MiB segments).
    pub fn segment(self, size: SegmentSize) -> Option<Segment> {
        let per_id = size.segments_per_xlog_id();
        (u64::from(self.seg) < per_id).then(|| Segment {
            timeline: self.timeline,
            segno: u64::from(self.log) * per_id + u64::from(self.seg),
        })
    }

    fn parse(hex24: &str) -> Option<SegmentName> {
        if hex24.len() != 24 || !is_upper_hex(hex24) {
            return None;
        }
        let part = |i: usize| u32::from_str_radix(&hex24[i..i + 8], 16).ok();
        Some(SegmentName {
            timeline: part(0)?,
            log: part(8)?,
            seg: part(16)?,
        })
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

/// The kinds of file that PostgreSQL archives (postgres-facts §1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalFileName {
    /// A completed segment, `TTTTTTTTXXXXXXXXYYYYYYYY`.
    Segment(SegmentName),
    /// A timeline history file, `TTTTTTTT.history`.
    History(TimelineId),
    /// A backup history file, `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup` (offset of the start LSN).
    Backup(SegmentName, u32),
    /// The last, partly filled segment of a timeline that ended, `TTTTTTTTXXXXXXXXYYYYYYYY.partial`.
    Partial(SegmentName),
}

impl WalFileName {
    /// Parses a bare file name (no directory), exactly as PostgreSQL writes them: upper-case hex.
    pub fn parse(name: &str) -> Result<WalFileName> {
        Self::try_parse(name).ok_or_else(|| {
            Error::InvalidInput(format!(
                "'{name}' is not a WAL file name: expected a segment (24 upper-case hex digits), \
                 TTTTTTTT.history, <segment>.OOOOOOOO.backup or <segment>.partial"
            ))
        })
    }

    fn try_parse(name: &str) -> Option<WalFileName> {
        if let Some(tli) = name.strip_suffix(".history") {
            return (tli.len() == 8 && is_upper_hex(tli))
                .then(|| u32::from_str_radix(tli, 16).ok())
                .flatten()
                .map(WalFileName::History);
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            return SegmentName::parse(seg).map(WalFileName::Partial);
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, offset) = rest.split_once('.')?;
            if offset.len() != 8 || !is_upper_hex(offset) {
                return None;
            }
            return Some(WalFileName::Backup(
                SegmentName::parse(seg)?,
                u32::from_str_radix(offset, 16).ok()?,
            ));
        }
        SegmentName::parse(name).map(WalFileName::Segment)
    }

    /// The segment whose page header can be validated: plain and partial segments.
    pub fn segment_name(&self) -> Option<SegmentName> {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) => Some(*s),
            WalFileName::History(_) | WalFileName::Backup(..) => None,
        }
    }

    /// The timeline the file belongs to.
    pub fn timeline(&self) -> TimelineId {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) | WalFileName::Backup(s, _) => s.timeline,
            WalFileName::History(tli) => *tli,
        }
    }

    /// Checks that `raw` is what this name says: a segment or `.partial` file by its long page
    /// header (which is returned), a history file by parsing it, a backup history file by its
    /// first line.
    pub fn validate_content(&self, raw: &[u8]) -> std::result::Result<Option<LongPageHeader>, String> {
        match self {
            WalFileName::Segment(segment) | WalFileName::Partial(segment) => {
                LongPageHeader::validate(*segment, raw).map(Some)
            }
            WalFileName::History(timeline) => check_history(*timeline, raw).map(|_| None),
            WalFileName::Backup(segment, offset) => check_backup_history(*segment, *offset, raw).map(|()| None),
        }
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(s) => write!(f, "{s}"),
            WalFileName::History(tli) => write!(f, "{tli:08X}.history"),
            WalFileName::Backup(s, offset) => write!(f, "{s}.{offset:08X}.backup"),
            WalFileName::Partial(s) => write!(f, "{s}.partial"),
        }
    }
}

fn is_upper_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// One entry of a timeline history file: the parent timeline ended at `switchpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The timeline that ended.
    pub parent: TimelineId,
    /// Where it ended: the first LSN of the child timeline.
    pub switchpoint: Lsn,
    /// Why (the recovery stop reason), as PostgreSQL wrote it.
    pub reason: String,
}

/// Parses a timeline history file (`TTTTTTTT.history`) as `readTimeLineHistory` does: blank
/// lines and `#` comments aside, each line is `parentTLI <tab> switchpoint <tab> reason`, with
/// increasing timelines.
pub fn parse_history(raw: &[u8]) -> std::result::Result<Vec<TimelineSwitch>, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "not a timeline history file (not text)".to_string())?;
    let mut switches: Vec<TimelineSwitch> = Vec::new();
    for line in text
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut fields = line.splitn(3, '\t');
        let parent = fields.next().and_then(|t| t.parse::<TimelineId>().ok());
        let switchpoint = fields.next().and_then(|l| l.parse::<Lsn>().ok());
        let (Some(parent), Some(switchpoint)) = (parent, switchpoint) else {
            return Err(format!("not a timeline history file: bad line '{line}'"));
        };
        if switches.last().is_some_and(|prev| prev.parent >= parent) {
            return Err(format!("timeline history is not increasing at '{line}'"));
        }
        let reason = fields.next().unwrap_or_default().to_string();
        switches.push(TimelineSwitch {
            parent,
            switchpoint,
            reason,
        });
    }
    Ok(switches)
}

/// A history file as archive-push accepts it: what [`parse_history`] reads, with every parent
/// timeline below `timeline`, the one the file is named after (`readTimeLineHistory` refuses
/// anything else: "Timeline IDs must be less than child timeline's ID").
fn check_history(timeline: TimelineId, raw: &[u8]) -> std::result::Result<Vec<TimelineSwitch>, String> {
    let switches = parse_history(raw)?;
    if let Some(last) = switches.last().filter(|s| s.parent >= timeline) {
        return Err(format!(
            "the history of timeline {timeline} names parent timeline {}, which is not below it",
            last.parent
        ));
    }
    if timeline > 1 && switches.is_empty() {
        return Err(format!("the history of timeline {timeline} names no parent timeline"));
    }
    Ok(switches)
}

/// A backup history file (`<segment>.<offset>.backup`, written by `pg_backup_stop`) must start
/// with `START WAL LOCATION: <lsn> (file <segment>)`, and that LSN must be the place the name
/// says: in that segment, at that offset.
fn check_backup_history(segment: SegmentName, offset: u32, raw: &[u8]) -> std::result::Result<(), String> {
    let refuse = || {
        format!(
            "not the backup history file it is named after: its first line must be \
             'START WAL LOCATION: <lsn> (file {segment})' with the LSN of segment {segment}, offset {offset:X}"
        )
    };
    let first = raw.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(first).map_err(|_| refuse())?;
    let rest = line.strip_prefix("START WAL LOCATION: ").ok_or_else(refuse)?;
    let (lsn, file) = rest.split_once(" (file ").ok_or_else(refuse)?;
    let lsn: Lsn = lsn.parse().map_err(|_| refuse())?;
    if file.strip_suffix(')') != Some(segment.to_string().as_str()) {
        return Err(refuse());
    }
    // The name's segment and offset are the LSN's for one of the segment sizes PostgreSQL allows.
    let places_it = (SegmentSize::MIN.trailing_zeros()..=SegmentSize::MAX.trailing_zeros()).any(|bits| {
        let size = SegmentSize(1 << bits);
        segment
            .segment(size)
            .is_some_and(|s| size.segment_of(lsn) == s.segno && lsn.0 % u64::from(size.bytes()) == u64::from(offset))
    });
    if places_it {
        Ok(())
    } else {
        Err(refuse())
    }
}

/// `XLP_LONG_HEADER`: set on the first page of every segment.
const XLP_LONG_HEADER: u16 = 0x0002;
/// `XLP_ALL_FLAGS` of PostgreSQL 14–18 (12.9+/13.5+ too).
const XLP_ALL_FLAGS: u16 = 0x000F;
/// `SizeOfXLogLongPHD`.
pub const SIZE_OF_XLOG_LONG_PHD: usize = 40;

/// The fields of a segment's long page header (`XLogLongPageHeaderData`) that identify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    /// The major version that wrote the segment, from `xlp_magic`.
    pub pg_version: u32,
    /// `xlp_tli`: the timeline of the first record on the page.
    pub timeline: TimelineId,
    /// `xlp_pageaddr`: the LSN of the page's first byte.
    pub page_address: Lsn,
    /// `xlp_sysid`: the cluster's system identifier.
    pub system_identifier: u64,
    /// `xlp_seg_size`.
    pub segment_size: SegmentSize,
}

impl LongPageHeader {
    /// Decodes and checks the header of a whole segment file, in the order of PostgreSQL's
    /// `XLogReaderValidatePageHeader`: magic, flags, segment size (which must also be the file's
    /// length), block size, page address against the file name, and the timeline.
    pub fn validate(name: SegmentName, bytes: &[u8]) -> std::result::Result<LongPageHeader, String> {
        LongPageHeader::validate_start(name, bytes, bytes.len() as u64)
    }

    /// [`LongPageHeader::validate`] from the start of a segment file of `file_len` bytes.
    pub fn validate_start(
        name: SegmentName,
        bytes: &[u8],
        file_len: u64,
    ) -> std::result::Result<LongPageHeader, String> {
        let header = bytes
            .get(..SIZE_OF_XLOG_LONG_PHD)
            .ok_or_else(|| format!("file is {} bytes, too short for a WAL page header", bytes.len()))?;
        let u16_at = |o: usize| u16::from_le_bytes([header[o], header[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));

        let magic = u16_at(0);
        let pg_version = PgVersion::from_page_magic(magic)
            .ok_or_else(|| {
                format!(
                    "unknown WAL page magic 0x{magic:04X} (not PostgreSQL {}-{} WAL)",
                    PgVersion::OLDEST,
                    PgVersion::NEWEST
                )
            })?
            .major();
        let info = u16_at(2);
        if info & XLP_LONG_HEADER == 0 || info & !XLP_ALL_FLAGS != 0 {
            return Err(format!("invalid page flags 0x{info:04X} on the first page"));
        }
        let seg_bytes = u32_at(32);
        let segment_size = SegmentSize::new(seg_bytes)
            .ok_or_else(|| format!("invalid segment size {seg_bytes} in the page header"))?;
        if file_len != u64::from(seg_bytes) {
            return Err(format!(
                "file is {file_len} bytes but its header says the segment size is {seg_bytes}"
            ));
        }
        let block_size = u32_at(36);
        if block_size == 0 || seg_bytes % block_size != 0 {
            return Err(format!("invalid WAL block size {block_size} in the page header"));
        }
        let segment = name
            .segment(segment_size)
            .ok_or_else(|| format!("the name {name} does not exist with {} MiB segments", seg_bytes >> 20))?;
        let page_address = Lsn(u64_at(8));
        let expected = segment_size.segment_start(segment.segno);
        if page_address != expected {
            return Err(format!(
                "page address {page_address} does not match the file name (expected {expected}): \
                 the file holds another segment"
            ));
        }
        let timeline = u32_at(4);
        if timeline == 0 || timeline > name.timeline {
            return Err(format!(
                "page timeline {timeline} is not valid for a file of timeline {}",
                name.timeline
            ));
        }
        Ok(LongPageHeader {
            pg_version,
            timeline,
            page_address,
            system_identifier: u64_at(24),
            segment_size,
        })
    }
}

#[cfg(test)]
mod tests;
