package leanmq

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/leanmq/leanmq-grpc/clients/go/leanmqv1"
)

// Run consumes every registered path (one Subscribe stream per path) and
// runs the handlers until ctx is cancelled or a subscription fails for good
// (for example INVALID_ARGUMENT for a bad path). Either way it then stops
// gracefully: it takes no new deliveries, waits up to the stop timeout for
// running handlers, nacks those still running, and returns. It returns nil
// after a stop caused by ctx, the subscription error otherwise.
//
// Streams that break (UNAVAILABLE, a broker restart, a network error) are
// reopened with exponential backoff and do not end Run.
func (c *Client) Run(ctx context.Context) error {
	routes := c.snapshotRoutes()
	if len(routes) == 0 {
		return ErrNoHandlers
	}
	c.mu.Lock()
	if c.running {
		c.mu.Unlock()
		return ErrAlreadyRunning
	}
	c.running = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.running = false
		c.mu.Unlock()
	}()

	streamCtx, stopStreams := context.WithCancel(ctx)
	defer stopStreams()
	// Handlers outlive ctx by up to the stop timeout.
	handlerCtx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()

	r := &runner{
		c:          c,
		streamCtx:  streamCtx,
		handlerCtx: handlerCtx,
		hardStop:   make(chan struct{}),
	}

	fatal := make(chan error, len(routes))
	var loops sync.WaitGroup
	for _, rt := range routes {
		loops.Add(1)
		go func() {
			defer loops.Done()
			if err := r.subscribeLoop(rt); err != nil {
				fatal <- err
			}
		}()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-fatal:
	}

	// Graceful stop: no new deliveries...
	stopStreams()
	loops.Wait()
	// ...then wait for the running handlers, up to the stop timeout.
	done := make(chan struct{})
	go func() {
		r.handlers.Wait()
		close(done)
	}()
	timer := time.NewTimer(c.cfg.stopTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		close(r.hardStop) // the unfinished are nacked
		<-done
	}
	return runErr
}

type runner struct {
	c          *Client
	streamCtx  context.Context
	handlerCtx context.Context
	hardStop   chan struct{}
	handlers   sync.WaitGroup
}

// subscribeLoop keeps one Subscribe stream open for rt until the run stops.
// It returns an error only for a failure that a reconnect cannot fix.
func (r *runner) subscribeLoop(rt *route) error {
	slots := make(chan struct{}, rt.concurrency)
	bo := newBackoff(r.c.cfg.minBackoff, r.c.cfg.maxBackoff)
	for {
		err := r.stream(rt, slots, bo)
		if r.streamCtx.Err() != nil {
			return nil
		}
		if permanent(err) {
			return fmt.Errorf("leanmq: subscribe %s: %w", rt.path, err)
		}
		wait := bo.next()
		r.c.log.Warn("subscribe stream ended; reconnecting", "path", rt.path, "err", err, "backoff", wait)
		t := time.NewTimer(wait)
		select {
		case <-r.streamCtx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

var errStreamEnded = status.Error(codes.Unavailable, "leanmq: subscribe stream ended by the broker")

// permanent reports whether a Subscribe error is a request or setup problem
// that reconnecting will not fix.
func permanent(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.Unimplemented, codes.PermissionDenied, codes.Unauthenticated:
		return true
	}
	return false
}

// stream runs one Subscribe stream until it breaks or the run stops.
func (r *runner) stream(rt *route, slots chan struct{}, bo *backoff) error {
	ctx, cancel := context.WithCancel(r.streamCtx)
	defer cancel()
	req := &pb.SubscribeRequest{
		Path:        rt.path,
		Group:       r.c.cfg.group,
		Consumer:    r.c.cfg.consumer,
		MaxInFlight: uint32(rt.concurrency),
	}
	if r.c.cfg.ackDeadline > 0 {
		req.AckDeadline = durationpb.New(r.c.cfg.ackDeadline)
	}
	stream, err := r.c.rpc.Subscribe(ctx, req)
	if err != nil {
		return err
	}
	// The broker sends the response headers once it has accepted the
	// subscription (queue and group exist); only then is the stream open.
	md, err := stream.Header()
	if err != nil {
		return err
	}
	openedAt := time.Now()
	if md != nil && r.c.cfg.onSubscribed != nil {
		r.c.cfg.onSubscribed(rt.path)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			if time.Since(openedAt) >= r.c.cfg.maxBackoff {
				bo.reset() // it was a healthy stream
			}
			if errors.Is(err, io.EOF) {
				return errStreamEnded
			}
			return err
		}
		bo.reset()
		d := newDelivery(r.c, m)
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			r.c.release(r.handlerCtx, d)
			return ctx.Err()
		}
		if ctx.Err() != nil {
			<-slots
			r.c.release(r.handlerCtx, d)
			return ctx.Err()
		}
		r.handlers.Add(1)
		go func() {
			defer r.handlers.Done()
			defer func() { <-slots }()
			r.c.process(r.handlerCtx, r.hardStop, rt.handler, d)
		}()
	}
}
