"""User text reaching Ansible is data, never a template (issue 11, item 1).

configure_instance hands the playbook its variables through a file in which every
string is tagged `!unsafe`. These tests capture that file from a real
configure_instance call and run ansible-playbook with it on this machine (connection
local), using the variables the way the roles do: a payload that Jinja would run must
stay text. The same variables passed as plain JSON (what ansible-runner's `extravars=`
writes) do run the payload: that control shows the payload is live.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ansible_runner
import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import is_trusted_as_template

from orchestrator import configure

VENV_BIN = Path(sys.executable).parent

# Uses the variables as the roles do: loops over lists of dicts, filters (trim, replace,
# quote), file content, a template rendered through to_nice_json, conditions and a shell.
PROBE_PLAYBOOK = """
- name: Use the variables as the roles do
  hosts: all
  gather_facts: false
  tasks:
    - name: Write each user's key line
      ansible.builtin.copy:
        dest: "{{ out }}/key-{{ index }}"
        content: "{{ item.public_key | trim }}\\n"
        mode: "0600"
      loop: "{{ orch_ssh_users }}"
      loop_control:
        index_var: index
        label: "{{ item.name }}"
      when: item.name | length > 0

    - name: Write each user's sudoers line
      ansible.builtin.copy:
        dest: "{{ out }}/sudo-{{ index }}"
        content: "{{ item.name | replace('.', '_') }} ALL=(ALL) NOPASSWD:ALL\\n"
        mode: "0600"
      loop: "{{ orch_ssh_users }}"
      loop_control:
        index_var: index

    - name: Write the bootstrap script
      ansible.builtin.copy:
        dest: "{{ out }}/script"
        content: "{{ orch_bootstrap_script }}"
        mode: "0600"
      when: orch_bootstrap_script | length > 0

    - name: Write the agent config through a template
      ansible.builtin.copy:
        dest: "{{ out }}/config.json"
        content: "{{ {'url': orch_agent_url, 'token': orch_agent_token, 'instance': orch_agent_instance} | to_nice_json }}"
        mode: "0600"

    - name: Hand a mount to a shell, quoted
      ansible.builtin.shell: printf '%s\\n' {{ item.bucket | quote }} {{ item.path | quote }} > {{ out }}/mount-{{ index }}
      loop: "{{ orch_mounts }}"
      loop_control:
        index_var: index
      changed_when: true
"""


def payloads(marker: Path) -> list[str]:
    return [
        f"{{{{ lookup('pipe', 'id > {marker}-expr') }}}}",
        f"{{% for line in lookup('pipe', 'id > {marker}-stmt', wantlist=True) %}}{{{{ line }}}}{{% endfor %}}",
    ]


def hostile_extravars(marker: Path) -> dict:
    expression, statement = payloads(marker)
    return {
        "orch_ssh_users": [
            {"name": "alice", "public_key": f"ssh-ed25519 AAAAC3Nz alice {expression}", "sudo": True},
            {"name": f"bob{expression}", "public_key": f"ssh-ed25519 AAAAC3Nz {statement}\n", "sudo": False},
        ],
        "orch_mounts": [{"bucket": f"b{expression}", "path": f"/mnt/{statement}"}],
        "orch_bootstrap_script": f"#!/bin/sh\n# {expression}\necho '{statement}'\n",
        "orch_agent_url": f"http://service/{expression}",
        "orch_agent_token": expression,
        "orch_agent_instance": statement,
        "orch_agent_interval": 30,
    }


def captured_extravars_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extravars: dict) -> Path:
    """The extra vars file a real configure_instance call hands ansible-runner."""
    copy = tmp_path / "captured-extravars"
    calls: list[dict] = []

    class Finished:
        status, rc, stats = "successful", 0, {}

    def fake_run(**kwargs):
        calls.append(kwargs)
        copy.write_bytes((Path(kwargs["private_data_dir"]) / "env" / "extravars").read_bytes())
        return Finished()

    monkeypatch.setattr(ansible_runner, "run", fake_run)
    # No SSH server here: only the file handed to Ansible matters, not reaching the host.
    monkeypatch.setattr(configure, "wait_for_ssh_port", lambda *args: None)
    configure.configure_instance(
        host="127.0.0.1", port=22, ssh_user="root", private_key_pem="not a key", extravars=extravars,
        on_log=lambda line: None, workdir=tmp_path / "runs", attempts=1,
    )
    assert len(calls) == 1 and "extravars" not in calls[0], "extra vars must only reach Ansible through the file"
    return copy


def run_playbook(tmp_path: Path, playbook_text: str, vars_file: Path, out: Path) -> subprocess.CompletedProcess:
    """ansible-playbook on this machine with the extra vars file; `out` is where the play writes."""
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(playbook_text)
    out.mkdir()
    return subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}", "-e", json.dumps({"out": str(out)}),
            "-e", f"@{vars_file}", str(playbook),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
        env={"PATH": f"{VENV_BIN}:/usr/bin:/bin", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
             "ANSIBLE_NOCOLOR": "1", "HOME": str(tmp_path)},
    )


def strings_in(value, where: str = ""):
    """(where, string) for every string value in a loaded value (keys are the service's own names)."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings_in(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(item, f"{where}.{key}")


def test_ansible_loads_every_string_of_the_extravars_file_as_untrusted(tmp_path, monkeypatch):
    extravars = hostile_extravars(tmp_path / "marker")
    vars_file = captured_extravars_file(tmp_path, monkeypatch, extravars)
    # Loaded the way ansible-playbook loads `-e @file`: trusted unless tagged otherwise.
    loaded = DataLoader().load_from_file(str(vars_file), trusted_as_template=True)

    assert loaded == extravars
    assert [where for where, text in strings_in(loaded) if is_trusted_as_template(text)] == []
    # Control: the same file without the tag is all templates.
    plain = tmp_path / "plain.yml"
    plain.write_text(yaml.safe_dump(extravars))
    loaded_plain = DataLoader().load_from_file(str(plain), trusted_as_template=True)
    assert is_trusted_as_template(loaded_plain["orch_ssh_users"][0]["public_key"])


def test_awkward_strings_survive_the_extravars_file(tmp_path, monkeypatch):
    """Control characters, line separators and non-ASCII text come back as they went in."""
    awkward = "tab\there\nnul\x00 esc\x1b cr\r ls\u2028 ps\u2029 nel\x85 é 日本 \U0001f600 '\"\\ : # - {{x}}"
    # Strings that YAML would read as something else unquoted: they stay strings.
    lookalikes = ["", "true", "no", "123", "0x1f", "1.5", "null", "~", "2001-01-01", ".inf", "=", "<<"]
    extravars = {
        **hostile_extravars(tmp_path / "marker"),
        "orch_bootstrap_script": awkward,
        "orch_ssh_users": [{"name": text, "public_key": f"k{text}", "sudo": False} for text in lookalikes],
    }
    vars_file = captured_extravars_file(tmp_path, monkeypatch, extravars)
    assert DataLoader().load_from_file(str(vars_file), trusted_as_template=True) == extravars
    out = tmp_path / "out"
    result = run_playbook(tmp_path, PROBE_PLAYBOOK, vars_file, out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "script").read_bytes() == awkward.encode()
    for index, text in enumerate(lookalikes):  # a number or a boolean would be written differently
        assert (out / f"sudo-{index}").read_text() == f"{text.replace('.', '_')} ALL=(ALL) NOPASSWD:ALL\n"


def test_hostile_extravars_are_never_templated(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    extravars = hostile_extravars(marker)
    vars_file = captured_extravars_file(tmp_path, monkeypatch, extravars)

    result = run_playbook(tmp_path, PROBE_PLAYBOOK, vars_file, tmp_path / "out")

    assert result.returncode == 0, result.stdout + result.stderr
    assert not list(tmp_path.glob("marker*")), "a payload ran on the service host"
    out = tmp_path / "out"
    users = extravars["orch_ssh_users"]
    assert (out / "key-0").read_text() == users[0]["public_key"] + "\n"
    assert (out / "key-1").read_text() == users[1]["public_key"]  # trimmed, then the task's newline
    assert (out / "sudo-1").read_text() == f"{users[1]['name']} ALL=(ALL) NOPASSWD:ALL\n"
    assert (out / "script").read_text() == extravars["orch_bootstrap_script"]
    assert json.loads((out / "config.json").read_text()) == {
        "url": extravars["orch_agent_url"], "token": extravars["orch_agent_token"],
        "instance": extravars["orch_agent_instance"],
    }
    mount = extravars["orch_mounts"][0]
    assert (out / "mount-0").read_text() == f"{mount['bucket']}\n{mount['path']}\n"

    # Control: the same values as plain JSON, as ansible-runner's `extravars=` writes them, run the payload.
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(extravars))
    run_playbook(tmp_path, PROBE_PLAYBOOK, plain, tmp_path / "out-plain")
    assert Path(f"{marker}-expr").exists() and Path(f"{marker}-stmt").exists()


def test_extravars_that_are_not_json_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"orch_mounts\[0\]: set is not a JSON value"):
        configure.write_extravars(tmp_path / "vars", {"orch_mounts": [{"x"}]})
    with pytest.raises(TypeError, match="key 1 is not a string"):
        configure.write_extravars(tmp_path / "vars2", {"orch_mounts": {1: "a"}})
    with pytest.raises(ValueError, match="could be a template"):
        configure.write_extravars(tmp_path / "vars3", {"orch_mounts": [{"{{ x }}": "a"}]})
