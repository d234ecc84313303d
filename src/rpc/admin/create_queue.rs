//! CreateQueue: LeanMQ's `create_queue_pair`, without sending anything.

use crate::auth::{Action, Grant};
use crate::broker::Target;
use crate::error::Result;
use crate::proto;
use crate::queues::Queues;
use crate::routing;

pub async fn handle(
    queues: &Queues,
    grant: &Grant,
    req: proto::CreateQueueRequest,
) -> Result<proto::CreateQueueResponse> {
    let route = routing::address(&req.path, &req.queue)?;
    // Send and Subscribe create the queue too, so any of the three will do;
    // the error names the first.
    let allowed = [Action::Send, Action::Subscribe, Action::Admin]
        .iter()
        .map(|a| grant.check(*a, &route))
        .find(Result::is_ok)
        .unwrap_or_else(|| grant.check(Action::Send, &route));
    allowed?;
    let target = Target {
        group: routing::default_group(&route.queue),
        route,
    };
    let path = (!target.route.path.is_empty()).then_some(target.route.path.as_str());
    let keys = queues
        .create_queue(&target, path, grant.creator().as_ref())
        .await?;
    Ok(proto::CreateQueueResponse {
        queue: target.route.queue.clone(),
        stream: keys.stream.clone(),
        dead_letter_stream: keys.dlq.clone(),
        group: target.group,
    })
}
