"""The periodic idle check: reads each autostop instance's reports, warns its users, then stops or deletes it.

Every `orch serve` runs one. Work per pass is bounded (MAX_INSTANCES_PER_PASS, the instances
checked longest ago first), and what changes an instance is a conditional update, so two
services on one store never both warn nor both act: the warning is taken only while none is
recorded, and the stop (or delete) only by the checker whose update still finds the instance
running with the operation it read (the claim names the new operation's id, so a crash
between the claim and recording the operation is finished by the next pass). Every write also
requires the autostop settings the check read: a user's change in between (which starts the
findings over) is never overwritten by a finding made under the old settings.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable

from bson import ObjectId
from mongoengine.errors import NotUniqueError

from orchestrator.autostop.idle import Finding, assess, span
from orchestrator.ingest import report_time
from orchestrator.metrics.store import read_samples
from orchestrator.models import Instance, Operation, utcnow
from orchestrator.settings import Settings

log = logging.getLogger("orch.autostop")

MAX_INSTANCES_PER_PASS = 200
# A gap between reports longer than this many report intervals is a missing span: not idle.
GAP_INTERVALS = 3
# Reports read per instance and pass: the window's worth at the report interval, at most this.
MAX_REPORTS_PER_CHECK = 10_000
# How often each service reads the pending notices (the agent report answers carry them).
NOTICE_REFRESH_S = 5.0
MAX_PENDING_NOTICES = 10_000
MAX_NOTICES_PER_ANSWER = 4
MAX_NOTICE_CHARS = 1024
ACTIVE_OPERATION = ("queued", "running")
REQUESTED_BY = "autostop"
# The settings a finding is made under (every one is present in a validated spec).
AUTOSTOP_KEYS = ("idle_minutes", "metric", "below_percent", "action")


def _minutes(value: float) -> str:
    return f"{value:g} min"


def reason_text(autostop: dict) -> str:
    """The instance's status_reason once autostop acts, e.g. "autostop: gpu below 5% for 60 min"."""
    return f"autostop: {autostop['metric']} below {autostop['below_percent']:g}% for {_minutes(autostop['idle_minutes'])}"


def notice_text(instance: Instance, autostop: dict, left: dt.timedelta) -> str:
    action = "stopped" if autostop["action"] == "stop" else "DELETED (its disk too)"
    measured = {"gpu": "GPU", "cpu": "CPU", "any": "CPU and GPU"}[autostop["metric"]]
    text = (
        f"orch: instance {instance.name} will be {action} in about {span(left)} by autostop: its {measured} "
        f"use has been below {autostop['below_percent']:g}% for {_minutes(autostop['idle_minutes'])} or nearly. "
        "Put it to work to keep it running."
    )
    return text[:MAX_NOTICE_CHARS]


class NoticeBoard:
    """The pending notices per instance id, read from the store every NOTICE_REFRESH_S.

    The report handler answers from it without touching the store; any service's checker
    may have recorded the notice, so each reads them back.
    """

    def __init__(self) -> None:
        self._notices: dict[str, list[dict]] = {}

    def notices_for(self, instance_id: str) -> list[dict]:
        return self._notices.get(instance_id, [])[:MAX_NOTICES_PER_ANSWER]

    def put(self, instance_id: str, notice: dict | None) -> None:
        if notice is None:
            self._notices.pop(instance_id, None)
        else:
            self._notices[instance_id] = [notice]

    def refresh(self) -> None:
        rows = Instance._get_collection().find(
            {"status": "running", "autostop_state.notice_id": {"$ne": None}},
            {"autostop_state.notice_id": True, "autostop_state.notice_message": True},
        ).limit(MAX_PENDING_NOTICES)
        notices = {}
        for row in rows:
            state = row.get("autostop_state") or {}
            if state.get("notice_id") and state.get("notice_message"):
                notices[str(row["_id"])] = [{"id": state["notice_id"], "message": state["notice_message"]}]
        self._notices = notices


class AutostopChecker:
    def __init__(
        self,
        settings: Settings,
        dispatch: Callable[[str], bool],
        *,
        notices: NoticeBoard | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ):
        self.settings = settings
        self.dispatch = dispatch
        self.notices = notices or NoticeBoard()
        self.clock = clock

    # -- one pass ----------------------------------------------------------

    def run_pass(self) -> int:
        """Check the instances checked longest ago (at most MAX_INSTANCES_PER_PASS); returns how many acted."""
        candidates = (
            Instance.objects(status="running", spec__autostop__ne=None)
            .exclude("admin_private_key", "health")
            .order_by("autostop_state.checked_at")
            .limit(MAX_INSTANCES_PER_PASS)
        )
        acted = 0
        for instance in list(candidates):
            try:
                acted += self.check(instance)
            except Exception:  # one instance's failure never stops the others' checks
                log.exception("autostop check of %s/%s failed", instance.owner, instance.name)
        return acted

    def check(self, instance: Instance) -> bool:
        """Check one instance as read (a stale read only loses the race to act); True when it acted."""
        autostop = (instance.spec or {}).get("autostop")
        if not autostop or instance.status != "running":
            return False
        now = self.clock()
        state = instance.autostop_state
        if state is not None and state.decided_at is not None and self._finish_claim(instance, autostop):
            return True
        if Operation.objects(lock_key=instance.lock_key, status__in=ACTIVE_OPERATION).only("id").first():
            self._record(instance, {"autostop_state.checked_at": now})
            return False
        window = dt.timedelta(minutes=autostop["idle_minutes"])
        finding = self._assess(instance, autostop, now, window)
        warn = dt.timedelta(seconds=self.settings.autostop_warn_s)
        idle_for = finding.idle_for(now)
        seen = {
            "autostop_state.checked_at": now,
            "autostop_state.idle_since": finding.idle_since,
            "autostop_state.warning": finding.warning,
        }
        warned_at = state.warned_at if state is not None else None
        if finding.idle_since is None or idle_for < window - warn:
            # Busy (again), or not idle for long enough to warn: a warning given is withdrawn.
            self._record(instance, {**seen, "autostop_state.warned_at": None, "autostop_state.notice_id": None,
                                    "autostop_state.notice_message": None})
            if warned_at is not None:
                self.notices.put(instance.agent_identity, None)
                log.info("autostop: %s/%s is busy again; its warning is withdrawn", instance.owner, instance.name)
            return False
        if warned_at is None:
            self._warn(instance, autostop, seen, now, max(window - idle_for, warn))
            return False
        if idle_for >= window and now >= warned_at + warn:
            return self._act(instance, autostop, now, finding)
        self._record(instance, seen)
        return False

    def _assess(self, instance: Instance, autostop: dict, now: dt.datetime, window: dt.timedelta) -> Finding:
        interval = self.settings.agent_report_interval_s
        max_gap = dt.timedelta(seconds=GAP_INTERVALS * interval)
        limit = min(MAX_REPORTS_PER_CHECK, int((window + max_gap).total_seconds() / interval) * 2 + 10)
        reports = []
        for report in read_samples(instance.agent_identity, now - window - max_gap, None, limit):
            try:
                reports.append((report_time(report["ts"]), report))
            except (KeyError, ValueError):
                continue  # stored reports were validated; one without a time cannot count either way
        reports.sort(key=lambda item: item[0])
        return assess(reports, metric=autostop["metric"], below_percent=autostop["below_percent"], now=now,
                      window=window, max_gap=max_gap, running_since=instance.running_since)

    # -- changes -----------------------------------------------------------

    @staticmethod
    def _as_read(instance: Instance, **more) -> dict:
        """The filter of a write made from this read: still running, under the same autostop settings."""
        autostop = instance.spec["autostop"]
        settings = {f"spec.autostop.{key}": autostop[key] for key in AUTOSTOP_KEYS}
        return {"_id": instance.id, "status": "running", **settings, **more}

    def _record(self, instance: Instance, fields: dict) -> None:
        Instance._get_collection().update_one(self._as_read(instance), {"$set": fields})

    def _warn(self, instance: Instance, autostop: dict, seen: dict, now: dt.datetime, left: dt.timedelta) -> None:
        notice = {"id": uuid.uuid4().hex, "message": notice_text(instance, autostop, left)}
        taken = Instance._get_collection().update_one(
            self._as_read(instance, **{"autostop_state.warned_at": None}),
            {"$set": {**seen, "autostop_state.warned_at": now, "autostop_state.notice_id": notice["id"],
                      "autostop_state.notice_message": notice["message"]}},
        )
        if taken.modified_count:
            self.notices.put(instance.agent_identity, notice)
            log.info("autostop: warned the users of %s/%s (%s)", instance.owner, instance.name, notice["message"])

    def _act(self, instance: Instance, autostop: dict, now: dt.datetime, finding: Finding) -> bool:
        """Claim the instance for the stop (or delete), then record and dispatch the operation."""
        op_id = ObjectId()
        reason = reason_text(autostop)
        changes: dict = {
            "operation_id": str(op_id),
            "status_reason": reason,
            "updated_at": now,
            "autostop_state.checked_at": now,
            "autostop_state.decided_at": now,
            "autostop_state.notice_id": None,
            "autostop_state.notice_message": None,
        }
        update: dict = {"$set": changes}
        if autostop["action"] == "stop":
            changes["spec.state"] = "stopped"
            update["$inc"] = {"generation": 1}
        claimed = Instance._get_collection().update_one(
            self._as_read(instance, operation_id=instance.operation_id, **{
                "autostop_state.decided_at": instance.autostop_state.decided_at if instance.autostop_state else None}),
            update,
        )
        if not claimed.modified_count:
            return False  # another checker acted, or the instance changed since it was read
        self.notices.put(instance.agent_identity, None)
        params = {
            "reason": REQUESTED_BY,
            "status_reason": reason,
            "metric": autostop["metric"],
            "below_percent": autostop["below_percent"],
            "idle_minutes": autostop["idle_minutes"],
            "idle_since": finding.idle_since.isoformat() + "Z" if finding.idle_since else None,
        }
        if autostop["action"] == "stop":
            params.update(previous_spec=instance.spec, generation=instance.generation + 1)
        log.info("autostop: %s %s/%s (%s)", autostop["action"], instance.owner, instance.name, reason)
        self._send(instance, op_id, autostop["action"], params)
        return True

    def _finish_claim(self, instance: Instance, autostop: dict) -> bool:
        """A claim whose operation was never recorded (the claimer died in between): record it now."""
        if not instance.operation_id or Operation.objects(id=instance.operation_id).only("id").first():
            return False
        params = {"reason": REQUESTED_BY, "status_reason": instance.status_reason or reason_text(autostop)}
        if autostop["action"] == "stop":
            params.update(previous_spec={**instance.spec, "state": "running"}, generation=instance.generation)
        self._send(instance, ObjectId(instance.operation_id), autostop["action"], params)
        return True

    def _send(self, instance: Instance, op_id: ObjectId, kind: str, params: dict) -> None:
        op = Operation(
            id=op_id, kind=kind, target=instance.name, target_id=str(instance.id), lock_key=instance.lock_key,
            owner=instance.owner, requested_by=REQUESTED_BY, params=params,
        )
        try:
            op.save(force_insert=True)
        except NotUniqueError:
            return  # recorded by another checker finishing the same claim
        # As for any operation: recorded first; a broker outage leaves it to the recovery sweep.
        if self.dispatch(str(op.id)):
            Operation.objects(id=op.id).update_one(set__dispatched_at=utcnow())


class AutostopService:
    """The checker and the notice board on a thread of their own (`orch serve`)."""

    def __init__(self, settings: Settings, dispatch: Callable[[str], bool]):
        self.notices = NoticeBoard()
        self.checker = AutostopChecker(settings, dispatch, notices=self.notices)
        self.check_s = settings.autostop_check_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="autostop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        next_check = time.monotonic() + self.check_s
        while True:
            try:
                self.notices.refresh()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.check_s
                    acted = self.checker.run_pass()
                    if acted:
                        log.info("autostop: %d instance(s) stopped or deleted", acted)
            except Exception:  # a failed pass is retried on the next tick
                log.exception("autostop pass failed")
            if self._stop.wait(min(self.check_s, NOTICE_REFRESH_S)):
                return

    def stop(self) -> None:
        self._stop.set()
