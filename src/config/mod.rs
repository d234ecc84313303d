//! Command-line flags (each with a `LEANMQ_*` environment twin), validated
//! before anything binds. Invalid configuration exits with code 64
//! (EX_USAGE), as linkerd2-proxy does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}

/// Exit code for configuration errors (sysexits EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;
/// Exit code when a required service cannot be started (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = 69;

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m)"))
}

/// leanmqd: LeanMQ's webhook pattern as a gRPC broker on Redis Streams.
#[derive(Debug, Clone, Parser)]
#[command(name = "leanmqd", version, about)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "LEANMQ_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Redis to use (redis://, rediss://, redis+unix://, or
    /// redis+cluster://host:port[,host:port…] for Redis Cluster,
    /// redis+sentinel://[user:pass@]host:port[,host:port…]/master for Sentinel). Without it leanmqd
    /// starts and supervises its own `redis-server` child (AOF on) with its
    /// data in --data-dir.
    #[arg(long, env = "LEANMQ_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Data directory of the embedded redis-server (used only without --redis-url).
    #[arg(long, env = "LEANMQ_DATA_DIR", default_value = "leanmqd-data")]
    pub data_dir: PathBuf,

    /// The redis-server binary for the embedded mode.
    #[arg(long, env = "LEANMQ_REDIS_SERVER_BIN", default_value = "redis-server")]
    pub redis_server_bin: PathBuf,

    /// Key prefix served; repeat to serve several (LeanMQWebhook uses
    /// "webhook:", LeanMQ "mq:"). The first is the default for requests
    /// that name none. The env twin takes a comma-separated list.
    #[arg(long, env = "LEANMQ_PREFIX", default_value = "webhook:", value_delimiter = ',', action = clap::ArgAction::Append)]
    pub prefix: Vec<String>,

    /// Largest accepted payload, in bytes.
    #[arg(long, env = "LEANMQ_MAX_PAYLOAD_BYTES", default_value_t = 1 << 20)]
    pub max_payload_bytes: usize,

    /// Most messages in one SendBatch.
    #[arg(long, env = "LEANMQ_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,

    /// Most messages a Publish stream may have unanswered; past it the
    /// stream is not read (HTTP/2 flow control holds the client).
    #[arg(long, env = "LEANMQ_PUBLISH_WINDOW", default_value_t = 1000)]
    pub publish_window: usize,

    /// Deliveries per message before it moves to the DLQ.
    #[arg(long, env = "LEANMQ_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,

    /// Shortest retry backoff after a Nack without delay.
    #[arg(long, env = "LEANMQ_RETRY_MIN", default_value = "1s", value_parser = parse_duration)]
    pub retry_min: Duration,

    /// Longest retry backoff after a Nack without delay.
    #[arg(long, env = "LEANMQ_RETRY_MAX", default_value = "5m", value_parser = parse_duration)]
    pub retry_max: Duration,

    /// Lease length when a client gives no ack_deadline.
    #[arg(long, env = "LEANMQ_ACK_DEADLINE", default_value = "30s", value_parser = parse_duration)]
    pub ack_deadline: Duration,

    /// A pending entry not leased by leanmq-grpc (e.g. held by a crashed
    /// LeanMQ Python worker) is reclaimed after being idle this long.
    #[arg(long, env = "LEANMQ_ORPHAN_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub orphan_timeout: Duration,

    /// How long an idempotency key is remembered per queue.
    #[arg(long, env = "LEANMQ_DEDUP_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub dedup_window: Duration,

    /// Acked entries (acked by every group, pending nowhere) are kept this
    /// long for replay and inspection, then trimmed. Unacked entries are
    /// never trimmed by this. "0s" trims acked entries at the next sweep.
    #[arg(long, env = "LEANMQ_RETENTION_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub retention_max_age: Duration,

    /// How often the retention sweep runs.
    #[arg(long, env = "LEANMQ_RETENTION_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// A consumer group with nothing pending whose consumers have all been
    /// idle this long is removed by the retention sweep, freeing what it
    /// held back. Never LeanMQ's own groups ({queue}-group and its DLQ's
    /// {queue}-group-dlq). "0s": never.
    #[arg(long, env = "LEANMQ_GROUP_IDLE_EXPIRY", default_value = "31days", value_parser = parse_duration)]
    pub group_idle_expiry: Duration,

    /// Most consumer groups on one queue besides LeanMQ's default group;
    /// a Subscribe or Receive that would make one more is RESOURCE_EXHAUSTED.
    #[arg(long, env = "LEANMQ_MAX_GROUPS_PER_QUEUE", default_value_t = crate::broker::limits::DEFAULT_MAX_GROUPS_PER_QUEUE)]
    pub max_groups_per_queue: u32,

    /// Most queues in all; a Send, SendBatch, Subscribe or Receive that
    /// would create one more is RESOURCE_EXHAUSTED.
    #[arg(long, env = "LEANMQ_MAX_QUEUES", default_value_t = crate::broker::limits::DEFAULT_MAX_QUEUES)]
    pub max_queues: u64,

    /// Let every path spelling use a queue, as LeanMQ does (`/order-status`
    /// and `/order/status` both map to `order_status`). Off: the first path
    /// that creates a queue owns it, and other spellings are
    /// FAILED_PRECONDITION.
    #[arg(long, env = "LEANMQ_ALLOW_COLLIDING_PATHS")]
    pub allow_colliding_paths: bool,

    /// Opt-in hard cap on stream length. LOSES DATA: the oldest entries go,
    /// read or not. Counted (GetQueue `dropped`) and logged as a warning.
    #[arg(long, env = "LEANMQ_MAX_LEN")]
    pub max_len: Option<u64>,

    /// How long a SIGTERM/SIGINT drain may take before leanmqd exits anyway.
    #[arg(long, env = "LEANMQ_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How long to wait for any Redis reply before answering UNAVAILABLE.
    #[arg(long, env = "LEANMQ_REDIS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// Replicas that must acknowledge a Send or SendBatch (Redis `WAIT`)
    /// before it is answered OK; fewer within --wait-timeout is UNAVAILABLE
    /// (the message is stored on the primary; a retry with the same
    /// idempotency key stores nothing new and waits again). 0: no wait.
    #[arg(long, env = "LEANMQ_WAIT_REPLICAS", default_value_t = 0)]
    pub wait_replicas: u32,

    /// Confirm writes with Redis 7.2's `WAITAOF 1 N` instead of `WAIT N`:
    /// fsynced to the primary's AOF and to N replicas' (N from
    /// --wait-replicas / --wait-replicas-for, 0: the primary's alone).
    /// Needs Redis >= 7.2 with appendonly on; refused at startup otherwise.
    #[arg(long, env = "LEANMQ_WAIT_AOF")]
    pub wait_aof: bool,

    /// Per path or prefix, PATTERN=N: a path, a pattern as in subscriptions
    /// and grants (`/orders/>`, `/t/*`) or `prefix:NAME` for a served key
    /// prefix. The most specific match wins, else --wait-replicas.
    /// Repeatable (or comma-separated), at most 256.
    #[arg(long, env = "LEANMQ_WAIT_REPLICAS_FOR", value_delimiter = ',', action = clap::ArgAction::Append)]
    pub wait_replicas_for: Vec<String>,

    /// How long a Send waits for --wait-replicas acknowledgements: more
    /// than zero, at most 60s, and below --redis-timeout (the WAIT's reply
    /// must arrive within the reply timeout).
    #[arg(long, env = "LEANMQ_WAIT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub wait_timeout: Duration,

    /// Shared, pipelined Redis connections for Send/Ack/Nack/Extend traffic.
    #[arg(long, env = "LEANMQ_REDIS_LANES", default_value_t = 4)]
    pub redis_lanes: usize,

    /// Serve Prometheus metrics at http://ADDR/metrics (off when unset).
    #[arg(long, env = "LEANMQ_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Also serve gRPC health alone, in plaintext and without auth, on this
    /// address: for Kubernetes probes and load balancers, which can present
    /// neither a token nor a client certificate.
    #[arg(long, env = "LEANMQ_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Serve gRPC over TLS with this PEM certificate chain (needs --tls-key).
    /// SIGHUP re-reads it without dropping open connections.
    #[arg(long, env = "LEANMQ_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "LEANMQ_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this PEM CA bundle (mTLS).
    #[arg(long, env = "LEANMQ_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// TOML file of bearer-token hashes and their per-path grants. Without
    /// it auth is off (a warning is logged). SIGHUP re-reads it.
    #[arg(long, env = "LEANMQ_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,

    /// Largest total size of one message's headers (names + values), in bytes.
    #[arg(long, env = "LEANMQ_MAX_HEADERS_BYTES", default_value_t = 16 << 10)]
    pub max_headers_bytes: usize,

    /// Most Subscribe streams open at once on one client connection.
    #[arg(
        long,
        env = "LEANMQ_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 1024
    )]
    pub max_streams_per_connection: usize,

    /// Most unary calls in flight on this replica; more are shed at once
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "LEANMQ_MAX_CONCURRENT_RPCS", default_value_t = 10_000)]
    pub max_concurrent_rpcs: usize,

    /// Most Receives with a `wait` open at once on one client connection.
    /// Waits are not counted among --max-concurrent-rpcs.
    #[arg(
        long,
        env = "LEANMQ_MAX_LONG_POLLS_PER_CONNECTION",
        default_value_t = 100
    )]
    pub max_long_polls_per_connection: usize,

    /// Most Receives with a `wait` open at once per bearer token (with auth
    /// off, on the whole replica).
    #[arg(long, env = "LEANMQ_MAX_LONG_POLLS_PER_TOKEN", default_value_t = 1000)]
    pub max_long_polls_per_token: usize,

    /// A client connection must complete its handshake (the HTTP/2
    /// preface, or the TLS handshake under TLS) within this, or is closed.
    #[arg(long, env = "LEANMQ_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Most client connections open at once; more are closed as they
    /// arrive. Lowered at start to leave file descriptors for Redis.
    #[arg(long, env = "LEANMQ_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most client connections open at once from one source address (an
    /// IPv6 /64 counts as one); more are closed as they arrive.
    #[arg(long, env = "LEANMQ_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 256)]
    pub max_connections_per_source: usize,

    /// HTTP/2 keepalive ping interval: how soon a subscriber whose
    /// connection died without a close is noticed (with the timeout).
    #[arg(long, env = "LEANMQ_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// How long a keepalive ping may go unanswered before the connection
    /// (and its streams) is closed.
    #[arg(long, env = "LEANMQ_KEEPALIVE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// Most Subscribe streams open at once on this replica.
    #[arg(long, env = "LEANMQ_MAX_SUBSCRIPTIONS", default_value_t = 100_000)]
    pub max_subscriptions: usize,

    /// Most bytes of deliveries one Subscribe stream (or waiting Receive)
    /// may hold that its client has not read yet; a stream with nothing
    /// unread may always take one delivery, however large.
    #[arg(long, env = "LEANMQ_MAX_UNREAD_BYTES_PER_STREAM", default_value_t = 16 << 20)]
    pub max_unread_bytes_per_stream: usize,

    /// Most bytes of unread deliveries across this replica's streams; when
    /// it is spent, each stream gets one unread delivery at a time.
    #[arg(long, env = "LEANMQ_MAX_UNREAD_BYTES", default_value_t = 512 << 20)]
    pub max_unread_bytes: usize,

    /// PEM CA bundle to verify a rediss:// server with (default: the
    /// system's roots). ACL user and password go in the URL.
    #[arg(long, env = "LEANMQ_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,

    /// Export traces over OTLP/gRPC to this collector (e.g.
    /// http://otel-collector:4317). Needs a build with `--features otlp`.
    #[arg(long, env = "LEANMQ_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Serve the web console (queues, consumers, dead letters) on this
    /// address (off when unset). Under --tls-cert it serves HTTPS with the
    /// same certificate; with --auth-tokens it asks for a token.
    #[arg(long, env = "LEANMQ_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,

    /// Let the console serve a non-loopback address without --auth-tokens:
    /// anyone who reaches it may then requeue, delete and purge.
    #[arg(long, env = "LEANMQ_CONSOLE_ALLOW_ANONYMOUS")]
    pub console_allow_anonymous: bool,

    /// Serve the HTTP JSON ingress (`POST /v1/send/<path>`,
    /// `POST /v1/send-batch`; docs/http.md) on this address (off when
    /// unset), with the gRPC listener's TLS, tokens and limits.
    #[arg(long, env = "LEANMQ_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// An ingress path that takes only Standard Webhooks signed requests
    /// (a third party's webhooks), as PATH=SECRET: SECRET is a `whsec_`
    /// secret, or the path of a file holding one (keeps it out of the
    /// process list). Repeat, or comma-separate, for several (at most 64).
    #[arg(
        long,
        env = "LEANMQ_HTTP_SIGNED_ROUTE",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub http_signed_route: Vec<String>,

    /// Longest an ingress request may take, its body's upload included
    /// (slower is 408).
    #[arg(long, env = "LEANMQ_HTTP_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_request_timeout: Duration,

    /// A web origin (`https://app.example.com`) whose pages may call the
    /// gRPC port over gRPC-Web (CORS); `*` for any. Repeat, or
    /// comma-separate, for several (at most 64). None: same-origin only.
    #[arg(long, env = "LEANMQ_GRPC_WEB_ALLOW_ORIGIN", value_delimiter = ',')]
    pub grpc_web_allow_origin: Vec<String>,

    /// Log format: "text" or "json". Filter with RUST_LOG (default "info").
    #[arg(long, env = "LEANMQ_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Keys that sign delivery receipts, comma-separated, 32 to 1024 bytes
    /// each (`openssl rand -hex 32`): the first signs, every one verifies,
    /// so a new key can be put first while the old one still settles what
    /// it signed. Every replica needs the same list. Prefer the env var or
    /// --receipt-key-file (a flag shows in the process list). Without
    /// either, the replicas share a random key kept in Redis at
    /// `{prefix}receipt-key`.
    #[arg(
        long,
        env = "LEANMQ_RECEIPT_KEY",
        value_delimiter = ',',
        hide_env_values = true,
        conflicts_with = "receipt_key_file"
    )]
    pub receipt_key: Vec<String>,

    /// A file of receipt keys, one a line, the signing key first (blank
    /// lines and lines starting with `#` are ignored). Read at start.
    #[arg(long, env = "LEANMQ_RECEIPT_KEY_FILE")]
    pub receipt_key_file: Option<PathBuf>,

    /// Also take unsigned receipts, as leanmqd issued before receipts were
    /// signed: only while upgrading from such a version, since anyone can
    /// write one. Without it they are INVALID_ARGUMENT (and each such
    /// message is delivered again, signed, when its lease runs out).
    #[arg(long, env = "LEANMQ_ACCEPT_UNSIGNED_RECEIPTS")]
    pub accept_unsigned_receipts: bool,

    /// Let push subscriptions reach any address, loopback, private,
    /// link-local and metadata ones included, over http:// too (tests and
    /// single-host setups; docs/push.md).
    #[arg(long, env = "LEANMQ_PUSH_ALLOW_PRIVATE")]
    pub push_allow_private: bool,

    /// Let push endpoints be plain http:// (public addresses still only,
    /// unless --push-allow-private).
    #[arg(long, env = "LEANMQ_PUSH_ALLOW_HTTP")]
    pub push_allow_http: bool,

    /// A host push endpoints may name whatever it resolves to (an internal
    /// service); repeat, or comma-separate, for several (at most 64).
    #[arg(long, env = "LEANMQ_PUSH_ALLOW_HOST", value_delimiter = ',')]
    pub push_allow_host: Vec<String>,

    /// How often each replica reads the push subscriptions from Redis, so
    /// a created, changed or paused one takes effect within it.
    #[arg(long, env = "LEANMQ_PUSH_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub push_poll_interval: Duration,
}

impl Config {
    /// The push SSRF policy the flags make.
    pub fn push_policy(&self) -> crate::push::ssrf::Policy {
        crate::push::ssrf::Policy {
            allow_private: self.push_allow_private,
            allow_http: self.push_allow_http,
            allow_hosts: self
                .push_allow_host
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        }
    }
}

mod validate;

pub use validate::StartupError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("rediss://leanmq:s3cret@redis:6380/0"),
            "rediss://leanmq:***@redis:6380/0"
        );
        assert_eq!(redact("redis://:s3cret@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn console_refuses_anonymous_non_loopback() {
        let mut c = Config::for_redis("redis://127.0.0.1:6379");
        c.console_listen = Some("0.0.0.0:8080".parse().unwrap());
        let err = c.validate().unwrap_err();
        assert!(
            err.to_string().contains("--console-allow-anonymous"),
            "{err}"
        );
        c.console_allow_anonymous = true;
        assert!(c.validate().is_ok());
        c.console_allow_anonymous = false;
        c.console_listen = Some("127.0.0.1:8080".parse().unwrap());
        assert!(c.validate().is_ok());
        c.console_listen = Some("[::1]:8080".parse().unwrap());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn wait_timeout_is_bounded_by_redis_timeout_only_when_something_waits() {
        let parse = |args: &[&str]| Config::try_parse_from([&["leanmqd"], args].concat());
        let no_wait = parse(&["--redis-timeout", "1s"]).expect("parses");
        assert!(
            no_wait.validate().is_ok(),
            "the default 1s with no wait flag"
        );
        for waits in [
            &["--wait-replicas", "1"][..],
            &["--wait-replicas-for", "/a=1"],
            &["--wait-aof"],
        ] {
            let c = parse(&[waits, &["--redis-timeout", "1s"]].concat()).expect("parses");
            let err = c
                .validate()
                .expect_err("a wait flag with --redis-timeout 1s");
            assert!(
                err.to_string().contains("--wait-timeout"),
                "{waits:?}: {err}"
            );
        }
    }

    #[test]
    fn signed_routes_from_flags_and_files() {
        let parse = |args: &[&str]| {
            Config::try_parse_from([&["leanmqd"], args].concat()).map_err(|e| e.to_string())
        };
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("stripe.secret");
        std::fs::write(&file, format!("{secret}\n")).expect("write");
        let two = parse(&[
            "--http-signed-route",
            &format!("/stripe/events/={secret}"),
            "--http-signed-route",
            &format!("/github={}", file.display()),
        ])
        .expect("parses");
        let routes = two.signed_routes().expect("two routes");
        let paths: Vec<&str> = routes.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/stripe/events", "/github"], "normalized");
        for (bad, says) in [
            ("/a", "PATH=SECRET"),
            ("/a*=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "wildcard"),
            ("/a=whsec_short", "secret"),
            ("/a=/no/such/file", "cannot read"),
        ] {
            let c = parse(&["--http-signed-route", bad]).expect("parses");
            assert!(
                matches!(c.validate(), Err(StartupError::Invalid(m)) if m.contains(says)),
                "{bad}"
            );
        }
        let twice =
            parse(&["--http-signed-route", &format!("/a={secret},/a/={secret}")]).expect("parses");
        assert!(twice.signed_routes().is_err(), "one secret per path");
        let many: Vec<String> = (0..65).map(|i| format!("/r{i}={secret}")).collect();
        let c = parse(&["--http-signed-route", &many.join(",")]).expect("parses");
        assert!(c.signed_routes().is_err(), "at most 64");
        for bad in [
            "app.example",
            "https://app.example/path",
            "ftp://x",
            "https://",
        ] {
            let c = parse(&["--grpc-web-allow-origin", bad]).expect("parses");
            assert!(c.validate().is_err(), "{bad}");
        }
        let ok = parse(&["--grpc-web-allow-origin", "https://app.example:8443,*"]).expect("parses");
        assert!(ok.validate().is_ok());
        let slow = parse(&["--http-request-timeout", "2h"]).expect("parses");
        assert!(slow.validate().is_err());
    }

    #[test]
    fn receipt_keys_from_flags_and_files() {
        let parse = |args: &[&str]| {
            Config::try_parse_from([&["leanmqd"], args].concat()).map_err(|e| e.to_string())
        };
        let none = parse(&[]).expect("defaults");
        assert!(
            matches!(none.receipt_keys(), Ok(None)),
            "shared through Redis"
        );
        let k1 = "a".repeat(32);
        let k2 = "b".repeat(64);
        let two = parse(&["--receipt-key", &format!("{k1},{k2}")]).expect("two keys");
        assert!(matches!(two.receipt_keys(), Ok(Some(_))));
        let short = parse(&["--receipt-key", "short"]).expect("parses");
        assert!(
            matches!(short.validate(), Err(StartupError::Invalid(m)) if m.contains("receipt key 1"))
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("keys");
        std::fs::write(&file, format!("# rotated 2026-12\n{k2}\n\n{k1}\n")).expect("write");
        let from_file = parse(&["--receipt-key-file", &file.display().to_string()]).expect("file");
        assert!(matches!(from_file.receipt_keys(), Ok(Some(_))));
        std::fs::write(&file, "# nothing yet\n").expect("write");
        assert!(from_file.receipt_keys().is_err(), "an empty key file");
        let both = parse(&["--receipt-key", &k1, "--receipt-key-file", "/x"]);
        assert!(both.is_err(), "one source of keys");
    }
}
