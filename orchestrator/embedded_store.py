"""The embedded MongoDB-wire-compatible store (mongoeco over SQLite).

Used when ORCH_MONGODB_URL is unset: pymongo and mongoengine reach it over a
real TCP connection, exactly as they would reach a MongoDB server.

It listens on 127.0.0.1 only and requires SCRAM-SHA-256 authentication with
a credential generated at each start and known only to the process that
started it, so other local users cannot read or change the store over the
port. Its SQLite files are created 0600 in a 0700 directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import threading
from pathlib import Path
from urllib.parse import quote

from orchestrator.settings import PRIVATE_FILE_MODE, ensure_private_dir

STORE_USER = "orch"
AUTH_SOURCE = "admin"
AUTH_MECHANISM = "SCRAM-SHA-256"
PASSWORD_BYTES = 32
# SQLite creates its journal files with the database file's mode.
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _create_private_file(path: Path) -> None:
    """Create path 0600 if missing; narrow the SQLite files to 0600 if they exist wider."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE)
    os.close(fd)
    for suffix in SQLITE_SUFFIXES:
        existing = path.with_name(path.name + suffix)
        if existing.exists() and existing.stat().st_mode & 0o777 != PRIVATE_FILE_MODE:
            existing.chmod(PRIVATE_FILE_MODE)


def _index_id_uniqueness_check(engine_class: type) -> None:
    """Make an insert check its `_id` by the primary key alone when that is exact.

    mongoeco 4.11 answers every insert that arrives over the wire (and every upsert that
    inserts) by loading and decoding every document of the collection, to compare `_id`s
    by BSON equality (`scan_payload_id=True`), after it has already looked the `_id` up by
    its storage key. For an `_id` that is a string or an ObjectId the storage key lookup is
    exact (the key is the value with its type), so the scan only costs time in proportion
    to the collection: a new metrics bucket among 24,000 took seconds. Numeric and
    composite `_id`s (where 1 == 1.0 must collide) keep mongoeco's scan.
    """
    from bson import ObjectId

    original = engine_class._validate_document_against_unique_indexes
    if getattr(original, "_orch_exact_id_check", False):
        return

    def validate(self, db_name, coll_name, document, *, exclude_storage_key=None, skip_id_check=False,
                 scan_payload_id=False):
        if scan_payload_id and isinstance(document.get("_id"), (str, ObjectId)):
            scan_payload_id = False
        return original(self, db_name, coll_name, document, exclude_storage_key=exclude_storage_key,
                        skip_id_check=skip_id_check, scan_payload_id=scan_payload_id)

    validate._orch_exact_id_check = True
    engine_class._validate_document_against_unique_indexes = validate


def _wire_encoding_by_type() -> None:
    """Convert a reply's plain values for BSON by their exact type, before mongoeco's chain of checks.

    mongoeco passes every value of every reply (each string and number of each document) through
    `encode_wire_value`, which tries some twenty isinstance checks before it returns a plain value
    unchanged: 2.9 ms of a list page of 51 instances, more than pymongo's C encoder then takes for
    the whole page (0.5 ms). The values of the exact types it returns unchanged go straight through
    here, dicts and lists are walked here, and every other value (ObjectId, SON, the numeric
    wrappers, Binary, ...) is still converted by mongoeco's function, whose own recursion comes
    back here.
    """
    import datetime as dt

    from mongoeco.wire import bson_bridge, protocol

    if hasattr(protocol.encode_wire_value, "mongoeco_encode_wire_value"):
        return
    convert = bson_bridge.encode_wire_value
    unchanged = frozenset({str, int, float, bool, type(None), dt.datetime})

    def encode_wire_value(value):
        kind = type(value)
        if kind in unchanged:
            return value
        if kind is dict:
            return {key: encode_wire_value(item) for key, item in value.items()}
        if kind is list:
            return [encode_wire_value(item) for item in value]
        return convert(value)

    encode_wire_value.mongoeco_encode_wire_value = convert
    bson_bridge.encode_wire_value = encode_wire_value
    protocol.encode_wire_value = encode_wire_value


class EmbeddedStore:
    """Runs mongoeco's wire server on its own event loop in a daemon thread."""

    def __init__(self, sqlite_path: Path, host: str = "127.0.0.1", port: int = 0):
        self.sqlite_path = Path(sqlite_path)
        self.host = host
        self.port = port
        self._password = secrets.token_urlsafe(PASSWORD_BYTES)
        self._address: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def url_for(self, database: str = "") -> str:
        """A URL with this start's credential, for database (none: the server)."""
        assert self._address is not None, "start() the store first"
        host, port = self._address
        return (
            f"mongodb://{STORE_USER}:{quote(self._password, safe='')}@{host}:{port}/{database}"
            f"?authSource={AUTH_SOURCE}&authMechanism={AUTH_MECHANISM}"
        )

    def start(self, timeout: float = 20.0) -> str:
        """Start serving; returns the server's URL (with its credential)."""
        ensure_private_dir(self.sqlite_path.parent)
        _create_private_file(self.sqlite_path)
        self._thread = threading.Thread(target=self._run, name="embedded-store", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("embedded store did not start in time")
        if self._error is not None:
            raise RuntimeError(f"embedded store failed to start: {self._error}") from self._error
        return self.url_for()

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
        from mongoeco.wire.auth import WireAuthUser
        from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        from orchestrator.listing.key_range_engine import KeyRangeSQLiteEngine

        # mongoeco's SQLite engine, plus a read plan that serves a string key range (a listing
        # page) from the key's index (orchestrator/listing/key_range_engine.py), and inserts that
        # check a string or ObjectId `_id` by its key alone, and replies whose plain values are
        # converted by their type (both above).
        _index_id_uniqueness_check(KeyRangeSQLiteEngine)
        _wire_encoding_by_type()
        engine = KeyRangeSQLiteEngine(str(self.sqlite_path), executor_workers=1)
        user = WireAuthUser(
            STORE_USER, self._password, source=AUTH_SOURCE, mechanisms=(AUTH_MECHANISM,),
            roles=({"role": "root", "db": AUTH_SOURCE},),
        )
        proxy = AsyncMongoEcoProxyServer(engine=engine, host=self.host, port=self.port, auth_users=(user,))
        address = await proxy.start()
        self.port = address.port
        self._address = (address.host, address.port)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await proxy.close()


def main() -> None:
    """Run the store as its own process (tests share one between processes).

    Prints the server's URL, credential included, as its first line.
    """
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
