"""The Pulumi programs: one module per cloud, all with the same interface, routed by cloud name.

Each cloud module (`stacks/<cloud>.py`) defines
`instance_program(instance, *, admin_public_key, base_image_id)`,
`snapshot_program(snapshot, *, source)`, `classify_error(message)` (capacity, quota or credentials: zone
failover) and `SDK_MODULES` (the SDK submodules it uses); adding a cloud is adding a module
(and its entry in `stacks.catalog`). Modules are imported on first use, so a
process only loads the SDKs of the clouds it drives.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from types import ModuleType

from stacks.catalog import CLOUDS
from stacks.spec import InstanceDoc, SnapshotDoc


_sdk_load_lock = threading.Lock()


def cloud_module(cloud: str) -> ModuleType:
    if cloud not in CLOUDS:
        raise ValueError(f"unknown cloud {cloud!r} (one of {', '.join(CLOUDS)})")
    with _sdk_load_lock:
        module = importlib.import_module(f"stacks.{cloud}")
        for name in module.SDK_MODULES:
            # The SDKs load submodules lazily on first attribute access, and
            # that load is not thread-safe (a second thread can see the module
            # half-executed): any attribute lookup finishes it, here, once.
            hasattr(importlib.import_module(name), "_loaded_by_orch")
    return module


def instance_program(
    instance: InstanceDoc, *, admin_public_key: str, base_image_id: str | None = None
) -> Callable[[], None]:
    """The inline program of an instance's stack."""
    module = cloud_module(instance.spec.cloud)
    return lambda: module.instance_program(instance, admin_public_key=admin_public_key, base_image_id=base_image_id)


def snapshot_program(snapshot: SnapshotDoc, *, source: dict) -> Callable[[], None]:
    """The inline program of a snapshot's stack; `source` is the instance stack's outputs."""
    module = cloud_module(source["cloud"])
    return lambda: module.snapshot_program(snapshot, source=source)


def classify_error(cloud: str, message: str):
    """What a failed update's message says, as the cloud module classifies it (stacks.common.CloudError or None).

    Only the cloud's module is imported (its SDK's submodules load on first use), so this is cheap
    in a process that has not run the cloud's program.
    """
    if cloud not in CLOUDS:
        raise ValueError(f"unknown cloud {cloud!r} (one of {', '.join(CLOUDS)})")
    return importlib.import_module(f"stacks.{cloud}").classify_error(message)
