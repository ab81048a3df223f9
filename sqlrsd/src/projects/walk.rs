//! Which folders of a workspace are watched and which of its files are
//! prepare alias files.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use sqlrs_proto::alias::{AliasRole, WORKSPACE_DIR};

/// Folders never walked: tool caches and build output, big and never alias homes.
const SKIPPED: &[&str] = &[".git", "node_modules", "target"];

/// Whether a folder with this name is left out of the walk: the ones above
/// and hidden folders other than `.sqlrs`.
pub fn skipped_folder(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    SKIPPED.contains(&name) || (name.starts_with('.') && name != WORKSPACE_DIR)
}

/// Whether `path` names a prepare alias file (`NAME.prep.s9s.yaml`).
pub fn is_prepare_alias(path: &Path) -> bool {
    AliasRole::of_path(path) == Some(AliasRole::Prepare)
}

/// Whether the folder `dir` (below a workspace root) belongs to that
/// workspace when its parent does: not skipped, and not the root of a
/// workspace of its own.
pub fn joins_workspace(dir: &Path) -> bool {
    dir.file_name().is_some_and(|n| !skipped_folder(n)) && !dir.join(WORKSPACE_DIR).is_dir()
}

/// What a walk found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Walk {
    pub folders: Vec<PathBuf>,
    pub aliases: Vec<PathBuf>,
}

/// Walks the folder `top` and the folders below it that belong to the same
/// workspace, without following symbolic links. `visit` sees each folder
/// before it is read, so a file created in it afterwards is not missed when
/// `visit` starts watching it.
pub fn walk(top: &Path, visit: &mut dyn FnMut(&Path)) -> Walk {
    let mut found = Walk::default();
    let mut stack = vec![top.to_owned()];
    while let Some(dir) = stack.pop() {
        visit(&dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        found.folders.push(dir);
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                if joins_workspace(&path) {
                    stack.push(path);
                }
            } else if is_prepare_alias(&path) && (kind.is_file() || path.is_file()) {
                found.aliases.push(path);
            }
        }
    }
    found.folders.sort();
    found.aliases.sort();
    found
}
