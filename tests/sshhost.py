"""A real SSH host on this machine for playbook tests, isolated from the machine itself.

`unshare --mount --pid --fork` gives the host its own mount and pid namespaces (the
network namespace stays shared, so its sshd listens on this machine's loopback).
Inside, `/` is overlaid with an upper layer on a tmpfs and the host chroots into that
overlay: every file the playbook writes, every user it adds, lands in the tmpfs and
vanishes with the namespace. Killing the namespace's first process ends every process
started in it (sshd, the agent, its supervisor).

The namespace's pid 1 is either a shell that starts sshd (a container, no init system)
or systemd (a cloud VM: sshd is ssh.service, the agent becomes a unit). systemd runs in
a cgroup namespace over a cgroup subtree made for it and removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.sshkeys import generate_keypair

CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SSHD_START_TIMEOUT_S = 20

# Runs as pid 1 of the new namespaces. $1: work dir on this machine, $2: the sshd port,
# $3: the init, "shell" or "systemd".
NAMESPACE_INIT = r"""
set -eu
work=$1 port=$2 init=$3
layers=$work/layers root=$work/root
# The upper layer lives on a tmpfs: overlayfs will not take an upper dir inside its lower
# layer (/), and a tmpfs is gone with the namespace.
mount -t tmpfs -o mode=0755 orch-sshhost "$layers"
mkdir -p "$layers/upper" "$layers/work"
mount -t overlay orch-sshhost -o "lowerdir=/,upperdir=$layers/upper,workdir=$layers/work" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mkdir -p "$root/run/sshd"
install -m 0600 "$work/host_key" "$root/etc/ssh/orch_test_host_key"
mkdir -p "$root/root/.ssh"
chmod 0700 "$root/root/.ssh"
install -m 0600 "$work/authorized_keys" "$root/root/.ssh/authorized_keys"
# A stock root login: this machine's own root dotfiles put pyenv shims on PATH, which
# would make Ansible pick an interpreter no fresh instance has.
cp /etc/skel/.bashrc /etc/skel/.profile "$root/root/"
sshd_options="-p $port -o ListenAddress=127.0.0.1 -h /etc/ssh/orch_test_host_key"

if [ "$init" = shell ]; then
    chroot "$root" /usr/sbin/sshd -D -e $sshd_options -o PidFile=/run/sshd.pid 2>>"$work/sshd.log" &
    echo READY
    # As pid 1, the shell also reaps the processes that get orphaned in here (the agent's supervisor).
    wait
    exit
fi

# systemd as pid 1, booting only what a cloud image's sshd and the agent need. Everything
# the stock targets pull in is masked: much of it reaches past these namespaces (kernel
# settings, modules, binfmt, the clock, ports on the shared loopback).
units=$root/etc/systemd/system
for wanted in /lib/systemd/system /etc/systemd/system; do
    for target in sysinit sockets timers basic paths; do
        for unit in "$wanted/$target.target.wants"/*; do
            [ -e "$unit" ] || [ -L "$unit" ] || continue
            ln -sf /dev/null "$units/$(basename "$unit")"
        done
    done
done
for unit in local-fs.target swap.target tmp.mount; do ln -sf /dev/null "$units/$unit"; done
printf 'SSHD_OPTS="%s -E /var/log/orch-test-sshd.log"\n' "$sshd_options" > "$root/etc/default/ssh"
cat > "$units/orch-test.target" <<UNIT
[Unit]
Description=orch test host
Wants=ssh.service
AllowIsolate=yes
UNIT
# systemd gets a cgroup subtree of its own (made by the caller, removed after): a cgroup
# namespace rooted there, with a cgroup2 hierarchy mounted over the machine's.
echo $$ > "$work/cgroup/cgroup.procs"
echo READY
exec >>"$work/systemd.log" 2>&1 </dev/null
exec unshare --cgroup sh -c '
    mount -t cgroup2 cgroup2 "$1/sys/fs/cgroup"
    exec env container=orch-test chroot "$1" /lib/systemd/systemd --unit=orch-test.target
' sh "$root"
"""


@dataclass
class SshHost:
    host: str
    port: int
    user: str
    private_key_pem: str
    key_file: Path
    ns_pid: int
    work: Path
    init: str
    cgroup: Path | None

    @property
    def root(self) -> Path:
        """The host's / (the overlay), readable from this machine for assertions."""
        if self.init == "systemd":  # systemd, pid 1 there, runs chrooted into the overlay
            return Path(f"/proc/{self.ns_pid}/root")
        return Path(f"/proc/{self.ns_pid}/root{self.work}/root")

    def run(self, command: str, *, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a shell command as root inside the host (its namespaces and chroot)."""
        return subprocess.run(
            [
                "nsenter", f"--target={self.ns_pid}", "--mount", "--pid", "--",
                "chroot", str(self.work / "root"),
                "env", "-i", f"PATH={CHROOT_PATH}", "HOME=/root", "sh", "-c", command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ssh(self, user: str, key_file: Path, command: str, *, extra_options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """Log in over SSH as `user` with `key_file`, like a person would."""
        return subprocess.run(
            [
                "ssh", "-i", str(key_file), "-p", str(self.port),
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={self.work / 'known_hosts'}",
                "-o", "ConnectTimeout=10", *extra_options,
                f"{user}@{self.host}", command,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_private_key(directory: Path, name: str, private_key_pem: str) -> Path:
    path = directory / name
    path.touch(mode=0o600)
    path.write_text(private_key_pem)
    return path


def _wait_for_sshd(port: int, proc: subprocess.Popen, work: Path, init: str) -> None:
    deadline = time.monotonic() + SSHD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ssh host namespace exited {proc.returncode}: {proc.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    log = work / ("systemd.log" if init == "systemd" else "sshd.log")
    text = log.read_text(errors="replace") if log.exists() else ""
    raise RuntimeError(f"sshd did not answer on port {port} within {SSHD_START_TIMEOUT_S}s; {log.name}: {text}")


def _own_cgroup_subtree(name: str) -> Path:
    """A new cgroup below this process's own in the cgroup2 hierarchy, for systemd to manage."""
    mounts = [line.split(" - ", 1) for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    mount_points = [fields.split()[4] for fields, rest in mounts if rest.split()[0] == "cgroup2"]
    current = [line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")]
    if not mount_points or not current:
        pytest.fail("the systemd ssh host needs a cgroup2 hierarchy (none is mounted here)")
    path = Path(mount_points[0] + current[0].rstrip("/")) / name
    path.mkdir()
    return path


def _remove_cgroup_subtree(path: Path) -> None:
    # A cgroup can be removed once its processes are gone, which the kernel finishes shortly after the kill.
    deadline = time.monotonic() + 30
    while path.exists():
        try:
            for directory in sorted((d for d in path.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
                directory.rmdir()
            path.rmdir()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start_ssh_host(work: Path, init: str = "shell") -> tuple[SshHost, subprocess.Popen]:
    """An isolated SSH host whose pid 1 is a plain shell (like a container) or systemd (like a cloud VM)."""
    missing = [tool for tool in ("unshare", "nsenter", "chroot", "ssh", "ssh-keygen") if shutil.which(tool) is None]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("/usr/sbin/sshd")
    if missing:
        pytest.fail(f"the ssh host needs {', '.join(missing)}: run the suite with scripts/test, which installs them")
    if os.geteuid() != 0:
        pytest.fail("the ssh host needs root (mount and pid namespaces, overlay mounts)")
    (work / "layers").mkdir(parents=True)
    (work / "root").mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orch-test-host", "-f", str(work / "host_key")],
        check=True,
    )
    private_key_pem, public_key = generate_keypair("orch-test-admin")
    (work / "authorized_keys").write_text(public_key + "\n")
    key_file = write_private_key(work, "admin_key", private_key_pem)
    port = free_port()
    cgroup = None
    if init == "systemd":
        cgroup = _own_cgroup_subtree(f"orch-sshhost-{port}")
        (work / "cgroup").symlink_to(cgroup)
    proc = subprocess.Popen(
        ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
         "bash", "-c", NAMESPACE_INIT, "orch-sshhost", str(work), str(port), init],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = proc.stdout.readline().strip()
        if ready != "READY":
            proc.wait(timeout=10)
            raise RuntimeError(f"ssh host setup failed ({proc.returncode}): {proc.stderr.read()}")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ns_pid = int(children[0])
        _wait_for_sshd(port, proc, work, init)
    except BaseException:
        proc.kill()
        proc.wait()
        if cgroup:
            _remove_cgroup_subtree(cgroup)
        raise
    host = SshHost(
        host="127.0.0.1", port=port, user="root", private_key_pem=private_key_pem,
        key_file=key_file, ns_pid=ns_pid, work=work, init=init, cgroup=cgroup,
    )
    return host, proc


def stop_ssh_host(host: SshHost, proc: subprocess.Popen) -> None:
    # --kill-child: unshare's death kills the namespace's pid 1, and with it every process inside.
    proc.kill()
    proc.wait(timeout=30)
    if host.cgroup:
        _remove_cgroup_subtree(host.cgroup)


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory):
    """A fresh, isolated SSH host (root login with `private_key_pem`) for one test module."""
    host, proc = start_ssh_host(tmp_path_factory.mktemp("sshhost"))
    yield host
    stop_ssh_host(host, proc)


@pytest.fixture(scope="module")
def systemd_ssh_host(tmp_path_factory):
    """Like ssh_host, but booted by systemd as a cloud image is: services are systemd units."""
    host, proc = start_ssh_host(tmp_path_factory.mktemp("systemdhost"), init="systemd")
    yield host
    stop_ssh_host(host, proc)
