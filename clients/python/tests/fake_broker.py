"""An in-memory Broker servicer for SDK unit tests.

It mimics the contract the SDK relies on (queues per LeanMQ queue name,
max_in_flight per stream, receipts, Ack/Nack/Extend outcomes) and records
every call, so tests can assert what the client did. It is not Redis.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Set

import grpc

from leanmq_grpc import normalize_path, queue_name
from leanmq_grpc import pb
from leanmq_grpc import pb_grpc


@dataclass
class Msg:
    id: str
    path: str
    payload: bytes
    content_type: str
    headers: Dict[str, str]
    attempts: int = 0
    published: float = field(default_factory=time.time)


@dataclass
class Lease:
    msg: Msg
    stream: Optional[int]
    group: str


def _ts(seconds: float) -> Any:
    from google.protobuf import timestamp_pb2

    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def _dur(d: Any, default: float) -> float:
    s = d.seconds + d.nanos / 1e9
    return s if s > 0 else default


class FakeBroker(pb_grpc.BrokerServicer):
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queues: Dict[str, Deque[Msg]] = {}
        self.leases: Dict[str, Lease] = {}
        self.stream_inflight: Dict[int, Set[str]] = {}
        self._ids = itertools.count(1)
        self._receipts = itertools.count(1)
        self._streams = itertools.count(1)
        # recorded calls
        self.sent: List[pb.SendRequest] = []
        self.acked: List[str] = []
        self.ack_calls: List[List[str]] = []  # the receipts of each Ack call
        self.nacks: List[pb.NackRequest] = []
        self.extends: List[pb.ExtendRequest] = []
        self.subscribes: List[pb.SubscribeRequest] = []
        self.receives: List[pb.ReceiveRequest] = []
        self.active_streams = 0
        # knobs
        self.redeliver_nacked = False
        self.fail_subscribes = 0  # next N Subscribe calls end at once with UNAVAILABLE
        self.break_epoch = 0  # bump to end every open stream with UNAVAILABLE
        self.stale_acks = False  # answer every Ack with STALE
        self.stale_receipts: Set[str] = set()  # answer these receipts with STALE
        self.ack_delay = 0.0  # seconds each Ack call takes (outside the lock)
        self.ignore_max_in_flight = False  # push everything, to test the client's own limit
        self.subscribe_error = grpc.StatusCode.UNAVAILABLE  # code used by fail_subscribes
        self.receipt_msgs: Dict[str, Msg] = {}  # every receipt ever issued

    # ---------------------------------------------------------------- helpers

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def payload_of(self, receipt: str) -> Any:
        import json

        with self.cond:
            return json.loads(self.receipt_msgs[receipt].payload)

    def break_streams(self) -> None:
        with self.cond:
            self.break_epoch += 1
            self.cond.notify_all()

    def _enqueue(self, req: pb.SendRequest) -> str:
        path = normalize_path(req.path)
        msg = Msg(
            id=f"{int(time.time() * 1000)}-{next(self._ids)}",
            path=path,
            payload=bytes(req.payload),
            content_type=req.content_type or "application/octet-stream",
            headers=dict(req.headers),
        )
        self.queues.setdefault(queue_name(path), deque()).append(msg)
        self.sent.append(req)
        return msg.id

    def _lease(self, msg: Msg, stream: Optional[int], group: str, path: str, deadline: float) -> pb.Delivery:
        msg.attempts += 1
        receipt = f"rcpt-{next(self._receipts)}"
        self.leases[receipt] = Lease(msg, stream, group)
        self.receipt_msgs[receipt] = msg
        if stream is not None:
            self.stream_inflight[stream].add(receipt)
        d = pb.Delivery(
            receipt=receipt,
            message_id=msg.id,
            path=msg.path,
            payload=msg.payload,
            content_type=msg.content_type,
            headers=msg.headers,
            attempt=msg.attempts,
            group=group or f"{queue_name(path)}-group",
        )
        d.published_at.CopyFrom(_ts(msg.published))
        d.lease_expires_at.CopyFrom(_ts(time.time() + deadline))
        self.cond.notify_all()  # wait_for() callers watching leases
        return d

    def _release(self, receipt: str) -> Optional[Lease]:
        lease = self.leases.pop(receipt, None)
        if lease is not None and lease.stream is not None:
            self.stream_inflight.get(lease.stream, set()).discard(receipt)
        self.cond.notify_all()
        return lease

    # ---------------------------------------------------------------- RPCs

    def Send(self, request: pb.SendRequest, context: grpc.ServicerContext) -> pb.SendResponse:
        if normalize_path(request.path) == "/":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "path maps to an empty queue name")
        with self.cond:
            mid = self._enqueue(request)
            self.cond.notify_all()
        return pb.SendResponse(message_id=mid)

    def SendBatch(self, request: pb.SendBatchRequest, context: grpc.ServicerContext) -> pb.SendBatchResponse:
        with self.cond:
            ids = [self._enqueue(m) for m in request.messages]
            self.cond.notify_all()
        return pb.SendBatchResponse(results=[pb.SendResponse(message_id=i) for i in ids])

    def Subscribe(self, request: pb.SubscribeRequest, context: grpc.ServicerContext) -> Any:
        with self.cond:
            self.subscribes.append(request)
            self.cond.notify_all()
            if self.fail_subscribes > 0:
                self.fail_subscribes -= 1
                fail = True
            else:
                fail = False
        if fail:
            context.abort(self.subscribe_error, "fake broker: subscribe refused")
        if normalize_path(request.path) == "/":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "path maps to an empty queue name")
        stream = next(self._streams)
        q = queue_name(normalize_path(request.path))
        limit = request.max_in_flight or 100
        deadline = _dur(request.ack_deadline, 30.0)

        def wake() -> None:
            with self.cond:
                self.cond.notify_all()

        context.add_callback(wake)
        context.send_initial_metadata(())
        with self.cond:
            epoch = self.break_epoch
            self.stream_inflight[stream] = set()
            self.active_streams += 1
            self.cond.notify_all()
        try:
            while True:
                with self.cond:
                    delivery = None
                    while True:
                        if not context.is_active():
                            return
                        if self.break_epoch != epoch:
                            break
                        queue = self.queues.get(q)
                        if queue and (self.ignore_max_in_flight or len(self.stream_inflight[stream]) < limit):
                            delivery = self._lease(queue.popleft(), stream, request.group, request.path, deadline)
                            break
                        self.cond.wait(0.5)
                if delivery is None:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "fake broker: restarting")
                yield delivery
        finally:
            with self.cond:
                self.active_streams -= 1
                self.stream_inflight.pop(stream, None)
                self.cond.notify_all()

    def Receive(self, request: pb.ReceiveRequest, context: grpc.ServicerContext) -> pb.ReceiveResponse:
        q = queue_name(normalize_path(request.path))
        wait = _dur(request.wait, 0.0)
        deadline = _dur(request.ack_deadline, 30.0)
        end = time.monotonic() + wait
        with self.cond:
            self.receives.append(request)
            self.cond.notify_all()
            while not self.queues.get(q) and time.monotonic() < end and context.is_active():
                self.cond.wait(max(0.0, min(0.5, end - time.monotonic())))
            out = []
            queue = self.queues.get(q)
            while queue and len(out) < (request.max_messages or 10):
                out.append(self._lease(queue.popleft(), None, request.group, request.path, deadline))
        return pb.ReceiveResponse(deliveries=out)

    def Ack(self, request: pb.AckRequest, context: grpc.ServicerContext) -> pb.AckResponse:
        results = []
        if self.ack_delay:
            time.sleep(self.ack_delay)
        with self.cond:
            self.ack_calls.append(list(request.receipts))
            for r in request.receipts:
                if self.stale_acks or r in self.stale_receipts:
                    outcome = pb.ACK_OUTCOME_STALE
                elif self._release(r) is not None:
                    outcome = pb.ACK_OUTCOME_ACKED
                    self.acked.append(r)
                else:
                    outcome = pb.ACK_OUTCOME_NOT_PENDING
                results.append(pb.AckResult(receipt=r, outcome=outcome))
            self.cond.notify_all()
        return pb.AckResponse(results=results)

    def Nack(self, request: pb.NackRequest, context: grpc.ServicerContext) -> pb.NackResponse:
        with self.cond:
            lease = self._release(request.receipt)
            if lease is None:
                found = False
            else:
                found = True
                self.nacks.append(request)
                if self.redeliver_nacked and not request.dead_letter:
                    self.queues.setdefault(queue_name(lease.msg.path), deque()).append(lease.msg)
            self.cond.notify_all()
        if not found:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "receipt does not hold the lease")
        if request.dead_letter:
            return pb.NackResponse(outcome=pb.NACK_OUTCOME_DEAD_LETTERED, dead_letter_id="1-1")
        resp = pb.NackResponse(outcome=pb.NACK_OUTCOME_RETRY_SCHEDULED)
        resp.retry_at.CopyFrom(_ts(time.time() + _dur(request.delay, 1.0)))
        return resp

    def Extend(self, request: pb.ExtendRequest, context: grpc.ServicerContext) -> pb.ExtendResponse:
        with self.cond:
            held = request.receipt in self.leases
            if held:
                self.extends.append(request)
            self.cond.notify_all()
        if not held:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "receipt does not hold the lease")
        resp = pb.ExtendResponse()
        resp.lease_expires_at.CopyFrom(_ts(time.time() + _dur(request.extension, 30.0)))
        return resp


class FakeServer:
    """FakeBroker served on 127.0.0.1:<ephemeral port>."""

    def __init__(self) -> None:
        self.broker = FakeBroker()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        pb_grpc.add_BrokerServicer_to_server(self.broker, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)
