"""The deployment engine: runs an inline program against a ResourceMonitor and simulates the steps.

`up`/`preview` call the language host's `Run` (the Automation API serves it at `--client`) with
the address of the ResourceMonitor and Engine served here. Each RegisterResource becomes a step
(create, update, same) against the stack's previous state; resources the program no longer
registers are deleted afterwards, dependents first. `destroy` deletes everything, `refresh`
re-reads every resource from the simulated cloud (steps `refresh`, each resulting in same, update or
delete, as the engine's RefreshStep). Outside a preview the checkpoint is written
after every step, so a failed step leaves the state of everything done before it.
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib.metadata
import json
import os
import re
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent import futures
from dataclasses import dataclass, field
from typing import TextIO

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2

from pulumi.runtime.proto import (
    engine_pb2,
    engine_pb2_grpc,
    language_pb2,
    language_pb2_grpc,
    resource_pb2,
    resource_pb2_grpc,
)

from . import capacity, properties, resource_types, sandboxes
from .backend import FileBackend, manifest
from .events import EventLog
from .passphrase import Crypter
from .project import Project, StackConfig

ROOT_STACK_TYPE = "pulumi:pulumi:Stack"
PROVIDER_TYPE_PREFIX = "pulumi:providers:"
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 400 * 1024 * 1024),
    ("grpc.max_send_message_length", 400 * 1024 * 1024),
]
# Step kinds in the order the CLI's summary lists them, with the display prefix, the past tense
# and the -ing form of each (pkg/resource/deploy/step.go).
STEP_OPS = ("same", "create", "update", "delete", "replace", "read", "refresh")
OP_PREFIX = {"same": "  ", "create": "+ ", "update": "~ ", "delete": "- ", "replace": "+-", "read": "> ", "refresh": "~ "}
OP_DONE = {
    "same": "same", "create": "created", "update": "updated", "delete": "deleted", "replace": "replaced",
    "read": "read", "refresh": "refreshed",
}  # fmt: skip
OP_DOING = {
    "same": "same", "create": "creating", "update": "updating", "delete": "deleting", "replace": "replacing",
    "read": "reading", "refresh": "refreshing",
}  # fmt: skip
# Packages whose resources need no provider plugin: the engine's own and dynamic providers.
BUILTIN_PACKAGES = {"pulumi", "pulumi-python", "pulumi-nodejs"}
LOG_SEVERITIES = {
    engine_pb2.DEBUG: "debug",
    engine_pb2.INFO: "info",
    engine_pb2.WARNING: "warning",
    engine_pb2.ERROR: "error",
}


def _normalize_numbers(value):
    """Struct numbers are doubles; whole numbers are stored as integers, as the CLI's JSON has them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _normalize_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalize_numbers(item) for item in value]
    return value


def from_struct(struct: struct_pb2.Struct) -> dict:
    return _normalize_numbers(json_format.MessageToDict(struct))


def to_struct(value: dict) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


class StepFailed(Exception):
    """A step the engine could not do; the message is the diagnostic reported on the resource."""

    @classmethod
    def simulated(cls, resource: dict, op: str, reason: str) -> StepFailed:
        name = resource["urn"].rsplit("::", 1)[-1]
        return cls(f"{resource['urn']}: {OP_DOING[op]} {resource['type']} ({name}) failed: {reason}")


def protected_error(urn: str) -> str:
    """The engine's diagnostic for deleting (or replacing) a protected resource."""
    return (
        f'resource "{urn}" cannot be deleted\n'
        "because it is protected. To unprotect the resource, either remove the `protect` flag from the "
        "resource in your Pulumi program and run `pulumi up`, or use the command:\n"
        f"`pulumi state unprotect '{urn}'`"
    )


def missing_plugin_error(package: str, version: str) -> str:
    """Why the engine could not load the provider of a package that is not installed.

    The CLI tries to download the plugin and fails; the stand-in never downloads anything.
    """
    reason = "the Pulumi CLI stand-in does not download plugins"
    if version:
        return (
            f"Could not automatically download and install resource plugin 'pulumi-resource-{package}' at version "
            f"v{version}, install the plugin using `pulumi plugin install resource {package} v{version}`: "
            f"error downloading provider {package} to file: {reason}"
        )
    return f"could not find latest version for provider {package}: {reason}"


def package_installed(package: str) -> bool:
    """Whether the package's provider is available: its Python SDK (`pulumi_<package>`) is installed."""
    if package in BUILTIN_PACKAGES:
        return True
    try:
        importlib.metadata.distribution("pulumi_" + package.replace("-", "_"))
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _target_pattern(target: str) -> re.Pattern:
    """A --target URN; `**` matches anything, `*` anything but `::` separators (as the CLI's globs)."""
    parts = re.split(r"(\*\*|\*)", target)
    pattern = "".join(".*" if part == "**" else "[^:]*" if part == "*" else re.escape(part) for part in parts)
    return re.compile(pattern + r"\Z")


@dataclass
class OperationSettings:
    project: Project
    stack: str
    backend: FileBackend
    config: StackConfig
    cli_version: str
    event_log: EventLog
    exec_kind: str = "cli"
    message: str = ""
    client_address: str | None = None
    parallel: int = 16
    out: TextIO = field(default_factory=lambda: sys.stdout)
    show_progress: bool = True  # False with --json: stdout carries JSON only
    targets: list[str] = field(default_factory=list)
    target_dependents: bool = False
    replaces: list[str] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)  # URNs `destroy --exclude-protected` keeps
    refresh: bool = False
    diff: bool = False  # --diff: each step's property diff instead of the progress lines


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def _name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def injected_failure(op: str, type_token: str, name: str, inputs: dict) -> str | None:
    """Why this step should fail, per PULUMI_STANDIN_FAIL or a `standin-fail` tag/label; None if it should not.

    PULUMI_STANDIN_FAIL=<type token>[:<name substring>] fails creates and updates of matching
    resources (not deletes, so that a rollback by destroy works while it is still set). A
    `standin-fail` tag or label fails the operation it names: create, update or delete.
    """
    spec = os.environ.get("PULUMI_STANDIN_FAIL")
    if spec and op in ("create", "update"):
        parts = spec.split(":")
        token, name_part = ":".join(parts[:3]), ":".join(parts[3:])
        if token == type_token and name_part in name:
            return f"simulated failure (PULUMI_STANDIN_FAIL={spec})"
    plain_inputs = properties.plain(inputs)
    for key in ("tags", "labels"):
        value = plain_inputs.get(key)
        if isinstance(value, dict):
            requested = value.get("standin-fail")
        elif isinstance(value, list):  # docker labels: [{label, value}]
            requested = next(
                (
                    entry.get("value")
                    for entry in value
                    if isinstance(entry, dict) and entry.get("label") == "standin-fail"
                ),
                None,
            )
        else:
            requested = None
        if requested == op:
            return f"simulated failure ({key} standin-fail={op})"
    return None


def _delay_resource_operation() -> None:
    latency_ms = os.environ.get("PULUMI_STANDIN_LATENCY_MS")
    if latency_ms:
        time.sleep(float(latency_ms) / 1000)


def changed_keys(old_inputs: dict, new_inputs: dict, ignore_changes: list[str]) -> list[str]:
    ignored = {path.split(".", 1)[0].split("[", 1)[0] for path in ignore_changes}
    keys = set(old_inputs) | set(new_inputs)
    return sorted(key for key in keys if key not in ignored and old_inputs.get(key) != new_inputs.get(key))


class Deployment:
    """One `up`, `preview`, `destroy` or `refresh` of a stack."""

    def __init__(self, settings: OperationSettings, preview: bool) -> None:
        self.settings = settings
        self.preview = preview
        self.changes: Counter[str] = Counter()
        self.failure: StepFailed | None = None
        self.program_error: str | None = None
        self.root_urn: str | None = None
        self._mutex = threading.RLock()
        self._crypter: Crypter | None = None
        # --parallel: how many resource operations of the simulated cloud run at once.
        self._operation_slots = threading.BoundedSemaphore(max(settings.parallel, 1))
        latest = settings.backend.read_checkpoint(settings.stack)
        self.old_order = [properties.unseal(resource, self.crypter) for resource in latest.get("resources") or []]
        self.old = {resource["urn"]: resource for resource in self.old_order}
        self.new: dict[str, dict] = {}  # this run's finished steps, by URN
        self.new_order: list[str] = []
        self.registered: set[str] = set()  # URNs the program registered, finished or not
        self.deleted: set[str] = set()
        self.default_providers: dict[tuple[str, str], str] = {}
        self.target_patterns = [_target_pattern(target) for target in settings.targets]
        self.replace_urns = set(settings.replaces)
        self.targeted: set[str] = set()  # URNs this run's steps were done for, under --target
        self.skipped_creates: set[str] = set()  # new resources left out by --target
        self.diagnostics: list[dict] = []  # {urn, severity, message}, for the display and the JSON digest
        self.step_events: list[dict] = []  # metadata of each step's pre-event, for the JSON digest

    def crypter(self) -> Crypter:
        if self._crypter is None:
            self._crypter = self.settings.config.crypter()
        return self._crypter

    # --- state -------------------------------------------------------------------------------

    def current_resources(self) -> list[dict]:
        """The stack's resources now: this run's, then previous ones not yet visited or deleted."""
        resources = [self.new[urn] for urn in self.new_order]
        resources += [res for res in self.old_order if res["urn"] not in self.new and res["urn"] not in self.deleted]
        return resources

    def deployment(self) -> dict:
        resources = [properties.seal(resource, self.crypter) for resource in self.current_resources()]
        deployment = {"manifest": manifest(self.settings.cli_version)}
        if self.settings.config.encryption_salt:
            deployment["secrets_providers"] = {
                "type": "passphrase",
                "state": {"salt": self.settings.config.encryption_salt},
            }
        if resources:
            deployment["resources"] = resources
        deployment["metadata"] = {}
        return deployment

    def _save(self) -> None:
        if not self.preview:
            self.settings.backend.write_checkpoint(self.settings.stack, self.deployment())

    # --- targets -----------------------------------------------------------------------------

    def _matches_target(self, urn: str) -> bool:
        return any(pattern.match(urn) for pattern in self.target_patterns)

    def _is_targeted(self, resource: dict) -> bool:
        """Whether --target (if any) includes the resource; providers and the stack always are."""
        urn, type_token = resource["urn"], resource["type"]
        if not self.target_patterns or type_token.startswith(PROVIDER_TYPE_PREFIX) or type_token == ROOT_STACK_TYPE:
            return True
        if self._matches_target(urn):
            return True
        if self.settings.target_dependents:
            with self._mutex:
                return any(dependency in self.targeted for dependency in dependencies_of(resource))
        return False

    def check_targets(self) -> None:
        """Every literal --target must name a resource of the stack (old, or registered by this run)."""
        known = set(self.old) | self.registered
        unknown = [target for target in self.settings.targets if "*" not in target and target not in known]
        for target in unknown:
            hint = "" if "$" in target else " Did you forget to escape $ in your shell?"
            self.log_diagnostic("error", f"Target '{target}' could not be found in the stack.{hint}")
        if unknown:
            self._record_failure(StepFailed("one or more targets could not be found in the stack"))

    # --- display and events ------------------------------------------------------------------

    def _print(self, line: str) -> None:
        if not self.settings.show_progress:
            return
        with self._mutex:
            self.settings.out.write(line + "\n")
            self.settings.out.flush()

    def _step_metadata(
        self, op: str, urn: str, type_token: str, old: dict | None, new: dict | None, keys: list[str]
    ) -> dict:
        def state(resource: dict | None) -> dict | None:
            if resource is None:
                return None
            shown = {
                "type": resource["type"],
                "urn": resource["urn"],
                "custom": resource.get("custom", False),
                "id": resource.get("id", ""),
                "parent": resource.get("parent", ""),
                "provider": resource.get("provider", ""),
                "inputs": properties.masked(resource.get("inputs", {})),
                "outputs": properties.masked(resource.get("outputs", {})),
            }
            if resource.get("protect"):
                shown["protect"] = True
            return shown

        old_inputs = (old or {}).get("inputs", {})
        new_inputs = (new or {}).get("inputs", {})
        detailed = {}
        for key in keys:
            kind = "add" if key not in old_inputs else "delete" if key not in new_inputs else "update"
            detailed[key] = {"diffKind": kind, "inputDiff": True}
        return {
            "op": op,
            "urn": urn,
            "type": type_token,
            "old": state(old),
            "new": state(new),
            "keys": keys,
            "diffs": keys,
            "detailedDiff": detailed,
            "provider": (new or old or {}).get("provider", ""),
        }

    def _begin_step(self, metadata: dict) -> None:
        with self._mutex:
            self.step_events.append(metadata)
        self.settings.event_log.emit(resourcePreEvent={"metadata": metadata, "planning": self.preview})

    def _end_step(self, metadata: dict, started: float) -> None:
        op = metadata["op"]
        if op != "refresh":  # refreshes before an update or destroy are not among its changes
            with self._mutex:
                self.changes[op] += 1
        self.settings.event_log.emit(resOutputsEvent={"metadata": metadata, "planning": self.preview})
        if op == "same":
            return
        if self.settings.diff:
            self._print(self._diff_block(metadata))
        else:
            # As the CLI's progress display: the planned op in a preview, else its outcome and duration.
            status = op if self.preview else f"{OP_DONE[op]} ({time.monotonic() - started:.2f}s)"
            self._print(f" {OP_PREFIX[op]} {metadata['type']} {_name_of(metadata['urn'])} {status}")

    def _depth(self, parent: str) -> int:
        """How deep the display nests a resource: the stack at 0, its children at 1, theirs at 2, ..."""
        depth = 0
        seen: set[str] = set()
        while parent and parent not in seen:
            seen.add(parent)
            depth += 1
            with self._mutex:
                parent_state = self.new.get(parent) or self.old.get(parent) or {}
            parent = parent_state.get("parent", "")
        return depth

    def _diff_block(self, metadata: dict) -> str:
        """One step as the CLI's diff display (`--diff`) prints it: header, identity, then properties."""
        op = metadata["op"]
        state = metadata["new"] or metadata["old"]
        indent = "    " * self._depth(state.get("parent", ""))
        lines = [f"{indent}{OP_PREFIX[op]}{metadata['type']}: ({op})"]
        if state.get("id") and op != "create":
            lines.append(f"{indent}    [id={state['id']}]")
        lines.append(f"{indent}    [urn={metadata['urn']}]")
        if metadata.get("provider"):
            lines.append(f"{indent}    [provider={metadata['provider']}]")
        old_inputs = (metadata["old"] or {}).get("inputs", {})
        new_inputs = (metadata["new"] or {}).get("inputs", {})
        if op in ("create", "delete"):
            shown = new_inputs if op == "create" else old_inputs
            width = max((len(key) for key in shown), default=0)
            lines += [f"{indent}    {key:<{width}}: {json.dumps(value)}" for key, value in sorted(shown.items())]
        for key, diff in sorted(metadata["detailedDiff"].items()):
            kind = diff["diffKind"]
            if kind == "add":
                lines.append(f"{indent}  + {key}: {json.dumps(new_inputs.get(key))}")
            elif kind == "delete":
                lines.append(f"{indent}  - {key}: {json.dumps(old_inputs.get(key))}")
            else:
                lines.append(f"{indent}  ~ {key}: {json.dumps(old_inputs.get(key))} => {json.dumps(new_inputs.get(key))}")
        return "\n".join(lines)

    def _record_failure(self, failure: StepFailed) -> None:
        with self._mutex:
            if self.failure is None:
                self.failure = failure

    def _fail_step(self, metadata: dict, failure: StepFailed) -> None:
        self._record_failure(failure)
        self.settings.event_log.emit(resOpFailedEvent={"metadata": metadata, "status": 0, "steps": 1})
        self.log_diagnostic("error", str(failure), urn=metadata["urn"])
        op = metadata["op"]
        self._print(f" {OP_PREFIX[op]} {metadata['type']} {_name_of(metadata['urn'])} **{OP_DOING[op]} failed** 1 error")

    def log_diagnostic(self, severity: str, message: str, urn: str = "") -> None:
        event = {"message": message + "\n", "color": "never", "severity": severity}
        if urn:
            event["urn"] = urn
        self.settings.event_log.emit(diagnosticEvent=event)
        if severity != "debug":
            with self._mutex:
                self.diagnostics.append({"urn": urn, "severity": severity, "message": message})

    # --- steps -------------------------------------------------------------------------------

    def _simulate(
        self, resource: dict, resource_id: str | None, additional_secret_outputs: list[str], reading: bool = False
    ) -> tuple[str, dict]:
        """The simulated cloud's id and outputs; outputs of secret inputs stay secret."""
        inputs = resource["inputs"]
        if resource["type"].startswith(PROVIDER_TYPE_PREFIX):
            return resource_id or str(uuid.uuid4()), copy.deepcopy(inputs)
        resource_id, outputs = resource_types.simulate(
            resource["type"],
            _name_of(resource["urn"]),
            resource["urn"],
            properties.plain(inputs),
            resource_id,
            live=not self.preview,
            reading=reading,
        )
        secret_keys = {key for key, value in inputs.items() if properties.contains_secret(value)}
        secret_keys.update(additional_secret_outputs)
        for key in secret_keys & set(outputs):
            outputs[key] = properties.make_secret(outputs[key])
        return resource_id, outputs

    def _cloud_operation(self, metadata: dict, resource: dict, op: str) -> None:
        """One create, update or delete in the simulated cloud (raises StepFailed when one is injected)."""
        with self._operation_slots:
            reason = injected_failure(op, resource["type"], _name_of(resource["urn"]), resource.get("inputs", {}))
            if not reason and op in ("create", "update"):
                reason = resource_types.invalid_inputs(resource["type"], properties.plain(resource.get("inputs", {})))
            _delay_resource_operation()
        if reason:
            failure = StepFailed.simulated(resource, op, reason)
            self._fail_step(metadata, failure)
            raise failure
        # No capacity or quota where the machine is to be: the provider's own words (capacity.py).
        inputs = properties.plain(resource.get("inputs", {}))
        placement = capacity.placement_failure(resource["type"], inputs) if op == "create" else None
        if placement:
            failure = StepFailed(placement)
            self._fail_step(metadata, failure)
            raise failure
        if sandboxes.enabled() and op in ("create", "delete"):
            self._sandbox_operation(metadata, resource, op)
        if not self.preview:  # the program's values are the cloud's again
            resource_types.forget_tampering(resource["urn"])

    def _sandbox_operation(self, metadata: dict, resource: dict, op: str) -> None:
        """`orch serve --simulate`: a compute resource is a sandbox host (sandboxes.py)."""
        type_token, name = resource["type"], _name_of(resource["urn"])
        try:
            if op == "create":
                sandboxes.on_create(type_token, name, resource["urn"], properties.plain(resource["inputs"]))
            else:
                sandboxes.on_delete(type_token, resource["urn"], resource.get("id"))
        except Exception as error:  # the manager's answer, or a socket that does not answer
            failure = StepFailed.simulated(resource, op, f"sandbox host: {error}")
            self._fail_step(metadata, failure)
            raise failure from None

    def _skip_create(self, resource: dict) -> dict:
        """--target leaves this new resource out: nothing is created or recorded."""
        with self._mutex:
            self.skipped_creates.add(resource["urn"])
        resource["id"] = ""
        resource["outputs"] = copy.deepcopy(resource["inputs"])
        return resource

    def _check_not_skipped(self, resource: dict, metadata: dict) -> None:
        """A targeted resource cannot use one that --target left uncreated (as the engine's error 2013)."""
        with self._mutex:
            skipped = [dependency for dependency in dependencies_of(resource) if dependency in self.skipped_creates]
        if skipped:
            message = f"Resource '{resource['urn']}' depends on '{skipped[0]}' which was was not specified in --target list."
            failure = StepFailed(message)
            self._fail_step(metadata, failure)
            raise failure

    def register(self, resource: dict, ignore_changes: list[str], additional_secret_outputs: list[str]) -> dict:
        """Runs the step for one registration; returns the resource's new state (raises StepFailed)."""
        urn, type_token = resource["urn"], resource["type"]
        with self._mutex:
            if urn in self.registered:
                raise ValueError(f"Duplicate resource URN '{urn}'; try giving it a unique name")
            self.registered.add(urn)
            old = self.old.get(urn)
        targeted = self._is_targeted(resource)
        if not targeted:
            if old is None:
                return self._skip_create(resource)
            # Untargeted: the resource keeps its previous state whatever the program says now.
            resource = copy.deepcopy(old)
            op, keys = "same", []
        elif old is None:
            op, keys = "create", []
        elif urn in self.replace_urns:
            op, keys = "replace", []
        elif type_token == ROOT_STACK_TYPE:
            op, keys = "same", []
        else:
            keys = changed_keys(old.get("inputs", {}), resource["inputs"], ignore_changes)
            op = "update" if keys else "same"
        metadata = self._step_metadata(op, urn, type_token, old, resource, keys)
        self._begin_step(metadata)
        started = time.monotonic()
        if targeted and self.target_patterns:
            with self._mutex:
                self.targeted.add(urn)
            self._check_not_skipped(resource, metadata)
        if op == "replace" and old.get("protect"):
            failure = StepFailed(protected_error(urn))
            self._fail_step(metadata, failure)
            raise failure
        simulated_cloud = resource.get("custom") and not type_token.startswith(PROVIDER_TYPE_PREFIX)
        if op in ("create", "update", "replace") and simulated_cloud and not self.preview:
            self._cloud_operation(metadata, resource, "create" if op == "replace" else op)
        now = _now()
        if op == "same":
            resource["id"] = old.get("id", "")
            resource["outputs"] = old.get("outputs", {})
        elif resource.get("custom"):
            existing_id = old.get("id") if old and op == "update" else None
            resource["id"], resource["outputs"] = self._simulate(resource, existing_id, additional_secret_outputs)
        else:
            resource["outputs"] = old.get("outputs", {}) if old else {}
        resource["created"] = old.get("created", now) if old and op != "replace" else now
        resource["modified"] = now if op != "same" else old.get("modified", now)
        with self._mutex:
            self.new[urn] = resource
            self.new_order.append(urn)
            self._save()
        self._end_step(self._step_metadata(op, urn, type_token, old, resource, keys), started)
        return resource

    def read(self, resource: dict) -> dict:
        """`Resource.get`: the simulated cloud's state of an existing resource, kept as external."""
        urn = resource["urn"]
        with self._mutex:
            self.registered.add(urn)
        old = self.old.get(urn)
        metadata = self._step_metadata("read", urn, resource["type"], old, resource, [])
        self._begin_step(metadata)
        started = time.monotonic()
        resource["id"], resource["outputs"] = self._simulate(resource, resource["id"], [])
        resource["external"] = True
        with self._mutex:
            self.new[urn] = resource
            self.new_order.append(urn)
            self._save()
        self._end_step(self._step_metadata("read", urn, resource["type"], old, resource, []), started)
        return resource

    def set_outputs(self, urn: str, outputs: dict) -> None:
        with self._mutex:
            if urn in self.new:
                self.new[urn]["outputs"] = outputs
                self._save()

    def default_provider(self, package: str, version: str) -> str:
        """The provider reference (`urn::id`) of the package's default provider, registering it once.

        A package that is not installed has no provider: the step fails as the CLI's does when it
        cannot load (or download) the plugin.
        """
        with self._mutex:
            if (package, version) in self.default_providers:
                return self.default_providers[(package, version)]
            name = "default_" + version.replace(".", "_").replace("-", "_") if version else "default"
            urn = f"urn:pulumi:{self.settings.stack}::{self.settings.project.name}::{PROVIDER_TYPE_PREFIX}{package}::{name}"
            inputs = {
                key.split(":", 1)[1]: entry.value
                for key, entry in self.settings.config.values.items()
                if key.startswith(package + ":") and not entry.secret
            }
            if version:
                inputs["version"] = version
            provider = {"urn": urn, "custom": True, "type": PROVIDER_TYPE_PREFIX + package, "inputs": inputs, "parent": ""}
            if not package_installed(package):
                old = self.old.get(urn)
                metadata = self._step_metadata("same" if old else "create", urn, provider["type"], old, provider, [])
                self._begin_step(metadata)
                failure = StepFailed(missing_plugin_error(package, version))
                self._fail_step(metadata, failure)
                raise failure
            state = self.register(provider, [], [])
            reference = f"{urn}::{state['id']}"
            self.default_providers[(package, version)] = reference
            return reference

    def delete(self, resource: dict) -> None:
        urn = resource["urn"]
        metadata = self._step_metadata("delete", urn, resource["type"], resource, None, [])
        self._begin_step(metadata)
        started = time.monotonic()
        if resource.get("protect"):
            failure = StepFailed(protected_error(urn))
            self._fail_step(metadata, failure)
            raise failure
        simulated_cloud = resource.get("custom") and not resource["type"].startswith(PROVIDER_TYPE_PREFIX)
        if simulated_cloud and not resource.get("external") and not self.preview:
            self._cloud_operation(metadata, resource, "delete")
        with self._mutex:
            self.deleted.add(urn)
            self._save()
        self._end_step(metadata, started)

    def _read(self, resource: dict) -> dict | None:
        """The resource as the provider's Read finds it now (None when it is gone); the cloud is not changed.

        Components and providers are not read (they never change on a refresh). The read reports
        inputs too, as TF-bridged providers do, so a property changed in the console differs in them.
        """
        refreshed = copy.deepcopy(resource)
        if not resource.get("custom") or resource["type"].startswith(PROVIDER_TYPE_PREFIX):
            return refreshed
        if resource_types.gone(resource["urn"]):
            return None
        refreshed["id"], refreshed["outputs"] = self._simulate(resource, resource.get("id"), [], reading=True)
        changed_inputs = resource_types.read_inputs(
            resource["type"], resource["urn"], properties.plain(resource.get("inputs", {})),
            properties.plain(refreshed["outputs"]),
        )
        refreshed.setdefault("inputs", {}).update(changed_inputs)
        return refreshed

    def refresh(self, resource: dict) -> dict | None:
        """`pulumi refresh` of one resource, as the engine's RefreshStep.

        The step's pre-event is a `refresh`; its outputs event carries the result: `delete` when the
        resource is gone (it leaves the state), `update` when the inputs read differ from those in the
        state (the diff against the desired state: `diffs`/`detailedDiff` name the properties), else
        `same`, even when only outputs changed (they are stored all the same). An external resource
        (`Resource.get`) is compared by its outputs, as the engine does.
        """
        urn = resource["urn"]
        self._begin_step(self._step_metadata("refresh", urn, resource["type"], resource, resource, []))
        started = time.monotonic()
        refreshed = self._read(resource)
        if refreshed is None:
            op, keys = "delete", []
        elif resource.get("external"):
            op, keys = ("same" if refreshed.get("outputs") == resource.get("outputs") else "update"), []
        else:
            keys = changed_keys(resource.get("inputs", {}), refreshed.get("inputs", {}), [])
            op = "update" if keys else "same"
        if refreshed is not None and refreshed != resource and not self.preview:
            refreshed["modified"] = _now()
        with self._mutex:
            if refreshed is None:
                self.deleted.add(urn)
            else:
                self.new[urn] = refreshed
                self.new_order.append(urn)
            self._save()
        self._end_step(self._step_metadata(op, urn, resource["type"], resource, refreshed, keys), started)
        return refreshed

    def _refresh_first(self) -> None:
        """--refresh: re-read the stack's resources before the operation, which starts from what was read
        (a resource found gone is not in the state any more: an update creates it again)."""
        for resource in self.old_order:
            self._print(f" {OP_PREFIX['refresh']} {resource['type']} {_name_of(resource['urn'])} refreshing")
            refreshed = self._read(resource)
            if refreshed is None:
                del self.old[resource["urn"]]
            else:
                self.old[resource["urn"]] = refreshed
        self.old_order = [self.old[resource["urn"]] for resource in self.old_order if resource["urn"] in self.old]

    # --- operations --------------------------------------------------------------------------

    def run_update(self) -> None:
        """`up` or `preview`: run the program, then delete what it no longer declares."""
        if self.settings.refresh:
            self._refresh_first()
        self.program_error = run_program(self)
        if self.failure or self.program_error:
            return
        self.check_targets()
        if self.failure:
            return
        for resource in reversed(self.old_order):
            if resource["urn"] not in self.registered and self._is_targeted(resource):
                self.delete(resource)

    def _destroy_targets(self) -> set[str] | None:
        """The URNs a targeted destroy deletes (with --target-dependents, their dependents too)."""
        if not self.target_patterns:
            return None
        chosen = {resource["urn"] for resource in self.old_order if self._matches_target(resource["urn"])}
        for resource in self.old_order:  # state order: dependencies come before their dependents
            if resource["urn"] not in chosen and chosen & set(dependencies_of(resource)):
                if not self.settings.target_dependents:
                    message = (
                        f"Resource '{resource['urn']}' will be destroyed but was not specified in --target list.\n"
                        "Either include resource in --target list or pass --target-dependents to proceed."
                    )
                    self.log_diagnostic("error", message, urn=resource["urn"])
                    self._record_failure(StepFailed(message))
                    return chosen
                chosen.add(resource["urn"])
        return chosen

    def run_destroy(self) -> None:
        if self.settings.refresh:
            self._refresh_first()
        self.check_targets()
        chosen = self._destroy_targets()
        if self.failure:
            return
        for resource in reversed(self.old_order):
            if resource["urn"] in self.settings.excluded or (chosen is not None and resource["urn"] not in chosen):
                continue
            self.delete(resource)

    def run_refresh(self) -> None:
        self.check_targets()
        if self.failure:
            return
        for resource in self.old_order:
            if not self.target_patterns or self._matches_target(resource["urn"]):
                self.refresh(resource)


def dependencies_of(resource: dict) -> list[str]:
    """The URNs a resource depends on: its parent, dependencies and provider."""
    dependencies = [resource.get("parent") or "", *(resource.get("dependencies") or [])]
    provider = resource.get("provider") or ""
    if provider:
        dependencies.append(provider.rsplit("::", 1)[0])
    return [urn for urn in dependencies if urn]


class ResourceMonitor(resource_pb2_grpc.ResourceMonitorServicer):
    """The monitor the program registers its resources with (semantics as pulumi.runtime.mocks.MockMonitor)."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    def _abort_if_failed(self, context) -> None:
        # After a failed step the engine stops: the program's further registrations see a monitor
        # that is shutting down, which the SDK treats as a quiet exit.
        if self.deployment.failure is not None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the deployment failed; resource monitor is shutting down")

    def _urn(self, type_token: str, name: str, parent: str) -> str:
        settings = self.deployment.settings
        qualified_type = type_token
        if parent:
            parent_type = parent.split("::")[2]
            if parent_type != ROOT_STACK_TYPE:
                qualified_type = f"{parent_type}${type_token}"
        return f"urn:pulumi:{settings.stack}::{settings.project.name}::{qualified_type}::{name}"

    def _provider_reference(self, type_token: str, provider: str, version: str) -> str:
        """The resource's provider: the one the program chose, else its package's default provider."""
        if type_token.startswith(PROVIDER_TYPE_PREFIX) or provider:
            return provider
        return self.deployment.default_provider(type_token.split(":", 1)[0], version)

    def GetDeploymentInfo(self, request, context):
        return resource_pb2.DeploymentInfo(supportedFeatures=[resource_pb2.RESOURCE_MONITOR_FEATURE_SECRETS])

    def SupportsFeature(self, request, context):
        return resource_pb2.SupportsFeatureResponse(hasSupport=request.id == "secrets")

    def RegisterResource(self, request, context):
        self._abort_if_failed(context)
        urn = self._urn(request.type, request.name, request.parent)
        try:
            resource = {
                "urn": urn,
                "custom": request.custom,
                "type": request.type,
                "inputs": from_struct(request.object),
                "parent": request.parent,
                "provider": (
                    self._provider_reference(request.type, request.provider, request.version) if request.custom else ""
                ),
                "dependencies": list(request.dependencies),
                "propertyDependencies": {key: list(deps.urns) for key, deps in request.propertyDependencies.items()},
            }
            if request.protect:
                resource["protect"] = True
            if request.deletedWith:
                resource["deletedWith"] = request.deletedWith
            state = self.deployment.register(
                resource, list(request.ignoreChanges), list(request.additionalSecretOutputs)
            )
        except StepFailed:
            self._abort_if_failed(context)
            raise
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        creating_in_preview = self.deployment.preview and urn not in self.deployment.old
        return resource_pb2.RegisterResourceResponse(
            urn=urn,
            id="" if creating_in_preview else state.get("id", ""),
            object=to_struct(state["outputs"]),
        )

    def RegisterResourceOutputs(self, request, context):
        self.deployment.set_outputs(request.urn, from_struct(request.outputs))
        return empty_pb2.Empty()

    def ReadResource(self, request, context):
        self._abort_if_failed(context)
        urn = self._urn(request.type, request.name, request.parent)
        try:
            resource = {
                "urn": urn,
                "custom": True,
                "type": request.type,
                "id": request.id,
                "inputs": from_struct(request.properties),
                "parent": request.parent,
                "provider": self._provider_reference(request.type, request.provider, request.version),
                "dependencies": list(request.dependencies),
            }
        except StepFailed:
            self._abort_if_failed(context)
            raise
        state = self.deployment.read(resource)
        return resource_pb2.ReadResourceResponse(urn=urn, id=state["id"], properties=to_struct(state["outputs"]))

    def Invoke(self, request, context):
        self._abort_if_failed(context)
        args = from_struct(request.args)
        if request.tok == "pulumi:pulumi:getResource":
            resource = next((res for res in self.deployment.current_resources() if res["urn"] == args.get("urn")), None)
            if resource is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"unknown resource {args.get('urn')}")
            result = {"urn": resource["urn"], "id": resource.get("id", ""), "state": resource.get("outputs", {})}
        else:
            result = resource_types.simulate_invoke(request.tok, properties.plain(args))
        return resource_pb2.ResourceInvokeResponse(**{"return": to_struct(result)})

    def Call(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the Pulumi CLI stand-in does not support resource method calls")

    def RegisterPackage(self, request, context):
        return resource_pb2.RegisterPackageResponse(ref=f"{request.name}@{request.version}")

    def SignalAndWaitForShutdown(self, request, context):
        return empty_pb2.Empty()


class EngineService(engine_pb2_grpc.EngineServicer):
    """Logging and the root resource, for the program."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.logged_errors: list[str] = []

    def Log(self, request, context):
        severity = LOG_SEVERITIES.get(request.severity, "info")
        if self.deployment.failure is None:
            if severity == "error":
                self.logged_errors.append(request.message)
            self.deployment.log_diagnostic(severity, request.message, urn=request.urn)
        return empty_pb2.Empty()

    def GetRootResource(self, request, context):
        return engine_pb2.GetRootResourceResponse(urn=self.deployment.root_urn or "")

    def SetRootResource(self, request, context):
        self.deployment.root_urn = request.urn
        return engine_pb2.SetRootResourceResponse()

    def RequirePulumiVersion(self, request, context):
        return engine_pb2.RequirePulumiVersionResponse()


def run_program(deployment: Deployment) -> str | None:
    """Runs the inline program through the language host; returns its error, if any, not yet reported."""
    settings = deployment.settings
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=GRPC_OPTIONS)
    monitor = ResourceMonitor(deployment)
    engine = EngineService(deployment)
    resource_pb2_grpc.add_ResourceMonitorServicer_to_server(monitor, server)
    engine_pb2_grpc.add_EngineServicer_to_server(engine, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    config = settings.config.decrypted()
    address = f"127.0.0.1:{port}"
    request = language_pb2.RunRequest(
        project=settings.project.name,
        stack=settings.stack,
        pwd=os.getcwd(),
        program=".",
        args=[address],
        config={
            key: entry.value if isinstance(entry.value, str) else json.dumps(entry.value)
            for key, entry in config.items()
        },
        configSecretKeys=[key for key, entry in config.items() if entry.secret],
        dryRun=deployment.preview,
        parallel=settings.parallel,
        monitor_address=address,
        organization="organization",
    )
    channel = grpc.insecure_channel(settings.client_address, options=GRPC_OPTIONS)
    try:
        response = language_pb2_grpc.LanguageRuntimeStub(channel).Run(request)
    except grpc.RpcError as error:
        # The language host raises instead of answering when the program was
        # still awaiting a registration we refused after a failed step.
        if deployment.failure is not None:
            return None
        return f"the program failed: {error.details()}"
    finally:
        channel.close()
    if deployment.failure is not None or not (response.error or response.bail):
        return None
    if response.error and response.error not in engine.logged_errors:
        deployment.log_diagnostic("error", response.error)
    return response.error or "the program failed"
