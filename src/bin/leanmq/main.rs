//! `leanmq`: the operator's command line for leanmqd.
//!
//! Every command is a thin shell over the gRPC API (`leanmq.v1.Broker`,
//! `leanmq.v1.Admin`, `grpc.health.v1`), through the client code generated
//! in [`leanmq_grpc::proto`]. Rooms:
//! - this file — the flags (clap), the dispatch and the exit code;
//! - [`conn`] — address, TLS, token and per-call timeout, one channel;
//! - [`fail`] — the one error type, its one-line message and exit code;
//! - [`show`] — how payloads, times, tables and progress bars are printed;
//! - [`send`], [`tail`], [`queues`], [`dlq`], [`push`], [`health`] — one module per
//!   command group.
//!
//! Exit codes: 0 ok, 1 refused by the server (or the thing asked for does
//! not exist), 2 usage, 3 leanmqd unreachable or unavailable.

mod conn;
mod dlq;
mod fail;
mod health;
mod push;
mod queues;
mod send;
mod show;
mod tail;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use fail::Failure;

/// The operator's command line for leanmqd: send, tail, inspect queues,
/// repair dead letters.
#[derive(Debug, Parser)]
#[command(name = "leanmq", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command shares. All but `--key` may also follow the
/// command; `--key` must come before it, because `leanmq send --key` is the
/// idempotency key.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// leanmqd's address; https:// means TLS. Without a scheme, http://
    /// (https:// when --ca, --cert or --key is given).
    #[arg(
        long,
        env = "LEANMQ_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,

    /// PEM CA bundle to verify leanmqd's certificate (default: the system's
    /// roots).
    #[arg(long, env = "LEANMQ_CA", value_name = "FILE", global = true)]
    pub ca: Option<std::path::PathBuf>,

    /// PEM client certificate, for a leanmqd that requires mTLS (with --key).
    #[arg(long, env = "LEANMQ_CERT", value_name = "FILE", global = true)]
    pub cert: Option<std::path::PathBuf>,

    /// PEM private key of --cert. Give it before the command.
    #[arg(long = "key", env = "LEANMQ_KEY", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Bearer token, sent as `authorization: Bearer <token>`. Prefer the
    /// environment variable: a flag shows in `ps`. Never printed.
    #[arg(long, env = "LEANMQ_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// Machine-readable output: JSON (NDJSON for `tail` and `send --lines`).
    /// JSON payloads appear as JSON, others as base64.
    #[arg(long, global = true)]
    pub json: bool,

    /// Longest wait for connecting and for each call (`500ms`, `10s`, `1m`);
    /// at most 1h.
    #[arg(long, env = "LEANMQ_TIMEOUT", default_value = "10s", value_parser = parse_timeout, global = true)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send one message (or, with --lines, one per line of stdin) and print
    /// its id.
    Send(send::SendArgs),
    /// Subscribe and print deliveries as they come.
    Tail(tail::TailArgs),
    /// Every queue: depth, groups, pending, lag, dead letters, scheduled.
    Queues,
    /// One queue in detail, group by group.
    Queue {
        /// A path ("/order/status") or a queue name ("order_status").
        path: String,
    },
    /// Inspect and repair a queue's dead letters.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Push subscriptions: POST each message to an HTTP endpoint (docs/push.md).
    #[command(subcommand)]
    Push(push::PushCommand),
    /// Ask leanmqd's gRPC health service whether it is serving.
    Health,
    /// Print a shell completion script (e.g. `leanmq completions bash >
    /// /etc/bash_completion.d/leanmq`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `--timeout`: a humantime duration, above zero, at most an hour.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 500ms, 10s, 1m)"))?;
    if d.is_zero() || d > Duration::from_secs(3600) {
        return Err("must be above 0 and at most 1h".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // clap prints usage errors and exits 2; --help and --version exit 0.
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leanmq: cannot start: {e}");
            return ExitCode::from(fail::EXIT_UNREACHABLE);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) | Err(Failure::StdoutClosed) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("leanmq: {f}");
            ExitCode::from(f.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // Each command checks its own input before it connects, so a usage
    // error is reported as one even when leanmqd is down.
    let g = &cli.global;
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "leanmq", &mut std::io::stdout());
            Ok(())
        }
        Command::Send(args) => send::run(g, args).await,
        Command::Tail(args) => tail::run(g, args).await,
        Command::Queues => queues::list(g).await,
        Command::Queue { path } => queues::one(g, &path).await,
        Command::Dlq(cmd) => dlq::run(g, cmd).await,
        Command::Push(cmd) => push::run(g, cmd).await,
        Command::Health => health::run(g).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts_are_bounded() {
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("2h").is_err());
        assert!(parse_timeout("soon").is_err());
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
    }
}
