"""Refresh: `pulumi refresh` of an instance's stack, to find what was changed or deleted outside orch.

A real refresh, not `--preview-only`: the stack's state then holds what the cloud has (so a delete
does not try to delete what is gone, and the recorded state is the truth), and a later `pulumi up`
of the unchanged program diffs against it, which is how reconcile puts the instance back. What the
refresh found is the instance's `drift`; the instance goes back to the status it came from when
nothing differs, else to `drifted` (differences) or `lost` (its machine is gone).
"""

from __future__ import annotations

from orchestrator.engine import EngineError, StackNotFound
from orchestrator.models import Instance, Operation, utcnow
from orchestrator.operations.drift import findings, machine_taken, summary
from orchestrator.operations.preemption import mark_preempted

# Where a refresh that finds nothing returns to; any other status (drifted) returns to what the spec says.
RETURNS_TO = ("running", "stopped", "failed")


def refresh(worker, op: Operation, log_line) -> None:
    instance = worker._take(op, "refreshing")
    with worker._step(op, "pulumi refresh"):
        try:
            refreshed = worker.engine.refresh_instance(instance.stack_name, on_output=log_line)
        except StackNotFound:
            raise EngineError(f"instance {instance.name} has no stack {instance.stack_name} to refresh") from None
    found = findings(instance.cloud, refreshed, utcnow())
    changed = sum(1 for resource in refreshed if resource.op != "same")
    log_line(f"refresh: {len(refreshed)} resources read, {changed} changed outside orch")
    instance.reload()
    instance.drift = found
    instance.updated_at = utcnow()
    spec = instance.spec or {}
    expects_running = spec.get("state", "running") == "running"
    taken = machine_taken(instance.cloud, refreshed) if spec.get("spot") and expects_running else None
    if taken:
        # A spot machine stopped or gone is the cloud taking it back, not drift: `preempted`, then the
        # spec's on_preemption action (its operation waits for this one's lock; the sweep dispatches it).
        instance.save()
        log_line(f"refresh: the spot machine is {taken}: preempted")
        mark_preempted(instance, "refresh", detail=f"the refresh found its machine {taken}")
        instance.reload()
        if instance.status != "refreshing":
            return
    if found["lost"]:
        instance.move_to("lost", summary(found))
    elif found["differences"]:
        instance.move_to("drifted", summary(found))
    else:
        instance.move_to(*_returns_to(op, instance))
    instance.save()


def _returns_to(op: Operation, instance: Instance) -> tuple[str, str | None]:
    """(status, reason) after a refresh that found nothing changed."""
    came_from = op.params.get("from_status")
    if came_from in RETURNS_TO:
        return came_from, op.params.get("from_reason")
    return ("stopped" if (instance.spec or {}).get("state") == "stopped" else "running"), None


def refresh_failed(op: Operation, reason: str) -> None:
    """The failure path: the instance goes back to where it came from (the refresh, not the instance, failed)."""
    instance = Instance.objects.get(id=op.target_id)
    came_from = op.params.get("from_status")
    status = came_from if came_from in (*RETURNS_TO, "drifted", "preempted") else _returns_to(op, instance)[0]
    # Why it was where it was (e.g. why it failed), without what earlier refreshes' failures added.
    earlier = (op.params.get("from_reason") or "").split("; refresh failed: ")[0] if status == came_from else ""
    earlier = "" if earlier.startswith("refresh failed: ") else earlier
    instance.move_to(status, f"{earlier}; refresh failed: {reason}" if earlier else f"refresh failed: {reason}")
    instance.save()
