"""Prints the service's OpenAPI document (as /schema/openapi.json serves it) without a server.

The app is built around a stand-in runtime: the document comes from the route handlers and
the typed response structs alone, so nothing (MongoDB, a broker, Pulumi) needs to run.
Used by `npm run types` and by tests/test_web.py's check that src/api/schema.d.ts is current.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

from orchestrator.api.app import create_app


def openapi_document() -> dict:
    app = create_app(SimpleNamespace(close=lambda: None))  # type: ignore[arg-type]
    return app.openapi_schema.to_schema()


if __name__ == "__main__":
    json.dump(openapi_document(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
