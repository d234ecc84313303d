//! Subscribe: register with this replica's reader for the (queue, group),
//! and stream what it hands over. The stream ends with UNAVAILABLE when
//! leanmqd drains; a client that goes away drops the subscription, which
//! gives back anything it never received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::{convert, BrokerService, Caller, DeliveryStream};
use crate::auth::Action;
use crate::broker::limits::{DEFAULT_MAX_IN_FLIGHT, LEASE_RANGE, MAX_IN_FLIGHT};
use crate::error::{Error, Result};
use crate::proto;
use crate::queues::Source;

pub async fn handle(
    svc: &BrokerService,
    caller: &Caller,
    req: proto::SubscribeRequest,
) -> Result<DeliveryStream> {
    let pattern = crate::routing::Pattern::parse(&req.path)?;
    match &pattern {
        Some(p) => caller.grant.check_pattern(Action::Subscribe, p)?,
        None => {
            let route = crate::routing::address(&req.path, &req.queue)?;
            svc.queues
                .check_route(&caller.grant, Action::Subscribe, &route)
                .await?
        }
    }
    let open = OpenStream::new(&svc.streams, caller.conn, &svc.settings)?;
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
    let source = match pattern {
        Some(pattern) => {
            crate::routing::check_name("group", &req.group)?;
            crate::routing::check_name("consumer", &req.consumer)?;
            tracing::debug!(pattern = %pattern.text, group = %req.group, consumer = %req.consumer, "subscribed to a pattern");
            let group = (!req.group.is_empty()).then(|| req.group.clone());
            Source::Pattern { pattern, group }
        }
        None => {
            let target = convert::target(&req.path, &req.queue, &req.group, &req.consumer)?;
            tracing::debug!(queue = %target.route.queue, group = %target.group, consumer = %req.consumer, "subscribed");
            Source::Path(target)
        }
    };
    // The keys first: nothing is leased that could not be signed.
    let keys = svc.receipts.keys().await?.clone();
    let sub = svc
        .queues
        .subscribe(
            source,
            start,
            max_in_flight,
            lease,
            caller.grant.creator().as_ref(),
        )
        .await?;
    let stream = futures::stream::unfold((sub, open), move |(mut sub, open)| {
        let keys = keys.clone();
        async move {
            let item = sub.next().await?;
            Some((
                item.map(|d| convert::delivery(*d, &keys))
                    .map_err(Into::into),
                (sub, open),
            ))
        }
    });
    Ok(Box::pin(stream))
}

/// Open Subscribe streams on this replica, in all and per connection.
#[derive(Default)]
pub struct StreamCounts {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_conn: HashMap<SocketAddr, usize>,
}

/// One open stream: counted against the limits and in
/// `leanmq_open_streams` while it lives.
struct OpenStream {
    counts: Arc<StreamCounts>,
    conn: Option<SocketAddr>,
}

impl OpenStream {
    fn new(
        counts: &Arc<StreamCounts>,
        conn: Option<SocketAddr>,
        settings: &super::EdgeSettings,
    ) -> Result<Self> {
        let mut c = counts
            .inner
            .lock()
            .map_err(|_| Error::Internal("stream counts lock poisoned".into()))?;
        if c.total >= settings.max_subscriptions {
            return Err(Error::ResourceExhausted(format!(
                "this leanmqd has {} Subscribe streams open, its limit (--max-subscriptions); connect to another replica or retry later",
                c.total
            )));
        }
        if let Some(addr) = conn {
            let n = c.per_conn.entry(addr).or_insert(0);
            if *n >= settings.max_streams_per_connection {
                return Err(Error::ResourceExhausted(format!(
                    "this connection has {n} Subscribe streams open, the limit per connection (--max-streams-per-connection); open another connection"
                )));
            }
            *n += 1;
        }
        c.total += 1;
        crate::observe::stream_opened();
        Ok(OpenStream {
            counts: counts.clone(),
            conn,
        })
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        crate::observe::stream_closed();
        if let Ok(mut c) = self.counts.inner.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(addr) = self.conn {
                if let Some(n) = c.per_conn.get_mut(&addr) {
                    *n -= 1;
                    if *n == 0 {
                        c.per_conn.remove(&addr);
                    }
                }
            }
        }
    }
}
