"""The engine behind the API: previews change nothing, engine errors are 409/404/502 (never a bare
500), and a spec's secrets never reach a file in plaintext.

Error mapping, as Pulumi's pulumi_over_http example does: a stack another update holds
(ConcurrentUpdateError) is 409, a missing stack (StackNotFoundError) 404, any other CLI
failure 502 with the CLI's message.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pymongo
import pytest

from tests.live import REPO, STANDIN_ROOT, instance_doc, start_service, wait_operation
from tests.test_engine import files_holding

BOOTSTRAP_MARKER = "bootstrap-marker-api-51d2e8"
# Pulumi Cloud's answer to a preview while another update runs (the SDK raises ConcurrentUpdateError).
CLOUD_CONFLICT = "error: [409] Conflict: Another update is currently in progress."
LATENCY_MS = "2000"
LEASE_S = "6"  # tests.live's ORCH_OPERATION_LEASE_S
SLOW_PREVIEW_S = 10


def created(client, name: str, **spec: object) -> dict:
    response = client.post("/api/v1/instances", json=instance_doc(name, **spec))
    assert response.status_code == 202, response.text
    op = wait_operation(client, response.json()["operation"]["id"])
    assert op["status"] == "succeeded", op
    return client.get(f"/api/v1/instances/{name}/stack").json()


def pulumi(live, *args: str) -> subprocess.CompletedProcess:
    """The CLI by hand in the service's project directory (the README's way)."""
    env = {**live.env, "PULUMI_BACKEND_URL": live.env["ORCH_PULUMI_BACKEND_URL"]}
    project = Path(live.env["ORCH_DATA_DIR"]) / "pulumi-project"
    return subprocess.run(
        [str(STANDIN_ROOT / "bin" / "pulumi"), "-C", str(project), *args],
        env=env, capture_output=True, text=True, timeout=120,
    )


def bookkeeping(live) -> Path:
    return Path(live.env["ORCH_PULUMI_BACKEND_URL"].removeprefix("file://")) / ".pulumi"


def checkpoint(live, stack: str) -> Path:
    return bookkeeping(live) / "stacks" / "orch" / f"{stack}.json"


def settings_file(live, stack: str) -> Path:
    return Path(live.env["ORCH_DATA_DIR"]) / "pulumi-project" / f"Pulumi.{stack}.yaml"


def database(live):
    client = pymongo.MongoClient(live.env["ORCH_MONGODB_URL"])
    return client, client.get_default_database()


def test_a_preview_changes_no_stack_config_backend_or_database(service):
    with service.client("alice") as client:
        stack = created(client, "untouched", machine_type="small")["stack"]
        mongo, db = database(service)
        try:
            before = {
                "settings": settings_file(service, stack).read_bytes(),
                "checkpoint": checkpoint(service, stack).read_bytes(),
                "backend files": sorted(map(str, bookkeeping(service).rglob("*"))),
                "instance": db.instances.find_one({"name": "untouched"}),
                "operations": list(db.operations.find({"target": "untouched"})),
            }
            response = client.post(
                "/api/v1/instances/untouched/preview", json={"spec": instance_doc("untouched", machine_type="medium")["spec"]}
            )
            assert response.status_code == 200, response.text
            assert response.json()["changes"].get("update") == 1, response.json()
            after = {
                "settings": settings_file(service, stack).read_bytes(),
                "checkpoint": checkpoint(service, stack).read_bytes(),
                "backend files": sorted(map(str, bookkeeping(service).rglob("*"))),
                "instance": db.instances.find_one({"name": "untouched"}),
                "operations": list(db.operations.find({"target": "untouched"})),
            }
            assert db.locks.find_one({"_id": {"$regex": "untouched"}}) is None, "the preview's lock is released"
        finally:
            mongo.close()
    assert after == before
    shown = pulumi(service, "config", "get", "orch:document", "--stack", stack)
    assert '"machine_type": "small"' in shown.stdout, "a `pulumi up` by hand applies the applied spec, not the previewed one"


def test_a_stack_removed_behind_the_service_is_404_on_preview_and_not_created_again(service):
    with service.client("alice") as client:
        stack = created(client, "vanished")["stack"]
        removed = pulumi(service, "stack", "rm", "--force", "--yes", "--stack", stack)
        assert removed.returncode == 0, removed.stderr

        response = client.post("/api/v1/instances/vanished/preview", json={"spec": instance_doc("vanished")["spec"]})
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == (
            f"instance 'vanished' has no stack '{stack}' (never provisioned, rolled back or removed): "
            "nothing to preview against"
        )
        assert not checkpoint(service, stack).exists(), "the preview created no stack"
        # The stack view of an instance without a stack is empty, as after a delete.
        assert client.get("/api/v1/instances/vanished/stack").json()["resources"] == []


def test_a_broken_backend_is_502_with_the_cli_message(service):
    with service.client("alice") as client:
        stack = created(client, "corrupted")["stack"]
        checkpoint(service, stack).write_text("{not json")

        inspected = client.get("/api/v1/instances/corrupted/stack")
        assert inspected.status_code == 502, inspected.text
        assert inspected.json()["detail"].startswith("pulumi failed: error: failed to load checkpoint:")
        previewed = client.post("/api/v1/instances/corrupted/preview", json={"spec": instance_doc("corrupted")["spec"]})
        assert previewed.status_code == 502, previewed.text
        assert "failed to load checkpoint" in previewed.json()["detail"]


def test_a_bootstrap_script_reaches_no_file_in_plaintext(service):
    started = time.time() - 1
    script = f"#!/bin/sh\necho {BOOTSTRAP_MARKER} > /tmp/booted\n"
    with service.client("alice") as client:
        stack = created(client, "scripted", bootstrap_script=script)["stack"]
    assert files_holding(REPO, BOOTSTRAP_MARKER, started) == [], "nothing under the repo (the service's cwd)"
    settings = settings_file(service, stack).read_text()
    assert BOOTSTRAP_MARKER not in settings and "orch:document:\n    secure: v1:" in settings, settings
    assert files_holding(bookkeeping(service), BOOTSTRAP_MARKER, started) == [], "nor the backend (history, checkpoint)"

    shown = pulumi(service, "config", "--stack", stack)
    assert shown.returncode == 0, shown.stderr
    # The CLI shows the project's own keys without their namespace.
    assert any(line.split() == ["document", "[secret]"] for line in shown.stdout.splitlines()), shown.stdout
    assert BOOTSTRAP_MARKER in pulumi(service, "config", "--stack", stack, "--show-secrets").stdout


@pytest.fixture
def wrapped_cli(tmp_path) -> tuple[Path, Path, Path]:
    """The stand-in behind a script that, for `preview`, answers as Pulumi Cloud does while another
    update runs when `conflict` exists, and takes SLOW_PREVIEW_S longer when `slow` exists."""
    root, conflict, slow = tmp_path / "cli", tmp_path / "conflict", tmp_path / "slow"
    (root / "bin").mkdir(parents=True)
    script = root / "bin" / "pulumi"
    script.write_text(
        "#!/usr/bin/env bash\n"
        "for arg in \"$@\"; do\n"
        "  case \"$arg\" in\n"
        "    -*) continue ;;\n"
        f"    preview) if [ -e '{conflict}' ]; then echo '{CLOUD_CONFLICT}' >&2; exit 255; fi\n"
        f"             if [ -e '{slow}' ]; then sleep {SLOW_PREVIEW_S}; fi; break ;;\n"
        "    *) break ;;\n"
        "  esac\n"
        "done\n"
        f"exec '{STANDIN_ROOT / 'bin' / 'pulumi'}' \"$@\"\n"
    )
    script.chmod(0o755)
    return root, conflict, slow


def test_a_busy_instance_or_stack_is_409_and_a_preview_holds_the_instance(tmp_path, mongo_url, wrapped_cli):
    root, flag, slow = wrapped_cli
    live = start_service(
        tmp_path, mongo_url,
        ORCH_PULUMI_COMMAND=str(root), PULUMI_STANDIN_LATENCY_MS=LATENCY_MS, ORCH_OPERATION_LEASE_S=LEASE_S,
    )
    try:
        with live.client("alice") as client:
            spec = {"spec": instance_doc("busy")["spec"]}
            op_id = client.post("/api/v1/instances", json=instance_doc("busy")).json()["operation"]["id"]
            deadline = time.monotonic() + 60
            while client.get(f"/api/v1/operations/{op_id}").json()["steps"] == [] and time.monotonic() < deadline:
                time.sleep(0.1)
            # The create's `pulumi up` holds the instance: a preview now would see a stack mid-update.
            during = client.post("/api/v1/instances/busy/preview", json=spec)
            assert during.status_code == 409, during.text
            assert during.json()["detail"] == "an operation is running on instance 'busy'; preview once it has finished"
            assert wait_operation(client, op_id)["status"] == "succeeded"

            flag.touch()  # another update holds the stack in the backend
            conflict = client.post("/api/v1/instances/busy/preview", json=spec)
            assert conflict.status_code == 409, conflict.text
            assert conflict.json()["detail"] == f"stack is locked by another update: {CLOUD_CONFLICT}"

            flag.unlink()
            assert client.post("/api/v1/instances/busy/preview", json=spec).status_code == 200

            # A preview longer than the lease keeps the instance: an update waits for it to end.
            slow.touch()
            outcome: list[int] = []
            previewing = threading.Thread(
                target=lambda: outcome.append(client.post("/api/v1/instances/busy/preview", json=spec).status_code)
            )
            previewing.start()
            time.sleep(1)  # the preview has taken the lock
            changed = {"spec": instance_doc("busy", machine_type="medium")["spec"]}
            update = client.patch("/api/v1/instances/busy", json=changed)
            assert update.status_code == 202, update.text
            update_id = update.json()["operation"]["id"]
            time.sleep(float(LEASE_S) + 2)  # past the lease the preview took
            assert client.get(f"/api/v1/operations/{update_id}").json()["status"] == "queued"
            previewing.join(timeout=60)
            assert outcome == [200]
            slow.unlink()
            assert wait_operation(client, update_id)["status"] == "succeeded"
    finally:
        live.stop()
