"""End-to-end tests of `python -m snakepit._zygote` (docs/protocol.md,
"Zygote").

Each test starts a real zygote as the host does (posix_spawn, its socket
on fd 3, stdout and stderr on drained pipes, its own process group),
asks it for workers by passing four fds with FORK, and talks to each
worker as test_worker.py does. Every wait is bounded.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import sys
import time
import unittest
from typing import Any, Dict, List, Optional

from tests.test_worker import (CALL, CODEC, FATAL, FIXTURES_DIR, GOODBYE,
                               HELLO, MOD, PREFIX, PYTHON_DIR, READY, RESULT,
                               TIMEOUT, Frame, _Drain, process_gone,
                               recv_frame, send_frame, wait_for_exit)

FORK, FORKED, EXITED, RELEASE = 60, 61, 62, 63
ZMOD = "sp_fixture_zygote"


def process_state(pid: int) -> Optional[str]:
    """The state letter of `pid` (R, S, Z...), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


class ForkedWorker:
    """The host's ends of one worker the zygote forked."""

    def __init__(self, pid: int, chan: socket.socket, ctl: socket.socket,
                 out_r: int, err_r: int) -> None:
        self.pid = pid
        self.chan = chan
        self.ctl = ctl
        self.chan.settimeout(TIMEOUT)
        self.ctl.settimeout(TIMEOUT)
        self.stdout = _Drain(out_r)
        self.stderr = _Drain(err_r)

    def recv(self) -> Frame:
        return recv_frame(self.chan)

    def handshake(self) -> List[Dict[str, Any]]:
        hello = self.recv()
        assert hello.type == HELLO, hello
        assert hello.header["pid"] == self.pid, (hello.header, self.pid)
        ready = self.recv()
        assert ready.type == READY, (ready, self.stderr.text())
        return ready.header["functions"]

    def result(self, fn: str, args: Any = None, fid: int = 1) -> Any:
        body = b"" if args is None else CODEC.encode(args)
        send_frame(self.chan, CALL, fid, {"fn": fn}, body)
        frame = self.recv()
        assert frame.type == RESULT and frame.id == fid, frame
        return frame.value()

    def close(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.chan.close()
        self.ctl.close()
        self.stdout.join(TIMEOUT)
        self.stderr.join(TIMEOUT)


class Zygote:
    """A zygote process started as the host starts one."""

    def __init__(self, *modules: str) -> None:
        self.sock, child = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        sources = [os.dup(fd) for fd in (child.fileno(), out_w, err_w)]
        actions = [(os.POSIX_SPAWN_DUP2, fd, target)
                   for fd, target in zip(sources, (3, 1, 2))]
        argv = [sys.executable, "-m", "snakepit._zygote",
                "--path", str(FIXTURES_DIR), "--pool", "testpool"]
        for module in modules:
            argv += ["--module", module]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(PYTHON_DIR)] + [p for p in [os.environ.get("PYTHONPATH")]
                                 if p])
        env["SNAKEPIT_HOST_PID"] = str(os.getpid())
        try:
            self.pid = os.posix_spawn(sys.executable, argv, env,
                                      file_actions=actions, setpgroup=0)
        finally:
            for fd in sources + [out_w, err_w]:
                os.close(fd)
            child.close()
        self.sock.settimeout(TIMEOUT)
        self.stdout = _Drain(out_r)
        self.stderr = _Drain(err_r)
        self.status: Optional[int] = None
        self.workers: List[ForkedWorker] = []
        self._next_request = 1

    def recv(self) -> Frame:
        return recv_frame(self.sock)

    def start(self) -> None:
        self.expect(HELLO)
        ready = self.recv()
        assert ready.type == READY, (ready, self.stderr.text())

    def expect(self, ftype: int) -> Frame:
        frame = self.recv()
        assert frame.type == ftype, (frame, self.stderr.text())
        return frame

    def send_fork(self, fds: List[int]) -> int:
        request = self._next_request
        self._next_request += 1
        prefix = PREFIX.pack(FORK, 0, 0, 0, 0, request)
        self.sock.sendmsg([prefix], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      array.array("i", fds))])
        return request

    def fork(self) -> ForkedWorker:
        chan, child_chan = socket.socketpair()
        ctl, child_ctl = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            request = self.send_fork([child_chan.fileno(),
                                      child_ctl.fileno(), out_w, err_w])
        finally:
            child_chan.close()
            child_ctl.close()
            os.close(out_w)
            os.close(err_w)
        forked = self.expect(FORKED)
        assert forked.id == request, forked
        worker = ForkedWorker(forked.header["pid"], chan, ctl, out_r, err_r)
        self.workers.append(worker)
        return worker

    def release(self, pid: int) -> None:
        send_frame(self.sock, RELEASE, pid)

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Returns the exit code (negative: killed by that signal)."""
        if self.status is None:
            self.status = wait_for_exit(self.pid, timeout, "zygote")
        return self.status

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        if self.status is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait()
        self.sock.close()
        self.stdout.join(TIMEOUT)
        self.stderr.join(TIMEOUT)


class ZygoteTestCase(unittest.TestCase):
    def start(self, *modules: str) -> Zygote:
        zygote = Zygote(*modules)
        self.addCleanup(zygote.close)
        zygote.start()
        return zygote


class ForkTest(ZygoteTestCase):
    def test_forked_workers_handshake_and_serve_calls(self) -> None:
        zygote = self.start(MOD, ZMOD)
        workers = [zygote.fork() for _ in range(3)]
        self.assertEqual(len({w.pid for w in workers}), 3)
        for i, worker in enumerate(workers):
            names = {f["name"] for f in worker.handshake()}
            self.assertIn(f"{MOD}.add", names)
            self.assertIn(f"{ZMOD}.process", names)
            self.assertEqual(worker.result(f"{MOD}.add", [i, 10]), i + 10)

    def test_start_hooks_run_in_each_child_not_in_the_zygote(self) -> None:
        zygote = self.start(ZMOD)
        for _ in range(2):
            worker = zygote.fork()
            worker.handshake()
            self.assertEqual(worker.result(f"{ZMOD}.starts"), [worker.pid])

    def test_child_leads_its_group_under_the_zygote(self) -> None:
        zygote = self.start(ZMOD)
        worker = zygote.fork()
        worker.handshake()
        self.assertEqual(worker.result(f"{ZMOD}.process"), {
            "pid": worker.pid, "pgid": worker.pid, "ppid": zygote.pid})

    def test_child_keeps_only_its_five_fds(self) -> None:
        zygote = self.start(ZMOD)
        worker = zygote.fork()
        worker.handshake()
        # 0-4, plus what the worker itself opened since (none by default).
        self.assertEqual(worker.result(f"{ZMOD}.open_fds"), [0, 1, 2, 3, 4])

    def test_child_output_goes_to_its_own_pipes(self) -> None:
        zygote = self.start(MOD)
        worker = zygote.fork()
        worker.handshake()
        worker.result(f"{MOD}.noisy")
        worker.close()
        self.assertTrue("from-c-puts" in worker.stdout.text())
        self.assertTrue("from-stderr" in worker.stderr.text())
        self.assertFalse("from-c-puts" in zygote.stdout.text())


class ExitTest(ZygoteTestCase):
    def test_exit_is_reported_and_the_zombie_kept_until_release(self) -> None:
        zygote = self.start(MOD)
        worker = zygote.fork()
        worker.handshake()
        os.kill(worker.pid, signal.SIGKILL)
        exited = zygote.expect(EXITED)
        self.assertEqual(exited.id, worker.pid)
        self.assertEqual(exited.header, {"signalled": True, "code": 9})
        self.assertEqual(process_state(worker.pid), "Z")
        zygote.release(worker.pid)
        deadline = time.monotonic() + TIMEOUT
        while process_state(worker.pid) is not None:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)

    def test_exit_status_of_a_clean_exit(self) -> None:
        zygote = self.start(MOD)
        worker = zygote.fork()
        worker.handshake()
        send_frame(worker.chan, GOODBYE)
        exited = zygote.expect(EXITED)
        self.assertEqual(exited.header, {"signalled": False, "code": 0})
        zygote.release(worker.pid)

    def test_release_before_exit_lets_the_zygote_reap_at_once(self) -> None:
        zygote = self.start(MOD)
        worker = zygote.fork()
        worker.handshake()
        zygote.release(worker.pid)
        worker.chan.shutdown(socket.SHUT_RDWR)  # the worker exits
        self.assertEqual(zygote.expect(EXITED).id, worker.pid)
        deadline = time.monotonic() + TIMEOUT
        while process_state(worker.pid) is not None:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)


class LifetimeTest(ZygoteTestCase):
    def test_end_of_socket_ends_the_zygote_and_its_workers(self) -> None:
        zygote = self.start(MOD)
        worker = zygote.fork()
        worker.handshake()
        sleeper = worker.result(f"{MOD}.spawn_sleeper")
        zygote.sock.shutdown(socket.SHUT_RDWR)
        self.assertEqual(zygote.wait(), 0)
        self.assertTrue(process_gone(worker.pid))
        self.assertTrue(process_gone(sleeper))

    def test_killed_zygote_takes_its_workers_along(self) -> None:
        zygote = self.start(MOD)
        workers = [zygote.fork() for _ in range(2)]
        for worker in workers:
            worker.handshake()
        sleeper = workers[0].result(f"{MOD}.spawn_sleeper")
        os.kill(zygote.pid, signal.SIGKILL)
        self.assertEqual(zygote.wait(), -signal.SIGKILL)
        for pid in [w.pid for w in workers] + [sleeper]:
            self.assertTrue(process_gone(pid, timeout=2.0), pid)


class StartFailureTest(ZygoteTestCase):
    def test_import_error_is_fatal(self) -> None:
        zygote = Zygote("sp_fixture_broken")
        self.addCleanup(zygote.close)
        zygote.expect(HELLO)
        fatal = zygote.expect(FATAL)
        self.assertEqual(fatal.header["reason"], "import_error")
        self.assertIn("broken on purpose", fatal.header["message"])
        self.assertEqual(fatal.header["type"], "RuntimeError")
        self.assertIn("sp_fixture_broken.py", fatal.header["traceback"])
        self.assertEqual(zygote.wait(), 3)

    def test_thread_started_at_import_is_refused(self) -> None:
        zygote = Zygote("sp_fixture_thread")
        self.addCleanup(zygote.close)
        zygote.expect(HELLO)
        fatal = zygote.expect(FATAL)
        self.assertEqual(fatal.header["reason"], "worker_start_failed")
        self.assertIn("thread", fatal.header["message"])
        self.assertEqual(zygote.wait(), 3)

    def test_fork_without_fds_is_a_protocol_error(self) -> None:
        zygote = self.start(MOD)
        send_frame(zygote.sock, FORK, 1)
        self.assertEqual(zygote.expect(FATAL).header["reason"],
                         "protocol_error")
        self.assertEqual(zygote.wait(), 3)

    def test_unknown_frame_is_a_protocol_error(self) -> None:
        zygote = self.start(MOD)
        send_frame(zygote.sock, CALL, 1, {"fn": "x"})
        self.assertEqual(zygote.expect(FATAL).header["reason"],
                         "protocol_error")
        self.assertEqual(zygote.wait(), 3)


if __name__ == "__main__":
    unittest.main()
