//! `leanmqd`: parse and validate flags, start logging, start the embedded
//! Redis when no URL is given, serve until SIGINT/SIGTERM, drain, exit.

use std::process::ExitCode;

/// mimalloc: less time in malloc on the hot path than glibc's, and less
/// fragmentation for a long-running server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use leanmq_grpc::config::{Config, EXIT_CONFIG, EXIT_UNAVAILABLE};
use leanmq_grpc::embedded::EmbeddedRedis;
use leanmq_grpc::{server, shutdown};

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code as u8)
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
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("hash-token") {
        return hash_token();
    }
    if args.get(1).map(String::as_str) == Some("healthcheck") {
        let addr = match args.get(2) {
            Some(a) => a.clone(),
            None => default_health_addr(),
        };
        return healthcheck(&addr);
    }
    let cfg = match Config::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return exit(code);
        }
    };
    if let Err(e) = cfg.validate() {
        eprintln!("leanmqd: invalid configuration: {e}");
        return exit(EXIT_CONFIG);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leanmqd: cannot start the async runtime: {e}");
            return exit(EXIT_UNAVAILABLE);
        }
    };
    rt.block_on(run(cfg))
}

async fn run(cfg: Config) -> ExitCode {
    let _telemetry =
        match leanmq_grpc::telemetry::init(&cfg.log_format, cfg.otlp_endpoint.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("leanmqd: {e}");
                return exit(EXIT_CONFIG);
            }
        };
    let mut signals = match shutdown::Signals::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return exit(EXIT_UNAVAILABLE);
        }
    };
    if let Some(addr) = cfg.metrics_listen {
        if let Err(e) = leanmq_grpc::observe::install(addr) {
            tracing::error!("{e}");
            return exit(EXIT_UNAVAILABLE);
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
            Err(e) => {
                tracing::error!("{e}");
                return exit(EXIT_UNAVAILABLE);
            }
        },
    };
    let code = match server::start(&cfg, &url).await {
        Ok(running) => {
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
        Err(e) => {
            tracing::error!("{e}");
            exit(EXIT_UNAVAILABLE)
        }
    };
    if let Some(e) = embedded {
        e.stop().await;
    }
    tracing::info!("leanmqd stopped");
    code
}
