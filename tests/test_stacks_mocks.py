"""Each cloud's programs under `pulumi.runtime.set_mocks`: the inputs that matter and the outputs contract."""

from __future__ import annotations

import asyncio
import base64
import json

import pulumi
import pytest
import yaml

from stacks import instance_program, snapshot_program
from stacks.spec import parse_instance, parse_snapshot
from tests.test_spec import instance_document, public_key

ADMIN_KEY = public_key("ed25519", "orch-admin")
CONTRACT = {"instance_id", "public_ip", "private_ip", "ssh_user", "image_id", "region", "zone", "cloud"}
EXTRA_OUTPUTS = {"ssh_port", "root_disk_id", "labels"}
CIDRS = ["203.0.113.0/24", "198.51.100.7/32"]


class RecordingMocks(pulumi.runtime.Mocks):
    """Records every resource and answers with the outputs a cloud would compute."""

    def __init__(self):
        self.resources: dict[str, list[dict]] = {}
        self.providers: dict[str, dict] = {}
        self.calls: list[pulumi.runtime.MockCallArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        inputs = dict(args.inputs)
        if args.typ.startswith("pulumi:providers:"):
            self.providers[args.name] = inputs
            return f"{args.name}-provider", inputs
        self.resources.setdefault(args.typ, []).append({"name": args.name, "inputs": inputs, "provider": args.provider})
        resource_id = f"{args.name}-id"
        outputs = dict(inputs)
        if args.typ == "aws:ec2/instance:Instance":
            outputs |= {"publicIp": "198.51.100.10", "privateIp": "10.0.0.10",
                        "rootBlockDevice": {**inputs["rootBlockDevice"], "volumeId": "vol-123"}}
            resource_id = "i-0abc"
        elif args.typ == "aws:ec2/keyPair:KeyPair":
            outputs["keyName"] = f"{args.name}-key"
        elif args.typ == "gcp:compute/disk:Disk":
            resource_id = f"projects/p/zones/{inputs['zone']}/disks/{args.name}"
        elif args.typ == "gcp:compute/instance:Instance":
            interface = inputs["networkInterfaces"][0]
            outputs["networkInterfaces"] = [
                {**interface, "networkIp": "10.1.0.5", "accessConfigs": [{**interface["accessConfigs"][0], "natIp": "198.51.100.20"}]}
            ]
        elif args.typ == "azure-native:network:PublicIPAddress":
            outputs["ipAddress"] = "198.51.100.30"
        elif args.typ == "azure-native:network:NetworkInterface":
            outputs["ipConfigurations"] = [{**inputs["ipConfigurations"][0], "privateIPAddress": "10.0.1.4"}]
        elif args.typ == "azure-native:compute:VirtualMachine":
            profile = inputs["storageProfile"]
            outputs["storageProfile"] = {**profile, "osDisk": {**profile["osDisk"], "managedDisk": {"id": "/subscriptions/s/disks/os"}}}
        elif args.typ == "docker:index/remoteImage:RemoteImage":
            outputs["imageId"] = "sha256:base"
        elif args.typ == "docker:index/container:Container":
            outputs["ports"] = [{**inputs["ports"][0], "external": 32801, "ip": "0.0.0.0"}]
            outputs["networkDatas"] = [{"ipAddress": "172.17.0.3", "networkName": "bridge"}]
        elif args.typ == "pulumi-python:dynamic:Resource":
            resource_id = "sha256:committed"
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append(args)
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-looked-up", "architecture": "x86_64"}
        raise AssertionError(f"unexpected invoke {args.token}")

    def one(self, type_token: str) -> dict:
        (resource,) = self.resources[type_token]
        return resource["inputs"]


def run_program(program, monkeypatch) -> tuple[RecordingMocks, dict]:
    """Run an inline program under mocks; return the mocks and its resolved exports."""
    mocks = RecordingMocks()
    # Pulumi's mocks make futures on the main thread's current event loop, which an earlier
    # asyncio.run() in this process (the benchmarks' load generator) leaves unset.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pulumi.runtime.set_mocks(mocks, project="orch", stack="test", preview=False)
    exported: dict = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.__setitem__(name, value))
    resolved: dict = {}

    @pulumi.runtime.test
    def body():
        program()
        return pulumi.Output.all(**exported).apply(resolved.update)

    body()
    return mocks, resolved


def run_instance(monkeypatch, cloud: str, base_image_id: str | None = None, **spec):
    instance = parse_instance(instance_document(cloud, **spec))
    return run_program(instance_program(instance, admin_public_key=ADMIN_KEY, base_image_id=base_image_id), monkeypatch)


def assert_contract(outputs: dict, cloud: str) -> None:
    assert CONTRACT | EXTRA_OUTPUTS <= set(outputs)
    assert outputs["cloud"] == cloud
    for key in CONTRACT - {"zone"}:
        assert outputs[key], key
    assert outputs["labels"] == {"team": "ml"}


def expected_tags(name: str = "web-1") -> dict:
    return {"team": "ml", "managed-by": "orch", "orch-instance": name}


def cloud_config(user_data: str) -> dict:
    assert user_data.startswith("#cloud-config\n")
    return yaml.safe_load(user_data)


# ---------------------------------------------------------------- AWS


def test_aws_instance(monkeypatch):
    mocks, outputs = run_instance(monkeypatch, "aws", machine_type="g5.2xlarge", disk_gb=120, allowed_ssh_cidrs=CIDRS)
    ec2 = mocks.one("aws:ec2/instance:Instance")
    assert ec2["instanceType"] == "g5.2xlarge"
    assert ec2["ami"] == "ami-looked-up"
    assert ec2["availabilityZone"] == "us-east-1a"
    assert ec2["associatePublicIpAddress"] is True
    assert ec2["rootBlockDevice"]["volumeSize"] == 120
    assert ec2["rootBlockDevice"]["volumeType"] == "gp3"
    assert ec2["tags"] == {**expected_tags(), "Name": "web-1"}
    assert ec2["keyName"] == "web-1-key"
    assert ec2["vpcSecurityGroupIds"] == ["web-1-id"]

    (lookup,) = mocks.calls
    filters = {f["name"]: f["values"] for f in lookup.args["filters"]}
    assert filters["name"] == ["Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"]  # gpu: the DLAMI
    assert filters["architecture"] == ["x86_64"]
    assert lookup.args["owners"] == ["amazon"] and lookup.args["mostRecent"] is True

    group = mocks.one("aws:ec2/securityGroup:SecurityGroup")
    (ingress,) = group["ingress"]
    assert (ingress["protocol"], ingress["fromPort"], ingress["toPort"]) == ("tcp", 22, 22)
    assert ingress["cidrBlocks"] == CIDRS
    assert not ingress.get("ipv6CidrBlocks") and not ingress.get("securityGroups")

    assert mocks.one("aws:ec2/keyPair:KeyPair")["publicKey"] == ADMIN_KEY
    config = cloud_config(ec2["userData"])
    login = config["users"][1]
    assert login["name"] == "ubuntu" and login["ssh_authorized_keys"] == [public_key(), ADMIN_KEY]
    assert config["users"][2]["name"] == "alice" and config["users"][2]["sudo"] == "ALL=(ALL) NOPASSWD:ALL"

    assert mocks.providers["aws-us-east-1"]["region"] == "us-east-1"
    assert all(r["provider"].startswith("urn:") and "aws-us-east-1" in r["provider"] for rs in mocks.resources.values() for r in rs)
    assert_contract(outputs, "aws")
    assert outputs["instance_id"] == "i-0abc"
    assert (outputs["public_ip"], outputs["private_ip"]) == ("198.51.100.10", "10.0.0.10")
    assert (outputs["ssh_user"], outputs["ssh_port"], outputs["root_disk_id"]) == ("ubuntu", 22, "vol-123")
    assert (outputs["region"], outputs["zone"], outputs["image_id"]) == ("us-east-1", "us-east-1a", "ami-looked-up")


def test_aws_graviton_and_debian_lookup(monkeypatch):
    mocks, outputs = run_instance(monkeypatch, "aws", machine_type="m7g.large", image="debian-12")
    filters = {f["name"]: f["values"] for f in mocks.calls[0].args["filters"]}
    assert filters["name"] == ["debian-12-arm64-*"] and filters["architecture"] == ["arm64"]
    assert outputs["ssh_user"] == "admin"


def test_aws_instance_from_snapshot_skips_the_lookup(monkeypatch):
    mocks, outputs = run_instance(monkeypatch, "aws", base_image_id="ami-snap", from_snapshot="snap-1")
    assert mocks.calls == []
    assert mocks.one("aws:ec2/instance:Instance")["ami"] == "ami-snap"
    assert outputs["image_id"] == "ami-snap"


SOURCES = {
    "aws": {"cloud": "aws", "region": "eu-west-1", "zone": "eu-west-1b", "instance_id": "i-0src", "root_disk_id": "vol-9", "labels": {"team": "ml"}},
    "gcp": {"cloud": "gcp", "region": "europe-west4", "zone": "europe-west4-b", "instance_id": "projects/p/zones/europe-west4-b/instances/web-1",
            "root_disk_id": "projects/p/zones/europe-west4-b/disks/web-1", "labels": {"team": "ml"}},
    "azure": {"cloud": "azure", "region": "westeurope", "zone": "2", "instance_id": "/subscriptions/s/vm/web-1",
              "root_disk_id": "/subscriptions/s/disks/os", "labels": {"team": "ml"}},
    "docker": {"cloud": "docker", "region": "local", "zone": "local", "instance_id": "c0ffee", "root_disk_id": "c0ffee", "labels": {"team": "ml"}},
}
SNAPSHOT_TAGS = {"team": "ml", "managed-by": "orch", "orch-snapshot": "snap-1", "orch-source-instance": "web-1"}


def run_snapshot(monkeypatch, cloud: str):
    snapshot = parse_snapshot({"kind": "Snapshot", "name": "snap-1", "instance": "web-1"})
    mocks, outputs = run_program(snapshot_program(snapshot, source=SOURCES[cloud]), monkeypatch)
    assert outputs["source_instance_id"] == SOURCES[cloud]["instance_id"]
    assert outputs["cloud"] == cloud
    return mocks, outputs


def test_aws_snapshot(monkeypatch):
    mocks, outputs = run_snapshot(monkeypatch, "aws")
    ami = mocks.one("aws:ec2/amiFromInstance:AmiFromInstance")
    assert ami["sourceInstanceId"] == "i-0src"
    assert ami["tags"] == {**SNAPSHOT_TAGS, "Name": "snap-1"}
    assert mocks.providers["aws-eu-west-1"]["region"] == "eu-west-1"
    assert outputs["image_id"] == "snap-1-id"


# ---------------------------------------------------------------- GCP


def test_gcp_instance_with_attached_gpu(monkeypatch):
    mocks, outputs = run_instance(
        monkeypatch, "gcp", machine_type="n1-standard-8", gpu={"type": "nvidia-t4", "count": 2}, disk_gb=80, allowed_ssh_cidrs=CIDRS
    )
    disk = mocks.one("gcp:compute/disk:Disk")
    assert disk["size"] == 80 and disk["zone"] == "europe-west4-b"
    assert disk["image"].endswith("/global/images/family/ubuntu-accelerator-2204-amd64-with-nvidia-550")
    vm = mocks.one("gcp:compute/instance:Instance")
    assert vm["machineType"] == "n1-standard-8"
    assert vm["bootDisk"]["source"] == "projects/p/zones/europe-west4-b/disks/web-1"
    assert vm["guestAccelerators"] == [{"type": "nvidia-tesla-t4", "count": 2}]
    assert vm["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert vm["labels"] == expected_tags()
    assert vm["metadata"]["enable-oslogin"] == "FALSE"
    assert vm["metadata"]["ssh-keys"].splitlines() == [f"ubuntu:{public_key()}", f"ubuntu:{ADMIN_KEY}", f"alice:{public_key()}"]
    assert vm["networkInterfaces"][0]["accessConfigs"], "an external IP"

    firewalls = {f["name"]: f["inputs"] for f in mocks.resources["gcp:compute/firewall:Firewall"]}
    allow, deny = firewalls["web-1-ssh"], firewalls["web-1-deny-ingress"]
    assert allow["allows"] == [{"protocol": "tcp", "ports": ["22"]}] and allow["sourceRanges"] == CIDRS
    assert deny["denies"] == [{"protocol": "all"}] and deny["priority"] > allow["priority"]
    assert allow["targetTags"] == deny["targetTags"] == vm["tags"] == ["orch-web-1"]

    provider = mocks.providers["gcp-europe-west4-b"]
    assert (provider["region"], provider["zone"]) == ("europe-west4", "europe-west4-b")
    assert_contract(outputs, "gcp")
    assert (outputs["public_ip"], outputs["private_ip"]) == ("198.51.100.20", "10.1.0.5")
    assert outputs["root_disk_id"] == "projects/p/zones/europe-west4-b/disks/web-1"
    assert outputs["zone"] == "europe-west4-b" and outputs["ssh_port"] == 22


def test_gcp_cpu_instance_has_no_gpu_settings(monkeypatch):
    mocks, _ = run_instance(monkeypatch, "gcp")
    vm = mocks.one("gcp:compute/instance:Instance")
    assert "guestAccelerators" not in vm and "scheduling" not in vm
    assert mocks.one("gcp:compute/disk:Disk")["image"] == "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"


def test_gcp_project_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("GOOGLE_PROJECT", "my-project")
    mocks, _ = run_instance(monkeypatch, "gcp")
    assert mocks.providers["gcp-europe-west4-b"]["project"] == "my-project"


def test_gcp_instance_from_snapshot(monkeypatch):
    mocks, outputs = run_instance(monkeypatch, "gcp", base_image_id="projects/p/global/images/snap-1", from_snapshot="snap-1")
    assert mocks.one("gcp:compute/disk:Disk")["image"] == "projects/p/global/images/snap-1"
    assert outputs["image_id"] == "projects/p/global/images/snap-1"


def test_gcp_snapshot(monkeypatch):
    mocks, outputs = run_snapshot(monkeypatch, "gcp")
    disk_snapshot = mocks.one("gcp:compute/snapshot:Snapshot")
    assert disk_snapshot["sourceDisk"] == SOURCES["gcp"]["root_disk_id"]
    assert disk_snapshot["labels"] == SNAPSHOT_TAGS
    image = mocks.one("gcp:compute/image:Image")
    assert image["sourceSnapshot"] == "snap-1-id" and image["labels"] == SNAPSHOT_TAGS
    assert outputs["image_id"] == "snap-1-id"


# ---------------------------------------------------------------- Azure


def test_azure_instance(monkeypatch):
    mocks, outputs = run_instance(
        monkeypatch, "azure", machine_type="Standard_NC4as_T4_v3", disk_gb=128, allowed_ssh_cidrs=CIDRS
    )
    vm = mocks.one("azure-native:compute:VirtualMachine")
    assert vm["hardwareProfile"] == {"vmSize": "Standard_NC4as_T4_v3"}
    assert vm["storageProfile"]["imageReference"] == {
        "publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204", "version": "latest"
    }
    assert vm["storageProfile"]["osDisk"]["diskSizeGB"] == 128
    assert vm["zones"] == ["2"]
    assert vm["tags"] == expected_tags()
    linux = vm["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert [k["keyData"] for k in linux["ssh"]["publicKeys"]] == [public_key(), ADMIN_KEY]
    assert {k["path"] for k in linux["ssh"]["publicKeys"]} == {"/home/azureuser/.ssh/authorized_keys"}
    assert vm["osProfile"]["adminUsername"] == "azureuser"
    users = cloud_config(base64.b64decode(vm["osProfile"]["customData"]).decode())["users"]
    assert [u if isinstance(u, str) else u["name"] for u in users] == ["default", "azureuser", "alice"]

    (rule,) = mocks.one("azure-native:network:NetworkSecurityGroup")["securityRules"]
    assert (rule["direction"], rule["access"], rule["protocol"]) == ("Inbound", "Allow", "Tcp")
    assert rule["destinationPortRange"] == "22" and rule["sourceAddressPrefixes"] == CIDRS
    nic = mocks.one("azure-native:network:NetworkInterface")
    assert nic["networkSecurityGroup"] == {"id": "web-1-id"}
    assert nic["ipConfigurations"][0]["publicIPAddress"] == {"id": "web-1-id"}
    assert mocks.one("azure-native:resources:ResourceGroup")["location"] == "westeurope"
    assert mocks.one("azure-native:network:PublicIPAddress")["sku"] == {"name": "Standard"}
    assert set(mocks.resources) >= {"azure-native:network:VirtualNetwork", "azure-native:network:Subnet"}

    assert mocks.providers["azure-westeurope"]["location"] == "westeurope"
    assert_contract(outputs, "azure")
    assert (outputs["public_ip"], outputs["private_ip"]) == ("198.51.100.30", "10.0.1.4")
    assert outputs["root_disk_id"] == "/subscriptions/s/disks/os"
    assert outputs["ssh_user"] == "azureuser" and outputs["zone"] == "2"
    power = mocks.one("pulumi-python:dynamic/azure:VirtualMachinePowerState")
    assert (power["vm_id"], power["state"]) == ("web-1-id", "running")


def test_azure_stopped_instance_is_deallocated_by_its_power_state_resource(monkeypatch):
    """azure-native has no power-state property: a dynamic resource deallocates the VM (stacks/azure_power.py)."""
    mocks, outputs = run_instance(monkeypatch, "azure", state="stopped")
    power = mocks.one("pulumi-python:dynamic/azure:VirtualMachinePowerState")
    assert (power["vm_id"], power["state"]) == ("web-1-id", "stopped")
    assert outputs["public_ip"] is None, "a deallocated VM shows no address"


def test_azure_instance_from_snapshot(monkeypatch):
    mocks, outputs = run_instance(monkeypatch, "azure", base_image_id="/subscriptions/s/images/snap-1", from_snapshot="snap-1")
    vm = mocks.one("azure-native:compute:VirtualMachine")
    assert vm["storageProfile"]["imageReference"] == {"id": "/subscriptions/s/images/snap-1"}
    assert outputs["image_id"] == "/subscriptions/s/images/snap-1"


def test_azure_snapshot(monkeypatch):
    mocks, outputs = run_snapshot(monkeypatch, "azure")
    disk_snapshot = mocks.one("azure-native:compute:Snapshot")
    assert disk_snapshot["creationData"] == {"createOption": "Copy", "sourceResourceId": "/subscriptions/s/disks/os"}
    image = mocks.one("azure-native:compute:Image")
    assert image["storageProfile"]["osDisk"]["snapshot"] == {"id": "snap-1-id"}
    assert image["tags"] == SNAPSHOT_TAGS
    # its own resource group: the image outlives the instance's group
    assert mocks.one("azure-native:resources:ResourceGroup")["tags"] == SNAPSHOT_TAGS
    assert outputs["image_id"] == "snap-1-id"


# ---------------------------------------------------------------- Docker


def test_docker_instance(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    mocks, outputs = run_instance(monkeypatch, "docker", image="debian-12")
    assert mocks.one("docker:index/remoteImage:RemoteImage")["name"] == "debian:12"
    container = mocks.one("docker:index/container:Container")
    assert container["image"] == "sha256:base"
    assert container["ports"] == [{"internal": 22}]
    assert (container["cpus"], container["memory"]) == ("1", 1024)
    assert {(label["label"], label["value"]) for label in container["labels"]} == set(expected_tags().items())
    env = dict(item.split("=", 1) for item in container["envs"])
    assert env["ORCH_AUTHORIZED_KEYS"].splitlines() == [public_key(), ADMIN_KEY]
    encoded = [base64.b64encode(text.encode()).decode() for text in ("alice", public_key())]
    assert env["ORCH_SSH_USERS"] == f"{encoded[0]} yes {encoded[1]}"
    assert "/usr/sbin/sshd -D" in container["command"][-1]

    assert_contract(outputs, "docker")
    assert (outputs["public_ip"], outputs["private_ip"]) == ("127.0.0.1", "172.17.0.3")
    assert (outputs["ssh_user"], outputs["ssh_port"]) == ("root", 32801)
    assert outputs["root_disk_id"] == outputs["instance_id"] == "web-1-id"


def test_docker_remote_engine_address(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://docker.internal:2376")
    _, outputs = run_instance(monkeypatch, "docker")
    assert outputs["public_ip"] == "docker.internal"


def test_docker_instance_from_snapshot(monkeypatch):
    mocks, outputs = run_instance(monkeypatch, "docker", base_image_id="sha256:committed", from_snapshot="snap-1")
    assert "docker:index/remoteImage:RemoteImage" not in mocks.resources
    assert mocks.one("docker:index/container:Container")["image"] == "sha256:committed"
    assert outputs["image_id"] == "sha256:committed"


def test_docker_snapshot(monkeypatch):
    mocks, outputs = run_snapshot(monkeypatch, "docker")
    commit = mocks.one("pulumi-python:dynamic:Resource")
    assert commit["container_id"] == "c0ffee" and commit["tag"] == "orch-snapshot/snap-1:latest"
    assert outputs["image_id"] == "sha256:committed"


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure", "docker"])
def test_labels_with_stand_in_failure_marker_reach_the_instance(monkeypatch, cloud):
    """The stand-in fails resources by tag/label: the user's labels must reach the instance resource."""
    mocks, _ = run_instance(monkeypatch, cloud, labels={"standin-fail": "create"})
    instance_type, key = {
        "aws": ("aws:ec2/instance:Instance", "tags"),
        "gcp": ("gcp:compute/instance:Instance", "labels"),
        "azure": ("azure-native:compute:VirtualMachine", "tags"),
        "docker": ("docker:index/container:Container", "labels"),
    }[cloud]
    carried = mocks.one(instance_type)[key]
    if cloud == "docker":
        carried = {label["label"]: label["value"] for label in carried}
    assert carried["standin-fail"] == "create"


def test_unknown_cloud_has_no_program():
    with pytest.raises(ValueError, match="unknown cloud 'oracle'"):
        snapshot_program(parse_snapshot({"kind": "Snapshot", "name": "s", "instance": "i"}), source={"cloud": "oracle"})


def test_stored_document_parses_back_to_the_same_instance():
    """What the service writes to `orch:document` (sorted JSON) parses back to the same instance."""
    instance = parse_instance(instance_document("aws"))
    assert parse_instance(json.loads(json.dumps(instance.to_dict(), sort_keys=True))) == instance
