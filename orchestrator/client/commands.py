"""The client subcommands of `orch`: apply, diff, delete, get, describe, logs, stack, metrics, schema, validate."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.client import render, specfiles, ssh
from orchestrator.client.api import PREVIEW_TIMEOUT_S, ApiClient
from orchestrator.client.config import resolve
from orchestrator.client.errors import ClientError, ExitCode
from orchestrator.client.specfiles import ParsedDocument
from stacks.spec import json_schema

POLL_INTERVAL_S = 0.5
FINISHED = ("succeeded", "failed")
# Instance states from which no operation will move it on by itself.
SETTLED_INSTANCE = ("running", "failed", "deleted", "stopped", "drifted", "lost")
# Changed outside orch (a refresh found it): applying the unchanged spec reconciles it.
RECONCILABLE = ("drifted", "lost")
OUTPUT_FORMATS = ("table", "json", "yaml")
DURATION = re.compile(r"^(\d+)([smhd])$")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

EXIT_CODES_HELP = """\
exit codes:
  0  success (diff: no differences)
  1  an operation failed (diff: there are differences)
  2  invalid spec file or usage
  3  the service cannot be reached
  4  not authorized (401/403: missing, expired or wrong token)
  5  the API refused the request (another 4xx: not found, conflict, invalid)
  6  the service failed (5xx)

The service is --url, else ORCH_URL, else `url` in $XDG_CONFIG_HOME/orch/config.yaml
(~/.config/orch/config.yaml), else http://127.0.0.1:8000; the token likewise
(--token, ORCH_TOKEN, `token`)."""


def _out(text: str = "") -> None:
    print(text, flush=True)


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _handles_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A ClientError becomes its line(s) on stderr and its exit code; Ctrl-C leaves operations running."""

    @functools.wraps(command)
    def handler(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ClientError as error:
            for line in error.message.splitlines():
                _note(f"error: {line}")
            return error.exit_code
        except KeyboardInterrupt:
            _note("interrupted: operations already started go on on the server")
            return ExitCode.INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`orch get instances | head`): stop quietly, like other Unix tools,
            # and keep Python from failing again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return ExitCode.BROKEN_PIPE

    return handler


def _usage_error(message: str) -> ClientError:
    return ClientError(message, ExitCode.INVALID)


def _api(args: argparse.Namespace) -> ApiClient:
    return ApiClient(resolve(args.url, args.token), owner=args.owner)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _print_as(data: Any, output: str, table: Callable[[], str]) -> None:
    if output == "json":
        _out(render.as_json(data))
    elif output == "yaml":
        _out(render.as_yaml(data))
    else:
        _out(table())


def _validated(api: ApiClient, files: list[str]) -> list[ParsedDocument]:
    """Every document of the files, validated offline (a bad spec needs no server), then for the service's clouds."""
    documents = specfiles.load(files, sys.stdin)
    specfiles.validate(documents)
    return specfiles.validate(documents, enabled_clouds=api.get("/features")["clouds"])


def _document_body(item: ParsedDocument) -> dict:
    """The document as written, with `labels` explicit: labels removed from a file are removed from the instance."""
    return {**item.source.data, "labels": item.source.data.get("labels") or {}}


def _stored_view(instance: dict) -> dict:
    return {"labels": instance.get("labels") or {}, "spec": instance.get("spec") or {}}


def _wanted_view(item: ParsedDocument, stored: dict | None = None) -> dict:
    canonical = item.doc.to_dict()
    written = item.source.data.get("spec")
    spec_source = (stored.get("spec") or {}) if stored else {}
    # Without disk_gb, an instance from a snapshot gets the snapshot's size, which only the service knows.
    if (
        item.doc.spec.from_snapshot
        and isinstance(written, dict) and written.get("disk_gb") is None
        and spec_source.get("from_snapshot") == item.doc.spec.from_snapshot and spec_source.get("disk_gb")
    ):
        canonical["spec"]["disk_gb"] = spec_source["disk_gb"]
    return {"labels": canonical.get("labels") or {}, "spec": canonical["spec"]}


def _exists(resource: dict | None) -> bool:
    return resource is not None and resource.get("status") != "deleted"


# ---------------------------------------------------------------- following operations


class Operations:
    """Operations this command started or waits on, followed once each (with progress when `show`)."""

    def __init__(self, api: ApiClient, *, show: bool):
        self.api = api
        self.show = show
        self.started: list[tuple[str, str]] = []  # (ref, operation id) in the order they were started
        self.results: dict[str, dict] = {}  # operation id -> the finished operation

    def add(self, ref: str, operation_id: str) -> None:
        self.started.append((ref, operation_id))

    def finish(self, ref: str, operation_id: str) -> dict:
        """Poll the operation until it ends: steps and log lines as they come when showing progress."""
        if operation_id in self.results:
            return self.results[operation_id]
        offset, step_states, announced = 0, {}, False
        while True:
            op = self.api.get(f"/operations/{operation_id}", log_offset=offset)
            if self.show:
                if not announced:
                    _out(f"{ref}: {op['kind']} operation {operation_id}")
                    announced = True
                lines = [f"  | {line}" for entry in op.get("logs") or [] for line in entry.splitlines() or [""]]
                for line in _step_lines_with_logs(op.get("steps") or [], step_states, lines):
                    _out(line)
            offset += len(op.get("logs") or [])
            if op["status"] in FINISHED:
                break
            time.sleep(POLL_INTERVAL_S)
        if self.show:
            _out(f"{ref}: {op['kind']} {op['status']}" + (":" if op.get("error") else ""))
            for line in (op.get("error") or "").splitlines():
                _out(f"    {line}")
        self.results[operation_id] = op
        return op

    def finish_all(self) -> bool:
        """Follow every started operation to its end; True when all succeeded."""
        return all(self.finish(ref, op_id)["status"] == "succeeded" for ref, op_id in self.started)


def _step_lines_with_logs(steps: list[dict], shown: dict[int, str], log_lines: list[str]) -> list[str]:
    """What one poll adds, in the steps' sequence: each step's start, then its end, for steps not shown so far.

    `shown` (step index -> the status last printed) is updated. The poll's log lines go after the last
    step that started in it (they are that step's output), or before the ends when no step started.
    """
    events: list[tuple[bool, str]] = []  # (is a start, line), in sequence order
    for index, step in enumerate(steps):
        before, now = shown.get(index), step["status"]
        if before == now:
            continue
        if before is None and now != "skipped":
            events.append((True, f"  [{step['name']}] running"))
        if now != "running":
            events.append((False, f"  [{step['name']}] {now}"))
        shown[index] = now
    last_start = max((position + 1 for position, (start, _) in enumerate(events) if start), default=0)
    return [line for _, line in events[:last_start]] + log_lines + [line for _, line in events[last_start:]]


def _started(ref: str, verb: str, operation: dict) -> None:
    _out(f"{ref} {verb} (operation {operation['id']})")


def _unchanged(ref: str, stored: dict) -> None:
    """Unchanged is not healthy: a failed instance or snapshot says so, and how to start over."""
    if stored.get("status") == "failed":
        _out(f"{ref} unchanged (status failed: delete it and apply again to start over)")
    else:
        _out(f"{ref} unchanged")


# ---------------------------------------------------------------- apply


class Applier:
    def __init__(self, api: ApiClient, operations: Operations):
        self.api = api
        self.operations = operations

    def apply(self, item: ParsedDocument) -> None:
        if item.doc.kind == "Instance":
            self.apply_instance(item)
        else:
            self.apply_snapshot(item)

    def apply_instance(self, item: ParsedDocument) -> None:
        name = item.doc.name
        stored = self.api.get_optional(f"/instances/{name}")
        changes = not _exists(stored) or _stored_view(stored) != _wanted_view(item, stored)
        if changes and item.doc.spec.from_snapshot:
            self._wait_for_snapshot(item.ref, item.doc.spec.from_snapshot)
        if not _exists(stored):
            result = self.api.post("/instances", _document_body(item))
            _started(item.ref, "created", result["operation"])
        elif _stored_view(stored) == _wanted_view(item, stored) and stored.get("status") in RECONCILABLE:
            result = self.api.post(f"/instances/{name}/reconcile", None)
            _started(item.ref, f"{stored['status']}: reconciling to the spec", result["operation"])
        elif _stored_view(stored) == _wanted_view(item, stored):
            _unchanged(item.ref, stored)
            return
        else:
            result = self.api.patch(f"/instances/{name}", _document_body(item))
            if result["operation"] is None:  # the service's own comparison has the last word
                _unchanged(item.ref, result["instance"])
                return
            _started(item.ref, "configured", result["operation"])
        self.operations.add(item.ref, result["operation"]["id"])

    def apply_snapshot(self, item: ParsedDocument) -> None:
        snapshot = item.doc
        stored = self.api.get_optional(f"/snapshots/{snapshot.name}")
        if _exists(stored):
            if stored["instance"] != snapshot.instance:
                raise ClientError(
                    f"{item.ref} exists and was taken of instance {stored['instance']}, not {snapshot.instance}: "
                    "snapshots cannot change; delete it first",
                    ExitCode.REFUSED,
                )
            _unchanged(item.ref, stored)
            return
        self._wait_until_running(item.ref, snapshot.instance)
        result = self.api.post(f"/instances/{snapshot.instance}/snapshots", {"name": snapshot.name})
        _started(item.ref, "created", result["operation"])
        self.operations.add(item.ref, result["operation"]["id"])

    def _started_here(self, ref: str) -> str | None:
        """The last operation this apply started on `ref`."""
        ids = [op_id for started_ref, op_id in self.operations.started if started_ref == ref]
        return ids[-1] if ids else None

    def _wait_for(self, ref: str, waited_ref: str, operation_id: str) -> None:
        if not self.operations.show:
            _note(f"{ref}: waiting for {waited_ref} (operation {operation_id})")
        self.operations.finish(waited_ref, operation_id)

    def _wait_for_snapshot(self, ref: str, snapshot_name: str) -> None:
        """An instance made from a snapshot needs it available: wait while it is being taken."""
        snapshot_ref = f"snapshot/{snapshot_name}"
        pending = self._started_here(snapshot_ref)
        if pending is None:
            stored = self.api.get_optional(f"/snapshots/{snapshot_name}")
            pending = stored.get("operation_id") if stored and stored["status"] == "pending" else None
        if pending:
            self._wait_for(ref, snapshot_ref, pending)

    def _wait_until_running(self, ref: str, instance_name: str) -> None:
        """A snapshot needs a running instance: wait for the operation creating or changing it.

        That is the one this apply started (an update leaves the instance `running` until a worker takes
        it, and the snapshot must be of the updated disk), else whatever operation has it in motion.
        """
        instance_ref = f"instance/{instance_name}"
        instance = self.api.get(f"/instances/{instance_name}")
        pending = self._started_here(instance_ref)
        if pending is None and instance["status"] not in SETTLED_INSTANCE:
            pending = instance.get("operation_id")
        if pending:
            self._wait_for(ref, instance_ref, pending)
            instance = self.api.get(f"/instances/{instance_name}")
        if instance["status"] != "running":
            reason = f" ({' '.join(instance['status_reason'].split())})" if instance.get("status_reason") else ""
            raise ClientError(
                f"{ref} cannot be taken: instance/{instance_name} is {instance['status']}{reason}", ExitCode.FAILED
            )


def _followed(api, operations: "Operations", wait: bool) -> int:
    """With --wait: follow the started operations, then refresh ~/.orch/ssh_config; the exit code."""
    if not wait:
        return ExitCode.OK
    succeeded = operations.finish_all()
    _refresh_ssh_config(api)
    return ExitCode.OK if succeeded else ExitCode.FAILED


@_handles_errors
def apply_command(args: argparse.Namespace) -> int:
    with _api(args) as api:
        parsed = _validated(api, args.files)
        operations = Operations(api, show=args.wait)
        applier = Applier(api, operations)
        for item in parsed:
            applier.apply(item)
        return _followed(api, operations, args.wait)


# ---------------------------------------------------------------- diff


def _diff_instance(api: ApiClient, item: ParsedDocument) -> bool:
    stored = api.get_optional(f"/instances/{item.doc.name}")
    wanted = _wanted_view(item, stored)
    if not _exists(stored):
        _out(f"{item.ref} (new instance)")
        for line in render.document_diff(None, item.doc.to_dict(), "/dev/null", item.source.source):
            _out(line)
        return True
    if _stored_view(stored) == wanted:
        return False
    preview = api.post(f"/instances/{item.doc.name}/preview", _document_body(item), timeout=PREVIEW_TIMEOUT_S)
    _out(f"{item.ref} (changed: {render.changes_summary(preview.get('changes') or {})})")
    for line in render.preview_lines(preview):
        _out(line)
    for line in render.document_diff(_stored_view(stored), wanted, f"{item.ref} (stored)", item.source.source):
        _out(line)
    return True


def _diff_snapshot(api: ApiClient, item: ParsedDocument) -> bool:
    if _exists(api.get_optional(f"/snapshots/{item.doc.name}")):
        return False
    _out(f"{item.ref} (new snapshot of instance/{item.doc.instance})")
    for line in render.document_diff(None, item.doc.to_dict(), "/dev/null", item.source.source):
        _out(line)
    return True


@_handles_errors
def diff_command(args: argparse.Namespace) -> int:
    with _api(args) as api:
        changed = False
        for item in _validated(api, args.files):
            differs = _diff_instance(api, item) if item.doc.kind == "Instance" else _diff_snapshot(api, item)
            changed = changed or differs
    return ExitCode.FAILED if changed else ExitCode.OK


# ---------------------------------------------------------------- delete


def _targets_from_files(files: list[str]) -> list[tuple[str, str]]:
    """(kind, name) of every document, last first; deleting needs only a kind and a name, not a valid spec."""
    targets, problems = [], []
    for document in specfiles.load(files, sys.stdin):
        if document.kind is None:
            problems.append(document.problem("kind", "expected Instance or Snapshot"))
        elif document.name is None:
            problems.append(document.problem("name", "required"))
        else:
            targets.append((document.kind.lower(), document.name))
    if problems:
        raise specfiles.SpecFileError(problems)
    return targets[::-1]


class Deleter:
    def __init__(self, api: ApiClient, operations: Operations):
        self.api = api
        self.operations = operations
        self.missing: list[str] = []
        # snapshot name -> deletions started here of instances made from it (the service refuses until they end)
        self.based_on: dict[str, list[tuple[str, str]]] = {}

    def delete(self, kind: str, name: str) -> None:
        ref = f"{kind}/{name}"
        path = f"/instances/{name}" if kind == "instance" else f"/snapshots/{name}"
        stored = self.api.get_optional(path)
        if not _exists(stored):
            self.missing.append(ref)
            return
        if stored["status"] == "deleting":
            _out(f"{ref} already deleting (operation {stored['operation_id']})")
            self.operations.add(ref, stored["operation_id"])
            return
        if kind == "snapshot":
            self._wait_for_dependents(ref, name, stored)
        result = self.api.delete(path)
        _started(ref, "deleting", result["operation"])
        self.operations.add(ref, result["operation"]["id"])
        base = (stored.get("spec") or {}).get("from_snapshot") if kind == "instance" else None
        if base:
            self.based_on.setdefault(base, []).append((ref, result["operation"]["id"]))

    def _wait_for_dependents(self, ref: str, name: str, stored: dict) -> None:
        waits = list(self.based_on.get(name, []))
        if stored["status"] == "pending" and stored.get("operation_id"):  # still being taken
            waits.append((ref, stored["operation_id"]))
        for waited_ref, operation_id in waits:
            if not self.operations.show:
                _note(f"{ref}: waiting for {waited_ref} (operation {operation_id})")
            self.operations.finish(waited_ref, operation_id)


@_handles_errors
def delete_command(args: argparse.Namespace) -> int:
    if args.files and (args.kind or args.names):
        raise _usage_error("give either -f FILE or KIND NAME..., not both")
    if not args.files and not (args.kind and args.names):
        raise _usage_error("give -f FILE, or `instance NAME...` or `snapshot NAME...`")
    targets = _targets_from_files(args.files) if args.files else [(args.kind, name) for name in args.names]
    with _api(args) as api:
        operations = Operations(api, show=args.wait)
        deleter = Deleter(api, operations)
        for kind, name in targets:
            deleter.delete(kind, name)
        failed = False
        if args.wait:
            for ref, operation_id in operations.started:
                if operations.finish(ref, operation_id)["status"] == "succeeded":
                    _out(f"{ref} deleted")
                else:
                    failed = True
            _refresh_ssh_config(api)
    for ref in deleter.missing:
        _note(f"{'' if args.ignore_not_found else 'error: '}{ref} not found")
    if failed:
        return ExitCode.FAILED
    return ExitCode.REFUSED if deleter.missing and not args.ignore_not_found else ExitCode.OK


# ---------------------------------------------------------------- get, describe, logs, stack, metrics


@_handles_errors
def get_command(args: argparse.Namespace) -> int:
    instances = args.resource.startswith("instance")
    filters = {"--cloud": args.cloud, "--status": args.status, "-l": args.label}
    if not instances and any(filters.values()):
        raise _usage_error(f"{', '.join(k for k, v in filters.items() if v)} filter instances, not snapshots")
    if instances and args.instance:
        raise _usage_error("--instance filters snapshots")
    if args.name and (any(filters.values()) or args.instance or args.all):
        raise _usage_error("filters apply to listings, not to one NAME")
    if args.label and not re.fullmatch(r"[^=,]+=[^=,]*", args.label):
        raise _usage_error(f"-l {args.label}: expected key=value")
    collection = "/instances" if instances else "/snapshots"
    table = render.instances_table if instances else render.snapshots_table
    with _api(args) as api:
        if args.name:
            item = api.get(f"{collection}/{args.name}")
            _print_as(item, args.output, lambda: table([item], _now()))
            return ExitCode.OK
        # The API takes booleans as true/false; None leaves the filter out (deleted ones hidden).
        include_deleted = "true" if args.all else None
        if instances:
            items = api.get_all(
                collection, cloud=args.cloud, status=args.status, label=args.label, include_deleted=include_deleted
            )
            _refresh_ssh_config(api)
        else:
            items = api.get_all(collection, instance=args.instance, include_deleted=include_deleted)
    _print_as(items, args.output, lambda: table(items, _now()))
    return ExitCode.OK


@_handles_errors
def describe_command(args: argparse.Namespace) -> int:
    with _api(args) as api:
        instance = api.get(f"/instances/{args.name}")
        operation = (
            api.get_optional(f"/operations/{instance['operation_id']}") if instance.get("operation_id") else None
        )
        snapshots = api.get_all("/snapshots", instance=args.name)
    _out(render.describe_instance(instance, operation, snapshots, _now()))
    return ExitCode.OK


@_handles_errors
def logs_command(args: argparse.Namespace) -> int:
    with _api(args) as api:
        offset = 0
        while True:
            op = api.get(f"/operations/{args.operation_id}", log_offset=offset)
            for line in op.get("logs") or []:
                _out(line)
            offset += len(op.get("logs") or [])
            if not args.follow or op["status"] in FINISHED:
                break
            time.sleep(POLL_INTERVAL_S)
    if op["status"] == "failed":
        _note(f"operation {args.operation_id} failed: {op.get('error')}")
        if args.follow:
            return ExitCode.FAILED
    return ExitCode.OK


@_handles_errors
def stack_command(args: argparse.Namespace) -> int:
    with _api(args) as api:
        stack = api.get(f"/instances/{args.name}/stack")
    _print_as(stack, args.output, lambda: render.stack_text(stack))
    return ExitCode.OK


def parse_duration(text: str) -> dt.timedelta:
    """`30s`, `15m`, `2h`, `7d`."""
    match = DURATION.fullmatch(text)
    if match is None:
        raise _usage_error(f"--since {text}: expected a duration like 30s, 15m, 2h or 7d")
    return dt.timedelta(**{DURATION_UNITS[match.group(2)]: int(match.group(1))})


@_handles_errors
def metrics_command(args: argparse.Namespace) -> int:
    since = (_now() - parse_duration(args.since)).isoformat() if args.since else None
    with _api(args) as api:
        body = api.get(f"/instances/{args.name}/metrics", since=since, limit=args.limit)
    samples = body["samples"]
    _print_as(samples, args.output, lambda: render.metrics_table(samples))
    return ExitCode.OK


# ---------------------------------------------------------------- stop, start


def _instance_action(args: argparse.Namespace, verb: str, doing: str) -> int:
    """POST /instances/NAME/VERB for each name: an operation each, followed with --wait."""
    with _api(args) as api:
        operations = Operations(api, show=args.wait)
        for name in args.names:
            result = api.post(f"/instances/{name}/{verb}", None)
            _started(f"instance/{name}", doing, result["operation"])
            operations.add(f"instance/{name}", result["operation"]["id"])
        return _followed(api, operations, args.wait)


@_handles_errors
def stop_command(args: argparse.Namespace) -> int:
    return _instance_action(args, "stop", "stopping")


@_handles_errors
def start_command(args: argparse.Namespace) -> int:
    return _instance_action(args, "start", "starting")


@_handles_errors
def refresh_command(args: argparse.Namespace) -> int:
    code = _instance_action(args, "refresh", "refreshing")
    if args.wait:  # what the refresh found
        with _api(args) as api:
            for name in args.names:
                _out(render.drift_text(f"instance/{name}", api.get(f"/instances/{name}")))
    return code


@_handles_errors
def reconcile_command(args: argparse.Namespace) -> int:
    return _instance_action(args, "reconcile", "reconciling")


# ---------------------------------------------------------------- ssh, ssh-config


def _refresh_ssh_config(api: ApiClient) -> None:
    note = ssh.refresh_if_present(api)
    if note:
        _note(note)


@_handles_errors
def ssh_command(args: argparse.Namespace) -> int:
    with _api(args) as api:
        return ssh.ssh_command(args, api)


@_handles_errors
def ssh_config_command(args: argparse.Namespace) -> int:
    path = Path(args.output_path).expanduser() if args.output_path else ssh.default_config_path()
    with _api(args) as api:
        count = ssh.write_config(api, path, ssh.identity_path(args.identity))
    _out(f"wrote {count} host entr{'y' if count == 1 else 'ies'} to {path}")
    if not args.output_path:
        _note(f"use it with `Include {path}` at the top of ~/.ssh/config; then `ssh orch-NAME`")
    return ExitCode.OK


# ---------------------------------------------------------------- offline: schema, validate


@_handles_errors
def schema_command(args: argparse.Namespace) -> int:
    _out(render.as_json(json_schema()))
    return ExitCode.OK


@_handles_errors
def validate_command(args: argparse.Namespace) -> int:
    for item in specfiles.validate(specfiles.load(args.files, sys.stdin)):
        _out(f"{item.source.source}: {item.source.label()}: valid")
    return ExitCode.OK


# ---------------------------------------------------------------- the parser


def add_client_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the client subcommands; each handler(args) returns the exit code."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", help="the service's URL (else ORCH_URL, the config file, http://127.0.0.1:8000)")
    connection.add_argument("--token", help="a user token (else ORCH_TOKEN, the config file)")
    connection.add_argument(
        "--owner",
        metavar="USER",
        help="admins: act on USER's instances and snapshots (names are unique per owner; default: your own)",
    )
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "-o", "--output", choices=OUTPUT_FORMATS, default="table", help="output format (default: table)"
    )

    def files_argument(parser: argparse.ArgumentParser, *, required: bool, verb: str) -> None:
        parser.add_argument(
            "-f",
            "--filename",
            dest="files",
            action="append",
            required=required,
            default=[],
            metavar="FILE|DIR|-",
            help=f"a spec file to {verb}, a directory of them (*.yaml, *.yml, *.json, sorted) or - for stdin;"
            " repeatable",
        )

    def command(
        name: str, handler: Callable, help_text: str, description: str, parents: list
    ) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=EXIT_CODES_HELP,
            parents=parents,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(handler=handler)
        return parser

    apply = command(
        "apply",
        apply_command,
        "create or update instances and snapshots from spec files",
        "Create or update every document, in file order. Every document is validated before anything changes.\n"
        "An instance is created when it does not exist, updated when its document differs from the stored one,\n"
        "and left alone when it is unchanged. A snapshot is taken when it does not exist, once its instance\n"
        "is running; an instance from a snapshot is created once that snapshot is available.",
        [connection],
    )
    files_argument(apply, required=True, verb="apply")
    apply.add_argument("--wait", action="store_true", help="follow the operations to their end; exit 1 if one fails")

    diff = command(
        "diff",
        diff_command,
        "show what apply would change (a Pulumi preview; changes nothing)",
        "Show what `orch apply` would change: each changed instance's resources from a Pulumi preview\n"
        "(+ create, ~ update, +- replace, - delete) and the diff of its document; new instances and snapshots\n"
        "in full. Nothing changes on the server. Like `kubectl diff`: exit 0 with no differences, 1 with some.",
        [connection],
    )
    files_argument(diff, required=True, verb="compare")

    delete = command(
        "delete",
        delete_command,
        "delete instances and snapshots",
        "Delete what the spec files define (last document first, so instances made from a snapshot go before it),\n"
        "or the instances or snapshots named.",
        [connection],
    )
    files_argument(delete, required=False, verb="delete what it defines")
    delete.add_argument("kind", nargs="?", choices=("instance", "snapshot"), help="what to delete by name")
    delete.add_argument("names", nargs="*", metavar="NAME")
    delete.add_argument("--wait", action="store_true", help="follow the deletions to their end; exit 1 if one fails")
    delete.add_argument("--ignore-not-found", action="store_true", help="exit 0 when something named does not exist")

    get = command(
        "get",
        get_command,
        "list instances or snapshots, or show one",
        "A table of instances or snapshots (or one by NAME); -o json prints exactly the API's JSON:\n"
        "the item for one NAME, the list of items for a listing.",
        [connection, output],
    )
    get.add_argument("resource", choices=("instances", "instance", "snapshots", "snapshot"))
    get.add_argument("name", nargs="?", metavar="NAME")
    get.add_argument("--cloud", help="instances on this cloud")
    get.add_argument("--status", help="instances in this status")
    get.add_argument("-l", "--label", metavar="KEY=VALUE", help="instances with this label")
    get.add_argument("--instance", metavar="NAME", help="snapshots of this instance")
    get.add_argument("-A", "--all", action="store_true", help="also list deleted ones (hidden by default; kept as history)")

    describe = command(
        "describe",
        describe_command,
        "an instance in detail",
        "An instance's spec, outputs, health, last operation and snapshots.",
        [connection],
    )
    describe.add_argument("resource", choices=("instance",))
    describe.add_argument("name", metavar="NAME")

    logs = command(
        "logs",
        logs_command,
        "an operation's log (Pulumi and Ansible output)",
        "Print an operation's log lines; with --follow, until it ends (exit 1 if it failed).",
        [connection],
    )
    logs.add_argument("operation_id", metavar="OPERATION_ID")
    logs.add_argument("--follow", action="store_true", help="keep printing lines until the operation ends")

    stack = command(
        "stack",
        stack_command,
        "an instance's Pulumi stack: resources and outputs",
        "The resources (type, name, id) and outputs of the instance's stack.",
        [connection, output],
    )
    stack.add_argument("name", metavar="NAME")

    metrics = command(
        "metrics",
        metrics_command,
        "an instance's reported metrics",
        "The samples the instance's agent reported (CPU, load, memory, GPUs).",
        [connection, output],
    )
    metrics.add_argument("name", metavar="NAME")
    metrics.add_argument("--since", metavar="DURATION", help="only samples newer than this: 30s, 15m, 2h, 7d")
    metrics.add_argument("--limit", type=int, default=1000, help="at most this many samples, the newest (default 1000)")

    for verb, handler, description in (
        ("stop", stop_command, "Stop instances: the machine is powered off (it costs only its disk); the stack,\n"
         "the disk and the record stay. The public IP is given back. Same as `state: stopped` in the spec."),
        ("start", start_command, "Start stopped instances. The public IP may be a new one: the record, the list\n"
         "and `orch ssh` follow it. Same as `state: running` in the spec."),
        ("refresh", refresh_command, "Refresh instances (a `pulumi refresh`): look for what was changed or deleted\n"
         "outside orch. An instance changed is `drifted` (the differences are in `orch describe`), one whose\n"
         "machine is gone is `lost`; otherwise it stays as it was. With --wait, prints what was found."),
        ("reconcile", reconcile_command, "Put drifted or lost instances back to their spec (a `pulumi up`; a lost\n"
         "machine is created again and configured). `orch apply` of the unchanged spec does the same."),
    ):
        power = command(verb, handler, f"{verb} instances", description, [connection])
        power.add_argument("names", nargs="+", metavar="NAME")
        power.add_argument("--wait", action="store_true", help="follow the operations to their end; exit 1 if one fails")

    identity = argparse.ArgumentParser(add_help=False)
    identity.add_argument(
        "-i", "--identity", metavar="KEY", help=f"the private key file to log in with (else {ssh.IDENTITY_ENV})"
    )
    ssh_parser = command(
        "ssh",
        ssh_command,
        "log in to an instance (runs the system ssh)",
        "Run the system `ssh` with the instance's public IP and port, the user (--user, else the spec's first\n"
        "ssh user, else the image's), -i KEY when given, and a known_hosts file of its own under ~/.orch.\n"
        "Anything after `--` is the remote command: `orch ssh dev-1 -- nvidia-smi`.",
        [connection, identity],
    )
    ssh_parser.add_argument("name", metavar="NAME")
    ssh_parser.add_argument("--user", help="log in as this user")
    ssh_parser.set_defaults(remote_command=[])

    ssh_config = command(
        "ssh-config",
        ssh_config_command,
        "write an ssh_config file with a Host entry per running instance",
        "Write (atomically) an ssh_config file with `Host orch-NAME` (admins: `OWNER.NAME`) for every running\n"
        "instance with a public IP. Default ~/.orch/ssh_config: put `Include ~/.orch/ssh_config` at the top of\n"
        "~/.ssh/config. Once that file exists, `orch get instances`, `orch apply --wait` and `orch delete --wait`\n"
        "keep it current.",
        [connection, identity],
    )
    ssh_config.add_argument("--output", dest="output_path", metavar="PATH", help="the file to write")

    command(
        "schema",
        schema_command,
        "print the JSON Schema of spec documents",
        "The JSON Schema of Instance and Snapshot documents.",
        [],
    )

    validate = command(
        "validate",
        validate_command,
        "check spec files offline",
        "Check spec files without a server: every problem with its file, document, line and field.",
        [],
    )
    files_argument(validate, required=True, verb="check")
