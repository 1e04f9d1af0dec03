"""The sandbox manager of `orch serve --simulate`: sandbox hosts on a bridge, made on request.

The Pulumi stand-in (a short-lived process per pulumi command) asks it over a unix socket
(`ORCH_SANDBOX_SOCKET`, one JSON request and one JSON answer per connection) to make a host
when it creates a compute resource, to remove it when it deletes one, and to copy a host's
disk when it creates an image from it. A cloud whose public address is a resource of its own,
created before the machine (Azure's PublicIPAddress), first `reserve`s an address and names that
reservation when it creates the host; `release` frees it. Everything it makes is recorded in its state dir
first, so a later start finds and removes what a killed run left (processes, veths, the
bridge, cgroups); `close` removes it all on shutdown.

Network: one bridge, `BRIDGE` with `BRIDGE_ADDRESS`/24, made at start; each host gets the
next free address of `SUBNET` on its own veth. No default route exists in a sandbox and no
NAT or forwarding rule is added, so a sandbox reaches the bridge's address (where the
service listens for its agent) and the other sandboxes, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.sandbox.host import (
    HostUser,
    SandboxError,
    SshHost,
    delete_link,
    link_exists,
    remove_cgroup_subtree,
    start_host,
    stop_host,
)

log = logging.getLogger("orch.sandbox")

BRIDGE = "orch-sim0"
SUBNET = "10.213.0"  # a /24 of private addresses; .1 is the bridge (this machine), hosts from .2
BRIDGE_ADDRESS = f"{SUBNET}.1"
FIRST_HOST = 2
LAST_HOST = 254
SOCKET_ENV = "ORCH_SANDBOX_SOCKET"
# Requests are a few KB (keys and names); anything larger is refused.
MAX_REQUEST_BYTES = 256 * 1024
# The init of a simulated VM: systemd, as a cloud image boots.
VM_INIT = "systemd"


@dataclass
class Sandbox:
    index: int
    keys: list[str]
    host: SshHost

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}"


def _veth(index: int) -> str:
    return f"orchsim{index}"


def _process_start(pid: int) -> str | None:
    """The start time of a process (field 22 of /proc/PID/stat): with the pid, what identifies it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _snapshot_dir_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class SandboxManager:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.hosts_dir = state_dir / "hosts"
        self.snapshots_dir = state_dir / "snapshots"
        self.socket_path = state_dir / "manager.sock"
        self._lock = threading.Lock()
        self._sandboxes: dict[int, Sandbox] = {}
        # Reserved addresses (index -> keys): a number only, nothing exists for them until a host runs there.
        self._reservations: dict[int, list[str]] = {}
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._bridge_made = False

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Remove a killed run's leftovers, make the bridge, listen on the socket."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.snapshots_dir.mkdir(exist_ok=True)
        removed = self.remove_leftovers()
        if removed:
            log.info("removed %d leftover(s) of an earlier simulated run: %s", len(removed), ", ".join(removed))
        if link_exists(BRIDGE):  # not this data dir's: its leftovers were removed above
            raise SandboxError(f"the bridge {BRIDGE} exists already: is another `orch serve --simulate` running on "
                               f"this machine? (if not, remove it: ip link del {BRIDGE})")
        (self.state_dir / "bridge").write_text(BRIDGE + "\n")  # recorded before it exists
        _run_ip("link", "add", BRIDGE, "type", "bridge")
        self._bridge_made = True
        _run_ip("addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE)
        _run_ip("link", "set", BRIDGE, "up")
        self.socket_path.unlink(missing_ok=True)
        manager = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                manager._answer(self.rfile, self.wfile)

        self._server = socketserver.ThreadingUnixStreamServer(str(self.socket_path), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="sandbox-manager", daemon=True).start()

    def close(self) -> None:
        """Remove every host, the bridge and the socket (snapshots, which are files, stay)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            sandboxes, self._sandboxes = list(self._sandboxes.values()), {}
            self._reservations = {}
        for sandbox in sandboxes:
            self._remove(sandbox)
        if self._bridge_made:
            self._remove_bridge()
            self._bridge_made = False
        self.socket_path.unlink(missing_ok=True)

    def remove_leftovers(self) -> list[str]:
        """What an earlier run recorded and did not remove (it was killed): removed now; their names."""
        removed = []
        for record_dir in sorted(self.hosts_dir.glob("*")) if self.hosts_dir.exists() else []:
            record_file = record_dir / "record.json"
            record = json.loads(record_file.read_text()) if record_file.exists() else {}
            pid, started = record.get("unshare_pid"), record.get("unshare_start")
            # The pid is killed only if it is still the process that was recorded.
            if pid and started and _process_start(pid) == started:
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid)
                removed.append(f"sandbox {record.get('address', record_dir.name)} (pid {pid})")
            if record.get("cgroup") and Path(record["cgroup"]).exists():
                remove_cgroup_subtree(Path(record["cgroup"]))
            if record.get("veth") and link_exists(record["veth"]):
                delete_link(record["veth"])
                removed.append(f"veth {record['veth']}")
            shutil.rmtree(record_dir, ignore_errors=True)
        if (self.state_dir / "bridge").exists() and link_exists(BRIDGE):
            self._remove_bridge()
            removed.append(f"bridge {BRIDGE}")
        return removed

    def _remove_bridge(self) -> None:
        delete_link(BRIDGE)
        (self.state_dir / "bridge").unlink(missing_ok=True)

    # --- hosts -------------------------------------------------------------------------------

    def create(self, keys: list[str], hostname: str, users: list[HostUser], candidates: list[str],
               reservation: str | None = None) -> str:
        """A host known by `keys` (its URN, its ids); its disk from the first candidate naming a snapshot.

        With `reservation`, the host gets the address reserved under that key (`reserve`).
        """
        base = next((self._snapshot_path(c) for c in candidates if self._snapshot_path(c).exists()), None)
        with self._lock:
            existing = self._find(keys[0])
            if existing is not None:  # the same resource created again (a retried command): the same host
                return existing.address
            if reservation is not None:
                index = self._reserved_index(reservation)
                if index is None:
                    raise SandboxError(f"no address is reserved for {reservation}")
                if index in self._sandboxes:
                    raise SandboxError(f"the address reserved for {reservation} has a host already")
            else:
                index = self._free_index()
            work = self.hosts_dir / str(index)
            work.mkdir(parents=True)
            # Placeholder until the host runs: the index is taken, and a crash leaves a record.
            self._sandboxes[index] = Sandbox(index=index, keys=list(keys), host=None)  # type: ignore[arg-type]
        veth = _veth(index)
        self._write_record(work, {"keys": keys, "address": f"{SUBNET}.{index}", "veth": veth})
        try:
            host = start_host(
                work / "host", VM_INIT, hostname=hostname, users=users, address=f"{SUBNET}.{index}", veth=veth,
                bridge=BRIDGE, base_upper=base / "upper" if base else None,
            )
        except BaseException:
            with self._lock:
                self._sandboxes.pop(index, None)
            shutil.rmtree(work, ignore_errors=True)
            raise
        self._write_record(work, {
            "keys": keys, "address": f"{SUBNET}.{index}", "veth": veth, "unshare_pid": host.unshare_pid,
            "unshare_start": _process_start(host.unshare_pid), "cgroup": str(host.cgroup) if host.cgroup else None,
        })
        with self._lock:
            self._sandboxes[index].host = host
        log.info("sandbox host %s (%s) is up for %s; users: %s", f"{SUBNET}.{index}", hostname, keys[0],
                 ", ".join(f"{u.name} ({len(u.keys)} key(s){', sudo' if u.sudo else ''})" for u in users) or "none")
        return f"{SUBNET}.{index}"

    def address(self, key: str) -> str | None:
        """The address of the host `key` names, or the address reserved under `key`."""
        with self._lock:
            sandbox = self._find(key)
            if sandbox is not None and sandbox.host is not None:
                return sandbox.address
            index = self._reserved_index(key)
            return f"{SUBNET}.{index}" if index is not None else None

    def reserve(self, keys: list[str]) -> str:
        """An address kept for a host created later (`create(reservation=...)`), known by `keys`."""
        with self._lock:
            index = self._reserved_index(keys[0])
            if index is None:  # not a retried command
                index = self._free_index()
                self._reservations[index] = list(keys)
        log.info("sandbox address %s reserved for %s", f"{SUBNET}.{index}", keys[0])
        return f"{SUBNET}.{index}"

    def release(self, key: str) -> bool:
        """Free the address reserved under `key`; a host still on it is removed with it."""
        with self._lock:
            index = self._reserved_index(key)
            if index is None:
                return False
            del self._reservations[index]
            sandbox = self._sandboxes.get(index)
            if sandbox is not None and sandbox.host is not None:
                del self._sandboxes[index]
            else:
                sandbox = None
        if sandbox is not None:
            self._remove(sandbox)
            log.info("sandbox host %s removed with its address's reservation (%s)", sandbox.address, key)
        log.info("sandbox address %s released (%s)", f"{SUBNET}.{index}", key)
        return True

    def destroy(self, key: str) -> bool:
        with self._lock:
            sandbox = self._find(key)
            if sandbox is None or sandbox.host is None:
                return False
            del self._sandboxes[sandbox.index]
        self._remove(sandbox)
        log.info("sandbox host %s removed (%s)", sandbox.address, key)
        return True

    def snapshot(self, key: str, candidates: list[str]) -> bool:
        """Copy the disk of the host the first candidate names, as snapshot `key`; else that of the
        first candidate naming a snapshot (an image made from a disk snapshot); False if none does."""
        with self._lock:
            sandbox = next((s for c in candidates if (s := self._find(c)) is not None and s.host is not None), None)
        source = None if sandbox is not None else next(
            (self._snapshot_path(c) for c in candidates if c != key and self._snapshot_path(c).exists()), None)
        if sandbox is None and source is None:
            return False
        destination = self._snapshot_path(key)
        shutil.rmtree(destination, ignore_errors=True)
        destination.mkdir(parents=True)
        (destination / "key").write_text(key)
        if sandbox is not None:
            sandbox.host.copy_upper_layer(destination / "upper")
            log.info("snapshot %s: the disk of %s copied", key, sandbox.address)
        else:
            shutil.copytree(source / "upper", destination / "upper", symlinks=True)
            log.info("snapshot %s: copied from snapshot %s", key, (source / "key").read_text())
        return True

    def delete_snapshot(self, key: str) -> None:
        shutil.rmtree(self._snapshot_path(key), ignore_errors=True)

    def hosts(self) -> list[str]:
        with self._lock:
            return sorted(s.address for s in self._sandboxes.values() if s.host is not None)

    def _find(self, key: str) -> Sandbox | None:
        return next((s for s in self._sandboxes.values() if key in s.keys), None)

    def _reserved_index(self, key: str) -> int | None:
        return next((index for index, keys in self._reservations.items() if key in keys), None)

    def _free_index(self) -> int:
        """An address neither a host nor a reservation holds (under the lock)."""
        used = set(self._sandboxes) | set(self._reservations)
        index = next((i for i in range(FIRST_HOST, LAST_HOST + 1) if i not in used), None)
        if index is None:
            raise SandboxError(f"all {LAST_HOST - FIRST_HOST + 1} sandbox addresses of {SUBNET}.0/24 are in use")
        return index

    def _snapshot_path(self, key: str) -> Path:
        return self.snapshots_dir / _snapshot_dir_name(key)

    def _remove(self, sandbox: Sandbox) -> None:
        stop_host(sandbox.host)
        delete_link(_veth(sandbox.index))  # gone with the namespace already; a leftover otherwise
        shutil.rmtree(self.hosts_dir / str(sandbox.index), ignore_errors=True)

    @staticmethod
    def _write_record(work: Path, record: dict) -> None:
        temporary = work / "record.json.new"
        temporary.write_text(json.dumps(record))
        temporary.replace(work / "record.json")

    # --- protocol ----------------------------------------------------------------------------

    def _answer(self, rfile, wfile) -> None:
        raw = rfile.readline(MAX_REQUEST_BYTES + 1)
        try:
            if len(raw) > MAX_REQUEST_BYTES:
                raise SandboxError(f"request larger than {MAX_REQUEST_BYTES} bytes")
            answer = {"ok": True, **self._handle(json.loads(raw))}
        except (SandboxError, ValueError, KeyError, TypeError) as error:
            answer = {"ok": False, "error": str(error) or type(error).__name__}
        except Exception as error:  # the stand-in reports it as the resource's failure
            log.exception("sandbox request failed")
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        wfile.write(json.dumps(answer).encode() + b"\n")

    def _handle(self, request: dict) -> dict:
        op = request["op"]
        if op == "create":
            users = [HostUser(name=u["name"], keys=tuple(u["keys"]), sudo=bool(u["sudo"])) for u in request["users"]]
            keys = [str(k) for k in request["keys"]]
            reservation = request.get("reservation")
            candidates = [str(c) for c in request["candidates"]]
            return {"address": self.create(keys, str(request["hostname"]), users, candidates,
                                           str(reservation) if reservation is not None else None)}
        if op == "reserve":
            return {"address": self.reserve([str(k) for k in request["keys"]])}
        if op == "release":
            return {"released": self.release(str(request["key"]))}
        if op == "address":
            return {"address": self.address(str(request["key"]))}
        if op == "destroy":
            return {"destroyed": self.destroy(str(request["key"]))}
        if op == "snapshot":
            return {"copied": self.snapshot(str(request["key"]), [str(c) for c in request["candidates"]])}
        if op == "delete_snapshot":
            self.delete_snapshot(str(request["key"]))
            return {}
        raise SandboxError(f"unknown request {op!r}")


def request(socket_path: str, message: dict, timeout_s: float = 300) -> dict:
    """One request to the manager at `socket_path`; its answer (SandboxError when it failed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(socket_path)
        sock.sendall(json.dumps(message).encode() + b"\n")
        answer = json.loads(sock.makefile("rb").readline())
    if not answer.get("ok"):
        raise SandboxError(answer.get("error") or "the sandbox manager failed")
    return answer


def _run_ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise SandboxError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def _wait_gone(pid: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while _process_start(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
