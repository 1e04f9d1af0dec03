import { useEffect, useRef, useState } from "react";

export const POLL_INTERVAL_MS = 3000;

/** Calls `load` now and every `intervalMs` while mounted (and again when `key` changes). */
export function usePolling(load: (signal: AbortSignal) => Promise<void>, key: string, intervalMs = POLL_INTERVAL_MS) {
  const latest = useRef(load);
  useEffect(() => {
    latest.current = load;
  });
  useEffect(() => {
    const controller = new AbortController();
    let timer = 0;
    const tick = async () => {
      try {
        await latest.current(controller.signal);
      } catch {
        // each loader shows its own errors; polling goes on
      }
      if (!controller.signal.aborted) timer = window.setTimeout(tick, intervalMs);
    };
    tick();
    return () => {
      controller.abort();
      window.clearTimeout(timer);
    };
  }, [key, intervalMs]);
}

/** The current time, refreshed every second (for "last report 12 s ago"). */
export function useNow(intervalMs = 1000): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now()), intervalMs);
    return () => window.clearInterval(timer);
  }, [intervalMs]);
  return now;
}
