//! Extend: push a lease out to now + extension.

use super::{convert, BrokerService, Caller};
use crate::auth::Action;
use crate::broker::limits::LEASE_RANGE;
use crate::broker::receipt::Receipt;
use crate::error::Result;
use crate::proto;

pub async fn handle(
    svc: &BrokerService,
    caller: &Caller,
    req: proto::ExtendRequest,
) -> Result<proto::ExtendResponse> {
    let r = Receipt::decode(svc.receipts.keys().await?, &req.receipt)?;
    svc.queues
        .check_queue(&caller.grant, Action::Subscribe, &r.queue)
        .await?;
    let by = convert::duration(
        "extension",
        req.extension,
        svc.settings.default_lease,
        LEASE_RANGE,
    )?;
    let end = svc.queues.extend(&r, by).await?;
    Ok(proto::ExtendResponse {
        lease_expires_at: Some(convert::timestamp_ms(end)),
    })
}
