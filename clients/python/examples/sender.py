"""Send the LeanMQ webhook guide's events to a local leanmqd.

    clients/python/.venv/bin/python clients/python/examples/sender.py
    # or: python clients/python/examples/sender.py --target HOST:PORT
"""
import argparse
import time

from leanmq_grpc import Webhook


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051", help="leanmqd address (default %(default)s)")
    args = parser.parse_args()

    with Webhook(args.target) as webhook:
        # Send an order status update
        order_id = webhook.send(
            "/order/status/",
            {"order_id": "ORD-12345", "status": "shipped", "updated_at": time.time()},
        )
        print(f"sent order status update: {order_id}")

        # Send an inventory update
        inventory_id = webhook.send(
            "/product/inventory/",
            {"product_id": "PROD-789", "name": "Wireless Headphones", "quantity": 5, "updated_at": time.time()},
        )
        print(f"sent inventory update: {inventory_id}")

        # Several at once, atomically
        ids = webhook.send_batch(
            [
                ("/order/status/", {"order_id": "ORD-12346", "status": "processing"}),
                ("/order/status/", {"order_id": "ORD-12347", "status": "shipped"}),
                ("/product/inventory/", {"product_id": "PROD-790", "quantity": 42}),
            ]
        )
        print(f"sent batch: {', '.join(ids)}")


if __name__ == "__main__":
    main()
