//! Embedded mode: with no `--redis-url`, leanmqd runs its own `redis-server`
//! child, with AOF on and its data in `--data-dir`, listening only on a
//! unix socket in that directory (no port to collide with). The child is
//! restarted if it dies, and shut down cleanly (SHUTDOWN, which syncs the
//! AOF) when leanmqd exits.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::{watch, Mutex};

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
    // If leanmqd dies without cleaning up (SIGKILL, a crash), the kernel sends
    // the child SIGTERM, so Redis syncs its AOF and frees the socket instead of
    // lingering as an orphan that blocks the next start.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
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

async fn wait_ready(url: &str, child: &mut Child) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut delay = Duration::from_millis(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server exited during start-up ({status})"));
        }
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
            if pong.is_ok() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err("redis-server did not answer PING within 20s".into());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

impl EmbeddedRedis {
    pub async fn start(bin: &Path, data_dir: &Path) -> Result<EmbeddedRedis, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create --data-dir {}: {e}", data_dir.display()))?;
        let dir: PathBuf = data_dir
            .canonicalize()
            .map_err(|e| format!("--data-dir {}: {e}", data_dir.display()))?;
        let socket = dir.join("redis.sock");
        if socket.as_os_str().len() > 100 {
            return Err(format!(
                "--data-dir {} is too long for a unix socket path; use a shorter one",
                dir.display()
            ));
        }
        let url = format!("redis+unix://{}", socket.display());
        let mut child = spawn(bin, &dir, &socket).map_err(|e| {
            format!(
                "cannot start {}: {e}. Install Redis (apt-get install redis-server) or pass --redis-url",
                bin.display()
            )
        })?;
        wait_ready(&url, &mut child).await?;
        tracing::info!(data_dir = %dir.display(), "embedded redis-server started (AOF on)");
        let child = Arc::new(Mutex::new(Some(child)));
        let (stop, mut stopped) = watch::channel(false);
        let supervisor = {
            let child = child.clone();
            let bin = bin.to_path_buf();
            let url = url.clone();
            tokio::spawn(async move {
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
            })
        };
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
