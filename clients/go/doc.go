// Package leanmq is the Go client of leanmq-grpc: LeanMQ's webhook pattern
// (send to a path, handle per path, dead-letter on failure) over the Broker
// gRPC service of leanmqd.
//
// Register one handler per webhook path and run them:
//
//	client, err := leanmq.Dial("127.0.0.1:50051", leanmq.WithConcurrency(8))
//	if err != nil { ... }
//	defer client.Close()
//
//	client.Handle("/order/status/", func(ctx context.Context, d *leanmq.Delivery) error {
//		var order struct {
//			OrderID string `json:"order_id"`
//			Status  string `json:"status"`
//		}
//		if err := d.JSON(&order); err != nil {
//			return leanmq.DeadLetter(err) // malformed: retrying will not help
//		}
//		return process(ctx, order)
//	})
//
//	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
//	defer stop()
//	err = client.Run(ctx) // returns after a graceful stop
//
// and send to a path from anywhere:
//
//	id, err := client.Send(ctx, "/order/status/", map[string]any{"order_id": "ORD-12345", "status": "shipped"})
//
// # Administration
//
// client.Admin() (or NewAdmin on any connection) inspects queues and
// repairs dead-letter queues over the same connection and token:
//
//	for dl, err := range client.Admin().ListDeadLetters(ctx, "/order/status/") {
//		if err != nil { ... }
//		fmt.Println(dl.ID, dl.LastReason)
//	}
//	res, err := client.Admin().RequeueDeadLetters(ctx, "/order/status/", leanmq.AllDeadLetters())
//
// # Handler outcomes
//
// What the handler returns decides how the delivery is settled:
//
//	nil                              Ack: the message is done
//	DeadLetter(err or reason)        Nack{dead_letter, reason: error text}: straight to the DLQ
//	RetryAfter(d)                    Nack{delay: d}: redelivered after d
//	any other error (or a panic)     Nack: retried with the broker's backoff, DLQ after max attempts
//
// Wrapped errors work (errors.As is used), so fmt.Errorf("charge: %w",
// leanmq.DeadLetter(err)) dead-letters with reason "charge: ...".
//
// # Runtime behaviour
//
// Per path, at most the configured concurrency of handlers run at once (also
// sent to the broker as max_in_flight). While a handler runs its lease is
// extended at about half the ack deadline. When a Subscribe stream breaks
// it is reopened with exponential backoff (100 ms doubling to 5 s, with
// jitter). When Run's context is cancelled the client stops taking new
// deliveries, waits up to the stop timeout for running handlers, and nacks
// those that did not finish.
package leanmq
