"""The metrics maintenance pass runs in a child process of `orch serve`: it works, stops with its parent
however the parent ends, is started again if it exits, and keeps the store's credential off its
command line and environment."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.db import url_with_database
from orchestrator.metrics.maintenance_process import MaintenanceProcess
from orchestrator.models import MetricBatch, MetricBucket, utcnow
from tests.test_metrics_store import flush, sample

REPO = Path(__file__).resolve().parent.parent
RETENTION = {"raw_retention_s": 86400, "rollup_retention_s": 30 * 86400, "rollup_s": 300}


def wait_for(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def this_hour() -> dt.datetime:
    """Samples of the current hour: a pass neither rolls up nor expires their bucket."""
    return utcnow().replace(minute=0, second=0, microsecond=0)


def running(pid: int) -> bool:
    """pid is a live process (a zombie that nobody reaped yet has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_pass_runs_in_a_child_that_moves_the_batches_and_stops_when_closed(mongo_db, mongo_url):
    hour = this_hour()
    flush([(name, hour, sample(name, hour, 1.0)) for name in ("a1", "a2")])
    maintenance = MaintenanceProcess(url_with_database(mongo_url, mongo_db), **RETENTION, interval_s=0.2)
    try:
        child = maintenance.process
        assert child.pid != os.getpid() and running(child.pid)
        wait_for(lambda: MetricBatch.objects.count() == 0, what="the child's pass moved the batch")
        assert sorted(row["instance"] for row in MetricBucket._get_collection().find({}, {"instance": True})) == ["a1", "a2"]
        # The credential travelled on the pipe only.
        password = urlparse(mongo_url).password
        assert password not in Path(f"/proc/{child.pid}/cmdline").read_text()
        assert password not in Path(f"/proc/{child.pid}/environ").read_bytes().decode(errors="replace")
        # Ctrl-C in a terminal reaches the child too: only `orch serve` stops it.
        os.kill(child.pid, signal.SIGINT)
        time.sleep(0.5)
        assert running(child.pid)
    finally:
        maintenance.close()
    assert child.returncode == 0


def test_a_child_that_exits_on_its_own_is_started_again(mongo_db, mongo_url):
    maintenance = MaintenanceProcess(url_with_database(mongo_url, mongo_db), **RETENTION, interval_s=0.2,
                                     restart_after_s=0.2)
    try:
        first = maintenance.process
        first.kill()
        second = wait_for(lambda: maintenance.process if maintenance.process is not first else None,
                          what="a new child")
        assert running(second.pid)
        hour = this_hour()
        flush([("b1", hour, sample("b1", hour, 2.0))])
        wait_for(lambda: MetricBatch.objects.count() == 0, what="the new child's pass moved the batch")
    finally:
        maintenance.close()
    assert not running(second.pid)


def test_the_child_stops_when_its_parent_is_killed(mongo_db, mongo_url, tmp_path):
    """`orch serve` killed with SIGKILL runs no shutdown: the child sees its pipe end and exits."""
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, threading\n"
         "from orchestrator.metrics.maintenance_process import MaintenanceProcess\n"
         "m = MaintenanceProcess(sys.argv[1], 86400, 2592000, 300)\n"
         "print(m.process.pid, flush=True)\n"
         "threading.Event().wait()\n",
         url_with_database(mongo_url, mongo_db)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        child_pid = int(parent.stdout.readline())
        assert running(child_pid)
        parent.kill()
        parent.wait(timeout=10)
        wait_for(lambda: not running(child_pid), timeout=15, what="the orphaned child exited")
    finally:
        parent.kill()
        parent.wait(timeout=10)
