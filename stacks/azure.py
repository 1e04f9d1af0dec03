"""Azure: a Linux VM in its own resource group and virtual network, SSH from the allowed CIDRs only."""

from __future__ import annotations

import base64

import pulumi
import pulumi_azure_native as azure_native

# Only the submodules in use: importing all of pulumi_azure_native takes many seconds.
import pulumi_azure_native.compute as compute
import pulumi_azure_native.network as network
import pulumi_azure_native.resources as resources

from stacks import common
from stacks.azure_power import VirtualMachinePowerState
from stacks.catalog import AZURE
from stacks.spec import InstanceDoc, SnapshotDoc

SDK_MODULES = ("pulumi_azure_native.compute", "pulumi_azure_native.network", "pulumi_azure_native.resources")

VNET_PREFIX = "10.0.0.0/16"
SUBNET_PREFIX = "10.0.1.0/24"
OS_DISK_TYPE = "StandardSSD_LRS"
# Every image in the catalog is a generation 2 image, and so are images made from their disks.
HYPER_V_GENERATION = "V2"


def _provider(location: str) -> azure_native.Provider:
    # One explicit provider per stack: a process runs stacks for many regions at once.
    return azure_native.Provider(f"azure-{location}", location=location)


def _zone_number(zone: str | None) -> str | None:
    """Azure's zone number: the spec accepts `2` and `eastus-2`."""
    return zone.rsplit("-", 1)[-1] if zone else None


def _image_reference(instance: InstanceDoc, base_image_id: str | None) -> dict:
    if base_image_id:
        return {"id": base_image_id}
    publisher, offer, sku = common.catalog_image(AZURE, instance).ref
    return {"publisher": publisher, "offer": offer, "sku": sku, "version": "latest"}


def instance_program(instance: InstanceDoc, *, admin_public_key: str, base_image_id: str | None) -> None:
    spec = instance.spec
    location = spec.region
    opts = pulumi.ResourceOptions(provider=_provider(location))
    tags = common.instance_tags(instance)
    ssh_user = common.login_user(AZURE, instance)
    zone = _zone_number(spec.zone)
    zones = [zone] if zone else None

    group = resources.ResourceGroup(instance.name, location=location, tags=tags, opts=opts)
    vnet = network.VirtualNetwork(
        instance.name,
        resource_group_name=group.name,
        location=location,
        address_space={"address_prefixes": [VNET_PREFIX]},
        tags=tags,
        opts=opts,
    )
    subnet = network.Subnet(
        instance.name,
        resource_group_name=group.name,
        virtual_network_name=vnet.name,
        address_prefix=SUBNET_PREFIX,
        opts=opts,
    )
    # Inbound from the Internet is denied by Azure's default rules; this is the one exception.
    security_group = network.NetworkSecurityGroup(
        instance.name,
        resource_group_name=group.name,
        location=location,
        security_rules=[
            {
                "name": "allow-ssh",
                "priority": 100,
                "direction": "Inbound",
                "access": "Allow",
                "protocol": "Tcp",
                "source_port_range": "*",
                "destination_port_range": "22",
                "source_address_prefixes": list(spec.allowed_ssh_cidrs),
                "destination_address_prefix": "*",
            }
        ],
        tags=tags,
        opts=opts,
    )
    public_ip = network.PublicIPAddress(
        instance.name,
        resource_group_name=group.name,
        location=location,
        sku={"name": "Standard"},
        public_ip_allocation_method="Static",
        zones=zones,
        tags=tags,
        opts=opts,
    )
    nic = network.NetworkInterface(
        instance.name,
        resource_group_name=group.name,
        location=location,
        ip_configurations=[
            {
                "name": "primary",
                "subnet": {"id": subnet.id},
                "public_ip_address": {"id": public_ip.id},
                "private_ip_allocation_method": "Dynamic",
            }
        ],
        network_security_group={"id": security_group.id},
        tags=tags,
        opts=opts,
    )
    cloud_config = common.cloud_init(instance, admin_public_key, ssh_user)
    spot_settings: dict = {}
    if spec.spot:
        spot_settings = {
            "priority": "Spot",
            # Deallocate keeps the VM and its disk (stopped, as `orch stop` leaves it); Delete removes both.
            "eviction_policy": "Deallocate" if common.spot_keeps_machine(instance) else "Delete",
            # -1: up to the on-demand price, never evicted for price.
            "billing_profile": {"max_price": spec.max_price_per_hour if spec.max_price_per_hour is not None else -1},
        }
    vm = compute.VirtualMachine(
        instance.name,
        resource_group_name=group.name,
        location=location,
        hardware_profile={"vm_size": spec.machine_type},
        storage_profile={
            "image_reference": _image_reference(instance, base_image_id),
            "os_disk": {
                "create_option": "FromImage",
                "disk_size_gb": spec.disk_gb,
                "caching": "ReadWrite",
                "managed_disk": {"storage_account_type": OS_DISK_TYPE},
                "delete_option": "Delete",
            },
        },
        os_profile={
            "computer_name": instance.name,
            "admin_username": ssh_user,
            "custom_data": base64.b64encode(cloud_config.encode()).decode(),
            "linux_configuration": {
                "disable_password_authentication": True,
                "ssh": {
                    "public_keys": [
                        {"path": f"/home/{ssh_user}/.ssh/authorized_keys", "key_data": key}
                        for key in common.login_keys(instance, admin_public_key)
                    ]
                },
            },
        },
        network_profile={"network_interfaces": [{"id": nic.id, "primary": True}]},
        zones=zones,
        tags=tags,
        **spot_settings,
        opts=opts,
    )
    # The power state (docs/lifecycle.md): azure-native has no property for it, so a dynamic resource
    # deallocates or starts the VM. The public IP is Static, so a start keeps the address.
    VirtualMachinePowerState(instance.name, vm_id=vm.id, state=spec.state)
    common.export_instance(
        cloud="azure",
        instance=instance,
        instance_id=vm.id,
        # A deallocated VM is not reachable: the record shows no address while it is stopped.
        public_ip=None if spec.state == "stopped" else public_ip.ip_address,
        private_ip=nic.ip_configurations.apply(lambda configs: configs[0].private_ip_address if configs else None),
        ssh_user=ssh_user,
        image_id=base_image_id or ":".join((*common.catalog_image(AZURE, instance).ref, "latest")),
        zone=zone,
        ssh_port=22,
        root_disk_id=vm.storage_profile.apply(lambda profile: profile.os_disk.managed_disk.id),
    )


def snapshot_program(snapshot: SnapshotDoc, *, source: dict) -> None:
    location = source["region"]
    opts = pulumi.ResourceOptions(provider=_provider(location))
    tags = common.snapshot_tags(snapshot, source)
    # The image outlives its instance, whose resource group goes with it: it gets a group of its own.
    group = resources.ResourceGroup(snapshot.name, location=location, tags=tags, opts=opts)
    disk_snapshot = compute.Snapshot(
        snapshot.name,
        resource_group_name=group.name,
        location=location,
        # A full copy (not incremental): managed images are made from full snapshots.
        creation_data={"create_option": "Copy", "source_resource_id": source["root_disk_id"]},
        incremental=False,
        tags=tags,
        opts=opts,
    )
    # A managed image marked generalized: cloud-init sees a new instance id on
    # first boot and provisions users and keys again, as for a fresh image.
    image = compute.Image(
        snapshot.name,
        resource_group_name=group.name,
        location=location,
        hyper_v_generation=HYPER_V_GENERATION,
        storage_profile={
            "os_disk": {"os_type": "Linux", "os_state": "Generalized", "snapshot": {"id": disk_snapshot.id}}
        },
        tags=tags,
        opts=opts,
    )
    common.export_snapshot(cloud="azure", source=source, image_id=image.id)


# How Azure Resource Manager says it (the provider shows `Code="<Code>" Message="..."`).
# OperationNotAllowed is a quota only when its message says so (it also means other refusals).
ERROR_RULES = (
    (common.QUOTA, "QuotaExceeded", r"\bQuotaExceeded\b"),
    (common.QUOTA, "OperationNotAllowed", r"\bOperationNotAllowed\b.*\bquota\b"),
    (common.AUTH, "AuthorizationFailed", r"\bAuthorizationFailed\b"),
    (common.AUTH, "AuthenticationFailed", r"\bAuthenticationFailed\b|\bInvalidAuthenticationToken\b|\bAADSTS\d+"),
    (common.CAPACITY, "SkuNotAvailable", r"\bSkuNotAvailable\b"),
    (common.CAPACITY, "ZonalAllocationFailed", r"\bZonalAllocationFailed\b"),
    (common.CAPACITY, "AllocationFailed", r"\bAllocationFailed\b"),
    (common.CAPACITY, "OverconstrainedAllocationRequest", r"\bOverconstrained(Zonal)?AllocationRequest\b"),
)


def classify_error(message: str) -> common.CloudError | None:
    """Whether a failed update's message is Azure's no-capacity, quota or credentials error."""
    return common.classify(message, ERROR_RULES)
