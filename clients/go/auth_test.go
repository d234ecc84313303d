package leanmq_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	leanmq "github.com/leanmq/leanmq-grpc/clients/go"
)

// sdkPath is a fresh path under /sdk/, the sdk token's grant.
func sdkPath(label string) string {
	return fmt.Sprintf("/sdk/%s/%d", label, time.Now().UnixNano())
}

// queueOf is LeanMQ's queue name of a path made of [a-z0-9/] only.
func queueOf(path string) string {
	return strings.ReplaceAll(strings.Trim(path, "/"), "/", "_")
}

func dialReal(t *testing.T, addr string, opts ...leanmq.Option) *leanmq.Client {
	t.Helper()
	c, err := leanmq.Dial(addr, append([]leanmq.Option{leanmq.WithLogger(quietLogger())}, opts...)...)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// runFor runs c.Run until it returns or waitTimeout passes; returns its error.
func runFor(t *testing.T, c *leanmq.Client) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	err := c.Run(ctx)
	if ctx.Err() != nil {
		t.Fatalf("Run did not fail within %v (err %v)", waitTimeout, err)
	}
	return err
}

func TestTokenAgainstLeanmqd(t *testing.T) {
	bin := leanmqdBinary(t)
	redis := startRedis(t)
	addr := startLeanmqd(t, bin, redis.url(), nil, "--auth-tokens", writeTokensFile(t, t.TempDir()))
	ctx := context.Background()

	t.Run("no token or an unknown one is Unauthenticated", func(t *testing.T) {
		for _, opts := range [][]leanmq.Option{nil, {leanmq.WithToken("not-a-known-token")}} {
			c := dialReal(t, addr, opts...)
			path := sdkPath("anon")
			_, err := c.Send(ctx, path, map[string]any{"n": 1})
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("Send: %v, want Unauthenticated", err)
			}
			if !strings.HasPrefix(err.Error(), "leanmq: send to "+path) {
				t.Errorf("Send error does not say what failed: %v", err)
			}
			c.Handle(path, func(context.Context, *leanmq.Delivery) error { return nil })
			if err := runFor(t, c); status.Code(err) != codes.Unauthenticated {
				t.Fatalf("Run: %v, want Unauthenticated", err)
			}
		}
	})

	t.Run("the right token sends, subscribes and acks", func(t *testing.T) {
		sub, subscribed := subscribedChan()
		c := dialReal(t, addr, leanmq.WithToken(sdkToken), sub)
		path := sdkPath("run")
		got := make(chan string, 10)
		c.Handle(path, func(_ context.Context, d *leanmq.Delivery) error {
			got <- string(d.Payload)
			return nil
		})
		r := run(t, c, subscribed, path)
		id, err := c.Send(ctx, path, map[string]any{"order_id": "ORD-1"})
		if err != nil || id == "" {
			t.Fatalf("Send: %q, %v", id, err)
		}
		if p := recv(t, got, "delivery"); p != `{"order_id":"ORD-1"}` {
			t.Fatalf("payload %s", p)
		}
		q := queueOf(path)
		deadline := time.Now().Add(waitTimeout)
		for redis.pending(t, "webhook:"+q, q+"-group") != 0 {
			if time.Now().After(deadline) {
				t.Fatal("the delivery was not acked")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := r.stop(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
	})

	t.Run("the right token receives and acks on an existing connection", func(t *testing.T) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		c := leanmq.New(conn, leanmq.WithToken(sdkToken), leanmq.WithLogger(quietLogger()))
		path := sdkPath("pull")
		if _, err := c.Send(ctx, path, []byte("pulled")); err != nil {
			t.Fatalf("Send: %v", err)
		}
		ds, err := c.Receive(ctx, path, leanmq.Wait(5*time.Second))
		if err != nil || len(ds) != 1 || string(ds[0].Payload) != "pulled" {
			t.Fatalf("Receive: %v, %v", ds, err)
		}
		if err := ds[0].Ack(ctx); err != nil {
			t.Fatalf("Ack: %v", err)
		}
		q := queueOf(path)
		if n := redis.pending(t, "webhook:"+q, q+"-group"); n != 0 {
			t.Fatalf("%d pending after Ack", n)
		}
	})

	t.Run("a send-only token subscribing is PermissionDenied", func(t *testing.T) {
		c := dialReal(t, addr, leanmq.WithToken(sendOnlyToken))
		if _, err := c.Send(ctx, fmt.Sprintf("/other/%d", time.Now().UnixNano()), "ok"); err != nil {
			t.Fatalf("Send inside the grant: %v", err)
		}
		path := sdkPath("denied")
		if _, err := c.Send(ctx, path, "no"); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("Send outside the grant: %v, want PermissionDenied", err)
		}
		if _, err := c.Receive(ctx, path); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("Receive: %v, want PermissionDenied", err)
		}
		c.Handle(path, func(context.Context, *leanmq.Delivery) error { return nil })
		err := runFor(t, c)
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("Run: %v, want PermissionDenied", err)
		}
		var se interface{ GRPCStatus() *status.Status }
		if !errors.As(err, &se) || !strings.Contains(se.GRPCStatus().Message(), "subscribe") {
			t.Errorf("Run error does not name the action: %v", err)
		}
	})
}

func TestTLSAgainstLeanmqd(t *testing.T) {
	bin := leanmqdBinary(t, "openssl")
	redis := startRedis(t)
	dir := t.TempDir()
	certFile, keyFile := selfSignedCert(t, dir)
	creds := tlsCredentials(t, certFile)
	addr := startLeanmqd(t, bin, redis.url(), creds,
		"--tls-cert", certFile, "--tls-key", keyFile, "--auth-tokens", writeTokensFile(t, dir))
	ctx := context.Background()

	c := dialReal(t, addr, leanmq.WithToken(sdkToken), leanmq.WithDialOptions(grpc.WithTransportCredentials(creds)))
	path := sdkPath("tls")
	id, err := c.Send(ctx, path, map[string]any{"secure": true})
	if err != nil {
		t.Fatalf("Send over TLS: %v", err)
	}
	ds, err := c.Receive(ctx, path, leanmq.Wait(5*time.Second))
	if err != nil || len(ds) != 1 || ds[0].MessageID != id || string(ds[0].Payload) != `{"secure":true}` {
		t.Fatalf("Receive over TLS: %v, %v", ds, err)
	}
	if err := ds[0].Ack(ctx); err != nil {
		t.Fatalf("Ack over TLS: %v", err)
	}

	// A plaintext client cannot talk to the TLS port.
	plain := dialReal(t, addr, leanmq.WithToken(sdkToken))
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := plain.Send(sctx, path, "plain"); err == nil {
		t.Fatal("a plaintext Send to the TLS port succeeded")
	}
}
