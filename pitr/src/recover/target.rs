//! Recovery targets and the `recovery_target_*` settings they become.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::wal::Lsn;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Target {
    /// The last commit at or before a time.
    Time {
        /// The time.
        time: DateTime<Utc>,
        /// The operator gave no zone and UTC was assumed.
        assumed_utc: bool,
    },
    /// A restore point, by name.
    Name(String),
    /// A WAL location.
    Lsn(Lsn),
    /// A transaction id.
    Xid(u64),
    /// The backup's consistency point.
    Immediate,
    /// Everything archived.
    Latest,
}

impl Target {
    /// Parses `--target-time`: RFC 3339, or PostgreSQL's `YYYY-MM-DD HH:MM:SS[.ffffff]±HH[:MM]`;
    /// a time without a zone is taken as UTC (and the plan says so). Zone abbreviations are
    /// refused, as PostgreSQL refuses them in recovery_target_time.
    pub fn parse_time(text: &str) -> Result<Target> {
        let text = text.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            return Ok(Target::Time {
                time: t.with_timezone(&Utc),
                assumed_utc: false,
            });
        }
        for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
            if let Ok(t) = DateTime::parse_from_str(text, format) {
                return Ok(Target::Time {
                    time: t.with_timezone(&Utc),
                    assumed_utc: false,
                });
            }
        }
        for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
            if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
                return Ok(Target::Time {
                    time: t.and_utc(),
                    assumed_utc: true,
                });
            }
        }
        Err(Error::InvalidInput(format!(
            "'{text}' is not a time: use RFC 3339 (2026-11-25T10:00:00+01:00) or 2026-11-25 10:00:00+01 \
             (numeric offsets; zone names like CET are not accepted)"
        )))
    }

    /// Parses `--before`: the transaction to stop just before, by its id or by the LSN of its
    /// commit record (both as `pitr wal events` prints them). Recovery then stops exclusively at
    /// it: `recovery_target_xid` or `recovery_target_lsn` with `recovery_target_inclusive = off`.
    pub fn parse_before(text: &str) -> Result<Target> {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(Target::Xid)
                .map_err(|_| Error::InvalidInput(format!("transaction id {text} is out of range")));
        }
        if text.contains('/') {
            return text.parse().map(Target::Lsn);
        }
        Err(Error::InvalidInput(format!(
            "--before '{text}' is neither a transaction id nor an LSN: give the xid or the commit LSN \
             `pitr wal events` shows for the transaction to undo"
        )))
    }

    /// Parses `--target latest|immediate`.
    pub fn parse_keyword(text: &str) -> Result<Target> {
        match text {
            "latest" => Ok(Target::Latest),
            "immediate" => Ok(Target::Immediate),
            other => Err(Error::InvalidInput(format!(
                "unknown --target '{other}': use immediate or latest"
            ))),
        }
    }

    /// The `recovery_target*` settings for this target; `exclusive` turns
    /// recovery_target_inclusive off where it applies (time, LSN, xid).
    pub fn settings(&self, exclusive: bool) -> Vec<(&'static str, String)> {
        let mut settings = match self {
            Target::Time { time, .. } => {
                vec![(
                    "recovery_target_time",
                    time.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
                )]
            }
            Target::Name(name) => vec![("recovery_target_name", name.clone())],
            Target::Lsn(lsn) => vec![("recovery_target_lsn", lsn.to_string())],
            Target::Xid(xid) => vec![("recovery_target_xid", xid.to_string())],
            Target::Immediate => vec![("recovery_target", "immediate".to_string())],
            Target::Latest => vec![],
        };
        if exclusive && matches!(self, Target::Time { .. } | Target::Lsn(_) | Target::Xid(_)) {
            settings.push(("recovery_target_inclusive", "off".to_string()));
        }
        settings
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Time { time, .. } => write!(f, "time {}", time.format("%Y-%m-%d %H:%M:%S%.f UTC")),
            Target::Name(name) => write!(f, "restore point '{name}'"),
            Target::Lsn(lsn) => write!(f, "LSN {lsn}"),
            Target::Xid(xid) => write!(f, "transaction {xid}"),
            Target::Immediate => f.write_str("the backup's consistency point"),
            Target::Latest => f.write_str("the end of the archived WAL"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_takes_a_transaction_id_or_a_commit_lsn() {
        assert_eq!(Target::parse_before("1234").unwrap(), Target::Xid(1234));
        assert_eq!(
            Target::parse_before(" 0/3A0001C8 ").unwrap(),
            Target::Lsn(Lsn(0x3A00_01C8))
        );
        for bad in ["", "x12", "-5", "99999999999999999999999", "0/zz"] {
            assert!(Target::parse_before(bad).is_err(), "{bad}");
        }
        let err = Target::parse_before("drop").unwrap_err().to_string();
        assert!(err.contains("pitr wal events"), "{err}");
    }

    #[test]
    fn times_parse_with_offsets_and_without_zone() {
        let utc = |s: &str| match Target::parse_time(s).unwrap() {
            Target::Time { time, assumed_utc } => (time.to_rfc3339(), assumed_utc),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            utc("2026-11-25T10:00:00+01:00"),
            ("2026-11-25T09:00:00+00:00".into(), false)
        );
        assert_eq!(
            utc("2026-11-25 10:00:00+01"),
            ("2026-11-25T09:00:00+00:00".into(), false)
        );
        assert_eq!(utc("2026-11-25 10:00:00.5-05:30").0, "2026-11-25T15:30:00.500+00:00");
        assert_eq!(utc("2026-11-25 10:00:00"), ("2026-11-25T10:00:00+00:00".into(), true));
        assert!(Target::parse_time("2026-11-25 10:00:00 CET").is_err());
        assert!(Target::parse_time("yesterday").is_err());
    }

    #[test]
    fn every_target_serializes() {
        let targets = [
            Target::parse_time("2026-11-25 10:00:00+00").unwrap(),
            Target::Name("x".into()),
            Target::Lsn(Lsn(1)),
            Target::Xid(7),
            Target::Immediate,
            Target::Latest,
        ];
        for target in targets {
            let json = serde_json::to_value(&target).unwrap();
            assert!(json["kind"].is_string(), "{json}");
        }
        assert_eq!(
            serde_json::to_value(Target::Name("x".into())).unwrap(),
            serde_json::json!({"kind": "name", "value": "x"})
        );
    }

    #[test]
    fn settings_match_postgres_names() {
        let t = Target::parse_time("2026-11-25 10:00:00.25+00").unwrap();
        assert_eq!(
            t.settings(true),
            [
                ("recovery_target_time", "2026-11-25 10:00:00.250000+00".to_string()),
                ("recovery_target_inclusive", "off".to_string())
            ]
        );
        assert_eq!(
            Target::Name("x".into()).settings(true),
            [("recovery_target_name", "x".to_string())]
        );
        assert_eq!(
            Target::Immediate.settings(false),
            [("recovery_target", "immediate".to_string())]
        );
        assert!(Target::Latest.settings(false).is_empty());
    }
}
