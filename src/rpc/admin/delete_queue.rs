//! DeleteQueue: remove a queue, optionally with its DLQ (confirmed).

use super::{confirmed, queue_of};
use crate::broker::Broker;
use crate::error::Result;
use crate::proto;

pub async fn handle(
    broker: &Broker,
    req: proto::DeleteQueueRequest,
) -> Result<proto::DeleteQueueResponse> {
    let route = queue_of(&req.path)?;
    confirmed(&route, &req.confirm)?;
    let deleted_messages = broker.delete_queue(&route.queue, req.with_dlq).await?;
    Ok(proto::DeleteQueueResponse { deleted_messages })
}
