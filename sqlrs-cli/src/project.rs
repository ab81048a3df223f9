//! `sqlrs watch` without a job: registering the workspace of the current
//! folder with sqlrsd (or forgetting it), and drawing a workspace's status:
//! its aliases, cached, stale, building or failed.

use anyhow::Context;
use serde::Serialize;
use sqlrs_proto::client::Client;
use sqlrs_proto::pb::{AliasStatus, FileStatus, ProjectRef, ProjectStatus};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::Ctx;
use crate::daemon;
use crate::error::{CliError, exit, reply};
use crate::job::ErrorItem;
use crate::render::{self, SHORT_ID, short, some_text, some_time};

/// A workspace's status in JSON output.
#[derive(Debug, Serialize, PartialEq)]
pub struct ProjectView {
    pub root: String,
    /// Whether changed chains are rebuilt in the background.
    pub prebuild: bool,
    /// False once the workspace was forgotten (`watch --stop`).
    pub watched: bool,
    pub updated_at_ms: Option<u64>,
    pub aliases: Vec<AliasView>,
}

/// One prepare alias of a workspace.
#[derive(Debug, Serialize, PartialEq)]
pub struct AliasView {
    pub name: String,
    /// The NAME.prep.s9s.yaml file.
    pub path: String,
    /// "cached" | "stale" | "building" | "failed" | "invalid".
    pub status: String,
    pub head_state_id: Option<String>,
    /// While building: the 1-based step running, of `total`.
    pub step: Option<u32>,
    pub total: Option<u32>,
    pub error: Option<ErrorItem>,
    /// The prebuild job, while one runs or after it failed.
    pub job_id: Option<String>,
    pub files: Vec<FileView>,
}

/// One file of an alias's chain.
#[derive(Debug, Serialize, PartialEq)]
pub struct FileView {
    pub path: String,
    pub status: String,
    pub state_id: Option<String>,
    pub step: Option<u32>,
}

impl From<&ProjectStatus> for ProjectView {
    fn from(p: &ProjectStatus) -> Self {
        ProjectView {
            root: p.root.clone(),
            prebuild: p.prebuild,
            watched: p.watched,
            updated_at_ms: some_time(p.updated_at_ms),
            aliases: p.aliases.iter().map(AliasView::from).collect(),
        }
    }
}

impl From<&AliasStatus> for AliasView {
    fn from(a: &AliasStatus) -> Self {
        AliasView {
            name: a.name.clone(),
            path: a.path.clone(),
            status: a.status.clone(),
            head_state_id: some_text(&a.head_state_id),
            step: (a.step != 0).then_some(a.step),
            total: (a.total != 0).then_some(a.total),
            error: a.error.as_ref().map(ErrorItem::from),
            job_id: some_text(&a.job_id),
            files: a.files.iter().map(FileView::from).collect(),
        }
    }
}

impl From<&FileStatus> for FileView {
    fn from(f: &FileStatus) -> Self {
        FileView {
            path: f.path.clone(),
            status: f.status.clone(),
            state_id: some_text(&f.state_id),
            step: (f.step != 0).then_some(f.step),
        }
    }
}

/// `on` / `off`.
pub fn on_off(enabled: bool) -> &'static str {
    if enabled { "on" } else { "off" }
}

/// What an alias line adds to its status: the step while building, the
/// error (its first line) when failed or invalid.
fn detail(a: &AliasView) -> String {
    match (&a.error, a.status.as_str(), a.step) {
        (Some(error), "failed" | "invalid", _) => error
            .located()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        (_, "building", Some(step)) => format!("step {step}/{}", a.total.unwrap_or(step)),
        _ => String::new(),
    }
}

/// One line per alias: name, status, head state, detail.
pub fn aliases_table(aliases: &[AliasView]) -> String {
    if aliases.is_empty() {
        return "no aliases: add a NAME.prep.s9s.yaml file to the workspace".into();
    }
    render::table(
        ["ALIAS", "STATUS", "HEAD", "DETAIL"],
        aliases.iter().map(|a| {
            [
                a.name.clone(),
                a.status.clone(),
                a.head_state_id
                    .as_deref()
                    .map_or("-", |id| short(id, SHORT_ID))
                    .to_owned(),
                detail(a),
            ]
        }),
    )
}

impl ProjectView {
    /// The workspace's status as `sqlrs watch` prints it.
    pub fn text(&self) -> String {
        format!(
            "workspace  {}\nprebuild   {}\n{}",
            self.root,
            on_off(self.prebuild),
            aliases_table(&self.aliases)
        )
    }
}

/// `sqlrs watch [--stop] [--follow]` in the current folder's workspace.
pub async fn watch(ctx: Ctx, stop: bool, follow: bool) -> anyhow::Result<u8> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let request = ProjectRef {
        path: cwd.to_string_lossy().into_owned(),
        stop,
    };
    let mut conn = daemon::connect(true).await?;
    if follow {
        return follow_project(ctx, &mut conn.client, request).await;
    }
    let status = ProjectView::from(&reply(conn.client.register_project(request).await)?);
    if ctx.json() {
        render::print_json(&status)?;
    } else if stop {
        println!("{} is no longer watched", status.root);
    } else {
        println!("{}", status.text());
    }
    Ok(exit::OK)
}

/// Prints the workspace's status on every change until Ctrl-C: a block of
/// text each, separated by a blank line, or one JSON document per line.
async fn follow_project(ctx: Ctx, client: &mut Client, request: ProjectRef) -> anyhow::Result<u8> {
    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut stream = reply(client.watch_project(request).await)?;
    let mut first = true;
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(status) = message.map_err(CliError::Daemon)? else {
                    anyhow::bail!(
                        "sqlrsd ended the workspace's status stream (was it stopped?); \
                         `sqlrs status` shows whether it runs, `sqlrs watch --follow` follows again"
                    );
                };
                let status = ProjectView::from(&status);
                if ctx.json() {
                    println!("{}", serde_json::to_string(&status)?);
                } else {
                    println!("{}{}", if first { "" } else { "\n" }, status.text());
                }
                first = false;
            }
            _ = interrupts.recv() => return Ok(exit::OK),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlrs_proto::pb::JobError;

    fn alias(
        name: &str,
        status: &str,
        head: &str,
        step: u32,
        error: Option<JobError>,
    ) -> AliasStatus {
        AliasStatus {
            name: name.into(),
            path: format!("/w/{name}.prep.s9s.yaml"),
            status: status.into(),
            head_state_id: head.into(),
            step,
            total: if step == 0 { 0 } else { 5 },
            error,
            files: Vec::new(),
            job_id: String::new(),
        }
    }

    fn sql_error(file: &str, line: u32) -> JobError {
        JobError {
            reason: "sql_error".into(),
            message: "syntax error at or near \"selec\"\nLINE 1: selec 1".into(),
            file: file.into(),
            line,
            step: 2,
        }
    }

    #[test]
    fn alias_lines() {
        let head = "0123456789abcdef0123456789abcdef";
        // (alias, its line in the table)
        let cases = [
            (
                alias("db", "cached", head, 0, None),
                "db     cached    0123456789ab",
            ),
            (
                alias("db", "stale", head, 0, None),
                "db     stale     0123456789ab",
            ),
            (
                alias("db", "building", head, 2, None),
                "db     building  0123456789ab  step 2/5",
            ),
            (
                alias("db", "building", head, 0, None),
                "db     building  0123456789ab",
            ),
            (
                alias("db", "failed", head, 0, Some(sql_error("seed.sql", 12))),
                "db     failed    0123456789ab  seed.sql:12: syntax error at or near \"selec\"",
            ),
            (
                alias(
                    "db",
                    "invalid",
                    "",
                    0,
                    Some(JobError {
                        reason: "missing_file".into(),
                        message: "schema.sql does not exist".into(),
                        ..Default::default()
                    }),
                ),
                "db     invalid   -             schema.sql does not exist",
            ),
            // An error left from an earlier build does not show once cached.
            (
                alias("db", "cached", head, 0, Some(sql_error("seed.sql", 3))),
                "db     cached    0123456789ab",
            ),
        ];
        // One table, so that every row has the same column widths.
        let views: Vec<AliasView> = cases.iter().map(|(a, _)| a.into()).collect();
        let table = aliases_table(&views);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), cases.len() + 1, "{table}");
        assert_eq!(lines[0], "ALIAS  STATUS    HEAD          DETAIL");
        for ((a, want), got) in cases.iter().zip(&lines[1..]) {
            assert_eq!(got, want, "{a:?}");
        }
    }

    #[test]
    fn workspace_blocks() {
        let project = ProjectStatus {
            root: "/home/me/shop".into(),
            prebuild: true,
            aliases: vec![
                alias("app", "building", "fedcba9876543210", 2, None),
                alias("db", "cached", "0123456789abcdef", 0, None),
            ],
            updated_at_ms: 5,
            watched: true,
        };
        let empty = ProjectStatus {
            root: "/srv/empty".into(),
            prebuild: false,
            aliases: Vec::new(),
            updated_at_ms: 0,
            watched: true,
        };
        let cases = [
            (
                project.clone(),
                "workspace  /home/me/shop\n\
                 prebuild   on\n\
                 ALIAS  STATUS    HEAD          DETAIL\n\
                 app    building  fedcba987654  step 2/5\n\
                 db     cached    0123456789ab",
            ),
            (
                empty,
                "workspace  /srv/empty\n\
                 prebuild   off\n\
                 no aliases: add a NAME.prep.s9s.yaml file to the workspace",
            ),
        ];
        for (p, want) in cases {
            assert_eq!(ProjectView::from(&p).text(), want);
        }
    }

    #[test]
    fn json_shape() {
        let mut failed = alias("db", "failed", "", 0, Some(sql_error("seed.sql", 12)));
        failed.job_id = "j1".into();
        failed.files = vec![
            FileStatus {
                path: "/w/schema.sql".into(),
                status: "cached".into(),
                state_id: "s1".into(),
                step: 1,
            },
            FileStatus {
                path: "/w/seed.sql".into(),
                status: "failed".into(),
                state_id: String::new(),
                step: 2,
            },
        ];
        let project = ProjectStatus {
            root: "/w".into(),
            prebuild: false,
            aliases: vec![failed],
            updated_at_ms: 1_700,
            watched: false,
        };
        assert_eq!(
            serde_json::to_value(ProjectView::from(&project)).unwrap(),
            serde_json::json!({
                "root": "/w", "prebuild": false, "watched": false, "updated_at_ms": 1700,
                "aliases": [{
                    "name": "db", "path": "/w/db.prep.s9s.yaml", "status": "failed",
                    "head_state_id": null, "step": null, "total": null, "job_id": "j1",
                    "error": {
                        "reason": "sql_error",
                        "message": "syntax error at or near \"selec\"\nLINE 1: selec 1",
                        "file": "seed.sql", "line": 12, "step": 2,
                    },
                    "files": [
                        {"path": "/w/schema.sql", "status": "cached", "state_id": "s1", "step": 1},
                        {"path": "/w/seed.sql", "status": "failed", "state_id": null, "step": 2},
                    ],
                }],
            })
        );
    }
}
