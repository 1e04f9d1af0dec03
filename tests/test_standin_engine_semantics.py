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
import time
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


# --- flags of up / preview ------------------------------------------------------------------


def group_program(description: str, extra_groups: tuple[str, ...] = ()):
    def program() -> None:
        group = aws.ec2.SecurityGroup("web", description=description)
        for name in extra_groups:
            aws.ec2.SecurityGroup(name, description=name)
        pulumi.export("group_id", group.id)

    return program


def test_preview_json_prints_the_cli_preview_digest(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "digest", group_program("first"))
    stack.set_config("aws:region", auto.ConfigValue("eu-west-1"))
    stack.up()
    stack.workspace.program = group_program("second")

    result = stack.preview(json=True)

    digest = json.loads(result.stdout)
    assert result.change_summary == {"same": 2, "update": 1}
    assert digest["changeSummary"] == {"same": 2, "update": 1}
    assert digest["config"] == {"aws:region": "eu-west-1"}
    assert isinstance(digest["duration"], int)
    by_op = {step["op"]: step for step in digest["steps"]}
    assert set(by_op) == {"same", "update"}  # the stack's own step, and the changed group
    update = by_op["update"]
    assert update["urn"].endswith("::aws:ec2/securityGroup:SecurityGroup::web")
    assert update["diffReasons"] == ["description"]
    assert update["detailedDiff"] == {"description": {"kind": "update", "inputDiff": True}}
    assert update["oldState"]["inputs"]["description"] == "first"
    assert update["newState"]["inputs"]["description"] == "second"
    assert update["provider"].startswith(f"urn:pulumi:digest::{PROJECT}::pulumi:providers:aws::default")


def test_up_json_streams_engine_events(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "up-json", group_program("first"))
    stack.up()
    # The SDK's up() has no json option; `refresh --json` (no program to run) streams the same way.
    completed = cli_in_workspace(stack, "refresh", "--yes", "--skip-preview", "--json")
    events = [json.loads(line) for line in completed.stdout.splitlines()]
    assert "preludeEvent" in events[0]
    assert [event["summaryEvent"]["resourceChanges"] for event in events if "summaryEvent" in event] == [{"same": 3}]
    assert "cancelEvent" in events[-1]


def cli_in_workspace(stack: auto.Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The stand-in's command line in the inline program's workspace (operations that do not run the program)."""
    return cli(Path(stack.workspace.work_dir), *args, "--stack", stack.name, check=check)


def test_expect_no_changes_fails_preview_and_up_when_there_are_changes(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "no-changes", group_program("first"))
    stack.up()

    assert stack.preview(expect_no_changes=True).change_summary == {"same": 3}
    assert stack.up(expect_no_changes=True).summary.resource_changes == {"same": 3}

    stack.workspace.program = group_program("second")
    with pytest.raises(auto.CommandError) as raised:
        stack.preview(expect_no_changes=True)
    assert "error: no changes were expected for preview but changes were proposed" in str(raised.value)
    assert "code: 7" in str(raised.value)
    with pytest.raises(auto.CommandError) as raised:
        stack.up(expect_no_changes=True)
    assert "error: no changes were expected for update but changes were proposed" in str(raised.value)
    # The update itself was done; only the expectation failed.
    assert stack.outputs()["group_id"].value.startswith("sg-")
    assert stack.preview(expect_no_changes=True).change_summary == {"same": 3}


def test_unknown_color_is_refused_with_the_cli_message(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "colors", group_program("first"))
    for operation in (stack.up, stack.preview, stack.refresh, stack.destroy):
        with pytest.raises(auto.CommandError) as raised:
            operation(color="vibrant grey")
        assert (
            "error: unsupported color option: 'vibrant grey'.  Supported values are: auto, always, never, raw"
            in str(raised.value)
        )
    assert stack.up(color="never").summary.result == "succeeded"
    assert stack.history()[0].kind == "update"
    assert len(stack.history()) == 1  # the refused operations did nothing


def test_parallel_bounds_concurrent_resource_operations(standin_env, pulumi_command):
    latency_ms = 400
    groups = ("a", "b", "c")
    stack = open_stack(
        pulumi_command, "parallel", group_program("first", groups), env_vars={"PULUMI_STANDIN_LATENCY_MS": str(latency_ms)}
    )
    started = time.monotonic()
    assert stack.up(parallel=1).summary.resource_changes == {"create": 6}
    # One operation at a time: the four groups' creates cannot overlap.
    assert time.monotonic() - started >= (len(groups) + 1) * latency_ms / 1000

    refused = cli_in_workspace(stack, "refresh", "--yes", "--parallel", "many", check=False)
    assert refused.returncode != 0
    assert 'invalid argument "many" for "-p, --parallel" flag' in refused.stderr


def test_refresh_flag_rereads_the_cloud_before_preview_up_and_destroy(standin_env, pulumi_command, monkeypatch):
    stack = open_stack(pulumi_command, "refresh-first", group_program("first"))
    stack.up()
    assert "refreshing" in stack.preview(refresh=True).stdout
    result = stack.up(refresh=True)
    assert "refreshing" in result.stdout
    assert result.summary.resource_changes == {"same": 3}
    destroyed = stack.destroy(refresh=True)
    assert "refreshing" in destroyed.stdout
    assert destroyed.summary.resource_changes == {"delete": 3}
