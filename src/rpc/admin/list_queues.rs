//! ListQueues: every queue in the registry the caller may administer.

use crate::broker::Broker;
use crate::error::Result;
use crate::proto;

pub async fn handle(
    broker: &Broker,
    grant: &crate::auth::Grant,
    _req: proto::ListQueuesRequest,
) -> Result<proto::ListQueuesResponse> {
    Ok(proto::ListQueuesResponse {
        queues: broker
            .list_queues()
            .await?
            .into_iter()
            .filter(|q| grant.sees_queue(&q.queue))
            .map(|q| proto::QueueSummary {
                queue: q.queue,
                stream: q.stream,
                length: q.length,
                dead_letters: q.dead_letters,
                paths: q.paths,
            })
            .collect(),
    })
}
