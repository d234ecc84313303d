//! leanmq-bench: leanmqd against its baselines, measured in the same run.
//!
//! It starts its own `redis-server`, a release `leanmqd`, and a no-op tonic
//! server (this binary, `noop-server`), each a separate process so that CPU
//! per message can be read per process from /proc. Every scenario prints its
//! figure next to a baseline measured moments before, as a ratio, because the
//! machine is shared and noisy; absolute numbers are for context only.
//!
//! Usage: leanmq-bench [--short] [--only unary,batch,publish,drain,ordered,push,ack,e2e,idle] [--out DIR]
//! (LEANMQD=path to the server binary)

mod ordered;
mod procs;
mod publish;
mod push;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use leanmq_grpc::proto;
use tonic::{Request, Response, Status};

/// A `Broker` that does nothing: the cost of tonic itself.
struct Noop;

#[tonic::async_trait]
impl proto::broker_server::Broker for Noop {
    async fn send(
        &self,
        _r: Request<proto::SendRequest>,
    ) -> Result<Response<proto::SendResponse>, Status> {
        Ok(Response::new(proto::SendResponse::default()))
    }
    async fn send_batch(
        &self,
        _r: Request<proto::SendBatchRequest>,
    ) -> Result<Response<proto::SendBatchResponse>, Status> {
        Ok(Response::new(proto::SendBatchResponse::default()))
    }
    type PublishStream = futures::stream::Empty<Result<proto::PublishResponse, Status>>;
    async fn publish(
        &self,
        _r: Request<tonic::Streaming<proto::PublishRequest>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        Ok(Response::new(futures::stream::empty()))
    }
    type SubscribeStream = futures::stream::Empty<Result<proto::Delivery, Status>>;
    async fn subscribe(
        &self,
        _r: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Ok(Response::new(futures::stream::empty()))
    }
    async fn receive(
        &self,
        _r: Request<proto::ReceiveRequest>,
    ) -> Result<Response<proto::ReceiveResponse>, Status> {
        Ok(Response::new(proto::ReceiveResponse::default()))
    }
    async fn ack(
        &self,
        _r: Request<proto::AckRequest>,
    ) -> Result<Response<proto::AckResponse>, Status> {
        Ok(Response::new(proto::AckResponse::default()))
    }
    async fn nack(
        &self,
        _r: Request<proto::NackRequest>,
    ) -> Result<Response<proto::NackResponse>, Status> {
        Ok(Response::new(proto::NackResponse::default()))
    }
    async fn extend(
        &self,
        _r: Request<proto::ExtendRequest>,
    ) -> Result<Response<proto::ExtendResponse>, Status> {
        Ok(Response::new(proto::ExtendResponse::default()))
    }
}

async fn noop_server(listen: &str) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| e.to_string())?;
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(proto::broker_server::BrokerServer::new(Noop))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
        .map_err(|e| e.to_string())
}

/// How long and how wide to run.
#[derive(Clone, Copy)]
pub struct Mode {
    pub short: bool,
    /// Run only these scenario groups (unary, batch, publish, drain, ordered, push, ack, e2e, idle); empty: all.
    pub only: &'static [String],
    /// Length of one throughput measurement.
    pub window: Duration,
}

const USAGE: &str =
    "usage: leanmq-bench [--short] [--only unary,batch,publish,drain,ordered,push,ack,e2e,idle] [--out DIR]
       leanmq-bench noop-server [ADDR]
env:   LEANMQD=path to the leanmqd binary (default: target/release/leanmqd)";

/// The scenario groups `--only` accepts.
const GROUPS: [&str; 9] = [
    "unary", "batch", "publish", "drain", "ordered", "push", "ack", "e2e", "idle",
];

/// Rejects what the benchmark would otherwise ignore, so that a typo (or
/// `--help`) never starts a ten-minute run. `Err("")` asks for the usage.
fn check_args(args: &[String]) -> Result<(), String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--short" => {}
            "-h" | "--help" => return Err(String::new()),
            "--out" => {
                it.next().ok_or("--out needs a directory")?;
            }
            "--only" => {
                let list = it.next().ok_or("--only needs a list of groups")?;
                if let Some(bad) = list.split(',').find(|g| !GROUPS.contains(g)) {
                    return Err(format!("--only: unknown group {bad:?}"));
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    if args.get(1).map(String::as_str) == Some("noop-server") {
        let listen = args.get(2).cloned().unwrap_or_else(|| "127.0.0.1:0".into());
        if let Err(e) = rt.block_on(noop_server(&listen)) {
            eprintln!("noop-server: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(msg) = check_args(&args[1..]) {
        if msg.is_empty() {
            println!("{USAGE}");
            std::process::exit(0);
        }
        eprintln!("leanmq-bench: {msg}\n{USAGE}");
        std::process::exit(64);
    }
    let short = args.iter().any(|a| a == "--short");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench"));
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let mode = Mode {
        short,
        only: Box::leak(only.into_boxed_slice()),
        window: if short {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(5)
        },
    };
    match rt.block_on(scenarios::run_all(mode, &out)) {
        Ok(failures) if failures.is_empty() => {}
        Ok(failures) => {
            for f in failures {
                eprintln!("FAILED: {f}");
            }
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("leanmq-bench: {e}");
            std::process::exit(1);
        }
    }
}
