import { useCallback, useEffect, useRef, useState, type FormEvent } from "react";
import { api, messageOf, query } from "../api/client";
import type { Instance, InstancePage } from "../api/types";
import { Sparkline } from "../components/Charts";
import { CopyButton, ErrorMessage, HealthBadge, Labels, SimulatedTag, SpotTag, StatusBadge } from "../components/bits";
import { age, percent, secondsSince } from "../format";
import { usePolling, useNow } from "../hooks";
import { cpuPoints, gpuAverage, gpuPoints, loadSamples } from "../metrics";
import { useFeatures } from "../features";
import type { Point } from "../components/Charts";
import { Link, navigate } from "../router";

export const PAGE_SIZE = 50;
const STATUSES = ["pending", "provisioning", "configuring", "running", "updating", "stopping", "stopped", "starting", "failed", "deleting"];
const SORTS = [
  { value: "name", label: "Name (A–Z)" },
  { value: "-name", label: "Name (Z–A)" },
  { value: "-created_at", label: "Newest first" },
  { value: "created_at", label: "Oldest first" },
];

interface Filters {
  q: string;
  cloud: string;
  status: string;
  label: string;
  sort: string;
}

function filtersFromUrl(): Filters {
  const params = new URLSearchParams(window.location.search);
  return {
    q: params.get("q") ?? "",
    cloud: params.get("cloud") ?? "",
    status: params.get("status") ?? "",
    label: params.get("label") ?? "",
    sort: params.get("sort") ?? "name",
  };
}

interface Spark {
  reportAt: string;
  cpu: Point[];
  gpu: Point[];
}

export function InstancesList() {
  const features = useFeatures();
  const clouds = features.known_clouds ?? features.clouds;
  const [filters, setFilters] = useState<Filters>(filtersFromUrl);
  const [draft, setDraft] = useState<Filters>(filters);
  const [cursors, setCursors] = useState<(string | null)[]>([null]);
  const [page, setPage] = useState<InstancePage | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [sparks, setSparks] = useState<Record<string, Spark>>({});
  const sparksRef = useRef(sparks);
  const now = useNow();
  const cursor = cursors[cursors.length - 1];

  const load = useCallback(
    async (signal: AbortSignal) => {
      const path = `/instances${query({ limit: PAGE_SIZE, cursor, sort: filters.sort, q: filters.q, cloud: filters.cloud, status: filters.status, label: filters.label })}`;
      try {
        const body = await api.get<InstancePage>(path, signal);
        setPage(body); // an unchanged page (304) is the same object: React keeps the DOM as it is
        setError(null);
      } catch (e) {
        if ((e as Error).name !== "AbortError") setError(messageOf(e));
      }
    },
    [cursor, filters],
  );
  usePolling(load, JSON.stringify([cursor, filters]));

  // Sparklines: the last hour of samples of each row that has reports, refetched when a new report arrives.
  useEffect(() => {
    sparksRef.current = sparks;
  }, [sparks]);
  useEffect(() => {
    if (!page) return;
    const stale = page.items.filter(
      (i) => i.health.last_report_at && sparksRef.current[i.name]?.reportAt !== i.health.last_report_at,
    );
    for (const instance of stale) {
      const reportAt = instance.health.last_report_at!;
      loadSamples(instance.name, "1h")
        .then((samples) =>
          setSparks((all) => ({ ...all, [instance.name]: { reportAt, cpu: cpuPoints(samples), gpu: gpuPoints(samples) } })),
        )
        .catch(() => undefined); // the row still shows the latest figures
    }
  }, [page]);

  const apply = (event: FormEvent) => {
    event.preventDefault();
    setFilters(draft);
    setCursors([null]);
    const params = query({ ...draft, sort: draft.sort === "name" ? "" : draft.sort });
    navigate(`/${params}`, null, true);
  };
  const toggle = (name: string) =>
    setSelected((current) => {
      const next = new Set(current);
      if (next.has(name)) next.delete(name);
      else next.add(name);
      return next;
    });

  const items = page?.items ?? [];
  const selectedIps = items.filter((i) => selected.has(i.name) && i.public_ip).map((i) => i.public_ip!);
  const hourAgo = now - 3600_000;
  return (
    <section aria-labelledby="instances-title">
      <div className="page-head">
        <h1 id="instances-title">Instances</h1>
        <Link href="/new" className="button">New instance</Link>
      </div>
      <form className="filters" onSubmit={apply} role="search" aria-label="Filter instances">
        <label>
          Name contains
          <input type="search" value={draft.q} onChange={(e) => setDraft({ ...draft, q: e.target.value })} />
        </label>
        <label>
          Cloud
          <select value={draft.cloud} onChange={(e) => setDraft({ ...draft, cloud: e.target.value })}>
            <option value="">all</option>
            {clouds.map((c) => <option key={c} value={c}>{c}</option>)}
          </select>
        </label>
        <label>
          Status
          <select value={draft.status} onChange={(e) => setDraft({ ...draft, status: e.target.value })}>
            <option value="">all</option>
            {STATUSES.map((s) => <option key={s} value={s}>{s}</option>)}
          </select>
        </label>
        <label>
          Label (key=value)
          <input value={draft.label} onChange={(e) => setDraft({ ...draft, label: e.target.value })} placeholder="team=ml" />
        </label>
        <label>
          Sort
          <select value={draft.sort} onChange={(e) => setDraft({ ...draft, sort: e.target.value })}>
            {SORTS.map((s) => <option key={s.value} value={s.value}>{s.label}</option>)}
          </select>
        </label>
        <button type="submit">Apply</button>
      </form>
      <ErrorMessage error={error} />
      {selected.size > 0 && (
        <div className="selection" role="status">
          {selected.size} selected
          {selectedIps.length > 0 && <CopyButton text={selectedIps.join("\n")} label="Copy the public IPs of the selected instances" />}
          <button type="button" className="small" onClick={() => setSelected(new Set())}>Clear selection</button>
        </div>
      )}
      {page === null && !error && <p>Loading…</p>}
      {page !== null && (
        <>
          <p className="muted" data-testid="total">
            {page.total} instance{page.total === 1 ? "" : "s"}
          </p>
          {items.length === 0 ? (
            <p data-testid="empty">No instances{filters.q || filters.cloud || filters.status || filters.label ? " match these filters" : " yet"}.</p>
          ) : (
            <div className="table-wrap">
              <table className="instances">
                <caption className="visually-hidden">Instances</caption>
                <thead>
                  <tr>
                    <th scope="col"><span className="visually-hidden">Select</span></th>
                    <th scope="col">Name</th>
                    <th scope="col">Cloud</th>
                    <th scope="col">Region / zone</th>
                    <th scope="col">Machine</th>
                    <th scope="col">Status</th>
                    <th scope="col">Health</th>
                    <th scope="col">Public IP</th>
                    <th scope="col">CPU</th>
                    <th scope="col">GPU</th>
                    <th scope="col">Labels</th>
                    <th scope="col">Age</th>
                  </tr>
                </thead>
                <tbody>
                  {items.map((instance) => (
                    <Row key={instance.name} instance={instance} now={now} from={hourAgo} spark={sparks[instance.name]}
                      selected={selected.has(instance.name)} onToggle={toggle} />
                  ))}
                </tbody>
              </table>
            </div>
          )}
          <nav className="pager" aria-label="Pages">
            <button type="button" disabled={cursors.length === 1} onClick={() => setCursors(cursors.slice(0, -1))}>
              Previous page
            </button>
            <span>Page {cursors.length}</span>
            <button type="button" disabled={!page.next_cursor} onClick={() => setCursors([...cursors, page.next_cursor!])}>
              Next page
            </button>
          </nav>
        </>
      )}
    </section>
  );
}

interface RowProps {
  instance: Instance;
  now: number;
  from: number;
  spark: Spark | undefined;
  selected: boolean;
  onToggle: (name: string) => void;
}

function Row({ instance, now, from, spark, selected, onToggle }: RowProps) {
  const report = instance.health.last_report as { cpu_percent?: number; gpus?: { utilization_percent?: number | null }[] };
  const gpu = gpuAverage(report.gpus);
  const spec = instance.spec as { zone?: string | null; machine_type?: string | null; gpu?: { type: string; count?: number } | null };
  return (
    <tr className={selected ? "selected" : undefined} data-testid={`row-${instance.name}`}>
      <td>
        <input type="checkbox" checked={selected} onChange={() => onToggle(instance.name)} aria-label={`Select ${instance.name}`} />
      </td>
      <td>
        <Link href={`/instances/${encodeURIComponent(instance.name)}`}>{instance.name}</Link>
        <SimulatedTag instance={instance} />
        <SpotTag instance={instance} />
      </td>
      <td>{instance.cloud}</td>
      <td>{instance.region}{(instance.zone ?? spec.zone) ? ` / ${instance.zone ?? spec.zone}` : ""}</td>
      <td>
        {spec.machine_type ?? "-"}
        {spec.gpu ? <span className="muted"> · {spec.gpu.count ?? 1}× {spec.gpu.type}</span> : null}
      </td>
      <td><StatusBadge instance={instance} /></td>
      <td><HealthBadge instance={instance} now={now} /></td>
      <td>
        {instance.public_ip ? (
          <span className="ip">
            <code data-testid="public-ip">{instance.public_ip}</code>
            <CopyButton text={instance.public_ip} label={`Copy the public IP of ${instance.name}`} />
          </span>
        ) : <span className="muted">-</span>}
      </td>
      <td className="metric">
        <span>{percent(report.cpu_percent)}</span>
        {spark && <Sparkline points={spark.cpu} from={from} to={now} label={`CPU of ${instance.name}, last hour`} />}
      </td>
      <td className="metric">
        <span>{percent(gpu)}</span>
        {spark && gpu !== null && <Sparkline points={spark.gpu} from={from} to={now} label={`GPU of ${instance.name}, last hour`} />}
      </td>
      <td><Labels labels={instance.labels} /></td>
      <td>{age(secondsSince(instance.created_at, now))}</td>
    </tr>
  );
}
