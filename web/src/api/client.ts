import { currentToken, signOut } from "../auth";
import { navigate } from "../router";
import type { ErrorBody } from "./types";

export const API = "/api/v1";
export const SESSION_EXPIRED = "Your session has expired or was revoked. Sign in again.";

/** An error from the API (status > 0) or the network (status 0), with the field it names. */
export class ApiError extends Error {
  readonly status: number;
  readonly field: string | null;
  constructor(status: number, message: string, field: string | null = null) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

// Last answer per GET URL with its ETag: a poll sends If-None-Match and a 304 reuses it.
const cached = new Map<string, { etag: string; body: unknown }>();

async function errorFrom(response: Response): Promise<ApiError> {
  let detail = `${response.status} ${response.statusText}`;
  let field: string | null = null;
  try {
    const body = (await response.json()) as Partial<ErrorBody>;
    if (typeof body.detail === "string") detail = body.detail;
    const extra = body.extra as { field?: unknown } | null | undefined;
    if (extra && typeof extra.field === "string") field = extra.field;
  } catch {
    // not JSON: the status line says it
  }
  return new ApiError(response.status, detail, field);
}

export async function request<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  const url = `${API}${path}`;
  const headers: Record<string, string> = { Accept: "application/json" };
  const token = currentToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const known = method === "GET" ? cached.get(url) : undefined;
  if (known) headers["If-None-Match"] = known.etag;
  let response: Response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  } catch (error) {
    if ((error as Error).name === "AbortError") throw error;
    throw new ApiError(0, "The service cannot be reached (network error). Check the connection and retry.");
  }
  if (response.status === 304 && known) return known.body as T;
  if (response.status === 401 && token) {
    signOut();
    cached.clear();
    navigate("/signin", { message: SESSION_EXPIRED });
    throw new ApiError(401, SESSION_EXPIRED);
  }
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return undefined as T;
  const parsed = (await response.json()) as T;
  const etag = response.headers.get("ETag");
  if (method === "GET" && etag) cached.set(url, { etag, body: parsed });
  return parsed;
}

export const api = {
  get: <T>(path: string, signal?: AbortSignal) => request<T>("GET", path, undefined, signal),
  post: <T>(path: string, body?: unknown) => request<T>("POST", path, body ?? {}),
  del: <T>(path: string) => request<T>("DELETE", path),
};

export function query(params: Record<string, string | number | boolean | null | undefined>): string {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export function messageOf(error: unknown): string {
  if (error instanceof ApiError) return error.status ? `${error.message} (HTTP ${error.status})` : error.message;
  return error instanceof Error ? error.message : String(error);
}
