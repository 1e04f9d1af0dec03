"""The Pulumi project's program (Pulumi.yaml `main`): the same program the service runs inline.

It reads what the service wrote into the stack's config (`orch:kind`,
`orch:document`, ...), so `pulumi up/preview/refresh --stack <name>` run in the
service's project directory (`<data dir>/pulumi-project`, whose Pulumi.yaml
points here) acts on the service's stacks.
"""

import sys
from pathlib import Path

# Pulumi runs this file with stacks/ first on sys.path, where aws.py or docker.py
# would shadow packages of those names; the repo root is what must be importable.
_STACKS_DIR = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _STACKS_DIR]
sys.path.insert(0, str(_STACKS_DIR.parent))

import json  # noqa: E402

import pulumi  # noqa: E402

from stacks import instance_program, snapshot_program  # noqa: E402
from stacks.spec import parse_instance, parse_snapshot  # noqa: E402


def main() -> None:
    config = pulumi.Config("orch")
    kind = config.require("kind")
    # `orch:document` is a secret config value (it holds the bootstrap script and SSH keys). The
    # program needs its plaintext to decide which resources to declare, which an Output from
    # require_secret cannot give outside an apply; `require` returns a secret's decrypted value.
    document = json.loads(config.require("document"))
    if kind == "instance":
        program = instance_program(
            parse_instance(document),
            admin_public_key=config.require("admin_public_key"),
            base_image_id=config.get("base_image_id"),
        )
    elif kind == "snapshot":
        program = snapshot_program(parse_snapshot(document), source=json.loads(config.require("source")))
    else:
        raise ValueError(f"orch:kind is {kind!r}; expected instance or snapshot")
    program()


main()
