//! The commands: running a statement on an instance of the chosen alias
//! (and cancelling it), preparing an alias, showing its plan; and which
//! alias a request means.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use sqlrs_proto::pb::ProjectStatus;
use tokio::sync::watch;
use tower_lsp::jsonrpc::{Error, Result};
use tower_lsp::lsp_types::*;

use crate::ext::{self, AliasParams, CancelResult, ExecuteParams, RunResult};
use crate::plan::PlanView;
use crate::server::{Inner, failed, file_path, invalid, workspace_root};
use crate::split::{self, Kind};
use crate::{run, text};

/// Cancels its run when dropped before the run finished (the client
/// cancelled the request, or the server is going away).
struct CancelOnDrop(watch::Sender<bool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Inner {
    pub(crate) fn cancel(&self, run_id: Option<&str>) -> CancelResult {
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

    pub(crate) async fn execute(self: Arc<Self>, params: ExecuteParams) -> Result<RunResult> {
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

    pub(crate) async fn prepare(&self, params: AliasParams) -> Result<Value> {
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

    pub(crate) async fn show_plan(&self, params: AliasParams) -> Result<Value> {
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
