//! The sqlrs extensions to LSP: every command, custom method and notification
//! name (defined here once, mirrored in `editors/vscode/src/protocol.ts`) and
//! the JSON shapes they carry (`docs/lsp-extensions.md`).

use serde::{Deserialize, Serialize};
use tower_lsp::lsp_types::notification::Notification;
use tower_lsp::lsp_types::{Position, Range, Url};

/// Runs the statement at a line: `[{uri, line}]`.
pub const CMD_RUN_STATEMENT: &str = "sqlrs.runStatement";
/// Prepares an alias and shows its DSN: `[{alias?}]`.
pub const CMD_PREPARE: &str = "sqlrs.prepare";
/// Shows an alias's plan: `[{alias?}]`.
pub const CMD_SHOW_PLAN: &str = "sqlrs.showPlan";
/// Cancels a running statement: `[{runId?}]`.
pub const CMD_CANCEL: &str = "sqlrs.cancel";
/// Stops the daemon; the next request starts it again.
pub const CMD_RESTART_DAEMON: &str = "sqlrs.restartDaemon";
/// Request: runs a statement, for clients with their own result views.
pub const REQ_EXECUTE: &str = "sqlrs/execute";
/// Request: cancels a run.
pub const REQ_CANCEL: &str = "sqlrs/cancel";
/// Notification: every finished run.
pub const NOTIF_RESULTS: &str = "sqlrs/results";
/// Notification: a chain file's status changed.
pub const NOTIF_FILE_STATUS: &str = "sqlrs/fileStatus";
/// The code action kind of "Run statement at cursor".
pub const CODE_ACTION_RUN: &str = "source.sqlrs.run";

/// Every name above, for the check against the VS Code mirror.
pub const ALL_NAMES: &[&str] = &[
    CMD_RUN_STATEMENT,
    CMD_PREPARE,
    CMD_SHOW_PLAN,
    CMD_CANCEL,
    CMD_RESTART_DAEMON,
    REQ_EXECUTE,
    REQ_CANCEL,
    NOTIF_RESULTS,
    NOTIF_FILE_STATUS,
    CODE_ACTION_RUN,
];

/// The commands the server executes (`executeCommandProvider`).
pub const COMMANDS: &[&str] = &[
    CMD_RUN_STATEMENT,
    CMD_PREPARE,
    CMD_SHOW_PLAN,
    CMD_CANCEL,
    CMD_RESTART_DAEMON,
];

/// `sqlrs/execute` and the argument of `sqlrs.runStatement`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteParams {
    pub uri: Url,
    /// 0-based; the statement spanning it (else the next one) runs.
    pub line: u32,
    /// Alias name or path; default: the `defaultAlias` setting, else the
    /// workspace's only alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Run against this named instance; default: the `instanceName` setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<String>,
    /// The id the client wants the run to have (to cancel it); default `r<N>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// `sqlrs.prepare` / `sqlrs.showPlan` argument.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AliasParams {
    #[serde(default)]
    pub alias: Option<String>,
    /// The document the command comes from: picks the workspace.
    #[serde(default)]
    pub uri: Option<Url>,
}

/// `sqlrs/cancel` and `sqlrs.cancel`: no `runId` cancels every running run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CancelParams {
    #[serde(default)]
    pub run_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CancelResult {
    pub cancelled: bool,
}

/// A finished run: the reply of `sqlrs/execute` and the `sqlrs/results` payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    pub run_id: String,
    pub uri: Url,
    pub range: Range,
    pub sql: String,
    pub alias: String,
    pub state_id: String,
    pub instance_id: String,
    /// Set when the run used a named instance.
    pub instance_name: Option<String>,
    pub elapsed_ms: f64,
    pub results: Vec<ResultSet>,
    pub notices: Vec<Notice>,
    pub error: Option<RunError>,
}

/// One result of a statement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResultSet {
    pub columns: Vec<Column>,
    /// At most `rowLimit` rows, values in PostgreSQL's text form.
    pub rows: Vec<Vec<Option<String>>>,
    /// Every row the statement returned or affected.
    pub row_count: u64,
    /// Rows were left out (`rowCount` > rows sent).
    pub truncated: bool,
    /// The command tag, e.g. `SELECT 2`, `INSERT 0 1`, `CREATE TABLE`.
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Column {
    pub name: String,
    /// The type name, e.g. `int4`; absent when it could not be described.
    #[serde(rename = "type")]
    pub type_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notice {
    pub severity: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunError {
    pub message: String,
    /// SQLSTATE; absent when the error did not come from the server.
    pub code: Option<String>,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// Where in the document the server pointed.
    pub position: Option<Position>,
}

/// `sqlrs/fileStatus` payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileStatusParams {
    pub uri: Url,
    pub alias: String,
    /// `cached` | `stale` | `building` | `failed` | `invalid`.
    pub status: String,
    pub state_id: Option<String>,
    pub step: Option<u32>,
    pub total: Option<u32>,
    pub message: Option<String>,
}

/// The `sqlrs/results` notification.
pub enum Results {}

impl Notification for Results {
    type Params = RunResult;
    const METHOD: &'static str = NOTIF_RESULTS;
}

/// The `sqlrs/fileStatus` notification.
pub enum FileStatus {}

impl Notification for FileStatus {
    type Params = FileStatusParams;
    const METHOD: &'static str = NOTIF_FILE_STATUS;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name must appear quoted in the VS Code extension's mirror.
    #[test]
    fn vscode_protocol_mirrors_every_name() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../editors/vscode/src/protocol.ts"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!(
                "{path} cannot be read ({e}): the VS Code extension must mirror every name of sqlrs-lsp/src/ext.rs there as `export const X = \"…\"`"
            )
        });
        let missing: Vec<&str> = ALL_NAMES
            .iter()
            .copied()
            .filter(|name| !text.contains(&format!("\"{name}\"")))
            .collect();
        assert!(
            missing.is_empty(),
            "{path} lacks {missing:?}: add an `export const X = \"…\"` line for each"
        );
    }

    #[test]
    fn names_are_unique() {
        let mut names = ALL_NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL_NAMES.len());
    }
}
