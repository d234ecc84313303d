//! OTLP export (the default `otlp` feature): a Send carrying `traceparent` shows up
//! at a collector as a `leanmq.send` span in the caller's trace.
#![cfg(feature = "otlp")]

mod common;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::sync::mpsc;

/// A collector that forwards every exported span: (name, trace id, parent id).
struct Collector(mpsc::UnboundedSender<(String, Vec<u8>, Vec<u8>)>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let _ = self.0.send((s.name, s.trace_id, s.parent_span_id));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn a_send_joins_the_callers_trace_at_the_collector() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let redis = RedisProc::start();
    let endpoint = format!("http://{collector}");
    let (mut child, port) = spawn_leanmqd(&redis.url(), &["--otlp-endpoint", &endpoint]);
    let mut c = connect_when_up(port).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(bytes_send("/traced", b"x"));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-{parent}-01").parse().expect("ascii"),
    );
    c.send(req).await.expect("send");
    // W3C level 2's "random" flag (0x02), as OpenTelemetry's Python SDK
    // sends it, must not break the trace either.
    let random = "4bf92f3577b34da6a3ce929d0e0e4737";
    let mut req = tonic::Request::new(bytes_send("/traced-random", b"x"));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{random}-{parent}-03").parse().expect("ascii"),
    );
    c.send(req).await.expect("send");

    // SIGTERM: leanmqd drains and flushes its spans on the way out.
    let pid = child.id().expect("pid") as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().await.expect("exit");
    assert!(status.success());
    let mut found = Vec::new();
    while let Ok((name, t, p)) = rx.try_recv() {
        if name == "leanmq.send" {
            found.push((hex(&t), hex(&p)));
        }
    }
    found.sort();
    assert_eq!(
        found,
        vec![
            (trace.to_string(), parent.to_string()),
            (random.to_string(), parent.to_string())
        ],
        "each send span continues its caller's trace"
    );
}
