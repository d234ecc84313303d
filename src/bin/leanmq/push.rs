//! `leanmq push list|get|create|pause|resume|delete`: push subscriptions
//! (docs/push.md). Secrets go in (`--secret`, or `LEANMQ_PUSH_SECRETS`) and
//! never come back: reads show how many there are and a hint of each.

use std::time::Duration;

use clap::{Args, Subcommand};
use leanmq_grpc::proto;
use serde::Serialize;

use crate::conn::Conn;
use crate::fail::Failure;
use crate::show::{self, Out};
use crate::Global;

#[derive(Debug, Subcommand)]
pub enum PushCommand {
    /// Every push subscription: path, endpoint, state, counters.
    List,
    /// One push subscription in detail.
    Get { name: String },
    /// Create a push subscription (it starts ACTIVE).
    Create(CreateArgs),
    /// Stop pushing; messages wait in the group.
    Pause { name: String },
    /// Push again (after a pause, or a 410 from the endpoint).
    Resume { name: String },
    /// Delete it (its group and queue remain).
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    name: String,
    /// A path ("/order/status/") or a pattern ("/order/*").
    #[arg(long)]
    path: String,
    /// https:// URL to POST to.
    #[arg(long)]
    endpoint: String,
    /// A `whsec_` secret; repeat while rotating. Prefer the env var (a flag
    /// shows in the process list).
    #[arg(
        long = "secret",
        env = "LEANMQ_PUSH_SECRETS",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    secrets: Vec<String>,
    /// Consumer group (default push-<name>).
    #[arg(long, default_value = "")]
    group: String,
    /// Start at the beginning of the stream rather than now.
    #[arg(long)]
    from_beginning: bool,
    /// Per attempt (default 15s).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Concurrent POSTs per replica (default 10).
    #[arg(long, default_value_t = 0)]
    max_in_flight: u32,
    /// Attempts before the DLQ (default leanmqd's --max-attempts).
    #[arg(long, default_value_t = 0)]
    max_attempts: u32,
    /// An extra header, NAME=VALUE; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
}

#[derive(Serialize)]
struct PushOut {
    name: String,
    path: String,
    group: String,
    endpoint: String,
    state: String,
    state_reason: String,
    secret_count: u32,
    secret_hints: Vec<String>,
    timeout_ms: Option<u64>,
    max_in_flight: u32,
    max_attempts: u32,
    delivered: i64,
    failed: i64,
    dead_lettered: i64,
    created_at: Option<String>,
}

impl PushOut {
    fn of(p: proto::PushSubscription) -> PushOut {
        let c = p.counters.unwrap_or_default();
        PushOut {
            state: state_name(p.state).into(),
            timeout_ms: show::duration(p.timeout.as_ref()).map(|d| d.as_millis() as u64),
            created_at: show::time(p.created_at.as_ref()),
            name: p.name,
            path: p.path,
            group: p.group,
            endpoint: p.endpoint,
            state_reason: p.state_reason,
            secret_count: p.secret_count,
            secret_hints: p.secret_hints,
            max_in_flight: p.max_in_flight,
            max_attempts: p.max_attempts,
            delivered: c.delivered,
            failed: c.failed,
            dead_lettered: c.dead_lettered,
        }
    }
}

fn state_name(s: i32) -> &'static str {
    match proto::PushState::try_from(s) {
        Ok(proto::PushState::Active) => "active",
        Ok(proto::PushState::Paused) => "paused",
        Ok(proto::PushState::Disabled) => "disabled",
        _ => "unknown",
    }
}

pub async fn run(g: &Global, cmd: PushCommand) -> Result<(), Failure> {
    let sub = match &cmd {
        PushCommand::Create(a) => Some(new_sub(a)?),
        _ => None,
    };
    let conn = Conn::open(g).await?;
    let name_req = |name: &str| proto::GetPushSubscriptionRequest {
        name: name.into(),
        prefix: String::new(),
    };
    let one = match cmd {
        PushCommand::List => return list(g, &conn).await,
        PushCommand::Get { name } => {
            conn.call(conn.admin().get_push_subscription(name_req(&name)))
                .await?
        }
        PushCommand::Create(_) => {
            let req = proto::CreatePushSubscriptionRequest {
                subscription: sub,
                prefix: String::new(),
            };
            conn.call(conn.admin().create_push_subscription(req))
                .await?
        }
        PushCommand::Pause { name } => set_state(&conn, name, proto::PushState::Paused).await?,
        PushCommand::Resume { name } => set_state(&conn, name, proto::PushState::Active).await?,
        PushCommand::Delete { name } => {
            let req = proto::DeletePushSubscriptionRequest {
                name: name.clone(),
                prefix: String::new(),
            };
            conn.call(conn.admin().delete_push_subscription(req))
                .await?;
            return Out::new().line(&format!("deleted {name}"));
        }
    };
    show_one(g, PushOut::of(one))
}

fn new_sub(a: &CreateArgs) -> Result<proto::PushSubscription, Failure> {
    let mut headers = std::collections::HashMap::new();
    for h in &a.headers {
        let Some((k, v)) = h.split_once('=') else {
            return Err(Failure::usage(format!("--header {h:?} is not NAME=VALUE")));
        };
        headers.insert(k.to_string(), v.to_string());
    }
    let start = a.from_beginning.then_some(proto::StartPosition {
        position: Some(proto::start_position::Position::Beginning(true)),
    });
    Ok(proto::PushSubscription {
        name: a.name.clone(),
        path: a.path.clone(),
        endpoint: a.endpoint.clone(),
        secrets: a.secrets.clone(),
        group: a.group.clone(),
        start,
        timeout: a
            .timeout
            .and_then(|t| prost_types::Duration::try_from(t).ok()),
        max_in_flight: a.max_in_flight,
        max_attempts: a.max_attempts,
        headers,
        ..Default::default()
    })
}

async fn set_state(
    conn: &Conn,
    name: String,
    state: proto::PushState,
) -> Result<proto::PushSubscription, Failure> {
    let req = proto::UpdatePushSubscriptionRequest {
        subscription: Some(proto::PushSubscription {
            name,
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    conn.call(conn.admin().update_push_subscription(req)).await
}

async fn list(g: &Global, conn: &Conn) -> Result<(), Failure> {
    let all = conn
        .call(
            conn.admin()
                .list_push_subscriptions(proto::ListPushSubscriptionsRequest::default()),
        )
        .await?;
    let subs: Vec<PushOut> = all.subscriptions.into_iter().map(PushOut::of).collect();
    let mut out = Out::new();
    if g.json {
        return out.json_pretty(&subs);
    }
    if subs.is_empty() {
        return out.line("no push subscriptions");
    }
    let rows = subs
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                show::clip(&s.path, 30),
                show::clip(&s.endpoint, 50),
                s.state.clone(),
                s.delivered.to_string(),
                s.failed.to_string(),
                s.dead_lettered.to_string(),
            ]
        })
        .collect();
    out.line(&show::table(
        &[
            "NAME",
            "PATH",
            "ENDPOINT",
            "STATE",
            "DELIVERED",
            "FAILED",
            "DLQ",
        ],
        &[4, 5, 6],
        rows,
    ))
}

fn show_one(g: &Global, s: PushOut) -> Result<(), Failure> {
    let mut out = Out::new();
    if g.json {
        return out.json_pretty(&s);
    }
    let facts = [
        ("name", s.name.clone()),
        ("path", s.path.clone()),
        ("group", s.group.clone()),
        ("endpoint", s.endpoint.clone()),
        ("state", s.state.clone()),
        ("reason", s.state_reason.clone()),
        (
            "secrets",
            format!("{} ({})", s.secret_count, s.secret_hints.join(", ")),
        ),
        ("max in flight", s.max_in_flight.to_string()),
        ("max attempts", s.max_attempts.to_string()),
        ("delivered", s.delivered.to_string()),
        ("failed", s.failed.to_string()),
        ("dead-lettered", s.dead_lettered.to_string()),
        (
            "created",
            s.created_at.clone().unwrap_or_else(|| "-".into()),
        ),
    ];
    for (k, v) in facts {
        out.line(&format!("{k:<14} {v}"))?;
    }
    Ok(())
}
