"""A sandbox host: a real SSH host on this machine, isolated from the machine itself.

`unshare --mount --pid --uts [--net] --fork` gives the host its own namespaces. Inside,
`/` is overlaid with an upper layer on a tmpfs and the host chroots into that overlay:
every file the playbook writes, every user it adds, lands in the tmpfs (the host's disk)
and vanishes with the namespace. Killing the namespace's first process ends every process
started in it (sshd, the agent, its supervisor).

The namespace's pid 1 is either a shell that starts sshd (a container, no init system)
or systemd (a cloud VM: sshd is ssh.service, the agent becomes a unit). systemd runs in
a cgroup namespace over a cgroup subtree made for it and removed afterwards.

Networking: without `address`, the host shares this machine's network namespace and its
sshd listens on a free loopback port (the tests' playbook host). With `address` (and
`veth`), it has a network namespace of its own, reached through a veth pair whose other
end the caller attaches to a bridge (see manager.py): sshd listens on port 22 of that
address, and there is no default route, so nothing beyond the bridge is reachable.

The image is this machine's own root (the overlay's lower layer), so what a cloud image
has (sshd, python3, sudo) must be installed here. `users` are created at boot as
cloud-init would (the login user with passwordless sudo and its keys). `base_upper` is a
disk restored from a snapshot: an upper layer copied in before the overlay is mounted.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.sshkeys import generate_keypair

CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SSHD_START_TIMEOUT_S = 30
SETUP_TIMEOUT_S = 60
REQUIRED_TOOLS = ("unshare", "nsenter", "chroot", "ssh", "ssh-keygen", "ip")
# A user name a sandbox creates: what useradd takes on Debian and Ubuntu, no more.
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")

# Runs as pid 1 of the new namespaces. $1: work dir on this machine, $2: sshd's listen
# address, $3: its port, $4: the init, "shell" or "systemd", $5: the hostname.
# Prints NAMESPACE once the root is mounted, waits for one line on stdin (the caller has
# set up the network meanwhile), then prints READY and starts sshd (or systemd).
NAMESPACE_INIT = r"""
set -eu
# A machine's own umask, not the caller's (the service's 077 would make the overlay's / 0700).
umask 022
work=$1 listen=$2 port=$3 init=$4 name=$5
layers=$work/layers root=$work/root
hostname "$name"
# The upper layer lives on a tmpfs: overlayfs will not take an upper dir inside its lower
# layer (/), and a tmpfs is gone with the namespace.
mount -t tmpfs -o mode=0755 orch-sandbox "$layers"
mkdir -p "$layers/upper" "$layers/work"
# A disk restored from a snapshot: the snapshot's upper layer, before the overlay is mounted.
if [ -d "$work/base-upper" ]; then cp -a "$work/base-upper/." "$layers/upper/"; fi
mount -t overlay orch-sandbox -o "lowerdir=/,upperdir=$layers/upper,workdir=$layers/work" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mkdir -p "$root/run/sshd"
printf '%s\n' "$name" > "$root/etc/hostname"
printf '127.0.1.1 %s\n' "$name" >> "$root/etc/hosts"
install -m 0600 "$work/host_key" "$root/etc/ssh/orch_sandbox_host_key"
mkdir -p "$root/root/.ssh"
chmod 0700 "$root/root/.ssh"
install -m 0600 "$work/authorized_keys" "$root/root/.ssh/authorized_keys"
# A stock root login: this machine's own root dotfiles put pyenv shims on PATH, which
# would make Ansible pick an interpreter no fresh instance has.
cp /etc/skel/.bashrc /etc/skel/.profile "$root/root/"
# The image's users, as cloud-init creates them: one line each, "<name> <yes|no> <keys, base64>".
# Names were checked by the caller; keys are written as data.
if [ -s "$work/users" ]; then
    chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c '
        while read -r name sudo keys; do
            id "$name" >/dev/null 2>&1 || useradd -m -s /bin/bash "$name"
            install -d -m 700 -o "$name" -g "$name" "/home/$name/.ssh"
            printf "%s" "$keys" | base64 -d > "/home/$name/.ssh/authorized_keys"
            chown "$name:$name" "/home/$name/.ssh/authorized_keys"
            chmod 600 "/home/$name/.ssh/authorized_keys"
            if [ "$sudo" = yes ]; then
                install -d -m 750 /etc/sudoers.d
                echo "$name ALL=(ALL) NOPASSWD:ALL" > "/etc/sudoers.d/90-cloud-init-users-$name"
                chmod 440 "/etc/sudoers.d/90-cloud-init-users-$name"
            fi
        done' < "$work/users"
fi
# The sandbox cannot reach a package mirror: its packages are this machine's. The apt
# cache is marked fresh, so the playbook's apt tasks (update_cache with a validity) find
# what is installed instead of failing on an update that cannot download.
if [ -d "$root/var/lib/apt" ]; then
    mkdir -p "$root/var/lib/apt/periodic"
    touch "$root/var/lib/apt/periodic/update-success-stamp"
fi
echo NAMESPACE
read -r go
sshd_options="-p $port -o ListenAddress=$listen -h /etc/ssh/orch_sandbox_host_key"

if [ "$init" = shell ]; then
    chroot "$root" /usr/sbin/sshd -D -e $sshd_options -o PidFile=/run/sshd.pid 2>>"$work/sshd.log" &
    echo READY
    # As pid 1, the shell also reaps the processes that get orphaned in here (the agent's supervisor).
    wait
    exit
fi

# systemd as pid 1, booting only what a cloud image's sshd and the agent need. Everything
# the stock targets pull in is masked: much of it reaches past these namespaces (kernel
# settings, modules, binfmt, the clock).
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
printf 'SSHD_OPTS="%s -E /var/log/orch-sandbox-sshd.log"\n' "$sshd_options" > "$root/etc/default/ssh"
cat > "$units/orch-sandbox.target" <<UNIT
[Unit]
Description=orch sandbox host
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
    exec env container=orch-sandbox chroot "$1" /lib/systemd/systemd --unit=orch-sandbox.target
' sh "$root"
"""


class SandboxError(Exception):
    """A sandbox host could not be made; the message says why."""


@dataclass(frozen=True)
class HostUser:
    """A user the image has at boot (cloud-init's `users`): its authorized keys, and sudo or not."""

    name: str
    keys: tuple[str, ...]
    sudo: bool

    def __post_init__(self) -> None:
        if not USER_NAME.fullmatch(self.name):
            raise SandboxError(f"user name {self.name!r} is not a plain user name")
        if any("\n" in key or "\r" in key for key in self.keys):
            raise SandboxError(f"user {self.name}: a key is not one line")


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
    process: subprocess.Popen | None = field(default=None, repr=False)
    # Pid and start time of the `unshare` process: what a later run kills if this one died.
    unshare_pid: int = 0
    own_network: bool = False

    @property
    def root(self) -> Path:
        """The host's / (the overlay), readable from this machine."""
        if self.init == "systemd":  # systemd, pid 1 there, runs chrooted into the overlay
            return Path(f"/proc/{self.ns_pid}/root")
        return Path(f"/proc/{self.ns_pid}/root{self.work}/root")

    def run(self, command: str, *, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a shell command as root inside the host (its namespaces and chroot)."""
        namespaces = ["--mount", "--pid", "--uts"] + (["--net"] if self.own_network else [])
        return subprocess.run(
            [
                "nsenter", f"--target={self.ns_pid}", *namespaces, "--",
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

    def copy_upper_layer(self, destination: Path) -> None:
        """The host's disk as it is now (its overlay's upper layer), copied to `destination`."""
        destination.mkdir(parents=True)
        result = subprocess.run(
            ["nsenter", f"--target={self.ns_pid}", "--mount", "--",
             "cp", "-a", f"{self.work}/layers/upper/.", str(destination)],
            capture_output=True, text=True, timeout=600,
        )
        if result.returncode != 0:
            raise SandboxError(f"copying the disk of {self.work.name} failed: {result.stderr.strip()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_private_key(directory: Path, name: str, private_key_pem: str) -> Path:
    path = directory / name
    path.touch(mode=0o600)
    path.write_text(private_key_pem)
    return path


def missing_requirements() -> list[str]:
    """What this machine lacks to make sandbox hosts (empty when it can)."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("/usr/sbin/sshd")
    if os.geteuid() != 0:
        missing.append("root (mount, pid and network namespaces, overlay mounts)")
    return missing


def _wait_for_sshd(address: tuple[str, int], proc: subprocess.Popen, work: Path, init: str) -> None:
    deadline = time.monotonic() + SSHD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SandboxError(f"sandbox namespace exited {proc.returncode}: {proc.stderr.read()}")
        try:
            with socket.create_connection(address, timeout=2) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    log = work / ("systemd.log" if init == "systemd" else "sshd.log")
    text = log.read_text(errors="replace") if log.exists() else ""
    raise SandboxError(f"sshd did not answer on {address[0]}:{address[1]} within {SSHD_START_TIMEOUT_S}s; {log.name}: {text}")


def own_cgroup_subtree(name: str) -> Path:
    """A new cgroup below this process's own in the cgroup2 hierarchy, for systemd to manage."""
    mounts = [line.split(" - ", 1) for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    mount_points = [fields.split()[4] for fields, rest in mounts if rest.split()[0] == "cgroup2"]
    current = [line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")]
    if not mount_points or not current:
        raise SandboxError("a systemd sandbox needs a cgroup2 hierarchy (none is mounted here)")
    path = Path(mount_points[0] + current[0].rstrip("/")) / name
    path.mkdir()
    return path


def remove_cgroup_subtree(path: Path) -> None:
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


def _users_file(users: list[HostUser]) -> str:
    def encoded(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return "".join(
        f"{user.name} {'yes' if user.sudo else 'no'} {encoded(''.join(key.strip() + chr(10) for key in user.keys))}\n"
        for user in users
    )


def start_host(
    work: Path,
    init: str = "shell",
    *,
    hostname: str = "orch-sandbox",
    users: list[HostUser] | None = None,
    address: str | None = None,
    veth: str | None = None,
    bridge: str | None = None,
    base_upper: Path | None = None,
) -> SshHost:
    """An isolated SSH host whose pid 1 is a plain shell (like a container) or systemd (like a cloud VM).

    With `address`, `veth` and `bridge`, the host has a network namespace of its own whose eth0
    holds `address` (a /24) and whose peer `veth`, on this machine, is a port of `bridge`.
    """
    missing = missing_requirements()
    if missing:
        raise SandboxError(f"sandbox hosts need {', '.join(missing)}")
    if init not in ("shell", "systemd"):
        raise SandboxError(f"init must be shell or systemd, not {init!r}")
    if not HOSTNAME.fullmatch(hostname):
        raise SandboxError(f"hostname {hostname!r} is not a plain host name")
    (work / "layers").mkdir(parents=True)
    (work / "root").mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orch-sandbox-host", "-f", str(work / "host_key")],
        check=True,
    )
    private_key_pem, public_key = generate_keypair("orch-sandbox-admin")
    (work / "authorized_keys").write_text(public_key + "\n")
    (work / "users").write_text(_users_file(users or []))
    key_file = write_private_key(work, "admin_key", private_key_pem)
    if base_upper is not None:
        (work / "base-upper").symlink_to(base_upper)
    own_network = address is not None
    listen, port = (address, 22) if own_network else ("127.0.0.1", free_port())
    cgroup = None
    if init == "systemd":
        # Named after the work dir: unique among the hosts that run at once.
        cgroup = own_cgroup_subtree(f"orch-sandbox-{hashlib.sha256(str(work).encode()).hexdigest()[:16]}")
        (work / "cgroup").symlink_to(cgroup)
    namespaces = ["--mount", "--pid", "--uts"] + (["--net"] if own_network else [])
    proc = subprocess.Popen(
        ["unshare", *namespaces, "--fork", "--kill-child", "--propagation", "private",
         "bash", "-c", NAMESPACE_INIT, "orch-sandbox", str(work), listen, str(port), init, hostname],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if proc.stdout.readline().strip() != "NAMESPACE":
            proc.wait(timeout=10)
            raise SandboxError(f"sandbox setup failed ({proc.returncode}): {proc.stderr.read()}")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ns_pid = int(children[0])
        if own_network:
            _connect_network(ns_pid, address, veth, bridge)
        proc.stdin.write("go\n")
        proc.stdin.close()
        if proc.stdout.readline().strip() != "READY":
            proc.wait(timeout=10)
            raise SandboxError(f"sandbox setup failed ({proc.returncode}): {proc.stderr.read()}")
        _wait_for_sshd((listen, port), proc, work, init)
    except BaseException:
        proc.kill()
        proc.wait()
        if veth:
            delete_link(veth)
        if cgroup:
            remove_cgroup_subtree(cgroup)
        raise
    return SshHost(
        host=listen, port=port, user="root", private_key_pem=private_key_pem, key_file=key_file,
        ns_pid=ns_pid, work=work, init=init, cgroup=cgroup, process=proc, unshare_pid=proc.pid,
        own_network=own_network,
    )


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise SandboxError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def _connect_network(ns_pid: int, address: str, veth: str, bridge: str) -> None:
    """eth0 in the namespace with `address`/24 and no default route; its peer `veth` a port of `bridge`."""
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(ns_pid))
    _ip("link", "set", veth, "master", bridge)
    _ip("link", "set", veth, "up")
    inside = ["nsenter", f"--target={ns_pid}", "--net", "--", "ip"]
    for args in (["link", "set", "lo", "up"], ["addr", "add", f"{address}/24", "dev", "eth0"], ["link", "set", "eth0", "up"]):
        result = subprocess.run([*inside, *args], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise SandboxError(f"ip {' '.join(args)} in the sandbox failed: {result.stderr.strip()}")


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, timeout=30).returncode == 0


def delete_link(name: str) -> None:
    if link_exists(name):
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)


def stop_host(host: SshHost) -> None:
    """End the host: every process in it, its mounts (with its mount namespace) and its cgroup."""
    # --kill-child: unshare's death kills the namespace's pid 1, and with it every process inside.
    if host.process is not None:
        host.process.kill()
        host.process.wait(timeout=30)
    if host.cgroup:
        remove_cgroup_subtree(host.cgroup)
