"""A LeanMQ 0.2.0 peer for the interop tests, driven by tests/leanmq.rs.

Usage: leanmq_peer.py PORT COMMAND ARGS...
  send PATH JSON            LeanMQWebhook.send; prints the entry id
  handle PATH COUNT [fail]  runs a @webhook.get handler until COUNT handled
                            (or 20 s); prints each handled dict as a JSON line.
                            With "fail" the handler raises, so LeanMQ dead-letters.
  share PATH                handles until stdin closes; prints each dict
  hold PATH                 reads one message as LeanMQ's consumer and exits
                            without acking (a crashed worker)
  dlq PATH                  prints the DLQ messages LeanMQ reads, as JSON lines
"""
import json
import logging
import sys
import threading
import time

from leanmq import LeanMQWebhook

logging.disable(logging.CRITICAL)


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    port, cmd, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    wh = LeanMQWebhook(redis_host="127.0.0.1", redis_port=port, auto_start=False)
    if cmd == "send":
        out(wh.send(args[0], json.loads(args[1])))
    elif cmd in ("handle", "share"):
        path = args[0]
        want = int(args[1]) if cmd == "handle" else None
        fail = cmd == "handle" and len(args) > 2 and args[2] == "fail"
        seen = []

        @wh.get(path)
        def handler(data):
            seen.append(data)
            out(data)
            if fail:
                raise RuntimeError("python handler says no")

        stop = threading.Event()
        if cmd == "share":
            threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        deadline = time.time() + 20
        while not stop.is_set() and time.time() < deadline:
            if want is not None and len(seen) >= want:
                break
            wh.process_messages(block=True, timeout=1, count=10)
    elif cmd == "hold":
        queue = wh.mq.get_queue(wh._path_to_queue_name(wh._normalize_path(args[0])))
        msgs = queue.get_messages(count=1, block_for_seconds=5)
        out([m.id for m in msgs])
    elif cmd == "dlq":
        name = wh._path_to_queue_name(wh._normalize_path(args[0]))
        dlq = wh.mq.get_dead_letter_queue(name)
        for m in dlq.get_messages(count=100):
            out({"id": m.id, "data": m.data})
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
