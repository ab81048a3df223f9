//! The on-disk layout of a state store.

use std::path::{Path, PathBuf};

/// The longest path a Unix socket address holds (`sun_path` less the NUL).
const MAX_SOCKET_PATH: usize = 107;

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
    /// The server's private folder (socket, log). A Unix socket path may not
    /// exceed 107 bytes: when the store path is too long for
    /// `<dir>/.s.PGSQL.<port>`, the folder moves to the temp dir.
    pub fn instance_run(&self, id: &str) -> PathBuf {
        let run = self.instance_dir(id).join("run");
        if run.as_os_str().len() + "/.s.PGSQL.65535".len() <= MAX_SOCKET_PATH {
            return run;
        }
        let digest = crate::ids::Digest::of(run.as_os_str().as_encoded_bytes());
        std::env::temp_dir().join(format!("sqlrs-{}", &digest.to_hex()[..16]))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_moves_out_of_long_store_paths() {
        let short = Store::new(Path::new("/var/lib/sqlrs"));
        assert_eq!(
            short.instance_run("0123456789abcdef"),
            Path::new("/var/lib/sqlrs/instances/0123456789abcdef/run")
        );
        let long = Store::new(&Path::new("/srv").join("x".repeat(80)));
        let run = long.instance_run("0123456789abcdef");
        assert!(run.starts_with(std::env::temp_dir()), "{}", run.display());
        assert_eq!(run, long.instance_run("0123456789abcdef"));
        assert_ne!(run, long.instance_run("fedcba9876543210"));
    }
}
