package leanmq_test

// Client.Publish (docs/publish.md) against a real leanmqd on a private
// redis-server: many messages over one stream, each answered on its own
// result; a bad message fails only its own, with Send's error; the window
// is honoured and blocks Publish; the buffer's thresholds, Flush and Close;
// tokens; a leanmqd restart mid-publish resends the unanswered messages
// under their idempotency keys without storing any twice. Skipped when
// leanmqd, redis-server or redis-cli is missing.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	leanmq "github.com/leanmq/leanmq-grpc/clients/go"
)

// publishWindow is the --publish-window of the small-window leanmqd.
const publishWindow = 8

func publishPath(label string) string {
	return fmt.Sprintf("/publish/%s/%d", label, time.Now().UnixNano())
}

func streamOf(path string) string { return "webhook:" + queueOf(path) }

var entryID = regexp.MustCompile(`^\d+-\d+$`)

// storedIDs are the ids of stream's entries (XRANGE).
func (r *redisServer) storedIDs(t *testing.T, stream string) []string {
	t.Helper()
	var ids []string
	for _, line := range strings.Split(r.cli(t, "XRANGE", stream, "-", "+"), "\n") {
		if entryID.MatchString(line) {
			ids = append(ids, line)
		}
	}
	return ids
}

// getAll waits for every result (bounded) and returns the ids and errors.
func getAll(t *testing.T, results []*leanmq.PublishResult) ([]string, []error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ids, errs := make([]string, len(results)), make([]error, len(results))
	for i, r := range results {
		ids[i], errs[i] = r.Get(ctx)
		if ctx.Err() != nil {
			t.Fatalf("result %d not ready within 90 s", i)
		}
	}
	return ids, errs
}

// mustIDs is getAll, failing on any error; the ids are distinct.
func mustIDs(t *testing.T, results []*leanmq.PublishResult) []string {
	t.Helper()
	ids, errs := getAll(t, results)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("result %d: %v", i, err)
		}
	}
	if n := len(distinct(ids)); n != len(ids) {
		t.Fatalf("%d distinct ids among %d", n, len(ids))
	}
	return ids
}

func distinct(ids []string) []string {
	s := slices.Clone(ids)
	slices.Sort(s)
	return slices.Compact(s)
}

// sameIDs asserts that the stream holds exactly ids, each once.
func sameIDs(t *testing.T, redis *redisServer, path string, ids []string) {
	t.Helper()
	stored := redis.storedIDs(t, streamOf(path))
	if len(stored) != len(ids) {
		t.Fatalf("%d entries stored, want %d", len(stored), len(ids))
	}
	if n := redis.cli(t, "XLEN", streamOf(path)); n != fmt.Sprint(len(ids)) {
		t.Fatalf("XLEN %s, want %d", n, len(ids))
	}
	if !slices.Equal(distinct(stored), distinct(ids)) {
		t.Fatal("the stored ids are not the ids the results returned")
	}
}

func ready(r *leanmq.PublishResult) bool {
	select {
	case <-r.Ready():
		return true
	default:
		return false
	}
}

func TestPublishAgainstLeanmqd(t *testing.T) {
	bin := leanmqdBinary(t)
	redis := startRedis(t)
	addr := startLeanmqd(t, bin, redis.url(), nil)
	ctx := context.Background()

	t.Run("1000 publishes return 1000 distinct ids, each stored once", func(t *testing.T) {
		c := dialReal(t, addr)
		path := publishPath("many")
		results := make([]*leanmq.PublishResult, 1000)
		for i := range results {
			results[i] = c.Publish(ctx, path, map[string]int{"i": i})
		}
		ids := mustIDs(t, results)
		sameIDs(t, redis, path, ids)
		if n := leanmq.PublishOutstanding(c); n != 0 {
			t.Fatalf("%d outstanding after every result", n)
		}
	})

	t.Run("a bad message fails only its own result, with Send's error", func(t *testing.T) {
		c := dialReal(t, addr)
		path := publishPath("bad")
		longKey := strings.Repeat("k", 257)
		var results []*leanmq.PublishResult
		for i := range 21 {
			key := "k"
			if i == 10 {
				key = longKey
			}
			results = append(results, c.Publish(ctx, path, map[string]int{"i": i}, leanmq.WithOrderingKey(key)))
		}
		badPath := c.Publish(ctx, "/", "no queue")
		ids, errs := getAll(t, results)
		for i, err := range errs {
			if (err != nil) != (i == 10) {
				t.Fatalf("result %d: %q, %v", i, ids[i], err)
			}
		}
		_, sendErr := c.Send(ctx, path, map[string]int{"i": 10}, leanmq.WithOrderingKey(longKey))
		if status.Code(errs[10]) != codes.InvalidArgument || status.Code(sendErr) != codes.InvalidArgument {
			t.Fatalf("Publish: %v; Send: %v; want InvalidArgument", errs[10], sendErr)
		}
		if errs[10].Error() != sendErr.Error() {
			t.Fatalf("Publish error %q differs from Send's %q", errs[10], sendErr)
		}
		if !strings.Contains(errs[10].Error(), "ordering_key is 257 bytes") {
			t.Errorf("the error does not say what is wrong: %v", errs[10])
		}
		if _, err := badPath.Get(ctx); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("publish to %q: %v, want InvalidArgument", "/", err)
		}
		_, sendErr = c.Send(ctx, "/", "no queue")
		if _, err := badPath.Get(ctx); err.Error() != sendErr.Error() {
			t.Fatalf("Publish error %q differs from Send's %q", err, sendErr)
		}
		var ok []string
		for i, id := range ids {
			if i != 10 {
				ok = append(ok, id)
			}
		}
		sameIDs(t, redis, path, ok)
	})

	t.Run("an idempotency key given twice stores one message", func(t *testing.T) {
		c := dialReal(t, addr)
		path := publishPath("idem")
		key := "given-" + path
		ids := []string{}
		for _, r := range []*leanmq.PublishResult{
			c.Publish(ctx, path, "one", leanmq.WithIdempotencyKey(key)),
			c.Publish(ctx, path, "two", leanmq.WithIdempotencyKey(key)),
		} {
			id, err := r.Get(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		if ids[0] != ids[1] {
			t.Fatalf("ids %v, want the same id twice", ids)
		}
		sameIDs(t, redis, path, ids[:1])
		// Send takes the key too and sees the same message.
		id, err := c.Send(ctx, path, "three", leanmq.WithIdempotencyKey(key))
		if err != nil || id != ids[0] {
			t.Fatalf("Send with the key: %q, %v; want %q", id, err, ids[0])
		}
	})

	t.Run("delay, TTL, headers and content type reach the broker", func(t *testing.T) {
		c := dialReal(t, addr)
		path := publishPath("options")
		delayed := c.Publish(ctx, path, "later", leanmq.WithDelay(time.Hour))
		if id, err := delayed.Get(ctx); err != nil || id != "" {
			t.Fatalf("delayed publish: %q, %v; want no id yet", id, err)
		}
		if n := redis.cli(t, "XLEN", streamOf(path)); n != "0" {
			t.Fatalf("a delayed message is in the stream (XLEN %s)", n)
		}
		if n := redis.cli(t, "ZCARD", streamOf(path)+":delayed"); n != "1" {
			t.Fatalf("ZCARD :delayed %s, want 1", n)
		}
		r := c.Publish(ctx, path, []byte("plain"), leanmq.WithTTL(time.Hour),
			leanmq.WithHeader("x-source", "publish"), leanmq.WithContentType("text/plain"))
		if _, err := r.Get(ctx); err != nil {
			t.Fatal(err)
		}
		if n := redis.cli(t, "ZCARD", streamOf(path)+":expiry"); n != "1" {
			t.Fatalf("ZCARD :expiry %s, want 1", n)
		}
		ds, err := c.Receive(ctx, path, leanmq.Wait(5*time.Second))
		if err != nil || len(ds) != 1 {
			t.Fatalf("Receive: %v, %v", ds, err)
		}
		d := ds[0]
		if string(d.Payload) != "plain" || d.ContentType != "text/plain" || d.Headers["x-source"] != "publish" {
			t.Fatalf("delivery %q %q %v", d.Payload, d.ContentType, d.Headers)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the buffer is written when a threshold is reached", func(t *testing.T) {
		path := publishPath("thresholds")
		// Only the delay: the default 5 ms.
		c := dialReal(t, addr)
		if _, err := c.Publish(ctx, path, "alone").Get(ctx); err != nil {
			t.Fatal(err)
		}
		// Only the count: 10 messages, with a delay that never comes.
		c = dialReal(t, addr, leanmq.WithPublishSettings(leanmq.PublishSettings{
			DelayThreshold: time.Hour, CountThreshold: 10, ByteThreshold: 1 << 30}))
		var ten []*leanmq.PublishResult
		for i := range 10 {
			ten = append(ten, c.Publish(ctx, path, i))
		}
		mustIDs(t, ten)
		// Only the bytes: one message larger than the threshold.
		c = dialReal(t, addr, leanmq.WithPublishSettings(leanmq.PublishSettings{
			DelayThreshold: time.Hour, CountThreshold: 1000, ByteThreshold: 1000}))
		if _, err := c.Publish(ctx, path, strings.Repeat("b", 2000)).Get(ctx); err != nil {
			t.Fatal(err)
		}
		if n := redis.cli(t, "XLEN", streamOf(path)); n != "12" {
			t.Fatalf("XLEN %s, want 12", n)
		}
	})

	// Held in the buffer until Flush or Close writes it.
	held := leanmq.WithPublishSettings(leanmq.PublishSettings{DelayThreshold: time.Hour, CountThreshold: 10000})

	t.Run("Flush writes the buffer and waits for every result", func(t *testing.T) {
		c := dialReal(t, addr, held)
		path := publishPath("flush")
		var results []*leanmq.PublishResult
		for i := range 200 {
			results = append(results, c.Publish(ctx, path, i))
		}
		if n := leanmq.PublishOutstanding(c); n != 200 {
			t.Fatalf("%d outstanding before Flush, want 200", n)
		}
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := c.Flush(fctx); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		for i, r := range results {
			if !ready(r) {
				t.Fatalf("result %d not ready after Flush", i)
			}
		}
		sameIDs(t, redis, path, mustIDs(t, results))
		// A Flush whose ctx ends first says so: Redis holds every write.
		redis.cli(t, "CLIENT", "PAUSE", "20000", "WRITE")
		paused := true
		defer func() {
			if paused {
				redis.cli(t, "CLIENT", "UNPAUSE")
			}
		}()
		last := c.Publish(ctx, path, "held")
		tctx, cancelSoon := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancelSoon()
		if err := c.Flush(tctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Flush past its ctx: %v, want DeadlineExceeded", err)
		}
		if ready(last) {
			t.Fatal("answered while Redis was paused")
		}
		redis.cli(t, "CLIENT", "UNPAUSE")
		paused = false
		if err := c.Flush(fctx); err != nil || !ready(last) {
			t.Fatalf("Flush: %v, ready %v", err, ready(last))
		}
	})

	t.Run("Close waits for outstanding publishes; Publish after Close fails", func(t *testing.T) {
		c := dialReal(t, addr, held)
		path := publishPath("close")
		var results []*leanmq.PublishResult
		for i := range 200 {
			results = append(results, c.Publish(ctx, path, i))
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		for i, r := range results {
			if !ready(r) {
				t.Fatalf("result %d not ready after Close", i)
			}
		}
		sameIDs(t, redis, path, mustIDs(t, results))
		if _, err := c.Publish(ctx, path, "late").Get(ctx); !errors.Is(err, leanmq.ErrClosed) {
			t.Fatalf("Publish after Close: %v, want ErrClosed", err)
		}
	})

	t.Run("Close stops waiting after CloseTimeout; what is unanswered fails ErrClosed", func(t *testing.T) {
		c := dialReal(t, addr, leanmq.WithPublishSettings(leanmq.PublishSettings{CloseTimeout: 200 * time.Millisecond}))
		path := publishPath("close-timeout")
		if _, err := c.Publish(ctx, path, "first").Get(ctx); err != nil {
			t.Fatal(err)
		}
		redis.cli(t, "CLIENT", "PAUSE", "20000", "WRITE") // nothing is answered
		paused := true
		defer func() {
			if paused {
				redis.cli(t, "CLIENT", "UNPAUSE")
			}
		}()
		var held []*leanmq.PublishResult
		for i := range 3 {
			held = append(held, c.Publish(ctx, path, i))
		}
		start := time.Now()
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if took := time.Since(start); took < 200*time.Millisecond || took > 5*time.Second {
			t.Fatalf("Close took %v with a 200 ms CloseTimeout", took)
		}
		for i, r := range held {
			if !ready(r) {
				t.Fatalf("result %d not ready after Close", i)
			}
			if _, err := r.Get(ctx); !errors.Is(err, leanmq.ErrClosed) {
				t.Fatalf("result %d: %v, want ErrClosed", i, err)
			}
		}
		redis.cli(t, "CLIENT", "UNPAUSE")
		paused = false
	})

	t.Run("ctx's span becomes the message's traceparent", func(t *testing.T) {
		tp := sdktrace.NewTracerProvider()
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		sctx, span := tp.Tracer("publish-test").Start(ctx, "publish")
		defer span.End()
		c := dialReal(t, addr)
		path := publishPath("traced")
		if _, err := c.Publish(sctx, path, "traced").Get(ctx); err != nil {
			t.Fatal(err)
		}
		ds, err := c.Receive(ctx, path, leanmq.Wait(5*time.Second))
		if err != nil || len(ds) != 1 {
			t.Fatalf("Receive: %v, %v", ds, err)
		}
		want := span.SpanContext()
		if got := ds[0].TraceContext(); got.TraceID() != want.TraceID() || got.SpanID() != want.SpanID() {
			t.Fatalf("delivery's trace context %v, want %v (traceparent %q)", got, want, ds[0].TraceParent())
		}
		_ = ds[0].Ack(ctx)
	})
}

func TestPublishWindow(t *testing.T) {
	bin := leanmqdBinary(t)
	redis := startRedis(t)
	addr := startLeanmqd(t, bin, redis.url(), nil, "--publish-window", fmt.Sprint(publishWindow))
	ctx := context.Background()

	t.Run("500 messages through a window of 8, never more unanswered", func(t *testing.T) {
		c := dialReal(t, addr)
		path := publishPath("window")
		first := c.Publish(ctx, path, "first")
		if _, err := first.Get(ctx); err != nil { // the window header has arrived
			t.Fatal(err)
		}
		results := []*leanmq.PublishResult{first}
		most := 0
		for i := range 500 {
			results = append(results, c.Publish(ctx, path, i))
			most = max(most, leanmq.PublishOutstanding(c))
		}
		if most > publishWindow || most < 1 {
			t.Fatalf("at most %d unanswered, saw %d", publishWindow, most)
		}
		sameIDs(t, redis, path, mustIDs(t, results))
	})

	t.Run("Publish blocks while the window is full, until its ctx ends", func(t *testing.T) {
		c := dialReal(t, addr)
		path := publishPath("full")
		if _, err := c.Publish(ctx, path, "first").Get(ctx); err != nil {
			t.Fatal(err)
		}
		// Redis holds every write, so nothing is answered.
		redis.cli(t, "CLIENT", "PAUSE", "20000", "WRITE")
		paused := true
		defer func() {
			if paused {
				redis.cli(t, "CLIENT", "UNPAUSE")
			}
		}()
		var held []*leanmq.PublishResult
		for i := range publishWindow {
			held = append(held, c.Publish(ctx, path, i))
		}
		tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		blocked := c.Publish(tctx, path, "one too many")
		if _, err := blocked.Get(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Publish past the window: %v, want DeadlineExceeded", err)
		}
		if waited := time.Since(start); waited < 200*time.Millisecond {
			t.Fatalf("Publish past the window returned after %v, before its ctx ended", waited)
		}
		for i, r := range held {
			if ready(r) {
				t.Fatalf("result %d answered while Redis was paused", i)
			}
		}
		redis.cli(t, "CLIENT", "UNPAUSE")
		paused = false
		ids := mustIDs(t, held)
		sameIDs(t, redis, path, append(ids, redis.storedIDs(t, streamOf(path))[0]))
	})
}

func TestPublishTokens(t *testing.T) {
	bin := leanmqdBinary(t)
	redis := startRedis(t)
	addr := startLeanmqd(t, bin, redis.url(), nil, "--auth-tokens", writeTokensFile(t, t.TempDir()))
	ctx := context.Background()

	t.Run("without a token every result fails Unauthenticated", func(t *testing.T) {
		c := dialReal(t, addr)
		path := sdkPath("anon")
		_, errs := getAll(t, []*leanmq.PublishResult{c.Publish(ctx, path, 1), c.Publish(ctx, path, 2)})
		for i, err := range errs {
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("result %d: %v, want Unauthenticated", i, err)
			}
		}
		if n := leanmq.PublishOutstanding(c); n != 0 {
			t.Fatalf("%d outstanding", n)
		}
	})

	t.Run("a path outside the grant fails only that message, PermissionDenied", func(t *testing.T) {
		c := dialReal(t, addr, leanmq.WithToken(sendOnlyToken))
		allowed := fmt.Sprintf("/other/%d", time.Now().UnixNano())
		denied := c.Publish(ctx, sdkPath("denied"), 1)
		ok := c.Publish(ctx, allowed, 2)
		if _, err := denied.Get(ctx); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("outside the grant: %v, want PermissionDenied", err)
		}
		id, err := ok.Get(ctx)
		if err != nil {
			t.Fatalf("inside the grant: %v", err)
		}
		sameIDs(t, redis, allowed, []string{id})
	})
}

func TestPublishAcrossALeanmqdRestart(t *testing.T) {
	bin := leanmqdBinary(t)
	redis := startRedis(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			d := launchLeanmqd(t, bin, redis.url(), nil)
			logs := make(chan string, 1000)
			c := dialReal(t, d.addr, leanmq.WithLogger(slog.New(chanHandler(logs))),
				leanmq.WithReconnectBackoff(50*time.Millisecond, 500*time.Millisecond))
			path := publishPath("restart")
			const n = 3000
			ctx := context.Background()
			results := make([]*leanmq.PublishResult, n)
			var settled atomic.Int64
			published := make(chan struct{})
			go func() { // Publish blocks at the window, so publish from a goroutine
				defer close(published)
				for i := range n {
					var opts []leanmq.SendOption
					if i == 0 {
						opts = append(opts, leanmq.WithIdempotencyKey("given-"+path))
					}
					r := c.Publish(ctx, path, map[string]int{"i": i}, opts...)
					results[i] = r
					go func() { <-r.Ready(); settled.Add(1) }()
				}
			}()
			eventually(t, func() bool { return settled.Load() >= 100 }, "the first answers")
			before := settled.Load()
			d.restart(sig)
			<-published
			ids := mustIDs(t, results)
			if before >= n {
				t.Fatalf("the restart came after every answer (%d of %d)", before, n)
			}
			reopened := 0
			for len(logs) > 0 {
				if strings.HasPrefix(<-logs, "publish stream ended; reopening") {
					reopened++
				}
			}
			if reopened == 0 {
				t.Fatal("the stream was not reopened")
			}
			sameIDs(t, redis, path, ids)
			t.Logf("%s: %d of %d answered before the restart, %d reopen attempts", sig, before, n, reopened)
		})
	}

	t.Run("a broker that stays away fails the unanswered messages Unavailable", func(t *testing.T) {
		d := launchLeanmqd(t, bin, redis.url(), nil)
		c := dialReal(t, d.addr, leanmq.WithReconnectBackoff(50*time.Millisecond, 200*time.Millisecond),
			leanmq.WithPublishSettings(leanmq.PublishSettings{ReconnectTimeout: time.Second}))
		path := publishPath("gone")
		ctx := context.Background()
		if _, err := c.Publish(ctx, path, "first").Get(ctx); err != nil {
			t.Fatal(err)
		}
		d.stop(syscall.SIGKILL)
		start := time.Now()
		_, errs := getAll(t, []*leanmq.PublishResult{c.Publish(ctx, path, 1), c.Publish(ctx, path, 2)})
		for i, err := range errs {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("result %d: %v, want Unavailable", i, err)
			}
		}
		if took := time.Since(start); took < time.Second {
			t.Fatalf("failed after %v, before the 1 s ReconnectTimeout", took)
		}
	})
}
