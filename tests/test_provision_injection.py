"""Jinja in user text, end to end (issue 11, item 1): through the API with configuration on.

An SSH key comment and a bootstrap script holding `{{ lookup('pipe', 'id > MARKER') }}`
are data: nothing runs on the service host (this machine), and the instance (the
isolated SSH host of tests/sshhost.py, reached through the Pulumi stand-in) gets the
literal text.
"""

from __future__ import annotations

from orchestrator.sshkeys import generate_keypair
from tests.live import instance_doc, start_service, wait_operation
from tests.sshhost import ssh_host, write_private_key  # noqa: F401 (fixture)
from tests.test_provision_configured import _authorize_admin_key


def test_jinja_in_a_key_comment_and_the_bootstrap_script_stays_text(ssh_host, tmp_path, mongo_url):  # noqa: F811
    key_marker = tmp_path / "pwned-by-key-comment"
    script_marker = tmp_path / "pwned-by-bootstrap"
    key_payload = f"{{{{ lookup('pipe', 'id > {key_marker}') }}}}"
    script_payload = f"{{{{ lookup('pipe', 'id > {script_marker}') }}}}"
    alice_private, alice_public = generate_keypair("alice@test")
    alice_line = f"{alice_public} {key_payload}"
    bootstrap = f"#!/bin/sh\n# {script_payload}\necho bootstrapped >> /root/bootstrap-runs\n"
    live = start_service(
        tmp_path,
        mongo_url,
        PULUMI_STANDIN_SSH_PORT=str(ssh_host.port),
        ORCH_AGENT_INTERVAL_S="2",
        ORCH_AGENT_FIRST_REPORT_TIMEOUT_S="90",
    )
    doc = instance_doc(
        "jinja-1",
        "docker",
        configure=True,
        ssh_users=[{"name": "alice", "public_key": alice_line, "sudo": True}],
        bootstrap_script=bootstrap,
    )
    try:
        with live.client("alice") as client:
            created = client.post("/api/v1/instances", json=doc)
            assert created.status_code == 202, created.text
            _authorize_admin_key(live, ssh_host, "jinja-1")
            op = wait_operation(client, created.json()["operation"]["id"], timeout=400)
            assert op["status"] == "succeeded", (op["error"], op["logs"][-30:])
            assert "configure: ansible" in [step["name"] for step in op["steps"]]
    finally:
        live.stop()

    assert not key_marker.exists(), "the key comment ran as Jinja on the service host"
    assert not script_marker.exists(), "the bootstrap script ran as Jinja on the service host"
    root = ssh_host.root
    assert (root / "home/alice/.ssh/authorized_keys").read_text() == alice_line + "\n"
    assert (root / "var/lib/orch-bootstrap/script").read_text() == bootstrap
    assert (root / "root/bootstrap-runs").read_text() == "bootstrapped\n"
    alice_key = write_private_key(tmp_path, "alice_key", alice_private)
    login = ssh_host.ssh("alice", alice_key, "id -un")
    assert login.returncode == 0 and login.stdout.strip() == "alice", login.stderr
