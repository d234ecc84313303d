//! The first test: 50 keys × 100 messages, 4 competing subscribers
//! on 2 leanmqd processes, 10% nacks, 5% deliveries left to expire, and one
//! leanmqd killed (SIGKILL) midway. For every key the acked sequence must
//! be the send sequence, and no two deliveries of a key may overlap: each
//! delivery of a key arrives only after the one before was settled (its
//! ack or nack sent, or its lease over).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use super::*;

const KEYS: usize = 50;
const PER_KEY: usize = 100;
const LEASE_MS: u64 = 1_000;
const PATH: &str = "/competing";

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One delivery as a subscriber saw it: when it arrived, when it was
/// settled (µs, wall clock), and whether its ack took.
#[derive(Debug, Clone)]
struct Seen {
    key: usize,
    seq: usize,
    at_us: u64,
    settled_us: u64,
    acked: bool,
}

#[derive(Default)]
struct Log {
    seen: Mutex<Vec<Seen>>,
}

impl Log {
    fn push(&self, s: Seen) -> usize {
        let mut v = self.seen.lock().expect("log");
        v.push(s);
        v.iter().filter(|s| s.acked).count()
    }
}

fn parse(body: &str) -> (usize, usize) {
    let (k, s) = body.split_once('.').expect("key.seq");
    (k.parse().expect("key"), s.parse().expect("seq"))
}

/// Ack `receipt` on `c`, or on the survivor when `c`'s leanmqd is gone
/// (receipts are valid on any replica). True when the message is acked
/// (now, or by an earlier attempt whose answer was lost).
async fn ack_anywhere(c: &mut Client, survivor: &mut Client, receipt: &str) -> bool {
    let req = || proto::AckRequest {
        receipts: vec![receipt.to_string()],
    };
    let r = match c.ack(req()).await {
        Ok(r) => r,
        Err(_) => survivor.ack(req()).await.expect("ack on the survivor"),
    };
    let outcome = r.into_inner().results.first().map(|r| r.outcome);
    // ACKED, or NOT_PENDING: acked by the first try, whose answer was lost.
    matches!(outcome, Some(1) | Some(2))
}

/// Nack `receipt` (retry after 20 ms) on `c`, or on the survivor when
/// `c`'s leanmqd is gone. Returns when the delivery was settled: when the
/// nack that took was sent. A first nack whose answer was lost may have
/// taken, so when the survivor no longer finds the delivery it was settled
/// when that first nack was sent. `None`: no nack took (the lease runs out).
async fn nack_anywhere(c: &mut Client, survivor: &mut Client, receipt: &str) -> Option<u64> {
    let req = || proto::NackRequest {
        receipt: receipt.to_string(),
        delay: ms(20),
        ..Default::default()
    };
    let first = now_us();
    if c.nack(req()).await.is_ok() {
        return Some(first);
    }
    let second = now_us();
    match survivor.nack(req()).await {
        Ok(_) => Some(second),
        // NOT_FOUND or FAILED_PRECONDITION: the delivery no longer holds,
        // either settled by the first nack or its lease ran out, which is
        // later.
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::NotFound | tonic::Code::FailedPrecondition
            ) =>
        {
            Some(first)
        }
        Err(_) => None,
    }
}

/// One subscriber: on `port` until its leanmqd dies, then on `survivor`.
async fn subscriber(
    n: u64,
    mut port: u16,
    survivor: u16,
    log: Arc<Log>,
    mut done: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(n);
    let mut back = connect_when_up(survivor).await;
    while !*done.borrow() {
        let mut c = match tonic::transport::Endpoint::new(format!("http://127.0.0.1:{port}"))
            .expect("uri")
            .connect()
            .await
        {
            Ok(ch) => proto::broker_client::BrokerClient::new(ch),
            Err(_) => {
                port = survivor;
                continue;
            }
        };
        let stream = c
            .subscribe(proto::SubscribeRequest {
                path: PATH.into(),
                consumer: format!("sub{n}"),
                max_in_flight: 20,
                ack_deadline: ms(LEASE_MS),
                ..Default::default()
            })
            .await;
        let Ok(stream) = stream else {
            port = survivor;
            continue;
        };
        let mut stream = stream.into_inner();
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = done.changed() => return,
            };
            let Ok(Some(d)) = msg else {
                port = survivor; // its leanmqd was killed
                break;
            };
            let at_us = now_us();
            let (key, seq) = parse(&body(&d));
            let lease_end_us = d
                .lease_expires_at
                .as_ref()
                .map(|t| t.seconds as u64 * 1_000_000 + t.nanos as u64 / 1_000)
                .unwrap_or(u64::MAX);
            let roll: f64 = rng.random();
            let mut seen = Seen {
                key,
                seq,
                at_us,
                settled_us: lease_end_us,
                acked: false,
            };
            if roll < 0.10 {
                seen.settled_us = nack_anywhere(&mut c, &mut back, &d.receipt)
                    .await
                    .unwrap_or(lease_end_us);
            } else if roll >= 0.15 {
                let sent = now_us();
                if ack_anywhere(&mut c, &mut back, &d.receipt).await {
                    seen.settled_us = sent;
                    seen.acked = true;
                }
            }
            log.push(seen);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_subscribers_on_two_replicas_keep_every_keys_order_through_nacks_expiries_and_a_kill(
) {
    let redis = RedisProc::start();
    let flags = [
        "--max-attempts",
        "100",
        "--retry-min",
        "10ms",
        "--retry-max",
        "50ms",
    ];
    let (_a, port_a) = spawn_leanmqd(&redis.url(), &flags);
    let (mut b, port_b) = spawn_leanmqd(&redis.url(), &flags);
    let mut c = connect_when_up(port_a).await;
    connect_when_up(port_b).await;
    // The group exists before anything is sent (as a subscriber's would).
    c.receive(proto::ReceiveRequest {
        path: PATH.into(),
        max_messages: 1,
        ..Default::default()
    })
    .await
    .expect("receive");
    for chunk in 0..PER_KEY {
        let messages = (0..KEYS)
            .map(|k| keyed(PATH, &format!("key{k}"), &format!("{k}.{chunk}")))
            .collect();
        c.send_batch(proto::SendBatchRequest { messages })
            .await
            .expect("batch");
    }
    let log = Arc::new(Log::default());
    let (stop, done) = watch::channel(false);
    let subs: Vec<_> = (0..4u64)
        .map(|n| {
            let port = if n % 2 == 0 { port_a } else { port_b };
            tokio::spawn(subscriber(n, port, port_a, log.clone(), done.clone()))
        })
        .collect();
    let acked = || {
        log.seen
            .lock()
            .expect("log")
            .iter()
            .filter(|s| s.acked)
            .count()
    };
    let total = KEYS * PER_KEY;
    let wait_for = |n: usize, what: &'static str| {
        let acked = &acked;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(180);
            while acked() < n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "timed out: {what} ({} acked)",
                    acked()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(total / 2, "half acked").await;
    b.start_kill().expect("SIGKILL leanmqd b");
    b.wait().await.expect("b exits");
    wait_for(total, "every message acked").await;
    stop.send(true).expect("stop");
    for s in subs {
        s.await.expect("subscriber");
    }

    let seen = log.seen.lock().expect("log").clone();
    let mut per_key: BTreeMap<usize, Vec<Seen>> = BTreeMap::new();
    for s in seen {
        per_key.entry(s.key).or_default().push(s);
    }
    let (mut redelivered, mut expired) = (0, 0);
    for (key, mut ds) in per_key {
        ds.sort_by_key(|s| s.at_us);
        let acked: Vec<usize> = ds.iter().filter(|s| s.acked).map(|s| s.seq).collect();
        assert_eq!(
            acked,
            (0..PER_KEY).collect::<Vec<_>>(),
            "key{key}: acked out of order"
        );
        for w in ds.windows(2) {
            assert!(
                w[1].at_us + 2_000 >= w[0].settled_us,
                "key{key}: {}.{} arrived {}µs before {}.{} was settled",
                key,
                w[1].seq,
                w[0].settled_us - w[1].at_us,
                key,
                w[0].seq
            );
        }
        redelivered += ds.len() - PER_KEY;
        expired += ds
            .iter()
            .filter(|s| !s.acked && s.settled_us > s.at_us + 500_000)
            .count();
    }
    assert!(redelivered > 0 && expired > 0, "the faults happened");
    assert_eq!(
        pending_count(&redis, "webhook:competing", "competing-group"),
        0
    );
    eprintln!("ordering under faults: {total} acked in order, {redelivered} redeliveries, {expired} leases expired");
}
