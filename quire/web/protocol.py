"""uvicorn's h11 protocol with a deadline for reading each request.

uvicorn closes a connection that stays idle `timeout_keep_alive` seconds
after a response, but it arms that timer only once a response is complete
and cancels it as soon as any byte arrives. So a client that connects and
sends nothing, half a request line, or headers a byte at a time, before its
first request or between two, holds its connection (and a file descriptor)
for ever; enough of them and the server accepts nobody else.

`RequestDeadlineProtocol` gives a client `REQUEST_TIMEOUT_S` seconds from
the moment it connects, or starts a new request, to send that request whole
(request line, headers and any body: this server takes no uploads), then
closes the connection. The deadline is not pushed back by each byte, so a
trickle does not keep it open either. While the server answers (a live
stream may last hours) no deadline runs.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_TIMEOUT_S = 5.0


class RequestDeadlineProtocol(H11Protocol):
    """H11Protocol that closes a connection whose request is not read in time."""

    _request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE or self.conn.their_state is h11.SEND_BODY:
            self._arm()  # a request begun but not whole: only the first byte starts the clock
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._request_timer is None and not self.transport.is_closing():
            self._request_timer = self.loop.call_later(REQUEST_TIMEOUT_S, self._expired)

    def _disarm(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _expired(self) -> None:
        self._request_timer = None
        if self.conn.their_state is h11.DONE or self.transport.is_closing():
            return  # the request came in whole after all; the response runs its course
        self.logger.info("closed a connection that sent no whole request in %ss", REQUEST_TIMEOUT_S)
        self.transport.close()
