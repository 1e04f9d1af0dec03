"""Output: kubectl-style tables, YAML and JSON, the describe page, diffs and previews."""

from __future__ import annotations

import datetime as dt
import difflib
import json
from collections.abc import Sequence
from typing import Any

import yaml

NONE = "<none>"
INSTANCE_COLUMNS = ("NAME", "CLOUD", "REGION", "STATUS", "HEALTH", "PUBLIC-IP", "AGE", "AUTOSTOP")
SNAPSHOT_COLUMNS = ("NAME", "INSTANCE", "CLOUD", "REGION", "STATUS", "IMAGE-ID", "AGE")
# Pulumi step ops as `pulumi preview` marks them; a replacement's halves read as the replacement.
STEP_SYMBOLS = {
    "create": ("+", "create"),
    "update": ("~", "update"),
    "replace": ("+-", "replace"),
    "create-replacement": ("+-", "replace"),
    "delete-replaced": ("+-", "replace"),
    "delete": ("-", "delete"),
    "read": (">", "read"),
    "import": ("=", "import"),
}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns left-aligned and three spaces apart; empty cells read <none>."""
    cells = [list(headers)] + [[NONE if value in (None, "") else str(value) for value in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells)


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def age(value: str | None, now: dt.datetime) -> str:
    """How long ago, the way kubectl says it: 45s, 12m, 5h, 3d."""
    then = parse_time(value)
    if then is None:
        return NONE
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2)


def as_yaml(data: Any) -> str:
    # Wide enough that SSH keys and URLs stay on one line.
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096).rstrip("\n")


SIMULATED_NOTE = "yes: made by `orch serve --simulate`; no cloud resource exists (a sandbox host on the service's machine at most)"


def cloud_label(instance: dict) -> str | None:
    """The cloud, marked when the machine is a spot one and when a simulated service made the instance."""
    cloud = instance.get("cloud")
    marks = [mark for mark, on in (("spot", instance.get("spot")), ("simulated", instance.get("simulated"))) if on]
    return f"{cloud} ({', '.join(marks)})" if marks and cloud else cloud


def instances_table(items: list[dict], now: dt.datetime) -> str:
    rows = [
        (
            i["name"],
            cloud_label(i),
            i.get("region"),
            i.get("status"),
            (i.get("health") or {}).get("state"),
            i.get("public_ip"),
            age(i.get("created_at"), now),
            autostop_cell(i, now),
        )
        for i in items
    ]
    return table(INSTANCE_COLUMNS, rows)


def autostop_settings(autostop: dict) -> str:
    """spec.autostop in words: "stop when gpu below 5% for 60 min"."""
    return (f"{autostop.get('action')} when {autostop.get('metric')} below {autostop.get('below_percent')}% "
            f"for {autostop.get('idle_minutes')} min")


def autostop_cell(instance: dict, now: dt.datetime) -> str | None:
    """The list's AUTOSTOP column: the settings, how long idle, or the warning given."""
    autostop = (instance.get("spec") or {}).get("autostop")
    if not autostop:
        return None
    state = instance.get("autostop") or {}
    short = f"{autostop.get('metric')}<{autostop.get('below_percent')}%/{autostop.get('idle_minutes')}m"
    if state.get("warned_at") and instance.get("status") == "running":
        return f"{short} WARNED {age(state['warned_at'], now)} ago"
    if state.get("idle_since") and instance.get("status") == "running":
        return f"{short} idle {age(state['idle_since'], now)}"
    if state.get("warning") and instance.get("status") == "running":
        return f"{short} unknown"
    return short


def snapshots_table(items: list[dict], now: dt.datetime) -> str:
    rows = [
        (
            s["name"],
            s.get("instance"),
            s.get("cloud"),
            s.get("region"),
            s.get("status"),
            s.get("image_id"),
            age(s.get("created_at"), now),
        )
        for s in items
    ]
    return table(SNAPSHOT_COLUMNS, rows)


def _indented(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _fields(pairs: Sequence[tuple[str, Any]], prefix: str = "") -> str:
    width = max(len(key) for key, _ in pairs) + 2
    return "\n".join(
        f"{prefix}{(key + ':').ljust(width)}{NONE if value in (None, '', {}, []) else value}" for key, value in pairs
    )


def _report_summary(report: dict) -> str:
    """One line of an agent report: CPU, load, memory, GPUs."""
    parts = []
    if report.get("cpu_percent") is not None:
        parts.append(f"cpu {report['cpu_percent']}%")
    if report.get("load"):
        load = report["load"]
        parts.append("load " + (" ".join(str(v) for v in load) if isinstance(load, list) else str(load)))
    memory = report.get("memory") or {}
    if memory.get("total"):
        parts.append(f"memory {bytes_human(memory.get('used'))}/{bytes_human(memory['total'])}")
    for gpu in report.get("gpus") or []:
        parts.append(f"gpu{gpu.get('index')} {gpu.get('utilization_percent')}%")
    return ", ".join(parts)


def bytes_human(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "?"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    index = 0
    while abs(value) >= 1024 and index < len(units) - 1:
        value /= 1024
        index += 1
    return f"{value:.0f}B" if index == 0 else f"{value:.1f}{units[index]}"


def _spot_fields(instance: dict) -> list[tuple[str, Any]]:
    spec = instance.get("spec") or {}
    price = spec.get("max_price_per_hour")
    spot = f"yes, on preemption: {spec.get('on_preemption', 'keep')}" + (f", at most ${price}/h" if price else "")
    preempted = instance.get("preempted_at")
    return [
        ("Spot", spot),
        ("Preempted", f"{preempted} ({instance.get('preemption_source')})" if preempted else None),
    ]


def describe_instance(instance: dict, operation: dict | None, snapshots: list[dict], now: dt.datetime) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in (instance.get("labels") or {}).items())
    sections = [
        _fields(
            [
                ("Name", instance["name"]),
                ("Owner", instance.get("owner")),
                ("Labels", labels),
                ("Cloud", cloud_label(instance)),
                *([("Simulated", SIMULATED_NOTE)] if instance.get("simulated") else []),
                ("Region", instance.get("region")),
                ("Zone", instance.get("zone")),
                ("Status", instance.get("status")),
                ("Reason", instance.get("status_reason")),
                *(_spot_fields(instance) if instance.get("spot") else []),
                ("Public IP", instance.get("public_ip")),
                ("Generation", instance.get("generation")),
                ("Created", f"{instance.get('created_at')} ({age(instance.get('created_at'), now)} ago)"),
                ("Updated", instance.get("updated_at")),
            ]
        ),
        "Spec:\n" + _indented(as_yaml(without_nulls(instance.get("spec") or {}))),
    ]
    attempts = instance.get("zone_attempts") or []
    if attempts:  # zone (and region) failover: each place its create tried, in order
        regions = bool((instance.get("spec") or {}).get("regions"))
        sections.append(
            "Zone attempts:\n"
            + "\n".join(
                f"  {number}. {_attempt_place(a, regions)}: {a.get('outcome')}" + (f" ({a['error']})" if a.get("error") else "")
                for number, a in enumerate(attempts, 1)
            )
        )
    outputs = instance.get("outputs") or {}
    sections.append("Outputs:\n" + (_indented(as_yaml(outputs)) if outputs else f"  {NONE}"))
    health = instance.get("health") or {}
    report = health.get("last_report") or {}
    sections.append(
        "Health:\n"
        + _fields(
            [
                ("State", health.get("state")),
                ("Last report", health.get("last_report_at")),
                ("Metrics", _report_summary(report)),
            ],
            prefix="  ",
        )
    )
    autostop = (instance.get("spec") or {}).get("autostop")
    if autostop:
        state = instance.get("autostop") or {}
        sections.append(
            "Autostop:\n"
            + _fields(
                [
                    ("Settings", autostop_settings(autostop)),
                    ("Idle since", state.get("idle_since")),
                    ("Warning", state.get("warning")),
                    ("Users warned", state.get("warned_at")),
                    ("Acted", state.get("decided_at")),
                ],
                prefix="  ",
            )
        )
    if operation is None:
        sections.append(f"Last operation:\n  {NONE}")
    else:
        steps = ", ".join(f"{s['name']} ({s['status']})" for s in operation.get("steps") or [])
        sections.append(
            "Last operation:\n"
            + _fields(
                [
                    ("ID", operation["id"]),
                    ("Kind", operation.get("kind")),
                    ("Status", operation.get("status")),
                    ("Steps", steps),
                    ("Error", operation.get("error")),
                    ("Updated", operation.get("updated_at")),
                ],
                prefix="  ",
            )
        )
    if instance.get("drift") or instance.get("status") in ("drifted", "lost"):
        sections.append("Drift:\n" + "\n".join(drift_lines(instance.get("drift"))))
    if snapshots:
        sections.append("Snapshots:\n" + _indented(snapshots_table(snapshots, now)))
    else:
        sections.append(f"Snapshots:\n  {NONE}")
    return "\n".join(sections)


def _value_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def drift_lines(drift: dict | None) -> list[str]:
    """What the last refresh found: one line per difference (resource, property, expected -> actual)."""
    if not drift:
        return [f"  {NONE} (never refreshed: orch refresh NAME)"]
    lines = [f"  Checked: {drift.get('checked_at')}" + ("  LOST: its machine is gone" if drift.get("lost") else "")]
    differences = drift.get("differences") or []
    if not differences:
        lines.append("  no differences from the spec")
    for difference in differences:
        lines.append(
            f"  {difference['resource']}: {difference['property']}: expected {_value_text(difference['expected'])}, "
            f"actual {_value_text(difference['actual'])}"
        )
    return lines


def drift_text(ref: str, instance: dict) -> str:
    return f"{ref} is {instance.get('status')}\n" + "\n".join(drift_lines(instance.get("drift")))


def without_nulls(data: Any) -> Any:
    """The document without its unset (null) fields, which only add noise when reading it."""
    if isinstance(data, dict):
        return {key: without_nulls(value) for key, value in data.items() if value is not None}
    if isinstance(data, list):
        return [without_nulls(item) for item in data]
    return data


def document_diff(stored: dict | None, wanted: dict, stored_name: str, wanted_name: str) -> list[str]:
    """A unified diff of two documents as YAML (unset fields left out); every line added when there is no stored one."""
    before = as_yaml(without_nulls(stored)).splitlines() if stored is not None else []
    after = as_yaml(without_nulls(wanted)).splitlines()
    return list(difflib.unified_diff(before, after, stored_name, wanted_name, lineterm=""))


def preview_lines(preview: dict) -> list[str]:
    """The steps of a preview that change something: `~ update  docker:index/container:Container  web-1  [image]`."""
    lines, shown = [], set()
    for step in preview.get("steps") or []:
        symbol = STEP_SYMBOLS.get(step.get("op"))
        if symbol is None or step.get("urn") in shown:  # `same`, `refresh`; the other half of a replacement
            continue
        shown.add(step.get("urn"))
        mark, verb = symbol
        keys = step.get("diff") or []
        changed = f"  [{', '.join(keys)}]" if keys else ""
        lines.append(f"{mark:<2} {verb:<7}  {step.get('type')}  {step.get('name')}{changed}")
    return lines


def changes_summary(changes: dict) -> str:
    """`1 to update, 3 unchanged` from a preview's counts per op."""
    counts = [(op, n) for op, n in (changes or {}).items() if n and op != "same"]
    parts = [f"{n} to {op}" for op, n in counts]
    if (changes or {}).get("same"):
        parts.append(f"{changes['same']} unchanged")
    return ", ".join(parts) or "no resources"


def stack_text(stack: dict) -> str:
    resources = [(r.get("type"), r.get("name"), r.get("id")) for r in stack.get("resources") or []]
    outputs = stack.get("outputs") or {}
    return "\n".join(
        [
            f"Stack: {stack.get('stack')}",
            "Resources:",
            _indented(table(("TYPE", "NAME", "ID"), resources)) if resources else f"  {NONE}",
            "Outputs:",
            _indented(as_yaml(outputs)) if outputs else f"  {NONE}",
        ]
    )


def metrics_table(samples: list[dict]) -> str:
    rows = []
    for sample in samples:
        memory = sample.get("memory") or {}
        gpus = sample.get("gpus") or []
        load = sample.get("load")
        rows.append(
            (
                sample.get("ts"),
                sample.get("cpu_percent"),
                " ".join(str(v) for v in load) if isinstance(load, list) else load,
                f"{bytes_human(memory.get('used'))}/{bytes_human(memory.get('total'))}" if memory else None,
                " ".join(f"{g.get('utilization_percent')}%" for g in gpus),
                " ".join(f"{bytes_human(g.get('memory_used'))}/{bytes_human(g.get('memory_total'))}" for g in gpus),
            )
        )
    return table(("TIME", "CPU%", "LOAD", "MEMORY", "GPU-UTIL", "GPU-MEMORY"), rows)


def _attempt_place(attempt: dict, regions: bool) -> str:
    """Its zone; with a region list (region failover) `region / zone`, or the region where the cloud chose the zone."""
    if regions and attempt.get("region"):
        return f"{attempt['region']} / {attempt['zone']}" if attempt.get("zone") else attempt["region"]
    return str(attempt.get("zone"))
