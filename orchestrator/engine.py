"""The one engine path: the Pulumi Automation API with inline programs.

Each instance and each snapshot is its own stack in project `orch`. This module
builds the workspace options once (CLI, backend, secrets passphrase, project
dir) and maps Automation API errors to results the worker can act on.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pulumi import automation as auto

from orchestrator.settings import Settings, SettingsError
from stacks import instance_program, snapshot_program
from stacks.spec import InstanceDoc, SnapshotDoc

PROJECT_NAME = "orch"
REPO_ROOT = Path(__file__).resolve().parent.parent
CONCURRENT_UPDATE_RETRIES = 6

LogFn = Callable[[str], None]


class EngineError(Exception):
    """A stack operation failed; the message carries the tail of the CLI's stderr."""


def _stderr_tail(error: auto.errors.CommandError, lines: int = 15) -> str:
    # The SDK's message is the CLI's result: "\n code: N\n stdout: ...\n stderr: ...".
    message = str(error)
    _, marker, stderr = message.partition("\n stderr: ")
    kept = [line for line in (stderr if marker else message).strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


@dataclass(frozen=True)
class PreviewStep:
    op: str
    urn: str
    type: str
    name: str
    diff: list[str]


class StackEngine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.project_dir = self._project_dir()
        self.env_vars = self._env_vars()
        self.command = self._pulumi_command()

    def _project_dir(self) -> Path:
        configured = os.environ.get("ORCH_PULUMI_PROJECT_DIR")
        if configured:
            path = Path(configured).resolve()
        elif (REPO_ROOT / "Pulumi.yaml").is_file():
            # A checkout: stack config lands beside the repo's Pulumi.yaml, so
            # `pulumi up --stack X` from the repo root runs the same stack.
            return REPO_ROOT
        else:
            path = self.settings.data_dir / "project"
        path.mkdir(parents=True, exist_ok=True)
        if not (path / "Pulumi.yaml").exists():
            source = REPO_ROOT / "Pulumi.yaml"
            text = source.read_text() if source.is_file() else f"name: {PROJECT_NAME}\nruntime: python\n"
            (path / "Pulumi.yaml").write_text(text)
        return path

    def _env_vars(self) -> dict[str, str]:
        env = {"PULUMI_BACKEND_URL": self.settings.pulumi_backend_url, "PULUMI_SKIP_UPDATE_CHECK": "true"}
        if self.settings.pulumi_backend_url.startswith("file://"):
            Path(self.settings.pulumi_backend_url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        if not os.environ.get("PULUMI_CONFIG_PASSPHRASE") and not os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
            # Stacks on a file backend encrypt secrets with a passphrase: keep
            # one generated passphrase in the data dir (see README).
            path = self.settings.data_dir / "pulumi-passphrase"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(secrets.token_urlsafe(32))
                path.chmod(0o600)
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

    def _options(self) -> auto.LocalWorkspaceOptions:
        return auto.LocalWorkspaceOptions(
            work_dir=str(self.project_dir), env_vars=self.env_vars, pulumi_command=self.command
        )

    def _stack(self, stack_name: str, program) -> auto.Stack:
        return self._retrying(
            lambda: auto.create_or_select_stack(
                stack_name, project_name=PROJECT_NAME, program=program, opts=self._options()
            )
        )

    def _existing_stack(self, stack_name: str) -> auto.Stack:
        """Select a stack without running a program (raises StackNotFoundError when absent)."""
        return auto.select_stack(stack_name, project_name=PROJECT_NAME, program=lambda: None, opts=self._options())

    def _retrying(self, action, on_output: LogFn | None = None):
        """Run an Automation API call, retrying ConcurrentUpdateError with backoff."""
        for attempt in range(CONCURRENT_UPDATE_RETRIES):
            try:
                return action()
            except auto.errors.ConcurrentUpdateError as error:
                if attempt == CONCURRENT_UPDATE_RETRIES - 1:
                    raise EngineError(f"stack is locked by another update: {_stderr_tail(error, 3)}") from None
                delay = min(0.5 * 2**attempt, 8) + random.random() * 0.25
                if on_output is not None:
                    on_output(f"the stack is locked by another update; retrying in {delay:.1f} s")
                time.sleep(delay)
            except auto.errors.CommandError as error:
                raise EngineError(_stderr_tail(error)) from None

    @staticmethod
    def _config(kind: str, document: dict, **extra: object) -> dict[str, auto.ConfigValue]:
        config = {
            "orch:kind": auto.ConfigValue(kind),
            "orch:document": auto.ConfigValue(json.dumps(document, sort_keys=True)),
        }
        for key, value in extra.items():
            if value is not None:
                text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                config[f"orch:{key}"] = auto.ConfigValue(text)
        return config

    def _instance_stack(
        self, stack_name: str, instance: InstanceDoc, admin_public_key: str, base_image_id: str | None
    ) -> auto.Stack:
        program = instance_program(instance, admin_public_key=admin_public_key, base_image_id=base_image_id)
        stack = self._stack(stack_name, program)
        config = self._config(
            "instance", instance.to_dict(), admin_public_key=admin_public_key, base_image_id=base_image_id
        )
        self._retrying(lambda: stack.set_all_config(config))
        return stack

    def up_instance(
        self,
        stack_name: str,
        instance: InstanceDoc,
        *,
        admin_public_key: str,
        base_image_id: str | None,
        on_output: LogFn,
    ) -> dict:
        stack = self._instance_stack(stack_name, instance, admin_public_key, base_image_id)
        result = self._retrying(lambda: stack.up(on_output=on_output, color="never"), on_output)
        return {key: value.value for key, value in result.outputs.items()}

    def preview_instance(
        self, stack_name: str, instance: InstanceDoc, *, admin_public_key: str, base_image_id: str | None
    ) -> tuple[dict[str, int], list[PreviewStep]]:
        stack = self._instance_stack(stack_name, instance, admin_public_key, base_image_id)
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

        result = self._retrying(lambda: stack.preview(on_event=on_event, color="never"))
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
        except auto.errors.StackNotFoundError:
            return
        except auto.errors.CommandError as error:
            raise EngineError(_stderr_tail(error)) from None
        self._retrying(lambda: stack.destroy(on_output=on_output, color="never"), on_output)
        self._retrying(lambda: stack.workspace.remove_stack(stack_name))

    def cancel(self, stack_name: str) -> None:
        """Release a lock left by a worker that died mid-update (best effort: no lock is fine)."""
        try:
            stack = self._existing_stack(stack_name)
            stack.cancel()
        except auto.errors.CommandError:
            pass

    def inspect(self, stack_name: str) -> dict | None:
        """Resources (type, URN, id) and outputs from the stack's export; None when there is no such stack."""
        try:
            stack = self._existing_stack(stack_name)
            deployment = stack.export_stack().deployment or {}
        except auto.errors.StackNotFoundError:
            return None
        except auto.errors.CommandError as error:
            raise EngineError(_stderr_tail(error)) from None
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
