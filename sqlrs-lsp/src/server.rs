//! The language server's state and its LSP handlers, one small handler per
//! method; following workspaces lives in `workspaces`, the commands (runs,
//! prepare, plan) in `commands`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex as SyncMutex, RwLock};

use serde_json::{Value, json};
use sqlrs_proto::paths::Locations;
use sqlrs_proto::pb::ProjectStatus;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tower_lsp::jsonrpc::{Error, ErrorCode, Result};
use tower_lsp::lsp_types::*;
use tower_lsp::{Client, ClientSocket, LanguageServer, LspService};

use crate::daemon::{Daemon, DaemonError};
use crate::ext::{self, AliasParams, CancelParams, CancelResult, ExecuteParams, RunResult};
use crate::plan::PlanView;
use crate::settings::Settings;
use crate::split::{self, Kind};
use crate::status::View;
use crate::text;

/// Where the daemon is: its XDG locations and the binary started when none runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub locations: Locations,
    pub daemon_exe: PathBuf,
}

/// The service and the socket its client talks through.
pub fn service(config: Config) -> (LspService<Server>, ClientSocket) {
    LspService::build(|client| Server::new(client, config))
        .custom_method(ext::REQ_EXECUTE, Server::execute)
        .custom_method(ext::REQ_CANCEL, Server::cancel)
        .finish()
}

pub struct Server {
    inner: Arc<Inner>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Capabilities {
    pub(crate) lens_refresh: bool,
    pub(crate) progress: bool,
}

pub(crate) struct Document {
    pub(crate) text: String,
    pub(crate) sql: bool,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) daemon: Daemon,
    pub(crate) docs: RwLock<HashMap<Url, Document>>,
    pub(crate) settings: RwLock<Settings>,
    pub(crate) caps: RwLock<Capabilities>,
    /// Workspace folder → the sqlrs workspace root it belongs to.
    pub(crate) folders: SyncMutex<HashMap<PathBuf, PathBuf>>,
    /// Workspace root → the task following its status.
    pub(crate) watchers: SyncMutex<HashMap<PathBuf, JoinHandle<()>>>,
    /// Workspace root → its latest status.
    pub(crate) projects: SyncMutex<BTreeMap<PathBuf, ProjectStatus>>,
    pub(crate) shown: Mutex<Shown>,
    pub(crate) runs: SyncMutex<HashMap<String, watch::Sender<bool>>>,
    pub(crate) next_run: AtomicU64,
}

/// What the client was last sent, to send only changes.
#[derive(Default)]
pub(crate) struct Shown {
    pub(crate) view: View,
    pub(crate) sizes: HashMap<String, u64>,
    pub(crate) sizes_asked: HashSet<String>,
    pub(crate) diagnostics: HashSet<Url>,
    pub(crate) file_statuses: HashMap<(Url, PathBuf), ext::FileStatusParams>,
    /// Alias file → its progress token and last step reported.
    pub(crate) progress: HashMap<PathBuf, (NumberOrString, u32)>,
}

pub(crate) fn failed(message: impl std::fmt::Display) -> Error {
    Error {
        code: ErrorCode::ServerError(-32803),
        message: message.to_string().into(),
        data: None,
    }
}

pub(crate) fn invalid(message: impl std::fmt::Display) -> Error {
    Error::invalid_params(message.to_string())
}

impl From<DaemonError> for Error {
    fn from(e: DaemonError) -> Self {
        failed(e)
    }
}

/// The sqlrs workspace (a folder with `.sqlrs/`) holding `path`, if any.
pub fn workspace_root(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .find(|dir| dir.join(".sqlrs").is_dir())
        .map(Path::to_owned)
}

pub(crate) fn file_path(uri: &Url) -> Option<PathBuf> {
    uri.to_file_path().ok()
}

impl Server {
    fn new(client: Client, config: Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                daemon: Daemon::new(config.locations, config.daemon_exe),
                docs: RwLock::default(),
                settings: RwLock::default(),
                caps: RwLock::default(),
                folders: SyncMutex::default(),
                watchers: SyncMutex::default(),
                projects: SyncMutex::default(),
                shown: Mutex::default(),
                runs: SyncMutex::default(),
                next_run: AtomicU64::new(1),
            }),
        }
    }

    /// `sqlrs/execute`.
    pub async fn execute(&self, params: ExecuteParams) -> Result<RunResult> {
        self.inner.clone().execute(params).await
    }

    /// `sqlrs/cancel`.
    pub async fn cancel(&self, params: CancelParams) -> Result<CancelResult> {
        Ok(self.inner.cancel(params.run_id.as_deref()))
    }
}

#[tower_lsp::async_trait]
impl LanguageServer for Server {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        let caps = Capabilities {
            lens_refresh: params
                .capabilities
                .workspace
                .as_ref()
                .and_then(|w| w.code_lens.as_ref())
                .and_then(|c| c.refresh_support)
                .unwrap_or(false),
            progress: params
                .capabilities
                .window
                .as_ref()
                .and_then(|w| w.work_done_progress)
                .unwrap_or(false),
        };
        *self.inner.caps.write().unwrap() = caps;
        if let Some(options) = &params.initialization_options {
            *self.inner.settings.write().unwrap() = Settings::from_json(options);
        }
        let mut folders: Vec<PathBuf> = params
            .workspace_folders
            .unwrap_or_default()
            .iter()
            .filter_map(|f| file_path(&f.uri))
            .collect();
        #[allow(deprecated)]
        if folders.is_empty()
            && let Some(root) = params.root_uri.as_ref().and_then(file_path)
        {
            folders.push(root);
        }
        for folder in folders {
            self.inner.add_folder(folder);
        }
        Ok(InitializeResult {
            capabilities: ServerCapabilities {
                text_document_sync: Some(TextDocumentSyncCapability::Kind(
                    TextDocumentSyncKind::FULL,
                )),
                code_lens_provider: Some(CodeLensOptions {
                    resolve_provider: Some(false),
                }),
                hover_provider: Some(HoverProviderCapability::Simple(true)),
                code_action_provider: Some(CodeActionProviderCapability::Options(
                    CodeActionOptions {
                        code_action_kinds: Some(vec![CodeActionKind::new(ext::CODE_ACTION_RUN)]),
                        ..CodeActionOptions::default()
                    },
                )),
                execute_command_provider: Some(ExecuteCommandOptions {
                    commands: ext::COMMANDS.iter().map(|c| (*c).to_owned()).collect(),
                    ..ExecuteCommandOptions::default()
                }),
                workspace: Some(WorkspaceServerCapabilities {
                    workspace_folders: Some(WorkspaceFoldersServerCapabilities {
                        supported: Some(true),
                        change_notifications: Some(OneOf::Left(true)),
                    }),
                    file_operations: None,
                }),
                ..ServerCapabilities::default()
            },
            server_info: Some(ServerInfo {
                name: "sqlrs-lsp".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
        })
    }

    async fn shutdown(&self) -> Result<()> {
        for (_, task) in self.inner.watchers.lock().unwrap().drain() {
            task.abort();
        }
        self.inner.cancel(None);
        Ok(())
    }

    async fn did_change_workspace_folders(&self, params: DidChangeWorkspaceFoldersParams) {
        for removed in &params.event.removed {
            if let Some(folder) = file_path(&removed.uri) {
                self.inner.remove_folder(&folder).await;
            }
        }
        for added in &params.event.added {
            if let Some(folder) = file_path(&added.uri) {
                self.inner.add_folder(folder);
            }
        }
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        // Clients that pull configuration send null here: keep what we have.
        if params.settings.is_object() {
            *self.inner.settings.write().unwrap() = Settings::from_json(&params.settings);
        }
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        let doc = params.text_document;
        let sql = matches!(
            doc.language_id.as_str(),
            "sql" | "psql" | "pgsql" | "postgres"
        ) || [".sql", ".psql", ".pgsql"]
            .iter()
            .any(|ext| doc.uri.path().ends_with(ext));
        if let Some(root) = file_path(&doc.uri).as_deref().and_then(workspace_root) {
            self.inner.watch(root);
        }
        self.inner.docs.write().unwrap().insert(
            doc.uri,
            Document {
                text: doc.text,
                sql,
            },
        );
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        if let Some(change) = params.content_changes.into_iter().last()
            && let Some(doc) = self
                .inner
                .docs
                .write()
                .unwrap()
                .get_mut(&params.text_document.uri)
        {
            doc.text = change.text;
        }
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        self.inner
            .docs
            .write()
            .unwrap()
            .remove(&params.text_document.uri);
    }

    async fn code_lens(&self, params: CodeLensParams) -> Result<Option<Vec<CodeLens>>> {
        Ok(Some(
            self.inner.code_lenses(&params.text_document.uri).await,
        ))
    }

    async fn hover(&self, params: HoverParams) -> Result<Option<Hover>> {
        let position = params.text_document_position_params.position;
        let Some(path) = file_path(&params.text_document_position_params.text_document.uri) else {
            return Ok(None);
        };
        if position.line != 0 {
            return Ok(None);
        }
        let aliases: Vec<(String, PathBuf)> = {
            let shown = self.inner.shown.lock().await;
            shown
                .view
                .files
                .get(&path)
                .map(|entries| {
                    entries
                        .iter()
                        .map(|e| (e.alias.clone(), e.alias_path.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        if aliases.is_empty() {
            return Ok(None);
        }
        let mut parts = Vec::new();
        for (alias, alias_path) in aliases {
            parts.push(match self.inner.daemon.plan(&alias_path).await {
                Ok(plan) => PlanView::new(&alias, plan).markdown(),
                Err(e) => format!("**sqlrs plan: {alias}**: {e}"),
            });
        }
        Ok(Some(Hover {
            contents: HoverContents::Markup(MarkupContent {
                kind: MarkupKind::Markdown,
                value: parts.join("\n---\n"),
            }),
            range: Some(text::line_range("", 0)),
        }))
    }

    async fn code_action(&self, params: CodeActionParams) -> Result<Option<CodeActionResponse>> {
        let uri = params.text_document.uri;
        let line = params.range.start.line;
        let has_statement = {
            let docs = self.inner.docs.read().unwrap();
            docs.get(&uri)
                .is_some_and(|d| d.sql && split::split(&d.text).iter().any(|s| s.kind == Kind::Sql))
        };
        if !has_statement {
            return Ok(Some(Vec::new()));
        }
        Ok(Some(vec![CodeActionOrCommand::CodeAction(CodeAction {
            title: "Run statement at cursor".into(),
            kind: Some(CodeActionKind::new(ext::CODE_ACTION_RUN)),
            command: Some(run_command("Run statement at cursor", &uri, line)),
            ..CodeAction::default()
        })]))
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<Value>> {
        let arg = params.arguments.into_iter().next().unwrap_or(Value::Null);
        let parse = |what: &str| -> Result<Value> {
            if arg.is_null() {
                Ok(json!({}))
            } else if arg.is_object() {
                Ok(arg.clone())
            } else {
                Err(invalid(format!(
                    "{} expects one argument object {what}, got {arg}",
                    params.command
                )))
            }
        };
        let inner = &self.inner;
        let reply = match params.command.as_str() {
            ext::CMD_RUN_STATEMENT => {
                let params: ExecuteParams = serde_json::from_value(parse("{uri, line}")?)
                    .map_err(|e| invalid(format!("{}: {e}", ext::CMD_RUN_STATEMENT)))?;
                serde_json::to_value(inner.clone().execute(params).await?)
            }
            ext::CMD_PREPARE => {
                let params: AliasParams = serde_json::from_value(parse("{alias?}")?)
                    .map_err(|e| invalid(format!("{}: {e}", ext::CMD_PREPARE)))?;
                Ok(inner.prepare(params).await?)
            }
            ext::CMD_SHOW_PLAN => {
                let params: AliasParams = serde_json::from_value(parse("{alias?}")?)
                    .map_err(|e| invalid(format!("{}: {e}", ext::CMD_SHOW_PLAN)))?;
                Ok(inner.show_plan(params).await?)
            }
            ext::CMD_CANCEL => {
                let params: CancelParams = serde_json::from_value(parse("{runId?}")?)
                    .map_err(|e| invalid(format!("{}: {e}", ext::CMD_CANCEL)))?;
                serde_json::to_value(inner.cancel(params.run_id.as_deref()))
            }
            ext::CMD_RESTART_DAEMON => {
                // Open status streams would keep the daemon from stopping.
                let roots: Vec<PathBuf> = {
                    let mut watchers = inner.watchers.lock().unwrap();
                    watchers
                        .drain()
                        .map(|(root, task)| {
                            task.abort();
                            root
                        })
                        .collect()
                };
                let stopped = inner.daemon.shutdown().await;
                for root in roots {
                    inner.watch(root);
                }
                stopped?;
                inner
                    .client
                    .show_message(
                        MessageType::INFO,
                        "sqlrs: the daemon was stopped; it starts again with the next request",
                    )
                    .await;
                Ok(json!({"stopped": true}))
            }
            other => {
                return Err(invalid(format!(
                    "unknown command {other}; known: {}",
                    ext::COMMANDS.join(", ")
                )));
            }
        };
        reply
            .map(Some)
            .map_err(|e| failed(format!("cannot encode the reply: {e}")))
    }
}

pub(crate) fn run_command(title: &str, uri: &Url, line: u32) -> Command {
    Command {
        title: title.into(),
        command: ext::CMD_RUN_STATEMENT.into(),
        arguments: Some(vec![json!({"uri": uri, "line": line})]),
    }
}

impl Inner {
    async fn code_lenses(&self, uri: &Url) -> Vec<CodeLens> {
        let mut lenses = Vec::new();
        if let Some(path) = file_path(uri) {
            let shown = self.shown.lock().await;
            for (title, entry) in shown.view.lens_titles(&path) {
                lenses.push(CodeLens {
                    range: text::line_range("", 0),
                    command: Some(Command {
                        title,
                        command: ext::CMD_SHOW_PLAN.into(),
                        arguments: Some(vec![json!({"alias": entry.alias_path})]),
                    }),
                    data: None,
                });
            }
        }
        let docs = self.docs.read().unwrap();
        if let Some(doc) = docs.get(uri).filter(|d| d.sql) {
            for statement in split::split(&doc.text) {
                if statement.kind != Kind::Sql {
                    continue;
                }
                let range = text::range(&doc.text, statement.range);
                lenses.push(CodeLens {
                    range: Range::new(range.start, range.start),
                    command: Some(run_command("▶ Run", uri, range.start.line)),
                    data: None,
                });
            }
        }
        lenses
    }
}
