//! Workspaces and alias files: `sqlrs init`, `sqlrs prepare NAME`,
//! `sqlrs run NAME` and their composite, paths relative to the alias file.

use sqlrs_e2e::{Backend, Runtime, SCHEMA_SQL, SEED_SQL, Sandbox, on_each_target, prepared_from};

on_each_target!(aliases_prepare_and_run);

fn aliases_prepare_and_run(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    sb.sqlrs_ok(&["init"]);
    assert!(sb.project().join(".sqlrs").is_dir(), "init creates .sqlrs/");

    sb.write("db/schema.sql", SCHEMA_SQL);
    sb.write("db/seed.sql", SEED_SQL);
    sb.write(
        "base.prep.s9s.yaml",
        "kind: psql\nargs: [-f, db/schema.sql, -f, db/seed.sql]\n",
    );
    sb.write(
        "checks/count.sql",
        "select 'items=' || count(*) from item;\n",
    );
    sb.write(
        "count.run.s9s.yaml",
        "kind: psql\nargs: [-f, checks/count.sql]\n",
    );
    sb.write(
        "broken.prep.s9s.yaml",
        "kind: nope\nargs: [-f, db/schema.sql]\n",
    );
    sb.write("app/sub/.keep", "");
    let sub = sb.project().join("app/sub");

    // Found from a subfolder (up to the workspace root); paths are relative to the alias file.
    let prepared = prepared_from(sb.json_in(&sub, &["prepare", "base"]));
    let direct = sb.plan(&["-f", "db/schema.sql", "-f", "db/seed.sql"]);
    assert_eq!(
        prepared.state_id, direct[1].state_id,
        "an alias plans what its args say"
    );
    assert_eq!(sb.query(&prepared.dsn, "select count(*) from item"), "2");

    let run = sb.sqlrs_in(&sub, &["run", "count", "--instance", &prepared.instance_id]);
    assert_eq!(run.code, Some(0), "{}", sb.explain(&run));
    assert!(run.stdout.contains("items=2"), "{run}");

    let composite = sb.sqlrs_in(&sub, &["prepare", "base", "run", "count"]);
    assert_eq!(composite.code, Some(0), "{}", sb.explain(&composite));
    assert!(composite.stdout.contains("items=2"), "{composite}");
    assert_eq!(
        sb.instance_ids(),
        vec![prepared.instance_id.clone()],
        "the composite removes its own instance only"
    );

    let broken = sb.sqlrs(&["prepare", "broken"]);
    assert!(
        !broken.success() && broken.text().contains("broken.prep.s9s.yaml"),
        "a malformed alias names its file:\n{broken}"
    );
    let missing = sb.sqlrs(&["prepare", "absent"]);
    assert!(
        !missing.success() && missing.text().contains("absent.prep.s9s.yaml"),
        "a missing alias names the file it looked for:\n{missing}"
    );
}
