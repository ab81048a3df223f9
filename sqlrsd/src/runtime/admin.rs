//! Administrative SQL on a server over its Unix socket (trust auth, as the
//! superuser), shared by every runtime whose socket the daemon can reach.

use std::time::Duration;

use super::{RuntimeError, ServerHandle};

/// The cluster's superuser, made by initdb.
pub const SUPERUSER: &str = "postgres";

/// A control connection to `server`; `action` names what it is for in errors.
pub async fn connect(
    server: &ServerHandle,
    action: &'static str,
) -> Result<tokio_postgres::Client, RuntimeError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(&server.socket_dir)
        .port(server.port)
        .user(SUPERUSER)
        .dbname("postgres")
        .application_name("sqlrsd")
        .connect_timeout(Duration::from_secs(10));
    let (client, connection) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(sql_err(action, server))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("control connection closed: {e}");
        }
    });
    Ok(client)
}

pub async fn checkpoint(server: &ServerHandle) -> Result<(), RuntimeError> {
    const ACTION: &str = "CHECKPOINT";
    connect(server, ACTION)
        .await?
        .batch_execute("CHECKPOINT")
        .await
        .map_err(sql_err(ACTION, server))
}

pub async fn set_password(server: &ServerHandle, password: &str) -> Result<(), RuntimeError> {
    const ACTION: &str = "setting the password";
    let sql = format!(
        "ALTER ROLE {SUPERUSER} PASSWORD {}",
        quote_literal(password)
    );
    connect(server, ACTION)
        .await?
        .batch_execute(&sql)
        .await
        .map_err(sql_err(ACTION, server))
}

/// Client sessions other than the one asking.
pub async fn connection_count(server: &ServerHandle) -> Result<u32, RuntimeError> {
    const ACTION: &str = "counting connections";
    let row = connect(server, ACTION)
        .await?
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .map_err(sql_err(ACTION, server))?;
    let count: i64 = row.get(0);
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

/// An SQL string literal that is right whatever standard_conforming_strings says.
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

pub fn sql_err(
    action: &'static str,
    server: &ServerHandle,
) -> impl FnOnce(tokio_postgres::Error) -> RuntimeError {
    let socket_dir = server.socket_dir.clone();
    move |source| RuntimeError::Sql {
        action,
        socket_dir,
        source,
    }
}
