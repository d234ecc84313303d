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
    /// "" for none.
    pub ordering_key: &'a str,
}

/// What creating a queue must fit in (`admit` in common.lua). In Redis
/// Cluster the scripts cannot reach the registry: the broker checks there.
#[derive(Default)]
pub struct Admission<'a> {
    /// Most registry members (two per queue: it and its DLQ); 0: no cap.
    pub max_registry: u64,
    /// The creating token's set of queues, its quota, and its name.
    pub owner: Option<(&'a str, u64, &'a str)>,
}

impl Admission<'_> {
    /// Its four ARGV, in the order the scripts read them.
    pub(crate) fn push(&self, inv: &mut ScriptInvocation<'_>) {
        let (key, max, name) = self.owner.unwrap_or(("", 0, ""));
        inv.arg(self.max_registry).arg(key).arg(max).arg(name);
    }
}

/// `send.lua`: append a batch atomically, all or none.
pub struct Send<'a> {
    /// Registry and schedule keys (the first queue's stream in Redis Cluster).
    pub registry: &'a str,
    pub schedule: &'a str,
    pub queues: Vec<&'a QueueKeys>,
    pub created_at: &'a str,
    pub dedup_window_ms: u64,
    pub admission: Admission<'a>,
    /// `--allow-colliding-paths`: another spelling may use an owned queue.
    pub allow_colliding: bool,
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
                .key(&k.paths)
                .key(&k.owner);
        }
        inv.arg(self.created_at)
            .arg(self.queues.len())
            .arg(self.dedup_window_ms);
        self.admission.push(inv);
        inv.arg(if self.allow_colliding { "1" } else { "0" });
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
                .arg(m.path)
                .arg(m.ordering_key);
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

/// `retention.lua`: the last step of a retention pass: trim below the
/// lowest id some group needs; apply `--max-len`.
pub struct Retain<'a> {
    pub keys: &'a QueueKeys,
    pub max_age_ms: u64,
    /// 0: no cap.
    pub max_len: u64,
    /// The lowest id some group still needs; `None` when there is no group.
    pub threshold: Option<&'a str>,
    /// The queue's count of groups created, read before the groups were.
    pub generation: &'a str,
}

/// What the trim did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    pub trimmed: i64,
    /// Dropped by `--max-len`.
    pub dropped: i64,
    /// A group was created since the groups were read: nothing was done.
    pub groups_changed: bool,
}

impl Call for Retain<'_> {
    type Raw = (i64, i64);
    type Reply = Trimmed;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.retention
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(&self.keys.stream)
            .key(&self.keys.stats)
            .arg(self.max_age_ms)
            .arg(self.max_len)
            .arg(self.threshold.unwrap_or(""))
            .arg(self.generation);
    }
    fn reply((trimmed, dropped): (i64, i64)) -> Result<Trimmed> {
        Ok(Trimmed {
            trimmed: trimmed.max(0),
            dropped,
            groups_changed: trimmed < 0,
        })
    }
}

/// `expire_group.lua`: destroy a group if it is still idle and empty.
pub struct ExpireGroup<'a> {
    pub keys: &'a QueueKeys,
    pub group: &'a str,
    pub idle_ms: u64,
}

impl Call for ExpireGroup<'_> {
    type Raw = i64;
    /// Whether it was destroyed.
    type Reply = bool;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.expire_group
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(&self.keys.stream)
            .arg(self.group)
            .arg(self.idle_ms)
            .arg(crate::routing::default_group(&self.keys.queue));
    }
    fn reply(n: i64) -> Result<bool> {
        Ok(n == 1)
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
            .key(&k.owner)
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

    #[test]
    fn a_trim_that_saw_the_groups_change_did_nothing() {
        let changed = Retain::reply((-1, 0)).expect("parses");
        assert!(changed.groups_changed);
        assert_eq!(changed.trimmed, 0);
        let done = Retain::reply((4, 1)).expect("parses");
        assert_eq!(
            done,
            Trimmed {
                trimmed: 4,
                dropped: 1,
                groups_changed: false
            }
        );
    }
}
