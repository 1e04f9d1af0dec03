"""The HTTP API under hostile and careless input (issue 11, items 5, 6 and 13).

Each probe here was a 500 (or unbounded) on the service before: now a 4xx whose
message names the problem, and any 5xx left is logged with its traceback.
"""

from __future__ import annotations

import logging
import socket
import time
from unittest import mock
from urllib.parse import urlsplit

import pytest
from litestar.testing import TestClient

from orchestrator import db
from orchestrator.api.app import MAX_REQUEST_BODY_BYTES, create_app
from orchestrator.api.http_protocol import MAX_REQUEST_HEAD_BYTES
from orchestrator.listing.keyset import MAX_CURSOR_CHARS
from tests.live import instance_doc, wait_operation

JSON = {"content-type": "application/json"}
DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


@pytest.fixture(scope="module")
def labelled(service):
    """One running instance of alice's labelled team=test, for the filters to find."""
    with service.client("alice") as client:
        created = client.post("/api/v1/instances", json=instance_doc("labelled-box"))
        assert created.status_code == 202, created.text
        assert wait_operation(client, created.json()["operation"]["id"])["status"] == "succeeded"
    return "labelled-box"


def _assert_no_server_errors_logged(service) -> None:
    assert "Traceback" not in service.logs(), service.logs()


@pytest.mark.parametrize("path", ["/api/v1/instances", "/api/v1/snapshots"])
@pytest.mark.parametrize("cursor", ["not-a-cursor", "W10", "x" * (MAX_CURSOR_CHARS + 1)])
def test_a_cursor_that_is_not_ours_is_refused_naming_cursor(service, path, cursor):
    with service.client("alice") as client:
        response = client.get(path, params={"cursor": cursor})
        assert response.status_code in (400, 422), response.text
        assert "cursor" in response.text
    _assert_no_server_errors_logged(service)


def test_a_cursor_for_another_sort_is_a_422(service):
    with service.client("keyset-user") as client:  # its own instances: alice's listings stay as other tests expect
        for n in range(3):
            created = client.post("/api/v1/instances", json=instance_doc(f"keyset-{n}"))
            assert created.status_code == 202, created.text
        first = client.get("/api/v1/instances", params={"limit": 1, "sort": "name"}).json()
        assert first["next_cursor"]
        response = client.get("/api/v1/instances", params={"cursor": first["next_cursor"], "sort": "-created_at"})
        assert response.status_code == 422, response.text
        assert response.json()["extra"]["field"] == "cursor"
        assert "sort=name" in response.json()["detail"]


@pytest.mark.parametrize("label", ["__raw__=1", "a.b=1", "$where=1", "labels.team=test", "Team=test", "team\n=test"])
def test_label_filter_keys_that_are_not_label_keys_are_422s(service, label):
    with service.client("alice") as client:
        response = client.get("/api/v1/instances", params={"label": label})
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["detail"].startswith("label: key") and body["extra"] == {"field": "label"}
    _assert_no_server_errors_logged(service)


@pytest.mark.parametrize("label", ["team=x=y", "team=TEST", "team=a b", "noequals", ""])
def test_label_filter_values_are_checked_too(service, label):
    with service.client("alice") as client:
        response = client.get("/api/v1/instances", params={"label": label})
        assert response.status_code == 422, response.text
        assert response.json()["extra"] == {"field": "label"}


def test_label_filter_is_an_exact_match_never_an_operator(service, labelled):
    with service.client("alice") as client:
        names = lambda label: [i["name"] for i in client.get("/api/v1/instances", params={"label": label}).json()["items"]]  # noqa: E731
        assert names("team=test") == [labelled]
        assert names("team=other") == []
        # mongoengine keyword syntax in a key is only ever a literal label key.
        assert names("team__ne=nothing") == []
        assert names("team__exists=") == []


@pytest.mark.parametrize("value", ["0.5", "1700000000", "yesterday", "2026-13-01T00:00:00Z"])
def test_metrics_times_must_be_rfc3339_date_times(service, labelled, value):
    with service.client("alice") as client:
        response = client.get(f"/api/v1/instances/{labelled}/metrics", params={"until": value})
        assert response.status_code == 400, response.text
        assert response.json()["detail"].startswith("until:") and response.json()["extra"] == {"field": "until"}
        since = client.get(f"/api/v1/instances/{labelled}/metrics", params={"since": "2026-01-31T12:00:00+01:00"})
        assert since.status_code == 200, since.text


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"kind": "Instance", "name": "\xff\xfe"}', "Invalid UTF-8"),
        (b"\xff\xfe", "malformed"),
        (b'{"name": "a", "labels": {"\\udc80": "x"}}', "surrogate"),
        (DEEP_ARRAY, "nested too deeply"),
        (DEEP_OBJECT, "nested too deeply"),
    ],
    ids=["invalid-utf8-string", "invalid-utf8-body", "lone-surrogate", "deep-array", "deep-object"],
)
def test_undecodable_bodies_are_400s_naming_the_problem(service, method, body, problem):
    path = "/api/v1/instances" if method == "POST" else "/api/v1/instances/some-box"
    with service.client("alice") as client:
        response = client.request(method, path, content=body, headers=JSON)
        assert response.status_code == 400, response.text
        assert response.json()["detail"].startswith("request body is not valid JSON") and problem in response.text
    _assert_no_server_errors_logged(service)


def test_request_body_over_the_limit_is_a_413_naming_it(service):
    with service.client("alice") as client:
        padding = "x" * MAX_REQUEST_BODY_BYTES
        for method, path in [("POST", "/api/v1/instances"), ("PATCH", "/api/v1/instances/some-box")]:
            response = client.request(method, path, json={**instance_doc("big-box"), "padding": padding})
            assert response.status_code == 413, response.text
            assert str(MAX_REQUEST_BODY_BYTES) in response.json()["detail"]


def _raw_request(url: str, head: bytes) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_request_head_over_the_limit_is_refused_with_431(service):
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * MAX_REQUEST_HEAD_BYTES + b"\r\nConnection: close\r\n\r\n"
    answer = _raw_request(service.url, big)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert str(MAX_REQUEST_HEAD_BYTES).encode() in answer
    # Sent in pieces, it is refused once over the limit, before the head ends (the last
    # piece crosses the limit: nothing is sent after the service closes the connection).
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    piece = b"a" * 4096
    pieces = -(-(MAX_REQUEST_HEAD_BYTES + 1 - len(start)) // len(piece))
    parts = urlsplit(service.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(start)
        for _ in range(pieces):
            time.sleep(0.05)
            sock.sendall(piece)
        refused = b""
        while chunk := sock.recv(65536):
            refused += chunk
    assert refused.startswith(b"HTTP/1.1 431 "), refused[:200]
    # A head just under the limit, and a large body behind a small head, still pass.
    filler = b"a" * (MAX_REQUEST_HEAD_BYTES - 200)
    ok = _raw_request(service.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + filler + b"\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 "), ok[:200]
    body = b'{"name": "' + b"x" * (4 * MAX_REQUEST_HEAD_BYTES) + b'"}'
    head = (
        b"POST /api/v1/instances/nope/snapshots HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {service.token_for('alice')}\r\nContent-Length: {len(body)}\r\n".encode()
        + b"Connection: close\r\n\r\n"
    )
    answer = _raw_request(service.url, head + body)
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]


def test_options_allow_lists_every_method_of_the_path(service):
    with service.client("alice") as client:
        for path, methods in [
            ("/api/v1/instances/some-box", {"GET", "PATCH", "DELETE", "OPTIONS"}),
            ("/api/v1/instances", {"GET", "POST", "OPTIONS"}),
            ("/api/v1/snapshots/some-snap", {"GET", "DELETE", "OPTIONS"}),
        ]:
            response = client.options(path)
            assert response.status_code == 204
            assert set(response.headers["allow"].split(", ")) == methods, (path, response.headers["allow"])


def test_openapi_types_bodies_and_lists_the_error_responses(service):
    with service.client("alice") as client:
        schema = client.get("/schema/openapi.json").json()
    ref = lambda operation, code: operation["responses"][code]["content"]["application/json"]["schema"]["$ref"]  # noqa: E731
    body_ref = lambda operation: operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]  # noqa: E731
    instances, one = schema["paths"]["/api/v1/instances"], schema["paths"]["/api/v1/instances/{name}"]
    assert body_ref(instances["post"]) == "#/components/schemas/InstanceDoc"
    assert body_ref(one["patch"]) == "#/components/schemas/InstanceChange"
    assert ref(instances["post"], "202") == "#/components/schemas/InstanceOperation"
    assert ref(instances["get"], "200") == "#/components/schemas/InstancePage"
    assert ref(one["get"], "200") == "#/components/schemas/InstanceView"
    assert {"200", "202", "400", "401", "404", "409", "413", "422"} <= set(one["patch"]["responses"])
    assert {"401", "404", "502"} <= set(schema["paths"]["/api/v1/instances/{name}/stack"]["get"]["responses"])
    assert ref(one["delete"], "409") == "#/components/schemas/ErrorBody"
    components = schema["components"]["schemas"]
    assert components["InstanceSpec"]["properties"]["ssh_users"]["items"] == {"$ref": "#/components/schemas/SshUser"}
    assert set(components["ErrorBody"]["required"]) == {"status_code", "detail"}


def test_validation_errors_stay_the_services_422s_naming_fields(service):
    with service.client("alice") as client:
        response = client.post("/api/v1/instances", json=instance_doc("two-bad", disk_gb=-1, machine_type=""))
        assert response.status_code == 422
        assert "spec.disk_gb" in response.json()["detail"] and "spec.machine_type" in response.json()["detail"]


def test_unexpected_exceptions_are_logged_with_traceback_and_answered_without_internals(monkeypatch):
    runtime = mock.MagicMock()
    runtime.dispatcher.ping.side_effect = RuntimeError("broker client exploded: secret internals")
    monkeypatch.setattr(db, "ping", lambda: True)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.ERROR)
    handler.emit = records.append
    logger = logging.getLogger("orch.api")
    logger.addHandler(handler)
    try:
        with TestClient(create_app(runtime)) as client:
            response = client.get("/healthz")
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500
    assert response.json() == {"status_code": 500, "detail": "Internal Server Error"}
    (record,) = records
    assert "GET /healthz" in record.getMessage()
    assert record.exc_info and "broker client exploded" in str(record.exc_info[1])
