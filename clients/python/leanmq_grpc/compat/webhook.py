"""LeanMQ 0.2.0's webhook API (``LeanMQWebhook``, ``WebhookService``,
``WebhookRoute``) on leanmqd.

Differences from LeanMQ, also in the README's table:
- a handler that raises is retried with the broker's backoff and
  dead-lettered after its last attempt (leanmqd ``--max-attempts``, default
  5). LeanMQ dead-letters at once; to get that, pass
  ``retry_failures=False`` or run leanmqd with ``--max-attempts 1``;
- ``auto_start=True`` (the default) really starts processing in the
  background (LeanMQ 0.2.0 only has a TODO there). It steps aside as soon as
  the program processes by itself (``process_messages``, ``run_service`` or
  ``start_processing``), so the two never compete;
- ``start_processing`` processes until ``stop_processing`` (LeanMQ 0.2.0's
  loop returns at once from every pass, since its own flag is set).
"""
from __future__ import annotations

import functools
import logging
import signal
import threading
from typing import Any, Callable, Dict, List, Optional, TypeVar, Union, cast

from .._common import JSON_CONTENT_TYPE, normalize_path, queue_name
from .._proto.leanmq.v1 import admin_pb2, broker_pb2
from .core import LeanMQ, Queue, _encode

logger = logging.getLogger("leanmq_grpc.compat")

F = TypeVar("F", bound=Callable[..., Any])


class WebhookService:
    """Processes a webhook's messages in a background thread, as LeanMQ's.

    Attributes: ``webhook``, ``running``, ``worker_thread``.
    """

    def __init__(
        self,
        webhook: "LeanMQWebhook",
        process_count: int = 10,
        block_for_seconds: Optional[int] = 1,
        handle_signals: bool = True,
        worker_thread_timeout: int = 5,
    ) -> None:
        self.webhook = webhook
        self.process_count = process_count
        self.block_for_seconds = block_for_seconds
        self.worker_thread_timeout = worker_thread_timeout
        self.running = False
        self.worker_thread: Optional[threading.Thread] = None
        if handle_signals:
            signal.signal(signal.SIGINT, self._handle_signal)
            signal.signal(signal.SIGTERM, self._handle_signal)

    def _handle_signal(self, signum: int, frame: Any) -> None:
        logger.info(f"Received signal {signum}, shutting down...")
        self.stop()

    def _webhook_worker(self) -> None:
        logger.info("Webhook worker thread started")
        while self.running:
            try:
                processed = self.webhook._process(
                    block=bool(self.block_for_seconds),
                    timeout=self.block_for_seconds or 0,
                    count=self.process_count,
                )
                if processed > 0:
                    logger.debug(f"Processed {processed} webhook(s)")
            except Exception as e:
                logger.error(f"Error processing webhooks: {e}")
                self.webhook._idle.wait(1)
        logger.info("Webhook worker thread stopped")

    def start(self) -> None:
        if self.running:
            logger.info("Service is already running")
            return
        self.webhook._take_over()
        self.running = True
        self.worker_thread = threading.Thread(target=self._webhook_worker, daemon=True)
        self.worker_thread.start()
        logger.info("Webhook service started")

    def stop(self) -> None:
        if not self.running:
            logger.info("Service is not running")
            return
        logger.info("Stopping webhook service...")
        self.running = False
        if self.worker_thread and self.worker_thread.is_alive() and self.worker_thread is not threading.current_thread():
            self.worker_thread.join(timeout=self.worker_thread_timeout)
            if self.worker_thread.is_alive():
                logger.warning("Worker thread did not stop within the timeout period")
        logger.info("Webhook service stopped")

    def is_alive(self) -> bool:
        return self.running and bool(self.worker_thread and self.worker_thread.is_alive())


class WebhookRoute:
    """A registered handler: ``path`` (normalized), ``handler``, ``queue``."""

    def __init__(self, path: str, handler: Callable[[Dict[str, Any]], Any], queue: Queue) -> None:
        self.path = path
        self.handler = handler
        self.queue = queue


class LeanMQWebhook:
    """LeanMQ's webhook-like interface, on leanmqd. ``webhook.mq`` is a
    compat ``LeanMQ`` with the same prefix, on the same channel."""

    def __init__(
        self,
        redis_host: str = "localhost",
        redis_port: int = 6379,
        redis_db: int = 0,
        redis_password: Optional[str] = None,
        prefix: str = "webhook:",
        process_interval: int = 1,
        auto_start: bool = True,
        *,
        target: Optional[str] = None,
        token: Optional[str] = None,
        retry_failures: bool = True,
    ) -> None:
        self.mq = LeanMQ(
            redis_host=redis_host,
            redis_port=redis_port,
            redis_db=redis_db,
            redis_password=redis_password,
            prefix=prefix,
            target=target,
            token=token,
        )
        self.routes: List[WebhookRoute] = []
        self.process_interval = process_interval
        self.is_processing = False
        #: False: a failing handler's message goes to the DLQ at once, as in LeanMQ.
        self.retry_failures = retry_failures
        self._idle = threading.Event()  # set on close; waits on it end early then
        self._auto: Optional[threading.Thread] = None
        self._auto_running = False
        if auto_start:
            self._auto_running = True
            self._auto = threading.Thread(target=self._auto_loop, name="leanmq-compat-auto", daemon=True)
            self._auto.start()

    # -- the auto_start processor ------------------------------------------

    def _auto_loop(self) -> None:
        while self._auto_running and not self._idle.is_set():
            if not self.routes:
                self._idle.wait(self.process_interval or 1)
                continue
            try:
                self._process(block=True, timeout=self.process_interval or 1, count=10)
            except Exception as e:
                logger.error(f"Error processing webhooks: {e}")
                self._idle.wait(1)

    def _take_over(self) -> None:
        """The program processes by itself from now on: stop auto_start's thread."""
        if self._auto_running:
            self._auto_running = False
            if self._auto is not None and self._auto is not threading.current_thread():
                self._auto.join(timeout=(self.process_interval or 1) * max(1, len(self.routes)) + 35)

    # -- LeanMQ's API -----------------------------------------------------

    def _normalize_path(self, path: str) -> str:
        return normalize_path(path)

    def _path_to_queue_name(self, path: str) -> str:
        return queue_name(path)

    def get(self, path: str) -> Callable[[F], F]:
        """Decorator registering ``func`` as the handler of ``path``; the
        queue pair and its group are created now, as LeanMQ does."""
        normalized = self._normalize_path(path)
        q = self._path_to_queue_name(normalized)

        def decorator(func: F) -> F:
            conn = self.mq.client.conn
            conn.call(conn.admin.CreateQueue, admin_pb2.CreateQueueRequest(path=normalized, prefix=self.mq.prefix))
            main_queue, _ = self.mq._main(q), self.mq._dlq(q)
            self.routes.append(WebhookRoute(normalized, func, main_queue))

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return func(*args, **kwargs)

            return cast(F, wrapper)

        return decorator

    def send(self, path: str, data: Dict[str, Any]) -> str:
        """Send ``data`` to ``path``; returns the stream entry id."""
        conn = self.mq.client.conn
        req = broker_pb2.SendRequest(
            path=self._normalize_path(path),
            prefix=self.mq.prefix,
            payload=_encode(data),
            content_type=JSON_CONTENT_TYPE,
        )
        return conn.call(conn.broker.Send, req).message_id

    def process_messages(self, block: bool = False, timeout: int = 1, count: int = 10) -> int:
        """Handle up to ``count`` messages per route; returns how many were
        handled successfully. A failed handler's message is retried later
        (see the module doc), or dead-lettered at once with ``retry_failures=False``."""
        if self.is_processing and block:
            logger.warning("Already processing messages")
            return 0
        self._take_over()
        return self._process(block, timeout, count)

    def _process(self, block: bool, timeout: int, count: int) -> int:
        processed = 0
        for route in list(self.routes):
            try:
                messages = route.queue.get_messages(count=count, block_for_seconds=timeout if block else None)
            except Exception as e:
                logger.error(f"Error fetching messages for route {route.path}: {e}")
                continue
            for message in messages:
                try:
                    route.handler(message.data)
                except Exception as e:
                    logger.error(f"Error processing message {message.id}: {e}")
                    reason = f"Processing error: {e}"
                    if self.retry_failures:
                        route.queue._retry_later(message.id, reason)
                    else:
                        route.queue.move_to_dlq([message.id], reason, self.mq._dlq(route.queue._queue))
                    continue
                try:
                    route.queue.acknowledge_messages([message.id])
                    processed += 1
                except Exception as e:
                    logger.error(f"Error acknowledging message {message.id}: {e}")
        return processed

    def start_processing(self) -> None:
        """Process in this thread until ``stop_processing`` (or Ctrl+C)."""
        self._take_over()
        self.is_processing = True
        try:
            while self.is_processing:
                self._process(block=True, timeout=self.process_interval or 1, count=10)
                if not self.routes:
                    self._idle.wait(self.process_interval or 1)
        except KeyboardInterrupt:
            logger.info("Stopping message processing")
        finally:
            self.is_processing = False

    def stop_processing(self) -> None:
        """Stop ``start_processing`` (and auto_start's processing)."""
        self.is_processing = False
        self._auto_running = False

    def close(self) -> None:
        """Stop auto_start's processing and close the connection."""
        self._auto_running = False
        self._idle.set()
        if self._auto is not None and self._auto is not threading.current_thread():
            self._auto.join(timeout=5)
        self.mq.close()

    def __enter__(self) -> "LeanMQWebhook":
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        self.close()

    def run_service(
        self,
        process_count: int = 10,
        block_for_seconds: Optional[int] = 1,
        handle_signals: bool = True,
        worker_thread_timeout: int = 5,
        log_level: Union[int, str] = logging.INFO,
    ) -> WebhookService:
        """Start a ``WebhookService`` (background thread; SIGINT/SIGTERM stop it)."""
        logger.setLevel(log_level)
        service = WebhookService(
            webhook=self,
            process_count=process_count,
            block_for_seconds=block_for_seconds,
            handle_signals=handle_signals,
            worker_thread_timeout=worker_thread_timeout,
        )
        service.start()
        return service
