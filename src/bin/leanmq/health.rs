//! `leanmq health`: leanmqd's gRPC health service (`grpc.health.v1`), for
//! the server as a whole and for the Broker service.

use serde::Serialize;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

use crate::conn::Conn;
use crate::fail::Failure;
use crate::show::Out;
use crate::Global;

/// The services leanmqd reports on: "" is the server as a whole.
const SERVICES: [&str; 2] = ["", "leanmq.v1.Broker"];

#[derive(Serialize)]
struct HealthOut<'a> {
    addr: &'a str,
    status: &'static str,
    services: Vec<ServiceOut>,
}

#[derive(Serialize)]
struct ServiceOut {
    service: &'static str,
    status: &'static str,
}

fn name(status: i32) -> &'static str {
    ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name())
}

pub async fn run(g: &Global) -> Result<(), Failure> {
    let conn = Conn::open(g).await?;
    let mut services = Vec::new();
    for service in SERVICES {
        let req = HealthCheckRequest {
            service: service.into(),
        };
        let resp = conn.call(conn.health().check(req)).await?;
        services.push(ServiceOut {
            service,
            status: name(resp.status),
        });
    }
    let serving = services.iter().all(|s| s.status == "SERVING");
    let status = services[0].status;
    let mut out = Out::new();
    if g.json {
        out.json(&HealthOut {
            addr: &conn.addr,
            status,
            services,
        })?;
    } else {
        for s in &services {
            let label = if s.service.is_empty() {
                "leanmqd"
            } else {
                s.service
            };
            out.line(&format!("{label:<17} {}", s.status))?;
        }
    }
    if serving {
        Ok(())
    } else {
        Err(Failure::Partial(format!(
            "leanmqd at {} is not serving; see its log (a drain or lost Redis)",
            conn.addr
        )))
    }
}
