import { useEffect, useRef, useState, type FormEvent } from "react";
import { messageOf } from "../api/client";
import { ErrorMessage } from "./bits";

/** Deleting needs the thing's name typed: a slip of the mouse deletes nothing. */
export function DeleteDialog({ kind, name, onDelete, onClose }: {
  kind: string;
  name: string;
  onDelete: () => Promise<void>;
  onClose: () => void;
}) {
  const [typed, setTyped] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal?.();
  }, []);
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    if (typed !== name) return;
    setBusy(true);
    setError(null);
    try {
      await onDelete();
      onClose();
    } catch (e) {
      setError(messageOf(e));
      setBusy(false);
    }
  };
  const inputId = `confirm-delete-${kind}`;
  return (
    <dialog ref={ref} className="dialog" aria-labelledby={`${inputId}-title`} onCancel={onClose}>
      <form onSubmit={submit}>
        <h2 id={`${inputId}-title`}>{`Delete ${kind} ${name}?`}</h2>
        <p>This cannot be undone. Type the name to confirm.</p>
        <label htmlFor={inputId}>{`Type ${name} to confirm`}</label>
        <input id={inputId} value={typed} onChange={(e) => setTyped(e.target.value)} autoComplete="off" autoFocus />
        <ErrorMessage error={error} />
        <div className="actions">
          <button type="submit" className="danger" disabled={typed !== name || busy}>{busy ? "Deleting…" : `Delete ${kind}`}</button>
          <button type="button" className="secondary" onClick={onClose}>Cancel</button>
        </div>
      </form>
    </dialog>
  );
}
