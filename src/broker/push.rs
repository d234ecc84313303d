//! Push subscriptions' storage: one hash per subscription and a set
//! indexing them, under the served prefix (`<prefix>{#push}:sub:<name>`
//! and `<prefix>{#push}:index`). Queue names never hold `{`, so no queue's
//! keys meet these; the one hash tag keeps both in one Cluster slot, so a
//! subscription and its index change together, in one script or MULTI.
//! What the fields mean is `push::store`'s business; this is their Redis side.

use std::collections::HashMap;

use redis::Script;

use super::Broker;
use crate::error::{Error, Result};

static WRITE: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/push_write.lua")));

/// How [`Broker::push_write`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushWrite {
    /// A new subscription: refused when the name is taken or the index full.
    Create { max: usize },
    /// HSET fields of an existing one.
    Update,
    /// HINCRBY fields of an existing one.
    Incr,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// Not there (or, on create, already there).
    Absent,
    /// The index holds the most subscriptions allowed.
    Full,
}

impl Broker {
    fn push_index(&self) -> String {
        format!("{}{{#push}}:index", self.settings.prefix)
    }

    fn push_key(&self, name: &str) -> String {
        format!("{}{{#push}}:sub:{name}", self.settings.prefix)
    }

    /// Write `fields` of subscription `name`, as `how` says.
    pub async fn push_write(
        &self,
        name: &str,
        how: PushWrite,
        fields: &[(&str, String)],
    ) -> Result<Written> {
        let (mode, max) = match how {
            PushWrite::Create { max } => ("create", max),
            PushWrite::Update => ("update", 0),
            PushWrite::Incr => ("incr", 0),
        };
        let mut inv = WRITE.prepare_invoke();
        inv.key(self.push_index())
            .key(self.push_key(name))
            .arg(mode)
            .arg(name)
            .arg(max);
        for (f, v) in fields {
            inv.arg(*f).arg(v);
        }
        let code: i64 = self.invoke(inv).await?;
        Ok(match code {
            1 => Written::Done,
            0 => Written::Absent,
            -1 => Written::Full,
            _ => return Err(Error::Internal(format!("push_write returned {code}"))),
        })
    }

    /// Every field of subscription `name`; empty when there is none.
    pub async fn push_read(&self, name: &str) -> Result<HashMap<String, String>> {
        self.query(redis::cmd("HGETALL").arg(self.push_key(name)))
            .await
    }

    /// The names in the index, sorted.
    pub async fn push_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.push_index()))
            .await?;
        names.sort();
        Ok(names)
    }

    /// Delete subscription `name` and its index entry; whether it existed.
    pub async fn push_delete(&self, name: &str) -> Result<bool> {
        let (deleted, _): (i64, i64) = self
            .query_pipe(
                redis::pipe()
                    .atomic()
                    .cmd("DEL")
                    .arg(self.push_key(name))
                    .cmd("SREM")
                    .arg(self.push_index())
                    .arg(name),
            )
            .await?;
        Ok(deleted > 0)
    }
}
