//! The core semantics on a real local Redis Cluster: three masters
//! (`redis-server --cluster-enabled yes` on loopback ports, joined with
//! `redis-cli --cluster create`), and two leanmqd instances on it sharing
//! one group.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use leanmq_grpc::proto;
use tonic::Code;

/// Three masters, every slot assigned.
struct Cluster {
    nodes: Vec<RedisProc>,
}

impl Cluster {
    fn start() -> Cluster {
        let nodes: Vec<RedisProc> = (0..3)
            .map(|_| RedisProc::start_with(&["--cluster-enabled", "yes"]))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| n.url().trim_start_matches("redis://").to_string())
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Cluster { nodes };
        // Every node must agree the cluster is up before tests use it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = c.nodes.iter().all(|n| {
                let mut conn = n.conn();
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut conn)
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            });
            if ok {
                return c;
            }
            assert!(Instant::now() < deadline, "cluster did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.url().trim_start_matches("redis://").to_string())
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Index of the node whose keyspace holds `key`.
    fn node_of(&self, key: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| {
                let mut c = n.conn();
                redis::cmd("EXISTS")
                    .arg(key)
                    .query::<i64>(&mut c)
                    .is_ok_and(|e| e == 1)
            })
            .expect("key on some node")
    }
}

#[tokio::test]
async fn core_semantics_on_a_three_master_cluster() {
    let cluster = Cluster::start();
    let d = Leanmqd::start_with(&cluster.url(), |c| {
        c.retry_min = Duration::from_millis(100);
        c.retry_max = Duration::from_millis(200);
        c.max_attempts = 2;
    })
    .await;
    let mut c = d.client().await;

    // Send, subscribe, ack, on queues spread over the masters.
    let paths: Vec<String> = (0..12).map(|i| format!("/spread/q{i}")).collect();
    for p in &paths {
        send(&mut c, p, b"hello").await;
    }
    let on: HashSet<usize> = (0..12)
        .map(|i| cluster.node_of(&format!("webhook:{{spread_q{i}}}")))
        .collect();
    assert!(
        on.len() >= 2,
        "12 queues should land on more than one master"
    );
    for i in 0..12 {
        // Every key of a queue is in the stream's slot (hash tag), so a
        // queue's DLQ and metadata live on the same master as its stream.
        let stream = cluster.node_of(&format!("webhook:{{spread_q{i}}}"));
        assert_eq!(
            cluster.node_of(&format!("webhook:{{spread_q{i}}}:metadata")),
            stream
        );
    }
    for p in &paths {
        let got = receive(&mut c, p, "", 10, 30_000).await;
        assert_eq!(got.len(), 1, "{p}");
        assert_eq!(&got[0].payload[..], b"hello");
        assert_eq!(
            ack(&mut c, &[&got[0].receipt]).await,
            [proto::AckOutcome::Acked as i32]
        );
    }

    // Admin sees every queue across the masters.
    let mut admin = proto::admin_client::AdminClient::new(d.channel().await);
    let listed = admin
        .list_queues(proto::ListQueuesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let names: HashSet<String> = listed.queues.into_iter().map(|q| q.queue).collect();
    for i in 0..12 {
        assert!(names.contains(&format!("spread_q{i}")), "{names:?}");
    }

    // Nack → retry → DLQ after max_attempts.
    let mut s = subscribe(&mut c, "/cl/fail", "", 10, 30_000).await;
    send(&mut c, "/cl/fail", b"bad").await;
    for attempt in 1..=2 {
        let got = next(&mut s).await;
        assert_eq!(got.attempt, attempt);
        c.nack(proto::NackRequest {
            receipt: got.receipt,
            ..Default::default()
        })
        .await
        .expect("nack");
    }
    eventually("the message reaches the DLQ", || {
        let mut admin = admin.clone();
        async move {
            let dl = admin
                .list_dead_letters(proto::ListDeadLettersRequest {
                    path: "/cl/fail".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (dl.dead_letters.len() == 1).then_some(())
        }
    })
    .await;

    // A delayed message goes through the schedule (a key in another slot).
    let mut delayed = bytes_send("/cl/later", b"later");
    delayed.delay = ms(300);
    let sent = c.send(delayed).await.expect("send").into_inner();
    assert!(!sent.schedule_id.is_empty());
    let got = receive(&mut c, "/cl/later", "", 1, 30_000).await;
    assert_eq!(&got[0].payload[..], b"later");

    // A batch over two queues can't be one atomic script on a cluster.
    let e = c
        .send_batch(proto::SendBatchRequest {
            messages: vec![bytes_send("/cl/a", b"1"), bytes_send("/cl/b", b"2")],
        })
        .await
        .expect_err("multi-queue batch");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let ok = c
        .send_batch(proto::SendBatchRequest {
            messages: vec![bytes_send("/cl/a", b"1"), bytes_send("/cl/a", b"2")],
        })
        .await
        .expect("one-queue batch");
    assert_eq!(ok.into_inner().results.len(), 2);
}

#[tokio::test]
async fn two_leanmqd_share_a_group_on_the_cluster_without_loss_or_duplicates() {
    let cluster = Cluster::start();
    let a = Leanmqd::start_with(&cluster.url(), |c| c.ack_deadline = Duration::from_secs(2)).await;
    let b = Leanmqd::start_with(&cluster.url(), |c| c.ack_deadline = Duration::from_secs(2)).await;
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    let mut sa = subscribe(&mut ca, "/cl/shared", "workers", 20, 30_000).await;
    let mut sb = subscribe(&mut cb, "/cl/shared", "workers", 20, 30_000).await;
    const N: usize = 200;
    for i in 0..N {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        send(c, "/cl/shared", format!("{i}").as_bytes()).await;
    }
    let mut seen = HashSet::new();
    let mut by_a = 0;
    while seen.len() < N {
        let (d, from_a) = tokio::select! {
            d = next(&mut sa) => (d, true),
            d = next(&mut sb) => (d, false),
        };
        by_a += usize::from(from_a);
        assert!(seen.insert(d.payload.to_vec()), "duplicate {:?}", d.payload);
        // Receipts carry everything needed: the first few are settled
        // through the other replica (which frees the deliverer's credit only
        // at lease end, so the rest go back where they came from).
        let via_a = from_a != (seen.len() <= 5);
        let c = if via_a { &mut ca } else { &mut cb };
        assert_eq!(
            ack(c, &[&d.receipt]).await,
            [proto::AckOutcome::Acked as i32]
        );
    }
    assert!(by_a > 0 && by_a < N, "both replicas delivered ({by_a}/{N})");
    let node = &cluster.nodes[cluster.node_of("webhook:{cl_shared}")];
    assert_eq!(pending_count(node, "webhook:{cl_shared}", "workers"), 0);
}

#[tokio::test]
async fn a_lease_that_runs_out_is_redelivered_by_the_other_replica() {
    let cluster = Cluster::start();
    let a = Leanmqd::start(&cluster.url()).await;
    let b = Leanmqd::start(&cluster.url()).await;
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    send(&mut ca, "/cl/lease", b"x").await;
    let first = receive(&mut ca, "/cl/lease", "", 1, 300).await;
    assert_eq!(first[0].attempt, 1);
    // Not acked: after its 300 ms lease the other replica hands it out again.
    let again = receive(&mut cb, "/cl/lease", "", 1, 30_000).await;
    assert_eq!(again[0].attempt, 2);
    assert_eq!(&again[0].payload[..], b"x");
    let stale = ack(&mut ca, &[&first[0].receipt]).await;
    assert_eq!(stale, [proto::AckOutcome::Stale as i32]);
    assert_eq!(
        ack(&mut cb, &[&again[0].receipt]).await,
        [proto::AckOutcome::Acked as i32]
    );
}

/// The shared-service caps hold on a cluster too: --max-queues (checked
/// before the registry, which lives in another slot) and
/// --max-groups-per-queue (inside the queue's own script); ListQueues pages.
#[tokio::test]
async fn queue_and_group_caps_and_list_pages_on_a_cluster() {
    let cluster = Cluster::start();
    let d = Leanmqd::start_with(&cluster.url(), |c| {
        c.max_queues = 3;
        c.max_groups_per_queue = 2;
    })
    .await;
    let mut c = d.client().await;
    for p in ["/cap/a", "/cap/b", "/cap/c"] {
        send(&mut c, p, b"x").await;
    }
    let e = c
        .send(json_send("/cap/d", "{}"))
        .await
        .expect_err("a fourth queue");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{}", e.message());
    let group = |g: &str| proto::ReceiveRequest {
        path: "/cap/a".into(),
        group: g.into(),
        ..Default::default()
    };
    for g in ["g0", "g1"] {
        c.receive(group(g)).await.expect("within the cap");
    }
    let e = c.receive(group("g2")).await.expect_err("a third group");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{}", e.message());
    let mut admin = proto::admin_client::AdminClient::new(d.channel().await);
    let first = admin
        .list_queues(proto::ListQueuesRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    let second = admin
        .list_queues(proto::ListQueuesRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    let names: Vec<String> = first
        .queues
        .into_iter()
        .chain(second.queues)
        .map(|q| q.queue)
        .collect();
    assert_eq!(names, ["cap_a", "cap_b", "cap_c"]);
    assert!(second.next_page_token.is_empty());
}

/// Ordering keys on a cluster: their state lives in the queue's slot, and
/// two replicas competing for one group still hand out one message of a
/// key at a time, in send order.
#[tokio::test]
async fn ordering_keys_hold_across_two_replicas_on_a_cluster() {
    let cluster = Cluster::start();
    let a = Leanmqd::start(&cluster.url()).await;
    let b = Leanmqd::start(&cluster.url()).await;
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    // The group first, so it registers what is sent.
    let none = ca
        .receive(proto::ReceiveRequest {
            path: "/cl/ordered".into(),
            max_messages: 1,
            ..Default::default()
        })
        .await
        .expect("receive")
        .into_inner();
    assert!(none.deliveries.is_empty());
    for i in 0..6 {
        ca.send(proto::SendRequest {
            ordering_key: "k".into(),
            ..bytes_send("/cl/ordered", format!("m{i}").as_bytes())
        })
        .await
        .expect("send");
    }
    let order_key = "webhook:{cl_ordered}:order:cl_ordered-group";
    let stream_node = cluster.node_of("webhook:{cl_ordered}");
    assert_eq!(cluster.node_of(order_key), stream_node, "same slot");
    for i in 0..6 {
        // Alternate replicas: each gets only the key's head, never two.
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        let got = receive(c, "/cl/ordered", "", 10, 30_000).await;
        assert_eq!(got.len(), 1, "one at a time");
        assert_eq!(&got[0].payload[..], format!("m{i}").as_bytes());
        assert_eq!(
            ack(c, &[&got[0].receipt]).await,
            [proto::AckOutcome::Acked as i32]
        );
    }
}
