"""The service's stacks driven by hand with `pulumi` from the project directory, as the README shows.

The project directory here is a temp dir laid out like the repo root (Pulumi.yaml, and
stacks/ and .venv linked from the repo), so the stack config the service writes there
does not land in the checkout. `pulumi` is the stand-in, which runs the project's
program (stacks/__main__.py) as a local program, like the real CLI.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from tests.live import REPO, STANDIN_ROOT, instance_doc, start_service, wait_operation


def test_pulumi_by_hand_works_on_the_service_stacks(tmp_path, mongo_url):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "Pulumi.yaml", project / "Pulumi.yaml")
    (project / "stacks").symlink_to(REPO / "stacks")
    (project / ".venv").symlink_to(REPO / ".venv")
    live = start_service(tmp_path, mongo_url, ORCH_PULUMI_PROJECT_DIR=str(project))
    env = {**live.env, "PULUMI_BACKEND_URL": live.env["ORCH_PULUMI_BACKEND_URL"]}

    def pulumi(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(STANDIN_ROOT / "bin" / "pulumi"), *args, "--stack", "instance-alice.by-hand"],
            cwd=project, env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def last_update() -> dict:
        return json.loads(pulumi("stack", "history", "--json").stdout)[0]

    try:
        with live.client("alice") as client:
            created = client.post("/api/v1/instances", json=instance_doc("by-hand", "aws")).json()
            assert wait_operation(client, created["operation"]["id"])["status"] == "succeeded"
            instance = client.get("/api/v1/instances/by-hand").json()
            resources = {r["urn"] for r in client.get("/api/v1/instances/by-hand/stack").json()["resources"]}

        assert json.loads(pulumi("stack", "output", "--json").stdout) == instance["outputs"]
        exported = json.loads(pulumi("stack", "export").stdout)["deployment"]["resources"]
        assert {r["urn"] for r in exported if r["type"] != "pulumi:pulumi:Stack"} == resources

        # The project's program, reading the config the service wrote, declares the same stack.
        preview = pulumi("preview")
        assert "Previewing update (instance-alice.by-hand)" in preview.stdout
        pulumi("up", "--yes", "--skip-preview")
        changes = last_update()["resourceChanges"]
        assert set(changes) == {"same"} and changes["same"] == len(exported), changes
        assert last_update()["kind"] == "update"

        pulumi("refresh", "--yes", "--skip-preview")
        refreshed = last_update()
        assert refreshed["kind"] == "refresh" and set(refreshed["resourceChanges"]) == {"same"}, refreshed
    finally:
        live.stop()
