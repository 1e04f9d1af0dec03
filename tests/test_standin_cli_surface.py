"""The stand-in's command line as the Automation API and a user see it: parsing, config, stacks, output.

Each test matches a behaviour of the real CLI (pkg/cmd/pulumi of pulumi/pulumi): its messages,
exit codes, JSON fields and table layouts. Driven through `pulumi.automation` where the SDK has
a call for it, and through `bin/pulumi` for what only a user types.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pytest
import yaml
from pulumi import automation as auto

from tests.conftest import STANDIN_ROOT

PROJECT = "cli-surface"
PULUMI = str(STANDIN_ROOT / "bin" / "pulumi")
COMMAND_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def pulumi_command() -> auto.PulumiCommand:
    return auto.PulumiCommand(root=str(STANDIN_ROOT), skip_version_check=False)


def program() -> None:
    config = pulumi.Config()
    key = aws.ec2.KeyPair("deployer", public_key="ssh-ed25519 AAAA deployer")
    pulumi.export("greeting", config.get("greeting") or "hello")
    pulumi.export("key_name", key.key_name)
    pulumi.export("token", pulumi.Output.secret("s3cr3t"))
    pulumi.export("sizes", [1, 2])


def open_stack(pulumi_command, name: str) -> auto.Stack:
    return auto.create_or_select_stack(
        stack_name=name,
        project_name=PROJECT,
        program=program,
        opts=auto.LocalWorkspaceOptions(pulumi_command=pulumi_command),
    )


def cli(cwd: Path | str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PULUMI, *args], cwd=cwd, env=os.environ, capture_output=True, text=True, input=stdin,
        timeout=COMMAND_TIMEOUT_S,
    )  # fmt: skip


def ok(cwd: Path | str, *args: str) -> str:
    result = cli(cwd, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# --- argument parsing ------------------------------------------------------------------------------


def test_unknown_commands_and_flags_are_refused_as_the_cli_does(standin_env, pulumi_command, tmp_path):
    stack = open_stack(pulumi_command, "parse")
    work_dir = stack.workspace.work_dir
    refused = {
        ("frobnicate",): 'error: unknown command "frobnicate" for "pulumi"',
        ("stack", "frob"): 'error: unknown command "frob" for "pulumi stack"',
        ("config", "frob"): 'error: unknown command "frob" for "pulumi config"',
        ("stack", "ls", "--bogus"): "error: unknown flag: --bogus",
        ("up", "--yes", "--frobnicate"): "error: unknown flag: --frobnicate",
        ("stack", "ls", "-z"): "error: unknown shorthand flag: 'z' in -z",
        ("stack", "output", "--stack"): "error: flag needs an argument: --stack",
        # a flag of another command is unknown here
        ("stack", "ls", "--show-secrets"): "error: unknown flag: --show-secrets",
        # a command of the real CLI that the stand-in does not simulate says so
        ("config", "env", "ls"): "error: the Pulumi CLI stand-in does not support `pulumi config env`",
    }
    for args, message in refused.items():
        result = cli(work_dir, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.strip() == message, (args, result.stderr)

    # A flag of the CLI that would change what an update does, and that the stand-in does not do,
    # is refused rather than ignored.
    with pytest.raises(auto.errors.CommandError, match="the Pulumi CLI stand-in does not support --remove"):
        stack._run_pulumi_cmd_sync(["destroy", "--yes", "--remove"])

    # The Automation API gets a CommandError naming the flag, never a silent success.
    with pytest.raises(auto.errors.CommandError, match="unknown flag: --frobnicate"):
        stack._run_pulumi_cmd_sync(["stack", "output", "--frobnicate"])

    # Flags the command does define are accepted in all their spellings.
    ok(work_dir, "stack", "ls", "-j")
    ok(work_dir, "--non-interactive", "stack", "ls", "--json", "--color=never", "-a")
    ok(work_dir, "stack", "output", "-sparse", "--json")


def test_help_prints_usage_and_the_sdk_sees_no_remote_support(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "help")
    work_dir = stack.workspace.work_dir
    assert ok(work_dir).startswith("Usage:\n  pulumi [command]\n")  # no command: the root's usage
    usage = ok(work_dir, "stack", "ls", "--help")
    assert usage.startswith("Usage:\n  pulumi stack ls [flags]\n")
    assert "  -j, --json" in usage and "Global Flags:" in usage and "  -C, --cwd string" in usage
    group = ok(work_dir, "stack", "-h")
    assert "Available Commands:" in group and "  rename" in group and "  tag" in group
    # The SDK probes `preview --help` for --remote: the stand-in runs nothing remotely.
    assert "--remote" not in ok(work_dir, "preview", "--help")
    assert stack.workspace._remote_supported() is False


def test_a_missing_stack_exits_with_the_stack_not_found_code(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "present")
    result = cli(stack.workspace.work_dir, "stack", "output", "--stack", "absent")
    assert result.returncode == 6
    assert result.stderr.strip() == "error: no stack named 'absent' found"


# --- config ----------------------------------------------------------------------------------------


def test_config_paths_set_get_and_remove_nested_keys_and_list_items(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "paths")
    ws = stack.workspace
    stack.set_config("names[0]", auto.ConfigValue("a"), path=True)
    stack.set_config("names[1]", auto.ConfigValue("b"), path=True)
    stack.set_config("db.port", auto.ConfigValue("5432"), path=True)
    stack.set_config("db.tls", auto.ConfigValue("true"), path=True)
    stack.set_config("db.password", auto.ConfigValue("hunter2", secret=True), path=True)
    ws.set_all_config("paths", {"tags.env": auto.ConfigValue("dev"), "tags.team": auto.ConfigValue("ops")}, path=True)

    # The settings file holds objects, values coerced as the CLI does, the secret leaf encrypted.
    settings = yaml.safe_load((Path(ws.work_dir) / "Pulumi.paths.yaml").read_text())["config"]
    assert settings[f"{PROJECT}:names"] == ["a", "b"]
    assert settings[f"{PROJECT}:db"]["port"] == 5432 and settings[f"{PROJECT}:db"]["tls"] is True
    assert set(settings[f"{PROJECT}:db"]["password"]) == {"secure"}
    assert settings[f"{PROJECT}:tags"] == {"env": "dev", "team": "ops"}

    assert stack.get_config("names[1]", path=True).value == "b"
    password = stack.get_config("db.password", path=True)
    assert (password.value, password.secret) == ("hunter2", True)
    # An object value is the compact JSON the CLI prints (Go's encoder: no spaces, sorted keys).
    db = stack.get_config("db", path=True)
    assert db.secret and db.value == '{"password":"hunter2","port":5432,"tls":true}'
    assert stack.get_all_config()[f"{PROJECT}:names"].value == '["a","b"]'

    masked = json.loads(ok(ws.work_dir, "config", "--json"))
    assert masked[f"{PROJECT}:db"] == {"secret": True}  # a hidden secret has no value
    assert masked[f"{PROJECT}:names"] == {"value": '["a","b"]', "objectValue": ["a", "b"], "secret": False}

    stack.remove_config("names[0]", path=True)
    assert stack.get_config("names", path=True).value == '["b"]'
    ws.remove_all_config("paths", ["db.password", "tags"], path=True)
    assert stack.get_config("db").value == '{"port":5432,"tls":true}'
    with pytest.raises(auto.errors.CommandError, match="configuration key 'tags' not found for stack 'paths'"):
        stack.get_config("tags")

    result = cli(ws.work_dir, "config", "set", "--path", "names[5]", "x")
    assert result.returncode == 1 and result.stderr.strip() == "error: names[5]: array index out of range"


def test_config_file_flag_reads_and_writes_another_settings_file(standin_env, pulumi_command, tmp_path):
    stack = open_stack(pulumi_command, "cfgfile")
    work_dir = Path(stack.workspace.work_dir)
    other = tmp_path / "other.yaml"
    ok(work_dir, "config", "set", "greeting", "from-the-other-file", "--config-file", str(other))
    assert yaml.safe_load(other.read_text())["config"] == {f"{PROJECT}:greeting": "from-the-other-file"}
    assert "greeting" not in (work_dir / "Pulumi.cfgfile.yaml").read_text()
    assert ok(work_dir, "config", "get", "greeting", "--config-file", str(other)).strip() == "from-the-other-file"
    result = cli(work_dir, "config", "get", "greeting")
    assert result.returncode == 1 and "configuration key 'greeting' not found" in result.stderr

    # An update with --config-file gives the program that file's config.
    up = stack.up(config_file=str(other))
    assert up.outputs["greeting"].value == "from-the-other-file"


def test_config_refresh_restores_the_config_of_the_last_update(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "cfgrefresh")
    work_dir = Path(stack.workspace.work_dir)
    stack.set_config("greeting", auto.ConfigValue("deployed"))
    stack.set_config("secret", auto.ConfigValue("p4ss", secret=True))
    stack.up()
    stack.set_config("greeting", auto.ConfigValue("edited"))
    stack.remove_config("secret")

    stack.refresh_config()  # `config refresh --force`: no backup
    config = stack.get_all_config()
    assert config[f"{PROJECT}:greeting"].value == "deployed"
    assert (config[f"{PROJECT}:secret"].value, config[f"{PROJECT}:secret"].secret) == ("p4ss", True)
    assert not (work_dir / "Pulumi.cfgrefresh.yaml.bak").exists()

    stack.set_config("greeting", auto.ConfigValue("edited again"))
    output = ok(work_dir, "config", "refresh", "--stack", "cfgrefresh")
    backup = work_dir / "Pulumi.cfgrefresh.yaml.bak"
    assert output.splitlines() == [
        f"backed up existing configuration file to {backup}",
        "refreshed configuration for stack 'cfgrefresh'",
    ]
    assert "edited again" in backup.read_text()
    assert stack.get_config("greeting").value == "deployed"


# --- stacks ----------------------------------------------------------------------------------------


def test_stack_rename_moves_state_history_tags_and_config(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "before")
    work_dir = Path(stack.workspace.work_dir)
    stack.set_config("greeting", auto.ConfigValue("hi"))
    stack.up()
    stack.set_tag("owner", "alice")

    result = stack.rename("after")
    assert result.stdout.strip() == "Renamed before to after"
    assert stack.name == "after"
    assert [summary.name for summary in stack.workspace.list_stacks()] == ["after"]
    assert stack.workspace.stack().name == "after"  # the renamed stack stays selected
    urns = [resource["urn"] for resource in stack.export_stack().deployment["resources"]]
    assert urns and all(urn.startswith(f"urn:pulumi:after::{PROJECT}::") for urn in urns)
    assert [update.kind for update in stack.history()] == ["update"]
    assert stack.get_tag("owner") == "alice"
    assert not (work_dir / "Pulumi.before.yaml").exists()
    assert stack.get_config("greeting").value == "hi"
    # The renamed stack updates in place: nothing is replaced.
    assert stack.up().summary.resource_changes == {"same": 3}


def test_stack_init_copy_config_from_copies_values_and_secrets(standin_env, pulumi_command):
    source = open_stack(pulumi_command, "source")
    work_dir = source.workspace.work_dir
    source.set_config("greeting", auto.ConfigValue("copied"))
    source.set_config("token", auto.ConfigValue("t0ken", secret=True))
    ok(work_dir, "stack", "init", "copy", "--copy-config-from", "source", "--no-select")
    config = source.workspace.get_all_config("copy")
    assert config[f"{PROJECT}:greeting"].value == "copied"
    assert (config[f"{PROJECT}:token"].value, config[f"{PROJECT}:token"].secret) == ("t0ken", True)
    # The secret is encrypted again with the new stack's key, not copied as ciphertext.
    source_settings = yaml.safe_load((Path(work_dir) / "Pulumi.source.yaml").read_text())
    copy_settings = yaml.safe_load((Path(work_dir) / "Pulumi.copy.yaml").read_text())
    assert copy_settings["encryptionsalt"] != source_settings["encryptionsalt"]
    assert copy_settings["config"][f"{PROJECT}:token"] != source_settings["config"][f"{PROJECT}:token"]

    result = cli(work_dir, "stack", "init", "other", "--copy-config-from", "missing")
    assert result.returncode == 6 and "no stack named 'missing' found" in result.stderr


def test_change_secrets_provider_rekeys_config_and_state(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "rekey")
    work_dir = Path(stack.workspace.work_dir)
    stack.set_config("token", auto.ConfigValue("t0ken", secret=True))
    stack.up()
    salt_before = yaml.safe_load((work_dir / "Pulumi.rekey.yaml").read_text())["encryptionsalt"]
    ok(work_dir, "stack", "change-secrets-provider", "passphrase")
    assert yaml.safe_load((work_dir / "Pulumi.rekey.yaml").read_text())["encryptionsalt"] != salt_before
    assert stack.get_config("token").value == "t0ken"
    assert stack.outputs()["token"].value == "s3cr3t"
    assert stack.up().summary.resource_changes == {"same": 3}


def test_stack_tags_set_get_list_and_remove(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "tagged")
    ws = stack.workspace
    assert ws.list_tags("tagged") == {}
    ws.set_tag("tagged", "owner", "alice")
    ws.set_tag("tagged", "team", "ops")
    assert ws.get_tag("tagged", "owner") == "alice"
    assert ws.list_tags("tagged") == {"owner": "alice", "team": "ops"}
    assert ok(ws.work_dir, "stack", "tag", "ls").splitlines() == ["NAME   VALUE", "owner  alice", "team   ops"]
    ws.remove_tag("tagged", "team")
    assert ws.list_tags("tagged") == {"owner": "alice"}
    with pytest.raises(auto.errors.CommandError, match="stack tag 'team' not found for stack 'tagged'"):
        ws.get_tag("tagged", "team")


def test_stack_ls_json_fields_as_the_file_backend_reports_them(standin_env, pulumi_command):
    fresh = open_stack(pulumi_command, "fresh")
    deployed = open_stack(pulumi_command, "deployed")
    deployed.up()
    listed = json.loads(ok(deployed.workspace.work_dir, "stack", "ls", "--json"))
    assert listed[0] == {"name": "deployed", "current": True, "lastUpdate": listed[0]["lastUpdate"], "resourceCount": 3}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z", listed[0]["lastUpdate"])
    # Never deployed: no last update and no resource count; the file backend reports no progress.
    assert listed[1] == {"name": "fresh", "current": False}
    summaries = {summary.name: summary for summary in fresh.workspace.list_stacks()}
    assert summaries["fresh"].resource_count is None and summaries["fresh"].last_update is None
    assert summaries["deployed"].resource_count == 3 and summaries["deployed"].last_update is not None

    # Another project's stacks show up with --all, by their fully qualified name.
    auto.create_or_select_stack(
        stack_name="elsewhere", project_name="other-project", program=program,
        opts=auto.LocalWorkspaceOptions(pulumi_command=pulumi_command),
    )  # fmt: skip
    assert [summary.name for summary in fresh.workspace.list_stacks()] == ["deployed", "fresh"]
    everything = [summary.name for summary in fresh.workspace.list_stacks(include_all=True)]
    assert everything == ["deployed", "fresh", "organization/other-project/elsewhere"]
    # --tag name[=value] filters.
    fresh.set_tag("tier", "gold")
    work_dir = fresh.workspace.work_dir
    assert [entry["name"] for entry in json.loads(ok(work_dir, "stack", "ls", "--json", "--tag", "tier"))] == ["fresh"]
    assert json.loads(ok(work_dir, "stack", "ls", "--json", "--tag", "tier=silver")) == []


def test_export_and_import_round_trip_keeps_secrets(standin_env, pulumi_command, tmp_path):
    stack = open_stack(pulumi_command, "exported")
    work_dir = stack.workspace.work_dir
    stack.up()
    exported = stack.export_stack()  # `stack export --show-secrets`
    plaintexts = [
        resource["outputs"]["token"].get("plaintext")
        for resource in exported.deployment["resources"]
        if resource["type"] == "pulumi:pulumi:Stack"
    ]
    assert plaintexts == ['"s3cr3t"']  # a --show-secrets export holds the secret's JSON in plaintext
    encrypted = tmp_path / "encrypted.json"
    ok(work_dir, "stack", "export", "--file", str(encrypted))
    assert "s3cr3t" not in encrypted.read_text() and "ciphertext" in encrypted.read_text()

    stack.destroy()
    assert stack.outputs() == {}
    stack.import_stack(exported)
    assert (stack.outputs()["token"].value, stack.outputs()["token"].secret) == ("s3cr3t", True)
    state = ok(work_dir, "stack", "export")
    assert "s3cr3t" not in state and "ciphertext" in state  # encrypted again at rest
    assert stack.export_stack().deployment["resources"] == exported.deployment["resources"]
    # The encrypted export imports as well, and the stack updates in place from it.
    ok(work_dir, "stack", "import", "--file", str(encrypted))
    assert stack.outputs()["token"].value == "s3cr3t"
    assert stack.up().summary.resource_changes == {"same": 3}


def test_import_of_another_stacks_state_needs_force(standin_env, pulumi_command, tmp_path):
    source = open_stack(pulumi_command, "origin")
    source.up()
    exported = tmp_path / "origin.json"
    ok(source.workspace.work_dir, "stack", "export", "--file", str(exported))
    target = open_stack(pulumi_command, "copy-target")
    with pytest.raises(auto.errors.CommandError) as refused:
        target.import_stack(source.export_stack())
    stderr = str(refused.value)
    assert "errors occurred:" in stderr and "is from a different stack (origin != copy-target)" in stderr
    assert "importing this file could be dangerous; rerun with --force to proceed anyway" in stderr
    assert target.outputs() == {}

    forced = cli(target.workspace.work_dir, "stack", "import", "--force", "--file", str(exported))
    assert forced.returncode == 0 and forced.stdout.strip() == "Import complete."
    assert forced.stderr.count("warning: resource 'urn:pulumi:origin::") == 3
    # Secrets encrypted with the other stack's key are opened with it and sealed with this one's.
    assert target.outputs()["token"].value == "s3cr3t"


# --- whoami and about ------------------------------------------------------------------------------


def test_whoami_and_about_work_outside_a_project_directory(standin_env, pulumi_command, tmp_path):
    empty = tmp_path / "not-a-project"
    empty.mkdir()
    ws = auto.LocalWorkspace(work_dir=str(empty), pulumi_command=pulumi_command)
    who = ws.who_am_i()
    # The file backend's user has no organizations: the CLI omits the field.
    assert who.user and who.url == standin_env["PULUMI_BACKEND_URL"] and who.organizations is None
    assert json.loads(ok(empty, "whoami", "--json")) == {"user": who.user, "url": standin_env["PULUMI_BACKEND_URL"]}

    about = json.loads(ok(empty, "about", "--json"))
    assert about["cliAbout"]["version"] == str(pulumi_command.version)
    assert about["backend"]["url"] == standin_env["PULUMI_BACKEND_URL"]
    assert about["currentStack"] is None
    assert any(error.startswith("Failed to read project: no Pulumi.yaml project file found") for error in about["errors"])

    stack = open_stack(pulumi_command, "about")
    stack.up()
    inside = json.loads(ok(stack.workspace.work_dir, "about", "--json"))
    assert inside["currentStack"]["name"] == "about"
    assert inside["currentStack"]["fullyQualifiedName"] == f"organization/{PROJECT}/about"
    assert len(inside["currentStack"]["resources"]) == 3 and inside["errors"] == []


# --- human output ----------------------------------------------------------------------------------


def test_human_output_has_the_cli_columns_and_headings(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "human")
    work_dir = stack.workspace.work_dir
    stack.set_config("greeting", auto.ConfigValue("hey"))
    stack.set_config("aws:region", auto.ConfigValue("eu-west-1"))
    stack.set_config("token", auto.ConfigValue("t0ken", secret=True))

    assert ok(work_dir, "stack", "history").strip() == "Stack has never been updated"
    assert ok(work_dir, "stack", "ls").splitlines() == ["NAME    LAST UPDATE  RESOURCE COUNT", "human*  n/a          n/a"]
    stack.up(message="first")

    assert ok(work_dir, "config").splitlines() == [
        "KEY         VALUE",
        "aws:region  eu-west-1",
        "greeting    hey",
        "token       [secret]",
    ]
    header, row = ok(work_dir, "stack", "ls").splitlines()
    assert re.fullmatch(r"NAME    LAST UPDATE +RESOURCE COUNT", header)
    listed = re.fullmatch(r"human\*  (now|\d+ seconds? ago) +(3)", row)
    assert listed
    assert header.index("RESOURCE COUNT") == listed.start(2)  # columns aligned

    assert ok(work_dir, "stack", "output").splitlines() == [
        "Current stack outputs (4):",
        "    OUTPUT    VALUE",
        "    greeting  hey",
        f"    key_name  {stack.outputs()['key_name'].value}",
        "    sizes     [1,2]",
        "    token     [secret]",
    ]
    assert ok(work_dir, "stack", "output", "sizes").strip() == "[1,2]"
    assert ok(work_dir, "stack", "output", "token", "--show-secrets").strip() == "s3cr3t"

    shown = ok(work_dir, "stack", "--show-urns").splitlines()
    assert shown[:2] == ["Current stack is human:", f"    Managed by {socket.gethostname()}"]
    assert re.fullmatch(r"    Last updated: (now|\d+ seconds? ago) \(\d{4}-\d\d-\d\d [\d:.]+ \+0000 UTC\)", shown[2])
    assert shown[3] == f"    Pulumi version used: v{pulumi_command.version}"
    provider = next(line for line in shown if "pulumi:providers:aws" in line).split()[-1]
    assert shown[4:11] == [
        "Current stack resources (3):",
        "    TYPE                        NAME",
        f"    pulumi:pulumi:Stack         {PROJECT}-human",
        f"    │  URN: urn:pulumi:human::{PROJECT}::pulumi:pulumi:Stack::{PROJECT}-human",
        "    ├─ aws:ec2/keyPair:KeyPair  deployer",
        f"    │     URN: urn:pulumi:human::{PROJECT}::aws:ec2/keyPair:KeyPair::deployer",
        f"    └─ pulumi:providers:aws     {provider}",
    ]
    assert shown[-1] == "Use `pulumi stack select` to change stack; `pulumi stack ls` lists known ones"
    assert ok(work_dir, "stack", "--show-name").strip() == "human"

    history = ok(work_dir, "stack", "history").splitlines()
    assert history[:4] == ["Version: 1", "UpdateKind: update", "Status: succeeded", "Message: first"]
    assert re.fullmatch(r"\+3-0~0 0 Updated (now|\d+ seconds? ago) took \d+s", history[4]), history
    assert "    exec.kind: auto.inline" in history


def test_config_set_types_stdin_and_exclusive_flags(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "typed")
    work_dir = Path(stack.workspace.work_dir)
    ok(work_dir, "config", "set", "--type", "int", "port", "8080")
    ok(work_dir, "config", "set", "--type", "bool", "debug", "true")
    assert cli(work_dir, "config", "set", "motd", stdin="hello\n").returncode == 0  # one newline dropped
    ok(work_dir, "config", "set", "greeting", "hi")  # a later write keeps the others' types
    settings = yaml.safe_load((work_dir / "Pulumi.typed.yaml").read_text())["config"]
    assert settings[f"{PROJECT}:port"] == 8080 and settings[f"{PROJECT}:debug"] is True
    assert settings[f"{PROJECT}:motd"] == "hello"
    assert stack.get_config("port").value == "8080" and stack.get_config("debug").value == "true"

    both = cli(work_dir, "config", "set", "--secret", "--plaintext", "k", "v")
    assert both.returncode == 1 and both.stderr.strip() == (
        "error: if any flags in the group [secret plaintext type] are set none of the others can be; "
        "[plaintext secret] were all set"
    )
    bad = cli(work_dir, "config", "set", "--type", "decimal", "k", "1")
    assert bad.returncode == 1
    assert bad.stderr.strip() == 'error: invalid type "decimal"; must be one of string, int, bool, or float'
