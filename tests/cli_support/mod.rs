//! Running the `leanmq` binary in tests: with none of the caller's
//! LEANMQ_* settings, stdin fed or closed, and its exit code, stdout and
//! stderr kept for assertions.
#![allow(dead_code)]

use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::common::{Leanmqd, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_leanmq");

/// What one run of `leanmq` did.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "stderr: {}", self.stderr);
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// Exit `code` with `needle` in the one-line error.
    pub fn fails(&self, code: i32, needle: &str) {
        assert_eq!(
            self.code,
            Some(code),
            "stdout: {} stderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "{needle:?} not in: {}",
            self.stderr
        );
    }
}

/// A `leanmq` command with none of the caller's LEANMQ_* settings.
pub fn command(addr: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    for v in [
        "LEANMQ_ADDR",
        "LEANMQ_TOKEN",
        "LEANMQ_CA",
        "LEANMQ_CERT",
        "LEANMQ_KEY",
        "LEANMQ_TIMEOUT",
    ] {
        c.env_remove(v);
    }
    c.env("LEANMQ_ADDR", addr).kill_on_drop(true);
    c
}

pub async fn finish(c: &mut tokio::process::Command, stdin: Option<&[u8]>) -> Run {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn leanmq");
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data).await.expect("write stdin");
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("leanmq exits in time")
        .expect("leanmq output");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub async fn leanmq(addr: &str, args: &[&str]) -> Run {
    finish(command(addr).args(args), None).await
}

pub async fn leanmq_stdin(addr: &str, args: &[&str], stdin: &[u8]) -> Run {
    finish(command(addr).args(args), Some(stdin)).await
}

pub fn http(d: &Leanmqd) -> String {
    format!("http://{}", d.addr)
}

/// Every line of NDJSON output, parsed.
pub fn ndjson(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
