"""Simulated compute resources as sandbox hosts, when `orch serve --simulate` asks for them.

With `ORCH_SANDBOX_SOCKET` set (by the service; see orchestrator/sandbox/manager.py), creating
a compute resource asks the service's sandbox manager for a real SSH host on this machine
(its users and keys as cloud-init would make them from the resource's inputs), and the host's
address becomes the instance's public IP; deleting it removes the host. Creating an image
from an instance copies the host's disk, and an instance whose inputs name that image boots
from the copy. Without the variable nothing here runs and instances get the usual
203.0.113.x addresses.

Simulated as hosts: AWS instances (users from the cloud-config in `userData`), GCP
instances (users from the `ssh-keys` metadata, with sudo as GCP's guest agent gives) and
Azure VMs (the admin user with the `osProfile`'s SSH keys and sudo, as Azure's agent makes
it, and the users of the cloud-config in `customData`). An Azure VM's public address is a
PublicIPAddress resource, created before the VM: it reserves a sandbox address, keyed by
its URN and by its stack and resource group, which the VM's host then takes (a stack of
stacks/azure.py has one address and one VM per resource group).
"""

from __future__ import annotations

import os

from . import resource_types

SOCKET_ENV = "ORCH_SANDBOX_SOCKET"
AZURE_VM = "azure-native:compute:VirtualMachine"
AZURE_PUBLIC_IP = "azure-native:network:PublicIPAddress"
COMPUTE_TYPES = frozenset({"aws:ec2/instance:Instance", "gcp:compute/instance:Instance", AZURE_VM})
IMAGE_TYPES = frozenset({
    "aws:ec2/amiFromInstance:AmiFromInstance", "gcp:compute/image:Image", "gcp:compute/snapshot:Snapshot",
    "azure-native:compute:Snapshot", "azure-native:compute:Image",
})


def enabled() -> bool:
    return bool(os.environ.get(SOCKET_ENV))


def _request(message: dict) -> dict:
    from orchestrator.sandbox.manager import request  # the service's own client; only in simulated mode

    return request(os.environ[SOCKET_ENV], message)


def _strings(value: object) -> list[str]:
    """Every string in an input value (where an image or source instance id may be named)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _cloud_config_users(user_data: str) -> list[dict]:
    import yaml  # only the simulated mode needs it, and the service's interpreter has it

    config = yaml.safe_load(user_data) if user_data.startswith("#cloud-config") else None
    users = []
    for entry in (config or {}).get("users") or []:
        if isinstance(entry, dict) and entry.get("name"):
            users.append({"name": entry["name"], "keys": list(entry.get("ssh_authorized_keys") or []),
                          "sudo": bool(entry.get("sudo"))})
    return users


def _gcp_users(metadata: dict) -> list[dict]:
    users: dict[str, list[str]] = {}
    for line in str(metadata.get("ssh-keys") or "").splitlines():
        name, _, key = line.partition(":")
        if name and key:
            users.setdefault(name, []).append(key)
    return [{"name": name, "keys": keys, "sudo": True} for name, keys in users.items()]


def _azure_users(os_profile: dict) -> list[dict]:
    import base64
    import binascii

    try:
        custom_data = base64.b64decode(str(os_profile.get("customData") or ""), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        custom_data = ""  # not a cloud-config: no users from it, as cloud-init would make none
    users = {user["name"]: user for user in _cloud_config_users(custom_data)}
    admin = str(os_profile.get("adminUsername") or "")
    ssh = (os_profile.get("linuxConfiguration") or {}).get("ssh") or {}
    keys = [str(k["keyData"]) for k in ssh.get("publicKeys") or [] if isinstance(k, dict) and k.get("keyData")]
    if admin:
        known = users.get(admin, {"keys": []})["keys"]
        users[admin] = {"name": admin, "keys": list(dict.fromkeys([*known, *keys])), "sudo": True}
    return list(users.values())


def _users(type_token: str, inputs: dict) -> list[dict]:
    if type_token == "aws:ec2/instance:Instance":
        return _cloud_config_users(str(inputs.get("userData") or ""))
    if type_token == AZURE_VM:
        return _azure_users(inputs.get("osProfile") or {})
    return _gcp_users(inputs.get("metadata") or {})


def _azure_address_key(urn: str, inputs: dict) -> str:
    """The reservation an Azure VM takes: its stack's (the URN up to the type) and resource group's."""
    stack = urn.split("::", 2)[:2]
    return f"azure-public-ip:{'::'.join(stack)}:{inputs.get('resourceGroupName') or ''}"


def _aliases(resource_id: str, outputs: dict) -> list[str]:
    """Ids an image's inputs may name the host by: the instance's and its root disk's."""
    aliases = [resource_id]
    azure_disk = (((outputs.get("storageProfile") or {}).get("osDisk") or {}).get("managedDisk") or {}).get("id")
    for value in ((outputs.get("rootBlockDevice") or {}).get("volumeId"), (outputs.get("bootDisk") or {}).get("source"),
                  azure_disk):
        if isinstance(value, str):
            aliases.append(value)
    return aliases


def on_create(type_token: str, name: str, urn: str, inputs: dict) -> None:
    if type_token in COMPUTE_TYPES:
        resource_id, outputs = resource_types.simulate(type_token, name, urn, inputs)
        hostname = str(inputs.get("name") or (inputs.get("osProfile") or {}).get("computerName") or name)
        message = {"op": "create", "keys": [urn, *_aliases(resource_id, outputs)], "hostname": hostname,
                   "users": _users(type_token, inputs), "candidates": _strings(inputs)}
        if type_token == AZURE_VM:
            message["reservation"] = _azure_address_key(urn, inputs)
        _request(message)
    elif type_token == AZURE_PUBLIC_IP:
        _request({"op": "reserve", "keys": [urn, _azure_address_key(urn, inputs)]})
    elif type_token in IMAGE_TYPES:
        resource_id, _ = resource_types.simulate(type_token, name, urn, inputs)
        _request({"op": "snapshot", "key": resource_id, "candidates": _strings(inputs)})


def on_delete(type_token: str, urn: str, resource_id: str | None) -> None:
    if type_token in COMPUTE_TYPES:
        _request({"op": "destroy", "key": urn})
    elif type_token == AZURE_PUBLIC_IP:
        _request({"op": "release", "key": urn})
    elif type_token in IMAGE_TYPES and resource_id:
        _request({"op": "delete_snapshot", "key": resource_id})


def address(type_token: str, urn: str) -> str | None:
    """The address of the host made for this resource (or reserved by it), if there is one."""
    if type_token not in COMPUTE_TYPES and type_token != AZURE_PUBLIC_IP:
        return None
    return _request({"op": "address", "key": urn}).get("address")
