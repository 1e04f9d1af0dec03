"""The engine event log (`--event-log`): apitype.EngineEvent JSON objects.

The Automation API passes either a file path (it tails JSON lines) or, for CLIs newer than
3.205, `tcp://host:port` of its Events gRPC service (one EventRequest per event, client-streamed).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import TextIO

import grpc

from pulumi.runtime.proto import events_pb2, events_pb2_grpc

_END_OF_STREAM = object()


class EventLog:
    def __init__(self, target: str | None, echo: TextIO | None = None) -> None:
        """`echo`: a stream that gets each event too, one JSON line each (`up --json` on stdout)."""
        self._sequence = 0
        self._echo = echo
        self._mutex = threading.Lock()
        self._file = None
        self._queue: queue.Queue | None = None
        self._stream = None
        self._channel = None
        if target is None:
            return
        if target.startswith("tcp://"):
            self._channel = grpc.insecure_channel(target[len("tcp://") :])
            self._queue = queue.Queue()
            stub = events_pb2_grpc.EventsStub(self._channel)
            self._stream = stub.StreamEvents.future(iter(self._queue.get, _END_OF_STREAM))
        else:
            self._file = open(target, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def emit(self, **payload) -> None:
        """Writes one event, e.g. `emit(summaryEvent={...})`."""
        with self._mutex:
            self._sequence += 1
            event = {"sequence": self._sequence, "timestamp": int(time.time()), **payload}
            line = json.dumps(event)
            if self._echo is not None:
                self._echo.write(line + "\n")
                self._echo.flush()
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
            elif self._queue is not None:
                self._queue.put(events_pb2.EventRequest(event=line))

    def close(self) -> None:
        """Ends the log with a cancel event, as the engine does, and waits until it is delivered."""
        self.emit(cancelEvent={})
        if self._file is not None:
            self._file.close()
        if self._queue is not None:
            self._queue.put(_END_OF_STREAM)
            self._stream.result(timeout=30)
            self._channel.close()
