"""Where the service is and who we are: flags, then environment, then the config file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from orchestrator.client.errors import ClientError, ExitCode

DEFAULT_URL = "http://127.0.0.1:8000"
CONFIG_KEYS = ("url", "token")


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str | None


def config_path(env: Mapping[str, str]) -> Path:
    """`$XDG_CONFIG_HOME/orch/config.yaml`, or `~/.config/orch/config.yaml` without it."""
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or str(Path.home()), ".config")
    return Path(base) / "orch" / "config.yaml"


def read_config_file(path: Path) -> dict[str, str]:
    """The file's `url` and `token`; an absent file is an empty config, a malformed one an error."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ClientError(f"{path}: cannot read the config file: {error.strerror}", ExitCode.INVALID) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ClientError(f"{path}: not valid YAML: {error}".replace("\n", " "), ExitCode.INVALID) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClientError(f"{path}: expected a mapping with keys {', '.join(CONFIG_KEYS)}", ExitCode.INVALID)
    unknown = sorted(str(key) for key in data if key not in CONFIG_KEYS)
    if unknown:
        raise ClientError(
            f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(CONFIG_KEYS)})", ExitCode.INVALID
        )
    for key, value in data.items():
        if not isinstance(value, str):
            raise ClientError(f"{path}: {key} must be a string", ExitCode.INVALID)
    return data


def checked_url(url: str) -> str:
    """The service's URL without a trailing slash; it may hold a base path (`http://host/orch`: a proxy's prefix)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"service URL {url!r} must look like http://HOST[:PORT][/BASE-PATH]", ExitCode.INVALID)
    if parts.query or parts.fragment:
        raise ClientError(f"service URL {url!r} must not hold a query or fragment", ExitCode.INVALID)
    return url.rstrip("/")


def resolve(url_flag: str | None, token_flag: str | None, env: Mapping[str, str] | None = None) -> ClientConfig:
    """Each setting from the first that has it: flag, ORCH_URL/ORCH_TOKEN, config file; the URL defaults."""
    env = os.environ if env is None else env
    url = url_flag or env.get("ORCH_URL")
    token = token_flag or env.get("ORCH_TOKEN")
    if url is None or token is None:
        from_file = read_config_file(config_path(env))
        url = url or from_file.get("url")
        token = token or from_file.get("token")
    return ClientConfig(url=checked_url(url or DEFAULT_URL), token=token or None)
