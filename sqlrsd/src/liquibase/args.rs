//! The arguments of `prepare:lb -- …`: Liquibase's `update` with the options
//! that choose what it runs; connection options are refused because sqlrs
//! supplies the connection.

use std::collections::BTreeMap;

use super::LbError;

/// What `prepare:lb` / `plan:lb` run: Liquibase `update` with these options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LbArgs {
    /// `--changelog-file` as given: the root changelog, resolved against the
    /// search path like Liquibase does.
    pub changelog_file: String,
    /// `--search-path` entries (comma separated on the command line), relative
    /// to the working directory; empty means the working directory alone.
    pub search_path: Vec<String>,
    /// `--contexts` (`--context-filter`): Liquibase's context expression.
    pub contexts: Option<String>,
    /// `--label-filter` (`--labels`): Liquibase's label expression.
    pub labels: Option<String>,
    /// `--default-schema-name`: where Liquibase creates objects and its
    /// DATABASECHANGELOG table.
    pub default_schema: Option<String>,
    /// `-Dname=value` changelog parameters; a repeated name keeps its last value.
    pub params: BTreeMap<String, String>,
}

/// Options that pick what `update` runs, by their normalised name (lower case,
/// without dashes or underscores, so `--changelog-file`, `--changeLogFile` and
/// `--changelog_file` are one option, as in Liquibase).
const OPTIONS: &[(&str, Opt)] = &[
    ("changelogfile", Opt::ChangelogFile),
    ("searchpath", Opt::SearchPath),
    ("contexts", Opt::Contexts),
    ("contextfilter", Opt::Contexts),
    ("labelfilter", Opt::Labels),
    ("labels", Opt::Labels),
    ("defaultschemaname", Opt::DefaultSchema),
];

/// Options that say how to reach a database: sqlrs decides that.
const CONNECTION_OPTIONS: &[&str] = &[
    "url",
    "username",
    "password",
    "driver",
    "driverpropertiesfile",
    "classpath",
    "defaultsfile",
    "databaseclass",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    ChangelogFile,
    SearchPath,
    Contexts,
    Labels,
    DefaultSchema,
}

/// Parses what follows `prepare:lb --`: `update` plus `--changelog-file`,
/// `--search-path`, `--contexts`, `--label-filter`, `--default-schema-name`
/// (each as `--name value` or `--name=value`, before or after `update`, with
/// Liquibase's camelCase spellings) and `-Dname=value` parameters.
pub fn parse_args(args: &[String]) -> Result<LbArgs, LbError> {
    let mut out = LbArgs::default();
    let mut changelog = None;
    let mut search_path = None;
    let mut command = false;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if let Some(param) = arg.strip_prefix("-D") {
            let (name, value) = param
                .split_once('=')
                .filter(|(name, _)| !name.is_empty())
                .ok_or_else(|| LbError::BadParameter { arg: arg.clone() })?;
            out.params.insert(name.to_owned(), value.to_owned());
        } else if let Some(option) = arg.strip_prefix("--") {
            let (name, inline) = match option.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (option, None),
            };
            let flag = format!("--{name}");
            let key = normalise(name);
            if CONNECTION_OPTIONS.contains(&key.as_str()) || key.starts_with("reference") {
                return Err(LbError::ConnectionOption { option: flag });
            }
            let Some(&(_, opt)) = OPTIONS.iter().find(|(k, _)| *k == key) else {
                return Err(LbError::UnknownOption { option: flag });
            };
            let value = match inline {
                Some(value) => value,
                None if i < args.len() && !args[i].starts_with('-') => {
                    i += 1;
                    args[i - 1].clone()
                }
                None => return Err(LbError::MissingValue { option: flag }),
            };
            if value.trim().is_empty() {
                return Err(LbError::MissingValue { option: flag });
            }
            let slot = match opt {
                Opt::ChangelogFile => &mut changelog,
                Opt::SearchPath => &mut search_path,
                Opt::Contexts => &mut out.contexts,
                Opt::Labels => &mut out.labels,
                Opt::DefaultSchema => &mut out.default_schema,
            };
            if slot.is_some() {
                return Err(LbError::RepeatedOption { option: flag });
            }
            *slot = Some(value.trim().to_owned());
        } else if arg.starts_with('-') {
            return Err(LbError::UnknownOption {
                option: arg.clone(),
            });
        } else if command {
            return Err(LbError::UnexpectedArgument { arg: arg.clone() });
        } else if arg == "update" {
            command = true;
        } else {
            return Err(LbError::UnsupportedCommand {
                command: arg.clone(),
            });
        }
    }
    if !command {
        return Err(LbError::NoCommand);
    }
    out.changelog_file = changelog.ok_or(LbError::NoChangelog)?;
    out.search_path = search_path
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(out)
}

fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '-' && *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl LbArgs {
    /// The options after the Liquibase command, for a changelog named
    /// `changelog` in the search path sqlrs passes itself. `-D` parameters
    /// go after the command (Liquibase 4.28 rejects them before it).
    pub(crate) fn command_options(&self, changelog: &str) -> Vec<String> {
        let mut out = vec![format!("--changelog-file={changelog}")];
        if let Some(c) = &self.contexts {
            out.push(format!("--contexts={c}"));
        }
        if let Some(l) = &self.labels {
            out.push(format!("--label-filter={l}"));
        }
        if let Some(s) = &self.default_schema {
            out.push(format!("--default-schema-name={s}"));
        }
        out.extend(self.params.iter().map(|(k, v)| format!("-D{k}={v}")));
        out
    }

    /// Feeds the options that change what the changesets do (not the paths)
    /// into `h`: contexts, labels, default schema and parameters.
    pub(crate) fn hash_effect(&self, h: &mut crate::ids::FieldHasher) {
        for opt in [&self.contexts, &self.labels, &self.default_schema] {
            match opt {
                Some(v) => h.field(b"1").field(v.as_bytes()),
                None => h.field(b"0"),
            };
        }
        h.field(&(self.params.len() as u64).to_le_bytes());
        for (k, v) in &self.params {
            h.field(k.as_bytes()).field(v.as_bytes());
        }
    }
}
