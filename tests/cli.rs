//! The `leanmq` binary against a real leanmqd (in-process, port 0) and its
//! own redis-server: the operator's round trip (send, queues, a dead
//! letter, dlq ls/show, requeue, tail), TLS and token flags, and every
//! documented exit code with its message. JSON outputs are parsed.

mod cli_support;
mod common;

use std::process::Stdio;

use cli_support::*;
use common::pki::{write, Ca};
use common::*;
use leanmq_grpc::proto;
use leanmq_grpc::proto::admin_client::AdminClient;

/// Sends of each kind; returns the ids of the JSON order and of the
/// JSON array sent with the human form.
async fn send_each_kind(addr: &str) -> (String, String) {
    let order = r#"{"order_id": 7, "big": 12345678901234567890123}"#;
    let args = [
        "send",
        "/cli/orders",
        order,
        "--header",
        "trace=abc",
        "--json",
    ];
    let sent = leanmq(addr, &args).await.ok().json();
    let first = sent["message_id"].as_str().expect("an id").to_string();
    assert_eq!(sent["duplicate"], false);
    // An idempotency key: the second send stores nothing.
    let keyed = ["send", "/cli/orders", "plain text", "--key", "k1", "--json"];
    let a = leanmq(addr, &keyed).await.ok().json();
    let b = leanmq(addr, &keyed).await.ok().json();
    assert_eq!(a["message_id"], b["message_id"]);
    assert_eq!(b["duplicate"], true);
    // A delayed message has a schedule id, and is scheduled, not in the stream.
    let later = ["send", "/cli/orders", "{}", "--delay", "1h", "--json"];
    let delayed = leanmq(addr, &later).await.ok().json();
    assert_eq!(delayed["message_id"], "");
    assert!(!delayed["schedule_id"].as_str().unwrap_or("").is_empty());
    // The human form prints just the id.
    let human = leanmq(addr, &["send", "/cli/orders", "[1,2]"]).await.ok();
    let id = human.stdout.trim().to_string();
    assert!(id.contains('-') && !id.contains(' '), "{}", human.stdout);
    (first, id)
}

async fn check_queues(addr: &str) {
    let queues = leanmq(addr, &["queues", "--json"]).await.ok().json();
    let q = queues
        .as_array()
        .and_then(|a| a.iter().find(|q| q["queue"] == "cli_orders"))
        .expect("the queue is listed")
        .clone();
    assert_eq!(q["length"], 3);
    assert_eq!(q["delayed"], 1);
    assert_eq!(q["paths"], serde_json::json!(["/cli/orders"]));
    assert_eq!(q["groups"][0]["name"], "cli_orders-group");
    assert_eq!(q["groups"][0]["lag"], 3);
    let table = leanmq(addr, &["queues"]).await.ok();
    assert!(table.stdout.contains("OLDEST UNACKED") && table.stdout.contains("cli_orders"));
}

/// A handler dead-letters the messages `doomed` names and acks the rest.
async fn dead_letter(d: &Leanmqd, doomed: &[&str]) {
    let mut c = d.client().await;
    let got = receive(&mut c, "/cli/orders", "", 10, 30_000).await;
    assert_eq!(got.len(), 3);
    for dl in &got {
        if doomed.contains(&dl.message_id.as_str()) {
            let nack = proto::NackRequest {
                receipt: dl.receipt.clone(),
                dead_letter: true,
                reason: "boom: no such order".into(),
                ..Default::default()
            };
            c.nack(nack).await.expect("nack");
        } else {
            ack(&mut c, &[&dl.receipt]).await;
        }
    }
}

/// `dlq ls` and `dlq show` of the dead-lettered order; returns its DLQ id
/// and the other dead letter's.
async fn inspect_dead_letters(addr: &str, first: &str) -> (String, String) {
    let ls = leanmq(addr, &["dlq", "ls", "/cli/orders", "--json"])
        .await
        .ok();
    assert!(
        ls.stdout.contains("12345678901234567890123"),
        "JSON payloads stay JSON, digit for digit: {}",
        ls.stdout
    );
    let letters = ls.json();
    assert_eq!(letters.as_array().map(Vec::len), Some(2));
    let letter = &letters[0];
    assert_eq!(letter["original_message_id"], first);
    assert_eq!(letter["payload"]["order_id"], 7);
    assert_eq!(letter["headers"]["trace"], "abc");
    assert_eq!(letter["last_reason"], "boom: no such order");
    let dead_id = letter["id"].as_str().expect("id").to_string();
    let other = letters[1]["id"].as_str().expect("id").to_string();
    let ls = leanmq(addr, &["dlq", "ls", "/cli/orders", "--limit", "1"])
        .await
        .ok();
    assert!(
        ls.stdout.contains(&dead_id) && ls.stdout.contains("boom"),
        "{}",
        ls.stdout
    );
    assert!(!ls.stdout.contains(&other) && ls.stderr.contains("raise --limit"));

    let args = ["dlq", "show", "/cli/orders", &dead_id, "--json"];
    let show = leanmq(addr, &args).await.ok().json();
    assert_eq!(show["id"], dead_id.as_str());
    assert_eq!(show["failures"][0]["reason"], "boom: no such order");
    assert_eq!(show["failures"][0]["group"], "cli_orders-group");
    let show = leanmq(addr, &args[..4]).await.ok();
    assert!(
        show.stdout.contains("  \"order_id\": 7"),
        "pretty: {}",
        show.stdout
    );
    assert!(show.stdout.contains("trace: abc") && show.stdout.contains("boom: no such order"));
    (dead_id, other)
}

#[tokio::test]
async fn send_queues_dead_letter_requeue_and_tail() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let addr = http(&d);
    let (first, array) = send_each_kind(&addr).await;
    check_queues(&addr).await;
    dead_letter(&d, &[&first, &array]).await;
    let (dead_id, other) = inspect_dead_letters(&addr, &first).await;

    let rm = leanmq(&addr, &["dlq", "rm", "/cli/orders", &other, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(rm["deleted"], 1);
    let future = [
        "dlq",
        "requeue",
        "/cli/orders",
        "--since",
        "2100-01-01T00:00:00Z",
        "--json",
    ];
    let none = leanmq(&addr, &future).await.ok().json();
    assert_eq!(none["requeued"], serde_json::json!([]), "--since filters");
    let all = ["dlq", "requeue", "/cli/orders", "--all", "--json"];
    let requeued = leanmq(&addr, &all).await.ok().json();
    assert_eq!(requeued["requeued"][0]["dead_letter_id"], dead_id.as_str());
    assert_eq!(requeued["missing"], serde_json::json!([]));
    let new_id = requeued["requeued"][0]["message_id"]
        .as_str()
        .expect("id")
        .to_string();
    let empty = leanmq(&addr, &["dlq", "ls", "/cli/orders", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(empty, serde_json::json!([]));

    // The queue's own group gets it again, and --ack consumes it.
    let tail = [
        "tail",
        "/cli/orders",
        "--group",
        "cli_orders-group",
        "--ack",
        "--count",
        "1",
        "--json",
    ];
    let lines = ndjson(&leanmq(&addr, &tail).await.ok().stdout);
    assert_eq!(lines.len(), 1);
    let dl = &lines[0];
    assert_eq!(dl["message_id"], new_id.as_str());
    assert_eq!(dl["payload"]["order_id"], 7);
    assert_eq!(dl["content_type"], "application/json");
    assert_eq!(dl["headers"]["trace"], "abc");
    assert_eq!(
        (dl["attempt"].clone(), dl["path"].clone()),
        (1.into(), "/cli/orders".into())
    );
    assert_eq!(dl["group"], "cli_orders-group");
    for field in ["receipt", "published_at", "lease_expires_at"] {
        assert!(
            dl[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field} in {dl}"
        );
    }
    let q = leanmq(&addr, &["queue", "/cli/orders", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(q["groups"][0]["pending"], 0, "acked: {q}");
    assert_eq!(q["dead_letters"], 0);
}

#[tokio::test]
async fn tail_without_a_group_takes_nothing_from_consumers() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let addr = http(&d);
    let child = command(&addr)
        .args(["tail", "/cli/peek", "--count", "1", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    // Send only once the throwaway group exists (it starts at now).
    let mut admin = AdminClient::new(d.channel().await);
    let group = eventually("tail's throwaway group exists", || {
        let mut admin = admin.clone();
        async move {
            let q = admin
                .get_queue(proto::GetQueueRequest {
                    path: "/cli/peek".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            q.groups
                .into_iter()
                .map(|g| g.name)
                .find(|n| n.starts_with("leanmq-tail-"))
        }
    })
    .await;
    let mut c = d.client().await;
    let id = c
        .send(json_send("/cli/peek", r#"{"n":1}"#))
        .await
        .expect("send")
        .into_inner()
        .message_id;
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("tail ends")
        .expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = ndjson(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(lines[0]["message_id"], id.as_str());
    assert_eq!(lines[0]["group"], group.as_str());
    // The real consumers still get it, and tail's group holds nothing.
    let got = receive(&mut c, "/cli/peek", "", 1, 30_000).await;
    assert_eq!(got[0].message_id, id);
    let q = admin
        .get_queue(proto::GetQueueRequest {
            path: "/cli/peek".into(),
            ..Default::default()
        })
        .await
        .expect("queue")
        .into_inner();
    let tail_group = q.groups.iter().find(|g| g.name == group).expect("group");
    assert_eq!(tail_group.pending, 0, "tail acks in its own group");
}

#[tokio::test]
async fn send_lines_in_batches_up_to_a_bad_line() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let addr = http(&d);
    let mut input = String::new();
    for i in 1..=250 {
        input.push_str(&format!("{{\"i\":{i}}}\n"));
        if i == 10 {
            input.push('\n'); // blank lines are skipped
        }
    }
    let args = ["send", "/cli/lines", "--lines", "--batch", "100", "--json"];
    let run = leanmq_stdin(&addr, &args, input.as_bytes()).await.ok();
    let results = ndjson(&run.stdout);
    assert_eq!(results.len(), 250);
    assert_eq!(results[10]["line"], 12, "line numbers count the blank line");
    assert_eq!(xlen(&redis, "webhook:cli_lines"), 250);
    let got = receive(&mut d.client().await, "/cli/lines", "", 1, 30_000).await;
    assert_eq!(got[0].content_type, "application/json");

    // Everything before a bad line is sent; nothing from it on.
    let bad = "a\nb\nc\nd\n{oops\ne\n";
    let run = leanmq_stdin(
        &addr,
        &["send", "/cli/bad-lines", "--lines", "--batch", "3"],
        bad.as_bytes(),
    )
    .await;
    run.fails(2, "line 5: DATA starts like JSON but does not parse");
    assert!(
        run.stderr.contains("the 4 messages before it were sent"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout.lines().count(), 4);
    assert_eq!(xlen(&redis, "webhook:cli_bad_lines"), 4);
}

#[tokio::test]
async fn usage_errors_exit_2_and_send_nothing() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let addr = http(&d);
    leanmq(&addr, &["send", "/cli/x", r#"{"a":"#])
        .await
        .fails(2, "DATA starts like JSON but does not parse");
    leanmq(
        &addr,
        &[
            "send",
            "/cli/x",
            "nope",
            "--content-type",
            "application/json",
        ],
    )
    .await
    .fails(2, "DATA is not valid JSON");
    leanmq(&addr, &["send", "/cli/x", "@/nonexistent/file"])
        .await
        .fails(2, "cannot read DATA file");
    leanmq(
        &addr,
        &["send", "/cli/x", "1", "--header", "a=1", "--header", "a=2"],
    )
    .await
    .fails(2, "given twice");
    leanmq(&addr, &["dlq", "show", "/cli/x", "not-an-id"])
        .await
        .fails(2, "is not a dead-letter id");
    leanmq(&addr, &["dlq", "purge", "/cli/x"])
        .await
        .fails(2, "pass --yes");
    leanmq(&addr, &["--addr", "ftp://h:1", "queues"])
        .await
        .fails(2, "must be an http:// or https:// URL");
    leanmq(&addr, &["--ca", "/nonexistent.pem", "queues"])
        .await
        .fails(2, "need an https:// address");
    for args in [
        vec![],
        vec!["send"],
        vec!["send", "/cli/x"],
        vec!["tail", "/cli/x", "--ack"],
        vec!["tail", "/cli/x", "--count", "0"],
        vec!["dlq", "requeue", "/cli/x"],
        vec!["dlq", "requeue", "/cli/x", "1-0", "--all"],
        vec!["dlq", "ls", "/cli/x", "--limit", "0"],
        vec!["send", "/cli/x", "--lines", "--batch", "1001"],
        vec!["--timeout", "0s", "queues"],
        vec!["send", "/cli/x", "1", "--delay", "soon"],
        vec!["no-such-command"],
    ] {
        let run = leanmq(&addr, &args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        assert!(run.stderr.starts_with("error:"), "{args:?}: {}", run.stderr);
    }
    assert_eq!(
        xlen(&redis, "webhook:cli_x"),
        0,
        "usage errors send nothing"
    );
    // Input is checked before connecting: a usage error stays one when
    // leanmqd is down.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    leanmq(&nobody, &["send", "/cli/x", "{"])
        .await
        .fails(2, "DATA starts like JSON");
}

#[tokio::test]
async fn refusals_and_unknown_ids_exit_1() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let addr = http(&d);
    leanmq(&addr, &["send", "/cli/x", r#"{"_metadata":1}"#])
        .await
        .fails(1, "refused by leanmqd (INVALID_ARGUMENT)");
    leanmq(&addr, &["send", "/cli/x", "1", "--delay", "400d"])
        .await
        .fails(1, "INVALID_ARGUMENT");
    leanmq(&addr, &["send", "/", "1"])
        .await
        .fails(1, "INVALID_ARGUMENT");
    leanmq(&addr, &["queue", "/cli/none"])
        .await
        .fails(1, "refused by leanmqd (NOT_FOUND)");
    leanmq(&addr, &["dlq", "show", "/cli/x", "1-0"])
        .await
        .fails(1, "no dead letter 1-0 in the DLQ of /cli/x (NOT_FOUND)");
    let rq = leanmq(&addr, &["dlq", "requeue", "/cli/x", "1-0", "--json"]).await;
    rq.fails(1, "1 of the ids were not in the DLQ");
    assert_eq!(rq.json()["missing"], serde_json::json!(["1-0"]));
    leanmq(&addr, &["dlq", "rm", "/cli/x", "1-0", "2-0"])
        .await
        .fails(1, "2 of the 2 ids were not in the DLQ");
    let purged = leanmq(&addr, &["dlq", "purge", "/cli/x", "--yes", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(purged["purged"], 0);
}

#[tokio::test]
async fn a_closed_stdout_is_a_quiet_stop() {
    let redis = RedisProc::start();
    let d = Leanmqd::start(&redis.url()).await;
    let mut c = d.client().await;
    send(&mut c, "/cli/head", b"x").await;
    let mut child = command(&http(&d))
        .args(["queue", "/cli/head"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take()); // as `| head -0` would
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn unreachable_exits_3_naming_address_and_cause() {
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let run = leanmq(&nobody, &["queues"]).await;
    run.fails(
        3,
        &format!("cannot reach leanmqd at {nobody}: connection refused"),
    );
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
    let bare = nobody.trim_start_matches("http://");
    leanmq(bare, &["health"])
        .await
        .fails(3, &format!("cannot reach leanmqd at {nobody}"));
    leanmq("http://no-such-host.invalid:50051", &["health"])
        .await
        .fails(
            3,
            "cannot reach leanmqd at http://no-such-host.invalid:50051",
        );
}

fn tokens(dir: &std::path::Path) -> std::path::PathBuf {
    let h = leanmq_grpc::auth::hash_token;
    write(
        dir,
        "tokens.toml",
        &format!(
            "[[tokens]]\nname = \"ops\"\nhash = \"{}\"\nsend = [\"/cli/>\"]\nadmin = [\">\"]\n\n\
             [[tokens]]\nname = \"producer\"\nhash = \"{}\"\nsend = [\"/cli/>\"]\n",
            h("ops-secret-token"),
            h("producer-secret-token"),
        ),
    )
}

#[tokio::test]
async fn token_flags_and_refusals() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let file = tokens(dir.path());
    let d = Leanmqd::start_with(&redis.url(), move |c| c.auth_tokens = Some(file)).await;
    let addr = http(&d);
    leanmq(
        &addr,
        &["--token", "ops-secret-token", "send", "/cli/t", "1"],
    )
    .await
    .ok();
    let env_run = finish(
        command(&addr)
            .env("LEANMQ_TOKEN", "ops-secret-token")
            .args(["queue", "/cli/t", "--json"]),
        None,
    )
    .await
    .ok();
    assert_eq!(
        env_run.json()["length"],
        1,
        "the env twin carries the token"
    );

    leanmq(&addr, &["queues"])
        .await
        .fails(1, "refused by leanmqd (UNAUTHENTICATED)");
    let wrong = leanmq(&addr, &["--token", "wrong-secret-token", "queues"]).await;
    wrong.fails(1, "pass a valid token with --token or LEANMQ_TOKEN");
    let denied = leanmq(
        &addr,
        &["--token", "producer-secret-token", "queue", "/cli/t"],
    )
    .await;
    denied.fails(1, "refused by leanmqd (PERMISSION_DENIED)");
    for run in [&wrong, &denied] {
        assert!(
            !run.stderr.contains("secret-token") && !run.stdout.contains("secret-token"),
            "a token is never echoed"
        );
    }
    // Health stays open to everyone.
    leanmq(&addr, &["health"]).await.ok();
    let help = finish(
        command(&addr)
            .env("LEANMQ_TOKEN", "ops-secret-token")
            .arg("--help"),
        None,
    )
    .await
    .ok();
    assert!(help.stdout.contains("LEANMQ_TOKEN") && !help.stdout.contains("ops-secret-token"));
}

#[tokio::test]
async fn tls_and_client_certificate_flags() {
    let redis = RedisProc::start();
    let dir = tempfile::tempdir().expect("tmp");
    let ca = Ca::new("server ca");
    let (cert, key) = ca.leaf("localhost");
    let cert_f = write(dir.path(), "server.crt", &cert);
    let key_f = write(dir.path(), "server.key", &key);
    let ca_f = write(dir.path(), "ca.crt", &ca.pem());
    let clients = Ca::new("client ca");
    let (ccert, ckey) = clients.leaf("operator");
    let ccert_f = write(dir.path(), "client.crt", &ccert);
    let ckey_f = write(dir.path(), "client.key", &ckey);
    let clients_f = write(dir.path(), "clients.crt", &clients.pem());
    let ca_s = ca_f.to_str().expect("utf-8 path");

    let (c2, k2) = (cert_f.clone(), key_f.clone());
    let tls = Leanmqd::start_with(&redis.url(), move |c| {
        c.tls_cert = Some(c2);
        c.tls_key = Some(k2);
    })
    .await;
    let addr = format!("https://localhost:{}", tls.addr.port());
    let sent = leanmq(
        &addr,
        &["--ca", ca_s, "send", "/cli/tls", r#"{"a":1}"#, "--json"],
    )
    .await
    .ok()
    .json();
    assert!(sent["message_id"].as_str().is_some_and(|s| !s.is_empty()));
    leanmq(&addr, &["--ca", ca_s, "health"]).await.ok();
    // Without our CA the certificate is not trusted; plaintext gets nowhere.
    let untrusted = leanmq(&addr, &["health"]).await;
    untrusted.fails(3, &format!("cannot reach leanmqd at {addr}"));
    assert!(untrusted
        .stderr
        .contains("pass the CA that signed leanmqd's certificate with --ca"));
    let plain = format!("http://localhost:{}", tls.addr.port());
    leanmq(&plain, &["health"])
        .await
        .fails(3, "if it serves TLS, use an https:// address");
    leanmq(&addr, &["--ca", ca_s, "--cert", ca_s, "health"])
        .await
        .fails(2, "--cert and --key go together");

    let mtls = Leanmqd::start_with(&redis.url(), move |c| {
        c.tls_cert = Some(cert_f);
        c.tls_key = Some(key_f);
        c.tls_client_ca = Some(clients_f);
    })
    .await;
    let addr = format!("https://localhost:{}", mtls.addr.port());
    let (cc, ck) = (
        ccert_f.to_str().expect("path"),
        ckey_f.to_str().expect("path"),
    );
    let q = leanmq(
        &addr,
        &[
            "--ca", ca_s, "--cert", cc, "--key", ck, "queue", "/cli/tls", "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(q["length"], 1);
    let env = finish(
        command(&addr)
            .env("LEANMQ_CA", ca_s)
            .env("LEANMQ_CERT", cc)
            .env("LEANMQ_KEY", ck)
            .args(["health"]),
        None,
    )
    .await;
    assert_eq!(env.code, Some(0), "env twins: {}", env.stderr);
    leanmq(&addr, &["--ca", ca_s, "queues"])
        .await
        .fails(3, "pass --cert and --key");
}

#[tokio::test]
async fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let run = leanmq("http://127.0.0.1:1", &["completions", shell])
            .await
            .ok();
        assert!(run.stdout.contains("requeue"), "{shell}: {}", run.stdout);
    }
    leanmq("http://127.0.0.1:1", &["completions", "cmd.exe"])
        .await
        .fails(2, "invalid value");
}
