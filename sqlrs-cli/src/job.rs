//! Following a job's event stream: progress lines on stderr, Ctrl-C (cancel
//! or detach), and reporting how the job ended.

use std::io::{BufRead, IsTerminal};
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use sqlrs_proto::client::Client;
use sqlrs_proto::pb::job_event::Event;
use sqlrs_proto::pb::{Instance, JobError, JobEvent, JobRef, StepEvent};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::oneshot;
use tokio::time::Sleep;
use tonic::Streaming;

use crate::cli::Ctx;
use crate::error::{CliError, exit, reply};
use crate::render;

/// How long a cancelled job may take to say it stopped.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// Hex characters of a state id shown in progress lines.
const PROGRESS_ID: usize = 8;

/// What Ctrl-C means while following a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Ask on the terminal whether to cancel the job or detach from it
    /// (cancel when there is no terminal to ask on).
    Ask,
    /// Stop following; the job keeps running.
    Detach,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    Cancel,
    Detach,
}

/// How following a job ended.
#[derive(Debug)]
pub enum Outcome {
    Succeeded {
        job_id: String,
        instance: Instance,
    },
    /// The job built its states and hands out no instance (a prebuild).
    Built {
        job_id: String,
    },
    Failed {
        job_id: String,
        error: JobError,
    },
    Cancelled {
        job_id: String,
    },
    Detached {
        job_id: String,
    },
}

/// Follows `stream` to the job's end, drawing progress unless quiet.
pub async fn follow(
    client: &mut Client,
    mut stream: Streaming<JobEvent>,
    ctx: Ctx,
    on_interrupt: OnInterrupt,
) -> anyhow::Result<Outcome> {
    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut job_id = String::new();
    let mut first_at_ms = None;
    // Set once the job was asked to stop: how long to wait for it to say so.
    let mut stopping: Option<Pin<Box<Sleep>>> = None;
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(event) = message.map_err(CliError::Daemon)? else {
                    if stopping.is_some() {
                        return Ok(Outcome::Cancelled { job_id });
                    }
                    anyhow::bail!(
                        "sqlrsd ended the event stream of job {job_id} before the job finished; \
                         `sqlrs watch {job_id}` re-attaches, `sqlrs ls --jobs` shows its status"
                    );
                };
                if job_id.is_empty() {
                    job_id.clone_from(&event.job_id);
                }
                let since = event.at_ms.saturating_sub(*first_at_ms.get_or_insert(event.at_ms));
                if let Some(line) = progress_line(&event, since) {
                    ctx.progress(line);
                }
                match event.event {
                    Some(Event::Succeeded(done)) => {
                        return Ok(match done.instance {
                            Some(instance) => Outcome::Succeeded { job_id, instance },
                            None => Outcome::Built { job_id },
                        });
                    }
                    Some(Event::Failed(error)) => return Ok(Outcome::Failed { job_id, error }),
                    Some(Event::Cancelled(_)) => return Ok(Outcome::Cancelled { job_id }),
                    _ => {}
                }
            }
            () = async { stopping.as_mut().expect("guarded").await }, if stopping.is_some() => {
                ctx.progress(format_args!(
                    "job {job_id} is still stopping; `sqlrs ls --jobs` shows when it has"
                ));
                return Ok(Outcome::Cancelled { job_id });
            }
            _ = interrupts.recv() => {
                let choice = match on_interrupt {
                    // A second Ctrl-C while the job stops: stop waiting.
                    _ if stopping.is_some() => return Ok(Outcome::Cancelled { job_id }),
                    OnInterrupt::Detach => Choice::Detach,
                    // Before the first event there is no job to detach from.
                    OnInterrupt::Ask if job_id.is_empty() => Choice::Cancel,
                    OnInterrupt::Ask => ask(&mut interrupts).await,
                };
                match choice {
                    Choice::Detach => return Ok(Outcome::Detached { job_id }),
                    Choice::Cancel if job_id.is_empty() => return Ok(Outcome::Cancelled { job_id }),
                    Choice::Cancel => {
                        let request = JobRef { job_id: job_id.clone() };
                        let cancelled = reply(client.cancel_job(request).await)?;
                        if !cancelled.cancelled {
                            ctx.progress(format_args!("job {job_id} is already {}", cancelled.status));
                        }
                        ctx.progress(format_args!("cancelling job {job_id}…"));
                        // Follow on until the job says how it ended, so that
                        // what `sqlrs ls` shows next is settled.
                        stopping = Some(Box::pin(tokio::time::sleep(CANCEL_WAIT)));
                    }
                }
            }
        }
    }
}

/// Asks on the terminal; a second Ctrl-C, end of input or no terminal at all cancels.
async fn ask(interrupts: &mut Signal) -> Choice {
    if !std::io::stdin().is_terminal() {
        return Choice::Cancel;
    }
    eprint!("\ncancel the job [c] or detach [d]? ");
    loop {
        let (tx, rx) = oneshot::channel();
        // A plain thread: it must not hold up the exit if the answer never comes.
        std::thread::spawn(move || {
            let _ = tx.send(read_terminal_line());
        });
        tokio::select! {
            line = rx => match line.ok().flatten() {
                None => return Choice::Cancel,
                Some(line) => match parse_choice(&line) {
                    Some(choice) => return choice,
                    None => eprint!("please answer c (cancel the job) or d (detach, it keeps running): "),
                },
            },
            _ = interrupts.recv() => {
                eprintln!();
                return Choice::Cancel;
            }
        }
    }
}

/// One line from the controlling terminal (stdin when there is none); None at end of input.
fn read_terminal_line() -> Option<String> {
    let mut line = String::new();
    let read = match std::fs::File::open("/dev/tty") {
        Ok(tty) => std::io::BufReader::new(tty).read_line(&mut line),
        Err(_) => std::io::stdin().lock().read_line(&mut line),
    };
    match read {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line),
    }
}

fn parse_choice(answer: &str) -> Option<Choice> {
    match answer.trim().to_ascii_lowercase().as_str() {
        "c" | "cancel" => Some(Choice::Cancel),
        "d" | "detach" => Some(Choice::Detach),
        _ => None,
    }
}

/// The stderr line for one event, if it has one; `since_ms` is the time since
/// the first event seen.
pub fn progress_line(event: &JobEvent, since_ms: u64) -> Option<String> {
    match event.event.as_ref()? {
        Event::Planned(planned) => {
            let plan = planned.plan.as_ref()?;
            let cached = plan.steps.iter().filter(|s| s.cached).count();
            Some(format!(
                "job {}: {} steps, {cached} cached ({})",
                render::short(&event.job_id, render::SHORT_ID),
                plan.steps.len(),
                plan.engine
            ))
        }
        Event::Step(step) => Some(step_line(step)),
        Event::Log(log) => Some(format!("      {}", log.text.trim_end())),
        Event::Succeeded(done) => Some(match &done.instance {
            Some(instance) => format!(
                "instance {}{} ready ({}{})",
                render::short(&instance.id, render::SHORT_ID),
                match instance.name.as_str() {
                    "" => String::new(),
                    name => format!(" ({name})"),
                },
                render::duration(since_ms),
                if instance.from_pool {
                    ", from the warm pool"
                } else {
                    ""
                }
            ),
            None => format!("states built ({})", render::duration(since_ms)),
        }),
        Event::Failed(_) => None,
        Event::Cancelled(_) => Some(format!("job {} cancelled", event.job_id)),
    }
}

fn step_line(step: &StepEvent) -> String {
    let at = format!("[{}/{}]", step.index, step.total);
    let state = render::short(&step.state_id, PROGRESS_ID);
    let elapsed = render::duration(step.elapsed_ms);
    match step.status.as_str() {
        "cached" => format!("{at} cached  {}  (state {state})", step.summary),
        "running" => format!("{at} running {} ...", step.summary),
        "succeeded" => format!("{at} done {elapsed}"),
        "failed" => format!("{at} failed after {elapsed}"),
        "cancelled" => format!("{at} cancelled after {elapsed}"),
        other => format!("{at} {other} {}", step.summary),
    }
}

/// `error: <file>:<line>: <message>`, leaving out what the error lacks.
pub fn error_line(error: &JobError) -> String {
    format!("error: {}", ErrorItem::from(error).located())
}

/// A job error for JSON output.
#[derive(Debug, Serialize, PartialEq)]
pub struct ErrorItem {
    pub reason: String,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub step: Option<u32>,
}

impl ErrorItem {
    /// `<file>:<line>: <message>`, leaving out what the error lacks, and
    /// the location once when the message starts with it already (the
    /// planner's messages do).
    pub fn located(&self) -> String {
        let at = match (&self.file, self.line) {
            (None, _) => return self.message.clone(),
            (Some(file), None) => format!("{file}: "),
            (Some(file), Some(line)) => format!("{file}:{line}: "),
        };
        if self.message.starts_with(&at) {
            self.message.clone()
        } else {
            format!("{at}{}", self.message)
        }
    }
}

impl From<&JobError> for ErrorItem {
    fn from(e: &JobError) -> Self {
        ErrorItem {
            reason: e.reason.clone(),
            message: e.message.clone(),
            file: (!e.file.is_empty()).then(|| e.file.clone()),
            line: (e.line != 0).then_some(e.line),
            step: (e.step != 0).then_some(e.step),
        }
    }
}

/// The result of a prepare on stdout.
#[derive(Debug, Serialize, PartialEq)]
pub struct Prepared {
    pub job_id: String,
    pub instance_id: String,
    pub state_id: String,
    pub dsn: String,
    /// The stable name bound with `--name`.
    pub name: Option<String>,
    /// When the instance expires; None: never.
    pub expires_at_ms: Option<u64>,
    /// Open connections; None when unknown.
    pub connections: Option<u32>,
    /// Whether the instance came ready-started from the warm pool.
    pub from_pool: bool,
    /// When its server was started.
    pub started_at_ms: Option<u64>,
}

impl Prepared {
    fn new(job_id: &str, i: &Instance) -> Self {
        Prepared {
            job_id: job_id.to_owned(),
            instance_id: i.id.clone(),
            state_id: i.state_id.clone(),
            dsn: i.dsn.clone(),
            name: render::some_text(&i.name),
            expires_at_ms: render::some_time(i.expires_at_ms),
            connections: u32::try_from(i.connections).ok(),
            from_pool: i.from_pool,
            started_at_ms: render::some_time(i.started_at_ms),
        }
    }
}

/// How a followed job ended without handing out an instance.
#[derive(Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum NoInstance<'a> {
    /// A prebuild job built its states.
    Built {
        job_id: &'a str,
    },
    Failed {
        job_id: &'a str,
        error: ErrorItem,
    },
    Cancelled {
        job_id: &'a str,
    },
    Detached {
        job_id: &'a str,
    },
}

/// Prints the outcome (results on stdout, messages on stderr) and returns the exit code.
pub fn report(ctx: Ctx, outcome: &Outcome) -> anyhow::Result<u8> {
    match outcome {
        Outcome::Succeeded { job_id, instance } => {
            if ctx.json() {
                render::print_json(&Prepared::new(job_id, instance))?;
            } else {
                println!("DSN={}", instance.dsn);
            }
            Ok(exit::OK)
        }
        Outcome::Built { job_id } => {
            if ctx.json() {
                render::print_json(&NoInstance::Built { job_id })?;
            } else {
                println!("job {job_id} succeeded: its states are built (it hands out no instance)");
            }
            Ok(exit::OK)
        }
        Outcome::Failed { job_id, error } => {
            eprintln!("{}", error_line(error));
            if ctx.json() {
                render::print_json(&NoInstance::Failed {
                    job_id,
                    error: error.into(),
                })?;
            }
            Ok(exit::JOB_FAILED)
        }
        Outcome::Cancelled { job_id } => {
            if ctx.json() {
                render::print_json(&NoInstance::Cancelled { job_id })?;
            }
            Ok(exit::CANCELLED)
        }
        Outcome::Detached { job_id } => {
            eprintln!(
                "detached: job {job_id} keeps running; re-attach with `sqlrs watch {job_id}`"
            );
            if ctx.json() {
                render::print_json(&NoInstance::Detached { job_id })?;
            } else {
                println!("JOB={job_id}");
            }
            Ok(exit::OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlrs_proto::pb::{JobCancelled, JobPlanned, JobSucceeded, LogLine, PlanReply, PlanStep};

    fn step(index: u32, status: &str, summary: &str, elapsed_ms: u64) -> Event {
        Event::Step(StepEvent {
            index,
            total: 5,
            status: status.into(),
            state_id: "1a2b3c4d5e6f7a8b".into(),
            summary: summary.into(),
            elapsed_ms,
        })
    }

    #[test]
    fn progress_lines() {
        let plan = PlanReply {
            base_id: "b".into(),
            engine: "PostgreSQL 15.18".into(),
            steps: vec![
                PlanStep {
                    cached: true,
                    ..Default::default()
                },
                PlanStep::default(),
            ],
        };
        let instance = Instance {
            id: "0123456789abcdef".into(),
            ..Default::default()
        };
        let cases: Vec<(Event, Option<&str>)> = vec![
            (
                Event::Planned(JobPlanned { plan: Some(plan) }),
                Some("job 9f8e7d6c5b4a: 2 steps, 1 cached (PostgreSQL 15.18)"),
            ),
            (
                step(2, "cached", "-f schema.sql", 0),
                Some("[2/5] cached  -f schema.sql  (state 1a2b3c4d)"),
            ),
            (
                step(3, "running", "-f seed.sql", 0),
                Some("[3/5] running -f seed.sql ..."),
            ),
            (
                step(3, "succeeded", "-f seed.sql", 1_234),
                Some("[3/5] done 1.2s"),
            ),
            (
                step(4, "failed", "-f bad.sql", 400),
                Some("[4/5] failed after 0.4s"),
            ),
            (
                step(4, "cancelled", "-f x.sql", 2_000),
                Some("[4/5] cancelled after 2.0s"),
            ),
            (
                Event::Log(LogLine {
                    text: "NOTICE:  hi\n".into(),
                }),
                Some("      NOTICE:  hi"),
            ),
            (
                Event::Succeeded(JobSucceeded {
                    instance: Some(instance.clone()),
                }),
                Some("instance 0123456789ab ready (3.5s)"),
            ),
            (
                Event::Succeeded(JobSucceeded {
                    instance: Some(Instance {
                        name: "dev".into(),
                        from_pool: true,
                        ..instance
                    }),
                }),
                Some("instance 0123456789ab (dev) ready (3.5s, from the warm pool)"),
            ),
            (
                Event::Succeeded(JobSucceeded { instance: None }),
                Some("states built (3.5s)"),
            ),
            (Event::Failed(JobError::default()), None),
            (
                Event::Cancelled(JobCancelled {}),
                Some("job 9f8e7d6c5b4a3210 cancelled"),
            ),
        ];
        for (event, want) in cases {
            let event = JobEvent {
                job_id: "9f8e7d6c5b4a3210".into(),
                at_ms: 0,
                event: Some(event),
            };
            assert_eq!(progress_line(&event, 3_500).as_deref(), want, "{event:?}");
        }
    }

    #[test]
    fn error_lines() {
        let error = |file: &str, line| JobError {
            reason: "sql_error".into(),
            message: "syntax error at or near \"selec\"".into(),
            file: file.into(),
            line,
            step: 2,
        };
        let cases = [
            (
                error("seed.sql", 12),
                "error: seed.sql:12: syntax error at or near \"selec\"",
            ),
            (
                error("seed.sql", 0),
                "error: seed.sql: syntax error at or near \"selec\"",
            ),
            (error("", 0), "error: syntax error at or near \"selec\""),
            (
                JobError {
                    message: "a.sql:2: \\i b.sql: cannot read b.sql".into(),
                    ..error("a.sql", 2)
                },
                "error: a.sql:2: \\i b.sql: cannot read b.sql",
            ),
            (
                JobError {
                    message: "a.sql: not UTF-8".into(),
                    ..error("a.sql", 0)
                },
                "error: a.sql: not UTF-8",
            ),
            (
                JobError {
                    message: "a.sql:2: x".into(),
                    ..error("a.sql", 3)
                },
                "error: a.sql:3: a.sql:2: x",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(error_line(&e), want);
        }
    }

    #[test]
    fn choices() {
        let cases = [
            ("c\n", Some(Choice::Cancel)),
            (" Cancel ", Some(Choice::Cancel)),
            ("d\n", Some(Choice::Detach)),
            ("DETACH", Some(Choice::Detach)),
            ("\n", None),
            ("x", None),
        ];
        for (answer, want) in cases {
            assert_eq!(parse_choice(answer), want, "{answer:?}");
        }
    }

    #[test]
    fn json_shapes() {
        let failed = NoInstance::Failed {
            job_id: "j1",
            error: (&JobError {
                reason: "missing_file".into(),
                message: "no such file".into(),
                file: "a.sql".into(),
                line: 0,
                step: 1,
            })
                .into(),
        };
        let cases = [
            (
                serde_json::to_value(failed).unwrap(),
                serde_json::json!({
                    "status": "failed",
                    "job_id": "j1",
                    "error": {"reason": "missing_file", "message": "no such file", "file": "a.sql", "line": null, "step": 1},
                }),
            ),
            (
                serde_json::to_value(NoInstance::Detached { job_id: "j2" }).unwrap(),
                serde_json::json!({"status": "detached", "job_id": "j2"}),
            ),
            (
                serde_json::to_value(NoInstance::Built { job_id: "j3" }).unwrap(),
                serde_json::json!({"status": "built", "job_id": "j3"}),
            ),
            (
                serde_json::to_value(Prepared::new(
                    "j",
                    &Instance {
                        id: "i".into(),
                        state_id: "s".into(),
                        dsn: "postgres://u:p@127.0.0.1:5555/postgres".into(),
                        connections: -1,
                        ..Default::default()
                    },
                ))
                .unwrap(),
                serde_json::json!({
                    "job_id": "j", "instance_id": "i", "state_id": "s",
                    "dsn": "postgres://u:p@127.0.0.1:5555/postgres", "name": null,
                    "expires_at_ms": null, "connections": null, "from_pool": false,
                    "started_at_ms": null,
                }),
            ),
            (
                serde_json::to_value(Prepared::new(
                    "j",
                    &Instance {
                        id: "i".into(),
                        state_id: "s".into(),
                        dsn: "postgres://x".into(),
                        name: "dev".into(),
                        expires_at_ms: 7_200_000,
                        connections: 2,
                        from_pool: true,
                        started_at_ms: 1_000,
                        ..Default::default()
                    },
                ))
                .unwrap(),
                serde_json::json!({
                    "job_id": "j", "instance_id": "i", "state_id": "s", "dsn": "postgres://x",
                    "name": "dev", "expires_at_ms": 7_200_000, "connections": 2,
                    "from_pool": true, "started_at_ms": 1000,
                }),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }
}
