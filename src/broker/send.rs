//! Appending messages: plain ones to an existing queue in one MULTI/EXEC,
//! everything else through `send.lua`; both all-or-none.

use std::time::Duration;

use super::scripts::{self, bad_reply, Appended, SendItem};
use super::{envelope, Broker, Creator, Outgoing, Sent};
use crate::error::{Error, Result};
use crate::routing::QueueKeys;

/// A batch ready to append: each message's envelope and queue.
struct Encoded<'a> {
    /// The batch's distinct queues, in first-seen order.
    queues: Vec<&'a str>,
    /// Per message: 1-based index into `queues`, and its `data` envelope.
    per_msg: Vec<(usize, String)>,
    /// The envelope's timestamp, shared by the batch.
    now: String,
}

fn encode(msgs: &[Outgoing]) -> Result<Encoded<'_>> {
    let now = envelope::timestamp_text(envelope::now_secs());
    let mut queues: Vec<&str> = Vec::new();
    let mut per_msg = Vec::with_capacity(msgs.len());
    for m in msgs {
        let qi = match queues.iter().position(|q| *q == m.route.queue) {
            Some(i) => i,
            None => {
                queues.push(&m.route.queue);
                queues.len() - 1
            }
        };
        let ttl_secs = m.ttl.map(|t| t.as_secs() + u64::from(t.subsec_nanos() > 0));
        let data = envelope::encode_at(
            &m.route.path,
            &m.payload,
            &m.content_type,
            &m.headers,
            ttl_secs,
            &now,
        )?;
        per_msg.push((qi + 1, data));
    }
    Ok(Encoded {
        queues,
        per_msg,
        now,
    })
}

/// A delay that defers the message (zero means now).
fn deferred(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

impl Broker {
    /// Append messages atomically (all or none), honouring TTL, delay and
    /// idempotency keys; one result per message, in order.
    pub async fn send(&self, msgs: &[Outgoing]) -> Result<Vec<Sent>> {
        let enc = encode(msgs)?;
        let cluster = self.redis.is_cluster();
        if cluster && enc.queues.len() > 1 {
            return Err(Error::FailedPrecondition(
                "with Redis Cluster a SendBatch is atomic within one queue only, and this one spans several paths' queues; send one batch per path".into(),
            ));
        }
        let first = self.keys(enc.queues.first().copied().unwrap_or_default());
        let creator = msgs.iter().find_map(|m| m.creator.as_ref());
        if cluster {
            self.register(&first, creator).await?;
        } else if enc.queues.len() == 1 && msgs.iter().all(Outgoing::is_plain) && self.owns(msgs) {
            match self.append_plain(&first, msgs, &enc.per_msg).await {
                Ok(Some(sent)) => return Ok(sent),
                // The queue doesn't exist yet: the script creates it.
                Ok(None) => {}
                Err(e) if e.is_transient() => return Err(e),
                // Nothing was written (say, the key is not a stream): the
                // script checks and reports it precisely.
                Err(_) => {}
            }
        }
        let sent = self.send_scripted(&first, msgs, &enc, creator).await?;
        if !self.settings.allow_colliding_paths {
            // The script refused every path but the owner: remember it, so
            // the next plain send to this queue needs no script.
            for m in msgs.iter().filter(|m| !m.route.path.is_empty()) {
                self.owners.put(&m.route.queue, &m.route.path);
            }
        }
        if cluster {
            self.schedule_earliest(&first, msgs).await?;
        }
        Ok(sent)
    }

    /// May these messages (to one queue) skip `send.lua`'s owner check? Yes
    /// when their paths are the queue's owner as last seen (`owners`), or
    /// when any spelling may use any queue.
    fn owns(&self, msgs: &[Outgoing]) -> bool {
        self.settings.allow_colliding_paths
            || msgs.iter().all(|m| {
                m.route.path.is_empty()
                    || self.owners.get(&m.route.queue).as_deref() == Some(m.route.path.as_str())
            })
    }

    /// The general case: `send.lua`.
    async fn send_scripted(
        &self,
        first: &QueueKeys,
        msgs: &[Outgoing],
        enc: &Encoded<'_>,
        creator: Option<&Creator>,
    ) -> Result<Vec<Sent>> {
        let owner_key = creator.map(|c| self.owner_key(c)).unwrap_or_default();
        let keys: Vec<_> = enc.queues.iter().map(|q| self.keys(q)).collect();
        let items = msgs
            .iter()
            .zip(&enc.per_msg)
            .map(|(m, (qi, data))| SendItem {
                queue: *qi,
                data,
                ttl_ms: m.ttl.map(|d| d.as_millis()),
                delay_ms: deferred(m.delay).map(|d| d.as_millis()),
                idempotency_key: m.idempotency_key.as_deref().unwrap_or(""),
                path: &m.route.path,
                ordering_key: m.ordering_key.as_deref().unwrap_or(""),
            })
            .collect();
        let flat = self
            .run_durable(
                scripts::Send {
                    registry: self.global(first, &first.registry),
                    schedule: self.global(first, &first.schedule),
                    queues: keys.iter().map(|k| k.as_ref()).collect(),
                    created_at: &enc.now,
                    dedup_window_ms: self.settings.dedup_window.as_millis() as u64,
                    admission: self.admission(creator, &owner_key),
                    allow_colliding: self.settings.allow_colliding_paths,
                    items,
                },
                &first.stream,
                self.replicas_for_send(msgs),
            )
            .await?;
        if flat.len() != msgs.len() {
            return Err(bad_reply("send"));
        }
        for (qi, q) in enc.queues.iter().enumerate() {
            let n = enc
                .per_msg
                .iter()
                .zip(&flat)
                .filter(|((i, _), (_, dup))| *i == qi + 1 && !*dup)
                .count();
            crate::observe::sent(q, n as u64);
        }
        Ok(flat
            .into_iter()
            .map(|(a, duplicate)| match a {
                Appended::Entry(message_id) => Sent {
                    message_id,
                    schedule_id: String::new(),
                    duplicate,
                },
                Appended::Scheduled(schedule_id) => Sent {
                    message_id: String::new(),
                    schedule_id,
                    duplicate,
                },
            })
            .collect())
    }

    /// Redis Cluster only: schedule the earliest delayed message, since
    /// `send.lua` cannot reach the schedule there. Our clock may run ahead
    /// of Redis': aim a second early; a promote that finds nothing due yet
    /// sets the exact time.
    async fn schedule_earliest(&self, first: &QueueKeys, msgs: &[Outgoing]) -> Result<()> {
        let Some(d) = msgs.iter().filter_map(|m| deferred(m.delay)).min() else {
            return Ok(());
        };
        let due = ((envelope::now_secs() * 1000.0) as u64)
            .saturating_add(d.as_millis() as u64)
            .saturating_sub(1000);
        let _: i64 = self
            .query(
                ::redis::cmd("ZADD")
                    .arg(&first.schedule)
                    .arg("LT")
                    .arg(due)
                    .arg(&first.queue),
            )
            .await?;
        Ok(())
    }

    /// The common case without a script: plain messages (no TTL, delay or
    /// idempotency key) to one queue whose stream exists. The XADDs run in
    /// one MULTI/EXEC, so they are all-or-none like the script, at well under
    /// half its Redis CPU per message. `NOMKSTREAM` makes every XADD a no-op
    /// when the stream is missing: then `None`, and nothing was written.
    async fn append_plain(
        &self,
        k: &QueueKeys,
        msgs: &[Outgoing],
        per_msg: &[(usize, String)],
    ) -> Result<Option<Vec<Sent>>> {
        let mut p = ::redis::pipe();
        p.atomic();
        for (_, data) in per_msg {
            p.cmd("XADD")
                .arg(&k.stream)
                .arg("NOMKSTREAM")
                .arg("*")
                .arg("data")
                .arg(data);
        }
        let sadd = p.cmd("SADD").arg(&k.paths);
        let mut paths: Vec<&str> = Vec::new();
        for m in msgs {
            // A queue addressed by name has no path to record.
            if !m.route.path.is_empty() && !paths.contains(&m.route.path.as_str()) {
                paths.push(&m.route.path);
                sadd.arg(&m.route.path);
            }
        }
        sadd.ignore();
        let ids: Vec<Option<String>> = self
            .query_pipe_durable(&p, &k.stream, self.replicas_for_send(msgs))
            .await?;
        if ids.len() != msgs.len() {
            return Err(bad_reply("send"));
        }
        let ids: Option<Vec<String>> = ids.into_iter().collect();
        let Some(ids) = ids else {
            return Ok(None);
        };
        crate::observe::sent(&k.queue, ids.len() as u64);
        Ok(Some(
            ids.into_iter()
                .map(|message_id| Sent {
                    message_id,
                    ..Sent::default()
                })
                .collect(),
        ))
    }

    /// Append one message in a call of its own.
    pub async fn send_alone(&self, msg: &Outgoing) -> Result<Sent> {
        self.send(std::slice::from_ref(msg))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("send returned no id".into()))
    }
}
