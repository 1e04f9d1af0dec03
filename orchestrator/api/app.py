"""The Litestar application: one controller per resource, the logic in services."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Any, Literal

import msgspec
from anyio import to_thread
from litestar import Controller, Litestar, Request, Response, delete, get, patch, post
from litestar.di import Provide
from litestar.enums import MediaType
from litestar.exceptions import ClientException, HTTPException, SerializationException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import OpenAPIFormat
from litestar.params import Parameter
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from orchestrator import __version__, db
from orchestrator.api.serialize import (
    CatalogView,
    CloudName,
    DocumentedAs,
    DocumentedAsPlugin,
    ErrorBody,
    FeatureFlags,
    FeaturesView,
    IngestHealth,
    InstanceChange,
    InstanceOperation,
    InstancePage,
    InstancePreview,
    InstanceStatus,
    InstanceView,
    MeView,
    MetricsView,
    OperationList,
    OperationView,
    PreviewView,
    ReportAnswer,
    ServiceHealth,
    SignedIn,
    SigninRequest,
    SnapshotOperation,
    SnapshotPage,
    SnapshotRequest,
    SnapshotView,
    StackView,
    catalog_json,
    instance_json,
    operation_json,
    preview_view,
    report_answer,
    snapshot_json,
    stack_view,
)
from orchestrator.api.conditional import ConditionalGetMiddleware
from orchestrator.api.web import PAGE_HANDLERS
from orchestrator.auth import AGENT_AUDIENCE, Principal, TokenError, bearer_token, decode_user_token
from orchestrator.ingest import MAX_REPORT_BYTES, ReportRejected, read_body
from orchestrator.runtime import Runtime
from orchestrator.listing.keyset import MAX_CURSOR_CHARS, MAX_QUERY_CHARS
from orchestrator.models import Instance, Operation, StoredInstance
from orchestrator.services import (
    DEFAULT_PAGE,
    MAX_OPERATIONS_PAGE,
    MAX_PAGE,
    OPERATIONS_PAGE,
    Orchestrator,
    ServiceError,
)
from orchestrator.settings import KNOWN_CLOUDS
from orchestrator.tokens import SigninRefused, redeem_signin_code
from stacks.spec import LABEL_KEY_PATTERN, LABEL_VALUE_PATTERN, MAX_IDENTIFIER_LENGTH, InstanceDoc

API_PREFIX = "/api/v1"
# The whole request body of the user API. An Instance document is a few KB; the largest
# legitimate one (a 64 KiB bootstrap script and many keys) stays well under this.
MAX_REQUEST_BODY_BYTES = 1024 * 1024

# GET /instances?label=key=value, as the label keys and values of documents.
LABEL_FILTER_PATTERN = f"{LABEL_KEY_PATTERN.removesuffix('$')}={LABEL_VALUE_PATTERN.removeprefix('^')}"

log = logging.getLogger("orch.api")


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def provide_orchestrator(request: Request) -> Orchestrator:
    return _runtime(request).orchestrator


async def provide_principal(request: Request) -> Principal:
    """The user behind the request's bearer token; agent tokens and revoked tokens are refused here."""
    runtime = _runtime(request)
    try:
        principal = decode_user_token(runtime.settings.jwt_secret, bearer_token(request.headers.get("authorization")))
    except TokenError as error:
        detail = str(error)
        if f"{AGENT_AUDIENCE!r}" in detail:
            detail += " (agent tokens are accepted only at /api/v1/agent/*)"
        raise HTTPException(status_code=401, detail=detail) from None
    revoked = runtime.revoked_tokens
    if revoked.stale:
        await to_thread.run_sync(revoked.refresh)
    if principal.token_id in revoked:
        raise HTTPException(status_code=401, detail=f"token revoked (jti {principal.token_id})")
    return principal


# Taken as text and parsed strictly: Litestar's lenient parsing would also take numbers
# (as epoch seconds), which the documented date-time format does not allow.
TIME_PARAMETER = Parameter(
    default=None, description="an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z", schema_extra={"format": OpenAPIFormat.DATE_TIME}
)


def _time(parameter: str, value: str | None) -> dt.datetime | None:
    """A date-time query parameter in naive UTC, as times are stored; a 400 naming the parameter otherwise."""
    if value is None:
        return None
    try:
        parsed = msgspec.convert(value, dt.datetime)
    except msgspec.ValidationError:
        raise ServiceError(f"{parameter}: {value!r} is not an RFC 3339 date-time (e.g. 2026-01-31T12:00:00Z)", field=parameter) from None
    if parsed.tzinfo is None:
        return parsed
    return parsed.astimezone(dt.UTC).replace(tzinfo=None)


def _instance_json(request: Request, instance: Instance | StoredInstance, operation: Operation | None = None) -> InstanceView:
    """`operation`: the instance's operation when the caller has it (else read by its operation_id)."""
    runtime = _runtime(request)
    if operation is None and instance.operation_id:
        operation = Orchestrator.operations_by_id([instance.operation_id]).get(instance.operation_id)
    latest = runtime.ingest.latest(instance.agent_identity) if instance.id is not None else None
    return instance_json(
        instance, runtime.settings.agent_report_interval_s, latest,
        stack_command=runtime.engine.export_command(instance.stack_name), operation=operation,
    )


def _instance_operation(request: Request, instance: Instance, op: Operation | None) -> InstanceOperation:
    """The answer to a request that may start an operation on an instance: both, as they are now."""
    return InstanceOperation(instance=_instance_json(request, instance, op), operation=operation_json(op))


def _instance_rows(request: Request, instances: list[StoredInstance]) -> list[InstanceView]:
    """A list page's rows, their operations read in one query for the whole page."""
    operations = Orchestrator.operations_by_id([instance.operation_id for instance in instances])
    return [_instance_json(request, instance, operations.get(instance.operation_id or "")) for instance in instances]


# ---------------------------------------------------------------- OpenAPI


ERROR_DESCRIPTIONS = {
    400: "Malformed request: a query parameter out of range, a body that is not a JSON object",
    401: "Missing, malformed, expired or wrong-audience bearer token",
    404: "No such resource for this user",
    409: "The resource's state does not allow this now (exists, busy, locked)",
    413: f"The request body is larger than the endpoint accepts ({MAX_REQUEST_BODY_BYTES} bytes on the user API)",
    422: "The document is invalid; detail and extra.field name the field",
    502: "The Pulumi engine failed; detail has its message",
    503: "MongoDB is unreachable",
}


def _errors(*codes: int, descriptions: dict[int, str] | None = None) -> dict[int, ResponseSpec]:
    """The error responses a route returns, each with the error body."""
    described = {**ERROR_DESCRIPTIONS, **(descriptions or {})}
    return {
        code: ResponseSpec(data_container=ErrorBody, description=described[code], generate_examples=False)
        for code in (400, 401, *codes)
    }


def _success(model: type, description: str) -> ResponseSpec:
    return ResponseSpec(data_container=model, description=description, generate_examples=False)


# ---------------------------------------------------------------- user API

# Names are unique per owner: an admin addresses another user's with ?owner=USER.
OWNER = Parameter(default=None, description="admins: the owner whose instances and snapshots are addressed")
# Deleted incarnations stay as history documents (names are unique per owner); listings hide them by default.
INCLUDE_DELETED = Parameter(default=False, description="true: also list deleted ones (kept as history)")
LIMIT = Parameter(default=DEFAULT_PAGE, ge=1, le=MAX_PAGE)
CURSOR = Parameter(
    default=None, max_length=MAX_CURSOR_CHARS, description="the next_cursor of the previous page (opaque)"
)
QUERY_TEXT = Parameter(
    default=None, max_length=MAX_QUERY_CHARS, description="names containing this text (literal characters)"
)
MetricsWindow = Literal["1h", "24h", "7d", "30d"]
ListSort = Literal["name", "-name", "created_at", "-created_at"]

USER_DEPENDENCIES = {"principal": Provide(provide_principal), "orch": Provide(provide_orchestrator, sync_to_thread=False)}
InstanceDocBody = Annotated[dict[str, Any], DocumentedAs(InstanceDoc)]
InstanceChangeBody = Annotated[dict[str, Any], DocumentedAs(InstanceChange)]
SnapshotRequestBody = Annotated[dict[str, Any], DocumentedAs(SnapshotRequest)]


class InstanceController(Controller):
    path = f"{API_PREFIX}/instances"
    dependencies = USER_DEPENDENCIES
    request_max_body_size = MAX_REQUEST_BODY_BYTES
    tags = ["instances"]

    @post("/", status_code=202, sync_to_thread=True, summary="Create an instance from a spec",
          responses={200: _success(InstancePreview, "dry_run=true: the instance as it would be created and the "
                                   "preview of its stack; nothing was created"), **_errors(409, 413, 422, 502)})
    def create(
        self,
        request: Request,
        data: InstanceDocBody,
        principal: Principal,
        orch: Orchestrator,
        owner: str | None = OWNER,
        dry_run: bool = Parameter(default=False, description="true: validate and preview only (200), create nothing"),
    ) -> Response[InstanceOperation]:
        """202 with the create operation; with dry_run=true, 200 with the preview and nothing created."""
        if dry_run:
            instance, preview = orch.preview_create(principal, data, owner)
            return Response(InstancePreview(instance=_instance_json(request, instance), preview=preview_view(preview)),
                            status_code=200)
        instance, op = orch.create_instance(principal, data, owner)
        body = _instance_operation(request, instance, op)
        return Response(body, status_code=202)

    @get("/", sync_to_thread=True, summary="List instances", responses=_errors(422))
    def list(
        self,
        request: Request,
        principal: Principal,
        orch: Orchestrator,
        cloud: CloudName | None = None,
        status: InstanceStatus | None = None,
        label: str | None = Parameter(
            default=None,
            description="key=value: instances with this label (keys and values as in an Instance document)",
            # Documented, and checked by the service (a 422 naming the key or the value).
            schema_extra={"pattern": LABEL_FILTER_PATTERN},
        ),
        q: str | None = QUERY_TEXT,
        include_deleted: bool = INCLUDE_DELETED,
        sort: ListSort = "name",
        limit: int = LIMIT,
        cursor: str | None = CURSOR,
        owner: str | None = OWNER,
        region: str | None = Parameter(
            default=None, min_length=1, max_length=MAX_IDENTIFIER_LENGTH,
            description="instances in this region (with spec.regions: the one it landed in)",
        ),
    ) -> InstancePage:
        """Deleted instances are listed only with include_deleted=true or status=deleted."""
        page = orch.list_instances(
            principal,
            cloud=cloud,
            status=status,
            label=label,
            q=q,
            include_deleted=include_deleted,
            owner=owner,
            sort=sort,
            limit=limit,
            cursor=cursor,
            region=region,
        )
        return InstancePage(
            items=_instance_rows(request, page.items),
            total=page.total,
            limit=page.limit,
            next_cursor=page.next_cursor,
        )

    @get("/{name:str}", sync_to_thread=True, summary="One instance", responses=_errors(404, 422))
    def get_one(
        self, request: Request, name: str, principal: Principal, orch: Orchestrator, owner: str | None = OWNER
    ) -> InstanceView:
        return _instance_json(request, orch.get_instance(principal, name, owner))

    @patch("/{name:str}", sync_to_thread=True, summary="Change the spec (a pulumi up)",
           responses={202: _success(InstanceOperation, "An update was started"), **_errors(404, 409, 413, 422)})
    def update(
        self,
        request: Request,
        name: str,
        data: InstanceChangeBody,
        principal: Principal,
        orch: Orchestrator,
        owner: str | None = OWNER,
    ) -> Response[InstanceOperation]:
        """200 with operation null when the document changes nothing; 202 with the update's operation otherwise."""
        instance, op = orch.update_instance(principal, name, data, owner)
        body = _instance_operation(request, instance, op)
        return Response(body, status_code=202 if op is not None else 200)

    @delete("/{name:str}", status_code=202, sync_to_thread=True, summary="Delete (a pulumi destroy)",
            responses=_errors(404, 409, 422))
    def remove(
        self, request: Request, name: str, principal: Principal, orch: Orchestrator, owner: str | None = OWNER
    ) -> InstanceOperation:
        instance, op = orch.delete_instance(principal, name, owner)
        return _instance_operation(request, instance, op)

    @get("/{name:str}/operations", sync_to_thread=True, summary="The instance's operations, newest first",
         responses=_errors(404, 422))
    def operations(
        self,
        name: str,
        principal: Principal,
        orch: Orchestrator,
        limit: int = Parameter(default=OPERATIONS_PAGE, ge=1, le=MAX_OPERATIONS_PAGE),
        owner: str | None = OWNER,
    ) -> OperationList:
        """Without log lines: GET /operations/{id}?log_offset=N reads them (log_offset here is log_count)."""
        ops = orch.instance_operations(principal, name, limit, owner)
        return OperationList(items=[operation_json(op, len(op.logs)) for op in ops])

    @get("/{name:str}/stack", sync_to_thread=True, summary="Stack resources and outputs",
         responses=_errors(404, 409, 422, 502))
    def stack(self, name: str, principal: Principal, orch: Orchestrator, owner: str | None = OWNER) -> StackView:
        return stack_view(orch.stack(principal, name, owner))

    @post("/{name:str}/preview", status_code=200, sync_to_thread=True, summary="What an update would change",
          responses=_errors(404, 409, 413, 422, 502))
    def preview(
        self, name: str, data: InstanceChangeBody, principal: Principal, orch: Orchestrator, owner: str | None = OWNER
    ) -> PreviewView:
        return preview_view(orch.preview(principal, name, data, owner))

    @get("/{name:str}/metrics", sync_to_thread=True, summary="Reported samples by time range", responses=_errors(404, 422))
    def metrics(
        self,
        name: str,
        principal: Principal,
        orch: Orchestrator,
        since: str | None = TIME_PARAMETER,
        until: str | None = TIME_PARAMETER,
        limit: int = Parameter(default=1000, ge=1, le=10000),
        owner: str | None = OWNER,
        window: MetricsWindow | None = Parameter(default=None, description="the most recent 1h or 24h (raw samples) or 7d or 30d (rollups: min/avg/max per slot); with since: the later start"),
    ) -> MetricsView:
        # The reports as stored (JSON texts), passed through: decoding and encoding 1,000 of them again
        # took about a fifth of `orch serve`'s time under the metrics benchmark (py-spy).
        samples = orch.metrics(principal, name, _time("since", since), _time("until", until), limit, owner, window,
                               as_stored=True)
        return MetricsView(instance=name, samples=samples)

    @post("/{name:str}/stop", status_code=202, sync_to_thread=True, summary="Stop (power off; the disk and stack stay)",
          responses=_errors(404, 409, 422))
    def stop(
        self, request: Request, name: str, principal: Principal, orch: Orchestrator, owner: str | None = OWNER
    ) -> InstanceOperation:
        instance, op = orch.set_power_state(principal, name, "stopped", owner)
        return _instance_operation(request, instance, op)

    @post("/{name:str}/start", status_code=202, sync_to_thread=True, summary="Start a stopped instance",
          responses=_errors(404, 409, 422))
    def start(
        self, request: Request, name: str, principal: Principal, orch: Orchestrator, owner: str | None = OWNER
    ) -> InstanceOperation:
        instance, op = orch.set_power_state(principal, name, "running", owner)
        return _instance_operation(request, instance, op)

    @post("/{name:str}/refresh", status_code=202, sync_to_thread=True,
          summary="Refresh (a pulumi refresh: what changed outside orch)", responses=_errors(404, 409, 422))
    def refresh(
        self, request: Request, name: str, principal: Principal, orch: Orchestrator, owner: str | None = OWNER
    ) -> InstanceOperation:
        """The instance ends drifted (with the differences in `drift`), lost, or back where it was."""
        instance, op = orch.refresh_instance(principal, name, owner)
        return _instance_operation(request, instance, op)

    @post("/{name:str}/reconcile", status_code=202, sync_to_thread=True,
          summary="Put a drifted or lost instance back to its spec (a pulumi up)", responses=_errors(404, 409, 422))
    def reconcile(
        self, request: Request, name: str, principal: Principal, orch: Orchestrator, owner: str | None = OWNER
    ) -> InstanceOperation:
        """409 when the instance is neither drifted nor lost (nothing to reconcile), or busy."""
        instance, op = orch.reconcile_instance(principal, name, owner)
        return _instance_operation(request, instance, op)

    @post("/{name:str}/snapshots", status_code=202, sync_to_thread=True, summary="Take a snapshot",
          responses=_errors(404, 409, 413, 422))
    def snapshot(
        self, name: str, data: SnapshotRequestBody, principal: Principal, orch: Orchestrator, owner: str | None = OWNER
    ) -> SnapshotOperation:
        snapshot_name = data.get("name")
        if not isinstance(snapshot_name, str):
            raise ServiceError("name: the snapshot's name is required", field="name")
        snapshot, op = orch.create_snapshot(principal, name, snapshot_name, owner)
        return SnapshotOperation(snapshot=snapshot_json(snapshot), operation=operation_json(op))


class SnapshotController(Controller):
    path = f"{API_PREFIX}/snapshots"
    dependencies = USER_DEPENDENCIES
    request_max_body_size = MAX_REQUEST_BODY_BYTES
    tags = ["snapshots"]

    @get("/", sync_to_thread=True, summary="List snapshots", responses=_errors(422))
    def list(
        self,
        principal: Principal,
        orch: Orchestrator,
        instance: str | None = None,
        q: str | None = QUERY_TEXT,
        include_deleted: bool = INCLUDE_DELETED,
        sort: ListSort = "name",
        limit: int = LIMIT,
        cursor: str | None = CURSOR,
        owner: str | None = OWNER,
    ) -> SnapshotPage:
        """Deleted snapshots are listed only with include_deleted=true."""
        page = orch.list_snapshots(
            principal, instance=instance, q=q, include_deleted=include_deleted, owner=owner, sort=sort,
            limit=limit, cursor=cursor,
        )
        return SnapshotPage(
            items=[snapshot_json(s) for s in page.items], total=page.total, limit=page.limit, next_cursor=page.next_cursor
        )

    @get("/{name:str}", sync_to_thread=True, summary="One snapshot", responses=_errors(404, 422))
    def get_one(self, name: str, principal: Principal, orch: Orchestrator, owner: str | None = OWNER) -> SnapshotView:
        return snapshot_json(orch.get_snapshot(principal, name, owner))

    @delete("/{name:str}", status_code=202, sync_to_thread=True, summary="Delete a snapshot and its image",
            responses=_errors(404, 409, 422))
    def remove(self, name: str, principal: Principal, orch: Orchestrator, owner: str | None = OWNER) -> SnapshotOperation:
        snapshot, op = orch.delete_snapshot(principal, name, owner)
        return SnapshotOperation(snapshot=snapshot_json(snapshot), operation=operation_json(op))


class OperationController(Controller):
    path = f"{API_PREFIX}/operations"
    dependencies = USER_DEPENDENCIES
    request_max_body_size = MAX_REQUEST_BODY_BYTES
    tags = ["operations"]

    @get("/{op_id:str}", sync_to_thread=True, summary="Status, steps, log lines and error", responses=_errors(404))
    def get_one(
        self, op_id: str, principal: Principal, orch: Orchestrator, log_offset: int = Parameter(default=0, ge=0)
    ) -> OperationView:
        return operation_json(orch.get_operation(principal, op_id), log_offset)


# ---------------------------------------------------------------- agent API


class AgentController(Controller):
    path = f"{API_PREFIX}/agent"
    tags = ["agent"]

    @post("/report", status_code=202, summary="An agent's report (agent token only)", responses=_errors(
        403, 413, 422, 503, descriptions={403: "The report is for another instance than the token's",
                                          503: "The ingest buffer is full; retry later"}))
    async def report(self, request: Request) -> ReportAnswer:
        """`notices`: messages for the instance's users (autostop's warning), from memory, never the store."""
        runtime = _runtime(request)
        ingest = runtime.ingest
        instance, _ = await _authenticate_agent(request)
        # The raw body, capped before it is parsed; parsed by ingest, never by request.json().
        raw = await read_body(request.stream(), request.headers.get("content-length"))
        if len(raw) > MAX_REPORT_BYTES:  # a backlog: parsed off the event loop
            accepted = await to_thread.run_sync(ingest.accept, instance, raw)
        else:
            accepted = ingest.accept(instance, raw)
        return report_answer(accepted, runtime.autostop.notices.notices_for(instance))

    @post("/token", status_code=200, summary="Renew the agent's token before it expires", responses=_errors())
    async def renew(self, request: Request) -> dict[str, str]:
        instance, _ = await _authenticate_agent(request)
        token, expires = await to_thread.run_sync(_runtime(request).ingest.renew, instance)
        return {"token": token, "expires_at": expires.isoformat()}


async def _authenticate_agent(request: Request) -> tuple[str, str]:
    ingest = _runtime(request).ingest
    header = request.headers.get("authorization")
    # Answered from the token cache on the event loop; MongoDB only off-thread.
    return ingest.authenticate(header, may_query=False) or await to_thread.run_sync(ingest.authenticate, header)


# ---------------------------------------------------------------- service


@get("/healthz", sync_to_thread=True, tags=["health"], summary="Liveness, MongoDB and broker",
     responses={503: _success(ServiceHealth, ERROR_DESCRIPTIONS[503])})
def healthz(request: Request) -> Response[ServiceHealth]:
    runtime = _runtime(request)
    mongodb = db.ping()
    broker = runtime.dispatcher.ping()
    ingest = IngestHealth(**runtime.ingest.health())
    body = ServiceHealth(status="ok" if mongodb and broker and ingest.ok else "degraded", mongodb=mongodb, broker=broker,
                         ingest=ingest, dispatch="rabbitmq" if runtime.settings.amqp_url else "in-process",
                         version=__version__, simulated=runtime.settings.simulated)
    return Response(body, status_code=200 if mongodb else 503)


@get(f"{API_PREFIX}/features", sync_to_thread=False, tags=["features"], summary="Enabled clouds and features")
def features(request: Request) -> FeaturesView:
    settings = _runtime(request).settings
    return FeaturesView(
        clouds=list(settings.clouds),
        features=FeatureFlags(
            snapshots=True,
            preview=True,
            configuration=True,
            dispatch="rabbitmq" if settings.amqp_url else "in-process",
            sidebar=settings.feature_sidebar,
            simulated=settings.simulated,
        ),
        known_clouds=list(KNOWN_CLOUDS),
    )


@get(f"{API_PREFIX}/catalog", sync_to_thread=False, tags=["features"],
     summary="Regions, zones, machine types and images of the enabled clouds",
     dependencies={"principal": USER_DEPENDENCIES["principal"]}, responses=_errors())
def catalog(request: Request, principal: Principal) -> CatalogView:
    return catalog_json(_runtime(request).settings.clouds)


# ---------------------------------------------------------------- sign-in


@post(f"{API_PREFIX}/auth/signin", status_code=200, sync_to_thread=True, tags=["auth"],
      summary="Exchange the one-time code of `orch serve`'s sign-in link for an admin token",
      request_max_body_size=MAX_REQUEST_BODY_BYTES,
      responses=_errors(413, descriptions={401: "The sign-in code is unknown, used or expired"}))
def signin(request: Request, data: SigninRequest) -> SignedIn:
    """No Authorization: the code is the credential, valid once. The token is recorded (`orch token list`)."""
    try:
        issued = redeem_signin_code(_runtime(request).settings.jwt_secret, data.code)
    except SigninRefused as error:
        raise HTTPException(status_code=401, detail=f"sign-in link used or expired: {error}") from None
    return SignedIn(token=issued.token, user=issued.user, role=issued.role, expires_at=issued.expires_at.isoformat())


@get(f"{API_PREFIX}/me", sync_to_thread=False, tags=["auth"], summary="The user behind the token",
     dependencies={"principal": Provide(provide_principal)}, responses=_errors())
def me(principal: Principal) -> MeView:
    expires_at = principal.expires_at.isoformat() if principal.expires_at else None
    return MeView(user=principal.name, role=principal.role, expires_at=expires_at)  # type: ignore[arg-type]


# ---------------------------------------------------------------- requests and errors


class JsonBodyRequest(Request):
    """A request whose JSON body errors are 400s that say what is wrong with the body."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except SerializationException as error:  # not JSON, or not UTF-8
            raise ClientException(f"request body is not valid JSON: {error}") from None
        except RecursionError:  # msgspec's decoder stops at the interpreter's recursion limit
            raise ClientException("request body is not valid JSON: nested too deeply") from None


async def _answer_options(request: Request) -> Response | None:
    """OPTIONS answers with every method of the path.

    A coroutine: Litestar runs a plain function hook in a worker thread, a hop per request.

    Litestar 2 makes a path's automatic OPTIONS handler when the path's first handler is
    registered, so its Allow header lists only that handler's methods (litestar#4169,
    fixed in Litestar 3); the path's finished route has them all.
    """
    if request.method != "OPTIONS":
        return None
    template = request.scope["path_template"]
    for route in request.app.routes:
        if isinstance(route, HTTPRoute) and route.path_format == template:
            return Response(None, status_code=204, headers={"Allow": ", ".join(sorted(route.methods))}, media_type=MediaType.TEXT)
    return None


def _error(status_code: int, detail: str, extra: dict | None = None) -> Response:
    return Response(ErrorBody(status_code=status_code, detail=detail, extra=extra), status_code=status_code)


def _service_error(request: Request, error: ServiceError) -> Response:
    return _error(error.status_code, error.detail, {"field": error.field} if error.field else None)


def _report_rejected(request: Request, error: ReportRejected) -> Response:
    return _error(error.status_code, error.detail)


def _body_too_large(request: Request, error: RequestEntityTooLarge) -> Response:
    limit = request.route_handler.resolve_request_max_body_size()
    return _error(413, f"request body: larger than the {limit} bytes this endpoint accepts")


def _unexpected(request: Request, error: Exception) -> Response:
    """Any exception no other handler answers: logged with its traceback, a 500 without internals."""
    log.exception("%s %s failed", request.method, request.url.path, exc_info=error)
    return _error(HTTP_500_INTERNAL_SERVER_ERROR, "Internal Server Error")


def create_app(runtime: Runtime) -> Litestar:
    app = Litestar(
        route_handlers=[InstanceController, SnapshotController, OperationController, AgentController, healthz, features,
                        catalog, signin, me, *PAGE_HANDLERS],
        exception_handlers={
            ServiceError: _service_error,
            ReportRejected: _report_rejected,
            RequestEntityTooLarge: _body_too_large,
            HTTP_500_INTERNAL_SERVER_ERROR: _unexpected,
        },
        request_class=JsonBodyRequest,
        before_request=_answer_options,
        middleware=[ConditionalGetMiddleware],
        plugins=[DocumentedAsPlugin()],
        openapi_config=OpenAPIConfig(title="orch", version=__version__, path="/schema"),
        on_shutdown=[runtime.close],
        debug=False,
    )
    app.state.runtime = runtime
    return app
