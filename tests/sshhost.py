"""Sandbox hosts (orchestrator/sandbox/host.py) as pytest fixtures: a real SSH host for playbook tests.

The host shares this machine's network namespace (its sshd listens on a free loopback
port) and lives for one test module; `ssh_host` boots with a shell as pid 1 (a container),
`systemd_ssh_host` with systemd (a cloud VM). See host.py for how it is isolated.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.configure import ConfigureSummary, configure_instance
from orchestrator.sandbox.host import (
    SandboxError,
    SshHost,
    free_port,
    missing_requirements,
    start_host,
    stop_host,
    write_private_key,
)

__all__ = ["SshHost", "configure", "free_port", "ssh_host", "start_ssh_host", "stop_ssh_host", "systemd_ssh_host", "write_private_key"]


def start_ssh_host(work: Path, init: str = "shell") -> SshHost:
    missing = missing_requirements()
    if missing:
        pytest.fail(f"the ssh host needs {', '.join(missing)}: run the suite with scripts/test, which installs them")
    try:
        return start_host(work, init)
    except SandboxError as error:
        pytest.fail(str(error))


stop_ssh_host = stop_host


def configure(host: SshHost, extravars: dict, workdir: Path, log: list[str], **overrides) -> ConfigureSummary:
    """The playbook run against `host` as its root, its log lines into `log` (two attempts, 1 s apart)."""
    arguments = dict(
        host=host.host, port=host.port, ssh_user=host.user, private_key_pem=host.private_key_pem,
        extravars=extravars, on_log=log.append, workdir=workdir, attempts=2, retry_delay_s=1,
    )
    return configure_instance(**{**arguments, **overrides})


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory):
    """A fresh, isolated SSH host (root login with `private_key_pem`) for one test module."""
    host = start_ssh_host(tmp_path_factory.mktemp("sshhost"))
    yield host
    stop_host(host)


@pytest.fixture(scope="module")
def systemd_ssh_host(tmp_path_factory):
    """Like ssh_host, but booted by systemd as a cloud image is: services are systemd units."""
    host = start_ssh_host(tmp_path_factory.mktemp("systemdhost"), init="systemd")
    yield host
    stop_host(host)
