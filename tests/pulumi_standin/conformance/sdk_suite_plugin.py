"""pytest plugin loaded by run_sdk_tests.py into the run of Pulumi's Automation API suite.

- Deselects the tests in `EXCLUDED_TESTS` (they cannot run here; the table says why) and
  writes every collected test id to `--standin-collected-out`, so the harness can tell a
  stale exclusion from an applied one.
- Runs `@pytest.mark.asyncio` coroutine tests. Upstream runs them with pytest-asyncio,
  which this project does not install; each runs to completion in a fresh event loop
  (`asyncio.run`), as pytest-asyncio's strict mode does with its function-scoped loop.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path

import pytest

from .exclusions import SUITE_PACKAGE_DIR, excluded_reason


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--standin-collected-out", help="file to write the collected test ids to (JSON list)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "asyncio: coroutine test, run in its own event loop")


def suite_test_id(nodeid: str) -> str:
    """The test's id relative to the suite directory (`test_cmd.py::test_fixup_env`)."""
    return nodeid.removeprefix(f"{SUITE_PACKAGE_DIR}/")


# Last, so that tests deselected by `-k`/`--deselect` given to the harness are already gone.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    collected_out = config.getoption("--standin-collected-out")
    if collected_out:
        Path(collected_out).write_text(json.dumps([suite_test_id(item.nodeid) for item in items]))
    kept = [item for item in items if excluded_reason(suite_test_id(item.nodeid)) is None]
    deselected = [item for item in items if excluded_reason(suite_test_id(item.nodeid)) is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    test_function = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test_function) or pyfuncitem.get_closest_marker("asyncio") is None:
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(test_function(**arguments))
    return True
