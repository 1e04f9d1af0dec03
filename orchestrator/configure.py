"""Configure a provisioned instance: run playbooks/site.yml against it with ansible-runner.

Every run gets its own temp directory under `workdir` (private data dir, SSH key,
known_hosts) that is removed afterwards, so the instance's private key never
outlives the run. A host that is not reachable yet (sshd still starting on a new
VM) is waited for first: its SSH port is probed for at most `reach_timeout_s`, and
one that never answers fails with HostUnreachable ("cannot reach HOST:22 over SSH
(timed out after N s)") instead of a long series of playbook attempts. A host whose
port answers but whose SSH is not ready yet is retried a bounded number of times; a run
whose end of output ansible-runner lost takes its result from the run's event files, and
is retried (within the same bound) only when they lack it; a
task that fails ends the run with a ConfigureError naming the task, the host and the
module's message. The playbook's runs, retries included, are bounded in time too
(`timeout_s`): a task that hangs, or a bootstrap script that never ends, is killed with
ansible-playbook and fails the run naming the task it was in.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ansible_runner
import pexpect
import yaml

from orchestrator.settings import DEFAULT_CONFIGURE_TIMEOUT_S, DEFAULT_SSH_REACH_TIMEOUT_S

PLAYBOOKS_DIR = Path(__file__).resolve().parent.parent / "playbooks"
PLAYBOOK = "site.yml"
DEFAULT_ATTEMPTS = 10
DEFAULT_RETRY_DELAY_S = 10.0
SSH_CONNECT_TIMEOUT_S = 15
# How each probe of the host's SSH port is paced (the total wait is ORCH_SSH_REACH_TIMEOUT_S).
REACH_PROBE_TIMEOUT_S = 5.0
REACH_PROBE_INTERVAL_S = 2.0
# An SSH server's identification line is at most 255 bytes (RFC 4253, 4.2).
SSH_BANNER_MAX_BYTES = 255
RESULT_LOST = "ansible-runner lost the end of the playbook's output, so its result is unknown"


class _Unsafe(str):
    """A string Ansible must take as data: written with the `!unsafe` tag."""


class _UnsafeDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # each value written out in full, no anchors


_UnsafeDumper.add_representer(_Unsafe, lambda dumper, value: dumper.represent_scalar("!unsafe", str(value)))
_PLAIN_RESOLVER = yaml.resolver.Resolver()
_STR_TAG = "tag:yaml.org,2002:str"


def _mark_unsafe(value: Any, where: str) -> Any:
    """`value` with every string in it, at any depth, marked unsafe; refuses anything but JSON values.

    ansible-core 2.19+ reads an `!unsafe` scalar as if it were unquoted: '', 'true' or
    '123' would come back as null, a boolean, a number. Strings like those (which YAML
    reads as another type) hold no "{" and so no template: they are written untagged,
    and stay strings. (A tag on the whole mapping is not an option: ansible-core 2.17
    drops the lists inside it.)
    """
    if isinstance(value, str):
        if _PLAIN_RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) == _STR_TAG:
            return _Unsafe(value)
        if "{" in value:  # cannot happen: no implicit YAML type has a "{"; refuse rather than assume
            raise ValueError(f"extra var {where}: cannot mark {value!r} unsafe")
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_mark_unsafe(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        marked = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"extra var {where}: key {key!r} is not a string")
            if "{" in key:  # keys are the service's own names (variables, fields), written untagged
                raise ValueError(f"extra var {where}: key {key!r} could be a template")
            marked[key] = _mark_unsafe(item, f"{where}.{key}" if where else key)
        return marked
    raise TypeError(f"extra var {where}: {type(value).__name__} is not a JSON value")


def write_extravars(path: Path, extravars: dict) -> None:
    """Write the playbook's extra vars as YAML in which every string that could hold a template is tagged `!unsafe`.

    User text (key comments, user names, the bootstrap script, mount paths) reaches these
    variables, and Ansible renders any "{{ ... }}" in a variable's value as Jinja on this
    machine when a task uses it; an unsafe string is only ever data. The file is private
    (it holds the agent's token) and reaches ansible-playbook as `-e @file`.
    """
    text = yaml.dump(_mark_unsafe(extravars, ""), Dumper=_UnsafeDumper, allow_unicode=False, sort_keys=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)


class ConfigureError(Exception):
    """The playbook failed; the message names the failing task and host, or why the host was unreachable."""


class HostUnreachable(ConfigureError):
    """The host's port did not answer as an SSH server within the wait; the message says where and how long."""


def _ssh_banner_seen(host: str, port: int, timeout_s: float) -> str | None:
    """None when host:port answers with an SSH banner ("SSH-2.0-..."), else why not.

    A banner, not just a connection: a middlebox may accept any TCP connection for a host it cannot reach.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.settimeout(timeout_s)
            banner = connection.recv(SSH_BANNER_MAX_BYTES)
    except TimeoutError:
        return "no answer"
    except OSError as error:
        return error.strerror or type(error).__name__
    return None if banner.startswith(b"SSH-") else "no SSH banner"


def wait_for_ssh_port(host: str, port: int, timeout_s: float, on_log: Callable[[str], None]) -> None:
    """Return once host:port answers as an SSH server; HostUnreachable after `timeout_s` of trying."""
    deadline = time.monotonic() + timeout_s
    announced = False
    while True:
        reason = _ssh_banner_seen(host, port, max(0.1, min(REACH_PROBE_TIMEOUT_S, deadline - time.monotonic())))
        if reason is None:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HostUnreachable(f"cannot reach {host}:{port} over SSH (timed out after {timeout_s:g} s)")
        if not announced:
            on_log(f"waiting for {host}:{port} to answer as an SSH server ({reason}; at most {timeout_s:g} s)")
            announced = True
        time.sleep(min(REACH_PROBE_INTERVAL_S, remaining))


@dataclass(frozen=True)
class ConfigureSummary:
    ok: int
    changed: int
    skipped: int
    attempts: int

    @classmethod
    def from_stats(cls, stats: dict, attempts: int) -> ConfigureSummary:
        """From the play's final stats (each count per host)."""
        return cls(
            ok=sum((stats.get("ok") or {}).values()),
            changed=sum((stats.get("changed") or {}).values()),
            skipped=sum((stats.get("skipped") or {}).values()),
            attempts=attempts,
        )


def _path_with_ansible() -> str:
    """PATH with the ansible-playbook installed next to this interpreter first,
    so the service works without its virtualenv on PATH."""
    path = os.environ.get("PATH", os.defpath)
    beside = Path(sys.executable).parent
    if (beside / "ansible-playbook").exists():
        return f"{beside}{os.pathsep}{path}"
    if shutil.which("ansible-playbook", path=path) is None:
        raise ConfigureError("ansible-playbook not found: install ansible-core next to the service")
    return path


def _failure_message(event_data: dict) -> str:
    result = event_data.get("res") or {}
    parts = [str(result.get("msg") or "").strip()]
    for stream in ("stderr", "stdout"):
        text = str(result.get(stream) or "").strip()
        if text and text not in parts[0]:
            parts.append(f"{stream}: {text[-800:]}")
    detail = "; ".join(part for part in parts if part) or "no message"
    return f"task '{event_data.get('task', '?')}' failed on {event_data.get('host', '?')}: {detail}"


def _task_failure(event: dict) -> str | None:
    """The message of an event that fails the play (a task failure not ignored), else None."""
    data = event.get("event_data") or {}
    if event.get("event") == "runner_on_failed" and not data.get("ignore_errors"):
        return _failure_message(data)
    return None


def _events_on_disk(artifact_dir: Path) -> tuple[dict | None, str | None]:
    """The final stats (None when the play did not end) and the first task failure of a run, from its event files.

    ansible-runner's callback plugin writes every event to job_events/ as the play goes, before the
    event's text reaches the output: a run whose end of output was lost still has them there.
    """
    stats, failure = None, None
    for path in sorted((artifact_dir / "job_events").glob("*.json")):
        try:
            event = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # a file being written when the run was lost
            continue
        if event.get("event") == "playbook_on_stats":
            stats = event.get("event_data") or {}
        failure = failure or _task_failure(event)
    return stats, failure


class _RunEvents:
    """Collects what one ansible-runner run says about failures, and streams its output."""

    def __init__(self, on_log: Callable[[str], None]) -> None:
        self.on_log = on_log
        self.failure: str | None = None
        self.unreachable: str | None = None
        self.task: str | None = None  # the task running last, named when the run is stopped

    def __call__(self, event: dict) -> bool:
        stdout = event.get("stdout") or ""
        for line in stdout.splitlines():
            if line.strip():
                self.on_log(line)
        data = event.get("event_data") or {}
        self.failure = self.failure or _task_failure(event)
        if event.get("event") == "playbook_on_task_start":
            self.task = str(data.get("task") or "?")
        elif event.get("event") == "runner_on_unreachable":
            message = str((data.get("res") or {}).get("msg") or "unreachable").strip()
            self.unreachable = f"{data.get('host', '?')} unreachable: {message}"
        return True


def configure_instance(
    *,
    host: str,
    port: int,
    ssh_user: str,
    private_key_pem: str,
    extravars: dict,
    on_log: Callable[[str], None],
    workdir: str | os.PathLike,
    attempts: int = DEFAULT_ATTEMPTS,
    retry_delay_s: float = DEFAULT_RETRY_DELAY_S,
    reach_timeout_s: float = DEFAULT_SSH_REACH_TIMEOUT_S,
    timeout_s: float = DEFAULT_CONFIGURE_TIMEOUT_S,
) -> ConfigureSummary:
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    if timeout_s < 1:
        raise ValueError(f"timeout_s must be at least 1, got {timeout_s}")
    wait_for_ssh_port(host, int(port), reach_timeout_s, on_log)
    deadline = time.monotonic() + timeout_s
    Path(workdir).mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="configure-", dir=workdir))
    # ssh's control socket path must stay under ~100 characters, which a deep workdir may not.
    control_dir = tempfile.mkdtemp(prefix="orch-cp-")
    try:
        key_file = run_dir / "ssh_key"
        key_file.touch(mode=0o600)
        key_file.write_text(private_key_pem if private_key_pem.endswith("\n") else private_key_pem + "\n")
        known_hosts = run_dir / "known_hosts"
        inventory = {
            "all": {
                "hosts": {
                    host: {
                        "ansible_host": host,
                        "ansible_port": int(port),
                        "ansible_user": ssh_user,
                        "ansible_ssh_private_key_file": str(key_file),
                        # A brand-new host's key is unknown: accept it once, then hold it for this run.
                        "ansible_ssh_common_args": (
                            f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={known_hosts}"
                            f" -o ConnectTimeout={SSH_CONNECT_TIMEOUT_S}"
                        ),
                        "ansible_python_interpreter": "auto_silent",
                    }
                }
            }
        }
        envvars = {
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_LOCAL_TEMP": str(run_dir / "ansible-tmp"),
            # Ansible's own files (its ~/.ansible) stay in this run's directory, not the cwd or a home.
            "ANSIBLE_HOME": str(run_dir / "ansible-home"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir,
            "PATH": _path_with_ansible(),
        }
        private_data_dir = run_dir / "runner"
        (private_data_dir / "env").mkdir(parents=True)
        # ansible-runner passes env/extravars as `-e @env/extravars`; given `extravars=` instead,
        # it would write them there as JSON, where every string is a template.
        write_extravars(private_data_dir / "env" / "extravars", extravars)
        retry_reason = None
        for attempt in range(1, attempts + 1):
            remaining_s = deadline - time.monotonic()
            if attempt > 1 and remaining_s < 1:  # the retries used up the time
                raise ConfigureError(f"{retry_reason} (gave up after {attempt - 1} attempts in {timeout_s:g} s)")
            events = _RunEvents(on_log)
            try:
                runner = ansible_runner.run(
                    private_data_dir=str(private_data_dir),
                    project_dir=str(PLAYBOOKS_DIR),
                    playbook=PLAYBOOK,
                    inventory=inventory,
                    envvars=envvars,
                    event_handler=events,
                    quiet=True,
                    ident=f"attempt-{attempt}",
                    # ansible-runner kills ansible-playbook's process group once this has passed.
                    timeout=max(1, math.ceil(remaining_s)),
                )
            except pexpect.exceptions.TIMEOUT:
                # After ansible-playbook exits, ansible-runner waits a fixed 5 s for the end of its output
                # and raises when it does not come (ansible/ansible-runner#1343): the result is read from
                # the run's event files instead, and the play, being idempotent, is run again if they lack it.
                runner = None
                stats, failure = _events_on_disk(private_data_dir / "artifacts" / f"attempt-{attempt}")
                events.failure = events.failure or failure
                if stats is not None and not events.failure and not stats.get("failures") and not stats.get("dark"):
                    on_log(f"{RESULT_LOST}: it was read from the play's event files")
                    return ConfigureSummary.from_stats(stats, attempt)
            if runner is not None and runner.status == "successful" and runner.rc == 0:
                return ConfigureSummary.from_stats(runner.stats or {}, attempt)
            if runner is not None and runner.status == "timeout":
                stopped_in = f" and was stopped in task '{events.task}'" if events.task else ""
                raise ConfigureError(f"the playbook did not finish within {timeout_s:g} s{stopped_in}")
            if events.failure:
                raise ConfigureError(events.failure)
            if runner is None:
                retry_reason = events.unreachable or RESULT_LOST
            elif events.unreachable is None:
                raise ConfigureError(f"ansible-playbook ended {runner.status} (rc {runner.rc}) without a task failure")
            else:
                retry_reason = events.unreachable
            if attempt == attempts:
                raise ConfigureError(f"{retry_reason} (gave up after {attempts} attempts)")
            on_log(f"{retry_reason}; retrying in {retry_delay_s:g}s (attempt {attempt}/{attempts})")
            time.sleep(max(0.0, min(retry_delay_s, deadline - time.monotonic())))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(control_dir, ignore_errors=True)
