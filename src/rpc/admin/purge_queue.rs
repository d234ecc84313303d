//! PurgeQueue: delete every message of a queue (confirmed).

use super::{confirmed, queue_of};
use crate::error::Result;
use crate::proto;
use crate::queues::Queues;

pub async fn handle(
    queues: &Queues,
    req: proto::PurgeQueueRequest,
) -> Result<proto::PurgeQueueResponse> {
    let route = queue_of(&req.path, &req.queue)?;
    confirmed(&route, &req.confirm)?;
    let purged = queues.purge_queue(&route.queue).await?;
    Ok(proto::PurgeQueueResponse { purged })
}
