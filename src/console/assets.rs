//! Static assets, compiled into the binary (the console needs no internet):
//! the stylesheet and the small script for refresh-in-place, select-all and
//! confirmations. The script is ours, ~80 lines, rather than htmx: the
//! console needs three behaviours and a CSP without `unsafe-eval`.

use axum::http::header;
use axum::response::IntoResponse;

pub const CSS: &str = include_str!("assets/console.css");
pub const JS: &str = include_str!("assets/console.js");

/// Cached for a day; the URLs carry the crate version so an upgrade
/// fetches new ones.
const CACHE: &str = "public, max-age=86400";

pub async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, CACHE),
        ],
        CSS,
    )
}

pub async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, CACHE),
        ],
        JS,
    )
}

/// Asset URLs, versioned.
pub fn css_url() -> String {
    format!("/assets/console-{}.css", env!("CARGO_PKG_VERSION"))
}

pub fn js_url() -> String {
    format!("/assets/console-{}.js", env!("CARGO_PKG_VERSION"))
}
