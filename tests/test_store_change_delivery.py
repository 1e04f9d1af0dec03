"""The embedded store delivers no change events: nothing can watch it, so writes do not pay for delivery."""

from __future__ import annotations

import sqlite3
import threading

import pymongo
import pytest
from pymongo.errors import OperationFailure

from orchestrator.embedded_store import EmbeddedStore


@pytest.fixture
def store(tmp_path):
    running = EmbeddedStore(tmp_path / "store.sqlite", "127.0.0.1", 0)
    url = running.start()
    client = pymongo.MongoClient(url)
    try:
        yield client, tmp_path / "store.sqlite"
    finally:
        client.close()
        running.stop()


def test_no_client_can_watch_the_store(store):
    """Why delivery can go: the wire server refuses a change stream (if a mongoeco release serves them,
    this fails, and key_range_engine.py's no-delivery methods must go)."""
    client, _ = store
    with pytest.raises(OperationFailure, match=r"Unsupported aggregation stage: \$changeStream"):
        client["orch"]["instances"].watch()


def test_writes_register_no_consumer_and_leave_no_change_behind(store):
    client, path = store
    collection = client["orch"]["operations"]
    ids = collection.insert_many([{"status": "queued", "logs": []} for _ in range(30)]).inserted_ids
    for round_ in range(3):
        for op_id in ids:
            assert collection.update_one(
                {"_id": op_id, "logs.5": {"$exists": False}}, {"$push": {"logs": f"line {round_}"}}
            ).modified_count == 1
    assert collection.delete_many({"_id": {"$in": ids[:10]}}).deleted_count == 10

    assert collection.count_documents({}) == 20
    assert all(doc["logs"] == ["line 0", "line 1", "line 2"] for doc in collection.find())
    with sqlite3.connect(path) as connection:
        consumers = connection.execute("SELECT COUNT(*) FROM change_outbox_consumers").fetchone()[0]
        changes = connection.execute("SELECT COUNT(*) FROM change_outbox").fetchone()[0]
    # mongoeco's delivery registered the store's change hub as a consumer and kept a thread renewing it.
    assert (consumers, changes) == (0, 0)
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("mongoeco-outbox")]
