"""The store's own share of a list page: the commands one GET /instances sends it, sent straight.

`record_page_commands` runs in this process what the list handler runs (the service's
`list_instances`, then the page's operations) against the store, and keeps each command as
pymongo's command monitoring saw it. `replay` sends those commands again from `clients`
threads, one page after another, with no HTTP and no service code: its latency is what the
store alone takes to answer a page, a floor under the service's own on the same machine.
"""

from __future__ import annotations

import threading
import time

import mongoengine
from pymongo import MongoClient, monitoring
from pymongo.errors import PyMongoError

from benchmarks.loadgen import LoadResult
from orchestrator.auth import Principal
from orchestrator.services import Orchestrator

# Per-connection fields pymongo adds to each command; a replay gets its own.
SESSION_FIELDS = ("lsid", "$db", "$clusterTime", "$readPreference", "txnNumber")


class _Recorder(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[tuple[str, dict]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = {key: value for key, value in event.command.items() if key not in SESSION_FIELDS}
        self.commands.append((event.database_name, command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def record_page_commands(mongo_url: str, database: str, user: str, params: dict) -> list[tuple[str, dict]]:
    """(database, command) for each command the list handler sends for `params` (its query parameters)."""
    recorder = _Recorder()
    mongoengine.connect(db=database, host=mongo_url, alias="default", uuidRepresentation="standard",
                        tz_aware=False, event_listeners=[recorder])
    orch = Orchestrator(settings=None, engine=None, dispatch=lambda op_id: True)

    def list_page() -> None:
        page = orch.list_instances(Principal(user, "user"), **params)
        Orchestrator.operations_by_id([row.operation_id for row in page.items])

    try:
        list_page()  # the first use of a document class also sends its indexes, once per process
        recorder.commands.clear()
        list_page()
        return list(recorder.commands)
    finally:
        mongoengine.disconnect(alias="default")


def _send_page(client: MongoClient, commands: list[tuple[str, dict]]) -> None:
    for database, command in commands:
        answer = client[database].command(command)
        cursor = answer.get("cursor") or {}
        if cursor.get("id"):  # a batch left open on the store: closed, as the driver would
            client[database].command({"killCursors": cursor["ns"].split(".", 1)[1], "cursors": [cursor["id"]]})


def replay(mongo_url: str, commands: list[tuple[str, dict]], clients: int, requests: int) -> LoadResult:
    """`requests` pages of `commands` from `clients` threads at once, each sending its next page when
    the last is answered (as the HTTP load generator's connections do)."""
    latencies: list[float] = []
    errors = 0
    remaining = iter(range(requests))
    lock = threading.Lock()
    with MongoClient(mongo_url, maxPoolSize=clients, uuidRepresentation="standard") as client:
        _send_page(client, commands)  # connected before the clock starts

        def page_after_page() -> None:
            nonlocal errors
            while True:
                with lock:
                    if next(remaining, None) is None:
                        return
                started = time.perf_counter()
                try:
                    _send_page(client, commands)
                    failed = False
                except PyMongoError:  # counted and timed, as an HTTP error answer is
                    failed = True
                with lock:
                    latencies.append((time.perf_counter() - started) * 1000)
                    errors += failed

        threads = [threading.Thread(target=page_after_page) for _ in range(clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - began
    return LoadResult(requests=len(latencies), errors=errors, seconds=seconds, latencies_ms=latencies)
