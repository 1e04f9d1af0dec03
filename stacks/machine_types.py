"""The machine types each cloud's catalogue lists: vCPUs and memory (GPUs come from catalog.gpu_machines).

A spec's machine_type must be one of these (with "did you mean ...?" for a near miss) unless
it sets `allow_unlisted_machine_type: true`, for types newer than this table. The table holds
the common general-purpose, compute, memory and GPU sizes of each cloud, including every type
used by the examples, the tests and the README.
"""

from __future__ import annotations

# name -> (vCPUs, memory in GB)
Sizes = dict[str, tuple[int, float]]


def _family(prefix: str, sep: str, sizes: dict[str, tuple[int, float]]) -> Sizes:
    return {f"{prefix}{sep}{size}": figures for size, figures in sizes.items()}


_AWS_T = {"micro": (2, 1), "small": (2, 2), "medium": (2, 4), "large": (2, 8), "xlarge": (4, 16), "2xlarge": (8, 32)}
_AWS_M = {"large": (2, 8), "xlarge": (4, 16), "2xlarge": (8, 32), "4xlarge": (16, 64), "8xlarge": (32, 128)}
_AWS_C = {"large": (2, 4), "xlarge": (4, 8), "2xlarge": (8, 16), "4xlarge": (16, 32)}
_AWS_R = {"large": (2, 16), "xlarge": (4, 32), "2xlarge": (8, 64), "4xlarge": (16, 128)}
_AWS_G = {
    "xlarge": (4, 16), "2xlarge": (8, 32), "4xlarge": (16, 64), "8xlarge": (32, 128),
    "12xlarge": (48, 192), "16xlarge": (64, 256), "24xlarge": (96, 384), "48xlarge": (192, 768),
}

AWS_MACHINE_TYPES: Sizes = {
    **_family("t3", ".", _AWS_T),
    **_family("t3a", ".", _AWS_T),
    **_family("t4g", ".", {k: _AWS_T[k] for k in ("small", "medium", "large", "xlarge")}),
    **_family("m5", ".", _AWS_M),
    **_family("m6i", ".", _AWS_M),
    **_family("m7i", ".", _AWS_M),
    **_family("m7g", ".", {"medium": (1, 4), **_AWS_M}),
    **_family("c5", ".", _AWS_C),
    **_family("c6i", ".", _AWS_C),
    **_family("c7g", ".", _AWS_C),
    **_family("r5", ".", _AWS_R),
    **_family("r6i", ".", _AWS_R),
    **_family("g4dn", ".", {k: _AWS_G[k] for k in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")}),
    **_family("g5", ".", _AWS_G),
    **_family("g6", ".", {k: _AWS_G[k] for k in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "48xlarge")}),
    **_family("g6e", ".", {"xlarge": (4, 32), "2xlarge": (8, 64), "12xlarge": (48, 384), "48xlarge": (192, 1536)}),
    "p3.2xlarge": (8, 61), "p3.8xlarge": (32, 244), "p3.16xlarge": (64, 488),
    "p4d.24xlarge": (96, 1152), "p5.48xlarge": (192, 2048),
}

GCP_MACHINE_TYPES: Sizes = {
    "e2-micro": (2, 1), "e2-small": (2, 2), "e2-medium": (2, 4),
    **{f"e2-standard-{n}": (n, 4 * n) for n in (2, 4, 8, 16, 32)},
    **{f"e2-highmem-{n}": (n, 8 * n) for n in (2, 4, 8, 16)},
    **{f"n1-standard-{n}": (n, 3.75 * n) for n in (1, 2, 4, 8, 16, 32)},
    **{f"n2-standard-{n}": (n, 4 * n) for n in (2, 4, 8, 16, 32)},
    **{f"n2-highmem-{n}": (n, 8 * n) for n in (2, 4, 8, 16)},
    **{f"c3-standard-{n}": (n, 4 * n) for n in (4, 8, 22, 44)},
    **{f"g2-standard-{n}": (n, 4 * n) for n in (4, 8, 12, 16, 24, 32, 48, 96)},
    "a2-highgpu-1g": (12, 85), "a2-highgpu-2g": (24, 170), "a2-highgpu-4g": (48, 340), "a2-highgpu-8g": (96, 680),
    "a2-megagpu-16g": (96, 1360),
    "a2-ultragpu-1g": (12, 170), "a2-ultragpu-2g": (24, 340), "a2-ultragpu-4g": (48, 680),
    "a2-ultragpu-8g": (96, 1360),
    "a3-highgpu-8g": (208, 1872), "a3-megagpu-8g": (208, 1872),
}

AZURE_MACHINE_TYPES: Sizes = {
    "Standard_B1s": (1, 1), "Standard_B1ms": (1, 2), "Standard_B2s": (2, 4), "Standard_B2ms": (2, 8),
    "Standard_B4ms": (4, 16), "Standard_B8ms": (8, 32),
    **{f"Standard_D{n}s_v5": (n, 4 * n) for n in (2, 4, 8, 16, 32)},
    **{f"Standard_D{n}as_v5": (n, 4 * n) for n in (2, 4, 8, 16)},
    **{f"Standard_D{n}s_v3": (n, 4 * n) for n in (2, 4, 8, 16)},
    **{f"Standard_E{n}s_v5": (n, 8 * n) for n in (2, 4, 8, 16)},
    **{f"Standard_F{n}s_v2": (n, 2 * n) for n in (2, 4, 8, 16)},
    "Standard_NC4as_T4_v3": (4, 28), "Standard_NC8as_T4_v3": (8, 56), "Standard_NC16as_T4_v3": (16, 110),
    "Standard_NC64as_T4_v3": (64, 440),
    "Standard_NC6s_v3": (6, 112), "Standard_NC12s_v3": (12, 224), "Standard_NC24s_v3": (24, 448),
    "Standard_NC24ads_A100_v4": (24, 220), "Standard_NC48ads_A100_v4": (48, 440),
    "Standard_NC96ads_A100_v4": (96, 880), "Standard_NC40ads_H100_v5": (40, 320),
    "Standard_ND96asr_v4": (96, 900), "Standard_ND96amsr_A100_v4": (96, 1900), "Standard_ND96isr_H100_v5": (96, 1900),
    "Standard_NV6ads_A10_v5": (6, 55), "Standard_NV12ads_A10_v5": (12, 110), "Standard_NV36ads_A10_v5": (36, 440),
}
