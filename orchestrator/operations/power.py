"""Stop and start: a `pulumi up` of the instance's program with `spec.state` stopped or running.

Each cloud's program expresses the power state (docs/lifecycle.md); the stack and the disk stay. A
stopped instance has no public address; a start gets a new one, which the record takes (the agent's
token is for the instance's id, not its address, so it keeps working).
"""

from __future__ import annotations

from orchestrator.models import Instance, Operation, utcnow
from stacks.spec import parse_instance


def stop(worker, op: Operation, log_line) -> None:
    _power(worker, op, log_line, moving="stopping", settled="stopped")


def start(worker, op: Operation, log_line) -> None:
    _power(worker, op, log_line, moving="starting", settled="running")


def _power(worker, op: Operation, log_line, *, moving: str, settled: str) -> None:
    instance = Instance.objects.get(id=op.target_id)
    if instance.status != moving:
        instance.move_to(moving)
        instance.save()
    if op.attempts > 1:
        worker.engine.cancel(instance.stack_name)
    document = parse_instance(instance.document())
    # The image the instance runs: an instance from a snapshot keeps it even if the snapshot is gone since.
    base_image_id = (instance.outputs or {}).get("image_id") if document.spec.from_snapshot else None
    up = dict(
        admin_public_key=instance.admin_public_key,
        base_image_id=base_image_id,
        on_output=log_line,
    )
    with worker._step(op, f"pulumi up (state: {document.spec.state})"):
        outputs = worker.engine.up_instance(instance.stack_name, document, **up)
    if settled == "running":
        # Some providers read the new address only on a refresh (AWS: the instance resource is not
        # the one that started it), so the outputs come from a second, refreshing up.
        with worker._step(op, "pulumi up --refresh (the new address)"):
            outputs = worker.engine.up_instance(instance.stack_name, document, refresh=True, **up)
    instance.reload()
    instance.outputs = outputs
    instance.public_ip = outputs.get("public_ip") or None
    instance.updated_at = utcnow()
    generation = op.params.get("generation", instance.generation)
    if instance.configured_generation == generation - 1:  # a power change needs no configuring again
        instance.configured_generation = generation
    instance.move_to(settled)
    instance.save()
