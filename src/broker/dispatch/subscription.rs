//! A local subscriber's end of the fan-out.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::ledger::{lock, Credit, Item};
use super::reader::Reader;
use crate::broker::{Broker, Delivery};
use crate::error::Error;
use crate::shutdown::Drain;

/// Where a subscription is registered: (reader, subscriber id) pairs. One
/// for a path; one per matching queue for a pattern (grows as queues appear).
pub(super) type Registrations = Arc<RegList>;
pub(super) type RegList = Mutex<Vec<(Arc<Reader>, u64)>>;

/// Deliveries arrive here. Dropping it unsubscribes and gives back what it
/// never received.
pub struct Subscription {
    pub(super) rx: mpsc::Receiver<Item>,
    pub(super) regs: Registrations,
    /// Its credit, whose byte budget counts what waits in `rx`.
    pub(super) credit: Arc<Credit>,
    pub(super) broker: Arc<Broker>,
    pub(super) drain: Drain,
    pub(super) done: bool,
}

impl Subscription {
    /// The next delivery; `Err(ShuttingDown)` once when leanmqd drains, then `None`.
    pub async fn next(&mut self) -> Option<Item> {
        if self.done {
            return None;
        }
        let item = tokio::select! {
            biased;
            _ = self.drain.draining() => None,
            item = self.rx.recv() => item,
        };
        match item {
            Some(Ok(d)) => {
                self.credit.taken(d.wire_size());
                Some(Ok(d))
            }
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            None => {
                self.done = true;
                Some(Err(Error::ShuttingDown))
            }
        }
    }

    /// Stop receiving, and return what had already arrived (for Receive).
    pub(super) fn close(&mut self) -> Vec<Delivery> {
        for (reader, id) in lock(&self.regs).iter() {
            reader.leave(*id);
        }
        self.rx.close();
        let mut out = Vec::new();
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(d) = item {
                self.credit.taken(d.wire_size());
                out.push(*d);
            }
        }
        self.done = true;
        out
    }
}

impl Drop for Subscription {
    /// Give back, in a tracked task, what arrived but was never received.
    fn drop(&mut self) {
        let undelivered = self.close();
        let regs: Vec<(Arc<Reader>, u64)> = std::mem::take(&mut *lock(&self.regs));
        if undelivered.is_empty() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let broker = self.broker.clone();
        self.drain.spawn(async move {
            for (reader, _) in regs {
                let pairs: Vec<(String, u32)> = undelivered
                    .iter()
                    .filter(|d| reader.holds_delivery(d))
                    .map(|d| (d.message_id.clone(), d.attempt))
                    .collect();
                if pairs.is_empty() {
                    continue;
                }
                if let Err(e) = broker.release(&reader.target, &pairs).await {
                    tracing::warn!(error = %e, n = pairs.len(), "could not release undelivered messages; they are redelivered when their lease ends");
                }
                reader.wake_due();
            }
        });
    }
}
