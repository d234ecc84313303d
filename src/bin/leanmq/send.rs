//! `leanmq send PATH [DATA]`: one message, or with `--lines` one per line
//! of stdin, sent in SendBatch calls with a progress bar on a terminal.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::time::Duration;

use bytes::Bytes;
use leanmq_grpc::proto;
use serde::Serialize;

use crate::conn::Conn;
use crate::fail::Failure;
use crate::show::{self, Out};
use crate::Global;

/// Largest DATA, file or line read: leanmqd's own ceiling for
/// `--max-payload-bytes`, so nothing larger could ever be accepted.
pub const MAX_DATA: u64 = 64 << 20;
/// A batch is sent once it holds this many payload bytes, to stay well
/// under leanmqd's request size limit (at least 32 MiB).
const BATCH_BYTES: usize = 4 << 20;

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Webhook path, e.g. /order/status.
    pub path: String,

    /// JSON text, @FILE, or - for stdin. Other text or bytes are sent as
    /// they are (application/octet-stream unless --content-type).
    #[arg(required_unless_present = "lines", conflicts_with = "lines")]
    pub data: Option<String>,

    /// MIME type of the payload (default: application/json when DATA parses
    /// as JSON).
    #[arg(long)]
    pub content_type: Option<String>,

    /// An application header, delivered unchanged (repeatable).
    #[arg(long = "header", value_name = "K=V", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,

    /// Idempotency key: a second send with the same key stores nothing.
    #[arg(long, conflicts_with = "lines")]
    pub key: Option<String>,

    /// Make the message visible only after this long (`30s`, `5m`, `2h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,

    /// Time to live: never delivered after this long (it goes to the DLQ).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,

    /// Read stdin as one message per line (blank lines skipped), sent in
    /// batches, each batch atomic.
    #[arg(long)]
    pub lines: bool,

    /// Messages per SendBatch with --lines.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err("expected K=V with a non-empty K".into()),
    }
}

/// What the server said about one message, for `--json`.
#[derive(Serialize)]
struct SentOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u64>,
    message_id: &'a str,
    duplicate: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    schedule_id: &'a str,
}

/// The parts of a SendRequest every message of one `send` shares.
struct Template {
    path: String,
    content_type: Option<String>,
    headers: HashMap<String, String>,
    ttl: Option<prost_types::Duration>,
    delay: Option<prost_types::Duration>,
    key: String,
}

impl Template {
    fn new(args: &SendArgs) -> Result<Template, Failure> {
        let mut headers = HashMap::new();
        for (k, v) in &args.headers {
            if headers.insert(k.clone(), v.clone()).is_some() {
                return Err(Failure::usage(format!("--header {k} is given twice")));
            }
        }
        let proto_dur =
            |d: Option<Duration>| d.and_then(|d| prost_types::Duration::try_from(d).ok());
        Ok(Template {
            path: args.path.clone(),
            content_type: args.content_type.clone(),
            headers,
            ttl: proto_dur(args.ttl),
            delay: proto_dur(args.delay),
            key: args.key.clone().unwrap_or_default(),
        })
    }

    fn request(&self, payload: Vec<u8>) -> Result<proto::SendRequest, String> {
        let content_type = content_type(self.content_type.as_deref(), &payload)?;
        Ok(proto::SendRequest {
            path: self.path.clone(),
            payload: Bytes::from(payload),
            content_type,
            headers: self.headers.clone(),
            ttl: self.ttl,
            delay: self.delay,
            deliver_at: None,
            idempotency_key: self.key.clone(),
            ..Default::default()
        })
    }
}

/// The content type to send: the one given (JSON checked here, so a typo
/// is caught before anything is sent), else application/json when the
/// payload parses as JSON. A payload that starts like JSON and does not
/// parse is refused rather than silently sent as bytes.
pub fn content_type(given: Option<&str>, payload: &[u8]) -> Result<String, String> {
    let parsed = serde_json::from_slice::<serde::de::IgnoredAny>(payload);
    match (given, parsed) {
        (Some(ct), Err(e)) if show::is_json_type(ct) => Err(format!(
            "DATA is not valid JSON ({e}), but --content-type is {ct}"
        )),
        (Some(ct), _) => Ok(ct.to_string()),
        (None, Ok(_)) => Ok("application/json".into()),
        (None, Err(e)) => {
            let first = payload.iter().find(|b| !b.is_ascii_whitespace());
            if matches!(first, Some(b'{') | Some(b'[')) {
                Err(format!(
                    "DATA starts like JSON but does not parse ({e}); fix it, or pass --content-type to send it as it is"
                ))
            } else {
                Ok(String::new())
            }
        }
    }
}

/// DATA: the text itself, `@file`, or `-` for stdin, at most [`MAX_DATA`].
fn read_data(data: &str) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    let (what, res) = if data == "-" {
        (
            "stdin",
            std::io::stdin()
                .lock()
                .take(MAX_DATA + 1)
                .read_to_end(&mut buf),
        )
    } else if let Some(file) = data.strip_prefix('@') {
        let f = std::fs::File::open(file)
            .map_err(|e| Failure::usage(format!("cannot read DATA file {file}: {e}")))?;
        ("the DATA file", f.take(MAX_DATA + 1).read_to_end(&mut buf))
    } else {
        return Ok(data.as_bytes().to_vec());
    };
    res.map_err(|e| Failure::usage(format!("cannot read {what}: {e}")))?;
    if buf.len() as u64 > MAX_DATA {
        return Err(Failure::usage(format!(
            "DATA from {what} is larger than {MAX_DATA} bytes, more than any leanmqd accepts"
        )));
    }
    Ok(buf)
}

pub async fn run(g: &Global, args: SendArgs) -> Result<(), Failure> {
    let template = Template::new(&args)?;
    if args.lines {
        return lines(
            &Conn::open(g).await?,
            &template,
            args.batch as usize,
            g.json,
        )
        .await;
    }
    let data = args.data.as_deref().unwrap_or_default();
    let req = template.request(read_data(data)?).map_err(Failure::Usage)?;
    let conn = Conn::open(g).await?;
    let resp = conn.call(conn.broker().send(req)).await?;
    let mut out = Out::new();
    if g.json {
        return out.json(&SentOut {
            line: None,
            message_id: &resp.message_id,
            duplicate: resp.duplicate,
            schedule_id: &resp.schedule_id,
        });
    }
    if resp.duplicate {
        eprintln!("duplicate: an earlier message had this key; nothing new was stored");
    }
    if resp.message_id.is_empty() {
        eprintln!("scheduled: it gets a message id when it becomes visible");
        return out.line(&resp.schedule_id);
    }
    out.line(&resp.message_id)
}

/// One line of stdin, without its line ending; None at the end.
fn next_line(input: &mut impl BufRead, n: u64) -> Result<Option<Vec<u8>>, Failure> {
    let mut buf = Vec::new();
    let read = input
        .take(MAX_DATA + 2)
        .read_until(b'\n', &mut buf)
        .map_err(|e| Failure::Io(format!("cannot read stdin at line {n}: {e}")))?;
    if read == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() as u64 > MAX_DATA {
        return Err(Failure::usage(format!(
            "line {n} is longer than {MAX_DATA} bytes, more than any leanmqd accepts"
        )));
    }
    Ok(Some(buf))
}

/// Size of stdin when it is a file, for a bar that measures bytes.
fn stdin_len() -> Option<u64> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    meta.is_file().then_some(meta.len())
}

/// A batch being filled: requests and the line number of each.
#[derive(Default)]
struct Batch {
    reqs: Vec<proto::SendRequest>,
    lines: Vec<u64>,
    bytes: usize,
}

async fn lines(conn: &Conn, t: &Template, batch: usize, json: bool) -> Result<(), Failure> {
    let bar = stdin_len()
        .and_then(|len| show::progress_bytes(len, "sending"))
        .or_else(|| show::progress(0, "sending").map(|b| b.with_style(spinner())));
    let mut out = Out::new();
    let mut input = std::io::stdin().lock();
    let (mut n, mut sent, mut pending) = (0u64, 0u64, Batch::default());
    loop {
        let line = next_line(&mut input, n + 1)?;
        if let Some(line) = &line {
            n += 1;
            if let Some(b) = &bar {
                b.inc(line.len() as u64 + 1);
            }
            if !line.is_empty() {
                let req = t.request(line.clone()).map_err(|e| {
                    Failure::usage(format!(
                        "line {n}: {e}; the {} messages before it were sent",
                        sent + pending.reqs.len() as u64
                    ))
                });
                let req = match req {
                    Ok(r) => r,
                    Err(e) => {
                        flush(conn, &mut pending, &mut out, json).await?;
                        return Err(e);
                    }
                };
                pending.bytes += req.payload.len();
                pending.reqs.push(req);
                pending.lines.push(n);
            }
        }
        let full = pending.reqs.len() >= batch || pending.bytes >= BATCH_BYTES;
        if full || (line.is_none() && !pending.reqs.is_empty()) {
            sent += flush(conn, &mut pending, &mut out, json)
                .await
                .map_err(|e| after(e, sent))?;
            if let Some(b) = &bar {
                b.set_message(format!("sent {sent}"));
            }
        }
        if line.is_none() {
            break;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if !json {
        eprintln!("sent {sent} messages to {}", t.path);
    }
    Ok(())
}

fn spinner() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

/// Say how far a `--lines` send got before a refusal.
fn after(f: Failure, sent: u64) -> Failure {
    match f {
        Failure::Refused { code, message } => Failure::Refused {
            code,
            message: format!(
                "{message} (the {sent} messages before this batch were sent; nothing of it was)"
            ),
        },
        other => other,
    }
}

/// Send what `pending` holds as one SendBatch, print each result.
async fn flush(
    conn: &Conn,
    pending: &mut Batch,
    out: &mut Out,
    json: bool,
) -> Result<u64, Failure> {
    let b = std::mem::take(pending);
    if b.reqs.is_empty() {
        return Ok(0);
    }
    let req = proto::SendBatchRequest { messages: b.reqs };
    let resp = conn.call(conn.broker().send_batch(req)).await?;
    for (r, line) in resp.results.iter().zip(b.lines) {
        if json {
            out.json(&SentOut {
                line: Some(line),
                message_id: &r.message_id,
                duplicate: r.duplicate,
                schedule_id: &r.schedule_id,
            })?;
        } else if r.message_id.is_empty() {
            out.line(&r.schedule_id)?;
        } else {
            out.line(&r.message_id)?;
        }
    }
    Ok(resp.results.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_follow_the_data() {
        assert_eq!(
            content_type(None, b"{\"a\":1}").as_deref(),
            Ok("application/json")
        );
        assert_eq!(content_type(None, b"42").as_deref(), Ok("application/json"));
        assert_eq!(content_type(None, b"hello").as_deref(), Ok(""));
        assert!(content_type(None, b" {\"a\":").is_err());
        assert!(content_type(Some("application/json"), b"nope").is_err());
        assert_eq!(
            content_type(Some("text/plain"), b"{").as_deref(),
            Ok("text/plain")
        );
    }

    #[test]
    fn headers_and_lines_parse() {
        assert_eq!(parse_header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_header("=x").is_err());
        assert!(parse_header("novalue").is_err());
        let mut input: &[u8] = b"one\r\ntwo\n\nlast";
        let mut got = Vec::new();
        while let Ok(Some(l)) = next_line(&mut input, 1) {
            got.push(String::from_utf8_lossy(&l).to_string());
        }
        assert_eq!(got, ["one", "two", "", "last"]);
    }
}
