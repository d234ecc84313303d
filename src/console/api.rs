//! The in-process Admin client. Every call is a `tonic::Request` carrying
//! the caller's grant in its extensions, exactly as
//! [`crate::layers::AuthLayer`] leaves it for gRPC, handed to the Admin
//! service through its generated trait; its answers become [`view`] models
//! here, at the console's edge.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Request, Status};

use super::view::{DeadLetterView, FailureView, GroupRow, Preview, QueueDetail};
use crate::auth::Grant;
use crate::proto;
use crate::proto::admin_server::Admin;

/// One queue as ListQueues reports it.
#[derive(Debug, Clone)]
pub struct Summary {
    pub name: String,
    pub paths: Vec<String>,
    pub depth: i64,
    pub dead_letters: i64,
}

/// Which dead letters to requeue.
#[derive(Debug, Clone)]
pub enum Selection {
    Ids(Vec<String>),
    All,
}

/// Admin calls on behalf of one caller.
pub struct Api<'a> {
    admin: &'a dyn Admin,
    grant: Arc<Grant>,
}

fn time(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let t = t?;
    if t.seconds <= 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.clamp(0, 999_999_999) as u32))
}

fn duration(d: Option<prost_types::Duration>) -> Option<Duration> {
    let d = d?;
    Some(Duration::new(
        d.seconds.max(0) as u64,
        d.nanos.clamp(0, 999_999_999) as u32,
    ))
}

impl<'a> Api<'a> {
    pub fn new(admin: &'a dyn Admin, grant: Arc<Grant>) -> Self {
        Api { admin, grant }
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.extensions_mut().insert(self.grant.clone());
        r
    }

    /// Every push subscription the caller may administer.
    pub async fn push_subscriptions(&self) -> Result<Vec<super::push::PushRow>, Status> {
        let all = self
            .admin
            .list_push_subscriptions(self.req(proto::ListPushSubscriptionsRequest::default()))
            .await?
            .into_inner();
        Ok(all
            .subscriptions
            .into_iter()
            .map(|p| {
                let c = p.counters.unwrap_or_default();
                super::push::PushRow {
                    state: match proto::PushState::try_from(p.state) {
                        Ok(proto::PushState::Active) => "active",
                        Ok(proto::PushState::Paused) => "paused",
                        Ok(proto::PushState::Disabled) => "disabled",
                        _ => "unknown",
                    },
                    name: p.name,
                    path: p.path,
                    endpoint: p.endpoint,
                    reason: p.state_reason,
                    delivered: c.delivered,
                    failed: c.failed,
                    dead_lettered: c.dead_lettered,
                }
            })
            .collect())
    }

    /// Every queue the caller's admin grant sees (ListQueues' pages, each
    /// the largest the server gives).
    pub async fn queues(&self) -> Result<Vec<Summary>, Status> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let r = self
                .admin
                .list_queues(self.req(proto::ListQueuesRequest {
                    page_size: crate::broker::limits::MAX_QUEUE_PAGE,
                    page_token,
                    ..Default::default()
                }))
                .await?
                .into_inner();
            out.extend(r.queues.into_iter().map(|q| Summary {
                name: q.queue,
                paths: q.paths,
                depth: q.length,
                dead_letters: q.dead_letters,
            }));
            if r.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = r.next_page_token;
        }
    }

    pub async fn queue(&self, name: &str) -> Result<QueueDetail, Status> {
        let q = self
            .admin
            .get_queue(self.req(proto::GetQueueRequest {
                path: name.into(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok(QueueDetail {
            name: q.queue,
            stream: q.stream,
            depth: q.length,
            dead_letters: q.dead_letters,
            scheduled: q.scheduled,
            delayed: q.delayed,
            expired: q.expired,
            dropped: q.dropped,
            created_at: time(q.created_at),
            groups: q
                .groups
                .into_iter()
                .map(|g| GroupRow {
                    name: g.name,
                    consumers: g.consumers,
                    pending: g.pending,
                    lag: (g.lag >= 0).then_some(g.lag),
                    oldest_unacked: duration(g.oldest_unacked_age),
                    retrying: g.retrying,
                    last_delivered_id: g.last_delivered_id,
                })
                .collect(),
        })
    }

    /// A page of dead letters and the token of the next (empty on the last).
    pub async fn dead_letters(
        &self,
        name: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<DeadLetterView>, String), Status> {
        let r = self
            .admin
            .list_dead_letters(self.req(proto::ListDeadLettersRequest {
                path: name.into(),
                page_size,
                page_token: page_token.into(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        let letters = r
            .dead_letters
            .into_iter()
            .map(|d| {
                let mut headers: Vec<(String, String)> = d.headers.into_iter().collect();
                headers.sort();
                DeadLetterView {
                    payload: Preview::of(&d.payload, &d.content_type),
                    size: d.payload.len(),
                    id: d.id,
                    original_id: d.original_message_id,
                    path: d.path,
                    content_type: d.content_type,
                    headers,
                    attempts: d.attempts,
                    last_reason: d.last_reason,
                    failures: d
                        .failures
                        .into_iter()
                        .map(|f| FailureView {
                            at: time(f.at),
                            reason: f.reason,
                            attempts: f.attempts,
                            group: f.group,
                        })
                        .collect(),
                    first_failed_at: time(d.first_failed_at),
                    last_failed_at: time(d.last_failed_at),
                }
            })
            .collect();
        Ok((letters, r.next_page_token))
    }

    /// Requeue; returns (requeued, missing).
    pub async fn requeue(&self, name: &str, sel: Selection) -> Result<(usize, usize), Status> {
        use proto::requeue_dead_letters_request::Selector;
        let selector = match sel {
            Selection::Ids(ids) => Selector::Ids(proto::DeadLetterIds { ids }),
            Selection::All => Selector::All(true),
        };
        let r = self
            .admin
            .requeue_dead_letters(self.req(proto::RequeueDeadLettersRequest {
                path: name.into(),
                selector: Some(selector),
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok((r.requeued.len(), r.missing.len()))
    }

    pub async fn delete(&self, name: &str, ids: Vec<String>) -> Result<i64, Status> {
        Ok(self
            .admin
            .delete_dead_letters(self.req(proto::DeleteDeadLettersRequest {
                path: name.into(),
                ids,
                ..Default::default()
            }))
            .await?
            .into_inner()
            .deleted)
    }

    pub async fn purge_dead_letters(&self, name: &str) -> Result<i64, Status> {
        Ok(self
            .admin
            .purge_dead_letters(self.req(proto::PurgeDeadLettersRequest {
                path: name.into(),
                ..Default::default()
            }))
            .await?
            .into_inner()
            .purged)
    }

    pub async fn purge_queue(&self, name: &str, confirm: &str) -> Result<i64, Status> {
        Ok(self
            .admin
            .purge_queue(self.req(proto::PurgeQueueRequest {
                path: name.into(),
                confirm: confirm.into(),
                ..Default::default()
            }))
            .await?
            .into_inner()
            .purged)
    }
}
