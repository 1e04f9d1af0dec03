"""Provisioning with configuration, end to end: stand-in up -> Ansible over SSH -> agent reports to the service.

The "instance" is the isolated SSH host of tests/sshhost.py: the stand-in reports
the docker target's mapped SSH port as that host's port, and the agent the
playbook installs there reports back to the running service over loopback.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import time

import pymongo

from orchestrator.sshkeys import generate_keypair
from tests.live import free_port, instance_doc, start_service, wait_operation
from tests.sshhost import configure, ssh_host, write_private_key  # noqa: F401 (fixture)

BOOTSTRAP = "#!/bin/bash\necho bootstrapped-$(hostname) >> /root/bootstrap-runs\n"


def _authorize_admin_key(live, host, name: str) -> str:
    """Do what the docker target's entrypoint does in a real container: authorize the service's key.

    Returns the instance's id: its agent's identity (the `instance` of its reports).
    """
    client = pymongo.MongoClient(live.env["ORCH_MONGODB_URL"])
    try:
        row = client.get_default_database()["instances"].find_one({"name": name})
    finally:
        client.close()
    result = host.run(f"printf '%s\\n' {shlex.quote(row['admin_public_key'])} >> /root/.ssh/authorized_keys")
    assert result.returncode == 0, result.stderr
    return str(row["_id"])


def test_provision_configures_the_host_and_waits_for_the_agent(ssh_host, tmp_path, mongo_url):  # noqa: F811
    live = start_service(
        tmp_path,
        mongo_url,
        PULUMI_STANDIN_SSH_PORT=str(ssh_host.port),
        ORCH_AGENT_INTERVAL_S="2",
        ORCH_AGENT_FIRST_REPORT_TIMEOUT_S="90",
    )
    alice_private, alice_public = generate_keypair("alice@test")
    bob_private, bob_public = generate_keypair("bob@test")
    doc = instance_doc(
        "configured-1",
        "docker",
        configure=True,
        ssh_users=[
            {"name": "alice", "public_key": alice_public, "sudo": True},
            {"name": "bob", "public_key": bob_public, "sudo": False},
        ],
        bootstrap_script=BOOTSTRAP,
    )
    try:
        with live.client("alice") as client:
            created = client.post("/api/v1/instances", json=doc)
            assert created.status_code == 202, created.text
            identity = _authorize_admin_key(live, ssh_host, "configured-1")
            op = wait_operation(client, created.json()["operation"]["id"], timeout=400)
            assert op["status"] == "succeeded", (op["error"], op["logs"][-30:])
            assert [s["name"] for s in op["steps"]] == [
                "pulumi up",
                "configure: ansible",
                "wait for the agent's first report",
            ]
            assert any("TASK [" in line for line in op["logs"]), "Ansible's events reach the operation log"

            instance = client.get("/api/v1/instances/configured-1").json()
            assert instance["status"] == "running"
            assert instance["health"]["state"] == "healthy"
            report = instance["health"]["last_report"]
            assert report["instance"] == identity
            assert report["gpus"] == [] and report["memory"]["total"] > 0

            # The users exist with the right sudo, and log in with their own keys.
            work = tmp_path / "keys"
            work.mkdir()
            alice_key = write_private_key(work, "alice", alice_private)
            bob_key = write_private_key(work, "bob", bob_private)
            assert ssh_host.ssh("alice", alice_key, "sudo -n true").returncode == 0
            bob = ssh_host.ssh("bob", bob_key, "sudo -n true")
            assert bob.returncode != 0 and ssh_host.ssh("bob", bob_key, "true").returncode == 0

            # The bootstrap script ran once.
            assert ssh_host.run("cat /root/bootstrap-runs").stdout.count("bootstrapped-") == 1

            # The agent keeps reporting: samples accumulate over its interval.
            time.sleep(5)
            samples = client.get("/api/v1/instances/configured-1/metrics").json()["samples"]
            assert len(samples) >= 2 and all(s["instance"] == identity for s in samples)

            # Deleting the instance revokes the agent's token.
            deleted = client.delete("/api/v1/instances/configured-1").json()["operation"]
            assert wait_operation(client, deleted["id"])["status"] == "succeeded"
    finally:
        live.stop()


def test_agent_that_never_reports_fails_the_provision_and_rolls_it_back(ssh_host, tmp_path, mongo_url):  # noqa: F811
    """The playbook succeeds, but the agent is told a service URL where nothing listens: no first report."""
    live = start_service(
        tmp_path,
        mongo_url,
        PULUMI_STANDIN_SSH_PORT=str(ssh_host.port),
        ORCH_PUBLIC_URL=f"http://127.0.0.1:{free_port()}",
        ORCH_AGENT_INTERVAL_S="1",
        ORCH_AGENT_FIRST_REPORT_TIMEOUT_S="5",
    )
    try:
        with live.client("alice") as client:
            created = client.post("/api/v1/instances", json=instance_doc("silent-1", "docker", configure=True))
            assert created.status_code == 202, created.text
            _authorize_admin_key(live, ssh_host, "silent-1")
            op = wait_operation(client, created.json()["operation"]["id"], timeout=400)
            assert op["status"] == "failed"
            assert op["error"].endswith("the agent sent no report within 5 s"), op["error"]
            assert [(s["name"], s["status"]) for s in op["steps"]] == [
                ("pulumi up", "succeeded"),
                ("configure: ansible", "succeeded"),
                ("wait for the agent's first report", "failed"),
                ("rollback: pulumi destroy", "succeeded"),
            ]
            instance = client.get("/api/v1/instances/silent-1").json()
            assert instance["status"] == "failed" and "no report" in instance["status_reason"]
            backend = tmp_path / "pulumi-backend"
            assert not list(backend.glob(".pulumi/stacks/*/instance-alice.silent-1.json")), "the stack is removed"
    finally:
        live.stop()


def _play_seconds_without_a_script(host, tmp_path) -> float:
    """How long the playbook takes on the host with a new agent token and no bootstrap script."""
    extravars = {
        "orch_agent_url": f"http://127.0.0.1:{free_port()}",
        "orch_agent_token": "calibration-token",
        "orch_agent_instance": "calibration",
    }
    started = time.monotonic()
    configure(host, extravars, tmp_path / "calibration", [])
    return time.monotonic() - started


def test_a_bootstrap_script_that_does_not_end_is_stopped_in_the_set_time_and_the_create_rolled_back(
    ssh_host, tmp_path, mongo_url  # noqa: F811
):
    # The deadline must fall inside the script, so it is set from how long the play's other tasks take on
    # this host now: 10-25 s on a quiet machine, over 45 s beside a parallel test run.
    timeout_s = max(45, round(2 * _play_seconds_without_a_script(ssh_host, tmp_path)) + 15)
    # The module's host is a new instance again: an earlier test's script ran there, and a script runs once.
    assert ssh_host.run("rm -f /var/lib/orch-bootstrap/done").returncode == 0
    live = start_service(
        tmp_path, mongo_url, PULUMI_STANDIN_SSH_PORT=str(ssh_host.port), ORCH_CONFIGURE_TIMEOUT_S=str(timeout_s)
    )
    doc = instance_doc(
        "endless-1", "docker", configure=True, bootstrap_script="#!/bin/sh\necho waiting forever\nexec sleep 300\n"
    )
    try:
        with live.client("alice") as client:
            created = client.post("/api/v1/instances", json=doc)
            assert created.status_code == 202, created.text
            _authorize_admin_key(live, ssh_host, "endless-1")
            op = wait_operation(client, created.json()["operation"]["id"], timeout=300)
            instance = client.get("/api/v1/instances/endless-1").json()
    finally:
        live.stop()
    assert op["error"] == (
        f"configuration failed: the playbook did not finish within {timeout_s} s"
        " and was stopped in task 'Run the bootstrap script'"
    ), (op["error"], op["logs"][-15:])
    assert [(step["name"], step["status"]) for step in op["steps"]] == [
        ("pulumi up", "succeeded"),
        ("configure: ansible", "failed"),
        ("rollback: pulumi destroy", "succeeded"),
    ]
    configure_step = op["steps"][1]
    took = dt.datetime.fromisoformat(configure_step["finished_at"]) - dt.datetime.fromisoformat(
        configure_step["started_at"]
    )
    # ansible-runner looks at the time at least every 5 s, then kills ansible-playbook.
    assert timeout_s <= took.total_seconds() < timeout_s + 20, took
    assert "waiting forever" in (ssh_host.root / "var/log/orch-bootstrap.log").read_text()
    assert instance["status"] == "failed" and instance["status_reason"].startswith(op["error"]), instance


def test_an_instance_whose_address_never_answers_fails_in_the_set_time_and_says_so(tmp_path, mongo_url):
    """The stand-in's AWS address (203.0.113.x, a documentation network) is never reachable from here."""
    live = start_service(tmp_path, mongo_url, ORCH_SSH_REACH_TIMEOUT_S="2")
    try:
        with live.client("alice") as client:
            created = client.post("/api/v1/instances", json=instance_doc("unreachable-1", "aws", configure=True))
            assert created.status_code == 202, created.text
            started = time.monotonic()
            op = wait_operation(client, created.json()["operation"]["id"])
            instance = client.get("/api/v1/instances/unreachable-1").json()
    finally:
        live.stop()
    assert op["status"] == "failed" and time.monotonic() - started < 60, op
    address = re.search(r"203\.0\.113\.\d+", op["error"])
    assert address and op["error"] == f"cannot reach {address[0]}:22 over SSH (timed out after 2 s)", op["error"]
    assert instance["status"] == "failed" and instance["status_reason"].startswith(op["error"]), instance
