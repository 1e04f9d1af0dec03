"""Posts an agent's backlog of reports for an instance, as its agent would (used by the page's end-to-end test).

`python -m tests.web_report URL OWNER INSTANCE CPU_PERCENT`, run with the service's settings in the
environment: it mints the instance's agent token with `orch token create --instance` and posts, in one
request, REPORTS reports spaced REPORT_SPACING_S apart up to now (so the page's charts draw lines, not a
dot); their CPU, GPU and memory figures wander around fixed levels, and the newest carries that CPU figure.
"""

from __future__ import annotations

import datetime as dt
import math
import subprocess
import sys
import time

import httpx
import jwt

from tests.live import ORCH, REPO

REPORTS = 24
REPORT_SPACING_S = 120  # 24 reports over the last 46 minutes: inside the page's one-hour window
MEMORY_TOTAL = 8_000_000_000


def report(identity: str, ts: float, cpu: float, gpu: float, memory_fraction: float) -> dict:
    return {
        "instance": identity,
        "ts": dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),  # as agent/metrics.py
        "uptime_s": 3600.0,
        "load": [0.1, 0.2, 0.3],
        "cpu_percent": cpu,
        "memory": {"total": MEMORY_TOTAL, "used": int(MEMORY_TOTAL * memory_fraction)},
        "disk": [{"mount": "/", "total": 100_000_000_000, "used": 10_000_000_000}],
        "gpus": [{"index": 0, "name": "NVIDIA A10G", "utilization_percent": gpu, "memory_total": 23028,
                  "memory_used": 1024, "temperature_c": 51}],
        "agent_version": "web-e2e",
    }


def main(url: str, owner: str, instance: str, cpu: float) -> None:
    minted = subprocess.run(
        [ORCH, "token", "create", "--instance", instance, "--owner", owner],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
    )
    token = minted.stdout.strip().splitlines()[-1]
    identity = jwt.decode(token, options={"verify_signature": False})["sub"]
    now = time.time()
    reports = []
    for step in range(REPORTS):
        age = (REPORTS - 1 - step) * REPORT_SPACING_S
        wave = math.sin(step / 3)
        step_cpu = cpu if age == 0 else min(100.0, max(0.0, cpu + 20 * wave))
        reports.append(report(identity, now - age, round(step_cpu, 1), round(40 + 25 * math.cos(step / 4), 1), 0.25 + 0.05 * wave))
    answer = httpx.post(f"{url}/api/v1/agent/report", json={"reports": reports}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    answer.raise_for_status()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
