"""The worker process: serves one pool's Python functions to the host.

The host runs

    python -m snakepit._worker --module NAME [--module NAME ...]
        [--path DIR ...] --max-payload BYTES --max-depth N --pool NAME
        [--max-concurrency N]

with the channel socket on fd 3 and the control socket on fd 4, and
stdout and stderr on pipes it drains. docs/protocol.md is the spec.

Data flow:

    host                                  worker
    ----                                  ------
    fd 3 channel  <-- HELLO ------------  main thread, before any user code
                  <-- READY | FATAL ----  import --module, on_start hooks
                  --- CALL ------------>  read frame > decode args > look up
                                          the dispatch table > run by kind:
                                            function   call here
                                            async      task on one loop
                                            generator  next() per chunk
                  <-- CHUNK* -----------  each yield, encoded as produced
                  <-- LOG* -------------  ctx.logger, from any thread
                  <-- RESULT | ERROR ---  exactly one final frame per id
                  --- GOODBYE --------->  exit 0
    fd 4 control  --- CANCEL ---------->  control thread: flag the call,
                                          cancel its asyncio task
                  --- PING ------------>
                  <-- PONG {busy} ------  even while a call holds the GIL
    end of fd 3 or fd 4: the host is gone; kill our process group, exit.

Threads: the main thread alone reads fd 3 and runs calls. The control
thread alone reads and writes fd 4. fd 3 is written through one locked
`FrameWriter` by the main thread, by user threads (LOG) and by the control
thread (FATAL), so every frame goes out whole.

With --max-concurrency N above 1 the worker takes up to N calls at once:
the main thread only reads fd 3 and hands calls out, sync functions and
generators to a pool of N threads ("snakepit-call"), async ones as tasks
to one event loop on its own thread ("snakepit-loop"). Their frames
interleave on fd 3, each tagged with its call id; SESSION_REPLYs go to
the call waiting for them by id.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import inspect
import os
import platform
import signal
import socket
import sys
import threading
import time
import traceback
from types import TracebackType
from typing import (Any, Callable, Deque, Dict, List, NamedTuple, NoReturn,
                    Optional, Sequence, Set, Tuple)

from snakepit import __version__
from snakepit._accel import native as _native
from snakepit._codec import (DEFAULT_MAX_DEPTH, DecodeError, EncodeError,
                             new_codec, safe_text, within_depth)
from snakepit._context import CallState, Context, LogSink
from snakepit._protocol import (CHANNEL_FD, CONTROL_FD, DEFAULT_MAX_PAYLOAD,
                                MAX_BODY_LEN, MAX_HEADER_DEPTH,
                                MAX_HEADER_LEN, PREFIX,
                                PROTOCOL_VERSION,
                                ChannelClosed, Frame, FrameReader,
                                FrameType, FrameWriter, ProtocolError, Reason,
                                send_rest)
from snakepit._registry import (FunctionEntry, catalogue, entries, hooks,
                                session_end_hooks)
from snakepit._session import Session, SessionConflict, SessionError

__all__ = ["EXIT_FATAL", "ImportFailed", "MAX_CONCURRENCY", "Options",
           "Worker", "fatal_header", "import_modules", "main", "parse_args"]

EXIT_FATAL = 3

_CALL = FrameType.CALL

_PREFIX_LEN = PREFIX.size
_unpack_prefix = PREFIX.unpack_from
_pack_prefix = PREFIX.pack
_CONTAINERS = frozenset((list, dict))
# Arguments up to this size are decoded by a streaming decoder, which
# costs less per call but copies what it is fed.
_STREAMED_ARGS = 64 * 1024
_RESULT = FrameType.RESULT
_CHUNK = FrameType.CHUNK
_ERROR = FrameType.ERROR
_CHANNEL_TYPES = frozenset((FrameType.CALL, FrameType.GOODBYE,
                            FrameType.SESSION_REPLY, FrameType.SESSION_END))
_SESSION_END = FrameType.SESSION_END
_SESSION_REPLY = FrameType.SESSION_REPLY
_CONTROL_TYPES = frozenset((FrameType.CANCEL, FrameType.PING))

# CANCELs that overtake their CALL (fd 4 is read apart from fd 3) are
# remembered; ids are never reused, so a few stale ones do no harm.
_EARLY_CANCELS_KEPT = 64

# Longest texts sent in a header, in characters (up to 4 bytes each), so
# that one ERROR or LOG stays well under the 1 MiB header limit.
_MAX_MESSAGE_CHARS = 32 << 10
_MAX_TRACEBACK_CHARS = 128 << 10

# Bytes results from this size on are sent without copying them.
_BIG_RESULT = 64 * 1024

# An async generator's driver returns this once it has sent the ERROR.
_REPLIED = object()

# --max-concurrency: calls one worker takes at once.
MAX_CONCURRENCY = 256
_LOOP_KINDS = frozenset(("async", "async_generator"))

_Runner = Callable[[Callable[..., Any], CallState, List[Any], Dict[str, Any]],
                  None]


class Options(NamedTuple):
    """The worker's command line."""

    modules: List[str]
    paths: List[str]
    max_payload: int
    max_depth: int
    pool: str
    max_concurrency: int = 1


def parse_args(argv: Sequence[str]) -> Options:
    """Parses the command line; exits with status 2 on a bad one."""
    parser = argparse.ArgumentParser(
        prog="python -m snakepit._worker",
        description="Snakepit worker; started by a Snakepit host with its "
                    "sockets on fds 3 and 4.")
    parser.add_argument("--module", action="append", default=[],
                        dest="modules", help="module to import (repeated)")
    parser.add_argument("--path", action="append", default=[],
                        dest="paths", help="directory to prepend to "
                                           "sys.path (repeated)")
    parser.add_argument("--max-payload", type=int,
                        default=DEFAULT_MAX_PAYLOAD,
                        help="largest result or chunk body, in bytes")
    parser.add_argument("--max-depth", type=int, default=DEFAULT_MAX_DEPTH,
                        help="deepest nesting of arrays and maps")
    parser.add_argument("--pool", default="default", help="pool name")
    parser.add_argument("--max-concurrency", type=int, default=1,
                        help=f"calls run at once, 1 to {MAX_CONCURRENCY}")
    args = parser.parse_args(argv)
    if args.max_payload < 0:
        parser.error("--max-payload must not be negative")
    if args.max_depth < 1:
        parser.error("--max-depth must be at least 1")
    if not 1 <= args.max_concurrency <= MAX_CONCURRENCY:
        parser.error(f"--max-concurrency must be between 1 and "
                     f"{MAX_CONCURRENCY}")
    # A body longer than its 32-bit length field cannot be framed anyway.
    max_payload = min(args.max_payload, MAX_BODY_LEN)
    return Options(args.modules, args.paths, max_payload, args.max_depth,
                   args.pool, args.max_concurrency)


class _ReplySlot:
    """Where the main thread leaves a SESSION_REPLY for the call waiting
    for it (--max-concurrency above 1).

    `waiting` is guarded by the worker's call lock; `lock` makes threads of
    one call take turns; `event` is set once `reply` holds (header, body).
    """

    __slots__ = ("lock", "event", "waiting", "reply")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.event = threading.Event()
        self.waiting = False
        self.reply: Any = None


class _SessionEnd(NamedTuple):
    """A SESSION_END whose hooks wait for `calls`, the calls of that
    session that were running when it came (guarded by the call lock)."""

    session_id: str
    local: Dict[Any, Any]
    calls: Set[int]


class ImportFailed(Exception):
    """A module of the pool raised at import; `cause` is what it raised."""

    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(f"cannot import module {name!r}: "
                         f"{_describe(cause)}")
        self.cause = cause


def import_modules(options: Options) -> None:
    """Puts `options.paths` first in sys.path and imports the modules.

    Raises ImportFailed for the first module that raises.
    """
    sys.path[0:0] = options.paths
    for name in options.modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            raise ImportFailed(name, exc) from None


class Worker:
    """Serves calls on the channel until GOODBYE or the host's end.

    `zygote_pid` is set in a worker forked by that zygote
    (snakepit._zygote): the modules are already imported, and the
    zygote, not the host, is the parent whose death ends the worker.
    """

    def __init__(self, options: Options, channel: socket.socket,
                 control: socket.socket,
                 zygote_pid: Optional[int] = None) -> None:
        self._options = options
        self._zygote_pid = zygote_pid
        self._pid = os.getpid()
        self._codec = new_codec(options.max_depth)
        self._header_codec = new_codec(MAX_HEADER_DEPTH)
        self._channel = FrameWriter(channel, self._header_codec)
        self._reader = FrameReader(channel, self._header_codec,
                                   _CHANNEL_TYPES,
                                   max_body=options.max_payload)
        self._control = control
        self._table: Dict[str, Tuple[FunctionEntry, _Runner]] = {}
        self._loop: Any = None  # asyncio loop, made by the first async call.
        self._exiting = False

        # Guarded by _call_lock: the call being run, CANCELs that came
        # before their CALL, and each call's task.
        self._call_lock = threading.Lock()
        self._current: Optional[CallState] = None
        self._early_cancels: Deque[int] = collections.deque(
            maxlen=_EARLY_CANCELS_KEPT)

        # Sessions: this worker's local objects per session id, the ids
        # the host said have ended (handled between calls), and a lock
        # that keeps one session request and its reply together when user
        # threads share a context.
        self._locals: Dict[str, Dict[Any, Any]] = {}
        self._ended_sessions: List[Any] = []
        self._session_lock = threading.Lock()

        # Several calls at once (--max-concurrency above 1; see "Several
        # calls at once" below). The main thread makes the pool of call
        # threads when it starts serving, and the event loop's thread at
        # the first async call; it waits on the channel socket in select()
        # after GOODBYE.
        self._concurrency = options.max_concurrency
        self._channel_socket = channel
        self._pool: Any = None  # concurrent.futures.ThreadPoolExecutor
        self._loop_thread: Optional[threading.Thread] = None
        # Guarded by _call_lock: the calls in flight by id (always empty
        # with one call at a time), the session of each that runs in one,
        # each call's reply slot for session requests, session ends that
        # wait for calls of their session to end and those that no longer
        # wait, and, once GOODBYE came, the pipe that wakes the main
        # thread when the last call ends.
        self._running: Dict[int, CallState] = {}
        self._call_sessions: Dict[int, str] = {}
        self._reply_slots: Dict[int, _ReplySlot] = {}
        self._waiting_ends: List[_SessionEnd] = []
        self._due_ends: List[_SessionEnd] = []
        self._closing = False
        self._wake_fd = -1

    def run(self) -> int:
        """Runs the worker; returns its exit status (0 after GOODBYE)."""
        self._send(FrameType.HELLO, 0, {
            "protocol": PROTOCOL_VERSION,
            "pid": self._pid,
            "python": platform.python_version(),
            "runtime": __version__,
            "codec": self._codec.name,
            "small_calls": self._small_call_loop(),
        })
        # A zygote's child is prepared already (snakepit._zygote).
        if self._zygote_pid is None and not _prepare_process():
            _exit_host_gone()
        threading.Thread(target=self._control_loop, name="snakepit-control",
                         daemon=True).start()
        self._import_modules()
        self._run_start_hooks()
        self._send(FrameType.READY, 0, {
            "functions": catalogue(),
            "max_concurrency": self._concurrency,
        })
        return self._serve()

    def _small_call_loop(self) -> str:
        """Which loop serves small calls of plain functions: "c"
        (_snakepit_native), "python", or "none" (several calls at once
        take the general path)."""
        if self._concurrency > 1:
            return "none"
        return "python" if _native is None else "c"

    # Start-up ----------------------------------------------------------------

    def _import_modules(self) -> None:
        if self._zygote_pid is None:
            try:
                import_modules(self._options)
            except ImportFailed as failure:
                self._fatal(Reason.IMPORT_ERROR, str(failure), failure.cause)
        runners: Dict[str, _Runner] = {
            "function": self._run_function,
            "async": self._run_async,
            "generator": self._run_generator,
            "async_generator": self._run_async_generator,
        }
        self._table = {name: (entry, runners[entry.kind])
                       for name, entry in entries().items()}

    def _run_start_hooks(self) -> None:
        for hook in hooks():
            try:
                result = hook()
                if inspect.isawaitable(result):
                    self._event_loop().run_until_complete(result)
            except BaseException as exc:
                name = getattr(hook, "__qualname__", repr(hook))
                self._fatal(Reason.START_HOOK_FAILED,
                            f"on_start hook {name} failed: "
                            f"{_describe(exc)}", exc)

    # The channel -------------------------------------------------------------

    def _read_frame(self) -> Frame:
        """The next channel frame; the end of the host or of a readable
        stream ends the worker."""
        try:
            return self._reader.read()
        except ChannelClosed:
            _exit_host_gone()
        except ProtocolError as exc:
            self._fatal(Reason.PROTOCOL_ERROR, str(exc))

    def _serve(self) -> int:
        if self._concurrency > 1:
            return self._serve_concurrently()
        read = self._read_frame
        while True:
            self._serve_plain_calls()
            frame = read()
            if frame.type == _CALL:
                self._on_call(frame)
                if self._ended_sessions:
                    self._run_session_ends()
            elif frame.type == _SESSION_END:
                self._ended_sessions.append(frame.header.get("session"))
                self._run_session_ends()
            elif frame.type == _SESSION_REPLY:
                self._fatal(Reason.PROTOCOL_ERROR,
                            "SESSION_REPLY while no session request waits")
            else:  # GOODBYE: no call is running, so we are done.
                self._exiting = True
                if self._loop is not None:
                    self._loop.close()
                return 0

    def _serve_plain_calls(self) -> None:
        """Serves CALLs of plain functions until a frame needs more; the
        reader then holds that frame for read().

        The general path (read(), _on_call, _run_function) for the
        common case, inline in one frame: one CALL per receive, a plain
        function without a Context, no CANCEL waiting for its CALL, a
        result that encodes within the limit. Per call that is ~3 us of
        Python less (docs/benchmarks.md, "One small call in flight").
        Whatever else comes, including any error before the function
        runs, goes to the general path, which decides from scratch.
        """
        reader = self._reader
        buf = reader.idle_buffer()
        if buf is None:
            return
        sock = self._channel.socket
        if _native is not None:
            got = _native.serve_plain_calls(
                sock.fileno(), buf, self, self._plain_function,
                self._send_native_exception, self._send_result,
                self._early_cancels, CallState(0), self._channel.lock,
                self._options.max_payload, self._codec.max_depth)
            if got < 0:
                _exit_host_gone()
            reader.received(got)
            return
        view = memoryview(buf)
        recv_into = sock.recv_into
        sendmsg = sock.sendmsg
        send_lock = self._channel.lock
        decode = self._codec.quick_decoder()
        stream = self._codec.stream_decoder()
        feed, unpack, tell = stream or (None, None, None)
        fed = 0
        encode = self._codec.quick_encoder()
        max_depth = self._codec.max_depth
        max_payload = self._options.max_payload
        early_cancels = self._early_cancels
        # _cancel reads `_current` under the call lock, which this loop
        # does not take: a CANCEL that slips between the two steps below
        # finds the call running, as if it had come just after the CALL.
        state = CallState(0)
        no_kwargs: Dict[str, Any] = {}
        header = b""
        header_end = 0
        fn: Any = None
        while True:
            try:
                got = recv_into(view)
            except OSError:
                _exit_host_gone()
            if got < _PREFIX_LEN:
                if got == 0:
                    _exit_host_gone()
                break
            ftype, flags, _, header_len, body_len, call_id = _unpack_prefix(
                buf)
            body_start = _PREFIX_LEN + header_len
            if (ftype != _CALL or flags or got != body_start + body_len
                    or body_len > max_payload or not body_len
                    or header_len > MAX_HEADER_LEN):
                break
            if body_start != header_end or not buf.startswith(
                    header, _PREFIX_LEN):
                fn = self._plain_function(view[_PREFIX_LEN:body_start])
                if fn is None:
                    break
                header = bytes(view[_PREFIX_LEN:body_start])
                header_end = body_start
            try:
                if feed is not None and body_len <= _STREAMED_ARGS:
                    feed(view[body_start:got])
                    value = unpack()
                    fed += body_len
                    if tell() != fed:
                        raise ValueError("bytes after the arguments")
                else:
                    value = decode(view[body_start:got])
            except Exception:
                if feed is not None:
                    feed, unpack, tell = self._codec.stream_decoder()
                    fed = 0
                break
            if type(value) is list:
                args, kwargs = value, no_kwargs
                items = value
            elif type(value) is dict:
                args, kwargs = (), value
                items = value.values()
            else:
                break
            if not _CONTAINERS.isdisjoint(map(type, items)) and (
                    not within_depth(value, max_depth)):
                break
            state.id = call_id
            self._current = state
            if early_cancels and call_id in early_cancels:
                self._current = None
                break

            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._send_exception(call_id, exc)
                continue
            body = _small_result(result, encode)
            if body is None or len(body) > max_payload:
                self._send_value(_RESULT, call_id, result)
                continue
            self._current = None
            prefix = _pack_prefix(_RESULT, 0, 0, 0, len(body), call_id)
            with send_lock:
                try:
                    sent = sendmsg((prefix, body))
                    if sent != _PREFIX_LEN + len(body):
                        send_rest(sock, [prefix, body], sent)
                except OSError:
                    _exit_host_gone()
            if self._ended_sessions:
                self._run_session_ends()
        reader.received(got)

    def _plain_function(self, raw_header: memoryview
                        ) -> Optional[Callable[..., Any]]:
        """The function a CALL header names when _serve_plain_calls may
        run it (a plain function without a Context), else None."""
        try:
            header = self._header_codec.decode(raw_header)
        except DecodeError:
            return None
        name = header.get("fn") if type(header) is dict else None
        found = self._table.get(name) if type(name) is str else None
        if found is None:
            return None
        entry = found[0]
        if entry.kind != "function" or entry.context_name is not None:
            return None
        return entry.fn

    def _on_call(self, frame: Frame) -> None:
        # The steps of _unpack_call, inline: this is the hot path.
        call_id = frame.id
        name = frame.header.get("fn")
        found = self._table.get(name) if type(name) is str else None
        if found is None:
            self._reject_unknown(call_id, name)
            return
        if frame.body is None:
            self._reject_oversized(frame)
            return
        try:
            args, kwargs = self._decode_args(frame.body)
        except DecodeError as exc:
            self._reject_undecodable(call_id, exc)
            return

        entry, runner = found
        state = self._begin_call(call_id)
        try:
            if entry.context_name is not None and not self._add_context(
                    entry, state, frame.header, args, kwargs):
                return
            runner(entry.fn, state, args, kwargs)
        finally:
            self._current = None

    def _unpack_call(self, frame: Frame
                     ) -> Optional[Tuple[FunctionEntry, _Runner, List[Any],
                                         Dict[str, Any]]]:
        """Returns (entry, runner, args, kwargs) for a CALL, or None once
        it has sent the ERROR that ends a call that cannot run."""
        name = frame.header.get("fn")
        found = self._table.get(name) if type(name) is str else None
        if found is None:
            self._reject_unknown(frame.id, name)
            return None
        if frame.body is None:
            self._reject_oversized(frame)
            return None
        try:
            args, kwargs = self._decode_args(frame.body)
        except DecodeError as exc:
            self._reject_undecodable(frame.id, exc)
            return None
        entry, runner = found
        return entry, runner, args, kwargs

    def _reject_unknown(self, call_id: int, name: Any) -> None:
        self._send_error(call_id, Reason.UNKNOWN_FUNCTION,
                         f"no function {name!r} in pool "
                         f"{self._options.pool!r}")

    def _reject_oversized(self, frame: Frame) -> None:
        self._send_error(frame.id, Reason.PAYLOAD_TOO_LARGE,
                         f"arguments of {frame.body_len} bytes exceed the "
                         f"{self._options.max_payload}-byte payload limit "
                         f"(host→worker)")

    def _reject_undecodable(self, call_id: int, exc: DecodeError) -> None:
        self._send_error(call_id, exc.reason,
                         f"cannot decode the arguments: {exc.message}",
                         path=exc.path)

    def _decode_args(self, body: memoryview
                     ) -> Tuple[List[Any], Dict[str, Any]]:
        """Returns (args, kwargs); non-str keys fail when the call binds."""
        if not body:
            return [], {}
        value = self._codec.decode(body)
        if type(value) is list:
            return value, {}
        if type(value) is dict:
            return [], value
        raise DecodeError(Reason.SERIALIZATION_ERROR,
                          f"arguments must be an array or a map, not "
                          f"{type(value).__name__}", "$")

    def _add_context(self, entry: FunctionEntry, state: CallState,
                     header: Dict[Any, Any], args: List[Any],
                     kwargs: Dict[str, Any]) -> bool:
        """Puts a Context among the arguments; False if it cannot go."""
        name = entry.context_name
        if name in kwargs:
            self._send_error(state.id, Reason.INVALID_ARGUMENT,
                             f"argument {name!r} takes the call's Context "
                             f"and cannot be passed")
            return False
        timeout_ms = header.get("timeout_ms")
        deadline = None
        if type(timeout_ms) in (int, float) and timeout_ms >= 0:
            deadline = time.monotonic() + timeout_ms / 1000
        ctx = Context(state.id, entry.name, deadline, self._options.pool,
                      self._pid, state=state, sink=self._log_sink(state.id))
        session_id = header.get("session")
        if type(session_id) is str and session_id:
            ctx.session = Session(
                session_id, self._locals.setdefault(session_id, {}),
                lambda ftype, h, body, cid=state.id: self._session_request(
                    cid, ftype, h, body),
                self._codec)
        index = entry.context_index
        if index is not None and len(args) >= index:
            args.insert(index, ctx)
        else:
            kwargs[name] = ctx
        return True

    def _session_request(self, call_id: int, ftype: int,
                         header: Dict[str, Any], body: bytes
                         ) -> Tuple[Dict[str, Any], bytes]:
        """Sends a session request for call `call_id` and returns the
        host's reply; raises SessionError when it is not ok."""
        if self._concurrency > 1:
            reply, data = self._routed_session_request(call_id, ftype,
                                                       header, body)
        else:
            reply, data = self._read_session_reply(call_id, ftype, header,
                                                   body)
        if not reply.get("ok"):
            why = str(reply.get("reason", "session_store_error"))
            message = str(reply.get("message", ""))
            if why == "session_conflict":
                raise SessionConflict(why, message)
            raise SessionError(why, message)
        return reply, data

    def _read_session_reply(self, call_id: int, ftype: int,
                            header: Dict[str, Any], body: bytes
                            ) -> Tuple[Dict[str, Any], bytes]:
        """Sends a session request for call `call_id` and reads the
        channel up to its SESSION_REPLY (SESSION_ENDs met on the way wait
        for the end of the call). One call at a time only."""
        with self._session_lock:
            self._channel.send(ftype, call_id, header,
                               [body] if body else ())
            while True:
                frame = self._read_frame()
                if frame.type == _SESSION_END:
                    self._ended_sessions.append(frame.header.get("session"))
                elif frame.type == _SESSION_REPLY and frame.id == call_id:
                    break
                else:
                    self._fatal(Reason.PROTOCOL_ERROR,
                                f"frame type {frame.type} while waiting for "
                                f"a session reply")
        return frame.header, _body_bytes(frame)

    def _run_session_ends(self) -> None:
        """Drops the local objects of ended sessions after running the
        on_session_end hooks."""
        ended, self._ended_sessions = self._ended_sessions, []
        for session_id in ended:
            local = self._locals.pop(session_id, None)
            if local is not None:
                self._run_session_end_hooks(session_id, local)

    def _run_session_end_hooks(self, session_id: str,
                               local: Dict[Any, Any]) -> None:
        """Runs the on_session_end hooks; one that raises is reported on
        stderr."""
        for hook in session_end_hooks():
            try:
                hook(session_id, local)
            except Exception:
                print(f"snakepit: on_session_end hook "
                      f"{getattr(hook, '__qualname__', hook)} failed "
                      f"for session {session_id}:", file=sys.stderr)
                traceback.print_exc()

    def _log_sink(self, call_id: int) -> LogSink:
        channel = self._channel

        def sink(level: int, logger: str, message: str) -> None:
            channel.send(FrameType.LOG, call_id, {
                "level": level,
                "logger": _clip(logger, _MAX_MESSAGE_CHARS),
                "message": _clip(message, _MAX_TRACEBACK_CHARS),
            })
        return sink

    # Running calls, by kind --------------------------------------------------
    #
    # Each runner sends exactly one final frame. The call itself sits in a
    # `try` of the runner's own frame: a TypeError whose traceback ends
    # there was raised while binding the arguments (invalid_argument).

    def _run_function(self, fn: Callable[..., Any], state: CallState,
                      args: List[Any], kwargs: Dict[str, Any]) -> None:
        if state.cancelled:  # its CANCEL came before its CALL
            self._send_cancelled(state.id)
            return
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._send_exception(state.id, exc)
            return
        # The common case in one step: a result that encodes within the
        # limit. The general path handles encoding errors, the limit, and
        # large bytes (sent without a copy).
        body = _small_result(result, self._codec.encode)
        if body is not None and len(body) <= self._options.max_payload:
            self._current = None  # see _send
            if self._running:
                self._release(state.id)
            try:
                self._channel.send_body(_RESULT, state.id, body)
            except ChannelClosed:
                if not self._exiting:
                    _exit_host_gone()
            return
        self._send_value(_RESULT, state.id, result)

    def _run_generator(self, fn: Callable[..., Any], state: CallState,
                       args: List[Any], kwargs: Dict[str, Any]) -> None:
        try:
            generator = fn(*args, **kwargs)
        except BaseException as exc:
            self._send_exception(state.id, exc)
            return
        while True:
            if state.cancelled:
                _close_quietly(generator)
                self._send_cancelled(state.id)
                return
            try:
                item = next(generator)
            except StopIteration as stop:
                self._send_value(_RESULT, state.id, stop.value)
                return
            except BaseException as exc:
                self._send_exception(state.id, exc)
                return
            body = self._encode_value(_CHUNK, item)
            if type(body) is dict:
                _close_quietly(generator)
                self._send(FrameType.ERROR, state.id, body)
                return
            self._send(_CHUNK, state.id, None, body)

    def _run_async(self, fn: Callable[..., Any], state: CallState,
                   args: List[Any], kwargs: Dict[str, Any]) -> None:
        try:
            coroutine = fn(*args, **kwargs)
        except BaseException as exc:
            self._send_exception(state.id, exc)
            return
        self._run_task(coroutine, state)

    def _run_async_generator(self, fn: Callable[..., Any], state: CallState,
                             args: List[Any], kwargs: Dict[str, Any]) -> None:
        try:
            generator = fn(*args, **kwargs)
        except BaseException as exc:
            self._send_exception(state.id, exc)
            return
        self._run_task(self._drain_async(generator, state), state)

    def _run_task(self, coroutine: Any, state: CallState) -> None:
        """Runs a coroutine as a task the control thread can cancel."""
        if self._concurrency > 1:
            self._schedule_task(coroutine, state)
            return
        import asyncio
        loop = self._event_loop()
        task = loop.create_task(coroutine)
        with self._call_lock:
            state.task = task
            cancelled = state.cancelled
        if cancelled:
            task.cancel()
        try:
            result = loop.run_until_complete(task)
        except asyncio.CancelledError as exc:
            if state.cancelled:
                self._send_cancelled(state.id)
            else:
                self._send_exception(state.id, exc)
            return
        except BaseException as exc:
            self._send_exception(state.id, exc)
            return
        if result is not _REPLIED:
            self._send_value(_RESULT, state.id, result)

    async def _drain_async(self, generator: Any, state: CallState) -> Any:
        """Sends an async generator's items as chunks; see _run_generator."""
        import asyncio
        while True:
            if state.cancelled:
                await _aclose_quietly(generator)
                raise asyncio.CancelledError()
            try:
                item = await generator.__anext__()
            except StopAsyncIteration:
                return None
            body = self._encode_value(_CHUNK, item)
            if type(body) is dict:
                await _aclose_quietly(generator)
                self._send(FrameType.ERROR, state.id, body)
                return _REPLIED
            self._send(_CHUNK, state.id, None, body)

    def _event_loop(self) -> Any:
        if self._loop is None:
            import asyncio
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop

    # Replies -----------------------------------------------------------------

    def _send_value(self, ftype: int, call_id: int, value: Any) -> None:
        """Sends a RESULT or CHUNK, or the ERROR that replaces it."""
        body = self._encode_value(ftype, value)
        if type(body) is dict:
            self._send(FrameType.ERROR, call_id, body)
        else:
            self._send(ftype, call_id, None, body)

    def _encode_value(self, ftype: int, value: Any) -> Any:
        """Returns a result or chunk as body buffers, or an ERROR header.

        An ERROR header (a dict) means the call is over.
        """
        what = "result" if ftype == _RESULT else "chunk"
        try:
            body = self._codec.encode_buffers(value)
        except EncodeError as exc:
            return _error_header(
                exc.reason, f"cannot serialize the {what}: {exc.message}",
                path=exc.path or "$")
        size = sum(map(len, body))
        limit = self._options.max_payload
        if size > limit:
            return _error_header(
                Reason.PAYLOAD_TOO_LARGE,
                f"{what} of {size} bytes exceeds the {limit}-byte payload "
                f"limit (worker→host)")
        return body

    def _send_result(self, call_id: int, result: Any) -> None:
        self._send_value(_RESULT, call_id, result)

    def _send_native_exception(self, call_id: int,
                               exc: BaseException) -> None:
        """_send_exception for a call made by _snakepit_native, which has
        no frame of its own: arguments that do not bind raise before the
        function's frame exists, so their TypeError has no traceback."""
        self._send_exception(call_id, exc, binding=exc.__traceback__ is None)

    def _send_exception(self, call_id: int, exc: BaseException,
                        binding: Optional[bool] = None) -> None:
        """Sends the ERROR for an exception of a call. `binding` tells
        whether it was raised binding the arguments; by default, when its
        traceback ends in the runner's own frame."""
        if binding is None:
            tb = exc.__traceback__
            binding = tb is not None and tb.tb_next is None
        if isinstance(exc, TypeError) and binding:
            self._send_error(call_id, Reason.INVALID_ARGUMENT,
                             _message_of(exc))
            return
        self._send_error(call_id, Reason.PYTHON_EXCEPTION, _message_of(exc),
                         type=_type_name(exc),
                         traceback=_format_traceback(exc))

    def _send_cancelled(self, call_id: int) -> None:
        self._send_error(call_id, Reason.CANCELLED, "the call was cancelled")

    def _send_error(self, call_id: int, reason: str, message: str,
                    **fields: Optional[str]) -> None:
        self._send(FrameType.ERROR, call_id,
                   _error_header(reason, message, **fields))

    def _send(self, ftype: int, fid: int,
              header: Optional[Dict[str, Any]] = None,
              body: Sequence[Any] = ()) -> None:
        if ftype == _RESULT or ftype == _ERROR:
            # The call is over once the host can see its final frame; a
            # PING answered after that must not say busy, and a CALL the
            # host sends on reading it must find a free slot.
            self._current = None
            if self._running:
                self._release(fid)
        try:
            self._channel.send(ftype, fid, header, body)
        except ChannelClosed:
            if not self._exiting:
                _exit_host_gone()

    def _fatal(self, reason: str, message: str,
               exc: Optional[BaseException] = None) -> NoReturn:
        """Sends FATAL and exits with status 3."""
        self._send(FrameType.FATAL, 0, fatal_header(reason, message, exc))
        _flush_stdio()
        os._exit(EXIT_FATAL)

    # Calls in flight, shared with the control thread -------------------------

    def _begin_call(self, call_id: int) -> CallState:
        with self._call_lock:
            cancelled = bool(self._early_cancels) and (
                call_id in self._early_cancels)
            if cancelled:
                self._early_cancels.remove(call_id)
            state = CallState(call_id, cancelled)
            self._current = state
        return state

    def _cancel(self, call_id: int) -> None:
        with self._call_lock:
            state = self._current
            if state is None or state.id != call_id:
                state = self._running.get(call_id)
            if state is None:
                if call_id not in self._early_cancels:
                    self._early_cancels.append(call_id)
                return
            state.cancelled = True
            task = state.task
        if task is not None:
            try:
                self._loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass  # The loop is closed: the call has ended.

    # Several calls at once ---------------------------------------------------
    #
    # With --max-concurrency N above 1 the main thread reads the channel
    # and hands calls out; it runs no user code. A call holds its slot in
    # _running from its CALL until just before its final frame is sent:
    # the host may send the next CALL as soon as it reads that frame, and
    # it must find a free slot.

    def _serve_concurrently(self) -> int:
        from concurrent.futures import ThreadPoolExecutor
        self._pool = ThreadPoolExecutor(self._concurrency,
                                        thread_name_prefix="snakepit-call")
        read = self._read_frame
        while True:
            frame = read()
            ftype = frame.type
            if ftype == _CALL:
                self._start_call(frame)
            elif ftype == _SESSION_REPLY:
                self._route_session_reply(frame)
            elif ftype == _SESSION_END:
                self._end_session(frame.header.get("session"))
            else:  # GOODBYE
                self._finish_calls()
                return self._stop_threads()
            if self._due_ends:
                self._run_due_session_ends()

    def _start_call(self, frame: Frame) -> None:
        """Checks that a CALL fits, then hands it to a call thread, or to
        the event loop if it is async."""
        self._check_room(frame.id)
        call = self._unpack_call(frame)
        if call is None:
            return
        entry, runner, args, kwargs = call
        state = self._begin_concurrent_call(frame.id,
                                            frame.header.get("session"))
        if entry.context_name is not None and not self._add_context(
                entry, state, frame.header, args, kwargs):
            return
        if entry.kind in _LOOP_KINDS:
            # Makes the coroutine here; _run_task passes it to the loop.
            runner(entry.fn, state, args, kwargs)
        else:
            self._pool.submit(self._run_on_thread, runner, entry.fn, state,
                              args, kwargs)

    def _check_room(self, call_id: int) -> None:
        """Ends the worker (FATAL protocol_error) for a CALL that reuses
        the id of a running call or comes while N calls are in flight."""
        # Only this thread adds to _running, so it cannot grow meanwhile.
        running = self._running
        if call_id in running:
            self._fatal(Reason.PROTOCOL_ERROR,
                        f"CALL {call_id} while a call with that id is "
                        f"running")
        if len(running) >= self._concurrency:
            self._fatal(Reason.PROTOCOL_ERROR,
                        f"CALL {call_id} while {len(running)} calls are in "
                        f"flight, the most this worker takes "
                        f"(--max-concurrency {self._concurrency})")

    def _begin_concurrent_call(self, call_id: int,
                               session_id: Any) -> CallState:
        """Takes a slot for call `call_id`; as _begin_call otherwise."""
        with self._call_lock:
            cancelled = bool(self._early_cancels) and (
                call_id in self._early_cancels)
            if cancelled:
                self._early_cancels.remove(call_id)
            state = CallState(call_id, cancelled)
            self._running[call_id] = state
            if type(session_id) is str and session_id:
                self._call_sessions[call_id] = session_id
        return state

    def _release(self, call_id: int) -> None:
        """Frees the slot of call `call_id` before its final frame goes
        out; session ends that waited for it alone become due."""
        with self._call_lock:
            self._running.pop(call_id, None)
            self._call_sessions.pop(call_id, None)
            slot = self._reply_slots.get(call_id)
            if slot is not None and not slot.waiting:
                del self._reply_slots[call_id]
            if self._waiting_ends:
                self._settle_session_ends(call_id)
            if self._closing and not self._running and self._wake_fd >= 0:
                os.write(self._wake_fd, b"\0")

    def _run_on_thread(self, runner: _Runner, fn: Callable[..., Any],
                       state: CallState, args: List[Any],
                       kwargs: Dict[str, Any]) -> None:
        """Runs a sync call on a call thread, then the session ends that
        its end let through."""
        try:
            runner(fn, state, args, kwargs)
        except BaseException as exc:
            # Runners report what the function raises themselves, so this
            # is a fault of the runtime; the call still ends, with it.
            traceback.print_exc()
            if state.id in self._running:
                self._send_exception(state.id, exc)
        if self._due_ends:
            self._run_due_session_ends()

    # Async calls run as tasks of the one event loop, on its own thread.

    def _schedule_task(self, coroutine: Any, state: CallState) -> None:
        """Hands a call's coroutine to the event loop's thread."""
        if self._loop_thread is None:
            self._start_loop_thread()
        self._loop.call_soon_threadsafe(self._start_task, coroutine, state)

    def _start_loop_thread(self) -> None:
        loop = self._event_loop()

        def run() -> None:
            import asyncio
            asyncio.set_event_loop(loop)
            loop.run_forever()

        self._loop_thread = threading.Thread(target=run, daemon=True,
                                             name="snakepit-loop")
        self._loop_thread.start()

    def _start_task(self, coroutine: Any, state: CallState) -> None:
        """Starts the call's task on the loop's thread, unless a CANCEL
        came first. Under the call lock, so that _cancel either finds the
        task or has set `cancelled` before this looks."""
        with self._call_lock:
            cancelled = state.cancelled
            if not cancelled:
                state.task = self._loop.create_task(
                    self._drive(coroutine, state))
        if cancelled:
            coroutine.close()
            self._send_cancelled(state.id)
            if self._due_ends:
                self._run_due_session_ends()

    async def _drive(self, coroutine: Any, state: CallState) -> None:
        """The task of one async call: awaits it, sends its final frame."""
        import asyncio
        try:
            result = await coroutine
        except asyncio.CancelledError as exc:
            if state.cancelled:
                self._send_cancelled(state.id)
            else:
                self._send_exception(state.id, exc)
        except BaseException as exc:
            self._send_exception(state.id, exc)
        else:
            if result is not _REPLIED:
                self._send_value(_RESULT, state.id, result)
        if self._due_ends:
            self._run_due_session_ends()

    # Session requests and ends while other calls run.

    def _routed_session_request(self, call_id: int, ftype: int,
                                header: Dict[str, Any], body: bytes
                                ) -> Tuple[Dict[str, Any], bytes]:
        """Sends a session request for call `call_id` and waits for the
        main thread to hand over its SESSION_REPLY. Threads of one call
        that share its context take turns."""
        slot = self._reply_slot(call_id)
        with slot.lock:
            slot.event.clear()
            with self._call_lock:
                # Put back if the call ended meanwhile (a user thread).
                self._reply_slots[call_id] = slot
                slot.waiting = True
            self._channel.send(ftype, call_id, header,
                               [body] if body else ())
            slot.event.wait()
            reply, slot.reply = slot.reply, None
        with self._call_lock:
            if call_id not in self._running and not slot.waiting:
                self._reply_slots.pop(call_id, None)
        return reply

    def _reply_slot(self, call_id: int) -> _ReplySlot:
        with self._call_lock:
            slot = self._reply_slots.get(call_id)
            if slot is None:
                slot = self._reply_slots[call_id] = _ReplySlot()
        return slot

    def _route_session_reply(self, frame: Frame) -> None:
        with self._call_lock:
            slot = self._reply_slots.get(frame.id)
            if slot is not None and slot.waiting:
                slot.waiting = False
            else:
                slot = None
        if slot is None:
            self._fatal(Reason.PROTOCOL_ERROR,
                        f"SESSION_REPLY for call {frame.id}, which waits "
                        f"for none")
        slot.reply = (frame.header, _body_bytes(frame))
        slot.event.set()

    def _end_session(self, session_id: Any) -> None:
        """SESSION_END: the session's local objects leave the worker at
        once (a later call in a session of that id starts afresh); the
        hooks get them when every call of the session that is running
        now has ended, on the thread that ends the last one."""
        local = self._locals.pop(session_id, None)
        if local is None:
            return
        with self._call_lock:
            calls = {call_id for call_id, sid in self._call_sessions.items()
                     if sid == session_id}
            if calls:
                self._waiting_ends.append(
                    _SessionEnd(session_id, local, calls))
                return
        self._run_session_end_hooks(session_id, local)

    def _settle_session_ends(self, call_id: int) -> None:
        """REQUIRES: _call_lock. Call `call_id` has ended; session ends
        that waited for it alone become due."""
        waiting = []
        for end in self._waiting_ends:
            end.calls.discard(call_id)
            (waiting if end.calls else self._due_ends).append(end)
        self._waiting_ends = waiting

    def _run_due_session_ends(self) -> None:
        with self._call_lock:
            due, self._due_ends = self._due_ends, []
        for end in due:
            self._run_session_end_hooks(end.session_id, end.local)

    # GOODBYE while calls run.

    def _finish_calls(self) -> None:
        """Waits for the running calls to end, still routing their
        session replies; a CALL now is a protocol error."""
        import select
        wake_r, wake_w = os.pipe()
        with self._call_lock:
            self._closing = True
            self._wake_fd = wake_w
        try:
            while True:
                with self._call_lock:
                    if not self._running:
                        return
                if not self._reader.buffered():
                    readable, _, _ = select.select(
                        [self._channel_socket, wake_r], [], [])
                    if self._channel_socket not in readable:
                        continue
                self._on_frame_after_goodbye(self._read_frame())
        finally:
            with self._call_lock:
                self._wake_fd = -1
            os.close(wake_r)
            os.close(wake_w)

    def _on_frame_after_goodbye(self, frame: Frame) -> None:
        if frame.type == _SESSION_REPLY:
            self._route_session_reply(frame)
        elif frame.type == _SESSION_END:
            self._end_session(frame.header.get("session"))
        elif frame.type == _CALL:
            self._fatal(Reason.PROTOCOL_ERROR,
                        f"CALL {frame.id} after GOODBYE")
        # A second GOODBYE changes nothing.

    def _stop_threads(self) -> int:
        """Stops the loop's thread and the call threads once no call
        runs; returns the exit status, 0."""
        self._exiting = True
        if self._loop_thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join()
        self._pool.shutdown(wait=True)
        if self._loop is not None:
            self._loop.close()
        return 0

    # The control socket ------------------------------------------------------

    def _control_loop(self) -> None:
        """Answers PING and applies CANCEL; runs on its own thread."""
        reader = FrameReader(self._control, self._header_codec,
                             _CONTROL_TYPES, max_body=0)
        writer = FrameWriter(self._control, self._header_codec)
        try:
            while True:
                frame = reader.read()
                if frame.type == FrameType.PING:
                    busy = self._current is not None or bool(self._running)
                    writer.send(FrameType.PONG, frame.id, {"busy": busy})
                else:
                    self._cancel(frame.id)
        except ChannelClosed:
            if not self._exiting:
                _exit_host_gone()
        except ProtocolError as exc:
            self._fatal(Reason.PROTOCOL_ERROR, f"control socket: {exc}")


# The process -----------------------------------------------------------------

def _prepare_process() -> bool:
    """Sets up stdio and the parent-death signal.

    Returns False if the host is already gone.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)  # type: ignore
        except Exception:
            pass
    libc = _libc()
    if libc is not None:
        _line_buffer_c_stdout(libc)
        _arm_parent_death_signal(libc)
    expected = os.environ.get("SNAKEPIT_HOST_PID", "")
    return not expected.isdigit() or os.getppid() == int(expected)


def _libc() -> Any:
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True)
    except Exception:
        return None


def _line_buffer_c_stdout(libc: Any) -> None:
    """Makes C's stdout line-buffered, so C output is not held back.

    Must run before any C code writes to stdout.
    """
    try:
        import ctypes
        libc.setvbuf.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_size_t]
        stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        libc.setvbuf(stdout, None, 1, 0)  # 1 is _IOLBF.
    except Exception:
        pass


def _arm_parent_death_signal(libc: Any) -> None:
    """Asks Linux to signal us when the host dies (best effort).

    The signal is a catchable one whose handler ends our whole process
    group, children included; a SIGKILL here would end the worker alone
    and orphan its children before it could reach them. (The control
    thread also ends the group when the host's sockets close.) The kernel
    tracks the host *thread* that spawned us; the host spawns from a
    thread that lives as long as the pool.
    """
    try:
        import ctypes
        signal.signal(_PARENT_DEATH_SIGNAL,
                      lambda signum, frame: _exit_host_gone())
        pr_set_pdeathsig = 1
        libc.prctl(ctypes.c_int(pr_set_pdeathsig),
                   ctypes.c_ulong(_PARENT_DEATH_SIGNAL), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0))
    except Exception:
        pass


# Sent by the kernel when the host dies; see _arm_parent_death_signal.
_PARENT_DEATH_SIGNAL = signal.SIGUSR2


def _exit_host_gone() -> NoReturn:
    """Kills our process group (children included) and exits.

    The host makes each worker lead its own group; a worker that does not
    (started by hand or by a test) must not kill the group it joined.
    """
    try:
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(0)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _small_result(result: Any, encode: Callable[[Any], bytes]
                  ) -> Optional[bytes]:
    """`result` encoded by `encode`, or None when it is large bytes (sent
    without a copy by the general path) or `encode` fails (the general
    path then says why)."""
    cls = type(result)
    if (cls is bytes or cls is bytearray) and len(result) >= _BIG_RESULT:
        return None
    try:
        return encode(result)
    except Exception:
        return None


def _body_bytes(frame: Frame) -> bytes:
    """A copy of a frame's body (empty if it was skipped), which outlives
    the reader's next read."""
    return bytes(frame.body) if frame.body is not None else b""


def _close_quietly(generator: Any) -> None:
    """Closes a generator, running its `finally`; ignores what it raises."""
    try:
        generator.close()
    except BaseException:
        pass


async def _aclose_quietly(generator: Any) -> None:
    """Closes an async generator, like `_close_quietly`."""
    try:
        await generator.aclose()
    except BaseException:
        pass


# Describing errors -----------------------------------------------------------

def _error_header(reason: str, message: str,
                  **fields: Optional[str]) -> Dict[str, str]:
    """Returns ERROR / FATAL header fields, clipped to valid UTF-8 text."""
    header = {"reason": reason, "message": _clip(message,
                                                 _MAX_MESSAGE_CHARS)}
    for key, value in fields.items():
        if value is not None:
            long = key in ("traceback", "path")
            header[key] = _clip(value, _MAX_TRACEBACK_CHARS if long
                                else _MAX_MESSAGE_CHARS)
    return header


def fatal_header(reason: str, message: str,
                 exc: Optional[BaseException] = None) -> Dict[str, str]:
    """Returns FATAL header fields, with `exc`'s type and traceback."""
    if exc is None:
        return _error_header(reason, message)
    return _error_header(reason, message, type=_type_name(exc),
                         traceback=_format_traceback(exc))


def _clip(text: str, limit: int) -> str:
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return safe_text(text)


_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _type_name(exc: BaseException) -> str:
    """Returns `module.QualName`, or the bare name of a builtin."""
    cls = type(exc)
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", cls.__name__)
    if module in (None, "builtins"):
        return qualname
    return f"{module}.{qualname}"


def _message_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException as inner:
        return (f"<unprintable {type(exc).__name__}: __str__ raised "
                f"{type(inner).__name__}>")


def _describe(exc: BaseException) -> str:
    return f"{_type_name(exc)}: {_message_of(exc)}"


def _format_traceback(exc: BaseException) -> str:
    """Formats the traceback from the first frame of user code on."""
    try:
        tb = _skip_runtime_frames(exc.__traceback__)
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:
        return "<the traceback could not be formatted>"


def _skip_runtime_frames(tb: Optional[TracebackType]
                         ) -> Optional[TracebackType]:
    prefixes = [_RUNTIME_DIR]
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and getattr(asyncio, "__file__", None):
        prefixes.append(os.path.dirname(asyncio.__file__) + os.sep)
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(
            tuple(prefixes)):
        tb = tb.tb_next
    return tb


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs a worker on fds 3 and 4; returns the exit status."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        channel = socket.socket(fileno=CHANNEL_FD)
        control = socket.socket(fileno=CONTROL_FD)
    except OSError as exc:
        print(f"snakepit worker: fds {CHANNEL_FD} and {CONTROL_FD} must be "
              f"the host's sockets: {exc}", file=sys.stderr)
        return 2
    for sock in (channel, control):
        sock.settimeout(None)  # Blocking, whatever the host handed over.
        sock.set_inheritable(False)  # Not for the user's subprocesses.
    return Worker(options, channel, control).run()


if __name__ == "__main__":
    sys.exit(main())
