"""Command line of the Pulumi CLI stand-in: the commands and flags the Automation API uses."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import platform
import shlex
import signal
import socket
import sys
from collections.abc import Callable
from importlib.metadata import version as package_version
from pathlib import Path

from . import properties
from .display import go_duration
from .backend import ORGANIZATION, BackendError, FileBackend, StackNotFoundError, manifest, stack_short_name
from .passphrase import Crypter, PassphraseError
from .project import (
    ConfigValue,
    Project,
    ProjectError,
    StackConfig,
    compact_json,
    contains_secure,
    is_secure,
    map_secure,
    typed_config_value,
)

# The stand-in speaks the contract of the CLI release matching the installed SDK.
CLI_VERSION = package_version("pulumi")
# The CLI's exit codes (pkg/cmd/pulumi/cmd/exit_codes.go): any failure is 1 unless classified.
ERROR_EXIT_CODE = 1
STACK_NOT_FOUND_EXIT_CODE = 6
TABLE_COLUMN_GAP = "  "
TAGS_FILE_VERSION = 1
ROOT_STACK_TYPE = "pulumi:pulumi:Stack"
IMPORT_REFUSED = "importing this file could be dangerous; rerun with --force to proceed anyway"

SHORT_FLAGS = {
    "-s": "--stack",
    "-C": "--cwd",
    "-m": "--message",
    "-p": "--parallel",
    "-y": "--yes",
    "-f": "--force",
    "-v": "--verbose",
    "-j": "--json",
    "-t": "--target",
    "-h": "--help",
    "-e": "--emoji",
    "-Q": "--fully-qualify-stack-names",
    "-c": "--config",
    "-d": "--debug",
    "-x": "--exclude",
    "-r": "--refresh",
    "-a": "--all",
    "-o": "--organization",
    "-u": "--show-urns",
    "-i": "--show-ids",
}
# Flags that take a value (`--flag value` or `--flag=value`); every other flag is a switch.
VALUE_FLAGS = {
    "--stack", "--cwd", "--color", "--client", "--exec-kind", "--event-log", "--message", "--parallel",
    "--secrets-provider", "--file", "--page-size", "--page", "--verbose", "--tracing", "--tracing-header",
    "--config-file", "--profiling", "--memprofilerate", "--otel-traces", "--server", "--out", "--from",
    "--target", "--exclude", "--replace", "--policy-pack", "--policy-pack-config", "--plan", "--save-plan",
    "--import-file", "--copy-config-from", "--teams", "--organization", "--project", "--tag", "--type",
    "--exec-agent", "--suppress-permalink", "--config", "--target-replace", "--attach-debugger", "--version",
    "--import-pending-creates", "--checksum", "--dest",
    "--name", "--description", "--dir", "--runtime-options", "--ai", "--language",
}  # fmt: skip
# In `config set-all` these carry `key=value` (or the JSON document) instead of being switches.
SET_ALL_VALUE_FLAGS = {"--plaintext", "--secret", "--json"}
UNSUPPORTED_OPERATION_FLAGS = {
    "--exclude", "--plan", "--save-plan", "--policy-pack", "--policy-pack-config", "--import-file",
    "--continue-on-error", "--remote", "--exclude-dependents",
}  # fmt: skip

# The root command's persistent flags, accepted by every command.
GLOBAL_FLAGS = {
    "--cwd", "--emoji", "--fully-qualify-stack-names", "--disable-integrity-checking", "--logflow",
    "--logtostderr", "--non-interactive", "--tracing", "--otel-traces", "--profiling", "--memprofilerate",
    "--verbose", "--color", "--tracing-header", "--help",
}  # fmt: skip
# The flags of the operations, as the CLI 3.x defines them (which of them the stand-in honours
# is the operation's business: the others fail there with a message naming them).
_OPERATION_COMMON = {
    "--stack", "--config-file", "--config", "--config-path", "--message", "--target", "--exclude",
    "--target-dependents", "--exclude-dependents", "--diff", "--json", "--debug", "--run-program",
    "--skip-config-validation", "--show-config", "--show-replacement-steps", "--show-sames", "--urns",
    "--suppress-outputs", "--suppress-progress", "--suppress-permalink", "--show-full-output",
    "--skip-plugin-pre-install", "--neo", "--copilot", "--event-log", "--exec-kind", "--exec-agent",
    "--client", "--parallel", "--refresh", "--expect-no-changes", "--show-secrets", "--policy-pack",
    "--policy-pack-config", "--attach-debugger", "--continue-on-error",
}  # fmt: skip
COMMAND_FLAGS: dict[tuple[str, ...], set[str]] = {
    ("version",): set(),
    ("whoami",): {"--json"},
    ("about",): {"--json", "--stack", "--transitive"},
    ("cancel",): {"--stack", "--yes"},
    ("plugin", "ls"): {"--json", "--project"},
    ("plugin", "install"): {"--exact", "--file", "--reinstall", "--server", "--checksum"},
    ("stack",): {"--stack", "--show-ids", "--show-urns", "--show-secrets", "--show-name"},
    ("stack", "init"): {"--stack", "--secrets-provider", "--copy-config-from", "--no-select", "--teams", "--yes"},
    ("stack", "select"): {"--stack", "--create", "--secrets-provider"},
    ("stack", "ls"): {"--all", "--organization", "--project", "--tag", "--json"},
    ("stack", "rm"): {"--force", "--yes", "--stack", "--preserve-config", "--remove-backups"},
    ("stack", "output"): {"--json", "--shell", "--stack", "--show-secrets"},
    ("stack", "history"): {"--stack", "--show-secrets", "--full-dates", "--page-size", "--page", "--json"},
    ("stack", "export"): {"--stack", "--file", "--version", "--show-secrets"},
    ("stack", "import"): {"--stack", "--force", "--file"},
    ("stack", "rename"): {"--stack"},
    ("stack", "change-secrets-provider"): {"--stack"},
    ("stack", "tag", "get"): {"--stack"},
    ("stack", "tag", "set"): {"--stack"},
    ("stack", "tag", "rm"): {"--stack"},
    ("stack", "tag", "ls"): {"--stack", "--json"},
    ("config",): {"--show-secrets", "--open", "--json", "--stack", "--config-file"},
    ("config", "get"): {"--json", "--open", "--path", "--stack", "--config-file"},
    ("config", "set"): {"--path", "--plaintext", "--secret", "--type", "--raw", "--stack", "--config-file"},
    ("config", "set-all"): {"--path", "--plaintext", "--secret", "--json", "--stack", "--config-file"},
    ("config", "rm"): {"--path", "--stack", "--config-file"},
    ("config", "rm-all"): {"--path", "--stack", "--config-file"},
    ("config", "refresh"): {"--force", "--stack", "--config-file"},
    ("up",): _OPERATION_COMMON | {
        "--secrets-provider", "--replace", "--target-replace", "--show-policy-remediations", "--show-reads",
        "--skip-preview", "--yes", "--ignore-protect", "--plan", "--strict", "--neo-task-on-failure",
        "--exclude-protected",
    },
    ("preview",): _OPERATION_COMMON | {
        "--save-plan", "--import-file", "--replace", "--target-replace", "--show-policy-remediations",
        "--show-reads", "--ignore-protect", "--neo-task-on-failure",
    },
    ("destroy",): _OPERATION_COMMON | {
        "--remove", "--exclude-protected", "--ignore-protect", "--preview-only", "--skip-preview", "--yes",
    },
    ("new",): {
        "--ai", "--language", "--description", "--dir", "--force", "--generate-only", "--list-templates",
        "--name", "--offline", "--runtime-options", "--yes", "--stack", "--config", "--config-path",
        "--secrets-provider",
    },
    ("refresh",): _OPERATION_COMMON | {
        "--preview-only", "--skip-preview", "--yes", "--skip-pending-creates", "--clear-pending-creates",
        "--import-pending-creates",
    },
}  # fmt: skip
OPERATIONS = {("up",), ("preview",), ("destroy",), ("refresh",)}
# Operation flags that change what an update does and that the stand-in does not do: refused, never
# ignored. (Display-only flags such as --show-sames or --suppress-progress are accepted.)
OPERATION_FLAGS_NOT_SIMULATED = {
    "--config", "--config-path", "--secrets-provider", "--target-replace", "--ignore-protect",
    "--attach-debugger", "--remove", "--skip-pending-creates", "--clear-pending-creates",
    "--import-pending-creates", "--neo-task-on-failure",
}  # fmt: skip
# The CLI's aliases of the commands above.
COMMAND_ALIASES = {
    ("update",): ("up",),
    ("stack", "new"): ("stack", "init"),
    ("stack", "create"): ("stack", "init"),
    ("stack", "list"): ("stack", "ls"),
    ("stack", "remove"): ("stack", "rm"),
    ("stack", "delete"): ("stack", "rm"),
    ("stack", "hist"): ("stack", "history"),
    ("stack", "tag", "list"): ("stack", "tag", "ls"),
    ("stack", "tag", "remove"): ("stack", "tag", "rm"),
    ("stack", "tag", "delete"): ("stack", "tag", "rm"),
    ("config", "remove"): ("config", "rm"),
    ("config", "delete"): ("config", "rm"),
    ("config", "remove-all"): ("config", "rm-all"),
    ("config", "delete-all"): ("config", "rm-all"),
    ("plugin", "list"): ("plugin", "ls"),
}
# Commands of the real CLI the stand-in does not simulate: refused as such, not as unknown commands.
REAL_COMMANDS_NOT_SIMULATED = {
    ("import",), ("install",), ("login",), ("logout",), ("state",), ("convert",), ("policy",),
    ("org",), ("env",), ("package",), ("schema",), ("watch",), ("logs",), ("console",), ("deployment",),
    ("gen-completion",), ("ai",), ("cloud",), ("template",), ("plugin", "rm"), ("plugin", "run"),
    ("config", "env"), ("config", "cp"), ("config", "copy"), ("stack", "graph"), ("stack", "unselect"),
    ("stack", "schedule"), ("stack", "webhook"), ("stack", "drift"), ("stack", "get"),
}  # fmt: skip
# Commands that are also groups: a word after them that is not a subcommand is an unknown command.
GROUP_COMMANDS = {("config",), ("stack",)}
# Shorthands that mean another flag in one command (`up -f` skips the preview, `stack ls -t` is a tag filter).
COMMAND_SHORT_OVERRIDES = {
    ("stack", "ls"): {"-p": "--project", "-t": "--tag"},
    ("plugin", "ls"): {"-p": "--project"},
    ("about",): {"-t": "--transitive"},
    ("new",): {"-n": "--name", "-d": "--description", "-g": "--generate-only", "-f": "--force", "-l": "--list-templates",
               "-o": "--offline"},
    ("stack", "select"): {"-c": "--create"},
    ("up",): {"-f": "--skip-preview"},
    ("destroy",): {"-f": "--skip-preview"},
    ("refresh",): {"-f": "--skip-preview"},
}
# Flags whose kind differs in one command: `whoami -v` is a switch (the root's --verbose takes a level).
COMMAND_SWITCH_OVERRIDES = {("whoami",): {"--verbose"}}


class CliError(Exception):
    pass


class UsageError(CliError):
    """A malformed command line (cobra's errors: unknown command or flag, missing flag argument)."""


class StackNotFound(CliError):
    """No such stack, or none selected (the CLI exits with STACK_NOT_FOUND_EXIT_CODE)."""


def format_time(timestamp: float) -> str:
    """The CLI's JSON time format (what the Automation API parses)."""
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def print_json(value: object) -> None:
    """JSON as the CLI prints it (ui.FprintJSON): two-space indent, no HTML escaping."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


def stringify_output(value: object) -> str:
    """A stack output as `stack output` prints it: strings as they are, the rest as one-line JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def format_table(headers: list[str], rows: list[list[str]], prefix: str = "") -> str:
    """The CLI's tables: columns padded to their widest cell, two spaces apart, the last not padded.
    A row may have one more item: lines printed under it (the table's additional info)."""
    columns = len(headers)
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(columns)]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(widths[column]) + TABLE_COLUMN_GAP for column, cell in enumerate(row[: columns - 1])]
        lines.append(prefix + "".join(cells) + row[columns - 1] + "\n")
        lines.extend(row[columns:])
    return "".join(lines)


def resource_tree_rows(resources: list[dict], show_urns: bool, show_ids: bool) -> list[list[str]]:
    """`pulumi stack`'s TYPE/NAME rows: the resources as a tree under the root stack resource
    (children by parent, others under the root), with URN and ID lines when asked for."""
    children: dict[str, list[dict]] = {}
    root = None
    orphans = []
    for resource in resources:
        if resource.get("parent"):
            children.setdefault(resource["parent"], []).append(resource)
        elif resource["type"] == ROOT_STACK_TYPE:
            root = resource
        else:
            orphans.append(resource)

    def row(resource: dict, prefix: str, info_prefix: str) -> list[str]:
        info = ""
        if show_urns:
            info += f"    {info_prefix}URN: {resource['urn']}\n"
        if show_ids and resource.get("id"):
            info += f"    {info_prefix}ID: {resource['id']}\n"
        return [prefix + resource["type"], resource["urn"].rsplit("::", 1)[-1], info]

    known = {resource["urn"] for resource in resources}
    if root is None or any(parent not in known for parent in children):
        return [row(resource, "", "    ") for resource in resources]
    rows: list[list[str]] = []

    def visit(resource: dict, padding: str, branch: str, kids: list[dict]) -> None:
        child_padding = padding + {"├─ ": "│  ", "└─ ": "   "}.get(branch, "")
        rows.append(row(resource, padding + branch, child_padding + ("│  " if kids else "   ")))
        for index, child in enumerate(kids):
            visit(child, child_padding, "└─ " if index == len(kids) - 1 else "├─ ", children.get(child["urn"], []))

    visit(root, "", "", children.get(root["urn"], []) + orphans)
    return rows


# go-humanize's relative times: (below this many seconds, format, divisor).
HUMANIZE_MAGNITUDES = (
    (1, "now", 1),
    (2, "1 second ago", 1),
    (60, "{} seconds ago", 1),
    (120, "1 minute ago", 1),
    (3600, "{} minutes ago", 60),
    (7200, "1 hour ago", 1),
    (86400, "{} hours ago", 3600),
    (2 * 86400, "1 day ago", 1),
    (7 * 86400, "{} days ago", 86400),
    (14 * 86400, "1 week ago", 1),
    (30 * 86400, "{} weeks ago", 7 * 86400),
    (60 * 86400, "1 month ago", 1),
    (365 * 86400, "{} months ago", 30 * 86400),
    (548 * 86400, "1 year ago", 1),
    (730 * 86400, "2 years ago", 1),
)


def humanize_time(iso_time: str) -> str:
    """`2024-01-01T00:00:00.000Z` as the CLI shows times in tables (go-humanize: `5 minutes ago`)."""
    when = dt.datetime.strptime(iso_time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    seconds = int((dt.datetime.now(dt.timezone.utc) - when).total_seconds())
    for limit, text, divisor in HUMANIZE_MAGNITUDES:
        if seconds < limit:
            return text.format(seconds // divisor)
    return f"{seconds // (365 * 86400)} years ago"


def rename_urn(urn: str, old_stack: str, new_stack: str) -> str:
    """A URN of `old_stack` as the same resource's URN in `new_stack` (the root stack resource's name,
    `<project>-<stack>`, follows), as the CLI's stack rename rewrites state."""
    prefix = f"urn:pulumi:{old_stack}::"
    if not urn.startswith(prefix):
        return urn
    project, qualified_type, name = urn[len(prefix) :].split("::", 2)
    if qualified_type == ROOT_STACK_TYPE:
        name = f"{project}-{new_stack}"
    return f"urn:pulumi:{new_stack}::{project}::{qualified_type}::{name}"


def rename_stack_in_state(value: object, old_stack: str, new_stack: str, key: str = "") -> object:
    """Every URN in a checkpoint (resources, parents, dependencies, provider references...) renamed."""
    if isinstance(value, dict):
        return {name: rename_stack_in_state(item, old_stack, new_stack, name) for name, item in value.items()}
    if isinstance(value, list):
        return [rename_stack_in_state(item, old_stack, new_stack, key) for item in value]
    if isinstance(value, str) and value.startswith("urn:pulumi:"):
        if key == "provider" and "::" in value:
            urn, _, provider_id = value.rpartition("::")
            return f"{rename_urn(urn, old_stack, new_stack)}::{provider_id}"
        return rename_urn(value, old_stack, new_stack)
    return value


def urn_stack(urn: str) -> str:
    """The stack part of `urn:pulumi:<stack>::<project>::<type>::<name>`."""
    return urn.removeprefix("urn:pulumi:").split("::", 1)[0]


def go_multierror(messages: list[str]) -> str:
    """Several errors as hashicorp/go-multierror prints them (the CLI's `stack import`)."""
    if len(messages) == 1:
        return f"1 error occurred:\n\t* {messages[0]}\n"
    return f"{len(messages)} errors occurred:\n" + "".join(f"\t* {message}\n" for message in messages)


def tags_path(backend: FileBackend, stack: str) -> Path:
    """Where the file backend keeps a stack's tags: next to its checkpoint."""
    return backend.stack_path(stack).with_name(f"{stack}.pulumi-tags")


def usage(arguments: Arguments) -> str:
    """`--help`: cobra's usage layout, listing the flags the stand-in accepts for the command."""
    command = " ".join(["pulumi", *arguments.canonical])
    lines = ["Usage:", f"  {command} [flags]", ""]
    subcommands = sorted(
        " ".join(name[len(arguments.canonical) :][:1])
        for name in COMMAND_FLAGS
        if len(name) > len(arguments.canonical) and name[: len(arguments.canonical)] == arguments.canonical
    )
    if subcommands:
        lines[1] = f"  {command} [command]"
        lines += ["Available Commands:", *(f"  {name}" for name in dict.fromkeys(subcommands)), ""]
    shorts = {long: short for short, long in arguments.shorts.items()}

    def flag_lines(names: set[str]) -> list[str]:
        entries = []
        for name in sorted(names):
            short = f"{shorts[name]}, " if name in shorts else "    "
            kind = " string" if name in VALUE_FLAGS else ""
            entries.append(f"  {short}{name}{kind}")
        return entries

    own = COMMAND_FLAGS.get(arguments.canonical, set()) - GLOBAL_FLAGS
    if own:
        lines += ["Flags:", *flag_lines(own), ""]
    lines += ["Global Flags:", *flag_lines(GLOBAL_FLAGS), ""]
    if subcommands:
        lines.append(f'Use "{command} [command] --help" for more information about a command.')
    return "\n".join(lines)


def _known_commands() -> set[tuple[str, ...]]:
    return set(COMMAND_FLAGS) | set(COMMAND_ALIASES)


class Arguments:
    """Parsed command line: the command words, flags (name -> values) and positional arguments.

    As the CLI (cobra): the command is found first; a flag it does not define is `unknown flag`,
    an unknown subcommand of a group is `unknown command`.
    """

    def __init__(self, argv: list[str]) -> None:
        separator = argv.index("--") if "--" in argv else len(argv)
        head, tail = argv[:separator], argv[separator + 1 :]
        self.shorts = SHORT_FLAGS
        words = self._positionals(head, VALUE_FLAGS)
        self.command = self._command(words)
        canonical = COMMAND_ALIASES.get(tuple(self.command), tuple(self.command))
        value_flags = VALUE_FLAGS - COMMAND_SWITCH_OVERRIDES.get(canonical, set())
        if canonical == ("config", "set-all"):
            value_flags = value_flags | SET_ALL_VALUE_FLAGS
        self.flags: dict[str, list[str]] = {}
        self.shorts = {**SHORT_FLAGS, **COMMAND_SHORT_OVERRIDES.get(canonical, {})}
        self.positionals = self._positionals(head, value_flags, record=True)[len(self.command) :] + tail
        self.help = self.switch("--help")
        self.canonical = canonical

    @staticmethod
    def _command(words: list[str]) -> list[str]:
        command: list[str] = []
        known = _known_commands()
        groups = {group for group in known if len(group) > 1}
        for word in words:
            candidate = (*command, word)
            if any(group[: len(candidate)] == candidate for group in known | groups):
                command.append(word)
            else:
                break
        return command

    def _positionals(self, tokens: list[str], value_flags: set[str], record: bool = False) -> list[str]:
        positionals = []
        index = 0
        while index < len(tokens):
            token = tokens[index]
            index += 1
            if not token.startswith("-") or token == "-":
                positionals.append(token)
                continue
            name, has_value, value = token.partition("=")
            if not name.startswith("--"):
                if len(name) != 2:
                    # A shorthand with its value (`-sdev`) or several shorthand switches in one token (`-yf`).
                    full = self.shorts.get(name[:2])
                    if full in value_flags:
                        name, has_value, value = name[:2], "=", name[2:] + has_value + value
                    else:
                        for letter in name[1:-1]:
                            switch = self.shorts.get(f"-{letter}")
                            if switch is None or switch in value_flags:
                                if record:
                                    raise UsageError(f"unknown shorthand flag: '{letter}' in {token}")
                                continue
                            if record:
                                self.flags.setdefault(switch, []).append("true")
                        name = f"-{name[-1]}"
                if name not in self.shorts:
                    if record:
                        raise UsageError(f"unknown shorthand flag: '{name[1:]}' in {token}")
                    continue
            full_name = self.shorts.get(name, name)
            if not has_value:
                if full_name in value_flags:
                    if index >= len(tokens):
                        if record:
                            raise UsageError(f"flag needs an argument: {token}")
                        continue
                    value = tokens[index]
                    index += 1
                else:
                    value = "true"
            if record:
                self.flags.setdefault(full_name, []).append(value)
        return positionals

    def validate(self) -> None:
        """Refuses what the CLI refuses: unknown commands and flags the command does not define."""
        allowed = COMMAND_FLAGS.get(self.canonical)
        if allowed is None or (self.canonical in GROUP_COMMANDS and self.positionals):
            words = (*self.command, *self.positionals[:1])
            real = next((" ".join(words[:n]) for n in (1, 2) if tuple(words[:n]) in REAL_COMMANDS_NOT_SIMULATED), None)
            if real:
                raise CliError(f"the Pulumi CLI stand-in does not support `pulumi {real}`")
            raise UsageError(self._unknown_command())
        for name in self.flags:
            if name not in allowed and name not in GLOBAL_FLAGS:
                raise UsageError(f"unknown flag: {name}")
        if self.canonical in OPERATIONS:
            not_simulated = sorted(OPERATION_FLAGS_NOT_SIMULATED & set(self.flags))
            if not_simulated:
                raise CliError(f"the Pulumi CLI stand-in does not support {', '.join(not_simulated)}")

    def _unknown_command(self) -> str:
        parent = " ".join(["pulumi", *self.command])
        return f'unknown command "{self.positionals[0]}" for "{parent}"'

    def flag(self, name: str) -> str | None:
        values = self.flags.get(name)
        return values[-1] if values else None

    def switch(self, name: str) -> bool:
        return self.flag(name) not in (None, "false")


class Cli:
    def __init__(self, arguments: Arguments) -> None:
        self.args = arguments
        self._project: Project | None = None

    @property
    def project(self) -> Project:
        if self._project is None:
            self._project = Project.find(Path.cwd())
        return self._project

    @property
    def backend(self) -> FileBackend:
        return FileBackend(self.project.backend_url(), self.project.name)

    def optional_project(self) -> Project | None:
        """The project, or None outside a project directory (whoami and about work there too)."""
        try:
            return self.project
        except ProjectError:
            return None

    def backend_url(self) -> str:
        project = self.optional_project()
        if project is not None:
            return project.backend_url()
        url = os.environ.get("PULUMI_BACKEND_URL")
        if not url:
            raise CliError(
                "no backend configured: the Pulumi CLI stand-in needs PULUMI_BACKEND_URL=file://DIR "
                "(or backend.url in Pulumi.yaml)"
            )
        return url

    def stack_name(self, positional_allowed: bool = False) -> str:
        name = self.args.flag("--stack")
        if not name and positional_allowed and self.args.positionals:
            name = self.args.positionals[0]
        name = name or self.project.current_stack()
        if not name:
            raise StackNotFound("no stack selected; please use `pulumi stack select` to choose one, or pass --stack")
        return stack_short_name(name)

    def existing_stack(self, positional_allowed: bool = False) -> str:
        stack = self.stack_name(positional_allowed)
        if not self.backend.exists(stack):
            raise StackNotFound(f"no stack named '{stack}' found")
        return stack

    def config_file(self) -> Path | None:
        """`--config-file`: the stack settings file to use instead of Pulumi.<stack>.yaml."""
        name = self.args.flag("--config-file")
        return Path(name).absolute() if name else None

    def state_salt(self, stack: str) -> str | None:
        return ((self.backend.read_checkpoint(stack).get("secrets_providers") or {}).get("state") or {}).get("salt")

    def stack_config(self, stack: str) -> StackConfig:
        return StackConfig.load(self.project, stack, self.state_salt(stack), self.config_file())

    def run(self) -> int:
        group_only = self.args.canonical not in COMMAND_FLAGS and not self.args.positionals
        if self.args.help or group_only:
            # As cobra: a group without a subcommand (`pulumi`, `pulumi stack tag`) prints its help.
            print(usage(self.args))
            return 0
        self.args.validate()
        handler = COMMANDS.get(self.args.canonical)
        if handler is None:
            raise CliError(f"the Pulumi CLI stand-in does not support `pulumi {' '.join(self.args.canonical)}`")
        return handler(self) or 0

    # --- general -----------------------------------------------------------------------------

    def version(self) -> None:
        print(f"v{CLI_VERSION}")

    def whoami(self) -> None:
        # The file backend's user is the OS user, with no organizations (omitted from the JSON).
        user = getpass.getuser()
        if self.args.switch("--json"):
            print_json({"user": user, "url": self.backend_url()})
        elif self.args.switch("--verbose"):
            print(f"User: {user}\nOrganizations: \nBackend URL: {self.backend_url()}\nToken type: personal")
        else:
            print(user)

    def about(self) -> None:
        """`about --json`: what the CLI reports, with an error entry for what is missing (no project...)."""
        errors: list[str] = []
        project = None
        try:
            project = self.project
        except ProjectError as error:
            errors.append(f"Failed to read project: {error}")
        about: dict = {
            "plugins": [],
            "host": {"os": platform.system().lower(), "version": platform.release(), "arch": platform.machine()},
            "backend": None,
            "currentStack": None,
            "cliAbout": {"version": CLI_VERSION, "goVersion": "", "goCompiler": ""},
            "runtime": None,
            "dependencies": None,
            "errors": errors,
        }
        if project is not None:
            about["runtime"] = {"language": project.runtime_name(), "executable": sys.executable}
        try:
            url = self.backend_url()
        except CliError as error:
            errors.append(f"Could not access the backend: {error}")
        else:
            about["backend"] = {"name": socket.gethostname(), "url": url, "user": getpass.getuser(), "organizations": None}
            if project is not None:
                stack = self.args.flag("--stack") or project.current_stack()
                if stack and self.backend.exists(stack_short_name(stack)):
                    stack = stack_short_name(stack)
                    resources = self.backend.read_checkpoint(stack).get("resources") or []
                    about["currentStack"] = {
                        "name": stack,
                        "fullyQualifiedName": self.backend.qualified_name(stack),
                        "resources": [{"type": r["type"], "urn": r["urn"]} for r in resources],
                        "pendingOps": [],
                    }
                else:
                    errors.append("Failed to get information about the current stack: No current stack")
        if self.args.switch("--json"):
            print_json(about)
        else:
            print(f"CLI\nVersion      {CLI_VERSION}\n")
            for message in errors:
                print(f"warning: {message}", file=sys.stderr)

    def plugin_ls(self) -> None:
        # Providers are simulated inside the stand-in, so there are never plugins installed.
        print("[]" if self.args.switch("--json") else "")

    def plugin_install(self) -> None:
        print(f"the stand-in simulates {' '.join(self.args.positionals[:2])} itself; nothing to install")

    def cancel(self) -> None:
        stack = self.existing_stack(positional_allowed=True)
        self.backend.cancel(stack)
        print(f"The currently running update for '{stack}' has been canceled!")

    # --- stack -------------------------------------------------------------------------------

    def stack_show(self) -> None:
        """`pulumi stack`: the current stack, its last update, resources (as a tree) and outputs."""
        stack = self.existing_stack()
        if self.args.switch("--show-name"):
            print(stack)
            return
        backend = self.backend
        latest = backend.read_checkpoint(stack)
        resources = latest.get("resources") or []
        print(f"Current stack is {stack}:")
        print(f"    Managed by {socket.gethostname()}")
        if resources or backend.history(stack):
            manifest_info = latest.get("manifest") or {}
            if manifest_info.get("time"):
                when = dt.datetime.fromisoformat(manifest_info["time"]).astimezone(dt.timezone.utc)
                shown = when.strftime("%Y-%m-%d %H:%M:%S.%f").rstrip("0").rstrip(".") + " +0000 UTC"
                print(f"    Last updated: {humanize_time(format_time(when.timestamp()))} ({shown})")
            if manifest_info.get("version"):
                print(f"    Pulumi version used: {manifest_info['version']}")
        else:
            print("    No updates yet; run `pulumi up`")
        print(f"Current stack resources ({len(resources)}):")
        if not resources:
            print("    No resources currently in this stack")
        else:
            rows = resource_tree_rows(resources, self.args.switch("--show-urns"), self.args.switch("--show-ids"))
            print(format_table(["TYPE", "NAME"], rows, prefix="    "), end="")
            outputs = self._stack_outputs(stack, self.args.switch("--show-secrets"))
            print(f"\nCurrent stack outputs ({len(outputs)}):")
            if outputs:
                rows = [[key, stringify_output(outputs[key])] for key in sorted(outputs)]
                print(format_table(["OUTPUT", "VALUE"], rows, prefix="    "), end="")
            else:
                print("    No output values currently in this stack")
        print("\nUse `pulumi stack select` to change stack; `pulumi stack ls` lists known ones")

    def stack_init(self) -> None:
        stack = self.stack_name(positional_allowed=True)
        provider = self.args.flag("--secrets-provider") or "passphrase"
        if provider not in ("passphrase", "default"):
            raise CliError(f"the Pulumi CLI stand-in supports only the passphrase secrets provider, not {provider!r}")
        if self.backend.exists(stack):
            raise CliError(f"stack '{self.backend.qualified_name(stack)}' already exists")
        source = self.args.flag("--copy-config-from")
        if source is not None:
            source = stack_short_name(source)
            if not self.backend.exists(source):
                raise StackNotFound(f"no stack named '{source}' found")
        config = StackConfig.load(self.project, stack, None)
        config.crypter()  # creates the salt when the stack's config file has none
        if source is not None:
            self._copy_config(StackConfig.load(self.project, source, self.state_salt(source)), config)
        config.save()
        deployment = {
            "manifest": manifest(CLI_VERSION),
            "secrets_providers": {"type": "passphrase", "state": {"salt": config.encryption_salt}},
            "metadata": {},
        }
        self.backend.create(stack, deployment)
        if not self.args.switch("--no-select"):
            self.project.set_current_stack(stack)
        print(f"Created stack '{stack}'")

    @staticmethod
    def _copy_config(source: StackConfig, target: StackConfig) -> None:
        """`--copy-config-from`: the values (secrets re-encrypted for the new stack) and the environments."""
        for key, entry in source.values.items():
            if not entry.secret:
                target.values[key] = ConfigValue(entry.value)
            elif entry.is_object:
                value = map_secure(entry.value, lambda text: {"secure": target.crypter().encrypt(source.crypter().decrypt(text))})
                target.values[key] = ConfigValue(value, True)
            else:
                target.set(key, source.crypter().decrypt(entry.value), secret=True)
        if "environment" in source.other_settings:
            target.other_settings["environment"] = source.other_settings["environment"]

    def stack_select(self) -> None:
        stack = self.stack_name(positional_allowed=True)
        if not self.backend.exists(stack):
            if not self.args.switch("--create"):
                raise StackNotFound(f"no stack named '{stack}' found")
            self.stack_init()
            return
        self.project.set_current_stack(stack)

    def stack_ls(self) -> None:
        """The stacks of the current project (or `--project`, or `--all` projects), filtered by
        `--organization` and `--tag name[=value]`, as the file backend lists them."""
        project = self.optional_project()
        project_filter = self.args.flag("--project")
        if not self.args.switch("--all") and not project_filter:
            if project is None:
                raise CliError("no Pulumi.yaml found; please run this command in a project directory")
            project_filter = project.name
        organization = self.args.flag("--organization")
        tag_name, has_value, tag_value = (self.args.flag("--tag") or "").partition("=")
        url = self.backend_url()
        stacks_root = FileBackend(url, "").bookkeeping / "stacks"
        projects = sorted(path.name for path in stacks_root.iterdir() if path.is_dir()) if stacks_root.is_dir() else []
        current = project.current_stack() if project is not None else None
        summaries = []
        for project_name in projects:
            if (project_filter and project_name != project_filter) or (organization and organization != ORGANIZATION):
                continue
            backend = FileBackend(url, project_name)
            for stack in backend.list_stacks():
                if tag_name:
                    tags = self._tags(stack, backend)
                    if tag_name not in tags or (has_value and tags[tag_name] != tag_value):
                        continue
                in_current_project = project is not None and project_name == project.name
                name = stack if in_current_project else backend.qualified_name(stack)
                summaries.append(self._stack_summary(backend, stack, name, in_current_project and stack == current))
        summaries.sort(key=lambda summary: summary["name"])
        if self.args.switch("--json"):
            print_json(summaries)
            return
        rows = [
            [
                summary["name"] + ("*" if summary["current"] else ""),
                humanize_time(summary["lastUpdate"]) if "lastUpdate" in summary else "n/a",
                str(summary["resourceCount"]) if "resourceCount" in summary else "n/a",
            ]
            for summary in summaries
        ]
        print(format_table(["NAME", "LAST UPDATE", "RESOURCE COUNT"], rows), end="")

    @staticmethod
    def _stack_summary(backend: FileBackend, stack: str, name: str, current: bool) -> dict:
        # As the file backend: a stack that was never deployed (or imported) has no last update
        # and no resource count; otherwise they are its checkpoint's manifest time and resources.
        # It reports no update progress.
        latest = backend.read_checkpoint(stack)
        resources = latest.get("resources") or []
        summary: dict = {"name": name, "current": current}
        manifest_time = (latest.get("manifest") or {}).get("time")
        if manifest_time and (resources or backend.history(stack)):
            summary["lastUpdate"] = format_time(dt.datetime.fromisoformat(manifest_time).timestamp())
            summary["resourceCount"] = len(resources)
        return summary

    def stack_rm(self) -> None:
        stack = self.existing_stack(positional_allowed=True)
        backend = self.backend
        resources = backend.read_checkpoint(stack).get("resources") or []
        if resources and not self.args.switch("--force"):
            raise CliError(
                f"'{stack}' still has resources; removal rejected. Possible actions:\n"
                "- Make sure that 'ignore' is set to false in the stack's config\n"
                "- Run `pulumi destroy` to delete the resources, then run `pulumi stack rm`\n"
                "- Run `pulumi stack rm --force` to override this error"
            )
        if not self.args.switch("--force"):
            backend.ensure_unlocked(stack)
        backend.remove(stack)
        tags_path(backend, stack).unlink(missing_ok=True)
        if not self.args.switch("--preserve-config"):
            self.stack_config_path(stack).unlink(missing_ok=True)
        if self.project.current_stack() == stack:
            self.project.set_current_stack(None)
        print(f"Stack '{stack}' has been removed!")

    def stack_config_path(self, stack: str) -> Path:
        return StackConfig.default_path(self.project, stack)

    def stack_rename(self) -> None:
        """Renames the stack in the backend (checkpoint, its URNs, history, tags) and its config file."""
        if len(self.args.positionals) != 1:
            raise UsageError(f"accepts 1 arg(s), received {len(self.args.positionals)}")
        stack = self.existing_stack()
        new_name = stack_short_name(self.args.positionals[0])
        backend = self.backend
        if backend.exists(new_name):
            raise CliError(f"a stack named {backend.qualified_name(new_name)} already exists")
        backend.ensure_unlocked(stack)
        deployment = rename_stack_in_state(backend.read_checkpoint(stack), stack, new_name)
        backend.write_checkpoint(new_name, deployment)
        old_history, new_history = backend.history_dir(stack), backend.history_dir(new_name)
        if old_history.is_dir():
            new_history.mkdir(parents=True, exist_ok=True)
            for path in old_history.iterdir():
                path.rename(new_history / path.name.replace(f"{stack}-", f"{new_name}-", 1))
            old_history.rmdir()
        if tags_path(backend, stack).is_file():
            tags_path(backend, stack).rename(tags_path(backend, new_name))
        backend.stack_path(stack).unlink()
        old_config = self.stack_config_path(stack)
        if old_config.is_file():
            old_config.rename(old_config.with_name(f"Pulumi.{new_name}{old_config.suffix}"))
        self.project.set_current_stack(new_name)
        print(f"Renamed {stack} to {new_name}")

    def stack_change_secrets_provider(self) -> None:
        """Re-keys the stack's secrets (config and state) for a new passphrase provider (a new salt)."""
        if len(self.args.positionals) != 1:
            raise UsageError(f"accepts 1 arg(s), received {len(self.args.positionals)}")
        provider = self.args.positionals[0]
        if provider not in ("passphrase", "default"):
            raise CliError(f"the Pulumi CLI stand-in supports only the passphrase secrets provider, not {provider!r}")
        stack = self.existing_stack()
        backend = self.backend
        old = self.stack_config(stack)
        new = StackConfig(path=old.path, other_settings=dict(old.other_settings))
        new_crypter = new.crypter()
        old_crypter = old.crypter()
        for key, entry in old.values.items():
            if not entry.secret:
                new.values[key] = ConfigValue(entry.value)
            elif entry.is_object:
                value = map_secure(entry.value, lambda text: {"secure": new_crypter.encrypt(old_crypter.decrypt(text))})
                new.values[key] = ConfigValue(value, True)
            else:
                new.values[key] = ConfigValue(new_crypter.encrypt(old_crypter.decrypt(entry.value)), True)
        lock = backend.lock(stack)
        try:
            opened = properties.unseal(backend.read_checkpoint(stack), lambda: old_crypter)
            deployment = properties.seal(opened, lambda: new_crypter)
            deployment["secrets_providers"] = {"type": "passphrase", "state": {"salt": new.encryption_salt}}
            backend.write_checkpoint(stack, deployment)
        finally:
            lock.unlink(missing_ok=True)
        new.save()
        print("Migrating old configuration and state to new secrets provider")

    # --- stack tags (the file backend keeps them in .pulumi/stacks/<project>/<stack>.pulumi-tags) ---

    def _tags(self, stack: str, backend: FileBackend | None = None) -> dict[str, str]:
        path = tags_path(backend or self.backend, stack)
        if not path.is_file():
            return {}
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("version") != TAGS_FILE_VERSION:
            raise CliError(f"unsupported stack tags version: {document.get('version')} (expected {TAGS_FILE_VERSION})")
        return document.get("tags") or {}

    def _save_tags(self, stack: str, tags: dict[str, str]) -> None:
        path = tags_path(self.backend, stack)
        if not tags:
            path.unlink(missing_ok=True)
            return
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"version": TAGS_FILE_VERSION, "tags": tags}, indent=4), encoding="utf-8")
        os.replace(temporary, path)

    def _tag_arguments(self, count: int) -> list[str]:
        if len(self.args.positionals) != count:
            raise UsageError(f"accepts {count} arg(s), received {len(self.args.positionals)}")
        return self.args.positionals

    def stack_tag_get(self) -> None:
        (name,) = self._tag_arguments(1)
        stack = self.existing_stack()
        tags = self._tags(stack)
        if name not in tags:
            raise CliError(f"stack tag '{name}' not found for stack '{stack}'")
        print(tags[name])

    def stack_tag_set(self) -> None:
        name, value = self._tag_arguments(2)
        stack = self.existing_stack()
        tags = self._tags(stack)
        tags[name] = value
        self._save_tags(stack, tags)

    def stack_tag_rm(self) -> None:
        (name,) = self._tag_arguments(1)
        stack = self.existing_stack()
        tags = self._tags(stack)
        tags.pop(name, None)
        self._save_tags(stack, tags)

    def stack_tag_ls(self) -> None:
        self._tag_arguments(0)
        tags = self._tags(self.existing_stack())
        if self.args.switch("--json"):
            print_json(dict(sorted(tags.items())))
        else:
            print(format_table(["NAME", "VALUE"], [[key, tags[key]] for key in sorted(tags)]), end="")

    def _stack_outputs(self, stack: str, show_secrets: bool) -> dict:
        backend = self.backend
        resources = backend.read_checkpoint(stack).get("resources") or []
        root = next((resource for resource in resources if resource["type"] == "pulumi:pulumi:Stack"), None)
        outputs = (root or {}).get("outputs") or {}
        if show_secrets:
            config = self.stack_config(stack)
            return properties.plain(properties.unseal(outputs, config.crypter))
        return properties.masked(outputs)

    def stack_output(self) -> None:
        if self.args.switch("--json") and self.args.switch("--shell"):
            raise CliError("only one of --json and --shell may be set")
        stack = self.existing_stack()
        outputs = self._stack_outputs(stack, self.args.switch("--show-secrets"))
        if self.args.positionals:
            name = self.args.positionals[0]
            if name not in outputs:
                raise CliError(f"current stack does not have output property '{name}'")
            value = outputs[name]
            if self.args.switch("--json"):
                print_json(value)
            elif self.args.switch("--shell"):
                print(f"{name}={shlex.quote(stringify_output(value))}")
            else:
                print(stringify_output(value))
        elif self.args.switch("--json"):
            print_json(outputs)
        elif self.args.switch("--shell"):
            for key in sorted(outputs):
                print(f"{key}={shlex.quote(stringify_output(outputs[key]))}")
        else:
            print(f"Current stack outputs ({len(outputs)}):")
            if not outputs:
                print("    No output values currently in this stack")
                return
            rows = [[key, stringify_output(outputs[key])] for key in sorted(outputs)]
            print(format_table(["OUTPUT", "VALUE"], rows, prefix="    "), end="")

    def stack_history(self) -> None:
        stack = self.existing_stack()
        show_secrets = self.args.switch("--show-secrets")
        updates = self.backend.history(stack)
        page_size = int(self.args.flag("--page-size") or 0)
        page = max(int(self.args.flag("--page") or 1), 1)
        if page_size > 0:
            updates = updates[(page - 1) * page_size : page * page_size]
        config = self.stack_config(stack)
        entries = []
        for update in updates:
            entry = {
                "version": update["version"],
                "kind": update["kind"],
                "startTime": format_time(update["startTime"]),
                "message": update["message"],
                "environment": update["environment"],
                "config": {},
                "result": update["result"],
                "endTime": format_time(update["endTime"]),
                "resourceChanges": update.get("resourceChanges") or {},
            }
            for key, value in update["config"].items():
                if is_secure(value):
                    shown = ConfigValue(config.crypter().decrypt(value["secure"]) if show_secrets else None, True)
                elif contains_secure(value):
                    shown = ConfigValue(map_secure(value, config.crypter().decrypt) if show_secrets else None, True)
                else:
                    shown = ConfigValue(value)
                entry["config"][key] = shown.as_json(show_secrets)
            entries.append(entry)
        if self.args.switch("--json"):
            print_json(entries)
            return
        if not updates:
            print(f"No stack updates found on page '{page}'" if page > 1 else "Stack has never been updated")
            return
        for update in updates:
            changes = update.get("resourceChanges") or {}
            started = dt.datetime.fromtimestamp(update["startTime"], dt.timezone.utc)
            print(f"Version: {update['version']}")
            print(f"UpdateKind: {update['kind']}")
            print(f"Status: {update['result']}")
            print(f"Message: {update['message']}")
            print(f"+{changes.get('create', 0)}-{changes.get('delete', 0)}~{changes.get('update', 0)} {changes.get('same', 0)}", end="")
            when = str(started) if self.args.switch("--full-dates") else humanize_time(format_time(update["startTime"]))
            print(f" Updated {when} took {go_duration(update['endTime'] - update['startTime'])}")
            for key in sorted(update["environment"]):
                if update["environment"][key].strip():
                    print(f"    {key}: {update['environment'][key]}")
            print("")

    def stack_export(self) -> None:
        stack = self.existing_stack()
        deployment = self.backend.read_checkpoint(stack)
        if self.args.switch("--show-secrets"):
            deployment = properties.reveal(deployment, self.stack_config(stack).crypter)
        content = json.dumps({"version": 3, "deployment": deployment}, indent=4, ensure_ascii=False)
        target = self.args.flag("--file")
        if target:
            Path(target).write_text(content + "\n", encoding="utf-8")
        else:
            print(content)

    def stack_import(self) -> None:
        """Replaces the stack's state with a deployment (an export, with or without --show-secrets).

        As the CLI: resources of another stack are refused unless --force (then a warning each);
        ciphertexts are opened with the deployment's own passphrase salt. The checkpoint is then
        sealed with this stack's key, which the stand-in's engine uses for its state.
        """
        stack = self.existing_stack()
        source = self.args.flag("--file")
        document = json.loads(Path(source).read_text(encoding="utf-8") if source else sys.stdin.read())
        deployment = document.get("deployment") or {}
        foreign = [
            f"resource '{resource['urn']}' is from a different stack ({urn_stack(resource['urn'])} != {stack})"
            for resource in deployment.get("resources") or []
            if urn_stack(resource.get("urn", "")) != stack
        ]
        if foreign and not self.args.switch("--force"):
            raise CliError(go_multierror([*foreign, IMPORT_REFUSED]))
        for message in foreign:
            print(f"warning: {message}", file=sys.stderr)
        config = self.stack_config(stack)
        salt = ((deployment.get("secrets_providers") or {}).get("state") or {}).get("salt")
        source_crypter = Crypter(salt) if salt and salt != config.encryption_salt else None
        opened = properties.unseal(deployment, lambda: source_crypter or config.crypter())
        deployment = properties.seal(opened, config.crypter)
        deployment["secrets_providers"] = {"type": "passphrase", "state": {"salt": config.encryption_salt}}
        backend = self.backend
        lock = backend.lock(stack)
        try:
            backend.write_checkpoint(stack, deployment)
        finally:
            lock.unlink(missing_ok=True)
        print("Import complete.")

    # --- config ------------------------------------------------------------------------------

    def _config_for_change(self) -> StackConfig:
        return self.stack_config(self.existing_stack())

    def config_ls(self) -> None:
        config = self.stack_config(self.existing_stack())
        show_secrets = self.args.switch("--show-secrets")
        values = config.decrypted() if show_secrets else config.values
        if self.args.switch("--json"):
            print_json({key: entry.as_json(show_secrets) for key, entry in sorted(values.items())})
            return
        rows = []
        for key, entry in sorted(values.items()):
            shown = entry.text()
            if entry.secret and not show_secrets:
                shown = "[secret]" if not entry.is_object else compact_json(map_secure(entry.value, lambda _: "[secret]"))
            rows.append([self.project.pretty_key(key), shown])
        print(format_table(["KEY", "VALUE"], rows), end="")

    def _one_key(self) -> str:
        if len(self.args.positionals) != 1:
            raise UsageError(f"accepts 1 arg(s), received {len(self.args.positionals)}")
        return self.project.full_key(self.args.positionals[0])

    def config_get(self) -> None:
        key = self._one_key()
        stack = self.existing_stack()
        config = self.stack_config(stack)
        if self.args.switch("--path"):
            entry = config.get_path(key)
        else:
            entry = ConfigValue(config.plaintext(key), config.values[key].secret) if key in config.values else None
        if entry is None:
            raise CliError(f"configuration key '{self.project.pretty_key(key)}' not found for stack '{stack}'")
        if self.args.switch("--json"):
            print_json(entry.as_json(show_secrets=True))
        else:
            print(entry.text())

    def config_set(self) -> None:
        config = self._config_for_change()
        if not self.args.positionals or len(self.args.positionals) > 2:
            raise UsageError(f"accepts between 1 and 2 arg(s), received {len(self.args.positionals)}")
        exclusive = sorted(name[2:] for name in ("--secret", "--plaintext", "--type") if name in self.args.flags)
        if len(exclusive) > 1:
            raise UsageError(
                "if any flags in the group [secret plaintext type] are set none of the others can be; "
                f"[{' '.join(exclusive)}] were all set"
            )
        if len(self.args.positionals) < 2:
            # The CLI reads the value from stdin when it is not an argument (one trailing newline
            # dropped unless --raw).
            text = sys.stdin.read()
            self.args.positionals.append(text if self.args.switch("--raw") else text.removesuffix("\n"))
        key, value = self.project.full_key(self.args.positionals[0]), self.args.positionals[1]
        secret = self.args.switch("--secret")
        type_name = self.args.flag("--type")
        if type_name:
            typed = typed_config_value(value, type_name)
            if self.args.switch("--path"):
                config.set_path(key, value, secret=False, typed=typed)
            else:
                config.set(key, typed, secret=False)
        elif self.args.switch("--path"):
            config.set_path(key, value, secret)
        else:
            config.set(key, value, secret)
        config.save()

    def config_set_all(self) -> None:
        config = self._config_for_change()
        path = self.args.switch("--path")
        if self.args.flags.get("--json") and (self.args.flags.get("--plaintext") or self.args.flags.get("--secret")):
            raise CliError("cannot use --json with --plaintext or --secret")
        for flag in ("--plaintext", "--secret"):
            for pair in self.args.flags.get(flag, []):
                key, separator, value = pair.partition("=")
                if not separator:
                    raise CliError(f"could not parse {pair!r} as a configuration key/value pair")
                if path:
                    config.set_path(self.project.full_key(key), value, secret=flag == "--secret")
                else:
                    config.set(self.project.full_key(key), value, secret=flag == "--secret")
        for document in self.args.flags.get("--json", []):
            for key, entry in json.loads(document).items():
                value = entry.get("objectValue", entry.get("value"))
                config.set(self.project.full_key(key), value, secret=bool(entry.get("secret")))
        config.save()

    def config_rm(self) -> None:
        config = self._config_for_change()
        if self.args.canonical == ("config", "rm") and len(self.args.positionals) != 1:
            raise UsageError(f"accepts 1 arg(s), received {len(self.args.positionals)}")
        for key in self.args.positionals:
            if self.args.switch("--path"):
                config.remove_path(self.project.full_key(key))
            else:
                config.values.pop(self.project.full_key(key), None)
        config.save()

    def config_refresh(self) -> None:
        """Rewrites the stack's config file from the config of its last update (a backup unless --force)."""
        stack = self.existing_stack()
        updates = self.backend.history(stack)
        if not updates:
            raise CliError("getting latest configuration: no previous deployment")
        path = self.config_file() or self.stack_config_path(stack)
        current = StackConfig.load(self.project, stack, self.state_salt(stack), path)
        refreshed = StackConfig(path=path, encryption_salt=self.state_salt(stack), other_settings=current.other_settings)
        for key, value in updates[0]["config"].items():
            if is_secure(value):
                refreshed.values[key] = ConfigValue(value["secure"], True)
            else:
                refreshed.values[key] = ConfigValue(value, contains_secure(value))
        if not path.exists() or self.args.switch("--force"):
            refreshed.save()
            return
        backup = Path(f"{path}.bak")
        while backup.exists():
            backup = Path(f"{backup}.bak")
        path.rename(backup)
        print(f"backed up existing configuration file to {backup}")
        refreshed.save()
        print(f"refreshed configuration for stack '{stack}'")

    # --- operations --------------------------------------------------------------------------

    def operation(self, kind: str, preview: bool) -> int:
        # gRPC and the SDK's protobuf modules are imported only by the commands that deploy.
        from . import operations

        unsupported = sorted(UNSUPPORTED_OPERATION_FLAGS & set(self.args.flags))
        if unsupported:
            raise CliError(f"the Pulumi CLI stand-in does not support {', '.join(unsupported)}")
        operations.validate_flags(self.args.flags, kind)
        stack = self.existing_stack()
        with contextlib.ExitStack() as program_host:
            client_address = self.args.flag("--client")
            if client_address is None and kind == "update":
                # A local program (the CLI run by hand, not by the Automation API).
                client_address = program_host.enter_context(self.project.program_host())
            request = operations.OperationRequest(
                kind=kind,
                preview=preview,
                flags=self.args.flags,
                project=self.project,
                stack=stack,
                backend=self.backend,
                config=self.stack_config(stack),
                cli_version=CLI_VERSION,
                client_address=client_address,
            )
            return operations.run(request)

    def up(self) -> int:
        return self.operation("update", preview=False)

    def preview(self) -> int:
        return self.operation("update", preview=True)

    def destroy(self) -> int:
        return self.operation("destroy", preview=self.args.switch("--preview-only"))

    def refresh(self) -> int:
        return self.operation("refresh", preview=self.args.switch("--preview-only"))

    # --- new ---------------------------------------------------------------------------------

    def new(self) -> None:
        from .templates import AI_RETIRED_MESSAGE, NewOptions, TemplateError, new_project

        if self.args.flag("--ai") or self.args.flag("--language"):
            raise CliError(AI_RETIRED_MESSAGE)
        if self.args.switch("--list-templates"):
            raise CliError("the Pulumi CLI stand-in cannot list templates: the CLI lists those of pulumi/templates")
        options = NewOptions(
            template=self.args.positionals[0] if self.args.positionals else "",
            name=self.args.flag("--name") or "",
            description=self.args.flag("--description") or "",
            dir=self.args.flag("--dir") or "",
            force=self.args.switch("--force"),
            generate_only=self.args.switch("--generate-only"),
            offline=self.args.switch("--offline"),
            yes=self.args.switch("--yes") or os.environ.get("PULUMI_SKIP_CONFIRMATIONS", "").lower() in ("1", "true"),
            runtime_options=[
                option for value in self.args.flags.get("--runtime-options", []) for option in value.split(",")
            ],
        )
        try:
            new_project(options, sys.stdout)
        except TemplateError as error:
            raise CliError(str(error)) from error


COMMANDS: dict[tuple[str, ...], Callable[[Cli], int | None]] = {
    ("version",): Cli.version,
    ("whoami",): Cli.whoami,
    ("about",): Cli.about,
    ("cancel",): Cli.cancel,
    ("plugin", "ls"): Cli.plugin_ls,
    ("plugin", "install"): Cli.plugin_install,
    ("stack",): Cli.stack_show,
    ("stack", "init"): Cli.stack_init,
    ("stack", "select"): Cli.stack_select,
    ("stack", "ls"): Cli.stack_ls,
    ("stack", "rm"): Cli.stack_rm,
    ("stack", "output"): Cli.stack_output,
    ("stack", "history"): Cli.stack_history,
    ("stack", "export"): Cli.stack_export,
    ("stack", "import"): Cli.stack_import,
    ("stack", "rename"): Cli.stack_rename,
    ("stack", "change-secrets-provider"): Cli.stack_change_secrets_provider,
    ("stack", "tag", "get"): Cli.stack_tag_get,
    ("stack", "tag", "set"): Cli.stack_tag_set,
    ("stack", "tag", "rm"): Cli.stack_tag_rm,
    ("stack", "tag", "ls"): Cli.stack_tag_ls,
    ("config",): Cli.config_ls,
    ("config", "get"): Cli.config_get,
    ("config", "set"): Cli.config_set,
    ("config", "set-all"): Cli.config_set_all,
    ("config", "rm"): Cli.config_rm,
    ("config", "rm-all"): Cli.config_rm,
    ("config", "refresh"): Cli.config_refresh,
    ("up",): Cli.up,
    ("preview",): Cli.preview,
    ("destroy",): Cli.destroy,
    ("refresh",): Cli.refresh,
    ("new",): Cli.new,
}


def main(argv: list[str]) -> int:
    # A terminated CLI still releases its stack lock (the `finally` blocks run on SystemExit).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        arguments = Arguments(argv)
        cwd = arguments.flag("--cwd")
        if cwd:
            os.chdir(cwd)
        return Cli(arguments).run()
    except (CliError, ProjectError, BackendError, PassphraseError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        if isinstance(error, (StackNotFound, StackNotFoundError)):
            return STACK_NOT_FOUND_EXIT_CODE
        return ERROR_EXIT_CODE
