"""What a refresh found, as the instance's `drift` record: differences from the spec, and whether it is lost.

Plain functions of the refresh steps (orchestrator.engine.RefreshedResource), shared by the refresh
and reconcile units.
"""

from __future__ import annotations

import datetime as dt
import json

from orchestrator.engine import RefreshedResource

# The resource that is the machine, per cloud: when a refresh finds it gone, the instance is lost.
MACHINE_TYPES = {
    "aws": "aws:ec2/instance:Instance",
    "gcp": "gcp:compute/instance:Instance",
    "azure": "azure-native:compute:VirtualMachine",
    "docker": "docker:index/container:Container",
}
# A machine's power state as its resource's outputs say after a read, per cloud: the values that
# mean it is not running (stopped in the console, or a spot machine the cloud took back).
MACHINE_STOPPED = {
    "aws": ("instanceState", ("stopping", "stopped", "shutting-down", "terminated")),
    "gcp": ("currentStatus", ("STOPPING", "STOPPED", "SUSPENDING", "SUSPENDED", "TERMINATED")),
}
# [spot] Azure's VM resource carries no power state; its power-state resource (stacks/azure_power.py,
# read back from the VM's instance view) does.
POWER_STATE_RESOURCES = {
    "azure": ("pulumi-python:dynamic/azure:VirtualMachinePowerState", "state", ("stopped", "powered-off")),
}
# Bounds on what one refresh records: differences kept, and each expected/actual value's JSON text.
MAX_DIFFERENCES = 100
MAX_VALUE_CHARS = 512
# The property of a difference that says a resource was deleted outside orch.
EXISTS = "exists"


def _bounded(value: object) -> object:
    """A value as recorded: itself, or its JSON text cut to MAX_VALUE_CHARS (user data can be long)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return value if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def findings(cloud: str, refreshed: list[RefreshedResource], checked_at: dt.datetime) -> dict:
    """{checked_at, differences: [{resource, property, expected, actual}], lost} from a refresh's steps.

    A resource is named `TYPE::NAME` (as the tail of its URN). An `update` step gives one
    difference per property it names (expected: the value orch applied, actual: the cloud's); a
    `delete` step gives one with property `exists` (true -> false). Lost: the machine itself is gone.
    """
    differences: list[dict] = []
    lost = False
    for resource in sorted(refreshed, key=lambda item: (item.type, item.name)):
        label = f"{resource.type}::{resource.name}"
        if resource.op == "delete":
            lost = lost or resource.type == MACHINE_TYPES.get(cloud)
            differences.append({"resource": label, "property": EXISTS, "expected": True, "actual": False})
        elif resource.op == "update":
            for key in resource.diffs:
                differences.append({
                    "resource": label, "property": key,
                    "expected": _bounded(resource.expected.get(key)), "actual": _bounded(resource.actual.get(key)),
                })  # fmt: skip
    return {"checked_at": checked_at, "differences": differences[:MAX_DIFFERENCES], "lost": lost}


def summary(found: dict) -> str:
    """The instance's status reason for what a refresh found."""
    if found["lost"]:
        return "its machine was deleted outside orch (found by a refresh): reconcile creates it again, or delete it"
    count = len(found["differences"])
    first = found["differences"][0]
    what = f"{first['resource']} {first['property']}"
    more = f" and {count - 1} more" if count > 1 else ""
    return f"changed outside orch (found by a refresh): {what}{more}; reconcile (or apply) puts it back to the spec"


def machine_taken(cloud: str, refreshed: list[RefreshedResource]) -> str | None:
    """How the refresh found the machine not running ("gone", or "stopped (STATE)"); None when it runs."""
    machine_type = MACHINE_TYPES.get(cloud)
    for resource in refreshed:
        if resource.type != machine_type:
            continue
        if resource.op == "delete":
            return "gone"
        key, stopped = MACHINE_STOPPED.get(cloud, ("", ()))
        if key and resource.outputs.get(key) in stopped:
            return f"stopped ({key} {resource.outputs[key]})"
    power_type, key, stopped = POWER_STATE_RESOURCES.get(cloud, ("", "", ()))
    for resource in refreshed:
        if resource.type == power_type and resource.op != "delete" and resource.outputs.get(key) in stopped:
            return f"stopped ({key} {resource.outputs[key]})"
    return None
