import { useEffect, useState } from "react";
import { api, messageOf } from "./api/client";
import type { Features, Me } from "./api/types";
import { currentToken, currentUser, signOut } from "./auth";
import { ErrorMessage } from "./components/bits";
import { FeaturesContext } from "./features";
import { Link, navigate, useLocation } from "./router";
import { InstanceDetail } from "./pages/InstanceDetail";
import { InstancesList } from "./pages/InstancesList";
import { NewInstance } from "./pages/NewInstance";
import { SignIn } from "./pages/SignIn";
import { Snapshots } from "./pages/Snapshots";

const NAV = [
  { href: "/", label: "Instances" },
  { href: "/new", label: "New instance" },
  { href: "/snapshots", label: "Snapshots" },
];

export function sidebarKey(user: string): string {
  return `orch.sidebar.collapsed.${user}`;
}

function Navigation({ sidebar, path, user }: { sidebar: boolean; path: string; user: string }) {
  const [collapsed, setCollapsed] = useState(() => localStorage.getItem(sidebarKey(user)) === "1");
  const toggle = () => {
    const next = !collapsed;
    setCollapsed(next);
    localStorage.setItem(sidebarKey(user), next ? "1" : "0");
  };
  const active = (href: string) => (href === "/" ? path === "/" || path.startsWith("/instances/") : path.startsWith(href));
  const links = NAV.map((item) => (
    <li key={item.href}>
      <Link href={item.href} aria-current={active(item.href) ? "page" : undefined} title={item.label}>
        <span className="nav-icon" aria-hidden="true">{item.label[0]}</span>
        <span className="nav-text">{item.label}</span>
      </Link>
    </li>
  ));
  const account = (
    <div className="account">
      <span className="muted">{user}</span>
      <button type="button" className="small" onClick={() => { signOut(); navigate("/signin"); }}>
        Sign out
      </button>
    </div>
  );
  if (!sidebar) {
    return (
      <header className="topnav">
        <span className="brand">orch</span>
        <nav aria-label="Main"><ul>{links}</ul></nav>
        {account}
      </header>
    );
  }
  return (
    <aside className={collapsed ? "sidebar collapsed" : "sidebar"} data-testid="sidebar">
      <div className="sidebar-head">
        <span className="brand">orch</span>
        <button type="button" className="small" onClick={toggle} aria-expanded={!collapsed} aria-controls="sidebar-nav">
          {collapsed ? "»" : "«"}
          <span className="visually-hidden">{collapsed ? "Expand the sidebar" : "Collapse the sidebar"}</span>
        </button>
      </div>
      <nav aria-label="Main" id="sidebar-nav"><ul>{links}</ul></nav>
      {!collapsed && account}
    </aside>
  );
}

export function App() {
  const location = useLocation();
  const [features, setFeatures] = useState<Features | null>(null);
  const [me, setMe] = useState<Me | null>(null);
  const [error, setError] = useState<string | null>(null);
  const signedIn = currentToken() !== null;

  useEffect(() => {
    if (!signedIn && location.path !== "/signin") navigate("/signin", null, true);
  }, [signedIn, location.path]);

  useEffect(() => {
    if (!signedIn) return;
    let live = true;
    Promise.all([api.get<Features>("/features"), api.get<Me>("/me").catch(() => null)])
      .then(([f, m]) => {
        if (!live) return;
        setFeatures(f);
        setMe(m);
        setError(null);
      })
      .catch((e) => live && setError(messageOf(e)));
    return () => {
      live = false;
    };
  }, [signedIn]);

  if (location.path === "/signin" || !signedIn) return <SignIn message={location.state?.message ?? null} />;
  if (!features) {
    return (
      <main className="content">
        {error ? <ErrorMessage error={`Cannot load the service's settings: ${error}`} /> : <p>Loading…</p>}
      </main>
    );
  }
  const user = me?.user ?? currentUser() ?? "user";
  const sidebar = features.features.sidebar === true;
  let page;
  if (location.path === "/new") page = <NewInstance search={location.search} />;
  else if (location.path === "/snapshots") page = <Snapshots />;
  else if (location.path.startsWith("/instances/")) {
    page = <InstanceDetail name={decodeURIComponent(location.path.slice("/instances/".length))} />;
  } else page = <InstancesList />;
  return (
    <FeaturesContext.Provider value={features}>
      <div className={sidebar ? "layout with-sidebar" : "layout with-topnav"}>
        <a href="#main" className="skip-link">Skip to content</a>
        <Navigation sidebar={sidebar} path={location.path} user={user} />
        <main id="main" className="content" tabIndex={-1}>
          {page}
        </main>
      </div>
    </FeaturesContext.Provider>
  );
}
