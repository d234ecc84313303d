//! Send: validate, append, answer with the entry id.

use tracing::Instrument;

use super::{convert, BrokerService, Caller};
use crate::auth::Action;
use crate::error::Result;
use crate::proto;

pub async fn handle(
    svc: &BrokerService,
    caller: &Caller,
    req: proto::SendRequest,
) -> Result<proto::SendResponse> {
    // The broker's part of the caller's trace, when traces are exported
    // (`otlp`); otherwise no span, which costs nothing per call.
    let span = if crate::telemetry::exporting() {
        let span = tracing::info_span!("leanmq.send", path = %req.path);
        crate::telemetry::continue_trace(&span, caller.traceparent.as_deref());
        span
    } else {
        tracing::Span::none()
    };
    async move {
        let mut msg = convert::outgoing("", req, &svc.settings, caller.traceparent.as_deref())?;
        svc.queues
            .check_route(&caller.grant, Action::Send, &msg.route)
            .await?;
        msg.creator = caller.grant.creator();
        let s = svc.queues.send(msg).await?;
        Ok(convert::sent(s))
    }
    .instrument(span)
    .await
}
