//! The Liquibase command line: finding it, and running `update-sql` (the
//! plan) and `update-count --count 1` (one changeset) against a database
//! sqlrs chose, with an environment sqlrs controls.
//!
//! Every run gets a fixed environment: no inherited `LIQUIBASE_*` variables
//! and `--defaults-file=/dev/null` (so no `liquibase.properties` can change
//! the connection or the changelog), the connection in
//! `LIQUIBASE_COMMAND_URL/USERNAME/PASSWORD` (never on the command line),
//! UTF-8 file reading, no banner and no analytics, and JVM options that
//! halve start-up time (`-XX:TieredStopAtLevel=1 -XX:+UseSerialGC`), plus,
//! with [`Liquibase::with_class_cache`], a class-data-sharing archive that
//! saves about 0.4 s more per run. The launcher is a shell script that
//! starts `java` as its child, so each run leads its own process group and
//! cancelling kills the whole group.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::closure::normalize_name;
use super::{ENV_EXEC, LbArgs, LbError, PlannedChangeset};
use crate::ids::FieldHasher;

/// Options for the JVM: client compiler only and the serial collector start
/// Liquibase about twice as fast; files are read as UTF-8 whatever the locale.
const JAVA_OPTS: &str = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dfile.encoding=UTF-8 \
     -Dliquibase.analytics.enabled=false";

/// Where to reach the database Liquibase works on (a build server of sqlrs).
#[derive(Clone, PartialEq, Eq)]
pub struct Jdbc {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
}

impl Jdbc {
    /// The superuser `postgres` on database `postgres` at 127.0.0.1:`port`
    /// (a native server, or a Docker container's published loopback port).
    pub fn loopback(port: u16, password: &str) -> Self {
        Jdbc {
            host: "127.0.0.1".into(),
            port,
            database: "postgres".into(),
            user: "postgres".into(),
            password: password.into(),
        }
    }

    /// `jdbc:postgresql://HOST:PORT/DATABASE`.
    pub fn url(&self) -> String {
        format!(
            "jdbc:postgresql://{}:{}/{}",
            self.host, self.port, self.database
        )
    }
}

impl fmt::Debug for Jdbc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jdbc")
            .field("url", &self.url())
            .field("user", &self.user)
            .field("password", &"…")
            .finish()
    }
}

/// An installed Liquibase, as `liquibase --version` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liquibase {
    /// The launcher run for every command.
    pub exec: PathBuf,
    /// e.g. `4.28.0`.
    pub version: String,
    /// The Java it runs on, e.g. `17.0.15 (/usr/lib/jvm/java-17-openjdk-amd64)`.
    pub java: String,
    /// Folder of the class-data-sharing archive, if one is kept.
    class_cache: Option<PathBuf>,
}

/// What a successful Liquibase run printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbOutput {
    pub stdout: String,
    pub stderr: String,
}

/// Finds the Liquibase launcher without running it: `SQLRS_LIQUIBASE`, else
/// `configured` (the `liquibase.exec` setting), else `liquibase` on `PATH`.
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, LbError> {
    locate_in(
        std::env::var_os(ENV_EXEC),
        configured,
        std::env::var_os("PATH"),
    )
}

/// [`locate`] with the environment given.
pub(crate) fn locate_in(
    env_exec: Option<OsString>,
    configured: Option<&Path>,
    path: Option<OsString>,
) -> Result<PathBuf, LbError> {
    if let Some(env) = env_exec.filter(|v| !v.is_empty()) {
        return executable(PathBuf::from(env), ENV_EXEC);
    }
    if let Some(path) = configured {
        return executable(path.to_owned(), "the liquibase.exec setting");
    }
    std::env::split_paths(&path.unwrap_or_default())
        .map(|dir| dir.join("liquibase"))
        .find(|p| is_executable(p))
        .ok_or_else(|| LbError::NotFound {
            searched: format!("{ENV_EXEC} is not set, no liquibase.exec setting, none on PATH"),
        })
}

fn executable(path: PathBuf, origin: &'static str) -> Result<PathBuf, LbError> {
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(LbError::NotExecutable { origin, path })
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds Liquibase ([`locate`]) and asks it its version and Java
/// (`liquibase --version`, which starts a JVM: about 1.5 s).
pub fn discover(configured: Option<&Path>) -> Result<Liquibase, LbError> {
    let exec = locate(configured)?;
    let out = std::process::Command::new(&exec)
        .env_clear()
        .envs(base_env())
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LbError::Launch {
            exec: exec.clone(),
            source,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match parse_version(&text) {
        Some((version, java)) if out.status.success() => Ok(Liquibase {
            exec,
            version,
            java,
            class_cache: None,
        }),
        _ => Err(LbError::NoVersion {
            exec,
            output: tail(&text, 10),
        }),
    }
}

/// (version, java) from `liquibase --version`: the `Liquibase Version: X`
/// line and `Java Home DIR (Version V)`.
pub(crate) fn parse_version(text: &str) -> Option<(String, String)> {
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Liquibase Version:"))?
        .trim()
        .to_owned();
    let java = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Java Home"))
        .map(|rest| {
            let rest = rest.trim();
            match rest.rsplit_once("(Version ") {
                Some((home, v)) => format!("{} ({})", v.trim_end_matches(')').trim(), home.trim()),
                None => rest.to_owned(),
            }
        })
        .unwrap_or_else(|| "unknown Java".into());
    (!version.is_empty()).then_some((version, java))
}

/// The environment every Liquibase run starts from.
fn base_env() -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![
        (
            "PATH".into(),
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("LANG".into(), "C.UTF-8".into()),
        ("LIQUIBASE_SHOW_BANNER".into(), "false".into()),
        ("JAVA_OPTS".into(), JAVA_OPTS.into()),
    ];
    for keep in ["HOME", "JAVA_HOME", "TMPDIR"] {
        if let Some(v) = std::env::var_os(keep) {
            env.push((keep.into(), v));
        }
    }
    env
}

/// Names the archives being written, so concurrent runs never share one.
static ARCHIVE_SEQ: AtomicU64 = AtomicU64::new(0);

/// The JVM options of one run and, when it writes a class-data archive,
/// (the file it writes, where that goes once complete).
struct JvmOptions {
    java_opts: String,
    archive: Option<(PathBuf, PathBuf)>,
}

impl Liquibase {
    /// Keeps a class-data-sharing archive of the classes Liquibase loads in
    /// `dir` (about 27 MB, one per launcher, Liquibase and Java): the first
    /// run writes it (a second or two more, once), later runs map it and
    /// start about 0.4 s sooner. Java ignores an archive that does not match.
    /// A `dir` whose path holds white space is not used (the launcher splits
    /// `JAVA_OPTS` at spaces).
    pub fn with_class_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.class_cache = Some(dir.into());
        self
    }

    /// The class-data archive this Liquibase uses, when it keeps one.
    pub fn class_archive(&self) -> Option<PathBuf> {
        let dir = self.class_cache.as_ref()?;
        let mut h = FieldHasher::new("lb-class-archive");
        h.field(self.exec.as_os_str().as_encoded_bytes())
            .field(self.version.as_bytes())
            .field(self.java.as_bytes());
        Some(dir.join(format!("liquibase-{}.jsa", &h.finish().to_hex()[..16])))
    }

    fn jvm_options(&self) -> JvmOptions {
        let mut java_opts = JAVA_OPTS.to_owned();
        let mut archive = None;
        // The launcher splits JAVA_OPTS at spaces: an archive path with one
        // cannot be passed.
        let archive_path = self
            .class_archive()
            .filter(|p| p.to_str().is_some_and(|s| !s.contains(char::is_whitespace)));
        if let Some(done) = archive_path {
            if done.is_file() {
                java_opts.push_str(&format!(" -XX:SharedArchiveFile={}", done.display()));
            } else if done
                .parent()
                .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            {
                let seq = ARCHIVE_SEQ.fetch_add(1, Ordering::Relaxed);
                let writing = done.with_extension(format!("{}-{seq}.tmp", std::process::id()));
                java_opts.push_str(&format!(" -XX:ArchiveClassesAtExit={}", writing.display()));
                archive = Some((writing, done));
            }
            // Java's notes about classes it leaves out go to stdout otherwise.
            java_opts.push_str(" -Xlog:disable");
        }
        JvmOptions { java_opts, archive }
    }

    /// The changesets `update` would run on the empty database `conn`, in
    /// order, from `update-sql` (which prints the SQL without running it, so
    /// the database stays untouched). `root` is the search-path folder
    /// holding the materialised closure.
    pub async fn plan(
        &self,
        conn: &Jdbc,
        root: &Path,
        args: &LbArgs,
        cancel: &CancellationToken,
    ) -> Result<Vec<PlannedChangeset>, LbError> {
        let out = self
            .run(conn, root, args, "update-sql", &[], cancel)
            .await?;
        parse_update_sql(&out.stdout).map_err(|problem| LbError::PlanOutput { problem })
    }

    /// Applies exactly the next pending changeset (`update-count --count 1`).
    /// Cancelling kills Liquibase's JVM. On failure the error carries
    /// Liquibase's own message and the changeset it was running.
    pub async fn update_one(
        &self,
        conn: &Jdbc,
        root: &Path,
        args: &LbArgs,
        cancel: &CancellationToken,
    ) -> Result<LbOutput, LbError> {
        self.run(conn, root, args, "update-count", &["--count=1"], cancel)
            .await
    }

    async fn run(
        &self,
        conn: &Jdbc,
        root: &Path,
        args: &LbArgs,
        command: &'static str,
        extra: &[&str],
        cancel: &CancellationToken,
    ) -> Result<LbOutput, LbError> {
        let changelog = normalize_name(&args.changelog_file);
        let jvm = self.jvm_options();
        let mut cmd = Command::new(&self.exec);
        cmd.env_clear()
            .envs(base_env())
            .env("JAVA_OPTS", &jvm.java_opts)
            .env("LIQUIBASE_COMMAND_URL", conn.url())
            .env("LIQUIBASE_COMMAND_USERNAME", &conn.user)
            .env("LIQUIBASE_COMMAND_PASSWORD", &conn.password)
            .arg("--defaults-file=/dev/null")
            .arg(format!("--search-path={}", root.display()))
            .arg(command)
            .args(extra)
            .args(args.command_options(&changelog))
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| LbError::Launch {
            exec: self.exec.clone(),
            source,
        })?;
        let group = ProcessGroup(child.id());
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let waited = async {
            tokio::select! {
                status = child.wait() => Some(status),
                () = cancel.cancelled() => {
                    group.kill();
                    let _ = child.wait().await;
                    None
                }
            }
        };
        let (status, out, err) = tokio::join!(waited, read_all(stdout), read_all(stderr));
        if let Some((writing, done)) = &jvm.archive {
            // Complete only after a normal exit: a killed JVM leaves nothing or a stub.
            if status.is_some() && std::fs::metadata(writing).is_ok_and(|m| m.len() > 0) {
                let _ = std::fs::rename(writing, done);
            }
            let _ = std::fs::remove_file(writing);
        }
        let status: ExitStatus =
            status
                .ok_or(LbError::Cancelled)?
                .map_err(|source| LbError::Launch {
                    exec: self.exec.clone(),
                    source,
                })?;
        let stdout = String::from_utf8_lossy(&out).into_owned();
        let stderr = String::from_utf8_lossy(&err).into_owned();
        if status.success() {
            Ok(LbOutput { stdout, stderr })
        } else {
            let (message, changeset) = failure(&stdout, &stderr);
            Err(LbError::Failed {
                command,
                message,
                changeset,
                stdout,
                stderr,
            })
        }
    }
}

/// The process group a Liquibase run leads; killed if the run is dropped
/// (`kill_on_drop` alone would kill only the launcher shell, not its JVM).
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    fn kill(&self) {
        if let Some(pgid) = self
            .0
            .and_then(|p| libc::pid_t::try_from(p).ok())
            .filter(|&p| p > 1)
        {
            // SAFETY: `pgid` is a positive process group id other than init's,
            // the group this run's launcher leads.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // After a normal exit the group is empty and this is a no-op.
        self.kill();
    }
}

async fn read_all(mut pipe: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Err(e) = pipe.read_to_end(&mut buf).await {
        tracing::debug!("reading Liquibase output: {e}");
    }
    buf
}

/// Liquibase's explanation of a failure and the changeset it was running:
/// the paragraph after `Unexpected error running Liquibase:` (up to its
/// `For more information` hint), else the end of its output.
pub(crate) fn failure(stdout: &str, stderr: &str) -> (String, Option<String>) {
    const MARK: &str = "Unexpected error running Liquibase:";
    let running = stderr
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("Running Changeset:"))
        .map(|c| c.trim().to_owned());
    let explained = [stderr, stdout]
        .into_iter()
        .find_map(|t| t.find(MARK).map(|at| &t[at + MARK.len()..]));
    let message = match explained {
        Some(text) => {
            let text = text
                .find("For more information, please use the --log-level flag")
                .map_or(text, |end| &text[..end]);
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        }
        None => {
            let noise = [
                "Starting Liquibase at",
                "Liquibase Version:",
                "Liquibase Open Source",
            ];
            let lines: Vec<&str> = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !noise.iter().any(|n| l.starts_with(n)))
                .collect();
            if lines.is_empty() {
                tail(stdout, 10)
            } else {
                lines[lines.len().saturating_sub(10)..].join("\n")
            }
        }
    };
    let changeset = running.or_else(|| {
        let at = message.find("Migration failed for changeset ")?;
        let rest = &message[at + "Migration failed for changeset ".len()..];
        let end = rest.find(":\n").or_else(|| rest.rfind(':'))?;
        Some(rest[..end].trim().to_owned())
    });
    (message, changeset)
}

/// The last `n` non-empty lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The changesets in `update-sql` output: each is announced by the
/// `INSERT INTO <schema>.databasechangelog (ID, AUTHOR, FILENAME, …) VALUES
/// (…);` statement that would record it.
pub(crate) fn parse_update_sql(stdout: &str) -> Result<Vec<PlannedChangeset>, String> {
    let mut out = Vec::new();
    let mut offset = 0;
    for line in stdout.split_inclusive('\n') {
        let at = offset;
        offset += line.len();
        let Some(rest) = line.strip_prefix("INSERT INTO ") else {
            continue;
        };
        let Some((table, _)) = rest.split_once(" (") else {
            continue;
        };
        let table = table.trim_matches('"').to_ascii_lowercase();
        if table != "databasechangelog" && !table.ends_with(".databasechangelog") {
            continue;
        }
        let row = parse_insert(&stdout[at..]).map_err(|e| {
            format!(
                "{e} in `{}`",
                line.trim_end().chars().take(200).collect::<String>()
            )
        })?;
        out.push(row);
    }
    Ok(out)
}

/// A value of an INSERT statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SqlValue {
    Text(String),
    Null,
    /// A number or an expression such as `NOW()`.
    Other(String),
}

/// Reads one `INSERT INTO t (COLS) VALUES (VALUES);` at the start of `text`.
fn parse_insert(text: &str) -> Result<PlannedChangeset, String> {
    let open = text.find('(').ok_or("no column list")?;
    let close = open + text[open..].find(')').ok_or("unterminated column list")?;
    let columns: Vec<String> = text[open + 1..close]
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_ascii_uppercase())
        .collect();
    let rest = text[close + 1..].trim_start();
    let rest = rest
        .strip_prefix("VALUES")
        .ok_or("no VALUES after the column list")?
        .trim_start();
    let values = parse_values(rest)?;
    if values.len() != columns.len() {
        return Err(format!(
            "{} columns but {} values",
            columns.len(),
            values.len()
        ));
    }
    let get = |name: &str| -> Option<&SqlValue> {
        columns.iter().position(|c| c == name).map(|i| &values[i])
    };
    let text_of = |name: &str| -> Result<String, String> {
        match get(name) {
            Some(SqlValue::Text(s)) => Ok(s.clone()),
            Some(SqlValue::Null) | None => Ok(String::new()),
            Some(SqlValue::Other(s)) => Err(format!("{name} is {s}, not a string")),
        }
    };
    let optional = |name: &str| -> Option<String> {
        match get(name) {
            Some(SqlValue::Text(s)) => Some(s.clone()),
            _ => None,
        }
    };
    let required = |name: &str| -> Result<String, String> {
        match get(name) {
            Some(SqlValue::Text(s)) => Ok(s.clone()),
            _ => Err(format!("no {name} value")),
        }
    };
    Ok(PlannedChangeset {
        id: required("ID")?,
        author: required("AUTHOR")?,
        filename: required("FILENAME")?,
        checksum: required("MD5SUM")?,
        description: text_of("DESCRIPTION")?,
        comments: text_of("COMMENTS")?,
        exec_type: text_of("EXECTYPE")?,
        contexts: optional("CONTEXTS"),
        labels: optional("LABELS"),
        liquibase: text_of("LIQUIBASE")?,
    })
}

/// `(v1, v2, …)` with SQL string literals (`''` escapes a quote; they may
/// span lines), `NULL`, numbers and calls like `NOW()`.
fn parse_values(text: &str) -> Result<Vec<SqlValue>, String> {
    let mut chars = text.char_indices().peekable();
    if chars.next().map(|(_, c)| c) != Some('(') {
        return Err("no ( after VALUES".into());
    }
    let mut values = Vec::new();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let value = match chars.peek().copied() {
            None => return Err("unterminated VALUES".into()),
            Some((_, '\'')) => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated string".into()),
                        Some((_, '\'')) => {
                            if chars.next_if(|(_, c)| *c == '\'').is_some() {
                                s.push('\'');
                            } else {
                                break;
                            }
                        }
                        Some((_, c)) => s.push(c),
                    }
                }
                SqlValue::Text(s)
            }
            Some(_) => {
                let mut raw = String::new();
                let mut depth = 0u32;
                while let Some(&(_, c)) = chars.peek() {
                    match c {
                        '(' => depth += 1,
                        ')' if depth == 0 => break,
                        ')' => depth -= 1,
                        ',' if depth == 0 => break,
                        _ => {}
                    }
                    raw.push(c);
                    chars.next();
                }
                let raw = raw.trim().to_owned();
                if raw.eq_ignore_ascii_case("NULL") {
                    SqlValue::Null
                } else {
                    SqlValue::Other(raw)
                }
            }
        };
        values.push(value);
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        match chars.next() {
            Some((_, ',')) => {}
            Some((_, ')')) => return Ok(values),
            Some((_, c)) => return Err(format!("unexpected {c:?} in VALUES")),
            None => return Err("unterminated VALUES".into()),
        }
    }
}
