"""The orchestrator's plain services: what the API, the worker and the CLI call.

They check tenancy and state, record operations in MongoDB before dispatching
them, and raise ServiceError subclasses that the API maps to status codes.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mongoengine.errors import NotUniqueError

from orchestrator import locks
from orchestrator.auth import USER_NAME, USER_NAME_RULE, Principal
from orchestrator.engine import EngineError, StackBusy, StackEngine, StackNotFound
from orchestrator.listing.keyset import DEFAULT_SORT, MAX_QUERY_CHARS, SORTS, CursorError, Keyset, name_contains
from orchestrator.metrics.store import read_rollups, read_samples
from orchestrator.metrics.windows import ROLLUP_WINDOWS, WINDOWS, window_since
from orchestrator.models import Instance, Operation, Snapshot, StoredInstance, claim_key, utcnow
from orchestrator.settings import Settings
from orchestrator.sshkeys import generate_keypair
from stacks.spec import (
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    InstanceDoc,
    SpecError,
    parse_instance,
    parse_snapshot,
    Placement,
    placed,
    placements,
)

log = logging.getLogger("orch.services")

MAX_PAGE = 500
# GET /instances/{name}/operations: the default and the largest page.
OPERATIONS_PAGE = 20
MAX_OPERATIONS_PAGE = 100
# Statuses a refresh may start from (orchestrator/operations/refresh.py), and those reconcile fixes.
REFRESHABLE_STATUSES = ("running", "stopped", "failed", "drifted", "preempted")
RECONCILABLE_STATUSES = ("drifted", "lost")
# A preview renews the instance's lock this many times per lease while it runs.
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
INSTANCE_LIST_EXCLUDES = (
    "admin_private_key", "admin_public_key", "agent_token_hash", "claim", "list_key_name", "list_key_created",
)


def _count(queryset) -> int:
    """How many documents match, with the `count` command.

    mongoengine's count() sends count_documents' aggregate pipeline ($match, $group), which the
    embedded store runs as a scan of the collection; it serves the `count` command with the plan
    a find of the same filter gets (a listing's key range: from the index). A MongoDB server
    answers either from the index.
    """
    collection = queryset._document._get_collection()
    return int(collection.database.command("count", collection.name, query=queryset._query)["n"])


def _page_rows(queryset, row_type) -> list:
    """The documents of `queryset`, or with `row_type` (StoredInstance) its rows over the stored dicts."""
    if row_type is None:
        return list(queryset)
    return [row_type(row) for row in queryset.as_pymongo()]


def _keyset_page(
    queryset, keyset: Keyset, cursor: str | None, limit: int, excludes: tuple[str, ...] = (), row_type=None
) -> Page:
    """One page of `queryset` in the keyset's order, after `cursor` (a 422 naming it when it is not ours)."""
    total = _count(queryset)
    if cursor:
        try:
            after = keyset.after(cursor)
        except CursorError as error:
            raise Invalid(str(error), field="cursor") from None
        queryset = queryset.filter(__raw__=after)
    # One row more than the page says whether another page follows.
    rows = _page_rows(queryset.exclude(*excludes).order_by(*keyset.order()).limit(limit + 1), row_type)
    next_cursor = keyset.encode(rows[limit - 1]) if len(rows) > limit else None
    return Page(items=rows[:limit], total=total, limit=limit, next_cursor=next_cursor)


def _key_range_page(
    queryset, keyset: Keyset, owner: str, deleted: bool, cursor: str | None, limit: int, excludes: tuple[str, ...],
    row_type=None,
) -> Page:
    """_keyset_page for one owner's instances, as a range of their listing key (one index serves it)."""
    total = _count(queryset.filter(__raw__=keyset.key_range(owner, deleted)))
    try:
        page_range = keyset.key_range(owner, deleted, cursor)
    except CursorError as error:
        raise Invalid(str(error), field="cursor") from None
    rows = _page_rows(
        queryset.filter(__raw__=page_range).exclude(*excludes).order_by(keyset.key_order()).limit(limit + 1), row_type
    )
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
        instance = Instance.newest_incarnation(namespace, name)
        if instance is None:
            raise NotFound(f"instance {name!r} not found")
        return instance

    def _snapshot(self, principal: Principal, name: str, owner: str | None = None) -> Snapshot:
        namespace = self._namespace(principal, owner, "snapshot", name)
        # The live one by its claim (a unique index), else the newest deleted one.
        snapshot = Snapshot.objects(claim=claim_key(namespace, name)).first() or (
            Snapshot.objects(owner=namespace, name=name).order_by("-created_at").first()
        )
        if snapshot is None:
            raise NotFound(f"snapshot {name!r} not found")
        return snapshot

    def _parse(self, document: dict) -> InstanceDoc:
        try:
            parsed = parse_instance(document, enabled_clouds=self.settings.clouds)
        except SpecError as error:
            raise spec_error(error) from None
        autostop = parsed.spec.autostop
        if autostop is not None and autostop.idle_minutes < self.settings.autostop_min_idle_minutes:
            raise Invalid(
                f"spec.autostop.idle_minutes: must be at least {self.settings.autostop_min_idle_minutes:g} "
                "(ORCH_AUTOSTOP_MIN_IDLE_MINUTES)",
                field="spec.autostop.idle_minutes",
            )
        return parsed

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

    def _disk_from_snapshot(self, owner: str, parsed: InstanceDoc, document: dict, canonical: dict) -> None:
        """An instance from a snapshot gets the snapshot's disk size when it names none, and never a smaller one."""
        name = parsed.spec.from_snapshot
        snapshot = Snapshot.objects(owner=owner, claim=claim_key(owner, name)).first() if name else None
        if snapshot is None or snapshot.disk_gb is None:
            return
        spec = document.get("spec")
        given = spec.get("disk_gb") if isinstance(spec, dict) else None
        if given is None:
            canonical["spec"]["disk_gb"] = snapshot.disk_gb
        elif canonical["spec"]["disk_gb"] < snapshot.disk_gb:
            raise Invalid(
                f"spec.disk_gb: {canonical['spec']['disk_gb']} GB is smaller than the {snapshot.disk_gb} GB disk of "
                f"snapshot {name!r} (give at least {snapshot.disk_gb}, or leave disk_gb out to get that size)",
                field="spec.disk_gb",
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
        if parsed.spec.state != "running":
            raise Invalid(
                "spec.state: an instance is created running; stop it once it is (orch stop NAME, or apply again)",
                field="spec.state",
            )
        self._check_base_snapshot(owner, parsed)
        canonical = parsed.to_dict()
        self._disk_from_snapshot(owner, parsed, document, canonical)
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
            simulated=self.settings.simulated,
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
        self._disk_from_snapshot(instance.owner, parsed, document, canonical)
        if canonical["spec"].get("cloud") != instance.cloud:
            raise Invalid("spec.cloud: cannot move an instance to another cloud", field="spec.cloud")
        if canonical["spec"] == instance.spec and (canonical.get("labels") or {}) == (instance.labels or {}):
            if instance.status in RECONCILABLE_STATUSES:  # applying the spec again puts it back to the spec
                return self.reconcile_instance(principal, name, owner)
            return instance, None
        if {**canonical["spec"], "autostop": None} == {**instance.spec, "autostop": None} and (
            canonical.get("labels") or {}
        ) == (instance.labels or {}):
            # Autostop is the service's, not the stack's: changed in place, no operation; its findings
            # (and a warning given) start over under the new settings.
            if instance.status in ("deleting", "deleted"):
                raise Conflict(f"instance {name!r} is {instance.status}")
            instance.spec = canonical["spec"]
            instance.autostop_state = None
            instance.updated_at = utcnow()
            instance.save()
            return instance, None
        wanted_state = canonical["spec"]["state"]
        if wanted_state != instance.spec.get("state", "running"):
            # A power change is a stop or start of its own: the machine cannot be changed while it is off.
            if {**canonical["spec"], "state": None} != {**instance.spec, "state": None} or (
                canonical.get("labels") or {}
            ) != (instance.labels or {}):
                raise Invalid(
                    f"spec.state: change the state ({instance.spec.get('state', 'running')} -> {wanted_state}) "
                    "on its own, then the other fields (or the other way round)",
                    field="spec.state",
                )
            return self.set_power_state(principal, name, wanted_state, owner)
        if instance.status not in ("running", "failed", "updating", "drifted"):
            raise Conflict(f"instance {name!r} is {instance.status}; it can be updated once it is running or failed")
        # A drifted instance's update is a `pulumi up` of the new spec over the refreshed state: it fixes the drift too.
        instance.drift = None
        self._check_base_snapshot(instance.owner, parsed)
        previous = instance.spec
        instance.spec = canonical["spec"]
        instance.labels = canonical.get("labels") or {}
        regions = parsed.spec.regions
        if regions is not None and instance.has_place():
            # Region failover places a create; an update keeps the instance where it is (or is refused).
            if instance.region not in regions:
                raise Invalid(
                    f"spec.regions: instance {name!r} is in {instance.region}, which the list leaves out: an update "
                    "does not move an instance into a region list (add its region, or delete it and create it again)",
                    field="spec.regions",
                )
        else:
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

    def set_power_state(
        self, principal: Principal, name: str, state: str, owner: str | None = None
    ) -> tuple[Instance, Operation]:
        """Stop (state "stopped") or start ("running") an instance: an operation of its own, after no other."""
        instance = self._instance(principal, name, owner)
        kind = "stop" if state == "stopped" else "start"
        busy = Operation.objects(lock_key=instance.lock_key, status__in=("queued", "running")).first()
        if busy is not None:
            raise Conflict(f"instance {name!r} has a {busy.kind} operation {busy.status} ({busy.id}); {kind} it after")
        allowed = ("running", "failed") if kind == "stop" else ("stopped", "failed", "preempted")
        if instance.status not in allowed:
            raise Conflict(f"instance {name!r} is {instance.status}; only a {' or '.join(allowed)} instance can {kind}")
        previous = instance.spec
        instance.spec = {**instance.spec, "state": state}
        instance.generation += 1
        instance.updated_at = utcnow()
        op = self._record(
            principal, kind, instance, instance.lock_key, {"previous_spec": previous, "generation": instance.generation}
        )
        instance.operation_id = str(op.id)
        instance.save()
        self._send(op)
        return instance, op

    def _check_idle(self, instance: Instance, what: str) -> None:
        busy = Operation.objects(lock_key=instance.lock_key, status__in=("queued", "running")).first()
        if busy is not None:
            raise Conflict(
                f"instance {instance.name!r} has a {busy.kind} operation {busy.status} ({busy.id}); {what} it after"
            )

    def refresh_instance(self, principal: Principal, name: str, owner: str | None = None) -> tuple[Instance, Operation]:
        """`pulumi refresh` of the instance's stack: what changed outside orch (drift), as an operation."""
        instance = self._instance(principal, name, owner)
        self._check_idle(instance, "refresh")
        if instance.status not in REFRESHABLE_STATUSES:
            raise Conflict(
                f"instance {name!r} is {instance.status}; only a {', '.join(REFRESHABLE_STATUSES)} instance is refreshed"
            )
        return instance, self.request_refresh(principal.name, instance)

    def request_refresh(self, requested_by: str, instance: Instance) -> Operation:
        """Record and dispatch a refresh (the caller checked the instance's status and that it is idle)."""
        op = Operation(
            kind="refresh", target=instance.name, target_id=str(instance.id), lock_key=instance.lock_key,
            owner=instance.owner, requested_by=requested_by,
            params={"from_status": instance.status, "from_reason": instance.status_reason},
        )  # fmt: skip
        op.save()
        instance.operation_id = str(op.id)
        instance.save()
        self._send(op)
        return op

    def reconcile_instance(
        self, principal: Principal, name: str, owner: str | None = None
    ) -> tuple[Instance, Operation]:
        """Put a drifted or lost instance back to its spec (a `pulumi up`; a lost machine is created again)."""
        instance = self._instance(principal, name, owner)
        self._check_idle(instance, "reconcile")
        if instance.status not in RECONCILABLE_STATUSES:
            raise Conflict(
                f"instance {name!r} is {instance.status}: nothing to reconcile (only a drifted or lost instance is; "
                "refresh it to look for drift)"
            )
        op = self._record(principal, "reconcile", instance, instance.lock_key, {"from_status": instance.status})
        instance.operation_id = str(op.id)
        instance.updated_at = utcnow()
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
        region: str | None = None,
    ) -> Page:
        """Deleted instances stay as history documents; a listing hides them unless `include_deleted`
        (or a `status` filter asks for them), so it does not grow forever."""
        keyset = _keyset(sort)
        limit = max(1, min(limit, MAX_PAGE))
        query = self._owner_filter(principal, owner)
        if query is None:
            return Page(items=[], total=0, limit=limit, next_cursor=None)
        # One owner's listing, deleted instances or the others: a range of its listing key.
        keyed_owner = query.get("owner") if (status is not None or not include_deleted) else None
        if cloud:
            query["cloud"] = cloud
        if region:  # where it runs (region failover: where it landed); an equality match on the string
            query["region"] = region
        if status and not (keyed_owner and status == "deleted"):
            query["status"] = status
        elif not include_deleted and not keyed_owner:
            query["status__ne"] = "deleted"
        if keyed_owner:
            del query["owner"]  # in the key
        queryset = Instance.objects(**query)
        if label is not None:  # an empty filter is a malformed one, not "no filter"
            queryset = queryset.filter(__raw__=_label_filter(label))
        if (text := _query_text(q)) is not None:
            queryset = queryset.filter(__raw__=text)
        if keyed_owner:
            return _key_range_page(queryset, keyset, keyed_owner, status == "deleted", cursor, limit,
                                   INSTANCE_LIST_EXCLUDES, StoredInstance)
        return _keyset_page(queryset, keyset, cursor, limit, INSTANCE_LIST_EXCLUDES, StoredInstance)

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
    def _preview_lock(self, lock_key: str, busy: str, thread_name: str) -> Iterator[None]:
        """Hold lock_key (renewed) for a preview; Conflict(busy) while another holds it."""
        holder = f"preview:{uuid.uuid4().hex}"
        lease_s = self.settings.operation_lease_s
        if not locks.acquire(lock_key, holder, lease_s):
            raise Conflict(busy)
        try:
            with locks.renewed(lambda: locks.acquire(lock_key, holder, lease_s), lease_s, thread_name):
                yield
        finally:
            locks.release(lock_key, holder)

    def preview(self, principal: Principal, name: str, document: dict, owner: str | None = None) -> dict:
        """What an update to `document` would change; changes nothing (stack config, backend, MongoDB).

        It holds the instance's lock meanwhile, so it sees the stack as no operation is changing it.
        """
        instance = self._instance(principal, name, owner)
        document = {"kind": "Instance", "name": name, "labels": instance.labels, **document}
        # An instance placed by zone or region failover stays there: the preview is of the program there.
        parsed = placed(self._parse(document), Placement(instance.region, instance.zone) if instance.has_place() else None)
        self._check_base_snapshot(instance.owner, parsed)
        base_image_id = None
        if parsed.spec.from_snapshot:
            base_image_id = Snapshot.objects.get(claim=claim_key(instance.owner, parsed.spec.from_snapshot)).image_id
        busy = f"an operation is running on instance {instance.name!r}; preview once it has finished"
        with self._preview_lock(instance.lock_key, busy, f"preview-lock-{instance.name}"):
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

    def preview_create(self, principal: Principal, document: dict, owner: str | None = None) -> tuple[Instance, dict]:
        """What creating `document` would do: the same checks and refusals as create_instance, and the
        engine's preview of the new stack; nothing is stored, dispatched or left in the Pulumi backend."""
        parsed = self._parse(document)
        owner = self._namespace(principal, owner, "instance", parsed.name)
        self._check_base_snapshot(owner, parsed)
        if Instance.objects(claim=claim_key(owner, parsed.name)).only("id").first() is not None:
            raise Conflict(f"instance {parsed.name!r} already exists", field="name")
        canonical = parsed.to_dict()
        # A key of its own, as create would make: the previewed config is the one create would set.
        _, public_key = generate_keypair(f"orch@{parsed.name}")
        instance = Instance(
            name=parsed.name, owner=owner, labels=canonical.get("labels") or {}, spec=canonical["spec"],
            cloud=parsed.spec.cloud, region=parsed.spec.region, admin_public_key=public_key,
        )
        base_image_id = None
        if parsed.spec.from_snapshot:
            base_image_id = Snapshot.objects.get(claim=claim_key(owner, parsed.spec.from_snapshot)).image_id
        # One preview of a new name at a time: they share the name's scratch directory.
        busy = f"a preview of a new instance named {parsed.name!r} is running; try again once it has finished"
        with self._preview_lock(f"preview-new:{instance.lock_key}", busy, f"preview-new-{parsed.name}"):
            try:
                # With a zone or region list, the first attempt's place: what the create tries first.
                places = placements(parsed.spec)
                summary, steps = self.engine.preview_new_instance(
                    instance.stack_name, placed(parsed, places[0] if places else None), admin_public_key=public_key,
                    base_image_id=base_image_id,
                )
            except EngineError as error:
                raise engine_error(error) from None
        return instance, {"stack": instance.stack_name, "changes": summary, "steps": [step.__dict__ for step in steps]}

    def instance_operations(
        self, principal: Principal, name: str, limit: int = OPERATIONS_PAGE, owner: str | None = None
    ) -> list[Operation]:
        """The operations on this incarnation of `name` (its creates, updates, deletes, snapshots), newest first."""
        instance = self._instance(principal, name, owner)
        limit = max(1, min(limit, MAX_OPERATIONS_PAGE))
        return list(Operation.objects(target_id=str(instance.id)).order_by("-created_at").limit(limit))

    @staticmethod
    def operations_by_id(ids: list[str | None]) -> dict[str, Operation]:
        """The operations of these ids in one query (an instance list page's rows), without their log lines."""
        wanted = sorted({i for i in ids if i})
        if not wanted:
            return {}
        return {str(op.id): op for op in Operation.objects(id__in=wanted).exclude("logs", "params")}

    def metrics(
        self,
        principal: Principal,
        name: str,
        since: dt.datetime | None,
        until: dt.datetime | None,
        limit: int = 1000,
        owner: str | None = None,
        window: str | None = None,
        *,
        as_stored: bool = False,
    ) -> list:
        """The instance's samples (read by its id: a deleted namesake's are not its own), oldest first.

        Windows in ROLLUP_WINDOWS answer rollup points (min/avg/max per ORCH_METRICS_ROLLUP_S), the others raw reports;
        with `as_stored`, those reports are their stored JSON texts (msgspec.Raw), for an answer to pass through.
        """
        if window is not None and window not in WINDOWS:
            raise Invalid(f"window: {window!r} is not one of {', '.join(WINDOWS)}", field="window")
        instance = self._instance(principal, name, owner)
        since = window_since(window, since, utcnow())
        limit = max(1, min(limit, 10000))
        if window in ROLLUP_WINDOWS:
            return read_rollups(instance.agent_identity, since, until, limit)
        # An Orchestrator without settings (the store-level tests') reads with read_samples' defaults.
        timing = {} if self.settings is None else {"retention_s": self.settings.metrics_raw_retention_s,
                                                   "interval_s": self.settings.agent_report_interval_s}
        return read_samples(instance.agent_identity, since, until, limit, raw=as_stored, **timing)

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
            disk_gb=(instance.spec or {}).get("disk_gb"),
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
