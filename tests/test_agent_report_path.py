"""The agent report's path outside Litestar (orchestrator/api/agent_report_path.py).

An accepted report is answered by the wrapper; everything else reaches the app behind it with
the body it was sent (replayed), so the app's answer is the documented one.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import httpx
import pytest
from bson import ObjectId

from orchestrator.api.agent_report_path import REPORT_PATH, AgentReportPath
from orchestrator.auth import mint_agent_token, token_hash
from orchestrator.autostop.checker import NoticeBoard
from orchestrator.ingest import MAX_REPORT_BYTES, AgentIngest
from orchestrator.models import Instance
from orchestrator.settings import load_settings
from tests.live import JWT_SECRET
from tests.test_agent_api import agent_identity, agent_service, agent_token_for, post_report, report  # noqa: F401 (fixture)


class RecordingApp:
    """The app behind the wrapper: records what reached it and the body it could read."""

    def __init__(self):
        self.calls: list[dict] = []

    async def __call__(self, scope, receive, send):
        messages = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        self.calls.append({"path": scope["path"], "method": scope["method"], "body": body,
                           "disconnected": messages[-1]["type"] == "http.disconnect"})
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"from the app"})


def call(wrapper, body_chunks: list[bytes | dict], *, headers: dict[str, str], method="POST", path=REPORT_PATH):
    """One request through the wrapper: (status, headers, body) it answered."""
    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]}
    incoming = [chunk if isinstance(chunk, dict) else
                {"type": "http.request", "body": chunk, "more_body": i < len(body_chunks) - 1}
                for i, chunk in enumerate(body_chunks)]
    sent = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(wrapper(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def path(mongo_db, tmp_path):
    ingest = AgentIngest(load_settings({"ORCH_DATA_DIR": str(tmp_path), "ORCH_JWT_SECRET": JWT_SECRET}))
    instance_id = ObjectId()
    token, expires = mint_agent_token(JWT_SECRET, str(instance_id))
    Instance(id=instance_id, name="box", owner="alice", spec={"cloud": "docker"}, cloud="docker", region="local",
             status="running", agent_token_hash=token_hash(token),
             agent_token_expires_at=expires.replace(tzinfo=None)).save()
    app = RecordingApp()
    runtime = SimpleNamespace(ingest=ingest, autostop=SimpleNamespace(notices=NoticeBoard()))
    yield SimpleNamespace(wrapper=AgentReportPath(app, runtime), app=app, ingest=ingest, runtime=runtime,
                          instance=str(instance_id), token=token)
    ingest.close()


def headers_for(path, body: bytes, **more) -> dict[str, str]:
    return {"authorization": f"Bearer {path.token}", "content-length": str(len(body)),
            "content-type": "application/json", **more}


def buffered(path) -> int:
    with path.ingest._lock:
        return len(path.ingest._buffer)


def test_an_accepted_report_with_a_cached_token_is_answered_by_the_wrapper(path):
    body = json.dumps(report(path.instance, time.time())).encode()
    # The first report: the token's check is not cached, so the app (Litestar) answers and MongoDB is asked.
    assert call(path.wrapper, [body], headers=headers_for(path, body))[0] == 299
    assert path.app.calls[0]["body"] == body
    path.ingest.authenticate(f"Bearer {path.token}")  # as the app's handler does off the event loop
    body = json.dumps(report(path.instance, time.time())).encode()
    # Split over two reads, as a client may send it.
    status, headers, answer = call(path.wrapper, [body[:100], body[100:]], headers=headers_for(path, body))
    assert (status, answer) == (202, b'{"accepted":1}') and len(path.app.calls) == 1
    assert headers == {b"content-type": b"application/json", b"content-length": b"14"}
    assert buffered(path) == 1
    path.runtime.autostop.notices.put(path.instance, {"id": "n1", "message": "stopping soon"})
    status, _, answer = call(path.wrapper, [body], headers=headers_for(path, body))
    assert status == 202 and json.loads(answer) == {"accepted": 1, "notices": [{"id": "n1", "message": "stopping soon"}]}


def test_every_other_request_reaches_the_app_with_its_body(path):
    path.ingest.authenticate(f"Bearer {path.token}")
    good = json.dumps(report(path.instance, time.time())).encode()
    refused = [
        json.dumps({**report(path.instance, time.time()), "cpu_percent": 500}).encode(),  # 422
        json.dumps(report(str(ObjectId()), time.time())).encode(),  # another instance's: 403
        b"not json",  # 400
    ]
    for body in refused:
        assert call(path.wrapper, [body[:5], body[5:]], headers=headers_for(path, body)) == (299, {}, b"from the app")
        assert path.app.calls[-1]["body"] == body
    assert buffered(path) == 0  # a refused report is not buffered by the first attempt
    cases = [
        ({"authorization": "Bearer nonsense", "content-length": str(len(good))}, [good]),  # bad token: 401
        ({"authorization": f"Bearer {path.token}"}, [good]),  # no length
        ({"authorization": f"Bearer {path.token}", "content-length": "12abc"}, [good]),
        ({"authorization": f"Bearer {path.token}", "content-length": "\u00b2"}, [good]),  # a digit to isdigit()
        ({"authorization": f"Bearer {path.token}", "content-length": str(MAX_REPORT_BYTES + 1)}, [good]),  # a backlog
        # Longer than its Content-Length says, past the limit on the event loop.
        ({"authorization": f"Bearer {path.token}", "content-length": "10"}, [b"x" * MAX_REPORT_BYTES, b"y" * 10, b"z"]),
    ]
    for headers, chunks in cases:
        assert call(path.wrapper, chunks, headers=headers)[0] == 299
        assert path.app.calls[-1]["body"] == b"".join(chunks)
    # The client goes away mid-body: the app sees what came and the disconnect.
    call(path.wrapper, [good[:10], {"type": "http.disconnect"}], headers=headers_for(path, good))
    assert path.app.calls[-1]["body"] == good[:10] and path.app.calls[-1]["disconnected"]
    for method, where in (("GET", REPORT_PATH), ("POST", "/api/v1/agent/token"), ("POST", REPORT_PATH + "/")):
        assert call(path.wrapper, [good], headers=headers_for(path, good), method=method, path=where)[0] == 299
        assert path.app.calls[-1]["path"] == where and path.app.calls[-1]["method"] == method
    assert buffered(path) == 0


def test_through_orch_serve_both_paths_answer_alike(agent_service):
    """The first report of a token goes to Litestar's handler, the next ones are the wrapper's: same answers."""
    live = agent_service
    token = agent_token_for(live, "box-a")
    identity = agent_identity(token)
    answers = [post_report(live, token, report(identity, time.time() - 2 + k)) for k in range(3)]
    assert {(a.status_code, a.content, a.headers["content-type"]) for a in answers} == {
        (202, b'{"accepted":1}', "application/json")}
    refused = [post_report(live, token, {**report(identity, time.time()), "cpu_percent": 500}) for _ in range(2)]
    assert {(a.status_code, a.content) for a in refused} == {
        (422, b'{"status_code":422,"detail":"cpu_percent: expected `float` <= 100.0"}')}
    stranger = post_report(live, token, report(str(ObjectId()), time.time()))
    assert stranger.status_code == 403 and "this agent token is for" in stranger.json()["detail"]
    # A body of another kind than JSON, past the cached token.
    raw = httpx.post(f"{live.url}{REPORT_PATH}", content=b"{", headers={"Authorization": f"Bearer {token}"})
    assert raw.status_code == 400 and raw.json()["detail"].startswith("body: not valid JSON")


def test_concurrent_reports_of_two_agents_are_each_stored_once(agent_service):
    """Many reports at once through the wrapper (tokens cached), from two agents: every one is stored, none twice."""
    from concurrent.futures import ThreadPoolExecutor

    live = agent_service

    def stored_when_flushed() -> int:
        deadline = time.monotonic() + 15
        while (ingest := httpx.get(f"{live.url}/healthz").json()["ingest"])["buffered"]:
            assert time.monotonic() < deadline, ingest
            time.sleep(0.1)
        return ingest["stored"]

    boxes = {name: agent_token_for(live, name) for name in ("box-a", "box-b")}
    stored_before = stored_when_flushed()
    for token in boxes.values():  # the first report of each token goes through Litestar and caches it
        assert post_report(live, token, report(agent_identity(token), time.time() - 100)).status_code == 202
    start = time.time() - 60
    sends = [(token, report(agent_identity(token), start + k * 0.5, cpu=round(k * 0.01 + 0.005, 3)))
             for k in range(60) for token in boxes.values()]
    with httpx.Client(base_url=live.url) as client, ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda sent: client.post(REPORT_PATH, json=sent[1], headers={
            "Authorization": f"Bearer {sent[0]}"}), sends))
    assert {(a.status_code, a.content) for a in answers} == {(202, b'{"accepted":1}')}
    expected = sorted(round(k * 0.01 + 0.005, 3) for k in range(60))
    deadline = time.monotonic() + 15
    for name in boxes:
        while True:
            with live.client("alice") as client:
                samples = client.get(f"/api/v1/instances/{name}/metrics", params={"since": "2000-01-01T00:00:00Z"})
            markers = sorted(s["cpu_percent"] for s in samples.json()["samples"] if s["cpu_percent"] in expected)
            if markers == expected:
                break
            assert time.monotonic() < deadline and len(markers) <= len(expected), (name, markers)
            time.sleep(0.2)
    # Reads count a (instance, ts) once; the store's own count says none was stored twice.
    assert stored_when_flushed() - stored_before == len(sends) + len(boxes)
