"""Autostop through the REST API, spec files (`orch apply -f`), `orch get/describe`, and the agent's report answer."""

from __future__ import annotations

import datetime as dt
import time

import pymongo
import pytest
import yaml

from orchestrator.cli import main
from tests.live import instance_doc, start_service, wait_operation
from orchestrator.auth import mint_agent_token, token_hash
from tests.live import JWT_SECRET
from tests.test_agent_api import agent_identity, post_report, report

AUTOSTOP = {"idle_minutes": 30, "metric": "cpu", "below_percent": 10, "action": "stop"}


@pytest.fixture(scope="module")
def live(tmp_path_factory, mongo_url):
    service = start_service(tmp_path_factory.mktemp("autostop-service"), mongo_url, ORCH_AGENT_INTERVAL_S="1",
                            ORCH_AUTOSTOP_CHECK_S="1")
    with service.client() as client:
        created = client.post("/api/v1/instances", json=instance_doc("idle-box", autostop=AUTOSTOP))
        assert created.status_code == 202, created.text
        assert wait_operation(client, created.json()["operation"]["id"])["status"] == "succeeded"
    yield service
    service.stop()


def agent_token(live, name: str) -> str:
    """An agent token for the instance, recorded as the service records the one it gives the agent."""
    store = pymongo.MongoClient(live.env["ORCH_MONGODB_URL"])
    try:
        instances = store.get_default_database()["instances"]
        row = instances.find_one({"name": name, "status": "running"})
        token, expires = mint_agent_token(JWT_SECRET, str(row["_id"]))
        instances.update_one({"_id": row["_id"]}, {"$set": {"agent_token_hash": token_hash(token)}})
    finally:
        store.close()
    return token


def set_on_running(live, name: str, fields: dict) -> None:
    """Set fields of the running instance straight in the store (as another process would)."""
    store = pymongo.MongoClient(live.env["ORCH_MONGODB_URL"])
    try:
        instances = store.get_default_database()["instances"]
        instances.update_one({"name": name, "status": "running"}, {"$set": fields})
    finally:
        store.close()


def orch(live, capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--url", live.url, "--token", live.token_for("alice")])
    captured = capsys.readouterr()
    return int(code), captured.out, captured.err


def test_bad_autostop_settings_are_422s_naming_the_field(live):
    with live.client() as client:
        for autostop, field, words in [
            ({"idle_minutes": 30}, "spec.autostop.metric", "no GPU"),  # docker: no GPU, gpu is the default metric
            ({"idle_minutes": 2, "metric": "cpu"}, "spec.autostop.idle_minutes", "at least 5 (ORCH_AUTOSTOP_MIN_IDLE_MINUTES)"),
            ({"idle_minutes": 30, "metric": "cpu", "below_percent": 150}, "spec.autostop.below_percent", "at most 100"),
            ({"idle_minutes": 30, "metric": "cpu", "action": "pause"}, "spec.autostop.action", "expected one of"),
        ]:
            answer = client.post("/api/v1/instances", json=instance_doc("bad-1", autostop=autostop))
            assert answer.status_code == 422, answer.text
            assert answer.json()["extra"]["field"] == field and words in answer.json()["detail"], answer.json()


def wait_warning(client, expected: str) -> dict:
    """The instance once the checker's finding is `expected` (it checks every second here)."""
    deadline = time.monotonic() + 10
    while (instance := client.get("/api/v1/instances/idle-box").json())["autostop"]["warning"] != expected:
        assert time.monotonic() < deadline, f"the checker never found {expected!r}: {instance['autostop']!r}"
        time.sleep(0.2)
    return instance


def test_autostop_in_the_api_spec_files_get_and_describe(live, tmp_path, capsys):
    path = tmp_path / "idle-box.yaml"
    # As if the machine had come up an hour ago: its agent has been silent for the whole window.
    came_up = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=1)
    set_on_running(live, "idle-box", {"running_since": came_up})
    with live.client() as client:
        instance = wait_warning(client, "no report for over 30 min: not counted as idle")
        assert instance["spec"]["autostop"] == AUTOSTOP
        assert {key: instance["autostop"][key] for key in ("idle_since", "warned_at", "decided_at")} == dict.fromkeys(
            ("idle_since", "warned_at", "decided_at"))
        # Changing only autostop changes no stack: no operation, no new generation.
        path.write_text(yaml.safe_dump(instance_doc("idle-box", autostop={**AUTOSTOP, "idle_minutes": 45}),
                                       sort_keys=False))
        code, out, err = orch(live, capsys, "apply", "-f", str(path))
        assert code == 0, (out, err)
        changed = client.get("/api/v1/instances/idle-box").json()
        assert changed["spec"]["autostop"]["idle_minutes"] == 45 and changed["generation"] == instance["generation"]
        assert changed["operation_id"] == instance["operation_id"]
        # No agent reports: the checker says it cannot count the instance as idle, under the new settings.
        wait_warning(client, "no report for over 45 min: not counted as idle")
    code, out, _ = orch(live, capsys, "get", "instances")
    assert out.splitlines()[0].split()[-1] == "AUTOSTOP" and "cpu<10%/45m unknown" in out
    code, out, _ = orch(live, capsys, "describe", "instance", "idle-box")
    assert "Autostop:\n  Settings:" in out and "stop when cpu below 10% for 45 min" in out
    assert "no report for over 45 min: not counted as idle" in out


def test_the_report_answer_carries_the_pending_notice(live):
    token = agent_token(live, "idle-box")
    answer = post_report(live, token, report(agent_identity(token)))
    assert answer.status_code == 202 and answer.json() == {"accepted": 1}
    # As a checker (this service's or another's on the same store) records a warning.
    set_on_running(live, "idle-box",
                   {"autostop_state.notice_id": "n-1", "autostop_state.notice_message": "stopping soon"})
    deadline = time.monotonic() + 10
    while True:
        answer = post_report(live, token, report(agent_identity(token))).json()
        if answer.get("notices"):
            break
        assert time.monotonic() < deadline, "the notice never reached the report answer"
        time.sleep(0.5)
    assert answer == {"accepted": 1, "notices": [{"id": "n-1", "message": "stopping soon"}]}
