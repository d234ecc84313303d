//! RFC 9457 problem details (`application/problem+json`): the one shape of
//! every ingress error. A domain [`Error`] becomes one through
//! [`Error::http_status`] (the mapping next to the gRPC one in
//! `crate::error`); the few refusals only HTTP has (no such route, a
//! form body, a slow upload) are made here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;

/// Seconds a client is told to wait (`Retry-After`) after a 429 or 503.
pub const RETRY_AFTER_SECS: u32 = 1;

/// One problem, as sent.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A stable identifier of the kind of problem, e.g.
    /// `urn:leanmq:problem:payload-too-large`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    #[serde(serialize_with = "as_u16")]
    pub status: StatusCode,
    pub detail: String,
}

fn as_u16<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

impl Problem {
    fn new(status: StatusCode, slug: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            kind: format!("urn:leanmq:problem:{slug}"),
            title,
            status,
            detail: detail.into(),
        }
    }

    /// No route at this method and path.
    pub fn not_found() -> Self {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "no such ingress route; POST /v1/send/<path> or POST /v1/send-batch",
        )
    }

    /// A route that exists, at another method.
    pub fn method_not_allowed() -> Self {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "ingress routes take POST only",
        )
    }

    /// A body whose media type the route does not take.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            detail,
        )
    }

    /// The request (its body's upload included) took too long.
    pub fn timeout(limit: std::time::Duration) -> Self {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            format!("the request took longer than {limit:?} (--http-request-timeout); nothing was stored"),
        )
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        let status = e.http_status();
        let (slug, title, detail) = match &e {
            Error::PayloadTooLarge { .. } => {
                ("payload-too-large", "Payload too large", e.to_string())
            }
            Error::Unauthenticated(_) => ("unauthenticated", "Unauthenticated", e.to_string()),
            Error::PermissionDenied(_) => ("permission-denied", "Permission denied", e.to_string()),
            Error::ResourceExhausted(_) => {
                ("too-many-requests", "Too many requests", e.to_string())
            }
            // Redis's address and error text stay in the log.
            Error::Unavailable(_) | Error::ShuttingDown => {
                tracing::warn!(error = %e, "ingress: unavailable");
                (
                    "unavailable",
                    "Service unavailable",
                    "leanmqd cannot reach Redis right now (or is shutting down); nothing is known to be stored: retry, with the same Idempotency-Key".to_string(),
                )
            }
            Error::NoGroup(_) | Error::Internal(_) => {
                tracing::error!(error = %e, "ingress: internal error");
                (
                    "internal",
                    "Internal error",
                    "something unexpected went wrong; the details are in leanmqd's log".to_string(),
                )
            }
            Error::NotFound(_) => ("not-found", "Not found", e.to_string()),
            Error::LeaseLost(_) | Error::FailedPrecondition(_) | Error::AlreadyExists(_) => {
                ("conflict", "Cannot do that here", e.to_string())
            }
            Error::InvalidArgument(_) => ("invalid-argument", "Bad request", e.to_string()),
        };
        Problem::new(status, slug, title, detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut r = (self.status, body).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internals_stay_in_the_log() {
        let p = Problem::from(Error::Unavailable("10.0.0.3:6379 refused".into()));
        assert_eq!(p.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!p.detail.contains("10.0.0.3"), "{}", p.detail);
        let p = Problem::from(Error::Internal("WRONGTYPE at key x".into()));
        assert!(!p.detail.contains("WRONGTYPE"));
        let p = Problem::from(Error::PayloadTooLarge { size: 9, limit: 8 });
        assert_eq!(p.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(p.kind, "urn:leanmq:problem:payload-too-large");
        let r = Problem::from(Error::ResourceExhausted("shed".into())).into_response();
        assert_eq!(
            r.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }
}
