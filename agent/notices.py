"""Notices from the service (an autostop warning) shown to the instance's logged-in users with `wall`.

`wall` gets an argument list and the message on stdin: no shell ever sees the text. Each notice
id is shown once (the service repeats a pending notice in every answer); the ids remembered, the
notices taken per answer and each message's size are bounded.
"""

from __future__ import annotations

import collections
import logging
import subprocess
from typing import Callable, Deque, List, Set

MAX_REMEMBERED_IDS = 64
MAX_NOTICES_PER_ANSWER = 8
MAX_MESSAGE_BYTES = 1024
MAX_ID_CHARS = 128
WALL_COMMAND = ["wall"]
WALL_TIMEOUT_S = 10

log = logging.getLogger("agent")


def printable(message: str) -> str:
    """The message without control characters (a terminal escape could rewrite a user's screen), cut to size."""
    text = "".join(char if char.isprintable() or char in "\n\t" else "?" for char in message)
    data = text.encode("utf-8")[:MAX_MESSAGE_BYTES]
    return data.decode("utf-8", errors="ignore")


class Notices:
    def __init__(self, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
        self._run = run
        self._order: Deque[str] = collections.deque()
        self._shown: Set[str] = set()

    def show(self, notices: object) -> List[str]:
        """Show the notices not shown before; returns the ids shown now."""
        if not isinstance(notices, list):
            return []
        shown = []
        for notice in notices[:MAX_NOTICES_PER_ANSWER]:
            if not isinstance(notice, dict):
                continue
            notice_id, message = notice.get("id"), notice.get("message")
            if not isinstance(notice_id, str) or not notice_id or len(notice_id) > MAX_ID_CHARS:
                continue
            if not isinstance(message, str) or notice_id in self._shown:
                continue
            if self._wall(printable(message)):
                self._remember(notice_id)
                shown.append(notice_id)
        return shown

    def _wall(self, message: str) -> bool:
        try:
            result = self._run(WALL_COMMAND, input=message.encode("utf-8"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=WALL_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError) as error:
            log.warning("could not show a notice with wall: %s", error)
            return False
        if result.returncode != 0:
            detail = (result.stderr or b"").decode(errors="replace").strip()[:200]
            log.warning("wall exited %s: %s", result.returncode, detail)
            return False
        log.info("notice shown to logged-in users: %s", message.splitlines()[0] if message else "")
        return True

    def _remember(self, notice_id: str) -> None:
        self._order.append(notice_id)
        self._shown.add(notice_id)
        while len(self._order) > MAX_REMEMBERED_IDS:
            self._shown.discard(self._order.popleft())
