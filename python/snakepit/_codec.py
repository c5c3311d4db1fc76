"""msgpack encoding and decoding of call arguments, results and headers.

Two codecs share one interface. `MsgpackCodec` uses the `msgpack` package
(C speed) and `BuiltinCodec` is a small pure-Python codec used when the
package is not importable. Both write what `msgpack.packb(value,
use_bin_type=True)` writes and read the same values back, and both fail
with the same `EncodeError` / `DecodeError`, carrying a stable `reason`
(docs/protocol.md, "Reasons") and a `path` such as `$.a[2]`.

Depth: a value nests one level per array or map, so `[]` has depth 1 and
`[[1]]` depth 2. Values deeper than `max_depth` fail with reason
`payload_too_deep`. The built-in codec checks this both ways; the msgpack
codec checks it when decoding and, when encoding, only once the package
itself gives up (511 levels), as docs/protocol.md allows.

Neither codec recurses in Python, so a value nested 100,000 deep fails
cleanly instead of raising RecursionError.
"""

from __future__ import annotations

import functools
import struct
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ._accel import native

try:
    import msgpack as _msgpack
except ImportError:  # The built-in codec takes over.
    _msgpack = None

__all__ = [
    "BuiltinCodec",
    "Codec",
    "CodecError",
    "DecodeError",
    "DEFAULT_MAX_DEPTH",
    "EncodeError",
    "HAVE_MSGPACK",
    "MsgpackCodec",
    "new_codec",
    "safe_text",
    "within_depth",
]

SERIALIZATION_ERROR = "serialization_error"
PAYLOAD_TOO_DEEP = "payload_too_deep"
DEFAULT_MAX_DEPTH = 128

# strict_map_key (non-string map keys) appeared in msgpack 1.0.
HAVE_MSGPACK = (_msgpack is not None
                and getattr(_msgpack, "version", (0,)) >= (1, 0, 0))

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
_LEN_MAX = (1 << 32) - 1
_BIG_BIN = 1 << 20
# Values from this size up are decoded by the C decoder when it is there
# (snakepit._accel): it puts large bins on huge pages, which halves the
# cost of a 64 MiB argument. Below it the msgpack package is as fast.
_NATIVE_DECODE_MIN = 1 << 20


def safe_text(text: str) -> str:
    """Returns `text` with lone surrogates escaped, so it is valid UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class CodecError(Exception):
    """A value that cannot be encoded or bytes that cannot be decoded.

    `reason` is `serialization_error` or `payload_too_deep`; `path` says
    where in the value the problem sits (`$` is the whole value), or is
    None when unknown. `message` and `path` are always valid UTF-8.
    """

    def __init__(self, reason: str, message: str,
                 path: Optional[str] = None) -> None:
        super().__init__(safe_text(message))
        self.reason = reason
        self.message = safe_text(message)
        self.path = None if path is None else safe_text(path)


class EncodeError(CodecError):
    """A value that msgpack cannot represent."""


class DecodeError(CodecError):
    """Bytes that are not one well-formed msgpack value."""


# Paths ----------------------------------------------------------------------

def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _key_segment(key: Any) -> str:
    """Renders a map key as a path step: `.name`, `["a b"]` or `[3]`."""
    if isinstance(key, str):
        if key.isidentifier():
            return "." + key
        import json  # Only on the error path.
        return "[" + json.dumps(key, ensure_ascii=False) + "]"
    return "[" + _safe_repr(key) + "]"


def _segment(step: Any) -> str:
    """Renders one encoder step: a list index or a (is_key, key) pair."""
    if step is None:
        return ""
    if isinstance(step, int):
        return f"[{step}]"
    return _key_segment(step[1])


def _type_name(value: Any) -> str:
    cls = type(value)
    module = getattr(cls, "__module__", None)
    if module in (None, "builtins"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


# numpy, duck-typed so that numpy is never imported ---------------------------

_NOT_CONVERTED = object()


def _from_numpy(value: Any) -> Any:
    """Returns a numpy value as plain Python, or `_NOT_CONVERTED`."""
    module = getattr(type(value), "__module__", None) or ""
    if not (module == "numpy" or module.startswith("numpy.")):
        return _NOT_CONVERTED
    try:
        if getattr(value, "ndim", 0) and hasattr(value, "tolist"):
            return value.tolist()
        if hasattr(value, "item"):
            return value.item()
    except Exception:
        pass
    return _NOT_CONVERTED


# Codecs ---------------------------------------------------------------------

class Codec:
    """Encodes Python values to msgpack bytes and back. Thread-safe."""

    name = ""

    def __init__(self, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        self.max_depth = max_depth

    def encode(self, value: Any) -> bytes:
        """Returns `value` as msgpack; raises EncodeError."""
        raise NotImplementedError

    def encode_buffers(self, value: Any) -> List[Any]:
        """Returns `value` as msgpack split into buffers, for sendmsg.

        A large bytes-like value at the top level is returned as is, after
        its bin header, so that sending it copies nothing.
        """
        cls = type(value)
        if ((cls is bytes or cls is bytearray) and _BIG_BIN <= len(value)
                <= _LEN_MAX):
            return [_PACK_CE(0xc6, len(value)), value]
        return [self.encode(value)]

    def decode(self, data: Any) -> Any:
        """Returns the one msgpack value in `data` (bytes-like).

        Raises DecodeError for anything else, trailing bytes included.
        """
        raise NotImplementedError

    def quick_decoder(self) -> Callable[[Any], Any]:
        """Returns a function that decodes like decode() but may skip the
        depth check and may raise any exception for bad input.

        For hot paths that check the depth themselves (`within_depth`)
        and hand bad input to decode() for the exact error.
        """
        return self.decode

    def stream_decoder(self) -> Optional[Tuple[Callable[[Any], None],
                                               Callable[[], Any],
                                               Callable[[], int]]]:
        """Returns (feed, unpack, tell) of a new streaming decoder, or None
        when this codec has none.

        Like quick_decoder() but cheaper per small value (no per-call
        options to parse). The caller checks the depth, checks that
        tell() advanced by exactly what it fed (else trailing bytes were
        left), and drops the decoder after any exception: bytes of a bad
        value may stay buffered in it. Feeding copies, so it suits small
        values only.
        """
        return None

    def quick_encoder(self) -> Callable[[Any], bytes]:
        """Returns a function that encodes like encode() for the calling
        thread alone, and may raise any exception for what it cannot
        encode (encode() then gives the exact error)."""
        return self.encode


def within_depth(value: Any, max_depth: int) -> bool:
    """Tells whether a decoded value nests at most `max_depth`."""
    if type(value) is not list and type(value) is not dict:
        return True
    return _within_depth(value, max_depth)


def new_codec(max_depth: int = DEFAULT_MAX_DEPTH,
              use_msgpack: Optional[bool] = None) -> Codec:
    """Returns the msgpack codec when available (or asked), else built-in.

    Raises RuntimeError if `use_msgpack` is True and the package is absent.
    """
    if use_msgpack is None:
        use_msgpack = HAVE_MSGPACK
    if use_msgpack:
        if not HAVE_MSGPACK:
            raise RuntimeError("the msgpack package (>= 1.0) is not "
                               "importable")
        return MsgpackCodec(max_depth)
    return BuiltinCodec(max_depth)


class BuiltinCodec(Codec):
    """A pure-Python msgpack codec for interpreters without the package."""

    name = "builtin"

    def encode(self, value: Any) -> bytes:
        try:
            return _Encoder(self.max_depth).run(value)
        except EncodeError:
            raise
        except Exception as exc:
            # A dict resized by another thread, a broken __len__, ...
            raise EncodeError(SERIALIZATION_ERROR,
                              f"cannot serialize the value: {exc!r}",
                              "$") from exc

    def decode(self, data: Any) -> Any:
        if native is not None:
            try:
                return native.decode(data, self.max_depth)
            except (TypeError, ValueError):
                pass  # Not its subset: the decoder below tells.
        return _Decoder(data, self.max_depth).run()


class MsgpackCodec(Codec):
    """The codec backed by the `msgpack` package.

    On failure it hands the value to the built-in codec, which either
    encodes or decodes it after all (values the package refuses but
    msgpack allows, such as arrays used as map keys) or finds the exact
    path and reason of the fault.
    """

    name = "msgpack"

    def __init__(self, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        super().__init__(max_depth)
        if not HAVE_MSGPACK:
            raise RuntimeError("the msgpack package (>= 1.0) is not "
                               "importable")
        self._fallback = BuiltinCodec(max_depth)
        self._unpackb = _msgpack.unpackb
        # A Packer is not thread-safe, and msgpack.packb builds a new one
        # per call (~0.2 us). Whoever takes the lock uses the shared one;
        # a thread that finds it taken builds its own.
        self._packer = _new_packer()
        self._packer_lock = threading.Lock()

    def encode(self, value: Any) -> bytes:
        if self._packer_lock.acquire(False):
            try:
                return self._packer.pack(value)
            except Exception:
                pass  # The packer resets itself on failure.
            finally:
                self._packer_lock.release()
        else:
            try:
                return _new_packer().pack(value)
            except Exception:
                pass
        return self._fallback.encode(value)

    def quick_decoder(self) -> Callable[[Any], Any]:
        return functools.partial(self._unpackb, raw=False,
                                 strict_map_key=False, ext_hook=_reject_ext)

    def stream_decoder(self) -> Optional[Tuple[Callable[[Any], None],
                                               Callable[[], Any],
                                               Callable[[], int]]]:
        unpacker = _msgpack.Unpacker(raw=False, strict_map_key=False,
                                     ext_hook=_reject_ext)
        return unpacker.feed, unpacker.unpack, unpacker.tell

    def quick_encoder(self) -> Callable[[Any], bytes]:
        return _new_packer().pack

    def decode(self, data: Any) -> Any:
        if len(data) >= _NATIVE_DECODE_MIN and native is not None:
            try:
                return native.decode(data, self.max_depth)
            except (TypeError, ValueError):
                pass  # Not its subset: the general decode tells.
        try:
            value = self._unpackb(data, raw=False, strict_map_key=False,
                                  ext_hook=_reject_ext)
        except Exception:
            return self._fallback.decode(data)
        if (type(value) is list or type(value) is dict) and not _within_depth(
                value, self.max_depth):
            return self._fallback.decode(data)  # Raises payload_too_deep.
        return value


def _new_packer() -> Any:
    return _msgpack.Packer(use_bin_type=True, autoreset=True,
                           default=_msgpack_default)


def _msgpack_default(value: Any) -> Any:
    converted = _from_numpy(value)
    if converted is _NOT_CONVERTED:
        raise TypeError(f"cannot serialize {_type_name(value)}")
    return converted


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not supported")


_CONTAINER_TYPES = frozenset((list, dict))


def _within_depth(value: Any, max_depth: int) -> bool:
    """Tells whether a decoded list or dict nests at most `max_depth`.

    Walks one level at a time and skips leaf-only containers at C speed,
    so a flat list of a million numbers costs one scan.
    """
    items = value.values() if type(value) is dict else value
    if _CONTAINER_TYPES.isdisjoint(map(type, items)):
        return True  # The common case: no container inside.
    level = [value]
    depth = 1
    while level:
        if depth > max_depth:
            return False
        below = []
        for container in level:
            items = (container.values() if type(container) is dict
                     else container)
            if not _CONTAINER_TYPES.isdisjoint(map(type, items)):
                below.extend(item for item in items
                             if type(item) is list or type(item) is dict)
        level = below
        depth += 1
    return True


# Built-in encoder -----------------------------------------------------------

def _map_steps(mapping: Dict[Any, Any]) -> Iterator[Tuple[Any, Any]]:
    """Yields (step, item) for each key, then its value, of `mapping`."""
    for key, item in mapping.items():
        yield (True, key), key
        yield (False, key), item


class _Encoder:
    """Encodes one value without recursion.

    `_open` holds one iterator of (step, child) per open array or map and
    `_steps` the step taken into each, from which an error's path is built.
    """

    def __init__(self, max_depth: int) -> None:
        self._max_depth = max_depth
        self._out: List[Any] = []
        self._open: List[Iterator[Tuple[Any, Any]]] = []
        self._steps: List[Any] = []

    def run(self, value: Any) -> bytes:
        while True:
            self._put(value)
            value = self._next_child()
            if value is _DONE:
                return b"".join(self._out)

    def _next_child(self) -> Any:
        open_, steps = self._open, self._steps
        while open_:
            try:
                steps[-1], child = next(open_[-1])
                return child
            except StopIteration:
                open_.pop()
                steps.pop()
        return _DONE

    def _path(self) -> str:
        return "$" + "".join(_segment(step) for step in self._steps)

    def _put(self, value: Any) -> None:
        """Writes a scalar, or a container's header and opens it."""
        out = self._out
        cls = type(value)
        if cls is str:
            self._put_str(value)
        elif cls is int:
            self._put_int(value)
        elif value is None:
            out.append(b"\xc0")
        elif cls is bool:
            out.append(b"\xc3" if value else b"\xc2")
        elif cls is float:
            out.append(_PACK_CB(0xcb, value))
        elif cls is bytes or cls is bytearray:
            out.append(_length_header(len(value), None, 0xc4, self))
            out.append(value)
        elif cls is list or cls is tuple:
            self._open_container(len(value), 0x90, 0xdc)
            self._open.append(enumerate(value))
            self._steps.append(None)
        elif cls is dict:
            self._open_container(len(value), 0x80, 0xde)
            self._open.append(_map_steps(value))
            self._steps.append(None)
        else:
            self._put(self._plain(value))

    def _put_int(self, value: int) -> None:
        if 0 <= value <= 0x7f or -32 <= value < 0:
            self._out.append(_FIXINT[value & 0xff])
        elif value >= 0:
            if value <= 0xff:
                self._out.append(b"\xcc" + bytes((value,)))
            elif value <= 0xffff:
                self._out.append(_PACK_CD(0xcd, value))
            elif value <= 0xffffffff:
                self._out.append(_PACK_CE(0xce, value))
            elif value <= _INT_MAX:
                self._out.append(_PACK_CF(0xcf, value))
            else:
                self._int_out_of_range()
        elif value >= -0x80:
            self._out.append(_PACK_D0(0xd0, value))
        elif value >= -0x8000:
            self._out.append(_PACK_D1(0xd1, value))
        elif value >= -0x80000000:
            self._out.append(_PACK_D2(0xd2, value))
        elif value >= _INT_MIN:
            self._out.append(_PACK_D3(0xd3, value))
        else:
            self._int_out_of_range()

    def _int_out_of_range(self) -> None:
        raise EncodeError(SERIALIZATION_ERROR,
                          f"int at {self._path()} is outside the msgpack "
                          f"range -2**63 .. 2**64-1", self._path())

    def _put_str(self, value: str) -> None:
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise EncodeError(SERIALIZATION_ERROR,
                              f"str at {self._path()} contains a lone "
                              f"surrogate and is not valid UTF-8",
                              self._path()) from None
        self._out.append(_length_header(len(data), 0xa0, 0xd9, self))
        self._out.append(data)

    def _open_container(self, count: int, fix: int, code16: int) -> None:
        if len(self._open) >= self._max_depth:
            raise EncodeError(PAYLOAD_TOO_DEEP,
                              f"value nests deeper than {self._max_depth} "
                              f"levels", self._path())
        if count < 16:
            self._out.append(bytes((fix | count,)))
        elif count <= 0xffff:
            self._out.append(_PACK_CD(code16, count))
        elif count <= _LEN_MAX:
            self._out.append(_PACK_CE(code16 + 1, count))
        else:
            self._too_long(count)

    def _too_long(self, count: int) -> None:
        raise EncodeError(SERIALIZATION_ERROR,
                          f"value at {self._path()} has {count} items or "
                          f"bytes, over the msgpack limit of 2**32-1",
                          self._path())

    def _plain(self, value: Any) -> Any:
        """Returns a subclass instance or numpy value as a plain value."""
        if isinstance(value, int):  # bool is final, so never here.
            return int.__int__(value)
        if isinstance(value, float):
            return float.__float__(value)
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(memoryview(value))
        if isinstance(value, (list, tuple)):
            return list(value)
        if isinstance(value, dict):
            return dict(value.items())
        converted = _from_numpy(value)
        if converted is _NOT_CONVERTED or _from_numpy(
                converted) is not _NOT_CONVERTED:
            raise EncodeError(SERIALIZATION_ERROR,
                              f"{_type_name(value)} at {self._path()} is "
                              f"not a msgpack type", self._path())
        return converted


_DONE = object()
_PACK_CB = struct.Struct(">Bd").pack
_FIXINT = {i & 0xff: bytes((i & 0xff,)) for i in range(-32, 128)}
_PACK_CD = struct.Struct(">BH").pack
_PACK_CE = struct.Struct(">BI").pack
_PACK_CF = struct.Struct(">BQ").pack
_PACK_D0 = struct.Struct(">Bb").pack
_PACK_D1 = struct.Struct(">Bh").pack
_PACK_D2 = struct.Struct(">Bi").pack
_PACK_D3 = struct.Struct(">Bq").pack


def _length_header(length: int, fix: Optional[int], code8: int,
                   encoder: _Encoder) -> bytes:
    """Returns a str (fix = 0xa0) or bin (fix = None) length header."""
    if fix is not None and length < 32:
        return bytes((fix | length,))
    if length <= 0xff:
        return bytes((code8, length))
    if length <= 0xffff:
        return _PACK_CD(code8 + 1, length)
    if length <= _LEN_MAX:
        return _PACK_CE(code8 + 2, length)
    encoder._too_long(length)
    return b""


# Built-in decoder -----------------------------------------------------------

_ARRAY, _KEY_ARRAY, _MAP = 0, 1, 2
_NO_KEY = object()

_U8 = struct.Struct(">B").unpack_from
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_I8 = struct.Struct(">b").unpack_from
_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_I64 = struct.Struct(">q").unpack_from
_F32_UNPACK = struct.Struct(">f").unpack_from
_F64_UNPACK = struct.Struct(">d").unpack_from

# Fixed-width scalars: type byte -> (reader, size).
_FIXED: Dict[int, Tuple[Callable[..., Tuple[Any, ...]], int]] = {
    0xca: (_F32_UNPACK, 4), 0xcb: (_F64_UNPACK, 8),
    0xcc: (_U8, 1), 0xcd: (_U16, 2), 0xce: (_U32, 4), 0xcf: (_U64, 8),
    0xd0: (_I8, 1), 0xd1: (_I16, 2), 0xd2: (_I32, 4), 0xd3: (_I64, 8),
}
# Length-prefixed values: type byte -> (length reader, its size, kind).
_SIZED: Dict[int, Tuple[Callable[..., Tuple[int]], int, str]] = {
    0xc4: (_U8, 1, "bin"), 0xc5: (_U16, 2, "bin"), 0xc6: (_U32, 4, "bin"),
    0xd9: (_U8, 1, "str"), 0xda: (_U16, 2, "str"), 0xdb: (_U32, 4, "str"),
    0xdc: (_U16, 2, "array"), 0xdd: (_U32, 4, "array"),
    0xde: (_U16, 2, "map"), 0xdf: (_U32, 4, "map"),
}
_EXT_CODES = frozenset((0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8))


class _Decoder:
    """Decodes one value without recursion.

    `_stack` holds one frame per open container: [kind, container, items
    still to come, pending map key]. Arrays that sit inside a map key are
    built as tuples (kind `_KEY_ARRAY`) so that the key is hashable.
    """

    def __init__(self, data: Any, max_depth: int) -> None:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self._view = view
        self._end = view.nbytes
        self._pos = 0
        self._max_depth = max_depth
        self._stack: List[List[Any]] = []

    def run(self) -> Any:
        try:
            while True:
                value = self._item()
                if value is _OPENED:
                    continue
                value = self._attach(value)
                if value is not _OPENED:
                    break
        except struct.error:
            raise self._error("truncated msgpack data") from None
        if self._pos != self._end:
            raise self._error(f"{self._end - self._pos} extra bytes after "
                              f"the msgpack value")
        return value

    def _error(self, message: str,
               reason: str = SERIALIZATION_ERROR) -> DecodeError:
        return DecodeError(reason, message, self._path())

    def _path(self) -> str:
        steps = ["$"]
        for kind, container, _, key in self._stack:
            if kind != _MAP:
                steps.append(f"[{len(container)}]")
            elif key is _NO_KEY:
                break  # Inside a key; the map's own path will do.
            else:
                steps.append(_key_segment(key))
        return "".join(steps)

    def _take(self, size: int) -> int:
        """Advances past `size` bytes and returns where they start."""
        start = self._pos
        if start + size > self._end:
            raise self._error("truncated msgpack data")
        self._pos = start + size
        return start

    def _item(self) -> Any:
        """Reads one scalar, or one container header (returns _OPENED)."""
        code = self._view[self._take(1)]
        if code <= 0x7f:
            return code
        if code >= 0xe0:
            return code - 0x100
        if code <= 0x8f:
            return self._open(_MAP, code & 0x0f)
        if code <= 0x9f:
            return self._open(_ARRAY, code & 0x0f)
        if code <= 0xbf:
            return self._str(code & 0x1f)
        if code == 0xc0:
            return None
        if code == 0xc2 or code == 0xc3:
            return code == 0xc3
        fixed = _FIXED.get(code)
        if fixed is not None:
            reader, size = fixed
            return reader(self._view, self._take(size))[0]
        sized = _SIZED.get(code)
        if sized is not None:
            return self._sized(*sized)
        if code in _EXT_CODES:
            raise self._error(f"msgpack ext types are not supported (type "
                              f"byte 0x{code:02x})")
        raise self._error(f"invalid msgpack type byte 0x{code:02x} at byte "
                          f"{self._pos - 1}")

    def _sized(self, reader: Callable[..., Tuple[int]], size: int,
               kind: str) -> Any:
        length = reader(self._view, self._take(size))[0]
        if kind == "str":
            return self._str(length)
        if kind == "bin":
            start = self._take(length)
            return bytes(self._view[start:start + length])
        return self._open(_MAP if kind == "map" else _ARRAY, length)

    def _str(self, length: int) -> str:
        start = self._take(length)
        try:
            return str(self._view[start:start + length], "utf-8")
        except UnicodeDecodeError:
            raise self._error("str is not valid UTF-8") from None

    def _open(self, kind: int, count: int) -> Any:
        stack = self._stack
        if len(stack) >= self._max_depth:
            raise self._error(f"value nests deeper than {self._max_depth} "
                              f"levels", PAYLOAD_TOO_DEEP)
        in_key = stack and (stack[-1][0] == _KEY_ARRAY or (
            stack[-1][0] == _MAP and stack[-1][3] is _NO_KEY))
        if in_key:
            if kind == _MAP:
                raise self._error("a map cannot be used as a map key")
            kind = _KEY_ARRAY
        if count == 0:
            return {} if kind == _MAP else (() if in_key else [])
        container: Any = {} if kind == _MAP else []
        remaining = 2 * count if kind == _MAP else count
        stack.append([kind, container, remaining, _NO_KEY])
        return _OPENED

    def _attach(self, value: Any) -> Any:
        """Adds `value` to the open containers, closing the full ones.

        Returns the whole value once the outermost one closes, else
        `_OPENED` to ask for the next item.
        """
        stack = self._stack
        while stack:
            frame = stack[-1]
            if frame[0] != _MAP:
                frame[1].append(value)
            elif frame[3] is _NO_KEY:
                frame[3] = value
            else:
                frame[1][frame[3]] = value
                frame[3] = _NO_KEY
            frame[2] -= 1
            if frame[2]:
                return _OPENED
            stack.pop()
            value = tuple(frame[1]) if frame[0] == _KEY_ARRAY else frame[1]
        return value


_OPENED = object()
