"""The web page: the built page (web/dist, Vite's output) served at `/` by `orch serve`.

index.html answers `/` and the page's own routes (/instances/<name>, /new, /snapshots,
/signin, ...), never cached without revalidation; the hashed files under /assets/ are
immutable and cached for a year. Every page answer carries a Content-Security-Policy that
allows this origin only (no inline script or style, no other origin: the page works with
no internet), nosniff and no-referrer.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException

NOT_BUILT_MESSAGE = "the web page is not built: run ./scripts/serve (needs node)"
INDEX_FILE = "index.html"
ASSETS_DIR = "assets"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
INDEX_CACHE_CONTROL = "no-cache"
# Vite names assets by their content's hash: a changed file is a new name.
ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"
# Paths the page's routes never take: the API, its schema, the health check, the assets.
NOT_PAGE_PREFIXES = ("api/", "schema", "healthz", "assets/")
# Types of the files a Vite build holds; anything else is served as bytes (nosniff keeps it so).
ASSET_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".txt": "text/plain; charset=utf-8",
}
BINARY_MEDIA_TYPE = "application/octet-stream"


def is_built(web_dir: Path) -> bool:
    return (web_dir / INDEX_FILE).is_file()


def _web_dir(request: Request) -> Path:
    return request.app.state.runtime.settings.web_dir


def _not_found(text: str) -> Response[str]:
    return Response(text, status_code=404, media_type="text/plain; charset=utf-8", headers=PAGE_HEADERS)


def _index(web_dir: Path) -> Response:
    try:
        body = (web_dir / INDEX_FILE).read_bytes()
    except FileNotFoundError:
        return _not_found(NOT_BUILT_MESSAGE)
    return Response(body, media_type="text/html; charset=utf-8",
                    headers={**PAGE_HEADERS, "Cache-Control": INDEX_CACHE_CONTROL})


@get("/", sync_to_thread=True, include_in_schema=False)
def page_root(request: Request) -> Response:
    return _index(_web_dir(request))


@get("/{route:path}", sync_to_thread=True, include_in_schema=False)
def page_route(request: Request, route: str) -> Response:
    """The page's own routes: index.html, whose script shows the route."""
    if route.lstrip("/").startswith(NOT_PAGE_PREFIXES):
        raise NotFoundException(f"no such path: {request.url.path}")
    return _index(_web_dir(request))


@get("/assets/{file:path}", sync_to_thread=True, include_in_schema=False)
def page_asset(request: Request, file: str) -> Response:
    """A file of the build's assets/ folder; nothing outside it (no '..', no absolute path, no link out)."""
    assets = (_web_dir(request) / ASSETS_DIR).resolve()
    relative = PurePosixPath(file.lstrip("/"))
    if not relative.parts or any(part in ("..", ".") or "\\" in part for part in relative.parts):
        return _not_found(f"no such asset: {file}")
    path = (assets / relative).resolve()
    if not path.is_relative_to(assets) or not path.is_file():
        return _not_found(f"no such asset: {file}")
    return Response(path.read_bytes(), media_type=ASSET_MEDIA_TYPES.get(path.suffix.lower(), BINARY_MEDIA_TYPE),
                    headers={**PAGE_HEADERS, "Cache-Control": ASSET_CACHE_CONTROL})


PAGE_HANDLERS = [page_root, page_route, page_asset]
