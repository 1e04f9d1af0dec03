export function secondsSince(iso: string | null | undefined, now: number): number | null {
  if (!iso) return null;
  const at = Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);
  return Number.isNaN(at) ? null : Math.max(0, Math.round((now - at) / 1000));
}

export function ago(seconds: number | null): string {
  if (seconds === null) return "never";
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 36 * 3600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

export function age(seconds: number | null): string {
  return seconds === null ? "-" : ago(seconds).replace(" ago", "");
}

export function percent(value: number | null | undefined): string {
  return typeof value === "number" ? `${Math.round(value)}%` : "-";
}
