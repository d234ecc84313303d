"""Payload encoding/decoding, paths, outcome table (pure logic + through the fake broker)."""
from __future__ import annotations

import json
from datetime import datetime

import pytest

from leanmq_grpc import BatchMessage, DeadLetter, Delivery, RetryAfter, Webhook, normalize_path, queue_name
from leanmq_grpc._common import build_batch_request, encode_payload, settlement_for, to_duration


def test_encode_payload_json_and_bytes() -> None:
    assert encode_payload({"a": 1, "b": [1, 2]}) == (b'{"a":1,"b":[1,2]}', "application/json")
    assert encode_payload([1, "x"]) == (b'[1,"x"]', "application/json")
    assert encode_payload({"k": "é"}) == ('{"k":"é"}'.encode(), "application/json")
    assert encode_payload(b"\x00\xff") == (b"\x00\xff", "application/octet-stream")
    assert encode_payload(bytearray(b"ab")) == (b"ab", "application/octet-stream")
    assert encode_payload(b"<x/>", "application/xml") == (b"<x/>", "application/xml")
    assert encode_payload("hi", "text/plain") == (b"hi", "text/plain")
    with pytest.raises(TypeError):
        encode_payload({"a": object()})
    with pytest.raises(TypeError):
        encode_payload({"a": 1}, "text/plain")


def test_paths_map_like_leanmq() -> None:
    assert normalize_path("/order/status/") == "/order/status"
    assert normalize_path("order/status") == "/order/status"
    assert queue_name("/order/status/") == "order_status"
    assert queue_name("/order-status") == "order_status"
    assert queue_name("/") == ""


def test_paths_sharing_a_queue_share_a_stream_and_dispatch_by_path() -> None:
    from leanmq_grpc._common import Router

    router = Router()
    a = router.add("/order/status/", lambda d: None, raw=False)
    b = router.add("/order-status", lambda d: None, raw=False)
    p = router.add("/order/*", lambda d: None, raw=False)
    q = router.add("/order/>", lambda d: None, raw=False)
    assert router.subscriptions() == [a, p, q]
    with pytest.raises(ValueError):
        router.add("/order/status", lambda d: None, raw=False)  # same normalised path
    with pytest.raises(ValueError):
        router.add("/", lambda d: None, raw=False)
    d = Delivery("r", "1-0", "/order-status", b"{}", "application/json", {}, 1, "g")
    assert router.route_for(a, d) is b
    assert router.route_for(p, Delivery("r", "1-0", "/order/x", b"", "", {}, 1, "g")) is p


def test_outcome_table() -> None:
    ok = settlement_for(None)
    assert ok.ack
    plain = settlement_for(ValueError("boom"))
    assert not plain.ack and not plain.dead_letter and plain.delay is None
    assert plain.reason == "ValueError('boom')"
    req = plain.nack_request("r1")
    assert not req.HasField("delay") and not req.dead_letter
    dead = settlement_for(DeadLetter("bad order")).nack_request("r2")
    assert dead.dead_letter and dead.reason == "bad order" and not dead.HasField("delay")
    retry = settlement_for(RetryAfter(2.5)).nack_request("r3")
    assert not retry.dead_letter and retry.delay == to_duration(2.5)
    assert retry.delay.seconds == 2 and retry.delay.nanos == 500_000_000
    with pytest.raises(ValueError):
        RetryAfter(-1)


def test_send_encodes_and_handlers_decode(server, broker) -> None:
    got = []
    raw = []
    with Webhook(server.target) as wh:

        @wh.get("/order/status/")
        def handle(data):
            got.append(data)

        @wh.get("/raw/", raw=True)
        def handle_raw(delivery: Delivery):
            raw.append(delivery)

        mid1 = wh.send("/order/status/", {"order_id": "ORD-1", "status": "shipped", "n": 1.5})
        mid2 = wh.send("/order/status/", b"\x00\x01binary\xff")
        mid3 = wh.send("/raw/", {"x": [1, 2]}, headers={"trace": "abc"})
        assert len({mid1, mid2, mid3}) == 3

        sent = {r.payload: r for r in broker.sent}
        as_json = sent[b'{"order_id":"ORD-1","status":"shipped","n":1.5}']
        assert as_json.content_type == "application/json"
        assert sent[b"\x00\x01binary\xff"].content_type == "application/octet-stream"
        assert dict(sent[b'{"x":[1,2]}'].headers) == {"trace": "abc"}

        assert wh.process_messages() == 3

    assert got == [{"order_id": "ORD-1", "status": "shipped", "n": 1.5}, b"\x00\x01binary\xff"]
    assert len(raw) == 1
    d = raw[0]
    assert d.message_id == mid3 and d.path == "/raw" and d.attempt == 1
    assert d.headers == {"trace": "abc"}
    assert d.content_type == "application/json" and d.is_json
    assert d.data == {"x": [1, 2]} and d.payload == b'{"x":[1,2]}'
    assert isinstance(d.published_at, datetime) and isinstance(d.lease_expires_at, datetime)
    assert d.group == "raw-group"


def test_send_batch_returns_ids_in_order(server, broker) -> None:
    with Webhook(server.target) as wh:
        ids = wh.send_batch([("/a", {"i": 0}), ("/b", b"raw"), ("/a", {"i": 2}, {"h": "1"})])
    assert len(ids) == 3 and len(set(ids)) == 3
    assert [m.payload for m in broker.sent] == [b'{"i":0}', b"raw", b'{"i":2}']
    assert [m.content_type for m in broker.sent] == ["application/json", "application/octet-stream", "application/json"]
    assert dict(broker.sent[2].headers) == {"h": "1"}
    with pytest.raises(ValueError):
        Webhook(server.target).send_batch([])


def test_invalid_json_payload_is_dead_lettered(server, broker) -> None:
    called = []
    with Webhook(server.target) as wh:
        wh.add_handler("/j", called.append)
        # The fake broker (unlike leanmqd) does not validate JSON.
        wh.send("/j", b"{not json", content_type="application/json")
        assert wh.process_messages() == 0
    assert called == []
    assert len(broker.nacks) == 1
    assert broker.nacks[0].dead_letter and "not valid JSON" in broker.nacks[0].reason


def test_outcomes_through_process_messages(server, broker) -> None:
    with Webhook(server.target) as wh:

        @wh.get("/order/status/")
        def handle(data):
            mode = data["mode"]
            if mode == "fail":
                raise ValueError("boom")
            if mode == "dead":
                raise DeadLetter("bad order")
            if mode == "retry":
                raise RetryAfter(2.5)

        for mode in ["ok", "fail", "dead", "retry"]:
            wh.send("/order/status/", {"mode": mode})
        assert wh.process_messages(count=10) == 1

    assert [broker.payload_of(r)["mode"] for r in broker.acked] == ["ok"]
    nacks = {broker.payload_of(n.receipt)["mode"]: n for n in broker.nacks}
    assert set(nacks) == {"fail", "dead", "retry"}
    assert not nacks["fail"].dead_letter and not nacks["fail"].HasField("delay")
    assert nacks["fail"].reason == "ValueError('boom')"
    assert nacks["dead"].dead_letter and nacks["dead"].reason == "bad order"
    assert not nacks["retry"].dead_letter and nacks["retry"].delay == to_duration(2.5)


def test_json_roundtrip_keeps_unicode(server, broker) -> None:
    seen = []
    with Webhook(server.target) as wh:
        wh.add_handler("/u", seen.append)
        wh.send("/u", {"name": "Café ☕", "nested": {"a": None, "b": True}})
        assert wh.process_messages() == 1
    assert seen == [{"name": "Café ☕", "nested": {"a": None, "b": True}}]
    assert json.loads(broker.sent[0].payload) == seen[0]


def test_batch_items_tuples_and_batch_messages() -> None:
    req = build_batch_request(
        [
            ("/a", {"i": 0}),
            ("/a", {"i": 1}, {"h": "1"}),
            BatchMessage("/b", "text", headers={"h": "2"}, content_type="text/plain", ordering_key="k-1"),
            BatchMessage("/b", b"raw"),
        ]
    )
    m = req.messages
    assert [x.ordering_key for x in m] == ["", "", "k-1", ""]
    assert (m[1].headers["h"], m[2].headers["h"]) == ("1", "2")
    assert (m[2].payload, m[2].content_type) == (b"text", "text/plain")
    assert (m[3].payload, m[3].content_type) == (b"raw", "application/octet-stream")
    with pytest.raises(ValueError, match="BatchMessage"):
        build_batch_request([("/a", {}, None, "k")])  # type: ignore[list-item]
