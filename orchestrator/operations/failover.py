"""Zone and region failover: a create whose spec lists zones (spec.zones, spec.any_zone) or regions
(spec.regions) tries those places in turn (stacks.spec.placements: (region, zone) pairs).

Each place is an attempt, a step of the operation (`attempt 2/3: us-east-1b`, with regions
`attempt 3/4: us-west-2 / us-west-2a`). When its `pulumi up` fails because the place has no
capacity (the cloud module's classify_error says so), the attempt's stack is destroyed, so nothing
of it is left billing, and the next place is tried: everything in a stack is in its one region, so
an attempt in another region is just the next attempt. A quota or
credentials error, or any other failure, ends the create: no other place is tried. The
attempts are recorded in the operation (params.failover) before anything is destroyed or tried, so
an operation resumed after its worker died goes on at the attempt it was at.

It uses the worker's engine, `_step`, `_up` and `_settle`, and imports nothing of the worker.
"""

from __future__ import annotations

from orchestrator.engine import EngineError
from orchestrator.models import Instance, Operation, utcnow
from stacks import classify_error
from stacks.common import CAPACITY
from stacks.spec import parse_instance, placements

# The operation's params key: {"places": [{"region", "zone"}], "regions": bool (a region list: labels
# name the region), "attempts": [{"region", "zone", "code", "error", "destroyed"}]}.
FAILOVER = "failover"
# How much of a cloud's error a step's detail keeps, and each zone's part of the final summary.
MAX_DETAIL_CHARS = 2000
MAX_SUMMARY_CHARS = 300
LANDED = "landed"
NO_CAPACITY = "no capacity"


class PlacementFailed(EngineError):
    """No place of the list could take the instance; the message names each place's error."""


def provision(worker, op: Operation, instance: Instance, log_line, *, configure: bool) -> None:
    """`pulumi up` of the instance's program: in its one place (or the place it landed in before), or
    in the first place of its list with capacity; then configure it when asked."""
    state = Operation.objects(id=op.id).only("params").first().params.get(FAILOVER)
    if state is None:  # not begun: a spec without a zone or region list, or an instance placed by an earlier operation
        spec = parse_instance(instance.document(placed=False)).spec
        places = None if instance.has_place() else placements(spec)
        if places is None:
            worker._provision(op, instance, log_line, configure=configure)
            return
        state = {
            "places": [{"region": place.region, "zone": place.zone} for place in places],
            "regions": spec.regions is not None,
            "attempts": [],
        }
        Operation.objects(id=op.id).update_one(**{f"set__params__{FAILOVER}": state})
    # A resumed operation goes on with the places it began with, at the attempt it was at.
    places, attempts, regions = list(state["places"]), list(state["attempts"]), state["regions"]
    total = len(places)
    if attempts and not attempts[-1]["destroyed"]:
        # The worker died between an attempt's failure and the end of its destroy.
        _destroy_attempt(worker, op, instance, len(attempts), total, _where(attempts[-1], regions), log_line)
    for index in range(len(attempts), total):
        place = places[index]
        where = _where(place, regions)
        label = f"attempt {index + 1}/{total}: {where}"
        _show(instance, attempts, place=place)
        log_line(f"{label}: trying {where}")
        try:
            with worker._step(op, label) as step:
                document, outputs = worker._up(op, instance, log_line)
        except EngineError as error:
            found = classify_error(instance.cloud, str(error))
            _detail(op, step, f"{found.kind if found else 'error'}: {str(error)[:MAX_DETAIL_CHARS]}")
            if found is None:  # not the place's fault: the create fails as any other would
                _show(instance, attempts, {**place, "outcome": "error", "error": _last_line(str(error))})
                raise
            if found.kind != CAPACITY:
                refused = {**place, "outcome": found.kind, "error": found.summary(MAX_SUMMARY_CHARS)}
                _show(instance, attempts, refused)
                raise PlacementFailed(
                    f"{found.kind} error in {where} ({found.code}), not retried in another "
                    f"{'region or zone' if regions else 'zone'}: {error}"
                ) from None
            attempt = {**place, "code": found.code, "error": found.summary(MAX_SUMMARY_CHARS), "destroyed": False}
            Operation.objects(id=op.id).update_one(**{f"push__params__{FAILOVER}__attempts": attempt})
            attempts.append(attempt)
            _show(instance, attempts)
            log_line(f"{label}: no capacity ({found.code}): destroying what it made, then trying the next place")
            _destroy_attempt(worker, op, instance, index + 1, total, where, log_line)
            continue
        # The zone it landed in: the listed one, else the one the cloud chose (the outputs').
        landed = {**place, "zone": place["zone"] or outputs.get("zone") or None}
        _detail(op, step, f"landed in {_where(landed, regions)}")
        _show(instance, attempts, {**landed, "outcome": LANDED, "error": None}, place=landed)
        worker._settle(op, instance, document, outputs, log_line, configure=configure)
        return
    _show(instance, attempts, place={"region": instance.spec["region"], "zone": None})
    summary = "; ".join(f"{_where(attempt, regions)}: {attempt['error']}" for attempt in attempts)
    noun = "zones" if not regions else "regions" if all(p["zone"] is None for p in places) else "places"
    raise PlacementFailed(f"no capacity in any of the {total} {noun} tried: {summary}")


def _where(place: dict, regions: bool) -> str:
    """A place as steps and messages name it: its zone; with a region list, `region / zone` (or the region)."""
    if not regions:
        return place["zone"]
    return f"{place['region']} / {place['zone']}" if place["zone"] else place["region"]


def _destroy_attempt(worker, op: Operation, instance: Instance, number: int, total: int, where: str, log_line) -> None:
    """Destroy what a failed attempt made (and remove its stack): the next attempt starts from nothing."""
    with worker._step(op, f"attempt {number}/{total}: pulumi destroy (no capacity in {where})"):
        worker.engine.destroy(instance.stack_name, on_output=log_line)
    Operation.objects(id=op.id).update_one(**{f"set__params__{FAILOVER}__attempts__{number - 1}__destroyed": True})
    instance.reload()
    instance.outputs = {}
    instance.public_ip = None
    instance.save()


def _detail(op: Operation, step: int, text: str) -> None:
    Operation.objects(id=op.id).update_one(**{f"set__steps__{step}__detail": text})


def _last_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    line = lines[-1] if lines else message
    return line if len(line) <= MAX_SUMMARY_CHARS else line[: MAX_SUMMARY_CHARS - 3] + "..."


def _show(instance: Instance, attempts: list[dict], last: dict | None = None, *, place: dict | None = None) -> None:
    """The record shows the places tried (and where it is, when `place` is given): the failed
    attempts, then `last`. A place's region is the record's region; its zone, the record's zone."""
    instance.reload()
    instance.zone_attempts = [
        *({"region": a["region"], "zone": a["zone"], "outcome": NO_CAPACITY, "error": a["error"]} for a in attempts),
        *([last] if last else []),
    ]
    if place is not None:
        instance.region, instance.zone = place["region"], place["zone"]
    instance.updated_at = utcnow()
    instance.save()
