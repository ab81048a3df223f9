//! Real third-party SQL from `../shared/datasets`: Chinook, TPC-H sf0.01
//! through `\copy`, the procrastinate migrations checked against its schema,
//! graphile-worker's migrations, and its unsubstituted originals as a failure.

use std::path::Path;

use sqlrs_e2e::{Backend, Runtime, Sandbox, on_each_target, with_database};

on_each_target!(
    chinook,
    tpch_through_copy,
    procrastinate_migrations,
    graphile_worker
);

/// `-f DIR/FILE` for every `.sql` file of `dir` (relative to `base`), in name order.
fn each_file(base: &Path, dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(base.join(dir))
        .unwrap_or_else(|e| panic!("{}: {e}", base.join(dir).display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    files.sort();
    files
        .into_iter()
        .flat_map(|f| ["-f".to_owned(), format!("{dir}/{f}")])
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn chinook(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    sb.copy_dataset("chinook", "chinook");
    let p = sb.prepare(&["-f", "chinook/chinook.sql"]);
    assert_eq!(
        sb.query(&p.dsn, "select round(sum(total), 2) from invoice"),
        "2328.60"
    );
    let again = sb.prepare(&["-f", "chinook/chinook.sql"]);
    assert_eq!(again.state_id, p.state_id);
    assert_eq!(sb.query(&again.dsn, "select count(*) from track"), "3503");
}

fn tpch_through_copy(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    let dir = sb.copy_dataset("tpch-sf0.01", "tpch");
    let args = ["-f", "schema.sql", "-f", "load.sql"];
    let p = sb.prepare_in(&dir, &args);
    assert_eq!(sb.query(&p.dsn, "select count(*) from lineitem"), "60175");
    assert_eq!(sb.query(&p.dsn, "select count(*) from region"), "5");

    // The `\copy` data files are part of the load step's identity.
    let plan = |sb: &Sandbox| {
        let json = sb.json_in(
            &dir,
            &["plan:psql", "--", "-f", "schema.sql", "-f", "load.sql"],
        );
        sqlrs_e2e::plan_steps(&json)
    };
    let before = plan(&sb);
    assert!(before.iter().all(|s| s.cached), "{before:?}");
    let region = dir.join("region.csv");
    let mut csv = std::fs::read_to_string(&region).unwrap();
    csv = csv.replacen("AFRICA", "ATLANTIS", 1);
    std::fs::write(&region, csv).unwrap();
    let after = plan(&sb);
    assert_eq!(
        after
            .iter()
            .map(|s| (s.state_id == before[0].state_id, s.cached))
            .collect::<Vec<_>>(),
        [(true, true), (false, false)],
        "editing region.csv changes the load step only: {after:?}"
    );
}

/// The migrations, one `-f` each, give the schema `schema.sql` gives, loaded
/// by psql itself into a fresh database (column order aside).
fn procrastinate_migrations(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    let dir = sb.copy_dataset("mig-procrastinate", "procrastinate");
    let migrations = each_file(&dir, "migrations");
    assert_eq!(migrations.len(), 2 * 38);
    let p = sb.prepare_in(&dir, &strs(&migrations));

    sb.query(&p.dsn, "create database reference");
    let reference = with_database(&p.dsn, "reference");
    let load = sb.psql(
        &reference,
        &[
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "procrastinate/schema.sql",
        ],
    );
    assert!(load.success(), "{load}");

    let user = "not in ('pg_catalog', 'information_schema', 'pg_toast')";
    let catalogs = [
        (
            "columns",
            format!(
                "select table_schema, table_name, column_name, data_type, udt_name, is_nullable, \
                 column_default from information_schema.columns where table_schema {user} order by 1, 2, 3"
            ),
        ),
        (
            "routines",
            format!(
                "select p.oid::regprocedure::text, pg_get_function_result(p.oid) from pg_proc p \
                 join pg_namespace n on n.oid = p.pronamespace where n.nspname {user} order by 1"
            ),
        ),
        (
            "indexes",
            format!(
                "select schemaname, tablename, indexname, indexdef from pg_indexes \
                 where schemaname {user} order by 1, 2, 3"
            ),
        ),
    ];
    for (what, sql) in catalogs {
        let migrated = sb.query(&p.dsn, &sql);
        assert!(migrated.lines().count() > 5, "{what}: {migrated}");
        assert_eq!(migrated, sb.query(&reference, &sql), "{what} differ");
    }
}

fn graphile_worker(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    let dir = sb.copy_dataset("mig-graphile-worker", "graphile");
    let setup = ["-1", "-c", "create schema graphile_worker"];

    let mut args: Vec<String> = setup.iter().map(|s| s.to_string()).collect();
    args.extend(each_file(&dir, "substituted"));
    let p = sb.prepare_in(&dir, &strs(&args));
    assert_eq!(
        sb.query(
            &p.dsn,
            "select string_agg(table_name || ':' || table_type, ',' order by table_name) \
             from information_schema.tables where table_schema = 'graphile_worker'"
        ),
        "_private_job_queues:BASE TABLE,_private_jobs:BASE TABLE,\
         _private_known_crontabs:BASE TABLE,_private_tasks:BASE TABLE,jobs:VIEW"
    );

    // psql does not substitute variables inside $$ bodies: the originals fail.
    let mut original: Vec<String> = ["-v", "GRAPHILE_WORKER_SCHEMA=graphile_worker"]
        .into_iter()
        .chain(setup)
        .map(String::from)
        .collect();
    original.extend(each_file(&dir, "original"));
    let command = |verb: &'static str| -> Vec<&str> {
        [verb, "--"].into_iter().chain(strs(&original)).collect()
    };
    let failed = sb.sqlrs_in(&dir, &command("prepare:psql"));
    assert_eq!(failed.code, Some(3), "{}", sb.explain(&failed));
    assert!(
        failed.text().contains("000001.sql:53") && !failed.text().contains("blobs/"),
        "the error points at the user's 000001.sql line 53:\n{failed}"
    );
    let plan = sqlrs_e2e::plan_steps(&sb.json_in(&dir, &command("plan:psql")));
    assert_eq!(
        plan.iter().take(2).map(|s| s.cached).collect::<Vec<_>>(),
        [true, false],
        "the setup step stays cached, the failed migration is not"
    );
}
