//! The processes under test, and what /proc says about them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Clock ticks per second for /proc/<pid>/stat times.
fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / clk_tck()
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// A child process, killed on drop.
pub struct Proc {
    child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_tcp(port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{what} did not listen on port {port}"))
}

/// Everything a run needs: Redis, leanmqd and the no-op server.
pub struct Env {
    pub redis: Proc,
    pub redis_url: String,
    pub leanmqd: Proc,
    pub leanmqd_addr: String,
    pub noop: Proc,
    pub noop_addr: String,
    _dir: TempDir,
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn leanmqd_bin() -> PathBuf {
    std::env::var_os("LEANMQD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/leanmqd"))
}

impl Env {
    pub fn start(leanmqd: &Path) -> Result<Env, String> {
        let dir = std::env::temp_dir().join(format!("leanmq-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let dir = TempDir(dir);
        let rport = free_port()?;
        let redis = Proc {
            child: Command::new("redis-server")
                .args([
                    "--port",
                    &rport.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&dir.0)
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("redis-server: {e}"))?,
            name: "redis",
        };
        wait_tcp(rport, "redis-server")?;
        let redis_url = format!("redis://127.0.0.1:{rport}");
        let lport = free_port()?;
        let leanmqd_proc = Proc {
            child: Command::new(leanmqd)
                .args([
                    "--listen",
                    &format!("127.0.0.1:{lport}"),
                    "--redis-url",
                    &redis_url,
                    // push's scenario POSTs to receivers on loopback
                    "--push-allow-private",
                    "--push-allow-http",
                    "--push-poll-interval",
                    "100ms",
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!(
                        "{}: {e} (build it: cargo build --release)",
                        leanmqd.display()
                    )
                })?,
            name: "leanmqd",
        };
        wait_tcp(lport, "leanmqd")?;
        let nport = free_port()?;
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let noop = Proc {
            child: Command::new(me)
                .args(["noop-server", &format!("127.0.0.1:{nport}")])
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?,
            name: "noop",
        };
        wait_tcp(nport, "noop-server")?;
        Ok(Env {
            redis,
            redis_url,
            leanmqd: leanmqd_proc,
            leanmqd_addr: format!("http://127.0.0.1:{lport}"),
            noop,
            noop_addr: format!("http://127.0.0.1:{nport}"),
            _dir: dir,
        })
    }
}

/// CPU used by a set of processes (and this one) over a measured span.
pub struct CpuMeter {
    start: Vec<(String, u32, f64)>,
}

impl CpuMeter {
    pub fn start(procs: &[&Proc]) -> CpuMeter {
        let mut start: Vec<(String, u32, f64)> = procs
            .iter()
            .map(|p| (p.name.to_string(), p.pid(), cpu_secs(p.pid())))
            .collect();
        let me = std::process::id();
        start.push(("client".to_string(), me, cpu_secs(me)));
        CpuMeter { start }
    }

    /// Microseconds of CPU per operation, per process.
    pub fn per_op_us(&self, ops: u64) -> Vec<(String, f64)> {
        self.start
            .iter()
            .map(|(n, pid, s)| (n.clone(), (cpu_secs(*pid) - s) * 1e6 / ops.max(1) as f64))
            .collect()
    }
}
