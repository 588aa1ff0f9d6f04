"""Secret redaction: every known secret value becomes `***` before it is shown or stored.

`Redactor` holds the values (configured secrets, and any value a job got
through `rt.secret`); `redact` cleans a whole string, `stream()` gives a
`StreamRedactor` that cleans a byte stream chunk by chunk, holding back
just enough bytes that a value split across two reads is still caught.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MASK = "***"
_MASK_BYTES = MASK.encode()


class Redactor:
    """The set of values that must never be shown."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._ordered: list[bytes] = []
        for value in values:
            self.add(value)

    def add(self, value: str) -> None:
        """Start hiding `value` (empty values are ignored: they would match everywhere)."""
        if value and value not in self._values:
            self._values.add(value)
            # Longest first, so a secret containing another is masked whole.
            self._ordered = sorted((v.encode("utf-8") for v in self._values), key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._values)

    def redact(self, text: str) -> str:
        """`text` with every secret value replaced by `***`."""
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, MASK)
        return text

    def redact_data(self, data: Any) -> Any:
        """JSON-like `data` with secrets masked in every string (keys included)."""
        if isinstance(data, str):
            return self.redact(data)
        if isinstance(data, dict):
            return {self.redact_data(k): self.redact_data(v) for k, v in data.items()}
        if isinstance(data, list):
            return [self.redact_data(item) for item in data]
        return data

    def redact_bytes(self, data: bytes) -> bytes:
        for value in self._ordered:
            data = data.replace(value, _MASK_BYTES)
        return data

    def held_suffix(self, data: bytes) -> int:
        """How many trailing bytes of `data` could be the start of a secret."""
        longest = 0
        for value in self._ordered:
            for size in range(min(len(value) - 1, len(data)), longest, -1):
                if data.endswith(value[:size]):
                    longest = size
                    break
        return longest

    def stream(self) -> StreamRedactor:
        """A redactor for one byte stream (stdout or stderr of one command)."""
        return StreamRedactor(self)


class StreamRedactor:
    """Redacts a byte stream across chunk boundaries."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of `chunk` (plus any held before) that are safe to emit now."""
        if not self._redactor:
            return chunk
        data = self._redactor.redact_bytes(self._held + chunk)
        keep = self._redactor.held_suffix(data)
        self._held = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def flush(self) -> bytes:
        """What is still held at the end of the stream (it is no secret: it never completed)."""
        held, self._held = self._held, b""
        return held
