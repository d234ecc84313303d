//! The web console against a real leanmqd and redis-server, over real HTTP
//! (reqwest): status codes, sign-in, grants, CSRF, escaping, Redis down,
//! TLS. Cookies are handled by hand here, so their attributes can be read.

mod common;

use std::time::{Duration, Instant};

use common::*;
use leanmq_grpc::proto;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

/// A browser-ish client: keeps the session cookie, never follows redirects.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find(r#"name="csrf" value=""#)
            .unwrap_or_else(|| panic!("a form with a CSRF token in: {}", self.body));
        let rest = &self.body[at + r#"name="csrf" value=""#.len()..];
        rest[..rest.find('"').expect("end of value")].to_string()
    }

    fn set_cookie(&self) -> Option<String> {
        self.headers
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

impl Browser {
    fn new(base: String) -> Self {
        Self::with(reqwest::Client::builder(), base)
    }

    fn with(builder: reqwest::ClientBuilder, base: String) -> Self {
        Browser {
            http: builder
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base,
            cookie: None,
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let req = match &self.cookie {
            Some(c) => req.header("cookie", c),
            None => req,
        };
        let r = req.send().await.expect("console answers");
        let status = r.status();
        let headers = r.headers().clone();
        if let Some(c) = headers.get(SET_COOKIE).and_then(|v| v.to_str().ok()) {
            self.cookie = c.split(';').next().map(str::to_string);
        }
        let body = r.text().await.expect("body");
        Page {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(req).await
    }
}

async fn console(
    redis: &RedisProc,
    tweak: impl FnOnce(&mut leanmq_grpc::config::Config),
) -> (Leanmqd, String) {
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.console_listen = Some("127.0.0.1:0".parse().expect("addr"));
        tweak(c);
    })
    .await;
    let at = d
        .running
        .as_ref()
        .and_then(|r| r.console_addr)
        .expect("console bound");
    (d, format!("http://{at}"))
}

/// Receive from the beginning of the stream (the group may be new).
async fn receive_from_start(c: &mut Client, path: &str, group: &str) -> Vec<proto::Delivery> {
    c.receive(proto::ReceiveRequest {
        path: path.into(),
        group: group.into(),
        consumer: "test".into(),
        max_messages: 100,
        wait: dur(WAIT),
        ack_deadline: ms(30_000),
        start: Some(proto::StartPosition {
            position: Some(proto::start_position::Position::Beginning(true)),
        }),
        ..Default::default()
    })
    .await
    .expect("receive")
    .into_inner()
    .deliveries
}

/// Send `n` messages to `path` and dead-letter each with `reason`;
/// returns the original message ids.
async fn dead_letter(c: &mut Client, path: &str, payloads: &[&[u8]], reason: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for p in payloads {
        ids.push(send(c, path, p).await);
    }
    let mut got = 0;
    let deadline = Instant::now() + WAIT;
    while got < payloads.len() {
        assert!(Instant::now() < deadline, "deliveries of {path}");
        for d in receive_from_start(c, path, "workers").await {
            c.nack(proto::NackRequest {
                receipt: d.receipt,
                delay: None,
                dead_letter: true,
                reason: reason.into(),
            })
            .await
            .expect("nack");
            got += 1;
        }
    }
    ids
}

/// The DLQ entry ids the page lists, in order.
fn letter_ids(body: &str) -> Vec<String> {
    body.match_indices(r#"name="one" value=""#)
        .map(|(i, m)| {
            let rest = &body[i + m.len()..];
            rest[..rest.find('"').expect("end")].to_string()
        })
        .collect()
}

#[tokio::test]
async fn pages_answer_with_precise_status_codes() {
    let redis = RedisProc::start();
    let (d, base) = console(&redis, |_| {}).await;
    let mut c = d.client().await;
    dead_letter(&mut c, "/order/status", &[br#"{"order":1}"#], "boom").await;
    let mut b = Browser::new(base);

    let p = b.get("/").await;
    assert_eq!((p.status, p.location()), (StatusCode::SEE_OTHER, "/queues"));
    let cookie = p
        .set_cookie()
        .expect("a session cookie on the first response");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Secure"),
        "no Secure without TLS: {cookie}"
    );

    let p = b.get("/queues").await;
    assert_eq!(p.status, StatusCode::OK);
    let csp = p.headers["content-security-policy"]
        .to_str()
        .expect("ascii");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(p.headers["x-content-type-options"], "nosniff");
    assert!(p.body.contains("Auth is off."), "the no-auth banner");
    assert!(
        p.body.contains(r#"href="/queues/order_status""#),
        "{}",
        p.body
    );
    assert!(
        p.set_cookie().is_none(),
        "the session is kept, not reissued"
    );

    assert_eq!(
        b.get("/queues?sort=depth&dir=desc").await.status,
        StatusCode::OK
    );
    assert_eq!(
        b.get("/queues?fragment=1&q=order").await.status,
        StatusCode::OK
    );
    assert_eq!(
        b.get("/queues?sort=bogus").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        b.get("/queues?dir=sideways").await.status,
        StatusCode::BAD_REQUEST
    );
    let long = format!("/queues?q={}", "a".repeat(201));
    assert_eq!(b.get(&long).await.status, StatusCode::BAD_REQUEST);

    let p = b.get("/queues/order_status").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("<svg"), "the throughput chart");
    assert!(p.body.contains("workers"), "the group");
    assert_eq!(
        b.get("/queues/order_status?fragment=1").await.status,
        StatusCode::OK
    );
    assert_eq!(
        b.get("/queues/no_such_queue").await.status,
        StatusCode::NOT_FOUND
    );
    let long = format!("/queues/{}", "q".repeat(1025));
    assert_eq!(b.get(&long).await.status, StatusCode::BAD_REQUEST);

    let p = b.get("/queues/order_status/dead-letters").await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(letter_ids(&p.body).len(), 1);
    for bad in ["size=0", "size=101", "size=x"] {
        let p = b
            .get(&format!("/queues/order_status/dead-letters?{bad}"))
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let long = format!("/queues/order_status/dead-letters?page={}", "t".repeat(513));
    assert_eq!(b.get(&long).await.status, StatusCode::BAD_REQUEST);
    let p = b
        .get("/queues/order_status/dead-letters?page=garbage")
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);

    assert_eq!(b.get("/nowhere").await.status, StatusCode::NOT_FOUND);
    let css = b.get(&leanmq_grpc::console::assets::css_url()).await;
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(css.headers["content-type"], "text/css; charset=utf-8");
    let js = b.get(&leanmq_grpc::console::assets::js_url()).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js.body.contains("data-refresh"));

    // Forms: no CSRF token → 403; a token but nothing selected → 400; too
    // many or malformed ids → 400.
    let page = b.get("/queues/order_status/dead-letters").await;
    let csrf = page.csrf();
    let p = b
        .post("/queues/order_status/dead-letters/requeue", &[("all", "1")])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = b
        .post(
            "/queues/order_status/dead-letters/requeue",
            &[("csrf", "forged"), ("all", "1")],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = b
        .post(
            "/queues/order_status/dead-letters/delete",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    let many: Vec<(&str, &str)> = std::iter::once(("csrf", csrf.as_str()))
        .chain(std::iter::repeat_n(("id", "1-1"), 1001))
        .collect();
    let p = b
        .post("/queues/order_status/dead-letters/delete", &many)
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    let long_id = "9".repeat(49);
    let p = b
        .post(
            "/queues/order_status/dead-letters/delete",
            &[("csrf", &csrf), ("id", &long_id)],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    let p = b
        .post(
            "/queues/order_status/dead-letters/delete",
            &[("csrf", &csrf), ("id", "not-an-id")],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    let p = b
        .post(
            "/queues/order_status/dead-letters/purge",
            &[("csrf", &csrf), ("confirm", "order")],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("type the queue name"), "{}", p.body);
    let p = b
        .post(
            "/queues/order_status/purge",
            &[("csrf", &csrf), ("confirm", "nope")],
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    // A cookie-less POST (another site's form) has no session: 403.
    let mut stranger = Browser::new(b.base.clone());
    let p = stranger
        .post(
            "/queues/order_status/dead-letters/requeue",
            &[("csrf", &csrf), ("all", "1")],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    // None of that changed anything.
    assert_eq!(xlen(&redis, "webhook:order_status:dlq"), 1);
}

/// The queues page lists every queue, not only ListQueues' first page.
#[tokio::test]
async fn the_queues_page_lists_queues_past_the_first_list_page() {
    let redis = RedisProc::start();
    let (d, base) = console(&redis, |_| {}).await;
    let mut c = d.client().await;
    // More than ListQueues' default page (100), all a call that sets no
    // page_size and follows no page token gets.
    for i in 0..150 {
        c.send(json_send(&format!("/paged/q{i:03}"), "{}"))
            .await
            .expect("send");
    }
    let mut b = Browser::new(base);
    let p = b.get("/queues").await;
    assert_eq!(p.status, StatusCode::OK);
    let missing: Vec<usize> = (0..150)
        .filter(|i| !p.body.contains(&format!(r#"href="/queues/paged_q{i:03}""#)))
        .collect();
    assert!(missing.is_empty(), "not listed: {missing:?}");
}
#[tokio::test]
async fn requeue_delete_and_purge_dead_letters() {
    let redis = RedisProc::start();
    let (d, base) = console(&redis, |_| {}).await;
    let mut c = d.client().await;
    let payloads: [&[u8]; 5] = [b"m0", b"m1", b"m2", b"m3", b"m4"];
    dead_letter(&mut c, "/jobs", &payloads, "handler failed").await;
    let mut b = Browser::new(base);
    let page = b.get("/queues/jobs/dead-letters?size=2").await;
    assert_eq!(page.status, StatusCode::OK);
    let first = letter_ids(&page.body);
    assert_eq!(first.len(), 2, "paged by size");
    assert!(page.body.contains("Next page"));
    assert!(page.body.contains("handler failed"), "the reason");
    let csrf = page.csrf();

    // Requeue one: it is delivered again, with attempts starting over.
    let p = b
        .post(
            "/queues/jobs/dead-letters/requeue",
            &[("csrf", &csrf), ("id", &first[1]), ("one", &first[0])],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(
        p.location(),
        "/queues/jobs/dead-letters?done=requeued&n=1&missing=0"
    );
    let again = receive(&mut c, "/jobs", "workers", 10, 30_000).await;
    assert_eq!(again.len(), 1);
    assert_eq!(&again[0].payload[..], b"m0");
    assert_eq!(again[0].attempt, 1);
    let shown = b.get(p.location()).await;
    assert!(
        shown.body.contains("Requeued 1 dead letter(s)."),
        "{}",
        shown.body
    );
    assert_eq!(xlen(&redis, "webhook:jobs:dlq"), 4);

    // Delete the selected two.
    let page = b.get("/queues/jobs/dead-letters").await;
    let ids = letter_ids(&page.body);
    assert_eq!(ids.len(), 4);
    let p = b
        .post(
            "/queues/jobs/dead-letters/delete",
            &[("csrf", &csrf), ("id", &ids[0]), ("id", &ids[1])],
        )
        .await;
    assert_eq!(p.location(), "/queues/jobs/dead-letters?done=deleted&n=2");
    assert_eq!(xlen(&redis, "webhook:jobs:dlq"), 2);

    // Requeue selected that are gone meanwhile: reported as missing.
    let p = b
        .post(
            "/queues/jobs/dead-letters/requeue",
            &[("csrf", &csrf), ("id", &ids[0]), ("id", &ids[2])],
        )
        .await;
    assert_eq!(
        p.location(),
        "/queues/jobs/dead-letters?done=requeued&n=1&missing=1"
    );
    let back = receive(&mut c, "/jobs", "workers", 10, 30_000).await;
    assert_eq!(back.len(), 1, "the one still there is delivered again");
    assert_eq!(ack(&mut c, &[back[0].receipt.as_str()]).await.len(), 1);

    // Purge with the queue name typed.
    let p = b
        .post(
            "/queues/jobs/dead-letters/purge",
            &[("csrf", &csrf), ("confirm", "jobs")],
        )
        .await;
    assert_eq!(
        p.location(),
        "/queues/jobs/dead-letters?done=purged-dlq&n=1"
    );
    assert_eq!(xlen(&redis, "webhook:jobs:dlq"), 0);
    assert!(b
        .get("/queues/jobs/dead-letters")
        .await
        .body
        .contains("The DLQ is empty."));

    // Requeue all, then purge the queue itself (PurgeQueue's confirm).
    dead_letter(&mut c, "/jobs", &[b"x", b"y"], "again").await;
    let p = b
        .post(
            "/queues/jobs/dead-letters/requeue",
            &[("csrf", &csrf), ("all", "1")],
        )
        .await;
    assert_eq!(
        p.location(),
        "/queues/jobs/dead-letters?done=requeued&n=2&missing=0"
    );
    let p = b
        .post(
            "/queues/jobs/purge",
            &[("csrf", &csrf), ("confirm", "jobs")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert!(
        p.location().starts_with("/queues/jobs?done=purged-queue"),
        "{}",
        p.location()
    );
    assert_eq!(xlen(&redis, "webhook:jobs"), 0);
}

#[tokio::test]
async fn hostile_payloads_headers_and_reasons_show_as_text() {
    let redis = RedisProc::start();
    let (d, base) = console(&redis, |_| {}).await;
    let mut c = d.client().await;
    let mut req = bytes_send("/evil", br#"<script>alert("payload")</script>"#);
    req.headers
        .insert("x-evil".into(), r#"<img src=x onerror=alert(1)>"#.into());
    c.send(req).await.expect("send");
    let json = json_send("/evil", r#"{"html":"<script>alert(2)</script>"}"#);
    c.send(json).await.expect("send");
    let mut got = 0;
    let deadline = Instant::now() + WAIT;
    while got < 2 {
        assert!(Instant::now() < deadline, "deliveries");
        for dl in receive_from_start(&mut c, "/evil", "g").await {
            c.nack(proto::NackRequest {
                receipt: dl.receipt,
                delay: None,
                dead_letter: true,
                reason: "<b onmouseover=alert(3)>bold</b>".into(),
            })
            .await
            .expect("nack");
            got += 1;
        }
    }
    let mut b = Browser::new(base);
    for path in ["/queues/evil/dead-letters", "/queues/evil", "/queues"] {
        let p = b.get(path).await;
        assert_eq!(p.status, StatusCode::OK, "{path}");
        assert!(!p.body.contains("<script>alert"), "{path}: {}", p.body);
        assert!(!p.body.contains("<img src=x"), "{path}");
        assert!(!p.body.contains("<b onmouseover"), "{path}");
    }
    let p = b.get("/queues/evil/dead-letters").await;
    assert!(
        p.body
            .contains("&lt;script&gt;alert(&quot;payload&quot;)&lt;/script&gt;"),
        "{}",
        p.body
    );
    assert!(p.body.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(p
        .body
        .contains("&lt;b onmouseover=alert(3)&gt;bold&lt;/b&gt;"));
    // The JSON one is pretty-printed, still escaped.
    assert!(
        p.body
            .contains("&quot;html&quot;: &quot;&lt;script&gt;alert(2)&lt;/script&gt;&quot;"),
        "{}",
        p.body
    );
    // The only scripts are the console's own, from its origin.
    assert_eq!(p.body.matches("<script").count(), 1);
}

fn tokens(dir: &std::path::Path) -> std::path::PathBuf {
    let h = leanmq_grpc::auth::hash_token;
    let path = dir.join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[tokens]]
name = "order-admin"
hash = "{}"
admin = ["/order/>"]
send = [">"]
subscribe = [">"]

[[tokens]]
name = "sender"
hash = "{}"
send = [">"]
"#,
            h("order-secret"),
            h("send-secret")
        ),
    )
    .expect("write tokens");
    path
}

#[tokio::test]
async fn sign_in_grants_and_csrf() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("dir");
    let file = tokens(dir.path());
    let (d, base) = console(&redis, |c| c.auth_tokens = Some(file.clone())).await;
    let ch = d.channel().await;
    let mut c =
        proto::broker_client::BrokerClient::with_interceptor(ch, |mut r: tonic::Request<()>| {
            r.metadata_mut().insert(
                "authorization",
                "Bearer order-secret".parse().expect("ascii"),
            );
            Ok(r)
        });
    for path in ["/order/eu", "/billing"] {
        let id = c
            .send(bytes_send(path, b"x"))
            .await
            .expect("send")
            .into_inner()
            .message_id;
        assert!(!id.is_empty());
    }

    let mut b = Browser::new(base.clone());
    // Not signed in: pages redirect to the form, refreshes get 401.
    let p = b.get("/queues").await;
    assert_eq!((p.status, p.location()), (StatusCode::SEE_OTHER, "/login"));
    assert_eq!(
        b.get("/queues?fragment=1").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        b.get("/queues/order_eu").await.status,
        StatusCode::SEE_OTHER
    );
    let form = b.get("/login").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(!form.body.contains("Auth is off."));
    let csrf = form.csrf();

    // Wrong token, missing CSRF, empty and oversized tokens.
    let p = b
        .post("/login", &[("csrf", &csrf), ("token", "guess")])
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.body.contains("Unknown or revoked token."));
    let p = b.post("/login", &[("token", "order-secret")]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = b.post("/login", &[("csrf", &csrf), ("token", "")]).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    let huge = "t".repeat(4097);
    let p = b.post("/login", &[("csrf", &csrf), ("token", &huge)]).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    let before = b.cookie.clone();

    // The right token: a new signed session.
    let p = b
        .post("/login", &[("csrf", &csrf), ("token", "order-secret")])
        .await;
    assert_eq!((p.status, p.location()), (StatusCode::SEE_OTHER, "/queues"));
    let cookie = p.set_cookie().expect("session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("order-secret"),
        "the token never goes in the cookie"
    );
    assert_ne!(b.cookie, before, "a new session on sign-in");

    // The admin grant decides what is shown and allowed.
    let p = b.get("/queues").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(
        p.body.contains("Signed in as <strong>order-admin</strong>"),
        "{}",
        p.body
    );
    assert!(p.body.contains("order_eu"));
    assert!(!p.body.contains("billing"), "outside the admin grant");
    assert_eq!(b.get("/queues/billing").await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        b.get("/queues/billing/dead-letters").await.status,
        StatusCode::FORBIDDEN
    );
    let csrf = b.get("/queues/order_eu").await.csrf();
    let p = b
        .post(
            "/queues/billing/dead-letters/requeue",
            &[("csrf", &csrf), ("all", "1")],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    let p = b
        .post(
            "/queues/billing/purge",
            &[("csrf", &csrf), ("confirm", "billing")],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert_eq!(xlen(&redis, "webhook:billing"), 1, "nothing purged");
    // The old (pre-sign-in) form token is worthless now.
    let old = form.csrf();
    let p = b
        .post(
            "/queues/order_eu/purge",
            &[("csrf", &old), ("confirm", "order_eu")],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);

    // A forged cookie is no session.
    let mut forger = Browser::new(base.clone());
    let real = b.cookie.clone().expect("cookie");
    forger.cookie = Some(real.replacen('.', "x.", 1));
    assert_eq!(forger.get("/queues").await.location(), "/login");

    // A token without admin grants signs in and sees nothing.
    let mut sender = Browser::new(base.clone());
    let csrf = sender.get("/login").await.csrf();
    let p = sender
        .post("/login", &[("csrf", &csrf), ("token", "send-secret")])
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let p = sender.get("/queues").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(!p.body.contains("order_eu") && !p.body.contains("billing"));
    assert_eq!(
        sender.get("/queues/order_eu").await.status,
        StatusCode::FORBIDDEN
    );

    // Sign out: CSRF needed, then the session is gone.
    let page = b.get("/queues").await;
    assert_eq!(b.post("/logout", &[]).await.status, StatusCode::FORBIDDEN);
    let p = b.post("/logout", &[("csrf", &page.csrf())]).await;
    assert_eq!((p.status, p.location()), (StatusCode::SEE_OTHER, "/login"));
    assert_eq!(b.get("/queues").await.location(), "/login");

    // Revoking the token (file rewritten, reload) signs its sessions out.
    let mut c2 = Browser::new(base);
    let csrf = c2.get("/login").await.csrf();
    c2.post("/login", &[("csrf", &csrf), ("token", "order-secret")])
        .await;
    assert_eq!(c2.get("/queues").await.status, StatusCode::OK);
    std::fs::write(&file, "").expect("rewrite");
    d.running
        .as_ref()
        .expect("running")
        .reload()
        .expect("reload");
    assert_eq!(c2.get("/queues").await.location(), "/login");
}

#[tokio::test]
async fn redis_down_is_a_503_that_says_so() {
    let mut redis = RedisProc::start();
    let (d, base) = console(&redis, |c| c.redis_timeout = Duration::from_millis(500)).await;
    let mut c = d.client().await;
    dead_letter(&mut c, "/down", &[b"x"], "r").await;
    let mut b = Browser::new(base);
    assert_eq!(b.get("/queues").await.status, StatusCode::OK);
    let csrf = b.get("/queues/down/dead-letters").await.csrf();
    redis.kill();
    let deadline = Instant::now() + WAIT;
    let p = loop {
        let p = b.get("/queues").await;
        if p.status != StatusCode::OK || Instant::now() > deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(p.status, StatusCode::SERVICE_UNAVAILABLE, "{}", p.body);
    assert!(p.body.contains("Redis is unreachable"), "{}", p.body);
    assert!(!p.body.contains("os error"), "no internals: {}", p.body);
    for path in [
        "/queues?fragment=1",
        "/queues/down",
        "/queues/down/dead-letters",
    ] {
        let p = b.get(path).await;
        assert_eq!(
            p.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            p.body
        );
        assert_eq!(p.headers["x-console-error"], "Redis is unreachable");
    }
    // An action while Redis is down: 503 too, never 500.
    let p = b
        .post(
            "/queues/down/dead-letters/requeue",
            &[("csrf", csrf.as_str()), ("all", "1")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SERVICE_UNAVAILABLE, "{}", p.body);
    assert!(p.body.contains("may or may not have been applied"));
    redis.restart();
    let http = b.http.clone();
    let cookie = b.cookie.clone().unwrap_or_default();
    let url = format!("{}/queues", b.base);
    eventually("the console recovers with Redis", || {
        let req = http.get(&url).header("cookie", &cookie);
        async move {
            req.send()
                .await
                .ok()
                .filter(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
}

#[tokio::test]
async fn under_tls_the_console_serves_https_with_a_secure_cookie() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_pem = cert.cert.pem();
    std::fs::write(dir.path().join("c.pem"), &cert_pem).expect("write");
    std::fs::write(dir.path().join("k.pem"), cert.signing_key.serialize_pem()).expect("write");
    let (d, base) = console(&redis, |c| {
        c.tls_cert = Some(dir.path().join("c.pem"));
        c.tls_key = Some(dir.path().join("k.pem"));
    })
    .await;
    let port = base.rsplit(':').next().expect("port").to_string();
    let root = reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("pem");
    let mut b = Browser::with(
        reqwest::Client::builder()
            .add_root_certificate(root)
            .tls_built_in_root_certs(false),
        format!("https://localhost:{port}"),
    );
    let p = b.get("/queues").await;
    assert_eq!(p.status, StatusCode::OK);
    let cookie = p.set_cookie().expect("cookie");
    assert!(cookie.starts_with("__Host-leanmq_console="), "{cookie}");
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plain HTTP on the TLS port gets no page.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/queues"))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    drop(d);
}

#[tokio::test]
async fn anonymous_console_on_a_public_address_is_refused_with_64() {
    let redis = RedisProc::start();
    let (mut child, _) = spawn_leanmqd(&redis.url(), &["--console-listen", "0.0.0.0:0"]);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert_eq!(status.code(), Some(64));
    let (mut child, port) = spawn_leanmqd(
        &redis.url(),
        &["--console-listen", "0.0.0.0:0", "--console-allow-anonymous"],
    );
    connect_when_up(port).await;
    assert!(child.try_wait().expect("wait").is_none(), "serving");
}

#[tokio::test]
async fn send_and_ack_rates_follow_traffic() {
    let redis = RedisProc::start();
    let (d, base) = console(&redis, |_| {}).await;
    let mut c = d.client().await;
    for i in 0..20 {
        send(&mut c, "/rated", format!("m{i}").as_bytes()).await;
    }
    let got = receive_from_start(&mut c, "/rated", "g").await;
    let receipts: Vec<&str> = got.iter().map(|m| m.receipt.as_str()).collect();
    ack(&mut c, &receipts).await;
    let mut b = Browser::new(base);
    let p = b.get("/queues/rated?fragment=1").await;
    assert_eq!(p.status, StatusCode::OK);
    let card = |label: &str| {
        let end = p
            .body
            .find(label)
            .unwrap_or_else(|| panic!("{label} in {}", p.body));
        let head = &p.body[..end];
        let v = head.rfind(r#"<div class="v">"#).expect("value") + r#"<div class="v">"#.len();
        head[v..head[v..].find('<').map(|e| v + e).expect("end")].to_string()
    };
    assert_ne!(card("sent/s (last min)"), "0", "{}", p.body);
    assert_ne!(card("acked/s (last min)"), "0", "{}", p.body);
    let row = b.get("/queues?q=rated").await;
    assert!(
        row.body.contains(r#"<tr data-queue="rated">"#),
        "{}",
        row.body
    );
    // Nothing was dead-lettered here.
    assert_eq!(card("dead letters"), "0");
}

#[tokio::test]
async fn the_console_closes_with_the_drain() {
    let redis = RedisProc::start();
    let (mut d, base) = console(&redis, |_| {}).await;
    let mut b = Browser::new(base.clone());
    assert_eq!(b.get("/queues").await.status, StatusCode::OK);
    d.stop().await;
    let http = reqwest::Client::new();
    let url = format!("{base}/queues");
    eventually("the console stops accepting", || {
        let req = http.get(&url);
        async move { req.send().await.is_err().then_some(()) }
    })
    .await;
}
