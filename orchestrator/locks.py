"""Leases in MongoDB: an operation holds its target's lock while it runs."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pymongo.errors import DuplicateKeyError

from orchestrator.models import Lock, utcnow


def acquire(key: str, holder: str, lease_s: int) -> bool:
    """Take (or renew) the lock for `holder`; False while someone else holds an unexpired lease."""
    now = utcnow()
    try:
        Lock._get_collection().update_one(
            {"_id": key, "$or": [{"expires_at": {"$lt": now}}, {"holder": holder}]},
            {"$set": {"holder": holder, "expires_at": now + dt.timedelta(seconds=lease_s)}},
            upsert=True,
        )
    except DuplicateKeyError:
        # The upsert tried to insert a second document with this key: held by another.
        return False
    return True


def release(key: str, holder: str) -> None:
    Lock._get_collection().delete_one({"_id": key, "holder": holder})


# A lease is renewed this many times per lease period, so one late renewal does not lose it.
RENEWALS_PER_LEASE = 3


@contextmanager
def renewed(renew: Callable[[], None], lease_s: int, thread_name: str) -> Iterator[None]:
    """Call `renew` in a background thread every lease_s / RENEWALS_PER_LEASE (at least 1 s) until the block ends."""
    done = threading.Event()
    interval_s = max(1.0, lease_s / RENEWALS_PER_LEASE)

    def loop() -> None:
        while not done.wait(interval_s):
            renew()

    thread = threading.Thread(target=loop, name=thread_name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
