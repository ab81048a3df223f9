//! Following workspaces: one `WatchProject` subscription per sqlrs
//! workspace, and on every status the diagnostics, `sqlrs/fileStatus`,
//! `$/progress` and lens refreshes the client is sent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlrs_proto::pb::ProjectStatus;
use tower_lsp::lsp_types::notification::Progress;
use tower_lsp::lsp_types::request::WorkDoneProgressCreate;
use tower_lsp::lsp_types::*;

use crate::server::{Inner, Shown, workspace_root};
use crate::status::View;
use crate::{ext, text};

/// Longest wait between attempts to re-subscribe to a workspace.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the client may take to answer `window/workDoneProgress/create`.
const CLIENT_REPLY: Duration = Duration::from_secs(5);

impl Inner {
    pub(crate) fn add_folder(self: &Arc<Self>, folder: PathBuf) {
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

    pub(crate) async fn remove_folder(self: &Arc<Self>, folder: &Path) {
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
    pub(crate) fn watch(self: &Arc<Self>, root: PathBuf) {
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
}
