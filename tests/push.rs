//! Push delivery (docs/push.md) against a real HTTP receiver (axum on port
//! 0, in the test) and a real redis-server per test: retries under one
//! webhook-id, 410 pausing, Retry-After, secret rotation, the DLQ after
//! max_attempts, SSRF refusals and the bounds on every field.

mod cli_support;
mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use leanmq_grpc::proto;
use leanmq_grpc::proto::admin_client::AdminClient;
use sha2::Sha256;
use tonic::transport::Channel;

const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_B: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24tdGVzdHM=";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Hit {
    at: Instant,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// An answer: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);

#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Answers given in order; then `fallback`.
    script: Arc<Mutex<VecDeque<Answer>>>,
    fallback: Arc<Mutex<Option<Answer>>>,
}

impl Receiver {
    /// Listen on 127.0.0.1:0; the endpoint URL.
    async fn start(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let me = me.clone();
                async move { me.answer(headers, body.to_vec()) }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}/hook")
    }

    fn answer(&self, headers: HeaderMap, body: Vec<u8>) -> axum::response::Response {
        use axum::response::IntoResponse;
        self.hits.lock().expect("lock").push(Hit {
            at: Instant::now(),
            headers,
            body,
        });
        let next = self.script.lock().expect("lock").pop_front();
        let (code, extra, body) = next
            .or_else(|| self.fallback.lock().expect("lock").clone())
            .unwrap_or((200, vec![], String::new()));
        let mut resp = (StatusCode::from_u16(code).expect("status"), body).into_response();
        for (k, v) in extra {
            resp.headers_mut()
                .insert(k, v.parse().expect("header value"));
        }
        resp
    }

    fn script(&self, answers: Vec<Answer>) {
        *self.script.lock().expect("lock") = answers.into();
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("lock").clone()
    }

    /// Wait (bounded) for at least `n` hits.
    async fn wait_hits(&self, n: usize) -> Vec<Hit> {
        let deadline = Instant::now() + WAIT;
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} pushes arrived",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn header<'a>(h: &'a Hit, name: &str) -> &'a str {
    h.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Does `hit` carry a valid signature under `secret` (verified here, by hand)?
fn signed_by(hit: &Hit, secret: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    let signed = format!(
        "{}.{}.",
        header(hit, "webhook-id"),
        header(hit, "webhook-timestamp")
    );
    mac.update(signed.as_bytes());
    mac.update(&hit.body);
    let want = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    header(hit, "webhook-signature")
        .split(' ')
        .any(|s| s == want)
}

struct Setup {
    _redis: RedisProc,
    d: Leanmqd,
    admin: AdminClient<Channel>,
    client: Client,
    rx: Receiver,
    endpoint: String,
}

async fn setup() -> Setup {
    setup_with(true).await
}

async fn setup_with(allow_private: bool) -> Setup {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.push_allow_private = allow_private;
        c.push_poll_interval = Duration::from_millis(100);
    })
    .await;
    let admin = AdminClient::new(d.channel().await);
    let client = d.client().await;
    let rx = Receiver::default();
    let endpoint = rx.start().await;
    Setup {
        _redis: redis,
        d,
        admin,
        client,
        rx,
        endpoint,
    }
}

fn sub(name: &str, path: &str, endpoint: &str) -> proto::PushSubscription {
    proto::PushSubscription {
        name: name.into(),
        path: path.into(),
        endpoint: endpoint.into(),
        secrets: vec![SECRET_A.into()],
        retry_schedule: vec![ms(0).expect("d"), ms(100).expect("d")],
        ..Default::default()
    }
}

async fn create(
    admin: &mut AdminClient<Channel>,
    s: proto::PushSubscription,
) -> Result<proto::PushSubscription, tonic::Status> {
    admin
        .create_push_subscription(proto::CreatePushSubscriptionRequest {
            subscription: Some(s),
            prefix: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn get(admin: &mut AdminClient<Channel>, name: &str) -> proto::PushSubscription {
    admin
        .get_push_subscription(proto::GetPushSubscriptionRequest {
            name: name.into(),
            prefix: String::new(),
        })
        .await
        .expect("get")
        .into_inner()
}

/// Wait (bounded) until the subscription satisfies `ok`.
async fn wait_sub(
    admin: &mut AdminClient<Channel>,
    name: &str,
    ok: impl Fn(&proto::PushSubscription) -> bool,
) -> proto::PushSubscription {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = get(admin, name).await;
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "subscription never got there: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(client: &mut Client, path: &str, json: &str) -> String {
    client
        .send(json_send(path, json))
        .await
        .expect("send")
        .into_inner()
        .message_id
}

#[tokio::test]
async fn a_500_then_a_200_is_retried_under_the_same_webhook_id() {
    let mut s = setup().await;
    s.rx.script(vec![(500, vec![], "try later".into())]);
    let created = create(&mut s.admin, sub("orders", "/order/status/", &s.endpoint))
        .await
        .expect("created");
    assert_eq!(created.group, "push-orders");
    assert!(created.secrets.is_empty(), "secrets never come back");
    assert_eq!(created.secret_count, 1);
    assert_eq!(created.state, proto::PushState::Active as i32);
    let id = send(&mut s.client, "/order/status/", r#"{"order_id":1}"#).await;
    let hits = s.rx.wait_hits(2).await;
    assert_eq!(header(&hits[0], "webhook-id"), id);
    assert_eq!(header(&hits[1], "webhook-id"), id, "stable across retries");
    assert_eq!(header(&hits[0], "leanmq-attempt"), "1");
    assert_eq!(header(&hits[1], "leanmq-attempt"), "2");
    // The path as LeanMQ records it (normalised).
    assert_eq!(header(&hits[1], "leanmq-path"), "/order/status");
    assert_eq!(header(&hits[1], "content-type"), "application/json");
    assert_eq!(header(&hits[1], "traceparent").len(), 55);
    assert_eq!(hits[1].body, br#"{"order_id":1}"#);
    assert!(hits.iter().all(|h| signed_by(h, SECRET_A)));
    let done = wait_sub(&mut s.admin, "orders", |p| {
        p.counters
            .is_some_and(|c| c.delivered == 1 && c.failed == 1)
    })
    .await;
    assert_eq!(done.state_reason, "");
    // Acked: nothing more comes.
    let q = s
        .admin
        .get_queue(proto::GetQueueRequest {
            path: "/order/status/".into(),
            ..Default::default()
        })
        .await
        .expect("queue")
        .into_inner();
    let g = q
        .groups
        .iter()
        .find(|g| g.name == "push-orders")
        .expect("group");
    assert_eq!(g.pending, 0);
    s.d.stop().await;
}

#[tokio::test]
async fn a_410_pauses_and_loses_nothing() {
    let mut s = setup().await;
    s.rx.script(vec![(410, vec![], "gone".into())]);
    create(&mut s.admin, sub("gone", "/gone/", &s.endpoint))
        .await
        .expect("created");
    let id = send(&mut s.client, "/gone/", "{}").await;
    let paused = wait_sub(&mut s.admin, "gone", |p| {
        p.state == proto::PushState::Paused as i32
    })
    .await;
    assert!(
        paused.state_reason.contains("410"),
        "{}",
        paused.state_reason
    );
    assert_eq!(s.rx.hits().len(), 1);
    // Resumed, the same message arrives.
    s.admin
        .update_push_subscription(proto::UpdatePushSubscriptionRequest {
            subscription: Some(proto::PushSubscription {
                name: "gone".into(),
                state: proto::PushState::Active as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("resumed");
    let hits = s.rx.wait_hits(2).await;
    assert_eq!(header(&hits[1], "webhook-id"), id);
    wait_sub(&mut s.admin, "gone", |p| {
        p.counters.is_some_and(|c| c.delivered == 1)
    })
    .await;
    s.d.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let mut s = setup().await;
    s.rx.script(vec![(
        503,
        vec![("retry-after", "2".into())],
        "busy".into(),
    )]);
    create(&mut s.admin, sub("later", "/later/", &s.endpoint))
        .await
        .expect("created");
    send(&mut s.client, "/later/", "{}").await;
    let hits = s.rx.wait_hits(2).await;
    let gap = hits[1].at - hits[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "retried after {gap:?}, not Retry-After's 2s"
    );
    assert!(gap < Duration::from_secs(10), "retried after {gap:?}");
    // Without Retry-After the schedule's 100 ms applies.
    s.rx.script(vec![(503, vec![], "busy".into())]);
    send(&mut s.client, "/later/", "{}").await;
    let hits = s.rx.wait_hits(4).await;
    let gap = hits[3].at - hits[2].at;
    assert!(gap < Duration::from_millis(1500), "retried after {gap:?}");
    // Retry-After is capped at the subscription's max_backoff.
    let mut capped = sub("capped", "/capped/", &s.endpoint);
    capped.max_backoff = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    create(&mut s.admin, capped).await.expect("created");
    s.rx.script(vec![(
        429,
        vec![("retry-after", "3600".into())],
        "slow down".into(),
    )]);
    send(&mut s.client, "/capped/", "{}").await;
    let hits = s.rx.wait_hits(6).await;
    let gap = hits[5].at - hits[4].at;
    assert!(
        gap >= Duration::from_millis(900) && gap < Duration::from_secs(10),
        "retried after {gap:?}, not max_backoff's 1s"
    );
    s.d.stop().await;
}

#[tokio::test]
async fn a_rotation_signs_with_both_secrets() {
    let mut s = setup().await;
    let mut two = sub("rotate", "/rotate/", &s.endpoint);
    two.secrets = vec![SECRET_A.into(), SECRET_B.into()];
    let created = create(&mut s.admin, two).await.expect("created");
    assert_eq!(created.secret_count, 2);
    assert_eq!(created.secret_hints, vec!["whsec_Mf…", "whsec_c2…"]);
    send(&mut s.client, "/rotate/", r#"{"a":1}"#).await;
    let hits = s.rx.wait_hits(1).await;
    assert_eq!(header(&hits[0], "webhook-signature").split(' ').count(), 2);
    assert!(signed_by(&hits[0], SECRET_A) && signed_by(&hits[0], SECRET_B));
    // The old secret retired: only the new one signs.
    s.admin
        .update_push_subscription(proto::UpdatePushSubscriptionRequest {
            subscription: Some(proto::PushSubscription {
                name: "rotate".into(),
                secrets: vec![SECRET_B.into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("rotated");
    wait_sub(&mut s.admin, "rotate", |p| p.secret_count == 1).await;
    // The runner picks the change up within its poll; send until one shows it.
    let deadline = Instant::now() + WAIT;
    loop {
        send(&mut s.client, "/rotate/", r#"{"a":2}"#).await;
        let n = s.rx.hits().len() + 1;
        let last = s.rx.wait_hits(n).await.pop().expect("a hit");
        if !signed_by(&last, SECRET_A) {
            assert!(signed_by(&last, SECRET_B));
            break;
        }
        assert!(Instant::now() < deadline, "the old secret still signs");
    }
    s.d.stop().await;
}

#[tokio::test]
async fn max_attempts_dead_letters_with_the_answer() {
    let mut s = setup().await;
    *s.rx.fallback.lock().expect("lock") = Some((500, vec![], "boom".repeat(100)));
    let mut two = sub("dlq", "/dlq/", &s.endpoint);
    two.max_attempts = 2;
    create(&mut s.admin, two).await.expect("created");
    let id = send(&mut s.client, "/dlq/", "{}").await;
    let deadline = Instant::now() + WAIT;
    let dead = loop {
        let page = s
            .admin
            .list_dead_letters(proto::ListDeadLettersRequest {
                path: "/dlq/".into(),
                ..Default::default()
            })
            .await
            .expect("dlq")
            .into_inner();
        if let Some(d) = page.dead_letters.into_iter().next() {
            break d;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.original_message_id, id);
    let want = format!("HTTP 500: {}", &"boom".repeat(100)[..256]);
    assert_eq!(dead.last_reason, want);
    assert_eq!(s.rx.hits().len(), 2);
    wait_sub(&mut s.admin, "dlq", |p| {
        p.counters
            .is_some_and(|c| c.dead_lettered == 1 && c.failed == 2)
    })
    .await;
    s.d.stop().await;
}

/// A redirect is an answer, never followed; and an endless answer is read
/// only as far as the 64 KiB cap: with an unbounded read, each attempt would
/// run to the subscription's 30 s timeout, past this test's wait.
#[tokio::test]
async fn a_redirect_is_not_followed_and_an_endless_body_is_cut() {
    let mut s = setup().await;
    // Where the redirect points: it must never be asked.
    let elsewhere = s.endpoint.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let location = elsewhere.clone();
            async move {
                let endless = futures::stream::repeat_with(|| {
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 16 * 1024]))
                });
                axum::response::Response::builder()
                    .status(StatusCode::FOUND)
                    .header("location", location)
                    .body(axum::body::Body::from_stream(endless))
                    .expect("response")
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let redirecting = format!("http://{}/hook", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });

    let mut two = sub("moved", "/moved/", &redirecting);
    two.max_attempts = 2;
    two.timeout = dur(Duration::from_secs(30));
    create(&mut s.admin, two).await.expect("created");
    let id = send(&mut s.client, "/moved/", "{}").await;
    let deadline = Instant::now() + WAIT;
    let dead = loop {
        let page = s
            .admin
            .list_dead_letters(proto::ListDeadLettersRequest {
                path: "/moved/".into(),
                ..Default::default()
            })
            .await
            .expect("dlq")
            .into_inner();
        if let Some(d) = page.dead_letters.into_iter().next() {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "never dead-lettered: the endless body was read past its cap"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.original_message_id, id);
    assert_eq!(dead.last_reason, format!("HTTP 302: {}", "x".repeat(256)));
    assert!(s.rx.hits().is_empty(), "the redirect was followed");
    s.d.stop().await;
}

#[tokio::test]
async fn ssrf_targets_are_refused_at_creation() {
    let mut s = setup_with(false).await;
    let port = s
        .endpoint
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    for (endpoint, why) in [
        (s.endpoint.clone(), "http://"),
        (format!("https://127.0.0.1:{port}"), "127.0.0.1"),
        ("https://localhost/hook".to_string(), "resolves to"),
        (
            "https://169.254.169.254/latest/meta-data".to_string(),
            "169.254.169.254",
        ),
        ("https://[fd00:ec2::254]/".to_string(), "fd00:ec2::254"),
        ("https://10.0.0.1/".to_string(), "10.0.0.1"),
        ("https://[::1]/".to_string(), "::1"),
    ] {
        let err = create(&mut s.admin, sub("ssrf", "/ssrf/", &endpoint))
            .await
            .expect_err(&endpoint);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{endpoint}");
        assert!(err.message().contains(why), "{endpoint}: {}", err.message());
    }
    s.d.stop().await;
}

/// A subscription whose name resolves to loopback only at connect time (as
/// after a DNS rebinding) reaches nothing: stored behind the creation
/// check's back, its pushes fail in the resolver and dead-letter.
#[tokio::test]
async fn the_resolver_refuses_what_the_creation_check_would() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.push_allow_http = true;
        c.push_poll_interval = Duration::from_millis(100);
    })
    .await;
    let mut admin = AdminClient::new(d.channel().await);
    let mut client = d.client().await;
    let rx = Receiver::default();
    let endpoint = rx.start().await.replace("127.0.0.1", "localhost");
    let err = create(&mut admin, sub("rebind", "/rebind/", &endpoint))
        .await
        .expect_err("localhost is loopback");
    assert!(err.message().contains("resolves to"), "{}", err.message());
    let spec = leanmq_grpc::push::Spec {
        name: "rebind".into(),
        path: "/rebind/".into(),
        group: "push-rebind".into(),
        start: "0".into(),
        endpoint,
        secrets: vec![SECRET_A.into()],
        timeout_ms: 2000,
        max_in_flight: 1,
        max_attempts: 1,
        retry_schedule_ms: vec![0],
        max_backoff_ms: 1000,
        headers: vec![],
    };
    let mut r = redis.conn();
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg("webhook:{#push}:sub:rebind")
        .arg("spec")
        .arg(serde_json::to_string(&spec).expect("json"))
        .arg("state")
        .arg("active")
        .cmd("SADD")
        .arg("webhook:{#push}:index")
        .arg("rebind")
        .query(&mut r)
        .expect("stored");
    send(&mut client, "/rebind/", "{}").await;
    let deadline = Instant::now() + WAIT;
    let dead = loop {
        let page = admin
            .list_dead_letters(proto::ListDeadLettersRequest {
                path: "/rebind/".into(),
                ..Default::default()
            })
            .await
            .expect("dlq")
            .into_inner();
        if let Some(d) = page.dead_letters.into_iter().next() {
            break d;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        dead.last_reason
            .contains("resolves only to addresses pushes may not reach"),
        "{}",
        dead.last_reason
    );
    assert!(rx.hits().is_empty(), "the receiver was reached");
    let mut d = d;
    d.stop().await;
}

#[tokio::test]
async fn every_field_is_bounded() {
    let mut s = setup().await;
    let e = s.endpoint.clone();
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
    let d = |secs: i64| prost_types::Duration {
        seconds: secs,
        nanos: 0,
    };
    type Tweak = Box<dyn Fn(&mut proto::PushSubscription)>;
    let cases: Vec<(Tweak, &str)> = vec![
        (Box::new(|p| p.name = String::new()), "name is 0 bytes"),
        (Box::new(|p| p.name = "x".repeat(65)), "1 to 64 bytes"),
        (Box::new(|p| p.name = "a b".into()), "letters, digits"),
        (Box::new(|p| p.name = "-a".into()), "starting with a letter"),
        (Box::new(|p| p.path = String::new()), "path is empty"),
        (
            Box::new(|p| p.endpoint = format!("https://{}/", "a".repeat(2050))),
            "endpoint is 2059 bytes",
        ),
        (Box::new(|p| p.endpoint = "ftp://x/".into()), "scheme"),
        (Box::new(|p| p.secrets = vec![]), "secrets holds 0"),
        (
            Box::new(move |p| p.secrets = vec![SECRET_A.into(); 6]),
            "secrets holds 6",
        ),
        (
            Box::new(|p| p.secrets = vec!["nope".into()]),
            "secrets[0] does not start",
        ),
        (
            Box::new(move |p| p.secrets = vec![format!("whsec_{}", b64(23))]),
            "encodes 23 bytes",
        ),
        (
            Box::new(move |p| p.secrets = vec![format!("whsec_{}", b64(65))]),
            "encodes 65 bytes",
        ),
        (Box::new(move |p| p.timeout = Some(d(61))), "timeout"),
        (
            Box::new(|p| p.max_in_flight = 1001),
            "max_in_flight is 1001; the limit is 1000",
        ),
        (Box::new(|p| p.max_attempts = 6), "--max-attempts, 5"),
        (
            Box::new(move |p| p.retry_schedule = vec![d(1); 21]),
            "21 entries; the limit is 20",
        ),
        (
            Box::new(move |p| p.retry_schedule = vec![d(8 * 24 * 3600)]),
            "retry_schedule[0]",
        ),
        (
            Box::new(move |p| p.max_backoff = Some(d(8 * 24 * 3600))),
            "max_backoff",
        ),
        (
            Box::new(|p| p.headers = (0..17).map(|i| (format!("x-h{i}"), "v".into())).collect()),
            "headers holds 17; the limit is 16",
        ),
        (
            Box::new(|p| p.headers = [("x-big".to_string(), "v".repeat(9000))].into()),
            "headers are 9005 bytes",
        ),
        (
            Box::new(|p| p.headers = [("webhook-id".to_string(), "v".into())].into()),
            "set by leanmqd",
        ),
        (
            Box::new(|p| p.headers = [("bad name".to_string(), "v".into())].into()),
            "not an HTTP header name",
        ),
    ];
    for (tweak, want) in cases {
        let mut p = sub("bounds", "/bounds/", &e);
        tweak(&mut p);
        let err = create(&mut s.admin, p).await.expect_err(want);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{want}: {}",
            err.message()
        );
        assert!(
            err.message().contains(want),
            "want {want:?}, got {:?}",
            err.message()
        );
    }
    create(&mut s.admin, sub("bounds", "/bounds/", &e))
        .await
        .expect("valid");
    let dup = create(&mut s.admin, sub("bounds", "/bounds/", &e))
        .await
        .expect_err("a second of the name");
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    // At most 100 per prefix.
    for i in 1..100 {
        create(&mut s.admin, sub(&format!("n{i}"), "/bounds/", &e))
            .await
            .expect("under the cap");
    }
    let full = create(&mut s.admin, sub("n100", "/bounds/", &e))
        .await
        .expect_err("over the cap");
    assert_eq!(
        full.code(),
        tonic::Code::ResourceExhausted,
        "{}",
        full.message()
    );
    let listed = s
        .admin
        .list_push_subscriptions(proto::ListPushSubscriptionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.subscriptions.len(), 100);
    assert!(listed.subscriptions.iter().all(|p| p.secrets.is_empty()));
    s.admin
        .delete_push_subscription(proto::DeletePushSubscriptionRequest {
            name: "n1".into(),
            prefix: String::new(),
        })
        .await
        .expect("deleted");
    let gone = s
        .admin
        .get_push_subscription(proto::GetPushSubscriptionRequest {
            name: "n1".into(),
            prefix: String::new(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), tonic::Code::NotFound);
    s.d.stop().await;
}

#[tokio::test]
async fn the_cli_creates_lists_pauses_and_deletes() {
    use cli_support::{http, leanmq};
    let s = setup().await;
    let addr = http(&s.d);
    leanmq(
        &addr,
        &[
            "push",
            "create",
            "cli",
            "--path",
            "/cli/",
            "--endpoint",
            &s.endpoint,
            "--secret",
            SECRET_A,
            "--header",
            "x-team=ops",
        ],
    )
    .await
    .ok();
    let listed = leanmq(&addr, &["--json", "push", "list"]).await.ok().json();
    assert_eq!(listed[0]["name"], "cli");
    assert_eq!(listed[0]["state"], "active");
    assert_eq!(listed[0]["secret_count"], 1);
    assert!(!listed.to_string().contains(SECRET_A), "no secret shown");
    let paused = leanmq(&addr, &["--json", "push", "pause", "cli"])
        .await
        .ok()
        .json();
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["state_reason"], "paused by an operator");
    let resumed = leanmq(&addr, &["--json", "push", "resume", "cli"])
        .await
        .ok()
        .json();
    assert_eq!(resumed["state"], "active");
    leanmq(&addr, &["push", "delete", "cli"]).await.ok();
    leanmq(&addr, &["push", "get", "cli"])
        .await
        .fails(1, "no push subscription");
    let mut s = s;
    s.d.stop().await;
}

#[tokio::test]
async fn the_console_lists_push_subscriptions_with_their_state() {
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.push_allow_private = true;
        c.console_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let mut admin = AdminClient::new(d.channel().await);
    let p = sub("console-sub", "/console/", "http://127.0.0.1:9/hook");
    create(&mut admin, p).await.expect("created");
    let console = d
        .running
        .as_ref()
        .and_then(|r| r.console_addr)
        .expect("console");
    let body = reqwest::get(format!("http://{console}/push"))
        .await
        .expect("console answers")
        .text()
        .await
        .expect("body");
    assert!(body.contains("console-sub"), "{body}");
    assert!(
        body.contains("/console/") && body.contains("active"),
        "{body}"
    );
    assert!(!body.contains(SECRET_A), "no secret on the page");
    let mut d = d;
    d.stop().await;
}

fn as_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    r
}

/// Push RPCs need admin on the subscription's path: a token that only
/// sends and subscribes may not create one, one with admin on `/mine/>`
/// may there and nowhere else, and sees only its own in List and Get.
#[tokio::test]
async fn push_rpcs_need_admin_on_the_path() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let h = leanmq_grpc::auth::hash_token;
    let file = dir.path().join("tokens.toml");
    std::fs::write(
        &file,
        format!(
            "[[tokens]]\nname = \"user\"\nhash = \"{}\"\nsend = [\">\"]\nsubscribe = [\">\"]\n\n\
             [[tokens]]\nname = \"mine\"\nhash = \"{}\"\nadmin = [\"/mine/>\"]\n\n\
             [[tokens]]\nname = \"root\"\nhash = \"{}\"\nadmin = [\">\"]\n",
            h("user-secret"),
            h("mine-secret"),
            h("root-secret"),
        ),
    )
    .expect("tokens file");
    let d = Leanmqd::start_with(&redis.url(), move |c| {
        c.auth_tokens = Some(file);
        c.push_allow_private = true;
    })
    .await;
    let mut admin = AdminClient::new(d.channel().await);
    let endpoint = "http://127.0.0.1:9/hook";
    let req = |name: &str, path: &str| proto::CreatePushSubscriptionRequest {
        subscription: Some(sub(name, path, endpoint)),
        prefix: String::new(),
    };
    let denied = admin
        .create_push_subscription(as_token(req("u", "/mine/a/"), "user-secret"))
        .await
        .expect_err("no admin grant");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let outside = admin
        .create_push_subscription(as_token(req("o", "/theirs/"), "mine-secret"))
        .await
        .expect_err("outside its grant");
    assert_eq!(outside.code(), tonic::Code::PermissionDenied);
    admin
        .create_push_subscription(as_token(req("m", "/mine/a/"), "mine-secret"))
        .await
        .expect("inside its grant");
    admin
        .create_push_subscription(as_token(req("r", "/theirs/"), "root-secret"))
        .await
        .expect("root");
    let listed = admin
        .list_push_subscriptions(as_token(
            proto::ListPushSubscriptionsRequest::default(),
            "mine-secret",
        ))
        .await
        .expect("list")
        .into_inner();
    let names: Vec<&str> = listed
        .subscriptions
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, vec!["m"]);
    let get = |name: &str| proto::GetPushSubscriptionRequest {
        name: name.into(),
        prefix: String::new(),
    };
    let hidden = admin
        .get_push_subscription(as_token(get("r"), "mine-secret"))
        .await
        .expect_err("another's subscription");
    assert_eq!(hidden.code(), tonic::Code::PermissionDenied);
    let del = admin
        .delete_push_subscription(as_token(
            proto::DeletePushSubscriptionRequest {
                name: "r".into(),
                prefix: String::new(),
            },
            "mine-secret",
        ))
        .await
        .expect_err("another's subscription");
    assert_eq!(del.code(), tonic::Code::PermissionDenied);
    let mut d = d;
    d.stop().await;
}
