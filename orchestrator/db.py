"""Connecting to MongoDB: ORCH_MONGODB_URL, or the embedded store under the data dir."""

from __future__ import annotations

from urllib.parse import urlparse

import mongoengine
from pymongo.errors import PyMongoError

from orchestrator.embedded_store import EmbeddedStore
from orchestrator.models import Instance, Lock, MetricBatch, Operation, Snapshot, upgrade_names
from orchestrator.settings import Settings, SettingsError

DEFAULT_DB = "orch"


def _database_name(url: str) -> str:
    path = urlparse(url).path.strip("/")
    return path or DEFAULT_DB


def connect(settings: Settings) -> EmbeddedStore | None:
    """Connect mongoengine's default alias; start the embedded store when no URL is set.

    Returns the embedded store (to stop on shutdown) or None.
    """
    store = None
    url = settings.mongodb_url
    if url is None:
        store = EmbeddedStore(settings.data_dir / "store.sqlite3")
        try:
            url = store.start() + DEFAULT_DB
        except RuntimeError as error:
            raise SettingsError(f"embedded store (ORCH_MONGODB_URL unset) failed: {error}") from None
    mongoengine.disconnect_all()
    mongoengine.connect(
        db=_database_name(url), host=url, uuidRepresentation="standard", serverSelectionTimeoutMS=5000, tz_aware=False
    )
    try:
        mongoengine.get_db().command("ping")
        for document in (Instance, Snapshot, Operation, Lock, MetricBatch):
            document.ensure_indexes()
        upgrade_names()
    except PyMongoError as error:
        raise SettingsError(f"MongoDB at ORCH_MONGODB_URL={url} is unreachable: {error.__class__.__name__}") from None
    return store


def ping() -> bool:
    try:
        mongoengine.get_db().command("ping")
        return True
    except PyMongoError:
        return False
