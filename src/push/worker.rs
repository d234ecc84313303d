//! The replica's push runner (one per served prefix): every `poll` it reads
//! the subscriptions from Redis, starts a consumer for each ACTIVE one it
//! does not run, and stops those paused, disabled, deleted or changed (a
//! changed one restarts with its new spec). Each consumer reads its group
//! through a Subscribe-like subscription of at most `max_in_flight`
//! unsettled deliveries and POSTs each in its own tracked task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::deliver::{deliver, Ctx};
use super::ssrf::{Policy, Resolver};
use super::{signature, store, Spec, State};
use crate::error::{Error, Result};
use crate::queues::{Queues, Source};
use crate::shutdown::Drain;

/// Margin of a push's lease beyond its timeout (reading the body, settling).
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// Pause before a consumer whose subscription failed tries again.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// How often the backlog gauge is sampled.
const BACKLOG_EVERY: Duration = Duration::from_secs(15);

pub struct Runner {
    pub queues: Arc<Queues>,
    pub policy: Arc<Policy>,
    pub poll: Duration,
    pub drain: Drain,
}

/// A running consumer: its spec (to see changes) and its stop.
struct Running {
    spec: Spec,
    stop: CancellationToken,
}

impl Runner {
    /// Run until the drain; every consumer stops with it.
    pub async fn run(self) {
        let mut running: HashMap<String, Running> = HashMap::new();
        let mut sampled = tokio::time::Instant::now();
        loop {
            match store::list(self.queues.broker()).await {
                Ok(records) => self.sync(&mut running, records),
                Err(e) => {
                    tracing::warn!(error = %e, "push subscriptions not read; keeping those running")
                }
            }
            crate::observe::push_running(running.len());
            if sampled.elapsed() >= BACKLOG_EVERY {
                sampled = tokio::time::Instant::now();
                self.sample_backlog(&running).await;
            }
            tokio::select! {
                _ = self.drain.draining() => break,
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
        for (_, r) in running.drain() {
            r.stop.cancel();
        }
    }

    /// `leanmq_push_backlog` of each running path subscription.
    async fn sample_backlog(&self, running: &HashMap<String, Running>) {
        for (name, r) in running {
            let Ok(route) = crate::routing::address(&r.spec.path, "") else {
                continue; // a pattern: many queues, no one backlog
            };
            if let Ok(info) = self.queues.get_queue(&route.queue).await {
                if let Some(g) = info.groups.iter().find(|g| g.name == r.spec.group) {
                    crate::observe::push_backlog(name, g.lag.max(0) + g.pending);
                }
            }
        }
    }

    fn sync(&self, running: &mut HashMap<String, Running>, records: Vec<super::Record>) {
        let wanted: HashMap<String, Spec> = records
            .into_iter()
            .filter(|r| r.state == State::Active)
            .map(|r| (r.spec.name.clone(), r.spec))
            .collect();
        running.retain(|name, r| {
            let keep = wanted.get(name) == Some(&r.spec) && !r.stop.is_cancelled();
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for (name, spec) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            let stop = CancellationToken::new();
            let consumer = Consumer {
                queues: self.queues.clone(),
                policy: self.policy.clone(),
                spec: spec.clone(),
                stop: stop.clone(),
                drain: self.drain.clone(),
            };
            self.drain.spawn(consumer.run());
            tracing::info!(subscription = %name, "push consumer started");
            running.insert(name, Running { spec, stop });
        }
    }
}

/// One subscription's consumer on this replica.
struct Consumer {
    queues: Arc<Queues>,
    policy: Arc<Policy>,
    spec: Spec,
    stop: CancellationToken,
    drain: Drain,
}

impl Consumer {
    async fn run(self) {
        let ctx = match self.context() {
            Ok(ctx) => Arc::new(ctx),
            Err(e) => {
                tracing::error!(subscription = %self.spec.name, error = %e, "push subscription cannot run");
                return;
            }
        };
        while !self.stop.is_cancelled() && !self.drain.is_draining() {
            if let Err(e) = self.consume(&ctx).await {
                tracing::warn!(subscription = %self.spec.name, error = %e, "push consumer interrupted; resubscribing");
            }
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = self.drain.draining() => break,
                _ = tokio::time::sleep(RESUBSCRIBE) => {}
            }
        }
        tracing::info!(subscription = %self.spec.name, "push consumer stopped");
    }

    fn context(&self) -> Result<Ctx> {
        let url = self
            .policy
            .check_url(&self.spec.endpoint)
            .map_err(|e| Error::invalid(format!("endpoint {e}")))?;
        let keys = self
            .spec
            .secrets
            .iter()
            .map(|s| signature::key(s).map_err(|e| Error::invalid(format!("secret {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(Resolver {
                policy: self.policy.clone(),
            }))
            .timeout(self.spec.timeout())
            .connect_timeout(self.spec.timeout())
            .pool_max_idle_per_host(self.spec.max_in_flight as usize)
            .user_agent(concat!("leanmqd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("push client: {e}")))?;
        Ok(Ctx {
            queues: self.queues.clone(),
            spec: self.spec.clone(),
            keys,
            url,
            client,
            stop: self.stop.clone(),
        })
    }

    /// Subscribe and push until stopped or the subscription ends.
    async fn consume(&self, ctx: &Arc<Ctx>) -> Result<()> {
        let source = match crate::routing::Pattern::parse(&self.spec.path)? {
            Some(pattern) => Source::Pattern {
                pattern,
                group: Some(self.spec.group.clone()),
            },
            None => Source::Path(crate::broker::Target {
                route: crate::routing::address(&self.spec.path, "")?,
                group: self.spec.group.clone(),
            }),
        };
        let lease = self.spec.timeout() + LEASE_MARGIN;
        let mut sub = self
            .queues
            .subscribe(
                source,
                self.spec.start.clone(),
                self.spec.max_in_flight,
                lease,
                None,
            )
            .await?;
        loop {
            let item = tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                item = sub.next() => item,
            };
            match item {
                Some(Ok(d)) => {
                    self.drain.spawn(deliver(ctx.clone(), *d));
                }
                Some(Err(Error::ShuttingDown)) | None => return Ok(()),
                Some(Err(e)) => return Err(e),
            }
        }
    }
}
