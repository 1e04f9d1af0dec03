"""Schemathesis over the live OpenAPI document of a real service (issue 11).

`orch serve` (with the Pulumi stand-in) is probed through its own /schema with every
check schemathesis has, all phases (examples, coverage, fuzzing, stateful), a fixed
seed and a bounded number of cases per operation: the service must answer every case
with a documented status, a body matching the documented schema, and never a 5xx.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.live import instance_doc, start_service, wait_operation

SCHEMATHESIS = str(Path(sys.executable).parent / "st")
SEED = 20261130
MAX_EXAMPLES = 10  # per operation and phase: the run takes about a minute on two slow cores
RUN_TIMEOUT_S = 150
# A schema cannot say which regions, machine types or keys exist, so a document valid by
# the schema may be refused with the service's 422 naming the field; every other
# expectation of positive_data_acceptance stands.
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "404", "409", "422"]

[parameters]
"path.name" = "{name}"
"path.op_id" = "{op_id}"
"""


def test_schemathesis_finds_no_server_error_undocumented_status_or_schema_violation(tmp_path, mongo_url):
    live = start_service(tmp_path / "service", mongo_url)
    try:
        # A real instance and operation for the routes that take a name or an id, so
        # their cases reach the service's logic (and its response bodies), not only 404s.
        with live.client("alice") as client:
            created = client.post("/api/v1/instances", json=instance_doc("fuzzed-box"))
            assert created.status_code == 202, created.text
            op_id = created.json()["operation"]["id"]
            assert wait_operation(client, op_id)["status"] == "succeeded"
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG.format(name="fuzzed-box", op_id=op_id))
        report_path = tmp_path / "schemathesis.json"
        run = subprocess.run(
            [
                SCHEMATHESIS, "--config-file", str(config), "run", f"{live.url}/schema/openapi.json",
                "--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
                "-H", f"Authorization: Bearer {live.token_for('alice')}",
                "--report", "json", "--report-json-path", str(report_path), "--no-color",
            ],
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path,
        )
        output = run.stdout[-12000:] + run.stderr[-4000:]
        report = json.loads(report_path.read_text())
        failures = {failure["title"]: failure["operations"] for failure in report["failures"]}
        assert failures == {}, output
        assert report["errors"] == [], output
        assert report["operations"]["tested"] == report["operations"]["total"] >= 17, output
        assert report["test_cases"]["generated"] > 0 and run.returncode == 0, output
        assert "Traceback" not in live.logs(), live.logs()[-8000:]
    finally:
        live.stop()
