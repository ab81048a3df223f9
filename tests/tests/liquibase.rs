//! `prepare:lb` / `plan:lb` end to end with the real Liquibase: one state per
//! changeset, cache hits that start no JVM, partial reuse after editing the
//! last changeset, failures that keep earlier states, the real procrastinate
//! migrations through `sqlFile`, contexts and parameters in state ids, alias
//! files of kind `lb`, and refused connection options.
//!
//! Every sandbox runs Liquibase through a wrapper that logs each invocation,
//! so a test can count the JVMs a command started.

use std::path::PathBuf;

use sqlrs_e2e::{
    Backend, PlanStep, Prepared, Runtime, Sandbox, copy_tree, field, fixtures_dir, liquibase_bin,
    on_each_target, plan_steps, prepared_from,
};

on_each_target!(changelog_builds_hits_and_replays_the_last_changeset);

#[test]
fn failing_changeset_keeps_earlier_states() {
    let lb = LbSandbox::new(Runtime::Native, Backend::Copy, "broken");
    let out = lb.sb.sqlrs(&lb.args("prepare:lb", &[]));
    assert!(!out.success(), "{}", lb.sb.explain(&out));
    let text = out.text();
    for needle in ["changelog.xml::bad::bob", "missing_table", "changelog.xml"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let plan = lb.plan(&[]);
    assert_eq!(
        plan.iter().map(|s| s.cached).collect::<Vec<_>>(),
        [true, false],
        "the changeset before the failing one stays cached: {plan:?}"
    );
    assert!(
        lb.sb.instance_ids().is_empty(),
        "a failed build leaves no instance"
    );
}

#[test]
fn procrastinate_migrations_one_state_each() {
    let lb = LbSandbox::new(Runtime::Native, Backend::Btrfs, "procrastinate");
    let migrations = std::fs::read_dir(lb.sb.project().join("migrations"))
        .expect("the procrastinate migrations are copied")
        .count();
    let plan = lb.plan(&[]);
    assert_eq!(plan.len(), migrations, "one changeset per migration file");
    let dsn = lb.prepare(&[]).dsn;
    assert_eq!(
        lb.sb
            .query(&dsn, "select count(*) from databasechangelog")
            .parse::<usize>()
            .unwrap(),
        migrations
    );
    assert_eq!(
        lb.sb
            .query(&dsn, "select to_regclass('procrastinate_jobs') is not null"),
        "t"
    );
    let states: Vec<String> = lb.plan(&[]).into_iter().map(|s| s.state_id).collect();
    let mut stored = lb.sb.state_ids();
    stored.retain(|s| states.contains(s));
    assert_eq!(stored.len(), migrations, "every changeset has its state");
}

#[test]
fn contexts_and_parameters_are_part_of_state_ids() {
    let lb = LbSandbox::new(Runtime::Native, Backend::Copy, "mixed");
    let all = lb.plan(&[]);
    let summaries = |p: &[PlanStep]| p.iter().map(|s| s.summary.clone()).collect::<Vec<_>>();
    assert!(
        summaries(&all).contains(&"changelog.xml::sample-orders::alice".to_owned()),
        "{all:?}"
    );
    let prod = lb.plan(&["--contexts", "prod"]);
    assert!(
        !summaries(&prod).contains(&"changelog.xml::sample-orders::alice".to_owned()),
        "a context=test changeset is left out under --contexts prod: {prod:?}"
    );
    // Changelog parameters are part of every changeset's identity (sqlrs
    // cannot tell which changesets a parameter reaches), and the same
    // parameters give the same ids again.
    let usd = lb.plan(&["-Dcurrency=USD"]);
    assert_eq!(usd.len(), all.len());
    for (a, b) in all.iter().zip(&usd) {
        assert_ne!(a.state_id, b.state_id, "{} with -Dcurrency=USD", a.summary);
    }
    assert_eq!(lb.plan(&["-Dcurrency=USD"]), usd);
}

#[test]
fn alias_of_kind_lb_and_connection_options() {
    let lb = LbSandbox::new(Runtime::Native, Backend::Copy, "mixed");
    lb.sb.write(
        "shop.prep.s9s.yaml",
        "kind: lb\nargs: [update, --changelog-file, changelog.xml]\n",
    );
    let raw = lb.sb.json(&["plan", "shop"]);
    let via_alias = plan_steps(&raw);
    assert_eq!(via_alias, lb.plan(&[]), "an lb alias plans like plan:lb");
    // Every file Liquibase reads is some step's input (what watchers watch):
    // changelogs, and the CSV and SQL files changes read.
    let inputs = raw.to_string();
    for file in [
        "changelog.xml",
        "tables/people.yaml",
        "tables/orders.json",
        "data/people.csv",
        "scripts/grant.sql",
        "sql/010_views.sql",
    ] {
        assert!(inputs.contains(file), "{file} is no step's input: {raw:#}");
    }
    for option in ["--url=jdbc:postgresql://elsewhere/db", "--username=me"] {
        let out = lb.sb.sqlrs(&lb.args("plan:lb", &[option]));
        assert!(!out.success(), "{option} was accepted:\n{out}");
        assert!(
            out.text()
                .contains("sqlrs supplies the database connection itself"),
            "{option}:\n{out}"
        );
    }
    let status = lb.sb.json(&["status"]);
    assert!(
        field(&status, "liquibase").starts_with("Liquibase 4."),
        "status names the Liquibase found: {status:#}"
    );
}

fn changelog_builds_hits_and_replays_the_last_changeset(runtime: Runtime, backend: Backend) {
    let lb = LbSandbox::new(runtime, backend, "mixed");
    let plan = lb.plan(&[]);
    assert!(plan.len() >= 5, "{plan:?}");
    assert!(plan.iter().all(|s| !s.cached), "{plan:?}");
    let dsn = lb.prepare(&[]).dsn;
    assert_eq!(
        lb.sb.query(
            &dsn,
            "select string_agg(id, ',' order by orderexecuted) from databasechangelog"
        ),
        plan.iter()
            .map(|s| s.summary.split("::").nth(1).unwrap())
            .collect::<Vec<_>>()
            .join(","),
        "the changesets ran in plan order"
    );
    let csv_rows = std::fs::read_to_string(lb.sb.project().join("data/people.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(
        lb.sb.query(&dsn, "select count(*) from shop.people"),
        csv_rows.to_string(),
        "loadData filled the table from the CSV"
    );
    let runs = lb.runs();
    assert_eq!(count(&runs, "update-count"), plan.len(), "{runs:#?}");

    // A cache hit: every changeset cached, no JVM at all.
    let second = lb.prepare(&[]);
    assert_ne!(second.dsn, dsn);
    let tasks = lb
        .sb
        .step_tasks(second.job_id.as_deref().expect("a job id"));
    assert_eq!(tasks.len(), plan.len());
    assert!(tasks.iter().all(|(_, cached)| *cached), "{tasks:?}");
    assert_eq!(lb.runs(), runs, "a cache hit started Liquibase");

    // Editing the file only the last changeset reads replays that one alone.
    let last = lb.sb.project().join("scripts/grant.sql");
    let mut text = std::fs::read_to_string(&last).unwrap();
    text.push_str("\n-- edited\n");
    std::fs::write(&last, text).unwrap();
    let third = lb.prepare(&[]);
    let tasks = lb.sb.step_tasks(third.job_id.as_deref().expect("a job id"));
    let cached: Vec<bool> = tasks.iter().map(|(_, c)| *c).collect();
    let mut want = vec![true; plan.len()];
    *want.last_mut().unwrap() = false;
    assert_eq!(cached, want, "only the last changeset runs again");
    for (k, (id, _)) in tasks.iter().enumerate().take(plan.len() - 1) {
        assert_eq!(id, &plan[k].state_id, "step {} kept its state", k + 1);
    }
    let new_runs = lb.runs()[runs.len()..].to_vec();
    assert_eq!(count(&new_runs, "update-count"), 1, "{new_runs:#?}");
    assert_eq!(count(&new_runs, "update-sql"), 1, "{new_runs:#?}");
    let dsn = third.dsn;
    assert_eq!(
        lb.sb
            .query(&dsn, "select count(*) from databasechangelog")
            .parse::<usize>()
            .unwrap(),
        plan.len()
    );
}

/// A sandbox with a Liquibase fixture in its project and Liquibase behind a
/// logging wrapper named in its config.
struct LbSandbox {
    sb: Sandbox,
    log: PathBuf,
}

impl LbSandbox {
    fn new(runtime: Runtime, backend: Backend, fixture: &str) -> Self {
        let real = liquibase_bin().unwrap_or_else(|e| panic!("{e}"));
        let sb = Sandbox::on(runtime, backend);
        copy_tree(
            &fixtures_dir().join("liquibase").join(fixture),
            sb.project(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let log = sb.root().join("liquibase-runs.log");
        let wrapper = sb.root().join("liquibase");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
                log.display(),
                real.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let config = std::fs::read_to_string(sb.config_path()).unwrap();
        sb.set_config(&format!(
            "{config}liquibase:\n  exec: {}\n",
            wrapper.display()
        ));
        LbSandbox { sb, log }
    }

    fn args<'a>(&self, command: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![command, "--", "update", "--changelog-file", "changelog.xml"];
        args.extend_from_slice(extra);
        args
    }

    fn plan(&self, extra: &[&str]) -> Vec<PlanStep> {
        plan_steps(&self.sb.json(&self.args("plan:lb", extra)))
    }

    fn prepare(&self, extra: &[&str]) -> Prepared {
        prepared_from(self.sb.json(&self.args("prepare:lb", extra)))
    }

    /// Every Liquibase command line run so far, `--version` probes left out.
    fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("--version"))
            .map(str::to_owned)
            .collect()
    }
}

fn count(runs: &[String], command: &str) -> usize {
    runs.iter()
        .filter(|l| l.split_whitespace().any(|w| w == command))
        .count()
}
