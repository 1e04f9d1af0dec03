import { useEffect, useMemo, useState, type FormEvent } from "react";
import { ApiError, api, messageOf, query } from "../api/client";
import type { CatalogCloud, Instance, Preview, Snapshot } from "../api/types";
import { ErrorMessage } from "../components/bits";
import { Field } from "../components/Field";
import { useFeatures } from "../features";
import { emptyForm, fieldErrors, fromYaml, localErrors, toDocument, toYaml, type FormState } from "../form";
import { navigate } from "../router";

interface PreviewAnswer {
  instance: Instance;
  preview: Preview;
}

/** Field ids are the document's field paths ("spec.ssh_users[0].name"), made valid as HTML ids. */
export const fieldId = (path: string) => `f-${path.replace(/[^A-Za-z0-9_-]/g, "-")}`;

export function NewInstance({ search }: { search: string }) {
  const features = useFeatures();
  const enabled = features.clouds;
  const [form, setForm] = useState<FormState>(() => emptyForm(enabled[0] ?? ""));
  const [tab, setTab] = useState<"form" | "yaml">("form");
  const [yamlText, setYamlText] = useState("");
  const [yamlError, setYamlError] = useState<string | null>(null);
  const [errors, setErrors] = useState<Record<string, string>>({});
  const [submitError, setSubmitError] = useState<string | null>(null);
  const [preview, setPreview] = useState<PreviewAnswer | null>(null);
  const [busy, setBusy] = useState(false);
  const [catalog, setCatalog] = useState<CatalogCloud[] | null>(null);
  const [snapshots, setSnapshots] = useState<Snapshot[]>([]);

  useEffect(() => {
    api.get<{ clouds: CatalogCloud[] }>("/catalog").then((c) => setCatalog(c.clouds)).catch(() => setCatalog(null));
    api.get<{ items: Snapshot[] }>(`/snapshots${query({ limit: 100 })}`)
      .then((page) => {
        setSnapshots(page.items);
        const wanted = new URLSearchParams(search).get("from_snapshot");
        const base = page.items.find((s) => s.name === wanted);
        if (base) {
          setForm((f) => ({
            ...f, from_snapshot: base.name, cloud: base.cloud, region: base.region, image: "",
            disk_gb: base.disk_gb ? String(base.disk_gb) : f.disk_gb,
            name: f.name || `${base.instance}-copy`,
          }));
        }
      })
      .catch(() => setSnapshots([]));
  }, [search]);

  const cloudCatalog = catalog?.find((c) => c.name === form.cloud) ?? null;
  const region = cloudCatalog?.regions.find((r) => r.name === form.region) ?? null;
  const usableSnapshots = useMemo(
    () => snapshots.filter((s) => s.cloud === form.cloud && s.status === "available"),
    [snapshots, form.cloud],
  );

  const update = (patch: Partial<FormState>) => {
    setForm((f) => ({ ...f, ...patch }));
    setPreview(null);
  };
  const showTab = (next: "form" | "yaml") => {
    if (next === tab) return;
    if (next === "yaml") {
      setYamlText(toYaml(form));
      setYamlError(null);
      setTab("yaml");
      return;
    }
    try {
      setForm(fromYaml(yamlText));
      setYamlError(null);
      setTab("form");
    } catch (error) {
      setYamlError((error as Error).message);
    }
  };

  const current = (): FormState | null => {
    if (tab === "form") return form;
    try {
      const parsed = fromYaml(yamlText);
      setForm(parsed);
      setYamlError(null);
      return parsed;
    } catch (error) {
      setYamlError((error as Error).message);
      return null;
    }
  };

  const fail = (error: unknown) => {
    if (error instanceof ApiError && error.status === 422) {
      setErrors(fieldErrors(error.message, error.field));
      setSubmitError(`The service refused the spec: ${error.message}`);
    } else setSubmitError(messageOf(error));
  };

  const runPreview = async (event: FormEvent) => {
    event.preventDefault();
    const state = current();
    if (!state) return;
    const local = localErrors(state, enabled);
    setErrors(local);
    setSubmitError(null);
    if (Object.keys(local).length) {
      setSubmitError("Fix the fields marked below.");
      return;
    }
    setBusy(true);
    try {
      setPreview(await api.post<PreviewAnswer>("/instances?dry_run=true", toDocument(state)));
    } catch (error) {
      fail(error);
    } finally {
      setBusy(false);
    }
  };

  const confirm = async () => {
    const state = current();
    if (!state) return;
    setBusy(true);
    setSubmitError(null);
    try {
      await api.post("/instances", toDocument(state));
      navigate("/");
    } catch (error) {
      setPreview(null);
      fail(error);
    } finally {
      setBusy(false);
    }
  };

  const f = (path: string) => ({ id: fieldId(path), error: errors[path] });
  const setUser = (index: number, patch: Partial<FormState["ssh_users"][number]>) =>
    update({ ssh_users: form.ssh_users.map((u, i) => (i === index ? { ...u, ...patch } : u)) });
  const setMount = (index: number, patch: Partial<FormState["mounts"][number]>) =>
    update({ mounts: form.mounts.map((m, i) => (i === index ? { ...m, ...patch } : m)) });
  const setLabel = (index: number, patch: Partial<FormState["labels"][number]>) =>
    update({ labels: form.labels.map((l, i) => (i === index ? { ...l, ...patch } : l)) });

  return (
    <section aria-labelledby="new-title">
      <h1 id="new-title">New instance</h1>
      <div role="tablist" aria-label="Edit as" className="tabs">
        <button type="button" role="tab" aria-selected={tab === "form"} onClick={() => showTab("form")}>Form</button>
        <button type="button" role="tab" aria-selected={tab === "yaml"} onClick={() => showTab("yaml")}>YAML</button>
      </div>
      <form onSubmit={runPreview} noValidate aria-label="New instance">
        {tab === "yaml" ? (
          <div className="field">
            <label htmlFor="yaml">Instance document (YAML)</label>
            <textarea id="yaml" className="code" rows={24} value={yamlText} spellCheck={false}
              onChange={(e) => { setYamlText(e.target.value); setPreview(null); }}
              aria-describedby={yamlError ? "yaml-error" : undefined} />
            <ErrorMessage error={yamlError} id="yaml-error" />
          </div>
        ) : (
          <>
            <fieldset>
              <legend>Instance</legend>
              <Field label="Name" {...f("name")}>
                {(p) => <input {...p} value={form.name} onChange={(e) => update({ name: e.target.value })} autoComplete="off" />}
              </Field>
              <Field label="Cloud" {...f("spec.cloud")}>
                {(p) => (
                  <select {...p} value={form.cloud}
                    onChange={(e) => update({ cloud: e.target.value, region: "", regions: "", zone: "", zones: "", machine_type: "", allow_unlisted_machine_type: false, from_snapshot: "" })}>
                    {enabled.map((c) => <option key={c} value={c}>{c}</option>)}
                  </select>
                )}
              </Field>
              <Field label="Region" {...f("spec.region")}>
                {(p) => cloudCatalog ? (
                  <select {...p} value={form.region} onChange={(e) => update({ region: e.target.value, zone: "", zones: "" })}>
                    <option value="">choose a region</option>
                    {cloudCatalog.regions.map((r) => <option key={r.name} value={r.name}>{r.name}</option>)}
                  </select>
                ) : <input {...p} value={form.region} onChange={(e) => update({ region: e.target.value })} />}
              </Field>
              <Field label="Zone" hint="empty: the region's default zone" {...f("spec.zone")}>
                {(p) => region ? (
                  <select {...p} value={form.zone} onChange={(e) => update({ zone: e.target.value })}>
                    <option value="">default</option>
                    {region.zones.map((z) => <option key={z} value={z}>{z}</option>)}
                  </select>
                ) : <input {...p} value={form.zone} onChange={(e) => update({ zone: e.target.value })} />}
              </Field>
              {form.cloud !== "docker" && (
                <Field label="Zones to try (optional)" hint="e.g. us-east-1a, us-east-1b: tried in order when a zone has no capacity; instead of Zone"
                  id={fieldId("spec.zones")} error={listError(errors, "zones")}>
                  {(p) => <input {...p} value={form.zones} onChange={(e) => update({ zones: e.target.value })} />}
                </Field>
              )}
              {form.cloud !== "docker" && (
                <Field label="Regions to try (optional)" hint="e.g. us-east-1, us-west-2: tried in order when a region has no capacity; Region may then be empty"
                  id={fieldId("spec.regions")} error={listError(errors, "regions")}>
                  {(p) => <input {...p} value={form.regions} onChange={(e) => update({ regions: e.target.value })} />}
                </Field>
              )}
              <Field label="Machine type" {...f("spec.machine_type")}>
                {(p) => cloudCatalog && !form.allow_unlisted_machine_type ? (
                  <select {...p} value={form.machine_type} onChange={(e) => update({ machine_type: e.target.value })}>
                    <option value="">the cloud's default</option>
                    {cloudCatalog.machine_types.map((m) => (
                      <option key={m.name} value={m.name}>
                        {`${m.name}${m.vcpus ? ` · ${m.vcpus} vCPU` : ""}${m.memory_gb ? ` · ${m.memory_gb} GB` : ""}${m.gpus ? ` · ${m.gpus}× ${m.gpu_type ?? "GPU"}` : ""}`}
                      </option>
                    ))}
                  </select>
                ) : <input {...p} value={form.machine_type} onChange={(e) => update({ machine_type: e.target.value })} />}
              </Field>
              {form.cloud !== "docker" && (() => {
                const id = fieldId("spec.allow_unlisted_machine_type");
                const error = errors["spec.allow_unlisted_machine_type"];
                return (
                  <div className={error ? "field checkbox has-error" : "field checkbox"}>
                    <input id={id} type="checkbox" checked={form.allow_unlisted_machine_type} aria-invalid={Boolean(error)}
                      aria-describedby={error ? `${id}-hint ${id}-error` : `${id}-hint`}
                      onChange={(e) => update({ allow_unlisted_machine_type: e.target.checked })} />
                    <label htmlFor={id}>Allow a type the catalogue does not list</label>
                    <small id={`${id}-hint`} className="muted">
                      for a type newer than the catalogue: the machine type becomes free text, and the cloud checks it at apply
                    </small>
                    {error && <small id={`${id}-error`} className="field-error" data-testid={`error-${id}`}>{error}</small>}
                  </div>
                );
              })()}
              <Field label="GPU type (optional)" hint="e.g. nvidia-t4; empty: none, or what the machine type carries" {...f("spec.gpu.type")}>
                {(p) => <input {...p} value={form.gpu_type} onChange={(e) => update({ gpu_type: e.target.value })} />}
              </Field>
              <Field label="GPU count" {...f("spec.gpu.count")}>
                {(p) => <input {...p} type="number" min={1} max={16} value={form.gpu_count} disabled={!form.gpu_type}
                  onChange={(e) => update({ gpu_count: e.target.value })} />}
              </Field>
            </fieldset>
            <fieldset>
              <legend>Disk and image</legend>
              <Field label="Base snapshot (optional)" {...f("spec.from_snapshot")}>
                {(p) => (
                  <select {...p} value={form.from_snapshot} onChange={(e) => {
                    const base = snapshots.find((s) => s.name === e.target.value);
                    update({ from_snapshot: e.target.value, ...(base ? { region: base.region, image: "", disk_gb: base.disk_gb ? String(base.disk_gb) : form.disk_gb } : {}) });
                  }}>
                    <option value="">none: start from an image</option>
                    {usableSnapshots.map((s) => <option key={s.name} value={s.name}>{`${s.name} (of ${s.instance}, ${s.region})`}</option>)}
                    {form.from_snapshot && !usableSnapshots.some((s) => s.name === form.from_snapshot) && (
                      <option value={form.from_snapshot}>{form.from_snapshot}</option>
                    )}
                  </select>
                )}
              </Field>
              <Field label="Image" hint="empty: the default image (or the snapshot's)" {...f("spec.image")}>
                {(p) => cloudCatalog && cloudCatalog.images.length ? (
                  <select {...p} value={form.image} disabled={Boolean(form.from_snapshot)} onChange={(e) => update({ image: e.target.value })}>
                    <option value="">default</option>
                    {cloudCatalog.images.map((i) => <option key={i} value={i}>{i}</option>)}
                  </select>
                ) : <input {...p} value={form.image} disabled={Boolean(form.from_snapshot)} onChange={(e) => update({ image: e.target.value })} />}
              </Field>
              <Field label="Disk (GB)" hint="empty: 30 GB, or the snapshot's size" {...f("spec.disk_gb")}>
                {(p) => <input {...p} type="number" min={1} value={form.disk_gb} onChange={(e) => update({ disk_gb: e.target.value })} />}
              </Field>
            </fieldset>
            <fieldset>
              <legend>SSH access</legend>
              {errors["spec.ssh_users"] && <p className="field-error" role="alert">{errors["spec.ssh_users"]}</p>}
              {form.ssh_users.map((user, index) => (
                <div className="row-group" key={index}>
                  <Field label={`User ${index + 1} name`} {...f(`spec.ssh_users[${index}].name`)}>
                    {(p) => <input {...p} value={user.name} onChange={(e) => setUser(index, { name: e.target.value })} autoComplete="off" />}
                  </Field>
                  <Field label={`User ${index + 1} public key`} {...f(`spec.ssh_users[${index}].public_key`)}>
                    {(p) => <textarea {...p} rows={2} className="code" value={user.public_key} spellCheck={false}
                      onChange={(e) => setUser(index, { public_key: e.target.value })} />}
                  </Field>
                  <div className="field checkbox">
                    <input id={`${fieldId(`spec.ssh_users[${index}]`)}-sudo`} type="checkbox" checked={user.sudo}
                      onChange={(e) => setUser(index, { sudo: e.target.checked })} />
                    <label htmlFor={`${fieldId(`spec.ssh_users[${index}]`)}-sudo`}>{`User ${index + 1} may sudo`}</label>
                  </div>
                  <button type="button" className="small" onClick={() => update({ ssh_users: form.ssh_users.filter((_, i) => i !== index) })}>
                    Remove user {index + 1}
                  </button>
                </div>
              ))}
              <button type="button" className="small" onClick={() => update({ ssh_users: [...form.ssh_users, { name: "", public_key: "", sudo: false }] })}>
                Add an SSH user
              </button>
              <Field label="Allowed SSH source CIDRs" hint="one per line; empty: SSH from anywhere is refused" {...f("spec.allowed_ssh_cidrs")}>
                {(p) => <textarea {...p} rows={2} className="code" value={form.allowed_ssh_cidrs}
                  onChange={(e) => update({ allowed_ssh_cidrs: e.target.value })} />}
              </Field>
            </fieldset>
            <fieldset>
              <legend>Buckets</legend>
              {form.mounts.map((mount, index) => (
                <div className="row-group" key={index}>
                  <Field label={`Mount ${index + 1} bucket`} {...f(`spec.mounts[${index}].bucket`)}>
                    {(p) => <input {...p} value={mount.bucket} onChange={(e) => setMount(index, { bucket: e.target.value })} />}
                  </Field>
                  <Field label={`Mount ${index + 1} path`} {...f(`spec.mounts[${index}].path`)}>
                    {(p) => <input {...p} value={mount.path} onChange={(e) => setMount(index, { path: e.target.value })} />}
                  </Field>
                  <button type="button" className="small" onClick={() => update({ mounts: form.mounts.filter((_, i) => i !== index) })}>
                    Remove mount {index + 1}
                  </button>
                </div>
              ))}
              <button type="button" className="small" onClick={() => update({ mounts: [...form.mounts, { bucket: "", path: "" }] })}>
                Add a bucket mount
              </button>
            </fieldset>
            <fieldset>
              <legend>Labels</legend>
              {errors.labels && <p className="field-error" role="alert">{errors.labels}</p>}
              {form.labels.map((label, index) => (
                <div className="row-group" key={index}>
                  <Field label={`Label ${index + 1} key`} {...f(`labels.${label.key || index}`)}>
                    {(p) => <input {...p} value={label.key} onChange={(e) => setLabel(index, { key: e.target.value })} />}
                  </Field>
                  <Field label={`Label ${index + 1} value`} id={fieldId(`labels-value-${index}`)}>
                    {(p) => <input {...p} value={label.value} onChange={(e) => setLabel(index, { value: e.target.value })} />}
                  </Field>
                  <button type="button" className="small" onClick={() => update({ labels: form.labels.filter((_, i) => i !== index) })}>
                    Remove label {index + 1}
                  </button>
                </div>
              ))}
              <button type="button" className="small" onClick={() => update({ labels: [...form.labels, { key: "", value: "" }] })}>
                Add a label
              </button>
            </fieldset>
            <fieldset>
              <legend>Configuration</legend>
              <div className="field checkbox">
                <input id="f-spec-configure" type="checkbox" checked={form.configure} onChange={(e) => update({ configure: e.target.checked })} />
                <label htmlFor="f-spec-configure">Configure the instance (users, mounts, agent, bootstrap script) with Ansible</label>
              </div>
              <Field label="Bootstrap script (optional)" {...f("spec.bootstrap_script")}>
                {(p) => <textarea {...p} rows={4} className="code" value={form.bootstrap_script} spellCheck={false}
                  onChange={(e) => update({ bootstrap_script: e.target.value })} />}
              </Field>
            </fieldset>
          </>
        )}
        <ErrorMessage error={submitError} id="submit-error" />
        <div className="actions">
          <button type="submit" disabled={busy}>{busy && !preview ? "Checking…" : "Preview"}</button>
        </div>
      </form>
      {preview && (
        <section className="preview" aria-labelledby="preview-title">
          <h2 id="preview-title">What apply will do</h2>
          <p>
            {`Create ${preview.instance.name} on ${preview.instance.cloud} in ${preview.instance.region}`}
            {`: stack ${preview.preview.stack}.`}
          </p>
          <ul>
            {Object.entries(preview.preview.changes).map(([op, count]) => <li key={op}>{`${op}: ${count}`}</li>)}
          </ul>
          <button type="button" onClick={confirm} disabled={busy}>{busy ? "Creating…" : "Create instance"}</button>
          <button type="button" className="secondary" onClick={() => setPreview(null)}>Back to editing</button>
        </section>
      )}
    </section>
  );
}

/** The errors of a list field and of its items (`spec.zones[1]: ...`), shown on its one field. */
function listError(errors: Record<string, string>, name: "zones" | "regions"): string | undefined {
  const found = Object.entries(errors)
    .filter(([key]) => key === `spec.${name}` || key.startsWith(`spec.${name}[`))
    .map(([key, message]) => (key === `spec.${name}` ? message : `${key.slice("spec.".length)}: ${message}`));
  return found.length ? found.join("; ") : undefined;
}
