"""JWT tokens for users (audience `orch-api`) and agents (audience `agent`).

Every rejection carries its cause (expired, bad signature, wrong audience,
not yet valid / clock skew, malformed), because a token that fails silently
is how an agent goes dark.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

import jwt

USER_AUDIENCE = "orch-api"
AGENT_AUDIENCE = "agent"
ALGORITHM = "HS256"
LEEWAY_S = 30
USER_TOKEN_TTL = dt.timedelta(days=30)
AGENT_TOKEN_TTL = dt.timedelta(days=30)


class TokenError(Exception):
    """A token was rejected; the message says why."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: str  # user | admin

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def mint_user_token(secret: str, user: str, *, admin: bool = False, ttl: dt.timedelta = USER_TOKEN_TTL) -> str:
    now = _now()
    claims = {"sub": user, "role": "admin" if admin else "user", "aud": USER_AUDIENCE, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def mint_agent_token(secret: str, instance: str, *, ttl: dt.timedelta = AGENT_TOKEN_TTL) -> tuple[str, dt.datetime]:
    now = _now()
    expires = now + ttl
    claims = {"sub": instance, "aud": AGENT_AUDIENCE, "iat": now, "exp": expires, "jti": secrets.token_hex(8)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM), expires


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _decode(secret: str, token: str, audience: str) -> dict:
    try:
        return jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=audience,
            leeway=LEEWAY_S,
            options={"require": ["sub", "exp", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        expired = jwt.decode(token, options={"verify_signature": False}).get("exp")
        when = dt.datetime.fromtimestamp(expired, dt.UTC).isoformat() if isinstance(expired, (int, float)) else "?"
        raise TokenError(f"token expired at {when} (check the clock if it should still be valid)") from None
    except jwt.InvalidSignatureError:
        raise TokenError("bad signature: the token was not signed by this service") from None
    except jwt.InvalidAudienceError:
        got = jwt.decode(token, options={"verify_signature": False}).get("aud")
        raise TokenError(f"wrong audience: expected {audience!r}, token is for {got!r}") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("token not yet valid: its issue time is in the future (clock skew?)") from None
    except jwt.MissingRequiredClaimError as error:
        raise TokenError(f"token lacks the {error.claim!r} claim") from None
    except jwt.InvalidTokenError as error:
        raise TokenError(f"malformed token: {error}") from None


def decode_user_token(secret: str, token: str) -> Principal:
    claims = _decode(secret, token, USER_AUDIENCE)
    role = claims.get("role")
    if role not in ("user", "admin"):
        raise TokenError(f"token has no valid role (got {role!r})")
    return Principal(name=claims["sub"], role=role)


def decode_agent_token(secret: str, token: str) -> dict:
    return _decode(secret, token, AGENT_AUDIENCE)


def bearer_token(header: str | None) -> str:
    if not header:
        raise TokenError("missing Authorization header (expected 'Bearer <token>')")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("Authorization header must be 'Bearer <token>'")
    return token.strip()
