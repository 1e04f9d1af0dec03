"""Operation kinds as units of their own, each `run(worker, op, log_line)`; the worker looks them up by kind.

They use the worker's engine, settings and `_step`, and import nothing of the worker (no import circle).
"""

from __future__ import annotations

from orchestrator.operations import power, reconcile, refresh

OPERATION_UNITS = {
    "stop": power.stop,
    "start": power.start,
    "refresh": refresh.refresh,
    "reconcile": reconcile.reconcile,
}
