import { vi } from "vitest";

export interface Route {
  match: RegExp;
  status?: number;
  body: unknown;
}

/** A fetch stand-in answering by URL; records every call. */
export function mockFetch(routes: Route[]) {
  const calls: { url: string; method: string; body?: unknown }[] = [];
  const fetchMock = vi.fn(async (url: string, init?: RequestInit) => {
    const method = init?.method ?? "GET";
    calls.push({ url, method, body: init?.body ? JSON.parse(String(init.body)) : undefined });
    const route = routes.find((r) => r.match.test(`${method} ${url}`));
    if (!route) return new Response(JSON.stringify({ status_code: 404, detail: "not found" }), { status: 404 });
    return new Response(JSON.stringify(route.body), { status: route.status ?? 200, headers: { "Content-Type": "application/json" } });
  });
  vi.stubGlobal("fetch", fetchMock);
  return calls;
}

export function instance(name: string, extra: Record<string, unknown> = {}) {
  return {
    name, owner: "admin", labels: {}, spec: { cloud: "docker", region: "local", machine_type: "small", ssh_users: [] },
    status: "running", status_reason: null, cloud: "docker", region: "local", public_ip: "10.0.0.1", outputs: {},
    health: { state: "unknown", last_report_at: null, last_report: {} }, generation: 1, operation_id: null,
    created_at: new Date().toISOString(), updated_at: null, stack_name: `instance-admin.${name}`,
    stack_command: "pulumi stack export", operation: null, ...extra,
  };
}

export const FEATURES = (extra: Record<string, unknown> = {}) => ({
  clouds: ["docker", "aws"],
  known_clouds: ["aws", "gcp", "azure", "docker"],
  features: { snapshots: true, preview: true, configuration: true, dispatch: "in-process", sidebar: false, ...extra },
});
