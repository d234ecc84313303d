//! DeleteDeadLetters: drop chosen dead letters.

use super::queue_of;
use crate::error::{Error, Result};
use crate::proto;
use crate::queues::Queues;

pub async fn handle(
    queues: &Queues,
    req: proto::DeleteDeadLettersRequest,
) -> Result<proto::DeleteDeadLettersResponse> {
    let route = queue_of(&req.path, &req.queue)?;
    if req.ids.is_empty() || req.ids.len() > 1000 {
        return Err(Error::invalid("ids must list 1 to 1000 DLQ entry ids"));
    }
    let deleted = queues.delete_dead_letters(&route.queue, &req.ids).await?;
    Ok(proto::DeleteDeadLettersResponse { deleted })
}
