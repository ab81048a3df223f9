//! DATABASECHANGELOG: what Liquibase recorded as applied, read over the same
//! TCP connection Liquibase uses, and the check that it is exactly the
//! planned prefix (the engine refuses to cache a state otherwise).

use std::time::Duration;

use super::{Jdbc, LbArgs, LbError, PlannedChangeset};

/// One row of DATABASECHANGELOG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedChangeset {
    pub id: String,
    pub author: String,
    pub filename: String,
    /// `MD5SUM`: the Liquibase checksum, e.g. `9:…`.
    pub checksum: Option<String>,
    pub order_executed: i32,
    /// `EXECUTED`, `MARK_RAN`, …
    pub exec_type: String,
}

impl AppliedChangeset {
    /// Whether this row records `planned` (same id, author, file and checksum).
    pub fn records(&self, planned: &PlannedChangeset) -> bool {
        self.id == planned.id
            && self.author == planned.author
            && self.filename == planned.filename
            && self.checksum.as_deref() == Some(planned.checksum.as_str())
    }

    fn label(&self) -> String {
        format!(
            "{}::{}::{} (checksum {})",
            self.filename,
            self.id,
            self.author,
            self.checksum.as_deref().unwrap_or("none")
        )
    }
}

/// The DATABASECHANGELOG rows of the database at `conn`, in execution order
/// (none when Liquibase has not created the table yet). The table lives in
/// the `--default-schema-name` schema when one is given, else `public`.
pub async fn applied(conn: &Jdbc, args: &LbArgs) -> Result<Vec<AppliedChangeset>, LbError> {
    let db_err = |action| {
        let url = conn.url();
        move |source| LbError::Database {
            action,
            url,
            source,
        }
    };
    let (client, connection) = tokio_postgres::Config::new()
        .host(&conn.host)
        .port(conn.port)
        .user(&conn.user)
        .password(&conn.password)
        .dbname(&conn.database)
        .application_name("sqlrsd")
        .connect_timeout(Duration::from_secs(10))
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(db_err("connecting to read DATABASECHANGELOG"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("DATABASECHANGELOG connection closed: {e}");
        }
    });
    let schema = args.default_schema.as_deref().unwrap_or("public");
    let sql = format!(
        "SELECT id, author, filename, md5sum, orderexecuted, exectype \
         FROM {}.databasechangelog ORDER BY orderexecuted, dateexecuted",
        quote_ident(schema)
    );
    let rows = match client.query(&sql, &[]).await {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(db_err("reading DATABASECHANGELOG")(e)),
    };
    Ok(rows
        .iter()
        .map(|r| AppliedChangeset {
            id: r.get(0),
            author: r.get(1),
            filename: r.get(2),
            checksum: r.get(3),
            order_executed: r.get(4),
            exec_type: r.get(5),
        })
        .collect())
}

/// A schema name as Liquibase writes it for PostgreSQL: bare when it is a
/// plain lower-case identifier, else quoted.
fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Checks that `applied` records exactly `expected` (the plan's first
/// changesets), in order: after step k the engine passes `&plan[..=k]`.
pub fn check_applied(
    applied: &[AppliedChangeset],
    expected: &[PlannedChangeset],
) -> Result<(), LbError> {
    let mismatch = |expected_row: String, found: String| LbError::Mismatch {
        step: expected.len(),
        expected: expected_row,
        found,
    };
    if let Some(rerun) = applied.iter().find(|r| r.exec_type == "RERAN") {
        return Err(LbError::RunAlways {
            changeset: format!("{}::{}::{}", rerun.filename, rerun.id, rerun.author),
        });
    }
    for (i, planned) in expected.iter().enumerate() {
        let want = || {
            format!(
                "{} (checksum {}) at position {}",
                planned.label(),
                planned.checksum,
                i + 1
            )
        };
        match applied.get(i) {
            Some(row) if row.records(planned) => {}
            Some(row) => return Err(mismatch(want(), row.label())),
            None => return Err(mismatch(want(), format!("only {} rows", applied.len()))),
        }
    }
    match applied.get(expected.len()) {
        Some(extra) => Err(mismatch(
            format!("{} rows", expected.len()),
            format!("also {}", extra.label()),
        )),
        None => Ok(()),
    }
}
