"""The service side of the web page (issue 13): serving the build, sign-in, /me, features,
conditional GET, the instance rows' stack and operation, an instance's operations, and the
new-instance preview (POST /instances?dry_run=true).

The API tests run the app in this process (Litestar's TestClient) on a real runtime: the
store, in-process workers and the Pulumi stand-in; one test starts `orch serve` itself for
what it prints.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from unittest import mock

import pytest
from litestar.testing import TestClient
from pymongo import monitoring

from orchestrator.api.app import create_app
from orchestrator.api.web import CONTENT_SECURITY_POLICY, NOT_BUILT_MESSAGE
from orchestrator.auth import Principal, mint_user_token
from orchestrator.db import url_with_database
from orchestrator.api.serialize import operation_summary
from orchestrator.models import Instance, Operation, SigninCode, Step
from orchestrator.runtime import Runtime
from orchestrator.services import Invalid, Orchestrator
from orchestrator.settings import KNOWN_CLOUDS, load_settings
from orchestrator.tokens import RevokedTokens, create_signin_code, list_user_tokens, revoke_user_token
from tests.live import JWT_SECRET, REPO, STANDIN_ROOT, instance_doc, start_service

INDEX_HTML = b'<!doctype html><html><head><script type="module" src="/assets/index-abc123.js"></script></head></html>'
ASSET_JS = b"console.log('page')"


def _fake_dist(root: Path) -> Path:
    """A stand-in for Vite's output: index.html and one hashed asset."""
    dist = root / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_bytes(INDEX_HTML)
    (dist / "assets" / "index-abc123.js").write_bytes(ASSET_JS)
    (root / "secret.txt").write_text("outside the build")
    return dist


class OperationsQueries(monitoring.CommandListener):
    """Counts the queries on the operations collection (for the no-N+1 check)."""

    def __init__(self) -> None:
        self.finds = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == "operations":
            self.finds += 1

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


OPERATION_QUERIES = OperationsQueries()
# Listeners apply to clients created afterwards: the runtime's is.
monitoring.register(OPERATION_QUERIES)


@pytest.fixture(scope="module")
def api(tmp_path_factory, mongo_url):
    """The app on a real runtime (fresh database, stand-in, file backend), a fake page build."""
    tmp = tmp_path_factory.mktemp("webapi")
    backend = tmp / "pulumi-backend"
    backend.mkdir()
    env = {
        "ORCH_DATA_DIR": str(tmp / "data"),
        "ORCH_MONGODB_URL": url_with_database(mongo_url, f"orch_{uuid.uuid4().hex[:10]}"),
        "ORCH_PULUMI_COMMAND": str(STANDIN_ROOT),
        "ORCH_PULUMI_BACKEND_URL": f"file://{backend}",
        "ORCH_JWT_SECRET": JWT_SECRET,
        "ORCH_WEB_DIR": str(_fake_dist(tmp / "web")),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {
            "PULUMI_CONFIG_PASSPHRASE": "test-passphrase",
            "PULUMI_HOME": str(tmp / "pulumi-home"),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
        }.items():
            patch.setenv(key, value)
        patch.delenv("PULUMI_CONFIG_PASSPHRASE_FILE", raising=False)
        runtime = Runtime(load_settings(env))
        runtime.revoked_tokens = RevokedTokens(refresh_s=0)  # a revocation counts at once
        with TestClient(create_app(runtime)) as client:
            client.backend_dir = backend
            client.runtime = runtime
            yield client


def _auth(user: str = "alice", admin: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_user_token(JWT_SECRET, user, admin=admin)}"}


def _record(settings, owner: str, doc: dict) -> Instance:
    """An instance recorded as create records it, its operation failed unrun (so no sweep runs it)."""
    service = Orchestrator(settings, None, lambda op_id: False)
    instance, op = service.create_instance(Principal(owner, "user"), doc)
    Operation.objects(id=op.id).update_one(set__status="failed", set__error="recorded by a test, never run")
    return instance


def _wait(api, op_id: str, headers: dict) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        op = api.get(f"/api/v1/operations/{op_id}", headers=headers).json()
        if op["status"] in ("succeeded", "failed"):
            return op
        time.sleep(0.1)
    raise AssertionError(f"operation {op_id} did not finish: {op}")


# ---------------------------------------------------------------- the page


def test_page_routes_answer_index_html_with_a_strict_policy_and_assets_are_immutable(tmp_path):
    runtime = mock.MagicMock()
    runtime.settings.web_dir = _fake_dist(tmp_path)
    with TestClient(create_app(runtime)) as client:
        for path in ("/", "/instances/dev-1", "/new", "/snapshots", "/signin"):
            page = client.get(path)
            assert (page.status_code, page.content) == (200, INDEX_HTML), path
            assert page.headers["content-type"].startswith("text/html")
            assert page.headers["cache-control"] == "no-cache"
            assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["referrer-policy"] == "no-referrer"
        asset = client.get("/assets/index-abc123.js")
        assert (asset.status_code, asset.content) == (200, ASSET_JS)
        assert asset.headers["content-type"].startswith("text/javascript")
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert asset.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        # Outside assets/: refused however it is spelled, never the file (a plain "/assets/../x" is
        # resolved by the client to "/x", a page route).
        assert client.get("/assets/../secret.txt").content == INDEX_HTML
        for path in ("/assets/%2e%2e/secret.txt", "/assets/%2e%2e/%2e%2e/web/secret.txt", "/assets/..%2fsecret.txt",
                     "/assets/nope.js", "/assets/"):
            refused = client.get(path)
            assert refused.status_code == 404 and b"outside the build" not in refused.content, path
        # The API's own paths never fall back to the page.
        for path in ("/api/v1/nope", "/api/v2", "/healthzz", "/schema/nope"):
            missing = client.get(path)
            assert missing.status_code == 404 and missing.content != INDEX_HTML, path


def test_without_a_build_the_page_says_how_to_build_it(tmp_path):
    runtime = mock.MagicMock()
    runtime.settings.web_dir = tmp_path / "no-dist"
    with TestClient(create_app(runtime)) as client:
        for path in ("/", "/instances/dev-1"):
            page = client.get(path)
            assert (page.status_code, page.text) == (404, NOT_BUILT_MESSAGE)
            assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_orch_serve_prints_the_sign_in_link_and_that_the_page_is_not_built(tmp_path, mongo_url):
    # Embedded defaults: no ORCH_JWT_SECRET, so a sign-in link.
    live = start_service(tmp_path, mongo_url, ORCH_JWT_SECRET="", ORCH_WEB_DIR=str(tmp_path / "no-dist"))
    try:
        port = live.url.rsplit(":", 1)[1]
        deadline = time.monotonic() + 10
        while "sign in:" not in live.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        logs = live.logs()
        assert NOT_BUILT_MESSAGE + "\n" in logs
        (code,) = re.findall(rf"^sign in: http://127\.0\.0\.1:{port}/signin#code=([A-Za-z0-9_-]+)$", logs, re.M)
        import httpx

        signed = httpx.post(f"{live.url}/api/v1/auth/signin", json={"code": code})
        assert signed.status_code == 200, signed.text
        body = signed.json()
        assert (body["user"], body["role"]) == ("admin", "admin")
        me = httpx.get(f"{live.url}/api/v1/me", headers={"Authorization": f"Bearer {body['token']}"})
        assert me.json() == {"user": "admin", "role": "admin", "expires_at": body["expires_at"]}
        # The API works without the page.
        assert httpx.get(f"{live.url}/healthz").status_code == 200
        assert "Traceback" not in live.logs()
    finally:
        live.stop()


# ---------------------------------------------------------------- sign-in


def test_a_sign_in_code_signs_in_once_as_the_admin_with_a_recorded_revocable_token(api):
    code = create_signin_code(dt.timedelta(hours=1))
    assert SigninCode.objects(code_hash=code).first() is None, "only its hash is stored"
    signed = api.post("/api/v1/auth/signin", json={"code": code})
    assert signed.status_code == 200, signed.text
    body = signed.json()
    assert (body["user"], body["role"]) == ("admin", "admin")
    headers = {"Authorization": f"Bearer {body['token']}"}
    me = api.get("/api/v1/me", headers=headers)
    assert me.json() == {"user": "admin", "role": "admin", "expires_at": body["expires_at"]}

    again = api.post("/api/v1/auth/signin", json={"code": code})
    assert again.status_code == 401
    assert again.json()["detail"].startswith("sign-in link used or expired: the code was used at ")

    (record,) = [r for r in list_user_tokens() if r.user == "admin"]
    revoke_user_token(record.jti)
    revoked = api.get("/api/v1/me", headers=headers)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]


@pytest.mark.parametrize("case", ["expired", "unknown", "empty", "oversized"])
def test_an_expired_or_unknown_sign_in_code_is_a_401_saying_so(api, case):
    code = {
        "expired": lambda: create_signin_code(dt.timedelta(seconds=-1)),
        "unknown": lambda: "not-a-code-we-issued",
        "empty": lambda: "",
        "oversized": lambda: "x" * 10_000,
    }[case]()
    refused = api.post("/api/v1/auth/signin", json={"code": code})
    assert refused.status_code == 401
    detail = refused.json()["detail"]
    assert detail.startswith("sign-in link used or expired: ")
    assert ("expired at" in detail) if case == "expired" else detail.endswith("unknown code")


def test_me_names_the_user_and_refuses_a_bad_token(api):
    me = api.get("/api/v1/me", headers=_auth("bob")).json()
    assert (me["user"], me["role"]) == ("bob", "user") and dt.datetime.fromisoformat(me["expires_at"]) > dt.datetime.now(dt.UTC)
    assert api.get("/api/v1/me").status_code == 401
    assert api.get("/api/v1/me", headers={"Authorization": "Bearer nonsense"}).status_code == 401


# ---------------------------------------------------------------- features


def test_features_name_the_sidebar_flag_and_every_known_cloud(api, tmp_path):
    body = api.get("/api/v1/features", headers=_auth()).json()
    assert body["features"]["sidebar"] is False
    assert body["known_clouds"] == list(KNOWN_CLOUDS)
    env = {"ORCH_DATA_DIR": str(tmp_path), "ORCH_JWT_SECRET": JWT_SECRET}
    assert load_settings({**env, "ORCH_FEATURE_SIDEBAR": "true"}).feature_sidebar is True
    with pytest.raises(Exception, match="ORCH_FEATURE_SIDEBAR='maybe' is not a flag"):
        load_settings({**env, "ORCH_FEATURE_SIDEBAR": "maybe"})


def test_a_disabled_cloud_is_refused_on_spec_cloud_and_its_instances_stay_listed(api):
    alice = Principal("carol", "user")
    _record(api.runtime.settings, "carol", instance_doc("on-docker", "docker"))
    aws_only = Orchestrator(dataclasses.replace(api.runtime.settings, clouds=("aws",)), None, lambda op_id: False)
    with pytest.raises(Invalid) as refused:
        aws_only.create_instance(alice, instance_doc("another", "docker"))
    assert refused.value.field == "spec.cloud"
    assert "'docker'" in refused.value.detail and "ORCH_CLOUDS" in refused.value.detail
    assert [i.name for i in aws_only.list_instances(alice).items] == ["on-docker"]


# ---------------------------------------------------------------- instances


def test_dry_run_previews_a_create_and_leaves_nothing_behind(api):
    headers = _auth("dave")
    previewed = api.post("/api/v1/instances", params={"dry_run": "true"}, json=instance_doc("dry-1"), headers=headers)
    assert previewed.status_code == 200, previewed.text
    body = previewed.json()
    assert (body["instance"]["name"], body["instance"]["status"], body["instance"]["operation"]) == ("dry-1", "pending", None)
    assert body["preview"]["stack"] == "instance-dave.dry-1"
    assert body["preview"]["changes"].get("create", 0) >= 2
    assert {step["op"] for step in body["preview"]["steps"]} == {"create"}
    # Nothing stored, dispatched, or left in the backend or the data dir.
    assert Instance.objects(owner="dave").count() == 0 and Operation.objects(owner="dave").count() == 0
    assert not [p for p in api.backend_dir.rglob("*") if "dave" in p.name]
    previews = api.runtime.settings.data_dir / "pulumi-previews"
    assert not previews.exists() or not any(p.is_file() for p in previews.rglob("*"))
    # The same refusals as create.
    invalid = api.post("/api/v1/instances?dry_run=true", json=instance_doc("dry-2", disk_gb=-1), headers=headers)
    assert invalid.status_code == 422 and invalid.json()["extra"]["field"] == "spec.disk_gb"


def test_rows_carry_their_stack_and_operation_and_an_instance_lists_its_operations(api):
    headers = _auth("erin")
    created = api.post("/api/v1/instances", json=instance_doc("row-0"), headers=headers).json()
    assert created["instance"]["operation"]["kind"] == "create"
    assert _wait(api, created["operation"]["id"], headers)["status"] == "succeeded"
    _record(api.runtime.settings, "erin", instance_doc("row-1"))

    one = api.get("/api/v1/instances/row-0", headers=headers).json()
    assert one["stack_name"] == "instance-erin.row-0"
    project = api.runtime.settings.data_dir / "pulumi-project"
    assert one["stack_command"] == (
        f"PULUMI_BACKEND_URL=file://{api.backend_dir} pulumi -C {project} stack export --stack instance-erin.row-0"
    )
    assert one["operation"] == {"id": created["operation"]["id"], "kind": "create", "status": "succeeded", "step": None}

    before = OPERATION_QUERIES.finds
    listed = api.get("/api/v1/instances", headers=headers).json()
    assert OPERATION_QUERIES.finds - before == 1, "one query for the operations of the whole page"
    assert {row["name"]: row["operation"]["status"] for row in listed["items"]} == {"row-0": "succeeded", "row-1": "failed"}

    # A dry run of a name that exists is refused as create refuses it.
    taken = api.post("/api/v1/instances?dry_run=true", json=instance_doc("row-0"), headers=headers)
    assert taken.status_code == 409

    # A later operation on it (recorded, finished): listed first.
    instance = Instance.objects.get(claim="erin/row-0")
    Operation(kind="update", target="row-0", target_id=str(instance.id), lock_key=instance.lock_key, owner="erin",
              status="failed", logs=["a line"], created_at=instance.created_at + dt.timedelta(hours=1)).save()
    ops = api.get("/api/v1/instances/row-0/operations", headers=headers).json()["items"]
    assert [op["kind"] for op in ops] == ["update", "create"]
    assert all(op["logs"] == [] and op["log_offset"] == op["log_count"] > 0 for op in ops)
    assert [op["kind"] for op in api.get("/api/v1/instances/row-0/operations?limit=1", headers=headers).json()["items"]] == ["update"]
    assert api.get("/api/v1/instances/row-0/operations?limit=101", headers=headers).status_code == 400
    assert api.get("/api/v1/instances/nope/operations", headers=headers).status_code == 404


def test_a_rows_operation_names_the_step_that_runs_while_it_runs():
    running = Operation(kind="update", status="running", steps=[Step(name="pulumi up", status="succeeded"),
                                                                  Step(name="configure", status="running")])
    assert operation_summary(running).step == "configure"
    running.status = "failed"
    assert operation_summary(running).step is None
    assert operation_summary(None) is None


def test_api_answers_carry_an_etag_and_a_matching_if_none_match_is_a_304(api):
    headers = _auth("frank")
    first = api.get("/api/v1/instances", headers=headers)
    etag = first.headers["etag"]
    assert first.status_code == 200 and first.headers["cache-control"] == "private, no-cache"
    unchanged = api.get("/api/v1/instances", headers={**headers, "If-None-Match": etag})
    assert (unchanged.status_code, unchanged.content, unchanged.headers["etag"]) == (304, b"", etag)
    assert api.get("/api/v1/instances", headers={**headers, "If-None-Match": f"W/{etag}"}).status_code == 304
    signed_in = api.post("/api/v1/auth/signin", json={"code": create_signin_code(dt.timedelta(minutes=1))})
    assert signed_in.status_code == 200 and "etag" not in signed_in.headers  # only GET answers
    # A change (an instance recorded): a new body, a new tag.
    _record(api.runtime.settings, "frank", instance_doc("tagged"))
    changed = api.get("/api/v1/instances", headers={**headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert [row["name"] for row in changed.json()["items"]] == ["tagged"]
    # Errors are never tagged.
    assert "etag" not in api.get("/api/v1/instances/nope", headers=headers).headers


# ---------------------------------------------------------------- ./scripts/serve's build step


# What ensure_web runs besides node, npm and apt-get: the machine's, beside the fakes.
SHELL_TOOLS = ("sh", "find", "tail", "id", "mkdir", "cat")


def _ensure_web(root: Path, fake_bin: Path) -> subprocess.CompletedProcess:
    script = f". {REPO / 'scripts' / 'lib.sh'} && ensure_web"
    env = {"PATH": str(fake_bin), "HOME": str(root)}
    return subprocess.run([shutil.which("bash"), "-euo", "pipefail", "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=60)


def _fake_tool(fake_bin: Path, name: str, body: str) -> None:
    path = fake_bin / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_serve_builds_the_page_when_missing_or_stale_and_starts_without_node(tmp_path):
    root, fake_bin = tmp_path / "repo", tmp_path / "bin"
    (root / "web" / "src").mkdir(parents=True)
    (root / ".venv").mkdir()
    fake_bin.mkdir()
    for tool in SHELL_TOOLS:
        (fake_bin / tool).symlink_to(shutil.which(tool))
    (root / "web" / "package.json").write_text("{}")
    (root / "web" / "package-lock.json").write_text("{}")
    (root / "web" / "src" / "main.tsx").write_text("export {}")
    # Node and npm (fakes): `npm ci` records itself, `npm run build` writes dist/index.html.
    _fake_tool(fake_bin, "node", "echo v20.20.2")
    _fake_tool(fake_bin, "npm", 'echo "$*" >> ../npm.calls; [ "$1" = run ] && mkdir -p dist && echo built > dist/index.html; true')
    _fake_tool(fake_bin, "apt-get", "exit 1")

    assert _ensure_web(root, fake_bin).returncode == 0
    assert (root / "web" / "dist" / "index.html").read_text() == "built\n"
    assert (root / "npm.calls").read_text().splitlines() == ["ci --no-audit --no-fund", "run build"]
    (root / "npm.calls").unlink()
    assert _ensure_web(root, fake_bin).returncode == 0 and not (root / "npm.calls").exists(), "fresh: not rebuilt"
    built_at = (root / "web" / "dist" / "index.html").stat().st_mtime
    os.utime(root / "web" / "src" / "main.tsx", (built_at + 1, built_at + 1))
    assert _ensure_web(root, fake_bin).returncode == 0
    assert "run build" in (root / "npm.calls").read_text(), "a source newer than the build: rebuilt"

    # No npm and none installable: a warning, and the service is still started.
    (fake_bin / "npm").unlink()
    shutil.rmtree(root / "web" / "dist")
    no_node = _ensure_web(root, fake_bin)
    assert no_node.returncode == 0
    assert "node and npm not found: the API is served, the web page is not built" in no_node.stderr
