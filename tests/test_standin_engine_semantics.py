"""Update semantics of the Pulumi CLI stand-in, as the real CLI (3.272) has them.

Driven through the Automation API (`pulumi.automation`, inline programs) and the stand-in's
command line, so CI keeps each behaviour: atomic backend writes and stack locks, `preview --json`,
the operation flags (`--expect-no-changes`, `--refresh`, `--diff`, `--color`, `--parallel`,
`--target`, `--replace`, `--exclude-protected`), `protect`, unknown provider packages, and the
human output of `preview` and `up`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pytest
from pulumi import automation as auto

from tests.conftest import STANDIN_ROOT

PROJECT = "engine-semantics"
PULUMI = STANDIN_ROOT / "bin" / "pulumi"
PARALLEL_REMOVALS = 200
REMOVAL_WORKERS = 32
CLI_TIMEOUT_S = 120
ERROR_EXIT_CODE = 255
# The program `pulumi up` runs from the project directory (the CLI used by hand).
LOCAL_PROGRAM = """
import pulumi
import pulumi_aws as aws

group = aws.ec2.SecurityGroup("group", description="local")
pulumi.export("group_id", group.id)
"""


@pytest.fixture(scope="module")
def pulumi_command() -> auto.PulumiCommand:
    return auto.PulumiCommand(root=str(STANDIN_ROOT), skip_version_check=True)


def open_stack(pulumi_command, name: str, program, env_vars: dict | None = None) -> auto.Stack:
    return auto.create_or_select_stack(
        stack_name=name,
        project_name=PROJECT,
        program=program,
        opts=auto.LocalWorkspaceOptions(pulumi_command=pulumi_command, env_vars=env_vars or {}),
    )


@pytest.fixture
def project_dir(standin_env, tmp_path) -> Path:
    """A project directory for the stand-in's command line (a local Python program in __main__.py)."""
    directory = tmp_path / "project"
    directory.mkdir()
    # The program runs in the interpreter of the tests (it has the SDK and the providers).
    virtualenv = Path(sys.prefix)
    (directory / "Pulumi.yaml").write_text(
        f"name: {PROJECT}\nruntime:\n  name: python\n  options:\n    virtualenv: {virtualenv}\n", encoding="utf-8"
    )
    (directory / "__main__.py").write_text(LOCAL_PROGRAM, encoding="utf-8")
    return directory


def cli(project_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [str(PULUMI), *args],
        cwd=project_dir,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=os.environ.copy(),
    )
    if check:
        assert completed.returncode == 0, completed.stderr
    return completed


def backend_dir(standin_env: dict) -> Path:
    return Path(standin_env["PULUMI_BACKEND_URL"][len("file://") :])


# --- concurrency --------------------------------------------------------------------------


def test_parallel_select_and_remove_of_distinct_stacks_never_fails(standin_env, project_dir):
    from tests.pulumi_standin.backend import FileBackend

    backend = FileBackend(standin_env["PULUMI_BACKEND_URL"], PROJECT)
    names = [f"rm-{index}" for index in range(PARALLEL_REMOVALS)]
    for name in names:
        backend.create(name, {"metadata": {}})

    def select_and_remove(name: str) -> tuple[str, int, str]:
        # `stack select` rewrites the workspace file every other removal reads.
        selected = cli(project_dir, "stack", "select", name, check=False)
        removed = cli(project_dir, "stack", "rm", "--yes", name, check=False)
        return name, selected.returncode or removed.returncode, selected.stderr + removed.stderr

    with ThreadPoolExecutor(max_workers=REMOVAL_WORKERS) as pool:
        failures = [outcome for outcome in pool.map(select_and_remove, names) if outcome[1] != 0]
    assert failures == []
    assert backend.list_stacks() == []


def test_second_up_on_a_stack_being_updated_gets_the_locked_error(standin_env, project_dir, pulumi_command):
    def program() -> None:
        aws.ec2.SecurityGroup("group", description="locked")

    stack = open_stack(pulumi_command, "locked", program)
    lock_dir = backend_dir(standin_env) / ".pulumi" / "locks" / "organization" / PROJECT / "locked"
    lock_dir.mkdir(parents=True)
    # A lock as a running `pulumi up` of this host (this test's own process) holds it.
    lock = {"pid": os.getpid(), "username": "test", "hostname": socket.gethostname(), "timestamp": "2026-01-01T00:00:00Z"}
    (lock_dir / "other-update.json").write_text(json.dumps(lock), encoding="utf-8")

    with pytest.raises(auto.ConcurrentUpdateError) as raised:
        stack.up()
    assert "the stack is currently locked by 1 lock(s)" in str(raised.value)

    denied = cli(project_dir, "up", "--yes", "--stack", "locked", check=False)
    assert denied.returncode == ERROR_EXIT_CODE
    assert denied.stderr.startswith(
        "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end "
        "or delete the lock file with `pulumi cancel`.\n"
    )
    assert f"created by test@{socket.gethostname()} (pid {os.getpid()}) at 2026-01-01T00:00:00Z" in denied.stderr

    # A preview does not lock the stack (as the file backend): it runs while the update holds it.
    assert stack.preview().change_summary == {"create": 3}
