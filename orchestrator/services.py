"""The orchestrator's plain services: what the API, the worker and the CLI call.

They check tenancy and state, record operations in MongoDB before dispatching
them, and raise ServiceError subclasses that the API maps to status codes.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mongoengine.errors import NotUniqueError

from orchestrator import locks
from orchestrator.auth import USER_NAME, USER_NAME_RULE, Principal
from orchestrator.engine import EngineError, StackBusy, StackEngine, StackNotFound
from orchestrator.ingest import read_samples
from orchestrator.listing.keyset import DEFAULT_SORT, MAX_QUERY_CHARS, SORTS, CursorError, Keyset, name_contains
from orchestrator.metrics.windows import WINDOWS, window_since
from orchestrator.models import Instance, Operation, Snapshot, claim_key, utcnow
from orchestrator.settings import Settings
from orchestrator.sshkeys import generate_keypair
from stacks.spec import LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, InstanceDoc, SpecError, parse_instance, parse_snapshot

log = logging.getLogger("orch.services")

MAX_PAGE = 500
# A preview renews the instance's lock this many times per lease while it runs.
PREVIEW_LOCK_RENEWALS_PER_LEASE = 3
DEFAULT_PAGE = 50


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


class BadGateway(ServiceError):
    """The Pulumi CLI or its backend failed; the detail is the CLI's message."""

    status_code = 502


def engine_error(error: EngineError) -> ServiceError:
    """A stack lock held elsewhere is 409, a missing stack 404, any other engine failure 502."""
    if isinstance(error, StackBusy):
        return Conflict(str(error))
    if isinstance(error, StackNotFound):
        return NotFound(str(error))
    log.error("pulumi failed on a request: %s", error)  # a 5xx: the operator sees it too
    return BadGateway(f"pulumi failed: {error}")


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
    next_cursor: str | None


# The instance fields a listing shows: never the secrets, not the agent token's hash.
INSTANCE_LIST_EXCLUDES = ("admin_private_key", "admin_public_key", "agent_token_hash", "claim")


def _keyset_page(queryset, keyset: Keyset, cursor: str | None, limit: int, excludes: tuple[str, ...] = ()) -> Page:
    """One page of `queryset` in the keyset's order, after `cursor` (a 422 naming it when it is not ours)."""
    total = queryset.count()
    if cursor:
        try:
            after = keyset.after(cursor)
        except CursorError as error:
            raise Invalid(str(error), field="cursor") from None
        queryset = queryset.filter(__raw__=after)
    # One row more than the page says whether another page follows.
    rows = list(queryset.exclude(*excludes).order_by(*keyset.order()).limit(limit + 1))
    next_cursor = keyset.encode(rows[limit - 1]) if len(rows) > limit else None
    return Page(items=rows[:limit], total=total, limit=limit, next_cursor=next_cursor)


def _keyset(sort: str) -> Keyset:
    if sort not in SORTS:
        raise Invalid(f"sort: {sort!r} is not one of {', '.join(SORTS)}", field="sort")
    return Keyset.for_sort(sort)


def _query_text(q: str | None) -> dict | None:
    if q is None:
        return None
    if len(q) > MAX_QUERY_CHARS:
        raise Invalid(f"q: at most {MAX_QUERY_CHARS} characters", field="q")
    return name_contains(q)


class Orchestrator:
    def __init__(self, settings: Settings, engine: StackEngine | None, dispatch: Callable[[str], bool]):
        self.settings = settings
        self.engine = engine
        self._dispatch = dispatch

    # -- helpers ----------------------------------------------------------

    def _namespace(self, principal: Principal, owner: str | None, kind: str, name: str) -> str:
        """The owner whose names a request addresses: the requester's own, or (admins only) `owner`'s."""
        if owner is None or owner == principal.name:
            return principal.name
        # An owner named in a request (?owner=) follows the user-name rule; it becomes part of stack names.
        if not USER_NAME.fullmatch(owner):
            raise Invalid(f"owner: {owner!r} is not a user name ({USER_NAME_RULE})", field="owner")
        if not principal.is_admin:
            # The same answer whether or not that user has such a name: nothing leaks.
            raise NotFound(f"{kind} {name!r} not found (only admins address another owner's {kind}s)")
        return owner

    def _owner_filter(self, principal: Principal, owner: str | None) -> dict | None:
        """A listing's owner condition (an admin's lists every owner's unless `owner` names one).

        None when the listing is empty by tenancy: another user's names are simply not there for a user.
        """
        if principal.is_admin:
            return {"owner": owner} if owner else {}
        return {"owner": principal.name} if owner in (None, principal.name) else None

    def _instance(self, principal: Principal, name: str, owner: str | None = None) -> Instance:
        """The newest incarnation of `name` in the addressed namespace (a deleted one while none is newer)."""
        namespace = self._namespace(principal, owner, "instance", name)
        instance = Instance.objects(owner=namespace, name=name).order_by("-created_at").first()
        if instance is None:
            raise NotFound(f"instance {name!r} not found")
        return instance

    def _snapshot(self, principal: Principal, name: str, owner: str | None = None) -> Snapshot:
        namespace = self._namespace(principal, owner, "snapshot", name)
        snapshot = Snapshot.objects(owner=namespace, name=name).order_by("-created_at").first()
        if snapshot is None:
            raise NotFound(f"snapshot {name!r} not found")
        return snapshot

    def _parse(self, document: dict) -> InstanceDoc:
        try:
            return parse_instance(document, enabled_clouds=self.settings.clouds)
        except SpecError as error:
            raise spec_error(error) from None

    def _check_base_snapshot(self, owner: str, parsed: InstanceDoc) -> None:
        """An instance's base snapshot is one of its owner's."""
        name = parsed.spec.from_snapshot
        if not name:
            return
        snapshot = Snapshot.objects(owner=owner, claim=claim_key(owner, name)).first()
        if snapshot is None:
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

    def _record(
        self, principal: Principal, kind: str, target: Instance | Snapshot, lock_key: str, params: dict | None = None
    ) -> Operation:
        op = Operation(
            kind=kind,
            target=target.name,
            target_id=str(target.id),
            lock_key=lock_key,
            owner=target.owner,
            requested_by=principal.name,
            params=params or {},
        )
        op.save()
        return op

    def _send(self, op: Operation) -> None:
        # Recorded first, then dispatched: if the broker is down the operation
        # stays queued and the recovery sweep publishes it when it is back.
        if self._dispatch(str(op.id)):
            Operation.objects(id=op.id).update_one(set__dispatched_at=utcnow())

    # -- instances --------------------------------------------------------

    def create_instance(
        self, principal: Principal, document: dict, owner: str | None = None
    ) -> tuple[Instance, Operation]:
        parsed = self._parse(document)
        owner = self._namespace(principal, owner, "instance", parsed.name)
        self._check_base_snapshot(owner, parsed)
        canonical = parsed.to_dict()
        private_key, public_key = generate_keypair(f"orch@{parsed.name}")
        instance = Instance(
            name=parsed.name,
            owner=owner,
            claim=claim_key(owner, parsed.name),
            labels=canonical.get("labels") or {},
            spec=canonical["spec"],
            cloud=parsed.spec.cloud,
            region=parsed.spec.region,
            admin_private_key=private_key,
            admin_public_key=public_key,
        )
        try:
            # The atomic claim: of concurrent creates of one name, exactly one inserts.
            instance.save(force_insert=True)
        except NotUniqueError:
            raise Conflict(f"instance {parsed.name!r} already exists", field="name") from None
        op = self._record(principal, "create", instance, instance.lock_key, {"generation": instance.generation})
        instance.operation_id = str(op.id)
        instance.save()
        self._send(op)
        return instance, op

    def update_instance(
        self, principal: Principal, name: str, document: dict, owner: str | None = None
    ) -> tuple[Instance, Operation | None]:
        instance = self._instance(principal, name, owner)
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
        self._check_base_snapshot(instance.owner, parsed)
        previous = instance.spec
        instance.spec = canonical["spec"]
        instance.labels = canonical.get("labels") or {}
        instance.region = parsed.spec.region
        instance.generation += 1
        instance.updated_at = utcnow()
        op = self._record(
            principal,
            "update",
            instance,
            instance.lock_key,
            {"previous_spec": previous, "generation": instance.generation},
        )
        instance.operation_id = str(op.id)
        instance.save()
        self._send(op)
        return instance, op

    def delete_instance(self, principal: Principal, name: str, owner: str | None = None) -> tuple[Instance, Operation]:
        instance = self._instance(principal, name, owner)
        if instance.status in ("deleted", "deleting"):
            raise Conflict(f"instance {name!r} is already {instance.status}")
        op = self._record(principal, "delete", instance, instance.lock_key)
        instance.operation_id = str(op.id)
        instance.updated_at = utcnow()
        instance.save()
        self._send(op)
        return instance, op

    def get_instance(self, principal: Principal, name: str, owner: str | None = None) -> Instance:
        return self._instance(principal, name, owner)

    def list_instances(
        self,
        principal: Principal,
        *,
        cloud: str | None = None,
        status: str | None = None,
        label: str | None = None,
        q: str | None = None,
        include_deleted: bool = False,
        owner: str | None = None,
        sort: str = DEFAULT_SORT,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page:
        """Deleted instances stay as history documents; a listing hides them unless `include_deleted`
        (or a `status` filter asks for them), so it does not grow forever."""
        keyset = _keyset(sort)
        limit = max(1, min(limit, MAX_PAGE))
        query = self._owner_filter(principal, owner)
        if query is None:
            return Page(items=[], total=0, limit=limit, next_cursor=None)
        if cloud:
            query["cloud"] = cloud
        if status:
            query["status"] = status
        elif not include_deleted:
            query["status__ne"] = "deleted"
        queryset = Instance.objects(**query)
        if label is not None:  # an empty filter is a malformed one, not "no filter"
            queryset = queryset.filter(__raw__=_label_filter(label))
        if (text := _query_text(q)) is not None:
            queryset = queryset.filter(__raw__=text)
        return _keyset_page(queryset, keyset, cursor, limit, INSTANCE_LIST_EXCLUDES)

    def stack(self, principal: Principal, name: str, owner: str | None = None) -> dict:
        instance = self._instance(principal, name, owner)
        try:
            inspected = self.engine.inspect(instance.stack_name)
        except EngineError as error:
            raise engine_error(error) from None
        if inspected is None:
            return {"stack": instance.stack_name, "resources": [], "outputs": {}}
        return inspected

    @contextmanager
    def _preview_lock(self, instance: Instance) -> Iterator[None]:
        """Hold the instance's operation lock (renewed) for a preview; Conflict while an operation holds it."""
        lock_key = instance.lock_key
        holder = f"preview:{uuid.uuid4().hex}"
        lease_s = self.settings.operation_lease_s
        if not locks.acquire(lock_key, holder, lease_s):
            raise Conflict(f"an operation is running on instance {instance.name!r}; preview once it has finished")
        done = threading.Event()

        def renew() -> None:
            while not done.wait(lease_s / PREVIEW_LOCK_RENEWALS_PER_LEASE):
                locks.acquire(lock_key, holder, lease_s)

        renewer = threading.Thread(target=renew, name=f"preview-lock-{instance.name}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()
            locks.release(lock_key, holder)

    def preview(self, principal: Principal, name: str, document: dict, owner: str | None = None) -> dict:
        """What an update to `document` would change; changes nothing (stack config, backend, MongoDB).

        It holds the instance's lock meanwhile, so it sees the stack as no operation is changing it.
        """
        instance = self._instance(principal, name, owner)
        document = {"kind": "Instance", "name": name, "labels": instance.labels, **document}
        parsed = self._parse(document)
        self._check_base_snapshot(instance.owner, parsed)
        base_image_id = None
        if parsed.spec.from_snapshot:
            base_image_id = Snapshot.objects.get(claim=claim_key(instance.owner, parsed.spec.from_snapshot)).image_id
        with self._preview_lock(instance):
            try:
                summary, steps = self.engine.preview_instance(
                    instance.stack_name,
                    parsed,
                    admin_public_key=instance.admin_public_key or "",
                    base_image_id=base_image_id,
                )
            except StackNotFound:
                raise NotFound(
                    f"instance {name!r} has no stack {instance.stack_name!r} (never provisioned, rolled back or "
                    "removed): nothing to preview against"
                ) from None
            except EngineError as error:
                raise engine_error(error) from None
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
        owner: str | None = None,
        window: str | None = None,
    ) -> list[dict]:
        """The instance's samples (read by its id: a deleted namesake's are not its own), oldest first."""
        if window is not None and window not in WINDOWS:
            raise Invalid(f"window: {window!r} is not one of {', '.join(WINDOWS)}", field="window")
        instance = self._instance(principal, name, owner)
        since = window_since(window, since, utcnow())
        return read_samples(instance.agent_identity, since, until, max(1, min(limit, 10000)))

    # -- snapshots --------------------------------------------------------

    def create_snapshot(
        self, principal: Principal, instance_name: str, snapshot_name: str, owner: str | None = None
    ) -> tuple[Snapshot, Operation]:
        instance = self._instance(principal, instance_name, owner)
        try:
            parsed = parse_snapshot({"kind": "Snapshot", "name": snapshot_name, "instance": instance_name})
        except SpecError as error:
            raise spec_error(error) from None
        if instance.status != "running":
            raise Conflict(f"instance {instance_name!r} is {instance.status}; snapshots need a running instance")
        snapshot = Snapshot(
            name=parsed.name,
            instance=instance.name,
            owner=instance.owner,
            claim=claim_key(instance.owner, parsed.name),
            cloud=instance.cloud,
            region=instance.region,
            source_outputs=instance.outputs,
        )
        try:
            snapshot.save(force_insert=True)
        except NotUniqueError:
            raise Conflict(f"snapshot {parsed.name!r} already exists", field="name") from None
        # Locks the instance: no snapshot while an update is changing its disk.
        op = self._record(
            principal, "snapshot_create", instance, instance.lock_key, {"snapshot_id": str(snapshot.id)}
        )
        snapshot.operation_id = str(op.id)
        snapshot.save()
        self._send(op)
        return snapshot, op

    def list_snapshots(
        self,
        principal: Principal,
        *,
        instance: str | None = None,
        q: str | None = None,
        include_deleted: bool = False,
        owner: str | None = None,
        sort: str = DEFAULT_SORT,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page:
        """Deleted snapshots are hidden unless `include_deleted`, as for instances."""
        keyset = _keyset(sort)
        limit = max(1, min(limit, MAX_PAGE))
        query = self._owner_filter(principal, owner)
        if query is None:
            return Page(items=[], total=0, limit=limit, next_cursor=None)
        if instance:
            query["instance"] = instance
        if not include_deleted:
            query["status__ne"] = "deleted"
        queryset = Snapshot.objects(**query)
        if (text := _query_text(q)) is not None:
            queryset = queryset.filter(__raw__=text)
        return _keyset_page(queryset, keyset, cursor, limit, ("claim",))

    def get_snapshot(self, principal: Principal, name: str, owner: str | None = None) -> Snapshot:
        return self._snapshot(principal, name, owner)

    def delete_snapshot(self, principal: Principal, name: str, owner: str | None = None) -> tuple[Snapshot, Operation]:
        snapshot = self._snapshot(principal, name, owner)
        if snapshot.status in ("deleted", "deleting"):
            raise Conflict(f"snapshot {name!r} is already {snapshot.status}")
        if snapshot.status == "pending":
            raise Conflict(f"snapshot {name!r} is still being taken; delete it once it is available or failed")
        based_on = Instance.objects(owner=snapshot.owner, spec__from_snapshot=name, status__nin=("deleted",))
        if based_on.first() is not None:
            raise Conflict(f"snapshot {name!r} is the base image of an instance that still exists")
        op = self._record(principal, "snapshot_delete", snapshot, snapshot.lock_key)
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
        # Visible to the target's owner and to whoever requested it (an admin).
        if op is None or not (principal.is_admin or principal.name in (op.owner, op.requested_by)):
            raise NotFound(f"operation {op_id!r} not found")
        return op
