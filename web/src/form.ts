// The new-instance form's state and the Instance document it stands for, both ways,
// so the YAML tab and the form edit the same thing.
import { parse, stringify } from "yaml";

export interface FormState {
  name: string;
  labels: { key: string; value: string }[];
  cloud: string;
  region: string;
  zone: string;
  // Zone failover: the zones to try in order, separated by spaces or commas (instead of zone).
  zones: string;
  machine_type: string;
  allow_unlisted_machine_type: boolean;
  gpu_type: string;
  gpu_count: string;
  image: string;
  from_snapshot: string;
  disk_gb: string;
  ssh_users: { name: string; public_key: string; sudo: boolean }[];
  allowed_ssh_cidrs: string;
  mounts: { bucket: string; path: string }[];
  bootstrap_script: string;
  configure: boolean;
  // Not on the form (a create as stopped is refused): kept so a YAML text's `state` survives the form.
  state: string;
  // Not on the form either (the YAML tab has it): every zone of the region, tried in turn.
  any_zone: boolean;
  // Region failover: the regions to try in order, separated by spaces or commas (region may then be empty).
  regions: string;
}

export function emptyForm(cloud = ""): FormState {
  return {
    name: "", labels: [], cloud, region: "", zone: "", zones: "", machine_type: "", allow_unlisted_machine_type: false, gpu_type: "", gpu_count: "1", image: "",
    from_snapshot: "", disk_gb: "", ssh_users: [{ name: "", public_key: "", sudo: true }], allowed_ssh_cidrs: "",
    mounts: [], bootstrap_script: "", configure: true, state: "", any_zone: false, regions: "",
  };
}

const orNull = (text: string) => (text.trim() === "" ? undefined : text.trim());

/** The document the form describes: empty optional fields are left out, as a hand-written spec would. */
export function toDocument(form: FormState): Record<string, unknown> {
  const spec: Record<string, unknown> = { cloud: form.cloud };
  const put = (key: string, value: unknown) => {
    if (value !== undefined) spec[key] = value;
  };
  const regions = form.regions.split(/[\s,]+/).filter(Boolean);
  // With a region list the region may be left out (the first of the list is tried first).
  if (form.region.trim() || !regions.length) spec.region = form.region.trim();
  if (regions.length) spec.regions = regions;
  put("zone", orNull(form.zone));
  const zones = form.zones.split(/[\s,]+/).filter(Boolean);
  if (zones.length) spec.zones = zones;
  if (form.any_zone) spec.any_zone = true;
  put("machine_type", orNull(form.machine_type));
  if (form.allow_unlisted_machine_type) spec.allow_unlisted_machine_type = true;
  if (form.gpu_type.trim()) spec.gpu = { type: form.gpu_type.trim(), count: toNumber(form.gpu_count) ?? form.gpu_count };
  put("image", orNull(form.image));
  put("from_snapshot", orNull(form.from_snapshot));
  if (form.disk_gb.trim()) spec.disk_gb = toNumber(form.disk_gb) ?? form.disk_gb;
  spec.ssh_users = form.ssh_users.map((u) => ({ name: u.name.trim(), public_key: u.public_key.trim(), sudo: u.sudo }));
  const cidrs = form.allowed_ssh_cidrs.split(/[\s,]+/).filter(Boolean);
  if (cidrs.length) spec.allowed_ssh_cidrs = cidrs;
  if (form.mounts.length) spec.mounts = form.mounts.map((m) => ({ bucket: m.bucket.trim(), path: m.path.trim() }));
  if (form.bootstrap_script) spec.bootstrap_script = form.bootstrap_script;
  spec.configure = form.configure;
  put("state", orNull(form.state));
  const labels = Object.fromEntries(form.labels.filter((l) => l.key.trim()).map((l) => [l.key.trim(), l.value]));
  return { kind: "Instance", name: form.name.trim(), labels, spec };
}

function toNumber(text: string): number | undefined {
  const value = Number(text);
  return text.trim() !== "" && Number.isInteger(value) ? value : undefined;
}

const text = (value: unknown) => (value === undefined || value === null ? "" : String(value));

/** The form for a document (from the YAML tab); throws an Error naming what does not fit. */
export function fromDocument(doc: unknown): FormState {
  if (!doc || typeof doc !== "object" || Array.isArray(doc)) throw new Error("the YAML must be one Instance document (a mapping)");
  const d = doc as Record<string, unknown>;
  const spec = (d.spec ?? {}) as Record<string, unknown>;
  if (typeof spec !== "object" || Array.isArray(spec)) throw new Error("spec: must be a mapping");
  const gpu = (spec.gpu ?? null) as { type?: unknown; count?: unknown } | null;
  const list = <T,>(value: unknown, field: string): T[] => {
    if (value === undefined || value === null) return [];
    if (!Array.isArray(value)) throw new Error(`${field}: must be a list`);
    return value as T[];
  };
  return {
    name: text(d.name),
    labels: Object.entries((d.labels ?? {}) as Record<string, unknown>).map(([key, value]) => ({ key, value: text(value) })),
    cloud: text(spec.cloud),
    region: text(spec.region),
    zone: text(spec.zone),
    zones: list<unknown>(spec.zones, "spec.zones").map(text).join(", "),
    machine_type: text(spec.machine_type),
    allow_unlisted_machine_type: spec.allow_unlisted_machine_type === true,
    gpu_type: gpu ? text(gpu.type) : "",
    gpu_count: gpu ? text(gpu.count ?? 1) : "1",
    image: text(spec.image),
    from_snapshot: text(spec.from_snapshot),
    disk_gb: text(spec.disk_gb),
    ssh_users: list<Record<string, unknown>>(spec.ssh_users, "spec.ssh_users").map((u) => ({
      name: text(u.name), public_key: text(u.public_key), sudo: u.sudo === true,
    })),
    allowed_ssh_cidrs: list<unknown>(spec.allowed_ssh_cidrs, "spec.allowed_ssh_cidrs").map(text).join("\n"),
    mounts: list<Record<string, unknown>>(spec.mounts, "spec.mounts").map((m) => ({ bucket: text(m.bucket), path: text(m.path) })),
    bootstrap_script: text(spec.bootstrap_script),
    configure: spec.configure !== false,
    state: text(spec.state),
    any_zone: spec.any_zone === true,
    regions: list<unknown>(spec.regions, "spec.regions").map(text).join(", "),
  };
}

export function toYaml(form: FormState): string {
  return stringify(toDocument(form), { lineWidth: 0 });
}

export function fromYaml(source: string): FormState {
  let doc: unknown;
  try {
    doc = parse(source);
  } catch (error) {
    throw new Error(`not valid YAML: ${(error as Error).message}`);
  }
  return fromDocument(doc);
}

/** Errors the page can tell before asking the service (the service checks everything again). */
export function localErrors(form: FormState, enabledClouds: string[]): Record<string, string> {
  const errors: Record<string, string> = {};
  if (!/^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/.test(form.name.trim())) {
    errors.name = "lowercase letters, digits and hyphens; starts with a letter, at most 63 characters";
  }
  if (!enabledClouds.includes(form.cloud)) errors["spec.cloud"] = `choose one of the enabled clouds: ${enabledClouds.join(", ")}`;
  if (!form.region.trim() && !form.regions.trim()) errors["spec.region"] = "required";
  if (form.disk_gb.trim() && toNumber(form.disk_gb) === undefined) errors["spec.disk_gb"] = "a whole number of GB";
  if (!form.ssh_users.length) errors["spec.ssh_users"] = "at least one SSH user";
  form.ssh_users.forEach((u, index) => {
    if (!u.name.trim()) errors[`spec.ssh_users[${index}].name`] = "required";
    if (!u.public_key.trim()) errors[`spec.ssh_users[${index}].public_key`] = "required";
  });
  return errors;
}

/** The service's 422 detail ("spec.region: ...; spec.zone: ...") as messages per field. */
export function fieldErrors(detail: string, field: string | null): Record<string, string> {
  const errors: Record<string, string> = {};
  let last: string | null = null;
  for (const part of detail.split("; ")) {
    const match = /^([A-Za-z_][\w.[\]]*): (.*)$/s.exec(part);
    if (match) {
      last = match[1];
      errors[last] = errors[last] ? `${errors[last]}; ${match[2]}` : match[2];
    } else if (last) {
      errors[last] = `${errors[last]}; ${part}`;  // a message's own "; did you mean ...?"
    }
  }
  if (field && !errors[field]) errors[field] = detail;
  return errors;
}
