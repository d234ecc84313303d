//! The router and its handlers. Each handler: check the session (and, for
//! a POST, its CSRF token), call [`super::api`] with the caller's grant,
//! render a page or redirect. Failures go through [`Failure`].

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State as Extract};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use serde::Deserialize;

use super::api::{Api, Selection};
use super::error::Failure;
use super::pages::{self, Ctx, Done, LetterPage, QueueList, Sort};
use super::session::{self, Session};
use super::view::QueueRow;
use super::{assets, State};
use crate::auth::Grant;

/// Longest queue name in a URL (paths are at most 1024 bytes).
const MAX_NAME: usize = 1024;
/// Longest filter.
const MAX_FILTER: usize = 200;
/// Longest page token accepted back.
const MAX_TOKEN: usize = 512;
/// Most dead letters one action names (as DeleteDeadLetters allows).
const MAX_IDS: usize = 1000;
/// Longest dead letter id (`<ms>-<seq>`, two u64s).
const MAX_ID: usize = 48;
/// Longest token typed into the sign-in form.
const MAX_LOGIN_TOKEN: usize = 4096;
/// Largest form body.
const MAX_FORM: usize = 128 * 1024;
/// Queues the queues page fetches details (groups, pending…) for.
pub const DETAIL_LIMIT: usize = 200;
/// GetQueue calls in flight for the queues page.
const DETAIL_CONCURRENCY: usize = 8;
/// Dead letters per page: default and most.
const PAGE_DEFAULT: u32 = 25;
const PAGE_MAX: u32 = 100;
/// Dead letters previewed on the queue page.
const PREVIEW_LETTERS: u32 = 10;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) fn router(state: State) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/queues") }))
        .route("/queues", get(queues))
        .route("/push", get(push_subscriptions))
        .route("/queues/{queue}", get(queue))
        .route("/queues/{queue}/purge", post(purge_queue))
        .route("/queues/{queue}/dead-letters", get(dead_letters))
        .route("/queues/{queue}/dead-letters/requeue", post(requeue))
        .route("/queues/{queue}/dead-letters/delete", post(delete))
        .route(
            "/queues/{queue}/dead-letters/purge",
            post(purge_dead_letters),
        )
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route(&assets::css_url(), get(assets::css))
        .route(&assets::js_url(), get(assets::js))
        .fallback(|| async { Failure::not_found() })
        .layer(middleware::from_fn_with_state(state.clone(), sessions))
        .layer(middleware::map_response(security_headers))
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .with_state(state)
}

/// Strict CSP and friends on every response; pages are not cached.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// Open the session cookie (or start a session) for every request; a new
/// session's cookie is set on the response unless the handler set one.
async fn sessions(Extract(st): Extract<State>, mut req: Request, next: Next) -> Response {
    let s = session::cookie_value(req.headers().get_all(header::COOKIE).iter(), st.secure)
        .and_then(|v| st.keys.open(v))
        .unwrap_or_else(|| st.keys.issue(None));
    req.extensions_mut().insert(s.clone());
    let mut r = next.run(req).await;
    if s.fresh && !r.headers().contains_key(header::SET_COOKIE) {
        if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&st.keys, &s, st.secure)) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// The caller behind a session.
struct Viewer {
    grant: std::sync::Arc<Grant>,
    ctx: Ctx,
}

/// Who the session is, or a sign-in redirect (`redirect`) / 401. Takes
/// one request from the token's rate budget, as a gRPC call does.
fn viewer(st: &State, s: &Session, redirect: bool) -> Result<Viewer, Failure> {
    let on = st.auth.enabled();
    let grant = if on {
        let Some(hash) = &s.principal else {
            return Err(Failure::sign_in(redirect));
        };
        st.auth
            .grant_of_hash(hash)
            .map_err(|_| Failure::sign_in(redirect))?
    } else {
        st.auth
            .grant_of_hash("")
            .map_err(|e| Failure::from(tonic::Status::from(e)))?
    };
    grant
        .take()
        .map_err(|e| Failure::from(tonic::Status::from(e)))?;
    Ok(Viewer {
        ctx: Ctx {
            who: on.then(|| grant.name.clone()),
            anonymous: !on,
            csrf: st.keys.csrf(s),
        },
        grant,
    })
}

fn name_ok(queue: &str) -> Result<(), Failure> {
    if queue.is_empty() || queue.len() > MAX_NAME {
        return Err(Failure::bad_request(format!(
            "a queue name is 1 to {MAX_NAME} bytes"
        )));
    }
    Ok(())
}

fn see_other(to: String) -> Response {
    Redirect::to(&to).into_response()
}

async fn push_subscriptions(
    Extract(st): Extract<State>,
    Extension(s): Extension<Session>,
) -> Result<Response, Failure> {
    let v = viewer(&st, &s, true)?;
    let api = Api::new(st.admin.as_ref(), v.grant.clone());
    let rows = api.push_subscriptions().await?;
    Ok(super::push::page(&v.ctx, &rows).into_response())
}

#[derive(Debug, Deserialize)]
struct QueuesQuery {
    q: Option<String>,
    sort: Option<String>,
    dir: Option<String>,
    fragment: Option<String>,
}

async fn queues(
    Extract(st): Extract<State>,
    Extension(s): Extension<Session>,
    Query(qq): Query<QueuesQuery>,
) -> Result<Response, Failure> {
    let fragment = qq.fragment.is_some();
    let v = viewer(&st, &s, !fragment)?;
    let filter = qq.q.unwrap_or_default();
    if filter.chars().count() > MAX_FILTER {
        return Err(Failure::bad_request(format!(
            "the filter is at most {MAX_FILTER} characters"
        )));
    }
    let sort = match qq.sort.as_deref() {
        None | Some("") => Sort::Name,
        Some(k) => Sort::parse(k).ok_or_else(|| {
            let keys: Vec<&str> = Sort::ALL.iter().map(|s| s.key()).collect();
            Failure::bad_request(format!("sort must be one of {}", keys.join(", ")))
        })?,
    };
    let desc = match qq.dir.as_deref() {
        None | Some("") | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(Failure::bad_request("dir must be asc or desc")),
    };
    let api = Api::new(st.admin.as_ref(), v.grant.clone());
    let mut all = api.queues().await?;
    let total = all.len();
    let needle = filter.to_lowercase();
    all.retain(|q| {
        needle.is_empty()
            || q.name.to_lowercase().contains(&needle)
            || q.paths.iter().any(|p| p.to_lowercase().contains(&needle))
    });
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<String> = all
        .iter()
        .take(DETAIL_LIMIT)
        .map(|q| q.name.clone())
        .collect();
    let api_ref = &api;
    let details: Vec<_> = futures::stream::iter(names)
        .map(|name| async move { api_ref.queue(&name).await })
        .buffered(DETAIL_CONCURRENCY)
        .collect()
        .await;
    let rates = st.rates.current();
    let mut rows = Vec::with_capacity(all.len());
    for (i, q) in all.into_iter().enumerate() {
        let detail = match details.get(i) {
            Some(Ok(d)) => Some(d.totals()),
            // Deleted since ListQueues: leave it out.
            Some(Err(e)) if e.code() == tonic::Code::NotFound => continue,
            Some(Err(e)) => return Err(Failure::from(e)),
            None => None,
        };
        let (send_rate, ack_rate) = rates.get(&q.name).copied().unwrap_or((0.0, 0.0));
        rows.push(QueueRow {
            name: q.name,
            paths: q.paths,
            depth: q.depth,
            dead_letters: q.dead_letters,
            detail,
            send_rate,
            ack_rate,
        });
    }
    sort_rows(&mut rows, sort, desc);
    let list = QueueList {
        rows,
        filter,
        sort,
        desc,
        total,
        detail_limit: DETAIL_LIMIT,
    };
    Ok(if fragment {
        pages::queues_table(&list).into_response()
    } else {
        pages::queues(&v.ctx, &list).into_response()
    })
}

/// Sort by the column, then by name; rows without details sort last.
fn sort_rows(rows: &mut [QueueRow], sort: Sort, desc: bool) {
    use std::cmp::Ordering;
    fn key(r: &QueueRow, sort: Sort) -> Option<f64> {
        let d = r.detail.as_ref();
        Some(match sort {
            Sort::Name => 0.0,
            Sort::Depth => r.depth as f64,
            Sort::DeadLetters => r.dead_letters as f64,
            Sort::Groups => d?.groups as f64,
            Sort::Pending => d?.pending as f64,
            Sort::Lag => d?.lag? as f64,
            Sort::Oldest => d?.oldest_unacked.map(|a| a.as_secs_f64()).unwrap_or(0.0),
            Sort::Scheduled => d?.scheduled as f64,
            Sort::SendRate => r.send_rate,
            Sort::AckRate => r.ack_rate,
        })
    }
    rows.sort_by(|a, b| {
        let by_key = match (key(a, sort), key(b, sort)) {
            (Some(x), Some(y)) => {
                let o = x.partial_cmp(&y).unwrap_or(Ordering::Equal);
                if desc {
                    o.reverse()
                } else {
                    o
                }
            }
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        let by_name = if sort == Sort::Name && desc {
            b.name.cmp(&a.name)
        } else {
            a.name.cmp(&b.name)
        };
        by_key.then(by_name)
    });
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    fragment: Option<String>,
    size: Option<u32>,
    page: Option<String>,
    done: Option<String>,
    n: Option<u64>,
    missing: Option<u64>,
}

impl PageQuery {
    fn done(&self) -> Option<Done> {
        Done::parse(self.done.as_deref(), self.n, self.missing)
    }
}

async fn queue(
    Extract(st): Extract<State>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    Query(pq): Query<PageQuery>,
) -> Result<Response, Failure> {
    let fragment = pq.fragment.is_some();
    let v = viewer(&st, &s, !fragment)?;
    name_ok(&name)?;
    let api = Api::new(st.admin.as_ref(), v.grant.clone());
    let q = api.queue(&name).await?;
    let points = st.rates.series(&q.name);
    let rates = st
        .rates
        .current()
        .get(&q.name)
        .copied()
        .unwrap_or((0.0, 0.0));
    if fragment {
        return Ok(pages::queue_live(&q, &points, rates).into_response());
    }
    let (letters, _) = api.dead_letters(&q.name, PREVIEW_LETTERS, "").await?;
    Ok(pages::queue(&v.ctx, &q, &points, rates, &letters, pq.done()).into_response())
}

async fn dead_letters(
    Extract(st): Extract<State>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    Query(pq): Query<PageQuery>,
) -> Result<Response, Failure> {
    let v = viewer(&st, &s, true)?;
    name_ok(&name)?;
    let size = match pq.size {
        None => PAGE_DEFAULT,
        Some(n) if (1..=PAGE_MAX).contains(&n) => n,
        Some(_) => {
            return Err(Failure::bad_request(format!(
                "size is 1 to {PAGE_MAX} dead letters a page"
            )))
        }
    };
    let token = pq.page.clone().unwrap_or_default();
    if token.len() > MAX_TOKEN {
        return Err(Failure::bad_request(format!(
            "page is a token of at most {MAX_TOKEN} bytes, from a \"Next page\" link"
        )));
    }
    let api = Api::new(st.admin.as_ref(), v.grant.clone());
    let q = api.queue(&name).await?;
    let (letters, next) = api.dead_letters(&q.name, size, &token).await?;
    Ok(pages::dead_letters(
        &v.ctx,
        &LetterPage {
            queue: &q.name,
            total: q.dead_letters,
            letters: &letters,
            size,
            token: &token,
            next: &next,
            done: pq.done(),
        },
    )
    .into_response())
}

/// A posted form's fields, in order (repeated names kept).
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &Bytes) -> Form {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The dead letters a form names: the one button pressed (`one`), else
    /// every ticked box (`id`). Bounded in count and length.
    fn ids(&self) -> Result<Vec<String>, Failure> {
        let ids: Vec<String> = match self.get("one") {
            Some(one) => vec![one.to_string()],
            None => self
                .0
                .iter()
                .filter(|(k, _)| k == "id")
                .map(|(_, v)| v.clone())
                .collect(),
        };
        if ids.is_empty() {
            return Err(Failure::bad_request("select at least one dead letter"));
        }
        if ids.len() > MAX_IDS {
            return Err(Failure::bad_request(format!(
                "at most {MAX_IDS} dead letters at once (selected {})",
                ids.len()
            )));
        }
        if let Some(bad) = ids.iter().find(|i| i.is_empty() || i.len() > MAX_ID) {
            return Err(Failure::bad_request(format!(
                "{:?} is not a dead letter id",
                bad.chars().take(MAX_ID).collect::<String>()
            )));
        }
        Ok(ids)
    }
}

/// The caller of a POST, once its session and CSRF token check out.
fn poster(st: &State, s: &Session, form: &Form) -> Result<Viewer, Failure> {
    let v = viewer(st, s, true)?;
    if !st.keys.csrf_ok(s, form.get("csrf").unwrap_or("")) {
        return Err(Failure::csrf());
    }
    Ok(v)
}

async fn requeue(
    Extract(st): Extract<State>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let form = Form::parse(&body);
    let v = poster(&st, &s, &form)?;
    name_ok(&name)?;
    let sel = if form.get("all") == Some("1") && form.get("one").is_none() {
        Selection::All
    } else {
        Selection::Ids(form.ids()?)
    };
    let api = Api::new(st.admin.as_ref(), v.grant);
    let (n, missing) = api.requeue(&name, sel).await?;
    let done = Done::Requeued {
        n: n as u64,
        missing: missing as u64,
    };
    Ok(see_other(format!(
        "{}/dead-letters?{}",
        pages::queue_url(&name),
        done.query()
    )))
}

async fn delete(
    Extract(st): Extract<State>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let form = Form::parse(&body);
    let v = poster(&st, &s, &form)?;
    name_ok(&name)?;
    let ids = form.ids()?;
    let api = Api::new(st.admin.as_ref(), v.grant);
    let n = api.delete(&name, ids).await?;
    let done = Done::Deleted { n: n.max(0) as u64 };
    Ok(see_other(format!(
        "{}/dead-letters?{}",
        pages::queue_url(&name),
        done.query()
    )))
}

/// PurgeDeadLetters takes no confirmation over gRPC; the console asks for
/// the queue name typed, as PurgeQueue does.
async fn purge_dead_letters(
    Extract(st): Extract<State>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let form = Form::parse(&body);
    let v = poster(&st, &s, &form)?;
    name_ok(&name)?;
    if form.get("confirm").map(str::trim) != Some(name.as_str()) {
        return Err(Failure::bad_request(format!(
            "this deletes every dead letter: type the queue name {name:?} to confirm"
        )));
    }
    let api = Api::new(st.admin.as_ref(), v.grant);
    let n = api.purge_dead_letters(&name).await?;
    let done = Done::PurgedDeadLetters { n: n.max(0) as u64 };
    Ok(see_other(format!(
        "{}/dead-letters?{}",
        pages::queue_url(&name),
        done.query()
    )))
}

async fn purge_queue(
    Extract(st): Extract<State>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let form = Form::parse(&body);
    let v = poster(&st, &s, &form)?;
    name_ok(&name)?;
    let confirm = form.get("confirm").unwrap_or("").trim();
    let api = Api::new(st.admin.as_ref(), v.grant);
    // PurgeQueue itself checks `confirm` against the queue name.
    let n = api.purge_queue(&name, confirm).await?;
    let done = Done::PurgedQueue { n: n.max(0) as u64 };
    Ok(see_other(format!(
        "{}?{}",
        pages::queue_url(&name),
        done.query()
    )))
}

async fn login_form(Extract(st): Extract<State>, Extension(s): Extension<Session>) -> Response {
    if !st.auth.enabled() || viewer(&st, &s, true).is_ok() {
        return see_other("/queues".into());
    }
    pages::login(&st.keys.csrf(&s), None).into_response()
}

async fn login(
    Extract(st): Extract<State>,
    Extension(s): Extension<Session>,
    body: Bytes,
) -> Response {
    use axum::http::StatusCode;
    if !st.auth.enabled() {
        return see_other("/queues".into());
    }
    let form = Form::parse(&body);
    let again = |status: StatusCode, problem: &str| {
        // A fresh session here has its cookie set by the session layer.
        (status, pages::login(&st.keys.csrf(&s), Some(problem))).into_response()
    };
    if !st.keys.csrf_ok(&s, form.get("csrf").unwrap_or("")) {
        return again(StatusCode::FORBIDDEN, "The form expired. Sign in again.");
    }
    let token = form.get("token").unwrap_or("").trim();
    if token.is_empty() || token.len() > MAX_LOGIN_TOKEN {
        return again(
            StatusCode::BAD_REQUEST,
            "Give a token (at most 4096 characters).",
        );
    }
    let header = format!("Bearer {token}");
    if st.auth.authenticate(Some(header.as_bytes())).is_err() {
        return again(StatusCode::UNAUTHORIZED, "Unknown or revoked token.");
    }
    // A new nonce on sign-in: a session fixed before it is worth nothing.
    let signed_in = st.keys.issue(Some(crate::auth::hash_token(token)));
    let mut r = see_other("/queues".into());
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&st.keys, &signed_in, st.secure)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(
    Extract(st): Extract<State>,
    Extension(s): Extension<Session>,
    body: Bytes,
) -> Result<Response, Failure> {
    let form = Form::parse(&body);
    if !st.keys.csrf_ok(&s, form.get("csrf").unwrap_or("")) {
        return Err(Failure::csrf());
    }
    let out = st.keys.issue(None);
    let mut r = see_other(
        if st.auth.enabled() {
            "/login"
        } else {
            "/queues"
        }
        .into(),
    );
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&st.keys, &out, st.secure)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}
