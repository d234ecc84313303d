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

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
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
    init_logging(&cfg.log_format);
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
            shutdown::signal().await;
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
