"""The agent as it runs on an instance: `python -m agent` under Python 3.9 and 3.13 against a local HTTP server."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The oldest Python the agent supports: ORCH_TEST_PYTHON39, else pyenv's 3.9.18, else python3.9 on PATH.
_PYENV_PYTHON39 = os.path.expanduser("~/.pyenv/versions/3.9.18/bin/python")
PYTHON39 = os.environ.get("ORCH_TEST_PYTHON39") or (
    _PYENV_PYTHON39 if os.access(_PYENV_PYTHON39, os.X_OK) else shutil.which("python3.9")
)
REPORT_PATH = "/api/v1/agent/report"
TOKEN_PATH = "/api/v1/agent/token"
# A PATH with the basics and no nvidia-smi.
BASE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class ReportServer:
    """A stand-in for the service's agent endpoints that records what it receives.

    `reject_with` makes the report endpoint answer 401 with that detail, like the
    service does for a token it refuses; `renewed_token` is what the token endpoint hands out.
    """

    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict] = []
        self.reports: list[dict] = []
        self.reject_with: str | None = None
        self.renewed_token: str | None = None
        # What report answers carry in `notices` (the service's messages for the instance's users).
        self.notices: list = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with server._lock:
                    server.requests.append(
                        {"path": self.path, "authorization": self.headers.get("Authorization"), "body": body}
                    )
                if self.path == REPORT_PATH and server.reject_with:
                    self._answer(401, {"status_code": 401, "detail": server.reject_with})
                elif self.path == REPORT_PATH:
                    reports = body["reports"] if "reports" in body else [body]
                    with server._lock:
                        server.reports.extend(reports)
                    self._answer(202, {"accepted": len(reports), "notices": server.notices})
                elif self.path == TOKEN_PATH and server.renewed_token:
                    self._answer(200, {"token": server.renewed_token, "expires_at": "2099-01-01T00:00:00Z"})
                else:
                    self._answer(404, {"status_code": 404, "detail": f"no route {self.path}"})

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def wait_for_reports(self, count: int, timeout_s: float) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.reports) >= count:
                    return list(self.reports)
            time.sleep(0.1)
        raise AssertionError(f"expected {count} reports within {timeout_s}s, got {len(self.reports)}")


def make_token(**claims) -> str:
    """A JWT-shaped token; the agent only decodes its payload, so the signature is a placeholder."""

    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def valid_token(instance: str = "test-1") -> str:
    now = int(time.time())
    return make_token(sub=instance, aud="agent", iat=now, exp=now + 30 * 86400)


@pytest.fixture(params=["python3.9", "python3.13"])
def python(request) -> str:
    if request.param == "python3.9":
        if PYTHON39 is None or not os.access(PYTHON39, os.X_OK):
            pytest.fail(
                "Python 3.9 not found (ORCH_TEST_PYTHON39, ~/.pyenv/versions/3.9.18, python3.9 on PATH): "
                "the agent must be tested on the oldest Python it supports"
            )
        return PYTHON39
    return sys.executable


@pytest.fixture
def server():
    report_server = ReportServer()
    yield report_server
    report_server.stop()


def write_config(path: Path, url: str, token: str, interval: float = 30) -> Path:
    path.write_text(json.dumps({"url": url, "token": token, "instance": "test-1", "interval": interval}))
    return path


def agent_env(path: str = BASE_PATH) -> dict:
    # No bytecode: the agent's directory is the repository's, which the playbook copies from.
    return {"PATH": path, "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}


def run_once(python: str, config: Path, path: str = BASE_PATH) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-m", "agent", "--once", "--config", str(config)],
        cwd=REPO,
        env=agent_env(path),
        capture_output=True,
        text=True,
        timeout=60,
    )


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_once_sends_a_report_per_the_contract(python, server, tmp_path):
    token = valid_token()
    config = write_config(tmp_path / "config.json", server.url, token)

    result = run_once(python, config)

    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    [request] = server.requests
    assert request["path"] == REPORT_PATH
    assert request["authorization"] == f"Bearer {token}"
    assert request["body"] == {"reports": [printed]}
    report = printed
    assert set(report) == {
        "instance", "ts", "uptime_s", "load", "cpu_percent", "memory", "disk", "gpus", "agent_version",
    }
    assert report["instance"] == "test-1"
    ts = dt.datetime.fromisoformat(report["ts"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.timezone.utc) - ts).total_seconds()) < 60
    assert is_number(report["uptime_s"]) and report["uptime_s"] > 0
    assert len(report["load"]) == 3 and all(is_number(value) for value in report["load"])
    assert is_number(report["cpu_percent"]) and 0 <= report["cpu_percent"] <= 100
    assert isinstance(report["memory"]["total"], int) and 0 < report["memory"]["used"] <= report["memory"]["total"]
    mounts = {disk["mount"]: disk for disk in report["disk"]}
    assert "/" in mounts, report["disk"]
    assert 0 < mounts["/"]["used"] <= mounts["/"]["total"]
    assert not any(mount.startswith(("/proc", "/sys")) for mount in mounts), "pseudo filesystems are not disks"
    assert report["gpus"] == []  # no nvidia-smi on PATH
    assert isinstance(report["agent_version"], str) and report["agent_version"]


FAKE_NVIDIA_SMI = """#!/bin/sh
# Answers only the query the agent is meant to make.
if [ "$*" != "--query-gpu=index,name,utilization.gpu,memory.total,memory.used,temperature.gpu --format=csv,noheader,nounits" ]; then
  echo "unexpected arguments: $*" >&2; exit 2
fi
echo "0, NVIDIA A10G, 37, 23028, 1024, 41"
echo "1, NVIDIA A10G, [N/A], 23028, 0, [N/A]"
"""


def test_gpus_come_from_nvidia_smi(python, server, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    nvidia_smi = bin_dir / "nvidia-smi"
    nvidia_smi.write_text(FAKE_NVIDIA_SMI)
    nvidia_smi.chmod(0o755)
    config = write_config(tmp_path / "config.json", server.url, valid_token())

    result = run_once(python, config, path=f"{bin_dir}:{BASE_PATH}")

    assert result.returncode == 0, result.stderr
    mib = 1024 * 1024
    assert json.loads(result.stdout)["gpus"] == [
        {"index": 0, "name": "NVIDIA A10G", "utilization_percent": 37, "memory_total": 23028 * mib,
         "memory_used": 1024 * mib, "temperature_c": 41},
        {"index": 1, "name": "NVIDIA A10G", "utilization_percent": None, "memory_total": 23028 * mib,
         "memory_used": 0, "temperature_c": None},
    ]
    assert server.reports[0]["gpus"][0]["utilization_percent"] == 37


def test_reports_are_buffered_while_the_service_is_down_and_delivered_in_order(python, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = write_config(tmp_path / "config.json", f"http://127.0.0.1:{port}", valid_token(), interval=0.5)
    agent = subprocess.Popen(
        [python, "-m", "agent", "--config", str(config)],
        cwd=REPO, env=agent_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        time.sleep(3)  # several intervals with nothing listening
        server = ReportServer(port)
        try:
            reports = server.wait_for_reports(5, timeout_s=20)
        finally:
            server.stop()
    finally:
        agent.terminate()
        log = agent.communicate(timeout=10)[0]
    assert "unreachable" in log and "send failed" in log, log
    first_batch = server.requests[0]["body"]["reports"]
    assert len(first_batch) >= 3, f"the first delivery should carry the reports buffered while down: {server.requests}"
    uptimes = [report["uptime_s"] for report in reports]
    assert uptimes == sorted(uptimes), "buffered reports must arrive oldest first"


@pytest.mark.parametrize(
    "detail",
    [
        "wrong audience: expected 'agent', token is for 'orch-api'",
        "bad signature: the token was not signed by this service",
        "token belongs to instance 'other', not 'test-1'",
    ],
)
def test_auth_failure_names_the_cause(python, server, tmp_path, detail):
    server.reject_with = detail
    config = write_config(tmp_path / "config.json", server.url, valid_token())

    result = run_once(python, config)

    assert result.returncode == 1
    assert "auth failed" in result.stderr and detail in result.stderr, result.stderr
    assert "clock skew" not in result.stderr  # the token is valid by this host's clock


def test_expired_token_is_called_out_by_the_local_clock(python, server, tmp_path):
    expired_at = int(time.time()) - 3600
    server.reject_with = "token expired at (service clock)"
    config = write_config(tmp_path / "config.json", server.url, make_token(sub="test-1", aud="agent", exp=expired_at))

    result = run_once(python, config)

    assert result.returncode == 1
    when = dt.datetime.fromtimestamp(expired_at, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    assert f"token expired at {when}" in result.stderr and "clock skew?" in result.stderr, result.stderr
    assert "token expired at (service clock)" in result.stderr


def test_token_is_renewed_before_it_expires_and_stored(python, server, tmp_path):
    now = int(time.time())
    old_token = make_token(sub="test-1", aud="agent", iat=now - 29 * 86400, exp=now + 86400)
    server.renewed_token = valid_token()
    config = write_config(tmp_path / "config.json", server.url, old_token)
    config.chmod(0o600)

    result = run_once(python, config)

    assert result.returncode == 0, result.stderr
    assert [request["path"] for request in server.requests] == [TOKEN_PATH, REPORT_PATH]
    assert server.requests[0]["authorization"] == f"Bearer {old_token}"
    assert server.requests[1]["authorization"] == f"Bearer {server.renewed_token}"
    stored = json.loads(config.read_text())
    assert stored["token"] == server.renewed_token and stored["url"] == server.url
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_a_fresh_token_is_not_renewed(server, tmp_path):
    config = write_config(tmp_path / "config.json", server.url, valid_token())
    server.renewed_token = valid_token()

    result = run_once(sys.executable, config)

    assert result.returncode == 0, result.stderr
    assert [request["path"] for request in server.requests] == [REPORT_PATH]
