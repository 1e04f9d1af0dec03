"""`orch ssh` and `orch ssh-config`: log in to an instance, and an Include-able ssh_config of them all.

Names, users and addresses come from the API; they are data, so they reach `ssh` as argv items and
the config file only after a check that they cannot carry a directive (no spaces, no newlines).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import tempfile
from pathlib import Path

from orchestrator.client.api import ApiClient
from orchestrator.client.errors import ClientError, ExitCode

# One token of ssh_config: what names and users may be (the API allows less still).
SAFE_TOKEN = re.compile(r"[A-Za-z0-9._-]+")
SSH_PORT = 22
IDENTITY_ENV = "ORCH_SSH_IDENTITY"
SSH_CONFIG_HEADER = (
    "# Written by `orch ssh-config` (and refreshed by `orch get instances`, `orch apply --wait`,\n"
    "# `orch delete --wait`); changes here are lost. Use it with `Include ~/.orch/ssh_config`\n"
    "# at the top of ~/.ssh/config.\n"
)


def orch_home() -> Path:
    return Path.home() / ".orch"


def default_config_path() -> Path:
    return orch_home() / "ssh_config"


class UnsafeValue(ClientError):
    def __init__(self, what: str, value: object):
        super().__init__(
            f"refusing {what} {value!r}: it could inject ssh options (expected letters, digits, '.', '_', '-')",
            ExitCode.REFUSED,
        )


def _token(what: str, value: object) -> str:
    if not isinstance(value, str) or not SAFE_TOKEN.fullmatch(value) or value.startswith("-"):
        raise UnsafeValue(what, value)
    return value


def _address(value: object) -> str:
    try:
        return str(ipaddress.ip_address(value))  # type: ignore[arg-type]
    except ValueError:
        raise UnsafeValue("public IP", value) from None


def identity_path(given: str | None) -> str | None:
    path = given or os.environ.get(IDENTITY_ENV) or None
    if path is not None and any(char in path for char in '"\n\r\0'):
        raise UnsafeValue("identity file", path)
    return path


def _default_user(instance: dict) -> str | None:
    users = (instance.get("spec") or {}).get("ssh_users") or []
    if users:
        return users[0].get("name")
    return (instance.get("outputs") or {}).get("ssh_user")


def _port(instance: dict) -> int:
    port = (instance.get("outputs") or {}).get("ssh_port") or SSH_PORT
    try:
        return int(port)
    except (TypeError, ValueError):
        raise UnsafeValue("ssh port", port) from None


def known_hosts_path(instance: dict) -> Path:
    """One known_hosts file per incarnation: a cloud reuses IPs, a re-created name gets a new host key."""
    created = re.sub(r"\D", "", instance.get("created_at") or "")[:14]
    owner = _token("owner", instance["owner"])
    name = _token("instance name", instance["name"])
    return orch_home() / "known_hosts" / f"{owner}.{name}{'.' + created if created else ''}"


def split_remote_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`orch ssh ... -- COMMAND...`: what follows `--` is the remote command, never options of orch."""
    if argv[:1] != ["ssh"] or "--" not in argv:
        return argv, None
    split = argv.index("--")
    return argv[:split], argv[split + 1 :]


def ssh_argv(instance: dict, *, user: str | None, identity: str | None, command: list[str]) -> list[str]:
    name = _token("instance name", instance["name"])
    if instance.get("status") != "running" or not instance.get("public_ip"):
        raise ClientError(
            f"instance/{name} has no address to log in to (status {instance.get('status')})", ExitCode.REFUSED
        )
    address = _address(instance["public_ip"])
    login = user or _default_user(instance)
    if not login:
        raise ClientError(f"instance/{name} has no ssh user: give --user", ExitCode.INVALID)
    argv = ["ssh"]
    if identity:
        argv += ["-i", identity]
    argv += [
        "-p", str(_port(instance)),
        "-l", _token("user", login),
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={known_hosts_path(instance)}",
        "--", address, *command,
    ]  # fmt: skip
    return argv


def ssh_command(args: argparse.Namespace, api: ApiClient) -> int:
    instance = api.get(f"/instances/{args.name}")
    argv = ssh_argv(instance, user=args.user, identity=identity_path(args.identity), command=args.remote_command)
    known_hosts_path(instance).parent.mkdir(parents=True, exist_ok=True)
    api.close()
    os.execvp(argv[0], argv)  # replaces this process: ssh owns the terminal from here
    return ExitCode.OK  # not reached


def config_text(instances: list[dict], *, qualified: bool, identity: str | None) -> str:
    """`Host` entries for running instances with a public IP; `qualified` (admins): `<owner>.<name>`."""
    blocks = [SSH_CONFIG_HEADER]
    for instance in sorted(instances, key=lambda item: (item["owner"], item["name"])):
        if instance.get("status") != "running" or not instance.get("public_ip"):
            continue
        name = _token("instance name", instance["name"])
        owner = _token("owner", instance["owner"])
        user = _default_user(instance)
        lines = [
            f"Host {owner + '.' + name if qualified else 'orch-' + name}",
            f"  HostName {_address(instance['public_ip'])}",
            f"  Port {_port(instance)}",
        ]
        if user:
            lines.append(f"  User {_token('user', user)}")
        if identity:
            lines.append(f'  IdentityFile "{identity}"')
        lines += [
            "  StrictHostKeyChecking accept-new",
            f'  UserKnownHostsFile "{known_hosts_path(instance)}"',
        ]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def write_config(api: ApiClient, path: Path, identity: str | None) -> int:
    """Rewrite `path` atomically (a reader sees the old file or the new one); the number of entries."""
    qualified = api.get("/me").get("role") == "admin"
    instances = api.get_all("/instances")
    text = config_text(instances, qualified=qualified, identity=identity)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return text.count("\nHost ")


def refresh_if_present(api: ApiClient) -> str | None:
    """Keep the default file current when the user has one; a problem is a note, never the command's failure."""
    path = default_config_path()
    if not path.exists():
        return None
    try:
        write_config(api, path, identity_path(None))
    except ClientError as error:
        return f"note: {path} not refreshed: {error.message}"
    return None
