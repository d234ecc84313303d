#!/usr/bin/env python3
"""Fault injection for leanmqd, with a loss ledger.

    python tests/faults/chaos.py [--short|--full] [SCENARIO...]

Every scenario starts its own redis-server (free loopback port, temp dir) and
its own leanmqd processes (the built binary), runs a producer at a steady rate
and consumers on raw gRPC Subscribe streams, injects a fault with real
processes and real signals, and reconciles a ledger:

- a message is *accepted* only when Send/SendBatch returned OK;
- consumers record the number a payload carries and then ack it;
- at the end every accepted message (its number and the entry id Send
  returned) must have been delivered at least once, no delivered number may
  be one that was never sent, duplicates are counted, and Redis must be
  drained: the group's PEL empty (XPENDING), `webhook:<q>:leases:<group>`
  and `webhook:<q>:delayed` empty.

One line per scenario:  `<scenario>: accepted=N delivered=N lost=N duplicates=D`
followed by indented notes. Exit status 1 when any scenario that promises no
loss lost a message, or any scenario failed one of its checks.

Scenarios (`--short` for CI, `--full` for longer phases, 500 msg/s, a 10 s
pause and a 30 min soak):

  redis-kill-aof-always    SIGKILL redis (appendfsync always) mid-load, restart
                           on the same port and dir; lost must be 0
  redis-kill-aof-everysec  the same with everysec; the loss is reported, not failed
  leanmqd-kill             two replicas, SIGKILL one; its leases expire, the
                           other redelivers
  leanmqd-rolling-restart  SIGTERM and restart each replica in turn; producers
                           may only see UNAVAILABLE
  subscriber-cut           a subscriber behind a TCP proxy is partitioned (no
                           close) holding unacked deliveries, then reset
  stalled-consumer         a consumer that never acks (--max-attempts 3): attempts
                           1,2,3 then the DLQ with a lease reason
  redis-pause              SIGSTOP redis (5 s / 10 s); sends must fail with
                           UNAVAILABLE or DEADLINE_EXCEEDED, never a false OK
  redis-refuses-writes     redis refuses writes in turn (MISCONF, NOREPLICAS, OOM),
                           a few s each: no OK meanwhile, no INTERNAL; lost must be 0
  sentinel-failover-wait1  primary + 2 replicas + Sentinel, leanmqd on the sentinel
                           URL with --wait-replicas 1; SIGKILL the primary; lost must be 0
  sentinel-failover-wait0  the same without --wait-replicas; the loss is reported, not failed
  redis-flush              redis restarted empty: groups recreated, delivery of
                           what is sent after, no spinning when idle
  flood-no-ack             max_in_flight 100 never acked while 20k are sent:
                           never more than 100 held, bounded RSS
  redis-partition          (scenarios_network.py) leanmqd reaches redis through a
                           proxy that goes silent 20 s (no FIN/RST), then heals:
                           no false OK, fast UNAVAILABLE, NOT_SERVING then SERVING
  client-vanish            (scenarios_network.py) the only subscriber, holding its
                           max_in_flight credit, vanishes without FIN; keepalive
                           frees its stream, a new subscriber gets everything
  cluster-failover         (scenarios_network.py) a 3+3 Redis Cluster; SIGKILL the
                           primary owning the queue's slot under load; its replica
                           is promoted and leanmqd follows; loss reported (no WAIT)
  cluster-failover-wait1   (scenarios_network.py) the same with --wait-replicas 1; the
                           killed node rejoins as a replica; lost must be 0
  soak                     1% nacks, subscriber churn, RSS/fds/clients/memory
                           sampled (3 min short, 30 min full; not in the default set)

Every wait polls a condition under a deadline; sleeps only pace the producer,
set the length of a fault, or sample resources. Set LEANMQD (or --binary) to
test another build; it is copied first, so a rebuild mid-run cannot swap it.
"""
from __future__ import annotations

import os

# Before grpc is imported: no fork handlers (we spawn with fork+exec) and no chatter.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import atexit  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple  # noqa: E402

try:
    import grpc  # noqa: E402
    import redis  # noqa: E402
    from leanmq_grpc._proto.leanmq.v1 import broker_pb2 as pb  # noqa: E402
    from leanmq_grpc._proto.leanmq.v1 import broker_pb2_grpc as pbg  # noqa: E402
except ImportError as _e:
    # Run by a Python without the deps: use the suite's venv when it exists.
    _venv_py = Path(__file__).resolve().parent / ".venv" / "bin" / "python"
    if _venv_py.exists() and Path(sys.prefix).resolve() != _venv_py.parents[1].resolve():
        os.execv(str(_venv_py), [str(_venv_py), *sys.argv])
    sys.exit(f"chaos.py: {_e}; run tests/faults/run.sh once to create tests/faults/.venv")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")

PATH = "/chaos/ledger"
QUEUE = "chaos_ledger"
GROUP = QUEUE + "-group"  # LeanMQ's default group, made by the first Send
STREAM = "webhook:" + QUEUE
LEASES = f"{STREAM}:leases:{GROUP}"
DELAYED = f"{STREAM}:delayed"
DLQ = f"{STREAM}:dlq"

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED

CHANNEL_OPTIONS = [
    # Reconnect fast after a restart; the default backoff grows to minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.enable_retries", 0),
    # Each channel has its own connections (a consumer is its own client).
    ("grpc.use_local_subchannel_pool", 1),
]

PROFILES = {
    "short": dict(rate=300, warm=4.0, after=4.0, outage=1.0, pause=5.0, soak=180.0,
                  flood=20000, flood_rate=2000, stall_rate=150, stall_secs=4.0),
    "full": dict(rate=500, warm=15.0, after=20.0, outage=3.0, pause=10.0, soak=1800.0,
                 flood=20000, flood_rate=2000, stall_rate=300, stall_secs=15.0),
}

SCENARIOS = [
    "redis-kill-aof-always",
    "redis-kill-aof-everysec",
    "leanmqd-kill",
    "leanmqd-rolling-restart",
    "subscriber-cut",
    "stalled-consumer",
    "redis-pause",
    "redis-flush",
    "flood-no-ack",
    "soak",
]
DEFAULT_SCENARIOS = [s for s in SCENARIOS if s != "soak"]


# ----------------------------------------------------------------- utilities


class Fatal(Exception):
    """A condition that makes waiting pointless (a process died)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `cond` until truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Fatal:
            raise
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last!r})" if last else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def payload_of(n: int) -> bytes:
    return json.dumps({"n": n, "chaos": True}, separators=(",", ":")).encode()


def number_of(payload: bytes) -> int:
    v = json.loads(payload)
    n = v["n"]
    if not isinstance(n, int):
        raise ValueError(f"n is {n!r}")
    return n


def proc_stat(pid: int) -> Tuple[str, int]:
    """(state, utime+stime ticks) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rindex(")") + 2:].split()
    return rest[0], int(rest[11]) + int(rest[12])


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_LIVE: List[subprocess.Popen] = []


def _kill_all() -> None:
    for p in list(_LIVE):
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:  # noqa: BLE001
                pass


atexit.register(_kill_all)


def _on_signal(signum, _frame):
    _kill_all()
    sys.exit(128 + signum)


# ------------------------------------------------------------------ processes


class RedisServer:
    def __init__(self, workdir: Path, name: str = "redis", appendonly: bool = True,
                 fsync: str = "everysec", extra: Sequence[str] = ()):
        self.port = free_port()
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.fsync = fsync
        self.extra = list(extra)  # more redis-server arguments (replicaof, cluster, ...)
        self.proc: Optional[subprocess.Popen] = None
        self._client: Optional[redis.Redis] = None

    def start(self, timeout: float = 20.0) -> "RedisServer":
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", str(self.dir), "--save", "", "--daemonize", "no",
               "--protected-mode", "no", "--logfile", "redis.log",
               "--appendonly", "yes" if self.appendonly else "no",
               "--appendfsync", self.fsync, *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        _LIVE.append(self.proc)

        def up():
            if self.proc.poll() is not None:
                raise Fatal(f"redis-server exited with {self.proc.returncode}; see {self.dir}/redis.log")
            return self.client().ping()

        wait_until(up, timeout, f"redis-server on port {self.port} to answer PING")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                                       socket_connect_timeout=2)
        return self._client

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop_sig(self) -> None:
        """SIGSTOP, and wait until the kernel shows it stopped."""
        self.proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: proc_stat(self.pid)[0] == "T", 5, "redis-server to be stopped", 0.005)

    def cont_sig(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def wipe(self) -> None:
        for p in self.dir.iterdir():
            if p.name == "redis.log":
                continue
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()

    def info(self) -> Dict[str, Any]:
        return self.client().info()

    def shutdown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._client is not None:
            self._client.close()


class Leanmqd:
    def __init__(self, binary: Path, workdir: Path, name: str, redis_port: int,
                 args: Sequence[str], redis_url: Optional[str] = None):
        self.binary = binary
        self.name = name
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.redis_port = redis_port
        # Any other --redis-url (redis+sentinel://, redis+cluster://); else
        # the one redis-server on redis_port.
        self.redis_url = redis_url or f"redis://127.0.0.1:{redis_port}"
        self.args = list(args)
        self.log = workdir / f"{name}.log"
        self.proc: Optional[subprocess.Popen] = None
        self._health = grpc.insecure_channel(self.addr, options=CHANNEL_OPTIONS)
        self._check = self._health.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda b: b, response_deserializer=lambda b: b)
        self.starts = 0

    def start(self, timeout: float = 30.0) -> "Leanmqd":
        cmd = [str(self.binary), "--listen", self.addr,
               "--redis-url", self.redis_url, *self.args]
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        with open(self.log, "ab") as log:
            log.write(f"\n==== start {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        _LIVE.append(self.proc)
        self.starts += 1

        def serving():
            if self.proc.poll() is not None:
                raise Fatal(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
            return self.health() == "SERVING"

        wait_until(serving, timeout, f"{self.name} to report SERVING")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self, timeout: float = 1.0) -> str:
        resp = self._check(b"", timeout=timeout)
        status = resp[1] if len(resp) >= 2 and resp[0] == 0x08 else 0
        return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}.get(status, str(status))

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float) -> Tuple[Optional[int], float]:
        """SIGTERM and wait up to `timeout`; (exit code or None, seconds taken)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - t0
        return rc, time.monotonic() - t0

    def shutdown(self) -> Optional[int]:
        rc = None
        if self.proc is not None and self.proc.poll() is None:
            rc, _ = self.terminate(15)
            if rc is None:
                self.kill9()
        self._health.close()
        return rc

    def cpu_ticks(self) -> int:
        return proc_stat(self.pid)[1]

    def rss_kb(self) -> int:
        return proc_rss_kb(self.pid)

    def fds(self) -> int:
        return proc_fds(self.pid)

    def panics(self) -> List[str]:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [l for l in text.splitlines() if "panicked" in l]


class Proxy:
    """A TCP proxy on asyncio (own thread) between one client and leanmqd.

    `cut()` stops forwarding in both directions without closing anything: the
    proxy stops reading, so from leanmqd's side the peer is alive at the TCP
    level but silent, its window closing as buffers fill (a partition, or a
    frozen client host). `reset()` then closes both sides with RST.
    """

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.blackhole = False
        self.closed = False
        self.dropped_bytes = 0
        self.local_ports: Set[int] = set()  # the proxy's ends of its upstream connections
        self.conns: List[Tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="proxy", daemon=True)
        self._ready = threading.Event()
        self.server = None

    def start(self) -> "Proxy":
        self.thread.start()
        wait_until(self._ready.is_set, 5, "proxy to listen")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self.loop.run_forever()
        self.loop.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            cw.close()
            return
        self.local_ports.add(uw.get_extra_info("sockname")[1])
        self.conns.append((cw, uw))
        await asyncio.gather(self._pump(cr, uw), self._pump(ur, cw), return_exceptions=True)

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while not self.closed:
                if self.blackhole:
                    await asyncio.sleep(0.1)  # partitioned: read nothing, send nothing
                    continue
                data = await r.read(65536)
                if not data:
                    break
                if self.blackhole:
                    self.dropped_bytes += len(data)  # read just as the cut came
                    continue
                w.write(data)
                await w.drain()
        except Exception:  # noqa: BLE001 - a reset connection ends the pump
            pass
        finally:
            try:
                w.close()
            except Exception:  # noqa: BLE001
                pass

    def cut(self) -> None:
        self.blackhole = True

    def upstream_open(self) -> bool:
        """Does leanmqd still hold an ESTABLISHED socket to this proxy?"""
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                lport = int(parts[1].split(":")[1], 16)
                rport = int(parts[2].split(":")[1], 16)
                if lport == self.upstream and rport in self.local_ports and parts[3] == "01":
                    return True
        return False

    def reset(self) -> None:
        """Close every connection abruptly (RST on both sides) and stop listening."""

        async def _reset():
            self.closed = True
            if self.server is not None:
                self.server.close()
            for cw, uw in self.conns:
                for w in (cw, uw):
                    sock = w.get_extra_info("socket")
                    try:
                        if sock is not None:
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                    w.transport.abort()

        asyncio.run_coroutine_threadsafe(_reset(), self.loop).result(timeout=5)

    def stop(self) -> None:
        if self.loop.is_running():
            try:
                self.reset()
            except Exception:  # noqa: BLE001
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)


# --------------------------------------------------------------------- ledger


class Ledger:
    """What was sent, what Send said, what consumers processed."""

    def __init__(self):
        self.lock = threading.Lock()
        self.next_n = 0
        self.attempted: Set[int] = set()
        # (numbers, t0, t1, code name, target, message ids)
        self.attempts: List[Tuple[Tuple[int, ...], float, float, str, str, Tuple[str, ...]]] = []
        self.accepted: Dict[int, Tuple[str, float, float]] = {}  # n -> (entry id, t0, t1)
        self.gave_up: Set[int] = set()
        # n -> [(entry id, attempt, consumer, time)]
        self.processed: Dict[int, List[Tuple[str, int, str, float]]] = collections.defaultdict(list)
        self.bad: List[str] = []

    def new_numbers(self, k: int) -> List[int]:
        with self.lock:
            ns = list(range(self.next_n, self.next_n + k))
            self.next_n += k
            self.attempted.update(ns)
            return ns

    def sent_ok(self, ns: Sequence[int], ids: Sequence[str], t0: float, t1: float, target: str) -> None:
        with self.lock:
            self.attempts.append((tuple(ns), t0, t1, "OK", target, tuple(ids)))
            for n, mid in zip(ns, ids):
                self.accepted[n] = (mid, t0, t1)

    def sent_err(self, ns: Sequence[int], code: str, t0: float, t1: float, target: str) -> None:
        with self.lock:
            self.attempts.append((tuple(ns), t0, t1, code, target, ()))

    def give_up(self, ns: Sequence[int]) -> None:
        with self.lock:
            self.gave_up.update(ns)

    def process(self, n: int, mid: str, attempt: int, who: str) -> None:
        with self.lock:
            self.processed[n].append((mid, attempt, who, time.monotonic()))

    def bad_delivery(self, what: str) -> None:
        with self.lock:
            self.bad.append(what)

    # views -----------------------------------------------------------------

    def n_accepted(self, since: float = -1.0) -> int:
        with self.lock:
            return sum(1 for (_, t0, _) in self.accepted.values() if t0 >= since)

    def accepted_snapshot(self) -> Dict[int, Tuple[str, float, float]]:
        with self.lock:
            return dict(self.accepted)

    def processed_ids(self, n: int) -> Set[str]:
        with self.lock:
            return {p[0] for p in self.processed.get(n, ())}

    def missing(self, accepted: Dict[int, Tuple[str, float, float]]) -> List[int]:
        with self.lock:
            return [n for n, (mid, _, _) in accepted.items()
                    if mid not in {p[0] for p in self.processed.get(n, ())}]

    def error_codes(self) -> collections.Counter:
        with self.lock:
            return collections.Counter(a[3] for a in self.attempts if a[3] != "OK")

    def reconcile(self, accepted: Dict[int, Tuple[str, float, float]]) -> Dict[str, Any]:
        with self.lock:
            lost = sorted(n for n, (mid, _, _) in accepted.items()
                          if mid not in {p[0] for p in self.processed.get(n, ())})
            dups = sum(len(self.processed[n]) - 1 for n in accepted if self.processed.get(n))
            phantom = sorted(n for n in self.processed if n not in self.attempted)
            landed = sorted(n for n in self.processed if n in self.attempted and n not in self.accepted)
            redelivered = sum(1 for ps in self.processed.values() for p in ps if p[1] > 1)
            multi_entry = sum(1 for ps in self.processed.values() if len({p[0] for p in ps}) > 1)
            return dict(accepted=len(accepted), delivered=len(accepted) - len(lost), lost=len(lost),
                        duplicates=dups, lost_list=lost, phantom=phantom, landed_unaccepted=landed,
                        redelivered=redelivered, multi_entry=multi_entry,
                        deliveries=sum(len(ps) for ps in self.processed.values()))


# ---------------------------------------------------------- producer, consumer


class Producer(threading.Thread):
    """Sends uniquely numbered messages at `rate`/s; retries a number (rotating
    targets) until Send returns OK or `give_up` seconds passed."""

    def __init__(self, ledger: Ledger, targets: Sequence[str], rate: float, batch: int = 1,
                 timeout: float = 3.0, give_up: float = 30.0, limit: Optional[int] = None,
                 allowed: Iterable[grpc.StatusCode] = (UNAVAILABLE, DEADLINE), name: str = "producer"):
        super().__init__(name=name, daemon=True)
        self.ledger = ledger
        self.targets = list(targets)
        self.rate = rate
        self.batch = batch
        self.timeout = timeout
        self.give_up_after = give_up
        self.limit = limit
        self.allowed = set(allowed)
        self.unexpected: List[str] = []
        self.stop_ev = threading.Event()
        self.idx = random.randrange(len(self.targets))
        self.channels = {t: grpc.insecure_channel(t, options=CHANNEL_OPTIONS) for t in self.targets}
        self.stubs = {t: pbg.BrokerStub(c) for t, c in self.channels.items()}
        self.sent = 0
        self.error: Optional[str] = None

    def run(self) -> None:
        try:
            nxt = time.monotonic()
            while not self.stop_ev.is_set() and (self.limit is None or self.sent < self.limit):
                k = self.batch if self.limit is None else min(self.batch, self.limit - self.sent)
                ns = self.ledger.new_numbers(k)
                self._send(ns)
                self.sent += k
                nxt += k / self.rate
                delay = nxt - time.monotonic()
                if delay > 0:
                    self.stop_ev.wait(delay)
                elif delay < -1.0:
                    nxt = time.monotonic()  # do not burst after an outage
        except Exception as e:  # noqa: BLE001
            self.error = f"producer crashed: {e!r}"
        finally:
            for c in self.channels.values():
                c.close()

    def _send(self, ns: List[int]) -> None:
        start = time.monotonic()
        while True:
            target = self.targets[self.idx % len(self.targets)]
            stub = self.stubs[target]
            t0 = time.monotonic()
            try:
                if len(ns) == 1 and self.batch == 1:
                    r = stub.Send(pb.SendRequest(path=PATH, payload=payload_of(ns[0]),
                                                 content_type="application/json"),
                                  timeout=self.timeout)
                    ids = [r.message_id]
                else:
                    req = pb.SendBatchRequest(messages=[
                        pb.SendRequest(path=PATH, payload=payload_of(n), content_type="application/json")
                        for n in ns])
                    r = stub.SendBatch(req, timeout=self.timeout)
                    ids = [x.message_id for x in r.results]
                t1 = time.monotonic()
                if len(ids) != len(ns) or not all(ids):
                    self.unexpected.append(f"OK with bad ids {ids!r} for {ns[:3]}...")
                    self.ledger.sent_err(ns, "BAD_OK", t0, t1, target)
                else:
                    self.ledger.sent_ok(ns, ids, t0, t1, target)
                    return
            except grpc.RpcError as e:
                t1 = time.monotonic()
                code = e.code()
                self.ledger.sent_err(ns, code.name, t0, t1, target)
                if code not in self.allowed:
                    self.unexpected.append(f"{code.name}: {e.details()} (numbers {ns[0]}..{ns[-1]}, {target})")
            self.idx += 1
            waited = time.monotonic() - start
            if waited > self.give_up_after or (self.stop_ev.is_set() and waited > 2.0):
                self.ledger.give_up(ns)
                return
            time.sleep(0.05)  # retry pacing

    def stop(self, timeout: float = 40.0) -> None:
        self.stop_ev.set()
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"{self.name} did not stop within {timeout:.0f}s")


class Consumer:
    """A Subscribe stream on raw stubs.

    mode "ack": record each delivery's number when its processing ends
    (`ack_delay` after arrival), then ack it (batched); with `nack_rate`
    some deliveries are nacked (no delay) instead, unrecorded.
    mode "hold": keep every delivery, never ack (`held`).
    `drop_on_disconnect`: work in progress is abandoned (not recorded, not
    acked) when the stream it came on breaks, so its leases must expire.
    """

    def __init__(self, ledger: Ledger, name: str, targets: Sequence[str], mode: str = "ack",
                 max_in_flight: int = 0, ack_deadline: Optional[float] = None,
                 ack_delay: float = 0.0, nack_rate: float = 0.0, drop_on_disconnect: bool = False,
                 reconnect: bool = True, group: str = ""):
        self.ledger = ledger
        self.group = group
        self.name = name
        self.targets = list(targets)
        self.mode = mode
        self.max_in_flight = max_in_flight
        self.ack_deadline = ack_deadline
        self.ack_delay = ack_delay
        self.nack_rate = nack_rate
        self.drop_on_disconnect = drop_on_disconnect
        self.reconnect = reconnect
        self.lock = threading.Lock()
        self.pending: collections.deque = collections.deque()
        self.held: List[Tuple[int, int, str, str, float]] = []  # (n, attempt, receipt, id, t)
        self.deliveries = 0
        self.counts: collections.Counter = collections.Counter()
        self.stream_ends: collections.Counter = collections.Counter()
        self.gen = 0
        self.live_gen: Optional[int] = None
        self.call = None
        self.cur_stub = None
        self.churning = False
        self.abandon_gens: Set[int] = set()
        self.stop_ev = threading.Event()
        self.reader_done = threading.Event()
        self.channels: Dict[str, grpc.Channel] = {}
        self.stubs: Dict[str, pbg.BrokerStub] = {}
        self.rng = random.Random(hash(name))
        self.reader = threading.Thread(target=self._read_loop, name=f"{name}-reader", daemon=True)
        self.acker = threading.Thread(target=self._ack_loop, name=f"{name}-acker", daemon=True)

    def start(self) -> "Consumer":
        self.reader.start()
        self.acker.start()
        return self

    def _stub(self, target: str) -> pbg.BrokerStub:
        if target not in self.stubs:
            ch = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
            self.channels[target] = ch
            self.stubs[target] = pbg.BrokerStub(ch)
        return self.stubs[target]

    def _read_loop(self) -> None:
        idx = 0
        try:
            while not self.stop_ev.is_set():
                target = self.targets[idx % len(self.targets)]
                stub = self._stub(target)
                req = pb.SubscribeRequest(path=PATH, group=self.group, consumer=self.name,
                                          max_in_flight=self.max_in_flight)
                if self.ack_deadline:
                    req.ack_deadline.FromMilliseconds(int(self.ack_deadline * 1000))
                call = stub.Subscribe(req)
                with self.lock:
                    self.gen += 1
                    gen = self.gen
                    self.live_gen = gen
                    self.call = call
                    self.cur_stub = stub
                end = "OK"
                try:
                    for d in call:
                        self._on_delivery(d, gen)
                except grpc.RpcError as e:
                    end = e.code().name
                with self.lock:
                    self.live_gen = None
                    churned, self.churning = self.churning, False
                if self.stop_ev.is_set():
                    break
                if churned:
                    self.counts["churned"] += 1
                    continue
                self.stream_ends[end] += 1
                if not self.reconnect:
                    break
                idx += 1
                self.stop_ev.wait(0.1)  # reconnect pacing
        finally:
            self.reader_done.set()

    def _on_delivery(self, d: pb.Delivery, gen: int) -> None:
        try:
            n = number_of(d.payload)
        except Exception as e:  # noqa: BLE001
            self.ledger.bad_delivery(f"{self.name}: unparseable payload {d.payload[:80]!r}: {e}")
            return
        now = time.monotonic()
        with self.lock:
            self.deliveries += 1
            if self.mode == "hold":
                self.held.append((n, d.attempt, d.receipt, d.message_id, now))
            else:
                self.pending.append((now + self.ack_delay, gen, n, d.attempt, d.receipt, d.message_id))

    def _ack_loop(self) -> None:
        while True:
            stopping = self.stop_ev.is_set()
            now = time.monotonic()
            acks: List[Tuple[int, int, str, str]] = []
            nacks: List[str] = []
            with self.lock:
                while self.pending and (self.pending[0][0] <= now or stopping):
                    _, gen, n, attempt, receipt, mid = self.pending.popleft()
                    if (self.drop_on_disconnect and gen != self.live_gen) or gen in self.abandon_gens:
                        self.counts["abandoned"] += 1
                        continue
                    if self.nack_rate and self.rng.random() < self.nack_rate:
                        nacks.append(receipt)
                        continue
                    acks.append((n, attempt, receipt, mid))
            for n, attempt, _, mid in acks:
                self.ledger.process(n, mid, attempt, self.name)
            for i in range(0, len(acks), 500):
                self._ack([a[2] for a in acks[i:i + 500]])
            for r in nacks:
                self._nack(r)
            if stopping and self.reader_done.is_set():
                with self.lock:
                    if not self.pending:
                        return
            time.sleep(0.02)

    def _ack(self, receipts: List[str]) -> None:
        for _ in range(3):
            stub = self.cur_stub
            try:
                resp = stub.Ack(pb.AckRequest(receipts=receipts), timeout=3)
                for r in resp.results:
                    self.counts[pb.AckOutcome.Name(r.outcome)] += 1
                return
            except grpc.RpcError as e:
                self.counts[f"ack_err_{e.code().name}"] += 1
                time.sleep(0.2)
        self.counts["ack_dropped"] += len(receipts)

    def _nack(self, receipt: str) -> None:
        try:
            r = self.cur_stub.Nack(pb.NackRequest(receipt=receipt), timeout=3)
            self.counts[pb.NackOutcome.Name(r.outcome)] += 1
        except grpc.RpcError as e:
            self.counts[f"nack_err_{e.code().name}"] += 1

    def ack_held(self) -> collections.Counter:
        """Record and ack everything held; switch to ack mode."""
        with self.lock:
            held, self.held = self.held, []
            self.mode = "ack"
        out: collections.Counter = collections.Counter()
        for n, attempt, _, mid, _ in held:
            self.ledger.process(n, mid, attempt, self.name)
        for i in range(0, len(held), 500):
            chunk = [h[2] for h in held[i:i + 500]]
            resp = self.cur_stub.Ack(pb.AckRequest(receipts=chunk), timeout=5)
            for r in resp.results:
                out[pb.AckOutcome.Name(r.outcome)] += 1
        return out

    def churn(self, abandon: bool = False) -> None:
        """Close the stream (client cancel) and open a new one; with `abandon`,
        work in progress from the old stream is dropped (its leases must expire)."""
        with self.lock:
            if self.call is None or self.live_gen is None:
                return
            self.churning = True
            if abandon:
                self.abandon_gens.add(self.live_gen)
            call = self.call
        call.cancel()

    def connected(self) -> bool:
        return self.live_gen is not None

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_ev.set()
        with self.lock:
            call = self.call
        if call is not None:
            call.cancel()
        self.reader.join(timeout)
        self.acker.join(timeout)
        for c in self.channels.values():
            c.close()
        if self.reader.is_alive() or self.acker.is_alive():
            raise AssertionError(f"consumer {self.name} did not stop within {timeout:.0f}s")


class Producers:
    """Producer threads started together."""

    def __init__(self, members: List[Producer]):
        self.members = members

    def stop(self) -> None:
        for p in self.members:
            p.stop_ev.set()
        for p in self.members:
            p.stop()

    def is_alive(self) -> bool:
        return any(p.is_alive() for p in self.members)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.members:
            p.join(max(0.0, deadline - time.monotonic()))


class Sampler(threading.Thread):
    """Calls `fn` every `every` seconds and keeps the results."""

    def __init__(self, fn: Callable[[], Any], every: float):
        super().__init__(daemon=True)
        self.fn = fn
        self.every = every
        self.samples: List[Any] = []
        self.stop_ev = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.samples.append(self.fn())
            except Exception as e:  # noqa: BLE001 - a process gone mid-sample
                self.samples.append(e)
            if self.stop_ev.wait(self.every):
                return

    def stop(self) -> List[Any]:
        self.stop_ev.set()
        self.join(10)
        return [s for s in self.samples if not isinstance(s, Exception)]


# ------------------------------------------------------------------- scenarios


class Result:
    def __init__(self, name: str, promise: bool = True):
        self.name = name
        self.promise = promise
        self.ledger: Dict[str, Any] = dict(accepted=0, delivered=0, lost=0, duplicates=0)
        self.notes: List[str] = []
        self.failures: List[str] = []
        self.seconds = 0.0
        self.workdir: Optional[Path] = None

    def fail(self, msg: str) -> None:
        self.failures.append(msg)

    def note(self, msg: str) -> None:
        self.notes.append(msg)

    @property
    def ok(self) -> bool:
        return not self.failures and (not self.promise or self.ledger.get("lost", 0) == 0)

    def line(self) -> str:
        l = self.ledger
        return (f"{self.name}: accepted={l['accepted']} delivered={l['delivered']} "
                f"lost={l['lost']} duplicates={l['duplicates']}")


class Ctx:
    """One scenario's processes, clients, and bookkeeping."""

    def __init__(self, name: str, profile: Dict[str, Any], binary: Path, keep: bool):
        self.name = name
        self.p = profile
        self.binary = binary
        self.keep = keep
        self.dir = Path(tempfile.mkdtemp(prefix=f"leanmq-faults-{name}-"))
        self.ledger = Ledger()
        self.result = Result(name)
        self.result.workdir = self.dir
        self.redises: List[RedisServer] = []
        self.daemons: List[Leanmqd] = []
        self.producers: List[Producer] = []
        self.consumers: List[Consumer] = []
        self.proxies: List[Proxy] = []
        self.samplers: List[Sampler] = []
        self.killed: Set[str] = set()  # daemons we killed on purpose (not crashes)
        self.absent: List[int] = []  # accepted numbers whose entry is gone from the stream

    # building blocks ---------------------------------------------------------

    def redis(self, **kw) -> RedisServer:
        r = RedisServer(self.dir, **kw).start()
        self.redises.append(r)
        return r

    def leanmqd(self, name: str, r: RedisServer, args: Sequence[str]) -> Leanmqd:
        d = Leanmqd(self.binary, self.dir, name, r.port, args)
        self.daemons.append(d)
        return d.start()

    def producer(self, targets: Sequence[str], rate: Optional[float] = None, threads: int = 2,
                 **kw) -> "Producers":
        """`threads` producers sharing the rate (each a sequential client)."""
        rate = rate or self.p["rate"]
        group = []
        for _ in range(threads):
            p = Producer(self.ledger, targets, rate / threads, name=f"producer{len(self.producers)}", **kw)
            self.producers.append(p)
            group.append(p)
            p.start()
        return Producers(group)

    def consumer(self, name: str, targets: Sequence[str], ledger: Optional[Ledger] = None, **kw) -> Consumer:
        c = Consumer(ledger or self.ledger, name, targets, **kw)
        self.consumers.append(c)
        c.start()
        wait_until(c.connected, 10, f"consumer {name} to open its stream")
        return c

    def rcli(self) -> redis.Redis:
        return self.redises[0].client()

    def load_for(self, seconds: float, since_label: str = "") -> None:
        """Let the load run for `seconds` (pacing), then check it made progress."""
        before = self.ledger.n_accepted()
        time.sleep(seconds)
        gained = self.ledger.n_accepted() - before
        expect = 0.2 * seconds * sum(p.rate for p in self.producers if p.is_alive())
        if gained < expect:
            self.result.fail(f"load stalled {since_label}: {gained} accepted in {seconds:.0f}s "
                             f"(expected at least {expect:.0f})")

    # redis state -------------------------------------------------------------

    def redis_state(self) -> Dict[str, int]:
        c = self.rcli()
        try:
            pel = c.xpending(STREAM, GROUP)["pending"]
        except redis.ResponseError:
            pel = -1  # no such group
        return dict(pel=pel, leases=c.zcard(LEASES), delayed=c.zcard(DELAYED))

    def dlq_originals(self) -> Dict[str, str]:
        """Original entry id -> last failure reason, for every dead letter."""
        out = {}
        for _, fields in self.rcli().xrange(DLQ):
            f = json.loads(fields[b"data"]).get("_failures") or [{}]
            out[f[-1].get("message_id", "")] = f[-1].get("reason", "")
        return out

    def drained(self) -> bool:
        s = self.redis_state()
        return s["pel"] == 0 and s["leases"] == 0 and s["delayed"] == 0

    def stream_index(self) -> Dict[str, int]:
        """entry id -> number, for the whole stream."""
        out: Dict[str, int] = {}
        c = self.rcli()
        last = "-"
        while True:
            batch = c.xrange(STREAM, min=last, max="+", count=5000)
            if last != "-" and batch and batch[0][0].decode() == last:
                batch = batch[1:]
            if not batch:
                return out
            for eid, fields in batch:
                eid = eid.decode()
                try:
                    out[eid] = int(json.loads(fields[b"data"])["n"])
                except Exception:  # noqa: BLE001
                    out[eid] = -1
            last = batch[-1][0].decode()

    # the end -----------------------------------------------------------------

    def finish(self, accepted_filter: Callable[[int, Tuple[str, float, float]], bool] = lambda n, a: True,
               absent_is_loss: bool = True, drain_timeout: float = 60.0,
               verify_filter: Optional[Callable[[int, Tuple[str, float, float]], bool]] = None) -> None:
        """Stop producing, wait for delivery and drain, reconcile the ledger."""
        res = self.result
        for p in self.producers:
            p.stop()
            if p.error:
                res.fail(p.error)
            for u in p.unexpected[:5]:
                res.fail(f"{p.name} got an unexpected status: {u}")
            if len(p.unexpected) > 5:
                res.fail(f"{p.name}: {len(p.unexpected) - 5} more unexpected statuses")
        acc = {n: a for n, a in self.ledger.accepted_snapshot().items() if accepted_filter(n, a)}

        def delivered_or_dead():
            missing = self.ledger.missing(acc)
            if not missing:
                return True
            # Stop waiting for what cannot come any more: a message in the DLQ,
            # or one gone from the stream (lost), once nothing is pending.
            c = self.rcli()
            dead = self.dlq_originals()
            for n in missing:
                mid = acc[n][0]
                if mid not in dead and c.xrange(STREAM, min=mid, max=mid):
                    return False  # still in the stream: may yet be delivered
            return self.drained()

        try:
            wait_until(delivered_or_dead, drain_timeout, "every accepted message to be delivered", 0.1)
        except AssertionError as e:
            res.fail(f"{e}; {len(self.ledger.missing(acc))} still undelivered")
        try:
            wait_until(self.drained, 30, "PEL, leases and delayed sets to drain", 0.1)
        except AssertionError as e:
            try:
                st = self.redis_state()
            except Exception as e2:  # noqa: BLE001
                st = repr(e2)
            res.fail(f"{e}: {st}")
        for c in self.consumers:
            try:
                c.stop()
            except AssertionError as e:
                res.fail(str(e))
        vf = verify_filter or accepted_filter
        self.reconcile(acc, absent_is_loss,
                       verify={n: a for n, a in self.ledger.accepted_snapshot().items() if vf(n, a)})

    def verify_ids(self, acc: Dict[int, Tuple[str, float, float]], absent_is_loss: bool = True) -> None:
        """Every accepted entry id must be in the stream holding the number Send was given."""
        res = self.result
        try:
            idx = self.stream_index()
        except Exception as e:  # noqa: BLE001
            res.fail(f"cannot read the stream back: {e!r}")
            return
        mismatch = [(n, mid, idx[mid]) for n, (mid, _, _) in acc.items() if mid in idx and idx[mid] != n]
        absent = [n for n, (mid, _, _) in acc.items() if mid not in idx]
        if mismatch:
            res.fail(f"Send returned an entry id holding another message: {mismatch[:5]}")
        if absent and absent_is_loss:
            res.fail(f"{len(absent)} accepted entry ids absent from the stream: {absent[:10]}")
        elif absent:
            res.note(f"{len(absent)} accepted entry ids absent from the stream")
        self.absent = absent

    def reconcile(self, acc: Dict[int, Tuple[str, float, float]], absent_is_loss: bool = True,
                  verify: Optional[Dict[int, Tuple[str, float, float]]] = None) -> None:
        res = self.result
        r = self.ledger.reconcile(acc)
        res.ledger = r
        if r["lost_list"]:
            res.note(f"lost numbers (first 20): {r['lost_list'][:20]}")
            try:
                dead = self.dlq_originals()
                why = collections.Counter(dead[acc[n][0]] for n in r["lost_list"] if acc[n][0] in dead)
                if why:
                    res.note(f"of the lost, {sum(why.values())} are in the DLQ: {dict(why)}")
            except Exception:  # noqa: BLE001 - Redis may be gone in a failed run
                pass
        if r["phantom"]:
            res.fail(f"delivered numbers that were never sent: {r['phantom'][:20]}")
        if self.ledger.bad:
            res.fail(f"bad deliveries: {self.ledger.bad[:5]}")
        if verify is not None:
            self.verify_ids(verify, absent_is_loss)
        codes = self.ledger.error_codes()
        gave_up = len(self.ledger.gave_up)
        cons = collections.Counter()
        for c in self.consumers:
            cons.update(c.counts)
        res.note(f"sends: {sum(1 for a in self.ledger.attempts)} attempts, errors {dict(codes) or 'none'}, "
                 f"never accepted {gave_up}; landed though not accepted {len(r['landed_unaccepted'])}; "
                 f"stored twice by a retried send {r['multi_entry']}; redeliveries (attempt>1) {r['redelivered']}")
        res.note("consumers: " + ", ".join(f"{k}={v}" for k, v in sorted(cons.items())))
        ends = self.stream_ends()
        if ends:
            res.note(f"subscribe streams ended by the server or network: {dict(ends)}")

    def stream_ends(self) -> collections.Counter:
        ends: collections.Counter = collections.Counter()
        for c in self.consumers:
            ends.update(c.stream_ends)
        return ends

    def check_daemons(self) -> None:
        for d in self.daemons:
            if d.name not in self.killed and not d.alive():
                self.result.fail(f"{d.name} died (exit {d.proc.returncode}); see {d.log}")
            p = d.panics()
            if p:
                self.result.fail(f"{d.name} panicked: {p[0][:300]}")

    def cleanup(self) -> None:
        for s in self.samplers:
            s.stop()
        for p in self.producers:
            p.stop_ev.set()
        for c in self.consumers:
            c.stop_ev.set()
            try:
                if c.call is not None:
                    c.call.cancel()
            except Exception:  # noqa: BLE001
                pass
        for x in self.proxies:
            x.stop()
        for d in self.daemons:
            try:
                d.shutdown()
            except Exception:  # noqa: BLE001
                pass
        for r in self.redises:
            try:
                r.shutdown()
            except Exception:  # noqa: BLE001
                pass
        if self.result.ok and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.result.workdir = None


LEASE_ARGS = ["--ack-deadline", "2s", "--redis-timeout", "1s", "--shutdown-grace", "5s"]


def sc_redis_kill(ctx: Ctx, fsync: str) -> None:
    res = ctx.result
    res.promise = fsync == "always"
    r = ctx.redis(appendonly=True, fsync=fsync)
    d = ctx.leanmqd("leanmqd", r, LEASE_ARGS)
    for i in range(2):
        ctx.consumer(f"c{i}", [d.addr])
    ctx.producer([d.addr], threads=3)  # appendfsync always makes each Send wait for an fsync
    ctx.load_for(ctx.p["warm"], "before the kill")
    before = ctx.ledger.n_accepted()
    r.kill9()
    t_kill = time.monotonic()
    time.sleep(ctx.p["outage"])  # length of the outage
    r.start()
    t_up = time.monotonic()
    wait_until(lambda: ctx.ledger.n_accepted(since=t_up) > 0, 30, "a Send to succeed after the restart")
    res.note(f"redis SIGKILLed after {before} accepted; down {t_up - t_kill:.1f}s; "
             f"first OK {time.monotonic() - t_up:.1f}s after it answered PING again")
    ctx.load_for(ctx.p["after"], "after the restart")
    ctx.finish(absent_is_loss=res.promise)
    if not res.promise:
        res.note(f"appendfsync everysec, observed loss window on SIGKILL: {res.ledger['lost']} accepted "
                 f"message(s) never delivered, {len(ctx.absent)} accepted entries gone from Redis after the "
                 f"restart (not a failure here: everysec may lose up to ~1 s of acknowledged writes; a "
                 f"process kill keeps what reached the OS page cache, a host crash does not)")


def sc_leanmqd_kill(ctx: Ctx) -> None:
    res = ctx.result
    r = ctx.redis()
    a = ctx.leanmqd("leanmqd-a", r, LEASE_ARGS)
    b = ctx.leanmqd("leanmqd-b", r, LEASE_ARGS)
    # Consumers on A hold work 300 ms and abandon it when their stream breaks,
    # so A's death leaves leases that only expiry can free.
    ca = [ctx.consumer(f"a{i}", [a.addr, b.addr], ack_delay=0.3, drop_on_disconnect=True) for i in range(2)]
    ctx.consumer("b0", [b.addr, a.addr])
    ctx.producer([a.addr, b.addr])
    ctx.load_for(ctx.p["warm"], "before the kill")
    with_a = sum(len(c.pending) for c in ca)
    a.kill9()
    ctx.killed.add(a.name)
    t_kill = time.monotonic()
    res.note(f"leanmqd-a SIGKILLed with ~{with_a} deliveries in progress on its consumers")
    wait_until(lambda: all(c.connected() and c.cur_stub is c.stubs.get(b.addr) for c in ca), 15,
               "A's consumers to move to B")
    ctx.load_for(ctx.p["after"], "after the kill")
    ctx.finish()
    ab = sum(c.counts["abandoned"] for c in ca)
    redeliv = sum(1 for ps in ctx.ledger.processed.values() for p in ps if p[1] > 1 and p[3] > t_kill)
    res.note(f"abandoned on A's consumers {ab}; redelivered after the kill {redeliv}")
    if ab and not redeliv:
        res.fail("work abandoned on the killed instance was never redelivered")


def sc_rolling_restart(ctx: Ctx) -> None:
    res = ctx.result
    r = ctx.redis()
    a = ctx.leanmqd("leanmqd-a", r, LEASE_ARGS)
    b = ctx.leanmqd("leanmqd-b", r, LEASE_ARGS)
    ctx.consumer("a0", [a.addr, b.addr])
    ctx.consumer("b0", [b.addr, a.addr])
    ctx.consumer("a1", [a.addr, b.addr])
    ctx.producer([a.addr, b.addr], allowed=(UNAVAILABLE,), timeout=10.0)
    ctx.load_for(ctx.p["warm"], "before the restart")
    for d in (a, b):
        rc, took = d.terminate(15)
        if rc is None:
            res.fail(f"{d.name} did not exit within 15s of SIGTERM (--shutdown-grace 5s)")
            d.kill9()
        elif rc != 0:
            res.fail(f"{d.name} exited with {rc} after SIGTERM")
        res.note(f"{d.name}: SIGTERM -> exit {rc} in {took:.2f}s")
        t0 = time.monotonic()
        d.start()
        res.note(f"{d.name}: restarted, SERVING after {time.monotonic() - t0:.2f}s")
        ctx.load_for(ctx.p["after"] / 2 + 1, f"after restarting {d.name}")
    ctx.finish()
    other = {k: v for k, v in ctx.stream_ends().items() if k != "UNAVAILABLE"}
    if other:
        res.fail(f"subscribe streams ended with other than UNAVAILABLE during the restarts: {other}")


def sc_subscriber_cut(ctx: Ctx) -> None:
    res = ctx.result
    r = ctx.redis()
    d = ctx.leanmqd("leanmqd", r, LEASE_ARGS)
    proxy = Proxy(d.port).start()
    ctx.proxies.append(proxy)
    ctx.consumer("good", [d.addr])
    x = ctx.consumer("cut", [proxy.addr], mode="hold", max_in_flight=30, reconnect=False)
    ctx.producer([d.addr])
    wait_until(lambda: len(x.held) >= 20, 15, "the cut subscriber to hold 20 deliveries")
    ctx.load_for(1.0, "before the cut")
    proxy.cut()
    t_cut = time.monotonic()
    with x.lock:
        n_held = len(x.held)
    res.note(f"proxy stopped forwarding (partition, sockets left open) with {n_held} unacked deliveries "
             f"on the cut subscriber")

    def taken_over():
        with x.lock:
            held = list(x.held)
        return all(h[3] in ctx.ledger.processed_ids(h[0]) for h in held)

    try:
        wait_until(taken_over, 30, "another subscriber to get the cut subscriber's deliveries", 0.1)
        res.note(f"all of them redelivered to the other subscriber {time.monotonic() - t_cut:.1f}s after the cut")
    except AssertionError as e:
        res.fail(str(e))
    # The half-open connection: leanmqd should find it dead (HTTP/2 keepalive:
    # 20 s ping interval, 10 s timeout) and close its side.
    try:
        wait_until(lambda: not proxy.upstream_open(), 60,
                   "leanmqd to close the half-open subscriber connection", 0.2)
        res.note(f"leanmqd closed the half-open connection {time.monotonic() - t_cut:.1f}s after the cut")
    except AssertionError as e:
        res.fail(str(e))
    proxy.reset()
    wait_until(x.reader_done.is_set, 10, "the cut subscriber's stream to fail after the reset")
    res.note(f"proxy reset (RST); cut subscriber's stream ended {dict(x.stream_ends)}")
    for n, attempt, _, mid, _ in x.held:
        later = [p for p in ctx.ledger.processed.get(n, []) if p[0] == mid]
        if later and max(p[1] for p in later) <= attempt:
            res.fail(f"message {n} redelivered with attempt {later[0][1]} after attempt {attempt}")
    ctx.load_for(ctx.p["after"] / 2, "after the cut")
    ctx.finish()
    if d.health() != "SERVING":
        res.fail("leanmqd not SERVING after the cut")
    hist = collections.Counter(max(p[1] for p in ps) for ps in ctx.ledger.processed.values())
    res.note(f"highest attempt per message: {dict(sorted(hist.items()))}")
    dlq = ctx.rcli().xlen(DLQ)
    if dlq:
        res.fail(f"{dlq} message(s) dead-lettered: attempts burned on the partitioned subscriber")


def sc_stalled_consumer(ctx: Ctx) -> None:
    res = ctx.result
    r = ctx.redis()
    d = ctx.leanmqd("leanmqd", r, ["--ack-deadline", "1s", "--max-attempts", "3", "--redis-timeout", "1s"])
    s = ctx.consumer("stalled", [d.addr], mode="hold", max_in_flight=10000)
    p = ctx.producer([d.addr], rate=ctx.p["stall_rate"])
    ctx.load_for(ctx.p["stall_secs"], "while stalled")
    p.stop()
    acc = ctx.ledger.accepted_snapshot()
    c = ctx.rcli()

    def dlq_entries() -> Dict[str, Tuple[int, List[dict]]]:
        out = {}
        for eid, fields in c.xrange(DLQ):
            v = json.loads(fields[b"data"])
            f = v.get("_failures") or []
            orig = f[-1].get("message_id", "") if f else ""
            out[orig] = (v.get("n"), f)
        return out

    def all_dead():
        dl = dlq_entries()
        return all(mid in dl for (mid, _, _) in acc.values()) and ctx.drained()

    try:
        wait_until(all_dead, 60, "every accepted message to reach the DLQ and Redis to drain", 0.2)
    except AssertionError as e:
        res.fail(f"{e}: {ctx.redis_state()}")
    s.stop()
    dl = dlq_entries()
    with s.lock:
        held = list(s.held)
    seen: Dict[int, List[int]] = collections.defaultdict(list)
    by_id: Dict[str, List[int]] = collections.defaultdict(list)
    for n, attempt, _, mid, _ in held:
        seen[n].append(attempt)
        by_id[mid].append(attempt)
    in_dlq = sum(1 for (mid, _, _) in acc.values() if mid in dl)
    lost = [n for n, (mid, _, _) in acc.items() if mid not in dl]
    bad_attempts = [(n, by_id[mid]) for n, (mid, _, _) in acc.items() if by_id[mid] != [1, 2, 3]]
    reasons = collections.Counter()
    bad_records = []
    for n, (mid, _, _) in acc.items():
        if mid not in dl:
            continue
        dn, f = dl[mid]
        last = f[-1] if f else {}
        reasons[last.get("reason", "")] += 1
        if dn != n or "lease" not in last.get("reason", "") or last.get("attempts") != 3:
            bad_records.append((n, dn, last))
    res.ledger = dict(accepted=len(acc), delivered=sum(1 for n in acc if n in seen), lost=len(lost),
                      duplicates=sum(len(v) - 1 for n, v in seen.items() if n in acc))
    res.note(f"in DLQ {in_dlq} of {len(acc)} accepted (a stalled consumer dead-letters, it does not lose); "
             f"DLQ length {c.xlen(DLQ)}; deliveries {len(held)}")
    res.note(f"failure reasons: {dict(reasons.most_common(2))}")
    if lost:
        res.note(f"accepted but not in the DLQ (first 20): {lost[:20]}")
    if bad_attempts:
        res.fail(f"{len(bad_attempts)} messages without attempts 1,2,3: {bad_attempts[:5]}")
    if bad_records:
        res.fail(f"{len(bad_records)} DLQ records without a lease reason or attempts=3: {bad_records[:3]}")
    phantom = [n for n in seen if n not in ctx.ledger.attempted]
    if phantom:
        res.fail(f"delivered numbers that were never sent: {phantom[:10]}")


def sc_redis_pause(ctx: Ctx) -> None:
    res = ctx.result
    r = ctx.redis()
    d = ctx.leanmqd("leanmqd", r, LEASE_ARGS)
    for i in range(2):
        ctx.consumer(f"c{i}", [d.addr])
    ctx.producer([d.addr], threads=2, timeout=3.0)
    ctx.load_for(ctx.p["warm"], "before the pause")
    health: collections.Counter = collections.Counter()
    r.stop_sig()
    t_stop = time.monotonic()
    end = t_stop + ctx.p["pause"]
    while time.monotonic() < end:  # the pause itself; sample health meanwhile
        try:
            health[d.health(timeout=0.5)] += 1
        except grpc.RpcError as e:
            health[e.code().name] += 1
        time.sleep(0.25)
    t_cont = time.monotonic()
    r.cont_sig()
    wait_until(lambda: ctx.ledger.n_accepted(since=t_cont) > 0, 30, "a Send to succeed after SIGCONT")
    t_ok = time.monotonic()
    wait_until(lambda: d.health() == "SERVING", 15, "health SERVING after SIGCONT")
    res.note(f"redis SIGSTOPped {t_cont - t_stop:.1f}s; first OK {t_ok - t_cont:.2f}s after SIGCONT; "
             f"health during the pause {dict(health)}")
    if "NOT_SERVING" not in health:
        res.note("health never showed NOT_SERVING during the pause")
    ctx.load_for(ctx.p["after"], "after the pause")
    ctx.finish()
    # Sends that started and ended inside the pause.
    with ctx.ledger.lock:
        inside = [a for a in ctx.ledger.attempts if a[1] >= t_stop and a[2] <= t_cont]
    codes = collections.Counter(a[3] for a in inside)
    res.note(f"sends entirely inside the pause: {dict(codes)}")
    c = ctx.rcli()
    for ns, _, _, code, _, ids in inside:
        if code == "OK":
            for n, mid in zip(ns, ids):
                e = c.xrange(STREAM, min=mid, max=mid)
                if not e or json.loads(e[0][1][b"data"]).get("n") != n:
                    res.fail(f"false OK during the pause: message {n} id {mid} not in Redis")
                else:
                    res.note(f"OK during the pause for {n}, verified in Redis")
        elif code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            res.fail(f"send during the pause returned {code}")
    if not inside:
        res.fail("no send started and ended inside the pause (the check saw nothing)")


def sc_redis_flush(ctx: Ctx) -> None:
    res = ctx.result
    r = ctx.redis()
    d = ctx.leanmqd("leanmqd", r, LEASE_ARGS)
    for i in range(2):
        ctx.consumer(f"c{i}", [d.addr])
    # A second, named group: it must get every post-flush message too.
    audit = Ledger()
    ctx.consumer("audit0", [d.addr], ledger=audit, group="audit")
    prod = ctx.producer([d.addr])
    ctx.load_for(ctx.p["warm"], "before the flush")
    r.kill9()
    t_flush = time.monotonic()
    r.wipe()
    r.start()
    t_up = time.monotonic()
    wait_until(lambda: ctx.ledger.n_accepted(since=t_up) > 0, 30, "a Send to succeed on the empty Redis")
    res.note(f"redis killed, data deleted, restarted empty in {t_up - t_flush:.1f}s; "
             f"first OK {time.monotonic() - t_up:.2f}s later")
    ctx.load_for(ctx.p["after"], "after the flush")
    prod.stop()
    post = lambda n, a: a[1] > t_flush  # noqa: E731 - sends that began after the old dataset died
    acc = {n: a for n, a in ctx.ledger.accepted_snapshot().items() if post(n, a)}
    wait_until(lambda: not ctx.ledger.missing(acc) and ctx.drained(), 60,
               "post-flush messages delivered and Redis drained", 0.1)

    def audit_caught_up():
        for g in ctx.rcli().xinfo_groups(STREAM):
            if g["name"] == b"audit":
                return g["pending"] == 0 and g["lag"] == 0
        return False

    try:
        wait_until(audit_caught_up, 30, "the named group to read the whole stream and ack it", 0.1)
    except AssertionError as e:
        res.fail(str(e))
    audit_missing = sorted(audit.missing(acc))
    res.note(f"named group 'audit': got {len(acc) - len(audit_missing)} of {len(acc)} post-flush messages")
    if audit_missing:
        first_ok = min(a[1] for a in acc.values())
        got = [acc[n][1] for n in acc if n not in set(audit_missing)]
        res.fail(f"named group 'audit' never got {len(audit_missing)} messages accepted after the flush "
                 f"(numbers {audit_missing[0]}..{audit_missing[-1]}, sent in the first "
                 f"{max(acc[n][1] for n in audit_missing) - first_ok:.2f}s after Redis came back; "
                 f"its first delivered post-flush message was sent "
                 f"{(min(got) - first_ok) if got else float('nan'):.2f}s after): the group was recreated "
                 f"at the end of the stream after they were appended")

    def idle_cpu(label: str) -> float:
        t0, c0 = time.monotonic(), d.cpu_ticks()
        time.sleep(5.0)  # the idle window being measured
        used = (d.cpu_ticks() - c0) / CLK_TCK / (time.monotonic() - t0)
        res.note(f"leanmqd CPU while idle {label}: {100 * used:.1f}% of a core over 5s")
        if used > 0.10:
            res.fail(f"leanmqd spins while idle {label}: {100 * used:.1f}% of a core")
        return used

    idle_cpu("after the flush")
    ctx.verify_ids(acc)
    # A second flush with nothing sent: the queue and group are gone while
    # subscribers wait.
    r.kill9()
    r.wipe()
    r.start()
    t2 = time.monotonic()
    wait_until(lambda: d.health() == "SERVING", 15, "leanmqd SERVING after the second flush")
    idle_cpu("on an empty Redis (second flush, no sends)")
    p2 = ctx.producer([d.addr], rate=100, limit=200, threads=1)
    wait_until(lambda: not p2.is_alive(), 30, "200 sends after the second flush")
    pre = {n: a for n, a in ctx.ledger.accepted_snapshot().items() if not post(n, a)}
    ctx.finish(accepted_filter=post, verify_filter=lambda n, a: a[1] > t2)
    pre_lost = len(ctx.ledger.missing(pre))
    res.note(f"before the flush: {len(pre)} accepted, {pre_lost} never delivered (gone with the dataset, "
             f"expected); after the second flush: {sum(1 for a in ctx.ledger.accepted.values() if a[1] > t2)} "
             f"accepted")


def sc_flood(ctx: Ctx) -> None:
    res = ctx.result
    r = ctx.redis()
    d = ctx.leanmqd("leanmqd", r, ["--ack-deadline", "30s", "--redis-timeout", "1s"])
    flood = ctx.consumer("flood", [d.addr], mode="hold", max_in_flight=100, ack_deadline=120.0)
    rss = Sampler(lambda: d.rss_kb(), 0.2)
    ctx.samplers.append(rss)
    rss.start()
    pel = Sampler(lambda: ctx.redis_state()["pel"], 0.5)
    ctx.samplers.append(pel)
    pel.start()
    total = ctx.p["flood"]
    prod = ctx.producer([d.addr], rate=ctx.p["flood_rate"], batch=50, limit=total, threads=1)
    peak = 0
    deadline = time.monotonic() + 120
    while prod.is_alive() and time.monotonic() < deadline:  # observe the stream while the flood runs
        peak = max(peak, flood.deliveries)
        time.sleep(0.05)
    prod.join(5)
    wait_until(lambda: flood.deliveries >= 100, 15, "the flood subscriber to fill its 100 slots")
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:  # a last look: nothing more may arrive
        peak = max(peak, flood.deliveries)
        time.sleep(0.05)
    rs = rss.stop()
    pels = pel.stop()
    res.note(f"flood subscriber: max_in_flight 100, never acked, held at most {peak} deliveries "
             f"while {ctx.ledger.n_accepted()} messages were accepted")
    if peak > 100:
        res.fail(f"a stream held {peak} unacked deliveries with max_in_flight 100")
    res.note(f"leanmqd VmRSS: start {rs[0] // 1024} MiB, max {max(rs) // 1024} MiB, end {rs[-1] // 1024} MiB "
             f"({len(rs)} samples); Redis PEL max {max(pels) if pels else '?'} during the flood")
    if max(rs) - rs[0] > 64 * 1024:
        res.fail(f"leanmqd RSS grew by {(max(rs) - rs[0]) // 1024} MiB during the flood")
    out = flood.ack_held()
    res.note(f"flood subscriber acked what it held: {dict(out)}")
    for i in range(2):
        ctx.consumer(f"drain{i}", [d.addr], max_in_flight=500)
    ctx.finish(drain_timeout=120)


def write_soak_samples(path: str, samples: List[dict], ledger: "Ledger") -> None:
    """One CSV row per sample: leanmqd RSS and fds, Redis clients and memory,
    and the latency (Send called -> first handled, after the 50 ms handler) of the
    messages sent since the previous sample."""
    with ledger.lock:
        sent = sorted((t0, ledger.processed[n][0][3]) for n, (_, t0, _) in ledger.accepted.items()
                      if ledger.processed.get(n))
    t_start = samples[0]["t"] if samples else 0.0
    with open(path, "w") as f:
        f.write("seconds,rss_mib,fds,redis_clients,redis_mib,latency_p50_ms,latency_p99_ms,messages\n")
        prev = t_start - 5.0
        for x in samples:
            lat = sorted(1000 * (got - t0) for t0, got in sent if prev < t0 <= x["t"])
            p50 = lat[len(lat) // 2] if lat else ""
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else ""
            f.write(f"{x['t'] - t_start:.0f},{x['rss']},{x['fds']},{x['clients']},{x['mem']},"
                    f"{p50 if p50 == '' else f'{p50:.1f}'},{p99 if p99 == '' else f'{p99:.1f}'},{len(lat)}\n")
            prev = x["t"]


def sc_soak(ctx: Ctx) -> None:
    res = ctx.result
    r = ctx.redis()
    d = ctx.leanmqd("leanmqd", r, ["--ack-deadline", "5s", "--redis-timeout", "2s", "--retry-max", "5s",
                                   "--retention-max-age", "60s", "--retention-interval", "15s"])
    cons = [ctx.consumer(f"c{i}", [d.addr], nack_rate=0.01, max_in_flight=50, ack_delay=0.05)
            for i in range(4)]
    rate = 200 if ctx.p["name"] == "short" else 300
    ctx.producer([d.addr], rate=rate)

    def sample():
        info = r.info()
        return dict(t=time.monotonic(), rss=d.rss_kb() // 1024, fds=d.fds(), cpu=d.cpu_ticks(),
                    clients=info["connected_clients"], mem=info["used_memory"] // (1024 * 1024),
                    accepted=ctx.ledger.n_accepted())

    s = Sampler(sample, 5.0)
    ctx.samplers.append(s)
    s.start()
    rng = random.Random(7)
    end = time.monotonic() + ctx.p["soak"]
    churns = 0
    while time.monotonic() < end:  # the soak: churn a random subscriber every 1-4 s
        time.sleep(rng.uniform(1.0, 4.0))
        rng.choice(cons).churn(abandon=rng.random() < 0.5)
        churns += 1
    samples = s.stop()
    ctx.finish(absent_is_loss=False, drain_timeout=90)
    if os.environ.get("SOAK_SAMPLES"):
        write_soak_samples(os.environ["SOAK_SAMPLES"], samples, ctx.ledger)
    res.note(f"{ctx.p['soak']:.0f}s at {rate} msg/s, 1% nacks, {churns} subscriber churns "
             f"(half of them abandoning work in progress)")
    for k, unit in (("rss", "MiB"), ("fds", ""), ("clients", ""), ("mem", "MiB")):
        vals = [x[k] for x in samples]
        res.note(f"{k}: first {vals[0]}{unit} last {vals[-1]}{unit} max {max(vals)}{unit} "
                 f"({len(vals)} samples, every 5s)")
    if samples:
        cpu = (samples[-1]["cpu"] - samples[0]["cpu"]) / CLK_TCK / max(1e-9, samples[-1]["t"] - samples[0]["t"])
        res.note(f"leanmqd CPU {100 * cpu:.0f}% of a core on average")
        half = samples[len(samples) // 2:]
        if half[-1]["fds"] > samples[0]["fds"] + 50:
            res.fail(f"leanmqd fds grew {samples[0]['fds']} -> {half[-1]['fds']}")
        if half[-1]["clients"] > samples[0]["clients"] + 20:
            res.fail(f"Redis connected_clients grew {samples[0]['clients']} -> {half[-1]['clients']}")
        # RSS: the second half must not keep climbing much above the first half's peak.
        first_peak = max(x["rss"] for x in samples[: max(1, len(samples) // 2)])
        if max(x["rss"] for x in half) > first_peak * 1.5 + 32:
            res.fail(f"leanmqd RSS keeps growing: first-half peak {first_peak} MiB, "
                     f"second-half peak {max(x['rss'] for x in half)} MiB")


RUNNERS: Dict[str, Callable[[Ctx], None]] = {
    "redis-kill-aof-always": lambda c: sc_redis_kill(c, "always"),
    "redis-kill-aof-everysec": lambda c: sc_redis_kill(c, "everysec"),
    "leanmqd-kill": sc_leanmqd_kill,
    "leanmqd-rolling-restart": sc_rolling_restart,
    "subscriber-cut": sc_subscriber_cut,
    "stalled-consumer": sc_stalled_consumer,
    "redis-pause": sc_redis_pause,
    "redis-flush": sc_redis_flush,
    "flood-no-ack": sc_flood,
    "soak": sc_soak,
}


def _install_scenario_modules() -> None:
    """Scenarios that live in their own modules (scenarios_*.py, next to this
    file) add themselves here: each has `install(chaos)`, which appends its
    names to SCENARIOS (before "soak") and its runners to RUNNERS, and keeps
    this module to reach Ctx, RedisServer, Leanmqd, Proxy and the helpers."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import scenarios_network  # noqa: E402
    import scenarios_replication  # noqa: E402

    me = sys.modules[__name__]
    for mod in (scenarios_replication, scenarios_network):
        mod.install(me)
    global DEFAULT_SCENARIOS
    DEFAULT_SCENARIOS = [s for s in SCENARIOS if s != "soak"]


_install_scenario_modules()


def run_one(name: str, profile: Dict[str, Any], binary: Path, keep: bool) -> Result:
    ctx = Ctx(name, profile, binary, keep)
    t0 = time.monotonic()
    try:
        RUNNERS[name](ctx)
    except Exception as e:  # noqa: BLE001 - one scenario's failure must not stop the others
        ctx.result.fail(f"{type(e).__name__}: {e}")
        if not isinstance(e, (AssertionError, Fatal)):
            ctx.result.note(traceback.format_exc().strip().replace("\n", "\n      "))
        if ctx.result.ledger.get("accepted", 0) == 0 and ctx.ledger.accepted:
            try:
                acc = ctx.ledger.accepted_snapshot()
                ctx.reconcile(acc, verify=acc)
            except Exception:  # noqa: BLE001
                pass
    finally:
        try:
            ctx.check_daemons()
        except Exception as e:  # noqa: BLE001
            ctx.result.fail(f"check_daemons: {e!r}")
        ctx.cleanup()
    ctx.result.seconds = time.monotonic() - t0
    return ctx.result


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--short", action="store_const", const="short", dest="profile")
    g.add_argument("--full", action="store_const", const="full", dest="profile")
    ap.add_argument("--binary", default=os.environ.get("LEANMQD", str(REPO / "target/debug/leanmqd")))
    ap.add_argument("--keep", action="store_true", help="keep every scenario's work dir (logs, data)")
    ap.add_argument("--soak-seconds", type=float, help="override the soak duration")
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                    help=f"default: all but soak. One of: {', '.join(SCENARIOS)}")
    args = ap.parse_args(argv)
    profile = dict(PROFILES[args.profile or "short"], name=args.profile or "short")
    if args.soak_seconds:
        profile["soak"] = args.soak_seconds
    names = args.scenarios or DEFAULT_SCENARIOS
    for n in names:
        if n not in RUNNERS:
            ap.error(f"unknown scenario {n!r}; known: {', '.join(SCENARIOS)}")
    src = Path(args.binary)
    if not os.access(src, os.X_OK):
        print(f"leanmqd binary not found at {src} (build it, or pass --binary / LEANMQD)", file=sys.stderr)
        return 2
    if shutil.which("redis-server") is None:
        print("redis-server not found", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    # A private copy, so a rebuild of target/ during the run cannot swap it.
    bindir = Path(tempfile.mkdtemp(prefix="leanmq-faults-bin-"))
    binary = bindir / "leanmqd"
    shutil.copy2(src, binary)
    results = []
    t0 = time.monotonic()
    try:
        for n in names:
            res = run_one(n, profile, binary, args.keep)
            results.append(res)
            print(res.line(), flush=True)
            for note in res.notes:
                print(f"    {note}", flush=True)
            for f in res.failures:
                print(f"    FAIL: {f}", flush=True)
            status = "ok" if res.ok else "FAILED"
            where = f"; logs kept in {res.workdir}" if res.workdir else ""
            print(f"    [{status} in {res.seconds:.1f}s{where}]", flush=True)
    finally:
        shutil.rmtree(bindir, ignore_errors=True)
    bad = [r for r in results if not r.ok]
    print(f"\nprofile {profile['name']}, {time.monotonic() - t0:.0f}s; failed: "
          f"{', '.join(r.name for r in bad) or 'none'}")
    print(f"{len(results) - len(bad)} passed, {len(bad)} failed", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
