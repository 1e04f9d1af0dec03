"""MongoDB documents (mongoengine): instances, snapshots, operations, metrics, locks."""

from __future__ import annotations

import datetime as dt

import mongoengine as me

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
    "running": {"updating", "deleting", "running", "stopping"},
    "updating": {"running", "failed", "updating"},
    "failed": {"updating", "deleting", "pending", "stopping", "starting"},
    # Stop and start (orchestrator/operations/power.py): the stack stays, the machine is powered off.
    "stopping": {"stopped", "failed", "stopping"},
    "stopped": {"starting", "deleting", "stopped"},
    "starting": {"running", "failed", "starting"},
    "deleting": {"deleted", "failed", "deleting"},
    # Final: creating the name again makes a new document.
    "deleted": set(),
}

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


def claim_key(owner: str, name: str) -> str:
    """What an instance or snapshot that exists holds uniquely: its name in its owner's namespace."""
    return f"{owner}/{name}"


class Instance(me.Document):
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
    # Made by `orch serve --simulate`: its cloud resources are simulated (a sandbox host at most).
    simulated = me.BooleanField(default=False)

    meta = {
        "collection": "instances",
        # The listing's filters then its keyset sort (name or created_at, ties by _id), for a
        # user's own (owner first) and an admin's (status first); (owner, name, -created_at)
        # finds a name's newest incarnation. Label keys are free-form: a label filter is
        # served by the owner/status prefix and checked on those rows.
        "indexes": [
            ("owner", "name", "-created_at"),
            ("owner", "status", "name", "_id"),
            ("owner", "status", "created_at", "_id"),
            ("owner", "cloud", "status", "name", "_id"),
            ("status", "name", "_id"),
            ("status", "created_at", "_id"),
        ],
    }

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

    def document(self) -> dict:
        """The instance document as the user wrote it (kind, name, labels, spec)."""
        return {"kind": "Instance", "name": self.name, "labels": dict(self.labels or {}), "spec": dict(self.spec)}

    def move_to(self, status: str, reason: str | None = None) -> None:
        _check(INSTANCE_TRANSITIONS, "instance", self.name, self.status, status)
        self.status = status
        self.status_reason = reason
        self.updated_at = utcnow()


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


class Step(me.EmbeddedDocument):
    name = me.StringField(required=True)
    status = me.StringField(default="running", choices=("running", "succeeded", "failed", "skipped"))
    started_at = me.DateTimeField(default=utcnow)
    finished_at = me.DateTimeField()


OPERATION_KINDS = ("create", "update", "delete", "snapshot_create", "snapshot_delete", "stop", "start")


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
