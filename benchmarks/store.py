"""The embedded store in a process of its own, as `orch serve` runs it, for the benchmarks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 10


def start_store(sqlite_path: Path) -> tuple[subprocess.Popen, str]:
    """mongoeco's wire server on `sqlite_path`: its process and its URL (the first line it prints)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.embedded_store", "--path", str(sqlite_path)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    return process, process.stdout.readline().strip()


def stop_store(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=STOP_TIMEOUT_S)
