import { useCallback, useState } from "react";
import { api, messageOf, query } from "../api/client";
import type { Snapshot } from "../api/types";
import { ErrorMessage } from "../components/bits";
import { DeleteDialog } from "../components/DeleteDialog";
import { usePolling } from "../hooks";
import { Link } from "../router";

export function Snapshots() {
  const [snapshots, setSnapshots] = useState<Snapshot[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [deleting, setDeleting] = useState<string | null>(null);
  const load = useCallback(async (signal: AbortSignal) => {
    try {
      const page = await api.get<{ items: Snapshot[] }>(`/snapshots${query({ limit: 100 })}`, signal);
      setSnapshots(page.items);
      setError(null);
    } catch (e) {
      if ((e as Error).name !== "AbortError") setError(messageOf(e));
    }
  }, []);
  usePolling(load, "snapshots");
  return (
    <section aria-labelledby="snapshots-page-title">
      <h1 id="snapshots-page-title">Snapshots</h1>
      <ErrorMessage error={error} />
      {snapshots === null ? (!error && <p>Loading…</p>) : snapshots.length === 0 ? <p>No snapshots.</p> : (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th><th scope="col">Source instance</th><th scope="col">Cloud</th><th scope="col">Region</th>
                <th scope="col">Size</th><th scope="col">Status</th><th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {snapshots.map((s) => (
                <tr key={s.name} data-testid={`snapshot-${s.name}`}>
                  <td>{s.name}</td>
                  <td><Link href={`/instances/${encodeURIComponent(s.instance)}`}>{s.instance}</Link></td>
                  <td>{s.cloud}</td>
                  <td>{s.region}</td>
                  <td>{s.disk_gb ? `${s.disk_gb} GB` : "-"}</td>
                  <td><span className={`status status-${s.status}`}>{s.status}</span>{s.error && <span className="error"> {s.error}</span>}</td>
                  <td>
                    <Link href={`/new?from_snapshot=${encodeURIComponent(s.name)}`} className="button small">Use as base image</Link>
                    <button type="button" className="small danger" onClick={() => setDeleting(s.name)} disabled={s.status === "deleting"}>
                      Delete snapshot {s.name}
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {deleting && (
        <DeleteDialog kind="snapshot" name={deleting} onClose={() => setDeleting(null)}
          onDelete={async () => { await api.del(`/snapshots/${encodeURIComponent(deleting)}`); await load(new AbortController().signal); }} />
      )}
    </section>
  );
}
