//! PurgeDeadLetters: empty a DLQ.

use super::queue_of;
use crate::broker::Broker;
use crate::error::Result;
use crate::proto;

pub async fn handle(
    broker: &Broker,
    req: proto::PurgeDeadLettersRequest,
) -> Result<proto::PurgeDeadLettersResponse> {
    let route = queue_of(&req.path)?;
    let purged = broker.purge_dead_letters(&route.queue).await?;
    Ok(proto::PurgeDeadLettersResponse { purged })
}
