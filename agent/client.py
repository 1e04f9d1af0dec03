"""The agent's side of the service API: reports, token renewal, and why a request failed."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

REPORT_PATH = "/api/v1/agent/report"
TOKEN_PATH = "/api/v1/agent/token"
REQUEST_TIMEOUT_S = 15


class SendError(Exception):
    """The request did not succeed; the message says why. `retryable` is false when resending cannot help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class AuthError(SendError):
    """The service rejected the token (401/403); the message carries the service's stated cause."""


def token_claims(token: str) -> Dict[str, object]:
    """The JWT payload, decoded without verifying: the agent has no key, it only reads `exp`."""
    try:
        payload = token.split(".")[1]
        padded = payload + "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (IndexError, ValueError) as error:
        raise ValueError(f"token is not a JWT: {error}") from None
    if not isinstance(claims, dict):
        raise ValueError("token payload is not a JSON object")
    return claims


def format_ts(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def local_token_problem(token: str, now: Optional[float] = None) -> Optional[str]:
    """What this host's clock says is wrong with the token, if anything."""
    now = time.time() if now is None else now
    try:
        exp = token_claims(token).get("exp")
    except ValueError as error:
        return str(error)
    if isinstance(exp, (int, float)) and exp <= now:
        return f"token expired at {format_ts(exp)}, this host's clock says {format_ts(now)} (clock skew?)"
    return None


class ServiceClient:
    def __init__(self, url: str, token: str, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def _post(self, path: str, body: object) -> Dict[str, object]:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            raise self._http_error(path, error) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise SendError(f"{self.url}{path} unreachable: {reason}") from None
        try:
            parsed = json.loads(text) if text.strip() else {}
        except ValueError:
            parsed = {}
        return parsed if isinstance(parsed, dict) else {}

    def _http_error(self, path: str, error: urllib.error.HTTPError) -> SendError:
        body = error.read().decode(errors="replace")
        try:
            detail = json.loads(body).get("detail") or body
        except (ValueError, AttributeError):
            detail = body
        detail = str(detail).strip()[:300] or error.reason
        if error.code in (401, 403):
            message = f"{path} rejected the token ({error.code}): {detail}"
            local = local_token_problem(self.token)
            if local:
                message += f"; locally: {local}"
            return AuthError(message)
        # A 4xx other than auth or rate limiting means this request itself is wrong: resending cannot help.
        retryable = error.code >= 500 or error.code in (408, 429)
        return SendError(f"{path} answered {error.code}: {detail}", retryable=retryable)

    def send_reports(self, reports: List[Dict[str, object]]) -> Dict[str, object]:
        """The service's answer: `accepted`, and `notices` for the instance's users when there are any."""
        return self._post(REPORT_PATH, {"reports": reports})

    def renew_token(self) -> str:
        answer = self._post(TOKEN_PATH, {})
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise SendError(f"{TOKEN_PATH} answered without a token: {answer!r}"[:300])
        self.token = token
        return token
