package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leanmq/leanmq-grpc/clients/go/internal/fakebroker"
)

const waitTimeout = 10 * time.Second

// lockedBuffer is an io.Writer safe for concurrent use that reports when
// its content first contains a marker.
type lockedBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	seen   chan struct{}
	once   sync.Once
}

func newLockedBuffer(marker string) *lockedBuffer {
	return &lockedBuffer{marker: marker, seen: make(chan struct{})}
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	if b.marker != "" && strings.Contains(b.buf.String(), b.marker) {
		b.once.Do(func() { close(b.seen) })
	}
	return n, err
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startBroker(t *testing.T) *fakebroker.Broker {
	t.Helper()
	b := fakebroker.New()
	if _, err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	return b
}

func runAgent(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var out, errOut bytes.Buffer
	code = run(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestSend(t *testing.T) {
	b := startBroker(t)
	code, out, errOut := runAgent(t, "send", "-target", b.Addr(), "-path", "/order/status/", "-json", `{"order_id":"ORD-1"}`)
	if code != 0 || strings.TrimSpace(out) == "" {
		t.Fatalf("send json: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	req := <-b.Sends
	if req.ContentType != "application/json" || string(req.Payload) != `{"order_id":"ORD-1"}` {
		t.Fatalf("json request = %v", req)
	}
	code, out, errOut = runAgent(t, "send", "-target", b.Addr(), "-path", "/bin", "-hex", "00ff10", "-header", "k=v")
	if code != 0 || strings.TrimSpace(out) == "" {
		t.Fatalf("send hex: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	req = <-b.Sends
	if req.ContentType != "application/octet-stream" || !bytes.Equal(req.Payload, []byte{0, 0xff, 0x10}) || req.Headers["k"] != "v" {
		t.Fatalf("hex request = %v", req)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"bogus"},
		{"send", "-path", "/x"},
		{"send", "-path", "/x", "-json", "{}", "-hex", "00"},
		{"send", "-path", "/x", "-json", "{nope"},
		{"send", "-path", "/x", "-hex", "zz"},
		{"consume", "-path", "/x"},
		{"consume", "-path", "/x", "-count", "1", "-mode", "sleep:abc"},
	} {
		if code, _, _ := runAgent(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

func TestConsume(t *testing.T) {
	cases := []struct {
		mode  string
		check func(t *testing.T, b *fakebroker.Broker)
	}{
		{"ok", func(t *testing.T, b *fakebroker.Broker) { recvN(t, b.Acks, 2) }},
		{"sleep:0.05", func(t *testing.T, b *fakebroker.Broker) { recvN(t, b.Acks, 2) }},
		{"fail", func(t *testing.T, b *fakebroker.Broker) {
			for _, n := range recvN(t, b.Nacks, 2) {
				if n.DeadLetter || n.Reason != "e2e failure" {
					t.Errorf("nack = %v", n)
				}
			}
		}},
		{"deadletter", func(t *testing.T, b *fakebroker.Broker) {
			for _, n := range recvN(t, b.Nacks, 2) {
				if !n.DeadLetter || n.Reason != "e2e dead letter" {
					t.Errorf("nack = %v", n)
				}
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.mode, func(t *testing.T) {
			b := startBroker(t)
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			stdout, stderr := newLockedBuffer(""), newLockedBuffer("READY")
			done := make(chan int, 1)
			go func() {
				done <- run(ctx, []string{"consume", "-target", b.Addr(), "-path", "/e2e/", "-group", "g1",
					"-count", "2", "-mode", tc.mode, "-ack-deadline", "5"}, stdout, stderr)
			}()
			select {
			case <-stderr.seen:
			case <-ctx.Done():
				t.Fatalf("no READY; stderr %q", stderr.String())
			}
			sub := <-b.Subscribes
			if sub.Group != "g1" || sub.GetAckDeadline().AsDuration() != 5*time.Second || sub.MaxInFlight != 1 {
				t.Fatalf("subscribe = %v", sub)
			}
			code, idJSON, _ := runAgent(t, "send", "-target", b.Addr(), "-path", "/e2e/", "-json", `{"a":1}`)
			if code != 0 {
				t.Fatal("send failed")
			}
			code, idHex, _ := runAgent(t, "send", "-target", b.Addr(), "-path", "/e2e/", "-hex", "cafe", "-header", "h=1")
			if code != 0 {
				t.Fatal("send failed")
			}
			select {
			case code := <-done:
				if code != 0 {
					t.Fatalf("consume exit %d; stderr %q", code, stderr.String())
				}
			case <-ctx.Done():
				t.Fatalf("consume did not exit; stdout %q", stdout.String())
			}
			tc.check(t, b)
			lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
			if len(lines) != 2 {
				t.Fatalf("stdout lines = %q", lines)
			}
			var got [2]deliveryLine
			for i, l := range lines {
				if err := json.Unmarshal([]byte(l), &got[i]); err != nil {
					t.Fatalf("line %q: %v", l, err)
				}
			}
			want := [2]deliveryLine{
				{MessageID: strings.TrimSpace(idJSON), Path: "/e2e", ContentType: "application/json",
					PayloadHex: "7b2261223a317d", Attempt: 1, Headers: map[string]string{}},
				{MessageID: strings.TrimSpace(idHex), Path: "/e2e", ContentType: "application/octet-stream",
					PayloadHex: "cafe", Attempt: 1, Headers: map[string]string{"h": "1"}},
			}
			for i := range want {
				g, w := got[i], want[i]
				if g.MessageID != w.MessageID || g.Path != w.Path || g.ContentType != w.ContentType ||
					g.PayloadHex != w.PayloadHex || g.Attempt != w.Attempt || len(g.Headers) != len(w.Headers) ||
					g.Headers["h"] != w.Headers["h"] {
					t.Errorf("line %d = %+v, want %+v", i, g, w)
				}
			}
			if !strings.Contains(lines[0], `"headers":{}`) {
				t.Errorf("empty headers not printed as {}: %s", lines[0])
			}
		})
	}
}

func TestConsumeTimeout(t *testing.T) {
	b := startBroker(t)
	code, _, errOut := runAgent(t, "consume", "-target", b.Addr(), "-path", "/idle", "-count", "1", "-timeout", "0.2")
	if code != 1 || !strings.Contains(errOut, "0 of 1") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func recvN[T any](t *testing.T, ch <-chan T, n int) []T {
	t.Helper()
	var out []T
	for range n {
		select {
		case v := <-ch:
			out = append(out, v)
		case <-time.After(waitTimeout):
			t.Fatalf("got %d of %d", len(out), n)
		}
	}
	return out
}

func TestBadTLSCAIsAUsageError(t *testing.T) {
	code, _, errOut := runAgent(t, "send", "-target", "127.0.0.1:1", "-path", "/x", "-json", "1",
		"-token", "t", "-tls-ca", t.TempDir()+"/missing.pem")
	if code != 2 || !strings.Contains(errOut, "-tls-ca") {
		t.Fatalf("code %d, stderr %q", code, errOut)
	}
}
