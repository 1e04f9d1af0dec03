import { useCallback, useEffect, useRef, useState, type FormEvent } from "react";
import { stringify } from "yaml";
import { ApiError, api, messageOf, query } from "../api/client";
import type { Instance, Operation, Snapshot } from "../api/types";
import { LineChart } from "../components/Charts";
import { CopyButton, ErrorMessage, HealthBadge, Labels, SimulatedTag, SpotTag, StatusBadge } from "../components/bits";
import { DeleteDialog } from "../components/DeleteDialog";
import { ago, secondsSince } from "../format";
import { usePolling, useNow } from "../hooks";
import { cpuPoints, gpuPoints, loadSamples, memoryPoints, WINDOWS, type Window } from "../metrics";
import type { MetricSample } from "../api/types";
import { Link, navigate } from "../router";

const OPERATIONS_SHOWN = 20;
const MAX_LOG_LINES = 5000; // older lines are dropped from the page (the API keeps them)

const path = (name: string) => `/instances/${encodeURIComponent(name)}`;

// The statuses each power action starts from (the service refuses the others with a 409).
const STOPPABLE = ["running", "failed"];
const STARTABLE = ["stopped", "failed", "preempted"];
// Drift (docs/lifecycle.md): what a refresh starts from, and what Reconcile puts back to the spec.
const REFRESHABLE = ["running", "stopped", "failed", "drifted", "preempted"];
const RECONCILABLE = ["drifted", "lost"];

export function InstanceDetail({ name }: { name: string }) {
  const [instance, setInstance] = useState<Instance | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [gone, setGone] = useState(false);
  const [operations, setOperations] = useState<Operation[]>([]);
  const [snapshots, setSnapshots] = useState<Snapshot[]>([]);
  const [deleting, setDeleting] = useState(false);
  const now = useNow();

  const load = useCallback(async (signal: AbortSignal) => {
    try {
      const found = await api.get<Instance>(path(name), signal);
      setInstance(found);
      setError(null);
      const ops = await api
        .get<{ items: Operation[] }>(`${path(name)}/operations${query({ limit: OPERATIONS_SHOWN })}`, signal)
        .then((page) => page.items)
        .catch(async () => (found.operation_id ? [await api.get<Operation>(`/operations/${found.operation_id}`, signal)] : []));
      setOperations(ops);
      const snaps = await api.get<{ items: Snapshot[] }>(`/snapshots${query({ instance: name, limit: 100 })}`, signal);
      setSnapshots(snaps.items);
    } catch (e) {
      if ((e as Error).name === "AbortError") return;
      if (e instanceof ApiError && e.status === 404) setGone(true);
      else setError(messageOf(e));
    }
  }, [name]);
  usePolling(load, name);

  if (gone) {
    return (
      <section>
        <h1>{name}</h1>
        <p role="status">This instance does not exist (any more). <Link href="/">Back to the instances</Link></p>
      </section>
    );
  }
  if (!instance) return error ? <ErrorMessage error={error} /> : <p>Loading…</p>;
  const yamlText = stringify(instance, { lineWidth: 0 });
  return (
    <section aria-labelledby="detail-title">
      <div className="page-head">
        <h1 id="detail-title">{instance.name}</h1>
        <StatusBadge instance={instance} />
        <SimulatedTag instance={instance} />
        <SpotTag instance={instance} />
        <HealthBadge instance={instance} now={now} />
        <PowerButtons instance={instance} onChange={() => load(new AbortController().signal)} />
        <button type="button" className="danger" onClick={() => setDeleting(true)}
          disabled={instance.status === "deleting" || instance.status === "deleted"}>
          Delete instance
        </button>
      </div>
      <ErrorMessage error={error} />
      {instance.status_reason && <p className="muted">{instance.status_reason}</p>}
      <dl className="facts">
        <dt>Cloud</dt><dd>{instance.cloud}</dd>
        <dt>Region</dt><dd data-testid="region">{instance.region}</dd>
        <dt>Zone</dt><dd data-testid="zone">{instance.zone ?? "-"}</dd>
        {instance.zone_attempts?.length ? (
          <>
            <dt>{instance.spec.regions ? "Places tried" : "Zones tried"}</dt>
            <dd>
              <ol className="zone-attempts" data-testid="zone-attempts">
                {instance.zone_attempts.map((attempt, index) => (
                  <li key={`${index}-${attempt.region}-${attempt.zone}`}>
                    {`${attemptPlace(attempt, Boolean(instance.spec.regions))}: ${attempt.outcome}`}
                    {attempt.error && <> <span className="muted">{attempt.error}</span></>}
                  </li>
                ))}
              </ol>
            </dd>
          </>
        ) : null}
        <dt>Public IP</dt>
        <dd>
          {instance.public_ip ? (
            <><code data-testid="public-ip">{instance.public_ip}</code> <CopyButton text={instance.public_ip} label="Copy the public IP" /></>
          ) : "-"}
        </dd>
        <dt>Labels</dt><dd><Labels labels={instance.labels} /></dd>
        <dt>Stack</dt><dd><code data-testid="stack-name">{instance.stack_name ?? "-"}</code></dd>
        <dt>Inspect by hand</dt>
        <dd>
          {instance.stack_command ? (
            <><code data-testid="stack-command">{instance.stack_command}</code> <CopyButton text={instance.stack_command} label="Copy the pulumi command" /></>
          ) : "-"}
        </dd>
      </dl>
      <Autostop instance={instance} now={now} />
      <Drift instance={instance} onChange={() => load(new AbortController().signal)} />
      <Metrics name={instance.name} reportAt={instance.health.last_report_at} now={now} />
      <Snapshots instance={instance} snapshots={snapshots} onChange={() => load(new AbortController().signal)} />
      <h2>Operations</h2>
      {operations.length === 0 ? <p className="muted">No operations.</p> : (
        <ol className="operations">
          {operations.map((op, index) => <OperationItem key={op.id} operation={op} open={index === 0} />)}
        </ol>
      )}
      <h2>Outputs</h2>
      {Object.keys(instance.outputs).length ? (
        <dl className="facts">
          {Object.entries(instance.outputs).map(([key, value]) => (
            <div key={key} className="fact"><dt>{key}</dt><dd><code>{typeof value === "string" ? value : JSON.stringify(value)}</code></dd></div>
          ))}
        </dl>
      ) : <p className="muted">No outputs yet.</p>}
      <h2>Spec (as <code>orch get -o yaml</code> prints it)</h2>
      <pre className="code" data-testid="spec-yaml" tabIndex={0}>{yamlText}</pre>
      {deleting && (
        <DeleteDialog kind="instance" name={instance.name} onClose={() => setDeleting(false)}
          onDelete={async () => {
            await api.del(path(instance.name));
            navigate("/");
          }} />
      )}
    </section>
  );
}

/** Idle autostop: its settings (spec.autostop) and what the service found (instance.autostop). */
type ZoneAttempt = NonNullable<Instance["zone_attempts"]>[number];

/** Where a failover attempt was: its zone; with a region list (region failover) `region / zone`, or the region. */
function attemptPlace(attempt: ZoneAttempt, regions: boolean): string {
  if (regions && attempt.region) return attempt.zone ? `${attempt.region} / ${attempt.zone}` : attempt.region;
  return attempt.zone ?? "-";
}

function Autostop({ instance, now }: { instance: Instance; now: number }) {
  const settings = instance.spec.autostop;
  if (!settings) return null;
  const state = instance.autostop;
  const running = instance.status === "running";
  const since = (iso: string | null | undefined) => (iso ? `${ago(secondsSince(iso, now))} (${iso})` : "-");
  return (
    <section aria-labelledby="autostop-title">
      <h2 id="autostop-title">Autostop</h2>
      <p data-testid="autostop-settings">
        {settings.action === "delete" ? "Deletes" : "Stops"} the instance when its {settings.metric} use stays
        below {settings.below_percent}% for {settings.idle_minutes} min.
      </p>
      {running && state?.warned_at && (
        <p role="status" className="warning" data-testid="autostop-warned">
          Idle: its users were warned {ago(secondsSince(state.warned_at, now))}; it will be
          {settings.action === "delete" ? " deleted" : " stopped"} unless it gets busy.
        </p>
      )}
      {running && state?.warning && <p className="warning" data-testid="autostop-warning">{state.warning}</p>}
      <dl className="facts">
        <dt>Idle since</dt><dd data-testid="autostop-idle-since">{running ? since(state?.idle_since) : "-"}</dd>
        <dt>Last acted</dt><dd>{since(state?.decided_at)}</dd>
      </dl>
    </section>
  );
}

/** POST .../{action} of the instance (an operation), then onChange; the service's refusal (409 busy
 * or wrong status, 422) is kept as `error` to be shown next to the buttons. */
function useInstanceAction(instance: Instance, onChange: () => void) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const act = async (action: "stop" | "start" | "refresh" | "reconcile") => {
    setBusy(true);
    setError(null);
    try {
      await api.post(`${path(instance.name)}/${action}`);
      onChange();
    } catch (e) {
      setError(messageOf(e));
    } finally {
      setBusy(false);
    }
  };
  return { error, busy, act };
}

/** Stop and Start (POST .../stop|start); the service's refusal (409 busy or wrong status, 422 no
 * power state on this cloud) is shown next to them. */
function PowerButtons({ instance, onChange }: { instance: Instance; onChange: () => void }) {
  const { error, busy, act } = useInstanceAction(instance, onChange);
  return (
    <div className="power" role="group" aria-label="Power">
      <button type="button" onClick={() => act("stop")} disabled={busy || !STOPPABLE.includes(instance.status)}
        aria-describedby={error ? "power-error" : undefined}>Stop</button>
      <button type="button" onClick={() => act("start")} disabled={busy || !STARTABLE.includes(instance.status)}
        aria-describedby={error ? "power-error" : undefined}>Start</button>
      <ErrorMessage error={error} id="power-error" />
    </div>
  );
}

function valueText(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** What the last refresh found (the differences from the spec, or that the machine is lost), with
 * Refresh (POST .../refresh) and Reconcile (POST .../reconcile: back to the spec); the service's
 * refusal is shown next to them. */
function Drift({ instance, onChange }: { instance: Instance; onChange: () => void }) {
  const { error, busy, act } = useInstanceAction(instance, onChange);
  const drift = instance.drift;
  return (
    <section aria-labelledby="drift-title">
      <h2 id="drift-title">Drift</h2>
      <div className="power" role="group" aria-label="Drift">
        <button type="button" onClick={() => act("refresh")} disabled={busy || !REFRESHABLE.includes(instance.status)}
          aria-describedby={error ? "drift-error" : undefined}>Refresh</button>
        <button type="button" onClick={() => act("reconcile")} disabled={busy || !RECONCILABLE.includes(instance.status)}
          aria-describedby={error ? "drift-error" : undefined}>Reconcile</button>
        <ErrorMessage error={error} id="drift-error" />
      </div>
      {!drift ? <p className="muted">Not refreshed since it was last applied.</p> : (
        <>
          <p className="muted" data-testid="drift-checked">
            Checked {drift.checked_at ?? "-"}{drift.lost ? ": its machine was deleted outside orch (lost)" : ""}
            {!drift.lost && drift.differences.length === 0 ? ": no differences from the spec" : ""}
          </p>
          {drift.differences.length > 0 && (
            <table data-testid="drift-differences">
              <thead><tr><th>Resource</th><th>Property</th><th>Expected (the spec)</th><th>Actual (the cloud)</th></tr></thead>
              <tbody>
                {drift.differences.map((d) => (
                  <tr key={`${d.resource}/${d.property}`}>
                    <td><code>{d.resource}</code></td><td><code>{d.property}</code></td>
                    <td><code>{valueText(d.expected)}</code></td><td><code>{valueText(d.actual)}</code></td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      )}
    </section>
  );
}

function Metrics({ name, reportAt, now }: { name: string; reportAt: string | null; now: number }) {
  const [window, setWindow] = useState<Window>("1h");
  const [samples, setSamples] = useState<MetricSample[]>([]);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    const controller = new AbortController();
    loadSamples(name, window, controller.signal)
      .then((s) => { setSamples(s); setError(null); })
      .catch((e) => (e as Error).name !== "AbortError" && setError(messageOf(e)));
    return () => controller.abort();
  }, [name, window, reportAt]);
  const from = now - WINDOWS[window];
  return (
    <section aria-labelledby="metrics-title">
      <div className="page-head">
        <h2 id="metrics-title">Utilisation</h2>
        <div role="group" aria-label="Time window" className="tabs">
          {(Object.keys(WINDOWS) as Window[]).map((w) => (
            <button key={w} type="button" aria-pressed={window === w} onClick={() => setWindow(w)}>{w}</button>
          ))}
        </div>
      </div>
      <ErrorMessage error={error} />
      <div className="charts">
        <LineChart title="CPU" from={from} to={now} series={[{ name: "CPU %", points: cpuPoints(samples), className: "s-cpu" }]} />
        <LineChart title="GPU" from={from} to={now} series={[{ name: "GPU %", points: gpuPoints(samples), className: "s-gpu" }]} />
        <LineChart title="Memory" from={from} to={now} series={[{ name: "Memory %", points: memoryPoints(samples), className: "s-mem" }]} />
      </div>
    </section>
  );
}

function Snapshots({ instance, snapshots, onChange }: { instance: Instance; snapshots: Snapshot[]; onChange: () => void }) {
  const [snapshotName, setSnapshotName] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [deleting, setDeleting] = useState<string | null>(null);
  const create = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api.post(`${path(instance.name)}/snapshots`, { name: snapshotName.trim() });
      setSnapshotName("");
      onChange();
    } catch (e) {
      setError(messageOf(e));
    } finally {
      setBusy(false);
    }
  };
  return (
    <section aria-labelledby="snapshots-title">
      <h2 id="snapshots-title">Snapshots</h2>
      <form className="inline-form" onSubmit={create}>
        <label htmlFor="snapshot-name">New snapshot name</label>
        <input id="snapshot-name" value={snapshotName} onChange={(e) => setSnapshotName(e.target.value)} autoComplete="off"
          aria-describedby={error ? "snapshot-error" : undefined} />
        <button type="submit" disabled={busy || !snapshotName.trim()}>Create snapshot</button>
      </form>
      <ErrorMessage error={error} id="snapshot-error" />
      {snapshots.length === 0 ? <p className="muted">No snapshots of this instance.</p> : (
        <table>
          <thead><tr><th scope="col">Name</th><th scope="col">Status</th><th scope="col">Image</th><th scope="col">Actions</th></tr></thead>
          <tbody>
            {snapshots.map((s) => (
              <tr key={s.name} data-testid={`snapshot-${s.name}`}>
                <td>{s.name}</td>
                <td><span className={`status status-${s.status}`}>{s.status}</span></td>
                <td><code>{s.image_id ?? "-"}</code></td>
                <td>
                  <Link href={`/new?from_snapshot=${encodeURIComponent(s.name)}`} className="button small"
                    aria-disabled={s.status !== "available"}>New instance from this snapshot</Link>
                  <button type="button" className="small danger" onClick={() => setDeleting(s.name)}
                    disabled={s.status === "deleting"}>Delete snapshot {s.name}</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {deleting && (
        <DeleteDialog kind="snapshot" name={deleting} onClose={() => setDeleting(null)}
          onDelete={async () => { await api.del(`/snapshots/${encodeURIComponent(deleting)}`); onChange(); }} />
      )}
    </section>
  );
}

function OperationItem({ operation, open }: { operation: Operation; open: boolean }) {
  const [expanded, setExpanded] = useState(open);
  const [logs, setLogs] = useState<string[]>([]);
  const offset = useRef(0);
  const active = operation.status === "running" || operation.status === "queued";
  // Following the log: each poll asks only for the lines after the ones already shown.
  const follow = useCallback(async (signal: AbortSignal) => {
    if (!expanded) return;
    const op = await api.get<Operation>(`/operations/${operation.id}${query({ log_offset: offset.current })}`, signal);
    if (op.logs.length) {
      offset.current = op.log_offset + op.logs.length;
      setLogs((lines) => [...lines, ...op.logs].slice(-MAX_LOG_LINES));
    }
  }, [expanded, operation.id]);
  usePolling(follow, `${operation.id}:${expanded}:${active}`, active ? 1500 : 3_600_000);
  const bodyId = `op-${operation.id}`;
  return (
    <li className="operation" data-testid={`operation-${operation.kind}`}>
      <button type="button" className="disclosure" aria-expanded={expanded} aria-controls={bodyId} onClick={() => setExpanded(!expanded)}>
        {`${operation.kind} · ${operation.status} · ${operation.created_at ?? ""}`}
      </button>
      {expanded && (
        <div id={bodyId}>
          {operation.error && <p className="error">{operation.error}</p>}
          <ol className="steps">
            {operation.steps.map((step, index) => (
              <li key={`${index}-${step.name}`} className={`step-${step.status}`}>
                {`${step.name}: ${step.status}`}
                {step.detail && <div className="muted step-detail">{step.detail}</div>}
              </li>
            ))}
          </ol>
          <pre className="code log" tabIndex={0} aria-label={`Log of the ${operation.kind} operation`} data-testid="log">
            {logs.length ? logs.join("\n") : "(no log lines yet)"}
          </pre>
        </div>
      )}
    </li>
  );
}
