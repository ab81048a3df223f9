//! `prepare:psql`, `prepare NAME`, `plan:psql`, `plan NAME` and `watch`:
//! building the request, starting the job and following it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use sqlrs_proto::alias::{self, AliasRole};
use sqlrs_proto::client::Client;
use sqlrs_proto::pb::{JobRef, PlanReply, PrepareRequest};

use crate::argv::reads_stdin;
use crate::cli::{Ctx, InstanceArgs};
use crate::daemon;
use crate::error::{CliError, exit, reply};
use crate::job::{self, OnInterrupt, Outcome};
use crate::render;

/// Where a prepare's steps come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// psql arguments given on the command line.
    Psql(Vec<String>),
    /// Liquibase arguments given on the command line (`update --changelog-file …`).
    Lb(Vec<String>),
    /// The name (or path) of a `NAME.prep.s9s.yaml` alias file.
    Alias(String),
}

/// What to prepare: where the steps come from and which engine runs them.
#[derive(Debug, Clone)]
pub struct Spec {
    pub source: Source,
    /// Docker image of the engine (`--image`); None: the alias file's
    /// `image:`, else the configured runtime.
    pub image: Option<String>,
    /// The instance's name and time to live (none for a plan).
    pub instance: InstanceArgs,
}

/// The request for `spec`, run from `cwd`; reads stdin when a script comes from it.
fn request(spec: &Spec, cwd: &Path) -> anyhow::Result<PrepareRequest> {
    let image = match spec.image.as_deref().map(str::trim) {
        Some("") => {
            return Err(CliError::Usage(
                "--image needs an image name, e.g. `--image postgres:17`".into(),
            )
            .into());
        }
        image => image.unwrap_or_default().to_owned(),
    };
    let (kind, args, alias_path) = match &spec.source {
        Source::Psql(args) => ("psql".to_owned(), args.clone(), None),
        Source::Lb(args) => ("lb".to_owned(), args.clone(), None),
        Source::Alias(name) => {
            let path = alias::find(cwd, name, AliasRole::Prepare)?;
            let alias = alias::load(&path)?;
            (alias.kind, alias.args, Some(path))
        }
    };
    let stdin = if kind == "psql" && reads_stdin(&args) {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read the script for `-f -` from stdin")?;
        bytes
    } else {
        Vec::new()
    };
    Ok(PrepareRequest {
        kind,
        // With an alias the daemon reads kind and args from the file.
        args: if alias_path.is_some() {
            Vec::new()
        } else {
            args
        },
        cwd: cwd.to_string_lossy().into_owned(),
        stdin,
        alias_path: alias_path
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        image,
        name: spec.instance.name.clone().unwrap_or_default(),
        keep: spec.instance.keep,
        ttl_ms: spec
            .instance
            .ttl
            .map_or(0, |ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
    })
}

fn current_dir() -> anyhow::Result<PathBuf> {
    std::env::current_dir().context("cannot read the current directory")
}

/// Starts a prepare job and follows it to its end.
pub async fn start(client: &mut Client, ctx: Ctx, spec: &Spec) -> anyhow::Result<Outcome> {
    let request = request(spec, &current_dir()?)?;
    let stream = reply(client.prepare(request).await)?;
    match job::follow(client, stream, ctx, OnInterrupt::Ask).await? {
        Outcome::Built { job_id } => anyhow::bail!(
            "sqlrsd reported prepare job {job_id} done without an instance; \
             `sqlrs ls --jobs` shows the job, `sqlrs ls` the instances"
        ),
        outcome => Ok(outcome),
    }
}

pub async fn prepare(ctx: Ctx, spec: &Spec) -> anyhow::Result<u8> {
    let mut conn = daemon::connect(true).await?;
    let outcome = start(&mut conn.client, ctx, spec).await?;
    job::report(ctx, &outcome)
}

pub async fn watch(ctx: Ctx, job_id: &str) -> anyhow::Result<u8> {
    let mut conn = daemon::connect(true).await?;
    let request = JobRef {
        job_id: job_id.to_owned(),
    };
    let stream = reply(conn.client.watch_job(request).await)?;
    let outcome = job::follow(&mut conn.client, stream, ctx, OnInterrupt::Detach).await?;
    job::report(ctx, &outcome)
}

pub async fn plan(ctx: Ctx, spec: &Spec) -> anyhow::Result<u8> {
    let request = request(spec, &current_dir()?)?;
    let mut conn = daemon::connect(true).await?;
    let plan = reply(conn.client.plan(request).await)?;
    if ctx.json() {
        render::print_json(&PlanView::from(&plan))?;
    } else {
        ctx.progress(format_args!(
            "{} (base {})",
            plan.engine,
            render::short(&plan.base_id, render::SHORT_ID)
        ));
        println!("{}", plan_table(&plan));
    }
    Ok(exit::OK)
}

fn plan_table(plan: &PlanReply) -> String {
    render::table(
        ["STEP", "STATE", "CACHED", "SUMMARY"],
        plan.steps.iter().map(|s| {
            [
                s.index.to_string(),
                render::short(&s.state_id, render::SHORT_ID).to_owned(),
                if s.cached { "yes" } else { "no" }.to_owned(),
                s.summary.clone(),
            ]
        }),
    )
}

/// A plan for JSON output.
#[derive(Debug, Serialize)]
struct PlanView {
    base_id: String,
    engine: String,
    steps: Vec<PlanStepView>,
}

#[derive(Debug, Serialize)]
struct PlanStepView {
    index: u32,
    state_id: String,
    summary: String,
    cached: bool,
    inputs: Vec<String>,
}

impl From<&PlanReply> for PlanView {
    fn from(p: &PlanReply) -> Self {
        PlanView {
            base_id: p.base_id.clone(),
            engine: p.engine.clone(),
            steps: p
                .steps
                .iter()
                .map(|s| PlanStepView {
                    index: s.index,
                    state_id: s.state_id.clone(),
                    summary: s.summary.clone(),
                    cached: s.cached,
                    inputs: s.inputs.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlrs_proto::pb::PlanStep;

    fn sample() -> PlanReply {
        PlanReply {
            base_id: "ba5e".into(),
            engine: "PostgreSQL 15.18".into(),
            steps: vec![
                PlanStep {
                    index: 1,
                    state_id: "0123456789abcdef0123".into(),
                    summary: "-f schema.sql".into(),
                    cached: true,
                    inputs: vec!["schema.sql".into(), "types.sql".into()],
                },
                PlanStep {
                    index: 2,
                    state_id: "fedcba9876543210fedc".into(),
                    summary: "-f seed.sql".into(),
                    cached: false,
                    inputs: vec!["seed.sql".into()],
                },
            ],
        }
    }

    #[test]
    fn plan_rendering() {
        assert_eq!(
            plan_table(&sample()),
            "STEP  STATE         CACHED  SUMMARY\n\
             1     0123456789ab  yes     -f schema.sql\n\
             2     fedcba987654  no      -f seed.sql"
        );
        assert_eq!(
            serde_json::to_value(PlanView::from(&sample())).unwrap(),
            serde_json::json!({
                "base_id": "ba5e",
                "engine": "PostgreSQL 15.18",
                "steps": [
                    {"index": 1, "state_id": "0123456789abcdef0123", "summary": "-f schema.sql", "cached": true, "inputs": ["schema.sql", "types.sql"]},
                    {"index": 2, "state_id": "fedcba9876543210fedc", "summary": "-f seed.sql", "cached": false, "inputs": ["seed.sql"]},
                ],
            })
        );
    }

    #[test]
    fn requests() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(
            dir.join("db.prep.s9s.yaml"),
            "kind: psql\nargs: [-f, schema.sql]\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("bad.prep.s9s.yaml"),
            "kind: pgbench\nargs: [-c, '1']\n",
        )
        .unwrap();

        let spec = |source, image: Option<&str>| Spec {
            source,
            image: image.map(String::from),
            instance: InstanceArgs::default(),
        };
        let psql = request(
            &spec(Source::Psql(vec!["-f".into(), "a.sql".into()]), None),
            dir,
        )
        .unwrap();
        assert_eq!(
            (
                psql.kind.as_str(),
                psql.args.as_slice(),
                psql.cwd.as_str(),
                psql.alias_path.as_str(),
                psql.image.as_str()
            ),
            (
                "psql",
                ["-f".to_owned(), "a.sql".to_owned()].as_slice(),
                dir.to_str().unwrap(),
                "",
                ""
            )
        );
        let imaged = request(
            &spec(
                Source::Psql(vec!["-c".into(), "x".into()]),
                Some("postgres:17"),
            ),
            dir,
        )
        .unwrap();
        assert_eq!(imaged.image, "postgres:17");
        let aliased = request(&spec(Source::Alias("db".into()), Some("pg:16")), dir).unwrap();
        assert_eq!(
            (aliased.alias_path.as_str(), aliased.image.as_str()),
            (dir.join("db.prep.s9s.yaml").to_str().unwrap(), "pg:16")
        );
        assert!(aliased.args.is_empty());
        let err = request(
            &spec(Source::Psql(vec!["-c".into(), "x".into()]), Some(" ")),
            dir,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--image needs an image name"), "{err}");
        let err = request(&spec(Source::Alias("bad".into()), None), dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kind `pgbench` is not a prepare kind"),
            "{err}"
        );
        let err = request(&spec(Source::Alias("none".into()), None), dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.prep.s9s.yaml"), "{err}");
    }

    #[test]
    fn instance_fields() {
        use std::time::Duration;
        let tmp = tempfile::tempdir().unwrap();
        // (--name, --keep, --ttl) and what the request carries.
        let cases = [
            ((None, false, None), ("", false, 0)),
            ((Some("dev"), false, None), ("dev", false, 0)),
            ((Some("dev"), true, None), ("dev", true, 0)),
            (
                (None, false, Some(Duration::from_secs(90))),
                ("", false, 90_000),
            ),
            (
                (Some("ci"), false, Some(Duration::from_millis(1))),
                ("ci", false, 1),
            ),
            (
                (None, false, Some(Duration::from_secs(u64::MAX))),
                ("", false, u64::MAX),
            ),
        ];
        for ((name, keep, ttl), want) in cases {
            let spec = Spec {
                source: Source::Psql(vec!["-c".into(), "select 1".into()]),
                image: None,
                instance: InstanceArgs {
                    name: name.map(String::from),
                    keep,
                    ttl,
                },
            };
            let got = request(&spec, tmp.path()).unwrap();
            assert_eq!(
                (got.name.as_str(), got.keep, got.ttl_ms),
                want,
                "{name:?} {keep} {ttl:?}"
            );
        }
    }
}
