//! The on-disk layout of a state store.

use std::path::{Path, PathBuf};

/// `<state_dir>`: index, blobs, states, instances and scratch folders.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn index_path(&self) -> PathBuf {
        self.root.join("index.redb")
    }
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }
    pub fn states_dir(&self) -> PathBuf {
        self.root.join("states")
    }
    pub fn instances_dir(&self) -> PathBuf {
        self.root.join("instances")
    }
    /// Mirror trees psql executes from, one per job.
    pub fn exec_dir(&self, job: &str) -> PathBuf {
        self.root.join("exec").join(job)
    }
    /// Scratch space for directories being made (base clusters).
    pub fn work_dir(&self) -> PathBuf {
        self.root.join("work")
    }
    pub fn state_path(&self, id: &str) -> PathBuf {
        self.states_dir().join(id)
    }
    /// Where a state is made before it is complete; renamed into place after.
    pub fn state_tmp_path(&self, id: &str) -> PathBuf {
        self.states_dir().join(format!("{id}.tmp"))
    }
    pub fn instance_dir(&self, id: &str) -> PathBuf {
        self.instances_dir().join(id)
    }
    pub fn instance_data(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("data")
    }
    pub fn instance_run(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("run")
    }

    /// Creates the folders. Root's store must be traversable (not listable)
    /// by the unprivileged account the servers run as: 0711.
    pub fn create(&self, traversable: bool) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mode = if traversable { 0o711 } else { 0o700 };
        for dir in [
            self.root.clone(),
            self.states_dir(),
            self.instances_dir(),
            self.root.join("exec"),
            self.work_dir(),
        ] {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }
}
