//! ListQueues: every queue in the registry the caller may administer.

use crate::error::Result;
use crate::proto;
use crate::queues::Queues;

pub async fn handle(
    queues: &Queues,
    grant: &crate::auth::Grant,
    _req: proto::ListQueuesRequest,
) -> Result<proto::ListQueuesResponse> {
    Ok(proto::ListQueuesResponse {
        queues: queues
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
