"""Loss-ledger scenarios: replication faults. Installed into chaos.py by install()."""
import collections
import shutil
import subprocess
import tempfile
import time
from typing import Callable, Dict, List, Sequence

chaos = None  # the chaos module, set by install()

REFUSE_SECS = 3.0  # how long each write refusal lasts once Redis confirms it
LAG_SECS = 1.0  # replication links silent before the primary dies (sentinel-failover)
PROBE = "chaos:probe"  # a key the scenario writes to see whether Redis takes writes


class _Redis:
    """A chaos.RedisServer with extra arguments, kept in ctx.redises."""

    @staticmethod
    def start(ctx, name: str, extra: Sequence[str], appendonly: bool = True) -> "chaos.RedisServer":
        r = chaos.RedisServer(ctx.dir, name=name, appendonly=appendonly, extra=extra).start()
        ctx.redises.append(r)
        return r


def _refused(c, code: str) -> bool:
    """True when a plain write to Redis fails with `code`."""
    try:
        c.set(PROBE, "1")
        return False
    except chaos.redis.exceptions.OutOfMemoryError:  # redis-py drops the OOM prefix
        if code == "OOM":
            return True
        raise
    except chaos.redis.ResponseError as e:
        if str(e).startswith(code):
            return True
        raise


def _misconf_on(ctx, c) -> None:
    """stop-writes-on-bgsave-error with a failed BGSAVE: dir set to a directory
    that is then removed (root ignores permissions; a missing dir it cannot)."""
    gone = tempfile.mkdtemp(dir=ctx.dir, prefix="rdb-gone-")
    ctx._rdb_dir = c.config_get("dir")["dir"]
    c.config_set("save", "3600 1")  # a save point: Redis only refuses writes with one
    c.config_set("stop-writes-on-bgsave-error", "yes")
    c.config_set("dir", gone)
    shutil.rmtree(gone)
    c.bgsave()
    chaos.wait_until(lambda: c.info("persistence")["rdb_bgsave_in_progress"] == 0
                     and c.info("persistence")["rdb_last_bgsave_status"] == "err", 10, "BGSAVE to fail")


def _misconf_off(ctx, c) -> None:
    c.config_set("dir", ctx._rdb_dir)

    def saved():
        p = c.info("persistence")
        if p["rdb_bgsave_in_progress"]:
            return False
        if p["rdb_last_bgsave_status"] == "ok":
            return True
        c.bgsave()
        return False

    c.bgsave()
    chaos.wait_until(saved, 15, "a BGSAVE to succeed again", 0.1)
    c.config_set("save", "")


def _noreplicas_on(ctx, c) -> None:
    c.config_set("min-replicas-to-write", "1")  # there is no replica


def _noreplicas_off(ctx, c) -> None:
    c.config_set("min-replicas-to-write", "0")


def _oom_on(ctx, c) -> None:
    c.config_set("maxmemory-policy", "noeviction")
    used = int(c.info("memory")["used_memory"])
    c.config_set("maxmemory", str(used + 256 * 1024))  # the load fills the rest
    ctx._oom_limit = used + 256 * 1024


def _oom_pin(ctx, c) -> None:
    """Once the load reached maxmemory: keep it reached. Acks and lease removals
    (allowed under OOM) free a little memory, which would let a write through."""
    used = int(c.info("memory")["used_memory"])
    c.config_set("maxmemory", str(max(1024 * 1024, used - 1024 * 1024)))


def _oom_off(ctx, c) -> None:
    c.config_set("maxmemory", "0")


REFUSALS = [  # (label, Redis's error code, turn on, turn off)
    ("MISCONF", "MISCONF", _misconf_on, _misconf_off),
    ("NOREPLICAS", "NOREPLICAS", _noreplicas_on, _noreplicas_off),
    ("OOM", "OOM", _oom_on, _oom_off),
]


def sc_redis_refuses_writes(ctx) -> None:
    """The one redis-server refuses writes in turn (MISCONF, NOREPLICAS, OOM),
    each for REFUSE_SECS under load: no Send may be OK while it does, none may be
    INTERNAL or UNKNOWN, and nothing is lost once it takes writes again."""
    res = ctx.result
    r = _Redis.start(ctx, "redis", ["--enable-protected-configs", "yes"])
    d = ctx.leanmqd("leanmqd", r, chaos.LEASE_ARGS)
    for i in range(2):
        ctx.consumer(f"c{i}", [d.addr])
    allowed = (chaos.UNAVAILABLE, chaos.DEADLINE, chaos.grpc.StatusCode.RESOURCE_EXHAUSTED)
    ctx.producer([d.addr], threads=2, timeout=3.0, allowed=allowed)
    ctx.producer([d.addr], rate=100, threads=1, batch=10, timeout=3.0, allowed=allowed)  # SendBatch
    ctx.load_for(ctx.p["warm"], "before the first refusal")
    c = r.client()
    windows: List[tuple] = []
    told_all: List[tuple] = []
    for label, code, on, off in REFUSALS:
        t_set = time.monotonic()
        on(ctx, c)
        chaos.wait_until(lambda: _refused(c, code), 15, f"redis to refuse writes with {code}")
        if label == "OOM":
            _oom_pin(ctx, c)
            chaos.wait_until(lambda: _refused(c, code), 5, "redis to keep refusing writes with OOM")
        t_on = time.monotonic()
        told_all.append((label, _told(d.addr)))
        time.sleep(REFUSE_SECS)  # the length of the refusal
        chaos.wait_until(lambda: _refused(c, code), 1, f"redis to still refuse writes with {code}")
        t_off = time.monotonic()
        off(ctx, c)
        chaos.wait_until(lambda: not _refused(c, code), 15, f"redis to take writes after {label}")
        t_back = time.monotonic()
        chaos.wait_until(lambda: ctx.ledger.n_accepted(since=t_back) > 0, 30, f"a Send to succeed after {label}")
        windows.append((label, t_set, t_on, t_off, t_back, time.monotonic() - t_back))
    c.delete(PROBE)
    ctx.load_for(ctx.p["after"], "after the last refusal")
    ctx.finish()
    with ctx.ledger.lock:
        attempts = list(ctx.ledger.attempts)
    for label, t_set, t_on, t_off, t_back, first_ok in windows:
        inside = [a for a in attempts if a[1] >= t_on and a[2] <= t_off]
        codes = collections.Counter(a[3] for a in inside)
        batches = sum(1 for a in inside if len(a[0]) > 1)
        res.note(f"{label}: refused from {t_on - t_set:.2f}s after it was set, for {t_off - t_on:.1f}s; "
                 f"sends entirely inside: {dict(codes)} ({batches} of them SendBatch); "
                 f"first OK {first_ok:.2f}s after Redis took writes again")
        ok = [a for a in inside if a[3] == "OK"]
        if ok:
            res.fail(f"{len(ok)} send(s) OK while redis refused writes ({label}): numbers {ok[0][0][:5]}")
        bad = {k: v for k, v in codes.items() if k in ("INTERNAL", "UNKNOWN")}
        if bad:
            res.fail(f"{label}: sends returned {bad}")
        if not inside:
            res.fail(f"{label}: no send started and ended inside the refusal (the check saw nothing)")
    for label, told in told_all:
        res.note(f"{label}: a Send was told {told}")
        want = "out of memory" if label == "OOM" else "redis refuses writes"
        if want not in told:
            res.fail(f"{label}: the client's message does not say {want!r}")


def _told(addr: str) -> str:
    """What one Send (to another path) is told right now."""
    with chaos.grpc.insecure_channel(addr) as ch:
        try:
            chaos.pbg.BrokerStub(ch).Send(chaos.pb.SendRequest(path="/chaos/probe", payload=b"{}",
                                                               content_type="application/json"), timeout=3)
            return "OK"
        except chaos.grpc.RpcError as e:
            return f"{e.code().name}: {e.details()[:160]}"


# ------------------------------------------------------- sentinel-failover

class _UrlLeanmqd:
    """A chaos.Leanmqd on any --redis-url, kept in ctx.daemons."""

    @staticmethod
    def start(ctx, name: str, url: str, args: Sequence[str]) -> "chaos.Leanmqd":
        d = chaos.Leanmqd(ctx.binary, ctx.dir, name, 0, args, redis_url=url)
        ctx.daemons.append(d)
        return d.start()


def _sentinel(ctx, master_port: int):
    """One Sentinel (quorum 1, down after 1 s) watching `mymaster`; (port, client)."""
    port = chaos.free_port()
    sdir = ctx.dir / "sentinel"
    sdir.mkdir()
    conf = sdir / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {sdir}\nlogfile sentinel.log\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
                    "sentinel down-after-milliseconds mymaster 1000\n"
                    "sentinel failover-timeout mymaster 3000\n")
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    chaos._LIVE.append(proc)
    ctx._sentinel_proc = proc
    cli = chaos.redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
    chaos.wait_until(cli.ping, 20, "the sentinel to answer PING")
    return port, cli


def _master_port(cli) -> int:
    _, port = cli.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")
    return int(port)


def sc_sentinel_failover(ctx, wait: int) -> None:
    try:
        _failover(ctx, wait)
    finally:  # ctx.cleanup() knows no Sentinel
        p = getattr(ctx, "_sentinel_proc", None)
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def _failover(ctx, wait: int) -> None:
    """A primary, two replicas and one Sentinel; leanmqd on the sentinel URL,
    with --wait-replicas `wait`. SIGKILL the primary under load; reconcile on
    the replica Sentinel promoted."""
    res = ctx.result
    res.promise = wait > 0
    primary = _Redis.start(ctx, "primary", [])
    links = []  # each replica reaches the primary through a proxy, to lag it on purpose
    for _ in (1, 2):
        px = chaos.Proxy(primary.port).start()
        ctx.proxies.append(px)
        links.append(px)
    replicas = [_Redis.start(ctx, f"replica{i}", ["--replicaof", "127.0.0.1", str(px.port)])
                for i, px in zip((1, 2), links)]
    pc = primary.client()
    chaos.wait_until(lambda: pc.info("replication")["connected_slaves"] == 2, 20, "both replicas to connect")
    for rr in replicas:
        chaos.wait_until(lambda: rr.client().info("replication")["master_link_status"] == "up", 20,
                         f"replica on {rr.port} to sync")
    sport, scli = _sentinel(ctx, primary.port)
    chaos.wait_until(lambda: len(scli.execute_command("SENTINEL", "REPLICAS", "mymaster")) == 2, 20,
                     "the sentinel to know both replicas")
    url = f"redis+sentinel://127.0.0.1:{sport}/mymaster"
    args = [*chaos.LEASE_ARGS]
    if wait:
        args += ["--wait-replicas", str(wait), "--wait-timeout", "500ms"]
    d = _UrlLeanmqd.start(ctx, "leanmqd", url, args)
    for i in range(2):
        ctx.consumer(f"c{i}", [d.addr])
    ctx.producer([d.addr], threads=2, timeout=3.0)
    ctx.producer([d.addr], rate=100, threads=1, batch=10, timeout=3.0)  # SendBatch too
    ctx.load_for(ctx.p["warm"], "before the kill")
    # Replication lag, made visible: the links to both replicas go silent for
    # LAG_SECS before the primary dies, so what it acknowledged meanwhile is on
    # no replica (what --wait-replicas 0 then loses, and 1 must not). A
    # stopped replica would not do: its kernel still takes the stream.
    for px in links:
        px.cut()
    t_lag = time.monotonic()
    time.sleep(LAG_SECS)  # the length of the lag
    before = ctx.ledger.n_accepted()
    primary.kill9()
    t_kill = time.monotonic()
    for px in links:
        px.reset()  # the replicas see their master link drop
    lagged = ctx.ledger.n_accepted(since=t_lag)
    ports = {rr.port: rr for rr in replicas}
    new = chaos.wait_until(lambda: ports.get(_master_port(scli)), 30, "the sentinel to promote a replica", 0.05)
    t_promoted = time.monotonic() - t_kill
    chaos.wait_until(lambda: ctx.ledger.n_accepted(since=t_kill + t_promoted) > 0, 30,
                     "a Send to succeed after the promotion")
    t_ok = time.monotonic() - t_kill
    res.note(f"links to the replicas silent {t_kill - t_lag:.1f}s before the primary's SIGKILL (then reset); "
             f"{lagged} messages accepted in that time")
    res.note(f"primary SIGKILLed after {before} accepted; sentinel reported replica {new.dir.name} (port {new.port}) as master "
             f"{t_promoted:.2f}s later; first OK {t_ok:.2f}s after the kill")
    ctx.redises.remove(new)
    ctx.redises.insert(0, new)  # ctx.rcli(): reconcile on the new primary
    ctx.load_for(ctx.p["after"], "after the failover")
    ctx.finish(absent_is_loss=res.promise)
    with ctx.ledger.lock:
        outage = collections.Counter(a[3] for a in ctx.ledger.attempts if a[1] >= t_kill and a[3] != "OK"
                                     and a[1] <= t_kill + t_ok)
    res.note(f"sends that failed between the kill and the first OK: {dict(outage)}")
    if wait:
        # No replica could acknowledge while the links were silent: an OK then is a false one.
        if lagged:
            res.fail(f"--wait-replicas {wait}: {lagged} message(s) accepted while no replica could acknowledge")
    else:
        res.note(f"--wait-replicas 0: {res.ledger['lost']} accepted message(s) lost, {len(ctx.absent)} accepted "
                 f"entries absent on the promoted replica (not a failure here: asynchronous replication "
                 f"may drop what the primary had not yet sent)")


RUNNERS: Dict[str, Callable] = {
    "redis-refuses-writes": sc_redis_refuses_writes,
    "sentinel-failover-wait1": lambda c: sc_sentinel_failover(c, 1),
    "sentinel-failover-wait0": lambda c: sc_sentinel_failover(c, 0),
}


def install(module) -> None:
    global chaos
    chaos = module
    for name, fn in RUNNERS.items():
        chaos.SCENARIOS.insert(chaos.SCENARIOS.index("soak"), name)
        chaos.RUNNERS[name] = fn
