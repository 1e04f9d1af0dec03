"""The file ("diy") backend: checkpoints, history and locks under `<backend dir>/.pulumi/`.

Layout as the real CLI's project-scoped file backend:
  .pulumi/meta.yaml                                        {version: 1}
  .pulumi/stacks/<project>/<stack>.json                    the checkpoint
  .pulumi/history/<project>/<stack>/<stack>-<ns>.history.json     one per update (UpdateInfo)
  .pulumi/history/<project>/<stack>/<stack>-<ns>.checkpoint.json  the checkpoint after it
  .pulumi/locks/organization/<project>/<stack>/<uuid>.json       one per process holding the stack
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

ORGANIZATION = "organization"


class BackendError(Exception):
    pass


class StackNotFoundError(BackendError):
    def __init__(self, stack: str) -> None:
        super().__init__(f"no stack named '{stack}' found")


class StackLockedError(BackendError):
    pass


def stack_short_name(stack_ref: str) -> str:
    """`org/project/stack` or `project/stack` or `stack` -> `stack`."""
    return stack_ref.rsplit("/", 1)[-1]


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rfc3339(timestamp: object) -> object:
    """A lock's timestamp as the CLI prints it in the locked error: RFC 3339 to the second."""
    if not isinstance(timestamp, str):
        return timestamp
    try:
        parsed = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    if parsed.utcoffset() == dt.timedelta(0):
        return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")
    return parsed.isoformat(timespec="seconds")


def write_atomically(path: Path, content: str) -> None:
    """Replaces `path` with `content` so a concurrent reader sees the old file or the new, never a part.

    As the CLI's file backend: a temporary file in the same directory (so the rename stays on one
    file system), flushed to disk, then renamed over the target; the directory entry is synced too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class FileBackend:
    def __init__(self, url: str, project: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise BackendError(f"the Pulumi CLI stand-in supports only file:// backends, not {url!r}")
        root = unquote(parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else unquote(parsed.path)
        self.url = url
        self.root = Path(os.path.expanduser(root))
        self.project = project
        self.bookkeeping = self.root / ".pulumi"

    def _ensure_meta(self) -> None:
        meta = self.bookkeeping / "meta.yaml"
        if not meta.exists():
            write_atomically(meta, "version: 1\n")

    def qualified_name(self, stack: str) -> str:
        return f"{ORGANIZATION}/{self.project}/{stack}"

    def stack_path(self, stack: str) -> Path:
        return self.bookkeeping / "stacks" / self.project / f"{stack}.json"

    def history_dir(self, stack: str) -> Path:
        return self.bookkeeping / "history" / self.project / stack

    def lock_dir(self, stack: str) -> Path:
        return self.bookkeeping / "locks" / ORGANIZATION / self.project / stack

    # --- stacks ------------------------------------------------------------------------------

    def exists(self, stack: str) -> bool:
        return self.stack_path(stack).is_file()

    def list_stacks(self) -> list[str]:
        directory = self.bookkeeping / "stacks" / self.project
        if not directory.is_dir():
            return []
        return sorted(path.name[: -len(".json")] for path in directory.glob("*.json"))

    def create(self, stack: str, deployment: dict) -> None:
        if self.exists(stack):
            raise BackendError(f"stack '{self.qualified_name(stack)}' already exists")
        self._ensure_meta()
        self.write_checkpoint(stack, deployment)

    def remove(self, stack: str) -> None:
        self.stack_path(stack).unlink()
        history = self.history_dir(stack)
        if history.is_dir():
            for path in history.iterdir():
                path.unlink()
            history.rmdir()

    def read_checkpoint(self, stack: str) -> dict:
        """The stack's latest deployment (`checkpoint.latest`) in checkpoint form."""
        try:
            document = json.loads(self.stack_path(stack).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StackNotFoundError(stack) from None
        except ValueError as error:  # as the CLI: a corrupt checkpoint is an error naming it, not a crash
            raise BackendError(f"failed to load checkpoint: {error}") from None
        return document["checkpoint"].get("latest") or {}

    def last_modified(self, stack: str) -> float:
        return self.stack_path(stack).stat().st_mtime

    def write_checkpoint(self, stack: str, deployment: dict) -> str:
        document = {"version": 3, "checkpoint": {"stack": self.qualified_name(stack), "latest": deployment}}
        content = json.dumps(document, indent=4)
        write_atomically(self.stack_path(stack), content)
        return content

    # --- history -----------------------------------------------------------------------------

    def add_history(self, stack: str, update_info: dict, checkpoint_content: str) -> None:
        stamp = time.time_ns()
        directory = self.history_dir(stack)
        write_atomically(directory / f"{stack}-{stamp}.checkpoint.json", checkpoint_content)
        write_atomically(directory / f"{stack}-{stamp}.history.json", json.dumps(update_info, indent=4))

    def history(self, stack: str) -> list[dict]:
        """UpdateInfo records, newest first."""
        directory = self.history_dir(stack)
        if not directory.is_dir():
            return []
        paths = sorted(
            directory.glob("*.history.json"), key=lambda path: int(path.name.rsplit("-", 1)[1].split(".")[0])
        )
        return [json.loads(path.read_text(encoding="utf-8")) for path in reversed(paths)]

    # --- locks -------------------------------------------------------------------------------

    def _lock_files(self, stack: str) -> list[Path]:
        directory = self.lock_dir(stack)
        return sorted(directory.glob("*.json")) if directory.is_dir() else []

    def is_locked(self, stack: str) -> bool:
        return bool(self._lock_files(stack))

    def _remove_abandoned_locks(self, stack: str) -> None:
        """Locks left by a process on this host that no longer runs are taken over (removed)."""
        hostname = socket.gethostname()
        for path in self._lock_files(stack):
            try:
                content = json.loads(path.read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            if content.get("hostname") == hostname and not _pid_alive(int(content.get("pid", 0))):
                path.unlink(missing_ok=True)

    def _locked_error(self, stack: str, locks: list[Path]) -> StackLockedError:
        lines = [
            f"the stack is currently locked by {len(locks)} lock(s). Either wait for the other "
            "process(es) to end or delete the lock file with `pulumi cancel`."
        ]
        for path in locks:
            try:
                content = json.loads(path.read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError):
                content = {}
            lines.append(
                f"  file://{path}: created by {content.get('username')}@{content.get('hostname')} "
                f"(pid {content.get('pid')}) at {_rfc3339(content.get('timestamp'))}"
            )
        return StackLockedError("\n".join(lines))

    def ensure_unlocked(self, stack: str) -> None:
        locks = self._lock_files(stack)
        if locks:
            raise self._locked_error(stack, locks)

    def lock(self, stack: str) -> Path:
        """Takes the stack's lock; raises StackLockedError (the CLI's message) when another process holds it.

        As the real backend does, it writes its own lock file and then checks for others, so two
        processes racing for one stack cannot both win.
        """
        self._remove_abandoned_locks(stack)
        others = self._lock_files(stack)
        if others:
            raise self._locked_error(stack, others)
        mine = self.lock_dir(stack) / f"{uuid.uuid4()}.json"
        content = {
            "pid": os.getpid(),
            "username": getpass.getuser(),
            "hostname": socket.gethostname(),
            # Go's encoding of a time.Time (RFC 3339 with fractional seconds), as the CLI writes it.
            "timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        write_atomically(mine, json.dumps(content, separators=(",", ":")))
        others = [path for path in self._lock_files(stack) if path != mine]
        if others:
            mine.unlink(missing_ok=True)
            raise self._locked_error(stack, others)
        return mine

    def cancel(self, stack: str) -> int:
        """Removes every lock on the stack (`pulumi cancel`); returns how many there were."""
        locks = self._lock_files(stack)
        for path in locks:
            path.unlink(missing_ok=True)
        return len(locks)


def manifest(cli_version: str) -> dict:
    return {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(),
        "magic": hashlib.sha256(cli_version.encode()).hexdigest(),
        "version": f"v{cli_version}",
    }
