"""How configure_instance reads an ansible-runner run's outcome: when it retries, when it stops.

ansible-runner is replaced by a fake that plays back what a real run hands the event
handler and returns (or raises); the playbook itself runs for real in test_playbook.py.
"""

from __future__ import annotations

from pathlib import Path

import ansible_runner
import pexpect
import pytest

from orchestrator import configure


class Finished:
    status, rc = "successful", 0
    stats = {"ok": {"h": 7}, "changed": {"h": 2}, "skipped": {"h": 1}}


def lost_output(**kwargs):
    """What ansible-runner raises when ansible-playbook's output does not end within its 5 s wait."""
    raise pexpect.exceptions.TIMEOUT("<pexpect.pty_spawn.spawn object>")


def failed_task(**kwargs):
    kwargs["event_handler"]({
        "event": "runner_on_failed",
        "stdout": "fatal: [h]: FAILED!",
        "event_data": {"task": "Install goofys", "host": "h", "res": {"msg": "checksum mismatch"}},
    })
    lost_output()


def configure_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, runs: list, attempts: int):
    """configure_instance with ansible-runner's runs played back in order; its summary and its log."""
    calls = iter(runs)
    monkeypatch.setattr(ansible_runner, "run", lambda **kwargs: next(calls)(**kwargs))
    monkeypatch.setattr(configure, "wait_for_ssh_port", lambda *args: None)
    log: list[str] = []
    summary = configure.configure_instance(
        host="127.0.0.1", port=22, ssh_user="root", private_key_pem="not a key", extravars={},
        on_log=log.append, workdir=tmp_path / "runs", attempts=attempts, retry_delay_s=0,
    )
    return summary, log


def test_a_run_whose_result_ansible_runner_lost_is_run_again(monkeypatch, tmp_path):
    summary, log = configure_with(monkeypatch, tmp_path, [lost_output, lambda **kwargs: Finished()], attempts=3)
    assert summary == configure.ConfigureSummary(ok=7, changed=2, skipped=1, attempts=2)
    assert log == [f"{configure.RESULT_LOST}; retrying in 0s (attempt 1/3)"]


def test_results_lost_on_every_attempt_end_in_an_error_that_says_so(monkeypatch, tmp_path):
    with pytest.raises(configure.ConfigureError) as raised:
        configure_with(monkeypatch, tmp_path, [lost_output] * 2, attempts=2)
    assert str(raised.value) == f"{configure.RESULT_LOST} (gave up after 2 attempts)"


def test_a_task_failure_seen_before_the_output_was_lost_is_not_retried(monkeypatch, tmp_path):
    with pytest.raises(configure.ConfigureError) as raised:
        configure_with(monkeypatch, tmp_path, [failed_task, lambda **kwargs: Finished()], attempts=3)
    assert str(raised.value) == "task 'Install goofys' failed on h: checksum mismatch"
