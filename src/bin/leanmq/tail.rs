//! `leanmq tail PATH|PATTERN`: subscribe and print deliveries, one line
//! each (NDJSON with every Delivery field under `--json`).
//!
//! Without `--group` it reads in a throwaway group of its own that starts
//! at now, and acks there, so it never takes work from real consumers (a
//! group's acks settle nothing in another group). With `--group` it joins
//! that group: `--ack` consumes, `--nack` hands each delivery back for a
//! retry, `--no-ack` (the default) leaves each leased until its lease ends.

use std::collections::BTreeMap;
use std::pin::pin;

use futures::FutureExt as _;
use leanmq_grpc::proto;
use serde::Serialize;

use crate::conn::Conn;
use crate::fail::Failure;
use crate::show::{self, Out, Payload};
use crate::Global;

/// Most receipts per Ack call (leanmqd's limit).
const ACK_BATCH: usize = 1000;

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// A path ("/order/status") or a pattern ("/order/*", "/order/>").
    pub path: String,

    /// Join this consumer group (it competes with the group's other
    /// consumers). Without it: a throwaway group starting at now.
    #[arg(long)]
    pub group: Option<String>,

    /// Stop after this many deliveries.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub count: Option<u64>,

    /// Ack each delivery once printed (consumes it from --group).
    #[arg(long, requires = "group", conflicts_with_all = ["nack", "no_ack"])]
    pub ack: bool,

    /// Nack each delivery once printed: retried later under the server's
    /// policy, dead-lettered after its last attempt.
    #[arg(long, requires = "group", conflicts_with = "no_ack")]
    pub nack: bool,

    /// Leave each delivery leased (the default): it is redelivered to the
    /// group when its lease ends.
    #[arg(long, requires = "group")]
    pub no_ack: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Settle {
    Ack,
    Nack,
    Leave,
}

/// Every field of a Delivery, for `--json`.
#[derive(Serialize)]
struct DeliveryOut<'a> {
    receipt: &'a str,
    message_id: &'a str,
    path: &'a str,
    payload: Payload,
    content_type: &'a str,
    headers: BTreeMap<&'a str, &'a str>,
    attempt: u32,
    published_at: Option<String>,
    group: &'a str,
    lease_expires_at: Option<String>,
}

fn print(out: &mut Out, d: &proto::Delivery, json: bool) -> Result<(), Failure> {
    if json {
        return out.json(&DeliveryOut {
            receipt: &d.receipt,
            message_id: &d.message_id,
            path: &d.path,
            payload: Payload::of(&d.content_type, &d.payload),
            content_type: &d.content_type,
            headers: d
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            attempt: d.attempt,
            published_at: show::time(d.published_at.as_ref()),
            group: &d.group,
            lease_expires_at: show::time(d.lease_expires_at.as_ref()),
        });
    }
    out.line(&format!(
        "{}\t{}\t{}\t{}",
        d.message_id,
        d.attempt,
        d.path,
        show::payload_line(&d.content_type, &d.payload)
    ))
}

pub async fn run(g: &Global, args: TailArgs) -> Result<(), Failure> {
    let (group, start, settle) = match &args.group {
        Some(group) => {
            let settle = if args.ack {
                Settle::Ack
            } else if args.nack {
                Settle::Nack
            } else {
                Settle::Leave
            };
            (group.clone(), None, settle)
        }
        None => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            let start = proto::StartPosition {
                position: Some(proto::start_position::Position::Now(true)),
            };
            (
                format!("leanmq-tail-{}", &id[..12]),
                Some(start),
                Settle::Ack,
            )
        }
    };
    let conn = Conn::open(g).await?;
    let req = proto::SubscribeRequest {
        path: args.path.clone(),
        group: group.clone(),
        consumer: "leanmq-tail".into(),
        max_in_flight: args.count.map_or(100, |c| c.min(100) as u32),
        ack_deadline: None,
        start,
        ..Default::default()
    };
    let mut stream = conn.call(conn.broker().subscribe(req)).await?;
    if !g.json && args.group.is_none() {
        eprintln!("tailing {} in throwaway group {group}, from now", args.path);
    }
    let mut tail = Tail {
        conn: &conn,
        settle,
        acks: Vec::new(),
    };
    let mut out = Out::new();
    let mut interrupt = pin!(tokio::signal::ctrl_c());
    let mut seen = 0u64;
    while args.count.is_none_or(|c| seen < c) {
        let next = match stream.message().now_or_never() {
            Some(m) => m,
            None => {
                // Nothing ready: settle what was printed, then wait.
                tail.flush().await?;
                tokio::select! {
                    _ = &mut interrupt => break,
                    m = stream.message() => m,
                }
            }
        };
        let d = match next {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(Failure::Unavailable {
                    addr: conn.addr.clone(),
                    message: "leanmqd ended the stream".into(),
                })
            }
            Err(status) => return Err(conn.status(status)),
        };
        if let Err(e) = print(&mut out, &d, g.json) {
            // What was printed before is settled; this one is not.
            tail.flush().await?;
            return Err(e);
        }
        seen += 1;
        tail.settle(d.receipt).await?;
    }
    tail.flush().await
}

/// Settles what was printed: acks batched, nacks one by one.
struct Tail<'a> {
    conn: &'a Conn,
    settle: Settle,
    acks: Vec<String>,
}

impl Tail<'_> {
    async fn settle(&mut self, receipt: String) -> Result<(), Failure> {
        match self.settle {
            Settle::Leave => Ok(()),
            Settle::Ack => {
                self.acks.push(receipt);
                if self.acks.len() >= ACK_BATCH {
                    self.flush().await?;
                }
                Ok(())
            }
            Settle::Nack => {
                let req = proto::NackRequest {
                    receipt,
                    delay: None,
                    dead_letter: false,
                    reason: "nacked with leanmq tail --nack".into(),
                };
                self.conn
                    .call(self.conn.broker().nack(req))
                    .await
                    .map(|_| ())
            }
        }
    }

    async fn flush(&mut self) -> Result<(), Failure> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let receipts = std::mem::take(&mut self.acks);
        let resp = self
            .conn
            .call(self.conn.broker().ack(proto::AckRequest { receipts }))
            .await?;
        let stale = resp
            .results
            .iter()
            .filter(|r| r.outcome == proto::AckOutcome::Stale as i32)
            .count();
        if stale > 0 {
            eprintln!(
                "warning: {stale} deliveries had been redelivered before their ack; they will be processed again"
            );
        }
        Ok(())
    }
}
