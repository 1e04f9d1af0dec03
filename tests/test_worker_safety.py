"""The worker's safety rules, in-process with a recording engine (issue 11, items 3, 8 and 17).

- an operation whose state change is illegal ends (failed, with the reason) at once, never retried;
- a rollback destroys only a stack that its own operation created;
- an instance whose configuration never succeeded is configured by its next update, even a labels-only one;
- an operation's log in MongoDB is bounded;
- an operation reads as ended only once its target's lock is free, so the next request on it is not refused as busy.
"""

from __future__ import annotations

import pytest

from orchestrator.auth import Principal
from orchestrator.engine import EngineError
from orchestrator.models import Instance, Lock, Operation
from orchestrator.services import Orchestrator
from orchestrator.settings import load_settings
from orchestrator.worker import MAX_LOG_LINES, OperationLog, Worker
from tests.live import instance_doc

ALICE = Principal(name="alice", role="user")
OUTPUTS = {"public_ip": "198.51.100.7", "ssh_user": "ubuntu", "cloud": "docker", "instance_id": "c-1"}


class RecordingEngine:
    """Stands in for StackEngine: records calls; `up` fails while `fail_up` is set; `stacks` holds resources."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_up = False
        self.stacks: dict[str, list[dict]] = {}

    def up_instance(self, stack_name, document, *, admin_public_key, base_image_id, on_output):
        self.calls.append(("up", stack_name))
        if self.fail_up:
            raise EngineError("aws:ec2/instance:Instance failed (standin-fail)")
        self.stacks[stack_name] = [{"urn": f"urn:{stack_name}::vm", "type": "docker:index/container:Container"}]
        return dict(OUTPUTS)

    def destroy(self, stack_name, *, on_output):
        self.calls.append(("destroy", stack_name))
        self.stacks.pop(stack_name, None)

    def cancel(self, stack_name):
        self.calls.append(("cancel", stack_name))

    def inspect(self, stack_name):
        if stack_name not in self.stacks:
            return None
        return {"stack": stack_name, "resources": self.stacks[stack_name], "outputs": {}}


@pytest.fixture
def setup(mongo_db, tmp_path, monkeypatch):
    settings = load_settings({"ORCH_DATA_DIR": str(tmp_path), "ORCH_OPERATION_LEASE_S": "6"})
    engine = RecordingEngine()
    worker = Worker(settings, engine)
    configured: list[int] = []

    def configure(self, op, instance, outputs, document, log_line) -> None:
        configured.append(instance.generation)

    monkeypatch.setattr(Worker, "_configure", configure)
    orch = Orchestrator(settings, engine, dispatch=lambda op_id: False)
    return orch, worker, engine, configured


def test_an_illegal_transition_ends_the_operation_with_its_reason(setup):
    orch, worker, engine, _ = setup
    instance, op = orch.create_instance(ALICE, instance_doc("illegal"))
    # A create operation whose instance is already running: running -> provisioning is
    # illegal, and so is its failure path's running -> failed.
    Instance.objects(id=instance.id).update_one(set__status="running")
    worker.run(str(op.id))
    op.reload()
    assert op.status == "failed", "the operation ends instead of staying running for the recovery sweep"
    assert "cannot go from running to provisioning" in op.error
    assert op.attempts == 1 and op.lease_expires_at is None
    assert ("destroy", instance.stack_name) not in engine.calls
    assert Instance.objects.get(id=instance.id).status == "running"


def test_a_rollback_never_destroys_a_stack_its_operation_did_not_create(setup):
    orch, worker, engine, _ = setup
    instance, op = orch.create_instance(ALICE, instance_doc("taken"))
    existing = [{"urn": "urn:someone-elses::vm", "type": "aws:ec2/instance:Instance"}]
    engine.stacks[instance.stack_name] = existing
    worker.run(str(op.id))
    op.reload()
    assert op.status == "failed" and "did not create" in op.error
    assert engine.stacks[instance.stack_name] == existing, "the existing stack's resources are intact"
    assert [call for call in engine.calls if call[0] in ("up", "destroy")] == []
    assert any("no rollback" in line for line in op.logs)


def test_a_rollback_destroys_the_stack_its_operation_created(setup):
    orch, worker, engine, _ = setup
    engine.fail_up = True
    instance, op = orch.create_instance(ALICE, instance_doc("rolled-back"))
    worker.run(str(op.id))
    op.reload()
    assert op.status == "failed" and [s.name for s in op.steps] == ["pulumi up", "rollback: pulumi destroy"]
    assert ("destroy", instance.stack_name) in engine.calls


def test_a_rolled_back_create_shows_no_public_ip_or_outputs(setup, monkeypatch):
    orch, worker, engine, _ = setup

    def unreachable(self, op, instance, outputs, document, log_line) -> None:
        raise EngineError(f"cannot reach {outputs['public_ip']}:22")

    # `pulumi up` succeeds and records the address; configuration fails, so the create rolls back.
    monkeypatch.setattr(Worker, "_configure", unreachable)
    instance, op = orch.create_instance(ALICE, instance_doc("configure-fails", configure=True))
    worker.run(str(op.id))
    assert Operation.objects.get(id=op.id).status == "failed"
    assert ("destroy", instance.stack_name) in engine.calls
    failed = Instance.objects.get(id=instance.id)
    assert failed.status == "failed" and OUTPUTS["public_ip"] in failed.status_reason
    assert (failed.public_ip, failed.outputs) == (None, {}), "the destroyed resources' address is not shown"


@pytest.mark.parametrize("fails", [False, True], ids=["succeeded", "failed"])
def test_an_operation_reads_as_ended_only_once_its_lock_is_free(setup, monkeypatch, fails):
    orch, worker, engine, _ = setup
    engine.fail_up = fails
    locked_when_ended: list[bool] = []
    finish = Worker._finish

    def observed_finish(self, op, status, error) -> None:
        locked_when_ended.append(Lock.objects(key=op.lock_key).first() is not None)
        finish(self, op, status, error)

    monkeypatch.setattr(Worker, "_finish", observed_finish)
    instance, op = orch.create_instance(ALICE, instance_doc(f"ends-{'failed' if fails else 'ok'}"))
    worker.run(str(op.id))
    assert Operation.objects.get(id=op.id).status == ("failed" if fails else "succeeded")
    assert locked_when_ended == [False], "a preview or update right after the end would be refused as busy"


def test_an_update_configures_an_instance_whose_create_failed(setup):
    orch, worker, engine, configured = setup
    engine.fail_up = True
    instance, op = orch.create_instance(ALICE, instance_doc("never-configured", configure=True))
    worker.run(str(op.id))
    assert Operation.objects.get(id=op.id).status == "failed"
    failed = Instance.objects.get(id=instance.id)
    assert configured == [] and failed.configured_generation is None
    # Rolled back: no resource holds the admin key, so it is not kept.
    assert (failed.admin_private_key, failed.admin_public_key) == (None, None)
    old_public_key = instance.admin_public_key
    engine.fail_up = False
    # A labels-only update: no configuration field changed, but configuration never succeeded.
    doc = {**instance_doc("never-configured", configure=True), "labels": {"team": "other"}}
    instance, op = orch.update_instance(ALICE, "never-configured", doc)
    worker.run(str(op.id))
    assert Operation.objects.get(id=op.id).status == "succeeded"
    instance.reload()
    assert configured == [2] and (instance.status, instance.configured_generation) == ("running", 2)
    assert instance.admin_private_key and instance.admin_public_key not in (None, old_public_key)
    # Now configured: another labels-only update runs no configuration.
    doc["labels"] = {"team": "third"}
    _, op = orch.update_instance(ALICE, "never-configured", doc)
    worker.run(str(op.id))
    assert Operation.objects.get(id=op.id).status == "succeeded"
    assert configured == [2] and Instance.objects.get(id=instance.id).configured_generation == 3


def test_the_operation_log_is_bounded(setup, monkeypatch):
    orch, _, _, _ = setup
    # A smaller bound than MAX_LOG_LINES's, for speed: the mechanism is the same.
    kept = 30
    assert kept < MAX_LOG_LINES
    monkeypatch.setattr("orchestrator.worker.MAX_LOG_LINES", kept)
    _, op = orch.create_instance(ALICE, instance_doc("chatty"))
    log_line = OperationLog(op.id)
    for index in range(kept + 20):
        log_line(f"line {index}")
        if index % 7 == 0:
            log_line.flush()  # batches of several lines and single lines both meet the bound
    log_line.flush()
    logs = Operation.objects.get(id=op.id).logs
    assert logs[:kept] == [f"line {index}" for index in range(kept)], "the first lines are kept, in order"
    assert len(logs) == kept + 1 and f"only the first {kept} lines" in logs[-1]


def test_a_store_from_before_per_owner_names_is_upgraded(mongo_db):
    from orchestrator.models import Snapshot, upgrade_names

    instances = Instance._get_collection()
    instances.drop_indexes()
    instances.create_index("name", unique=True, name="name_1")
    instances.insert_many([
        {"name": "old-1", "owner": "alice", "status": "running", "spec": {"a": 1}, "cloud": "aws", "region": "r"},
        {"name": "gone-1", "owner": "alice", "status": "deleted", "spec": {"a": 1}, "cloud": "aws", "region": "r"},
    ])
    Snapshot._get_collection().insert_one({"name": "snap", "owner": "bob", "status": "available", "cloud": "aws"})
    Instance.ensure_indexes()
    upgrade_names()
    upgrade_names()  # idempotent
    assert "name_1" not in instances.index_information()
    assert {row["name"]: row.get("claim") for row in instances.find()} == {"old-1": "alice/old-1", "gone-1": None}
    assert Snapshot._get_collection().find_one()["claim"] == "bob/snap"
    # Another owner's instance of the same name can now be created.
    Instance(name="old-1", owner="bob", claim="bob/old-1", spec={"a": 1}, cloud="aws", region="r").save()


def test_the_sweep_takes_only_operations_really_left_behind(setup):
    """A fresh request or dispatch is never sent again; an expired lease or an old dispatch is, once."""
    import datetime as dt

    from orchestrator.models import utcnow
    from orchestrator.worker import recover

    orch, *_ = setup
    _, fresh = orch.create_instance(ALICE, instance_doc("sweep-fresh"))  # never dispatched (the broker said no)
    _, just_sent = orch.create_instance(ALICE, instance_doc("sweep-sent"))
    _, old = orch.create_instance(ALICE, instance_doc("sweep-old"))
    _, leased = orch.create_instance(ALICE, instance_doc("sweep-leased"))
    _, expired = orch.create_instance(ALICE, instance_doc("sweep-expired"))
    now = utcnow()
    long_ago = now - dt.timedelta(minutes=5)
    Operation.objects(id=just_sent.id).update_one(set__dispatched_at=now, set__created_at=long_ago)
    Operation.objects(id=old.id).update_one(set__dispatched_at=long_ago, set__created_at=long_ago)
    Operation.objects(id=leased.id).update_one(
        set__status="running", set__lease_expires_at=now + dt.timedelta(seconds=60), set__created_at=long_ago
    )
    Operation.objects(id=expired.id).update_one(
        set__status="running", set__lease_expires_at=now - dt.timedelta(seconds=1), set__created_at=long_ago
    )
    sent: list[str] = []
    assert recover(lambda op_id: sent.append(op_id) or True, redispatch_after_s=30) == 2
    assert sorted(sent) == sorted([str(old.id), str(expired.id)])
    assert Operation.objects.get(id=leased.id).status == "running"
    assert Operation.objects.get(id=expired.id).status == "queued"
    # Both are freshly dispatched now: the next sweep leaves everything alone.
    assert recover(lambda op_id: sent.append(op_id) or True, redispatch_after_s=30) == 0
