// A tiny router over the History API: the paths the service answers with index.html.
import { useEffect, useState, type AnchorHTMLAttributes, type MouseEvent } from "react";

export interface Location {
  path: string;
  search: string;
  state: { message?: string } | null;
}

const listeners = new Set<() => void>();

function current(): Location {
  return { path: window.location.pathname, search: window.location.search, state: window.history.state };
}

export function navigate(to: string, state: Location["state"] = null, replace = false): void {
  if (replace) window.history.replaceState(state, "", to);
  else window.history.pushState(state, "", to);
  listeners.forEach((listener) => listener());
}

export function useLocation(): Location {
  const [location, setLocation] = useState(current);
  useEffect(() => {
    const update = () => setLocation(current());
    listeners.add(update);
    window.addEventListener("popstate", update);
    return () => {
      listeners.delete(update);
      window.removeEventListener("popstate", update);
    };
  }, []);
  return location;
}

export function Link({ href, onClick, ...rest }: AnchorHTMLAttributes<HTMLAnchorElement> & { href: string }) {
  const follow = (event: MouseEvent<HTMLAnchorElement>) => {
    onClick?.(event);
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
    event.preventDefault();
    navigate(href);
  };
  return <a href={href} onClick={follow} {...rest} />;
}
