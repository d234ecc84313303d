//! The one place a failure becomes an HTTP status and a page: a gRPC
//! status from the Admin service (through `From<&Status>`), or a check of
//! the console's own (bad form, CSRF). Internals never reach the page: an
//! unexpected error shows "see leanmqd's log", and Redis being unreachable
//! is a 503 that says so.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// A page that could not be served.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: StatusCode,
    /// A fixed, short title (also sent as `x-console-error` for the
    /// refresh script).
    pub title: &'static str,
    /// What happened and what to do, for a person.
    pub detail: String,
    /// Send the browser here instead (sign-in).
    pub location: Option<&'static str>,
}

impl Failure {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Failure {
            status: StatusCode::BAD_REQUEST,
            title: "Bad request",
            detail: detail.into(),
            location: None,
        }
    }

    pub fn csrf() -> Self {
        Failure {
            status: StatusCode::FORBIDDEN,
            title: "Form expired",
            detail: "This form's CSRF token does not belong to your session (it expired, or the form came from elsewhere). Reload the page and try again.".into(),
            location: None,
        }
    }

    pub fn not_found() -> Self {
        Failure {
            status: StatusCode::NOT_FOUND,
            title: "Not found",
            detail: "There is no such page.".into(),
            location: None,
        }
    }

    /// Not signed in: a page redirects to the sign-in form; a refresh (or
    /// any non-GET) gets 401, and the script reloads into the redirect.
    pub fn sign_in(redirect: bool) -> Self {
        Failure {
            status: if redirect {
                StatusCode::SEE_OTHER
            } else {
                StatusCode::UNAUTHORIZED
            },
            title: "Sign in",
            detail: "Sign in with a token to use the console.".into(),
            location: redirect.then_some("/login"),
        }
    }
}

impl From<&tonic::Status> for Failure {
    fn from(s: &tonic::Status) -> Self {
        let status = crate::error::http_status_of(s.code());
        let title = match status {
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::UNAUTHORIZED => "Sign in",
            StatusCode::TOO_MANY_REQUESTS => "Too many requests",
            StatusCode::CONFLICT => "Cannot do that here",
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => "Redis is unreachable",
            _ => "Internal error",
        };
        // Statuses the console has no page for read as internal errors.
        let status = if title == "Internal error" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            status
        };
        let detail = match status {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
                "leanmqd cannot reach Redis right now (or is shutting down); its health check reports NOT_SERVING meanwhile. This page retries by itself. An action taken just now may or may not have been applied: look again once Redis is back.".to_string()
            }
            StatusCode::INTERNAL_SERVER_ERROR => {
                "Something unexpected went wrong; the details are in leanmqd's log.".to_string()
            }
            // The Admin service's own words: they name the field and rule.
            _ => s.message().to_string(),
        };
        Failure {
            status,
            title,
            detail,
            location: None,
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::from(&s)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut r = (self.status, super::pages::error(&self)).into_response();
        r.headers_mut()
            .insert("x-console-error", HeaderValue::from_static(self.title));
        if let Some(to) = self.location {
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static(to));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_http_without_internals() {
        let f = Failure::from(&tonic::Status::unavailable(
            "redis unavailable: 10.0.0.3:6379 refused",
        ));
        assert_eq!(f.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!f.detail.contains("10.0.0.3"));
        let f = Failure::from(&tonic::Status::internal("redis: WRONGTYPE at key x"));
        assert_eq!(f.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!f.detail.contains("WRONGTYPE"));
        let f = Failure::from(&tonic::Status::permission_denied(
            "token \"a\" may not admin",
        ));
        assert_eq!(f.status, StatusCode::FORBIDDEN);
        assert!(f.detail.contains("may not admin"));
        assert_eq!(
            Failure::from(&tonic::Status::not_found("no queue")).status,
            StatusCode::NOT_FOUND
        );
    }
}
