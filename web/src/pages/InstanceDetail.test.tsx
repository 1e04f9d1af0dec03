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
