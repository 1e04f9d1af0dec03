"""Names are unique per owner (issue 11, items 3 and 12), end to end through the API and the stand-in.

- exactly one of concurrent creates of a name wins, whether the name is fresh or was deleted, and
  no other stack (another owner's instance of the same name included) is touched;
- two users may have the same name; each sees only theirs, an admin addresses a user's with ?owner=,
  and an operation is visible to its target's owner and to whoever requested it.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymongo

from orchestrator.cli import main
from tests.live import instance_doc, wait_operation

CONCURRENT_CREATES = 20


def _backend(live) -> Path:
    return Path(live.env["ORCH_PULUMI_BACKEND_URL"].removeprefix("file://"))


def _stack_files(live, stack: str) -> list[Path]:
    return list(_backend(live).glob(f".pulumi/stacks/*/{stack}.json"))


def _resources(live, stack: str) -> list[dict]:
    (path,) = _stack_files(live, stack)
    checkpoint = json.loads(path.read_text())
    return (checkpoint.get("checkpoint", {}).get("latest") or {}).get("resources") or []


def _create_concurrently(live, user: str, name: str) -> list:
    def create(_: int):
        with live.client(user) as client:
            return client.post("/api/v1/instances", json=instance_doc(name))

    with ThreadPoolExecutor(CONCURRENT_CREATES) as pool:
        return list(pool.map(create, range(CONCURRENT_CREATES)))


def _database(live):
    url = live.env["ORCH_MONGODB_URL"]
    client = pymongo.MongoClient(url)
    return client, client.get_default_database()


def test_concurrent_creates_of_a_fresh_and_of_a_deleted_name_have_one_winner(service):
    name = "race-1"
    with service.client("bob") as bob:
        # Another owner's running instance of the same name: it must come through untouched.
        op = bob.post("/api/v1/instances", json=instance_doc(name)).json()["operation"]
        assert wait_operation(bob, op["id"])["status"] == "succeeded"
    bobs_resources = _resources(service, f"instance-bob.{name}")

    with service.client("alice") as alice:
        for round_ in ("fresh", "deleted"):
            responses = _create_concurrently(service, "alice", name)
            codes = sorted(response.status_code for response in responses)
            assert codes == [202] + [409] * (CONCURRENT_CREATES - 1), (round_, [r.text for r in responses])
            assert all("already exists" in r.json()["detail"] for r in responses if r.status_code == 409)
            (winner,) = [r.json() for r in responses if r.status_code == 202]
            op = wait_operation(alice, winner["operation"]["id"])
            assert op["status"] == "succeeded", op
            assert [step["name"] for step in op["steps"]] == ["pulumi up"], "no rollback ran"
            instance = alice.get(f"/api/v1/instances/{name}").json()
            assert instance["status"] == "running" and instance["operation_id"] == op["id"]
            assert len(_stack_files(service, f"instance-alice.{name}")) == 1
            assert _resources(service, f"instance-alice.{name}"), "the winner's stack has its resources"
            if round_ == "fresh":
                op = alice.delete(f"/api/v1/instances/{name}").json()["operation"]
                assert wait_operation(alice, op["id"])["status"] == "succeeded"
                assert alice.get(f"/api/v1/instances/{name}").json()["status"] == "deleted"
                assert _stack_files(service, f"instance-alice.{name}") == []

    assert _resources(service, f"instance-bob.{name}") == bobs_resources, "bob's stack is untouched"
    client, db = _database(service)
    with client:
        # The deleted incarnation stays as history; the losers left nothing behind.
        incarnations = list(db.instances.find({"owner": "alice", "name": name}).sort("created_at", 1))
        assert [row["status"] for row in incarnations] == ["deleted", "running"]
        assert "claim" not in incarnations[0] and incarnations[1]["claim"] == f"alice/{name}"
        kinds = sorted(row["kind"] for row in db.operations.find({"owner": "alice", "target": name}))
        assert kinds == ["create", "create", "delete"]


def test_names_are_per_owner_and_admins_address_them_with_owner(service, capsys):
    name = "dev-1"
    with service.client("alice") as alice, service.client("bob") as bob:
        ops = {}
        for who, client in (("alice", alice), ("bob", bob)):
            response = client.post("/api/v1/instances", json=instance_doc(name))
            assert response.status_code == 202, response.text  # no 409 for another user's name
            ops[who] = response.json()["operation"]
        for who, client in (("alice", alice), ("bob", bob)):
            assert wait_operation(client, ops[who]["id"])["status"] == "succeeded"
            mine = client.get(f"/api/v1/instances/{name}").json()
            assert (mine["owner"], mine["status"]) == (who, "running")
            assert client.get(f"/api/v1/instances/{name}/stack").json()["stack"] == f"instance-{who}.{name}"
            listed = client.get("/api/v1/instances").json()["items"]
            assert {item["owner"] for item in listed} == {who}
        assert alice.get(f"/api/v1/instances/{name}").json()["outputs"] != bob.get(
            f"/api/v1/instances/{name}"
        ).json()["outputs"]

        # A user cannot address another owner's names: the same 404 as for a name nobody has.
        for path in (f"/api/v1/instances/{name}", "/api/v1/instances/no-such-name"):
            response = bob.get(path, params={"owner": "alice"})
            assert response.status_code == 404, response.text
        assert bob.get("/api/v1/operations/" + ops["alice"]["id"]).status_code == 404
        listed = bob.get("/api/v1/instances", params={"owner": "alice"})
        assert listed.status_code == 200 and listed.json()["items"] == [], listed.text

        with service.client(token=service.admin_token) as admin:
            # An admin acts in their own namespace unless ?owner= names another.
            assert admin.get(f"/api/v1/instances/{name}").status_code == 404
            assert admin.get(f"/api/v1/instances/{name}", params={"owner": "alice"}).json()["owner"] == "alice"
            owners = {row["owner"] for row in admin.get("/api/v1/instances", params={"limit": 500}).json()["items"]}
            assert {"alice", "bob"} <= owners
            only_alice = admin.get("/api/v1/instances", params={"owner": "alice"}).json()["items"]
            assert {row["owner"] for row in only_alice} == {"alice"}
            bad_owner = admin.get(f"/api/v1/instances/{name}", params={"owner": "Not A User"})
            assert bad_owner.status_code == 422 and "owner" in bad_owner.json()["detail"]
            doc = {**instance_doc(name), "labels": {"team": "changed-by-admin"}}
            response = admin.patch(f"/api/v1/instances/{name}", json=doc, params={"owner": "alice"})
            assert response.status_code == 202, response.text
            admin_op = response.json()["operation"]
            assert admin.get(f"/api/v1/operations/{admin_op['id']}").status_code == 200
        # The owner of the target reads the operation an admin requested; bob does not.
        assert wait_operation(alice, admin_op["id"])["status"] == "succeeded"
        assert bob.get(f"/api/v1/operations/{admin_op['id']}").status_code == 404
        assert alice.get(f"/api/v1/instances/{name}").json()["labels"] == {"team": "changed-by-admin"}
        assert bob.get(f"/api/v1/instances/{name}").json()["labels"] == {"team": "test"}

        # The client CLI: an admin with --owner.
        code = main(["get", "instance", name, "-o", "json", "--owner", "alice",
                     "--url", service.url, "--token", service.admin_token])
        assert code == 0 and json.loads(capsys.readouterr().out)["labels"] == {"team": "changed-by-admin"}

        # Alice deletes her name and creates it again; bob's instance stays as it is.
        op = alice.delete(f"/api/v1/instances/{name}").json()["operation"]
        assert wait_operation(alice, op["id"])["status"] == "succeeded"
        response = alice.post("/api/v1/instances", json=instance_doc(name))
        assert response.status_code == 202, response.text
        assert wait_operation(alice, response.json()["operation"]["id"])["status"] == "succeeded"
        assert alice.get(f"/api/v1/instances/{name}").json()["status"] == "running"
        assert bob.get(f"/api/v1/instances/{name}").json()["status"] == "running"


def test_snapshot_names_are_per_owner(service):
    with service.client("alice") as alice, service.client("bob") as bob:
        for client in (alice, bob):
            op = client.post("/api/v1/instances", json=instance_doc("snap-src")).json()["operation"]
            assert wait_operation(client, op["id"])["status"] == "succeeded"
        for who, client in (("alice", alice), ("bob", bob)):
            response = client.post("/api/v1/instances/snap-src/snapshots", json={"name": "snap-1"})
            assert response.status_code == 202, response.text
            assert wait_operation(client, response.json()["operation"]["id"])["status"] == "succeeded"
            assert client.get("/api/v1/snapshots/snap-1").json()["owner"] == who
            assert len(_stack_files(service, f"snapshot-{who}.snap-1")) == 1
        # A deleted snapshot name can be taken again by its owner.
        op = alice.delete("/api/v1/snapshots/snap-1").json()["operation"]
        assert wait_operation(alice, op["id"])["status"] == "succeeded"
        response = alice.post("/api/v1/instances/snap-src/snapshots", json={"name": "snap-1"})
        assert response.status_code == 202, response.text
        assert wait_operation(alice, response.json()["operation"]["id"])["status"] == "succeeded"
        assert bob.get("/api/v1/snapshots/snap-1").json()["status"] == "available"
