//! Send: validate, append, answer with the entry id.

use super::{convert, BrokerService, Caller};
use crate::auth::Action;
use crate::error::{Error, Result};
use crate::proto;

pub async fn handle(
    svc: &BrokerService,
    caller: &Caller,
    req: proto::SendRequest,
) -> Result<proto::SendResponse> {
    let msg = convert::outgoing("", req, &svc.settings, caller.traceparent.as_deref())?;
    caller.grant.check(Action::Send, &msg.route)?;
    let sent = svc
        .dispatcher
        .broker()
        .send(std::slice::from_ref(&msg))
        .await?;
    let s = sent
        .into_iter()
        .next()
        .ok_or_else(|| Error::Internal("send returned no id".into()))?;
    Ok(convert::sent(s))
}
