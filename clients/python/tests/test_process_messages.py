"""process_messages (Receive RPC): counting, blocking, batch size, lease extension."""
from __future__ import annotations

from leanmq_grpc import Webhook
from leanmq_grpc._common import to_duration


def test_counts_only_successes(server, broker) -> None:
    with Webhook(server.target) as wh:

        @wh.get("/count/")
        def handle(data):
            if data["i"] == 1:
                raise RuntimeError("nope")

        wh.send_batch([("/count/", {"i": i}) for i in range(3)])
        assert wh.process_messages() == 2
        assert len(broker.acked) == 2 and len(broker.nacks) == 1
        req = broker.receives[0]
        assert req.path == "/count" and req.max_messages == 10
        assert not req.HasField("wait")  # block=False: do not wait
        assert req.ack_deadline == to_duration(30.0)

        # Nothing left: returns 0; block=True passes the timeout as `wait`.
        assert wh.process_messages(block=True, timeout=0.2) == 0
        assert broker.receives[-1].wait == to_duration(0.2)


def test_count_limits_each_path(server, broker) -> None:
    handled = []
    with Webhook(server.target, group="g1", consumer="c1") as wh:
        wh.add_handler("/a", handled.append)
        wh.add_handler("/b", handled.append)
        wh.send_batch([("/a", {"a": i}) for i in range(5)] + [("/b", {"b": 0})])
        assert wh.process_messages(count=2) == 3  # 2 from /a, 1 from /b
        assert {r.path for r in broker.receives} == {"/a", "/b"}
        assert all(r.group == "g1" and r.consumer == "c1" and r.max_messages == 2 for r in broker.receives)
        assert len(broker.queues["a"]) == 3
        assert wh.process_messages(count=10) == 3
    assert len(handled) == 6


def test_stale_ack_is_not_counted(server, broker) -> None:
    broker.stale_acks = True
    with Webhook(server.target) as wh:
        wh.add_handler("/s", lambda data: None)
        wh.send("/s", {"x": 1})
        assert wh.process_messages() == 0


def test_broker_unreachable_is_logged_not_raised(caplog) -> None:
    with Webhook("127.0.0.1:1", rpc_timeout=2) as wh:
        wh.add_handler("/x", lambda data: None)
        assert wh.process_messages() == 0
    assert any("Error fetching messages" in r.getMessage() for r in caplog.records)


def test_extends_lease_of_slow_handler(server, broker) -> None:
    with Webhook(server.target, ack_deadline=0.4) as wh:
        receipts = []

        @wh.get("/slow", raw=True)
        def handle(delivery):
            receipts.append(delivery.receipt)
            # Run past half the lease, twice: the SDK must have extended it.
            assert broker.wait_for(lambda: len(broker.extends) >= 2, 10)

        wh.send("/slow", {"x": 1})
        assert wh.process_messages() == 1
    assert len(broker.acked) == 1
    assert {e.receipt for e in broker.extends} == set(receipts)
    assert all(e.extension == to_duration(0.4) for e in broker.extends)
