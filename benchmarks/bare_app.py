"""Baselines: for ingest, a Litestar endpoint that only parses the JSON body; for the listing,
one that answers GET /api/v1/instances with a page's bytes read at start (argv[2], optional)."""

from __future__ import annotations

import sys

import uvicorn
from litestar import Litestar, Request, Response, get, post


@post("/api/v1/agent/report", status_code=202)
async def report(request: Request) -> dict:
    body = await request.json()
    return {"accepted": len(body["reports"]) if "reports" in body else 1}


PAGE = open(sys.argv[2], "rb").read() if __name__ == "__main__" and len(sys.argv) > 2 else b"{}"


@get("/api/v1/instances")
async def instances() -> Response[bytes]:
    return Response(PAGE, media_type="application/json")


app = Litestar(route_handlers=[report, instances])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
