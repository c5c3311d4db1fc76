"""End-to-end tests of `python -m snakepit._worker` against docs/protocol.md.

Each test starts a real worker the way the host does: posix_spawn, a
socketpair on fd 3 (channel) and one on fd 4 (control), stdout and stderr
on pipes that a thread drains, and the worker leading its own process
group. The tests frame bytes themselves (not with snakepit._protocol), so a
bug there cannot hide behind a matching bug here. Every wait is bounded.
"""

from __future__ import annotations

import fcntl
import math
import os
import platform
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

TESTS_DIR = Path(__file__).resolve().parent
PYTHON_DIR = TESTS_DIR.parent
FIXTURES_DIR = TESTS_DIR / "fixtures"
sys.path.insert(0, str(PYTHON_DIR))

import snakepit  # noqa: E402
from snakepit import _accel, _codec  # noqa: E402

TIMEOUT = 15.0
PREFIX = struct.Struct("<BBHIIQ")
CODEC = _codec.new_codec()

HELLO, READY, FATAL = 1, 2, 3
CALL, RESULT, ERROR, CHUNK, LOG = 10, 11, 12, 13, 14
CANCEL, PING, PONG = 20, 21, 22
GOODBYE = 30

MOD = "sp_fixture_mod"


class Frame(NamedTuple):
    type: int
    id: int
    header: Dict[Any, Any]
    body: bytes

    def value(self) -> Any:
        return CODEC.decode(self.body)


def send_frame(sock: socket.socket, ftype: int, fid: int = 0,
               header: Optional[Dict[str, Any]] = None, body: bytes = b"",
               flags: int = 0) -> None:
    head = CODEC.encode(header) if header else b""
    sock.sendall(PREFIX.pack(ftype, flags, 0, len(head), len(body), fid)
                 + head + body)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError(f"end of stream after {got} of {size} bytes")
        got += n
    return bytes(buf)


def recv_frame(sock: socket.socket) -> Frame:
    ftype, flags, reserved, hlen, blen, fid = PREFIX.unpack(
        recv_exact(sock, PREFIX.size))
    assert flags == 0 and reserved == 0, (flags, reserved)
    header = CODEC.decode(recv_exact(sock, hlen)) if hlen else {}
    assert isinstance(header, dict), header
    return Frame(ftype, fid, header, recv_exact(sock, blen))


class _Drain(threading.Thread):
    """Reads a pipe to its end, like the host's log drain."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self._fd = fd
        self._chunks: List[bytes] = []
        self._lock = threading.Lock()
        self.start()

    def run(self) -> None:
        while True:
            data = os.read(self._fd, 65536)
            if not data:
                break
            with self._lock:
                self._chunks.append(data)
        os.close(self._fd)

    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", "replace")


def wait_for_exit(pid: int, timeout: float, what: str) -> int:
    """Reaps child `pid`; returns its exit code (negative: killed by that
    signal). Fails the test if it has not exited within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} {pid} did not exit")
        time.sleep(0.01)


class Worker:
    """A worker process started as the host starts one."""

    def __init__(self, *modules: str, args: List[str] = (),
                 env: Optional[Dict[str, str]] = None) -> None:
        self.chan, child_chan = socket.socketpair()
        self.ctl, child_ctl = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # Above fd 10 first, so no dup2 onto 1-4 can clobber another source.
        sources = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in
                   (child_chan.fileno(), child_ctl.fileno(), out_w, err_w)]
        actions = [(os.POSIX_SPAWN_DUP2, fd, target)
                   for fd, target in zip(sources, (3, 4, 1, 2))]
        argv = [sys.executable, "-m", "snakepit._worker",
                "--path", str(FIXTURES_DIR), "--pool", "testpool"]
        for module in modules:
            argv += ["--module", module]
        argv += list(args)
        full_env = dict(os.environ)
        # Would make C stdout unbuffered and hide a missing setvbuf.
        full_env.pop("PYTHONUNBUFFERED", None)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(PYTHON_DIR)] + [p for p in [os.environ.get("PYTHONPATH")]
                                 if p])
        full_env.update(env or {})
        try:
            self.pid = os.posix_spawn(sys.executable, argv, full_env,
                                      file_actions=actions, setpgroup=0)
        finally:
            for fd in sources + [out_w, err_w]:
                os.close(fd)
            child_chan.close()
            child_ctl.close()
        self.status: Optional[int] = None
        self.stdout = _Drain(out_r)
        self.stderr = _Drain(err_r)
        self.chan.settimeout(TIMEOUT)
        self.ctl.settimeout(TIMEOUT)

    # Frames.

    def send(self, ftype: int, fid: int = 0,
             header: Optional[Dict[str, Any]] = None,
             body: bytes = b"") -> None:
        send_frame(self.chan, ftype, fid, header, body)

    def recv(self) -> Frame:
        return recv_frame(self.chan)

    def call(self, fn: str, args: Any = None, fid: int = 1,
             header: Optional[Dict[str, Any]] = None) -> None:
        body = b"" if args is None else CODEC.encode(args)
        self.send(CALL, fid, dict({"fn": fn}, **(header or {})), body)

    def finish(self, fid: int) -> Frame:
        """Returns the final frame of call `fid`, skipping LOG frames."""
        while True:
            frame = self.recv()
            if frame.type in (RESULT, ERROR):
                assert frame.id == fid, (frame.id, fid)
                return frame
            assert frame.type == LOG, frame

    def result(self, fn: str, args: Any = None, fid: int = 1,
               header: Optional[Dict[str, Any]] = None) -> Any:
        self.call(fn, args, fid, header)
        frame = self.finish(fid)
        if frame.type != RESULT:
            raise AssertionError(f"{fn}: {frame.header}")
        return frame.value()

    def error(self, fn: str, args: Any = None, fid: int = 1) -> Dict:
        self.call(fn, args, fid)
        frame = self.finish(fid)
        if frame.type != ERROR:
            raise AssertionError(f"{fn}: expected ERROR, got {frame}")
        return frame.header

    def handshake(self) -> List[Dict[str, Any]]:
        hello = self.recv()
        assert hello.type == HELLO, hello
        ready = self.recv()
        assert ready.type == READY, (ready, self.stderr.text())
        return ready.header["functions"]

    def ping(self, fid: int) -> Frame:
        send_frame(self.ctl, PING, fid)
        return recv_frame(self.ctl)

    def wait_busy(self) -> None:
        """Waits until the worker's main thread has taken up a call."""
        deadline = time.monotonic() + TIMEOUT
        while not self.ping(1000).header["busy"]:
            if time.monotonic() > deadline:
                raise AssertionError("the worker never became busy")
            time.sleep(0.01)

    # The process.

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Returns the exit code (negative: killed by that signal)."""
        if self.status is None:
            self.status = wait_for_exit(self.pid, timeout, "worker")
        return self.status

    def close(self) -> None:
        if self.status is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait()
        self.chan.close()
        self.ctl.close()
        self.stdout.join(TIMEOUT)
        self.stderr.join(TIMEOUT)


def process_gone(pid: int, timeout: float = TIMEOUT) -> bool:
    """Tells whether `pid` ends (or is a zombie) within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


class WorkerTestCase(unittest.TestCase):
    def start(self, *modules: str, args: List[str] = (),
              handshake: bool = True) -> Worker:
        worker = Worker(*modules, args=list(args))
        self.addCleanup(worker.close)
        if handshake:
            worker.handshake()
        return worker

    def temp_path(self, name: str) -> str:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        return os.path.join(directory.name, name)


class SharedWorkerTestCase(WorkerTestCase):
    """Tests that share one worker; each checks the worker still serves."""

    worker: Worker

    @classmethod
    def setUpClass(cls) -> None:
        cls.worker = Worker(MOD, "sp_fixture_future")
        cls.catalogue = cls.worker.handshake()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.worker.close()

    def tearDown(self) -> None:
        self.assertEqual(self.worker.result(f"{MOD}.add", [1], fid=999), 3)


# Handshake ------------------------------------------------------------------

class HandshakeTest(WorkerTestCase):
    def test_hello_comes_first_and_describes_the_worker(self) -> None:
        worker = self.start(MOD, handshake=False)
        hello = worker.recv()
        self.assertEqual(hello.type, HELLO)
        self.assertEqual(hello.id, 0)
        self.assertEqual(hello.body, b"")
        self.assertEqual(hello.header, {
            "protocol": 1,
            "pid": worker.pid,
            "python": platform.python_version(),
            "runtime": snakepit.__version__,
            "codec": "msgpack" if _codec.HAVE_MSGPACK else "builtin",
            "small_calls": "python" if _accel.native is None else "c",
        })

    def test_hello_and_pong_come_during_a_slow_import(self) -> None:
        worker = self.start("sp_fixture_slow", handshake=False)
        worker.chan.settimeout(5.0)
        self.assertEqual(worker.recv().type, HELLO)
        self.assertEqual(worker.ping(3).header, {"busy": False})

    def test_ready_lists_the_catalogue(self) -> None:
        worker = self.start(MOD, "sp_fixture_future", handshake=False)
        self.assertEqual(worker.recv().type, HELLO)
        ready = worker.recv()
        self.assertEqual((ready.type, ready.id, ready.body), (READY, 0, b""))
        entries = {e["name"]: e for e in ready.header["functions"]}
        self.assertEqual(entries[f"{MOD}.add"], {
            "name": f"{MOD}.add",
            "kind": "function",
            "doc": "Adds two numbers.\n\nThe second defaults to 2.",
            "params": [
                {"name": "a", "kind": "positional_or_keyword",
                 "annotation": "int"},
                {"name": "b", "kind": "positional_or_keyword",
                 "annotation": "int", "default": "2"},
            ],
            "returns": "int",
        })
        kinds = {name: e["kind"] for name, e in entries.items()}
        self.assertEqual(kinds["echo"], "function")
        self.assertEqual(kinds[f"{MOD}.async_add"], "async")
        self.assertEqual(kinds[f"{MOD}.count"], "generator")
        self.assertEqual(kinds[f"{MOD}.async_count"], "async_generator")
        self.assertNotIn(f"{MOD}.echo_value", entries)

    def test_context_parameter_is_not_listed(self) -> None:
        worker = self.start(MOD, "sp_fixture_future", handshake=False)
        worker.recv()
        entries = {e["name"]: e for e in worker.recv().header["functions"]}
        self.assertEqual(
            [p["name"] for p in entries[f"{MOD}.info"]["params"]],
            ["tag", "suffix"])
        self.assertEqual(entries[f"{MOD}.info"]["returns"], "dict")
        self.assertEqual(entries["future.describe"], {
            "name": "future.describe",
            "kind": "function",
            "doc": "",
            "params": [
                {"name": "items", "kind": "positional_or_keyword",
                 "annotation": "list[str]"},
                {"name": "flag", "kind": "keyword_only",
                 "annotation": "bool", "default": "False"},
            ],
            "returns": "numpy.ndarray",
        })
        self.assertEqual(
            [p["name"] for p in entries["future.first_context"]["params"]],
            ["x"])

    def test_catalogue_gives_every_parameter_kind(self) -> None:
        worker = self.start("sp_fixture_future", handshake=False)
        worker.recv()
        entries = {e["name"]: e for e in worker.recv().header["functions"]}
        params = entries["future.shapes"]["params"]
        self.assertEqual([(p["name"], p["kind"], p["annotation"])
                          for p in params], [
            ("a", "positional_only", ""),
            ("b", "positional_or_keyword", "int"),
            ("args", "var_positional", "int"),
            ("c", "keyword_only", ""),
            ("kwargs", "var_keyword", "'float'"),
        ])
        self.assertEqual(entries["future.shapes"]["returns"], "None")

    def test_start_hooks_run_once_in_order(self) -> None:
        worker = self.start("sp_fixture_hooks")
        self.assertEqual(worker.result("sp_fixture_hooks.hook_log"),
                         ["first", "second"])


# Calls ----------------------------------------------------------------------

class CallTest(SharedWorkerTestCase):
    def test_positional_arguments(self) -> None:
        self.assertEqual(self.worker.result(f"{MOD}.add", [2, 3]), 5)

    def test_keyword_arguments(self) -> None:
        self.assertEqual(self.worker.result(f"{MOD}.add", {"a": 2, "b": 5}),
                         7)
        self.assertEqual(self.worker.result(f"{MOD}.keywords", {"x": ["s"]}),
                         [["s"], 3])

    def test_empty_body_means_no_arguments(self) -> None:
        self.assertEqual(self.worker.result(f"{MOD}.constant"), 42)
        self.worker.call(f"{MOD}.add", None, fid=5)
        frame = self.worker.finish(5)
        self.assertEqual(frame.header["reason"], "invalid_argument")

    def test_result_frame_has_the_call_id_and_empty_header(self) -> None:
        self.worker.call(f"{MOD}.add", [1, 1], fid=123456789012)
        frame = self.worker.recv()
        self.assertEqual((frame.type, frame.id, frame.header),
                         (RESULT, 123456789012, {}))
        self.assertEqual(frame.value(), 2)

    def test_values_round_trip(self) -> None:
        value = {"bytes": b"\x00\xff", "int keys": {1: "one", -2: [None]},
                 "big": 2 ** 64 - 1, "small": -2 ** 63, "float": -0.0,
                 "text": "emoji \U0001F40D nul \x00 sep \u2028",
                 "nested": [[[[]]]], "bool": [True, False]}
        got = self.worker.result("echo", [value])
        self.assertEqual(got, value)
        self.assertEqual(math.copysign(1.0, got["float"]), -1.0)
        nan = self.worker.result("echo", [float("nan")])
        self.assertTrue(math.isnan(nan))

    def test_tuple_result_travels_as_array(self) -> None:
        self.assertEqual(self.worker.result("echo", [(1, (2, 3))]),
                         [1, [2, 3]])

    def test_context_is_injected(self) -> None:
        got = self.worker.result(f"{MOD}.info", ["t"], fid=42,
                                 header={"timeout_ms": 5000})
        self.assertEqual(got["call_id"], 42)
        self.assertEqual(got["function"], f"{MOD}.info")
        self.assertEqual(got["pool"], "testpool")
        self.assertEqual(got["pid"], self.worker.pid)
        self.assertFalse(got["cancelled"])
        self.assertTrue(0 < got["remaining"] <= 5.0, got["remaining"])
        self.assertEqual(got["tag"], "t")

    def test_context_goes_before_later_positional_arguments(self) -> None:
        got = self.worker.result(f"{MOD}.info", ["a", "b"])
        self.assertEqual(got["tag"], "ab")
        self.assertIsNone(got["remaining"])
        got = self.worker.result(f"{MOD}.info", {"tag": "k", "suffix": "w"})
        self.assertEqual(got["tag"], "kw")
        self.assertEqual(
            self.worker.result("future.first_context", [4], fid=3), 43)

    def test_context_under_string_annotation(self) -> None:
        got = self.worker.result("future.describe", [["i"]], fid=8)
        self.assertEqual(got, {"items": ["i"], "flag": False, "call_id": 8})

    def test_context_cannot_be_passed_by_the_host(self) -> None:
        header = self.worker.error(f"{MOD}.info", {"tag": "x", "ctx": 1})
        self.assertEqual(header["reason"], "invalid_argument")

    def test_async_function(self) -> None:
        self.assertEqual(self.worker.result(f"{MOD}.async_add", [1, 2]), 3)
        header = self.worker.error(f"{MOD}.async_fail")
        self.assertEqual(header["reason"], "python_exception")
        self.assertEqual(header["type"], "KeyError")
        self.assertIn("async_fail", header["traceback"])

    def test_generator_sends_a_chunk_per_yield_then_result(self) -> None:
        self.worker.call(f"{MOD}.count", [3], fid=7)
        frames = [self.worker.recv() for _ in range(4)]
        self.assertEqual([(f.type, f.id) for f in frames],
                         [(CHUNK, 7)] * 3 + [(RESULT, 7)])
        self.assertEqual([f.value() for f in frames], [0, 1, 2, "done"])
        self.assertEqual([f.header for f in frames], [{}] * 4)

    def test_async_generator_sends_chunks(self) -> None:
        self.worker.call(f"{MOD}.async_count", [2], fid=9)
        frames = [self.worker.recv() for _ in range(3)]
        self.assertEqual([(f.type, f.value()) for f in frames],
                         [(CHUNK, 0), (CHUNK, 1), (RESULT, None)])

    def test_exception_with_two_argument_init(self) -> None:
        header = self.worker.error(f"{MOD}.raise_two_arg")
        self.assertEqual(header["reason"], "python_exception")
        self.assertEqual(header["type"], f"{MOD}.TwoArgError")
        self.assertEqual(header["message"], "7: bad thing")
        self.assertIn("raise TwoArgError(7", header["traceback"])
        self.assertNotIn("_worker.py", header["traceback"])

    def test_exception_whose_str_raises(self) -> None:
        header = self.worker.error(f"{MOD}.raise_bad_str")
        self.assertEqual(header["reason"], "python_exception")
        self.assertEqual(header["type"], f"{MOD}.BadStr")
        self.assertEqual(header["message"],
                         "<unprintable BadStr: __str__ raised ValueError>")
        self.assertIn("raise BadStr()", header["traceback"])

    def test_builtin_exception_type_has_a_bare_name(self) -> None:
        header = self.worker.error(f"{MOD}.divide", [1, 0])
        self.assertEqual(header["type"], "ZeroDivisionError")
        self.assertEqual(header["message"], "division by zero")

    def test_system_exit_in_a_call_is_reported_not_obeyed(self) -> None:
        header = self.worker.error(f"{MOD}.exits")
        self.assertEqual((header["reason"], header["type"]),
                         ("python_exception", "SystemExit"))

    def test_unencodable_result_names_type_and_path(self) -> None:
        header = self.worker.error(f"{MOD}.unencodable")
        self.assertEqual(header["reason"], "serialization_error")
        self.assertEqual(header["path"], "$.a[2]")
        self.assertIn("set", header["message"])
        self.assertIn("$.a[2]", header["message"])

    def test_unencodable_chunk_ends_the_call(self) -> None:
        marker = self.temp_path("closed")
        self.worker.call(f"{MOD}.chunk_unencodable", [marker], fid=11)
        first = self.worker.recv()
        self.assertEqual((first.type, first.value()), (CHUNK, 1))
        final = self.worker.recv()
        self.assertEqual((final.type, final.id), (ERROR, 11))
        self.assertEqual(final.header["reason"], "serialization_error")
        self.assertEqual(final.header["path"], "$")
        self.assertTrue(os.path.exists(marker))

    def test_unknown_function(self) -> None:
        header = self.worker.error("no.such.function")
        self.assertEqual(header["reason"], "unknown_function")
        self.assertIn("no.such.function", header["message"])

    def test_call_without_fn_is_unknown_function(self) -> None:
        self.worker.send(CALL, 4, {"timeout_ms": 10})
        self.assertEqual(self.worker.finish(4).header["reason"],
                         "unknown_function")

    def test_arguments_that_do_not_bind_are_invalid_argument(self) -> None:
        for args in ([1, 2, 3], {"a": 1, "zzz": 2}, {}):
            header = self.worker.error(f"{MOD}.add", args)
            self.assertEqual(header["reason"], "invalid_argument", args)
            self.assertNotIn("type", header)
        header = self.worker.error(f"{MOD}.count", [1, 2])
        self.assertEqual(header["reason"], "invalid_argument")
        header = self.worker.error(f"{MOD}.async_add", [1])
        self.assertEqual(header["reason"], "invalid_argument")

    def test_non_string_keyword_is_invalid_argument(self) -> None:
        header = self.worker.error(f"{MOD}.add", {1: 2})
        self.assertEqual(header["reason"], "invalid_argument")

    def test_type_error_inside_the_function_is_python_exception(self) -> None:
        header = self.worker.error(f"{MOD}.inner_type_error")
        self.assertEqual(header["reason"], "python_exception")
        self.assertEqual(header["type"], "TypeError")

    def test_undecodable_arguments_are_serialization_error(self) -> None:
        for body in (b"\xc1", b"\x92\x01", b"\x01", b"\xa2\xff\xfe",
                     CODEC.encode([1]) + b"\x00"):
            self.worker.send(CALL, 6, {"fn": f"{MOD}.add"}, body)
            header = self.worker.finish(6).header
            self.assertEqual(header["reason"], "serialization_error", body)

    def test_too_deep_arguments_are_payload_too_deep(self) -> None:
        body = b"\x91" * 200 + b"\x01"
        self.worker.send(CALL, 6, {"fn": "echo"}, body)
        header = self.worker.finish(6).header
        self.assertEqual(header["reason"], "payload_too_deep")

    def test_too_deep_result_is_payload_too_deep(self) -> None:
        header = self.worker.error(f"{MOD}.nested", [600])
        self.assertEqual(header["reason"], "payload_too_deep")
        self.assertTrue(header["path"].startswith("$[0][0]"))
        self.assertEqual(len(self.worker.result(f"{MOD}.nested", [128])), 1)

    def test_log_records_travel_as_log_frames(self) -> None:
        self.worker.call(f"{MOD}.log_lines", None, fid=21)
        logs = [self.worker.recv() for _ in range(2)]
        self.assertEqual([(f.type, f.id) for f in logs], [(LOG, 21)] * 2)
        self.assertEqual(logs[0].header, {"level": 20,
                                          "logger": "snakepit.call",
                                          "message": "hello log"})
        self.assertEqual(logs[1].header["level"], 30)
        final = self.worker.recv()
        self.assertEqual((final.type, final.value()), (RESULT, "logged"))

    def test_output_on_stdout_never_reaches_the_channel(self) -> None:
        self.assertEqual(self.worker.result(f"{MOD}.noisy"),
                         "quiet channel")
        # C's puts shows up only if the worker made C stdout line-buffered:
        # the worker never exits here, so nothing else would flush it.
        wanted = [(self.worker.stdout, "from-print"),
                  (self.worker.stdout, "from-os-write"),
                  (self.worker.stdout, "from-c-puts"),
                  (self.worker.stderr, "from-stderr")]
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if all(word in pipe.text() for pipe, word in wanted):
                break
            time.sleep(0.02)
        for pipe, word in wanted:
            self.assertIn(word, pipe.text())


# Cancellation and liveness ---------------------------------------------------

class CancelTest(WorkerTestCase):
    def setUp(self) -> None:
        self.worker = self.start(MOD)

    def test_cancel_closes_a_generator_and_ends_with_cancelled(self) -> None:
        marker = self.temp_path("closed")
        self.worker.call(f"{MOD}.ticker", [marker], fid=31)
        for _ in range(2):
            self.assertEqual(self.worker.recv().type, CHUNK)
        send_frame(self.worker.ctl, CANCEL, 31)
        while True:
            frame = self.worker.recv()
            self.assertEqual(frame.id, 31)
            if frame.type != CHUNK:
                break
        self.assertEqual(frame.type, ERROR)
        self.assertEqual(frame.header["reason"], "cancelled")
        with open(marker) as f:
            self.assertEqual(f.read(), "closed")
        self.assertEqual(self.worker.result(f"{MOD}.add", [1, 1]), 2)

    def test_cancel_cancels_an_async_call(self) -> None:
        self.worker.call(f"{MOD}.async_sleep", [60], fid=32)
        self.worker.wait_busy()
        send_frame(self.worker.ctl, CANCEL, 32)
        frame = self.worker.finish(32)
        self.assertEqual(frame.header["reason"], "cancelled")
        self.assertEqual(self.worker.result(f"{MOD}.async_add", [1, 1]), 2)

    def test_cancel_closes_an_async_generator(self) -> None:
        marker = self.temp_path("closed")
        self.worker.call(f"{MOD}.async_ticker", [marker], fid=33)
        self.assertEqual(self.worker.recv().type, CHUNK)
        send_frame(self.worker.ctl, CANCEL, 33)
        while True:
            frame = self.worker.recv()
            if frame.type != CHUNK:
                break
        self.assertEqual(frame.header["reason"], "cancelled")
        self.assertTrue(os.path.exists(marker))

    def test_ping_answers_while_a_call_holds_the_gil(self) -> None:
        self.worker.call(f"{MOD}.spin", [TIMEOUT * 2], fid=34)
        self.worker.wait_busy()
        pong = self.worker.ping(77)
        self.assertEqual((pong.type, pong.id, pong.header),
                         (PONG, 77, {"busy": True}))
        send_frame(self.worker.ctl, CANCEL, 34)
        frame = self.worker.finish(34)
        # A function that returns after a cancel sends its normal result.
        self.assertEqual(frame.type, RESULT)
        self.assertTrue(frame.value()["cancelled"])
        self.assertEqual(self.worker.ping(78).header, {"busy": False})

    def test_cancel_for_another_id_is_ignored(self) -> None:
        self.worker.call(f"{MOD}.spin", [0.3], fid=35)
        self.worker.wait_busy()
        send_frame(self.worker.ctl, CANCEL, 12345)
        frame = self.worker.finish(35)
        self.assertEqual(frame.type, RESULT)
        self.assertFalse(frame.value()["cancelled"])

    def test_cancel_that_overtakes_its_call_still_applies(self) -> None:
        marker = self.temp_path("closed")
        send_frame(self.worker.ctl, CANCEL, 36)
        self.worker.ping(2)  # The control thread has seen the CANCEL.
        self.worker.call(f"{MOD}.ticker", [marker], fid=36)
        frame = self.worker.finish(36)
        self.assertEqual(frame.header["reason"], "cancelled")

    def test_cancel_that_overtakes_a_plain_call_stops_it_before_it_runs(
            self) -> None:
        send_frame(self.worker.ctl, CANCEL, 37)
        self.worker.ping(3)  # The control thread has seen the CANCEL.
        self.worker.call(f"{MOD}.add", [1, 2], fid=37)
        frame = self.worker.finish(37)
        self.assertEqual(frame.header["reason"], "cancelled")


# Limits ---------------------------------------------------------------------

class LimitTest(WorkerTestCase):
    def test_64_mib_arguments_and_result(self) -> None:
        worker = self.start(MOD)
        size = 64 << 20
        self.assertEqual(worker.result(f"{MOD}.length", [bytes(size)]),
                         size)
        worker.call(f"{MOD}.zeros", [size], fid=2)
        frame = worker.finish(2)
        self.assertEqual(len(frame.value()), size)
        self.assertEqual(worker.result(f"{MOD}.add", [1, 2]), 3)

    def test_result_over_the_payload_limit(self) -> None:
        worker = self.start(MOD, args=["--max-payload", "1000"])
        header = worker.error(f"{MOD}.zeros", [2000])
        self.assertEqual(header["reason"], "payload_too_large")
        self.assertEqual(header["message"],
                         "result of 2003 bytes exceeds the 1000-byte "
                         "payload limit (worker→host)")
        self.assertEqual(len(worker.result(f"{MOD}.zeros", [990])), 990)

    def test_chunk_over_the_payload_limit(self) -> None:
        worker = self.start(MOD, args=["--max-payload", "1000"])
        worker.call(f"{MOD}.zero_chunks", [3, 2000], fid=3)
        header = worker.finish(3).header
        self.assertEqual(header["reason"], "payload_too_large")
        self.assertIn("chunk of 2003 bytes", header["message"])

    def test_arguments_over_the_payload_limit(self) -> None:
        worker = self.start(MOD, args=["--max-payload", "1000"])
        header = worker.error(f"{MOD}.length", [bytes(5000)])
        self.assertEqual(header["reason"], "payload_too_large")
        self.assertIn("(host→worker)", header["message"])
        self.assertEqual(worker.result(f"{MOD}.length", [b"abc"]), 3)

    def test_depth_limit_follows_max_depth(self) -> None:
        worker = self.start(MOD, args=["--max-depth", "4"])
        self.assertEqual(worker.result("echo", [[[[1]]]]), [[[1]]])
        header = worker.error("echo", [[[[[1]]]]])
        self.assertEqual(header["reason"], "payload_too_deep")


# Lifecycle ------------------------------------------------------------------

class LifecycleTest(WorkerTestCase):
    def expect_fatal(self, worker: Worker, reason: str) -> Dict[str, Any]:
        frame = worker.recv()
        self.assertEqual((frame.type, frame.id), (FATAL, 0), frame)
        self.assertEqual(frame.header["reason"], reason)
        self.assertEqual(worker.wait(), 3)
        return frame.header

    def test_import_error_is_fatal(self) -> None:
        worker = self.start("sp_fixture_broken", handshake=False)
        self.assertEqual(worker.recv().type, HELLO)
        header = self.expect_fatal(worker, "import_error")
        self.assertEqual(header["type"], "RuntimeError")
        self.assertIn("sp_fixture_broken", header["message"])
        self.assertIn("broken on purpose", header["message"])
        self.assertIn("raise RuntimeError", header["traceback"])

    def test_missing_module_is_fatal(self) -> None:
        worker = self.start("sp_no_such_module", handshake=False)
        self.assertEqual(worker.recv().type, HELLO)
        header = self.expect_fatal(worker, "import_error")
        self.assertEqual(header["type"], "ModuleNotFoundError")

    def test_failing_start_hook_is_fatal(self) -> None:
        worker = self.start("sp_fixture_bad_hook", handshake=False)
        self.assertEqual(worker.recv().type, HELLO)
        header = self.expect_fatal(worker, "start_hook_failed")
        self.assertIn("hook went wrong", header["message"])
        self.assertIn("explode", header["traceback"])

    def test_goodbye_exits_with_status_0(self) -> None:
        worker = self.start(MOD)
        self.assertEqual(worker.result(f"{MOD}.async_add", [1, 2]), 3)
        worker.send(GOODBYE)
        self.assertEqual(worker.wait(), 0)

    def test_goodbye_lets_the_current_call_finish(self) -> None:
        worker = self.start(MOD)
        worker.call(f"{MOD}.spin", [0.3], fid=5)
        worker.send(GOODBYE)
        self.assertEqual(worker.finish(5).type, RESULT)
        self.assertEqual(worker.wait(), 0)

    def test_end_of_channel_kills_the_process_group(self) -> None:
        worker = self.start(MOD)
        child = worker.result(f"{MOD}.spawn_sleeper")
        worker.chan.shutdown(socket.SHUT_RDWR)
        self.assertEqual(worker.wait(), -signal.SIGKILL)
        self.assertTrue(process_gone(child))

    def test_end_of_control_socket_kills_the_process_group(self) -> None:
        worker = self.start(MOD)
        child = worker.result(f"{MOD}.spawn_sleeper")
        worker.ctl.shutdown(socket.SHUT_RDWR)
        self.assertEqual(worker.wait(), -signal.SIGKILL)
        self.assertTrue(process_gone(child))

    def test_end_of_control_socket_during_a_call(self) -> None:
        worker = self.start(MOD)
        worker.call(f"{MOD}.spin", [TIMEOUT * 2], fid=5)
        worker.ctl.shutdown(socket.SHUT_RDWR)
        self.assertEqual(worker.wait(), -signal.SIGKILL)

    def test_host_pid_mismatch_exits_at_start(self) -> None:
        worker = Worker(MOD, env={"SNAKEPIT_HOST_PID": "1"})
        self.addCleanup(worker.close)
        self.assertEqual(worker.recv().type, HELLO)
        self.assertEqual(worker.wait(), -signal.SIGKILL)

    def test_bad_flags_are_a_protocol_error(self) -> None:
        worker = self.start(MOD)
        send_frame(worker.chan, CALL, 1, {"fn": "echo"}, b"\x90", flags=1)
        self.expect_fatal(worker, "protocol_error")

    def test_unknown_frame_type_is_a_protocol_error(self) -> None:
        for ftype in (99, RESULT, PING):
            worker = self.start(MOD)
            send_frame(worker.chan, ftype, 1)
            header = self.expect_fatal(worker, "protocol_error")
            self.assertIn(str(ftype), header["message"])

    def test_header_that_is_not_a_map_is_a_protocol_error(self) -> None:
        worker = self.start(MOD)
        worker.chan.sendall(PREFIX.pack(CALL, 0, 0, 1, 0, 1) + b"\x05")
        self.expect_fatal(worker, "protocol_error")
        worker = self.start(MOD)
        worker.chan.sendall(PREFIX.pack(CALL, 0, 0, 2, 0, 1) + b"\xc1\x00")
        self.expect_fatal(worker, "protocol_error")

    def test_header_over_the_limit_is_a_protocol_error(self) -> None:
        worker = self.start(MOD)
        worker.chan.sendall(PREFIX.pack(CALL, 0, 0, (1 << 20) + 1, 0, 1))
        self.expect_fatal(worker, "protocol_error")

    def test_bad_control_frame_is_a_protocol_error(self) -> None:
        worker = self.start(MOD)
        send_frame(worker.ctl, CALL, 1)
        self.expect_fatal(worker, "protocol_error")


# The decorators, in this process --------------------------------------------

def module_level(x: int) -> int:
    return x


class DecoratorTest(unittest.TestCase):
    def test_bare_and_named_forms_return_the_function(self) -> None:
        self.assertIs(snakepit.function(module_level), module_level)
        self.assertIs(snakepit.function(name="test.renamed")(module_level),
                      module_level)
        names = [e["name"] for e in snakepit.catalogue()]
        self.assertIn(f"{__name__}.module_level", names)
        self.assertIn("test.renamed", names)

    def test_rejects_lambdas_nested_functions_and_methods(self) -> None:
        def nested() -> None:
            pass

        class Holder:
            def method(self) -> None:
                pass

        for bad in (lambda: None, nested, Holder.method, Holder().method,
                    len, Holder):
            with self.assertRaises(TypeError, msg=repr(bad)):
                snakepit.function(bad)

    def test_rejects_a_positional_name(self) -> None:
        with self.assertRaises(TypeError):
            snakepit.function("x")

    def test_rejects_a_taken_name(self) -> None:
        snakepit.function(name="test.taken")(module_level)
        with self.assertRaises(ValueError):
            snakepit.function(name="test.taken")(process_gone)

    def test_catalogue_returns_copies(self) -> None:
        snakepit.function(name="test.copied")(module_level)
        first = snakepit.catalogue()
        first[-1]["params"].clear()
        entry = [e for e in snakepit.catalogue()
                 if e["name"] == "test.copied"][0]
        self.assertEqual(len(entry["params"]), 1)


if __name__ == "__main__":
    unittest.main()
