//! Ack: settle receipts; per-receipt outcomes.

use super::{BrokerService, Caller};
use crate::auth::Action;
use crate::broker::limits::MAX_ACK_RECEIPTS;
use crate::broker::receipt::Receipt;
use crate::broker::AckOutcome;
use crate::error::{Error, Result};
use crate::proto;

pub async fn handle(
    svc: &BrokerService,
    caller: &Caller,
    req: proto::AckRequest,
) -> Result<proto::AckResponse> {
    let n = req.receipts.len();
    if n == 0 {
        return Err(Error::invalid("receipts is empty"));
    }
    if n > MAX_ACK_RECEIPTS {
        return Err(Error::invalid(format!(
            "{n} receipts; the limit is {MAX_ACK_RECEIPTS}"
        )));
    }
    let keys = svc.receipts.keys().await?;
    let receipts = req
        .receipts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Receipt::decode(keys, r).map_err(|e| Error::invalid(format!("receipts[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // Once per queue: a batch is nearly always one queue's.
    let mut checked: Vec<&str> = Vec::new();
    for r in &receipts {
        if !checked.contains(&r.queue.as_str()) {
            svc.queues
                .check_queue(&caller.grant, Action::Subscribe, &r.queue)
                .await?;
            checked.push(&r.queue);
        }
    }
    let outcomes = svc.queues.ack(&receipts).await?;
    Ok(proto::AckResponse {
        results: req
            .receipts
            .into_iter()
            .zip(outcomes)
            .map(|(receipt, o)| proto::AckResult {
                receipt,
                outcome: match o {
                    AckOutcome::Acked => proto::AckOutcome::Acked,
                    AckOutcome::NotPending => proto::AckOutcome::NotPending,
                    AckOutcome::Stale => proto::AckOutcome::Stale,
                } as i32,
            })
            .collect(),
    })
}
