//! A push subscription as stored: its hash's fields (`spec`, the JSON of
//! the [`Spec`] with its secrets; `state`, `reason`; the counters;
//! `created_ms`, `updated_ms`), written through `broker::push`.

use std::collections::HashMap;

use super::{Counters, Record, Spec, State, MAX_SUBSCRIPTIONS};
use crate::broker::push::{PushWrite, Written};
use crate::broker::Broker;
use crate::error::{Error, Result};

fn now_ms() -> u64 {
    (crate::broker::envelope::now_secs() * 1000.0) as u64
}

fn spec_json(spec: &Spec) -> Result<String> {
    serde_json::to_string(spec).map_err(|e| Error::Internal(format!("push spec: {e}")))
}

/// Store a new subscription, ACTIVE.
pub async fn create(broker: &Broker, spec: &Spec) -> Result<Record> {
    let now = now_ms();
    let fields = [
        ("spec", spec_json(spec)?),
        ("state", State::Active.as_str().to_string()),
        ("reason", String::new()),
        ("created_ms", now.to_string()),
        ("updated_ms", now.to_string()),
    ];
    let how = PushWrite::Create {
        max: MAX_SUBSCRIPTIONS,
    };
    match broker.push_write(&spec.name, how, &fields).await? {
        Written::Done => Ok(Record {
            spec: spec.clone(),
            state: State::Active,
            reason: String::new(),
            counters: Counters::default(),
            created_ms: now,
            updated_ms: now,
        }),
        Written::Absent => Err(Error::AlreadyExists(format!(
            "push subscription {:?} exists already",
            spec.name
        ))),
        Written::Full => Err(Error::ResourceExhausted(format!(
            "this prefix has {MAX_SUBSCRIPTIONS} push subscriptions, the most allowed; delete one first"
        ))),
    }
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("no push subscription {name:?}"))
}

/// Replace a subscription's spec and state.
pub async fn save(broker: &Broker, spec: &Spec, state: State, reason: &str) -> Result<()> {
    let fields = [
        ("spec", spec_json(spec)?),
        ("state", state.as_str().to_string()),
        ("reason", reason.to_string()),
        ("updated_ms", now_ms().to_string()),
    ];
    match broker
        .push_write(&spec.name, PushWrite::Update, &fields)
        .await?
    {
        Written::Done => Ok(()),
        _ => Err(not_found(&spec.name)),
    }
}

/// Set a subscription's state alone (a worker pausing it on 410).
pub async fn set_state(broker: &Broker, name: &str, state: State, reason: &str) -> Result<()> {
    let fields = [
        ("state", state.as_str().to_string()),
        ("reason", reason.to_string()),
        ("updated_ms", now_ms().to_string()),
    ];
    broker.push_write(name, PushWrite::Update, &fields).await?;
    Ok(())
}

/// Add to a subscription's counters (nothing when it was deleted).
pub async fn count(broker: &Broker, name: &str, c: Counters) -> Result<()> {
    let fields: Vec<(&str, String)> = [
        ("delivered", c.delivered),
        ("failed", c.failed),
        ("dead_lettered", c.dead_lettered),
    ]
    .into_iter()
    .filter(|(_, n)| *n != 0)
    .map(|(f, n)| (f, n.to_string()))
    .collect();
    if !fields.is_empty() {
        broker.push_write(name, PushWrite::Incr, &fields).await?;
    }
    Ok(())
}

/// One subscription; NOT_FOUND when there is none.
pub async fn get(broker: &Broker, name: &str) -> Result<Record> {
    let fields = broker.push_read(name).await?;
    parse(&fields)?.ok_or_else(|| not_found(name))
}

/// Every subscription (one skipped when deleted meanwhile).
pub async fn list(broker: &Broker) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for name in broker.push_names().await? {
        if let Some(r) = parse(&broker.push_read(&name).await?)? {
            out.push(r);
        }
    }
    Ok(out)
}

pub async fn delete(broker: &Broker, name: &str) -> Result<()> {
    match broker.push_delete(name).await? {
        true => Ok(()),
        false => Err(not_found(name)),
    }
}

/// A record from its hash; `None` when it has no spec (absent).
fn parse(fields: &HashMap<String, String>) -> Result<Option<Record>> {
    let Some(spec) = fields.get("spec") else {
        return Ok(None);
    };
    let spec: Spec = serde_json::from_str(spec)
        .map_err(|e| Error::Internal(format!("stored push subscription unreadable: {e}")))?;
    let num = |f: &str| {
        fields
            .get(f)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    Ok(Some(Record {
        state: fields
            .get("state")
            .and_then(|s| State::parse(s))
            .unwrap_or(State::Active),
        reason: fields.get("reason").cloned().unwrap_or_default(),
        counters: Counters {
            delivered: num("delivered"),
            failed: num("failed"),
            dead_lettered: num("dead_lettered"),
        },
        created_ms: num("created_ms").max(0) as u64,
        updated_ms: num("updated_ms").max(0) as u64,
        spec,
    }))
}
