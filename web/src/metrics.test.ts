import { describe, expect, it } from "vitest";
import { cpuPoints, sampleTime } from "./metrics";

describe("a sample's time", () => {
  it("reads ISO 8601 with a zone, without one (UTC), and seconds since the epoch", () => {
    const at = Date.UTC(2026, 0, 2, 3, 4, 5);
    expect(sampleTime({ ts: "2026-01-02T03:04:05Z" })).toBe(at);
    expect(sampleTime({ ts: "2026-01-02T05:04:05+02:00" })).toBe(at);
    expect(sampleTime({ ts: "2026-01-02T03:04:05" })).toBe(at);
    expect(sampleTime({ ts: at / 1000 + 0.25 })).toBe(at + 250);
    expect(cpuPoints([{ ts: at / 1000, cpu_percent: 12 }])).toEqual([{ t: at, v: 12 }]);
  });
});
