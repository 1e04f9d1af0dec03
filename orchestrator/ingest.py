"""Agent report ingestion: token checks per request, storage in batches.

A report is authenticated and validated on the request path, then buffered;
a flusher thread stores each flush's reports as one compressed batch document
and keeps the latest report per instance in memory, writing it to the
instance documents at a bounded rate. Storage cost is paid per batch rather
than per report.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
import zlib
from dataclasses import dataclass

from bson import Binary, ObjectId
from bson.errors import InvalidId
from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from orchestrator.auth import TokenError, bearer_token, decode_agent_token, mint_agent_token, token_hash
from orchestrator.models import Instance, MetricBatch, utcnow
from orchestrator.settings import Settings

log = logging.getLogger("orch.ingest")

# How long a token check is trusted. An agent reporting after that is still answered
# from the cache while its check is refreshed in the background (in bulk, next flush),
# so reports never wait on MongoDB for a known token, and a revocation takes effect
# within TOKEN_CACHE_S plus a flush interval.
TOKEN_CACHE_S = 5.0
# Instance ids per bulk token refresh query.
TOKEN_REFRESH_CHUNK = 200
FLUSH_INTERVAL_S = 0.5
# Instance documents updated with their latest report per flush (see _persist_health).
HEALTH_WRITES_PER_FLUSH = 100
MAX_BUFFER = 200_000
MAX_REPORTS_PER_REQUEST = 500
RENEW_WITHIN = dt.timedelta(days=7)


class ReportRejected(Exception):
    """A report (or its token) is refused; status_code and the message say why."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass
class _Latest:
    ts: dt.datetime
    received_at: dt.datetime
    report: dict
    persisted: bool
    first_written: bool = False


@dataclass
class _TokenState:
    token_hash: str | None
    status: str
    fetched_at: float


def _number(report: dict, key: str, *, minimum: float | None = None, maximum: float | None = None) -> None:
    value = report.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReportRejected(422, f"{key}: must be a number")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ReportRejected(422, f"{key}: {value} is out of range")


def report_time(report: dict) -> dt.datetime:
    """The report's `ts` (ISO 8601, or seconds since the epoch) as naive UTC."""
    value = report.get("ts")
    try:
        if isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value)
            if parsed.tzinfo is None:
                raise ValueError
            return parsed.astimezone(dt.UTC).replace(tzinfo=None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
            return dt.datetime.fromtimestamp(value, dt.UTC).replace(tzinfo=None)
    except (ValueError, OverflowError, OSError):
        pass
    raise ReportRejected(422, f"ts: {value!r} is not an ISO 8601 time with a zone or seconds since the epoch")


def validate_report(report: object, instance: str) -> dict:
    """Check a report's shape; returns it. Raises ReportRejected naming the field."""
    if not isinstance(report, dict):
        raise ReportRejected(422, "report: must be a JSON object")
    if report.get("instance") != instance:
        raise ReportRejected(
            403, f"instance: this agent token is for {instance!r}, the report is for {report.get('instance')!r}"
        )
    report_time(report)
    _number(report, "uptime_s", minimum=0)
    _number(report, "cpu_percent", minimum=0, maximum=100)
    load = report.get("load")
    if not isinstance(load, list) or not all(isinstance(v, (int, float)) for v in load):
        raise ReportRejected(422, "load: must be a list of numbers")
    memory = report.get("memory")
    if not isinstance(memory, dict) or not all(isinstance(memory.get(k), int) for k in ("total", "used")):
        raise ReportRejected(422, "memory: must be an object with integer total and used")
    disk = report.get("disk")
    if not isinstance(disk, list) or not all(
        isinstance(d, dict) and isinstance(d.get("mount"), str) and isinstance(d.get("total"), int)
        and isinstance(d.get("used"), int)
        for d in disk
    ):
        raise ReportRejected(422, "disk: must be a list of {mount, total, used}")
    gpus = report.get("gpus")
    if not isinstance(gpus, list) or not all(isinstance(g, dict) for g in gpus):
        raise ReportRejected(422, "gpus: must be a list of objects")
    if not isinstance(report.get("agent_version"), str):
        raise ReportRejected(422, "agent_version: must be a string")
    return report


class AgentIngest:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._tokens: dict[str, _TokenState] = {}
        self._stale_tokens: set[str] = set()
        self._buffer: list[tuple[str, dict, dt.datetime]] = []
        self._latest: dict[str, _Latest] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flush_loop, name="ingest-flush", daemon=True)
        self._thread.start()

    # -- authentication ---------------------------------------------------

    def authenticate(self, authorization: str | None, *, may_query: bool = True) -> tuple[str, str] | None:
        """Return (instance id, token) of a valid, unrevoked agent token.

        An agent's identity is its instance's document id (the token's `sub`), unique
        per incarnation: a re-created name's instance never accepts the old one's token.

        With may_query=False it answers from the token cache alone and returns
        None when MongoDB must be asked (so an event loop can ask off-thread).
        """
        try:
            token = bearer_token(authorization)
            claims = decode_agent_token(self.settings.jwt_secret, token)
        except TokenError as error:
            raise ReportRejected(401, str(error)) from None
        instance = claims["sub"]
        digest = token_hash(token)
        state = self._tokens.get(instance)
        if state is None or state.token_hash != digest:
            # Not cached, or not the cached token (a newer one: renewed, or minted by
            # `orch token create` elsewhere; or a revoked one): ask MongoDB.
            if not may_query:
                return None
            state = self._token_state(instance)
        elif time.monotonic() - state.fetched_at > TOKEN_CACHE_S:
            with self._lock:
                self._stale_tokens.add(instance)
        if state.status == "missing":
            raise ReportRejected(401, f"token revoked: instance {instance!r} does not exist")
        if state.status == "deleted" or state.token_hash is None:
            raise ReportRejected(401, f"token revoked: instance {instance!r} was deleted or its token withdrawn")
        if state.token_hash != digest:
            raise ReportRejected(401, f"token revoked: a newer token was issued for instance {instance!r}")
        return instance, token

    def _token_state(self, instance: str) -> _TokenState:
        return self._fetch_token_states([instance])[instance]

    def _fetch_token_states(self, ids: list[str]) -> dict[str, _TokenState]:
        """Read the instances' current token hash and status into the cache (keyed by instance id)."""
        object_ids = [oid for oid in map(_object_id, ids) if oid is not None]
        rows = Instance._get_collection().find(
            {"_id": {"$in": object_ids}}, {"agent_token_hash": True, "status": True}
        )
        found = {str(row["_id"]): row for row in rows}
        now = time.monotonic()
        states = {}
        for instance_id in ids:
            row = found.get(instance_id)
            states[instance_id] = (
                _TokenState(None, "missing", now)
                if row is None
                else _TokenState(row.get("agent_token_hash"), row.get("status", ""), now)
            )
        self._tokens.update(states)
        return states

    def _refresh_stale_tokens(self) -> None:
        with self._lock:
            stale, self._stale_tokens = sorted(self._stale_tokens), set()
        for start in range(0, len(stale), TOKEN_REFRESH_CHUNK):
            try:
                self._fetch_token_states(stale[start : start + TOKEN_REFRESH_CHUNK])
            except PyMongoError as error:
                # Kept stale: the next report asks again.
                log.error("could not refresh %d agent token checks: %s", len(stale) - start, error)
                return

    def renew(self, instance: str) -> tuple[str, dt.datetime]:
        """A new token for an agent (by instance id) whose current token is valid; the old one stops working."""
        token, expires = mint_agent_token(self.settings.jwt_secret, instance)
        Instance.objects(id=_object_id(instance)).update_one(
            set__agent_token_hash=token_hash(token), set__agent_token_expires_at=expires.replace(tzinfo=None)
        )
        self._token_state(instance)
        return token, expires

    # -- reports ----------------------------------------------------------

    def accept(self, instance: str, body: object) -> int:
        reports = body.get("reports") if isinstance(body, dict) and "reports" in body else [body]
        if not isinstance(reports, list) or not reports:
            raise ReportRejected(422, "reports: must be a non-empty list")
        if len(reports) > MAX_REPORTS_PER_REQUEST:
            raise ReportRejected(413, f"reports: at most {MAX_REPORTS_PER_REQUEST} per request")
        checked = [validate_report(report, instance) for report in reports]
        received = utcnow()
        with self._lock:
            if len(self._buffer) + len(checked) > MAX_BUFFER:
                raise ReportRejected(503, "ingest buffer is full; retry later")
            self._buffer.extend((instance, report, received) for report in checked)
        return len(checked)

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            self.flush()
            self._refresh_stale_tokens()

    def flush(self) -> None:
        """Store the buffered reports as one batch, then persist some of the latest health."""
        with self._lock:
            batch, self._buffer = self._buffer, []
        if batch:
            rows = []
            times = []
            for instance, report, received in batch:
                ts = report_time(report)
                times.append(ts)
                rows.append([instance, ts.isoformat(), report])
                current = self._latest.get(instance)
                if current is None or ts >= current.ts:
                    written = current.first_written if current else False
                    self._latest[instance] = _Latest(ts, received, report, persisted=False, first_written=written)
            document = {
                "flushed_at": utcnow(),
                "instances": sorted({row[0] for row in rows}),
                "ts_min": min(times),
                "ts_max": max(times),
                "count": len(rows),
                "data": Binary(zlib.compress(json.dumps(rows, separators=(",", ":")).encode(), 1)),
            }
            try:
                MetricBatch._get_collection().insert_one(document)
            except PyMongoError as error:
                log.error("could not store %d agent reports: %s", len(batch), error)
        self._persist_health()

    def _persist_health(self) -> None:
        """Write the newest report of some instances to their documents, first reports first.

        Reads in this process see every report at once (latest()); what is
        written here is for other processes (workers waiting for a first
        report, other API replicas), capped per flush so storage keeps up.
        """
        pending = [(name, entry) for name, entry in list(self._latest.items()) if not entry.persisted]
        if not pending:
            return
        pending.sort(key=lambda item: (item[1].first_written, item[1].received_at))
        chosen = pending[:HEALTH_WRITES_PER_FLUSH]
        try:
            Instance._get_collection().bulk_write(
                [
                    UpdateOne(
                        {"_id": _object_id(name)},
                        {"$set": {"health.last_report_at": entry.received_at, "health.last_report": entry.report}},
                    )
                    for name, entry in chosen
                ],
                ordered=False,
            )
        except PyMongoError as error:
            log.error("could not store the health of %d instances: %s", len(chosen), error)
            return
        for name, entry in chosen:
            entry.persisted = True
            entry.first_written = True

    def latest(self, instance: str) -> tuple[dt.datetime, dict] | None:
        """(received_at, report) of the newest report this process has seen for the instance (by id)."""
        entry = self._latest.get(instance)
        return (entry.received_at, entry.report) if entry else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()


def _object_id(instance: str) -> ObjectId | None:
    """An agent identity (an instance's id) as a document id; None for one that cannot be."""
    try:
        return ObjectId(instance)
    except (InvalidId, TypeError):
        return None


def read_samples(instance: str, since: dt.datetime | None, until: dt.datetime | None, limit: int) -> list[dict]:
    """The instance's (by id) reports with since <= ts <= until, oldest first, at most `limit` (the newest)."""
    query: dict = {"instances": instance}
    if since:
        query["ts_max__gte"] = since
    if until:
        query["ts_min__lte"] = until
    found: list[tuple[str, dict]] = []
    since_iso = since.isoformat() if since else None
    until_iso = until.isoformat() if until else None
    for batch in MetricBatch.objects(**query).only("data"):
        for name, ts, report in json.loads(zlib.decompress(batch.data)):
            if name == instance and (since_iso is None or ts >= since_iso) and (until_iso is None or ts <= until_iso):
                found.append((ts, report))
    found.sort(key=lambda item: item[0])
    return [report for _, report in found[-limit:]]


def health_state(last_report_at: dt.datetime | None, interval_s: int, now: dt.datetime | None = None) -> str:
    """healthy, or unreachable after three missed intervals; unknown before the first report."""
    if last_report_at is None:
        return "unknown"
    now = now or utcnow()
    return "healthy" if (now - last_report_at).total_seconds() <= 3 * interval_s else "unreachable"
