package leanmq_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	leanmq "github.com/leanmq/leanmq-grpc/clients/go"
	"github.com/leanmq/leanmq-grpc/clients/go/internal/fakebroker"
	pb "github.com/leanmq/leanmq-grpc/clients/go/leanmqv1"
)

func TestHandlerOutcomes(t *testing.T) {
	type want struct {
		ack        bool
		deadLetter bool
		delay      time.Duration
		reason     string // substring for panics, exact otherwise
	}
	cases := []struct {
		name string
		h    leanmq.HandlerFunc
		want want
	}{
		{"nil acks", func(context.Context, *leanmq.Delivery) error { return nil }, want{ack: true}},
		{"plain error nacks", func(context.Context, *leanmq.Delivery) error { return errors.New("boom") },
			want{reason: "boom"}},
		{"DeadLetter string", func(context.Context, *leanmq.Delivery) error { return leanmq.DeadLetter("bad data") },
			want{deadLetter: true, reason: "bad data"}},
		{"DeadLetter error", func(context.Context, *leanmq.Delivery) error { return leanmq.DeadLetter(errors.New("no such order")) },
			want{deadLetter: true, reason: "no such order"}},
		{"wrapped DeadLetter", func(context.Context, *leanmq.Delivery) error {
			return fmt.Errorf("charge: %w", leanmq.DeadLetter(errors.New("card declined")))
		}, want{deadLetter: true, reason: "charge: card declined"}},
		{"RetryAfter", func(context.Context, *leanmq.Delivery) error { return leanmq.RetryAfter(5 * time.Second) },
			want{delay: 5 * time.Second, reason: "retry after 5s"}},
		{"wrapped RetryAfter", func(context.Context, *leanmq.Delivery) error {
			return fmt.Errorf("rate limited: %w", leanmq.RetryAfter(2*time.Second))
		}, want{delay: 2 * time.Second, reason: "rate limited: retry after 2s"}},
		{"RetryAfter with cause", func(context.Context, *leanmq.Delivery) error {
			return &leanmq.RetryAfterError{Delay: time.Minute, Err: errors.New("503 from upstream")}
		}, want{delay: time.Minute, reason: "retry after 1m0s: 503 from upstream"}},
		{"panic nacks", func(context.Context, *leanmq.Delivery) error { panic("kaboom") },
			want{reason: "kaboom"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := startBroker(t, nil)
			sub, subscribed := subscribedChan()
			c := dial(t, b, sub)
			c.Handle("/outcome/", tc.h)
			r := run(t, c, subscribed, "/outcome/")
			if _, err := c.Send(context.Background(), "/outcome/", map[string]any{"case": tc.name}); err != nil {
				t.Fatalf("send: %v", err)
			}
			if tc.want.ack {
				a := recv(t, b.Acks, "ack")
				if len(a.Receipts) != 1 || a.Receipts[0] == "" {
					t.Fatalf("ack receipts = %v", a.Receipts)
				}
			} else {
				n := recv(t, b.Nacks, "nack")
				if n.DeadLetter != tc.want.deadLetter {
					t.Errorf("dead_letter = %v, want %v", n.DeadLetter, tc.want.deadLetter)
				}
				if got := n.GetDelay().AsDuration(); got != tc.want.delay {
					t.Errorf("delay = %v, want %v", got, tc.want.delay)
				}
				if tc.name == "panic nacks" {
					if !strings.Contains(n.Reason, tc.want.reason) {
						t.Errorf("reason = %q, want it to contain %q", n.Reason, tc.want.reason)
					}
				} else if n.Reason != tc.want.reason {
					t.Errorf("reason = %q, want %q", n.Reason, tc.want.reason)
				}
			}
			if err := r.stop(t); err != nil {
				t.Fatalf("Run: %v", err)
			}
			// Exactly one settle call for the one delivery.
			none(t, b.Acks, "extra ack")
			none(t, b.Nacks, "extra nack")
		})
	}
}

func TestNackReasonIsValidUTF8(t *testing.T) {
	b := startBroker(t, nil)
	sub, subscribed := subscribedChan()
	c := dial(t, b, sub)
	c.Handle("/utf8", func(context.Context, *leanmq.Delivery) error {
		return errors.New("bad byte \xff and a long tail " + strings.Repeat("é", 5000))
	})
	r := run(t, c, subscribed, "/utf8")
	if _, err := c.Send(context.Background(), "/utf8", []byte("x")); err != nil {
		t.Fatal(err)
	}
	n := recv(t, b.Nacks, "nack")
	if !utf8.ValidString(n.Reason) || len(n.Reason) > 4096 || !strings.HasPrefix(n.Reason, "bad byte \uFFFD and") {
		t.Fatalf("reason not sanitized: valid=%v len=%d prefix=%q", utf8.ValidString(n.Reason), len(n.Reason), n.Reason[:20])
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

type order struct {
	OrderID string  `json:"order_id"`
	Status  string  `json:"status"`
	Updated float64 `json:"updated_at"`
}

func TestSendPayloadEncoding(t *testing.T) {
	b := startBroker(t, nil)
	c := dial(t, b)
	ctx := context.Background()
	cases := []struct {
		name        string
		payload     any
		opts        []leanmq.SendOption
		contentType string
		body        string
	}{
		{"bytes", []byte{0x00, 0x01, 0xfe, 0xff}, nil, "application/octet-stream", "\x00\x01\xfe\xff"},
		{"empty bytes", []byte{}, nil, "application/octet-stream", ""},
		{"map", map[string]any{"order_id": "ORD-12345", "status": "shipped"}, nil, "application/json",
			`{"order_id":"ORD-12345","status":"shipped"}`},
		{"struct", order{OrderID: "ORD-1", Status: "paid", Updated: 1.5}, nil, "application/json",
			`{"order_id":"ORD-1","status":"paid","updated_at":1.5}`},
		{"raw JSON", json.RawMessage(`{"b":1, "a":2}`), nil, "application/json", `{"b":1, "a":2}`},
		{"string is JSON", "hello", nil, "application/json", `"hello"`},
		{"content type override", []byte("plain text"), []leanmq.SendOption{leanmq.WithContentType("text/plain")},
			"text/plain", "plain text"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := c.Send(ctx, "/payload/", tc.payload, tc.opts...)
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			if id == "" {
				t.Fatal("empty message id")
			}
			req := recv(t, b.Sends, "send")
			if req.ContentType != tc.contentType {
				t.Errorf("content type = %q, want %q", req.ContentType, tc.contentType)
			}
			if string(req.Payload) != tc.body {
				t.Errorf("payload = %q, want %q", req.Payload, tc.body)
			}
			if req.Path != "/payload/" {
				t.Errorf("path = %q", req.Path)
			}
		})
	}

	t.Run("invalid payloads fail before sending", func(t *testing.T) {
		if _, err := c.Send(ctx, "/payload/", json.RawMessage(`{nope`)); err == nil {
			t.Error("invalid json.RawMessage accepted")
		}
		if _, err := c.Send(ctx, "/payload/", make(chan int)); err == nil {
			t.Error("unencodable payload accepted")
		}
		none(t, b.Sends, "send of an invalid payload")
	})

	t.Run("broker errors are returned", func(t *testing.T) {
		_, err := c.Send(ctx, "/", []byte("x"))
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("send to / = %v, want INVALID_ARGUMENT", err)
		}
		recv(t, b.Sends, "send")
	})

	t.Run("headers", func(t *testing.T) {
		if _, err := c.Send(ctx, "/payload/", []byte("x"), leanmq.WithHeaders(map[string]string{"a": "1"}), leanmq.WithHeader("b", "2")); err != nil {
			t.Fatal(err)
		}
		req := recv(t, b.Sends, "send")
		if len(req.Headers) != 2 || req.Headers["a"] != "1" || req.Headers["b"] != "2" {
			t.Fatalf("headers = %v", req.Headers)
		}
	})
}

func TestSendBatch(t *testing.T) {
	b := startBroker(t, nil)
	c := dial(t, b)
	ids, err := c.SendBatch(context.Background(), []leanmq.Message{
		{Path: "/order/status/", Payload: map[string]any{"order_id": "ORD-1"}},
		{Path: "/product/inventory/", Payload: []byte{1, 2, 3}, Headers: map[string]string{"k": "v"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 || ids[0] == "" || ids[1] == "" || ids[0] == ids[1] {
		t.Fatalf("ids = %v", ids)
	}
	first, second := recv(t, b.Sends, "send"), recv(t, b.Sends, "send")
	if first.ContentType != "application/json" || first.Path != "/order/status/" {
		t.Errorf("first = %v", first)
	}
	if second.ContentType != "application/octet-stream" || second.Headers["k"] != "v" {
		t.Errorf("second = %v", second)
	}
	if _, err := c.SendBatch(context.Background(), []leanmq.Message{{Path: "/x", Payload: make(chan int)}}); err == nil {
		t.Error("unencodable batch accepted")
	}
}

func TestDeliveryFieldsAndJSON(t *testing.T) {
	b := startBroker(t, nil)
	sub, subscribed := subscribedChan()
	c := dial(t, b, sub)
	got := make(chan *leanmq.Delivery, 4)
	decoded := make(chan order, 1)
	c.Handle("/order/status/", func(_ context.Context, d *leanmq.Delivery) error {
		if d.IsJSON() {
			var o order
			if err := d.JSON(&o); err != nil {
				return leanmq.DeadLetter(err)
			}
			decoded <- o
		}
		got <- d
		return nil
	})
	r := run(t, c, subscribed, "/order/status/")
	ctx := context.Background()
	jsonID, err := c.Send(ctx, "/order/status/", order{OrderID: "ORD-12345", Status: "shipped", Updated: 1732800000.5},
		leanmq.WithHeader("trace", "t-1"))
	if err != nil {
		t.Fatal(err)
	}
	d := recv(t, got, "JSON delivery")
	if d.MessageID != jsonID || d.Path != "/order/status" || d.ContentType != "application/json" ||
		d.Attempt != 1 || d.Headers["trace"] != "t-1" || d.PublishedAt.IsZero() || d.Receipt == "" || d.Group == "" {
		t.Fatalf("delivery = %+v", d)
	}
	if o := recv(t, decoded, "decoded order"); o != (order{OrderID: "ORD-12345", Status: "shipped", Updated: 1732800000.5}) {
		t.Fatalf("decoded = %+v", o)
	}
	recv(t, b.Acks, "ack")

	binID, err := c.Send(ctx, "/order/status/", []byte{0xca, 0xfe})
	if err != nil {
		t.Fatal(err)
	}
	d = recv(t, got, "bytes delivery")
	if d.MessageID != binID || d.IsJSON() || d.ContentType != "application/octet-stream" || string(d.Payload) != "\xca\xfe" {
		t.Fatalf("delivery = %+v", d)
	}
	if d.Headers == nil {
		t.Fatal("Headers is nil")
	}
	var v any
	if err := d.JSON(&v); err == nil {
		t.Fatal("JSON of binary payload succeeded")
	} else if pe := (*leanmq.PayloadError)(nil); !errors.As(err, &pe) || pe.MessageID != binID {
		t.Fatalf("JSON error = %v", err)
	}
	recv(t, b.Acks, "ack")
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

func TestIsJSONWithParameters(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/json":                true,
		"application/json; charset=utf-8": true,
		"Application/JSON":                true,
		"application/octet-stream":        false,
		"":                                false,
		"text/plain":                      false,
		"application/json-patch+json":     false,
	} {
		if got := (&leanmq.Delivery{ContentType: ct}).IsJSON(); got != want {
			t.Errorf("IsJSON(%q) = %v, want %v", ct, got, want)
		}
	}
}

func TestConcurrencyLimitNeverExceeded(t *testing.T) {
	const limit, total = 3, 20
	// The fake pushes every message at once, ignoring max_in_flight, so only
	// the client's own bound keeps handlers to the limit.
	b := startBroker(t, func(b *fakebroker.Broker) { b.IgnoreMaxInFlight = true })
	ctx := context.Background()
	sub, subscribed := subscribedChan()
	c := dial(t, b, sub, leanmq.WithConcurrency(limit))
	for i := range total {
		if _, err := c.Send(ctx, "/busy", map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	var active, peak atomic.Int32
	full := make(chan struct{})
	var fullOnce sync.Once
	gate := make(chan struct{})
	c.Handle("/busy", func(context.Context, *leanmq.Delivery) error {
		n := active.Add(1)
		defer active.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		if n == limit {
			fullOnce.Do(func() { close(full) })
		}
		<-gate
		return nil
	})
	r := run(t, c, subscribed, "/busy")
	if req := recv(t, b.Subscribes, "subscribe"); req.MaxInFlight != limit {
		t.Fatalf("max_in_flight = %d, want %d", req.MaxInFlight, limit)
	}
	recv(t, full, "the limit to be reached")
	close(gate)
	for i := range total {
		recv(t, b.Acks, fmt.Sprintf("ack %d", i))
	}
	if p := peak.Load(); p != limit {
		t.Fatalf("peak concurrency = %d, want %d", p, limit)
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

func TestHandlerConcurrencyOverride(t *testing.T) {
	b := startBroker(t, nil)
	sub, subscribed := subscribedChan()
	c := dial(t, b, sub, leanmq.WithConcurrency(7))
	c.Handle("/a", func(context.Context, *leanmq.Delivery) error { return nil }, leanmq.HandlerConcurrency(2))
	run(t, c, subscribed, "/a")
	if req := recv(t, b.Subscribes, "subscribe"); req.MaxInFlight != 2 || req.Path != "/a" {
		t.Fatalf("subscribe = %v", req)
	}
}

func TestSubscribeRequestCarriesOptions(t *testing.T) {
	b := startBroker(t, nil)
	sub, subscribed := subscribedChan()
	c := dial(t, b, sub, leanmq.WithGroup("billing"), leanmq.WithConsumer("worker-1"),
		leanmq.WithAckDeadline(45*time.Second))
	c.Handle("/order/status/", func(context.Context, *leanmq.Delivery) error { return nil })
	run(t, c, subscribed, "/order/status/")
	req := recv(t, b.Subscribes, "subscribe")
	if req.Group != "billing" || req.Consumer != "worker-1" || req.GetAckDeadline().AsDuration() != 45*time.Second ||
		req.MaxInFlight != leanmq.DefaultConcurrency {
		t.Fatalf("subscribe = %v", req)
	}
}

func TestSlowHandlerLeaseIsExtended(t *testing.T) {
	const lease = 200 * time.Millisecond
	b := startBroker(t, nil)
	sub, subscribed := subscribedChan()
	c := dial(t, b, sub, leanmq.WithAckDeadline(lease))
	receipts := make(chan string, 1)
	release := make(chan struct{})
	c.Handle("/slow", func(_ context.Context, d *leanmq.Delivery) error {
		receipts <- d.Receipt
		<-release
		return nil
	})
	r := run(t, c, subscribed, "/slow")
	if _, err := c.Send(context.Background(), "/slow", []byte("x")); err != nil {
		t.Fatal(err)
	}
	receipt := recv(t, receipts, "handler start")
	// The handler holds on until the lease was extended twice.
	for i := range 2 {
		e := recv(t, b.Extends, fmt.Sprintf("extend %d", i+1))
		if e.Receipt != receipt || e.GetExtension().AsDuration() != lease {
			t.Fatalf("extend = %v, want receipt %s and extension %v", e, receipt, lease)
		}
	}
	close(release)
	if a := recv(t, b.Acks, "ack"); a.Receipts[0] != receipt {
		t.Fatalf("ack receipts = %v", a.Receipts)
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

func TestReconnectAfterUnavailable(t *testing.T) {
	t.Run("stream ended at once", func(t *testing.T) {
		b := startBroker(t, func(b *fakebroker.Broker) {
			b.OnSubscribe = func(call int, _ *pb.SubscribeRequest, _ pb.Broker_SubscribeServer) error {
				if call == 1 {
					return status.Error(codes.Unavailable, "leanmqd shutting down")
				}
				return nil
			}
		})
		sub, subscribed := subscribedChan()
		c := dial(t, b, sub)
		handled := make(chan string, 1)
		c.Handle("/flaky", func(_ context.Context, d *leanmq.Delivery) error {
			handled <- d.MessageID
			return nil
		})
		r := run(t, c, subscribed, "/flaky")
		recv(t, subscribed, "reconnected stream")
		id, err := c.Send(context.Background(), "/flaky", []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		if got := recv(t, handled, "delivery after reconnect"); got != id {
			t.Fatalf("handled %s, want %s", got, id)
		}
		recv(t, b.Acks, "ack")
		recv(t, b.Subscribes, "first subscribe")
		recv(t, b.Subscribes, "second subscribe")
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("in-flight delivery is acked after the reconnect", func(t *testing.T) {
		b := startBroker(t, nil)
		sub, subscribed := subscribedChan()
		c := dial(t, b, sub)
		started := make(chan string, 1)
		gate := make(chan struct{})
		c.Handle("/flaky", func(_ context.Context, d *leanmq.Delivery) error {
			started <- d.Receipt
			<-gate
			return nil
		})
		r := run(t, c, subscribed, "/flaky")
		if _, err := c.Send(context.Background(), "/flaky", []byte("x")); err != nil {
			t.Fatal(err)
		}
		receipt := recv(t, started, "handler start")
		if n := b.EndStreams(status.Error(codes.Unavailable, "leanmqd shutting down")); n != 1 {
			t.Fatalf("ended %d streams, want 1", n)
		}
		recv(t, subscribed, "reconnected stream")
		close(gate)
		if a := recv(t, b.Acks, "ack"); a.Receipts[0] != receipt {
			t.Fatalf("acked %v, want %s", a.Receipts, receipt)
		}
		// And the new stream delivers.
		if _, err := c.Send(context.Background(), "/flaky", []byte("y")); err != nil {
			t.Fatal(err)
		}
		recv(t, started, "delivery on the new stream")
		recv(t, b.Acks, "second ack")
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("broker down at first", func(t *testing.T) {
		// Take a free loopback port, then close it: Subscribe fails with
		// UNAVAILABLE until a broker listens there.
		first := fakebroker.New()
		addr, err := first.Start()
		if err != nil {
			t.Fatal(err)
		}
		first.Stop()
		logs := make(chan string, 100)
		sub, subscribed := subscribedChan()
		c, err := leanmq.Dial(addr, sub, leanmq.WithLogger(slog.New(chanHandler(logs))),
			leanmq.WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Handle("/late", func(context.Context, *leanmq.Delivery) error { return nil })
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		for msg := ""; !strings.Contains(msg, "reconnecting"); {
			msg = recv(t, logs, "a failed subscribe")
		}
		b := fakebroker.New()
		if _, err := b.StartOn(addr); err != nil {
			t.Fatalf("restart broker on %s: %v", addr, err)
		}
		defer b.Stop()
		recv(t, subscribed, "subscription once the broker is up")
		cancel()
		if err := recv(t, done, "Run to return"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestRunFailsForAnInvalidPath(t *testing.T) {
	b := startBroker(t, nil)
	c := dial(t, b)
	c.Handle("/", func(context.Context, *leanmq.Delivery) error { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	err := c.Run(ctx)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Run = %v, want INVALID_ARGUMENT", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run only returned at the test deadline")
	}
}

func TestGracefulStop(t *testing.T) {
	t.Run("running handler finishes and is acked", func(t *testing.T) {
		b := startBroker(t, nil)
		sub, subscribed := subscribedChan()
		c := dial(t, b, sub, leanmq.WithConcurrency(1), leanmq.WithStopTimeout(waitTimeout))
		started := make(chan struct{}, 2)
		gate := make(chan struct{})
		var calls atomic.Int32
		c.Handle("/work", func(ctx context.Context, d *leanmq.Delivery) error {
			calls.Add(1)
			started <- struct{}{}
			<-gate
			return ctx.Err() // nil: the handler context survives the stop
		})
		r := run(t, c, subscribed, "/work")
		if _, err := c.Send(context.Background(), "/work", []byte("1")); err != nil {
			t.Fatal(err)
		}
		recv(t, started, "handler start")
		r.cancel()
		// Work sent after the stop began is not taken.
		if _, err := c.Send(context.Background(), "/work", []byte("2")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-r.done:
			t.Fatalf("Run returned (%v) while a handler was running", r.err)
		default:
		}
		close(gate)
		if err := r.wait(t); err != nil {
			t.Fatalf("Run = %v", err)
		}
		recv(t, b.Acks, "ack")
		none(t, b.Nacks, "nack")
		if n := calls.Load(); n != 1 {
			t.Fatalf("handler ran %d times, want 1", n)
		}
	})

	t.Run("unfinished handler is cancelled and nacked", func(t *testing.T) {
		b := startBroker(t, nil)
		sub, subscribed := subscribedChan()
		c := dial(t, b, sub, leanmq.WithStopTimeout(50*time.Millisecond))
		started := make(chan struct{}, 1)
		cancelled := make(chan error, 1)
		c.Handle("/stuck", func(ctx context.Context, d *leanmq.Delivery) error {
			started <- struct{}{}
			<-ctx.Done()
			cancelled <- ctx.Err()
			return nil // too late: the delivery was already nacked
		})
		r := run(t, c, subscribed, "/stuck")
		if _, err := c.Send(context.Background(), "/stuck", []byte("x")); err != nil {
			t.Fatal(err)
		}
		recv(t, started, "handler start")
		if err := r.stop(t); err != nil {
			t.Fatalf("Run = %v", err)
		}
		n := recv(t, b.Nacks, "nack")
		if n.DeadLetter || !strings.Contains(n.Reason, "stopped") {
			t.Fatalf("nack = %v", n)
		}
		if err := recv(t, cancelled, "handler context cancellation"); !errors.Is(err, context.Canceled) {
			t.Fatalf("handler ctx err = %v", err)
		}
		none(t, b.Acks, "ack")
	})

	t.Run("idle client stops at once", func(t *testing.T) {
		b := startBroker(t, nil)
		sub, subscribed := subscribedChan()
		c := dial(t, b, sub)
		c.Handle("/a", func(context.Context, *leanmq.Delivery) error { return nil })
		c.Handle("/b", func(context.Context, *leanmq.Delivery) error { return nil })
		r := run(t, c, subscribed, "/a", "/b")
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("handler context carries Run's values", func(t *testing.T) {
		type key struct{}
		b := startBroker(t, nil)
		sub, subscribed := subscribedChan()
		c := dial(t, b, sub)
		vals := make(chan any, 1)
		c.Handle("/v", func(ctx context.Context, _ *leanmq.Delivery) error {
			vals <- ctx.Value(key{})
			return nil
		})
		ctx, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v1"))
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		recv(t, subscribed, "subscription")
		if _, err := c.Send(context.Background(), "/v", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if v := recv(t, vals, "value"); v != "v1" {
			t.Fatalf("value = %v", v)
		}
		cancel()
		if err := recv(t, done, "Run"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestRunPreconditions(t *testing.T) {
	b := startBroker(t, nil)
	sub, subscribed := subscribedChan()
	c := dial(t, b, sub)
	if err := c.Run(context.Background()); !errors.Is(err, leanmq.ErrNoHandlers) {
		t.Fatalf("Run without handlers = %v", err)
	}
	c.Handle("/a", func(context.Context, *leanmq.Delivery) error { return nil })
	func() {
		defer func() {
			if recover() == nil {
				t.Error("duplicate Handle did not panic")
			}
		}()
		c.Handle("/a", func(context.Context, *leanmq.Delivery) error { return nil })
	}()
	r := run(t, c, subscribed, "/a")
	if err := c.Run(context.Background()); !errors.Is(err, leanmq.ErrAlreadyRunning) {
		t.Fatalf("second Run = %v", err)
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

func TestRedeliveryAfterPlainError(t *testing.T) {
	b := startBroker(t, func(b *fakebroker.Broker) { b.RequeueOnNack = true })
	sub, subscribed := subscribedChan()
	c := dial(t, b, sub)
	attempts := make(chan int, 2)
	c.Handle("/retry", func(_ context.Context, d *leanmq.Delivery) error {
		attempts <- d.Attempt
		if d.Attempt == 1 {
			return errors.New("temporary")
		}
		return nil
	})
	r := run(t, c, subscribed, "/retry")
	if _, err := c.Send(context.Background(), "/retry", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if a := recv(t, attempts, "attempt 1"); a != 1 {
		t.Fatalf("attempt = %d", a)
	}
	recv(t, b.Nacks, "nack")
	if a := recv(t, attempts, "attempt 2"); a != 2 {
		t.Fatalf("attempt = %d", a)
	}
	recv(t, b.Acks, "ack")
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

func TestAckIsRetriedWhenUnavailable(t *testing.T) {
	b := startBroker(t, func(b *fakebroker.Broker) {
		b.AckErr = func(call int) error {
			if call == 1 {
				return status.Error(codes.Unavailable, "redis unreachable")
			}
			return nil
		}
	})
	sub, subscribed := subscribedChan()
	c := dial(t, b, sub, leanmq.WithReconnectBackoff(time.Millisecond, 10*time.Millisecond))
	c.Handle("/ack", func(context.Context, *leanmq.Delivery) error { return nil })
	r := run(t, c, subscribed, "/ack")
	if _, err := c.Send(context.Background(), "/ack", []byte("x")); err != nil {
		t.Fatal(err)
	}
	recv(t, b.Acks, "ack (second try)")
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

func TestReceivePullStyle(t *testing.T) {
	b := startBroker(t, nil)
	c := dial(t, b, leanmq.WithGroup("cron"), leanmq.WithAckDeadline(time.Minute))
	ctx := context.Background()
	for i := range 3 {
		if _, err := c.Send(ctx, "/pull", map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := c.Receive(ctx, "/pull", leanmq.MaxMessages(2))
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 || ds[0].Group != "cron" {
		t.Fatalf("received %d deliveries: %+v", len(ds), ds)
	}
	if err := ds[0].Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if a := recv(t, b.Acks, "ack"); a.Receipts[0] != ds[0].Receipt {
		t.Fatalf("ack = %v", a)
	}
	if err := ds[1].Nack(ctx, leanmq.DeadLetter("bad")); err != nil {
		t.Fatal(err)
	}
	if n := recv(t, b.Nacks, "nack"); !n.DeadLetter || n.Reason != "bad" || n.Receipt != ds[1].Receipt {
		t.Fatalf("nack = %v", n)
	}
	rest, err := c.Receive(ctx, "/pull", leanmq.Wait(time.Second))
	if err != nil || len(rest) != 1 {
		t.Fatalf("Receive = %d, %v", len(rest), err)
	}
	until, err := rest[0].Extend(ctx, time.Minute)
	if err != nil || until.IsZero() {
		t.Fatalf("Extend = %v, %v", until, err)
	}
	if e := recv(t, b.Extends, "extend"); e.GetExtension().AsDuration() != time.Minute {
		t.Fatalf("extend = %v", e)
	}
	if err := rest[0].Settle(ctx, leanmq.RetryAfter(time.Second)); err != nil {
		t.Fatal(err)
	}
	if n := recv(t, b.Nacks, "nack"); n.GetDelay().AsDuration() != time.Second {
		t.Fatalf("nack = %v", n)
	}
	if err := (&leanmq.Delivery{}).Ack(ctx); err == nil {
		t.Fatal("Ack of a detached delivery succeeded")
	}
}

func TestProcessMessages(t *testing.T) {
	b := startBroker(t, nil)
	c := dial(t, b)
	ctx := context.Background()
	var seen sync.Map
	c.Handle("/order/status/", func(_ context.Context, d *leanmq.Delivery) error {
		seen.Store(d.MessageID, true)
		return nil
	})
	c.Handle("/product/inventory/", func(context.Context, *leanmq.Delivery) error {
		return leanmq.DeadLetter("no such product")
	})
	if _, err := c.ProcessMessages(ctx, 0, 10); err != nil {
		t.Fatalf("empty ProcessMessages: %v", err)
	}
	ids, err := c.SendBatch(ctx, []leanmq.Message{
		{Path: "/order/status/", Payload: map[string]string{"order_id": "ORD-1"}},
		{Path: "/order/status/", Payload: map[string]string{"order_id": "ORD-2"}},
		{Path: "/product/inventory/", Payload: map[string]string{"product_id": "PROD-1"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	n, err := c.ProcessMessages(ctx, time.Second, 10)
	if err != nil || n != 3 {
		t.Fatalf("ProcessMessages = %d, %v; want 3", n, err)
	}
	for _, id := range ids[:2] {
		if _, ok := seen.Load(id); !ok {
			t.Errorf("message %s not handled", id)
		}
	}
	recv(t, b.Acks, "ack")
	recv(t, b.Acks, "ack")
	if nk := recv(t, b.Nacks, "nack"); !nk.DeadLetter {
		t.Fatalf("nack = %v", nk)
	}
}
