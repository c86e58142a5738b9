//! The daemon's metrics, in Prometheus' exposition format, and its health report.
//!
//! The daemon's own resident memory is read from `/proc/self/status` at each scrape, and, while
//! the daemon streams from a replication slot, the slot's state from the server (one short
//! connection per scrape, at most [`SLOT_PROBE_TIMEOUT`]; no sample when the server does not
//! answer).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Job;
use crate::backup::Tier;
use crate::drill;
use crate::error::Result;
use crate::pg::SlotState;
use crate::repo::Repo;
use crate::stream::{self, StreamOptions};
use crate::verify::metrics::{DRILL_LAST_SUCCESS, DRILL_RPO, DRILL_RTO, SLOT_ACTIVE, SLOT_RETAINED};
use crate::watch::WatchEvents;

/// How long a scrape waits for the server's answer about the slot.
pub const SLOT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

type Labels = Vec<(String, String)>;

/// Counters and gauges, registered once.
pub struct Metrics {
    registry: Registry,
    archived: Counter,
    archive_failures: Counter,
    last_archive_duration: Gauge<f64, AtomicU64>,
    last_archive_time: Gauge<f64, AtomicU64>,
    job_runs: Family<Labels, Counter>,
    job_last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    job_last_duration: Family<Labels, Gauge<f64, AtomicU64>>,
    job_last_failed: Family<Labels, Gauge>,
    job_skipped: Family<Labels, Counter>,
    job_running: Family<Labels, Gauge>,
    resident_memory: Gauge,
    slot_active: Family<Labels, Gauge>,
    slot_retained: Family<Labels, Gauge>,
    drill_last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    drill_rto: Family<Labels, Gauge<f64, AtomicU64>>,
    drill_rpo: Family<Labels, Gauge<f64, AtomicU64>>,
    /// The slot the daemon streams from, asked about at each scrape.
    slot: Mutex<Option<StreamOptions>>,
    last_results: Mutex<BTreeMap<String, (bool, DateTime<Utc>)>>,
    /// The jobs running now, and since when.
    running: Mutex<BTreeMap<String, DateTime<Utc>>>,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pitr");
        let metrics = Metrics {
            archived: Counter::default(),
            archive_failures: Counter::default(),
            last_archive_duration: Gauge::default(),
            last_archive_time: Gauge::default(),
            job_runs: Family::default(),
            job_last_success: Family::default(),
            job_last_duration: Family::default(),
            job_last_failed: Family::default(),
            job_skipped: Family::default(),
            job_running: Family::default(),
            resident_memory: Gauge::default(),
            slot_active: Family::default(),
            slot_retained: Family::default(),
            drill_last_success: Family::default(),
            drill_rto: Family::default(),
            drill_rpo: Family::default(),
            slot: Mutex::new(None),
            last_results: Mutex::new(BTreeMap::new()),
            running: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "watch_archived",
            "WAL files the watcher stored",
            metrics.archived.clone(),
        );
        registry.register(
            "watch_failures",
            "Failed attempts to store a WAL file",
            metrics.archive_failures.clone(),
        );
        registry.register(
            "watch_last_archive_duration_seconds",
            "How long the last WAL file took to store",
            metrics.last_archive_duration.clone(),
        );
        registry.register(
            "watch_last_archive_timestamp_seconds",
            "When the watcher last stored a WAL file",
            metrics.last_archive_time.clone(),
        );
        registry.register(
            "job_runs",
            "Scheduled job runs by job and result",
            metrics.job_runs.clone(),
        );
        registry.register(
            "job_last_success_timestamp_seconds",
            "When each job last succeeded",
            metrics.job_last_success.clone(),
        );
        registry.register(
            "job_last_duration_seconds",
            "How long each job last ran",
            metrics.job_last_duration.clone(),
        );
        registry.register(
            "job_last_failed",
            "1 when the job's last run failed",
            metrics.job_last_failed.clone(),
        );
        registry.register(
            "job_skipped",
            "Runs skipped because the job came due while its previous run still waited or ran",
            metrics.job_skipped.clone(),
        );
        registry.register("job_running", "1 while the job runs", metrics.job_running.clone());
        registry.register(
            "daemon_resident_memory_bytes",
            "Resident memory of the daemon process (its jobs run in processes of their own)",
            metrics.resident_memory.clone(),
        );
        // The names and help of verify's textfile (the registry adds the prefix).
        for ((name, help), family) in [
            (SLOT_ACTIVE, &metrics.slot_active),
            (SLOT_RETAINED, &metrics.slot_retained),
        ] {
            registry.register(
                name.trim_start_matches("pitr_"),
                help.trim_end_matches('.'),
                family.clone(),
            );
        }
        for ((name, help), family) in [
            (DRILL_LAST_SUCCESS, &metrics.drill_last_success),
            (DRILL_RTO, &metrics.drill_rto),
            (DRILL_RPO, &metrics.drill_rpo),
        ] {
            registry.register(
                name.trim_start_matches("pitr_"),
                help.trim_end_matches('.'),
                family.clone(),
            );
        }
        Metrics { registry, ..metrics }
    }

    /// The drill gauges from `repo`'s drill records (at the start and after each drill job); the
    /// values stay as they were when the records cannot be listed.
    pub fn record_drills(&self, repo: &Repo) {
        let Ok(history) = drill::history(repo) else {
            return;
        };
        let labels = |tier: Tier| vec![("tier".to_string(), tier.to_string())];
        for (tier, record) in history.newest_passed_by_tier() {
            self.drill_last_success
                .get_or_create(&labels(tier))
                .set(record.started.timestamp_millis() as f64 / 1000.0);
        }
        for (tier, record) in history.newest_by_tier() {
            for (family, value) in [
                (&self.drill_rto, record.rto_seconds),
                (&self.drill_rpo, record.rpo_seconds),
            ] {
                match value {
                    Some(seconds) => {
                        family.get_or_create(&labels(tier)).set(seconds);
                    }
                    None => {
                        family.remove(&labels(tier));
                    }
                }
            }
        }
    }

    /// The slot the daemon streams from now (`None`: it does not stream).
    pub fn watch_slot(&self, stream: Option<StreamOptions>) {
        *self.slot.lock().expect("not poisoned") = stream;
    }

    /// Asks the server about the slot and records the answer.
    fn refresh_slot(&self) {
        // Held while asking: scrapes at once ask one after the other.
        let slot = self.slot.lock().expect("not poisoned");
        match slot.as_ref() {
            Some(options) => self.record_slot(&options.slot, stream::slot_state(options, SLOT_PROBE_TIMEOUT)),
            None => {
                self.slot_active.clear();
                self.slot_retained.clear();
            }
        }
    }

    /// The slot `name` as the server answered: active (0 when missing) and the WAL it holds
    /// back; no sample when the server did not answer.
    fn record_slot(&self, name: &str, answer: Result<Option<SlotState>>) {
        self.slot_active.clear();
        self.slot_retained.clear();
        let labels = vec![("slot".to_string(), name.to_string())];
        match answer {
            Ok(Some(state)) => {
                self.slot_active.get_or_create(&labels).set(i64::from(state.active));
                if let Some(bytes) = state.retained_bytes {
                    self.slot_retained
                        .get_or_create(&labels)
                        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                }
            }
            Ok(None) => {
                self.slot_active.get_or_create(&labels).set(0);
            }
            Err(_) => {}
        }
    }

    /// A job started.
    pub fn job_started(&self, job: Job) {
        self.job_running.get_or_create(&job_labels(job)).set(1);
        self.running
            .lock()
            .expect("not poisoned")
            .insert(job.to_string(), Utc::now());
    }

    /// A job came due while its previous run still waited or ran.
    pub fn job_skipped(&self, job: Job) {
        self.job_skipped.get_or_create(&job_labels(job)).inc();
    }

    /// A job ended.
    pub fn job_finished(&self, job: Job, ok: bool, elapsed: Duration) {
        let name = job.to_string();
        let result = if ok { "success" } else { "failure" };
        self.job_runs
            .get_or_create(&vec![("job".into(), name.clone()), ("result".into(), result.into())])
            .inc();
        let labels = job_labels(job);
        self.job_running.get_or_create(&labels).set(0);
        self.running.lock().expect("not poisoned").remove(&name);
        self.job_last_duration.get_or_create(&labels).set(elapsed.as_secs_f64());
        self.job_last_failed.get_or_create(&labels).set(i64::from(!ok));
        if ok {
            self.job_last_success
                .get_or_create(&labels)
                .set(Utc::now().timestamp_millis() as f64 / 1000.0);
        }
        self.last_results
            .lock()
            .expect("not poisoned")
            .insert(name, (ok, Utc::now()));
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        if let Some(bytes) = resident_memory_bytes() {
            self.resident_memory.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        self.refresh_slot();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// `{"status": "ok"|"degraded", "archived": n, "jobs": {...}, "running": [...]}`: degraded
    /// while any job's last run failed; `running` lists the jobs running now and since when.
    pub fn health(&self) -> String {
        let results = self.last_results.lock().expect("not poisoned");
        let jobs: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(job, (ok, at))| (job.clone(), serde_json::json!({ "ok": ok, "at": at.to_rfc3339() })))
            .collect();
        let status = if results.values().all(|(ok, _)| *ok) {
            "ok"
        } else {
            "degraded"
        };
        let running: Vec<serde_json::Value> = self
            .running
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(job, since)| serde_json::json!({ "job": job, "since": since.to_rfc3339() }))
            .collect();
        serde_json::json!({ "status": status, "archived": self.archived.get(), "jobs": jobs, "running": running })
            .to_string()
    }
}

fn job_labels(job: Job) -> Labels {
    vec![("job".to_string(), job.to_string())]
}

/// This process's resident set size (`VmRSS` in `/proc/self/status`, in kB there).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The watcher's files, counted.
impl WatchEvents for Metrics {
    fn archived(&self, elapsed: Duration) {
        self.archived.inc();
        self.last_archive_duration.set(elapsed.as_secs_f64());
        self.last_archive_time
            .set(Utc::now().timestamp_millis() as f64 / 1000.0);
    }

    fn failed(&self) {
        self.archive_failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_exposition_format() {
        let metrics = Metrics::new();
        metrics.archived(Duration::from_millis(3));
        metrics.job_finished(Job::Backup(Tier::Hourly), true, Duration::from_secs(2));
        metrics.job_finished(Job::Verify, false, Duration::from_secs(1));
        metrics.job_started(Job::Backup(Tier::Daily));
        metrics.job_skipped(Job::Backup(Tier::Daily));
        let text = metrics.render();
        assert!(
            text.contains("pitr_job_skipped_total{job=\"backup daily\"} 1"),
            "{text}"
        );
        assert!(text.contains("pitr_job_running{job=\"backup daily\"} 1"), "{text}");
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("pitr_daemon_resident_memory_bytes "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(rss.is_some_and(|bytes| bytes > 1 << 20), "{text}");
        assert!(text.contains("pitr_watch_archived_total 1"), "{text}");
        assert!(
            text.contains("pitr_job_runs_total{job=\"backup hourly\",result=\"success\"} 1"),
            "{text}"
        );
        assert!(text.contains("pitr_job_last_failed{job=\"verify\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("pitr_slot_"), "no slot, no sample: {text}");
        let health: serde_json::Value = serde_json::from_str(&metrics.health()).unwrap();
        assert_eq!(health["status"], "degraded");
        assert_eq!(health["running"][0]["job"], "backup daily", "{health}");
    }

    #[test]
    fn the_slot_is_sampled_as_the_server_answered() {
        let metrics = Metrics::new();
        let encode = |metrics: &Metrics| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
            text
        };
        let state = SlotState {
            name: "pitr".into(),
            server: "server".into(),
            slot_type: "physical".into(),
            active: true,
            restart_lsn: None,
            retained_bytes: Some(4096),
            wal_status: Some("reserved".into()),
            safe_wal_size: None,
            max_slot_wal_keep_size: None,
        };
        metrics.record_slot("pitr", Ok(Some(state)));
        let text = encode(&metrics);
        assert!(text.contains("pitr_slot_active{slot=\"pitr\"} 1\n"), "{text}");
        assert!(
            text.contains("pitr_slot_retained_wal_bytes{slot=\"pitr\"} 4096\n"),
            "{text}"
        );
        metrics.record_slot("pitr", Ok(None));
        let text = encode(&metrics);
        assert!(text.contains("pitr_slot_active{slot=\"pitr\"} 0\n"), "{text}");
        assert!(!text.contains("pitr_slot_retained_wal_bytes{"), "{text}");
        metrics.record_slot("pitr", Err(crate::Error::Refused("down".into())));
        assert!(!encode(&metrics).contains("pitr_slot_active{"));
    }
}
