//! The native runtime against the host's real PostgreSQL: init, start, stop,
//! passwords, psql runs and cancellation, stale lock files, the root path.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlrsd::runtime::{
    NativeConfig, NativeRuntime, Runtime, RuntimeError, ServerHandle, ServerOptions,
    generate_password,
};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const OPTS: ServerOptions = ServerOptions {
    durable: false,
    port: None,
};

fn runtime() -> NativeRuntime {
    NativeRuntime::detect(&NativeConfig::default()).unwrap_or_else(|e| {
        panic!("these tests need PostgreSQL server binaries: {e}");
    })
}

/// A scratch folder the server account can reach (tempfile makes it 0700).
fn scratch() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sqlrs-runtime-")
        .tempdir_in("/tmp")
        .expect("create a temp dir under /tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A fresh base cluster in `root/name`.
async fn base(rt: &NativeRuntime, root: &Path, name: &str) -> PathBuf {
    let data = root.join(name);
    std::fs::create_dir(&data).unwrap();
    rt.adopt_dir(&data).unwrap();
    rt.init_base(&data).await.unwrap_or_else(|e| panic!("{e}"));
    data
}

/// A copy of a data directory, as the copy snapshotter makes it (ownership kept).
fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

async fn start(rt: &NativeRuntime, data: &Path, root: &Path, name: &str) -> ServerHandle {
    rt.start(data, &root.join(name), &OPTS)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A TCP connection with the user-facing DSN.
async fn connect(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn psql(
    rt: &NativeRuntime,
    server: &ServerHandle,
    cwd: &Path,
    args: &[&str],
    stdin: Option<&Path>,
) -> Result<sqlrsd::runtime::PsqlOutput, RuntimeError> {
    let mut all: Vec<String> = ["-X", "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    rt.run_psql(server, &all, cwd, stdin, &CancellationToken::new())
        .await
}

async fn wait_for_connections(rt: &NativeRuntime, server: &ServerHandle, want: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = rt.connection_count(server).await.unwrap();
        if n == want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn detect_describes_the_installation() {
    let rt = runtime();
    let info = rt.info();
    let engine = rt.engine();
    assert_eq!(info.kind, "native");
    assert_eq!(engine.runtime, "native");
    assert!(
        engine.version.starts_with(|c: char| c.is_ascii_digit()),
        "{engine:?}"
    );
    assert!(
        info.detail
            .starts_with(&format!("PostgreSQL {} (/", engine.version)),
        "{}",
        info.detail
    );
    for arg in ["--locale=C", "--encoding=UTF8", "--auth-host=scram-sha-256"] {
        assert!(engine.initdb_args.iter().any(|a| a == arg), "{engine:?}");
    }
    assert!(engine.image_digest.is_empty());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(info.server_user, "postgres");
    }
}

#[test]
fn detect_names_the_fix_for_bad_configuration() {
    let empty = scratch();
    let cases = [
        (
            NativeConfig {
                bin_dir: Some(empty.path().to_owned()),
                server_user: None,
            },
            "has no `postgres`",
        ),
        (
            NativeConfig {
                bin_dir: None,
                server_user: Some("sqlrs-no-such-account".into()),
            },
            "useradd",
        ),
        (
            NativeConfig {
                bin_dir: None,
                server_user: Some("root".into()),
            },
            "unprivileged",
        ),
    ];
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    for (cfg, want) in cases {
        if cfg.server_user.is_some() && !root {
            continue;
        }
        let err = NativeRuntime::detect(&cfg).unwrap_err().to_string();
        assert!(err.contains(want), "{cfg:?}: {err}");
    }
}

#[tokio::test]
async fn server_lifecycle_with_password_over_tcp() {
    let rt = runtime();
    let root = scratch();
    let data = base(&rt, root.path(), "data").await;
    let started = Instant::now();
    let server = start(&rt, &data, root.path(), "run").await;
    eprintln!("start to ready: {:?}", started.elapsed());
    assert!(rt.is_running(&server));
    assert!(root.path().join("run/postgres.log").is_file());

    let password = generate_password();
    rt.set_password(&server, &password).await.unwrap();
    let dsn = rt.dsn(&server, &password);
    assert_eq!(
        dsn,
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/postgres",
            server.port
        )
    );
    let client = connect(&dsn).await.unwrap();
    let row = client
        .query_one(
            "SELECT current_setting('fsync'), current_setting('TimeZone'), \
             current_setting('lc_collate'), 6 * 7",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "off");
    assert_eq!(row.get::<_, String>(1), "UTC");
    assert_eq!(row.get::<_, String>(2), "C");
    assert_eq!(row.get::<_, i32>(3), 42);

    let wrong = rt.dsn(&server, "not-the-password");
    assert!(connect(&wrong).await.is_err(), "a wrong password must fail");

    assert_eq!(wait_for_connections(&rt, &server, 1).await, 1);
    drop(client);
    assert_eq!(wait_for_connections(&rt, &server, 0).await, 0);

    rt.checkpoint(&server).await.unwrap();

    rt.stop(&server).await.unwrap();
    assert!(!rt.is_running(&server));
    assert!(!data.join("postmaster.pid").exists());
    rt.stop(&server).await.expect("stopping twice is harmless");

    let again = start(&rt, &data, root.path(), "run").await;
    rt.checkpoint(&again).await.unwrap();
    rt.stop(&again).await.unwrap();
}

#[tokio::test]
async fn two_servers_at_once() {
    let rt = runtime();
    let root = scratch();
    let one = base(&rt, root.path(), "one").await;
    let two = root.path().join("two");
    copy_dir(&one, &two);
    let (a, b) = tokio::join!(
        start(&rt, &one, root.path(), "run-one"),
        start(&rt, &two, root.path(), "run-two")
    );
    assert_ne!(a.port, b.port);
    assert_ne!(a.pid, b.pid);
    for (server, password) in [(&a, "first"), (&b, "second")] {
        rt.set_password(server, password).await.unwrap();
        let client = connect(&rt.dsn(server, password)).await.unwrap();
        let row = client
            .query_one("SELECT current_setting('data_directory')", &[])
            .await
            .unwrap();
        assert_eq!(
            PathBuf::from(row.get::<_, String>(0)),
            server.data_dir,
            "each port reaches its own cluster"
        );
    }
    rt.stop(&a).await.unwrap();
    assert!(!rt.is_running(&a));
    assert!(rt.is_running(&b), "stopping one leaves the other");
    rt.stop(&b).await.unwrap();
}

#[tokio::test]
async fn psql_runs_scripts_and_reports_failures() {
    let rt = runtime();
    let root = scratch();
    let data = base(&rt, root.path(), "data").await;
    let server = start(&rt, &data, root.path(), "run").await;
    let work = root.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(
        work.join("ok.sql"),
        "create table t(x int);\ninsert into t values (1), (2);\n",
    )
    .unwrap();
    std::fs::write(
        work.join("fail.sql"),
        "select 1;\nselect * from missing_table;\nselect 3;\n",
    )
    .unwrap();
    std::fs::write(work.join("input.sql"), "select sum(x) from t;\n").unwrap();

    let out = psql(&rt, &server, &work, &["-f", "ok.sql"], None)
        .await
        .unwrap();
    assert_eq!(out.stderr, "");

    let stdin = work.join("input.sql");
    let cases: [(&[&str], Option<&Path>, &str); 3] = [
        (&["-c", "select count(*) from t"], None, "2"),
        (&["-f", "-"], Some(&stdin), "3"),
        (&["-c", "show application_name"], None, "psql"),
    ];
    for (args, stdin, want) in cases {
        let out = psql(&rt, &server, &work, args, stdin)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(out.stdout.trim(), want, "{args:?}");
    }

    match psql(&rt, &server, &work, &["-f", "fail.sql"], None).await {
        Err(RuntimeError::Psql { exit_code, stderr }) => {
            assert_eq!(exit_code, 3, "{stderr}");
            assert!(
                stderr.contains("psql:fail.sql:2: ERROR:"),
                "stderr names file and line: {stderr}"
            );
            assert!(stderr.contains("missing_table"), "{stderr}");
        }
        other => panic!("expected a psql failure, got {other:?}"),
    }
    rt.stop(&server).await.unwrap();
}

#[tokio::test]
async fn cancel_interrupts_a_long_query() {
    let rt = runtime();
    let root = scratch();
    let data = base(&rt, root.path(), "data").await;
    let server = start(&rt, &data, root.path(), "run").await;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        trigger.cancel();
    });
    let args: Vec<String> = ["-X", "-v", "ON_ERROR_STOP=1", "-c", "select pg_sleep(30)"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let began = Instant::now();
    let result = rt
        .run_psql(&server, &args, root.path(), None, &cancel)
        .await;
    assert!(matches!(result, Err(RuntimeError::Cancelled)), "{result:?}");
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        began.elapsed()
    );
    assert_eq!(
        wait_for_connections(&rt, &server, 0).await,
        0,
        "the sleeping backend is gone"
    );
    rt.stop(&server).await.unwrap();
}

#[tokio::test]
async fn copies_with_a_stale_lock_file_start() {
    let rt = runtime();
    let root = scratch();
    let data = base(&rt, root.path(), "data").await;
    let source = start(&rt, &data, root.path(), "run").await;
    let out = psql(
        &rt,
        &source,
        root.path(),
        &["-c", "create table kept as select 7 as x"],
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.stderr, "");
    rt.checkpoint(&source).await.unwrap();

    // A copy of a running server holds its live postmaster.pid.
    let clone = root.path().join("clone");
    copy_dir(&data, &clone);
    let pid_file = std::fs::read_to_string(clone.join("postmaster.pid")).unwrap();
    assert!(pid_file.starts_with(&format!("{}\n", source.pid)));

    let copy = start(&rt, &clone, root.path(), "run-clone").await;
    assert!(rt.is_running(&copy));
    assert!(rt.is_running(&source), "the source keeps running");
    let out = psql(&rt, &copy, root.path(), &["-c", "select x from kept"], None)
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "7");

    match rt.start(&data, &root.path().join("run2"), &OPTS).await {
        Err(RuntimeError::AlreadyRunning { pid, .. }) => assert_eq!(pid, source.pid),
        other => panic!("a second server on a live data dir must be refused: {other:?}"),
    }

    rt.stop(&copy).await.unwrap();
    rt.stop(&source).await.unwrap();
}

#[tokio::test]
async fn failures_name_the_problem() {
    let rt = runtime();
    let root = scratch();
    let data = base(&rt, root.path(), "data").await;

    match rt.init_base(&data).await {
        Err(RuntimeError::NotEmpty { dir }) => assert_eq!(dir, data),
        other => panic!("initdb into a used directory: {other:?}"),
    }

    let broken = root.path().join("broken");
    copy_dir(&data, &broken);
    let mut conf = std::fs::read_to_string(broken.join("postgresql.conf")).unwrap();
    conf.push_str("\nshared_buffers = banana\n");
    std::fs::write(broken.join("postgresql.conf"), conf).unwrap();
    match rt.start(&broken, &root.path().join("run"), &OPTS).await {
        Err(e @ RuntimeError::StartFailed { .. }) => {
            let text = e.to_string();
            assert!(text.contains("shared_buffers"), "log tail shown: {text}");
            assert!(text.contains("postgres.log"), "log named: {text}");
        }
        other => panic!("a broken config must fail to start: {other:?}"),
    }

    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(matches!(
        rt.start(&empty, &root.path().join("run"), &OPTS).await,
        Err(RuntimeError::NotADataDir { .. })
    ));

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let private = root.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let hidden = private.join("data");
        std::fs::create_dir(&hidden).unwrap();
        match rt.adopt_dir(&hidden) {
            Err(e @ RuntimeError::NotTraversable { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(&private.display().to_string()),
                    "names the folder: {text}"
                );
            }
            other => panic!("an unreachable data dir must be refused: {other:?}"),
        }
    }
}

#[test]
fn servers_outlive_the_daemon_that_started_them() {
    let rt = runtime();
    let root = scratch();
    let daemon = tokio::runtime::Runtime::new().unwrap();
    let recorded = daemon.block_on(async {
        let data = base(&rt, root.path(), "data").await;
        let server = start(&rt, &data, root.path(), "run").await;
        serde_json::to_string(&server).unwrap()
    });
    drop(daemon);

    let server: ServerHandle = serde_json::from_str(&recorded).unwrap();
    assert!(rt.is_running(&server), "the server survives its runtime");
    let pid = libc::pid_t::try_from(server.pid).unwrap();
    // SAFETY: getpgid only reads the process table.
    assert_eq!(
        unsafe { libc::getpgid(pid) },
        pid,
        "the server leads its own process group"
    );
    let next = tokio::runtime::Runtime::new().unwrap();
    next.block_on(async {
        rt.checkpoint(&server).await.unwrap();
        rt.stop(&server).await.unwrap();
    });
    assert!(!rt.is_running(&server));
}
