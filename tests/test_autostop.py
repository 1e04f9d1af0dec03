"""Idle autostop's decision with a simulated clock and synthetic reports (orchestrator/autostop)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading

import msgspec
import pytest

from orchestrator.autostop.checker import GAP_INTERVALS, AutostopChecker, NoticeBoard
from orchestrator.autostop.idle import assess
from orchestrator.ingest import AgentIngest
from orchestrator.models import AutostopState, Instance, MetricBatch, Operation
from orchestrator.settings import Settings
from tests.live import instance_doc
from stacks.spec import SpecError, parse_instance

T0 = dt.datetime(2026, 1, 5, 12, 0, 0)
INTERVAL_S = 30
SETTINGS = Settings(
    data_dir=None, mongodb_url=None, amqp_url=None, pulumi_backend_url="", pulumi_command=None, jwt_secret=None,
    store_key=b"", public_url="", clouds=("aws", "gcp", "docker"), agent_report_interval_s=INTERVAL_S,
    autostop_warn_s=300,
)


class Clock:
    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def report(instance: Instance, ts: dt.datetime, cpu: float = 1.0, gpus: list[float | None] | None = (0.0,)) -> dict:
    return {
        "instance": instance.agent_identity, "ts": ts.isoformat() + "Z", "uptime_s": 100.0, "load": [0.0],
        "cpu_percent": cpu, "memory": {"total": 10, "used": 1}, "disk": [], "agent_version": "test",
        "gpus": [{"index": i, "name": "T4", "utilization_percent": u, "memory_total": None, "memory_used": None,
                  "temperature_c": None} for i, u in enumerate(gpus or [])],
    }


def store(instance: Instance, reports: list[dict]) -> None:
    """As the ingest flush stores them: one batch document."""
    from orchestrator.ingest import report_time

    rows = [((instance.agent_identity, report_time(r["ts"]), r),
             msgspec.json.encode([instance.agent_identity, report_time(r["ts"]).isoformat(), r])) for r in reports]
    MetricBatch._get_collection().insert_one(AgentIngest._batch_document(rows))


def every(start: dt.datetime, end: dt.datetime, step_s: int = INTERVAL_S):
    t = start
    while t <= end:
        yield t
        t += dt.timedelta(seconds=step_s)


def make_instance(name: str = "gpu-1", **autostop) -> Instance:
    spec = {"idle_minutes": 60, "metric": "gpu", "below_percent": 5, "action": "stop", **autostop}
    doc = instance_doc(name, "aws", machine_type="g4dn.xlarge", disk_gb=100, autostop=spec)
    parsed = parse_instance(doc).to_dict()
    instance = Instance(name=name, owner="alice", claim=f"alice/{name}", spec=parsed["spec"], cloud="aws",
                        region="us-east-1", status="running", created_at=T0 - dt.timedelta(hours=3))
    instance.save()
    return instance


def checker(clock: Clock, sent: list, settings: Settings = SETTINGS) -> AutostopChecker:
    return AutostopChecker(settings, lambda op_id: sent.append(op_id) or True, notices=NoticeBoard(), clock=clock)


def fresh(instance: Instance) -> Instance:
    return Instance.objects.get(id=instance.id)


# -- the decision alone ---------------------------------------------------------


def _reports(*utilizations, cpu=1.0, start=T0, step_s=INTERVAL_S):
    fake = Instance(name="x", owner="a")
    return [(start + dt.timedelta(seconds=i * step_s), report(fake, start, cpu=cpu, gpus=list(u)))
            for i, u in enumerate(utilizations)]


def test_assess_needs_every_gpu_below_and_any_needs_the_cpu_too():
    window, gap = dt.timedelta(minutes=2), dt.timedelta(seconds=90)
    now = T0 + dt.timedelta(minutes=2)
    idle = _reports(*[(1.0, 2.0)] * 5)
    assert assess(idle, metric="gpu", below_percent=5, now=now, window=window, max_gap=gap).idle_since == T0
    one_busy = _reports(*[(1.0, 2.0)] * 4, (1.0, 50.0))
    assert assess(one_busy, metric="gpu", below_percent=5, now=now, window=window, max_gap=gap).idle_since is None
    busy_cpu = _reports(*[(1.0,)] * 5, cpu=80.0)
    assert assess(busy_cpu, metric="gpu", below_percent=5, now=now, window=window, max_gap=gap).idle_since == T0
    assert assess(busy_cpu, metric="any", below_percent=5, now=now, window=window, max_gap=gap).idle_since is None
    assert assess(busy_cpu, metric="cpu", below_percent=5, now=now, window=window, max_gap=gap).idle_since is None
    no_figure = _reports(*[(None,)] * 5)
    finding = assess(no_figure, metric="gpu", below_percent=5, now=now, window=window, max_gap=gap)
    assert finding.idle_since is None and "reports no utilization" in finding.warning


def test_spec_refuses_a_gpu_metric_without_a_gpu_and_bounds_every_field():
    with pytest.raises(SpecError) as error:
        parse_instance(instance_doc("cpu-1", "aws", autostop={"idle_minutes": 60}))
    assert [e.field for e in error.value.errors] == ["spec.autostop.metric"]
    assert "no GPU" in str(error.value)
    assert parse_instance(instance_doc("cpu-1", "aws", autostop={"idle_minutes": 60, "metric": "any"}))
    with pytest.raises(SpecError) as error:
        parse_instance(instance_doc("cpu-1", "aws", autostop={
            "idle_minutes": 1441, "metric": "ram", "below_percent": -1, "action": "hibernate", "extra": 1}))
    assert sorted(e.field for e in error.value.errors) == sorted([
        "spec.autostop.idle_minutes", "spec.autostop.metric", "spec.autostop.below_percent",
        "spec.autostop.action", "spec.autostop.extra"])


# -- the checker, on the store ----------------------------------------------------


def test_idle_instance_is_warned_then_stopped_with_the_reason(mongo_db):
    instance = make_instance()
    clock, sent = Clock(T0 + dt.timedelta(minutes=56)), []
    store(instance, [report(instance, t) for t in every(T0, T0 + dt.timedelta(minutes=65))])
    check = checker(clock, sent)

    assert check.run_pass() == 0  # idle for 56 of 60 min: the users are warned, nothing else yet
    state = fresh(instance).autostop_state
    assert state.idle_since == T0 and state.warned_at == clock.now and state.decided_at is None
    notices = check.notices.notices_for(instance.agent_identity)
    assert len(notices) == 1 and "will be stopped in about 5 min" in notices[0]["message"]
    board = NoticeBoard()  # another service reads the pending notice back from the store
    board.refresh()
    assert board.notices_for(instance.agent_identity) == notices

    clock.now = T0 + dt.timedelta(minutes=60)
    assert check.run_pass() == 0 and not sent  # idle for the window, but the warning is 4 min old
    clock.now = T0 + dt.timedelta(minutes=61, seconds=1)
    assert check.run_pass() == 1
    [op_id] = sent
    op = Operation.objects.get(id=op_id)
    after = fresh(instance)
    assert op.kind == "stop" and op.requested_by == "autostop" and after.operation_id == op_id
    assert op.params["reason"] == "autostop" and op.params["metric"] == "gpu" and op.params["idle_minutes"] == 60
    assert after.status_reason == "autostop: gpu below 5% for 60 min" == op.params["status_reason"]
    assert after.spec["state"] == "stopped" and after.generation == instance.generation + 1
    assert after.autostop_state.decided_at == clock.now and after.autostop_state.notice_id is None
    assert check.notices.notices_for(instance.agent_identity) == []
    assert check.run_pass() == 0 and len(sent) == 1  # an operation is queued: never acts twice


def test_a_check_under_settings_changed_since_its_read_neither_warns_nor_acts(mongo_db):
    instance = make_instance()
    clock, sent = Clock(T0 + dt.timedelta(minutes=56)), []
    store(instance, [report(instance, t) for t in every(T0, T0 + dt.timedelta(minutes=65))])
    check = checker(clock, sent)

    def user_changes_the_settings():  # as `orch apply` of a new idle_minutes: the findings start over
        Instance.objects(id=instance.id).update_one(set__spec__autostop__idle_minutes=90, unset__autostop_state=True)

    stale = fresh(instance)
    user_changes_the_settings()
    assert check.check(stale) is False  # idle 56 of 60 min would warn; under 90 min it would not
    assert fresh(instance).autostop_state is None and check.notices.notices_for(instance.agent_identity) == []

    Instance.objects(id=instance.id).update_one(set__spec__autostop__idle_minutes=60)
    assert check.run_pass() == 0 and fresh(instance).autostop_state.warned_at == clock.now
    clock.now = T0 + dt.timedelta(minutes=61, seconds=1)
    stale = fresh(instance)
    user_changes_the_settings()
    assert check.check(stale) is False and not sent  # idle 61 of 60 min, warned: would stop
    after = fresh(instance)
    assert after.spec["state"] == "running" and after.operation_id == instance.operation_id
    assert after.autostop_state is None and Operation.objects.count() == 0


def test_busy_reports_keep_it_running(mongo_db):
    instance = make_instance()
    clock, sent = Clock(T0 + dt.timedelta(minutes=70)), []
    reports = [report(instance, t) for t in every(T0, clock.now)]
    reports[100]["gpus"][0]["utilization_percent"] = 40.0  # one busy report, 20 min ago
    store(instance, reports)
    assert checker(clock, sent).run_pass() == 0 and not sent
    state = fresh(instance).autostop_state
    assert state.idle_since == T0 + dt.timedelta(seconds=101 * INTERVAL_S) and state.warned_at is None
    assert state.warning is None


def test_a_gap_in_the_reports_is_not_idle_and_is_shown(mongo_db):
    instance = make_instance()
    clock, sent = Clock(T0 + dt.timedelta(minutes=70)), []
    store(instance, [report(instance, t) for t in every(T0, T0 + dt.timedelta(minutes=30))]
          + [report(instance, t) for t in every(T0 + dt.timedelta(minutes=45), clock.now)])
    assert checker(clock, sent).run_pass() == 0 and not sent
    state = fresh(instance).autostop_state
    assert state.idle_since == T0 + dt.timedelta(minutes=45) and state.warned_at is None
    assert state.warning.startswith("no report from 2026-01-05T12:30:00Z to 2026-01-05T12:45:00Z (15 min)")


def test_no_reports_is_not_idle_and_is_shown(mongo_db):
    instance = make_instance()
    clock, sent = Clock(T0 + dt.timedelta(minutes=70)), []
    store(instance, [report(instance, t) for t in every(T0, T0 + dt.timedelta(minutes=50))])
    check = checker(clock, sent)
    assert check.run_pass() == 0 and not sent
    assert fresh(instance).autostop_state.warning == "no report for 20 min: not counted as idle"
    clock.now = T0 + dt.timedelta(hours=5)
    assert check.run_pass() == 0 and not sent
    assert fresh(instance).autostop_state.warning == "no report for over 60 min: not counted as idle"


def test_no_report_is_missed_before_the_agents_first_one_is_due(mongo_db):
    instance = make_instance()
    up = T0 + dt.timedelta(hours=2)
    Instance.objects(id=instance.id).update_one(set__running_since=up)  # as a create or start records it
    clock, sent = Clock(up + dt.timedelta(seconds=GAP_INTERVALS * INTERVAL_S)), []
    check = checker(clock, sent)
    assert check.run_pass() == 0 and not sent
    state = fresh(instance).autostop_state
    assert state.warning is None and state.idle_since is None and state.checked_at == clock.now
    clock.now = up + dt.timedelta(minutes=12)
    assert check.run_pass() == 0 and not sent
    assert fresh(instance).autostop_state.warning == "no report in the 12 min since it came up: not counted as idle"
    clock.now = up + dt.timedelta(minutes=61)
    assert check.run_pass() == 0 and not sent
    assert fresh(instance).autostop_state.warning == "no report for over 60 min: not counted as idle"


def test_running_since_is_when_the_machine_came_up_not_when_a_refresh_ended():
    instance = Instance(name="m", owner="alice", spec={}, cloud="aws", region="us-east-1", status="provisioning")
    instance.move_to("running")
    assert instance.running_since is not None
    instance.running_since = T0
    for status in ("refreshing", "running", "updating", "running", "stopping", "stopped", "starting"):
        instance.move_to(status)
        assert instance.running_since == T0, status
    instance.move_to("running")
    assert instance.running_since > T0


def test_an_instance_with_an_operation_queued_or_not_running_is_left_alone(mongo_db):
    instance = make_instance()
    clock, sent = Clock(T0 + dt.timedelta(minutes=90)), []
    store(instance, [report(instance, t) for t in every(T0, clock.now)])
    busy = Operation(kind="update", target=instance.name, target_id=str(instance.id), lock_key=instance.lock_key,
                     owner="alice", status="running")
    busy.save()
    check = checker(clock, sent)
    assert check.run_pass() == 0 and not sent and fresh(instance).autostop_state.warned_at is None
    busy.update(set__status="succeeded")
    Instance.objects(id=instance.id).update_one(set__status="updating")
    clock.now += dt.timedelta(minutes=1)
    assert check.run_pass() == 0 and not sent  # not running: not even looked at
    assert fresh(instance).autostop_state.checked_at == clock.now - dt.timedelta(minutes=1)


def test_busy_again_after_the_warning_withdraws_it(mongo_db):
    instance = make_instance()
    clock, sent = Clock(T0 + dt.timedelta(minutes=58)), []
    store(instance, [report(instance, t) for t in every(T0, clock.now)])
    check = checker(clock, sent)
    check.run_pass()
    assert fresh(instance).autostop_state.warned_at == clock.now
    clock.now += dt.timedelta(minutes=1)
    store(instance, [report(instance, clock.now, gpus=[90.0])])
    assert check.run_pass() == 0
    state = fresh(instance).autostop_state
    assert state.warned_at is None and state.notice_id is None and state.idle_since is None
    assert check.notices.notices_for(instance.agent_identity) == []
    clock.now += dt.timedelta(minutes=10)
    store(instance, [report(instance, t) for t in every(clock.now - dt.timedelta(minutes=10), clock.now)][1:])
    assert check.run_pass() == 0 and not sent  # idle again, but only for 10 minutes


def test_delete_action_deletes_with_the_reason(mongo_db):
    instance = make_instance(action="delete", metric="any", below_percent=10, idle_minutes=30)
    clock, sent = Clock(T0 + dt.timedelta(minutes=31)), []
    store(instance, [report(instance, t, cpu=8.0) for t in every(T0, clock.now)])
    check = checker(clock, sent)
    check.run_pass()
    assert "will be DELETED" in check.notices.notices_for(instance.agent_identity)[0]["message"]
    clock.now += dt.timedelta(minutes=5)
    store(instance, [report(instance, t, cpu=8.0) for t in every(T0 + dt.timedelta(minutes=31, seconds=30), clock.now)])
    assert check.run_pass() == 1
    op = Operation.objects.get(id=sent[0])
    assert op.kind == "delete" and fresh(instance).status_reason == "autostop: any below 10% for 30 min"
    assert fresh(instance).spec["state"] == "running"


def test_two_checkers_racing_act_once(mongo_db):
    """Two services' checkers, each with its own read of the instance: exactly one warns, exactly one acts."""
    instance = make_instance()
    clock = Clock(T0 + dt.timedelta(minutes=56))
    store(instance, [report(instance, t) for t in every(T0, T0 + dt.timedelta(minutes=70))])
    sent_a, sent_b = [], []
    a, b = checker(clock, sent_a), checker(clock, sent_b)
    stale_a, stale_b = fresh(instance), fresh(instance)
    a.check(stale_a), b.check(stale_b)
    notices = [c.notices.notices_for(instance.agent_identity) for c in (a, b)]
    assert sorted(len(n) for n in notices) == [0, 1]  # one warned; the other's conditional update lost
    clock.now = T0 + dt.timedelta(minutes=62)
    stale_a, stale_b = fresh(instance), fresh(instance)
    barrier = threading.Barrier(2)
    results = {}

    def race(name, check, copy):
        barrier.wait()
        results[name] = check.check(copy)

    threads = [threading.Thread(target=race, args=("a", a, stale_a)), threading.Thread(target=race, args=("b", b, stale_b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == [False, True]
    assert len(sent_a) + len(sent_b) == 1 and Operation.objects(kind="stop").count() == 1


def test_a_claim_whose_operation_was_never_recorded_is_finished(mongo_db):
    """The checker died between its claim and recording the operation: the next pass records it."""
    instance = make_instance()
    clock, sent = Clock(T0 + dt.timedelta(minutes=70)), []
    Instance.objects(id=instance.id).update_one(
        set__operation_id="65a0a0a0a0a0a0a0a0a0a0a0", set__status_reason="autostop: gpu below 5% for 60 min",
        set__autostop_state=AutostopState(decided_at=clock.now), set__spec__state="stopped", inc__generation=1)
    assert checker(clock, sent).run_pass() == 1
    op = Operation.objects.get(id="65a0a0a0a0a0a0a0a0a0a0a0")
    assert sent == [str(op.id)] and op.kind == "stop" and op.params["previous_spec"]["state"] == "running"
    assert op.params["status_reason"] == "autostop: gpu below 5% for 60 min"


def test_the_warning_comes_at_once_when_the_window_is_shorter_than_the_warning(mongo_db):
    instance = make_instance(idle_minutes=5)
    clock, sent = Clock(T0 + dt.timedelta(seconds=30)), []
    store(instance, [report(instance, t) for t in every(T0, T0 + dt.timedelta(minutes=12))])
    check = checker(clock, sent, dataclasses.replace(SETTINGS, autostop_warn_s=600))
    check.run_pass()
    assert fresh(instance).autostop_state.warned_at == clock.now
    clock.now = T0 + dt.timedelta(minutes=6)
    assert check.run_pass() == 0  # idle for the window, but warned only 5.5 of 10 minutes ago
    clock.now = T0 + dt.timedelta(minutes=10, seconds=31)
    assert check.run_pass() == 1
