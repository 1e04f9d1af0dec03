"""The service's stacks driven by hand with `pulumi` in the service's project directory, as the README shows.

The project directory is `<data dir>/pulumi-project`: a Pulumi.yaml the service writes
(its `main` and virtualenv pointing back at the repo) and the stacks' settings files.
`pulumi` is the stand-in, which runs the project's program (stacks/__main__.py) as a
local program, like the real CLI; `-C DIR` is the CLI's `--cwd`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.live import STANDIN_ROOT, instance_doc, start_service, wait_operation


def test_pulumi_by_hand_works_on_the_service_stacks(tmp_path, mongo_url):
    live = start_service(tmp_path, mongo_url)
    project = Path(live.env["ORCH_DATA_DIR"]) / "pulumi-project"
    env = {**live.env, "PULUMI_BACKEND_URL": live.env["ORCH_PULUMI_BACKEND_URL"]}
    stack: list[str] = []

    def pulumi(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(STANDIN_ROOT / "bin" / "pulumi"), "-C", str(project), *args, "--stack", stack[0]],
            env=env, capture_output=True, text=True, timeout=120,
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
            inspected = client.get("/api/v1/instances/by-hand/stack").json()
            resources = {r["urn"] for r in inspected["resources"]}
            stack.append(inspected["stack"])
        assert stack[0] == "instance-alice.by-hand"  # the owner is part of the stack name

        assert json.loads(pulumi("stack", "output", "--json").stdout) == instance["outputs"]
        exported = json.loads(pulumi("stack", "export").stdout)["deployment"]["resources"]
        assert {r["urn"] for r in exported if r["type"] != "pulumi:pulumi:Stack"} == resources

        # The project's program, reading the config the service wrote, declares the same stack.
        preview = pulumi("preview")
        assert f"Previewing update ({stack[0]})" in preview.stdout
        pulumi("up", "--yes", "--skip-preview")
        changes = last_update()["resourceChanges"]
        assert set(changes) == {"same"} and changes["same"] == len(exported), changes
        assert last_update()["kind"] == "update"

        pulumi("refresh", "--yes", "--skip-preview")
        refreshed = last_update()
        assert refreshed["kind"] == "refresh" and set(refreshed["resourceChanges"]) == {"same"}, refreshed
    finally:
        live.stop()
