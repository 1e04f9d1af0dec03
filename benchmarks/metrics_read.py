"""Metrics read path: one instance's 24 h window among many instances' samples.

Loads `instances` x `hours` of reports every `interval_s` straight into the embedded
store's SQLite file in the storage format (orchestrator/metrics/store.py: one bucket per
instance and hour, closed hours compacted and rolled as the maintenance pass leaves
them), then measures `GET /instances/{name}/metrics?window=24h` through the real service
with `clients` concurrent clients over random instances; the same with
`baseline_instances` loaded, in the same run. Also prints the bytes the store holds per
instance-day (its SQLite documents of metric buckets and rollups).

    .venv/bin/python -m benchmarks.metrics_read [--instances 1000] [--baseline-instances 100] [--hours 24]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from bson import ObjectId

from benchmarks.cpu import CpuMeter, cpu_figures, cpu_line
from benchmarks.loadgen import build_request, run_load
from benchmarks.store import start_store, stop_store
from orchestrator.db import url_with_database
from orchestrator.metrics import store as metrics_store
from orchestrator.models import Instance, MetricBucket, MetricRollup, utcnow
from tests.live import start_service
from tests.test_agent_api import report as agent_report

DB = "orch_metrics_bench"
USER = "bench-user"
WINDOW = "24h"
INSERT_CHUNK = 500


def _reports(instance: str, hours: int, interval_s: int, now: dt.datetime, rng: random.Random) -> dict[int, list]:
    """[ts ISO, report] rows for the last `hours` up to now, by bucket start."""
    count = hours * 3600 // interval_s
    first = now - dt.timedelta(seconds=interval_s * (count - 1))
    base = agent_report(instance)
    buckets: dict[int, list] = {}
    for k in range(count):
        ts = first + dt.timedelta(seconds=interval_s * k)
        cpu = round(rng.uniform(0, 100), 1)
        gpu = {**base["gpus"][0], "utilization_percent": round(rng.uniform(0, 100), 1)}
        report = {**base, "ts": f"{ts.isoformat()}Z", "cpu_percent": cpu, "uptime_s": 1000.0 + k * interval_s,
                  "gpus": [gpu]}
        buckets.setdefault(metrics_store.bucket_start(ts), []).append([ts.isoformat(), report])
    return buckets


def load(sqlite_path: Path, instances: int, hours: int, interval_s: int, rollup_s: int, seed: int = 1) -> dict:
    """Write instances and their samples into the store file as the service would leave them."""
    from mongoeco import MongoClient
    from mongoeco.engines.sqlite import SQLiteEngine

    from orchestrator.embedded_store import _index_id_uniqueness_check

    _index_id_uniqueness_check(SQLiteEngine)
    rng = random.Random(seed)
    now = utcnow()
    open_bucket = metrics_store.bucket_start(now)
    names = []
    samples = 0
    started = time.perf_counter()
    client = MongoClient(SQLiteEngine(str(sqlite_path)))
    try:
        database = client[DB]
        buckets, rollups = database[MetricBucket._get_collection_name()], database[MetricRollup._get_collection_name()]
        instance_docs, bucket_docs, rollup_docs = [], [], []
        for i in range(instances):
            instance_id = ObjectId()
            name = f"m-{i:05d}"
            names.append(name)
            instance_docs.append(Instance(id=instance_id, name=name, owner=USER, spec={"cloud": "docker"},
                                          cloud="docker", region="local", status="running").to_mongo().to_dict())
            by_day: dict[int, dict] = {}
            for start, rows in _reports(str(instance_id), hours, interval_s, now, rng).items():
                samples += len(rows)
                closed = start != open_bucket
                bucket_docs.append(metrics_store.bucket_document(
                    str(instance_id), start, rows, rolled=closed, level=metrics_store.COMPACT_LEVEL if closed else 1))
                if closed:
                    for slot, point in metrics_store.rollup_points(rows, rollup_s).items():
                        by_day.setdefault(slot - slot % metrics_store.ROLLUP_DOC_S, {})[str(slot)] = point
            rollup_docs += [metrics_store.rollup_document(str(instance_id), day, points)
                            for day, points in by_day.items()]
            if len(bucket_docs) >= INSERT_CHUNK:
                buckets.insert_many(bucket_docs)
                bucket_docs = []
        for collection, docs in ((buckets, bucket_docs), (rollups, rollup_docs),
                                 (database[Instance._get_collection_name()], instance_docs)):
            for offset in range(0, len(docs), INSERT_CHUNK):
                collection.insert_many(docs[offset : offset + INSERT_CHUNK])
        for document in (Instance, MetricBucket, MetricRollup):
            for spec in document._meta["index_specs"]:
                options = {key: value for key, value in spec.items() if key != "fields"}
                (database[document._get_collection_name()]).create_index(spec["fields"], **options)
        # Read back: what the measurement relies on is committed.
        expected = {"instances": instances, "samples": samples}
        stored = {"instances": database[Instance._get_collection_name()].count_documents({}),
                  "samples": sum(row["count"] for row in buckets.find({}, {"count": True}))}
        if stored != expected:
            raise RuntimeError(f"the store holds {stored} after loading {expected}")
    finally:
        try:
            client.close()
        except* sqlite3.OperationalError as error:
            # mongoeco's change-stream heartbeat thread can find the file locked by a long insert
            # (seen under load) and raises it at close; the rows are committed and counted above.
            print(f"metrics_read: ignored at the loader's close: {error.exceptions}", file=sys.stderr)
    return {"names": names, "samples": samples, "load_s": time.perf_counter() - started}


def stored_bytes(sqlite_path: Path) -> int:
    """What the store holds for metric buckets and rollups: its documents' bytes in SQLite."""
    with sqlite3.connect(sqlite_path) as connection:
        (total,) = connection.execute(
            "SELECT COALESCE(SUM(LENGTH(document)), 0) FROM documents WHERE db_name = ? AND coll_name IN (?, ?)",
            (DB, MetricBucket._get_collection_name(), MetricRollup._get_collection_name()),
        ).fetchone()
    return total


def measure(instances: int, hours: int, interval_s: int, clients: int, requests: int, rollup_s: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="orch-bench-metrics-") as tmp_name:
        tmp = Path(tmp_name)
        loaded = load(tmp / "store.sqlite", instances, hours, interval_s, rollup_s)
        size = stored_bytes(tmp / "store.sqlite")
        store, mongo_url = start_store(Path(tmp) / "store.sqlite")
        try:
            (tmp / "svc").mkdir()
            live = start_service(tmp / "svc", mongo_url, ORCH_MONGODB_URL=url_with_database(mongo_url, DB),
                                 ORCH_METRICS_ROLLUP_S=str(rollup_s))
            try:
                port = int(live.url.rsplit(":", 1)[1])
                headers = {"Authorization": f"Bearer {live.token_for(USER)}"}
                rng = random.Random(2)

                def batch(count: int) -> list[bytes]:
                    return [build_request("GET", "127.0.0.1", port,
                                          f"/api/v1/instances/{rng.choice(loaded['names'])}/metrics?window={WINDOW}",
                                          b"", headers) for _ in range(count)]

                run_load("127.0.0.1", port, batch(max(clients, requests // 10)), clients)  # warm-up
                with CpuMeter({"orch serve": live.process.pid, "store": store.pid}) as meter:
                    result = run_load("127.0.0.1", port, batch(requests), clients)
                import httpx

                with httpx.Client(base_url=live.url, headers=headers, timeout=60) as client:
                    answered = client.get(f"/api/v1/instances/{loaded['names'][0]}/metrics",
                                          params={"window": WINDOW}).json()
            finally:
                live.stop()
        finally:
            stop_store(store)
    return {
        "instances": instances, "hours": hours, "interval_s": interval_s, "samples": loaded["samples"],
        "load_s": loaded["load_s"], "stored_bytes": size,
        "bytes_per_instance_day": size / (instances * hours / 24),
        "clients": clients, "requests": result.requests, "errors": result.errors,
        "p50_ms": result.percentile(50), "p99_ms": result.percentile(99), "mean_ms": result.mean, "rate": result.rate,
        "samples_per_answer": len(answered["samples"]), **cpu_figures(meter, result.requests, clients, result.seconds),
    }


def run(instances: int = 1000, baseline_instances: int = 100, hours: int = 24, interval_s: int = 30,
        clients: int = 8, requests: int = 400, rollup_s: int = 300) -> dict:
    """The p99 of a 24 h read with `instances` loaded and with `baseline_instances`, in one run."""
    baseline = measure(baseline_instances, hours, interval_s, clients, requests, rollup_s)
    print(f"metrics_read baseline: {baseline}", file=sys.stderr, flush=True)
    loaded = measure(instances, hours, interval_s, clients, requests, rollup_s)
    return {"window": WINDOW, "baseline": baseline, "loaded": loaded,
            "p99_ratio": loaded["p99_ms"] / baseline["p99_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--baseline-instances", type=int, default=100)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--interval-s", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    f = run(args.instances, args.baseline_instances, args.hours, args.interval_s, args.clients, args.requests)
    for label in ("baseline", "loaded"):
        r = f[label]
        print(f"{r['instances']} instances x {r['hours']} h every {r['interval_s']} s ({r['samples']:,} samples, "
              f"loaded in {r['load_s']:.0f} s): window={f['window']} p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms "
              f"({r['clients']} clients, {r['requests']} requests, {r['errors']} errors, {r['samples_per_answer']} "
              f"samples an answer); {r['bytes_per_instance_day']:,.0f} bytes per instance-day")
        print(f"  {cpu_line(r)}")
    print(f"p99 ratio {f['p99_ratio']:.2f}")


if __name__ == "__main__":
    main()
