"""Zone failover (issue 16 item 4): a create tries the spec's zones in turn when one has no capacity.

- each cloud module classifies its errors (capacity, quota, credentials), including the stand-in's texts;
- the spec's zones / any_zone are validated against the catalogue;
- a resumed create goes on at the attempt it was at (in-process worker, a scripted engine);
- through the API and a spec file with the stand-in: no capacity in the first zone lands in the second
  (the first attempt's stack destroyed), every zone exhausted fails naming each, a quota error is not retried.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.auth import Principal
from orchestrator.cli import main
from orchestrator.engine import EngineError
from orchestrator.models import Instance, Operation
from orchestrator.services import Orchestrator
from orchestrator.settings import load_settings
from orchestrator.worker import Worker
from stacks import classify_error
from stacks.common import AUTH, CAPACITY, QUOTA
from stacks.spec import MAX_REGIONS, MAX_ZONES, Placement, SpecError, parse_instance, placed, placements
from tests.live import instance_doc, wait_operation
from tests.pulumi_standin import capacity

# ---------------------------------------------------------------- classification

AWS_CAPACITY = (
    "error: update failed\n    error: sdk-v2/provider2.go:566: sdk.helper_schema: creating EC2 Instance: operation "
    "error EC2: RunInstances, https response error StatusCode: 500, RequestID: 1b2c, api error "
    "InsufficientInstanceCapacity: We currently do not have sufficient p3.2xlarge capacity in the Availability Zone "
    "you requested (us-east-1a). Our system will be working on provisioning additional capacity.: provider=aws@6.83.0"
)


@pytest.mark.parametrize(
    ("cloud", "message", "kind", "code"),
    [
        ("aws", AWS_CAPACITY, CAPACITY, "InsufficientInstanceCapacity"),
        ("aws", "api error Unsupported: Your requested instance type (p4d.24xlarge) is not supported in your "
                "requested Availability Zone (us-east-1e).", CAPACITY, "Unsupported"),
        ("aws", "api error VcpuLimitExceeded: You have requested more vCPU capacity than your current vCPU limit "
                "of 32 allows", QUOTA, "VcpuLimitExceeded"),
        # InstanceLimitExceeded is a quota even though it reads like capacity.
        ("aws", "api error InstanceLimitExceeded: You have requested more instances (1) than your current instance "
                "limit of 0 allows for the specified instance type.", QUOTA, "InstanceLimitExceeded"),
        ("aws", "api error AuthFailure: AWS was not able to validate the provided access credentials", AUTH, "AuthFailure"),
        ("aws", "api error InvalidParameterValue: Value (x) for parameter groupId is invalid.", None, None),
        ("gcp", "Error waiting for instance to create: The zone 'projects/p/zones/us-central1-a' does not have "
                "enough resources available to fulfill the request.  Try a different zone, or try again later.",
         CAPACITY, "ZONE_RESOURCE_POOL_EXHAUSTED"),
        ("gcp", "code: ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS\nmessage: A n1-standard-4 VM instance is "
                "currently unavailable", CAPACITY, "ZONE_RESOURCE_POOL_EXHAUSTED"),
        ("gcp", "Code: QUOTA_EXCEEDED Message: Quota 'N2_CPUS' exceeded.  Limit: 24.0 in region us-central1.",
         QUOTA, "QUOTA_EXCEEDED"),
        ("gcp", "googleapi: Error 403: Required 'compute.instances.create' permission for "
                "'projects/p/zones/us-central1-a/instances/x', forbidden", AUTH, "PERMISSION_DENIED"),
        ("azure", 'Status=409 Code="SkuNotAvailable" Message="The requested VM size for resource \'Following SKUs '
                  "have failed for Capacity Restrictions: Standard_NC4as_T4_v3' is currently not available\"",
         CAPACITY, "SkuNotAvailable"),
        ("azure", 'Code="AllocationFailed" Message="Allocation failed. We do not have sufficient capacity for the '
                  'requested VM size in this region."', CAPACITY, "AllocationFailed"),
        ("azure", 'Code="ZonalAllocationFailed" Message="Allocation failed."', CAPACITY, "ZonalAllocationFailed"),
        ("azure", 'Code="OverconstrainedAllocationRequest" Message="Allocation failed. VM(s) with the following '
                  'constraints cannot be allocated"', CAPACITY, "OverconstrainedAllocationRequest"),
        ("azure", 'Code="QuotaExceeded" Message="Operation results in exceeding quota limits of Core."',
         QUOTA, "QuotaExceeded"),
        ("azure", 'Code="OperationNotAllowed" Message="Operation could not be completed as it results in exceeding '
                  'approved standardNCASv3_T4Family Cores quota."', QUOTA, "OperationNotAllowed"),
        # OperationNotAllowed without a quota is some other refusal: not classified.
        ("azure", 'Code="OperationNotAllowed" Message="The operation is not allowed on a deallocated VM."', None, None),
        ("azure", 'Code="AuthorizationFailed" Message="The client does not have authorization"', AUTH, "AuthorizationFailed"),
        ("docker", "Error response from daemon: no capacity", None, None),
    ],
)
def test_each_cloud_classifies_its_errors(cloud, message, kind, code):
    found = classify_error(cloud, message)
    assert (found.kind, found.code) == (kind, code) if kind else found is None


@pytest.mark.parametrize(
    ("type_token", "inputs", "cloud"),
    [
        (capacity.AWS_INSTANCE, {"availabilityZone": "us-east-1a", "instanceType": "g5.xlarge"}, "aws"),
        (capacity.GCP_INSTANCE, {"zone": "us-central1-a", "machineType": "g2-standard-4"}, "gcp"),
        (capacity.AZURE_VM, {"location": "eastus", "zones": ["1"], "hardwareProfile": {"vmSize": "Standard_B2s"}}, "azure"),
    ],
)
def test_the_standins_errors_are_the_clouds_and_classify_as_such(monkeypatch, tmp_path, type_token, inputs, cloud):
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path))
    monkeypatch.delenv("PULUMI_STANDIN_QUOTA_EXCEEDED", raising=False)
    monkeypatch.setenv("PULUMI_STANDIN_NO_CAPACITY", "us-east-1a,us-central1-a,eastus-1")
    no_capacity = capacity.placement_failure(type_token, inputs)
    assert classify_error(cloud, no_capacity).kind == CAPACITY, no_capacity
    # A region names all its zones; the file is read as well as the environment; quota wins over capacity.
    monkeypatch.delenv("PULUMI_STANDIN_NO_CAPACITY")
    capacity.capacity_file().parent.mkdir(parents=True)
    region = {"aws": "us-east-1", "gcp": "us-central1", "azure": "eastus"}[cloud]
    capacity.capacity_file().write_text(json.dumps({"no_capacity": ["*"], "quota_exceeded": [region]}))
    quota = capacity.placement_failure(type_token, inputs)
    assert classify_error(cloud, quota).kind == QUOTA, quota
    capacity.capacity_file().write_text(json.dumps({"no_capacity": ["us-west-2b", "westus-3"]}))
    assert capacity.placement_failure(type_token, inputs) is None


# ---------------------------------------------------------------- the spec


def _errors(**spec) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_instance(instance_doc("zones", **spec))
    return {error.field: error.message for error in caught.value.errors}


def placement_zones(spec) -> list[str | None] | None:
    places = placements(spec)
    return None if places is None else [place.zone for place in places]


def test_zones_are_checked_against_the_catalogue():
    aws = {"cloud": "aws", "region": "us-east-1", "machine_type": "t3.medium"}
    assert "spec.zone" in _errors(**aws, zone="us-east-1a", zones=["us-east-1b"])["spec.zones"]
    assert "did you mean us-east-1b?" in _errors(**aws, zones=["us-east-1a", "us-east-1bb"])["spec.zones[1]"]
    assert "listed twice" in _errors(**aws, zones=["us-east-1a", "us-east-1a"])["spec.zones[1]"]
    assert "at most 16" in _errors(**aws, zones=[f"us-east-1{c}" for c in "abcdefabcdefabcdefa"])["spec.zones"]
    assert "not both" in _errors(**aws, zones=["us-east-1a"], any_zone=True)["spec.any_zone"]
    assert "spec.zone" in _errors(**aws, zone="us-east-1a", any_zone=True)["spec.any_zone"]
    azure = {"cloud": "azure", "region": "eastus", "machine_type": "Standard_B2s"}
    assert "listed twice" in _errors(**azure, zones=["1", "eastus-1"])["spec.zones[1]"]
    assert "no zone to fail over to" in _errors(cloud="docker", any_zone=True)["spec.any_zone"]
    listed = parse_instance(instance_doc("zones", **aws, zones=["us-east-1c", "us-east-1a"])).spec
    assert placement_zones(listed) == ["us-east-1c", "us-east-1a"] and listed.zone is None
    # any_zone: the region's zones from the catalogue, in its order; GCP's default zone is not filled in.
    gcp = parse_instance(instance_doc("zones", cloud="gcp", region="us-east1", machine_type="e2-standard-2", any_zone=True))
    assert placement_zones(gcp.spec) == ["us-east1-b", "us-east1-c", "us-east1-d"] and gcp.spec.zone is None
    assert placement_zones(parse_instance(instance_doc("zones", **aws)).spec) is None
    assert placement_zones(parse_instance(instance_doc("zones", **azure, any_zone=True)).spec) == [
        "eastus-1", "eastus-2", "eastus-3",
    ]  # fmt: skip
    # Where it landed replaces the list (previews, later updates); a spec naming one place is left alone.
    pinned = placed(parse_instance(instance_doc("zones", **aws, any_zone=True)), Placement("us-east-1", "us-east-1d")).spec
    assert (pinned.zone, pinned.zones, pinned.any_zone) == ("us-east-1d", None, False)
    one_place = parse_instance(instance_doc("zones", **aws, zone="us-east-1a"))
    assert placed(one_place, Placement("us-east-1", "us-east-1d")).spec.zone == "us-east-1a"
    assert MAX_ZONES == 16


# ---------------------------------------------------------------- resuming (in-process worker)

ALICE = Principal(name="alice", role="user")
NO_CAPACITY = "api error InsufficientInstanceCapacity: We currently do not have sufficient t3.medium capacity in {zone}."


class WorkerDied(BaseException):
    """Ends worker.run() as a killed worker would: nothing of the operation's own failure path runs."""


class ScriptedEngine:
    """Stands in for StackEngine: zones without capacity fail `up`; `die_on` kills the worker at one call once."""

    def __init__(self, full: set[str]) -> None:
        self.full = full
        self.calls: list[tuple[str, str | None]] = []
        self.stacks: dict[str, str] = {}  # stack -> the zone its resources are in
        self.die_on: tuple[str, str | None] | None = None

    def _maybe_die(self, call) -> None:
        self.calls.append(call)
        if call == self.die_on:
            self.die_on = None
            raise WorkerDied()

    def up_instance(self, stack_name, document, *, admin_public_key, base_image_id, on_output, refresh=False):
        zone = document.spec.zone
        self.stacks[stack_name] = zone  # a failed create leaves what it made before the machine
        self._maybe_die(("up", zone))
        if zone in self.full:
            raise EngineError(NO_CAPACITY.format(zone=zone))
        return {"public_ip": "198.51.100.7", "ssh_user": "ubuntu", "cloud": "aws", "zone": zone}

    def destroy(self, stack_name, *, on_output):
        self._maybe_die(("destroy", self.stacks.get(stack_name)))
        self.stacks.pop(stack_name, None)

    def cancel(self, stack_name):
        pass

    def inspect(self, stack_name):
        return None  # the create's stack is new


@pytest.fixture
def scripted(mongo_db, tmp_path):
    settings = load_settings({"ORCH_DATA_DIR": str(tmp_path), "ORCH_OPERATION_LEASE_S": "6"})
    engine = ScriptedEngine(full={"us-east-1a", "us-east-1b"})
    worker = Worker(settings, engine)
    orch = Orchestrator(settings, engine, dispatch=lambda op_id: False)
    doc = instance_doc("resumed", cloud="aws", zones=["us-east-1a", "us-east-1b", "us-east-1c"])
    instance, op = orch.create_instance(ALICE, doc)
    return worker, engine, instance, op


def _run_until_it_dies(worker, op) -> None:
    with pytest.raises(WorkerDied):
        worker.run(str(op.id))
    # What the recovery sweep does for an operation whose worker's lease expired.
    Operation.objects(id=op.id).update_one(set__status="queued")


def test_a_create_resumed_mid_failover_goes_on_at_the_attempt_it_was_at(scripted):
    worker, engine, instance, op = scripted
    engine.die_on = ("up", "us-east-1b")  # the worker dies during the second attempt
    _run_until_it_dies(worker, op)
    worker.run(str(op.id))
    op.reload()
    assert op.status == "succeeded", op.error
    ups = [zone for call, zone in engine.calls if call == "up"]
    assert ups == ["us-east-1a", "us-east-1b", "us-east-1b", "us-east-1c"], "zone a is not tried again"
    assert [call for call in engine.calls if call[0] == "destroy"] == [("destroy", "us-east-1a"), ("destroy", "us-east-1b")]
    landed = Instance.objects.get(id=instance.id)
    assert (landed.status, landed.zone, engine.stacks[landed.stack_name]) == ("running", "us-east-1c", "us-east-1c")
    assert [(a["zone"], a["outcome"]) for a in landed.zone_attempts] == [
        ("us-east-1a", "no capacity"), ("us-east-1b", "no capacity"), ("us-east-1c", "landed"),
    ]  # fmt: skip
    assert parse_instance(landed.document()).spec.zone == "us-east-1c", "later updates keep it where it landed"


def test_a_create_resumed_between_a_failed_attempt_and_its_destroy_destroys_it_first(scripted):
    worker, engine, instance, op = scripted
    engine.die_on = ("destroy", "us-east-1a")
    _run_until_it_dies(worker, op)
    worker.run(str(op.id))
    op.reload()
    assert op.status == "succeeded", op.error
    calls = [call for call in engine.calls if call[0] in ("up", "destroy")]
    assert calls == [
        ("up", "us-east-1a"), ("destroy", "us-east-1a"),  # died here
        ("destroy", "us-east-1a"),  # resumed: the failed attempt's stack goes first
        ("up", "us-east-1b"), ("destroy", "us-east-1b"), ("up", "us-east-1c"),
    ]  # fmt: skip
    names = [step.name for step in op.steps]
    assert names.count("attempt 1/3: us-east-1a") == 1 and "attempt 3/3: us-east-1c" in names


# ---------------------------------------------------------------- through the API and a spec file (the stand-in)


@pytest.fixture
def places(service):
    """Set which places the stand-in's simulated cloud has no capacity (or quota) in, for one test."""
    path = Path(service.env["PULUMI_HOME"]) / "standin-cloud" / "capacity.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def set_places(no_capacity=(), quota_exceeded=()) -> None:
        path.write_text(json.dumps({"no_capacity": list(no_capacity), "quota_exceeded": list(quota_exceeded)}))

    yield set_places
    path.unlink(missing_ok=True)


def _checkpoint(service, stack_name: str) -> dict | None:
    backend = Path(service.env["ORCH_PULUMI_BACKEND_URL"].removeprefix("file://"))
    path = backend / ".pulumi" / "stacks" / "orch" / f"{stack_name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _create(service, user: str, document: dict) -> tuple[dict, dict]:
    with service.client(user) as client:
        response = client.post("/api/v1/instances", json=document)
        assert response.status_code == 202, response.text
        op = wait_operation(client, response.json()["operation"]["id"])
        return op, client.get(f"/api/v1/instances/{document['name']}").json()


def test_no_capacity_in_the_first_zone_lands_in_the_second(service, places, tmp_path, capsys):
    """A spec file applied with `orch apply`; the API, `orch describe` and the stand-in's backend show the outcome."""
    places(no_capacity=["us-east-1a"])
    path = tmp_path / "fo.yaml"
    path.write_text(yaml.safe_dump(instance_doc("fo-aws", cloud="aws", zones=["us-east-1a", "us-east-1b"])))
    argv = ["--url", service.url, "--token", service.token_for("fo-cli")]
    assert main(["apply", "-f", str(path), "--wait", *argv]) == 0, capsys.readouterr()
    with service.client("fo-cli") as client:
        instance = client.get("/api/v1/instances/fo-aws").json()
        op = client.get(f"/api/v1/operations/{instance['operation_id']}").json()
    steps = [(step["name"], step["status"]) for step in op["steps"]]
    assert steps == [
        ("attempt 1/2: us-east-1a", "failed"),
        ("pulumi up", "failed"),
        ("attempt 1/2: pulumi destroy (no capacity in us-east-1a)", "succeeded"),
        ("attempt 2/2: us-east-1b", "succeeded"),
        ("pulumi up", "succeeded"),
    ], steps
    first = op["steps"][0]["detail"]
    assert first.startswith("capacity: ") and "InsufficientInstanceCapacity: We currently do not have sufficient" in first
    assert op["steps"][3]["detail"] == "landed in us-east-1b"
    assert (instance["status"], instance["zone"], instance["outputs"]["zone"]) == ("running", "us-east-1b", "us-east-1b")
    assert [(a["zone"], a["outcome"]) for a in instance["zone_attempts"]] == [
        ("us-east-1a", "no capacity"), ("us-east-1b", "landed"),
    ]  # fmt: skip
    assert instance["zone_attempts"][0]["error"].startswith("InsufficientInstanceCapacity: We currently")
    # The first attempt's resources are gone: the stack holds one incarnation, all of it in us-east-1b.
    resources = _checkpoint(service, instance["stack_name"])["checkpoint"]["latest"]["resources"]
    machines = [r for r in resources if r["type"] == "aws:ec2/instance:Instance"]
    assert [m["inputs"]["availabilityZone"] for m in machines] == ["us-east-1b"]
    assert len([r for r in resources if r["type"] == "aws:ec2/securityGroup:SecurityGroup"]) == 1
    capsys.readouterr()
    assert main(["describe", "instance", "fo-aws", *argv]) == 0
    described = capsys.readouterr().out
    assert re.search(r"^Zone: +us-east-1b$", described, flags=re.MULTILINE), described
    assert "  1. us-east-1a: no capacity (InsufficientInstanceCapacity: We currently" in described
    assert "  2. us-east-1b: landed" in described
    # Applying the same file again changes nothing: the instance stays in the zone it landed in.
    assert main(["apply", "-f", str(path), *argv]) == 0
    assert "unchanged" in capsys.readouterr().out


def test_every_zone_without_capacity_fails_naming_each_and_leaves_nothing(service, places):
    places(no_capacity=["us-east1"])  # every zone of GCP's us-east1
    document = instance_doc("fo-gcp", cloud="gcp", region="us-east1", zones=["us-east1-c", "us-east1-d"])
    op, instance = _create(service, "fo-api", document)
    assert op["status"] == "failed"
    assert op["error"].startswith("no capacity in any of the 2 zones tried: us-east1-c: ZONE_RESOURCE_POOL_EXHAUSTED: ")
    for zone in ("us-east1-c", "us-east1-d"):
        assert f"{zone}: ZONE_RESOURCE_POOL_EXHAUSTED: does not have enough resources" in op["error"]
    assert [s["name"] for s in op["steps"] if s["name"].startswith("attempt") and "destroy" not in s["name"]] == [
        "attempt 1/2: us-east1-c", "attempt 2/2: us-east1-d",
    ]  # fmt: skip
    assert instance["status"] == "failed" and instance["zone"] is None and instance["public_ip"] is None
    assert [a["outcome"] for a in instance["zone_attempts"]] == ["no capacity"] * 2
    assert _checkpoint(service, instance["stack_name"]) is None, "no stack (and no resource) is left"


def test_a_quota_error_is_not_retried_in_another_zone(service, places):
    places(quota_exceeded=["eastus"])
    document = instance_doc("fo-azure", cloud="azure", zones=["eastus-1", "eastus-2"])
    op, instance = _create(service, "fo-api", document)
    assert op["status"] == "failed"
    assert op["error"].startswith("quota error in eastus-1 (OperationNotAllowed), not retried in another zone: ")
    assert "exceeding approved Standard_B2s Family Cores quota" in op["error"], "the cloud's own message"
    assert [s["name"] for s in op["steps"] if s["name"].startswith("attempt")] == ["attempt 1/2: eastus-1"]
    assert [(a["zone"], a["outcome"]) for a in instance["zone_attempts"]] == [("eastus-1", "quota")]
    assert _checkpoint(service, instance["stack_name"]) is None, "the rollback destroyed what the attempt made"


# ---------------------------------------------------------------- region failover (spec.regions)


def test_regions_are_checked_against_the_catalogue():
    aws = {"cloud": "aws", "machine_type": "t3.medium"}
    two = ["us-east-1", "us-west-2"]
    assert "did you mean us-west-2?" in _errors(**aws, regions=["us-east-1", "us-wset-2"])["spec.regions[1]"]
    assert "listed twice" in _errors(**aws, regions=["us-east-1", "us-east-1"])["spec.regions[1]"]
    assert f"at most {MAX_REGIONS}" in _errors(**aws, regions=["us-east-1"] * (MAX_REGIONS + 1))["spec.regions"]
    assert "not in spec.regions" in _errors(**aws, region="eu-west-1", regions=two)["spec.region"]
    assert "spec.zones" in _errors(**aws, region="us-east-1", zone="us-east-1a", regions=two)["spec.zone"]
    # An image lives in one region: the 422 names both fields.
    snap = _errors(**aws, region="us-east-1", regions=two, from_snapshot="snap-1")["spec.regions"]
    assert "spec.from_snapshot" in snap and "spec.region" in snap
    assert "no region to fail over to" in _errors(cloud="docker", region="local", regions=["local"])["spec.regions"]
    # Zones must be in the listed regions, and each listed region needs one of them.
    wrong = _errors(**aws, region="us-east-1", regions=two, zones=["us-east-1a", "eu-west-1a"])
    assert "not in any of spec.regions (us-east-1, us-west-2)" in wrong["spec.zones[1]"]
    assert "no zone of 'us-west-2' in spec.zones" in wrong["spec.regions[1]"]
    azure = {"cloud": "azure", "region": "eastus", "machine_type": "Standard_B2s"}
    assert "write it eastus-1" in _errors(**azure, regions=["eastus", "westus2"], zones=["1", "westus2-1"])["spec.zones[0]"]
    # Without region: the first of the list (the record's until it lands); the region field is not needed.
    doc = instance_doc("regions", **aws, regions=two)
    del doc["spec"]["region"]
    parsed = parse_instance(doc)
    assert (parsed.spec.region, parsed.spec.zone) == ("us-east-1", None)
    assert placements(parsed.spec) == [Placement("us-east-1", None), Placement("us-west-2", None)]
    assert "required" in _errors(**aws, region=None)["spec.region"]


def test_region_placements_go_region_by_region():
    aws = {"cloud": "aws", "region": "us-west-2", "machine_type": "t3.medium"}
    zones = parse_instance(instance_doc("r", **aws, regions=["us-east-1", "us-west-2"], zones=["us-west-2b", "us-east-1c", "us-east-1a"]))
    # Region by region in spec.regions' order; in a region, its zones in the order written.
    assert placements(zones.spec) == [
        Placement("us-east-1", "us-east-1c"), Placement("us-east-1", "us-east-1a"), Placement("us-west-2", "us-west-2b"),
    ]  # fmt: skip
    every = parse_instance(instance_doc("r", cloud="azure", region="eastus", machine_type="Standard_B2s",
                                        regions=["eastus", "westus2"], any_zone=True))
    assert [str(p.zone) for p in placements(every.spec)] == ["eastus-1", "eastus-2", "eastus-3", "westus2-1", "westus2-2", "westus2-3"]
    # Regions only: each region in the cloud's default zone for it (GCP names one; AWS lets the cloud choose).
    gcp = parse_instance(instance_doc("r", cloud="gcp", region="us-east1", machine_type="e2-standard-2", regions=["us-east1", "us-west1"]))
    assert placements(gcp.spec) == [Placement("us-east1", "us-east1-b"), Placement("us-west1", "us-west1-a")]
    # Where it landed replaces both lists: the stack's program sees one region and zone.
    pinned = placed(zones, Placement("us-west-2", "us-west-2b")).spec
    assert (pinned.region, pinned.regions, pinned.zone, pinned.zones) == ("us-west-2", None, "us-west-2b", None)
    pinned = placed(gcp, Placement("us-west1", "us-west1-a")).spec
    assert (pinned.region, pinned.regions, pinned.zone) == ("us-west1", None, "us-west1-a")
    # The record pins it the same way (Instance.document), for every later `pulumi up`.
    record = Instance(name="r", owner="alice", spec=zones.to_dict()["spec"], cloud="aws", region="us-west-2", zone="us-west-2b")
    assert parse_instance(record.document()).spec.region == "us-west-2"
    assert record.document(placed=False)["spec"]["regions"] == ["us-east-1", "us-west-2"]


def test_a_region_failover_resumed_mid_attempt_goes_on_in_the_region_it_was_at(mongo_db, tmp_path):
    settings = load_settings({"ORCH_DATA_DIR": str(tmp_path), "ORCH_OPERATION_LEASE_S": "6"})
    engine = ScriptedEngine(full={"us-east-1a", "us-east-1b"})
    regions_seen: list[str] = []
    up = engine.up_instance

    def up_in_region(stack_name, document, **kwargs):
        regions_seen.append(document.spec.region)
        return up(stack_name, document, **kwargs)

    engine.up_instance = up_in_region
    worker, orch = Worker(settings, engine), Orchestrator(settings, engine, dispatch=lambda op_id: False)
    doc = instance_doc("resumed-r", cloud="aws", regions=["us-east-1", "us-west-2"],
                       zones=["us-east-1a", "us-east-1b", "us-west-2a"])
    del doc["spec"]["region"]
    instance, op = orch.create_instance(ALICE, doc)
    assert instance.region == "us-east-1", "the first of the list until it lands"
    engine.die_on = ("up", "us-west-2a")
    _run_until_it_dies(worker, op)
    assert Instance.objects.get(id=instance.id).region == "us-west-2", "the record shows the region being tried"
    worker.run(str(op.id))
    op.reload()
    assert op.status == "succeeded", op.error
    assert regions_seen == ["us-east-1", "us-east-1", "us-west-2", "us-west-2"]
    assert [s.name for s in op.steps if s.name.startswith("attempt") and "destroy" not in s.name] == [
        "attempt 1/3: us-east-1 / us-east-1a", "attempt 2/3: us-east-1 / us-east-1b",
        "attempt 3/3: us-west-2 / us-west-2a", "attempt 3/3: us-west-2 / us-west-2a",
    ]  # fmt: skip
    landed = Instance.objects.get(id=instance.id)
    assert (landed.region, landed.zone) == ("us-west-2", "us-west-2a")
    assert [(a["region"], a["outcome"]) for a in landed.zone_attempts] == [
        ("us-east-1", "no capacity"), ("us-east-1", "no capacity"), ("us-west-2", "landed"),
    ]  # fmt: skip
    spec = parse_instance(landed.document()).spec
    assert (spec.region, spec.regions, spec.zone) == ("us-west-2", None, "us-west-2a"), "later updates keep it there"


def test_a_region_failover_with_no_capacity_anywhere_goes_back_to_its_first_region(mongo_db, tmp_path):
    settings = load_settings({"ORCH_DATA_DIR": str(tmp_path)})
    engine = ScriptedEngine(full={"us-east-1a", "us-west-2a"})
    worker, orch = Worker(settings, engine), Orchestrator(settings, engine, dispatch=lambda op_id: False)
    doc = instance_doc("full-r", cloud="aws", region="us-east-1", regions=["us-east-1", "us-west-2"],
                       zones=["us-east-1a", "us-west-2a"])
    instance, op = orch.create_instance(ALICE, doc)
    worker.run(str(op.id))
    op.reload()
    assert op.status == "failed"
    assert op.error.startswith("no capacity in any of the 2 places tried: us-east-1 / us-east-1a: InsufficientInstanceCapacity")
    assert "; us-west-2 / us-west-2a: InsufficientInstanceCapacity" in op.error
    failed = Instance.objects.get(id=instance.id)
    assert (failed.status, failed.region, failed.zone) == ("failed", "us-east-1", None)
    assert engine.stacks == {}, "each attempt's stack destroyed"


def test_no_capacity_in_the_first_region_lands_in_the_second(service, places, capsys):
    places(no_capacity=["us-east-1"])  # every zone of the first region
    document = instance_doc("fo-regions", cloud="aws", regions=["us-east-1", "us-west-2"], zones=["us-east-1a", "us-west-2a"])
    del document["spec"]["region"]
    op, instance = _create(service, "fo-api", document)
    assert op["status"] == "succeeded", op["error"]
    attempts = [(s["name"], s["status"]) for s in op["steps"] if s["name"].startswith("attempt")]
    assert attempts == [
        ("attempt 1/2: us-east-1 / us-east-1a", "failed"),
        ("attempt 1/2: pulumi destroy (no capacity in us-east-1 / us-east-1a)", "succeeded"),
        ("attempt 2/2: us-west-2 / us-west-2a", "succeeded"),
    ], attempts
    assert "InsufficientInstanceCapacity" in op["steps"][0]["detail"]
    assert [s["detail"] for s in op["steps"] if s["name"].startswith("attempt 2/2")] == ["landed in us-west-2 / us-west-2a"]
    assert (instance["status"], instance["region"], instance["zone"]) == ("running", "us-west-2", "us-west-2a")
    assert (instance["outputs"]["region"], instance["outputs"]["zone"]) == ("us-west-2", "us-west-2a")
    assert [(a["region"], a["zone"], a["outcome"]) for a in instance["zone_attempts"]] == [
        ("us-east-1", "us-east-1a", "no capacity"), ("us-west-2", "us-west-2a", "landed"),
    ]  # fmt: skip
    # The first attempt's stack was destroyed: one incarnation, in us-west-2.
    resources = _checkpoint(service, instance["stack_name"])["checkpoint"]["latest"]["resources"]
    machines = [r for r in resources if r["type"] == "aws:ec2/instance:Instance"]
    assert [m["inputs"]["availabilityZone"] for m in machines] == ["us-west-2a"]
    providers = [r for r in resources if r["type"] == "pulumi:providers:aws"]
    assert [p["inputs"].get("region") for p in providers] == ["us-west-2"]
    with service.client("fo-api") as client:
        listed = client.get("/api/v1/instances").json()["items"]
        assert [(i["name"], i["region"]) for i in listed if i["name"] == "fo-regions"] == [("fo-regions", "us-west-2")]
        for region, found in (("us-west-2", ["fo-regions"]), ("us-east-1", [])):
            names = [i["name"] for i in client.get("/api/v1/instances", params={"region": region}).json()["items"]]
            assert [name for name in names if name == "fo-regions"] == found, (region, names)
        # The same document again changes nothing: it stays in the region it landed in.
        again = client.patch("/api/v1/instances/fo-regions", json={"spec": document["spec"]})
        assert again.status_code == 200 and again.json()["instance"]["region"] == "us-west-2", again.text
        # An update whose list leaves out where it is: refused, naming the field.
        moved = client.patch("/api/v1/instances/fo-regions", json={"spec": {**document["spec"], "regions": ["us-east-1"], "zones": ["us-east-1a"]}})
        assert moved.status_code == 422 and "spec.regions" in moved.text, moved.text
    capsys.readouterr()
    assert main(["describe", "instance", "fo-regions", "--url", service.url, "--token", service.token_for("fo-api")]) == 0
    described = capsys.readouterr().out
    assert re.search(r"^Region: +us-west-2$", described, flags=re.MULTILINE), described
    assert "  1. us-east-1 / us-east-1a: no capacity (InsufficientInstanceCapacity" in described
    assert "  2. us-west-2 / us-west-2a: landed" in described
