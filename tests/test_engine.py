"""StackEngine (the service's Automation API wrapper) against the stand-in: lock retries and error mapping."""

from __future__ import annotations

import os

import pytest

from orchestrator import engine as engine_module
from orchestrator.engine import PROJECT_NAME, EngineError, StackEngine
from orchestrator.settings import load_settings
from stacks.spec import parse_instance
from tests.live import instance_doc
from tests.test_standin import write_lock
from tests.test_stacks_mocks import ADMIN_KEY

LOCK_RETRY_LINE = "the stack is locked by another update; retrying in"


@pytest.fixture
def engine(standin_env, tmp_path, monkeypatch) -> StackEngine:
    monkeypatch.setenv("ORCH_PULUMI_PROJECT_DIR", str(tmp_path / "project"))
    return StackEngine(load_settings({**standin_env, "ORCH_DATA_DIR": str(tmp_path / "data")}))


def up(engine: StackEngine, name: str, on_output=lambda line: None) -> dict:
    document = parse_instance(instance_doc(name, "docker"))
    return engine.up_instance(
        f"instance-{document.name}", document, admin_public_key=ADMIN_KEY, base_image_id=None, on_output=on_output
    )


def test_an_update_waits_for_a_stack_lock_held_elsewhere(engine, standin_env):
    up(engine, "waits")
    lock = write_lock(standin_env, "instance-waits", os.getpid(), PROJECT_NAME)  # a live process holds the stack
    log: list[str] = []

    def on_output(line: str) -> None:
        log.append(line)
        if LOCK_RETRY_LINE in line:
            lock.unlink(missing_ok=True)  # the other update ends while this one waits

    outputs = up(engine, "waits", on_output)
    assert outputs["cloud"] == "docker"
    waited = [line for line in log if LOCK_RETRY_LINE in line]
    assert waited and any(line.startswith("Updating (instance-waits)") for line in log), log


def test_a_lock_that_is_never_released_fails_the_operation_clearly(engine, standin_env, monkeypatch):
    up(engine, "stuck")
    write_lock(standin_env, "instance-stuck", os.getpid(), PROJECT_NAME)
    monkeypatch.setattr(engine_module, "CONCURRENT_UPDATE_RETRIES", 2)
    with pytest.raises(EngineError, match="^stack is locked by another update: error: the stack is currently locked by 1 lock"):
        up(engine, "stuck")


def test_a_failed_update_reports_the_tail_of_stderr_naming_the_resource(engine, monkeypatch):
    monkeypatch.setenv("PULUMI_STANDIN_FAIL", "docker:index/container:Container")
    with pytest.raises(EngineError) as raised:
        up(engine, "broken")
    message = str(raised.value)
    assert "docker:index/container:Container (broken)" in message and "simulated failure" in message
    assert "stdout:" not in message and len(message.splitlines()) <= 15
