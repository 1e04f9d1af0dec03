"""Property values: the engine's in-memory form, the checkpoint's form, and what commands show.

In memory a secret is the wire form `{SECRET_SIG: SECRET_VALUE, "value": v}`. In a checkpoint it is
`{SECRET_SIG: SECRET_VALUE, "ciphertext": "<encrypted JSON of v>"}`, and in `stack export
--show-secrets` `{SECRET_SIG: SECRET_VALUE, "plaintext": "<JSON of v>"}`, as with the real CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from .passphrase import Crypter

SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE = "1b47061264138c4ac30d75fd1eb44270"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
MASKED = "[secret]"


def is_secret(value) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_VALUE


def make_secret(value) -> dict:
    return value if is_secret(value) else {SECRET_SIG: SECRET_VALUE, "value": value}


def map_secrets(value, transform: Callable[[dict], object]):
    """`value` with every secret object replaced by `transform(secret)`."""
    if is_secret(value):
        return transform(value)
    if isinstance(value, dict):
        return {key: map_secrets(item, transform) for key, item in value.items()}
    if isinstance(value, list):
        return [map_secrets(item, transform) for item in value]
    return value


def contains_secret(value) -> bool:
    found = []
    map_secrets(value, found.append)
    return bool(found)


def plain(value):
    """Secrets unwrapped to their values (what a provider sees)."""
    return map_secrets(value, lambda secret: plain(secret["value"]))


def masked(value):
    return map_secrets(value, lambda secret: MASKED)


def seal(value, crypter: Callable[[], Crypter]):
    """In-memory form -> checkpoint form (secrets encrypted)."""
    return map_secrets(
        value,
        lambda secret: {SECRET_SIG: SECRET_VALUE, "ciphertext": crypter().encrypt(json.dumps(secret["value"]))},
    )


def unseal(value, crypter: Callable[[], Crypter]):
    """Checkpoint (or exported) form -> in-memory form."""

    def open_secret(secret: dict):
        if "ciphertext" in secret:
            return make_secret(json.loads(crypter().decrypt(secret["ciphertext"])))
        if "plaintext" in secret:
            return make_secret(json.loads(secret["plaintext"]))
        return secret

    return map_secrets(value, open_secret)


def reveal(value, crypter: Callable[[], Crypter]):
    """Checkpoint form -> the `--show-secrets` export form (secrets as JSON plaintext)."""

    def show(secret: dict):
        opened = unseal(secret, crypter)
        return {SECRET_SIG: SECRET_VALUE, "plaintext": json.dumps(opened["value"])}

    return map_secrets(value, show)
