"""The worker's small-call loop, native (C) and Python, against the spec.

Plain calls take a fast loop (snakepit._worker._serve_plain_calls, or
_snakepit_native when it is importable) that hands every frame it does
not fully understand to the general path. These tests send what that
loop must step aside for, and check that a worker with the C loop and
one without it answer every call byte for byte alike. Set
SNAKEPIT_EXPECT_NATIVE=1 to require the C loop (the test run puts the
build's python/ directory on PYTHONPATH for that).
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import struct
import tempfile
import time
import unittest
from typing import Any, List, Tuple

from tests.test_worker import (CALL, CANCEL, CODEC, ERROR, FATAL, GOODBYE,
                               LOG, MOD,
                               PREFIX, RESULT, TIMEOUT, Frame, Worker,
                               WorkerTestCase, send_frame)

INT_EDGES = [0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32,
             2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, -1, -32, -33, -128, -129,
             -32768, -32769, -2 ** 31, -2 ** 31 - 1, -2 ** 63]
LENGTH_EDGES = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536]


def native_maps(pid: int) -> bool:
    """Tells whether process `pid` has loaded _snakepit_native."""
    with open(f"/proc/{pid}/maps") as maps:
        return "_snakepit_native" in maps.read()


def frame_call(fn: str, fid: int, body: bytes) -> bytes:
    head = CODEC.encode({"fn": fn})
    return PREFIX.pack(CALL, 0, 0, len(head), len(body), fid) + head + body


class EdgesTest(WorkerTestCase):
    """Frames and values at the edges of what the fast loop takes."""

    def setUp(self) -> None:
        self.worker = self.start(MOD)

    def test_native_loop_is_in_use_when_expected(self) -> None:
        self.assertEqual(self.worker.result(f"{MOD}.add", [1, 2]), 3)
        if os.environ.get("SNAKEPIT_EXPECT_NATIVE") == "1":
            self.assertTrue(native_maps(self.worker.pid))

    def test_frame_split_across_sends(self) -> None:
        raw = frame_call(f"{MOD}.add", 5, CODEC.encode([40, 2]))
        for cut in (1, 19, 20, 25, len(raw) - 1):
            self.worker.chan.sendall(raw[:cut])
            time.sleep(0.02)
            self.worker.chan.sendall(raw[cut:])
            self.assertEqual(self.worker.finish(5).value(), 42)

    def test_call_and_goodbye_in_one_send(self) -> None:
        raw = frame_call(f"{MOD}.add", 6, CODEC.encode([1, 1]))
        self.worker.chan.sendall(raw + PREFIX.pack(GOODBYE, 0, 0, 0, 0, 0))
        self.assertEqual(self.worker.finish(6).value(), 2)
        self.assertEqual(self.worker.wait(), 0)

    def test_stale_cancel_leaves_later_calls_alone(self) -> None:
        self.assertEqual(self.worker.result(f"{MOD}.add", [1], fid=7), 3)
        send_frame(self.worker.ctl, CANCEL, 7)  # its call is over
        self.worker.ping(1)
        for fid in range(8, 20):
            self.assertEqual(
                self.worker.result(f"{MOD}.add", [fid], fid=fid), fid + 2)

    def test_cancel_before_call_still_wins_after_fast_calls(self) -> None:
        for fid in range(1, 5):
            self.worker.result(f"{MOD}.add", [fid], fid=fid)
        send_frame(self.worker.ctl, CANCEL, 5)
        self.worker.ping(2)
        self.worker.call(f"{MOD}.add", [1, 2], fid=5)
        self.assertEqual(self.worker.finish(5).header["reason"], "cancelled")
        self.assertEqual(self.worker.result(f"{MOD}.add", [1], fid=6), 3)

    def test_functions_alternate_and_headers_change(self) -> None:
        for fid in range(1, 41):
            header = {"timeout_ms": 1000 + fid} if fid % 3 == 0 else None
            if fid % 2:
                got = self.worker.result(f"{MOD}.add", [fid, 1], fid,
                                         header)
                self.assertEqual(got, fid + 1)
            else:
                got = self.worker.result("echo", [fid], fid, header)
                self.assertEqual(got, fid)

    def test_edge_values_round_trip(self) -> None:
        values: List[Any] = list(INT_EDGES)
        values += ["é" * n for n in LENGTH_EDGES]
        values += [b"\x01" * n for n in LENGTH_EDGES]
        values += [[None] * n for n in (0, 15, 16, 65536)]
        values += [{str(i): i for i in range(n)} for n in (0, 15, 16, 300)]
        values += [{1: "int key", b"b": "bytes key", -5: None}]
        values += [1.5, -0.0, float("inf"), True, False, None]
        for fid, value in enumerate(values, 1):
            self.assertEqual(self.worker.result("echo", [value], fid), value)
            self.assertEqual(self.worker.result("echo", {"value": value},
                                                fid), value)

    def test_float32_arguments_arrive_as_float(self) -> None:
        body = b"\x91\xca" + struct.pack(">f", 0.25)
        self.worker.chan.sendall(frame_call("echo", 3, body))
        self.assertEqual(self.worker.finish(3).value(), 0.25)

    def test_depth_up_to_the_limit(self) -> None:
        worker = self.start(MOD, args=["--max-depth", "5"])
        self.assertEqual(worker.result("echo", [[[[[]]]]]), [[[[]]]])
        header = worker.error("echo", [[[[[[]]]]]])
        self.assertEqual(header["reason"], "payload_too_deep")

    def test_bodies_the_fast_loop_refuses_get_the_general_errors(
            self) -> None:
        cases: List[Tuple[bytes, str]] = [
            (b"\x91\xa2\xff\xfe", "serialization_error"),  # bad UTF-8
            (b"\x91\xd4\x01\x00", "serialization_error"),  # ext type
            (b"\x91\x01\x02", "serialization_error"),      # trailing byte
            (b"\xdd\xff\xff\xff\xff\x01", "serialization_error"),  # count
            (b"\x91\xc1", "serialization_error"),          # unused code
            (b"\x05", "serialization_error"),              # not array/map
            (b"\x81\x01\x02", "invalid_argument"),         # int keyword
        ]
        for fid, (body, reason) in enumerate(cases, 1):
            self.worker.chan.sendall(frame_call("echo", fid, body))
            frame = self.worker.finish(fid)
            self.assertEqual((frame.type, frame.header.get("reason")),
                             (ERROR, reason), body)
        self.assertEqual(self.worker.result(f"{MOD}.add", [1]), 3)

    def test_results_the_fast_loop_refuses(self) -> None:
        expected = {
            "int_enum": (RESULT, 1),
            "float_subclass": (RESULT, 1.5),
            "tuple_key": (RESULT, None),
            "bytearray": (RESULT, b"ab"),
            "memoryview": (RESULT, b"ab"),
            "too_big_int": (ERROR, "serialization_error"),
            "too_small_int": (ERROR, "serialization_error"),
            "surrogate": (ERROR, "serialization_error"),
            "set": (ERROR, "serialization_error"),
        }
        for fid, (kind, (ftype, want)) in enumerate(expected.items(), 1):
            self.worker.call(f"{MOD}.special", [kind], fid)
            frame = self.worker.finish(fid)
            self.assertEqual(frame.type, ftype, (kind, frame))
            if ftype == ERROR:
                self.assertEqual(frame.header["reason"], want, kind)
            elif want is not None:
                self.assertEqual(frame.value(), want, kind)

    def test_binding_and_body_errors_keep_their_reasons(self) -> None:
        header = self.worker.error(f"{MOD}.add", [1, 2, 3])
        self.assertEqual(header["reason"], "invalid_argument")
        header = self.worker.error(f"{MOD}.inner_type_error", [])
        self.assertEqual(header["reason"], "python_exception")
        self.assertIn("inner_type_error", header["traceback"])
        self.assertNotIn("_worker.py", header["traceback"])

    def test_log_frames_from_a_thread_never_split_results(self) -> None:
        self.worker.call(f"{MOD}.log_in_background", [2000], fid=1)
        self.assertEqual(self.worker.finish(1).value(), "started")
        for fid in range(2, 302):
            self.assertEqual(
                self.worker.result(f"{MOD}.add", [fid], fid=fid), fid + 2)
        # Every LOG frame parsed whole: drain them to the last one.
        deadline = time.monotonic() + TIMEOUT
        logs = 0
        self.worker.call(f"{MOD}.add", [0], fid=999)
        while time.monotonic() < deadline:
            frame = self.worker.recv()
            if frame.type == RESULT:
                break
            self.assertEqual(frame.type, LOG)
            logs += 1
        self.assertEqual(frame.id, 999)

    def test_signal_during_a_partial_send_is_handled_at_once(self) -> None:
        # A Python signal handler runs as soon as the main thread is back
        # in Python code; the loop must not sit in recv() with a handler
        # pending (a SIGTERM handler would then only run at the next CALL).
        marker = os.path.join(tempfile.mkdtemp(), "marker")
        self.worker.result(f"{MOD}.mark_on_sigusr1", [marker])
        # 4 MB cannot fit in the socket buffer: the worker blocks in
        # sendmsg with part of the frame sent, and the signal then ends
        # that sendmsg early instead of failing it with EINTR.
        self.worker.call(f"{MOD}.text", [4 << 20], fid=2)
        readable, _, _ = select.select([self.worker.chan], [], [], TIMEOUT)
        self.assertTrue(readable)
        time.sleep(0.2)
        os.kill(self.worker.pid, signal.SIGUSR1)
        self.assertEqual(len(self.worker.finish(2).value()), 4 << 20)
        deadline = time.monotonic() + 5
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertTrue(os.path.exists(marker),
                        "the SIGUSR1 handler had not run 5 s after the "
                        "result was sent")

    def test_header_over_the_limit_is_refused_in_a_grown_buffer(
            self) -> None:
        # The general path refuses a header over MAX_HEADER_LEN (1 MiB)
        # with FATAL protocol_error; so must the fast loop when a big
        # earlier call grew the buffer enough to take such a frame whole.
        chan = self.worker.chan
        chan.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.assertEqual(
            self.worker.result(f"{MOD}.length", [b"z" * (3 << 20)]), 3 << 20)
        head = CODEC.encode({"fn": f"{MOD}.add", "pad": "x" * (1 << 20)})
        body = CODEC.encode([1, 2])
        # Queued whole while the worker sleeps, so one recv takes it all.
        self.worker.call(f"{MOD}.pause", [0.5], fid=2)
        self.worker.wait_busy()
        chan.sendall(PREFIX.pack(CALL, 0, 0, len(head), len(body), 3)
                     + head + body)
        self.assertEqual(self.worker.finish(2).value(), 0.5)
        frame = self.worker.recv()
        self.assertEqual((frame.type, frame.header.get("reason")),
                         (FATAL, "protocol_error"), frame)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 4 else 7)
    if kind == 0:
        return rng.choice(INT_EDGES + [rng.randrange(-2 ** 63, 2 ** 64)])
    if kind == 1:
        return rng.choice([None, True, False, 0.1, -1e300, float("inf")])
    if kind == 2:
        return "".join(chr(rng.choice([65, 0xe9, 0x1F40D, 0x2028]))
                       for _ in range(rng.choice(LENGTH_EDGES[:8])))
    if kind == 3:
        return bytes(rng.randrange(256)
                     for _ in range(rng.choice(LENGTH_EDGES[:8])))
    if kind in (4, 5, 6):
        return rng.randrange(-100, 100)
    if kind in (7, 8):
        return [random_value(rng, depth + 1)
                for _ in range(rng.choice([0, 1, 2, 15, 16]))]
    keys = [rng.choice(["a", "bb", 7, -1, b"k"]) for _ in range(4)]
    return {key: random_value(rng, depth + 1) for key in keys}


def mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    how = rng.randrange(3)
    if how == 0 and data:
        data[rng.randrange(len(data))] = rng.randrange(256)
    elif how == 1 and len(data) > 1:
        del data[rng.randrange(1, len(data)):]
    else:
        data += bytes([rng.randrange(256)])
    return bytes(data)


class NativeMatchesPythonTest(unittest.TestCase):
    """The C loop and the Python loop answer alike, frame for frame."""

    def setUp(self) -> None:
        self.workers = [Worker(MOD, env={"SNAKEPIT_NATIVE": flag})
                        for flag in ("1", "0")]
        for worker in self.workers:
            self.addCleanup(worker.close)
            worker.handshake()
        self.assertFalse(native_maps(self.workers[1].pid))

    def ask(self, raw: bytes, fid: int) -> List[Frame]:
        frames = []
        for worker in self.workers:
            worker.chan.sendall(raw)
            frames.append(worker.finish(fid))
        return frames

    def test_random_values_and_broken_bodies(self) -> None:
        rng = random.Random(20261204)
        deadline = time.monotonic() + 60
        for fid in range(1, 601):
            if time.monotonic() > deadline:
                break
            value = random_value(rng)
            args = [value] if fid % 2 else {"value": value}
            body = CODEC.encode(args)
            if fid % 3 == 0:
                body = mutate(rng, body)
            native, python = self.ask(frame_call("echo", fid, body), fid)
            context = f"call {fid}, body {body[:60]!r}..."
            self.assertEqual(native.type, python.type, context)
            self.assertTrue(native.body == python.body, context)
            native.header.pop("traceback", None)
            python.header.pop("traceback", None)
            self.assertEqual(native.header, python.header, context)


if __name__ == "__main__":
    unittest.main()
