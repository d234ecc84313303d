//! The one error type of the CLI: every failure becomes one line on stderr
//! naming the gRPC code and what to do, and one documented exit code.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use tonic::Code;

/// The server refused the call, or what was asked for does not exist.
pub const EXIT_REFUSED: u8 = 1;
/// Bad flags or input; nothing was sent.
pub const EXIT_USAGE: u8 = 2;
/// leanmqd could not be reached, or answered UNAVAILABLE: worth a retry.
pub const EXIT_UNREACHABLE: u8 = 3;

#[derive(Debug)]
pub enum Failure {
    /// Bad flags or input, found before anything was sent.
    Usage(String),
    /// No connection to leanmqd (refused, DNS, TLS handshake, ...).
    Unreachable { addr: String, cause: String },
    /// No answer within --timeout.
    Timeout { addr: String, after: Duration },
    /// leanmqd answered UNAVAILABLE (Redis down, draining).
    Unavailable { addr: String, message: String },
    /// leanmqd answered with an error status.
    Refused { code: Code, message: String },
    /// Not an error status, but not done either (an unknown dead-letter
    /// id, ids that were not in the DLQ, a server that is not serving).
    Partial(String),
    /// Local I/O: stdout unwritable, stdin unreadable mid-way.
    Io(String),
    /// Whoever read stdout stopped (`leanmq tail | head`): stop quietly,
    /// as other Unix tools do.
    StdoutClosed,
}

impl Failure {
    pub fn usage(msg: impl Into<String>) -> Self {
        Failure::Usage(msg.into())
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Unreachable { .. } | Failure::Timeout { .. } | Failure::Unavailable { .. } => {
                EXIT_UNREACHABLE
            }
            Failure::Refused { .. } | Failure::Partial(_) | Failure::Io(_) => EXIT_REFUSED,
            Failure::StdoutClosed => 0,
        }
    }

    /// Classify a status from a call to `addr`.
    pub fn from_status(addr: &str, status: tonic::Status) -> Self {
        // A status that carries a transport error never reached leanmqd's
        // handlers: the connection failed.
        if let Some(src) = status.source() {
            return Failure::Unreachable {
                addr: addr.to_string(),
                cause: root_cause(src),
            };
        }
        match status.code() {
            Code::Unavailable => Failure::Unavailable {
                addr: addr.to_string(),
                message: one_line(status.message()),
            },
            code => Failure::Refused {
                code,
                message: one_line(status.message()),
            },
        }
    }

    /// A connection that could not be made.
    pub fn unreachable(addr: &str, err: &(dyn std::error::Error + 'static)) -> Self {
        Failure::Unreachable {
            addr: addr.to_string(),
            cause: root_cause(err),
        }
    }
}

/// The gRPC code's canonical name, as grpcurl and the docs spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What an operator can do about a refusal with this code.
fn advice(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated => "pass a valid token with --token or LEANMQ_TOKEN",
        Code::PermissionDenied => "use a token whose grant covers this path, or ask for one",
        Code::InvalidArgument | Code::OutOfRange => "fix the request and run it again",
        Code::NotFound => "check the path or id (`leanmq queues` lists the queues)",
        Code::ResourceExhausted => "slow down and retry later (rate or capacity limit)",
        Code::FailedPrecondition => "the state changed meanwhile; look again and retry",
        Code::Unimplemented => "this leanmqd is too old for this command; upgrade it",
        _ => "see leanmqd's log for details",
    }
}

/// What to try when a connection failed this way.
fn connect_advice(addr: &str, cause: &str) -> &'static str {
    let cause = cause.to_ascii_lowercase();
    let tls = addr.starts_with("https://");
    let closed = [
        "broken pipe",
        "connection reset",
        "closed",
        "connection error",
        "frame",
    ]
    .iter()
    .any(|w| cause.contains(w));
    if cause.contains("certificaterequired") || cause.contains("certificate required") {
        "leanmqd requires a client certificate: pass --cert and --key"
    } else if cause.contains("certificate") {
        "pass the CA that signed leanmqd's certificate with --ca"
    } else if closed && tls {
        "leanmqd hung up during setup: if it requires a client certificate, pass --cert and --key"
    } else if closed {
        "leanmqd hung up or spoke another protocol: if it serves TLS, use an https:// address"
    } else {
        "check that it runs there, or set --addr / LEANMQ_ADDR"
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m) => write!(f, "{m}"),
            Failure::Unreachable { addr, cause } => write!(
                f,
                "cannot reach leanmqd at {addr}: {cause} (UNAVAILABLE); {}",
                connect_advice(addr, cause)
            ),
            Failure::Timeout { addr, after } => write!(
                f,
                "no answer from leanmqd at {addr} within {} (DEADLINE_EXCEEDED); raise --timeout or check the server",
                humantime::format_duration(*after)
            ),
            Failure::Unavailable { addr, message } => write!(
                f,
                "leanmqd at {addr} is unavailable (UNAVAILABLE): {message}; retry shortly"
            ),
            Failure::Refused { code, message } => write!(
                f,
                "refused by leanmqd ({}): {message}; {}",
                code_name(*code),
                advice(*code)
            ),
            Failure::Partial(m) | Failure::Io(m) => write!(f, "{m}"),
            Failure::StdoutClosed => write!(f, "stdout closed"),
        }
    }
}

/// The innermost cause of a transport error, in words an operator knows:
/// "connection refused" rather than the whole hyper chain.
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut last = err.to_string();
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            let named = match io.kind() {
                K::ConnectionRefused => Some("connection refused"),
                K::ConnectionReset => Some("connection reset"),
                K::TimedOut => Some("connection timed out"),
                K::HostUnreachable | K::NetworkUnreachable => Some("host unreachable"),
                _ => None,
            };
            if let Some(n) = named {
                return n.to_string();
            }
            if let Some(inner) = io.get_ref() {
                // rustls and DNS errors ride inside an io::Error.
                return one_line(&inner.to_string());
            }
        }
        last = e.to_string();
        cur = e.source();
    }
    one_line(&last)
}

/// A message on one line: control characters become spaces.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_documented_table() {
        assert_eq!(Failure::usage("x").exit_code(), 2);
        let refused = Failure::from_status("a", tonic::Status::permission_denied("no"));
        assert_eq!(refused.exit_code(), 1);
        assert!(refused.to_string().contains("PERMISSION_DENIED"));
        let down = Failure::from_status("a", tonic::Status::unavailable("redis down"));
        assert_eq!(down.exit_code(), 3);
    }

    #[test]
    fn io_errors_are_named_plainly() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(root_cause(&e), "connection refused");
        assert_eq!(one_line("a\nb"), "a b");
    }
}
