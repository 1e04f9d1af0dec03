"""stacks/azure_power.py's ARM calls against a local fake of Azure's login and Resource Manager endpoints."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stacks.azure_power import ArmClient, AzureError, PowerStateProvider

VM = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/gpu-1"
CREDENTIALS = {"ARM_CLIENT_ID": "app", "ARM_CLIENT_SECRET": "secret", "ARM_TENANT_ID": "tenant", "PATH": "/nonexistent"}


class FakeAzure:
    """One VM's power state (Azure's PowerState code); deallocate and start are long-running operations
    polled `polls` times before they end with `outcome`."""

    def __init__(self, state: str = "running", polls: int = 2, outcome: str = "Succeeded"):
        self.state, self.polls, self.outcome = state, polls, outcome
        self.requests: list[tuple[str, str]] = []
        self.pending: dict[str, tuple[int, str]] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict, headers: dict | None = None):
                raw = json.dumps(body).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                path = urllib.parse.urlsplit(self.path).path
                fake.requests.append(("POST", path))
                if path == "/tenant/oauth2/v2.0/token":
                    assert form["grant_type"] == ["client_credentials"] and form["client_secret"] == ["secret"]
                    return self._reply(200, {"access_token": "tok", "token_type": "Bearer"})
                assert self.headers["Authorization"] == "Bearer tok"
                action = path.rsplit("/", 1)[1]
                operation = f"op-{len(fake.pending)}"
                fake.pending[operation] = (fake.polls, "deallocated" if action == "deallocate" else "running")
                url = f"http://{self.headers['Host']}/operations/{operation}"
                return self._reply(202, {}, {"Azure-AsyncOperation": url, "Retry-After": "0"})

            def do_GET(self):
                path = urllib.parse.urlsplit(self.path).path
                fake.requests.append(("GET", path))
                assert self.headers["Authorization"] == "Bearer tok"
                if path == f"{VM}/instanceView":
                    statuses = [{"code": "ProvisioningState/succeeded"}, {"code": f"PowerState/{fake.state}"}]
                    return self._reply(200, {"statuses": statuses})
                operation = path.rsplit("/", 1)[1]
                left, target = fake.pending[operation]
                if left:
                    fake.pending[operation] = (left - 1, target)
                    return self._reply(200, {"status": "InProgress"}, {"Retry-After": "0"})
                if fake.outcome == "Succeeded":
                    fake.state = target
                    return self._reply(200, {"status": "Succeeded"})
                return self._reply(200, {"status": fake.outcome, "error": {"code": "AllocationFailed", "message": "no capacity"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def client(self, environ=CREDENTIALS) -> ArmClient:
        return ArmClient(endpoint=self.url, authority=self.url, environ=environ, sleep=lambda s: None)


@pytest.fixture
def azure():
    fakes: list[FakeAzure] = []

    def make(**kwargs) -> FakeAzure:
        fakes.append(FakeAzure(**kwargs))
        return fakes[-1]

    yield make
    for fake in fakes:
        fake.server.shutdown()
        fake.server.server_close()


def test_stop_deallocates_and_waits_for_the_operation_then_start_starts(azure):
    fake = azure(state="running", polls=2)
    client = fake.client()
    assert client.set_power_state(VM, "stopped") == "stopped" and fake.state == "deallocated"
    assert fake.requests[:3] == [
        ("POST", "/tenant/oauth2/v2.0/token"),
        ("GET", f"{VM}/instanceView"),
        ("POST", f"{VM}/deallocate"),
    ]
    assert [r for r in fake.requests if r[1].startswith("/operations/")] == [("GET", "/operations/op-0")] * 3
    assert client.power_state(VM) == "stopped"
    assert client.set_power_state(VM, "running") == "running" and fake.state == "running"
    assert ("POST", f"{VM}/start") in fake.requests
    assert fake.requests.count(("POST", "/tenant/oauth2/v2.0/token")) == 1, "the token is reused"


def test_a_vm_already_in_the_wanted_state_is_left_alone(azure):
    fake = azure(state="running")
    assert fake.client().set_power_state(VM, "running") == "running"
    assert [method for method, path in fake.requests if path.startswith(VM)] == ["GET"]


def test_a_powered_off_vm_is_not_stopped_and_gets_deallocated(azure):
    """Powered off is still billed: it reads as its own state, and a wanted "stopped" deallocates it."""
    fake = azure(state="stopped", polls=0)
    client = fake.client()
    assert client.power_state(VM) == "powered-off"
    assert client.set_power_state(VM, "stopped") == "stopped" and fake.state == "deallocated"
    assert ("POST", f"{VM}/deallocate") in fake.requests
    fake.state = "hibernated"
    assert client.power_state(VM) == "hibernated", "a code it does not know is passed through"


def test_a_failed_operation_raises_with_azures_error(azure):
    fake = azure(state="deallocated", polls=0, outcome="Failed")
    with pytest.raises(AzureError, match=r"start .*gpu-1: Failed: AllocationFailed no capacity"):
        fake.client().set_power_state(VM, "running")


def test_no_credentials_is_an_error_that_says_what_to_set(azure):
    fake = azure()
    with pytest.raises(AzureError, match="set ARM_CLIENT_ID, ARM_CLIENT_SECRET and ARM_TENANT_ID, or log in"):
        fake.client(environ={"PATH": "/nonexistent"}).power_state(VM)
    with pytest.raises(AzureError, match="not a virtual machine id"):
        fake.client().power_state("/etc/passwd")


def test_provider_reads_the_state_back_and_diffs_on_it(azure, monkeypatch):
    """A refresh (read) sees a VM deallocated behind the stack's back; the next up (diff, update) starts it."""
    fake = azure(state="running", polls=0)
    monkeypatch.setattr(ArmClient, "from_environment", classmethod(lambda cls: fake.client()))
    provider = PowerStateProvider()
    created = provider.create({"vm_id": VM, "state": "running"})
    assert (created.id, created.outs) == (f"{VM}/powerState", {"vm_id": VM, "state": "running"})
    fake.state = "deallocated"
    read = provider.read(created.id, created.outs)
    assert read.outs == {"vm_id": VM, "state": "stopped"}
    diff = provider.diff(created.id, read.outs, {"vm_id": VM, "state": "running"})
    assert (diff.changes, diff.replaces) == (True, [])
    assert provider.update(created.id, read.outs, {"vm_id": VM, "state": "running"}).outs["state"] == "running"
    assert fake.state == "running"
    assert provider.diff(created.id, read.outs, {"vm_id": VM + "x", "state": "stopped"}).replaces == ["vm_id"]
