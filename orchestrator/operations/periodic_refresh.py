"""The periodic refresh (ORCH_REFRESH_INTERVAL_S; 0, the default, is off): drift detection on a timer.

Each pass requests a refresh operation of at most MAX_REFRESHES_PER_PASS instances whose last
periodic request is older than the interval (oldest first), skipping any with an operation queued or
running. Several service processes may run it: each instance is claimed with a conditional update
of its `refresh_requested_at`, so only one process requests a given refresh.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from orchestrator.models import Instance, Operation, utcnow
from orchestrator.services import REFRESHABLE_STATUSES, Orchestrator

log = logging.getLogger("orch.refresh")

# Bounds on one pass: refreshes requested, and instances looked at to find them.
MAX_REFRESHES_PER_PASS = 10
MAX_CANDIDATES_PER_PASS = 100
# Who the operations say asked for them.
REQUESTED_BY = "orch:periodic-refresh"


def run_pass(orchestrator: Orchestrator, interval_s: int, now: dt.datetime | None = None) -> int:
    """Request the refreshes that are due; returns how many were requested."""
    now = now or utcnow()
    due_before = now - dt.timedelta(seconds=interval_s)
    candidates = (
        Instance.objects(status__in=REFRESHABLE_STATUSES)
        .filter(__raw__={"$or": [{"refresh_requested_at": None}, {"refresh_requested_at": {"$lt": due_before}}]})
        .order_by("refresh_requested_at", "_id")
        .limit(MAX_CANDIDATES_PER_PASS)
    )
    requested = 0
    for instance in candidates:
        if requested >= MAX_REFRESHES_PER_PASS:
            break
        if Operation.objects(lock_key=instance.lock_key, status__in=("queued", "running")).first() is not None:
            continue  # busy: it is looked at again on a later pass
        claimed = Instance.objects(
            id=instance.id, refresh_requested_at=instance.refresh_requested_at, status__in=REFRESHABLE_STATUSES
        ).modify(set__refresh_requested_at=now, new=True)
        if claimed is None:  # another process took it, or it changed meanwhile
            continue
        orchestrator.request_refresh(REQUESTED_BY, claimed)
        requested += 1
    return requested


class PeriodicRefresh:
    """A thread that runs a pass about every interval / 10 (at least every second, at most every minute)."""

    def __init__(self, orchestrator: Orchestrator, interval_s: int):
        self.orchestrator = orchestrator
        self.interval_s = interval_s
        self.tick_s = min(max(interval_s / 10, 1.0), 60.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="periodic-refresh", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                count = run_pass(self.orchestrator, self.interval_s)
                if count:
                    log.info("periodic refresh: %d refresh(es) requested", count)
            except Exception:  # a pass that fails is tried again on the next tick
                log.exception("periodic refresh pass failed")

    def stop(self) -> None:
        self._stop.set()
