//! SendBatch: validate every message first, then append all in one script.

use super::{convert, BrokerService};
use crate::error::{Error, Result};
use crate::proto;

pub async fn handle(
    svc: &BrokerService,
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
            convert::outgoing(&format!("messages[{i}]"), m, svc.settings.max_payload_bytes)
        })
        .collect::<Result<Vec<_>>>()?;
    let sent = svc.dispatcher.broker().send(&msgs).await?;
    Ok(proto::SendBatchResponse {
        results: sent.into_iter().map(convert::sent).collect(),
    })
}
