"""Connecting to MongoDB: ORCH_MONGODB_URL, or the embedded store under the data dir."""

from __future__ import annotations

from urllib.parse import urlparse, urlunparse

import mongoengine
from pymongo.errors import PyMongoError

from orchestrator.embedded_store import EmbeddedStore
from orchestrator.models import (
    Instance, Lock, MetricBatch, MetricBucket, MetricRollup, Operation, SigninCode, Snapshot, UserToken,
    upgrade_list_keys, upgrade_names,
)
from orchestrator.secretfield import ENCRYPTED_PREFIX, install_store_key
from orchestrator.settings import Settings, SettingsError, redact_url

DEFAULT_DB = "orch"


def _database_name(url: str) -> str:
    path = urlparse(url).path.strip("/")
    return path or DEFAULT_DB


def url_with_database(url: str, database: str) -> str:
    """url naming database as its path, its query options (credential source...) kept."""
    return urlunparse(urlparse(url)._replace(path=f"/{database}"))


def connect(settings: Settings) -> EmbeddedStore | None:
    """Connect mongoengine's default alias; start the embedded store when no URL is set.

    Returns the embedded store (to stop on shutdown) or None.
    """
    install_store_key(settings.store_key)
    store = None
    if settings.mongodb_url is None:
        store = EmbeddedStore(settings.data_dir / "store.sqlite3")
        try:
            store.start()
        except RuntimeError as error:
            raise SettingsError(f"embedded store (ORCH_MONGODB_URL unset) failed: {error}") from None
    url = store_url(settings, store)
    connect_url(url)
    try:
        mongoengine.get_db().command("ping")
        for document in (Instance, Snapshot, Operation, Lock, MetricBatch, MetricBucket, MetricRollup, UserToken, SigninCode):
            document.ensure_indexes()
        upgrade_names()
        upgrade_list_keys()
        encrypt_plaintext_secrets()
    except PyMongoError as error:
        raise SettingsError(
            f"MongoDB at ORCH_MONGODB_URL={redact_url(url)} is unreachable: {error.__class__.__name__}"
        ) from None
    return store


def store_url(settings: Settings, store: EmbeddedStore | None) -> str:
    """The URL connect() connects to: ORCH_MONGODB_URL, else the embedded store's (its credential included)."""
    return settings.mongodb_url if store is None else store.url_for(DEFAULT_DB)


def connect_url(url: str) -> None:
    """mongoengine's default alias on url (its path names the database); connects on first use."""
    mongoengine.disconnect_all()
    mongoengine.connect(
        db=_database_name(url), host=url, uuidRepresentation="standard", serverSelectionTimeoutMS=5000, tz_aware=False
    )


def encrypt_plaintext_secrets() -> int:
    """Encrypt admin keys stored before they were encrypted at rest; returns how many."""
    collection = Instance._get_collection()
    field = Instance._fields["admin_private_key"]
    count = 0
    for row in collection.find({"admin_private_key": {"$type": "string"}}, {"admin_private_key": True}):
        value = row["admin_private_key"]
        if not value.startswith(ENCRYPTED_PREFIX):
            # Only if unchanged meanwhile: a concurrent writer's value wins.
            result = collection.update_one(
                {"_id": row["_id"], "admin_private_key": value}, {"$set": {"admin_private_key": field.to_mongo(value)}}
            )
            count += result.modified_count
    return count


def ping() -> bool:
    try:
        mongoengine.get_db().command("ping")
        return True
    except PyMongoError:
        return False
