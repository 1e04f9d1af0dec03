"""The embedded MongoDB-wire-compatible store (mongoeco over SQLite).

Used when ORCH_MONGODB_URL is unset: pymongo and mongoengine reach it over a
real TCP connection, exactly as they would reach a MongoDB server.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from pathlib import Path


class EmbeddedStore:
    """Runs mongoeco's wire server on its own event loop in a daemon thread."""

    def __init__(self, sqlite_path: Path, host: str = "127.0.0.1", port: int = 0):
        self.sqlite_path = Path(sqlite_path)
        self.host = host
        self.port = port
        self.url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 20.0) -> str:
        self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="embedded-store", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("embedded store did not start in time")
        if self._error is not None:
            raise RuntimeError(f"embedded store failed to start: {self._error}") from self._error
        assert self.url is not None
        return self.url

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported to start() through _error
            self._error = error
            self._ready.set()

    async def _serve(self) -> None:
        from mongoeco.engines.sqlite import SQLiteEngine
        from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        engine = SQLiteEngine(str(self.sqlite_path), executor_workers=1)
        proxy = AsyncMongoEcoProxyServer(engine=engine, host=self.host, port=self.port)
        address = await proxy.start()
        self.port = address.port
        self.url = f"mongodb://{address.host}:{address.port}/"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await proxy.close()


def main() -> None:
    """Run the store as its own process (tests share one between processes)."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.embedded_store")
    parser.add_argument("--path", required=True, help="SQLite file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    store = EmbeddedStore(Path(args.path), args.host, args.port)
    url = store.start()
    print(url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        store.stop()


if __name__ == "__main__":
    main()
