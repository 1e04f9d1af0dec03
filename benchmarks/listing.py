"""GET /instances over many instance records in the embedded store, concurrent clients.

Seeds `records` instances (the measured user owns `user_share` of them, the rest spread
over other users, a third of each user's deleted), then measures, with `clients`
keep-alive connections at once: the user's first page of 50, the same with a label and a
status filter, and the page after a cursor `deep` rows into the user's listing. Then, with the
service stopped, the same pages' store commands sent straight to the store from as many threads
(the store's own share of a page), and a bare Litestar endpoint answering the first page's bytes.

    .venv/bin/python -m benchmarks.listing [--records 10000] [--clients 20] [--requests 400]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx

from benchmarks.cpu import CpuMeter, cpu_figures, cpu_line
from benchmarks.loadgen import LoadResult, build_request, run_load
from benchmarks.store import start_store, stop_store
from benchmarks.store_floor import record_page_commands, replay
from orchestrator.db import url_with_database
from orchestrator.models import Instance, claim_key
from tests.live import free_port, start_service

REPO = Path(__file__).resolve().parent.parent
LIST_DB = "orch_list_bench"
USER = "bench-user"
OTHER_USERS = 100
BASE_TIME = dt.datetime(2025, 1, 1)
PAGE = 50


def _records(records: int, user_share: float) -> list[dict]:
    mine = int(records * user_share)
    rows = []
    for i in range(records):
        owner = USER if i < mine else f"user-{i % OTHER_USERS}"
        deleted = i % 3 == 0
        rows.append(
            Instance(
                name=f"rec-{i:05d}", owner=owner, claim=None if deleted else claim_key(owner, f"rec-{i:05d}"),
                spec={"cloud": "aws"}, cloud=("aws", "gcp")[i % 2],
                region="us-east-1", status="deleted" if deleted else "running", labels={"team": f"t{i % 5}"},
                public_ip=f"198.51.{i // 256 % 256}.{i % 256}", created_at=BASE_TIME + dt.timedelta(seconds=i),
            )
        )
    for row in rows:
        row.set_list_keys()  # as save() does
    return [row.to_mongo().to_dict() for row in rows]


def seed(sqlite_path: Path, records: int, user_share: float) -> None:
    """Write the records and the service's indexes straight into the store's SQLite file.

    Cached under ~/.cache/orch-bench by size (building 10,000 takes about half a minute).
    """
    cached = Path.home() / ".cache" / "orch-bench" / f"list-v3-{records}-{user_share}.sqlite"
    if not cached.exists():
        from mongoeco import MongoClient
        from mongoeco.engines.sqlite import SQLiteEngine

        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        with MongoClient(SQLiteEngine(str(partial))) as client:
            collection = client[LIST_DB][Instance._get_collection_name()]
            # Indexes first: building a unique index over existing documents compares every pair,
            # while an insert checks uniqueness through the index.
            for spec in Instance._meta["index_specs"]:
                options = {key: value for key, value in spec.items() if key != "fields"}
                collection.create_index(spec["fields"], **options)
            collection.insert_many(_records(records, user_share))
        partial.rename(cached)
    shutil.copyfile(cached, sqlite_path)


def wait_answering(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout_s} s") from None
            time.sleep(0.1)


def run(records: int = 10_000, clients: int = 20, requests: int = 400, deep: int = 1000, user_share: float = 0.2) -> dict:
    """The figures: p50/p99 ms per query shape, and what ran."""
    with tempfile.TemporaryDirectory(prefix="orch-bench-list-") as tmp_name:
        tmp = Path(tmp_name)
        seed(tmp / "store.sqlite", records, user_share)
        store, mongo_url = start_store(Path(tmp) / "store.sqlite")
        try:
            (tmp / "svc").mkdir()
            live = start_service(tmp / "svc", mongo_url, ORCH_MONGODB_URL=url_with_database(mongo_url, LIST_DB))
            try:
                port = int(live.url.rsplit(":", 1)[1])
                token = live.token_for(USER)
                with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
                    total = c.get("/api/v1/instances", params={"limit": 1}).json()["total"]
                    # The cursor `deep` rows in (a page before the end at most): walk there 500 rows a page.
                    deep = max(0, min(deep, total - PAGE))
                    cursor, walked = None, 0
                    while walked < deep:
                        page = c.get("/api/v1/instances", params={"limit": min(500, deep - walked),
                                                                  **({"cursor": cursor} if cursor else {})}).json()
                        walked += len(page["items"])
                        cursor = page["next_cursor"]
                    first_page = c.get("/api/v1/instances", params={"limit": PAGE}).content
                shapes = {
                    "first page": {"limit": PAGE},
                    "label + status filter": {"limit": PAGE, "label": "team=t1", "status": "running"},
                    f"page after {walked} rows": {"limit": PAGE, **({"cursor": cursor} if cursor else {})},
                }
                headers = {"Authorization": f"Bearer {token}"}
                results: dict[str, LoadResult] = {}
                cpu: dict[str, dict] = {}
                for label, params in shapes.items():
                    path = f"/api/v1/instances?{urlencode(params)}"
                    request = build_request("GET", "127.0.0.1", port, path, b"", headers)
                    run_load("127.0.0.1", port, [request] * clients, clients, ok={200})  # warm-up
                    with CpuMeter({"orch serve": live.process.pid, "store": store.pid}) as meter:
                        results[label] = run_load("127.0.0.1", port, [request] * requests, clients, ok={200})
                    cpu[label] = cpu_figures(meter, results[label].requests, clients, results[label].seconds)
            finally:
                live.stop()
            # The store's own share: each shape's page commands sent straight to it, the service stopped.
            store_url = url_with_database(mongo_url, LIST_DB)
            store_results: dict[str, LoadResult] = {}
            store_commands: dict[str, list[str]] = {}
            for label, params in shapes.items():
                commands = record_page_commands(store_url, LIST_DB, USER, params)
                store_commands[label] = [next(iter(command)) for _, command in commands]
                replay(store_url, commands, clients, clients)  # warm-up
                store_results[label] = replay(store_url, commands, clients, requests)
            # The floor on this machine: a bare Litestar endpoint answering the first page's bytes.
            (tmp / "page.json").write_bytes(first_page)
            bare_port = free_port()
            bare = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "bare_app.py"), str(bare_port),
                                     str(tmp / "page.json")], cwd=REPO)
            try:
                wait_answering(f"http://127.0.0.1:{bare_port}/api/v1/instances")
                request = build_request("GET", "127.0.0.1", bare_port, "/api/v1/instances", b"", {})
                run_load("127.0.0.1", bare_port, [request] * clients, clients, ok={200})
                bare_result = run_load("127.0.0.1", bare_port, [request] * requests, clients, ok={200})
            finally:
                bare.terminate()
                bare.wait(timeout=10)
        finally:
            stop_store(store)
    return {
        "records": records, "clients": clients, "user_instances": total, "deep_rows": walked,
        "bare": {"p50_ms": bare_result.percentile(50), "p99_ms": bare_result.percentile(99),
                 "requests": bare_result.requests, "errors": bare_result.errors, "rate": bare_result.rate,
                 "page_bytes": len(first_page)},
        "shapes": {
            label: {"p50_ms": r.percentile(50), "p99_ms": r.percentile(99), "mean_ms": r.mean, "requests": r.requests,
                    "errors": r.errors, "rate": r.rate, **cpu[label]}
            for label, r in results.items()
        },
        # The same pages' commands sent straight to the store (benchmarks/store_floor.py).
        "store_alone": {
            label: {"p50_ms": r.percentile(50), "p99_ms": r.percentile(99), "requests": r.requests, "errors": r.errors,
                    "rate": r.rate, "commands": store_commands[label]}
            for label, r in store_results.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    figures = run(args.records, args.clients, args.requests)
    print(f"{figures['records']} records, {figures['user_instances']} of them the user's (not deleted), "
          f"{figures['clients']} clients")
    for label, shape in figures["shapes"].items():
        print(f"GET /instances ({label}): p50 {shape['p50_ms']:.1f} ms, p99 {shape['p99_ms']:.1f} ms, "
              f"{shape['rate']:.0f}/s, {shape['errors']} errors over {shape['requests']} requests")
        print(f"  {cpu_line(shape)}")
    for label, shape in figures["store_alone"].items():
        print(f"the store alone, the same page's commands ({', '.join(shape['commands'])}; {label}): "
              f"p50 {shape['p50_ms']:.1f} ms, p99 {shape['p99_ms']:.1f} ms, {shape['rate']:.0f}/s, "
              f"{shape['errors']} errors over {shape['requests']} pages")
    bare = figures["bare"]
    print(f"bare Litestar answering the same page ({bare['page_bytes']} bytes): p50 {bare['p50_ms']:.1f} ms, "
          f"p99 {bare['p99_ms']:.1f} ms, {bare['rate']:.0f}/s")


if __name__ == "__main__":
    main()
