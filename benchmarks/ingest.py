"""Agent ingest benchmark: simulated agents posting reports to the real service.

Measures reports/s and p50/p99 latency through HTTP + JWT + validation + storage,
and in the same run the same load against a bare Litestar endpoint that only
parses the JSON body; prints both and the ratio. Two loads each: as fast as
`--concurrency` connections go (throughput), and reports arriving at `--rate` per
second (the target: 60,000 agents every 30 s is 2,000/s), where latency is what an
agent sees at that load.

    .venv/bin/python benchmarks/ingest.py [--agents 1000] [--reports 20000] [--concurrency 64] [--rate 2000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import mongoengine
from bson import ObjectId

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.loadgen import build_request, run_at_rate, run_load  # noqa: E402
from orchestrator.auth import mint_agent_token, token_hash  # noqa: E402
from orchestrator.models import Instance, MetricBatch  # noqa: E402
from tests.live import JWT_SECRET, free_port, start_service  # noqa: E402
from tests.test_agent_api import report as agent_report  # noqa: E402


def seed_agents(mongo_url: str, count: int) -> list[tuple[str, str]]:
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1, help="reports per request (agents batch a backlog)")
    parser.add_argument("--rate", type=float, default=2000, help="requests/s of the fixed-rate load")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        store = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.embedded_store", "--path", f"{tmp}/store.sqlite"],
            stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        mongo_url = store.stdout.readline().strip()
        live = start_service(Path(tmp), mongo_url)
        bare, bare_port = start_bare_app()
        try:
            agents = seed_agents(live.env["ORCH_MONGODB_URL"], args.agents)
            port = int(live.url.rsplit(":", 1)[1])
            # Warm-up: fills the service's token cache for every agent, as a steady state would.
            run_load("127.0.0.1", port, build_requests(port, agents, args.agents, 1), args.concurrency)
            run_load("127.0.0.1", bare_port, build_requests(bare_port, agents, args.agents, 1), args.concurrency)

            service = run_load("127.0.0.1", port, build_requests(port, agents, args.reports, args.batch), args.concurrency)
            baseline = run_load(
                "127.0.0.1", bare_port, build_requests(bare_port, agents, args.reports, args.batch), args.concurrency
            )
            service_at_rate = run_at_rate(
                "127.0.0.1", port, build_requests(port, agents, args.reports, args.batch), args.rate, args.concurrency
            )
            baseline_at_rate = run_at_rate(
                "127.0.0.1", bare_port, build_requests(bare_port, agents, args.reports, args.batch),
                args.rate, args.concurrency,
            )
            time.sleep(2)  # let the flusher write the last batch
            stored = MetricBatch.objects.sum("count")
        finally:
            bare.terminate()
            live.stop()
            store.terminate()

    unit = "requests" if args.batch == 1 else f"requests of {args.batch} reports"
    print(f"agents {args.agents}, reports {args.reports}, concurrency {args.concurrency}, batch {args.batch}")
    print(service.line("service (HTTP + JWT + validation + storage)", unit))
    print(baseline.line("bare Litestar (JSON parse only)         ", unit))
    print(f"reports/s: service {service.rate * args.batch:,.0f}, bare {baseline.rate * args.batch:,.0f}; "
          f"ratio service/bare {service.rate / baseline.rate:.2f}")
    print(f"at a fixed {args.rate:,.0f} {unit}/s:")
    print(service_at_rate.line("service (HTTP + JWT + validation + storage)", unit))
    print(baseline_at_rate.line("bare Litestar (JSON parse only)         ", unit))
    print(f"p99 at that rate: service {service_at_rate.percentile(99):.1f} ms, bare "
          f"{baseline_at_rate.percentile(99):.1f} ms; ratio {service_at_rate.percentile(99) / baseline_at_rate.percentile(99):.2f}")
    print(f"samples stored: {stored} (expected {2 * args.reports + args.agents} incl. warm-up)")


if __name__ == "__main__":
    main()
