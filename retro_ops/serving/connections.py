"""Connections that slow clients cannot starve: read deadlines and a bound on open connections.

uvicorn reads a request for as long as the client takes: a connection that declared
`Content-Length: 60000` and sent a byte every 10 s was held open without limit, and about 20 000
of them (the open-file limit) made `/health` and `/retrieve` fail with connection resets. Here
uvicorn's own HTTP protocol runs with two additions, at the transport level (before any ASGI code,
which never sees a request whose headers are incomplete):

- deadlines: a request's headers must arrive within `header_timeout_s` of the connection opening
  (or of the previous response on a kept-alive connection), and its whole body within
  `body_timeout_s` of the headers; past either the client gets 408 and the connection is closed.
  Deadlines, not idle timeouts: an idle timeout is reset by every byte, so one byte every 9 s
  would still hold a 60 000-byte body for a week.
- a bound: past `max_connections` open connections a new one is answered 503 at once, before
  any of its bytes is read, and closed; the connections inside the bound keep being served.
"""

from __future__ import annotations

import asyncio
import json
import resource
from dataclasses import dataclass

from retro_ops.errors import SettingsError

#: descriptors kept free besides connections: the index, LanceDB and SQLite files, the model,
#: log files, the listening socket and MLflow's store (about 60 open here at rest)
RESERVED_FILES = 256
REFUSED_LINGER_S = 1.0  # how long a refused connection may take to read its 503 before the close


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take to send a request, and how many connections may be open.

    header_timeout_s: a request's headers (a few hundred bytes) must arrive within this many
        seconds of the connection opening, or of the previous response on a kept-alive
        connection. 10 s is far beyond any live client's need (it is also longer than uvicorn's
        5 s keep-alive, which closes a connection idle between requests first).
    body_timeout_s: the whole body must arrive within this many seconds of the headers. With the
        64 KiB body cap, 30 s asks a full body for 2 KiB/s; real bodies are a few hundred bytes.
    max_connections: open connections (idle, sending or being answered) beyond which a new one
        gets 503 at once and is closed. 512 keeps the server far from the usual open-file limit
        (1024) with `RESERVED_FILES` to spare for its own files; a 2-core server computing one
        request at a time has no use for more.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0 or self.max_connections < 1:
            raise ValueError(f"invalid connection limits {self}: timeouts > 0 and "
                             "max_connections >= 1 are required")


def check_open_file_limit(max_connections: int) -> None:
    """SettingsError when `max_connections` plus the server's own files would pass the process's
    open-file limit (`ulimit -n`): accept() would then fail and clients see resets, not a 503."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and max_connections + RESERVED_FILES > soft:
        raise SettingsError(f"max connections {max_connections} + {RESERVED_FILES} files of the server "
                            f"itself exceed the open-file limit of {soft} (ulimit -n): lower "
                            "--max-connections or raise the limit")


def _response(status: bytes, detail: str, *extra: bytes) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return b"".join([b"HTTP/1.1 ", status, b"\r\ncontent-type: application/json\r\nconnection: close\r\n",
                     *extra, b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body])


def guarded_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (httptools when installed, else h11) with `limits` enforced;
    give it to `uvicorn.Config(http=...)`."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type("GuardedHTTPProtocol", (_Guard, AutoHTTPProtocol), {"limits": limits})


class _Guard:
    """Mixed in before uvicorn's protocol: follows each connection through its phases (waiting
    for headers, reading a body, being answered) and holds one timer for the phase's deadline."""

    limits: ConnectionLimits

    def connection_made(self, transport) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._phase: tuple | None = None
        super().connection_made(transport)
        open_now = len(self.connections)
        self._refused = open_now > self.limits.max_connections
        if self._refused:  # read nothing; say why, then close once it is read (or soon after)
            transport.write(_response(b"503 Service Unavailable",
                                      f"server busy: {open_now} connections open (limit "
                                      f"{self.limits.max_connections}); retry after 1 s",
                                      b"retry-after: 1\r\n"))
            if transport.can_write_eof():
                transport.write_eof()  # a close with unread request bytes would send a reset
                self._timer = self.loop.call_later(REFUSED_LINGER_S, transport.close)
            else:
                transport.close()
            return
        self._follow()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()  # the next request's headers are due from now

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """(Re)arm the deadline when the connection enters a new phase; never within one."""
        if self._refused or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            phase = ("headers", cycle)
        elif cycle.more_body and not cycle.response_started and not getattr(self, "pipeline", None):
            phase = ("body", cycle)
        else:
            phase = ("answer", cycle)  # read in full: the app's own time limits apply
        if phase == self._phase:
            return
        self._phase = phase
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if phase[0] == "headers":
            self._timer = self.loop.call_later(self.limits.header_timeout_s, self._expired, "headers",
                                               self.limits.header_timeout_s)
        elif phase[0] == "body":
            self._timer = self.loop.call_later(self.limits.body_timeout_s, self._expired, "body",
                                               self.limits.body_timeout_s)

    def _expired(self, what: str, seconds: float) -> None:
        self._timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed already, or upgraded (a websocket protocol owns the transport now)
        # the app, if it waits for the body, sees a disconnect and answers nothing itself
        self.transport.write(_response(b"408 Request Timeout",
                                       f"request {what} not received within {seconds:g} s (read timeout)"))
        self.transport.close()
