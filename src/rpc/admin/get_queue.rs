//! GetQueue: one queue in detail.

use super::queue_of;
use crate::error::Result;
use crate::proto;
use crate::queues::Queues;
use crate::rpc::convert::timestamp_secs;

pub async fn handle(queues: &Queues, req: proto::GetQueueRequest) -> Result<proto::QueueInfo> {
    let route = queue_of(&req.path, &req.queue)?;
    let q = queues.get_queue(&route.queue).await?;
    let retrying: i64 = q.groups.iter().map(|g| g.retrying).sum();
    Ok(proto::QueueInfo {
        queue: q.queue,
        stream: q.stream,
        length: q.length,
        groups: q
            .groups
            .into_iter()
            .map(|g| proto::GroupInfo {
                name: g.name,
                pending: g.pending,
                consumers: g.consumers,
                lag: g.lag,
                oldest_unacked_age: g.oldest_unacked_age_ms.map(|ms| prost_types::Duration {
                    seconds: (ms / 1000) as i64,
                    nanos: ((ms % 1000) * 1_000_000) as i32,
                }),
                retrying: g.retrying,
                last_delivered_id: g.last_delivered_id,
            })
            .collect(),
        dead_letters: q.dead_letters,
        scheduled: q.delayed + retrying,
        delayed: q.delayed,
        expired: q.expired,
        dropped: q.dropped,
        created_at: q.created_at.map(timestamp_secs),
    })
}
