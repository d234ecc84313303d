//! Embedded mode: with no `--redis-url`, leanmqd runs its own `redis-server`
//! child, with AOF on and its data in `--data-dir`, listening only on a
//! unix socket in that directory (no port to collide with). The child is
//! restarted if it dies, and shut down cleanly (SHUTDOWN, which syncs the
//! AOF) when leanmqd exits.
//!
//! If leanmqd itself dies without cleaning up (SIGKILL, a crash): on Linux
//! the kernel sends the child SIGTERM (`PR_SET_PDEATHSIG`), so Redis syncs
//! its AOF and frees the socket. Other unixes (macOS, the BSDs) have no such
//! call: there the child is killed when leanmqd drops it (`kill_on_drop`,
//! which covers every exit but SIGKILL and abort); after a SIGKILL the
//! child stays until stopped (`redis-cli -s <data-dir>/redis.sock shutdown`),
//! and the next start refuses (a Redis already answers on the socket) rather
//! than run a second redis-server on the same AOF.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::{watch, Mutex};

/// Why the embedded redis-server would not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot create --data-dir {}: {source}", dir.display())]
    CreateDataDir {
        dir: PathBuf,
        source: std::io::Error,
    },

    #[error("--data-dir {}: {source}", dir.display())]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },

    /// A unix socket path holds at most ~104 bytes (108 on Linux).
    #[error("--data-dir {} is too long for a unix socket path; use a shorter one", dir.display())]
    SocketPathTooLong { dir: PathBuf },

    #[error("cannot start {}: {source}. Install Redis (apt-get install redis-server) or pass --redis-url", bin.display())]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },

    #[error("{0}")]
    Url(redis::RedisError),

    #[error("redis-server exited during start-up ({0})")]
    Exited(ExitStatus),

    #[error("redis-server did not answer PING within 20s")]
    NotReady,

    /// Without Linux's parent-death signal, a child that outlived a killed
    /// leanmqd may still serve this data dir.
    #[error("a redis-server already answers on {}: one left by a killed leanmqd? Stop it (redis-cli -s {} shutdown) or use another --data-dir", socket.display(), socket.display())]
    AlreadyRunning { socket: PathBuf },
}

/// The supervised redis-server.
pub struct EmbeddedRedis {
    /// `redis+unix://…` URL of the child's socket.
    pub url: String,
    /// Stops the supervisor's restart loop.
    stop: watch::Sender<bool>,
    /// The current child, shared with the supervisor.
    child: Arc<Mutex<Option<Child>>>,
    supervisor: tokio::task::JoinHandle<()>,
}

fn spawn(bin: &Path, dir: &Path, socket: &Path) -> std::io::Result<Child> {
    let mut cmd = Command::new(bin);
    #[cfg(target_os = "linux")]
    term_with_parent(&mut cmd);
    cmd.arg("--port")
        .arg("0")
        .arg("--unixsocket")
        .arg(socket)
        .arg("--unixsocketperm")
        .arg("700")
        .arg("--dir")
        .arg(dir)
        .arg("--appendonly")
        .arg("yes")
        .arg("--appendfsync")
        .arg("everysec")
        .arg("--save")
        .arg("")
        .arg("--daemonize")
        .arg("no")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
}

/// Linux: if leanmqd dies without cleaning up (SIGKILL, a crash), the kernel
/// sends the child SIGTERM, so Redis syncs its AOF and frees the socket
/// instead of lingering as an orphan that blocks the next start. (Elsewhere
/// `kill_on_drop` is the fallback; see the module docs.)
#[cfg(target_os = "linux")]
fn term_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Does a Redis answer PING at `url` within a second?
#[cfg(not(target_os = "linux"))]
async fn answers(url: &str) -> bool {
    let ping = async {
        let mut c = redis::Client::open(url)
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()?;
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
        pong.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ping).await,
        Ok(Some(_))
    )
}

async fn wait_ready(url: &str, child: &mut Child) -> Result<(), EmbeddedError> {
    let client = redis::Client::open(url).map_err(EmbeddedError::Url)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut pause =
        crate::backoff::Pause::new(Duration::from_millis(10), Duration::from_millis(200));
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(EmbeddedError::Exited(status));
        }
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
            if pong.is_ok() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(EmbeddedError::NotReady);
        }
        tokio::time::sleep(pause.failed()).await;
    }
}

/// Restart the child whenever it exits, until `stopped` turns true.
async fn supervise(
    child: Arc<Mutex<Option<Child>>>,
    mut stopped: watch::Receiver<bool>,
    bin: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    url: String,
) {
    loop {
        let status = {
            let mut guard = child.lock().await;
            let Some(c) = guard.as_mut() else { return };
            tokio::select! {
                s = c.wait() => s,
                _ = stopped.wait_for(|s| *s) => return,
            }
        };
        if *stopped.borrow() {
            return;
        }
        tracing::error!(?status, "embedded redis-server exited; restarting in 1s");
        tokio::time::sleep(Duration::from_secs(1)).await;
        match spawn(&bin, &dir, &socket) {
            Ok(mut c) => {
                if let Err(e) = wait_ready(&url, &mut c).await {
                    tracing::error!(error = %e, "embedded redis-server restart failed");
                }
                *child.lock().await = Some(c);
            }
            Err(e) => tracing::error!(error = %e, "cannot restart redis-server"),
        }
    }
}

impl EmbeddedRedis {
    pub async fn start(bin: &Path, data_dir: &Path) -> Result<EmbeddedRedis, EmbeddedError> {
        std::fs::create_dir_all(data_dir).map_err(|source| EmbeddedError::CreateDataDir {
            dir: data_dir.to_path_buf(),
            source,
        })?;
        let dir: PathBuf = data_dir
            .canonicalize()
            .map_err(|source| EmbeddedError::DataDir {
                dir: data_dir.to_path_buf(),
                source,
            })?;
        let socket = dir.join("redis.sock");
        if socket.as_os_str().len() > 100 {
            return Err(EmbeddedError::SocketPathTooLong { dir });
        }
        let url = format!("redis+unix://{}", socket.display());
        #[cfg(not(target_os = "linux"))]
        if answers(&url).await {
            return Err(EmbeddedError::AlreadyRunning { socket });
        }
        let mut child = spawn(bin, &dir, &socket).map_err(|source| EmbeddedError::Spawn {
            bin: bin.to_path_buf(),
            source,
        })?;
        wait_ready(&url, &mut child).await?;
        tracing::info!(data_dir = %dir.display(), "embedded redis-server started (AOF on)");
        let child = Arc::new(Mutex::new(Some(child)));
        let (stop, stopped) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(
            child.clone(),
            stopped,
            bin.to_path_buf(),
            dir,
            socket,
            url.clone(),
        ));
        Ok(EmbeddedRedis {
            url,
            stop,
            child,
            supervisor,
        })
    }

    /// SHUTDOWN the child (it syncs the AOF) and wait for it, killing it
    /// after 10 s.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.supervisor.await;
        if let Ok(client) = redis::Client::open(self.url.as_str()) {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query_async(&mut c).await;
            }
        }
        if let Some(mut c) = self.child.lock().await.take() {
            match tokio::time::timeout(Duration::from_secs(10), c.wait()).await {
                Ok(_) => tracing::info!("embedded redis-server stopped"),
                Err(_) => {
                    tracing::warn!("embedded redis-server did not stop in 10s; killing it");
                    let _ = c.kill().await;
                }
            }
        }
    }
}
