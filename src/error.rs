//! The one error type of leanmqd, and the one place it becomes a gRPC
//! status ([`Error::grpc_code`]) or an HTTP status ([`Error::http_status`]).
//!
//! Everything below the RPC edge returns [`Error`]; `impl From<Error> for
//! tonic::Status` decides the code a client sees. The rule that matters most:
//! a Redis failure is never reported as OK, and a Redis that is unreachable,
//! loading, paused or timing out is UNAVAILABLE (retryable), not INTERNAL.

use std::fmt;

use tonic::codegen::http;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong while serving a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong: a bad path, group, duration, header or
    /// receipt. The message names the field and the rule it broke.
    #[error("{0}")]
    InvalidArgument(String),

    /// A payload larger than `--max-payload-bytes`.
    #[error("payload is {size} bytes; the limit is {limit} bytes (--max-payload-bytes)")]
    PayloadTooLarge { size: usize, limit: usize },

    /// The receipt is well-formed but no longer holds the lease: the message
    /// was acked, dead-lettered or redelivered since it was handed out.
    #[error("{0}")]
    LeaseLost(String),

    /// The request is valid but cannot be served in this deployment (e.g. a
    /// multi-queue SendBatch on Redis Cluster).
    #[error("{0}")]
    FailedPrecondition(String),

    /// The named queue (or other object) does not exist.
    #[error("{0}")]
    NotFound(String),

    /// An object of that name exists already (a push subscription).
    #[error("{0}")]
    AlreadyExists(String),

    /// Redis could not be reached or did not answer in time. The operation
    /// may or may not have been applied; the client should retry.
    #[error("redis unavailable: {0}")]
    Unavailable(String),

    /// leanmqd is draining for shutdown; reconnect (to another replica).
    #[error("leanmqd is shutting down; reconnect to continue")]
    ShuttingDown,

    /// No valid `authorization: Bearer` token.
    #[error("{0}")]
    Unauthenticated(String),

    /// The token is valid but its grant does not reach this path.
    #[error("{0}")]
    PermissionDenied(String),

    /// A limit that protects the shared service: load shedding, stream
    /// counts, a token's rate.
    #[error("{0}")]
    ResourceExhausted(String),

    /// Redis answered NOGROUP: the stream or its consumer group vanished
    /// (Redis restarted empty, or someone deleted the key). The fetch path
    /// recreates the group and retries; anywhere else a client sees it as
    /// INTERNAL, with the same message as any other unexpected Redis reply.
    #[error("internal error: redis: {0}")]
    NoGroup(String),

    /// A bug or an unexpected Redis reply. Logged with detail.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::InvalidArgument(msg.to_string())
    }

    /// True when the error is worth retrying after a pause (Redis trouble).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    /// True when Redis answered NOGROUP: the stream or its group vanished
    /// (Redis restarted empty, or someone deleted the key).
    pub fn is_nogroup(&self) -> bool {
        matches!(self, Error::NoGroup(_))
    }
}

/// Did Redis answer NOGROUP? Its error code says so; Redis 6.2 reports an
/// error raised inside a script as `ERR Error running script …` with the
/// original reply in the text, so that form is read from the detail.
fn is_nogroup(e: &redis::RedisError) -> bool {
    match e.code() {
        Some("NOGROUP") => true,
        Some("ERR") => e
            .detail()
            .is_some_and(|d| d.starts_with("Error running script") && d.contains("NOGROUP")),
        _ => false,
    }
}

/// A refusal a script returned under `code` (`QUOTA`: a limit from
/// `common.lua`'s `admit` and `ensure.lua`; `OWNED`: another path owns the
/// queue, `owner_refusal`): its message, read like [`is_nogroup`] on Redis 6.2.
fn refusal(e: &redis::RedisError, code: &str) -> Option<String> {
    let detail = e.detail().unwrap_or_default();
    match e.code() {
        Some(c) if c == code => Some(
            detail
                .split(" script: ")
                .next()
                .unwrap_or(detail)
                .to_string(),
        ),
        Some("ERR") if detail.starts_with("Error running script") => {
            let at = detail.find(&format!("{code} "))?;
            Some(detail[at + code.len() + 1..].to_string())
        }
        _ => None,
    }
}

/// Did Redis refuse the write with `code` (`OOM`, `MISCONF`, `NOREPLICAS`)?
/// Read like [`is_nogroup`]: Redis 6.2 wraps a refusal inside a script in ERR.
fn refused_with(e: &redis::RedisError, code: &str) -> bool {
    match e.code() {
        Some(c) if c == code => true,
        Some("ERR") => e.detail().is_some_and(|d| {
            d.starts_with("Error running script") && d.contains(&format!(": {code} "))
        }),
        _ => false,
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        if let Some(msg) = refusal(&e, "QUOTA") {
            return Error::ResourceExhausted(msg);
        }
        if let Some(msg) = refusal(&e, "OWNED") {
            return Error::FailedPrecondition(msg);
        }
        if refused_with(&e, "OOM") {
            return Error::ResourceExhausted(format!(
                "redis is out of memory (maxmemory): nothing was written, retry after consumers catch up: {}",
                e.detail().unwrap_or_default()
            ));
        }
        if refused_with(&e, "MISCONF") || refused_with(&e, "NOREPLICAS") {
            // A failed RDB save under stop-writes-on-bgsave-error, or fewer
            // good replicas than min-replicas-to-write: nothing was written,
            // and the same write succeeds once the operator fixes Redis.
            return Error::Unavailable(format!(
                "redis refuses writes: {} {}",
                e.code().unwrap_or_default(),
                e.detail().unwrap_or_default()
            ));
        }
        // Sentinel names no usable master: a failover is under way (the old
        // master is down and none is promoted yet). Retry, as for a dropped link.
        let no_master = matches!(
            e.kind(),
            redis::ErrorKind::MasterNameNotFoundBySentinel
                | redis::ErrorKind::NoValidReplicasFoundBySentinel
        );
        let transient = no_master
            || e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
            || matches!(
                e.code(),
                Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY")
            );
        if transient {
            Error::Unavailable(e.to_string())
        } else if e.code() == Some("WRONGTYPE") {
            // Nothing was written: the scripts check key types first.
            Error::FailedPrecondition(format!(
                "a key of this queue's layout holds another type than leanmq-grpc writes (another program wrote it); nothing was written: {}",
                e.detail().unwrap_or_default()
            ))
        } else if is_nogroup(&e) {
            Error::NoGroup(e.to_string())
        } else {
            Error::Internal(format!("redis: {e}"))
        }
    }
}

impl From<deadpool_redis::PoolError> for Error {
    fn from(e: deadpool_redis::PoolError) -> Self {
        match e {
            deadpool_redis::PoolError::Backend(e) => e.into(),
            other => Error::Unavailable(other.to_string()),
        }
    }
}

impl Error {
    /// The gRPC code a client sees for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidArgument(_) | Error::PayloadTooLarge { .. } => Code::InvalidArgument,
            Error::LeaseLost(_) | Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Unavailable(_) | Error::ShuttingDown => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::NoGroup(_) | Error::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status an HTTP client (the JSON ingress, `crate::http`)
    /// sees for this error: matched on every variant, so a new one cannot
    /// be forgotten. Only a too-large payload says more than its gRPC code.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            Error::PayloadTooLarge { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
            Error::InvalidArgument(_)
            | Error::LeaseLost(_)
            | Error::FailedPrecondition(_)
            | Error::NotFound(_)
            | Error::AlreadyExists(_)
            | Error::Unavailable(_)
            | Error::ShuttingDown
            | Error::Unauthenticated(_)
            | Error::PermissionDenied(_)
            | Error::ResourceExhausted(_)
            | Error::NoGroup(_)
            | Error::Internal(_) => http_status_of(self.grpc_code()),
        }
    }
}

/// The HTTP status of a gRPC code: one table for every HTTP edge (the
/// JSON ingress through [`Error::http_status`], the console through the
/// statuses the Admin service answers).
pub fn http_status_of(code: tonic::Code) -> http::StatusCode {
    use http::StatusCode as S;
    use tonic::Code;
    match code {
        Code::Ok => S::OK,
        Code::InvalidArgument | Code::OutOfRange => S::BAD_REQUEST,
        Code::NotFound => S::NOT_FOUND,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::Unauthenticated => S::UNAUTHORIZED,
        Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => S::CONFLICT,
        Code::Unavailable => S::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Cancelled | Code::Unknown | Code::DataLoss | Code::Internal => {
            S::INTERNAL_SERVER_ERROR
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = e.grpc_code();
        if code == tonic::Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        tonic::Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RedisError as the client builds it from a reply on the wire.
    fn reply(wire: &str) -> redis::RedisError {
        match redis::parse_redis_value(wire.as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn nogroup_comes_from_the_error_code() {
        for wire in [
            "-NOGROUP No such key 'q' or consumer group 'g' in XREADGROUP with GROUP option\r\n",
            // Redis 7: an error raised in a script keeps its code.
            "-NOGROUP No such key 'q' or consumer group 'g' script: f, on @user_script:99.\r\n",
            // Redis 6.2: the script wraps it in ERR.
            "-ERR Error running script (call to f_1): @user_script:99: NOGROUP No such key 'q'\r\n",
        ] {
            let r = reply(wire);
            let shown = format!("internal error: redis: {r}");
            let e = Error::from(r);
            assert!(e.is_nogroup(), "{wire}");
            let status = tonic::Status::from(e);
            assert_eq!(status.code(), tonic::Code::Internal, "{wire}");
            assert_eq!(status.message(), shown, "the message clients saw before");
        }
    }

    #[test]
    fn quota_replies_are_resource_exhausted_with_their_message() {
        for wire in [
            "-QUOTA leanmqd holds at most 5 queues (--max-queues); refused to create q script: f, on @user_script:9.\r\n",
            "-ERR Error running script (call to f_1): @user_script:9: QUOTA leanmqd holds at most 5 queues (--max-queues); refused to create q\r\n",
        ] {
            let status = tonic::Status::from(Error::from(reply(wire)));
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{wire}");
            assert!(
                status.message().starts_with("leanmqd holds at most 5 queues (--max-queues); refused to create q"),
                "{}",
                status.message()
            );
        }
    }

    #[test]
    fn write_refusals_say_why_and_are_retryable() {
        for (wire, code, says) in [
            (
                "-MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.\r\n",
                tonic::Code::Unavailable,
                "redis refuses writes: MISCONF Redis is configured to save RDB snapshots",
            ),
            (
                "-NOREPLICAS Not enough good replicas to write. script: f, on @user_script:9.\r\n",
                tonic::Code::Unavailable,
                "redis refuses writes: NOREPLICAS Not enough good replicas",
            ),
            (
                "-ERR Error running script (call to f_1): @user_script:9: NOREPLICAS Not enough good replicas to write.\r\n",
                tonic::Code::Unavailable,
                "redis refuses writes: ERR Error running script",
            ),
            (
                "-OOM command not allowed when used memory > 'maxmemory'. script: f, on @user_script:9.\r\n",
                tonic::Code::ResourceExhausted,
                "redis is out of memory (maxmemory): nothing was written",
            ),
            (
                "-ERR Error running script (call to f_1): @user_script:9: OOM command not allowed when used memory > 'maxmemory'.\r\n",
                tonic::Code::ResourceExhausted,
                "redis is out of memory (maxmemory): nothing was written",
            ),
        ] {
            let status = tonic::Status::from(Error::from(reply(wire)));
            assert_eq!(status.code(), code, "{wire}");
            assert!(status.message().contains(says), "{wire}: {}", status.message());
        }
    }

    #[test]
    fn no_master_from_sentinel_is_unavailable() {
        let e = redis::RedisError::from((
            redis::ErrorKind::MasterNameNotFoundBySentinel,
            "Master with given name not found in sentinel",
        ));
        let status = tonic::Status::from(Error::from(e));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().starts_with("redis unavailable: "),
            "{}",
            status.message()
        );
    }

    #[test]
    fn other_errors_are_not_nogroup() {
        for (wire, code) in [
            ("-ERR unknown command 'NOGROUP'\r\n", tonic::Code::Internal),
            (
                "-WRONGTYPE Operation against a key\r\n",
                tonic::Code::FailedPrecondition,
            ),
            ("-LOADING Redis is loading\r\n", tonic::Code::Unavailable),
            (
                "-OOM command not allowed\r\n",
                tonic::Code::ResourceExhausted,
            ),
        ] {
            let e = Error::from(reply(wire));
            assert!(!e.is_nogroup(), "{wire}");
            assert_eq!(tonic::Status::from(e).code(), code, "{wire}");
        }
    }

    #[test]
    fn http_statuses_follow_the_grpc_codes_but_for_size() {
        use http::StatusCode as S;
        for (e, want) in [
            (Error::invalid("x"), S::BAD_REQUEST),
            (
                Error::PayloadTooLarge { size: 2, limit: 1 },
                S::PAYLOAD_TOO_LARGE,
            ),
            (Error::Unauthenticated("x".into()), S::UNAUTHORIZED),
            (Error::PermissionDenied("x".into()), S::FORBIDDEN),
            (Error::ResourceExhausted("x".into()), S::TOO_MANY_REQUESTS),
            (Error::Unavailable("x".into()), S::SERVICE_UNAVAILABLE),
            (Error::ShuttingDown, S::SERVICE_UNAVAILABLE),
            (Error::NotFound("x".into()), S::NOT_FOUND),
            (Error::FailedPrecondition("x".into()), S::CONFLICT),
            (Error::Internal("x".into()), S::INTERNAL_SERVER_ERROR),
        ] {
            assert_eq!(e.http_status(), want, "{e}");
        }
    }
}
