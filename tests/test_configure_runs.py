"""How configure_instance reads an ansible-runner run's outcome: when it retries, when it stops.

ansible-runner is replaced by a fake that plays back what a real run hands the event
handler and returns (or raises); the playbook itself runs for real in test_playbook.py.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import ansible_runner
import pexpect
import pytest
import yaml

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


def lost_output_after(*events: dict):
    """A run whose output ansible-runner lost after the callback plugin wrote these events to its files."""

    def run(**kwargs):
        job_events = Path(kwargs["private_data_dir"]) / "artifacts" / kwargs["ident"] / "job_events"
        job_events.mkdir(parents=True)
        for index, event in enumerate(events):
            (job_events / f"uuid-{index}-partial.json").write_text(json.dumps(event))
        (job_events / "uuid-being-written-partial.json").write_text('{"event": "runner_on_')
        lost_output()

    return run


STATS = {
    "event": "playbook_on_stats",
    "event_data": {"ok": {"h": 9}, "changed": {"h": 0}, "skipped": {"h": 3}, "failures": {}, "dark": {}},
}
FAILED = {
    "event": "runner_on_failed",
    "event_data": {"task": "Run the bootstrap script", "host": "h", "res": {"msg": "non-zero return code"}},
}


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


def test_a_lost_result_is_read_from_the_event_files_the_run_left(monkeypatch, tmp_path):
    summary, log = configure_with(monkeypatch, tmp_path, [lost_output_after({"event": "playbook_on_start"}, STATS)], attempts=3)
    assert summary == configure.ConfigureSummary(ok=9, changed=0, skipped=3, attempts=1)
    assert log == [f"{configure.RESULT_LOST}: it was read from the play's event files"]


def test_a_failure_in_the_event_files_of_a_lost_result_fails_the_run_and_is_not_retried(monkeypatch, tmp_path):
    failed_stats = {**STATS, "event_data": {**STATS["event_data"], "failures": {"h": 1}}}
    with pytest.raises(configure.ConfigureError) as raised:
        configure_with(monkeypatch, tmp_path, [lost_output_after(FAILED, failed_stats), lambda **kwargs: Finished()], attempts=3)
    assert str(raised.value) == "task 'Run the bootstrap script' failed on h: non-zero return code"


def test_results_lost_on_every_attempt_end_in_an_error_that_says_so(monkeypatch, tmp_path):
    with pytest.raises(configure.ConfigureError) as raised:
        configure_with(monkeypatch, tmp_path, [lost_output] * 2, attempts=2)
    assert str(raised.value) == f"{configure.RESULT_LOST} (gave up after 2 attempts)"


def test_a_task_failure_seen_before_the_output_was_lost_is_not_retried(monkeypatch, tmp_path):
    with pytest.raises(configure.ConfigureError) as raised:
        configure_with(monkeypatch, tmp_path, [failed_task, lambda **kwargs: Finished()], attempts=3)
    assert str(raised.value) == "task 'Install goofys' failed on h: checksum mismatch"


class Stopped:
    """What ansible-runner returns once it killed ansible-playbook at its `timeout`."""
    status, rc, stats = "timeout", 254, None


def test_a_run_stopped_at_the_timeout_fails_naming_the_time_and_the_task(monkeypatch, tmp_path):
    given: list[int] = []

    def stopped_in_the_bootstrap(**kwargs):
        given.append(kwargs["timeout"])
        kwargs["event_handler"]({
            "event": "playbook_on_task_start",
            "stdout": "TASK [bootstrap : Run the bootstrap script] ***",
            "event_data": {"task": "Run the bootstrap script"},
        })
        return Stopped()

    monkeypatch.setattr(ansible_runner, "run", stopped_in_the_bootstrap)
    monkeypatch.setattr(configure, "wait_for_ssh_port", lambda *args: None)
    with pytest.raises(configure.ConfigureError) as raised:
        configure.configure_instance(
            host="127.0.0.1", port=22, ssh_user="root", private_key_pem="not a key", extravars={},
            on_log=lambda line: None, workdir=tmp_path / "runs", attempts=3, timeout_s=90,
        )
    assert str(raised.value) == "the playbook did not finish within 90 s and was stopped in task 'Run the bootstrap script'"
    assert given == [90], "one run, given the whole time: a stopped run is not retried"


def test_retries_end_when_the_time_is_up(monkeypatch, tmp_path):
    given: list[int] = []

    def slow_lost_output(**kwargs):
        given.append(kwargs["timeout"])
        time.sleep(0.3)
        lost_output()

    monkeypatch.setattr(ansible_runner, "run", slow_lost_output)
    monkeypatch.setattr(configure, "wait_for_ssh_port", lambda *args: None)
    with pytest.raises(configure.ConfigureError) as raised:
        configure.configure_instance(
            host="127.0.0.1", port=22, ssh_user="root", private_key_pem="not a key", extravars={},
            on_log=lambda line: None, workdir=tmp_path / "runs", attempts=10, retry_delay_s=1, timeout_s=1.5,
        )
    # 0.3 s of run and at most the 1.2 s left of waiting: under 1 s is left, too little for a second run.
    assert str(raised.value) == f"{configure.RESULT_LOST} (gave up after 1 attempts in 1.5 s)"
    assert given == [2]


def test_the_shortest_timeout_still_runs_the_play_once(monkeypatch, tmp_path):
    given: list[int] = []

    def finished(**kwargs):
        given.append(kwargs["timeout"])
        return Finished()

    monkeypatch.setattr(ansible_runner, "run", finished)
    monkeypatch.setattr(configure, "wait_for_ssh_port", lambda *args: None)
    summary = configure.configure_instance(
        host="127.0.0.1", port=22, ssh_user="root", private_key_pem="not a key", extravars={},
        on_log=lambda line: None, workdir=tmp_path / "runs", timeout_s=1,
    )
    assert summary.attempts == 1 and given == [1]


def test_two_runs_at_once_in_one_workdir_each_read_their_own_event_files(monkeypatch, tmp_path):
    both_running = threading.Barrier(2, timeout=10)

    def lost_after_its_own_stats(**kwargs):
        # Each run's extra vars say whose it is; its stats count that many ok tasks.
        oks = yaml.safe_load((Path(kwargs["private_data_dir"]) / "env" / "extravars").read_text())["oks"]
        both_running.wait()  # the two runs' files are there at the same time
        lost_output_after({**STATS, "event_data": {**STATS["event_data"], "ok": {"h": oks}}})(**kwargs)

    monkeypatch.setattr(ansible_runner, "run", lost_after_its_own_stats)
    monkeypatch.setattr(configure, "wait_for_ssh_port", lambda *args: None)
    oks_read: dict[int, int] = {}

    def configure_one(oks: int) -> None:
        oks_read[oks] = configure.configure_instance(
            host="127.0.0.1", port=22, ssh_user="root", private_key_pem="not a key", extravars={"oks": oks},
            on_log=lambda line: None, workdir=tmp_path / "runs", attempts=1,
        ).ok

    threads = [threading.Thread(target=configure_one, args=(oks,)) for oks in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert oks_read == {1: 1, 2: 2}
    assert list((tmp_path / "runs").iterdir()) == [], "each run's private directory is removed"
