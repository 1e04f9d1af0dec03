"""Service settings, read from ORCH_* environment variables.

A bad value raises SettingsError whose message names the variable, so the
command line can print one clear line instead of a traceback.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from orchestrator.auth import SigningSecrets
from stacks.spec import MAX_IDLE_MINUTES, MIN_IDLE_MINUTES_SCHEMA

KNOWN_CLOUDS = ("aws", "gcp", "azure", "docker")
MIN_JWT_SECRET_BYTES = 32
# Previous secrets kept during a rotation: each costs one more HMAC per rejected token.
MAX_PREVIOUS_JWT_SECRETS = 4
# The data dir holds secrets (signing secret, store key, Pulumi passphrase, the embedded
# store's files): only the service's user may read it.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
STORE_KEY_BYTES = 32  # a Fernet key: 16 bytes for HMAC-SHA256, 16 for AES-128
DEFAULT_SIGNIN_CODE_TTL_S = 24 * 3600
# ORCH_SSH_REACH_TIMEOUT_S's default: a new VM's sshd is up well within it.
DEFAULT_SSH_REACH_TIMEOUT_S = 120
# ORCH_CONFIGURE_TIMEOUT_S's default: the whole playbook, the user's bootstrap script included
# (a script that installs GPU drivers takes tens of minutes; one that never ends is stopped).
DEFAULT_CONFIGURE_TIMEOUT_S = 3600


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


# A source checkout (the project installed editable, as scripts/serve does) keeps its state
# in `.orch/` at its root, whatever the cwd; an installed package in the user's data dir.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir(env: dict) -> Path:
    """ORCH_DATA_DIR's default: `<checkout>/.orch`, else `$XDG_DATA_HOME/orch` (~/.local/share/orch)."""
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        return PROJECT_ROOT / ".orch"
    base = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME") or str(Path.home()), ".local", "share")
    return Path(base) / "orch"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    mongodb_url: str | None
    amqp_url: str | None
    pulumi_backend_url: str
    pulumi_command: Path | None
    # The current secret (new tokens) and the previous ones (ORCH_JWT_PREVIOUS_SECRETS).
    jwt_secret: SigningSecrets
    # The Fernet key that encrypts secrets kept in MongoDB (instance admin SSH keys).
    store_key: bytes
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
    # The web page (docs/DESIGN.md, "Web page"): where its build is, whether the
    # service prints a one-time sign-in link (no ORCH_JWT_SECRET: embedded defaults),
    # how long such a link stays valid, and the page's feature flags.
    web_dir: Path = PROJECT_ROOT / "web" / "dist"
    signin_link: bool = False
    signin_code_ttl_s: int = DEFAULT_SIGNIN_CODE_TTL_S
    feature_sidebar: bool = False
    # How long configuration waits for a new instance's SSH port before failing with
    # "cannot reach ADDRESS:22 over SSH (timed out after N s)".
    ssh_reach_timeout_s: int = DEFAULT_SSH_REACH_TIMEOUT_S
    # How long configuration (the playbook's runs, retries included) may take in all before the
    # playbook is stopped: "the playbook did not finish within N s and was stopped in task 'T'".
    configure_timeout_s: int = DEFAULT_CONFIGURE_TIMEOUT_S
    # `orch serve --simulate` (set by the command, not from the environment): the stand-in is
    # the engine; with sandbox_hosts (root), instances are sandbox hosts, else they are not configured.
    simulated: bool = False
    sandbox_hosts: bool = False
    # Idle autostop (orchestrator/autostop): how often the checker looks, how long before acting it
    # warns the instance's users, and the shortest idle window a spec may ask for (tests lower it).
    autostop_check_s: int = 60
    autostop_warn_s: int = 300
    autostop_min_idle_minutes: float = 5.0
    # Periodic drift detection (orchestrator/operations/refresh.py): each instance is refreshed
    # (`pulumi refresh`) about this often; 0 turns it off.
    refresh_interval_s: int = 0
    # [spot] How long a restart after an agent's preemption notice waits for the preemption itself
    # (AWS gives two minutes' notice; GCP and Azure about 30 s), so it does not start a machine that is
    # still running and about to be taken (orchestrator/operations/preemption.py).
    preemption_grace_s: int = 120
    # Agent samples (orchestrator/metrics/store.py): raw samples are kept this long, rollups
    # (min/avg/max per metrics_rollup_s) this long; the rollup width divides an hour.
    metrics_raw_retention_s: int = 86400
    metrics_rollup_retention_s: int = 30 * 86400
    metrics_rollup_s: int = 300

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


def _flag_setting(env: dict, name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={env[name]!r} is not a flag: use true or false")


# Every integer setting is a count or seconds; beyond this (about 31 years of seconds) a value only
# overflows the clock and date arithmetic it feeds (`time.monotonic() + 10**400` raises).
MAX_INT_SETTING = 10**9


# How much of a malformed value an error quotes: enough to recognise it, never a whole pasted file.
SHOWN_VALUE_CHARS = 40


def _shown(raw: str) -> str:
    return repr(raw) if len(raw) <= SHOWN_VALUE_CHARS else f"{raw[:SHOWN_VALUE_CHARS]!r}... ({len(raw)} characters)"


def _int_setting(env: dict, name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={_shown(raw)} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    if value > MAX_INT_SETTING:
        raise SettingsError(f"{name} must be at most {MAX_INT_SETTING}")
    return value


def _float_setting(env: dict, name: str, default: float, minimum: float, maximum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={_shown(raw)} is not a number") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name}={raw} must be between {minimum:g} and {maximum:g}")
    return value


# Query options of a URL whose values are secrets (MongoDB's TLS key password, for one).
_SECRET_QUERY_WORDS = ("pass", "secret", "token", "key")
REDACTED = "***"


def redact_url(url: str | None) -> str | None:
    """The URL without its password (and secret query options), for logs and error messages."""
    if not url:
        return url
    parts = urlparse(url)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{hosts}" if colon else f"{user}@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, REDACTED if any(word in k.lower() for word in _SECRET_QUERY_WORDS) else v) for k, v in pairs], safe="*"
        )
    return urlunparse(parts._replace(netloc=netloc, query=query))


def _url_setting(env: dict, name: str, schemes: tuple[str, ...]) -> str | None:
    raw = env.get(name) or None
    if raw is not None and urlparse(raw).scheme not in schemes:
        raise SettingsError(f"{name}={redact_url(raw)!r} must be a URL starting with one of: {', '.join(s + '://' for s in schemes)}")
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


def ensure_private_dir(path: Path) -> Path:
    """Create path (and parents) readable only by this user; narrow it if it exists wider."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_mode & 0o777 == PRIVATE_DIR_MODE:
        return path
    # A shared directory (/tmp, a home) must not be narrowed under its other users.
    if info.st_mode & (stat.S_ISVTX | stat.S_IWOTH) or info.st_uid != os.getuid():
        raise SettingsError(
            f"ORCH_DATA_DIR={str(path)!r} is shared (mode {oct(info.st_mode & 0o7777)}, owner uid {info.st_uid}): "
            "use a directory of the service's own"
        )
    path.chmod(PRIVATE_DIR_MODE)
    return path


def read_or_create_secret_file(path: Path, generate) -> str:
    """The secret kept in path; created once, mode 0600, by whichever process comes first.

    Written to a temporary file and linked into place, so a concurrent reader
    never sees a half-written secret and two creators never both win.
    """
    if path.exists():
        return path.read_text().strip()
    ensure_private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(generate())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process created it first: theirs is the one
    finally:
        temporary.unlink()
    return path.read_text().strip()


# The setting that replaces each generated secret file.
_SECRET_SETTINGS = {"store-key": "ORCH_STORE_KEY", "jwt-secret": "ORCH_JWT_SECRET"}


def _service_secret_file(path: Path, generate, create: bool) -> str:
    """The secret in path; made when missing only by the service itself (create), never by a tool beside it."""
    if create or path.is_file():
        return read_or_create_secret_file(path, generate)
    raise SettingsError(
        f"{path.parent} has no {path.name}: the service has not made one there "
        f"(start it with this ORCH_DATA_DIR, or give the same {_SECRET_SETTINGS[path.name]} it was given)"
    )


def _store_key(env: dict, data_dir: Path, create: bool = True) -> bytes:
    raw = env.get("ORCH_STORE_KEY") or _service_secret_file(
        data_dir / "store-key",
        lambda: base64.urlsafe_b64encode(secrets.token_bytes(STORE_KEY_BYTES)).decode(),
        create,
    )
    try:
        valid = len(base64.urlsafe_b64decode(raw.encode())) == STORE_KEY_BYTES
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        source = "ORCH_STORE_KEY" if env.get("ORCH_STORE_KEY") else str(data_dir / "store-key")
        raise SettingsError(f"{source} must hold {STORE_KEY_BYTES} bytes in url-safe base64 (a Fernet key)")
    return raw.encode()


def _checked_secret(name: str, secret: str) -> str:
    size = len(secret.encode())
    # HS256 keys shorter than the hash output are brute-forceable (RFC 7518, section 3.2).
    if size < MIN_JWT_SECRET_BYTES:
        raise SettingsError(f"{name} is {size} bytes; it must be at least {MIN_JWT_SECRET_BYTES}")
    return secret


def _previous_jwt_secrets(env: dict) -> tuple[str, ...]:
    raw = env.get("ORCH_JWT_PREVIOUS_SECRETS") or ""
    previous = tuple(part.strip() for part in raw.split(",") if part.strip())
    if len(previous) > MAX_PREVIOUS_JWT_SECRETS:
        raise SettingsError(
            f"ORCH_JWT_PREVIOUS_SECRETS holds {len(previous)} secrets; at most {MAX_PREVIOUS_JWT_SECRETS}"
        )
    for position, secret in enumerate(previous, start=1):
        _checked_secret(f"ORCH_JWT_PREVIOUS_SECRETS (secret {position})", secret)
    return previous


def _jwt_secret(env: dict, data_dir: Path, create: bool = True) -> SigningSecrets:
    previous = _previous_jwt_secrets(env)
    if env.get("ORCH_JWT_SECRET"):
        return SigningSecrets(_checked_secret("ORCH_JWT_SECRET", env["ORCH_JWT_SECRET"]), previous)
    # Generated once and kept, so tokens survive a restart of the service.
    return SigningSecrets(
        _service_secret_file(data_dir / "jwt-secret", lambda: secrets.token_urlsafe(48), create), previous
    )


def load_settings(env: dict | None = None, *, service: bool = True) -> Settings:
    """The settings; `service=False` (tools beside the service: `orch token`) reads the
    service's data dir and secrets and refuses where they do not exist, never making them."""
    env = dict(os.environ if env is None else env)
    data_dir = Path(env.get("ORCH_DATA_DIR") or default_data_dir(env)).resolve()
    if not service and not data_dir.is_dir():
        raise SettingsError(f"no service data dir at {data_dir}: start the service first or set ORCH_DATA_DIR")

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
        jwt_secret=_jwt_secret(env, data_dir, create=service),
        store_key=_store_key(env, data_dir, create=service),
        public_url=public_url.rstrip("/"),
        clouds=clouds,
        max_parallel_operations=_int_setting(env, "ORCH_MAX_PARALLEL_OPERATIONS", 8),
        operation_lease_s=_int_setting(env, "ORCH_OPERATION_LEASE_S", 120, minimum=5),
        agent_report_interval_s=_int_setting(env, "ORCH_AGENT_INTERVAL_S", 30),
        agent_first_report_timeout_s=_int_setting(env, "ORCH_AGENT_FIRST_REPORT_TIMEOUT_S", 600),
        redispatch_after_s=_int_setting(env, "ORCH_REDISPATCH_AFTER_S", 30),
        goofys_source=_goofys_source(env),
        web_dir=Path(env.get("ORCH_WEB_DIR") or PROJECT_ROOT / "web" / "dist").resolve(),
        signin_link=not env.get("ORCH_JWT_SECRET"),
        signin_code_ttl_s=_int_setting(env, "ORCH_SIGNIN_CODE_TTL_S", DEFAULT_SIGNIN_CODE_TTL_S, minimum=60),
        feature_sidebar=_flag_setting(env, "ORCH_FEATURE_SIDEBAR", False),
        ssh_reach_timeout_s=_int_setting(env, "ORCH_SSH_REACH_TIMEOUT_S", DEFAULT_SSH_REACH_TIMEOUT_S),
        configure_timeout_s=_int_setting(env, "ORCH_CONFIGURE_TIMEOUT_S", DEFAULT_CONFIGURE_TIMEOUT_S),
        autostop_check_s=_int_setting(env, "ORCH_AUTOSTOP_CHECK_S", 60),
        autostop_warn_s=_int_setting(env, "ORCH_AUTOSTOP_WARN_S", 300, minimum=0),
        autostop_min_idle_minutes=_float_setting(
            env, "ORCH_AUTOSTOP_MIN_IDLE_MINUTES", 5.0, MIN_IDLE_MINUTES_SCHEMA, MAX_IDLE_MINUTES
        ),
        refresh_interval_s=_int_setting(env, "ORCH_REFRESH_INTERVAL_S", 0, minimum=0),
        preemption_grace_s=_int_setting(env, "ORCH_PREEMPTION_GRACE_S", 120, minimum=0),
        metrics_raw_retention_s=_int_setting(env, "ORCH_METRICS_RAW_RETENTION_S", 86400, minimum=3600),
        metrics_rollup_retention_s=_int_setting(env, "ORCH_METRICS_ROLLUP_RETENTION_S", 30 * 86400, minimum=3600),
        metrics_rollup_s=_rollup_width(env),
    )


def _rollup_width(env: dict) -> int:
    """ORCH_METRICS_ROLLUP_S: 60..3600 s and a divisor of an hour (a raw bucket holds whole rollup slots)."""
    value = _int_setting(env, "ORCH_METRICS_ROLLUP_S", 300, minimum=60)
    if value > 3600 or 3600 % value:
        raise SettingsError(f"ORCH_METRICS_ROLLUP_S={value} must divide an hour (3600 s): 60, 300, 600, 900, 3600...")
    return value
