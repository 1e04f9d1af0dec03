"""Each cloud's instance and snapshot programs through the Automation API and the Pulumi CLI stand-in."""

from __future__ import annotations

import json
import runpy

import pytest
from pulumi import automation as auto

from stacks import instance_program, snapshot_program
from stacks.spec import parse_instance, parse_snapshot
from tests.conftest import REPO, STANDIN_ROOT
from tests.test_spec import instance_document, public_key

ADMIN_KEY = public_key("ed25519", "orch-admin")
CONTRACT = {"instance_id", "public_ip", "private_ip", "ssh_user", "image_id", "region", "zone", "cloud"}

INSTANCE_TYPES = {
    "aws": {
        "aws:ec2/keyPair:KeyPair",
        "aws:ec2/securityGroup:SecurityGroup",
        "aws:ec2/instance:Instance",
        "aws:ec2transitgateway/instanceState:InstanceState",  # the power state (docs/lifecycle.md)
    },
    "gcp": {"gcp:compute/firewall:Firewall", "gcp:compute/disk:Disk", "gcp:compute/instance:Instance"},
    "azure": {
        "azure-native:resources:ResourceGroup",
        "azure-native:network:VirtualNetwork",
        "azure-native:network:Subnet",
        "azure-native:network:NetworkSecurityGroup",
        "azure-native:network:PublicIPAddress",
        "azure-native:network:NetworkInterface",
        "azure-native:compute:VirtualMachine",
        "pulumi-python:dynamic/azure:VirtualMachinePowerState",  # the power state (docs/lifecycle.md)
    },
    "docker": {"docker:index/remoteImage:RemoteImage", "docker:index/container:Container"},
}
SNAPSHOT_TYPES = {
    "aws": {"aws:ec2/amiFromInstance:AmiFromInstance"},
    "gcp": {"gcp:compute/snapshot:Snapshot", "gcp:compute/image:Image"},
    "azure": {"azure-native:resources:ResourceGroup", "azure-native:compute:Snapshot", "azure-native:compute:Image"},
    "docker": {"pulumi-python:dynamic:Resource"},
}


@pytest.fixture
def make_stack(standin_env, tmp_path):
    """Create (or select) a stack in project `orch` on the stand-in, with a temp file backend."""
    work_dir = tmp_path / "project"
    work_dir.mkdir()
    options = auto.LocalWorkspaceOptions(
        work_dir=str(work_dir),
        pulumi_command=auto.PulumiCommand(root=str(STANDIN_ROOT), skip_version_check=True),
    )

    def make(name: str, program) -> auto.Stack:
        return auto.create_or_select_stack(name, project_name="orch", program=program, opts=options)

    return make


def deployed(stack: auto.Stack) -> tuple[set[str], dict]:
    """The resource types (providers and the stack itself left out) and outputs in the stack's export."""
    resources = stack.export_stack().deployment.get("resources") or []
    types = {r["type"] for r in resources if not r["type"].startswith(("pulumi:providers:", "pulumi:pulumi:"))}
    stack_outputs = next((r.get("outputs", {}) for r in resources if r["type"] == "pulumi:pulumi:Stack"), {})
    return types, stack_outputs


def up(stack: auto.Stack) -> dict:
    result = stack.up(color="never")
    assert result.summary.result == "succeeded"
    return {key: output.value for key, output in result.outputs.items()}


def destroy(stack: auto.Stack) -> None:
    stack.destroy(color="never")
    assert stack.export_stack().deployment.get("resources") in (None, [])
    stack.workspace.remove_stack(stack.name)


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure", "docker"])
def test_instance_snapshot_and_instance_from_snapshot(make_stack, cloud):
    instance = parse_instance(instance_document(cloud, name="web-1"))
    instance_stack = make_stack("instance-web-1", instance_program(instance, admin_public_key=ADMIN_KEY))
    outputs = up(instance_stack)
    types, exported = deployed(instance_stack)
    assert types == INSTANCE_TYPES[cloud]
    assert CONTRACT | {"ssh_port", "root_disk_id"} <= set(outputs)
    assert all(outputs[key] for key in CONTRACT), outputs
    assert (outputs["cloud"], outputs["region"]) == (cloud, instance.spec.region)
    assert exported["instance_id"] == outputs["instance_id"]

    snapshot = parse_snapshot({"kind": "Snapshot", "name": "snap-1", "instance": "web-1"})
    snapshot_stack = make_stack("snapshot-snap-1", snapshot_program(snapshot, source=outputs))
    snapshot_outputs = up(snapshot_stack)
    assert deployed(snapshot_stack)[0] == SNAPSHOT_TYPES[cloud]
    assert snapshot_outputs["source_instance_id"] == outputs["instance_id"]
    image_id = snapshot_outputs["image_id"]
    assert image_id and image_id != outputs["image_id"]

    clone = parse_instance(instance_document(cloud, name="web-2", image=None, from_snapshot="snap-1"))
    clone_stack = make_stack(
        "instance-web-2", instance_program(clone, admin_public_key=ADMIN_KEY, base_image_id=image_id)
    )
    clone_outputs = up(clone_stack)
    assert clone_outputs["image_id"] == image_id
    assert deployed(clone_stack)[0] == INSTANCE_TYPES[cloud] - {"docker:index/remoteImage:RemoteImage"}

    # The snapshot outlives its instance; deleting it removes its image.
    destroy(instance_stack)
    destroy(clone_stack)
    destroy(snapshot_stack)


def test_project_program_reads_the_service_config(make_stack, monkeypatch):
    """stacks/__main__.py (what `pulumi up --stack X` runs in the service's project dir) builds the same stack
    from the config the service writes (the document a secret value)."""
    monkeypatch.syspath_prepend(str(REPO))
    instance = parse_instance(instance_document("aws", name="web-3"))
    stack = make_stack("instance-web-3", lambda: runpy.run_path(str(REPO / "stacks" / "__main__.py")))
    stack.set_all_config(
        {
            "orch:kind": auto.ConfigValue("instance"),
            "orch:document": auto.ConfigValue(json.dumps(instance.to_dict(), sort_keys=True), secret=True),
            "orch:admin_public_key": auto.ConfigValue(ADMIN_KEY),
        }
    )
    outputs = up(stack)
    assert deployed(stack)[0] == INSTANCE_TYPES["aws"]
    assert outputs["ssh_user"] == "ubuntu" and outputs["zone"] == "us-east-1a"
    destroy(stack)


def test_labels_reach_resources_the_stand_in_can_fail(make_stack):
    """A `standin-fail` label fails the instance resource: the update fails and says which resource."""
    instance = parse_instance(instance_document("docker", name="web-4", labels={"standin-fail": "create"}))
    stack = make_stack("instance-web-4", instance_program(instance, admin_public_key=ADMIN_KEY))
    with pytest.raises(auto.errors.CommandError, match=r"docker:index/container:Container \(web-4\) failed"):
        stack.up(color="never")
    destroy(stack)
