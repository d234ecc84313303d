//! The ingress router: `POST /v1/send/<path>` and `POST /v1/send-batch`.
//! Each handler takes a place of `--max-concurrent-rpcs`, authenticates
//! (a bearer token, or on a signed route the signature), reads a bounded
//! body in bounded time, converts (`extract`) and makes one call.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::StreamExt as _;
use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::Serialize;

use super::extract::{self, Element};
use super::problem::Problem;
use super::Ingress;
use crate::auth::Grant;
use crate::error::Error;
use crate::proto;
use crate::push::signature::{self, Key, Refused};
use crate::rpc::Caller;

type S = Arc<Ingress>;

/// The route templates, the only `route` metric labels.
const SEND: &str = "/v1/send/{path}";
const BATCH: &str = "/v1/send-batch";

pub fn router(state: S) -> Router {
    Router::new()
        .route("/v1/send/{*path}", post(send))
        .route(BATCH, post(send_batch))
        .fallback(|| async { observed("other", Instant::now(), Err(Problem::not_found())) })
        .method_not_allowed_fallback(|| async {
            observed("other", Instant::now(), Err(Problem::method_not_allowed()))
        })
        .with_state(state)
}

/// Count the answer under its route template (never the raw path).
fn observed(route: &'static str, start: Instant, r: Result<Response, Problem>) -> Response {
    let resp = r.unwrap_or_else(IntoResponse::into_response);
    crate::observe::http(route, resp.status().as_u16(), start.elapsed());
    resp
}

#[derive(Serialize)]
struct Sent {
    message_id: String,
    duplicate: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    schedule_id: String,
}

impl From<proto::SendResponse> for Sent {
    fn from(r: proto::SendResponse) -> Self {
        Sent {
            message_id: r.message_id,
            duplicate: r.duplicate,
            schedule_id: r.schedule_id,
        }
    }
}

/// 202 with `body` as JSON: the message is stored.
fn accepted(body: &impl Serialize) -> Response {
    let json = serde_json::to_vec(body).unwrap_or_default();
    (
        StatusCode::ACCEPTED,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response()
}

async fn send(State(s): State<S>, req: Request) -> Response {
    let start = Instant::now();
    observed(SEND, start, send_one(&s, req).await)
}

async fn send_one(s: &Ingress, req: Request) -> Result<Response, Problem> {
    let _place = s
        .unary
        .try_take()
        .ok_or_else(|| Error::ResourceExhausted(s.unary.refusal()))?;
    let (parts, body) = req.into_parts();
    let raw = parts
        .uri
        .path()
        .strip_prefix("/v1/send")
        .unwrap_or_default();
    let path = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Error::invalid("the path is not UTF-8 once percent-decoded"))?
        .into_owned();
    if let Some(ct) = extract::text(&parts.headers, "content-type")? {
        extract::check_not_form(ct).map_err(Problem::unsupported_media_type)?;
    }
    let signed = s.signed_key(&path);
    let grant = match signed {
        // The signature is the caller's credential: a third party has no token.
        Some(_) => Grant::everything(),
        None => s.authenticate(&parts.headers)?,
    };
    let body = s
        .read_body(&parts.headers, body, s.max_payload_bytes)
        .await?;
    let mut r = extract::send_request(path, &parts.headers, parts.uri.query(), body)?;
    if let Some(key) = signed {
        r.idempotency_key = verified(key, &parts.headers, &r.payload)?;
    }
    let caller = caller(grant, &parts.headers);
    let sent = s.broker.send_as(&caller, r).await?;
    Ok(accepted(&Sent::from(sent)))
}

async fn send_batch(State(s): State<S>, req: Request) -> Response {
    let start = Instant::now();
    observed(BATCH, start, batch(&s, req).await)
}

async fn batch(s: &Ingress, req: Request) -> Result<Response, Problem> {
    let _place = s
        .unary
        .try_take()
        .ok_or_else(|| Error::ResourceExhausted(s.unary.refusal()))?;
    let (parts, body) = req.into_parts();
    if parts.uri.query().is_some_and(|q| !q.is_empty()) {
        return Err(Error::invalid(
            "a batch takes no query parameters: give each message's options in its element",
        )
        .into());
    }
    let grant = s.authenticate(&parts.headers)?;
    if !extract::is_json(extract::text(&parts.headers, "content-type")?) {
        return Err(Problem::unsupported_media_type(
            "a batch is a JSON array: send it as application/json",
        ));
    }
    let body = s
        .read_body(&parts.headers, body, s.max_batch_body_bytes)
        .await?;
    let mut de = serde_json::Deserializer::from_slice(&body);
    let elements = Bounded(s.max_batch)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| Error::invalid(format!("the body is not a JSON array of messages: {e}")))?;
    let messages = elements
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.into_request(&format!("messages[{i}]")))
        .collect::<crate::error::Result<Vec<_>>>()?;
    let caller = caller(grant, &parts.headers);
    let sent = s
        .broker
        .send_batch_as(&caller, proto::SendBatchRequest { messages })
        .await?;
    let results: Vec<Sent> = sent.results.into_iter().map(Sent::from).collect();
    Ok(accepted(&serde_json::json!({ "results": results })))
}

/// A JSON array of at most `.0` batch elements, refused as soon as it has
/// one more (before the rest is parsed).
struct Bounded(usize);

impl<'de> DeserializeSeed<'de> for Bounded {
    type Value = Vec<Element>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Bounded {
    type Value = Vec<Element>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "an array of at most {} messages", self.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(e) = seq.next_element::<Element>()? {
            if out.len() == self.0 {
                return Err(A::Error::custom(format!(
                    "more than {} messages; the limit is {} (--max-batch)",
                    self.0, self.0
                )));
            }
            out.push(e);
        }
        Ok(out)
    }
}

/// The caller, with the request's W3C trace context when well-formed.
fn caller(grant: Arc<Grant>, h: &HeaderMap) -> Caller {
    let traceparent = h
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| crate::rpc::is_traceparent(v))
        .map(str::to_string);
    Caller {
        grant,
        conn: None,
        traceparent,
    }
}

/// The signed request's `webhook-id` once its signature checks out.
fn verified(key: &Key, h: &HeaderMap, body: &[u8]) -> Result<String, Problem> {
    let need = |name: &str| -> Result<String, Error> {
        extract::text(h, name)?.map(str::to_string).ok_or_else(|| {
            Error::Unauthenticated(format!(
                "this route takes only Standard Webhooks signed requests: {name} is missing"
            ))
        })
    };
    let id = need("webhook-id")?;
    let ts = need("webhook-timestamp")?;
    let sig = need("webhook-signature")?;
    let now = crate::broker::envelope::now_secs() as i64;
    signature::verify(key, &id, &ts, &sig, body, now).map_err(|r| {
        Error::Unauthenticated(match r {
            Refused::Malformed(m) => format!("signed route: {m}"),
            Refused::Stale => format!(
                "signed route: webhook-timestamp is more than {}s from this server's clock",
                signature::TOLERANCE_SECS
            ),
            Refused::Mismatch => {
                "signed route: no webhook-signature matches this route's secret".into()
            }
        })
    })?;
    Ok(id)
}

impl Ingress {
    /// The key of the signed route `path` is, if it is one.
    fn signed_key(&self, path: &str) -> Option<&Key> {
        let route = crate::routing::send_route(path).ok()?;
        self.signed
            .iter()
            .find(|(p, _)| *p == route.path)
            .map(|(_, k)| k)
    }

    /// The bearer token's grant, after one request of its rate.
    fn authenticate(&self, h: &HeaderMap) -> Result<Arc<Grant>, Error> {
        let g = self
            .auth
            .authenticate(h.get("authorization").map(|v| v.as_bytes()))?;
        g.take()?;
        Ok(g)
    }

    /// The body, at most `limit` bytes, uploaded within `--http-request-timeout`.
    async fn read_body(
        &self,
        h: &HeaderMap,
        body: Body,
        limit: usize,
    ) -> Result<bytes::Bytes, Problem> {
        let declared = extract::text(h, "content-length")?.and_then(|v| v.parse::<usize>().ok());
        if let Some(size) = declared.filter(|n| *n > limit) {
            return Err(Error::PayloadTooLarge { size, limit }.into());
        }
        let read = async {
            let mut stream = body.into_data_stream();
            let mut buf = bytes::BytesMut::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk
                    .map_err(|e| Error::invalid(format!("the body could not be read: {e}")))?;
                if buf.len() + chunk.len() > limit {
                    return Err(Error::PayloadTooLarge {
                        size: buf.len() + chunk.len(),
                        limit,
                    });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(buf.freeze())
        };
        match tokio::time::timeout(self.request_timeout, read).await {
            Ok(r) => r.map_err(Problem::from),
            Err(_) => Err(Problem::timeout(self.request_timeout)),
        }
    }
}
