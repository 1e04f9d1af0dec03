"""Wiring: settings -> MongoDB, Pulumi engine, dispatcher, worker, recovery sweep."""

from __future__ import annotations

import logging
import threading

from orchestrator import db
from orchestrator.autostop.checker import AutostopService
from orchestrator.dispatch import AmqpPublisher, InProcessDispatcher
from orchestrator.engine import StackEngine
from orchestrator.ingest import AgentIngest
from orchestrator.operations.periodic_refresh import PeriodicRefresh
from orchestrator.metrics.maintenance_process import MaintenanceProcess
from orchestrator.services import Orchestrator
from orchestrator.settings import Settings, SettingsError
from orchestrator.tokens import RevokedTokens
from orchestrator.worker import Worker, recover

log = logging.getLogger("orch.runtime")

SWEEP_INTERVAL_S = 5.0


class Sweeper:
    """Periodically re-dispatches operations left queued or orphaned by a dead worker."""

    def __init__(self, dispatch, interval_s: float = SWEEP_INTERVAL_S, redispatch_after_s: float = 30.0):
        self.dispatch = dispatch
        self.interval_s = interval_s
        self.redispatch_after_s = redispatch_after_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="recovery-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                count = recover(self.dispatch, self.redispatch_after_s)
                if count:
                    log.info("recovery sweep dispatched %d operation(s)", count)
            except Exception:  # a sweep that fails is retried on the next tick
                log.exception("recovery sweep failed")
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._stop.set()


class Runtime:
    """Everything `orch serve` runs: built on startup, closed on shutdown."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = db.connect(settings)
        try:
            self.sandboxes = _start_sandboxes(settings) if settings.sandbox_hosts else None
        except SettingsError:
            if self.store is not None:
                self.store.stop()
            raise
        self.engine = StackEngine(settings)
        self.worker = Worker(settings, self.engine)
        if settings.amqp_url:
            self.dispatcher = AmqpPublisher(settings.amqp_url)
        else:
            self.dispatcher = InProcessDispatcher(self.worker, settings.max_parallel_operations)
        self.orchestrator = Orchestrator(settings, self.engine, self.dispatcher.dispatch)
        self.ingest = AgentIngest(settings, dispatch=self.dispatcher.dispatch)
        self.metrics_maintenance = MaintenanceProcess(
            db.store_url(settings, self.store), settings.metrics_raw_retention_s, settings.metrics_rollup_retention_s, settings.metrics_rollup_s
        )
        self.revoked_tokens = RevokedTokens()
        self.sweeper = Sweeper(self.dispatcher.dispatch, redispatch_after_s=settings.redispatch_after_s)
        self.sweeper.start()
        self.autostop = AutostopService(settings, self.dispatcher.dispatch)
        self.autostop.start()
        self.periodic_refresh: PeriodicRefresh | None = None
        if settings.refresh_interval_s:  # drift detection on a timer (off by default)
            self.periodic_refresh = PeriodicRefresh(self.orchestrator, settings.refresh_interval_s)
            self.periodic_refresh.start()

    def close(self) -> None:
        self.autostop.stop()
        self.sweeper.stop()
        if self.periodic_refresh is not None:
            self.periodic_refresh.stop()
        self.dispatcher.close()
        self.ingest.close()
        self.metrics_maintenance.close()
        if self.store is not None:
            self.store.stop()
        if self.sandboxes is not None:
            self.sandboxes.close()


def _start_sandboxes(settings: Settings):
    """`orch serve --simulate` as root: the sandbox manager, whose socket the Pulumi stand-in is told of."""
    import os

    from orchestrator.sandbox.host import SandboxError
    from orchestrator.sandbox.manager import SOCKET_ENV, SandboxManager

    manager = SandboxManager(settings.data_dir / "sandboxes")
    try:
        manager.start()
    except SandboxError as error:  # e.g. the bridge exists: another simulated service runs here
        manager.close()
        raise SettingsError(f"--simulate: {error}") from None
    # The Automation API runs pulumi with this process's environment.
    os.environ[SOCKET_ENV] = str(manager.socket_path)
    return manager
