import { useState } from "react";
import { ago, secondsSince } from "../format";
import type { Instance } from "../api/types";

export function ErrorMessage({ error, id }: { error: string | null; id?: string }) {
  if (!error) return null;
  return (
    <p className="error" role="alert" id={id}>
      {error}
    </p>
  );
}

export function StatusBadge({ instance }: { instance: Instance }) {
  const op = instance.operation;
  const step = op && (op.status === "running" || op.status === "queued") ? op.step : null;
  return (
    <span className={`status status-${instance.status}`} data-testid="status">
      {instance.status}
      {step ? <span className="step"> · {step}</span> : null}
    </span>
  );
}

export function HealthBadge({ instance, now }: { instance: Instance; now: number }) {
  const seconds = secondsSince(instance.health.last_report_at, now);
  const state = instance.health.state;
  const word = state === "healthy" ? "healthy" : state === "unreachable" ? "stale" : state === "stopped" ? "stopped" : "never reported";
  return (
    <span className={`health health-${state}`} data-testid="health">
      <span className="dot" aria-hidden="true" />
      {word}
      {seconds !== null && <span className="muted"> · last report {ago(seconds)}</span>}
    </span>
  );
}

/** Marks an instance on a sandbox host of the simulated mode (no cloud account behind it). */
export function SimulatedTag({ instance }: { instance: Instance }) {
  return instance.simulated ? <span className="tag" data-testid="simulated" title="a sandbox host of the simulated mode, not a cloud machine">simulated</span> : null;
}

/** Marks a spot machine, and when the cloud took it back (the instance is then `preempted`). */
export function SpotTag({ instance }: { instance: Instance }) {
  if (!instance.spot) return null;
  const title = instance.preempted_at
    ? `a spot machine, preempted ${instance.preempted_at} (${instance.preemption_source ?? "?"})`
    : "a spot machine: cheaper, and the cloud may take it back";
  return <span className="tag tag-spot" data-testid="spot" title={title}>spot</span>;
}

export function CopyButton({ text, label }: { text: string; label: string }) {
  const [copied, setCopied] = useState<"" | "copied" | "failed">("");
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
      setCopied("copied");
    } catch {
      setCopied("failed");
    }
    window.setTimeout(() => setCopied(""), 1500);
  };
  return (
    <button type="button" className="small" onClick={copy} aria-label={label}>
      {copied === "copied" ? "copied" : copied === "failed" ? "copy failed" : "copy"}
    </button>
  );
}

export function Labels({ labels }: { labels: Record<string, string> }) {
  const entries = Object.entries(labels);
  if (!entries.length) return <span className="muted">-</span>;
  return (
    <ul className="labels">
      {entries.map(([key, value]) => (
        <li key={key} className="label">{`${key}=${value}`}</li>
      ))}
    </ul>
  );
}
