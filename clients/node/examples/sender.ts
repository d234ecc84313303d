// Sends the webhook guide's two events, one order status update and one
// inventory update, then exits.
//
//   npm run example:sender                  # against 127.0.0.1:50051
//   LEANMQ_TARGET=host:port npm run example:sender
import { Webhook } from "leanmq-grpc";

const target = process.env.LEANMQ_TARGET ?? "127.0.0.1:50051";

async function main(): Promise<void> {
  const webhook = new Webhook(target);
  try {
    // Send an order status update
    const orderId = await webhook.send("/order/status/", {
      order_id: "ORD-12345",
      status: "shipped",
      updated_at: Date.now() / 1000,
    });
    console.log(`sent order status update: ${orderId}`);

    // Send an inventory update
    const inventoryId = await webhook.send("/product/inventory/", {
      product_id: "PROD-789",
      name: "Wireless Headphones",
      quantity: 5,
      updated_at: Date.now() / 1000,
    });
    console.log(`sent inventory update: ${inventoryId}`);

    // Several at once, atomically, with an application header.
    const ids = await webhook.sendBatch([
      { path: "/order/status/", data: { order_id: "ORD-12346", status: "paid" }, headers: { "x-source": "sender-example" } },
      { path: "/order/status/", data: { order_id: "ORD-12347", status: "shipped" }, headers: { "x-source": "sender-example" } },
    ]);
    console.log(`sent batch: ${ids.join(", ")}`);
  } finally {
    await webhook.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
