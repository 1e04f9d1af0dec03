"""The `orch` command line."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys

from orchestrator import __version__, server
from orchestrator.client.commands import add_client_commands
from orchestrator.client.completion import SCRIPTS
from orchestrator.client.ssh import split_remote_command


TTL_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def token_ttl(text: str) -> dt.timedelta:
    """A token lifetime such as 90m, 12h or 7d."""
    match = re.fullmatch(r"([0-9]{1,6})([mhd])", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a lifetime like 90m, 12h or 7d")
    return dt.timedelta(**{TTL_UNITS[match[2]]: int(match[1])})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orch", description="Multi-cloud single-instance orchestrator")
    parser.add_argument("--version", action="version", version=f"orch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=lambda args: print(f"orch {__version__}") or 0)

    serve = commands.add_parser("serve", help="run the service (embedded defaults; see README for settings)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--simulate", action="store_true",
                       help="simulated clouds: the Pulumi stand-in as engine, instances as sandbox hosts (README)")
    serve.set_defaults(handler=lambda args: server.serve(args.host, args.port, args.simulate))

    worker = commands.add_parser("worker", help="run a worker consuming operations from ORCH_AMQP_URL")
    worker.set_defaults(handler=lambda args: server.worker())

    token = commands.add_parser("token", help="mint, list and revoke tokens (on the service's machine)")
    token_commands = token.add_subparsers(dest="token_command", metavar="create|list|revoke")
    token_commands.required = True
    create = token_commands.add_parser("create", help="print a token as the last line")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user token for NAME (recorded: see `orch token list`)")
    who.add_argument("--instance", help="an agent token for instance NAME of --owner (admin, for debugging an agent)")
    create.add_argument("--admin", action="store_true", help="with --user: an admin token")
    create.add_argument("--owner", help="with --instance: the instance's owner (names are unique per owner)")
    create.add_argument("--ttl", type=token_ttl, help="with --user: lifetime such as 90m, 12h, 7d (default 12h, at most 30d)")
    create.set_defaults(handler=lambda args: server.create_token(args.user, args.admin, args.instance, args.owner, args.ttl))
    listing = token_commands.add_parser("list", help="user tokens minted by `token create --user`")
    listing.add_argument("--all", action="store_true", help="include expired tokens (kept an hour after expiry)")
    listing.set_defaults(handler=lambda args: server.list_tokens(args.all))
    revoke = token_commands.add_parser("revoke", help="revoke a user token by its jti: the API refuses it from then on")
    revoke.add_argument("jti")
    revoke.set_defaults(handler=lambda args: server.revoke_token(args.jti))
    add_client_commands(commands)
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for SHELL. Load it with `source <(orch completion bash)`"
        " (in ~/.bashrc) or `source <(orch completion zsh)` (in ~/.zshrc).",
    )
    completion.add_argument("shell", choices=sorted(SCRIPTS))
    completion.set_defaults(handler=lambda args: print(SCRIPTS[args.shell](parser), end="") or 0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv, remote_command = split_remote_command(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    if remote_command is not None:
        args.remote_command = remote_command
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
