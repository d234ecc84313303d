package leanmq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/leanmq/leanmq-grpc/clients/go/leanmqv1"
)

// The broker's bounds for the Admin service.
const (
	// DefaultPageSize is the page size ListDeadLetters asks for by default.
	DefaultPageSize = 100
	// MaxPageSize is the largest page the broker returns.
	MaxPageSize = 1000
	// maxIDsPerCall is the most ids one Requeue or Delete call may carry;
	// longer lists are split into several calls.
	maxIDsPerCall = 1000
)

// Admin is the client of leanmqd's Admin service: queues and their
// dead-letter queues. Its calls need a token with the admin grant on the
// queue's path (when leanmqd runs with --auth-tokens). Errors wrap the gRPC
// status, so status.Code(err) tells codes.NotFound, codes.PermissionDenied,
// codes.InvalidArgument (a wrong confirm) and the others apart.
//
// It is safe for concurrent use.
type Admin struct {
	rpc pb.AdminClient
}

// Admin returns an Admin on the client's connection, with its token.
func (c *Client) Admin() *Admin { return &Admin{rpc: pb.NewAdminClient(c.cc)} }

// NewAdmin creates an Admin on an existing connection (a *grpc.ClientConn
// from grpc.NewClient). Of the options only WithToken applies.
func NewAdmin(conn grpc.ClientConnInterface, opts ...Option) *Admin {
	cfg := newConfig(opts)
	return &Admin{rpc: pb.NewAdminClient(withBearer(conn, cfg.token))}
}

// Raw returns the generated Admin client, for calls this type does not wrap.
func (a *Admin) Raw() pb.AdminClient { return a.rpc }

// QueueSummary is one queue of ListQueues.
type QueueSummary struct {
	// Queue is the queue name ("order_status").
	Queue string
	// Stream is its Redis stream ("webhook:order_status").
	Stream string
	// Length is the number of entries in the stream (delivered or not).
	Length int64
	// DeadLetters is the number of entries in its dead-letter queue.
	DeadLetters int64
	// Paths are the paths leanmq-grpc has seen used for it (LeanMQ records none).
	Paths []string
}

// GroupInfo is one consumer group of a queue.
type GroupInfo struct {
	Name string
	// Pending is the number of entries delivered and not yet acked.
	Pending   int64
	Consumers int64
	// Lag is the number of entries not yet delivered to the group (-1 when
	// Redis cannot tell).
	Lag int64
	// OldestUnackedAge is the age of the oldest pending entry (0 when none).
	OldestUnackedAge time.Duration
	// Retrying is the number of pending entries waiting for a retry after a Nack.
	Retrying        int64
	LastDeliveredID string
}

// QueueInfo is one queue in detail (GetQueue).
type QueueInfo struct {
	Queue       string
	Stream      string
	Length      int64
	Groups      []GroupInfo
	DeadLetters int64
	// Scheduled is Delayed plus the pending entries waiting for a retry.
	Scheduled int64
	// Delayed is the number of delayed messages not yet visible.
	Delayed int64
	// Expired is the number of messages that expired before delivery (all time).
	Expired int64
	// Dropped is the number of messages dropped by leanmqd's --max-len cap (all time).
	Dropped int64
	// CreatedAt is from LeanMQ's metadata (zero if unknown).
	CreatedAt time.Time
}

// Failure is one failure of a dead letter (a LeanMQ _failures record).
type Failure struct {
	At     time.Time
	Reason string
	// Attempts is the number of deliveries before it failed (0 when LeanMQ recorded it).
	Attempts int
	// Group is the group it failed in ("" when LeanMQ recorded it).
	Group string
}

// DeadLetterEntry is a message in a dead-letter queue. Decode its payload
// as a handler does: JSON(&v), after IsJSON if the content type matters.
type DeadLetterEntry struct {
	// ID is the DLQ entry id, what RequeueDeadLetters and DeleteDeadLetters take.
	ID string
	// OriginalMessageID is the id it had in its queue ("" when LeanMQ dead-lettered it).
	OriginalMessageID string
	Path              string
	Payload           []byte
	ContentType       string
	// Headers is never nil.
	Headers map[string]string
	// Attempts is the attempt count of the last failure.
	Attempts   int
	LastReason string
	// Failures lists every failure, oldest first.
	Failures      []Failure
	FirstFailedAt time.Time
	LastFailedAt  time.Time
}

// IsJSON reports whether the content type is application/json.
func (e *DeadLetterEntry) IsJSON() bool { return isJSONContentType(e.ContentType) }

// JSON decodes the payload into v with encoding/json, as Delivery.JSON does.
func (e *DeadLetterEntry) JSON(v any) error {
	if err := json.Unmarshal(e.Payload, v); err != nil {
		return &PayloadError{MessageID: e.ID, ContentType: e.ContentType, Err: err}
	}
	return nil
}

// Requeued is one requeued dead letter.
type Requeued struct {
	DeadLetterID string
	// MessageID is its new entry id in the queue.
	MessageID string
}

// RequeueResult is what RequeueDeadLetters did.
type RequeueResult struct {
	Requeued []Requeued
	// Missing lists requested ids that were not in the DLQ (already
	// requeued or deleted).
	Missing []string
}

// Selection chooses the dead letters RequeueDeadLetters moves: ByIDs,
// AllDeadLetters or FailedSince.
type Selection struct {
	ids   []string
	all   bool
	since time.Time
}

// ByIDs selects these DLQ entry ids.
func ByIDs(ids ...string) Selection { return Selection{ids: ids} }

// AllDeadLetters selects every dead letter of the queue.
func AllDeadLetters() Selection { return Selection{all: true} }

// FailedSince selects the dead letters that failed at or after t.
func FailedSince(t time.Time) Selection { return Selection{since: t} }

// ListOption configures ListDeadLetters.
type ListOption func(*listConfig)

type listConfig struct {
	pageSize int
	limit    int // < 0: no limit
}

// PageSize sets how many dead letters one call fetches (1 to MaxPageSize,
// default DefaultPageSize).
func PageSize(n int) ListOption { return func(c *listConfig) { c.pageSize = n } }

// Limit stops ListDeadLetters after n dead letters (default: all of them).
func Limit(n int) ListOption { return func(c *listConfig) { c.limit = n } }

// queuePage is how many queues ListQueues asks for per page (the server's largest).
const queuePage = 1000

// ListQueues returns every queue in the registry that the token's admin
// grant covers, in name order, following the server's pages.
func (a *Admin) ListQueues(ctx context.Context) ([]QueueSummary, error) {
	var out []QueueSummary
	token := ""
	for {
		resp, err := a.rpc.ListQueues(ctx, &pb.ListQueuesRequest{PageSize: queuePage, PageToken: token})
		if err != nil {
			return nil, fmt.Errorf("leanmq: list queues: %w", err)
		}
		for _, q := range resp.GetQueues() {
			out = append(out, QueueSummary{
				Queue: q.GetQueue(), Stream: q.GetStream(), Length: q.GetLength(),
				DeadLetters: q.GetDeadLetters(), Paths: q.GetPaths(),
			})
		}
		token = resp.GetNextPageToken()
		if token == "" {
			return out, nil
		}
	}
}

// GetQueue returns one queue, named by path ("/order/status/") or queue
// name ("order_status"). A queue that does not exist is codes.NotFound.
func (a *Admin) GetQueue(ctx context.Context, path string) (*QueueInfo, error) {
	m, err := a.rpc.GetQueue(ctx, &pb.GetQueueRequest{Path: path})
	if err != nil {
		return nil, fmt.Errorf("leanmq: get queue %s: %w", path, err)
	}
	info := &QueueInfo{
		Queue: m.GetQueue(), Stream: m.GetStream(), Length: m.GetLength(),
		DeadLetters: m.GetDeadLetters(), Scheduled: m.GetScheduled(), Delayed: m.GetDelayed(),
		Expired: m.GetExpired(), Dropped: m.GetDropped(), CreatedAt: timeOf(m.GetCreatedAt()),
		Groups: make([]GroupInfo, 0, len(m.GetGroups())),
	}
	for _, g := range m.GetGroups() {
		gi := GroupInfo{
			Name: g.GetName(), Pending: g.GetPending(), Consumers: g.GetConsumers(), Lag: g.GetLag(),
			Retrying: g.GetRetrying(), LastDeliveredID: g.GetLastDeliveredId(),
		}
		if d := g.GetOldestUnackedAge(); d != nil {
			gi.OldestUnackedAge = d.AsDuration()
		}
		info.Groups = append(info.Groups, gi)
	}
	return info, nil
}

// ListDeadLetters yields the queue's dead letters, oldest first, fetching
// a page at a time (PageSize) until the last page or Limit. An error is
// yielded once, last:
//
//	for dl, err := range admin.ListDeadLetters(ctx, "/order/status/") {
//		if err != nil { return err }
//		fmt.Println(dl.ID, dl.LastReason)
//	}
func (a *Admin) ListDeadLetters(ctx context.Context, path string, opts ...ListOption) iter.Seq2[*DeadLetterEntry, error] {
	cfg := listConfig{pageSize: DefaultPageSize, limit: -1}
	for _, o := range opts {
		o(&cfg)
	}
	return func(yield func(*DeadLetterEntry, error) bool) {
		if cfg.pageSize < 1 || cfg.pageSize > MaxPageSize {
			yield(nil, fmt.Errorf("leanmq: list dead letters: page size %d is not between 1 and %d", cfg.pageSize, MaxPageSize))
			return
		}
		seen, token := 0, ""
		for cfg.limit < 0 || seen < cfg.limit {
			size := cfg.pageSize
			if cfg.limit >= 0 {
				size = min(size, cfg.limit-seen)
			}
			resp, err := a.rpc.ListDeadLetters(ctx, &pb.ListDeadLettersRequest{
				Path: path, PageSize: uint32(size), PageToken: token,
			})
			if err != nil {
				yield(nil, fmt.Errorf("leanmq: list dead letters of %s: %w", path, err))
				return
			}
			for _, m := range resp.GetDeadLetters() {
				if cfg.limit >= 0 && seen >= cfg.limit {
					return
				}
				seen++
				if !yield(deadLetterEntry(m), nil) {
					return
				}
			}
			if token = resp.GetNextPageToken(); token == "" {
				return
			}
		}
	}
}

// RequeueDeadLetters moves the selected dead letters back to their queue,
// each atomically; attempts start again at 1. ID lists longer than the
// broker's 1000 per call are sent in several calls.
func (a *Admin) RequeueDeadLetters(ctx context.Context, path string, sel Selection) (*RequeueResult, error) {
	var reqs []*pb.RequeueDeadLettersRequest
	chosen := 0
	if sel.ids != nil {
		chosen++
	}
	if sel.all {
		chosen++
	}
	if !sel.since.IsZero() {
		chosen++
	}
	switch {
	case chosen != 1:
		return nil, errors.New("leanmq: requeue dead letters: select with exactly one of ByIDs, AllDeadLetters or FailedSince")
	case sel.ids != nil:
		if err := checkIDs(sel.ids); err != nil {
			return nil, fmt.Errorf("leanmq: requeue dead letters: %w", err)
		}
		for _, c := range chunk(sel.ids) {
			reqs = append(reqs, &pb.RequeueDeadLettersRequest{Path: path, Selector: &pb.RequeueDeadLettersRequest_Ids{Ids: &pb.DeadLetterIds{Ids: c}}})
		}
	case sel.all:
		reqs = append(reqs, &pb.RequeueDeadLettersRequest{Path: path, Selector: &pb.RequeueDeadLettersRequest_All{All: true}})
	default:
		reqs = append(reqs, &pb.RequeueDeadLettersRequest{Path: path, Selector: &pb.RequeueDeadLettersRequest_Since{Since: timestamppb.New(sel.since)}})
	}
	out := &RequeueResult{Requeued: []Requeued{}, Missing: []string{}}
	for _, r := range reqs {
		resp, err := a.rpc.RequeueDeadLetters(ctx, r)
		if err != nil {
			return out, fmt.Errorf("leanmq: requeue dead letters of %s: %w", path, err)
		}
		for _, q := range resp.GetRequeued() {
			out.Requeued = append(out.Requeued, Requeued{DeadLetterID: q.GetDeadLetterId(), MessageID: q.GetMessageId()})
		}
		out.Missing = append(out.Missing, resp.GetMissing()...)
	}
	return out, nil
}

// DeleteDeadLetters deletes the given dead letters and returns how many
// existed.
func (a *Admin) DeleteDeadLetters(ctx context.Context, path string, ids []string) (int64, error) {
	if err := checkIDs(ids); err != nil {
		return 0, fmt.Errorf("leanmq: delete dead letters: %w", err)
	}
	var deleted int64
	for _, c := range chunk(ids) {
		resp, err := a.rpc.DeleteDeadLetters(ctx, &pb.DeleteDeadLettersRequest{Path: path, Ids: c})
		if err != nil {
			return deleted, fmt.Errorf("leanmq: delete dead letters of %s: %w", path, err)
		}
		deleted += resp.GetDeleted()
	}
	return deleted, nil
}

// PurgeDeadLetters deletes every dead letter of the queue and returns how many.
func (a *Admin) PurgeDeadLetters(ctx context.Context, path string) (int64, error) {
	resp, err := a.rpc.PurgeDeadLetters(ctx, &pb.PurgeDeadLettersRequest{Path: path})
	if err != nil {
		return 0, fmt.Errorf("leanmq: purge dead letters of %s: %w", path, err)
	}
	return resp.GetPurged(), nil
}

// PurgeQueue deletes every message of the queue, delivered or not, and its
// schedules; its groups remain. confirm must be the queue name
// ("order_status" for "/order/status/"), else codes.InvalidArgument.
func (a *Admin) PurgeQueue(ctx context.Context, path, confirm string) (int64, error) {
	resp, err := a.rpc.PurgeQueue(ctx, &pb.PurgeQueueRequest{Path: path, Confirm: confirm})
	if err != nil {
		return 0, fmt.Errorf("leanmq: purge queue %s: %w", path, err)
	}
	return resp.GetPurged(), nil
}

// DeleteQueue deletes the queue, its groups, schedules and metadata, and
// with withDLQ its dead letters too. confirm as for PurgeQueue. It returns
// the number of messages deleted.
func (a *Admin) DeleteQueue(ctx context.Context, path, confirm string, withDLQ bool) (int64, error) {
	resp, err := a.rpc.DeleteQueue(ctx, &pb.DeleteQueueRequest{Path: path, Confirm: confirm, WithDlq: withDLQ})
	if err != nil {
		return 0, fmt.Errorf("leanmq: delete queue %s: %w", path, err)
	}
	return resp.GetDeletedMessages(), nil
}

func deadLetterEntry(m *pb.DeadLetter) *DeadLetterEntry {
	e := &DeadLetterEntry{
		ID: m.GetId(), OriginalMessageID: m.GetOriginalMessageId(), Path: m.GetPath(),
		Payload: m.GetPayload(), ContentType: m.GetContentType(), Headers: m.GetHeaders(),
		Attempts: int(m.GetAttempts()), LastReason: m.GetLastReason(),
		FirstFailedAt: timeOf(m.GetFirstFailedAt()), LastFailedAt: timeOf(m.GetLastFailedAt()),
		Failures: make([]Failure, 0, len(m.GetFailures())),
	}
	if e.Headers == nil {
		e.Headers = map[string]string{}
	}
	if e.Payload == nil {
		e.Payload = []byte{}
	}
	for _, f := range m.GetFailures() {
		e.Failures = append(e.Failures, Failure{At: timeOf(f.GetAt()), Reason: f.GetReason(), Attempts: int(f.GetAttempts()), Group: f.GetGroup()})
	}
	return e
}

func timeOf(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

func checkIDs(ids []string) error {
	if len(ids) == 0 {
		return errors.New("no ids given")
	}
	for _, id := range ids {
		if id == "" {
			return errors.New("an id is empty")
		}
	}
	return nil
}

func chunk(ids []string) [][]string {
	var out [][]string
	for len(ids) > maxIDsPerCall {
		out = append(out, ids[:maxIDsPerCall])
		ids = ids[maxIDsPerCall:]
	}
	return append(out, ids)
}
