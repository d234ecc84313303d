//! `leanmq queues` and `leanmq queue PATH`: depth, per group the
//! consumers, pending, lag and oldest unacked age, DLQ depth, scheduled.

use futures::{StreamExt as _, TryStreamExt as _};
use leanmq_grpc::proto;
use serde::Serialize;

use crate::conn::Conn;
use crate::fail::Failure;
use crate::show::{self, Out};
use crate::Global;

/// GetQueue calls in flight at once for `leanmq queues`.
const CONCURRENCY: usize = 8;

#[derive(Serialize)]
struct GroupOut {
    name: String,
    consumers: i64,
    pending: i64,
    /// -1 when Redis cannot tell.
    lag: i64,
    oldest_unacked_age_ms: Option<u64>,
    retrying: i64,
    last_delivered_id: String,
}

#[derive(Serialize)]
struct QueueOut {
    queue: String,
    stream: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    paths: Option<Vec<String>>,
    length: i64,
    dead_letters: i64,
    scheduled: i64,
    delayed: i64,
    expired: i64,
    dropped: i64,
    created_at: Option<String>,
    groups: Vec<GroupOut>,
}

impl QueueOut {
    fn of(q: proto::QueueInfo, paths: Option<Vec<String>>) -> QueueOut {
        QueueOut {
            created_at: show::time(q.created_at.as_ref()),
            groups: q
                .groups
                .into_iter()
                .map(|g| GroupOut {
                    oldest_unacked_age_ms: show::duration(g.oldest_unacked_age.as_ref())
                        .map(|d| d.as_millis() as u64),
                    name: g.name,
                    consumers: g.consumers,
                    pending: g.pending,
                    lag: g.lag,
                    retrying: g.retrying,
                    last_delivered_id: g.last_delivered_id,
                })
                .collect(),
            queue: q.queue,
            stream: q.stream,
            paths,
            length: q.length,
            dead_letters: q.dead_letters,
            scheduled: q.scheduled,
            delayed: q.delayed,
            expired: q.expired,
            dropped: q.dropped,
        }
    }

    fn oldest(&self) -> Option<std::time::Duration> {
        self.groups
            .iter()
            .filter_map(|g| g.oldest_unacked_age_ms)
            .max()
            .map(std::time::Duration::from_millis)
    }
}

/// "3 (1 delayed, 2 waiting for a retry)", or just "0".
fn scheduled(q: &QueueOut) -> String {
    if q.scheduled == 0 {
        return "0".into();
    }
    let retrying = (q.scheduled - q.delayed).max(0);
    format!(
        "{} ({} delayed, {retrying} waiting for a retry)",
        q.scheduled, q.delayed
    )
}

fn lag(n: i64) -> String {
    if n < 0 {
        "?".into()
    } else {
        n.to_string()
    }
}

pub async fn list(g: &Global) -> Result<(), Failure> {
    let conn = Conn::open(g).await?;
    // Every page.
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = conn
            .call(conn.admin().list_queues(proto::ListQueuesRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            }))
            .await?;
        all.extend(page.queues);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let conn = &conn;
    let queues: Vec<Option<QueueOut>> = futures::stream::iter(all)
        .map(|s| async move {
            let req = proto::GetQueueRequest {
                path: s.queue.clone(),
                ..Default::default()
            };
            match conn.call(conn.admin().get_queue(req)).await {
                Ok(q) => Ok(Some(QueueOut::of(q, Some(s.paths)))),
                // Deleted between the list and this call.
                Err(Failure::Refused {
                    code: tonic::Code::NotFound,
                    ..
                }) => Ok(None),
                Err(f) => Err(f),
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let queues: Vec<QueueOut> = queues.into_iter().flatten().collect();
    let mut out = Out::new();
    if g.json {
        return out.json_pretty(&queues);
    }
    if queues.is_empty() {
        return out.line("no queues");
    }
    let rows = queues
        .iter()
        .map(|q| {
            let sum = |f: fn(&GroupOut) -> i64| q.groups.iter().map(f).sum::<i64>();
            let lags = q.groups.iter().map(|g| g.lag);
            let lag_total = if lags.clone().any(|l| l < 0) {
                -1
            } else {
                lags.sum()
            };
            vec![
                q.queue.clone(),
                show::clip(&q.paths.clone().unwrap_or_default().join(","), 40),
                q.length.to_string(),
                q.groups.len().to_string(),
                sum(|g| g.consumers).to_string(),
                sum(|g| g.pending).to_string(),
                lag(lag_total),
                show::age(q.oldest()),
                q.dead_letters.to_string(),
                q.scheduled.to_string(),
            ]
        })
        .collect();
    out.line(&show::table(
        &[
            "QUEUE",
            "PATHS",
            "LENGTH",
            "GROUPS",
            "CONSUMERS",
            "PENDING",
            "LAG",
            "OLDEST UNACKED",
            "DLQ",
            "SCHEDULED",
        ],
        &[2, 3, 4, 5, 6, 8, 9],
        rows,
    ))
}

pub async fn one(g: &Global, path: &str) -> Result<(), Failure> {
    let conn = Conn::open(g).await?;
    let req = proto::GetQueueRequest {
        path: path.into(),
        ..Default::default()
    };
    let q = QueueOut::of(conn.call(conn.admin().get_queue(req)).await?, None);
    let mut out = Out::new();
    if g.json {
        return out.json_pretty(&q);
    }
    let facts = [
        ("queue", q.queue.clone()),
        ("stream", q.stream.clone()),
        ("length", q.length.to_string()),
        ("dead letters", q.dead_letters.to_string()),
        ("scheduled", scheduled(&q)),
        ("expired", q.expired.to_string()),
        ("dropped", q.dropped.to_string()),
        (
            "created",
            q.created_at.clone().unwrap_or_else(|| "-".into()),
        ),
    ];
    for (k, v) in facts {
        out.line(&format!("{k:<13} {v}"))?;
    }
    out.line("")?;
    if q.groups.is_empty() {
        return out.line("no groups");
    }
    let rows = q
        .groups
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.consumers.to_string(),
                g.pending.to_string(),
                lag(g.lag),
                show::age(
                    g.oldest_unacked_age_ms
                        .map(std::time::Duration::from_millis),
                ),
                g.retrying.to_string(),
                g.last_delivered_id.clone(),
            ]
        })
        .collect();
    out.line(&show::table(
        &[
            "GROUP",
            "CONSUMERS",
            "PENDING",
            "LAG",
            "OLDEST UNACKED",
            "RETRYING",
            "LAST DELIVERED",
        ],
        &[1, 2, 3, 5],
        rows,
    ))
}
