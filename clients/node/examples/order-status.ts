// LeanMQ's webhook guide, ported: handlers for /order/status/ and
// /product/inventory/, run until Ctrl-C (SIGINT) or SIGTERM.
//
//   npm run example:order-status            # against 127.0.0.1:50051
//   LEANMQ_TARGET=host:port npm run example:order-status
import { DeadLetterError, RetryAfterError, Webhook } from "leanmq-grpc";

const target = process.env.LEANMQ_TARGET ?? "127.0.0.1:50051";

interface OrderStatus {
  order_id: string;
  status: string;
  updated_at?: number;
}

interface InventoryUpdate {
  product_id: string;
  name?: string;
  quantity: number;
  updated_at?: number;
}

// Stand-ins for your business logic.
class TemporaryError extends Error {}
async function sendShippingNotification(orderId: string): Promise<void> {
  console.log(`  -> shipping notification sent for ${orderId}`);
}
async function triggerRestockAlert(productId: string): Promise<void> {
  console.log(`  -> restock alert for ${productId}`);
}

const webhook = new Webhook(target, {
  concurrency: 10, // at most 10 handlers at once per path
  ackDeadlineMs: 30_000, // the lease; extended for you while a handler runs
});

webhook.get("/order/status/", async (data: OrderStatus, delivery) => {
  // Process order status updates.
  const { order_id, status } = data;
  if (!order_id) {
    // Retrying cannot fix this message: straight to the dead-letter queue.
    throw new DeadLetterError("order status update without order_id");
  }
  console.log(`Order ${order_id} status updated to: ${status} (attempt ${delivery.attempt})`);

  // Your business logic here...
  if (status === "shipped") {
    try {
      await sendShippingNotification(order_id);
    } catch (err) {
      if (err instanceof TemporaryError) throw new RetryAfterError(10_000, `notification service down: ${err.message}`);
      throw err; // anything else: Nack, retried with backoff, then the DLQ
    }
  }
  // Returning acks the message.
});

webhook.get("/product/inventory/", async (data: InventoryUpdate) => {
  // Process inventory updates.
  const { product_id, quantity } = data;
  console.log(`Product ${product_id} inventory updated to: ${quantity}`);

  // Your business logic here...
  if (quantity < 10) {
    await triggerRestockAlert(product_id);
  }
});

webhook.on("subscribed", (path: string) => console.log(`listening on ${path} at ${target}`));
webhook.on("reconnecting", ({ path, error, delayMs }: { path: string; error?: Error; delayMs: number }) =>
  console.warn(`stream for ${path} broke (${error?.message ?? "ended"}); reconnecting in ${delayMs} ms`),
);

async function main(): Promise<void> {
  // Graceful shutdown on SIGINT / SIGTERM: stop taking messages, let running
  // handlers finish (up to 5 s), nack the rest.
  const shutdown = new AbortController();
  process.once("SIGINT", () => shutdown.abort());
  process.once("SIGTERM", () => shutdown.abort());
  try {
    await webhook.run({ signal: shutdown.signal, stopTimeoutMs: 5_000 });
    console.log("Shutting down...");
  } finally {
    await webhook.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
