"""Loss-ledger scenarios: network faults. Installed into chaos.py by install()."""
import collections
import json
import time
import urllib.request
from typing import Callable, Dict

chaos = None  # the chaos module, set by install()

PARTITION_SECS = 20.0  # how long redis-partition drops everything


def _leanmqd_via(ctx, name: str, port: int, args) -> "chaos.Leanmqd":
    """A leanmqd whose --redis-url points at `port` (a proxy in front of Redis)."""
    d = chaos.Leanmqd(ctx.binary, ctx.dir, name, port, args)
    ctx.daemons.append(d)
    return d.start()


def sc_redis_partition(ctx) -> None:
    """leanmqd <-> Redis through a proxy that goes silent (no FIN, no RST) for
    PARTITION_SECS, then forwards again on the same sockets."""
    res = ctx.result
    r = ctx.redis()
    px = chaos.Proxy(r.port).start()
    ctx.proxies.append(px)
    redis_timeout = 1.0
    d = _leanmqd_via(ctx, "leanmqd", px.port, chaos.LEASE_ARGS)
    for i in range(2):
        ctx.consumer(f"c{i}", [d.addr])
    ctx.producer([d.addr], threads=2, timeout=3.0)
    ctx.load_for(ctx.p["warm"], "before the partition")
    px.cut()
    t_cut = time.monotonic()
    health: collections.Counter = collections.Counter()
    t_not_serving = None
    end = t_cut + PARTITION_SECS
    while time.monotonic() < end:  # the partition itself; sample health meanwhile
        try:
            h = d.health(timeout=0.5)
        except chaos.grpc.RpcError as e:
            h = e.code().name
        health[h] += 1
        if h == "NOT_SERVING" and t_not_serving is None:
            t_not_serving = time.monotonic() - t_cut
        time.sleep(0.25)
    t_heal = time.monotonic()
    px.blackhole = False  # heal: forward again on the connections still open
    try:
        chaos.wait_until(lambda: ctx.ledger.n_accepted(since=t_heal) > 0, 30, "a Send to succeed after the heal")
        t_ok = time.monotonic() - t_heal
        chaos.wait_until(lambda: d.health() == "SERVING", 15, "health SERVING after the heal")
        t_serving = time.monotonic() - t_heal
    except AssertionError as e:
        res.fail(str(e))
        t_ok = t_serving = float("nan")
    res.note(f"proxy to redis silent {t_heal - t_cut:.1f}s; health NOT_SERVING after "
             f"{t_not_serving if t_not_serving is None else round(t_not_serving, 2)}s; "
             f"after the heal first OK {t_ok:.2f}s, SERVING {t_serving:.2f}s; health during {dict(health)}")
    if t_not_serving is None or t_not_serving > redis_timeout + 2.0:
        res.fail(f"health not NOT_SERVING within --redis-timeout {redis_timeout}s + 2s slack")
    ctx.load_for(ctx.p["after"], "after the heal")
    ctx.finish()
    with ctx.ledger.lock:
        inside = [a for a in ctx.ledger.attempts if a[1] >= t_cut and a[2] <= t_heal]
    codes = collections.Counter(a[3] for a in inside)
    slow = [a for a in inside if a[3] != "OK" and a[2] - a[1] > 3.0 + 0.5]
    fails = sorted(a[2] - a[1] for a in inside if a[3] != "OK")
    if fails:
        res.note(f"sends entirely inside the partition: {dict(codes)}; time to fail: min {fails[0]:.2f}s, "
                 f"median {fails[len(fails) // 2]:.2f}s, max {fails[-1]:.2f}s")
    if slow:
        res.fail(f"{len(slow)} sends took longer than their 3 s deadline to fail")
    c = ctx.rcli()
    for ns, _, _, code, _, ids in inside:
        if code == "OK":
            for n, mid in zip(ns, ids):
                e = c.xrange(chaos.STREAM, min=mid, max=mid)
                if not e or json.loads(e[0][1][b"data"]).get("n") != n:
                    res.fail(f"false OK during the partition: message {n} id {mid} not in Redis")
        elif code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            res.fail(f"send during the partition returned {code}")
    if not inside:
        res.fail("no send started and ended inside the partition (the check saw nothing)")


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as f:
        for line in f.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def sc_client_vanish(ctx) -> None:
    """The only subscriber, behind a proxy, holding max_in_flight deliveries,
    vanishes without FIN; keepalive must find it dead and free its subscription."""
    res = ctx.result
    r = ctx.redis()
    mport = chaos.free_port()
    args = [*chaos.LEASE_ARGS, "--keepalive-interval", "2s", "--keepalive-timeout", "2s",
            "--metrics-listen", f"127.0.0.1:{mport}"]
    d = ctx.leanmqd("leanmqd", r, args)
    idle_streams = _metric(mport, "leanmq_open_streams")
    px = chaos.Proxy(d.port).start()
    ctx.proxies.append(px)
    x = ctx.consumer("vanish", [px.addr], mode="hold", max_in_flight=30, reconnect=False)
    chaos.wait_until(lambda: _metric(mport, "leanmq_open_streams") > idle_streams, 10,
                     "the subscriber's stream to show in leanmq_open_streams")
    ctx.producer([d.addr], rate=100)
    chaos.wait_until(lambda: len(x.held) >= 30, 15, "the subscriber to hold its 30 credits")
    px.cut()
    t_cut = time.monotonic()
    with x.lock:
        held = list(x.held)
    res.note(f"subscriber vanished (proxy cut, sockets open) holding {len(held)} deliveries; "
             f"open streams {_metric(mport, 'leanmq_open_streams'):.0f} (idle {idle_streams:.0f})")
    try:
        chaos.wait_until(lambda: not px.upstream_open(), 30,
                         "leanmqd to close the vanished subscriber's connection", 0.2)
        res.note(f"leanmqd closed the upstream connection {time.monotonic() - t_cut:.1f}s after the cut "
                 f"(keepalive 2s + 2s)")
        chaos.wait_until(lambda: _metric(mport, "leanmq_open_streams") == idle_streams, 10,
                         "leanmq_open_streams to return to its idle value")
        res.note(f"leanmq_open_streams back to {idle_streams:.0f} {time.monotonic() - t_cut:.1f}s after the cut")
    except AssertionError as e:
        res.fail(str(e))
    ctx.consumer("new", [d.addr])
    ctx.load_for(ctx.p["after"] / 2, "after the vanish")
    ctx.finish()
    missing = [h for h in held if h[3] not in ctx.ledger.processed_ids(h[0])]
    if missing:
        res.fail(f"{len(missing)} of the vanished subscriber's deliveries never reached the new one")
    dlq = ctx.rcli().xlen(chaos.DLQ)
    if dlq:
        res.fail(f"{dlq} message(s) dead-lettered")


RUNNERS: Dict[str, Callable] = {
    "redis-partition": sc_redis_partition,
    "client-vanish": sc_client_vanish,
}


def install(module) -> None:
    global chaos
    chaos = module
    for name, fn in RUNNERS.items():
        chaos.SCENARIOS.insert(chaos.SCENARIOS.index("soak"), name)
        chaos.RUNNERS[name] = fn
