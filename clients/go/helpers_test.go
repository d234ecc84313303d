package leanmq_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	leanmq "github.com/leanmq/leanmq-grpc/clients/go"
	"github.com/leanmq/leanmq-grpc/clients/go/internal/fakebroker"
)

// waitTimeout bounds every wait in these tests; nothing should come close.
const waitTimeout = 10 * time.Second

func startBroker(t *testing.T, setup func(b *fakebroker.Broker)) *fakebroker.Broker {
	t.Helper()
	b := fakebroker.New()
	if setup != nil {
		setup(b)
	}
	if _, err := b.Start(); err != nil {
		t.Fatalf("start fake broker: %v", err)
	}
	t.Cleanup(b.Stop)
	return b
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func dial(t *testing.T, b *fakebroker.Broker, opts ...leanmq.Option) *leanmq.Client {
	t.Helper()
	opts = append([]leanmq.Option{leanmq.WithLogger(quietLogger())}, opts...)
	c, err := leanmq.Dial(b.Addr(), opts...)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recv returns the next value of ch or fails the test after waitTimeout.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// none asserts that ch holds no value right now.
func none[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected %s: %v", what, v)
	default:
	}
}

// running is a Client.Run in the background.
type running struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned, after err is set
	err    error
}

// run starts c.Run and returns once every path in paths has an open stream.
func run(t *testing.T, c *leanmq.Client, subscribed <-chan string, paths ...string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = c.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(waitTimeout):
			t.Errorf("Run did not return after cancel")
		}
	})
	for range paths {
		recv(t, subscribed, "subscription")
	}
	return r
}

// stop cancels Run and returns its result.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	return r.wait(t)
}

// wait waits for Run to return and returns its result.
func (r *running) wait(t *testing.T) error {
	t.Helper()
	recv(t, r.done, "Run to return")
	return r.err
}

// subscribedChan returns an option reporting opened streams on a channel.
func subscribedChan() (leanmq.Option, chan string) {
	ch := make(chan string, 100)
	return leanmq.WithOnSubscribed(func(path string) { ch <- path }), ch
}

// chanHandler is a slog.Handler that sends each record's message to ch
// (dropping it when ch is full).
func chanHandler(ch chan<- string) slog.Handler { return &chanLog{ch: ch} }

type chanLog struct{ ch chan<- string }

func (h *chanLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *chanLog) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.ch <- r.Message:
	default:
	}
	return nil
}
func (h *chanLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *chanLog) WithGroup(string) slog.Handler      { return h }
