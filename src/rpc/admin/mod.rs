//! The `leanmq.v1.Admin` service: one thin `impl` delegating to one file per RPC.

mod create_queue;
mod delete_dead_letters;
mod delete_queue;
mod get_queue;
mod list_dead_letters;
mod list_queues;
mod purge_dead_letters;
mod purge_queue;
pub mod push;
mod requeue;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::Action;
use crate::broker::admin::resolve;
use crate::error::{Error, Result};
use crate::proto;
use crate::queues::Queues;
use crate::routing::Route;

pub struct AdminService {
    queues: Arc<Queues>,
    /// Which push endpoints may be reached.
    push_policy: Arc<crate::push::ssrf::Policy>,
}

impl AdminService {
    pub fn new(queues: Arc<Queues>, push_policy: Arc<crate::push::ssrf::Policy>) -> Self {
        AdminService {
            queues,
            push_policy,
        }
    }
}

/// The queue a request names by `path` (a path or a plain queue name, as
/// before names could be given) or by `queue`, or INVALID_ARGUMENT.
fn queue_of(path: &str, queue: &str) -> Result<Route> {
    if queue.is_empty() {
        resolve(path)
    } else {
        crate::routing::address(path, queue)
    }
}

/// Destructive calls must name the queue again in `confirm`.
fn confirmed(route: &Route, confirm: &str) -> Result<()> {
    if confirm != route.queue {
        return Err(Error::invalid(format!(
            "this deletes data: set confirm to the queue name {:?} to proceed",
            route.queue
        )));
    }
    Ok(())
}

type Reply<T> = std::result::Result<Response<T>, Status>;

/// Admin requests that name one queue by path.
trait OnePath {
    fn path(&self) -> &str;
    fn queue(&self) -> &str;
}

macro_rules! one_path {
    ($($t:ty),*) => {$(
        impl OnePath for $t {
            fn path(&self) -> &str {
                &self.path
            }
            fn queue(&self) -> &str {
                &self.queue
            }
        }
    )*};
}

one_path!(
    proto::GetQueueRequest,
    proto::ListDeadLettersRequest,
    proto::RequeueDeadLettersRequest,
    proto::DeleteDeadLettersRequest,
    proto::PurgeDeadLettersRequest,
    proto::PurgeQueueRequest,
    proto::DeleteQueueRequest
);

/// The request, once the caller's grant allows admin on its queue.
async fn admitted<T: OnePath>(queues: &Queues, req: Request<T>) -> Result<T> {
    let grant = crate::auth::grant_of(&req)?;
    let req = req.into_inner();
    let route = queue_of(req.path(), req.queue())?;
    // An owned queue is checked on its owner's path, whatever spelling or
    // name the request gave. Otherwise a queue named directly (not by a
    // path) is allowed when some path the grant covers maps to it, and a
    // path is checked as itself.
    let owner = match grant.restricted() {
        true => queues.owner(&route.queue).await?,
        false => None,
    };
    if owner.is_some() {
        grant.check_owned(Action::Admin, &route.queue, owner.as_deref())?;
    } else if !req.queue().is_empty() || crate::routing::is_queue_name(req.path()) {
        grant.check_queue(Action::Admin, &route.queue)?;
    } else {
        grant.check(Action::Admin, &route)?;
    }
    Ok(req)
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn list_queues(
        &self,
        req: Request<proto::ListQueuesRequest>,
    ) -> Reply<proto::ListQueuesResponse> {
        Ok(Response::new(
            list_queues::handle(
                &self.queues,
                &*crate::auth::grant_of(&req)?,
                req.into_inner(),
            )
            .await?,
        ))
    }

    async fn get_queue(&self, req: Request<proto::GetQueueRequest>) -> Reply<proto::QueueInfo> {
        Ok(Response::new(
            get_queue::handle(&self.queues, admitted(&self.queues, req).await?).await?,
        ))
    }

    async fn list_dead_letters(
        &self,
        req: Request<proto::ListDeadLettersRequest>,
    ) -> Reply<proto::ListDeadLettersResponse> {
        Ok(Response::new(
            list_dead_letters::handle(&self.queues, admitted(&self.queues, req).await?).await?,
        ))
    }

    async fn requeue_dead_letters(
        &self,
        req: Request<proto::RequeueDeadLettersRequest>,
    ) -> Reply<proto::RequeueDeadLettersResponse> {
        Ok(Response::new(
            requeue::handle(&self.queues, admitted(&self.queues, req).await?).await?,
        ))
    }

    async fn delete_dead_letters(
        &self,
        req: Request<proto::DeleteDeadLettersRequest>,
    ) -> Reply<proto::DeleteDeadLettersResponse> {
        Ok(Response::new(
            delete_dead_letters::handle(&self.queues, admitted(&self.queues, req).await?).await?,
        ))
    }

    async fn purge_dead_letters(
        &self,
        req: Request<proto::PurgeDeadLettersRequest>,
    ) -> Reply<proto::PurgeDeadLettersResponse> {
        Ok(Response::new(
            purge_dead_letters::handle(&self.queues, admitted(&self.queues, req).await?).await?,
        ))
    }

    async fn purge_queue(
        &self,
        req: Request<proto::PurgeQueueRequest>,
    ) -> Reply<proto::PurgeQueueResponse> {
        Ok(Response::new(
            purge_queue::handle(&self.queues, admitted(&self.queues, req).await?).await?,
        ))
    }

    async fn delete_queue(
        &self,
        req: Request<proto::DeleteQueueRequest>,
    ) -> Reply<proto::DeleteQueueResponse> {
        Ok(Response::new(
            delete_queue::handle(&self.queues, admitted(&self.queues, req).await?).await?,
        ))
    }

    async fn create_queue(
        &self,
        req: Request<proto::CreateQueueRequest>,
    ) -> Reply<proto::CreateQueueResponse> {
        let grant = crate::auth::grant_of(&req)?;
        Ok(Response::new(
            create_queue::handle(&self.queues, &grant, req.into_inner()).await?,
        ))
    }

    async fn create_push_subscription(
        &self,
        req: Request<proto::CreatePushSubscriptionRequest>,
    ) -> Reply<proto::PushSubscription> {
        let grant = crate::auth::grant_of(&req)?;
        let reply = push::create(&self.queues, &self.push_policy, &grant, req.into_inner());
        Ok(Response::new(reply.await?))
    }

    async fn get_push_subscription(
        &self,
        req: Request<proto::GetPushSubscriptionRequest>,
    ) -> Reply<proto::PushSubscription> {
        let grant = crate::auth::grant_of(&req)?;
        let reply = push::get(&self.queues, &grant, &req.get_ref().name).await?;
        Ok(Response::new(reply))
    }

    async fn list_push_subscriptions(
        &self,
        req: Request<proto::ListPushSubscriptionsRequest>,
    ) -> Reply<proto::ListPushSubscriptionsResponse> {
        let grant = crate::auth::grant_of(&req)?;
        Ok(Response::new(push::list(&self.queues, &grant).await?))
    }

    async fn update_push_subscription(
        &self,
        req: Request<proto::UpdatePushSubscriptionRequest>,
    ) -> Reply<proto::PushSubscription> {
        let grant = crate::auth::grant_of(&req)?;
        let reply = push::update(&self.queues, &self.push_policy, &grant, req.into_inner());
        Ok(Response::new(reply.await?))
    }

    async fn delete_push_subscription(
        &self,
        req: Request<proto::DeletePushSubscriptionRequest>,
    ) -> Reply<proto::DeletePushSubscriptionResponse> {
        let grant = crate::auth::grant_of(&req)?;
        push::delete(&self.queues, &grant, &req.get_ref().name).await?;
        Ok(Response::new(proto::DeletePushSubscriptionResponse {}))
    }
}
