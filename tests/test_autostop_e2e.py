"""Autostop end to end: a configured instance whose real agent reports, goes idle, is warned, and is stopped.

The instance is the sandbox SSH host of tests/sshhost.py (as in test_provision_configured.py):
the playbook installs the real agent there, which reports to the running service over loopback.
The sandbox's CPU figures are this machine's, shared with whatever else runs here, so the test
freezes its /proc/stat (a copy bind-mounted over it): the instance's CPU reads idle. A user is
logged in on a terminal (`ssh -tt` as the image's login user, root here) the whole time, and the warning `wall` writes to that
terminal is what the test reads back. The idle window is 6 s: ORCH_AUTOSTOP_MIN_IDLE_MINUTES
lowers the service's floor (5 minutes by default) for this test only.
"""

from __future__ import annotations

import subprocess
import time

from orchestrator.sshkeys import generate_keypair
from tests.live import start_service, wait_operation, instance_doc
from tests.sshhost import ssh_host  # noqa: F401 (fixture)
from tests.test_provision_configured import _authorize_admin_key

IDLE_MINUTES = 0.1
WARN_S = 3


def test_an_idle_instance_warns_its_users_and_stops(ssh_host, tmp_path, mongo_url):  # noqa: F811
    # A machine has /run/utmp (systemd-tmpfiles makes it): sshd records logins there and wall reads it.
    prepared = ssh_host.run(
        "install -m 664 -g utmp /dev/null /run/utmp && cp /proc/stat /run/frozen-stat && "
        "mount --bind /run/frozen-stat /proc/stat"
    )
    assert prepared.returncode == 0, prepared.stderr
    live = start_service(
        tmp_path, mongo_url,
        PULUMI_STANDIN_SSH_PORT=str(ssh_host.port),
        ORCH_AGENT_INTERVAL_S="1",
        ORCH_AGENT_FIRST_REPORT_TIMEOUT_S="60",
        # Within the wait below: a playbook that hangs fails the create, naming its task.
        ORCH_CONFIGURE_TIMEOUT_S="200",
        ORCH_AUTOSTOP_CHECK_S="1",
        ORCH_AUTOSTOP_WARN_S=str(WARN_S),
        ORCH_AUTOSTOP_MIN_IDLE_MINUTES=str(IDLE_MINUTES),
    )
    _, public = generate_keypair("alice@test")
    autostop = {"idle_minutes": IDLE_MINUTES, "metric": "cpu", "below_percent": 5, "action": "stop"}
    doc = instance_doc("idle-1", "docker", configure=True, autostop=autostop,
                       ssh_users=[{"name": "alice", "public_key": public, "sudo": False}])
    # Logged in before the instance exists: the warning may come as soon as the instance is running.
    terminal = subprocess.Popen(
        ["ssh", "-tt", "-i", str(ssh_host.key_file), "-p", str(ssh_host.port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
         f"{ssh_host.user}@{ssh_host.host}", "sleep 600"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        with live.client("alice") as client:
            created = client.post("/api/v1/instances", json=doc)
            assert created.status_code == 202, created.text
            _authorize_admin_key(live, ssh_host, "idle-1")
            op = wait_operation(client, created.json()["operation"]["id"], timeout=300)
            assert op["status"] == "succeeded", (op["error"], op["logs"][-20:])
            deadline = time.monotonic() + 60
            seen_warned = False
            while True:
                instance = client.get("/api/v1/instances/idle-1").json()
                seen_warned = seen_warned or bool(instance["autostop"]["warned_at"])
                if instance["status"] == "stopped":
                    break
                assert time.monotonic() < deadline, instance
                time.sleep(0.3)
            assert seen_warned or instance["autostop"]["warned_at"]
            assert instance["status_reason"] == f"autostop: cpu below 5% for {IDLE_MINUTES:g} min"
            assert instance["autostop"]["decided_at"] and instance["spec"]["state"] == "stopped"
            [stop] = [o for o in client.get("/api/v1/instances/idle-1/operations").json()["items"] if o["kind"] == "stop"]
            assert stop["status"] == "succeeded"
            agent_log = ssh_host.run("cat /var/log/orch-agent.log").stdout
    finally:
        terminal.terminate()
        live.stop()
        print(live.logs()[-6000:])  # shown with a failure: what the service and its operations did
    shown = terminal.communicate(timeout=10)[0].decode(errors="replace")
    assert "notice shown to logged-in users: orch: instance idle-1 will be stopped" in agent_log, agent_log
    assert "Broadcast message from root@" in shown, (shown, agent_log)
    assert "orch: instance idle-1 will be stopped in about" in " ".join(shown.split()), shown
