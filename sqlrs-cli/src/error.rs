//! The errors sqlrs reports itself, and the exit codes they map to.

use sqlrs_proto::status_reason;

/// Exit codes: 0 ok, 1 general error, 2 usage error, 3 job failed, 130 cancelled.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const JOB_FAILED: u8 = 3;
    pub const CANCELLED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong; the message says how to write it.
    #[error("{0}")]
    Usage(String),
    /// The daemon refused or failed a call.
    #[error("{}", daemon_message(.0))]
    Daemon(tonic::Status),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Daemon(_) => exit::ERROR,
        }
    }

    /// Whether the daemon said nothing matches what was asked for.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CliError::Daemon(s) if s.code() == tonic::Code::NotFound)
    }
}

fn daemon_message(status: &tonic::Status) -> String {
    let mut message = if status.message().is_empty() {
        format!("sqlrsd answered {:?}", status.code())
    } else {
        status.message().to_owned()
    };
    let reason = status_reason(status);
    if let Some(hint) = reason.and_then(|r| hint(r, &message)) {
        message = format!("{message}; {hint}");
    }
    match reason {
        Some(reason) => format!("{message} ({reason})"),
        None => message,
    }
}

/// What to do about a refusal whose message does not say it already.
fn hint(reason: &str, message: &str) -> Option<String> {
    match reason {
        "not_found" => {
            let listing = match message.split_whitespace().next()? {
                "instance" => "`sqlrs ls` lists the instances (`sqlrs ls --names` the named ones)",
                "job" => "`sqlrs ls --jobs` lists the jobs",
                "state" => "`sqlrs ls --states` lists the states",
                _ => return None,
            };
            Some(listing.to_owned())
        }
        "bad_token" => {
            let file = sqlrs_proto::paths::Locations::from_env()
                .map(|l| l.token_path().display().to_string())
                .unwrap_or_else(|_| "the token file".into());
            Some(format!(
                "the token in {file} is not the one the running sqlrsd wrote at its start (the file was changed since, or belongs to another daemon): run `sqlrs daemon stop` (it stops the daemon without the token) and retry"
            ))
        }
        _ => None,
    }
}

/// Unwraps a unary reply, keeping the daemon's status as a [`CliError`].
pub fn reply<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Result<T, CliError> {
    result
        .map(tonic::Response::into_inner)
        .map_err(CliError::Daemon)
}

/// A status carrying the daemon's reason header, as the daemon sends it.
#[cfg(test)]
pub fn with_reason_header(mut status: tonic::Status, reason: &str) -> tonic::Status {
    status
        .metadata_mut()
        .insert(sqlrs_proto::REASON_HEADER, reason.parse().expect("ascii"));
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_messages() {
        let mut with_reason = tonic::Status::not_found("no instance matches abcdef12");
        with_reason.metadata_mut().insert(
            sqlrs_proto::REASON_HEADER,
            "not_found".parse().expect("ascii"),
        );
        let with = with_reason_header;
        let cases = [
            (with_reason, "no instance matches abcdef12 (not_found)".to_owned()),
            (
                with(
                    tonic::Status::not_found("instance deadbeef00 not found"),
                    "not_found",
                ),
                "instance deadbeef00 not found; `sqlrs ls` lists the instances (`sqlrs ls --names` the named ones) (not_found)".into(),
            ),
            (
                with(tonic::Status::not_found("job deadbeef00 not found"), "not_found"),
                "job deadbeef00 not found; `sqlrs ls --jobs` lists the jobs (not_found)".into(),
            ),
            (
                with(
                    tonic::Status::not_found("state deadbeef00 not found"),
                    "not_found",
                ),
                "state deadbeef00 not found; `sqlrs ls --states` lists the states (not_found)".into(),
            ),
            (tonic::Status::internal("boom"), "boom".into()),
            (
                tonic::Status::unavailable(""),
                "sqlrsd answered Unavailable".into(),
            ),
        ];
        for (status, want) in cases {
            assert_eq!(CliError::Daemon(status).to_string(), want);
        }
        let token = CliError::Daemon(with(
            tonic::Status::unauthenticated("missing or wrong token"),
            "bad_token",
        ))
        .to_string();
        assert!(
            token.starts_with("missing or wrong token; the token in ")
                && token.contains("sqlrs daemon stop")
                && token.ends_with("(bad_token)"),
            "{token}"
        );
    }
}
