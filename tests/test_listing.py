"""Keyset pagination of the instance list, straight against the service and the store."""

from __future__ import annotations

import datetime as dt

import pytest

from orchestrator.auth import Principal
from orchestrator.models import Instance
from orchestrator.services import Invalid, Orchestrator

ALICE = Principal("alice", "user")
ADMIN = Principal("root", "admin")
BASE = dt.datetime(2024, 1, 1)


@pytest.fixture
def orch(mongo_db):
    for document in (Instance,):
        document.ensure_indexes()
    rows = []
    # Names out of creation order, a repeated name (a deleted incarnation), another owner's namesake.
    for n, name in enumerate(["m-3", "a.b", "z-1", "axb", "m-3", "c-7", "b-2"]):
        status = "deleted" if n == 0 else ("failed" if n == 5 else "running")
        rows.append(Instance(name=name, owner="alice", spec={"cloud": "aws"}, cloud=("aws", "gcp")[n % 2], region="r",
                             status=status, labels={"team": "ml" if n % 3 else "web"},
                             admin_private_key="secret", created_at=BASE + dt.timedelta(minutes=n)))
    rows.append(Instance(name="a.b", owner="bob", spec={"cloud": "aws"}, cloud="aws", region="r", created_at=BASE))
    for row in rows:
        row.save()
    return Orchestrator(settings=None, engine=None, dispatch=lambda op_id: True)


def _walk(orch, principal, limit, **filters) -> list[tuple[str, str]]:
    seen, cursor = [], None
    while True:
        page = orch.list_instances(principal, limit=limit, cursor=cursor, **filters)
        assert len(page.items) <= limit
        seen += [(row.name, row.owner) for row in page.items]
        cursor = page.next_cursor
        if cursor is None:
            assert len(seen) == page.total
            return seen


@pytest.mark.parametrize("limit", [1, 2, 50])
def test_pages_follow_each_other_in_every_sort(orch, limit):
    assert [n for n, _ in _walk(orch, ALICE, limit)] == ["a.b", "axb", "b-2", "c-7", "m-3", "z-1"]
    assert [n for n, _ in _walk(orch, ALICE, limit, sort="-name")] == ["z-1", "m-3", "c-7", "b-2", "axb", "a.b"]
    by_time = ["a.b", "z-1", "axb", "m-3", "c-7", "b-2"]
    assert [n for n, _ in _walk(orch, ALICE, limit, sort="created_at")] == by_time
    assert _walk(orch, ALICE, limit, sort="-created_at") == list(reversed(_walk(orch, ALICE, limit, sort="created_at")))
    # Deleted incarnations share names: ties are broken by id, each row comes once.
    everything = _walk(orch, ALICE, limit, include_deleted=True)
    assert [n for n, _ in everything] == ["a.b", "axb", "b-2", "c-7", "m-3", "m-3", "z-1"]
    assert sorted(_walk(orch, ADMIN, limit)) == sorted(_walk(orch, ALICE, limit) + [("a.b", "bob")])


def test_filters_and_literal_text(orch):
    assert _walk(orch, ALICE, 2, q=".") == [("a.b", "alice")]  # a dot is a dot, not "any character"
    assert _walk(orch, ALICE, 2, q="b") == [("a.b", "alice"), ("axb", "alice"), ("b-2", "alice")]
    assert _walk(orch, ALICE, 2, q="[") == []
    assert [n for n, _ in _walk(orch, ALICE, 2, label="team=web")] == ["axb", "b-2"]
    assert [n for n, _ in _walk(orch, ALICE, 2, status="failed")] == ["c-7"]
    assert [n for n, _ in _walk(orch, ALICE, 2, cloud="gcp")] == ["a.b", "axb", "c-7"]


def test_the_list_never_carries_secrets(orch):
    row = orch.list_instances(ALICE, limit=1).items[0]
    assert row.admin_private_key is None and row.agent_token_hash is None


def test_bad_cursor_and_sort_name_their_field(orch):
    first = orch.list_instances(ALICE, limit=1)
    with pytest.raises(Invalid) as error:
        orch.list_instances(ALICE, limit=1, cursor=first.next_cursor, sort="-name")
    assert error.value.field == "cursor"
    with pytest.raises(Invalid) as error:
        orch.list_instances(ALICE, cursor="%%%")
    assert error.value.field == "cursor"
    with pytest.raises(Invalid) as error:
        orch.list_instances(ALICE, sort="owner")
    assert error.value.field == "sort"
