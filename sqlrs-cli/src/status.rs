//! `sqlrs status`: the daemon, its runtime, snapshotter and store.

use serde::Serialize;
use sqlrs_proto::pb::{StatusReply, StatusRequest};

use crate::cli::Ctx;
use crate::daemon::{self, DaemonInfo};
use crate::error::{exit, reply};
use crate::render;

/// The status for JSON output.
#[derive(Debug, Serialize, PartialEq)]
struct StatusView {
    daemon: Option<DaemonInfo>,
    runtime: String,
    runtime_reason: String,
    engine: String,
    server_user: String,
    snapshotter: String,
    snapshotter_reason: String,
    store_path: String,
    store_bytes: u64,
    state_count: u64,
    instance_count: u64,
    job_count: u64,
    /// The Liquibase `prepare:lb` runs (version, Java, launcher), if any.
    liquibase: Option<String>,
    /// Why no Liquibase is usable, and how to install one.
    liquibase_error: Option<String>,
}

impl StatusView {
    fn new(s: &StatusReply, now_ms: u64) -> Self {
        StatusView {
            daemon: s.daemon.as_ref().map(|h| DaemonInfo::new(h, now_ms)),
            runtime: s.runtime.clone(),
            runtime_reason: s.runtime_reason.clone(),
            engine: s.engine.clone(),
            server_user: s.server_user.clone(),
            snapshotter: s.snapshotter.clone(),
            snapshotter_reason: s.snapshotter_reason.clone(),
            store_path: s.store_path.clone(),
            store_bytes: s.store_bytes,
            state_count: s.state_count,
            instance_count: s.instance_count,
            job_count: s.job_count,
            liquibase: Some(s.liquibase.clone()).filter(|v| !v.is_empty()),
            liquibase_error: Some(s.liquibase_error.clone()).filter(|v| !v.is_empty()),
        }
    }

    fn text(&self) -> String {
        let mut rows = Vec::new();
        if let Some(d) = &self.daemon {
            rows.push((
                "daemon",
                format!(
                    "sqlrsd {}, pid {}, up {}",
                    d.version,
                    d.pid,
                    render::duration(d.uptime_s * 1000)
                ),
            ));
            rows.push(("socket", format!("{} (protocol {})", d.socket, d.protocol)));
        }
        rows.push(("runtime", with_reason(&self.runtime, &self.runtime_reason)));
        rows.push(("engine", self.engine.clone()));
        rows.push(("server user", self.server_user.clone()));
        rows.push((
            "snapshotter",
            with_reason(&self.snapshotter, &self.snapshotter_reason),
        ));
        rows.push((
            "store",
            format!("{} ({})", self.store_path, render::size(self.store_bytes)),
        ));
        rows.push((
            "contents",
            [
                (self.state_count, "state"),
                (self.instance_count, "instance"),
                (self.job_count, "job"),
            ]
            .map(|(n, what)| format!("{n} {what}{}", if n == 1 { "" } else { "s" }))
            .join(", "),
        ));
        rows.push((
            "liquibase",
            match (&self.liquibase, &self.liquibase_error) {
                (Some(found), _) => found.clone(),
                (None, Some(error)) => format!("not usable: {error}"),
                (None, None) => "unknown".into(),
            },
        ));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:width$}  {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `name (reason)`, or the reason alone when it already starts with `name:`.
fn with_reason(name: &str, reason: &str) -> String {
    match reason.strip_prefix(name) {
        _ if reason.is_empty() => name.to_owned(),
        Some(rest) if rest.starts_with(':') => reason.to_owned(),
        _ => format!("{name} ({reason})"),
    }
}

pub async fn status(ctx: Ctx) -> anyhow::Result<u8> {
    let mut conn = daemon::connect(true).await?;
    let reply = reply(conn.client.status(StatusRequest {}).await)?;
    let view = StatusView::new(&reply, render::now_ms());
    if ctx.json() {
        render::print_json(&view)?;
    } else {
        println!("{}", view.text());
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlrs_proto::pb::HealthReply;

    #[test]
    fn rendering() {
        let reply = StatusReply {
            daemon: Some(HealthReply {
                protocol_version: 1,
                version: "0.1.0".into(),
                pid: 42,
                socket_path: "/run/sqlrs/sqlrsd.sock".into(),
                started_at_ms: 0,
                state_dir: "/var/lib/sqlrs".into(),
            }),
            runtime: "native".into(),
            engine: "PostgreSQL 15.18 (/usr/lib/postgresql/15/bin)".into(),
            snapshotter: "copy".into(),
            snapshotter_reason: "ext4 has no reflinks or subvolumes".into(),
            store_path: "/var/lib/sqlrs".into(),
            store_bytes: 3 << 30,
            state_count: 4,
            instance_count: 1,
            job_count: 9,
            server_user: "postgres".into(),
            runtime_reason: "native: runtime.kind = native in the config".into(),
            liquibase: String::new(),
            liquibase_error: "Liquibase was not found (none on PATH); install it".into(),
        };
        let view = StatusView::new(&reply, 125_000);
        assert_eq!(
            view.text(),
            "daemon       sqlrsd 0.1.0, pid 42, up 2m05s\n\
             socket       /run/sqlrs/sqlrsd.sock (protocol 1)\n\
             runtime      native: runtime.kind = native in the config\n\
             engine       PostgreSQL 15.18 (/usr/lib/postgresql/15/bin)\n\
             server user  postgres\n\
             snapshotter  copy (ext4 has no reflinks or subvolumes)\n\
             store        /var/lib/sqlrs (3.0 GiB)\n\
             contents     4 states, 1 instance, 9 jobs\n\
             liquibase    not usable: Liquibase was not found (none on PATH); install it"
        );
        let mut found = StatusView::new(&reply, 125_000);
        found.liquibase = Some("Liquibase 4.28.0 on Java 17.0.15 (/opt/lb/liquibase)".into());
        assert!(
            found
                .text()
                .ends_with("\nliquibase    Liquibase 4.28.0 on Java 17.0.15 (/opt/lb/liquibase)"),
            "{}",
            found.text()
        );
        let mut prefixed = StatusView::new(&reply, 125_000);
        prefixed.snapshotter_reason = "copy: /s is on ext4 (no reflink)".into();
        assert!(
            prefixed
                .text()
                .contains("\nsnapshotter  copy: /s is on ext4 (no reflink)\n"),
            "{}",
            prefixed.text()
        );
        let mut docker = StatusView::new(&reply, 125_000);
        docker.runtime = "docker".into();
        docker.runtime_reason = "Docker answers at unix:///d.sock and has image pg:17".into();
        assert!(
            docker.text().contains(
                "\nruntime      docker (Docker answers at unix:///d.sock and has image pg:17)\n"
            ),
            "{}",
            docker.text()
        );
        docker.runtime_reason = String::new();
        assert!(
            docker.text().contains("\nruntime      docker\n"),
            "{}",
            docker.text()
        );
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["daemon"]["uptime_s"], 125);
        assert_eq!(
            json["snapshotter_reason"],
            "ext4 has no reflinks or subvolumes"
        );
        assert_eq!(
            json["runtime_reason"],
            "native: runtime.kind = native in the config"
        );
        assert_eq!(json["store_bytes"], 3u64 << 30);
        assert_eq!(json["liquibase"], serde_json::Value::Null);
        assert_eq!(
            json["liquibase_error"],
            "Liquibase was not found (none on PATH); install it"
        );
        assert_eq!(json.as_object().unwrap().len(), 14);
    }
}
