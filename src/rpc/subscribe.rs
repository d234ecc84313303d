//! Subscribe: register with this replica's reader for the (queue, group),
//! and stream what it hands over. The stream ends with UNAVAILABLE when
//! leanmqd drains; a client that goes away drops the subscription, which
//! gives back anything it never received.

use super::{convert, BrokerService, DeliveryStream};
use crate::broker::limits::{DEFAULT_MAX_IN_FLIGHT, LEASE_RANGE, MAX_IN_FLIGHT};
use crate::error::Result;
use crate::proto;

pub async fn handle(svc: &BrokerService, req: proto::SubscribeRequest) -> Result<DeliveryStream> {
    let pattern = crate::routing::Pattern::parse(&req.path)?;
    let max_in_flight = convert::count(
        "max_in_flight",
        req.max_in_flight,
        DEFAULT_MAX_IN_FLIGHT,
        MAX_IN_FLIGHT,
    )?;
    let lease = convert::duration(
        "ack_deadline",
        req.ack_deadline,
        svc.settings.default_lease,
        LEASE_RANGE,
    )?;
    let start = convert::start_position(req.start)?;
    let sub = match pattern {
        Some(pattern) => {
            crate::routing::check_name("group", &req.group)?;
            crate::routing::check_name("consumer", &req.consumer)?;
            tracing::debug!(pattern = %pattern.text, group = %req.group, consumer = %req.consumer, "subscribed to a pattern");
            let group = (!req.group.is_empty()).then(|| req.group.clone());
            svc.dispatcher
                .subscribe_pattern(pattern, group, start, max_in_flight, lease)
        }
        None => {
            let target = convert::target(&req.path, &req.group, &req.consumer)?;
            svc.dispatcher
                .broker()
                .ensure(&target, &start, Some(&target.route.path))
                .await?;
            tracing::debug!(queue = %target.route.queue, group = %target.group, consumer = %req.consumer, "subscribed");
            svc.dispatcher.subscribe(&target, max_in_flight, lease)
        }
    };
    let stream = futures::stream::unfold((sub, OpenStream::new()), |(mut sub, open)| async move {
        let item = sub.next().await?;
        Some((item.map(convert::delivery).map_err(Into::into), (sub, open)))
    });
    Ok(Box::pin(stream))
}

/// Counts the stream in `leanmq_open_streams` while it lives.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        crate::observe::stream_opened();
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        crate::observe::stream_closed();
    }
}
