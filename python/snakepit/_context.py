"""The per-call `Context` a function receives, and the state behind it."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

__all__ = ["CallState", "Context", "LogSink"]

# Sends one record of a call to the host: (level, logger name, message).
LogSink = Callable[[int, str, str], None]


class CallState:
    """What the worker's threads share about one running call.

    `cancelled` and `task` are written by the control thread and the
    thread that runs the call (the main thread, or with several calls at
    once the event loop's thread for `task`) under the worker's call lock;
    reads of `cancelled` take no lock.
    """

    __slots__ = ("id", "cancelled", "task")

    def __init__(self, call_id: int, cancelled: bool = False) -> None:
        self.id = call_id
        self.cancelled = cancelled
        self.task: Any = None  # The asyncio.Task of an async call.


class Context:
    """What a call knows about itself.

    The worker passes one to the parameter annotated `snakepit.Context`;
    that parameter is not part of the function's catalogue entry, and the
    host cannot fill it. Only the worker creates contexts; the defaults let
    tests of user code build one by hand.

    Attributes:
        call_id: the host's id of this call.
        function: the call name, e.g. `mymodule.predict`.
        deadline: the call's deadline on the `time.monotonic()` clock, or
            None when the call has none.
        pool: the name of the worker's pool.
        worker_pid: the worker's process id.
        session: the call's snakepit.Session (variables, programs,
            `local`), or None for a call made outside a session.
    """

    __slots__ = ("call_id", "function", "deadline", "pool", "worker_pid",
                 "session", "_state", "_sink", "_logger")

    def __init__(self, call_id: int = 0, function: str = "",
                 deadline: Optional[float] = None, pool: str = "",
                 worker_pid: int = 0, *, state: Optional[CallState] = None,
                 sink: Optional[LogSink] = None) -> None:
        self.call_id = call_id
        self.function = function
        self.deadline = deadline
        self.pool = pool
        self.worker_pid = worker_pid
        # The snakepit.Session of a call made in a session, else None.
        self.session: Any = None
        self._state = state
        self._sink = sink
        self._logger: Optional[logging.Logger] = None

    @property
    def cancelled(self) -> bool:
        """True once the host has cancelled this call.

        A long call should check it now and then and stop early; returning
        or raising after a cancel are both fine.
        """
        return self._state is not None and self._state.cancelled

    def time_remaining(self) -> Optional[float]:
        """Returns the seconds left before the deadline (never below 0)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    @property
    def logger(self) -> logging.Logger:
        """A logger named `snakepit.call` whose records go to the host.

        Each record travels as a LOG frame tagged with this call's id, so
        the host logs it with the call. Safe to use from any thread, also
        after the call has ended (the host then drops the records).
        """
        if self._logger is None:
            self._logger = _call_logger(self._sink)
        return self._logger

    def __repr__(self) -> str:
        return (f"Context(call_id={self.call_id}, "
                f"function={self.function!r}, pool={self.pool!r})")


def _call_logger(sink: Optional[LogSink]) -> logging.Logger:
    """Returns a logger for one call, sending records to `sink`.

    The logger is not registered with `logging.getLogger`, which would
    keep one per call forever; it does not propagate, so records reach
    the host once and never print on the worker's stderr too.
    """
    if sink is None:
        return logging.getLogger("snakepit.call")
    logger = logging.Logger("snakepit.call", logging.DEBUG)
    logger.propagate = False
    logger.addHandler(_FrameLogHandler(sink))
    return logger


class _FrameLogHandler(logging.Handler):
    """Formats records and hands them to the worker's LOG sink."""

    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self._sink = sink
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self._sink(record.levelno, record.name, message)
        except Exception:
            # The host is gone; the control thread is ending the worker.
            pass
