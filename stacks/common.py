"""Pieces every cloud module uses: tags, login keys, cloud-init, resource names, the outputs contract."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pulumi
import yaml

from stacks.catalog import DEFAULT_IMAGE, Cloud, Image
from stacks.spec import InstanceDoc, SnapshotDoc

MANAGED_BY = "orch"


def instance_tags(instance: InstanceDoc) -> dict[str, str]:
    """The user's labels plus the ones that say who manages the resource and for which instance."""
    return {**instance.labels, "managed-by": MANAGED_BY, "orch-instance": instance.name}


def snapshot_tags(snapshot: SnapshotDoc, source: dict) -> dict[str, str]:
    """Images keep the labels of the instance they were made from."""
    return {
        **(source.get("labels") or {}),
        "managed-by": MANAGED_BY,
        "orch-snapshot": snapshot.name,
        "orch-source-instance": snapshot.instance,
    }


def login_keys(instance: InstanceDoc, admin_public_key: str) -> list[str]:
    """Keys for the image's default login user: the spec's first user's and the service's own (for Ansible)."""
    keys = [instance.spec.ssh_users[0].public_key.strip(), admin_public_key.strip()]
    return list(dict.fromkeys(keys))


def cloud_init(instance: InstanceDoc, admin_public_key: str, ssh_user: str) -> str:
    """A #cloud-config that sets up the login user and creates the spec's users.

    The login user is declared by name (not only as the distro's `default`) so an
    instance from a snapshot of another distro still gets the user the outputs
    name. The spec's users exist from first boot, so an instance with
    `configure: false` (no Ansible) is reachable by every user in the spec.
    """
    users: list[object] = [
        "default",
        {
            "name": ssh_user,
            "shell": "/bin/bash",
            "lock_passwd": True,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "ssh_authorized_keys": login_keys(instance, admin_public_key),
        },
    ]
    for user in instance.spec.ssh_users:
        entry: dict[str, object] = {
            "name": user.name,
            "shell": "/bin/bash",
            "lock_passwd": True,
            "ssh_authorized_keys": [user.public_key.strip()],
        }
        if user.sudo:
            entry["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
        users.append(entry)
    return "#cloud-config\n" + yaml.safe_dump({"users": users}, sort_keys=False)


def catalog_image(cloud: Cloud, instance: InstanceDoc) -> Image:
    """The catalog image an instance boots (the GPU variant when it has GPUs); not for instances from snapshots."""
    image = cloud.images[instance.spec.image]
    return image.gpu if instance.spec.gpu is not None and image.gpu is not None else image


def login_user(cloud: Cloud, instance: InstanceDoc) -> str:
    """The image's default login user; an instance from a snapshot uses the default image's."""
    return cloud.images[instance.spec.image or DEFAULT_IMAGE].ssh_user


def bounded_name(*parts: str, limit: int = 63) -> str:
    """Join parts with '-', shortened with a hash suffix when over the cloud's length limit."""
    name = "-".join(parts)
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def export_instance(
    *,
    cloud: str,
    instance: InstanceDoc,
    instance_id: pulumi.Input[str],
    public_ip: pulumi.Input[str],
    private_ip: pulumi.Input[str],
    ssh_user: str,
    image_id: pulumi.Input[str],
    zone: pulumi.Input[str | None],
    ssh_port: pulumi.Input[int],
    root_disk_id: pulumi.Input[str],
) -> None:
    """The outputs contract, plus what the snapshot program and the configuration step need."""
    pulumi.export("cloud", cloud)
    pulumi.export("region", instance.spec.region)
    pulumi.export("zone", zone)
    pulumi.export("instance_id", instance_id)
    pulumi.export("public_ip", public_ip)
    pulumi.export("private_ip", private_ip)
    pulumi.export("ssh_user", ssh_user)
    pulumi.export("ssh_port", ssh_port)
    pulumi.export("image_id", image_id)
    pulumi.export("root_disk_id", root_disk_id)
    pulumi.export("labels", instance.labels)


def export_snapshot(*, cloud: str, source: dict, image_id: pulumi.Input[str]) -> None:
    pulumi.export("cloud", cloud)
    pulumi.export("region", source["region"])
    pulumi.export("image_id", image_id)
    pulumi.export("source_instance_id", source["instance_id"])


# ---------------------------------------------------------------- error classes
# What a failed `pulumi up` says about where to go next (docs/lifecycle.md, "Zone failover"):
# no capacity in the zone (another zone may have it), or a quota or credentials problem,
# which no other zone solves. Each cloud module lists its codes and phrases (ERROR_RULES).
CAPACITY = "capacity"
QUOTA = "quota"
AUTH = "auth"


@dataclass(frozen=True)
class CloudError:
    kind: str  # CAPACITY, QUOTA or AUTH
    code: str  # the cloud's error code that says so
    text: str  # the cloud's words: its message's line from where the code (or phrase) was found

    def summary(self, limit: int) -> str:
        """`CODE: the cloud's words`, at most `limit` characters."""
        words = self.text.removeprefix(self.code).lstrip(' ":').removeprefix('Message="').rstrip('"')
        line = f"{self.code}: {words}" if words else self.code
        return line if len(line) <= limit else line[: limit - 3] + "..."


def classify(message: str, rules: tuple[tuple[str, str, str], ...]) -> CloudError | None:
    """The first (kind, code, regex) rule whose regex is found in the message; None when none is.

    Rules are tried in order, so a cloud lists quota and credentials first: a quota message
    that also mentions capacity is not retried.
    """
    for kind, code, pattern in rules:
        found = re.search(pattern, message)
        if found:
            end = message.find("\n", found.start())
            return CloudError(kind=kind, code=code, text=message[found.start() : None if end < 0 else end].strip())
    return None
def spot_keeps_machine(instance: InstanceDoc) -> bool:
    """Whether a spot eviction stops the machine (its disk kept) rather than deleting it.

    `on_preemption: delete` lets the cloud delete it (orch then deletes the instance); `restart` and
    `keep` need the machine and its disk afterwards, so the cloud only stops it.
    """
    return instance.spec.on_preemption != "delete"
