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
from tests.test_standin import open_stack as open_standin_stack
from tests.test_standin import pulumi_command  # noqa: F401 (fixture)

PROJECT = "engine-semantics"
PULUMI = STANDIN_ROOT / "bin" / "pulumi"
PARALLEL_REMOVALS = 200
REMOVAL_WORKERS = 32
CLI_TIMEOUT_S = 120
# The program `pulumi up` runs from the project directory (the CLI used by hand).
LOCAL_PROGRAM = """
import pulumi
import pulumi_aws as aws

group = aws.ec2.SecurityGroup("group", description="local")
pulumi.export("group_id", group.id)
"""


def open_stack(pulumi_command, name: str, program, env_vars: dict | None = None) -> auto.Stack:
    return open_standin_stack(pulumi_command, name, program, env_vars, project=PROJECT)




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
    assert denied.returncode != 0
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


# --- protect ----------------------------------------------------------------------------------


class Component(pulumi.ComponentResource):
    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("my:module:MyResource", name, None, opts)


def protect_program() -> None:
    protect = pulumi.Config().get_bool("protect") or False
    Component("protected", opts=pulumi.ResourceOptions(protect=protect))
    Component("unprotected")


def test_protected_resource_stops_destroy_with_the_cli_error(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "protect", protect_program)
    stack.set_config("protect", auto.ConfigValue("true"))
    stack.up()
    protected_urn = f"urn:pulumi:protect::{PROJECT}::my:module:MyResource::protected"

    # --exclude-protected destroys the rest and keeps the protected resource (and the stack it hangs off).
    destroyed = stack.destroy(exclude_protected=True)
    assert destroyed.summary.result == "succeeded"
    assert destroyed.summary.resource_changes == {"delete": 1}
    assert "All unprotected resources were destroyed. There are still 2 protected resources" in destroyed.stdout
    remaining = {resource["urn"] for resource in stack.export_stack().deployment["resources"]}
    assert remaining == {protected_urn, f"urn:pulumi:protect::{PROJECT}::pulumi:pulumi:Stack::{PROJECT}-protect"}
    again = stack.destroy(exclude_protected=True)
    assert "There were no unprotected resources to destroy. There are still 2 protected resources" in again.stdout

    with pytest.raises(auto.CommandError) as raised:
        stack.destroy()
    message = str(raised.value)
    assert f'resource "{protected_urn}" cannot be deleted\nbecause it is protected.' in message
    assert f"`pulumi state unprotect '{protected_urn}'`" in message
    assert protected_urn in {resource["urn"] for resource in stack.export_stack().deployment["resources"]}

    # Removing `protect` in the program and updating lets destroy delete everything.
    stack.remove_config("protect")
    stack.up()
    assert stack.destroy().summary.resource_changes == {"delete": 3}  # the stack, both components


def test_destroy_refuses_target_with_exclude_protected(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "target-protect", protect_program)
    stack.up()
    with pytest.raises(auto.CommandError) as raised:
        stack.destroy(exclude_protected=True, target=[f"urn:pulumi:target-protect::{PROJECT}::my:module:MyResource::protected"])
    assert "error: you cannot specify --target and --exclude-protected" in str(raised.value)


# --- --target and --replace -------------------------------------------------------------------


def test_target_updates_only_the_targeted_resources(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "targets", group_program("first", ("other",)))
    stack.up()
    web = f"urn:pulumi:targets::{PROJECT}::aws:ec2/securityGroup:SecurityGroup::web"
    other = f"urn:pulumi:targets::{PROJECT}::aws:ec2/securityGroup:SecurityGroup::other"

    def changed_program() -> None:
        aws.ec2.SecurityGroup("web", description="changed")
        aws.ec2.SecurityGroup("other", description="changed too")
        aws.ec2.SecurityGroup("new", description="not targeted")

    stack.workspace.program = changed_program
    result = stack.up(target=[web])
    assert result.summary.resource_changes == {"update": 1, "same": 3}
    inputs = {resource["urn"]: resource.get("inputs", {}) for resource in stack.export_stack().deployment["resources"]}
    assert inputs[web]["description"] == "changed"
    assert inputs[other]["description"] == "other"  # untargeted: kept as it was
    assert not any(urn.endswith("::new") for urn in inputs)  # untargeted create: skipped

    with pytest.raises(auto.CommandError) as raised:
        stack.up(target=[f"urn:pulumi:targets::{PROJECT}::aws:ec2/securityGroup:SecurityGroup::missing"])
    assert "could not be found in the stack. Did you forget to escape $ in your shell?" in str(raised.value)

    # A targeted destroy deletes only the target.
    assert stack.destroy(target=[other]).summary.resource_changes == {"delete": 1}
    assert other not in {resource["urn"] for resource in stack.export_stack().deployment["resources"]}


def test_targeted_resource_depending_on_an_untargeted_new_one_fails(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "skipped", group_program("first"))
    stack.up()

    def program() -> None:
        new_group = aws.ec2.SecurityGroup("new", description="not targeted")
        aws.ec2.SecurityGroup("web", description="first", opts=pulumi.ResourceOptions(depends_on=[new_group]))

    stack.workspace.program = program
    web = f"urn:pulumi:skipped::{PROJECT}::aws:ec2/securityGroup:SecurityGroup::web"
    new = f"urn:pulumi:skipped::{PROJECT}::aws:ec2/securityGroup:SecurityGroup::new"
    with pytest.raises(auto.CommandError) as raised:
        stack.up(target=[web])
    assert f"Resource '{web}' depends on '{new}' which was was not specified in --target list." in str(raised.value)


def test_replace_replaces_the_named_resource(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "replace", group_program("first"))
    stack.up()
    web = f"urn:pulumi:replace::{PROJECT}::aws:ec2/securityGroup:SecurityGroup::web"
    created_before = next(r for r in stack.export_stack().deployment["resources"] if r["urn"] == web)["created"]

    preview = stack.preview(replace=[web])
    assert preview.change_summary == {"replace": 1, "same": 2}
    result = stack.up(replace=[web])
    assert result.summary.resource_changes == {"replace": 1, "same": 2}
    assert "+-1 replaced" in result.stdout
    created_after = next(r for r in stack.export_stack().deployment["resources"] if r["urn"] == web)["created"]
    assert created_after != created_before


def test_targeted_destroy_needs_target_dependents_for_dependents(standin_env, pulumi_command):
    def program() -> None:
        parent = Component("parent")
        Component("child", opts=pulumi.ResourceOptions(parent=parent))
        Component("alone")

    stack = open_stack(pulumi_command, "dependents", program)
    stack.up()
    parent = f"urn:pulumi:dependents::{PROJECT}::my:module:MyResource::parent"
    child = f"urn:pulumi:dependents::{PROJECT}::my:module:MyResource$my:module:MyResource::child"

    with pytest.raises(auto.CommandError) as raised:
        stack.destroy(target=[parent])
    assert f"Resource '{child}' will be destroyed but was not specified in --target list." in str(raised.value)

    result = stack.destroy(target=[parent], target_dependents=True)
    assert result.summary.resource_changes == {"delete": 2}
    remaining = {resource["urn"] for resource in stack.export_stack().deployment["resources"]}
    assert parent not in remaining and child not in remaining
    assert f"urn:pulumi:dependents::{PROJECT}::my:module:MyResource::alone" in remaining
    # A glob target: `*` stays within one part of the URN.
    assert stack.destroy(target=[f"urn:pulumi:dependents::{PROJECT}::my:module:MyResource::*"]).summary.resource_changes == {
        "delete": 1
    }


# --- provider packages ------------------------------------------------------------------------


class Unknown(pulumi.CustomResource):
    def __init__(self, name: str) -> None:
        super().__init__("nosuchpkg:index:Thing", name, {"size": 1})


def test_resource_of_a_package_that_is_not_installed_fails_the_update(standin_env, pulumi_command):
    def program() -> None:
        aws.ec2.SecurityGroup("kept", description="before the unknown package")
        Unknown("thing")

    stack = open_stack(pulumi_command, "no-plugin", program)
    with pytest.raises(auto.CommandError) as raised:
        stack.up()
    message = str(raised.value)
    assert "pulumi:providers:nosuchpkg (default):" in message
    assert "could not find latest version for provider nosuchpkg" in message
    types = {resource["type"] for resource in stack.export_stack().deployment.get("resources") or []}
    assert "nosuchpkg:index:Thing" not in types
    assert stack.history()[0].result == "failed"


# --- human output -----------------------------------------------------------------------------


def test_preview_and_up_print_the_cli_summary(standin_env, project_dir):
    cli(project_dir, "stack", "init", "human")
    preview = cli(project_dir, "preview")
    assert preview.stdout.startswith("Previewing update (human):\n\n")
    assert " +  aws:ec2/securityGroup:SecurityGroup group create\n" in preview.stdout
    assert preview.stdout.endswith("Resources:\n    + 3 to create\n\n")
    assert "Duration:" not in preview.stdout

    up = cli(project_dir, "up", "--yes", "--skip-preview")
    assert up.stdout.startswith("Updating (human):\n\n")
    assert " +  aws:ec2/securityGroup:SecurityGroup group created (" in up.stdout
    assert "\nOutputs:\n    group_id: \"sg-" in up.stdout
    assert "\nResources:\n    + 3 created\n\nDuration: " in up.stdout

    (project_dir / "__main__.py").write_text(LOCAL_PROGRAM.replace('"local"', '"changed"') + EXTRA_GROUP, encoding="utf-8")
    changed = cli(project_dir, "up", "--yes", "--skip-preview")
    assert "\nResources:\n    + 1 created\n    ~ 1 updated\n    2 changes. 2 unchanged\n\nDuration: " in changed.stdout

    destroyed = cli(project_dir, "destroy", "--yes", "--skip-preview")
    assert "\nResources:\n    - 4 deleted\n\nDuration: " in destroyed.stdout
    assert destroyed.stdout.endswith(
        "The resources in the stack have been deleted, but the history and configuration associated with the "
        "stack are still maintained. \nIf you want to remove the stack completely, run `pulumi stack rm human`.\n"
    )


EXTRA_GROUP = """
aws.ec2.SecurityGroup("extra", description="added")
"""


def test_diff_prints_each_step_as_a_property_diff(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "diffs", group_program("first"))
    created = stack.up(diff=True)
    web = f"urn:pulumi:diffs::{PROJECT}::aws:ec2/securityGroup:SecurityGroup::web"
    assert f"    + aws:ec2/securityGroup:SecurityGroup: (create)\n        [urn={web}]\n" in created.stdout
    assert '        description: "first"' in created.stdout

    stack.workspace.program = group_program("second")
    preview = stack.preview(diff=True)
    assert "    ~ aws:ec2/securityGroup:SecurityGroup: (update)\n        [id=sg-" in preview.stdout
    assert '      ~ description: "first" => "second"' in preview.stdout
    assert "\nResources:\n    ~ 1 to update\n    2 unchanged\n" in preview.stdout
