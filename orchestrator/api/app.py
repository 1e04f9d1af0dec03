"""The Litestar application: one controller per resource, the logic in services."""

from __future__ import annotations

import datetime as dt
from typing import Any

from anyio import to_thread
from litestar import Controller, Litestar, Request, Response, delete, get, patch, post
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.params import Parameter

from orchestrator import __version__, db
from orchestrator.api.serialize import instance_json, operation_json, snapshot_json
from orchestrator.auth import AGENT_AUDIENCE, Principal, TokenError, bearer_token, decode_user_token
from orchestrator.ingest import MAX_REPORT_BYTES, ReportRejected, read_body
from orchestrator.runtime import Runtime
from orchestrator.services import Orchestrator, ServiceError

API_PREFIX = "/api/v1"


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def provide_orchestrator(request: Request) -> Orchestrator:
    return _runtime(request).orchestrator


def provide_principal(request: Request) -> Principal:
    """The user behind the request's bearer token; agent tokens are refused here."""
    try:
        return decode_user_token(_runtime(request).settings.jwt_secret, bearer_token(request.headers.get("authorization")))
    except TokenError as error:
        detail = str(error)
        if f"{AGENT_AUDIENCE!r}" in detail:
            detail += " (agent tokens are accepted only at /api/v1/agent/*)"
        raise HTTPException(status_code=401, detail=detail) from None


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def _instance_json(request: Request, instance) -> dict:
    runtime = _runtime(request)
    return instance_json(instance, runtime.settings.agent_report_interval_s, runtime.ingest.latest(instance.name))


def _page(page, render) -> dict:
    return {"items": [render(item) for item in page.items], "total": page.total, "limit": page.limit, "offset": page.offset}


USER_DEPENDENCIES = {"principal": Provide(provide_principal, sync_to_thread=False), "orch": Provide(provide_orchestrator, sync_to_thread=False)}


class InstanceController(Controller):
    path = f"{API_PREFIX}/instances"
    dependencies = USER_DEPENDENCIES
    tags = ["instances"]

    @post("/", status_code=202, sync_to_thread=True, summary="Create an instance from a spec")
    def create(self, request: Request, data: dict[str, Any], principal: Principal, orch: Orchestrator) -> dict:
        instance, op = orch.create_instance(principal, data)
        return {"instance": _instance_json(request, instance), "operation": operation_json(op)}

    @get("/", sync_to_thread=True, summary="List instances")
    def list(
        self,
        request: Request,
        principal: Principal,
        orch: Orchestrator,
        cloud: str | None = None,
        status: str | None = None,
        label: str | None = Parameter(default=None, description="key=value"),
        limit: int = Parameter(default=100, ge=1, le=500),
        offset: int = Parameter(default=0, ge=0),
    ) -> dict:
        page = orch.list_instances(principal, cloud=cloud, status=status, label=label, limit=limit, offset=offset)
        return _page(page, lambda i: _instance_json(request, i))

    @get("/{name:str}", sync_to_thread=True, summary="One instance")
    def get_one(self, request: Request, name: str, principal: Principal, orch: Orchestrator) -> dict:
        return _instance_json(request, orch.get_instance(principal, name))

    @patch("/{name:str}", sync_to_thread=True, summary="Change the spec (a pulumi up)")
    def update(
        self, request: Request, name: str, data: dict[str, Any], principal: Principal, orch: Orchestrator
    ) -> Response:
        instance, op = orch.update_instance(principal, name, data)
        body = {"instance": _instance_json(request, instance), "operation": operation_json(op)}
        return Response(body, status_code=202 if op is not None else 200)

    @delete("/{name:str}", status_code=202, sync_to_thread=True, summary="Delete (a pulumi destroy)")
    def remove(self, request: Request, name: str, principal: Principal, orch: Orchestrator) -> dict:
        instance, op = orch.delete_instance(principal, name)
        return {"instance": _instance_json(request, instance), "operation": operation_json(op)}

    @get("/{name:str}/stack", sync_to_thread=True, summary="Stack resources and outputs")
    def stack(self, name: str, principal: Principal, orch: Orchestrator) -> dict:
        return orch.stack(principal, name)

    @post("/{name:str}/preview", status_code=200, sync_to_thread=True, summary="What an update would change")
    def preview(self, name: str, data: dict[str, Any], principal: Principal, orch: Orchestrator) -> dict:
        return orch.preview(principal, name, data)

    @get("/{name:str}/metrics", sync_to_thread=True, summary="Reported samples by time range")
    def metrics(
        self,
        name: str,
        principal: Principal,
        orch: Orchestrator,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = Parameter(default=1000, ge=1, le=10000),
    ) -> dict:
        return {"instance": name, "samples": orch.metrics(principal, name, _utc(since), _utc(until), limit)}

    @post("/{name:str}/snapshots", status_code=202, sync_to_thread=True, summary="Take a snapshot")
    def snapshot(self, name: str, data: dict[str, Any], principal: Principal, orch: Orchestrator) -> dict:
        snapshot_name = data.get("name")
        if not isinstance(snapshot_name, str):
            raise ServiceError("name: the snapshot's name is required", field="name")
        snapshot, op = orch.create_snapshot(principal, name, snapshot_name)
        return {"snapshot": snapshot_json(snapshot), "operation": operation_json(op)}


class SnapshotController(Controller):
    path = f"{API_PREFIX}/snapshots"
    dependencies = USER_DEPENDENCIES
    tags = ["snapshots"]

    @get("/", sync_to_thread=True, summary="List snapshots")
    def list(
        self,
        principal: Principal,
        orch: Orchestrator,
        instance: str | None = None,
        limit: int = Parameter(default=100, ge=1, le=500),
        offset: int = Parameter(default=0, ge=0),
    ) -> dict:
        return _page(orch.list_snapshots(principal, instance=instance, limit=limit, offset=offset), snapshot_json)

    @get("/{name:str}", sync_to_thread=True, summary="One snapshot")
    def get_one(self, name: str, principal: Principal, orch: Orchestrator) -> dict:
        return snapshot_json(orch.get_snapshot(principal, name))

    @delete("/{name:str}", status_code=202, sync_to_thread=True, summary="Delete a snapshot and its image")
    def remove(self, name: str, principal: Principal, orch: Orchestrator) -> dict:
        snapshot, op = orch.delete_snapshot(principal, name)
        return {"snapshot": snapshot_json(snapshot), "operation": operation_json(op)}


class OperationController(Controller):
    path = f"{API_PREFIX}/operations"
    dependencies = USER_DEPENDENCIES
    tags = ["operations"]

    @get("/{op_id:str}", sync_to_thread=True, summary="Status, steps, log lines and error")
    def get_one(
        self, op_id: str, principal: Principal, orch: Orchestrator, log_offset: int = Parameter(default=0, ge=0)
    ) -> dict:
        return operation_json(orch.get_operation(principal, op_id), log_offset)


class AgentController(Controller):
    path = f"{API_PREFIX}/agent"
    tags = ["agent"]

    @post("/report", status_code=202, summary="An agent's report (agent token only)")
    async def report(self, request: Request) -> dict:
        ingest = _runtime(request).ingest
        instance, _ = await _authenticate_agent(request)
        # The raw body, capped before it is parsed; parsed by ingest, never by request.json().
        raw = await read_body(request.stream(), request.headers.get("content-length"))
        if len(raw) > MAX_REPORT_BYTES:  # a backlog: parsed off the event loop
            return {"accepted": await to_thread.run_sync(ingest.accept, instance, raw)}
        return {"accepted": ingest.accept(instance, raw)}

    @post("/token", status_code=200, summary="Renew the agent's token before it expires")
    async def renew(self, request: Request) -> dict:
        instance, _ = await _authenticate_agent(request)
        token, expires = await to_thread.run_sync(_runtime(request).ingest.renew, instance)
        return {"token": token, "expires_at": expires.isoformat()}


async def _authenticate_agent(request: Request) -> tuple[str, str]:
    ingest = _runtime(request).ingest
    header = request.headers.get("authorization")
    # Answered from the token cache on the event loop; MongoDB only off-thread.
    return ingest.authenticate(header, may_query=False) or await to_thread.run_sync(ingest.authenticate, header)


@get("/healthz", sync_to_thread=True, tags=["health"], summary="Liveness, MongoDB and broker")
def healthz(request: Request) -> Response:
    runtime = _runtime(request)
    mongodb = db.ping()
    broker = runtime.dispatcher.ping()
    ingest = runtime.ingest.health()
    body = {"status": "ok" if mongodb and broker and ingest["ok"] else "degraded", "mongodb": mongodb,
            "broker": broker, "ingest": ingest, "dispatch": "rabbitmq" if runtime.settings.amqp_url else "in-process",
            "version": __version__}
    return Response(body, status_code=200 if mongodb else 503)


@get(f"{API_PREFIX}/features", sync_to_thread=False, tags=["features"], summary="Enabled clouds and features")
def features(request: Request) -> dict:
    settings = _runtime(request).settings
    return {
        "clouds": list(settings.clouds),
        "features": {
            "snapshots": True,
            "preview": True,
            "configuration": True,
            "dispatch": "rabbitmq" if settings.amqp_url else "in-process",
        },
    }


def _service_error(request: Request, error: ServiceError) -> Response:
    body: dict = {"status_code": error.status_code, "detail": error.detail}
    if error.field:
        body["extra"] = {"field": error.field}
    return Response(body, status_code=error.status_code)


def _report_rejected(request: Request, error: ReportRejected) -> Response:
    return Response({"status_code": error.status_code, "detail": error.detail}, status_code=error.status_code)


def create_app(runtime: Runtime) -> Litestar:
    app = Litestar(
        route_handlers=[InstanceController, SnapshotController, OperationController, AgentController, healthz, features],
        exception_handlers={ServiceError: _service_error, ReportRejected: _report_rejected},
        openapi_config=OpenAPIConfig(title="orch", version=__version__, path="/schema"),
        on_shutdown=[runtime.close],
        debug=False,
    )
    app.state.runtime = runtime
    return app
