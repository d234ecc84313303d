package leanmq

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/leanmq/leanmq-grpc/clients/go/leanmqv1"
)

// nackRequest maps a handler error to a NackRequest (the outcome table).
func nackRequest(receipt string, err error) *pb.NackRequest {
	req := &pb.NackRequest{Receipt: receipt, Reason: sanitizeReason(err.Error())}
	var dl *DeadLetterError
	var ra *RetryAfterError
	switch {
	case errors.As(err, &dl):
		req.DeadLetter = true
	case errors.As(err, &ra):
		if d := min(ra.Delay, maxNackDelay); d > 0 {
			req.Delay = durationpb.New(d)
		}
	}
	return req
}

// retryable reports whether a settle call failing with err is worth
// retrying: the broker (or the connection to it) was unavailable.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return true
	}
	return false
}

// withRetry calls f until it succeeds, fails with a non-retryable error, or
// ctx ends.
func (c *Client) withRetry(ctx context.Context, f func(context.Context) error) error {
	bo := newBackoff(c.cfg.minBackoff, c.cfg.maxBackoff)
	for {
		err := f(ctx)
		if err == nil || !retryable(err) {
			return err
		}
		t := time.NewTimer(bo.next())
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

func (c *Client) ack(ctx context.Context, d *Delivery) (pb.AckOutcome, error) {
	var outcome pb.AckOutcome
	err := c.withRetry(ctx, func(ctx context.Context) error {
		resp, err := c.rpc.Ack(ctx, &pb.AckRequest{Receipts: []string{d.Receipt}})
		if err != nil {
			return err
		}
		if rs := resp.GetResults(); len(rs) > 0 {
			outcome = rs[0].GetOutcome()
		}
		return nil
	})
	if err != nil {
		return outcome, fmt.Errorf("leanmq: ack %s: %w", d.MessageID, err)
	}
	return outcome, nil
}

func (c *Client) nack(ctx context.Context, req *pb.NackRequest) (*pb.NackResponse, error) {
	var resp *pb.NackResponse
	err := c.withRetry(ctx, func(ctx context.Context) error {
		var err error
		resp, err = c.rpc.Nack(ctx, req)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("leanmq: nack: %w", err)
	}
	return resp, nil
}

func (c *Client) extend(ctx context.Context, receipt string, extension time.Duration) (time.Time, error) {
	resp, err := c.rpc.Extend(ctx, &pb.ExtendRequest{Receipt: receipt, Extension: durationpb.New(extension)})
	if err != nil {
		return time.Time{}, fmt.Errorf("leanmq: extend: %w", err)
	}
	if ts := resp.GetLeaseExpiresAt(); ts != nil {
		return ts.AsTime(), nil
	}
	return time.Now().Add(extension), nil
}

// settle acks or nacks d according to the handler's result, logging what
// the broker could not do. It runs on a context of its own so that it
// completes during a stop.
func (c *Client) settle(base context.Context, d *Delivery, herr error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(base), c.cfg.settleTimeout)
	defer cancel()
	log := c.log.With("path", d.Path, "message_id", d.MessageID, "attempt", d.Attempt)
	if herr == nil {
		outcome, err := c.ack(ctx, d)
		switch {
		case err != nil:
			log.Warn("ack failed; the message will be redelivered when its lease expires", "err", err)
		case outcome == pb.AckOutcome_ACK_OUTCOME_STALE:
			log.Warn("ack was stale: the lease had expired and the message was redelivered")
		}
		return
	}
	req := nackRequest(d.Receipt, herr)
	resp, err := c.nack(ctx, req)
	switch {
	case status.Code(err) == codes.FailedPrecondition:
		log.Warn("nack refused: the lease was lost before the handler finished", "handler_err", herr)
	case err != nil:
		log.Warn("nack failed; the message will be redelivered when its lease expires", "err", err, "handler_err", herr)
	case resp.GetOutcome() == pb.NackOutcome_NACK_OUTCOME_DEAD_LETTERED:
		log.Info("message dead-lettered", "reason", req.Reason, "dead_letter_id", resp.GetDeadLetterId())
	default:
		log.Debug("message nacked for retry", "reason", req.Reason)
	}
}

// callHandler runs h inside d's handler span (tracing.go), turning a panic
// into a *PanicError.
func callHandler(ctx context.Context, h HandlerFunc, d *Delivery) (err error) {
	ctx, endSpan := startHandlerSpan(ctx, d)
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
		endSpan(err)
	}()
	return h(ctx, d)
}

// releaseExtension is the lease given to a delivery that was received but
// never handled because the client is stopping: it is released for
// redelivery almost at once, without a Nack (which would count as a failure).
const releaseExtension = 100 * time.Millisecond

// release hands a delivery that was never started back to the broker.
func (c *Client) release(base context.Context, d *Delivery) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(base), c.cfg.settleTimeout)
	defer cancel()
	if _, err := c.extend(ctx, d.Receipt, releaseExtension); err != nil {
		c.log.Debug("release of an unstarted delivery failed; it is redelivered when its lease expires",
			"path", d.Path, "message_id", d.MessageID, "err", err)
	}
}

// errStopped is the Nack reason for handlers still running at the end of a
// graceful stop.
var errStopped = errors.New("leanmq: client stopped before the handler finished")

// process runs h for d with lease extension and settles the result. When
// hardStop closes before h returns, h's context is cancelled, d is nacked
// and process returns without waiting for h.
func (c *Client) process(base context.Context, hardStop <-chan struct{}, h HandlerFunc, d *Delivery) {
	hctx, cancel := context.WithCancel(base)
	defer cancel()

	// Read the lease before the handler runs: it may call d.Extend itself.
	firstExtend := firstExtendDelay(c.lease(), d.LeaseExpiresAt, time.Now())
	kctx, stopKeepAlive := context.WithCancel(context.WithoutCancel(base))
	keepAliveDone := make(chan struct{})
	go func() {
		defer close(keepAliveDone)
		c.keepAlive(kctx, d.Receipt, d.Path, d.MessageID, firstExtend)
	}()

	result := make(chan error, 1)
	go func() { result <- callHandler(hctx, h, d) }()

	var herr error
	select {
	case herr = <-result:
	case <-hardStop:
		cancel()
		herr = errStopped
	}
	stopKeepAlive()
	<-keepAliveDone
	if herr == errStopped {
		c.log.Warn("handler did not finish before the stop timeout; nacking", "path", d.Path, "message_id", d.MessageID)
	}
	var pe *PanicError
	if errors.As(herr, &pe) {
		c.log.Error("handler panicked", "path", d.Path, "message_id", d.MessageID, "panic", pe.Value, "stack", string(pe.Stack))
	}
	c.settle(base, d, herr)
}

// keepAlive extends a delivery's lease, first after wait and then every
// half lease, until ctx ends or the lease is lost.
func (c *Client) keepAlive(ctx context.Context, receipt, path, messageID string, wait time.Duration) {
	lease := c.lease()
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		callCtx, cancel := context.WithTimeout(ctx, max(lease/2, time.Second))
		_, err := c.extend(callCtx, receipt, lease)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			t.Reset(lease / 2)
		case status.Code(err) == codes.FailedPrecondition:
			c.log.Warn("lease lost while the handler runs; the message may be handled twice",
				"path", path, "message_id", messageID)
			return
		default:
			c.log.Debug("extend failed; retrying", "path", path, "message_id", messageID, "err", err)
			t.Reset(min(max(lease/8, 10*time.Millisecond), time.Second))
		}
	}
}

// firstExtendDelay is half the time left on the lease, using the broker's
// lease_expires_at when it is plausible against our clock and the lease
// length otherwise (unknown expiry or clock skew).
func firstExtendDelay(lease time.Duration, expires, now time.Time) time.Duration {
	remaining := lease
	if !expires.IsZero() {
		if r := expires.Sub(now); r > 0 && r < lease {
			remaining = r
		}
	}
	return remaining / 2
}

// backoff is exponential backoff with jitter: each wait is uniformly drawn
// from [step/2, step], where step doubles from min up to max.
type backoff struct {
	min, max, step time.Duration
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, step: min}
}

func (b *backoff) next() time.Duration {
	step := b.step
	b.step = min(b.step*2, b.max)
	half := step / 2
	return half + rand.N(step-half+1)
}

func (b *backoff) reset() { b.step = b.min }
