"""Stop and start: a `pulumi up` of the instance's program with `spec.state` stopped or running.

Each cloud's program expresses the power state (docs/lifecycle.md); the stack and the disk stay. A
stopped instance has no public address; a start gets a new one, which the record takes (the agent's
token is for the instance's id, not its address, so it keeps working).
"""

from __future__ import annotations

import datetime as dt
import time

from orchestrator.models import Instance, Operation, utcnow
from stacks.spec import parse_instance

# A restart after a preemption notice sleeps in steps of this much until its `not_before`.
WAIT_STEP_S = 1.0


def stop(worker, op: Operation, log_line) -> None:
    _power(worker, op, log_line, moving="stopping", settled="stopped")


def start(worker, op: Operation, log_line) -> None:
    _power(worker, op, log_line, moving="starting", settled="running")


def _power(worker, op: Operation, log_line, *, moving: str, settled: str) -> None:
    # Why, when not asked by a user (autostop: "autostop: gpu below 5% for 60 min"): kept through the move.
    reason = op.params.get("status_reason")
    instance = worker._take(op, moving, reason)
    preemption = op.params.get("reason") == "preemption"
    if preemption and op.params.get("not_before"):
        _wait_for_preemption(worker, op, dt.datetime.fromisoformat(op.params["not_before"]))
    previous_machine = (instance.outputs or {}).get("instance_id")
    document = parse_instance(instance.document())
    # The image the instance runs: an instance from a snapshot keeps it even if the snapshot is gone since.
    base_image_id = (instance.outputs or {}).get("image_id") if document.spec.from_snapshot else None
    up = dict(
        admin_public_key=instance.admin_public_key,
        base_image_id=base_image_id,
        on_output=log_line,
    )
    if preemption:
        # The machine is stopped or gone behind the stack's back: the refresh reads that, and the up
        # starts it again (or creates it again, when the cloud deleted it).
        with worker._step(op, "pulumi up --refresh (after preemption)"):
            outputs = worker.engine.up_instance(instance.stack_name, document, refresh=True, **up)
    else:
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
    # The cloud deleted the machine and the up made a new one (AWS gives it a new id; GCP and Azure ids
    # are names, the same again): it is configured as a created one is.
    recreated = settled == "running" and previous_machine and outputs.get("instance_id") != previous_machine
    if recreated:
        instance.save()
        log_line(f"a new machine ({outputs.get('instance_id')}) replaced {previous_machine}: configuring it")
        _configure(worker, op, instance, outputs, document, log_line)
        instance.reload()
        instance.configured_generation = generation
    elif instance.configured_generation == generation - 1:  # a power change needs no configuring again
        instance.configured_generation = generation
    instance.move_to(settled, reason)
    instance.save()


def _wait_for_preemption(worker, op: Operation, not_before: dt.datetime) -> None:
    """After an agent's notice the machine still runs until the cloud takes it: wait until then (bounded)."""
    left = (not_before - utcnow()).total_seconds()
    if left <= 0:
        return
    with worker._step(op, f"wait {int(left)} s for the preemption the agent announced"):
        deadline = time.monotonic() + min(left, worker.settings.preemption_grace_s)
        while time.monotonic() < deadline:
            time.sleep(min(WAIT_STEP_S, deadline - time.monotonic()))


def _configure(worker, op: Operation, instance: Instance, outputs: dict, document, log_line) -> None:
    """Configure a machine made again as a create does (Ansible, the agent), or skip as a create skips."""
    if not document.spec.configure:
        return
    if worker.settings.simulated and not worker.settings.sandbox_hosts:
        with worker._step(op, "configure: skipped (simulated)"):
            log_line("configuration skipped: simulated clouds without sandbox hosts")
        return
    worker._configure(op, instance, outputs, document, log_line)
