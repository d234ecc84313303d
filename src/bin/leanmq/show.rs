//! How things are printed: payloads (JSON as JSON, other bytes as base64),
//! times (RFC 3339, UTC), ages, tables for people, and progress bars on a
//! terminal. Output goes through [`Out`], so a closed stdout is an error
//! rather than a panic.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use comfy_table::{presets, Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::fail::Failure;

/// A payload in `--json` output: the JSON itself when the content type
/// says JSON and it parses, else its bytes in standard base64.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Payload {
    Json(Box<RawValue>),
    Base64(String),
}

/// Does this content type say JSON ("application/json", with parameters,
/// or a "+json" suffix type)?
pub fn is_json_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

impl Payload {
    pub fn of(content_type: &str, bytes: &[u8]) -> Payload {
        if is_json_type(content_type) {
            if let Ok(text) = std::str::from_utf8(bytes) {
                // Raw CR/LF in valid JSON can only be whitespace (inside
                // strings they must be escaped), so replacing them keeps the
                // value byte for byte and the output on one line.
                let flat: String = text
                    .chars()
                    .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
                    .collect();
                if let Ok(raw) = RawValue::from_string(flat.trim().to_string()) {
                    return Payload::Json(raw);
                }
            }
        }
        Payload::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

/// A payload on one human line: compact JSON, plain text, or
/// `base64:...` for bytes that are not printable text.
pub fn payload_line(content_type: &str, bytes: &[u8]) -> String {
    if is_json_type(content_type) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
            return v.to_string();
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(t) if !t.chars().any(char::is_control) => t.to_string(),
        _ => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    }
}

/// A payload for a person reading one message: pretty JSON, text, or base64.
pub fn payload_pretty(content_type: &str, bytes: &[u8]) -> String {
    if is_json_type(content_type) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
            if let Ok(p) = serde_json::to_string_pretty(&v) {
                return p;
            }
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(t) if !t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => t.to_string(),
        _ => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    }
}

/// A timestamp as RFC 3339 UTC with milliseconds.
pub fn time(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let st = SystemTime::try_from(*ts?).ok()?;
    Some(humantime::format_rfc3339_millis(st).to_string())
}

/// A proto duration, as std.
pub fn duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    Duration::try_from(*d?).ok()
}

/// An age for people: whole seconds from a second on ("1h 2m 3s"),
/// milliseconds below.
pub fn age(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d < Duration::from_secs(1) => format!("{}ms", d.as_millis()),
        Some(d) => humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
    }
}

/// Shorten for a table cell, on a char boundary.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A borderless table, numbers right-aligned, in the style of kubectl.
pub fn table(header: &[&str], numeric: &[usize], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.iter().map(|h| Cell::new(*h)));
    for row in rows {
        t.add_row(row.into_iter().enumerate().map(|(i, c)| {
            let cell = Cell::new(c);
            if numeric.contains(&i) {
                cell.set_alignment(CellAlignment::Right)
            } else {
                cell
            }
        }));
    }
    for &i in numeric {
        if let Some(col) = t.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    // The borderless preset pads every cell; drop the outer padding.
    t.to_string()
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A progress bar on stderr when it is a terminal, for `len` items.
pub fn progress(len: u64, what: &str) -> Option<ProgressBar> {
    bar(len, what, "{msg} [{bar:40}] {pos}/{len} ({eta})")
}

/// A progress bar on stderr when it is a terminal, for `len` bytes.
pub fn progress_bytes(len: u64, what: &str) -> Option<ProgressBar> {
    bar(
        len,
        what,
        "{msg} [{bar:40}] {bytes}/{total_bytes} ({binary_bytes_per_sec}, {eta})",
    )
}

fn bar(len: u64, what: &str, template: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_string());
    Some(bar)
}

/// Standard output, locked once; a write that fails (a closed pipe)
/// becomes a [`Failure`] instead of a panic.
pub struct Out {
    inner: std::io::StdoutLock<'static>,
}

impl Out {
    pub fn new() -> Out {
        Out {
            inner: std::io::stdout().lock(),
        }
    }

    pub fn line(&mut self, s: &str) -> Result<(), Failure> {
        writeln!(self.inner, "{s}")
            .and_then(|_| self.inner.flush())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => Failure::StdoutClosed,
                _ => Failure::Io(format!("cannot write to stdout: {e}")),
            })
    }

    /// One value as one line of JSON.
    pub fn json<T: Serialize>(&mut self, v: &T) -> Result<(), Failure> {
        let s = serde_json::to_string(v)
            .map_err(|e| Failure::Io(format!("cannot encode the output as JSON: {e}")))?;
        self.line(&s)
    }

    /// One value as indented JSON, for a single document.
    pub fn json_pretty<T: Serialize>(&mut self, v: &T) -> Result<(), Failure> {
        let s = serde_json::to_string_pretty(v)
            .map_err(|e| Failure::Io(format!("cannot encode the output as JSON: {e}")))?;
        self.line(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_or_base64() {
        let j = Payload::of(
            "application/json; charset=utf-8",
            b"{\"a\":\n 10000000000000000000001}",
        );
        assert_eq!(
            serde_json::to_string(&j).ok().as_deref(),
            Some("{\"a\":  10000000000000000000001}")
        );
        let b = Payload::of("application/octet-stream", b"\x00\x01");
        assert_eq!(serde_json::to_string(&b).ok().as_deref(), Some("\"AAE=\""));
        let bad = Payload::of("application/json", b"{");
        assert!(matches!(bad, Payload::Base64(_)));
    }

    #[test]
    fn human_lines_stay_on_one_line() {
        assert_eq!(payload_line("application/json", b"{\"a\": 1}"), "{\"a\":1}");
        assert_eq!(payload_line("", b"hi there"), "hi there");
        assert_eq!(payload_line("", b"a\nb"), "base64:YQpi");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(age(Some(Duration::from_millis(1500))), "1s");
    }
}
