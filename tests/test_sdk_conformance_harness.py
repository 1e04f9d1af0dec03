"""The harness that measures the stand-in against Pulumi's Automation API suite counts right.

A small suite stands in for Pulumi's: each of its tests is one case of the harness's
classification (drives the CLI, only probes `pulumi version`, fails, skips itself, is in the
exclusion table, is an asyncio coroutine).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.pulumi_standin.conformance import run_sdk_tests
from tests.pulumi_standin.conformance.exclusions import CLI_INSTALLER, EXCLUDED_TESTS

SUITE_FILES = {
    "__init__.py": "",
    "test_drives.py": """
        import asyncio
        import subprocess

        import pytest

        def run_cli(*args):
            # The outcome of the command does not matter here, only that the test ran it.
            subprocess.run(["pulumi", *args], capture_output=True, check=False)

        def test_runs_a_command():
            run_cli("version")
            run_cli("stack", "ls", "--json")

        def test_only_probes_the_version():
            run_cli("version")

        def test_never_runs_the_cli():
            assert 1 + 1 == 2

        @pytest.mark.parametrize("label", ["a/b c::d"])
        def test_parametrized(label):
            run_cli("stack", "ls", "--json")

        def test_fails_after_the_cli():
            run_cli("stack", "ls", "--json")
            raise AssertionError("the stand-in said no\\nsecond line")

        def test_fails_without_the_cli():
            raise ValueError("broken before any command")

        def test_skips_itself():
            pytest.skip("needs something this machine lacks")

        @pytest.mark.asyncio
        async def test_coroutine():
            await asyncio.sleep(0)
            run_cli("stack", "ls", "--json")
    """,
    # Named like an entry of the exclusion table: it would fail if it ran.
    "test_cmd.py": """
        def test_install_twice():
            raise AssertionError("an excluded test ran")
    """,
}


def write_suite(root: Path) -> Path:
    suite = root / "test" / "automation"
    suite.mkdir(parents=True)
    (root / "test" / "__init__.py").write_text("")
    (root / "test" / "conftest.py").write_text("")
    for name, text in SUITE_FILES.items():
        (suite / name).write_text(textwrap.dedent(text))
    return suite


def test_harness_classifies_each_kind_of_test(tmp_path: Path, capsys) -> None:
    suite = write_suite(tmp_path / "sdk")
    out_dir = tmp_path / "out"

    exit_status = run_sdk_tests.main([str(suite), "--out", str(out_dir)])

    measurement = run_sdk_tests.measure(out_dir)
    printed = capsys.readouterr().out
    assert exit_status == 1, printed
    assert sorted(outcome.test_id for outcome in measurement.passing) == [
        "test_drives.py::test_coroutine",
        "test_drives.py::test_parametrized[a/b c::d]",
        "test_drives.py::test_runs_a_command",
    ]
    assert sorted(outcome.test_id for outcome in measurement.failing) == [
        "test_drives.py::test_fails_after_the_cli",
        "test_drives.py::test_fails_without_the_cli",
    ]
    assert sorted(outcome.test_id for outcome in measurement.without_cli) == [
        "test_drives.py::test_never_runs_the_cli",
        "test_drives.py::test_only_probes_the_version",
    ]
    assert measurement.excluded == {
        "test_cmd.py::test_install_twice": CLI_INSTALLER,
        "test_drives.py::test_skips_itself": "skips itself: needs something this machine lacks",
    }
    assert set(measurement.stale_exclusions) == set(EXCLUDED_TESTS) - {"test_cmd.py::test_install_twice"}
    assert "applicable: 5  passing: 3  failing: 2  excluded: 2" in printed
    assert "AssertionError: the stand-in said no\n" in printed
    assert "ValueError: broken before any command" in printed


def test_command_error_summary_is_the_exit_code_and_first_stderr_line() -> None:
    message = (
        "pulumi.automation.errors.CommandError: \n code: 255\n stdout: Previewing\nmore\n"
        " stderr: error: unsupported color option: 'x'.\nsecond line"
    )

    assert run_sdk_tests.error_summary(message) == "CommandError (exit 255): error: unsupported color option: 'x'."
    assert run_sdk_tests.error_summary("AssertionError: a\nb") == "AssertionError: a"
