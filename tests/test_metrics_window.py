"""GET /instances/{name}/metrics?window=: the most recent span, read by the instance's id."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from orchestrator.auth import Principal
from orchestrator.ingest import AgentIngest
from orchestrator.metrics.windows import window_since
from orchestrator.models import Instance, MetricBatch, utcnow
from orchestrator.services import Invalid, Orchestrator

ALICE = Principal("alice", "user")


def test_window_since_takes_the_later_start():
    now = dt.datetime(2026, 1, 2, 12)
    assert window_since(None, None, now) is None
    assert window_since("1h", None, now) == dt.datetime(2026, 1, 2, 11)
    assert window_since("24h", dt.datetime(2026, 1, 2, 6), now) == dt.datetime(2026, 1, 2, 6)
    assert window_since("1h", dt.datetime(2026, 1, 1), now) == dt.datetime(2026, 1, 2, 11)


def test_a_window_reads_only_its_span_and_only_this_incarnation(mongo_db):
    now = utcnow()
    old = Instance(name="box", owner="alice", spec={"cloud": "aws"}, cloud="aws", region="r", status="deleted",
                   created_at=now - dt.timedelta(days=2))
    old.save()
    box = Instance(name="box", owner="alice", spec={"cloud": "aws"}, cloud="aws", region="r", status="running")
    box.save()
    rows = [
        ((str(box.id), now - dt.timedelta(hours=3), {"cpu_percent": 3.0}), ""),
        ((str(box.id), now - dt.timedelta(minutes=10), {"cpu_percent": 10.0}), ""),
        ((str(old.id), now - dt.timedelta(minutes=5), {"cpu_percent": 99.0}), ""),
    ]
    encoded = [(row, json.dumps([row[0], row[1].isoformat(), row[2]]).encode()) for row, _ in rows]
    MetricBatch._get_collection().insert_one(AgentIngest._batch_document(encoded))
    orch = Orchestrator(settings=None, engine=None, dispatch=lambda op_id: True)
    assert [s["cpu_percent"] for s in orch.metrics(ALICE, "box", None, None, window="1h")] == [10.0]
    assert [s["cpu_percent"] for s in orch.metrics(ALICE, "box", None, None, window="24h")] == [3.0, 10.0]
    with pytest.raises(Invalid) as error:
        orch.metrics(ALICE, "box", None, None, window="90d")
    assert error.value.field == "window"
