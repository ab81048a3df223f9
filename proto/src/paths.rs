//! Where sqlrs keeps its config, state and socket, following the XDG base
//! directory rules so that isolated daemons can run side by side.

use std::path::{Path, PathBuf};

/// The directories one sqlrsd instance (and its clients) agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locations {
    /// `$XDG_CONFIG_HOME/sqlrs`: `config.yaml`.
    pub config_dir: PathBuf,
    /// `$XDG_STATE_HOME/sqlrs`: the state store, index, token, logs.
    pub state_dir: PathBuf,
    /// `$XDG_RUNTIME_DIR/sqlrs`, else `<state_dir>/run`: the socket (folder 0700).
    pub runtime_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LocationsError {
    #[error(
        "cannot place sqlrs files: neither {var} nor HOME is set; set {var} to a writable directory"
    )]
    NoHome { var: &'static str },
}

impl Locations {
    /// Reads the XDG variables of this process.
    pub fn from_env() -> Result<Self, LocationsError> {
        Self::resolve(|k| std::env::var_os(k).map(PathBuf::from), is_root())
    }

    /// Resolution rules, with the environment passed in (tests use a table).
    ///
    /// Root without `XDG_STATE_HOME` keeps its store in `/var/lib/sqlrs`: the
    /// PostgreSQL servers then run as an unprivileged account that cannot
    /// enter `/root`.
    pub fn resolve(
        env: impl Fn(&str) -> Option<PathBuf>,
        root: bool,
    ) -> Result<Self, LocationsError> {
        let absolute = |k: &str| env(k).filter(|p| p.is_absolute());
        let home = env("HOME").filter(|p| p.is_absolute());
        let config_dir = match absolute("XDG_CONFIG_HOME") {
            Some(p) => p,
            None => home
                .clone()
                .ok_or(LocationsError::NoHome {
                    var: "XDG_CONFIG_HOME",
                })?
                .join(".config"),
        }
        .join("sqlrs");
        let state_dir = match absolute("XDG_STATE_HOME") {
            Some(p) => p.join("sqlrs"),
            None if root => PathBuf::from("/var/lib/sqlrs"),
            None => home
                .ok_or(LocationsError::NoHome {
                    var: "XDG_STATE_HOME",
                })?
                .join(".local/state/sqlrs"),
        };
        let runtime_dir = match absolute("XDG_RUNTIME_DIR") {
            Some(p) => p.join("sqlrs"),
            None => state_dir.join("run"),
        };
        Ok(Self {
            config_dir,
            state_dir,
            runtime_dir,
        })
    }

    pub fn socket_path(&self) -> PathBuf {
        self.runtime_dir.join("sqlrsd.sock")
    }

    /// The 0600 file holding the bearer token every call but Health carries.
    pub fn token_path(&self) -> PathBuf {
        self.state_dir.join("token")
    }

    /// Held exclusively by the running daemon: one sqlrsd per store.
    pub fn daemon_lock_path(&self) -> PathBuf {
        self.state_dir.join("daemon.lock")
    }

    /// Held by a client while it spawns the daemon: one spawn at a time.
    pub fn spawn_lock_path(&self) -> PathBuf {
        self.state_dir.join("spawn.lock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("sqlrsd.log")
    }

    pub fn config_path(&self) -> PathBuf {
        self.config_dir.join("config.yaml")
    }
}

/// Whether this process runs with root's effective uid.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Creates `dir` (and parents) and restricts it to its owner.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The owner of `path` (symlinks followed) when it exists and is not `me`
/// (usually [`effective_uid`]); `None` when it is `me`'s or does not exist.
pub fn foreign_owner_for(path: &Path, me: u32) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.uid() != me => Ok(Some(meta.uid())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `name (uid N)` for a user id, or `uid N` when the user has no name.
pub fn describe_user(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The login name of `uid` from the user database.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live memory of the stated size;
    // getpwuid_r writes the entry into `pwd` and its strings into `buf`.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            pwd.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded and `found` points at `pwd`, whose name
    // is a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr((*found).pw_name) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<PathBuf> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| PathBuf::from(v))
        }
    }

    /// (environment, root, config dir, state dir, runtime dir)
    type Case = (
        &'static [(&'static str, &'static str)],
        bool,
        &'static str,
        &'static str,
        &'static str,
    );

    #[test]
    fn resolution_table() {
        let cases: &[Case] = &[
            (
                &[("HOME", "/home/a")],
                false,
                "/home/a/.config/sqlrs",
                "/home/a/.local/state/sqlrs",
                "/home/a/.local/state/sqlrs/run",
            ),
            (
                &[
                    ("HOME", "/home/a"),
                    ("XDG_CONFIG_HOME", "/c"),
                    ("XDG_STATE_HOME", "/s"),
                    ("XDG_RUNTIME_DIR", "/r"),
                ],
                false,
                "/c/sqlrs",
                "/s/sqlrs",
                "/r/sqlrs",
            ),
            (
                &[("HOME", "/root")],
                true,
                "/root/.config/sqlrs",
                "/var/lib/sqlrs",
                "/var/lib/sqlrs/run",
            ),
            (
                &[("HOME", "/root"), ("XDG_STATE_HOME", "/tmp/x")],
                true,
                "/root/.config/sqlrs",
                "/tmp/x/sqlrs",
                "/tmp/x/sqlrs/run",
            ),
            (
                &[("HOME", "/h"), ("XDG_STATE_HOME", "relative")],
                false,
                "/h/.config/sqlrs",
                "/h/.local/state/sqlrs",
                "/h/.local/state/sqlrs/run",
            ),
        ];
        for (vars, root, config, state, runtime) in cases {
            let l = Locations::resolve(env(vars), *root).unwrap();
            assert_eq!(
                (
                    l.config_dir.to_str().unwrap(),
                    l.state_dir.to_str().unwrap(),
                    l.runtime_dir.to_str().unwrap()
                ),
                (*config, *state, *runtime),
                "{vars:?} root={root}"
            );
        }
    }

    #[test]
    fn owners() {
        let tmp = tempfile::tempdir().unwrap();
        let me = effective_uid();
        assert_eq!(foreign_owner_for(tmp.path(), me).unwrap(), None, "ours");
        assert_eq!(
            foreign_owner_for(&tmp.path().join("absent"), me ^ 1).unwrap(),
            None,
            "missing"
        );
        assert_eq!(
            foreign_owner_for(tmp.path(), me ^ 1).unwrap(),
            Some(me),
            "as seen by another user"
        );
        assert!(describe_user(0).starts_with("root (uid 0)"));
        assert_eq!(describe_user(4_000_000_000), "uid 4000000000");
    }

    #[test]
    fn no_home_is_an_error() {
        let err = Locations::resolve(|_| None, false).unwrap_err();
        assert!(err.to_string().contains("XDG_CONFIG_HOME"));
    }
}
