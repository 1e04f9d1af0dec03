"""Passphrase secrets, in the format of Pulumi's passphrase secrets provider.

The salt state is `v1:<base64 salt>:v1:<base64 nonce>:<base64 ciphertext of "pulumi">`, a value is
`v1:<base64 nonce>:<base64 ciphertext>`, AES-256-GCM with a key from PBKDF2-SHA256 (1,000,000
rounds) of PULUMI_CONFIG_PASSPHRASE. Deriving the key is slow, so it happens only when a secret
is actually encrypted or decrypted.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PBKDF2_ROUNDS = 1_000_000
CHECK_MESSAGE = "pulumi"


class PassphraseError(Exception):
    pass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _passphrase() -> str:
    if "PULUMI_CONFIG_PASSPHRASE" in os.environ:
        return os.environ["PULUMI_CONFIG_PASSPHRASE"]
    path = os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().rstrip("\n")
    raise PassphraseError(
        "passphrase must be set with PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE environment variables"
    )


class Crypter:
    """Encrypts and decrypts secret values for one stack (one salt)."""

    def __init__(self, salt_state: str) -> None:
        parts = salt_state.split(":", 2)
        if len(parts) != 3 or parts[0] != "v1":
            raise PassphraseError(f"unknown encryption salt format: {salt_state!r}")
        self.salt_state = salt_state
        self._salt = base64.b64decode(parts[1])
        self._check_value = parts[2]

    @classmethod
    def create(cls) -> Crypter:
        salt = os.urandom(8)
        key = hashlib.pbkdf2_hmac("sha256", _passphrase().encode(), salt, PBKDF2_ROUNDS, 32)
        check = _encrypt_with(key, CHECK_MESSAGE)
        crypter = cls(f"v1:{_b64(salt)}:{check}")
        crypter.__dict__["_key"] = key
        return crypter

    @functools.cached_property
    def _key(self) -> bytes:
        key = hashlib.pbkdf2_hmac("sha256", _passphrase().encode(), self._salt, PBKDF2_ROUNDS, 32)
        try:
            _decrypt_with(key, self._check_value)
        except Exception as error:  # noqa: BLE001 - cryptography raises InvalidTag without a message
            raise PassphraseError("incorrect passphrase") from error
        return key

    def encrypt(self, plaintext: str) -> str:
        return _encrypt_with(self._key, plaintext)

    def decrypt(self, ciphertext: str) -> str:
        return _decrypt_with(self._key, ciphertext)


def _encrypt_with(key: bytes, plaintext: str) -> str:
    nonce = os.urandom(12)
    return f"v1:{_b64(nonce)}:{_b64(AESGCM(key).encrypt(nonce, plaintext.encode(), None))}"


def _decrypt_with(key: bytes, value: str) -> str:
    version, nonce, ciphertext = value.split(":")
    if version != "v1":
        raise PassphraseError(f"unknown ciphertext version {version!r}")
    return AESGCM(key).decrypt(base64.b64decode(nonce), base64.b64decode(ciphertext), None).decode()
