"""What each process of a benchmark spends on the CPU per request, and the latency that spending allows.

Each process's CPU time (user + system, all its threads) is read from /proc/<pid>/stat (Linux)
before and after a load. With `clients` clients that each send their next request when the last
is answered, the mean latency is clients / throughput (Little's law), and `cores` cores run at
most cores / (CPU seconds per request, all processes together) requests a second. So:

    mean latency >= clients x (CPU per request, all processes) / cores

a floor no scheduling can get under; a p99 is above the mean. Work the benchmark's processes
leave to others (the kernel's network stack in softirq, other programs) only raises the real figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOAD_GENERATOR = "load generator"


def child_pids(pid: int) -> list[int]:
    """The processes pid started (from any of its threads) that are still running."""
    return [int(child) for task in os.scandir(f"/proc/{pid}/task")
            for child in open(f"{task.path}/children").read().split()]


def cpu_seconds(pid: int, *, with_children: bool = False) -> float:
    """The CPU time process `pid` has used so far (utime + stime: fields 14 and 15 of /proc/<pid>/stat);
    with_children, that of its running child processes too (orch serve's metrics maintenance process)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) is in parentheses and may hold spaces: split after it.
        fields = stat.read().rsplit(")", 1)[1].split()
    used = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    if with_children:
        used += sum(cpu_seconds(child, with_children=True) for child in child_pids(pid))
    return used


@dataclass
class CpuMeter:
    """CPU time per process over a `with` block; this process counts as the load generator.

    The processes named in `with_children` count with their running child processes.
    """

    processes: dict[str, int]
    with_children: frozenset[str] = frozenset({"orch serve"})
    used_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.processes = {**self.processes, LOAD_GENERATOR: os.getpid()}

    def __enter__(self) -> CpuMeter:
        self._started = self._read()
        return self

    def __exit__(self, *exc_info) -> None:
        ended = self._read()
        self.used_s = {name: ended[name] - self._started[name] for name in self.processes}

    def _read(self) -> dict[str, float]:
        return {name: cpu_seconds(pid, with_children=name in self.with_children)
                for name, pid in self.processes.items()}

    def per_request_ms(self, requests: int) -> dict[str, float]:
        return {name: used / requests * 1000 for name, used in self.used_s.items()}


def mean_latency_floor_ms(cpu_ms: dict[str, float], clients: int, cores: int) -> float:
    """The least mean latency `clients` closed-loop clients can see when each request costs `cpu_ms` in all."""
    return clients * sum(cpu_ms.values()) / cores


def cpu_figures(meter: CpuMeter, requests: int, clients: int, seconds: float) -> dict:
    """A load of `requests` over `seconds`: its CPU per request by process, their sum, the mean latency
    floor they set on this machine, and how busy each process was (CPU seconds a second: 1.0 is one
    core all the time, as much as a process whose Python holds one interpreter lock gets)."""
    per_request = meter.per_request_ms(requests)
    cores = len(os.sched_getaffinity(0))  # the cores this process (and the ones it started) may run on
    return {"cpu_ms": per_request, "cpu_ms_total": sum(per_request.values()), "cores": cores,
            "mean_latency_floor_ms": mean_latency_floor_ms(per_request, clients, cores),
            "busy": {name: used / seconds for name, used in meter.used_s.items()}}


def _by_process(figures: dict, digits: int) -> tuple[str, str]:
    """`cpu_figures`' CPU per request ("a 1.0 + b 2.0") and busy shares ("a 0.10, b 0.20") as text."""
    parts = " + ".join(f"{name} {ms:.{digits}f}" for name, ms in figures["cpu_ms"].items())
    busy = ", ".join(f"{name} {share:.2f}" for name, share in figures["busy"].items())
    return parts, busy


def cpu_line(figures: dict) -> str:
    """`cpu_figures`' result (with the load's mean latency, `mean_ms`) as one line."""
    parts, busy = _by_process(figures, 2)
    return (f"CPU per request: {parts} = {figures['cpu_ms_total']:.2f} ms; on {figures['cores']} cores a mean latency "
            f"of at least {figures['mean_latency_floor_ms']:.1f} ms (measured: {figures['mean_ms']:.1f} ms); "
            f"cores busy: {busy}")


def floor_row_text(figures: dict, clients: int, what: str) -> str:
    """The summary table's words for a load's CPU figures (its value: the mean latency floor)."""
    parts, busy = _by_process(figures, 1)
    return (f"the least mean latency the CPU it used allows ({parts} = {figures['cpu_ms_total']:.1f} ms a {what}, "
            f"{clients} clients, {figures['cores']} cores; measured mean {figures['mean_ms']:.1f} ms; cores busy: "
            f"{busy}; reported)")
