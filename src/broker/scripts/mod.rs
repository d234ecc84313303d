//! Typed Lua scripts: one wrapper per script in `lua/`.
//!
//! Each wrapper is a struct holding the script's arguments, and implements
//! [`Call`]: which script it runs, how its fields become KEYS and ARGV, and
//! how Redis' reply becomes a Rust value. Nothing outside this module builds
//! a script's KEYS or ARGV by position or reads its reply by index.
//!
//! The names and codes Rust and Lua share are defined here once
//! ([`HOLDER`], [`RETRY_HOLD`], [`DLQ_HOLD`], [`ORDER_WAIT`], [`Held`]) and handed to Lua in a
//! generated preamble that comes before `lua/common.lua` in every script.

mod delivery;
mod queue;

use redis::{FromRedisValue, Script, ScriptInvocation, Value};

use crate::error::{Error, Result};

pub use delivery::*;
pub use queue::*;

/// Consumer name of deliveries made by leanmq-grpc: a receipt is valid only
/// while its entry is pending under this consumer with the receipt's count.
pub const HOLDER: &str = "leanmq-grpc";
/// Consumer name of entries parked for a retry after a Nack or a release,
/// so the receipt they were delivered under is stale.
pub const RETRY_HOLD: &str = "leanmq-grpc-retry";
/// Consumer name of entries whose lease ran out on their last attempt (or
/// whose TTL passed), parked while a replica moves them to the DLQ.
pub const DLQ_HOLD: &str = "leanmq-grpc-dlq";
/// Consumer name of keyed entries read while an earlier entry of their
/// ordering key is still unsettled: they wait here, unleased and
/// undelivered, until it is acked or dead-lettered (see `lua/common.lua`).
pub const ORDER_WAIT: &str = "leanmq-grpc-order";

/// Whether a receipt still holds its delivery: the code the settling
/// scripts (`ack`, `retry`, `extend`, `dead_letter`, `release`) return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum Held {
    /// It held the lease (and the script did its work).
    Held = 1,
    /// The entry is no longer pending: acked or dead-lettered.
    NotPending = 2,
    /// The entry is pending under another delivery: the lease expired or
    /// it was nacked, and it was (or will be) redelivered.
    Stale = 3,
}

impl Held {
    const ALL: [Held; 3] = [Held::Held, Held::NotPending, Held::Stale];

    /// The code a script returned, or an unexpected-reply error.
    pub fn from_code(code: i64, script: &str) -> Result<Held> {
        Held::ALL
            .into_iter()
            .find(|h| *h as i64 == code)
            .ok_or_else(|| bad_reply(script))
    }

    /// The error a settle call reports when its receipt no longer holds.
    pub fn lease_lost(self, group: &str) -> Error {
        match self {
            Held::NotPending => Error::LeaseLost(format!(
                "the message is no longer pending in group {group:?}: it was already acked or dead-lettered"
            )),
            _ => Error::LeaseLost(
                "the receipt is stale: its lease expired or it was nacked, and the message was (or will be) redelivered under a new receipt"
                    .to_string(),
            ),
        }
    }
}

/// The Lua preamble of every script: the shared names and codes.
fn preamble() -> String {
    format!(
        "local HOLDER = '{HOLDER}'\nlocal RETRY = '{RETRY_HOLD}'\nlocal DLQ_HOLD = '{DLQ_HOLD}'\n\
         local ORDER_WAIT, ORDERING = '{ORDER_WAIT}', '{ORDERING_FIELD}'\n\
         local HELD, NOT_PENDING, STALE = {}, {}, {}\n",
        Held::Held as i64,
        Held::NotPending as i64,
        Held::Stale as i64,
    )
}

/// An unexpected reply from a script or command.
pub(crate) fn bad_reply(what: &str) -> Error {
    Error::Internal(format!("unexpected Redis reply to {what}"))
}

/// One script call: its script, its KEYS and ARGV, and its reply's type.
pub trait Call {
    /// What Redis returns, as redis-rs decodes it.
    type Raw: FromRedisValue;
    /// What the caller gets.
    type Reply;
    /// The script this call runs.
    fn script<'s>(&self, scripts: &'s Scripts) -> &'s Script;
    /// Push KEYS and ARGV, in the order the script reads them.
    fn build(&self, inv: &mut ScriptInvocation<'_>);
    /// Turn the raw reply into the caller's value.
    fn reply(raw: Self::Raw) -> Result<Self::Reply>;
}

macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        /// Every script, loaded once (redis-rs sends EVALSHA, and the body
        /// only when Redis does not know it yet).
        pub struct Scripts {
            $($name: Script,)*
        }

        impl Scripts {
            pub fn load() -> Scripts {
                let pre = preamble();
                let common = include_str!("../lua/common.lua");
                Scripts {
                    $($name: Script::new(&format!(
                        "{pre}{common}{}",
                        include_str!(concat!("../lua/", stringify!($name), ".lua"))
                    )),)*
                }
            }
        }
    };
}

scripts!(
    ensure,
    send,
    fetch,
    lease,
    ack,
    retry,
    extend,
    dead_letter,
    release,
    due_queues,
    promote,
    retention,
    expire_group,
    requeue,
    delete_dead,
    purge_dlq,
    purge_queue,
    delete_queue,
);

/// An integer in a reply (Redis may send numbers as bulk strings).
pub(crate) fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

pub(crate) fn as_array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) => Some(a),
        _ => None,
    }
}

/// The `data` field of an entry's field list.
pub(crate) fn data_field(fields: &Value) -> Option<Vec<u8>> {
    named_field(fields, b"data")
}

/// The stream field holding a keyed entry's ordering key (LeanMQ ignores
/// fields other than `data`).
pub const ORDERING_FIELD: &str = "ordering_key";

/// The ordering key of an entry's field list (`None`: unordered).
pub(crate) fn ordering_field(fields: &Value) -> Option<String> {
    named_field(fields, ORDERING_FIELD.as_bytes()).and_then(|k| String::from_utf8(k).ok())
}

fn named_field(fields: &Value, name: &[u8]) -> Option<Vec<u8>> {
    let f = as_array(fields)?;
    f.chunks(2).find_map(|kv| match kv {
        [Value::BulkString(k), Value::BulkString(v)] if k == name => Some(v.clone()),
        _ => None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn held_codes_round_trip_and_unknown_codes_are_refused() {
        for h in Held::ALL {
            assert_eq!(Held::from_code(h as i64, "ack").ok(), Some(h));
        }
        assert!(matches!(Held::from_code(7, "ack"), Err(Error::Internal(_))));
    }

    #[test]
    fn the_preamble_names_what_common_lua_uses() {
        let pre = preamble();
        for name in [
            "HOLDER",
            "RETRY",
            "DLQ_HOLD",
            "ORDER_WAIT",
            "HELD",
            "NOT_PENDING",
            "STALE",
        ] {
            assert!(pre.contains(&format!("local {name}")) || pre.contains(&format!(", {name}")));
        }
        assert!(pre.contains("'leanmq-grpc-dlq'"));
        assert!(pre.contains("ORDER_WAIT, ORDERING = 'leanmq-grpc-order', 'ordering_key'"));
        assert!(pre.contains("= 1, 2, 3"));
        // No Lua file defines them again.
        assert!(!include_str!("../lua/common.lua").contains("local HOLDER ="));
    }

    #[test]
    fn lease_lost_names_what_happened() {
        let e = Held::NotPending.lease_lost("g");
        assert!(e.to_string().contains("no longer pending in group \"g\""));
        assert!(Held::Stale.lease_lost("g").to_string().contains("stale"));
    }

    #[test]
    fn data_field_finds_data_among_fields() {
        let fields = Value::Array(vec![bulk("x"), bulk("1"), bulk("data"), bulk("{}")]);
        assert_eq!(data_field(&fields), Some(b"{}".to_vec()));
        assert_eq!(data_field(&Value::Array(vec![bulk("x"), bulk("1")])), None);
        assert_eq!(as_i64(&bulk("42")), Some(42));
        assert_eq!(as_i64(&Value::Nil), None);
    }
}
