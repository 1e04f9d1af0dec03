"""uvicorn's httptools protocol with a bound on the size of a request's head.

uvicorn bounds a request head only with its h11 parser (`h11_max_incomplete_event_size`);
with httptools, which it picks when installed (and which the ingest path is measured
with), a client may send headers of any size and every byte is buffered. This protocol
answers 431 and closes the connection once a head (request line and headers) is over
MAX_REQUEST_HEAD_BYTES, before it is buffered or reaches the application.

`orch serve` runs uvicorn with `http="orchestrator.api.http_protocol:HeaderLimitedHttpToolsProtocol"`.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# A request line and its headers: a bearer token is under 1 KiB and a browser's whole
# head under 8 KiB (the usual proxy limit); 16 KiB leaves room and stops abuse early.
MAX_REQUEST_HEAD_BYTES = 16 * 1024
HEAD_END = b"\r\n\r\n"


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a head that is over the limit."""


class HeaderLimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True  # from the end of one message to the end of the next one's headers
        self._head_bytes_received = 0  # bytes of the current head seen in data_received
        self._head_tail = b""  # the last bytes of the head so far: its end may span two reads
        self._head_size = 0  # the current head's request line and headers, from the parser's callbacks
        self._head_refused = False

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            window = self._head_tail + data
            end = window.find(HEAD_END)
            if end < 0:
                self._head_bytes_received += len(data)
                self._head_tail = window[-(len(HEAD_END) - 1) :]
            else:  # the rest of this read is the body
                self._head_bytes_received += end + len(HEAD_END) - len(self._head_tail)
            if self._head_bytes_received > MAX_REQUEST_HEAD_BYTES:
                self._refuse_head()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        # A head that arrived behind another request in one read was not counted in
        # data_received; its exact size is known here, before the application sees it.
        if self._head_size > MAX_REQUEST_HEAD_BYTES:
            self._head_refused = True
            raise HeadTooLarge()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes_received = 0
        self._head_tail = b""

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers any parser callback error with a 400; a refused head gets its 431.
        if self._head_refused:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def _refuse_head(self) -> None:
        message = f"request line and headers larger than {MAX_REQUEST_HEAD_BYTES} bytes".encode("ascii")
        self.logger.warning("refused a request whose head is over %d bytes", MAX_REQUEST_HEAD_BYTES)
        content = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(message)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                message,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
