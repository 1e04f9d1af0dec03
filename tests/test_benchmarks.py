"""Every benchmark runs once at its small size, so none can rot; targets are not asserted here."""

from __future__ import annotations

import json
import math

from benchmarks.__main__ import SIZES, main


def test_every_benchmark_runs_and_gives_sane_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--size", "small", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    rows = result["rows"]
    assert rows and all(row["figure"] in printed for row in rows)
    for row in rows:
        assert math.isfinite(row["value"]) and row["value"] >= 0, row
        assert row["met"] in (True, False, None)
    raw = result["raw"]
    small = SIZES["small"]
    assert raw["listing"]["records"] == small["listing"]["records"]
    assert all(shape["errors"] == 0 and shape["requests"] > 0 for shape in raw["listing"]["shapes"].values())
    alone = raw["listing"]["store_alone"]
    assert alone.keys() == raw["listing"]["shapes"].keys()
    assert all(shape["errors"] == 0 and shape["requests"] == small["listing"]["requests"] for shape in alone.values())
    assert all("find" in shape["commands"] for shape in alone.values())
    # Every measured load's CPU by process, the service and the store busy in each.
    loads = [*raw["listing"]["shapes"].values(), raw["metrics_read"]["loaded"], raw["metrics_read"]["baseline"]]
    for load in loads:
        assert load["cpu_ms"].keys() == {"orch serve", "store", "load generator"}
        assert load["cpu_ms"]["orch serve"] > 0 and load["cpu_ms"]["store"] > 0
        assert load["mean_latency_floor_ms"] <= load["mean_ms"] * 1.5  # a floor, give or take the clock ticks
        assert load["busy"].keys() == load["cpu_ms"].keys() and 0 < load["busy"]["store"] <= load["cores"]
    assert raw["ingest"]["errors"] == 0 and raw["ingest"]["stored"] > 0
    assert raw["ingest"]["service_to_storage_rate"] > 0 and raw["ingest"]["bare_rate"] > 0
    assert 0 < raw["ingest"]["rss_mb"] < 10_000
    # orch serve's metrics maintenance process counts in its memory.
    assert len(raw["ingest"]["children_rss_mb"]) == 1
    assert raw["ingest"]["rss_mb"] == raw["ingest"]["serve_rss_mb"] + raw["ingest"]["children_rss_mb"][0]
    multi = raw["multiprocess"]
    assert multi["stored"] > 0 and multi["operations"] == 2 * small["multiprocess"]["operations"]
    for kind in ("create", "delete"):
        assert raw["provision"]["service"][f"{kind}_failed"] == 0
        assert raw["provision"]["service"][f"{kind}_s"] > 0 and raw["provision"]["direct"][f"{kind}_s"] > 0
        cpu = raw["provision"]["service"][f"{kind}_cpu_s"]
        assert cpu.keys() == {"orch serve", "store", "orch worker", "load generator"} and cpu["orch worker"] > 0
    metrics = raw["metrics_read"]
    for run, size in ((metrics["loaded"], "instances"), (metrics["baseline"], "baseline_instances")):
        assert run["instances"] == small["metrics_read"][size] and run["errors"] == 0
        assert run["samples"] == run["instances"] * small["metrics_read"]["hours"] * 3600 // run["interval_s"]
        assert run["samples_per_answer"] > 0 and run["bytes_per_instance_day"] > 0


def test_a_process_cpu_time_is_read_and_the_latency_floor_follows_from_it():
    import os
    import time

    from benchmarks.cpu import CpuMeter, cpu_figures, cpu_seconds, mean_latency_floor_ms

    before = cpu_seconds(os.getpid())
    with CpuMeter({}) as meter:
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:
            pass
    assert cpu_seconds(os.getpid()) - before >= 0.25
    assert 0.25 <= meter.used_s["load generator"] <= 1.0
    figures = cpu_figures(meter, requests=100, clients=10, seconds=0.5)
    assert figures["cpu_ms"]["load generator"] == meter.used_s["load generator"] * 10
    assert figures["busy"]["load generator"] == meter.used_s["load generator"] / 0.5
    assert mean_latency_floor_ms({"a": 3.0, "b": 1.0}, clients=20, cores=2) == 40.0


def test_a_process_cpu_time_counts_its_running_children_when_asked():
    """orch serve's CPU in the benchmarks includes its metrics maintenance process's."""
    import os
    import subprocess
    import sys

    from benchmarks.cpu import CpuMeter, child_pids, cpu_seconds

    # The child burns 0.4 s of CPU when told, says so, and waits for its end of input.
    burn = "import sys, time\nsys.stdin.readline()\nend = time.process_time() + 0.4\n" \
           "while time.process_time() < end: pass\nprint(flush=True)\nsys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.pid in child_pids(os.getpid())
        with CpuMeter({"parent": os.getpid()}, with_children=frozenset({"parent"})) as meter:
            child.stdin.write("go\n")
            child.stdin.flush()
            child.stdout.readline()
            alone, with_child = cpu_seconds(os.getpid()), cpu_seconds(os.getpid(), with_children=True)
    finally:
        child.communicate("")
    assert with_child - alone >= 0.35
    assert meter.used_s["parent"] >= 0.35 and meter.used_s["load generator"] < 0.35


def test_the_ingest_count_includes_the_reports_a_maintenance_pass_moved(mongo_db):
    """A pass moves flushed batches into buckets: the benchmarks' count of stored reports must not drop."""
    from benchmarks.ingest import stored_count
    from orchestrator.models import MetricBatch, utcnow
    from tests.test_metrics_store import flush, maintenance, sample

    hour = utcnow().replace(minute=0, second=0, microsecond=0)
    flush([(name, hour, sample(name, hour, 1.0)) for name in ("c1", "c2", "c3")])
    assert stored_count() == 3
    assert maintenance().run_pass()["moved_batches"] == 1
    assert MetricBatch.objects.count() == 0
    assert stored_count() == 3
