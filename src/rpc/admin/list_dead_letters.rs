//! ListDeadLetters: a page of a queue's DLQ with each entry's failure history.

use super::queue_of;
use crate::broker::limits::{DEFAULT_PAGE, MAX_PAGE};
use crate::error::Result;
use crate::proto;
use crate::queues::Queues;
use crate::rpc::convert::{self, timestamp_secs};

pub async fn handle(
    queues: &Queues,
    req: proto::ListDeadLettersRequest,
) -> Result<proto::ListDeadLettersResponse> {
    let route = queue_of(&req.path, &req.queue)?;
    let page = convert::count("page_size", req.page_size, DEFAULT_PAGE, MAX_PAGE)?;
    let (letters, next) = queues
        .list_dead_letters(&route.queue, page as usize, &req.page_token)
        .await?;
    Ok(proto::ListDeadLettersResponse {
        dead_letters: letters
            .into_iter()
            .map(|d| {
                let last = d.failures.last().cloned().unwrap_or_default();
                proto::DeadLetter {
                    original_message_id: last.message_id.clone(),
                    path: d.decoded.path.clone().unwrap_or_else(|| route.path.clone()),
                    payload: d.decoded.payload,
                    content_type: d.decoded.content_type,
                    headers: d.decoded.headers.into_iter().collect(),
                    attempts: last.attempts,
                    last_reason: last.reason.clone(),
                    first_failed_at: d.failures.first().map(|f| timestamp_secs(f.timestamp)),
                    last_failed_at: d.failures.last().map(|f| timestamp_secs(f.timestamp)),
                    failures: d
                        .failures
                        .into_iter()
                        .map(|f| proto::Failure {
                            at: Some(timestamp_secs(f.timestamp)),
                            reason: f.reason,
                            attempts: f.attempts,
                            group: f.group,
                        })
                        .collect(),
                    id: d.id,
                }
            })
            .collect(),
        next_page_token: next,
    })
}
