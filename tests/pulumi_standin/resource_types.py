"""Simulated cloud resources: what each resource type and invoke "returns" in the stand-in.

A resource's outputs are its inputs plus an `id` and the per-type extras below. Everything is
derived from the resource's URN (or an invoke's arguments), so the same program gives the same
ids and addresses on every run. To simulate another type, add an entry to `RESOURCE_TYPES` (or
`INVOKES`); types without an entry get a generic id and outputs equal to their inputs.

Environment:
  PULUMI_STANDIN_PUBLIC_IP  the public address instances report (so a test can point
                            configuration at a reachable host)
  PULUMI_STANDIN_SSH_PORT   the host port simulated docker containers map port 22 to
  ORCH_SANDBOX_SOCKET       set by `orch serve --simulate`: instances are sandbox hosts, whose
                            addresses are their public IPs (sandboxes.py)

Power state: the simulated cloud remembers which machines are stopped and how often each was started
again (PULUMI_HOME/standin-cloud/power.json): a stopped machine has no public address, and each start
gives a new one (a new host port for docker), as clouds hand out ephemeral addresses. A sandbox
host keeps its address (and runs on) while its machine is stopped.

Changes behind a stack's back (PULUMI_HOME/standin-cloud/tampered.json, written by
`python -m tests.pulumi_standin tamper`, tamper.py): per resource URN, properties someone changed in
the console, or that it was deleted there. Only reads see them (a refresh, `up --refresh`), as a
provider's Read would; a create, update or delete of the resource by the engine writes the program's
values again and forgets them. A read never changes the simulated cloud (no power state is set).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

AWS_ACCOUNT_ID = "123456789012"
AZURE_SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"
GCP_DEFAULT_PROJECT = "standin-project"
GCP_API = "https://www.googleapis.com/compute/v1"


@dataclass(frozen=True)
class SimulatedResource:
    """One resource being created, updated or read, with helpers for deterministic values."""

    type: str
    name: str
    urn: str
    inputs: dict
    # False in a preview: the simulated cloud is only looked at, never changed.
    live: bool = True
    # A provider's Read (a refresh): what the cloud has now, changing nothing.
    reading: bool = False

    def hex(self, length: int, salt: str = "") -> str:
        digest = hashlib.sha256(f"{self.urn}|{salt}".encode()).hexdigest()
        while len(digest) < length:
            digest += hashlib.sha256(digest.encode()).hexdigest()
        return digest[:length]

    def number(self, modulo: int, salt: str = "") -> int:
        return int(self.hex(12, salt), 16) % modulo

    def uuid(self, salt: str = "") -> str:
        return str(uuid.UUID(self.hex(32, salt)))

    def public_ip(self, salt: str = "") -> str:
        if os.environ.get("PULUMI_STANDIN_PUBLIC_IP"):
            return os.environ["PULUMI_STANDIN_PUBLIC_IP"]
        from . import sandboxes  # (imports this module)

        if sandboxes.enabled():
            address = sandboxes.address(self.type, self.urn)
            if address:
                return address
        return f"203.0.113.{1 + self.number(254, 'public-ip' + salt)}"

    def private_ip(self) -> str:
        return f"10.0.{self.number(256, 'subnet')}.{2 + self.number(250, 'host')}"

    def physical_name(self, *keys: str) -> str:
        """The cloud-side name: the first of `keys` set in the inputs, else the resource's name."""
        for key in keys:
            if isinstance(self.inputs.get(key), str) and self.inputs[key]:
                return self.inputs[key]
        return self.name


@dataclass(frozen=True)
class ResourceType:
    """How one resource type is simulated: its id, and outputs added to (or over) its inputs."""

    make_id: Callable[[SimulatedResource], str]
    extra_outputs: Callable[[SimulatedResource, str], dict] = lambda resource, resource_id: {}
    # On a read: the inputs the provider reports from the cloud's state (a TF-bridged provider's Read
    # returns them), given the inputs in the stack's state and the outputs just read.
    read_inputs: Callable[[dict, dict], dict] = lambda inputs, outputs: {}


def _power_file() -> Path:
    home = os.environ.get("PULUMI_HOME") or os.path.join(os.path.expanduser("~"), ".pulumi")
    return Path(home) / "standin-cloud" / "power.json"


def power_state(machine_id: str, wanted: str | None = None, *, live: bool = True) -> tuple[str, int]:
    """(state, starts) of a simulated machine; `wanted` ("running"/"stopped") powers it on or off first."""
    path = _power_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        machines = json.loads(path.read_text()) if path.exists() else {}
        state, starts = machines.get(machine_id, ("running", 0))
        if wanted is not None and wanted != state and live:
            starts += 1 if wanted == "running" else 0
            machines[machine_id] = (state, starts) = (wanted, starts)
            path.write_text(json.dumps(machines))
        elif wanted is not None and not live:
            state = wanted
    return state, starts


def _tamper_file() -> Path:
    return _power_file().with_name("tampered.json")


@contextmanager
def _tampered_resources(write: bool) -> Iterator[dict]:
    """The tamper records ({urn: {"set": {...}, "deleted": bool}}), under the simulated cloud's file lock."""
    path = _tamper_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = json.loads(path.read_text()) if path.exists() else {}
        yield records
        if write:
            temp = path.with_name(f".{path.name}.{os.getpid()}")
            temp.write_text(json.dumps(records, sort_keys=True))
            os.replace(temp, path)


def tamper(urn: str, *, set_values: dict | None = None, delete: bool = False) -> None:
    """Change properties of a resource, or delete it, in the simulated cloud only (the stack's state keeps what it had)."""
    with _tampered_resources(write=True) as records:
        record = records.setdefault(urn, {"set": {}, "deleted": False})
        record["set"].update(set_values or {})
        record["deleted"] = record["deleted"] or delete


def tampering(urn: str) -> dict:
    with _tampered_resources(write=False) as records:
        return copy.deepcopy(records.get(urn) or {"set": {}, "deleted": False})


def forget_tampering(urn: str) -> None:
    """The engine created, updated or deleted the resource: the cloud holds the program's values again."""
    if not _tamper_file().exists():
        return
    with _tampered_resources(write=True) as records:
        records.pop(urn, None)


def gone(urn: str) -> bool:
    """Whether the resource was deleted behind the stack's back (a read finds nothing)."""
    return _tamper_file().exists() and tampering(urn)["deleted"]


def read_inputs(type_token: str, urn: str, inputs: dict, outputs: dict) -> dict:
    """The inputs a read reports that differ from `inputs`: the tampered ones, and per type (power state)."""
    changed = {key: value for key, value in tampering(urn)["set"].items() if key in inputs} if _tamper_file().exists() else {}
    changed.update(RESOURCE_TYPES.get(type_token, GENERIC).read_inputs(inputs, outputs))
    return {key: value for key, value in changed.items() if inputs.get(key) != value}


def _address_salt(starts: int) -> str:
    return f"start-{starts}" if starts else ""


def simulate(
    type_token: str,
    name: str,
    urn: str,
    inputs: dict,
    resource_id: str | None = None,
    *,
    live: bool = True,
    reading: bool = False,
) -> tuple[str, dict]:
    """The id and outputs the simulated cloud reports for a resource with these inputs.

    `resource_id` is given when the resource already exists (a read of an existing id); `live` is False
    in a preview; `reading` is a refresh's read, which sees what was tampered with and changes nothing.
    """
    resource = SimulatedResource(
        type=type_token, name=name, urn=urn, inputs=inputs, live=live and not reading, reading=reading
    )
    resource_type = RESOURCE_TYPES.get(type_token, GENERIC)
    resource_id = resource_id or resource_type.make_id(resource)
    outputs = copy.deepcopy(inputs)
    outputs.update(resource_type.extra_outputs(resource, resource_id))
    if reading and _tamper_file().exists():
        outputs.update(tampering(urn)["set"])
    return resource_id, outputs


def simulate_invoke(token: str, args: dict) -> dict:
    """What a function (data source) invoke returns; unknown functions echo their arguments."""
    key = token + "|" + json.dumps(args, sort_keys=True, default=str)
    resource = SimulatedResource(type=token, name=token.rsplit(":", 1)[-1], urn=key, inputs=args)
    handler = INVOKES.get(token)
    if handler is None:
        return copy.deepcopy(args)
    return handler(resource)


def invalid_inputs(type_token: str, inputs: dict) -> str | None:
    """Why the simulated cloud refuses a create or update with these inputs (as the real API would), or None."""
    check = VALIDATORS.get(type_token)
    return check(inputs) if check else None


def _generic_id(resource: SimulatedResource) -> str:
    return f"{resource.name}-{resource.hex(8)}"


GENERIC = ResourceType(make_id=_generic_id)


# --- AWS -------------------------------------------------------------------------------------


def _aws_region(resource: SimulatedResource) -> str:
    zone = resource.inputs.get("availabilityZone")
    if isinstance(zone, str) and zone and zone[-1].isalpha():
        return zone[:-1]
    return os.environ.get("AWS_REGION") or "us-east-1"


def _aws_arn(resource: SimulatedResource, service: str, path: str) -> str:
    return f"arn:aws:{service}:{_aws_region(resource)}:{AWS_ACCOUNT_ID}:{path}"


def _aws_instance(resource: SimulatedResource, resource_id: str) -> dict:
    state, starts = power_state(resource_id)
    public_ip = resource.public_ip(_address_salt(starts)) if state == "running" else ""
    private_ip = resource.private_ip()
    root_block_device = dict(resource.inputs.get("rootBlockDevice") or {})
    root_block_device.update(
        {
            "volumeId": "vol-" + resource.hex(17, "root-volume"),
            "deviceName": root_block_device.get("deviceName", "/dev/sda1"),
        }
    )
    region = _aws_region(resource)
    return {
        "arn": _aws_arn(resource, "ec2", f"instance/{resource_id}"),
        "publicIp": public_ip,
        "privateIp": private_ip,
        "publicDns": f"ec2-{public_ip.replace('.', '-')}.compute-1.amazonaws.com" if public_ip else "",
        "privateDns": f"ip-{private_ip.replace('.', '-')}.ec2.internal",
        "availabilityZone": resource.inputs.get("availabilityZone") or f"{region}a",
        "instanceState": state,
        "primaryNetworkInterfaceId": "eni-" + resource.hex(17, "eni"),
        "rootBlockDevice": root_block_device,
    }


def _aws_security_group(resource: SimulatedResource, resource_id: str) -> dict:
    return {
        "arn": _aws_arn(resource, "ec2", f"security-group/{resource_id}"),
        "ownerId": AWS_ACCOUNT_ID,
        "name": resource.physical_name("name"),
        "vpcId": resource.inputs.get("vpcId") or "vpc-" + resource.hex(17, "default-vpc"),
    }


def _aws_key_pair(resource: SimulatedResource, resource_id: str) -> dict:
    return {
        "arn": _aws_arn(resource, "ec2", f"key-pair/{resource_id}"),
        "keyName": resource_id,
        "keyPairId": "key-" + resource.hex(17, "key-pair-id"),
        "fingerprint": ":".join(resource.hex(32, "fingerprint")[i : i + 2] for i in range(0, 32, 2)),
    }


def _aws_image(resource: SimulatedResource, resource_id: str) -> dict:
    return {
        "arn": _aws_arn(resource, "ec2", f"image/{resource_id}"),
        "name": resource.physical_name("name"),
        "rootDeviceName": resource.inputs.get("rootDeviceName") or "/dev/sda1",
        "rootSnapshotId": "snap-" + resource.hex(17, "root-snapshot"),
        "ownerId": AWS_ACCOUNT_ID,
        "imageLocation": f"{AWS_ACCOUNT_ID}/{resource.physical_name('name')}",
        "architecture": resource.inputs.get("architecture") or "x86_64",
    }


def _aws_snapshot(resource: SimulatedResource, resource_id: str) -> dict:
    return {
        "arn": _aws_arn(resource, "ec2", f"snapshot/{resource_id}"),
        "ownerId": AWS_ACCOUNT_ID,
        "volumeSize": resource.inputs.get("volumeSize") or 8,
        "encrypted": False,
    }


def _aws_get_ami(invoke: SimulatedResource) -> dict:
    image_id = "ami-" + invoke.hex(17)
    return {
        "id": image_id,
        "imageId": image_id,
        "arn": f"arn:aws:ec2:us-east-1::image/{image_id}",
        "name": "standin-image-" + invoke.hex(6, "name"),
        "architecture": "x86_64",
        "ownerId": "099720109477",
        "rootDeviceName": "/dev/sda1",
        "rootDeviceType": "ebs",
        "virtualizationType": "hvm",
        "blockDeviceMappings": [
            {
                "deviceName": "/dev/sda1",
                "ebs": {
                    "snapshot_id": "snap-" + invoke.hex(17, "snapshot"),
                    "volume_size": "8",
                    "volume_type": "gp3",
                    "delete_on_termination": "true",
                },
            }
        ],
        "mostRecent": bool(invoke.inputs.get("mostRecent")),
        "owners": invoke.inputs.get("owners") or [],
        "filters": invoke.inputs.get("filters") or [],
    }


# --- GCP -------------------------------------------------------------------------------------


def _gcp_project(resource: SimulatedResource) -> str:
    return resource.inputs.get("project") or os.environ.get("GOOGLE_PROJECT") or GCP_DEFAULT_PROJECT


def _gcp_zone(resource: SimulatedResource) -> str:
    return resource.inputs.get("zone") or "us-central1-a"


def _gcp_instance_id(resource: SimulatedResource) -> str:
    return f"projects/{_gcp_project(resource)}/zones/{_gcp_zone(resource)}/instances/{resource.physical_name('name')}"


def _aws_instance_state(resource: SimulatedResource, resource_id: str) -> dict:
    """aws_ec2_instance_state: powers the simulated machine off or on."""
    wanted = None if resource.reading else resource.inputs.get("state")
    state, _ = power_state(str(resource.inputs.get("instanceId")), wanted, live=resource.live)
    return {"state": state}


def _gcp_instance(resource: SimulatedResource, resource_id: str) -> dict:
    project, zone, name = _gcp_project(resource), _gcp_zone(resource), resource.physical_name("name")
    wanted = {"TERMINATED": "stopped", "RUNNING": "running"}.get(resource.inputs.get("desiredStatus") or "RUNNING")
    if resource.reading:
        wanted = None
    state, starts = power_state(resource_id, wanted, live=resource.live)
    interfaces = copy.deepcopy(resource.inputs.get("networkInterfaces") or [{}])
    for index, interface in enumerate(interfaces):
        interface["networkIp"] = resource.private_ip() if index == 0 else f"10.{index}.0.{2 + resource.number(250)}"
        interface.setdefault("name", f"nic{index}")
        for access_config in interface.get("accessConfigs") or []:
            access_config["natIp"] = (
                access_config.get("natIp") or resource.public_ip(_address_salt(starts)) if state == "running" else ""
            )
            access_config.setdefault("networkTier", "PREMIUM")
    boot_disk = copy.deepcopy(resource.inputs.get("bootDisk") or {})
    boot_disk["source"] = f"{GCP_API}/projects/{project}/zones/{zone}/disks/{name}"
    boot_disk.setdefault("deviceName", "persistent-disk-0")
    return {
        "name": name,
        "project": project,
        "zone": zone,
        "instanceId": str(10**18 + resource.number(10**18, "instance-id")),
        "selfLink": f"{GCP_API}/{resource_id}",
        "networkInterfaces": interfaces,
        "bootDisk": boot_disk,
        "currentStatus": "RUNNING" if state == "running" else "TERMINATED",
        "cpuPlatform": "Intel Cascade Lake",
    }


def _gcp_zonal_id(kind: str) -> Callable[[SimulatedResource], str]:
    return (
        lambda resource: f"projects/{_gcp_project(resource)}/zones/{_gcp_zone(resource)}/{kind}/{resource.physical_name('name')}"
    )


def _gcp_disk(resource: SimulatedResource, resource_id: str) -> dict:
    return {
        "name": resource.physical_name("name"),
        "project": _gcp_project(resource),
        "zone": _gcp_zone(resource),
        "selfLink": f"{GCP_API}/{resource_id}",
        "size": resource.inputs.get("size") or 10,
        "sourceImageId": str(10**18 + resource.number(10**18, "source-image-id")),
        "diskId": str(10**18 + resource.number(10**18, "disk-id")),
    }


def _gcp_global_id(kind: str) -> Callable[[SimulatedResource], str]:
    return lambda resource: f"projects/{_gcp_project(resource)}/global/{kind}/{resource.physical_name('name')}"


def _gcp_global(resource: SimulatedResource, resource_id: str) -> dict:
    return {
        "name": resource.physical_name("name"),
        "project": _gcp_project(resource),
        "selfLink": f"{GCP_API}/{resource_id}",
        "creationTimestamp": "2024-01-01T00:00:00.000-00:00",
    }


def _gcp_image(resource: SimulatedResource, resource_id: str) -> dict:
    outputs = _gcp_global(resource, resource_id)
    outputs.update({"diskSizeGb": resource.inputs.get("diskSizeGb") or 10, "archiveSizeBytes": 10**9})
    return outputs


def _gcp_snapshot(resource: SimulatedResource, resource_id: str) -> dict:
    outputs = _gcp_global(resource, resource_id)
    outputs.update({"diskSizeGb": 10, "storageBytes": 2 * 10**9, "snapshotId": str(10**18 + resource.number(10**18))})
    return outputs


def _gcp_get_image(invoke: SimulatedResource) -> dict:
    project = invoke.inputs.get("project") or "ubuntu-os-cloud"
    name = invoke.inputs.get("name") or f"{invoke.inputs.get('family') or 'image'}-v{invoke.number(10**8)}"
    image_id = f"projects/{project}/global/images/{name}"
    return {
        "id": image_id,
        "name": name,
        "project": project,
        "family": invoke.inputs.get("family") or "",
        "selfLink": f"{GCP_API}/{image_id}",
        "diskSizeGb": 10,
        "status": "READY",
        "imageId": str(10**18 + invoke.number(10**18, "image-id")),
    }


# --- Azure -----------------------------------------------------------------------------------


def _azure_resource_group_id(resource: SimulatedResource) -> str:
    return f"/subscriptions/{AZURE_SUBSCRIPTION_ID}/resourceGroups/{resource.inputs.get('resourceGroupName') or 'standin-rg'}"


def _azure_id(provider_path: str, *name_keys: str) -> Callable[[SimulatedResource], str]:
    def make_id(resource: SimulatedResource) -> str:
        return f"{_azure_resource_group_id(resource)}/providers/{provider_path}/{resource.physical_name(*name_keys)}"

    return make_id


def _azure_common(azure_type: str, *name_keys: str) -> Callable[[SimulatedResource, str], dict]:
    def extra_outputs(resource: SimulatedResource, resource_id: str) -> dict:
        return {
            "name": resource.physical_name(*name_keys),
            "type": azure_type,
            "provisioningState": "Succeeded",
            "etag": 'W/"' + resource.uuid("etag") + '"',
            "azureApiVersion": "2024-01-01",
        }

    return extra_outputs


def _with(base: Callable[[SimulatedResource, str], dict], extra: Callable[[SimulatedResource, str], dict]):
    def extra_outputs(resource: SimulatedResource, resource_id: str) -> dict:
        outputs = base(resource, resource_id)
        outputs.update(extra(resource, resource_id))
        return outputs

    return extra_outputs


def _azure_subnet_id(resource: SimulatedResource) -> str:
    return (
        f"{_azure_resource_group_id(resource)}/providers/Microsoft.Network/virtualNetworks/"
        f"{resource.inputs.get('virtualNetworkName') or 'vnet'}/subnets/{resource.physical_name('subnetName')}"
    )


def _azure_network_interface(resource: SimulatedResource, resource_id: str) -> dict:
    configurations = copy.deepcopy(resource.inputs.get("ipConfigurations") or [{"name": "ipconfig1"}])
    configurations[0]["privateIPAddress"] = resource.private_ip()
    configurations[0].setdefault("privateIPAllocationMethod", "Dynamic")
    configurations[0]["provisioningState"] = "Succeeded"
    return {
        "ipConfigurations": configurations,
        "macAddress": "00-0D-3A-" + "-".join(resource.hex(6, "mac")[i : i + 2].upper() for i in range(0, 6, 2)),
    }


def _azure_virtual_machine(resource: SimulatedResource, resource_id: str) -> dict:
    vm_name = resource.physical_name("vmName")
    storage_profile = copy.deepcopy(resource.inputs.get("storageProfile") or {})
    os_disk = storage_profile.setdefault("osDisk", {})
    disk_name = os_disk.get("name") or f"{vm_name}_OsDisk_1_{resource.hex(32, 'os-disk')}"
    os_disk["name"] = disk_name
    managed_disk = os_disk.setdefault("managedDisk", {})
    managed_disk["id"] = f"{_azure_resource_group_id(resource)}/providers/Microsoft.Compute/disks/{disk_name}"
    return {"vmId": resource.uuid("vm-id"), "storageProfile": storage_profile}


def _azure_power_state(resource: SimulatedResource, resource_id: str) -> dict:
    """stacks/azure_power.py's dynamic resource: its provider deallocates or starts the VM, as simulated here.

    The provider's own code (ARM calls) is not run, as for every dynamic resource; what it does to
    the machine is: the state is the simulated machine's, read back by a refresh.
    """
    vm_id = str(resource.inputs.get("vm_id"))
    wanted = None if resource.reading else resource.inputs.get("state")  # a refresh's read changes nothing
    state, _ = power_state(vm_id, wanted, live=resource.live)
    return {"vm_id": vm_id, "state": state}


def _azure_public_ip(resource: SimulatedResource, resource_id: str) -> dict:
    return {"ipAddress": resource.public_ip()}


def _azure_disk_copy(resource: SimulatedResource, resource_id: str) -> dict:
    return {"timeCreated": "2024-01-01T00:00:00.0000000+00:00", "uniqueId": resource.uuid("unique-id")}


# --- Spot: what each cloud's API accepts (checked on create and update) ----------------------


def _positive_decimal(value: object) -> bool:
    try:
        return float(str(value)) > 0
    except ValueError:
        return False


def _aws_spot(inputs: dict) -> str | None:
    market = inputs.get("instanceMarketOptions")
    if not market:
        return None
    if market.get("marketType", "spot") not in ("spot", "capacity-block", "interruptible-capacity-reservation"):
        return f"InvalidParameterValue: invalid market type {market.get('marketType')!r}"
    options = market.get("spotOptions") or {}
    behavior = options.get("instanceInterruptionBehavior", "terminate")
    request = options.get("spotInstanceType", "one-time")
    if behavior not in ("hibernate", "stop", "terminate"):
        return f"InvalidParameterValue: invalid instance interruption behavior {behavior!r}"
    if request not in ("one-time", "persistent"):
        return f"InvalidParameterValue: invalid spot instance type {request!r}"
    if behavior != "terminate" and request != "persistent":
        return f"InvalidParameterCombination: the interruption behavior {behavior!r} needs a persistent spot request"
    if "maxPrice" in options and not (isinstance(options["maxPrice"], str) and _positive_decimal(options["maxPrice"])):
        return f"InvalidParameterValue: max price {options['maxPrice']!r} is not a positive decimal string"
    return None


def _gcp_spot(inputs: dict) -> str | None:
    scheduling = inputs.get("scheduling") or {}
    model = scheduling.get("provisioningModel", "STANDARD")
    action = scheduling.get("instanceTerminationAction")
    if model not in ("STANDARD", "SPOT"):
        return f"Invalid value for field 'resource.scheduling.provisioningModel': {model!r}"
    if model == "SPOT" and not (
        scheduling.get("preemptible") is True
        and scheduling.get("automaticRestart") is False
        and scheduling.get("onHostMaintenance") == "TERMINATE"
    ):
        return "Invalid value for field 'resource.scheduling': Spot VMs must be preemptible, with automaticRestart false and onHostMaintenance TERMINATE"
    if action is not None and (model != "SPOT" or action not in ("STOP", "DELETE")):
        return f"Invalid value for field 'resource.scheduling.instanceTerminationAction': {action!r} (STOP or DELETE, for Spot VMs)"
    return None


def _azure_spot(inputs: dict) -> str | None:
    priority = inputs.get("priority", "Regular")
    if priority not in ("Regular", "Low", "Spot"):
        return f"InvalidParameter: priority {priority!r} is not Regular, Low or Spot"
    spot = priority in ("Low", "Spot")
    if "evictionPolicy" in inputs and (not spot or inputs["evictionPolicy"] not in ("Deallocate", "Delete")):
        return f"InvalidParameter: evictionPolicy {inputs['evictionPolicy']!r} is for Spot VMs, Deallocate or Delete"
    max_price = (inputs.get("billingProfile") or {}).get("maxPrice")
    if max_price is not None and (not spot or not (max_price == -1 or max_price > 0)):
        return f"InvalidParameter: billingProfile.maxPrice {max_price!r} is for Spot VMs, -1 or more than 0"
    return None


VALIDATORS: dict[str, Callable[[dict], str | None]] = {
    "aws:ec2/instance:Instance": _aws_spot,
    "gcp:compute/instance:Instance": _gcp_spot,
    "azure-native:compute:VirtualMachine": _azure_spot,
}


# --- Docker ----------------------------------------------------------------------------------


def _docker_remote_image(resource: SimulatedResource, resource_id: str) -> dict:
    digest = "sha256:" + resource.hex(64, "digest")
    return {
        "imageId": "sha256:" + resource.hex(64),
        "repoDigest": f"{resource.inputs.get('name', resource.name)}@{digest}",
    }


def _docker_container(resource: SimulatedResource, resource_id: str) -> dict:
    running = resource.inputs.get("start", True) is not False
    wanted = None if resource.reading else "running" if running else "stopped"
    state, starts = power_state(resource_id, wanted, live=resource.live)
    # A stopped container publishes nothing; a started one gets new host ports.
    ports = copy.deepcopy(resource.inputs.get("ports") or []) if state == "running" else []
    for port in ports:
        if port.get("internal") == 22 and os.environ.get("PULUMI_STANDIN_SSH_PORT"):
            port["external"] = int(os.environ["PULUMI_STANDIN_SSH_PORT"])
        elif not port.get("external"):
            port["external"] = 32768 + resource.number(28000, f"port-{port.get('internal')}{_address_salt(starts)}")
        port.setdefault("ip", "0.0.0.0")
        port.setdefault("protocol", "tcp")
    address = os.environ.get("PULUMI_STANDIN_PUBLIC_IP") or f"172.17.0.{2 + resource.number(250, 'bridge')}"
    return {
        "name": resource.physical_name("name"),
        "ports": ports,
        "networkDatas": [
            {"networkName": "bridge", "ipAddress": address, "gateway": "172.17.0.1", "ipPrefixLength": 16}
        ],
        "hostname": resource_id[:12],
    }


RESOURCE_TYPES: dict[str, ResourceType] = {
    "aws:ec2/instance:Instance": ResourceType(lambda r: "i-" + r.hex(17), _aws_instance),
    "aws:ec2transitgateway/instanceState:InstanceState": ResourceType(
        lambda r: str(r.inputs.get("instanceId")),
        _aws_instance_state,
        # The provider reads the instance's state: one stopped in the console shows as a change of `state`.
        read_inputs=lambda inputs, outputs: {"state": outputs["state"]} if "state" in inputs else {},
    ),
    "aws:ec2/securityGroup:SecurityGroup": ResourceType(lambda r: "sg-" + r.hex(17), _aws_security_group),
    "aws:ec2/keyPair:KeyPair": ResourceType(lambda r: r.physical_name("keyName"), _aws_key_pair),
    "aws:ec2/amiFromInstance:AmiFromInstance": ResourceType(lambda r: "ami-" + r.hex(17), _aws_image),
    "aws:ec2/ami:Ami": ResourceType(lambda r: "ami-" + r.hex(17), _aws_image),
    "aws:ebs/snapshot:Snapshot": ResourceType(lambda r: "snap-" + r.hex(17), _aws_snapshot),
    "gcp:compute/instance:Instance": ResourceType(
        _gcp_instance_id,
        _gcp_instance,
        # The provider diffs desired_status against the status it reads (its CustomizeDiff): an instance
        # stopped in the console shows as a change of `desiredStatus`.
        read_inputs=lambda inputs, outputs: (
            {"desiredStatus": outputs["currentStatus"]} if inputs.get("desiredStatus") else {}
        ),
    ),
    "gcp:compute/firewall:Firewall": ResourceType(_gcp_global_id("firewalls"), _gcp_global),
    "gcp:compute/image:Image": ResourceType(_gcp_global_id("images"), _gcp_image),
    "gcp:compute/disk:Disk": ResourceType(_gcp_zonal_id("disks"), _gcp_disk),
    "gcp:compute/snapshot:Snapshot": ResourceType(_gcp_global_id("snapshots"), _gcp_snapshot),
    "azure-native:resources:ResourceGroup": ResourceType(
        lambda r: f"/subscriptions/{AZURE_SUBSCRIPTION_ID}/resourceGroups/{r.physical_name('resourceGroupName')}",
        _azure_common("Microsoft.Resources/resourceGroups", "resourceGroupName"),
    ),
    "azure-native:network:VirtualNetwork": ResourceType(
        _azure_id("Microsoft.Network/virtualNetworks", "virtualNetworkName"),
        _azure_common("Microsoft.Network/virtualNetworks", "virtualNetworkName"),
    ),
    "azure-native:network:Subnet": ResourceType(
        _azure_subnet_id, _azure_common("Microsoft.Network/virtualNetworks/subnets", "subnetName")
    ),
    "azure-native:network:PublicIPAddress": ResourceType(
        _azure_id("Microsoft.Network/publicIPAddresses", "publicIpAddressName"),
        _with(_azure_common("Microsoft.Network/publicIPAddresses", "publicIpAddressName"), _azure_public_ip),
    ),
    "azure-native:network:NetworkSecurityGroup": ResourceType(
        _azure_id("Microsoft.Network/networkSecurityGroups", "networkSecurityGroupName"),
        _azure_common("Microsoft.Network/networkSecurityGroups", "networkSecurityGroupName"),
    ),
    "azure-native:network:NetworkInterface": ResourceType(
        _azure_id("Microsoft.Network/networkInterfaces", "networkInterfaceName"),
        _with(_azure_common("Microsoft.Network/networkInterfaces", "networkInterfaceName"), _azure_network_interface),
    ),
    "azure-native:compute:VirtualMachine": ResourceType(
        _azure_id("Microsoft.Compute/virtualMachines", "vmName"),
        _with(_azure_common("Microsoft.Compute/virtualMachines", "vmName"), _azure_virtual_machine),
    ),
    "azure-native:compute:Snapshot": ResourceType(
        _azure_id("Microsoft.Compute/snapshots", "snapshotName"),
        _with(_azure_common("Microsoft.Compute/snapshots", "snapshotName"), _azure_disk_copy),
    ),
    "azure-native:compute:Image": ResourceType(
        _azure_id("Microsoft.Compute/images", "imageName"),
        _azure_common("Microsoft.Compute/images", "imageName"),
    ),
    "docker:index/remoteImage:RemoteImage": ResourceType(
        lambda r: "sha256:" + r.hex(64) + r.inputs.get("name", r.name), _docker_remote_image
    ),
    "docker:index/container:Container": ResourceType(lambda r: r.hex(64), _docker_container),
    "pulumi-python:dynamic/azure:VirtualMachinePowerState": ResourceType(
        lambda r: f"{r.inputs.get('vm_id')}/powerState", _azure_power_state
    ),
    # Dynamic providers: the stand-in does not run the provider's code; outputs are the inputs.
    "pulumi-python:dynamic:Resource": ResourceType(lambda r: r.hex(32)),
}

INVOKES: dict[str, Callable[[SimulatedResource], dict]] = {
    "aws:ec2/getAmi:getAmi": _aws_get_ami,
    "gcp:compute/getImage:getImage": _gcp_get_image,
}
