//! The Docker runtime's own promises: a daemon restart re-adopts running
//! containers, a vanished container is recreated from its data directory,
//! unknown containers of the store are removed, the image digest separates
//! caches, psql and pgbench need no host client, and an unreachable Docker
//! gives a clear error (or, with `auto`, the native runtime and a reason).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlrs_e2e::{
    Backend, CHAIN, DockerEnv, LABEL_DATA_DIR, LABEL_INSTANCE, LABEL_MANAGED, Runtime, Sandbox,
    field, find_str, plan_steps,
};

/// A name no other test of this run uses (Docker names are global to the daemon).
fn unique(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "sqlrs-e2e-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Docker objects a test made itself, removed when it ends however it ends
/// (images only once no container uses them: declare it before the sandbox).
struct Made {
    docker: DockerEnv,
    containers: Vec<String>,
    images: Vec<String>,
}

impl Made {
    fn new() -> Self {
        Self {
            docker: DockerEnv::get().unwrap_or_else(|e| panic!("{e}")),
            containers: Vec::new(),
            images: Vec::new(),
        }
    }

    /// `docker run -d` of the test image with these labels, idling until it
    /// is stopped (SIGINT or SIGTERM end it at once).
    fn labelled_container(&mut self, labels: &[(&str, &str)]) -> String {
        let mut args = vec!["run".to_owned(), "-d".to_owned()];
        for (k, v) in labels {
            args.extend(["--label".to_owned(), format!("{k}={v}")]);
        }
        args.extend(
            [
                "--entrypoint",
                "sh",
                &self.docker.image,
                "-c",
                "trap 'exit 0' INT TERM; while :; do sleep 1; done",
            ]
            .into_iter()
            .map(String::from),
        );
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = self.docker.docker_ok(&argv).stdout.trim().to_owned();
        self.containers.push(id.clone());
        id
    }

    /// A new image id: the test image with one more label, tagged `name`.
    fn relabelled_image(&mut self, name: &str) -> String {
        let created = self.docker.docker_ok(&["create", &self.docker.image]);
        let container = created.stdout.trim().to_owned();
        self.containers.push(container.clone());
        let change = format!("LABEL org.sqlrs.e2e={name}");
        self.docker
            .docker_ok(&["commit", "--change", &change, &container, name]);
        self.images.push(name.to_owned());
        image_id(&self.docker, name)
    }

    /// Another tag for the test image itself (same image id).
    fn tag(&mut self, name: &str) {
        self.docker.docker_ok(&["tag", &self.docker.image, name]);
        self.images.push(name.to_owned());
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        for c in &self.containers {
            self.docker.docker(&["rm", "-f", c]);
        }
        for i in &self.images {
            self.docker.docker(&["rmi", i]);
        }
    }
}

fn image_id(docker: &DockerEnv, image: &str) -> String {
    docker
        .docker_ok(&["image", "inspect", "--format", "{{.Id}}", image])
        .stdout
        .trim()
        .to_owned()
}

/// `docker inspect --format FORMAT ID`, trimmed.
fn inspect(docker: &DockerEnv, id: &str, format: &str) -> String {
    docker
        .docker_ok(&["inspect", "--format", format, id])
        .stdout
        .trim()
        .to_owned()
}

/// The one container of `instance`.
fn container_of(docker: &DockerEnv, instance: &str) -> String {
    let found = docker.containers_labelled(LABEL_INSTANCE, instance);
    assert_eq!(
        found.len(),
        1,
        "containers of instance {instance}: {found:?}"
    );
    found[0].clone()
}

/// The listed instance `id`, failing when it is not listed.
fn listed_instance(sb: &Sandbox, id: &str) -> Value {
    let instances = sb.ls("instances");
    instances
        .iter()
        .find(|i| field(i, "id") == id)
        .cloned()
        .unwrap_or_else(|| panic!("instance {id} not listed: {instances:#?}"))
}

fn restart_daemon(sb: &Sandbox) {
    sb.sqlrs_ok(&["daemon", "stop"]);
    sb.sqlrs_ok(&["daemon", "start"]);
}

#[test]
fn daemon_restart_readopts_running_containers() {
    let sb = Sandbox::docker(Backend::Copy);
    let docker = sb.docker_env().clone();
    sb.write_chain();
    let p = sb.prepare(&CHAIN);
    sb.query(&p.dsn, "insert into item values (42)");
    let container = container_of(&docker, &p.instance_id);
    let started = inspect(&docker, &container, "{{.State.StartedAt}}");

    sb.sqlrs_ok(&["daemon", "stop"]);
    assert_eq!(
        inspect(&docker, &container, "{{.State.Running}}"),
        "true",
        "instance containers outlive the daemon"
    );
    assert_eq!(sb.query(&p.dsn, "select count(*) from item"), "3");
    sb.sqlrs_ok(&["daemon", "start"]);

    let listed = listed_instance(&sb, &p.instance_id);
    assert_eq!(field(&listed, "dsn"), p.dsn, "{listed:#}");
    assert_eq!(
        (
            container_of(&docker, &p.instance_id),
            inspect(&docker, &container, "{{.State.StartedAt}}")
        ),
        (container.clone(), started),
        "the same container, never restarted"
    );
    assert_eq!(sb.query(&p.dsn, "select max(v) from item"), "42");

    drop(sb);
    assert!(
        docker
            .containers_labelled(LABEL_INSTANCE, &p.instance_id)
            .is_empty(),
        "a dropped sandbox leaves no container"
    );
}

#[test]
fn vanished_container_is_recreated_from_its_data() {
    let sb = Sandbox::docker(Backend::Copy);
    let docker = sb.docker_env();
    sb.write_chain();
    let p = sb.prepare(&CHAIN);
    // Instances run with synchronous_commit=off: this commit waits for its WAL.
    sb.query(
        &p.dsn,
        "set synchronous_commit = on; insert into item values (42)",
    );
    let container = container_of(docker, &p.instance_id);

    docker.docker_ok(&["rm", "-f", &container]);
    restart_daemon(&sb);

    let listed = listed_instance(&sb, &p.instance_id);
    let recreated = container_of(docker, &p.instance_id);
    assert_ne!(recreated, container, "a new container");
    assert_eq!(
        inspect(docker, &recreated, "{{.State.Running}}"),
        "true",
        "{listed:#}"
    );
    let dsn = field(&listed, "dsn");
    assert_eq!(
        sb.query(dsn, "select string_agg(v::text, ',' order by v) from item"),
        "1,2,42",
        "the row written before the removal is there"
    );
    let run = sb.sqlrs(&[
        "run:psql",
        "--instance",
        &p.instance_id,
        "--",
        "-At",
        "-c",
        "select count(*) from item",
    ]);
    assert_eq!(run.code, Some(0), "{}", sb.explain(&run));
    assert_eq!(run.stdout.trim(), "3", "{run}");
}

#[test]
fn unknown_containers_of_the_store_are_removed_at_start() {
    let sb = Sandbox::docker(Backend::Copy);
    let docker = sb.docker_env();
    sb.write_chain();
    let p = sb.prepare(&CHAIN);
    let own = container_of(docker, &p.instance_id);
    let own_data = PathBuf::from(inspect(
        docker,
        &own,
        &format!("{{{{index .Config.Labels \"{LABEL_DATA_DIR}\"}}}}"),
    ));
    // <store>/instances/<id>/data
    let store = own_data
        .ancestors()
        .nth(3)
        .unwrap_or_else(|| panic!("unexpected data directory {}", own_data.display()));
    assert!(store.starts_with(sb.state_dir()), "{}", own_data.display());
    sb.sqlrs_ok(&["daemon", "stop"]);

    let mut made = Made::new();
    let ghost = unique("ghost");
    let ghost_data = store.join("instances").join(&ghost).join("data");
    let elsewhere = Path::new("/nonexistent-sqlrs-store/instances/x/data");
    // (instance label, data directory label, kept after the daemon starts)
    let cases = [
        (ghost.as_str(), ghost_data.as_path(), false),
        (p.instance_id.as_str(), elsewhere, true),
    ];
    let containers: Vec<String> = cases
        .iter()
        .map(|(instance, data, _)| {
            made.labelled_container(&[
                (LABEL_MANAGED, "true"),
                (LABEL_INSTANCE, instance),
                (LABEL_DATA_DIR, data.to_str().unwrap()),
            ])
        })
        .collect();

    sb.sqlrs_ok(&["daemon", "start"]);
    for ((instance, data, kept), id) in cases.iter().zip(&containers) {
        let exists = docker.docker(&["inspect", id]).success();
        assert_eq!(
            exists,
            *kept,
            "container of instance {instance} at {}",
            data.display()
        );
    }
    assert_eq!(
        inspect(docker, &own, "{{.State.Running}}"),
        "true",
        "the instance's own container stays"
    );
    assert_eq!(sb.query(&p.dsn, "select count(*) from item"), "2");
}

#[test]
fn image_digest_separates_states() {
    let mut made = Made::new();
    let sb = Sandbox::docker(Backend::Copy);
    let docker = sb.docker_env();
    sb.write_chain();
    let same = format!("{}:same", unique("tag"));
    made.tag(&same);
    let other = format!("{}:other", unique("image"));
    let other_id = made.relabelled_image(&other);
    assert_ne!(other_id, image_id(docker, &docker.image));

    // (base id, step state ids, cached flags) of the chain on `image`.
    let plan = |image: Option<&str>| {
        let mut args = vec!["plan:psql"];
        if let Some(image) = image {
            args.extend(["--image", image]);
        }
        args.push("--");
        args.extend(CHAIN);
        let doc = sb.json(&args);
        let base = find_str(&doc, "base_id")
            .unwrap_or_else(|| panic!("no base_id in {doc:#}"))
            .to_owned();
        let steps = plan_steps(&doc);
        (
            base,
            steps.iter().map(|s| s.state_id.clone()).collect::<Vec<_>>(),
            steps.iter().map(|s| s.cached).collect::<Vec<_>>(),
        )
    };
    let default = plan(None);
    assert_eq!(
        plan(Some(&docker.image)),
        default,
        "--image naming the configured image"
    );
    assert_eq!(
        plan(Some(&same)),
        default,
        "another tag of the same image id"
    );
    let separate = plan(Some(&other));
    assert_ne!(separate.0, default.0, "another image id, another base");
    assert!(
        separate.1.iter().all(|id| !default.1.contains(id)),
        "no state is shared: {separate:?} vs {default:?}"
    );

    sb.prepare(&CHAIN);
    // (image, every step cached)
    let cases = [(same.as_str(), true), (other.as_str(), false)];
    for (image, cached) in cases {
        assert_eq!(plan(Some(image)).2, [cached, cached], "{image}");
    }

    let mut args = vec!["prepare:psql", "--image", &other, "--"];
    args.extend(CHAIN);
    let mut json_args = vec!["--output", "json"];
    json_args.extend(args);
    let on_other = sqlrs_e2e::prepared_from(sb.sqlrs_ok(&json_args).json());
    assert_eq!(on_other.state_id, separate.1[1]);
    let listed = listed_instance(&sb, &on_other.instance_id);
    assert_eq!(field(&listed, "image"), other, "{listed:#}");
    assert_eq!(
        inspect(
            docker,
            &container_of(docker, &on_other.instance_id),
            "{{.Image}}"
        ),
        other_id,
        "the instance runs the image it was prepared with"
    );
}

#[test]
fn psql_and_pgbench_run_without_a_host_client() {
    let sb = Sandbox::docker(Backend::Copy);
    sb.write_chain();
    sb.write("q.sql", "select 'items=' || count(*) from item;\n");
    sb.write("bench.sql", "select count(*) from item;\n");
    sb.write("zero.sql", "select 1;\nselect 1/0;\n");
    let p = sb.prepare(&CHAIN);
    let id = p.instance_id.as_str();
    let empty_bin = sb.root().join("empty-bin");
    std::fs::create_dir_all(&empty_bin).unwrap();
    let without_client = |args: &[&str]| {
        let mut cmd = sb.sqlrs_command(args);
        cmd.env("PATH", &empty_bin)
            .env("SQLRS_PSQL", "/nonexistent/psql")
            .env("SQLRS_PGBENCH", "/nonexistent/pgbench");
        sqlrs_e2e::run(cmd, Duration::from_secs(300))
    };

    // (sqlrs arguments, exit code, in stdout, in stderr): psql's own codes,
    // 3 for an error in a file under ON_ERROR_STOP, 1 for a failed -c.
    let cases: [(&[&str], i32, &str, &str); 7] = [
        (
            &["run:psql", "--instance", id, "--", "-c", "select 42"],
            0,
            "42",
            "",
        ),
        (
            &["run:psql", "--instance", id, "--", "-f", "q.sql"],
            0,
            "items=2",
            "",
        ),
        (
            &[
                "run:psql",
                "--instance",
                id,
                "--",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                "zero.sql",
            ],
            3,
            "",
            "division by zero",
        ),
        (
            &[
                "run:psql",
                "--instance",
                id,
                "--",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "select 1/0",
            ],
            1,
            "",
            "division by zero",
        ),
        (
            &[
                "run:psql",
                "--instance",
                id,
                "--",
                "-c",
                "select * from nope",
            ],
            1,
            "",
            "nope",
        ),
        (
            &[
                "prepare:psql",
                "--",
                "-f",
                "schema.sql",
                "-f",
                "seed.sql",
                "run:psql",
                "--",
                "-f",
                "q.sql",
            ],
            0,
            "items=2",
            "",
        ),
        (
            &[
                "run:pgbench",
                "--instance",
                id,
                "--",
                "-n",
                "-t",
                "3",
                "-f",
                "bench.sql",
            ],
            0,
            "number of transactions actually processed: 3",
            "",
        ),
    ];
    for (args, code, stdout, stderr) in cases {
        let out = without_client(args);
        assert_eq!(out.code, Some(code), "{}", sb.explain(&out));
        assert!(
            out.stdout.contains(stdout) && out.stderr.contains(stderr),
            "{out}"
        );
    }
    assert_eq!(
        sb.instance_ids(),
        vec![p.instance_id.clone()],
        "the composite removed its own instance only"
    );
}

/// Output reaches the terminal while psql still runs, not when it ends.
#[test]
fn container_output_is_streamed() {
    let sb = Sandbox::docker(Backend::Copy);
    sb.write_chain();
    let p = sb.prepare(&CHAIN);
    let mut cmd = sb.sqlrs_command(&[
        "run:psql",
        "--instance",
        &p.instance_id,
        "--",
        "-At",
        "-c",
        "select 'first'",
        "-c",
        "select pg_sleep(3)",
        "-c",
        "select 'last'",
    ]);
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let lines: Vec<(String, Duration)> = stdout
        .lines()
        .map(|l| (l.unwrap(), started.elapsed()))
        .collect();
    let status = child.wait().unwrap();
    let ended = started.elapsed();
    assert!(status.success(), "{status}: {lines:?}");
    let at = |text: &str| {
        lines
            .iter()
            .find(|(l, _)| l == text)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("no line {text:?} in {lines:?}"))
    };
    assert!(
        ended - at("first") >= Duration::from_secs(2),
        "`first` came {:?} after the start but only {:?} before the end: buffered",
        at("first"),
        ended - at("first")
    );
    assert!(
        at("last") >= at("first") + Duration::from_secs(2),
        "{lines:?}"
    );
}

#[test]
fn unreachable_docker_is_reported() {
    const BAD_HOST: &str = "unix:///nonexistent.sock";
    let sb = Sandbox::new(Backend::Copy);
    sb.write_chain();
    sb.set_config(&format!(
        "runtime:\n  kind: docker\n  docker:\n    host: {BAD_HOST}\n    image: sqlrs/postgres:15\n"
    ));
    let mut args = vec!["prepare:psql", "--"];
    args.extend(CHAIN);
    // With backtraces on, as CI runs: the reason must still reach the tail of
    // the daemon's log that the CLI shows.
    let mut cmd = sb.sqlrs_command(&args);
    cmd.env("RUST_BACKTRACE", "1");
    let failed = sqlrs_e2e::run(cmd, Duration::from_secs(120));
    let text = failed.text();
    assert!(
        !failed.success()
            && failed.code.is_some()
            && text.contains(BAD_HOST)
            && text.contains("DOCKER_HOST")
            && text.contains("runtime.docker.host"),
        "the error names the Docker host, DOCKER_HOST and the config key:\n{}",
        sb.explain(&failed)
    );

    assert!(
        !sb.sqlrs(&["daemon", "status"]).success(),
        "sqlrsd refuses to start without its configured Docker"
    );

    sb.set_config(&format!(
        "runtime:\n  kind: auto\n  docker:\n    host: {BAD_HOST}\n"
    ));
    let status = sb.json(&["status"]);
    assert_eq!(
        find_str(&status, "runtime"),
        Some(Runtime::Native.name()),
        "{status:#}"
    );
    let reason = find_str(&status, "runtime_reason").unwrap_or_default();
    assert!(
        reason.contains("Docker") && reason.contains(BAD_HOST),
        "the reason says Docker is unusable at {BAD_HOST}: {reason}"
    );
    let p = sb.prepare(&CHAIN);
    assert_eq!(
        field(&listed_instance(&sb, &p.instance_id), "runtime"),
        "native"
    );
}
