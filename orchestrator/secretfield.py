"""A mongoengine string field stored encrypted with the store key (Fernet).

Fernet is AES-128-CBC with an HMAC-SHA256 over the ciphertext, so a value
read back is either the one written with this key or an error. The key comes
from Settings.store_key (ORCH_STORE_KEY, or the `store-key` file in the data
dir); `db.connect` installs it before any document is read or written.
"""

from __future__ import annotations

import threading

import mongoengine as me
from cryptography.fernet import Fernet, InvalidToken

# Marks a stored value as encrypted; a value without it was written before encryption
# and is read as it is (`db.connect` encrypts those: db.encrypt_plaintext_secrets).
ENCRYPTED_PREFIX = "fernet:"


class StoreKeyError(RuntimeError):
    """The store key is missing, or is not the key an encrypted value was written with."""


_key_lock = threading.Lock()
_fernet: Fernet | None = None


def install_store_key(key: bytes) -> None:
    global _fernet
    with _key_lock:
        _fernet = Fernet(key)


def _cipher() -> Fernet:
    if _fernet is None:
        raise StoreKeyError("no store key installed: connect with orchestrator.db.connect(settings) first")
    return _fernet


class EncryptedStringField(me.StringField):
    """A string kept encrypted in MongoDB and plain in Python."""

    def to_mongo(self, value):
        if value is None:
            return None
        return ENCRYPTED_PREFIX + _cipher().encrypt(str(value).encode()).decode()

    def to_python(self, value):
        if not isinstance(value, str) or not value.startswith(ENCRYPTED_PREFIX):
            return value
        try:
            return _cipher().decrypt(value.removeprefix(ENCRYPTED_PREFIX).encode()).decode()
        except InvalidToken:
            raise StoreKeyError(
                f"{self.name} cannot be decrypted with this store key: ORCH_STORE_KEY (or the data dir's "
                "store-key file) differs from the one that wrote it"
            ) from None

    def prepare_query_value(self, op, value):
        # Fernet output is randomised: an encrypted value can be set or cleared, never matched.
        if op not in ("set", "setOnInsert") and value is not None:
            raise me.InvalidQueryError(f"{self.name} is encrypted: it can be set or cleared, not queried")
        return self.to_mongo(value)
