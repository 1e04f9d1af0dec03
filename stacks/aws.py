"""AWS: an EC2 instance in the region's default VPC, reachable over SSH from the allowed CIDRs only."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from stacks import common
from stacks.catalog import AWS, aws_architecture
from stacks.spec import InstanceDoc, SnapshotDoc

SDK_MODULES = ("pulumi_aws.ec2", "pulumi_aws.ec2transitgateway")

ROOT_VOLUME_TYPE = "gp3"


def _provider(region: str) -> aws.Provider:
    # One explicit provider per stack: a process runs stacks for many regions at once.
    return aws.Provider(f"aws-{region}", region=region)


def _lookup_ami(instance: InstanceDoc, provider: aws.Provider) -> pulumi.Output[str]:
    """The newest AMI matching the catalog image's name pattern, for the machine type's architecture."""
    owner, name_pattern = common.catalog_image(AWS, instance).ref
    arch = aws_architecture(instance.spec.machine_type)
    name = name_pattern.format(arch=arch, dlami_arch="ARM64 " if arch == "arm64" else "")
    ami = aws.ec2.get_ami_output(
        most_recent=True,
        owners=[owner],
        filters=[
            {"name": "name", "values": [name]},
            {"name": "architecture", "values": ["arm64" if arch == "arm64" else "x86_64"]},
            {"name": "state", "values": ["available"]},
        ],
        opts=pulumi.InvokeOutputOptions(provider=provider),
    )
    return ami.id


def instance_program(instance: InstanceDoc, *, admin_public_key: str, base_image_id: str | None) -> None:
    spec = instance.spec
    provider = _provider(spec.region)
    opts = pulumi.ResourceOptions(provider=provider)
    tags = common.instance_tags(instance)
    ssh_user = common.login_user(AWS, instance)

    # The service's key is the instance's key pair (the default user's key);
    # cloud-init adds the first user's key to it and creates the spec's users.
    key_pair = aws.ec2.KeyPair(instance.name, public_key=admin_public_key.strip(), tags=tags, opts=opts)
    security_group = aws.ec2.SecurityGroup(
        instance.name,
        description=f"orch {instance.name}: SSH from the allowed CIDRs only",
        ingress=[
            {
                "protocol": "tcp",
                "from_port": 22,
                "to_port": 22,
                "cidr_blocks": list(spec.allowed_ssh_cidrs),
                "description": "SSH",
            }
        ],
        egress=[{"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"]}],
        tags=tags,
        opts=opts,
    )
    ami = base_image_id if base_image_id else _lookup_ami(instance, provider)
    spot_settings: dict = {}
    if spec.spot:
        keep = common.spot_keeps_machine(instance)
        spot_options: dict = {
            # A stopped spot instance is started again by its request: a stop needs a persistent one.
            "instance_interruption_behavior": "stop" if keep else "terminate",
            "spot_instance_type": "persistent" if keep else "one-time",
        }
        if spec.max_price_per_hour is not None:
            spot_options["max_price"] = _price(spec.max_price_per_hour)
        spot_settings["instance_market_options"] = {"market_type": "spot", "spot_options": spot_options}
    ec2 = aws.ec2.Instance(
        instance.name,
        ami=ami,
        instance_type=spec.machine_type,
        availability_zone=spec.zone,
        key_name=key_pair.key_name,
        vpc_security_group_ids=[security_group.id],
        associate_public_ip_address=True,
        user_data=common.cloud_init(instance, admin_public_key, ssh_user),
        root_block_device={
            "volume_size": spec.disk_gb,
            "volume_type": ROOT_VOLUME_TYPE,
            "encrypted": True,
            "delete_on_termination": True,
            "tags": tags,
        },
        metadata_options={"http_tokens": "required", "http_endpoint": "enabled"},
        tags={**tags, "Name": instance.name},
        **spot_settings,
        # The lookup finds a newer AMI whenever the distribution publishes one:
        # that must not replace a running instance on its next update.
        opts=opts.merge(pulumi.ResourceOptions(ignore_changes=["ami"])),
    )
    # The power state (docs/lifecycle.md): the provider's aws_ec2_instance_state, which the Pulumi SDK
    # files under ec2transitgateway. A stop keeps the EBS root volume; a start gets a new public IP,
    # which the start operation reads with a second `up --refresh`.
    aws.ec2transitgateway.InstanceState(instance.name, instance_id=ec2.id, state=spec.state, opts=opts)
    common.export_instance(
        cloud="aws",
        instance=instance,
        instance_id=ec2.id,
        public_ip=None if spec.state == "stopped" else ec2.public_ip,
        private_ip=ec2.private_ip,
        ssh_user=ssh_user,
        image_id=ec2.ami,
        zone=ec2.availability_zone,
        ssh_port=22,
        root_disk_id=ec2.root_block_device.apply(lambda device: device.volume_id if device else None),
    )


def _price(usd_per_hour: float) -> str:
    """EC2's max_price is a decimal string ("0.0153"), not a float."""
    return f"{usd_per_hour:.6f}".rstrip("0").rstrip(".")


def snapshot_program(snapshot: SnapshotDoc, *, source: dict) -> None:
    provider = _provider(source["region"])
    # An AMI with the root volume's EBS snapshot; deregistering it (stack destroy) deletes both.
    image = aws.ec2.AmiFromInstance(
        snapshot.name,
        source_instance_id=source["instance_id"],
        description=f"orch snapshot {snapshot.name} of instance {snapshot.instance}",
        tags={**common.snapshot_tags(snapshot, source), "Name": snapshot.name},
        opts=pulumi.ResourceOptions(provider=provider),
    )
    common.export_snapshot(cloud="aws", source=source, image_id=image.id)


# How EC2 says it (the provider passes the API's code on: "api error <Code>: <message>").
# InstanceLimitExceeded is a quota (running instances), not capacity; `Unsupported` is a type
# not offered in the requested zone, which another zone may offer.
ERROR_RULES = (
    (common.QUOTA, "VcpuLimitExceeded", r"\bVcpuLimitExceeded\b"),
    (common.QUOTA, "InstanceLimitExceeded", r"\bInstanceLimitExceeded\b"),
    (common.QUOTA, "MaxSpotInstanceCountExceeded", r"\bMaxSpotInstanceCountExceeded\b"),
    (common.AUTH, "AuthFailure", r"\bAuthFailure\b"),
    (common.AUTH, "UnauthorizedOperation", r"\bUnauthorizedOperation\b"),
    (common.AUTH, "InvalidClientTokenId", r"\bInvalidClientTokenId\b"),
    (common.AUTH, "ExpiredToken", r"\bExpiredToken\b"),
    (common.AUTH, "no valid credential sources", r"no valid credential sources"),
    (common.CAPACITY, "InsufficientInstanceCapacity", r"\bInsufficientInstanceCapacity\b"),
    (common.CAPACITY, "Unsupported", r"\bUnsupported\b.*not supported in your requested Availability Zone"),
)


def classify_error(message: str) -> common.CloudError | None:
    """Whether a failed update's message is EC2's no-capacity, quota or credentials error."""
    return common.classify(message, ERROR_RULES)
