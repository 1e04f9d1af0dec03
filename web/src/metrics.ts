import { api, query } from "./api/client";
import type { MetricSample } from "./api/types";
import type { Point } from "./components/Charts";

export const WINDOWS = { "1h": 3600_000, "24h": 86400_000 } as const;
export type Window = keyof typeof WINDOWS;

export async function loadSamples(name: string, window: Window, signal?: AbortSignal): Promise<MetricSample[]> {
  const since = new Date(Date.now() - WINDOWS[window]).toISOString();
  const body = await api.get<{ samples: MetricSample[] }>(
    `/instances/${encodeURIComponent(name)}/metrics${query({ window, since, limit: 10000 })}`,
    signal,
  );
  return body.samples;
}

/** A sample's time in ms: its `ts` is as the agent sent it, ISO 8601 (UTC when it names no zone) or seconds since the epoch. */
export function sampleTime(sample: MetricSample): number {
  const ts = sample.ts;
  if (typeof ts === "number") return ts * 1000;
  return Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(ts) ? ts : `${ts}Z`);
}
const time = sampleTime;

export function gpuAverage(gpus: MetricSample["gpus"]): number | null {
  const values = (gpus ?? []).map((g) => g.utilization_percent).filter((v): v is number => typeof v === "number");
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
}

export function cpuPoints(samples: MetricSample[]): Point[] {
  return samples.map((s) => ({ t: time(s), v: typeof s.cpu_percent === "number" ? s.cpu_percent : null }));
}

export function gpuPoints(samples: MetricSample[]): Point[] {
  return samples.map((s) => ({ t: time(s), v: gpuAverage(s.gpus) }));
}

export function memoryPoints(samples: MetricSample[]): Point[] {
  return samples.map((s) => {
    if (typeof s.memory_percent === "number") return { t: time(s), v: s.memory_percent };
    const memory = s.memory as { total?: number; used?: number } | undefined;
    return { t: time(s), v: memory?.total ? ((memory.used ?? 0) / memory.total) * 100 : null };
  });
}
