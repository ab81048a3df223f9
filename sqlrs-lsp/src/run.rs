//! Running one statement on an instance: the simple query protocol, streamed
//! so that rows past the limit are counted but not kept, with notices,
//! errors (SQLSTATE, position) and cancellation.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, pin_mut};
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

use crate::ext::{Column, Notice, ResultSet};

/// How often a cancel request is repeated while the statement still runs.
const CANCEL_RETRY: Duration = Duration::from_millis(500);

/// What running a statement gave.
#[derive(Debug, Default)]
pub struct Outcome {
    pub results: Vec<ResultSet>,
    pub notices: Vec<Notice>,
    pub error: Option<SqlError>,
    /// Time from sending the statement to its last message.
    pub elapsed_ms: f64,
}

/// An error, with its position as PostgreSQL gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlError {
    pub message: String,
    pub code: Option<String>,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the statement.
    pub position: Option<u32>,
}

impl SqlError {
    fn from_pg(e: &tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => SqlError {
                message: db.message().to_owned(),
                code: Some(db.code().code().to_owned()),
                detail: db.detail().map(str::to_owned),
                hint: db.hint().map(str::to_owned),
                position: match db.position() {
                    Some(tokio_postgres::error::ErrorPosition::Original(p)) => Some(*p),
                    _ => None,
                },
            },
            None => SqlError {
                message: e.to_string(),
                code: None,
                detail: None,
                hint: None,
                position: None,
            },
        }
    }
}

/// Runs `sql` on the server at `dsn`, keeping at most `row_limit` rows per
/// result; `cancel` turning true cancels the statement on the server.
pub async fn run(dsn: &str, sql: &str, row_limit: usize, cancel: watch::Receiver<bool>) -> Outcome {
    let (client, mut connection) = match tokio_postgres::connect(dsn, NoTls).await {
        Ok(pair) => pair,
        Err(e) => {
            return Outcome {
                error: Some(SqlError::from_pg(&e)),
                ..Outcome::default()
            };
        }
    };
    let (notice_tx, mut notice_rx) = mpsc::unbounded_channel();
    let connection = tokio::spawn(async move {
        while let Some(message) =
            futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await
        {
            match message {
                Ok(AsyncMessage::Notice(n)) => {
                    let _ = notice_tx.send(Notice {
                        severity: n.severity().to_owned(),
                        message: n.message().to_owned(),
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("connection ended: {e}");
                    break;
                }
            }
        }
    });
    if *cancel.borrow() {
        return Outcome {
            error: Some(SqlError {
                message: "cancelled before it was sent".into(),
                code: None,
                detail: None,
                hint: None,
                position: None,
            }),
            ..Outcome::default()
        };
    }
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        let mut cancel = cancel;
        if cancel.wait_for(|c| *c).await.is_err() {
            return;
        }
        // A cancel request that reaches the server before the statement
        // does is lost: ask again until the statement ends (this task is
        // then stopped).
        loop {
            if let Err(e) = token.cancel_query(NoTls).await {
                tracing::warn!("cannot cancel the statement: {e}");
            }
            tokio::time::sleep(CANCEL_RETRY).await;
        }
    });
    let started = Instant::now();
    let mut outcome = Outcome::default();
    match client.simple_query_raw(sql).await {
        Ok(stream) => {
            pin_mut!(stream);
            let mut current: Option<ResultSet> = None;
            while let Some(message) = stream.next().await {
                match message {
                    Ok(SimpleQueryMessage::RowDescription(columns)) => {
                        current = Some(result_set(
                            columns
                                .iter()
                                .map(|c| Column {
                                    name: c.name().to_owned(),
                                    type_name: None,
                                })
                                .collect(),
                        ));
                    }
                    Ok(SimpleQueryMessage::Row(row)) => {
                        let set = current.get_or_insert_with(|| result_set(Vec::new()));
                        set.row_count += 1;
                        if set.rows.len() < row_limit {
                            set.rows.push(
                                (0..row.len())
                                    .map(|i| row.get(i).map(str::to_owned))
                                    .collect(),
                            );
                        } else {
                            set.truncated = true;
                        }
                    }
                    Ok(SimpleQueryMessage::CommandComplete(count)) => {
                        let mut set = current.take().unwrap_or_else(|| result_set(Vec::new()));
                        set.row_count = count;
                        set.command = command_tag(sql, !set.columns.is_empty(), count);
                        outcome.results.push(set);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        outcome.error = Some(SqlError::from_pg(&e));
                        break;
                    }
                }
            }
        }
        Err(e) => outcome.error = Some(SqlError::from_pg(&e)),
    }
    outcome.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    canceller.abort();
    if outcome.error.is_none() {
        describe_types(&client, sql, &mut outcome.results).await;
    }
    drop(client);
    let _ = connection.await;
    while let Ok(notice) = notice_rx.try_recv() {
        outcome.notices.push(notice);
    }
    outcome
}

fn result_set(columns: Vec<Column>) -> ResultSet {
    ResultSet {
        columns,
        rows: Vec::new(),
        row_count: 0,
        truncated: false,
        command: String::new(),
    }
}

/// Fills in the column types of a single result by describing the statement
/// (parsed, not run again); left empty when it cannot be described.
async fn describe_types(client: &tokio_postgres::Client, sql: &str, results: &mut [ResultSet]) {
    let [set] = results else { return };
    if set.columns.is_empty() {
        return;
    }
    let Ok(statement) = client.prepare(sql).await else {
        return;
    };
    if statement.columns().len() != set.columns.len() {
        return;
    }
    for (column, described) in set.columns.iter_mut().zip(statement.columns()) {
        column.type_name = Some(described.type_().name().to_owned());
    }
}

/// The command tag PostgreSQL gives `sql` (the simple protocol hands out
/// only the count): `SELECT n`, `INSERT 0 n`, `UPDATE n`, `CREATE TABLE`, …
pub fn command_tag(sql: &str, returned_rows: bool, count: u64) -> String {
    let words = top_level_words(sql);
    let word = |i: usize| words.get(i).map_or("", String::as_str);
    let mut verb_at = 0;
    if word(0) == "WITH" {
        verb_at = words
            .iter()
            .position(|w| {
                matches!(
                    w.as_str(),
                    "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "VALUES" | "TABLE"
                )
            })
            .unwrap_or(0);
    }
    let verb = word(verb_at);
    match verb {
        "INSERT" => format!("INSERT 0 {count}"),
        "SELECT" | "VALUES" | "TABLE" => format!("SELECT {count}"),
        "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY" => format!("{verb} {count}"),
        "CREATE" | "DROP" | "ALTER" => {
            let skip = [
                "OR",
                "REPLACE",
                "TEMP",
                "TEMPORARY",
                "UNLOGGED",
                "UNIQUE",
                "GLOBAL",
                "LOCAL",
                "TRUSTED",
                "PROCEDURAL",
                "DEFAULT",
                "RECURSIVE",
            ];
            let rest: Vec<&str> = words[verb_at + 1..]
                .iter()
                .map(String::as_str)
                .skip_while(|w| skip.contains(w))
                .collect();
            let object = match rest.as_slice() {
                [
                    a @ ("FOREIGN" | "MATERIALIZED" | "EVENT" | "TEXT" | "ACCESS"),
                    b,
                    ..,
                ] => {
                    format!("{a} {b}")
                }
                ["USER", "MAPPING", ..] => "USER MAPPING".to_owned(),
                [a, ..] => (*a).to_owned(),
                [] => String::new(),
            };
            let selects = verb == "CREATE"
                && matches!(object.as_str(), "TABLE" | "MATERIALIZED VIEW")
                && rest.contains(&"AS");
            if selects {
                format!("SELECT {count}")
            } else {
                format!("{verb} {object}").trim_end().to_owned()
            }
        }
        "START" => "START TRANSACTION".into(),
        "END" => "COMMIT".into(),
        "ABORT" => "ROLLBACK".into(),
        "TRUNCATE" => "TRUNCATE TABLE".into(),
        _ if returned_rows && verb.is_empty() => format!("SELECT {count}"),
        _ => verb.to_owned(),
    }
}

/// The words of `sql` outside parentheses, literals and comments, upper-cased
/// (the first 16).
fn top_level_words(sql: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut depth = 0u32;
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if words.len() >= 16 {
            break;
        }
        match c {
            '-' if sql[i..].starts_with("--") => {
                while chars.next_if(|(_, c)| *c != '\n').is_some() {}
            }
            '/' if sql[i..].starts_with("/*") => {
                let mut nest = 0;
                let mut j = i;
                while j < sql.len() {
                    if sql[j..].starts_with("/*") {
                        nest += 1;
                        j += 2;
                    } else if sql[j..].starts_with("*/") {
                        nest -= 1;
                        j += 2;
                        if nest == 0 {
                            break;
                        }
                    } else {
                        j += sql[j..].chars().next().map_or(1, char::len_utf8);
                    }
                }
                while chars.next_if(|(k, _)| *k < j).is_some() {}
            }
            '\'' | '"' => {
                while chars.next_if(|(_, q)| *q != c).is_some() {}
                chars.next();
            }
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = i + 1;
                while let Some((k, _)) =
                    chars.next_if(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
                {
                    end = k + 1;
                }
                if depth == 0 {
                    words.push(sql[i..end].to_ascii_uppercase());
                }
            }
            _ => {}
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tags_table() {
        // (statement, returned rows, count, tag)
        let cases = [
            ("select 1", true, 1, "SELECT 1"),
            ("  -- c\n /* x */ SELECT * from t", true, 7, "SELECT 7"),
            ("insert into t values (1), (2)", false, 2, "INSERT 0 2"),
            (
                "insert into t values (1) returning id",
                true,
                1,
                "INSERT 0 1",
            ),
            ("update t set a = 1", false, 3, "UPDATE 3"),
            ("delete from t", false, 0, "DELETE 0"),
            (
                "with x as (delete from t returning *) select * from x",
                true,
                2,
                "SELECT 2",
            ),
            (
                "with x as (select 1) insert into t select * from x",
                false,
                1,
                "INSERT 0 1",
            ),
            ("create table t (a int)", false, 0, "CREATE TABLE"),
            ("create table t as select 1", false, 1, "SELECT 1"),
            (
                "create or replace function f() returns int as 'select 1' language sql",
                false,
                0,
                "CREATE FUNCTION",
            ),
            ("create unique index i on t (a)", false, 0, "CREATE INDEX"),
            (
                "create materialized view v as select 1",
                false,
                1,
                "SELECT 1",
            ),
            (
                "create foreign table f (a int) server s",
                false,
                0,
                "CREATE FOREIGN TABLE",
            ),
            ("create temp table t (a int)", false, 0, "CREATE TABLE"),
            ("drop table if exists t", false, 0, "DROP TABLE"),
            ("alter table t add b int", false, 0, "ALTER TABLE"),
            ("begin", false, 0, "BEGIN"),
            ("start transaction", false, 0, "START TRANSACTION"),
            ("end", false, 0, "COMMIT"),
            ("truncate t", false, 0, "TRUNCATE TABLE"),
            ("show work_mem", true, 1, "SHOW"),
            ("do $$ begin raise notice 'x'; end $$", false, 0, "DO"),
            ("values (1), (2)", true, 2, "SELECT 2"),
            ("copy t from stdin", false, 0, "COPY 0"),
        ];
        for (sql, rows, count, want) in cases {
            assert_eq!(command_tag(sql, rows, count), want, "{sql}");
        }
    }
}
