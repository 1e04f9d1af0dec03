"""The instance state machine, settings errors, and the service's startup lines."""

from __future__ import annotations

import subprocess

import pytest

from orchestrator.db import url_with_database
from orchestrator.models import IllegalTransition, Instance, Snapshot
from orchestrator.settings import SettingsError, load_settings
from tests.live import ORCH, REPO


def test_instance_state_machine_refuses_illegal_transitions():
    instance = Instance(name="sm", owner="a", spec={}, cloud="aws", region="us-east-1")
    for status in ("provisioning", "configuring", "running", "updating", "running", "deleting", "deleted"):
        instance.move_to(status)
    assert instance.status == "deleted"
    with pytest.raises(IllegalTransition, match="cannot go from deleted to running"):
        instance.move_to("running")
    fresh = Instance(name="sm2", owner="a", spec={}, cloud="aws", region="us-east-1")
    with pytest.raises(IllegalTransition):
        fresh.move_to("running")


def test_snapshot_state_machine():
    snapshot = Snapshot(name="s", instance="i", owner="a", cloud="aws")
    snapshot.move_to("available")
    with pytest.raises(IllegalTransition):
        snapshot.move_to("pending")
    snapshot.move_to("deleting")
    snapshot.move_to("deleted")


@pytest.mark.parametrize(
    "env, names",
    [
        ({"ORCH_CLOUDS": "aws,mars"}, "ORCH_CLOUDS"),
        ({"ORCH_MONGODB_URL": "http://nope"}, "ORCH_MONGODB_URL"),
        ({"ORCH_AMQP_URL": "redis://x"}, "ORCH_AMQP_URL"),
        ({"ORCH_PULUMI_COMMAND": "/nonexistent"}, "ORCH_PULUMI_COMMAND"),
        ({"ORCH_MAX_PARALLEL_OPERATIONS": "many"}, "ORCH_MAX_PARALLEL_OPERATIONS"),
        ({"ORCH_CONFIGURE_TIMEOUT_S": "1h"}, "ORCH_CONFIGURE_TIMEOUT_S='1h' is not an integer"),
        ({"ORCH_CONFIGURE_TIMEOUT_S": "0"}, "ORCH_CONFIGURE_TIMEOUT_S=0 must be at least 1"),
        ({"ORCH_CONFIGURE_TIMEOUT_S": "9" * 400}, "ORCH_CONFIGURE_TIMEOUT_S must be at most 1000000000"),
        ({"ORCH_SSH_REACH_TIMEOUT_S": "1" + "0" * 9 + "1"}, "ORCH_SSH_REACH_TIMEOUT_S must be at most 1000000000"),
        ({"ORCH_CONFIGURE_TIMEOUT_S": "9" * 5000}, r"ORCH_CONFIGURE_TIMEOUT_S='9{40}'\.\.\. \(5000 characters\) is not an integer$"),
        ({"ORCH_GOOFYS_URL": "/nonexistent/goofys"}, "ORCH_GOOFYS_URL"),
        ({"ORCH_GOOFYS_URL": "ftp://mirror/goofys"}, "ORCH_GOOFYS_URL"),
        ({"ORCH_JWT_SECRET": "short"}, "ORCH_JWT_SECRET is 5 bytes; it must be at least 32"),
    ],
)
def test_bad_settings_name_the_variable(tmp_path, env, names):
    with pytest.raises(SettingsError, match=names):
        load_settings({"ORCH_DATA_DIR": str(tmp_path), **env})


def test_goofys_source_is_a_download_url_or_a_local_file(tmp_path):
    base = {"ORCH_DATA_DIR": str(tmp_path)}
    assert load_settings(base).goofys_playbook_vars == {}
    mirror = "http://mirror.internal/goofys"
    assert load_settings({**base, "ORCH_GOOFYS_URL": mirror}).goofys_playbook_vars == {"goofys_url": mirror}
    binary = tmp_path / "goofys"
    binary.write_bytes(b"binary")
    for given in (str(binary), f"file://{binary}"):
        assert load_settings({**base, "ORCH_GOOFYS_URL": given}).goofys_playbook_vars == {"goofys_src": str(binary)}


def _serve_error(tmp_path, **env) -> subprocess.CompletedProcess:
    full = {"PATH": "/usr/bin:/bin", "ORCH_DATA_DIR": str(tmp_path), **env}
    return subprocess.run([ORCH, "serve", "--port", "1"], env=full, capture_output=True, text=True, timeout=60, cwd=REPO)


def test_missing_pulumi_cli_is_one_clear_line(tmp_path, mongo_url):
    result = _serve_error(tmp_path, ORCH_MONGODB_URL=url_with_database(mongo_url, "orch_missing_cli"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Pulumi CLI not found" in lines[0] and "ORCH_PULUMI_COMMAND" in lines[0]


def test_unreachable_mongodb_is_one_clear_line(tmp_path):
    result = _serve_error(tmp_path, ORCH_MONGODB_URL="mongodb://127.0.0.1:1/orch?serverSelectionTimeoutMS=500")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ORCH_MONGODB_URL" in lines[0] and "unreachable" in lines[0]
