//! A workspace's own settings: `.sqlrs/config.yaml` beside the workspace
//! marker. Every key is optional; a missing or empty file means the defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The settings file, relative to the workspace root.
pub const CONFIG_FILE: &str = ".sqlrs/config.yaml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectConfig {
    /// Rebuild changed chains in the background (default true).
    pub prebuild: bool,
}

impl Default for ProjectConfig {
    fn default() -> Self {
        Self { prebuild: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}:{line}:{column}: {message}; the workspace settings accept `prebuild: true|false` only",
        path.display()
    )]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

impl ProjectConfig {
    /// Reads the settings of the workspace at `root`; a missing file gives
    /// the defaults.
    pub fn load(root: &Path) -> Result<Self, ProjectConfigError> {
        let path = root.join(CONFIG_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ProjectConfigError::Read { path, source }),
        }
    }

    /// Parses settings text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ProjectConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_norway::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let message = e.to_string();
            let message = match message.rfind(" at line ") {
                Some(i) => message[..i].to_owned(),
                None => message,
            };
            ProjectConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })
    }
}
