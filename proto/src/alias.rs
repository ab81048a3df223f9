//! Alias files: `NAME.prep.s9s.yaml` (how to prepare a state) and
//! `NAME.run.s9s.yaml` (what to run against an instance), found from a folder
//! upwards to the workspace root (the nearest folder holding `.sqlrs/`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The folder that marks a sqlrs workspace root.
pub const WORKSPACE_DIR: &str = ".sqlrs";

/// One alias file, as written by the user. Paths in `args` are relative to
/// the folder holding the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alias {
    pub kind: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
}

/// What an alias file is for; it decides the file name suffix and the kinds allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasRole {
    Prepare,
    Run,
}

impl AliasRole {
    /// The file name suffix, e.g. `.prep.s9s.yaml`.
    pub fn suffix(self) -> &'static str {
        match self {
            AliasRole::Prepare => ".prep.s9s.yaml",
            AliasRole::Run => ".run.s9s.yaml",
        }
    }

    /// The `kind` values an alias of this role may have.
    pub fn kinds(self) -> &'static [&'static str] {
        match self {
            AliasRole::Prepare => &["psql", "lb"],
            AliasRole::Run => &["psql", "pgbench"],
        }
    }

    /// The file name of alias `name` for this role.
    pub fn file_name(self, name: &str) -> String {
        format!("{name}{}", self.suffix())
    }

    /// The role a file name implies, from its suffix.
    pub fn of_path(path: &Path) -> Option<AliasRole> {
        let name = path.file_name()?.to_str()?;
        [AliasRole::Prepare, AliasRole::Run]
            .into_iter()
            .find(|role| name.len() > role.suffix().len() && name.ends_with(role.suffix()))
    }
}

impl fmt::Display for AliasRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AliasRole::Prepare => "prepare",
            AliasRole::Run => "run",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AliasError {
    #[error(
        "{}: not an alias file name; name it NAME.prep.s9s.yaml (prepare) or NAME.run.s9s.yaml (run)",
        path.display()
    )]
    FileName { path: PathBuf },
    #[error("cannot read alias file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{}{}: {message}; an alias file holds `kind:`, optional `image:` and `args:` (a list of strings)",
        path.display(),
        at(*location)
    )]
    Syntax {
        path: PathBuf,
        /// 1-based line and column, when the YAML parser knows them.
        location: Option<(usize, usize)>,
        message: String,
    },
    #[error(
        "{}{}: kind `{kind}` is not a {role} kind; use one of: {}",
        path.display(),
        at(*location),
        role.kinds().join(", ")
    )]
    Kind {
        path: PathBuf,
        /// 1-based line and column of the `kind:` value, when found.
        location: Option<(usize, usize)>,
        kind: String,
        role: AliasRole,
    },
    #[error(
        "{}{}: `args` is empty; list the tool arguments, e.g. `args: [-f, schema.sql]`",
        path.display(),
        at(*location)
    )]
    NoArgs {
        path: PathBuf,
        /// 1-based line and column of the `args:` value, when the key is there.
        location: Option<(usize, usize)>,
    },
    #[error(
        "no alias file {file_name} in {}; create it in one of these folders, or run from the folder that holds it",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound {
        file_name: String,
        searched: Vec<PathBuf>,
    },
}

/// Reads and checks the alias file at `path`; its role comes from its name.
pub fn load(path: &Path) -> Result<Alias, AliasError> {
    let role = AliasRole::of_path(path).ok_or_else(|| AliasError::FileName {
        path: path.to_owned(),
    })?;
    let text = std::fs::read_to_string(path).map_err(|error| AliasError::Read {
        path: path.to_owned(),
        error,
    })?;
    parse(path, &text, role)
}

/// Parses and checks alias text; `path` only names the file in errors.
pub fn parse(path: &Path, text: &str, role: AliasRole) -> Result<Alias, AliasError> {
    let alias: Alias = serde_norway::from_str(text).map_err(|e| AliasError::Syntax {
        path: path.to_owned(),
        location: e.location().map(|l| (l.line(), l.column())),
        message: strip_location(&e.to_string()),
    })?;
    if !role.kinds().contains(&alias.kind.as_str()) {
        return Err(AliasError::Kind {
            path: path.to_owned(),
            location: key_location(text, "kind"),
            kind: alias.kind,
            role,
        });
    }
    if alias.args.is_empty() {
        return Err(AliasError::NoArgs {
            path: path.to_owned(),
            location: key_location(text, "args"),
        });
    }
    Ok(alias)
}

impl AliasError {
    /// The 1-based line and column the error points at, when known.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            AliasError::Syntax { location, .. }
            | AliasError::Kind { location, .. }
            | AliasError::NoArgs { location, .. } => *location,
            _ => None,
        }
    }
}

/// `:line:col`, or nothing when the location is unknown.
fn at(location: Option<(usize, usize)>) -> String {
    location
        .map(|(l, c)| format!(":{l}:{c}"))
        .unwrap_or_default()
}

/// Where the value of the top-level block key `key` starts (1-based line
/// and column; the key's own column when its value is on later lines).
/// Keys in a flow mapping (`{kind: psql}`) are not found.
fn key_location(text: &str, key: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let rest = line.strip_prefix(key)?.trim_start_matches([' ', '\t']);
        let rest = rest.strip_prefix(':')?;
        let value = rest.trim_start_matches([' ', '\t']);
        let column = if value.is_empty() || value.starts_with('#') {
            1
        } else {
            line.len() - value.len() + 1
        };
        Some((i + 1, column))
    })
}

/// Finds `NAME.<role>.s9s.yaml`: in `start_dir`, then in each parent up to the
/// workspace root. Outside any workspace only `start_dir` is searched.
///
/// A `name` that is a path (it holds a `/` or already ends with the suffix) is
/// taken as is, relative to `start_dir`.
pub fn find(start_dir: &Path, name: &str, role: AliasRole) -> Result<PathBuf, AliasError> {
    if name.contains('/') || name.ends_with(role.suffix()) {
        let path = start_dir.join(name);
        let path = if name.ends_with(role.suffix()) {
            path
        } else {
            let file = role.file_name(path.file_name().and_then(|n| n.to_str()).unwrap_or(name));
            path.with_file_name(file)
        };
        if path.is_file() {
            return Ok(path);
        }
        return Err(AliasError::NotFound {
            file_name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            searched: path.parent().map(Path::to_owned).into_iter().collect(),
        });
    }
    let file_name = role.file_name(name);
    let root = workspace_root(start_dir);
    let mut searched = Vec::new();
    for dir in start_dir.ancestors() {
        let candidate = dir.join(&file_name);
        searched.push(dir.to_owned());
        if candidate.is_file() {
            return Ok(candidate);
        }
        if root.as_deref().is_none_or(|r| r == dir) {
            break;
        }
    }
    Err(AliasError::NotFound {
        file_name,
        searched,
    })
}

/// The nearest folder at or above `dir` that holds `.sqlrs/`.
pub fn workspace_root(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| d.join(WORKSPACE_DIR).is_dir())
        .map(Path::to_owned)
}

/// serde_norway appends " at line L column C" to its messages; the location
/// is reported separately.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok = |kind: &str, image: Option<&str>, args: &[&str]| {
            Ok::<_, String>(Alias {
                kind: kind.into(),
                image: image.map(Into::into),
                args: args.iter().map(|s| s.to_string()).collect(),
            })
        };
        let cases: &[(&str, AliasRole, Result<Alias, String>)] = &[
            (
                "kind: psql\nargs: [-f, schema.sql]\n",
                AliasRole::Prepare,
                ok("psql", None, &["-f", "schema.sql"]),
            ),
            (
                "kind: lb\nimage: postgres:17\nargs:\n  - update\n  - --changelog-file=c.xml\n",
                AliasRole::Prepare,
                ok(
                    "lb",
                    Some("postgres:17"),
                    &["update", "--changelog-file=c.xml"],
                ),
            ),
            (
                "kind: pgbench\nargs: [-c, '4', -T, '10']\n",
                AliasRole::Run,
                ok("pgbench", None, &["-c", "4", "-T", "10"]),
            ),
            (
                "kind: pgbench\nargs: [-f, x.sql]\n",
                AliasRole::Prepare,
                Err(
                    "a.yaml:1:7: kind `pgbench` is not a prepare kind; use one of: psql, lb".into(),
                ),
            ),
            (
                "kind: lb\nargs: [update]\n",
                AliasRole::Run,
                Err("a.yaml:1:7: kind `lb` is not a run kind; use one of: psql, pgbench".into()),
            ),
            (
                "kind: psql\nargs: [-f, a.sql]\nimgae: postgres:17\n",
                AliasRole::Prepare,
                Err("a.yaml:3:1: unknown field `imgae`".into()),
            ),
            (
                "args: [-f, a.sql]\n",
                AliasRole::Prepare,
                Err("a.yaml:1:1: missing field `kind`".into()),
            ),
            (
                "kind: psql\nargs: -f a.sql\n",
                AliasRole::Prepare,
                Err(
                    "a.yaml:2:7: args: invalid type: string \"-f a.sql\", expected a sequence"
                        .into(),
                ),
            ),
            (
                "kind: psql\nargs: [-f, [a.sql]]\n",
                AliasRole::Prepare,
                Err("a.yaml:2:12: args[1]: invalid type: sequence, expected a string".into()),
            ),
            (
                "kind: psql\nargs: []\n",
                AliasRole::Prepare,
                Err("a.yaml:2:7: `args` is empty".into()),
            ),
            (
                "# a comment\nargs:   [] # none yet\nkind:    psql\n",
                AliasRole::Prepare,
                Err("a.yaml:2:9: `args` is empty".into()),
            ),
            (
                "kind: psql\n",
                AliasRole::Prepare,
                Err("a.yaml: `args` is empty".into()),
            ),
            (
                "{kind: mysql, args: [x]}\n",
                AliasRole::Prepare,
                Err("a.yaml: kind `mysql` is not a prepare kind".into()),
            ),
            (
                "image: x\nkind:\n  mysql\nargs: [x]\n",
                AliasRole::Prepare,
                Err("a.yaml:2:1: kind `mysql` is not a prepare kind".into()),
            ),
            (
                "kind: psql\n  args: [\n",
                AliasRole::Prepare,
                Err("a.yaml:2:7: mapping values are not allowed in this context".into()),
            ),
            (
                "",
                AliasRole::Prepare,
                Err("a.yaml:1:1: missing field `kind`".into()),
            ),
        ];
        for (text, role, want) in cases {
            let got = parse(Path::new("a.yaml"), text, *role).map_err(|e| e.to_string());
            match (&got, want) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text:?}"),
                (Err(e), Err(prefix)) => {
                    assert!(
                        e.starts_with(prefix.as_str()),
                        "{text:?}: {e:?} !~ {prefix:?}"
                    )
                }
                _ => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn syntax_errors_say_how_to_fix() {
        let err = parse(
            Path::new("/w/x.prep.s9s.yaml"),
            "kind: [",
            AliasRole::Prepare,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("/w/x.prep.s9s.yaml:"), "{err}");
        assert!(
            err.contains("`kind:`, optional `image:` and `args:`"),
            "{err}"
        );
    }

    #[test]
    fn role_of_path() {
        let cases = [
            ("a/db.prep.s9s.yaml", Some(AliasRole::Prepare)),
            ("db.run.s9s.yaml", Some(AliasRole::Run)),
            (".prep.s9s.yaml", None),
            ("db.yaml", None),
            ("db.prep.s9s.yml", None),
        ];
        for (path, want) in cases {
            assert_eq!(AliasRole::of_path(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let bad = dir.join("x.yaml");
        std::fs::write(&bad, "kind: psql\n").unwrap();
        assert!(matches!(load(&bad), Err(AliasError::FileName { .. })));
        let missing = dir.join("gone.prep.s9s.yaml");
        let err = load(&missing).unwrap_err().to_string();
        assert!(err.contains("gone.prep.s9s.yaml"), "{err}");
        let good = dir.join("db.run.s9s.yaml");
        std::fs::write(&good, "kind: psql\nargs: [-f, q.sql]\n").unwrap();
        assert_eq!(load(&good).unwrap().args, ["-f", "q.sql"]);
    }

    #[test]
    fn find_walks_up_to_the_workspace_root() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().to_owned();
        let ws = top.join("ws");
        let deep = ws.join("a/b");
        std::fs::create_dir_all(ws.join(WORKSPACE_DIR)).unwrap();
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(ws.join("db.prep.s9s.yaml"), "").unwrap();
        std::fs::write(ws.join("a/q.run.s9s.yaml"), "").unwrap();
        // Above the workspace root: never found from inside it.
        std::fs::write(top.join("outer.prep.s9s.yaml"), "").unwrap();

        let cases: &[(&Path, &str, AliasRole, Option<PathBuf>)] = &[
            (
                &deep,
                "db",
                AliasRole::Prepare,
                Some(ws.join("db.prep.s9s.yaml")),
            ),
            (
                &deep,
                "q",
                AliasRole::Run,
                Some(ws.join("a/q.run.s9s.yaml")),
            ),
            (&deep, "q", AliasRole::Prepare, None),
            (&deep, "outer", AliasRole::Prepare, None),
            (
                &top,
                "outer",
                AliasRole::Prepare,
                Some(top.join("outer.prep.s9s.yaml")),
            ),
            (
                &deep,
                "../q",
                AliasRole::Run,
                Some(deep.join("../q.run.s9s.yaml")),
            ),
            (
                &ws,
                "db.prep.s9s.yaml",
                AliasRole::Prepare,
                Some(ws.join("db.prep.s9s.yaml")),
            ),
        ];
        for (dir, name, role, want) in cases {
            let got = find(dir, name, *role).ok();
            assert_eq!(&got, want, "{} {name} {role}", dir.display());
        }
        let err = find(&deep, "nope", AliasRole::Prepare).unwrap_err();
        match &err {
            AliasError::NotFound { searched, .. } => {
                assert_eq!(searched, &[deep.clone(), ws.join("a"), ws.clone()])
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("nope.prep.s9s.yaml"), "{err}");
    }
}
