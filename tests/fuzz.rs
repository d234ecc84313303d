//! A bounded, structure-aware fuzz run against a real leanmqd and Redis.
//!
//! Workers send random and mutated requests to every RPC, the Publish stream
//! and the push-subscription RPCs included (hostile names,
//! counts, sizes, durations, start positions, forged and altered receipts),
//! mutated protobuf bodies straight to each method, and raw bytes on the
//! socket. Afterwards:
//! - nothing in the server panicked, and no call hung;
//! - every status is one the operations guide documents ("Limits and what
//!   each rejection returns"): INTERNAL only for a body that fails to
//!   decode, as gRPC's status-code spec says;
//! - the server still sends, delivers and acks;
//! - in Redis, every entry pending for leanmqd's consumers has a lease, and
//!   no key falls outside the key layout (docs/operations.md).
//!
//! `FUZZ_SECS` sets the length (`make fuzz-short`: CI's ~2 minutes; `make
//! fuzz`: the nightly half hour), `FUZZ_SEED` replays a run.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use common::*;
use leanmq_grpc::broker::{DLQ_HOLD, HOLDER};
use leanmq_grpc::proto;
use leanmq_grpc::proto::admin_client::AdminClient;
use prost::Message;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Panics anywhere in this process (the server runs in it).
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// No well-formed call may take longer than this: longer is a hang.
const CALL_LIMIT: Duration = Duration::from_secs(15);

/// A few queues shared by every worker, so state piles up where it can
/// break: backlogs, leases, retries, dead letters.
const PATHS: &[&str] = &["/fz/a", "/fz/b/c", "/fz/order-status", "/fz/d"];

/// Names chosen to hit each rule of the guide's input table.
const HOSTILE: &[&str] = &[
    "",
    "/",
    "//",
    "/schedule",
    "/registry",
    "/receipt-key",
    "/fz/x:dlq",
    "/fz/x:metadata",
    "/fz/x:leases:g",
    "/fz/*",
    "/fz/>",
    "/fz/a b",
    "/fz/{tag}",
    "/fz/\u{0}",
    "/fz/\u{7f}",
    "/fz/ü/ß",
    "no-slash",
    "/fz/a/../b",
    "/fz/a\n",
];

#[path = "fuzz/publish.rs"]
mod publish;
#[path = "fuzz/push.rs"]
mod push;

fn pick_path(rng: &mut StdRng, clean: bool) -> String {
    if clean {
        return PATHS.choose(rng).copied().unwrap_or("/fz/a").to_string();
    }
    match rng.random_range(0..10) {
        0..=5 => PATHS.choose(rng).copied().unwrap_or("/fz/a").to_string(),
        6 | 7 => HOSTILE.choose(rng).copied().unwrap_or("").to_string(),
        8 => format!("/fz/{}", rand_text(rng, 1..40)),
        _ => format!("/fz/{}", "s".repeat(rng.random_range(900..3000))),
    }
}

fn rand_text(rng: &mut StdRng, len: std::ops::Range<usize>) -> String {
    let n = rng.random_range(len);
    (0..n)
        .map(|_| match rng.random_range(0..6) {
            0 => char::from(rng.random_range(0u8..32)),
            1 => char::from_u32(rng.random_range(0x80..0x3000)).unwrap_or('x'),
            2 => *[':', '*', '>', '{', '}', '/', ' ', '-', '_', '.']
                .choose(rng)
                .unwrap_or(&':'),
            _ => char::from(rng.random_range(b'a'..=b'z')),
        })
        .collect()
}

fn pick_group(rng: &mut StdRng, clean: bool) -> String {
    if clean {
        return ["", "", "g1", "g2"].choose(rng).unwrap_or(&"").to_string();
    }
    match rng.random_range(0..8) {
        0..=3 => String::new(),
        4 => "g1".into(),
        5 => "g2".into(),
        6 => rand_text(rng, 0..30),
        _ => "g".repeat(rng.random_range(200..2000)),
    }
}

fn pick_prefix(rng: &mut StdRng, clean: bool) -> String {
    if clean {
        return String::new();
    }
    match rng.random_range(0..12) {
        0 => "mq:".into(),
        1 => "webhook:".into(),
        2 => rand_text(rng, 8..9),
        _ => String::new(),
    }
}

fn pick_queue(rng: &mut StdRng, clean: bool) -> String {
    if clean {
        return String::new();
    }
    match rng.random_range(0..14) {
        0 => "fz_a".into(),
        1 => "registry".into(),
        2 => "fz_a:dlq".into(),
        3 => rand_text(rng, 12..13),
        _ => String::new(),
    }
}

fn pick_dur(rng: &mut StdRng, clean: bool) -> Option<prost_types::Duration> {
    if clean {
        return rng.random_bool(0.5).then(|| prost_types::Duration {
            seconds: 0,
            nanos: rng.random_range(1_000_000..50_000_000),
        });
    }
    let (seconds, nanos) = match rng.random_range(0..10) {
        0 => return None,
        1..=4 => (0, rng.random_range(0..50_000_000)),
        5 => (rng.random_range(0..120), 0),
        6 => (-rng.random_range(1..1000), 0),
        7 => (0, rng.random_range(1_000_000_000..i32::MAX)),
        8 => (i64::MAX, 999_999_999),
        _ => (rng.random_range(1 << 40..i64::MAX), 0),
    };
    Some(prost_types::Duration { seconds, nanos })
}

fn pick_time(rng: &mut StdRng, clean: bool) -> Option<prost_types::Timestamp> {
    if clean {
        return None;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (seconds, nanos) = match rng.random_range(0..7) {
        0 => return None,
        1 | 2 => (now + rng.random_range(-5..5), 0),
        3 => (-rng.random_range(1..i64::MAX / 2), 0),
        4 => (1 << 62, 0),
        5 => (now, -5),
        _ => (i64::MAX, 0),
    };
    Some(prost_types::Timestamp { seconds, nanos })
}

fn pick_count(rng: &mut StdRng, clean: bool) -> u32 {
    if clean {
        return rng.random_range(1..50);
    }
    *[0, 1, 2, 10, 100, 1000, 1001, u32::MAX]
        .choose(rng)
        .unwrap_or(&1)
}

fn pick_start(rng: &mut StdRng, clean: bool) -> Option<proto::StartPosition> {
    if clean {
        return None;
    }
    use proto::start_position::Position;
    let p = match rng.random_range(0..9) {
        0..=3 => return None,
        4 => Position::Beginning(true),
        5 => Position::Now(true),
        6 => Position::AfterId(
            [
                "0-0",
                "1-1",
                "18446744073709551615-18446744073709551615",
                "x",
                "-",
            ]
            .choose(rng)
            .unwrap_or(&"0-0")
            .to_string(),
        ),
        7 => Position::AfterId(rand_text(rng, 20..21)),
        _ => Position::AtTime(pick_time(rng, clean).unwrap_or_default()),
    };
    Some(proto::StartPosition { position: Some(p) })
}

fn pick_payload(rng: &mut StdRng, clean: bool) -> bytes::Bytes {
    if clean {
        return bytes::Bytes::from(format!("{{\"n\":{}}}", rng.random::<u32>()));
    }
    let n = match rng.random_range(0..20) {
        0 => 0,
        1 => (1 << 20) + rng.random_range(0..1000),
        2 => rng.random_range(10_000..200_000),
        _ => rng.random_range(1..300),
    };
    if rng.random_bool(0.5) {
        bytes::Bytes::from(format!(
            "{{\"n\":{},\"pad\":\"{}\"}}",
            rng.random::<u32>(),
            "p".repeat(n)
        ))
    } else {
        let mut v = vec![0u8; n];
        rng.fill(&mut v[..]);
        bytes::Bytes::from(v)
    }
}

fn pick_send(rng: &mut StdRng, clean: bool) -> proto::SendRequest {
    let mut headers = HashMap::new();
    for _ in 0..rng.random_range(0..if clean { 1 } else { 3 }) {
        let v = if rng.random_bool(0.1) {
            "h".repeat(rng.random_range(5_000..70_000))
        } else {
            rand_text(rng, 10..11)
        };
        headers.insert(rand_text(rng, 0..12), v);
    }
    let named = !clean && rng.random_range(0..10) == 0;
    proto::SendRequest {
        path: if named {
            String::new()
        } else {
            pick_path(rng, clean)
        },
        queue: if named {
            pick_queue(rng, clean)
        } else {
            String::new()
        },
        prefix: pick_prefix(rng, clean),
        payload: pick_payload(rng, clean),
        content_type: [
            "",
            "",
            "application/json",
            "application/octet-stream",
            "text/plain",
        ]
        .choose(rng)
        .unwrap_or(&"")
        .to_string(),
        headers,
        ttl: if rng.random_bool(0.2) {
            pick_dur(rng, clean)
        } else {
            None
        },
        delay: if rng.random_bool(0.2) {
            pick_dur(rng, clean)
        } else {
            None
        },
        deliver_at: if rng.random_bool(0.1) {
            pick_time(rng, clean)
        } else {
            None
        },
        idempotency_key: match rng.random_range(0..6) {
            0 => format!("k{}", rng.random_range(0..20)),
            1 => "k".repeat(rng.random_range(200..5000)),
            _ => String::new(),
        },
        ordering_key: match rng.random_range(0..8) {
            0 | 1 => format!("o{}", rng.random_range(0..5)),
            2 if !clean => "o".repeat(rng.random_range(200..600)),
            3 if !clean => "o\u{7}".to_string(),
            _ => String::new(),
        },
    }
}

/// Receipts seen in deliveries, for settling and for mutating.
#[derive(Default)]
struct Receipts(Mutex<Vec<String>>);

impl Receipts {
    fn add(&self, r: impl IntoIterator<Item = String>) {
        if let Ok(mut v) = self.0.lock() {
            v.extend(r);
            let n = v.len();
            if n > 2000 {
                v.drain(..n - 2000);
            }
        }
    }

    fn pick(&self, rng: &mut StdRng) -> String {
        let real = self
            .0
            .lock()
            .ok()
            .and_then(|v| v.choose(rng).cloned())
            .unwrap_or_default();
        match rng.random_range(0..8) {
            0..=3 => real,
            4 => mutate_text(rng, &real),
            5 => real.get(..real.len() / 2).unwrap_or("").to_string(),
            6 => rand_text(rng, 0..200),
            _ => "A".repeat(rng.random_range(5_000..20_000)),
        }
    }
}

fn mutate_text(rng: &mut StdRng, s: &str) -> String {
    let mut c: Vec<char> = s.chars().collect();
    if c.is_empty() {
        return rand_text(rng, 4..5);
    }
    for _ in 0..rng.random_range(1..4) {
        let i = rng.random_range(0..c.len());
        c[i] = *['A', 'z', '0', '+', '/', '=', '-', '_']
            .choose(rng)
            .unwrap_or(&'A');
    }
    c.into_iter().collect()
}

fn mutate_bytes(rng: &mut StdRng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.random_range(1..6) {
        match rng.random_range(0..4) {
            0 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            1 if !b.is_empty() => b.truncate(rng.random_range(0..b.len())),
            2 => {
                let i = rng.random_range(0..=b.len());
                b.insert(i, rng.random());
            }
            _ => b.extend((0..rng.random_range(1..16)).map(|_| rng.random::<u8>())),
        }
    }
    b
}

/// Raw protobuf bytes in and out, to put mutated bodies on a method.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let v = buf.chunk().to_vec();
        buf.advance(v.len());
        Ok(Some(v))
    }
}

/// What the run saw: (operation, status) → count, and what broke a rule.
#[derive(Default)]
struct Tally {
    seen: Mutex<BTreeMap<(&'static str, String), u64>>,
    broken: Mutex<Vec<String>>,
}

/// The statuses the guide documents for a well-formed call.
const DOCUMENTED: &[Code] = &[
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::ResourceExhausted,
    Code::OutOfRange,
    Code::PermissionDenied,
    Code::AlreadyExists,
];

impl Tally {
    fn record(&self, op: &'static str, r: Result<Code, (Code, String)>, raw_body: bool) {
        let code = match &r {
            Ok(c) => *c,
            Err((c, _)) => *c,
        };
        if let Ok(mut s) = self.seen.lock() {
            *s.entry((op, format!("{code:?}"))).or_default() += 1;
        }
        let fine = DOCUMENTED.contains(&code)
            || (raw_body
                && code == Code::Internal
                && matches!(&r, Err((_, m)) if m.contains("decode")));
        if !fine {
            let msg = match r {
                Err((_, m)) => m,
                Ok(_) => String::new(),
            };
            if let Ok(mut b) = self.broken.lock() {
                b.push(format!("{op}: {code:?} {msg}"));
            }
        }
    }
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, (Code, String)> {
    match tokio::time::timeout(CALL_LIMIT, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err((s.code(), s.message().to_string())),
        Err(_) => Err((Code::DeadlineExceeded, "hung: no answer in 15 s".into())),
    }
}

fn code_of<T>(r: &Result<T, (Code, String)>) -> Result<Code, (Code, String)> {
    match r {
        Ok(_) => Ok(Code::Ok),
        Err(e) => Err(e.clone()),
    }
}

struct Ctx {
    addr: std::net::SocketAddr,
    channel: Channel,
    receipts: Receipts,
    tally: Tally,
}

async fn step(ctx: &Ctx, rng: &mut StdRng) {
    // Half the calls are well formed, so state piles up (backlogs, leases,
    // retries, dead letters) for the hostile half to meet.
    let clean = rng.random_bool(0.5);
    let mut b = proto::broker_client::BrokerClient::new(ctx.channel.clone())
        // The server, not this client, judges what is too large.
        .max_decoding_message_size(1 << 30)
        .max_encoding_message_size(1 << 30);
    let mut a = AdminClient::new(ctx.channel.clone());
    let t = &ctx.tally;
    match rng.random_range(0..100) {
        0..=21 => {
            let r = timed(b.send(pick_send(rng, clean))).await;
            t.record("Send", code_of(&r), false);
        }
        22..=29 => {
            let n = *[0usize, 1, 5, 50, 1001].choose(rng).unwrap_or(&1);
            let messages = (0..n).map(|_| pick_send(rng, clean)).collect();
            let req = proto::SendBatchRequest { messages };
            let size = req.encoded_len();
            let r = timed(b.send_batch(req))
                .await
                .map_err(|(c, m)| (c, format!("{m} (a {size}-byte request)")));
            t.record("SendBatch", code_of(&r), false);
        }
        30..=44 => {
            let req = proto::ReceiveRequest {
                path: pick_path(rng, clean),
                group: pick_group(rng, clean),
                consumer: rand_text(rng, 0..10),
                max_messages: pick_count(rng, clean),
                wait: if rng.random_bool(0.3) {
                    Some(prost_types::Duration {
                        seconds: 0,
                        nanos: rng.random_range(0..50_000_000),
                    })
                } else if rng.random_bool(0.1) {
                    pick_dur(rng, clean)
                } else {
                    None
                },
                ack_deadline: pick_dur(rng, clean),
                start: pick_start(rng, clean),
                queue: String::new(),
                prefix: pick_prefix(rng, clean),
            };
            let r = timed(b.receive(req)).await;
            if let Ok(got) = &r {
                ctx.receipts
                    .add(got.deliveries.iter().map(|d| d.receipt.clone()));
            }
            t.record("Receive", code_of(&r), false);
        }
        45..=47 => subscribe(ctx, rng, clean, &mut b).await,
        48..=49 => publish::publish(ctx, rng, clean, &mut b).await,
        50..=61 => {
            let n = rng.random_range(0..5);
            let receipts = (0..n).map(|_| ctx.receipts.pick(rng)).collect();
            let r = timed(b.ack(proto::AckRequest { receipts })).await;
            t.record("Ack", code_of(&r), false);
        }
        62..=71 => {
            let req = proto::NackRequest {
                receipt: ctx.receipts.pick(rng),
                delay: pick_dur(rng, clean),
                dead_letter: rng.random_bool(0.3),
                reason: rand_text(rng, 0..40),
            };
            let r = timed(b.nack(req)).await;
            t.record("Nack", code_of(&r), false);
        }
        72..=77 => {
            let req = proto::ExtendRequest {
                receipt: ctx.receipts.pick(rng),
                extension: pick_dur(rng, clean),
            };
            let r = timed(b.extend(req)).await;
            t.record("Extend", code_of(&r), false);
        }
        78..=86 => admin(ctx, rng, clean, &mut a).await,
        87..=89 => push::push(ctx, rng, clean, &mut a).await,
        90..=95 => raw_body(ctx, rng, clean).await,
        _ => raw_socket(ctx, rng).await,
    }
}

async fn subscribe(
    ctx: &Ctx,
    rng: &mut StdRng,
    clean: bool,
    b: &mut proto::broker_client::BrokerClient<Channel>,
) {
    let req = proto::SubscribeRequest {
        path: if rng.random_bool(0.2) {
            ["/fz/*", "/fz/>", "/*", "/>", "/fz/*/c"]
                .choose(rng)
                .unwrap_or(&"/fz/>")
                .to_string()
        } else {
            pick_path(rng, clean)
        },
        group: pick_group(rng, clean),
        consumer: rand_text(rng, 6..7),
        max_in_flight: pick_count(rng, clean),
        ack_deadline: pick_dur(rng, clean),
        start: pick_start(rng, clean),
        queue: String::new(),
        prefix: pick_prefix(rng, clean),
    };
    let mut s = match timed(b.subscribe(req)).await {
        Ok(s) => s,
        Err(e) => return ctx.tally.record("Subscribe", Err(e), false),
    };
    let reads = rng.random_range(0..5);
    for _ in 0..reads {
        match tokio::time::timeout(Duration::from_millis(30), s.message()).await {
            Ok(Ok(Some(d))) => ctx.receipts.add([d.receipt]),
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => {
                return ctx
                    .tally
                    .record("Subscribe", Err((e.code(), e.message().into())), false)
            }
        }
    }
    ctx.tally.record("Subscribe", Ok(Code::Ok), false);
}

async fn admin(ctx: &Ctx, rng: &mut StdRng, clean: bool, a: &mut AdminClient<Channel>) {
    let t = &ctx.tally;
    let (path, queue, prefix) = if rng.random_bool(0.15) {
        (
            String::new(),
            pick_queue(rng, clean),
            pick_prefix(rng, clean),
        )
    } else {
        (
            pick_path(rng, clean),
            String::new(),
            pick_prefix(rng, clean),
        )
    };
    match rng.random_range(0..9) {
        0 => {
            let r = timed(a.list_queues(proto::ListQueuesRequest {
                prefix,
                page_size: pick_count(rng, clean),
                page_token: if rng.random_bool(0.5) {
                    rand_text(rng, 10..11)
                } else {
                    String::new()
                },
            }))
            .await;
            t.record("ListQueues", code_of(&r), false);
        }
        1 => {
            let r = timed(a.get_queue(proto::GetQueueRequest {
                path,
                queue,
                prefix,
            }))
            .await;
            t.record("GetQueue", code_of(&r), false);
        }
        2 => {
            let r = timed(a.list_dead_letters(proto::ListDeadLettersRequest {
                path,
                page_size: pick_count(rng, clean),
                page_token: if rng.random_bool(0.5) {
                    rand_text(rng, 10..11)
                } else {
                    String::new()
                },
                queue,
                prefix,
            }))
            .await;
            t.record("ListDeadLetters", code_of(&r), false);
        }
        3 => {
            use proto::requeue_dead_letters_request::Selector;
            let selector = match rng.random_range(0..4) {
                0 => None,
                1 => Some(Selector::All(true)),
                2 => Some(Selector::Since(pick_time(rng, clean).unwrap_or_default())),
                _ => Some(Selector::Ids(proto::DeadLetterIds {
                    ids: (0..rng.random_range(0..4))
                        .map(|_| rand_text(rng, 12..13))
                        .collect(),
                })),
            };
            let r = timed(a.requeue_dead_letters(proto::RequeueDeadLettersRequest {
                path,
                selector,
                queue,
                prefix,
            }))
            .await;
            t.record("RequeueDeadLetters", code_of(&r), false);
        }
        4 => {
            let r = timed(
                a.delete_dead_letters(proto::DeleteDeadLettersRequest {
                    path,
                    ids: (0..rng.random_range(0..4))
                        .map(|_| rand_text(rng, 12..13))
                        .collect(),
                    queue,
                    prefix,
                }),
            )
            .await;
            t.record("DeleteDeadLetters", code_of(&r), false);
        }
        5 => {
            let r = timed(a.purge_dead_letters(proto::PurgeDeadLettersRequest {
                path,
                queue,
                prefix,
            }))
            .await;
            t.record("PurgeDeadLetters", code_of(&r), false);
        }
        6 => {
            let confirm = if rng.random_bool(0.5) {
                path.clone()
            } else {
                rand_text(rng, 5..6)
            };
            let r = timed(a.purge_queue(proto::PurgeQueueRequest {
                path,
                confirm,
                queue,
                prefix,
            }))
            .await;
            t.record("PurgeQueue", code_of(&r), false);
        }
        7 => {
            let confirm = if rng.random_bool(0.5) {
                path.clone()
            } else {
                rand_text(rng, 5..6)
            };
            let r = timed(a.delete_queue(proto::DeleteQueueRequest {
                path,
                with_dlq: rng.random_bool(0.5),
                confirm,
                queue,
                prefix,
            }))
            .await;
            t.record("DeleteQueue", code_of(&r), false);
        }
        _ => {
            let r = timed(a.create_queue(proto::CreateQueueRequest {
                path,
                queue,
                prefix,
            }))
            .await;
            t.record("CreateQueue", code_of(&r), false);
        }
    }
}

/// A mutated body of a well-formed request, on one of the unary methods.
async fn raw_body(ctx: &Ctx, rng: &mut StdRng, clean: bool) {
    let (method, body): (&'static str, Vec<u8>) = match rng.random_range(0..7) {
        0 => (
            "/leanmq.v1.Broker/Send",
            pick_send(rng, clean).encode_to_vec(),
        ),
        1 => (
            "/leanmq.v1.Broker/SendBatch",
            proto::SendBatchRequest {
                messages: vec![pick_send(rng, clean), pick_send(rng, clean)],
            }
            .encode_to_vec(),
        ),
        2 => (
            "/leanmq.v1.Broker/Receive",
            proto::ReceiveRequest {
                path: pick_path(rng, clean),
                max_messages: 3,
                start: pick_start(rng, clean),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        3 => (
            "/leanmq.v1.Broker/Ack",
            proto::AckRequest {
                receipts: vec![ctx.receipts.pick(rng)],
            }
            .encode_to_vec(),
        ),
        4 => (
            "/leanmq.v1.Broker/Nack",
            proto::NackRequest {
                receipt: ctx.receipts.pick(rng),
                delay: pick_dur(rng, clean),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        5 => (
            "/leanmq.v1.Admin/GetQueue",
            proto::GetQueueRequest {
                path: pick_path(rng, clean),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        _ => (
            "/leanmq.v1.Admin/ListDeadLetters",
            proto::ListDeadLettersRequest {
                path: pick_path(rng, clean),
                page_size: 5,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    };
    let body = mutate_bytes(rng, body);
    let mut grpc = tonic::client::Grpc::new(ctx.channel.clone());
    if grpc.ready().await.is_err() {
        return ctx.tally.record(
            "raw body",
            Err((Code::Unavailable, "not ready".into())),
            true,
        );
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    let r = timed(grpc.unary(tonic::Request::new(body), path, RawCodec)).await;
    ctx.tally.record("raw body", code_of(&r), true);
}

/// Bytes on a fresh connection: garbage, or the HTTP/2 preface and garbage.
async fn raw_socket(ctx: &Ctx, rng: &mut StdRng) {
    let Ok(mut s) = tokio::net::TcpStream::connect(ctx.addr).await else {
        return ctx.tally.record(
            "raw socket",
            Err((Code::Unavailable, "connect refused".into())),
            true,
        );
    };
    let mut junk = if rng.random_bool(0.5) {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    } else {
        Vec::new()
    };
    junk.extend((0..rng.random_range(0..4096)).map(|_| rng.random::<u8>()));
    let _ = s.write_all(&junk).await;
    let mut buf = [0u8; 4096];
    // Read what the server answers until it closes, or briefly.
    let _ = tokio::time::timeout(Duration::from_millis(100), async {
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    ctx.tally.record("raw socket", Ok(Code::Ok), true);
}

/// Every stream and DLQ key the prefix's registry lists.
fn registry(c: &mut redis::Connection, prefix: &str) -> Vec<String> {
    redis::cmd("SMEMBERS")
        .arg(format!("{prefix}registry"))
        .query(c)
        .expect("registry")
}

/// Keys outside the layout: the global keys; each stream and DLQ of the
/// registry with its metadata; a queue's own keys beside its stream; and
/// idempotency keys, which live out their window even after their queue is
/// deleted, so only with an expiry.
fn outside_layout(redis: &RedisProc, prefix: &str) -> Vec<String> {
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).expect("keys");
    let registry = registry(&mut c, prefix);
    let global = ["registry", "schedule", "receipt-key"].map(|g| format!("{prefix}{g}"));
    const OWN: &[&str] = &[
        ":expiry",
        ":delayed",
        ":delayed:data",
        ":delayed:seq",
        ":paths",
        ":stats",
        ":owner",
    ];
    keys.into_iter()
        .filter(|k| {
            let registered = registry.iter().any(|m| {
                k == m
                    || k.strip_prefix(m.as_str()) == Some(":metadata")
                    || (!m.ends_with(":dlq")
                        && k.strip_prefix(m.as_str()).is_some_and(|rest| {
                            OWN.contains(&rest)
                                || rest.starts_with(":leases:")
                                || rest.starts_with(":order:")
                        }))
            });
            let dedup = k.starts_with(prefix) && k.contains(":dedup:") && {
                let ttl: i64 = redis::cmd("PTTL").arg(k).query(&mut c).unwrap_or(-2);
                ttl > 0
            };
            let push = k
                .strip_prefix(prefix)
                .is_some_and(|rest| rest == "{#push}:index" || rest.starts_with("{#push}:sub:"));
            !(global.contains(k) || registered || dedup || push)
        })
        .collect()
}

/// Entries pending for leanmqd's consumers without a lease.
fn unleased(redis: &RedisProc, prefix: &str) -> Vec<String> {
    let mut c = redis.conn();
    let registry = registry(&mut c, prefix);
    let ours = [HOLDER, DLQ_HOLD, leanmq_grpc::broker::scripts::RETRY_HOLD];
    let mut out = Vec::new();
    for stream in registry.iter().filter(|s| !s.ends_with(":dlq")) {
        let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query(&mut c)
            .unwrap_or_default();
        let names: Vec<String> = groups
            .into_iter()
            .filter_map(|g| g.get("name").cloned())
            .filter_map(|v| redis::from_redis_value::<String>(v).ok())
            .collect();
        for g in names {
            let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&g)
                .arg("-")
                .arg("+")
                .arg(100_000)
                .query(&mut c)
                .unwrap_or_default();
            let leases = format!("{stream}:leases:{g}");
            for (id, consumer, _, _) in pending {
                if ours.contains(&consumer.as_str()) {
                    let score: Option<f64> = redis::cmd("ZSCORE")
                        .arg(&leases)
                        .arg(&id)
                        .query(&mut c)
                        .unwrap_or(None);
                    if score.is_none() {
                        out.push(format!("{stream} {g} {id} ({consumer})"));
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a fuzz run of FUZZ_SECS (default 20 s): make fuzz-short, make fuzz"]
async fn fuzz_every_rpc_against_a_real_server() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let secs: u64 = std::env::var("FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("fuzz: {secs} s, FUZZ_SEED={seed}");

    let redis = RedisProc::start();
    let mut d = Leanmqd::start_with(&redis.url(), |c| {
        c.max_attempts = 3;
        c.retention_interval = Duration::from_secs(1);
    })
    .await;
    let ctx = Arc::new(Ctx {
        addr: d.addr,
        channel: d.channel().await,
        receipts: Receipts::default(),
        tally: Tally::default(),
    });
    let end = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..6u64)
        .map(|w| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (w << 32));
                let mut n = 0u64;
                while Instant::now() < end {
                    step(&ctx, &mut rng).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut calls = 0;
    for w in workers {
        calls += w.await.expect("a worker ended");
    }

    // The server still does its job.
    let mut c = d.client().await;
    let id = send(&mut c, "/fz/after", b"{\"ok\":true}").await;
    let got = receive(&mut c, "/fz/after", "", 10, 30_000).await;
    assert!(
        got.iter().any(|m| m.message_id == id),
        "delivered after the run"
    );
    let receipts: Vec<&str> = got.iter().map(|m| m.receipt.as_str()).collect();
    assert!(ack(&mut c, &receipts)
        .await
        .iter()
        .all(|&o| o == proto::AckOutcome::Acked as i32));
    d.stop().await;

    let seen = ctx.tally.seen.lock().map(|s| s.clone()).unwrap_or_default();
    for ((op, code), n) in &seen {
        println!("{op:>20} {code:<20} {n}");
    }
    println!("fuzz: {calls} calls");
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "a panic (FUZZ_SEED={seed})"
    );
    let broken = ctx
        .tally
        .broken
        .lock()
        .map(|b| b.clone())
        .unwrap_or_default();
    assert!(
        broken.is_empty(),
        "undocumented statuses or hangs (FUZZ_SEED={seed}): {broken:#?}"
    );
    assert!(
        seen.keys().any(|(op, c)| *op == "Send" && c == "Ok"),
        "some sends were stored"
    );
    let outside = outside_layout(&redis, "webhook:");
    assert!(
        outside.is_empty(),
        "keys outside the layout (FUZZ_SEED={seed}): {outside:#?}"
    );
    let bare = unleased(&redis, "webhook:");
    assert!(
        bare.is_empty(),
        "pending without a lease (FUZZ_SEED={seed}): {bare:#?}"
    );
}
