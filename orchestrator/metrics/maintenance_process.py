"""The metrics maintenance pass in a process of its own, which `orch serve` starts and stops.

A pass decodes, regroups and recompresses every report flushed since the last one (some
60,000 at 2,000 reports/s). Run on a thread of `orch serve`, it held the interpreter lock
from the HTTP loop: agent reports waited 100-560 ms for 1.5-2.5 s each pass (README,
performance). In its own interpreter it takes a core's time, not the service's turn.

The child reads its settings, the store's URL with its credential included, as one JSON
line on its standard input, so the credential is in no command line or environment.
It then holds that pipe open and stops at its end of file: when `orch serve` closes it,
and when `orch serve` dies however it dies. A child that exits on its own is started again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from orchestrator import db
from orchestrator.metrics.store import MAINTENANCE_INTERVAL_S, MetricsMaintenance

log = logging.getLogger("orch.metrics")

# A child that exited on its own is started again after this long (one that cannot start would exit again at once).
RESTART_AFTER_S = 30.0
# close(): the child finishes the store call it is in, then exits; past this it is killed.
STOP_WAIT_S = 15.0
# Where the `orchestrator` package is imported from, for a child of a process that was not installed.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class MaintenanceProcess:
    """Runs `python -m orchestrator.metrics.maintenance_process` while open, started again if it exits."""

    def __init__(self, store_url: str, raw_retention_s: int, rollup_retention_s: int, rollup_s: int, *,
                 interval_s: float = MAINTENANCE_INTERVAL_S, restart_after_s: float = RESTART_AFTER_S):
        self._config = json.dumps({
            "url": store_url, "raw_retention_s": raw_retention_s, "rollup_retention_s": rollup_retention_s,
            "rollup_s": rollup_s, "interval_s": interval_s,
        })
        self.restart_after_s = restart_after_s
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self.process = self._start()
        self._supervisor = threading.Thread(target=self._supervise, name="metrics-maintenance-supervisor",
                                            daemon=True)
        self._supervisor.start()

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(PACKAGE_ROOT), env.get("PYTHONPATH"))))
        process = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True,
        )
        process.stdin.write(self._config + "\n")
        process.stdin.flush()
        return process

    def _supervise(self) -> None:
        while True:
            code = self.process.wait()
            if self._closing.is_set():
                return
            log.error("metrics maintenance process exited with %s; starting it again in %.0f s",
                      code, self.restart_after_s)
            if self._closing.wait(self.restart_after_s):
                return
            with self._lock:
                if self._closing.is_set():
                    return
                self.process = self._start()

    def close(self) -> None:
        with self._lock:
            self._closing.set()
            process = self.process
        process.stdin.close()
        try:
            process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._supervisor.join(timeout=STOP_WAIT_S)


def main() -> int:
    # Ctrl-C in a terminal reaches the whole process group: `orch serve` stops this child by closing its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    line = sys.stdin.readline()
    if not line:
        return 0  # the parent went before it wrote the settings
    config = json.loads(line)
    db.connect_url(config["url"])
    maintenance = MetricsMaintenance(config["raw_retention_s"], config["rollup_retention_s"], config["rollup_s"],
                                     interval_s=config["interval_s"])
    sys.stdin.read()  # returns at end of file: the parent closed the pipe or died
    maintenance.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
