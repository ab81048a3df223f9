//! The language server: one small handler per LSP method; workspace status
//! from the daemon's `WatchProject` streams, statement runs on instances the
//! daemon hands out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, RwLock};
use std::time::Duration;

use serde_json::{Value, json};
use sqlrs_proto::paths::Locations;
use sqlrs_proto::pb::ProjectStatus;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tower_lsp::jsonrpc::{Error, ErrorCode, Result};
use tower_lsp::lsp_types::notification::Progress;
use tower_lsp::lsp_types::request::WorkDoneProgressCreate;
use tower_lsp::lsp_types::*;
use tower_lsp::{Client, ClientSocket, LanguageServer, LspService};

use crate::daemon::{Daemon, DaemonError};
use crate::ext::{self, AliasParams, CancelParams, CancelResult, ExecuteParams, RunResult};
use crate::plan::PlanView;
use crate::settings::Settings;
use crate::split::{self, Kind};
use crate::status::View;
use crate::{run, text};

/// Longest wait between attempts to re-subscribe to a workspace.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the client may take to answer `window/workDoneProgress/create`.
const CLIENT_REPLY: Duration = Duration::from_secs(5);

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
struct Capabilities {
    lens_refresh: bool,
    progress: bool,
}

struct Document {
    text: String,
    sql: bool,
}

struct Inner {
    client: Client,
    daemon: Daemon,
    docs: RwLock<HashMap<Url, Document>>,
    settings: RwLock<Settings>,
    caps: RwLock<Capabilities>,
    /// Workspace folder → the sqlrs workspace root it belongs to.
    folders: SyncMutex<HashMap<PathBuf, PathBuf>>,
    /// Workspace root → the task following its status.
    watchers: SyncMutex<HashMap<PathBuf, JoinHandle<()>>>,
    /// Workspace root → its latest status.
    projects: SyncMutex<BTreeMap<PathBuf, ProjectStatus>>,
    shown: Mutex<Shown>,
    runs: SyncMutex<HashMap<String, watch::Sender<bool>>>,
    next_run: AtomicU64,
}

/// What the client was last sent, to send only changes.
#[derive(Default)]
struct Shown {
    view: View,
    sizes: HashMap<String, u64>,
    sizes_asked: HashSet<String>,
    diagnostics: HashSet<Url>,
    file_statuses: HashMap<(Url, PathBuf), ext::FileStatusParams>,
    /// Alias file → its progress token and last step reported.
    progress: HashMap<PathBuf, (NumberOrString, u32)>,
}

fn failed(message: impl std::fmt::Display) -> Error {
    Error {
        code: ErrorCode::ServerError(-32803),
        message: message.to_string().into(),
        data: None,
    }
}

fn invalid(message: impl std::fmt::Display) -> Error {
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

fn file_path(uri: &Url) -> Option<PathBuf> {
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

fn run_command(title: &str, uri: &Url, line: u32) -> Command {
    Command {
        title: title.into(),
        command: ext::CMD_RUN_STATEMENT.into(),
        arguments: Some(vec![json!({"uri": uri, "line": line})]),
    }
}

/// Cancels its run when dropped before the run finished (the client
/// cancelled the request, or the server is going away).
struct CancelOnDrop(watch::Sender<bool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Inner {
    fn add_folder(self: &Arc<Self>, folder: PathBuf) {
        let Some(root) = workspace_root(&folder) else {
            tracing::info!(
                "{} is no sqlrs workspace (no .sqlrs/ in it or above)",
                folder.display()
            );
            return;
        };
        self.folders.lock().unwrap().insert(folder, root.clone());
        self.watch(root);
    }

    async fn remove_folder(self: &Arc<Self>, folder: &Path) {
        let Some(root) = self.folders.lock().unwrap().remove(folder) else {
            return;
        };
        if self.folders.lock().unwrap().values().any(|r| *r == root) {
            return;
        }
        if let Some(task) = self.watchers.lock().unwrap().remove(&root) {
            task.abort();
        }
        self.projects.lock().unwrap().remove(&root);
        self.refresh().await;
    }

    /// Follows `root`'s status unless already following it.
    fn watch(self: &Arc<Self>, root: PathBuf) {
        let mut watchers = self.watchers.lock().unwrap();
        if watchers.contains_key(&root) {
            return;
        }
        let inner = self.clone();
        let task = tokio::spawn(inner.follow(root.clone()));
        watchers.insert(root, task);
    }

    /// Subscribes to `root`'s status and shows every update; re-subscribes
    /// (starting the daemon again if needed) when the stream ends.
    async fn follow(self: Arc<Self>, root: PathBuf) {
        let mut backoff = Duration::from_millis(100);
        let mut reported = false;
        loop {
            match self.daemon.watch_project(&root).await {
                Ok(mut stream) => {
                    backoff = Duration::from_millis(100);
                    reported = false;
                    loop {
                        match stream.message().await {
                            Ok(Some(status)) => self.update(&root, status).await,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!("status stream of {} ended: {e}", root.display());
                                break;
                            }
                        }
                    }
                    self.daemon.reset().await;
                }
                Err(e) => {
                    tracing::warn!("cannot follow {}: {e}", root.display());
                    if !reported {
                        reported = true;
                        self.client
                            .show_message(
                                MessageType::ERROR,
                                format!(
                                    "sqlrs: cannot follow the workspace {}: {e}",
                                    root.display()
                                ),
                            )
                            .await;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn update(&self, root: &Path, status: ProjectStatus) {
        {
            let mut projects = self.projects.lock().unwrap();
            if status.watched {
                projects.insert(root.to_owned(), status);
            } else {
                projects.remove(root);
            }
        }
        self.refresh().await;
    }

    /// Recomputes what the editor shows and sends what changed.
    async fn refresh(&self) {
        let mut shown = self.shown.lock().await;
        let projects: Vec<ProjectStatus> =
            self.projects.lock().unwrap().values().cloned().collect();
        let mut view = View::new(&projects, &shown.sizes);
        let unknown: Vec<String> = view
            .files
            .values()
            .flatten()
            .filter(|e| e.status == "cached")
            .filter_map(|e| e.state_id.clone())
            .filter(|id| !shown.sizes.contains_key(id) && !shown.sizes_asked.contains(id))
            .collect();
        if !unknown.is_empty() {
            shown.sizes_asked.extend(unknown);
            match self.daemon.state_sizes().await {
                Ok(sizes) => {
                    shown.sizes = sizes;
                    view = View::new(&projects, &shown.sizes);
                }
                Err(e) => tracing::warn!("cannot list state sizes: {e}"),
            }
        }
        self.publish_diagnostics(&mut shown, &view).await;
        self.publish_file_statuses(&mut shown, &view).await;
        self.report_progress(&mut shown, &view).await;
        let lenses_changed = shown.view.files != view.files;
        shown.view = view;
        drop(shown);
        if lenses_changed && self.caps.read().unwrap().lens_refresh {
            let client = self.client.clone();
            tokio::spawn(async move {
                if let Err(e) = client.code_lens_refresh().await {
                    tracing::debug!("codeLens/refresh: {e}");
                }
            });
        }
    }

    async fn publish_diagnostics(&self, shown: &mut Shown, view: &View) {
        let mut by_uri: BTreeMap<Url, Vec<Diagnostic>> = BTreeMap::new();
        for failure in &view.failures {
            let (file, line) = match self.line_text_range(&failure.file, failure.line) {
                Some(range) => (failure.file.clone(), range),
                // A file that cannot be read (a missing input): on the alias.
                None => (failure.alias_path.clone(), text::line_range("", 0)),
            };
            let Ok(uri) = Url::from_file_path(&file) else {
                continue;
            };
            by_uri.entry(uri).or_default().push(Diagnostic {
                range: line,
                severity: Some(DiagnosticSeverity::ERROR),
                code: Some(NumberOrString::String(failure.reason.clone())),
                source: Some("sqlrs".into()),
                message: format!("{}: {}", failure.alias, failure.message),
                ..Diagnostic::default()
            });
        }
        let now: HashSet<Url> = by_uri.keys().cloned().collect();
        for stale in shown.diagnostics.difference(&now) {
            self.client
                .publish_diagnostics(stale.clone(), Vec::new(), None)
                .await;
        }
        for (uri, diagnostics) in by_uri {
            self.client
                .publish_diagnostics(uri, diagnostics, None)
                .await;
        }
        shown.diagnostics = now;
    }

    /// Line `line` of `file` (the open document's text, else the file on disk).
    fn line_text_range(&self, file: &Path, line: u32) -> Option<Range> {
        if let Ok(uri) = Url::from_file_path(file)
            && let Some(doc) = self.docs.read().unwrap().get(&uri)
        {
            return Some(text::line_range(&doc.text, line));
        }
        std::fs::read_to_string(file)
            .ok()
            .map(|content| text::line_range(&content, line))
    }

    async fn publish_file_statuses(&self, shown: &mut Shown, view: &View) {
        let mut now = HashMap::new();
        for (path, entries) in &view.files {
            let Ok(uri) = Url::from_file_path(path) else {
                continue;
            };
            for e in entries {
                let params = ext::FileStatusParams {
                    uri: uri.clone(),
                    alias: e.alias.clone(),
                    status: e.status.clone(),
                    state_id: e.state_id.clone(),
                    step: e.step,
                    total: e.total,
                    message: e.message.clone(),
                };
                let key = (uri.clone(), e.alias_path.clone());
                if shown.file_statuses.get(&key) != Some(&params) {
                    self.client
                        .send_notification::<ext::FileStatus>(params.clone())
                        .await;
                }
                now.insert(key, params);
            }
        }
        shown.file_statuses = now;
    }

    async fn report_progress(&self, shown: &mut Shown, view: &View) {
        if !self.caps.read().unwrap().progress {
            return;
        }
        let building: HashSet<&PathBuf> = view.building.iter().map(|b| &b.alias_path).collect();
        let ended: Vec<PathBuf> = shown
            .progress
            .keys()
            .filter(|alias| !building.contains(alias))
            .cloned()
            .collect();
        for alias in ended {
            let (token, _) = shown.progress.remove(&alias).expect("listed above");
            let end = WorkDoneProgress::End(WorkDoneProgressEnd { message: None });
            self.progress(token, end).await;
        }
        for b in &view.building {
            let message = Some(format!("{}: step {} of {}", b.alias, b.step, b.total));
            let percentage =
                (b.total > 0).then(|| (b.step.saturating_sub(1) * 100 / b.total).min(100));
            match shown.progress.get_mut(&b.alias_path) {
                Some((token, step)) => {
                    if *step != b.step {
                        *step = b.step;
                        let report = WorkDoneProgress::Report(WorkDoneProgressReport {
                            cancellable: Some(false),
                            message,
                            percentage,
                        });
                        self.progress(token.clone(), report).await;
                    }
                }
                None => {
                    let token =
                        NumberOrString::String(format!("sqlrs/build/{}", b.alias_path.display()));
                    let create = self.client.send_request::<WorkDoneProgressCreate>(
                        WorkDoneProgressCreateParams {
                            token: token.clone(),
                        },
                    );
                    match tokio::time::timeout(CLIENT_REPLY, create).await {
                        Ok(Ok(())) => {}
                        other => {
                            tracing::debug!("workDoneProgress/create: {other:?}");
                            continue;
                        }
                    }
                    let begin = WorkDoneProgress::Begin(WorkDoneProgressBegin {
                        title: format!("sqlrs: building {}", b.alias),
                        cancellable: Some(false),
                        message,
                        percentage,
                    });
                    self.progress(token.clone(), begin).await;
                    shown.progress.insert(b.alias_path.clone(), (token, b.step));
                }
            }
        }
    }

    async fn progress(&self, token: NumberOrString, value: WorkDoneProgress) {
        self.client
            .send_notification::<Progress>(ProgressParams {
                token,
                value: ProgressParamsValue::WorkDone(value),
            })
            .await;
    }

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

    fn cancel(&self, run_id: Option<&str>) -> CancelResult {
        let runs = self.runs.lock().unwrap();
        let mut cancelled = false;
        for (id, tx) in runs.iter() {
            if run_id.is_none_or(|r| r == id) {
                cancelled |= !tx.send_replace(true);
            }
        }
        CancelResult { cancelled }
    }

    /// The text of a document: the open one, else the file on disk.
    fn document_text(&self, uri: &Url) -> Result<String> {
        if let Some(doc) = self.docs.read().unwrap().get(uri) {
            return Ok(doc.text.clone());
        }
        let path = file_path(uri).ok_or_else(|| invalid(format!("{uri} is not a file")))?;
        std::fs::read_to_string(&path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))
    }

    /// The status of the workspace holding `uri` (the only one followed
    /// when there is no uri), registering it with the daemon if needed.
    async fn project_for(&self, uri: Option<&Url>) -> Result<ProjectStatus> {
        let root = match uri {
            Some(uri) => {
                let path = file_path(uri).ok_or_else(|| invalid(format!("{uri} is not a file")))?;
                workspace_root(&path).ok_or_else(|| {
                    invalid(format!(
                        "{} is not inside a sqlrs workspace (no .sqlrs/ folder in it or above): run `sqlrs init` in the project's folder",
                        path.display()
                    ))
                })?
            }
            None => {
                let watchers = self.watchers.lock().unwrap();
                let mut roots: Vec<&PathBuf> = watchers.keys().collect();
                roots.sort();
                match roots.as_slice() {
                    [one] => (*one).clone(),
                    [] => {
                        return Err(invalid(
                            "no sqlrs workspace is open: open a folder with a .sqlrs/ folder (`sqlrs init` makes one)",
                        ));
                    }
                    many => {
                        return Err(invalid(format!(
                            "several sqlrs workspaces are open ({}): pass `uri` or `alias` (a path)",
                            many.iter()
                                .map(|p| p.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
            }
        };
        if let Some(status) = self.projects.lock().unwrap().get(&root) {
            return Ok(status.clone());
        }
        Ok(self.daemon.register_project(&root).await?)
    }

    /// The alias to use: `requested` (a name or a path), else the
    /// `defaultAlias` setting, else the workspace's only alias.
    async fn resolve_alias(
        &self,
        requested: Option<&str>,
        uri: Option<&Url>,
    ) -> Result<(String, PathBuf)> {
        let setting = self.settings.read().unwrap().default_alias.clone();
        let requested = requested.map(str::to_owned).or(setting);
        if let Some(path) = requested
            .as_deref()
            .map(Path::new)
            .filter(|p| p.is_absolute() && p.is_file())
        {
            return Ok((alias_name(path), path.to_owned()));
        }
        let project = self.project_for(uri).await?;
        let root = PathBuf::from(&project.root);
        let names = || {
            project
                .aliases
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match requested {
            Some(wanted) => {
                if let Some(a) = project.aliases.iter().find(|a| a.name == wanted) {
                    return Ok((a.name.clone(), PathBuf::from(&a.path)));
                }
                let path = root.join(&wanted);
                if path.is_file() {
                    return Ok((alias_name(&path), path));
                }
                Err(invalid(format!(
                    "no prepare alias `{wanted}` in {}: its aliases are {}; set sqlrs.defaultAlias to one of them",
                    root.display(),
                    names()
                )))
            }
            None => match project.aliases.as_slice() {
                [one] => Ok((one.name.clone(), PathBuf::from(&one.path))),
                [] => Err(invalid(format!(
                    "{} has no prepare alias: add a NAME.prep.s9s.yaml file",
                    root.display()
                ))),
                _ => Err(invalid(format!(
                    "{} has several prepare aliases ({}): set sqlrs.defaultAlias to the one to run against",
                    root.display(),
                    names()
                ))),
            },
        }
    }

    async fn execute(self: Arc<Self>, params: ExecuteParams) -> Result<RunResult> {
        let text = self.document_text(&params.uri)?;
        let statements = split::split(&text);
        let statement = split::statement_at_line(&text, &statements, params.line)
            .ok_or_else(|| invalid(format!("no statement in {}", params.uri)))?
            .clone();
        let sql = text[statement.range.clone()].to_owned();
        if statement.kind == Kind::Meta {
            return Err(invalid(format!(
                "`{sql}` is a psql meta-command, which runs only in psql: run the file with `sqlrs run:psql` instead"
            )));
        }
        let (alias, alias_path) = self
            .resolve_alias(params.alias.as_deref(), Some(&params.uri))
            .await?;
        let (row_limit, setting_name) = {
            let s = self.settings.read().unwrap();
            (s.row_limit, s.instance_name.clone())
        };
        let instance_name = params.instance_name.clone().or(setting_name);
        let run_id = params
            .run_id
            .clone()
            .unwrap_or_else(|| format!("r{}", self.next_run.fetch_add(1, Ordering::Relaxed)));
        let (cancel_tx, cancel_rx) = watch::channel(false);
        self.runs
            .lock()
            .unwrap()
            .insert(run_id.clone(), cancel_tx.clone());
        let guard = CancelOnDrop(cancel_tx);
        let inner = self.clone();
        let range = text::range(&text, statement.range.clone());
        let id = run_id.clone();
        let task = tokio::spawn(async move {
            let instance = inner
                .daemon
                .prepare(&alias_path, instance_name.as_deref(), cancel_rx.clone())
                .await;
            let instance = match instance {
                Ok(instance) => instance,
                Err(e) => {
                    inner.runs.lock().unwrap().remove(&id);
                    return Err(Error::from(e));
                }
            };
            let outcome = run::run(&instance.dsn, &sql, row_limit, cancel_rx).await;
            inner.runs.lock().unwrap().remove(&id);
            if instance_name.is_none() {
                let inner = inner.clone();
                let instance_id = instance.id.clone();
                tokio::spawn(async move { inner.daemon.delete_instance(&instance_id).await });
            }
            let error = outcome.error.map(|e| ext::RunError {
                position: e.position.map(|p| {
                    let offset = text::offset_after_chars(
                        &text,
                        statement.range.start,
                        p.saturating_sub(1) as usize,
                    );
                    text::position(&text, offset)
                }),
                message: e.message,
                code: e.code,
                detail: e.detail,
                hint: e.hint,
            });
            let result = RunResult {
                run_id: id,
                uri: params.uri,
                range,
                sql,
                alias,
                state_id: instance.state_id,
                instance_id: instance.id,
                instance_name: (!instance.name.is_empty()).then_some(instance.name),
                elapsed_ms: (outcome.elapsed_ms * 10.0).round() / 10.0,
                results: outcome.results,
                notices: outcome.notices,
                error,
            };
            inner
                .client
                .send_notification::<ext::Results>(result.clone())
                .await;
            Ok(result)
        });
        let result = task
            .await
            .map_err(|e| failed(format!("run {run_id} stopped: {e}")))?;
        drop(guard);
        result
    }

    async fn prepare(&self, params: AliasParams) -> Result<Value> {
        let (alias, alias_path) = self
            .resolve_alias(params.alias.as_deref(), params.uri.as_ref())
            .await?;
        let name = self.settings.read().unwrap().instance_name.clone();
        let (_never, cancel) = watch::channel(false);
        let instance = self
            .daemon
            .prepare(&alias_path, name.as_deref(), cancel)
            .await?;
        self.client
            .show_message(
                MessageType::INFO,
                format!("sqlrs: {alias} is ready: {}", instance.dsn),
            )
            .await;
        Ok(json!({
            "alias": alias,
            "instanceId": instance.id,
            "stateId": instance.state_id,
            "dsn": instance.dsn,
            "name": (!instance.name.is_empty()).then_some(instance.name),
        }))
    }

    async fn show_plan(&self, params: AliasParams) -> Result<Value> {
        let (alias, alias_path) = self
            .resolve_alias(params.alias.as_deref(), params.uri.as_ref())
            .await?;
        let plan = PlanView::new(&alias, self.daemon.plan(&alias_path).await?);
        self.client
            .show_message(MessageType::INFO, plan.text())
            .await;
        serde_json::to_value(plan).map_err(|e| failed(format!("cannot encode the plan: {e}")))
    }
}

/// `db` for `…/db.prep.s9s.yaml`.
fn alias_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.strip_suffix(".prep.s9s.yaml")
        .unwrap_or(&file)
        .to_owned()
}
