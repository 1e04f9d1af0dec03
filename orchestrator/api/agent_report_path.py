"""POST /api/v1/agent/report, answered outside Litestar when the report is accepted.

Every agent posts a report every 30 s (60,000 agents are 2,000 requests a second) and the
answer is nearly always the same small one. Under the ingest benchmark, Litestar's handling of
a request (scope state, routing, kwargs, the response object, its middleware) took about half
of `orch serve`'s time per report (py-spy with --gil: 72 us a report against 36 us for a bare
Litestar endpoint). This ASGI wrapper, around the app `orch serve` runs, answers an accepted
report itself: the token from the raw headers, checked against the ingest's cache (never
MongoDB on the event loop), the body read under the same cap, validated and buffered by the
ingest, the answer encoded from the same ReportAnswer shape.

Every other case goes to the Litestar handler (AgentController.report), with what was read of
the body replayed: a token the cache cannot answer (checked against MongoDB off the loop), a
body without a length or over MAX_REPORT_BYTES (parsed off the loop), and every refusal (401,
403, 413, 422, 503), which the handler then makes again and answers as documented. A refusal
changes nothing before it is raised (ingest.accept validates every report before buffering
any), so the second attempt sees what the first saw.
"""

from __future__ import annotations

import msgspec
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.conditional import scope_header
from orchestrator.api.serialize import report_answer
from orchestrator.ingest import MAX_REPORT_BYTES, ReportRejected, declared_length

REPORT_PATH = "/api/v1/agent/report"
_ANSWER_HEADERS = [(b"content-type", b"application/json")]


class AgentReportPath:
    def __init__(self, app: ASGIApp, runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != REPORT_PATH:
            await self.app(scope, receive, send)
            return
        ingest = self.runtime.ingest
        length = declared_length(scope_header(scope, b"content-length"))
        try:
            identity = ingest.authenticate(scope_header(scope, b"authorization"), may_query=False)
        except ReportRejected:
            identity = None
        if identity is None or length is None or length > MAX_REPORT_BYTES:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more and len(body) <= MAX_REPORT_BYTES:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: Litestar's handler sees it too
                await self.app(scope, _replay(bytes(body), more=True, then=message, receive=receive), send)
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        raw = bytes(body)
        if more or len(raw) > MAX_REPORT_BYTES:  # longer than its Content-Length said
            await self.app(scope, _replay(raw, more=more, receive=receive), send)
            return
        instance, _ = identity
        try:
            accepted = ingest.accept(instance, raw)
        except ReportRejected:
            await self.app(scope, _replay(raw, more=False, receive=receive), send)
            return
        answer = msgspec.json.encode(report_answer(accepted, self.runtime.autostop.notices.notices_for(instance)))
        headers = [*_ANSWER_HEADERS, (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def _replay(body: bytes, *, more: bool, receive: Receive, then: Message | None = None) -> Receive:
    """A receive that gives what was read first (and the message that stopped the read), then the rest."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": more}]
    if then is not None:
        pending.append(then)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
