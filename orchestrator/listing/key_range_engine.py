"""The embedded store's engine, with one more read plan: a string key range served from its index.

mongoeco 4.11 (the embedded store) plans `find` and `count_documents` without its own
single-field index fast paths (only `explain` shows them): a filter like
`{list_key: {$gt: a, $lt: b}, status: "running"}` sorted by `list_key` becomes SQL that
evaluates json_extract over every document of the collection, then checks the sort
field's types with another scan, so a page of 50 costs a scan of the collection.

This engine serves that shape from the field's single-field index (mongoeco keeps one
`scalar_index_entries` row per document for it, ordered by the value): the string range
is an index range, the sort is the index order, the other conditions are mongoeco's own
SQL translation checked on each row the range reads, and the limit stops the read. An
equality on a string (`{claim: "alice/web"}`: a name's live instance) is the range of one
value; a sparse index serves both, since no string matches a document without the field.
Any other shape, or one this plan cannot translate exactly, goes to mongoeco's plan unchanged.
A real MongoDB serves the same query from the same index (the listing sends nothing
engine-specific).

And one more: `{_id: {$in: [...]}}` of ObjectIds or strings (a list page's operations, the metrics
buckets a maintenance pass appends to or a read looks up) is read by primary key; mongoeco scans the
collection with one json_each subquery per value and row.

A count of a range with no other condition (a user's listing's `total`) counts the index entries
alone: mongoeco counts the rows of the find's query, which reads every document of the range.

A find that leaves out some top-level fields (the list's projection: no keys, no listing keys)
drops them from the document it has just decoded; mongoeco's own projection deep-copies each
document and then walks it to estimate its size, which doubled a list page's time in the store.

Writes deliver no change events (below): nothing can watch this store.

Each read of more than one document runs on a connection of its own (its own snapshot); mongoeco
opens a new SQLite connection for each and closes it after. This engine keeps the closed ones (a
few) and hands them to the next reads: opening one (the file, WAL mode, the index catalog read
again) cost about a seventh of the store's time on a metrics read.
"""

from __future__ import annotations

import sqlite3
import threading

from mongoeco.core.query_plan import (
    AndCondition,
    EqualsCondition,
    GreaterThanCondition,
    GreaterThanOrEqualCondition,
    InCondition,
    LessThanCondition,
    LessThanOrEqualCondition,
)
from mongoeco.core.codec import DocumentCodec
from mongoeco.core.filtering import QueryEngine
from mongoeco.engines._sqlite_connection import SQLiteConnection
from mongoeco.engines._sqlite_reader import _serialized_document_size_estimate
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.engines.sqlite_planner import SQLiteReadExecutionPlan
from mongoeco.types import ObjectId

# Reader connections kept open between reads (the store runs one executor worker; a cursor read in
# several batches holds its reader until its last batch).
MAX_IDLE_READERS = 8
# Ids per primary-key read (SQLite binds at most 32,766 parameters); more go to mongoeco's plan.
MAX_IDS_BY_KEY = 1000
# `_id` types whose storage key is exact (the value with its type): read by primary key, nothing else can
# equal them. The engine's own ObjectId class, as it decodes them from the wire and from its clients.
EXACT_KEY_TYPES = (ObjectId, str)

_BOUND_OPERATORS = {
    EqualsCondition: "=",
    GreaterThanCondition: ">",
    GreaterThanOrEqualCondition: ">=",
    LessThanCondition: "<",
    LessThanOrEqualCondition: "<=",
}


def _conjuncts(plan) -> list:
    """The conditions a document must all meet (`{f: {$gt: a, $lt: b}, g: c}` nests one AND in another)."""
    if isinstance(plan, AndCondition):
        return [leaf for clause in plan.clauses for leaf in _conjuncts(clause)]
    return [plan]


def _id_equality(plan) -> EqualsCondition | None:
    """The `_id` equality a conjunction requires, where that value's storage key is exact; None otherwise."""
    for clause in _conjuncts(plan):
        if isinstance(clause, EqualsCondition) and clause.field == "_id" and type(clause.value) in EXACT_KEY_TYPES:
            return clause
    return None


def _top_level_exclusions(projection) -> frozenset[str] | None:
    """The fields a projection leaves out when it only leaves out top-level fields (`{a: 0, b: 0}`), else None."""
    if not isinstance(projection, dict) or not projection:
        return None
    if not all(
        type(key) is str and key and "." not in key and not key.startswith("$")
        and type(value) in (int, bool) and value in (0, False)
        for key, value in projection.items()
    ):
        return None
    return frozenset(projection)


def _sql_plan(semantics, sql: str, params: list) -> SQLiteReadExecutionPlan:
    """A plan that runs `sql` (the find's limit appended)."""
    if semantics.limit is not None:
        sql += " LIMIT ?"
        params = [*params, int(semantics.limit)]
    return SQLiteReadExecutionPlan(
        semantics=semantics, strategy="sql", execution_lineage=(), physical_plan=(),
        use_sql=True, sql=sql, params=tuple(params),
    )


class _ReaderConnection(SQLiteConnection):
    """A reader's connection whose close() ends its read transaction and keeps it for the next reader."""

    readers: _IdleReaders | None = None

    def close(self) -> None:
        if self.readers is None or not self.readers.keep(self):
            super().close()


class _IdleReaders:
    def __init__(self) -> None:
        self._idle: list[_ReaderConnection] = []
        self._lock = threading.Lock()

    def take(self) -> _ReaderConnection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def keep(self, connection: _ReaderConnection) -> bool:
        """Keep a closed reader's connection: False (close it) when the pool is full or it cannot be reset."""
        try:
            connection.rollback()  # its snapshot ends: the next reader's BEGIN takes a fresh one
        except sqlite3.Error:
            return False
        with self._lock:
            if len(self._idle) >= MAX_IDLE_READERS:
                return False
            self._idle.append(connection)
            return True

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.readers = None
            connection.close()


class KeyRangeSQLiteEngine(SQLiteEngine):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._idle_readers = _IdleReaders()
        # Set between a reader's check for a dedicated connection and its opening of it (same thread,
        # under the engine's lock): only that opening takes a kept connection.
        self._opening_reader = threading.local()
        # Set while this thread runs a count: a key range plan then need not read the documents.
        self._counting = threading.local()

    # No change delivery. The wire server answers `$changeStream` with "Unsupported aggregation stage", so
    # no client of the store can watch; yet mongoeco delivered every write's change to its in-process change
    # hub: a lease, a heartbeat thread started and joined, a checkpoint transaction per write (store CPU per
    # bounded `$push`, interleaved A/B: 5.85-6.51 ms with it, 2.84-4.75 ms without; docs/DESIGN.md). With no
    # consumer registered, the change outbox a write appends to is emptied by that same write, as once
    # every change was delivered.
    def register_change_consumer(self, consumer_id: str, *, initial_checkpoint=None, durable: bool = False) -> int:
        return 0

    def dispatch_committed_changes(self, consumer_id: str, consumer) -> None:
        return None

    def _can_use_dedicated_reader(self, context) -> bool:
        dedicated = super()._can_use_dedicated_reader(context)
        self._opening_reader.active = dedicated
        return dedicated

    def _create_sqlite_connection(self) -> sqlite3.Connection:
        if not getattr(self._opening_reader, "active", False):
            return super()._create_sqlite_connection()
        self._opening_reader.active = False
        connection = self._idle_readers.take()
        if connection is None:
            connection = sqlite3.connect(self._path, check_same_thread=False, factory=_ReaderConnection)
            connection.execute("PRAGMA journal_mode=WAL")  # as mongoeco opens its connections
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.readers = self._idle_readers
        return connection

    def _disconnect_sync(self) -> None:
        super()._disconnect_sync()
        if self._connection is None:
            self._idle_readers.close_all()

    def _count_matching_documents_sync(self, db_name, coll_name, semantics, context):
        self._counting.active = True
        try:
            return super()._count_matching_documents_sync(db_name, coll_name, semantics, context)
        finally:
            self._counting.active = False

    def _project_sql_scan_rows(self, rows, semantics, reader):
        excluded = _top_level_exclusions(semantics.projection)
        if excluded is None or self._codec is not DocumentCodec:
            return super()._project_sql_scan_rows(rows, semantics, reader)

        def without_excluded(payload: str):
            document = self._deserialize_document(payload)  # freshly decoded: this read's own to change
            for field in excluded & document.keys():
                del document[field]
            return reader.attach_size_hint(document, _serialized_document_size_estimate(payload))

        return (without_excluded(payload) for (payload,) in rows)

    def _decode_codec_payload(self, payload, *, preserve_bson_wrappers: bool):
        # mongoeco inspects the codec's signature for every document it decodes; DocumentCodec's is known.
        if self._codec is DocumentCodec:
            return DocumentCodec.decode(payload, preserve_bson_wrappers=preserve_bson_wrappers)
        return super()._decode_codec_payload(payload, preserve_bson_wrappers=preserve_bson_wrappers)

    def _compile_read_execution_plan(self, db_name, coll_name, semantics, *, select_clause="document", hint=None):
        if select_clause == "document" and hint is None:
            plan = self._id_set_plan(db_name, coll_name, semantics) or self._key_range_plan(
                db_name, coll_name, semantics
            )
            if plan is not None:
                return plan
        return super()._compile_read_execution_plan(
            db_name, coll_name, semantics, select_clause=select_clause, hint=hint
        )

    def _id_set_plan(self, db_name: str, coll_name: str, semantics) -> SQLiteReadExecutionPlan | None:
        """`_id $in` ObjectIds or strings by primary key (an id is never an array, and the storage key of
        either is exact: the value with its type, as embedded_store._index_id_uniqueness_check relies on)."""
        query = semantics.query_plan
        if (
            not isinstance(query, InCondition)
            or query.field != "_id"
            or not 0 < len(query.values) <= MAX_IDS_BY_KEY
            or not all(type(value) in EXACT_KEY_TYPES for value in query.values)
            or semantics.sort
            or semantics.skip
            or semantics.collation is not None
            or semantics.text_query is not None
            or self._dialect_requires_python_fallback(semantics.dialect)
        ):
            return None
        keys = sorted({self._storage_key(value) for value in query.values})
        sql = (
            "SELECT document FROM documents WHERE db_name = ? AND coll_name = ? "
            f"AND storage_key IN ({', '.join('?' * len(keys))})"
        )
        return _sql_plan(semantics, sql, [db_name, coll_name, *keys])

    def _key_range_plan(self, db_name: str, coll_name: str, semantics) -> SQLiteReadExecutionPlan | None:
        """The index-range plan for `semantics`, or None where it does not apply exactly."""
        if (
            semantics.collation is not None
            or semantics.text_query is not None
            or semantics.skip
            or self._dialect_requires_python_fallback(semantics.dialect)
        ):
            return None
        sort = semantics.sort
        if sort is not None and (len(sort) != 1 or sort[0][1] not in (1, -1)):
            return None
        clauses = _conjuncts(semantics.query_plan)
        string_bounds = [c for c in clauses if type(c) in _BOUND_OPERATORS and type(c.value) is str and "." not in c.field]
        if sort:
            field, index = sort[0][0], self._string_index(db_name, coll_name, sort[0][0])
        else:  # the first bounded field with an index
            field, index = next(
                ((c.field, found) for c in string_bounds if (found := self._string_index(db_name, coll_name, c.field))),
                (None, None),
            )
        bounds = [c for c in string_bounds if c.field == field]
        scope = self._string_entries(db_name, coll_name, field, index, self._require_connection()) if bounds else None
        if scope is None:
            return None
        where, params = scope
        residual = [c for c in clauses if not any(c is bound for bound in bounds)]
        for bound in bounds:
            # A string's index entry is the string itself, compared as SQLite compares text
            # (bytewise UTF-8), which is how MongoDB orders strings without a collation.
            where.append(f"scalar_index_entries.element_key {_BOUND_OPERATORS[type(bound)]} ?")
            params.append(bound.value)
        if residual:
            rest = residual[0] if len(residual) == 1 else AndCondition(tuple(residual))
            if self._residual_needs_python(db_name, coll_name, rest):
                return None
            try:
                rest_sql, rest_params = self._translate_query_plan_with_multikey(db_name, coll_name, rest)
            except (NotImplementedError, TypeError):
                return None
            where.append(f"({rest_sql})")
            params.extend(rest_params)
        if not residual and getattr(self._counting, "active", False):
            # Each document has one entry in the range (a string, no array in the field): count them.
            sql = f"SELECT 1 {self._index_entries(index)} WHERE {' AND '.join(where)}"
            return _sql_plan(semantics, sql, params[2:])  # without the join's two parameters
        order = "DESC" if sort and sort[0][1] == -1 else "ASC"
        sql = (
            f"SELECT documents.document {self._index_join(index)} WHERE {' AND '.join(where)} "
            f"ORDER BY scalar_index_entries.element_key {order}, scalar_index_entries.storage_key {order}"
        )
        return _sql_plan(semantics, sql, params)

    def _select_first_document_for_plan(self, db_name: str, coll_name: str, plan, *, hint=None, context=None):
        """The first document meeting one top-level equality: for a string, from the field's index; and
        the document meeting a conjunction that names its `_id`: read by primary key, then checked.

        mongoeco's own lookup (a find with limit 1, update_one, delete_one, find_one_and_update) skips a
        sparse index, so a value no document has (a free name's claim) costs a scan of the collection;
        and it reads by `_id` only when the filter is the `_id` alone, so `{_id: x, status: "queued"}`
        (claiming an operation) or `{_id: x, "logs.999": {$exists: false}}` (appending to its log)
        decoded every operation in turn: 47 and 75 ms among 1,000 operations, 4.7 ms by `_id`.
        """
        if hint is None and (by_id := _id_equality(plan)) is not None and by_id is not plan:
            selected = super()._select_first_document_for_plan(db_name, coll_name, by_id, context=context)
            # `_id` is unique: the one document with it is the first meeting the conjunction, or none is.
            return selected if selected is not None and QueryEngine.match_plan(selected[1], plan) else None
        if not (isinstance(plan, EqualsCondition) and type(plan.value) is str and "." not in plan.field and hint is None):
            return super()._select_first_document_for_plan(db_name, coll_name, plan, hint=hint, context=context)
        connection = self._require_connection(context)
        with self._bind_connection(connection):
            index = self._string_index(db_name, coll_name, plan.field)
            scope = self._string_entries(db_name, coll_name, plan.field, index, connection)
            if scope is None:
                return super()._select_first_document_for_plan(db_name, coll_name, plan, hint=hint, context=context)
            where, params = scope
            row = connection.execute(
                f"SELECT documents.storage_key, documents.document {self._index_join(index)} "
                f"WHERE {' AND '.join(where)} AND scalar_index_entries.element_key = ? "
                "ORDER BY scalar_index_entries.storage_key LIMIT 1",
                (*params, plan.value),
            ).fetchone()
        return None if row is None else (row[0], self._deserialize_document(row[1]))

    def _string_entries(self, db_name: str, coll_name: str, field: str, index, connection):
        """(WHERE terms, their parameters) selecting the string entries of `field`'s `index`, the join's
        two parameters first; None where the index cannot answer exactly (an array in the field, no collection)."""
        if index is None or self._field_is_top_level_array_in_collection(db_name, coll_name, field):
            return None
        collection_id = self._lookup_collection_id(connection, db_name, coll_name)
        if collection_id is None:
            return None
        where = ["scalar_index_entries.collection_id = ?", "scalar_index_entries.index_name = ?",
                 "scalar_index_entries.type_score = ?"]
        return where, [db_name, coll_name, collection_id, index["name"], self._multikey_type_score("string")]

    def _index_entries(self, index) -> str:
        return f"FROM scalar_index_entries INDEXED BY {self._quote_identifier(str(index['scalar_physical_name']))}"

    def _index_join(self, index) -> str:
        """FROM an index's entries joined to their documents (the collection's names are its two parameters)."""
        return (
            f"{self._index_entries(index)} "
            "JOIN documents ON documents.db_name = ? AND documents.coll_name = ? "
            "AND documents.storage_key = scalar_index_entries.storage_key"
        )

    def _string_index(self, db_name: str, coll_name: str, field: str):
        """The single-field ascending index on `field` with scalar entries, sparse or not (not partial, not hidden)."""
        for index in self._load_indexes(db_name, coll_name):
            if (
                index["key"] == [(field, 1)]
                and not index.get("partial_filter_expression")
                and not index.get("hidden")
                and index.get("scalar_physical_name")
            ):
                return index
        return None

    def _residual_needs_python(self, db_name: str, coll_name: str, plan) -> bool:
        """The checks mongoeco's own planner makes before it trusts its SQL translation of a filter."""
        checks = (
            self._plan_has_array_traversing_paths,
            self._plan_requires_python_for_dbref_paths,
            self._plan_requires_python_for_array_comparisons,
            self._plan_requires_python_for_undefined,
            self._plan_requires_python_for_bytes,
            self._plan_requires_python_for_decimal_numeric,
        )
        return any(check(db_name, coll_name, plan) for check in checks)
