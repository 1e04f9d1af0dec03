"""`pulumi new` from a local template directory, as the CLI does it.

Behaviour of pkg/cmd/pulumi/project/newcmd (new.go, io.go, template.go), pkg/cmd/pulumi/templates
(project_templates.go: which files are copied, `${PROJECT}`/`${DESCRIPTION}` substitution) and
pkg/workspace/templates.go (default name and description). Only local templates: a template name
or URL is fetched over the network by the CLI, which the stand-in never does. Only
`--generate-only`: the stand-in creates no stack from `new` and installs nothing.
"""

from __future__ import annotations

import json
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import yaml

PROJECT_PLACEHOLDER = "${PROJECT}"
DESCRIPTION_PLACEHOLDER = "${DESCRIPTION}"
PROJECT_FILE = "Pulumi.yaml"
# Removed after the copy: the CLI appends its content to Pulumi.yaml only for templates it renders itself.
PROJECT_APPEND_FILE = "Pulumi.yaml.append"
# Never copied from a template.
LEGACY_TEMPLATE_MANIFEST = ".pulumi.template.yaml"
GIT_DIR = ".git"
# Entries that do not make a target directory "not empty".
INVISIBLE_DIR_ENTRIES = frozenset({".git", ".hg", ".bzr"})
TEMPLATE_TAG = "pulumi:template"
MAX_PROJECT_NAME_LENGTH = 100
PROJECT_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
DEFAULT_PROJECT_NAME = "project"
# A file with a NUL byte among its first bytes is binary (git's rule) and copied untouched.
BINARY_SNIFF_BYTES = 8000
# The least permissive mode a copied file gets (the source's permission bits are added).
MIN_FILE_MODE = 0o600
NEW_DIR_MODE = 0o700
# Runtimes whose language host asks nothing of `pulumi new --yes` beyond what is written here.
SIMULATED_RUNTIMES = frozenset({"python", "yaml"})
# The python language host's answers to its runtime option prompts under --yes.
PYTHON_DEFAULT_TOOLCHAIN = "pip"
PYTHON_DEFAULT_VIRTUALENV = "venv"
AI_RETIRED_MESSAGE = (
    "Pulumi AI project generation has been retired. Run 'pulumi new' to choose a template, "
    "or 'pulumi neo -p \"prompt\"'."
)
# Unlimited line width when writing Pulumi.yaml, as the CLI's YAML encoder does not fold lines.
YAML_LINE_WIDTH = 1 << 30
YAML_INDENT = 2


class TemplateError(Exception):
    pass


@dataclass
class NewOptions:
    """The `pulumi new` flags the stand-in implements (the others are refused by the CLI side)."""

    template: str
    name: str = ""
    description: str = ""
    dir: str = ""
    force: bool = False
    generate_only: bool = False
    yes: bool = False
    offline: bool = False
    runtime_options: list[str] = field(default_factory=list)


@dataclass
class ProjectTemplate:
    directory: Path | None  # None: the minimal project (`name: ${PROJECT}`) the CLI writes itself
    name: str
    project_name: str
    project_description: str = ""
    description: str = ""
    quickstart: str = ""
    error: str = ""


# --- names -----------------------------------------------------------------------------------


def project_name_problem(name: str) -> str | None:
    """Why `name` is not a valid project name (tokens.ValidateProjectName and the CLI's own rule), or None."""
    if name == "":
        return "project names may not be empty"
    if len(name) > MAX_PROJECT_NAME_LENGTH:
        return f"project names are limited to {MAX_PROJECT_NAME_LENGTH} characters"
    if not PROJECT_NAME_PATTERN.fullmatch(name):
        return "project names may only contain alphanumerics, hyphens, underscores, and periods"
    if name.lower() == "pulumi" or name.lower().startswith("pulumi."):
        return (
            "project name must not be `Pulumi` and must not start with the prefix `Pulumi.` "
            "to avoid collision with standard libraries"
        )
    return None


def default_project_name(template: ProjectTemplate, directory: Path) -> str:
    if template.project_name != PROJECT_PLACEHOLDER:
        return template.project_name
    name = directory.name
    if project_name_problem(name) is None:
        return name
    name = re.sub(r"[^a-zA-Z0-9_.-]", "", name)
    return name if project_name_problem(name) is None else DEFAULT_PROJECT_NAME


def default_description(template: ProjectTemplate) -> str:
    if template.project_description != DESCRIPTION_PLACEHOLDER:
        return template.project_description
    return template.description


# --- finding the template --------------------------------------------------------------------


def _network_refusal(template: str) -> TemplateError:
    if not template:
        what = "no template given: the CLI lists the templates of the Pulumi registry and pulumi/templates"
    elif "://" in template or re.match(r"^[\w.-]+@[\w.-]+:", template):
        what = f"'{template}' is a template URL, which the CLI downloads"
    else:
        what = f"'{template}' is not a local directory; as a template name, the CLI fetches it from pulumi/templates"
    return TemplateError(
        f"{what} over the network; the Pulumi CLI stand-in only supports `pulumi new` with a local template "
        "directory (a path that exists)"
    )


def _load_template(directory: Path) -> ProjectTemplate:
    """LoadTemplate: the template in `directory` (its Pulumi.yaml). FileNotFoundError when it has none."""
    path = directory / PROJECT_FILE
    text = path.read_text(encoding="utf-8-sig")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise TemplateError(f"could not unmarshal '{path}': invalid YAML file: {error}") from error
    if not isinstance(document, dict) or not document.get("name"):
        raise TemplateError(f"could not validate '{path}': project is missing a 'name' attribute")
    manifest = document.get("template") if isinstance(document.get("template"), dict) else {}
    description = document.get("description")
    return ProjectTemplate(
        directory=directory,
        name=directory.name,
        project_name=str(document["name"]),
        project_description="" if description is None else str(description),
        description=str(manifest.get("description") or ""),
        quickstart=str(manifest.get("quickstart") or ""),
    )


def find_template(template: str, offline: bool) -> ProjectTemplate:
    """The template a local path names: its own Pulumi.yaml, or the only template among its subdirectories."""
    if not template and offline:
        # Offline, the CLI lists only its template cache, and with --yes chooses none of several.
        return ProjectTemplate(directory=None, name="", project_name=PROJECT_PLACEHOLDER)
    path = Path(template)
    if not template or not path.exists():
        raise _network_refusal(template)
    directory = path if path.is_dir() else path.parent
    try:
        return _load_template(directory)
    except FileNotFoundError:
        pass
    candidates = []
    for entry in sorted(directory.iterdir()):
        if not entry.is_dir() or entry.name == GIT_DIR:
            continue
        try:
            candidates.append(_load_template(entry))
        except FileNotFoundError:
            continue
        except TemplateError as error:
            candidates.append(ProjectTemplate(None, entry.name, "", error=str(error)))
    if len(candidates) == 1:
        return candidates[0]
    # Several templates and --yes: the CLI picks none and writes a minimal project.
    return ProjectTemplate(directory=None, name="", project_name=PROJECT_PLACEHOLDER)


# --- copying ---------------------------------------------------------------------------------


def yaml_scalar(value: str) -> str:
    """`value` as the CLI's YAML encoder writes a string (plain when it can, else double-quoted)."""
    if "\n" not in value and value.strip() == value and value:
        dumped = yaml.safe_dump(value, width=YAML_LINE_WIDTH)
        plain = dumped.removesuffix("\n...\n").removesuffix("\n")
        if plain == value:
            return value
    return json.dumps(value, ensure_ascii=False)


def substitute(content: str, name: str, description: str) -> str:
    return content.replace(PROJECT_PLACEHOLDER, name).replace(DESCRIPTION_PLACEHOLDER, description)


def _template_files(source: Path, target: Path, name: str):
    """(source, target) pairs in the CLI's walk order: directories before their content, `.git` skipped."""
    for entry in sorted(source.iterdir(), key=lambda item: item.name):
        destination = target / entry.name
        if entry.is_dir():
            if entry.name == GIT_DIR:
                continue
            yield entry, destination
            yield from _template_files(entry, destination, name)
        elif entry.name != LEGACY_TEMPLATE_MANIFEST:
            # A file name may hold the project name placeholder too.
            yield entry, target / substitute(entry.name, name, "")


def existing_files_error(names: list[str]) -> TemplateError:
    lines = "".join(f"  overwrite   {name}\n" for name in names)
    return TemplateError(
        "creating this template will make changes to existing files:\n"
        f"{lines}\nrerun the command and pass --force to accept and create"
    )


def check_no_overwrite(source: Path, target: Path, name: str) -> None:
    existing = [dest.name for src, dest in _template_files(source, target, name) if dest.is_file()]
    if existing:
        raise existing_files_error(existing)


def copy_template(source: Path, target: Path, force: bool, name: str, description: str) -> None:
    yaml_name, yaml_description = yaml_scalar(name), yaml_scalar(description)
    for src, dest in _template_files(source, target, name):
        if src.is_dir():
            if force:
                if dest.exists() and not dest.is_dir():
                    dest.unlink()
                dest.mkdir(mode=NEW_DIR_MODE, parents=True, exist_ok=True)
            else:
                dest.mkdir(mode=NEW_DIR_MODE)
            continue
        content = src.read_bytes()
        if b"\0" not in content[:BINARY_SNIFF_BYTES]:
            # YAML files get the name and description as YAML scalars (a numeric name stays a string).
            yaml_file = src.name.endswith(".yaml")
            text = substitute(
                content.decode("utf-8", errors="surrogateescape"),
                yaml_name if yaml_file else name,
                yaml_description if yaml_file else description,
            )
            content = text.encode("utf-8", errors="surrogateescape")
        mode = stat.S_IMODE(os.lstat(src).st_mode) | MIN_FILE_MODE
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
        if force and dest.is_dir():
            _remove_tree(dest)
        try:
            descriptor = os.open(dest, flags, mode)
        except FileExistsError as error:
            raise existing_files_error([dest.name]) from error
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            _remove_tree(child)
        else:
            child.unlink()
    path.rmdir()


# --- Pulumi.yaml after the copy --------------------------------------------------------------


def _scalar(value: str) -> yaml.ScalarNode:
    return yaml.ScalarNode("tag:yaml.org,2002:str", value, style=None if yaml_scalar(value) == value else '"')


def _mapping(pairs: list[tuple[str, yaml.Node]]) -> yaml.MappingNode:
    return yaml.MappingNode("tag:yaml.org,2002:map", [(_scalar(key), value) for key, value in pairs])


def _lookup(mapping: yaml.MappingNode, key: str) -> yaml.Node | None:
    return next((value for item, value in mapping.value if item.value == key), None)


def _put(mapping: yaml.MappingNode, key: str, value: yaml.Node) -> None:
    """Replace `key`'s value in place (keeping the key's position), or append the key at the end."""
    for index, (item, _) in enumerate(mapping.value):
        if item.value == key:
            mapping.value[index] = (item, value)
            return
    mapping.value.append((_scalar(key), value))


def _set_string(mapping: yaml.MappingNode, key: str, value: str) -> None:
    current = _lookup(mapping, key)
    if isinstance(current, yaml.ScalarNode):
        # The file's quoting style is kept, as the CLI's trivia-preserving edit does.
        current.tag, current.value = "tag:yaml.org,2002:str", value
    else:
        _put(mapping, key, _scalar(value))


def _runtime_options(project: yaml.MappingNode) -> tuple[str, dict]:
    runtime = yaml.safe_load(yaml.serialize(project)).get("runtime")
    if isinstance(runtime, dict):
        return str(runtime.get("name") or ""), dict(runtime.get("options") or {})
    return ("" if runtime is None else str(runtime)), {}


def _represent(value: object) -> yaml.Node:
    return yaml.representer.SafeRepresenter(sort_keys=False).represent_data(value)


def _write_runtime(project: yaml.MappingNode, name: str, options: dict) -> None:
    current = _lookup(project, "runtime")
    if isinstance(current, yaml.MappingNode):
        options_node = _lookup(current, "options")
        if not isinstance(options_node, yaml.MappingNode):
            options_node = _mapping([])
            _put(current, "options", options_node)
        for key in sorted(options):
            _put(options_node, key, _represent(options[key]))
        return
    options_node = _represent(dict(sorted(options.items())))
    _put(project, "runtime", _mapping([("name", _scalar(name)), ("options", options_node)]))


def _rewrite_shorthand_config(project_name: str, config: yaml.MappingNode) -> None:
    """Shorthand config entries become `default:` (project keys) or `value:` (others), as loading does."""
    for index, (key, value) in enumerate(config.value):
        if isinstance(value, yaml.SequenceNode) or (
            isinstance(value, yaml.ScalarNode) and value.tag.rsplit(":", 1)[-1] in ("str", "int", "bool")
        ):
            namespaced = ":" not in key.value or key.value.split(":", 1)[0] == project_name
            config.value[index] = (key, _mapping([("default" if namespaced else "value", value)]))


def _tag_config(project: yaml.MappingNode, template_tag: str) -> None:
    config = _lookup(project, "config")
    if not isinstance(config, yaml.MappingNode):
        config = _mapping([])
        _put(project, "config", config)
    _rewrite_shorthand_config(_lookup(project, "name").value, config)
    tags = _lookup(config, "pulumi:tags")
    if not isinstance(tags, yaml.MappingNode):
        tags = _mapping([])
        _put(config, "pulumi:tags", tags)
    values = _lookup(tags, "value")
    if not isinstance(values, yaml.MappingNode):
        values = _mapping([])
        _put(tags, "value", values)
    _set_string(values, TEMPLATE_TAG, template_tag)


class _ProjectDumper(yaml.SafeDumper):
    """Block sequences indented under their key, as the CLI writes Pulumi.yaml."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def sanitize_template_tag(template: str) -> str:
    """The `pulumi:template` tag value: a URL without its credentials and query (a path stays as given)."""
    parsed = urllib.parse.urlsplit(template)
    if not parsed.scheme or not parsed.netloc:
        return template
    host = parsed.hostname or ""
    if parsed.port:
        host = f"{host}:{parsed.port}"
    return urllib.parse.urlunsplit((parsed.scheme, host, parsed.path, "", parsed.fragment))


def finish_project(root: Path, options: NewOptions, name: str, description: str, template_tag: str) -> str:
    """Name, description, template tag and runtime options written into the copied Pulumi.yaml; its runtime."""
    path = root / PROJECT_FILE
    project = yaml.compose(path.read_text(encoding="utf-8-sig"))
    if not isinstance(project, yaml.MappingNode) or _lookup(project, "name") is None:
        raise TemplateError(f"could not validate '{path}': project is missing a 'name' attribute")
    _set_string(project, "name", name)
    if description:
        _set_string(project, "description", description)
    project.value = [(key, value) for key, value in project.value if key.value != "template"]
    if template_tag:
        _tag_config(project, template_tag)
    runtime, runtime_options = _runtime_options(project)
    for option in options.runtime_options:
        parts = option.strip().split("=")
        if len(parts) != 2:
            raise TemplateError(f"invalid runtime option: {option}")
        runtime_options[parts[0]] = parts[1]
    if runtime == "python":
        # The python language host's prompts, answered with their defaults under --yes.
        runtime_options.setdefault("toolchain", PYTHON_DEFAULT_TOOLCHAIN)
        if runtime_options["toolchain"] == PYTHON_DEFAULT_TOOLCHAIN:
            runtime_options.setdefault("virtualenv", PYTHON_DEFAULT_VIRTUALENV)
    if runtime_options:
        _write_runtime(project, runtime, runtime_options)
    path.write_text(
        yaml.serialize(
            project, Dumper=_ProjectDumper, indent=YAML_INDENT, width=YAML_LINE_WIDTH, allow_unicode=True
        ),
        encoding="utf-8",
    )
    (root / PROJECT_APPEND_FILE).unlink(missing_ok=True)
    return runtime


# --- the command -----------------------------------------------------------------------------


def template_runtime(template: ProjectTemplate) -> str:
    if template.directory is None:
        return ""
    runtime = (yaml.safe_load((template.directory / PROJECT_FILE).read_text(encoding="utf-8-sig")) or {}).get(
        "runtime"
    )
    return str((runtime.get("name") if isinstance(runtime, dict) else runtime) or "")


def ensure_empty(directory: Path) -> None:
    if any(entry.name not in INVISIBLE_DIR_ENTRIES for entry in directory.iterdir()):
        raise TemplateError(
            f"{directory} is not empty; use --force to continue and overwrite existing files, "
            "or use --dir to specify an empty directory."
        )


def next_steps(original_cwd: Path, cwd: Path) -> list[str]:
    commands = []
    if original_cwd != cwd:
        relative = os.path.relpath(cwd, original_cwd)
        commands.append("cd " + (f'"{relative}"' if re.search(r"\s", relative) else relative))
    # --generate-only installed nothing and created no stack.
    commands += ["pulumi install", "pulumi stack init"]
    return commands


def new_project(options: NewOptions, out: TextIO) -> None:
    """`pulumi new --generate-only` from a local template, in the current directory or `options.dir`."""
    if not options.yes:
        raise TemplateError("non-interactive mode requires --yes flag")
    if not options.generate_only:
        raise TemplateError(
            "the Pulumi CLI stand-in supports `pulumi new` with --generate-only only (it creates no stack, "
            "saves no config and installs no dependencies); run `pulumi stack init` afterwards"
        )
    if options.name and (problem := project_name_problem(options.name)):
        raise TemplateError(f"'{options.name}' is not a valid project name: {problem}")
    original_cwd = Path.cwd()
    cwd = original_cwd
    if options.dir:
        try:
            Path(options.dir).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TemplateError(f"creating the directory: {error}") from error
        os.chdir(options.dir)
        cwd = Path.cwd()
    if not options.force:
        ensure_empty(cwd)
    # As the CLI, a relative template path is looked up from the target directory.
    template = find_template(options.template, options.offline)
    if template.error:
        raise TemplateError(f"template '{template.name}' is currently broken: {template.error}")
    runtime = template_runtime(template)
    if runtime and runtime not in SIMULATED_RUNTIMES:
        raise TemplateError(
            f"the Pulumi CLI stand-in does not simulate the {runtime} language host, which `pulumi new` asks for "
            f"runtime options and project templating (supported runtimes: {', '.join(sorted(SIMULATED_RUNTIMES))})"
        )
    name = options.name or default_project_name(template, cwd)
    if not options.name and (problem := project_name_problem(name)):
        raise TemplateError(f"'{name}' is not a valid project name. {problem}")
    description = options.description or default_description(template)
    if template.directory is None:
        _copy_minimal_project(cwd, options.force, name)
    else:
        if not options.force:
            check_no_overwrite(template.directory, cwd, name)
        copy_template(template.directory, cwd, options.force, name, description)
    out.write(f"Created project '{name}'\n\n")
    finish_project(cwd, options, name, description, sanitize_template_tag(options.template) or template.name)
    out.write("Your new project is ready to go! \n\n")
    out.write("To perform an initial deployment, run the following commands:\n\n")
    for number, command in enumerate(next_steps(original_cwd, cwd), start=1):
        out.write(f"   {number}. {command}\n")
    out.write("\nThen, run `pulumi up`\n\n")
    if template.quickstart:
        out.write(template.quickstart + "\n")


def _copy_minimal_project(cwd: Path, force: bool, name: str) -> None:
    path = cwd / PROJECT_FILE
    if path.exists() and not force:
        raise existing_files_error([PROJECT_FILE])
    path.write_text(f"name: {yaml_scalar(name)}", encoding="utf-8")
