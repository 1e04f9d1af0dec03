"""GCP: a Compute Engine instance on the project's default network, SSH from the allowed CIDRs only."""

from __future__ import annotations

import os

import pulumi
import pulumi_gcp as gcp

from stacks import common
from stacks.catalog import GCP, GCP_ACCELERATOR_TYPES
from stacks.spec import InstanceDoc, SnapshotDoc

SDK_MODULES = ("pulumi_gcp.compute",)

NETWORK = "default"
BOOT_DISK_TYPE = "pd-balanced"
# Firewall priorities (lower wins): the SSH allow rule beats the instance's deny-all rule,
# which beats the default network's own rules (e.g. default-allow-ssh from anywhere, 65534).
ALLOW_SSH_PRIORITY = 900
DENY_INGRESS_PRIORITY = 1000


def _project() -> str | None:
    """Stack config `gcp:project`, else the environment (None: the provider's own lookup)."""
    return (
        pulumi.Config("gcp").get("project")
        or os.environ.get("GOOGLE_PROJECT")
        or os.environ.get("GOOGLE_CLOUD_PROJECT")
        or os.environ.get("CLOUDSDK_CORE_PROJECT")
    )


def _provider(region: str, zone: str) -> gcp.Provider:
    # One explicit provider per stack: a process runs stacks for many regions at once.
    return gcp.Provider(f"gcp-{zone}", project=_project(), region=region, zone=zone)


def _ssh_keys(instance: InstanceDoc, admin_public_key: str, ssh_user: str) -> str:
    """The `ssh-keys` metadata: the guest agent creates each user and authorizes its key."""
    lines = [f"{ssh_user}:{key}" for key in common.login_keys(instance, admin_public_key)]
    lines += [f"{user.name}:{user.public_key.strip()}" for user in instance.spec.ssh_users]
    return "\n".join(lines)


def instance_program(instance: InstanceDoc, *, admin_public_key: str, base_image_id: str | None) -> None:
    spec = instance.spec
    provider = _provider(spec.region, spec.zone)
    opts = pulumi.ResourceOptions(provider=provider)
    labels = common.instance_tags(instance)
    ssh_user = common.login_user(GCP, instance)
    # Firewall rules apply to instances carrying this network tag.
    network_tag = common.bounded_name("orch", instance.name)

    gcp.compute.Firewall(
        common.bounded_name(instance.name, "ssh"),
        network=NETWORK,
        direction="INGRESS",
        priority=ALLOW_SSH_PRIORITY,
        allows=[{"protocol": "tcp", "ports": ["22"]}],
        source_ranges=list(spec.allowed_ssh_cidrs),
        target_tags=[network_tag],
        description=f"orch {instance.name}: SSH from the allowed CIDRs",
        opts=opts,
    )
    gcp.compute.Firewall(
        common.bounded_name(instance.name, "deny-ingress"),
        network=NETWORK,
        direction="INGRESS",
        priority=DENY_INGRESS_PRIORITY,
        denies=[{"protocol": "all"}],
        source_ranges=["0.0.0.0/0"],
        target_tags=[network_tag],
        description=f"orch {instance.name}: nothing else inbound",
        opts=opts,
    )
    # The boot disk is its own resource so a larger disk_gb resizes it in place
    # (a size change of an inline boot disk replaces the instance).
    boot_disk = gcp.compute.Disk(
        instance.name,
        image=base_image_id or common.catalog_image(GCP, instance).ref,
        size=spec.disk_gb,
        type=BOOT_DISK_TYPE,
        zone=spec.zone,
        labels=labels,
        opts=opts,
    )
    machine_settings: dict = {}
    if spec.gpu is not None:
        machine_settings = {
            "guest_accelerators": [{"type": GCP_ACCELERATOR_TYPES[spec.gpu.type], "count": spec.gpu.count}],
            # GPU instances cannot live-migrate.
            "scheduling": {"on_host_maintenance": "TERMINATE", "automatic_restart": True},
        }
    if spec.spot:
        # A Spot VM: it cannot live-migrate or restart itself either, and the cloud stops it (its boot
        # disk kept) or deletes it when it takes it back. GCP takes no maximum price.
        machine_settings["scheduling"] = {
            "provisioning_model": "SPOT",
            "preemptible": True,
            "automatic_restart": False,
            "on_host_maintenance": "TERMINATE",
            "instance_termination_action": "STOP" if common.spot_keeps_machine(instance) else "DELETE",
        }
    vm = gcp.compute.Instance(
        instance.name,
        machine_type=spec.machine_type,
        zone=spec.zone,
        boot_disk={"source": boot_disk.id, "auto_delete": False},
        network_interfaces=[{"network": NETWORK, "access_configs": [{"network_tier": "PREMIUM"}]}],
        metadata={
            "ssh-keys": _ssh_keys(instance, admin_public_key, ssh_user),
            # With OS Login on (a project may default to it) the ssh-keys metadata is ignored.
            "enable-oslogin": "FALSE",
        },
        tags=[network_tag],
        labels=labels,
        allow_stopping_for_update=True,
        # The power state (docs/lifecycle.md): TERMINATED is GCP's stopped, which keeps the disk.
        desired_status="TERMINATED" if spec.state == "stopped" else "RUNNING",
        **machine_settings,
        opts=opts,
    )
    interface = vm.network_interfaces[0]
    common.export_instance(
        cloud="gcp",
        instance=instance,
        instance_id=vm.id,
        # A stopped instance gives its ephemeral address back; a start gets a new one.
        public_ip=None if spec.state == "stopped" else interface.access_configs[0].nat_ip,
        private_ip=interface.network_ip,
        ssh_user=ssh_user,
        image_id=boot_disk.image,
        zone=spec.zone,
        ssh_port=22,
        root_disk_id=boot_disk.id,
    )


def snapshot_program(snapshot: SnapshotDoc, *, source: dict) -> None:
    provider = _provider(source["region"], source["zone"])
    opts = pulumi.ResourceOptions(provider=provider)
    labels = common.snapshot_tags(snapshot, source)
    # An image cannot be made from a disk attached to a running instance; a
    # disk snapshot can, and the image is made from that.
    disk_snapshot = gcp.compute.Snapshot(
        snapshot.name, source_disk=source["root_disk_id"], zone=source["zone"], labels=labels, opts=opts
    )
    image = gcp.compute.Image(
        snapshot.name,
        source_snapshot=disk_snapshot.id,
        description=f"orch snapshot {snapshot.name} of instance {snapshot.instance}",
        labels=labels,
        opts=opts,
    )
    common.export_snapshot(cloud="gcp", source=source, image_id=image.id)


# How Compute Engine says it. The provider often passes only the message on ("The zone
# '...' does not have enough resources available to fulfill the request."), not the code.
ERROR_RULES = (
    (common.QUOTA, "QUOTA_EXCEEDED", r"\bQUOTA_EXCEEDED\b|\bquotaExceeded\b|Quota '[A-Z0-9_]+' exceeded"),
    (common.AUTH, "PERMISSION_DENIED", r"\bPERMISSION_DENIED\b|googleapi: Error 403\b|\bforbidden\b"),
    (common.AUTH, "UNAUTHENTICATED", r"\bUNAUTHENTICATED\b|googleapi: Error 401\b|could not find default credentials"),
    (common.CAPACITY, "ZONE_RESOURCE_POOL_EXHAUSTED", r"\bZONE_RESOURCE_POOL_EXHAUSTED(_WITH_DETAILS)?\b"),
    (common.CAPACITY, "ZONE_RESOURCE_POOL_EXHAUSTED", r"does not have enough resources available"),
)


def classify_error(message: str) -> common.CloudError | None:
    """Whether a failed update's message is Compute Engine's no-capacity, quota or credentials error."""
    return common.classify(message, ERROR_RULES)
