"""Agent ingest benchmark: simulated agents posting reports to the real service.

Measures reports/s and p50/p99 latency through HTTP + JWT + validation + storage,
and in the same run the same load against a bare Litestar endpoint that only
parses the JSON body; prints both and the ratio. Two loads each: as fast as
`--concurrency` connections go (throughput), and reports arriving at `--rate` per
second (the target: 60,000 agents every 30 s is 2,000/s), where latency is what an
agent sees at that load.

    .venv/bin/python -m benchmarks.ingest [--agents 1000] [--reports 20000] [--concurrency 64] [--rate 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import mongoengine
from bson import ObjectId

from benchmarks.cpu import child_pids
from benchmarks.loadgen import build_request, run_at_rate, run_load
from benchmarks.store import start_store, stop_store
from orchestrator.auth import mint_agent_token, token_hash
from orchestrator import locks
from orchestrator.metrics import store as metrics_store
from orchestrator.models import Instance, MetricBatch, MetricBucket
from tests.live import JWT_SECRET, free_port, start_service
from tests.test_agent_api import report as agent_report

REPO = Path(__file__).resolve().parent.parent


def seed_agents(mongo_url: str, count: int) -> list[tuple[str, str]]:
    mongoengine.disconnect_all()  # a previous benchmark's store in this process
    mongoengine.connect(host=mongo_url, alias="default")
    agents = []
    instances = []
    for i in range(count):
        # An agent's identity is its instance's id.
        instance_id = ObjectId()
        token, expires = mint_agent_token(JWT_SECRET, str(instance_id))
        agents.append((str(instance_id), token))
        instances.append(
            Instance(
                id=instance_id, name=f"agent-{i:05d}", owner="bench", spec={"cloud": "docker"}, cloud="docker",
                region="local", status="running",
                agent_token_hash=token_hash(token), agent_token_expires_at=expires.replace(tzinfo=None),
            ).to_mongo()
        )
    Instance._get_collection().insert_many(instances)
    return agents


def build_requests(port: int, agents: list[tuple[str, str]], total: int, batch: int) -> list[bytes]:
    requests = []
    now = time.time()
    for k in range(total // batch):
        name, token = agents[k % len(agents)]
        # Increasing times up to now: the service refuses reports from the future.
        reports = [agent_report(name, now - (total // batch - k) + j / batch) for j in range(batch)]
        body = json.dumps(reports[0] if batch == 1 else {"reports": reports}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        requests.append(build_request("POST", "127.0.0.1", port, "/api/v1/agent/report", body, headers))
    return requests


def start_bare_app() -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "bare_app.py"), str(port)])
    for _ in range(100):
        try:
            httpx.post(f"http://127.0.0.1:{port}/api/v1/agent/report", json={}, timeout=1)
            return proc, port
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("bare app did not start")


# A pass holds (and renews) the lease for its whole length: one that started while the store was loaded by
# the benchmark's ingest can last minutes (measured: a pass that moved 381 buckets took 38 s under load).
COUNT_LEASE_WAIT_S = 300


@contextmanager
def maintenance_held() -> Iterator[None]:
    """Hold the metrics maintenance pass's lease (waiting for a pass in progress to end): no pass moves
    batches into buckets meanwhile, so the stored reports are the buckets' count as first read plus the
    batches'."""
    holder = f"benchmark-count-{os.getpid()}"
    deadline = time.monotonic() + COUNT_LEASE_WAIT_S
    while not locks.acquire(metrics_store.LEASE_KEY, holder, metrics_store.LEASE_S):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the metrics maintenance lease stayed held for {COUNT_LEASE_WAIT_S} s")
        time.sleep(0.05)
    try:
        yield
    finally:
        locks.release(metrics_store.LEASE_KEY, holder)


def stored_count() -> int:
    """Reports the store holds: in flush batches, and in buckets once orch serve's maintenance pass has
    moved them (counted with the pass held off, so none is between its two moves)."""
    with maintenance_held():
        return MetricBatch.objects.sum("count") + MetricBucket.objects.sum("count")


def wait_stored(expected: int, timeout_s: float) -> tuple[int, float]:
    """(reports stored, when: perf_counter) once the store holds `expected`, or what it holds at the timeout.

    The pass is held off while it waits (a pass in progress ends first), so the buckets are summed once
    and each poll sums only the batches.
    """
    deadline = time.perf_counter() + timeout_s
    with maintenance_held():
        in_buckets = MetricBucket.objects.sum("count")
        while True:
            stored = in_buckets + MetricBatch.objects.sum("count")
            if stored >= expected or time.perf_counter() > deadline:
                return stored, time.perf_counter()
            time.sleep(0.05)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(agents: int = 1000, reports: int = 20000, concurrency: int = 64, batch: int = 1, rate: float = 2000,
        store_timeout_s: float = 60) -> dict:
    """Ingest counted to storage: a report is done when the store holds it (counted back)."""
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        store, mongo_url = start_store(Path(tmp) / "store.sqlite")
        live = start_service(Path(tmp), mongo_url)
        bare, bare_port = start_bare_app()
        try:
            seeded = seed_agents(live.env["ORCH_MONGODB_URL"], agents)
            port = int(live.url.rsplit(":", 1)[1])
            # The baseline first, while the service is idle: afterwards its upkeep thread is still writing
            # the agents' first reports to their instances, which would slow the baseline down.
            run_load("127.0.0.1", bare_port, build_requests(bare_port, seeded, agents, 1), concurrency)
            baseline = run_load(
                "127.0.0.1", bare_port, build_requests(bare_port, seeded, reports, batch), concurrency
            )
            # Warm-up: fills the service's token cache for every agent, as a steady state would.
            run_load("127.0.0.1", port, build_requests(port, seeded, agents, 1), concurrency)
            expected, _ = wait_stored(agents, store_timeout_s)

            requests = build_requests(port, seeded, reports, batch)
            started = time.perf_counter()
            service = run_load("127.0.0.1", port, requests, concurrency)
            expected += len(requests) * batch
            stored, stored_at = wait_stored(expected, store_timeout_s)
            to_storage_s = stored_at - started
            at_rate_requests = build_requests(port, seeded, reports, batch)
            service_at_rate = run_at_rate("127.0.0.1", port, at_rate_requests, rate / batch, concurrency)
            expected += len(at_rate_requests) * batch
            stored, _ = wait_stored(expected, store_timeout_s)
            rss = rss_mb(live.process.pid)
            children_rss = [rss_mb(pid) for pid in child_pids(live.process.pid)]
        finally:
            bare.terminate()
            live.stop()
            stop_store(store)
    sent = len(requests) * batch
    return {
        "agents": agents, "reports": sent, "batch": batch, "concurrency": concurrency, "rate": rate,
        "service_http_rate": service.rate * batch, "service_to_storage_rate": sent / to_storage_s,
        "bare_rate": baseline.rate * batch, "errors": service.errors + service_at_rate.errors,
        "at_rate_p50_ms": service_at_rate.percentile(50), "at_rate_p99_ms": service_at_rate.percentile(99),
        "at_rate_achieved": service_at_rate.rate * batch,
        "expected_stored": expected, "stored": stored, "lost": expected - stored,
        "serve_rss_mb": rss, "children_rss_mb": children_rss, "rss_mb": rss + sum(children_rss),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1, help="reports per request (agents batch a backlog)")
    parser.add_argument("--rate", type=float, default=2000, help="reports/s of the fixed-rate load")
    args = parser.parse_args()
    f = run(args.agents, args.reports, args.concurrency, args.batch, args.rate)
    print(f"agents {f['agents']}, reports {f['reports']}, concurrency {f['concurrency']}, batch {f['batch']}")
    print(f"reports/s answered {f['service_http_rate']:,.0f}, stored {f['service_to_storage_rate']:,.0f}; "
          f"bare Litestar {f['bare_rate']:,.0f}; ratio stored/bare {f['service_to_storage_rate'] / f['bare_rate']:.2f}")
    print(f"at {f['rate']:,.0f} reports/s (achieved {f['at_rate_achieved']:,.0f}): p50 {f['at_rate_p50_ms']:.1f} ms, "
          f"p99 {f['at_rate_p99_ms']:.1f} ms")
    print(f"stored {f['stored']} of {f['expected_stored']} (lost {f['lost']}); orch serve RSS {f['serve_rss_mb']:.0f} MB, "
          f"its child processes {' + '.join(f'{mb:.0f}' for mb in f['children_rss_mb']) or 'none'} MB")


if __name__ == "__main__":
    main()
