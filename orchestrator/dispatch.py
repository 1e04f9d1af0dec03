"""Handing operations to workers: RabbitMQ (pika) or an in-process pool.

MongoDB stays the source of truth either way: a message carries only an
operation id, and anything lost here is found again by worker.recover().
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pika
from pika.exceptions import AMQPError

from orchestrator.worker import Outcome, Worker

log = logging.getLogger("orch.dispatch")

QUEUE = "orch.operations"
DEFER_DELAY_S = 0.5


class InProcessDispatcher:
    """Runs operations on a bounded thread pool inside the service process."""

    def __init__(self, worker: Worker, max_parallel: int):
        self.worker = worker
        self.pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="op")
        self._closed = False

    def dispatch(self, op_id: str) -> bool:
        if self._closed:
            return False
        self.pool.submit(self._run, op_id)
        return True

    def _run(self, op_id: str) -> None:
        try:
            outcome = self.worker.run(op_id)
        except Exception:  # keep the pool alive; recover() picks the operation up again
            log.exception("operation %s crashed its worker thread", op_id)
            return
        if outcome is Outcome.DEFERRED and not self._closed:
            timer = threading.Timer(DEFER_DELAY_S, self.dispatch, args=(op_id,))
            timer.daemon = True
            timer.start()

    def close(self) -> None:
        self._closed = True
        self.pool.shutdown(wait=False, cancel_futures=True)

    def ping(self) -> bool:
        return not self._closed


def _declare(channel) -> None:
    channel.queue_declare(QUEUE, durable=True)


class AmqpPublisher:
    """Publishes operation ids: durable queue, persistent messages, publisher confirms."""

    def __init__(self, url: str):
        self.url = url
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._channel = None

    def _open(self):
        if self._connection is None or self._connection.is_closed:
            params = pika.URLParameters(self.url)
            params.socket_timeout = 5
            params.blocked_connection_timeout = 10
            self._connection = pika.BlockingConnection(params)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
            _declare(self._channel)
        return self._channel

    def dispatch(self, op_id: str) -> bool:
        """True when the broker confirmed the message; False leaves the operation for recover()."""
        with self._lock:
            try:
                channel = self._open()
                channel.basic_publish(
                    "",
                    QUEUE,
                    op_id.encode(),
                    pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, content_type="text/plain"),
                    mandatory=True,
                )
                return True
            except (AMQPError, OSError) as error:
                log.warning("could not publish operation %s (%s); it stays queued and is retried", op_id, error)
                self._reset()
                return False

    def _reset(self) -> None:
        try:
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
        except (AMQPError, OSError):
            pass
        self._connection = None
        self._channel = None

    def ping(self) -> bool:
        with self._lock:
            try:
                self._open()
                self._connection.process_data_events(0)
                return True
            except (AMQPError, OSError):
                self._reset()
                return False

    def close(self) -> None:
        with self._lock:
            self._reset()


class AmqpConsumer:
    """`orch worker`: consumes operation ids, runs them on a pool, acks when they finish."""

    def __init__(self, url: str, worker: Worker, max_parallel: int):
        self.url = url
        self.worker = worker
        self.max_parallel = max_parallel
        self.pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="op")
        self._stop = threading.Event()
        self._connection: pika.BlockingConnection | None = None

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except (AMQPError, OSError) as error:
                if self._stop.is_set():
                    break
                log.warning("broker connection lost (%s); reconnecting in 2 s", error)
                time.sleep(2)

    def _consume(self) -> None:
        params = pika.URLParameters(self.url)
        params.heartbeat = 30
        self._connection = connection = pika.BlockingConnection(params)
        channel = connection.channel()
        _declare(channel)
        # Bounded prefetch: a worker holds no more messages than it can run.
        channel.basic_qos(prefetch_count=self.max_parallel)

        def on_message(ch, method, properties, body) -> None:
            self.pool.submit(self._handle, connection, ch, method.delivery_tag, body.decode(errors="replace"))

        channel.basic_consume(QUEUE, on_message)
        log.info("worker consuming %s", QUEUE)
        while not self._stop.is_set():
            connection.process_data_events(time_limit=1)
        connection.close()

    def _handle(self, connection, channel, delivery_tag: int, op_id: str) -> None:
        try:
            outcome = self.worker.run(op_id)
        except Exception:  # ack anyway: recover() re-dispatches it from MongoDB
            log.exception("operation %s crashed its worker thread", op_id)
            outcome = Outcome.DONE
        if outcome is Outcome.DEFERRED:
            time.sleep(DEFER_DELAY_S)
            settle = lambda: channel.basic_nack(delivery_tag, requeue=True)  # noqa: E731
        else:
            # Manual ack only after the operation finished.
            settle = lambda: channel.basic_ack(delivery_tag)  # noqa: E731
        try:
            connection.add_callback_threadsafe(settle)
        except (AMQPError, OSError):
            pass  # the connection is gone; the broker redelivers and the claim drops duplicates

    def stop(self) -> None:
        self._stop.set()
