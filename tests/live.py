"""Running the real service (and workers) as subprocesses for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from orchestrator.auth import mint_user_token
from orchestrator.db import url_with_database

REPO = Path(__file__).resolve().parent.parent
STANDIN_ROOT = REPO / "tests" / "pulumi_standin"
JWT_SECRET = "test-secret-" + "x" * 32
ORCH = str(Path(sys.executable).parent / "orch")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(tmp: Path, mongo_url: str, **overrides: str) -> dict[str, str]:
    """Settings for a service (or worker) on a fresh database, backend and data dir under tmp."""
    backend = tmp / "pulumi-backend"
    backend.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "PULUMI_STANDIN_"))}
    env.update(
        {
            "ORCH_DATA_DIR": str(tmp / "data"),
            "ORCH_MONGODB_URL": url_with_database(mongo_url, f"orch_{uuid.uuid4().hex[:10]}"),
            "ORCH_PULUMI_COMMAND": str(STANDIN_ROOT),
            "ORCH_PULUMI_BACKEND_URL": f"file://{backend}",
            "ORCH_JWT_SECRET": JWT_SECRET,
            "PULUMI_CONFIG_PASSPHRASE": "test-passphrase",
            "PULUMI_HOME": str(tmp / "pulumi-home"),
            "ORCH_OPERATION_LEASE_S": "6",
            "ORCH_REDISPATCH_AFTER_S": "3",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


@dataclass
class LiveService:
    url: str
    env: dict[str, str]
    process: subprocess.Popen
    log_path: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def admin_token(self) -> str:
        return mint_user_token(JWT_SECRET, "admin", admin=True)

    def token_for(self, user: str) -> str:
        return mint_user_token(JWT_SECRET, user)

    def client(self, user: str = "alice", token: str | None = None) -> httpx.Client:
        token = token or self.token_for(user)
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def start_worker(self, **overrides: str) -> subprocess.Popen:
        env = {**self.env, **overrides}
        log = open(self.log_path.with_name(f"worker-{len(self.workers)}.log"), "w")
        proc = subprocess.Popen([ORCH, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.workers.append(proc)
        return proc

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        for proc in [*self.workers, self.process]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, self.process]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_service(tmp: Path, mongo_url: str, **overrides: str) -> LiveService:
    port = free_port()
    env = service_env(tmp, mongo_url, **{"ORCH_PUBLIC_URL": f"http://127.0.0.1:{port}", **overrides})
    log_path = tmp / "service.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [ORCH, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
    )
    service = LiveService(url=f"http://127.0.0.1:{port}", env=env, process=proc, log_path=log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"orch serve exited with {proc.returncode}:\n{service.logs()}")
        try:
            if httpx.get(f"{service.url}/healthz", timeout=2).status_code in (200, 503):
                return service
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    service.stop()
    raise RuntimeError(f"orch serve did not answer within 60 s:\n{service.logs()}")


def wait_operation(client: httpx.Client, op_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = client.get(f"/api/v1/operations/{op_id}").json()
        if op["status"] in ("succeeded", "failed"):
            return op
        time.sleep(0.2)
    # What it was doing first, short: a CI report keeps only the head of a long message.
    steps = ", ".join(f"{step['name']}: {step['status']}" for step in op.get("steps", []))
    tail = "\n".join(op.get("logs", [])[-15:])
    raise AssertionError(
        f"operation {op_id} did not finish in {timeout} s: {op['status']}, attempts {op.get('attempts')}, "
        f"steps [{steps}]; last log lines:\n{tail}"
    )


def instance_doc(name: str, cloud: str = "docker", **spec: object) -> dict:
    """A minimal valid instance document per cloud (no configuration: no Ansible)."""
    defaults = {
        "aws": {"region": "us-east-1", "machine_type": "t3.medium"},
        "gcp": {"region": "us-central1", "machine_type": "e2-standard-2"},
        "azure": {"region": "eastus", "machine_type": "Standard_B2s"},
        "docker": {"region": "local", "machine_type": "small"},
    }[cloud]
    body = {
        "cloud": cloud,
        **defaults,
        "disk_gb": 30,
        "ssh_users": [{"name": "alice", "public_key": TEST_PUBLIC_KEY, "sudo": True}],
        "allowed_ssh_cidrs": ["203.0.113.0/24"],
        "configure": False,
    }
    body.update(spec)
    return {"kind": "Instance", "name": name, "labels": {"team": "test"}, "spec": body}


TEST_PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIENbx5+Yq7JCLBGH7ZeEZZ905DkMzP6fIPg/LOPWe1gK test@example"
)
