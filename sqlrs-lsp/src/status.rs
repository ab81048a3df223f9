//! From the daemon's workspace statuses to what the editor shows: status
//! lens titles per chain file, `sqlrs/fileStatus` payloads, diagnostics at
//! the failing file and line, and the aliases building right now.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use sqlrs_proto::pb::{AliasStatus, JobError, ProjectStatus};

/// Hex characters of a state id shown in a lens.
pub const SHORT_ID: usize = 12;

/// One alias's status as seen from one file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileAliasStatus {
    pub alias: String,
    pub alias_path: PathBuf,
    /// `cached` | `stale` | `building` | `failed` | `invalid`.
    pub status: String,
    pub state_id: Option<String>,
    pub step: Option<u32>,
    pub total: Option<u32>,
    /// The error's first line (located), when failed or invalid.
    pub message: Option<String>,
    /// What the lens shows after `sqlrs: ` (without the alias prefix).
    pub text: String,
}

/// An error to underline: file, 0-based line, the error.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub file: PathBuf,
    pub line: u32,
    pub reason: String,
    pub message: String,
    pub alias: String,
    pub alias_path: PathBuf,
}

/// An alias whose build runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Building {
    pub alias: String,
    pub alias_path: PathBuf,
    pub step: u32,
    pub total: u32,
}

/// Everything the editor shows for a set of workspaces.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct View {
    /// Per chain file (and alias file), one entry per alias, ordered.
    pub files: BTreeMap<PathBuf, Vec<FileAliasStatus>>,
    pub failures: Vec<Failure>,
    pub building: Vec<Building>,
}

impl View {
    /// The view of `projects`; `sizes` holds the known state sizes.
    pub fn new<'a>(
        projects: impl IntoIterator<Item = &'a ProjectStatus>,
        sizes: &HashMap<String, u64>,
    ) -> Self {
        let mut view = View::default();
        for project in projects {
            let root = Path::new(&project.root);
            for alias in &project.aliases {
                view.add_alias(root, alias, sizes);
            }
        }
        for entries in view.files.values_mut() {
            entries.sort_by(|a, b| a.alias.cmp(&b.alias).then(a.alias_path.cmp(&b.alias_path)));
        }
        view
    }

    fn add_alias(&mut self, root: &Path, alias: &AliasStatus, sizes: &HashMap<String, u64>) {
        let alias_path = PathBuf::from(&alias.path);
        let error = alias
            .error
            .as_ref()
            .filter(|_| matches!(alias.status.as_str(), "failed" | "invalid"));
        let message = error.map(|e| first_line(&located(root, e)));
        let entry = |status: &str, state_id: &str| {
            let status = if alias.status == "invalid" {
                "invalid"
            } else {
                status
            };
            let state_id = (!state_id.is_empty()).then(|| state_id.to_owned());
            let building = status == "building";
            FileAliasStatus {
                alias: alias.name.clone(),
                alias_path: alias_path.clone(),
                status: status.to_owned(),
                text: lens_text(status, state_id.as_deref(), alias, root, sizes),
                state_id,
                step: building.then_some(alias.step),
                total: building.then_some(alias.total),
                message: message
                    .clone()
                    .filter(|_| matches!(status, "failed" | "invalid")),
            }
        };
        let mut has_alias_file = false;
        for file in &alias.files {
            has_alias_file |= file.path == alias.path;
            self.files
                .entry(PathBuf::from(&file.path))
                .or_default()
                .push(entry(&file.status, &file.state_id));
        }
        if !has_alias_file {
            self.files
                .entry(alias_path.clone())
                .or_default()
                .push(entry(&alias.status, &alias.head_state_id));
        }
        if let Some(error) = error {
            let file = if error.file.is_empty() {
                alias_path.clone()
            } else {
                root.join(&error.file)
            };
            self.failures.push(Failure {
                file,
                line: error.line.saturating_sub(1),
                reason: error.reason.clone(),
                message: error.message.clone(),
                alias: alias.name.clone(),
                alias_path: alias_path.clone(),
            });
        }
        if alias.status == "building" {
            self.building.push(Building {
                alias: alias.name.clone(),
                alias_path,
                step: alias.step,
                total: alias.total,
            });
        }
    }

    /// The lens titles of `file`: `sqlrs: …`, with the alias name when the
    /// file is in several chains.
    pub fn lens_titles(&self, file: &Path) -> Vec<(String, &FileAliasStatus)> {
        let Some(entries) = self.files.get(file) else {
            return Vec::new();
        };
        entries
            .iter()
            .map(|e| {
                let title = if entries.len() > 1 {
                    format!("sqlrs: {} · {}", e.alias, e.text)
                } else {
                    format!("sqlrs: {}", e.text)
                };
                (title, e)
            })
            .collect()
    }
}

fn lens_text(
    status: &str,
    state_id: Option<&str>,
    alias: &AliasStatus,
    root: &Path,
    sizes: &HashMap<String, u64>,
) -> String {
    let error = alias.error.as_ref();
    match status {
        "cached" => {
            let mut text = String::from("cached");
            if let Some(id) = state_id {
                text.push_str(" · ");
                text.push_str(&id[..id.len().min(SHORT_ID)]);
                if let Some(size) = sizes.get(id) {
                    text.push_str(&format!(
                        " · {}",
                        bytesize::ByteSize::b(*size).display().iec()
                    ));
                }
            }
            text
        }
        "building" => format!("building {}/{}", alias.step, alias.total),
        "failed" => match error {
            Some(e) if !e.file.is_empty() && e.line > 0 => {
                format!("failed · {}:{}", relative(root, &e.file), e.line)
            }
            Some(e) => format!("failed · {}", first_line(&e.message)),
            None => "failed".into(),
        },
        "invalid" => match error {
            Some(e) => format!("invalid · {}", first_line(&located(root, e))),
            None => "invalid".into(),
        },
        other => other.to_owned(),
    }
}

/// `file:line: message` with the file relative to the workspace.
fn located(root: &Path, error: &JobError) -> String {
    let mut e = error.clone();
    e.file = relative(root, &e.file);
    crate::daemon::located(&e)
}

fn relative(root: &Path, file: &str) -> String {
    Path::new(file)
        .strip_prefix(root)
        .map_or_else(|_| file.to_owned(), |p| p.display().to_string())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlrs_proto::pb::FileStatus;

    const HEAD: &str = "0123456789abcdef0123456789abcdef";

    fn file(path: &str, status: &str, state: &str, step: u32) -> FileStatus {
        FileStatus {
            path: path.into(),
            status: status.into(),
            state_id: state.into(),
            step,
        }
    }

    fn alias(name: &str, status: &str, files: Vec<FileStatus>) -> AliasStatus {
        AliasStatus {
            name: name.into(),
            path: format!("/w/{name}.prep.s9s.yaml"),
            status: status.into(),
            head_state_id: HEAD.into(),
            step: 2,
            total: 3,
            error: None,
            files,
            job_id: String::new(),
        }
    }

    fn project(aliases: Vec<AliasStatus>) -> ProjectStatus {
        ProjectStatus {
            root: "/w".into(),
            prebuild: true,
            aliases,
            updated_at_ms: 1,
            watched: true,
        }
    }

    fn titles(view: &View, path: &str) -> Vec<String> {
        view.lens_titles(Path::new(path))
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    #[test]
    fn lens_titles_table() {
        let sql_error = JobError {
            reason: "sql_error".into(),
            message: "relation \"nope\" does not exist\nLINE 1: select * from nope".into(),
            file: "/w/inc/types.sql".into(),
            line: 3,
            step: 1,
        };
        let mut failed = alias(
            "db",
            "failed",
            vec![
                file("/w/schema.sql", "failed", "", 1),
                file("/w/inc/types.sql", "failed", "", 1),
                file("/w/seed.sql", "stale", "", 2),
            ],
        );
        failed.error = Some(sql_error.clone());
        let mut invalid = alias(
            "bad",
            "invalid",
            vec![file("/w/nowhere.sql", "failed", "", 0)],
        );
        invalid.head_state_id.clear();
        invalid.error = Some(JobError {
            reason: "missing_file".into(),
            message: "nowhere.sql does not exist".into(),
            file: "/w/nowhere.sql".into(),
            line: 0,
            step: 0,
        });
        // (aliases, file, its lens titles)
        let cases: Vec<(Vec<AliasStatus>, &str, Vec<&str>)> = vec![
            (
                vec![alias(
                    "db",
                    "cached",
                    vec![file("/w/a.sql", "cached", HEAD, 1)],
                )],
                "/w/a.sql",
                vec!["sqlrs: cached · 0123456789ab · 11.8 MiB"],
            ),
            (
                vec![alias(
                    "db",
                    "cached",
                    vec![file("/w/a.sql", "cached", "ffff", 1)],
                )],
                "/w/a.sql",
                vec!["sqlrs: cached · ffff"],
            ),
            (
                vec![alias("db", "stale", vec![file("/w/a.sql", "stale", "", 1)])],
                "/w/a.sql",
                vec!["sqlrs: stale"],
            ),
            (
                vec![alias(
                    "db",
                    "building",
                    vec![file("/w/a.sql", "building", "", 1)],
                )],
                "/w/a.sql",
                vec!["sqlrs: building 2/3"],
            ),
            (
                vec![alias(
                    "db",
                    "building",
                    vec![file("/w/a.sql", "building", "", 1)],
                )],
                "/w/db.prep.s9s.yaml",
                vec!["sqlrs: building 2/3"],
            ),
            (vec![failed.clone()], "/w/seed.sql", vec!["sqlrs: stale"]),
            (
                vec![failed.clone()],
                "/w/schema.sql",
                vec!["sqlrs: failed · inc/types.sql:3"],
            ),
            (
                vec![invalid.clone()],
                "/w/bad.prep.s9s.yaml",
                vec!["sqlrs: invalid · nowhere.sql: nowhere.sql does not exist"],
            ),
            (
                vec![
                    alias("db", "cached", vec![file("/w/a.sql", "cached", HEAD, 1)]),
                    alias("app", "stale", vec![file("/w/a.sql", "stale", "", 1)]),
                ],
                "/w/a.sql",
                vec![
                    "sqlrs: app · stale",
                    "sqlrs: db · cached · 0123456789ab · 11.8 MiB",
                ],
            ),
            (
                vec![alias(
                    "db",
                    "cached",
                    vec![file("/w/a.sql", "cached", HEAD, 1)],
                )],
                "/w/other.sql",
                vec![],
            ),
        ];
        let sizes = HashMap::from([(HEAD.to_owned(), 12_345_678)]);
        for (aliases, path, want) in cases {
            let p = project(aliases);
            let view = View::new([&p], &sizes);
            assert_eq!(titles(&view, path), want, "{path} in {p:#?}");
        }
    }

    #[test]
    fn failures_and_building() {
        let mut failed = alias("db", "failed", vec![]);
        failed.error = Some(JobError {
            reason: "sql_error".into(),
            message: "boom".into(),
            file: "/w/inc/types.sql".into(),
            line: 3,
            step: 1,
        });
        let mut invalid = alias("bad", "invalid", vec![]);
        invalid.error = Some(JobError {
            reason: "alias_error".into(),
            message: "cannot parse".into(),
            file: String::new(),
            line: 0,
            step: 0,
        });
        // A cached alias keeps an old error: nothing to underline.
        let mut cached = alias("ok", "cached", vec![]);
        cached.error = failed.error.clone();
        let building = alias("app", "building", vec![]);
        let p = project(vec![failed, invalid, cached, building]);
        let view = View::new([&p], &HashMap::new());
        let failures: Vec<(&Path, u32, &str)> = view
            .failures
            .iter()
            .map(|f| (f.file.as_path(), f.line, f.alias.as_str()))
            .collect();
        assert_eq!(
            failures,
            [
                (Path::new("/w/inc/types.sql"), 2, "db"),
                (Path::new("/w/bad.prep.s9s.yaml"), 0, "bad"),
            ]
        );
        assert_eq!(
            view.building,
            [Building {
                alias: "app".into(),
                alias_path: "/w/app.prep.s9s.yaml".into(),
                step: 2,
                total: 3
            }]
        );
    }
}
