//! Raw command-line handling that clap cannot do: splitting the composite
//! `prepare … run …` into its two commands, and reading psql's own options
//! (which of them take a value, where its scripts come from).

/// Commands after which a composite `run` may follow.
const PREPARE_COMMANDS: &[&str] = &["prepare", "prepare:psql", "prepare:lb"];
/// Tokens that start the run half of a composite.
const RUN_COMMANDS: &[&str] = &["run", "run:psql", "run:pgbench"];
/// sqlrs options (before `--`) whose value is the next token.
const SQLRS_VALUE_OPTIONS: &[&str] = &["--output", "--image", "--name", "--ttl"];
/// psql short options that take a value (from psql's getopt string).
const PSQL_SHORT_VALUE: &str = "cdfFhLopPRTUv";
/// psql long options that take a value.
const PSQL_LONG_VALUE: &[&str] = &[
    "command",
    "dbname",
    "field-separator",
    "file",
    "host",
    "log-file",
    "output",
    "port",
    "pset",
    "record-separator",
    "set",
    "table-attr",
    "username",
    "variable",
];

/// A command line split at the composite separator.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    /// The whole line up to the separator, program name included.
    pub head: Vec<String>,
    /// From the `run` token on, when the line is a composite.
    pub run: Option<Vec<String>>,
}

/// Splits `sqlrs … prepare[:psql] ARGS run[:psql|:pgbench] ARGS` in two. The
/// separator is the first bare `run` / `run:psql` / `run:pgbench` token after
/// the prepare command that is not the value of an option (`-f run` names a
/// file called `run`).
pub fn split_composite(argv: &[String]) -> Split {
    let whole = || Split {
        head: argv.to_vec(),
        run: None,
    };
    let Some(command) = command_index(argv) else {
        return whole();
    };
    if !PREPARE_COMMANDS.contains(&argv[command].as_str()) {
        return whole();
    }
    let mut after_dashes = false;
    let mut i = command + 1;
    while i < argv.len() {
        let token = argv[i].as_str();
        if !after_dashes && token == "--" {
            after_dashes = true;
        } else if RUN_COMMANDS.contains(&token) {
            return Split {
                head: argv[..i].to_vec(),
                run: Some(argv[i..].to_vec()),
            };
        } else if after_dashes && psql_value_follows(token)
            || !after_dashes && SQLRS_VALUE_OPTIONS.contains(&token)
        {
            i += 1;
        }
        i += 1;
    }
    whole()
}

/// Where the subcommand is: the first token that is neither an option nor
/// the value of `--output`.
fn command_index(argv: &[String]) -> Option<usize> {
    let mut i = 1;
    while i < argv.len() {
        let token = argv[i].as_str();
        if SQLRS_VALUE_OPTIONS.contains(&token) {
            i += 2;
        } else if token.starts_with('-') {
            i += 1;
        } else {
            return Some(i);
        }
    }
    None
}

/// Whether `token` is a psql option whose value is the next token.
fn psql_value_follows(token: &str) -> bool {
    match short_value(token) {
        Some((_, attached)) => attached.is_none(),
        None => token
            .strip_prefix("--")
            .is_some_and(|long| PSQL_LONG_VALUE.contains(&long)),
    }
}

/// For a cluster of psql short options (`-Xf`, `-fschema.sql`), the first one
/// that takes a value and the value when it is attached.
fn short_value(token: &str) -> Option<(char, Option<&str>)> {
    let cluster = token.strip_prefix('-').filter(|c| !c.starts_with('-'))?;
    let (at, option) = cluster
        .char_indices()
        .find(|(_, c)| PSQL_SHORT_VALUE.contains(*c))?;
    let rest = &cluster[at + option.len_utf8()..];
    Some((option, (!rest.is_empty()).then_some(rest)))
}

/// Where one of psql's scripts comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script<'a> {
    /// `-c SQL` / `--command=SQL`.
    Command,
    /// `-f FILE` / `--file=FILE`; `-` is stdin.
    File(Option<&'a str>),
}

/// The scripts psql arguments name (`-c`, `-f`), in order.
fn scripts(args: &[String]) -> Vec<Script<'_>> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let token = args[i].as_str();
        let next = args.get(i + 1).map(String::as_str);
        let (option, value) = match (short_value(token), token.strip_prefix("--")) {
            (Some((option, Some(attached))), _) => (Some(option), Some(attached)),
            (Some((option, None)), _) => {
                i += 1;
                (Some(option), next)
            }
            (None, Some(long)) => match long.split_once('=') {
                Some((name, value)) => (long_as_short(name), Some(value)),
                None if PSQL_LONG_VALUE.contains(&long) => {
                    i += 1;
                    (long_as_short(long), next)
                }
                None => (None, None),
            },
            (None, None) => (None, None),
        };
        match option {
            Some('c') => found.push(Script::Command),
            Some('f') => found.push(Script::File(value)),
            _ => {}
        }
        i += 1;
    }
    found
}

/// `command` and `file` as their short letters.
fn long_as_short(long: &str) -> Option<char> {
    match long {
        "command" => Some('c'),
        "file" => Some('f'),
        _ => None,
    }
}

/// Whether psql arguments read a script from stdin (`-f -`, `--file=-`…).
pub fn reads_stdin(args: &[String]) -> bool {
    scripts(args).contains(&Script::File(Some("-")))
}

/// What a psql run does with its standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinUse {
    /// Nothing: the scripts come from `-c` / `-f FILE` (and pgbench never reads it).
    Ignored,
    /// Its whole content is the script: `-f -`, or no `-c`/`-f` with stdin
    /// not a terminal (`psql < script.sql`, `echo … | psql`).
    Script,
    /// An interactive session: no `-c`/`-f` and stdin is a terminal.
    Interactive,
}

/// What psql with `args` does with a stdin that is (or is not) a terminal.
pub fn psql_stdin(args: &[String], stdin_is_terminal: bool) -> StdinUse {
    let scripts = scripts(args);
    if scripts.contains(&Script::File(Some("-"))) {
        StdinUse::Script
    } else if !scripts.is_empty() {
        StdinUse::Ignored
    } else if stdin_is_terminal {
        StdinUse::Interactive
    } else {
        StdinUse::Script
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn composite_split_table() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "sqlrs prepare:psql -- -f a.sql run:psql -- -f q.sql",
                "sqlrs prepare:psql -- -f a.sql",
                Some("run:psql -- -f q.sql"),
            ),
            ("sqlrs prepare db run q", "sqlrs prepare db", Some("run q")),
            (
                "sqlrs --output json prepare db run:psql -- -c select",
                "sqlrs --output json prepare db",
                Some("run:psql -- -c select"),
            ),
            // `run` as the value of a psql option is a file or a command.
            (
                "sqlrs prepare:psql -- -f run",
                "sqlrs prepare:psql -- -f run",
                None,
            ),
            (
                "sqlrs prepare:psql -- --file run",
                "sqlrs prepare:psql -- --file run",
                None,
            ),
            (
                "sqlrs prepare:psql -- -Xf run",
                "sqlrs prepare:psql -- -Xf run",
                None,
            ),
            (
                "sqlrs prepare:psql -- -v run -c run",
                "sqlrs prepare:psql -- -v run -c run",
                None,
            ),
            (
                "sqlrs prepare:psql -- -frun.sql run",
                "sqlrs prepare:psql -- -frun.sql",
                Some("run"),
            ),
            (
                "sqlrs prepare:psql -- --file=a.sql run:psql -- -f b.sql",
                "sqlrs prepare:psql -- --file=a.sql",
                Some("run:psql -- -f b.sql"),
            ),
            (
                "sqlrs prepare:psql -- -1 -f a.sql --set run run",
                "sqlrs prepare:psql -- -1 -f a.sql --set run",
                Some("run"),
            ),
            // `--output run` before `--` is sqlrs's own option value.
            (
                "sqlrs prepare --output run db run q",
                "sqlrs prepare --output run db",
                Some("run q"),
            ),
            // Only after a prepare command.
            ("sqlrs run:psql -- -f run", "sqlrs run:psql -- -f run", None),
            (
                "sqlrs plan:psql -- -f a.sql run",
                "sqlrs plan:psql -- -f a.sql run",
                None,
            ),
            (
                "sqlrs --output prepare ls",
                "sqlrs --output prepare ls",
                None,
            ),
            (
                "sqlrs prepare:psql -- -f a.sql run:pgbench -- -c 4 -T 10",
                "sqlrs prepare:psql -- -f a.sql",
                Some("run:pgbench -- -c 4 -T 10"),
            ),
            (
                "sqlrs prepare:lb -- update --changelog-file=db/changelog.xml run:psql -- -f t.sql",
                "sqlrs prepare:lb -- update --changelog-file=db/changelog.xml",
                Some("run:psql -- -f t.sql"),
            ),
            (
                "sqlrs prepare db --image pg:17 run:pgbench -- -S",
                "sqlrs prepare db --image pg:17",
                Some("run:pgbench -- -S"),
            ),
            // `--image run` names an image called `run`.
            (
                "sqlrs prepare:psql --image run -- -f a.sql run q",
                "sqlrs prepare:psql --image run -- -f a.sql",
                Some("run q"),
            ),
            // `--name run` names the instance `run`.
            (
                "sqlrs prepare db --name run run q",
                "sqlrs prepare db --name run",
                Some("run q"),
            ),
            (
                "sqlrs prepare:psql --ttl 2h --name run -- -f a.sql run:psql -- -c x",
                "sqlrs prepare:psql --ttl 2h --name run -- -f a.sql",
                Some("run:psql -- -c x"),
            ),
            (
                "sqlrs prepare db --name=run --keep run:pgbench -- -S",
                "sqlrs prepare db --name=run --keep",
                Some("run:pgbench -- -S"),
            ),
            (
                "sqlrs prepare:psql -- -f run:pgbench",
                "sqlrs prepare:psql -- -f run:pgbench",
                None,
            ),
            ("sqlrs", "sqlrs", None),
        ];
        for (line, head, run) in cases {
            let got = split_composite(&words(line));
            let want = Split {
                head: words(head),
                run: run.map(words),
            };
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn stdin_detection_table() {
        let cases = [
            ("-f -", true),
            ("-f-", true),
            ("-X -f -", true),
            ("-Xf -", true),
            ("--file -", true),
            ("--file=-", true),
            ("-1 -f a.sql -f -", true),
            ("-f a.sql", false),
            ("-c - -f a.sql", false),
            ("-v - -f x", false),
            ("--set - -f x", false),
            ("--command=-", false),
            ("-", false),
            ("", false),
        ];
        for (args, want) in cases {
            assert_eq!(reads_stdin(&words(args)), want, "{args}");
        }
    }

    #[test]
    fn psql_stdin_table() {
        use StdinUse::{Ignored, Interactive, Script};
        // (args, what psql does with stdin when it is a pipe, and when a terminal)
        let cases = [
            ("", Script, Interactive),
            ("-X -v x=1 -1", Script, Interactive),
            ("-f -", Script, Script),
            ("-f a.sql -f -", Script, Script),
            ("--file=-", Script, Script),
            ("-c select", Ignored, Ignored),
            ("--command select", Ignored, Ignored),
            ("--command=select", Ignored, Ignored),
            ("-Xc select", Ignored, Ignored),
            ("-f a.sql", Ignored, Ignored),
            ("-fa.sql", Ignored, Ignored),
            ("--file a.sql -v x=1", Ignored, Ignored),
            // Values of other options are not scripts.
            ("-v -f -o out.txt", Script, Interactive),
            ("--set=c=1", Script, Interactive),
        ];
        for (args, piped, terminal) in cases {
            assert_eq!(
                (
                    psql_stdin(&words(args), false),
                    psql_stdin(&words(args), true)
                ),
                (piped, terminal),
                "{args}"
            );
        }
    }
}
