"""Durable operations: RabbitMQ dispatch, rollback, crash recovery, broker outages."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.live import free_port, instance_doc, start_service, wait_operation
from tests.tcpproxy import TcpProxy


def _stack_file(live, name: str) -> Path | None:
    backend = Path(live.env["ORCH_PULUMI_BACKEND_URL"].removeprefix("file://"))
    found = list(backend.glob(f".pulumi/stacks/*/instance-alice.{name}.json"))  # alice's instances
    return found[0] if found else None


def _resources_in_state(live, name: str) -> list[dict]:
    path = _stack_file(live, name)
    if path is None:
        return []
    checkpoint = json.loads(path.read_text())
    return (checkpoint.get("checkpoint", {}).get("latest") or {}).get("resources") or []


@pytest.mark.parametrize(
    "cloud, fail, failing_type",
    [
        ("aws", "aws:ec2/instance:Instance", "aws:ec2/instance:Instance"),
        ("azure", "azure-native:compute:VirtualMachine", "azure-native:compute:VirtualMachine"),
        # A resource in the middle of the program: the ones before it exist when it fails.
        ("azure", "azure-native:network:NetworkInterface", "azure-native:network:NetworkInterface"),
        ("gcp", "gcp:compute/instance:Instance", "gcp:compute/instance:Instance"),
    ],
)
def test_failed_provision_is_rolled_back(tmp_path, mongo_url, cloud, fail, failing_type):
    """A resource fails after others were created: destroy removes them all."""
    live = start_service(tmp_path, mongo_url, PULUMI_STANDIN_FAIL=fail)
    try:
        with live.client("alice") as client:
            created = client.post("/api/v1/instances", json=instance_doc("doomed", cloud)).json()
            op = wait_operation(client, created["operation"]["id"])
            assert op["status"] == "failed"
            assert failing_type in op["error"]
            assert [s["name"] for s in op["steps"]] == ["pulumi up", "rollback: pulumi destroy"]
            assert [s["status"] for s in op["steps"]] == ["failed", "succeeded"]
            instance = client.get("/api/v1/instances/doomed").json()
            assert instance["status"] == "failed" and failing_type in instance["status_reason"]
            assert _resources_in_state(live, "doomed") == []
            assert _stack_file(live, "doomed") is None, "the stack is removed after the rollback"
            # A failed instance can be deleted, which leaves it deleted.
            op = client.delete("/api/v1/instances/doomed").json()["operation"]
            assert wait_operation(client, op["id"])["status"] == "succeeded"
    finally:
        live.stop()


def test_failed_snapshot_is_rolled_back_and_the_instance_keeps_running(tmp_path, mongo_url):
    live = start_service(tmp_path, mongo_url, PULUMI_STANDIN_FAIL="aws:ec2/amiFromInstance:AmiFromInstance")
    try:
        with live.client("alice") as client:
            created = client.post("/api/v1/instances", json=instance_doc("keeps-running", "aws")).json()
            assert wait_operation(client, created["operation"]["id"])["status"] == "succeeded"
            taken = client.post("/api/v1/instances/keeps-running/snapshots", json={"name": "bad-snap"}).json()
            op = wait_operation(client, taken["operation"]["id"])
            assert op["status"] == "failed" and "aws:ec2/amiFromInstance:AmiFromInstance" in op["error"]
            snapshot = client.get("/api/v1/snapshots/bad-snap").json()
            assert snapshot["status"] == "failed" and snapshot["error"]
            backend = Path(live.env["ORCH_PULUMI_BACKEND_URL"].removeprefix("file://"))
            assert not list(backend.glob(".pulumi/stacks/*/snapshot-alice.bad-snap.json"))
            assert client.get("/api/v1/instances/keeps-running").json()["status"] == "running"
            # A failed snapshot can be deleted.
            op = client.delete("/api/v1/snapshots/bad-snap").json()["operation"]
            assert wait_operation(client, op["id"])["status"] == "succeeded"
    finally:
        live.stop()


def test_rabbitmq_dispatch_runs_operations_in_worker_processes(tmp_path, mongo_url, amqp_url):
    live = start_service(tmp_path, mongo_url, ORCH_AMQP_URL=amqp_url)
    try:
        live.start_worker()
        with live.client("alice") as client:
            assert client.get("/api/v1/features").json()["features"]["dispatch"] == "rabbitmq"
            assert client.get("/healthz").json()["broker"] is True
            ops = [client.post("/api/v1/instances", json=instance_doc(f"mq-{i}", "aws")).json()["operation"] for i in range(3)]
            assert [wait_operation(client, op["id"])["status"] for op in ops] == ["succeeded"] * 3
            assert {client.get(f"/api/v1/instances/mq-{i}").json()["status"] for i in range(3)} == {"running"}
            op = client.delete("/api/v1/instances/mq-0").json()["operation"]
            assert wait_operation(client, op["id"])["status"] == "succeeded"
    finally:
        live.stop()


def test_worker_killed_mid_up_is_recovered(tmp_path, mongo_url, amqp_url):
    live = start_service(tmp_path, mongo_url, ORCH_AMQP_URL=amqp_url)
    try:
        worker = live.start_worker(PULUMI_STANDIN_LATENCY_MS="1500")
        with live.client("alice") as client:
            op = client.post("/api/v1/instances", json=instance_doc("crashy", "aws")).json()["operation"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                current = client.get(f"/api/v1/operations/{op['id']}").json()
                if current["status"] == "running" and len(_resources_in_state(live, "crashy")) >= 1:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"the up never got going: {current}")
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            live.start_worker()
            final = wait_operation(client, op["id"], timeout=180)
            instance = client.get("/api/v1/instances/crashy").json()
            assert final["attempts"] >= 2
            assert any("worker lost" in line for line in final["logs"])
            if final["status"] == "succeeded":
                assert instance["status"] == "running"
                types = {r["type"] for r in client.get("/api/v1/instances/crashy/stack").json()["resources"]}
                assert "aws:ec2/instance:Instance" in types
            else:
                assert instance["status"] == "failed"
                assert _resources_in_state(live, "crashy") == []
    finally:
        live.stop()


def test_request_accepted_while_broker_is_down_runs_when_it_is_back(tmp_path, mongo_url, amqp_url):
    broker = urlparse(amqp_url)
    proxy = TcpProxy(target_port=broker.port or 5672, listen_port=free_port())
    proxied_url = amqp_url.replace(f"{broker.hostname}:{broker.port or 5672}", f"127.0.0.1:{proxy.listen_port}")
    live = start_service(tmp_path, mongo_url, ORCH_AMQP_URL=proxied_url)
    try:
        live.start_worker()  # the worker reaches the broker through the same (down) proxy
        with live.client("alice") as client:
            assert client.get("/healthz").json()["broker"] is False
            response = client.post("/api/v1/instances", json=instance_doc("patient", "gcp"))
            assert response.status_code == 202, response.text
            op = response.json()["operation"]
            time.sleep(2)
            assert client.get(f"/api/v1/operations/{op['id']}").json()["status"] == "queued"
            proxy.up()
            assert wait_operation(client, op["id"], timeout=120)["status"] == "succeeded"
            assert client.get("/api/v1/instances/patient").json()["status"] == "running"
    finally:
        proxy.down()
        live.stop()
