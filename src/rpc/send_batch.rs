//! SendBatch: validate every message first, then append all in one atomic Redis call.

use super::{convert, BrokerService, Caller};
use crate::auth::Action;
use crate::error::{Error, Result};
use crate::proto;

pub async fn handle(
    svc: &BrokerService,
    caller: &Caller,
    req: proto::SendBatchRequest,
) -> Result<proto::SendBatchResponse> {
    let n = req.messages.len();
    if n == 0 {
        return Err(Error::invalid("messages is empty; send at least one"));
    }
    if n > svc.settings.max_batch {
        return Err(Error::invalid(format!(
            "{n} messages; the limit is {} (--max-batch)",
            svc.settings.max_batch
        )));
    }
    let msgs = req
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("messages[{i}]");
            let mut msg = convert::outgoing(&at, m, &svc.settings, caller.traceparent.as_deref())?;
            if !msg.route.path.is_empty() {
                caller.grant.check(Action::Send, &msg.route)?;
            }
            msg.creator = caller.grant.creator();
            Ok(msg)
        })
        .collect::<Result<Vec<_>>>()?;
    // Queues addressed by name are checked on their owner's path, once each.
    let mut checked: Vec<&str> = Vec::new();
    for m in msgs.iter().filter(|m| m.route.path.is_empty()) {
        if !checked.contains(&m.route.queue.as_str()) {
            svc.queues
                .check_queue(&caller.grant, Action::Send, &m.route.queue)
                .await?;
            checked.push(&m.route.queue);
        }
    }
    let sent = svc.queues.send_batch(&msgs).await?;
    Ok(proto::SendBatchResponse {
        results: sent.into_iter().map(convert::sent).collect(),
    })
}
