"""`pulumi new` with a local template in the Pulumi CLI stand-in, through the Automation API's `LocalWorkspace.new`.

The first two tests are the SDK's own (test_local_workspace.py: test_new_generate_only and
test_new_generate_only_in_sub_dir) with the SDK's template (data/new_template/Pulumi.yaml).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml
from pulumi import automation as auto

from tests.conftest import STANDIN_ROOT

# The SDK suite's data/new_template/Pulumi.yaml.
SDK_TEMPLATE = "name: ${PROJECT}\ndescription: ${DESCRIPTION}\nruntime: yaml\n"


@pytest.fixture
def sdk_template(tmp_path) -> Path:
    template = tmp_path / "new_template"
    template.mkdir()
    (template / "Pulumi.yaml").write_text(SDK_TEMPLATE)
    return template


@pytest.fixture
def python_template(tmp_path) -> Path:
    """A template with placeholders in content and file names, a template section, and files never copied."""
    template = tmp_path / "python-template"
    (template / "lib").mkdir(parents=True)
    (template / ".git").mkdir()
    (template / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (template / ".pulumi.template.yaml").write_text("description: legacy manifest\n")
    (template / "Pulumi.yaml").write_text(
        "name: ${PROJECT}\n"
        "description: ${DESCRIPTION}\n"
        "runtime: python\n"
        "template:\n"
        "  description: A minimal Python program\n"
        "  quickstart: Run `pulumi up` to deploy.\n"
        "  config:\n"
        "    aws:region:\n"
        "      default: us-east-1\n"
    )
    main = template / "__main__.py"
    main.write_text('print("${PROJECT}: ${DESCRIPTION}")\n')
    main.chmod(0o755)
    (template / "lib" / "${PROJECT}.txt").write_text("project ${PROJECT}\n")
    (template / "lib" / "logo.bin").write_bytes(b"\x89PNG\0${PROJECT}")
    return template


def lines(text: str) -> list[str]:
    """Output lines as the Automation API hands them back (it drops trailing whitespace)."""
    return [line.rstrip() for line in text.rstrip().splitlines()]


def workspace(work_dir: Path, standin_env: dict) -> auto.LocalWorkspace:
    return auto.LocalWorkspace(
        work_dir=str(work_dir), pulumi_command=auto.PulumiCommand(root=str(STANDIN_ROOT)), env_vars=standin_env
    )


def test_new_generate_only(tmp_path, standin_env, sdk_template):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    ws = workspace(work_dir, standin_env)

    result = ws.new(str(sdk_template), name="test-new-project", generate_only=True, force=True)

    contents = (work_dir / "Pulumi.yaml").read_text()
    assert "name: test-new-project" in contents
    project = yaml.safe_load(contents)
    assert project == {
        "name": "test-new-project",
        "description": "",
        "runtime": "yaml",
        "config": {"pulumi:tags": {"value": {"pulumi:template": str(sdk_template)}}},
    }
    assert result.stdout.startswith("Created project 'test-new-project'\n")
    assert "   1. pulumi install\n   2. pulumi stack init\n" in result.stdout
    # --generate-only creates no stack.
    assert ws.list_stacks() == []
    assert not any(Path(standin_env["PULUMI_BACKEND_URL"][len("file://") :]).rglob("*.json"))


def test_new_generate_only_in_sub_dir(tmp_path, standin_env, sdk_template):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    sub_dir = work_dir / "subproject"
    ws = workspace(work_dir, standin_env)

    ws.new(
        str(sdk_template),
        name="sub-project",
        description="A sub-project for testing",
        dir=str(sub_dir),
        generate_only=True,
        force=True,
    )

    contents = (sub_dir / "Pulumi.yaml").read_text()
    assert "name: sub-project" in contents
    assert "description: A sub-project for testing" in contents
    assert sorted(os.listdir(work_dir)) == ["subproject"]


def test_new_prints_the_next_steps_from_the_working_directory(tmp_path, standin_env, sdk_template):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    result = workspace(work_dir, standin_env).new(
        str(sdk_template), name="steps", dir="sub dir", generate_only=True, force=True
    )
    assert lines(result.stdout) == lines(
        "Created project 'steps'\n\n"
        "Your new project is ready to go! \n\n"
        "To perform an initial deployment, run the following commands:\n\n"
        '   1. cd "sub dir"\n'
        "   2. pulumi install\n"
        "   3. pulumi stack init\n\n"
        "Then, run `pulumi up`\n\n"
    )
    assert (work_dir / "sub dir" / "Pulumi.yaml").is_file()


def test_new_without_force_refuses_a_non_empty_directory(tmp_path, standin_env, sdk_template):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    (work_dir / "Pulumi.yaml").write_text("name: mine\nruntime: python\n")
    ws = workspace(work_dir, standin_env)

    with pytest.raises(auto.CommandError) as raised:
        ws.new(str(sdk_template), name="other", generate_only=True)

    assert (
        f"error: {work_dir} is not empty; use --force to continue and overwrite existing files, "
        "or use --dir to specify an empty directory." in str(raised.value)
    )
    assert "code: 1" in str(raised.value)
    assert (work_dir / "Pulumi.yaml").read_text() == "name: mine\nruntime: python\n"


def test_new_without_force_fills_an_empty_directory_and_ignores_vcs_entries(tmp_path, standin_env, sdk_template):
    work_dir = tmp_path / "work"
    (work_dir / ".git").mkdir(parents=True)
    workspace(work_dir, standin_env).new(str(sdk_template), name="fresh", generate_only=True)
    assert yaml.safe_load((work_dir / "Pulumi.yaml").read_text())["name"] == "fresh"


def test_new_with_force_overwrites_existing_files(tmp_path, standin_env, sdk_template):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    (work_dir / "Pulumi.yaml").write_text("name: mine\nruntime: python\nmain: app.py\n")
    (work_dir / "keep.txt").write_text("untouched")

    workspace(work_dir, standin_env).new(str(sdk_template), name="replaced", generate_only=True, force=True)

    project = yaml.safe_load((work_dir / "Pulumi.yaml").read_text())
    assert (project["name"], project["runtime"]) == ("replaced", "yaml")
    assert "main" not in project
    assert (work_dir / "keep.txt").read_text() == "untouched"


def test_new_substitutes_placeholders_and_skips_what_the_cli_skips(tmp_path, standin_env, python_template):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    result = workspace(work_dir, standin_env).new(str(python_template), generate_only=True)

    # No --name or --description: the directory's name and the template's description.
    assert sorted(path.name for path in work_dir.iterdir()) == ["Pulumi.yaml", "__main__.py", "lib"]
    assert (work_dir / "__main__.py").read_text() == 'print("work: A minimal Python program")\n'
    assert stat.S_IMODE((work_dir / "__main__.py").stat().st_mode) == 0o755
    assert (work_dir / "lib" / "work.txt").read_text() == "project work\n"
    assert (work_dir / "lib" / "logo.bin").read_bytes() == b"\x89PNG\0${PROJECT}"
    project = yaml.safe_load((work_dir / "Pulumi.yaml").read_text())
    # The template section goes; the python language host's runtime options are answered with their defaults.
    assert project == {
        "name": "work",
        "description": "A minimal Python program",
        "runtime": {"name": "python", "options": {"toolchain": "pip", "virtualenv": "venv"}},
        "config": {"pulumi:tags": {"value": {"pulumi:template": str(python_template)}}},
    }
    assert lines(result.stdout)[-3:] == ["Then, run `pulumi up`", "", "Run `pulumi up` to deploy."]


def test_new_writes_names_and_descriptions_as_yaml_strings(tmp_path, standin_env, sdk_template):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    workspace(work_dir, standin_env).new(
        str(sdk_template), name="1234", description="cost: #1 concern", generate_only=True, force=True
    )
    project = yaml.safe_load((work_dir / "Pulumi.yaml").read_text())
    assert (project["name"], project["description"]) == ("1234", "cost: #1 concern")


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("https://github.com/pulumi/templates/tree/master/aws-python", "is a template URL, which the CLI downloads"),
        ("aws-python", "as a template name, the CLI fetches it from pulumi/templates"),
    ],
)
def test_new_refuses_templates_that_need_the_network(tmp_path, standin_env, template, reason):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    with pytest.raises(auto.CommandError) as raised:
        workspace(work_dir, standin_env).new(template, name="remote", generate_only=True, force=True)
    assert reason in str(raised.value)
    assert "over the network" in str(raised.value)
    assert list(work_dir.iterdir()) == []


def test_new_refuses_an_invalid_project_name(tmp_path, standin_env, sdk_template):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    with pytest.raises(auto.CommandError) as raised:
        workspace(work_dir, standin_env).new(str(sdk_template), name="my project", generate_only=True, force=True)
    assert (
        "'my project' is not a valid project name: project names may only contain alphanumerics, hyphens, "
        "underscores, and periods" in str(raised.value)
    )
    assert list(work_dir.iterdir()) == []


def test_new_without_generate_only_says_what_the_stand_in_does_not_do(tmp_path, standin_env, sdk_template):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    with pytest.raises(auto.CommandError) as raised:
        workspace(work_dir, standin_env).new(str(sdk_template), name="stacked", stack="dev", force=True)
    assert "supports `pulumi new` with --generate-only only" in str(raised.value)
    assert list(work_dir.iterdir()) == []
