"""Agent samples at rest: per-instance time buckets, rollups and retention.

The flush (orchestrator/ingest.py) stores each flush's reports as one `metric_batches`
document: one insert per flush whatever the number of instances, so ingest keeps its
rate. A maintenance pass (one process at a time, under a lease) then moves those rows
into `metric_buckets`, one document per (instance id, hour): one write per bucket per
pass. A read of one instance looks its buckets up by `_id` ("<instance id>:<start>"),
so it touches only that instance's data, plus the batches not yet moved (at most a few
passes' worth).

Once an hour's bucket is closed the pass makes its rollups (min/avg/max per
`metrics_rollup_s` of cpu_percent, memory used, and each GPU's utilization and memory
used) into `metric_rollups` (one document per instance per day), recompresses the
bucket as one frame, and deletes buckets past the raw retention and rollup days past
theirs. Every step is bounded per pass.

Metrics are keyed by the instance's id, never its name: a deleted instance's samples
are orphaned (no instance reads them: a re-created name has a new id) and expire with
the retention.

The bucket and rollup documents have few fields, each a blob: the embedded store copies
every value of a document on each update and serves only `_id` lookups from an index,
so documents are read and written by `_id` alone, with no conditional filters.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import struct
import threading
import zlib
from collections import defaultdict
from collections.abc import Iterator

import msgspec
from bson import Binary
from pymongo import InsertOne, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from orchestrator import locks
from orchestrator.models import MetricBatch, MetricBucket, MetricRollup, utcnow

log = logging.getLogger("orch.metrics")

RAW_BUCKET_S = 3600
ROLLUP_DOC_S = 86400
# A closed bucket is rolled up this long after its end, so a late flush usually lands first
# (a later one marks it for another rollup).
ROLLUP_GRACE_S = 120
# An agent reports every 30 s by default: a pass this often writes each bucket about once per report
# interval, and rows wait at most this long in the flush batches a read also looks at.
MAINTENANCE_INTERVAL_S = 30.0
# Queries for rollup and expiry work run this often, and when a process takes the lease over
# (the embedded store answers each by scanning every bucket, and one query at a time). Between
# them a pass rolls up the closed buckets it wrote itself, which it knows without a query.
FULL_SWEEP_S = 3600
# Work per pass: flush batches moved, buckets rolled up, documents deleted.
MAX_BATCHES_PER_PASS = 200
# Buckets a pass reads (one query) and writes (one bulk write) per round trip to the store:
# a pass after 30 s of reports from 5,000 agents appends to 5,000 buckets.
APPEND_CHUNK = 500
DUPLICATE_KEY = 11000
MAX_ROLLUPS_PER_PASS = 500
MAX_DELETES_PER_PASS = 1000
LEASE_KEY = "metrics:maintenance"
LEASE_S = 120
# Frames are written at level 1 as they arrive; a closed bucket is recompressed at this level.
COMPACT_LEVEL = 6
_LENGTH = struct.Struct(">I")


_EPOCH = dt.datetime(1970, 1, 1)


def epoch(when: dt.datetime) -> int:
    """Naive UTC as whole epoch seconds."""
    return (when - _EPOCH) // dt.timedelta(seconds=1)


def from_epoch(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


def bucket_start(when: dt.datetime, width_s: int = RAW_BUCKET_S) -> int:
    seconds = epoch(when)
    return seconds - seconds % width_s


def bucket_id(instance: str, start: int) -> str:
    return f"{instance}:{start}"


def encode_frame(rows: list[list], level: int = 1) -> bytes:
    """Rows [ts ISO, report] as one length-prefixed zlib frame."""
    packed = zlib.compress(msgspec.json.encode(rows), level)
    return _LENGTH.pack(len(packed)) + packed


# Rows with each report kept as its stored JSON text (msgspec.Raw): an answer passes it through
# instead of decoding and encoding it again.
_RAW_FRAME = msgspec.json.Decoder(list[tuple[str, msgspec.Raw]])
_RAW_BATCH = msgspec.json.Decoder(list[tuple[str, str, msgspec.Raw]])


def decode_frames(data: bytes, *, raw: bool = False) -> Iterator[list]:
    """The [ts, report] rows of a bucket's frames; with `raw`, each report as its JSON text (msgspec.Raw)."""
    decode = _RAW_FRAME.decode if raw else msgspec.json.decode
    offset = 0
    while offset < len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        yield from decode(zlib.decompress(data[offset : offset + length]))
        offset += length


def decode_batch(data: bytes, *, raw: bool = False) -> list[list]:
    """A flushed batch's rows, [instance, ts, report] (orchestrator/ingest.py writes them); msgspec decodes
    them several times faster than json, and the pass shares its process (and the GIL) with the requests."""
    return (_RAW_BATCH.decode if raw else msgspec.json.decode)(zlib.decompress(data))


def bucket_document(instance: str, start: int, rows: list[list], *, rolled: bool = False, level: int = 1) -> dict:
    """A new bucket as stored (also what the benchmark loads straight into the store)."""
    return {"_id": bucket_id(instance, start), "instance": instance, "start": from_epoch(start), "count": len(rows),
            "rolled": rolled, "data": Binary(encode_frame(rows, level))}


def _append_update(data: bytes, rows: list[list]) -> dict:
    """The update appending `rows` as one more frame to a bucket whose frames are `data` (to be rolled up again)."""
    return {"$set": {"data": Binary(data + encode_frame(rows)), "rolled": False}, "$inc": {"count": len(rows)}}


def rollup_document(instance: str, day: int, points: dict[str, dict]) -> dict:
    """One day's rollup points ({slot epoch s as text: point}) as stored."""
    return {"_id": bucket_id(instance, day), "instance": instance, "day": from_epoch(day),
            "data": Binary(zlib.compress(msgspec.json.encode(points), COMPACT_LEVEL))}


# -- reads ---------------------------------------------------------------------


def read_samples(
    instance: str, since: dt.datetime | None, until: dt.datetime | None, limit: int, *, retention_s: int = 86400,
    interval_s: int = 30, raw: bool = False,
) -> list:
    """The instance's (by id) reports with since <= ts <= until, oldest first, at most `limit` (the newest).

    Without `since`, from the raw retention on; never more than the retention's span before `until`
    (older samples are deleted as they expire). With `raw`, each report is its stored JSON text
    (msgspec.Raw, which msgspec encodes as it is): for an answer, not for reading the figures.
    `interval_s`, the agents' report interval, sizes the first read of buckets.
    """
    now = utcnow()
    since = since or now - dt.timedelta(seconds=retention_s)
    until = until or now + dt.timedelta(minutes=10)
    if until < since:
        return []
    since_iso, until_iso = since.isoformat(), until.isoformat()
    found: dict[str, object] = {}  # by ts: a row moved twice (a pass cut short) counts once

    def keep(rows) -> int:
        kept = 0
        for ts, report in rows:
            if since_iso <= ts <= until_iso and ts not in found:
                found[ts] = report
                kept += 1
        return kept

    # Rows not moved into buckets yet: the last few passes' batches.
    for batch in MetricBatch._get_collection().find(
        {"instances": instance, "ts_max": {"$gte": since}, "ts_min": {"$lte": until}}, {"data": True}
    ):
        keep([ts, report] for name, ts, report in decode_batch(batch["data"], raw=raw) if name == instance)
    buckets = MetricBucket._get_collection()
    in_buckets = 0
    # At most the retention's worth of buckets back from `until` (older ones are deleted as they expire),
    # so a `since` months back costs no more lookups than that.
    oldest = max(bucket_start(since), bucket_start(until) - (retention_s // RAW_BUCKET_S + 1) * RAW_BUCKET_S)
    starts = list(range(bucket_start(until), oldest - 1, -RAW_BUCKET_S))
    # Newest first; buckets partition time, so once `limit` are found older buckets cannot add newer rows.
    # Read by `_id $in` (served by primary key), in two round trips at most: the buckets that hold
    # `limit` reports at the report interval (and one more, for gaps), then the rest if still short.
    first = -(-limit * interval_s // RAW_BUCKET_S) + 1
    for chunk in (starts[:first], starts[first:]):
        if not chunk or in_buckets >= limit:
            break
        ids = [bucket_id(instance, start) for start in chunk]
        # No projection: a bucket has a few small fields besides its data, and projecting copies the document.
        found_buckets = {document["_id"]: document["data"] for document in buckets.find({"_id": {"$in": ids}})}
        for key in ids:
            if (data := found_buckets.get(key)) is not None:
                in_buckets += keep(decode_frames(data, raw=raw))
                if in_buckets >= limit:
                    break
    ordered = sorted(found)
    return [found[ts] for ts in ordered[-limit:]]


def read_rollups(instance: str, since: dt.datetime, until: dt.datetime | None, limit: int) -> list[dict]:
    """The instance's rollup points with since <= slot start <= until, oldest first, at most `limit` (the newest)."""
    until = until or utcnow()
    low, high = epoch(since), epoch(until)
    points: list[tuple[int, dict]] = []
    rollups = MetricRollup._get_collection()
    for day in range(bucket_start(until, ROLLUP_DOC_S), bucket_start(since, ROLLUP_DOC_S) - 1, -ROLLUP_DOC_S):
        document = rollups.find_one({"_id": bucket_id(instance, day)}, {"data": True})
        if document is not None:
            slots = msgspec.json.decode(zlib.decompress(document["data"]))
            points.extend((int(slot), point) for slot, point in slots.items() if low <= int(slot) <= high)
    points.sort(key=lambda item: item[0])
    return [point for _, point in points[-limit:]]


# -- rollups -------------------------------------------------------------------


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"min": min(values), "avg": round(sum(values) / len(values), 3), "max": max(values)}


def rollup_points(rows: list[list], width_s: int) -> dict[int, dict]:
    """min/avg/max per slot of width_s: cpu_percent, memory used, each GPU's utilization and memory used."""
    slots: dict[int, list[dict]] = defaultdict(list)
    for ts, report in rows:
        slots[bucket_start(dt.datetime.fromisoformat(ts), width_s)].append(report)
    points = {}
    for slot, reports in slots.items():
        gpus: dict[int, dict[str, list[float]]] = defaultdict(lambda: {"utilization_percent": [], "memory_used": []})
        for report in reports:
            for gpu in report.get("gpus") or []:
                for field in ("utilization_percent", "memory_used"):
                    if gpu.get(field) is not None:
                        gpus[gpu["index"]][field].append(gpu[field])
        points[slot] = {
            "ts": f"{from_epoch(slot).isoformat()}Z",
            "width_s": width_s,
            "count": len(reports),
            "cpu_percent": _stats([r["cpu_percent"] for r in reports]),
            "memory_used": _stats([r["memory"]["used"] for r in reports]),
            "gpus": [
                {"index": index, **{field: _stats(values) for field, values in fields.items()}}
                for index, fields in sorted(gpus.items())
            ],
        }
    return points


class MetricsMaintenance:
    """The periodic pass: move flushed batches into buckets, roll up closed buckets, expire old data."""

    def __init__(self, raw_retention_s: int, rollup_retention_s: int, rollup_s: int, *, start: bool = True,
                 interval_s: float = MAINTENANCE_INTERVAL_S):
        self.raw_retention_s = raw_retention_s
        self.rollup_retention_s = rollup_retention_s
        self.rollup_s = rollup_s
        self.interval_s = interval_s
        self.holder = f"metrics-{os.getpid()}-{id(self)}"
        self._next_full_sweep: dt.datetime | None = None
        self._written: set[str] = set()  # buckets this holder appended to, not rolled up since
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-maintenance", daemon=True)
        if start:
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_pass()
            except Exception:  # retried next pass; samples stay where they are until then
                log.exception("metrics maintenance pass failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def run_pass(self, now: dt.datetime | None = None) -> dict[str, int] | None:
        """One bounded pass; None when another process holds the lease (it does the work)."""
        now = now or utcnow()
        if not locks.acquire(LEASE_KEY, self.holder, LEASE_S):
            # Another process wrote buckets meanwhile: look for work by query once this one holds the lease again.
            self._next_full_sweep = None
            return None
        # Renewed while the pass runs: a store loaded by ingest can make one pass outlast LEASE_S (seen in
        # the ingest benchmark: over 120 s for 5,000 agents' buckets), and another process's pass must not
        # start moving the same batches meanwhile.
        renewal = locks.renewed(lambda: locks.acquire(LEASE_KEY, self.holder, LEASE_S), LEASE_S, "metrics-lease")
        try:
            with renewal:
                done = {"moved_batches": self.move_batches(), "rolled_buckets": 0, "deleted": 0}
                if self._next_full_sweep is None or now >= self._next_full_sweep:
                    self._next_full_sweep = now + dt.timedelta(seconds=FULL_SWEEP_S)
                    done["rolled_buckets"] = self.roll_up(now)
                    done["deleted"] = self.expire(now)
                else:
                    done["rolled_buckets"] = self.roll_up(now, written_only=True)
            return done
        finally:
            locks.release(LEASE_KEY, self.holder)

    def move_batches(self, limit: int = MAX_BATCHES_PER_PASS) -> int:
        """Append the oldest flushed batches' rows to their (instance, hour) buckets, then delete the batches.

        A pass cut short between the two moves some rows twice; reads and rollups count a
        (instance, ts) once.
        """
        collection = MetricBatch._get_collection()
        ids = [row["_id"] for row in collection.find({}, {"_id": True}).sort("flushed_at", 1).limit(limit)]
        groups: dict[tuple[str, int], list[list]] = defaultdict(list)
        for batch in collection.find({"_id": {"$in": ids}}, {"data": True}) if ids else ():
            for instance, ts, report in decode_batch(batch["data"]):
                groups[instance, bucket_start(dt.datetime.fromisoformat(ts))].append([ts, report])
        buckets = MetricBucket._get_collection()
        keys = list(groups)
        for offset in range(0, len(keys), APPEND_CHUNK):
            chunk = keys[offset : offset + APPEND_CHUNK]
            self._append_all(buckets, {key: groups[key] for key in chunk})
            # Per chunk: a pass that fails later still rolls up what it wrote.
            self._written.update(bucket_id(instance, start) for instance, start in chunk)
        for batch_id in ids:
            collection.delete_one({"_id": batch_id})
        return len(ids)

    @classmethod
    def _append_all(cls, buckets, groups: dict[tuple[str, int], list[list]]) -> None:
        """Each group's rows appended to its (instance, hour) bucket: the buckets that exist read in one
        query (by _id), the appends and the new buckets written in one bulk write."""
        places = list(groups)
        keys = [bucket_id(instance, start) for instance, start in places]
        existing = {row["_id"]: bytes(row["data"]) for row in buckets.find({"_id": {"$in": keys}}, {"data": True})}
        writes = [
            UpdateOne({"_id": key}, _append_update(existing[key], groups[place]))
            if key in existing else InsertOne(bucket_document(*place, groups[place]))
            for place, key in zip(places, keys)
        ]
        try:
            buckets.bulk_write(writes, ordered=False)
        except BulkWriteError as error:
            failures = error.details.get("writeErrors", [])
            if any(failure.get("code") != DUPLICATE_KEY for failure in failures):
                raise
            # New buckets another process's pass inserted meanwhile (it lost its lease): appended to instead.
            for failure in failures:
                instance, start = places[failure["index"]]
                cls._append(buckets, instance, start, groups[instance, start])

    @staticmethod
    def _append(buckets, instance: str, start: int, rows: list[list]) -> None:
        key = bucket_id(instance, start)
        existing = buckets.find_one({"_id": key}, {"data": True})
        if existing is None:
            try:
                buckets.insert_one(bucket_document(instance, start, rows))
                return
            except DuplicateKeyError:  # a pass of another process that lost its lease
                existing = buckets.find_one({"_id": key}, {"data": True})
        # Only the lease holder writes buckets, so this read-modify-write is not raced.
        buckets.update_one({"_id": key}, _append_update(bytes(existing["data"]), rows))

    def roll_up(self, now: dt.datetime, limit: int = MAX_ROLLUPS_PER_PASS, *, written_only: bool = False) -> int:
        """Rollups of closed buckets not rolled since their last rows came; each recompressed as one frame.

        written_only: only the buckets this holder wrote (no query).
        """
        closed_before = now - dt.timedelta(seconds=RAW_BUCKET_S + ROLLUP_GRACE_S)
        buckets = MetricBucket._get_collection()
        if written_only:
            last_start = epoch(closed_before)
            keys = sorted(key for key in self._written if int(key.rsplit(":", 1)[1]) <= last_start)[:limit]
        else:
            keys = [row["_id"] for row in buckets.find({"rolled": False, "start": {"$lte": closed_before}},
                                                       {"_id": True}).limit(limit)]
        for key in keys:
            self._written.discard(key)
            bucket = buckets.find_one({"_id": key})
            if bucket is None:
                continue
            rows = sorted({ts: [ts, report] for ts, report in decode_frames(bucket["data"])}.values())
            self._merge_rollups(bucket["instance"], rollup_points(rows, self.rollup_s))
            buckets.update_one({"_id": key}, {"$set": {
                "data": Binary(encode_frame(rows, COMPACT_LEVEL)), "count": len(rows), "rolled": True}})
        return len(keys)

    @staticmethod
    def _merge_rollups(instance: str, points: dict[int, dict]) -> None:
        rollups = MetricRollup._get_collection()
        by_day: dict[int, dict[int, dict]] = defaultdict(dict)
        for slot, point in points.items():
            by_day[slot - slot % ROLLUP_DOC_S][slot] = point
        for day, day_points in by_day.items():
            key = bucket_id(instance, day)
            existing = rollups.find_one({"_id": key}, {"data": True})
            merged = msgspec.json.decode(zlib.decompress(existing["data"])) if existing else {}
            merged.update({str(slot): point for slot, point in day_points.items()})
            document = rollup_document(instance, day, merged)
            if existing is None:
                try:
                    rollups.insert_one(document)
                    continue
                except DuplicateKeyError:  # a pass of another process that lost its lease
                    pass
            rollups.update_one({"_id": key}, {"$set": {"data": document["data"]}})

    def expire(self, now: dt.datetime, limit: int = MAX_DELETES_PER_PASS) -> int:
        """Delete rolled buckets past the raw retention and rollup days past theirs (one by _id each)."""
        raw_before = now - dt.timedelta(seconds=self.raw_retention_s + RAW_BUCKET_S)
        rollups_before = now - dt.timedelta(seconds=self.rollup_retention_s + ROLLUP_DOC_S)
        deleted = 0
        for document, query in (
            (MetricBucket, {"start": {"$lte": raw_before}, "rolled": True}),
            (MetricRollup, {"day": {"$lte": rollups_before}}),
        ):
            collection = document._get_collection()
            for row in collection.find(query, {"_id": True}).limit(limit - deleted):
                deleted += collection.delete_one({"_id": row["_id"]}).deleted_count
        return deleted
