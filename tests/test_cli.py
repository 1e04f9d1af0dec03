"""`orch` client commands against the running service (the Pulumi CLI stand-in behind it), in-process."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass

import pytest
import yaml

from orchestrator import __version__
from orchestrator.cli import main
from orchestrator.client.errors import ExitCode
from tests.live import REPO, free_port, instance_doc, wait_operation


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def orch(service, capsys):
    """Run `orch ARGS --url <service> --token <user's token>` in-process; the exit code and what it printed."""

    def run(*argv: str, user: str = "alice", token: str | None = None, url: str | None = None) -> Result:
        code = main([*argv, "--url", url or service.url, "--token", token or service.token_for(user)])
        captured = capsys.readouterr()
        return Result(int(code), captured.out, captured.err)

    return run


def spec_file(tmp_path, name: str, *documents: dict) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return str(path)


def labelled(document: dict, **labels: str) -> dict:
    return {**document, "labels": labels}


def operation_id(output: str, ref: str, verb: str) -> str:
    match = re.search(rf"^{re.escape(ref)} {verb} \(operation (\w+)\)$", output, re.MULTILINE)
    assert match, f"no `{ref} {verb} (operation ...)` in:\n{output}"
    return match.group(1)


def test_apply_reapply_diff_update_delete(orch, service, tmp_path):
    document = instance_doc("cli-life")
    path = spec_file(tmp_path, "life.yaml", document)

    new = orch("diff", "-f", path)
    assert new.code == ExitCode.FAILED, new
    assert new.out.startswith("instance/cli-life (new instance)\n") and "+  machine_type: small" in new.out

    created = orch("apply", "-f", path, "--wait")
    assert created.code == 0, created
    create_op = operation_id(created.out, "instance/cli-life", "created")
    assert "  [pulumi up] succeeded" in created.out
    assert "instance/cli-life: create succeeded" in created.out

    with service.client("alice") as client:
        assert client.get("/api/v1/instances/cli-life").json()["status"] == "running"
        again = orch("apply", "-f", path)
        assert (again.code, again.out) == (0, "instance/cli-life unchanged\n")
        assert client.get("/api/v1/instances/cli-life").json()["operation_id"] == create_op, "no new operation"
        assert orch("diff", "-f", path) == Result(0, "", "")

        document["spec"]["machine_type"] = "medium"
        spec_file(tmp_path, "life.yaml", document)
        diff = orch("diff", "-f", path)
        assert diff.code == ExitCode.FAILED, diff
        lines = diff.out.splitlines()
        assert lines[0].startswith("instance/cli-life (changed: 1 to update")
        assert re.fullmatch(r"~  update   docker:index/container:Container  cli-life  \[.*\bmemory\b.*\]", lines[1])
        assert "-  machine_type: small" in lines and "+  machine_type: medium" in lines
        stored = client.get("/api/v1/instances/cli-life").json()
        assert (stored["spec"]["machine_type"], stored["operation_id"]) == ("small", create_op), "diff changes nothing"

        updated = orch("apply", "-f", path, "--wait")
        assert updated.code == 0, updated
        update_op = operation_id(updated.out, "instance/cli-life", "configured")
        assert wait_operation(client, update_op)["kind"] == "update"
        assert client.get("/api/v1/instances/cli-life").json()["spec"]["machine_type"] == "medium"

        deleted = orch("delete", "-f", path, "--wait")
        assert deleted.code == 0, deleted
        assert operation_id(deleted.out, "instance/cli-life", "deleting")
        assert deleted.out.endswith("instance/cli-life deleted\n")
        assert client.get("/api/v1/instances/cli-life").json()["status"] == "deleted"

    # A deleted instance is history: hidden from `get instances` unless --all.
    listed = [item["name"] for item in json.loads(orch("get", "instances", "-o", "json").out)]
    assert "cli-life" not in listed
    every = json.loads(orch("get", "instances", "--all", "-o", "json").out)
    assert any(item["name"] == "cli-life" and item["status"] == "deleted" for item in every)
    assert orch("get", "instance", "cli-life", "--all").code == ExitCode.INVALID

    missing = orch("delete", "instance", "cli-life")
    assert (missing.code, missing.out, missing.err) == (ExitCode.REFUSED, "", "error: instance/cli-life not found\n")
    assert orch("delete", "-f", path, "--ignore-not-found").code == 0


def test_instance_snapshot_and_instance_from_it_in_one_file(orch, service, tmp_path):
    restored = instance_doc("cli-snap-restored", from_snapshot="cli-snap-1", image=None)
    del restored["spec"]["disk_gb"]  # the snapshot's size (its instance's, 40 GB), which only the service knows
    path = spec_file(
        tmp_path,
        "chain.yaml",
        instance_doc("cli-snap-src", disk_gb=40),
        {"kind": "Snapshot", "name": "cli-snap-1", "instance": "cli-snap-src"},
        restored,
    )
    applied = orch("apply", "-f", path)
    assert applied.code == 0, applied
    # Each document was sent once the one it needs was ready: the service accepted all three.
    source_op = operation_id(applied.out, "instance/cli-snap-src", "created")
    snapshot_op = operation_id(applied.out, "snapshot/cli-snap-1", "created")
    restored_op = operation_id(applied.out, "instance/cli-snap-restored", "created")
    assert applied.err.splitlines() == [
        f"snapshot/cli-snap-1: waiting for instance/cli-snap-src (operation {source_op})",
        f"instance/cli-snap-restored: waiting for snapshot/cli-snap-1 (operation {snapshot_op})",
    ]
    with service.client("alice") as client:
        assert wait_operation(client, restored_op)["status"] == "succeeded"
        assert orch("apply", "-f", path).out == (
            "instance/cli-snap-src unchanged\nsnapshot/cli-snap-1 unchanged\ninstance/cli-snap-restored unchanged\n"
        )
        assert client.get("/api/v1/instances/cli-snap-restored").json()["spec"]["disk_gb"] == 40
        assert orch("diff", "-f", path).code == 0

        listed = orch("get", "snapshots", "--instance", "cli-snap-src", "-o", "json")
        api = client.get("/api/v1/snapshots", params={"instance": "cli-snap-src"}).json()["items"]
        assert json.loads(listed.out) == api and api[0]["status"] == "available"

        # Last document first; the snapshot only once the instance made from it is gone (the service insists).
        deleted = orch("delete", "-f", path)
        assert deleted.code == 0, deleted
        refs = re.findall(r"^(\S+) deleting", deleted.out, re.MULTILINE)
        assert refs == ["instance/cli-snap-restored", "snapshot/cli-snap-1", "instance/cli-snap-src"]
        assert deleted.err.startswith("snapshot/cli-snap-1: waiting for instance/cli-snap-restored (operation ")
        for op_id in re.findall(r"\(operation (\w+)\)", deleted.out):
            assert wait_operation(client, op_id)["status"] == "succeeded"
        assert client.get("/api/v1/snapshots/cli-snap-1").json()["status"] == "deleted"
        assert client.get("/api/v1/instances/cli-snap-src").json()["status"] == "deleted"
        hidden = orch("get", "snapshots", "--instance", "cli-snap-src", "-o", "json")
        assert (hidden.code, json.loads(hidden.out)) == (0, [])
        shown = orch("get", "snapshots", "--instance", "cli-snap-src", "-A", "-o", "json")
        assert [(s["name"], s["status"]) for s in json.loads(shown.out)] == [("cli-snap-1", "deleted")]


def test_a_spec_that_fails_validation_changes_nothing(orch, service, tmp_path):
    bad = instance_doc("cli-invalid-2", disk_gb=0)
    path = spec_file(tmp_path, "two.yaml", instance_doc("cli-invalid-1"), bad)
    line = open(path).read().splitlines().index("  disk_gb: 0") + 1
    for command in ("apply", "diff"):
        result = orch(command, "-f", path)
        assert result.code == ExitCode.INVALID, result
        assert result.out == ""
        assert (
            result.err
            == f"error: {path}: document 2 (instance cli-invalid-2), line {line}: spec.disk_gb: must be at least 1\n"
        )
    with service.client("alice") as client:
        assert client.get("/api/v1/instances/cli-invalid-1").status_code == 404


def test_get_describe_stack_logs_metrics_match_the_api(orch, service, tmp_path, monkeypatch):
    user = "json-user"
    specs = tmp_path / "specs"
    specs.mkdir()
    spec_file(specs, "b.yaml", labelled(instance_doc("cli-json-b"), team="b"))
    spec_file(specs, "a.yml", instance_doc("cli-json-a"))
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(instance_doc("cli-json-c", cloud="aws"))))
    applied = orch("apply", "-f", str(specs), "-f", "-", "--wait", user=user)
    assert applied.code == 0, applied
    refs = re.findall(r"^(instance/\S+) created", applied.out, re.MULTILINE)
    assert refs == ["instance/cli-json-a", "instance/cli-json-b", "instance/cli-json-c"], "directory sorted, then stdin"

    with service.client(user) as client:
        api_items = client.get("/api/v1/instances").json()["items"]
        assert json.loads(orch("get", "instances", "-o", "json", user=user).out) == api_items
        assert yaml.safe_load(orch("get", "instances", "-o", "yaml", user=user).out) == api_items
        one = client.get("/api/v1/instances/cli-json-a").json()
        assert json.loads(orch("get", "instance", "cli-json-a", "-o", "json", user=user).out) == one

        filtered = orch("get", "instances", "--cloud", "docker", "-l", "team=b", "-o", "json", user=user)
        assert [item["name"] for item in json.loads(filtered.out)] == ["cli-json-b"]
        table = orch("get", "instances", "--status", "running", user=user).out.splitlines()
        assert table[0].split() == ["NAME", "CLOUD", "REGION", "STATUS", "HEALTH", "PUBLIC-IP", "AGE", "AUTOSTOP"]
        rows = {line.split()[0]: line.split() for line in table[1:]}
        assert rows["cli-json-c"][1:6] == ["aws", "us-east-1", "running", "unknown", one_ip(client, "cli-json-c")]
        assert set(rows) == {"cli-json-a", "cli-json-b", "cli-json-c"}

        described = orch("describe", "instance", "cli-json-a", user=user)
        assert described.code == 0
        for expected in (
            "Name:       cli-json-a",
            "Status:     running",
            "machine_type: small",
            "Outputs:",
            "  public_ip: ",
            "Health:",
            "  State:       unknown",
            "Last operation:",
            f"  ID:      {one['operation_id']}",
            "  Steps:   pulumi up (succeeded)",
            "Snapshots:\n  <none>",
        ):
            assert expected in described.out, expected

        stack_api = client.get("/api/v1/instances/cli-json-a/stack").json()
        assert json.loads(orch("stack", "cli-json-a", "-o", "json", user=user).out) == stack_api
        stack_text = orch("stack", "cli-json-a", user=user).out
        assert "docker:index/container:Container" in stack_text and f"Stack: {stack_api['stack']}" in stack_text

        op = client.get(f"/api/v1/operations/{one['operation_id']}").json()
        for follow in ((), ("--follow",)):
            logs = orch("logs", one["operation_id"], *follow, user=user)
            assert (logs.code, logs.out.splitlines()) == (0, op["logs"])

        metrics = orch("metrics", "cli-json-a", "--since", "1h", "-o", "json", user=user)
        assert (metrics.code, json.loads(metrics.out)) == (
            0,
            client.get("/api/v1/instances/cli-json-a/metrics").json()["samples"],
        )

        other_user = orch("describe", "instance", "cli-json-a", user="someone-else")
        assert (other_user.code, other_user.err) == (ExitCode.REFUSED, "error: instance 'cli-json-a' not found\n")

    deleted = orch("delete", "instance", "cli-json-a", "cli-json-b", "cli-json-c", "--wait", user=user)
    assert deleted.code == 0, deleted


def one_ip(client, name: str) -> str:
    return client.get(f"/api/v1/instances/{name}").json()["public_ip"]


def test_a_failing_operation_exits_1_with_its_error(orch, tmp_path):
    path = spec_file(tmp_path, "fail.yaml", labelled(instance_doc("cli-fail"), **{"standin-fail": "create"}))
    result = orch("apply", "-f", path, "--wait")
    assert result.code == ExitCode.FAILED, result
    error = result.out.split("\ninstance/cli-fail: create failed:\n", 1)[1]
    assert "simulated failure" in error and all(line.startswith("    ") for line in error.splitlines()), result.out
    op_id = operation_id(result.out, "instance/cli-fail", "created")
    again = orch("apply", "-f", path)
    assert (again.code, again.out) == (
        0,
        "instance/cli-fail unchanged (status failed: delete it and apply again to start over)\n",
    )
    followed = orch("logs", op_id, "--follow")
    assert followed.code == ExitCode.FAILED and followed.err.startswith(f"operation {op_id} failed: ")


def test_server_errors_are_one_line_with_distinct_exit_codes(orch, service, tmp_path):
    unreachable = orch("get", "instances", url=f"http://127.0.0.1:{free_port()}")
    bad_token = orch("get", "instances", token="not-a-token")
    refused = orch("get", "instance", "cli-no-such-instance")
    path = spec_file(
        tmp_path,
        "from-snapshot.yaml",
        instance_doc("cli-from-missing", from_snapshot="cli-no-such-snapshot", image=None),
    )
    refused_spec = orch("apply", "-f", path)
    results = [unreachable, bad_token, refused, refused_spec]
    assert [r.code for r in results] == [ExitCode.UNREACHABLE, ExitCode.AUTH, ExitCode.REFUSED, ExitCode.REFUSED]
    for result in results:
        assert len(result.err.splitlines()) == 1 and result.err.startswith("error: "), result.err
        assert "Traceback" not in result.err + result.out
    assert "cannot reach the orch service at http://127.0.0.1:" in unreachable.err
    assert "not authorized (401)" in bad_token.err
    assert "instance 'cli-no-such-instance' not found" in refused.err
    assert "(422): spec.from_snapshot: snapshot 'cli-no-such-snapshot' not found" in refused_spec.err


def test_version_flag_and_command_print_the_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"orch {__version__}\n"
    assert main(["version"]) == 0 and capsys.readouterr().out == f"orch {__version__}\n"


def test_serve_on_a_port_in_use_names_its_holder_and_exits_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "ORCH_DATA_DIR": str(tmp_path)}
        served = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "serve", "--port", str(port)],
            env=env, capture_output=True, text=True, timeout=60,
        )
    assert served.returncode == 2, served
    assert served.stderr.strip().splitlines()[-1] == (
        f"orch serve: port {port} is in use (by pid {os.getpid()}); choose another with --port"
    )


DOCKER_EXAMPLES = sorted(
    path.name
    for path in (REPO / "examples").glob("*.yaml")
    if {doc["spec"]["cloud"] for doc in yaml.safe_load_all(path.read_text()) if doc["kind"] == "Instance"} == {"docker"}
)


@pytest.mark.parametrize("example", DOCKER_EXAMPLES)
def test_the_docker_examples_apply_and_delete(orch, service, example):
    """The examples that need no cloud account run as written (the others are validated in test_specfiles)."""
    path = str(REPO / "examples" / example)
    applied = orch("apply", "-f", path, "--wait")
    assert applied.code == 0, applied
    with service.client("alice") as client:
        deleted = orch("delete", "-f", path, "--wait")
        assert deleted.code == 0, deleted
        for op_id in re.findall(r"\(operation (\w+)\)", applied.out + deleted.out):
            assert wait_operation(client, op_id)["status"] == "succeeded"


class PrefixProxy:
    """An HTTP reverse proxy serving the service under /orch (as a site's proxy would): the prefix is stripped."""

    PREFIX = "/orch"

    def __init__(self, target: str):
        import http.server
        import threading

        import httpx

        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                proxy.paths.append(self.path)
                if not self.path.startswith(proxy.PREFIX + "/"):
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                answer = httpx.request(self.command, target + self.path[len(proxy.PREFIX):], headers=headers,
                                       content=body, timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PATCH = do_DELETE = _forward

            def log_message(self, *args) -> None:
                pass

        self.paths: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{self.PREFIX}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_service_url_with_a_base_path_is_followed_and_a_malformed_one_refused(orch, service, tmp_path):
    proxy = PrefixProxy(service.url)
    try:
        path = spec_file(tmp_path, "prefixed.yaml", instance_doc("cli-prefixed"))
        applied = orch("apply", "-f", path, url=proxy.url + "/")
        assert applied.code == 0, applied
        listed = orch("get", "instance", "cli-prefixed", "-o", "json", url=proxy.url)
        assert listed.code == 0 and json.loads(listed.out)["name"] == "cli-prefixed", listed
    finally:
        proxy.close()
    assert proxy.paths and all(p.startswith("/orch/api/v1/") for p in proxy.paths), proxy.paths
    for bad in ("127.0.0.1:8000", "ftp://host/orch", "http://host/orch?x=1"):
        refused = orch("get", "instances", url=bad)
        assert refused.code == ExitCode.INVALID and f"service URL {bad!r} must" in refused.err, refused


def test_wait_prints_steps_in_their_sequence_whatever_each_poll_brings():
    from orchestrator.client.commands import _step_lines_with_logs

    shown: dict[int, str] = {}
    up, configure, agent = "pulumi up", "configure: ansible", "wait for the agent's first report"
    polls = [
        # Two steps finished and a third started between polls: printed in their order, the log after the start.
        ([{"name": up, "status": "succeeded"}, {"name": configure, "status": "succeeded"},
          {"name": agent, "status": "running"}], ["agent log"]),
        ([{"name": up, "status": "succeeded"}, {"name": configure, "status": "succeeded"},
          {"name": agent, "status": "succeeded"}, {"name": up, "status": "failed"}], ["last words"]),
    ]
    lines = [line for steps, logs in polls for line in _step_lines_with_logs(steps, shown, logs)]
    assert lines == [
        f"  [{up}] running", f"  [{up}] succeeded", f"  [{configure}] running", f"  [{configure}] succeeded",
        f"  [{agent}] running", "agent log",
        # A step with the name of an earlier one (a resumed attempt) is a step of its own.
        f"  [{agent}] succeeded", f"  [{up}] running", "last words", f"  [{up}] failed",
    ]


def _complete(script: str, *words: str) -> list[str]:
    """What bash offers after `orch WORDS...` (the last word being completed) with the script loaded."""
    line = " ".join(shlex.quote(word) for word in ("orch", *words))
    completed = subprocess.run(
        ["bash", "-c", f'source <(cat) && complete -p orch >/dev/null && COMP_WORDS=({line}) '
                       f'COMP_CWORD={len(words)} && _orch && printf "%s\\n" "${{COMPREPLY[@]}}"'],
        input=script, capture_output=True, text=True, timeout=30, cwd=REPO,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split()


def test_completion_scripts_load_and_complete_commands_options_and_choices(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert _complete(script, "tok") == ["token"]
    assert _complete(script, "token", "create", "--u") == ["--user"]
    assert _complete(script, "get", "inst") == ["instances", "instance"]
    assert _complete(script, "completion", "") == ["-h", "--help", "bash", "zsh"]
    assert _complete(script, "apply", "-f", "README.m") == ["README.md"]
    assert main(["completion", "zsh"]) == 0
    assert capsys.readouterr().out.endswith(script)


def test_the_checkouts_orch_wrapper_runs_from_any_directory(tmp_path):
    ran = subprocess.run([str(REPO / "orch"), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (ran.returncode, ran.stdout) == (0, f"orch {__version__}\n"), ran.stderr
