"""The project side of the CLI: Pulumi.yaml, Pulumi.<stack>.yaml (stack config) and the current stack."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .backend import write_atomically
from .passphrase import Crypter

PROJECT_FILE_NAMES = ("Pulumi.yaml", "Pulumi.yml", "Pulumi.json")


class ProjectError(Exception):
    pass


def _load_settings_file(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        if path.suffix == ".json":
            return json.load(handle) or {}
        return yaml.safe_load(handle) or {}


@dataclass
class Project:
    directory: Path
    name: str
    settings: dict

    @classmethod
    def find(cls, start: Path) -> Project:
        """The project whose Pulumi.yaml is in `start` or the nearest directory above it."""
        for directory in (start, *start.parents):
            for file_name in PROJECT_FILE_NAMES:
                path = directory / file_name
                if path.is_file():
                    settings = _load_settings_file(path)
                    return cls(directory=directory, name=str(settings["name"]), settings=settings)
        raise ProjectError(
            f"no Pulumi.yaml project file found (searching upwards from {start}). "
            "If you have not created a project yet, use `pulumi new` to do so"
        )

    def backend_url(self) -> str:
        url = os.environ.get("PULUMI_BACKEND_URL") or (self.settings.get("backend") or {}).get("url")
        if not url:
            raise ProjectError(
                "no backend configured: the Pulumi CLI stand-in needs PULUMI_BACKEND_URL=file://DIR "
                "(or backend.url in Pulumi.yaml)"
            )
        return url

    def full_key(self, key: str) -> str:
        """Config keys without a namespace belong to the project (`key` -> `<project>:key`)."""
        return key if ":" in key else f"{self.name}:{key}"

    def program_file(self) -> Path:
        """The file Python runs for the project: `main` (default: the project directory), `__main__.py` in a directory."""
        main_setting = str(self.settings.get("main") or ".")
        main = self.directory / main_setting
        path = main / "__main__.py" if main.is_dir() else main
        if not path.is_file():
            raise ProjectError(f"the project's main {main_setting!r} has no program: {path} is missing")
        return path

    def interpreter(self) -> str:
        """The project's Python: its `virtualenv` option's, or python3 (the stand-in creates no virtualenv)."""
        runtime = self.settings.get("runtime")
        name = runtime.get("name") if isinstance(runtime, dict) else runtime
        if name != "python":
            raise ProjectError(f"the Pulumi CLI stand-in runs local programs of runtime python only, not {name!r}")
        options = (runtime.get("options") or {}) if isinstance(runtime, dict) else {}
        if options.get("virtualenv"):
            python = self.directory / options["virtualenv"] / "bin" / "python"
            if not python.exists():
                raise ProjectError(f"the project's virtualenv has no interpreter: {python} is missing")
            return str(python)
        python3 = shutil.which("python3")
        if python3 is None:
            raise ProjectError("no python3 on PATH to run the project's program")
        return python3

    @contextlib.contextmanager
    def program_host(self) -> Iterator[str]:
        """The address of a language host running this project's program, for `up`/`preview` without --client."""
        host = subprocess.Popen(
            [self.interpreter(), str(Path(__file__).with_name("program_host.py")), str(self.program_file())],
            cwd=self.directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            port = host.stdout.readline().strip()
            if not port.isdigit():
                raise ProjectError(f"the project's program host did not start (exit status {host.wait()})")
            yield f"127.0.0.1:{port}"
        finally:
            host.stdin.close()
            try:
                host.wait(timeout=10)
            except subprocess.TimeoutExpired:
                host.kill()
                host.wait()

    # The current stack is kept per project under PULUMI_HOME, as the CLI's workspace file.
    def _workspace_file(self) -> Path:
        home = Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi")
        digest = hashlib.sha1(str(self.directory / "Pulumi.yaml").encode()).hexdigest()
        return home / "workspaces" / f"{self.name}-{digest}-workspace.json"

    def current_stack(self) -> str | None:
        path = self._workspace_file()
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8")).get("stack")

    def set_current_stack(self, stack: str | None) -> None:
        write_atomically(self._workspace_file(), json.dumps({"stack": stack}))


def _config_text(value: object) -> object:
    """YAML scalars as the CLI reads them: config values are strings (objects stay objects)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


@dataclass
class ConfigValue:
    value: object
    secret: bool = False

    def as_json(self, show_secrets: bool) -> dict:
        shown: dict = {"secret": self.secret}
        if not self.secret or show_secrets:
            if isinstance(self.value, str):
                shown["value"] = self.value
            else:
                shown["value"] = json.dumps(self.value)
                shown["objectValue"] = self.value
        return shown


@dataclass
class StackConfig:
    """Pulumi.<stack>.yaml in the project directory: the stack's config and its encryption salt."""

    path: Path
    values: dict[str, ConfigValue] = field(default_factory=dict)
    encryption_salt: str | None = None
    other_settings: dict = field(default_factory=dict)

    @classmethod
    def load(cls, project: Project, stack: str, state_salt: str | None) -> StackConfig:
        """Reads the stack's config file; `state_salt` (from the stack's state) is used when the file has none."""
        path = project.directory / f"Pulumi.{stack}.yaml"
        for suffix in (".yaml", ".yml", ".json"):
            candidate = project.directory / f"Pulumi.{stack}{suffix}"
            if candidate.is_file():
                path = candidate
                break
        raw = _load_settings_file(path) if path.is_file() else {}
        config = cls(path=path, encryption_salt=raw.pop("encryptionsalt", None) or state_salt)
        for key, value in (raw.pop("config", None) or {}).items():
            if isinstance(value, dict) and set(value) == {"secure"}:
                config.values[key] = ConfigValue(value=value["secure"], secret=True)
            else:
                config.values[key] = ConfigValue(value=_config_text(value))
        config.other_settings = raw
        return config

    def crypter(self) -> Crypter:
        if self.encryption_salt is None:
            crypter = Crypter.create()
            self.encryption_salt = crypter.salt_state
            return crypter
        return Crypter(self.encryption_salt)

    def plaintext(self, key: str, crypter: Crypter | None = None) -> object:
        entry = self.values[key]
        if entry.secret:
            return (crypter or self.crypter()).decrypt(entry.value)
        return entry.value

    def set(self, key: str, value: object, secret: bool) -> None:
        if secret:
            self.values[key] = ConfigValue(value=self.crypter().encrypt(str(value)), secret=True)
        else:
            self.values[key] = ConfigValue(value=value)

    def decrypted(self) -> dict[str, ConfigValue]:
        """All values with secrets decrypted (the key is derived only if there is a secret)."""
        crypter = self.crypter() if any(entry.secret for entry in self.values.values()) else None
        return {key: ConfigValue(self.plaintext(key, crypter), entry.secret) for key, entry in self.values.items()}

    def save(self) -> None:
        document: dict = {}
        if self.encryption_salt:
            document["encryptionsalt"] = self.encryption_salt
        document.update(self.other_settings)
        if self.values:
            document["config"] = {
                key: {"secure": entry.value} if entry.secret else entry.value
                for key, entry in sorted(self.values.items())
            }
        write_atomically(self.path, yaml.safe_dump(document, sort_keys=False))
