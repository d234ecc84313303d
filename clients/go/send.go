package leanmq

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/leanmq/leanmq-grpc/clients/go/leanmqv1"
)

// Message is one message for SendBatch.
type Message struct {
	// Path is the webhook path, e.g. "/order/status/".
	Path string
	// Payload is encoded as Send encodes its payload.
	Payload any
	// ContentType overrides the content type chosen for Payload.
	ContentType string
	// Headers are application headers (keys must not start with "leanmq-").
	Headers map[string]string
	// OrderingKey, when not empty, orders the message after every earlier
	// one with the same key: within each consumer group they are delivered
	// one at a time, in send order (see WithOrderingKey).
	OrderingKey string
	// IdempotencyKey, when not empty, deduplicates the message: a second
	// message with the same key on the same queue within the broker's dedup
	// window (default 24 h) stores nothing and gets the first one's id
	// (see WithIdempotencyKey).
	IdempotencyKey string
	// Delay, when positive, makes the message visible only after it (see
	// WithDelay).
	Delay time.Duration
	// TTL, when positive, is the message's time to live (see WithTTL).
	TTL time.Duration
}

// SendOption configures one Send.
type SendOption func(*Message)

// WithHeaders adds application headers to the message.
func WithHeaders(h map[string]string) SendOption {
	return func(m *Message) {
		if m.Headers == nil {
			m.Headers = map[string]string{}
		}
		maps.Copy(m.Headers, h)
	}
}

// WithHeader adds one application header to the message.
func WithHeader(key, value string) SendOption {
	return WithHeaders(map[string]string{key: value})
}

// WithContentType overrides the content type chosen for the payload, e.g.
// "text/plain" for a []byte payload. With "application/json" the payload
// must be valid JSON.
func WithContentType(ct string) SendOption { return func(m *Message) { m.ContentType = ct } }

// WithOrderingKey gives the message an ordering key: within each consumer
// group, messages with the same key are delivered one at a time, in send
// order, the next only once the previous one is acked or dead-lettered.
// Keys are independent, and messages without a key are unordered. The
// broker refuses a key over 256 bytes or with control characters
// (codes.InvalidArgument). See docs/ordering.md.
func WithOrderingKey(key string) SendOption { return func(m *Message) { m.OrderingKey = key } }

// WithIdempotencyKey deduplicates the message: a message sent with a key
// already used on the same queue within the broker's dedup window
// (--dedup-window, default 24 h) stores nothing and gets the first
// message's id. At most 256 bytes, no control characters. Publish sets a
// random one when none is given.
func WithIdempotencyKey(key string) SendOption { return func(m *Message) { m.IdempotencyKey = key } }

// WithDelay makes the message visible only after d (at most 365 days). The
// schedule lives in Redis; until the message is due Send and Publish return
// an empty message id.
func WithDelay(d time.Duration) SendOption { return func(m *Message) { m.Delay = d } }

// WithTTL gives the message a time to live, counted from now: an expired
// message is never delivered but moved to the dead-letter queue with reason
// "expired". At most 365 days.
func WithTTL(d time.Duration) SendOption { return func(m *Message) { m.TTL = d } }

// Send appends one message to path's queue and returns its message id once
// the broker has stored it.
//
// The payload is encoded by type:
//   - []byte: sent as is, "application/octet-stream";
//   - json.RawMessage: sent as is, "application/json";
//   - anything else (map, struct, slice, string, number...): encoded with
//     encoding/json, "application/json".
func (c *Client) Send(ctx context.Context, path string, payload any, opts ...SendOption) (string, error) {
	m := Message{Path: path, Payload: payload}
	for _, o := range opts {
		o(&m)
	}
	req, err := m.request()
	if err != nil {
		return "", err
	}
	resp, err := c.rpc.Send(withTraceparent(ctx), req)
	if err != nil {
		return "", sendError(path, err)
	}
	return resp.GetMessageId(), nil
}

// SendBatch appends several messages, possibly to different paths,
// atomically: all or none. The ids come back in the order of msgs.
func (c *Client) SendBatch(ctx context.Context, msgs []Message) ([]string, error) {
	req := &pb.SendBatchRequest{Messages: make([]*pb.SendRequest, 0, len(msgs))}
	for i, m := range msgs {
		r, err := m.request()
		if err != nil {
			return nil, fmt.Errorf("leanmq: batch message %d: %w", i, err)
		}
		req.Messages = append(req.Messages, r)
	}
	resp, err := c.rpc.SendBatch(withTraceparent(ctx), req)
	if err != nil {
		return nil, fmt.Errorf("leanmq: send batch: %w", err)
	}
	ids := make([]string, 0, len(resp.GetResults()))
	for _, r := range resp.GetResults() {
		ids = append(ids, r.GetMessageId())
	}
	return ids, nil
}

func (m Message) request() (*pb.SendRequest, error) {
	payload, ct, err := encodePayload(m.Payload)
	if err != nil {
		return nil, err
	}
	if m.ContentType != "" {
		ct = m.ContentType
	}
	req := &pb.SendRequest{
		Path: m.Path, Payload: payload, ContentType: ct, Headers: m.Headers, OrderingKey: m.OrderingKey,
		IdempotencyKey: m.IdempotencyKey,
	}
	if m.Delay > 0 {
		req.Delay = durationpb.New(m.Delay)
	}
	if m.TTL > 0 {
		req.Ttl = durationpb.New(m.TTL)
	}
	return req, nil
}

// encodePayload applies the payload rules: bytes as is, everything else as JSON.
func encodePayload(v any) ([]byte, string, error) {
	switch p := v.(type) {
	case json.RawMessage:
		if !json.Valid(p) {
			return nil, "", fmt.Errorf("leanmq: payload: json.RawMessage is not valid JSON")
		}
		return p, ContentTypeJSON, nil
	case []byte:
		return p, ContentTypeBinary, nil
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return nil, "", fmt.Errorf("leanmq: payload: %w", err)
		}
		return b, ContentTypeJSON, nil
	}
}
