"""Service settings, read from ORCH_* environment variables.

A bad value raises SettingsError whose message names the variable, so the
command line can print one clear line instead of a traceback.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

KNOWN_CLOUDS = ("aws", "gcp", "azure", "docker")
MIN_JWT_SECRET_BYTES = 32


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    mongodb_url: str | None
    amqp_url: str | None
    pulumi_backend_url: str
    pulumi_command: Path | None
    jwt_secret: str
    public_url: str
    clouds: tuple[str, ...]
    max_parallel_operations: int = 8
    operation_lease_s: int = 120
    agent_report_interval_s: int = 30
    agent_first_report_timeout_s: int = 600
    redispatch_after_s: int = 30
    # Where instances get goofys: an http(s) URL they download from (a mirror for offline
    # hosts), or a file on this machine copied to them; None: the playbook's release URL.
    goofys_source: str | None = None

    @property
    def goofys_playbook_vars(self) -> dict[str, str]:
        """The goofys role's variables for goofys_source."""
        if self.goofys_source is None:
            return {}
        if _is_download_url(self.goofys_source):
            return {"goofys_url": self.goofys_source}
        return {"goofys_src": self.goofys_source}

    @property
    def pulumi_bin(self) -> str:
        """The pulumi executable the Automation API will run."""
        if self.pulumi_command is not None:
            return str(self.pulumi_command / "bin" / "pulumi")
        return shutil.which("pulumi") or "pulumi"


def _int_setting(env: dict, name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _url_setting(env: dict, name: str, schemes: tuple[str, ...]) -> str | None:
    raw = env.get(name) or None
    if raw is not None and urlparse(raw).scheme not in schemes:
        raise SettingsError(f"{name}={raw!r} must be a URL starting with one of: {', '.join(s + '://' for s in schemes)}")
    return raw


def _is_download_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def _goofys_source(env: dict) -> str | None:
    raw = env.get("ORCH_GOOFYS_URL") or None
    if raw is None or _is_download_url(raw):
        return raw
    path = Path(raw.removeprefix("file://")).resolve()
    if not path.is_file():
        raise SettingsError(f"ORCH_GOOFYS_URL={raw!r} is neither an http(s) URL nor a file on this machine")
    return str(path)


def _jwt_secret(env: dict, data_dir: Path) -> str:
    if env.get("ORCH_JWT_SECRET"):
        secret = env["ORCH_JWT_SECRET"]
        size = len(secret.encode())
        # HS256 keys shorter than the hash output are brute-forceable (RFC 7518, section 3.2).
        if size < MIN_JWT_SECRET_BYTES:
            raise SettingsError(f"ORCH_JWT_SECRET is {size} bytes; it must be at least {MIN_JWT_SECRET_BYTES}")
        return secret
    # Generated once and kept, so tokens survive a restart of the service.
    path = data_dir / "jwt-secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret


def load_settings(env: dict | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    data_dir = Path(env.get("ORCH_DATA_DIR") or "./.orch").resolve()

    clouds = tuple(c.strip() for c in (env.get("ORCH_CLOUDS") or ",".join(KNOWN_CLOUDS)).split(",") if c.strip())
    unknown = [c for c in clouds if c not in KNOWN_CLOUDS]
    if unknown:
        raise SettingsError(f"ORCH_CLOUDS names unknown cloud(s) {', '.join(unknown)}; known: {', '.join(KNOWN_CLOUDS)}")
    if not clouds:
        raise SettingsError("ORCH_CLOUDS is empty: enable at least one of " + ", ".join(KNOWN_CLOUDS))

    pulumi_command = None
    if env.get("ORCH_PULUMI_COMMAND"):
        pulumi_command = Path(env["ORCH_PULUMI_COMMAND"]).resolve()
        if not (pulumi_command / "bin" / "pulumi").is_file():
            raise SettingsError(f"ORCH_PULUMI_COMMAND={env['ORCH_PULUMI_COMMAND']!r} has no bin/pulumi")

    backend = env.get("ORCH_PULUMI_BACKEND_URL") or f"file://{data_dir / 'pulumi'}"
    public_url = _url_setting(env, "ORCH_PUBLIC_URL", ("http", "https")) or "http://127.0.0.1:8000"

    return Settings(
        data_dir=data_dir,
        mongodb_url=_url_setting(env, "ORCH_MONGODB_URL", ("mongodb", "mongodb+srv")),
        amqp_url=_url_setting(env, "ORCH_AMQP_URL", ("amqp", "amqps")),
        pulumi_backend_url=backend,
        pulumi_command=pulumi_command,
        jwt_secret=_jwt_secret(env, data_dir),
        public_url=public_url.rstrip("/"),
        clouds=clouds,
        max_parallel_operations=_int_setting(env, "ORCH_MAX_PARALLEL_OPERATIONS", 8),
        operation_lease_s=_int_setting(env, "ORCH_OPERATION_LEASE_S", 120, minimum=5),
        agent_report_interval_s=_int_setting(env, "ORCH_AGENT_INTERVAL_S", 30),
        agent_first_report_timeout_s=_int_setting(env, "ORCH_AGENT_FIRST_REPORT_TIMEOUT_S", 600),
        redispatch_after_s=_int_setting(env, "ORCH_REDISPATCH_AFTER_S", 30),
        goofys_source=_goofys_source(env),
    )
