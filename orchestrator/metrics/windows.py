"""The `window` of GET /instances/{name}/metrics: the most recent span of samples to read."""

from __future__ import annotations

import datetime as dt

WINDOWS: dict[str, dt.timedelta] = {
    "1h": dt.timedelta(hours=1),
    "24h": dt.timedelta(hours=24),
    "7d": dt.timedelta(days=7),
    "30d": dt.timedelta(days=30),
}
# Windows longer than the raw samples' default retention read the rollups (min/avg/max per slot).
ROLLUP_WINDOWS = frozenset({"7d", "30d"})


def window_since(window: str | None, since: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    """The earliest sample time to read: the later of `since` and `now - window`."""
    if window is None:
        return since
    start = now - WINDOWS[window]
    return start if since is None else max(since, start)
