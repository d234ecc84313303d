//! `leanmq dlq ls|show|requeue|rm|purge`: inspect and repair a queue's
//! dead letters.
//!
//! `requeue --all` and `--since` take a snapshot of the DLQ's ids first and
//! then requeue them in batches: a message that fails again while this
//! runs goes back to the DLQ under a new id and is not picked up a second
//! time, and a large DLQ shows a progress bar on a terminal.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leanmq_grpc::proto;
use leanmq_grpc::proto::requeue_dead_letters_request::Selector;
use serde::Serialize;

use crate::conn::Conn;
use crate::fail::Failure;
use crate::show::{self, Out, Payload};
use crate::Global;

/// Largest page leanmqd serves.
const PAGE: u32 = 1000;
/// Dead letters per RequeueDeadLetters / DeleteDeadLetters call.
const CHUNK: usize = 500;
/// Most ids one `requeue`/`rm` takes on the command line or in a snapshot.
const MAX_IDS: usize = 1_000_000;

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    Ls {
        path: String,
        /// Show at most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        limit: u32,
    },
    /// One dead letter: its payload pretty-printed, headers, failures.
    Show { path: String, id: String },
    /// Move dead letters back to their queue (attempts start again at 1).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["ids", "all", "since"])))]
    Requeue {
        path: String,
        /// DLQ entry ids, as `dlq ls` shows them.
        ids: Vec<String>,
        /// Every dead letter now in the DLQ.
        #[arg(long)]
        all: bool,
        /// Those that failed at or after TIME: RFC 3339
        /// ("2026-12-03T10:00:00Z") or an age ("2h" = two hours ago).
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<SystemTime>,
    },
    /// Delete the given dead letters.
    Rm {
        path: String,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete every dead letter of a queue. Asks on a terminal; needs --yes
    /// otherwise.
    Purge {
        path: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

fn parse_since(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s.trim_end_matches('Z')) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(s)
        .map_err(|_| "expected an RFC 3339 time (2026-12-03T10:00:00Z) or an age (2h)")?;
    SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| "that is before 1970".to_string())
}

/// A stream entry id ("1732800000000-0") as (ms, seq), for ordering.
fn entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Ids as given, each checked, duplicates dropped (order kept).
fn checked_ids(ids: &[String]) -> Result<Vec<String>, Failure> {
    if ids.len() > MAX_IDS {
        return Err(Failure::usage(format!("at most {MAX_IDS} ids at once")));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for id in ids {
        if entry_id(id).is_none() {
            return Err(Failure::usage(format!(
                "{id:?} is not a dead-letter id (they look like 1732800000000-0; `leanmq dlq ls PATH` lists them)"
            )));
        }
        if seen.insert(id.as_str()) {
            out.push(id.clone());
        }
    }
    Ok(out)
}

#[derive(Serialize)]
struct FailureOut {
    at: Option<String>,
    reason: String,
    attempts: u32,
    group: String,
}

#[derive(Serialize)]
struct DeadLetterOut {
    id: String,
    original_message_id: String,
    path: String,
    payload: Payload,
    content_type: String,
    headers: BTreeMap<String, String>,
    attempts: u32,
    last_reason: String,
    first_failed_at: Option<String>,
    last_failed_at: Option<String>,
    failures: Vec<FailureOut>,
}

impl From<proto::DeadLetter> for DeadLetterOut {
    fn from(d: proto::DeadLetter) -> Self {
        DeadLetterOut {
            payload: Payload::of(&d.content_type, &d.payload),
            first_failed_at: show::time(d.first_failed_at.as_ref()),
            last_failed_at: show::time(d.last_failed_at.as_ref()),
            failures: d
                .failures
                .into_iter()
                .map(|f| FailureOut {
                    at: show::time(f.at.as_ref()),
                    reason: f.reason,
                    attempts: f.attempts,
                    group: f.group,
                })
                .collect(),
            headers: d.headers.into_iter().collect(),
            id: d.id,
            original_message_id: d.original_message_id,
            path: d.path,
            content_type: d.content_type,
            attempts: d.attempts,
            last_reason: d.last_reason,
        }
    }
}

pub async fn run(g: &Global, cmd: DlqCommand) -> Result<(), Failure> {
    match cmd {
        DlqCommand::Ls { path, limit } => ls(&Conn::open(g).await?, g.json, &path, limit).await,
        DlqCommand::Show { path, id } => {
            checked_ids(std::slice::from_ref(&id))?;
            show_one(&Conn::open(g).await?, g.json, &path, &id).await
        }
        DlqCommand::Requeue {
            path,
            ids,
            all,
            since,
        } => {
            let ids = checked_ids(&ids)?;
            let conn = Conn::open(g).await?;
            let ids = match (all, since) {
                (false, None) => ids,
                (_, since) => snapshot(&conn, &path, since).await?,
            };
            requeue(&conn, g.json, &path, ids).await
        }
        DlqCommand::Rm { path, ids } => {
            let ids = checked_ids(&ids)?;
            rm(&Conn::open(g).await?, g.json, &path, ids).await
        }
        DlqCommand::Purge { path, yes } => {
            let ask = !yes;
            if ask && !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
                return Err(Failure::usage(format!(
                    "dlq purge deletes every dead letter of {path}: pass --yes to confirm (no terminal to ask on)"
                )));
            }
            purge(&Conn::open(g).await?, g.json, &path, ask).await
        }
    }
}

async fn page(
    conn: &Conn,
    path: &str,
    size: u32,
    token: String,
) -> Result<proto::ListDeadLettersResponse, Failure> {
    let req = proto::ListDeadLettersRequest {
        path: path.into(),
        page_size: size,
        page_token: token,
        ..Default::default()
    };
    conn.call(conn.admin().list_dead_letters(req)).await
}

async fn ls(conn: &Conn, json: bool, path: &str, limit: u32) -> Result<(), Failure> {
    let mut letters = Vec::new();
    let mut token = String::new();
    let mut more = false;
    while letters.len() < limit as usize {
        let want = (limit - letters.len() as u32).min(PAGE);
        let resp = page(conn, path, want, token).await?;
        letters.extend(resp.dead_letters);
        token = resp.next_page_token;
        more = !token.is_empty();
        if !more {
            break;
        }
    }
    let mut out = Out::new();
    if json {
        let all: Vec<DeadLetterOut> = letters.into_iter().map(Into::into).collect();
        return out.json_pretty(&all);
    }
    if letters.is_empty() {
        return out.line("no dead letters");
    }
    let rows = letters
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.attempts.to_string(),
                show::time(d.last_failed_at.as_ref()).unwrap_or_else(|| "-".into()),
                show::clip(&d.last_reason, 40),
                show::clip(&show::payload_line(&d.content_type, &d.payload), 50),
            ]
        })
        .collect();
    out.line(&show::table(
        &["ID", "ATTEMPTS", "LAST FAILED", "REASON", "PAYLOAD"],
        &[1],
        rows,
    ))?;
    if more {
        eprintln!("more dead letters follow; raise --limit to see them");
    }
    Ok(())
}

/// Page through the DLQ (oldest first) until `id` is found or passed.
async fn find(conn: &Conn, path: &str, id: &str) -> Result<Option<proto::DeadLetter>, Failure> {
    let want = entry_id(id);
    let mut token = String::new();
    loop {
        let resp = page(conn, path, PAGE, token).await?;
        for d in resp.dead_letters {
            if d.id == id {
                return Ok(Some(d));
            }
            if entry_id(&d.id) > want {
                return Ok(None);
            }
        }
        if resp.next_page_token.is_empty() {
            return Ok(None);
        }
        token = resp.next_page_token;
    }
}

async fn show_one(conn: &Conn, json: bool, path: &str, id: &str) -> Result<(), Failure> {
    let Some(d) = find(conn, path, id).await? else {
        return Err(Failure::Partial(format!(
            "no dead letter {id} in the DLQ of {path} (NOT_FOUND); `leanmq dlq ls {path}` lists them"
        )));
    };
    let mut out = Out::new();
    if json {
        return out.json_pretty(&DeadLetterOut::from(d));
    }
    let facts = [
        ("id", d.id.clone()),
        ("original id", d.original_message_id.clone()),
        ("path", d.path.clone()),
        ("content type", d.content_type.clone()),
        ("attempts", d.attempts.to_string()),
        ("last reason", d.last_reason.clone()),
    ];
    for (k, v) in facts {
        out.line(&format!("{k:<13} {v}"))?;
    }
    out.line("headers")?;
    let headers: BTreeMap<_, _> = d.headers.iter().collect();
    for (k, v) in headers {
        out.line(&format!("  {k}: {v}"))?;
    }
    out.line("payload")?;
    for l in show::payload_pretty(&d.content_type, &d.payload).lines() {
        out.line(&format!("  {l}"))?;
    }
    out.line("failures")?;
    for f in &d.failures {
        let at = show::time(f.at.as_ref()).unwrap_or_else(|| "-".into());
        let group = if f.group.is_empty() { "-" } else { &f.group };
        out.line(&format!(
            "  {at}  attempts {}  group {group}  {}",
            f.attempts, f.reason
        ))?;
    }
    Ok(())
}

/// The ids in the DLQ now (those that failed at or after `since`, if set).
async fn snapshot(
    conn: &Conn,
    path: &str,
    since: Option<SystemTime>,
) -> Result<Vec<String>, Failure> {
    let since_ms = since.map_or(0, |t| {
        t.duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64
    });
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let resp = page(conn, path, PAGE, token).await?;
        ids.extend(
            resp.dead_letters
                .into_iter()
                .filter(|d| entry_id(&d.id).is_some_and(|(ms, _)| ms >= since_ms))
                .map(|d| d.id),
        );
        if resp.next_page_token.is_empty() || ids.len() >= MAX_IDS {
            return Ok(ids);
        }
        token = resp.next_page_token;
    }
}

#[derive(Serialize, Default)]
struct RequeueOut {
    requeued: Vec<RequeuedOut>,
    missing: Vec<String>,
}

#[derive(Serialize)]
struct RequeuedOut {
    dead_letter_id: String,
    message_id: String,
}

async fn requeue(conn: &Conn, json: bool, path: &str, ids: Vec<String>) -> Result<(), Failure> {
    let bar = (ids.len() > CHUNK)
        .then(|| show::progress(ids.len() as u64, "requeueing"))
        .flatten();
    let mut done = RequeueOut::default();
    for chunk in ids.chunks(CHUNK) {
        let req = proto::RequeueDeadLettersRequest {
            path: path.into(),
            selector: Some(Selector::Ids(proto::DeadLetterIds {
                ids: chunk.to_vec(),
            })),
            ..Default::default()
        };
        let resp = conn.call(conn.admin().requeue_dead_letters(req)).await?;
        done.requeued
            .extend(resp.requeued.into_iter().map(|r| RequeuedOut {
                dead_letter_id: r.dead_letter_id,
                message_id: r.message_id,
            }));
        done.missing.extend(resp.missing);
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut out = Out::new();
    if json {
        out.json_pretty(&done)?;
    } else {
        out.line(&format!(
            "requeued {} dead letters to {path}",
            done.requeued.len()
        ))?;
    }
    if done.missing.is_empty() {
        return Ok(());
    }
    Err(Failure::Partial(format!(
        "{} of the ids were not in the DLQ (already requeued or deleted): {}",
        done.missing.len(),
        show::clip(&done.missing.join(" "), 200)
    )))
}

async fn rm(conn: &Conn, json: bool, path: &str, ids: Vec<String>) -> Result<(), Failure> {
    let mut deleted = 0i64;
    for chunk in ids.chunks(CHUNK) {
        let req = proto::DeleteDeadLettersRequest {
            path: path.into(),
            ids: chunk.to_vec(),
            ..Default::default()
        };
        deleted += conn
            .call(conn.admin().delete_dead_letters(req))
            .await?
            .deleted;
    }
    let mut out = Out::new();
    if json {
        out.json(&serde_json::json!({ "deleted": deleted, "requested": ids.len() }))?;
    } else {
        out.line(&format!("deleted {deleted} dead letters of {path}"))?;
    }
    let missing = ids.len() as i64 - deleted;
    if missing > 0 {
        return Err(Failure::Partial(format!(
            "{missing} of the {} ids were not in the DLQ (already requeued or deleted)",
            ids.len()
        )));
    }
    Ok(())
}

async fn purge(conn: &Conn, json: bool, path: &str, ask: bool) -> Result<(), Failure> {
    if ask {
        let req = proto::GetQueueRequest {
            path: path.into(),
            ..Default::default()
        };
        let q = conn.call(conn.admin().get_queue(req)).await?;
        eprint!(
            "Delete all {} dead letters of {} for good? [y/N] ",
            q.dead_letters, q.queue
        );
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(|e| Failure::Io(format!("cannot read the answer: {e}")))?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(Failure::Partial(
                "not confirmed; nothing was deleted".into(),
            ));
        }
    }
    let req = proto::PurgeDeadLettersRequest {
        path: path.into(),
        ..Default::default()
    };
    let purged = conn
        .call(conn.admin().purge_dead_letters(req))
        .await?
        .purged;
    let mut out = Out::new();
    if json {
        return out.json(&serde_json::json!({ "purged": purged }));
    }
    out.line(&format!("purged {purged} dead letters of {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_deduplicated() {
        let ids = ["1-0".to_string(), "2-1".into(), "1-0".into()];
        assert_eq!(
            checked_ids(&ids).ok(),
            Some(vec!["1-0".into(), "2-1".into()])
        );
        assert!(checked_ids(&["1".into()]).is_err());
        assert!(checked_ids(&["a-b".into()]).is_err());
        assert!(entry_id("10-0") > entry_id("9-5"));
    }

    #[test]
    fn since_takes_a_time_or_an_age() {
        let t = parse_since("2026-12-03T10:00:00Z").ok();
        assert_eq!(
            t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            Some(1_796_292_000)
        );
        assert!(parse_since("2h").is_ok_and(|t| t < SystemTime::now()));
        assert!(parse_since("yesterday-ish").is_err());
    }
}
