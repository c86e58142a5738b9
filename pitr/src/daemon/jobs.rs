//! The scheduler and its lanes. A job that falls due joins the queue of its lane and runs as
//! soon as the lane is free: backups (with their expire) and restore drills run one at a time in
//! one lane, so a drill never competes with a backup;
//! verification, which only reads, runs in a lane of its own, beside a backup; so does the sync
//! into the second repository, which only reads this one (a backup it finds unfinished is copied
//! by the next run). A job that comes due again while its previous run is still waiting or
//! running is skipped: logged and counted.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Local};

use super::metrics::Metrics;
use super::schedule::{self, Job, Schedule};
use super::{Current, JobRunner};
use crate::repo::Repo;
use crate::watch::StopFlags;

/// How often the scheduler looks at the clock.
const TICK: Duration = Duration::from_millis(200);

/// Lanes: backups and drills, verification, sync, names.
const LANES: usize = 4;

/// Where a job runs.
fn lane_of(job: Job) -> usize {
    match job {
        Job::Backup(_) | Job::Drill => 0,
        Job::Verify => 1,
        Job::Sync => 2,
        Job::Names => 3,
    }
}

/// One lane: the jobs waiting, in the order they fell due, and the one running.
#[derive(Default)]
struct Lane {
    state: Mutex<LaneState>,
    wakeup: Condvar,
}

#[derive(Default)]
struct LaneState {
    waiting: VecDeque<Job>,
    running: Option<Job>,
    closed: bool,
}

impl Lane {
    /// Queues `job`; when it is waiting or running already, says which (the run is skipped).
    fn offer(&self, job: Job) -> Result<(), &'static str> {
        let mut state = self.state.lock().expect("not poisoned");
        if state.running == Some(job) {
            return Err("running");
        }
        if state.waiting.contains(&job) {
            return Err("waiting for its lane");
        }
        state.waiting.push_back(job);
        self.wakeup.notify_one();
        Ok(())
    }

    /// The next job, now running; `None` once the lane is closed.
    fn next(&self) -> Option<Job> {
        let mut state = self.state.lock().expect("not poisoned");
        loop {
            if state.closed {
                return None;
            }
            if let Some(job) = state.waiting.pop_front() {
                state.running = Some(job);
                return Some(job);
            }
            state = self.wakeup.wait_timeout(state, TICK).expect("not poisoned").0;
        }
    }

    fn finished(&self) {
        self.state.lock().expect("not poisoned").running = None;
    }

    /// No more jobs: the running one finishes, the waiting ones are dropped.
    fn close(&self) {
        self.state.lock().expect("not poisoned").closed = true;
        self.wakeup.notify_all();
    }
}

/// Runs the scheduler and the lanes until `flags.terminate` is set; a running job finishes
/// first. A reload that changes the schedule takes effect at once.
pub(super) fn run(repo: &Repo, current: &Current, run_job: &dyn JobRunner, metrics: &Metrics, flags: &StopFlags) {
    let lanes: [Lane; LANES] = Default::default();
    std::thread::scope(|scope| {
        for lane in &lanes {
            scope.spawn(move || work(lane, repo, run_job, metrics));
        }
        // The lanes close however the scheduler ends (a panic included: the scope waits for them).
        let _close = CloseOnDrop(&lanes);
        schedule_jobs(current, &lanes, metrics, flags);
    });
}

/// Closes the lanes when dropped.
struct CloseOnDrop<'a>(&'a [Lane; LANES]);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.iter().for_each(Lane::close);
    }
}

/// Runs the jobs of `lane` one after the other; after a drill, the drill metrics are read anew
/// from `repo`'s records, before the job counts as finished: a scrape that sees the drill's run
/// sees its gauges too.
fn work(lane: &Lane, repo: &Repo, run_job: &dyn JobRunner, metrics: &Metrics) {
    while let Some(job) = lane.next() {
        metrics.job_started(job);
        let started = Instant::now();
        let result = run_job.run(job);
        let elapsed = started.elapsed();
        if job == Job::Drill {
            metrics.record_drills(repo);
        }
        metrics.job_finished(job, result.is_ok(), elapsed);
        match result {
            Ok(summary) => tracing::info!(
                job = %job,
                duration_ms = elapsed.as_millis() as u64,
                "job {job}: {summary}"
            ),
            Err(e) => tracing::error!(
                job = %job,
                duration_ms = elapsed.as_millis() as u64,
                error = %e,
                "job {job} failed: {e}"
            ),
        }
        lane.finished();
    }
}

/// Hands each job to its lane when it falls due.
fn schedule_jobs(current: &Current, lanes: &[Lane; LANES], metrics: &Metrics, flags: &StopFlags) {
    let mut settings = current.get();
    let mut next = next_runs(&settings.schedule);
    while !flags.terminate.load(Ordering::SeqCst) {
        let fresh = current.get();
        if !Arc::ptr_eq(&fresh, &settings) {
            if fresh.schedule.describe() != settings.schedule.describe() {
                next = next_runs(&fresh.schedule);
            }
            settings = fresh;
        }
        let now = Local::now();
        for (job, at) in next.iter_mut() {
            let Some(due) = at.filter(|due| *due <= now) else {
                continue;
            };
            if let Err(state) = lanes[lane_of(*job)].offer(*job) {
                metrics.job_skipped(*job);
                tracing::warn!(
                    job = %job,
                    due = %due.to_rfc3339(),
                    "job {job} skipped: it came due at {} while its previous run was still {state}",
                    due.format("%Y-%m-%d %H:%M:%S")
                );
            }
            *at = settings
                .schedule
                .cron(*job)
                .and_then(|cron| schedule::next_after(cron, now));
        }
        std::thread::sleep(TICK);
    }
}

/// When each job of `schedule` runs next.
fn next_runs(schedule: &Schedule) -> Vec<(Job, Option<DateTime<Local>>)> {
    schedule
        .jobs()
        .map(|(job, cron)| (job, schedule::next_after(cron, Local::now())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Tier;

    #[test]
    fn a_job_waiting_or_running_is_not_queued_twice() {
        let lane = Lane::default();
        let hourly = Job::Backup(Tier::Hourly);
        assert_eq!(lane.offer(hourly), Ok(()));
        assert_eq!(lane.offer(Job::Backup(Tier::Daily)), Ok(()));
        assert_eq!(lane.offer(hourly), Err("waiting for its lane"));
        assert_eq!(lane.next(), Some(hourly));
        assert_eq!(lane.offer(hourly), Err("running"));
        lane.finished();
        assert_eq!(lane.offer(hourly), Ok(()), "it ran: the next run is queued");
        assert_eq!(
            lane.next(),
            Some(Job::Backup(Tier::Daily)),
            "in the order they fell due"
        );
        lane.close();
        assert_eq!(lane.next(), None, "a closed lane drops what waits");
    }
}
