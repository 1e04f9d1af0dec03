"""The Pulumi CLI stand-in, driven through the real Automation API (`pulumi.automation`)."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_azure_native as azure_native
import pulumi_docker as docker
import pulumi_gcp as gcp
import pytest
from pulumi import automation as auto

from tests.conftest import STANDIN_ROOT
from tests.pulumi_standin import tamper

PROJECT = "standin-test"


@pytest.fixture(scope="module")
def pulumi_command() -> auto.PulumiCommand:
    # The SDK's own version check runs against what the stand-in reports.
    return auto.PulumiCommand(root=str(STANDIN_ROOT), skip_version_check=False)


def open_stack(pulumi_command, name: str, program, env_vars: dict | None = None, *, project: str = PROJECT) -> auto.Stack:
    return auto.create_or_select_stack(
        stack_name=name,
        project_name=project,
        program=program,
        opts=auto.LocalWorkspaceOptions(pulumi_command=pulumi_command, env_vars=env_vars or {}),
    )


def resources_by_type(stack: auto.Stack) -> dict[str, list[dict]]:
    by_type: dict[str, list[dict]] = {}
    for resource in stack.export_stack().deployment.get("resources") or []:
        by_type.setdefault(resource["type"], []).append(resource)
    return by_type


def backend_dir(standin_env: dict) -> Path:
    return Path(standin_env["PULUMI_BACKEND_URL"][len("file://") :])


def multi_cloud_program() -> None:
    ami = aws.ec2.get_ami(most_recent=True, owners=["099720109477"], filters=[{"name": "name", "values": ["ubuntu*"]}])
    group = aws.ec2.SecurityGroup(
        "ssh",
        description="ssh",
        ingress=[{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]}],
    )
    key = aws.ec2.KeyPair("admin", public_key="ssh-ed25519 AAAA test")
    instance = aws.ec2.Instance(
        "vm",
        ami=ami.id,
        instance_type="t3.micro",
        key_name=key.key_name,
        vpc_security_group_ids=[group.id],
        root_block_device={"volume_size": 20},
    )
    image = gcp.compute.get_image(family="ubuntu-2204-lts", project="ubuntu-os-cloud")
    gcp.compute.Firewall("ssh", network="default", allows=[{"protocol": "tcp", "ports": ["22"]}])
    gcp_vm = gcp.compute.Instance(
        "vm",
        machine_type="e2-small",
        zone="us-central1-a",
        boot_disk={"initialize_params": {"image": image.self_link}},
        network_interfaces=[{"network": "default", "access_configs": [{}]}],
    )
    group_rg = azure_native.resources.ResourceGroup("rg")
    vnet = azure_native.network.VirtualNetwork(
        "vnet", resource_group_name=group_rg.name, address_space={"address_prefixes": ["10.0.0.0/16"]}
    )
    subnet = azure_native.network.Subnet(
        "subnet", resource_group_name=group_rg.name, virtual_network_name=vnet.name, address_prefix="10.0.1.0/24"
    )
    public_ip = azure_native.network.PublicIPAddress("ip", resource_group_name=group_rg.name)
    nsg = azure_native.network.NetworkSecurityGroup("nsg", resource_group_name=group_rg.name)
    nic = azure_native.network.NetworkInterface(
        "nic",
        resource_group_name=group_rg.name,
        network_security_group={"id": nsg.id},
        ip_configurations=[{"name": "primary", "subnet": {"id": subnet.id}, "public_ip_address": {"id": public_ip.id}}],
    )
    azure_vm = azure_native.compute.VirtualMachine(
        "vm",
        resource_group_name=group_rg.name,
        network_profile={"network_interfaces": [{"id": nic.id}]},
        hardware_profile={"vm_size": "Standard_B1s"},
    )
    pulumi.export("aws_instance_id", instance.id)
    pulumi.export("aws_public_ip", instance.public_ip)
    pulumi.export("aws_image_id", ami.id)
    pulumi.export("aws_root_volume", instance.root_block_device.volume_id)
    pulumi.export("gcp_nat_ip", gcp_vm.network_interfaces[0].access_configs[0].nat_ip)
    pulumi.export("gcp_private_ip", gcp_vm.network_interfaces[0].network_ip)
    pulumi.export("gcp_instance_id", gcp_vm.instance_id)
    pulumi.export("azure_public_ip", public_ip.ip_address)
    pulumi.export("azure_private_ip", nic.ip_configurations[0].private_ip_address)
    pulumi.export("azure_vm_id", azure_vm.vm_id)
    pulumi.export("azure_os_disk", azure_vm.storage_profile.os_disk.managed_disk.id)


# 12 resources, the stack, and a default provider for each of aws, gcp and azure-native.
MULTI_CLOUD_STATE_SIZE = 12 + 1 + 3


def test_multi_cloud_lifecycle(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "multi", multi_cloud_program)

    up = stack.up()
    assert up.summary.result == "succeeded"
    assert up.summary.resource_changes == {"create": MULTI_CLOUD_STATE_SIZE}
    outputs = {key: value.value for key, value in up.outputs.items()}
    assert outputs["aws_instance_id"].startswith("i-")
    assert outputs["aws_image_id"].startswith("ami-")
    assert outputs["aws_root_volume"].startswith("vol-")
    for key in ("aws_public_ip", "gcp_nat_ip", "azure_public_ip"):
        assert outputs[key].startswith("203.0.113."), key
    for key in ("gcp_private_ip", "azure_private_ip"):
        assert outputs[key].startswith("10.0."), key
    assert outputs["gcp_instance_id"].isdigit()
    assert outputs["azure_os_disk"].startswith("/subscriptions/")

    by_type = resources_by_type(stack)
    for type_token in (
        "pulumi:pulumi:Stack",
        "pulumi:providers:aws",
        "pulumi:providers:gcp",
        "pulumi:providers:azure-native",
        "aws:ec2/instance:Instance",
        "gcp:compute/instance:Instance",
        "azure-native:compute:VirtualMachine",
    ):
        assert type_token in by_type, type_token
    aws_instance = by_type["aws:ec2/instance:Instance"][0]
    assert aws_instance["id"] == outputs["aws_instance_id"]
    assert aws_instance["provider"].startswith("urn:pulumi:multi::standin-test::pulumi:providers:aws::")
    assert by_type["aws:ec2/securityGroup:SecurityGroup"][0]["urn"] in aws_instance["dependencies"]
    assert aws_instance["inputs"]["instanceType"] == "t3.micro"
    assert aws_instance["outputs"]["publicIp"] == outputs["aws_public_ip"]
    assert by_type["pulumi:pulumi:Stack"][0]["outputs"]["aws_instance_id"] == outputs["aws_instance_id"]

    # Deterministic: a second up changes nothing and reports the same outputs.
    assert stack.preview().change_summary == {"same": MULTI_CLOUD_STATE_SIZE}
    again = stack.up()
    assert again.summary.resource_changes == {"same": MULTI_CLOUD_STATE_SIZE}
    assert {key: value.value for key, value in again.outputs.items()} == outputs
    assert stack.refresh().summary.resource_changes == {"same": MULTI_CLOUD_STATE_SIZE}
    assert [summary.kind for summary in stack.history()] == ["refresh", "update", "update"]

    [summary] = [s for s in stack.workspace.list_stacks() if s.name == "multi"]
    assert summary.resource_count == MULTI_CLOUD_STATE_SIZE and summary.current

    destroy = stack.destroy()
    assert destroy.summary.resource_changes == {"delete": MULTI_CLOUD_STATE_SIZE}
    assert resources_by_type(stack) == {}
    assert stack.outputs() == {}
    stack.workspace.remove_stack("multi")
    assert "multi" not in [s.name for s in stack.workspace.list_stacks()]


def web_program(instance_type: str, with_key_pair: bool):
    def program() -> None:
        group = aws.ec2.SecurityGroup("web", description="web")
        if with_key_pair:
            aws.ec2.KeyPair("deployer", public_key="ssh-ed25519 AAAA deployer")
        instance = aws.ec2.Instance(
            "web", ami="ami-0abc", instance_type=instance_type, vpc_security_group_ids=[group.id]
        )
        pulumi.export("instance_id", instance.id)

    return program


def test_update_changes_only_the_changed_resource_and_deletes_removed_ones(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "update", web_program("t3.micro", with_key_pair=True))
    first = stack.up()
    assert first.summary.resource_changes == {"create": 5}

    preview = stack.preview(program=web_program("t3.large", with_key_pair=False))
    assert preview.change_summary == {"update": 1, "delete": 1, "same": 3}
    assert resources_by_type(stack)["aws:ec2/instance:Instance"][0]["inputs"]["instanceType"] == "t3.micro"

    events: list[auto.EngineEvent] = []
    second = stack.up(program=web_program("t3.large", with_key_pair=False), on_event=events.append)
    assert second.summary.resource_changes == {"update": 1, "delete": 1, "same": 3}
    pre_events = [event.resource_pre_event.metadata for event in events if event.resource_pre_event]
    steps = {(step.type, step.urn.rsplit("::", 1)[-1]): step for step in pre_events}
    instance_step = steps[("aws:ec2/instance:Instance", "web")]
    assert instance_step.op == auto.OpType.UPDATE and instance_step.diffs == ["instanceType"]
    assert steps[("aws:ec2/securityGroup:SecurityGroup", "web")].op == auto.OpType.SAME
    assert steps[("aws:ec2/keyPair:KeyPair", "deployer")].op == auto.OpType.DELETE
    assert [e.summary_event.resource_changes for e in events if e.summary_event] == [
        {"update": 1, "delete": 1, "same": 3}
    ]

    by_type = resources_by_type(stack)
    assert "aws:ec2/keyPair:KeyPair" not in by_type
    [instance] = by_type["aws:ec2/instance:Instance"]
    assert instance["inputs"]["instanceType"] == "t3.large"
    assert instance["id"] == first.outputs["instance_id"].value  # updated in place, not replaced


def test_preview_only_destroy_writes_engine_events_to_a_file(standin_env, pulumi_command, tmp_path):
    stack = open_stack(pulumi_command, "events", web_program("t3.micro", with_key_pair=False))
    stack.up()
    event_log = tmp_path / "events.jsonl"
    subprocess.run(
        [pulumi_command.command, "destroy", "--preview-only", "--stack", "events", "--event-log", str(event_log)],
        cwd=stack.workspace.work_dir,
        check=True,
        capture_output=True,
    )
    events = [json.loads(line) for line in event_log.read_text().splitlines()]
    assert [e["summaryEvent"]["resourceChanges"] for e in events if "summaryEvent" in e] == [{"delete": 4}]
    assert "cancelEvent" in events[-1]
    assert len(resources_by_type(stack)) == 4  # a preview changes nothing


def test_two_stacks_up_in_parallel_from_two_threads(standin_env, pulumi_command):
    results: dict[str, auto.UpResult] = {}
    errors: list[BaseException] = []

    def run(name: str, instance_type: str) -> None:
        try:
            results[name] = open_stack(pulumi_command, name, web_program(instance_type, with_key_pair=True)).up()
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [
        threading.Thread(target=run, args=(f"parallel-{i}", f"t3.{size}")) for i, size in enumerate(("micro", "large"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert {name: result.summary.resource_changes for name, result in results.items()} == {
        "parallel-0": {"create": 5},
        "parallel-1": {"create": 5},
    }
    assert results["parallel-0"].outputs["instance_id"].value != results["parallel-1"].outputs["instance_id"].value


def lock_dir(standin_env: dict, stack: str, project: str = PROJECT) -> Path:
    return backend_dir(standin_env) / ".pulumi" / "locks" / "organization" / project / stack


def write_lock(standin_env: dict, stack: str, pid: int, project: str = PROJECT) -> Path:
    """A lock file on the stack as `pid` on this host would hold it."""
    directory = lock_dir(standin_env, stack, project)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "held-by-test.json"
    lock = {"pid": pid, "username": "test", "hostname": socket.gethostname(), "timestamp": "2024-01-01T00:00:00Z"}
    path.write_text(json.dumps(lock))
    return path


def test_up_on_a_locked_stack_raises_concurrent_update_error(standin_env, pulumi_command):
    program = web_program("t3.micro", with_key_pair=False)
    slow = open_stack(pulumi_command, "locked", program, env_vars={"PULUMI_STANDIN_LATENCY_MS": "1500"})
    outcome: list[object] = []
    running = threading.Thread(target=lambda: outcome.append(slow.up()))
    running.start()
    deadline = time.monotonic() + 30
    while not any(lock_dir(standin_env, "locked").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)

    with pytest.raises(auto.ConcurrentUpdateError) as raised:
        open_stack(pulumi_command, "locked", program).up()
    assert "currently locked" in str(raised.value)

    running.join(timeout=60)
    assert isinstance(outcome[0], auto.UpResult)
    assert not any(lock_dir(standin_env, "locked").glob("*.json"))


def test_lock_of_a_dead_process_is_taken_over_and_cancel_removes_a_live_one(standin_env, pulumi_command):
    program = web_program("t3.micro", with_key_pair=False)
    stack = open_stack(pulumi_command, "stale", program)

    finished = subprocess.Popen(["true"])
    finished.wait()
    write_lock(standin_env, "stale", finished.pid)
    assert stack.up().summary.result == "succeeded"

    write_lock(standin_env, "stale", os.getpid())  # held by a live process: this one
    with pytest.raises(auto.ConcurrentUpdateError):
        stack.up()
    stack.cancel()
    assert stack.up().summary.resource_changes == {"same": 4}


def failing_program(instance_tags: dict):
    def program() -> None:
        group = aws.ec2.SecurityGroup("base", description="created before the instance")
        aws.ec2.Instance(
            "doomed-web",
            ami="ami-0abc",
            instance_type="t3.micro",
            vpc_security_group_ids=[group.id],
            tags=instance_tags,
        )

    return program


def test_failure_injected_by_env_var_keeps_earlier_resources_for_destroy(standin_env, pulumi_command, monkeypatch):
    monkeypatch.setenv("PULUMI_STANDIN_FAIL", "aws:ec2/instance:Instance:doomed")
    stack = open_stack(pulumi_command, "fail-env", failing_program({}))

    with pytest.raises(auto.CommandError) as raised:
        stack.up()
    assert "aws:ec2/instance:Instance" in raised.value.args[0]
    assert "urn:pulumi:fail-env::standin-test::aws:ec2/instance:Instance::doomed-web" in raised.value.args[0]
    by_type = resources_by_type(stack)
    assert "aws:ec2/securityGroup:SecurityGroup" in by_type
    assert "aws:ec2/instance:Instance" not in by_type
    assert stack.history()[0].result == "failed"

    # The rollback: destroy removes what was created (deletes are not failed by the env var).
    assert stack.destroy().summary.resource_changes == {"delete": 3}
    assert resources_by_type(stack) == {}


def test_failure_injected_by_tag_fails_the_named_operation(standin_env, pulumi_command):
    stack = open_stack(pulumi_command, "fail-tag", failing_program({"standin-fail": "create"}))
    with pytest.raises(auto.CommandError) as raised:
        stack.up()
    assert "doomed-web" in raised.value.args[0] and "creating" in raised.value.args[0]

    # A `delete` tag lets the instance be created and updated, but not deleted.
    stack.up(program=failing_program({"standin-fail": "delete"}))
    with pytest.raises(auto.CommandError) as raised:
        stack.up(program=failing_program({"standin-fail": "update"}))
    assert "updating" in raised.value.args[0]
    [instance] = resources_by_type(stack)["aws:ec2/instance:Instance"]
    assert instance["inputs"]["tags"] == {"standin-fail": "delete"}  # the failed update changed nothing
    with pytest.raises(auto.CommandError) as raised:
        stack.destroy()
    assert "deleting aws:ec2/instance:Instance (doomed-web)" in raised.value.args[0]
    assert "aws:ec2/instance:Instance" in resources_by_type(stack)

    stack.up(program=failing_program({}))
    stack.destroy()
    assert resources_by_type(stack) == {}


def chain_program() -> None:
    first = aws.ec2.SecurityGroup("first", description="first")
    aws.ec2.SecurityGroup("second", description=first.id)  # depends on the first: created after it


def test_latency_injection_slows_each_resource_operation(standin_env, pulumi_command):
    slow = open_stack(pulumi_command, "slow", chain_program, env_vars={"PULUMI_STANDIN_LATENCY_MS": "1000"})
    slow.up()
    # The times the stand-in recorded, not this test's clock around the whole run: "second" is created
    # after "first" (it depends on it), each create taking the delay; a loaded machine only adds to that.
    created = {
        resource["urn"].rsplit("::", 1)[1]: dt.datetime.fromisoformat(resource["created"])
        for resource in resources_by_type(slow)["aws:ec2/securityGroup:SecurityGroup"]
    }
    assert (created["second"] - created["first"]).total_seconds() >= 1.0, created


def test_public_ip_and_ssh_port_overrides_are_reported(standin_env, pulumi_command, monkeypatch):
    monkeypatch.setenv("PULUMI_STANDIN_PUBLIC_IP", "127.0.0.1")
    monkeypatch.setenv("PULUMI_STANDIN_SSH_PORT", "2222")

    def program() -> None:
        instance = aws.ec2.Instance("vm", ami="ami-0abc", instance_type="t3.micro")
        image = docker.RemoteImage("ubuntu", name="ubuntu:22.04")
        container = docker.Container("box", image=image.image_id, ports=[{"internal": 22}])
        pulumi.export("aws_public_ip", instance.public_ip)
        pulumi.export("docker_address", container.network_datas[0].ip_address)
        pulumi.export("docker_ssh_port", container.ports[0].external)

    outputs = open_stack(pulumi_command, "overrides", program).up().outputs
    assert outputs["aws_public_ip"].value == "127.0.0.1"
    assert outputs["docker_address"].value == "127.0.0.1"
    assert outputs["docker_ssh_port"].value == 2222


def test_secrets_are_encrypted_at_rest_and_shown_with_show_secrets(standin_env, pulumi_command):
    def program() -> None:
        config = pulumi.Config()
        pulumi.export("token", config.require_secret("token"))
        pulumi.export("kind", config.require("kind"))

    stack = open_stack(pulumi_command, "secrets", program)
    stack.set_all_config({"kind": auto.ConfigValue("instance"), "token": auto.ConfigValue("hunter2", secret=True)})
    assert stack.get_config("token").value == "hunter2"

    outputs = stack.up().outputs
    assert outputs["token"].secret and outputs["token"].value == "hunter2"
    assert not outputs["kind"].secret and outputs["kind"].value == "instance"
    stack_outputs = next(r for r in stack.export_stack().deployment["resources"] if r["type"] == "pulumi:pulumi:Stack")[
        "outputs"
    ]
    assert json.loads(stack_outputs["token"]["plaintext"]) == "hunter2"

    checkpoint = backend_dir(standin_env) / ".pulumi" / "stacks" / PROJECT / "secrets.json"
    config_file = Path(stack.workspace.work_dir) / "Pulumi.secrets.yaml"
    assert "hunter2" not in checkpoint.read_text()
    assert "hunter2" not in config_file.read_text()
    assert "ciphertext" in checkpoint.read_text()


class EchoProvider(pulumi.dynamic.ResourceProvider):
    def create(self, props):
        return pulumi.dynamic.CreateResult(id_="echo", outs=props)


class Echo(pulumi.dynamic.Resource):
    def __init__(self, name: str, props: dict) -> None:
        super().__init__(EchoProvider(), name, props)


def test_refresh_rereads_the_simulated_cloud_and_reads_existing_resources(standin_env, pulumi_command, monkeypatch):
    def program() -> None:
        aws.ec2.Instance("vm", ami="ami-0abc", instance_type="t3.micro")
        existing = aws.ec2.SecurityGroup.get("existing", "sg-0123456789abcdef0")
        Echo("echo", {"message": "hello"})
        pulumi.export("existing_arn", existing.arn)

    stack = open_stack(pulumi_command, "refresh", program)
    up = stack.up()
    assert up.outputs["existing_arn"].value.endswith(":security-group/sg-0123456789abcdef0")
    by_type = resources_by_type(stack)
    [read] = by_type["aws:ec2/securityGroup:SecurityGroup"]
    assert read["id"] == "sg-0123456789abcdef0" and read["external"] is True
    [echo] = by_type["pulumi-python:dynamic:Resource"]
    assert echo["id"] and echo["outputs"]["message"] == "hello"

    monkeypatch.setenv("PULUMI_STANDIN_PUBLIC_IP", "192.0.2.10")  # the cloud now reports another address
    # Only an output changed: the refresh diffs against the desired state (the inputs), so it is a
    # `same`, and the state takes the new outputs all the same (as the engine's RefreshStep).
    changes = stack.refresh().summary.resource_changes
    assert set(changes) == {"same"}
    [instance] = resources_by_type(stack)["aws:ec2/instance:Instance"]
    assert instance["outputs"]["publicIp"] == "192.0.2.10"


def test_refresh_reports_what_was_changed_or_deleted_behind_the_stacks_back(standin_env, pulumi_command, capsys):
    """`tamper` (tamper.py): the refresh's engine events are the engine's for RefreshSteps."""

    def program() -> None:
        vm = aws.ec2.Instance("vm", ami="ami-0abc", instance_type="t3.micro")
        aws.ec2.SecurityGroup("vm", description="web")
        aws.ec2transitgateway.InstanceState("vm", instance_id=vm.id, state="running")

    stack = open_stack(pulumi_command, "tampered", program)
    stack.up()
    assert tamper.main(["--stack", "tampered", "--resource", "vm", "--delete"]) == 2
    assert "pick one with --type" in capsys.readouterr().err
    for change in (["--set", "instanceType=t3.large"], ["--stop"]):
        assert tamper.main(["--stack", "tampered", "--resource", "vm", "--type", "aws:ec2/instance:Instance", *change]) == 0
    assert tamper.main(["--stack", "tampered", "--resource", "vm", "--type", "aws:ec2/securityGroup:SecurityGroup", "--delete"]) == 0

    events: list = []
    result = stack.refresh(on_event=events.append)
    assert result.summary.resource_changes == {"same": 2, "update": 2, "delete": 1}
    pre = [e.resource_pre_event.metadata for e in events if e.resource_pre_event]
    assert {meta.op.value for meta in pre} == {"refresh"}
    outs = {e.res_outputs_event.metadata.type: e.res_outputs_event.metadata for e in events if e.res_outputs_event}
    changed = outs["aws:ec2/instance:Instance"]
    assert changed.op.value == "update" and changed.diffs == ["instanceType"]
    assert changed.detailed_diff["instanceType"].diff_kind.value == "update"
    assert (changed.old.inputs["instanceType"], changed.new.inputs["instanceType"]) == ("t3.micro", "t3.large")
    # Powered off in the console: the machine reads stopped, and its power state resource differs.
    assert (changed.new.outputs["instanceState"], changed.new.outputs["publicIp"]) == ("stopped", "")
    power = outs["aws:ec2transitgateway/instanceState:InstanceState"]
    assert power.op.value == "update" and power.diffs == ["state"] and power.new.inputs["state"] == "stopped"
    deleted = outs["aws:ec2/securityGroup:SecurityGroup"]
    assert deleted.op.value == "delete" and deleted.new is None
    assert "aws:ec2/securityGroup:SecurityGroup" not in resources_by_type(stack)

    # The state now differs from the program: an update puts the type back, starts the machine and
    # creates the group again (and the cloud forgets the tampering).
    assert stack.up().summary.resource_changes == {"same": 2, "update": 2, "create": 1}
    [vm] = resources_by_type(stack)["aws:ec2/instance:Instance"]
    assert vm["inputs"]["instanceType"] == "t3.micro"


def test_program_exception_is_an_inline_source_runtime_error(standin_env, pulumi_command):
    def program() -> None:
        aws.ec2.SecurityGroup("first", description="first")
        raise ValueError("the program is broken")

    stack = open_stack(pulumi_command, "broken", program)
    with pytest.raises(auto.InlineSourceRuntimeError) as raised:
        stack.up()
    assert "the program is broken" in str(raised.value)
    assert stack.history()[0].result == "failed"
