package leanmq_test

// Ordering keys (docs/ordering.md) against a real leanmqd on a private
// redis-server: with several handlers in flight and some messages failing
// once, every key's messages are acked in send order, one at a time, and
// each delivery carries its key; a bad key is refused with the broker's
// message. Skipped when leanmqd, redis-server or redis-cli is missing.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	leanmq "github.com/leanmq/leanmq-grpc/clients/go"
)

var orderingKeys = []string{"order-a", "order-b", "order-c"}

const perKey = 20

type orderedBody struct {
	Key string `json:"key"`
	I   int    `json:"i"`
	Seq int    `json:"seq"`
}

// failsOnce: every 7th message (by send sequence) fails its first attempt.
func failsOnce(seq, attempt int) bool { return seq%7 == 6 && attempt == 1 }

// orderRecord is what the handlers saw, checked under one lock.
type orderRecord struct {
	mu         sync.Mutex
	acked      map[string][]int
	inFlight   map[string]bool
	mostAtOnce int
	problems   []string
	failed     []int
	retried    []int
	allAcked   chan struct{}
}

func newOrderRecord() *orderRecord {
	return &orderRecord{acked: map[string][]int{}, inFlight: map[string]bool{}, allAcked: make(chan struct{})}
}

func (r *orderRecord) start(d *leanmq.Delivery) (orderedBody, error) {
	var b orderedBody
	if err := json.Unmarshal(d.Payload, &b); err != nil {
		return b, leanmq.DeadLetter(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if d.OrderingKey != b.Key {
		r.problems = append(r.problems, fmt.Sprintf("%s/%d came with ordering key %q", b.Key, b.I, d.OrderingKey))
	}
	if r.inFlight[b.Key] {
		r.problems = append(r.problems, fmt.Sprintf("%s/%d delivered while the key's previous was in flight", b.Key, b.I))
	}
	r.inFlight[b.Key] = true
	r.mostAtOnce = max(r.mostAtOnce, len(r.inFlight))
	if d.Attempt > 1 {
		r.retried = append(r.retried, b.Seq)
	}
	return b, nil
}

func (r *orderRecord) finish(b orderedBody, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inFlight, b.Key)
	if !ok {
		r.failed = append(r.failed, b.Seq)
		return
	}
	r.acked[b.Key] = append(r.acked[b.Key], b.I)
	total := 0
	for _, v := range r.acked {
		total += len(v)
	}
	if total == len(orderingKeys)*perKey {
		close(r.allAcked)
	}
}

func (r *orderRecord) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.problems {
		t.Error(p)
	}
	want := make([]int, perKey)
	for i := range want {
		want[i] = i
	}
	for _, k := range orderingKeys {
		if !slices.Equal(r.acked[k], want) {
			t.Errorf("key %s acked in the order %v", k, r.acked[k])
		}
	}
	var shouldFail []int
	for s := range len(orderingKeys) * perKey {
		if failsOnce(s, 1) {
			shouldFail = append(shouldFail, s)
		}
	}
	slices.Sort(r.failed)
	slices.Sort(r.retried)
	if !slices.Equal(r.failed, shouldFail) || !slices.Equal(r.retried, shouldFail) {
		t.Errorf("failed %v and retried %v, want %v", r.failed, r.retried, shouldFail)
	}
	if r.mostAtOnce != len(orderingKeys) {
		t.Errorf("at most %d keys in flight at once, want %d", r.mostAtOnce, len(orderingKeys))
	}
}

func TestOrderingKeysAgainstLeanmqd(t *testing.T) {
	bin := leanmqdBinary(t)
	redis := startRedis(t)
	addr := startLeanmqd(t, bin, redis.url(), nil, "--retry-min", "50ms", "--retry-max", "100ms")
	ctx := context.Background()

	t.Run("each key is acked in send order with handlers in flight", func(t *testing.T) {
		sub, subscribed := subscribedChan()
		c := dialReal(t, addr, leanmq.WithConcurrency(8), sub)
		path := sdkPath("ordering")
		rec := newOrderRecord()
		// Each key's first message waits until all three are being handled:
		// the keys do not wait for each other, and handlers run at once.
		var heads sync.WaitGroup
		heads.Add(len(orderingKeys))
		headsIn := make(chan struct{})
		go func() { heads.Wait(); close(headsIn) }()
		c.Handle(path, func(_ context.Context, d *leanmq.Delivery) (err error) {
			b, err := rec.start(d)
			if err != nil {
				return err
			}
			defer func() { rec.finish(b, err == nil) }()
			if b.I == 0 && d.Attempt == 1 {
				heads.Done()
				select {
				case <-headsIn:
				case <-time.After(waitTimeout):
					return errors.New("the other keys' first messages did not come")
				}
			}
			if failsOnce(b.Seq, d.Attempt) {
				return errors.New("fails once")
			}
			return nil
		})
		// The group exists before the sends (docs/ordering.md).
		r := run(t, c, subscribed, path)
		var batch []leanmq.Message
		for i := range perKey {
			for n, k := range orderingKeys {
				b := orderedBody{Key: k, I: i, Seq: i*len(orderingKeys) + n}
				if i < perKey/2 {
					if _, err := c.Send(ctx, path, b, leanmq.WithOrderingKey(k)); err != nil {
						t.Fatalf("Send: %v", err)
					}
				} else {
					batch = append(batch, leanmq.Message{Path: path, Payload: b, OrderingKey: k})
				}
			}
		}
		if ids, err := c.SendBatch(ctx, batch); err != nil || len(ids) != len(batch) {
			t.Fatalf("SendBatch: %v, %v", ids, err)
		}
		select {
		case <-rec.allAcked:
		case <-time.After(60 * time.Second):
			t.Fatalf("not all acked within 60 s: %v", rec.acked)
		}
		q := queueOf(path)
		deadline := time.Now().Add(waitTimeout)
		for redis.pending(t, "webhook:"+q, q+"-group") != 0 {
			if time.Now().After(deadline) {
				t.Fatal("messages left pending")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := r.stop(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
		rec.check(t)
	})

	t.Run("a delivery without a key has an empty OrderingKey", func(t *testing.T) {
		c := dialReal(t, addr)
		path := sdkPath("plain")
		if _, err := c.Send(ctx, path, []byte("plain")); err != nil {
			t.Fatalf("Send: %v", err)
		}
		if _, err := c.Send(ctx, path, []byte("keyed"), leanmq.WithOrderingKey("k")); err != nil {
			t.Fatalf("Send: %v", err)
		}
		got := map[string]string{}
		deadline := time.Now().Add(waitTimeout)
		for len(got) < 2 && time.Now().Before(deadline) {
			ds, err := c.Receive(ctx, path, leanmq.MaxMessages(10), leanmq.Wait(time.Second))
			if err != nil {
				t.Fatalf("Receive: %v", err)
			}
			for _, d := range ds {
				got[string(d.Payload)] = d.OrderingKey
				if err := d.Ack(ctx); err != nil {
					t.Fatalf("Ack: %v", err)
				}
			}
		}
		if want := map[string]string{"plain": "", "keyed": "k"}; !maps.Equal(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
	})

	t.Run("a bad key is InvalidArgument with the broker's message", func(t *testing.T) {
		c := dialReal(t, addr)
		path := sdkPath("badkey")
		long := strings.Repeat("k", 257)
		_, err := c.Send(ctx, path, map[string]int{"x": 1}, leanmq.WithOrderingKey(long))
		if status.Code(err) != codes.InvalidArgument ||
			!strings.Contains(err.Error(), "ordering_key is 257 bytes; it must be at most 256 bytes") {
			t.Fatalf("Send with a 257-byte key: %v", err)
		}
		_, err = c.Send(ctx, path, map[string]int{"x": 1}, leanmq.WithOrderingKey("a\nb"))
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "without control characters") {
			t.Fatalf("Send with a control character: %v", err)
		}
		_, err = c.SendBatch(ctx, []leanmq.Message{
			{Path: path, Payload: 1, OrderingKey: "ok"},
			{Path: path, Payload: 2, OrderingKey: long},
		})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "messages[1]") ||
			!strings.Contains(err.Error(), "ordering_key is 257 bytes") {
			t.Fatalf("SendBatch with a 257-byte key: %v", err)
		}
		stream := "webhook:" + queueOf(path)
		if n := redis.cli(t, "XLEN", stream); n != "0" {
			t.Fatalf("%s entries stored after refusals", n)
		}
		if _, err := c.Send(ctx, path, 1, leanmq.WithOrderingKey(strings.Repeat("k", 256))); err != nil {
			t.Fatalf("Send with a 256-byte key: %v", err)
		}
		if n := redis.cli(t, "XLEN", stream); n != "1" {
			t.Fatalf("XLEN %s, want 1", n)
		}
	})
}
