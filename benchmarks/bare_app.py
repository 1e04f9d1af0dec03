"""The baseline for the ingest benchmark: a Litestar endpoint that only parses the JSON body."""

from __future__ import annotations

import sys

import uvicorn
from litestar import Litestar, Request, post


@post("/api/v1/agent/report", status_code=202)
async def report(request: Request) -> dict:
    body = await request.json()
    return {"accepted": len(body["reports"]) if "reports" in body else 1}


app = Litestar(route_handlers=[report])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
