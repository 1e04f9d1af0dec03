"""Tests of Pulumi's Automation API suite that cannot run against the stand-in, each with why.

Ids are relative to the suite directory (`sdk/python/lib/test/automation`). An id names one
test, or every parametrization of it (`test_x` covers `test_x[a]`, `test_x[b]`, ...).
Measured against pulumi/pulumi master of 2026-08-21 (1b5949891b, 3.260.0 in development:
the newest snapshot available; the installed SDK is 3.272.0).
"""

from __future__ import annotations

# Where the harness puts the suite, relative to pytest's rootdir: the package layout upstream
# has (`test/` is a package whose conftest.py the suite's tests use).
SUITE_PACKAGE_DIR = "test/automation"

CLI_INSTALLER = (
    "downloads a Pulumi CLI release from get.pulumi.com (PulumiCommand.install): "
    "needs the network, and tests the real CLI's installer, not the CLI"
)
GO_HOST = "runs a Go program: needs the Go language host and toolchain (the stand-in runs Python programs only)"
NODE_HOST = (
    "runs a JavaScript/TypeScript program: needs the Node.js language host, and `pulumi install` "
    "fetches its npm packages over the network"
)
DOTNET_HOST = "runs a .NET program: needs the .NET language host and SDK, and NuGet packages over the network"
PYTHON_INSTALL_FROM_CHECKOUT = (
    "`pulumi install` creates a virtualenv from requirements.txt, whose `-e ../../../../../..` is the "
    "root of a whole pulumi/pulumi checkout (not extracted) and whose dependencies come from PyPI over the network"
)
PLUGIN_DOWNLOAD = "installs and removes the real aws provider plugin (v6.1.0), downloaded over the network"
IMPORT_WITH_REAL_PROVIDER = (
    "installs the real random provider plugin over the network, imports a resource through it and "
    "compares the YAML code the YAML language host generates"
)
CLOUD_ORGANIZATIONS = "needs a Pulumi Cloud account (PULUMI_ACCESS_TOKEN): default organizations are a Cloud feature"
CLOUD_TAGS = (
    "needs a Pulumi Cloud account (PULUMI_ACCESS_TOKEN): the test skips itself without one "
    "(upstream runs stack tags only against the Cloud backend)"
)
CLOUD_ESC = "needs Pulumi ESC environments in the `moolumi` Pulumi Cloud organization (the test skips itself elsewhere)"
CLOUD_DEPLOYMENTS = (
    "needs Pulumi Deployments (PULUMI_ACCESS_TOKEN and PULUMI_TEST_DEPLOYMENTS_API) and a git repository on GitHub"
)
SKIPPED_UPSTREAM = "skipped upstream (unittest.skip until pulumi/pulumi#7127 re-enables the warning)"

EXCLUDED_TESTS: dict[str, str] = {
    "test_cmd.py::test_install_default_root": CLI_INSTALLER,
    "test_cmd.py::test_install_twice": CLI_INSTALLER,
    "test_cmd.py::test_incompatible_version": CLI_INSTALLER,
    "test_errors.py::test_runtime_errors[python-failed with an unhandled exception]": PYTHON_INSTALL_FROM_CHECKOUT,
    "test_errors.py::test_runtime_errors[go-panic: runtime error]": GO_HOST,
    "test_errors.py::test_runtime_errors[dotnet-failed with an unhandled exception]": DOTNET_HOST,
    "test_errors.py::test_runtime_errors[javascript-failed with an unhandled exception]": NODE_HOST,
    "test_errors.py::test_runtime_errors[typescript-failed with an unhandled exception]": NODE_HOST,
    "test_errors.py::test_compilation_errors[go-: syntax error:|: undefined:]": GO_HOST,
    "test_errors.py::test_compilation_errors[dotnet-Build FAILED.]": DOTNET_HOST,
    "test_errors.py::test_compilation_errors[typescript-Unable to compile TypeScript]": NODE_HOST,
    "test_local_workspace.py::TestLocalWorkspace::test_stack_lifecycle_local_program": GO_HOST,
    "test_local_workspace.py::TestLocalWorkspace::test_plugin_functions": PLUGIN_DOWNLOAD,
    "test_local_workspace.py::TestLocalWorkspace::test_import_resources": IMPORT_WITH_REAL_PROVIDER,
    "test_local_workspace.py::TestLocalWorkspace::test_org_get_set_default_integration": CLOUD_ORGANIZATIONS,
    "test_local_workspace.py::TestLocalWorkspace::test_tag_methods": CLOUD_TAGS,
    "test_local_workspace.py::TestLocalWorkspace::test_config_env_functions": CLOUD_ESC,
    "test_local_workspace.py::TestLocalWorkspace::test_secret_config_warnings": SKIPPED_UPSTREAM,
    "test_remote_workspace.py::test_remote_workspace_stack_lifecycle": CLOUD_DEPLOYMENTS,
}


def excluded_reason(test_id: str) -> str | None:
    """Why the test is excluded, or None when it is applicable."""
    name = test_id.split("[", 1)[0]
    return EXCLUDED_TESTS.get(test_id) or EXCLUDED_TESTS.get(name)
