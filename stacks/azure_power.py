"""An Azure VM's power state as a resource of the stack: a Pulumi dynamic resource.

azure-native's `VirtualMachine` has no property for the power state (the ARM API has actions,
`deallocate` and `start`, and reports the state only in the VM's instance view), so the program
declares `VirtualMachinePowerState(vm_id, state="running"|"stopped")`, whose provider calls those
actions: create and update bring the VM to the wanted state, read (a `pulumi refresh`) reads it
back from the instance view, delete does nothing (the VM's own deletion ends it). Stopped is
`deallocate`, not `powerOff`: a powered-off VM keeps its hardware and is still billed for it.

The provider runs in Pulumi's dynamic-provider host, a process of its own, so it gets its
credentials as the azure-native provider does, from the environment: a service principal
(`ARM_CLIENT_ID`, `ARM_CLIENT_SECRET`, `ARM_TENANT_ID`), else the Azure CLI's login
(`az account get-access-token`). Standard library only (urllib): the host imports this module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pulumi
import pulumi.dynamic

ARM_ENDPOINT = "https://management.azure.com"
AUTHORITY_HOST = "https://login.microsoftonline.com"
COMPUTE_API_VERSION = "2024-07-01"
# Bounds of one ARM call, and of waiting for a deallocate or start (a GPU VM's start can take minutes).
REQUEST_TIMEOUT_S = 30
POWER_TIMEOUT_S = 900
DEFAULT_POLL_S = 5.0
MAX_POLL_S = 30.0
AZ_CLI_TIMEOUT_S = 60

# The instance view's `PowerState/<code>` as the program's state. A powered-off (not deallocated) VM
# is neither: it is still billed, and a wanted "stopped" deallocates it.
POWER_STATES = {
    "running": "running",
    "starting": "running",
    "deallocated": "stopped",
    "deallocating": "stopped",
    "stopped": "powered-off",
    "stopping": "powered-off",
}


class AzureError(Exception):
    """An ARM or token call that failed; the message names the call and Azure's error."""


class ArmClient:
    """The few ARM calls the power state needs: read the instance view, deallocate, start, wait."""

    def __init__(
        self,
        *,
        endpoint: str = ARM_ENDPOINT,
        authority: str = AUTHORITY_HOST,
        environ: dict[str, str] | None = None,
        sleep=time.sleep,
        clock=time.monotonic,
    ):
        self.endpoint = endpoint.rstrip("/")
        self.authority = authority.rstrip("/")
        self.environ = dict(os.environ if environ is None else environ)
        self._sleep = sleep
        self._clock = clock
        self._token: str | None = None

    @classmethod
    def from_environment(cls) -> ArmClient:
        # AZURE_AUTHORITY_HOST is the Azure SDKs' own variable for another login host.
        return cls(authority=os.environ.get("AZURE_AUTHORITY_HOST") or AUTHORITY_HOST)

    # -- credentials --------------------------------------------------------------------------

    def token(self) -> str:
        if self._token is None:
            self._token = self._service_principal_token() or self._cli_token()
        return self._token

    def _service_principal_token(self) -> str | None:
        client_id, secret, tenant = (self.environ.get(k) for k in ("ARM_CLIENT_ID", "ARM_CLIENT_SECRET", "ARM_TENANT_ID"))
        if not (client_id and secret and tenant):
            return None
        form = urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
                "scope": f"{ARM_ENDPOINT}/.default",
            }
        ).encode()
        url = f"{self.authority}/{urllib.parse.quote(tenant, safe='')}/oauth2/v2.0/token"
        request = urllib.request.Request(url, data=form, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        status, _, body = _send(request, "token")
        if status != 200 or not body.get("access_token"):
            raise AzureError(f"token: HTTP {status}: {_azure_message(body)}")
        return body["access_token"]

    def _cli_token(self) -> str:
        az = shutil.which("az", path=self.environ.get("PATH"))
        if az is None:
            raise AzureError(
                "no Azure credentials: set ARM_CLIENT_ID, ARM_CLIENT_SECRET and ARM_TENANT_ID, or log in with `az login`"
            )
        done = subprocess.run(
            [az, "account", "get-access-token", "--resource", f"{ARM_ENDPOINT}/", "--output", "json"],
            capture_output=True,
            text=True,
            timeout=AZ_CLI_TIMEOUT_S,
            env=self.environ,
        )
        if done.returncode != 0:
            raise AzureError(f"az account get-access-token failed: {done.stderr.strip()[:500]}")
        return json.loads(done.stdout)["accessToken"]

    # -- calls --------------------------------------------------------------------------------

    def _call(self, method: str, url: str) -> tuple[int, dict[str, str], dict]:
        request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        request.add_header("Authorization", f"Bearer {self.token()}")
        return _send(request, f"{method} {urllib.parse.urlsplit(url).path}")

    def _vm_url(self, vm_id: str, action: str) -> str:
        if not vm_id.startswith("/subscriptions/"):
            raise AzureError(f"not a virtual machine id: {vm_id!r}")
        return f"{self.endpoint}{vm_id}/{action}?api-version={COMPUTE_API_VERSION}"

    def power_state(self, vm_id: str) -> str:
        """running, stopped (deallocated), powered-off, or Azure's code for anything else."""
        status, _, body = self._call("GET", self._vm_url(vm_id, "instanceView"))
        if status != 200:
            raise AzureError(f"instance view of {vm_id}: HTTP {status}: {_azure_message(body)}")
        codes = [s.get("code", "") for s in body.get("statuses") or [] if s.get("code", "").startswith("PowerState/")]
        if not codes:
            return "unknown"
        code = codes[0].split("/", 1)[1]
        return POWER_STATES.get(code, code)

    def set_power_state(self, vm_id: str, wanted: str) -> str:
        """Deallocate ("stopped") or start ("running") the VM unless it already is; the state it is in after."""
        if wanted not in ("running", "stopped"):
            raise AzureError(f"state must be running or stopped, not {wanted!r}")
        current = self.power_state(vm_id)
        if current == wanted:
            return current
        action = "deallocate" if wanted == "stopped" else "start"
        status, headers, body = self._call("POST", self._vm_url(vm_id, action))
        if status not in (200, 202):
            raise AzureError(f"{action} {vm_id}: HTTP {status}: {_azure_message(body)}")
        if status == 202:
            self._wait(action, vm_id, headers)
        return wanted

    def _wait(self, action: str, vm_id: str, headers: dict[str, str]) -> None:
        """Poll the long-running operation (Azure-AsyncOperation, else Location) until it ends."""
        async_url = headers.get("azure-asyncoperation")
        location = headers.get("location")
        if not (async_url or location):
            raise AzureError(f"{action} {vm_id}: accepted without an operation to follow")
        deadline = self._clock() + POWER_TIMEOUT_S
        delay = _retry_after(headers)
        while True:
            if self._clock() + delay > deadline:
                raise AzureError(f"{action} {vm_id}: not done after {POWER_TIMEOUT_S} s")
            self._sleep(delay)
            status, headers, body = self._call("GET", async_url or location)
            delay = _retry_after(headers)
            if async_url:
                state = body.get("status")
                if status == 200 and state == "Succeeded":
                    return
                if status != 200 or state in ("Failed", "Canceled"):
                    raise AzureError(f"{action} {vm_id}: {state or f'HTTP {status}'}: {_azure_message(body)}")
            elif status in (200, 204):
                return
            elif status != 202:
                raise AzureError(f"{action} {vm_id}: HTTP {status}: {_azure_message(body)}")


def _send(request: urllib.request.Request, what: str) -> tuple[int, dict[str, str], dict]:
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, error.headers, error.read()
    except (urllib.error.URLError, TimeoutError) as error:
        raise AzureError(f"{what}: {error}") from None
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {"error": {"message": raw[:200].decode(errors="replace")}}
    return status, {k.lower(): v for k, v in headers.items()}, body if isinstance(body, dict) else {}


def _retry_after(headers: dict[str, str]) -> float:
    try:
        return min(max(float(headers.get("retry-after", DEFAULT_POLL_S)), 0.0), MAX_POLL_S)
    except ValueError:
        return DEFAULT_POLL_S


def _azure_message(body: dict) -> str:
    error = body.get("error") or {}
    return f"{error.get('code', '')} {error.get('message', '')}".strip() or "no error detail"


class PowerStateProvider(pulumi.dynamic.ResourceProvider):
    """The dynamic provider: its id is the VM's id plus `/powerState`; its outputs are `vm_id` and `state`."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        replaces = ["vm_id"] if olds.get("vm_id") != news.get("vm_id") else []
        return pulumi.dynamic.DiffResult(changes=bool(replaces) or olds.get("state") != news.get("state"), replaces=replaces)

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        state = ArmClient.from_environment().set_power_state(props["vm_id"], props["state"])
        return pulumi.dynamic.CreateResult(f"{props['vm_id']}/powerState", {"vm_id": props["vm_id"], "state": state})

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        vm_id = props.get("vm_id") or id_.removesuffix("/powerState")
        state = ArmClient.from_environment().power_state(vm_id)
        return pulumi.dynamic.ReadResult(id_, {"vm_id": vm_id, "state": state})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        state = ArmClient.from_environment().set_power_state(news["vm_id"], news["state"])
        return pulumi.dynamic.UpdateResult({"vm_id": news["vm_id"], "state": state})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to delete: the state goes with the VM."""


class VirtualMachinePowerState(pulumi.dynamic.Resource, module="azure", name="VirtualMachinePowerState"):
    """`pulumi-python:dynamic/azure:VirtualMachinePowerState`: the VM `vm_id` deallocated or running."""

    vm_id: pulumi.Output[str]
    state: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        vm_id: pulumi.Input[str],
        state: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(PowerStateProvider(), name, {"vm_id": vm_id, "state": state}, opts)
