//! The status page: one self-contained HTML page that shows at a glance what the repository
//! can recover to. A picture (inline SVG) of the recoverable window per timeline, with the
//! backups by tier, the restore points, the drills and the WAL gaps; beside it the current
//! alerts, the last verification and the newest drill of each tier. The daemon serves it at `/`,
//! `pitr info --html` writes it to a file.
//!
//! [`gather`] reads what the page shows from the current generation of the repository, the
//! listing only (no stored object is checked: the current alerts are those the listing shows,
//! [`crate::verify::listing_alerts`]), and the last line of verify's log; [`render`] is a pure
//! function of that. The page loads nothing and runs no script: inline CSS and SVG, every
//! string from the repository escaped.
//!
//! - `render`: the HTML page and its timeline picture.

mod render;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};

pub use render::render;

use crate::backup::Tier;
use crate::drill::{self, DrillRecord};
use crate::error::{Error, Result};
use crate::fsio::{Dir, Perms};
use crate::info::{summarize, Holdings, Window};
use crate::repo::Repo;
use crate::restore_point::RestorePoint;
use crate::verify::{listing_alerts, Alert, Gap, Thresholds};
use crate::wal::TimelineId;

/// How much of the end of verify's log is read for its last line.
const LOG_TAIL: u64 = 16 * 1024;

/// The drills shown on the picture: the newest ones.
const DRILLS_SHOWN: usize = 50;

/// What the page judges alerts by and where verify leaves its trace (the settings).
#[derive(Debug, Clone, Default)]
pub struct StatusSources {
    /// The freshness limits.
    pub thresholds: Thresholds,
    /// The tiers that should hold backups.
    pub expected_tiers: Vec<Tier>,
    /// Verify's log, whose last line is the last verification.
    pub verify_log: Option<PathBuf>,
}

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct StatusPage {
    /// When the page was made.
    pub now: DateTime<Utc>,
    /// Where the repository is.
    pub repository: String,
    /// The recoverable windows per timeline.
    pub windows: Vec<Window>,
    /// The backups whose manifest reads, oldest first.
    pub backups: Vec<BackupMark>,
    /// The restore points.
    pub restore_points: Vec<RestorePoint>,
    /// The WAL gaps, placed in time.
    pub gaps: Vec<GapSpan>,
    /// The alerts the listing shows, critical first.
    pub alerts: Vec<Alert>,
    /// The newest drills, oldest first.
    pub drills: Vec<DrillRecord>,
    /// The last line of verify's log.
    pub last_verify: Option<String>,
    /// What could not be read.
    pub unreadable: Vec<String>,
}

impl StatusPage {
    /// The page of a repository that cannot be read: why.
    pub fn unreadable(repository: String, error: String, now: DateTime<Utc>) -> StatusPage {
        StatusPage {
            now,
            repository,
            windows: Vec::new(),
            backups: Vec::new(),
            restore_points: Vec::new(),
            gaps: Vec::new(),
            alerts: Vec::new(),
            drills: Vec::new(),
            last_verify: None,
            unreadable: vec![error],
        }
    }
}

/// One backup on the picture.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupMark {
    /// Its id.
    pub id: String,
    /// Its tier.
    pub tier: Tier,
    /// The timeline it was taken on.
    pub timeline: TimelineId,
    /// When it became consistent.
    pub stop_time: DateTime<Utc>,
}

/// A run of missing WAL segments, between when the segment before it and the one after it
/// were archived.
#[derive(Debug, Clone, PartialEq)]
pub struct GapSpan {
    /// The missing segments.
    pub gap: Gap,
    /// When the last segment before the gap was archived (else `to`).
    pub from: DateTime<Utc>,
    /// When the first segment after it was archived (else the page's time).
    pub to: DateTime<Utc>,
}

/// Reads what the page shows from the current generation of `repo`, as of `now`.
pub fn gather(repo: &Repo, sources: &StatusSources, now: DateTime<Utc>) -> Result<StatusPage> {
    let current = repo.pin()?;
    let holdings = Holdings::read(&current)?;
    let summary = summarize(&holdings, now);
    let drills = drill::history(&current)?;
    let (gaps, alerts) = listing_alerts(&holdings, &drills, &sources.thresholds, &sources.expected_tiers, now);
    let archived = holdings.segments();
    let mut unreadable = summary.unreadable;
    unreadable.extend(drills.unreadable);
    let shown_from = drills.drills.len().saturating_sub(DRILLS_SHOWN);
    Ok(StatusPage {
        now,
        repository: summary.repository,
        windows: summary.windows,
        backups: holdings
            .backups()
            .into_iter()
            .map(|m| BackupMark {
                id: m.id.clone(),
                tier: m.tier,
                timeline: m.timeline,
                stop_time: m.stop_time,
            })
            .collect(),
        restore_points: summary.restore_points,
        gaps: gaps.into_iter().map(|gap| place_gap(gap, &archived, now)).collect(),
        alerts,
        drills: drills.drills[shown_from..].to_vec(),
        last_verify: sources.verify_log.as_deref().and_then(last_line),
        unreadable,
    })
}

/// Writes `html` to `path` crash-safely (a temporary file, fsynced, renamed over it), mode
/// 0600 whatever the umask: the page shows the backups' metadata.
pub fn write_page(path: &Path, html: &str) -> Result<()> {
    let refused = |why: &str| {
        Error::InvalidInput(format!(
            "cannot write the status page to {}: {why}; name a file, e.g. /var/lib/pitr/status.html",
            path.display()
        ))
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| refused("not a file name"))?;
    let dir_path = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = Dir::open(dir_path).map_err(Error::io("open the directory", dir_path))?;
    dir.replace(name, html.as_bytes(), &Perms::private(None))
        .map_err(Error::io("write", path))
}

/// Places `gap` between the archive times of the segments around it.
fn place_gap(gap: Gap, archived: &BTreeMap<(TimelineId, u64), SystemTime>, now: DateTime<Utc>) -> GapSpan {
    let timeline = gap.timeline;
    let before = archived
        .range((timeline, 0)..(timeline, gap.first_segno))
        .next_back()
        .map(|(_, at)| DateTime::<Utc>::from(*at));
    let after = archived
        .range((timeline, gap.last_segno + 1)..=(timeline, u64::MAX))
        .next()
        .map(|(_, at)| DateTime::<Utc>::from(*at));
    let to = after.unwrap_or(now);
    GapSpan {
        gap,
        from: before.map_or(to, |at| at.min(to)),
        to,
    }
}

/// The last line of the log at `path` (read from its last [`LOG_TAIL`] bytes; a symbolic link
/// is not followed); `None` when there is none or it cannot be read.
fn last_line(path: &Path) -> Option<String> {
    let mut file = File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL))).ok()?;
    let mut tail = Vec::new();
    file.take(LOG_TAIL).read_to_end(&mut tail).ok()?;
    let tail = String::from_utf8_lossy(&tail);
    tail.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use chrono::TimeZone;

    use super::*;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 3, 0, second).unwrap()
    }

    fn gap(first_segno: u64, last_segno: u64) -> Gap {
        Gap {
            timeline: 1,
            first: format!("{first_segno}"),
            last: format!("{last_segno}"),
            segments: last_segno - first_segno + 1,
            first_segno,
            last_segno,
        }
    }

    #[test]
    fn a_gap_lies_between_the_segments_archived_around_it() {
        let archived: BTreeMap<_, _> = [((1, 3), at(3)), ((1, 4), at(4)), ((1, 7), at(7)), ((2, 5), at(50))]
            .into_iter()
            .map(|(key, t)| (key, SystemTime::from(t)))
            .collect();
        let span = place_gap(gap(5, 6), &archived, at(59));
        assert_eq!((span.from, span.to), (at(4), at(7)));
        let open = place_gap(gap(8, 8), &archived, at(59));
        assert_eq!((open.from, open.to), (at(7), at(59)), "nothing archived after it yet");
        let first = place_gap(gap(1, 2), &archived, at(59));
        assert_eq!((first.from, first.to), (at(3), at(3)));
    }

    #[test]
    fn the_page_is_written_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.html");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_page(&path, "<p>new</p>").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "<p>new</p>");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let err = write_page(&dir.path().join(".."), "x").unwrap_err();
        assert!(err.to_string().contains("not a file name"), "{err}");
    }

    #[test]
    fn the_last_verification_is_the_last_line_of_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verify.log");
        let mut log = File::create(&path).unwrap();
        for n in 0..2000 {
            writeln!(log, "2026-12-07T03:00:00Z verify all: ok (0 alerts) run {n}").unwrap();
        }
        writeln!(log).unwrap();
        assert_eq!(
            last_line(&path).as_deref(),
            Some("2026-12-07T03:00:00Z verify all: ok (0 alerts) run 1999")
        );
        assert_eq!(last_line(&dir.path().join("missing")), None);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(last_line(&link), None, "a symbolic link is not followed");
    }
}
