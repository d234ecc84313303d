//! Logs (`RUST_LOG`, text or JSON) and, with `--otlp-endpoint`,
//! OpenTelemetry trace export over OTLP/gRPC. The export is compiled in by
//! the default `otlp` feature and costs nothing until the flag turns it on;
//! `--no-default-features` builds leave it out.
//!
//! Trace context: a Send's `traceparent` metadata becomes the message's
//! `traceparent` header (see `rpc::convert`), so the consumer continues the
//! producer's trace. With OTLP on, the broker's own span for the call is a
//! child of that context, so the trace shows producer → broker → consumer.

use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the exporter alive; flushes buffered spans when dropped.
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// True when this binary can export traces (the default `otlp` feature).
pub const OTLP_BUILT_IN: bool = cfg!(feature = "otlp");

/// Set once traces are exported: only then are per-call spans worth their
/// cost (a span with fields is formatted and tracked on every Send).
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True when an OTLP exporter is installed.
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Install the global subscriber. Must run inside the Tokio runtime (the
/// OTLP exporter's channel needs it).
pub fn init(format: &str, otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    #[cfg(feature = "otlp")]
    if let Some(endpoint) = otlp_endpoint {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("leanmqd")
                    .build(),
            )
            .build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let tracer = provider.tracer("leanmqd");
        registry
            .with(tracing_opentelemetry::layer().with_tracer(tracer))
            .try_init()
            .map_err(|e| e.to_string())?;
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
        return Ok(Telemetry {
            provider: Some(provider),
        });
    }
    if otlp_endpoint.is_some() {
        return Err(
            "--otlp-endpoint needs a leanmqd built with the `otlp` feature (a default one)".into(),
        );
    }
    registry.try_init().map_err(|e| e.to_string())?;
    Ok(Telemetry {
        #[cfg(feature = "otlp")]
        provider: None,
    })
}

/// Make `span` a child of the W3C `traceparent` a caller sent (no-op
/// without the `otlp` feature, where spans are only logs).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    #[cfg(feature = "otlp")]
    if let Some(tp) = traceparent {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let mut carrier = std::collections::HashMap::new();
        carrier.insert("traceparent".to_string(), sampled_only(tp));
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
        let _ = span.set_parent(cx);
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (span, traceparent);
}

/// `traceparent` with its flags cut to the sampled bit. The propagator
/// refuses version-00 flags above 2, but W3C Trace Context level 2 defines
/// 0x02 ("random trace id"), which OpenTelemetry's Python SDK sets: its
/// `...-03` would otherwise start a new trace instead of joining the
/// caller's. Input is already checked well-formed (`rpc::is_traceparent`).
#[cfg(feature = "otlp")]
fn sampled_only(tp: &str) -> String {
    match tp.rsplit_once('-') {
        Some((head, flags)) => match u8::from_str_radix(flags, 16) {
            Ok(f) => format!("{head}-{:02x}", f & 0x01),
            Err(_) => tp.to_string(),
        },
        None => tp.to_string(),
    }
}

#[cfg(all(test, feature = "otlp"))]
mod tests {
    #[test]
    fn flags_keep_only_the_sampled_bit() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
        assert_eq!(super::sampled_only(&format!("{t}-03")), format!("{t}-01"));
        assert_eq!(super::sampled_only(&format!("{t}-02")), format!("{t}-00"));
        assert_eq!(super::sampled_only(&format!("{t}-01")), format!("{t}-01"));
        assert_eq!(super::sampled_only(&format!("{t}-zz")), format!("{t}-zz"));
    }
}
