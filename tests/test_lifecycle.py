"""Instance lifecycle from the CLI and the API: `orch ssh`, `orch ssh-config` (the stand-in behind the service)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.client import ssh
from orchestrator.client.errors import ExitCode
from tests.live import ORCH, instance_doc, wait_operation

FAKE_SSH = """#!{python}
import json, os, sys
with open(os.environ["FAKE_SSH_RECORD"], "w") as record:
    json.dump(sys.argv[1:], record)
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME of the test's own (~/.orch lives there) and a fake `ssh` first on PATH, recording its argv."""
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    fake.write_text(FAKE_SSH.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(ssh.IDENTITY_ENV, raising=False)
    return home


def _orch_ssh(service, home, *argv: str, user: str = "alice", **env: str) -> tuple[subprocess.CompletedProcess, list]:
    record = home / "ssh-argv.json"
    record.unlink(missing_ok=True)
    run_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
        "HOME": str(home),
        "PATH": f"{home.parent / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SSH_RECORD": str(record),
        "ORCH_URL": service.url,
        "ORCH_TOKEN": service.token_for(user),
        **env,
    }
    done = subprocess.run([ORCH, "ssh", *argv], env=run_env, capture_output=True, text=True, timeout=60)
    return done, (json.loads(record.read_text()) if record.exists() else [])


def _create(service, user: str, name: str, **spec) -> dict:
    with service.client(user) as client:
        response = client.post("/api/v1/instances", json=instance_doc(name, **spec))
        assert response.status_code == 202, response.text
        assert wait_operation(client, response.json()["operation"]["id"])["status"] == "succeeded"
        return client.get(f"/api/v1/instances/{name}").json()


def _cli(service, *argv: str, user: str = "alice", token: str | None = None) -> int:
    return int(main([*argv, "--url", service.url, "--token", token or service.token_for(user)]))


def test_orch_ssh_execs_ssh_with_the_instances_address_user_and_key(service, home):
    instance = _create(service, "ssh-user", "ssh-one")
    known_hosts = ssh.known_hosts_path(instance)
    done, argv = _orch_ssh(service, home, "ssh-one", user="ssh-user")
    assert done.returncode == 0, done.stderr
    port = str(instance["outputs"].get("ssh_port") or 22)
    assert argv == [
        "-p", port, "-l", "alice", "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={known_hosts}", "--", instance["public_ip"],
    ]  # fmt: skip
    assert known_hosts.parent == home / ".orch" / "known_hosts" and known_hosts.name.startswith("ssh-user.ssh-one.")

    # --user, the key from the environment (then from --identity), and a remote command with spaces kept whole.
    done, argv = _orch_ssh(
        service, home, "ssh-one", "--user", "bob", "--", "echo", "a b; rm -rf /",
        user="ssh-user", ORCH_SSH_IDENTITY="/keys/id ed",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert argv[:2] == ["-i", "/keys/id ed"] and argv[4:6] == ["-l", "bob"]
    assert argv[-3:] == [instance["public_ip"], "echo", "a b; rm -rf /"]
    done, argv = _orch_ssh(service, home, "--identity", "/keys/other", "ssh-one", user="ssh-user")
    assert argv[:2] == ["-i", "/keys/other"]

    # Another user's instance is not there; a user name that could carry an option is refused before ssh runs.
    done, argv = _orch_ssh(service, home, "ssh-one", user="someone-else")
    assert (done.returncode, argv) == (ExitCode.REFUSED, []) and "not found" in done.stderr
    done, argv = _orch_ssh(service, home, "ssh-one", "--user=-oProxyCommand=x", user="ssh-user")
    assert (done.returncode, argv) == (ExitCode.REFUSED, []) and "could inject ssh options" in done.stderr


def test_ssh_config_is_written_and_kept_current_by_get_apply_and_delete(service, home, tmp_path, capsys):
    first = _create(service, "cfg-user", "cfg-a")
    assert _cli(service, "ssh-config", "--identity", "~/.ssh/id_ed25519", user="cfg-user") == 0
    config = home / ".orch" / "ssh_config"
    assert f"wrote 1 host entry to {config}" in capsys.readouterr().out
    text = config.read_text()
    entry = (
        f"Host orch-cfg-a\n  HostName {first['public_ip']}\n  Port {first['outputs'].get('ssh_port') or 22}\n"
        f'  User alice\n  IdentityFile "~/.ssh/id_ed25519"\n  StrictHostKeyChecking accept-new\n'
        f'  UserKnownHostsFile "{ssh.known_hosts_path(first)}"\n'
    )
    assert entry in text and "Include ~/.orch/ssh_config" in text

    # `orch apply --wait` of a second instance and `orch get instances` refresh the file that exists.
    spec = tmp_path / "b.yaml"
    spec.write_text(json.dumps(instance_doc("cfg-b")))
    assert _cli(service, "apply", "-f", str(spec), "--wait", user="cfg-user") == 0
    assert "Host orch-cfg-b\n" in config.read_text() and "Host orch-cfg-a\n" in config.read_text()
    config.write_text("stale\n")
    assert _cli(service, "get", "instances", user="cfg-user") == 0
    assert "Host orch-cfg-a\n" in config.read_text()
    assert _cli(service, "delete", "instance", "cfg-a", "--wait", user="cfg-user") == 0
    assert "Host orch-cfg-a\n" not in config.read_text() and "Host orch-cfg-b\n" in config.read_text()

    # Admins see every owner's instances, as OWNER.NAME; --output writes elsewhere.
    other = tmp_path / "admin_config"
    assert _cli(service, "ssh-config", "--output", str(other), token=service.admin_token) == 0
    assert "Host cfg-user.cfg-b\n" in other.read_text()
    assert _cli(service, "delete", "instance", "cfg-b", user="cfg-user") == 0


@pytest.mark.parametrize(
    "field, value",
    [("name", "evil\n  ProxyCommand x"), ("public_ip", "1.2.3.4 ProxyCommand"), ("owner", "a b")],
)
def test_ssh_config_refuses_values_that_could_inject_directives(field, value):
    instance = {
        "name": "ok", "owner": "alice", "status": "running", "public_ip": "203.0.113.7",
        "spec": {"ssh_users": [{"name": "alice"}]}, "outputs": {}, "created_at": None, field: value,
    }  # fmt: skip
    with pytest.raises(ssh.UnsafeValue, match="could inject ssh options"):
        ssh.config_text([instance], qualified=False, identity=None)
    bad_user = {**instance, field: instance[field] if field != "name" else "ok"}
    bad_user["spec"] = {"ssh_users": [{"name": "root\nHost *"}]}
    with pytest.raises(ssh.UnsafeValue):
        ssh.config_text([{**bad_user, "public_ip": "203.0.113.7", "owner": "alice"}], qualified=False, identity=None)
    with pytest.raises(ssh.UnsafeValue):
        ssh.identity_path('/keys/"x"\nHost *')


# ---------------------------------------------------------------- stop and start


def _post_power(client, name: str, verb: str, expected: int = 202) -> dict:
    response = client.post(f"/api/v1/instances/{name}/{verb}")
    assert response.status_code == expected, response.text
    return response.json()


def test_stop_and_start_through_the_api_follow_the_new_address(service):
    first = _create(service, "power-user", "power-aws", cloud="aws")
    with service.client("power-user") as client:
        stopping = _post_power(client, "power-aws", "stop")
        assert (stopping["operation"]["kind"], stopping["instance"]["spec"]["state"]) == ("stop", "stopped")
        # One operation at a time on an instance.
        busy = _post_power(client, "power-aws", "start", expected=409)
        assert "has a stop operation" in busy["detail"]
        assert wait_operation(client, stopping["operation"]["id"])["status"] == "succeeded"
        stopped = client.get("/api/v1/instances/power-aws").json()
        assert (stopped["status"], stopped["public_ip"], stopped["outputs"].get("public_ip")) == ("stopped", None, None)
        assert stopped["health"]["state"] == "stopped", "a stopped instance is not unreachable"
        assert "is stopped; only a running or failed instance can stop" in _post_power(
            client, "power-aws", "stop", expected=409
        )["detail"]

        started = _post_power(client, "power-aws", "start")
        op = wait_operation(client, started["operation"]["id"])
        assert (op["status"], [step["name"] for step in op["steps"]]) == (
            "succeeded",
            ["pulumi up (state: running)", "pulumi up --refresh (the new address)"],
        ), op
        running = client.get("/api/v1/instances/power-aws").json()
        assert running["status"] == "running" and running["spec"]["state"] == "running"
        assert running["public_ip"] not in (None, first["public_ip"]), "a start gets a new public IP"
        assert running["outputs"]["instance_id"] == first["outputs"]["instance_id"], "the same machine"
        listed = {item["name"]: item for item in client.get("/api/v1/instances").json()["items"]}
        assert listed["power-aws"]["public_ip"] == running["public_ip"]

        # An instance is created running.
        created_stopped = client.post("/api/v1/instances", json=instance_doc("born-stopped", state="stopped"))
        assert created_stopped.status_code == 422 and created_stopped.json()["extra"]["field"] == "spec.state"
        assert client.delete("/api/v1/instances/power-aws").status_code == 202


def test_state_in_a_spec_file_and_orch_stop_start(service, tmp_path, capsys):
    spec = tmp_path / "gcp.yaml"
    document = instance_doc("power-gcp", cloud="gcp")
    spec.write_text(json.dumps(document))
    assert _cli(service, "apply", "-f", str(spec), "--wait", user="file-user") == 0
    with service.client("file-user") as client:
        first_ip = client.get("/api/v1/instances/power-gcp").json()["public_ip"]
        document["spec"]["state"] = "stopped"
        spec.write_text(json.dumps(document))
        assert _cli(service, "apply", "-f", str(spec), "--wait", user="file-user") == 0
        assert "power-gcp: stop succeeded" in capsys.readouterr().out
        stopped = client.get("/api/v1/instances/power-gcp").json()
        assert (stopped["status"], stopped["public_ip"]) == ("stopped", None)
        assert _cli(service, "diff", "-f", str(spec), user="file-user") == 0, "apply converged"

        # A state change with another change is refused as a whole, naming the field.
        document["spec"]["state"], document["spec"]["disk_gb"] = "running", 40
        spec.write_text(json.dumps(document))
        assert _cli(service, "apply", "-f", str(spec), user="file-user") == ExitCode.REFUSED
        assert "spec.state: change the state (stopped -> running) on its own" in capsys.readouterr().err

        assert _cli(service, "start", "power-gcp", "--wait", user="file-user") == 0
        assert "instance/power-gcp: start succeeded" in capsys.readouterr().out
        running = client.get("/api/v1/instances/power-gcp").json()
        assert running["status"] == "running" and running["public_ip"] not in (None, first_ip)
        assert _cli(service, "stop", "power-gcp", user="file-user") == 0
        assert re.search(r"^instance/power-gcp stopping \(operation \w+\)$", capsys.readouterr().out, re.M)
        assert _cli(service, "delete", "instance", "power-gcp", "--wait", user="file-user") == 0



def test_azure_stop_deallocates_and_start_keeps_the_static_address(service):
    """Azure's power state is a dynamic resource of the stack (stacks/azure_power.py), simulated by the stand-in."""
    first = _create(service, "azure-user", "power-azure", cloud="azure")
    with service.client("azure-user") as client:
        assert wait_operation(client, _post_power(client, "power-azure", "stop")["operation"]["id"])["status"] == "succeeded"
        stopped = client.get("/api/v1/instances/power-azure").json()
        assert (stopped["status"], stopped["public_ip"]) == ("stopped", None)
        vm_id = first["outputs"]["instance_id"]
        resources = {r["type"]: r for r in client.get("/api/v1/instances/power-azure/stack").json()["resources"]}
        assert resources["pulumi-python:dynamic/azure:VirtualMachinePowerState"]["id"] == f"{vm_id}/powerState"
        assert _simulated_power(service, vm_id) == ["stopped", 0], "the simulated VM is deallocated"

        assert wait_operation(client, _post_power(client, "power-azure", "start")["operation"]["id"])["status"] == "succeeded"
        running = client.get("/api/v1/instances/power-azure").json()
        assert running["status"] == "running"
        assert running["public_ip"] == first["public_ip"], "a Static public IP keeps its address"
        assert running["outputs"]["instance_id"] == vm_id, "the same VM"
        assert _simulated_power(service, vm_id) == ["running", 1]
        assert client.delete("/api/v1/instances/power-azure").status_code == 202


def _simulated_power(service, machine_id: str) -> list:
    """[state, starts] of a machine in the stand-in's simulated cloud (tests/pulumi_standin/resource_types.py)."""
    return json.loads((Path(service.env["PULUMI_HOME"]) / "standin-cloud" / "power.json").read_text())[machine_id]
