//! The gRPC edge: one thin `impl` of the generated `Broker` trait that
//! delegates each RPC to its own file. Each handler converts protobuf to
//! domain values (`convert`), makes one call into the domain façade
//! ([`Queues`]), and converts back; errors become statuses only through
//! `impl From<Error> for Status`.

mod ack;
pub mod admin;
pub mod convert;
mod extend;
mod long_poll;
mod nack;
pub mod prefixes;
mod publish;
mod receive;
mod send;
mod send_batch;
mod subscribe;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::auth::Grant;
use crate::broker::receipt::KeySource;
use crate::proto;
use crate::queues::Queues;

/// Edge settings: limits and defaults applied while validating requests.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub max_payload_bytes: usize,
    pub max_headers_bytes: usize,
    pub max_streams_per_connection: usize,
    pub max_subscriptions: usize,
    pub max_batch: usize,
    /// Most unanswered messages on one Publish stream (`--publish-window`).
    pub publish_window: usize,
    /// Lease when a request gives none.
    pub default_lease: Duration,
    /// Most bytes of deliveries in one Receive reply: under the gRPC
    /// message limit, so a reply is never refused after leasing.
    pub max_reply_bytes: usize,
    /// Waiting Receives per client connection and per token (`long_poll`).
    pub max_long_polls_per_connection: usize,
    pub max_long_polls_per_token: usize,
    /// `--max-concurrent-rpcs`, shared with the shed layer: a Receive that
    /// does not wait takes its place here.
    pub unary: crate::layers::UnaryBudget,
}

/// The `leanmq.v1.Broker` service.
pub struct BrokerService {
    queues: Arc<Queues>,
    settings: EdgeSettings,
    /// Open Subscribe streams, in all and per client connection, for
    /// `--max-subscriptions` and `--max-streams-per-connection`.
    streams: Arc<subscribe::StreamCounts>,
    /// The keys that sign the receipts handed out and check those given back.
    receipts: Arc<KeySource>,
    /// Waiting Receives, per connection and per token (shared by every prefix).
    long_polls: Arc<long_poll::LongPolls>,
}

impl BrokerService {
    pub fn new(queues: Arc<Queues>, settings: EdgeSettings, receipts: Arc<KeySource>) -> Self {
        let long_polls = long_poll::LongPolls::new(
            settings.max_long_polls_per_connection,
            settings.max_long_polls_per_token,
        );
        BrokerService {
            queues,
            settings,
            streams: Arc::default(),
            receipts,
            long_polls,
        }
    }

    /// The service of another prefix's façade: same settings, and the
    /// same stream counts, so the limits hold across prefixes.
    pub fn sibling(&self, queues: Arc<Queues>) -> Self {
        BrokerService {
            queues,
            settings: self.settings.clone(),
            streams: self.streams.clone(),
            receipts: self.receipts.clone(),
            long_polls: self.long_polls.clone(),
        }
    }
}

/// Who is calling, taken from the request before its body is used.
pub struct Caller {
    /// What the caller's token may do (everything while auth is off).
    pub grant: Arc<Grant>,
    /// The client connection's address: one per HTTP/2 connection.
    pub conn: Option<SocketAddr>,
    /// W3C trace context of the call, carried into the messages it sends.
    pub traceparent: Option<String>,
}

impl Caller {
    fn of<T>(req: &Request<T>) -> Result<Caller, Status> {
        let traceparent = req
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_traceparent(v))
            .map(str::to_string);
        Ok(Caller {
            grant: crate::auth::grant_of(req)?,
            conn: req.remote_addr(),
            traceparent,
        })
    }
}

/// A well-formed W3C `traceparent` (version-traceid-parentid-flags).
pub(crate) fn is_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub type DeliveryStream =
    Pin<Box<dyn futures::Stream<Item = Result<proto::Delivery, Status>> + Send>>;

#[tonic::async_trait]
impl proto::broker_server::Broker for BrokerService {
    async fn send(
        &self,
        req: Request<proto::SendRequest>,
    ) -> Result<Response<proto::SendResponse>, Status> {
        Ok(Response::new(
            send::handle(self, &Caller::of(&req)?, req.into_inner()).await?,
        ))
    }

    async fn send_batch(
        &self,
        req: Request<proto::SendBatchRequest>,
    ) -> Result<Response<proto::SendBatchResponse>, Status> {
        Ok(Response::new(
            send_batch::handle(self, &Caller::of(&req)?, req.into_inner()).await?,
        ))
    }

    type PublishStream = publish::PublishStream;

    async fn publish(
        &self,
        req: Request<tonic::Streaming<proto::PublishRequest>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let caller = Arc::new(Caller::of(&req)?);
        let svc = Arc::new(self.sibling(self.queues.clone()));
        let window = self.settings.publish_window;
        Ok(publish::handle(
            window,
            self.queues.drain(),
            req.into_inner(),
            move |m| {
                let (svc, caller) = (svc.clone(), caller.clone());
                async move { send::handle(&svc, &caller, m).await }
            },
        ))
    }

    type SubscribeStream = DeliveryStream;

    async fn subscribe(
        &self,
        req: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Ok(Response::new(
            subscribe::handle(self, &Caller::of(&req)?, req.into_inner()).await?,
        ))
    }

    async fn receive(
        &self,
        req: Request<proto::ReceiveRequest>,
    ) -> Result<Response<proto::ReceiveResponse>, Status> {
        Ok(Response::new(
            receive::handle(self, &Caller::of(&req)?, req.into_inner()).await?,
        ))
    }

    async fn ack(
        &self,
        req: Request<proto::AckRequest>,
    ) -> Result<Response<proto::AckResponse>, Status> {
        Ok(Response::new(
            ack::handle(self, &Caller::of(&req)?, req.into_inner()).await?,
        ))
    }

    async fn nack(
        &self,
        req: Request<proto::NackRequest>,
    ) -> Result<Response<proto::NackResponse>, Status> {
        Ok(Response::new(
            nack::handle(self, &Caller::of(&req)?, req.into_inner()).await?,
        ))
    }

    async fn extend(
        &self,
        req: Request<proto::ExtendRequest>,
    ) -> Result<Response<proto::ExtendResponse>, Status> {
        Ok(Response::new(
            extend::handle(self, &Caller::of(&req)?, req.into_inner()).await?,
        ))
    }
}
