"""The typed Instance and Snapshot documents, and their validation.

The model is msgspec Structs (so the JSON Schema comes from the same
definitions). Validation runs in two passes, each collecting every error it
finds: first the shape (unknown fields, missing fields, wrong types, patterns
and ranges), then, once the shape is right, the meaning (region and zone,
GPU on the machine type, image and disk size, CIDRs, SSH keys, mounts...).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import posixpath
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect as mi
from msgspec import Meta

from stacks.catalog import CLOUDS, DEFAULT_IMAGE, Cloud, canonical_gpu_type, default_zone, machine_family

# Patterns are matched against the whole string (re.fullmatch, ASCII): a trailing newline
# or a Unicode letter never passes. The anchors are for the JSON Schema, where a pattern
# is searched for.
NAME_PATTERN = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
USER_NAME_PATTERN = r"^[a-z_][a-z0-9_-]{0,31}$"
# Labels become GCP labels and AWS/Azure tags: GCP's rules are the strictest, so they hold everywhere.
LABEL_KEY_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
LABEL_VALUE_PATTERN = r"^[a-z0-9_-]{0,63}$"
MAX_LABELS = 60  # GCP allows 64; the programs add their own (managed-by, orch-instance...)
RESERVED_LABELS = frozenset({"managed-by", "orch-instance", "orch-snapshot", "orch-source-instance"})
# Accounts that exist on the images (or that the service logs in as): a spec user must not redefine them.
RESERVED_USER_NAMES = frozenset(
    {
        "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
        "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "sshd", "syslog",
        "messagebus", "systemd-network", "systemd-resolve", "systemd-timesync", "_apt",
        "ubuntu", "admin", "azureuser", "ec2-user", "debian",
    }
)
# Bounds on what one document may hold: each is far above real use and far below what
# breaks a cloud API, a command line or an instance's boot (a 1 MB key, 20,000 users).
MAX_SSH_USERS = 64
MAX_PUBLIC_KEY_LENGTH = 16 * 1024  # an RSA-16384 key line is under 3 KiB, with room for a long comment
MAX_SSH_CIDRS = 64
MAX_MOUNTS = 16
MAX_BOOTSTRAP_SCRIPT_LENGTH = 64 * 1024
MAX_MOUNT_PATH_LENGTH = 1024
MAX_IDENTIFIER_LENGTH = 128  # region, zone, machine type, image, GPU type, a CIDR
# Zones a create tries in turn when one has no capacity (docs/lifecycle.md, "Zone failover").
MAX_ZONES = 16
# Regions a create tries in turn (region failover, spec.regions): each is its own attempt (or its zones are).
MAX_REGIONS = 8
# Mount points: absolute, made of these characters only (no whitespace, control characters,
# backslashes or '#': nothing that could change an /etc/fstab line or add one).
MOUNT_PATH_PATTERN = r"^(/[A-Za-z0-9._+@-]+)+$"
# Mounting a bucket on these would hide what the machine needs...
SYSTEM_PATHS = frozenset({"/", "/home", "/mnt", "/opt", "/root", "/tmp", "/var", "/var/lib", "/var/tmp"})
# ...and on these or anywhere below them, as would a mount in a `.ssh` directory. The last
# three are where the playbooks install the agent and the bootstrap script, and keep state.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/proc", "/run", "/sbin", "/sys", "/usr",
                "/opt/orch-agent", "/var/lib/orch", "/var/lib/orch-bootstrap")
SYSTEM_TREE_PREFIXES = ("lib",)  # top-level directories named so: /lib, /lib32, /lib64, /libx32
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$"
SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
MIN_RSA_BITS = 2048
DEFAULT_DISK_GB = 30
MAX_DISK_GB = 16384
# [spot] The highest spot price a spec may name, USD per hour (the largest GPU machines list under 100).
MAX_PRICE_PER_HOUR = 1000.0
# [spot] Clouds with spot capacity, and those of them where a spot request names a maximum price.
SPOT_CLOUDS = ("aws", "gcp", "azure")
MAX_PRICE_CLOUDS = ("aws", "azure")

Name = Annotated[
    str,
    Meta(
        pattern=NAME_PATTERN,
        description="lowercase letters, digits and hyphens; starts with a letter, at most 63 characters",
    ),
]


class _Model(msgspec.Struct, forbid_unknown_fields=True):
    pass


Identifier = Annotated[str, Meta(min_length=1, max_length=MAX_IDENTIFIER_LENGTH)]


class Gpu(_Model, kw_only=True):
    """GPUs to attach (or that the machine type carries)."""

    type: Annotated[
        str,
        Meta(min_length=1, max_length=MAX_IDENTIFIER_LENGTH, description="e.g. nvidia-t4, nvidia-a10g, nvidia-l4, nvidia-a100, nvidia-h100"),
    ]
    count: Annotated[int, Meta(ge=1, le=16)] = 1


class SshUser(_Model, kw_only=True):
    """A login account created on the instance."""

    name: Annotated[str, Meta(pattern=USER_NAME_PATTERN, description="a Linux user name")]
    public_key: Annotated[
        str, Meta(max_length=MAX_PUBLIC_KEY_LENGTH, description="an OpenSSH public key line: '<type> <base64> [comment]'")
    ]
    sudo: bool = False


class Mount(_Model, kw_only=True):
    """A bucket mounted with goofys."""

    bucket: Annotated[str, Meta(max_length=MAX_IDENTIFIER_LENGTH, description="a bucket name")]
    path: Annotated[
        str,
        Meta(
            max_length=MAX_MOUNT_PATH_LENGTH,
            description="absolute mount point: ASCII letters, digits and . _ + @ - between slashes",
        ),
    ]


# Idle autostop (orchestrator/autostop): the longest idle window, and the smallest one the schema
# takes; the service's own floor is ORCH_AUTOSTOP_MIN_IDLE_MINUTES (5 unless a deployment lowers it).
MAX_IDLE_MINUTES = 1440
MIN_IDLE_MINUTES_SCHEMA = 0.05  # 3 s: only a lowered service floor (tests) lets a window this short through


class Autostop(_Model, kw_only=True):
    """Stop (or delete) the instance once its agent's reports show it idle for idle_minutes."""

    idle_minutes: Annotated[
        float,
        Meta(ge=MIN_IDLE_MINUTES_SCHEMA, le=MAX_IDLE_MINUTES,
             description="minutes every report must be idle for (the service takes at least ORCH_AUTOSTOP_MIN_IDLE_MINUTES, 5 by default)"),
    ]
    metric: Annotated[
        Literal["gpu", "cpu", "any"],
        Meta(description="gpu: every GPU's utilization; cpu: the CPU's; any: both CPU and every GPU (idle only when all are)"),
    ] = "gpu"
    below_percent: Annotated[float, Meta(ge=0, le=100, description="idle means under this utilization")] = 5.0
    action: Literal["stop", "delete"] = "stop"


class InstanceSpec(_Model, kw_only=True):
    cloud: Literal[tuple(CLOUDS)]  # type: ignore[valid-type]  # the clouds in stacks.catalog
    # Required unless spec.regions is given (then it may be left out, or be one of them).
    region: Annotated[str, Meta(min_length=1, max_length=MAX_IDENTIFIER_LENGTH,
                                description="the region; required unless regions is given (then one of them, or left out)")] | None = None
    zone: Identifier | None = None
    machine_type: Identifier | None = None
    allow_unlisted_machine_type: Annotated[
        bool,
        Meta(description="accept a machine_type the catalogue does not list (a type newer than it); not for docker"),
    ] = False
    gpu: Gpu | None = None
    image: (
        Annotated[
            str,
            Meta(min_length=1, max_length=MAX_IDENTIFIER_LENGTH, description=f"defaults to {DEFAULT_IMAGE} unless from_snapshot is given"),
        ]
        | None
    ) = None
    from_snapshot: Name | None = None
    disk_gb: Annotated[int, Meta(ge=1, le=MAX_DISK_GB)] | None = None
    ssh_users: Annotated[list[SshUser], Meta(min_length=1, max_length=MAX_SSH_USERS)]
    allowed_ssh_cidrs: Annotated[list[Identifier], Meta(max_length=MAX_SSH_CIDRS)] = []
    mounts: Annotated[list[Mount], Meta(max_length=MAX_MOUNTS)] = []
    bootstrap_script: Annotated[str, Meta(max_length=MAX_BOOTSTRAP_SCRIPT_LENGTH)] | None = None
    configure: bool = True
    state: Annotated[
        Literal["running", "stopped"],
        Meta(description="the power state apply converges to: stopped keeps the disk and stack, not the machine"),
    ] = "running"
    autostop: Autostop | None = None
    # Zone failover: a create tries these zones in order, the next one when a zone has no capacity.
    zones: (
        Annotated[
            list[Identifier],
            Meta(
                min_length=1,
                max_length=MAX_ZONES,
                description="zones of the region to try in order when one has no capacity (instead of zone)",
            ),
        ]
        | None
    ) = None
    any_zone: Annotated[
        bool,
        Meta(description="try every zone of the region the catalogue lists, in its order, until one has capacity"),
    ] = False
    # [spot] docs/lifecycle.md, "Spot".
    spot: Annotated[
        bool, Meta(description="a spot machine (AWS spot, GCP Spot VM, Azure Spot priority): cheaper, and the cloud may take it back")
    ] = False
    max_price_per_hour: (
        Annotated[
            float,
            Meta(gt=0, le=MAX_PRICE_PER_HOUR, description="the most a spot machine may cost, USD per hour (AWS and Azure; GCP has none)"),
        ]
        | None
    ) = None
    on_preemption: Annotated[
        Literal["restart", "delete", "keep"],
        Meta(description="what orch does when the cloud takes the spot machine: start it again, delete the instance, or keep it preempted"),
    ] = "keep"
    # Region failover (docs/lifecycle.md, "Zone and region failover"): regions tried in this order.
    regions: (
        Annotated[
            list[Identifier],
            Meta(
                min_length=1,
                max_length=MAX_REGIONS,
                description="regions to try in order when one has no capacity (each in its default zone, "
                "or in the zones of it that zones lists, or in all its zones with any_zone)",
            ),
        ]
        | None
    ) = None


class InstanceDoc(_Model, kw_only=True):
    """kind: Instance — one cloud instance."""

    kind: Literal["Instance"] = "Instance"
    name: Name
    labels: Annotated[dict[str, str], Meta(max_length=MAX_LABELS)] = {}
    spec: InstanceSpec

    def to_dict(self) -> dict:
        data = msgspec.to_builtins(self)
        autostop = data["spec"].get("autostop")
        if autostop:  # whole numbers as written (60, not 60.0): the stored spec reads as the document did
            for key in ("idle_minutes", "below_percent"):
                if float(autostop[key]).is_integer():
                    autostop[key] = int(autostop[key])
        return data


class SnapshotDoc(_Model, kw_only=True):
    """kind: Snapshot — an image of an instance's root disk."""

    kind: Literal["Snapshot"] = "Snapshot"
    name: Name
    instance: Name

    def to_dict(self) -> dict:
        return msgspec.to_builtins(self)


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class SpecError(ValueError):
    def __init__(self, errors: Iterable[FieldError]):
        self.errors = list(errors)
        super().__init__("; ".join(str(error) for error in self.errors))


# ---------------------------------------------------------------- shape


_JSON_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
                    float: "a number", type(None): "null"}


def _describe(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


SHOWN_VALUE_LENGTH = 80  # error messages quote at most this much of a bad value


def _shown(value: str) -> str:
    """`value` quoted for an error message, cut short when long."""
    if len(value) <= SHOWN_VALUE_LENGTH:
        return repr(value)
    return f"{value[:SHOWN_VALUE_LENGTH]!r}... ({len(value)} characters)"


def _fullmatch(pattern: str, value: str) -> bool:
    """The whole of `value` matches `pattern`; character classes and \\d are ASCII only."""
    return re.fullmatch(pattern, value, flags=re.ASCII) is not None


def _check_shape(value: Any, info: mi.Type, path: str, errors: list[FieldError]) -> None:
    """Check `value` against a msgspec type, adding one error per bad field (not just the first)."""
    where = path or "document"
    if isinstance(info, mi.UnionType):
        if value is None and any(isinstance(t, mi.NoneType) for t in info.types):
            return
        (info,) = [t for t in info.types if not isinstance(t, mi.NoneType)]
    if isinstance(info, mi.Metadata):  # a description on the type: check the type it wraps
        info = info.type
    if isinstance(info, mi.StructType):
        if not isinstance(value, dict):
            errors.append(FieldError(where, f"expected an object, got {_describe(value)}"))
            return
        fields = {f.encode_name: f for f in info.fields}
        for key in value:
            if key not in fields:
                errors.append(FieldError(_join(path, str(key)), "unknown field"))
        for name, field in fields.items():
            if name in value:
                _check_shape(value[name], field.type, _join(path, name), errors)
            elif field.required:
                errors.append(FieldError(_join(path, name), "required"))
    elif isinstance(info, mi.LiteralType):
        if value not in info.values:
            choices = ", ".join(str(v) for v in info.values)
            shown = _shown(value) if isinstance(value, str) else _describe(value)
            errors.append(FieldError(where, f"unknown value {shown}; expected one of {choices}"))
    elif isinstance(info, mi.StrType):
        if not isinstance(value, str):
            errors.append(FieldError(where, f"expected a string, got {_describe(value)}"))
        elif info.min_length is not None and len(value) < info.min_length:
            errors.append(FieldError(where, "must not be empty"))
        elif info.max_length is not None and len(value) > info.max_length:
            errors.append(FieldError(where, f"{len(value)} characters; at most {info.max_length} are allowed"))
        elif info.pattern is not None and not _fullmatch(info.pattern, value):
            errors.append(FieldError(where, f"{_shown(value)} does not match {info.pattern}"))
    elif isinstance(info, mi.BoolType):
        if not isinstance(value, bool):
            errors.append(FieldError(where, f"expected a boolean, got {_describe(value)}"))
    elif isinstance(info, mi.IntType):
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(FieldError(where, f"expected an integer, got {_describe(value)}"))
        elif info.ge is not None and value < info.ge:
            errors.append(FieldError(where, f"must be at least {info.ge}"))
        elif info.le is not None and value > info.le:
            errors.append(FieldError(where, f"must be at most {info.le}"))
    elif isinstance(info, mi.FloatType):
        # JSON and YAML write 2 for 2.0: an integer is a number too (not a boolean).
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            errors.append(FieldError(where, f"expected a number, got {_describe(value)}"))
        elif value != value or value in (float("inf"), float("-inf")):
            errors.append(FieldError(where, "must be a finite number"))
        elif info.ge is not None and value < info.ge:
            errors.append(FieldError(where, f"must be at least {info.ge:g}"))
        elif info.gt is not None and value <= info.gt:
            errors.append(FieldError(where, f"must be more than {info.gt:g}"))
        elif info.le is not None and value > info.le:
            errors.append(FieldError(where, f"must be at most {info.le:g}"))
    elif isinstance(info, mi.ListType):
        if not isinstance(value, list):
            errors.append(FieldError(where, f"expected a list, got {_describe(value)}"))
            return
        if info.min_length is not None and len(value) < info.min_length:
            errors.append(FieldError(where, f"needs at least {info.min_length} item(s)"))
        if info.max_length is not None and len(value) > info.max_length:
            # Reported without looking at the items: there may be very many.
            errors.append(FieldError(where, f"{len(value)} items; at most {info.max_length} are allowed"))
            return
        for index, item in enumerate(value):
            _check_shape(item, info.item_type, f"{path}[{index}]", errors)
    elif isinstance(info, mi.DictType):
        if not isinstance(value, dict):
            errors.append(FieldError(where, f"expected an object, got {_describe(value)}"))
            return
        if info.max_length is not None and len(value) > info.max_length:
            errors.append(FieldError(where, f"{len(value)} entries; at most {info.max_length} are allowed"))
            return
        for key, item in value.items():
            _check_shape(key, info.key_type, _join(path, str(key)), errors)
            _check_shape(item, info.value_type, _join(path, str(key)), errors)
    else:  # a type this model does not use: keep the walker honest
        raise TypeError(f"no shape check for {info!r}")


def _convert[T](doc: Any, model: type[T]) -> T:
    errors: list[FieldError] = []
    _check_shape(doc, mi.type_info(model), "", errors)
    if errors:
        raise SpecError(errors)
    return msgspec.convert(doc, model)


# ---------------------------------------------------------------- meaning


def public_key_problem(text: str) -> str | None:
    """Why `text` is not a usable OpenSSH public key line, or None when it is."""
    line = text.strip(" \t\n")  # a key pasted from a .pub file ends with a newline
    if "\n" in line or "\r" in text:
        return "must be a single line"
    if any(unicodedata.category(char) in ("Cc", "Zl", "Zp") and char != "\t" for char in line):
        return "must not contain control characters or line separators"
    # sshd separates the fields with spaces and tabs only.
    parts = re.split(r"[ \t]+", line)
    if len(parts) < 2:
        return "expected '<type> <base64 key> [comment]'"
    key_type, blob = parts[0], parts[1]
    if key_type not in SSH_KEY_TYPES:
        return f"unsupported key type {_shown(key_type)} (one of {', '.join(sorted(SSH_KEY_TYPES))})"
    try:
        data = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return "key data is not valid base64"
    fields = _ssh_strings(data)
    if not fields:
        return "key data is not an SSH public key"
    embedded = fields[0].decode(errors="replace")
    if embedded != key_type:
        return f"key data is a {embedded!r} key, not {key_type!r}"
    if key_type == "ssh-rsa":
        if len(fields) != 3:
            return "RSA key data is truncated"
        bits = int.from_bytes(fields[2], "big").bit_length()
        if bits < MIN_RSA_BITS:
            return f"RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
    if key_type == "ssh-ed25519" and (len(fields) != 2 or len(fields[1]) != 32):
        return "Ed25519 key data is not 32 bytes"
    return None


def _ssh_strings(data: bytes) -> list[bytes]:
    """Split SSH wire-format length-prefixed strings; [] when the data is not made of them."""
    strings, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            return []
        length = int.from_bytes(data[offset : offset + 4], "big")
        offset += 4
        if offset + length > len(data):
            return []
        strings.append(data[offset : offset + length])
        offset += length
    return strings


def _check_labels(labels: dict[str, str], errors: list[FieldError]) -> None:
    for key, value in labels.items():
        if key in RESERVED_LABELS:
            errors.append(FieldError(f"labels.{key}", "reserved: the service sets this label"))
        elif not _fullmatch(LABEL_KEY_PATTERN, key):
            errors.append(
                FieldError(f"labels.{key}", "keys are lowercase letters, digits, '-' and '_', starting with a letter, at most 63 characters")
            )
        if not _fullmatch(LABEL_VALUE_PATTERN, value):
            errors.append(
                FieldError(f"labels.{key}", f"value {_shown(value)}: lowercase letters, digits, '-' and '_', at most 63 characters")
            )


def _did_you_mean(value: str, known) -> str:
    """"; did you mean X?" for the closest known name, or ""."""
    close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _check_location(cloud: Cloud, spec: InstanceSpec, errors: list[FieldError]) -> None:
    if spec.region is None:
        if spec.regions is None:
            errors.append(FieldError("spec.region", "required (or list spec.regions to try in turn)"))
        return
    if spec.region not in cloud.regions:
        errors.append(
            FieldError("spec.region", f"unknown {cloud.name} region {spec.region!r}{_did_you_mean(spec.region, cloud.regions)}")
        )
    elif spec.regions is not None and spec.region not in spec.regions:
        errors.append(FieldError(
            "spec.region",
            f"{spec.region!r} is not in spec.regions ({', '.join(spec.regions)}): leave spec.region out, "
            "or make it one of them (the regions are tried in spec.regions' order)",
        ))
    elif spec.zone is not None and not cloud.zone_belongs(spec.region, spec.zone):
        hint = _did_you_mean(spec.zone, cloud.zones(spec.region)) or f" (e.g. {', '.join(cloud.zones(spec.region))})"
        errors.append(FieldError("spec.zone", f"zone {spec.zone!r} is not in region {spec.region!r}{hint}"))


def _same_zone(cloud: Cloud, zone: str) -> str:
    """A zone's one spelling: Azure's `eastus-2` is zone `2`."""
    return zone.rsplit("-", 1)[-1] if cloud.name == "azure" else zone


def _check_regions(cloud: Cloud, spec: InstanceSpec, errors: list[FieldError]) -> bool:
    """regions: region failover's candidates, each a catalogue region, none twice, not with zone or
    from_snapshot. True when they are all valid (the zones can then be checked against them)."""
    if spec.regions is None:
        return True
    if cloud.name == "docker":
        errors.append(FieldError("spec.regions", "the docker target has a single location (local): no region to fail over to"))
        return False
    if spec.from_snapshot is not None:
        errors.append(FieldError(
            "spec.regions",
            "an instance from a snapshot is made where the snapshot's image is (one region): "
            "give spec.region, not spec.regions, with spec.from_snapshot",
        ))
    if spec.zone is not None:
        errors.append(FieldError("spec.zone", "give spec.zones (zones of the listed regions), not spec.zone, with spec.regions"))
    valid = True
    for index, region in enumerate(spec.regions):
        where = f"spec.regions[{index}]"
        if region not in cloud.regions:
            errors.append(FieldError(where, f"unknown {cloud.name} region {region!r}{_did_you_mean(region, cloud.regions)}"))
            valid = False
        elif region in spec.regions[:index]:
            errors.append(FieldError(where, f"region {region!r} is listed twice"))
            valid = False
    return valid


def _zone_region(cloud: Cloud, regions: list[str], zone: str) -> str | None:
    """The region of `regions` that `zone` is in, or None."""
    return next((region for region in regions if cloud.zone_belongs(region, zone)), None)


def _check_zones(cloud: Cloud, spec: InstanceSpec, errors: list[FieldError]) -> None:
    """zones / any_zone: zone failover's candidates, each in the region (or one of spec.regions), none
    twice, not with zone; with spec.regions each listed region has a zone in spec.zones."""
    if spec.zones is None and not spec.any_zone:
        return
    field = "spec.zones" if spec.zones is not None else "spec.any_zone"
    if spec.zone is not None and spec.regions is None:
        errors.append(FieldError(field, f"give either spec.zone or {field}, not both"))
    if spec.zones is not None and spec.any_zone:
        errors.append(FieldError("spec.any_zone", "give either spec.zones or spec.any_zone, not both"))
    if cloud.name == "docker":
        errors.append(FieldError(field, "the docker target has a single location (local): no zone to fail over to"))
        return
    if spec.regions is None and spec.region not in cloud.regions:
        return  # reported on spec.region
    regions = spec.regions if spec.regions is not None else [spec.region]
    seen: set[tuple[str, str]] = set()
    for index, zone in enumerate(spec.zones or []):
        where = f"spec.zones[{index}]"
        region = _zone_region(cloud, regions, zone)
        if region is None:
            known = [z for r in regions for z in cloud.zones(r)]
            hint = _did_you_mean(zone, known) or f" (e.g. {', '.join(known[:6])})"
            place = f"region {regions[0]!r}" if len(regions) == 1 else f"any of spec.regions ({', '.join(regions)})"
            errors.append(FieldError(where, f"zone {zone!r} is not in {place}{hint}"))
            continue
        if len(regions) > 1 and cloud.name == "azure" and "-" not in zone:
            errors.append(FieldError(where, f"zone {zone!r} could be in any of spec.regions: write it {region}-{zone} (region-number)"))
            continue
        if (region, _same_zone(cloud, zone)) in seen:
            errors.append(FieldError(where, f"zone {zone!r} is listed twice"))
        seen.add((region, _same_zone(cloud, zone)))
    if spec.zones is not None and spec.regions is not None:
        for index, region in enumerate(spec.regions):
            if not any(zone_region == region for zone_region, _ in seen):
                errors.append(FieldError(
                    f"spec.regions[{index}]",
                    f"no zone of {region!r} in spec.zones: list one (e.g. {cloud.zones(region)[0]}), drop the region, "
                    "or leave spec.zones out to try each region in its default zone",
                ))


@dataclass(frozen=True)
class Placement:
    """One attempt of a create with failover: a region, and a zone of it (None: the cloud chooses)."""

    region: str
    zone: str | None


def placements(spec: InstanceSpec) -> list[Placement] | None:
    """The places a create tries in turn (zone and region failover), or None when the spec names one
    place only. Region by region in spec.regions' order; in a region, the zones of spec.zones in it
    (in their order), or every catalogue zone (any_zone), or the cloud's default zone."""
    if spec.zones is None and not spec.any_zone and spec.regions is None:
        return None
    cloud = CLOUDS[spec.cloud]
    tried: list[Placement] = []
    for region in spec.regions if spec.regions is not None else [spec.region]:
        if spec.zones is not None:
            zones = [zone for zone in spec.zones if cloud.zone_belongs(region, zone)]
        elif spec.any_zone:
            # Azure numbers its zones: `eastus-1` says which region's zone 1 an attempt is in.
            zones = [f"{region}-{zone}" if cloud.name == "azure" else zone for zone in cloud.zones(region)]
        else:
            zones = [default_zone(cloud, region)]
        tried.extend(Placement(region, zone) for zone in zones)
    return tried


def placed(instance: InstanceDoc, place: Placement | None) -> InstanceDoc:
    """The document as its stack's program runs it in `place`: a zone or region list (failover) gives way to it."""
    spec = instance.spec
    if place is None or (spec.zones is None and not spec.any_zone and spec.regions is None):
        return instance
    if spec.zones is None and not spec.any_zone:  # regions only: the region's default zone, as parse fills it
        return msgspec.structs.replace(instance, spec=msgspec.structs.replace(
            spec, region=place.region, regions=None, zone=default_zone(CLOUDS[spec.cloud], place.region)))
    zone = place.zone if place.zone is not None else spec.zone
    return msgspec.structs.replace(
        instance, spec=msgspec.structs.replace(spec, region=place.region, regions=None, zone=zone, zones=None, any_zone=False)
    )


def _check_listed_machine_type(cloud: Cloud, spec: InstanceSpec, errors: list[FieldError]) -> bool:
    """True when machine_type is in the catalogue, or unlisted but allowed and well-formed."""
    machine_type = spec.machine_type
    if machine_type in cloud.machine_type_sizes:
        return True
    if spec.allow_unlisted_machine_type and cloud.name != "docker":
        if _fullmatch(cloud.machine_type_pattern, machine_type):
            return True
        errors.append(FieldError("spec.machine_type", f"{machine_type!r} is not a {cloud.name} machine type"))
        return False
    if cloud.name == "docker":  # the docker target's sizes are all there is
        escape = f" (one of {', '.join(cloud.machine_type_sizes)})"
    else:
        escape = " (set spec.allow_unlisted_machine_type: true for types newer than the catalogue)"
    suggestion = _did_you_mean(machine_type, cloud.machine_type_sizes)
    errors.append(
        FieldError("spec.machine_type", f"unknown type {machine_type} for {cloud.name}{suggestion}{escape}")
    )
    return False


def _check_machine_and_gpu(cloud: Cloud, spec: InstanceSpec, errors: list[FieldError]) -> Gpu | None:
    """Validate machine type and GPU; return the GPU the instance will have (filled in from the machine type)."""
    if cloud.name == "docker" and spec.gpu is not None:
        errors.append(FieldError("spec.gpu", f"the {cloud.name} target does not attach GPUs"))
        return None
    machine_type = spec.machine_type
    if machine_type is None:
        errors.append(FieldError("spec.machine_type", f"required on {cloud.name}"))
        return spec.gpu
    if not _check_listed_machine_type(cloud, spec, errors):
        return spec.gpu
    built_in = cloud.gpu_machine(machine_type)
    gpu = spec.gpu
    if built_in is not None:
        carried, _ = cloud.built_in_gpus(machine_type)
        if gpu is None:
            return Gpu(type=built_in.gpu_type, count=carried)
        if canonical_gpu_type(gpu.type) != built_in.gpu_type:
            errors.append(FieldError("spec.gpu.type", f"{machine_type} carries {built_in.gpu_type}, not {gpu.type}"))
        elif gpu.count != carried:
            errors.append(
                FieldError("spec.gpu.count", f"{machine_type} carries {carried} {built_in.gpu_type} GPU(s), not {gpu.count}")
            )
        return Gpu(type=built_in.gpu_type, count=carried)
    if gpu is None:
        return None
    attachable = cloud.attachable_gpu_families.get(machine_family(machine_type))
    if attachable is None:
        errors.append(
            FieldError("spec.gpu", f"machine type {machine_type} cannot carry a GPU (GPU machines: {cloud.gpu_families_hint})")
        )
        return gpu
    gpu_type = canonical_gpu_type(gpu.type)
    if gpu_type not in attachable:
        errors.append(
            FieldError("spec.gpu.type", f"{gpu.type} cannot be attached to {machine_type} (one of {', '.join(sorted(attachable))})")
        )
    elif gpu.count not in cloud.attachable_gpu_counts:
        counts = ", ".join(str(c) for c in sorted(cloud.attachable_gpu_counts))
        errors.append(FieldError("spec.gpu.count", f"{gpu.count} GPUs cannot be attached; one of {counts}"))
    return Gpu(type=gpu_type, count=gpu.count)


def _check_image_and_disk(cloud: Cloud, spec: InstanceSpec, gpu: Gpu | None, errors: list[FieldError]) -> tuple[str | None, int]:
    """Validate image and disk size; return (image name or None for a snapshot, disk size in GB)."""
    image_name = spec.image
    if image_name is not None and spec.from_snapshot is not None:
        errors.append(FieldError("spec.from_snapshot", "give either image or from_snapshot, not both"))
    if image_name is None and spec.from_snapshot is None:
        image_name = DEFAULT_IMAGE
    min_disk, needs = cloud.min_disk_gb, f"a {cloud.name} instance"
    if image_name is not None:
        image = cloud.images.get(image_name)
        if image is None:
            errors.append(
                FieldError("spec.image", f"unknown image {image_name!r} on {cloud.name} (one of {', '.join(cloud.images)})")
            )
            return image_name, spec.disk_gb or DEFAULT_DISK_GB
        if gpu is not None:
            if image.gpu is None:
                errors.append(FieldError("spec.image", f"no GPU image for {image_name} on {cloud.name}"))
            else:
                image, needs = image.gpu, f"the {cloud.name} GPU image for {image_name}"
        else:
            needs = f"{image_name} on {cloud.name}"
        min_disk = image.min_disk_gb
    disk_gb = spec.disk_gb if spec.disk_gb is not None else max(DEFAULT_DISK_GB, min_disk)
    if disk_gb < min_disk:
        errors.append(FieldError("spec.disk_gb", f"{disk_gb} GB is smaller than the {min_disk} GB {needs} needs"))
    return image_name, disk_gb


def _check_ssh_users(users: list[SshUser], errors: list[FieldError]) -> None:
    seen: set[str] = set()
    for index, user in enumerate(users):
        where = f"spec.ssh_users[{index}]"
        if user.name in RESERVED_USER_NAMES:
            errors.append(FieldError(f"{where}.name", f"{user.name!r} is a system or default login account"))
        elif user.name in seen:
            errors.append(FieldError(f"{where}.name", f"duplicate user {user.name!r}"))
        seen.add(user.name)
        problem = public_key_problem(user.public_key)
        if problem:
            errors.append(FieldError(f"{where}.public_key", problem))


def _check_cidrs(cloud: Cloud, cidrs: list[str], errors: list[FieldError]) -> None:
    if not cidrs and cloud.name != "docker":
        errors.append(FieldError("spec.allowed_ssh_cidrs", f"at least one CIDR is required on {cloud.name}"))
    for index, cidr in enumerate(cidrs):
        where = f"spec.allowed_ssh_cidrs[{index}]"
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            errors.append(FieldError(where, f"{cidr!r} is not a CIDR (e.g. 203.0.113.0/24)"))
            continue
        if network.version != 4:
            errors.append(FieldError(where, "IPv6 ranges are not supported: instances get IPv4 public addresses"))
        elif network.with_prefixlen != cidr:
            if "/" not in cidr:
                errors.append(FieldError(where, f"{cidr!r} needs a prefix length (e.g. {cidr}/32)"))
            else:
                errors.append(FieldError(where, f"{cidr!r} has host bits set (did you mean {network}?)"))


def _mount_path_problem(path: str, user_names: set[str]) -> str | None:
    """Why a bucket must not be mounted at `path`, or None when it may."""
    if not path.startswith("/"):
        return f"{_shown(path)} must be an absolute path"
    if posixpath.normpath(path) != path or path.startswith("//"):  # normpath keeps a leading '//'
        return f"{_shown(path)} is not normalized (no '..', '.', '//' or trailing '/')"
    if path in SYSTEM_PATHS:
        return f"{path} is a system directory"
    if not _fullmatch(MOUNT_PATH_PATTERN, path):
        return f"{_shown(path)}: only ASCII letters, digits and . _ + @ - may appear between the slashes"
    components = path.split("/")[1:]
    trees = [tree for tree in SYSTEM_TREES if path == tree or path.startswith(tree + "/")]
    if trees or components[0].startswith(SYSTEM_TREE_PREFIXES):
        return f"{path} is in a system directory ({trees[0] if trees else '/' + components[0]})"
    if ".ssh" in components:
        return f"{path} is in a .ssh directory"
    if len(components) == 2 and components[0] == "home" and components[1] in user_names:
        return f"{path} is the home directory of SSH user {components[1]!r}"
    return None


def _check_mounts(mounts: list[Mount], users: list[SshUser], errors: list[FieldError]) -> None:
    user_names = {user.name for user in users}
    seen: list[str] = []
    for index, mount in enumerate(mounts):
        where = f"spec.mounts[{index}]"
        if not _fullmatch(BUCKET_PATTERN, mount.bucket) or ".." in mount.bucket:
            errors.append(FieldError(f"{where}.bucket", f"{_shown(mount.bucket)} is not a bucket name"))
        path = mount.path
        problem = _mount_path_problem(path, user_names)
        if problem is None:
            if path in seen:
                problem = f"duplicate mount path {path}"
            else:
                # One mount inside another would depend on their order and write into a bucket.
                nested = [other for other in seen if path.startswith(other + "/") or other.startswith(path + "/")]
                if nested:
                    problem = f"{path} and {nested[0]} are inside one another"
            seen.append(path)
        if problem:
            errors.append(FieldError(f"{where}.path", problem))


def _check_autostop(autostop: Autostop | None, gpu: Gpu | None, errors: list[FieldError]) -> None:
    """A GPU metric needs a GPU: an instance without one would never look idle (nor busy) by it."""
    if autostop is not None and autostop.metric == "gpu" and gpu is None:
        errors.append(FieldError(
            "spec.autostop.metric",
            "gpu: the instance has no GPU (spec.gpu or a GPU machine type); use metric cpu or any",
        ))
def _check_spot(spec: InstanceSpec, errors: list[FieldError]) -> None:
    if spec.spot and spec.cloud not in SPOT_CLOUDS:
        errors.append(FieldError("spec.spot", f"{spec.cloud} has no spot machines (spot is for {', '.join(SPOT_CLOUDS)})"))
    if spec.max_price_per_hour is not None:
        if not spec.spot:
            errors.append(FieldError("spec.max_price_per_hour", "a maximum price is for spot machines: set spot: true"))
        elif spec.cloud in SPOT_CLOUDS and spec.cloud not in MAX_PRICE_CLOUDS:
            errors.append(
                FieldError(
                    "spec.max_price_per_hour",
                    f"Spot VMs on {spec.cloud} take no maximum price (they cost the current spot price); "
                    f"leave it out (it is for {' and '.join(MAX_PRICE_CLOUDS)})",
                )
            )
    if spec.on_preemption != "keep" and not spec.spot:
        errors.append(FieldError("spec.on_preemption", "only a spot machine is preempted: set spot: true"))


def parse_instance(doc: dict, *, enabled_clouds: Iterable[str] | None = None) -> InstanceDoc:
    """Validate an Instance document and return it with its defaults filled in; raises SpecError."""
    instance = _convert(doc, InstanceDoc)
    spec = instance.spec
    errors: list[FieldError] = []
    _check_labels(instance.labels, errors)
    cloud = CLOUDS[spec.cloud]
    if enabled_clouds is not None and spec.cloud not in set(enabled_clouds):
        enabled = ", ".join(sorted(enabled_clouds)) or "none"
        errors.append(FieldError("spec.cloud", f"cloud {spec.cloud!r} is not enabled in this deployment (ORCH_CLOUDS enables: {enabled})"))
    _check_location(cloud, spec, errors)
    if _check_regions(cloud, spec, errors):
        _check_zones(cloud, spec, errors)
    gpu = _check_machine_and_gpu(cloud, spec, errors)
    image, disk_gb = _check_image_and_disk(cloud, spec, gpu, errors)
    _check_ssh_users(spec.ssh_users, errors)
    _check_cidrs(cloud, spec.allowed_ssh_cidrs, errors)
    _check_mounts(spec.mounts, spec.ssh_users, errors)
    _check_autostop(spec.autostop, gpu, errors)
    _check_spot(spec, errors)
    if errors:
        raise SpecError(errors)
    filled = msgspec.structs.replace(
        spec,
        # Region failover without a region: the first one of the list (the record's until it lands).
        region=spec.region if spec.region is not None else spec.regions[0],
        # A zone or region list (failover) has no default zone: each attempt is given its own.
        zone=spec.zone
        if spec.zone is not None or spec.zones is not None or spec.any_zone or spec.regions is not None
        else default_zone(cloud, spec.region),
        gpu=gpu,
        image=None if spec.from_snapshot else image,
        disk_gb=disk_gb,
    )
    return msgspec.structs.replace(instance, spec=filled)


def parse_snapshot(doc: dict) -> SnapshotDoc:
    """Validate a Snapshot document; raises SpecError."""
    return _convert(doc, SnapshotDoc)


def parse_document(doc: dict, *, enabled_clouds: Iterable[str] | None = None) -> InstanceDoc | SnapshotDoc:
    """Validate an Instance or Snapshot document, by its `kind`."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind == "Instance":
        return parse_instance(doc, enabled_clouds=enabled_clouds)
    if kind == "Snapshot":
        return parse_snapshot(doc)
    if not isinstance(doc, dict):
        raise SpecError([FieldError("document", f"expected an object, got {_describe(doc)}")])
    shown = _shown(kind) if isinstance(kind, str) else repr(kind) if kind is None else _describe(kind)
    raise SpecError([FieldError("kind", f"expected Instance or Snapshot, got {shown}")])


def json_schema() -> dict:
    """JSON Schema (2020-12) of a document: an Instance or a Snapshot."""
    refs, defs = msgspec.json.schema_components([InstanceDoc, SnapshotDoc], ref_template="#/$defs/{name}")
    for kind in ("InstanceDoc", "SnapshotDoc"):
        # Files must say which kind a document is; the parse functions default it.
        defs[kind]["required"] = ["kind", *defs[kind].get("required", [])]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "orch document",
        "oneOf": list(refs),
        "$defs": defs,
    }
