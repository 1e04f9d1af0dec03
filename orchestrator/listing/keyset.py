"""Keyset pagination: a page is "the next `limit` rows after this row in this order".

A cursor is the last row's sort value and document id, so reading page 200 costs
what reading page 1 costs (no skip over the rows before it), and rows created or
deleted meanwhile neither repeat nor vanish from the pages that follow. The id
breaks ties: names repeat across owners and across a name's deleted incarnations.

The cursor is opaque to clients (base64url JSON), and checked when it comes back:
a cursor for another sort order, or one that is not ours, is a 422 naming `cursor`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from dataclasses import dataclass

from bson import ObjectId
from bson.errors import InvalidId

# sort parameter -> (field, direction)
SORTS: dict[str, tuple[str, int]] = {
    "name": ("name", 1),
    "-name": ("name", -1),
    "created_at": ("created_at", 1),
    "-created_at": ("created_at", -1),
}
DEFAULT_SORT = "name"
# A cursor carries one name (at most 63 characters) or one time, an id and the sort: well under this.
MAX_CURSOR_CHARS = 512
# `q` is matched as literal text; longer than any name is pointless.
MAX_QUERY_CHARS = 100
SORT_PATTERN = "^(" + "|".join(re.escape(key) for key in SORTS) + ")$"

# One owner's instances in a sort order, as one indexed string per instance (Instance.list_keys):
# "owner state value id", state "a" (not deleted) or "d" (deleted). A page is a range of that
# string, which the embedded store serves from its single-field index (listing/key_range_engine.py)
# as a MongoDB server does. The separator sorts below every character of owner names, instance
# names and times, so the strings order as the tuples (owner, state, value, id) do.
KEY_FIELDS = {"name": "list_key_name", "created_at": "list_key_created"}
KEY_SEPARATOR = " "
KEY_PAST_SEPARATOR = chr(ord(KEY_SEPARATOR) + 1)
LISTED, DELETED = "a", "d"


def key_text(value: object) -> str:
    """A sort value as key text; times to the millisecond, as the store keeps them (fixed width: ordered)."""
    if isinstance(value, dt.datetime):
        return f"{value:%Y-%m-%dT%H:%M:%S}.{value.microsecond // 1000:03d}"
    return str(value)


def list_key(owner: str, deleted: bool, value: object, object_id: ObjectId) -> str:
    state = DELETED if deleted else LISTED
    return KEY_SEPARATOR.join((owner, state, key_text(value), str(object_id)))


def incarnations_range(owner: str, name: str, deleted: bool) -> dict:
    """The filter for the (deleted or not) incarnations of `owner`'s `name` on the name key, in their ids' order."""
    prefix = KEY_SEPARATOR.join((owner, DELETED if deleted else LISTED, name)) + KEY_SEPARATOR
    return {KEY_FIELDS["name"]: {"$gt": prefix, "$lt": prefix[:-1] + KEY_PAST_SEPARATOR}}


class CursorError(ValueError):
    """A cursor that is malformed, not ours, or for another sort order."""


@dataclass(frozen=True)
class Keyset:
    field: str
    direction: int

    @classmethod
    def for_sort(cls, sort: str) -> Keyset:
        field, direction = SORTS[sort]
        return cls(field, direction)

    @property
    def sort_name(self) -> str:
        return ("-" if self.direction < 0 else "") + self.field

    def order(self) -> tuple[str, str]:
        """The sort, as mongoengine's order_by takes it (ties broken by the id, in the same direction)."""
        sign = "-" if self.direction < 0 else ""
        return sign + self.field, sign + "id"

    def after(self, cursor: str) -> dict:
        """The filter for the rows after the cursor's row in this order."""
        value, last_id = self.decode(cursor)
        beyond = "$gt" if self.direction > 0 else "$lt"
        return {"$or": [{self.field: {beyond: value}}, {self.field: value, "_id": {beyond: last_id}}]}

    @property
    def key_field(self) -> str:
        return KEY_FIELDS[self.field]

    def key_order(self) -> str:
        """The sort on the key field (its id part breaks ties in the same direction)."""
        return ("-" if self.direction < 0 else "") + self.key_field

    def key_range(self, owner: str, deleted: bool, cursor: str | None = None) -> dict:
        """The filter for one owner's (deleted or not) rows, after the cursor's row when one is given."""
        state = DELETED if deleted else LISTED
        prefix = KEY_SEPARATOR.join((owner, state)) + KEY_SEPARATOR
        bounds = {"$gt": prefix, "$lt": prefix[:-1] + KEY_PAST_SEPARATOR}
        if cursor:
            value, last_id = self.decode(cursor)
            bounds["$gt" if self.direction > 0 else "$lt"] = list_key(owner, deleted, value, last_id)
        return {self.key_field: bounds}

    def encode(self, document) -> str:
        """The cursor for the rows after this document (a mongoengine document)."""
        value = getattr(document, self.field)
        if isinstance(value, dt.datetime):
            value = value.isoformat()
        payload = json.dumps([self.sort_name, value, str(document.id)], separators=(",", ":"))
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")

    def decode(self, cursor: str) -> tuple[object, ObjectId]:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise CursorError(f"cursor: longer than {MAX_CURSOR_CHARS} characters; pass next_cursor as it came")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            sort, value, last_id = json.loads(raw)
        except (binascii.Error, ValueError, TypeError):
            raise CursorError("cursor: not a cursor this service gave; pass next_cursor as it came") from None
        if sort != self.sort_name:
            raise CursorError(f"cursor: it is for sort={sort}, this request asks sort={self.sort_name}")
        try:
            last_id = ObjectId(last_id)
            if self.field == "created_at":
                value = dt.datetime.fromisoformat(value)
            elif not isinstance(value, str):
                raise TypeError("not a name")
        except (ValueError, TypeError, InvalidId):
            raise CursorError("cursor: not a cursor this service gave; pass next_cursor as it came") from None
        return value, last_id


def name_contains(text: str) -> dict:
    """A filter on names containing `text` as literal characters (escaped: never a pattern)."""
    return {"name": {"$regex": re.escape(text)}}
