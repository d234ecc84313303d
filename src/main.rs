//! `leanmqd`: parse and validate flags, start logging, start the embedded
//! Redis when no URL is given, serve until SIGINT/SIGTERM, drain, exit.

use std::process::ExitCode;

/// mimalloc: less time in malloc on the hot path than glibc's, and less
/// fragmentation for a long-running server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use leanmq_grpc::config::{Config, StartupError, EXIT_CONFIG};
use leanmq_grpc::embedded::EmbeddedRedis;
use leanmq_grpc::{server, shutdown};

/// leanmqd: LeanMQ's webhook pattern as a gRPC broker on Redis Streams.
/// Without a subcommand it serves, configured by the flags below.
#[derive(Parser)]
#[command(
    name = "leanmqd",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Tool>,
    #[command(flatten)]
    serve: Config,
}

/// Helpers shipped in the same binary, so an image needs nothing else.
#[derive(Subcommand)]
enum Tool {
    /// Read a token on stdin and print the hash the --auth-tokens file
    /// stores for it (`sha256:<hex>`).
    HashToken,
    /// Exit 0 when the leanmqd at ADDR reports SERVING over gRPC health,
    /// 1 otherwise (for container HEALTHCHECKs).
    Healthcheck {
        /// host:port to probe; default $LEANMQ_HEALTH_LISTEN, else
        /// $LEANMQ_LISTEN, else 127.0.0.1:50051.
        addr: Option<String>,
    },
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code as u8)
}

/// Log a start-up error (through tracing once it is up) and give its code.
fn failed(e: &StartupError) -> ExitCode {
    tracing::error!("{e}");
    exit(e.exit_code())
}

/// `leanmqd healthcheck [ADDR]`: exit 0 when the leanmqd at ADDR (default:
/// `$LEANMQ_HEALTH_LISTEN`, else `$LEANMQ_LISTEN`, else 127.0.0.1:50051) reports SERVING over gRPC health, 1 otherwise. For
/// container HEALTHCHECKs, with no extra probe binary in the image.
fn healthcheck(addr: &str) -> ExitCode {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::FAILURE;
    };
    let serving = rt.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).ok()?;
        let channel = tokio::time::timeout(std::time::Duration::from_secs(3), endpoint.connect())
            .await
            .ok()?
            .ok()?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let req = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        let resp = tokio::time::timeout(std::time::Duration::from_secs(3), client.check(req))
            .await
            .ok()?
            .ok()?;
        Some(
            resp.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
        )
    });
    if serving == Some(true) {
        ExitCode::SUCCESS
    } else {
        eprintln!("leanmqd at {addr} is not serving");
        ExitCode::FAILURE
    }
}

/// Where `leanmqd healthcheck` looks without an address: the plaintext
/// health port when one is configured (the main port may need TLS or a
/// token), else the main port; a wildcard host means this machine.
fn default_health_addr() -> String {
    let at = std::env::var("LEANMQ_HEALTH_LISTEN")
        .or_else(|_| std::env::var("LEANMQ_LISTEN"))
        .unwrap_or_else(|_| "127.0.0.1:50051".into());
    match at.parse::<std::net::SocketAddr>() {
        Ok(mut a) if a.ip().is_unspecified() => {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            a.to_string()
        }
        _ => at,
    }
}

/// `leanmqd hash-token`: read a token on stdin, print the form the tokens
/// file stores (`sha256:<hex>`). The token never needs to be written down
/// anywhere leanmqd reads.
fn hash_token() -> ExitCode {
    use std::io::Read;
    let mut token = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut token) {
        eprintln!("leanmqd hash-token: cannot read stdin: {e}");
        return exit(EXIT_CONFIG);
    }
    let token = token.trim_end_matches(['\n', '\r']);
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        eprintln!("leanmqd hash-token: give one token on stdin, without spaces");
        return exit(EXIT_CONFIG);
    }
    println!("{}", leanmq_grpc::auth::hash_token(token));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return exit(code);
        }
    };
    let cfg = match cli.command {
        Some(Tool::HashToken) => return hash_token(),
        Some(Tool::Healthcheck { addr }) => {
            return healthcheck(&addr.unwrap_or_else(default_health_addr))
        }
        None => cli.serve,
    };
    // Before logging is set up, errors go to stderr as they are.
    let runtime = cfg.validate().and_then(|()| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(StartupError::Runtime)
    });
    match runtime {
        Ok(rt) => rt.block_on(run(cfg)),
        Err(e) => {
            eprintln!("leanmqd: {e}");
            exit(e.exit_code())
        }
    }
}

async fn run(cfg: Config) -> ExitCode {
    let _telemetry =
        match leanmq_grpc::telemetry::init(&cfg.log_format, cfg.otlp_endpoint.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                let e = StartupError::Telemetry(e);
                eprintln!("leanmqd: {e}");
                return exit(e.exit_code());
            }
        };
    let mut signals = match shutdown::Signals::install() {
        Ok(s) => s,
        Err(e) => return failed(&StartupError::Signals(e)),
    };
    if let Some(addr) = cfg.metrics_listen {
        if let Err(e) = leanmq_grpc::observe::install(addr) {
            return failed(&StartupError::Metrics(e));
        }
        tracing::info!(%addr, "metrics at /metrics");
    }
    let (embedded, url) = match &cfg.redis_url {
        Some(url) => (None, url.clone()),
        None => match EmbeddedRedis::start(&cfg.redis_server_bin, &cfg.data_dir).await {
            Ok(e) => {
                let url = e.url.clone();
                (Some(e), url)
            }
            Err(e) => return failed(&e.into()),
        },
    };
    let code = match server::start(&cfg, &url).await {
        Ok(running) => serve(running, &mut signals).await,
        Err(e) => failed(&e.into()),
    };
    if let Some(e) = embedded {
        e.stop().await;
    }
    tracing::info!("leanmqd stopped");
    code
}

/// Serve until SIGINT/SIGTERM, reloading on SIGHUP; then drain.
async fn serve(running: server::Running, signals: &mut shutdown::Signals) -> ExitCode {
    while signals.recv().await == shutdown::SignalEvent::Reload {
        match running.reload() {
            Ok(()) => tracing::info!("reload done"),
            Err(e) => tracing::error!("reload failed, keeping what was in force: {e}"),
        }
    }
    match running.stop().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
