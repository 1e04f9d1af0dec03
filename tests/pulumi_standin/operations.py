"""`up`, `preview`, `destroy` and `refresh`: their flags, the stack lock, the display and history.

Behaviour and messages as the CLI's pkg/cmd/pulumi/operations and pkg/backend/display:
`--color` is validated, `--expect-no-changes` fails with exit code 7 when there are changes,
`preview --json` prints the preview digest and `up --json` the engine events, the human output
ends with the "Resources:" summary (and "Duration:" outside a preview).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import properties
from .backend import BackendError, FileBackend
from .display import go_duration
from .engine import OP_DONE, OP_PREFIX, STEP_OPS, Deployment, OperationSettings, StepFailed, dependencies_of
from .events import EventLog

if TYPE_CHECKING:
    from .project import Project, StackConfig

# Exit codes of the CLI (pkg/cmd/pulumi/cmd/exit_codes.go).
EXIT_CODE_ERROR = 1
EXIT_NO_CHANGES = 7
COLOR_OPTIONS = ("auto", "always", "never", "raw")
# Without --parallel the CLI runs 4 operations per CPU at once (or PULUMI_PARALLEL).
DEFAULT_PARALLEL_PER_CPU = 4
# The ops HasChanges does not count (pkg/engine/update.go).
NON_CHANGES = {"same", "read", "refresh"}
TITLES = {"update": "Updating", "destroy": "Destroying", "refresh": "Refreshing"}


class OperationError(BackendError):
    """A flag or state that stops the operation before it starts (printed as `error: ...`)."""


@dataclass
class OperationRequest:
    """What the command line asks of one operation."""

    kind: str  # update, destroy or refresh
    preview: bool
    flags: dict[str, list[str]]
    project: Project
    stack: str
    backend: FileBackend
    config: StackConfig
    cli_version: str
    client_address: str | None

    def flag(self, name: str) -> str | None:
        values = self.flags.get(name)
        return values[-1] if values else None

    def switch(self, name: str) -> bool:
        return self.flag(name) not in (None, "false")

    def values(self, name: str) -> list[str]:
        return list(self.flags.get(name) or [])


def default_parallel() -> int:
    configured = os.environ.get("PULUMI_PARALLEL")
    if configured and configured.isdigit() and int(configured) > 0:
        return int(configured)
    return (os.cpu_count() or 1) * DEFAULT_PARALLEL_PER_CPU


def validate_flags(flags: dict[str, list[str]], kind: str) -> None:
    """Checks the values the CLI checks before doing anything, with its messages."""
    color = (flags.get("--color") or ["auto"])[-1]
    if color not in COLOR_OPTIONS:
        raise OperationError(
            f"unsupported color option: '{color}'.  Supported values are: {', '.join(COLOR_OPTIONS)}"
        )
    for parallel in flags.get("--parallel") or []:
        try:
            int(parallel)
        except ValueError:
            raise OperationError(
                f'invalid argument "{parallel}" for "-p, --parallel" flag: strconv.ParseInt: parsing '
                f'"{parallel}": invalid syntax'
            ) from None
    if kind == "destroy" and flags.get("--target") and flags.get("--exclude-protected"):
        raise OperationError("you cannot specify --target and --exclude-protected")


def protected_closure(resources: list[dict]) -> set[str]:
    """URNs `destroy --exclude-protected` keeps: protected resources and everything they depend on."""
    by_urn = {resource["urn"]: resource for resource in resources}
    kept: set[str] = set()
    pending = [resource["urn"] for resource in resources if resource.get("protect")]
    while pending:
        urn = pending.pop()
        if urn in kept or urn not in by_urn:
            continue
        kept.add(urn)
        pending.extend(dependencies_of(by_urn[urn]))
    return kept


def run(request: OperationRequest) -> int:
    """Runs the operation; returns the exit code. The caller has validated the flags (validate_flags)."""
    json_display = request.switch("--json")
    stdout = sys.stdout
    excluded: set[str] = set()
    if request.kind == "destroy" and request.switch("--exclude-protected"):
        resources = request.backend.read_checkpoint(request.stack).get("resources") or []
        excluded = protected_closure(resources)
        if excluded and len(excluded) == len(resources):
            if not json_display:
                print(
                    "There were no unprotected resources to destroy. There are still "
                    f"{len(excluded)} protected resources associated with this stack."
                )
            return 0
    # preview --json prints one digest at the end; the other operations stream their events.
    stream_events = json_display and not request.preview
    event_log = EventLog(request.flag("--event-log"), echo=stdout if stream_events else None)
    parallel = request.flag("--parallel")
    settings = OperationSettings(
        project=request.project,
        stack=request.stack,
        backend=request.backend,
        config=request.config,
        cli_version=request.cli_version,
        event_log=event_log,
        exec_kind=request.flag("--exec-kind") or "cli",
        message=request.flag("--message") or "",
        client_address=request.client_address,
        parallel=int(parallel) if parallel else default_parallel(),
        show_progress=not json_display,
        targets=request.values("--target"),
        target_dependents=request.switch("--target-dependents"),
        replaces=request.values("--replace"),
        excluded=excluded,
        refresh=request.switch("--refresh"),
        diff=request.switch("--diff"),
    )
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(event_log.close)
        if not request.preview:
            # As the file backend: an update, destroy or refresh holds the stack's lock; a preview does not.
            lock = request.backend.lock(request.stack)
            cleanup.callback(lock.unlink, missing_ok=True)
        return _run_locked(request, settings, excluded)


def _run_locked(request: OperationRequest, settings: OperationSettings, excluded: set[str]) -> int:
    kind, preview = request.kind, request.preview
    json_display = not settings.show_progress
    title = f"Previewing {kind}" if preview else TITLES[kind]
    if not json_display:
        print(f"{title} ({settings.stack}):\n", flush=True)
    prelude_config = {
        key: "[secret]" if entry.secret else entry.text() for key, entry in settings.config.values.items()
    }
    settings.event_log.emit(preludeEvent={"config": prelude_config})
    started = time.time()
    deployment = Deployment(settings, preview)
    run_step = {"update": deployment.run_update, "destroy": deployment.run_destroy, "refresh": deployment.run_refresh}
    with contextlib.suppress(StepFailed):  # recorded on the deployment; the summary and history report it
        run_step[kind]()
    failed = deployment.failure is not None or deployment.program_error is not None
    ended = time.time()
    changes = dict(deployment.changes)
    settings.event_log.emit(
        summaryEvent={
            "maybeCorrupt": False,
            "durationSeconds": math.ceil(ended - started),
            "resourceChanges": changes,
            "PolicyPacks": {},
            "isPreview": preview,
            "result": "failed" if failed else "succeeded",
        }
    )
    if json_display and preview:
        print(json.dumps(_preview_digest(deployment, prelude_config, changes, ended - started), indent=4))
    elif not json_display:
        print(_human_summary(deployment, request, failed, ended - started), end="", flush=True)
    if not preview:
        _record_history(deployment, kind, failed, started, ended)
    if failed:
        if not json_display:
            reason = str(deployment.failure) if deployment.failure else deployment.program_error
            verb = "preview" if preview else kind
            print(f"error: {verb} failed\n    error: {reason}", file=sys.stderr)
        return EXIT_CODE_ERROR
    if request.switch("--expect-no-changes") and any(count for op, count in changes.items() if op not in NON_CHANGES):
        operation = "preview" if preview else kind
        print(f"error: no changes were expected for {operation} but changes were proposed", file=sys.stderr)
        return EXIT_NO_CHANGES
    if kind == "destroy" and not preview and not json_display:
        if excluded:
            print(
                "All unprotected resources were destroyed. There are still "
                f"{len(excluded)} protected resources associated with this stack."
            )
        elif not settings.targets:
            print(
                "The resources in the stack have been deleted, but the history and configuration associated "
                "with the stack are still maintained. \nIf you want to remove the stack completely, run "
                f"`pulumi stack rm {settings.stack}`."
            )
    return 0


def _diagnostics_section(deployment: Deployment) -> list[str]:
    """The display's "Diagnostics:" section: messages grouped by resource, the stack's for the rest."""
    grouped: dict[str, list[dict]] = {}
    for diagnostic in deployment.diagnostics:
        urn = diagnostic["urn"] or deployment.root_urn or ""
        grouped.setdefault(urn, []).append(diagnostic)
    if not grouped:
        return []
    lines = ["Diagnostics:"]
    for urn, diagnostics in grouped.items():
        parts = urn.split("::")
        heading = f"{parts[2].rsplit('$', 1)[-1]} ({parts[3]})" if len(parts) >= 4 else "pulumi:pulumi:Stack"
        lines.append(f"  {heading}:")
        for diagnostic in diagnostics:
            message_lines = diagnostic["message"].rstrip("\n").split("\n")
            lines.append(f"    {diagnostic['severity']}: {message_lines[0]}")
            lines += [f"    {line}" for line in message_lines[1:]]
        lines.append("")
    return lines


def _human_summary(deployment: Deployment, request: OperationRequest, failed: bool, seconds: float) -> str:
    preview = deployment.preview
    lines = [""]
    lines += _diagnostics_section(deployment)
    root = next((res for res in deployment.current_resources() if res["type"] == "pulumi:pulumi:Stack"), None)
    if request.kind == "update" and root and root.get("outputs") and not request.switch("--suppress-outputs"):
        shown = properties.plain(root["outputs"]) if request.switch("--show-secrets") else properties.masked(root["outputs"])
        lines.append("Outputs:")
        lines += [f"    {key}: {json.dumps(value)}" for key, value in shown.items()]
        lines.append("")
    # The summary as the CLI's renderSummaryEvent prints it.
    lines.append("Resources:")
    changes = deployment.changes
    kinds = 0
    total = 0
    for op in STEP_OPS:
        if op in NON_CHANGES or not changes[op]:
            continue
        kinds += 1
        total += changes[op]
        label = f"to {op}" if preview else OP_DONE[op]
        lines.append(f"    {OP_PREFIX[op]}{changes[op]} {label}")
    pieces = []
    if kinds >= 2:
        pieces.append(f"{total} change{'s' if total != 1 else ''}")
    if changes["same"]:
        pieces.append(f"{changes['same']} unchanged")
    if pieces:
        lines.append("    " + ". ".join(pieces))
    errored = 1 if deployment.failure is not None else 0
    if errored:
        lines.append(f"    {errored} errored")
    if not preview:
        lines.append("")
        lines.append(f"Duration: {go_duration(math.ceil(seconds))}")
    lines.append("")
    return "\n".join(lines) + "\n"


def _state_v3(state: dict | None) -> dict | None:
    """A step's state as the digest's apitype.ResourceV3 (secrets already shown as [secret])."""
    if state is None:
        return None
    shown = {"urn": state["urn"], "custom": state["custom"], "type": state["type"]}
    if state.get("id"):
        shown["id"] = state["id"]
    for key in ("inputs", "outputs"):
        if state.get(key):
            shown[key] = state[key]
    for key in ("parent", "protect", "provider"):
        if state.get(key):
            shown[key] = state[key]
    return shown


def _preview_digest(deployment: Deployment, config: dict, changes: dict, seconds: float) -> dict:
    """`preview --json`: the CLI's display.PreviewDigest (fields left out when empty, as its omitempty)."""
    steps = []
    for metadata in deployment.step_events:
        if metadata["op"] in ("same", "read") and metadata["type"] != "pulumi:pulumi:Stack":
            continue
        step = {"op": metadata["op"], "urn": metadata["urn"]}
        if metadata.get("provider"):
            step["provider"] = metadata["provider"]
        for key, state in (("oldState", metadata["old"]), ("newState", metadata["new"])):
            if state is not None:
                step[key] = _state_v3(state)
        if metadata["diffs"]:
            step["diffReasons"] = metadata["diffs"]
        step["detailedDiff"] = (
            {key: {"kind": diff["diffKind"], "inputDiff": diff["inputDiff"]} for key, diff in metadata["detailedDiff"].items()}
            if metadata["detailedDiff"]
            else None
        )
        steps.append(step)
    digest: dict = {}
    if config:
        digest["config"] = config
    if steps:
        digest["steps"] = steps
    diagnostics = [
        {**({"urn": item["urn"]} if item["urn"] else {}), "message": f"{item['severity']}: {item['message']}\n", "severity": item["severity"]}
        for item in deployment.diagnostics
    ]
    if diagnostics:
        digest["diagnostics"] = diagnostics
    nanoseconds = int(seconds * 1e9)
    if nanoseconds:
        digest["duration"] = nanoseconds
    if changes:
        digest["changeSummary"] = changes
    return digest


def _record_history(deployment: Deployment, kind: str, failed: bool, started: float, ended: float) -> None:
    settings = deployment.settings
    backend = settings.backend
    checkpoint = backend.write_checkpoint(settings.stack, deployment.deployment())
    update_info = {
        "kind": kind,
        "startTime": int(started),
        "message": settings.message,
        "environment": {"exec.kind": settings.exec_kind},
        "config": {key: settings.config.stored(key) for key in settings.config.values},
        "result": "failed" if failed else "succeeded",
        "endTime": int(ended),
        "resourceChanges": dict(deployment.changes),
        "version": len(backend.history(settings.stack)) + 1,
    }
    backend.add_history(settings.stack, update_info, checkpoint)
