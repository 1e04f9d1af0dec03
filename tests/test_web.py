"""The web page (web/): its type check, lint, component tests, build and end-to-end run.

The node tools run from web/node_modules, installed with `npm ci` from the committed lockfile
(skipped while node_modules matches it). The end-to-end test drives Debian's chromium with
Playwright against real `orch serve` processes on embedded defaults (so they print their sign-in
links), with the Pulumi stand-in; its screenshots go to a folder it prints.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.db import url_with_database
from orchestrator.models import Instance, claim_key
from tests.live import REPO, LiveService, free_port, service_env

WEB = REPO / "web"
NPM_TIMEOUT_S = 300
STEP_TIMEOUT_S = 240
E2E_TIMEOUT_S = 420
SEEDED_INSTANCES = 10_000
SEEDED_DB = "orch_web_seeded"
SEED_BATCH = 500
XSS_LABEL = "<img src=x onerror=alert(1)>"


def run(*argv: str, timeout: float = STEP_TIMEOUT_S, env: dict | None = None) -> str:
    env = {**(env or os.environ), "NO_COLOR": "1", "CI": "1"}
    env.pop("FORCE_COLOR", None)
    result = subprocess.run(argv, cwd=WEB, capture_output=True, text=True, timeout=timeout, env=env)
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)  # colours some tools print anyway
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{output[-12000:]}"
    return output


@pytest.fixture(scope="module")
def web():
    """web/node_modules as the lockfile pins it."""
    if shutil.which("npm") is None:
        pytest.fail("npm not found: run the suite with scripts/test, which installs node and npm")
    lock_hash = hashlib.sha256((WEB / "package-lock.json").read_bytes()).hexdigest()
    stamp = WEB / "node_modules" / ".orch-lock-sha256"
    if not stamp.is_file() or stamp.read_text() != lock_hash:
        run("npm", "ci", "--no-audit", "--no-fund", timeout=NPM_TIMEOUT_S)
        stamp.write_text(lock_hash)
    return WEB


def bin_(name: str) -> str:
    return str(WEB / "node_modules" / ".bin" / name)


def test_the_committed_api_types_match_the_services_openapi_document(web):
    run("node", "scripts/gen-types.mjs", "--check", env={**os.environ, "ORCH_WEB_PYTHON": sys.executable})


def test_typecheck_and_lint(web):
    run(bin_("tsc"), "--noEmit")
    run(bin_("eslint"), "--max-warnings", "0", ".")


def test_component_tests(web):
    output = run(bin_("vitest"), "run")
    assert re.search(r"Tests\s+\d+ passed", output), output[-4000:]


def build_page() -> str:
    return run("npm", "run", "build")


def test_the_build_is_csp_clean_and_within_the_bundle_budget(web):
    output = build_page()
    size = re.search(r"first-load JavaScript: ([\d.]+) KB gzipped", output)
    assert size, output
    print(f"\n{size.group(0)}")
    assert float(size.group(1)) <= 300
    html = (WEB / "dist" / "index.html").read_text()
    assert "<style" not in html and re.search(r"<script(?![^>]*\bsrc=)", html) is None, html


# ---------------------------------------------------------------- end to end


def start_page_service(tmp: Path, mongo_url: str, **overrides: str) -> tuple[LiveService, str]:
    """`orch serve` on embedded defaults for the page (no ORCH_JWT_SECRET: it prints a sign-in link)."""
    port = free_port()
    env = service_env(tmp, mongo_url, ORCH_PUBLIC_URL=f"http://127.0.0.1:{port}", **overrides)
    del env["ORCH_JWT_SECRET"]
    log_path = tmp / "service.log"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "orch"), "serve", "--port", str(port)],
        env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=REPO,
    )
    live = LiveService(url=f"http://127.0.0.1:{port}", env=env, process=proc, log_path=log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"orch serve exited with {proc.returncode}:\n{live.logs()}")
        link = re.search(r"^sign in: (\S+)$", live.logs(), re.M)
        if link:
            return live, link.group(1)
        time.sleep(0.2)
    live.stop()
    raise RuntimeError(f"orch serve printed no sign-in link within 60 s:\n{live.logs()}")


def seeded_store(sqlite_path: Path, count: int) -> str:
    """`count` running docker instances of the admin written straight into a store file with the
    service's indexes (through the wire server it is far slower); each carries a label value that
    looks like markup (stored before any rule could refuse it). Returns the store's URL for that database."""
    from mongoeco import MongoClient
    from mongoeco.engines.sqlite import SQLiteEngine

    rows = []
    for i in range(count):
        name = f"seeded-{i:05d}"
        labels = {"team": "bench", "note": XSS_LABEL}
        row = Instance(
            name=name, owner="admin", claim=claim_key("admin", name), labels=labels,
            spec={"cloud": "docker", "region": "local", "machine_type": "small"}, cloud="docker", region="local",
            status="running", public_ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
        )
        row.set_list_keys()  # as save() does
        rows.append(row.to_mongo().to_dict())
    with MongoClient(SQLiteEngine(str(sqlite_path))) as client:
        collection = client[SEEDED_DB][Instance._get_collection_name()]
        # Indexes first, rows in batches: in mongoeco both an index built over existing rows and
        # one large insert_many grow quadratically; this way 10,000 rows take seconds.
        for spec in Instance._meta["index_specs"]:
            collection.create_index(spec["fields"], **{k: v for k, v in spec.items() if k != "fields"})
        for start in range(0, len(rows), SEED_BATCH):
            collection.insert_many(rows[start:start + SEED_BATCH])
    return SEEDED_DB


def test_end_to_end_in_chromium(web, tmp_path, mongo_url):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium not found: run the suite with scripts/test, which installs Debian's chromium")
    if not (WEB / "dist" / "index.html").is_file():
        build_page()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nweb end-to-end screenshots: {shots}")
    started = time.monotonic()
    database = seeded_store(tmp_path / "seeded.sqlite", SEEDED_INSTANCES)
    print(f"seeded {SEEDED_INSTANCES} instances in {time.monotonic() - started:.1f} s")
    store = subprocess.Popen([sys.executable, "-m", "orchestrator.embedded_store", "--path", str(tmp_path / "seeded.sqlite")],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    seeded_url = url_with_database(store.stdout.readline().strip(), database)
    main, main_link = start_page_service(tmp_path / "main", mongo_url, ORCH_CLOUDS="docker,aws")
    sidebar, sidebar_link = start_page_service(tmp_path / "sidebar", mongo_url, ORCH_FEATURE_SIDEBAR="true",
                                               ORCH_MONGODB_URL=seeded_url)
    try:
        env = {
            **main.env,
            "ORCH_E2E_URL": main.url,
            "ORCH_E2E_SIGNIN": main_link,
            "ORCH_E2E_SIDEBAR_URL": sidebar.url,
            "ORCH_E2E_SIDEBAR_SIGNIN": sidebar_link,
            "ORCH_E2E_SCREENSHOTS": str(shots),
            "ORCH_E2E_OUTPUT": str(tmp_path / "playwright"),
            "ORCH_E2E_CHROMIUM": chromium,
            "ORCH_E2E_PYTHON": sys.executable,
            "ORCH_E2E_REPO": str(REPO),
        }
        output = run(bin_("playwright"), "test", timeout=E2E_TIMEOUT_S, env=env)
        timing = re.search(r"ORCH_E2E_FIRST_PAGE_MS=(\d+)", output)
        assert timing, output[-4000:]
        print(f"first page of {SEEDED_INSTANCES} instances rendered in {timing.group(1)} ms (headless chromium)")
        assert sorted(p.name for p in shots.iterdir()) == [
            "0-signin.png", "1-instances.png", "2-instance-detail.png", "3-new-instance.png", "4-snapshots.png",
            "5-delete.png", "6-sidebar.png",
        ]
        assert "Traceback" not in main.logs() + sidebar.logs(), (main.logs() + sidebar.logs())[-8000:]
    finally:
        main.stop()
        sidebar.stop()
        store.terminate()
        store.wait(timeout=10)
