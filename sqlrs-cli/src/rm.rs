//! `sqlrs rm`: removes an instance, a state or a job by id prefix; the
//! daemon decides what the prefix names.

use serde::Serialize;
use sqlrs_proto::pb::{DeleteReply, DeleteRequest, DeletedItem};

use crate::cli::{Ctx, RmArgs};
use crate::daemon;
use crate::error::{CliError, exit, reply};
use crate::render;

/// The shortest id prefix `rm` accepts.
const MIN_PREFIX: usize = 8;

/// An id prefix must be at least 8 hex characters: shorter ones match too much by accident.
pub fn check_prefix(id: &str) -> Result<(), CliError> {
    if id.len() >= MIN_PREFIX && id.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "`{id}` is not an id prefix: give at least {MIN_PREFIX} hex characters of an id from `sqlrs ls`"
        )))
    }
}

/// What an id prefix may name, in the order `rm` asks about them.
#[derive(Clone, Copy)]
enum Kind {
    Instance,
    State,
    Job,
}

/// The outcome for JSON output.
#[derive(Debug, Serialize, PartialEq)]
struct Removal {
    dry_run: bool,
    items: Vec<RemovalItem>,
}

#[derive(Debug, Serialize, PartialEq)]
struct RemovalItem {
    kind: String,
    id: String,
    removed: bool,
    blocked_reason: Option<String>,
    /// A blocked state: the instances that use it or a descendant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    in_use_by: Vec<String>,
}

impl From<&DeleteReply> for Removal {
    fn from(r: &DeleteReply) -> Self {
        Removal {
            dry_run: r.dry_run,
            items: r
                .items
                .iter()
                .map(|i| RemovalItem {
                    kind: i.kind.clone(),
                    id: i.id.clone(),
                    removed: i.removed,
                    blocked_reason: (!i.blocked_reason.is_empty())
                        .then(|| i.blocked_reason.clone()),
                    in_use_by: Vec::new(),
                })
                .collect(),
        }
    }
}

fn item_line(item: &DeletedItem, dry_run: bool) -> String {
    let what = format!("{} {}", item.kind, item.id);
    match (item.removed, item.blocked_reason.as_str(), dry_run) {
        (true, _, true) => format!("would remove {what}"),
        (true, _, false) => format!("removed {what}"),
        (false, "", _) => format!("kept {what}"),
        (false, reason, _) => format!("blocked {what}: {reason}"),
    }
}

/// The instances that keep a state from removal: those a forced dry run
/// would remove with it (empty when something else blocks it).
async fn users_of(
    client: &mut sqlrs_proto::client::Client,
    state: &str,
    recurse: bool,
) -> Vec<String> {
    let request = DeleteRequest {
        id: state.to_owned(),
        recurse,
        force: true,
        dry_run: true,
    };
    match reply(client.delete_state(request).await) {
        Ok(reply) => reply
            .items
            .into_iter()
            .filter(|i| i.kind == "instance")
            .map(|i| i.id)
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn is_blocked(item: &DeletedItem) -> bool {
    !item.removed && !item.blocked_reason.is_empty()
}

pub async fn rm(ctx: Ctx, args: &RmArgs) -> anyhow::Result<u8> {
    check_prefix(&args.id)?;
    let mut conn = daemon::connect(true).await?;
    let client = &mut conn.client;
    let request = DeleteRequest {
        id: args.id.clone(),
        recurse: args.recurse,
        force: args.force,
        dry_run: args.dry_run,
    };
    // Instances first: the narrowest thing a prefix can name. Stop at the
    // first kind that has a match.
    let mut found = None;
    for kind in [Kind::Instance, Kind::State, Kind::Job] {
        let request = request.clone();
        let attempt = match kind {
            Kind::Instance => client.delete_instance(request).await,
            Kind::State => client.delete_state(request).await,
            Kind::Job => client.delete_job(request).await,
        };
        match reply(attempt) {
            Err(e) if e.is_not_found() => continue,
            other => {
                found = Some(other?);
                break;
            }
        }
    }
    let Some(deleted) = found else {
        anyhow::bail!(
            "no instance, state or job id starts with {}; see `sqlrs ls --instances --states --jobs`",
            args.id
        );
    };
    let mut removal = Removal::from(&deleted);
    for item in removal.items.iter_mut() {
        if item.kind == "state" && item.blocked_reason.is_some() && !args.force {
            item.in_use_by = users_of(client, &item.id, args.recurse).await;
        }
    }
    if ctx.json() {
        render::print_json(&removal)?;
    } else {
        for (item, shown) in deleted.items.iter().zip(&removal.items) {
            println!("{}", item_line(item, deleted.dry_run));
            for instance in &shown.in_use_by {
                println!("  used by instance {instance}");
            }
        }
    }
    Ok(if deleted.items.iter().any(is_blocked) {
        exit::ERROR
    } else {
        exit::OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let cases = [
            ("0123abcd", true),
            ("0123ABCDef", true),
            ("0123abc", false),
            ("0123abcg", false),
            ("", false),
            ("instance", false),
        ];
        for (id, ok) in cases {
            assert_eq!(check_prefix(id).is_ok(), ok, "{id}");
        }
        assert_eq!(check_prefix("abc").unwrap_err().exit_code(), exit::USAGE);
    }

    fn item(removed: bool, reason: &str) -> DeletedItem {
        DeletedItem {
            kind: "state".into(),
            id: "0123abcd".into(),
            removed,
            blocked_reason: reason.into(),
        }
    }

    #[test]
    fn lines() {
        let cases = [
            (item(true, ""), false, "removed state 0123abcd"),
            (item(true, ""), true, "would remove state 0123abcd"),
            (
                item(false, "2 instances use it; add --recurse"),
                false,
                "blocked state 0123abcd: 2 instances use it; add --recurse",
            ),
            (
                item(false, "in use"),
                true,
                "blocked state 0123abcd: in use",
            ),
            (item(false, ""), false, "kept state 0123abcd"),
        ];
        for (item, dry_run, want) in cases {
            assert_eq!(item_line(&item, dry_run), want);
        }
        assert!(is_blocked(&item(false, "x")) && !is_blocked(&item(true, "")));
    }

    #[test]
    fn json_shape() {
        let reply = DeleteReply {
            items: vec![item(true, ""), item(false, "in use")],
            dry_run: true,
        };
        let mut removal = Removal::from(&reply);
        removal.items[1].in_use_by = vec!["i1".into()];
        assert_eq!(
            serde_json::to_value(removal).unwrap(),
            serde_json::json!({
                "dry_run": true,
                "items": [
                    {"kind": "state", "id": "0123abcd", "removed": true, "blocked_reason": null},
                    {"kind": "state", "id": "0123abcd", "removed": false, "blocked_reason": "in use", "in_use_by": ["i1"]},
                ],
            })
        );
    }
}
