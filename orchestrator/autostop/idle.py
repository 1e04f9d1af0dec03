"""Whether an instance's reports show it idle: a pure function of the reports, the settings and the time.

An instance is idle for as long as a run of consecutive reports, ending with a fresh one, is
below the threshold for the chosen metric with no gap longer than `max_gap` between them.
Anything that leaves the run unknown (no report, a gap, a report without the figure) counts
as not idle, and says why in `warning`: autostop never stops an instance it cannot see.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    # The time of the earliest report of the current idle run; None while busy or unknown.
    idle_since: dt.datetime | None
    # Why reports were not counted as idle, when it is not simply that the instance is busy.
    warning: str | None = None

    def idle_for(self, now: dt.datetime) -> dt.timedelta:
        return now - self.idle_since if self.idle_since is not None else dt.timedelta(0)


def span(delta: dt.timedelta) -> str:
    """A duration as people read it: '45 s', '12 min', '2.5 h'."""
    seconds = delta.total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _idle(report: dict, metric: str, below: float) -> tuple[bool, str | None]:
    """(idle, why it cannot tell) for one report."""
    if metric in ("cpu", "any") and not report.get("cpu_percent", 100.0) < below:
        return False, None
    if metric == "cpu":
        return True, None
    gpus = report.get("gpus") or []
    if not gpus and metric == "gpu":
        return False, "the reports carry no GPU figures: not counted as idle"
    for gpu in gpus:
        utilization = gpu.get("utilization_percent")
        if utilization is None:
            return False, f"GPU {gpu.get('index')} reports no utilization: not counted as idle"
        if not utilization < below:
            return False, None
    return True, None


def assess(
    reports: list[tuple[dt.datetime, dict]],
    *,
    metric: str,
    below_percent: float,
    now: dt.datetime,
    window: dt.timedelta,
    max_gap: dt.timedelta,
    running_since: dt.datetime | None = None,
) -> Finding:
    """The current idle run of `reports` (time, report), oldest first, read back to now - window - max_gap.

    `running_since` is when the machine last came up (None when not known): no report is missed
    before its agent's first one is due.
    """
    if not reports:
        up_for = now - running_since if running_since is not None else None
        if up_for is not None and up_for <= max_gap:
            return Finding(None)  # just came up: its agent's first report is not due yet
        if up_for is not None and up_for < window:
            return Finding(None, f"no report in the {span(up_for)} since it came up: not counted as idle")
        return Finding(None, f"no report for over {span(window)}: not counted as idle")
    silent = now - reports[-1][0]
    if silent > max_gap:
        return Finding(None, f"no report for {span(silent)}: not counted as idle")
    idle_since = None
    warning = None
    for position in range(len(reports) - 1, -1, -1):
        ts, report = reports[position]
        idle, unknown = _idle(report, metric, below_percent)
        if not idle:
            warning = unknown
            break
        if position + 1 < len(reports) and reports[position + 1][0] - ts > max_gap:
            gap_end = reports[position + 1][0]
            if gap_end > now - window:  # a gap inside the window is what keeps it from counting
                warning = (f"no report from {ts.isoformat(timespec='seconds')}Z to "
                           f"{gap_end.isoformat(timespec='seconds')}Z ({span(gap_end - ts)}): not counted as idle")
            break
        idle_since = ts
    return Finding(idle_since, warning)
