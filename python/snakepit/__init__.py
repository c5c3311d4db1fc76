"""Snakepit's Python runtime: mark functions the host may call.

    import snakepit

    @snakepit.function
    def add(a: int, b: int) -> int:
        return a + b

    @snakepit.function(name="stream")
    def count(n: int, ctx: snakepit.Context):
        for i in range(n):
            if ctx.cancelled:
                return
            yield i

The host runs `python -m snakepit._worker --module NAME ...`, which imports
the modules and serves their functions (docs/protocol.md).
"""

from __future__ import annotations

from ._context import Context
from ._registry import catalogue, function, on_session_end, on_start
from ._session import Session, SessionConflict, SessionError

__all__ = ["Context", "Session", "SessionConflict", "SessionError",
           "__version__", "catalogue", "function", "on_session_end",
           "on_start"]

__version__ = "0.1.0"
