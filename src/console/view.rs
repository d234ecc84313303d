//! What the pages render: plain Rust values, converted from proto in
//! [`super::api`], so templates never see prost types.

use std::time::{Duration, SystemTime};

/// One row of the queues page.
#[derive(Debug, Clone)]
pub struct QueueRow {
    pub name: String,
    /// Paths leanmq-grpc has seen on this queue (LeanMQ records none).
    pub paths: Vec<String>,
    pub depth: i64,
    pub dead_letters: i64,
    /// `None` when the details could not be fetched (more queues than the
    /// page fetches details for).
    pub detail: Option<QueueTotals>,
    /// Per second over the last minute, on this replica.
    pub send_rate: f64,
    pub ack_rate: f64,
}

/// A queue's groups summed up, for the queues page.
#[derive(Debug, Clone, Default)]
pub struct QueueTotals {
    pub groups: usize,
    pub pending: i64,
    /// Summed over groups; `None` when Redis cannot tell for one of them.
    pub lag: Option<i64>,
    /// The oldest over groups.
    pub oldest_unacked: Option<Duration>,
    pub scheduled: i64,
}

/// The queue page.
#[derive(Debug, Clone)]
pub struct QueueDetail {
    pub name: String,
    pub stream: String,
    pub depth: i64,
    pub dead_letters: i64,
    pub scheduled: i64,
    pub delayed: i64,
    pub expired: i64,
    pub dropped: i64,
    pub created_at: Option<SystemTime>,
    pub groups: Vec<GroupRow>,
}

impl QueueDetail {
    pub fn totals(&self) -> QueueTotals {
        QueueTotals {
            groups: self.groups.len(),
            pending: self.groups.iter().map(|g| g.pending).sum(),
            lag: self
                .groups
                .iter()
                .map(|g| g.lag)
                .try_fold(0i64, |a, l| l.map(|l| a.saturating_add(l))),
            oldest_unacked: self.groups.iter().filter_map(|g| g.oldest_unacked).max(),
            scheduled: self.scheduled,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GroupRow {
    pub name: String,
    pub consumers: i64,
    pub pending: i64,
    /// `None` when Redis cannot tell.
    pub lag: Option<i64>,
    pub oldest_unacked: Option<Duration>,
    pub retrying: i64,
    pub last_delivered_id: String,
}

/// One dead letter, ready to show.
#[derive(Debug, Clone)]
pub struct DeadLetterView {
    pub id: String,
    /// Empty when LeanMQ dead-lettered it.
    pub original_id: String,
    pub path: String,
    pub content_type: String,
    /// Sorted by name.
    pub headers: Vec<(String, String)>,
    pub attempts: u32,
    pub last_reason: String,
    pub failures: Vec<FailureView>,
    pub first_failed_at: Option<SystemTime>,
    pub last_failed_at: Option<SystemTime>,
    pub payload: Preview,
    pub size: usize,
}

#[derive(Debug, Clone)]
pub struct FailureView {
    pub at: Option<SystemTime>,
    pub reason: String,
    pub attempts: u32,
    pub group: String,
}

/// How a payload is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preview {
    Empty,
    /// Pretty-printed JSON.
    Json {
        text: String,
        truncated: bool,
    },
    /// UTF-8 text.
    Text {
        text: String,
        truncated: bool,
    },
    /// A hex dump of the first bytes.
    Hex {
        dump: String,
        truncated: bool,
    },
}

/// Most characters of a JSON or text preview.
pub const PREVIEW_CHARS: usize = 64 * 1024;
/// Most bytes of a hex preview.
pub const HEX_BYTES: usize = 4096;

impl Preview {
    /// JSON when the content type says so or it parses as an object or
    /// array; text when it is UTF-8 without control characters (bar
    /// whitespace); a hex dump otherwise.
    pub fn of(payload: &[u8], content_type: &str) -> Preview {
        if payload.is_empty() {
            return Preview::Empty;
        }
        let jsonish = content_type.contains("json")
            || matches!(
                payload.iter().find(|b| !b.is_ascii_whitespace()),
                Some(b'{' | b'[')
            );
        if jsonish {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
                if let Ok(text) = serde_json::to_string_pretty(&v) {
                    let (text, truncated) = clip(text);
                    return Preview::Json { text, truncated };
                }
            }
        }
        if let Ok(s) = std::str::from_utf8(payload) {
            if !s
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
            {
                let (text, truncated) = clip(s.to_string());
                return Preview::Text { text, truncated };
            }
        }
        Preview::Hex {
            dump: hex_dump(&payload[..payload.len().min(HEX_BYTES)]),
            truncated: payload.len() > HEX_BYTES,
        }
    }
}

fn clip(mut s: String) -> (String, bool) {
    match s.char_indices().nth(PREVIEW_CHARS) {
        Some((at, _)) => {
            s.truncate(at);
            (s, true)
        }
        None => (s, false),
    }
}

/// `offset  hex bytes  |ascii|`, 16 bytes a line.
pub fn hex_dump(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 4 + 16);
    for (i, line) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}  ", i * 16);
        for j in 0..16 {
            match line.get(j) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
            if j == 7 {
                out.push(' ');
            }
        }
        out.push(' ');
        out.push('|');
        out.extend(line.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
    out
}

/// "1h 2m", "3m 4s", "5.2s", "120ms": short, for tables.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 {
        format!("{}d {}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else if s >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// RFC 3339 in UTC, to the second.
pub fn when(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A rate, per second, short.
pub fn rate(r: f64) -> String {
    if r <= 0.0 || !r.is_finite() {
        "0".into()
    } else if r < 10.0 {
        format!("{r:.2}")
    } else if r < 1000.0 {
        format!("{r:.0}")
    } else {
        format!("{:.1}k", r / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_pick_json_text_or_hex() {
        assert_eq!(
            Preview::of(br#"{"a":1}"#, "application/json"),
            Preview::Json {
                text: "{\n  \"a\": 1\n}".into(),
                truncated: false
            }
        );
        assert!(matches!(
            Preview::of(b"hello\nworld", ""),
            Preview::Text { .. }
        ));
        assert!(matches!(
            Preview::of(b"{not json", "application/json"),
            Preview::Text { .. }
        ));
        match Preview::of(&[0, 1, 2, 0xff], "") {
            Preview::Hex { dump, truncated } => {
                assert!(dump.starts_with("00000000  00 01 02 ff"), "{dump}");
                assert!(dump.ends_with("|....|\n"), "{dump}");
                assert!(!truncated);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Preview::of(&vec![0u8; HEX_BYTES + 1], ""),
            Preview::Hex {
                truncated: true,
                ..
            }
        ));
        assert_eq!(Preview::of(b"", ""), Preview::Empty);
    }

    #[test]
    fn long_text_is_clipped_on_a_char_boundary() {
        let s = "é".repeat(PREVIEW_CHARS + 10);
        match Preview::of(s.as_bytes(), "text/plain") {
            Preview::Text { text, truncated } => {
                assert!(truncated);
                assert_eq!(text.chars().count(), PREVIEW_CHARS);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn totals_sum_groups_and_unknown_lag_stays_unknown() {
        let g = |lag, age: u64| GroupRow {
            name: "g".into(),
            consumers: 1,
            pending: 2,
            lag,
            oldest_unacked: Some(Duration::from_secs(age)),
            retrying: 0,
            last_delivered_id: String::new(),
        };
        let mut q = QueueDetail {
            name: "q".into(),
            stream: "webhook:q".into(),
            depth: 0,
            dead_letters: 0,
            scheduled: 3,
            delayed: 0,
            expired: 0,
            dropped: 0,
            created_at: None,
            groups: vec![g(Some(1), 5), g(Some(2), 9)],
        };
        let t = q.totals();
        assert_eq!((t.groups, t.pending, t.lag), (2, 4, Some(3)));
        assert_eq!(t.oldest_unacked, Some(Duration::from_secs(9)));
        q.groups.push(g(None, 1));
        assert_eq!(q.totals().lag, None);
    }
}
