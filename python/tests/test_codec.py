"""Tests of snakepit._codec: both codecs pass the same cases.

`BuiltinCodecTest` always runs; `MsgpackCodecTest` and the cross-codec
tests run when the msgpack package is importable.
"""

from __future__ import annotations

import collections
import enum
import math
import struct
import sys
import threading
import time
import unittest
from pathlib import Path
from typing import Any, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snakepit import _codec  # noqa: E402
from snakepit._codec import DecodeError, EncodeError  # noqa: E402

try:
    import msgpack
except ImportError:
    msgpack = None

try:
    import numpy
except ImportError:
    numpy = None

HAVE_MSGPACK = _codec.HAVE_MSGPACK

# (value, first byte msgpack.packb writes for it).
INT_BOUNDARIES = [
    (0, 0x00), (127, 0x7f), (128, 0xcc), (255, 0xcc), (256, 0xcd),
    (65535, 0xcd), (65536, 0xce), (2 ** 32 - 1, 0xce), (2 ** 32, 0xcf),
    (2 ** 64 - 1, 0xcf), (-1, 0xff), (-32, 0xe0), (-33, 0xd0),
    (-128, 0xd0), (-129, 0xd1), (-32768, 0xd1), (-32769, 0xd2),
    (-2 ** 31, 0xd2), (-2 ** 31 - 1, 0xd3), (-2 ** 63, 0xd3),
]

# (length, first byte of a str of that many ASCII characters).
STR_LENGTHS = [(0, 0xa0), (31, 0xbf), (32, 0xd9), (255, 0xd9),
               (256, 0xda), (65535, 0xda), (65536, 0xdb)]
BIN_LENGTHS = [(0, 0xc4), (255, 0xc4), (256, 0xc5), (65535, 0xc5),
               (65536, 0xc6)]
ARRAY_LENGTHS = [(0, 0x90), (15, 0x9f), (16, 0xdc), (65535, 0xdc),
                 (65536, 0xdd)]

SAMPLES: List[Any] = [
    None, True, False, 0, -1, 2 ** 64 - 1, -2 ** 63, 1.5, -0.0,
    float("inf"), "", "emoji \U0001F40D", "nul \x00", "sep \u2028",
    b"", b"\x00\xff", [], [1, [2, [3]]], {}, {"a": 1, 2: "b", b"c": None},
    {"nested": {1: [{"x": b"y"}], -5: {}}}, "x" * 70000, b"y" * 70000,
    list(range(70000)), {i: str(i) for i in range(20)},
]


def nested_list(levels: int) -> list:
    """Returns [] inside levels - 1 more lists: `levels` deep in all."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def float_bits(value: float) -> bytes:
    return struct.pack(">d", value)


class FakeNumpyScalar:
    """Looks like a numpy scalar to the codec, without numpy."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def item(self) -> Any:
        return self._value


class FakeNumpyArray:
    ndim = 2

    def tolist(self) -> Any:
        return [[1, 2], [3, 4]]


FakeNumpyScalar.__module__ = "numpy"
FakeNumpyArray.__module__ = "numpy.fake"


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    def __str__(self) -> str:
        return "not the value"


Point = collections.namedtuple("Point", "x y")


class CodecCases:
    """Cases every codec must pass; a subclass gives `make()`."""

    def make(self, max_depth: int = 128) -> _codec.Codec:
        raise NotImplementedError

    def setUp(self) -> None:
        self.codec = self.make()

    def round_trip(self, value: Any) -> Any:
        return self.codec.decode(self.codec.encode(value))

    def assert_encode_error(self, value: Any, reason: str,
                            path: str) -> EncodeError:
        with self.assertRaises(EncodeError) as caught:
            self.codec.encode(value)
        self.assertEqual((caught.exception.reason, caught.exception.path),
                         (reason, path), caught.exception.message)
        return caught.exception

    def assert_decode_error(self, data: bytes, reason: str,
                            codec: Any = None) -> DecodeError:
        with self.assertRaises(DecodeError) as caught:
            (codec or self.codec).decode(data)
        self.assertEqual(caught.exception.reason, reason,
                         caught.exception.message)
        return caught.exception

    # Round trips.

    def test_samples_round_trip(self) -> None:
        for value in SAMPLES:
            self.assertEqual(self.round_trip(value), value, repr(value)[:80])

    def test_ints_at_every_width_boundary(self) -> None:
        for value, first in INT_BOUNDARIES:
            data = self.codec.encode(value)
            self.assertEqual(data[0], first, value)
            self.assertEqual(self.codec.decode(data), value)

    def test_bools_stay_bools(self) -> None:
        self.assertIs(self.round_trip(True), True)
        self.assertEqual(self.codec.encode([True, False, None]),
                         b"\x93\xc3\xc2\xc0")

    def test_floats_keep_their_bits(self) -> None:
        payload_nan = struct.unpack(">d", bytes.fromhex("7ff8000000000001"))
        for value in (float("nan"), payload_nan[0], -0.0, 0.0,
                      float("inf"), float("-inf"), 5e-324,
                      1.7976931348623157e308):
            data = self.codec.encode(value)
            self.assertEqual(data, b"\xcb" + float_bits(value))
            self.assertEqual(float_bits(self.codec.decode(data)),
                             float_bits(value))

    def test_float32_decodes(self) -> None:
        self.assertEqual(self.codec.decode(b"\xca" + struct.pack(">f", 1.5)),
                         1.5)
        self.assertTrue(math.isnan(self.codec.decode(
            b"\xca" + struct.pack(">f", float("nan")))))

    def test_str_lengths(self) -> None:
        for length, first in STR_LENGTHS:
            data = self.codec.encode("s" * length)
            self.assertEqual(data[0], first, length)
            self.assertEqual(self.codec.decode(data), "s" * length)

    def test_unicode_text(self) -> None:
        for text in ("\U0001F40D", "\x00", "\u2028\u2029", "\uffff",
                     "d\u00e9j\u00e0 vu"):
            self.assertEqual(self.round_trip(text), text)
        self.assertEqual(self.codec.encode("\U0001F40D"),
                         b"\xa4\xf0\x9f\x90\x8d")

    def test_bin_lengths(self) -> None:
        for length, first in BIN_LENGTHS:
            data = self.codec.encode(b"b" * length)
            self.assertEqual(data[0], first, length)
            self.assertEqual(self.codec.decode(data), b"b" * length)

    def test_bytes_like_values_encode_as_bin(self) -> None:
        for value in (bytearray(b"ab"), memoryview(b"ab")):
            self.assertEqual(self.codec.encode(value), b"\xc4\x02ab")

    def test_array_lengths_and_tuples(self) -> None:
        for length, first in ARRAY_LENGTHS:
            value = list(range(length))
            data = self.codec.encode(value)
            self.assertEqual(data[0], first, length)
            self.assertEqual(self.codec.decode(data), value)
        self.assertEqual(self.codec.encode((1, (2,))), b"\x92\x01\x91\x02")

    def test_maps_with_any_hashable_key(self) -> None:
        value = {1: "int", -1: "neg", b"k": "bytes", None: "nil",
                 1.5: "float", False: "bool", "s": {2: {3: [4]}}}
        self.assertEqual(self.round_trip(value), value)
        self.assertEqual(self.codec.encode({"a": [1, 2]}),
                         b"\x81\xa1a\x92\x01\x02")

    def test_array_keys_decode_as_tuples(self) -> None:
        data = b"\x81\x92\x01\x92\x02\x03\xa1v"  # {[1, [2, 3]]: "v"}
        self.assertEqual(self.codec.decode(data), {(1, (2, 3)): "v"})
        self.assertEqual(self.round_trip({(1, 2): 3}), {(1, 2): 3})

    def test_map_key_that_is_a_map_fails(self) -> None:
        self.assert_decode_error(b"\x81\x81\x01\x02\x03",
                                 "serialization_error")

    def test_subclasses_encode_as_their_base_type(self) -> None:
        self.assertEqual(self.codec.encode(Color.RED), b"\x01")
        self.assertEqual(self.codec.encode(Text("v")), b"\xa1v")
        self.assertEqual(self.round_trip(collections.OrderedDict(a=1)),
                         {"a": 1})
        self.assertEqual(self.round_trip(Point(1, 2)), [1, 2])

    def test_numpy_like_values_are_converted(self) -> None:
        self.assertEqual(self.round_trip({"s": FakeNumpyScalar(7)}),
                         {"s": 7})
        self.assertEqual(self.round_trip([FakeNumpyArray()]),
                         [[[1, 2], [3, 4]]])

    @unittest.skipIf(numpy is None, "numpy is not installed")
    def test_numpy_values_are_converted(self) -> None:
        value = {"i": numpy.int64(3), "f": numpy.float32(0.5),
                 "b": numpy.bool_(True), "a": numpy.arange(4).reshape(2, 2)}
        self.assertEqual(self.round_trip(value),
                         {"i": 3, "f": 0.5, "b": True, "a": [[0, 1], [2, 3]]})

    def test_decode_takes_any_bytes_like(self) -> None:
        data = self.codec.encode({"a": [1, b"x"]})
        for form in (bytes(data), bytearray(data), memoryview(data)):
            self.assertEqual(self.codec.decode(form), {"a": [1, b"x"]})

    def test_encode_buffers_join_to_encode(self) -> None:
        for value in (b"z" * (2 << 20), bytearray(3), {"a": 1}):
            pieces = self.codec.encode_buffers(value)
            self.assertEqual(b"".join(pieces), self.codec.encode(value))
        big = b"z" * (2 << 20)
        self.assertIs(self.codec.encode_buffers(big)[-1], big)

    # Encoding errors.

    def test_unencodable_types_name_type_and_path(self) -> None:
        cases = [
            ({"a": [1, 2, {3}]}, "$.a[2]", "set"),
            ([{"b": object()}], "$[0].b", "object"),
            ({"key with space": threading.Lock()}, '$["key with space"]',
             "lock"),
            ({7: (x for x in [])}, "$[7]", "generator"),
            ({b"k": [1, 2.5, complex(1, 2)]}, "$[b'k'][2]", "complex"),
            ({"\u00e9t\u00e9": {"x": set()}}, "$.\u00e9t\u00e9.x", "set"),
            ({"-": [None, {"": {1}}]}, '$["-"][1][""]', "set"),
        ]
        for value, path, type_word in cases:
            error = self.assert_encode_error(value, "serialization_error",
                                             path)
            self.assertIn(type_word, error.message)
            self.assertIn(path, error.message)

    def test_unencodable_map_key_has_the_key_path(self) -> None:
        self.assert_encode_error({frozenset(): 1}, "serialization_error",
                                 "$[frozenset()]")

    def test_ints_out_of_range_fail(self) -> None:
        self.assert_encode_error(2 ** 64, "serialization_error", "$")
        self.assert_encode_error({"n": [-2 ** 63 - 1]},
                                 "serialization_error", "$.n[0]")

    def test_lone_surrogates_fail(self) -> None:
        error = self.assert_encode_error({"s": "a\ud800"},
                                         "serialization_error", "$.s")
        error.message.encode("utf-8")  # The message itself is valid text.
        self.assert_encode_error({"\udc00": 1}, "serialization_error",
                                 '$["\\udc00"]')

    def test_error_messages_are_valid_utf8(self) -> None:
        error = self.assert_encode_error({"k\ud800 x": {1}},
                                         "serialization_error",
                                         '$["k\\ud800 x"]')
        error.message.encode("utf-8")
        error.path.encode("utf-8")

    # Depth.

    def test_depth_limit_counts_arrays_and_maps(self) -> None:
        codec = self.make(max_depth=3)
        ok = {"a": {"b": [1]}}
        too_deep = {"a": {"b": [[1]]}}
        self.assertEqual(codec.decode(codec.encode(ok)), ok)
        self.assert_decode_error(self.make(10).encode(too_deep),
                                 "payload_too_deep", codec)

    def test_128_levels_pass_and_129_fail_on_decode(self) -> None:
        self.assertEqual(self.codec.decode(b"\x91" * 127 + b"\x90"),
                         nested_list(128))
        error = self.assert_decode_error(b"\x91" * 128 + b"\x90",
                                         "payload_too_deep")
        self.assertEqual(error.path, "$" + "[0]" * 128)
        self.assert_decode_error(b"\x81\xa1k" * 129 + b"\xc0",
                                 "payload_too_deep")

    def test_100000_deep_list_fails_cleanly_both_ways(self) -> None:
        error = self.assert_encode_error(nested_list(100000),
                                         "payload_too_deep", "$" + "[0]" * 128)
        self.assertNotIn("[0]" * 128, error.message)
        self.assert_decode_error(b"\x91" * 100000 + b"\xc0",
                                 "payload_too_deep")
        self.assert_decode_error(b"\x81\xc0" * 100000 + b"\xc0",
                                 "payload_too_deep")

    def test_self_referencing_list_fails_cleanly(self) -> None:
        loop: list = []
        loop.append(loop)
        self.assert_encode_error(loop, "payload_too_deep", "$" + "[0]" * 128)

    # Decoding errors.

    def test_every_truncation_fails(self) -> None:
        data = self.codec.encode({"a": [1, 300, 70000, 2 ** 40, -5, 1.5,
                                        "text", b"bin", None, {"m": True}]})
        for end in range(len(data)):
            self.assert_decode_error(data[:end], "serialization_error")

    def test_malformed_input_fails(self) -> None:
        for data in (b"", b"\xc1", b"\x01\x02", b"\xa2\xff\xfe",
                     b"\xa3\xed\xa0\x80", b"\xd4\x05\x00",
                     b"\xc7\x01\x05\x00", b"\x92\xc1\x01",
                     b"\xdb\xff\xff\xff\xff"):
            self.assert_decode_error(data, "serialization_error")

    def test_invalid_utf8_has_a_path(self) -> None:
        error = self.assert_decode_error(b"\x81\xa1k\x92\x01\xa1\xff",
                                         "serialization_error")
        self.assertEqual(error.path, "$.k[1]")

    def test_64_mib_bin_decodes_fast(self) -> None:
        size = 64 << 20
        data = bytearray(b"\xc6" + struct.pack(">I", size)) + bytes(size)
        started = time.monotonic()
        value = self.codec.decode(memoryview(data))
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertEqual(len(value), size)
        self.assertIsInstance(value, bytes)


class BuiltinCodecTest(CodecCases, unittest.TestCase):
    def make(self, max_depth: int = 128) -> _codec.Codec:
        return _codec.new_codec(max_depth, use_msgpack=False)

    def test_name(self) -> None:
        self.assertEqual(self.codec.name, "builtin")

    def test_encoding_checks_depth(self) -> None:
        self.codec.encode(nested_list(128))
        self.assert_encode_error(nested_list(129), "payload_too_deep",
                                 "$" + "[0]" * 128)
        self.assert_encode_error({"a": nested_list(128)}, "payload_too_deep",
                                 "$.a" + "[0]" * 127)


@unittest.skipUnless(HAVE_MSGPACK, "the msgpack package is not installed")
class MsgpackCodecTest(CodecCases, unittest.TestCase):
    def make(self, max_depth: int = 128) -> _codec.Codec:
        return _codec.new_codec(max_depth, use_msgpack=True)

    def test_name(self) -> None:
        self.assertEqual(self.codec.name, "msgpack")

    def test_encoding_checks_depth_past_the_package_limit(self) -> None:
        # docs/protocol.md: msgpack stops at 511 levels; the host rejects
        # anything between the pool's limit and that.
        self.assertEqual(len(self.codec.encode(nested_list(200))), 200)
        self.assert_encode_error(nested_list(600), "payload_too_deep",
                                 "$" + "[0]" * 128)


@unittest.skipUnless(HAVE_MSGPACK, "the msgpack package is not installed")
class CrossCodecTest(unittest.TestCase):
    def setUp(self) -> None:
        self.builtin = _codec.new_codec(use_msgpack=False)

    def test_builtin_writes_what_msgpack_writes(self) -> None:
        values = SAMPLES + [v for v, _ in INT_BOUNDARIES] + [
            float("nan"), (1, 2), {(1, 2): [3]}]
        for value in values:
            self.assertEqual(self.builtin.encode(value),
                             msgpack.packb(value, use_bin_type=True),
                             repr(value)[:80])

    def test_each_reads_what_the_other_writes(self) -> None:
        for value in SAMPLES:
            self.assertEqual(
                msgpack.unpackb(self.builtin.encode(value), raw=False,
                                strict_map_key=False), value)
            self.assertEqual(
                self.builtin.decode(msgpack.packb(value, use_bin_type=True)),
                value)


@unittest.skipUnless(HAVE_MSGPACK, "the msgpack package is not installed")
class HugeBinDecodeTest(unittest.TestCase):
    """Large values take the C decoder when it is there (snakepit._accel),
    which must read exactly what msgpack reads; the test suite runs with
    and without it."""

    def setUp(self) -> None:
        self.codec = _codec.MsgpackCodec()
        self.big = bytes(range(256)) * ((8 << 20) // 256 + 3)

    def check(self, value: Any) -> None:
        data = bytearray(msgpack.packb(value, use_bin_type=True))
        got = self.codec.decode(memoryview(data))
        self.assertEqual(got, value)
        items = got.values() if isinstance(got, dict) else got
        for item in items:
            if isinstance(item, (bytes, bytearray)):
                self.assertIs(type(item), bytes)

    def test_keyword_arguments_round_trip(self) -> None:
        self.check({"data": self.big})
        self.check({"a": [1, {"b": 2.5}], "data": self.big, "c": "text",
                    "more": self.big[::-1], "small": b"xy"})

    def test_positional_arguments_round_trip(self) -> None:
        self.check([self.big, None, [1, 2], self.big[:4 << 20]])

    def test_a_key_given_twice_keeps_the_last_value(self) -> None:
        data = (b"\x82\xa4data\xc6" + len(self.big).to_bytes(4, "big")
                + self.big + b"\xa4data\x07")
        self.assertEqual(self.codec.decode(data), {"data": 7})

    def test_trailing_and_missing_bytes_still_fail(self) -> None:
        data = msgpack.packb({"data": self.big}, use_bin_type=True)
        with self.assertRaises(DecodeError):
            self.codec.decode(data + b"\x00")
        with self.assertRaises(DecodeError):
            self.codec.decode(data[:-1])

    def test_depth_limit_still_applies(self) -> None:
        codec = _codec.MsgpackCodec(max_depth=2)
        data = msgpack.packb({"data": self.big, "deep": [[1]]},
                             use_bin_type=True)
        with self.assertRaises(DecodeError) as caught:
            codec.decode(data)
        self.assertEqual(caught.exception.reason, _codec.PAYLOAD_TOO_DEEP)

    def test_builtin_codec_reads_huge_bins_alike(self) -> None:
        data = msgpack.packb({"data": self.big, "n": [1, -2.5]},
                             use_bin_type=True)
        got = _codec.BuiltinCodec().decode(data)
        self.assertEqual(got, {"data": self.big, "n": [1, -2.5]})
        self.assertIs(type(got["data"]), bytes)


class NewCodecTest(unittest.TestCase):
    def test_default_follows_the_package(self) -> None:
        self.assertEqual(_codec.new_codec().name,
                         "msgpack" if HAVE_MSGPACK else "builtin")

    @unittest.skipIf(HAVE_MSGPACK, "the msgpack package is installed")
    def test_asking_for_a_missing_package_fails(self) -> None:
        with self.assertRaises(RuntimeError):
            _codec.new_codec(use_msgpack=True)

    def test_max_depth_must_be_positive(self) -> None:
        with self.assertRaises(ValueError):
            _codec.new_codec(0)


if __name__ == "__main__":
    unittest.main()
