import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it } from "vitest";
import { App } from "../App";
import { signIn } from "../auth";
import { FEATURES, instance, mockFetch, type Route } from "../test-util";

function detailRoutes(found: Record<string, unknown>, extra: Route[] = []): Route[] {
  return [
    ...extra,
    { match: /\/features/, body: FEATURES() },
    { match: /\/me$/, body: { user: "alice", role: "user" } },
    { match: /GET \/api\/v1\/instances\/box-1\/operations/, body: { items: [] } },
    { match: /GET \/api\/v1\/instances\/box-1\/metrics/, body: { samples: [] } },
    { match: /GET \/api\/v1\/snapshots/, body: { items: [] } },
    { match: /GET \/api\/v1\/instances\/box-1$/, body: found },
  ];
}

beforeEach(() => {
  signIn("token-1", "alice");
  window.history.replaceState(null, "", "/instances/box-1");
});

describe("the instance page's Stop and Start", () => {
  it("stops a running instance; the service's 409 shows next to the buttons", async () => {
    const calls = mockFetch(detailRoutes(instance("box-1", { simulated: true }), [
      { match: /POST \/api\/v1\/instances\/box-1\/stop$/, status: 409, body: { status_code: 409, detail: "box-1 has an operation in progress" } },
    ]));
    render(<App />);
    const power = await screen.findByRole("group", { name: "Power" });
    expect(screen.getByTestId("simulated").textContent).toBe("simulated");
    expect((within(power).getByRole("button", { name: "Start" }) as HTMLButtonElement).disabled).toBe(true);
    await userEvent.setup().click(within(power).getByRole("button", { name: "Stop" }));
    expect((await within(power).findByRole("alert")).textContent).toBe("box-1 has an operation in progress (HTTP 409)");
    expect(calls.filter((c) => c.method === "POST").map((c) => c.url)).toEqual(["/api/v1/instances/box-1/stop"]);
  });

  it("starts a stopped instance, shown as stopped (status and health), and reloads it", async () => {
    const stopped = instance("box-1", { status: "stopped", public_ip: null, health: { state: "stopped", last_report_at: null, last_report: {} } });
    const calls = mockFetch(detailRoutes(stopped, [
      { match: /POST \/api\/v1\/instances\/box-1\/start$/, status: 202, body: { id: "op-1", kind: "start", status: "queued" } },
    ]));
    render(<App />);
    const power = await screen.findByRole("group", { name: "Power" });
    expect(screen.getByTestId("status").className).toContain("status-stopped");
    expect(screen.getByTestId("health").textContent).toBe("stopped");
    expect(screen.queryByTestId("simulated")).toBeNull();
    expect((within(power).getByRole("button", { name: "Stop" }) as HTMLButtonElement).disabled).toBe(true);
    const loadsBefore = calls.filter((c) => c.url === "/api/v1/instances/box-1").length;
    await userEvent.setup().click(within(power).getByRole("button", { name: "Start" }));
    await waitFor(() => expect(calls.filter((c) => c.url === "/api/v1/instances/box-1").length).toBeGreaterThan(loadsBefore));
    expect(calls.filter((c) => c.method === "POST").map((c) => c.url)).toEqual(["/api/v1/instances/box-1/start"]);
    expect(within(power).queryByRole("alert")).toBeNull();
  });
});

describe("the simulated badge", () => {
  it("marks the simulated instances in the list", async () => {
    mockFetch([
      { match: /\/features/, body: FEATURES({ simulated: true }) },
      { match: /\/me$/, body: { user: "alice", role: "user" } },
      { match: /GET \/api\/v1\/instances\?/, body: { items: [instance("sim-1", { simulated: true }), instance("real-1")], total: 2, limit: 50 } },
    ]);
    window.history.replaceState(null, "", "/");
    render(<App />);
    expect(within(await screen.findByTestId("row-sim-1")).getByTestId("simulated").textContent).toBe("simulated");
    expect(within(screen.getByTestId("row-real-1")).queryByTestId("simulated")).toBeNull();
  });
});

describe("spot machines", () => {
  it("shows the spot badge and a preempted instance's status, and lets its user start it", async () => {
    const preempted = instance("box-1", {
      spot: true, status: "preempted", status_reason: "preempted (aws-imds): spot instance-action stop",
      preempted_at: "2026-12-01T02:00:00", preemption_source: "aws-imds", public_ip: null,
      health: { state: "stopped", last_report_at: null, last_report: {} },
    });
    const calls = mockFetch(detailRoutes(preempted, [
      { match: /POST \/api\/v1\/instances\/box-1\/start$/, status: 202, body: { id: "op-1", kind: "start", status: "queued" } },
    ]));
    render(<App />);
    const power = await screen.findByRole("group", { name: "Power" });
    const badge = screen.getByTestId("spot");
    expect(badge.textContent).toBe("spot");
    expect(badge.getAttribute("title")).toBe("a spot machine, preempted 2026-12-01T02:00:00 (aws-imds)");
    expect(screen.getByTestId("status").className).toContain("status-preempted");
    expect(screen.getByText("preempted (aws-imds): spot instance-action stop")).toBeTruthy();
    await userEvent.setup().click(within(power).getByRole("button", { name: "Start" }));
    await waitFor(() => expect(calls.filter((c) => c.method === "POST").map((c) => c.url)).toEqual(["/api/v1/instances/box-1/start"]));
  });

  it("marks spot machines in the list, and only those", async () => {
    mockFetch([
      { match: /\/features/, body: FEATURES() },
      { match: /\/me$/, body: { user: "alice", role: "user" } },
      { match: /GET \/api\/v1\/instances\?/, body: { items: [instance("spot-1", { spot: true }), instance("od-1", { spot: false })], total: 2, limit: 50 } },
    ]);
    window.history.replaceState(null, "", "/");
    render(<App />);
    expect(within(await screen.findByTestId("row-spot-1")).getByTestId("spot").getAttribute("title")).toBe(
      "a spot machine: cheaper, and the cloud may take it back");
    expect(within(screen.getByTestId("row-od-1")).queryByTestId("spot")).toBeNull();
  });
});

describe("the instance page's drift", () => {
  it("shows a drifted instance's differences and reconciles it", async () => {
    const drifted = instance("box-1", {
      status: "drifted",
      status_reason: "changed outside orch (found by a refresh)",
      drift: {
        checked_at: "2026-01-01T12:00:00+00:00",
        lost: false,
        differences: [{ resource: "aws:ec2/instance:Instance::box-1", property: "instanceType", expected: "t3.medium", actual: "t3.large" }],
      },
    });
    const calls = mockFetch(detailRoutes(drifted, [
      { match: /POST \/api\/v1\/instances\/box-1\/reconcile$/, status: 202, body: { instance: drifted, operation: { id: "op-2", kind: "reconcile", status: "queued" } } },
    ]));
    render(<App />);
    const table = await screen.findByTestId("drift-differences");
    const cells = within(table).getAllByRole("cell").map((cell) => cell.textContent);
    expect(cells).toEqual(["aws:ec2/instance:Instance::box-1", "instanceType", "t3.medium", "t3.large"]);
    const group = screen.getByRole("group", { name: "Drift" });
    expect((within(group).getByRole("button", { name: "Refresh" }) as HTMLButtonElement).disabled).toBe(false);
    await userEvent.setup().click(within(group).getByRole("button", { name: "Reconcile" }));
    await waitFor(() => expect(calls.filter((c) => c.method === "POST").map((c) => c.url)).toEqual(["/api/v1/instances/box-1/reconcile"]));
  });

  it("says a lost instance's machine is gone; a running one cannot be reconciled, and a refresh's 409 shows", async () => {
    const calls = mockFetch(detailRoutes(instance("box-1", { drift: null }), [
      { match: /POST \/api\/v1\/instances\/box-1\/refresh$/, status: 409, body: { status_code: 409, detail: "box-1 has a refresh operation running" } },
    ]));
    render(<App />);
    const group = await screen.findByRole("group", { name: "Drift" });
    expect((within(group).getByRole("button", { name: "Reconcile" }) as HTMLButtonElement).disabled).toBe(true);
    await userEvent.setup().click(within(group).getByRole("button", { name: "Refresh" }));
    expect((await within(group).findByRole("alert")).textContent).toBe("box-1 has a refresh operation running (HTTP 409)");
    expect(calls.filter((c) => c.method === "POST").map((c) => c.url)).toEqual(["/api/v1/instances/box-1/refresh"]);
  });

  it("marks a lost instance", async () => {
    mockFetch(detailRoutes(instance("box-1", {
      status: "lost",
      drift: { checked_at: "2026-01-01T12:00:00+00:00", lost: true, differences: [{ resource: "docker:index/container:Container::box-1", property: "exists", expected: true, actual: false }] },
    })));
    render(<App />);
    expect((await screen.findByTestId("drift-checked")).textContent).toContain("deleted outside orch (lost)");
    expect(within(screen.getByTestId("drift-differences")).getAllByRole("cell").map((c) => c.textContent).slice(2)).toEqual(["true", "false"]);
    const group = screen.getByRole("group", { name: "Drift" });
    expect((within(group).getByRole("button", { name: "Refresh" }) as HTMLButtonElement).disabled).toBe(true);
    expect((within(group).getByRole("button", { name: "Reconcile" }) as HTMLButtonElement).disabled).toBe(false);
  });
});

describe("the instance page's autostop", () => {
  const settings = { idle_minutes: 60, metric: "gpu", below_percent: 5, action: "stop" };
  const spec = { cloud: "aws", region: "us-east-1", machine_type: "g4dn.xlarge", ssh_users: [], autostop: settings };

  it("shows the settings, how long it has been idle, and the warning given to its users", async () => {
    const idleSince = new Date(Date.now() - 56 * 60_000).toISOString();
    const warnedAt = new Date(Date.now() - 30_000).toISOString();
    mockFetch(detailRoutes(instance("box-1", {
      spec, autostop: { idle_since: idleSince, warned_at: warnedAt, warning: null, decided_at: null },
    })));
    render(<App />);
    expect((await screen.findByTestId("autostop-settings")).textContent).toBe(
      "Stops the instance when its gpu use stays below 5% for 60 min.");
    expect(screen.getByTestId("autostop-idle-since").textContent).toContain("56 min ago");
    expect(screen.getByTestId("autostop-warned").textContent).toMatch(/users were warned 3\d s ago; it will be stopped unless it gets busy/);
    expect(screen.queryByTestId("autostop-warning")).toBeNull();
  });

  it("shows why reports do not count, and the reason once autostop stopped it", async () => {
    mockFetch(detailRoutes(instance("box-1", {
      spec, autostop: { idle_since: null, warned_at: null, warning: "no report for 12 min: not counted as idle", decided_at: null },
    })));
    const { unmount } = render(<App />);
    expect((await screen.findByTestId("autostop-warning")).textContent).toBe("no report for 12 min: not counted as idle");
    expect(screen.queryByTestId("autostop-warned")).toBeNull();
    unmount();
    mockFetch(detailRoutes(instance("box-1", {
      spec: { ...spec, state: "stopped" }, status: "stopped", status_reason: "autostop: gpu below 5% for 60 min",
      autostop: { idle_since: null, warned_at: null, warning: null, decided_at: new Date().toISOString() },
    })));
    render(<App />);
    expect(await screen.findByText("autostop: gpu below 5% for 60 min")).toBeTruthy();
    expect(screen.queryByTestId("autostop-warning")).toBeNull();
  });

  it("has no autostop section without spec.autostop", async () => {
    mockFetch(detailRoutes(instance("box-1")));
    render(<App />);
    await screen.findByRole("group", { name: "Power" });
    expect(screen.queryByRole("heading", { name: "Autostop" })).toBeNull();
  });
});

describe("zone failover on the instance page", () => {
  it("shows the zone it landed in, each zone tried, and each attempt's error under its step", async () => {
    const landed = instance("box-1", {
      zone: "us-east-1b",
      zone_attempts: [
        { zone: "us-east-1a", outcome: "no capacity", error: "InsufficientInstanceCapacity: We currently do not have sufficient g5.xlarge capacity" },
        { zone: "us-east-1b", outcome: "landed", error: null },
      ],
    });
    const step = (name: string, status: string, detail: string | null = null) =>
      ({ name, status, started_at: null, finished_at: null, detail });
    const create = {
      id: "op-1", kind: "create", target: "box-1", owner: "alice", status: "succeeded", attempts: 1,
      steps: [
        step("attempt 1/2: us-east-1a", "failed", "capacity: api error InsufficientInstanceCapacity"),
        step("pulumi up", "failed"),
        step("attempt 1/2: pulumi destroy (no capacity in us-east-1a)", "succeeded"),
        step("attempt 2/2: us-east-1b", "succeeded", "landed in us-east-1b"),
        step("pulumi up", "succeeded"),
      ],
      logs: [], log_offset: 0, log_count: 0, error: null, created_at: null, updated_at: null,
    };
    mockFetch(detailRoutes(landed, [
      { match: /GET \/api\/v1\/instances\/box-1\/operations/, body: { items: [create] } },
      { match: /GET \/api\/v1\/operations\/op-1/, body: create },
    ]));
    render(<App />);
    expect((await screen.findByTestId("zone")).textContent).toBe("us-east-1b");
    const tried = within(screen.getByTestId("zone-attempts")).getAllByRole("listitem").map((item) => item.textContent);
    expect(tried).toEqual([
      "us-east-1a: no capacity InsufficientInstanceCapacity: We currently do not have sufficient g5.xlarge capacity",
      "us-east-1b: landed",
    ]);
    const operation = await screen.findByTestId("operation-create");
    const steps = within(operation).getAllByRole("listitem").map((item) => item.textContent);
    expect(steps[0]).toBe("attempt 1/2: us-east-1a: failedcapacity: api error InsufficientInstanceCapacity");
    expect(steps[3]).toBe("attempt 2/2: us-east-1b: succeededlanded in us-east-1b");
    expect(steps.filter((text) => text?.startsWith("pulumi up"))).toHaveLength(2);
  });

  it("shows the region of each place tried and the region it landed in (region failover)", async () => {
    mockFetch(detailRoutes(instance("box-1", {
      cloud: "aws",
      spec: { cloud: "aws", region: "us-east-1", machine_type: "t3.medium", ssh_users: [], regions: ["us-east-1", "us-west-2"] },
      region: "us-west-2",
      zone: "us-west-2c",
      zone_attempts: [
        { region: "us-east-1", zone: null, outcome: "no capacity", error: "InsufficientInstanceCapacity" },
        { region: "us-west-2", zone: "us-west-2c", outcome: "landed", error: null },
      ],
    })));
    render(<App />);
    expect((await screen.findByTestId("zone")).textContent).toBe("us-west-2c");
    expect(screen.getByText("Places tried")).toBeTruthy();
    expect(screen.getByTestId("region").textContent).toBe("us-west-2");
    const tried = within(screen.getByTestId("zone-attempts")).getAllByRole("listitem").map((item) => item.textContent);
    expect(tried).toEqual(["us-east-1: no capacity InsufficientInstanceCapacity", "us-west-2 / us-west-2c: landed"]);
  });

  it("shows no zones tried for an instance placed in one zone", async () => {
    mockFetch(detailRoutes(instance("box-1")));
    render(<App />);
    await screen.findByTestId("zone");
    expect(screen.queryByTestId("zone-attempts")).toBeNull();
  });
});
