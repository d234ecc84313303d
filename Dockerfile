# syntax=docker/dockerfile:1
# Build: docker build -t leanmqd .
# Run:   docker run -p 50051:50051 -e LEANMQ_REDIS_URL=redis://redis:6379 leanmqd
#        (traces: -e LEANMQ_OTLP_ENDPOINT=http://otel-collector:4317)

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
# The workspace's other member must be present for cargo to resolve it.
COPY bench ./bench
# Default features: OTLP trace export is built in, on with LEANMQ_OTLP_ENDPOINT.
RUN cargo build --release --locked -p leanmq-grpc --bin leanmqd \
 && strip target/release/leanmqd

FROM debian:bookworm-slim
# redis-server only serves the embedded mode (no LEANMQ_REDIS_URL).
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/leanmqd leanmq
COPY --from=build /src/target/release/leanmqd /usr/local/bin/leanmqd
USER 10001:10001
WORKDIR /var/lib/leanmqd
ENV LEANMQ_LISTEN=0.0.0.0:50051 \
    LEANMQ_DATA_DIR=/var/lib/leanmqd/data \
    LEANMQ_LOG_FORMAT=json
EXPOSE 50051
VOLUME ["/var/lib/leanmqd"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/leanmqd", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/leanmqd"]
