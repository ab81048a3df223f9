//! The workspace watcher against real files, real editors' save patterns
//! and real PostgreSQL builds: what a registered workspace shows, how edits
//! move an alias through stale → building → cached (or failed), superseded
//! prebuilds, the `prebuild` setting, new alias files, unregister, restore.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlrsd::blobs::BlobStore;
use sqlrsd::config::RuntimeKind;
use sqlrsd::engine::{Engine, EngineSettings, PrepareInput};
use sqlrsd::index::Index;
use sqlrsd::jobs::Jobs;
use sqlrsd::model::{AliasView, ProjectView, RunStatus};
use sqlrsd::pool::PoolSettings;
use sqlrsd::projects::Projects;
use sqlrsd::runtime::NativeConfig;
use sqlrsd::runtime::docker::Network;
use sqlrsd::runtimes::{RuntimeSettings, Runtimes};
use sqlrsd::snapshot::{self, BackendChoice};
use sqlrsd::store::Store;
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::time::Instant;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Long enough for a debug build on a busy machine to build a small chain.
const BUILD: Duration = Duration::from_secs(120);
/// How soon an edit must show in the status (the target is one second; the
/// margin absorbs a loaded test machine).
const REACT: Duration = Duration::from_secs(5);
/// How soon an edit must show in the status as a new plan.
const TARGET: Duration = Duration::from_secs(1);

/// A store, an engine on the host's PostgreSQL, and a workspace `ws/` (with
/// a sibling folder `shared/` outside it), all in one temp folder the
/// server account can reach.
struct Env {
    dir: TempDir,
    ws: PathBuf,
    engine: Arc<Engine>,
    projects: Arc<Projects>,
}

impl Env {
    async fn new(files: &[(&str, &str)]) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("sqlrs-projects-")
            .tempdir_in("/tmp")
            .expect("create a temp dir under /tmp");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let top = dir.path().canonicalize().unwrap();
        let store = Store::new(&top.join("store"));
        store.create(true).unwrap();
        let index = Arc::new(Index::open(&store.index_path()).unwrap());
        let jobs = Jobs::new(index.clone(), 1000, 1000);
        let blobs = BlobStore::open(&store.blobs_dir()).unwrap();
        let runtimes = Runtimes::new(RuntimeSettings {
            kind: RuntimeKind::Native,
            native: NativeConfig {
                bin_dir: Some(PG_BIN.into()),
                server_user: None,
            },
            docker_host: None,
            docker_image: String::new(),
            docker_network: Network::default(),
            shared_dirs: vec![store.root().join("exec")],
        })
        .await
        .unwrap_or_else(|e| {
            panic!("these tests need the PostgreSQL 15 server binaries in {PG_BIN} (apt-get install postgresql-15): {e}")
        });
        let detected = snapshot::detect(&store.states_dir(), BackendChoice::Auto).unwrap();
        let engine = Arc::new(Engine::new(
            store,
            index,
            jobs,
            blobs,
            runtimes,
            detected,
            EngineSettings {
                // No warm servers: these tests look at plans and builds.
                pool: PoolSettings {
                    per_state: 0,
                    memory_budget_bytes: 0,
                    idle: Duration::from_secs(60),
                },
                max_builds: 2,
                default_ttl: None,
                liquibase_exec: None,
                cache: Default::default(),
                cache_check: Duration::from_secs(60),
            },
        ));
        let ws = top.join("ws");
        std::fs::create_dir_all(ws.join(".sqlrs")).unwrap();
        std::fs::create_dir_all(top.join("shared")).unwrap();
        let env = Env {
            dir,
            ws,
            projects: Projects::new(engine.clone()),
            engine,
        };
        for (path, text) in files {
            env.write(path, text);
        }
        env
    }

    /// A path relative to the workspace (`../shared/…` leaves it).
    fn path(&self, rel: &str) -> PathBuf {
        let p = self.ws.join(rel);
        match rel.strip_prefix("../") {
            Some(outside) => self.dir.path().canonicalize().unwrap().join(outside),
            None => p,
        }
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }

    async fn register(&self) -> watch::Receiver<ProjectView> {
        self.projects
            .register(&self.ws)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The head state a fresh plan of the alias gives.
    async fn planned_head(&self, alias: &str) -> String {
        let path = self.path(alias);
        let plan = self
            .engine
            .plan(PrepareInput {
                kind: String::new(),
                args: Vec::new(),
                cwd: path.parent().unwrap().to_owned(),
                stdin: None,
                alias_path: Some(path),
                image: None,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        plan.steps.last().unwrap().state_id.clone()
    }

    /// Stops the watcher and every job, so no server outlives the test.
    async fn finish(self) {
        self.projects.shutdown().await;
        for id in self.engine.jobs.live_ids() {
            self.engine.jobs.cancel(&id);
        }
        let deadline = Instant::now() + BUILD;
        while !self.engine.jobs.live_ids().is_empty() {
            assert!(Instant::now() < deadline, "jobs still running after cancel");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How editors save a file.
#[derive(Debug, Clone, Copy)]
enum Save {
    /// Truncate and write the same file (nano, VS Code by default).
    InPlace,
    /// Write a temporary file beside it and rename it over (atomic save).
    RenameOver,
    /// Move the original away, write a new file, delete the backup (vim).
    BackupThenWrite,
}

fn save(path: &Path, text: &str, how: Save) {
    match how {
        Save::InPlace => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        }
        Save::RenameOver => {
            let tmp = path.with_file_name(".save.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        Save::BackupThenWrite => {
            let backup =
                path.with_file_name(format!("{}~", path.file_name().unwrap().to_string_lossy()));
            std::fs::rename(path, &backup).unwrap();
            std::fs::write(path, text).unwrap();
            std::fs::remove_file(&backup).unwrap();
        }
    }
}

fn alias<'a>(view: &'a ProjectView, name: &str) -> Option<&'a AliasView> {
    view.aliases.iter().find(|a| a.name == name)
}

/// One change of an alias on the way: when (since following began), its
/// status and its head.
#[derive(Debug, Clone)]
struct Seen {
    after: Duration,
    status: String,
    head: String,
}

/// Follows the view until `done` holds for alias `name`; returns the alias
/// then and every change of its status or head on the way, starting with
/// the current value.
async fn follow(
    rx: &mut watch::Receiver<ProjectView>,
    name: &str,
    limit: Duration,
    done: impl Fn(&AliasView) -> bool,
) -> (AliasView, Vec<Seen>) {
    let start = Instant::now();
    let mut seen: Vec<Seen> = Vec::new();
    loop {
        let current = alias(&rx.borrow_and_update(), name).cloned();
        if let Some(a) = &current {
            if seen
                .last()
                .is_none_or(|s| s.status != a.status || s.head != a.head_state_id)
            {
                seen.push(Seen {
                    after: start.elapsed(),
                    status: a.status.clone(),
                    head: a.head_state_id.clone(),
                });
            }
            if done(a) {
                return (a.clone(), seen);
            }
        }
        match tokio::time::timeout_at(start + limit, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("{name}: the workspace stopped publishing; seen {seen:?}"),
            Err(_) => {
                panic!("{name}: not there within {limit:?}; seen {seen:?}, last {current:#?}")
            }
        }
    }
}

/// The statuses an alias went through, repeats merged.
fn statuses(seen: &[Seen]) -> Vec<&str> {
    let mut out: Vec<&str> = seen.iter().map(|s| s.status.as_str()).collect();
    out.dedup();
    out
}

/// Where the changes seen after a save begin: past the view from before the
/// save (`status` with `head`) the follower may still have read first.
fn after_save(seen: &[Seen], status: &str, head: &str) -> usize {
    usize::from(
        seen.first()
            .is_some_and(|s| s.status == status && s.head == head),
    )
}

/// Each file of an alias as `path:status:step`, paths relative to `ws`.
fn files(a: &AliasView, ws: &Path) -> Vec<String> {
    a.files
        .iter()
        .map(|f| {
            let p = Path::new(&f.path);
            let rel = p
                .strip_prefix(ws)
                .map(|r| r.display().to_string())
                .unwrap_or_else(|_| {
                    format!(
                        "../{}",
                        p.strip_prefix(ws.parent().unwrap()).unwrap().display()
                    )
                });
            format!("{rel}:{}:{}", f.status, f.step)
        })
        .collect()
}

const APP: &str = "kind: psql\nargs: [-f, schema.sql, -f, seed.sql]\n";
const SCHEMA: &str = "\\i inc/types.sql\ncreate table t (id int, m mood);\n";
const TYPES: &str = "create type mood as enum ('ok', 'meh');\n";
const SEED: &str = "insert into t values (1, 'ok');\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_plans_every_alias_with_its_files() {
    let env = Env::new(&[
        (".sqlrs/config.yaml", "prebuild: false\n"),
        ("app.prep.s9s.yaml", APP),
        ("schema.sql", SCHEMA),
        ("inc/types.sql", TYPES),
        ("seed.sql", SEED),
        (
            "db/other.prep.s9s.yaml",
            "kind: psql\nargs: [-c, 'create table x (id int)']\n",
        ),
        (
            "broken.prep.s9s.yaml",
            "kind: psql\nargs: [-f, schema.sql\n",
        ),
        (
            "missing.prep.s9s.yaml",
            "kind: psql\nargs: [-f, nowhere.sql]\n",
        ),
        ("node_modules/pkg/x.prep.s9s.yaml", APP),
        ("nested/.sqlrs/.gitignore", ""),
        ("nested/n.prep.s9s.yaml", APP),
        ("query.run.s9s.yaml", "kind: psql\nargs: [-c, select 1]\n"),
    ])
    .await;
    let mut rx = env.register().await;
    let view = rx.borrow_and_update().clone();
    assert_eq!(view.root, env.ws.display().to_string());
    assert!(view.watched && !view.prebuild, "{view:#?}");
    let ws = &env.ws;
    // Name, status, steps, files, and the file and line of the error.
    type Row = (
        String,
        String,
        u32,
        Vec<String>,
        Option<(String, Option<u32>)>,
    );
    let got: Vec<Row> = view
        .aliases
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                a.status.clone(),
                a.total,
                files(a, ws),
                a.error.as_ref().map(|e| {
                    (
                        Path::new(e.file.as_deref().unwrap_or(""))
                            .strip_prefix(ws)
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                        e.line,
                    )
                }),
            )
        })
        .collect();
    let want = vec![
        (
            "app".to_string(),
            "stale".to_string(),
            2,
            vec![
                "schema.sql:stale:1".to_string(),
                "inc/types.sql:stale:1".into(),
                "seed.sql:stale:2".into(),
            ],
            None,
        ),
        (
            "broken".into(),
            "invalid".into(),
            0,
            vec!["broken.prep.s9s.yaml:failed:0".into()],
            Some(("broken.prep.s9s.yaml".into(), Some(3))),
        ),
        ("other".into(), "stale".into(), 1, vec![], None),
        (
            "missing".into(),
            "invalid".into(),
            0,
            vec!["nowhere.sql:failed:0".into()],
            Some(("nowhere.sql".into(), None)),
        ),
    ];
    assert_eq!(got, want);
    let app = alias(&view, "app").unwrap();
    assert_eq!(
        app.head_state_id,
        env.planned_head("app.prep.s9s.yaml").await
    );
    assert!(app.job_id.is_empty() && app.error.is_none(), "{app:#?}");

    // Registering again (from a subfolder) changes nothing.
    let again = env.projects.register(&ws.join("inc")).await.unwrap();
    assert_eq!(again.borrow().aliases, view.aliases);
    assert_eq!(env.projects.views().len(), 1);
    let records = env.engine.index.projects().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].root, view.root);

    // The file a plan error says is missing appears: the alias plans. (Its
    // status is read before the write: the new view may be published before
    // `follow` first looks.)
    let before = alias(&rx.borrow_and_update(), "missing").map(|a| a.status.clone());
    assert_eq!(before.as_deref(), Some("invalid"));
    env.write("nowhere.sql", "select 1;\n");
    let (missing, seen) = follow(&mut rx, "missing", REACT, |a| a.total == 1).await;
    assert_eq!(statuses(&seen).last(), Some(&"stale"), "{seen:?}");
    assert_eq!(files(&missing, ws), ["nowhere.sql:stale:1"]);
    assert!(missing.error.is_none());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_save_pattern_moves_the_alias_through_stale_building_cached() {
    let env = Env::new(&[
        (
            "app.prep.s9s.yaml",
            "kind: psql\nargs: [-f, schema.sql, -f, seed.sql, -f, ../shared/extra.sql, -f, linked.sql]\n",
        ),
        ("schema.sql", SCHEMA),
        ("inc/types.sql", TYPES),
        ("seed.sql", SEED),
        ("../shared/extra.sql", "create table extra (id int);\n"),
        ("../shared/target.sql", "create table target (id int);\n"),
    ])
    .await;
    std::os::unix::fs::symlink(env.path("../shared/target.sql"), env.path("linked.sql")).unwrap();
    let mut rx = env.register().await;
    let (first, _) = follow(&mut rx, "app", BUILD, |a| a.status == "cached").await;
    assert_eq!(
        files(&first, &env.ws),
        [
            "schema.sql:cached:1",
            "inc/types.sql:cached:1",
            "seed.sql:cached:2",
            "../shared/extra.sql:cached:3",
            "linked.sql:cached:4",
        ]
    );

    let cases = [
        (Save::InPlace, "schema.sql"),
        (Save::RenameOver, "seed.sql"),
        (Save::BackupThenWrite, "inc/types.sql"),
        (Save::InPlace, "../shared/extra.sql"),
        (Save::RenameOver, "../shared/target.sql"),
    ];
    let mut head = first.head_state_id;
    for (i, (how, file)) in cases.into_iter().enumerate() {
        let case = format!("{how:?} {file}");
        let path = env.path(file);
        let text =
            std::fs::read_to_string(&path).unwrap() + &format!("create table edit_{i} (id int);\n");
        let before = alias(&rx.borrow_and_update(), "app").unwrap().clone();
        assert_eq!(
            (before.status.as_str(), &before.head_state_id),
            ("cached", &head),
            "{case}"
        );
        save(&path, &text, how);
        let (done, seen) = follow(&mut rx, "app", BUILD, |a| {
            a.status == "cached" && a.head_state_id != head
        })
        .await;
        assert_eq!(
            statuses(&seen[after_save(&seen, "cached", &head)..]),
            ["stale", "building", "cached"],
            "{case}: {seen:?}"
        );
        let replanned = seen.iter().find(|s| s.head != head).unwrap();
        println!("{case}: new plan shown after {:?}", replanned.after);
        assert!(replanned.after < TARGET, "{case}: {seen:?}");
        assert_eq!(
            done.head_state_id,
            env.planned_head("app.prep.s9s.yaml").await,
            "{case}"
        );
        assert!(
            done.files.iter().all(|f| f.status == "cached"),
            "{case}: {done:#?}"
        );
        head = done.head_state_id;
    }

    // Files no chain reads change nothing, and planning (which reads every
    // input) does not set off another plan.
    env.write("notes.txt", "remember the milk\n");
    env.write("../shared/unrelated.sql", "select 1;\n");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!rx.has_changed().unwrap(), "{:#?}", rx.borrow());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sql_error_fails_the_alias_at_its_file_and_line_until_fixed() {
    let env = Env::new(&[
        ("app.prep.s9s.yaml", APP),
        ("schema.sql", SCHEMA),
        ("inc/types.sql", TYPES),
        ("seed.sql", SEED),
    ])
    .await;
    let mut rx = env.register().await;
    let (cached, _) = follow(&mut rx, "app", BUILD, |a| a.status == "cached").await;
    let types = env.path("inc/types.sql");
    save(
        &types,
        "create type mood as enum ('ok', 'meh');\n\nselect * from no_such_table;\n",
        Save::InPlace,
    );
    let (failed, seen) = follow(&mut rx, "app", BUILD, |a| a.status == "failed").await;
    assert_eq!(
        statuses(&seen[after_save(&seen, "cached", &cached.head_state_id)..]),
        ["stale", "building", "failed"],
        "{seen:?}"
    );
    let error = failed
        .error
        .clone()
        .expect("a failed alias carries its error");
    assert_eq!(
        (
            error.reason.as_str(),
            error.file.as_deref(),
            error.line,
            error.step
        ),
        (
            "sql_error",
            Some(&*types.display().to_string()),
            Some(3),
            Some(1)
        ),
        "{error:#?}"
    );
    assert!(error.message.contains("no_such_table"), "{error:#?}");
    assert_eq!((failed.step, failed.total), (1, 2));
    assert!(!failed.job_id.is_empty());
    assert_eq!(
        files(&failed, &env.ws),
        [
            "schema.sql:failed:1",
            "inc/types.sql:failed:1",
            "seed.sql:stale:2"
        ]
    );
    let job = env.engine.index.job(&failed.job_id).unwrap().unwrap();
    assert_eq!(job.status, RunStatus::Failed);

    // Touching the file without changing it keeps the failure: same head.
    save(
        &types,
        &std::fs::read_to_string(&types).unwrap(),
        Save::InPlace,
    );
    let (again, _) = follow(&mut rx, "app", REACT, |a| a.status != "stale").await;
    assert_eq!(
        (again.status.as_str(), &again.job_id),
        ("failed", &failed.job_id)
    );

    // The fix builds again.
    save(
        &types,
        "create type mood as enum ('ok', 'meh', 'fine');\n",
        Save::RenameOver,
    );
    let (fixed, seen) = follow(&mut rx, "app", BUILD, |a| a.status == "cached").await;
    assert_eq!(
        statuses(&seen[after_save(&seen, "failed", &failed.head_state_id)..]),
        ["stale", "building", "cached"],
        "{seen:?}"
    );
    assert!(
        fixed.error.is_none() && fixed.job_id.is_empty(),
        "{fixed:#?}"
    );

    // Back to the first content: cached already, nothing to build.
    save(&types, TYPES, Save::BackupThenWrite);
    let (back, seen) = follow(&mut rx, "app", REACT, |a| {
        a.head_state_id == cached.head_state_id && a.status != "stale"
    })
    .await;
    assert_eq!(
        statuses(&seen[after_save(&seen, "cached", &fixed.head_state_id)..]),
        ["stale", "cached"],
        "{seen:?}"
    );
    assert_eq!(files(&back, &env.ws), files(&cached, &env.ws));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_edit_cancels_the_superseded_prebuild() {
    let env = Env::new(&[
        ("app.prep.s9s.yaml", APP),
        ("schema.sql", SCHEMA),
        ("inc/types.sql", TYPES),
        ("seed.sql", SEED),
    ])
    .await;
    let mut rx = env.register().await;
    follow(&mut rx, "app", BUILD, |a| a.status == "cached").await;
    let seed = env.path("seed.sql");
    save(
        &seed,
        "select pg_sleep(30);\ninsert into t values (2, 'meh');\n",
        Save::InPlace,
    );
    let (slow, _) = follow(&mut rx, "app", BUILD, |a| {
        a.status == "building" && a.step == 2
    })
    .await;
    let superseded = slow.job_id.clone();
    save(&seed, "insert into t values (3, 'ok');\n", Save::RenameOver);
    let (done, seen) = follow(&mut rx, "app", BUILD, |a| a.status == "cached").await;
    assert_eq!(
        statuses(&seen[after_save(&seen, "building", &slow.head_state_id)..]),
        ["stale", "building", "cached"],
        "{seen:?}"
    );
    assert_ne!(done.head_state_id, slow.head_state_id);
    assert_eq!(
        done.head_state_id,
        env.planned_head("app.prep.s9s.yaml").await
    );
    let deadline = Instant::now() + REACT;
    let status = loop {
        let job = env.engine.index.job(&superseded).unwrap().unwrap();
        if job.status.is_final() || Instant::now() > deadline {
            break job.status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, RunStatus::Cancelled);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prebuild_off_leaves_changes_stale_until_turned_on() {
    let env = Env::new(&[
        (".sqlrs/config.yaml", "prebuild: false\n"),
        ("app.prep.s9s.yaml", APP),
        ("schema.sql", SCHEMA),
        ("inc/types.sql", TYPES),
        ("seed.sql", SEED),
    ])
    .await;
    let mut rx = env.register().await;
    let first = alias(&rx.borrow_and_update(), "app").unwrap().clone();
    assert_eq!(first.status, "stale");
    save(
        &env.path("seed.sql"),
        "insert into t values (9, 'ok');\n",
        Save::InPlace,
    );
    let (edited, _) = follow(&mut rx, "app", REACT, |a| {
        a.head_state_id != first.head_state_id
    })
    .await;
    assert_eq!(edited.status, "stale");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = alias(&rx.borrow_and_update(), "app").unwrap().clone();
    assert_eq!(
        (later.status.as_str(), later.job_id.as_str()),
        ("stale", "")
    );
    assert!(env.engine.jobs.live_ids().is_empty());
    assert!(!rx.borrow().prebuild);

    // Turned on: what is stale is built.
    env.write(".sqlrs/config.yaml", "prebuild: true\n");
    let (built, seen) = follow(&mut rx, "app", BUILD, |a| a.status == "cached").await;
    assert_eq!(statuses(&seen), ["stale", "building", "cached"], "{seen:?}");
    assert_eq!(built.head_state_id, edited.head_state_id);
    assert!(rx.borrow().prebuild);

    // A broken settings file: the defaults (prebuild on).
    env.write(".sqlrs/config.yaml", "prebuild: false\nprebuilt: true\n");
    save(
        &env.path("seed.sql"),
        "insert into t values (10, 'ok');\n",
        Save::InPlace,
    );
    let (rebuilt, _) = follow(&mut rx, "app", BUILD, |a| {
        a.status == "cached" && a.head_state_id != built.head_state_id
    })
    .await;
    assert!(rebuilt.error.is_none());
    assert!(rx.borrow().prebuild);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_files_that_appear_or_go_are_followed() {
    let env = Env::new(&[
        (".sqlrs/config.yaml", "prebuild: false\n"),
        ("app.prep.s9s.yaml", APP),
        ("schema.sql", SCHEMA),
        ("inc/types.sql", TYPES),
        ("seed.sql", SEED),
    ])
    .await;
    let mut rx = env.register().await;
    assert_eq!(rx.borrow_and_update().aliases.len(), 1);

    // In a folder made after registration, two levels deep.
    env.write("more/deep/extra.sql", "create table extra (id int);\n");
    env.write(
        "more/deep/extra.prep.s9s.yaml",
        "kind: psql\nargs: [-f, extra.sql]\n",
    );
    let (extra, _) = follow(&mut rx, "extra", REACT, |a| a.status == "stale").await;
    assert_eq!(files(&extra, &env.ws), ["more/deep/extra.sql:stale:1"]);

    // Its input is watched in the new folder too.
    let head = extra.head_state_id.clone();
    save(
        &env.path("more/deep/extra.sql"),
        "create table extra2 (id int);\n",
        Save::InPlace,
    );
    follow(&mut rx, "extra", REACT, |a| {
        a.head_state_id != head && a.status == "stale"
    })
    .await;

    // Renamed: the old name goes, the new one comes.
    std::fs::rename(
        env.path("more/deep/extra.prep.s9s.yaml"),
        env.path("more/deep/renamed.prep.s9s.yaml"),
    )
    .unwrap();
    follow(&mut rx, "renamed", REACT, |_| true).await;
    assert!(alias(&rx.borrow(), "extra").is_none());

    // The folder removed: its alias goes.
    std::fs::remove_dir_all(env.path("more")).unwrap();
    let deadline = Instant::now() + REACT;
    while rx.borrow_and_update().aliases.len() != 1 {
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .expect("the removed alias leaves the view")
            .unwrap();
    }
    assert_eq!(rx.borrow().aliases[0].name, "app");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_stops_updates_and_forgets_the_workspace() {
    let env = Env::new(&[
        (".sqlrs/config.yaml", "prebuild: false\n"),
        ("app.prep.s9s.yaml", APP),
        ("schema.sql", SCHEMA),
        ("inc/types.sql", TYPES),
        ("seed.sql", SEED),
    ])
    .await;
    let mut rx = env.register().await;
    let before = rx.borrow_and_update().clone();
    let last = env.projects.unregister(&env.ws.join("inc")).await.unwrap();
    assert!(!last.watched);
    assert_eq!((&last.root, &last.aliases), (&before.root, &before.aliases));
    assert!(env.projects.views().is_empty());
    assert!(env.engine.index.projects().unwrap().is_empty());
    // Subscribers see the end, then the stream closes.
    assert!(!rx.borrow_and_update().watched);
    save(
        &env.path("seed.sql"),
        "insert into t values (5, 'ok');\n",
        Save::InPlace,
    );
    let next = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
    assert!(matches!(next, Ok(Err(_))), "{next:?}");
    // Unregistering again is no error.
    let again = env.projects.unregister(&env.ws).await.unwrap();
    assert!(!again.watched && again.aliases.is_empty());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_watches_registered_workspaces_again_and_drops_vanished_ones() {
    let env = Env::new(&[
        (".sqlrs/config.yaml", "prebuild: false\n"),
        ("app.prep.s9s.yaml", APP),
        ("schema.sql", SCHEMA),
        ("inc/types.sql", TYPES),
        ("seed.sql", SEED),
        ("../other/.sqlrs/config.yaml", "prebuild: false\n"),
        (
            "../other/o.prep.s9s.yaml",
            "kind: psql\nargs: [-c, select 1]\n",
        ),
    ])
    .await;
    let other = env.path("../other");
    env.register().await;
    env.projects.register(&other).await.unwrap();
    assert_eq!(env.engine.index.projects().unwrap().len(), 2);
    env.projects.shutdown().await;
    assert!(env.projects.views().is_empty());
    assert_eq!(
        env.engine.index.projects().unwrap().len(),
        2,
        "kept for the next start"
    );

    std::fs::remove_dir_all(other.join(".sqlrs")).unwrap();
    let restarted = Projects::new(env.engine.clone());
    restarted.restore().await.unwrap();
    let views = restarted.views();
    let roots: Vec<&str> = views.iter().map(|v| v.root.as_str()).collect();
    assert_eq!(roots, [env.ws.display().to_string()]);
    assert_eq!(views[0].aliases.len(), 1);
    let records = env.engine.index.projects().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].root, env.ws.display().to_string());

    // note_use of a folder in a workspace registers it in the background.
    std::fs::create_dir(other.join(".sqlrs")).unwrap();
    restarted.note_use(&other);
    restarted.note_use(Path::new("/"));
    let deadline = Instant::now() + REACT;
    while restarted.views().len() != 2 {
        assert!(
            Instant::now() < deadline,
            "note_use registers {}",
            other.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    restarted.shutdown().await;
    env.finish().await;
}
