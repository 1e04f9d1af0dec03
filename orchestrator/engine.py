"""The one engine path: the Pulumi Automation API with inline programs.

Each instance and each snapshot is its own stack in project `orch`. This module
builds the workspace options once (CLI, backend, secrets passphrase, project
dir) and maps Automation API errors to typed errors: StackBusy (another update
holds the stack), StackNotFound, and EngineError for everything else the CLI
reports.

The project directory is `<data dir>/pulumi-project`: a generated Pulumi.yaml
(the repo's project, with `main` and the virtualenv addressed from there) and
the stacks' settings files, `Pulumi.<stack>.yaml`. The instance document (with
its bootstrap script and SSH keys) is a secret config value there, encrypted
with the stack's passphrase.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import secrets
import shlex
import shutil
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from pulumi import automation as auto

import stacks
from orchestrator.settings import Settings, SettingsError, redact_url
from stacks import instance_program, snapshot_program
from stacks.spec import InstanceDoc, SnapshotDoc

log = logging.getLogger("orch.engine")

PROJECT_NAME = "orch"
REPO_ROOT = Path(__file__).resolve().parent.parent
STACKS_DIR = Path(stacks.__file__).resolve().parent
PROJECT_DIR_NAME = "pulumi-project"
# Previews run in a scratch copy of the project directory, one per stack, removed afterwards.
PREVIEW_DIR_NAME = "pulumi-previews"
# Previews of stacks that do not exist yet run there too, against a scratch file backend of their own.
NEW_STACK_PREVIEW_DIR_NAME = "new"
PASSPHRASE_FILE_NAME = "pulumi-passphrase"
CONCURRENT_UPDATE_RETRIES = 6
# Stack names remembered as absent (see StackEngine._known_absent); the oldest are forgotten.
MAX_KNOWN_ABSENT = 1024
STDERR_TAIL_LINES = 15
LOCKED_STDERR_LINES = 3

LogFn = Callable[[str], None]


class EngineError(Exception):
    """A stack operation failed; the message carries the tail of the CLI's stderr."""


class StackBusy(EngineError):
    """Another update holds the stack's lock (the Automation API's ConcurrentUpdateError)."""


class StackNotFound(EngineError):
    """The stack does not exist in the backend (the Automation API's StackNotFoundError)."""


def _stderr_tail(error: auto.errors.CommandError, lines: int = STDERR_TAIL_LINES) -> str:
    # The SDK's message is the CLI's result: "\n code: N\n stdout: ...\n stderr: ...".
    message = str(error)
    _, marker, stderr = message.partition("\n stderr: ")
    kept = [line for line in (stderr if marker else message).strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _engine_error(error: auto.errors.CommandError) -> EngineError:
    if isinstance(error, auto.errors.ConcurrentUpdateError):
        return StackBusy(f"stack is locked by another update: {_stderr_tail(error, LOCKED_STDERR_LINES)}")
    if isinstance(error, auto.errors.StackNotFoundError):
        return StackNotFound(_stderr_tail(error))
    return EngineError(_stderr_tail(error))


@contextmanager
def _cli_errors() -> Iterator[None]:
    """Automation API failures as typed engine errors."""
    try:
        yield
    except auto.errors.CommandError as error:
        raise _engine_error(error) from None
    except OSError as error:  # the CLI could not be started (e.g. removed since the service started)
        raise EngineError(f"could not run the Pulumi CLI: {error}") from None


def _project_file(directory: Path) -> str:
    """Pulumi.yaml for a project directory outside the repo: the repo's project, with its program
    (`main`) and virtualenv given relative to `directory`, so `pulumi up` run there by hand runs
    stacks/__main__.py in the service's interpreter."""
    source = REPO_ROOT / "Pulumi.yaml"
    if source.is_file():
        project = yaml.safe_load(source.read_text(encoding="utf-8"))
    else:  # an installed package: no repo, the stacks package sits beside orchestrator
        project = {"name": PROJECT_NAME, "runtime": {"name": "python"}}
    runtime = project["runtime"] if isinstance(project.get("runtime"), dict) else {"name": project["runtime"]}
    options = runtime.setdefault("options", {})
    # The repo's virtualenv when it has one, else the service's own (when it runs in one).
    candidates = [REPO_ROOT / options["virtualenv"]] if options.get("virtualenv") else []
    if sys.prefix != sys.base_prefix:
        candidates.append(Path(sys.prefix))
    virtualenv = next((path for path in candidates if path.is_dir()), None)
    if virtualenv is not None:
        options["virtualenv"] = os.path.relpath(virtualenv, directory)
    project["runtime"] = runtime
    project["main"] = os.path.relpath(STACKS_DIR, directory) + "/"
    return yaml.safe_dump(project, sort_keys=False)


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` only if it differs; readers (other processes) never see a partial file."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _create_private_file(path: Path, text: str) -> None:
    """Create `path` holding `text`, mode 0600 from its first byte; a file already there is kept.

    The content is written to a temp file opened with O_CREAT|O_EXCL and mode 0600, then linked
    to `path` (atomic, and refused if `path` exists): a process starting at the same time
    reads either no file or the whole passphrase, never an empty or world-readable one.
    """
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process created it first: keep theirs
    finally:
        temp.unlink(missing_ok=True)


@dataclass(frozen=True)
class PreviewStep:
    op: str
    urn: str
    type: str
    name: str
    diff: list[str]


@dataclass(frozen=True)
class RefreshedResource:
    """One resource as `pulumi refresh` found it: the result of its refresh step.

    `op` is `same`, `update` (the inputs read differ from those in the state: `diffs` names them,
    `expected` holds their values in the state, `actual` those read) or `delete` (it is gone).
    `outputs` are those read (empty when gone); an output-only change is a `same` with new outputs.
    """

    op: str
    urn: str
    type: str
    name: str
    diffs: list[str]
    expected: dict
    actual: dict
    outputs: dict


def _op_name(op) -> str:
    return str(op.value if hasattr(op, "value") else op)


class StackEngine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.project_dir = self._project_dir()
        self.env_vars = self._env_vars()
        self.command = self._pulumi_command()
        # Stacks that inspect() just found absent (a create checks first): the next up creates them
        # with one CLI call instead of create_or_select's failing select and then create.
        self._known_absent: OrderedDict[str, None] = OrderedDict()
        self._known_absent_lock = threading.Lock()

    def _project_dir(self) -> Path:
        path = self.settings.data_dir / PROJECT_DIR_NAME
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomically(path / "Pulumi.yaml", _project_file(path))
        # Earlier versions kept stack settings (with specs in plaintext) beside the repo's Pulumi.yaml.
        left = sorted(REPO_ROOT.glob("Pulumi.instance-*.yaml")) + sorted(REPO_ROOT.glob("Pulumi.snapshot-*.yaml"))
        if left:
            log.warning(
                "%d stack settings file(s) left by an earlier version in %s (e.g. %s) hold specs in plaintext: "
                "move them to %s (see README)", len(left), REPO_ROOT, left[0].name, path,
            )
        return path

    def _env_vars(self) -> dict[str, str]:
        env = {"PULUMI_BACKEND_URL": self.settings.pulumi_backend_url, "PULUMI_SKIP_UPDATE_CHECK": "true"}
        if self.settings.pulumi_backend_url.startswith("file://"):
            Path(self.settings.pulumi_backend_url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        if not os.environ.get("PULUMI_CONFIG_PASSPHRASE") and not os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
            # Stacks on a file backend encrypt secrets with a passphrase: keep
            # one generated passphrase in the data dir (see README).
            path = self.settings.data_dir / PASSPHRASE_FILE_NAME
            _create_private_file(path, secrets.token_urlsafe(32))
            env["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(path)
        return env

    def _pulumi_command(self) -> auto.PulumiCommand:
        root = str(self.settings.pulumi_command) if self.settings.pulumi_command else None
        try:
            return auto.PulumiCommand(root=root, skip_version_check=root is not None)
        except FileNotFoundError:
            raise SettingsError(
                "Pulumi CLI not found: install it (https://www.pulumi.com/docs/install/) "
                "or set ORCH_PULUMI_COMMAND to a directory holding bin/pulumi"
            ) from None
        except Exception as error:  # a broken CLI: say which one and why
            raise SettingsError(f"Pulumi CLI at {self.settings.pulumi_bin} does not work: {error}") from None

    def _options(self, work_dir: Path | None = None) -> auto.LocalWorkspaceOptions:
        return auto.LocalWorkspaceOptions(
            work_dir=str(work_dir or self.project_dir), env_vars=self.env_vars, pulumi_command=self.command
        )

    def _stack(self, stack_name: str, program) -> auto.Stack:
        with self._known_absent_lock:
            absent = stack_name in self._known_absent
            self._known_absent.pop(stack_name, None)
        if absent:
            try:
                with _cli_errors():
                    return auto.create_stack(stack_name, project_name=PROJECT_NAME, program=program, opts=self._options())
            except EngineError:
                pass  # created meanwhile, or busy: create_or_select below decides, with its retries
        return self._retrying(
            lambda: auto.create_or_select_stack(
                stack_name, project_name=PROJECT_NAME, program=program, opts=self._options()
            )
        )

    def _existing_stack(self, stack_name: str, program=lambda: None, work_dir: Path | None = None) -> auto.Stack:
        """Select a stack, never creating it (StackNotFound when absent)."""
        with _cli_errors():
            return auto.select_stack(
                stack_name, project_name=PROJECT_NAME, program=program, opts=self._options(work_dir)
            )

    def _retrying(self, action, on_output: LogFn | None = None):
        """Run an Automation API call, retrying ConcurrentUpdateError with backoff."""
        for attempt in range(CONCURRENT_UPDATE_RETRIES):
            try:
                with _cli_errors():
                    return action()
            except StackBusy:
                if attempt == CONCURRENT_UPDATE_RETRIES - 1:
                    raise
                delay = min(0.5 * 2**attempt, 8) + random.random() * 0.25
                if on_output is not None:
                    on_output(f"the stack is locked by another update; retrying in {delay:.1f} s")
                time.sleep(delay)

    @staticmethod
    def _config(kind: str, document: dict, **extra: object) -> dict[str, auto.ConfigValue]:
        # The document holds the bootstrap script and SSH keys: a secret, encrypted in the stack's settings.
        config = {
            "orch:kind": auto.ConfigValue(kind),
            "orch:document": auto.ConfigValue(json.dumps(document, sort_keys=True), secret=True),
        }
        for key, value in extra.items():
            if value is not None:
                text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                config[f"orch:{key}"] = auto.ConfigValue(text)
        return config

    @classmethod
    def instance_config(
        cls, instance: InstanceDoc, admin_public_key: str, base_image_id: str | None
    ) -> dict[str, auto.ConfigValue]:
        """The config an instance's stack carries (its document a secret): what `pulumi config` shows."""
        return cls._config(
            "instance", instance.to_dict(), admin_public_key=admin_public_key, base_image_id=base_image_id
        )

    def up_instance(
        self,
        stack_name: str,
        instance: InstanceDoc,
        *,
        admin_public_key: str,
        base_image_id: str | None,
        on_output: LogFn,
        refresh: bool = False,
        on_step: Callable[[str, str], None] | None = None,
    ) -> dict:
        """`refresh`: re-read every resource first (what changed in the cloud, e.g. an address after a start).
        `on_step(op, type)` is told each finished step (`create`, `update`, `same`, ...) of the update."""
        program = instance_program(instance, admin_public_key=admin_public_key, base_image_id=base_image_id)
        stack = self._stack(stack_name, program)
        config = self.instance_config(instance, admin_public_key, base_image_id)
        self._retrying(lambda: stack.set_all_config(config))

        def on_event(event: auto.events.EngineEvent) -> None:
            done = event.res_outputs_event
            if done is not None and on_step is not None:
                on_step(_op_name(done.metadata.op), done.metadata.type)

        result = self._retrying(
            lambda: stack.up(on_output=on_output, on_event=on_event, color="never", refresh=refresh), on_output
        )
        return {key: value.value for key, value in result.outputs.items()}

    def refresh_instance(self, stack_name: str, *, on_output: LogFn) -> list[RefreshedResource]:
        """`pulumi refresh` of an existing stack (StackNotFound when absent): the state takes what the
        cloud has now, and each cloud resource's refresh step is returned (providers and the stack's
        own resource never change on a refresh and are left out). The program does not run."""
        stack = self._existing_stack(stack_name)
        found: dict[str, RefreshedResource] = {}
        lock = threading.Lock()

        def on_event(event: auto.events.EngineEvent) -> None:
            done = event.res_outputs_event
            if done is None:
                return
            meta = done.metadata
            if meta.type == "pulumi:pulumi:Stack" or meta.type.startswith("pulumi:providers:"):
                return
            old_inputs = (meta.old.inputs if meta.old else None) or {}
            new_inputs = (meta.new.inputs if meta.new else None) or {}
            diffs = list(meta.diffs or [])
            resource = RefreshedResource(
                op=_op_name(meta.op),
                urn=meta.urn,
                type=meta.type,
                name=meta.urn.rsplit("::", 1)[-1],
                diffs=diffs,
                expected={key: old_inputs.get(key) for key in diffs},
                actual={key: new_inputs.get(key) for key in diffs},
                outputs=dict((meta.new.outputs if meta.new else None) or {}),
            )
            with lock:
                found[meta.urn] = resource

        self._retrying(lambda: stack.refresh(on_output=on_output, on_event=on_event, color="never"), on_output)
        return list(found.values())

    @contextmanager
    def _scratch_project(self, stack_name: str) -> Iterator[Path]:
        """A throwaway project directory holding a copy of the stack's settings (its config and encryption salt).

        One path per stack, so the CLI's record of each project directory's selected stack (under
        PULUMI_HOME) does not grow with every preview; callers run one preview of a stack at a time
        (the service holds the instance's lock).
        """
        directory = self.settings.data_dir / PREVIEW_DIR_NAME / stack_name
        shutil.rmtree(directory, ignore_errors=True)  # left by a process that died mid-preview
        directory.mkdir(mode=0o700, parents=True)
        try:
            (directory / "Pulumi.yaml").write_text(_project_file(directory), encoding="utf-8")
            settings_file = self.project_dir / f"Pulumi.{stack_name}.yaml"
            if settings_file.is_file():
                shutil.copyfile(settings_file, directory / settings_file.name)
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    @functools.cached_property
    def _export_command_start(self) -> str:
        # The same for every stack (every row of a list page shows the command): worked out once.
        return shlex.join(
            [f"PULUMI_BACKEND_URL={redact_url(self.settings.pulumi_backend_url)}", "pulumi", "-C", str(self.project_dir),
             "stack", "export", "--stack"]
        )

    def export_command(self, stack_name: str) -> str:
        """The shell command that shows the stack by hand, with the backend it is in."""
        return f"{self._export_command_start} {shlex.quote(stack_name)}"

    def preview_instance(
        self, stack_name: str, instance: InstanceDoc, *, admin_public_key: str, base_image_id: str | None
    ) -> tuple[dict[str, int], list[PreviewStep]]:
        """What `up_instance` would change, changing nothing: the stack must exist (StackNotFound otherwise)
        and the previewed config is set only in a scratch copy of its settings. A locked stack is
        StackBusy at once (no retries on the request path)."""
        with self._scratch_project(stack_name) as work_dir:
            return self._preview(
                lambda program: self._existing_stack(stack_name, program, work_dir),
                instance, admin_public_key=admin_public_key, base_image_id=base_image_id,
            )

    @contextmanager
    def _scratch_backend_project(self, stack_name: str) -> Iterator[tuple[Path, dict[str, str]]]:
        """A throwaway project directory with its own empty file backend (and the workspace env naming it).

        One path per stack name, as _scratch_project; the caller holds a lock per name.
        """
        directory = self.settings.data_dir / PREVIEW_DIR_NAME / NEW_STACK_PREVIEW_DIR_NAME / stack_name
        shutil.rmtree(directory, ignore_errors=True)  # left by a process that died mid-preview
        (directory / "backend").mkdir(mode=0o700, parents=True)
        try:
            (directory / "Pulumi.yaml").write_text(_project_file(directory), encoding="utf-8")
            yield directory, {**self.env_vars, "PULUMI_BACKEND_URL": f"file://{directory / 'backend'}"}
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def preview_new_instance(
        self, stack_name: str, instance: InstanceDoc, *, admin_public_key: str, base_image_id: str | None
    ) -> tuple[dict[str, int], list[PreviewStep]]:
        """What `up_instance` would create for a stack that does not exist yet.

        The stack is created in a scratch file backend, removed with its directory afterwards, so
        the service's backend never holds it; a new stack has no state, so the preview is the same.
        """
        with self._scratch_backend_project(stack_name) as (work_dir, env_vars):
            options = auto.LocalWorkspaceOptions(work_dir=str(work_dir), env_vars=env_vars, pulumi_command=self.command)

            def create(program) -> auto.Stack:
                with _cli_errors():
                    return auto.create_stack(stack_name, project_name=PROJECT_NAME, program=program, opts=options)

            return self._preview(create, instance, admin_public_key=admin_public_key, base_image_id=base_image_id)

    def _preview(
        self, open_stack: Callable[[object], auto.Stack], instance: InstanceDoc, *, admin_public_key: str,
        base_image_id: str | None,
    ) -> tuple[dict[str, int], list[PreviewStep]]:
        """Preview the instance's program and config on the stack open_stack(program) gives."""
        program = instance_program(instance, admin_public_key=admin_public_key, base_image_id=base_image_id)
        config = self.instance_config(instance, admin_public_key, base_image_id)
        steps: list[PreviewStep] = []
        lock = threading.Lock()

        def on_event(event: auto.events.EngineEvent) -> None:
            pre = event.resource_pre_event
            if pre is None or pre.metadata.type == "pulumi:pulumi:Stack":
                return
            meta = pre.metadata
            with lock:
                steps.append(
                    PreviewStep(
                        op=str(meta.op.value if hasattr(meta.op, "value") else meta.op),
                        urn=meta.urn,
                        type=meta.type,
                        name=meta.urn.rsplit("::", 1)[-1],
                        diff=list(meta.diffs or []),
                    )
                )

        stack = open_stack(program)
        with _cli_errors():
            stack.set_all_config(config)
            result = stack.preview(on_event=on_event, color="never")
        summary = {str(op.value if hasattr(op, "value") else op): count for op, count in result.change_summary.items()}
        return summary, steps

    def up_snapshot(self, stack_name: str, snapshot: SnapshotDoc, *, source: dict, on_output: LogFn) -> dict:
        program = snapshot_program(snapshot, source=source)
        stack = self._stack(stack_name, program)
        config = self._config("snapshot", snapshot.to_dict(), source=source)
        self._retrying(lambda: stack.set_all_config(config))
        result = self._retrying(lambda: stack.up(on_output=on_output, color="never"), on_output)
        return {key: value.value for key, value in result.outputs.items()}

    def destroy(self, stack_name: str, *, on_output: LogFn) -> None:
        """Destroy every resource of the stack and remove the stack; a missing stack is already gone."""
        try:
            stack = self._existing_stack(stack_name)
        except StackNotFound:
            return
        self._retrying(lambda: stack.destroy(on_output=on_output, color="never"), on_output)
        self._retrying(lambda: stack.workspace.remove_stack(stack_name))

    def cancel(self, stack_name: str) -> None:
        """Release a lock left by a worker that died mid-update (best effort: no lock is fine)."""
        try:
            stack = self._existing_stack(stack_name)
            with _cli_errors():
                stack.cancel()
        except EngineError:
            pass

    def inspect(self, stack_name: str) -> dict | None:
        """Resources (type, URN, id) and outputs from the stack's export; None when there is no such stack."""
        try:
            stack = self._existing_stack(stack_name)
            with _cli_errors():
                deployment = stack.export_stack().deployment or {}
        except StackNotFound:  # also when removed between the select and the export
            with self._known_absent_lock:
                self._known_absent[stack_name] = None
                while len(self._known_absent) > MAX_KNOWN_ABSENT:
                    self._known_absent.popitem(last=False)
            return None
        resources = []
        outputs: dict = {}
        for resource in deployment.get("resources") or []:
            if resource.get("type") == "pulumi:pulumi:Stack":
                outputs = resource.get("outputs") or {}
                continue
            resources.append(
                {
                    "urn": resource.get("urn"),
                    "type": resource.get("type"),
                    "name": (resource.get("urn") or "").rsplit("::", 1)[-1],
                    "id": resource.get("id"),
                }
            )
        return {"stack": stack_name, "resources": resources, "outputs": outputs}
