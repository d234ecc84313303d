//! Receive: the pull form of Subscribe.

use super::{convert, BrokerService, Caller};
use crate::auth::Action;
use crate::broker::limits::{DEFAULT_MAX_MESSAGES, LEASE_RANGE, MAX_MESSAGES, MAX_WAIT};
use crate::error::{Error, Result};
use crate::proto;
use crate::queues::Pull;

pub async fn handle(
    svc: &BrokerService,
    caller: &Caller,
    req: proto::ReceiveRequest,
) -> Result<proto::ReceiveResponse> {
    if crate::routing::Pattern::parse(&req.path)?.is_some() {
        return Err(Error::invalid(
            "path patterns (\"*\", \">\") are for Subscribe; Receive takes one path",
        ));
    }
    let target = convert::target(&req.path, &req.queue, &req.group, &req.consumer)?;
    svc.queues
        .check_route(&caller.grant, Action::Subscribe, &target.route)
        .await?;
    let max = convert::count(
        "max_messages",
        req.max_messages,
        DEFAULT_MAX_MESSAGES,
        MAX_MESSAGES,
    )?;
    let wait = convert::optional_duration("wait", req.wait, MAX_WAIT)?.unwrap_or_default();
    let lease = convert::duration(
        "ack_deadline",
        req.ack_deadline,
        svc.settings.default_lease,
        LEASE_RANGE,
    )?;
    // Held until the reply is sent: a wait takes a long-poll place, a
    // Receive that does not wait a unary one (see `long_poll`).
    let (_unary, _long_poll) = if wait.is_zero() {
        let unary = &svc.settings.unary;
        let permit = unary.try_take();
        (
            Some(permit.ok_or_else(|| Error::ResourceExhausted(unary.refusal()))?),
            None,
        )
    } else {
        (
            None,
            Some(svc.long_polls.take(caller.conn, &caller.grant.name)?),
        )
    };
    let pull = Pull {
        max,
        lease,
        wait,
        start: convert::start_position(req.start)?,
        max_bytes: svc.settings.max_reply_bytes,
    };
    // The keys first: nothing is leased that could not be signed.
    let keys = svc.receipts.keys().await?;
    let deliveries = svc
        .queues
        .receive(&target, pull, caller.grant.creator().as_ref())
        .await?;
    Ok(proto::ReceiveResponse {
        deliveries: deliveries
            .into_iter()
            .map(|d| convert::delivery(d, keys))
            .collect(),
    })
}
