"""Tests of snakepit._protocol: framing over a real socketpair."""

from __future__ import annotations

import socket
import struct
import sys
import threading
import unittest
from pathlib import Path
from typing import Any, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snakepit import _codec, _protocol  # noqa: E402
from snakepit._protocol import (ChannelClosed, FrameReader,  # noqa: E402
                                FrameType, FrameWriter, ProtocolError)

CODEC = _codec.new_codec(_protocol.MAX_HEADER_DEPTH)
ALL_TYPES = frozenset(int(t) for t in FrameType)
TIMEOUT = 15.0


def raw_frame(ftype: int, fid: int, header: bytes = b"", body: bytes = b"",
              flags: int = 0) -> bytes:
    return (struct.pack("<BBHIIQ", ftype, flags, 0, len(header), len(body),
                        fid) + header + body)


class TrickleSocket:
    """A socket stand-in that takes at most `step` bytes per sendmsg."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.data = bytearray()
        self.calls = 0

    def sendmsg(self, buffers: List[Any]) -> int:
        self.calls += 1
        if self.calls > 1000:
            raise OSError("the writer is not making progress")
        joined = b"".join(bytes(b) for b in buffers)[:self.step]
        self.data += joined
        return len(joined)


class ProtocolTest(unittest.TestCase):
    def setUp(self) -> None:
        self.a, self.b = socket.socketpair()
        for sock in (self.a, self.b):
            sock.settimeout(TIMEOUT)
            self.addCleanup(sock.close)
        self.reader = FrameReader(self.b, CODEC, ALL_TYPES)

    def test_prefix_layout_matches_the_spec(self) -> None:
        self.assertEqual(_protocol.PREFIX.size, 20)
        self.assertEqual(_protocol.PREFIX.format, "<BBHIIQ")
        self.assertEqual([(t.name, int(t)) for t in FrameType], [
            ("HELLO", 1), ("READY", 2), ("FATAL", 3), ("CALL", 10),
            ("RESULT", 11), ("ERROR", 12), ("CHUNK", 13), ("LOG", 14),
            ("CANCEL", 20), ("PING", 21), ("PONG", 22), ("GOODBYE", 30),
            ("SESSION_READ", 40), ("SESSION_WRITE", 41),
            ("SESSION_REPLY", 42), ("SESSION_END", 43), ("FORK", 60),
            ("FORKED", 61), ("EXITED", 62), ("RELEASE", 63)])

    def test_writer_output_is_byte_exact(self) -> None:
        FrameWriter(self.a, CODEC).send(FrameType.ERROR, 2 ** 64 - 1,
                                        {"reason": "x"}, [b"ab", b"c"])
        header = CODEC.encode({"reason": "x"})
        expected = raw_frame(12, 2 ** 64 - 1, header, b"abc")
        self.assertEqual(self.b.recv(1000), expected)

    def test_empty_header_is_sent_as_zero_bytes(self) -> None:
        FrameWriter(self.a, CODEC).send(FrameType.RESULT, 5, None, [b"\x01"])
        self.assertEqual(self.b.recv(1000), raw_frame(11, 5, b"", b"\x01"))

    def test_reads_frames_split_byte_by_byte(self) -> None:
        data = raw_frame(10, 9, CODEC.encode({"fn": "f"}), b"\x91\x01") * 2

        def trickle() -> None:
            for i in range(len(data)):
                self.a.send(data[i:i + 1])
        sender = threading.Thread(target=trickle)
        sender.start()
        for _ in range(2):
            frame = self.reader.read()
            self.assertEqual((frame.type, frame.id, frame.header),
                             (10, 9, {"fn": "f"}))
            self.assertEqual(bytes(frame.body), b"\x91\x01")
        sender.join(TIMEOUT)

    def test_reads_several_frames_from_one_send(self) -> None:
        self.a.sendall(b"".join(raw_frame(21, i) for i in range(50)))
        self.assertEqual([self.reader.read().id for _ in range(50)],
                         list(range(50)))

    def test_large_body_then_small_frame(self) -> None:
        body = bytes(range(256)) * (40 << 10)  # 10 MiB.
        writer = FrameWriter(self.a, CODEC)

        def send() -> None:
            writer.send(FrameType.CALL, 1, {"fn": "f"}, [body])
            writer.send(FrameType.CALL, 2, {"fn": "g"}, [b"\xc0"])
        sender = threading.Thread(target=send)
        sender.start()
        frame = self.reader.read()
        self.assertEqual(frame.body_len, len(body))
        self.assertTrue(frame.body == body)
        frame = self.reader.read()
        self.assertEqual((frame.id, bytes(frame.body)), (2, b"\xc0"))
        sender.join(TIMEOUT)

    def test_a_run_of_large_frames_reuses_one_buffer(self) -> None:
        big = b"\xab" * (20 << 20)  # over the size a buffer is kept at
        writer = FrameWriter(self.a, CODEC)

        def send() -> None:
            for i in (1, 2):
                writer.send(FrameType.CALL, i, {"fn": "f"}, [big])
            writer.send(FrameType.CALL, 3, {"fn": "g"}, [b"\xc0"])
            writer.send(FrameType.CALL, 4, {"fn": "g"}, [b"\xc2"])
        sender = threading.Thread(target=send)
        sender.start()
        first = self.reader.read()
        self.assertTrue(first.body == big)
        grown = self.reader._buf
        second = self.reader.read()
        self.assertTrue(second.body == big)
        self.assertIs(self.reader._buf, grown)
        # A small frame next: the big buffer goes, the frames stay whole.
        third = self.reader.read()
        self.assertEqual((third.id, bytes(third.body)), (3, b"\xc0"))
        self.assertLess(len(self.reader._buf), 1 << 20)
        fourth = self.reader.read()
        self.assertEqual((fourth.id, bytes(fourth.body)), (4, b"\xc2"))
        sender.join(TIMEOUT)

    def test_body_over_the_limit_is_skipped(self) -> None:
        reader = FrameReader(self.b, CODEC, ALL_TYPES, max_body=10)
        self.a.sendall(raw_frame(10, 1, CODEC.encode({"fn": "f"}),
                                 bytes(100000)) + raw_frame(30, 2))
        frame = reader.read()
        self.assertEqual((frame.id, frame.header, frame.body,
                          frame.body_len), (1, {"fn": "f"}, None, 100000))
        self.assertEqual(reader.read().type, 30)

    def test_malformed_prefixes_raise_protocol_error(self) -> None:
        cases = [raw_frame(10, 1, flags=1), raw_frame(99, 1),
                 raw_frame(10, 1, b"\x05"), raw_frame(10, 1, b"\xc1"),
                 struct.pack("<BBHIIQ", 10, 0, 0, (1 << 20) + 1, 0, 1)]
        for data in cases:
            a, b = socket.socketpair()
            with a, b:
                a.sendall(data)
                with self.assertRaises(ProtocolError):
                    FrameReader(b, CODEC, ALL_TYPES).read()

    def test_type_not_allowed_is_a_protocol_error(self) -> None:
        reader = FrameReader(self.b, CODEC, frozenset([10, 30]))
        self.a.sendall(raw_frame(21, 1))
        with self.assertRaises(ProtocolError):
            reader.read()

    def test_end_of_stream_raises_channel_closed(self) -> None:
        self.a.sendall(raw_frame(10, 1)[:7])
        self.a.shutdown(socket.SHUT_WR)
        with self.assertRaises(ChannelClosed):
            self.reader.read()

    def test_writing_to_a_closed_peer_raises_channel_closed(self) -> None:
        self.b.close()
        with self.assertRaises(ChannelClosed):
            FrameWriter(self.a, CODEC).send(FrameType.PONG, 1,
                                            {"busy": False})

    def test_partial_sends_are_completed_in_order(self) -> None:
        sock = TrickleSocket(step=7)
        body = [b"0123456789", bytearray(b"abcdefghij" * 3)]
        FrameWriter(sock, CODEC).send(FrameType.CHUNK, 3, {"k": 1}, body)
        expected = raw_frame(13, 3, CODEC.encode({"k": 1}),
                             b"0123456789" + b"abcdefghij" * 3)
        self.assertEqual(bytes(sock.data), expected)
        self.assertGreater(sock.calls, 5)

    def test_concurrent_writers_keep_frames_whole(self) -> None:
        writer = FrameWriter(self.a, CODEC)
        body = [bytes(300000)]

        def send(fid: int) -> None:
            for _ in range(5):
                writer.send(FrameType.LOG, fid, {"message": "m"}, body)
        threads = [threading.Thread(target=send, args=(i,))
                   for i in range(4)]
        for thread in threads:
            thread.start()
        for _ in range(20):
            frame = self.reader.read()
            self.assertEqual(frame.header, {"message": "m"})
            self.assertEqual(frame.body_len, 300000)
        for thread in threads:
            thread.join(TIMEOUT)


if __name__ == "__main__":
    unittest.main()
