"""Multi-cloud single-instance orchestrator."""

__version__ = "0.1.0"
