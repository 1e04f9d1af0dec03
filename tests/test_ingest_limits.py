"""Agent report limits: what one agent sends can never stop ingestion for the others.

Each probe that once stopped or froze ingestion (an integer over 8 bytes, ~9 MB reports,
a report from 2099, bodies that are not JSON, a 10 MB Authorization header) is sent to
the real service, and a good report sent afterwards must still be stored.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socket
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import jwt
import pytest
from pymongo import MongoClient
from pymongo.errors import AutoReconnect, WriteError

from orchestrator.auth import MAX_AUTHORIZATION_BYTES, mint_agent_token, token_hash
from orchestrator.ingest import (
    MAX_BODY_BYTES,
    MAX_CLOCK_SKEW,
    MAX_DISKS,
    MAX_GPUS,
    MAX_REPORT_AGE,
    MAX_REPORT_BYTES,
    AgentIngest,
)
from orchestrator.metrics.store import read_samples
from orchestrator.models import MetricBatch
from orchestrator.settings import load_settings
from tests.live import JWT_SECRET, instance_doc, start_service, wait_operation
from tests.test_agent import run_once
from tests.test_agent_api import agent_token_for, report

INSTANCE = "limits-a"
FLUSH_WAIT_S = 10
# A short agent token's lifetime, for the renewal test.
RENEW_TEST_TTL_S = 6
# A healthy report's mean latency while huge tokens are being sent (see the test).
MAX_MEAN_LATENCY_S = 0.3


class Agent:
    """The service and one instance's agent token; reports carry the token's identity."""

    def __init__(self, live, instance: str):
        self.live = live
        self.instance = instance
        self.token = agent_token_for(live, instance)
        self.identity = jwt.decode(self.token, options={"verify_signature": False})["sub"]

    def report(self, **fields) -> dict:
        return {**report(self.identity), **fields}

    def post(self, body: dict | None = None, *, content: bytes | None = None, token: str | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.live.url}/api/v1/agent/report",
            json=body if content is None else None,
            content=content,
            headers={"Authorization": f"Bearer {token or self.token}", "Content-Type": "application/json"},
            timeout=60,
        )

    def healthz(self) -> dict:
        return httpx.get(f"{self.live.url}/healthz", timeout=30).json()

    def samples(self) -> list[dict]:
        with self.live.client("alice") as client:
            response = client.get(f"/api/v1/instances/{self.instance}/metrics", params={"limit": 10000})
            assert response.status_code == 200, response.text
            return response.json()["samples"]

    def assert_still_ingesting(self) -> None:
        """A good report sent now is stored, and /healthz says ingestion is ok with nothing dropped."""
        marker = round(time.time() % 100, 3)
        response = self.post(self.report(cpu_percent=marker))
        assert response.status_code == 202, response.text
        deadline = time.monotonic() + FLUSH_WAIT_S
        while not any(s["cpu_percent"] == marker for s in self.samples()):
            assert time.monotonic() < deadline, f"a good report was not stored; /healthz: {self.healthz()}"
            time.sleep(0.2)
        ingest = self.healthz()["ingest"]
        assert ingest["ok"] and ingest["dropped"] == 0, ingest
        assert "Traceback" not in self.live.logs()


def start_agent_service(tmp: Path, mongo_url: str, instance: str) -> Agent:
    """The real service with one instance (created through the API) and its agent token."""
    live = start_service(tmp, mongo_url, ORCH_AGENT_INTERVAL_S="1")
    try:
        with live.client("alice") as client:
            op = client.post("/api/v1/instances", json=instance_doc(instance)).json()["operation"]
            assert wait_operation(client, op["id"])["status"] == "succeeded"
        return Agent(live, instance)
    except BaseException:
        live.stop()
        raise


@pytest.fixture(scope="module")
def agent(tmp_path_factory, mongo_url):
    agent = start_agent_service(tmp_path_factory.mktemp("ingest-limits"), mongo_url, INSTANCE)
    yield agent
    agent.live.stop()


def test_healthz_shows_the_ingest_state(agent):
    health = agent.healthz()
    assert health["status"] == "ok"
    assert set(health["ingest"]) == {"ok", "last_error", "last_flush_at", "stored", "dropped", "buffered"}
    assert health["ingest"]["ok"] is True and health["ingest"]["last_flush_at"] is not None


def test_an_integer_over_8_bytes_is_refused_and_ingestion_goes_on(agent):
    # Accepted before, it killed the flush thread (BSON OverflowError): every later report was lost.
    response = agent.post(agent.report(memory={"total": 10**30, "used": 1}))
    assert response.status_code == 422 and "memory.total" in response.json()["detail"], response.text
    agent.assert_still_ingesting()


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"memory": {"total": 100, "used": -1}}, "memory.used"),
        ({"memory": {"total": 100, "used": 101}}, "memory.used"),
        ({"memory": {"total": 2**63, "used": 1}}, "memory.total"),
        ({"cpu_percent": 100.5}, "cpu_percent"),
        ({"cpu_percent": -1}, "cpu_percent"),
        ({"uptime_s": 10**30}, "uptime_s"),
        ({"load": [0.1, 0.2, 0.3, 0.4]}, "load"),
        ({"load": [1e300]}, "load[0]"),
        ({"disk": [{"mount": "/", "total": 10, "used": 11}]}, "disk[0].used"),
        ({"disk": [{"mount": "m" * 257, "total": 10, "used": 1}]}, "disk[0].mount"),
        ({"disk": [{"mount": f"/d{i}", "total": 10, "used": 1} for i in range(MAX_DISKS + 1)]}, "disk"),
        ({"gpus": [{"index": 0, "name": "A10G", "utilization_percent": 1, "memory_total": 1,
                    "memory_used": 1, "temperature_c": 50}] * (MAX_GPUS + 1)}, "gpus"),
        ({"gpus": [{"index": 0, "name": "g" * 257, "utilization_percent": 1, "memory_total": 1,
                    "memory_used": 1, "temperature_c": 50}]}, "gpus[0].name"),
        ({"gpus": [{"index": 0, "name": "A10G", "utilization_percent": 1, "memory_total": 1,
                    "memory_used": 1, "temperature_c": 5000}]}, "gpus[0].temperature_c"),
        ({"gpus": [{"index": 0, "name": "A10G", "utilization_percent": 1, "memory_total": 10**30,
                    "memory_used": 1, "temperature_c": 50}]}, "gpus[0].memory_total"),
        ({"agent_version": "v" * 257}, "agent_version"),
        ({"agent_version": {"nested": ["x"] * 1000}}, "agent_version"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(agent, fields, named):
    response = agent.post(agent.report(**fields))
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{named}:"), response.text


def test_a_bad_report_in_a_batch_is_named_by_its_position(agent):
    response = agent.post({"reports": [agent.report(), agent.report(cpu_percent=101)]})
    assert response.status_code == 422 and response.json()["detail"].startswith("reports[1].cpu_percent:"), response.text


def test_unknown_fields_are_dropped_not_stored(agent):
    marker = 42.25
    response = agent.post(agent.report(cpu_percent=marker, extra={"nested": [{"deep": list(range(100))}]}))
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + FLUSH_WAIT_S
    while not (stored := [s for s in agent.samples() if s["cpu_percent"] == marker]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "extra" not in stored[0] and stored[0]["memory"] == {"total": 8_000_000_000, "used": 2_000_000_000}


def test_bodies_over_the_limits_are_413_naming_the_limit(agent):
    # Several ~9 MB reports used to be accepted and stored together: DocumentTooLarge killed the flush thread.
    huge = agent.report(padding="x" * 9_000_000)
    for _ in range(3):
        response = agent.post(huge)
        assert response.status_code == 413 and str(MAX_BODY_BYTES) in response.json()["detail"], response.text
    # Under the request cap but far over one report's share of it.
    response = agent.post(agent.report(padding="x" * 2 * MAX_REPORT_BYTES))
    assert response.status_code == 413 and str(MAX_REPORT_BYTES) in response.json()["detail"], response.text
    agent.assert_still_ingesting()


def test_timestamps_far_from_the_server_clock_are_refused(agent):
    # A report from 2099 used to be accepted and then shown as the latest health forever.
    response = agent.post(agent.report(ts="2099-01-01T00:00:00Z"))
    assert response.status_code == 422 and response.json()["detail"].startswith("ts:"), response.text
    too_old = time.time() - MAX_REPORT_AGE.total_seconds() - 3600
    response = agent.post(agent.report(ts=too_old))
    assert response.status_code == 422 and response.json()["detail"].startswith("ts:"), response.text
    # Within the allowed skew: accepted.
    slightly_ahead = time.time() + MAX_CLOCK_SKEW.total_seconds() / 2
    assert agent.post(agent.report(ts=slightly_ahead, cpu_percent=1.5)).status_code == 202
    marker = 66.5
    assert agent.post(agent.report(ts=slightly_ahead + 1, cpu_percent=marker)).status_code == 202
    with agent.live.client("alice") as client:
        deadline = time.monotonic() + FLUSH_WAIT_S
        while client.get(f"/api/v1/instances/{INSTANCE}").json()["health"]["last_report"].get("cpu_percent") != marker:
            assert time.monotonic() < deadline, "the instance's health does not follow its newest report"
            time.sleep(0.2)


@pytest.mark.parametrize(
    "content, named",
    [
        (b'{"instance": ', "not valid JSON"),
        (b'{"instance": "\xff\xfe"}', "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
        (b"", "not valid JSON"),
        (b'{"cpu_percent": NaN}', "not valid JSON"),
    ],
    ids=["malformed", "invalid-utf8", "deep-arrays", "deep-objects", "empty", "nan"],
)
def test_bodies_that_are_not_json_are_400_naming_the_problem(agent, content, named):
    response = agent.post(content=content)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith("body:") and named in detail, detail


def test_not_json_does_not_stop_ingestion(agent):
    agent.assert_still_ingesting()


def _send_raw(url: str, request: bytes) -> bytes:
    """The server's answer to a raw request; b"" when it reset the connection without one."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    answer = b""
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        try:
            # The server may answer and close before a huge request is all sent.
            connection.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := connection.recv(1 << 16):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def test_a_huge_authorization_header_is_refused_before_it_is_decoded(agent):
    # Validly signed, so the old code decoded all of it (about a second per request, on the
    # event loop) and looked its 7 MB `sub` up in MongoDB.
    big = jwt.encode({"sub": "x" * 7_000_000, "aud": "agent", "exp": time.time() + 3600}, JWT_SECRET, "HS256")
    # A header over the token cap but under the HTTP head limit reaches the app: 401 naming the cap.
    over_cap = jwt.encode({"sub": "x" * 2 * MAX_AUTHORIZATION_BYTES, "aud": "agent"}, JWT_SECRET, "HS256")
    response = agent.post(agent.report(), token=over_cap)
    assert response.status_code == 401, response.text
    detail = response.json()["detail"]
    assert detail.startswith("Authorization header is") and str(MAX_AUTHORIZATION_BYTES) in detail
    # Four such tokens sent over and over: a healthy agent's report is still answered quickly.
    request = (
        f"POST /api/v1/agent/report HTTP/1.1\r\nHost: orch\r\nAuthorization: Bearer {big}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    ).encode()
    stop = threading.Event()
    answers: list[bytes] = []

    def flood() -> None:
        while not stop.is_set():
            answers.append(_send_raw(agent.live.url, request)[:12])

    flooders = [threading.Thread(target=flood) for _ in range(4)]
    for thread in flooders:
        thread.start()
    latencies = []
    try:
        time.sleep(0.5)
        with httpx.Client(headers={"Authorization": f"Bearer {agent.token}"}, timeout=30) as client:
            for _ in range(20):
                started = time.monotonic()
                assert client.post(f"{agent.live.url}/api/v1/agent/report", json=agent.report()).status_code == 202
                latencies.append(time.monotonic() - started)
    finally:
        stop.set()
        for thread in flooders:
            thread.join()
    # Refused before the app sees them: the HTTP head limit (431) comes first, or the server
    # closes the connection while the rest of the head is still being sent.
    assert len(answers) >= 4 and set(answers) <= {b"HTTP/1.1 431", b""}, set(answers)
    # Generous: a healthy report alone takes a few milliseconds, about 0.07 s on average during
    # this flood; when the tokens were decoded, the average was about 0.9 s.
    mean = sum(latencies) / len(latencies)
    assert mean < MAX_MEAN_LATENCY_S, f"mean latency {mean:.3f} s: {[round(x, 3) for x in sorted(latencies)]}"


def test_the_agent_renews_its_token_in_the_last_third_of_its_lifetime(agent, tmp_path):
    """The agent decides when to renew (a third of its token's lifetime left, agent/__main__.py);
    the service renews any current, valid agent token (there is no service-side renewal window)."""
    with agent.live.client("alice") as client:
        op = client.post("/api/v1/instances", json=instance_doc("renew-a")).json()["operation"]
        assert wait_operation(client, op["id"])["status"] == "succeeded"
    renewing = Agent(agent.live, "renew-a")
    short, _ = mint_agent_token(JWT_SECRET, renewing.identity, ttl=dt.timedelta(seconds=RENEW_TEST_TTL_S))
    # Made the instance's current token, as `orch token create` does (the instance found by its token's hash).
    with MongoClient(agent.live.env["ORCH_MONGODB_URL"]) as mongo:
        changed = mongo.get_default_database()["instances"].update_one(
            {"agent_token_hash": token_hash(renewing.token)}, {"$set": {"agent_token_hash": token_hash(short)}}
        )
        assert changed.modified_count == 1
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"url": agent.live.url, "token": short, "instance": renewing.identity}))
    # Into the token's last third: the agent renews before it reports.
    expires = jwt.decode(short, options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires - RENEW_TEST_TTL_S / 3 + 0.5 - time.time()))
    result = run_once(sys.executable, config)
    assert result.returncode == 0, result.stdout + result.stderr
    renewed = json.loads(config.read_text())["token"]
    assert renewed != short and "token renewed" in result.stderr
    assert jwt.decode(renewed, options={"verify_signature": False})["exp"] > expires
    response = renewing.post(renewing.report(), token=short)
    assert response.status_code == 401 and "revoked" in response.json()["detail"], response.text
    deadline = time.monotonic() + FLUSH_WAIT_S
    while not renewing.samples():
        assert time.monotonic() < deadline, "the renewed agent's report was not stored"
        time.sleep(0.2)


# -- the flush loop, without HTTP -------------------------------------------------


@pytest.fixture
def ingest(mongo_db, tmp_path):
    service = AgentIngest(load_settings({"ORCH_DATA_DIR": str(tmp_path), "ORCH_JWT_SECRET": JWT_SECRET}))
    yield service
    service.close()


def _buffer_unchecked(ingest: AgentIngest, instance: str, *reports: dict) -> None:
    """What a gap in validation would let through: reports buffered as if they had passed.

    All in one go, so the flush thread takes all of them or none.
    """
    rows = []
    for body in reports:
        ts = dt.datetime.fromtimestamp(body["ts"], dt.UTC).replace(tzinfo=None)
        rows.append((instance, body, ts, ts))
    with ingest._lock:
        ingest._buffer.extend(rows)


def _cpu_samples(instance: str) -> list[float]:
    return [s["cpu_percent"] for s in read_samples(instance, None, None, 1000)]


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + FLUSH_WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_flush_stores_the_good_reports_and_drops_only_the_unstorable(ingest):
    now = time.time()
    good = [report("good", now - 10 + i, cpu=i) for i in range(10)]
    # Incompressible and over MongoDB's 16 MiB document limit (DocumentTooLarge), and not JSON at all.
    too_big = {**report("good", now), "padding": base64.b64encode(os.urandom(24 << 20)).decode()}
    not_json = {**report("good", now), "value": object()}
    _buffer_unchecked(ingest, "good", *good[:4], too_big, *good[4:7], not_json, *good[7:])
    ingest.flush()
    assert _cpu_samples("good") == list(range(10))
    health = ingest.health()
    assert health["dropped"] == 2 and health["stored"] == 10 and health["buffered"] == 0, health
    assert "cannot be stored" in health["last_error"]
    assert ingest._thread.is_alive()
    # A dropped report is not shown as the instance's latest either.
    assert ingest.latest("good")[1]["cpu_percent"] == 9
    _wait_until(lambda: ingest.health()["ok"], "ingest is not ok again after a good flush")


def test_flush_splits_a_batch_the_store_refuses_and_stores_the_rest(ingest, monkeypatch):
    real = MetricBatch._get_collection()

    class RefusesPoison:
        """A store that refuses any batch holding the poisoned report, as a server-side check would."""

        def insert_one(self, document):
            if b"poison" in zlib.decompress(document["data"]):
                raise WriteError("document failed validation", 121, {})
            return real.insert_one(document)

    monkeypatch.setattr(MetricBatch, "_get_collection", classmethod(lambda cls: RefusesPoison()))
    now = time.time()
    reports = [report("good", now - 20 + i, cpu=i) for i in range(20)]
    reports[13]["agent_version"] = "poison"
    _buffer_unchecked(ingest, "good", *reports)
    ingest.flush()
    monkeypatch.undo()
    assert _cpu_samples("good") == [i for i in range(20) if i != 13]
    health = ingest.health()
    assert health["dropped"] == 1 and health["stored"] == 19 and "failed validation" in health["last_error"], health


def test_flush_survives_a_report_the_store_cannot_encode(ingest):
    # 10**30 cannot be a BSON integer: writing it as an instance's health killed the flush thread.
    _buffer_unchecked(ingest, "huge-int", {**report("huge-int", time.time()), "memory": {"total": 10**30, "used": 1}})
    _buffer_unchecked(ingest, "good", report("good", time.time(), cpu=7))
    ingest.flush()
    _buffer_unchecked(ingest, "good", report("good", time.time() + 1, cpu=8))
    _wait_until(lambda: _cpu_samples("good") == [7, 8], "reports after the unencodable one were not stored")
    assert ingest._thread.is_alive()
    _wait_until(lambda: ingest.health()["ok"], "ingest is not ok again after a good flush")


def test_the_flush_loop_survives_any_error(ingest, monkeypatch):
    def broken() -> None:
        raise RuntimeError("unexpected failure")

    monkeypatch.setattr(ingest, "_persist_health", broken)
    _buffer_unchecked(ingest, "good", report("good", time.time(), cpu=1))
    _wait_until(lambda: "unexpected failure" in (ingest.health()["last_error"] or ""), "the loop's error is not shown")
    assert ingest._thread.is_alive() and not ingest.health()["ok"]
    monkeypatch.undo()
    _buffer_unchecked(ingest, "good", report("good", time.time() + 1, cpu=2))
    _wait_until(lambda: _cpu_samples("good") == [1, 2], "reports after the error were not stored")
    _wait_until(lambda: ingest.health()["ok"], "ingest is not ok again after a good flush")


def test_reports_are_stored_while_the_upkeep_is_stuck_on_the_store(ingest, monkeypatch):
    """Health writes (each costs the embedded store milliseconds) run on their own thread: flushes go on."""
    release = threading.Event()
    started = threading.Event()
    real = ingest._persist_health

    def slow_health_writes() -> None:
        started.set()
        release.wait(30)
        real()

    monkeypatch.setattr(ingest, "_persist_health", slow_health_writes)
    _buffer_unchecked(ingest, "good", report("good", time.time(), cpu=1))
    assert started.wait(10), "no upkeep pass started"
    _buffer_unchecked(ingest, "good", report("good", time.time() + 1, cpu=2))
    _wait_until(lambda: _cpu_samples("good") == [1, 2], "reports were not stored while the upkeep pass waited")
    assert ingest.health()["ok"]
    release.set()


def test_a_storage_outage_keeps_the_reports_for_the_next_flush(ingest, monkeypatch):
    class Unreachable:
        def insert_one(self, document):
            raise AutoReconnect("connection refused")

    monkeypatch.setattr(MetricBatch, "_get_collection", classmethod(lambda cls: Unreachable()))
    _buffer_unchecked(ingest, "good", *(report("good", time.time() + i, cpu=i) for i in range(3)))
    ingest.flush()
    health = ingest.health()
    assert not health["ok"] and health["buffered"] == 3 and health["dropped"] == 0, health
    assert "connection refused" in health["last_error"]
    monkeypatch.undo()
    ingest.flush()
    assert _cpu_samples("good") == [0, 1, 2]
    health = ingest.health()
    assert health["ok"] and health["buffered"] == 0 and health["stored"] == 3, health
