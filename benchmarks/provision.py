"""Provisioning benchmark: orchestrated vs direct Automation API, and list latency.

1. Creates N instances at once through the REST API (in-process workers, the
   Pulumi CLI stand-in with a fixed latency per resource) and times until all
   are running.
2. In the same run, drives the same N stacks directly through the Automation
   API with the same concurrency and the same programs, and times that.
3. Seeds 10,000 instance records and measures GET /instances latency.

    .venv/bin/python benchmarks/provision.py [--instances 50] [--concurrency 8] [--latency-ms 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pulumi import automation as auto  # noqa: E402

from orchestrator.db import url_with_database  # noqa: E402
from orchestrator.models import Instance  # noqa: E402
from orchestrator.sshkeys import generate_keypair  # noqa: E402
from stacks import instance_program  # noqa: E402
from stacks.spec import parse_instance  # noqa: E402
from tests.live import STANDIN_ROOT, instance_doc, start_service  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def orchestrated(tmp: Path, mongo_url: str, count: int, concurrency: int, latency_ms: int) -> tuple[float, int]:
    """Wall time until every operation finished, and how many failed."""
    live = start_service(
        tmp, mongo_url, ORCH_MAX_PARALLEL_OPERATIONS=str(concurrency), PULUMI_STANDIN_LATENCY_MS=str(latency_ms)
    )
    try:
        with live.client("bench") as client:
            started = time.perf_counter()
            ops = []
            for i in range(count):
                response = client.post("/api/v1/instances", json=instance_doc(f"bench-{i:03d}", "aws"))
                response.raise_for_status()
                ops.append(response.json()["operation"]["id"])
            pending = set(ops)
            failed = 0
            while pending:
                for op_id in list(pending):
                    status = client.get(f"/api/v1/operations/{op_id}").json()["status"]
                    if status in ("succeeded", "failed"):
                        pending.discard(op_id)
                        failed += status == "failed"
                time.sleep(0.25)
            elapsed = time.perf_counter() - started
        return elapsed, failed
    finally:
        live.stop()


def direct(tmp: Path, count: int, concurrency: int, latency_ms: int) -> float:
    backend = tmp / "direct-backend"
    project = tmp / "direct-project"
    backend.mkdir()
    project.mkdir()
    (project / "Pulumi.yaml").write_text((REPO / "Pulumi.yaml").read_text())
    env = {
        "PULUMI_BACKEND_URL": f"file://{backend}",
        "PULUMI_CONFIG_PASSPHRASE": "bench",
        "PULUMI_HOME": str(tmp / "direct-home"),
        "PULUMI_STANDIN_LATENCY_MS": str(latency_ms),
    }
    command = auto.PulumiCommand(root=str(STANDIN_ROOT), skip_version_check=True)
    _, admin_key = generate_keypair("bench")

    def provision(i: int) -> None:
        instance = parse_instance(instance_doc(f"bench-{i:03d}", "aws"))
        program = instance_program(instance, admin_public_key=admin_key)
        opts = auto.LocalWorkspaceOptions(work_dir=str(project), env_vars=env, pulumi_command=command)
        stack = auto.create_or_select_stack(f"instance-{instance.name}", project_name="orch", program=program, opts=opts)
        stack.up(on_output=lambda line: None)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(provision, range(count)))
    return time.perf_counter() - started


LIST_DB = "orch_list_bench"


def seed_records(sqlite_path: Path, records: int) -> None:
    """Write the instance records straight into the store's SQLite file, before the store serves it.

    mongoeco's inserts slow down as a collection grows (10,000 records take
    minutes), so the seeded file is cached under ~/.cache/orch-bench and copied.
    """
    cached = Path.home() / ".cache" / "orch-bench" / f"instances-{records}.sqlite"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        _write_records(cached.with_suffix(".partial"), records)
        cached.with_suffix(".partial").rename(cached)
    shutil.copyfile(cached, sqlite_path)


def _write_records(sqlite_path: Path, records: int) -> None:
    from mongoeco import MongoClient
    from mongoeco.engines.sqlite import SQLiteEngine

    with MongoClient(SQLiteEngine(str(sqlite_path))) as client:
        collection = client[LIST_DB][Instance._get_collection_name()]
        collection.insert_many(
            [
                Instance(
                    name=f"rec-{i:05d}", owner=f"user-{i % 100}", spec={"cloud": "aws"}, cloud=("aws", "gcp")[i % 2],
                    region="us-east-1", status="running", public_ip=f"198.51.{i // 256 % 256}.{i % 256}",
                ).to_mongo().to_dict()
                for i in range(records)
            ]
        )
        # The indexes the service would create at start (building them over the wire is as slow).
        for spec in Instance._meta["index_specs"]:
            options = {key: value for key, value in spec.items() if key != "fields"}
            collection.create_index(spec["fields"], **options)


def list_latency(tmp: Path, mongo_url: str, requests: int) -> tuple[list[float], list[float]]:
    live = start_service(tmp, mongo_url, ORCH_MONGODB_URL=url_with_database(mongo_url, LIST_DB))
    try:
        admin_latencies, user_latencies = [], []
        with live.client(token=live.admin_token) as admin, live.client("user-7") as user:
            for target, latencies, params in (
                (admin, admin_latencies, {"limit": 100}),
                (user, user_latencies, {"limit": 100, "cloud": "gcp"}),
            ):
                target.get("/api/v1/instances", params=params).raise_for_status()  # warm-up
                for _ in range(requests):
                    started = time.perf_counter()
                    response = target.get("/api/v1/instances", params=params)
                    latencies.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
        return admin_latencies, user_latencies
    finally:
        live.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--list-requests", type=int, default=200)
    args = parser.parse_args()
    os.environ.pop("PULUMI_STANDIN_FAIL", None)

    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        seed_records(tmp / "store.sqlite", args.records)
        store = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.embedded_store", "--path", f"{tmp}/store.sqlite"],
            stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        mongo_url = store.stdout.readline().strip()
        try:
            (tmp / "orchestrated").mkdir()
            orchestrated_s, failed = orchestrated(tmp / "orchestrated", mongo_url, args.instances, args.concurrency, args.latency_ms)
            print(f"orchestrated: {orchestrated_s:.1f} s", flush=True)
            direct_s = direct(tmp, args.instances, args.concurrency, args.latency_ms)
            print(f"direct: {direct_s:.1f} s", flush=True)
            (tmp / "list").mkdir()
            admin_ms, user_ms = list_latency(tmp / "list", mongo_url, args.list_requests)
        finally:
            store.terminate()

    print(f"{args.instances} instances (aws program), concurrency {args.concurrency}, "
          f"stand-in latency {args.latency_ms} ms per resource operation")
    if failed:
        print(f"WARNING: {failed} orchestrated operations failed")
    print(f"orchestrated (REST -> MongoDB -> worker -> Automation API): {orchestrated_s:.1f} s")
    print(f"direct Automation API, same programs and concurrency:      {direct_s:.1f} s")
    print(f"ratio orchestrated/direct: {orchestrated_s / direct_s:.2f}")
    for label, values in (("admin, all 10k, limit 100", admin_ms), ("user, own ~100 filtered by cloud", user_ms)):
        print(f"GET /instances ({label}) with {args.records} records: p50 {percentile(values, 50):.1f} ms, "
              f"p99 {percentile(values, 99):.1f} ms, mean {statistics.fmean(values):.1f} ms over {len(values)} requests")


if __name__ == "__main__":
    main()
