"""A property test of POST /api/v1/agent/report against the real service.

Whatever is sent (reports with extreme or mistyped values, unknown fields, batches,
random JSON, random bytes), the answer is 202 or a 4xx with a detail, never a 5xx;
and afterwards good reports are all stored and /healthz says ingestion is ok with
nothing dropped. Derandomized with a bounded number of examples, so it runs the
same way every time, in seconds.
"""

from __future__ import annotations

import copy
import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_ingest_limits import FLUSH_WAIT_S, start_agent_service

INSTANCE = "fuzz-a"
FUZZ_EXAMPLES = 400
GOOD_REPORTS_AFTER = 20

EXTREME_NUMBERS = st.one_of(
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 1e308, -1e308, 5e-324]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | EXTREME_NUMBERS | st.text(max_size=40),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=25,
)
# Where a report's values live; a mutation replaces one of them (or adds an unknown field).
REPORT_PATHS = [
    ("instance",), ("ts",), ("uptime_s",), ("cpu_percent",), ("load",), ("load", 0), ("memory",),
    ("memory", "total"), ("memory", "used"), ("disk",), ("disk", 0, "mount"), ("disk", 0, "total"),
    ("disk", 0, "used"), ("gpus",), ("gpus", 0, "index"), ("gpus", 0, "name"), ("gpus", 0, "utilization_percent"),
    ("gpus", 0, "memory_total"), ("gpus", 0, "memory_used"), ("gpus", 0, "temperature_c"), ("agent_version",),
    ("unknown",), ("gpus", 0, "unknown"),
]
MUTATIONS = st.lists(
    st.tuples(st.sampled_from(REPORT_PATHS), st.one_of(EXTREME_NUMBERS, JSON_VALUES, st.text(max_size=300))),
    min_size=1,
    max_size=3,
)
BODIES = st.one_of(
    st.tuples(st.just("report"), MUTATIONS),
    st.tuples(st.just("batch"), st.lists(MUTATIONS | st.just([]), min_size=1, max_size=4)),
    st.tuples(st.just("json"), JSON_VALUES),
    st.tuples(st.just("bytes"), st.binary(max_size=2000)),
)


def mutated(base: dict, mutations: list) -> dict:
    report = copy.deepcopy(base)
    for path, value in mutations:
        target = report
        for key in path[:-1]:
            if isinstance(target, dict) and key in target:
                target = target[key]
            elif isinstance(target, list) and isinstance(key, int) and key < len(target):
                target = target[key]
            else:
                break
        else:
            if isinstance(target, dict):
                target[path[-1]] = value
            elif isinstance(target, list) and isinstance(path[-1], int) and path[-1] < len(target):
                target[path[-1]] = value
    return report


def encode(kind: str, payload, agent) -> bytes:
    if kind == "report":
        return json.dumps(mutated(agent.report(), payload)).encode()
    if kind == "batch":
        return json.dumps({"reports": [mutated(agent.report(), mutations) for mutations in payload]}).encode()
    if kind == "json":
        return json.dumps(payload).encode()
    return payload


@pytest.fixture(scope="module")
def agent(tmp_path_factory, mongo_url):
    agent = start_agent_service(tmp_path_factory.mktemp("ingest-fuzz"), mongo_url, INSTANCE)
    yield agent
    agent.live.stop()


def test_no_report_body_gives_a_server_error_or_stops_ingestion(agent):
    answered: dict[int, int] = {}
    with httpx.Client(headers={"Authorization": f"Bearer {agent.token}"}, timeout=30) as client:

        @settings(
            max_examples=FUZZ_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(BODIES)
        def post_anything(body) -> None:
            kind, payload = body
            content = encode(kind, payload, agent)
            response = client.post(
                f"{agent.live.url}/api/v1/agent/report", content=content, headers={"Content-Type": "application/json"}
            )
            answered[response.status_code] = answered.get(response.status_code, 0) + 1
            assert response.status_code == 202 or 400 <= response.status_code < 500, (response.status_code, content[:500])
            if response.status_code != 202:
                detail = response.json()["detail"]
                assert isinstance(detail, str) and detail, response.text

        post_anything()

        # Both outcomes were exercised, not only refusals.
        assert answered.get(202) and sum(n for status, n in answered.items() if status != 202), answered
        # Good reports sent after all of that are all stored.
        start = time.time()
        markers = [50 + i / 8 + 1 / 1024 for i in range(GOOD_REPORTS_AFTER)]
        half = GOOD_REPORTS_AFTER // 2
        for i, marker in enumerate(markers[:half]):
            response = client.post(
                f"{agent.live.url}/api/v1/agent/report", json=agent.report(ts=start + i / 100, cpu_percent=marker)
            )
            assert response.status_code == 202, response.text
        batch = [agent.report(ts=start + (half + i) / 100, cpu_percent=m) for i, m in enumerate(markers[half:])]
        response = client.post(f"{agent.live.url}/api/v1/agent/report", json={"reports": batch})
        assert response.status_code == 202 and response.json() == {"accepted": len(batch)}, response.text

    deadline = time.monotonic() + FLUSH_WAIT_S
    while sorted(s["cpu_percent"] for s in agent.samples() if s["cpu_percent"] in markers) != markers:
        assert time.monotonic() < deadline, f"good reports after the fuzzing were not all stored: {agent.healthz()}"
        time.sleep(0.2)
    health = agent.healthz()
    assert health["status"] == "ok" and health["ingest"]["ok"], health
    assert health["ingest"]["dropped"] == 0 and health["ingest"]["buffered"] == 0, health
    assert "Traceback" not in agent.live.logs()
