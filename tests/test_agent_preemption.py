"""A spot machine's agent reads each cloud's preemption notice from a local fake metadata service
(agent/preemption.py), on Python 3.9 and 3.13, and reports it once."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.preemption import PreemptionWatch
from tests.test_agent import python, run_once, server, valid_token  # noqa: F401 (fixtures)

AWS_ACTION = {"action": "stop", "time": "2026-12-01T03:00:00Z"}
AZURE_EVENTS = {
    "DocumentIncarnation": 2,
    "Events": [
        {"EventId": "A1", "EventType": "Freeze", "NotBefore": "Mon, 01 Dec 2026 03:00:00 GMT"},
        {"EventId": "B2", "EventType": "Preempt", "ResourceType": "VirtualMachine",
         "Resources": ["vm-1"], "EventStatus": "Scheduled", "NotBefore": "Mon, 01 Dec 2026 03:00:30 GMT"},
    ],
}


class FakeMetadata:
    """169.254.169.254 as each cloud answers it; `preempting` says whether a notice is up.

    Each cloud's header is required as the real services require it (a request without it is refused).
    """

    def __init__(self) -> None:
        self.preempting = False
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:  # noqa: N802
                fake.requests.append(("PUT", self.path))
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._answer(200, b"imds-token")
                self._answer(400)

            def do_GET(self) -> None:  # noqa: N802
                fake.requests.append(("GET", self.path))
                if self.path == "/latest/meta-data/spot/instance-action":
                    if self.headers.get("X-aws-ec2-metadata-token") != "imds-token":
                        return self._answer(401)
                    return self._answer(200, json.dumps(AWS_ACTION).encode()) if fake.preempting else self._answer(404)
                if self.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self._answer(403)
                    return self._answer(200, b"TRUE" if fake.preempting else b"FALSE")
                if self.path == "/metadata/scheduledevents?api-version=2020-07-01":
                    if self.headers.get("Metadata") != "true":
                        return self._answer(400)
                    events = AZURE_EVENTS if fake.preempting else {"DocumentIncarnation": 1, "Events": []}
                    return self._answer(200, json.dumps(events).encode())
                self._answer(404)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def metadata():
    fake = FakeMetadata()
    yield fake
    fake.stop()


def _config(path: Path, url: str, metadata_url: str, **extra) -> Path:
    body = {"url": url, "token": valid_token(), "instance": "test-1", "interval": 30, "metadata_url": metadata_url}
    path.write_text(json.dumps({**body, **extra}))
    return path


@pytest.mark.parametrize(
    "cloud, source, detail",
    [
        ("aws", "aws-imds", "spot instance-action stop at 2026-12-01T03:00:00Z"),
        ("gcp", "gcp-metadata", "instance/preempted is TRUE"),
        ("azure", "azure-scheduled-events", "scheduled event Preempt B2 not before Mon, 01 Dec 2026 03:00:30 GMT"),
    ],
)
def test_a_spot_agent_reports_its_clouds_preemption_notice(python, server, metadata, tmp_path, cloud, source, detail):
    config = _config(tmp_path / "config.json", server.url, metadata.url, spot=True, cloud=cloud)
    result = run_once(python, config)
    assert result.returncode == 0, result.stderr
    assert "preemption" not in server.reports[-1], "nothing announced yet"

    metadata.preempting = True
    result = run_once(python, config)
    assert result.returncode == 0, result.stderr
    assert server.reports[-1]["preemption"] == {"source": source, "detail": detail}


def test_an_agent_that_is_not_spot_never_asks_the_metadata_service(python, server, metadata, tmp_path):
    metadata.preempting = True
    result = run_once(python, _config(tmp_path / "config.json", server.url, metadata.url, cloud="aws"))
    assert result.returncode == 0, result.stderr
    assert metadata.requests == [] and "preemption" not in server.reports[-1]


def test_each_notice_is_reported_once_and_a_silent_service_costs_the_timeout(metadata):
    watch = PreemptionWatch("", metadata.url)  # no cloud in the config: each one's service is asked
    assert watch.check() is None
    metadata.preempting = True
    assert watch.check() == {"source": "aws-imds", "detail": "spot instance-action stop at 2026-12-01T03:00:00Z"}
    assert watch.check() is None, "the same notice is reported once"

    # An address where nothing answers: each probe gives up after its timeout.
    silent = PreemptionWatch("gcp", "http://10.255.255.1", timeout_s=0.2)
    started = time.monotonic()
    assert silent.check() is None
    assert time.monotonic() - started < 2
