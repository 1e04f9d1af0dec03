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

    def pretty_key(self, key: str) -> str:
        """A key as the CLI shows it: without the namespace when it is the project's."""
        namespace, _, name = key.rpartition(":")
        return name if namespace == self.name else key

    def program_file(self) -> Path:
        """The file Python runs for the project: `main` (default: the project directory), `__main__.py` in a directory."""
        main_setting = str(self.settings.get("main") or ".")
        main = self.directory / main_setting
        path = main / "__main__.py" if main.is_dir() else main
        if not path.is_file():
            raise ProjectError(f"the project's main {main_setting!r} has no program: {path} is missing")
        return path

    def runtime_name(self) -> str:
        runtime = self.settings.get("runtime")
        return str(runtime.get("name") if isinstance(runtime, dict) else runtime)

    def interpreter(self) -> str:
        """The project's Python: its `virtualenv` option's, or python3 (the stand-in creates no virtualenv)."""
        runtime = self.settings.get("runtime")
        name = self.runtime_name()
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


def config_scalar_text(value: object) -> str:
    """A typed config scalar (YAML int, bool, float) as the CLI shows it: `true`, `5`, `1.5`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


# `config set --type`: how each type's text becomes the typed value kept in the settings file.
CONFIG_TYPES = {"string": str, "int": int, "bool": lambda text: {"true": True, "false": False}[text], "float": float}


def typed_config_value(text: str, type_name: str) -> object:
    if type_name not in CONFIG_TYPES:
        raise ProjectError(f"invalid type {type_name!r}; must be one of string, int, bool, or float".replace("'", '"'))
    try:
        return CONFIG_TYPES[type_name](text)
    except (ValueError, KeyError):
        raise ProjectError(f"could not set config: {text!r} is not a valid {type_name}") from None


def compact_json(value: object) -> str:
    """JSON as Go's encoder writes a config object: no spaces, keys sorted, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def is_secure(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {"secure"} and isinstance(value["secure"], str)


def contains_secure(value: object) -> bool:
    if is_secure(value):
        return True
    if isinstance(value, dict):
        return any(contains_secure(item) for item in value.values())
    if isinstance(value, list):
        return any(contains_secure(item) for item in value)
    return False


def map_secure(value: object, transform) -> object:
    """`value` with every `{secure: ciphertext}` leaf replaced by `transform(ciphertext)`."""
    if is_secure(value):
        return transform(value["secure"])
    if isinstance(value, dict):
        return {key: map_secure(item, transform) for key, item in value.items()}
    if isinstance(value, list):
        return [map_secure(item, transform) for item in value]
    return value


class ConfigPathError(ProjectError):
    pass


def parse_key_path(name: str) -> list[str | int]:
    """A config key's name as a property path (`a.b[0]["c.d"]`), as the CLI's strict path parser reads it."""
    segments: list[str | int] = []
    index = 0
    expect_name = True
    while index < len(name):
        char = name[index]
        if char == "[":
            close = name.find("]", index)
            if close < 0:
                raise ConfigPathError(f"invalid config key path: missing closing bracket in {name!r}")
            inner = name[index + 1 : close]
            if inner.startswith('"'):
                end = index + 1
                text = []
                end += 1
                while end < len(name) and name[end] != '"':
                    if name[end] == "\\" and end + 1 < len(name):
                        end += 1
                    text.append(name[end])
                    end += 1
                if end + 1 >= len(name) or name[end + 1] != "]":
                    raise ConfigPathError(f"invalid config key path: missing closing bracket in {name!r}")
                segments.append("".join(text))
                index = end + 2
            else:
                if not inner.isdigit():
                    raise ConfigPathError(f"invalid config key path: invalid array index {inner!r} in {name!r}")
                segments.append(int(inner))
                index = close + 1
            expect_name = False
        elif char == ".":
            if expect_name:
                raise ConfigPathError(f"invalid config key path: unexpected '.' in {name!r}")
            index += 1
            expect_name = True
        else:
            end = index
            while end < len(name) and name[end] not in ".[":
                end += 1
            segments.append(name[index:end])
            index = end
            expect_name = False
    if not segments:
        raise ConfigPathError("empty config key path")
    if not isinstance(segments[0], str):
        raise ConfigPathError("first path segement of config key must be a string")
    if segments[0] == "":
        raise ConfigPathError("config key is empty")
    return segments


def format_path(path: list[str | int]) -> str:
    """A property path as the CLI prints it in errors."""
    text = ""
    for position, segment in enumerate(path):
        if isinstance(segment, int):
            text += f"[{segment}]"
        elif any(not (c.isalnum() or c in "_-") for c in segment):
            text += '["' + segment.replace('"', '\\"') + '"]'
        else:
            text += segment if position == 0 else f".{segment}"
    return text


def coerce_path_value(value: str) -> object:
    """A value set with --path is a bool or an integer when it reads as one (the CLI's coercion)."""
    if value in ("true", "false"):
        return value == "true"
    try:
        number = int(value, 10)
    except ValueError:
        return value
    return number if str(number) == value else value


def _new_container(accessor: str | int) -> object:
    return [None] * (accessor + 1) if isinstance(accessor, int) else {}


def set_at_path(container: object, prefix: list, path: list, new: object) -> object:
    """`container` with `new` at `path` (lists grow by one at most), as the CLI's config object Set."""
    if not path:
        return new
    head = path[0]
    if not isinstance(container, (list, dict)):
        if container is None or len(prefix) == 1:
            container = _new_container(head)
        else:
            raise ConfigPathError(
                f"{format_path(prefix)}: expected {'an array' if isinstance(head, int) else 'a map'}"
            )
    here = [*prefix, head]
    if isinstance(container, list):
        if not isinstance(head, int):
            raise ConfigPathError(f"{format_path(here)}: key for an array must be an int")
        if head < 0 or head > len(container):
            raise ConfigPathError(f"{format_path(here)}: array index out of range")
        if head == len(container):
            container.append(None)
        container[head] = set_at_path(container[head], here, path[1:], new)
        return container
    if not isinstance(head, str):
        raise ConfigPathError(f"{format_path(here)}: key for a map must be a string")
    if len(path) == 1 and not container and head == "secure" and isinstance(new, str):
        raise ConfigPathError("\"secure\" key in maps of length 1 are reserved")
    container[head] = set_at_path(container.get(head), here, path[1:], new)
    return container


def get_at_path(value: object, path: list) -> tuple[bool, object]:
    for segment in path:
        if isinstance(value, list) and isinstance(segment, int) and 0 <= segment < len(value):
            value = value[segment]
        elif isinstance(value, dict) and isinstance(segment, str) and segment in value and not is_secure(value):
            value = value[segment]
        else:
            return False, None
    return True, value


def delete_at_path(value: object, path: list) -> None:
    for segment in path[:-1]:
        found, value = get_at_path(value, [segment])
        if not found:
            return
    last = path[-1]
    if isinstance(value, list) and isinstance(last, int) and 0 <= last < len(value):
        del value[last]
    elif isinstance(value, dict) and isinstance(last, str):
        value.pop(last, None)


@dataclass
class ConfigValue:
    """A config value: a string, or an object (dict/list, possibly with `{secure: ...}` leaves)."""

    value: object
    secret: bool = False

    @property
    def is_object(self) -> bool:
        return isinstance(self.value, (dict, list))

    def text(self) -> str:
        """The value as the CLI prints it: strings as they are, objects as compact JSON."""
        return compact_json(self.value) if self.is_object else config_scalar_text(self.value)

    def as_json(self, show_secrets: bool) -> dict:
        """The CLI's configValueJSON: value (omitted for a hidden secret), objectValue for objects, secret."""
        shown: dict = {}
        if not self.secret or show_secrets:
            shown["value"] = self.text()
            if self.is_object:
                shown["objectValue"] = self.value
        shown["secret"] = self.secret
        return shown


@dataclass
class StackConfig:
    """Pulumi.<stack>.yaml in the project directory: the stack's config and its encryption salt."""

    path: Path
    values: dict[str, ConfigValue] = field(default_factory=dict)
    encryption_salt: str | None = None
    other_settings: dict = field(default_factory=dict)

    @staticmethod
    def default_path(project: Project, stack: str) -> Path:
        """Pulumi.<stack>.yaml (or an existing .yml/.json) in the project directory."""
        for suffix in (".yaml", ".yml", ".json"):
            candidate = project.directory / f"Pulumi.{stack}{suffix}"
            if candidate.is_file():
                return candidate
        return project.directory / f"Pulumi.{stack}.yaml"

    @classmethod
    def load(
        cls, project: Project, stack: str, state_salt: str | None, config_file: Path | None = None
    ) -> StackConfig:
        """Reads the stack's config file (`--config-file` when given); `state_salt` (from the stack's
        state) is used when the file has none."""
        path = config_file or cls.default_path(project, stack)
        raw = _load_settings_file(path) if path.is_file() else {}
        config = cls(path=path, encryption_salt=raw.pop("encryptionsalt", None) or state_salt)
        for key, value in (raw.pop("config", None) or {}).items():
            key = project.full_key(str(key))  # a key without a namespace is the project's, as in the CLI
            if is_secure(value):
                config.values[key] = ConfigValue(value=value["secure"], secret=True)
            elif isinstance(value, (dict, list)):
                config.values[key] = ConfigValue(value=value, secret=contains_secure(value))
            else:
                config.values[key] = ConfigValue(value=value)  # a YAML int/bool/float keeps its type
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
        if not entry.secret:
            return entry.value
        crypter = crypter or self.crypter()
        if entry.is_object:
            return map_secure(entry.value, crypter.decrypt)
        return crypter.decrypt(entry.value)

    def stored(self, key: str) -> object:
        """The value as Pulumi.<stack>.yaml holds it (`{secure: ...}` for a secret string)."""
        entry = self.values[key]
        return {"secure": entry.value} if entry.secret and not entry.is_object else entry.value

    def set(self, key: str, value: object, secret: bool) -> None:
        if secret:
            self.values[key] = ConfigValue(value=self.crypter().encrypt(str(value)), secret=True)
        else:
            self.values[key] = ConfigValue(value=value)

    def set_path(self, key: str, value: str, secret: bool, typed: object = None) -> None:
        """`config set --path`: the key's name is a property path into an object value; `typed` is
        the value of `--type` (else the text is coerced to a bool or an integer when it reads as one)."""
        namespace, _, name = key.rpartition(":")
        path = parse_key_path(name)
        root_key = f"{namespace}:{path[0]}"
        if len(path) == 1:
            self.set(root_key, value if typed is None else typed, secret)
            return
        leaf: object
        if secret:
            leaf = {"secure": self.crypter().encrypt(value)}
        else:
            leaf = coerce_path_value(value) if typed is None else typed
        root = self.stored(root_key) if root_key in self.values else None
        updated = set_at_path(root, [path[0]], path[1:], leaf)
        self.values[root_key] = ConfigValue(value=updated, secret=contains_secure(updated))

    def get_path(self, key: str) -> ConfigValue | None:
        """`config get --path`: the decrypted value at the path, or None when there is none."""
        namespace, _, name = key.rpartition(":")
        path = parse_key_path(name)
        root_key = f"{namespace}:{path[0]}"
        if root_key not in self.values:
            return None
        if len(path) == 1:
            return ConfigValue(self.plaintext(root_key), self.values[root_key].secret)
        found, value = get_at_path(self.stored(root_key), path[1:])
        if not found:
            return None
        if is_secure(value):
            return ConfigValue(self.crypter().decrypt(value["secure"]), True)
        secret = contains_secure(value)
        if secret:
            value = map_secure(value, self.crypter().decrypt)
        return ConfigValue(value, secret)

    def remove_path(self, key: str) -> None:
        """`config rm --path`: removes the member at the path (the whole key for a one-segment path)."""
        namespace, _, name = key.rpartition(":")
        path = parse_key_path(name)
        root_key = f"{namespace}:{path[0]}"
        if len(path) == 1:
            self.values.pop(root_key, None)
            return
        if root_key not in self.values:
            return
        root = self.stored(root_key)
        delete_at_path(root, path[1:])
        self.values[root_key] = ConfigValue(value=root, secret=contains_secure(root))

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
            document["config"] = {key: self.stored(key) for key in sorted(self.values)}
        write_atomically(self.path, yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
