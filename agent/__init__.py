"""The instance agent: reports health and CPU/GPU metrics to the orchestrator.

Standard library only, Python 3.9 or newer: it runs on whatever image the instance has.
"""

__version__ = "0.1.0"
