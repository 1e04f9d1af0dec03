"""A spot machine's notice that the cloud is taking it back, read from the cloud's metadata service.

Only with `"spot": true` in the agent's config. Each cloud announces a preemption differently:

- AWS: IMDSv2 (a session token from PUT /latest/api/token), then
  GET /latest/meta-data/spot/instance-action: 404 until then, then {"action": ..., "time": ...}
  about two minutes ahead.
- GCP: GET /computeMetadata/v1/instance/preempted (header Metadata-Flavor: Google): TRUE once
  the machine is being preempted (about 30 s ahead).
- Azure: GET /metadata/scheduledevents?api-version=2020-07-01 (header Metadata: true): an event
  with EventType Preempt (about 30 s ahead).

Each notice is reported once (by its content); calls have a short timeout so a metadata service
that does not answer never delays the agent's reports for long. Standard library, Python 3.9.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Callable, Dict, List, Optional, Tuple

METADATA_URL = "http://169.254.169.254"
PROBE_TIMEOUT_S = 2.0
# How often a spot machine's agent looks (GCP and Azure give about 30 s of notice).
POLL_INTERVAL_S = 5.0
AWS_TOKEN_TTL_S = 21600
MAX_DETAIL_CHARS = 256
# Notices remembered as reported (a machine sees a handful in its life).
MAX_SEEN = 64
SOURCES = {"aws": "aws-imds", "gcp": "gcp-metadata", "azure": "azure-scheduled-events"}

log = logging.getLogger("agent.preemption")

Notice = Dict[str, str]


class PreemptionWatch:
    """`check()` returns a notice ({"source", "detail"}) the first time the cloud announces one."""

    def __init__(self, cloud: str = "", base_url: str = METADATA_URL, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        probes: Dict[str, Callable[[], Optional[Tuple[str, str]]]] = {
            "aws": self._aws, "gcp": self._gcp, "azure": self._azure,
        }
        if cloud and cloud not in probes:
            raise ValueError(f"unknown cloud {cloud!r} (aws, gcp or azure)")
        # A config without the cloud (an older configure role): every cloud's service is asked.
        self.probes = [(name, probes[name]) for name in ([cloud] if cloud else list(probes))]
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.seen: List[str] = []

    def check(self) -> Optional[Notice]:
        for cloud, probe in self.probes:
            try:
                found = probe()
            except (urllib.error.URLError, OSError, ValueError) as error:
                log.debug("%s metadata: %s", cloud, error)
                continue
            if found is None:
                continue
            key, detail = found
            if key in self.seen:
                return None
            self.seen = (self.seen + [key])[-MAX_SEEN:]
            log.warning("preemption notice (%s): %s", SOURCES[cloud], detail)
            return {"source": SOURCES[cloud], "detail": detail[:MAX_DETAIL_CHARS]}
        return None

    def _get(self, path: str, headers: Dict[str, str], method: str = "GET") -> Optional[bytes]:
        """The body of a 200; None for a 404 (nothing announced)."""
        request = urllib.request.Request(self.base_url + path, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read(64 * 1024)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def _aws(self) -> Optional[Tuple[str, str]]:
        token = self._get("/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": str(AWS_TOKEN_TTL_S)}, "PUT")
        if not token:
            return None
        body = self._get("/latest/meta-data/spot/instance-action", {"X-aws-ec2-metadata-token": token.decode()})
        if body is None:
            return None
        action = json.loads(body)
        detail = f"spot instance-action {action.get('action')} at {action.get('time')}"
        return "aws:" + body.decode(errors="replace"), detail

    def _gcp(self) -> Optional[Tuple[str, str]]:
        body = self._get("/computeMetadata/v1/instance/preempted", {"Metadata-Flavor": "Google"})
        if body is None or body.strip().upper() != b"TRUE":
            return None
        return "gcp:preempted", "instance/preempted is TRUE"

    def _azure(self) -> Optional[Tuple[str, str]]:
        body = self._get("/metadata/scheduledevents?api-version=2020-07-01", {"Metadata": "true"})
        if body is None:
            return None
        for event in json.loads(body).get("Events") or []:
            if event.get("EventType") == "Preempt":
                detail = f"scheduled event Preempt {event.get('EventId')} not before {event.get('NotBefore')}"
                return "azure:" + str(event.get("EventId")), detail
        return None
