"""Conditional GET for the JSON API: an ETag on every answer, 304 Not Modified on If-None-Match.

The page polls the list and an instance's detail every few seconds; when nothing changed,
the answer is a 304 without a body. The ETag is the SHA-256 of the body the request would
get, so it is computed after the handler ran (the database is still read): what it saves is
the transfer and the page's re-render, not the query.
"""

from __future__ import annotations

import hashlib

from litestar.types import ASGIApp, Message, Receive, Scope, Send

# GET answers under this prefix get ETags.
CONDITIONAL_PREFIX = "/api/v1/"
# Answers are buffered to be hashed; one larger than this is passed on without an ETag.
MAX_TAGGED_BODY_BYTES = 8 * 1024 * 1024
# The browser must revalidate (If-None-Match) before reusing an answer, and shares it with no one.
API_CACHE_CONTROL = b"private, no-cache"


def body_etag(body: bytes) -> str:
    """A strong ETag: the same bytes, the same tag."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _opaque(tag: str) -> str:
    # If-None-Match compares weakly (RFC 9110, 13.1.2): W/"x" matches "x".
    return tag.strip().removeprefix("W/")


def matches(if_none_match: str, etag: str) -> bool:
    if if_none_match.strip() == "*":
        return True
    return _opaque(etag) in {_opaque(candidate) for candidate in if_none_match.split(",")}


def scope_header(scope: Scope, name: bytes) -> str | None:
    """The first header `name` (lower case) of an ASGI scope, as text."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class ConditionalGetMiddleware:
    """ASGI middleware: tags 200 JSON answers to GET /api/v1/*; answers a matching If-None-Match with 304."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or not scope["path"].startswith(CONDITIONAL_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        if_none_match = scope_header(scope, b"if-none-match")
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        passing = False  # not taggable (not a 200 JSON answer, or too large): sent as it comes

        async def buffered(message: Message) -> None:
            nonlocal start, size, passing
            if passing:
                await send(message)
                return
            if message["type"] == "http.response.start":
                headers = dict((k.lower(), v) for k, v in message.get("headers", []))
                json_answer = headers.get(b"content-type", b"").startswith(b"application/json")
                if message["status"] != 200 or not json_answer:
                    passing = True
                    await send(message)
                    return
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_TAGGED_BODY_BYTES:
                passing = True
                await send(start)
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": message.get("more_body", False)})
                return
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            etag = body_etag(body)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"etag", b"cache-control")]
            headers += [(b"etag", etag.encode()), (b"cache-control", API_CACHE_CONTROL)]
            if if_none_match is not None and matches(if_none_match, etag):
                # 304: no body, and none of the headers that describe one.
                kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
                await send({"type": "http.response.start", "status": 304, "headers": kept})
                await send({"type": "http.response.body", "body": b""})
                return
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffered)
