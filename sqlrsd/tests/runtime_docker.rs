//! The Docker runtime against a real Docker daemon and PostgreSQL image:
//! image resolution, init, concurrent servers, passwords over the published
//! port, psql inside the container (scripts, failures, stdin, cancellation),
//! checkpoints, stops, orphan cleanup, and the errors for a missing daemon or
//! image.
//!
//! Needs DOCKER_HOST (from `eval "$(packaging/ci/docker.sh DIR)"`) and the
//! image SQLRS_TEST_IMAGE (default sqlrs/postgres:15, made by
//! packaging/docker/build-image.sh).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlrsd::runtime::docker::{DockerConfig, DockerRuntime, ExecOptions, Network, OutputStream};
use sqlrsd::runtime::{Runtime, RuntimeError, ServerHandle, ServerOptions, generate_password};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const OPTS: ServerOptions = ServerOptions {
    durable: false,
    port: None,
};

fn image() -> String {
    std::env::var("SQLRS_TEST_IMAGE").unwrap_or_else(|_| "sqlrs/postgres:15".into())
}

/// A scratch store laid out like sqlrs's: instances/<id>/{data,run}, exec/.
struct Store {
    dir: TempDir,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sqlrs-docker-")
            .tempdir_in("/tmp")
            .expect("create a temp dir under /tmp");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        for sub in ["instances", "exec", "work"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Store { dir }
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn exec(&self) -> PathBuf {
        self.root().join("exec")
    }
    fn data(&self, inst: &str) -> PathBuf {
        self.root().join("instances").join(inst).join("data")
    }
    fn run(&self, inst: &str) -> PathBuf {
        self.root().join("instances").join(inst).join("run")
    }
}

async fn runtime(store: &Store) -> DockerRuntime {
    runtime_on(store, Network::default()).await
}

async fn runtime_on(store: &Store, network: Network) -> DockerRuntime {
    let cfg = DockerConfig {
        image: image(),
        network,
        docker_host: None,
        shared_dirs: vec![store.exec()],
    };
    DockerRuntime::connect(&cfg).await.unwrap_or_else(|e| {
        panic!(
            "these tests need a Docker daemon and the image {}: start one with \
             `eval \"$(packaging/ci/docker.sh .build/docker)\"` and build the image with \
             `packaging/docker/build-image.sh {}` (or set SQLRS_TEST_IMAGE): {e}",
            image(),
            image()
        )
    })
}

/// A base cluster in work/base, copied into instances/<inst>/data for each
/// `inst`, as the copy snapshotter does (ownership kept).
async fn instances(rt: &DockerRuntime, store: &Store, names: &[&str]) -> Vec<PathBuf> {
    let base = store.root().join("work").join("base");
    std::fs::create_dir(&base).unwrap();
    rt.adopt_dir(&base).unwrap();
    rt.init_base(&base).await.unwrap_or_else(|e| panic!("{e}"));
    names
        .iter()
        .map(|inst| {
            let data = store.data(inst);
            std::fs::create_dir_all(data.parent().unwrap()).unwrap();
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(&base)
                .arg(&data)
                .status()
                .unwrap();
            assert!(status.success(), "cp -a {}", data.display());
            data
        })
        .collect()
}

async fn start(rt: &DockerRuntime, store: &Store, inst: &str) -> ServerHandle {
    rt.start(&store.data(inst), &store.run(inst), &OPTS)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn connect(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn psql_args(args: &[&str]) -> Vec<String> {
    ["-X", "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect()
}

/// A non-loopback address of this host, if it has one.
fn host_address() -> Option<std::net::IpAddr> {
    // Connecting a UDP socket sends nothing; it picks the outgoing address.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback()).then_some(ip)
}

/// `is_running` asks synchronously; run it off the async workers.
async fn is_running(rt: &DockerRuntime, server: &ServerHandle) -> bool {
    let (rt, server) = (rt.clone(), server.clone());
    tokio::task::spawn_blocking(move || rt.is_running(&server))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_resolves_the_image_and_its_version() {
    let store = Store::new();
    let rt = runtime(&store).await;
    let info = rt.info();
    let engine = rt.engine();
    assert_eq!(info.kind, "docker");
    assert_eq!(engine.runtime, "docker");
    assert!(
        engine.image_digest.starts_with("sha256:") && engine.image_digest.len() == 71,
        "{engine:?}"
    );
    assert_eq!(engine.image_digest, rt.image_digest());
    assert!(
        engine.version.starts_with(|c: char| c.is_ascii_digit()),
        "{engine:?}"
    );
    for arg in [
        "--locale=C",
        "--encoding=UTF8",
        "--auth-host=scram-sha-256",
        "TZ=UTC",
    ] {
        assert!(engine.initdb_args.iter().any(|a| a == arg), "{engine:?}");
    }
    assert!(info.detail.contains(&image()), "{}", info.detail);
    assert!(
        info.detail.contains(&engine.image_digest),
        "{}",
        info.detail
    );
    // The same image resolves to the same identity.
    assert_eq!(runtime(&store).await.engine(), engine);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_daemon_or_image_gives_a_clear_error() {
    let store = Store::new();
    let cases = [
        (
            DockerConfig {
                image: image(),
                network: Network::Bridge,
                docker_host: Some("unix:///nonexistent/docker.sock".into()),
                shared_dirs: Vec::new(),
            },
            vec![
                "Docker is not reachable at unix:///nonexistent/docker.sock",
                "runtime.docker.host in the sqlrs config (else DOCKER_HOST)",
                "runtime.kind = native",
            ],
        ),
        (
            DockerConfig {
                image: image(),
                network: Network::Bridge,
                docker_host: Some("tcp://127.0.0.1:1".into()),
                shared_dirs: Vec::new(),
            },
            vec!["Docker is not reachable at tcp://127.0.0.1:1"],
        ),
        (
            DockerConfig {
                image: "sqlrs/no-such-image:0".into(),
                network: Network::Host,
                docker_host: None,
                shared_dirs: vec![store.exec()],
            },
            vec![
                "sqlrs/no-such-image:0 is not present and cannot be pulled",
                "packaging/docker/build-image.sh sqlrs/no-such-image:0",
            ],
        ),
    ];
    for (cfg, wants) in cases {
        let err = match DockerRuntime::connect(&cfg).await {
            Ok(_) => panic!("connecting with {cfg:?} succeeded"),
            Err(e) => e.to_string(),
        };
        for want in wants {
            assert!(err.contains(want), "{cfg:?}: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_run_side_by_side_on_the_host_network() {
    servers_run_side_by_side_with_passwords_on_loopback(Network::Host).await
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_run_side_by_side_on_a_bridge_network() {
    servers_run_side_by_side_with_passwords_on_loopback(Network::Bridge).await
}

async fn servers_run_side_by_side_with_passwords_on_loopback(network: Network) {
    let store = Store::new();
    let rt = runtime_on(&store, network).await;
    instances(&rt, &store, &["a", "b"]).await;
    let (a, b) = tokio::join!(start(&rt, &store, "a"), start(&rt, &store, "b"));
    assert_ne!(a.port, b.port);
    assert!(is_running(&rt, &a).await && is_running(&rt, &b).await);

    let (pa, pb) = (generate_password(), generate_password());
    rt.set_password(&a, &pa).await.unwrap();
    rt.set_password(&b, &pb).await.unwrap();
    let ca = connect(&rt.dsn(&a, &pa)).await.unwrap();
    let cb = connect(&rt.dsn(&b, &pb)).await.unwrap();
    assert!(
        connect(&rt.dsn(&a, "wrong")).await.is_err(),
        "a wrong password is refused"
    );
    // Each server has its own data: a table made in one is absent in the other.
    ca.batch_execute("CREATE TABLE only_a (x int); INSERT INTO only_a VALUES (42)")
        .await
        .unwrap();
    let x: i32 = ca
        .query_one("SELECT x FROM only_a", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 42);
    assert!(cb.query_one("SELECT x FROM only_a", &[]).await.is_err());
    let tz: String = ca.query_one("SHOW timezone", &[]).await.unwrap().get(0);
    assert_eq!(tz, "UTC");
    assert_eq!(rt.connection_count(&a).await.unwrap(), 1);
    drop((ca, cb));

    rt.checkpoint(&a).await.unwrap();
    // The server answers on the loopback, and on no other host address.
    let on = |ip: std::net::IpAddr| {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(ip, a.port),
            Duration::from_secs(2),
        )
    };
    assert!(
        on([127, 0, 0, 1].into()).is_ok(),
        "the server answers on 127.0.0.1"
    );
    if let Some(ip) = host_address() {
        assert!(
            on(ip).is_err(),
            "the server must not answer on the host address {ip} ({network:?})"
        );
    }

    rt.stop(&a).await.unwrap();
    assert!(!is_running(&rt, &a).await);
    assert!(
        !store.data("a").join("postmaster.pid").exists(),
        "a clean shutdown"
    );
    assert!(
        is_running(&rt, &b).await,
        "stopping one server leaves the other"
    );
    let left = rt.containers(store.root()).await.unwrap();
    assert_eq!(
        left.iter().map(|c| c.instance.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
    // A stopped server starts again on its data, which kept the table.
    let a = start(&rt, &store, "a").await;
    rt.set_password(&a, &pa).await.unwrap();
    let ca = connect(&rt.dsn(&a, &pa)).await.unwrap();
    let x: i32 = ca
        .query_one("SELECT x FROM only_a", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 42);
    let again = rt.start(&store.data("a"), &store.run("a"), &OPTS).await;
    assert!(
        matches!(again, Err(RuntimeError::AlreadyRunning { .. })),
        "{again:?}"
    );
    drop(ca);
    for s in [&a, &b] {
        rt.stop(s).await.unwrap();
    }
    assert!(rt.containers(store.root()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_runs_inside_the_container_on_the_mirror_tree() {
    let store = Store::new();
    let rt = runtime(&store).await;
    instances(&rt, &store, &["p"]).await;
    let server = start(&rt, &store, "p").await;

    // A mirror-like execution folder under the shared exec/ folder.
    let work = store.exec().join("job1").join("work");
    std::fs::create_dir_all(work.join("inc")).unwrap();
    let files = [
        ("main.sql", "CREATE TABLE t (x int);\n\\ir inc/rows.sql\n"),
        ("inc/rows.sql", "INSERT INTO t VALUES (1), (2);\n"),
        ("bad.sql", "SELECT 1;\nSELEC 2;\n"),
        ("stdin.sql", "SELECT count(*) FROM t;\n"),
    ];
    for (name, text) in files {
        std::fs::write(work.join(name), text).unwrap();
    }
    let cancel = CancellationToken::new();

    let out = rt
        .run_psql(
            &server,
            &psql_args(&["-f", "main.sql"]),
            &work,
            None,
            &cancel,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.stdout, "");
    let out = rt
        .run_psql(
            &server,
            &psql_args(&[]),
            &work,
            Some(&work.join("stdin.sql")),
            &cancel,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.stdout.trim(), "2", "stdin reaches psql");

    match rt
        .run_psql(
            &server,
            &psql_args(&["-f", "bad.sql"]),
            &work,
            None,
            &cancel,
        )
        .await
    {
        Err(RuntimeError::Psql { exit_code, stderr }) => {
            assert_eq!(exit_code, 3, "{stderr}");
            assert!(
                stderr.contains("psql:bad.sql:2: ERROR:  syntax error"),
                "{stderr}"
            );
        }
        other => panic!("expected a psql failure, got {other:?}"),
    }

    // Output streams as it comes, and the exit code is the command's.
    let mut cmd = vec!["pg_isready".to_string()];
    cmd.extend(rt.connection_args(&server));
    let mut seen = Vec::new();
    let code = rt
        .exec_stream(
            &server,
            cmd,
            &ExecOptions::default(),
            &mut |stream, bytes| seen.push((stream, String::from_utf8_lossy(bytes).into_owned())),
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(code, 0, "{seen:?}");
    assert!(
        seen.iter()
            .any(|(s, t)| *s == OutputStream::Stdout && t.contains("accepting connections")),
        "{seen:?}"
    );
    let code = rt
        .exec_stream(
            &server,
            vec!["sh".into(), "-c".into(), "echo oops >&2; exit 7".into()],
            &ExecOptions {
                cwd: Some(work.clone()),
                ..Default::default()
            },
            &mut |_, _| {},
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(code, 7);

    // Cancelling interrupts a long statement.
    let slow = CancellationToken::new();
    let trigger = slow.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        trigger.cancel();
    });
    let started = Instant::now();
    let result = rt
        .run_psql(
            &server,
            &psql_args(&["-c", "SELECT pg_sleep(60)"]),
            &work,
            None,
            &slow,
        )
        .await;
    assert!(matches!(result, Err(RuntimeError::Cancelled)), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rt.connection_count(&server).await.unwrap(), 0);

    rt.checkpoint(&server).await.unwrap();
    rt.stop(&server).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_unknown_to_the_index_are_removed() {
    let store = Store::new();
    let rt = runtime(&store).await;
    instances(&rt, &store, &["kept", "orphan"]).await;
    let kept = start(&rt, &store, "kept").await;
    let orphan = start(&rt, &store, "orphan").await;
    let mut listed: Vec<String> = rt
        .containers(store.root())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.instance)
        .collect();
    listed.sort();
    assert_eq!(listed, ["kept", "orphan"]);
    // Another store's containers are not this store's business.
    let other = Store::new();
    assert!(rt.containers(other.root()).await.unwrap().is_empty());

    let removed = rt
        .remove_orphans(store.root(), &["kept".to_string()])
        .await
        .unwrap();
    assert_eq!(
        removed
            .iter()
            .map(|c| c.instance.as_str())
            .collect::<Vec<_>>(),
        ["orphan"]
    );
    assert!(removed[0].running);
    assert!(!is_running(&rt, &orphan).await);
    assert!(is_running(&rt, &kept).await);
    rt.stop(&kept).await.unwrap();
    assert!(rt.containers(store.root()).await.unwrap().is_empty());
}
