import { useEffect, useState, type FormEvent } from "react";
import { API, messageOf } from "../api/client";
import type { Me } from "../api/types";
import { signIn } from "../auth";
import { ErrorMessage } from "../components/bits";
import { navigate } from "../router";

interface SignInAnswer {
  token: string;
  user: string;
}

// The one-time code arrives in the fragment (#code=...): read it once, then strip it from the URL.
function takeCodeFromFragment(): string | null {
  const match = /(?:^#|&)code=([^&]+)/.exec(window.location.hash);
  if (!match) return null;
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
  return decodeURIComponent(match[1]);
}

async function post<T>(path: string, body: unknown, token?: string): Promise<T> {
  let response: Response;
  try {
    response = await fetch(`${API}${path}`, {
      method: body === undefined ? "GET" : "POST",
      headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new Error("The service cannot be reached (network error).");
  }
  if (!response.ok) {
    const detail = await response.json().then((b: { detail?: string }) => b.detail).catch(() => null);
    throw new Error(detail ?? `${response.status} ${response.statusText}`);
  }
  return (await response.json()) as T;
}

export function SignIn({ message }: { message: string | null }) {
  const [pasted, setPasted] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(() => /(?:^#|&)code=/.test(window.location.hash));

  // On load, and when the link is opened in a tab already showing this page (only the fragment changes).
  useEffect(() => {
    const signInWithCode = () => {
      const code = takeCodeFromFragment();
      if (!code) return;
      setBusy(true);
      post<SignInAnswer>("/auth/signin", { code })
        .then((answer) => {
          signIn(answer.token, answer.user);
          navigate("/", null, true);
        })
        .catch((e) => setError(messageOf(e)))
        .finally(() => setBusy(false));
    };
    signInWithCode();
    window.addEventListener("hashchange", signInWithCode);
    return () => window.removeEventListener("hashchange", signInWithCode);
  }, []);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    const token = pasted.trim();
    if (!token) {
      setError("Paste a user token (from `orch token create`).");
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const me = await post<Me>("/me", undefined, token);
      signIn(token, me.user);
      navigate("/", null, true);
    } catch (e) {
      setError(`That token was refused: ${messageOf(e)}`);
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="signin" id="main">
      <h1>Sign in to orch</h1>
      {message && <p className="notice" role="status">{message}</p>}
      <p>
        Open the sign-in link that <code>orch serve</code> printed, or paste a user token
        (<code>orch token create --user NAME</code>).
      </p>
      <form onSubmit={submit}>
        <label htmlFor="token">User token</label>
        <textarea id="token" rows={3} value={pasted} onChange={(e) => setPasted(e.target.value)}
          aria-describedby={error ? "signin-error" : undefined} autoComplete="off" spellCheck={false} />
        <ErrorMessage error={error} id="signin-error" />
        <button type="submit" disabled={busy}>{busy ? "Signing in…" : "Sign in"}</button>
      </form>
    </main>
  );
}
