"""Frames of the host <-> worker protocol; docs/protocol.md is the spec.

Every frame is a 20-byte little-endian prefix (`PREFIX`), a msgpack map
header and an opaque body. `FrameReader` reads frames from one socket,
`FrameWriter` writes them; both keep copies of large bodies to a minimum.
"""

from __future__ import annotations

import enum
import socket
import struct
import threading
from typing import (AbstractSet, Any, Dict, List, NamedTuple, NoReturn,
                    Optional, Sequence)

from ._codec import Codec, DecodeError

__all__ = [
    "CHANNEL_FD",
    "CONTROL_FD",
    "ChannelClosed",
    "DEFAULT_MAX_PAYLOAD",
    "Frame",
    "FrameReader",
    "FrameType",
    "FrameWriter",
    "MAX_BODY_LEN",
    "MAX_HEADER_DEPTH",
    "MAX_HEADER_LEN",
    "PREFIX",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "Reason",
    "send_rest",
]

PROTOCOL_VERSION = 1

# type, flags, reserved, header_len, body_len, id.
PREFIX = struct.Struct("<BBHIIQ")

CHANNEL_FD = 3
CONTROL_FD = 4

MAX_HEADER_LEN = 1 << 20
# Headers are protocol structure, not payload: the pool's --max-depth does
# not apply to them. READY's catalogue is the deepest, at 5 levels.
MAX_HEADER_DEPTH = 32
DEFAULT_MAX_PAYLOAD = 256 << 20
MAX_BODY_LEN = (1 << 32) - 1  # What `body_len` can hold.


class FrameType(enum.IntEnum):
    """Frame types, numbered as in docs/protocol.md."""

    HELLO = 1
    READY = 2
    FATAL = 3
    CALL = 10
    RESULT = 11
    ERROR = 12
    CHUNK = 13
    LOG = 14
    CANCEL = 20
    PING = 21
    PONG = 22
    GOODBYE = 30
    SESSION_READ = 40
    SESSION_WRITE = 41
    SESSION_REPLY = 42
    SESSION_END = 43
    FORK = 60
    FORKED = 61
    EXITED = 62
    RELEASE = 63


class Reason:
    """Stable error reasons (docs/protocol.md, "Reasons")."""

    PYTHON_EXCEPTION = "python_exception"
    INVALID_ARGUMENT = "invalid_argument"
    SERIALIZATION_ERROR = "serialization_error"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    PAYLOAD_TOO_DEEP = "payload_too_deep"
    UNKNOWN_FUNCTION = "unknown_function"
    CANCELLED = "cancelled"
    IMPORT_ERROR = "import_error"
    START_HOOK_FAILED = "start_hook_failed"
    PROTOCOL_ERROR = "protocol_error"


class ProtocolError(Exception):
    """The peer sent a frame that cannot be read; the stream is lost."""


class ChannelClosed(Exception):
    """The peer closed the socket or it failed: the peer is gone."""


class Frame(NamedTuple):
    """One received frame.

    `header` and `body` are valid only until the reader's next `read()`:
    `body` is a view into the reader's buffer. `body` is None when the
    body was longer than the reader's `max_body` and was skipped;
    `body_len` always gives its length.
    """

    type: int
    id: int
    header: Dict[Any, Any]
    body: Optional[memoryview]
    body_len: int


_PREFIX_LEN = PREFIX.size
_unpack_prefix = PREFIX.unpack_from
_pack_prefix = PREFIX.pack

_INITIAL_BUFFER = 64 << 10
# A buffer grown past this is kept only while frames keep needing it: it
# is dropped before the first frame that would fit in less, so a worker
# serving a run of large calls reuses one buffer (no fresh pages to fault
# in per call), and one that served a single large call gives it back at
# its next small one.
_KEEP_BUFFER = 16 << 20


class FrameReader:
    """Reads frames from a stream socket into one reusable buffer.

    `header_codec` decodes headers (its depth limit should be
    MAX_HEADER_DEPTH); bodies are left to the caller.

    Not thread-safe: exactly one thread reads each socket. A read may take
    bytes of the next frame along; they stay in the buffer for later.
    """

    def __init__(self, sock: socket.socket, header_codec: Codec,
                 allowed: AbstractSet[int],
                 max_body: int = MAX_BODY_LEN) -> None:
        self._sock = sock
        self._codec = header_codec
        self._allowed = allowed
        self._max_body = max_body
        self._last_header_raw = b""
        self._last_header: Dict[Any, Any] = {}
        self._new_buffer(_INITIAL_BUFFER)

    def _new_buffer(self, size: int) -> None:
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def read(self) -> Frame:
        """Returns the next frame.

        Raises ChannelClosed at end of stream or on a socket error, and
        ProtocolError for a frame that cannot be read.
        """
        if self._end - self._start < _PREFIX_LEN:
            self._fill(_PREFIX_LEN)
        start = self._start
        ftype, flags, _, header_len, body_len, fid = _unpack_prefix(
            self._buf, start)
        if (len(self._buf) > _KEEP_BUFFER and start == 0
                and header_len + body_len <= _KEEP_BUFFER):
            self._shrink()
        if (flags or ftype not in self._allowed
                or header_len > MAX_HEADER_LEN):
            self._reject(ftype, flags, header_len)
        if body_len > self._max_body:
            return self._read_skipping_body(ftype, fid, header_len, body_len)

        total = _PREFIX_LEN + header_len + body_len
        if self._end - start < total:
            self._fill(total)
            start = self._start
        header_start = start + _PREFIX_LEN
        header = self._decode_header(header_start, header_len)
        body_start = header_start + header_len
        body = self._view[body_start:body_start + body_len]
        self._consume(total)
        return Frame(ftype, fid, header, body, body_len)

    def _shrink(self) -> None:
        """Moves the unread bytes into a new buffer of the initial size
        (or what they need): a smaller frame is next."""
        unread = self._end - self._start
        old_view, old_start = self._view, self._start
        self._new_buffer(max(unread, _INITIAL_BUFFER))
        self._view[:unread] = old_view[old_start:old_start + unread]
        self._end = unread

    def idle_buffer(self) -> Optional[bytearray]:
        """The whole buffer, for a caller that receives one frame into it
        itself, or None when bytes are buffered or the buffer has grown
        past what is kept (read() then gives it back).

        The buffer is this reader's until the next read(); a caller that
        received bytes it cannot handle passes their count to received()
        and reads them as a frame with read().
        """
        if self._end or len(self._buf) > _KEEP_BUFFER:
            return None
        return self._buf

    def received(self, count: int) -> None:
        """Counts `count` bytes a caller received into idle_buffer()."""
        self._end = count

    def buffered(self) -> bool:
        """Tells whether bytes of the next frame have been read already.

        Such bytes no longer make the socket readable, so a caller that
        waits in select() for the next frame must check this first.
        """
        return self._end > self._start

    def _reject(self, ftype: int, flags: int, header_len: int) -> NoReturn:
        if flags != 0:
            raise ProtocolError(f"frame flags are 0x{flags:02x}, expected 0")
        if ftype not in self._allowed:
            raise ProtocolError(f"unexpected frame type {ftype}")
        if header_len > MAX_HEADER_LEN:
            raise ProtocolError(f"frame header of {header_len} bytes exceeds "
                                f"the {MAX_HEADER_LEN}-byte limit")
        raise AssertionError("_reject called for a valid prefix")

    def _decode_header(self, start: int, length: int) -> Dict[Any, Any]:
        if length == 0:
            return {}
        raw = self._view[start:start + length]
        # Calls to one function without a deadline repeat the same header
        # byte for byte; reusing its decoded (read-only) map saves a
        # decode per call.
        if raw == self._last_header_raw:
            return self._last_header
        header = self._decode_new_header(raw)
        self._last_header_raw = bytes(raw)
        self._last_header = header
        return header

    def _decode_new_header(self, raw: memoryview) -> Dict[Any, Any]:
        try:
            header = self._codec.decode(raw)
        except DecodeError as exc:
            raise ProtocolError(f"frame header is not msgpack: "
                                f"{exc.message}") from None
        if type(header) is not dict:
            raise ProtocolError(f"frame header is a "
                                f"{type(header).__name__}, not a map")
        return header

    def _read_skipping_body(self, ftype: int, fid: int, header_len: int,
                            body_len: int) -> Frame:
        """Reads the prefix and header of a frame, discarding its body."""
        self._fill(_PREFIX_LEN + header_len)
        header = self._decode_header(self._start + _PREFIX_LEN, header_len)
        self._consume(_PREFIX_LEN + header_len)
        left = body_len
        while left:
            if self._start == self._end:
                self._start = self._end = 0
                self._recv_some()
            skipped = min(left, self._end - self._start)
            self._consume(skipped)
            left -= skipped
        return Frame(ftype, fid, header, None, body_len)

    def _consume(self, count: int) -> None:
        self._start += count
        if self._start == self._end:
            self._start = self._end = 0

    def _fill(self, count: int) -> None:
        """Makes the buffer hold at least `count` unread bytes."""
        if self._end - self._start >= count:
            return
        if self._start + count > len(self._buf):
            self._make_room(count)
        while self._end - self._start < count:
            self._recv_some()

    def _make_room(self, count: int) -> None:
        """Moves unread bytes to the front, into a bigger buffer if needed."""
        unread = self._end - self._start
        if count <= len(self._buf):
            self._view[:unread] = self._view[self._start:self._end]
            self._start, self._end = 0, unread
            return
        old_view, old_start = self._view, self._start
        self._new_buffer(max(count, _INITIAL_BUFFER))
        self._view[:unread] = old_view[old_start:old_start + unread]
        self._end = unread

    def _recv_some(self) -> None:
        try:
            got = self._sock.recv_into(self._view[self._end:])
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        if got == 0:
            raise ChannelClosed("end of stream")
        self._end += got


class FrameWriter:
    """Writes frames to a stream socket.

    Thread-safe: a lock keeps frames whole when several threads write (the
    main thread's results, a user thread's `ctx.logger` records). A hot
    path may write a whole frame to `socket` itself while it holds `lock`.
    """

    def __init__(self, sock: socket.socket, header_codec: Codec) -> None:
        self._sock = sock
        self._codec = header_codec
        self._lock = threading.Lock()
        self.socket = sock
        self.lock = self._lock

    def send(self, ftype: int, fid: int,
             header: Optional[Dict[str, Any]] = None,
             body: Sequence[Any] = ()) -> None:
        """Sends one frame.

        `body` is a list of pieces: bytes, bytearray or byte-format
        memoryview. Raises ChannelClosed if the peer is gone.
        """
        head = self._codec.encode(header) if header else b""
        body_len = 0
        for piece in body:
            body_len += len(piece)
        if body_len > MAX_BODY_LEN:
            raise ValueError(f"frame body of {body_len} bytes cannot be "
                             f"framed")
        buffers = [_pack_prefix(ftype, 0, 0, len(head), body_len, fid)
                   + head]
        buffers.extend(body)
        total = len(buffers[0]) + body_len
        with self._lock:
            try:
                sent = self._sock.sendmsg(buffers)
                if sent != total:
                    send_rest(self._sock, buffers, sent)
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc


    def send_body(self, ftype: int, fid: int, body: bytes) -> None:
        """Sends a header-less frame whose body is one bytes object: the
        common RESULT, in one sendmsg."""
        prefix = _pack_prefix(ftype, 0, 0, 0, len(body), fid)
        with self._lock:
            try:
                sent = self._sock.sendmsg((prefix, body))
                if sent != len(prefix) + len(body):
                    send_rest(self._sock, [prefix, body], sent)
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc


def send_rest(sock: socket.socket, buffers: List[Any], sent: int) -> None:
    """Sends what a partial sendmsg left, however the kernel splits it."""
    while True:
        while buffers and sent >= len(buffers[0]):
            sent -= len(buffers.pop(0))
        if not buffers:
            return
        buffers[0] = memoryview(buffers[0])[sent:]
        sent = sock.sendmsg(buffers)
