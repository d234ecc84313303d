// Command sender sends LeanMQ's webhook guide events: an order status update
// and an inventory update.
//
//	go run ./examples/sender                 # against 127.0.0.1:50051
//	go run ./examples/sender -target host:port
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	leanmq "github.com/leanmq/leanmq-grpc/clients/go"
)

func now() float64 { return float64(time.Now().UnixNano()) / 1e9 }

func main() {
	target := flag.String("target", "127.0.0.1:50051", "leanmqd address")
	flag.Parse()

	client, err := leanmq.Dial(*target)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Send an order status update (a map is sent as application/json).
	id, err := client.Send(ctx, "/order/status/", map[string]any{
		"order_id":   "ORD-12345",
		"status":     "shipped",
		"updated_at": now(),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("order status sent:", id)

	// Send an inventory update.
	id, err = client.Send(ctx, "/product/inventory/", map[string]any{
		"product_id": "PROD-789",
		"name":       "Wireless Headphones",
		"quantity":   5,
		"updated_at": now(),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("inventory update sent:", id)

	// Several at once, atomically.
	ids, err := client.SendBatch(ctx, []leanmq.Message{
		{Path: "/order/status/", Payload: map[string]any{"order_id": "ORD-12346", "status": "paid", "updated_at": now()}},
		{Path: "/product/inventory/", Payload: map[string]any{"product_id": "PROD-790", "name": "USB-C Cable", "quantity": 42, "updated_at": now()}},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("batch sent:", ids)
}
