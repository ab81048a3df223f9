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
    let message = if status.message().is_empty() {
        format!("sqlrsd answered {:?}", status.code())
    } else {
        status.message().to_owned()
    };
    match status_reason(status) {
        Some(reason) => format!("{message} ({reason})"),
        None => message,
    }
}

/// Unwraps a unary reply, keeping the daemon's status as a [`CliError`].
pub fn reply<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Result<T, CliError> {
    result
        .map(tonic::Response::into_inner)
        .map_err(CliError::Daemon)
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
        let cases = [
            (with_reason, "no instance matches abcdef12 (not_found)"),
            (tonic::Status::internal("boom"), "boom"),
            (
                tonic::Status::unavailable(""),
                "sqlrsd answered Unavailable",
            ),
        ];
        for (status, want) in cases {
            assert_eq!(CliError::Daemon(status).to_string(), want);
        }
    }
}
