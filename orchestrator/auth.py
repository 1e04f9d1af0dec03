"""JWT tokens for users (audience `orch-api`) and agents (audience `agent`).

Each audience has its own HS256 key, derived from the configured secret with
HMAC-SHA256 and a per-audience label, so a token signed for one audience can
never verify as the other even if its `aud` claim is forged. Every token
carries the issuer `orch`, checked on decode. User tokens carry a `jti`, by
which `orch token revoke` revokes them.

Rotation: the service signs with the current secret and verifies with the
current and the previous ones (ORCH_JWT_PREVIOUS_SECRETS), so tokens signed
before a rotation stay valid until they expire.

Every rejection carries its cause (expired, bad signature, wrong audience,
wrong issuer, not yet valid / clock skew, malformed), because a token that
fails silently is how an agent goes dark.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import jwt

USER_AUDIENCE = "orch-api"
AGENT_AUDIENCE = "agent"
ISSUER = "orch"
ALGORITHM = "HS256"
LEEWAY_S = 30
USER_TOKEN_TTL = dt.timedelta(hours=12)
MIN_USER_TOKEN_TTL = dt.timedelta(minutes=1)
MAX_USER_TOKEN_TTL = dt.timedelta(days=30)
AGENT_TOKEN_TTL = dt.timedelta(days=30)
# Real tokens are a few hundred bytes; a huge header is refused before any parsing.
MAX_AUTHORIZATION_BYTES = 4096
# A user name is safe in stack names and file names (decision D1).
USER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,38}")
USER_NAME_RULE = "1-39 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
# The label each audience's key is derived with; changing one invalidates that audience's tokens.
_KEY_LABELS = {USER_AUDIENCE: b"orch jwt key: user tokens", AGENT_AUDIENCE: b"orch jwt key: agent tokens"}


class TokenError(Exception):
    """A token was rejected; the message says why."""


class InvalidUserName(ValueError):
    """A user name that does not follow USER_NAME_RULE."""


@dataclass(frozen=True, repr=False)
class SigningSecrets:
    """The secret new tokens are signed with, and the previous ones still accepted."""

    current: str
    previous: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never print a secret
        return f"SigningSecrets(current=<hidden>, previous=<{len(self.previous)} hidden>)"


@dataclass(frozen=True)
class Principal:
    name: str
    role: str  # user | admin
    token_id: str | None = None  # the user token's jti
    expires_at: dt.datetime | None = None  # the user token's expiry (UTC)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class IssuedUserToken:
    token: str
    jti: str
    user: str
    role: str
    issued_at: dt.datetime
    expires_at: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _signing_secrets(secret: str | SigningSecrets) -> SigningSecrets:
    return secret if isinstance(secret, SigningSecrets) else SigningSecrets(secret)


@functools.lru_cache(maxsize=16)  # a few secrets x two audiences; decoded on every request
def signing_key(secret: str, audience: str) -> bytes:
    """The HS256 key for one audience's tokens, derived from a configured secret."""
    return hmac.new(secret.encode(), _KEY_LABELS[audience], hashlib.sha256).digest()


def check_user_name(user: str) -> str:
    if not isinstance(user, str) or not USER_NAME.fullmatch(user):
        raise InvalidUserName(f"user name {user!r} is invalid: {USER_NAME_RULE}")
    return user


def check_user_token_ttl(ttl: dt.timedelta) -> dt.timedelta:
    if not MIN_USER_TOKEN_TTL <= ttl <= MAX_USER_TOKEN_TTL:
        raise ValueError(f"token lifetime {ttl} is out of range: from {MIN_USER_TOKEN_TTL} to {MAX_USER_TOKEN_TTL}")
    return ttl


def issue_user_token(
    secret: str | SigningSecrets, user: str, *, admin: bool = False, ttl: dt.timedelta = USER_TOKEN_TTL
) -> IssuedUserToken:
    """A user token signed with the current secret, and what `orch token list` records of it."""
    check_user_name(user)
    check_user_token_ttl(ttl)
    now = _now().replace(microsecond=0)
    jti = secrets.token_hex(16)
    role = "admin" if admin else "user"
    claims = {"iss": ISSUER, "sub": user, "role": role, "aud": USER_AUDIENCE, "iat": now, "exp": now + ttl, "jti": jti}
    token = jwt.encode(claims, signing_key(_signing_secrets(secret).current, USER_AUDIENCE), algorithm=ALGORITHM)
    return IssuedUserToken(token, jti, user, role, now, now + ttl)


def mint_user_token(
    secret: str | SigningSecrets, user: str, *, admin: bool = False, ttl: dt.timedelta = USER_TOKEN_TTL
) -> str:
    return issue_user_token(secret, user, admin=admin, ttl=ttl).token


def mint_agent_token(
    secret: str | SigningSecrets, instance: str, *, ttl: dt.timedelta = AGENT_TOKEN_TTL
) -> tuple[str, dt.datetime]:
    now = _now()
    expires = now + ttl
    claims = {"iss": ISSUER, "sub": instance, "aud": AGENT_AUDIENCE, "iat": now, "exp": expires, "jti": secrets.token_hex(8)}
    key = signing_key(_signing_secrets(secret).current, AGENT_AUDIENCE)
    return jwt.encode(claims, key, algorithm=ALGORITHM), expires


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _unverified_claims(token: str) -> dict:
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return {}


def _decode(secret: str | SigningSecrets, token: str, audience: str, required: list[str]) -> dict:
    ring = _signing_secrets(secret)
    try:
        # The current key first: a token verifies under at most one of them.
        for candidate in (ring.current, *ring.previous):
            try:
                return jwt.decode(
                    token,
                    signing_key(candidate, audience),
                    algorithms=[ALGORITHM],
                    audience=audience,
                    issuer=ISSUER,
                    leeway=LEEWAY_S,
                    options={"require": required},
                )
            except jwt.InvalidSignatureError:
                continue
        got = _unverified_claims(token).get("aud")
        if got != audience:
            # Signed for the other audience (so with the other key): say so, it is the likely mistake.
            raise TokenError(f"wrong audience: expected {audience!r}, token is for {got!r}")
        raise TokenError("bad signature: the token was not signed by this service")
    except jwt.ExpiredSignatureError:
        expired = _unverified_claims(token).get("exp")
        when = dt.datetime.fromtimestamp(expired, dt.UTC).isoformat() if isinstance(expired, (int, float)) else "?"
        raise TokenError(f"token expired at {when} (check the clock if it should still be valid)") from None
    except jwt.InvalidAudienceError:
        got = _unverified_claims(token).get("aud")
        raise TokenError(f"wrong audience: expected {audience!r}, token is for {got!r}") from None
    except jwt.InvalidIssuerError:
        got = _unverified_claims(token).get("iss")
        raise TokenError(f"wrong issuer: expected {ISSUER!r}, token is from {got!r}") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("token not yet valid: its issue time is in the future (clock skew?)") from None
    except jwt.MissingRequiredClaimError as error:
        raise TokenError(f"token lacks the {error.claim!r} claim") from None
    except jwt.InvalidTokenError as error:
        raise TokenError(f"malformed token: {error}") from None


def decode_user_token(secret: str | SigningSecrets, token: str) -> Principal:
    claims = _decode(secret, token, USER_AUDIENCE, ["iss", "sub", "exp", "aud", "jti"])
    role = claims.get("role")
    if role not in ("user", "admin"):
        raise TokenError(f"token has no valid role (got {role!r})")
    try:
        name = check_user_name(claims["sub"])
    except InvalidUserName as error:
        raise TokenError(str(error)) from None
    if not isinstance(claims["jti"], str):
        raise TokenError("token's 'jti' claim is not a string")
    expires_at = dt.datetime.fromtimestamp(claims["exp"], dt.UTC) if isinstance(claims["exp"], (int, float)) else None
    return Principal(name=name, role=role, token_id=claims["jti"], expires_at=expires_at)


def decode_agent_token(secret: str | SigningSecrets, token: str) -> dict:
    return _decode(secret, token, AGENT_AUDIENCE, ["iss", "sub", "exp", "aud"])


def bearer_token(header: str | None) -> str:
    if not header:
        raise TokenError("missing Authorization header (expected 'Bearer <token>')")
    if len(header) > MAX_AUTHORIZATION_BYTES:
        raise TokenError(f"Authorization header is {len(header)} bytes; a token is at most {MAX_AUTHORIZATION_BYTES}")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("Authorization header must be 'Bearer <token>'")
    return token.strip()
