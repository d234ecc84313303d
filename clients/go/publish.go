package leanmq

// Publish: messages over one long-lived bidi Publish stream per Client,
// each answered on its own PublishResult (docs/publish.md). Modelled on the
// Python (_publish.py) and Node (publish.ts) SDKs, so the three behave alike.
//
// The stream is opened on the first Publish and kept. Every message gets a
// sequence number and, unless the caller gave one, an idempotency key; it
// stays in pending until the response naming its sequence arrives (in any
// order). At most the server's window (the leanmq-publish-window response
// header) is unanswered at once: Publish blocks while it is full. Messages
// are buffered and written to the stream in bursts (PublishSettings). When
// the stream breaks with a retryable code, a new one is opened with backoff
// and every unanswered message is written again under its idempotency key,
// so a message the broker stored before the break is answered with its
// first id (duplicate) instead of being stored twice.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/leanmq/leanmq-grpc/clients/go/leanmqv1"
)

// Publish defaults, used for the zero fields of PublishSettings.
const (
	// DefaultPublishDelayThreshold is how long a message may wait in the
	// buffer before the buffer is written.
	DefaultPublishDelayThreshold = 5 * time.Millisecond
	// DefaultPublishCountThreshold is how many buffered messages make the
	// buffer be written at once.
	DefaultPublishCountThreshold = 100
	// DefaultPublishByteThreshold is how many buffered bytes (encoded
	// requests) make the buffer be written at once.
	DefaultPublishByteThreshold = 1 << 20
	// DefaultPublishReconnectTimeout is how long a broken Publish stream is
	// reopened before its unanswered messages fail with codes.Unavailable.
	DefaultPublishReconnectTimeout = 30 * time.Second
	// DefaultPublishCloseTimeout is how long Close waits for outstanding
	// publishes.
	DefaultPublishCloseTimeout = 10 * time.Second
	// DefaultPublishWindow is the window assumed until the broker announces
	// its own in the leanmq-publish-window response header.
	DefaultPublishWindow = 1000
)

// maxPublishWindow is the largest window believed from a server
// (leanmqd's --publish-window is at most 10000).
const maxPublishWindow = 10000

// publishWindowHeader is the response header announcing the window.
const publishWindowHeader = "leanmq-publish-window"

// PublishSettings configures the buffering of Publish, as Pub/Sub's
// PublishSettings do. The buffer is written to the stream as one burst when
// any threshold is reached, and on Flush and Close. A zero field takes its
// default.
type PublishSettings struct {
	// DelayThreshold: the buffer is written at most this long after its
	// first message was published (default 5 ms).
	DelayThreshold time.Duration
	// CountThreshold: the buffer is written once it holds this many
	// messages (default 100).
	CountThreshold int
	// ByteThreshold: the buffer is written once its encoded requests reach
	// this many bytes (default 1 MiB).
	ByteThreshold int
	// ReconnectTimeout: a broken stream is reopened, with the client's
	// reconnect backoff, for this long; then its unanswered messages fail
	// with codes.Unavailable (default 30 s).
	ReconnectTimeout time.Duration
	// CloseTimeout: how long Close waits for outstanding publishes before
	// failing them with ErrClosed (default 10 s). Call Flush first to wait
	// on a context of your own.
	CloseTimeout time.Duration
}

// WithPublishSettings sets how Publish buffers messages and how long it
// reconnects; zero fields keep their defaults.
func WithPublishSettings(s PublishSettings) Option {
	return func(c *config) { c.publish = s }
}

func (s PublishSettings) withDefaults() PublishSettings {
	if s.DelayThreshold <= 0 {
		s.DelayThreshold = DefaultPublishDelayThreshold
	}
	if s.CountThreshold <= 0 {
		s.CountThreshold = DefaultPublishCountThreshold
	}
	if s.ByteThreshold <= 0 {
		s.ByteThreshold = DefaultPublishByteThreshold
	}
	if s.ReconnectTimeout <= 0 {
		s.ReconnectTimeout = DefaultPublishReconnectTimeout
	}
	if s.CloseTimeout <= 0 {
		s.CloseTimeout = DefaultPublishCloseTimeout
	}
	return s
}

// ErrClosed is the error (wrapped) of a Publish on a closed Client, and of
// the publishes Close gave up waiting for. Such a message may or may not
// have been stored.
var ErrClosed = errors.New("leanmq: client is closed")

// PublishResult is the outcome of one Publish: the message id once the
// broker has stored the message, or the error a Send of it would have
// returned.
type PublishResult struct {
	ready chan struct{}
	id    string
	err   error
}

// Ready is closed once the result is known.
func (r *PublishResult) Ready() <-chan struct{} { return r.ready }

// Get waits for the result and returns the message id (empty for a delayed
// message, which gets its id when it becomes visible), or the message's
// error, or ctx's error if ctx ends first.
func (r *PublishResult) Get(ctx context.Context) (string, error) {
	select {
	case <-r.ready:
		return r.id, r.err
	default:
	}
	select {
	case <-r.ready:
		return r.id, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (r *PublishResult) set(id string, err error) {
	r.id, r.err = id, err
	close(r.ready)
}

func failedResult(err error) *PublishResult {
	r := &PublishResult{ready: make(chan struct{})}
	r.set("", err)
	return r
}

// Publish sends one message over the client's Publish stream and returns at
// once with its result; Get waits for the message id. It takes Send's
// payload and options, and the result's error is the one Send would have
// returned (status.Code tells codes.InvalidArgument, PermissionDenied,
// ...). One failing message does not affect the others.
//
// Without WithIdempotencyKey the message gets a random one ("go-<hex>"),
// so the resend after a broken stream never stores it twice. Publish blocks
// while the broker's window of unanswered messages is full; if ctx ends
// first the result fails with ctx's error and nothing is sent. ctx's span,
// if any, becomes the message's "traceparent" header (unless it has one).
func (c *Client) Publish(ctx context.Context, path string, payload any, opts ...SendOption) *PublishResult {
	m := Message{Path: path, Payload: payload}
	for _, o := range opts {
		o(&m)
	}
	req, err := m.request()
	if err != nil {
		return failedResult(err)
	}
	if req.IdempotencyKey == "" {
		req.IdempotencyKey = newIdempotencyKey()
	}
	addTraceparentHeader(ctx, req)
	return c.publisher().publish(ctx, path, req)
}

// Flush writes every buffered message and waits until every message
// published before the call is answered (each result is then ready). It
// returns ctx's error if ctx ends first, nil otherwise; the messages' own
// errors are on their results.
func (c *Client) Flush(ctx context.Context) error {
	c.mu.Lock()
	p := c.pub
	c.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.flush(ctx)
}

func (c *Client) publisher() *publisher {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pub == nil {
		c.pub = newPublisher(c)
	}
	return c.pub
}

func newIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return "go-" + hex.EncodeToString(b[:])
}

// addTraceparentHeader gives req the "traceparent" header of ctx's span:
// the Publish stream's metadata is the stream's, not the message's.
func addTraceparentHeader(ctx context.Context, req *pb.SendRequest) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	if _, ok := req.Headers[traceparentKey]; ok {
		return
	}
	carrier := propagation.MapCarrier{}
	w3c.Inject(ctx, carrier)
	if tp := carrier[traceparentKey]; tp != "" {
		h := maps.Clone(req.Headers)
		if h == nil {
			h = map[string]string{}
		}
		h[traceparentKey] = tp
		req.Headers = h
	}
}

// pubEntry is one unanswered message.
type pubEntry struct {
	req  *pb.PublishRequest
	path string
	size int
	res  *PublishResult
}

// publisher is the one Publish stream of a Client.
type publisher struct {
	c   *Client
	set PublishSettings

	mu       sync.Mutex
	pending  map[uint64]*pubEntry // unanswered, written or not
	seq      uint64
	window   int
	buf      []*pubEntry // not yet written to the current stream
	bufBytes int
	timer    *time.Timer   // DelayThreshold of the buffer's first message
	changed  chan struct{} // closed when pending shrinks, the window changes or Close starts; nil until waited on
	running  bool          // run's goroutine exists
	exited   chan struct{} // closed when the running goroutine returns
	closed   bool

	kick     chan struct{} // "write the buffer now", cap 1
	stop     chan struct{} // closed when Close stops waiting
	stopOnce sync.Once
}

func newPublisher(c *Client) *publisher {
	return &publisher{
		c:       c,
		set:     c.cfg.publish.withDefaults(),
		pending: map[uint64]*pubEntry{},
		window:  DefaultPublishWindow,
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
	}
}

func (p *publisher) kickNow() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// broadcast wakes every waiter of changed. Called with mu held.
func (p *publisher) broadcast() {
	if p.changed != nil {
		close(p.changed)
		p.changed = nil
	}
}

// waitChan is closed at the next broadcast. Called with mu held.
func (p *publisher) waitChan() <-chan struct{} {
	if p.changed == nil {
		p.changed = make(chan struct{})
	}
	return p.changed
}

func (p *publisher) publish(ctx context.Context, path string, msg *pb.SendRequest) *PublishResult {
	p.mu.Lock()
	for len(p.pending) >= p.window && !p.closed {
		ch := p.waitChan()
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return failedResult(sendError(path, ctx.Err()))
		}
		p.mu.Lock()
	}
	if p.closed {
		p.mu.Unlock()
		return failedResult(sendError(path, ErrClosed))
	}
	p.seq++
	e := &pubEntry{
		req:  &pb.PublishRequest{Sequence: p.seq, Message: msg},
		path: path,
		res:  &PublishResult{ready: make(chan struct{})},
	}
	e.size = proto.Size(e.req)
	p.pending[e.req.Sequence] = e
	p.buf = append(p.buf, e)
	p.bufBytes += e.size
	switch {
	case len(p.buf) >= p.set.CountThreshold || p.bufBytes >= p.set.ByteThreshold:
		p.kickNow()
	case len(p.buf) == 1:
		if p.timer == nil {
			p.timer = time.AfterFunc(p.set.DelayThreshold, p.kickNow)
		} else {
			p.timer.Reset(p.set.DelayThreshold)
		}
	}
	if !p.running {
		p.running = true
		p.exited = make(chan struct{})
		go p.run(p.exited)
	}
	p.mu.Unlock()
	return e.res
}

// takeBuffer empties the buffer; also whether the stream should end now
// (Close started and nothing is unanswered).
func (p *publisher) takeBuffer() ([]*pubEntry, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	batch := p.buf
	p.buf, p.bufBytes = nil, 0
	if p.timer != nil {
		p.timer.Stop()
	}
	return batch, p.closed && len(p.pending) == 0
}

func (p *publisher) flush(ctx context.Context) error {
	p.mu.Lock()
	results := make([]*PublishResult, 0, len(p.pending))
	for _, e := range p.pending {
		results = append(results, e.res)
	}
	p.mu.Unlock()
	p.kickNow()
	for _, r := range results {
		select {
		case <-r.ready:
			continue
		default:
		}
		select {
		case <-r.ready:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// close stops new publishes, writes the buffer and waits (up to
// CloseTimeout) for every outstanding result and the stream's end; what is
// still unanswered then fails with ErrClosed.
func (p *publisher) close() {
	p.mu.Lock()
	p.closed = true
	p.broadcast() // publishes waiting for the window fail with ErrClosed
	exited := p.exited
	running := p.running
	p.mu.Unlock()
	if !running {
		return
	}
	p.kickNow()
	t := time.NewTimer(p.set.CloseTimeout)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		p.stopOnce.Do(func() { close(p.stop) })
		<-exited
	}
}

// run keeps a stream open while messages are unanswered, reopening it with
// backoff when it breaks.
func (p *publisher) run(exited chan struct{}) {
	defer close(exited)
	bo := newBackoff(p.c.cfg.minBackoff, p.c.cfg.maxBackoff)
	var brokenSince time.Time
	for {
		answered, err := p.stream()
		select {
		case <-p.stop: // Close stopped waiting
			p.failAll(ErrClosed)
		default:
		}
		if p.idle() {
			return
		}
		if err == nil {
			err = status.Error(codes.Unavailable, "the Publish stream ended")
		}
		if answered > 0 {
			bo.reset()
			brokenSince = time.Time{}
		}
		if brokenSince.IsZero() {
			brokenSince = time.Now()
		}
		if !publishRetryable(err) || time.Since(brokenSince) > p.set.ReconnectTimeout {
			p.c.log.Warn("publish stream failed; failing its unanswered messages", "err", err)
			p.failAll(err)
			brokenSince = time.Time{}
			if p.idle() {
				return
			}
		}
		wait := bo.next()
		p.c.log.Info("publish stream ended; reopening and resending unanswered messages", "err", err, "backoff", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-p.stop:
			t.Stop()
		}
	}
}

// idle reports whether nothing is unanswered, and then ends run: the next
// Publish starts it again.
func (p *publisher) idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.pending) > 0 {
		return false
	}
	p.running = false
	return true
}

// publishRetryable: the codes after which the Python and Node SDKs reopen
// the stream too.
func publishRetryable(err error) bool {
	return retryable(err) || status.Code(err) == codes.DeadlineExceeded
}

// stream runs one Publish stream: writes every unanswered message, then the
// buffer's bursts, and settles answers until the stream ends. It returns
// how many messages it answered and the stream's error (nil when it ended
// OK).
func (p *publisher) stream() (int, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-p.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	s, err := p.c.rpc.Publish(ctx)
	if err != nil {
		return 0, err
	}
	// Every unanswered message is written again, in sequence order, under
	// its idempotency key.
	p.mu.Lock()
	p.buf = make([]*pubEntry, 0, len(p.pending))
	p.bufBytes = 0
	for _, seq := range slices.Sorted(maps.Keys(p.pending)) {
		e := p.pending[seq]
		p.buf = append(p.buf, e)
		p.bufBytes += e.size
	}
	p.mu.Unlock()
	p.kickNow()

	type ended struct {
		answered int
		err      error
	}
	readerDone := make(chan ended, 1)
	go func() {
		n, err := p.read(s)
		cancel() // a writer blocked on flow control returns
		readerDone <- ended{n, err}
	}()
	writing := true
	for {
		select {
		case r := <-readerDone:
			return r.answered, r.err
		case <-p.kick:
			if !writing {
				continue
			}
			batch, end := p.takeBuffer()
			for _, e := range batch {
				if err := s.Send(e.req); err != nil {
					// Broken: the reader gets the status. Unanswered
					// messages are resent on the next stream.
					writing = false
					break
				}
			}
			if writing && end {
				_ = s.CloseSend()
				writing = false
			}
		}
	}
}

// read settles the answers of s until it ends.
func (p *publisher) read(s pb.Broker_PublishClient) (int, error) {
	if md, err := s.Header(); err == nil {
		if w, ok := windowOf(md); ok {
			p.mu.Lock()
			p.window = w
			p.broadcast()
			p.mu.Unlock()
		}
	}
	answered := 0
	for {
		resp, err := s.Recv()
		if err == io.EOF {
			return answered, nil
		}
		if err != nil {
			return answered, err
		}
		p.mu.Lock()
		e, ok := p.pending[resp.GetSequence()]
		if ok {
			delete(p.pending, resp.GetSequence())
			p.broadcast()
		}
		end := p.closed && len(p.pending) == 0
		p.mu.Unlock()
		if end {
			p.kickNow() // the writer ends the stream
		}
		if !ok {
			continue // answered already (a resend's second answer)
		}
		answered++
		if code := codes.Code(resp.GetCode()); code != codes.OK {
			e.res.set("", sendError(e.path, status.Error(code, resp.GetError())))
		} else {
			e.res.set(resp.GetMessageId(), nil)
		}
	}
}

// failAll fails every unanswered message with err.
func (p *publisher) failAll(err error) {
	p.mu.Lock()
	failed := slices.Collect(maps.Values(p.pending))
	clear(p.pending)
	p.buf, p.bufBytes = nil, 0
	p.broadcast()
	p.mu.Unlock()
	for _, e := range failed {
		e.res.set("", sendError(e.path, err))
	}
}

// sendError is err as Send reports it.
func sendError(path string, err error) error {
	return fmt.Errorf("leanmq: send to %s: %w", path, err)
}

// windowOf is the window announced in md, bounded to 1..maxPublishWindow.
func windowOf(md metadata.MD) (int, bool) {
	v := md.Get(publishWindowHeader)
	if len(v) == 0 {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(v[0]))
	if err != nil {
		return 0, false
	}
	return min(max(n, 1), maxPublishWindow), true
}
