"""A light HTTP/1.1 keep-alive load generator (asyncio streams, prebuilt requests).

Light on CPU on purpose: the service under test shares this machine's cores.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.latencies_ms) if self.latencies_ms else float("nan")

    def line(self, label: str, unit: str = "requests") -> str:
        return (
            f"{label}: {self.requests} {unit} in {self.seconds:.2f} s = {self.rate:,.0f}/s; "
            f"p50 {self.percentile(50):.1f} ms, p99 {self.percentile(99):.1f} ms, "
            f"mean {self.mean:.1f} ms; errors {self.errors}"
        )


def build_request(method: str, host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    if length:
        await reader.readexactly(length)
    return status


async def _connection(
    host, port, next_request: Callable[[], Awaitable[tuple[bytes, float] | None]], ok: set[int], result: LoadResult
):
    """Send requests over one keep-alive connection until `next_request` gives None.

    It gives (request, time its latency counts from).
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (item := await next_request()) is not None:
            request, counted_from = item
            writer.write(request)
            status = await _read_response(reader)
            result.latencies_ms.append((time.perf_counter() - counted_from) * 1000)
            result.requests += 1
            if status not in ok:
                result.errors += 1
    finally:
        writer.close()


def run_load(
    host: str, port: int, requests: list[bytes], concurrency: int, ok: set[int] = frozenset({200, 201, 202})
) -> LoadResult:
    """Send every request once over `concurrency` keep-alive connections; time the whole run."""
    queue = iter(requests)
    result = LoadResult(0, 0, 0.0, [])

    async def next_request() -> tuple[bytes, float] | None:
        request = next(queue, None)
        return None if request is None else (request, time.perf_counter())

    async def main() -> None:
        started = time.perf_counter()
        await asyncio.gather(*(_connection(host, port, next_request, set(ok), result) for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started

    asyncio.run(main())
    return result


def run_at_rate(
    host: str, port: int, requests: list[bytes], rate: float, connections: int,
    ok: set[int] = frozenset({200, 201, 202}),
) -> LoadResult:
    """Send the requests at a fixed arrival rate (open loop) over a pool of keep-alive connections.

    Each latency counts from the request's scheduled send time, so time spent waiting for
    a free connection while the service lags is part of it (no coordinated omission).
    """
    result = LoadResult(0, 0, 0.0, [])

    async def main() -> None:
        pending: asyncio.Queue = asyncio.Queue()
        workers = [
            asyncio.create_task(_connection(host, port, pending.get, set(ok), result)) for _ in range(connections)
        ]
        started = time.perf_counter()
        for index, request in enumerate(requests):
            scheduled = started + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.put_nowait((request, scheduled))
        for _ in workers:
            pending.put_nowait(None)
        await asyncio.gather(*workers)
        result.seconds = time.perf_counter() - started

    asyncio.run(main())
    return result
