"""The `orch` command line."""

from __future__ import annotations

import argparse
import sys

from orchestrator import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orch", description="Multi-cloud single-instance orchestrator")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=lambda args: print(f"orch {__version__}") or 0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
