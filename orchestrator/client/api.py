"""A small client of the REST API that turns every failure into a ClientError with its exit code."""

from __future__ import annotations

from typing import Any

import httpx

from orchestrator.client.config import ClientConfig
from orchestrator.client.errors import ClientError, ExitCode

API_PREFIX = "/api/v1"
REQUEST_TIMEOUT_S = 60.0
# A preview runs the Pulumi program and asks every provider for a diff.
PREVIEW_TIMEOUT_S = 600.0
# Rows per request when a command lists everything (the API's largest page).
LIST_PAGE = 500


class NotFound(ClientError):
    def __init__(self, message: str):
        super().__init__(message, ExitCode.REFUSED)


def _detail(response: httpx.Response) -> str:
    """The API's reason for an error on one line: `detail`, with Litestar's per-parameter messages when it has them."""
    return " ".join(_full_detail(response).split())


def _full_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0] if response.text.strip() else response.reason_phrase
    if not isinstance(body, dict):
        return str(body)
    detail = str(body.get("detail") or response.reason_phrase)
    extra = body.get("extra")
    if isinstance(extra, list):
        reasons = [f"{item.get('key')}: {item.get('message')}" for item in extra if isinstance(item, dict)]
        if reasons:
            detail += " (" + "; ".join(reasons) + ")"
    return detail


class ApiClient:
    def __init__(
        self, config: ClientConfig, *, owner: str | None = None, transport: httpx.BaseTransport | None = None
    ):
        """`owner`: (admins) address that user's instances and snapshots: `?owner=` on every request."""
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self.url = config.url
        self.has_token = config.token is not None
        self.owner = owner
        self._http = httpx.Client(base_url=config.url, headers=headers, timeout=REQUEST_TIMEOUT_S, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(
        self, method: str, path: str, *, json: Any = None, params: dict | None = None, timeout: float | None = None
    ) -> Any:
        """The decoded JSON body of a 2xx answer to `method API_PREFIX+path`; raises ClientError otherwise."""
        try:
            response = self._http.request(
                method,
                API_PREFIX + path,
                json=json,
                params={k: v for k, v in {"owner": self.owner, **(params or {})}.items() if v is not None},
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException:
            raise ClientError(f"the orch service at {self.url} did not answer in time", ExitCode.UNREACHABLE) from None
        except httpx.TransportError as error:
            reason = str(error) or type(error).__name__
            raise ClientError(f"cannot reach the orch service at {self.url}: {reason}", ExitCode.UNREACHABLE) from None
        status = response.status_code
        if status in (401, 403):
            hint = (
                "" if self.has_token else " (no token: pass --token, set ORCH_TOKEN, or put token in the config file)"
            )
            raise ClientError(f"not authorized ({status}): {_detail(response)}{hint}", ExitCode.AUTH)
        if status == 404:
            raise NotFound(_detail(response))
        if 400 <= status < 500:
            raise ClientError(f"the API refused the request ({status}): {_detail(response)}", ExitCode.REFUSED)
        if status >= 500:
            raise ClientError(f"the orch service failed ({status}): {_detail(response)}", ExitCode.SERVER_ERROR)
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"{self.url} did not answer {method} {API_PREFIX}{path} with JSON: is it the orch service?",
                ExitCode.SERVER_ERROR,
            ) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def get_optional(self, path: str) -> Any | None:
        """The resource at `path`, or None when the API says it does not exist."""
        try:
            return self.get(path)
        except NotFound:
            return None

    def get_all(self, path: str, **params: Any) -> list[dict]:
        """Every item of a paginated listing, page after page (each page starts at the last one's cursor)."""
        items: list[dict] = []
        cursor = None
        while True:
            page = self.get(path, **params, limit=LIST_PAGE, **({"cursor": cursor} if cursor else {}))
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    def post(self, path: str, body: Any, *, timeout: float | None = None) -> Any:
        return self.request("POST", path, json=body, timeout=timeout)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
