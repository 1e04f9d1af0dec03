"""Reconcile: bring a drifted or lost instance back to its spec with a `pulumi up` of its program.

After a refresh the stack's state is what the cloud has, so the up of the unchanged program
changes exactly what was changed outside orch back, and creates again what was deleted (a lost
instance's machine: Pulumi creates a resource missing from the state). A machine created again is a
new machine: it is configured again (users, mounts, the agent with a new token), as a create does.
"""

from __future__ import annotations

from orchestrator.models import Operation, utcnow
from orchestrator.operations.drift import MACHINE_TYPES
from stacks.spec import parse_instance

# The update's steps that make a new machine.
CREATING_OPS = ("create", "replace", "create-replacement")
# The operation's params key recording that its up made a new machine (a resumed attempt configures it too).
REPLACED = "replaced_machine"
SKIPPED_CONFIGURE_STEP = "configure: skipped (simulated, no sandbox host)"


def reconcile(worker, op: Operation, log_line) -> None:
    instance = worker._take(op, "updating")
    document = parse_instance(instance.document())
    # The image the instance runs: one from a snapshot keeps it even if the snapshot is gone since.
    base_image_id = (instance.outputs or {}).get("image_id") if document.spec.from_snapshot else None
    machine_type = MACHINE_TYPES.get(instance.cloud)

    def on_step(step_op: str, type_token: str) -> None:
        if type_token == machine_type and step_op in CREATING_OPS:
            Operation.objects(id=op.id).update_one(**{f"set__params__{REPLACED}": True})

    with worker._step(op, "pulumi up (reconcile: back to the spec)"):
        outputs = worker.engine.up_instance(
            instance.stack_name,
            document,
            admin_public_key=instance.admin_public_key,
            base_image_id=base_image_id,
            on_output=log_line,
            on_step=on_step,
        )
    replaced = bool(Operation.objects(id=op.id).only("params").first().params.get(REPLACED))
    instance.reload()
    instance.outputs = outputs
    instance.public_ip = outputs.get("public_ip") or None
    instance.drift = None
    instance.updated_at = utcnow()
    instance.save()
    spec = document.spec
    if replaced and spec.configure and spec.state == "running":
        log_line("the machine was created again: configuring it")
        if worker.settings.simulated and not worker.settings.sandbox_hosts:
            with worker._step(op, SKIPPED_CONFIGURE_STEP):
                log_line("configuration skipped: simulated clouds without sandbox hosts")
        else:
            worker._configure(op, instance, outputs, document, log_line)
        instance.reload()
    instance.move_to("stopped" if spec.state == "stopped" else "running")
    instance.save()
