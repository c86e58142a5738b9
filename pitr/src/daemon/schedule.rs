//! When the daemon's jobs run: cron patterns (5 fields, or 6 with seconds), in local time as
//! cron itself reads them.

use std::fmt;

use chrono::{DateTime, Local};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::backup::Tier;
use crate::error::{Error, Result};

/// A scheduled job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    /// A base backup of a tier, then expire for that tier.
    Backup(Tier),
    /// `pitr verify all`.
    Verify,
    /// `pitr sync` into the second repository (`sync_to`).
    Sync,
    /// `pitr names record`: a new map of relation names when the catalog changed.
    Names,
    /// `pitr drill --all`: the newest backup of each tier restored aside and its data checked.
    Drill,
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Job::Backup(tier) => write!(f, "backup {tier}"),
            Job::Verify => f.write_str("verify"),
            Job::Sync => f.write_str("sync"),
            Job::Names => f.write_str("names"),
            Job::Drill => f.write_str("drill"),
        }
    }
}

/// The jobs and their patterns.
#[derive(Debug, Clone)]
pub struct Schedule {
    entries: Vec<(Job, Cron)>,
}

impl Schedule {
    /// The runbook's schedule: hourly backups at :00, daily at midnight, weekly on Sunday,
    /// verification every Sunday at 03:30; no sync (it needs a second repository); the map of
    /// relation names every 10 minutes (stored only when the catalog changed); a restore drill
    /// every Sunday at 04:00, after the weekly backup and the verification.
    pub const DEFAULTS: [(Job, &'static str); 7] = [
        (Job::Backup(Tier::Hourly), "0 * * * *"),
        (Job::Backup(Tier::Daily), "0 0 * * *"),
        (Job::Backup(Tier::Weekly), "0 0 * * 0"),
        (Job::Verify, "30 3 * * 0"),
        (Job::Sync, "off"),
        (Job::Names, "*/10 * * * *"),
        (Job::Drill, "0 4 * * 0"),
    ];

    /// A schedule from (job, pattern) pairs; an empty pattern or "off" disables the job.
    pub fn new<'a>(patterns: impl IntoIterator<Item = (Job, &'a str)>) -> Result<Schedule> {
        let parser = CronParser::builder().seconds(Seconds::Optional).build();
        let mut entries = Vec::new();
        for (job, pattern) in patterns {
            if pattern.trim().is_empty() || pattern.trim() == "off" {
                continue;
            }
            let cron = parser.parse(pattern).map_err(|e| {
                Error::InvalidInput(format!("schedule of {job}: '{pattern}' is not a cron pattern ({e})"))
            })?;
            entries.push((job, cron));
        }
        Ok(Schedule { entries })
    }

    /// The scheduled jobs and their patterns.
    pub fn jobs(&self) -> impl Iterator<Item = (Job, &Cron)> {
        self.entries.iter().map(|(job, cron)| (*job, cron))
    }

    /// The pattern of `job`, if scheduled.
    pub fn cron(&self, job: Job) -> Option<&Cron> {
        self.entries.iter().find(|(j, _)| *j == job).map(|(_, cron)| cron)
    }

    /// "backup hourly at '0 * * * *', ..." for the log.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|(job, cron)| format!("{job} at '{}'", cron.pattern))
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The next time `cron` matches after `now`.
pub fn next_after(cron: &Cron, now: DateTime<Local>) -> Option<DateTime<Local>> {
    cron.find_next_occurrence(&now, false).ok()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_defaults_follow_the_runbook() {
        let schedule = Schedule::new(Schedule::DEFAULTS).unwrap();
        let saturday_noon = Local.with_ymd_and_hms(2026, 11, 28, 12, 10, 0).unwrap();
        let next = |job| next_after(schedule.cron(job).unwrap(), saturday_noon).unwrap();
        assert_eq!(
            next(Job::Backup(Tier::Hourly)),
            Local.with_ymd_and_hms(2026, 11, 28, 13, 0, 0).unwrap()
        );
        assert_eq!(
            next(Job::Backup(Tier::Daily)),
            Local.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap()
        );
        assert_eq!(
            next(Job::Backup(Tier::Weekly)),
            Local.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap()
        );
        assert_eq!(next(Job::Drill), Local.with_ymd_and_hms(2026, 11, 29, 4, 0, 0).unwrap());
        assert_eq!(
            next(Job::Verify),
            Local.with_ymd_and_hms(2026, 11, 29, 3, 30, 0).unwrap()
        );
        assert!(
            schedule.cron(Job::Sync).is_none(),
            "no sync without a second repository"
        );
    }

    #[test]
    fn seconds_are_optional_off_disables_and_nonsense_is_refused() {
        let schedule = Schedule::new([(Job::Verify, "*/5 * * * * *"), (Job::Backup(Tier::Daily), "off")]).unwrap();
        assert_eq!(schedule.jobs().count(), 1);
        let err = Schedule::new([(Job::Verify, "every day")]).unwrap_err();
        assert!(err.to_string().contains("not a cron pattern"), "{err}");
    }
}
