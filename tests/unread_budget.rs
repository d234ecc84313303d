//! Safe to share: a subscriber that stops reading holds a bounded number of
//! bytes in leanmqd, per stream and across the replica, and what it cannot
//! take goes to the subscribers that read. Against a real redis-server and
//! leanmqd.

mod common;

use common::*;
use leanmq_grpc::proto;
use leanmq_grpc::proto::broker_client::BrokerClient;
use tonic::transport::Endpoint;

const SIZE: usize = 256 << 10;
const SENT: usize = 100;

/// A client on its own connection whose HTTP/2 window holds less than one
/// message, so what it does not read stays on the server's side.
async fn narrow_client(l: &Leanmqd) -> Client {
    let channel = Endpoint::from_shared(format!("http://{}", l.addr))
        .expect("uri")
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .expect("connect");
    BrokerClient::new(channel).max_decoding_message_size(8 << 20)
}

/// Open a Subscribe stream that never reads (60 s leases: nothing expires).
async fn stalled(l: &Leanmqd) -> tonic::Streaming<proto::Delivery> {
    let mut c = narrow_client(l).await;
    subscribe(&mut c, "/big", "g", 100, 60_000).await
}

/// Send SENT messages of SIZE bytes; a reading subscriber must get all
/// but what the stalled streams hold, and those hold at most `held_max`.
async fn the_reader_gets_the_rest(l: &Leanmqd, redis: &RedisProc, held_max: usize) {
    let mut c = l.client().await;
    let big = vec![b'x'; SIZE];
    for _ in 0..SENT {
        c.send(bytes_send("/big", &big)).await.expect("send");
    }
    let mut reader = narrow_client(l).await;
    let pending = || pending_count(redis, "webhook:big", "g") as usize;
    let mut got = 0;
    // The reader pulls and acks everything the stalled streams do not
    // hold; between its pulls it holds nothing, so what is pending then is
    // what the stalled streams hold.
    while got + pending() < SENT {
        let ds = receive(&mut reader, "/big", "g", 10, 60_000).await;
        let receipts: Vec<&str> = ds.iter().map(|d| d.receipt.as_str()).collect();
        ack(&mut c, &receipts).await;
        got += ds.len();
    }
    let held = pending();
    assert_eq!(got + held, SENT, "every message is held or was read once");
    assert!(
        held <= held_max,
        "the stalled streams hold {held} deliveries of {SIZE} bytes, more than {held_max}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_does_not_read_holds_no_more_than_its_byte_budget() {
    let redis = RedisProc::start();
    let l = Leanmqd::start_with(&redis.url(), |cfg| {
        cfg.max_unread_bytes_per_stream = 1 << 20;
    })
    .await;
    let _stalled = stalled(&l).await;
    // Its budget (4 × 256 KiB) in its channel, one being encoded and one
    // queued for the window; without the budget its credit (100) would
    // take every message.
    the_reader_gets_the_rest(&l, &redis, 4 + 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_replica_budget_slows_streams_to_one_but_starves_none() {
    let redis = RedisProc::start();
    let l = Leanmqd::start_with(&redis.url(), |cfg| {
        cfg.max_unread_bytes_per_stream = 1 << 20;
        cfg.max_unread_bytes = 1 << 20;
    })
    .await;
    // Three stalled streams share a replica budget the size of one
    // stream's: together they hold about one budget and one each, not
    // three budgets, and the reader still gets everything else.
    let _a = stalled(&l).await;
    let _b = stalled(&l).await;
    let _c = stalled(&l).await;
    the_reader_gets_the_rest(&l, &redis, 4 + 3 * 3).await;
}
