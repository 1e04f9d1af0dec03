"""Provisioning benchmark: creates and deletes through the service vs the direct Automation API.

1. Creates N instances at once through the REST API (N concurrent POSTs to `orch serve`,
   which records each operation in the store and publishes it to RabbitMQ; an `orch worker`
   process runs at most `concurrency` at a time under the instance's lock; the Pulumi CLI
   stand-in with a fixed latency per resource) and times until all are running; then deletes
   them the same way.
2. In the same run, drives the same N stacks directly through the Automation
   API with the same concurrency: the same programs and the same stack config (the
   instance's document as a secret value, which every CLI call that reads the stack's
   config decrypts), and times that.
(The list's latency is benchmarks/listing.py.)

    .venv/bin/python -m benchmarks.provision [--instances 50] [--concurrency 8] [--latency-ms 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


from pulumi import automation as auto

from benchmarks.broker import broker_vhost
from benchmarks.cpu import CpuMeter
from benchmarks.store import start_store, stop_store
from orchestrator.engine import StackEngine
from orchestrator.settings import load_settings
from orchestrator.sshkeys import generate_keypair
from stacks import instance_program
from stacks.spec import parse_instance
from tests.live import STANDIN_ROOT, instance_doc, start_service

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.5
_DEFAULTS = load_settings({})
DEFAULT_LEASE_S = _DEFAULTS.operation_lease_s
DEFAULT_REDISPATCH_S = _DEFAULTS.redispatch_after_s


def _wait_all(client, ops: list[str]) -> tuple[int, dict]:
    """Wait until every operation finished; (how many failed, mean seconds per phase).

    Phases from the operations' own times: queued (requested until its first step began),
    each step by name ("pulumi up", "pulumi destroy"...), and the rest (after the last step:
    recording the result).
    """
    # One operation asked at a time, the oldest unfinished: all must finish, and polling every
    # operation would load the service (and the store) that the run times, which the direct run
    # does not have.
    pending, failed, done = list(ops), 0, {}
    while pending:
        op = client.get(f"/api/v1/operations/{pending[0]}").json()
        if op["status"] in ("succeeded", "failed"):
            failed += op["status"] == "failed"
            done[pending.pop(0)] = op
        else:
            time.sleep(POLL_S)
    phases: dict[str, float] = {}

    def add(phase: str, start: str | None, end: str | None) -> None:
        if start and end:
            seconds = (dt.datetime.fromisoformat(end.rstrip("Z")) - dt.datetime.fromisoformat(start.rstrip("Z")))
            phases[phase] = phases.get(phase, 0.0) + seconds.total_seconds() / len(done)

    for op in done.values():
        steps = op["steps"]
        add("queued and checks before the first step", op["created_at"], steps[0]["started_at"] if steps else None)
        for step in steps:
            add(step["name"], step["started_at"], step["finished_at"])
        add("after the last step", steps[-1]["finished_at"] if steps else None, op["updated_at"])
    return failed, phases


def _request_all(client, method: str, paths_and_bodies: list[tuple[str, dict | None]]) -> list[str]:
    """The requests at once, as that many clients would send them; their operations' ids, in order."""

    def send(path_and_body: tuple[str, dict | None]) -> str:
        path, body = path_and_body
        response = client.request(method, path, json=body)
        response.raise_for_status()
        return response.json()["operation"]["id"]

    with ThreadPoolExecutor(max_workers=len(paths_and_bodies)) as pool:
        return list(pool.map(send, paths_and_bodies))


def orchestrated(
    tmp: Path, mongo_url: str, store_pid: int, amqp_url: str, count: int, concurrency: int, latency_ms: int
) -> dict:
    """Wall time until every create finished, then every delete, through the REST API, the broker and
    an `orch worker`; failures counted; the CPU time the service's own processes used meanwhile (the
    worker's without the Pulumi CLI processes it starts, which the direct run starts too)."""
    live = start_service(
        tmp, mongo_url, ORCH_AMQP_URL=amqp_url, ORCH_MAX_PARALLEL_OPERATIONS=str(concurrency),
        PULUMI_STANDIN_LATENCY_MS=str(latency_ms),
        # The service's defaults, not the test suite's short lease (a heartbeat write every 2 s per operation).
        ORCH_OPERATION_LEASE_S=str(DEFAULT_LEASE_S), ORCH_REDISPATCH_AFTER_S=str(DEFAULT_REDISPATCH_S),
    )
    names = [f"bench-{i:03d}" for i in range(count)]
    try:
        worker = live.start_worker()
        service_processes = {"orch serve": live.process.pid, "store": store_pid, "orch worker": worker.pid}
        with live.client("bench") as client:
            started = time.perf_counter()
            with CpuMeter(service_processes) as create_cpu:
                ops = _request_all(client, "POST", [("/api/v1/instances", instance_doc(name, "aws")) for name in names])
                create_failed, create_phases = _wait_all(client, ops)
            create_s = time.perf_counter() - started
            started = time.perf_counter()
            with CpuMeter(service_processes) as delete_cpu:
                ops = _request_all(client, "DELETE", [(f"/api/v1/instances/{name}", None) for name in names])
                delete_failed, delete_phases = _wait_all(client, ops)
            delete_s = time.perf_counter() - started
        return {"create_s": create_s, "create_failed": create_failed, "create_phases_s": create_phases,
                "create_cpu_s": create_cpu.used_s, "delete_s": delete_s, "delete_failed": delete_failed,
                "delete_phases_s": delete_phases, "delete_cpu_s": delete_cpu.used_s}
    finally:
        live.stop()


def direct(tmp: Path, count: int, concurrency: int, latency_ms: int) -> dict:
    """The same stacks straight through the Automation API, same concurrency: creates (the program and
    the stack's config), then deletes (destroy and remove the stack, as the service does)."""
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
    opts = auto.LocalWorkspaceOptions(work_dir=str(project), env_vars=env, pulumi_command=command)

    def provision(i: int) -> None:
        instance = parse_instance(instance_doc(f"bench-{i:03d}", "aws"))
        program = instance_program(instance, admin_public_key=admin_key)
        stack = auto.create_or_select_stack(f"instance-{instance.name}", project_name="orch", program=program, opts=opts)
        stack.set_all_config(StackEngine.instance_config(instance, admin_key, None))
        stack.up(on_output=lambda line: None)

    def remove(i: int) -> None:
        stack = auto.select_stack(f"instance-bench-{i:03d}", project_name="orch", program=lambda: None, opts=opts)
        stack.destroy(on_output=lambda line: None)
        stack.workspace.remove_stack(stack.name)

    times = {}
    for label, action in (("create_s", provision), ("delete_s", remove)):
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(action, range(count)))
        times[label] = time.perf_counter() - started
    return times


def run(instances: int = 50, concurrency: int = 8, latency_ms: int = 200) -> dict:
    """Orchestrated vs direct creates of the same stacks, same concurrency, in one run."""
    os.environ.pop("PULUMI_STANDIN_FAIL", None)
    with broker_vhost() as amqp_url, tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        store, mongo_url = start_store(Path(tmp) / "store.sqlite")
        try:
            (tmp / "orchestrated").mkdir()
            service = orchestrated(tmp / "orchestrated", mongo_url, store.pid, amqp_url, instances, concurrency, latency_ms)
            baseline = direct(tmp, instances, concurrency, latency_ms)
        finally:
            stop_store(store)
    return {"instances": instances, "concurrency": concurrency, "latency_ms": latency_ms,
            "service": service, "direct": baseline}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-ms", type=int, default=200)
    args = parser.parse_args()
    f = run(args.instances, args.concurrency, args.latency_ms)
    print(f"{f['instances']} instances (aws program), concurrency {f['concurrency']}, "
          f"stand-in latency {f['latency_ms']} ms per resource operation")
    for kind in ("create", "delete"):
        service, direct_s = f["service"][f"{kind}_s"], f["direct"][f"{kind}_s"]
        failed = f["service"][f"{kind}_failed"]
        print(f"{kind}s: through the service {service:.1f} s ({failed} failed), direct Automation API "
              f"{direct_s:.1f} s; ratio {service / direct_s:.2f}")
        phases = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in f["service"][f"{kind}_phases_s"].items())
        print(f"  mean per {kind} operation: {phases}")
        cpu = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in f["service"][f"{kind}_cpu_s"].items())
        print(f"  CPU time meanwhile: {cpu}")


if __name__ == "__main__":
    main()
