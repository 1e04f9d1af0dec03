"""MongoDB documents (mongoengine): instances, snapshots, operations, metrics, locks."""

from __future__ import annotations

import datetime as dt
import functools

import mongoengine as me
from bson import ObjectId
from pymongo import UpdateOne

from orchestrator.listing.keyset import KEY_FIELDS, incarnations_range, list_key
from orchestrator.secretfield import EncryptedStringField


def utcnow() -> dt.datetime:
    # Naive UTC: BSON dates carry no zone, so what we store is what we read back.
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class IllegalTransition(Exception):
    """A status change that the state machine does not allow."""


INSTANCE_TRANSITIONS: dict[str, set[str]] = {
    "pending": {"provisioning", "failed", "deleting"},
    "provisioning": {"configuring", "running", "failed", "pending"},
    "configuring": {"running", "failed", "provisioning"},
    "running": {"updating", "deleting", "running", "stopping", "refreshing", "preempted"},
    # An update (and a reconcile, orchestrator/operations/reconcile.py) ends as the spec says: running or stopped.
    "updating": {"running", "stopped", "failed", "updating"},
    "failed": {"updating", "deleting", "pending", "stopping", "starting", "refreshing", "preempted"},
    # Stop and start (orchestrator/operations/power.py): the stack stays, the machine is powered off.
    "stopping": {"stopped", "failed", "stopping"},
    "stopped": {"starting", "deleting", "stopped", "refreshing"},
    "starting": {"running", "failed", "starting"},
    "deleting": {"deleted", "failed", "deleting"},
    # Drift (orchestrator/operations/refresh.py, reconcile.py): a refresh goes back to where it came
    # from, or finds the resources changed (drifted) or the machine gone (lost) outside orch, or a
    # spot machine taken (preempted, orchestrator/operations/preemption.py). Drifted and lost are
    # reconciled by an update (`pulumi up` of the spec: a lost machine is created again) or deleted.
    "refreshing": {"running", "stopped", "failed", "drifted", "lost", "preempted", "refreshing"},
    "drifted": {"updating", "deleting", "refreshing"},
    "lost": {"updating", "deleting"},
    # [spot] The cloud took a spot instance (orchestrator/operations/preemption.py): restarted (starting),
    # deleted, or kept as it is; a refresh (drift's) may look at it again.
    "preempted": {"starting", "deleting", "refreshing", "preempted"},
    # Final: creating the name again makes a new document.
    "deleted": set(),
}

# The statuses whose move to running means the machine (and its agent) just came up; a refresh or
# an update that ends running leaves the machine as it was.
POWERED_ON_FROM = ("provisioning", "configuring", "starting")

SNAPSHOT_TRANSITIONS: dict[str, set[str]] = {
    "pending": {"available", "failed", "pending"},
    "available": {"deleting"},
    "failed": {"deleting", "pending"},
    "deleting": {"deleted", "failed", "deleting"},
    "deleted": set(),
}


def _check(transitions: dict[str, set[str]], kind: str, name: str, current: str, new: str) -> None:
    if new not in transitions.get(current, set()):
        raise IllegalTransition(f"{kind} {name} cannot go from {current} to {new}")


class Health(me.EmbeddedDocument):
    # The state (healthy / unreachable) is derived from last_report_at when read.
    last_report_at = me.DateTimeField()
    last_report = me.DictField()


class AutostopState(me.EmbeddedDocument):
    """What the idle checker (orchestrator/autostop) last found: shown on the instance, kept across passes."""

    checked_at = me.DateTimeField()
    # The start of the current run of idle reports (None while busy or unknown).
    idle_since = me.DateTimeField()
    # Why reports are not counted as idle (missing, gaps, no GPU figures): shown on the instance.
    warning = me.StringField()
    # The notice sent to the instance's users before acting (its id is what the agent remembers).
    warned_at = me.DateTimeField()
    notice_id = me.StringField()
    notice_message = me.StringField()
    # When it started the stop or delete (the operation's id is the instance's operation_id).
    decided_at = me.DateTimeField()


def claim_key(owner: str, name: str) -> str:
    """What an instance or snapshot that exists holds uniquely: its name in its owner's namespace."""
    return f"{owner}/{name}"


class InstanceNames:
    """The names an instance is known by, derived from its owner, name and id."""

    @property
    def stack_name(self) -> str:
        return f"instance-{self.owner}.{self.name}"

    @property
    def lock_key(self) -> str:
        # Per name, not per incarnation: operations on one stack never overlap.
        return f"instance:{claim_key(self.owner, self.name)}"

    @property
    def agent_identity(self) -> str:
        """The `sub` of its agent tokens and the `instance` of its agent's reports (unique per incarnation)."""
        return str(self.id)


@functools.cache
def _field_specs(document_class: type) -> dict[str, tuple[str, object, type | None]]:
    """Field name -> (stored key, default, embedded document class or None), per document class."""
    return {
        name: (field.db_field, field.default,
               field.document_type if isinstance(field, me.EmbeddedDocumentField) else None)
        for name, field in document_class._fields.items()
    }


class StoredRow:
    """A stored document's fields as its mongoengine document gives them (the field's default where the
    document has none, embedded documents as rows too), read straight from the stored dict: building
    the document (validation, change tracking) cost a list page more than the rest of its work."""

    __slots__ = ("_row", "_fields")

    def __init__(self, row: dict, document_class: type[me.Document] | type[me.EmbeddedDocument]):
        self._row = row
        self._fields = _field_specs(document_class)

    def __getattr__(self, name: str):
        try:
            key, default, embedded = self._fields[name]
        except KeyError:
            raise AttributeError(name) from None
        if key in self._row:
            value = self._row[key]
            return StoredRow(value, embedded) if embedded is not None and isinstance(value, dict) else value
        return default() if callable(default) else default


class StoredInstance(InstanceNames, StoredRow):
    """An instance as stored, read-only (a list page's rows)."""

    __slots__ = ()

    def __init__(self, row: dict):
        super().__init__(row, Instance)


class Instance(InstanceNames, me.Document):
    # Names are unique per owner (docs/DESIGN.md, "Names and owners"). Each
    # incarnation of a name is its own document: a deleted one stays as history.
    name = me.StringField(required=True)
    owner = me.StringField(required=True)
    # claim_key(owner, name) while this incarnation exists, unset once deleted:
    # the unique index lets exactly one concurrent create of a name win, and a
    # deleted name can be created again.
    claim = me.StringField(unique=True, sparse=True)
    labels = me.DictField()
    spec = me.DictField(required=True)
    cloud = me.StringField(required=True)
    region = me.StringField(required=True)
    status = me.StringField(required=True, default="pending", choices=tuple(INSTANCE_TRANSITIONS))
    status_reason = me.StringField()
    outputs = me.DictField()
    public_ip = me.StringField()
    health = me.EmbeddedDocumentField(Health, default=Health)
    generation = me.IntField(default=1)
    # The latest generation whose configuration (Ansible, agent; none with
    # `configure: false`) is known to be in place: None while no create or update
    # has succeeded, and an update configures again unless it is generation - 1.
    configured_generation = me.IntField()
    operation_id = me.StringField()
    # The service's SSH key for configuring this instance (Ansible), and the
    # hash of the agent token it was given: the token itself is never stored.
    admin_private_key = EncryptedStringField()  # encrypted at rest with the store key
    admin_public_key = me.StringField()
    agent_token_hash = me.StringField()
    agent_token_expires_at = me.DateTimeField()
    created_at = me.DateTimeField(default=utcnow)
    updated_at = me.DateTimeField(default=utcnow)
    # When the machine last came up (created or started): its agent's first report is due from then.
    running_since = me.DateTimeField()
    # Made by `orch serve --simulate`: its cloud resources are simulated (a sandbox host at most).
    simulated = me.BooleanField(default=False)
    # Idle autostop's findings (spec.autostop): unset on an instance without it.
    autostop_state = me.EmbeddedDocumentField(AutostopState)
    # Zone failover (orchestrator/operations/failover.py): the zone of a zone list (spec.zones or
    # spec.any_zone) its create is trying or landed in, and each place tried: {region, zone, outcome,
    # error}. With region failover (spec.regions) `region` above is likewise the one tried, then landed in.
    zone = me.StringField()
    zone_attempts = me.ListField(me.DictField())
    # The last refresh's findings (orchestrator/operations/refresh.py): {checked_at, differences:
    # [{resource, property, expected, actual}], lost}; None until refreshed, and again once reconciled.
    drift = me.DictField(default=None, null=True)
    # When the periodic refresh last requested a refresh of it: the claim that two service processes share.
    refresh_requested_at = me.DateTimeField()
    # [spot] When the cloud last took this spot instance, and who said so (an agent's notice or a refresh).
    preempted_at = me.DateTimeField()
    preemption_source = me.StringField()
    # [spot] The on_preemption action's operation, {operation_id, kind, params}, from the moment the
    # instance is marked preempted until that operation is recorded (a crash in between is finished
    # by the recovery sweep: orchestrator/operations/preemption.py, record_unrecorded_actions).
    preemption_action = me.DictField(default=None, null=True)
    # A user's listing in name and in created_at order, one indexed string each (listing/keyset.py,
    # "owner state value id"): set on every save from owner, status, name, created_at and the id,
    # so those fields change only through save() (a raw update would leave the keys stale).
    list_key_name = me.StringField()
    list_key_created = me.StringField()

    meta = {
        "collection": "instances",
        # The listing's filters then its keyset sort (name or created_at, ties by _id), for a
        # user's own (owner first) and an admin's (status first); a name's incarnations are
        # a range of the name key (newest_incarnation). Label keys are free-form:
        # a label filter is served by the owner/status prefix and checked on those rows.
        "indexes": [
            ("owner", "status", "name", "_id"),
            ("owner", "status", "created_at", "_id"),
            ("owner", "cloud", "status", "name", "_id"),
            ("status", "name", "_id"),
            ("status", "created_at", "_id"),
            # The periodic refresh's pass: refreshable statuses, oldest request first.
            ("status", "refresh_requested_at"),
            *KEY_FIELDS.values(),
        ],
    }

    def list_keys(self) -> dict[str, str]:
        deleted = self.status == "deleted"
        return {
            key_field: list_key(self.owner, deleted, getattr(self, sort_field), self.id)
            for sort_field, key_field in KEY_FIELDS.items()
        }

    def set_list_keys(self) -> None:
        """What save() does first (and what a seed writing documents straight into a store must do)."""
        if self.id is None:
            self.id = ObjectId()  # the keys end with it
        for key_field, key in self.list_keys().items():
            setattr(self, key_field, key)

    def save(self, *args, **kwargs):
        self.set_list_keys()
        return super().save(*args, **kwargs)

    @classmethod
    def newest_incarnation(cls, owner: str, name: str) -> Instance | None:
        """The instance `owner` calls `name`: the live one, else the newest deleted one, else None.

        Each is a range of the name key ("owner state name id", newest id last), which one index
        serves here and on a MongoDB server (the embedded store answers an (owner, name) query
        sorted by created_at with a scan of the collection).
        """
        for deleted in (False, True):
            found = cls.objects(__raw__=incarnations_range(owner, name, deleted)).order_by("-list_key_name").first()
            if found is not None:
                return found
        return None

    def document(self, *, placed: bool = True) -> dict:
        """The instance document as the user wrote it (kind, name, labels, spec).

        `placed`: a spec with a zone list (zone failover) names the zone this instance is in
        instead, once it has one, so every later `pulumi up` keeps it where it landed; a spec with
        a region list (region failover) names the record's region (the one tried, then landed in).
        """
        spec = dict(self.spec)
        lists_zones = spec.get("zones") or spec.get("any_zone")
        if placed and lists_zones and self.zone:
            spec.update(zone=self.zone, zones=None, any_zone=False)
            if spec.get("regions"):
                spec.update(region=self.region, regions=None)
        elif placed and spec.get("regions") and not lists_zones:  # each region in its default zone
            spec.update(region=self.region, regions=None, zone=None)
        return {"kind": "Instance", "name": self.name, "labels": dict(self.labels or {}), "spec": spec}

    def has_place(self) -> bool:
        """Placed by an earlier operation (a machine's outputs, or a zone): failover does not move it."""
        return bool(self.zone or self.outputs)

    def move_to(self, status: str, reason: str | None = None) -> None:
        _check(INSTANCE_TRANSITIONS, "instance", self.name, self.status, status)
        now = utcnow()
        if status == "running" and self.status in POWERED_ON_FROM:
            self.running_since = now
        self.status = status
        self.status_reason = reason
        self.updated_at = now


class Snapshot(me.Document):
    # Unique per owner, one document per incarnation, like instances.
    name = me.StringField(required=True)
    instance = me.StringField(required=True)  # the source instance's name (same owner)
    owner = me.StringField(required=True)
    claim = me.StringField(unique=True, sparse=True)
    status = me.StringField(required=True, default="pending", choices=tuple(SNAPSHOT_TRANSITIONS))
    cloud = me.StringField(required=True)
    region = me.StringField()
    image_id = me.StringField()
    source_instance_id = me.StringField()
    source_outputs = me.DictField()
    # The source instance's disk size when the snapshot was taken: instances from it get at least as much.
    disk_gb = me.IntField()
    error = me.StringField()
    operation_id = me.StringField()
    created_at = me.DateTimeField(default=utcnow)
    updated_at = me.DateTimeField(default=utcnow)

    meta = {
        "collection": "snapshots",
        # As for instances: a name's newest incarnation, then the listing's filters and keyset sorts.
        "indexes": [
            ("owner", "name", "-created_at"),
            ("owner", "status", "name", "_id"),
            ("owner", "status", "created_at", "_id"),
            ("owner", "instance", "status"),
            ("status", "name", "_id"),
            ("status", "created_at", "_id"),
        ],
    }

    @property
    def stack_name(self) -> str:
        return f"snapshot-{self.owner}.{self.name}"

    @property
    def lock_key(self) -> str:
        return f"snapshot:{claim_key(self.owner, self.name)}"

    def move_to(self, status: str, error: str | None = None) -> None:
        _check(SNAPSHOT_TRANSITIONS, "snapshot", self.name, self.status, status)
        self.status = status
        self.error = error
        self.updated_at = utcnow()


def upgrade_names() -> None:
    """Bring a store written before names were unique per owner up to date (idempotent).

    Drops the old unique index on `name` alone, which would refuse another owner's
    name, and gives each instance and snapshot that exists its claim.
    """
    for document in (Instance, Snapshot):
        collection = document._get_collection()
        if "name_1" in collection.index_information():
            collection.drop_index("name_1")
        unclaimed = collection.find({"claim": {"$exists": False}, "status": {"$ne": "deleted"}}, {"owner": 1, "name": 1})
        for row in unclaimed:
            collection.update_one({"_id": row["_id"]}, {"$set": {"claim": claim_key(row["owner"], row["name"])}})


# Documents per round trip when backfilling listing keys.
UPGRADE_BATCH = 500


def upgrade_list_keys() -> int:
    """Give each instance written before the listing keys its keys (idempotent); returns how many."""
    collection = Instance._get_collection()
    fields = {"owner": 1, "status": 1, "name": 1, "created_at": 1}
    missing = collection.find({"$or": [{key: {"$exists": False}} for key in KEY_FIELDS.values()]}, fields)
    count, updates = 0, []
    for row in missing:
        keys = Instance(id=row["_id"], **{field: row.get(field) for field in fields}).list_keys()
        updates.append(UpdateOne({"_id": row["_id"]}, {"$set": keys}))
        if len(updates) == UPGRADE_BATCH:
            count += collection.bulk_write(updates, ordered=False).modified_count
            updates = []
    if updates:
        count += collection.bulk_write(updates, ordered=False).modified_count
    return count


class Step(me.EmbeddedDocument):
    name = me.StringField(required=True)
    status = me.StringField(default="running", choices=("running", "succeeded", "failed", "skipped"))
    started_at = me.DateTimeField(default=utcnow)
    finished_at = me.DateTimeField()
    # What a finished step found, e.g. the cloud's error of a zone failover attempt.
    detail = me.StringField()


OPERATION_KINDS = (
    "create", "update", "delete", "snapshot_create", "snapshot_delete", "stop", "start", "refresh", "reconcile",
)


class Operation(me.Document):
    kind = me.StringField(required=True, choices=OPERATION_KINDS)
    # The target's name and document id: the instance for instance and
    # snapshot-create operations, the snapshot for snapshot deletes. It is also
    # what the operation locks (lock_key).
    target = me.StringField(required=True)
    target_id = me.StringField(required=True)
    lock_key = me.StringField(required=True)
    # The target's owner, and who asked (an admin may act on a user's instance):
    # both may read the operation.
    owner = me.StringField(required=True)
    requested_by = me.StringField()
    status = me.StringField(default="queued", choices=("queued", "running", "succeeded", "failed"))
    params = me.DictField()
    steps = me.EmbeddedDocumentListField(Step)
    logs = me.ListField(me.StringField())
    error = me.StringField()
    attempts = me.IntField(default=0)
    worker = me.StringField()
    lease_expires_at = me.DateTimeField()
    dispatched_at = me.DateTimeField()
    created_at = me.DateTimeField(default=utcnow)
    updated_at = me.DateTimeField(default=utcnow)

    meta = {
        "collection": "operations",
        "indexes": [("status", "lease_expires_at"), ("lock_key", "created_at"), "target_id", "owner"],
    }


class Lock(me.Document):
    """A lease on an instance or snapshot: operations on one target never overlap."""

    key = me.StringField(primary_key=True)
    holder = me.StringField(required=True)
    expires_at = me.DateTimeField(required=True)

    meta = {"collection": "locks"}


class MetricBatch(me.Document):
    """The agent reports one flush stored, as one compressed blob.

    One document per flush rather than per report keeps storage cost per
    batch: 2,000 reports/s are two inserts a second, even on the embedded store.
    """

    flushed_at = me.DateTimeField(required=True)
    instances = me.ListField(me.StringField())
    ts_min = me.DateTimeField(required=True)
    ts_max = me.DateTimeField(required=True)
    count = me.IntField(required=True)
    data = me.BinaryField(required=True)  # zlib(JSON [[instance, ts ISO, report], ...])

    meta = {
        "collection": "metric_batches",
        "indexes": [
            ("instances", "ts_max"),
            # Samples expire after 7 days.
            {"fields": ["flushed_at"], "expireAfterSeconds": 7 * 24 * 3600},
        ],
    }


class MetricBucket(me.Document):
    """One instance's raw samples in one time bucket (orchestrator/metrics/store.py).

    `_id` is "<instance id>:<bucket start, epoch s>", so a read finds an instance's
    buckets by key alone. `data` is length-prefixed zlib frames of [ts, report] rows,
    few fields per document on purpose (the embedded store copies every value on update).
    """

    id = me.StringField(primary_key=True)
    instance = me.StringField(required=True)
    start = me.DateTimeField(required=True)
    count = me.IntField(required=True)
    rolled = me.BooleanField(default=False)
    data = me.BinaryField(required=True)

    meta = {"collection": "metric_buckets", "indexes": ["start"]}


class MetricRollup(me.Document):
    """One instance's rollup points (min/avg/max per rollup width) of one day; `_id` "<instance id>:<day, epoch s>"."""

    id = me.StringField(primary_key=True)
    instance = me.StringField(required=True)
    day = me.DateTimeField(required=True)
    data = me.BinaryField(required=True)  # zlib(JSON {slot epoch s: point})

    meta = {"collection": "metric_rollups", "indexes": ["day"]}


class UserToken(me.Document):
    """A user token minted by `orch token create --user`: listed by `orch token list`, revoked by jti."""

    jti = me.StringField(primary_key=True)
    user = me.StringField(required=True)
    role = me.StringField(required=True, choices=("user", "admin"))
    issued_at = me.DateTimeField(required=True)
    expires_at = me.DateTimeField(required=True)
    revoked_at = me.DateTimeField()

    meta = {
        "collection": "user_tokens",
        "indexes": [
            "revoked_at",
            # An expired token is refused anyway; its record goes an hour later.
            {"fields": ["expires_at"], "expireAfterSeconds": 3600},
        ],
    }


class SigninCode(me.Document):
    """A one-time sign-in code `orch serve` prints on embedded defaults (docs/DESIGN.md, "Web page").

    Only its SHA-256 is stored; redeeming it sets used_at, atomically, so it signs in once.
    """

    code_hash = me.StringField(primary_key=True)
    user = me.StringField(required=True)
    created_at = me.DateTimeField(default=utcnow)
    expires_at = me.DateTimeField(required=True)
    used_at = me.DateTimeField()

    meta = {
        "collection": "signin_codes",
        # A code past its expiry signs nobody in; its record goes a day later.
        "indexes": [{"fields": ["expires_at"], "expireAfterSeconds": 24 * 3600}],
    }
