import { render, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it } from "vitest";
import { App, sidebarKey } from "./App";
import { signIn } from "./auth";
import { FEATURES, instance, mockFetch } from "./test-util";

const XSS = "<img src=x onerror=alert(1)>";

function list(items: unknown[], next: string | null = null) {
  return { match: /GET \/api\/v1\/instances\?/, body: { items, total: items.length, limit: 50, next_cursor: next } };
}

beforeEach(() => {
  signIn("token-1", "alice");
  window.history.replaceState(null, "", "/");
});

describe("the instances list", () => {
  it("shows each instance's fields, its labels as text, and asks for the filters", async () => {
    const calls = mockFetch([
      { match: /\/features/, body: FEATURES() },
      { match: /\/me/, body: { user: "alice", role: "user", expires_at: null } },
      list([instance("box-1", { labels: { note: XSS }, status: "provisioning", operation: { id: "o", kind: "create", status: "running", step: "pulumi up" } })], "c2"),
    ]);
    const { container } = render(<App />);
    const row = await screen.findByTestId("row-box-1");
    expect(within(row).getByText(`note=${XSS}`)).toBeTruthy();
    expect(container.querySelector("img")).toBeNull();
    expect(within(row).getByTestId("status").textContent).toBe("provisioning · pulumi up");
    expect(within(row).getByTestId("public-ip").textContent).toBe("10.0.0.1");
    expect(within(row).getByTestId("health").textContent).toContain("never reported");

    const user = userEvent.setup();
    await user.type(screen.getByLabelText("Name contains"), "box");
    await user.selectOptions(screen.getByLabelText("Status"), "running");
    await user.click(screen.getByRole("button", { name: "Apply" }));
    await waitFor(() => expect(calls.some((c) => c.url.includes("q=box") && c.url.includes("status=running"))).toBe(true));
    await user.click(screen.getByRole("button", { name: "Next page" }));
    await waitFor(() => expect(calls.some((c) => c.url.includes("cursor=c2"))).toBe(true));
  });

  it("sends the user back to sign-in with a message on a 401", async () => {
    mockFetch([
      { match: /\/features/, body: FEATURES() },
      { match: /\/instances/, status: 401, body: { status_code: 401, detail: "token expired" } },
    ]);
    render(<App />);
    expect(await screen.findByText("Your session has expired or was revoked. Sign in again.")).toBeTruthy();
    expect(sessionStorage.getItem("orch.token")).toBeNull();
  });
});

describe("the feature flags", () => {
  it("sidebar off: the top navigation", async () => {
    mockFetch([{ match: /\/features/, body: FEATURES() }, { match: /\/me/, body: { user: "alice", role: "user" } }, list([])]);
    const { container } = render(<App />);
    await screen.findByTestId("empty");
    expect(container.querySelector("header.topnav")).not.toBeNull();
    expect(screen.queryByTestId("sidebar")).toBeNull();
  });

  it("sidebar on: collapsible, its state kept per user", async () => {
    mockFetch([{ match: /\/features/, body: FEATURES({ sidebar: true }) }, { match: /\/me/, body: { user: "alice", role: "user" } }, list([])]);
    localStorage.setItem(sidebarKey("bob"), "1");
    const first = render(<App />);
    const sidebar = await screen.findByTestId("sidebar");
    expect(sidebar.className).not.toContain("collapsed"); // bob's choice is not alice's
    await userEvent.setup().click(screen.getByRole("button", { name: /Collapse the sidebar/ }));
    expect(screen.getByTestId("sidebar").className).toContain("collapsed");
    expect(localStorage.getItem(sidebarKey("alice"))).toBe("1");
    first.unmount();
    render(<App />);
    expect((await screen.findByTestId("sidebar")).className).toContain("collapsed");
  });

  it("a disabled cloud is absent from the new-instance form", async () => {
    mockFetch([{ match: /\/features/, body: FEATURES() }, { match: /\/me/, body: { user: "alice", role: "user" } }]);
    window.history.replaceState(null, "", "/new");
    render(<App />);
    const cloud = (await screen.findByLabelText("Cloud")) as HTMLSelectElement;
    expect([...cloud.options].map((o) => o.value)).toEqual(["docker", "aws"]);
  });
});
