"""The zygote: imports a pool's modules once, then forks ready workers.

The host runs

    python -m snakepit._zygote <the worker's options>

with its socket to the zygote on fd 3 and stdout and stderr on pipes it
drains. docs/protocol.md ("Zygote") is the spec. Data flow:

    host                                      zygote
    ----                                      ------
    fd 3  <-- HELLO ------------------------  at once
          <-- READY | FATAL ----------------  import --module (no hooks)
          --- FORK + 4 fds (SCM_RIGHTS) --->  fork(); the child puts the
                                              fds on 3, 4, 1, 2 and runs
                                              an ordinary Worker: HELLO,
                                              on_start hooks, READY
          <-- FORKED {pid} | {reason} ------  after the child leads its
                                              own process group
          <-- EXITED {signalled, code} -----  a child exited; the zygote
                                              keeps its zombie, so the
                                              pid is not reused...
          --- RELEASE (id = pid) ---------->  ...until the host lets go
    end of fd 3: kill every child's process group, exit.

The zygote has one thread: fork() copies only the calling thread, so a
lock another thread held would stay locked in the child forever. It
refuses to serve (FATAL) if importing the modules started a thread.

Memory: the children share the zygote's pages until they write them.
The garbage collector is off in the zygote and everything it made is
frozen (gc.freeze) before each fork, so that a child's collections
never write to the objects it shares; each child turns collection back
on.
"""

from __future__ import annotations

import array
import collections
import fcntl
import functools
import gc
import os
import platform
import select
import signal
import socket
import sys
import traceback
from typing import Any, Callable, Deque, Dict, List, NoReturn, Optional

from snakepit import __version__
from snakepit._codec import new_codec
from snakepit._protocol import (CHANNEL_FD, CONTROL_FD, MAX_HEADER_DEPTH,
                                MAX_HEADER_LEN, PREFIX, PROTOCOL_VERSION,
                                ChannelClosed, FrameType, FrameWriter,
                                Reason)
from snakepit._worker import (_PARENT_DEATH_SIGNAL, EXIT_FATAL, ImportFailed,
                              Options, Worker, _error_header, _exit_host_gone,
                              _flush_stdio, _libc, _prepare_process,
                              fatal_header, import_modules, parse_args)

__all__ = ["Zygote", "main"]

# Where a child puts the four fds of a FORK, in the order they come.
_CHILD_FDS = (CHANNEL_FD, CONTROL_FD, 1, 2)

_WORKER_START_FAILED = "worker_start_failed"

# One recvmsg takes at most one FORK's fds (the kernel stops a read at
# the bytes that carry fds); room for a few more costs nothing.
_RECV_BYTES = 64 << 10
_ANCILLARY_BYTES = socket.CMSG_SPACE(16 * array.array("i").itemsize)

_HOST_TYPES = frozenset((FrameType.FORK, FrameType.RELEASE))


class _Child:
    """A forked worker, until the host releases its exited zombie."""

    __slots__ = ("pidfd", "exited", "released")

    def __init__(self, pidfd: int) -> None:
        self.pidfd = pidfd
        self.exited = False
        self.released = False


class Zygote:
    """Imports the modules, then forks a Worker per FORK request."""

    def __init__(self, options: Options, sock: socket.socket) -> None:
        self._options = options
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._writer = FrameWriter(sock, new_codec(MAX_HEADER_DEPTH))
        self.pid = os.getpid()
        self._buffer = bytearray()
        self._fds: Deque[int] = collections.deque()
        self._children: Dict[int, _Child] = {}
        self._pid_of_pidfd: Dict[int, int] = {}
        self._poll = select.poll()
        self._arm_child: Optional[Callable[[], Any]] = None

    # Start-up ----------------------------------------------------------------

    def start(self) -> None:
        """Sends HELLO, imports the modules and sends READY; on failure
        sends FATAL and exits."""
        self._send(FrameType.HELLO, 0, {
            "protocol": PROTOCOL_VERSION,
            "pid": self.pid,
            "python": platform.python_version(),
            "runtime": __version__,
            "codec": new_codec(self._options.max_depth).name,
        })
        if not _prepare_process():
            _exit_host_gone()
        self._arm_child = _parent_death_call()
        # Off before the imports: a collection would free objects and
        # leave holes in pages the children then fill and so copy.
        gc.disable()
        try:
            import_modules(self._options)
        except ImportFailed as failure:
            self._fatal(Reason.IMPORT_ERROR, str(failure), failure.cause)
        threads = _thread_count()
        if threads > 1:
            self._fatal(_WORKER_START_FAILED,
                        f"importing {', '.join(self._options.modules)} "
                        f"started {threads - 1} thread(s); a zygote can "
                        f"only fork a single-threaded process, so start "
                        f"this pool's workers by exec")
        self._send(FrameType.READY, 0, {})

    # Requests ----------------------------------------------------------------

    def serve(self) -> bool:
        """Forks workers on request until the host goes away.

        Returns True in a forked child, whose fds are then in place for
        a Worker; in the zygote it never returns.
        """
        self._poll.register(self._sock_fd, select.POLLIN)
        while True:
            for fd, _ in self._poll.poll():
                if fd == self._sock_fd:
                    if self._read_requests():
                        return True
                else:
                    self._on_child_exit(fd)

    def _read_requests(self) -> bool:
        """Reads what the host sent and handles every whole frame;
        True in a child forked on the way."""
        try:
            data, ancillary, flags, _ = self._sock.recvmsg(
                _RECV_BYTES, _ANCILLARY_BYTES, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            self._host_gone()
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload)
                                      - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if not data:
            self._host_gone()
        if flags & socket.MSG_CTRUNC:
            self._fatal(Reason.PROTOCOL_ERROR,
                        "more fds came with a request than fit")
        self._buffer += data
        return self._handle_frames()

    def _handle_frames(self) -> bool:
        buf = self._buffer
        while len(buf) >= PREFIX.size:
            ftype, flags, _, header_len, body_len, fid = PREFIX.unpack_from(
                buf)
            if (flags or ftype not in _HOST_TYPES or body_len
                    or header_len > MAX_HEADER_LEN):
                self._fatal(Reason.PROTOCOL_ERROR,
                            f"unexpected frame from the host: type {ftype}, "
                            f"flags {flags}, body of {body_len} bytes")
            total = PREFIX.size + header_len
            if len(buf) < total:
                break
            del buf[:total]  # Both types have empty headers.
            if ftype == FrameType.RELEASE:
                self._release(fid)
            elif self._fork(fid):
                return True
        return False

    def _fork(self, request_id: int) -> bool:
        """Forks a worker with the next four fds; True in the child."""
        if len(self._fds) < len(_CHILD_FDS):
            self._fatal(Reason.PROTOCOL_ERROR,
                        f"FORK came with {len(self._fds)} fds, expected "
                        f"{len(_CHILD_FDS)}")
        fds = [self._fds.popleft() for _ in _CHILD_FDS]
        _flush_stdio()  # else the child would write the buffers again
        gc.freeze()
        try:
            pid = os.fork()
        except OSError as exc:
            _close_all(fds)
            self._send(FrameType.FORKED, request_id, _error_header(
                _WORKER_START_FAILED, f"zygote cannot fork: {exc}"))
            return False
        if pid == 0:
            try:
                self._become_worker(fds)
            except BaseException:
                traceback.print_exc()
                os._exit(EXIT_FATAL)
            return True
        _close_all(fds)
        self._adopt(request_id, pid)
        return False

    def _adopt(self, request_id: int, pid: int) -> None:
        """Watches a new child and tells the host its pid."""
        # The child does this too; doing it here as well means the group
        # exists before the host can signal it, whichever runs first.
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # The child has exited already.
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self._send(FrameType.FORKED, request_id, _error_header(
                _WORKER_START_FAILED, f"zygote cannot watch its child: {exc}"))
            return
        self._children[pid] = _Child(pidfd)
        self._pid_of_pidfd[pidfd] = pid
        self._poll.register(pidfd, select.POLLIN)
        self._send(FrameType.FORKED, request_id, {"pid": pid})

    def _on_child_exit(self, pidfd: int) -> None:
        """Reports a child's exit; keeps its zombie until RELEASE."""
        pid = self._pid_of_pidfd[pidfd]
        info = os.waitid(os.P_PID, pid,
                         os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return
        self._poll.unregister(pidfd)
        del self._pid_of_pidfd[pidfd]
        os.close(pidfd)
        signalled = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        self._send(FrameType.EXITED, pid,
                   {"signalled": signalled, "code": info.si_status})
        child = self._children[pid]
        child.exited = True
        if child.released:
            self._reap(pid)

    def _release(self, pid: int) -> None:
        """The host holds a pidfd and is done: the zombie may go."""
        child = self._children.get(pid)
        if child is None:
            return
        child.released = True
        if child.exited:
            self._reap(pid)

    def _reap(self, pid: int) -> None:
        os.waitid(os.P_PID, pid, os.WEXITED)
        del self._children[pid]

    # In the child ------------------------------------------------------------

    def _become_worker(self, fds: List[int]) -> None:
        """Leaves the zygote behind: own process group, parent-death
        signal, the host's fds on 3, 4, 1, 2 and no other fd."""
        self._sock.detach()  # fd 3 is about to become the channel
        os.setpgid(0, 0)
        # Stdio buffering and the signal's handler are the zygote's, set
        # already; the parent-death signal itself is not inherited.
        if self._arm_child is not None:
            self._arm_child()
        if os.getppid() != self.pid:
            _exit_host_gone()  # The zygote died before we armed the signal.
        # Out of the way first, so that no dup2 overwrites a source.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, CONTROL_FD + 1)
                for fd in fds]
        for fd, target in zip(high, _CHILD_FDS):
            os.dup2(fd, target, inheritable=target < CHANNEL_FD)
        os.closerange(CONTROL_FD + 1, _max_fd())
        gc.enable()

    # Replies -----------------------------------------------------------------

    def _send(self, ftype: int, fid: int, header: Dict[str, Any]) -> None:
        try:
            self._writer.send(ftype, fid, header)
        except ChannelClosed:
            self._host_gone()

    def _fatal(self, reason: str, message: str,
               exc: Optional[BaseException] = None) -> NoReturn:
        """Sends FATAL and exits with status 3, ending the children."""
        try:
            self._writer.send(FrameType.FATAL, 0,
                              fatal_header(reason, message, exc))
        except ChannelClosed:
            pass
        self._kill_children()
        _flush_stdio()
        os._exit(EXIT_FATAL)

    def _host_gone(self) -> NoReturn:
        """The host closed our socket: it is done with us and with every
        worker we forked."""
        self._kill_children()
        os._exit(0)

    def _kill_children(self) -> None:
        for pid in self._children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def _parent_death_call() -> Optional[Callable[[], Any]]:
    """prctl(PR_SET_PDEATHSIG) with its arguments made once, in the
    zygote: a child arms the signal with one cheap call."""
    libc = _libc()
    if libc is None:
        return None
    try:
        import ctypes
        pr_set_pdeathsig = 1
        return functools.partial(
            libc.prctl, ctypes.c_int(pr_set_pdeathsig),
            ctypes.c_ulong(_PARENT_DEATH_SIGNAL), ctypes.c_ulong(0),
            ctypes.c_ulong(0), ctypes.c_ulong(0))
    except Exception:
        return None


def _close_all(fds: List[int]) -> None:
    for fd in fds:
        os.close(fd)


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 1 << 16


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading
        return threading.active_count()


def main(argv: Optional[List[str]] = None) -> int:
    """Runs a zygote on fd 3; in each forked child, runs the worker."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        sock = socket.socket(fileno=CHANNEL_FD)
    except OSError as exc:
        print(f"snakepit zygote: fd {CHANNEL_FD} must be the host's "
              f"socket: {exc}", file=sys.stderr)
        return 2
    sock.settimeout(None)
    sock.set_inheritable(False)
    zygote = Zygote(options, sock)
    zygote.start()
    zygote.serve()
    # Only a forked child gets here, its fds in place. The zygote's
    # objects stay: freeing them would write to pages the child shares.
    zygote_pid = zygote.pid
    channel = socket.socket(fileno=CHANNEL_FD)
    control = socket.socket(fileno=CONTROL_FD)
    for end in (channel, control):
        end.settimeout(None)
        end.set_inheritable(False)
    return Worker(options, channel, control, zygote_pid).run()


if __name__ == "__main__":
    sys.exit(main())
