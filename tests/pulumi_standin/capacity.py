"""Simulated capacity and quota: creating a machine where the simulated cloud has none fails as the provider says it.

Which places have no capacity, or no quota left, is read on every machine create from the
environment and from the simulated cloud's file (so a test can change it while a service runs):

  PULUMI_STANDIN_NO_CAPACITY=us-east-1a,us-central1-b,eastus-2     comma-separated places
  PULUMI_STANDIN_QUOTA_EXCEEDED=us-east-1                            (a zone, a region, or *)
  $PULUMI_HOME/standin-cloud/capacity.json  {"no_capacity": [...], "quota_exceeded": [...]}

A place is a zone (Azure's written `<location>-<n>`, e.g. `eastus-2`), a region (all its zones) or
`*`. The failure's text is the provider's, as `pulumi up` shows it: EC2's InsufficientInstanceCapacity
and VcpuLimitExceeded (pulumi-aws), Compute Engine's "does not have enough resources available"
(ZONE_RESOURCE_POOL_EXHAUSTED) and QUOTA_EXCEEDED (pulumi-gcp), Azure's SkuNotAvailable and
OperationNotAllowed quota errors (azure-native). Only creates fail: a machine that exists keeps running.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import uuid
from pathlib import Path

NO_CAPACITY = "no_capacity"
QUOTA_EXCEEDED = "quota_exceeded"
ENVIRONMENT = {NO_CAPACITY: "PULUMI_STANDIN_NO_CAPACITY", QUOTA_EXCEEDED: "PULUMI_STANDIN_QUOTA_EXCEEDED"}
AWS_INSTANCE = "aws:ec2/instance:Instance"
GCP_INSTANCE = "gcp:compute/instance:Instance"
AZURE_VM = "azure-native:compute:VirtualMachine"
AWS_ZONE_LETTERS = "abcdef"
# The bridged providers' prefix on an error from the provider's Terraform code.
BRIDGE_PREFIX = "sdk-v2/provider2.go:566: sdk.helper_schema: "


def capacity_file() -> Path:
    home = os.environ.get("PULUMI_HOME") or os.path.join(os.path.expanduser("~"), ".pulumi")
    return Path(home) / "standin-cloud" / "capacity.json"


def _places(kind: str) -> set[str]:
    places = {place.strip() for place in os.environ.get(ENVIRONMENT[kind], "").split(",") if place.strip()}
    path = capacity_file()
    if path.is_file():
        places.update(str(place) for place in json.loads(path.read_text()).get(kind) or [])
    return places


def _provider_version(package: str) -> str:
    try:
        return importlib.metadata.version(f"pulumi_{package}")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _location(type_token: str, inputs: dict) -> tuple[str, str | None]:
    """(region, zone) of a machine being created; zone None when the program lets the cloud choose."""
    if type_token == AWS_INSTANCE:
        zone = inputs.get("availabilityZone") or None
        region = zone[:-1] if zone else os.environ.get("AWS_REGION") or "us-east-1"
        return region, zone
    if type_token == GCP_INSTANCE:
        zone = inputs.get("zone") or "us-central1-a"
        return zone.rsplit("-", 1)[0], zone
    location = inputs.get("location") or "eastus"
    zones = inputs.get("zones") or []
    return location, f"{location}-{zones[0]}" if zones else None


def _matches(places: set[str], region: str, zone: str | None) -> bool:
    return "*" in places or region in places or (zone is not None and zone in places)


def placement_failure(type_token: str, inputs: dict) -> str | None:
    """The provider's error for creating this machine where there is no capacity or quota; None when it may be created."""
    if type_token not in (AWS_INSTANCE, GCP_INSTANCE, AZURE_VM):
        return None
    region, zone = _location(type_token, inputs)
    for kind in (QUOTA_EXCEEDED, NO_CAPACITY):
        places = _places(kind)
        if _matches(places, region, zone):
            return MESSAGES[type_token](kind, inputs, region, zone, places)
    return None


def _aws(kind: str, inputs: dict, region: str, zone: str | None, exhausted: set[str]) -> str:
    machine_type = inputs.get("instanceType") or "t3.micro"
    request = f"RequestID: {uuid.uuid4()}"
    if kind == QUOTA_EXCEEDED:
        detail = (
            f"https response error StatusCode: 400, {request}, api error VcpuLimitExceeded: You have requested more "
            "vCPU capacity than your current vCPU limit of 0 allows for the instance bucket that the specified "
            "instance type belongs to. Please visit http://aws.amazon.com/contact-us/ec2-request to request an "
            "adjustment to this limit."
        )
    else:
        others = [
            f"{region}{letter}" for letter in AWS_ZONE_LETTERS
            if f"{region}{letter}" != zone and not _matches(exhausted, region, f"{region}{letter}")
        ]  # fmt: skip
        where = f"the Availability Zone you requested ({zone})" if zone else "the region you requested"
        detail = (
            f"https response error StatusCode: 500, {request}, api error InsufficientInstanceCapacity: We currently "
            f"do not have sufficient {machine_type} capacity in {where}. Our system will be working on provisioning "
            f"additional capacity. You can currently get {machine_type} capacity by not specifying an Availability "
            f"Zone in your request or choosing {', '.join(others)}."
        )
    return (
        f"{BRIDGE_PREFIX}creating EC2 Instance: operation error EC2: RunInstances, {detail}: "
        f"provider=aws@{_provider_version('aws')}"
    )


def _gcp(kind: str, inputs: dict, region: str, zone: str | None, exhausted: set[str]) -> str:
    project = inputs.get("project") or os.environ.get("GOOGLE_PROJECT") or "standin-project"
    machine_type = inputs.get("machineType") or "e2-medium"
    if kind == QUOTA_EXCEEDED:
        detail = (
            f"Error creating instance: googleapi: Error 403: Quota 'CPUS' exceeded.  Limit: 0.0 in region {region}., "
            "quotaExceeded"
        )
    else:
        detail = (
            f"Error waiting for instance to create: The zone 'projects/{project}/zones/{zone}' does not have enough "
            "resources available to fulfill the request.  '(resource type:compute)'.\n"
            f"A {machine_type} VM instance is currently unavailable in the {zone} zone. Alternatively, you can try "
            "your request again with a different VM hardware configuration or at a later time. For more "
            "information, see the troubleshooting documentation.\n"
            "Troubleshooting documentation\nhttps://cloud.google.com/compute/docs/resource-error"
        )
    return f"{BRIDGE_PREFIX}{detail}: provider=google-beta@{_provider_version('gcp')}"


def _azure(kind: str, inputs: dict, region: str, zone: str | None, exhausted: set[str]) -> str:
    size = (inputs.get("hardwareProfile") or {}).get("vmSize") or "Standard_B2s"
    if kind == QUOTA_EXCEEDED:
        return (
            'Status=409 Code="OperationNotAllowed" Message="Operation could not be completed as it results in '
            f"exceeding approved {size} Family Cores quota. Additional details - Deployment Model: Resource "
            f"Manager, Location: {region}, Current Limit: 0, Current Usage: 0, Additional Required: 2, (Minimum) "
            "New Limit Required: 2. Submit a request for Quota increase at https://aka.ms/ProdportalCRP by "
            "specifying parameters listed in the 'Details' section for deployment to succeed.\""
        )
    zones = f" zones '{zone.rsplit('-', 1)[-1]}'" if zone else ""
    return (
        'Status=409 Code="SkuNotAvailable" Message="The requested VM size for resource \'Following SKUs have failed '
        f"for Capacity Restrictions: {size}' is currently not available in location '{region}'{zones}. Please try "
        "another size or deploy to a different location or different zone. See https://aka.ms/azureskunotavailable "
        'for details."'
    )


MESSAGES = {AWS_INSTANCE: _aws, GCP_INSTANCE: _gcp, AZURE_VM: _azure}
