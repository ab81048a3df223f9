//! `run:psql` against an instance (psql's exit code comes back) and the
//! composite `prepare:psql … run:psql …` that removes its instance.

use sqlrs_e2e::{Backend, CHAIN, Runtime, Sandbox, on_each_target, prefix};

on_each_target!(run_forwards_psql_exit_codes, composite_removes_its_instance);

fn run_forwards_psql_exit_codes(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    sb.write_chain();
    sb.write("count.sql", "select count(*) from item;\n");
    sb.write("fail.sql", "select 1;\nselect * from no_such_table;\n");
    let instance = sb.prepare(&CHAIN);
    let id = instance.instance_id.as_str();
    // (instance selector, psql arguments, expected exit code, expected stdout)
    let cases: [(&str, &[&str], i32, &str); 5] = [
        (id, &["-f", "count.sql"], 0, "2"),
        (
            prefix(id),
            &["-At", "-c", "select max(v) from item"],
            0,
            "2",
        ),
        (id, &["-v", "ON_ERROR_STOP=1", "-f", "fail.sql"], 3, ""),
        (id, &["-c", "select * from no_such_table"], 1, ""),
        (id, &["-c", "\\q"], 0, ""),
    ];
    for (selector, psql_args, code, stdout) in cases {
        let mut args = vec!["run:psql", "--instance", selector, "--"];
        args.extend_from_slice(psql_args);
        let out = sb.sqlrs(&args);
        assert_eq!(out.code, Some(code), "{}", sb.explain(&out));
        assert!(out.stdout.contains(stdout), "{out}");
        let direct = sb.psql(&instance.dsn, psql_args);
        assert_eq!(direct.code, Some(code), "psql itself exits so: {direct}");
    }
    assert_eq!(
        sb.instance_ids(),
        vec![instance.instance_id.clone()],
        "run:psql keeps the instance"
    );
}

fn composite_removes_its_instance(runtime: Runtime, backend: Backend) {
    let sb = Sandbox::on(runtime, backend);
    sb.write_chain();
    sb.write("test.sql", "select 'items=' || count(*) from item;\n");
    sb.write("failing_test.sql", "select * from no_such_table;\n");
    let cases: [(&str, i32, &str); 2] = [("test.sql", 0, "items=2"), ("failing_test.sql", 3, "")];
    for (test, code, stdout) in cases {
        let mut args = vec!["prepare:psql", "--"];
        args.extend(CHAIN);
        args.extend(["run:psql", "--", "-v", "ON_ERROR_STOP=1", "-f", test]);
        let out = sb.sqlrs(&args);
        assert_eq!(out.code, Some(code), "{}", sb.explain(&out));
        assert!(out.stdout.contains(stdout), "{out}");
        assert!(
            sb.instance_ids().is_empty(),
            "the composite left its instance behind after {test}"
        );
    }
}
