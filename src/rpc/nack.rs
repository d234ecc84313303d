//! Nack: retry later (explicit delay or backoff) or dead-letter now.

use super::{convert, BrokerService, Caller};
use crate::auth::Action;
use crate::broker::limits::{MAX_NACK_DELAY, MAX_REASON_BYTES};
use crate::broker::receipt::Receipt;
use crate::broker::NackOutcome;
use crate::error::Result;
use crate::proto;

/// Cut `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub async fn handle(
    svc: &BrokerService,
    caller: &Caller,
    req: proto::NackRequest,
) -> Result<proto::NackResponse> {
    let r = Receipt::decode(svc.receipts.keys().await?, &req.receipt)?;
    svc.queues
        .check_queue(&caller.grant, Action::Subscribe, &r.queue)
        .await?;
    let delay = convert::optional_duration("delay", req.delay, MAX_NACK_DELAY)?;
    let reason = truncate(&req.reason, MAX_REASON_BYTES);
    let outcome = svc.queues.nack(&r, delay, req.dead_letter, reason).await?;
    Ok(match outcome {
        NackOutcome::Retry { at_ms } => proto::NackResponse {
            outcome: proto::NackOutcome::RetryScheduled as i32,
            retry_at: Some(convert::timestamp_ms(at_ms)),
            dead_letter_id: String::new(),
        },
        NackOutcome::DeadLettered { dlq_id } => proto::NackResponse {
            outcome: proto::NackOutcome::DeadLettered as i32,
            retry_at: None,
            dead_letter_id: dlq_id,
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(super::truncate("héllo", 2), "h");
        assert_eq!(super::truncate("abc", 10), "abc");
    }
}
