"""StackEngine (the service's Automation API wrapper) against the stand-in: lock retries, error
mapping, where stack settings live and what they hold, and previews that change nothing."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from orchestrator import engine as engine_module
from orchestrator.engine import (
    PROJECT_NAME,
    EngineError,
    StackBusy,
    StackEngine,
    StackNotFound,
    _create_private_file,
)
from orchestrator.settings import load_settings
from stacks.spec import parse_instance
from tests.live import REPO, STANDIN_ROOT, instance_doc
from tests.test_standin import write_lock
from tests.test_stacks_mocks import ADMIN_KEY

LOCK_RETRY_LINE = "the stack is locked by another update; retrying in"
BOOTSTRAP_MARKER = "bootstrap-marker-7f3c9a"
# Repo paths a test run itself writes to; anything else the engine writes under the repo is a leak.
UNWATCHED_REPO_PARTS = {".git", ".venv", "__pycache__", ".pytest_cache"}


@pytest.fixture
def engine(standin_env, tmp_path) -> StackEngine:
    return StackEngine(load_settings({**standin_env, "ORCH_DATA_DIR": str(tmp_path / "data")}))


def backend_root(standin_env: dict) -> Path:
    return Path(standin_env["PULUMI_BACKEND_URL"].removeprefix("file://"))


def up(engine: StackEngine, name: str, on_output=lambda line: None, **spec: object) -> dict:
    document = parse_instance(instance_doc(name, "docker", **spec))
    return engine.up_instance(
        f"instance-{name}", document, admin_public_key=ADMIN_KEY, base_image_id=None, on_output=on_output
    )


def preview(engine: StackEngine, name: str, **spec: object):
    document = parse_instance(instance_doc(name, "docker", **spec))
    return engine.preview_instance(f"instance-{name}", document, admin_public_key=ADMIN_KEY, base_image_id=None)


def pulumi(engine: StackEngine, *args: str) -> subprocess.CompletedProcess:
    """The CLI run by hand in the service's project directory, as the README shows."""
    return subprocess.run(
        [str(STANDIN_ROOT / "bin" / "pulumi"), "-C", str(engine.project_dir), *args],
        env={**os.environ, **engine.env_vars}, capture_output=True, text=True, timeout=120,
    )


def files_holding(root: Path, text: str, since: float) -> list[Path]:
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name not in UNWATCHED_REPO_PARTS]
        for name in files:
            path = Path(directory, name)
            try:
                if path.stat().st_mtime >= since and text.encode() in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


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
    with pytest.raises(StackBusy, match="^stack is locked by another update: error: the stack is currently locked by 1 lock"):
        up(engine, "stuck")


def test_a_failed_update_reports_the_tail_of_stderr_naming_the_resource(engine, monkeypatch):
    monkeypatch.setenv("PULUMI_STANDIN_FAIL", "docker:index/container:Container")
    with pytest.raises(EngineError) as raised:
        up(engine, "broken")
    assert type(raised.value) is EngineError
    message = str(raised.value)
    assert "docker:index/container:Container (broken)" in message and "simulated failure" in message
    assert "stdout:" not in message and len(message.splitlines()) <= 15


def test_stack_settings_live_under_the_data_dir_with_the_document_encrypted(engine, tmp_path):
    started = time.time() - 1
    up(engine, "secretive", bootstrap_script=f"#!/bin/sh\necho {BOOTSTRAP_MARKER}\n")

    settings_file = engine.project_dir / "Pulumi.instance-secretive.yaml"
    assert engine.project_dir == tmp_path / "data" / "pulumi-project"
    text = settings_file.read_text()
    assert "orch:document:\n    secure: v1:" in text and "encryptionsalt: v1:" in text, text
    assert BOOTSTRAP_MARKER not in text and "ssh-ed25519" not in text.split("orch:admin_public_key")[0]
    assert files_holding(REPO, BOOTSTRAP_MARKER, started) == [], "nothing under the repo (the cwd) holds the script"
    assert files_holding(tmp_path, BOOTSTRAP_MARKER, started) == [], "nor anything the engine wrote elsewhere"

    shown = pulumi(engine, "config", "--stack", "instance-secretive")
    assert shown.returncode == 0, shown.stderr
    # The CLI's table: keys of the project's namespace without it, secrets masked.
    assert any(line.split() == ["document", "[secret]"] for line in shown.stdout.splitlines()), shown.stdout
    assert BOOTSTRAP_MARKER not in shown.stdout
    revealed = pulumi(engine, "config", "--stack", "instance-secretive", "--show-secrets")
    assert BOOTSTRAP_MARKER in revealed.stdout, "the document is there, encrypted with the stack's passphrase"


def test_the_project_file_points_at_the_repo_program_from_the_data_dir(engine):
    import yaml

    project = yaml.safe_load((engine.project_dir / "Pulumi.yaml").read_text())
    assert project["name"] == PROJECT_NAME
    assert (engine.project_dir / project["main"]).resolve() == REPO / "stacks"
    assert (engine.project_dir / project["runtime"]["options"]["virtualenv"] / "bin" / "python").exists()


def test_the_passphrase_file_is_created_private_without_a_chmod(standin_env, tmp_path, monkeypatch):
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE")
    path = tmp_path / "data" / "pulumi-passphrase"

    def refuse_chmod(*args, **kwargs):
        raise AssertionError("the passphrase file must be created 0600, not made private afterwards")

    monkeypatch.setattr(Path, "chmod", refuse_chmod)
    monkeypatch.setattr(os, "chmod", refuse_chmod)
    previous = os.umask(0)  # the mode must not depend on the umask
    try:
        engine = StackEngine(load_settings({**standin_env, "ORCH_DATA_DIR": str(tmp_path / "data")}))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert engine.env_vars["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(path)
    assert len(path.read_text()) >= 32
    assert [entry.name for entry in path.parent.iterdir() if entry.name.startswith(".")] == [], "no temp file left"


def test_processes_creating_the_passphrase_at_once_all_read_one_whole_passphrase(tmp_path):
    path = tmp_path / "pulumi-passphrase"
    barrier = threading.Barrier(8)
    seen: list[str] = []

    def create(value: str) -> None:
        barrier.wait()
        _create_private_file(path, value)
        seen.append(path.read_text())

    threads = [threading.Thread(target=create, args=(f"passphrase-{index}" * 4,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1 and seen[0].startswith("passphrase-"), seen


def snapshot_of(engine: StackEngine, standin_env: dict, stack: str) -> dict[str, bytes | list[str]]:
    bookkeeping = backend_root(standin_env) / ".pulumi"
    return {
        "settings": (engine.project_dir / f"Pulumi.{stack}.yaml").read_bytes(),
        "checkpoint": (bookkeeping / "stacks" / PROJECT_NAME / f"{stack}.json").read_bytes(),
        "backend files": sorted(str(path.relative_to(bookkeeping)) for path in bookkeeping.rglob("*")),
        "project files": sorted(path.name for path in engine.project_dir.iterdir()),
    }


def test_a_preview_changes_no_stack_settings_and_no_backend_file(engine, standin_env):
    up(engine, "previewed", machine_type="small")
    before = snapshot_of(engine, standin_env, "instance-previewed")

    summary, steps = preview(engine, "previewed", machine_type="medium")

    assert summary.get("update") == 1 and [step.op for step in steps if step.op == "update"], (summary, steps)
    assert snapshot_of(engine, standin_env, "instance-previewed") == before
    assert not (engine.settings.data_dir / engine_module.PREVIEW_DIR_NAME / "instance-previewed").exists()
    shown = pulumi(engine, "config", "get", "orch:document", "--stack", "instance-previewed")
    assert '"machine_type": "small"' in shown.stdout, "the stack's config is the applied spec, not the previewed one"


def test_a_preview_of_a_stack_that_does_not_exist_creates_none(engine, standin_env):
    with pytest.raises(StackNotFound, match="no stack named 'instance-never' found"):
        preview(engine, "never")
    stacks_dir = backend_root(standin_env) / ".pulumi" / "stacks" / PROJECT_NAME
    assert not (stacks_dir / "instance-never.json").exists()
    assert not (engine.project_dir / "Pulumi.instance-never.yaml").exists()


def test_a_corrupt_checkpoint_is_an_engine_error_with_the_cli_message(engine, standin_env):
    up(engine, "corrupt")
    (backend_root(standin_env) / ".pulumi" / "stacks" / PROJECT_NAME / "instance-corrupt.json").write_text("{not json")
    with pytest.raises(EngineError, match="failed to load checkpoint") as raised:
        engine.inspect("instance-corrupt")
    assert type(raised.value) is EngineError
    with pytest.raises(EngineError, match="failed to load checkpoint"):
        preview(engine, "corrupt")


def test_a_cli_that_can_no_longer_be_run_is_an_engine_error(engine, tmp_path, monkeypatch):
    up(engine, "gone")
    monkeypatch.setattr(engine.command, "command", str(tmp_path / "no-such-pulumi"))
    with pytest.raises(EngineError, match="could not run the Pulumi CLI"):
        engine.inspect("instance-gone")
