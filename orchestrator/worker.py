"""Runs operations: the Automation API, then Ansible, with rollback on failure.

The same code runs in-process under `orch serve` and in `orch worker`
processes fed by RabbitMQ. MongoDB is the source of truth: an operation is
claimed atomically (queued -> running) with a lease that a heartbeat renews,
so a duplicate delivery is dropped and a dead worker's operation is found and
resumed by the recovery sweep.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from enum import Enum

from bson import ObjectId
from bson.errors import InvalidId

from orchestrator import locks
from orchestrator.auth import mint_agent_token, token_hash
from orchestrator.engine import EngineError, StackEngine
from orchestrator.models import IllegalTransition, Instance, Operation, Snapshot, Step, claim_key, utcnow
from orchestrator.operations import OPERATION_UNITS, failover
from orchestrator.operations.preemption import record_unrecorded_actions
from orchestrator.operations.refresh import refresh_failed
from orchestrator.settings import Settings
from orchestrator.sshkeys import generate_keypair
from stacks.spec import parse_instance, parse_snapshot

log = logging.getLogger("orch.worker")

MAX_ATTEMPTS = 3
# The operation's params key that says it created its stack (and may roll it back).
CREATED_STACK = "created_stack"
# Lines kept in an operation's log in MongoDB (each at most MAX_LOG_LINE_CHARS): an
# operation document stays far below MongoDB's 16 MB, and what comes after is dropped
# with one marker line, so readers following the log by offset never miss a kept line.
MAX_LOG_LINES = 2000
MAX_LOG_LINE_CHARS = 4000
SKIPPED_CONFIGURE_STEP = "configure: skipped (simulated, no sandbox host)"
# Log lines arriving this close together are written in one update (see OperationLog).
LOG_BATCH_S = 0.5
CONFIGURE_FIELDS = ("ssh_users", "mounts", "bootstrap_script", "configure", "spot")


class Outcome(Enum):
    DONE = "done"  # finished (succeeded or failed), or not ours to run
    DEFERRED = "deferred"  # its target is busy: deliver it again shortly


class OperationFailed(Exception):
    """A step failed; the message is what the user sees as the operation's error."""


class OperationLog:
    """Appends lines to an operation's log in MongoDB as they arrive, up to MAX_LOG_LINES.

    A Pulumi run prints dozens of lines and waits for each to be handled, so lines that
    arrive within LOG_BATCH_S of the last write go out together in one update, at most
    LOG_BATCH_S later (a timer), or at flush(). Readers following the log by offset see
    every kept line in order either way.
    """

    def __init__(self, op_id: ObjectId):
        self.op_id = op_id
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._timer: threading.Timer | None = None

    def __call__(self, line: str) -> None:
        line = line.rstrip("\n")
        if not line.strip():
            return
        with self._lock:
            self._pending.append(line[:MAX_LOG_LINE_CHARS])
            if time.monotonic() - self._last_write >= LOG_BATCH_S:
                self._write()
            elif self._timer is None:
                self._timer = threading.Timer(LOG_BATCH_S, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Write the lines not written yet (an operation flushes before it ends)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._write()

    def _write(self) -> None:
        lines, self._pending = self._pending, []
        self._last_write = time.monotonic()
        if not lines:
            return
        # Conditions on the array's last kept index keep the bound atomic across writers:
        # all the lines at once when there is room for all of them, else one by one up to the bound.
        if len(lines) <= MAX_LOG_LINES and Operation.objects(
            id=self.op_id, **{f"logs__{MAX_LOG_LINES - len(lines)}__exists": False}
        ).update_one(push_all__logs=lines, set__updated_at=utcnow()):
            return
        for line in lines:
            appended = Operation.objects(id=self.op_id, **{f"logs__{MAX_LOG_LINES - 1}__exists": False}).update_one(
                push__logs=line, set__updated_at=utcnow()
            )
            if not appended:
                Operation.objects(id=self.op_id, **{f"logs__{MAX_LOG_LINES}__exists": False}).update_one(
                    push__logs=f"[log truncated: only the first {MAX_LOG_LINES} lines are kept]",
                    set__updated_at=utcnow(),
                )
                return


class Worker:
    def __init__(self, settings: Settings, engine: StackEngine):
        self.settings = settings
        self.engine = engine
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    # -- claiming ---------------------------------------------------------

    def run(self, op_id: str) -> Outcome:
        try:
            oid = ObjectId(op_id)
        except (InvalidId, TypeError):
            log.warning("dropping malformed operation id %r", op_id)
            return Outcome.DONE
        op = Operation.objects(id=oid).first()
        if op is None or op.status != "queued":
            return Outcome.DONE
        lock_key = op.lock_key
        if self._older_pending(op) or not locks.acquire(lock_key, op_id, self.settings.operation_lease_s):
            Operation.objects(id=oid).update_one(set__dispatched_at=utcnow())
            return Outcome.DEFERRED
        try:
            lease = utcnow() + dt.timedelta(seconds=self.settings.operation_lease_s)
            op = Operation.objects(id=oid, status="queued").modify(
                set__status="running",
                set__worker=self.worker_id,
                set__lease_expires_at=lease,
                inc__attempts=1,
                set__updated_at=utcnow(),
                new=True,
            )
            if op is None:  # another worker claimed it between our read and now
                return Outcome.DONE
            with self._heartbeat(op):
                status, error = self._execute(op)
        finally:
            locks.release(lock_key, op_id)
        # Written once the lock is free, so a client that sees the operation ended finds its target
        # free too; while the operation still reads as running, a later one on its target waits.
        self._finish(op, status, error)
        return Outcome.DONE

    def _older_pending(self, op: Operation) -> bool:
        """Operations on one target run in the order they were requested."""
        return (
            Operation.objects(
                lock_key=op.lock_key, status__in=("queued", "running"), created_at__lt=op.created_at, id__ne=op.id
            ).first()
            is not None
        )

    def _heartbeat(self, op: Operation):
        lease_s = self.settings.operation_lease_s

        def beat() -> None:
            lease = utcnow() + dt.timedelta(seconds=lease_s)
            Operation.objects(id=op.id, worker=self.worker_id).update_one(set__lease_expires_at=lease)
            locks.acquire(op.lock_key, str(op.id), lease_s)

        return locks.renewed(beat, lease_s, f"lease-{op.id}")

    # -- execution --------------------------------------------------------

    def _execute(self, op: Operation) -> tuple[str, str | None]:
        """Run op's handler (its failure path when it raises); the status and error it ended with."""
        log_line = OperationLog(op.id)
        # Kinds in orchestrator/operations are units of their own; the first ones are methods here.
        unit = OPERATION_UNITS.get(op.kind)
        handler: Callable[[Operation, OperationLog], None] = (
            functools.partial(unit, self) if unit else getattr(self, f"_op_{op.kind}")
        )
        if op.attempts > 1:
            log_line(f"resuming after a lost worker (attempt {op.attempts} of {MAX_ATTEMPTS})")
        try:
            if op.attempts > MAX_ATTEMPTS:
                raise OperationFailed(f"gave up after {MAX_ATTEMPTS} attempts (workers kept dying)")
            handler(op, log_line)
        except Exception as error:  # every failure ends the operation with its reason
            reason = (
                str(error)
                if isinstance(error, (OperationFailed, EngineError, IllegalTransition))
                else f"{type(error).__name__}: {error}"
            )
            log.warning("operation %s (%s %s) failed: %s", op.id, op.kind, op.target, reason)
            log_line(f"error: {reason}")
            try:
                self._fail(op, reason, log_line)
            except Exception as fail_error:
                # The operation ends even when its failure path cannot run (an illegal
                # transition, a vanished record): left running, recovery would retry it forever.
                log.warning("operation %s: its failure path failed too: %s", op.id, fail_error)
                reason += f"; recording the failure failed: {fail_error}"
                log_line(f"error: recording the failure failed: {fail_error}")
            log_line.flush()  # the whole log is there when the operation shows as ended
            return "failed", reason
        log_line.flush()
        return "succeeded", None

    def _finish(self, op: Operation, status: str, error: str | None) -> None:
        Operation.objects(id=op.id).update_one(
            set__status=status, set__error=error, set__updated_at=utcnow(), unset__lease_expires_at=True
        )

    @contextmanager
    def _step(self, op: Operation, name: str):
        index = len(Operation.objects(id=op.id).only("steps").first().steps)
        Operation.objects(id=op.id).update_one(push__steps=Step(name=name))
        try:
            yield index
        except BaseException:
            Operation.objects(id=op.id).update_one(
                **{f"set__steps__{index}__status": "failed", f"set__steps__{index}__finished_at": utcnow()}
            )
            raise
        Operation.objects(id=op.id).update_one(
            **{f"set__steps__{index}__status": "succeeded", f"set__steps__{index}__finished_at": utcnow()}
        )

    def _fail(self, op: Operation, reason: str, log_line: OperationLog) -> None:
        """The failure path of each kind: roll back what a create or snapshot made."""
        if op.kind == "create":
            instance = Instance.objects.get(id=op.target_id)
            rollback_error = self._rollback(op, instance.stack_name, log_line)
            instance.reload()
            instance.agent_token_hash = None
            if rollback_error is None:
                # Nothing holds the admin key any more: it is not kept. An update makes a new pair.
                instance.admin_private_key = None
                instance.admin_public_key = None
                # Its resources are gone: no address or outputs of theirs is shown as if it were live.
                instance.public_ip = None
                instance.outputs = {}
                instance.zone = None
                instance.region = instance.spec["region"]  # region failover: its first region, as before it began
            instance.move_to("failed", reason + (f"; rollback failed: {rollback_error}" if rollback_error else ""))
            instance.save()
        elif op.kind == "refresh":
            refresh_failed(op, reason)
        elif op.kind in ("update", "delete", "stop", "start", "reconcile"):
            instance = Instance.objects.get(id=op.target_id)
            instance.move_to("failed", reason)
            instance.save()
        elif op.kind == "snapshot_create":
            snapshot = Snapshot.objects.get(id=op.params["snapshot_id"])
            rollback_error = self._rollback(op, snapshot.stack_name, log_line)
            snapshot.reload()
            snapshot.move_to("failed", reason + (f"; rollback failed: {rollback_error}" if rollback_error else ""))
            snapshot.save()
        elif op.kind == "snapshot_delete":
            snapshot = Snapshot.objects.get(id=op.target_id)
            snapshot.move_to("failed", reason)
            snapshot.save()

    def _rollback(self, op: Operation, stack_name: str, log_line: OperationLog) -> str | None:
        """Destroy the stack, only when this operation created it (never another's resources)."""
        if not Operation.objects(id=op.id).only("params").first().params.get(CREATED_STACK):
            log_line(f"no rollback: this operation did not create stack {stack_name}")
            return None
        try:
            with self._step(op, "rollback: pulumi destroy"):
                self.engine.destroy(stack_name, on_output=log_line)
        except Exception as error:  # reported with the original failure
            return str(error)
        return None

    def _claim_stack(self, op: Operation, stack_name: str) -> None:
        """Record that this operation creates `stack_name`, so that its rollback may destroy it.

        A stack that already holds resources belongs to someone else (an earlier
        incarnation whose removal failed, a stack made by hand): the operation
        refuses it rather than adopt it, and its rollback leaves it alone.
        """
        if Operation.objects(id=op.id).only("params").first().params.get(CREATED_STACK):
            return  # this operation's earlier attempt created it
        existing = self.engine.inspect(stack_name)
        if existing is not None and existing["resources"]:
            raise OperationFailed(
                f"stack {stack_name} already exists with {len(existing['resources'])} resources that this "
                "operation did not create; it is left as it is (remove it with `pulumi destroy` first)"
            )
        Operation.objects(id=op.id).update_one(**{f"set__params__{CREATED_STACK}": True})

    def _take(self, op: Operation, status: str, reason: str | None = None) -> Instance:
        """The operation's instance, moved to `status` (a resumed attempt finds it there already);
        on a retry, the stack's update that the killed attempt left is cancelled first."""
        instance = Instance.objects.get(id=op.target_id)
        if instance.status != status:
            instance.move_to(status, reason)
            instance.save()
        if op.attempts > 1:
            self.engine.cancel(instance.stack_name)
        return instance

    # -- kinds ------------------------------------------------------------

    def _op_create(self, op: Operation, log_line: OperationLog) -> None:
        instance = self._take(op, "provisioning")
        self._claim_stack(op, instance.stack_name)
        # A spec with a zone list tries its zones in turn (zone failover); any other is one `pulumi up`.
        failover.provision(self, op, instance, log_line, configure=True)

    def _op_update(self, op: Operation, log_line: OperationLog) -> None:
        instance = self._take(op, "updating")
        previous = op.params.get("previous_spec") or {}
        # Configured again when the configuration of the generation before this one is not
        # known to be in place (a create or update that failed, e.g. before or during Ansible).
        previous_configured = instance.configured_generation == _generation(op, instance) - 1
        reconfigure = not previous_configured or any(
            previous.get(key) != instance.spec.get(key) for key in CONFIGURE_FIELDS
        )
        # An instance whose create found no zone with capacity has none yet: the update tries its zones again.
        failover.provision(self, op, instance, log_line, configure=reconfigure)

    def _provision(self, op: Operation, instance: Instance, log_line: OperationLog, *, configure: bool) -> None:
        document, outputs = self._up(op, instance, log_line)
        self._settle(op, instance, document, outputs, log_line, configure=configure)

    def _up(self, op: Operation, instance: Instance, log_line: OperationLog):
        """`pulumi up` of the instance's program; the record takes its outputs. Returns (document, outputs)."""
        document = parse_instance(instance.document())
        if instance.admin_public_key is None:  # its create failed and was rolled back: a new key pair
            instance.admin_private_key, instance.admin_public_key = generate_keypair(f"orch@{instance.name}")
            instance.save()
        base_image_id = None
        if document.spec.from_snapshot:
            snapshot = Snapshot.objects(
                claim=claim_key(instance.owner, document.spec.from_snapshot), status="available"
            ).first()
            if snapshot is None:
                raise OperationFailed(f"snapshot {document.spec.from_snapshot} is not available")
            base_image_id = snapshot.image_id
        with self._step(op, "pulumi up"):
            outputs = self.engine.up_instance(
                instance.stack_name,
                document,
                admin_public_key=instance.admin_public_key,
                base_image_id=base_image_id,
                on_output=log_line,
            )
        instance.reload()
        instance.outputs = outputs
        instance.public_ip = outputs.get("public_ip")
        # Where it runs now (the spec's zone, else the one the cloud chose): a zone list added to
        # the spec later keeps it there (Instance.document).
        instance.zone = document.spec.zone or outputs.get("zone") or None
        instance.updated_at = utcnow()
        instance.save()
        return document, outputs

    def _settle(
        self, op: Operation, instance: Instance, document, outputs: dict, log_line: OperationLog, *, configure: bool
    ) -> None:
        """After a successful up: configure the instance when asked, then it is running."""
        if configure and document.spec.configure and self.settings.simulated and not self.settings.sandbox_hosts:
            # Simulated without sandbox hosts: the address answers nothing, so there is nothing to configure.
            with self._step(op, SKIPPED_CONFIGURE_STEP):
                log_line("configuration skipped: simulated clouds without sandbox hosts (orch serve --simulate needs root for them)")
        elif configure and document.spec.configure:
            self._configure(op, instance, outputs, document, log_line)
        instance.reload()
        # Whatever configuration this operation's spec needs is in place now.
        instance.configured_generation = _generation(op, instance)
        instance.move_to("running")
        instance.save()

    def _configure(self, op: Operation, instance: Instance, outputs: dict, document, log_line: OperationLog) -> None:
        from orchestrator.configure import ConfigureError, HostUnreachable, configure_instance

        if instance.status == "provisioning":
            instance.move_to("configuring")
        token, expires = mint_agent_token(self.settings.jwt_secret, instance.agent_identity)
        instance.agent_token_hash = token_hash(token)
        instance.agent_token_expires_at = expires.replace(tzinfo=None)
        instance.save()
        configured_at = utcnow()
        spec = document.spec
        extravars = {
            "orch_ssh_users": [{"name": u.name, "public_key": u.public_key, "sudo": u.sudo} for u in spec.ssh_users],
            "orch_mounts": [{"bucket": m.bucket, "path": m.path} for m in spec.mounts],
            "orch_bootstrap_script": spec.bootstrap_script or "",
            "orch_agent_url": self.settings.public_url,
            "orch_agent_token": token,
            "orch_agent_instance": instance.agent_identity,
            "orch_agent_interval": self.settings.agent_report_interval_s,
            "orch_agent_spot": spec.spot,
            "orch_agent_cloud": spec.cloud,
            **self.settings.goofys_playbook_vars,
        }
        with self._step(op, "configure: ansible"):
            try:
                configure_instance(
                    host=outputs["public_ip"],
                    port=int(outputs.get("ssh_port") or 22),
                    ssh_user=outputs["ssh_user"],
                    private_key_pem=instance.admin_private_key,
                    extravars=extravars,
                    on_log=log_line,
                    workdir=self.settings.data_dir / "ansible",
                    reach_timeout_s=self.settings.ssh_reach_timeout_s,
                    timeout_s=self.settings.configure_timeout_s,
                )
            except HostUnreachable as error:  # its own words: where, and how long it was tried
                raise OperationFailed(str(error)) from None
            except ConfigureError as error:
                raise OperationFailed(f"configuration failed: {error}") from None
        with self._step(op, "wait for the agent's first report"):
            deadline = time.monotonic() + self.settings.agent_first_report_timeout_s
            while True:
                health = Instance.objects(id=instance.id).only("health").first().health
                if health and health.last_report_at and health.last_report_at >= configured_at:
                    break
                if time.monotonic() > deadline:
                    raise OperationFailed(
                        f"the agent sent no report within {self.settings.agent_first_report_timeout_s} s"
                    )
                time.sleep(1)

    def _destroy(self, op: Operation, record: Instance | Snapshot, step: str, log_line: OperationLog) -> None:
        """Destroy and remove the stack of an instance or snapshot, which is `deleting` meanwhile."""
        if record.status != "deleting":
            record.move_to("deleting", op.params.get("status_reason"))
            record.save()
        if op.attempts > 1:
            self.engine.cancel(record.stack_name)
        with self._step(op, step):
            self.engine.destroy(record.stack_name, on_output=log_line)
        record.reload()

    def _op_delete(self, op: Operation, log_line: OperationLog) -> None:
        instance = Instance.objects.get(id=op.target_id)
        self._destroy(op, instance, "pulumi destroy", log_line)
        # Revoke the agent's token: reports for a deleted instance are refused.
        instance.agent_token_hash = None
        instance.admin_private_key = None
        instance.public_ip = None
        instance.move_to("deleted", op.params.get("status_reason"))
        # The record stays as history; its name is free for a new create.
        instance.claim = None
        instance.save()

    def _op_snapshot_create(self, op: Operation, log_line: OperationLog) -> None:
        snapshot = Snapshot.objects.get(id=op.params["snapshot_id"])
        if op.attempts > 1:
            self.engine.cancel(snapshot.stack_name)
        self._claim_stack(op, snapshot.stack_name)
        document = parse_snapshot({"kind": "Snapshot", "name": snapshot.name, "instance": snapshot.instance})
        with self._step(op, "pulumi up (snapshot)"):
            outputs = self.engine.up_snapshot(
                snapshot.stack_name, document, source=snapshot.source_outputs, on_output=log_line
            )
        snapshot.reload()
        snapshot.image_id = outputs.get("image_id")
        snapshot.source_instance_id = outputs.get("source_instance_id")
        snapshot.move_to("available")
        snapshot.save()

    def _op_snapshot_delete(self, op: Operation, log_line: OperationLog) -> None:
        snapshot = Snapshot.objects.get(id=op.target_id)
        self._destroy(op, snapshot, "pulumi destroy (snapshot)", log_line)
        snapshot.move_to("deleted")
        snapshot.claim = None
        snapshot.save()


def _generation(op: Operation, instance: Instance) -> int:
    """The instance generation an operation applies (a later request may have raised the instance's own)."""
    return op.params.get("generation", instance.generation)


def recover(dispatch: Callable[[str], bool], redispatch_after_s: float = 30.0) -> int:
    """Find operations a lost publish or a dead worker left behind, and dispatch them again.

    Only what is really left behind: a running operation whose lease has expired (its
    worker stopped renewing it), and a queued one last dispatched (or, never dispatched,
    created) more than `redispatch_after_s` ago, so one that was just requested or
    dispatched is never sent twice. Each is taken with a conditional update, so two
    sweeps (the service's and a worker's) never both send it. Also records the on_preemption action
    of a preemption whose marker stopped before recording it. Returns how many were dispatched.
    """
    now = utcnow()
    count = 0
    for op in Operation.objects(status="running", lease_expires_at__lt=now).only("id"):
        reset = Operation.objects(id=op.id, status="running", lease_expires_at__lt=now).modify(
            set__status="queued", set__worker=None, set__dispatched_at=now, new=True
        )
        if reset is not None:
            lost = OperationLog(op.id)
            lost("worker lost (lease expired); operation queued again")
            lost.flush()
            dispatch(str(op.id))
            count += 1
    count += record_unrecorded_actions(dispatch, redispatch_after_s)
    stale = now - dt.timedelta(seconds=redispatch_after_s)
    for op in Operation.objects(status="queued").only("id", "dispatched_at", "created_at"):
        if (op.dispatched_at or op.created_at) >= stale:
            continue
        taken = Operation.objects(id=op.id, status="queued", dispatched_at=op.dispatched_at).update_one(
            set__dispatched_at=now
        )
        if taken:
            dispatch(str(op.id))
            count += 1
    return count
