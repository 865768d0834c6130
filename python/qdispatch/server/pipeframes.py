"""A worker's messages reassembled from whatever bytes its pipe holds, so that the service
reads a pipe without ever waiting on it.

A local worker writes with :class:`multiprocessing.connection.Connection` (``send``): each
message is a frame, a 4-byte big-endian signed length and that many bytes of pickle, or
for a message over 2 GiB the length ``-1`` and then an 8-byte unsigned length (CPython's
``Connection._send_bytes``). ``Connection.recv`` reads a frame with blocking reads: on the
service's event loop, a worker stopped part way through a frame (``SIGSTOP``, or a user's
program writing to the pipe itself) would stop every user's requests. Here the event loop
feeds the bytes it finds (a non-blocking read) and takes only frames that are complete.

A frame's length is checked against a limit before any of it is kept: the header is the
worker's word, and a worker runs users' programs.
"""

from __future__ import annotations

import struct
from collections import deque

_SIZE = struct.Struct("!i")
_HUGE_SIZE = struct.Struct("!Q")


class FrameError(ValueError):
    """The worker's pipe carries what the service will not read, and the worker is to be
    stopped: a malformed header, or (``too_large``) a frame over the limit."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


class FrameReader:
    """Frames of a :class:`~multiprocessing.connection.Connection` from the bytes fed to
    it, each at most ``limit`` bytes (a larger one's header raises :class:`FrameError`,
    before its bytes are kept)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()  # bytes of frames not yet complete
        self._size: int | None = None  # the length of the frame the buffer starts with
        self._frames: deque[bytes | bytearray] = deque()

    @property
    def ready(self) -> bool:
        """Whether a complete frame is waiting."""
        return bool(self._frames)

    @property
    def partial(self) -> int:
        """Bytes held of frames not yet complete."""
        return len(self._buffer)

    @property
    def midframe(self) -> bool:
        """Whether a frame has begun (bytes of it, or its length alone, were read) and is
        not yet complete."""
        return bool(self._buffer) or self._size is not None

    def pop(self) -> bytes | bytearray:
        """The oldest complete frame's bytes (``IndexError`` if none)."""
        return self._frames.popleft()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take ``data``, the next bytes of the pipe; complete frames become ready."""
        if not self._buffer and self._size is None and len(data) >= _SIZE.size:
            # The usual case, a small message read whole: no copy into the buffer.
            (size,) = _SIZE.unpack_from(data)
            if 0 <= size <= self.limit and len(data) == _SIZE.size + size:
                self._frames.append(bytes(data[_SIZE.size :]))
                return
        self._buffer += data
        while True:
            if self._size is None and not self._header():
                return
            assert self._size is not None
            if len(self._buffer) < self._size:
                return
            if len(self._buffer) == self._size:  # the usual case: no copy
                frame: bytes | bytearray = self._buffer
                self._buffer = bytearray()
            else:
                frame = bytes(memoryview(self._buffer)[: self._size])
                del self._buffer[: self._size]
            self._size = None
            self._frames.append(frame)

    def _header(self) -> bool:
        """Read the next frame's length off the buffer, if all of it is there."""
        if len(self._buffer) < _SIZE.size:
            return False
        (size,) = _SIZE.unpack_from(self._buffer)
        header = _SIZE.size
        if size == -1:
            if len(self._buffer) < _SIZE.size + _HUGE_SIZE.size:
                return False
            (size,) = _HUGE_SIZE.unpack_from(self._buffer, _SIZE.size)
            header += _HUGE_SIZE.size
        elif size < 0:
            raise FrameError(f"the worker sent a malformed message (length {size}); it was stopped")
        if size > self.limit:
            raise FrameError(
                f"the worker sent a message of {size} bytes, over the service's limit of "
                f"{self.limit} bytes for one message of a job (its result or an interim "
                "result); it was stopped",
                too_large=True,
            )
        del self._buffer[:header]
        self._size = size
        return True
