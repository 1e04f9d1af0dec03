"""Recorded user tokens: what `orch token create --user` issued, listing, revocation,
and the one-time sign-in codes `orch serve` prints, exchanged for such a token.

A user token is revoked by its jti. The API checks a jti against the set of
revoked, unexpired jtis, re-read from MongoDB at most every REVOKED_REFRESH_S,
so a revocation takes effect within that time on every service process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
import threading
import time

from pymongo.errors import PyMongoError

from orchestrator.auth import LEEWAY_S, USER_TOKEN_TTL, IssuedUserToken, SigningSecrets, issue_user_token
from orchestrator.models import SigninCode, UserToken, utcnow

log = logging.getLogger("orch.tokens")

REVOKED_REFRESH_S = 2.0


class UnknownToken(LookupError):
    """No recorded token has that jti."""


def _naive(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def create_user_token(secret: SigningSecrets, user: str, *, admin: bool, ttl: dt.timedelta) -> IssuedUserToken:
    """Mint a user token and record it (jti, user, role, issue and expiry times)."""
    issued = issue_user_token(secret, user, admin=admin, ttl=ttl)
    UserToken(
        jti=issued.jti, user=issued.user, role=issued.role,
        issued_at=_naive(issued.issued_at), expires_at=_naive(issued.expires_at),
    ).save(force_insert=True)
    return issued


def list_user_tokens(*, include_expired: bool = False) -> list[UserToken]:
    query = {} if include_expired else {"expires_at__gt": utcnow()}
    return list(UserToken.objects(**query).order_by("issued_at"))


def revoke_user_token(jti: str) -> UserToken:
    """Revoke the recorded token jti (again revoking a revoked one keeps its first time)."""
    UserToken.objects(jti=jti, revoked_at=None).update_one(set__revoked_at=utcnow())
    record = UserToken.objects(jti=jti).first()
    if record is None:
        raise UnknownToken(f"no recorded user token has jti {jti!r} (see `orch token list`)")
    return record


# The local admin a sign-in link signs in (decision D1's user-name rule holds for it).
SIGNIN_USER = "admin"
# 32 random bytes, url-safe: unguessable, and safe in a URL fragment.
SIGNIN_CODE_BYTES = 32
# A pasted code longer than this is not one of ours: refused before hashing.
MAX_SIGNIN_CODE_CHARS = 128


class SigninRefused(Exception):
    """A sign-in code that is unknown, used or expired; the message says which."""


def _code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def create_signin_code(ttl: dt.timedelta, user: str = SIGNIN_USER) -> str:
    """A new one-time code for `user` (admin); only its hash is stored."""
    code = secrets.token_urlsafe(SIGNIN_CODE_BYTES)
    now = utcnow()
    SigninCode(code_hash=_code_hash(code), user=user, created_at=now, expires_at=now + ttl).save(force_insert=True)
    return code


def redeem_signin_code(secret: SigningSecrets, code: str, ttl: dt.timedelta = USER_TOKEN_TTL) -> IssuedUserToken:
    """Exchange a sign-in code for a recorded admin token (listed by `orch token list`, revocable).

    Marking the code used is one conditional update, so of two concurrent redemptions one wins.
    """
    if not isinstance(code, str) or not code or len(code) > MAX_SIGNIN_CODE_CHARS:
        raise SigninRefused("unknown code")
    code_hash = _code_hash(code)
    now = utcnow()
    if not SigninCode.objects(code_hash=code_hash, used_at=None, expires_at__gt=now).update_one(set__used_at=now):
        record = SigninCode.objects(code_hash=code_hash).first()
        if record is None:
            raise SigninRefused("unknown code")
        if record.used_at is not None:
            raise SigninRefused(f"the code was used at {record.used_at.isoformat(timespec='seconds')} UTC")
        raise SigninRefused(f"the code expired at {record.expires_at.isoformat(timespec='seconds')} UTC")
    record = SigninCode.objects(code_hash=code_hash).only("user").first()
    return create_user_token(secret, record.user, admin=True, ttl=ttl)


class RevokedTokens:
    """The jtis of revoked user tokens that have not expired, cached for REVOKED_REFRESH_S."""

    def __init__(self, refresh_s: float = REVOKED_REFRESH_S):
        self.refresh_s = refresh_s
        self._jtis: frozenset[str] = frozenset()
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    @property
    def stale(self) -> bool:
        return self._loaded_at is None or time.monotonic() - self._loaded_at > self.refresh_s

    def refresh(self) -> None:
        """Re-read the revoked jtis (blocking: call it off the event loop)."""
        with self._lock:
            if not self.stale:
                return  # another thread refreshed it meanwhile
            # Still accepted within the leeway after expiry: keep those too.
            horizon = utcnow() - dt.timedelta(seconds=LEEWAY_S)
            try:
                self._jtis = frozenset(UserToken.objects(revoked_at__ne=None, expires_at__gt=horizon).scalar("jti"))
            except PyMongoError as error:
                # The previous set is kept; the next request after refresh_s asks again.
                log.error("could not read revoked user tokens (keeping the previous %d): %s", len(self._jtis), error)
            self._loaded_at = time.monotonic()

    def __contains__(self, jti: object) -> bool:
        return jti in self._jtis
