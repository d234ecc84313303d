//! RequeueDeadLetters: back to the queue, atomically per message.

use super::queue_of;
use crate::broker::admin::Selector;
use crate::error::{Error, Result};
use crate::proto;
use crate::proto::requeue_dead_letters_request::Selector as Sel;
use crate::queues::Queues;

pub async fn handle(
    queues: &Queues,
    req: proto::RequeueDeadLettersRequest,
) -> Result<proto::RequeueDeadLettersResponse> {
    let route = queue_of(&req.path, &req.queue)?;
    let selector = match req.selector {
        Some(Sel::Ids(ids)) if !ids.ids.is_empty() && ids.ids.len() <= 1000 => {
            Selector::Ids(ids.ids)
        }
        Some(Sel::Ids(_)) => return Err(Error::invalid("ids must list 1 to 1000 DLQ entry ids")),
        Some(Sel::All(true)) => Selector::All,
        Some(Sel::Since(ts)) => Selector::Since(crate::rpc::convert::any_time_ms("since", &ts)?),
        _ => {
            return Err(Error::invalid(
                "choose what to requeue: ids, all = true, or since",
            ))
        }
    };
    let (done, missing) = queues.requeue_dead_letters(&route, selector).await?;
    Ok(proto::RequeueDeadLettersResponse {
        requeued: done
            .into_iter()
            .map(|(dead_letter_id, message_id)| proto::Requeued {
                dead_letter_id,
                message_id,
            })
            .collect(),
        missing,
    })
}
