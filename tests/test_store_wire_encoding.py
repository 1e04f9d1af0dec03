"""The embedded store's reply encoding by type gives the bytes mongoeco's own conversion gives."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from unittest import mock

from bson import BSON
from hypothesis import given, settings
from hypothesis import strategies as st
from mongoeco.core.bson_scalars import BsonDecimal128, BsonDouble, BsonInt32, BsonInt64
from mongoeco.types import SON, Binary, Decimal128, ObjectId, Regex, Timestamp, UndefinedType
from mongoeco.wire import bson_bridge, protocol

from orchestrator.embedded_store import _wire_encoding_by_type

_wire_encoding_by_type()
BY_TYPE = protocol.encode_wire_value
MONGOECO = BY_TYPE.mongoeco_encode_wire_value

KEYS = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=8)
INT64 = st.integers(-(2**63), 2**63 - 1)
SCALARS = st.one_of(
    st.none(), st.booleans(), INT64, st.floats(allow_nan=False), st.text(max_size=12),
    st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2200, 1, 1)).map(
        lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    ),
    st.builds(ObjectId), st.uuids(), st.binary(max_size=8), st.binary(max_size=8).map(lambda data: Binary(data, subtype=0)),
    st.integers(-(2**31), 2**31 - 1).map(BsonInt32), INT64.map(BsonInt64), st.floats(allow_nan=False).map(BsonDouble),
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-(10**6), max_value=10**6).map(
        lambda value: Decimal128(decimal.Decimal(value))
    ),
    st.just(BsonDecimal128(decimal.Decimal("1.25"))),
    st.just(Regex("^a.c$", "i")), st.builds(Timestamp, st.integers(0, 2**31), st.integers(0, 2**31)), st.just(UndefinedType()),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(KEYS, children, max_size=4),
        st.dictionaries(KEYS, children, max_size=4).map(lambda items: SON(list(items.items()))),
    ),
    max_leaves=20,
)


def _by_mongoeco(value):
    """mongoeco's conversion with its recursion its own (not coming back to the by-type function)."""
    with mock.patch.object(bson_bridge, "encode_wire_value", MONGOECO):
        return MONGOECO(value)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(VALUES)
def test_a_reply_encodes_to_the_bytes_mongoecos_conversion_gives(value):
    assert BSON.encode({"reply": BY_TYPE(value)}) == BSON.encode({"reply": _by_mongoeco(value)})


def test_replies_go_through_the_by_type_conversion_which_leaves_other_types_to_mongoecos():
    assert bson_bridge.encode_wire_value is BY_TYPE  # mongoeco's own recursion comes back to it
    reply = {"cursor": {"firstBatch": [{"_id": ObjectId(), "n": BsonInt64(5), "id": uuid.uuid4(), "at": dt.datetime(2026, 1, 1)}]}}
    document = BY_TYPE(reply)["cursor"]["firstBatch"][0]
    assert document["at"] == dt.datetime(2026, 1, 1)
    assert type(document["_id"]).__module__.startswith("bson") and type(document["n"]).__name__ == "Int64"
    assert type(document["id"]).__name__ == "Binary"
