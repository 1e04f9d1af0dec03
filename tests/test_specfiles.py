"""The client's offline parts: spec files with line numbers, validate and schema, config, API errors, rendering."""

from __future__ import annotations

import datetime as dt
import io
import json
import textwrap

import httpx
import pytest

from orchestrator.cli import main
from orchestrator.client import render, specfiles
from orchestrator.client.api import ApiClient
from orchestrator.client.commands import parse_duration
from orchestrator.client.config import DEFAULT_URL, ClientConfig, resolve
from orchestrator.client.errors import ClientError, ExitCode
from stacks.spec import json_schema
from tests.live import REPO, TEST_PUBLIC_KEY

INSTANCE = f"""\
kind: Instance
name: train-1
labels: {{team: ml}}
spec:
  cloud: docker
  region: local
  machine_type: small
  disk_gb: 30
  ssh_users:
    - name: alice
      public_key: "{TEST_PUBLIC_KEY}"
  configure: false
"""


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def validate_errors(path: str) -> list[str]:
    with pytest.raises(specfiles.SpecFileError) as caught:
        specfiles.validate(specfiles.load([path], io.StringIO()))
    return caught.value.problems


# ---------------------------------------------------------------- files, documents and lines


def test_a_value_error_names_file_document_line_and_field(tmp_path):
    path = write(tmp_path, "spec.yaml", INSTANCE.replace("disk_gb: 30", "disk_gb: 0"))
    assert validate_errors(path) == [f"{path}: document 1 (instance train-1), line 8: spec.disk_gb: must be at least 1"]


def test_errors_in_a_later_document_and_in_list_items_have_their_own_lines(tmp_path):
    second = INSTANCE.replace("train-1", "train-2").replace(TEST_PUBLIC_KEY, "ssh-ed25519 AAAA")
    path = write(tmp_path, "spec.yaml", INSTANCE + "---\n" + second)
    (problem,) = validate_errors(path)
    # document 2 starts on line 14 (after the separator); its public_key is its 11th line
    assert problem.startswith(f"{path}: document 2 (instance train-2), line 24: spec.ssh_users[0].public_key: ")


def test_a_missing_field_points_at_its_parent_and_an_unknown_one_at_itself(tmp_path):
    text = INSTANCE.replace("  machine_type: small\n", "").replace("  configure: false\n", "  colour: blue\n")
    text = text.replace("  ssh_users:\n    - name: alice\n", "  ssh_users:\n    - name: alice\n      shell: zsh\n")
    problems = validate_errors(write(tmp_path, "spec.yaml", text))
    assert any(p.endswith("line 10: spec.ssh_users[0].shell: unknown field") for p in problems), problems
    assert any(p.endswith("line 12: spec.colour: unknown field") for p in problems), problems
    text = INSTANCE.replace("  machine_type: small\n", "")
    assert validate_errors(write(tmp_path, "missing.yaml", text)) == [
        f"{tmp_path}/missing.yaml: document 1 (instance train-1), line 4: spec.machine_type: required on docker"
    ]


def test_documents_without_a_name_or_kind_are_described_by_position(tmp_path):
    path = write(
        tmp_path,
        "spec.yaml",
        INSTANCE + "---\nkind: Snapshot\ninstance: train-1\n---\n- a list\n---\nkind: Pod\nname: x\n",
    )
    assert validate_errors(path) == [
        f"{path}: document 2 (snapshot), line 14: name: required",
        f"{path}: document 3, line 17: document: expected an object, got a list",
        f"{path}: document 4 (x), line 19: kind: expected Instance or Snapshot, got 'Pod'",
    ]


def test_empty_documents_are_skipped_but_keep_their_position(tmp_path):
    path = write(tmp_path, "spec.yaml", "---\n# nothing\n---\n" + INSTANCE)
    (document,) = specfiles.load([path], io.StringIO())
    assert (document.index, document.name, document.start_line) == (2, "train-1", 4)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "spec.yaml", INSTANCE + "  bad: [unclosed\n")
    with pytest.raises(specfiles.SpecFileError) as caught:
        specfiles.load([path], io.StringIO())
    (problem,) = caught.value.problems
    # the parser notices the missing `]` where the stream ends, on the line after the last
    assert problem == f"{path}, line 14: not valid YAML: expected ',' or ']', but got '<stream end>'"


def test_json_files_one_document_or_a_list_with_lines(tmp_path):
    import yaml

    document = yaml.safe_load(INSTANCE)
    document["spec"]["disk_gb"] = 0
    path = write(tmp_path, "one.json", json.dumps(document, indent=2))
    (problem,) = validate_errors(path)
    line = json.dumps(document, indent=2).splitlines().index('    "disk_gb": 0,') + 1
    assert problem == f"{path}: document 1 (instance train-1), line {line}: spec.disk_gb: must be at least 1"
    snapshot = {"kind": "Snapshot", "name": "snap-1", "instance": "train-1"}
    many = write(tmp_path, "many.json", json.dumps([yaml.safe_load(INSTANCE), snapshot]))
    parsed = specfiles.validate(specfiles.load([many], io.StringIO()))
    assert [item.ref for item in parsed] == ["instance/train-1", "snapshot/snap-1"]
    broken = write(tmp_path, "broken.json", '{\n  "kind": "Instance",\n  "name": }\n')
    with pytest.raises(specfiles.SpecFileError, match=r"broken.json, line 3: not valid JSON"):
        specfiles.load([broken], io.StringIO())


def test_directories_stdin_and_missing_files(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    write(specs, "b.yaml", "kind: Snapshot\nname: snap-b\ninstance: train-1\n")
    write(specs, "a.yml", INSTANCE)
    write(specs, "notes.txt", "not a spec")
    stdin = io.StringIO("kind: Snapshot\nname: from-stdin\ninstance: train-1\n")
    documents = specfiles.load([str(specs), "-"], stdin)
    assert [(d.source.rsplit("/", 1)[-1], d.name) for d in documents] == [
        ("a.yml", "train-1"),
        ("b.yaml", "snap-b"),
        ("<stdin>", "from-stdin"),
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(specfiles.SpecFileError) as caught:
        specfiles.load([str(empty), str(tmp_path / "absent.yaml")], io.StringIO())
    assert caught.value.problems == [
        f"{empty}: no *.yaml, *.yml, *.json files in this directory",
        f"{tmp_path}/absent.yaml: no such file or directory",
    ]


def test_a_name_defined_twice_is_an_error(tmp_path):
    first = write(tmp_path, "a.yaml", INSTANCE)
    second = write(tmp_path, "b.yaml", INSTANCE.replace("machine_type: small", "machine_type: large"))
    with pytest.raises(specfiles.SpecFileError) as caught:
        specfiles.validate(specfiles.load([first, second], io.StringIO()))
    assert caught.value.problems == [
        f"{second}: document 1 (instance train-1), line 2: name: instance train-1 is already defined by {first}: "
        "document 1 (instance train-1)"
    ]


def test_enabled_clouds_are_checked_when_given(tmp_path):
    documents = specfiles.load([write(tmp_path, "spec.yaml", INSTANCE)], io.StringIO())
    assert specfiles.validate(documents)
    with pytest.raises(specfiles.SpecFileError, match=r"line 5: spec.cloud: cloud 'docker' is not enabled"):
        specfiles.validate(documents, enabled_clouds=["aws"])


# ---------------------------------------------------------------- validate and schema commands


def test_validate_command_reports_every_document_and_exit_codes(tmp_path, capsys):
    good = write(tmp_path, "good.yaml", INSTANCE + "---\nkind: Snapshot\nname: snap-1\ninstance: train-1\n")
    assert main(["validate", "-f", good]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{good}: document 1 (instance train-1): valid",
        f"{good}: document 2 (snapshot snap-1): valid",
    ]
    bad = write(
        tmp_path, "bad.yaml", INSTANCE + "---\n" + INSTANCE.replace("train-1", "train-2").replace("small", "huge")
    )
    assert main(["validate", "-f", bad]) == ExitCode.INVALID == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"error: {bad}: document 2 (instance train-2), line 20: spec.machine_type: "
        "unknown type huge for docker (one of small, medium, large, xlarge)"
    ]


def test_schema_command_prints_the_spec_schema(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()


def test_usage_errors_exit_2_before_any_request(capsys):
    # No server at this URL: the usage check comes first.
    url = ["--url", "http://127.0.0.1:9"]
    assert main(["delete", *url]) == 2
    assert main(["get", "snapshots", "--cloud", "aws", *url]) == 2
    assert main(["get", "instances", "-l", "team", *url]) == 2
    assert main(["metrics", "x", "--since", "yesterday", *url]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 4 and all(line.startswith("error: ") for line in errors), errors
    with pytest.raises(SystemExit) as exited:  # argparse's own usage errors are 2 as well
        main(["get", "pods"])
    assert exited.value.code == 2


# ---------------------------------------------------------------- config precedence


def test_config_precedence_flag_env_file_default(tmp_path):
    config = tmp_path / "xdg" / "orch" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("url: http://from-file:1/\ntoken: file-token\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    assert resolve(None, None, env) == ClientConfig("http://from-file:1", "file-token")
    env_vars = {**env, "ORCH_URL": "http://from-env:2", "ORCH_TOKEN": "env-token"}
    assert resolve(None, None, env_vars) == ClientConfig("http://from-env:2", "env-token")
    assert resolve("http://flag:3", "flag-token", env_vars) == ClientConfig("http://flag:3", "flag-token")
    assert resolve(None, "flag-token", env) == ClientConfig("http://from-file:1", "flag-token")
    assert resolve(None, None, {"HOME": str(tmp_path / "home")}) == ClientConfig(DEFAULT_URL, None)


def test_config_file_under_home_without_xdg(tmp_path):
    config = tmp_path / ".config" / "orch" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("token: home-token\n")
    assert resolve(None, None, {"HOME": str(tmp_path)}) == ClientConfig(DEFAULT_URL, "home-token")


@pytest.mark.parametrize(
    "text, message",
    [
        ("url: [unclosed", "not valid YAML"),
        ("- a list", "expected a mapping"),
        ("user: x", "unknown key(s) user"),
        ("token: 12", "token must be a string"),
    ],
)
def test_bad_config_file_is_one_clear_error(tmp_path, capsys, monkeypatch, text, message):
    config = tmp_path / "orch" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(text)
    for name in ("ORCH_URL", "ORCH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert main(["get", "instances"]) == ExitCode.INVALID
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {config}: ") and message in line


# ---------------------------------------------------------------- API errors


def api_answering(status: int, body: object = None, *, text: str | None = None, token: str | None = "t") -> ApiClient:
    def answer(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text)
        return httpx.Response(status, json=body)

    return ApiClient(ClientConfig("http://orch.test", token), transport=httpx.MockTransport(answer))


@pytest.mark.parametrize(
    "status, body, code, text",
    [
        (401, {"status_code": 401, "detail": "token expired"}, ExitCode.AUTH, "not authorized (401): token expired"),
        (403, {"status_code": 403, "detail": "admins only"}, ExitCode.AUTH, "not authorized (403): admins only"),
        (404, {"status_code": 404, "detail": "instance 'x' not found"}, ExitCode.REFUSED, "instance 'x' not found"),
        (
            409,
            {"status_code": 409, "detail": "instance 'x'\nalready exists"},
            ExitCode.REFUSED,
            "the API refused the request (409): instance 'x' already exists",
        ),
        (
            400,
            {"status_code": 400, "detail": "Validation failed", "extra": [{"key": "limit", "message": "too big"}]},
            ExitCode.REFUSED,
            "the API refused the request (400): Validation failed (limit: too big)",
        ),
        (
            500,
            {"status_code": 500, "detail": "Internal Server Error"},
            ExitCode.SERVER_ERROR,
            "the orch service failed (500): Internal Server Error",
        ),
    ],
)
def test_api_errors_map_to_exit_codes(status, body, code, text):
    with pytest.raises(ClientError) as caught:
        api_answering(status, body).get("/instances/x")
    assert (caught.value.exit_code, caught.value.message) == (code, text)


def test_api_answers_that_are_not_the_api():
    with pytest.raises(ClientError) as caught:
        api_answering(200, text="<html>hello</html>").get("/instances")
    assert caught.value.exit_code == ExitCode.SERVER_ERROR and "with JSON" in caught.value.message
    with pytest.raises(ClientError, match=r"no token: pass --token"):
        api_answering(401, {"detail": "missing bearer token"}, token=None).get("/instances")


def test_unreachable_service():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused")

    api = ApiClient(ClientConfig("http://orch.test", "t"), transport=httpx.MockTransport(refuse))
    with pytest.raises(ClientError) as caught:
        api.get("/instances")
    assert caught.value.exit_code == ExitCode.UNREACHABLE
    assert caught.value.message == "cannot reach the orch service at http://orch.test: Connection refused"


def test_exit_codes_are_distinct():
    codes = [
        ExitCode.FAILED,
        ExitCode.INVALID,
        ExitCode.UNREACHABLE,
        ExitCode.AUTH,
        ExitCode.REFUSED,
        ExitCode.SERVER_ERROR,
    ]
    assert len(set(codes)) == len(codes) and ExitCode.OK not in codes


def test_get_all_follows_pages():
    def page(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("cursor", "0"))
        items = [{"name": f"i{n}"} for n in range(start, min(start + 2, 5))]
        following = str(start + 2) if start + 2 < 5 else None
        return httpx.Response(200, json={"items": items, "total": 5, "limit": 2, "next_cursor": following})

    api = ApiClient(ClientConfig("http://orch.test", "t"), transport=httpx.MockTransport(page))
    assert [item["name"] for item in api.get_all("/instances")] == ["i0", "i1", "i2", "i3", "i4"]


# ---------------------------------------------------------------- rendering


def test_table_and_age():
    assert render.table(("NAME", "IP"), [("a-long-name", None), ("b", "10.0.0.1")]).splitlines() == [
        "NAME          IP",
        "a-long-name   <none>",
        "b             10.0.0.1",
    ]
    now = dt.datetime(2025, 1, 2, 12, 0, 0, tzinfo=dt.UTC)
    assert [
        render.age(t, now)
        for t in (
            "2025-01-02T11:59:15+00:00",
            "2025-01-02T11:48:00+00:00",
            "2025-01-02T07:00:00Z",
            "2024-12-30T12:00:00+00:00",
            None,
        )
    ] == ["45s", "12m", "5h", "3d", "<none>"]


def test_preview_lines_show_changes_and_fold_replacements():
    preview = {
        "changes": {"same": 2, "update": 1, "replace": 1},
        "steps": [
            {"op": "same", "urn": "u1", "type": "t:a", "name": "a", "diff": []},
            {
                "op": "update",
                "urn": "u2",
                "type": "docker:index/container:Container",
                "name": "web",
                "diff": ["memory"],
            },
            {
                "op": "create-replacement",
                "urn": "u3",
                "type": "aws:ec2/instance:Instance",
                "name": "vm",
                "diff": ["ami"],
            },
            {"op": "replace", "urn": "u3", "type": "aws:ec2/instance:Instance", "name": "vm", "diff": ["ami"]},
            {"op": "create", "urn": "u4", "type": "aws:ec2/eip:Eip", "name": "ip", "diff": []},
            {"op": "delete", "urn": "u5", "type": "aws:ec2/volume:Volume", "name": "old", "diff": []},
        ],
    }
    assert render.preview_lines(preview) == [
        "~  update   docker:index/container:Container  web  [memory]",
        "+- replace  aws:ec2/instance:Instance  vm  [ami]",
        "+  create   aws:ec2/eip:Eip  ip",
        "-  delete   aws:ec2/volume:Volume  old",
    ]
    assert render.changes_summary(preview["changes"]) == "1 to update, 1 to replace, 2 unchanged"


def test_document_diff_leaves_out_unset_fields():
    stored = {"labels": {}, "spec": {"machine_type": "small", "zone": None}}
    wanted = {"labels": {}, "spec": {"machine_type": "medium", "zone": None}}
    lines = render.document_diff(stored, wanted, "stored", "file.yaml")
    assert "-  machine_type: small" in lines and "+  machine_type: medium" in lines
    assert not any("zone" in line for line in lines)


def test_durations():
    assert parse_duration("90s") == dt.timedelta(seconds=90)
    assert parse_duration("2h") == dt.timedelta(hours=2)
    assert parse_duration("7d") == dt.timedelta(days=7)
    with pytest.raises(ClientError):
        parse_duration("1w")


REPORT = {
    "instance": "train-1",
    "ts": "2025-01-02T11:59:30Z",
    "uptime_s": 600,
    "load": [0.5, 0.25, 0.1],
    "cpu_percent": 12.5,
    "memory": {"total": 8 * 1024**3, "used": 2 * 1024**3},
    "disk": [{"mount": "/", "total": 100 * 1024**3, "used": 10 * 1024**3}],
    "gpus": [
        {
            "index": 0,
            "name": "NVIDIA A10G",
            "utilization_percent": 87,
            "memory_total": 24 * 1024**3,
            "memory_used": 6 * 1024**3,
            "temperature_c": 61,
        }
    ],
    "agent_version": "0.1.0",
}


def test_metrics_table_and_describe_show_agent_reports():
    assert render.metrics_table([REPORT]).splitlines() == [
        "TIME                   CPU%   LOAD           MEMORY          GPU-UTIL   GPU-MEMORY",
        "2025-01-02T11:59:30Z   12.5   0.5 0.25 0.1   2.0GiB/8.0GiB   87%        6.0GiB/24.0GiB",
    ]
    instance = {
        "name": "train-1",
        "owner": "alice",
        "labels": {"team": "ml"},
        "spec": {"cloud": "aws", "zone": None},
        "status": "running",
        "status_reason": None,
        "cloud": "aws",
        "region": "us-east-1",
        "public_ip": "198.51.100.7",
        "outputs": {"public_ip": "198.51.100.7"},
        "generation": 1,
        "operation_id": "op1",
        "created_at": "2025-01-02T11:00:00+00:00",
        "updated_at": "2025-01-02T11:01:00+00:00",
        "health": {"state": "healthy", "last_report_at": "2025-01-02T11:59:30+00:00", "last_report": REPORT},
    }
    operation = {
        "id": "op1",
        "kind": "create",
        "status": "succeeded",
        "error": None,
        "updated_at": None,
        "steps": [{"name": "pulumi up", "status": "succeeded"}, {"name": "configure: ansible", "status": "succeeded"}],
    }
    page = render.describe_instance(instance, operation, [], dt.datetime(2025, 1, 2, 12, 0, tzinfo=dt.UTC))
    for expected in (
        "Labels:     team=ml",
        "Created:    2025-01-02T11:00:00+00:00 (1h ago)",
        "Spec:\n  cloud: aws\nOutputs:",
        "  State:       healthy",
        "  Metrics:     cpu 12.5%, load 0.5 0.25 0.1, memory 2.0GiB/8.0GiB, gpu0 87%",
        "  Steps:   pulumi up (succeeded), configure: ansible (succeeded)",
        "Snapshots:\n  <none>",
    ):
        assert expected in page, expected


# ---------------------------------------------------------------- examples/


EXAMPLES = REPO / "examples"


def test_every_example_is_valid_and_together_they_cover_the_clouds_and_kinds(capsys):
    files = sorted(EXAMPLES.glob("*.yaml"))
    # One validation of the whole directory, as `orch validate -f examples/`: names are unique across files.
    parsed = specfiles.validate(specfiles.load([str(EXAMPLES)], io.StringIO()))
    assert {p.source.source for p in parsed} == {str(f) for f in files}
    assert main(["validate", "-f", str(EXAMPLES)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(parsed)

    instances = {p.doc.name: p.doc for p in parsed if p.doc.kind == "Instance"}
    snapshots = {p.doc.name: p.doc for p in parsed if p.doc.kind == "Snapshot"}
    assert {doc.spec.cloud for doc in instances.values()} == {"aws", "gcp", "azure", "docker"}
    # Every reference resolves within the examples: a snapshot's instance, an instance's base snapshot.
    assert all(snapshot.instance in instances for snapshot in snapshots.values())
    based = [doc for doc in instances.values() if doc.spec.from_snapshot]
    assert based and all(doc.spec.from_snapshot in snapshots for doc in based)
    per_file = {}
    for p in parsed:
        per_file.setdefault(p.source.source, []).append(p.doc.kind)
    assert any(kinds.count("Instance") >= 2 and "Snapshot" in kinds for kinds in per_file.values()), per_file
