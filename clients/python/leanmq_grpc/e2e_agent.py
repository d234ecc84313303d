"""Command-line agent for the cross-language end-to-end suite.

    python -m leanmq_grpc.e2e_agent send --target HOST:PORT --path P (--json JSON | --hex HEX)
    python -m leanmq_grpc.e2e_agent consume --target HOST:PORT --path P --group G --count N
                                      [--mode ok|fail|deadletter|sleep:SECONDS] [--ack-deadline SECONDS]
    python -m leanmq_grpc.e2e_agent process --target HOST:PORT --path P --count N --timeout S

Every command also takes ``--token TOKEN`` (sent as ``authorization: Bearer
TOKEN``) and ``--tls-ca FILE`` (connect over TLS, trusting the PEM
certificates in FILE).

``send`` prints the message id. ``consume`` (Subscribe-based service) and
``process`` (``process_messages(block=True)``) print one JSON line per
delivery handled: {"message_id", "path", "content_type", "payload_hex",
"attempt", "headers"}. ``consume`` prints READY on stderr once its
subscription is open and exits 0 after N deliveries were handled and settled.
Exit codes: 0 done, 1 timeout/interrupted before N, 2 broker error.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import grpc

from . import DeadLetter, Delivery, RetryAfter, Webhook


def _emit(d: Delivery) -> None:
    line = json.dumps(
        {
            "message_id": d.message_id,
            "path": d.path,
            "content_type": d.content_type,
            "payload_hex": d.payload.hex(),
            "attempt": d.attempt,
            "headers": dict(sorted(d.headers.items())),
        }
    )
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _parse_mode(mode: str) -> Callable[[], None]:
    if mode == "ok":
        return lambda: None
    if mode == "fail":

        def fail() -> None:
            raise RuntimeError("e2e failure")

        return fail
    if mode == "deadletter":

        def dead() -> None:
            raise DeadLetter("e2e dead letter")

        return dead
    if mode.startswith("sleep:"):
        seconds = float(mode.split(":", 1)[1])
        return lambda: time.sleep(seconds)
    raise argparse.ArgumentTypeError(f"unknown mode {mode!r} (ok, fail, deadletter, sleep:SECONDS)")


def _mode_seconds(mode: str) -> float:
    return float(mode.split(":", 1)[1]) if mode.startswith("sleep:") else 0.0


def _connection(ns: argparse.Namespace) -> Dict[str, Any]:
    """Webhook keyword arguments from --token and --tls-ca."""
    kw: Dict[str, Any] = {"token": ns.token}
    if ns.tls_ca is not None:
        with open(ns.tls_ca, "rb") as f:
            kw["credentials"] = grpc.ssl_channel_credentials(root_certificates=f.read())
    return kw


def cmd_send(ns: argparse.Namespace) -> int:
    data: Any = json.loads(ns.json) if ns.json is not None else bytes.fromhex(ns.hex)
    headers = dict(h.split("=", 1) for h in ns.header or [])
    with Webhook(ns.target, **_connection(ns)) as webhook:
        try:
            message_id = webhook.send(ns.path, data, headers=headers, content_type=ns.content_type)
        except grpc.RpcError as e:
            print(f"send failed: {e.code()}: {e.details()}", file=sys.stderr)
            return 2
    print(message_id, flush=True)
    return 0


def cmd_consume(ns: argparse.Namespace) -> int:
    action = _parse_mode(ns.mode)
    webhook = Webhook(
        ns.target, group=ns.group, concurrency=ns.concurrency, ack_deadline=ns.ack_deadline, **_connection(ns)
    )
    lock = threading.Lock()
    handled: List[int] = [0]
    service_box: Dict[str, Any] = {}

    @webhook.get(ns.path, raw=True)
    def handle(delivery: Delivery) -> None:
        with lock:
            if handled[0] >= ns.count:
                raise RetryAfter(0.5, "e2e agent: count already reached")
            _emit(delivery)
            handled[0] += 1
            last = handled[0] >= ns.count
        try:
            action()
        finally:
            if last:
                # Close the stream before this handler settles, so no
                # further delivery arrives; the graceful stop waits for us.
                service_box["service"].request_stop()

    service = webhook.run_service(
        handle_signals=True, worker_thread_timeout=max(5.0, _mode_seconds(ns.mode) + 5.0)
    )
    service_box["service"] = service
    deadline = None if ns.timeout is None else time.monotonic() + ns.timeout
    try:
        while not service.wait_ready(0.05):
            if service.wait(0) or (deadline is not None and time.monotonic() > deadline):
                break
        if service.wait_ready(0):
            print("READY", file=sys.stderr, flush=True)
        while not service.wait(0.2):
            if deadline is not None and time.monotonic() > deadline:
                print("consume: timeout", file=sys.stderr, flush=True)
                break
    finally:
        service.stop()
        webhook.close()
    if service.error is not None:
        print(f"consume failed: {service.error}", file=sys.stderr)
        return 2
    return 0 if handled[0] >= ns.count else 1


def cmd_process(ns: argparse.Namespace) -> int:
    action = _parse_mode(ns.mode)
    handled = [0]
    with Webhook(ns.target, group=ns.group, ack_deadline=ns.ack_deadline, **_connection(ns)) as webhook:

        @webhook.get(ns.path, raw=True)
        def handle(delivery: Delivery) -> None:
            _emit(delivery)
            handled[0] += 1
            action()

        deadline = time.monotonic() + ns.timeout
        while handled[0] < ns.count:
            left = deadline - time.monotonic()
            if left <= 0:
                print("process: timeout", file=sys.stderr, flush=True)
                return 1
            webhook.process_messages(block=True, timeout=min(1.0, left), count=ns.count - handled[0])
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m leanmq_grpc.e2e_agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("send", help="send one message, print its id")
    p.add_argument("--target", required=True)
    p.add_argument("--token", default=None, help="bearer token (leanmqd --auth-tokens)")
    p.add_argument("--tls-ca", default=None, metavar="FILE", help="use TLS, trusting the PEM certificates in FILE")
    p.add_argument("--path", required=True)
    body = p.add_mutually_exclusive_group(required=True)
    body.add_argument("--json", help="JSON text, sent as application/json")
    body.add_argument("--hex", help="hex bytes, sent as application/octet-stream")
    p.add_argument("--header", action="append", metavar="K=V", help="application header (repeatable)")
    p.add_argument("--content-type", default=None, help="override the content type")
    p.set_defaults(fn=cmd_send)

    p = sub.add_parser("consume", help="subscribe and handle N deliveries")
    p.add_argument("--target", required=True)
    p.add_argument("--token", default=None, help="bearer token (leanmqd --auth-tokens)")
    p.add_argument("--tls-ca", default=None, metavar="FILE", help="use TLS, trusting the PEM certificates in FILE")
    p.add_argument("--path", required=True)
    p.add_argument("--group", default="")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--mode", default="ok", help="ok | fail | deadletter | sleep:SECONDS")
    p.add_argument("--ack-deadline", type=float, default=30.0)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--timeout", type=float, default=None, help="give up (exit 1) after this many seconds")
    p.set_defaults(fn=cmd_consume)

    p = sub.add_parser("process", help="process_messages(block=True) until N handled or timeout")
    p.add_argument("--target", required=True)
    p.add_argument("--token", default=None, help="bearer token (leanmqd --auth-tokens)")
    p.add_argument("--tls-ca", default=None, metavar="FILE", help="use TLS, trusting the PEM certificates in FILE")
    p.add_argument("--path", required=True)
    p.add_argument("--group", default="")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--mode", default="ok", help="ok | fail | deadletter | sleep:SECONDS")
    p.add_argument("--ack-deadline", type=float, default=30.0)
    p.set_defaults(fn=cmd_process)

    ns = parser.parse_args(argv)
    if getattr(ns, "mode", None) is not None:
        try:
            _parse_mode(ns.mode)
        except argparse.ArgumentTypeError as e:
            parser.error(str(e))
    return int(ns.fn(ns))


if __name__ == "__main__":
    sys.exit(main())
