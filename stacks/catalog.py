"""What each cloud offers: regions and zones, images, GPU-capable machine types.

Plain data, no Pulumi SDK imports, so the API can validate specs without
loading the (large) cloud SDKs. `spec.py` validates against these tables and
the cloud modules build their programs from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from stacks.machine_types import AWS_MACHINE_TYPES, AZURE_MACHINE_TYPES, GCP_MACHINE_TYPES, Sizes

DEFAULT_IMAGE = "ubuntu-22.04"


@dataclass(frozen=True)
class Image:
    """One cloud's rendering of an image name; `gpu` is the variant with NVIDIA drivers."""

    ref: object  # cloud-specific: AMI name filter, GCP image family path, Azure image reference, docker tag
    min_disk_gb: int
    ssh_user: str
    gpu: Image | None = None


@dataclass(frozen=True)
class GpuMachine:
    """Machine types (a regex over the full name) that carry `count` GPUs of `gpu_type` (None: any count)."""

    pattern: str
    gpu_type: str
    count: int | None


@dataclass(frozen=True)
class MachineType:
    """One listed machine type; its GPUs are those its name carries (gpu_machines)."""

    name: str
    vcpus: int
    memory_gb: float
    gpus: int
    gpu_type: str | None


@dataclass(frozen=True)
class Cloud:
    name: str
    regions: frozenset[str]
    zone_pattern: str  # `{region}` is replaced by the (escaped) region
    # What an unlisted type (spec.allow_unlisted_machine_type) must look like.
    machine_type_pattern: str
    images: dict[str, Image]
    # The catalogue's machine types: name -> (vCPUs, memory in GB).
    machine_type_sizes: Sizes = field(default_factory=dict)
    # The zones the catalogue lists per region, as suffixes of `{region}` (AWS `a`, GCP `-b`) or
    # whole names (Azure `1`); regions not named here have `default_zone_suffixes`.
    zone_suffixes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_zone_suffixes: tuple[str, ...] = ()
    gpu_machines: tuple[GpuMachine, ...] = ()
    # Machine families that take any number of attached GPUs of these types (GCP N1).
    attachable_gpu_families: dict[str, frozenset[str]] = field(default_factory=dict)
    attachable_gpu_counts: frozenset[int] = frozenset()
    gpu_families_hint: str = ""
    # Sizing floor for instances from a snapshot, whose image is not known when validating.
    min_disk_gb: int = 10
    default_zones: dict[str, str] = field(default_factory=dict)

    def zone_belongs(self, region: str, zone: str) -> bool:
        return re.fullmatch(self.zone_pattern.replace("{region}", re.escape(region)), zone) is not None

    def zones(self, region: str) -> list[str]:
        """The zones the catalogue lists for region (validation accepts any that zone_pattern allows)."""
        suffixes = self.zone_suffixes.get(region, self.default_zone_suffixes)
        return [suffix if self.name in ("azure", "docker") else f"{region}{suffix}" for suffix in suffixes]

    def machine_types(self) -> list[MachineType]:
        listed = []
        for name, (vcpus, memory_gb) in self.machine_type_sizes.items():
            gpus, gpu_type = self.built_in_gpus(name)
            listed.append(MachineType(name=name, vcpus=vcpus, memory_gb=memory_gb, gpus=gpus, gpu_type=gpu_type))
        return listed

    def built_in_gpus(self, machine_type: str) -> tuple[int, str | None]:
        """(count, type) of the GPUs a machine type carries; (0, None) for none."""
        machine = self.gpu_machine(machine_type)
        if machine is None:
            return 0, None
        if machine.count is None:  # the count is the `-<n>g` suffix (GCP a2-highgpu-4g)
            return int(re.search(r"(\d+)g\Z", machine_type, flags=re.ASCII).group(1)), machine.gpu_type
        return machine.count, machine.gpu_type

    def gpu_machine(self, machine_type: str) -> GpuMachine | None:
        for machine in self.gpu_machines:
            if re.fullmatch(machine.pattern, machine_type, flags=re.IGNORECASE):
                return machine
        return None


# GPU type names are cloud-neutral in the spec; GCP's accelerator names are accepted as aliases.
GPU_TYPE_ALIASES = {
    "nvidia-tesla-t4": "nvidia-t4",
    "nvidia-tesla-v100": "nvidia-v100",
    "nvidia-tesla-p100": "nvidia-p100",
    "nvidia-tesla-p4": "nvidia-p4",
    "nvidia-tesla-a100": "nvidia-a100",
    "nvidia-h100-80gb": "nvidia-h100",
}
# The spec's GPU names as GCP accelerator types.
GCP_ACCELERATOR_TYPES = {
    "nvidia-t4": "nvidia-tesla-t4",
    "nvidia-v100": "nvidia-tesla-v100",
    "nvidia-p100": "nvidia-tesla-p100",
    "nvidia-p4": "nvidia-tesla-p4",
    "nvidia-a100": "nvidia-tesla-a100",
    "nvidia-a100-80gb": "nvidia-a100-80gb",
    "nvidia-h100": "nvidia-h100-80gb",
    "nvidia-h100-mega": "nvidia-h100-mega-80gb",
    "nvidia-l4": "nvidia-l4",
}


def canonical_gpu_type(name: str) -> str:
    return GPU_TYPE_ALIASES.get(name.lower(), name.lower())


CANONICAL_OWNER = "099720109477"  # Canonical's AWS account (Ubuntu AMIs)
DEBIAN_OWNER = "136693071363"

AWS = Cloud(
    name="aws",
    regions=frozenset(
        {
            "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "ca-west-1",
            "sa-east-1", "eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "eu-central-2",
            "eu-north-1", "eu-south-1", "eu-south-2", "af-south-1", "me-south-1", "me-central-1",
            "il-central-1", "ap-east-1", "ap-south-1", "ap-south-2", "ap-northeast-1",
            "ap-northeast-2", "ap-northeast-3", "ap-southeast-1", "ap-southeast-2",
            "ap-southeast-3", "ap-southeast-4",
        }
    ),
    zone_pattern="{region}[a-f]",
    machine_type_pattern=r"[a-z][a-z0-9-]*\.[a-z0-9-]+",
    # `ref` is (owner, AMI name pattern); `{arch}` is amd64 or arm64 (Graviton types).
    images={
        "ubuntu-22.04": Image(
            ref=(CANONICAL_OWNER, "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-{arch}-server-*"),
            min_disk_gb=8,
            ssh_user="ubuntu",
            gpu=Image(
                ref=("amazon", "Deep Learning {dlami_arch}Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"),
                min_disk_gb=75,
                ssh_user="ubuntu",
            ),
        ),
        "ubuntu-24.04": Image(
            ref=(CANONICAL_OWNER, "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*"),
            min_disk_gb=8,
            ssh_user="ubuntu",
            gpu=Image(
                ref=("amazon", "Deep Learning {dlami_arch}Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) *"),
                min_disk_gb=75,
                ssh_user="ubuntu",
            ),
        ),
        "debian-12": Image(ref=(DEBIAN_OWNER, "debian-12-{arch}-*"), min_disk_gb=8, ssh_user="admin"),
    },
    gpu_machines=(
        GpuMachine(r"g4dn\.(xlarge|2xlarge|4xlarge|8xlarge|16xlarge)", "nvidia-t4", 1),
        GpuMachine(r"g4dn\.12xlarge", "nvidia-t4", 4),
        GpuMachine(r"g4dn\.metal", "nvidia-t4", 8),
        GpuMachine(r"g5\.(xlarge|2xlarge|4xlarge|8xlarge|16xlarge)", "nvidia-a10g", 1),
        GpuMachine(r"g5\.(12xlarge|24xlarge)", "nvidia-a10g", 4),
        GpuMachine(r"g5\.48xlarge", "nvidia-a10g", 8),
        GpuMachine(r"g5g\.(xlarge|2xlarge|4xlarge|8xlarge)", "nvidia-t4g", 1),
        GpuMachine(r"g5g\.(16xlarge|metal)", "nvidia-t4g", 2),
        GpuMachine(r"g6\.(xlarge|2xlarge|4xlarge|8xlarge|16xlarge)", "nvidia-l4", 1),
        GpuMachine(r"g6\.(12xlarge|24xlarge)", "nvidia-l4", 4),
        GpuMachine(r"g6\.48xlarge", "nvidia-l4", 8),
        GpuMachine(r"g6e\.(xlarge|2xlarge|4xlarge|8xlarge|16xlarge)", "nvidia-l40s", 1),
        GpuMachine(r"g6e\.(12xlarge|24xlarge)", "nvidia-l40s", 4),
        GpuMachine(r"g6e\.48xlarge", "nvidia-l40s", 8),
        GpuMachine(r"p3\.2xlarge", "nvidia-v100", 1),
        GpuMachine(r"p3\.8xlarge", "nvidia-v100", 4),
        GpuMachine(r"p3\.16xlarge|p3dn\.24xlarge", "nvidia-v100", 8),
        GpuMachine(r"p4d\.24xlarge", "nvidia-a100", 8),
        GpuMachine(r"p4de\.24xlarge", "nvidia-a100-80gb", 8),
        GpuMachine(r"p5\.48xlarge", "nvidia-h100", 8),
        GpuMachine(r"p5e\.48xlarge|p5en\.48xlarge", "nvidia-h200", 8),
    ),
    gpu_families_hint="g4dn, g5, g5g, g6, g6e, p3, p4d, p4de, p5",
    min_disk_gb=8,
    machine_type_sizes=AWS_MACHINE_TYPES,
    zone_suffixes={"us-east-1": ("a", "b", "c", "d", "e", "f")},
    default_zone_suffixes=("a", "b", "c"),
)

GCP = Cloud(
    name="gcp",
    regions=frozenset(
        {
            "us-central1", "us-east1", "us-east4", "us-east5", "us-south1", "us-west1", "us-west2",
            "us-west3", "us-west4", "northamerica-northeast1", "northamerica-northeast2",
            "southamerica-east1", "southamerica-west1", "europe-west1", "europe-west2",
            "europe-west3", "europe-west4", "europe-west6", "europe-west8", "europe-west9",
            "europe-west10", "europe-west12", "europe-north1", "europe-central2",
            "europe-southwest1", "me-west1", "me-central1", "me-central2", "africa-south1",
            "asia-east1", "asia-east2", "asia-northeast1", "asia-northeast2", "asia-northeast3",
            "asia-south1", "asia-south2", "asia-southeast1", "asia-southeast2",
            "australia-southeast1", "australia-southeast2",
        }
    ),
    zone_pattern="{region}-[a-f]",
    machine_type_pattern=r"[a-z][a-z0-9]*-[a-z0-9-]+",
    # `ref` is the image family path the boot disk is initialized from.
    images={
        "ubuntu-22.04": Image(
            ref="projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts",
            min_disk_gb=10,
            ssh_user="ubuntu",
            gpu=Image(
                ref="projects/ubuntu-os-accelerator-images/global/images/family/ubuntu-accelerator-2204-amd64-with-nvidia-550",
                min_disk_gb=30,
                ssh_user="ubuntu",
            ),
        ),
        "ubuntu-24.04": Image(
            ref="projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64",
            min_disk_gb=10,
            ssh_user="ubuntu",
            gpu=Image(
                ref="projects/ubuntu-os-accelerator-images/global/images/family/ubuntu-accelerator-2404-amd64-with-nvidia-550",
                min_disk_gb=30,
                ssh_user="ubuntu",
            ),
        ),
        "debian-12": Image(
            ref="projects/debian-cloud/global/images/family/debian-12", min_disk_gb=10, ssh_user="admin"
        ),
    },
    # Accelerator-optimized families come with their GPUs built in.
    gpu_machines=(
        GpuMachine(r"a2-highgpu-(1|2|4|8)g", "nvidia-a100", None),
        GpuMachine(r"a2-megagpu-16g", "nvidia-a100", 16),
        GpuMachine(r"a2-ultragpu-(1|2|4|8)g", "nvidia-a100-80gb", None),
        GpuMachine(r"a3-highgpu-(1|2|4|8)g", "nvidia-h100", None),
        GpuMachine(r"a3-megagpu-8g", "nvidia-h100-mega", 8),
        GpuMachine(r"g2-standard-(4|8|12|16|32)", "nvidia-l4", 1),
        GpuMachine(r"g2-standard-24", "nvidia-l4", 2),
        GpuMachine(r"g2-standard-48", "nvidia-l4", 4),
        GpuMachine(r"g2-standard-96", "nvidia-l4", 8),
    ),
    attachable_gpu_families={"n1": frozenset({"nvidia-t4", "nvidia-v100", "nvidia-p100", "nvidia-p4"})},
    attachable_gpu_counts=frozenset({1, 2, 4, 8}),
    gpu_families_hint="a2, a3, g2, or n1 with an attached nvidia-t4/v100/p100/p4",
    min_disk_gb=10,
    # Zone `-a` does not exist in these regions.
    default_zones={"us-east1": "us-east1-b", "europe-west1": "europe-west1-b"},
    machine_type_sizes=GCP_MACHINE_TYPES,
    zone_suffixes={"us-east1": ("-b", "-c", "-d"), "europe-west1": ("-b", "-c", "-d")},
    default_zone_suffixes=("-a", "-b", "-c"),
)

AZURE = Cloud(
    name="azure",
    regions=frozenset(
        {
            "eastus", "eastus2", "westus", "westus2", "westus3", "centralus", "northcentralus",
            "southcentralus", "westcentralus", "canadacentral", "canadaeast", "brazilsouth",
            "northeurope", "westeurope", "uksouth", "ukwest", "francecentral",
            "germanywestcentral", "norwayeast", "swedencentral", "switzerlandnorth",
            "polandcentral", "italynorth", "spaincentral", "eastasia", "southeastasia",
            "japaneast", "japanwest", "koreacentral", "centralindia", "southindia",
            "australiaeast", "australiasoutheast", "uaenorth", "southafricanorth", "qatarcentral",
        }
    ),
    # Availability zones are numbered; `eastus-1` is accepted as well as `1`.
    zone_pattern="(?:{region}-)?[123]",
    machine_type_pattern=r"Standard_[A-Za-z0-9_]+",
    # `ref` is the marketplace image reference (publisher, offer, sku).
    images={
        "ubuntu-22.04": Image(
            ref=("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"),
            min_disk_gb=30,
            ssh_user="azureuser",
            gpu=Image(ref=("microsoft-dsvm", "ubuntu-hpc", "2204"), min_disk_gb=64, ssh_user="azureuser"),
        ),
        "ubuntu-24.04": Image(
            ref=("Canonical", "ubuntu-24_04-lts", "server"),
            min_disk_gb=30,
            ssh_user="azureuser",
            gpu=Image(ref=("microsoft-dsvm", "ubuntu-hpc", "2404"), min_disk_gb=64, ssh_user="azureuser"),
        ),
        "debian-12": Image(ref=("Debian", "debian-12", "12-gen2"), min_disk_gb=30, ssh_user="azureuser"),
    },
    gpu_machines=(
        GpuMachine(r"Standard_NC(4|8|16)as_T4_v3", "nvidia-t4", 1),
        GpuMachine(r"Standard_NC64as_T4_v3", "nvidia-t4", 4),
        GpuMachine(r"Standard_NC6s_v3", "nvidia-v100", 1),
        GpuMachine(r"Standard_NC12s_v3", "nvidia-v100", 2),
        GpuMachine(r"Standard_NC24r?s_v3", "nvidia-v100", 4),
        GpuMachine(r"Standard_NC24ads_A100_v4", "nvidia-a100-80gb", 1),
        GpuMachine(r"Standard_NC48ads_A100_v4", "nvidia-a100-80gb", 2),
        GpuMachine(r"Standard_NC96ads_A100_v4", "nvidia-a100-80gb", 4),
        GpuMachine(r"Standard_NC40ads_H100_v5", "nvidia-h100", 1),
        GpuMachine(r"Standard_NC80adis_H100_v5", "nvidia-h100", 2),
        GpuMachine(r"Standard_ND96asr_v4", "nvidia-a100", 8),
        GpuMachine(r"Standard_ND96amsr_A100_v4", "nvidia-a100-80gb", 8),
        GpuMachine(r"Standard_ND96isr_H100_v5", "nvidia-h100", 8),
        GpuMachine(r"Standard_NV(6|12|18|36)ads_A10_v5", "nvidia-a10", 1),
        GpuMachine(r"Standard_NV72ads_A10_v5", "nvidia-a10", 2),
        GpuMachine(r"Standard_NV36adms_A10_v5", "nvidia-a10", 1),
    ),
    gpu_families_hint="NC (T4/V100/A100/H100), ND (A100/H100) or NV (A10) sizes",
    min_disk_gb=30,
    machine_type_sizes=AZURE_MACHINE_TYPES,
    default_zone_suffixes=("1", "2", "3"),
)

# Docker "machine types" are container limits: (CPUs, memory in MiB).
DOCKER_SIZES = {"small": (1, 1024), "medium": (2, 4096), "large": (4, 8192), "xlarge": (8, 16384)}

DOCKER = Cloud(
    name="docker",
    regions=frozenset({"local"}),
    zone_pattern="local",
    machine_type_pattern="|".join(DOCKER_SIZES),
    # `ref` is the image the container starts from; its entrypoint installs sshd when missing.
    images={
        "ubuntu-22.04": Image(ref="ubuntu:22.04", min_disk_gb=1, ssh_user="root"),
        "ubuntu-24.04": Image(ref="ubuntu:24.04", min_disk_gb=1, ssh_user="root"),
        "debian-12": Image(ref="debian:12", min_disk_gb=1, ssh_user="root"),
    },
    min_disk_gb=1,
    machine_type_sizes={name: (cpus, memory_mib / 1024) for name, (cpus, memory_mib) in DOCKER_SIZES.items()},
    default_zone_suffixes=("local",),
)

CLOUDS: dict[str, Cloud] = {cloud.name: cloud for cloud in (AWS, GCP, AZURE, DOCKER)}


def aws_architecture(machine_type: str) -> str:
    """`arm64` for Graviton types (a `g` after the generation digit: t4g, m7g, c7gn, g5g), else `amd64`."""
    family = machine_type.split(".", 1)[0]
    return "arm64" if re.fullmatch(r"[a-z]+\d+g[a-z]*", family) else "amd64"


def machine_family(machine_type: str) -> str:
    """GCP's family prefix (`n1` of `n1-standard-8`)."""
    return machine_type.split("-", 1)[0]


def default_zone(cloud: Cloud, region: str) -> str | None:
    """The zone used when the spec names none (GCP needs one; AWS and Azure pick their own)."""
    if cloud.name == "gcp":
        return cloud.default_zones.get(region, f"{region}-a")
    return None
