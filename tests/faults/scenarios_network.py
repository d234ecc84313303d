"""Loss-ledger scenarios: network faults. Installed into chaos.py by install()."""
import collections
import json
import re
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


# ------------------------------------------------------------ cluster-failover

CLUSTER_TAGGED = {  # the queue's keys on a Cluster: hash-tagged so they share a slot
    "STREAM": "webhook:{chaos_ledger}",
    "LEASES": "webhook:{chaos_ledger}:leases:chaos_ledger-group",
    "DELAYED": "webhook:{chaos_ledger}:delayed",
    "DLQ": "webhook:{chaos_ledger}:dlq",
}


def _cluster_port(taken) -> int:
    """A free port <= 55535 whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        p = chaos.free_port()
        if p <= 55535 and p not in taken and p + 10000 not in taken:
            with chaos.socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p + 10000))
                except OSError:
                    continue
            return p
    raise chaos.Fatal("no free port pair (p, p + 10000) for a cluster node")


def _cluster_node(ctx, i: int, taken: set) -> "chaos.RedisServer":
    """A cluster-enabled chaos.RedisServer (own dir and nodes.conf), not yet started."""
    node = chaos.RedisServer(ctx.dir, name=f"node{i}")
    node.port = _cluster_port(taken)
    taken.update((node.port, node.port + 10000))
    node.extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
                  "--cluster-config-file", str(node.dir / "nodes.conf")]
    return node


class _ClusterView:
    """Stands in ctx.redises[0]: ctx.rcli() then gives a RedisCluster client, so
    Ctx's drain and reconcile checks reach whichever node owns the queue's slot."""

    def __init__(self, nodes):
        self.nodes = nodes
        self._client = None

    def client(self):
        if self._client is None:
            from redis.cluster import ClusterNode, RedisCluster
            live = [ClusterNode("127.0.0.1", n.port) for n in self.nodes if n.proc.poll() is None]
            self._client = RedisCluster(startup_nodes=live, socket_timeout=5, socket_connect_timeout=2)
        return self._client

    def reset(self) -> None:
        """Forget the topology (after a failover): the next client() asks the live nodes."""
        if self._client is not None:
            self._client.close()
        self._client = None

    def shutdown(self) -> None:
        self.reset()


def _cluster_info_ok(node) -> bool:
    try:
        return b"cluster_state:ok" in node.client().execute_command("CLUSTER", "INFO")
    except chaos.redis.RedisError:
        return False


def _slot_owner(node, slot: int):
    """(primary port, [replica ports]) serving `slot`, as `node` sees it."""
    for rng in node.client().execute_command("CLUSTER", "SLOTS"):
        if rng[0] <= slot <= rng[1]:
            return int(rng[2][1]), [int(r[1]) for r in rng[3:]]
    return None, []


def _replicas_synced(nodes) -> bool:
    """Every node sees 3 primaries and 3 replicas, and every replica's link is up."""
    for n in nodes:
        roles = n.client().execute_command("CLUSTER", "NODES").decode().split("\n")
        roles = [l.split()[2] for l in roles if l.strip()]
        if sum("master" in r for r in roles) != 3 or sum("slave" in r for r in roles) != 3:
            return False
        rep = n.client().info("replication")
        if rep["role"] == "slave" and rep.get("master_link_status") != "up":
            return False
    return True


def _start_cluster(ctx):
    taken: set = set()
    nodes = [_cluster_node(ctx, i, taken).start() for i in range(6)]
    view = _ClusterView(nodes)
    ctx.redises.extend([view, *nodes])  # view first: ctx.rcli() is the cluster client
    out = chaos.subprocess.run(
        ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
         "--cluster-replicas", "1", "--cluster-yes"],
        capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise chaos.Fatal(f"redis-cli --cluster create failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    chaos.wait_until(lambda: all(_cluster_info_ok(n) for n in nodes), 30, "cluster_state:ok on every node", 0.1)
    chaos.wait_until(lambda: _replicas_synced(nodes), 30, "every replica known to all nodes and in sync", 0.1)
    return view, nodes


def _log_errors(d, since_line: int, k: int = 4):
    """The k most frequent WARN/ERROR messages (count, text) in `d`'s log after line `since_line`."""
    try:
        lines = d.log.read_text(errors="replace").splitlines()[since_line:]
    except OSError:
        return []
    seen: collections.Counter = collections.Counter()
    for l in lines:
        l = re.sub(r"\x1b\[[0-9;]*m", "", l)
        parts = l.split(None, 2)  # timestamp, level, "target: message"
        if len(parts) == 3 and parts[1] in ("WARN", "ERROR"):
            seen[f"{parts[1]} {parts[2][:200]}"] += 1
    return seen.most_common(k)


def sc_cluster_failover(ctx, wait_replicas: int = 0) -> None:
    """A 3+3 Redis Cluster; under load, SIGKILL the primary owning the queue's
    slot; its replica is promoted and leanmqd must follow. Without WAIT the
    writes the replica had not received are lost (reported); with
    --wait-replicas N an OK Send is on N replicas, so none may be lost."""
    res = ctx.result
    res.promise = wait_replicas > 0
    saved = {k: getattr(chaos, k) for k in CLUSTER_TAGGED}
    for k, v in CLUSTER_TAGGED.items():
        setattr(chaos, k, v)  # Ctx's checks read these module names
    try:
        _cluster_failover(ctx, wait_replicas)
    except Exception:
        # run_one reconciles what was accepted when a runner raises; do it
        # here, while the names are the cluster's, and it will not redo it.
        if not ctx.result.ledger.get("accepted") and ctx.ledger.accepted:
            try:
                acc = ctx.ledger.accepted_snapshot()
                ctx.reconcile(acc, absent_is_loss=res.promise, verify=acc)
            except Exception as e:  # noqa: BLE001 - the cluster may be half gone
                res.note(f"reconcile after the failure: {e!r}")
        raise
    finally:
        for k, v in saved.items():
            setattr(chaos, k, v)


def _cluster_failover(ctx, wait_replicas: int) -> None:
    res = ctx.result
    t_setup = time.monotonic()
    view, nodes = _start_cluster(ctx)
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    args = list(chaos.LEASE_ARGS)
    if wait_replicas:
        args += ["--wait-replicas", str(wait_replicas), "--wait-timeout", "500ms"]
    d = chaos.Leanmqd(ctx.binary, ctx.dir, "leanmqd", 0, args, redis_url=url)
    ctx.daemons.append(d)
    d.start()
    res.note(f"cluster of 3 primaries + 3 replicas up and leanmqd SERVING in {time.monotonic() - t_setup:.1f}s")
    for i in range(2):
        ctx.consumer(f"c{i}", [d.addr])
    ctx.producer([d.addr], threads=2)
    ctx.load_for(ctx.p["warm"], "before the failover")
    slot = int(nodes[0].client().execute_command("CLUSTER", "KEYSLOT", chaos.STREAM))
    owner_port, replica_ports = _slot_owner(nodes[0], slot)
    owner = next(n for n in nodes if n.port == owner_port)
    if not replica_ports:
        raise chaos.Fatal(f"slot {slot} (port {owner_port}) has no replica in CLUSTER SLOTS")
    log_mark = len(d.log.read_text(errors="replace").splitlines())
    before = ctx.ledger.n_accepted()
    owner.kill9()
    t_kill = time.monotonic()
    survivors = [n for n in nodes if n is not owner]

    def promoted():
        if not all(_cluster_info_ok(n) for n in survivors):
            return False
        p, _ = _slot_owner(survivors[0], slot)
        return p in replica_ports and all(_slot_owner(n, slot)[0] == p for n in survivors)

    chaos.wait_until(promoted, 20, f"a replica of port {owner_port} to serve slot {slot} and cluster_state:ok", 0.1)
    t_prom = time.monotonic()
    new_port = _slot_owner(survivors[0], slot)[0]
    view.reset()
    if wait_replicas:
        # The promoted primary has no replica left, so WAIT 1 can't be met
        # until the killed node returns: restarted on its dir and nodes.conf,
        # it rejoins as the new primary's replica. Until then every Send of
        # that slot must fail (UNAVAILABLE), never be a false OK.
        owner.start()
        chaos.wait_until(lambda: owner.client().info("replication").get("master_link_status") == "up",
                         30, f"port {owner_port} to rejoin as a replica", 0.1)
        res.note(f"killed node :{owner_port} restarted and replicating {time.monotonic() - t_prom:.1f}s "
                 f"after the promotion")
    try:
        chaos.wait_until(lambda: ctx.ledger.n_accepted(since=t_prom) > 0, 30,
                         "a Send to succeed after the promotion")
    except AssertionError as e:
        errs = _log_errors(d, log_mark)
        raise AssertionError(f"{e}: leanmqd did not follow the failover; its log says {errs or 'nothing'}; "
                             f"send errors {dict(ctx.ledger.error_codes())}") from None
    t_ok = time.monotonic()
    with ctx.ledger.lock:
        dead = collections.Counter(a[3] for a in ctx.ledger.attempts if t_kill <= a[2] < t_prom)
        slow = max((a[2] - a[1] for a in ctx.ledger.attempts if t_kill <= a[2] < t_ok), default=0.0)
    res.note(f"SIGKILLed primary :{owner_port} (slot {slot}) after {before} accepted; replica :{new_port} "
             f"promoted {t_prom - t_kill:.1f}s later; first OK {t_ok - t_prom:.2f}s after the promotion; "
             f"sends ending between kill and promotion {dict(dead)}; "
             f"slowest send meanwhile {slow:.2f}s")
    errs = _log_errors(d, log_mark)
    if errs:
        res.note(f"leanmqd WARN/ERROR during the failover (first {len(errs)}): {errs}")
    ctx.load_for(ctx.p["after"], "after the failover")
    ctx.finish(absent_is_loss=res.promise)
    if not res.promise:
        res.note(f"no WAIT: {res.ledger['lost']} accepted message(s) never delivered, {len(ctx.absent)} accepted "
                 f"entries absent from the promoted replica (not a failure here: replication is asynchronous, "
                 f"an OK Send may not have reached the replica when its primary died)")


RUNNERS: Dict[str, Callable] = {
    "redis-partition": sc_redis_partition,
    "client-vanish": sc_client_vanish,
    "cluster-failover": sc_cluster_failover,
    "cluster-failover-wait1": lambda ctx: sc_cluster_failover(ctx, wait_replicas=1),
}


def install(module) -> None:
    global chaos
    chaos = module
    for name, fn in RUNNERS.items():
        chaos.SCENARIOS.insert(chaos.SCENARIOS.index("soak"), name)
        chaos.RUNNERS[name] = fn
