"""Python: the leanmq_grpc client through leanmqd, against LeanMQ 0.2.0 on the
same Redis, measured in the same run.

    python bench/python_vs_leanmq.py --leanmqd HOST:PORT --redis-port PORT [--n 5000]

Needs a Python with `leanmq==0.2.0` and the `leanmq_grpc` SDK installed (the
e2e venv has both). Prints a markdown table of msg/s and the ratio
leanmq_grpc / LeanMQ for: sequential send, batched send (against LeanMQWebhook's
one-by-one send, which is all its webhook API offers, and, for context, against
a LeanMQ transaction), process + ack.
"""

import argparse
import logging
import time

from leanmq import LeanMQWebhook
from leanmq_grpc import Webhook

logging.disable(logging.CRITICAL)


def rate(n, t):
    return n / t if t > 0 else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--leanmqd", required=True)
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--n", type=int, default=5000)
    a = ap.parse_args()
    n = a.n
    data = {"order_id": "ORD-1", "status": "shipped", "pad": "x" * 150}

    lm = LeanMQWebhook(redis_host="127.0.0.1", redis_port=a.redis_port, auto_start=False)
    wh = Webhook(a.leanmqd)
    rows = []

    # Sequential send.
    t = time.perf_counter()
    for _ in range(n):
        lm.send("/bench/py/lm", data)
    lm_send = rate(n, time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(n):
        wh.send("/bench/py/g", data)
    g_send = rate(n, time.perf_counter() - t)
    rows.append(("sequential send", g_send, lm_send, 3.0))

    # Batched send: LeanMQ has no batch API for webhooks; its best is a
    # transaction of sends (one MULTI/EXEC), which it offers as LeanMQ.transaction().
    batch = 100
    t = time.perf_counter()
    q = lm.mq.get_queue("bench_py_lmb") or lm.mq.create_queue_pair("bench_py_lmb")[0]
    for _ in range(n // batch):
        with lm.mq.transaction() as tx:
            for _ in range(batch):
                tx.send_message(q, data)
    lm_batch = rate(n // batch * batch, time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(n // batch):
        wh.send_batch([("/bench/py/gb", data)] * batch)
    g_batch = rate(n // batch * batch, time.perf_counter() - t)
    # The target compares with what a LeanMQWebhook user has for sending
    # many messages (its send, one by one: the LeanMQ reference is
    # that sequential figure); the transaction row is the lower-level
    # LeanMQ API, without the webhook envelope, for context.
    rows.append((f"batched send ({batch}) vs LeanMQWebhook.send, one by one", g_batch, lm_send, 20.0))
    rows.append((f"batched send ({batch}) vs LeanMQ.transaction of {batch} (no webhook envelope)", g_batch, lm_batch, None))

    # Process + ack everything sent above, sequentially.
    seen = {"lm": 0, "g": 0}

    @lm.get("/bench/py/lm")
    def _lm(_d):
        seen["lm"] += 1

    t = time.perf_counter()
    while seen["lm"] < n:
        lm.process_messages(block=False, count=100)
    lm_proc = rate(n, time.perf_counter() - t)

    @wh.get("/bench/py/g")
    def _g(_d):
        seen["g"] += 1

    t = time.perf_counter()
    while seen["g"] < n:
        wh.process_messages(block=True, timeout=1, count=100)
    g_proc = rate(n, time.perf_counter() - t)
    rows.append(("process + ack", g_proc, lm_proc, 3.0))

    print("| Python scenario | leanmq_grpc msg/s | LeanMQ 0.2.0 msg/s | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for name, g, l, target in rows:
        r = g / l if l else 0.0
        verdict = "–" if target is None else f"{'met' if r >= target else 'missed'}: >= {target:g}x"
        print(f"| {name} | {g:.0f} | {l:.0f} | {r:.2f}x | {verdict} |")
    wh.close()
    lm.close()


if __name__ == "__main__":
    main()
