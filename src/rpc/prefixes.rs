//! Several key prefixes on one leanmqd (`--prefix webhook: --prefix mq:`).
//!
//! LeanMQ programs pick a key prefix per instance (`webhook:` for the
//! webhook API, `mq:` for the core API, anything in their own examples).
//! Each served prefix gets its own [`Broker`](crate::broker::Broker),
//! dispatcher and Broker/Admin service, exactly as a single-prefix leanmqd
//! has; this module is the one place that picks among them:
//! - a request's optional `prefix` field selects one (empty: the first,
//!   the default); a prefix not served is FAILED_PRECONDITION naming the
//!   served ones, and a token limited to other prefixes gets
//!   PERMISSION_DENIED ([`Grant::check_prefix`]);
//! - receipts of a non-default prefix carry it, as
//!   `base64url(prefix) "." receipt`, so Ack, Nack and Extend need no
//!   prefix field and any replica routes them. Default-prefix receipts are
//!   unchanged, so clients of a single-prefix leanmqd see nothing new.
//!
//! Every replica must serve the same prefixes with the same default.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures::StreamExt as _;
use tonic::{Request, Response, Status};

use super::admin::AdminService;
use super::{BrokerService, DeliveryStream};
use crate::auth::Grant;
use crate::broker::limits::MAX_ACK_RECEIPTS;
use crate::error::{Error, Result};
use crate::proto;

/// Longest accepted prefix, in bytes.
pub const MAX_PREFIX_BYTES: usize = 128;

/// Check a list of prefixes (`--prefix`, or a token's `prefixes`): each at
/// most [`MAX_PREFIX_BYTES`], without whitespace or control characters, no
/// repeats, and the empty prefix only first (an empty request field means
/// the default, so an empty prefix elsewhere could never be chosen).
pub fn validate(prefixes: &[String]) -> std::result::Result<(), String> {
    if prefixes.is_empty() {
        return Err("give at least one --prefix".into());
    }
    for (i, p) in prefixes.iter().enumerate() {
        if p.len() > MAX_PREFIX_BYTES {
            return Err(format!(
                "prefix {p:?} is {} bytes; the limit is {MAX_PREFIX_BYTES}",
                p.len()
            ));
        }
        if p.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "prefix {p:?} must not contain whitespace or control characters"
            ));
        }
        if p.is_empty() && i > 0 {
            return Err("the empty prefix can only be the first (the default)".into());
        }
        if prefixes[..i].contains(p) {
            return Err(format!("prefix {p:?} is given twice"));
        }
    }
    Ok(())
}

/// One `T` per served prefix, the default first.
pub struct Served<T> {
    entries: Vec<(String, T)>,
}

impl<T> Served<T> {
    /// `entries` must be non-empty and validated (see [`validate`]).
    pub fn new(entries: Vec<(String, T)>) -> Self {
        Served { entries }
    }

    fn default_entry(&self) -> Result<&(String, T)> {
        self.entries
            .first()
            .ok_or_else(|| Error::Internal("no prefix served".into()))
    }

    fn served_list(&self) -> String {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, (p, _))| {
                if i == 0 {
                    format!("{p:?} (the default)")
                } else {
                    format!("{p:?}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The entry a request's `prefix` field names ("" for the default),
    /// once `grant` may use it; with its index (0 is the default).
    pub fn select(&self, requested: &str, grant: &Grant) -> Result<(usize, &str, &T)> {
        if requested.len() > MAX_PREFIX_BYTES {
            return Err(Error::invalid(format!(
                "prefix is {} bytes; the limit is {MAX_PREFIX_BYTES}",
                requested.len()
            )));
        }
        let found = if requested.is_empty() {
            Some((0, self.default_entry()?))
        } else {
            self.entries
                .iter()
                .enumerate()
                .find(|(_, (p, _))| p == requested)
        };
        let Some((i, (p, t))) = found else {
            return Err(Error::FailedPrecondition(format!(
                "prefix {requested:?} is not served by this leanmqd; it serves {} (start it with --prefix {requested:?} to add it)",
                self.served_list()
            )));
        };
        grant.check_prefix(p)?;
        Ok((i, p, t))
    }

    /// The entry a receipt belongs to, and the broker's own receipt inside.
    pub fn select_receipt<'r>(
        &self,
        token: &'r str,
        grant: &Grant,
    ) -> Result<(usize, &str, &T, &'r str)> {
        let (prefix, inner) = split_receipt(token)?;
        match prefix {
            None => {
                let (p, t) = self.default_entry()?;
                grant.check_prefix(p)?;
                Ok((0, p, t, inner))
            }
            Some(prefix) => {
                if prefix.is_empty() {
                    return Err(Error::invalid("malformed receipt: empty prefix"));
                }
                let (i, p, t) = self.select(&prefix, grant)?;
                Ok((i, p, t, inner))
            }
        }
    }
}

/// The receipt a client gets for a delivery under the `index`-th prefix.
pub fn wrap_receipt(index: usize, prefix: &str, receipt: String) -> String {
    if index == 0 {
        receipt
    } else {
        format!("{}.{receipt}", URL_SAFE_NO_PAD.encode(prefix))
    }
}

/// A client's receipt → (its prefix, `None` for the default; the broker's receipt).
fn split_receipt(token: &str) -> Result<(Option<String>, &str)> {
    let Some((p, inner)) = token.split_once('.') else {
        return Ok((None, token));
    };
    let bad = || Error::invalid("malformed receipt: bad prefix part");
    if p.len() > MAX_PREFIX_BYTES * 2 {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(p).map_err(|_| bad())?;
    let prefix = String::from_utf8(raw).map_err(|_| bad())?;
    Ok((Some(prefix), inner))
}

fn grant<T>(req: &Request<T>) -> Result<Arc<Grant>> {
    crate::auth::grant_of(req)
}

/// The `leanmq.v1.Broker` service over every served prefix.
pub struct MultiBroker {
    served: Arc<Served<BrokerService>>,
}

impl MultiBroker {
    pub fn new(served: Served<BrokerService>) -> Self {
        MultiBroker {
            served: Arc::new(served),
        }
    }

    /// Send for an edge other than gRPC (the HTTP ingress, `crate::http`):
    /// the same prefix selection and handler as the RPC, its error kept
    /// as the domain [`Error`] for the edge to map.
    pub async fn send_as(
        &self,
        caller: &super::Caller,
        req: proto::SendRequest,
    ) -> Result<proto::SendResponse> {
        let (_, _, svc) = self.served.select(&req.prefix, &caller.grant)?;
        super::send::handle(svc, caller, req).await
    }

    /// SendBatch for an edge other than gRPC, as [`MultiBroker::send_as`].
    pub async fn send_batch_as(
        &self,
        caller: &super::Caller,
        req: proto::SendBatchRequest,
    ) -> Result<proto::SendBatchResponse> {
        let prefix = batch_prefix(&req.messages)?;
        let (_, _, svc) = self.served.select(prefix, &caller.grant)?;
        super::send_batch::handle(svc, caller, req).await
    }
}

/// The one prefix of a batch's messages (a batch is atomic within one).
fn batch_prefix(msgs: &[proto::SendRequest]) -> Result<&str> {
    let prefix = msgs.first().map(|m| m.prefix.as_str()).unwrap_or("");
    if let Some(i) = msgs.iter().position(|m| m.prefix != prefix) {
        return Err(Error::invalid(format!(
            "messages[{i}]: prefix {:?} differs from messages[0]'s {prefix:?}; a batch is atomic within one prefix, send one batch per prefix",
            msgs[i].prefix
        )));
    }
    Ok(prefix)
}

fn wrap_delivery(i: usize, prefix: &str, mut d: proto::Delivery) -> proto::Delivery {
    d.receipt = wrap_receipt(i, prefix, std::mem::take(&mut d.receipt));
    d
}

#[tonic::async_trait]
impl proto::broker_server::Broker for MultiBroker {
    async fn send(
        &self,
        req: Request<proto::SendRequest>,
    ) -> std::result::Result<Response<proto::SendResponse>, Status> {
        let (_, _, svc) = self.served.select(&req.get_ref().prefix, &*grant(&req)?)?;
        proto::broker_server::Broker::send(svc, req).await
    }

    async fn send_batch(
        &self,
        req: Request<proto::SendBatchRequest>,
    ) -> std::result::Result<Response<proto::SendBatchResponse>, Status> {
        let prefix = batch_prefix(&req.get_ref().messages)?;
        let (_, _, svc) = self.served.select(prefix, &*grant(&req)?)?;
        proto::broker_server::Broker::send_batch(svc, req).await
    }

    type PublishStream = super::publish::PublishStream;

    /// Each message picks its own prefix, as a Send does.
    async fn publish(
        &self,
        req: Request<tonic::Streaming<proto::PublishRequest>>,
    ) -> std::result::Result<Response<Self::PublishStream>, Status> {
        let caller = Arc::new(super::Caller::of(&req)?);
        let (_, first) = self.served.default_entry()?;
        let window = first.settings.publish_window;
        let served = self.served.clone();
        Ok(super::publish::handle(
            window,
            first.queues.drain(),
            req.into_inner(),
            move |m| {
                let (served, caller) = (served.clone(), caller.clone());
                async move {
                    let (_, _, svc) = served.select(&m.prefix, &caller.grant)?;
                    super::send::handle(svc, &caller, m).await
                }
            },
        ))
    }

    type SubscribeStream = DeliveryStream;

    async fn subscribe(
        &self,
        req: Request<proto::SubscribeRequest>,
    ) -> std::result::Result<Response<Self::SubscribeStream>, Status> {
        let (i, prefix, svc) = self.served.select(&req.get_ref().prefix, &*grant(&req)?)?;
        let stream = proto::broker_server::Broker::subscribe(svc, req)
            .await?
            .into_inner();
        if i == 0 {
            return Ok(Response::new(stream));
        }
        let prefix = prefix.to_string();
        Ok(Response::new(Box::pin(stream.map(move |item| {
            item.map(|d| wrap_delivery(i, &prefix, d))
        }))))
    }

    async fn receive(
        &self,
        req: Request<proto::ReceiveRequest>,
    ) -> std::result::Result<Response<proto::ReceiveResponse>, Status> {
        let (i, prefix, svc) = self.served.select(&req.get_ref().prefix, &*grant(&req)?)?;
        let mut resp = proto::broker_server::Broker::receive(svc, req).await?;
        let r = resp.get_mut();
        r.deliveries = std::mem::take(&mut r.deliveries)
            .into_iter()
            .map(|d| wrap_delivery(i, prefix, d))
            .collect();
        Ok(resp)
    }

    async fn ack(
        &self,
        req: Request<proto::AckRequest>,
    ) -> std::result::Result<Response<proto::AckResponse>, Status> {
        let n = req.get_ref().receipts.len();
        if n == 0 || n > MAX_ACK_RECEIPTS {
            // The broker's own edge refuses it, with its message.
            let (_, _, svc) = self.served.select("", &*grant(&req)?)?;
            return proto::broker_server::Broker::ack(svc, req).await;
        }
        let g = grant(&req)?;
        let (meta, ext, msg) = req.into_parts();
        // Receipts by prefix, in request order; one inner Ack per prefix.
        let mut groups: Vec<(usize, &BrokerService, Vec<usize>, Vec<String>)> = Vec::new();
        for (k, token) in msg.receipts.iter().enumerate() {
            let (i, _, svc, inner) =
                self.served.select_receipt(token, &g).map_err(|e| match e {
                    Error::InvalidArgument(m) => Error::invalid(format!("receipts[{k}]: {m}")),
                    other => other,
                })?;
            match groups.iter_mut().find(|(gi, ..)| *gi == i) {
                Some((_, _, idx, inners)) => {
                    idx.push(k);
                    inners.push(inner.to_string());
                }
                None => groups.push((i, svc, vec![k], vec![inner.to_string()])),
            }
        }
        let mut results: Vec<Option<proto::AckResult>> = vec![None; n];
        for (_, svc, idx, inners) in groups {
            let sub = Request::from_parts(
                meta.clone(),
                ext.clone(),
                proto::AckRequest { receipts: inners },
            );
            let resp = proto::broker_server::Broker::ack(svc, sub)
                .await?
                .into_inner();
            if resp.results.len() != idx.len() {
                return Err(Error::Internal("ack answered a different count".into()).into());
            }
            for (k, mut r) in idx.into_iter().zip(resp.results) {
                r.receipt = msg.receipts[k].clone();
                results[k] = Some(r);
            }
        }
        Ok(Response::new(proto::AckResponse {
            results: results.into_iter().flatten().collect(),
        }))
    }

    async fn nack(
        &self,
        req: Request<proto::NackRequest>,
    ) -> std::result::Result<Response<proto::NackResponse>, Status> {
        let g = grant(&req)?;
        let (meta, ext, mut msg) = req.into_parts();
        let (_, _, svc, inner) = self.served.select_receipt(&msg.receipt, &g)?;
        msg.receipt = inner.to_string();
        proto::broker_server::Broker::nack(svc, Request::from_parts(meta, ext, msg)).await
    }

    async fn extend(
        &self,
        req: Request<proto::ExtendRequest>,
    ) -> std::result::Result<Response<proto::ExtendResponse>, Status> {
        let g = grant(&req)?;
        let (meta, ext, mut msg) = req.into_parts();
        let (_, _, svc, inner) = self.served.select_receipt(&msg.receipt, &g)?;
        msg.receipt = inner.to_string();
        proto::broker_server::Broker::extend(svc, Request::from_parts(meta, ext, msg)).await
    }
}

/// The `leanmq.v1.Admin` service over every served prefix.
pub struct MultiAdmin {
    served: Served<AdminService>,
}

impl MultiAdmin {
    pub fn new(served: Served<AdminService>) -> Self {
        MultiAdmin { served }
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

/// Each Admin RPC: select by the request's `prefix`, then delegate.
macro_rules! admin_rpcs {
    ($($name:ident: $req:ty => $resp:ty;)*) => {
        #[tonic::async_trait]
        impl proto::admin_server::Admin for MultiAdmin {
            $(
                async fn $name(&self, req: Request<$req>) -> Reply<$resp> {
                    let (_, _, svc) = self.served.select(&req.get_ref().prefix, &*grant(&req)?)?;
                    proto::admin_server::Admin::$name(svc, req).await
                }
            )*
        }
    };
}

admin_rpcs! {
    list_queues: proto::ListQueuesRequest => proto::ListQueuesResponse;
    get_queue: proto::GetQueueRequest => proto::QueueInfo;
    list_dead_letters: proto::ListDeadLettersRequest => proto::ListDeadLettersResponse;
    requeue_dead_letters: proto::RequeueDeadLettersRequest => proto::RequeueDeadLettersResponse;
    delete_dead_letters: proto::DeleteDeadLettersRequest => proto::DeleteDeadLettersResponse;
    purge_dead_letters: proto::PurgeDeadLettersRequest => proto::PurgeDeadLettersResponse;
    purge_queue: proto::PurgeQueueRequest => proto::PurgeQueueResponse;
    delete_queue: proto::DeleteQueueRequest => proto::DeleteQueueResponse;
    create_queue: proto::CreateQueueRequest => proto::CreateQueueResponse;
    create_push_subscription: proto::CreatePushSubscriptionRequest => proto::PushSubscription;
    get_push_subscription: proto::GetPushSubscriptionRequest => proto::PushSubscription;
    list_push_subscriptions: proto::ListPushSubscriptionsRequest => proto::ListPushSubscriptionsResponse;
    update_push_subscription: proto::UpdatePushSubscriptionRequest => proto::PushSubscription;
    delete_push_subscription: proto::DeletePushSubscriptionRequest => proto::DeletePushSubscriptionResponse;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_prefix_lists() {
        let v = |l: &[&str]| validate(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(v(&["webhook:", "mq:", "calc:"]).is_ok());
        assert!(v(&["", "mq:"]).is_ok());
        assert!(v(&[]).is_err());
        assert!(v(&["mq:", "mq:"]).is_err());
        assert!(v(&["mq:", ""]).is_err());
        assert!(v(&["a b"]).is_err());
        assert!(v(&[&"x".repeat(MAX_PREFIX_BYTES + 1)]).is_err());
    }

    #[test]
    fn receipts_carry_non_default_prefixes() {
        assert_eq!(wrap_receipt(0, "webhook:", "abc".into()), "abc");
        let t = wrap_receipt(1, "calc:", "abc".into());
        let (p, inner) = split_receipt(&t).expect("splits");
        assert_eq!(p.as_deref(), Some("calc:"));
        assert_eq!(inner, "abc");
        assert!(matches!(
            split_receipt("!!.abc"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn selects_served_prefixes_only() {
        let s = Served::new(vec![("webhook:".to_string(), 1), ("mq:".to_string(), 2)]);
        let g = Grant::everything();
        assert_eq!(s.select("", &g).map(|(_, _, t)| *t).ok(), Some(1));
        assert_eq!(s.select("mq:", &g).map(|(_, _, t)| *t).ok(), Some(2));
        match s.select("calc:", &g) {
            Err(Error::FailedPrecondition(m)) => {
                assert!(m.contains("\"webhook:\" (the default), \"mq:\""), "{m}")
            }
            other => panic!("{:?}", other.map(|(i, ..)| i)),
        }
        assert!(matches!(
            s.select(&"x".repeat(MAX_PREFIX_BYTES + 1), &g),
            Err(Error::InvalidArgument(_))
        ));
    }
}
