//! The sqlrsd protocol: generated gRPC types, the protocol version, the
//! local-socket transport, XDG locations, and the client's connect-or-spawn.

pub mod alias;
pub mod client;
pub mod paths;
pub mod transport;

/// Generated from `proto/sqlrs.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("sqlrs.v1");
}

/// Bumped whenever client and daemon stop understanding each other.
pub const PROTOCOL_VERSION: u32 = 3;

/// Metadata key carrying the client's protocol version on every call.
pub const PROTOCOL_HEADER: &str = "sqlrs-protocol";

/// Metadata key carrying the bearer token (every call but Health).
pub const TOKEN_HEADER: &str = "authorization";

/// Metadata key on error statuses carrying a stable machine-readable reason.
pub const REASON_HEADER: &str = "sqlrs-reason";

/// The machine-readable reason attached to an error status, if any.
pub fn status_reason(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get(REASON_HEADER)
        .and_then(|v| v.to_str().ok())
}
