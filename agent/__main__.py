"""Entry point: `python -m agent [--once] [--config PATH]`."""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import tempfile
import time
from typing import Deque, Dict, List, Optional

from . import __version__
from .client import AuthError, SendError, ServiceClient, format_ts, local_token_problem, token_claims
from .metrics import CpuSampler, collect_report
from .notices import Notices
from .preemption import METADATA_URL, POLL_INTERVAL_S, PreemptionWatch

DEFAULT_CONFIG = "/etc/orch-agent/config.json"
DEFAULT_INTERVAL_S = 30
# A day of reports at the default interval; older ones are dropped first when the service stays away.
MAX_BUFFERED_REPORTS = 2880
MAX_BATCH = 100
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 300.0
# Renew once a third of the token's lifetime is left (a day when the token has no `iat`).
RENEW_FRACTION = 1 / 3
RENEW_FALLBACK_S = 86400

log = logging.getLogger("agent")


class Config:
    def __init__(self, path: str) -> None:
        self.path = path
        with open(path) as file:
            data = json.load(file)
        missing = [key for key in ("url", "token", "instance") if not data.get(key)]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        self.data = data
        self.url: str = data["url"]
        self.token: str = data["token"]
        self.instance: str = data["instance"]
        self.interval_s = float(data.get("interval") or DEFAULT_INTERVAL_S)
        # A spot machine watches the cloud's metadata for a preemption notice (agent/preemption.py).
        self.spot = data.get("spot") is True
        self.cloud: str = data.get("cloud") or ""
        self.metadata_url: str = data.get("metadata_url") or METADATA_URL

    def store_token(self, token: str) -> None:
        """Replace the token in the config file atomically, keeping it readable by root only."""
        self.token = token
        self.data["token"] = token
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, temp_path = tempfile.mkstemp(dir=directory, prefix=".config-")
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(self.data, file, indent=2)
            os.chmod(temp_path, 0o600)
            os.replace(temp_path, self.path)
        except BaseException:
            os.unlink(temp_path)
            raise


def renewal_due(token: str, now: float) -> bool:
    try:
        claims = token_claims(token)
    except ValueError:
        return False  # not a JWT we can read: leave it to the service to say what is wrong
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, (int, float)) or exp <= now:
        return False  # an expired token cannot renew itself
    renew_before = (exp - iat) * RENEW_FRACTION if isinstance(iat, (int, float)) else RENEW_FALLBACK_S
    return exp - now <= renew_before


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.client = ServiceClient(config.url, config.token)
        self.cpu = CpuSampler()
        self.unsent: Deque[Dict[str, object]] = collections.deque(maxlen=MAX_BUFFERED_REPORTS)
        self.backoff_s = FIRST_BACKOFF_S
        self.notices = Notices()
        self.preemption = PreemptionWatch(config.cloud, config.metadata_url) if config.spot else None

    def report(self) -> Dict[str, object]:
        return collect_report(self.config.instance, self.cpu)

    def preemption_report(self) -> Optional[Dict[str, object]]:
        """A report carrying the cloud's preemption notice, the first time one is seen; else None."""
        notice = self.preemption.check() if self.preemption else None
        if notice is None:
            return None
        report = self.report()
        report["preemption"] = notice
        return report

    def renew_token_if_due(self) -> None:
        if not renewal_due(self.client.token, time.time()):
            return
        try:
            token = self.client.renew_token()
        except SendError as error:
            log.warning("token renewal failed: %s", error)
            return
        self.config.store_token(token)
        exp = token_claims(token).get("exp")
        log.info("token renewed, now valid until %s", format_ts(exp) if isinstance(exp, (int, float)) else "?")

    def flush(self) -> bool:
        """Send buffered reports oldest first; True when the buffer is empty afterwards."""
        while self.unsent:
            batch: List[Dict[str, object]] = [self.unsent[i] for i in range(min(MAX_BATCH, len(self.unsent)))]
            try:
                answer = self.client.send_reports(batch)
            except SendError as error:
                if not error.retryable:
                    log.error("dropping %d report(s): %s", len(batch), error)
                    for _ in batch:
                        self.unsent.popleft()
                    continue
                log.warning("send failed (%d report(s) buffered, retry in %.0fs): %s",
                            len(self.unsent), self.backoff_s, error)
                return False
            for _ in batch:
                self.unsent.popleft()
            self.notices.show(answer.get("notices"))
            if len(batch) > 1:
                log.info("delivered %d buffered reports", len(batch))
        return True

    def run_forever(self) -> None:
        log.info("agent %s reporting %s to %s every %ss",
                 __version__, self.config.instance, self.config.url, self.config.interval_s)
        problem = local_token_problem(self.client.token)
        if problem:
            log.warning("%s", problem)
        next_report = time.monotonic()
        next_send = next_report
        next_watch = next_report if self.preemption else float("inf")
        while True:
            now = time.monotonic()
            if now >= next_watch:
                notice = self.preemption_report()
                if notice is not None:  # sent now, ahead of any backoff: the machine has seconds left
                    self.unsent.append(notice)
                    next_send = now
                next_watch = now + POLL_INTERVAL_S
            if now >= next_report:
                self.unsent.append(self.report())
                next_report = now + self.config.interval_s
            if self.unsent and now >= next_send:
                self.renew_token_if_due()
                if self.flush():
                    self.backoff_s = FIRST_BACKOFF_S
                    next_send = now
                else:
                    next_send = now + self.backoff_s
                    self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)
            wake = min(next_report, next_send, next_watch) if self.unsent else min(next_report, next_watch)
            time.sleep(max(0.0, wake - time.monotonic()))

    def run_once(self) -> int:
        report = self.preemption_report() or self.report()
        print(json.dumps(report, indent=2))
        self.renew_token_if_due()
        try:
            answer = self.client.send_reports([report])
        except AuthError as error:
            log.error("auth failed: %s", error)
            return 1
        except SendError as error:
            log.error("send failed: %s", error)
            return 1
        self.notices.show(answer.get("notices"))
        return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent", description="orchestrator instance agent")
    parser.add_argument("--once", action="store_true", help="print one report, send it, and exit")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"config JSON (default {DEFAULT_CONFIG})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent %(levelname)s %(message)s")
    try:
        config = Config(args.config)
    except (OSError, ValueError) as error:
        log.error("cannot load config: %s", error)
        return 2
    agent = Agent(config)
    if args.once:
        return agent.run_once()
    try:
        agent.run_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
