"""playbooks/site.yml: lint, syntax, and real runs through configure_instance against an isolated SSH host."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pexpect
import pytest

from orchestrator.configure import RESULT_LOST, ConfigureError, ConfigureSummary, HostUnreachable, configure_instance
from orchestrator.sshkeys import generate_keypair
from tests.sshhost import SshHost, configure, free_port, ssh_host, systemd_ssh_host, write_private_key  # noqa: F401 (fixtures)
from tests.tcpproxy import TcpProxy
from tests.test_agent import ReportServer, valid_token

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
AGENT_INTERVAL_S = 1

# Stands in for goofys without FUSE or S3: it records how it was called and mounts a
# tmpfs at the mount point, with the directory mode goofys would show.
FAKE_GOOFYS = """#!/bin/sh
echo "$*" >> /var/tmp/goofys-calls
for mount_point; do :; done
mount -t tmpfs -o mode=0755 fake-goofys "$mount_point"
"""
FAKE_GOOFYS_SHA256 = hashlib.sha256(FAKE_GOOFYS.encode()).hexdigest()
BOOTSTRAP_SCRIPT = """#!/bin/sh
echo "hello from bootstrap"
echo ran >> /var/tmp/bootstrap-runs
"""


def tool_env() -> dict:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_ansible_lint_passes(tmp_path):
    # On a copy: ansible-lint keeps a cache in `.ansible/` of the project it lints, which must not be the repo.
    shutil.copytree(REPO / "playbooks", tmp_path / "playbooks")
    result = subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "playbooks/"], cwd=tmp_path, env=tool_env(),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (REPO / ".ansible").exists() and not (REPO / "playbooks" / ".ansible").exists()


def test_syntax_check_passes():
    result = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,", "playbooks/site.yml"],
        cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def auth_methods(host: SshHost) -> str:
    """What sshd offers for login, from the client's debug output (e.g. 'publickey,password')."""
    result = host.ssh("root", host.key_file, "true", extra_options=("-v", "-o", "PreferredAuthentications=none"))
    for line in result.stderr.splitlines():
        if "Authentications that can continue:" in line:
            return line.rsplit(":", 1)[1].strip()
    raise AssertionError(f"no authentication methods in ssh output: {result.stderr}")


@dataclass
class Configured:
    host: SshHost
    server: ReportServer
    extravars: dict
    workdir: Path
    first: ConfigureSummary
    second: ConfigureSummary
    first_log: list[str]
    second_log: list[str]
    auth_methods_before: str
    alice_key: Path
    bob_key: Path


@pytest.fixture(scope="module")
def configured(ssh_host, tmp_path_factory):
    """The playbook run twice against a fresh host, with users, a mount, a bootstrap script and the agent."""
    work = tmp_path_factory.mktemp("configure")
    server = ReportServer()
    fake_goofys = work / "fake-goofys"
    fake_goofys.write_text(FAKE_GOOFYS)
    alice_private, alice_public = generate_keypair("alice@test")
    bob_private, bob_public = generate_keypair("bob@test")
    extravars = {
        "orch_ssh_users": [
            {"name": "alice", "public_key": alice_public, "sudo": True},
            {"name": "bob", "public_key": bob_public, "sudo": False},
        ],
        "orch_mounts": [{"bucket": "my-data", "path": "/mnt/data"}],
        "orch_bootstrap_script": BOOTSTRAP_SCRIPT,
        "orch_agent_url": server.url,
        "orch_agent_token": valid_token("play-1"),
        "orch_agent_instance": "play-1",
        "orch_agent_interval": AGENT_INTERVAL_S,
        "goofys_src": str(fake_goofys),
        "goofys_sha256": FAKE_GOOFYS_SHA256,
        "agent_restart_delay_s": 1,
    }
    methods_before = auth_methods(ssh_host)
    first_log: list[str] = []
    second_log: list[str] = []
    # Run from a directory of its own, to see that configuration writes nothing (`.ansible/`) into its cwd.
    cwd = os.getcwd()
    os.chdir(work)
    try:
        first = configure(ssh_host, extravars, work / "runs", first_log)
        second = configure(ssh_host, extravars, work / "runs", second_log)
    finally:
        os.chdir(cwd)
    yield Configured(
        host=ssh_host, server=server, extravars=extravars, workdir=work, first=first, second=second,
        first_log=first_log, second_log=second_log, auth_methods_before=methods_before,
        alice_key=write_private_key(work, "alice_key", alice_private),
        bob_key=write_private_key(work, "bob_key", bob_private),
    )
    server.stop()


def test_first_run_changes_the_host_and_streams_its_log(configured):
    assert configured.first.changed > 0 and configured.first.attempts == 1
    assert any(line.startswith("PLAY RECAP") for line in configured.first_log)
    assert any("TASK [agent : Write the agent config]" in line for line in configured.first_log)
    token = configured.extravars["orch_agent_token"]
    assert not any(token in line for line in configured.first_log), "the agent token must not reach the log"


def test_second_run_changes_nothing(configured):
    assert configured.second.changed == 0, "\n".join(configured.second_log)
    assert configured.second.ok > 0


def test_a_run_whose_end_of_output_is_lost_takes_its_result_from_its_event_files(configured, tmp_path, monkeypatch):
    """ansible-runner's last wait for the output, after ansible-playbook exited, times out (ansible-runner#1343)."""
    real_expect = pexpect.spawn.expect

    def end_of_output_never_comes(self, pattern, *args, **kwargs):
        if pattern is pexpect.EOF:  # only that last wait asks for EOF alone
            raise pexpect.exceptions.TIMEOUT("the end of the output did not come")
        return real_expect(self, pattern, *args, **kwargs)

    monkeypatch.setattr(pexpect.spawn, "expect", end_of_output_never_comes)
    log: list[str] = []
    summary = configure(configured.host, configured.extravars, tmp_path, log)
    assert summary == ConfigureSummary(ok=configured.second.ok, changed=0, skipped=configured.second.skipped, attempts=1)
    assert log[-1] == f"{RESULT_LOST}: it was read from the play's event files", log[-5:]


def test_users_keys_and_sudo(configured):
    host = configured.host
    alice = host.ssh("alice", configured.alice_key, "id -un && sudo -n true && echo SUDO_OK")
    assert alice.returncode == 0 and alice.stdout.split() == ["alice", "SUDO_OK"], alice.stderr
    bob = host.ssh("bob", configured.bob_key, "id -un")
    assert bob.returncode == 0 and bob.stdout.strip() == "bob", bob.stderr
    bob_sudo = host.ssh("bob", configured.bob_key, "sudo -n true")
    assert bob_sudo.returncode != 0
    keys = host.root / "home/alice/.ssh/authorized_keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert keys.read_text() == configured.extravars["orch_ssh_users"][0]["public_key"] + "\n"
    assert not (host.root / "etc/sudoers.d/orch-bob").exists()
    assert (host.root / "var/lib/orch/ssh-users").read_text() == "alice\nbob\n"


def test_password_login_is_off(configured):
    assert "password" in configured.auth_methods_before.split(",")  # the stock sshd offered it
    assert auth_methods(configured.host) == "publickey"  # and the reloaded sshd no longer does


def test_agent_runs_supervised_and_reports(configured):
    host, server = configured.host, configured.server
    config = host.root / "etc/orch-agent/config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text()) == {
        "url": server.url, "token": configured.extravars["orch_agent_token"],
        "instance": "play-1", "interval": AGENT_INTERVAL_S, "spot": False, "cloud": "",
    }
    report = server.wait_for_reports(1, timeout_s=30)[-1]
    assert report["instance"] == "play-1" and report["agent_version"]

    # The supervisor starts the agent again when it dies.
    agent_pid_file = host.root / "run/orch-agent/agent.pid"
    killed_pid = agent_pid_file.read_text().strip()
    assert host.run(f"kill {killed_pid}").returncode == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and agent_pid_file.read_text().strip() == killed_pid:
        time.sleep(0.2)
    assert agent_pid_file.read_text().strip() != killed_pid, "the supervisor did not restart the agent"
    reports_after_kill = len(server.reports)
    server.wait_for_reports(reports_after_kill + 1, timeout_s=30)

    # And something starts the supervisor at boot.
    if host.run("command -v crontab").returncode == 0:
        boot_entry = host.run("crontab -l").stdout
    else:
        boot_entry = (host.root / "etc/rc.local").read_text()
    assert "/opt/orch-agent/supervise.sh" in boot_entry


def test_bootstrap_ran_once_and_kept_its_output(configured):
    root = configured.host.root
    assert (root / "var/tmp/bootstrap-runs").read_text() == "ran\n"
    log = (root / "var/log/orch-bootstrap.log").read_text()
    assert "hello from bootstrap" in log and "exited with status 0" in log
    assert any("TASK [bootstrap : Run the bootstrap script]" in line for line in configured.second_log)


def test_goofys_installed_and_bucket_mounted_once(configured):
    host = configured.host
    assert (host.root / "usr/local/bin/goofys").read_text() == FAKE_GOOFYS
    assert host.run("mountpoint -q /mnt/data").returncode == 0
    calls = (host.root / "var/tmp/goofys-calls").read_text().splitlines()
    assert len(calls) == 1 and calls[0].endswith("my-data /mnt/data"), calls
    assert "/usr/local/bin/goofys#my-data /mnt/data fuse" in (host.root / "etc/fstab").read_text()


def test_failing_task_raises_with_task_and_host(configured):
    extravars = {**configured.extravars, "orch_agent_url": ""}
    with pytest.raises(ConfigureError) as error:
        configure(configured.host, extravars, configured.workdir / "runs", [])
    message = str(error.value)
    assert "task 'Check the agent settings' failed on 127.0.0.1" in message
    assert "orch_agent_url, orch_agent_token and orch_agent_instance are required" in message


def test_a_port_that_never_answers_fails_within_the_wait_with_where_and_how_long(tmp_path):
    port = free_port()
    log: list[str] = []
    started = time.monotonic()
    with pytest.raises(HostUnreachable) as error:
        configure_instance(
            host="127.0.0.1", port=port, ssh_user="root", private_key_pem="unused", extravars={},
            on_log=log.append, workdir=tmp_path / "runs", reach_timeout_s=2,
        )
    assert str(error.value) == f"cannot reach 127.0.0.1:{port} over SSH (timed out after 2 s)"
    assert 2 <= time.monotonic() - started < 10
    assert log == [f"waiting for 127.0.0.1:{port} to answer as an SSH server (Connection refused; at most 2 s)"]


@contextmanager
def banner_only_server():
    """A port that greets as an SSH server and hangs up: sshd not ready yet behind a booting VM's address."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.6 not-ready\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_a_host_whose_ssh_is_not_ready_is_retried_then_given_up(tmp_path):
    private_key, _ = generate_keypair("retry@test")
    log: list[str] = []
    started = time.monotonic()
    with banner_only_server() as port, pytest.raises(ConfigureError) as error:
        configure_instance(
            host="127.0.0.1", port=port, ssh_user="root", private_key_pem=private_key, extravars={},
            on_log=log.append, workdir=tmp_path, attempts=2, retry_delay_s=1, reach_timeout_s=5,
        )
    assert "unreachable" in str(error.value) and "gave up after 2 attempts" in str(error.value)
    assert any("retrying in 1s (attempt 1/2)" in line for line in log)
    assert time.monotonic() - started >= 1
    assert list(tmp_path.iterdir()) == [], "the run's temp dir (with the private key) must be removed"


def test_host_that_comes_up_late_is_waited_for_then_configured(configured, tmp_path):
    # An sshd that comes up while configuration is already trying to reach it.
    late = TcpProxy(target_port=configured.host.port, listen_port=free_port())
    threading.Timer(2, late.up).start()
    log: list[str] = []

    try:
        summary = configure(configured.host, configured.extravars, tmp_path, log, port=late.listen_port)
    finally:
        late.down()

    assert summary.changed == 0 and log[0].startswith(f"waiting for 127.0.0.1:{late.listen_port}"), log


def test_configuration_leaves_no_ansible_dir_in_the_cwd_or_the_repo(configured):
    """Ansible's own files (ANSIBLE_HOME, its temp files) stay in the run's private directory."""
    assert not (configured.workdir / ".ansible").exists()
    assert not (REPO / ".ansible").exists() and not (REPO / "playbooks" / ".ansible").exists()


def test_goofys_that_does_not_match_its_checksum_fails_the_play(configured, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ConfigureError) as copied:
        configure(configured.host, {**configured.extravars, "goofys_sha256": wrong}, tmp_path, [])
    message = str(copied.value)
    assert "task 'Check goofys against its checksum' failed" in message
    assert f"has sha256 {FAKE_GOOFYS_SHA256}, not goofys_sha256 {wrong}" in message

    # A mirror that serves another file than the one pinned (the installed one matches neither,
    # so get_url downloads).
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "goofys").write_text(FAKE_GOOFYS.replace("tmpfs", "evil"))
    pinned = hashlib.sha256(b"the release that was pinned").hexdigest()
    downloaded = {key: value for key, value in configured.extravars.items() if key != "goofys_src"}
    with serving_directory(mirror) as mirror_url:
        with pytest.raises(ConfigureError) as fetched:
            configure(
                configured.host, {**downloaded, "goofys_url": f"{mirror_url}/goofys", "goofys_sha256": pinned}, tmp_path, []
            )
    message = str(fetched.value)
    assert "task 'Download goofys' failed" in message and "checksum" in message.lower(), message
    assert (configured.host.root / "usr/local/bin/goofys").read_text() == FAKE_GOOFYS, "the binary is kept"


@pytest.mark.parametrize(
    ("mount", "why"),
    [
        ({"bucket": "data", "path": "/mnt/x\n/dev/sda /"}, "a line break in the path"),
        ({"bucket": "data", "path": "/mnt/x y"}, "a space in the path"),
        ({"bucket": "data\nevil", "path": "/mnt/x"}, "a line break in the bucket"),
        ({"bucket": "data", "path": "/mnt/x\\040"}, "an fstab escape in the path"),
    ],
)
def test_mounts_that_could_change_fstab_are_refused(configured, tmp_path, mount, why):
    fstab_before = (configured.host.root / "etc/fstab").read_text()
    extravars = {**configured.extravars, "orch_mounts": [mount]}
    with pytest.raises(ConfigureError) as error:
        configure(configured.host, extravars, tmp_path, [])
    assert "task 'Check the mounts and the goofys checksum' failed" in str(error.value), why
    assert (configured.host.root / "etc/fstab").read_text() == fstab_before


@pytest.mark.parametrize(
    "user",
    [
        {"name": "bob\nroot", "public_key": "ssh-ed25519 AAAA bob", "sudo": True},
        {"name": "bob", "public_key": "ssh-ed25519 AAAA bob\nssh-ed25519 BBBB mallory", "sudo": False},
        {"name": "bob", "public_key": "ssh-ed25519 AAAA bob\rssh-ed25519 BBBB mallory", "sudo": False},
    ],
)
def test_users_that_could_add_lines_are_refused(configured, tmp_path, user):
    extravars = {**configured.extravars, "orch_ssh_users": [user]}
    with pytest.raises(ConfigureError) as error:
        configure(configured.host, extravars, tmp_path, [])
    assert "task 'Check the user names and key lines' failed" in str(error.value)


def test_removed_users_lose_access_and_rotated_keys_replace_the_old(configured, tmp_path):
    """Runs last on this host: it changes its users."""
    host, marker = configured.host, tmp_path / "pwned"
    alice = configured.extravars["orch_ssh_users"][0]
    bob_private, bob_public = generate_keypair("bob@test")
    log: list[str] = []
    with_sudo_bob = {**configured.extravars, "orch_ssh_users": [alice, {"name": "bob", "public_key": bob_public, "sudo": True}]}
    configure(host, with_sudo_bob, tmp_path / "runs", log)
    bob_key = write_private_key(tmp_path, "bob_key", bob_private)
    assert host.ssh("bob", bob_key, "sudo -n true").returncode == 0, "bob has sudo before his removal"
    # Whatever is in the record on the host is data: a name that is a template is not run, nor kept.
    record = host.root / "var/lib/orch/ssh-users"
    record.write_text(record.read_text() + f"{{{{ lookup('pipe', 'id > {marker}') }}}}\n")

    alice_private, alice_public = generate_keypair("alice@test-rotated")
    rotated = {**configured.extravars, "orch_ssh_users": [{**alice, "public_key": alice_public}]}
    first = configure(host, rotated, tmp_path / "runs", log)
    second = configure(host, rotated, tmp_path / "runs", log)

    assert first.changed > 0 and second.changed == 0, "\n".join(log)
    assert not marker.exists()
    assert record.read_text() == "alice\nbob\n"
    # bob: no key, no sudoers file, and an expired account that no key can log in to.
    assert host.ssh("bob", bob_key, "true").returncode != 0
    assert not list((host.root / "etc/sudoers.d").glob("*bob*"))
    assert not (host.root / "home/bob/.ssh/authorized_keys").exists()
    (host.root / "home/bob/.ssh/authorized_keys").write_text(bob_public + "\n")
    assert host.run("chown bob:bob /home/bob/.ssh/authorized_keys && chmod 600 /home/bob/.ssh/authorized_keys").returncode == 0
    refused = host.ssh("bob", bob_key, "true")
    # 255: ssh itself failed (no login), not a shell that refused the command.
    assert refused.returncode == 255, ("a key planted for a removed user must not let it in", refused.stderr)
    # alice: the new key only, sudo kept.
    assert (host.root / "home/alice/.ssh/authorized_keys").read_text() == alice_public + "\n"
    assert host.ssh("alice", configured.alice_key, "true").returncode != 0, "the old key is gone"
    new_key = write_private_key(tmp_path, "alice_new_key", alice_private)
    assert host.ssh("alice", new_key, "sudo -n true").returncode == 0
    # The account this play logs in with is untouched.
    assert host.ssh("root", host.key_file, "true").returncode == 0

    # bob back in the spec: he logs in again.
    back = {**rotated, "orch_ssh_users": [*rotated["orch_ssh_users"], {"name": "bob", "public_key": bob_public}]}
    configure(host, back, tmp_path / "runs", log)
    assert host.ssh("bob", bob_key, "id -un").stdout.strip() == "bob"


@contextmanager
def serving_directory(directory: Path):
    """An HTTP server for the files in directory: a goofys mirror for hosts without Internet access."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def agent_main_pid(host: SshHost) -> str:
    return host.run("systemctl show --property=MainPID --value orch-agent").stdout.strip()


def test_on_a_systemd_host_the_agent_is_a_unit_and_reruns_change_nothing(systemd_ssh_host, tmp_path):  # noqa: F811
    """The branch real cloud images take: the agent is a systemd unit, sshd is reloaded through systemd."""
    host = systemd_ssh_host
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "goofys").write_text(FAKE_GOOFYS)
    alice_private, alice_public = generate_keypair("alice@test")
    server = ReportServer()
    with serving_directory(mirror) as mirror_url:
        try:
            _check_systemd_host(host, server, f"{mirror_url}/goofys", alice_private, alice_public, tmp_path)
        finally:
            server.stop()


def _check_systemd_host(
    host: SshHost, server: ReportServer, goofys_url: str, alice_private: str, alice_public: str, tmp_path: Path
) -> None:
    extravars = {
        "orch_ssh_users": [{"name": "alice", "public_key": alice_public, "sudo": True}],
        "orch_mounts": [{"bucket": "models", "path": "/mnt/models"}],
        "goofys_url": goofys_url,
        "goofys_sha256": FAKE_GOOFYS_SHA256,
        "orch_bootstrap_script": "",
        "orch_agent_url": server.url,
        "orch_agent_token": valid_token("unit-1"),
        "orch_agent_instance": "unit-1",
        "orch_agent_interval": AGENT_INTERVAL_S,
        "agent_restart_delay_s": 1,
    }
    assert "password" in auth_methods(host).split(",")
    first_log: list[str] = []
    assert configure(host, extravars, tmp_path / "runs", first_log).changed > 0
    assert any("TASK [agent : Enable and start the agent]" in line for line in first_log)
    second_log: list[str] = []
    assert configure(host, extravars, tmp_path / "runs", second_log).changed == 0, "\n".join(second_log)

    assert host.run("systemctl is-enabled orch-agent").stdout.strip() == "enabled"
    assert host.run("systemctl is-active orch-agent").stdout.strip() == "active"
    assert not (host.root / "opt/orch-agent/supervise.sh").exists(), "no supervisor where systemd runs"
    assert server.wait_for_reports(1, timeout_s=30)[-1]["instance"] == "unit-1"

    # goofys came from the mirror's URL and mounted the bucket.
    assert (host.root / "usr/local/bin/goofys").read_text() == FAKE_GOOFYS
    assert host.run("mountpoint -q /mnt/models").returncode == 0

    # sshd was reloaded through systemd: password login is off.
    assert auth_methods(host) == "publickey"
    alice_key = write_private_key(tmp_path, "alice_key", alice_private)
    assert host.ssh("alice", alice_key, "sudo -n true").returncode == 0

    # systemd restarts an agent that dies.
    killed = agent_main_pid(host)
    assert host.run(f"kill -9 {killed}").returncode == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and agent_main_pid(host) in (killed, "0"):
        time.sleep(0.2)
    assert agent_main_pid(host) not in (killed, "0"), "systemd did not restart the agent"

    # A changed config (here the interval) makes the handler restart the unit to pick it up.
    before = agent_main_pid(host)
    changed = {**extravars, "orch_agent_interval": AGENT_INTERVAL_S + 1}
    third_log: list[str] = []
    assert configure(host, changed, tmp_path / "runs", third_log).changed > 0
    assert any("RUNNING HANDLER [agent : Restart the agent with systemd]" in line for line in third_log)
    assert agent_main_pid(host) != before
    assert json.loads((host.root / "etc/orch-agent/config.json").read_text())["interval"] == AGENT_INTERVAL_S + 1
