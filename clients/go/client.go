package leanmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	pb "github.com/leanmq/leanmq-grpc/clients/go/leanmqv1"
)

// Defaults used when the matching option is not given.
const (
	// DefaultConcurrency is the number of handlers run at once per path.
	DefaultConcurrency = 10
	// DefaultAckDeadline is the broker's default lease length.
	DefaultAckDeadline = 30 * time.Second
	// DefaultStopTimeout is how long a graceful stop waits for running handlers.
	DefaultStopTimeout = 10 * time.Second
	// DefaultSettleTimeout bounds one Ack or Nack, retries included.
	DefaultSettleTimeout = 10 * time.Second
	// DefaultMinBackoff and DefaultMaxBackoff bound the reconnect backoff.
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
)

// HandlerFunc handles one delivery. Its return value settles the delivery;
// see the package documentation for the outcome table. ctx is cancelled
// when the client stops and the handler did not finish within the stop
// timeout.
type HandlerFunc func(ctx context.Context, d *Delivery) error

// Option configures a Client.
type Option func(*config)

type config struct {
	group         string
	consumer      string
	concurrency   int
	ackDeadline   time.Duration
	stopTimeout   time.Duration
	settleTimeout time.Duration
	minBackoff    time.Duration
	maxBackoff    time.Duration
	dialOptions   []grpc.DialOption
	token         string
	logger        *slog.Logger
	onSubscribed  func(path string)
	publish       PublishSettings
}

// WithGroup sets the consumer group for Run, Receive and ProcessMessages.
// Default: LeanMQ's group for the path ("<queue>-group"), shared with LeanMQ
// Python handlers.
func WithGroup(group string) Option { return func(c *config) { c.group = group } }

// WithConsumer sets this subscriber's name, used in broker logs only.
// Default: "<hostname>-<pid>".
func WithConsumer(name string) Option { return func(c *config) { c.consumer = name } }

// WithConcurrency sets how many handlers run at once per path (default 10).
// It is also sent as SubscribeRequest.max_in_flight.
func WithConcurrency(n int) Option { return func(c *config) { c.concurrency = n } }

// WithAckDeadline sets the lease length asked of the broker (default 30 s,
// broker range 100 ms to 12 h). Leases are extended at about half of it while
// a handler runs.
func WithAckDeadline(d time.Duration) Option { return func(c *config) { c.ackDeadline = d } }

// WithStopTimeout sets how long a graceful stop waits for running handlers
// before nacking them (default 10 s).
func WithStopTimeout(d time.Duration) Option { return func(c *config) { c.stopTimeout = d } }

// WithSettleTimeout bounds each Ack or Nack made by the SDK, retries on
// UNAVAILABLE included (default 10 s).
func WithSettleTimeout(d time.Duration) Option { return func(c *config) { c.settleTimeout = d } }

// WithReconnectBackoff sets the reconnect backoff bounds (default 100 ms
// doubling to 5 s). Each wait is jittered between half and all of the step.
func WithReconnectBackoff(min, max time.Duration) Option {
	return func(c *config) { c.minBackoff, c.maxBackoff = min, max }
}

// WithDialOptions passes options to grpc.NewClient. Without transport
// credentials among them the connection is plaintext.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) { c.dialOptions = append(c.dialOptions, opts...) }
}

// WithToken sends token as "authorization: Bearer <token>" metadata with
// every call the client makes (Send, Receive, Ack, Nack, Extend and the
// Subscribe streams of Run), and with the calls of Broker(). It is a
// leanmqd --auth-tokens token. Calls without a known token fail with
// codes.Unauthenticated, calls outside the token's grant with
// codes.PermissionDenied; Run returns either one (see status.Code).
//
// The token works over plaintext too; outside a test, use TLS
// (WithDialOptions(grpc.WithTransportCredentials(credentials.NewTLS(...)))).
func WithToken(token string) Option { return func(c *config) { c.token = token } }

// WithLogger sets the logger for reconnects and settle failures. Default:
// slog.Default().
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithOnSubscribed registers a callback called each time a Subscribe stream
// for path is open (accepted by the broker), including after a reconnect.
func WithOnSubscribed(f func(path string)) Option { return func(c *config) { c.onSubscribed = f } }

// HandleOption configures one handler.
type HandleOption func(*route)

// HandlerConcurrency overrides the client's concurrency for one path.
func HandlerConcurrency(n int) HandleOption { return func(r *route) { r.concurrency = n } }

type route struct {
	path        string
	handler     HandlerFunc
	concurrency int
}

// Client is a leanmq-grpc client. It is safe for concurrent use.
type Client struct {
	cfg  config
	conn *grpc.ClientConn // nil when built with New
	// cc is the connection every call goes through (with WithToken's
	// metadata), shared by Admin.
	cc  grpc.ClientConnInterface
	rpc pb.BrokerClient
	log *slog.Logger

	mu      sync.Mutex
	routes  []*route
	running bool
	pub     *publisher // the Publish stream, made by the first Publish
}

// Dial creates a client for the leanmqd at target ("host:port" or any gRPC
// target). The connection is made lazily, on the first call.
func Dial(target string, opts ...Option) (*Client, error) {
	cfg := newConfig(opts)
	dialOpts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, cfg.dialOptions...)
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("leanmq: dial %s: %w", target, err)
	}
	c := newClient(cfg, conn)
	c.conn = conn
	return c, nil
}

// New creates a client on an existing connection, which Close leaves open.
func New(conn grpc.ClientConnInterface, opts ...Option) *Client {
	return newClient(newConfig(opts), conn)
}

func newConfig(opts []Option) config {
	cfg := config{
		concurrency:   DefaultConcurrency,
		stopTimeout:   DefaultStopTimeout,
		settleTimeout: DefaultSettleTimeout,
		minBackoff:    DefaultMinBackoff,
		maxBackoff:    DefaultMaxBackoff,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.concurrency <= 0 {
		cfg.concurrency = DefaultConcurrency
	}
	if cfg.stopTimeout < 0 {
		cfg.stopTimeout = 0
	}
	if cfg.settleTimeout <= 0 {
		cfg.settleTimeout = DefaultSettleTimeout
	}
	if cfg.minBackoff <= 0 {
		cfg.minBackoff = DefaultMinBackoff
	}
	if cfg.maxBackoff < cfg.minBackoff {
		cfg.maxBackoff = cfg.minBackoff
	}
	if cfg.consumer == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "go"
		}
		cfg.consumer = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	return cfg
}

func newClient(cfg config, conn grpc.ClientConnInterface) *Client {
	log := cfg.logger
	if log == nil {
		log = slog.Default()
	}
	conn = withBearer(conn, cfg.token)
	return &Client{cfg: cfg, cc: conn, rpc: pb.NewBrokerClient(conn), log: log.With("component", "leanmq")}
}

// withBearer is conn sending WithToken's token on every call (conn itself
// without a token).
func withBearer(conn grpc.ClientConnInterface, token string) grpc.ClientConnInterface {
	if token == "" {
		return conn
	}
	return &bearerConn{ClientConnInterface: conn, authorization: "Bearer " + token}
}

// bearerConn adds the authorization metadata of WithToken to every unary
// call and stream made through it.
type bearerConn struct {
	grpc.ClientConnInterface
	authorization string
}

func (b *bearerConn) withToken(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", b.authorization)
}

func (b *bearerConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return b.ClientConnInterface.Invoke(b.withToken(ctx), method, args, reply, opts...)
}

func (b *bearerConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return b.ClientConnInterface.NewStream(b.withToken(ctx), desc, method, opts...)
}

// Broker returns the generated gRPC client, for calls the webhook layer does
// not wrap.
func (c *Client) Broker() pb.BrokerClient { return c.rpc }

// Close waits for outstanding publishes (up to PublishSettings.CloseTimeout,
// default 10 s; those still unanswered then fail with ErrClosed), ends the
// Publish stream and closes the connection made by Dial. Publish after
// Close fails with ErrClosed. Cancel Run's context (and let Run return)
// before closing, or in-flight settles fail.
func (c *Client) Close() error {
	c.mu.Lock()
	p := c.pub
	if p == nil {
		// A Publish after Close gets a closed publisher.
		p = newPublisher(c)
		c.pub = p
	}
	c.mu.Unlock()
	p.close()
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// Handle registers handler for a webhook path such as "/order/status/".
// It panics if the path is empty or already registered, like http.ServeMux.
// Handlers registered while Run is running are picked up by the next Run.
func (c *Client) Handle(path string, handler HandlerFunc, opts ...HandleOption) {
	if path == "" {
		panic("leanmq: Handle with an empty path")
	}
	if handler == nil {
		panic("leanmq: Handle with a nil handler for " + path)
	}
	r := &route{path: path, handler: handler}
	for _, o := range opts {
		o(r)
	}
	if r.concurrency <= 0 {
		r.concurrency = c.cfg.concurrency
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, existing := range c.routes {
		if existing.path == path {
			panic("leanmq: a handler is already registered for " + path)
		}
	}
	c.routes = append(c.routes, r)
}

func (c *Client) snapshotRoutes() []*route {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*route(nil), c.routes...)
}

// lease is the lease length the broker applies to our deliveries.
func (c *Client) lease() time.Duration {
	if c.cfg.ackDeadline > 0 {
		return c.cfg.ackDeadline
	}
	return DefaultAckDeadline
}

// ErrNoHandlers is returned by Run and ProcessMessages when no handler is registered.
var ErrNoHandlers = errors.New("leanmq: no handlers registered")

// ErrAlreadyRunning is returned by Run when the client is already running.
var ErrAlreadyRunning = errors.New("leanmq: Run is already running")
