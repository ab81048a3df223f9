//! Live jobs: their records, cancellation, and the event fan-out that lets any
//! number of clients follow (or re-attach to) a job while it runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::index::{Index, IndexError};
use crate::model::{EventKind, JobEvent, JobRecord, RunStatus, now_ms, random_id};

/// A job that is queued or running in this daemon.
pub struct LiveJob {
    pub id: String,
    pub cancel: CancellationToken,
    seq: AtomicU64,
    tx: broadcast::Sender<JobEvent>,
    record: Mutex<JobRecord>,
}

impl LiveJob {
    pub fn record(&self) -> JobRecord {
        self.record.lock().expect("job record lock").clone()
    }
}

pub struct Jobs {
    index: Arc<Index>,
    live: Mutex<HashMap<String, Arc<LiveJob>>>,
    max_events: usize,
    keep_jobs: usize,
}

impl Jobs {
    pub fn new(index: Arc<Index>, max_events: usize, keep_jobs: usize) -> Self {
        Self {
            index,
            live: Mutex::new(HashMap::new()),
            max_events,
            keep_jobs,
        }
    }

    /// Registers a new queued job.
    pub fn create(&self, kind: &str, summary: String) -> Result<Arc<LiveJob>, IndexError> {
        let record = JobRecord {
            id: random_id(),
            kind: kind.into(),
            status: RunStatus::Queued,
            created_at_ms: now_ms(),
            finished_at_ms: 0,
            summary,
            instance_id: None,
            state_id: None,
            error: None,
            tasks: Vec::new(),
        };
        self.index.put_job(&record)?;
        self.prune()?;
        let (tx, _) = broadcast::channel(1024);
        let job = Arc::new(LiveJob {
            id: record.id.clone(),
            cancel: CancellationToken::new(),
            seq: AtomicU64::new(0),
            tx,
            record: Mutex::new(record),
        });
        self.live
            .lock()
            .expect("jobs lock")
            .insert(job.id.clone(), job.clone());
        Ok(job)
    }

    /// Changes the job's record and persists it.
    pub fn update(
        &self,
        job: &LiveJob,
        change: impl FnOnce(&mut JobRecord),
    ) -> Result<(), IndexError> {
        let snapshot = {
            let mut r = job.record.lock().expect("job record lock");
            change(&mut r);
            r.clone()
        };
        self.index.put_job(&snapshot)
    }

    /// Stores an event and sends it to every follower.
    pub fn emit(&self, job: &LiveJob, kind: EventKind) -> Result<(), IndexError> {
        let event = JobEvent {
            job_id: job.id.clone(),
            seq: job.seq.fetch_add(1, Ordering::SeqCst) + 1,
            at_ms: now_ms(),
            kind,
        };
        self.index.append_event(&event, self.max_events)?;
        // No receiver is fine: nobody follows the job right now.
        let _ = job.tx.send(event);
        Ok(())
    }

    /// The job leaves the live set once its final event is out.
    pub fn finish(&self, job: &LiveJob) {
        self.live.lock().expect("jobs lock").remove(&job.id);
    }

    pub fn live(&self, id: &str) -> Option<Arc<LiveJob>> {
        self.live.lock().expect("jobs lock").get(id).cloned()
    }

    pub fn live_ids(&self) -> Vec<String> {
        self.live
            .lock()
            .expect("jobs lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Asks a running job to stop; false when it is not running here.
    pub fn cancel(&self, id: &str) -> bool {
        match self.live(id) {
            Some(job) => {
                job.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// The stored events of a job, and a receiver for the ones still to come
    /// (None when the job is over). Subscribing happens before reading the
    /// store, so no event falls between the two; followers skip by `seq`.
    pub fn follow(
        &self,
        id: &str,
    ) -> Result<(Vec<JobEvent>, Option<broadcast::Receiver<JobEvent>>), IndexError> {
        let rx = self.live(id).map(|j| j.tx.subscribe());
        let past = self.index.events(id)?;
        Ok((past, rx))
    }

    /// Drops the oldest finished jobs beyond the configured number.
    fn prune(&self) -> Result<(), IndexError> {
        // Counting is cheap; reading every job is not.
        if self.index.job_count()? <= self.keep_jobs as u64 {
            return Ok(());
        }
        let mut jobs = self.index.jobs()?;
        if jobs.len() <= self.keep_jobs {
            return Ok(());
        }
        jobs.sort_by_key(|j| j.created_at_ms);
        let excess = jobs.len() - self.keep_jobs;
        for j in jobs.iter().filter(|j| j.status.is_final()).take(excess) {
            self.index.delete_job(&j.id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thousands of jobs leave at most `keep` jobs with at most
    /// `max_events` events each, and the index file stops growing: redb
    /// reuses the pages of what was dropped.
    #[test]
    fn storage_stays_bounded_over_thousands_of_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let index = Arc::new(Index::open(&path).unwrap());
        let (keep, max_events) = (50, 8);
        let jobs = Jobs::new(index.clone(), max_events, keep);
        let mut size_at = Vec::new();
        for n in 1..=3000 {
            let job = jobs.create("prepare", format!("job {n}")).unwrap();
            for k in 0..20 {
                jobs.emit(&job, EventKind::Log(format!("line {k} of job {n}")))
                    .unwrap();
            }
            jobs.update(&job, |r| r.status = RunStatus::Succeeded)
                .unwrap();
            jobs.finish(&job);
            if n % 1000 == 0 {
                size_at.push(std::fs::metadata(&path).unwrap().len());
            }
        }
        assert!(index.job_count().unwrap() <= keep as u64 + 1);
        assert!(
            index.event_count().unwrap() <= (keep as u64 + 1) * (max_events as u64 + 1),
            "{} events",
            index.event_count().unwrap()
        );
        assert!(jobs.live_ids().is_empty());
        // After the first thousand the file no longer grows.
        assert!(
            size_at[2] <= size_at[0] + size_at[0] / 5,
            "index file grew: {size_at:?}"
        );
    }
}
