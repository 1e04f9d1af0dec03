"""Shared fixtures: the MongoDB store, a RabbitMQ vhost, and the Pulumi CLI stand-in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STANDIN_ROOT = REPO / "tests" / "pulumi_standin"


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory) -> str:
    """A MongoDB URL: ORCH_MONGODB_URL when set, else mongoeco's wire server in its own process.

    Its own process, so worker processes started by tests share the same store.
    """
    if os.environ.get("ORCH_MONGODB_URL"):
        yield os.environ["ORCH_MONGODB_URL"]
        return
    path = tmp_path_factory.mktemp("mongo") / "store.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.embedded_store", "--path", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    url = proc.stdout.readline().strip()
    assert url.startswith("mongodb://"), f"embedded store did not start: {url!r}"
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def mongo_db(mongo_url):
    """A fresh database name per test, connected as mongoengine's default alias."""
    import mongoengine
    from cryptography.fernet import Fernet

    from orchestrator.secretfield import install_store_key

    # Encrypted fields (the admin SSH key) need a store key, as db.connect installs one.
    install_store_key(Fernet.generate_key())
    name = f"orch_test_{uuid.uuid4().hex[:10]}"
    mongoengine.disconnect_all()
    mongoengine.connect(db=name, host=mongo_url, uuidRepresentation="standard")
    yield name
    mongoengine.disconnect_all()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """A fresh vhost on the local broker for this test run (the test command starts the broker)."""
    if os.environ.get("ORCH_TEST_AMQP_URL"):
        yield os.environ["ORCH_TEST_AMQP_URL"]
        return
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmqctl not found: run the suite with scripts/test, which installs and starts RabbitMQ")
    vhost = f"orch-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def standin_env(tmp_path, monkeypatch) -> dict:
    """Environment for the Automation API to drive the stand-in with a temp file backend."""
    backend = tmp_path / "pulumi-backend"
    backend.mkdir()
    env = {
        "ORCH_PULUMI_COMMAND": str(STANDIN_ROOT),
        "ORCH_PULUMI_BACKEND_URL": f"file://{backend}",
        "PULUMI_BACKEND_URL": f"file://{backend}",
        "PULUMI_CONFIG_PASSPHRASE": "test-passphrase",
        "PULUMI_HOME": str(tmp_path / "pulumi-home"),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("PULUMI_STANDIN_FAIL", "PULUMI_STANDIN_LATENCY_MS", "PULUMI_STANDIN_PUBLIC_IP"):
        monkeypatch.delenv(key, raising=False)
    return env


@pytest.fixture(scope="module")
def service(tmp_path_factory, mongo_url):
    """`orch serve` in a subprocess: fresh database, the stand-in, in-process workers."""
    from tests.live import start_service

    live = start_service(tmp_path_factory.mktemp("service"), mongo_url)
    yield live
    live.stop()
