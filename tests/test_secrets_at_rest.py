"""Secrets at rest and in logs (issue 11, item 10)."""

from __future__ import annotations

import base64
import os
import secrets
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
import jwt
import mongoengine
import pymongo
import pytest
from pymongo.errors import OperationFailure

from orchestrator.db import encrypt_plaintext_secrets
from orchestrator.embedded_store import EmbeddedStore
from orchestrator.models import Instance
from orchestrator.secretfield import ENCRYPTED_PREFIX, StoreKeyError, install_store_key
from orchestrator.settings import SettingsError, ensure_private_dir, load_settings, read_or_create_secret_file, redact_url
from orchestrator.sshkeys import generate_keypair
from tests.live import ORCH, REPO, instance_doc, start_service, wait_operation

AMQP_PASSWORD = "amqp-Pa55word-" + "q" * 8
PRIVATE_KEY_MARK = b"OPENSSH PRIVATE KEY"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _password(url: str) -> str:
    return unquote(urlparse(url).password or "")


def test_redact_url_hides_passwords_and_secret_options():
    assert redact_url("amqp://orch:s3cret@broker:5672/vh") == "amqp://orch:***@broker:5672/vh"
    redacted = redact_url("mongodb://u:p%40ss@h1:1,h2:2/db?authSource=admin&tlsCertificateKeyFilePassword=k3y")
    assert redacted == "mongodb://u:***@h1:1,h2:2/db?authSource=admin&tlsCertificateKeyFilePassword=***"
    assert redact_url("mongodb://host/db") == "mongodb://host/db"
    assert redact_url("amqp://user@host/") == "amqp://user@host/"
    assert redact_url(None) is None


def test_a_malformed_url_setting_is_reported_without_its_password(tmp_path):
    with pytest.raises(SettingsError) as raised:
        load_settings({"ORCH_DATA_DIR": str(tmp_path), "ORCH_AMQP_URL": f"redis://u:{AMQP_PASSWORD}@h/"})
    assert "ORCH_AMQP_URL" in str(raised.value) and AMQP_PASSWORD not in str(raised.value)


def test_unreachable_mongodb_error_hides_the_password(tmp_path):
    url = f"mongodb://orch:{AMQP_PASSWORD}@127.0.0.1:1/orch?serverSelectionTimeoutMS=500"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update({"ORCH_DATA_DIR": str(tmp_path), "ORCH_MONGODB_URL": url})
    result = subprocess.run([ORCH, "serve", "--port", "1"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2 and "unreachable" in result.stderr
    assert AMQP_PASSWORD not in result.stderr + result.stdout and "orch:***@" in result.stderr


def test_data_dir_and_secret_files_are_private(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    settings = load_settings({"ORCH_DATA_DIR": str(data)})
    assert _mode(data) == 0o700
    for name in ("jwt-secret", "store-key"):
        assert _mode(data / name) == 0o600
    assert len(base64.urlsafe_b64decode(settings.store_key)) == 32
    # Kept across loads; ORCH_STORE_KEY wins over the file and is checked.
    assert load_settings({"ORCH_DATA_DIR": str(data)}).store_key == settings.store_key
    given = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    assert load_settings({"ORCH_DATA_DIR": str(data), "ORCH_STORE_KEY": given}).store_key == given.encode()
    with pytest.raises(SettingsError, match="ORCH_STORE_KEY must hold 32 bytes"):
        load_settings({"ORCH_DATA_DIR": str(data), "ORCH_STORE_KEY": "too-short"})
    data.chmod(0o755)
    ensure_private_dir(data)
    assert _mode(data) == 0o700
    # A shared directory is refused, not narrowed under its other users.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(SettingsError, match="is shared"):
        ensure_private_dir(shared)
    assert _mode(shared) == 0o1777


def test_concurrent_creators_of_a_secret_file_agree(tmp_path):
    path = tmp_path / "data" / "store-key"
    with ThreadPoolExecutor(8) as pool:
        values = set(pool.map(lambda _: read_or_create_secret_file(path, lambda: secrets.token_hex(16)), range(16)))
    assert len(values) == 1 and _mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["store-key"]  # no temporary file left


def test_embedded_store_files_are_private_and_it_refuses_unauthenticated_clients(tmp_path):
    store = EmbeddedStore(tmp_path / "data" / "store.sqlite3")
    url = store.start()
    try:
        client = pymongo.MongoClient(url, serverSelectionTimeoutMS=3000)
        client.orch.probe.insert_one({"a": 1})
        assert client.orch.probe.count_documents({}) == 1
        client.close()
        anonymous = pymongo.MongoClient(urlparse(url)._replace(netloc=urlparse(url).netloc.split("@")[1], query="").geturl(),
                                        serverSelectionTimeoutMS=3000)
        for attempt in (lambda: anonymous.orch.probe.count_documents({}), lambda: anonymous.admin.command("ping")):
            with pytest.raises(OperationFailure, match="Authentication required"):
                attempt()
        anonymous.close()
        wrong = pymongo.MongoClient(url.replace(urlparse(url).password, "guess"), serverSelectionTimeoutMS=3000)
        with pytest.raises(OperationFailure, match="Authentication failed"):
            wrong.orch.probe.count_documents({})
        wrong.close()
        # Each start has its own credential.
        assert EmbeddedStore(tmp_path / "other.sqlite3")._password != _password(url)
    finally:
        store.stop()
    assert _mode(tmp_path / "data") == 0o700
    files = sorted((tmp_path / "data").iterdir())
    assert files and all(_mode(f) == 0o600 for f in files), {f.name: oct(_mode(f)) for f in files}


def test_admin_key_is_encrypted_in_the_store_and_clearable(mongo_db):
    install_store_key(base64.urlsafe_b64encode(b"k" * 32))
    private, public = generate_keypair("orch@enc")
    Instance(name="enc", owner="a", spec={"cloud": "docker"}, cloud="docker", region="local",
             admin_private_key=private, admin_public_key=public).save()
    raw = mongoengine.get_db()["instances"].find_one({"name": "enc"})
    assert raw["admin_private_key"].startswith(ENCRYPTED_PREFIX)
    assert "PRIVATE KEY" not in raw["admin_private_key"] and private.splitlines()[1] not in raw["admin_private_key"]
    assert Instance.objects.get(name="enc").admin_private_key == private
    # Another store key cannot read it, and says so.
    install_store_key(base64.urlsafe_b64encode(b"x" * 32))
    with pytest.raises(StoreKeyError, match="cannot be decrypted with this store key"):
        Instance.objects.get(name="enc")
    install_store_key(base64.urlsafe_b64encode(b"k" * 32))
    # A value written before encryption is read as it is, and encrypted by the next connect.
    mongoengine.get_db()["instances"].update_one({"name": "enc"}, {"$set": {"admin_private_key": private}})
    assert Instance.objects.get(name="enc").admin_private_key == private
    assert encrypt_plaintext_secrets() == 1
    assert mongoengine.get_db()["instances"].find_one({"name": "enc"})["admin_private_key"].startswith(ENCRYPTED_PREFIX)
    assert Instance.objects.get(name="enc").admin_private_key == private
    assert encrypt_plaintext_secrets() == 0
    # Cleared (as after a failed create or a delete).
    Instance.objects(name="enc").update_one(set__admin_private_key=None)
    assert mongoengine.get_db()["instances"].find_one({"name": "enc"}).get("admin_private_key") is None
    assert Instance.objects.get(name="enc").admin_private_key is None
    with pytest.raises(mongoengine.InvalidQueryError, match="encrypted"):
        Instance.objects(admin_private_key=private).first()


def test_serve_and_worker_logs_hold_no_passwords_and_the_key_is_encrypted(tmp_path, mongo_url):
    mongo_password = _password(mongo_url)
    assert mongo_password, "the test store has a credential"
    amqp_url = f"amqp://orchuser:{AMQP_PASSWORD}@127.0.0.1:1/vh"
    live = start_service(tmp_path, mongo_url, ORCH_AMQP_URL=amqp_url)
    try:
        with live.client("alice") as client:
            assert client.post("/api/v1/instances", json=instance_doc("enc-box")).status_code == 202
        worker = live.start_worker()
        time.sleep(3)  # the worker logs its start and its failed broker connections
        assert worker.poll() is None
        database = urlparse(live.env["ORCH_MONGODB_URL"]).path.strip("/")
        raw = pymongo.MongoClient(mongo_url)[database]["instances"].find_one({"name": "enc-box"})
        assert raw["admin_private_key"].startswith(ENCRYPTED_PREFIX)
        assert "PRIVATE KEY" not in raw["admin_private_key"]
    finally:
        live.stop()
    logs = {"serve": live.logs(), "worker": live.log_path.with_name("worker-0.log").read_text()}
    assert "orchuser:***@127.0.0.1:1" in logs["serve"] and "orch:***@" in logs["serve"]
    assert "orchuser:***@127.0.0.1:1" in logs["worker"]
    for name, text in logs.items():
        assert AMQP_PASSWORD not in text, name
        assert mongo_password not in text, name


def test_embedded_store_of_the_service_is_private_and_holds_no_plaintext_key(tmp_path, mongo_url):
    live = start_service(tmp_path, mongo_url, ORCH_MONGODB_URL="")
    try:
        with live.client("alice") as client:
            op = client.post("/api/v1/instances", json=instance_doc("at-rest")).json()["operation"]
            assert wait_operation(client, op["id"])["status"] == "succeeded"
        # The token commands share the running service's embedded store (the same SQLite file).
        created = subprocess.run([ORCH, "token", "create", "--user", "alice"], env=live.env,
                                 capture_output=True, text=True, timeout=60, cwd=REPO)
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip().splitlines()[-1]
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{live.url}/api/v1/instances/at-rest", headers=headers).status_code == 200
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        revoked = subprocess.run([ORCH, "token", "revoke", jti], env=live.env,
                                 capture_output=True, text=True, timeout=60, cwd=REPO)
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 10
        while (response := httpx.get(f"{live.url}/api/v1/instances", headers=headers)).status_code == 200:
            assert time.monotonic() < deadline, "the revocation did not reach the service"
            time.sleep(0.2)
        assert response.status_code == 401 and "token revoked" in response.json()["detail"]
    finally:
        live.stop()
    data = Path(live.env["ORCH_DATA_DIR"])
    assert _mode(data) == 0o700
    store_files = sorted(data.glob("store.sqlite3*"))
    assert store_files and all(_mode(f) == 0o600 for f in store_files), {f.name: oct(_mode(f)) for f in store_files}
    assert _mode(data / "store-key") == 0o600
    # Everything the service wrote in its data dir is for its user only.
    for path in data.rglob("*"):
        assert _mode(path) & 0o077 == 0, f"{path} is {oct(_mode(path))}"
    assert not any(PRIVATE_KEY_MARK in f.read_bytes() for f in store_files)
    assert any(ENCRYPTED_PREFIX.encode() in f.read_bytes() for f in store_files)
    assert "embedded store in" in live.logs()
