package leanmq

import (
	"context"
	"encoding/json"
	"errors"
	"mime"
	"strings"
	"time"

	pb "github.com/leanmq/leanmq-grpc/clients/go/leanmqv1"
)

// Content types the SDK sets on Send.
const (
	ContentTypeJSON   = "application/json"
	ContentTypeBinary = "application/octet-stream"
)

// Delivery is one delivery of one message.
type Delivery struct {
	// MessageID is the Redis stream entry id, as returned by Send.
	MessageID string
	// Path is the path the message was sent to, normalized by the broker
	// (leading "/", no trailing "/"): "/order/status".
	Path string
	// Payload is the message body as sent.
	Payload []byte
	// ContentType is the MIME type of Payload ("application/json" for JSON
	// and LeanMQ-sent messages, "application/octet-stream" for bytes).
	ContentType string
	// Headers are the application headers plus the broker's "leanmq-*" ones.
	// Never nil.
	Headers map[string]string
	// Attempt is 1 on the first delivery of the message to this group.
	Attempt int
	// PublishedAt is when the message was sent (zero if unknown).
	PublishedAt time.Time
	// Group is the consumer group this delivery belongs to.
	Group string
	// Receipt names this delivery for Ack, Nack and Extend.
	Receipt string
	// LeaseExpiresAt is when the lease ends unless acked or extended
	// (broker clock; zero if unknown).
	LeaseExpiresAt time.Time
	// OrderingKey is the key the message was sent with (WithOrderingKey);
	// empty when it is unordered.
	OrderingKey string

	client *Client
}

func newDelivery(c *Client, m *pb.Delivery) *Delivery {
	d := &Delivery{
		MessageID:   m.GetMessageId(),
		Path:        m.GetPath(),
		Payload:     m.GetPayload(),
		ContentType: m.GetContentType(),
		Headers:     m.GetHeaders(),
		Attempt:     int(m.GetAttempt()),
		Group:       m.GetGroup(),
		Receipt:     m.GetReceipt(),
		OrderingKey: m.GetOrderingKey(),
		client:      c,
	}
	if d.Headers == nil {
		d.Headers = map[string]string{}
	}
	if d.Payload == nil {
		d.Payload = []byte{}
	}
	if ts := m.GetPublishedAt(); ts != nil {
		d.PublishedAt = ts.AsTime()
	}
	if ts := m.GetLeaseExpiresAt(); ts != nil {
		d.LeaseExpiresAt = ts.AsTime()
	}
	return d
}

// IsJSON reports whether the content type is application/json (parameters
// such as "; charset=utf-8" allowed).
func (d *Delivery) IsJSON() bool { return isJSONContentType(d.ContentType) }

// JSON decodes the payload into v with encoding/json. It works whatever the
// content type; use IsJSON to check it first if that matters.
func (d *Delivery) JSON(v any) error {
	if err := json.Unmarshal(d.Payload, v); err != nil {
		return &PayloadError{MessageID: d.MessageID, ContentType: d.ContentType, Err: err}
	}
	return nil
}

// PayloadError is returned by Delivery.JSON when the payload does not decode.
type PayloadError struct {
	MessageID   string
	ContentType string
	Err         error
}

func (e *PayloadError) Error() string {
	return "leanmq: message " + e.MessageID + " (" + e.ContentType + "): " + e.Err.Error()
}

func (e *PayloadError) Unwrap() error { return e.Err }

func isJSONContentType(ct string) bool {
	if ct == "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return strings.EqualFold(strings.TrimSpace(ct), ContentTypeJSON)
	}
	return mt == ContentTypeJSON
}

var errDetached = errors.New("leanmq: delivery has no client (not from Receive or a handler)")

// Ack settles the delivery as done. For pull-style use (Receive); in a
// handler, return nil instead.
func (d *Delivery) Ack(ctx context.Context) error {
	if d.client == nil {
		return errDetached
	}
	_, err := d.client.ack(ctx, d)
	return err
}

// Nack settles the delivery as failed, mapping cause as a handler's return
// value is mapped: DeadLetter → dead-letter now, RetryAfter → retry after
// that delay, anything else (nil included) → retry with the broker's policy.
// For pull-style use (Receive); in a handler, return an error instead.
func (d *Delivery) Nack(ctx context.Context, cause error) error {
	if d.client == nil {
		return errDetached
	}
	if cause == nil {
		cause = errors.New("nacked")
	}
	_, err := d.client.nack(ctx, nackRequest(d.Receipt, cause))
	return err
}

// Settle applies the handler outcome table to err: nil acks, anything else
// nacks as Nack does.
func (d *Delivery) Settle(ctx context.Context, err error) error {
	if err == nil {
		return d.Ack(ctx)
	}
	return d.Nack(ctx, err)
}

// Extend pushes the lease out to now + extension and returns the new end of
// the lease. Handlers run by Run or ProcessMessages are extended
// automatically.
func (d *Delivery) Extend(ctx context.Context, extension time.Duration) (time.Time, error) {
	if d.client == nil {
		return time.Time{}, errDetached
	}
	t, err := d.client.extend(ctx, d.Receipt, extension)
	if err == nil {
		d.LeaseExpiresAt = t
	}
	return t, err
}
