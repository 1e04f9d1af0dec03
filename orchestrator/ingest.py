"""Agent report ingestion: token checks per request, storage in batches.

A report is authenticated and validated on the request path, then buffered;
a flusher thread stores each flush's reports as compressed batch documents
and keeps the latest report per instance in memory. An upkeep thread writes
those to the instance documents at a bounded rate, marks announced preemptions
and refreshes stale token checks: that work (health writes cost the embedded
store milliseconds each) never delays the next flush. Storage cost is paid per
batch rather than per report.

Nothing one agent sends can stop ingestion for the others: the body is capped
before it is parsed, every value is range-checked into a fixed schema (so what
is stored is always storable), and the flush loop survives any error, storing
what it can and counting (and logging) what it has to drop.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from bson import Binary, ObjectId
from bson.errors import InvalidId
from pymongo import UpdateOne
from pymongo.errors import ConnectionFailure, PyMongoError

from orchestrator.auth import TokenError, bearer_token, decode_agent_token, mint_agent_token, token_hash
from orchestrator.models import Instance, MetricBatch, utcnow
from orchestrator.operations.preemption import NOTICE_SOURCES, mark_preempted
from orchestrator.settings import Settings

log = logging.getLogger("orch.ingest")

# How long a token check is trusted. An agent reporting after that is still answered
# from the cache while its check is refreshed in the background (in bulk, next upkeep pass),
# so reports never wait on MongoDB for a known token, and a revocation takes effect
# within TOKEN_CACHE_S plus an upkeep interval.
TOKEN_CACHE_S = 5.0
# Instance ids per bulk token refresh query.
TOKEN_REFRESH_CHUNK = 200
# Agent tokens whose signature this process has verified (by their hash, with their instance and
# expiry): an agent's next report skips the JWT decode (the largest single cost of a report).
# At most this many, oldest forgotten first (about 60,000 agents report every 30 s).
MAX_VERIFIED_TOKENS = 100_000
# Flushes start this often (a long one is followed by the next at once).
FLUSH_INTERVAL_S = 0.25
# Upkeep passes (health writes, preemptions, token refreshes) start this often.
UPKEEP_INTERVAL_S = 1.0
# Instance documents updated with their latest report per upkeep pass (see _persist_health).
HEALTH_WRITES_PER_PASS = 100
MAX_BUFFER = 200_000
# Ingest is failing when reports wait this many flush intervals without a flush finishing.
STALLED_FLUSH_INTERVALS = 40
# JSON (before zlib) per batch document, well under MongoDB's 16 MiB document limit.
MAX_BATCH_JSON_BYTES = 8 * 1024 * 1024
# /healthz shows the last storage error cut to this length.
MAX_ERROR_CHARS = 1000

# A real report is 1-2 KB (under 10 KB with many disks and GPUs). A body may hold one
# report or {"reports": [...]} (an agent's backlog); it may use MAX_REPORT_BYTES per
# report it holds, and never more than MAX_BODY_BYTES, which is checked before parsing.
MAX_REPORT_BYTES = 64 * 1024
MAX_REPORTS_PER_REQUEST = 500
MAX_BODY_BYTES = 4 * 1024 * 1024  # MAX_REPORTS_PER_REQUEST reports of about 8 KiB
# A report's `ts` may be this far ahead of the server's clock (clock skew), and no
# older than the samples' retention (MetricBatch expires batches after 7 days).
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
MAX_REPORT_AGE = dt.timedelta(days=7)
# Value ranges: bytes fit MongoDB's int64, the rest are what a real host can report.
MAX_BYTES = 2**63 - 1
MAX_UPTIME_S = 100 * 365 * 86400
MAX_LOAD = 1_000_000.0
MIN_TEMPERATURE_C = -60.0
MAX_TEMPERATURE_C = 200.0
MAX_TEXT_CHARS = 256
MAX_TS_CHARS = 64
MAX_LOAD_VALUES = 3
# The agent lists every mounted filesystem, an overlay mount per container on a docker host.
MAX_DISKS = 256
MAX_GPUS = 64
# [spot] Instances with a preemption notice waiting for the next upkeep pass (each is one instance's).
MAX_PENDING_PREEMPTIONS = 10_000


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


# -- the report schema ---------------------------------------------------------
# Fields not named here are dropped: a newer agent's extra fields do not break
# ingestion, and what is stored is bounded by these types.

ByteCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_BYTES)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
Temperature = Annotated[float, msgspec.Meta(ge=MIN_TEMPERATURE_C, le=MAX_TEMPERATURE_C)]
LoadValue = Annotated[float, msgspec.Meta(ge=0, le=MAX_LOAD)]


class _Memory(msgspec.Struct):
    total: ByteCount
    used: ByteCount


class _Disk(msgspec.Struct):
    mount: Text
    total: ByteCount
    used: ByteCount


class _Gpu(msgspec.Struct):
    # nvidia-smi reports "[N/A]" for figures a GPU does not have: the agent sends null.
    index: Annotated[int, msgspec.Meta(ge=0, lt=MAX_GPUS)]
    name: Text
    utilization_percent: Percent | None
    memory_total: ByteCount | None
    memory_used: ByteCount | None
    temperature_c: Temperature | None


class _Preemption(msgspec.Struct):
    """[spot] The agent read from the cloud's metadata that the machine is being taken back."""

    source: Literal[NOTICE_SOURCES]  # type: ignore[valid-type]
    detail: Text = ""


class _Report(msgspec.Struct):
    instance: Text
    ts: Annotated[str, msgspec.Meta(max_length=MAX_TS_CHARS)] | float
    uptime_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_UPTIME_S)]
    load: Annotated[list[LoadValue], msgspec.Meta(max_length=MAX_LOAD_VALUES)]
    cpu_percent: Percent
    memory: _Memory
    disk: Annotated[list[_Disk], msgspec.Meta(max_length=MAX_DISKS)]
    gpus: Annotated[list[_Gpu], msgspec.Meta(max_length=MAX_GPUS)]
    agent_version: Text
    preemption: _Preemption | None = None


def report_time(value: str | float) -> dt.datetime:
    """A report's `ts` (ISO 8601 with a zone, or seconds since the epoch) as naive UTC; ValueError if neither."""
    try:
        if isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value)
            if parsed.tzinfo is not None:
                return parsed.astimezone(dt.UTC).replace(tzinfo=None)
        elif value >= 0:
            return dt.datetime.fromtimestamp(value, dt.UTC).replace(tzinfo=None)
    except (ValueError, OverflowError, OSError):
        pass
    raise ValueError(f"{value!r} is not an ISO 8601 time with a zone or seconds since the epoch")


def _validation_detail(error: msgspec.ValidationError, where: str) -> str:
    """msgspec's "Expected ... - at `$.memory.total`" as "memory.total: expected ..."."""
    message, _, path = str(error).rpartition(" - at `$")
    if not message:
        return f"{where or 'report'}: {error}"
    field = (where + path.rstrip("`")).lstrip(".") or "report"
    return f"{field}: {message[0].lower()}{message[1:]}"


def validate_report(
    report: object, instance: str, now: dt.datetime | None = None, where: str = ""
) -> tuple[dict, dt.datetime]:
    """Check one report against the schema and the server's clock.

    Returns the report as it is stored (unknown fields dropped) and its time;
    raises ReportRejected naming the field (prefixed with `where`, e.g. "reports[3]").
    """

    def named(field: str) -> str:
        return f"{where}.{field}" if where else field

    if not isinstance(report, dict):
        raise ReportRejected(422, f"{where or 'report'}: must be a JSON object")
    if report.get("instance") != instance:
        claimed = report.get("instance")
        shown = repr(claimed)[:MAX_TEXT_CHARS] if isinstance(claimed, str) else type(claimed).__name__
        mismatch = f"this agent token is for {instance!r}, the report is for {shown}"
        raise ReportRejected(403, f"{named('instance')}: {mismatch}")
    try:
        checked = msgspec.convert(report, _Report)
    except msgspec.ValidationError as error:
        raise ReportRejected(422, _validation_detail(error, where)) from None
    try:
        ts = report_time(checked.ts)
    except ValueError as error:
        raise ReportRejected(422, f"{named('ts')}: {error}") from None
    now = now or utcnow()
    if ts > now + MAX_CLOCK_SKEW:
        ahead = f"more than {MAX_CLOCK_SKEW.total_seconds():g} s ahead of the service's clock ({now.isoformat()}Z)"
        raise ReportRejected(422, f"{named('ts')}: {ts.isoformat()}Z is {ahead}")
    if ts < now - MAX_REPORT_AGE:
        older = f"older than the samples' retention ({MAX_REPORT_AGE.days} days)"
        raise ReportRejected(422, f"{named('ts')}: {ts.isoformat()}Z is {older}")
    if checked.memory.used > checked.memory.total:
        raise ReportRejected(422, f"{named('memory.used')}: more than memory.total")
    for position, disk in enumerate(checked.disk):
        if disk.used > disk.total:
            raise ReportRejected(422, f"{named(f'disk[{position}].used')}: more than its total")
    stored = msgspec.to_builtins(checked)
    if stored.get("preemption") is None:  # only a spot machine's notice carries one
        stored.pop("preemption", None)
    return stored, ts


def decode_body(raw: bytes) -> object:
    """The request body as JSON; a body that is not JSON is a 400 naming the problem."""
    if len(raw) > MAX_BODY_BYTES:
        raise ReportRejected(413, f"body: {len(raw)} bytes is over the limit of {MAX_BODY_BYTES} bytes per request")
    try:
        return msgspec.json.decode(raw)
    except RecursionError:
        raise ReportRejected(400, "body: JSON nested too deeply (a report is nested 3 levels)") from None
    except msgspec.DecodeError as error:
        raise ReportRejected(400, f"body: not valid JSON: {error}") from None


def declared_length(content_length: str | None) -> int | None:
    """A Content-Length header's value; None when absent or not ASCII digits (str.isdigit() also takes "²",
    latin-1 0xb2, which int() refuses)."""
    length = content_length.strip() if content_length is not None else ""
    return int(length) if length.isascii() and length.isdigit() else None


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed MAX_BODY_BYTES."""
    too_large = f"body: over the limit of {MAX_BODY_BYTES} bytes per request"
    length = declared_length(content_length)
    if length is not None and length > MAX_BODY_BYTES:
        raise ReportRejected(413, too_large)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ReportRejected(413, too_large)
    return bytes(body)


class AgentIngest:
    def __init__(self, settings: Settings, dispatch: Callable[[str], bool] | None = None):
        self.settings = settings
        # [spot] Sends the operation a preemption's action records (orchestrator/operations/preemption.py).
        self._dispatch = dispatch
        # [spot] Preemption notices (instance, report time, notice) for the flush thread, one per instance.
        self._preemptions: dict[str, tuple[dt.datetime, dict]] = {}
        self._tokens: dict[str, _TokenState] = {}
        self._verified: dict[str, tuple[str, float]] = {}  # token hash -> (instance id, expiry, epoch s)
        self._stale_tokens: set[str] = set()
        self._buffer: list[tuple[str, dict, dt.datetime, dt.datetime]] = []
        # Rows (instance, ts, report) taken from the buffer and not yet stored: those of the
        # flush under way, then those a storage outage left for the next flush.
        self._unstored: list[tuple[str, dt.datetime, dict]] = []
        self._held = 0
        self._latest: dict[str, _Latest] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stored = 0
        self._dropped = 0
        self._errors = 0
        self._last_error: str | None = None
        self._last_flush_ok = True
        self._last_upkeep_ok = True
        self._last_flush_at: dt.datetime | None = None
        self._last_flush_monotonic = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flush_loop, name="ingest-flush", daemon=True)
        self._upkeep_thread = threading.Thread(target=self._upkeep_loop, name="ingest-upkeep", daemon=True)
        self._thread.start()
        self._upkeep_thread.start()

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
            digest = token_hash(token)
            instance = self._verified_instance(digest, token)
        except TokenError as error:
            raise ReportRejected(401, str(error)) from None
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

    def _verified_instance(self, digest: str, token: str) -> str:
        """The token's instance id: from the tokens verified before while unexpired, else decoded (TokenError)."""
        verified = self._verified.get(digest)
        if verified is not None and time.time() < verified[1]:
            return verified[0]
        claims = decode_agent_token(self.settings.jwt_secret, token)
        if len(self._verified) >= MAX_VERIFIED_TOKENS:
            self._verified.pop(next(iter(self._verified)), None)
        self._verified[digest] = (claims["sub"], float(claims["exp"]))
        return claims["sub"]

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

    def accept(self, instance: str, raw: bytes) -> int:
        """Validate a request body (one report or {"reports": [...]}) and buffer its reports."""
        body = decode_body(raw)
        batch = isinstance(body, dict) and "reports" in body
        reports = body["reports"] if batch else [body]
        if not isinstance(reports, list) or not reports:
            raise ReportRejected(422, "reports: must be a non-empty list")
        if len(reports) > MAX_REPORTS_PER_REQUEST:
            raise ReportRejected(413, f"reports: at most {MAX_REPORTS_PER_REQUEST} per request")
        if len(raw) > len(reports) * MAX_REPORT_BYTES:
            raise ReportRejected(
                413, f"body: {len(raw)} bytes for {len(reports)} report(s); at most {MAX_REPORT_BYTES} bytes per report"
            )
        now = utcnow()
        checked = [
            validate_report(report, instance, now, f"reports[{position}]" if batch else "")
            for position, report in enumerate(reports)
        ]
        with self._lock:
            if len(self._buffer) + self._held + len(checked) > MAX_BUFFER:
                raise ReportRejected(503, "ingest buffer is full; retry later")
            self._buffer.extend((instance, report, ts, now) for report, ts in checked)
            for report, ts in checked:
                if report.get("preemption") and len(self._preemptions) < MAX_PENDING_PREEMPTIONS:
                    self._preemptions.setdefault(instance, (ts, report["preemption"]))
        return len(checked)

    def _every(self, interval_s: float, work: Callable[[], None], what: str, failed: Callable[[], None]) -> None:
        """Run `work` every `interval_s` (from start to start) until stopped; it outlives any error."""
        next_start = time.monotonic() + interval_s
        while not self._stop.wait(max(0.0, next_start - time.monotonic())):
            next_start = time.monotonic() + interval_s
            try:
                work()
            except Exception as error:  # every instance's ingestion depends on this loop
                log.exception("agent report %s failed", what)
                self._failed(f"{what} failed: {error!r}")
                failed()

    def _flush_loop(self) -> None:
        self._every(FLUSH_INTERVAL_S, self.flush, "flush", lambda: setattr(self, "_last_flush_ok", False))

    def _upkeep_loop(self) -> None:
        self._every(UPKEEP_INTERVAL_S, self.upkeep, "upkeep", lambda: setattr(self, "_last_upkeep_ok", False))

    def upkeep(self) -> None:
        """Write some instances' latest health, mark announced preemptions, refresh stale token checks."""
        errors_before = self._errors
        self._persist_health()
        self._mark_preempted()
        self._refresh_stale_tokens()
        self._last_upkeep_ok = self._errors == errors_before

    def flush(self) -> None:
        """Store the buffered reports in batches; keep the newest report per instance in memory."""
        with self._flush_lock:
            errors_before = self._errors
            with self._lock:
                batch, self._buffer = self._buffer, []
                rows, self._unstored = self._unstored, []
                self._held = len(rows) + len(batch)
            rows.extend((instance, ts, report) for instance, report, ts, _ in batch)
            dropped: list[tuple[str, dt.datetime, dict]] = []
            unstored = self._store(rows, dropped)
            with self._lock:
                self._unstored = unstored
                self._held = len(unstored)
            # The newest report per instance, unless it had to be dropped (a storage outage
            # does not make a report less recent: the agent is alive).
            dropped_ids = {id(row[2]) for row in dropped}
            for instance, report, ts, received in batch:
                current = self._latest.get(instance)
                if id(report) not in dropped_ids and (current is None or ts >= current.ts):
                    written = current.first_written if current else False
                    self._latest[instance] = _Latest(ts, received, report, persisted=False, first_written=written)
            self._last_flush_ok = self._errors == errors_before
            self._last_flush_at = utcnow()
            self._last_flush_monotonic = time.monotonic()

    def _store(self, rows: list[tuple[str, dt.datetime, dict]], dropped: list) -> list[tuple[str, dt.datetime, dict]]:
        """Insert the rows as batch documents; returns the rows a storage outage left unstored.

        A batch MongoDB refuses for its content is split in halves until the report
        that cannot be stored is alone; that one is dropped (counted, logged, and
        added to `dropped`), the others are stored.
        """
        encoded = []
        for row in rows:
            instance, ts, report = row
            try:
                # msgspec: about 6x faster than json.dumps, and the flush shares the GIL with the requests.
                encoded.append((row, msgspec.json.encode([instance, ts.isoformat(), report])))
            except (TypeError, ValueError) as error:
                self._drop(row, error, dropped)
        pending = list(self._chunks(encoded))
        while pending:
            chunk = pending.pop(0)
            try:
                MetricBatch._get_collection().insert_one(self._batch_document(chunk))
            except ConnectionFailure as error:
                remaining = [row for row, _ in chunk] + [row for rest in pending for row, _ in rest]
                log.error("could not store %d agent reports (kept for the next flush): %s", len(remaining), error)
                self._failed(f"could not store {len(remaining)} agent reports: {error}")
                return remaining
            except Exception as error:  # refused for what it holds (BSON, size, server-side checks)
                if len(chunk) == 1:
                    self._drop(chunk[0][0], error, dropped)
                else:
                    pending[:0] = [chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]]
                continue
            self._stored += len(chunk)
        return []

    @staticmethod
    def _chunks(encoded: list[tuple[tuple, bytes]]):
        """Consecutive runs of rows whose JSON stays under MAX_BATCH_JSON_BYTES (at least one row each)."""
        chunk: list[tuple[tuple, bytes]] = []
        size = 0
        for item in encoded:
            if chunk and size + len(item[1]) > MAX_BATCH_JSON_BYTES:
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += len(item[1]) + 1
        if chunk:
            yield chunk

    @staticmethod
    def _batch_document(chunk: list[tuple[tuple, bytes]]) -> dict:
        times = [row[1] for row, _ in chunk]
        data = b"[" + b",".join(text for _, text in chunk) + b"]"
        return {
            "flushed_at": utcnow(),
            "instances": sorted({row[0] for row, _ in chunk}),
            "ts_min": min(times),
            "ts_max": max(times),
            "count": len(chunk),
            "data": Binary(zlib.compress(data, 1)),
        }

    def _drop(self, row: tuple[str, dt.datetime, dict], error: BaseException, dropped: list) -> None:
        instance, ts, _ = row
        dropped.append(row)
        self._dropped += 1
        log.error("dropped the agent report of %s at %s: it cannot be stored: %r", instance, ts.isoformat(), error)
        self._failed(f"dropped the agent report of {instance} at {ts.isoformat()}: it cannot be stored: {error!r}")

    def _failed(self, message: str) -> None:
        with self._lock:  # the flush and upkeep threads both count errors
            self._last_error = f"{utcnow().isoformat()}Z {message}"[:MAX_ERROR_CHARS]
            self._errors += 1

    def _persist_health(self) -> None:
        """Write the newest report of some instances to their documents, first reports first.

        Reads in this process see every report at once (latest()); what is
        written here is for other processes (workers waiting for a first
        report, other API replicas), capped per pass so storage keeps up.
        """
        pending = [(name, entry) for name, entry in list(self._latest.items()) if not entry.persisted]
        if not pending:
            return
        pending.sort(key=lambda item: (item[1].first_written, item[1].received_at))
        chosen = pending[:HEALTH_WRITES_PER_PASS]
        updates = [
            (
                {"_id": _object_id(name)},
                {"$set": {"health.last_report_at": entry.received_at, "health.last_report": entry.report}},
            )
            for name, entry in chosen
        ]
        try:
            Instance._get_collection().bulk_write([UpdateOne(*update) for update in updates], ordered=False)
        except ConnectionFailure as error:
            log.error("could not store the health of %d instances (retried next pass): %s", len(chosen), error)
            self._failed(f"could not store the health of {len(chosen)} instances: {error}")
            return
        except Exception:
            # One report the store refuses fails the whole bulk: write them one by one.
            for (name, entry), update in zip(chosen, updates):
                try:
                    Instance._get_collection().update_one(*update)
                except ConnectionFailure as error:
                    self._failed(f"could not store the health of {name}: {error}")
                    return
                except Exception as error:
                    log.error("could not store the health of %s (skipped until its next report): %r", name, error)
                    self._failed(f"could not store the health of {name}: {error!r}")
                entry.persisted = True
                entry.first_written = True
            return
        for name, entry in chosen:
            entry.persisted = True
            entry.first_written = True

    def health(self) -> dict:
        """Whether ingestion works: both threads run, the last flush stored everything and the last upkeep
        pass wrote what it took, no flush is overdue."""
        with self._lock:
            buffered = len(self._buffer) + self._held
        alive = self._thread.is_alive() and self._upkeep_thread.is_alive()
        overdue = time.monotonic() - self._last_flush_monotonic > STALLED_FLUSH_INTERVALS * FLUSH_INTERVAL_S
        last_error = self._last_error
        if not alive:
            last_error = "the flush or upkeep thread is not running"
        elif buffered and overdue:
            waited = STALLED_FLUSH_INTERVALS * FLUSH_INTERVAL_S
            last_error = f"no flush for over {waited:g} s with {buffered} report(s) waiting"
        return {
            "ok": alive and self._last_flush_ok and self._last_upkeep_ok and not (buffered and overdue),
            "last_error": last_error,
            "last_flush_at": f"{self._last_flush_at.isoformat()}Z" if self._last_flush_at else None,
            "stored": self._stored,
            "dropped": self._dropped,
            "buffered": buffered,
        }

    def _mark_preempted(self) -> None:
        """[spot] Each instance whose agent announced a preemption is marked (off the request path, once)."""
        with self._lock:
            pending, self._preemptions = self._preemptions, {}
        for instance_id, (ts, notice) in pending.items():
            oid = _object_id(instance_id)
            instance = Instance.objects(id=oid).first() if oid else None
            # A notice from before the last preemption (an agent's backlog) is that one's, already handled.
            if instance is None or (instance.preempted_at is not None and ts <= instance.preempted_at):
                continue
            try:
                mark_preempted(
                    instance,
                    notice["source"],
                    detail=notice.get("detail", ""),
                    dispatch=self._dispatch,
                    grace_s=self.settings.preemption_grace_s,
                )
            except Exception:  # the next pass goes on; the agent repeats a notice that still holds
                log.exception("marking instance %s preempted failed", instance_id)

    def latest(self, instance: str) -> tuple[dt.datetime, dict] | None:
        """(received_at, report) of the newest report this process has seen for the instance (by id)."""
        entry = self._latest.get(instance)
        return (entry.received_at, entry.report) if entry else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._upkeep_thread.join(timeout=5)
        self.flush()
        self.upkeep()


def _object_id(instance: str) -> ObjectId | None:
    """An agent identity (an instance's id) as a document id; None for one that cannot be."""
    try:
        return ObjectId(instance)
    except (InvalidId, TypeError):
        return None


def health_state(last_report_at: dt.datetime | None, interval_s: int, now: dt.datetime | None = None) -> str:
    """healthy, or unreachable after three missed intervals; unknown before the first report."""
    if last_report_at is None:
        return "unknown"
    now = now or utcnow()
    return "healthy" if (now - last_report_at).total_seconds() <= 3 * interval_s else "unreachable"
