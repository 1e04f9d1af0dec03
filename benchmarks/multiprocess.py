"""Two `orch serve` processes on one store and one broker: nothing lost, nothing twice.

Both serve the API; each has an `orch worker` beside it, fed by the same RabbitMQ vhost. Agent reports are spread over both ports; then operations are requested
through both. Checks, counting back from the store: every report stored exactly once
(stored == sent, so none lost and none twice), every operation succeeded in one attempt
(none run twice). Prints the combined ingest rate beside one process's (measured first,
in the same run).

    .venv/bin/python -m benchmarks.multiprocess [--agents 500] [--reports 5000] [--operations 6]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import mongoengine

from benchmarks.broker import broker_vhost
from benchmarks.ingest import build_requests, seed_agents, stored_count, wait_stored
from benchmarks.loadgen import LoadResult, run_load
from benchmarks.store import start_store, stop_store
from orchestrator.db import url_with_database
from orchestrator.models import Operation
from tests.live import instance_doc, start_service, wait_operation


def _load_both(ports: list[int], seeded, reports: int, concurrency: int) -> tuple[float, int, int]:
    """Send `reports` spread over the ports at once; (seconds until the HTTP answers, sent, errors)."""
    results: list[LoadResult] = []
    share = reports // len(ports)
    threads = [
        threading.Thread(target=lambda port=port: results.append(
            run_load("127.0.0.1", port, build_requests(port, seeded, share, 1), concurrency // len(ports))
        ))
        for port in ports
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, share * len(ports), sum(r.errors for r in results)


def run(agents: int = 500, reports: int = 5000, operations: int = 6, concurrency: int = 32,
        store_timeout_s: float = 60) -> dict:
    services = []
    with broker_vhost() as amqp_url, tempfile.TemporaryDirectory(prefix="orch-bench-multi-") as tmp_name:
        tmp = Path(tmp_name)
        store, store_url = start_store(Path(tmp) / "store.sqlite")
        try:
            mongo_url = url_with_database(store_url, "orch_multi")
            shared = {
                "ORCH_MONGODB_URL": mongo_url,
                "ORCH_AMQP_URL": amqp_url,
                # One data dir (the Pulumi project's stack settings) and one backend, as two
                # processes on one machine share them.
                "ORCH_DATA_DIR": str(tmp / "data"),
                "ORCH_PULUMI_BACKEND_URL": f"file://{tmp / 'backend'}",
                "PULUMI_STANDIN_LATENCY_MS": "20",
            }
            (tmp / "backend").mkdir()
            for name in ("a", "b"):
                (tmp / name).mkdir()
                services.append(start_service(tmp / name, mongo_url, **shared))
                # With a broker, `orch serve` publishes operations and `orch worker` runs them: one each.
                services[-1].start_worker()
            ports = [int(s.url.rsplit(":", 1)[1]) for s in services]
            seeded = seed_agents(mongo_url, agents)
            # Warm-up over both (token caches), then one process alone, then both together.
            _load_both(ports, seeded, agents * 2, concurrency)
            expected, _ = wait_stored(agents * 2, store_timeout_s)
            started = time.perf_counter()
            one_s, one_sent, one_errors = _load_both(ports[:1], seeded, reports, concurrency)
            expected += one_sent
            _, stored_at = wait_stored(expected, store_timeout_s)
            one_to_storage_s = stored_at - started
            started = time.perf_counter()
            both_s, both_sent, both_errors = _load_both(ports, seeded, reports, concurrency)
            expected += both_sent
            stored, stored_at = wait_stored(expected, store_timeout_s)
            both_to_storage_s = stored_at - started
            time.sleep(1.5)  # anything stored twice would show up after the last flush
            stored = stored_count()

            op_ids = []
            for i in range(operations):
                service = services[i % 2]
                with service.client("bench") as client:
                    response = client.post("/api/v1/instances", json=instance_doc(f"multi-{i}", "aws"))
                    response.raise_for_status()
                    op_ids.append(response.json()["operation"]["id"])
            with services[0].client("bench") as client:
                statuses = [wait_operation(client, op_id, timeout=300)["status"] for op_id in op_ids]
            for i in range(operations):
                with services[(i + 1) % 2].client("bench") as client:
                    response = client.delete(f"/api/v1/instances/multi-{i}")
                    response.raise_for_status()
                    op_ids.append(response.json()["operation"]["id"])
            with services[1].client("bench") as client:
                statuses += [wait_operation(client, op_id, timeout=300)["status"] for op_id in op_ids[operations:]]
            attempts = {str(op.id): op.attempts for op in Operation.objects(id__in=op_ids)}
            workers = {op.worker.rsplit(":", 1)[0] for op in Operation.objects(id__in=op_ids) if op.worker}
        finally:
            for service in services:
                service.stop()
            mongoengine.disconnect_all()
            stop_store(store)
    return {
        "agents": agents, "reports_each_load": both_sent, "expected_stored": expected, "stored": stored,
        "lost": max(0, expected - stored), "stored_twice": max(0, stored - expected),
        "http_errors": one_errors + both_errors,
        "one_process_http_rate": one_sent / one_s, "two_processes_http_rate": both_sent / both_s,
        "two_processes_to_storage_rate": both_sent / both_to_storage_s, "one_process_to_storage_rate": one_sent / one_to_storage_s,
        "operations": len(op_ids), "operations_succeeded": statuses.count("succeeded"),
        "operations_run_more_than_once": sum(1 for count in attempts.values() if count != 1),
        "processes_that_ran_operations": len(workers),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--reports", type=int, default=5000)
    parser.add_argument("--operations", type=int, default=6)
    args = parser.parse_args()
    f = run(args.agents, args.reports, args.operations)
    print(f"reports: stored {f['stored']} of {f['expected_stored']} sent (lost {f['lost']}, "
          f"stored twice {f['stored_twice']}), {f['http_errors']} HTTP errors")
    print(f"ingest reports/s answered (to storage): one process {f['one_process_http_rate']:,.0f} "
          f"({f['one_process_to_storage_rate']:,.0f}); two processes {f['two_processes_http_rate']:,.0f} "
          f"({f['two_processes_to_storage_rate']:,.0f})")
    print(f"operations: {f['operations_succeeded']} of {f['operations']} succeeded, "
          f"{f['operations_run_more_than_once']} run more than once, by {f['processes_that_ran_operations']} process(es)")


if __name__ == "__main__":
    main()
