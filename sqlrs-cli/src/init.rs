//! `sqlrs init`: makes the current folder a workspace root (`.sqlrs/`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use sqlrs_proto::alias::WORKSPACE_DIR;

use crate::cli::Ctx;
use crate::error::exit;
use crate::render;

/// Written into `.sqlrs/` so that git keeps the folder (and the workspace
/// root) in a clone.
const GITIGNORE: &str = "\
# This folder marks a sqlrs workspace root (made by `sqlrs init`): alias files
# (NAME.prep.s9s.yaml, NAME.run.s9s.yaml) are looked up from the current folder
# up to here. Keep it in version control.
";

#[derive(Debug, Serialize, PartialEq)]
struct Initialized {
    workspace: PathBuf,
    /// What this run created; empty when the workspace already existed.
    created: Vec<PathBuf>,
}

/// Creates `.sqlrs/` and its `.gitignore` in `dir` where missing.
fn init_in(dir: &Path) -> anyhow::Result<Initialized> {
    let marker = dir.join(WORKSPACE_DIR);
    let gitignore = marker.join(".gitignore");
    let mut created = Vec::new();
    if !marker.is_dir() {
        std::fs::create_dir(&marker)
            .with_context(|| format!("cannot create {}", marker.display()))?;
        created.push(marker);
    }
    if !gitignore.exists() {
        std::fs::write(&gitignore, GITIGNORE)
            .with_context(|| format!("cannot write {}", gitignore.display()))?;
        created.push(gitignore);
    }
    Ok(Initialized {
        workspace: dir.to_owned(),
        created,
    })
}

pub fn init(ctx: Ctx) -> anyhow::Result<u8> {
    let dir = std::env::current_dir().context("cannot read the current directory")?;
    let done = init_in(&dir)?;
    if ctx.json() {
        render::print_json(&done)?;
    } else if done.created.is_empty() {
        println!("{} is already a sqlrs workspace", done.workspace.display());
    } else {
        for path in &done.created {
            println!("created {}", path.display());
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let first = init_in(dir).unwrap();
        assert_eq!(
            first.created,
            [dir.join(".sqlrs"), dir.join(".sqlrs/.gitignore")]
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(".sqlrs/.gitignore")).unwrap(),
            GITIGNORE
        );
        std::fs::write(dir.join(".sqlrs/.gitignore"), "mine\n").unwrap();
        let second = init_in(dir).unwrap();
        assert!(second.created.is_empty());
        assert_eq!(
            std::fs::read_to_string(dir.join(".sqlrs/.gitignore")).unwrap(),
            "mine\n"
        );
        assert_eq!(
            sqlrs_proto::alias::workspace_root(&dir.join("x/y")).as_deref(),
            Some(dir)
        );
    }
}
