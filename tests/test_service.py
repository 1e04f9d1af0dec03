"""The service end to end: REST API -> MongoDB -> dispatch -> worker -> Automation API -> stand-in."""

from __future__ import annotations

import datetime as dt
import time

import jwt
import pytest

from orchestrator.auth import ISSUER, USER_AUDIENCE, mint_agent_token, mint_user_token, signing_key
from tests.live import JWT_SECRET, instance_doc, start_service, wait_operation

CLOUD_MACHINE_UPDATES = {
    "aws": "t3.large",
    "gcp": "e2-standard-4",
    "azure": "Standard_B4ms",
    "docker": "medium",
}


def _wait_status(client, path: str, wanted: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(path).json()
        if body.get("status") in wanted:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{path} never reached {wanted}: {body}")


def _create(client, doc: dict) -> dict:
    response = client.post("/api/v1/instances", json=doc)
    assert response.status_code == 202, response.text
    return response.json()


def _stack_types(client, name: str) -> set[str]:
    body = client.get(f"/api/v1/instances/{name}/stack").json()
    return {resource["type"] for resource in body["resources"]}


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure", "docker"])
def test_instance_lifecycle_with_snapshot(service, cloud):
    name, restored, snap = f"life-{cloud}", f"restored-{cloud}", f"snap-{cloud}"
    with service.client("alice") as client:
        created = _create(client, instance_doc(name, cloud))
        assert created["instance"]["status"] == "pending"
        op = wait_operation(client, created["operation"]["id"])
        assert op["status"] == "succeeded", op
        assert [step["name"] for step in op["steps"]] == ["pulumi up"]
        assert any(line for line in op["logs"]), "pulumi output is streamed into the operation log"

        instance = client.get(f"/api/v1/instances/{name}").json()
        assert instance["status"] == "running"
        assert instance["outputs"]["cloud"] == cloud
        listed = client.get("/api/v1/instances", params={"cloud": cloud}).json()
        row = next(item for item in listed["items"] if item["name"] == name)
        assert row["public_ip"] and row["public_ip"] == instance["outputs"]["public_ip"]

        stack = client.get(f"/api/v1/instances/{name}/stack").json()
        assert stack["stack"] == f"instance-alice.{name}"
        assert stack["outputs"]["instance_id"] == instance["outputs"]["instance_id"]
        assert all(r["urn"].startswith("urn:pulumi:") for r in stack["resources"])
        assert len(stack["resources"]) >= 2

        # Update: a new machine type is a pulumi up on the same stack.
        doc = instance_doc(name, cloud, machine_type=CLOUD_MACHINE_UPDATES[cloud])
        preview = client.post(f"/api/v1/instances/{name}/preview", json=doc).json()
        assert any(step["op"] in ("update", "replace") for step in preview["steps"]), preview
        updated = client.patch(f"/api/v1/instances/{name}", json=doc)
        assert updated.status_code == 202, updated.text
        assert wait_operation(client, updated.json()["operation"]["id"])["status"] == "succeeded"
        instance = client.get(f"/api/v1/instances/{name}").json()
        assert (instance["status"], instance["spec"]["machine_type"]) == ("running", CLOUD_MACHINE_UPDATES[cloud])
        assert instance["generation"] == 2
        unchanged = client.patch(f"/api/v1/instances/{name}", json=doc)
        assert unchanged.status_code == 200 and unchanged.json()["operation"] is None

        # Snapshot, then delete the instance: the snapshot survives.
        taken = client.post(f"/api/v1/instances/{name}/snapshots", json={"name": snap})
        assert taken.status_code == 202, taken.text
        assert wait_operation(client, taken.json()["operation"]["id"])["status"] == "succeeded"
        snapshot = client.get(f"/api/v1/snapshots/{snap}").json()
        assert snapshot["status"] == "available" and snapshot["image_id"]
        assert snapshot["source_instance_id"] == instance["outputs"]["instance_id"]

        deleted = client.delete(f"/api/v1/instances/{name}")
        assert deleted.status_code == 202, deleted.text
        assert wait_operation(client, deleted.json()["operation"]["id"])["status"] == "succeeded"
        assert client.get(f"/api/v1/instances/{name}").json()["status"] == "deleted"
        assert client.get(f"/api/v1/instances/{name}/stack").json()["resources"] == []
        assert client.get(f"/api/v1/snapshots/{snap}").json()["status"] == "available"

        # A new instance from the snapshot boots from its image.
        spec = instance_doc(restored, cloud, from_snapshot=snap)
        spec["spec"].pop("image", None)
        created = _create(client, spec)
        assert wait_operation(client, created["operation"]["id"])["status"] == "succeeded"
        restored_instance = client.get(f"/api/v1/instances/{restored}").json()
        assert restored_instance["outputs"]["image_id"] == snapshot["image_id"]

        # A snapshot in use as a base image cannot be deleted; once the instance is gone it can.
        assert client.delete(f"/api/v1/snapshots/{snap}").status_code == 409
        op = client.delete(f"/api/v1/instances/{restored}").json()["operation"]
        assert wait_operation(client, op["id"])["status"] == "succeeded"
        op = client.delete(f"/api/v1/snapshots/{snap}").json()["operation"]
        assert wait_operation(client, op["id"])["status"] == "succeeded"
        assert client.get(f"/api/v1/snapshots/{snap}").json()["status"] == "deleted"

        # Deleted ones stay as history documents but listings hide them unless asked.
        def listed_names(collection: str, **params) -> set[str]:
            response = client.get(f"/api/v1/{collection}", params=params)
            assert response.status_code == 200, response.text
            return {item["name"] for item in response.json()["items"]}

        assert not {name, restored} & listed_names("instances", cloud=cloud)
        assert {name, restored} <= listed_names("instances", cloud=cloud, include_deleted="true")
        assert {name, restored} <= listed_names("instances", cloud=cloud, status="deleted")
        assert snap not in listed_names("snapshots", instance=name)
        assert snap in listed_names("snapshots", instance=name, include_deleted="true")


def test_validation_errors_name_the_field_and_never_500(service):
    with service.client("alice") as client:
        bad = instance_doc("Bad_Name")
        response = client.post("/api/v1/instances", json=bad)
        assert response.status_code == 422
        assert "name" in response.json()["detail"]
        response = client.post("/api/v1/instances", json=instance_doc("disk-small", disk_gb=-1))
        assert response.status_code == 422 and "spec.disk_gb" in response.json()["detail"]
        response = client.post("/api/v1/instances", content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 400
        response = client.post("/api/v1/instances", json=["a", "list"])
        assert response.status_code == 400
        assert client.get("/api/v1/instances/nope").status_code == 404
        assert client.get("/api/v1/operations/not-an-id").status_code == 404
        assert client.get("/api/v1/instances", params={"limit": 0}).status_code == 400


def test_disabled_cloud_is_refused_and_features_report_clouds(tmp_path, mongo_url):
    live = start_service(tmp_path, mongo_url, ORCH_CLOUDS="aws,docker")
    try:
        with live.client("alice") as client:
            assert client.get("/api/v1/features").json()["clouds"] == ["aws", "docker"]
            response = client.post("/api/v1/instances", json=instance_doc("on-gcp", "gcp"))
            assert response.status_code == 422
            assert "spec.cloud" in response.json()["detail"] and "gcp" in response.json()["detail"]
    finally:
        live.stop()


def test_openapi_and_healthz(service):
    with service.client("alice") as client:
        schema = client.get("/schema/openapi.json").json()
        assert "/api/v1/instances" in schema["paths"]
        health = client.get("/healthz").json()
        assert health["mongodb"] is True and health["status"] == "ok"


def test_tenancy_and_token_rejections(service):
    with service.client("carol") as carol, service.client("dave") as dave:
        op = _create(carol, instance_doc("carol-box"))["operation"]
        assert wait_operation(carol, op["id"])["status"] == "succeeded"
        assert dave.get("/api/v1/instances/carol-box").status_code == 404
        assert dave.patch("/api/v1/instances/carol-box", json=instance_doc("carol-box", machine_type="large")).status_code == 404
        assert dave.delete("/api/v1/instances/carol-box").status_code == 404
        assert dave.get(f"/api/v1/operations/{op['id']}").status_code == 404
        assert all(item["owner"] == "dave" for item in dave.get("/api/v1/instances").json()["items"])
    with service.client(token=service.admin_token) as admin:
        names = {item["name"] for item in admin.get("/api/v1/instances", params={"limit": 500}).json()["items"]}
        assert "carol-box" in names

    now = dt.datetime.now(dt.UTC)
    forged = mint_user_token("not-the-service-secret-" + "y" * 32, "carol")
    expired = jwt.encode(
        {"iss": ISSUER, "sub": "carol", "role": "user", "aud": "orch-api", "jti": "j1", "exp": now - dt.timedelta(hours=1)},
        signing_key(JWT_SECRET, USER_AUDIENCE),
        "HS256",
    )
    agent_token, _ = mint_agent_token(JWT_SECRET, "carol-box")
    for token, cause in [(forged, "bad signature"), (expired, "expired"), (agent_token, "wrong audience")]:
        with service.client(token=token) as client:
            response = client.get("/api/v1/instances/carol-box")
            assert response.status_code == 401
            assert cause in response.json()["detail"]
    with service.client(token="garbage") as client:
        assert client.get("/api/v1/instances").status_code == 401


def test_two_updates_to_one_instance_run_one_after_the_other(tmp_path, mongo_url):
    live = start_service(tmp_path, mongo_url, PULUMI_STANDIN_LATENCY_MS="300")
    try:
        with live.client("alice") as client:
            op = _create(client, instance_doc("serial"))["operation"]
            assert wait_operation(client, op["id"])["status"] == "succeeded"
            first = client.patch("/api/v1/instances/serial", json=instance_doc("serial", machine_type="medium"))
            second = client.patch("/api/v1/instances/serial", json=instance_doc("serial", machine_type="large"))
            assert first.status_code == second.status_code == 202
            ops = [wait_operation(client, r.json()["operation"]["id"]) for r in (first, second)]
            assert [o["status"] for o in ops] == ["succeeded", "succeeded"]
            assert ops[0]["steps"][-1]["finished_at"] <= ops[1]["steps"][0]["started_at"]
            assert client.get("/api/v1/instances/serial").json()["spec"]["machine_type"] == "large"
    finally:
        live.stop()


def test_an_instance_from_a_snapshot_gets_its_disk_size_and_never_less(service):
    with service.client("alice") as client:
        created = _create(client, instance_doc("disk-source", disk_gb=40))
        assert wait_operation(client, created["operation"]["id"])["status"] == "succeeded"
        taken = client.post("/api/v1/instances/disk-source/snapshots", json={"name": "disk-snap"})
        assert taken.status_code == 202 and taken.json()["snapshot"]["disk_gb"] == 40, taken.text
        assert wait_operation(client, taken.json()["operation"]["id"])["status"] == "succeeded"
        assert client.get("/api/v1/snapshots/disk-snap").json()["disk_gb"] == 40

        smaller = instance_doc("disk-clone", from_snapshot="disk-snap", disk_gb=35)
        refused = client.post("/api/v1/instances", json=smaller)
        assert refused.status_code == 422 and refused.json()["extra"]["field"] == "spec.disk_gb", refused.text
        assert "35 GB is smaller than the 40 GB disk of snapshot 'disk-snap'" in refused.json()["detail"]

        unsized = instance_doc("disk-clone", from_snapshot="disk-snap")
        del unsized["spec"]["disk_gb"]
        created = _create(client, unsized)
        assert created["instance"]["spec"]["disk_gb"] == 40
        # The same document again changes nothing (its disk stays the snapshot's size).
        assert client.patch("/api/v1/instances/disk-clone", json=unsized).json()["operation"] is None


def test_the_catalogue_lists_what_specs_are_validated_against(service):
    from orchestrator.api.serialize import catalog_json

    with service.client("alice") as client:
        answer = client.get("/api/v1/catalog")
        assert answer.status_code == 200, answer.text
        assert client.get("/api/v1/catalog", headers={"Authorization": "Bearer nope"}).status_code == 401
    clouds = {cloud["name"]: cloud for cloud in answer.json()["clouds"]}
    assert list(clouds) == client_clouds(service)
    aws = clouds["aws"]
    assert {"name": "g5.xlarge", "vcpus": 4, "memory_gb": 16, "gpus": 1, "gpu_type": "nvidia-a10g"} in aws["machine_types"]
    assert {"name": "us-east-1", "zones": [f"us-east-1{z}" for z in "abcdef"]} in aws["regions"]
    assert "ubuntu-22.04" in aws["images"]
    assert [m["name"] for m in clouds["docker"]["machine_types"]] == ["small", "medium", "large", "xlarge"]
    # Only the enabled clouds.
    assert [cloud.name for cloud in catalog_json(["gcp"]).clouds] == ["gcp"]


def client_clouds(service) -> list[str]:
    with service.client("alice") as client:
        return client.get("/api/v1/features").json()["clouds"]
