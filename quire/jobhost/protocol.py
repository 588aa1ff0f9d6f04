"""The wire between quire and its job host: JSON lines over a unix stream socket.

Both sides use this module; it is standard library only, like the job host.
A message is a JSON object with its type in `t`, one per line. Bytes travel
as base64 text (`pack`/`unpack`).
"""

from __future__ import annotations

import base64
import json
import socket
from typing import Any

VERSION = 1
# The job host's end of the control socket, in the job host.
CONTROL_FD = 3
# One message is at most this long (a `load` carries ci.py and the modules beside it).
MAX_LINE = 64 * 1024 * 1024

Message = dict[str, Any]


class ProtocolError(Exception):
    """The other side sent something that is not a message of this protocol, or went away."""


def pack(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unpack(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class Channel:
    """One end of a socket that carries messages, one JSON object per line."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._pending = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Message, fds: list[int] | None = None) -> None:
        """Send one message (and `fds`, passed with it); raises `ProtocolError` when the
        other side has gone."""
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            if fds:
                socket.send_fds(self.sock, [data[:1]], fds)
                data = data[1:]
            self.sock.sendall(data)
        except OSError as exc:
            raise ProtocolError(f"the other side has gone ({exc.strerror or exc})") from exc

    def receive(self) -> Message | None:
        """The next message, or None at the end of the stream; raises `ProtocolError` for
        anything that is not one."""
        while True:
            end = self._pending.find(b"\n")
            if end >= 0:
                line = bytes(self._pending[:end])
                del self._pending[: end + 1]
                return _decode(line)
            if len(self._pending) > MAX_LINE:
                raise ProtocolError(f"a message longer than {MAX_LINE} bytes")
            try:
                chunk = self.sock.recv(256 * 1024)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if self._pending:
                    raise ProtocolError("the stream ended in the middle of a message")
                return None
            self._pending += chunk

    def receive_with_fds(self, count: int) -> tuple[Message | None, list[int]]:
        """The next message and the file descriptors sent with it."""
        if self._pending:
            raise ProtocolError("file descriptors expected, but other data came first")
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 1, count)
        if not data:
            return None, list(fds)
        self._pending += data
        return self.receive(), list(fds)

    def close(self) -> None:
        self.sock.close()


def _decode(line: bytes) -> Message:
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON line: {line[:80]!r}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ProtocolError(f"not a message (a JSON object with a type 't'): {line[:80]!r}")
    return message
