//! PurgeDeadLetters: empty a DLQ.

use super::queue_of;
use crate::error::Result;
use crate::proto;
use crate::queues::Queues;

pub async fn handle(
    queues: &Queues,
    req: proto::PurgeDeadLettersRequest,
) -> Result<proto::PurgeDeadLettersResponse> {
    let route = queue_of(&req.path, &req.queue)?;
    let purged = queues.purge_dead_letters(&route.queue).await?;
    Ok(proto::PurgeDeadLettersResponse { purged })
}
