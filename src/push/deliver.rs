//! One push: POST a delivery to its subscription's endpoint, then settle it
//! by the answer (docs/push.md has the table).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{signature, store, Counters, Spec, State, MAX_RESPONSE_BYTES, REASON_BODY_BYTES};
use crate::broker::Delivery;
use crate::queues::Queues;

/// What every push of one running subscription shares.
pub(super) struct Ctx {
    pub queues: Arc<Queues>,
    pub spec: Spec,
    /// Each secret's key bytes.
    pub keys: Vec<signature::Key>,
    pub url: reqwest::Url,
    pub client: reqwest::Client,
    /// Cancelled to stop this subscription's consumer (a 410 pauses it).
    pub stop: CancellationToken,
}

/// What an answer means.
#[derive(Debug, PartialEq)]
enum Outcome {
    Delivered,
    /// 410: pause the subscription, keep the message.
    Gone,
    /// Try again; `after` when the endpoint said when (Retry-After).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
}

/// POST `d`, then ack, retry, dead-letter or release it.
pub(super) async fn deliver(ctx: Arc<Ctx>, d: Delivery) {
    let started = Instant::now();
    let (outcome, class) = post(&ctx, &d).await;
    crate::observe::pushed(&ctx.spec.name, class, started.elapsed());
    let r = d.receipt();
    let q = &ctx.queues;
    let mut counted = Counters::default();
    let settled = match outcome {
        Outcome::Delivered => {
            counted.delivered = 1;
            q.ack(std::slice::from_ref(&r)).await.map(|_| ())
        }
        Outcome::Gone => {
            let reason = format!(
                "the endpoint answered 410 Gone at {}; resume once it is back",
                humantime::format_rfc3339_seconds(SystemTime::now())
            );
            tracing::warn!(subscription = %ctx.spec.name, "push endpoint answered 410 Gone: subscription paused");
            ctx.stop.cancel();
            let paused = store::set_state(q.broker(), &ctx.spec.name, State::Paused, &reason).await;
            match paused {
                Ok(()) => q.release(&r).await,
                Err(e) => Err(e),
            }
        }
        Outcome::Retry { reason, after } => {
            counted.failed = 1;
            if d.attempt >= ctx.spec.max_attempts {
                counted.dead_lettered = 1;
                q.nack(&r, None, true, &reason).await.map(|_| ())
            } else {
                let delay = match after {
                    Some(a) => a.min(ctx.spec.max_backoff()),
                    None => ctx.spec.delay(d.attempt),
                };
                tracing::debug!(subscription = %ctx.spec.name, attempt = d.attempt, ?delay, %reason, "push failed; retrying");
                q.nack(&r, Some(delay), false, &reason).await.map(|_| ())
            }
        }
    };
    if let Err(e) = settled {
        // The lease then runs out and the message is redelivered.
        tracing::warn!(subscription = %ctx.spec.name, id = %d.message_id, error = %e, "could not settle a push");
    }
    if let Err(e) = store::count(q.broker(), &ctx.spec.name, counted).await {
        tracing::debug!(subscription = %ctx.spec.name, error = %e, "push counters not updated");
    }
}

/// The POST and what its answer means, with its status class for metrics.
async fn post(ctx: &Ctx, d: &Delivery) -> (Outcome, &'static str) {
    let ts = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.as_secs() as i64)
        .unwrap_or(0);
    let content_type = match d.content_type.as_str() {
        "" => "application/octet-stream",
        ct => ct,
    };
    let header = |name: &str| d.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let traceparent = header("traceparent").cloned().unwrap_or_else(|| {
        format!(
            "00-{:032x}-{:016x}-01",
            rand::random::<u128>() | 1,
            rand::random::<u64>() | 1
        )
    });
    let mut req = ctx
        .client
        .post(ctx.url.clone())
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header("webhook-id", &d.message_id)
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            signature::header(&ctx.keys, &d.message_id, ts, &d.payload),
        )
        .header("leanmq-attempt", d.attempt.to_string())
        .header("leanmq-path", &d.path)
        .header("traceparent", traceparent);
    for (k, v) in &ctx.spec.headers {
        req = req.header(k, v);
    }
    let resp = match req.body(d.payload.clone()).send().await {
        Ok(resp) => resp,
        Err(e) => return (failure(ctx, &e), "error"),
    };
    let status = resp.status().as_u16();
    let retry_after = retry_after(resp.headers());
    let body = read_capped(resp).await;
    let class = match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let reason = format!("HTTP {status}: {}", reason_body(&body));
    let outcome = match status {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Gone,
        429 | 502 | 503 | 504 => Outcome::Retry {
            reason,
            after: retry_after,
        },
        _ => Outcome::Retry {
            reason,
            after: None,
        },
    };
    (outcome, class)
}

/// A request that got no answer: timeout, TLS, connect or refused address.
fn failure(ctx: &Ctx, e: &reqwest::Error) -> Outcome {
    let reason = if e.is_timeout() {
        format!("timeout: no answer within {:?}", ctx.spec.timeout())
    } else {
        // The whole chain: reqwest's own message says little.
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(cause) = src {
            s.push_str(": ");
            s.push_str(&cause.to_string());
            src = cause.source();
        }
        s
    };
    Outcome::Retry {
        reason,
        after: None,
    }
}

/// At most [`MAX_RESPONSE_BYTES`] of the body.
async fn read_capped(mut resp: reqwest::Response) -> Vec<u8> {
    let mut buf = Vec::new();
    while buf.len() < MAX_RESPONSE_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => {
                let take = c.len().min(MAX_RESPONSE_BYTES - buf.len());
                buf.extend_from_slice(&c[..take]);
            }
            _ => break,
        }
    }
    buf
}

/// The first [`REASON_BODY_BYTES`] of a body, as text, cut on a character.
fn reason_body(body: &[u8]) -> String {
    let head = &body[..body.len().min(REASON_BODY_BYTES)];
    let text = String::from_utf8_lossy(head);
    let mut end = text.len().min(REASON_BODY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_retry_after() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().expect("value"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert(reqwest::header::RETRY_AFTER, later.parse().expect("value"));
        let got = retry_after(&h).expect("a date");
        assert!(got > Duration::from_secs(100) && got <= Duration::from_secs(120));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().expect("value"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn reasons_keep_256_bytes() {
        assert_eq!(reason_body(b"nope"), "nope");
        let long = "é".repeat(200);
        let r = reason_body(long.as_bytes());
        assert!(r.len() <= REASON_BODY_BYTES && r.starts_with('é'));
    }
}
