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
    let receipts = req
        .receipts
        .iter()
        .enumerate()
        .map(|(i, r)| Receipt::decode(r).map_err(|e| Error::invalid(format!("receipts[{i}]: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    for r in &receipts {
        caller.grant.check_queue(Action::Subscribe, &r.queue)?;
    }
    let outcomes = svc.dispatcher.broker().ack(&receipts).await?;
    // Free the credit of what was settled, one call per (queue, group): a
    // batch of acks is nearly always for one subscription.
    let mut settled: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for (r, o) in receipts.iter().zip(&outcomes) {
        if *o == AckOutcome::Stale {
            continue;
        }
        match settled
            .iter_mut()
            .find(|(q, g, _)| *q == r.queue && *g == r.group)
        {
            Some((_, _, ids)) => ids.push(&r.id),
            None => settled.push((&r.queue, &r.group, vec![&r.id])),
        }
    }
    for (queue, group, ids) in settled {
        svc.dispatcher.settled(queue, group, &ids, false);
    }
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
