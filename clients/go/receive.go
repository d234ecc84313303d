package leanmq

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/leanmq/leanmq-grpc/clients/go/leanmqv1"
)

// ReceiveOption configures one Receive.
type ReceiveOption func(*pb.ReceiveRequest)

// MaxMessages sets the most deliveries Receive returns (broker default 10,
// at most 1000).
func MaxMessages(n int) ReceiveOption {
	return func(r *pb.ReceiveRequest) { r.MaxMessages = uint32(max(n, 0)) }
}

// Wait sets how long Receive waits for the first delivery when none is
// ready (default: not at all; at most 5 min).
func Wait(d time.Duration) ReceiveOption {
	return func(r *pb.ReceiveRequest) {
		if d > 0 {
			r.Wait = durationpb.New(d)
		}
	}
}

// Receive pulls up to MaxMessages deliveries from path, with the client's
// group, consumer name and ack deadline. Each delivery is leased: settle it
// with Ack, Nack or Settle (and Extend it for long work).
func (c *Client) Receive(ctx context.Context, path string, opts ...ReceiveOption) ([]*Delivery, error) {
	req := &pb.ReceiveRequest{Path: path, Group: c.cfg.group, Consumer: c.cfg.consumer}
	if c.cfg.ackDeadline > 0 {
		req.AckDeadline = durationpb.New(c.cfg.ackDeadline)
	}
	for _, o := range opts {
		o(req)
	}
	resp, err := c.rpc.Receive(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("leanmq: receive from %s: %w", path, err)
	}
	out := make([]*Delivery, 0, len(resp.GetDeliveries()))
	for _, m := range resp.GetDeliveries() {
		out = append(out, newDelivery(c, m))
	}
	return out, nil
}

// ProcessMessages is the pull form of Run, for cron jobs and scripts
// (LeanMQ's process_messages(block, timeout, count)): for every registered
// path it receives up to count deliveries, waiting up to wait for the first,
// runs the handler on each (at most the path's concurrency at once, with
// lease extension) and settles them as Run does. It returns the number of
// deliveries handled. Receive errors are joined into the returned error;
// paths that succeeded are still processed.
func (c *Client) ProcessMessages(ctx context.Context, wait time.Duration, count int) (int, error) {
	routes := c.snapshotRoutes()
	if len(routes) == 0 {
		return 0, ErrNoHandlers
	}
	var (
		handled atomic.Int64
		wg      sync.WaitGroup
		mu      sync.Mutex
		errs    []error
	)
	for _, rt := range routes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ds, err := c.Receive(ctx, rt.path, MaxMessages(count), Wait(wait))
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			slots := make(chan struct{}, rt.concurrency)
			var hw sync.WaitGroup
			for _, d := range ds {
				slots <- struct{}{}
				hw.Add(1)
				go func() {
					defer hw.Done()
					defer func() { <-slots }()
					c.process(ctx, nil, rt.handler, d)
					handled.Add(1)
				}()
			}
			hw.Wait()
		}()
	}
	wg.Wait()
	return int(handled.Load()), joinErrors(errs)
}
