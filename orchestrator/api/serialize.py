"""JSON shapes of the API's bodies (docs/DESIGN.md, "REST shapes").

Typed msgspec Structs, so the OpenAPI document at /schema is generated from the
same definitions the responses are encoded from. Times are ISO 8601 strings in UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

from orchestrator.ingest import health_state
from orchestrator.models import (
    INSTANCE_TRANSITIONS, OPERATION_KINDS, SNAPSHOT_TRANSITIONS, Instance, Operation, Snapshot, StoredInstance,
)
from orchestrator.operations.preemption import SOURCES as PREEMPTION_SOURCES
from stacks.catalog import CLOUDS
from stacks.spec import InstanceSpec, Name

InstanceStatus = Literal[tuple(INSTANCE_TRANSITIONS)]  # type: ignore[valid-type]
SnapshotStatus = Literal[tuple(SNAPSHOT_TRANSITIONS)]  # type: ignore[valid-type]
OperationKind = Literal[OPERATION_KINDS]  # type: ignore[valid-type]
OperationStatus = Literal["queued", "running", "succeeded", "failed"]
PreemptionSource = Literal[PREEMPTION_SOURCES]  # type: ignore[valid-type]
StepStatus = Literal["running", "succeeded", "failed", "skipped"]
CloudName = Literal[tuple(CLOUDS)]  # type: ignore[valid-type]

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.openapi.spec import Reference, Schema


@dataclass(frozen=True)
class DocumentedAs:
    """Marks a JSON object documented as `model` but handled as a plain dict.

    A request body marked so reaches the handler as the raw object, and stacks.spec
    validates it so a 422 names every bad field (Litestar's own validation would stop at
    the first, as a 400). A stored spec in a response is sent as stored, so a rule added
    to the model later never makes an old record unreadable.
    """

    model: type


class DocumentedAsPlugin(OpenAPISchemaPlugin):
    """Gives a value marked DocumentedAs(model) the OpenAPI schema of its model."""

    @staticmethod
    def is_plugin_supported_type(value: Any) -> bool:
        return False

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return any(isinstance(meta, DocumentedAs) for meta in field_definition.metadata)

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema | Reference:
        (marker,) = [meta for meta in field_definition.metadata if isinstance(meta, DocumentedAs)]
        return schema_creator.for_field_definition(FieldDefinition.from_annotation(marker.model))


class _Shape(msgspec.Struct):
    pass


# ---------------------------------------------------------------- requests
# Documented request bodies; the service validates them itself (stacks.spec), so its
# 422s name every bad field.


class InstanceChange(_Shape, kw_only=True):
    """PATCH and preview body: the whole Instance document, or just the parts that change."""

    kind: Literal["Instance"] = "Instance"
    name: Name | msgspec.UnsetType = msgspec.UNSET  # the instance's own name: an instance is not renamed
    labels: dict[str, str] | msgspec.UnsetType = msgspec.UNSET  # left out: the labels stay as they are
    spec: InstanceSpec


class SnapshotRequest(_Shape):
    """POST /instances/{name}/snapshots body."""

    name: Name


# ---------------------------------------------------------------- responses


# A powered-off instance sends no reports by design: its silence is not "unreachable".
POWERED_OFF = ("stopping", "stopped", "starting", "preempted")


def _health_state(status: str, last_at, report_interval_s: int) -> str:
    if status == "deleted":
        return "unknown"
    if status in POWERED_OFF:
        return "stopped"
    return health_state(last_at, report_interval_s)


class HealthView(_Shape):
    state: Literal["unknown", "healthy", "unreachable", "stopped"]
    last_report_at: str | None
    last_report: dict[str, Any]


class AutostopView(_Shape):
    """Idle autostop's findings (spec.autostop has the settings); null without autostop."""

    idle_since: str | None
    warned_at: str | None
    warning: str | None
    decided_at: str | None


class AgentNotice(_Shape):
    id: str
    message: str


class ReportAnswer(_Shape, omit_defaults=True):
    accepted: int
    # Messages for the instance's logged-in users (an autostop warning); the agent shows each id once.
    # Left out when there are none: the answer is then `{"accepted": n}` as before.
    notices: list[AgentNotice] = []


def report_answer(accepted: int, notices: list[dict]) -> ReportAnswer:
    """The answer to an agent's report: how many it accepted, and the pending notices ({id, message})."""
    return ReportAnswer(accepted=accepted, notices=[AgentNotice(**notice) for notice in notices])


class OperationSummary(_Shape):
    """An instance's running or last operation, as its row shows it (the whole one: GET /operations/{id})."""

    id: str
    kind: OperationKind
    status: OperationStatus
    step: str | None  # the step running now; null once the operation is not running


class DriftDifference(_Shape):
    resource: str  # TYPE::NAME, as the tail of the resource's URN
    property: str  # the property's name in the stack's state; `exists` for a resource deleted outside orch
    expected: Any  # what orch applied
    actual: Any  # what the cloud has


class DriftView(_Shape):
    """What the instance's last refresh found (orchestrator/operations/refresh.py)."""

    checked_at: str | None
    differences: list[DriftDifference]
    lost: bool  # its machine is gone


class InstanceView(_Shape):
    name: str
    owner: str
    labels: dict[str, str]
    spec: Annotated[dict[str, Any], DocumentedAs(InstanceSpec)]
    status: InstanceStatus
    status_reason: str | None
    cloud: CloudName
    region: str
    public_ip: str | None
    outputs: dict[str, Any]
    health: HealthView
    generation: int
    operation_id: str | None
    created_at: str | None
    updated_at: str | None
    # The Pulumi stack and the command that shows it by hand (README, "Inspecting stacks").
    stack_name: str
    stack_command: str
    operation: OperationSummary | None
    simulated: bool = False
    autostop: AutostopView | None = None
    # Zone failover (docs/lifecycle.md): the zone it is in (or being tried), and each zone its create tried.
    zone: str | None = None
    zone_attempts: list[ZoneAttemptView] = []
    drift: DriftView | None = None
    # [spot] A spot machine, and when the cloud last took it back and who said so (an agent's notice
    # from the cloud's metadata, or a refresh).
    spot: bool = False
    preempted_at: str | None = None
    preemption_source: PreemptionSource | None = None


class ZoneAttemptView(_Shape):
    zone: str | None  # None: a region failover's attempt in a region where the cloud chose the zone
    outcome: Literal["landed", "no capacity", "quota", "auth", "error"]
    error: str | None  # the cloud's error, shortened (the operation's step has more)
    region: str | None = None  # the attempt's region (records from before region failover have none)


class StepView(_Shape):
    name: str
    status: StepStatus
    started_at: str | None
    finished_at: str | None
    detail: str | None = None  # what a finished step found, e.g. a failed zone attempt's error


class OperationView(_Shape):
    id: str
    kind: OperationKind
    target: str
    owner: str
    status: OperationStatus
    attempts: int
    steps: list[StepView]
    logs: list[str]
    log_offset: int
    log_count: int
    error: str | None
    created_at: str | None
    updated_at: str | None


class SnapshotView(_Shape):
    name: str
    instance: str
    owner: str
    status: SnapshotStatus
    cloud: CloudName
    region: str
    image_id: str | None
    source_instance_id: str | None
    error: str | None
    operation_id: str | None
    created_at: str | None
    updated_at: str | None
    disk_gb: int | None  # the source instance's disk size; instances from the snapshot get at least this


class InstanceOperation(_Shape):
    """An instance and the operation that changes it (null when nothing changes)."""

    instance: InstanceView
    operation: OperationView | None


class InstancePreview(_Shape):
    """POST /instances?dry_run=true: the instance as it would be created (nothing stored) and what apply would do."""

    instance: InstanceView
    preview: PreviewView


class OperationList(_Shape):
    """An instance's operations, newest first, without their log lines (GET /operations/{id} has them)."""

    items: list[OperationView]


class SnapshotOperation(_Shape):
    snapshot: SnapshotView
    operation: OperationView


class InstancePage(_Shape):
    items: list[InstanceView]
    total: int
    limit: int
    # Pass it as `cursor` for the next page; null on the last page.
    next_cursor: str | None


class SnapshotPage(_Shape):
    items: list[SnapshotView]
    total: int
    limit: int
    # Pass it as `cursor` for the next page; null on the last page.
    next_cursor: str | None


class StackResource(_Shape):
    urn: str | None
    type: str | None
    name: str
    id: str | None


class StackView(_Shape):
    stack: str
    resources: list[StackResource]
    outputs: dict[str, Any]


class PreviewStepView(_Shape):
    op: str
    urn: str
    type: str
    name: str
    diff: list[str]


class PreviewView(_Shape):
    stack: str
    changes: dict[str, int]
    steps: list[PreviewStepView]


class MetricsView(_Shape):
    instance: str
    samples: list[dict[str, Any]]


class FeatureFlags(_Shape):
    snapshots: bool
    preview: bool
    configuration: bool
    dispatch: Literal["rabbitmq", "in-process"]
    sidebar: bool  # ORCH_FEATURE_SIDEBAR: the page's collapsible navigation sidebar
    simulated: bool = False


class FeaturesView(_Shape):
    clouds: list[CloudName]  # the enabled ones (ORCH_CLOUDS)
    features: FeatureFlags
    known_clouds: list[CloudName]  # every cloud: instances on a disabled one are still listed


class SigninRequest(_Shape):
    """POST /auth/signin body: the code from the link `orch serve` printed."""

    code: str


class SignedIn(_Shape):
    token: str
    user: str
    role: Literal["user", "admin"]
    expires_at: str


class MeView(_Shape):
    """The user behind the request's token."""

    user: str
    role: Literal["user", "admin"]
    expires_at: str | None


class CatalogRegion(_Shape):
    name: str
    zones: list[str]  # the zones the catalogue lists (validation accepts the cloud's zone names in the region)


class CatalogMachineType(_Shape):
    name: str
    vcpus: int
    memory_gb: float
    gpus: int
    gpu_type: str | None  # the spec's GPU name (spec.gpu.type), e.g. nvidia-a10g


class CatalogCloud(_Shape):
    name: CloudName
    regions: list[CatalogRegion]
    machine_types: list[CatalogMachineType]
    images: list[str]


class CatalogView(_Shape):
    """What specs may name on each enabled cloud: the tables spec validation checks against."""

    clouds: list[CatalogCloud]


def catalog_json(cloud_names: Iterable[str]) -> CatalogView:
    clouds = []
    for name in cloud_names:
        cloud = CLOUDS[name]
        clouds.append(
            CatalogCloud(
                name=name,
                regions=[CatalogRegion(name=region, zones=cloud.zones(region)) for region in sorted(cloud.regions)],
                machine_types=[
                    CatalogMachineType(
                        name=machine.name, vcpus=machine.vcpus, memory_gb=machine.memory_gb,
                        gpus=machine.gpus, gpu_type=machine.gpu_type,
                    )
                    for machine in cloud.machine_types()
                ],
                images=list(cloud.images),
            )
        )
    return CatalogView(clouds=clouds)


class IngestHealth(_Shape):
    """Agent report ingestion: not ok while its flush thread is down, failing or overdue."""

    ok: bool
    last_error: str | None
    last_flush_at: str | None
    stored: int
    dropped: int
    buffered: int


class ServiceHealth(_Shape):
    status: Literal["ok", "degraded"]
    mongodb: bool
    broker: bool
    ingest: IngestHealth
    dispatch: Literal["rabbitmq", "in-process"]
    version: str
    simulated: bool = False


class ErrorBody(_Shape, omit_defaults=True):
    """Every error: `detail` names the field or the reason; `extra` gives the field or the failed checks."""

    status_code: int
    detail: str
    extra: dict[str, Any] | list[Any] | None = None


# ---------------------------------------------------------------- builders


def _iso(value: dt.datetime | None) -> str | None:
    return value.replace(tzinfo=dt.UTC).isoformat() if value else None


def operation_summary(op: Operation | None) -> OperationSummary | None:
    if op is None:
        return None
    running = [step.name for step in op.steps if step.status == "running"] if op.status == "running" else []
    return OperationSummary(id=str(op.id), kind=op.kind, status=op.status, step=running[-1] if running else None)


def drift_view(drift: dict | None) -> DriftView | None:
    if not drift:
        return None
    return DriftView(
        checked_at=_iso(drift.get("checked_at")),
        differences=[DriftDifference(**difference) for difference in drift.get("differences") or []],
        lost=bool(drift.get("lost")),
    )


def instance_json(
    instance: Instance | StoredInstance,
    report_interval_s: int,
    latest: tuple[dt.datetime, dict] | None = None,
    *,
    stack_command: str,
    operation: Operation | None,
) -> InstanceView:
    """`latest` is (received_at, report) from this process's ingest, when newer than the stored health;
    `operation` is the instance's operation_id's."""
    health = instance.health
    last_at = health.last_report_at if health else None
    last_report = dict(health.last_report or {}) if health else {}
    fresh = latest is not None and latest[0] >= instance.created_at  # not a deleted namesake's
    if fresh and (last_at is None or latest[0] > last_at):
        last_at, last_report = latest
    return InstanceView(
        name=instance.name,
        owner=instance.owner,
        labels=dict(instance.labels or {}),
        # The stored spec is a validated document's canonical form (stacks.spec.InstanceDoc.to_dict).
        spec=dict(instance.spec or {}),
        status=instance.status,
        status_reason=instance.status_reason,
        cloud=instance.cloud,
        region=instance.region,
        public_ip=instance.public_ip,
        outputs=dict(instance.outputs or {}),
        health=HealthView(
            state=_health_state(instance.status, last_at, report_interval_s),
            last_report_at=_iso(last_at),
            last_report=last_report,
        ),
        generation=instance.generation,
        operation_id=instance.operation_id,
        created_at=_iso(instance.created_at),
        updated_at=_iso(instance.updated_at),
        stack_name=instance.stack_name,
        stack_command=stack_command,
        operation=operation_summary(operation),
        simulated=bool(instance.simulated),
        drift=drift_view(instance.drift),
        spot=bool((instance.spec or {}).get("spot")),
        preempted_at=_iso(instance.preempted_at),
        preemption_source=instance.preemption_source,
        autostop=_autostop_view(instance),
        zone=instance.zone or (instance.outputs or {}).get("zone") or (instance.spec or {}).get("zone"),
        zone_attempts=[ZoneAttemptView(**attempt) for attempt in instance.zone_attempts or []],
    )


def _autostop_view(instance: Instance | StoredInstance) -> AutostopView | None:
    if not (instance.spec or {}).get("autostop"):
        return None
    state = instance.autostop_state
    if state is None:
        return AutostopView(idle_since=None, warned_at=None, warning=None, decided_at=None)
    return AutostopView(idle_since=_iso(state.idle_since), warned_at=_iso(state.warned_at), warning=state.warning,
                        decided_at=_iso(state.decided_at))


def snapshot_json(snapshot: Snapshot) -> SnapshotView:
    return SnapshotView(
        name=snapshot.name,
        instance=snapshot.instance,
        owner=snapshot.owner,
        status=snapshot.status,
        cloud=snapshot.cloud,
        region=snapshot.region,
        image_id=snapshot.image_id,
        source_instance_id=snapshot.source_instance_id,
        error=snapshot.error,
        operation_id=snapshot.operation_id,
        created_at=_iso(snapshot.created_at),
        updated_at=_iso(snapshot.updated_at),
        disk_gb=snapshot.disk_gb,
    )


def operation_json(op: Operation | None, log_offset: int = 0) -> OperationView | None:
    """The operation with its log lines from log_offset on (log_offset past the end: none)."""
    if op is None:
        return None
    return OperationView(
        id=str(op.id),
        kind=op.kind,
        target=op.target,
        owner=op.owner,
        status=op.status,
        attempts=op.attempts,
        steps=[
            StepView(
                name=s.name, status=s.status, started_at=_iso(s.started_at), finished_at=_iso(s.finished_at),
                detail=s.detail,
            )
            for s in op.steps
        ],
        logs=list(op.logs[log_offset:]),
        log_offset=log_offset,
        log_count=len(op.logs),
        error=op.error,
        created_at=_iso(op.created_at),
        updated_at=_iso(op.updated_at),
    )


def stack_view(inspected: dict) -> StackView:
    """The engine's stack inspection (orchestrator.engine.StackEngine.inspect) as a typed body."""
    return msgspec.convert(inspected, StackView)


def preview_view(preview: dict) -> PreviewView:
    return msgspec.convert(preview, PreviewView)
