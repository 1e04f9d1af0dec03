"""How the CLI prints values that Go formats (shared by the commands and the operations)."""

from __future__ import annotations


def go_duration(seconds: int) -> str:
    """A whole number of seconds as Go's time.Duration prints it (`0s`, `42s`, `1m5s`, `2h0m3s`)."""
    hours, rest = divmod(max(int(seconds), 0), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
