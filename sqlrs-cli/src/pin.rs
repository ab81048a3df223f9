//! `sqlrs pin` / `sqlrs unpin`: keep a state, or the head state of an
//! alias, from eviction; `sqlrs pin` alone lists the pins.

use serde::Serialize;
use sqlrs_proto::alias::{self, AliasRole};
use sqlrs_proto::pb::{ListPinsRequest, PinReply, PinRequest};

use crate::cli::Ctx;
use crate::daemon;
use crate::error::{CliError, exit, reply};
use crate::render;
use crate::rm::check_prefix;

/// A pin in JSON output.
#[derive(Debug, Serialize, PartialEq)]
struct PinItem {
    /// "state" | "alias".
    kind: String,
    /// The state id or the alias file.
    target: String,
    /// Unpin: false when there was no such pin.
    changed: bool,
    created_at_ms: Option<u64>,
}

impl From<&PinReply> for PinItem {
    fn from(p: &PinReply) -> Self {
        PinItem {
            kind: p.kind.clone(),
            target: p.target.clone(),
            changed: p.changed,
            created_at_ms: render::some_time(p.created_at_ms),
        }
    }
}

/// An alias NAME whose file is found from the current folder, else a state
/// id prefix.
fn request(target: &str) -> anyhow::Result<PinRequest> {
    let cwd = std::env::current_dir()?;
    match alias::find(&cwd, target, AliasRole::Prepare) {
        Ok(path) => Ok(PinRequest {
            state: String::new(),
            alias_path: path.display().to_string(),
        }),
        Err(not_alias) => {
            check_prefix(target).map_err(|_| {
                CliError::Usage(format!(
                    "`{target}` is neither an alias ({not_alias}) nor a state id prefix of at least 8 hex characters (see `sqlrs ls --states`)"
                ))
            })?;
            Ok(PinRequest {
                state: target.to_owned(),
                alias_path: String::new(),
            })
        }
    }
}

pub async fn pin(ctx: Ctx, target: &str, pin: bool) -> anyhow::Result<u8> {
    let request = request(target)?;
    let mut conn = daemon::connect(true).await?;
    let done = if pin {
        reply(conn.client.pin(request).await)?
    } else {
        reply(conn.client.unpin(request).await)?
    };
    if ctx.json() {
        render::print_json(&PinItem::from(&done))?;
    } else {
        println!(
            "{} {} {}",
            match (pin, done.changed) {
                (true, _) => "pinned",
                (false, true) => "unpinned",
                (false, false) => "was not pinned:",
            },
            done.kind,
            done.target
        );
    }
    Ok(exit::OK)
}

pub async fn list(ctx: Ctx) -> anyhow::Result<u8> {
    let mut conn = daemon::connect(true).await?;
    let pins = reply(conn.client.list_pins(ListPinsRequest {}).await)?.pins;
    if ctx.json() {
        render::print_json(&pins.iter().map(PinItem::from).collect::<Vec<_>>())?;
    } else if pins.is_empty() {
        println!("no pins: `sqlrs pin NAME|STATE` keeps an alias's head or a state from eviction");
    } else {
        let now = render::now_ms();
        println!(
            "{}",
            render::table(
                ["KIND", "TARGET", "PINNED"],
                pins.iter().map(|p| [
                    p.kind.clone(),
                    p.target.clone(),
                    render::ago(now, p.created_at_ms)
                ]),
            )
        );
    }
    Ok(exit::OK)
}
