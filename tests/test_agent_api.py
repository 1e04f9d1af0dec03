"""The service side of the agent: report ingestion, token checks with causes, health, metrics."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from pathlib import Path

import httpx
import jwt
import pytest

from orchestrator.auth import AGENT_AUDIENCE, ISSUER, mint_agent_token, signing_key
from tests.live import JWT_SECRET, ORCH, REPO, free_port, instance_doc, start_service, wait_operation
from tests.tcpproxy import TcpProxy
from tests.test_agent import BASE_PATH, FAKE_NVIDIA_SMI, agent_env, python, run_once  # noqa: F401 (fixture)


def report(instance: str, ts: float | None = None, cpu: float = 12.5) -> dict:
    return {
        "instance": instance,
        "ts": ts if ts is not None else time.time(),
        "uptime_s": 1234.5,
        "load": [0.1, 0.2, 0.3],
        "cpu_percent": cpu,
        "memory": {"total": 8_000_000_000, "used": 2_000_000_000},
        "disk": [{"mount": "/", "total": 100_000_000_000, "used": 10_000_000_000}],
        "gpus": [
            {"index": 0, "name": "NVIDIA A10G", "utilization_percent": 40, "memory_total": 23028,
             "memory_used": 1024, "temperature_c": 51}
        ],
        "agent_version": "test",
    }


def agent_token_for(live, instance: str, owner: str = "alice") -> str:
    """`orch token create --instance` as an admin would run it where the service's settings are."""
    result = subprocess.run(
        [ORCH, "token", "create", "--instance", instance, "--owner", owner],
        env=live.env, capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def agent_identity(token: str) -> str:
    """The instance an agent token is for: its instance's id, the `instance` of its reports."""
    return jwt.decode(token, options={"verify_signature": False})["sub"]


def post_report(live, token: str, body: dict) -> httpx.Response:
    return httpx.post(f"{live.url}/api/v1/agent/report", json=body, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def agent_service(tmp_path_factory, mongo_url):
    live = start_service(tmp_path_factory.mktemp("agent-service"), mongo_url, ORCH_AGENT_INTERVAL_S="1")
    with live.client("alice") as client:
        for name in ("box-a", "box-b"):
            op = client.post("/api/v1/instances", json=instance_doc(name)).json()["operation"]
            assert wait_operation(client, op["id"])["status"] == "succeeded"
    yield live
    live.stop()


def test_reports_are_stored_and_health_follows_them(agent_service):
    live = agent_service
    token = agent_token_for(live, "box-a")
    box_a = agent_identity(token)
    start = time.time()
    assert post_report(live, token, report(box_a, start - 2, cpu=10)).status_code == 202
    batch = {"reports": [report(box_a, start - 1, cpu=20), report(box_a, start, cpu=30)]}
    response = post_report(live, token, batch)
    assert response.status_code == 202 and response.json() == {"accepted": 2}
    with live.client("alice") as client:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            instance = client.get("/api/v1/instances/box-a").json()
            if instance["health"]["last_report"].get("cpu_percent") == 30:
                break
            time.sleep(0.1)
        assert instance["health"]["state"] == "healthy"
        assert instance["health"]["last_report"]["gpus"][0]["name"] == "NVIDIA A10G"
        since = dt.datetime.fromtimestamp(start - 1.5, dt.UTC).isoformat()
        samples = client.get("/api/v1/instances/box-a/metrics", params={"since": since}).json()["samples"]
        assert [s["cpu_percent"] for s in samples] == [20, 30]
        all_samples = client.get("/api/v1/instances/box-a/metrics").json()["samples"]
        assert [s["cpu_percent"] for s in all_samples] == [10, 20, 30]
        # Three missed intervals (1 s each here) and the instance is unreachable.
        time.sleep(3.5)
        assert client.get("/api/v1/instances/box-a").json()["health"]["state"] == "unreachable"


def test_token_rejections_carry_their_cause(agent_service):
    live = agent_service
    now = dt.datetime.now(dt.UTC)
    token_a = agent_token_for(live, "box-a")
    box_a, box_b = agent_identity(token_a), agent_identity(agent_token_for(live, "box-b"))
    forged, _ = mint_agent_token("someone-elses-secret-" + "y" * 32, box_a)
    agent_key = signing_key(JWT_SECRET, AGENT_AUDIENCE)
    expired = jwt.encode(
        {"iss": ISSUER, "sub": box_a, "aud": "agent", "exp": now - dt.timedelta(hours=2)}, agent_key, "HS256"
    )
    future = jwt.encode(
        {"iss": ISSUER, "sub": box_a, "aud": "agent", "iat": now + dt.timedelta(hours=1), "exp": now + dt.timedelta(hours=2)},
        agent_key,
        "HS256",
    )
    user_token = live.token_for("alice")
    cases = [
        (forged, 401, "bad signature"),
        (expired, 401, "expired"),
        (future, 401, "clock skew"),
        (user_token, 401, "wrong audience"),
    ]
    for token, status, cause in cases:
        response = post_report(live, token, report(box_a))
        assert response.status_code == status, response.text
        assert cause in response.json()["detail"]
    # An agent token for box-a cannot report for box-b.
    response = post_report(live, token_a, report(box_b))
    assert response.status_code == 403 and box_a in response.json()["detail"]
    # A token minted by the service but replaced by a newer one is revoked.
    stale, _ = mint_agent_token(JWT_SECRET, box_a)
    response = post_report(live, stale, report(box_a))
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    # An agent token is accepted nowhere but the agent endpoints.
    response = httpx.get(f"{live.url}/api/v1/instances", headers={"Authorization": f"Bearer {token_a}"})
    assert response.status_code == 401 and "wrong audience" in response.json()["detail"]
    response = httpx.post(f"{live.url}/api/v1/agent/report", json=report(box_a))
    assert response.status_code == 401 and "Authorization" in response.json()["detail"]


def test_malformed_reports_name_the_field(agent_service):
    live = agent_service
    token = agent_token_for(live, "box-b")
    box_b = agent_identity(token)
    bad = report(box_b)
    bad["cpu_percent"] = "lots"
    response = post_report(live, token, bad)
    assert response.status_code == 422 and "cpu_percent" in response.json()["detail"]
    response = post_report(live, token, {"reports": []})
    assert response.status_code == 422 and "reports" in response.json()["detail"]
    bad = report(box_b)
    bad["ts"] = "yesterday"
    response = post_report(live, token, bad)
    assert response.status_code == 422 and "ts" in response.json()["detail"]
    # The agent's own format: ISO 8601 times are accepted as well as epoch seconds.
    iso = report(box_b)
    iso["ts"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    assert post_report(live, token, iso).status_code == 202


def test_agent_token_renewal_and_revocation_on_delete(agent_service):
    live = agent_service
    token = agent_token_for(live, "box-b")
    box_b = agent_identity(token)
    renewed = httpx.post(f"{live.url}/api/v1/agent/token", headers={"Authorization": f"Bearer {token}"})
    assert renewed.status_code == 200
    new_token = renewed.json()["token"]
    assert post_report(live, new_token, report(box_b)).status_code == 202
    assert "revoked" in post_report(live, token, report(box_b)).json()["detail"]
    with live.client("alice") as client:
        op = client.delete("/api/v1/instances/box-b").json()["operation"]
        assert wait_operation(client, op["id"])["status"] == "succeeded"
    # Past the service's 5 s token cache, a report sets off a refresh of the check in the
    # background (answered from the cache meanwhile); within a flush interval the token is refused.
    time.sleep(5.5)
    deadline = time.monotonic() + 3
    while (response := post_report(live, new_token, report(box_b))).status_code == 202:
        assert time.monotonic() < deadline, "the deleted instance's token still works"
        time.sleep(0.1)
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def _agent_config(tmp_path, url: str, token: str, instance: str, interval: float) -> Path:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"url": url, "token": token, "instance": instance, "interval": interval}))
    return path


def _samples(live, instance: str) -> list[dict]:
    with live.client("alice") as client:
        return client.get(f"/api/v1/instances/{instance}/metrics").json()["samples"]


def test_agent_reports_to_the_live_service_with_gpu_figures(python, agent_service, tmp_path):
    live = agent_service
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    token = agent_token_for(live, "box-a")
    config = _agent_config(tmp_path, live.url, token, agent_identity(token), 30)
    before = len(_samples(live, "box-a"))
    result = run_once(python, config, path=f"{bin_dir}:{BASE_PATH}")
    assert result.returncode == 0, result.stdout + result.stderr
    deadline = time.monotonic() + 10
    while len(samples := _samples(live, "box-a")) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    gpus = samples[-1]["gpus"]
    assert [(g["index"], g["name"], g["utilization_percent"]) for g in gpus] == [
        (0, "NVIDIA A10G", 37),
        (1, "NVIDIA A10G", None),
    ]


def test_agent_buffers_while_the_service_is_down_and_delivers_when_back(python, agent_service, tmp_path):
    live = agent_service
    proxy = TcpProxy(target_port=int(live.url.rsplit(":", 1)[1]), listen_port=free_port())
    token = agent_token_for(live, "box-a")
    config = _agent_config(tmp_path, f"http://127.0.0.1:{proxy.listen_port}", token, agent_identity(token), 0.5)
    before = len(_samples(live, "box-a"))
    agent = subprocess.Popen(
        [python, "-m", "agent", "--config", str(config)],
        cwd=REPO, env=agent_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        time.sleep(3)  # several intervals while the service cannot be reached
        assert len(_samples(live, "box-a")) == before
        proxy.up()
        deadline = time.monotonic() + 30
        while len(samples := _samples(live, "box-a")) < before + 5 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        agent.terminate()
        log = agent.communicate(timeout=10)[0]
        proxy.down()
    delivered = samples[before:]
    assert len(delivered) >= 5, log
    times = [s["ts"] for s in delivered]
    assert times == sorted(times), "buffered reports are delivered oldest first"
