"""`orch serve --simulate` end to end, and the README's commands run verbatim against it.

The README's fenced blocks whose info string is `sh verbatim-test` are extracted in order and
run unchanged by bash in a scratch directory laid out as the repository
root (links to `.venv`, `examples`, `tests` and `scripts`), where the service was started with
`orch serve --simulate` on the README's port, 8000 (`./scripts/serve --simulate` is that
command after installing the virtualenv). Each block's lines run in one shell, so its
`export`s carry on to its later lines, and a failing line fails the test naming it.

The walk-through's instance is a sandbox host (orchestrator/sandbox): the test checks that it
is configured, that its agent reports real figures, that `ssh` logs in, and that deleting it
leaves no sandbox; an instance from its snapshot boots with its disk. Then a `kill -9` of the service leaves a sandbox and the bridge behind,
which its next start removes; a clean stop removes everything. An Azure VM (whose address is
its PublicIPAddress's) and a GCP instance are hosts too, on a port of their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.sandbox.host import missing_requirements
from orchestrator.sandbox.manager import BRIDGE, SUBNET
from orchestrator.server import port_holder
from tests.live import REPO

README_PORT = 8000
SERVICE_START_TIMEOUT_S = 60
BLOCK_TIMEOUT_S = 300
MARKER = "sh verbatim-test"


def readme_blocks() -> list[str]:
    """The README's blocks marked to be run, in order."""
    text = (REPO / "README.md").read_text()
    return re.findall(r"^```" + re.escape(MARKER) + r"\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def _link_tree(work: Path) -> None:
    for name in (".venv", "examples", "tests", "scripts", "orch"):
        (work / name).symlink_to(REPO / name)


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "PULUMI_"))}
    env.update({
        "HOME": str(work / "home"),
        "PULUMI_HOME": str(work / "pulumi-home"),
        # The README's pulumi commands, against the simulated service: the stand-in is `pulumi`.
        "PATH": f"{REPO / 'tests' / 'pulumi_standin' / 'bin'}:{os.environ['PATH']}",
        "ORCH_AGENT_INTERVAL_S": "5",
        # The service's and `orch token create`'s data dir: the scratch dir's, not the checkout's.
        "ORCH_DATA_DIR": str(work / ".orch"),
        "PYTHONUNBUFFERED": "1",
    })
    (work / "home").mkdir(exist_ok=True)
    return env


def _start(work: Path, env: dict[str, str], port: int = README_PORT) -> subprocess.Popen:
    log = open(work / "serve.log", "a")  # noqa: SIM115 (the process keeps it)
    process = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "orch"), "serve", "--simulate", "--port", str(port)],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"orch serve --simulate exited {process.returncode}: {(work / 'serve.log').read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    pytest.fail(f"orch serve --simulate did not answer within {SERVICE_START_TIMEOUT_S}s: {(work / 'serve.log').read_text()}")


def _run_block(block: str, work: Path, env: dict[str, str]) -> str:
    """One README block in bash (`set -e`, each line echoed): its output; the failing line fails the test.

    As in one terminal, what earlier blocks exported is set (kept in a file between blocks).
    """
    exports = work / ".readme-exports"
    script = f"[ ! -f {exports} ] || . {exports}\nset -ex\n{block}\nexport -p > {exports}\n"
    result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                            timeout=BLOCK_TIMEOUT_S)
    assert result.returncode == 0, f"README block failed ({result.returncode}):\n{block}\n--- output:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _api(path: str, token: str, port: int = README_PORT) -> dict:
    answer = httpx.get(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _token(work: Path, env: dict[str, str]) -> str:
    result = subprocess.run([str(REPO / ".venv" / "bin" / "orch"), "token", "create", "--user", "alice"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip().splitlines()[-1]


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _sandbox_pids(work: Path) -> list[int]:
    """Processes whose command line names this test's sandbox dir."""
    needle = str(work / ".orch" / "sandboxes").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _assert_nothing_left(work: Path) -> None:
    assert not any(name == BRIDGE or name.startswith("orchsim") for name in _links())
    assert not list((work / ".orch" / "sandboxes" / "hosts").glob("*"))
    assert _sandbox_pids(work) == []


@pytest.mark.timeout(900)
def test_readme_walkthrough_on_a_simulated_service(tmp_path):
    missing = missing_requirements()
    if missing:
        pytest.fail(f"the simulated mode's sandbox hosts need {', '.join(missing)}: run the suite with scripts/test")
    if port_holder(README_PORT) is not None or README_PORT in _listening():
        pytest.fail(f"port {README_PORT} (the README's) is in use: the README's commands need it")
    assert BRIDGE not in _links(), f"{BRIDGE} exists already: another simulated service runs on this machine"
    blocks = readme_blocks()
    assert len(blocks) == 4, f"expected the README's 4 {MARKER} blocks, found {len(blocks)}"
    try_it, clean_up, using_it, pulumi_stacks = blocks
    work = tmp_path / "repo"
    work.mkdir()
    _link_tree(work)
    env = _env(work)
    started = time.monotonic()
    service = _start(work, env)
    try:
        health = httpx.get(f"http://127.0.0.1:{README_PORT}/healthz", timeout=5).json()
        assert health["simulated"] is True
        assert "SIMULATED clouds" in (work / "serve.log").read_text()

        output = _run_block(try_it, work, env)
        configured_s = time.monotonic() - started
        print(f"\n--simulate start to a configured, reporting instance: {configured_s:.1f} s", file=sys.stderr)
        assert "instance/try-1: create succeeded" in output
        assert "aws (simulated)" in output
        assert "bootstrapped on try-1" in output, "ssh logged in as alice, with sudo, and the bootstrap script ran"
        token = _token(work, env)
        instance = _api("/api/v1/instances/try-1", token)
        assert instance["simulated"] is True and instance["public_ip"] == f"{SUBNET}.2"
        report = instance["health"]["last_report"]
        assert instance["health"]["state"] == "healthy"
        assert report["memory"]["total"] > 0 and 0 <= report["cpu_percent"] <= 100, report
        assert _api("/api/v1/features", token)["features"]["simulated"] is True
        # A snapshot copies the sandbox's disk (its overlay's upper layer).
        snapshot = httpx.post(f"http://127.0.0.1:{README_PORT}/api/v1/instances/try-1/snapshots", timeout=30,
                              headers={"Authorization": f"Bearer {token}"}, json={"name": "try-1-disk"})
        assert snapshot.status_code == 202, snapshot.text
        _wait_for(token, "/api/v1/snapshots/try-1-disk", "available")

        _run_block(clean_up, work, env)
        assert not list((work / ".orch" / "sandboxes" / "hosts").glob("*")), "deleting the instance removed its sandbox"
        assert not any(name.startswith("orchsim") for name in _links())

        _run_block(using_it, work, env)
        _run_block(pulumi_stacks, work, env)

        # An instance from the snapshot (not configured) boots with that disk: try-1's bootstrap output is there.
        doc = (work / "try.yaml").read_text().replace("name: try-1", "name: left-1").replace(
            "  image: ubuntu-22.04", "  from_snapshot: try-1-disk").replace(
            "  bootstrap_script:", "  configure: false\n  bootstrap_script:")
        created = httpx.post(f"http://127.0.0.1:{README_PORT}/api/v1/instances", timeout=30,
                             headers={"Authorization": f"Bearer {token}"}, json=_yaml(doc))
        assert created.status_code == 202, created.text
        _wait_for(token, "/api/v1/instances/left-1", "running")
        restored = subprocess.run(
            ["ssh", "-i", "try-key", "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "StrictHostKeyChecking=no", f"alice@{SUBNET}.2", "cat /var/tmp/bootstrap-done"],
            cwd=work, env=env, capture_output=True, text=True, timeout=60,
        )
        assert restored.stdout.strip() == "bootstrapped on try-1", restored.stderr

        # A host exists, then the service is killed.
        left_pids = _sandbox_pids(work)
        assert left_pids and "orchsim2" in _links() and BRIDGE in _links()
        service.kill()
        service.wait(timeout=30)
        assert _sandbox_pids(work) and BRIDGE in _links(), "a killed service leaves its sandbox behind"

        service = _start(work, env)
        # The veth may already be gone with its namespace, or be removed too.
        assert re.search(rf"removed [23] leftover\(s\) of an earlier simulated run: sandbox {SUBNET}\.2 \(pid \d+\), "
                         rf"(veth orchsim2, )?bridge {BRIDGE}", (work / "serve.log").read_text())
        assert not any(pid in _sandbox_pids(work) for pid in left_pids)
        assert not list((work / ".orch" / "sandboxes" / "hosts").glob("*"))
        assert not any(name.startswith("orchsim") for name in _links())
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=60)
    _assert_nothing_left(work)


def _listening() -> set[int]:
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.split()}


def _yaml(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def _wait_for(token: str, path: str, status: str, timeout_s: float = 120, port: int = README_PORT) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = _api(path, token, port)
        if record["status"] in (status, "failed"):
            assert record["status"] == status, json.dumps(record)
            return
        time.sleep(0.5)
    pytest.fail(f"{path} was not {status} within {timeout_s}s")


def test_without_root_the_simulated_mode_says_so_and_skips_configuration(mongo_db, tmp_path, monkeypatch):
    """No root, no sandbox hosts: one banner line says so; instances are marked and not configured."""
    import dataclasses

    from orchestrator import server
    from orchestrator.auth import Principal
    from orchestrator.models import Instance, Operation
    from orchestrator.services import Orchestrator
    from orchestrator.settings import load_settings
    from orchestrator.worker import SKIPPED_CONFIGURE_STEP, Worker
    from tests.live import instance_doc
    from tests.test_worker_safety import RecordingEngine

    monkeypatch.delenv("ORCH_AMQP_URL", raising=False)
    # _simulation_settings sets it; monkeypatch puts the old value back afterwards.
    monkeypatch.setenv("ORCH_PULUMI_COMMAND", str(REPO / "tests" / "pulumi_standin"))
    monkeypatch.setattr("orchestrator.sandbox.host.missing_requirements",
                        lambda: ["root (mount, pid and network namespaces, overlay mounts)"])
    sandbox_hosts, banner = server._simulation_settings(README_PORT)
    assert not sandbox_hosts
    assert banner.startswith("SIMULATED clouds, without sandbox hosts (root") and "\n" not in banner
    assert "configuration" in banner
    settings = dataclasses.replace(load_settings({"ORCH_DATA_DIR": str(tmp_path)}), simulated=True, sandbox_hosts=False)
    engine = RecordingEngine()
    configured = []
    monkeypatch.setattr(Worker, "_configure", lambda self, *args: configured.append(args))
    orch = Orchestrator(settings, engine, dispatch=lambda op_id: False)
    instance, op = orch.create_instance(Principal(name="alice", role="user"), instance_doc("plain-1", configure=True))
    Worker(settings, engine).run(str(op.id))
    done = Operation.objects.get(id=op.id)
    assert done.status == "succeeded" and configured == []
    assert [step.name for step in done.steps] == ["pulumi up", SKIPPED_CONFIGURE_STEP]
    assert Instance.objects.get(id=instance.id).simulated is True


def test_simulate_refuses_a_broker(monkeypatch):
    from orchestrator import server
    from orchestrator.settings import SettingsError

    monkeypatch.setenv("ORCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    with pytest.raises(SettingsError, match="unset ORCH_AMQP_URL"):
        server._simulation_settings(README_PORT)


# Not the README's port: this test does not run the README's commands.
CLOUDS_PORT = 8017
CLOUD_INSTANCES = {
    "azure": {"region": "eastus", "zone": "1", "machine_type": "Standard_D2s_v5"},
    "gcp": {"region": "us-central1", "zone": "us-central1-a", "machine_type": "e2-medium"},
}


def _ssh_banner(address: str, timeout_s: float = 30) -> bytes:
    """The first bytes port 22 at `address` sends (an SSH server's identification line)."""
    import socket

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((address, 22), timeout=5) as connection:
                return connection.recv(64)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.timeout(120)
def test_azure_and_gcp_instances_are_sandbox_hosts(tmp_path):
    """An Azure VM (its address reserved by its PublicIPAddress) and a GCP instance are hosts; deleting removes them.

    An Azure VM from a snapshot of another boots with that one's disk.
    """
    missing = missing_requirements()
    if missing:
        pytest.fail(f"the simulated mode's sandbox hosts need {', '.join(missing)}: run the suite with scripts/test")
    if port_holder(CLOUDS_PORT) is not None or CLOUDS_PORT in _listening():
        pytest.fail(f"port {CLOUDS_PORT} is in use")
    assert BRIDGE not in _links(), f"{BRIDGE} exists already: another simulated service runs on this machine"
    work = tmp_path / "repo"
    work.mkdir()
    _link_tree(work)
    env = _env(work)
    service = _start(work, env, CLOUDS_PORT)
    try:
        token = _token(work, env)
        headers = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{CLOUDS_PORT}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "key")], check=True, timeout=30)
        key = (work / "key.pub").read_text().strip()

        def create(name: str, cloud: str, source: dict) -> None:
            doc = {"kind": "Instance", "name": name, "spec": {
                "cloud": cloud, **CLOUD_INSTANCES[cloud], **source, "disk_gb": 30, "configure": False,
                "ssh_users": [{"name": "alice", "public_key": key}], "allowed_ssh_cidrs": [f"{SUBNET}.0/24"]}}
            created = httpx.post(f"{base}/api/v1/instances", json=doc, headers=headers, timeout=30)
            assert created.status_code == 202, created.text

        def alice(address: str, command: str) -> str:
            result = subprocess.run(
                ["ssh", "-i", str(work / "key"), "-o", "BatchMode=yes", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "StrictHostKeyChecking=no", f"alice@{address}", command],
                env=env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            return result.stdout

        for cloud in CLOUD_INSTANCES:
            create(f"{cloud}-1", cloud, {"image": "ubuntu-22.04"})
        addresses = {}
        for cloud in CLOUD_INSTANCES:
            _wait_for(token, f"/api/v1/instances/{cloud}-1", "running", timeout_s=60, port=CLOUDS_PORT)
            addresses[cloud] = _api(f"/api/v1/instances/{cloud}-1", token, CLOUDS_PORT)["public_ip"]
        assert all(a.startswith(f"{SUBNET}.") for a in addresses.values()), addresses
        assert len(set(addresses.values())) == 2, addresses
        for cloud, address in addresses.items():
            assert _ssh_banner(address).startswith(b"SSH-2.0-"), f"{cloud}'s public IP {address} is a sandbox host"
        assert len(_sandbox_pids(work)) >= 2
        assert len([name for name in _links() if name.startswith("orchsim")]) == 2

        # An Azure image (a disk Snapshot, then an Image of it) copies the disk; a VM from it boots with it.
        alice(addresses["azure"], "echo written on azure-1 > /var/tmp/marker")
        snapshot = httpx.post(f"{base}/api/v1/instances/azure-1/snapshots", json={"name": "azure-1-disk"},
                              headers=headers, timeout=30)
        assert snapshot.status_code == 202, snapshot.text
        _wait_for(token, "/api/v1/snapshots/azure-1-disk", "available", timeout_s=60, port=CLOUDS_PORT)
        create("azure-2", "azure", {"from_snapshot": "azure-1-disk"})
        _wait_for(token, "/api/v1/instances/azure-2", "running", timeout_s=60, port=CLOUDS_PORT)
        restored = _api("/api/v1/instances/azure-2", token, CLOUDS_PORT)["public_ip"]
        assert restored not in addresses.values()
        assert alice(restored, "cat /var/tmp/marker").strip() == "written on azure-1"

        names = [f"{cloud}-1" for cloud in CLOUD_INSTANCES] + ["azure-2"]
        for name in names:
            deleted = httpx.delete(f"{base}/api/v1/instances/{name}", headers=headers, timeout=30)
            assert deleted.status_code == 202, deleted.text
        for name in names:
            _wait_for(token, f"/api/v1/instances/{name}", "deleted", timeout_s=60, port=CLOUDS_PORT)
        assert not list((work / ".orch" / "sandboxes" / "hosts").glob("*")), "deleting the instances removed the hosts"
        assert not any(name.startswith("orchsim") for name in _links())
        assert _sandbox_pids(work) == []
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=60)
    _assert_nothing_left(work)
