//! Unit tables for the Liquibase module: arguments, changelog reading in
//! every format, path resolution, the closure and its errors, materialised
//! layouts, Liquibase output parsing, DATABASECHANGELOG checks, fingerprints.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::changelog::{self, Format, ItemKind};
use super::cli::{failure, parse_update_sql, parse_version};
use super::closure::{normalize_name, resolve_sibling};
use super::*;

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn lb_args(changelog: &str) -> LbArgs {
    LbArgs {
        changelog_file: changelog.into(),
        ..LbArgs::default()
    }
}

// ---------------------------------------------------------------- arguments

#[test]
fn parse_args_accepts_update_and_its_options() {
    let params = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let cases: Vec<(Vec<&str>, LbArgs)> = vec![
        (
            vec!["update", "--changelog-file", "db/changelog.xml"],
            lb_args("db/changelog.xml"),
        ),
        (
            vec!["update", "--changelog-file=db/changelog.xml"],
            lb_args("db/changelog.xml"),
        ),
        (vec!["--changeLogFile=c.yaml", "update"], lb_args("c.yaml")),
        (
            vec![
                "--search-path=db, shared ,",
                "update",
                "--changelog-file",
                "c.xml",
                "--contexts",
                "dev, test",
                "--labels=v1",
                "-Dschema=app",
                "-Dempty=",
                "-Dschema=app2",
                "--default-schema-name",
                "app",
            ],
            LbArgs {
                changelog_file: "c.xml".into(),
                search_path: vec!["db".into(), "shared".into()],
                contexts: Some("dev, test".into()),
                labels: Some("v1".into()),
                default_schema: Some("app".into()),
                params: params(&[("empty", ""), ("schema", "app2")]),
            },
        ),
        (
            vec![
                "update",
                "--searchPath",
                "a",
                "--label-filter",
                "!old",
                "--context-filter=prod",
                "--changelog_file=x.json",
                "-Da.b=c=d",
            ],
            LbArgs {
                changelog_file: "x.json".into(),
                search_path: vec!["a".into()],
                contexts: Some("prod".into()),
                labels: Some("!old".into()),
                default_schema: None,
                params: params(&[("a.b", "c=d")]),
            },
        ),
    ];
    for (input, want) in cases {
        let got = parse_args(&strings(&input)).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(got, want, "{input:?}");
    }
}

#[test]
fn parse_args_names_the_fix() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "needs the Liquibase command `update`"),
        (
            &["--changelog-file=c.xml"],
            "needs the Liquibase command `update`",
        ),
        (&["rollback", "--changelog-file=c.xml"], "not `rollback`"),
        (&["update-sql"], "not `update-sql`"),
        (&["update"], "needs --changelog-file"),
        (
            &["update", "--changelog-file"],
            "`--changelog-file` needs a value",
        ),
        (
            &["update", "--changelog-file", "--contexts=a"],
            "`--changelog-file` needs a value",
        ),
        (&["update", "--contexts="], "`--contexts` needs a value"),
        (
            &[
                "update",
                "--changelog-file=a.xml",
                "--url=jdbc:postgresql://x/db",
            ],
            "`--url`: sqlrs supplies the database connection itself; remove this option",
        ),
        (
            &["update", "--username", "u"],
            "`--username`: sqlrs supplies",
        ),
        (&["update", "--password=p"], "`--password`: sqlrs supplies"),
        (
            &["--reference-url=x", "update"],
            "`--reference-url`: sqlrs supplies",
        ),
        (
            &["--referenceUsername=x", "update"],
            "`--referenceUsername`: sqlrs supplies",
        ),
        (
            &["--defaults-file=l.properties", "update"],
            "`--defaults-file`: sqlrs supplies",
        ),
        (
            &["--driver=org.postgresql.Driver", "update"],
            "`--driver`: sqlrs supplies",
        ),
        (
            &["--classpath=x.jar", "update"],
            "`--classpath`: sqlrs supplies",
        ),
        (
            &["update", "--log-level=fine"],
            "`--log-level`: unknown or unsupported",
        ),
        (
            &["update", "--count=3"],
            "`--count`: unknown or unsupported",
        ),
        (&["update", "-h"], "`-h`: unknown or unsupported"),
        (
            &["update", "c.xml"],
            "unexpected argument `c.xml` after `update`",
        ),
        (
            &["update", "-Dnovalue"],
            "`-Dnovalue`: a changelog parameter is written -Dname=value",
        ),
        (&["update", "-D=v"], "`-D=v`: a changelog parameter"),
        (
            &["update", "--changelog-file=a.xml", "--changeLogFile=b.xml"],
            "`--changeLogFile` is given twice",
        ),
        (
            &["update", "--labels=a", "--label-filter=b"],
            "`--label-filter` is given twice",
        ),
    ];
    for (input, want) in cases {
        let err = parse_args(&strings(input)).expect_err(&format!("{input:?} must fail"));
        assert!(err.to_string().contains(want), "{input:?}: {err}");
    }
}

#[test]
fn command_options_put_parameters_after_the_command() {
    let args = parse_args(&strings(&[
        "update",
        "--changelog-file=./db/c.xml",
        "--contexts=dev",
        "--labels=v1",
        "-Db=2",
        "-Da=1",
    ]))
    .unwrap();
    assert_eq!(
        args.command_options("db/c.xml"),
        strings(&[
            "--changelog-file=db/c.xml",
            "--contexts=dev",
            "--label-filter=v1",
            "-Da=1",
            "-Db=2",
        ])
    );
}

// ------------------------------------------------------------ path resolution

#[test]
fn names_resolve_like_liquibase() {
    // (including changelog, path, relativeToChangelogFile, name)
    let cases = [
        ("db/changelog.xml", "sub/a.yaml", true, "db/sub/a.yaml"),
        ("db/changelog.xml", "../common/c.xml", true, "common/c.xml"),
        ("db/changelog.xml", "./x.xml", true, "db/x.xml"),
        ("db/up.xml", "../../outside.xml", true, "../outside.xml"),
        ("changelog.xml", "a//b.sql", true, "a/b.sql"),
        ("db/changelog.xml", "/abs/x.xml", true, "abs/x.xml"),
        ("db\\win.xml", "a\\b.xml", true, "a/b.xml"),
        (
            "db/changelog.xml",
            "./common/c2.xml",
            false,
            "common/c2.xml",
        ),
        ("db/changelog.xml", "common//c2.xml", false, "common/c2.xml"),
        ("db/changelog.xml", "/tmp/x.xml", false, "tmp/x.xml"),
        ("db/changelog.xml", "classpath:db/x.xml", false, "db/x.xml"),
        ("db/changelog.xml", "C:\\db\\x.xml", false, "db/x.xml"),
        ("db/changelog.xml", "a/./b.xml", false, "a/b.xml"),
        ("db/changelog.xml", "a/../b.xml", false, "a/../b.xml"),
    ];
    for (current, path, relative, want) in cases {
        let got = if relative {
            resolve_sibling(current, path)
        } else {
            normalize_name(path)
        };
        assert_eq!(got, want, "{current} + {path} (relative: {relative})");
    }
}

// -------------------------------------------------------- changelog formats

fn kinds(format: Format, text: &str) -> Vec<(Option<u32>, ItemKind)> {
    changelog::parse(format, text)
        .unwrap_or_else(|e| panic!("{}: {}", e.line.unwrap_or(0), e.message))
        .items
        .into_iter()
        .map(|i| (i.line, i.kind))
        .collect()
}

fn include(file: &str, relative: bool) -> ItemKind {
    ItemKind::Include {
        file: file.into(),
        relative,
        error_if_missing: true,
    }
}

fn resource(path: &str, relative: bool, changeset: Option<usize>) -> ItemKind {
    ItemKind::Resource {
        path: path.into(),
        relative,
        changeset,
    }
}

#[test]
fn every_format_yields_its_references_in_order() {
    let xml = r#"<?xml version="1.0"?>
<databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog" logicalFilePath="logical/x.xml">
  <property name="dir" value="d &amp; e"/>
  <property file="db.properties" relativeToChangelogFile="true" errorIfMissing="false"/>
  <include file="a.xml" relativeToChangelogFile="true"/>
  <includeAll path="all/" errorIfMissingOrEmpty="false" minDepth="2" maxDepth="3" endsWithFilter=".sql"/>
  <changeSet id="1" author="me">
    <sqlFile path="s.sql" relativeToChangelogFile="TRUE"/>
    <loadData tableName="t" file="${dir}/t.csv"/>
    <insert tableName="t"><column name="c" valueClobFile="c.txt"/></insert>
    <rollback><sqlFile path="undo.sql"/></rollback>
  </changeSet>
  <changeSet id="2" author="me"><createProcedure path="p.sql"/></changeSet>
</databaseChangeLog>
"#;
    assert_eq!(
        kinds(Format::Xml, xml),
        vec![
            (
                Some(3),
                ItemKind::Property {
                    name: "dir".into(),
                    value: "d & e".into(),
                    dbms: None
                }
            ),
            (
                Some(4),
                ItemKind::PropertyFile {
                    file: "db.properties".into(),
                    relative: true,
                    error_if_missing: false
                }
            ),
            (Some(5), include("a.xml", true)),
            (
                Some(6),
                ItemKind::IncludeAll {
                    path: "all/".into(),
                    relative: false,
                    error_if_missing: false,
                    min_depth: 2,
                    max_depth: 3,
                    ends_with: ".sql".into()
                }
            ),
            (Some(8), resource("s.sql", true, Some(0))),
            (Some(9), resource("${dir}/t.csv", false, Some(0))),
            (Some(10), resource("c.txt", true, Some(0))),
            (Some(11), resource("undo.sql", false, Some(0))),
            (Some(13), resource("p.sql", false, Some(1))),
        ]
    );

    let yaml = r#"databaseChangeLog:
  - property:
      name: dir
      value: d
  - include:
      file: a.yaml
      relativeToChangelogFile: true
  - includeAll:
      path: all
  - changeSet:
      id: 1
      author: me
      changes:
        - sqlFile:
            path: s.sql
        - loadData:
            file: t.csv
            relativeToChangelogFile: true
            tableName: t
"#;
    assert_eq!(
        kinds(Format::Yaml, yaml),
        vec![
            (
                Some(3),
                ItemKind::Property {
                    name: "dir".into(),
                    value: "d".into(),
                    dbms: None
                }
            ),
            (Some(6), include("a.yaml", true)),
            (
                Some(9),
                ItemKind::IncludeAll {
                    path: "all".into(),
                    relative: false,
                    error_if_missing: true,
                    min_depth: 1,
                    max_depth: u32::MAX,
                    ends_with: String::new()
                }
            ),
            (Some(15), resource("s.sql", false, Some(0))),
            (Some(17), resource("t.csv", true, Some(0))),
        ]
    );

    let json = r#"{"databaseChangeLog": [
  {"include": {"file": "a.json", "relativeToChangelogFile": true}},
  {"changeSet": {"id": "1", "author": "me", "changes": [
    {"sqlFile": {"path": "s.sql"}}
  ]}}
]}"#;
    assert_eq!(
        kinds(Format::Json, json),
        vec![
            (Some(2), include("a.json", true)),
            (Some(4), resource("s.sql", false, Some(0))),
        ]
    );

    assert!(
        kinds(
            Format::Sql,
            "--liquibase formatted sql\n--changeset a:1\nselect 1;\n"
        )
        .is_empty()
    );
}

#[test]
fn changesets_are_found_with_their_identity() {
    let ids = |format: Format, text: &str| -> Vec<(String, String, Option<String>)> {
        changelog::parse(format, text)
            .unwrap()
            .changesets
            .into_iter()
            .map(|c| (c.id, c.author, c.logical_path))
            .collect()
    };
    let own = |id: &str, author: &str| (id.to_string(), author.to_string(), None);
    assert_eq!(
        ids(
            Format::Xml,
            r#"<databaseChangeLog><changeSet id="a" author="x"/><changeSet id="b" author="y" logicalFilePath="l.xml"><sql>select 1</sql></changeSet></databaseChangeLog>"#
        ),
        vec![
            own("a", "x"),
            ("b".into(), "y".into(), Some("l.xml".into()))
        ]
    );
    assert_eq!(
        ids(
            Format::Yaml,
            "databaseChangeLog:\n  - changeSet:\n      id: 7\n      author: x\n      changes: []\n"
        ),
        vec![own("7", "x")]
    );
    assert_eq!(
        ids(
            Format::Sql,
            "-- Liquibase Formatted SQL\n--changeset x:one\nselect 1;\n-- changeset \"a b\":\"two words\" runOnChange:true\nselect 2;\n--changeset y:3 logicalFilePath:other.sql\n--comment: not a changeset line: --changeset\n"
        ),
        vec![
            own("one", "x"),
            own("two words", "a b"),
            ("3".into(), "y".into(), Some("other.sql".into()))
        ]
    );
    assert_eq!(
        ids(
            Format::Sql,
            "create table raw(id int);\n--changeset x:not-formatted\n"
        ),
        vec![own("raw", "includeAll")]
    );
}

#[test]
fn a_changeset_definition_digest_covers_only_that_changeset() {
    let defs = |text: &str| -> Vec<crate::ids::Digest> {
        changelog::parse(Format::Xml, text)
            .unwrap()
            .changesets
            .into_iter()
            .map(|c| c.definition)
            .collect()
    };
    let base = defs(
        r#"<databaseChangeLog><changeSet id="a" author="x"><sql>select 1</sql></changeSet><changeSet id="b" author="x"><sql>select 2</sql></changeSet></databaseChangeLog>"#,
    );
    let edited = defs(
        r#"<databaseChangeLog><changeSet id="a" author="x"><sql>select 1</sql></changeSet><changeSet id="b" author="x"><preConditions onFail="MARK_RAN"/><sql>select 2</sql></changeSet></databaseChangeLog>"#,
    );
    assert_eq!(base[0], edited[0]);
    assert_ne!(base[1], edited[1]);

    let sql = |text: &str| -> Vec<crate::ids::Digest> {
        changelog::parse(Format::Sql, text)
            .unwrap()
            .changesets
            .into_iter()
            .map(|c| c.definition)
            .collect()
    };
    let a =
        sql("--liquibase formatted sql\n--changeset x:1\nselect 1;\n--changeset x:2\nselect 2;\n");
    let b =
        sql("--liquibase formatted sql\n--changeset x:1\nselect 1;\n--changeset x:2\nselect 3;\n");
    assert_eq!(a[0], b[0]);
    assert_ne!(a[1], b[1]);
}

#[test]
fn syntax_errors_carry_the_line() {
    let cases = [
        (
            Format::Xml,
            "<databaseChangeLog>\n  <changeSet id=\"a\">\n  </databaseChangeLog>\n",
            3,
        ),
        (
            Format::Yaml,
            "databaseChangeLog:\n  - include:\n      file: [a\n",
            4,
        ),
        (
            Format::Json,
            "{\"databaseChangeLog\": [\n  {\"include\": }\n]}",
            2,
        ),
    ];
    for (format, text, line) in cases {
        let err = changelog::parse(format, text).expect_err(text);
        assert_eq!(err.line, Some(line), "{format:?}: {}", err.message);
    }
}

// ----------------------------------------------------------------- closure

/// Writes `files` (path, content) under a fresh temp dir.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    dir
}

const XML_HEAD: &str = r#"<databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog">"#;

fn xml(body: &str) -> String {
    format!("{XML_HEAD}\n{body}\n</databaseChangeLog>\n")
}

fn names(c: &Closure) -> Vec<(&str, FileRole)> {
    c.files.iter().map(|f| (f.name.as_str(), f.role)).collect()
}

#[test]
fn closure_follows_every_kind_of_reference() {
    use FileRole::{Changelog as C, Properties as P, Resource as R};
    let root = xml(r#"<property name="data" value="seed"/>
<property file="db/app.properties"/>
<include file="sub/a.yaml" relativeToChangelogFile="true"/>
<include file="../common/c.json" relativeToChangelogFile="true"/>
<includeAll path="all" relativeToChangelogFile="true"/>
<changeSet id="1" author="me">
  <sqlFile path="${sqldir}/s.sql"/>
  <loadData tableName="t" file="${data}/t.csv" relativeToChangelogFile="true"/>
</changeSet>"#);
    let dir = tree(&[
        ("db/changelog.xml", &root),
        ("db/app.properties", "# settings\nsqldir = scripts\n"),
        (
            "db/sub/a.yaml",
            "databaseChangeLog:\n  - changeSet:\n      id: y\n      author: me\n      changes:\n        - sqlFile:\n            path: y.sql\n            relativeToChangelogFile: true\n",
        ),
        ("db/sub/y.sql", "select 1;"),
        ("common/c.json", r#"{"databaseChangeLog": []}"#),
        (
            "db/all/b.sql",
            "--liquibase formatted sql\n--changeset a:b\nselect 1;\n",
        ),
        ("db/all/a.xml", &xml("")),
        ("db/all/nested/z.json", r#"{"databaseChangeLog": []}"#),
        ("db/all/notes.txt", "not a changelog"),
        ("db/all/c_raw.sql", "select 1;"),
        ("scripts/s.sql", "select 2;"),
        ("db/seed/t.csv", "a\n1\n"),
    ]);
    let c = closure(&lb_args("db/changelog.xml"), dir.path()).unwrap();
    assert_eq!(c.changelog, "db/changelog.xml");
    assert_eq!(
        names(&c),
        vec![
            ("db/changelog.xml", C),
            ("db/app.properties", P),
            ("db/sub/a.yaml", C),
            ("db/sub/y.sql", R),
            ("common/c.json", C),
            ("db/all/a.xml", C),
            ("db/all/b.sql", C),
            ("db/all/c_raw.sql", C),
            ("db/all/nested/z.json", C),
            ("scripts/s.sql", R),
            ("db/seed/t.csv", R),
        ]
    );
    for f in &c.files {
        assert_eq!(f.path, dir.path().join(&f.name), "{}", f.name);
        assert_eq!(
            f.digest,
            crate::ids::Digest::of(&fs::read(&f.path).unwrap())
        );
    }
    assert!(c.absent.is_empty(), "{:?}", c.absent);
}

#[test]
fn closure_follows_the_search_path() {
    let dir = tree(&[
        (
            "proj/db/changelog.xml",
            &xml(
                r#"<include file="shared/lib.xml"/><changeSet id="1" author="a"><sqlFile path="extra.sql"/></changeSet>"#,
            ),
        ),
        ("libs/shared/lib.xml", &xml("")),
        ("libs/extra.sql", "select 1;"),
    ]);
    let mut args = lb_args("changelog.xml");
    args.search_path = vec!["proj/db".into(), "libs".into()];
    let c = closure(&args, dir.path()).unwrap();
    assert_eq!(
        c.files
            .iter()
            .map(|f| (f.name.as_str(), f.path.clone()))
            .collect::<Vec<_>>(),
        vec![
            ("changelog.xml", dir.path().join("proj/db/changelog.xml")),
            ("shared/lib.xml", dir.path().join("libs/shared/lib.xml")),
            ("extra.sql", dir.path().join("libs/extra.sql")),
        ]
    );
}

#[test]
fn include_all_takes_changelogs_in_name_order() {
    let dir = tree(&[
        (
            "c.xml",
            &xml(
                r#"<includeAll path="m/"/><includeAll path="deep" minDepth="2" maxDepth="2"/><includeAll path="f" endsWithFilter="_up.sql"/>"#,
            ),
        ),
        ("m/10_b.sql", "select 1;"),
        ("m/2_a.sql", "select 1;"),
        ("m/A.yaml", "databaseChangeLog: []\n"),
        ("m/a-b.xml", &xml("")),
        ("m/a/b.xml", &xml("")),
        ("m/README.md", "skip"),
        ("deep/top.sql", "select 1;"),
        ("deep/one/mid.sql", "select 1;"),
        ("deep/one/two/low.sql", "select 1;"),
        ("f/1_up.sql", "select 1;"),
        ("f/1_down.sql", "select 1;"),
    ]);
    let c = closure(&lb_args("c.xml"), dir.path()).unwrap();
    let got: Vec<&str> = c.files.iter().map(|f| f.name.as_str()).collect();
    // Java string order: "-" < "/" < digits < upper case < lower case.
    assert_eq!(
        got,
        vec![
            "c.xml",
            "m/10_b.sql",
            "m/2_a.sql",
            "m/A.yaml",
            "m/a-b.xml",
            "m/a/b.xml",
            "deep/one/mid.sql",
            "f/1_up.sql"
        ]
    );
}

#[test]
fn include_all_follows_symbolic_links() {
    let dir = tree(&[
        ("c.xml", &xml(r#"<includeAll path="linked"/>"#)),
        ("real/x.sql", "select 1;"),
        ("real/sub/y.sql", "select 1;"),
    ]);
    std::os::unix::fs::symlink("real", dir.path().join("linked")).unwrap();
    std::os::unix::fs::symlink(".", dir.path().join("real/sub/loop")).unwrap();
    let c = closure(&lb_args("c.xml"), dir.path()).unwrap();
    let got: Vec<&str> = c.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(got, vec!["c.xml", "linked/sub/y.sql", "linked/x.sql"]);
}

/// Files to write, the arguments, and what the error must say.
type ErrorCase<'a> = (Vec<(&'a str, String)>, LbArgs, Vec<&'a str>);

#[test]
fn closure_errors_name_the_file_line_and_fix() {
    let cases: Vec<ErrorCase> = vec![
        (
            vec![],
            lb_args("db/changelog.xml"),
            vec![
                "changelog `db/changelog.xml` was not found in the search path",
                "--search-path",
            ],
        ),
        (
            vec![(
                "c.xml",
                xml("\n<include file=\"missing.xml\" relativeToChangelogFile=\"true\"/>"),
            )],
            lb_args("c.xml"),
            vec![
                "c.xml:3: included changelog `missing.xml` was not found",
                "relativeToChangelogFile",
                "errorIfMissing",
            ],
        ),
        (
            vec![
                ("db/c.xml", xml("<include file=\"other.xml\"/>")),
                ("db/other.xml", xml("")),
            ],
            lb_args("db/c.xml"),
            vec![
                "db/c.xml:2: included changelog `other.xml` was not found",
                "without relativeToChangelogFile",
            ],
        ),
        (
            vec![(
                "c.yaml",
                "databaseChangeLog:\n  - include:\n      file: gone.yaml\n".into(),
            )],
            lb_args("c.yaml"),
            vec!["c.yaml:3: included changelog `gone.yaml` was not found"],
        ),
        (
            vec![("c.xml", xml("<includeAll path=\"nothing/\"/>"))],
            lb_args("c.xml"),
            vec!["c.xml:2: includeAll `nothing/`", "errorIfMissingOrEmpty"],
        ),
        (
            vec![
                ("c.xml", xml("<includeAll path=\"txt/\"/>")),
                ("txt/a.txt", "x".into()),
            ],
            lb_args("c.xml"),
            vec!["includeAll `txt/`", "holds no changelog"],
        ),
        (
            vec![
                ("c.xml", xml("<include file=\"notes.txt\"/>")),
                ("notes.txt", "x".into()),
            ],
            lb_args("c.xml"),
            vec![
                "c.xml:2: cannot include `notes.txt`",
                ".xml, .yaml, .yml, .json or .sql",
            ],
        ),
        (
            vec![("c.txt", "x".into())],
            lb_args("c.txt"),
            vec!["cannot include `c.txt`"],
        ),
        (
            vec![
                ("a.xml", xml("<include file=\"b.xml\"/>")),
                ("b.xml", xml("<include file=\"a.xml\"/>")),
            ],
            lb_args("a.xml"),
            vec!["include cycle a.xml -> b.xml -> a.xml"],
        ),
        (
            vec![(
                "c.xml",
                format!("{XML_HEAD}\n<changeSet id=\"1\">\n</databaseChangeLog>"),
            )],
            lb_args("c.xml"),
            vec!["c.xml:3:", "fix the changelog"],
        ),
        (
            vec![("c.xml", xml("<property file=\"nope.properties\"/>"))],
            lb_args("c.xml"),
            vec!["c.xml:2: property file `nope.properties` was not found"],
        ),
        (
            vec![("one/c.xml", xml("")), ("two/c.xml", xml(""))],
            LbArgs {
                search_path: vec!["one".into(), "two".into()],
                ..lb_args("c.xml")
            },
            vec![
                "`c.xml` is in more than one search-path folder",
                "remove one of the folders",
            ],
        ),
    ];
    for (files, args, wants) in cases {
        let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
        let dir = tree(&files);
        let err = closure(&args, dir.path()).expect_err(&format!("{files:?}"));
        let text = err.to_string();
        for want in wants {
            assert!(text.contains(want), "{files:?}: {text}\n(wanted {want:?})");
        }
        if let Some((file, _)) = err.location() {
            assert!(file.starts_with(dir.path()), "{}", file.display());
        }
    }
}

#[test]
fn optional_and_absent_files_are_recorded_not_fatal() {
    let dir = tree(&[(
        "c.xml",
        xml(r#"<include file="opt.xml" errorIfMissing="false"/>
<includeAll path="none" errorIfMissingOrEmpty="false"/>
<changeSet id="1" author="a" context="later"><sqlFile path="later.sql"/></changeSet>"#)
        .as_str(),
    )]);
    let c = closure(&lb_args("c.xml"), dir.path()).unwrap();
    assert_eq!(
        c.absent,
        vec!["later.sql".to_string(), "opt.xml".to_string()]
    );
    let before = c.digest();
    fs::write(dir.path().join("later.sql"), "select 1;").unwrap();
    let c = closure(&lb_args("c.xml"), dir.path()).unwrap();
    assert_eq!(c.absent, vec!["opt.xml".to_string()]);
    assert_ne!(
        c.digest(),
        before,
        "creating a referenced file changes the plan key"
    );
}

#[test]
fn the_plan_key_follows_contents_and_options_only() {
    let files = [
        (
            "db/c.xml",
            xml(r#"<include file="t.yaml" relativeToChangelogFile="true"/>"#),
        ),
        ("db/t.yaml", "databaseChangeLog: []\n".to_string()),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let a = tree(&files);
    let b = tree(&files);
    let key = |dir: &Path, args: &LbArgs| closure(args, dir).unwrap().digest();
    let args = lb_args("db/c.xml");
    let base = key(a.path(), &args);
    assert_eq!(base, key(b.path(), &args), "another checkout, same key");
    assert_eq!(base, key(a.path(), &lb_args("./db/c.xml")));
    assert_eq!(
        key(
            &a.path().join("db"),
            &LbArgs {
                search_path: vec!["..".into()],
                ..args.clone()
            }
        ),
        base,
        "the search path is not part of the key"
    );
    let variants = [
        LbArgs {
            contexts: Some("dev".into()),
            ..args.clone()
        },
        LbArgs {
            labels: Some("v1".into()),
            ..args.clone()
        },
        LbArgs {
            default_schema: Some("app".into()),
            ..args.clone()
        },
        LbArgs {
            params: [("p".to_string(), "1".to_string())].into(),
            ..args.clone()
        },
    ];
    for v in &variants {
        assert_ne!(key(a.path(), v), base, "{v:?}");
    }
    fs::write(
        a.path().join("db/t.yaml"),
        "databaseChangeLog: [] # edited\n",
    )
    .unwrap();
    assert_ne!(
        key(a.path(), &args),
        base,
        "an edited include changes the key"
    );
}

#[test]
fn materialize_reproduces_the_layout() {
    let dir = tree(&[
        (
            "proj/db/c.xml",
            &xml(
                r#"<include file="../../shared/s.xml" relativeToChangelogFile="true"/><changeSet id="1" author="a"><sqlFile path="x.sql" relativeToChangelogFile="true"/></changeSet>"#,
            ),
        ),
        ("proj/db/x.sql", "select 1;"),
        ("shared/s.xml", &xml("")),
    ]);
    let mut args = lb_args("db/c.xml");
    args.search_path = vec!["proj".into()];
    let c = closure(&args, dir.path()).unwrap();
    assert_eq!(
        c.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        vec!["db/c.xml", "../shared/s.xml", "db/x.sql"]
    );
    let exec = tempfile::tempdir().unwrap();
    let search = materialize(&c, exec.path()).unwrap();
    assert_eq!(
        search,
        exec.path().join("proj"),
        "one folder level for `..`"
    );
    assert_eq!(search, c.search_root(exec.path()));
    for f in &c.files {
        let copy = fs::read(search.join(&f.name)).unwrap();
        assert_eq!(copy, fs::read(&f.path).unwrap(), "{}", f.name);
    }
    assert!(exec.path().join("shared/s.xml").is_file());

    // An edit between planning and copying is caught.
    fs::write(dir.path().join("proj/db/x.sql"), "select 2;").unwrap();
    let again = tempfile::tempdir().unwrap();
    let err = materialize(&c, again.path()).unwrap_err();
    assert!(
        err.to_string().contains("changed while sqlrs was planning"),
        "{err}"
    );
}

#[test]
fn materialize_from_blobs_links_the_stored_copies() {
    let dir = tree(&[
        (
            "c.xml",
            &xml(r#"<changeSet id="1" author="a"><sqlFile path="x.sql"/></changeSet>"#),
        ),
        ("x.sql", "select 1;"),
    ]);
    let c = closure(&lb_args("c.xml"), dir.path()).unwrap();
    let store = tempfile::tempdir().unwrap();
    let blobs = crate::blobs::BlobStore::open(&store.path().join("blobs")).unwrap();
    c.ingest(&blobs).unwrap();
    // What runs is the stored copy, whatever happens to the user's file now.
    fs::write(dir.path().join("x.sql"), "drop table everything;").unwrap();
    let exec = tempfile::tempdir().unwrap();
    let search = materialize_from_blobs(&c, &blobs, exec.path()).unwrap();
    assert_eq!(
        fs::read_to_string(search.join("x.sql")).unwrap(),
        "select 1;"
    );
    // Again into the same folder: the links are replaced, the blobs intact.
    materialize_from_blobs(&c, &blobs, exec.path()).unwrap();
    let x = c.files.iter().find(|f| f.name == "x.sql").unwrap();
    for copy in [search.join("x.sql"), blobs.path_of(&x.digest)] {
        assert_eq!(fs::read_to_string(copy).unwrap(), "select 1;");
    }
    let err = c.ingest(&blobs).unwrap_err();
    assert!(
        err.to_string().contains("changed while sqlrs was planning"),
        "{err}"
    );
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/liquibase")
        .join(name)
}

#[test]
fn the_fixture_changelogs_have_the_expected_closures() {
    let mixed = closure(&lb_args("changelog.xml"), &fixture("mixed")).unwrap();
    assert_eq!(
        names(&mixed).iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![
            "changelog.xml",
            "tables/people.yaml",
            "data/people.csv",
            "tables/orders.json",
            "sql/010_views.sql",
            "sql/020_functions.sql",
            "scripts/grant.sql",
        ]
    );
    let procrastinate = closure(&lb_args("changelog.xml"), &fixture("procrastinate"))
        .unwrap_or_else(|e| {
            panic!("{e} (the fixture links ../shared/datasets/mig-procrastinate/migrations)")
        });
    assert_eq!(procrastinate.files.len(), 39);
    assert_eq!(
        procrastinate.files[1].name,
        "migrations/00.00.00_01_initial.sql"
    );
    assert!(procrastinate.absent.is_empty());
}

// ----------------------------------------------------------- Liquibase output

/// The lines of a real `update-sql` run (Liquibase 4.28.0) that matter.
const UPDATE_SQL: &str = r#"-- Create Database Lock Table
CREATE TABLE public.databasechangeloglock (ID INTEGER NOT NULL, LOCKED BOOLEAN NOT NULL, LOCKGRANTED TIMESTAMP WITHOUT TIME ZONE, LOCKEDBY VARCHAR(255), CONSTRAINT databasechangeloglock_pkey PRIMARY KEY (ID));

INSERT INTO public.databasechangeloglock (ID, LOCKED) VALUES (1, FALSE);

-- Changeset db/changelog.xml::1::me
CREATE TABLE public.t_default (id INTEGER);

INSERT INTO public.databasechangelog (ID, AUTHOR, FILENAME, DATEEXECUTED, ORDEREXECUTED, MD5SUM, DESCRIPTION, COMMENTS, EXECTYPE, CONTEXTS, LABELS, LIQUIBASE, DEPLOYMENT_ID) VALUES ('1', 'me', 'db/changelog.xml', NOW(), 1, '9:11374d3ad70aa53bd6db0c66af97ede1', 'createTable tableName=t_default', '', 'EXECUTED', 'dev', 'l1', '4.28.0', '5445941628');

-- Changeset db/all/c_raw.sql::raw::includeAll
create table rawb(id int);

INSERT INTO public.databasechangelog (ID, AUTHOR, FILENAME, DATEEXECUTED, ORDEREXECUTED, MD5SUM, DESCRIPTION, COMMENTS, EXECTYPE, CONTEXTS, LABELS, LIQUIBASE, DEPLOYMENT_ID) VALUES ('it''s', 'o''brien', 'db/all/c_raw.sql', NOW(), 2, '9:337f8e683930c5ddee9a5543c8885b68', 'sql', 'two
lines, (with parens)', 'EXECUTED', NULL, NULL, '4.28.0', '5445941628');

INSERT INTO shop.databasechangelog (ID, AUTHOR, FILENAME, DATEEXECUTED, ORDEREXECUTED, MD5SUM, DESCRIPTION, COMMENTS, EXECTYPE, CONTEXTS, LABELS, LIQUIBASE, DEPLOYMENT_ID) VALUES ('3', 'me', 'c.xml', NOW(), 3, '9:aa', 'sql', '', 'MARK_RAN', NULL, NULL, '4.28.0', '5445941628');

UPDATE public.databasechangeloglock SET LOCKED = FALSE, LOCKEDBY = NULL, LOCKGRANTED = NULL WHERE ID = 1;
"#;

#[test]
fn update_sql_output_gives_the_planned_changesets() {
    let planned = parse_update_sql(UPDATE_SQL).unwrap();
    let summary: Vec<String> = planned
        .iter()
        .map(|p| {
            format!(
                "{}|{}|{}|{}|{}|{:?}|{:?}",
                p.id, p.author, p.filename, p.checksum, p.exec_type, p.contexts, p.labels
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            r#"1|me|db/changelog.xml|9:11374d3ad70aa53bd6db0c66af97ede1|EXECUTED|Some("dev")|Some("l1")"#,
            "it's|o'brien|db/all/c_raw.sql|9:337f8e683930c5ddee9a5543c8885b68|EXECUTED|None|None",
            "3|me|c.xml|9:aa|MARK_RAN|None|None",
        ]
    );
    assert_eq!(planned[0].description, "createTable tableName=t_default");
    assert_eq!(planned[1].comments, "two\nlines, (with parens)");
    assert_eq!(planned[0].liquibase, "4.28.0");
    assert_eq!(planned[0].label(), "db/changelog.xml::1::me");
    assert!(parse_update_sql("-- nothing to do\n").unwrap().is_empty());

    let broken = [
        "INSERT INTO public.databasechangelog (ID, AUTHOR) VALUES ('1', 'me'",
        "INSERT INTO public.databasechangelog (ID, AUTHOR) VALUES ('1', 'me', 'x');",
        "INSERT INTO public.databasechangelog (ID, AUTHOR, FILENAME) VALUES ('1', 'me', 'f');",
        "INSERT INTO public.databasechangelog (ID, AUTHOR, FILENAME, MD5SUM) VALUES (1, 'me', 'f', '9:x');",
        "INSERT INTO public.databasechangelog (ID) VALUES ('unterminated);",
    ];
    for text in broken {
        assert!(parse_update_sql(text).is_err(), "{text}");
    }
}

#[test]
fn failures_keep_liquibase_s_own_explanation() {
    let stderr = r#"Starting Liquibase at 15:01:14 (version 4.28.0 #2272 built at 2024-05-16 19:00+0000)
Liquibase Version: 4.28.0
Liquibase Open Source 4.28.0 by Liquibase
Running Changeset: c.xml::bad::b
ERROR: Exception Details
ERROR: Exception Primary Class:  PSQLException
ERROR: Exception Primary Reason:  ERROR: relation "nosuch" does not exist
  Position: 13
ERROR: Exception Primary Source:  PostgreSQL 15.18 (Debian 15.18-0+deb12u1)

Unexpected error running Liquibase: Migration failed for changeset c.xml::bad::b:
     Reason: liquibase.exception.DatabaseException: ERROR: relation "nosuch" does not exist
  Position: 13 [Failed SQL: (0) insert into nosuch values (1)]

For more information, please use the --log-level flag
"#;
    let (message, changeset) = failure("", stderr);
    assert_eq!(
        message,
        "Migration failed for changeset c.xml::bad::b:\nReason: liquibase.exception.DatabaseException: ERROR: relation \"nosuch\" does not exist\nPosition: 13 [Failed SQL: (0) insert into nosuch values (1)]"
    );
    assert_eq!(changeset.as_deref(), Some("c.xml::bad::b"));

    let (message, changeset) = failure(
        "",
        "Starting Liquibase at 1\nUnexpected error running Liquibase: Validation Failed:\n     1 changes have validation failures\n",
    );
    assert_eq!(
        message,
        "Validation Failed:\n1 changes have validation failures"
    );
    assert_eq!(changeset, None);

    let (message, _) = failure(
        "partial output\n",
        "Starting Liquibase at 1\nCannot find java in your path. Install java or use the JAVA_HOME environment variable\n",
    );
    assert_eq!(
        message,
        "Cannot find java in your path. Install java or use the JAVA_HOME environment variable"
    );
    let (message, _) = failure("Unexpected argument(s): -Dx\n", "");
    assert_eq!(message, "Unexpected argument(s): -Dx");

    let err = LbError::Failed {
        command: "update-count",
        message: "boom".into(),
        changeset: Some("c.xml::bad::b".into()),
        stdout: String::new(),
        stderr: String::new(),
    };
    assert_eq!(
        err.to_string(),
        "Liquibase update-count failed in changeset c.xml::bad::b: boom"
    );
}

#[test]
fn version_output_gives_liquibase_and_java() {
    let out = "Starting Liquibase at 14:57:01 (version 4.28.0 #2272 built at 2024-05-16 19:00+0000)\nLiquibase Home: /opt/lb\nJava Home /usr/lib/jvm/java-17-openjdk-amd64 (Version 17.0.15)\nLibraries:\n- internal/lib/h2.jar: H2\n\n\nLiquibase Version: 4.28.0\nLiquibase Open Source 4.28.0 by Liquibase\n";
    assert_eq!(
        parse_version(out),
        Some((
            "4.28.0".into(),
            "17.0.15 (/usr/lib/jvm/java-17-openjdk-amd64)".into()
        ))
    );
    assert_eq!(
        parse_version("Liquibase Version: 4.31.1\n"),
        Some(("4.31.1".into(), "unknown Java".into()))
    );
    assert_eq!(parse_version("Cannot find java in your path.\n"), None);
}

#[test]
fn locate_prefers_the_variable_then_the_setting_then_path() {
    let dir = tree(&[
        ("env/liquibase", "#!/bin/sh\n"),
        ("cfg/liquibase", "#!/bin/sh\n"),
        ("bin/liquibase", "#!/bin/sh\n"),
        ("plain", ""),
    ]);
    let p = |rel: &str| dir.path().join(rel);
    for exe in ["env/liquibase", "cfg/liquibase", "bin/liquibase"] {
        fs::set_permissions(p(exe), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let path_var = Some(std::env::join_paths([p("nothing"), p("bin")]).unwrap());
    let env = Some(p("env/liquibase").into_os_string());
    let cfg = p("cfg/liquibase");
    let ok: Vec<(Option<std::ffi::OsString>, Option<&Path>, PathBuf)> = vec![
        (env.clone(), Some(&cfg), p("env/liquibase")),
        (Some("".into()), Some(&cfg), p("cfg/liquibase")),
        (None, Some(&cfg), p("cfg/liquibase")),
        (None, None, p("bin/liquibase")),
    ];
    for (env, cfg, want) in ok {
        assert_eq!(
            super::cli::locate_in(env, cfg, path_var.clone()).unwrap(),
            want
        );
    }
    let plain = p("plain");
    let absent = p("absent");
    let bad: Vec<(Option<std::ffi::OsString>, Option<&Path>, &str)> = vec![
        (
            Some(plain.clone().into_os_string()),
            None,
            "SQLRS_LIQUIBASE is",
        ),
        (None, Some(&plain), "the liquibase.exec setting is"),
        (None, Some(&absent), "not an executable file"),
    ];
    for (env, cfg, want) in bad {
        let err = super::cli::locate_in(env, cfg, path_var.clone())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(want) && err.contains("liquibase@4.28.1"),
            "{err}"
        );
    }
    let err = super::cli::locate_in(None, None, Some(p("nothing").into_os_string()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Liquibase was not found")
            && err.contains("npm install liquibase@4.28.1")
            && err.contains("SQLRS_LIQUIBASE"),
        "{err}"
    );
}

// ------------------------------------------------------ DATABASECHANGELOG

fn planned(id: &str, checksum: &str) -> PlannedChangeset {
    PlannedChangeset {
        id: id.into(),
        author: "me".into(),
        filename: "c.xml".into(),
        checksum: checksum.into(),
        description: "sql".into(),
        comments: String::new(),
        exec_type: "EXECUTED".into(),
        contexts: None,
        labels: None,
        liquibase: "4.28.0".into(),
    }
}

fn row(id: &str, checksum: &str, order: i32) -> AppliedChangeset {
    AppliedChangeset {
        id: id.into(),
        author: "me".into(),
        filename: "c.xml".into(),
        checksum: Some(checksum.into()),
        order_executed: order,
        exec_type: "EXECUTED".into(),
    }
}

#[test]
fn check_applied_accepts_only_the_planned_prefix() {
    let plan = [planned("1", "9:a"), planned("2", "9:b")];
    let cases: Vec<(Vec<AppliedChangeset>, usize, Option<&str>)> = vec![
        (vec![row("1", "9:a", 1)], 1, None),
        (vec![row("1", "9:a", 1), row("2", "9:b", 2)], 2, None),
        (vec![], 1, Some("only 0 rows")),
        (
            vec![row("1", "9:a", 1)],
            2,
            Some("c.xml::2::me (checksum 9:b) at position 2"),
        ),
        (
            vec![row("1", "9:a", 1), row("2", "9:b", 2)],
            1,
            Some("also c.xml::2::me"),
        ),
        (
            vec![row("1", "9:z", 1)],
            1,
            Some("holds c.xml::1::me (checksum 9:z)"),
        ),
        (vec![row("2", "9:b", 1)], 1, Some("holds c.xml::2::me")),
    ];
    for (rows, steps, want) in cases {
        let got = check_applied(&rows, &plan[..steps]);
        match (got, want) {
            (Ok(()), None) => {}
            (Err(e), Some(want)) => {
                let text = e.to_string();
                assert!(text.contains(want) && text.contains("run again"), "{text}");
            }
            (got, want) => panic!("{rows:?} after {steps}: {got:?}, wanted {want:?}"),
        }
    }
}

#[test]
fn run_always_changesets_must_come_last() {
    let dir = tree(&[
        (
            "c.xml",
            &xml(
                r#"<changeSet id="1" author="me" runAlways="true"><sql>select 1</sql></changeSet>
<changeSet id="2" author="me"><sql>select 2</sql></changeSet>
<include file="y.yaml"/><include file="s.sql"/>"#,
            ),
        ),
        (
            "y.yaml",
            "databaseChangeLog:\n  - changeSet:\n      id: y\n      author: me\n      runAlways: true\n      changes: []\n",
        ),
        (
            "s.sql",
            "--liquibase formatted sql\n--changeset me:s runAlways:true\nselect 1;\n",
        ),
    ]);
    let c = closure(&lb_args("c.xml"), dir.path()).unwrap();
    let at = |file: &str, id: &str| PlannedChangeset {
        filename: file.into(),
        ..planned(id, "9:a")
    };
    let (one, two, y, s) = (
        at("c.xml", "1"),
        at("c.xml", "2"),
        at("y.yaml", "y"),
        at("s.sql", "s"),
    );
    let cases: Vec<(Vec<PlannedChangeset>, Option<&str>)> = vec![
        (vec![], None),
        (vec![one.clone()], None),
        (vec![two.clone(), one.clone()], None),
        (vec![one.clone(), two.clone()], Some("c.xml::1::me")),
        (vec![y.clone(), two.clone()], Some("y.yaml::y::me")),
        (vec![s.clone(), two.clone()], Some("s.sql::s::me")),
    ];
    for (plan, want) in cases {
        match (c.check_plan(&plan), want) {
            (Ok(()), None) => {}
            (Err(e), Some(label)) => {
                let text = e.to_string();
                assert!(
                    text.contains(label) && text.contains("move it to the end"),
                    "{text}"
                );
            }
            (got, want) => panic!("{plan:?}: {got:?}, wanted {want:?}"),
        }
    }
    // Were it run anyway, DATABASECHANGELOG shows the rerun.
    let rerun = AppliedChangeset {
        exec_type: "RERAN".into(),
        ..row("1", "9:a", 2)
    };
    let err = check_applied(&[rerun], &[planned("1", "9:a"), planned("2", "9:b")]).unwrap_err();
    assert!(
        err.to_string().contains("c.xml::1::me is runAlways"),
        "{err}"
    );
}

// ----------------------------------------------------------- fingerprints

#[test]
fn fingerprints_cover_what_changes_a_changeset_and_nothing_else() {
    let dir = tree(&[
        (
            "c.xml",
            &xml(
                r#"<changeSet id="1" author="me"><sql>select 1</sql></changeSet><changeSet id="2" author="me"><insert tableName="t"><column name="c" valueClobFile="c.txt"/></insert></changeSet>"#,
            ),
        ),
        ("c.txt", "one"),
    ]);
    let args = lb_args("c.xml");
    let c = closure(&args, dir.path()).unwrap();
    let one = planned("1", "9:a");
    let two = planned("2", "9:b");
    let base = fingerprint(&one, &args, &c);
    assert_eq!(base, fingerprint(&one.clone(), &args, &c));

    let changed: Vec<(&str, PlannedChangeset, LbArgs)> = vec![
        (
            "checksum",
            PlannedChangeset {
                checksum: "9:x".into(),
                ..one.clone()
            },
            args.clone(),
        ),
        (
            "id",
            PlannedChangeset {
                id: "1b".into(),
                ..one.clone()
            },
            args.clone(),
        ),
        (
            "author",
            PlannedChangeset {
                author: "you".into(),
                ..one.clone()
            },
            args.clone(),
        ),
        (
            "filename",
            PlannedChangeset {
                filename: "d.xml".into(),
                ..one.clone()
            },
            args.clone(),
        ),
        (
            "exec type",
            PlannedChangeset {
                exec_type: "MARK_RAN".into(),
                ..one.clone()
            },
            args.clone(),
        ),
        (
            "own contexts",
            PlannedChangeset {
                contexts: Some("dev".into()),
                ..one.clone()
            },
            args.clone(),
        ),
        (
            "own labels",
            PlannedChangeset {
                labels: Some("".into()),
                ..one.clone()
            },
            args.clone(),
        ),
        (
            "liquibase",
            PlannedChangeset {
                liquibase: "4.29.0".into(),
                ..one.clone()
            },
            args.clone(),
        ),
        (
            "--contexts",
            one.clone(),
            LbArgs {
                contexts: Some("dev".into()),
                ..args.clone()
            },
        ),
        (
            "--labels",
            one.clone(),
            LbArgs {
                labels: Some("v1".into()),
                ..args.clone()
            },
        ),
        (
            "--default-schema-name",
            one.clone(),
            LbArgs {
                default_schema: Some("s".into()),
                ..args.clone()
            },
        ),
        (
            "-D",
            one.clone(),
            LbArgs {
                params: [("p".to_string(), "1".to_string())].into(),
                ..args.clone()
            },
        ),
    ];
    for (what, cs, a) in changed {
        assert_ne!(fingerprint(&cs, &a, &c), base, "{what}");
    }
    // The search path and the files' location are not part of it.
    let moved = tree(&[
        (
            "deeper/c.xml",
            &fs::read_to_string(dir.path().join("c.xml")).unwrap(),
        ),
        ("deeper/c.txt", "one"),
    ]);
    let moved_args = LbArgs {
        search_path: vec!["deeper".into()],
        ..args.clone()
    };
    let c_moved = closure(&moved_args, moved.path()).unwrap();
    assert_eq!(fingerprint(&one, &moved_args, &c_moved), base);
    assert_eq!(
        fingerprint(&two, &moved_args, &c_moved),
        fingerprint(&two, &args, &c)
    );

    // A file a changeset reads but its checksum ignores changes its
    // fingerprint, and only its.
    fs::write(dir.path().join("c.txt"), "two").unwrap();
    let c_edited = closure(&args, dir.path()).unwrap();
    assert_eq!(fingerprint(&one, &args, &c_edited), base);
    assert_ne!(
        fingerprint(&two, &args, &c_edited),
        fingerprint(&two, &args, &c)
    );
}
