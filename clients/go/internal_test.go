package leanmq

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/metadata"
)

func TestBackoffDoublesWithJitterAndCaps(t *testing.T) {
	b := newBackoff(100*time.Millisecond, 5*time.Second)
	steps := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for i, ms := range steps {
		step := ms * time.Millisecond
		got := b.next()
		if got < step/2 || got > step {
			t.Fatalf("wait %d = %v, want in [%v, %v]", i, got, step/2, step)
		}
	}
	b.reset()
	if got := b.next(); got < 50*time.Millisecond || got > 100*time.Millisecond {
		t.Fatalf("after reset: %v", got)
	}
}

func TestFirstExtendDelay(t *testing.T) {
	now := time.Now()
	lease := 30 * time.Second
	cases := []struct {
		name    string
		expires time.Time
		want    time.Duration
	}{
		{"unknown expiry", time.Time{}, 15 * time.Second},
		{"fresh lease", now.Add(20 * time.Second), 10 * time.Second},
		{"expiry in the past (clock skew)", now.Add(-time.Second), 15 * time.Second},
		{"expiry beyond the lease (clock skew)", now.Add(time.Hour), 15 * time.Second},
	}
	for _, tc := range cases {
		if got := firstExtendDelay(lease, tc.expires, now); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestNackRequestMapping(t *testing.T) {
	plain := nackRequest("r", errors.New("boom"))
	if plain.DeadLetter || plain.Delay != nil || plain.Reason != "boom" || plain.Receipt != "r" {
		t.Errorf("plain = %v", plain)
	}
	dl := nackRequest("r", fmt.Errorf("outer: %w", DeadLetter(RetryAfter(time.Second))))
	if !dl.DeadLetter || dl.Reason != "outer: retry after 1s" {
		t.Errorf("dead letter wins over retry: %v", dl)
	}
	long := nackRequest("r", RetryAfter(30*24*time.Hour))
	if long.GetDelay().AsDuration() != 7*24*time.Hour {
		t.Errorf("delay not capped: %v", long.GetDelay().AsDuration())
	}
	if neg := nackRequest("r", RetryAfter(-time.Second)); neg.Delay != nil {
		t.Errorf("negative delay sent: %v", neg.Delay)
	}
	if z := nackRequest("r", RetryAfter(0)); z.Delay != nil || z.DeadLetter {
		t.Errorf("zero delay: %v", z)
	}
}

func TestDeadLetterConstructors(t *testing.T) {
	cause := errors.New("cause")
	cases := []struct {
		err  error
		text string
	}{
		{DeadLetter("reason"), "reason"},
		{DeadLetter(cause), "cause"},
		{DeadLetter(42), "42"},
		{DeadLetter(nil), "dead letter"},
		{DeadLetterf("order %s: %w", "ORD-1", cause), "order ORD-1: cause"},
	}
	for _, tc := range cases {
		var dl *DeadLetterError
		if !errors.As(tc.err, &dl) || tc.err.Error() != tc.text {
			t.Errorf("%v: text %q, want %q", tc.err, tc.err.Error(), tc.text)
		}
	}
	if !errors.Is(DeadLetter(cause), cause) || !errors.Is(DeadLetterf("x: %w", cause), cause) {
		t.Error("DeadLetter does not wrap its cause")
	}
	if !errors.Is(&RetryAfterError{Delay: time.Second, Err: cause}, cause) {
		t.Error("RetryAfterError does not wrap its cause")
	}
}

func TestSanitizeReason(t *testing.T) {
	if got := sanitizeReason("ok"); got != "ok" {
		t.Errorf("got %q", got)
	}
	s := sanitizeReason(strings.Repeat("a", 4095) + "é")
	if len(s) != 4095 || !utf8.ValidString(s) {
		t.Errorf("cut inside a rune: len %d", len(s))
	}
	if s := sanitizeReason("a\xffb"); s != "a\uFFFDb" {
		t.Errorf("invalid UTF-8 kept: %q", s)
	}
}

func TestEncodePayload(t *testing.T) {
	if _, ct, _ := encodePayload([]byte("x")); ct != ContentTypeBinary {
		t.Errorf("bytes: %s", ct)
	}
	if b, ct, _ := encodePayload(nil); ct != ContentTypeJSON || string(b) != "null" {
		t.Errorf("nil: %s %s", b, ct)
	}
}

func TestPublishWindowHeader(t *testing.T) {
	cases := []struct {
		values []string
		want   int
		ok     bool
	}{
		{nil, 0, false},
		{[]string{"8"}, 8, true},
		{[]string{" 1000 "}, 1000, true},
		{[]string{"0"}, 1, true},
		{[]string{"99999"}, maxPublishWindow, true},
		{[]string{"many"}, 0, false},
	}
	for _, tc := range cases {
		md := metadata.MD{}
		if tc.values != nil {
			md.Set(publishWindowHeader, tc.values...)
		}
		if got, ok := windowOf(md); got != tc.want || ok != tc.ok {
			t.Errorf("windowOf(%v) = %d, %v; want %d, %v", tc.values, got, ok, tc.want, tc.ok)
		}
	}
}

func TestPublishSettingsDefaults(t *testing.T) {
	got := PublishSettings{CountThreshold: 7}.withDefaults()
	want := PublishSettings{
		DelayThreshold: 5 * time.Millisecond, CountThreshold: 7, ByteThreshold: 1 << 20,
		ReconnectTimeout: 30 * time.Second, CloseTimeout: 10 * time.Second,
	}
	if got != want {
		t.Fatalf("%+v, want %+v", got, want)
	}
	if k := newIdempotencyKey(); !strings.HasPrefix(k, "go-") || len(k) != 3+32 || k == newIdempotencyKey() {
		t.Fatalf("idempotency key %q", k)
	}
}
