"""Processes for the e2e suite: a private redis-server, leanmqd, and the SDK agents.

Every wait has a deadline; nothing synchronizes by sleeping. Processes are
ended by their own pid (SIGTERM, then SIGKILL after a deadline).
"""
from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import grpc
import redis

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------- helpers


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``cond`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)


def queue_name(path: str) -> str:
    """LeanMQ 0.2.0's path -> queue name mapping."""
    p = path
    if p != "/" and p.endswith("/"):
        p = p[:-1]
    if not p.startswith("/"):
        p = "/" + p
    p = p.strip("/").replace("/", "_")
    return "".join(c if c.isalnum() else "_" for c in p)


def normalized(path: str) -> str:
    """LeanMQ's normalized path: leading '/', no trailing '/'."""
    p = path[:-1] if path != "/" and path.endswith("/") else path
    return p if p.startswith("/") else "/" + p


def unique_path(label: str) -> str:
    return f"/e2e/{label}/{uuid.uuid4().hex[:8]}/"


def _stop_process(proc: subprocess.Popen, timeout: float) -> Optional[int]:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


# ------------------------------------------------------------------------ redis


class RedisServer:
    """A redis-server of our own on a free loopback port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "redis.log"
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        last = ""
        for _ in range(5):  # a port can be taken between free_port() and bind
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--dir", str(self.dir),
                    "--save", "",
                    "--appendonly", "no",
                    "--daemonize", "no",
                    "--logfile", str(self.log),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                self._wait_own()
                return
            except AssertionError as e:
                last = str(e)
                _stop_process(self.proc, 5)
        raise AssertionError(f"could not start redis-server: {last}\n{_tail(self.log)}")

    def _wait_own(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 10
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"redis-server exited with {self.proc.returncode}")
                try:
                    info = client.info("server")
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise AssertionError("redis-server did not answer within 10 s")
                    time.sleep(0.02)
            # Really our own server, not one that already listened there.
            if int(info["process_id"]) != self.proc.pid:
                raise AssertionError(
                    f"port {self.port} answered with process_id {info['process_id']}, "
                    f"not our redis-server (pid {self.proc.pid})"
                )
        finally:
            client.close()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, 10)


# ---------------------------------------------------------------------- leanmqd

_SERVING = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse{status: SERVING}


def health_status(
    target: str, timeout: float = 1.0, credentials: Optional[grpc.ChannelCredentials] = None
) -> Optional[bytes]:
    """The raw grpc.health.v1 Check response for the whole server, or None.
    ``credentials``: TLS channel credentials for a leanmqd serving TLS."""
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    try:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        return check(b"", timeout=timeout)
    except grpc.RpcError:
        return None
    finally:
        channel.close()


class Leanmqd:
    """The leanmqd binary on a loopback port, pointed at a Redis.

    ``tls_ca``: the PEM certificate(s) to trust when leanmqd serves TLS
    (``--tls-cert`` among ``extra_args``); the health check then uses TLS.
    """

    def __init__(
        self,
        binary: str,
        redis_url: str,
        workdir: Path,
        extra_args: Sequence[str] = (),
        tls_ca: Optional[bytes] = None,
    ) -> None:
        self.binary = binary
        self.redis_url = redis_url
        self.workdir = workdir
        self.extra_args = list(extra_args)
        self.health_credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca) if tls_ca else None
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        self.runs = 0
        self.log = workdir / "leanmqd.log"
        self._log_file = None
        last = ""
        for _ in range(5):
            self.port = free_port()
            try:
                self.start()
                return
            except AssertionError as e:
                last = str(e)
                self.kill()
        raise AssertionError(f"could not start leanmqd: {last}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start on self.port and wait until health says SERVING."""
        assert self.proc is None or self.proc.poll() is not None, "leanmqd already running"
        self.runs += 1
        self._log_file = open(self.log, "ab")
        self._log_file.write(f"\n===== leanmqd run {self.runs} on {self.target} =====\n".encode())
        self._log_file.flush()
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen(
            [self.binary, "--listen", self.target, "--redis-url", self.redis_url, *self.extra_args],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"leanmqd exited with {self.proc.returncode} before serving\n{_tail(self.log)}"
                )
            if health_status(self.target, timeout=0.5, credentials=self.health_credentials) == _SERVING:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"leanmqd not SERVING within {timeout} s\n{_tail(self.log)}")
            time.sleep(0.05)

    def terminate(self) -> None:
        """Send SIGTERM (graceful drain) without waiting."""
        assert self.proc is not None and self.proc.poll() is None, "leanmqd is not running"
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 25.0) -> int:
        """Wait for exit; fails (after a SIGKILL) when it takes longer than timeout."""
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"leanmqd did not exit within {timeout} s of SIGTERM\n{self.log_tail()}") from None
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return rc

    def stop(self, timeout: float = 25.0) -> Optional[int]:
        """SIGTERM (graceful drain); returns the exit code (SIGKILL after timeout)."""
        if self.proc is None:
            return None
        rc = _stop_process(self.proc, timeout)
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log, lines)


# ----------------------------------------------------------------------- agents


class Agent:
    """One SDK e2e agent process. Parses its stdout delivery lines and its
    stderr READY line on reader threads."""

    def __init__(self, name: str, argv: List[str], cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.argv = argv
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(cwd) if cwd else None,
            env=e,
            start_new_session=True,
        )
        self.stdout_lines: List[str] = []
        self.stderr_lines: List[str] = []
        self.deliveries: List[Dict[str, Any]] = []
        self._q: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.stdout_lines.append(line)
            if line.startswith("{"):
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                with self._lock:
                    self.deliveries.append(d)
                self._q.put(d)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.stderr_lines.append(line)
            if line.strip() == "READY":
                self._ready.set()

    # -- waiting

    def describe(self) -> str:
        with self._lock:
            out = "\n".join(self.stdout_lines[-20:])
            err = "\n".join(self.stderr_lines[-30:])
        return (
            f"agent {self.name} (pid {self.proc.pid}, exit {self.proc.poll()}): {' '.join(self.argv)}\n"
            f"--- stdout (tail) ---\n{out}\n--- stderr (tail) ---\n{err}"
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._join_readers()
                if self._ready.is_set():
                    return
                raise AssertionError(f"agent exited before READY\n{self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"agent not READY within {timeout} s\n{self.describe()}")

    def next_delivery(self, timeout: float) -> Optional[Dict[str, Any]]:
        """The next delivery line, or None when none came within ``timeout``."""
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def wait_deliveries(self, n: int, timeout: float) -> List[Dict[str, Any]]:
        """Wait until at least n delivery lines were printed; returns all of them."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.deliveries) >= n:
                    return list(self.deliveries)
            if self.proc.poll() is not None:
                self._join_readers()
                with self._lock:
                    if len(self.deliveries) >= n:
                        return list(self.deliveries)
                raise AssertionError(f"agent exited after {len(self.deliveries)} of {n} deliveries\n{self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.deliveries)} of {n} deliveries within {timeout} s\n{self.describe()}")
            time.sleep(0.02)

    def snapshot(self) -> List[Dict[str, Any]]:
        with self._lock:
            return list(self.deliveries)

    def wait_exit(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent still running after {timeout} s\n{self.describe()}") from None
        self._join_readers()
        return rc

    def _join_readers(self) -> None:
        for t in self._threads:
            t.join(timeout=5)

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        rc = _stop_process(self.proc, timeout)
        self._join_readers()
        return rc


class Agents:
    """Builds agent command lines for the three SDKs and stops what it started."""

    def __init__(self, go_agent: str, node_agent: str) -> None:
        self.go_agent = go_agent
        self.node_agent = node_agent
        self.started: List[Agent] = []

    def _spawn(self, name: str, argv: List[str]) -> Agent:
        a = Agent(name, argv)
        self.started.append(a)
        return a

    # Python: python -m leanmq_grpc.e2e_agent, --flags
    def python(self, cmd: str, *args: str) -> Agent:
        return self._spawn(f"python-{cmd}", [sys.executable, "-m", "leanmq_grpc.e2e_agent", cmd, *args])

    # Go: the binary built by run.sh; Go's flag package takes --flag too.
    def go(self, cmd: str, *args: str) -> Agent:
        return self._spawn(f"go-{cmd}", [self.go_agent, cmd, *args])

    def node(self, cmd: str, *args: str) -> Agent:
        return self._spawn(f"node-{cmd}", ["node", self.node_agent, cmd, *args])

    def run(self, lang: str, cmd: str, *args: str, timeout: float = 60.0) -> Agent:
        """Run an agent to completion (e.g. send); asserts exit 0."""
        a = getattr(self, lang)(cmd, *args)
        rc = a.wait_exit(timeout)
        assert rc == 0, f"{lang} {cmd} exited {rc}\n{a.describe()}"
        return a

    def stop_all(self) -> None:
        for a in self.started:
            a.stop(timeout=10)


def payload_of(d: Dict[str, Any]) -> bytes:
    return bytes.fromhex(d["payload_hex"])


def pending_count(r: redis.Redis, stream: str, group: str) -> int:
    return int(r.xpending(stream, group)["pending"])
