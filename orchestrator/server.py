"""`orch serve` and `orch worker`: process entry points with one-line errors."""

from __future__ import annotations

import datetime as dt
import errno
import gc
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from orchestrator.settings import SettingsError, ensure_private_dir, load_settings, redact_url

log = logging.getLogger("orch")


# Files the service creates (store, keys, stack state, Ansible's key files) are for its user only.
SERVICE_UMASK = 0o077


def _private_process() -> None:
    """Files this process creates are readable by its user only."""
    os.umask(SERVICE_UMASK)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pika narrates every connection step at INFO.
    logging.getLogger("pika").setLevel(logging.WARNING)


# /proc/net/tcp's state code for a listening socket.
TCP_LISTEN = "0A"
# `orch serve`'s exit code when the application's startup failed (uvicorn's own).
STARTUP_FAILED = 3
# The backlog uvicorn would use for the socket it binds itself.
LISTEN_BACKLOG = 2048


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on `port` (any address), from /proc/net/tcp and tcp6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is ADDR:PORT in hex; st is the state; inode is the tenth field.
            if len(fields) > 9 and fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def port_holder(port: int) -> int | None:
    """The pid of a process listening on `port`, when /proc shows it (only this user's processes are readable)."""
    targets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not targets:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(proc.name)
        except OSError:  # another user's process, or one that ended meanwhile
            continue
    return None


class PortUnavailable(Exception):
    """The service's address cannot be listened on; the message says why and what to do."""


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port, bound before anything else starts so that a port in use is said plainly."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart does not wait for TIME_WAIT
    try:
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            pid = port_holder(port)
            by = f" (by pid {pid})" if pid is not None else ""
            raise PortUnavailable(f"port {port} is in use{by}; choose another with --port") from None
        raise PortUnavailable(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


# The Pulumi CLI stand-in of a source checkout: the engine of `orch serve --simulate`.
STANDIN_ROOT = Path(__file__).resolve().parent.parent / "tests" / "pulumi_standin"


def _simulation_settings(port: int) -> tuple[bool, str]:
    """Environment defaults for `--simulate` (set before the settings are read); (sandbox hosts, banner line)."""
    from orchestrator.sandbox.host import missing_requirements
    from orchestrator.sandbox.manager import BRIDGE, BRIDGE_ADDRESS, SUBNET

    if os.environ.get("ORCH_AMQP_URL"):
        raise SettingsError("--simulate runs operations in this process (its sandbox hosts are here): unset ORCH_AMQP_URL")
    if not (STANDIN_ROOT / "bin" / "pulumi").is_file():
        raise SettingsError(f"--simulate needs the Pulumi stand-in of a source checkout ({STANDIN_ROOT} is missing)")
    os.environ["ORCH_PULUMI_COMMAND"] = str(STANDIN_ROOT)
    missing = missing_requirements()
    if missing:
        return False, (f"SIMULATED clouds, without sandbox hosts ({', '.join(missing)} missing): "
                       "instances are created without configuration (configure is skipped)")
    # The agents in the sandboxes reach the service at the bridge's address.
    os.environ.setdefault("ORCH_PUBLIC_URL", f"http://{BRIDGE_ADDRESS}:{port}")
    return True, (f"SIMULATED clouds: no cloud is called; each AWS/GCP/Azure instance is a sandbox host on this "
                  f"machine (bridge {BRIDGE}, {SUBNET}.0/24, no route out)")


def serve(host: str, port: int, simulate: bool = False) -> int:
    import dataclasses

    import uvicorn

    from orchestrator.api.agent_report_path import AgentReportPath
    from orchestrator.api.app import create_app
    from orchestrator.runtime import Runtime

    _private_process()
    _configure_logging()
    try:
        sock = listen(host, port)
    except PortUnavailable as error:
        print(f"orch serve: {error}", file=sys.stderr)
        return 2
    extra_sockets = []
    try:
        if simulate:
            sandbox_hosts, banner = _simulation_settings(port)
        settings = load_settings()
        if simulate:
            settings = dataclasses.replace(settings, simulated=True, sandbox_hosts=sandbox_hosts)
            print(f"orch serve: {banner}", file=sys.stderr, flush=True)
        ensure_private_dir(settings.data_dir)
        runtime = Runtime(settings)
    except SettingsError as error:
        sock.close()
        print(f"orch serve: {error}", file=sys.stderr)
        return 2
    if settings.sandbox_hosts and host not in ("0.0.0.0", "::"):
        from orchestrator.sandbox.manager import BRIDGE_ADDRESS

        # The agents in the sandboxes report to the bridge's address (ORCH_PUBLIC_URL's default).
        try:
            extra_sockets.append(listen(BRIDGE_ADDRESS, port))
        except PortUnavailable as error:
            sock.close()
            runtime.close()
            print(f"orch serve: {error}", file=sys.stderr)
            return 2
    mode = f"RabbitMQ at {redact_url(settings.amqp_url)}" if settings.amqp_url else "in-process workers"
    store = redact_url(settings.mongodb_url) or f"embedded store in {settings.data_dir}"
    log.info("orch serving on http://%s:%d (MongoDB: %s; operations: %s; Pulumi backend: %s)",
             host, port, store, mode, redact_url(settings.pulumi_backend_url))
    _announce_page(settings, host, port)
    config = uvicorn.Config(AgentReportPath(create_app(runtime), runtime), host=host, port=port, log_level="warning", access_log=False,
                            http="orchestrator.api.http_protocol:HeaderLimitedHttpToolsProtocol")
    server = uvicorn.Server(config)
    gc.freeze()  # what startup built lives as long as the process: full collections need not scan it
    server.run(sockets=[sock, *extra_sockets])
    # As uvicorn.run: an application whose startup failed exits 3.
    return 0 if server.started else STARTUP_FAILED


def _browser_address(host: str, port: int) -> str:
    """host:port as a browser on this machine reaches it (a wildcard address is reached at loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _announce_page(settings, host: str, port: int) -> None:
    """One line when the page is not built; on embedded defaults, the one-time sign-in link.

    The code is in the URL's fragment, which browsers never send: it reaches no server log.
    """
    from orchestrator.api.web import NOT_BUILT_MESSAGE, is_built
    from orchestrator.tokens import create_signin_code

    if not is_built(settings.web_dir):
        print(NOT_BUILT_MESSAGE, flush=True)
    if settings.signin_link:
        code = create_signin_code(dt.timedelta(seconds=settings.signin_code_ttl_s))
        print(f"sign in: http://{_browser_address(host, port)}/signin#code={code}", flush=True)


def worker() -> int:
    from orchestrator import db
    from orchestrator.dispatch import AmqpConsumer, AmqpPublisher
    from orchestrator.engine import StackEngine
    from orchestrator.runtime import Sweeper
    from orchestrator.worker import Worker

    _private_process()
    _configure_logging()
    try:
        settings = load_settings()
        ensure_private_dir(settings.data_dir)
        if not settings.amqp_url:
            raise SettingsError("ORCH_AMQP_URL is not set: `orch worker` consumes operations from RabbitMQ")
        store = db.connect(settings)
        engine = StackEngine(settings)
    except SettingsError as error:
        print(f"orch worker: {error}", file=sys.stderr)
        return 2
    consumer = AmqpConsumer(settings.amqp_url, Worker(settings, engine), settings.max_parallel_operations)
    publisher = AmqpPublisher(settings.amqp_url)
    sweeper = Sweeper(publisher.dispatch, redispatch_after_s=settings.redispatch_after_s)
    sweeper.start()

    def stop(signum, frame) -> None:
        consumer.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("orch worker consuming from %s", redact_url(settings.amqp_url))
    thread = threading.Thread(target=consumer.run_forever, name="consumer")
    thread.start()
    thread.join()
    sweeper.stop()
    publisher.close()
    if store is not None:
        store.stop()
    return 0


def create_token(
    user: str | None, admin: bool, instance: str | None, owner: str | None = None, ttl: dt.timedelta | None = None
) -> int:
    from orchestrator.auth import USER_TOKEN_TTL, mint_agent_token

    try:
        settings = load_settings(service=False)
    except SettingsError as error:
        print(f"orch token create: {error}", file=sys.stderr)
        return 2
    if instance and ttl is not None:
        print("orch token create: --ttl is for user tokens (agent tokens renew themselves)", file=sys.stderr)
        return 2
    if instance:
        from orchestrator import db
        from orchestrator.auth import token_hash
        from orchestrator.models import Instance, claim_key

        if not owner:
            print("orch token create: --instance needs --owner USER (names are unique per owner)", file=sys.stderr)
            return 2
        store = db.connect(settings)
        try:
            # The instance that exists under that name now; the token's subject is its id.
            found = Instance.objects(claim=claim_key(owner, instance)).only("id").first()
            if found is not None:
                token, expires = mint_agent_token(settings.jwt_secret, found.agent_identity)
                Instance.objects(id=found.id).update_one(
                    set__agent_token_hash=token_hash(token), set__agent_token_expires_at=expires.replace(tzinfo=None)
                )
        finally:
            if store is not None:
                store.stop()
        if found is None:
            print(f"orch token create: {owner} has no instance named {instance!r}", file=sys.stderr)
            return 2
        print(
            f"# agent token for instance {owner}/{instance} (id {found.agent_identity}), expires "
            f"{expires.isoformat()}; replaces its previous token",
            file=sys.stderr,
        )
    else:
        from orchestrator.tokens import create_user_token

        connected = _connect_for("create")
        if connected is None:
            return 2
        _, store = connected
        try:
            # Recorded, so `orch token list` shows it and `orch token revoke` can revoke it.
            issued = create_user_token(settings.jwt_secret, user, admin=admin, ttl=ttl or USER_TOKEN_TTL)
        except ValueError as error:  # a bad user name or lifetime
            print(f"orch token create: {error}", file=sys.stderr)
            return 2
        finally:
            if store is not None:
                store.stop()
        print(f"# {issued.role} token for {issued.user}, jti {issued.jti}, expires {issued.expires_at.isoformat()}",
              file=sys.stderr)
        token = issued.token
    print(token)
    return 0


def _connect_for(command: str):
    """(settings, embedded store or None) for a token command; None after printing why not."""
    from orchestrator import db

    try:
        settings = load_settings(service=False)
        return settings, db.connect(settings)
    except SettingsError as error:
        print(f"orch token {command}: {error}", file=sys.stderr)
        return None


def list_tokens(include_expired: bool) -> int:
    from orchestrator.tokens import list_user_tokens

    connected = _connect_for("list")
    if connected is None:
        return 2
    _, store = connected
    try:
        records = list_user_tokens(include_expired=include_expired)
    finally:
        if store is not None:
            store.stop()
    print(f"{'JTI':<32}  {'USER':<39}  {'ROLE':<5}  {'ISSUED (UTC)':<19}  {'EXPIRES (UTC)':<19}  REVOKED (UTC)")
    for record in records:
        revoked = record.revoked_at.isoformat(timespec="seconds") if record.revoked_at else "-"
        print(f"{record.jti:<32}  {record.user:<39}  {record.role:<5}  {record.issued_at.isoformat(timespec='seconds'):<19}  "
              f"{record.expires_at.isoformat(timespec='seconds'):<19}  {revoked}")
    return 0


def revoke_token(jti: str) -> int:
    from orchestrator.tokens import UnknownToken, revoke_user_token

    connected = _connect_for("revoke")
    if connected is None:
        return 2
    _, store = connected
    try:
        record = revoke_user_token(jti)
    except UnknownToken as error:
        print(f"orch token revoke: {error}", file=sys.stderr)
        return 2
    finally:
        if store is not None:
            store.stop()
    print(f"revoked {record.jti} ({record.role} token for {record.user}, "
          f"revoked at {record.revoked_at.isoformat(timespec='seconds')} UTC)")
    return 0
