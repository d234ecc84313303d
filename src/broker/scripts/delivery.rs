//! The delivery scripts: ensure a queue, fetch and lease, settle.

use redis::{Script, ScriptInvocation, Value};

use super::{
    as_array, as_i64, as_string, bad_reply, data_field, ordering_field, Call, Held, Scripts,
};
use crate::error::Result;
use crate::routing::QueueKeys;

/// `ensure.lua`: the queue pair, LeanMQ's groups, metadata and registry
/// entry, and `group` (at `start` when new); records `path`.
pub struct Ensure<'a> {
    pub keys: &'a QueueKeys,
    /// The registry key, or the stream in Redis Cluster (see `Broker::global`).
    pub registry: &'a str,
    pub created_at: String,
    pub group: &'a str,
    pub start: &'a str,
    pub path: &'a str,
    /// Most groups besides the default one; 0: no cap.
    pub max_groups: u32,
    pub admission: super::Admission<'a>,
    /// `--allow-colliding-paths`: another spelling may use an owned queue.
    pub allow_colliding: bool,
}

impl Call for Ensure<'_> {
    type Raw = i64;
    type Reply = ();
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.ensure
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        let k = self.keys;
        inv.key(&k.stream)
            .key(&k.dlq)
            .key(&k.meta)
            .key(&k.dlq_meta)
            .key(self.registry)
            .key(&k.paths)
            .key(&k.stats)
            .key(&k.owner)
            .arg(&k.queue)
            .arg(&self.created_at)
            .arg(self.group)
            .arg(self.start)
            .arg(self.path)
            .arg(self.max_groups);
        self.admission.push(inv);
        inv.arg(if self.allow_colliding { "1" } else { "0" });
    }
    fn reply(_: i64) -> Result<()> {
        Ok(())
    }
}

/// `fetch.lua`: a full round (due leases and retries, optionally orphans
/// and unleased entries, then up to `new_max` new entries).
pub struct Fetch<'a> {
    pub keys: &'a QueueKeys,
    pub leases: &'a str,
    pub group: &'a str,
    pub count: u32,
    pub lease_ms: u64,
    pub max_attempts: u32,
    /// 0: no orphan scan.
    pub orphan_idle_ms: u64,
    pub hold_ms: u64,
    /// 0: no look for unleased entries.
    pub unleased_idle_ms: u64,
    /// Where that look starts (`-`: from the beginning).
    pub unleased_from: &'a str,
    /// Most new entries to read (the reader's read-ahead, see `Round_`).
    pub new_max: u32,
}

/// One entry a round took: id, attempt (delivery count), its `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    pub id: String,
    pub attempt: u32,
    pub data: Option<Vec<u8>>,
    /// Its ordering key (`None`: unordered).
    pub ordering_key: Option<String>,
}

/// One entry a round parked for dead-lettering.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    pub id: String,
    pub count: u32,
    pub data: Option<Vec<u8>>,
    /// Its TTL passed (rather than its attempts running out).
    pub expired: bool,
}

/// What `fetch.lua` returns.
#[derive(Debug, Default, PartialEq)]
pub struct FetchReply {
    pub now_ms: u64,
    pub taken: Vec<Taken>,
    pub parked: Vec<Parked>,
    pub next_due_ms: Option<u64>,
    pub last_id: String,
    pub unleased_next: Option<String>,
    /// New entries asked for and read, and how many of those wait for
    /// their ordering key's turn.
    pub want: u32,
    pub read: u32,
    pub waited: u32,
}

impl Call for Fetch<'_> {
    type Raw = Value;
    type Reply = FetchReply;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.fetch
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(&self.keys.stream)
            .key(self.leases)
            .key(&self.keys.expiry)
            .key(&self.keys.stats)
            .arg(self.group)
            .arg(self.count)
            .arg(self.lease_ms)
            .arg(self.max_attempts)
            .arg(self.orphan_idle_ms)
            .arg(self.hold_ms)
            .arg(self.unleased_idle_ms)
            .arg(self.unleased_from)
            .arg(self.new_max.max(1));
    }
    fn reply(v: Value) -> Result<FetchReply> {
        parse_fetch(&v).ok_or_else(|| bad_reply("fetch"))
    }
}

/// `{now, {{id, n, fields}…}, {{id, n, fields, why}…}, next_due | -1, last_id,
/// unleased_next, want, read, waited}`.
fn parse_fetch(v: &Value) -> Option<FetchReply> {
    let top = as_array(v).filter(|a| a.len() == 9)?;
    let count = |i: usize| as_i64(&top[i]).and_then(|n| u32::try_from(n).ok());
    let mut out = FetchReply {
        want: count(6)?,
        read: count(7)?,
        waited: count(8)?,
        now_ms: as_i64(&top[0])? as u64,
        next_due_ms: as_i64(&top[3]).filter(|d| *d >= 0).map(|d| d as u64),
        last_id: as_string(&top[4]).unwrap_or_else(|| "0-0".into()),
        unleased_next: as_string(&top[5]),
        ..Default::default()
    };
    for e in as_array(&top[1])? {
        let e = as_array(e).filter(|e| e.len() == 3)?;
        out.taken.push(Taken {
            id: as_string(&e[0])?,
            attempt: u32::try_from(as_i64(&e[1])?).ok()?,
            data: data_field(&e[2]),
            ordering_key: ordering_field(&e[2]),
        });
    }
    for e in as_array(&top[2])? {
        let e = as_array(e).filter(|e| e.len() == 4)?;
        out.parked.push(Parked {
            id: as_string(&e[0])?,
            count: u32::try_from(as_i64(&e[1])?).ok()?,
            data: data_field(&e[2]),
            expired: as_string(&e[3]).as_deref() == Some("expired"),
        });
    }
    Some(out)
}

/// `lease.lua`: lease entries a plain XREADGROUP just took, or park those
/// whose TTL has passed, or those whose ordering key is not theirs yet.
pub struct Lease<'a> {
    pub keys: &'a QueueKeys,
    pub leases: &'a str,
    pub group: &'a str,
    pub lease_ms: u64,
    pub hold_ms: u64,
    /// (entry id, ordering key or "") of each entry taken.
    pub ids: Vec<(&'a str, &'a str)>,
}

/// Redis' clock, the ids parked for the DLQ instead of leased, and the
/// ids left waiting for their ordering key's turn.
pub struct LeaseReply {
    pub now_ms: u64,
    pub parked: Vec<String>,
    pub waiting: Vec<String>,
}

impl Call for Lease<'_> {
    type Raw = (u64, Vec<String>, Vec<String>);
    type Reply = LeaseReply;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.lease
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(&self.keys.stream)
            .key(self.leases)
            .key(&self.keys.expiry)
            .key(&self.keys.stats)
            .arg(self.group)
            .arg(self.lease_ms)
            .arg(self.hold_ms);
        for (id, key) in &self.ids {
            inv.arg(*id).arg(*key);
        }
    }
    fn reply((now_ms, parked, waiting): Self::Raw) -> Result<LeaseReply> {
        Ok(LeaseReply {
            now_ms,
            parked,
            waiting,
        })
    }
}

/// `ack.lua`: settle receipts of one (queue, group).
pub struct Ack<'a> {
    pub stream: &'a str,
    pub leases: String,
    pub group: &'a str,
    /// (entry id, attempt, ordering key if the receipt names one) of each
    /// receipt.
    pub receipts: Vec<(&'a str, u32, Option<&'a str>)>,
}

/// What `ack.lua` did.
#[derive(Debug, PartialEq, Eq)]
pub struct AckReply {
    /// One per receipt, in order.
    pub held: Vec<Held>,
    /// An ordering key's next entry fell due (its reader should look).
    pub woke: bool,
}

impl Call for Ack<'_> {
    type Raw = Vec<i64>;
    type Reply = AckReply;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.ack
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(self.stream).key(&self.leases).arg(self.group);
        // A key is never empty, so '' says the receipt names none (the
        // script then reads it from the entry).
        for (id, attempt, key) in &self.receipts {
            inv.arg(*id).arg(*attempt).arg(key.unwrap_or(""));
        }
    }
    fn reply(mut codes: Vec<i64>) -> Result<AckReply> {
        let woke = match codes.pop() {
            Some(0) => false,
            Some(1) => true,
            _ => return Err(bad_reply("ack")),
        };
        let held = codes
            .into_iter()
            .map(|c| Held::from_code(c, "ack"))
            .collect::<Result<_>>()?;
        Ok(AckReply { held, woke })
    }
}

/// How a held delivery is re-timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relet {
    /// `retry.lua`: park it for a retry (the receipt goes stale).
    Retry,
    /// `extend.lua`: keep it leased, longer.
    Extend,
}

/// `retry.lua` / `extend.lua`: re-time one delivery to now + `after_ms`.
pub struct Retime<'a> {
    pub how: Relet,
    pub stream: &'a str,
    pub leases: String,
    pub group: &'a str,
    pub id: &'a str,
    pub attempt: u32,
    pub after_ms: u64,
}

impl Call for Retime<'_> {
    type Raw = (i64, i64);
    /// The new due time (ms, Redis clock), or why the receipt no longer held.
    type Reply = std::result::Result<u64, Held>;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        match self.how {
            Relet::Retry => &s.retry,
            Relet::Extend => &s.extend,
        }
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(self.stream)
            .key(&self.leases)
            .arg(self.group)
            .arg(self.id)
            .arg(self.attempt)
            .arg(self.after_ms);
    }
    fn reply((code, due): (i64, i64)) -> Result<Self::Reply> {
        Ok(match Held::from_code(code, "retry/extend")? {
            Held::Held => Ok(due.max(0) as u64),
            other => Err(other),
        })
    }
}

/// `dead_letter.lua`: move one entry to the DLQ if `holder` still holds
/// it with `count`.
pub struct DeadLetter<'a> {
    pub keys: &'a QueueKeys,
    pub leases: String,
    pub group: &'a str,
    pub id: &'a str,
    pub holder: &'a str,
    pub count: u32,
    pub data: String,
}

impl Call for DeadLetter<'_> {
    type Raw = (i64, String);
    /// The DLQ entry id, or why the holder no longer held it.
    type Reply = std::result::Result<String, Held>;
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.dead_letter
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(&self.keys.stream)
            .key(&self.leases)
            .key(&self.keys.dlq)
            .arg(self.group)
            .arg(self.id)
            .arg(self.holder)
            .arg(self.count)
            .arg(&self.data);
    }
    fn reply((code, id): (i64, String)) -> Result<Self::Reply> {
        Ok(match Held::from_code(code, "dead_letter")? {
            Held::Held => Ok(id),
            other => Err(other),
        })
    }
}

/// `release.lua`: give back deliveries no subscriber received.
pub struct Release<'a> {
    pub stream: &'a str,
    pub leases: String,
    pub group: &'a str,
    /// (entry id, attempt).
    pub deliveries: &'a [(String, u32)],
}

impl Call for Release<'_> {
    type Raw = i64;
    type Reply = ();
    fn script<'s>(&self, s: &'s Scripts) -> &'s Script {
        &s.release
    }
    fn build(&self, inv: &mut ScriptInvocation<'_>) {
        inv.key(self.stream).key(&self.leases).arg(self.group);
        for (id, n) in self.deliveries {
            inv.arg(id).arg(*n);
        }
    }
    fn reply(_: i64) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::bulk;
    use super::*;

    fn entry(id: &str, n: i64, data: &str) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Int(n),
            Value::Array(vec![bulk("data"), bulk(data)]),
        ])
    }

    #[test]
    fn a_fetch_reply_parses_into_taken_and_parked_entries() {
        let parked = Value::Array(vec![
            bulk("1-2"),
            Value::Int(5),
            Value::Array(vec![bulk("data"), bulk("{}")]),
            bulk("exhausted"),
        ]);
        let v = Value::Array(vec![
            Value::Int(1000),
            Value::Array(vec![entry("1-1", 2, "{\"a\":1}")]),
            Value::Array(vec![parked]),
            Value::Int(-1),
            bulk("1-3"),
            bulk("-"),
            Value::Int(4),
            Value::Int(3),
            Value::Int(2),
        ]);
        let r = Fetch::reply(v).expect("parses");
        assert_eq!(r.now_ms, 1000);
        assert_eq!(r.next_due_ms, None);
        assert_eq!(r.last_id, "1-3");
        assert_eq!(r.unleased_next.as_deref(), Some("-"));
        assert_eq!(
            r.taken,
            vec![Taken {
                id: "1-1".into(),
                attempt: 2,
                data: Some(b"{\"a\":1}".to_vec()),
                ordering_key: None,
            }]
        );
        assert_eq!(r.parked.len(), 1);
        assert!(!r.parked[0].expired);
        assert_eq!(r.parked[0].count, 5);
        assert_eq!((r.want, r.read, r.waited), (4, 3, 2));
    }

    #[test]
    fn a_malformed_fetch_reply_is_an_error_not_a_panic() {
        for v in [
            Value::Nil,
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![Value::Array(vec![bulk("1-1")])]),
                Value::Array(vec![]),
                Value::Int(5),
                bulk("0-0"),
                Value::Nil,
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
            ]),
            Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![entry("1-1", -4, "x")]),
                Value::Array(vec![]),
                Value::Int(5),
                bulk("0-0"),
                Value::Nil,
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
            ]),
            // a negative count of entries read
            Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![]),
                Value::Array(vec![]),
                Value::Int(5),
                bulk("0-0"),
                Value::Nil,
                Value::Int(1),
                Value::Int(-1),
                Value::Int(0),
            ]),
        ] {
            assert!(Fetch::reply(v).is_err());
        }
    }

    #[test]
    fn ack_codes_become_outcomes_and_unknown_codes_fail() {
        assert_eq!(
            Ack::reply(vec![1, 2, 3, 1]).ok(),
            Some(AckReply {
                held: vec![Held::Held, Held::NotPending, Held::Stale],
                woke: true
            })
        );
        assert!(Ack::reply(vec![1, 0, 0]).is_err());
        assert!(Ack::reply(vec![1, 2]).is_err());
        assert!(Ack::reply(vec![]).is_err());
    }

    #[test]
    fn settle_replies_carry_the_due_time_or_why_not() {
        assert_eq!(Retime::reply((1, 1234)).ok(), Some(Ok(1234)));
        assert_eq!(Retime::reply((3, 0)).ok(), Some(Err(Held::Stale)));
        assert!(Retime::reply((9, 0)).is_err());
        assert_eq!(
            DeadLetter::reply((1, "5-0".into())).ok(),
            Some(Ok("5-0".to_string()))
        );
        assert_eq!(
            DeadLetter::reply((2, String::new())).ok(),
            Some(Err(Held::NotPending))
        );
    }
}
