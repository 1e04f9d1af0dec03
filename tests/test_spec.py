"""The Instance/Snapshot model: defaults, canonical form, JSON Schema, and one case per kind of bad input."""

from __future__ import annotations

import base64
import copy
import functools
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from stacks import spec
from stacks.catalog import CLOUDS
from stacks.spec import SpecError, json_schema, parse_document, parse_instance, parse_snapshot


@functools.cache
def public_key(kind: str = "ed25519", comment: str = "alice@example") -> str:
    """A real OpenSSH public key line (cached: RSA generation is slow)."""
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind.startswith("rsa"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(kind.removeprefix("rsa") or 2048))
    else:
        raise ValueError(kind)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{line.decode()} {comment}"


BASE_SPECS = {
    "aws": {"region": "us-east-1", "zone": "us-east-1a", "machine_type": "t3.medium"},
    "gcp": {"region": "europe-west4", "zone": "europe-west4-b", "machine_type": "e2-standard-2"},
    "azure": {"region": "westeurope", "zone": "2", "machine_type": "Standard_D2s_v5"},
    "docker": {"region": "local", "machine_type": "small"},
}


def instance_document(cloud: str = "aws", name: str = "web-1", labels: dict | None = None, **spec) -> dict:
    """A valid Instance document for `cloud`; keyword arguments replace (or, when None, remove) spec fields."""
    body = {
        "cloud": cloud,
        **BASE_SPECS[cloud],
        "disk_gb": 40,
        "ssh_users": [{"name": "alice", "public_key": public_key(), "sudo": True}],
        "allowed_ssh_cidrs": ["203.0.113.0/24"],
    }
    for key, value in spec.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return {"kind": "Instance", "name": name, "labels": {"team": "ml"} if labels is None else labels, "spec": body}


def errors_of(doc: dict, **kwargs) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_instance(doc, **kwargs)
    return {error.field: error.message for error in caught.value.errors}


# ---------------------------------------------------------------- valid documents


@pytest.mark.parametrize("cloud", sorted(BASE_SPECS))
def test_valid_document_per_cloud(cloud):
    instance = parse_instance(instance_document(cloud))
    assert instance.spec.cloud == cloud
    assert instance.spec.image == "ubuntu-22.04"
    assert instance.spec.ssh_users[0].name == "alice"


def test_defaults_are_filled_in_and_the_canonical_form_round_trips():
    doc = instance_document("gcp", disk_gb=None, zone=None, region="us-east1", machine_type="g2-standard-8")
    instance = parse_instance(doc)
    spec = instance.spec
    assert spec.zone == "us-east1-b"  # us-east1 has no zone -a
    assert (spec.gpu.type, spec.gpu.count) == ("nvidia-l4", 1)  # built into g2
    assert spec.disk_gb == 30  # the GPU image needs 30 GB: the default is at least that
    assert spec.configure is True and spec.mounts == [] and spec.bootstrap_script is None
    canonical = instance.to_dict()
    assert json.loads(json.dumps(canonical)) == canonical
    assert parse_instance(canonical).to_dict() == canonical


def test_gpu_image_raises_default_disk_size():
    instance = parse_instance(instance_document("aws", machine_type="g5.xlarge", disk_gb=None))
    assert instance.spec.disk_gb == 75


def test_gpu_type_aliases_are_canonicalized():
    doc = instance_document("gcp", machine_type="n1-standard-8", gpu={"type": "nvidia-tesla-t4", "count": 2})
    assert parse_instance(doc).spec.gpu.type == "nvidia-t4"


def test_from_snapshot_has_no_image():
    instance = parse_instance(instance_document("aws", from_snapshot="snap-1"))
    assert instance.spec.image is None and instance.spec.from_snapshot == "snap-1"


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa3072"])
def test_supported_key_types(kind):
    doc = instance_document(ssh_users=[{"name": "bob", "public_key": public_key(kind)}])
    assert parse_instance(doc).spec.ssh_users[0].sudo is False


def test_parse_document_routes_by_kind():
    assert parse_document(instance_document()).kind == "Instance"
    snapshot = parse_document({"kind": "Snapshot", "name": "snap-1", "instance": "web-1"})
    assert snapshot.to_dict() == {"kind": "Snapshot", "name": "snap-1", "instance": "web-1"}
    with pytest.raises(SpecError, match="kind: expected Instance or Snapshot"):
        parse_document({"kind": "Volume", "name": "x"})


def test_json_schema_describes_both_kinds():
    schema = json_schema()
    assert {ref["$ref"] for ref in schema["oneOf"]} == {"#/$defs/InstanceDoc", "#/$defs/SnapshotDoc"}
    instance = schema["$defs"]["InstanceDoc"]
    assert set(instance["required"]) == {"kind", "name", "spec"}
    assert instance["additionalProperties"] is False
    spec = schema["$defs"]["InstanceSpec"]
    assert sorted(spec["properties"]["cloud"]["enum"]) == ["aws", "azure", "docker", "gcp"]
    assert "ssh_users" in spec["required"]
    assert schema["$defs"]["SnapshotDoc"]["required"] == ["kind", "name", "instance"]
    json.dumps(schema)


# ---------------------------------------------------------------- bad documents


@pytest.mark.parametrize("name", ["Web", "1web", "web_1", "web-", "a" * 64, ""])
def test_bad_names(name):
    assert "does not match" in errors_of(instance_document(name=name))["name"]


def test_bad_snapshot_documents():
    with pytest.raises(SpecError) as caught:
        parse_snapshot({"kind": "Snapshot", "name": "Snap", "extra": 1})
    assert {e.field for e in caught.value.errors} == {"name", "extra", "instance"}


def test_unknown_cloud():
    doc = instance_document()
    doc["spec"]["cloud"] = "oracle"
    assert errors_of(doc)["spec.cloud"] == "unknown value 'oracle'; expected one of aws, azure, docker, gcp"


def test_disabled_cloud():
    message = errors_of(instance_document("azure"), enabled_clouds=["aws", "docker"])["spec.cloud"]
    assert "not enabled" in message and "aws, docker" in message
    parse_instance(instance_document("aws"), enabled_clouds=["aws"])


@pytest.mark.parametrize(
    ("cloud", "region", "zone", "field"),
    [
        ("aws", "us-east-9", None, "spec.region"),
        ("aws", "us-east-1", "us-west-2a", "spec.zone"),
        ("aws", "us-east-1", "us-east-1z", "spec.zone"),
        ("gcp", "us-east-1", None, "spec.region"),
        ("gcp", "europe-west4", "europe-west1-b", "spec.zone"),
        ("azure", "eastus", "4", "spec.zone"),
        ("azure", "eastus", "westus-1", "spec.zone"),
        ("azure", "East US", None, "spec.region"),
        ("docker", "us-east-1", None, "spec.region"),
    ],
)
def test_region_and_zone(cloud, region, zone, field):
    doc = instance_document(cloud, region=region, zone=zone)
    assert field in errors_of(doc)


@pytest.mark.parametrize(
    ("cloud", "machine_type", "gpu", "field", "text"),
    [
        ("aws", "t3.large", {"type": "nvidia-t4"}, "spec.gpu", "cannot carry a GPU"),
        ("aws", "g5.xlarge", {"type": "nvidia-t4"}, "spec.gpu.type", "carries nvidia-a10g"),
        ("aws", "g5.xlarge", {"type": "nvidia-a10g", "count": 4}, "spec.gpu.count", "carries 1"),
        ("gcp", "e2-standard-4", {"type": "nvidia-t4"}, "spec.gpu", "cannot carry a GPU"),
        ("gcp", "n1-standard-8", {"type": "nvidia-l4"}, "spec.gpu.type", "cannot be attached"),
        ("gcp", "n1-standard-8", {"type": "nvidia-t4", "count": 3}, "spec.gpu.count", "cannot be attached"),
        ("gcp", "a2-highgpu-2g", {"type": "nvidia-a100", "count": 1}, "spec.gpu.count", "carries 2"),
        ("azure", "Standard_D4s_v5", {"type": "nvidia-t4"}, "spec.gpu", "cannot carry a GPU"),
        ("azure", "Standard_NC6s_v3", {"type": "nvidia-t4"}, "spec.gpu.type", "carries nvidia-v100"),
        ("docker", "local", {"type": "nvidia-t4"}, "spec.gpu", "does not attach GPUs"),
    ],
)
def test_gpu_on_machine_type(cloud, machine_type, gpu, field, text):
    doc = instance_document(cloud, machine_type=machine_type, gpu=gpu, disk_gb=100)
    assert text in errors_of(doc)[field]


@pytest.mark.parametrize(
    ("cloud", "machine_type"),
    [("aws", "t3"), ("aws", None), ("gcp", "E2_STANDARD"), ("azure", "D2s_v5")],
)
def test_bad_or_missing_machine_type(cloud, machine_type):
    assert "spec.machine_type" in errors_of(instance_document(cloud, machine_type=machine_type))


@pytest.mark.parametrize(
    ("cloud", "spec", "needs"),
    [
        ("aws", {"disk_gb": 4}, "8 GB"),
        ("aws", {"machine_type": "g5.xlarge", "disk_gb": 50}, "75 GB"),
        ("gcp", {"disk_gb": 9}, "10 GB"),
        ("azure", {"disk_gb": 20}, "30 GB"),
        ("azure", {"machine_type": "Standard_NC4as_T4_v3", "disk_gb": 40}, "64 GB"),
    ],
)
def test_disk_too_small_for_image(cloud, spec, needs):
    message = errors_of(instance_document(cloud, **spec))["spec.disk_gb"]
    assert "smaller than" in message and needs in message


def test_image_rules():
    assert "unknown image" in errors_of(instance_document(image="centos-7"))["spec.image"]
    both = errors_of(instance_document(image="ubuntu-22.04", from_snapshot="snap-1"))
    assert "not both" in both["spec.from_snapshot"]
    no_gpu_image = errors_of(instance_document(image="debian-12", machine_type="g5.xlarge", disk_gb=100))
    assert "no GPU image" in no_gpu_image["spec.image"]
    assert "does not match" in errors_of(instance_document(from_snapshot="Snap_1"))["spec.from_snapshot"]


@pytest.mark.parametrize(
    ("cidr", "text"),
    [
        ("10.0.0.0/33", "is not a CIDR"),
        ("not-a-cidr", "is not a CIDR"),
        ("10.0.0.5/8", "host bits set"),
        ("203.0.113.7", "needs a prefix length"),
        ("2001:db8::/32", "IPv6"),
    ],
)
def test_bad_cidrs(cidr, text):
    doc = instance_document(allowed_ssh_cidrs=["198.51.100.0/24", cidr])
    assert text in errors_of(doc)["spec.allowed_ssh_cidrs[1]"]


def test_clouds_need_an_allowed_cidr_but_docker_does_not():
    assert "at least one CIDR" in errors_of(instance_document("gcp", allowed_ssh_cidrs=[]))["spec.allowed_ssh_cidrs"]
    parse_instance(instance_document("docker", allowed_ssh_cidrs=[]))


def _key_with_blob(key_type: str, blob: bytes) -> str:
    return f"{key_type} {base64.b64encode(blob).decode()} x@y"


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("", "expected '<type> <base64 key> [comment]'"),
        ("ssh-ed25519", "expected '<type> <base64 key> [comment]'"),
        ("ssh-dss AAAAB3NzaC1kc3M= x", "unsupported key type"),
        ("ssh-ed25519 not*base64 x", "not valid base64"),
        (public_key("ed25519").replace("ssh-ed25519", "ssh-rsa", 1), "is a 'ssh-ed25519' key, not 'ssh-rsa'"),
        (_key_with_blob("ssh-ed25519", b"\x00\x00\x01\x00short"), "not an SSH public key"),
        (_key_with_blob("ssh-ed25519", _ssh_string(b"ssh-ed25519") + _ssh_string(b"x" * 16)), "not 32 bytes"),
        (public_key("rsa1024"), "at least 2048 are required"),
        (public_key() + "\n" + public_key("ecdsa"), "single line"),
        ('command="/bin/sh" ' + public_key(), "unsupported key type"),
    ],
    # Fixed ids: the generated keys differ per process, and xdist's workers must collect the same tests.
    ids=["empty", "type only", "dss", "bad base64", "type mismatch", "not a key", "short ed25519", "rsa1024",
         "two lines", "options"],
)
def test_malformed_ssh_keys(key, text):
    doc = instance_document(ssh_users=[{"name": "bob", "public_key": key}])
    assert text in errors_of(doc)["spec.ssh_users[0].public_key"]


def test_ssh_user_names():
    users = [
        {"name": "alice", "public_key": public_key()},
        {"name": "alice", "public_key": public_key()},
        {"name": "root", "public_key": public_key()},
    ]
    errors = errors_of(instance_document(ssh_users=users))
    assert "duplicate user 'alice'" in errors["spec.ssh_users[1].name"]
    assert "system or default login account" in errors["spec.ssh_users[2].name"]
    bad_name = [{"name": "Bob", "public_key": public_key()}]
    assert "does not match" in errors_of(instance_document(ssh_users=bad_name))["spec.ssh_users[0].name"]
    assert "needs at least 1" in errors_of(instance_document(ssh_users=[]))["spec.ssh_users"]


@pytest.mark.parametrize(
    ("mount", "field", "text"),
    [
        ({"bucket": "data", "path": "mnt/data"}, "path", "absolute"),
        ({"bucket": "data", "path": "/mnt/../etc"}, "path", "not normalized"),
        ({"bucket": "data", "path": "/mnt/data/"}, "path", "not normalized"),
        ({"bucket": "data", "path": "/etc"}, "path", "system directory"),
        ({"bucket": "Bad_Bucket!", "path": "/mnt/x"}, "bucket", "not a bucket name"),
        ({"bucket": "data", "path": "/mnt/data"}, "path", "duplicate mount path"),
    ],
)
def test_bad_mounts(mount, field, text):
    doc = instance_document(mounts=[{"bucket": "data", "path": "/mnt/data"}, mount])
    assert text in errors_of(doc)[f"spec.mounts[1].{field}"]


def test_labels():
    errors = errors_of(instance_document(labels={"Team": "ml", "env": "Prod", "managed-by": "me"}))
    assert "keys are lowercase" in errors["labels.Team"]
    assert "value 'Prod'" in errors["labels.env"]
    assert "reserved" in errors["labels.managed-by"]


def test_unknown_fields_and_wrong_types_are_all_reported():
    doc = instance_document(disk_gb="100", configure="yes", ssh_users=[{"name": "bob", "key": "x"}])
    doc["spec"]["colour"] = "blue"
    doc["spec"]["gpu"] = {"type": "nvidia-t4", "count": True}
    doc["labels"] = {"team": 3}
    errors = errors_of(doc)
    assert errors == {
        "labels.team": "expected a string, got an integer",
        "spec.colour": "unknown field",
        "spec.gpu.count": "expected an integer, got a boolean",
        "spec.disk_gb": "expected an integer, got a string",
        "spec.ssh_users[0].key": "unknown field",
        "spec.ssh_users[0].public_key": "required",
        "spec.configure": "expected a boolean, got a string",
    }


def test_error_ranges_and_missing_fields():
    doc = instance_document(disk_gb=0, gpu={"type": "nvidia-t4", "count": 99}, region=None)
    doc["spec"].pop("cloud")
    errors = errors_of(doc)
    assert errors["spec.disk_gb"] == "must be at least 1"
    assert errors["spec.gpu.count"] == "must be at most 16"
    assert errors["spec.cloud"] == "required"
    # region is optional in the schema (spec.regions may stand for it): missing, it is a meaning error.
    assert errors_of(instance_document(region=None))["spec.region"] == "required (or list spec.regions to try in turn)"
    assert errors_of([1]) == {"document": "expected an object, got a list"}


def test_semantic_errors_are_collected_together_and_named():
    doc = instance_document(disk_gb=2, allowed_ssh_cidrs=["bad"], zone="us-west-2a")
    doc["spec"]["ssh_users"][0]["public_key"] = "ssh-rsa AAAA"
    with pytest.raises(SpecError) as caught:
        parse_instance(doc)
    fields = [e.field for e in caught.value.errors]
    assert fields == ["spec.zone", "spec.disk_gb", "spec.ssh_users[0].public_key", "spec.allowed_ssh_cidrs[0]"]
    assert str(caught.value).startswith(
        "spec.zone: zone 'us-west-2a' is not in region 'us-east-1'; did you mean us-east-1a?; spec.disk_gb:"
    )
    assert isinstance(caught.value, ValueError)


def test_input_document_is_not_modified():
    doc = instance_document(disk_gb=None)
    before = copy.deepcopy(doc)
    parse_instance(doc)
    assert doc == before


def test_docker_sizes_are_the_docker_machine_types():
    parse_instance(instance_document("docker", machine_type="large"))
    message = errors_of(instance_document("docker", machine_type="huge"))["spec.machine_type"]
    assert message == "unknown type huge for docker (one of small, medium, large, xlarge)"
    # The escape is for cloud types newer than the catalogue: docker's sizes are all there is.
    assert "spec.machine_type" in errors_of(
        instance_document("docker", machine_type="huge", allow_unlisted_machine_type=True)
    )


@pytest.mark.parametrize(
    ("cloud", "typed", "field", "message"),
    [
        ("aws", {"machine_type": "g5.xlarg"}, "spec.machine_type",
         "unknown type g5.xlarg for aws; did you mean g5.xlarge? "
         "(set spec.allow_unlisted_machine_type: true for types newer than the catalogue)"),
        ("gcp", {"machine_type": "e2-standrd-4"}, "spec.machine_type",
         "unknown type e2-standrd-4 for gcp; did you mean e2-standard-4? "
         "(set spec.allow_unlisted_machine_type: true for types newer than the catalogue)"),
        ("azure", {"machine_type": "Standard_D2s_v9"}, "spec.machine_type",
         "unknown type Standard_D2s_v9 for azure; did you mean Standard_D2s_v5? "
         "(set spec.allow_unlisted_machine_type: true for types newer than the catalogue)"),
        ("aws", {"region": "us-east1", "zone": None}, "spec.region", "unknown aws region 'us-east1'; did you mean us-east-1?"),
        ("gcp", {"zone": "europe-west4a"}, "spec.zone",
         "zone 'europe-west4a' is not in region 'europe-west4'; did you mean europe-west4-a?"),
    ],
)
def test_near_misses_of_the_catalogue_suggest_the_listed_name(cloud, typed, field, message):
    assert errors_of(instance_document(cloud, **typed))[field] == message


def test_a_type_newer_than_the_catalogue_passes_with_the_explicit_escape():
    newer = instance_document("aws", machine_type="m9z.large", allow_unlisted_machine_type=True)
    assert parse_instance(newer).spec.machine_type == "m9z.large"
    assert "spec.machine_type" in errors_of(instance_document("aws", machine_type="m9z.large"))
    # Still a well-formed name of that cloud, and its GPUs still checked.
    assert "spec.machine_type" in errors_of(instance_document("aws", machine_type="m9z", allow_unlisted_machine_type=True))


def test_every_listed_machine_type_validates_and_gpu_types_carry_their_gpus():
    for cloud in CLOUDS.values():
        for machine in cloud.machine_types():
            assert _fullmatch_type(cloud, machine.name), machine
            assert (machine.gpus > 0) == (machine.gpu_type is not None), machine
    g5 = next(m for m in CLOUDS["aws"].machine_types() if m.name == "g5.xlarge")
    assert (g5.vcpus, g5.memory_gb, g5.gpus, g5.gpu_type) == (4, 16, 1, "nvidia-a10g")


def _fullmatch_type(cloud, name: str) -> bool:
    import re

    return re.fullmatch(cloud.machine_type_pattern, name) is not None


# ---------------------------------------------------------------- whole-string patterns (issue 11, item 4)

# A trailing newline passed `re.search` with `$`; Unicode letters and digits pass `\d`/`\w`-style classes.
AWKWARD_ENDINGS = ["\n", "\r", "\x00", " ", "\t", "\u2028"]
UNICODE_LOOKALIKES = ["wéb", "web\u0663", "\uff57eb", "web\u212a", "ſeb"]  # é, Arabic-Indic 3, fullwidth w, Kelvin K, long s


@pytest.mark.parametrize("name", [f"web-1{ending}" for ending in AWKWARD_ENDINGS] + UNICODE_LOOKALIKES)
def test_instance_and_snapshot_names_are_matched_whole(name):
    assert "does not match" in errors_of(instance_document(name=name))["name"]
    with pytest.raises(SpecError) as caught:
        parse_snapshot({"kind": "Snapshot", "name": name, "instance": name})
    assert {error.field for error in caught.value.errors} == {"name", "instance"}


@pytest.mark.parametrize("user", [f"bob{ending}" for ending in AWKWARD_ENDINGS] + ["bob\nno", "bób", "bob\u0663", "ſam"])
def test_user_names_are_matched_whole(user):
    doc = instance_document(ssh_users=[{"name": user, "public_key": public_key(), "sudo": False}])
    assert "does not match" in errors_of(doc)["spec.ssh_users[0].name"]


@pytest.mark.parametrize("bucket", [f"my-data{ending}" for ending in AWKWARD_ENDINGS] + ["my-dáta", "data\u0663x", "my..data"])
def test_bucket_names_are_matched_whole(bucket):
    doc = instance_document(mounts=[{"bucket": bucket, "path": "/mnt/data"}])
    assert "is not a bucket name" in errors_of(doc)["spec.mounts[0].bucket"]


@pytest.mark.parametrize("text", [f"ml{ending}" for ending in AWKWARD_ENDINGS] + ["mł", "ml\u0663", "\u212aey"])
def test_label_keys_and_values_are_matched_whole(text):
    errors = errors_of(instance_document(labels={text: "ok", "team": text}))
    assert "keys are lowercase" in errors[f"labels.{text}"]
    assert f"value {text!r}" in errors["labels.team"]


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u2029"])
def test_key_lines_with_control_characters_are_refused(char):
    doc = instance_document(ssh_users=[{"name": "bob", "public_key": public_key(comment=f"bob{char}x")}])
    assert "control characters" in errors_of(doc)["spec.ssh_users[0].public_key"]


def test_key_fields_are_separated_by_spaces_and_tabs_only():
    key_type, blob, comment = public_key().split(" ", 2)
    parse_instance(instance_document(ssh_users=[{"name": "bob", "public_key": f"{key_type}\t{blob} {comment}\n"}]))
    glued = f"{key_type}\u00a0{blob} {comment}"  # to sshd, type and key are one field
    doc = instance_document(ssh_users=[{"name": "bob", "public_key": glued}])
    assert "unsupported key type 'ssh-ed25519\\xa0AAAA" in errors_of(doc)["spec.ssh_users[0].public_key"]


def test_error_messages_quote_long_values_short():
    errors = errors_of(instance_document(name="x" * 100_000 + "\n", region="r" * 100_000))
    assert len(errors["name"]) < 300 and "100001 characters" in errors["name"]
    assert len(errors["spec.region"]) < 300


# ---------------------------------------------------------------- size bounds (issue 11, item 6)


def test_a_one_megabyte_key_comment_is_refused():
    doc = instance_document(ssh_users=[{"name": "bob", "public_key": public_key(comment="c" * 1_000_000)}])
    message = errors_of(doc)["spec.ssh_users[0].public_key"]
    assert message.endswith(f"at most {spec.MAX_PUBLIC_KEY_LENGTH} are allowed"), message


def test_a_key_at_the_bound_is_accepted():
    line = public_key("rsa4096")
    key = line + " " + "c" * (spec.MAX_PUBLIC_KEY_LENGTH - len(line) - 1)
    assert len(key) == spec.MAX_PUBLIC_KEY_LENGTH
    parse_instance(instance_document(ssh_users=[{"name": "bob", "public_key": key}]))


def test_twenty_thousand_users_are_refused_naming_the_field():
    users = [{"name": f"u{index}", "public_key": public_key()} for index in range(20_000)]
    errors = errors_of(instance_document(ssh_users=users))
    assert errors == {"spec.ssh_users": f"20000 items; at most {spec.MAX_SSH_USERS} are allowed"}


@pytest.mark.parametrize(
    ("field", "too_many", "bound"),
    [
        ("ssh_users", [{"name": f"u{i}", "public_key": public_key()} for i in range(spec.MAX_SSH_USERS + 1)], spec.MAX_SSH_USERS),
        ("allowed_ssh_cidrs", [f"10.0.{i}.0/24" for i in range(spec.MAX_SSH_CIDRS + 1)], spec.MAX_SSH_CIDRS),
        ("mounts", [{"bucket": "data", "path": f"/mnt/m{i}"} for i in range(spec.MAX_MOUNTS + 1)], spec.MAX_MOUNTS),
    ],
)
def test_list_bounds(field, too_many, bound):
    parse_instance(instance_document(**{field: too_many[:bound]}))
    message = errors_of(instance_document(**{field: too_many}))[f"spec.{field}"]
    assert message == f"{bound + 1} items; at most {bound} are allowed"


def test_label_count_bound():
    labels = {f"k{i}": "v" for i in range(spec.MAX_LABELS)}
    parse_instance(instance_document(labels=labels))
    errors = errors_of(instance_document(labels={**labels, "one-more": "v"}))
    assert errors == {"labels": f"{spec.MAX_LABELS + 1} entries; at most {spec.MAX_LABELS} are allowed"}


def test_bootstrap_script_bound():
    parse_instance(instance_document(bootstrap_script="x" * spec.MAX_BOOTSTRAP_SCRIPT_LENGTH))
    message = errors_of(instance_document(bootstrap_script="x" * (spec.MAX_BOOTSTRAP_SCRIPT_LENGTH + 1)))["spec.bootstrap_script"]
    assert message.endswith(f"at most {spec.MAX_BOOTSTRAP_SCRIPT_LENGTH} are allowed")


@pytest.mark.parametrize("field", ["region", "zone", "machine_type", "image"])
def test_identifier_bounds(field):
    message = errors_of(instance_document(**{field: "x" * (spec.MAX_IDENTIFIER_LENGTH + 1)}))[f"spec.{field}"]
    assert message.endswith(f"at most {spec.MAX_IDENTIFIER_LENGTH} are allowed")


def test_json_schema_carries_the_bounds():
    properties = json_schema()["$defs"]["InstanceSpec"]["properties"]
    assert properties["ssh_users"]["maxItems"] == spec.MAX_SSH_USERS
    assert properties["allowed_ssh_cidrs"]["maxItems"] == spec.MAX_SSH_CIDRS
    assert properties["mounts"]["maxItems"] == spec.MAX_MOUNTS
    assert json_schema()["$defs"]["SshUser"]["properties"]["public_key"]["maxLength"] == spec.MAX_PUBLIC_KEY_LENGTH


# ---------------------------------------------------------------- mount points (issue 11, item 16)


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/mnt/my data", "only ASCII letters"),
        ("/mnt/data\n/x", "only ASCII letters"),
        ("/mnt/data\n", "only ASCII letters"),
        ("/mnt/data\t", "only ASCII letters"),
        ("/mnt/da\x00ta", "only ASCII letters"),
        ("/mnt/d\\040x", "only ASCII letters"),
        ("/mnt/#data", "only ASCII letters"),
        ("/mnt/dátá", "only ASCII letters"),
        ("/mnt/data,ro", "only ASCII letters"),
        ("/", "system directory"),
        ("/home", "system directory"),
        ("/var/lib", "system directory"),
        ("/proc/x", "in a system directory (/proc)"),
        ("/sys", "in a system directory (/sys)"),
        ("/dev/shm/x", "in a system directory (/dev)"),
        ("/etc/cron.d", "in a system directory (/etc)"),
        ("/boot/efi", "in a system directory (/boot)"),
        ("/usr/local/data", "in a system directory (/usr)"),
        ("/lib64/x", "in a system directory (/lib64)"),
        ("/libx32", "in a system directory (/libx32)"),
        ("/run/sshd", "in a system directory (/run)"),
        ("/opt/orch-agent/agent", "in a system directory (/opt/orch-agent)"),
        ("/var/lib/orch", "in a system directory (/var/lib/orch)"),
        ("/root/.ssh", "in a .ssh directory"),
        ("/home/alice", "home directory of SSH user 'alice'"),
        ("/mnt/./data", "not normalized"),
        ("//mnt/data", "not normalized"),
        ("/mnt/data/sub", "inside one another"),
        ("/mnt", "system directory"),
    ],
)
def test_bad_mount_paths(path, text):
    doc = instance_document(mounts=[{"bucket": "data", "path": "/mnt/data"}, {"bucket": "data", "path": path}])
    assert text in errors_of(doc)["spec.mounts[1].path"]


def test_mount_paths_that_are_fine():
    paths = ["/data", "/mnt/models", "/home/alice/data", "/home/carol", "/var/lib/models", "/srv/x.y_z+1@2-3", "/opt/data"]
    mounts = [{"bucket": "data", "path": path} for path in paths]
    assert [m.path for m in parse_instance(instance_document(mounts=mounts)).spec.mounts] == paths


def test_mount_path_length_bound():
    path = "/mnt/" + "x" * spec.MAX_MOUNT_PATH_LENGTH
    message = errors_of(instance_document(mounts=[{"bucket": "data", "path": path}]))["spec.mounts[0].path"]
    assert message.endswith(f"at most {spec.MAX_MOUNT_PATH_LENGTH} are allowed")
