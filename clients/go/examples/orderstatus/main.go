// Command orderstatus is LeanMQ's webhook guide example in Go: handlers for
// "/order/status/" and "/product/inventory/", run until Ctrl-C.
//
//	go run ./examples/orderstatus            # against 127.0.0.1:50051
//	go run ./examples/orderstatus -target host:port
//
// Send it some events with `go run ./examples/sender`.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	leanmq "github.com/leanmq/leanmq-grpc/clients/go"
)

// OrderStatus is the payload sent to /order/status/.
type OrderStatus struct {
	OrderID   string  `json:"order_id"`
	Status    string  `json:"status"`
	UpdatedAt float64 `json:"updated_at"`
}

// InventoryUpdate is the payload sent to /product/inventory/.
type InventoryUpdate struct {
	ProductID string  `json:"product_id"`
	Name      string  `json:"name"`
	Quantity  int     `json:"quantity"`
	UpdatedAt float64 `json:"updated_at"`
}

// processOrderStatus processes order status updates.
func processOrderStatus(ctx context.Context, d *leanmq.Delivery) error {
	var data OrderStatus
	if err := d.JSON(&data); err != nil {
		return leanmq.DeadLetter(err) // malformed: retrying will not help
	}
	fmt.Printf("Order %s status updated to: %s\n", data.OrderID, data.Status)

	// Your business logic here...
	if data.Status == "shipped" {
		return sendShippingNotification(ctx, data.OrderID)
	}
	return nil
}

// processInventoryUpdate processes inventory updates.
func processInventoryUpdate(ctx context.Context, d *leanmq.Delivery) error {
	var data InventoryUpdate
	if err := d.JSON(&data); err != nil {
		return leanmq.DeadLetter(err)
	}
	fmt.Printf("Product %s inventory updated to: %d\n", data.ProductID, data.Quantity)

	// Your business logic here...
	if data.Quantity < 10 {
		return triggerRestockAlert(ctx, data.ProductID)
	}
	return nil
}

func sendShippingNotification(_ context.Context, orderID string) error {
	fmt.Printf("  -> shipping notification sent for %s\n", orderID)
	return nil // a returned error would nack the message: it is retried, then dead-lettered
}

func triggerRestockAlert(_ context.Context, productID string) error {
	fmt.Printf("  -> restock alert for %s\n", productID)
	return nil
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "leanmqd address")
	flag.Parse()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	client, err := leanmq.Dial(*target,
		leanmq.WithConcurrency(10),            // like LeanMQ's process_count
		leanmq.WithStopTimeout(5*time.Second), // like worker_thread_timeout
		leanmq.WithLogger(logger),
		leanmq.WithOnSubscribed(func(path string) { logger.Info("subscribed", "path", path) }),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	client.Handle("/order/status/", processOrderStatus)
	client.Handle("/product/inventory/", processInventoryUpdate)

	// Like run_service(handle_signals=True): SIGINT/SIGTERM stop gracefully.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Printf("Handling /order/status/ and /product/inventory/ on %s; Ctrl-C to stop\n", *target)
	if err := client.Run(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("Shutting down...")
}
