"""Drift: refresh, drifted/lost, reconcile and apply, the periodic refresh (the stand-in behind the service).

Resources are changed or deleted behind a stack's back with `python -m tests.pulumi_standin tamper`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.models import Instance, Operation, Step
from orchestrator.operations import periodic_refresh, reconcile, refresh
from orchestrator.services import Orchestrator
from orchestrator.settings import load_settings
from orchestrator.worker import Worker
from stacks.spec import parse_instance
from tests.live import REPO, instance_doc, start_service, wait_operation

AWS_INSTANCE = "aws:ec2/instance:Instance"
DOCKER_CONTAINER = "docker:index/container:Container"


def _tamper(service, user: str, name: str, *args: str) -> None:
    env = {**os.environ, "PULUMI_HOME": service.env["PULUMI_HOME"],
           "PULUMI_BACKEND_URL": service.env["ORCH_PULUMI_BACKEND_URL"]}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "tests.pulumi_standin", "tamper", "--stack", f"instance-{user}.{name}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _create(client, name: str, **spec) -> dict:
    response = client.post("/api/v1/instances", json=instance_doc(name, **spec))
    assert response.status_code == 202, response.text
    assert wait_operation(client, response.json()["operation"]["id"])["status"] == "succeeded"
    return client.get(f"/api/v1/instances/{name}").json()


def _post(client, name: str, verb: str, expected: int = 202) -> dict:
    response = client.post(f"/api/v1/instances/{name}/{verb}")
    assert response.status_code == expected, response.text
    return response.json()


def _cli(service, *argv: str, user: str) -> int:
    return int(main([*argv, "--url", service.url, "--token", service.token_for(user)]))


def _state_inputs(service, user: str, name: str, type_token: str) -> dict:
    """The inputs the stack's state holds for its resource of this type (read from the file backend)."""
    backend = Path(service.env["ORCH_PULUMI_BACKEND_URL"].removeprefix("file://"))
    [path] = backend.glob(f".pulumi/stacks/*/instance-{user}.{name}.json")
    resources = json.loads(path.read_text())["checkpoint"]["latest"]["resources"]
    [resource] = [resource for resource in resources if resource["type"] == type_token]
    return resource["inputs"]


def test_changed_outside_orch_is_drifted_with_the_differences_and_apply_puts_it_back(service, tmp_path, capsys):
    user = "drift-user"
    document = instance_doc("drift-a", cloud="aws")
    with service.client(user) as client:
        _create(client, "drift-a", cloud="aws")
        assert "nothing to reconcile" in _post(client, "drift-a", "reconcile", expected=409)["detail"]

    # The machine type changed in the console: `orch refresh --wait` finds it, and only it.
    _tamper(service, user, "drift-a", "--resource", "drift-a", "--type", AWS_INSTANCE, "--set", "instanceType=t3.large")
    assert _cli(service, "refresh", "drift-a", "--wait", user=user) == 0
    difference = f"{AWS_INSTANCE}::drift-a: instanceType: expected t3.medium, actual t3.large"
    assert "instance/drift-a is drifted\n" in (out := capsys.readouterr().out) and difference in out
    with service.client(user) as client:
        drifted = client.get("/api/v1/instances/drift-a").json()
        assert drifted["status"] == "drifted" and "instanceType" in drifted["status_reason"]
        assert drifted["drift"]["lost"] is False and drifted["drift"]["checked_at"]
        assert drifted["drift"]["differences"] == [
            {"resource": f"{AWS_INSTANCE}::drift-a", "property": "instanceType", "expected": "t3.medium", "actual": "t3.large"}
        ]
        [refresh] = client.get("/api/v1/instances/drift-a/operations").json()["items"][:1]
        assert (refresh["kind"], [step["name"] for step in refresh["steps"]]) == ("refresh", ["pulumi refresh"])
    # The refresh was a real one: the stack's state holds what the cloud has.
    assert _state_inputs(service, user, "drift-a", AWS_INSTANCE)["instanceType"] == "t3.large"

    # `orch describe` shows the differences; `orch apply` of the unchanged spec reconciles.
    assert _cli(service, "describe", "instance", "drift-a", user=user) == 0
    assert difference in capsys.readouterr().out
    spec = tmp_path / "drift-a.yaml"
    spec.write_text(json.dumps(document))
    assert _cli(service, "apply", "-f", str(spec), "--wait", user=user) == 0
    assert "instance/drift-a drifted: reconciling to the spec" in capsys.readouterr().out
    with service.client(user) as client:
        running = client.get("/api/v1/instances/drift-a").json()
        assert (running["status"], running["drift"]) == ("running", None)
        [reconcile] = client.get("/api/v1/instances/drift-a/operations").json()["items"][:1]
        assert (reconcile["kind"], [step["name"] for step in reconcile["steps"]]) == (
            "reconcile", ["pulumi up (reconcile: back to the spec)"]
        )
        assert _state_inputs(service, user, "drift-a", AWS_INSTANCE)["instanceType"] == "t3.medium", "back to the spec"
        assert client.delete("/api/v1/instances/drift-a").status_code == 202


def test_a_spot_machine_a_refresh_finds_stopped_is_preempted_not_drifted(service):
    user = "spot-user"
    with service.client(user) as client:
        _create(client, "spot-a", cloud="aws", spot=True)
        # The cloud took the spot machine back (stopped it): the refresh calls the preemption hook.
        _tamper(service, user, "spot-a", "--resource", "spot-a", "--type", AWS_INSTANCE, "--stop")
        refreshing = _post(client, "spot-a", "refresh")
        assert (refreshing["operation"]["kind"], refreshing["instance"]["status"]) == ("refresh", "running")
        assert "has a refresh operation" in _post(client, "spot-a", "refresh", expected=409)["detail"]
        op = wait_operation(client, refreshing["operation"]["id"])
        assert op["status"] == "succeeded", op
        preempted = client.get("/api/v1/instances/spot-a").json()
        assert preempted["status"] == "preempted" and preempted["preempted_at"], preempted
        assert "preempted (refresh)" in preempted["status_reason"] and "stopped (instanceState stopped)" in preempted["status_reason"]
        assert client.delete("/api/v1/instances/spot-a").status_code == 202


def _wait_instance(client, name: str, done, what: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while not done(instance := client.get(f"/api/v1/instances/{name}").json()):
        assert time.monotonic() < deadline, f"{what}: {instance}"
        time.sleep(0.2)
    return instance


def test_periodic_refresh_finds_a_deleted_machine_lost_and_reconcile_creates_it_again(tmp_path, mongo_url, capsys):
    live = start_service(tmp_path, mongo_url, ORCH_REFRESH_INTERVAL_S="1")
    try:
        with live.client("alice") as client:
            _create(client, "lost-a")
            _tamper(live, "alice", "lost-a", "--resource", "lost-a", "--type", DOCKER_CONTAINER, "--delete")
            lost = _wait_instance(client, "lost-a", lambda i: i["status"] == "lost", "no periodic refresh found it lost")
            assert lost["drift"]["lost"] is True and "deleted outside orch" in lost["status_reason"]
            assert lost["drift"]["differences"] == [
                {"resource": f"{DOCKER_CONTAINER}::lost-a", "property": "exists", "expected": True, "actual": False}
            ]
            refreshes = [op for op in client.get("/api/v1/instances/lost-a/operations").json()["items"]
                         if op["kind"] == "refresh" and op["status"] == "succeeded"]  # fmt: skip
            assert refreshes and refreshes[0]["steps"][0]["name"] == "pulumi refresh"
            assert "only a running, stopped, failed, drifted, preempted instance" in _post(client, "lost-a", "refresh", 409)["detail"]

        assert _cli(live, "reconcile", "lost-a", "--wait", user="alice") == 0
        assert "instance/lost-a: reconcile succeeded" in capsys.readouterr().out
        with live.client("alice") as client:
            resources = client.get("/api/v1/instances/lost-a/stack").json()["resources"]
            assert DOCKER_CONTAINER in [resource["type"] for resource in resources], "the container is created again"
            back = client.get("/api/v1/instances/lost-a").json()
            assert back["status"] in ("running", "refreshing") and back["public_ip"], back
    finally:
        live.stop()


# ---------------------------------------------------------------- the periodic pass, with a simulated clock


@pytest.fixture
def orchestrator(mongo_db, tmp_path):
    dispatched: list[str] = []
    settings = load_settings({"ORCH_DATA_DIR": str(tmp_path / "data"), "ORCH_JWT_SECRET": "x" * 40})
    return Orchestrator(settings, None, lambda op_id: dispatched.append(op_id) or True), dispatched


def _instance(name: str, status: str = "running") -> Instance:
    instance = Instance(name=name, owner="alice", claim=f"alice/{name}", spec={"cloud": "aws"}, cloud="aws",
                        region="us-east-1", status=status)  # fmt: skip
    instance.save()
    return instance


def test_periodic_pass_is_bounded_claims_once_and_waits_for_the_interval(orchestrator, monkeypatch):
    service, dispatched = orchestrator
    other_process = Orchestrator(service.settings, None, lambda op_id: dispatched.append(op_id) or True)
    monkeypatch.setattr(periodic_refresh, "MAX_REFRESHES_PER_PASS", 2)
    for index in range(3):
        _instance(f"p-{index}")
    _instance("p-creating", status="provisioning")  # not refreshable
    busy = _instance("p-busy")
    Operation(kind="update", target="p-busy", target_id=str(busy.id), lock_key=busy.lock_key, owner="alice",
              status="running").save()  # fmt: skip
    now = dt.datetime(2026, 1, 1, 12, 0, 0)

    assert periodic_refresh.run_pass(service, 60, now) == 2, "bounded per pass"
    assert periodic_refresh.run_pass(other_process, 60, now) == 1, "the other process takes only what is left"
    assert periodic_refresh.run_pass(service, 60, now + dt.timedelta(seconds=30)) == 0, "not due yet"
    refreshes = Operation.objects(kind="refresh")
    assert sorted(op.target for op in refreshes) == ["p-0", "p-1", "p-2"] and len(dispatched) == 3
    assert {op.requested_by for op in refreshes} == {periodic_refresh.REQUESTED_BY}
    assert {op.params["from_status"] for op in refreshes} == {"running"}
    # Their refreshes still run: nothing is requested twice; once done and due again, they are.
    assert periodic_refresh.run_pass(service, 60, now + dt.timedelta(seconds=61)) == 0
    Operation.objects(kind__in=("refresh", "update")).update(set__status="succeeded")
    assert periodic_refresh.run_pass(service, 60, now + dt.timedelta(seconds=62)) == 2
    assert periodic_refresh.run_pass(service, 60, now + dt.timedelta(seconds=62)) == 2


class _StubEngine:
    """An engine whose up reports the machine's step as `machine_op`."""

    def __init__(self, machine_op: str):
        self.machine_op = machine_op

    def up_instance(self, stack_name, document, *, on_step, **kwargs) -> dict:
        on_step(self.machine_op, AWS_INSTANCE)
        return {"public_ip": "203.0.113.9", "ssh_user": "ubuntu"}

    def cancel(self, stack_name) -> None:
        pass


class _StubWorker:
    _take = Worker._take  # the real move to the operation's status

    def __init__(self, settings, machine_op: str):
        self.settings = settings
        self.engine = _StubEngine(machine_op)
        self.configured: list[str] = []

    @contextlib.contextmanager
    def _step(self, op, name):
        Operation.objects(id=op.id).update_one(push__steps=Step(name=name, status="succeeded"))
        yield

    def _configure(self, op, instance, outputs, document, log_line) -> None:
        self.configured.append(outputs["public_ip"])


@pytest.mark.parametrize("machine_op, configured", [("create", ["203.0.113.9"]), ("update", [])])
def test_reconcile_configures_a_machine_it_created_again(orchestrator, machine_op, configured):
    service, _ = orchestrator
    document = instance_doc("re-a", cloud="aws", configure=True)
    instance = Instance(name="re-a", owner="alice", claim="alice/re-a", spec=parse_instance(document).to_dict()["spec"],
                        labels=document["labels"], cloud="aws", region="us-east-1", status="lost",
                        admin_public_key="ssh-ed25519 AAAA test", drift={"lost": True, "differences": []})  # fmt: skip
    instance.save()
    op = Operation(kind="reconcile", target="re-a", target_id=str(instance.id), lock_key=instance.lock_key, owner="alice")
    op.save()
    worker = _StubWorker(service.settings, machine_op)
    reconcile.reconcile(worker, op, lambda line: None)
    instance.reload()
    assert (instance.status, instance.drift, instance.public_ip) == ("running", None, "203.0.113.9")
    assert worker.configured == configured, "only a machine created again is configured again"


@pytest.mark.parametrize(
    "came_from, earlier, expected_status, expected_reason",
    [
        ("failed", "pulumi up failed: quota", "failed", "pulumi up failed: quota; refresh failed: no CLI"),
        # A periodic refresh failing again does not pile up its reasons.
        ("failed", "pulumi up failed: quota; refresh failed: old", "failed", "pulumi up failed: quota; refresh failed: no CLI"),
        ("drifted", "changed outside orch", "drifted", "changed outside orch; refresh failed: no CLI"),
        ("running", None, "running", "refresh failed: no CLI"),
    ],
)
def test_a_failed_refresh_leaves_the_instance_where_it_was(mongo_db, came_from, earlier, expected_status, expected_reason):
    instance = _instance("rf-a", status="refreshing")
    op = Operation(kind="refresh", target="rf-a", target_id=str(instance.id), lock_key=instance.lock_key, owner="alice",
                   params={"from_status": came_from, "from_reason": earlier})  # fmt: skip
    op.save()
    refresh.refresh_failed(op, "no CLI")
    instance.reload()
    assert (instance.status, instance.status_reason) == (expected_status, expected_reason)
