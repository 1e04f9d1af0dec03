"""Command line of the Pulumi CLI stand-in: the commands and flags the Automation API uses."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from importlib.metadata import version as package_version
from pathlib import Path

from . import properties
from .backend import BackendError, FileBackend, manifest, stack_short_name
from .passphrase import PassphraseError
from .project import ConfigValue, Project, ProjectError, StackConfig

# The stand-in speaks the contract of the CLI release matching the installed SDK.
CLI_VERSION = package_version("pulumi")
ERROR_EXIT_CODE = 255

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
}
VALUE_FLAGS = {
    "--stack", "--cwd", "--color", "--client", "--exec-kind", "--event-log", "--message", "--parallel",
    "--secrets-provider", "--file", "--page-size", "--page", "--verbose", "--tracing", "--tracing-header",
    "--config-file", "--profiling", "--memprofilerate", "--otel-traces", "--server", "--out", "--from",
    "--target", "--exclude", "--replace", "--policy-pack", "--policy-pack-config", "--plan", "--save-plan",
    "--import-file",
    "--name", "--description", "--dir", "--config", "--runtime-options", "--ai", "--language",
}  # fmt: skip
# In `config set-all` these carry `key=value` (or the JSON document) instead of being switches.
SET_ALL_VALUE_FLAGS = {"--plaintext", "--secret", "--json"}
UNSUPPORTED_OPERATION_FLAGS = {
    "--exclude", "--plan", "--save-plan", "--policy-pack", "--policy-pack-config", "--import-file",
    "--continue-on-error", "--remote", "--exclude-dependents", "--config-file",
}  # fmt: skip
SUBCOMMAND_GROUPS = {"stack", "config", "plugin"}


class CliError(Exception):
    pass


def format_time(timestamp: float) -> str:
    """The CLI's JSON time format (what the Automation API parses)."""
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Arguments:
    """Parsed command line: the command words, flags (name -> values) and positional arguments."""

    def __init__(self, argv: list[str]) -> None:
        separator = argv.index("--") if "--" in argv else len(argv)
        head, tail = argv[:separator], argv[separator + 1 :]
        words = self._positionals(head, set())
        self.command = words[:2] if words and words[0] in SUBCOMMAND_GROUPS and len(words) > 1 else words[:1]
        value_flags = SET_ALL_VALUE_FLAGS if self.command == ["config", "set-all"] else set()
        self.flags: dict[str, list[str]] = {}
        self.positionals = self._positionals(head, value_flags, record=True)[len(self.command) :] + tail

    def _positionals(self, tokens: list[str], extra_value_flags: set[str], record: bool = False) -> list[str]:
        positionals = []
        index = 0
        while index < len(tokens):
            token = tokens[index]
            index += 1
            if not token.startswith("-") or token == "-":
                positionals.append(token)
                continue
            name, has_value, value = token.partition("=")
            name = SHORT_FLAGS.get(name, name)
            if not has_value:
                if name in VALUE_FLAGS or name in extra_value_flags:
                    value = tokens[index] if index < len(tokens) else ""
                    index += 1
                else:
                    value = "true"
            if record:
                self.flags.setdefault(name, []).append(value)
        return positionals

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

    def stack_name(self, positional_allowed: bool = False) -> str:
        name = self.args.flag("--stack")
        if not name and positional_allowed and self.args.positionals:
            name = self.args.positionals[0]
        name = name or self.project.current_stack()
        if not name:
            raise CliError("no stack selected; please use `pulumi stack select` to choose one, or pass --stack")
        return stack_short_name(name)

    def existing_stack(self, positional_allowed: bool = False) -> str:
        stack = self.stack_name(positional_allowed)
        if not self.backend.exists(stack):
            raise CliError(f"no stack named '{stack}' found")
        return stack

    def stack_config(self, stack: str) -> StackConfig:
        salt = ((self.backend.read_checkpoint(stack).get("secrets_providers") or {}).get("state") or {}).get("salt")
        return StackConfig.load(self.project, stack, salt)

    def run(self) -> int:
        handler = COMMANDS.get(tuple(self.args.command))
        if handler is None:
            raise CliError(f"the Pulumi CLI stand-in does not support `pulumi {' '.join(self.args.command)}`")
        return handler(self) or 0

    # --- general -----------------------------------------------------------------------------

    def version(self) -> None:
        print(f"v{CLI_VERSION}")

    def whoami(self) -> None:
        user = getpass.getuser()
        if self.args.switch("--json"):
            print(json.dumps({"user": user, "organizations": [], "url": self.project.backend_url()}, indent=4))
        elif self.args.switch("--verbose"):
            print(f"User: {user}\nOrganizations: \nBackend URL: {self.project.backend_url()}")
        else:
            print(user)

    def about(self) -> None:
        about = {
            "cliVersion": CLI_VERSION,
            "backend": {"name": socket.gethostname(), "url": self.project.backend_url(), "user": getpass.getuser()},
            "project": {"name": self.project.name},
            "currentStack": self.project.current_stack(),
            "plugins": [],
        }
        print(json.dumps(about, indent=4) if self.args.switch("--json") else f"CLI Version: {CLI_VERSION} (stand-in)")

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

    def stack_init(self) -> None:
        stack = self.stack_name(positional_allowed=True)
        provider = self.args.flag("--secrets-provider") or "passphrase"
        if provider not in ("passphrase", "default"):
            raise CliError(f"the Pulumi CLI stand-in supports only the passphrase secrets provider, not {provider!r}")
        if self.backend.exists(stack):
            raise CliError(f"stack '{self.backend.qualified_name(stack)}' already exists")
        config = StackConfig.load(self.project, stack, None)
        config.crypter()  # creates the salt when the stack's config file has none
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

    def stack_select(self) -> None:
        stack = self.stack_name(positional_allowed=True)
        if not self.backend.exists(stack):
            if not self.args.switch("--create"):
                raise CliError(f"no stack named '{stack}' found")
            self.stack_init()
            return
        self.project.set_current_stack(stack)

    def stack_ls(self) -> None:
        backend = self.backend
        current = self.project.current_stack()
        summaries = []
        for stack in backend.list_stacks():
            resources = backend.read_checkpoint(stack).get("resources") or []
            summary = {"name": stack, "current": stack == current}
            if resources:
                summary["lastUpdate"] = format_time(backend.last_modified(stack))
            summary["updateInProgress"] = backend.is_locked(stack)
            summary["resourceCount"] = len(resources)
            summaries.append(summary)
        if self.args.switch("--json"):
            print(json.dumps(summaries, indent=4))
        else:
            for summary in summaries:
                print(f"{summary['name']}{'*' if summary['current'] else ''}  {summary['resourceCount']}")

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
        if not self.args.switch("--preserve-config"):
            self.stack_config_path(stack).unlink(missing_ok=True)
        if self.project.current_stack() == stack:
            self.project.set_current_stack(None)
        print(f"Stack '{stack}' has been removed!")

    def stack_config_path(self, stack: str) -> Path:
        return StackConfig.load(self.project, stack, None).path

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
        stack = self.existing_stack()
        outputs = self._stack_outputs(stack, self.args.switch("--show-secrets"))
        if self.args.positionals:
            name = self.args.positionals[0]
            if name not in outputs:
                raise CliError(f"current stack does not have output property '{name}'")
            value = outputs[name]
            print(json.dumps(value, indent=4) if self.args.switch("--json") or not isinstance(value, str) else value)
        elif self.args.switch("--json"):
            print(json.dumps(outputs, indent=4))
        else:
            print("Current stack outputs:")
            for key, value in outputs.items():
                print(f"    {key}  {value if isinstance(value, str) else json.dumps(value)}")

    def stack_history(self) -> None:
        stack = self.existing_stack()
        show_secrets = self.args.switch("--show-secrets")
        updates = self.backend.history(stack)
        page_size = int(self.args.flag("--page-size") or 0)
        if page_size > 0:
            page = max(int(self.args.flag("--page") or 1), 1)
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
                secret = isinstance(value, dict) and set(value) == {"secure"}
                if secret:
                    shown = ConfigValue(config.crypter().decrypt(value["secure"]), True)
                else:
                    shown = ConfigValue(value)
                entry["config"][key] = shown.as_json(show_secrets)
            entries.append(entry)
        if self.args.switch("--json"):
            print(json.dumps(entries, indent=4))
        else:
            for entry in entries:
                print(f"Version: {entry['version']}  {entry['kind']}  {entry['result']}  {entry['startTime']}")

    def stack_export(self) -> None:
        stack = self.existing_stack()
        deployment = self.backend.read_checkpoint(stack)
        if self.args.switch("--show-secrets"):
            deployment = properties.reveal(deployment, self.stack_config(stack).crypter)
        content = json.dumps({"version": 3, "deployment": deployment}, indent=4)
        target = self.args.flag("--file")
        if target:
            Path(target).write_text(content + "\n", encoding="utf-8")
        else:
            print(content)

    def stack_import(self) -> None:
        stack = self.existing_stack()
        source = self.args.flag("--file")
        document = json.loads(Path(source).read_text(encoding="utf-8") if source else sys.stdin.read())
        deployment = document.get("deployment") or {}
        config = self.stack_config(stack)
        # Plaintext secrets from a --show-secrets export are encrypted again for the checkpoint.
        deployment = properties.seal(properties.unseal(deployment, config.crypter), config.crypter)
        backend = self.backend
        lock = backend.lock(stack)
        try:
            backend.write_checkpoint(stack, deployment)
        finally:
            lock.unlink(missing_ok=True)
        print("Import complete.")

    # --- config ------------------------------------------------------------------------------

    def _config_for_change(self) -> StackConfig:
        if self.args.switch("--path"):
            raise CliError("the Pulumi CLI stand-in does not support --path config keys")
        return self.stack_config(self.existing_stack())

    def config_ls(self) -> None:
        config = self.stack_config(self.existing_stack())
        show_secrets = self.args.switch("--show-secrets")
        values = config.decrypted() if show_secrets else config.values
        if self.args.switch("--json"):
            print(json.dumps({key: entry.as_json(show_secrets) for key, entry in sorted(values.items())}, indent=4))
        else:
            print("KEY  VALUE")
            for key, entry in sorted(values.items()):
                print(f"{key}  {'[secret]' if entry.secret and not show_secrets else entry.value}")

    def config_get(self) -> None:
        config = self._config_for_change()
        if not self.args.positionals:
            raise CliError("config get needs a key")
        key = self.project.full_key(self.args.positionals[0])
        if key not in config.values:
            raise CliError(f"configuration key '{key}' not found for stack '{config.path.stem.split('.', 1)[1]}'")
        entry = ConfigValue(config.plaintext(key), config.values[key].secret)
        if self.args.switch("--json"):
            print(json.dumps(entry.as_json(show_secrets=True), indent=4))
        else:
            print(entry.value if isinstance(entry.value, str) else json.dumps(entry.value))

    def config_set(self) -> None:
        config = self._config_for_change()
        if len(self.args.positionals) < 2:
            raise CliError("config set needs a key and a value")
        key, value = self.args.positionals[0], self.args.positionals[1]
        config.set(self.project.full_key(key), value, secret=self.args.switch("--secret"))
        config.save()

    def config_set_all(self) -> None:
        config = self._config_for_change()
        for flag in ("--plaintext", "--secret"):
            for pair in self.args.flags.get(flag, []):
                key, separator, value = pair.partition("=")
                if not separator:
                    raise CliError(f"could not parse {pair!r} as a configuration key/value pair")
                config.set(self.project.full_key(key), value, secret=flag == "--secret")
        for document in self.args.flags.get("--json", []):
            for key, entry in json.loads(document).items():
                value = entry.get("objectValue", entry.get("value"))
                config.set(self.project.full_key(key), value, secret=bool(entry.get("secret")))
        config.save()

    def config_rm(self) -> None:
        config = self._config_for_change()
        for key in self.args.positionals:
            config.values.pop(self.project.full_key(key), None)
        config.save()

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
    ("stack", "init"): Cli.stack_init,
    ("stack", "select"): Cli.stack_select,
    ("stack", "ls"): Cli.stack_ls,
    ("stack", "rm"): Cli.stack_rm,
    ("stack", "output"): Cli.stack_output,
    ("stack", "history"): Cli.stack_history,
    ("stack", "export"): Cli.stack_export,
    ("stack", "import"): Cli.stack_import,
    ("config",): Cli.config_ls,
    ("config", "get"): Cli.config_get,
    ("config", "set"): Cli.config_set,
    ("config", "set-all"): Cli.config_set_all,
    ("config", "rm"): Cli.config_rm,
    ("config", "rm-all"): Cli.config_rm,
    ("up",): Cli.up,
    ("update",): Cli.up,
    ("preview",): Cli.preview,
    ("destroy",): Cli.destroy,
    ("refresh",): Cli.refresh,
    ("new",): Cli.new,
}


def main(argv: list[str]) -> int:
    # A terminated CLI still releases its stack lock (the `finally` blocks run on SystemExit).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    arguments = Arguments(argv)
    cwd = arguments.flag("--cwd")
    try:
        if cwd:
            os.chdir(cwd)
        return Cli(arguments).run()
    except (CliError, ProjectError, BackendError, PassphraseError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return ERROR_EXIT_CODE
