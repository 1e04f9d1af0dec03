"""Keyset pagination of the instance list, straight against the service and the store."""

from __future__ import annotations

import datetime as dt

import msgspec
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


def _incarnation(name, owner, status, minute, team="web"):
    return Instance(name=name, owner=owner, spec={"cloud": "aws"}, cloud="aws", region="r", status=status,
                    labels={"team": team}, created_at=BASE + dt.timedelta(minutes=minute))


def test_key_range_pages_with_ties_deleted_rows_and_filters(mongo_db):
    """One owner's listing is a range of its listing key: ties in the sort value, deleted incarnations
    (listed only when asked for), a status and a label filter, every page after a cursor."""
    Instance.ensure_indexes()
    # Five incarnations share one name and one time; deleted ones interleave; another owner's sort between.
    for n in range(12):
        _incarnation("same" if n < 5 else f"n-{n:02d}", "carol", "deleted" if n % 3 == 0 else "running",
                     0 if n < 5 else n, team="ml" if n % 2 else "web").save()
    _incarnation("same", "carl", "running", 0).save()
    _incarnation("same", "carol-b", "running", 0).save()
    carol = Principal("carol", "user")
    rows = list(Instance.objects(owner="carol"))
    live = [r for r in rows if r.status != "deleted"]
    for sort, key in (("name", lambda r: (r.name, r.id)), ("created_at", lambda r: (r.created_at, r.id))):
        expected = [(r.name, str(r.id)) for r in sorted(live, key=key)]
        for limit in (1, 2, 50):
            for direction, order in (("", expected), ("-", expected[::-1])):
                seen, cursor = [], None
                while True:
                    page = orch_of().list_instances(carol, limit=limit, cursor=cursor, sort=direction + sort)
                    assert page.total == len(live)
                    seen += [(r.name, str(r.id)) for r in page.items]
                    if (cursor := page.next_cursor) is None:
                        break
                assert seen == order, (sort, direction, limit)
    deleted = orch_of().list_instances(carol, status="deleted", limit=50)
    assert sorted(str(r.id) for r in deleted.items) == sorted(str(r.id) for r in rows if r.status == "deleted")
    filtered = _walk(orch_of(), carol, 1, status="running", label="team=ml")
    assert filtered == [(r.name, "carol") for r in sorted(live, key=lambda r: (r.name, r.id)) if r.labels["team"] == "ml"]
    # A move to deleted (through save) takes the row out of the listing's range.
    live[0].move_to("deleting")
    live[0].save()
    live[0].move_to("deleted")
    live[0].save()
    assert orch_of().list_instances(carol, limit=50).total == len(live) - 1


def orch_of() -> Orchestrator:
    return Orchestrator(settings=None, engine=None, dispatch=lambda op_id: True)


def test_instances_stored_before_the_keys_get_them(mongo_db):
    from orchestrator.models import upgrade_list_keys

    Instance.ensure_indexes()
    _incarnation("old", "dave", "running", 1).save()
    _incarnation("gone", "dave", "deleted", 2).save()
    Instance._get_collection().update_many({}, {"$unset": {"list_key_name": "", "list_key_created": ""}})
    assert orch_of().list_instances(Principal("dave", "user")).total == 0
    assert upgrade_list_keys() == 2 and upgrade_list_keys() == 0
    assert [r.name for r in orch_of().list_instances(Principal("dave", "user")).items] == ["old"]


def test_a_name_is_its_live_incarnation_else_its_newest_deleted_one(mongo_db):
    """Instance.newest_incarnation: the claimed (live) one; with none, the newest deleted one; never a
    namesake of another owner or a longer name that starts with it."""
    from orchestrator.models import claim_key

    Instance.ensure_indexes()

    def incarnation(name, owner, status, minute):
        row = _incarnation(name, owner, status, minute)
        row.claim = None if status == "deleted" else claim_key(owner, name)
        row.save()
        return row

    assert Instance.newest_incarnation("erin", "web") is None
    first = incarnation("web", "erin", "deleted", 1)
    assert Instance.newest_incarnation("erin", "web").id == first.id
    second = incarnation("web", "erin", "deleted", 2)
    incarnation("web-2", "erin", "running", 3)
    incarnation("web", "erinn", "running", 4)
    incarnation("web", "eri", "deleted", 5)
    assert Instance.newest_incarnation("erin", "web").id == second.id
    live = incarnation("web", "erin", "running", 6)
    assert Instance.newest_incarnation("erin", "web").id == live.id
    live.move_to("deleting")
    live.save()
    assert Instance.newest_incarnation("erin", "web").id == live.id
    live.move_to("deleted")
    live.claim = None
    live.save()
    assert Instance.newest_incarnation("erin", "web").id == live.id
    assert Instance.newest_incarnation("erin", "we") is None


@pytest.mark.parametrize("name", [
    "web ", "web!", "we", "web x", "web\x00", "web\x1f", " web", "web\u2028", "w" * 10_000, "web.*", "{'$gt': ''}",
])
def test_a_name_that_is_not_the_instances_own_finds_nothing(mongo_db, name):
    """A looked-up name is literal key text: a separator, a prefix, control characters, 10,000 characters or
    query syntax never reach another incarnation (nor another owner's), and GET answers 404."""
    from orchestrator.services import NotFound

    Instance.ensure_indexes()
    for owner in ("gil", "gil a web"):  # the second: an owner whose key text starts like gil's
        _incarnation("web", owner, "running", 1).save()
    _incarnation("web", "gil", "deleted", 0).save()
    assert Instance.newest_incarnation("gil", name) is None
    with pytest.raises(NotFound):
        orch_of().get_instance(Principal("gil", "user"), name)


def test_lookups_racing_a_delete_and_a_new_create_always_find_an_incarnation_of_that_name(mongo_db):
    """Readers during `delete` then `create` of one name see one of its incarnations, never none or another."""
    import threading

    from orchestrator.models import claim_key

    Instance.ensure_indexes()
    _incarnation("other", "hal", "running", 0).save()
    current = _incarnation("job", "hal", "running", 1)
    current.claim = claim_key("hal", "job")
    current.save()
    ids, seen, done = {current.id}, [], threading.Event()

    def read() -> None:
        while not done.is_set():
            found = Instance.newest_incarnation("hal", "job")
            seen.append(found.id if found is not None else None)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    for minute in range(2, 8):
        current.move_to("deleting")
        current.save()
        current.move_to("deleted")
        current.claim = None
        current.save()
        current = _incarnation("job", "hal", "running", minute)
        current.claim = claim_key("hal", "job")
        current.save()
        ids.add(current.id)
    done.set()
    for reader in readers:
        reader.join()
    assert seen and set(seen) <= ids
    assert Instance.newest_incarnation("hal", "job").id == current.id


def test_a_listing_total_counts_the_filtered_range(mongo_db):
    """The total of a page counts what its filters match (label, status, cloud), not the page."""
    Instance.ensure_indexes()
    for n in range(9):
        _incarnation(f"t-{n}", "fay", ("running", "failed", "deleted")[n % 3], n, team=("ml", "web")[n % 2]).save()
    fay = Principal("fay", "user")
    assert orch_of().list_instances(fay, limit=1).total == 6
    assert orch_of().list_instances(fay, limit=1, status="failed").total == 3
    assert orch_of().list_instances(fay, limit=1, label="team=ml").total == 3
    assert orch_of().list_instances(fay, limit=1, include_deleted=True).total == 9
    assert orch_of().list_instances(fay, limit=1, status="deleted").total == 3


def test_the_embedded_store_serves_a_key_range_from_its_index(tmp_path):
    """KeyRangeSQLiteEngine answers as mongoeco's own plan does: a key range from its index with no
    sort step, an equality on a string from a sparse index, ids by primary key."""
    from bson import ObjectId
    from mongoeco import MongoClient
    from mongoeco.engines.sqlite import SQLiteEngine

    from orchestrator.listing.key_range_engine import KeyRangeSQLiteEngine

    docs = [{"_id": n, "k": f"o{n % 3} {'ab'[n % 2]} {n % 7:02d} {n:03d}", "status": ("running", "failed")[n % 4 == 0],
             "labels": {"team": f"t{n % 5}"}} for n in range(120)]
    for doc in docs:
        if doc["_id"] % 4:
            doc["claim"] = f"o{doc['_id'] % 3}/{doc['_id']:03d}"
    docs += [{"_id": 500, "k": 7, "claim": 7}, {"_id": 501}]  # another type, and none: never in a string range
    queries = [
        ({"k": {"$gt": "o1 a ", "$lt": "o1 a!"}}, [("k", 1)], 10),
        ({"k": {"$gt": "o1 a ", "$lt": "o1 a!"}}, [("k", -1)], 10),
        ({"k": {"$gt": "o1 a 03 031", "$lt": "o1 a!"}, "status": "running", "labels.team": "t1"}, [("k", 1)], 3),
        ({"k": {"$gte": "o2"}}, None, None),
        ({"k": {"$gt": "o0 a ", "$lt": "o0 a!"}, "status": "failed"}, [("k", 1)], None),
        ({"claim": "o1/013"}, None, 1),
        ({"claim": "o1/013", "status": "running"}, None, None),
        ({"status": "running", "claim": {"$gte": "o2/", "$lt": "o2/050"}}, None, None),
        ({"claim": "o1/012"}, None, 1),  # a document without the field
    ]
    answers = {}
    for engine_class in (SQLiteEngine, KeyRangeSQLiteEngine):
        with MongoClient(engine_class(str(tmp_path / f"{engine_class.__name__}.sqlite"))) as client:
            collection = client["db"]["c"]
            collection.insert_many(docs)
            collection.create_index([("k", 1)])
            collection.create_index([("claim", 1)], unique=True, sparse=True)
            results = []
            for query, sort, limit in queries:
                cursor = collection.find(query)
                if sort:
                    cursor = cursor.sort(sort)
                found = [d["_id"] for d in (cursor.limit(limit) if limit else cursor)]
                results.append(found if sort else sorted(found))  # without a sort, any order
                results.append(collection.count_documents(query))
                # The count command (a listing's total), with and without a limit.
                results.append(client["db"].command({"count": "c", "query": query})["n"])
                results.append(client["db"].command({"count": "c", "query": query, "limit": 2})["n"])
                # Top-level fields left out (the list's projection), and one nested field.
                for projection in ({"labels": 0, "claim": 0, "absent": 0}, {"labels.team": 0}):
                    projected = collection.find(query, projection)
                    if sort:
                        projected = projected.sort(sort)
                    rows = list(projected.limit(limit) if limit else projected)
                    results.append(rows if sort else sorted(rows, key=lambda d: d["_id"]))
            # A page's operations, by id: read by primary key (a missing id and a string id find nothing).
            operations = client["db"]["ops"]
            ids = [ObjectId() for _ in range(6)]
            operations.insert_many([{"_id": i, "n": n} for n, i in enumerate(ids)] + [{"_id": str(ids[0])}])
            wanted = {"_id": {"$in": [ids[1], ids[4], ObjectId()]}}
            results.append(sorted(d["n"] for d in operations.find(wanted)))
            # String ids (metrics buckets): the string, never the ObjectId of the same hex.
            by_name = {"_id": {"$in": [str(ids[0]), "missing"]}}
            results.append([(type(d["_id"]).__name__, d.get("n")) for d in operations.find(by_name)])
            answers[engine_class] = results
            if engine_class is KeyRangeSQLiteEngine:
                by_key = operations.find(wanted).explain()["details"]["engine_details"]
                assert by_key == ["SEARCH documents USING INDEX sqlite_autoindex_documents_1 "
                                  "(db_name=? AND coll_name=? AND storage_key=?)"], by_key
                assert operations.find(by_name).explain()["details"]["engine_details"] == by_key
                plan = collection.find(queries[2][0]).sort(queries[2][1]).limit(3).explain()["details"]["engine_details"]
                assert any("element_key>? AND element_key<?" in step for step in plan), plan
                assert not any("TEMP B-TREE" in step or step.startswith("SCAN documents") for step in plan), plan
                claimed = collection.find({"claim": "o1/013"}).limit(1).explain()["details"]["engine_details"]
                assert any("element_key=?" in step for step in claimed), claimed
    assert answers[KeyRangeSQLiteEngine] == answers[SQLiteEngine]
    assert answers[SQLiteEngine][-2:] == [[1, 4], [("str", None)]]
    # Every query but the last finds rows.
    per_query = 6
    assert [bool(answers[SQLiteEngine][i]) for i in range(0, len(queries) * per_query, per_query)] == (
        [True] * (len(queries) - 1) + [False])


def test_the_embedded_store_reads_a_filter_naming_an_id_by_primary_key_and_answers_as_mongoeco(tmp_path, monkeypatch):
    """update_one / find_one_and_update / delete_one on `{_id: x, <more>}` (claiming an operation, appending to
    its log under a bound): the document read by its key and checked, as mongoeco's own plan answers, with no
    read of the other documents."""
    from bson import ObjectId
    from mongoeco import MongoClient
    from mongoeco.engines.sqlite import SQLiteEngine

    from orchestrator.listing.key_range_engine import KeyRangeSQLiteEngine

    ids = [ObjectId() for _ in range(40)]
    docs = [{"_id": i, "status": ("queued", "running")[n % 2], "logs": ["x"] * (n % 5), "worker": f"w{n % 3}"}
            for n, i in enumerate(ids)] + [{"_id": "op-text", "status": "queued"}, {"_id": 7, "status": "queued"}]
    filters = [
        {"_id": ids[0], "status": "queued"},  # matches
        {"_id": ids[1], "status": "queued"},  # its status is another
        {"_id": ids[2], "logs.3": {"$exists": False}},  # 2 lines: room under the bound
        {"_id": ids[4], "logs.3": {"$exists": False}},  # 4 lines: none
        {"_id": ObjectId(), "status": "queued"},  # no such id
        {"_id": "op-text", "status": "queued"},  # a string id
        {"_id": str(ids[0]), "status": "queued"},  # the string of an ObjectId is another id
        {"_id": 7, "status": "queued"},  # a number: mongoeco's plan
        {"$and": [{"_id": ids[3]}, {"worker": {"$in": ["w0", "w1"]}}]},
    ]
    answers = {}
    for engine_class in (SQLiteEngine, KeyRangeSQLiteEngine):
        with MongoClient(engine_class(str(tmp_path / f"{engine_class.__name__}.sqlite"))) as client:
            collection = client["db"]["ops"]
            collection.insert_many(docs)
            if engine_class is KeyRangeSQLiteEngine:
                # A plan over the collection would read the others: only the number id may take one.
                planned = []
                compile_plan = KeyRangeSQLiteEngine._compile_read_execution_plan
                monkeypatch.setattr(KeyRangeSQLiteEngine, "_compile_read_execution_plan",
                                    lambda self, *a, **k: planned.append(a[2].query_plan) or compile_plan(self, *a, **k))
            results = []
            for query in filters:
                results.append(collection.update_one(query, {"$inc": {"n": 1}}).matched_count)
                results.append(collection.find_one_and_update(query, {"$set": {"seen": True}}, projection={"_id": 1}))
            results.append(collection.delete_one(filters[0]).deleted_count)
            results.append(collection.delete_one(filters[1]).deleted_count)
            if engine_class is KeyRangeSQLiteEngine:
                monkeypatch.undo()
                # (mongoeco reads a changed document back by its `_id` alone: its own plan, by key.)
                conjunctions = [plan for plan in planned if hasattr(plan, "clauses")]
                assert [plan for plan in conjunctions if 7 not in (getattr(c, "value", None) for c in plan.clauses)] == []
            results.append(sorted(collection.find({}), key=str))
            answers[engine_class] = results
    assert answers[KeyRangeSQLiteEngine] == answers[SQLiteEngine]
    assert answers[SQLiteEngine][:6:2] == [1, 0, 1] and answers[SQLiteEngine][-3:-1] == [1, 0]


def test_concurrent_claims_and_bounded_appends_by_id_stay_atomic_over_the_wire(mongo_url):
    """Eight clients at once claim the same operations (`{_id, status: "queued"}`) and append to their logs
    under a bound (`{_id, "logs.N": {$exists: false}}`): each operation is claimed once, and no log passes
    its bound (the by-key read runs inside the store's write, as mongoeco's own lookup did)."""
    import threading
    import uuid as uuid_module

    from bson import ObjectId
    from pymongo import MongoClient

    operations, clients, bound = 20, 8, 5
    with MongoClient(mongo_url) as client:
        collection = client[f"orch_test_{uuid_module.uuid4().hex[:10]}"]["ops"]
        ids = [ObjectId() for _ in range(operations)]
        collection.insert_many([{"_id": i, "status": "queued", "logs": []} for i in ids])
        claims: list[tuple[ObjectId, int]] = []
        appended: list[int] = []
        start = threading.Barrier(clients)

        def contend(worker: int) -> None:
            start.wait()
            for op_id in ids:
                if collection.find_one_and_update({"_id": op_id, "status": "queued"},
                                                  {"$set": {"status": "running", "worker": worker}}):
                    claims.append((op_id, worker))
                for _ in range(2):
                    result = collection.update_one({"_id": op_id, f"logs.{bound - 1}": {"$exists": False}},
                                                   {"$push": {"logs": worker}})
                    appended.append(result.modified_count)

        threads = [threading.Thread(target=contend, args=(worker,)) for worker in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stored = {doc["_id"]: doc for doc in collection.find({})}
    assert sorted(op_id for op_id, _ in claims) == sorted(ids), "each operation claimed exactly once"
    assert all(stored[op_id]["worker"] == worker and stored[op_id]["status"] == "running" for op_id, worker in claims)
    assert all(len(doc["logs"]) == bound for doc in stored.values())
    assert sum(appended) == operations * bound and len(appended) == operations * clients * 2


def test_the_embedded_store_keeps_its_reader_connections_and_each_read_sees_the_latest_writes(tmp_path, monkeypatch):
    import sqlite3

    from mongoeco import MongoClient

    from orchestrator.listing import key_range_engine
    from orchestrator.listing.key_range_engine import KeyRangeSQLiteEngine

    opened = []
    real_connect = sqlite3.connect

    def counted_connect(*args, **kwargs):
        connection = real_connect(*args, **kwargs)
        opened.append(connection)
        return connection

    monkeypatch.setattr(key_range_engine.sqlite3, "connect", counted_connect)
    engine = KeyRangeSQLiteEngine(str(tmp_path / "store.sqlite"))
    with MongoClient(engine) as client:
        collection = client["db"]["c"]
        collection.insert_many([{"_id": f"k{n}", "n": n} for n in range(5)])
        before = len(opened)
        for round_ in range(20):
            # Each find of many documents reads through a dedicated reader; each sees the write before it.
            assert sorted(d["n"] for d in collection.find({})) == list(range(5 + round_))
            collection.insert_one({"_id": f"k{5 + round_}", "n": 5 + round_})
        readers = [c for c in opened[before:] if isinstance(c, key_range_engine._ReaderConnection)]
        assert 1 <= len(readers) <= key_range_engine.MAX_IDLE_READERS  # 20 reads, a reader or two reused
        # A cursor read in several batches holds its reader meanwhile; another read takes another one.
        first = iter(collection.find({}).batch_size(2))
        next(first)
        assert collection.count_documents({}) == 25 and len(list(first)) == 24
    # Closing the engine closes the kept readers.
    for reader in readers:
        with pytest.raises(sqlite3.ProgrammingError):
            reader.execute("SELECT 1")


def test_kept_reader_connections_serve_concurrent_readers_and_a_writer(tmp_path):
    """Readers in four threads while a fifth inserts: no read fails, each sees at least what it saw before,
    and no more connections are kept than the bound."""
    import threading

    from mongoeco import MongoClient

    from orchestrator.listing import key_range_engine
    from orchestrator.listing.key_range_engine import KeyRangeSQLiteEngine

    engine = KeyRangeSQLiteEngine(str(tmp_path / "store.sqlite"))
    errors: list[BaseException] = []
    with MongoClient(engine) as client:
        collection = client["db"]["c"]
        collection.insert_many([{"_id": f"k{n:04d}", "n": n} for n in range(10)])
        writing = threading.Event()
        writing.set()

        def write() -> None:
            for n in range(10, 210):
                collection.insert_one({"_id": f"k{n:04d}", "n": n})
            writing.clear()

        def read() -> None:
            seen = 0
            try:
                while writing.is_set():
                    rows = [d["n"] for d in collection.find({})]
                    assert len(rows) >= seen and sorted(rows) == list(range(len(rows)))
                    seen = len(rows)
            except BaseException as error:  # reported to the test's thread
                errors.append(error)

        threads = [threading.Thread(target=read) for _ in range(4)] + [threading.Thread(target=write)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert len(engine._idle_readers._idle) <= key_range_engine.MAX_IDLE_READERS
        assert sorted(d["n"] for d in collection.find({})) == list(range(210))


def test_range_counts_and_projected_finds_in_concurrent_threads_while_a_writer_inserts(tmp_path):
    """A count of a key range (index entries only, the flag that picks that plan is per thread) and a
    projected find of the range run in four threads at once while a fifth inserts into the range:
    no read fails, each count is at least the one before, every projected row lacks the left-out
    fields, and at the end the count, the find and mongoeco's own engine agree."""
    import threading

    from mongoeco import MongoClient
    from mongoeco.engines.sqlite import SQLiteEngine

    from orchestrator.listing.key_range_engine import KeyRangeSQLiteEngine

    in_range = {"k": {"$gt": "o1 ", "$lt": "o1!"}}
    docs = [{"_id": n, "k": f"o{n % 2} {n:04d}", "secret": "s", "labels": {"team": "t"}} for n in range(40)]
    errors: list[BaseException] = []
    with MongoClient(KeyRangeSQLiteEngine(str(tmp_path / "store.sqlite"))) as client:
        collection = client["db"]["c"]
        collection.create_index([("k", 1)])
        collection.insert_many(docs)
        writing = threading.Event()
        writing.set()

        def write() -> None:
            for n in range(40, 240):
                collection.insert_one({"_id": n, "k": f"o{n % 2} {n:04d}", "secret": "s"})
            writing.clear()

        def read(counting: bool) -> None:
            seen = 0
            try:
                while writing.is_set():
                    if counting:
                        counted = client["db"].command({"count": "c", "query": in_range})["n"]
                        assert counted >= seen
                        seen = counted
                    else:
                        rows = list(collection.find(in_range, {"secret": 0, "labels": 0}).sort("k", 1).limit(500))
                        assert rows and all(set(row) == {"_id", "k"} for row in rows)
                        assert len(rows) >= seen
                        seen = len(rows)
            except BaseException as error:  # reported to the test's thread
                errors.append(error)

        threads = [threading.Thread(target=read, args=(n % 2 == 0,)) for n in range(4)]
        threads.append(threading.Thread(target=write))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        final = (client["db"].command({"count": "c", "query": in_range})["n"],
                 [d["_id"] for d in collection.find(in_range, {"secret": 0}).sort("k", 1)])
    with MongoClient(SQLiteEngine(str(tmp_path / "store.sqlite"))) as client:
        collection = client["db"]["c"]
        assert final == (client["db"].command({"count": "c", "query": in_range})["n"],
                         [d["_id"] for d in collection.find(in_range, {"secret": 0}).sort("k", 1)])
    assert final[0] == 120


def test_a_list_row_shows_what_the_stored_instance_shows(mongo_db):
    """List pages read rows straight from the stored dicts (StoredInstance): each shows what the
    instance's mongoengine document shows, defaults included, for a bare and a fully filled instance."""
    from orchestrator.api.serialize import instance_json
    from orchestrator.models import AutostopState, Health, StoredInstance

    Instance.ensure_indexes()
    bare = Instance(name="bare", owner="dee", spec={"cloud": "aws"}, cloud="aws", region="r", created_at=BASE)
    full = Instance(
        name="full", owner="dee", spec={"cloud": "aws", "autostop": {"idle_minutes": 30}, "spot": True},
        cloud="aws", region="us-east-1", status="running", status_reason="ok", labels={"team": "ml"},
        outputs={"instance_id": "i-1", "zone": "us-east-1a"}, public_ip="198.51.100.7", generation=3,
        operation_id="65a000000000000000000001", simulated=True,
        health=Health(last_report_at=BASE, last_report={"cpu_percent": 3.5}),
        autostop_state=AutostopState(idle_since=BASE, warning="no report for 12 min"),
        drift={"differences": [{"resource": "aws:ec2/instance:Instance::vm", "property": "instanceType", "expected": "a",
                                "actual": "b"}], "checked_at": BASE},
        preempted_at=BASE, preemption_source="refresh", zone="us-east-1a",
        zone_attempts=[{"zone": "us-east-1b", "outcome": "no capacity", "error": "x", "region": "us-east-1"}],
        created_at=BASE,
    )
    for instance in (bare, full):
        instance.save()
    # As a record stored before most fields existed: only what every version wrote (and the listing keys).
    old = Instance(name="old", owner="dee", spec={"cloud": "aws"}, cloud="aws", region="r", created_at=BASE)
    old.set_list_keys()
    kept = ("_id", "name", "owner", "spec", "cloud", "region", "status", "created_at", "updated_at", "list_key_name",
            "list_key_created")
    Instance._get_collection().insert_one({key: value for key, value in old.to_mongo().items() if key in kept})
    page = orch_of().list_instances(Principal("dee", "user"), limit=10)
    assert [row.name for row in page.items] == ["bare", "full", "old"]
    assert {type(row) for row in page.items} == {StoredInstance}
    for row in page.items:
        document = Instance.objects.get(id=row.id)
        shown = [instance_json(item, 30, None, stack_command="pulumi", operation=None) for item in (row, document)]
        assert msgspec.to_builtins(shown[0]) == msgspec.to_builtins(shown[1]), row.name
        assert (row.stack_name, row.lock_key, row.agent_identity) == (
            document.stack_name, document.lock_key, document.agent_identity)
    with pytest.raises(AttributeError):
        page.items[0].not_a_field
