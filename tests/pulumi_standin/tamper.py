"""Change or delete a resource behind a stack's back, as someone in the cloud's console would.

    python -m tests.pulumi_standin tamper --stack STACK --resource NAME [--type TOKEN]
        (--set KEY=VALUE ... | --delete | --stop) [--backend-url file://DIR]

The resource is found in the stack's state (PULUMI_BACKEND_URL, or --backend-url), by its name (the
URN's last part; --type picks one when several share it) or its whole URN. The change is made in the
simulated cloud only (resource_types.py, PULUMI_HOME/standin-cloud): the state keeps what it had,
so the next `pulumi refresh` reports exactly this change (`update` with the property in `diffs`, or
`delete`), and an update that writes the resource forgets it.

--set KEY=VALUE  the property (its name in the state, e.g. instanceType) reads as VALUE (JSON, else a string)
--delete         the resource is gone (terminated in the console)
--stop           the machine is powered off (an instance's or container's id), as a console stop or a
                 spot preemption: a refresh reads it stopped
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import resource_types
from .backend import BackendError, FileBackend


class TamperError(Exception):
    pass


def find_resource(backend_url: str, stack: str, resource: str, type_token: str | None) -> dict:
    """The state of one resource of `stack` (any project in the backend) by URN or name (and type)."""
    root = FileBackend(backend_url, "").bookkeeping / "stacks"
    paths = sorted(root.glob(f"*/{stack}.json"))
    if not paths:
        raise TamperError(f"no stack named {stack!r} in {backend_url}")
    state = FileBackend(backend_url, paths[0].parent.name).read_checkpoint(stack)
    matches = [
        entry
        for entry in state.get("resources") or []
        if (entry["urn"] == resource or entry["urn"].rsplit("::", 1)[-1] == resource)
        and (type_token is None or entry["type"] == type_token)
        and entry.get("custom")
        and not entry["type"].startswith("pulumi:providers:")
    ]
    if not matches:
        raise TamperError(f"stack {stack!r} has no cloud resource {resource!r}" + (f" of type {type_token}" if type_token else ""))
    if len(matches) > 1:
        types = ", ".join(entry["type"] for entry in matches)
        raise TamperError(f"{len(matches)} resources named {resource!r} ({types}): pick one with --type")
    return matches[0]


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pulumi_standin tamper", description=__doc__.split("\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--resource", required=True, help="the resource's name or URN")
    parser.add_argument("--type", dest="type_token", help="its type token, when several resources share the name")
    parser.add_argument("--backend-url", default=os.environ.get("PULUMI_BACKEND_URL"))
    change = parser.add_mutually_exclusive_group(required=True)
    change.add_argument("--set", action="append", metavar="KEY=VALUE", dest="assignments")
    change.add_argument("--delete", action="store_true")
    change.add_argument("--stop", action="store_true")
    args = parser.parse_args(argv)
    if not args.backend_url:
        parser.error("no backend: set PULUMI_BACKEND_URL or pass --backend-url")
    try:
        entry = find_resource(args.backend_url, args.stack, args.resource, args.type_token)
        if args.stop:
            resource_types.power_state(entry["id"], "stopped")
        elif args.delete:
            resource_types.tamper(entry["urn"], delete=True)
        else:
            values = {}
            for assignment in args.assignments:
                key, sep, text = assignment.partition("=")
                if not sep or not key:
                    raise TamperError(f"--set {assignment!r}: expected KEY=VALUE")
                values[key] = _value(text)
            resource_types.tamper(entry["urn"], set_values=values)
    except (TamperError, BackendError) as error:
        print(f"tamper: {error}", file=sys.stderr)
        return 2
    print(f"tampered with {entry['urn']}")
    return 0
