"""A spot instance the cloud took back: `preempted`, then the spec's `on_preemption` action.

Two things detect a preemption and call `mark_preempted`: the agent's notice in a report (the
cloud's metadata says the machine is about to be taken: orchestrator/ingest.py) and a refresh that
finds a spot instance's machine stopped or gone (drift's refresh unit). The action is an operation
like any other, recorded in MongoDB and run under the instance's lock: `restart` is a `start`
(orchestrator/operations/power.py: an `up --refresh`, which starts a stopped machine and creates
again one the cloud deleted), `delete` a `delete`, `keep` none (the instance stays `preempted`
until someone starts or deletes it).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from bson import ObjectId
from mongoengine.errors import NotUniqueError

from orchestrator.models import Instance, Operation, utcnow

log = logging.getLogger("orch.preemption")

# Who says an instance was preempted: the agent, from each cloud's metadata, or a refresh of its stack.
NOTICE_SOURCES = ("aws-imds", "gcp-metadata", "azure-scheduled-events")
SOURCES = (*NOTICE_SOURCES, "refresh")
MAX_DETAIL_CHARS = 256
# Statuses a preemption is recorded from: a spot machine is taken while it runs (`refreshing` is
# drift's, whose refresh finds it taken).
PREEMPTIBLE_STATUSES = ("running", "failed", "refreshing")
# What records the action operation (`requested_by`), as a user's name records theirs.
REQUESTER = "orch:preemption"


def mark_preempted(
    instance: Instance,
    source: str,
    *,
    detail: str = "",
    dispatch: Callable[[str], bool] | None = None,
    grace_s: int = 0,
) -> None:
    """Move a spot instance to `preempted` (once: later calls find it so) and start its on_preemption action.

    `dispatch` sends the action's operation to a worker now; without it (a caller with no dispatcher)
    the operation is recorded queued and the recovery sweep sends it. After an agent's notice the
    machine is still running, so a restart waits `grace_s` (ORCH_PREEMPTION_GRACE_S) for it to be
    taken before starting it again.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown preemption source {source!r} (one of {', '.join(SOURCES)})")
    spec = instance.spec or {}
    if not spec.get("spot"):
        log.warning("instance %s (%s) is not a spot instance: preemption from %s ignored", instance.name, instance.id, source)
        return
    now = utcnow()
    reason = f"preempted ({source})" + (f": {detail[:MAX_DETAIL_CHARS]}" if detail else "")
    action = _action(spec.get("on_preemption", "keep"), source, instance.generation, now, grace_s)
    # Atomic: of several notices (an agent reports every few seconds), exactly one records it; the
    # action's operation id is reserved in the same update, so a crash before the operation is
    # recorded leaves it to record_unrecorded_actions.
    marked = Instance.objects(id=instance.id, status__in=PREEMPTIBLE_STATUSES).modify(
        set__status="preempted",
        set__status_reason=reason,
        set__preempted_at=now,
        set__preemption_source=source,
        set__preemption_action=action,
        set__updated_at=now,
        **({"set__operation_id": action["operation_id"]} if action else {}),
        new=True,
    )
    if marked is None:
        return
    log.info("instance %s/%s %s", marked.owner, marked.name, reason)
    if action is not None:
        _record_action(marked, action, dispatch)


def record_unrecorded_actions(dispatch: Callable[[str], bool], older_than_s: float) -> int:
    """Record (and dispatch) the actions of preemptions whose marker stopped before recording them.

    Only markings older than `older_than_s`, so one in progress is left to its marker; recording is
    idempotent anyway (the operation's id was reserved). Returns how many were recorded.
    """
    stale = utcnow() - dt.timedelta(seconds=older_than_s)
    count = 0
    for instance in Instance.objects(status="preempted", preemption_action__ne=None, updated_at__lt=stale):
        count += _record_action(instance, instance.preemption_action, dispatch)
    return count


def _action(on_preemption: str, source: str, generation: int, now: dt.datetime, grace_s: int) -> dict | None:
    """The operation that carries out `on_preemption`: restart is a start, delete a delete, keep none."""
    if on_preemption == "keep":
        return None
    params: dict = {"reason": "preemption", "source": source}
    if on_preemption == "restart":
        kind = "start"
        params["generation"] = generation
        if source in NOTICE_SOURCES and grace_s > 0:
            params["not_before"] = (now + dt.timedelta(seconds=grace_s)).isoformat()
    else:
        kind = "delete"
    return {"operation_id": str(ObjectId()), "kind": kind, "params": params}


def _record_action(instance: Instance, action: dict, dispatch: Callable[[str], bool] | None) -> bool:
    """Record the action's operation under its reserved id (once), clear the marker, and dispatch it."""
    op_id = ObjectId(action["operation_id"])
    try:
        Operation(
            id=op_id,
            kind=action["kind"],
            target=instance.name,
            target_id=str(instance.id),
            lock_key=instance.lock_key,
            owner=instance.owner,
            requested_by=REQUESTER,
            params=action["params"],
        ).save(force_insert=True)
    except NotUniqueError:  # recorded already (by the marker, or a sweep before this one)
        recorded = False
    else:
        recorded = True
    Instance.objects(id=instance.id, preemption_action__operation_id=action["operation_id"]).update_one(
        unset__preemption_action=True
    )
    if recorded and dispatch is not None and dispatch(str(op_id)):
        Operation.objects(id=op_id).update_one(set__dispatched_at=utcnow())
    return recorded
