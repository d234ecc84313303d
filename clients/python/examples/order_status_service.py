"""The LeanMQ webhook guide's order-status service, on leanmq-grpc.

Run against a local leanmqd (default 127.0.0.1:50051):

    clients/python/.venv/bin/python clients/python/examples/order_status_service.py
    # or: python clients/python/examples/order_status_service.py --target HOST:PORT

Stop with Ctrl-C (or SIGTERM): the service stops taking messages, lets
running handlers finish (up to 5 s) and nacks the rest.
"""
import argparse
import logging
import time

from leanmq_grpc import DeadLetter, Webhook

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def send_shipping_notification(order_id):
    print(f"  -> shipping notification sent for {order_id}")


def trigger_restock_alert(product_id):
    print(f"  -> restock alert for {product_id}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051", help="leanmqd address (default %(default)s)")
    args = parser.parse_args()

    webhook = Webhook(args.target, concurrency=10, ack_deadline=30)

    @webhook.get("/order/status/")
    def process_order_status(data):
        """Process order status updates."""
        order_id = data.get("order_id")
        status = data.get("status")
        if not order_id:
            # Never going to work: straight to the dead-letter queue.
            raise DeadLetter("order status update without order_id")
        print(f"Order {order_id} status updated to: {status}")
        if status == "shipped":
            send_shipping_notification(order_id)

    @webhook.get("/product/inventory/")
    def process_inventory_update(data):
        """Process inventory updates."""
        product_id = data.get("product_id")
        quantity = data.get("quantity")
        print(f"Product {product_id} inventory updated to: {quantity}")
        if quantity is not None and quantity < 10:
            trigger_restock_alert(product_id)

    service = webhook.run_service(handle_signals=True, worker_thread_timeout=5)
    print(f"Listening on /order/status/ and /product/inventory/ via {args.target} (Ctrl-C to stop)")
    try:
        while service.is_alive():
            time.sleep(1)
    except KeyboardInterrupt:
        print("Shutting down...")
    finally:
        service.stop()
        webhook.close()
    if service.error is not None:
        raise SystemExit(f"service failed: {service.error}")


if __name__ == "__main__":
    main()
