"""`orch serve` and `orch worker`: process entry points with one-line errors."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from orchestrator.settings import SettingsError, load_settings

log = logging.getLogger("orch")


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pika narrates every connection step at INFO.
    logging.getLogger("pika").setLevel(logging.WARNING)


def serve(host: str, port: int) -> int:
    import uvicorn

    from orchestrator.api.app import create_app
    from orchestrator.runtime import Runtime

    _configure_logging()
    try:
        settings = load_settings()
        runtime = Runtime(settings)
    except SettingsError as error:
        print(f"orch serve: {error}", file=sys.stderr)
        return 2
    mode = f"RabbitMQ at {settings.amqp_url}" if settings.amqp_url else "in-process workers"
    store = settings.mongodb_url or f"embedded store in {settings.data_dir}"
    log.info("orch serving on http://%s:%d (MongoDB: %s; operations: %s; Pulumi backend: %s)",
             host, port, store, mode, settings.pulumi_backend_url)
    uvicorn.run(create_app(runtime), host=host, port=port, log_level="warning", access_log=False,
                http="orchestrator.api.http_protocol:HeaderLimitedHttpToolsProtocol")
    return 0


def worker() -> int:
    from orchestrator import db
    from orchestrator.dispatch import AmqpConsumer, AmqpPublisher
    from orchestrator.engine import StackEngine
    from orchestrator.runtime import Sweeper
    from orchestrator.worker import Worker

    _configure_logging()
    try:
        settings = load_settings()
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
    log.info("orch worker consuming from %s", settings.amqp_url)
    thread = threading.Thread(target=consumer.run_forever, name="consumer")
    thread.start()
    thread.join()
    sweeper.stop()
    publisher.close()
    if store is not None:
        store.stop()
    return 0


def create_token(user: str | None, admin: bool, instance: str | None) -> int:
    from orchestrator.auth import mint_agent_token, mint_user_token

    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"orch token create: {error}", file=sys.stderr)
        return 2
    if instance:
        from orchestrator import db
        from orchestrator.auth import token_hash
        from orchestrator.models import Instance

        store = db.connect(settings)
        try:
            token, expires = mint_agent_token(settings.jwt_secret, instance)
            updated = Instance.objects(name=instance, status__ne="deleted").update_one(
                set__agent_token_hash=token_hash(token), set__agent_token_expires_at=expires.replace(tzinfo=None)
            )
        finally:
            if store is not None:
                store.stop()
        if not updated:
            print(f"orch token create: no instance named {instance!r}", file=sys.stderr)
            return 2
        print(f"# agent token for instance {instance}, expires {expires.isoformat()}; replaces its previous token", file=sys.stderr)
    else:
        token = mint_user_token(settings.jwt_secret, user, admin=admin)
    print(token)
    return 0
