//! The push subscription RPCs (docs/push.md): validate every field a
//! client chooses, check the caller may administer the path, then store
//! through `push::store`. Secrets go in and never come out.

use std::collections::HashMap;
use std::time::Duration;

use crate::auth::{Action, Grant};
use crate::error::{Error, Result};
use crate::proto;
use crate::push::ssrf::Policy;
use crate::push::{self, signature, store, Record, Spec, State};
use crate::queues::Queues;
use crate::rpc::convert;

/// Headers leanmqd sets itself, which `headers` may not name.
const RESERVED: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
    "connection",
    "traceparent",
    "user-agent",
];

pub fn check_name(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || name.len() > push::MAX_NAME_BYTES {
        return Err(Error::invalid(format!(
            "name is {} bytes; a push subscription's name is 1 to {} bytes",
            name.len(),
            push::MAX_NAME_BYTES
        )));
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(Error::invalid(format!(
            "name {name:?} must be letters, digits, \"_\" and \"-\", starting with a letter or digit"
        )));
    }
    Ok(())
}

/// May `grant` administer `path` (a path or a pattern)?
async fn check_admin(queues: &Queues, grant: &Grant, path: &str) -> Result<()> {
    match crate::routing::Pattern::parse(path)? {
        Some(p) => grant.check_pattern(Action::Admin, &p),
        None => {
            let route = crate::routing::address(path, "")?;
            queues.check_route(grant, Action::Admin, &route).await
        }
    }
}

fn check_secrets(secrets: &[String]) -> Result<()> {
    if secrets.is_empty() || secrets.len() > push::MAX_SECRETS {
        return Err(Error::invalid(format!(
            "secrets holds {}; give 1 to {} (\"whsec_\" + base64 of {} to {} bytes)",
            secrets.len(),
            push::MAX_SECRETS,
            signature::SECRET_BYTES.0,
            signature::SECRET_BYTES.1
        )));
    }
    for (i, s) in secrets.iter().enumerate() {
        signature::decode_secret(s).map_err(|e| Error::invalid(format!("secrets[{i}] {e}")))?;
    }
    Ok(())
}

fn check_headers(headers: &HashMap<String, String>) -> Result<Vec<(String, String)>> {
    if headers.len() > push::MAX_HEADERS {
        return Err(Error::invalid(format!(
            "headers holds {}; the limit is {}",
            headers.len(),
            push::MAX_HEADERS
        )));
    }
    let total: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > push::MAX_HEADERS_BYTES {
        return Err(Error::invalid(format!(
            "headers are {total} bytes (names and values); the limit is {}",
            push::MAX_HEADERS_BYTES
        )));
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        let lower = k.to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(Error::invalid(format!(
                "headers: {k:?} is not an HTTP header name"
            )));
        }
        if RESERVED.contains(&lower.as_str())
            || lower.starts_with("webhook-")
            || lower.starts_with("leanmq-")
        {
            return Err(Error::invalid(format!(
                "headers: {k:?} is set by leanmqd (content-type, webhook-*, leanmq-*, traceparent, host…)"
            )));
        }
        if reqwest::header::HeaderValue::from_str(v).is_err() {
            return Err(Error::invalid(format!(
                "headers: the value of {k:?} is not a valid HTTP header value"
            )));
        }
        out.push((lower, v.clone()));
    }
    out.sort();
    Ok(out)
}

fn check_schedule(s: &[prost_types::Duration]) -> Result<Vec<u64>> {
    if s.is_empty() {
        return Ok(push::default_schedule()
            .iter()
            .map(|d| d.as_millis() as u64)
            .collect());
    }
    if s.len() > push::MAX_SCHEDULE_ENTRIES {
        return Err(Error::invalid(format!(
            "retry_schedule holds {} entries; the limit is {}",
            s.len(),
            push::MAX_SCHEDULE_ENTRIES
        )));
    }
    s.iter()
        .enumerate()
        .map(|(i, d)| {
            let field = format!("retry_schedule[{i}]");
            let d = convert::optional_duration(&field, Some(*d), push::MAX_DELAY)?;
            Ok(d.unwrap_or(Duration::ZERO).as_millis() as u64)
        })
        .collect()
}

/// The fields every create and update checks alike.
async fn check_endpoint(policy: &Policy, endpoint: &str) -> Result<()> {
    if endpoint.len() > push::MAX_ENDPOINT_BYTES {
        return Err(Error::invalid(format!(
            "endpoint is {} bytes; the limit is {}",
            endpoint.len(),
            push::MAX_ENDPOINT_BYTES
        )));
    }
    policy
        .check_endpoint(endpoint)
        .await
        .map(|_| ())
        .map_err(|e| Error::invalid(format!("endpoint {endpoint:?} {e}")))
}

fn max_attempts(n: u32, server_max: u32) -> Result<u32> {
    match n {
        0 => Ok(server_max),
        n if n > server_max => Err(Error::invalid(format!(
            "max_attempts is {n}; the limit is leanmqd's --max-attempts, {server_max}"
        ))),
        n => Ok(n),
    }
}

fn durations(p: &proto::PushSubscription) -> Result<(u64, u64)> {
    let timeout = convert::duration(
        "timeout",
        p.timeout,
        push::DEFAULT_TIMEOUT,
        push::TIMEOUT_RANGE,
    )?;
    let max_backoff = convert::duration(
        "max_backoff",
        p.max_backoff,
        push::DEFAULT_MAX_BACKOFF,
        (Duration::from_secs(1), push::MAX_DELAY),
    )?;
    Ok((timeout.as_millis() as u64, max_backoff.as_millis() as u64))
}

/// A new subscription's spec from its request, every field checked.
async fn new_spec(queues: &Queues, policy: &Policy, p: proto::PushSubscription) -> Result<Spec> {
    let group = match p.group.as_str() {
        "" => format!("push-{}", p.name),
        g => g.to_string(),
    };
    crate::routing::check_name("group", &group)?;
    let start = convert::start_position(p.start.clone())?;
    check_endpoint(policy, &p.endpoint).await?;
    check_secrets(&p.secrets)?;
    let (timeout_ms, max_backoff_ms) = durations(&p)?;
    let max_in_flight = convert::count(
        "max_in_flight",
        p.max_in_flight,
        push::DEFAULT_MAX_IN_FLIGHT,
        push::MAX_IN_FLIGHT,
    )?;
    Ok(Spec {
        max_attempts: max_attempts(p.max_attempts, queues.broker().settings.max_attempts)?,
        retry_schedule_ms: check_schedule(&p.retry_schedule)?,
        headers: check_headers(&p.headers)?,
        name: p.name,
        path: p.path,
        group,
        start,
        endpoint: p.endpoint,
        secrets: p.secrets,
        timeout_ms,
        max_in_flight,
        max_backoff_ms,
    })
}

pub async fn create(
    queues: &Queues,
    policy: &Policy,
    grant: &Grant,
    req: proto::CreatePushSubscriptionRequest,
) -> Result<proto::PushSubscription> {
    let p = req
        .subscription
        .ok_or_else(|| Error::invalid("subscription is missing"))?;
    check_name(&p.name)?;
    if p.path.is_empty() {
        return Err(Error::invalid(
            "path is empty; give a path (\"/order/status/\") or a pattern (\"/order/*\")",
        ));
    }
    check_admin(queues, grant, &p.path).await?;
    let spec = new_spec(queues, policy, p).await?;
    // The group now, where `start` says, so nothing sent from here on is
    // missed before a replica's consumer starts.
    if crate::routing::Pattern::parse(&spec.path)?.is_none() {
        let target = crate::broker::Target {
            route: crate::routing::address(&spec.path, "")?,
            group: spec.group.clone(),
        };
        queues
            .ensure(&target, &spec.start, grant.creator().as_ref())
            .await?;
    }
    let rec = store::create(queues.broker(), &spec).await?;
    tracing::info!(subscription = %spec.name, path = %spec.path, "push subscription created");
    Ok(to_proto(&rec))
}

pub async fn get(queues: &Queues, grant: &Grant, name: &str) -> Result<proto::PushSubscription> {
    check_name(name)?;
    let rec = store::get(queues.broker(), name).await?;
    check_admin(queues, grant, &rec.spec.path).await?;
    Ok(to_proto(&rec))
}

pub async fn list(queues: &Queues, grant: &Grant) -> Result<proto::ListPushSubscriptionsResponse> {
    let mut subscriptions = Vec::new();
    for rec in store::list(queues.broker()).await? {
        if check_admin(queues, grant, &rec.spec.path).await.is_ok() {
            subscriptions.push(to_proto(&rec));
        }
    }
    Ok(proto::ListPushSubscriptionsResponse { subscriptions })
}

pub async fn delete(queues: &Queues, grant: &Grant, name: &str) -> Result<()> {
    get(queues, grant, name).await?;
    store::delete(queues.broker(), name).await?;
    tracing::info!(subscription = %name, "push subscription deleted");
    Ok(())
}

pub async fn update(
    queues: &Queues,
    policy: &Policy,
    grant: &Grant,
    req: proto::UpdatePushSubscriptionRequest,
) -> Result<proto::PushSubscription> {
    let p = req
        .subscription
        .ok_or_else(|| Error::invalid("subscription is missing"))?;
    check_name(&p.name)?;
    let mut rec = store::get(queues.broker(), &p.name).await?;
    check_admin(queues, grant, &rec.spec.path).await?;
    let fixed = |what: &str, given: &str, now: &str| match given.is_empty() || given == now {
        true => Ok(()),
        false => Err(Error::invalid(format!(
            "{what} cannot change ({now:?}); delete the subscription and create another"
        ))),
    };
    fixed("path", &p.path, &rec.spec.path)?;
    fixed("group", &p.group, &rec.spec.group)?;
    if p.start.is_some() {
        return Err(Error::invalid("start cannot change after creation"));
    }
    merge(queues, policy, &mut rec.spec, &p, req.clear_headers).await?;
    let (state, reason) = match proto::PushState::try_from(p.state) {
        Ok(proto::PushState::Unspecified) => (rec.state, rec.reason.clone()),
        Ok(proto::PushState::Active) => (State::Active, String::new()),
        Ok(proto::PushState::Paused) => (State::Paused, "paused by an operator".into()),
        Ok(proto::PushState::Disabled) => (State::Disabled, "disabled by an operator".into()),
        Err(_) => {
            return Err(Error::invalid(format!(
                "state {} is not a PushState",
                p.state
            )))
        }
    };
    store::save(queues.broker(), &rec.spec, state, &reason).await?;
    tracing::info!(subscription = %rec.spec.name, state = state.as_str(), "push subscription updated");
    get(queues, grant, &rec.spec.name).await
}

/// Apply an update's non-zero fields to `spec`, each checked as on create.
async fn merge(
    queues: &Queues,
    policy: &Policy,
    spec: &mut Spec,
    p: &proto::PushSubscription,
    clear_headers: bool,
) -> Result<()> {
    if !p.endpoint.is_empty() {
        check_endpoint(policy, &p.endpoint).await?;
        spec.endpoint = p.endpoint.clone();
    }
    if !p.secrets.is_empty() {
        check_secrets(&p.secrets)?;
        spec.secrets = p.secrets.clone();
    }
    if p.timeout.is_some() || p.max_backoff.is_some() {
        let (timeout, backoff) = durations(p)?;
        if p.timeout.is_some() {
            spec.timeout_ms = timeout;
        }
        if p.max_backoff.is_some() {
            spec.max_backoff_ms = backoff;
        }
    }
    if p.max_in_flight != 0 {
        spec.max_in_flight =
            convert::count("max_in_flight", p.max_in_flight, 0, push::MAX_IN_FLIGHT)?;
    }
    if p.max_attempts != 0 {
        spec.max_attempts = max_attempts(p.max_attempts, queues.broker().settings.max_attempts)?;
    }
    if !p.retry_schedule.is_empty() {
        spec.retry_schedule_ms = check_schedule(&p.retry_schedule)?;
    }
    if clear_headers {
        spec.headers.clear();
    }
    if !p.headers.is_empty() {
        spec.headers = check_headers(&p.headers)?;
    }
    Ok(())
}

fn ms(n: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: (n / 1000) as i64,
        nanos: ((n % 1000) * 1_000_000) as i32,
    })
}

/// What a client sees: everything but the secrets.
pub fn to_proto(rec: &Record) -> proto::PushSubscription {
    use proto::start_position::Position;
    let s = &rec.spec;
    let start = match s.start.as_str() {
        "$" => Position::Now(true),
        "0" => Position::Beginning(true),
        id => Position::AfterId(id.to_string()),
    };
    proto::PushSubscription {
        name: s.name.clone(),
        path: s.path.clone(),
        group: s.group.clone(),
        start: Some(proto::StartPosition {
            position: Some(start),
        }),
        endpoint: s.endpoint.clone(),
        secrets: Vec::new(),
        timeout: ms(s.timeout_ms),
        max_in_flight: s.max_in_flight,
        max_attempts: s.max_attempts,
        retry_schedule: s.retry_schedule_ms.iter().filter_map(|&d| ms(d)).collect(),
        max_backoff: ms(s.max_backoff_ms),
        headers: s.headers.iter().cloned().collect(),
        state: match rec.state {
            State::Active => proto::PushState::Active,
            State::Paused => proto::PushState::Paused,
            State::Disabled => proto::PushState::Disabled,
        } as i32,
        state_reason: rec.reason.clone(),
        secret_count: s.secrets.len() as u32,
        secret_hints: s.secret_hints(),
        counters: Some(proto::PushCounters {
            delivered: rec.counters.delivered,
            failed: rec.counters.failed,
            dead_lettered: rec.counters.dead_lettered,
        }),
        created_at: Some(convert::timestamp_ms(rec.created_ms)),
        updated_at: Some(convert::timestamp_ms(rec.updated_ms)),
    }
}
