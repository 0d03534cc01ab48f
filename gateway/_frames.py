"""Frames between the gateway and its run writer: a 4-byte length, then a pickle.

Both ends are Baton's own processes (the gateway starts the writer with a pipe to each of
its standard streams), so pickle is safe here and the cheapest way to move the requests.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

_HEADER = struct.Struct("!I")
HEADER_SIZE = _HEADER.size


def encode(value: Any) -> bytes:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def payload_size(header: bytes) -> int:
    (size,) = _HEADER.unpack(header)
    return int(size)


def decode(payload: bytes) -> Any:
    return pickle.loads(payload)


class Reader:
    """Blocking frame reads from a file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()

    def read(self) -> Any:
        """The next frame's value; None at the end of the stream."""
        header = self._take(HEADER_SIZE)
        if header is None:
            return None
        payload = self._take(payload_size(header))
        if payload is None:
            return None
        return decode(payload)

    def _take(self, size: int) -> bytes | None:
        while len(self._buffer) < size:
            chunk = os.read(self.fd, max(65536, size - len(self._buffer)))
            if not chunk:
                return None
            self._buffer += chunk
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken


def write(fd: int, value: Any) -> None:
    """Write one frame whole (a pipe may take it in parts)."""
    view = memoryview(encode(value))
    while view:
        written = os.write(fd, view)
        view = view[written:]
