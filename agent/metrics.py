"""Host metrics for one report: CPU, memory, disks, GPUs."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
import time
from typing import Dict, List, Optional, Tuple

from . import __version__

# Filesystems that are not storage a user would fill: kernel interfaces and memory-backed mounts.
PSEUDO_FILESYSTEMS = frozenset(
    """autofs binfmt_misc bpf cgroup cgroup2 configfs debugfs devpts devtmpfs efivarfs fusectl
    hugetlbfs mqueue nsfs proc pstore ramfs rpc_pipefs securityfs selinuxfs squashfs sysfs
    tmpfs tracefs""".split()
)
NVIDIA_SMI_QUERY = [
    "--query-gpu=index,name,utilization.gpu,memory.total,memory.used,temperature.gpu",
    "--format=csv,noheader,nounits",
]
NVIDIA_SMI_TIMEOUT_S = 15

log = logging.getLogger(__name__)


class CpuSampler:
    """CPU busy percentage from /proc/stat deltas between consecutive calls."""

    def __init__(self, stat_path: str = "/proc/stat") -> None:
        self._stat_path = stat_path
        self._previous: Optional[Tuple[int, int]] = None

    def _read(self) -> Tuple[int, int]:
        with open(self._stat_path) as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    def percent(self) -> float:
        if self._previous is None:
            # First call has nothing to compare with: measure over a short window.
            self._previous = self._read()
            time.sleep(0.25)
        total, idle = self._read()
        total_delta = total - self._previous[0]
        idle_delta = idle - self._previous[1]
        self._previous = (total, idle)
        if total_delta <= 0:
            return 0.0
        return round(100.0 * (total_delta - idle_delta) / total_delta, 1)


def uptime_s() -> float:
    with open("/proc/uptime") as uptime:
        return float(uptime.read().split()[0])


def memory() -> Dict[str, int]:
    values = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    total = values["MemTotal"]
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return {"total": total, "used": total - available}


def _unescape_mount_path(path: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(escaped, plain)
    return path


def disks(mounts_path: str = "/proc/mounts") -> List[Dict[str, object]]:
    by_mount: Dict[str, Dict[str, object]] = {}
    with open(mounts_path) as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3 or fields[2] in PSEUDO_FILESYSTEMS:
                continue
            mount = _unescape_mount_path(fields[1])
            try:
                stats = os.statvfs(mount)
            except OSError:
                continue  # unmounted since we read the table, or not ours to look at
            if stats.f_blocks == 0:
                continue
            by_mount[mount] = {
                "mount": mount,
                "total": stats.f_blocks * stats.f_frsize,
                "used": (stats.f_blocks - stats.f_bfree) * stats.f_frsize,
            }
    return sorted(by_mount.values(), key=lambda disk: str(disk["mount"]))


def _number(text: str) -> Optional[float]:
    """nvidia-smi writes '[N/A]' or '[Not Supported]' for values a GPU does not report."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else value


def parse_nvidia_smi(output: str) -> List[Dict[str, object]]:
    gpus = []
    for line in output.splitlines():
        if not line.strip():
            continue
        index, name, utilization, memory_total, memory_used, temperature = (
            field.strip() for field in line.split(",")
        )
        gpus.append(
            {
                "index": int(index),
                "name": name,
                "utilization_percent": _number(utilization),
                # nvidia-smi reports MiB; the report uses bytes like memory and disk.
                "memory_total": _mib_to_bytes(_number(memory_total)),
                "memory_used": _mib_to_bytes(_number(memory_used)),
                "temperature_c": _number(temperature),
            }
        )
    return gpus


def _mib_to_bytes(mib: Optional[float]) -> Optional[int]:
    return None if mib is None else int(mib * 1024 * 1024)


def gpus() -> List[Dict[str, object]]:
    """GPUs as nvidia-smi sees them; a host without nvidia-smi has none.

    A failing nvidia-smi (driver not loaded, GPU fallen off the bus) is logged and
    reported as no GPUs, so the rest of the report still reaches the service.
    """
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return []
    try:
        result = subprocess.run(
            [nvidia_smi, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("nvidia-smi failed: %s", error)
        return []
    if result.returncode != 0:
        log.warning("nvidia-smi exited %d: %s", result.returncode, result.stderr.strip()[:200])
        return []
    try:
        return parse_nvidia_smi(result.stdout)
    except ValueError as error:
        log.warning("cannot parse nvidia-smi output %r: %s", result.stdout[:200], error)
        return []


def collect_report(instance: str, cpu: CpuSampler) -> Dict[str, object]:
    return {
        "instance": instance,
        "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "uptime_s": uptime_s(),
        "load": [round(value, 2) for value in os.getloadavg()],
        "cpu_percent": cpu.percent(),
        "memory": memory(),
        "disk": disks(),
        "gpus": gpus(),
        "agent_version": __version__,
    }
