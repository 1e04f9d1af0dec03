"""The orchestrator's plain services: what the API, the worker and the CLI call.

They check tenancy and state, record operations in MongoDB before dispatching
them, and raise ServiceError subclasses that the API maps to status codes.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from mongoengine.errors import NotUniqueError

from orchestrator.auth import Principal
from orchestrator.engine import StackEngine
from orchestrator.ingest import read_samples
from orchestrator.models import Health, Instance, Operation, Snapshot, utcnow
from orchestrator.settings import Settings
from orchestrator.sshkeys import generate_keypair
from stacks.spec import LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, InstanceDoc, SpecError, parse_instance, parse_snapshot

MAX_PAGE = 500
# Deepest page a list may start at: MongoDB's skip takes 32-bit counts, and no real
# listing pages this far.
MAX_OFFSET = 1_000_000
MAX_LOG_LINES = 2000


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str, field: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.field = field


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Invalid(ServiceError):
    status_code = 422


def spec_error(error: SpecError) -> Invalid:
    first = error.errors[0] if error.errors else None
    return Invalid(str(error), field=getattr(first, "field", None))


def _label_filter(label: str) -> dict:
    """The query for `key=value`: an exact match on one label, the key and value checked as in documents.

    The key becomes a field path, so it must never be able to name an operator (`$where`,
    `__raw__`, `a__ne`) or another field (`a.b`): it is checked against the label key
    pattern and used as a literal path, never as mongoengine keyword syntax.
    """
    key, sep, value = label.partition("=")
    if not sep or not key:
        raise Invalid(f"label: filter {label!r} must be key=value", field="label")
    if not re.fullmatch(LABEL_KEY_PATTERN, key):
        raise Invalid(
            f"label: key {key!r}: lowercase letters, digits, '-' and '_', starting with a letter, at most 63 characters",
            field="label",
        )
    if not re.fullmatch(LABEL_VALUE_PATTERN, value):
        raise Invalid(f"label: value {value!r}: lowercase letters, digits, '-' and '_', at most 63 characters", field="label")
    return {f"labels.{key}": value}


@dataclass
class Page:
    items: list
    total: int
    limit: int
    offset: int


class Orchestrator:
    def __init__(self, settings: Settings, engine: StackEngine | None, dispatch: Callable[[str], bool]):
        self.settings = settings
        self.engine = engine
        self._dispatch = dispatch

    # -- helpers ----------------------------------------------------------

    def _visible(self, principal: Principal, owner: str) -> bool:
        return principal.is_admin or principal.name == owner

    def _instance(self, principal: Principal, name: str) -> Instance:
        instance = Instance.objects(name=name).first()
        # Another user's instance is reported as missing: names are not leaked.
        if instance is None or not self._visible(principal, instance.owner):
            raise NotFound(f"instance {name!r} not found")
        return instance

    def _snapshot(self, principal: Principal, name: str) -> Snapshot:
        snapshot = Snapshot.objects(name=name).first()
        if snapshot is None or not self._visible(principal, snapshot.owner):
            raise NotFound(f"snapshot {name!r} not found")
        return snapshot

    def _parse(self, document: dict) -> InstanceDoc:
        try:
            return parse_instance(document, enabled_clouds=self.settings.clouds)
        except SpecError as error:
            raise spec_error(error) from None

    def _check_base_snapshot(self, principal: Principal, parsed: InstanceDoc) -> None:
        name = parsed.spec.from_snapshot
        if not name:
            return
        snapshot = Snapshot.objects(name=name).first()
        if snapshot is None or not self._visible(principal, snapshot.owner):
            raise Invalid(f"spec.from_snapshot: snapshot {name!r} not found", field="spec.from_snapshot")
        if snapshot.status != "available":
            raise Invalid(
                f"spec.from_snapshot: snapshot {name!r} is {snapshot.status}, not available", field="spec.from_snapshot"
            )
        if snapshot.cloud != parsed.spec.cloud:
            raise Invalid(
                f"spec.from_snapshot: snapshot {name!r} is on {snapshot.cloud}, not {parsed.spec.cloud}",
                field="spec.from_snapshot",
            )

    def _record(self, kind: str, target: str, lock_key: str, owner: str, params: dict | None = None) -> Operation:
        op = Operation(kind=kind, target=target, lock_key=lock_key, owner=owner, params=params or {})
        op.save()
        return op

    def _send(self, op: Operation) -> None:
        # Recorded first, then dispatched: if the broker is down the operation
        # stays queued and the recovery sweep publishes it when it is back.
        if self._dispatch(str(op.id)):
            Operation.objects(id=op.id).update_one(set__dispatched_at=utcnow())

    # -- instances --------------------------------------------------------

    def create_instance(self, principal: Principal, document: dict) -> tuple[Instance, Operation]:
        parsed = self._parse(document)
        self._check_base_snapshot(principal, parsed)
        canonical = parsed.to_dict()
        existing = Instance.objects(name=parsed.name).first()
        if existing is not None and existing.status != "deleted":
            raise Conflict(f"instance {parsed.name!r} already exists", field="name")
        private_key, public_key = generate_keypair(f"orch@{parsed.name}")
        fields = dict(
            owner=principal.name,
            labels=canonical.get("labels") or {},
            spec=canonical["spec"],
            cloud=parsed.spec.cloud,
            region=parsed.spec.region,
            outputs={},
            public_ip=None,
            status_reason=None,
            admin_private_key=private_key,
            admin_public_key=public_key,
            agent_token_hash=None,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        if existing is not None:  # a deleted instance's name is reused
            if not self._visible(principal, existing.owner):
                raise Conflict(f"instance {parsed.name!r} already exists", field="name")
            existing.move_to("pending")
            for key, value in fields.items():
                setattr(existing, key, value)
            existing.generation += 1
            existing.health = Health()
            instance = existing
        else:
            instance = Instance(name=parsed.name, **fields)
        try:
            instance.save()
        except NotUniqueError:
            raise Conflict(f"instance {parsed.name!r} already exists", field="name") from None
        op = self._record("create", instance.name, f"instance:{instance.name}", principal.name)
        instance.operation_id = str(op.id)
        instance.save()
        self._send(op)
        return instance, op

    def update_instance(self, principal: Principal, name: str, document: dict) -> tuple[Instance, Operation | None]:
        instance = self._instance(principal, name)
        document = {"kind": "Instance", "name": name, "labels": instance.labels, **document}
        if document.get("name") != name:
            raise Invalid(f"name: cannot rename instance {name!r} to {document.get('name')!r}", field="name")
        parsed = self._parse(document)
        canonical = parsed.to_dict()
        if canonical["spec"].get("cloud") != instance.cloud:
            raise Invalid("spec.cloud: cannot move an instance to another cloud", field="spec.cloud")
        if canonical["spec"] == instance.spec and (canonical.get("labels") or {}) == (instance.labels or {}):
            return instance, None
        if instance.status not in ("running", "failed", "updating"):
            raise Conflict(f"instance {name!r} is {instance.status}; it can be updated once it is running or failed")
        self._check_base_snapshot(principal, parsed)
        previous = instance.spec
        instance.spec = canonical["spec"]
        instance.labels = canonical.get("labels") or {}
        instance.region = parsed.spec.region
        instance.generation += 1
        instance.updated_at = utcnow()
        op = self._record("update", name, f"instance:{name}", principal.name, {"previous_spec": previous})
        instance.operation_id = str(op.id)
        instance.save()
        self._send(op)
        return instance, op

    def delete_instance(self, principal: Principal, name: str) -> tuple[Instance, Operation]:
        instance = self._instance(principal, name)
        if instance.status in ("deleted", "deleting"):
            raise Conflict(f"instance {name!r} is already {instance.status}")
        op = self._record("delete", name, f"instance:{name}", principal.name)
        instance.operation_id = str(op.id)
        instance.updated_at = utcnow()
        instance.save()
        self._send(op)
        return instance, op

    def get_instance(self, principal: Principal, name: str) -> Instance:
        return self._instance(principal, name)

    def list_instances(
        self,
        principal: Principal,
        *,
        cloud: str | None = None,
        status: str | None = None,
        label: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page:
        query: dict = {}
        if not principal.is_admin:
            query["owner"] = principal.name
        if cloud:
            query["cloud"] = cloud
        if status:
            query["status"] = status
        queryset = Instance.objects(**query)
        if label is not None:  # an empty filter is a malformed one, not "no filter"
            queryset = queryset.filter(__raw__=_label_filter(label))
        limit = max(1, min(limit, MAX_PAGE))
        offset = max(0, min(offset, MAX_OFFSET))
        queryset = queryset.exclude("admin_private_key").order_by("-created_at")
        return Page(items=list(queryset.skip(offset).limit(limit)), total=queryset.count(), limit=limit, offset=offset)

    def stack(self, principal: Principal, name: str) -> dict:
        instance = self._instance(principal, name)
        inspected = self.engine.inspect(instance.stack_name)
        if inspected is None:
            return {"stack": instance.stack_name, "resources": [], "outputs": {}}
        return inspected

    def preview(self, principal: Principal, name: str, document: dict) -> dict:
        instance = self._instance(principal, name)
        document = {"kind": "Instance", "name": name, "labels": instance.labels, **document}
        parsed = self._parse(document)
        self._check_base_snapshot(principal, parsed)
        base_image_id = None
        if parsed.spec.from_snapshot:
            base_image_id = Snapshot.objects.get(name=parsed.spec.from_snapshot).image_id
        summary, steps = self.engine.preview_instance(
            parsed, admin_public_key=instance.admin_public_key or "", base_image_id=base_image_id
        )
        return {
            "stack": instance.stack_name,
            "changes": summary,
            "steps": [step.__dict__ for step in steps],
        }

    def metrics(
        self,
        principal: Principal,
        name: str,
        since: dt.datetime | None,
        until: dt.datetime | None,
        limit: int = 1000,
    ) -> list[dict]:
        instance = self._instance(principal, name)
        return read_samples(instance.name, since, until, max(1, min(limit, 10000)))

    # -- snapshots --------------------------------------------------------

    def create_snapshot(self, principal: Principal, instance_name: str, snapshot_name: str) -> tuple[Snapshot, Operation]:
        instance = self._instance(principal, instance_name)
        try:
            parsed = parse_snapshot({"kind": "Snapshot", "name": snapshot_name, "instance": instance_name})
        except SpecError as error:
            raise spec_error(error) from None
        if instance.status != "running":
            raise Conflict(f"instance {instance_name!r} is {instance.status}; snapshots need a running instance")
        existing = Snapshot.objects(name=parsed.name).first()
        if existing is not None and existing.status != "deleted":
            raise Conflict(f"snapshot {parsed.name!r} already exists", field="name")
        if existing is not None:
            existing.delete()
        snapshot = Snapshot(
            name=parsed.name,
            instance=instance.name,
            owner=instance.owner,
            cloud=instance.cloud,
            region=instance.region,
            source_outputs=instance.outputs,
        )
        try:
            snapshot.save()
        except NotUniqueError:
            raise Conflict(f"snapshot {parsed.name!r} already exists", field="name") from None
        # Locks the instance: no snapshot while an update is changing its disk.
        op = self._record(
            "snapshot_create", instance.name, f"instance:{instance.name}", principal.name, {"snapshot": snapshot.name}
        )
        snapshot.operation_id = str(op.id)
        snapshot.save()
        self._send(op)
        return snapshot, op

    def list_snapshots(self, principal: Principal, *, instance: str | None = None, limit: int = 100, offset: int = 0) -> Page:
        query: dict = {}
        if not principal.is_admin:
            query["owner"] = principal.name
        if instance:
            query["instance"] = instance
        limit = max(1, min(limit, MAX_PAGE))
        offset = max(0, min(offset, MAX_OFFSET))
        queryset = Snapshot.objects(**query).order_by("-created_at")
        return Page(items=list(queryset.skip(offset).limit(limit)), total=queryset.count(), limit=limit, offset=offset)

    def get_snapshot(self, principal: Principal, name: str) -> Snapshot:
        return self._snapshot(principal, name)

    def delete_snapshot(self, principal: Principal, name: str) -> tuple[Snapshot, Operation]:
        snapshot = self._snapshot(principal, name)
        if snapshot.status in ("deleted", "deleting"):
            raise Conflict(f"snapshot {name!r} is already {snapshot.status}")
        if snapshot.status == "pending":
            raise Conflict(f"snapshot {name!r} is still being taken; delete it once it is available or failed")
        if Instance.objects(spec__from_snapshot=name, status__nin=("deleted",)).first() is not None:
            raise Conflict(f"snapshot {name!r} is the base image of an instance that still exists")
        op = self._record("snapshot_delete", name, f"snapshot:{name}", principal.name)
        snapshot.operation_id = str(op.id)
        snapshot.save()
        self._send(op)
        return snapshot, op

    # -- operations -------------------------------------------------------

    def get_operation(self, principal: Principal, op_id: str) -> Operation:
        try:
            op = Operation.objects(id=op_id).first()
        except Exception:  # a malformed ObjectId
            op = None
        if op is None or not self._visible(principal, op.owner):
            raise NotFound(f"operation {op_id!r} not found")
        return op
