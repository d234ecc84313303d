//! The queue scripts: appends, the schedule, retention and administration.

use redis::{Script, ScriptInvocation};

use super::{Call, Scripts};
use crate::error::Result;
use crate::routing::QueueKeys;

/// One message of a [`Send`]: which of the call's queues, and how.
pub struct SendItem<'a> {
    /// 1-based index into `Send::queues`.
    pub queue: usize,
    pub data: &'a str,
    pub ttl_ms: Option<u128>,
    pub delay_ms: Option<u128>,
    pub idempotency_key: &'a str,
    pub path: &'a str,
}

/// `send.lua`: append a batch atomically, all or none.
pub struct Send<'a> {
    /// Registry and schedule keys (the first queue's stream in Redis Cluster).
    pub registry: &'a str,
    pub schedule: &'a str,
    pub queues: Vec<&'a QueueKeys>,
    pub created_at: &'a str,
    pub dedup_window_ms: u64,
    pub items: Vec<SendItem<'a>>,
}

/// What one message of a send got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Appended under this entry id.
    Entry(String),
    /// Delayed under this schedule id.
    Scheduled(String),
}

impl Call for Send<'_> {
    type Raw = Vec<(String, i64)>;
    /// Per message: what it got, and whether it was a duplicate.
    type Reply = Vec<(Appended, bool)>;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.send
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(self.registry).key(self.schedule);
        for k in &self.queues {
            inv.key(&k.stream)
                .key(&k.dlq)
                .key(&k.meta)
                .key(&k.dlq_meta)
                .key(&k.expiry)
                .key(&k.delayed)
                .key(&k.delayed_data)
                .key(&k.paths);
        }
        inv.arg(self.created_at)
            .arg(self.queues.len())
            .arg(self.dedup_window_ms);
        for k in &self.queues {
            inv.arg(&k.queue);
        }
        let ms = |d: Option<u128>| d.map(|d| d.to_string()).unwrap_or_default();
        for m in &self.items {
            inv.arg(m.queue)
                .arg(m.data)
                .arg(ms(m.ttl_ms))
                .arg(ms(m.delay_ms))
                .arg(m.idempotency_key)
                .arg(m.path);
        }
    }
    fn reply(flat: Vec<(String, i64)>) -> Result<Self::Reply> {
        Ok(flat
            .into_iter()
            .map(|(v, dup)| (appended(v), dup == 1))
            .collect())
    }
}

/// `m:<entry id>` or `s:<schedule id>`.
fn appended(v: String) -> Appended {
    match v.split_once(':') {
        Some(("s", sid)) => Appended::Scheduled(sid.to_string()),
        Some((_, id)) => Appended::Entry(id.to_string()),
        None => Appended::Entry(v),
    }
}

/// `due_queues.lua`: queues with delayed messages due now.
pub struct DueQueues<'a> {
    pub schedule: &'a str,
    pub limit: u32,
}

/// Redis' clock, the queues due, and the next due time after those.
pub struct Due {
    pub now_ms: u64,
    pub queues: Vec<String>,
    pub next_ms: Option<u64>,
}

impl Call for DueQueues<'_> {
    type Raw = (i64, Vec<String>, i64);
    type Reply = Due;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.due_queues
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(self.schedule).arg(self.limit);
    }
    fn reply((now, queues, next): (i64, Vec<String>, i64)) -> Result<Due> {
        Ok(Due {
            now_ms: now.max(0) as u64,
            queues,
            next_ms: (next >= 0).then_some(next as u64),
        })
    }
}

/// `promote.lua`: append a queue's due delayed messages.
pub struct Promote<'a> {
    pub schedule: &'a str,
    pub keys: &'a QueueKeys,
    pub limit: u32,
}

impl Call for Promote<'_> {
    type Raw = (i64, i64);
    /// How many were appended, and the earliest due time left.
    type Reply = (i64, Option<u64>);
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.promote
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        let k = self.keys;
        inv.key(self.schedule)
            .key(&k.stream)
            .key(&k.delayed)
            .key(&k.delayed_data)
            .key(&k.expiry)
            .arg(&k.queue)
            .arg(self.limit);
    }
    fn reply((n, first): (i64, i64)) -> Result<Self::Reply> {
        Ok((n, (first >= 0).then_some(first as u64)))
    }
}

/// `retention.lua`: trim what every group has acked; apply `--max-len`.
pub struct Retain<'a> {
    pub keys: &'a QueueKeys,
    pub max_age_ms: u64,
    /// 0: no cap.
    pub max_len: u64,
}

impl Call for Retain<'_> {
    type Raw = (i64, i64);
    /// (trimmed, dropped by `--max-len`).
    type Reply = (i64, i64);
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.retention
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(&self.keys.stream)
            .key(&self.keys.stats)
            .arg(self.max_age_ms)
            .arg(self.max_len);
    }
    fn reply(r: (i64, i64)) -> Result<(i64, i64)> {
        Ok(r)
    }
}

/// `requeue.lua`: move one dead letter back to its queue.
pub struct Requeue<'a> {
    pub keys: &'a QueueKeys,
    pub dlq_group: &'a str,
    pub id: &'a str,
    pub data: String,
}

impl Call for Requeue<'_> {
    type Raw = String;
    /// The new entry id; `None` when the dead letter is gone.
    type Reply = Option<String>;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.requeue
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(&self.keys.dlq)
            .key(&self.keys.stream)
            .arg(self.dlq_group)
            .arg(self.id)
            .arg(&self.data);
    }
    fn reply(id: String) -> Result<Option<String>> {
        Ok((!id.is_empty()).then_some(id))
    }
}

/// `delete_dead.lua`: delete dead letters by id.
pub struct DeleteDead<'a> {
    pub dlq: &'a str,
    pub dlq_group: String,
    pub ids: &'a [String],
}

impl Call for DeleteDead<'_> {
    type Raw = i64;
    /// How many were deleted.
    type Reply = i64;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.delete_dead
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(self.dlq).arg(&self.dlq_group);
        for id in self.ids {
            inv.arg(id);
        }
    }
    fn reply(n: i64) -> Result<i64> {
        Ok(n)
    }
}

/// `purge_dlq.lua`: empty a DLQ, keeping its group.
pub struct PurgeDlq<'a> {
    pub dlq: &'a str,
    pub dlq_group: String,
}

impl Call for PurgeDlq<'_> {
    type Raw = i64;
    type Reply = i64;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.purge_dlq
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(self.dlq).arg(&self.dlq_group);
    }
    fn reply(n: i64) -> Result<i64> {
        Ok(n)
    }
}

/// `purge_queue.lua`: delete every message and schedule of a queue.
pub struct PurgeQueue<'a> {
    pub keys: &'a QueueKeys,
    pub schedule: &'a str,
}

impl Call for PurgeQueue<'_> {
    type Raw = i64;
    type Reply = i64;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.purge_queue
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        let k = self.keys;
        inv.key(&k.stream)
            .key(&k.expiry)
            .key(&k.delayed)
            .key(&k.delayed_data)
            .key(self.schedule)
            .arg(&k.queue);
    }
    fn reply(n: i64) -> Result<i64> {
        Ok(n)
    }
}

/// `delete_queue.lua`: delete a queue with its keys; optionally its DLQ.
pub struct DeleteQueue<'a> {
    pub keys: &'a QueueKeys,
    pub schedule: &'a str,
    pub registry: &'a str,
    pub with_dlq: bool,
}

impl Call for DeleteQueue<'_> {
    type Raw = i64;
    type Reply = i64;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.delete_queue
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        let k = self.keys;
        inv.key(&k.stream)
            .key(&k.expiry)
            .key(&k.delayed)
            .key(&k.delayed_data)
            .key(self.schedule)
            .key(&k.meta)
            .key(&k.paths)
            .key(&k.stats)
            .key(self.registry)
            .key(&k.dlq)
            .key(&k.dlq_meta)
            .arg(&k.queue)
            .arg(if self.with_dlq { "1" } else { "0" });
    }
    fn reply(n: i64) -> Result<i64> {
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_replies_tell_entries_from_schedules_and_duplicates() {
        let r = Send::reply(vec![
            ("m:1-0".into(), 0),
            ("s:7".into(), 0),
            ("m:1-0".into(), 1),
        ])
        .expect("parses");
        assert_eq!(
            r,
            vec![
                (Appended::Entry("1-0".into()), false),
                (Appended::Scheduled("7".into()), false),
                (Appended::Entry("1-0".into()), true),
            ]
        );
    }

    #[test]
    fn schedule_replies_map_minus_one_to_none() {
        let d = DueQueues::reply((5, vec!["q".into()], -1)).expect("parses");
        assert_eq!((d.now_ms, d.next_ms), (5, None));
        assert_eq!(Promote::reply((2, 99)).ok(), Some((2, Some(99))));
        assert_eq!(Requeue::reply(String::new()).ok(), Some(None));
    }
}
