"""The REST API (Litestar): thin controllers over orchestrator.services."""
