//! The state index on redb: states, instances, jobs (with their tasks), a
//! bounded per-job event log, stored tool plans and watched workspaces. One
//! write transaction per change.
//!
//! States and instances are committed durably (fsync) before a call returns.
//! Job records, events and use statistics are committed without a sync: they
//! become durable with the next durable commit, and a crash may lose the
//! latest of them (start-up marks unfinished jobs failed). This keeps a
//! cache-hit prepare, which writes a dozen job updates, off the disk's sync
//! latency.

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{
    InstanceRecord, JobEvent, JobRecord, PinRecord, PinTarget, ProjectRecord, StateRecord,
};

const STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("states");
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
/// Tool plans worth keeping between requests (Liquibase's changeset lists),
/// keyed by the digest of everything they were made from.
const PLANS: TableDefinition<&str, &[u8]> = TableDefinition::new("plans");
/// Watched workspaces, keyed by their root.
const PROJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("projects");
/// States and aliases kept from eviction, keyed by [`PinTarget::key`].
const PINS: TableDefinition<&str, &[u8]> = TableDefinition::new("pins");

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("state index {}: {source}; if it is damaged, stop sqlrsd and move it aside (the store is then rebuilt from scratch)", path.display())]
    Db {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("state index record {key} is unreadable: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
}

pub struct Index {
    db: Database,
    path: PathBuf,
}

impl Index {
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let fail = |e: redb::Error| IndexError::Db {
            path: path.to_owned(),
            source: Box::new(e),
        };
        let db = Database::create(path).map_err(|e| fail(e.into()))?;
        // Instance passwords live here: owner only.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| fail(redb::StorageError::Io(e).into()))?;
        let tx = db.begin_write().map_err(|e| fail(e.into()))?;
        {
            tx.open_table(STATES).map_err(|e| fail(e.into()))?;
            tx.open_table(INSTANCES).map_err(|e| fail(e.into()))?;
            tx.open_table(JOBS).map_err(|e| fail(e.into()))?;
            tx.open_table(EVENTS).map_err(|e| fail(e.into()))?;
            tx.open_table(PLANS).map_err(|e| fail(e.into()))?;
            tx.open_table(PROJECTS).map_err(|e| fail(e.into()))?;
            tx.open_table(PINS).map_err(|e| fail(e.into()))?;
        }
        tx.commit().map_err(|e| fail(e.into()))?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    fn err(&self, e: impl Into<redb::Error>) -> IndexError {
        IndexError::Db {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    /// A write transaction; `durable` makes its commit wait for the disk.
    fn begin(&self, durable: bool) -> Result<redb::WriteTransaction, IndexError> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        if !durable {
            tx.set_durability(Durability::None)
                .map_err(|e| self.err(e))?;
        }
        Ok(tx)
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), IndexError> {
        self.put_with(table, key, value, true)
    }

    fn put_with<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
        durable: bool,
    ) -> Result<(), IndexError> {
        let bytes = serde_json::to_vec(value).expect("records serialize");
        let tx = self.begin(durable)?;
        {
            let mut t = tx.open_table(table).map_err(|e| self.err(e))?;
            t.insert(key, bytes.as_slice()).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(table).map_err(|e| self.err(e))?;
        let Some(v) = t.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        decode(key, v.value()).map(Some)
    }

    fn list<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(table).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn delete(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<(), IndexError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(table).map_err(|e| self.err(e))?;
            t.remove(key).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Stores a plan under `key`; it can be made again, so it is not synced.
    pub fn put_plan<T: Serialize>(&self, key: &str, plan: &T) -> Result<(), IndexError> {
        self.put_with(PLANS, key, plan, false)
    }
    pub fn plan<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, IndexError> {
        self.get(PLANS, key)
    }
    pub fn delete_plan(&self, key: &str) -> Result<(), IndexError> {
        self.delete(PLANS, key)
    }

    pub fn put_project(&self, p: &ProjectRecord) -> Result<(), IndexError> {
        self.put(PROJECTS, &p.root, p)
    }
    pub fn projects(&self) -> Result<Vec<ProjectRecord>, IndexError> {
        self.list(PROJECTS)
    }
    pub fn delete_project(&self, root: &str) -> Result<(), IndexError> {
        self.delete(PROJECTS, root)
    }

    pub fn put_pin(&self, p: &PinRecord) -> Result<(), IndexError> {
        self.put(PINS, &p.target.key(), p)
    }
    pub fn pins(&self) -> Result<Vec<PinRecord>, IndexError> {
        self.list(PINS)
    }
    /// Whether the pin existed.
    pub fn delete_pin(&self, target: &PinTarget) -> Result<bool, IndexError> {
        let existed = self.get::<PinRecord>(PINS, &target.key())?.is_some();
        self.delete(PINS, &target.key())?;
        Ok(existed)
    }

    pub fn put_state(&self, s: &StateRecord) -> Result<(), IndexError> {
        self.put(STATES, &s.id, s)
    }
    pub fn state(&self, id: &str) -> Result<Option<StateRecord>, IndexError> {
        self.get(STATES, id)
    }
    pub fn states(&self) -> Result<Vec<StateRecord>, IndexError> {
        self.list(STATES)
    }
    pub fn delete_state(&self, id: &str) -> Result<(), IndexError> {
        self.delete(STATES, id)
    }

    /// Records a use of a state: last-used time and use count.
    pub fn touch_state(&self, id: &str, at_ms: u64) -> Result<(), IndexError> {
        if let Some(mut s) = self.state(id)? {
            s.last_used_at_ms = at_ms;
            s.use_count += 1;
            self.put_with(STATES, &s.id, &s, false)?;
        }
        Ok(())
    }

    pub fn put_instance(&self, i: &InstanceRecord) -> Result<(), IndexError> {
        self.put(INSTANCES, &i.id, i)
    }
    pub fn instance(&self, id: &str) -> Result<Option<InstanceRecord>, IndexError> {
        self.get(INSTANCES, id)
    }
    pub fn instances(&self) -> Result<Vec<InstanceRecord>, IndexError> {
        self.list(INSTANCES)
    }
    pub fn delete_instance(&self, id: &str) -> Result<(), IndexError> {
        self.delete(INSTANCES, id)
    }

    pub fn put_job(&self, j: &JobRecord) -> Result<(), IndexError> {
        self.put_with(JOBS, &j.id, j, false)
    }
    /// How many jobs are recorded, without reading them.
    pub fn job_count(&self) -> Result<u64, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(JOBS).map_err(|e| self.err(e))?;
        t.len().map_err(|e| self.err(e))
    }
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, IndexError> {
        self.get(JOBS, id)
    }
    pub fn jobs(&self) -> Result<Vec<JobRecord>, IndexError> {
        self.list(JOBS)
    }

    /// Removes a job and its events.
    pub fn delete_job(&self, id: &str) -> Result<(), IndexError> {
        let tx = self.begin(false)?;
        {
            let mut jobs = tx.open_table(JOBS).map_err(|e| self.err(e))?;
            jobs.remove(id).map_err(|e| self.err(e))?;
            let mut events = tx.open_table(EVENTS).map_err(|e| self.err(e))?;
            events
                .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Appends an event and drops the job's oldest beyond `keep`.
    pub fn append_event(&self, e: &JobEvent, keep: usize) -> Result<(), IndexError> {
        let bytes = serde_json::to_vec(e).expect("events serialize");
        let job = e.job_id.as_str();
        let tx = self.begin(false)?;
        {
            let mut t = tx.open_table(EVENTS).map_err(|e| self.err(e))?;
            t.insert((job, e.seq), bytes.as_slice())
                .map_err(|e| self.err(e))?;
            let cutoff = e.seq.saturating_sub(keep as u64);
            if cutoff > 0 {
                t.retain_in((job, 0)..(job, cutoff), |_, _| false)
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// How many events are stored, over every job.
    pub fn event_count(&self) -> Result<u64, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(EVENTS).map_err(|e| self.err(e))?;
        t.len().map_err(|e| self.err(e))
    }

    pub fn events(&self, job: &str) -> Result<Vec<JobEvent>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(EVENTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t
            .range((job, 0)..=(job, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (_, v) = row.map_err(|e| self.err(e))?;
            out.push(decode(job, v.value())?);
        }
        Ok(out)
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, IndexError> {
    serde_json::from_slice(bytes).map_err(|source| IndexError::Decode {
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, RunStatus};

    fn state(id: &str, parent: Option<&str>) -> StateRecord {
        StateRecord {
            id: id.into(),
            parent: parent.map(Into::into),
            engine: "native PostgreSQL 15".into(),
            summary: "-f a.sql".into(),
            size_bytes: 10,
            created_at_ms: 1,
            last_used_at_ms: 1,
            use_count: 0,
            build_ms: 5,
        }
    }

    fn job(id: &str) -> JobRecord {
        JobRecord {
            id: id.into(),
            kind: "prepare".into(),
            status: RunStatus::Running,
            created_at_ms: 1,
            finished_at_ms: 0,
            summary: String::new(),
            instance_id: None,
            state_id: None,
            error: None,
            tasks: vec![],
        }
    }

    #[test]
    fn states_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        {
            let ix = Index::open(&path).unwrap();
            ix.put_state(&state("a", None)).unwrap();
            ix.put_state(&state("b", Some("a"))).unwrap();
            ix.touch_state("b", 99).unwrap();
        }
        let ix = Index::open(&path).unwrap();
        assert_eq!(ix.states().unwrap().len(), 2);
        let b = ix.state("b").unwrap().unwrap();
        assert_eq!((b.use_count, b.last_used_at_ms), (1, 99));
        ix.delete_state("a").unwrap();
        assert!(ix.state("a").unwrap().is_none());
    }

    #[test]
    fn events_are_bounded_and_deleted_with_their_job() {
        let dir = tempfile::tempdir().unwrap();
        let ix = Index::open(&dir.path().join("index.redb")).unwrap();
        ix.put_job(&job("j1")).unwrap();
        ix.put_job(&job("j2")).unwrap();
        for seq in 1..=10 {
            for j in ["j1", "j2"] {
                let e = JobEvent {
                    job_id: j.into(),
                    seq,
                    at_ms: seq,
                    kind: EventKind::Log(format!("line {seq}")),
                };
                ix.append_event(&e, 4).unwrap();
            }
        }
        let seqs: Vec<u64> = ix.events("j1").unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![6, 7, 8, 9, 10]);
        ix.delete_job("j1").unwrap();
        assert!(ix.events("j1").unwrap().is_empty());
        assert!(ix.job("j1").unwrap().is_none());
        assert_eq!(ix.events("j2").unwrap().len(), 5);
    }
}
