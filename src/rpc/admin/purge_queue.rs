//! PurgeQueue: delete every message of a queue (confirmed).

use super::{confirmed, queue_of};
use crate::broker::Broker;
use crate::error::Result;
use crate::proto;

pub async fn handle(
    broker: &Broker,
    req: proto::PurgeQueueRequest,
) -> Result<proto::PurgeQueueResponse> {
    let route = queue_of(&req.path)?;
    confirmed(&route, &req.confirm)?;
    let purged = broker.purge_queue(&route.queue).await?;
    Ok(proto::PurgeQueueResponse { purged })
}
