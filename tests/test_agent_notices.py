"""The agent shows the service's notices (autostop's warning) with `wall`: once per id, bounded, no shell."""

from __future__ import annotations

import json
import subprocess
import time

from agent.notices import MAX_MESSAGE_BYTES, MAX_REMEMBERED_IDS, Notices
from tests.test_agent import (  # noqa: F401 (fixtures)
    BASE_PATH,
    REPO,
    agent_env,
    python,
    server,
    valid_token,
    write_config,
)

# Records each call: its arguments, then what it read on stdin, as one JSON line.
FAKE_WALL = """#!/usr/bin/env python3
import json, sys
with open(sys.argv[0] + ".calls", "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "stdin": sys.stdin.read()}) + "\\n")
"""


def fake_wall(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wall = bin_dir / "wall"
    wall.write_text(FAKE_WALL)
    wall.chmod(0o755)
    return bin_dir, bin_dir / "wall.calls"


def calls(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def wait_calls(log, count: int, timeout_s: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(calls(log)) >= count:
            return calls(log)
        time.sleep(0.1)
    raise AssertionError(f"expected {count} wall call(s), got {calls(log)}")


def test_each_notice_is_shown_once_with_wall_on_stdin(python, server, tmp_path):  # noqa: F811
    bin_dir, log = fake_wall(tmp_path)
    hostile = "stop in 5 min; $(touch /tmp/pwned) `id` \x1b[2J\x07 bye\n" + "x" * 3000
    server.notices = [{"id": "n-1", "message": hostile}, {"id": 7, "message": "not an id"}, "junk"]
    config = write_config(tmp_path / "config.json", server.url, valid_token(), interval=0.3)
    agent = subprocess.Popen([python, "-m", "agent", "--config", str(config)], cwd=REPO,
                             env=agent_env(f"{bin_dir}:{BASE_PATH}"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        server.wait_for_reports(4, timeout_s=20)  # several answers carry the same notice
        server.notices = [{"id": "n-1", "message": hostile}, {"id": "n-2", "message": "second"}]
        [first, second] = wait_calls(log, 2)
        server.wait_for_reports(len(server.reports) + 3, timeout_s=20)
    finally:
        agent.terminate()
        output = agent.communicate(timeout=10)[0]
    assert len(calls(log)) == 2, (calls(log), output)
    assert first["argv"] == [] and second == {"argv": [], "stdin": "second"}
    shown = first["stdin"]
    assert shown.startswith("stop in 5 min; $(touch /tmp/pwned) `id` ?[2J? bye\n")  # data, control characters gone
    assert len(shown.encode()) == MAX_MESSAGE_BYTES


def test_a_failing_wall_is_retried_and_the_remembered_ids_are_bounded():
    results = iter([1, 0])
    ran = []

    def run(argv, **kwargs):
        ran.append((argv, kwargs["input"]))
        return subprocess.CompletedProcess(argv, next(results, 0), b"", b"wall: cannot open tty")

    notices = Notices(run=run)
    assert notices.show([{"id": "a", "message": "hi"}]) == []  # wall failed: shown on the next answer
    assert notices.show([{"id": "a", "message": "hi"}]) == ["a"]
    assert notices.show([{"id": "a", "message": "hi"}]) == []
    assert ran == [(["wall"], b"hi")] * 2
    for number in range(MAX_REMEMBERED_IDS + 5):
        notices.show([{"id": f"id-{number}", "message": "m"}])
    assert len(notices._shown) == MAX_REMEMBERED_IDS and "id-0" not in notices._shown
    assert notices.show(None) == [] and notices.show({"id": "x"}) == []


def test_no_wall_on_the_machine_is_a_warning_not_a_crash():
    def run(argv, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "wall")

    assert Notices(run=run).show([{"id": "a", "message": "hi"}]) == []
