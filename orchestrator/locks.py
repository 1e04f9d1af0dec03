"""Leases in MongoDB: an operation holds its target's lock while it runs."""

from __future__ import annotations

import datetime as dt

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
