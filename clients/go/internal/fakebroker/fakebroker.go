// Package fakebroker is an in-memory Broker gRPC server for testing the Go
// SDK. It is not a broker: no persistence, no leases expiring, no retries
// unless asked. It records every settle call on channels that tests read.
package fakebroker

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/leanmq/leanmq-grpc/clients/go/leanmqv1"
)

const eventBuffer = 4096

// Broker is the fake. Set the hook fields before Start.
type Broker struct {
	pb.UnimplementedBrokerServer

	// IgnoreMaxInFlight makes Subscribe push every ready message at once,
	// to check that the client bounds its own concurrency.
	IgnoreMaxInFlight bool
	// RequeueOnNack puts a nacked (not dead-lettered) message back on its
	// queue with the next attempt number.
	RequeueOnNack bool
	// OnSubscribe, when set, is called for each Subscribe after the response
	// headers are sent, with the 1-based call number. A non-nil error ends
	// the stream with it.
	OnSubscribe func(call int, req *pb.SubscribeRequest, stream pb.Broker_SubscribeServer) error
	// AckErr, when set, is called for each Ack; a non-nil error fails it.
	AckErr func(call int) error

	// Every call, in order, as received.
	Sends      chan *pb.SendRequest
	Subscribes chan *pb.SubscribeRequest
	Acks       chan *pb.AckRequest
	Nacks      chan *pb.NackRequest
	Extends    chan *pb.ExtendRequest

	mu         sync.Mutex
	queues     map[string]chan *message
	inflight   map[string]*lease // by receipt
	seq        int
	subscribes int
	acks       int
	streams    map[chan error]struct{} // open Subscribe streams

	srv  *grpc.Server
	addr string
}

// lease is one unsettled delivery.
type lease struct {
	m    *message
	free func() // frees the stream's max_in_flight slot, if any
}

type message struct {
	id          string
	path        string
	payload     []byte
	contentType string
	headers     map[string]string
	attempt     uint32
	publishedAt time.Time
}

// New returns a fake broker, not yet serving.
func New() *Broker {
	return &Broker{
		Sends:      make(chan *pb.SendRequest, eventBuffer),
		Subscribes: make(chan *pb.SubscribeRequest, eventBuffer),
		Acks:       make(chan *pb.AckRequest, eventBuffer),
		Nacks:      make(chan *pb.NackRequest, eventBuffer),
		Extends:    make(chan *pb.ExtendRequest, eventBuffer),
		queues:     map[string]chan *message{},
		inflight:   map[string]*lease{},
		streams:    map[chan error]struct{}{},
	}
}

// Start serves on a loopback port and returns its "127.0.0.1:port" address.
func (b *Broker) Start() (string, error) {
	return b.StartOn("127.0.0.1:0")
}

// StartOn serves on addr, e.g. the address of a broker that was stopped.
func (b *Broker) StartOn(addr string) (string, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	b.srv = grpc.NewServer()
	pb.RegisterBrokerServer(b.srv, b)
	b.addr = lis.Addr().String()
	go b.srv.Serve(lis) //nolint:errcheck // ends with Stop
	return b.addr, nil
}

// Stop ends every stream and connection at once.
func (b *Broker) Stop() {
	if b.srv != nil {
		b.srv.Stop()
	}
}

// EndStreams ends every open Subscribe stream with err (a status error),
// as a broker shutting down does with UNAVAILABLE. It returns how many it ended.
func (b *Broker) EndStreams(err error) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.streams)
	for end := range b.streams {
		end <- err
		delete(b.streams, end)
	}
	return n
}

// Addr is the address Start returned.
func (b *Broker) Addr() string { return b.addr }

// Normalize maps a path as the broker does: leading "/", no trailing "/".
func Normalize(path string) string {
	return "/" + strings.Trim(path, "/")
}

func (b *Broker) queue(path string) chan *message {
	b.mu.Lock()
	defer b.mu.Unlock()
	key := Normalize(path)
	q, ok := b.queues[key]
	if !ok {
		q = make(chan *message, eventBuffer)
		b.queues[key] = q
	}
	return q
}

func validPath(path string) error {
	if strings.Trim(path, "/") == "" {
		return status.Errorf(codes.InvalidArgument, "path %q maps to an empty queue name", path)
	}
	return nil
}

func (b *Broker) store(req *pb.SendRequest) (string, error) {
	if err := validPath(req.GetPath()); err != nil {
		return "", err
	}
	ct := req.GetContentType()
	if ct == "" {
		ct = "application/octet-stream"
	}
	if strings.HasPrefix(ct, "application/json") && !json.Valid(req.GetPayload()) {
		return "", status.Error(codes.InvalidArgument, "payload is not valid JSON")
	}
	b.mu.Lock()
	b.seq++
	id := fmt.Sprintf("1732800000000-%d", b.seq)
	b.mu.Unlock()
	m := &message{
		id: id, path: Normalize(req.GetPath()), payload: req.GetPayload(), contentType: ct,
		headers: req.GetHeaders(), attempt: 0, publishedAt: time.Now(),
	}
	b.queue(req.GetPath()) <- m
	return id, nil
}

func (b *Broker) Send(_ context.Context, req *pb.SendRequest) (*pb.SendResponse, error) {
	b.Sends <- req
	id, err := b.store(req)
	if err != nil {
		return nil, err
	}
	return &pb.SendResponse{MessageId: id}, nil
}

func (b *Broker) SendBatch(_ context.Context, req *pb.SendBatchRequest) (*pb.SendBatchResponse, error) {
	resp := &pb.SendBatchResponse{}
	for i, m := range req.GetMessages() {
		if err := validPath(m.GetPath()); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "message %d: %v", i, err)
		}
	}
	for _, m := range req.GetMessages() {
		b.Sends <- m
		id, err := b.store(m)
		if err != nil {
			return nil, err
		}
		resp.Results = append(resp.Results, &pb.SendResponse{MessageId: id})
	}
	return resp, nil
}

// deliver leases m under a new receipt; free is called when it is settled.
func (b *Broker) deliver(m *message, group string, free func()) *pb.Delivery {
	b.mu.Lock()
	b.seq++
	receipt := fmt.Sprintf("receipt-%d", b.seq)
	b.inflight[receipt] = &lease{m: m, free: free}
	m.attempt++
	b.mu.Unlock()
	if group == "" {
		group = strings.ReplaceAll(strings.Trim(m.path, "/"), "/", "_") + "-group"
	}
	return &pb.Delivery{
		Receipt:        receipt,
		MessageId:      m.id,
		Path:           m.path,
		Payload:        m.payload,
		ContentType:    m.contentType,
		Headers:        m.headers,
		Attempt:        m.attempt,
		PublishedAt:    timestamppb.New(m.publishedAt),
		Group:          group,
		LeaseExpiresAt: timestamppb.New(time.Now().Add(30 * time.Second)),
	}
}

// settle frees the receipt's slot and forgets it; nil if unknown.
func (b *Broker) settle(receipt string) *message {
	b.mu.Lock()
	l, ok := b.inflight[receipt]
	delete(b.inflight, receipt)
	b.mu.Unlock()
	if !ok {
		return nil
	}
	if l.free != nil {
		l.free()
	}
	return l.m
}

func (b *Broker) Subscribe(req *pb.SubscribeRequest, stream pb.Broker_SubscribeServer) error {
	b.Subscribes <- req
	if err := validPath(req.GetPath()); err != nil {
		return err
	}
	b.mu.Lock()
	b.subscribes++
	call := b.subscribes
	b.mu.Unlock()
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	if b.OnSubscribe != nil {
		if err := b.OnSubscribe(call, req, stream); err != nil {
			return err
		}
	}
	end := make(chan error, 1)
	b.mu.Lock()
	b.streams[end] = struct{}{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.streams, end)
		b.mu.Unlock()
	}()
	max := int(req.GetMaxInFlight())
	if max == 0 {
		max = 100
	}
	slots := make(chan struct{}, max)
	ctx := stream.Context()
	q := b.queue(req.GetPath())
	for {
		var m *message
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case err := <-end:
			return err
		case m = <-q:
		}
		var free func()
		if !b.IgnoreMaxInFlight {
			select {
			case slots <- struct{}{}:
				free = func() { <-slots }
			case <-ctx.Done():
				q <- m
				return status.FromContextError(ctx.Err()).Err()
			case err := <-end:
				q <- m
				return err
			}
		}
		if err := stream.Send(b.deliver(m, req.GetGroup(), free)); err != nil {
			return err
		}
	}
}

func (b *Broker) Receive(ctx context.Context, req *pb.ReceiveRequest) (*pb.ReceiveResponse, error) {
	if err := validPath(req.GetPath()); err != nil {
		return nil, err
	}
	max := int(req.GetMaxMessages())
	if max == 0 {
		max = 10
	}
	q := b.queue(req.GetPath())
	resp := &pb.ReceiveResponse{}
	if w := req.GetWait().AsDuration(); w > 0 {
		t := time.NewTimer(w)
		defer t.Stop()
		select {
		case m := <-q:
			resp.Deliveries = append(resp.Deliveries, b.deliver(m, req.GetGroup(), nil))
		case <-t.C:
			return resp, nil
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	for len(resp.Deliveries) < max {
		select {
		case m := <-q:
			resp.Deliveries = append(resp.Deliveries, b.deliver(m, req.GetGroup(), nil))
		default:
			return resp, nil
		}
	}
	return resp, nil
}

func (b *Broker) Ack(_ context.Context, req *pb.AckRequest) (*pb.AckResponse, error) {
	b.mu.Lock()
	b.acks++
	call := b.acks
	b.mu.Unlock()
	if b.AckErr != nil {
		if err := b.AckErr(call); err != nil {
			return nil, err
		}
	}
	b.Acks <- req
	resp := &pb.AckResponse{}
	for _, r := range req.GetReceipts() {
		outcome := pb.AckOutcome_ACK_OUTCOME_NOT_PENDING
		if b.settle(r) != nil {
			outcome = pb.AckOutcome_ACK_OUTCOME_ACKED
		}
		resp.Results = append(resp.Results, &pb.AckResult{Receipt: r, Outcome: outcome})
	}
	return resp, nil
}

func (b *Broker) Nack(_ context.Context, req *pb.NackRequest) (*pb.NackResponse, error) {
	b.Nacks <- req
	m := b.settle(req.GetReceipt())
	if m == nil {
		return nil, status.Error(codes.FailedPrecondition, "receipt does not hold the lease")
	}
	if req.GetDeadLetter() {
		return &pb.NackResponse{Outcome: pb.NackOutcome_NACK_OUTCOME_DEAD_LETTERED, DeadLetterId: "1732800000001-0"}, nil
	}
	if b.RequeueOnNack {
		b.queue(m.path) <- m
	}
	return &pb.NackResponse{
		Outcome: pb.NackOutcome_NACK_OUTCOME_RETRY_SCHEDULED,
		RetryAt: timestamppb.New(time.Now().Add(req.GetDelay().AsDuration())),
	}, nil
}

func (b *Broker) Extend(_ context.Context, req *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	b.Extends <- req
	b.mu.Lock()
	_, ok := b.inflight[req.GetReceipt()]
	b.mu.Unlock()
	if !ok {
		return nil, status.Error(codes.FailedPrecondition, "receipt does not hold the lease")
	}
	ext := req.GetExtension().AsDuration()
	if ext == 0 {
		ext = 30 * time.Second
	}
	return &pb.ExtendResponse{LeaseExpiresAt: timestamppb.New(time.Now().Add(ext))}, nil
}
