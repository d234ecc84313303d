//! DeleteQueue: remove a queue, optionally with its DLQ (confirmed).

use super::{confirmed, queue_of};
use crate::error::Result;
use crate::proto;
use crate::queues::Queues;

pub async fn handle(
    queues: &Queues,
    req: proto::DeleteQueueRequest,
) -> Result<proto::DeleteQueueResponse> {
    let route = queue_of(&req.path, &req.queue)?;
    confirmed(&route, &req.confirm)?;
    let deleted_messages = queues.delete_queue(&route.queue, req.with_dlq).await?;
    Ok(proto::DeleteQueueResponse { deleted_messages })
}
