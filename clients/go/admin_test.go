package leanmq_test

// Admin against a real leanmqd (with --auth-tokens) on a private
// redis-server. Skipped when leanmqd, redis-server or redis-cli is missing.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	leanmq "github.com/leanmq/leanmq-grpc/clients/go"
)

// callCounter counts the unary calls made through a connection, by method.
type callCounter struct {
	mu    sync.Mutex
	calls []string
}

func (c *callCounter) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	c.mu.Lock()
	c.calls = append(c.calls, method[strings.LastIndex(method, "/")+1:])
	c.mu.Unlock()
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (c *callCounter) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.calls
	c.calls = nil
	return out
}

// collect drains a ListDeadLetters iterator.
func collect(t *testing.T, seq func(func(*leanmq.DeadLetterEntry, error) bool)) []*leanmq.DeadLetterEntry {
	t.Helper()
	var out []*leanmq.DeadLetterEntry
	for dl, err := range seq {
		if err != nil {
			t.Fatalf("ListDeadLetters: %v", err)
		}
		out = append(out, dl)
	}
	return out
}

// deadLetters sends payloads to path and dead-letters each delivery with
// Nack(DeadLetter(...)); it returns the message ids once the DLQ holds them.
func deadLetters(t *testing.T, c *leanmq.Client, path string, payloads ...any) []string {
	t.Helper()
	ctx := context.Background()
	admin := c.Admin()
	before := int64(0)
	if q, err := admin.GetQueue(ctx, path); err == nil {
		before = q.DeadLetters
	} else if status.Code(err) != codes.NotFound {
		t.Fatalf("GetQueue: %v", err)
	}
	var ids []string
	for _, p := range payloads {
		id, err := c.Send(ctx, path, p)
		if err != nil {
			t.Fatalf("Send: %v", err)
		}
		ids = append(ids, id)
	}
	for got := 0; got < len(payloads); {
		ds, err := c.Receive(ctx, path, leanmq.MaxMessages(10), leanmq.Wait(5*time.Second))
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		if len(ds) == 0 {
			t.Fatalf("only %d of %d delivered", got, len(payloads))
		}
		for _, d := range ds {
			if err := d.Nack(ctx, leanmq.DeadLetter("rejected by the test")); err != nil {
				t.Fatalf("Nack: %v", err)
			}
		}
		got += len(ds)
	}
	eventually(t, func() bool {
		q, err := admin.GetQueue(ctx, path)
		return err == nil && q.DeadLetters == before+int64(len(payloads))
	}, "the dead letters to reach the DLQ")
	return ids
}

// listErr is the error a ListDeadLetters iteration ends with (nil when none).
func listErr(seq func(func(*leanmq.DeadLetterEntry, error) bool)) error {
	for _, err := range seq {
		if err != nil {
			return err
		}
	}
	return nil
}

func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// receiveOne receives one delivery of path, acks it and returns its payload.
func receiveOne(t *testing.T, c *leanmq.Client, path string) string {
	t.Helper()
	ctx := context.Background()
	ds, err := c.Receive(ctx, path, leanmq.MaxMessages(1), leanmq.Wait(5*time.Second))
	if err != nil || len(ds) != 1 {
		t.Fatalf("Receive: %v, %v", ds, err)
	}
	if err := ds[0].Ack(ctx); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	return string(ds[0].Payload)
}

func ids(dls []*leanmq.DeadLetterEntry) []string {
	out := make([]string, 0, len(dls))
	for _, d := range dls {
		out = append(out, d.ID)
	}
	return out
}

func TestAdminAgainstLeanmqd(t *testing.T) {
	bin := leanmqdBinary(t)
	redis := startRedis(t)
	addr := startLeanmqd(t, bin, redis.url(), nil, "--auth-tokens", writeTokensFile(t, t.TempDir()))
	ctx := context.Background()
	c := dialReal(t, addr, leanmq.WithToken(adminToken))

	t.Run("queues and dead letters, round trip", func(t *testing.T) {
		path := sdkPath("admin")
		q := queueOf(path)
		sent := deadLetters(t, c, path, map[string]any{"n": 1}, map[string]any{"n": 2}, []byte("\x00raw"))

		// A second Admin, on a connection of our own made with NewAdmin, counts the pages.
		counter := &callCounter{}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithUnaryInterceptor(counter.intercept))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		admin := leanmq.NewAdmin(conn, leanmq.WithToken(adminToken))

		queues, err := admin.ListQueues(ctx)
		if err != nil {
			t.Fatalf("ListQueues: %v", err)
		}
		i := slices.IndexFunc(queues, func(s leanmq.QueueSummary) bool { return s.Queue == q })
		if i < 0 || queues[i].Stream != "webhook:"+q || queues[i].Length != 3 || queues[i].DeadLetters != 3 ||
			!slices.Contains(queues[i].Paths, path) {
			t.Fatalf("ListQueues: %+v", queues)
		}
		info, err := admin.GetQueue(ctx, path)
		if err != nil || info.Queue != q || info.Length != 3 || info.DeadLetters != 3 {
			t.Fatalf("GetQueue: %+v, %v", info, err)
		}
		g := slices.IndexFunc(info.Groups, func(g leanmq.GroupInfo) bool { return g.Name == q+"-group" })
		if g < 0 || info.Groups[g].Pending != 0 {
			t.Fatalf("groups: %+v", info.Groups)
		}
		if byName, err := admin.GetQueue(ctx, q); err != nil || byName.Queue != q {
			t.Fatalf("GetQueue by name: %+v, %v", byName, err)
		}

		counter.take()
		entries := collect(t, admin.ListDeadLetters(ctx, path, leanmq.PageSize(2)))
		if calls := counter.take(); !slices.Equal(calls, []string{"ListDeadLetters", "ListDeadLetters"}) {
			t.Fatalf("3 dead letters in pages of 2 took calls %v", calls)
		}
		if len(entries) != 3 {
			t.Fatalf("%d dead letters, want 3", len(entries))
		}
		for i, e := range entries {
			if e.OriginalMessageID != sent[i] || e.Path != path || e.LastReason != "rejected by the test" ||
				len(e.Failures) == 0 || e.Failures[len(e.Failures)-1].Group != q+"-group" || e.LastFailedAt.IsZero() {
				t.Fatalf("dead letter %d: %+v", i, e)
			}
		}
		var first map[string]int
		if !entries[0].IsJSON() || entries[0].JSON(&first) != nil || first["n"] != 1 {
			t.Fatalf("first payload %q (%s)", entries[0].Payload, entries[0].ContentType)
		}
		if entries[2].IsJSON() || string(entries[2].Payload) != "\x00raw" || entries[2].ContentType != leanmq.ContentTypeBinary {
			t.Fatalf("bytes payload %q (%s)", entries[2].Payload, entries[2].ContentType)
		}

		// Limit fetches no more than it needs; breaking out of the loop stops paging.
		if got := ids(collect(t, admin.ListDeadLetters(ctx, path, leanmq.PageSize(2), leanmq.Limit(2)))); !slices.Equal(got, ids(entries[:2])) {
			t.Fatalf("Limit(2): %v", got)
		}
		if calls := counter.take(); len(calls) != 1 {
			t.Fatalf("Limit(2) with pages of 2 took calls %v", calls)
		}
		for range admin.ListDeadLetters(ctx, path, leanmq.PageSize(1)) {
			break
		}
		if calls := counter.take(); len(calls) != 1 {
			t.Fatalf("a loop that breaks at once took calls %v", calls)
		}

		// Requeue one: it leaves the DLQ and is delivered again.
		res, err := c.Admin().RequeueDeadLetters(ctx, path, leanmq.ByIDs(entries[0].ID))
		if err != nil || len(res.Requeued) != 1 || res.Requeued[0].DeadLetterID != entries[0].ID || len(res.Missing) != 0 {
			t.Fatalf("Requeue: %+v, %v", res, err)
		}
		res, err = admin.RequeueDeadLetters(ctx, path, leanmq.ByIDs(entries[0].ID))
		if err != nil || len(res.Requeued) != 0 || !slices.Equal(res.Missing, []string{entries[0].ID}) {
			t.Fatalf("Requeue again: %+v, %v", res, err)
		}
		if p := receiveOne(t, c, path); p != `{"n":1}` {
			t.Fatalf("requeued delivery %s", p)
		}

		// Delete one, purge the rest.
		if n, err := admin.DeleteDeadLetters(ctx, path, []string{entries[1].ID}); err != nil || n != 1 {
			t.Fatalf("Delete: %d, %v", n, err)
		}
		if n, err := admin.DeleteDeadLetters(ctx, path, []string{entries[1].ID}); err != nil || n != 0 {
			t.Fatalf("Delete again: %d, %v", n, err)
		}
		if n, err := admin.PurgeDeadLetters(ctx, path); err != nil || n != 1 {
			t.Fatalf("Purge: %d, %v", n, err)
		}
		if left := collect(t, admin.ListDeadLetters(ctx, path)); len(left) != 0 {
			t.Fatalf("after purge: %v", ids(left))
		}

		// PurgeQueue and DeleteQueue want the queue name in confirm.
		if _, err := admin.PurgeQueue(ctx, path, "not-"+q); status.Code(err) != codes.InvalidArgument ||
			!strings.Contains(err.Error(), "confirm") {
			t.Fatalf("PurgeQueue with a wrong confirm: %v", err)
		}
		if n, err := admin.PurgeQueue(ctx, path, q); err != nil || n != 4 {
			t.Fatalf("PurgeQueue: %d, %v", n, err)
		}
		if info, err := admin.GetQueue(ctx, path); err != nil || info.Length != 0 {
			t.Fatalf("after PurgeQueue: %+v, %v", info, err)
		}
		if _, err := admin.DeleteQueue(ctx, path, "nope", true); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("DeleteQueue with a wrong confirm: %v", err)
		}
		if _, err := admin.DeleteQueue(ctx, path, q, true); err != nil {
			t.Fatalf("DeleteQueue: %v", err)
		}
		if _, err := admin.GetQueue(ctx, path); status.Code(err) != codes.NotFound {
			t.Fatalf("GetQueue after DeleteQueue: %v, want NotFound", err)
		}
	})

	t.Run("requeue since a time, and all", func(t *testing.T) {
		path := sdkPath("since")
		admin := c.Admin()
		start := time.Now().Add(-5 * time.Second)
		deadLetters(t, c, path, map[string]string{"k": "a"}, map[string]string{"k": "b"})
		if res, err := admin.RequeueDeadLetters(ctx, path, leanmq.FailedSince(time.Now().Add(time.Hour))); err != nil || len(res.Requeued) != 0 {
			t.Fatalf("FailedSince(future): %+v, %v", res, err)
		}
		if res, err := admin.RequeueDeadLetters(ctx, path, leanmq.FailedSince(start)); err != nil || len(res.Requeued) != 2 {
			t.Fatalf("FailedSince(start): %+v, %v", res, err)
		}
		got := []string{receiveOne(t, c, path), receiveOne(t, c, path)}
		slices.Sort(got)
		if !slices.Equal(got, []string{`{"k":"a"}`, `{"k":"b"}`}) {
			t.Fatalf("requeued: %v", got)
		}
		deadLetters(t, c, path, "c")
		if res, err := admin.RequeueDeadLetters(ctx, path, leanmq.AllDeadLetters()); err != nil || len(res.Requeued) != 1 {
			t.Fatalf("AllDeadLetters: %+v, %v", res, err)
		}
		if p := receiveOne(t, c, path); p != `"c"` {
			t.Fatalf("requeued: %s", p)
		}
	})

	t.Run("id lists over 1000 are split into calls", func(t *testing.T) {
		path := sdkPath("many")
		deadLetters(t, c, path, "x")
		counter := &callCounter{}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithUnaryInterceptor(counter.intercept))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		admin := leanmq.NewAdmin(conn, leanmq.WithToken(adminToken))
		absent := make([]string, 1500)
		for i := range absent {
			absent[i] = fmt.Sprintf("%d-0", i+1) // valid ids, none in the DLQ
		}
		res, err := admin.RequeueDeadLetters(ctx, path, leanmq.ByIDs(absent...))
		if err != nil || len(res.Requeued) != 0 || len(res.Missing) != 1500 {
			t.Fatalf("Requeue of 1500 absent ids: %d requeued, %d missing, %v", len(res.Requeued), len(res.Missing), err)
		}
		if n, err := admin.DeleteDeadLetters(ctx, path, absent); err != nil || n != 0 {
			t.Fatalf("Delete of 1500 absent ids: %d, %v", n, err)
		}
		if calls := counter.take(); !slices.Equal(calls, []string{"RequeueDeadLetters", "RequeueDeadLetters", "DeleteDeadLetters", "DeleteDeadLetters"}) {
			t.Fatalf("calls %v", calls)
		}
		if q, err := admin.GetQueue(ctx, path); err != nil || q.DeadLetters != 1 {
			t.Fatalf("the real dead letter: %+v, %v", q, err)
		}
	})

	t.Run("bad requests and refusals", func(t *testing.T) {
		path := sdkPath("bad")
		admin := c.Admin()
		for _, sel := range []leanmq.Selection{{}, leanmq.ByIDs()} {
			if _, err := admin.RequeueDeadLetters(ctx, path, sel); err == nil {
				t.Fatalf("Requeue with selection %+v succeeded", sel)
			}
		}
		if _, err := admin.DeleteDeadLetters(ctx, path, nil); err == nil {
			t.Fatal("Delete of no ids succeeded")
		}
		for _, n := range []int{0, leanmq.MaxPageSize + 1} {
			if err := listErr(admin.ListDeadLetters(ctx, path, leanmq.PageSize(n))); err == nil || !strings.Contains(err.Error(), "page size") {
				t.Fatalf("PageSize(%d): %v", n, err)
			}
		}
		if _, err := admin.DeleteDeadLetters(ctx, path, []string{"not-an-id"}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("Delete of a bad id: %v, want InvalidArgument", err)
		}
		if _, err := admin.GetQueue(ctx, path); status.Code(err) != codes.NotFound {
			t.Fatalf("GetQueue of a new path: %v, want NotFound", err)
		}

		anon := dialReal(t, addr).Admin()
		if _, err := anon.ListQueues(ctx); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("ListQueues without a token: %v, want Unauthenticated", err)
		}
		noGrant := dialReal(t, addr, leanmq.WithToken(sdkToken)).Admin()
		if _, err := noGrant.GetQueue(ctx, path); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "admin") {
			t.Fatalf("GetQueue without the admin grant: %v, want PermissionDenied", err)
		}
		if err := listErr(noGrant.ListDeadLetters(ctx, path)); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("ListDeadLetters without the admin grant: %v, want PermissionDenied", err)
		}
		if _, err := noGrant.RequeueDeadLetters(ctx, path, leanmq.AllDeadLetters()); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("Requeue without the admin grant: %v, want PermissionDenied", err)
		}
		if qs, err := noGrant.ListQueues(ctx); err != nil || len(qs) != 0 {
			t.Fatalf("ListQueues is filtered by the grant: %+v, %v", qs, err)
		}
		if _, err := admin.GetQueue(ctx, "/other/x"); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("GetQueue outside the grant: %v, want PermissionDenied", err)
		}
	})
}
