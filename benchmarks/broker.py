"""A vhost of its own on the local RabbitMQ broker for one benchmark run (the test command starts the broker)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

RABBITMQCTL_TIMEOUT_S = 60


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=RABBITMQCTL_TIMEOUT_S)


@contextmanager
def broker_vhost(prefix: str = "orch-bench") -> Iterator[str]:
    """The AMQP URL of a fresh vhost, deleted afterwards."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)
