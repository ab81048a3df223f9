//! psql's command line, parsed like psql's `getopt_long` does: the steps
//! (`-f`, `-c`) in order, the variables and `-1`; connection and other
//! flags that do not fit a prepare step are rejected with the fix.

use std::collections::BTreeMap;

use super::PlanError;

/// One `-f FILE` (as written; `-` is stdin) or `-c SQL`, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    File(String),
    Command(String),
}

/// What a psql command line asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Invocation {
    pub actions: Vec<Action>,
    /// `-v NAME=VALUE` in effect at the end of the command line.
    pub vars: BTreeMap<String, String>,
    pub single_transaction: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Command,
    Variable,
    SingleTransaction,
    /// Accepted and ignored: sqlrs forces it (`-X`), or it only changes how
    /// psql prints, which cannot change the data directory.
    Ignored,
    Connection,
    Unsupported(&'static str),
}

struct Spec {
    short: Option<char>,
    long: &'static [&'static str],
    takes_value: bool,
    kind: Kind,
}

const fn spec(
    short: Option<char>,
    long: &'static [&'static str],
    takes_value: bool,
    kind: Kind,
) -> Spec {
    Spec {
        short,
        long,
        takes_value,
        kind,
    }
}

/// psql 15's options. Ignored: `-X --no-psqlrc` (always forced), the echo and
/// quiet flags `-a -b -e -E -n -q`, and the output-format flags
/// `-A -H -t -x -z -0 --csv -F -P -R -T`.
const SPECS: &[Spec] = &[
    spec(Some('f'), &["file"], true, Kind::File),
    spec(Some('c'), &["command"], true, Kind::Command),
    spec(Some('v'), &["set", "variable"], true, Kind::Variable),
    spec(
        Some('1'),
        &["single-transaction"],
        false,
        Kind::SingleTransaction,
    ),
    spec(Some('X'), &["no-psqlrc"], false, Kind::Ignored),
    spec(Some('a'), &["echo-all"], false, Kind::Ignored),
    spec(Some('b'), &["echo-errors"], false, Kind::Ignored),
    spec(Some('e'), &["echo-queries"], false, Kind::Ignored),
    spec(Some('E'), &["echo-hidden"], false, Kind::Ignored),
    spec(Some('n'), &["no-readline"], false, Kind::Ignored),
    spec(Some('q'), &["quiet"], false, Kind::Ignored),
    spec(Some('A'), &["no-align"], false, Kind::Ignored),
    spec(Some('H'), &["html"], false, Kind::Ignored),
    spec(Some('t'), &["tuples-only"], false, Kind::Ignored),
    spec(Some('x'), &["expanded"], false, Kind::Ignored),
    spec(Some('z'), &["field-separator-zero"], false, Kind::Ignored),
    spec(Some('0'), &["record-separator-zero"], false, Kind::Ignored),
    spec(None, &["csv"], false, Kind::Ignored),
    spec(Some('F'), &["field-separator"], true, Kind::Ignored),
    spec(Some('P'), &["pset"], true, Kind::Ignored),
    spec(Some('R'), &["record-separator"], true, Kind::Ignored),
    spec(Some('T'), &["table-attr"], true, Kind::Ignored),
    spec(Some('h'), &["host"], true, Kind::Connection),
    spec(Some('p'), &["port"], true, Kind::Connection),
    spec(Some('U'), &["username"], true, Kind::Connection),
    spec(Some('d'), &["dbname"], true, Kind::Connection),
    spec(Some('w'), &["no-password"], false, Kind::Connection),
    spec(Some('W'), &["password"], false, Kind::Connection),
    spec(
        Some('l'),
        &["list"],
        false,
        Kind::Unsupported("it lists databases instead of running scripts"),
    ),
    spec(
        Some('L'),
        &["log-file"],
        true,
        Kind::Unsupported("it would write a log file on the daemon's machine"),
    ),
    spec(
        Some('o'),
        &["output"],
        true,
        Kind::Unsupported(
            "it would write query output to a file on the daemon's machine (use run:psql to see query results)",
        ),
    ),
    spec(
        Some('s'),
        &["single-step"],
        false,
        Kind::Unsupported("it waits for a confirmation before each command"),
    ),
    spec(
        Some('S'),
        &["single-line"],
        false,
        Kind::Unsupported("it changes how scripts split into statements (end statements with ;)"),
    ),
    spec(
        Some('V'),
        &["version"],
        false,
        Kind::Unsupported("it prints psql's version instead of running scripts"),
    ),
    spec(
        Some('?'),
        &["help"],
        false,
        Kind::Unsupported("it prints help instead of running scripts"),
    ),
];

fn example(kind: Kind) -> &'static str {
    match kind {
        Kind::File => "-f schema.sql",
        Kind::Command => "-c 'create table t(id int)'",
        Kind::Variable => "-v NAME=VALUE",
        _ => "see psql --help",
    }
}

/// psql's `valid_variable_name`: letters, digits, underscores, non-ASCII.
pub(super) fn valid_variable_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80)
}

/// psql's `ParseVariableBool`: Some(true/false), None when unrecognised.
pub(super) fn parse_bool(value: &[u8]) -> Option<bool> {
    let v = value.to_ascii_lowercase();
    let prefix_of = |word: &[u8], min: usize| v.len() >= min && word.starts_with(&v);
    if prefix_of(b"true", 1) || prefix_of(b"yes", 1) || prefix_of(b"on", 2) || v == b"1" {
        Some(true)
    } else if prefix_of(b"false", 1) || prefix_of(b"no", 1) || prefix_of(b"off", 2) || v == b"0" {
        Some(false)
    } else {
        None
    }
}

/// The long option `name` (exact, or an unambiguous prefix as getopt allows).
fn find_long(flag: &str, name: &str) -> Result<(&'static Spec, &'static str), PlanError> {
    let mut hits: Vec<(&'static Spec, &'static str)> = Vec::new();
    for s in SPECS {
        for long in s.long {
            if *long == name {
                return Ok((s, long));
            }
            if !name.is_empty() && long.starts_with(name) {
                hits.push((s, long));
            }
        }
    }
    match hits.as_slice() {
        [] => Err(PlanError::UnknownFlag {
            flag: flag.to_owned(),
        }),
        [one] => Ok(*one),
        many if many.iter().all(|(s, _)| std::ptr::eq(*s, many[0].0)) => Ok(many[0]),
        many => Err(PlanError::AmbiguousFlag {
            flag: flag.to_owned(),
            candidates: many
                .iter()
                .map(|(_, l)| format!("--{l}"))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

pub(super) fn parse(args: &[String]) -> Result<Invocation, PlanError> {
    let mut inv = Invocation::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            if let Some(rest) = it.next() {
                return Err(PlanError::Positional { arg: rest.clone() });
            }
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let flag = format!("--{name}");
            let (spec, _) = find_long(&flag, name)?;
            let value = match (spec.takes_value, inline) {
                (true, Some(v)) => Some(v.to_owned()),
                (true, None) => Some(it.next().cloned().ok_or(PlanError::MissingValue {
                    flag: flag.clone(),
                    example: example(spec.kind),
                })?),
                (false, Some(_)) if !matches!(spec.kind, Kind::Unsupported(_)) => {
                    return Err(PlanError::UnexpectedValue { flag });
                }
                (false, _) => None,
            };
            apply(&mut inv, spec, &flag, value)?;
        } else if arg.len() > 1 && arg.starts_with('-') {
            let cluster = &arg[1..];
            for (i, c) in cluster.char_indices() {
                let flag = format!("-{c}");
                let spec = SPECS
                    .iter()
                    .find(|s| s.short == Some(c))
                    .ok_or(PlanError::UnknownFlag { flag: flag.clone() })?;
                if spec.takes_value {
                    let attached = &cluster[i + c.len_utf8()..];
                    let value = if attached.is_empty() {
                        it.next().cloned().ok_or(PlanError::MissingValue {
                            flag: flag.clone(),
                            example: example(spec.kind),
                        })?
                    } else {
                        attached.to_owned()
                    };
                    apply(&mut inv, spec, &flag, Some(value))?;
                    break;
                }
                apply(&mut inv, spec, &flag, None)?;
            }
        } else {
            return Err(PlanError::Positional { arg: arg.clone() });
        }
    }
    Ok(inv)
}

fn apply(
    inv: &mut Invocation,
    spec: &Spec,
    flag: &str,
    value: Option<String>,
) -> Result<(), PlanError> {
    match spec.kind {
        Kind::File => {
            let value = value.unwrap_or_default();
            if value.is_empty() {
                return Err(PlanError::MissingValue {
                    flag: flag.to_owned(),
                    example: example(Kind::File),
                });
            }
            inv.actions.push(Action::File(value));
        }
        Kind::Command => inv.actions.push(Action::Command(value.unwrap_or_default())),
        Kind::Variable => set_variable(inv, &value.unwrap_or_default())?,
        Kind::SingleTransaction => inv.single_transaction = true,
        Kind::Ignored => {}
        Kind::Connection => {
            return Err(PlanError::ConnectionFlag {
                flag: flag.to_owned(),
            });
        }
        Kind::Unsupported(why) => {
            return Err(PlanError::UnsupportedFlag {
                flag: flag.to_owned(),
                why,
            });
        }
    }
    Ok(())
}

/// `-v NAME=VALUE` sets, `-v NAME` unsets (as psql does); ON_ERROR_STOP may
/// only be confirmed, never turned off.
fn set_variable(inv: &mut Invocation, arg: &str) -> Result<(), PlanError> {
    let (name, value) = match arg.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (arg, None),
    };
    if !valid_variable_name(name.as_bytes()) {
        return Err(PlanError::InvalidVariable {
            arg: arg.to_owned(),
            name: name.to_owned(),
        });
    }
    if name == "ON_ERROR_STOP" {
        return match value.and_then(|v| parse_bool(v.as_bytes())) {
            Some(true) => Ok(()),
            _ => Err(PlanError::OnErrorStop {
                arg: arg.to_owned(),
            }),
        };
    }
    match value {
        Some(v) => inv.vars.insert(name.to_owned(), v.to_owned()),
        None => inv.vars.remove(name),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn accepted_table() {
        use Action::*;
        let f = |s: &str| File(s.into());
        let c = |s: &str| Command(s.into());
        type Case<'a> = (&'a [&'a str], &'a [Action], &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            (&["-f", "a.sql"], &[f("a.sql")], &[], false),
            (&["-fa.sql"], &[f("a.sql")], &[], false),
            (&["--file=a.sql"], &[f("a.sql")], &[], false),
            (&["--file", "a.sql"], &[f("a.sql")], &[], false),
            (&["--fil", "a.sql"], &[f("a.sql")], &[], false),
            (&["-f", "-"], &[f("-")], &[], false),
            (&["-c", "select 1"], &[c("select 1")], &[], false),
            (&["--command=select 1"], &[c("select 1")], &[], false),
            (&["-cselect 1"], &[c("select 1")], &[], false),
            (
                &["-f", "a.sql", "-c", "select 1", "-f", "b.sql"],
                &[f("a.sql"), c("select 1"), f("b.sql")],
                &[],
                false,
            ),
            (&["-1", "-f", "a.sql"], &[f("a.sql")], &[], true),
            (
                &["--single-transaction", "-f", "a.sql"],
                &[f("a.sql")],
                &[],
                true,
            ),
            (&["-1Xqf", "a.sql"], &[f("a.sql")], &[], true),
            (&["-v", "a=1", "-f", "x"], &[f("x")], &[("a", "1")], false),
            (
                &["-va=1", "--set=b=2", "--variable", "c=", "-f", "x"],
                &[f("x")],
                &[("a", "1"), ("b", "2"), ("c", "")],
                false,
            ),
            (
                &["-v", "a=1", "-v", "a=2", "-f", "x"],
                &[f("x")],
                &[("a", "2")],
                false,
            ),
            (&["-v", "a=1", "-v", "a", "-f", "x"], &[f("x")], &[], false),
            (
                &["-v", "a=x=y", "-f", "x"],
                &[f("x")],
                &[("a", "x=y")],
                false,
            ),
            (&["-v", "ON_ERROR_STOP=1", "-f", "x"], &[f("x")], &[], false),
            (
                &[
                    "-v",
                    "ON_ERROR_STOP=on",
                    "--set=ON_ERROR_STOP=true",
                    "-f",
                    "x",
                ],
                &[f("x")],
                &[],
                false,
            ),
            (
                &[
                    "-X",
                    "--no-psqlrc",
                    "-q",
                    "-e",
                    "-a",
                    "-b",
                    "-E",
                    "-n",
                    "--echo-all",
                    "--quiet",
                    "-f",
                    "x",
                ],
                &[f("x")],
                &[],
                false,
            ),
            (
                &[
                    "-A",
                    "-t",
                    "-x",
                    "-H",
                    "-z",
                    "-0",
                    "--csv",
                    "-F",
                    ",",
                    "-P",
                    "pager=off",
                    "-R",
                    "\n",
                    "-T",
                    "border=1",
                    "-f",
                    "x",
                ],
                &[f("x")],
                &[],
                false,
            ),
            (&[], &[], &[], false),
        ];
        for (args, actions, vars, single) in cases {
            let inv = parse(&strings(args)).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(inv.actions, *actions, "{args:?}");
            let vars: BTreeMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(inv.vars, vars, "{args:?}");
            assert_eq!(inv.single_transaction, *single, "{args:?}");
        }
    }

    #[test]
    fn rejected_table() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["-h", "localhost", "-f", "x"],
                "-h: sqlrs connects psql to the instance itself; remove -h",
            ),
            (&["--host=db", "-f", "x"], "remove --host"),
            (&["-p", "5432"], "remove -p"),
            (&["--port", "5432"], "remove --port"),
            (&["-U", "me"], "remove -U"),
            (&["--username=me"], "remove --username"),
            (&["-d", "app"], "remove -d"),
            (&["--dbname", "app"], "remove --dbname"),
            (&["-w"], "remove -w"),
            (&["-W"], "remove -W"),
            (&["-qh", "x"], "remove -h"),
            (&["app"], "\"app\" names a database or connection"),
            (
                &["-f", "x", "postgres://u@h/db"],
                "names a database or connection",
            ),
            (&["--", "app"], "\"app\""),
            (&["-"], "names a database or connection"),
            (&["-k"], "-k: unknown psql option"),
            (&["--frobnicate"], "--frobnicate: unknown psql option"),
            (&["--echo"], "ambiguous"),
            (
                &["-l"],
                "-l: not supported by prepare because it lists databases",
            ),
            (&["-o", "out.txt"], "-o: not supported"),
            (&["--log-file=x"], "--log-file: not supported"),
            (&["-s"], "-s: not supported"),
            (&["-S"], "-S: not supported"),
            (&["-V"], "-V: not supported"),
            (&["--help"], "--help: not supported"),
            (&["--help=commands"], "--help: not supported"),
            (&["-f"], "-f needs a value"),
            (&["--file"], "--file needs a value"),
            (&["--file="], "--file needs a value"),
            (&["-c"], "-c needs a value"),
            (&["-v"], "-v needs a value"),
            (&["--quiet=yes"], "--quiet takes no value"),
            (
                &["-v", "a-b=1"],
                "\"a-b\" is not a valid psql variable name",
            ),
            (&["-v", "=1"], "\"\" is not a valid psql variable name"),
            (
                &["-v", "ON_ERROR_STOP=0"],
                "-v ON_ERROR_STOP=0: sqlrs always runs psql with ON_ERROR_STOP=1",
            ),
            (&["-v", "ON_ERROR_STOP=off"], "ON_ERROR_STOP=1"),
            (&["--set=ON_ERROR_STOP=maybe"], "ON_ERROR_STOP=1"),
            (&["-v", "ON_ERROR_STOP"], "ON_ERROR_STOP=1"),
        ];
        for (args, fragment) in cases {
            match parse(&strings(args)) {
                Ok(inv) => panic!("{args:?} was accepted: {inv:?}"),
                Err(e) => assert!(e.to_string().contains(fragment), "{args:?}: {e}"),
            }
        }
    }

    #[test]
    fn bools_like_psql() {
        let cases = [
            ("1", Some(true)),
            ("on", Some(true)),
            ("ON", Some(true)),
            ("t", Some(true)),
            ("TRUE", Some(true)),
            ("y", Some(true)),
            ("0", Some(false)),
            ("off", Some(false)),
            ("of", Some(false)),
            ("f", Some(false)),
            ("no", Some(false)),
            ("o", None),
            ("", None),
            ("2", None),
            ("maybe", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_bool(v.as_bytes()), want, "{v}");
        }
    }
}
