"""JSON shapes of instances, snapshots and operations (docs/DESIGN.md, "REST shapes")."""

from __future__ import annotations

import datetime as dt

from orchestrator.ingest import health_state
from orchestrator.models import Instance, Operation, Snapshot


def _iso(value: dt.datetime | None) -> str | None:
    return value.replace(tzinfo=dt.UTC).isoformat() if value else None


def instance_json(
    instance: Instance, report_interval_s: int, latest: tuple[dt.datetime, dict] | None = None
) -> dict:
    """`latest` is (received_at, report) from this process's ingest, when newer than the stored health."""
    health = instance.health
    last_at = health.last_report_at if health else None
    last_report = dict(health.last_report or {}) if health else {}
    fresh = latest is not None and latest[0] >= instance.created_at  # not a deleted namesake's
    if fresh and (last_at is None or latest[0] > last_at):
        last_at, last_report = latest
    return {
        "name": instance.name,
        "owner": instance.owner,
        "labels": dict(instance.labels or {}),
        "spec": dict(instance.spec or {}),
        "status": instance.status,
        "status_reason": instance.status_reason,
        "cloud": instance.cloud,
        "region": instance.region,
        "public_ip": instance.public_ip,
        "outputs": dict(instance.outputs or {}),
        "health": {
            "state": health_state(last_at, report_interval_s) if instance.status != "deleted" else "unknown",
            "last_report_at": _iso(last_at),
            "last_report": last_report,
        },
        "generation": instance.generation,
        "operation_id": instance.operation_id,
        "created_at": _iso(instance.created_at),
        "updated_at": _iso(instance.updated_at),
    }


def snapshot_json(snapshot: Snapshot) -> dict:
    return {
        "name": snapshot.name,
        "instance": snapshot.instance,
        "owner": snapshot.owner,
        "status": snapshot.status,
        "cloud": snapshot.cloud,
        "region": snapshot.region,
        "image_id": snapshot.image_id,
        "source_instance_id": snapshot.source_instance_id,
        "error": snapshot.error,
        "operation_id": snapshot.operation_id,
        "created_at": _iso(snapshot.created_at),
        "updated_at": _iso(snapshot.updated_at),
    }


def operation_json(op: Operation | None, log_offset: int = 0) -> dict | None:
    if op is None:
        return None
    return {
        "id": str(op.id),
        "kind": op.kind,
        "target": op.target,
        "owner": op.owner,
        "status": op.status,
        "attempts": op.attempts,
        "steps": [
            {"name": s.name, "status": s.status, "started_at": _iso(s.started_at), "finished_at": _iso(s.finished_at)}
            for s in op.steps
        ],
        "logs": list(op.logs[log_offset:]),
        "log_offset": log_offset,
        "log_count": len(op.logs),
        "error": op.error,
        "created_at": _iso(op.created_at),
        "updated_at": _iso(op.updated_at),
    }
