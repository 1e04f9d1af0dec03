"""Posts one agent report for an instance, as its agent would (used by the page's end-to-end test).

`python -m tests.web_report URL OWNER INSTANCE CPU_PERCENT`, run with the service's settings in the
environment: it mints the instance's agent token with `orch token create --instance` and posts a
report carrying that CPU figure and one GPU.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import jwt

from tests.live import ORCH, REPO


def main(url: str, owner: str, instance: str, cpu: float) -> None:
    minted = subprocess.run(
        [ORCH, "token", "create", "--instance", instance, "--owner", owner],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
    )
    token = minted.stdout.strip().splitlines()[-1]
    identity = jwt.decode(token, options={"verify_signature": False})["sub"]
    report = {
        "instance": identity,
        "ts": time.time(),
        "uptime_s": 60.0,
        "load": [0.1, 0.2, 0.3],
        "cpu_percent": cpu,
        "memory": {"total": 8_000_000_000, "used": 2_000_000_000},
        "disk": [{"mount": "/", "total": 100_000_000_000, "used": 10_000_000_000}],
        "gpus": [{"index": 0, "name": "NVIDIA A10G", "utilization_percent": 40, "memory_total": 23028,
                  "memory_used": 1024, "temperature_c": 51}],
        "agent_version": "web-e2e",
    }
    answer = httpx.post(f"{url}/api/v1/agent/report", json=report, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    answer.raise_for_status()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
