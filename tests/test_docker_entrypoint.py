"""The docker target's user setup (stacks/docker.py USERS_SCRIPT) cannot be shifted by a user's text.

The old format, "name yes|no key" per line with the text as is, let a name ending in a
newline start another line: `bob\\n` followed by fields of the attacker's choosing made a
user of them, with sudo. The spec refuses such names (tests/test_spec.py); here the script
itself is run, as root inside the isolated host of tests/sshhost.py, with users that skip
the spec, and refuses them.
"""

from __future__ import annotations

import base64
import shlex

from stacks.docker import USERS_SCRIPT, ssh_users_env
from stacks.spec import SshUser
from tests.sshhost import SshHost, ssh_host  # noqa: F401 (fixture)
from tests.test_spec import public_key


def run_users_script(host: SshHost, users: list[SshUser]):
    command = f"ORCH_SSH_USERS={shlex.quote(ssh_users_env(users))}; set -eu; {USERS_SCRIPT}"
    return host.run(command)


def sudoers_files(host: SshHost) -> list[str]:
    return sorted(path.name for path in (host.root / "etc/sudoers.d").glob("*orch*"))


def user_exists(host: SshHost, name: str) -> bool:
    return host.run(f"id {shlex.quote(name)}").returncode == 0


def test_each_user_is_one_line_of_three_fields_whatever_the_text():
    hostile = [
        SshUser(name="bob\nmallory yes", public_key=public_key(comment="x\nroot yes key"), sudo=False),
        SshUser(name="eve", public_key=public_key(comment="a b  c\td"), sudo=True),
    ]
    lines = ssh_users_env(hostile).split("\n")
    assert len(lines) == 2
    fields = [line.split(" ") for line in lines]
    assert [len(f) for f in fields] == [3, 3]
    assert [base64.b64decode(f[0]).decode() for f in fields] == ["bob\nmallory yes", "eve"]
    assert [f[1] for f in fields] == ["no", "yes"]
    assert base64.b64decode(fields[1][2]).decode() == public_key(comment="a b  c\td")


def test_users_are_created_with_their_keys_and_sudo(ssh_host):  # noqa: F811
    alice, bob = public_key(comment="alice@x"), public_key("ecdsa", comment="bob  with   spaces")
    users = [SshUser(name="alice", public_key=alice, sudo=True), SshUser(name="bob", public_key=bob + "\n", sudo=False)]
    result = run_users_script(ssh_host, users)
    assert result.returncode == 0, result.stderr
    assert (ssh_host.root / "home/alice/.ssh/authorized_keys").read_text() == alice + "\n"
    assert (ssh_host.root / "home/bob/.ssh/authorized_keys").read_text() == bob + "\n"
    assert sudoers_files(ssh_host) == ["orch-alice"]
    assert (ssh_host.root / "etc/sudoers.d/orch-alice").read_text() == "alice ALL=(ALL) NOPASSWD:ALL\n"


def test_a_name_with_a_newline_cannot_give_another_user_sudo(ssh_host):  # noqa: F811
    before = sudoers_files(ssh_host)
    for name in ("bob\n", "bob\nno", "no\nmallory", "mallory yes", "../../etc/x", "-o", "bób", "mal\x00lory"):
        users = [SshUser(name=name, public_key=public_key(), sudo=True)]
        result = run_users_script(ssh_host, users)
        assert result.returncode != 0 and "refusing user name" in result.stderr, (name, result.stderr)
    for name in ("no", "yes", "mallory"):
        assert not user_exists(ssh_host, name)
    assert sudoers_files(ssh_host) == before


def test_a_key_with_a_newline_cannot_add_a_line(ssh_host):  # noqa: F811
    users = [SshUser(name="carol", public_key="ssh-ed25519 AAAA carol\nssh-ed25519 BBBB mallory", sudo=False)]
    result = run_users_script(ssh_host, users)
    assert result.returncode != 0 and "the key is not one line" in result.stderr
