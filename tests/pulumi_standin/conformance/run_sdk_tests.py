"""Runs Pulumi's own Python Automation API tests against the stand-in and counts the results.

    python -m tests.pulumi_standin.conformance.run_sdk_tests /path/to/sdk/python/lib/test/automation

The suite is not part of this repository: extract `sdk/python/lib/test/automation` (and its
parent package's `__init__.py` and `conftest.py`, which hold fixtures the suite uses) from a
pulumi/pulumi checkout of the SDK version in use. The harness copies it to a temporary
directory (the source stays untouched) and runs it with pytest in the interpreter running
the harness (whose `pulumi` SDK is the one measured), with:

- `pulumi` on PATH answering with the stand-in: a recording wrapper, first on PATH, notes
  which test ran which command line and execs `tests/pulumi_standin/bin/pulumi`, which comes
  next on PATH;
- a temporary file backend (`PULUMI_BACKEND_URL`), `PULUMI_CONFIG_PASSPHRASE`, temporary
  `PULUMI_HOME` and `HOME`, and no `PULUMI_ACCESS_TOKEN` (so no test reaches Pulumi Cloud).

A test is *excluded* when `exclusions.EXCLUDED_TESTS` names it (with the reason) or when it
skips itself; *applicable* when it ran a CLI command (or failed). A test that passed running
no command but the `pulumi version` probe every LocalWorkspace makes is a unit test of the
SDK's own code (it mocks the CLI or parses files) and is counted apart. Results come from
pytest's JUnit XML report. Everything the run leaves (report, pytest's output, the log of
CLI calls) is kept in the output directory it prints.

Exit status: 0 when every applicable test passes, 1 when some fail, 2 when the suite could
not be run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .exclusions import EXCLUDED_TESTS, SUITE_PACKAGE_DIR, excluded_reason

STANDIN_BIN = Path(__file__).resolve().parents[1] / "bin"
REPO_ROOT = Path(__file__).resolve().parents[3]
PLUGIN_MODULE = "tests.pulumi_standin.conformance.sdk_suite_plugin"

# Upstream marks its slowest test with a 300 s timeout; no test of the suite needs more.
PER_TEST_TIMEOUT_S = 300
# The whole suite runs in a few minutes on two cores; past this the run is broken.
SUITE_TIMEOUT_S = 3600
# The passphrase upstream's conftest uses. (No PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK: the stand-in
# reports the installed SDK's version, so the SDK's version check passes as it would with the real CLI.)
CONFIG_PASSPHRASE = "test"
# Variables that would point the suite at Pulumi Cloud or at state outside the run.
CLEARED_VARIABLES = ("PULUMI_ACCESS_TOKEN", "PULUMI_TEST_ORG", "PULUMI_TEST_DEPLOYMENTS_API", "PULUMI_API")

CLI_CALLS_LOG = "cli-calls.log"
JUNIT_REPORT = "junit.xml"
PYTEST_OUTPUT = "pytest-output.txt"
COLLECTED_IDS = "collected.json"
# pytest's exit codes when it ran the tests: all passed, some failed.
PYTEST_RAN_TESTS = (0, 1)

# How the SDK's CommandError renders (`str(error)`): exit code, stdout, stderr.
COMMAND_ERROR = re.compile(r"CommandError: \s*code: (?P<code>-?\d+)\s*stdout:.*?\n stderr: (?P<stderr>.*)", re.DOTALL)
# Every LocalWorkspace runs `pulumi version` when it is made, mocked or not.
VERSION_PROBE = "version"

RECORDING_WRAPPER = """#!/usr/bin/env bash
# Notes which test ran which `pulumi` command line, then runs the stand-in.
printf '%s\\t%s\\n' "${{PYTEST_CURRENT_TEST:-}}" "$*" >> {log}
exec {standin} "$@"
"""


@dataclass
class TestOutcome:
    test_id: str
    status: str  # "passed", "failed" or "skipped"
    message: str = ""
    cli_commands: list[str] = field(default_factory=list)


@dataclass
class Measurement:
    collected: list[str]
    applicable: list[TestOutcome]
    without_cli: list[TestOutcome]
    excluded: dict[str, str]  # test id -> reason
    stale_exclusions: list[str]

    @property
    def passing(self) -> list[TestOutcome]:
        return [outcome for outcome in self.applicable if outcome.status == "passed"]

    @property
    def failing(self) -> list[TestOutcome]:
        return [outcome for outcome in self.applicable if outcome.status == "failed"]


def junit_key(test_id: str) -> tuple[str, str]:
    """(classname, name) of a test in pytest's JUnit report, from its id relative to the suite."""
    nodeid = f"{SUITE_PACKAGE_DIR}/{test_id}"
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def error_summary(message: str) -> str:
    """The first line of a failure; for the SDK's CommandError, the CLI's exit code and first stderr line."""
    command_error = COMMAND_ERROR.search(message)
    if command_error:
        return f"CommandError (exit {command_error['code']}): {first_line(command_error['stderr'])}"
    return first_line(message)


def drives_cli(command_lines: list[str]) -> bool:
    """Whether a test ran a `pulumi` command besides the version probe every LocalWorkspace makes."""
    return any(command_line.strip() != VERSION_PROBE for command_line in command_lines)


def prepare_suite(sdk_test_dir: Path, root: Path) -> None:
    """Copies the suite into `root` in the package layout its imports expect."""
    package_dir = root / SUITE_PACKAGE_DIR
    shutil.copytree(sdk_test_dir, package_dir, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    parent_package = sdk_test_dir.parent
    if (parent_package / "__init__.py").is_file():
        shutil.copyfile(parent_package / "__init__.py", package_dir.parent / "__init__.py")
    else:
        (package_dir.parent / "__init__.py").write_text("")
    if (parent_package / "conftest.py").is_file():
        shutil.copyfile(parent_package / "conftest.py", package_dir.parent / "conftest.py")
    else:
        print(
            f"warning: {parent_package / 'conftest.py'} is missing: the tests using its fixtures "
            "(mock_config, config_settings) will error",
            file=sys.stderr,
        )
    # An empty configuration, so no ini file above the temporary directory applies.
    (root / "pytest.ini").write_text("[pytest]\n")


def write_recording_wrapper(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir()
    wrapper = bin_dir / "pulumi"
    script = RECORDING_WRAPPER.format(log=shlex.quote(str(log)), standin=shlex.quote(str(STANDIN_BIN / "pulumi")))
    wrapper.write_text(script)
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def suite_environment(work: Path, wrapper_dir: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in CLEARED_VARIABLES}
    for directory in ("home", "pulumi-home", "backend"):
        (work / directory).mkdir()
    env.update(
        PATH=os.pathsep.join([str(wrapper_dir), str(STANDIN_BIN), env.get("PATH", os.defpath)]),
        HOME=str(work / "home"),
        PULUMI_HOME=str(work / "pulumi-home"),
        PULUMI_BACKEND_URL=f"file://{work / 'backend'}",
        PULUMI_CONFIG_PASSPHRASE=CONFIG_PASSPHRASE,
        PULUMI_SKIP_UPDATE_CHECK="true",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    return env


def run_suite(sdk_test_dir: Path, out_dir: Path, pytest_args: list[str]) -> int:
    """Runs pytest on a copy of the suite; its report and logs land in `out_dir`."""
    with tempfile.TemporaryDirectory(prefix="pulumi-sdk-suite-") as work_name:
        work = Path(work_name)
        suite_root = work / "suite"
        prepare_suite(sdk_test_dir, suite_root)
        wrapper_dir = work / "bin"
        write_recording_wrapper(wrapper_dir, out_dir / CLI_CALLS_LOG)
        command = [
            sys.executable, "-m", "pytest", SUITE_PACKAGE_DIR,
            "--rootdir", str(suite_root),
            "-p", PLUGIN_MODULE,
            "-p", "no:cacheprovider",
            "--standin-collected-out", str(out_dir / COLLECTED_IDS),
            "--junitxml", str(out_dir / JUNIT_REPORT),
            "-o", "junit_family=xunit2",
            "-rfEs",
        ]  # fmt: skip
        if importlib.util.find_spec("pytest_timeout") is not None:
            command += ["--timeout", str(PER_TEST_TIMEOUT_S)]
        command += pytest_args
        with open(out_dir / PYTEST_OUTPUT, "w") as output:
            try:
                completed = subprocess.run(
                    command,
                    cwd=suite_root,
                    env=suite_environment(work, wrapper_dir),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    timeout=SUITE_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                print(f"error: the suite ran past {SUITE_TIMEOUT_S} s and was stopped", file=sys.stderr)
                return -1
        return completed.returncode


def read_cli_calls(log: Path) -> dict[str, list[str]]:
    """Command lines each test ran, by test id (from PYTEST_CURRENT_TEST, `<nodeid> (<phase>)`)."""
    calls: dict[str, list[str]] = defaultdict(list)
    if not log.is_file():
        return calls
    for line in log.read_text(errors="replace").splitlines():
        current_test, _, command_line = line.partition("\t")
        nodeid = current_test.rsplit(" (", 1)[0]
        calls[nodeid.removeprefix(f"{SUITE_PACKAGE_DIR}/")].append(command_line)
    return calls


def read_junit(report: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(status, message) of each test case in the report, by (classname, name)."""
    results: dict[tuple[str, str], tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        key = (case.get("classname", ""), case.get("name", ""))
        status, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                status, message = "failed", child.get("message") or first_line(child.text or "")
                break
            if child.tag == "skipped":
                status, message = "skipped", child.get("message") or ""
        previous = results.get(key)
        # A test that fails in teardown after passing appears twice; the failure wins.
        if previous is None or previous[0] != "failed":
            results[key] = (status, message)
    return results


def measure(out_dir: Path, check_stale_exclusions: bool = True) -> Measurement:
    collected = json.loads((out_dir / COLLECTED_IDS).read_text())
    junit = read_junit(out_dir / JUNIT_REPORT)
    cli_calls = read_cli_calls(out_dir / CLI_CALLS_LOG)
    applicable: list[TestOutcome] = []
    without_cli: list[TestOutcome] = []
    excluded: dict[str, str] = {}
    for test_id in collected:
        reason = excluded_reason(test_id)
        if reason is not None:
            excluded[test_id] = reason
            continue
        status, message = junit.get(junit_key(test_id), ("failed", "no result in the JUnit report"))
        outcome = TestOutcome(test_id, status, message, cli_calls.get(test_id, []))
        if status == "skipped":
            excluded[test_id] = f"skips itself: {message}"
        elif status == "passed" and not drives_cli(outcome.cli_commands):
            without_cli.append(outcome)
        else:
            applicable.append(outcome)
    stale = [
        excluded_id
        for excluded_id in EXCLUDED_TESTS
        if check_stale_exclusions
        and not any(test_id == excluded_id or test_id.startswith(f"{excluded_id}[") for test_id in collected)
    ]
    return Measurement(collected, applicable, without_cli, excluded, stale)


def report(measurement: Measurement, out_dir: Path) -> None:
    failing = measurement.failing
    print(f"collected:  {len(measurement.collected)}")
    print(
        f"applicable: {len(measurement.applicable)}  passing: {len(measurement.passing)}  "
        f"failing: {len(failing)}  excluded: {len(measurement.excluded)}"
    )
    print(
        f"passed without running a CLI command beyond `pulumi version` (SDK unit tests, not counted): "
        f"{len(measurement.without_cli)}"
    )
    if failing:
        print("\nfailing:")
        for outcome in failing:
            print(f"  {outcome.test_id}\n      {error_summary(outcome.message)}")
    by_reason: dict[str, list[str]] = defaultdict(list)
    for test_id, reason in measurement.excluded.items():
        by_reason[reason].append(test_id)
    if by_reason:
        print("\nexcluded:")
    for reason, test_ids in by_reason.items():
        print(f"  {reason}:")
        for test_id in test_ids:
            print(f"    {test_id}")
    if measurement.stale_exclusions:
        print("\nexclusions naming no collected test (stale, remove them):")
        for test_id in measurement.stale_exclusions:
            print(f"  {test_id}")
    print(f"\nreport, pytest output and CLI calls in {out_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("sdk_test_dir", type=Path, help="the SDK's test/automation directory")
    parser.add_argument("--out", type=Path, help="directory for the report and logs (default: a new temporary one)")
    parser.epilog = "Arguments after `--` go to pytest (e.g. `-- -k config`)."
    argv = sys.argv[1:] if argv is None else argv
    own_args, pytest_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(own_args)
    sdk_test_dir = args.sdk_test_dir.resolve()
    if not sdk_test_dir.is_dir() or not any(sdk_test_dir.glob("test_*.py")):
        print(f"error: {sdk_test_dir} holds no test_*.py files (give the SDK's test/automation)", file=sys.stderr)
        return 2
    out_dir = (args.out or Path(tempfile.mkdtemp(prefix="pulumi-sdk-conformance-"))).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale_file in (CLI_CALLS_LOG, JUNIT_REPORT, COLLECTED_IDS, PYTEST_OUTPUT):
        (out_dir / stale_file).unlink(missing_ok=True)
    returncode = run_suite(sdk_test_dir, out_dir, pytest_args)
    if not (out_dir / JUNIT_REPORT).is_file() or not (out_dir / COLLECTED_IDS).is_file():
        print(f"error: pytest exited with {returncode} and no report; see {out_dir / PYTEST_OUTPUT}", file=sys.stderr)
        return 2
    # With a selection of tests, the exclusions outside it are not stale.
    measurement = measure(out_dir, check_stale_exclusions=not pytest_args)
    report(measurement, out_dir)
    if returncode not in PYTEST_RAN_TESTS:
        print(f"error: pytest exited with {returncode}; see {out_dir / PYTEST_OUTPUT}", file=sys.stderr)
        return 2
    return 1 if measurement.failing else 0


if __name__ == "__main__":
    sys.exit(main())
