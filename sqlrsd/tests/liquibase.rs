//! Liquibase against a real PostgreSQL: discovery, `update-sql` planning of
//! the procrastinate migrations and of a changelog in every format (with
//! contexts, labels, parameters and a loadData CSV), one changeset per run
//! checked against DATABASECHANGELOG, failures and cancellation.
//!
//! Needs Liquibase 4.28: run `bash packaging/ci/liquibase.sh DIR` and set
//! SQLRS_LIQUIBASE to the path it prints (or put `liquibase` on PATH).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlrsd::liquibase::{
    self, Closure, Jdbc, LbArgs, LbError, Liquibase, PlannedChangeset, applied, check_applied,
    closure, fingerprint, materialize,
};
use sqlrsd::runtime::{
    NativeConfig, NativeRuntime, Runtime, ServerHandle, ServerOptions, generate_password,
};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

fn liquibase() -> Liquibase {
    let started = Instant::now();
    let lb = liquibase::discover(None).unwrap_or_else(|e| {
        panic!(
            "these tests need Liquibase 4.28: run `bash packaging/ci/liquibase.sh <dir>` and set \
             SQLRS_LIQUIBASE to the path it prints ({e})"
        )
    });
    eprintln!("liquibase --version: {:?}", started.elapsed());
    lb
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/liquibase")
        .join(name)
}

/// A scratch folder under /tmp that the server account can reach.
fn scratch() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sqlrs-lb-")
        .tempdir_in("/tmp")
        .expect("create a temp dir under /tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A fresh cluster with a password on its superuser, reachable over TCP.
struct Pg {
    rt: NativeRuntime,
    server: ServerHandle,
    jdbc: Jdbc,
    _dir: TempDir,
}

impl Pg {
    async fn start() -> Pg {
        let rt = NativeRuntime::detect(&NativeConfig::default())
            .unwrap_or_else(|e| panic!("these tests need PostgreSQL server binaries: {e}"));
        let dir = scratch();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        rt.adopt_dir(&data).unwrap();
        rt.init_base(&data).await.unwrap_or_else(|e| panic!("{e}"));
        let server = rt
            .start(
                &data,
                &dir.path().join("run"),
                &ServerOptions {
                    durable: false,
                    port: None,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let password = generate_password();
        rt.set_password(&server, &password).await.unwrap();
        let jdbc = Jdbc::loopback(server.port, &password);
        Pg {
            rt,
            server,
            jdbc,
            _dir: dir,
        }
    }

    async fn client(&self) -> tokio_postgres::Client {
        let dsn = self.rt.dsn(&self.server, &self.jdbc.password);
        let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// Relations in schemas other than the system ones.
    async fn user_relations(&self) -> Vec<String> {
        self.client()
            .await
            .query(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
                 ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    async fn stop(self) {
        self.rt.stop(&self.server).await.unwrap();
    }
}

/// The closure of `args` in fixture `name`, copied into a fresh execution folder.
fn prepared(name: &str, args: &LbArgs) -> (Closure, TempDir, PathBuf) {
    let c = closure(args, &fixture(name)).unwrap_or_else(|e| panic!("{e}"));
    let exec = scratch();
    let root = materialize(&c, exec.path()).unwrap_or_else(|e| panic!("{e}"));
    (c, exec, root)
}

fn args(list: &[&str]) -> LbArgs {
    let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    liquibase::parse_args(&list).unwrap()
}

async fn plan(lb: &Liquibase, pg: &Pg, root: &Path, args: &LbArgs) -> Vec<PlannedChangeset> {
    let started = Instant::now();
    let plan = lb
        .plan(&pg.jdbc, root, args, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "update-sql ({} changesets): {:?}",
        plan.len(),
        started.elapsed()
    );
    plan
}

/// Applies `plan` one changeset per Liquibase run, checking DATABASECHANGELOG
/// after each; returns the run times.
async fn apply_each(
    lb: &Liquibase,
    pg: &Pg,
    root: &Path,
    args: &LbArgs,
    plan: &[PlannedChangeset],
) -> Vec<Duration> {
    let mut times = Vec::new();
    for k in 0..plan.len() {
        let started = Instant::now();
        lb.update_one(&pg.jdbc, root, args, &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("step {k} ({}): {e}", plan[k].label()));
        times.push(started.elapsed());
        let rows = applied(&pg.jdbc, args).await.unwrap();
        check_applied(&rows, &plan[..=k]).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            rows.windows(2)
                .all(|w| w[0].order_executed < w[1].order_executed)
        );
    }
    times
}

/// Every planned changeset is found in the closure under the name, id and
/// author Liquibase reports, so its fingerprint covers its own definition
/// (not the whole closure's digest, the fallback for unknown changesets).
fn assert_found_in_closure(c: &Closure, plan: &[PlannedChangeset]) {
    for p in plan {
        assert_ne!(
            c.changeset_inputs(p),
            c.digest(),
            "{} not matched",
            p.label()
        );
    }
}

#[test]
fn discover_reports_the_version_and_java() {
    let lb = liquibase();
    assert_eq!(lb.version, liquibase::TESTED_VERSION);
    assert!(
        lb.java.starts_with(|c: char| c.is_ascii_digit()) && lb.java.contains("(/"),
        "{}",
        lb.java
    );
    assert!(lb.exec.is_absolute() || lb.exec.components().count() > 1);
}

#[tokio::test]
async fn procrastinate_migrations_plan_and_apply_one_by_one() {
    let lb = liquibase();
    let pg = Pg::start().await;
    let args = args(&["update", "--changelog-file", "changelog.xml"]);
    let (c, _exec, root) = prepared("procrastinate", &args);

    let plan = plan(&lb, &pg, &root, &args).await;
    let mut migrations: Vec<String> = std::fs::read_dir(fixture("procrastinate/migrations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    migrations.sort();
    let ids: Vec<String> = migrations
        .iter()
        .map(|m| m.trim_end_matches(".sql").to_owned())
        .collect();
    assert_eq!(plan.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), ids);
    for p in &plan {
        assert_eq!(p.author, "procrastinate");
        assert_eq!(p.filename, "changelog.xml");
        assert!(p.checksum.starts_with("9:"), "{p:?}");
        assert_eq!(p.exec_type, "EXECUTED");
        assert_eq!(p.liquibase, lb.version);
    }
    assert_eq!(
        pg.user_relations().await,
        Vec::<String>::new(),
        "update-sql must leave the database untouched"
    );
    let fingerprints: std::collections::HashSet<_> =
        plan.iter().map(|p| fingerprint(p, &args, &c)).collect();
    assert_eq!(fingerprints.len(), plan.len());
    assert_found_in_closure(&c, &plan);

    let steps = 3;
    let times = apply_each(&lb, &pg, &root, &args, &plan[..steps]).await;
    eprintln!("update-count --count 1, first {steps} procrastinate changesets: {times:?}");
    let tables = pg.user_relations().await;
    for t in [
        "public.databasechangelog",
        "public.databasechangeloglock",
        "public.procrastinate_jobs",
    ] {
        assert!(tables.iter().any(|r| r == t), "{t} missing from {tables:?}");
    }
    pg.stop().await;
}

#[tokio::test]
async fn every_format_with_contexts_labels_parameters_and_load_data() {
    let lb = liquibase();
    let pg = Pg::start().await;

    // Everything: no filter selects every changeset.
    let all = args(&["update", "--changelog-file=changelog.xml"]);
    let (_, _exec_all, root_all) = prepared("mixed", &all);
    let everything = plan(&lb, &pg, &root_all, &all).await;
    let labels = |plan: &[PlannedChangeset]| -> Vec<String> {
        plan.iter().map(PlannedChangeset::label).collect()
    };
    assert_eq!(
        labels(&everything),
        [
            "changelog.xml::schema::alice",
            "tables/people.yaml::people::carol",
            "tables/people.yaml::people-data::carol",
            "tables/orders.json::orders::dave",
            "changelog.xml::sample-orders::alice",
            "sql/010_views.sql::people-view::erin",
            "sql/010_views.sql::debug-view::erin",
            "sql/020_functions.sql::order-total::frank",
            "changelog.xml::grants::bob",
        ]
    );
    let sample = &everything[4];
    assert_eq!(
        (sample.contexts.as_deref(), sample.labels.as_deref()),
        (Some("test"), Some("sample"))
    );
    assert_eq!(everything[8].description, "sqlFile path=scripts/grant.sql");

    // Filtered, with a parameter overriding the changelog's own property.
    let filtered = args(&[
        "--search-path=.",
        "update",
        "--changelog-file",
        "changelog.xml",
        "--contexts=test",
        "--labels=!security",
        "-Dcurrency=USD",
    ]);
    let (c, _exec, root) = prepared("mixed", &filtered);
    let plan = plan(&lb, &pg, &root, &filtered).await;
    assert_eq!(
        labels(&plan),
        [
            "changelog.xml::schema::alice",
            "tables/people.yaml::people::carol",
            "tables/people.yaml::people-data::carol",
            "tables/orders.json::orders::dave",
            "changelog.xml::sample-orders::alice",
            "sql/010_views.sql::people-view::erin",
            "sql/020_functions.sql::order-total::frank",
        ]
    );
    // The parameter changes the checksum of the changeset using it only.
    for p in &plan {
        let same = everything.iter().find(|e| e.label() == p.label()).unwrap();
        assert_eq!(
            p.checksum == same.checksum,
            p.id != "orders",
            "{}: {} vs {}",
            p.label(),
            p.checksum,
            same.checksum
        );
        assert_ne!(
            fingerprint(p, &filtered, &c),
            fingerprint(same, &all, &c),
            "options are part of every fingerprint"
        );
    }
    assert!(pg.user_relations().await.is_empty());
    assert_found_in_closure(&c, &plan);
    c.check_plan(&plan).unwrap();

    let times = apply_each(&lb, &pg, &root, &filtered, &plan).await;
    eprintln!("update-count --count 1, mixed changelog: {times:?}");
    let db = pg.client().await;
    let people: i64 = db
        .query_one("SELECT count(*) FROM shop.people", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(people, 3, "loadData read the CSV");
    let row = db
        .query_one(
            "SELECT currency, shop.order_total(person_id)::text FROM shop.orders",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "USD",
        "-Dcurrency reached the JSON changeset"
    );
    assert_eq!(row.get::<_, String>(1), "12.50");
    let views: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_views WHERE schemaname = 'shop' AND viewname = 'debug_orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(views, 0, "the dev-only changeset did not run");
    pg.stop().await;
}

#[tokio::test]
async fn a_failing_changeset_reports_liquibase_s_message() {
    let lb = liquibase();
    let pg = Pg::start().await;
    let args = args(&["update", "--changelog-file", "changelog.xml"]);
    let (_, _exec, root) = prepared("broken", &args);
    let plan = plan(&lb, &pg, &root, &args).await;
    assert_eq!(plan.len(), 2);
    apply_each(&lb, &pg, &root, &args, &plan[..1]).await;

    let err = lb
        .update_one(&pg.jdbc, &root, &args, &CancellationToken::new())
        .await
        .expect_err("the second changeset fails");
    match &err {
        LbError::Failed {
            command,
            message,
            changeset,
            stderr,
            ..
        } => {
            assert_eq!(*command, "update-count");
            assert_eq!(changeset.as_deref(), Some("changelog.xml::bad::bob"));
            assert!(
                message.contains("relation \"missing_table\" does not exist")
                    && message.contains("INSERT INTO missing_table VALUES (1)"),
                "{message}"
            );
            assert!(!message.contains("For more information"), "{message}");
            assert!(
                stderr.contains("Unexpected error running Liquibase"),
                "{stderr}"
            );
        }
        other => panic!("{other}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with("Liquibase update-count failed in changeset changelog.xml::bad::bob: "),
        "{text}"
    );
    assert!(!text.contains(&pg.jdbc.password), "no password in errors");

    // The failure left nothing recorded for it; the first changeset stays.
    let rows = applied(&pg.jdbc, &args).await.unwrap();
    check_applied(&rows, &plan[..1]).unwrap();
    pg.stop().await;
}

#[tokio::test]
async fn a_class_cache_is_written_once_then_used() {
    let cache = scratch();
    let lb = liquibase().with_class_cache(cache.path().join("cds"));
    let archive = lb.class_archive().expect("a cache was set");
    let pg = Pg::start().await;
    let args = args(&["update", "--changelog-file", "changelog.xml"]);
    let (_, _exec, root) = prepared("broken", &args);

    let writing = plan(&lb, &pg, &root, &args).await;
    assert!(
        archive.is_file(),
        "the first run writes {}",
        archive.display()
    );
    let using = plan(&lb, &pg, &root, &args).await;
    assert_eq!(
        using, writing,
        "the archive changes nothing Liquibase prints"
    );
    let left: Vec<PathBuf> = std::fs::read_dir(archive.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, vec![archive.clone()], "no partial archive is left");
    apply_each(&lb, &pg, &root, &args, &using[..1]).await;
    pg.stop().await;
}

#[tokio::test]
async fn bad_changelogs_fail_the_plan_with_liquibase_s_reason() {
    let lb = liquibase();
    let pg = Pg::start().await;
    let dir = scratch();
    std::fs::write(
        dir.path().join("c.xml"),
        r#"<databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://www.liquibase.org/xml/ns/dbchangelog http://www.liquibase.org/xml/ns/dbchangelog/dbchangelog-4.28.xsd">
  <changeSet id="1" author="a"><createTable tableName="t"/></changeSet>
</databaseChangeLog>"#,
    )
    .unwrap();
    let args = args(&["update", "--changelog-file=c.xml"]);
    let err = lb
        .plan(&pg.jdbc, dir.path(), &args, &CancellationToken::new())
        .await
        .expect_err("createTable without columns is invalid");
    let text = err.to_string();
    assert!(
        text.starts_with("Liquibase update-sql failed")
            && text.contains("No columns defined for createTable"),
        "{text}"
    );
    pg.stop().await;
}

#[tokio::test]
async fn cancelling_kills_the_jvm() {
    let lb = liquibase();
    let pg = Pg::start().await;
    let dir = scratch();
    std::fs::write(
        dir.path().join("slow.xml"),
        r#"<databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://www.liquibase.org/xml/ns/dbchangelog http://www.liquibase.org/xml/ns/dbchangelog/dbchangelog-4.28.xsd">
  <changeSet id="slow" author="a"><sql>SELECT pg_sleep(120)</sql></changeSet>
</databaseChangeLog>"#,
    )
    .unwrap();
    let args = args(&["update", "--changelog-file=slow.xml"]);
    let cancel = CancellationToken::new();
    let jdbc = pg.jdbc.clone();
    let run = lb.update_one(&jdbc, dir.path(), &args, &cancel);
    tokio::pin!(run);
    // Cancel once the changeset's query is running in the server.
    let client = pg.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::select! {
            result = &mut run => panic!("Liquibase ended before it was cancelled: {result:?}"),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(120)%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow changeset never started"
        );
    }
    cancel.cancel();
    let cancelled_at = Instant::now();
    let result = run.await;
    assert!(matches!(result, Err(LbError::Cancelled)), "{result:?}");
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));
    // No process of that run is left: the launcher and its JVM are gone.
    let marker = format!("--search-path={}", dir.path().display());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "still running: {:?}",
            processes_with(&marker)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.stop().await;
}

/// Command lines of running processes that contain `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            out.push(cmdline);
        }
    }
    out
}
