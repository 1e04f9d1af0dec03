"""Exit codes of the client commands, and the one exception that carries them."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    # An operation failed, or `orch diff` found differences (like `kubectl diff`).
    FAILED = 1
    # A spec that does not validate, a file that cannot be read, a bad flag.
    INVALID = 2
    UNREACHABLE = 3
    # 401 or 403: a missing, expired or wrong token, or a resource this user may not touch.
    AUTH = 4
    # Any other 4xx: the API understood the request and refused it (not found, conflict, invalid).
    REFUSED = 5
    # A 5xx or an answer that is not the API's JSON.
    SERVER_ERROR = 6
    # Ctrl-C while following operations: they go on on the server.
    INTERRUPTED = 130
    # Standard output closed by its reader (128 + SIGPIPE, as a shell reports it).
    BROKEN_PIPE = 141


class ClientError(Exception):
    """A failure reported as one line on stderr and an exit code, never a traceback."""

    def __init__(self, message: str, exit_code: ExitCode):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
