//! Validation of [`Config`], before anything binds, and the startup errors
//! that carry their exit code.

use super::{redact, Config, EXIT_CONFIG, EXIT_UNAVAILABLE};
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// Why leanmqd could not start. Each variant knows its exit code: a wrong
/// flag is the operator's to fix (64, EX_USAGE), a service that would not
/// come up may come up on the next try (69, EX_UNAVAILABLE).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A flag (or its `LEANMQ_*` twin) breaks a rule; the message names it.
    #[error("invalid configuration: {0}")]
    Invalid(String),

    /// Logging or trace export could not be set up from the flags.
    #[error("{0}")]
    Telemetry(String),

    /// The async runtime could not be built (threads, epoll).
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),

    /// SIGTERM/SIGINT/SIGHUP handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),

    /// The `--metrics-listen` endpoint could not be served.
    #[error("{0}")]
    Metrics(String),

    /// The embedded redis-server would not start.
    #[error(transparent)]
    Embedded(#[from] crate::embedded::EmbeddedError),

    /// The server could not start serving (bind, Redis, scripts).
    #[error("{0}")]
    Serve(String),
}

impl StartupError {
    /// The process exit code for this error (sysexits).
    pub fn exit_code(&self) -> i32 {
        match self {
            StartupError::Invalid(_) | StartupError::Telemetry(_) => EXIT_CONFIG,
            StartupError::Runtime(_)
            | StartupError::Signals(_)
            | StartupError::Metrics(_)
            | StartupError::Embedded(_)
            | StartupError::Serve(_) => EXIT_UNAVAILABLE,
        }
    }
}

/// Start-up code that still reports a `String` (the server's start) is a
/// failure to serve, not a configuration error: `?` turns it into
/// [`StartupError::Serve`].
impl From<String> for StartupError {
    fn from(message: String) -> Self {
        StartupError::Serve(message)
    }
}

/// A configuration error (never via `From<String>`, which means Serve).
fn invalid(message: impl Into<String>) -> StartupError {
    StartupError::Invalid(message.into())
}

/// `Err(invalid(message))` unless `ok`.
fn ensure(ok: bool, message: &str) -> Result<(), StartupError> {
    if ok {
        Ok(())
    } else {
        Err(invalid(message))
    }
}

impl Config {
    /// Check every value that could make leanmqd misbehave. Called before
    /// binding or starting Redis.
    pub fn validate(&self) -> Result<(), StartupError> {
        self.validate_redis_url()?;
        self.validate_limits()?;
        self.validate_durations()?;
        self.validate_files()?;
        self.validate_console()?;
        self.validate_push()?;
        self.validate_http()?;
        self.validate_telemetry()
    }

    /// Push flags: a bounded allowlist of plausible host names, a sane poll.
    fn validate_push(&self) -> Result<(), StartupError> {
        let max = crate::push::MAX_ALLOW_HOSTS;
        if self.push_allow_host.len() > max {
            return Err(invalid(format!(
                "--push-allow-host is given {} times; the limit is {max}",
                self.push_allow_host.len()
            )));
        }
        for h in &self.push_allow_host {
            let h = h.trim();
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !ok {
                return Err(invalid(format!(
                    "--push-allow-host {h:?} is not a host name or address"
                )));
            }
        }
        let (lo, hi) = (Duration::from_millis(100), Duration::from_secs(60));
        if self.push_poll_interval < lo || self.push_poll_interval > hi {
            return Err(invalid(format!(
                "--push-poll-interval {:?} is out of range: 100ms to 60s",
                self.push_poll_interval
            )));
        }
        Ok(())
    }

    /// The ingress: its signed routes parse (and their files read), a sane timeout.
    fn validate_http(&self) -> Result<(), StartupError> {
        self.signed_routes().map_err(invalid)?;
        if self.grpc_web_allow_origin.len() > 64 {
            return Err(invalid("--grpc-web-allow-origin: at most 64 origins"));
        }
        for o in &self.grpc_web_allow_origin {
            if !crate::layers::is_origin(o) {
                return Err(invalid(format!(
                    "--grpc-web-allow-origin {o:?} is not an origin (scheme://host[:port], no path) or *"
                )));
            }
        }
        let (lo, hi) = (Duration::from_millis(100), Duration::from_secs(3600));
        if self.http_request_timeout < lo || self.http_request_timeout > hi {
            return Err(invalid(format!(
                "--http-request-timeout {:?} is out of range: 100ms to 1h",
                self.http_request_timeout
            )));
        }
        Ok(())
    }

    /// The console never serves a non-loopback address without auth unless asked to.
    fn validate_console(&self) -> Result<(), StartupError> {
        match self.console_listen {
            Some(at)
                if self.auth_tokens.is_none()
                    && !at.ip().is_loopback()
                    && !self.console_allow_anonymous =>
            {
                Err(invalid(format!(
                    "--console-listen {at} is not a loopback address and auth is off: anyone reaching it could requeue, delete and purge; set --auth-tokens, or --console-allow-anonymous to accept that"
                )))
            }
            _ => Ok(()),
        }
    }

    /// `--redis-url` parses, for each of its forms (plain, cluster, sentinel).
    fn validate_redis_url(&self) -> Result<(), StartupError> {
        let Some(url) = &self.redis_url else {
            return Ok(());
        };
        // Never echo a password, not even in a configuration error.
        let shown = redact(url);
        let open = |u: &str| {
            redis::Client::open(u).map(drop).map_err(|e| {
                invalid(format!(
                    "--redis-url {shown:?} is not a usable Redis URL: {e}"
                ))
            })
        };
        if let Some(s) = crate::broker::redis::sentinel_parts(url) {
            if s.sentinels.is_empty() || s.master.is_empty() {
                return Err(invalid(format!(
                    "--redis-url {shown:?}: give sentinels and a master name, as redis+sentinel://host:port[,host:port]/mymaster"
                )));
            }
            return s.sentinels.iter().try_for_each(|s| open(s));
        }
        match crate::broker::redis::cluster_nodes(url) {
            Some(nodes) if nodes.is_empty() => Err(invalid(format!(
                "--redis-url {shown:?} names no cluster node"
            ))),
            Some(nodes) => nodes.iter().try_for_each(|n| open(n)),
            None => open(url),
        }
    }

    /// Names, sizes and counts: each between 1 and a bound that keeps one
    /// replica (and the Redis behind it) safe.
    fn validate_limits(&self) -> Result<(), StartupError> {
        crate::rpc::prefixes::validate(&self.prefix).map_err(invalid)?;
        let between = |v: usize, max: usize| (1..=max).contains(&v);
        ensure(
            between(self.max_payload_bytes, 64 << 20),
            "--max-payload-bytes must be between 1 and 67108864",
        )?;
        ensure(
            between(self.max_batch, 100_000),
            "--max-batch must be between 1 and 100000",
        )?;
        ensure(
            between(
                self.publish_window,
                crate::broker::limits::MAX_PUBLISH_WINDOW,
            ),
            "--publish-window must be between 1 and 10000",
        )?;
        ensure(
            (1..=1000).contains(&self.max_attempts),
            "--max-attempts must be between 1 and 1000",
        )?;
        ensure(
            self.max_len != Some(0),
            "--max-len must be at least 1 (leave it unset for no cap)",
        )?;
        ensure(
            (1..=crate::broker::limits::MAX_GROUPS_PER_QUEUE).contains(&self.max_groups_per_queue),
            "--max-groups-per-queue must be between 1 and 10000",
        )?;
        ensure(
            (1..=100_000_000).contains(&self.max_queues),
            "--max-queues must be between 1 and 100000000",
        )?;
        ensure(
            between(self.redis_lanes, 64),
            "--redis-lanes must be between 1 and 64",
        )?;
        ensure(
            between(self.max_headers_bytes, 1 << 20),
            "--max-headers-bytes must be between 1 and 1048576",
        )?;
        ensure(
            between(self.max_streams_per_connection, 100_000),
            "--max-streams-per-connection must be between 1 and 100000",
        )?;
        ensure(
            between(self.max_concurrent_rpcs, 1_000_000),
            "--max-concurrent-rpcs must be between 1 and 1000000",
        )?;
        ensure(
            between(self.max_subscriptions, 10_000_000),
            "--max-subscriptions must be between 1 and 10000000",
        )?;
        ensure(
            (64 << 10..=1 << 30).contains(&self.max_unread_bytes_per_stream)
                && self.max_unread_bytes >= self.max_unread_bytes_per_stream
                && self.max_unread_bytes <= 1 << 40,
            "--max-unread-bytes-per-stream must be between 65536 and 1073741824, and --max-unread-bytes at least that (at most 1099511627776)",
        )?;
        self.validate_connection_limits()
    }

    /// Connections and waiting Receives.
    fn validate_connection_limits(&self) -> Result<(), StartupError> {
        let between = |v: usize, max: usize| (1..=max).contains(&v);
        ensure(
            between(self.max_long_polls_per_connection, 100_000),
            "--max-long-polls-per-connection must be between 1 and 100000",
        )?;
        ensure(
            between(self.max_long_polls_per_token, 1_000_000),
            "--max-long-polls-per-token must be between 1 and 1000000",
        )?;
        ensure(
            between(self.max_connections, 1_000_000),
            "--max-connections must be between 1 and 1000000",
        )?;
        ensure(
            between(self.max_connections_per_source, 1_000_000),
            "--max-connections-per-source must be between 1 and 1000000",
        )?;
        ensure(
            self.handshake_timeout >= Duration::from_millis(10)
                && self.handshake_timeout <= Duration::from_secs(300),
            "--handshake-timeout must be between 10ms and 5m",
        )
    }

    /// Durations: each long enough not to spin and, for leases, short
    /// enough to be a lease.
    fn validate_durations(&self) -> Result<(), StartupError> {
        ensure(
            !self.retry_min.is_zero() && self.retry_min <= self.retry_max,
            "--retry-min must be > 0 and <= --retry-max",
        )?;
        let lease = crate::broker::limits::LEASE_RANGE;
        ensure(
            self.ack_deadline >= lease.0 && self.ack_deadline <= lease.1,
            "--ack-deadline must be between 100ms and 12h",
        )?;
        let secs = Duration::from_secs;
        let millis = Duration::from_millis;
        ensure(
            self.orphan_timeout >= secs(1),
            "--orphan-timeout must be at least 1s",
        )?;
        ensure(
            self.dedup_window >= secs(1),
            "--dedup-window must be at least 1s",
        )?;
        ensure(
            self.retention_interval >= millis(100),
            "--retention-interval must be at least 100ms",
        )?;
        ensure(
            self.redis_timeout >= millis(10),
            "--redis-timeout must be at least 10ms",
        )?;
        ensure(
            self.wait_replicas <= crate::broker::durability::MAX_REPLICAS,
            "--wait-replicas must be at most 64",
        )?;
        self.wait_rules().map_err(invalid)?;
        // Below --redis-timeout only matters when something waits: without
        // a wait flag the default 1s must not refuse --redis-timeout 1s.
        let waits = self.wait_replicas > 0 || !self.wait_replicas_for.is_empty() || self.wait_aof;
        ensure(
            !self.wait_timeout.is_zero()
                && self.wait_timeout <= secs(60)
                && (!waits || self.wait_timeout < self.redis_timeout),
            "--wait-timeout must be > 0, at most 60s and below --redis-timeout",
        )?;
        ensure(
            self.keepalive_interval >= secs(1) && self.keepalive_timeout >= millis(100),
            "--keepalive-interval must be at least 1s and --keepalive-timeout at least 100ms",
        )
    }

    /// The files named by flags are readable and valid: TLS, tokens, CA.
    fn validate_files(&self) -> Result<(), StartupError> {
        if let Some(files) = self.tls_files() {
            crate::tls::Tls::load(files).map_err(invalid)?;
        }
        if let Some(path) = &self.auth_tokens {
            crate::auth::Auth::from_file(path).map_err(invalid)?;
        }
        self.receipt_keys().map_err(invalid)?;
        if let Some(ca) = &self.redis_tls_ca {
            std::fs::read(ca).map_err(|e| {
                invalid(format!("cannot read --redis-tls-ca {}: {e}", ca.display()))
            })?;
        }
        Ok(())
    }

    /// Logging and trace export.
    fn validate_telemetry(&self) -> Result<(), StartupError> {
        ensure(
            self.otlp_endpoint.is_none() || crate::telemetry::OTLP_BUILT_IN,
            "--otlp-endpoint needs a leanmqd built with `cargo build --features otlp`",
        )?;
        ensure(
            self.log_format == "text" || self.log_format == "json",
            "--log-format must be \"text\" or \"json\"",
        )
    }

    /// The configured receipt keys (`None`: share one through Redis).
    pub fn receipt_keys(&self) -> Result<Option<crate::broker::receipt::Keys>, String> {
        let keys: Vec<String> = match &self.receipt_key_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --receipt-key-file {}: {e}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect(),
            None => self.receipt_key.clone(),
        };
        if keys.is_empty() {
            if self.receipt_key_file.is_some() {
                return Err("--receipt-key-file holds no key".into());
            }
            return Ok(None);
        }
        crate::broker::receipt::Keys::new(&keys, self.accept_unsigned_receipts)
            .map(Some)
            .map_err(|e| format!("--receipt-key: {e}"))
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// A configuration for tests and embedding: defaults, a given Redis URL,
    /// and an ephemeral port.
    pub fn for_redis(url: &str) -> Self {
        let mut c = Config::parse_from(["leanmqd"]);
        c.redis_url = Some(url.to_string());
        c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c
    }
}

impl Config {
    /// `--wait-replicas-for`, parsed and bounded.
    pub fn wait_rules(&self) -> Result<Vec<crate::broker::durability::WaitRule>, String> {
        use crate::broker::durability::{WaitRule, MAX_RULES};
        if self.wait_replicas_for.len() > MAX_RULES {
            return Err(format!("--wait-replicas-for: at most {MAX_RULES} rules"));
        }
        self.wait_replicas_for
            .iter()
            .map(|s| WaitRule::parse(s))
            .collect()
    }

    /// `--http-signed-route`: each PATH=SECRET as (the normalized path, its
    /// signing key), the secret read from its file when not given inline.
    pub fn signed_routes(&self) -> Result<Vec<(String, crate::push::signature::Key)>, String> {
        use crate::push::signature::{key, SECRET_PREFIX};
        const MAX_SIGNED_ROUTES: usize = 64;
        if self.http_signed_route.len() > MAX_SIGNED_ROUTES {
            return Err(format!(
                "--http-signed-route: at most {MAX_SIGNED_ROUTES} routes"
            ));
        }
        let mut out: Vec<(String, crate::push::signature::Key)> = Vec::new();
        for spec in &self.http_signed_route {
            let Some((path, secret)) = spec.split_once('=') else {
                return Err(format!(
                    "--http-signed-route {:?} is not PATH=SECRET (a whsec_ secret or a file holding one)",
                    spec.split('=').next().unwrap_or_default()
                ));
            };
            let route = crate::routing::send_route(path)
                .map_err(|e| format!("--http-signed-route {path:?}: {e}"))?;
            let secret = if secret.starts_with(SECRET_PREFIX) {
                secret.to_string()
            } else {
                std::fs::read_to_string(secret)
                    .map_err(|e| {
                        format!(
                            "--http-signed-route {path:?}: cannot read secret file {secret:?}: {e}"
                        )
                    })?
                    .trim()
                    .to_string()
            };
            let k = key(&secret)
                .map_err(|e| format!("--http-signed-route {path:?}: the secret {e}"))?;
            if out.iter().any(|(p, _)| *p == route.path) {
                return Err(format!("--http-signed-route {path:?} is given twice"));
            }
            out.push((route.path, k));
        }
        Ok(out)
    }
}
