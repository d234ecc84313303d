//! The web console in a real browser: Debian's headless `chromium`, driven
//! through `chromedriver` (WebDriver). It loads the queues page, opens a
//! queue's dead letters, requeues one, and checks over gRPC that the
//! message is delivered again. Run by `make test-console` (which installs
//! chromium); with `CONSOLE_SCREENSHOTS=<dir>` it also saves a screenshot
//! of each page there (`make console-screenshots` writes docs/console/).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client as Driver, ClientBuilder, Locator};
use leanmq_grpc::proto;

/// chromedriver on a free port, killed on drop.
struct ChromeDriver {
    _child: tokio::process::Child,
    url: String,
}

impl ChromeDriver {
    async fn start() -> ChromeDriver {
        let bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = free_port();
        let child = tokio::process::Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{bin}: {e} (apt-get install chromium chromium-driver, or make test-console)"
                )
            });
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        eventually("chromedriver answers", || {
            let status = status.clone();
            async move {
                reqwest::get(&status)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        ChromeDriver { _child: child, url }
    }

    async fn browser(&self) -> Driver {
        let mut caps = serde_json::Map::new();
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1360,1100", "--hide-scrollbars"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a chromium session")
    }
}

/// Wait for an element (the page may still be loading).
async fn find(b: &Driver, css: &str) -> fantoccini::elements::Element {
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("element {css}: {e}"))
}

async fn shot(b: &Driver, name: &str) {
    let Some(dir) = std::env::var_os("CONSOLE_SCREENSHOTS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = b.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

fn json(path: &str, body: &str, headers: &[(&str, &str)]) -> proto::SendRequest {
    let mut r = json_send(path, body);
    if !body.starts_with('{') {
        r.content_type = "text/html".into();
    }
    r.headers = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<HashMap<_, _>>();
    r
}

/// A JSON payload, one per dead letter, and the reason it failed with.
const FAILING: [(&str, &str); 3] = [
    (
        r#"{"order_id":1042,"status":"paid","items":[{"sku":"A-1","qty":2}]}"#,
        "payment provider timed out",
    ),
    (
        r#"{"order_id":1043,"status":"shipped"}"#,
        "KeyError: 'address'",
    ),
    (
        r#"<script>alert("not run")</script>"#,
        "<b>markup stays text</b>",
    ),
];

/// Queues with traffic, consumers and dead letters to look at.
async fn seed(c: &mut Client, screenshots: bool) {
    for (path, n) in [
        ("/billing/invoice", 3),
        ("/email/welcome", 12),
        ("/search/reindex", 1),
    ] {
        for i in 0..n {
            c.send(json(path, &format!(r#"{{"n":{i}}}"#), &[]))
                .await
                .expect("send");
        }
    }
    // One in flight in a second group, so its pending and oldest age show.
    c.receive(proto::ReceiveRequest {
        path: "/email/welcome".into(),
        group: "mailer".into(),
        consumer: "mailer-1".into(),
        max_messages: 1,
        wait: dur(WAIT),
        ack_deadline: ms(300_000),
        start: Some(proto::StartPosition {
            position: Some(proto::start_position::Position::Beginning(true)),
        }),
        ..Default::default()
    })
    .await
    .expect("receive");
    for (body, _) in FAILING {
        c.send(json(
            "/order/status",
            body,
            &[("trace-id", "4bf92f3577b34da6"), ("tenant", "acme")],
        ))
        .await
        .expect("send");
    }
    let mut left = FAILING.len();
    let deadline = Instant::now() + WAIT;
    while left > 0 {
        assert!(Instant::now() < deadline, "deliveries of /order/status");
        let got = c
            .receive(proto::ReceiveRequest {
                path: "/order/status".into(),
                group: "fulfilment".into(),
                consumer: "worker-1".into(),
                max_messages: 10,
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
            .deliveries;
        for d in got {
            let reason = FAILING
                .iter()
                .find(|(b, _)| b.as_bytes() == &d.payload[..])
                .map(|(_, r)| *r)
                .unwrap_or("failed");
            c.nack(proto::NackRequest {
                receipt: d.receipt,
                delay: None,
                dead_letter: true,
                reason: reason.into(),
            })
            .await
            .expect("nack");
            left -= 1;
        }
    }
    if screenshots {
        // For the chart: a minute of steady traffic, two thirds of it acked.
        let until = Instant::now() + Duration::from_secs(65);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut i = 0u64;
        while Instant::now() < until {
            tick.tick().await;
            c.send(json(
                "/order/status",
                &format!(r#"{{"order_id":{i}}}"#),
                &[],
            ))
            .await
            .expect("send");
            if !i.is_multiple_of(3) {
                let d = receive(c, "/order/status", "fulfilment", 1, 30_000).await;
                let receipts: Vec<&str> = d.iter().map(|d| d.receipt.as_str()).collect();
                ack(c, &receipts).await;
            }
            i += 1;
        }
    }
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver: run by `make test-console`"]
async fn requeue_from_the_browser_is_delivered_again() {
    let screenshots = std::env::var_os("CONSOLE_SCREENSHOTS").is_some();
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.console_listen = Some("127.0.0.1:0".parse().expect("addr"))
    })
    .await;
    let base = format!(
        "http://{}",
        d.running
            .as_ref()
            .and_then(|r| r.console_addr)
            .expect("console")
    );
    let mut c = d.client().await;
    seed(&mut c, screenshots).await;

    let driver = ChromeDriver::start().await;
    let b = driver.browser().await;

    // 1. The queues page lists the queue, and its script runs under the CSP
    //    (the table refreshes in place).
    b.goto(&format!("{base}/queues")).await.expect("goto");
    find(&b, r#"tr[data-queue="order_status"]"#).await;
    let status = find(&b, "#refresh-status").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let t = status.text().await.expect("text");
        if t.starts_with("Updated") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the table refreshed in place (status {t:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dlq = r#"tr[data-queue="order_status"] a[href$="/dead-letters"]"#;
    assert_eq!(find(&b, dlq).await.text().await.expect("text"), "3");
    shot(&b, "queues").await;

    // The queue page renders in a browser, chart and groups.
    b.goto(&format!("{base}/queues/order_status"))
        .await
        .expect("goto");
    find(&b, "figure.chart svg").await;
    find(&b, "#groups").await;
    shot(&b, "queue").await;

    // 2. Open the queue's dead letters from the queues page.
    b.goto(&format!("{base}/queues")).await.expect("goto");
    find(&b, dlq).await.click().await.expect("click");
    find(&b, "section.dl").await;
    let url = b.current_url().await.expect("url");
    assert!(url.path().ends_with("/order_status/dead-letters"), "{url}");
    // The hostile payload is text on the page, not a script.
    let shown = find(&b, "body").await.text().await.expect("text");
    assert!(
        shown.contains(r#"<script>alert("not run")</script>"#),
        "shown as text"
    );
    assert!(shown.contains("<b>markup stays text</b>"));
    shot(&b, "dead-letters").await;

    // 3. Requeue the first one.
    let first = find(&b, "section.dl").await;
    let id = first.attr("data-id").await.expect("attr").expect("data-id");
    let payload = first
        .find(Locator::Css("pre.payload"))
        .await
        .expect("payload")
        .text()
        .await
        .expect("text");
    first
        .find(Locator::Css("button[name=one]"))
        .await
        .expect("requeue button")
        .click()
        .await
        .expect("click");
    let flash = find(&b, ".flash").await.text().await.expect("text");
    assert_eq!(flash, "Requeued 1 dead letter(s).");
    let mut ids = Vec::new();
    for e in b
        .find_all(Locator::Css("section.dl"))
        .await
        .expect("letters")
    {
        ids.push(e.attr("data-id").await.expect("attr").unwrap_or_default());
    }
    assert!(!ids.contains(&id), "{id} left the DLQ");
    assert_eq!(ids.len(), 2);

    // 4. It is delivered again, over gRPC, with attempts starting over.
    //    (With screenshots, the chart's traffic is queued ahead of it: those
    //    are acked on the way.)
    let want: serde_json::Value = serde_json::from_str(&payload).expect("pretty JSON shown");
    let deadline = Instant::now() + WAIT;
    let redelivered = loop {
        assert!(
            Instant::now() < deadline,
            "the requeued message ({payload}) delivered"
        );
        let got = receive(&mut c, "/order/status", "fulfilment", 100, 30_000).await;
        let (hit, others): (Vec<_>, Vec<_>) = got.into_iter().partition(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.payload)
                .ok()
                .as_ref()
                == Some(&want)
        });
        let receipts: Vec<&str> = others.iter().map(|m| m.receipt.as_str()).collect();
        if !receipts.is_empty() {
            ack(&mut c, &receipts).await;
        }
        if let Some(m) = hit.into_iter().next() {
            break m;
        }
    };
    assert_eq!(redelivered.attempt, 1);
    assert_eq!(
        redelivered.headers.get("tenant").map(String::as_str),
        Some("acme")
    );

    // The sign-in form, as a leanmqd with --auth-tokens shows it.
    if screenshots {
        let dir = tempfile::tempdir().expect("dir");
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(
            &tokens,
            format!(
                "[[tokens]]\nname = \"ops\"\nhash = \"{}\"\nadmin = [\">\"]\n",
                leanmq_grpc::auth::hash_token("ops-secret")
            ),
        )
        .expect("tokens");
        let secured = Leanmqd::start_with(&redis.url(), |c| {
            c.console_listen = Some("127.0.0.1:0".parse().expect("addr"));
            c.auth_tokens = Some(tokens.clone());
        })
        .await;
        let at = secured
            .running
            .as_ref()
            .and_then(|r| r.console_addr)
            .expect("console");
        b.goto(&format!("http://{at}/queues")).await.expect("goto");
        find(&b, "input[name=token]").await;
        shot(&b, "login").await;
    }

    b.close().await.expect("close");
}

/// Calls `method` with `msg` from the page loaded in `b`, through the
/// browser's own `fetch` (so CORS and the browser's HTTP stack apply), and
/// returns the reply's message and trailer text.
async fn grpc_web_from<T: prost::Message + Default>(
    b: &Driver,
    url: &str,
    msg: &impl prost::Message,
) -> (Option<T>, String) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let script = r#"
        const [url, body64, done] = arguments;
        const body = Uint8Array.from(atob(body64), (c) => c.charCodeAt(0));
        fetch(url, {
            method: "POST",
            headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
            body,
        })
            .then((r) => r.arrayBuffer().then((buf) => {
                let s = "";
                for (const x of new Uint8Array(buf)) s += String.fromCharCode(x);
                done({ status: r.status, body: btoa(s), grpcStatus: r.headers.get("grpc-status") });
            }))
            .catch((e) => done({ error: String(e) }));
    "#;
    let got = b
        .execute_async(
            script,
            vec![url.into(), b64.encode(grpc_web_body(msg)).into()],
        )
        .await
        .expect("the script ran");
    assert!(
        got.get("error").is_none(),
        "fetch failed in the browser: {got}"
    );
    assert_eq!(got["status"], 200, "{got}");
    let raw = b64
        .decode(got["body"].as_str().expect("a body"))
        .expect("base64");
    let (reply, mut trailers) = grpc_web_reply(&raw);
    // A refusal may come "trailers-only": its status in the headers, which
    // the page reads only if leanmqd's CORS answer exposes them.
    if let (true, Some(code)) = (trailers.is_empty(), got["grpcStatus"].as_str()) {
        trailers = format!("grpc-status:{code}");
    }
    (reply, trailers)
}

/// gRPC-Web from a page in headless Chromium on another origin (listed in
/// --grpc-web-allow-origin): a Send is stored and delivered over gRPC, an
/// Admin call answers, a refusal arrives as its status; a page on an
/// origin not listed is stopped by the browser's CORS check.
#[tokio::test]
#[ignore = "needs chromium and chromedriver: run by `make test-console`"]
async fn a_browser_page_calls_broker_and_admin_over_grpc_web() {
    let page = |name: &'static str| async move {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move {
                axum::response::Html(format!("<!doctype html><title>{name}</title><p>{name}</p>"))
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let origin = format!("http://{}", l.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(l, app).await });
        origin
    };
    let (app, other) = (page("app").await, page("other").await);
    let redis = RedisProc::start();
    let d = Leanmqd::start_with(&redis.url(), |c| {
        c.grpc_web_allow_origin = vec![app.clone()];
    })
    .await;
    let grpc = format!("http://{}", d.addr);
    let driver = ChromeDriver::start().await;
    let b = driver.browser().await;
    b.goto(&app).await.expect("goto");

    let (sent, trailers) = grpc_web_from::<proto::SendResponse>(
        &b,
        &format!("{grpc}/leanmq.v1.Broker/Send"),
        &json_send("/web/orders/", r#"{"from":"a browser"}"#),
    )
    .await;
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let id = sent.expect("a SendResponse").message_id;
    let mut c = d.client().await;
    let got = receive(&mut c, "/web/orders/", "", 10, 5_000).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, id);
    assert_eq!(&got[0].payload[..], br#"{"from":"a browser"}"#);

    let (info, trailers) = grpc_web_from::<proto::QueueInfo>(
        &b,
        &format!("{grpc}/leanmq.v1.Admin/GetQueue"),
        &proto::GetQueueRequest {
            path: "/web/orders/".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let info = info.expect("a QueueInfo");
    assert_eq!((info.queue.as_str(), info.length), ("web_orders", 1));

    let (_, trailers) = grpc_web_from::<proto::SendResponse>(
        &b,
        &format!("{grpc}/leanmq.v1.Broker/Send"),
        &json_send("/web/*", "{}"),
    )
    .await;
    assert!(
        trailers.contains("grpc-status:3"),
        "INVALID_ARGUMENT: {trailers}"
    );

    // From an origin that is not listed the browser refuses the answer.
    b.goto(&other).await.expect("goto");
    let got = b
        .execute_async(
            r#"const [url, done] = arguments;
               fetch(url, { method: "POST", headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" }, body: new Uint8Array(5) })
                 .then((r) => done({ status: r.status }))
                 .catch((e) => done({ error: String(e) }));"#,
            vec![format!("{grpc}/leanmq.v1.Admin/ListQueues").into()],
        )
        .await
        .expect("the script ran");
    assert!(
        got.get("error").is_some(),
        "a page on {other} must not read leanmqd's answers: {got}"
    );
}
