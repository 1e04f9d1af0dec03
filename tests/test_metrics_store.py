"""Samples at rest: per-instance hour buckets, rollups and retention on a simulated clock, read by id."""

from __future__ import annotations

import datetime as dt
import time

import msgspec
import pytest

from orchestrator.auth import Principal
from orchestrator.ingest import AgentIngest
from orchestrator.metrics import store
from orchestrator.metrics.store import MetricsMaintenance, read_rollups, read_samples
from orchestrator.models import Instance, MetricBatch, MetricBucket, MetricRollup, utcnow
from orchestrator.services import Orchestrator

ALICE = Principal("alice", "user")
HOUR = dt.timedelta(hours=1)


def sample(instance: str, ts: dt.datetime, cpu: float, memory_used: int = 1000, gpu_util: float | None = 50.0) -> dict:
    return {"instance": instance, "ts": f"{ts.isoformat()}Z", "cpu_percent": cpu,
            "memory": {"total": 10_000, "used": memory_used},
            "gpus": [{"index": 0, "name": "A10G", "utilization_percent": gpu_util, "memory_total": 100,
                      "memory_used": 10}]}


def flush(rows: list[tuple[str, dt.datetime, dict]]) -> None:
    """Rows stored as the ingest flush stores them: one batch document."""
    encoded = [(row, msgspec.json.encode([row[0], row[1].isoformat(), row[2]])) for row in rows]
    MetricBatch._get_collection().insert_one(AgentIngest._batch_document(encoded))


def maintenance(**overrides) -> MetricsMaintenance:
    settings = {"raw_retention_s": 86400, "rollup_retention_s": 30 * 86400, "rollup_s": 300, **overrides}
    return MetricsMaintenance(start=False, **settings)


def test_a_pass_appends_in_chunks_and_to_a_bucket_another_pass_inserted_meanwhile(mongo_db, monkeypatch):
    """More buckets than a chunk, existing and new ones; a new bucket that appears between the read and
    the write (another process's pass that lost its lease) is appended to, not lost."""
    monkeypatch.setattr(store, "APPEND_CHUNK", 3)
    hour = dt.datetime(2026, 1, 2, 10)
    start = store.epoch(hour)
    names = [f"i{n}" for n in range(7)]
    flush([(name, hour, sample(name, hour, 1.0)) for name in names[:4]])
    assert maintenance().move_batches() == 1
    flush([(name, hour + dt.timedelta(minutes=1), sample(name, hour, 2.0)) for name in names])
    raced = f"i6:{start}"
    real = MetricBucket._get_collection()

    class RacedBuckets:
        """The buckets collection, as the pass sees it while another pass inserts `raced` after its read."""

        def find(self, query, projection):
            rows = list(real.find(query, projection))
            if raced in query["_id"]["$in"]:
                real.insert_one(store.bucket_document("i6", start, [[hour.isoformat(), sample("i6", hour, 9.0)]]))
            return rows

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(MetricBucket, "_get_collection", classmethod(lambda cls: RacedBuckets()))
    assert maintenance().move_batches() == 1
    monkeypatch.undo()
    counts = {row["_id"]: row["count"] for row in real.find({}, {"count": True})}
    # i0-i3 had a row and got one; i4 and i5 are new; i6 got its row after the other pass's.
    assert counts == {f"{name}:{start}": 1 if name in ("i4", "i5") else 2 for name in names}
    assert [s["cpu_percent"] for s in read_samples("i6", hour, hour + HOUR, 10)] == [9.0, 2.0]
    assert [s["cpu_percent"] for s in read_samples("i0", hour, hour + HOUR, 10)] == [1.0, 2.0]


def test_a_pass_that_fails_midway_still_rolls_up_the_chunks_it_wrote(mongo_db, monkeypatch):
    from pymongo.errors import AutoReconnect

    monkeypatch.setattr(store, "APPEND_CHUNK", 2)
    hour = dt.datetime(2026, 1, 2, 10)
    flush([(f"j{n}", hour, sample(f"j{n}", hour, 1.0)) for n in range(4)])
    real = MetricBucket._get_collection()
    writes = []

    class FailingSecondWrite:
        def bulk_write(self, requests, ordered):
            writes.append(len(requests))
            if len(writes) == 2:
                raise AutoReconnect("the store went away")
            return real.bulk_write(requests, ordered=ordered)

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(MetricBucket, "_get_collection", classmethod(lambda cls: FailingSecondWrite()))
    pass_ = maintenance()
    with pytest.raises(AutoReconnect):
        pass_.move_batches()
    start = store.epoch(hour)
    assert writes == [2, 2] and pass_._written == {f"j0:{start}", f"j1:{start}"}
    assert MetricBatch.objects.count() == 1  # kept for the next pass


def test_reports_read_as_stored_are_the_same_json(mongo_db):
    """read_samples(raw=True) (what the API passes through) encodes as the decoded reports do, from buckets and batches."""
    hour = dt.datetime(2026, 1, 2, 10)
    flush([("a", hour + dt.timedelta(minutes=m), sample("a", hour, m + 0.5, gpu_util=None if m % 2 else 7.25))
           for m in range(0, 50, 5)])
    assert maintenance().move_batches() == 1
    flush([("a", hour + dt.timedelta(minutes=55), sample("a", hour, 99.9))])  # not moved yet
    for limit in (3, 100):
        decoded = read_samples("a", hour, hour + HOUR, limit)
        stored = read_samples("a", hour, hour + HOUR, limit, raw=True)
        assert all(isinstance(report, msgspec.Raw) for report in stored)
        assert msgspec.json.encode(stored) == msgspec.json.encode(decoded)
    assert len(decoded) == 11 and decoded[-1]["cpu_percent"] == 99.9


def test_rows_move_into_one_bucket_per_instance_and_hour(mongo_db):
    hour = dt.datetime(2026, 1, 2, 10)
    rows = [("a", hour + dt.timedelta(minutes=m), sample("a", hour, m)) for m in (0, 30, 59, 60, 90)]
    rows.append(("b", hour + dt.timedelta(minutes=5), sample("b", hour, 99.0)))
    flush(rows[:3])
    flush(rows[3:])
    assert maintenance().move_batches() == 2
    assert MetricBatch.objects.count() == 0
    start = store.epoch(hour)
    assert sorted(MetricBucket._get_collection().distinct("_id")) == [
        f"a:{start}", f"a:{start + 3600}", f"b:{start}"]
    assert MetricBucket.objects.get(id=f"a:{start}").count == 3
    # A later pass appends to the same bucket.
    flush([("a", hour + dt.timedelta(minutes=45), sample("a", hour, 45.0))])
    maintenance().move_batches()
    assert MetricBucket.objects.get(id=f"a:{start}").count == 4
    cpu = [s["cpu_percent"] for s in read_samples("a", hour, hour + 2 * HOUR, 100)]
    assert cpu == [0, 30, 45, 59, 60, 90]
    # The newest `limit`, oldest first; a range inside one bucket.
    assert [s["cpu_percent"] for s in read_samples("a", hour, hour + 2 * HOUR, 2)] == [60, 90]
    assert [s["cpu_percent"] for s in read_samples("a", hour + dt.timedelta(minutes=40), hour + HOUR, 100)] == [
        45, 59, 60]
    assert [s["cpu_percent"] for s in read_samples("b", hour, hour + HOUR, 100)] == [99.0]


def test_a_read_sees_rows_not_moved_yet_and_counts_a_twice_moved_row_once(mongo_db):
    hour = dt.datetime(2026, 1, 2, 10)
    row = ("a", hour, sample("a", hour, 1.0))
    flush([row])
    maintenance().move_batches()
    # As if a pass stopped after appending and before deleting its batch.
    flush([row, ("a", hour + dt.timedelta(minutes=1), sample("a", hour, 2.0))])
    assert [s["cpu_percent"] for s in read_samples("a", hour, hour + HOUR, 100)] == [1.0, 2.0]
    maintenance().move_batches()
    assert [s["cpu_percent"] for s in read_samples("a", hour, hour + HOUR, 100)] == [1.0, 2.0]


def test_closed_buckets_roll_up_into_min_avg_max_slots(mongo_db):
    hour = dt.datetime(2026, 1, 2, 10)
    rows = [("a", hour + dt.timedelta(seconds=30 * k), sample("a", hour, cpu, memory_used=mem, gpu_util=util))
            for k, (cpu, mem, util) in enumerate([(10, 100, 20), (30, 300, None), (20, 200, 40)])]
    rows.append(("a", hour + dt.timedelta(minutes=7), sample("a", hour, 80, memory_used=800, gpu_util=90)))
    flush(rows)
    worker = maintenance()
    # Still open (and within the grace after its end): no rollups yet.
    assert worker.run_pass(hour + HOUR + dt.timedelta(seconds=60)) == {
        "moved_batches": 1, "rolled_buckets": 0, "deleted": 0}
    assert worker.run_pass(hour + HOUR + dt.timedelta(seconds=store.ROLLUP_GRACE_S + 1))["rolled_buckets"] == 1
    points = read_rollups("a", hour, hour + HOUR, 100)
    assert [p["ts"] for p in points] == ["2026-01-02T10:00:00Z", "2026-01-02T10:05:00Z"]
    first, second = points
    assert first["count"] == 3 and first["width_s"] == 300
    assert first["cpu_percent"] == {"min": 10, "avg": 20, "max": 30}
    assert first["memory_used"] == {"min": 100, "avg": 200, "max": 300}
    assert first["gpus"] == [{"index": 0, "utilization_percent": {"min": 20, "avg": 30, "max": 40},
                              "memory_used": {"min": 10, "avg": 10, "max": 10}}]
    assert second["cpu_percent"] == {"min": 80, "avg": 80, "max": 80}
    # The rolled bucket keeps its raw rows (one frame now).
    assert len(read_samples("a", hour, hour + HOUR, 100)) == 4
    # A late row marks its bucket again; the next pass recomputes that slot.
    flush([("a", hour + dt.timedelta(minutes=8), sample("a", hour, 0))])
    assert worker.run_pass(hour + 2 * HOUR) == {"moved_batches": 1, "rolled_buckets": 1, "deleted": 0}
    assert read_rollups("a", hour, hour + HOUR, 100)[1]["cpu_percent"] == {"min": 0, "avg": 40, "max": 80}


def test_retention_deletes_raw_buckets_then_rollups(mongo_db):
    hour = dt.datetime(2026, 1, 2, 10)
    flush([("a", hour, sample("a", hour, 5.0))])
    worker = maintenance(raw_retention_s=86400, rollup_retention_s=3 * 86400)
    worker.run_pass(hour + 2 * HOUR)
    assert MetricBucket.objects.count() == 1 and MetricRollup.objects.count() == 1
    worker.run_pass(hour + HOUR + dt.timedelta(seconds=86400 - 1))
    assert MetricBucket.objects.count() == 1
    worker.run_pass(hour + 2 * HOUR + dt.timedelta(seconds=86400))
    assert MetricBucket.objects.count() == 0 and MetricRollup.objects.count() == 1
    worker.run_pass(dt.datetime(2026, 1, 3) + dt.timedelta(days=3, seconds=1))
    assert MetricRollup.objects.count() == 0


def test_one_process_holds_the_maintenance_lease(mongo_db):
    first, second = maintenance(), maintenance()
    assert store.locks.acquire(store.LEASE_KEY, first.holder, store.LEASE_S)
    assert second.run_pass() is None
    store.locks.release(store.LEASE_KEY, first.holder)
    assert second.run_pass() == {"moved_batches": 0, "rolled_buckets": 0, "deleted": 0}


def test_a_pass_longer_than_the_lease_keeps_it(mongo_db, monkeypatch):
    """A pass slowed by a loaded store renews its lease: another process's pass cannot start meanwhile."""
    monkeypatch.setattr(store, "LEASE_S", 2)  # renewed every second
    first, second = maintenance(), maintenance()
    taken_meanwhile: list[dict | None] = []

    def slow_move(limit: int = store.MAX_BATCHES_PER_PASS) -> int:
        time.sleep(3.5)  # past the 2 s lease
        taken_meanwhile.append(second.run_pass())
        return 0

    monkeypatch.setattr(first, "move_batches", slow_move)
    assert first.run_pass() is not None
    assert taken_meanwhile == [None], "the second pass ran while the first still moved batches"
    assert second.run_pass() == {"moved_batches": 0, "rolled_buckets": 0, "deleted": 0}, "released at the end"


def test_the_service_reads_a_window_by_id_and_never_a_deleted_namesakes(mongo_db):
    now = utcnow()
    old = Instance(name="box", owner="alice", spec={"cloud": "aws"}, cloud="aws", region="r", status="deleted",
                   created_at=now - dt.timedelta(days=2))
    old.save()
    box = Instance(name="box", owner="alice", spec={"cloud": "aws"}, cloud="aws", region="r", status="running")
    box.save()
    mine, theirs = str(box.id), str(old.id)
    flush([(mine, now - 3 * HOUR, sample(mine, now, 3.0)), (theirs, now - 3 * HOUR, sample(theirs, now, 97.0))])
    maintenance().run_pass(now)  # moved into buckets (closed ones rolled up)
    flush([(mine, now - dt.timedelta(minutes=10), sample(mine, now, 10.0)),
           (theirs, now - dt.timedelta(minutes=5), sample(theirs, now, 99.0))])
    orch = Orchestrator(settings=None, engine=None, dispatch=lambda op_id: True)
    assert [s["cpu_percent"] for s in orch.metrics(ALICE, "box", None, None, window="1h")] == [10.0]
    assert [s["cpu_percent"] for s in orch.metrics(ALICE, "box", None, None, window="24h")] == [3.0, 10.0]
    assert [s["cpu_percent"] for s in orch.metrics(ALICE, "box", None, None)] == [3.0, 10.0]
    maintenance().run_pass(now + 2 * HOUR + dt.timedelta(minutes=3))
    week = orch.metrics(ALICE, "box", None, None, window="7d")
    assert [p["cpu_percent"]["max"] for p in week] == [3.0, 10.0]
    assert orch.metrics(ALICE, "box", None, None, window="30d") == week


def test_the_embedded_store_checks_string_ids_by_key_and_still_refuses_duplicates(tmp_path):
    from mongoeco import MongoClient
    from mongoeco.engines.sqlite import SQLiteEngine
    from pymongo.errors import DuplicateKeyError

    from orchestrator.embedded_store import _index_id_uniqueness_check

    _index_id_uniqueness_check(SQLiteEngine)
    scans = []
    original = SQLiteEngine._load_documents

    def counted(self, db_name, coll_name):
        scans.append(coll_name)
        return original(self, db_name, coll_name)

    SQLiteEngine._load_documents = counted
    try:
        with MongoClient(SQLiteEngine(str(tmp_path / "s.sqlite"))) as client:
            collection = client["x"]["c"]
            for key in ("a", "b", "c"):
                collection.insert_one({"_id": key})
            with pytest.raises(DuplicateKeyError):
                collection.insert_one({"_id": "b"})
            assert scans == []
            # Numeric ids keep mongoeco's scan: 1 and 1.0 are one _id.
            collection.insert_one({"_id": 1})
            with pytest.raises(DuplicateKeyError):
                collection.insert_one({"_id": 1.0})
    finally:
        SQLiteEngine._load_documents = original


class CountedBuckets:
    """The buckets collection, counting the reads a read_samples makes and the bucket ids each names."""

    def __init__(self):
        self.real = MetricBucket._get_collection()
        self.reads: list[list[str]] = []

    def find(self, query, projection=None):
        self.reads.append(list(query["_id"]["$in"]))
        return self.real.find(query, projection)


def test_a_read_looks_up_at_most_the_retentions_buckets_in_two_queries(mongo_db, monkeypatch):
    counted = CountedBuckets()
    monkeypatch.setattr(MetricBucket, "_get_collection", classmethod(lambda cls: counted))
    until = dt.datetime(2026, 6, 1)
    assert read_samples("a", until - dt.timedelta(days=300), until, 100, retention_s=86400) == []
    assert len(counted.reads) == 2 and sum(map(len, counted.reads)) == 26


def test_a_read_takes_the_newest_rows_from_as_few_buckets_as_hold_them(mongo_db, monkeypatch):
    until = dt.datetime(2026, 6, 1, 12, 0)
    every_30_s = [until - k * dt.timedelta(seconds=30) for k in range(1, 24 * 120)]
    flush([("a", ts, sample("a", ts, float(k % 100))) for k, ts in enumerate(every_30_s)])
    maintenance().move_batches()
    newest_first = [float(k % 100) for k in range(len(every_30_s))]
    counted = CountedBuckets()
    monkeypatch.setattr(MetricBucket, "_get_collection", classmethod(lambda cls: counted))
    # 200 reports at 30 s are 2 hours' buckets: one query of 3 (the limit's, and one more) holds them.
    assert [s["cpu_percent"] for s in read_samples("a", until - 24 * HOUR, until, 200, interval_s=30)] == newest_first[:200][::-1]
    assert [len(ids) for ids in counted.reads] == [3]
    # Reports sparser than the interval says (a gap of 20 hours): the second query reads the rest.
    counted.reads.clear()
    sparse = [until - dt.timedelta(hours=21) - k * dt.timedelta(seconds=30) for k in range(300)]
    monkeypatch.undo()
    MetricBucket._get_collection().delete_many({})
    flush([("a", ts, sample("a", ts, float(k % 100))) for k, ts in enumerate(sparse)])
    maintenance().move_batches()
    monkeypatch.setattr(MetricBucket, "_get_collection", classmethod(lambda cls: counted))
    got = read_samples("a", until - 24 * HOUR, until, 200, interval_s=30)
    assert [s["cpu_percent"] for s in got] == [float(k % 100) for k in range(200)][::-1]
    assert [len(ids) for ids in counted.reads] == [3, 22]  # the 25 buckets of 24 h back from 12:00


def test_metrics_settings_have_defaults_and_a_rollup_width_must_divide_an_hour(tmp_path):
    from orchestrator.settings import SettingsError, load_settings

    env = {"ORCH_DATA_DIR": str(tmp_path)}
    settings = load_settings(env)
    assert (settings.metrics_raw_retention_s, settings.metrics_rollup_retention_s, settings.metrics_rollup_s) == (
        86400, 30 * 86400, 300)
    assert load_settings({**env, "ORCH_METRICS_ROLLUP_S": "600"}).metrics_rollup_s == 600
    with pytest.raises(SettingsError, match="ORCH_METRICS_ROLLUP_S=700 must divide an hour"):
        load_settings({**env, "ORCH_METRICS_ROLLUP_S": "700"})
    with pytest.raises(SettingsError, match="ORCH_METRICS_RAW_RETENTION_S=60 must be at least 3600"):
        load_settings({**env, "ORCH_METRICS_RAW_RETENTION_S": "60"})
